//! Named secret files as a plan uses them, and which step read which.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::secrets::secret::Secret;

/// Secret files as one plan uses them: all of them on the controller, the shipped ones on
/// an agent; which step read which is recorded so that each host gets only its own.
#[derive(Debug, Default)]
pub(crate) struct SecretFiles {
    pub(crate) files: BTreeMap<String, String>,
    pub(crate) path: Option<String>,
    pub(crate) used: Mutex<BTreeMap<usize, Vec<String>>>,
}

impl SecretFiles {
    pub(crate) fn new(files: BTreeMap<String, String>, path: Option<String>) -> Self {
        SecretFiles {
            files,
            path,
            used: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn get(&self, step: usize, name: &str) -> anyhow::Result<Secret<String>> {
        let Some(content) = self.files.get(name) else {
            let known: Vec<&str> = self.files.keys().map(String::as_str).collect();
            let mut message = match &self.path {
                Some(path) => format!("no secret file `{name}` in `{path}`"),
                None => format!("no secret file `{name}`: this environment has no secrets"),
            };
            if let Some(close) = crate::error::did_you_mean(name, known.iter().copied()) {
                message.push_str(&format!(" (did you mean `{close}`?)"));
            }
            anyhow::bail!(message);
        };
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let names = used.entry(step).or_default();
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
        Ok(Secret::new(content.clone()))
    }

    /// The files the given steps read.
    pub(crate) fn used_by(&self, steps: &[usize]) -> BTreeMap<String, String> {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        steps
            .iter()
            .filter_map(|s| used.get(s))
            .flatten()
            .map(|n| (n.clone(), self.files[n].clone()))
            .collect()
    }
}
