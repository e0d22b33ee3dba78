//! The work directory every root component gets before its own sub-components.

use std::path::PathBuf;

use anyhow::Context;

use crate::component::{Component, Verdict};
use crate::deploy::Deploy;
use crate::paths::AllowedPaths;

/// The work directory every root component gets, created before its sub-components converge.
///
/// Checked against the allowed roots on the host like any path, so that a `work` symlink
/// out of `base_dir` cannot make it create directories elsewhere.
pub(crate) struct Workdir(pub(crate) PathBuf, pub(crate) AllowedPaths);

impl Component for Workdir {
    fn label(&self) -> String {
        "Workdir".into()
    }

    fn reads_written_files(&self) -> bool {
        false
    }

    fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> {
        self.1.check(&self.0)?;
        match std::fs::metadata(&self.0) {
            Ok(m) if m.is_dir() => Ok(Verdict::UpToDate),
            Ok(_) => anyhow::bail!("`{}` exists and is not a directory", self.0.display()),
            Err(_) => Ok(Verdict::needs_update("missing")),
        }
    }

    fn owned(&self) -> Vec<crate::Owned> {
        vec![crate::Owned::Directory {
            path: self.0.clone(),
        }]
    }

    fn update(&mut self, _cx: &mut Deploy) -> anyhow::Result<()> {
        self.1.check(&self.0)?;
        std::fs::create_dir_all(&self.0)
            .with_context(|| format!("cannot create work directory `{}`", self.0.display()))
    }
}
