//! Removing what an orphaned root component created, item by item as the ownership record
//! lists them ([`batou_core::Owned`]): files, links, directories when nothing else is left in
//! them, whole trees, and services (stopped and taken from their supervisor first).
//!
//! Which items to remove, in which order, and whether a path is still allowed or managed by
//! another root is the caller's (`batou-runtime/src/inventory.rs`); this module only removes
//! one item, and never follows a symbolic link.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use batou_core::Owned;

/// How long a removed runit service's runsv may take to end (runsvdir looks every 5 s).
const RUNSV_GONE: Duration = Duration::from_secs(30);

/// What removing one item did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Removed (in a dry run: would be).
    Removed,
    /// Left in place, for this reason.
    Kept(String),
    /// Not there any more: nothing to do.
    Gone,
}

/// Removes items one at a time, remembering what it removed (or, in a dry run, would have),
/// so that a directory counts as empty once the items in it are gone and a dry run predicts
/// what the real run does.
#[derive(Debug, Default)]
pub struct Pruner {
    dry_run: bool,
    removed: Vec<PathBuf>,
}

impl Pruner {
    /// A pruner that removes (`dry_run` false) or only says what it would remove.
    pub fn new(dry_run: bool) -> Self {
        Pruner {
            dry_run,
            removed: Vec::new(),
        }
    }

    /// Whether `path` is gone, or will be in a dry run: removed by this pruner, itself or
    /// with a tree around it.
    fn is_removed(&self, path: &Path) -> bool {
        self.removed.iter().any(|r| path.starts_with(r))
    }

    fn done(&mut self, path: &Path) -> Removal {
        self.removed.push(path.to_path_buf());
        Removal::Removed
    }

    /// Removes one item.
    pub fn remove(&mut self, item: &Owned) -> anyhow::Result<Removal> {
        let marker = item.marker();
        if self.is_removed(marker) {
            return Ok(Removal::Gone);
        }
        let meta = match std::fs::symlink_metadata(marker) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Removal::Gone),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot inspect `{}`", marker.display()));
            }
        };
        let kind = meta.file_type();
        let remove_file = |path: &Path| {
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove `{}`", path.display()))
        };
        match item {
            Owned::File { path } => {
                if !kind.is_file() {
                    return Ok(Removal::Kept("no longer a regular file".into()));
                }
                if !self.dry_run {
                    remove_file(path)?;
                }
                Ok(self.done(path))
            }
            Owned::Symlink { path } => {
                if !kind.is_symlink() {
                    return Ok(Removal::Kept("no longer a symbolic link".into()));
                }
                if !self.dry_run {
                    remove_file(path)?;
                }
                Ok(self.done(path))
            }
            Owned::Directory { path } => {
                if !kind.is_dir() {
                    return Ok(Removal::Kept("no longer a directory".into()));
                }
                let mut left = Vec::new();
                for entry in std::fs::read_dir(path)
                    .with_context(|| format!("cannot list `{}`", path.display()))?
                {
                    let entry = entry?.path();
                    if !self.is_removed(&entry) {
                        left.push(entry);
                    }
                }
                if let Some(first) = left.first() {
                    let more = match left.len() {
                        1 => String::new(),
                        n => format!(" and {} more", n - 1),
                    };
                    return Ok(Removal::Kept(format!(
                        "not empty: `{}`{more} were not created by the tool",
                        first.file_name().unwrap_or_default().to_string_lossy()
                    )));
                }
                if !self.dry_run {
                    std::fs::remove_dir(path)
                        .with_context(|| format!("cannot remove `{}`", path.display()))?;
                }
                Ok(self.done(path))
            }
            Owned::Tree { path } => {
                if !kind.is_dir() {
                    return Ok(Removal::Kept("no longer a directory".into()));
                }
                if !self.dry_run {
                    remove_tree(path)?;
                }
                Ok(self.done(path))
            }
            Owned::RunitService {
                link, definition, ..
            } => {
                if std::fs::read_link(link).ok().as_deref() != Some(definition.as_path()) {
                    return Ok(Removal::Kept(format!(
                        "`{}` no longer links to `{}`",
                        link.display(),
                        definition.display()
                    )));
                }
                if !self.dry_run {
                    crate::service::remove_runit(link, definition, RUNSV_GONE)?;
                }
                self.removed.push(link.clone());
                Ok(self.done(definition))
            }
            Owned::SystemdService {
                unit,
                unit_file,
                enabled_link,
            } => {
                if !self.dry_run {
                    crate::service::remove_systemd(unit, unit_file)?;
                }
                self.removed.push(enabled_link.clone());
                Ok(self.done(unit_file))
            }
        }
    }
}

/// Removes a directory and everything in it, making its directories writable first (a
/// release's are read-only). Symbolic links inside are removed, never followed.
pub(crate) fn remove_tree(path: &Path) -> anyhow::Result<()> {
    for entry in walkdir::WalkDir::new(path).follow_links(false) {
        let entry = entry.with_context(|| format!("cannot walk `{}`", path.display()))?;
        if entry.file_type().is_dir() {
            let mode = entry.metadata()?.permissions().mode() | 0o700;
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot make `{}` writable", entry.path().display()))?;
        }
    }
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove `{}`", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_goes_once_what_was_created_in_it_is_gone_and_not_before() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("a"), "").unwrap();
        let file = Owned::File {
            path: dir.join("a"),
        };
        let directory = Owned::Directory { path: dir.clone() };
        // A dry run predicts both removals and changes nothing.
        let mut dry = Pruner::new(true);
        assert_eq!(dry.remove(&file).unwrap(), Removal::Removed);
        assert_eq!(dry.remove(&directory).unwrap(), Removal::Removed);
        assert!(dir.join("a").exists());
        // Something the tool did not create keeps the directory.
        std::fs::write(dir.join("mine"), "").unwrap();
        let mut real = Pruner::new(false);
        assert_eq!(real.remove(&file).unwrap(), Removal::Removed);
        assert!(
            matches!(real.remove(&directory).unwrap(), Removal::Kept(r) if r.contains("`mine`"))
        );
        assert!(dir.join("mine").exists() && !dir.join("a").exists());
        assert_eq!(Pruner::new(false).remove(&file).unwrap(), Removal::Gone);
    }

    #[test]
    fn a_read_only_tree_is_removed_and_a_changed_item_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("t");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/f"), "").unwrap();
        std::os::unix::fs::symlink("/etc", tree.join("link")).unwrap();
        std::fs::set_permissions(tree.join("sub"), std::fs::Permissions::from_mode(0o555)).unwrap();
        let mut p = Pruner::new(false);
        assert_eq!(
            p.remove(&Owned::Tree { path: tree.clone() }).unwrap(),
            Removal::Removed
        );
        assert!(!tree.exists() && Path::new("/etc").exists());
        std::fs::create_dir(tmp.path().join("was-a-file")).unwrap();
        let kept = p
            .remove(&Owned::File {
                path: tmp.path().join("was-a-file"),
            })
            .unwrap();
        assert!(matches!(kept, Removal::Kept(_)));
    }
}
