//! Written files that are not yet durable and visible: the engine's batch of syncs.
//!
//! A file is replaced by writing a temporary sibling, making its data durable and renaming
//! it over the file. Syncing every temporary file on its own costs one flush of the file
//! system's journal per file; staged here instead, many temporary files are made durable by
//! one `syncfs` per file system, and only then renamed into place, after which each of their
//! directories is synced once. The order that makes a replacement safe is kept: no rename
//! happens before the data it makes visible is durable.
//!
//! A staged file is seen through its temporary file until the batch is flushed
//! ([`Deploy::staged`](crate::Deploy::staged)), so the verify that follows an update checks
//! the bytes that will be renamed. The engine flushes before any component that may read
//! what others wrote (see [`Component::reads_written_files`](crate::Component)), at the end
//! of each step unless its caller keeps the batch open, and the local run before it reports
//! a host done.

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Temporary files waiting to be made durable and renamed over their paths, in the order
/// they were staged.
#[derive(Debug, Default)]
pub struct PendingWrites {
    staged: Vec<(PathBuf, PathBuf)>,
    /// The index in `staged` of each final path.
    by_path: HashMap<PathBuf, usize>,
}

impl PendingWrites {
    /// How many files wait.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// Whether no file waits.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Stages `temp`, fully written (content, mode, ownership) but not synced, to replace
    /// `path`. A temporary file staged earlier for the same path is removed.
    pub(crate) fn stage(&mut self, temp: PathBuf, path: PathBuf) {
        if let Some(&at) = self.by_path.get(&path) {
            let old = std::mem::replace(&mut self.staged[at].0, temp);
            if old != self.staged[at].0 {
                let _ = std::fs::remove_file(old);
            }
            return;
        }
        self.by_path.insert(path.clone(), self.staged.len());
        self.staged.push((temp, path));
    }

    /// The temporary file that holds the staged content of `path`.
    pub(crate) fn temp_of(&self, path: &Path) -> Option<&Path> {
        self.by_path
            .get(path)
            .map(|&at| self.staged[at].0.as_path())
    }

    /// Makes every staged file durable and visible: one `syncfs` per file system, the
    /// renames in staging order, then one sync of each directory. Returns how many files
    /// were renamed.
    ///
    /// On an error the files not yet renamed keep their previous content and their
    /// temporary files are removed; the batch is empty afterwards either way.
    pub fn flush(&mut self) -> anyhow::Result<usize> {
        let staged = std::mem::take(&mut self.staged);
        self.by_path.clear();
        if staged.is_empty() {
            return Ok(0);
        }
        let result = sync_and_rename(&staged);
        if let Err((renamed, _)) = &result {
            for (temp, _) in &staged[*renamed..] {
                let _ = std::fs::remove_file(temp);
            }
        }
        result.map_err(|(_, e)| e)
    }

    /// Removes the temporary files staged after the first `keep`: their paths keep their
    /// previous content.
    pub(crate) fn discard_from(&mut self, keep: usize) {
        for (temp, path) in self.staged.drain(keep.min(self.staged.len())..) {
            self.by_path.remove(&path);
            let _ = std::fs::remove_file(temp);
        }
    }

    /// Removes every staged temporary file: the paths keep their previous content.
    pub(crate) fn discard(&mut self) {
        for (temp, _) in self.staged.drain(..) {
            let _ = std::fs::remove_file(temp);
        }
        self.by_path.clear();
    }
}

impl Drop for PendingWrites {
    // A batch that is never flushed (a panic, an early return) leaves no temporary files.
    fn drop(&mut self) {
        self.discard();
    }
}

/// Replaces `path` with `temp` at once: sync, rename, sync the directory. On an error the
/// temporary file is removed.
pub(crate) fn replace_now(temp: &Path, path: &Path) -> anyhow::Result<()> {
    let result = (|| {
        std::fs::File::open(temp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot sync `{}`", temp.display()))?;
        std::fs::rename(temp, path)
            .with_context(|| format!("cannot rename into `{}`", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(temp);
    } else if let Some(Ok(dir)) = path.parent().map(std::fs::File::open) {
        let _ = dir.sync_all();
    }
    result
}

/// On an error, how many files had been renamed, and the error.
fn sync_and_rename(staged: &[(PathBuf, PathBuf)]) -> Result<usize, (usize, anyhow::Error)> {
    let mut devices = BTreeSet::new();
    for (temp, _) in staged {
        let file = std::fs::File::open(temp)
            .with_context(|| format!("cannot open `{}` to sync it", temp.display()))
            .map_err(|e| (0, e))?;
        let device = file
            .metadata()
            .with_context(|| format!("cannot inspect `{}`", temp.display()))
            .map_err(|e| (0, e))?
            .dev();
        if devices.insert(device) {
            nix::unistd::syncfs(&file)
                .with_context(|| format!("cannot sync the file system of `{}`", temp.display()))
                .map_err(|e| (0, e))?;
        }
    }
    let mut dirs = BTreeSet::new();
    for (renamed, (temp, path)) in staged.iter().enumerate() {
        std::fs::rename(temp, path)
            .with_context(|| format!("cannot rename into `{}`", path.display()))
            .map_err(|e| (renamed, e))?;
        if let Some(dir) = path.parent() {
            dirs.insert(dir.to_path_buf());
        }
    }
    for dir in dirs {
        // Best effort, as for a single replacement: the rename itself has happened.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
    }
    Ok(staged.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(dir: &Path, name: &str, content: &str) -> PathBuf {
        let path = dir.join(format!(".{name}.tmp"));
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn flush_renames_in_order_and_empties_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut writes = PendingWrites::default();
        for name in ["a", "b"] {
            let t = temp(dir.path(), name, name);
            writes.stage(t, dir.path().join(name));
        }
        assert_eq!(
            writes.temp_of(&dir.path().join("a")),
            Some(dir.path().join(".a.tmp").as_path())
        );
        assert!(
            !dir.path().join("a").exists(),
            "nothing is visible before the flush"
        );
        assert_eq!(writes.flush().unwrap(), 2);
        assert_eq!(std::fs::read_to_string(dir.path().join("b")).unwrap(), "b");
        assert!(writes.is_empty());
        assert_eq!(writes.flush().unwrap(), 0);
    }

    #[test]
    fn staging_a_path_again_replaces_its_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut writes = PendingWrites::default();
        let first = temp(dir.path(), "one", "old");
        writes.stage(first.clone(), dir.path().join("f"));
        writes.stage(temp(dir.path(), "two", "new"), dir.path().join("f"));
        assert!(!first.exists());
        assert_eq!(writes.len(), 1);
        writes.flush().unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("f")).unwrap(),
            "new"
        );
    }

    #[test]
    fn a_failed_rename_removes_the_temporary_files_left() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep"), "previous").unwrap();
        let mut writes = PendingWrites::default();
        let gone = temp(dir.path(), "x", "x");
        // The rename into a directory that does not exist fails.
        writes.stage(gone.clone(), dir.path().join("missing/x"));
        let kept = temp(dir.path(), "keep", "next");
        writes.stage(kept.clone(), dir.path().join("keep"));
        let err = writes.flush().unwrap_err();
        assert!(format!("{err:#}").contains("cannot rename into"), "{err:#}");
        assert!(!gone.exists() && !kept.exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keep")).unwrap(),
            "previous"
        );
    }

    #[test]
    fn dropping_a_batch_leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let t = temp(dir.path(), "f", "f");
        let mut writes = PendingWrites::default();
        writes.stage(t.clone(), dir.path().join("f"));
        drop(writes);
        assert!(!t.exists() && !dir.path().join("f").exists());
    }
}
