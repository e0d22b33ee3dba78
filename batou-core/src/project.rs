//! The deployment repository's own files: templates and sources that components read.
//!
//! Components read project files only through [`Project`], never with `std::fs` directly, so
//! that paths stay inside the project and the set of files a plan needs is known.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::paths;

/// The deployment repository: the directory that holds `environments/`.
#[derive(Debug, Clone)]
pub struct Project {
    root: PathBuf,
}

/// What a project directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectEntryKind {
    File,
    Directory,
    Symlink,
}

/// One entry below a project directory, as listed by [`Project::walk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectEntry {
    /// Path relative to the walked directory, `/`-separated.
    pub relative: String,
    pub kind: ProjectEntryKind,
    /// Permission bits of files and directories.
    pub mode: u32,
}

impl Project {
    /// The project rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Project { root: root.into() }
    }

    /// The project's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The absolute path of a project-relative path, refusing paths that leave the project.
    pub fn path(&self, relative: &str) -> anyhow::Result<PathBuf> {
        let rel = Path::new(relative);
        if rel.is_absolute() {
            bail!("project file `{relative}` must be relative to the project root");
        }
        let resolved = paths::normalize(&self.root.join(rel));
        if !resolved.starts_with(paths::normalize(&self.root)) {
            bail!("project file `{relative}` lies outside the project");
        }
        Ok(resolved)
    }

    /// The bytes of a project file.
    pub fn read(&self, relative: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.path(relative)?;
        std::fs::read(&path).with_context(|| format!("cannot read project file `{relative}`"))
    }

    /// Every entry below a project directory, sorted by path, not following symlinks.
    pub fn walk(&self, relative: &str) -> anyhow::Result<Vec<ProjectEntry>> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.path(relative)?;
        let meta = std::fs::metadata(&dir)
            .with_context(|| format!("cannot read project directory `{relative}`"))?;
        if !meta.is_dir() {
            bail!("project path `{relative}` is not a directory");
        }
        let mut entries = Vec::new();
        for entry in walkdir::WalkDir::new(&dir).min_depth(1).sort_by_file_name() {
            let entry =
                entry.with_context(|| format!("cannot list project directory `{relative}`"))?;
            let rel = entry
                .path()
                .strip_prefix(&dir)
                .expect("walkdir yields paths below its root")
                .to_string_lossy()
                .into_owned();
            let ft = entry.file_type();
            let kind = if ft.is_symlink() {
                ProjectEntryKind::Symlink
            } else if ft.is_dir() {
                ProjectEntryKind::Directory
            } else {
                ProjectEntryKind::File
            };
            let mode = if kind == ProjectEntryKind::Symlink {
                0o777
            } else {
                entry.metadata()?.permissions().mode() & 0o7777
            };
            entries.push(ProjectEntry {
                relative: rel,
                kind,
                mode,
            });
        }
        Ok(entries)
    }

    /// The target of a symlink in the project.
    pub fn read_link(&self, relative: &str) -> anyhow::Result<PathBuf> {
        let path = self.path(relative)?;
        std::fs::read_link(&path)
            .with_context(|| format!("cannot read project symlink `{relative}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_project() {
        let p = Project::new("/proj");
        assert_eq!(p.path("a/b.txt").unwrap(), PathBuf::from("/proj/a/b.txt"));
        assert!(p.path("../etc/passwd").is_err());
        assert!(p.path("/etc/passwd").is_err());
    }
}
