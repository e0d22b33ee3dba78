//! Platform facts: what a host is (OS, distribution, version, architecture), for attributes,
//! templates and components that choose a variant by it.
//!
//! Configure never touches a host, so facts are an input of planning: a plan is first built
//! without them ([`Facts::unknown`] for every host); where a configure read them
//! ([`FactReads`]), the caller gathers those hosts' facts (one cheap command, [`SCRIPT`],
//! over SSH or on this machine) and builds the plan again with them. A host's job carries
//! its facts, and the agent checks its own against them before it converges. Gathering is
//! the callers' (the commands'), since only they reach hosts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The shell command whose output [`Facts::parse`] reads: the kernel's name and the machine's
/// architecture, then the os-release file.
pub const SCRIPT: &str = "uname -s; uname -m; cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release 2>/dev/null; true";

/// What a host is. Unknown values are empty strings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facts {
    /// The kernel, lower case: `linux`, `freebsd`, `darwin` (`uname -s`).
    pub os: String,
    /// The machine's architecture: `x86_64`, `aarch64` (`uname -m`).
    pub architecture: String,
    /// The distribution's id from os-release: `debian`, `ubuntu`, `alpine`, `fedora`.
    pub distribution: String,
    /// The distribution's version from os-release (`VERSION_ID`): `13`, `24.04`, `3.20.1`.
    pub version: String,
    /// The release's code name from os-release (`VERSION_CODENAME`): `trixie`, `noble`.
    #[serde(default)]
    pub codename: String,
    /// Distributions this one is like (`ID_LIKE`): `["debian"]` on Ubuntu.
    #[serde(default)]
    pub like: Vec<String>,
}

/// The names templates see under `host.facts`, sorted.
const NAMES: &[&str] = &[
    "architecture",
    "codename",
    "distribution",
    "like",
    "os",
    "version",
];

impl Facts {
    /// The facts of a host that has not been asked: every value empty.
    pub fn unknown() -> Facts {
        Facts::default()
    }

    /// Reads the output of [`SCRIPT`].
    pub fn parse(output: &str) -> Facts {
        let mut lines = output.lines();
        let os = lines.next().unwrap_or_default().trim().to_lowercase();
        let architecture = lines.next().unwrap_or_default().trim().to_string();
        let mut release = BTreeMap::new();
        for line in lines {
            let Some((key, value)) = line.trim().split_once('=') else {
                continue;
            };
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            release.insert(key.trim().to_string(), value.replace("\\\"", "\""));
        }
        let get = |key: &str| release.get(key).cloned().unwrap_or_default();
        Facts {
            os,
            architecture,
            distribution: get("ID"),
            version: get("VERSION_ID"),
            codename: get("VERSION_CODENAME"),
            like: get("ID_LIKE")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        }
    }

    /// The fact called `name`, as templates see it.
    fn value(&self, name: &str) -> Option<minijinja::Value> {
        Some(match name {
            "os" => self.os.as_str().into(),
            "architecture" => self.architecture.as_str().into(),
            "distribution" => self.distribution.as_str().into(),
            "version" => self.version.as_str().into(),
            "codename" => self.codename.as_str().into(),
            "like" => minijinja::Value::from_serialize(&self.like),
            _ => return None,
        })
    }

    /// What differs between these facts (`self`, as planned) and `other` (as found), one
    /// `name: planned -> found` each.
    pub fn differences(&self, other: &Facts) -> Vec<String> {
        NAMES
            .iter()
            .filter_map(|name| {
                let a = self.value(name)?.to_string();
                let b = other.value(name)?.to_string();
                (a != b).then(|| format!("{name}: `{a}` -> `{b}`"))
            })
            .collect()
    }
}

/// The hosts whose facts a configure read, shared by every step of a plan.
#[derive(Debug, Clone, Default)]
pub struct FactReads(Arc<Mutex<BTreeSet<String>>>);

thread_local! {
    /// Set while an error looks for names to suggest: what it looks at was not read by the
    /// template, and must not make a plan gather facts.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` without recording fact reads.
pub(crate) fn quietly<T>(f: impl FnOnce() -> T) -> T {
    QUIET.with(|q| q.set(true));
    let out = f();
    QUIET.with(|q| q.set(false));
    out
}

impl FactReads {
    /// Records that a configure on `host` read its facts.
    pub(crate) fn record(&self, host: &str) {
        if QUIET.with(std::cell::Cell::get) {
            return;
        }
        self.0
            .lock()
            .expect("the fact reads lock is never poisoned")
            .insert(host.to_string());
    }

    /// The hosts whose facts were read, sorted.
    pub fn hosts(&self) -> BTreeSet<String> {
        self.0
            .lock()
            .expect("the fact reads lock is never poisoned")
            .clone()
    }
}

/// What planning knows of hosts' facts: those gathered, and where reads are recorded.
#[derive(Debug, Clone, Default)]
pub struct FactsInput {
    /// Facts by host name; a host without an entry has [`Facts::unknown`].
    pub facts: BTreeMap<String, Facts>,
    /// Records the hosts whose facts a configure read.
    pub reads: FactReads,
}

impl FactsInput {
    /// The facts of `host`, as planned.
    pub(crate) fn of(&self, host: &str) -> Facts {
        self.facts.get(host).cloned().unwrap_or_default()
    }
}

/// `host.facts` in a template context: a map that records that it was read.
#[derive(Debug)]
pub(crate) struct FactsValue {
    pub(crate) host: String,
    pub(crate) facts: Facts,
    pub(crate) reads: FactReads,
}

impl minijinja::value::Object for FactsValue {
    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        self.reads.record(&self.host);
        self.facts.value(key.as_str()?)
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Str(NAMES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_output_is_read_with_quotes_and_unknowns() {
        let facts = Facts::parse(
            "Linux\nx86_64\nPRETTY_NAME=\"Ubuntu 24.04 LTS\"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"24.04\"\nVERSION_CODENAME=noble\n",
        );
        assert_eq!(
            facts,
            Facts {
                os: "linux".into(),
                architecture: "x86_64".into(),
                distribution: "ubuntu".into(),
                version: "24.04".into(),
                codename: "noble".into(),
                like: vec!["debian".into()],
            }
        );
        let bare = Facts::parse("FreeBSD\namd64\n");
        assert_eq!(bare.os, "freebsd");
        assert_eq!(bare.distribution, "");
        assert_eq!(
            facts.differences(&bare),
            [
                "architecture: `x86_64` -> `amd64`",
                "codename: `noble` -> ``",
                "distribution: `ubuntu` -> ``",
                "like: `[\"debian\"]` -> `[]`",
                "os: `linux` -> `freebsd`",
                "version: `24.04` -> ``",
            ]
        );
    }
}
