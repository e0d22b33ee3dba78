//! `Symlink`: a symbolic link pointing at a given target.

use std::path::PathBuf;

use anyhow::{Context, bail};
use batou_core::{Component, Configure, Deploy, Verdict};
use serde::Deserialize;

use crate::fs::{parent, sync_dir, temp_path};

/// A symlink at `path` pointing to `target` (kept exactly as written, relative or absolute).
///
/// An existing symlink is replaced atomically; an existing file or directory at `path` is an
/// error, never silently removed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    pub path: String,
    pub target: String,
    #[serde(skip)]
    resolved: PathBuf,
}

impl Symlink {
    /// A symlink at `path` (relative to the work directory) pointing to `target`.
    pub fn new(path: impl Into<String>, target: impl Into<String>) -> Self {
        Symlink {
            path: path.into(),
            target: target.into(),
            resolved: PathBuf::new(),
        }
    }
}

impl Component for Symlink {
    fn label(&self) -> String {
        format!("Symlink('{}')", self.path)
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        if self.target.is_empty() {
            bail!("`target` must not be empty");
        }
        self.resolved = cx.path(&self.path)?;
        Ok(())
    }

    fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> {
        match std::fs::symlink_metadata(&self.resolved) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Verdict::needs_update("missing"))
            }
            Err(e) => {
                Err(e).with_context(|| format!("cannot inspect `{}`", self.resolved.display()))
            }
            Ok(meta) if !meta.file_type().is_symlink() => bail!(
                "`{}` exists and is not a symlink; remove it or choose another path",
                self.resolved.display()
            ),
            Ok(_) => {
                let current = std::fs::read_link(&self.resolved)
                    .with_context(|| format!("cannot read link `{}`", self.resolved.display()))?;
                if current == std::path::Path::new(&self.target) {
                    Ok(Verdict::UpToDate)
                } else {
                    Ok(Verdict::needs_update(format!(
                        "points to `{}` instead of `{}`",
                        current.display(),
                        self.target
                    )))
                }
            }
        }
    }

    fn update(&mut self, _cx: &mut Deploy) -> anyhow::Result<()> {
        let dir = parent(&self.resolved)?;
        let tmp = temp_path(&self.resolved);
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&self.target, &tmp)
            .with_context(|| format!("cannot create symlink `{}`", tmp.display()))?;
        if let Err(e) = std::fs::rename(&tmp, &self.resolved) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e)
                .with_context(|| format!("cannot rename into `{}`", self.resolved.display()));
        }
        sync_dir(dir);
        Ok(())
    }
}
