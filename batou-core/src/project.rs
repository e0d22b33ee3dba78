//! The deployment repository's own files: templates and sources that components read.
//!
//! Components read project files only through [`Project`], never with `std::fs` directly, so
//! that paths stay inside the project and every file a plan reads is recorded. An agent on a
//! remote host gets the files its own steps read ([`ProjectFiles`], recorded per step through
//! [`Project::for_step`]) and serves its configure from them.
//!
//! A project on disk is confined by resolved paths, not only lexically: a symlink inside the
//! repository that points outside it is refused, so that nothing outside the project is ever
//! read (and shipped, and shown in a diff) through it. Symlinks in a walked directory are
//! listed as symlinks, never followed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::paths;

/// The deployment repository: on disk (controller, local runs) or shipped (agents).
#[derive(Debug, Clone)]
pub struct Project {
    inner: Arc<Inner>,
    /// The plan step whose configure reads through this handle, if any.
    step: Option<usize>,
}

#[derive(Debug)]
struct Inner {
    source: Source,
    read: Mutex<Record>,
}

/// What was read: everything, and what each step read.
#[derive(Debug, Default)]
struct Record {
    all: ProjectFiles,
    by_step: BTreeMap<usize, ProjectFiles>,
}

impl Record {
    /// The record of everything and, when reading for a step, that step's record.
    fn targets(&mut self, step: Option<usize>) -> impl Iterator<Item = &mut ProjectFiles> {
        let step = step.map(|s| self.by_step.entry(s).or_default());
        std::iter::once(&mut self.all).chain(step)
    }
}

#[derive(Debug)]
enum Source {
    Disk(PathBuf),
    Shipped(ProjectFiles),
}

/// Project files as read by a plan: the content an agent needs to configure the same way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProjectFiles {
    /// File contents by project-relative path; on the wire as base64 strings.
    #[serde(with = "base64_bytes")]
    pub files: BTreeMap<String, Vec<u8>>,
    /// Directory listings by project-relative path.
    pub dirs: BTreeMap<String, Vec<ProjectEntry>>,
    /// Symlink targets by project-relative path.
    pub links: BTreeMap<String, String>,
}

/// A project path that leaves the project, lexically or through a symlink.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe("project file"))]
pub(crate) struct OutsideProject {
    /// The path as the component named it.
    pub(crate) relative: String,
    /// Where it leads on disk, when a symlink is what leaves the project.
    pub(crate) resolved: Option<PathBuf>,
}

impl OutsideProject {
    /// The message, naming the path as `what` (`project file`, `template`).
    pub(crate) fn describe(&self, what: &str) -> String {
        let relative = &self.relative;
        match &self.resolved {
            Some(real) => format!(
                "{what} `{relative}` lies outside the project: it resolves to `{}` through a symlink",
                real.display()
            ),
            None => format!("{what} `{relative}` lies outside the project"),
        }
    }
}

/// A project path that names nothing on disk.
#[derive(Debug, thiserror::Error)]
#[error("project {what} `{relative}` does not exist")]
pub(crate) struct MissingProjectFile {
    /// The path as the component named it.
    pub(crate) relative: String,
    /// What was looked for: `file`, `directory`, `symlink`.
    pub(crate) what: &'static str,
}

/// What a project directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProjectEntryKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link, kept as a link.
    Symlink,
}

/// One entry below a project directory, as listed by [`Project::walk`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectEntry {
    /// Path relative to the walked directory, `/`-separated.
    pub relative: String,
    /// What it is.
    pub kind: ProjectEntryKind,
    /// Permission bits of files and directories.
    pub mode: u32,
}

impl Project {
    /// The project rooted at `root` on this machine.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let root = std::path::absolute(&root).unwrap_or(root);
        Self::with_source(Source::Disk(root))
    }

    /// A project served from files shipped by a controller.
    pub fn shipped(files: ProjectFiles) -> Self {
        Self::with_source(Source::Shipped(files))
    }

    fn with_source(source: Source) -> Self {
        Project {
            inner: Arc::new(Inner {
                source,
                read: Mutex::default(),
            }),
            step: None,
        }
    }

    /// The same project, with every read also recorded for plan step `step`, so that a host's
    /// job carries only the files its own steps read.
    pub(crate) fn for_step(&self, step: usize) -> Project {
        Project {
            inner: Arc::clone(&self.inner),
            step: Some(step),
        }
    }

    /// The project's root directory (empty for a shipped project).
    pub fn root(&self) -> &Path {
        match &self.inner.source {
            Source::Disk(root) => root,
            Source::Shipped(_) => Path::new(""),
        }
    }

    /// Everything read so far.
    pub fn read_files(&self) -> ProjectFiles {
        self.record().all.clone()
    }

    /// What the plan steps `steps` read so far.
    pub(crate) fn read_by(&self, steps: &[usize]) -> ProjectFiles {
        let record = self.record();
        let mut out = ProjectFiles::default();
        for read in steps.iter().filter_map(|s| record.by_step.get(s)) {
            out.files
                .extend(read.files.iter().map(|(k, v)| (k.clone(), v.clone())));
            out.dirs
                .extend(read.dirs.iter().map(|(k, v)| (k.clone(), v.clone())));
            out.links
                .extend(read.links.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        out
    }

    /// The absolute path of a project-relative path, refusing paths that leave the project
    /// lexically (absolute paths, `..` above the root) or hold a NUL byte.
    pub fn path(&self, relative: &str) -> anyhow::Result<PathBuf> {
        if relative.contains('\0') {
            bail!(
                "project file name `{}` contains a NUL byte",
                relative.escape_debug()
            );
        }
        let outside = || OutsideProject {
            relative: relative.to_string(),
            resolved: None,
        };
        let rel = Path::new(relative);
        if rel.is_absolute() {
            return Err(outside().into());
        }
        let root = paths::normalize(&Path::new("/").join(self.root()));
        let resolved = paths::normalize(&root.join(rel));
        if !resolved.starts_with(&root) || resolved == root && relative != "." {
            return Err(outside().into());
        }
        Ok(resolved)
    }

    /// `path` (the lexical path of `relative`) on disk with every symlink resolved, refused
    /// unless it lies inside the project's own resolved root.
    fn real_path(
        &self,
        relative: &str,
        path: &Path,
        what: &'static str,
    ) -> anyhow::Result<PathBuf> {
        let root = std::fs::canonicalize(self.root())
            .map_err(io_words)
            .with_context(|| {
                format!(
                    "cannot read the project directory `{}`",
                    self.root().display()
                )
            })?;
        let real = std::fs::canonicalize(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                MissingProjectFile {
                    relative: relative.to_string(),
                    what,
                }
                .into()
            } else {
                io_words(e).context(format!("cannot read project {what} `{relative}`"))
            }
        })?;
        if !real.starts_with(&root) {
            return Err(OutsideProject {
                relative: relative.to_string(),
                resolved: Some(real),
            }
            .into());
        }
        Ok(real)
    }

    /// The bytes of a project file.
    pub fn read(&self, relative: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.path(relative)?;
        let data = match &self.inner.source {
            Source::Disk(_) => std::fs::read(self.real_path(relative, &path, "file")?)
                .map_err(io_words)
                .with_context(|| format!("cannot read project file `{relative}`"))?,
            Source::Shipped(files) => files
                .files
                .get(relative)
                .cloned()
                .with_context(|| not_shipped(relative))?,
        };
        for record in self.record().targets(self.step) {
            record.files.insert(relative.to_string(), data.clone());
        }
        Ok(data)
    }

    /// Every entry below a project directory, sorted by path, not following symlinks.
    pub fn walk(&self, relative: &str) -> anyhow::Result<Vec<ProjectEntry>> {
        let path = self.path(relative)?;
        let entries = match &self.inner.source {
            Source::Disk(_) => walk_disk(&self.real_path(relative, &path, "directory")?, relative)?,
            Source::Shipped(files) => files
                .dirs
                .get(relative)
                .cloned()
                .with_context(|| not_shipped(relative))?,
        };
        for record in self.record().targets(self.step) {
            record.dirs.insert(relative.to_string(), entries.clone());
        }
        Ok(entries)
    }

    /// The target of a symlink in the project, as written; the target is never read.
    pub fn read_link(&self, relative: &str) -> anyhow::Result<PathBuf> {
        let path = self.path(relative)?;
        let target = match &self.inner.source {
            Source::Disk(_) => {
                // The link itself is not followed; the directories leading to it are.
                let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                    bail!("project path `{relative}` is not a symlink");
                };
                let parent = self.real_path(relative, parent, "symlink")?;
                std::fs::read_link(parent.join(name))
                    .map_err(io_words)
                    .with_context(|| format!("cannot read project symlink `{relative}`"))?
                    .to_string_lossy()
                    .into_owned()
            }
            Source::Shipped(files) => files
                .links
                .get(relative)
                .cloned()
                .with_context(|| not_shipped(relative))?,
        };
        for record in self.record().targets(self.step) {
            record.links.insert(relative.to_string(), target.clone());
        }
        Ok(PathBuf::from(target))
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.inner
            .read
            .lock()
            .expect("the project record lock is never poisoned")
    }
}

/// Serde for file contents as base64 strings: compact and readable on the wire, where a
/// JSON array of numbers took up to four bytes per byte.
mod base64_bytes {
    use std::collections::BTreeMap;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        files: &BTreeMap<String, Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(files.iter().map(|(k, v)| (k, STANDARD.encode(v))))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        BTreeMap::<String, String>::deserialize(deserializer)?
            .into_iter()
            .map(|(k, v)| match STANDARD.decode(&v) {
                Ok(bytes) => Ok((k, bytes)),
                Err(e) => Err(serde::de::Error::custom(format!(
                    "project file `{k}` is not valid base64: {e}"
                ))),
            })
            .collect()
    }
}

/// An I/O error in lower-case words, without the OS's error number: `permission denied`.
fn io_words(e: std::io::Error) -> anyhow::Error {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    let words = match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => e.kind().to_string(),
    };
    anyhow::anyhow!(words)
}

fn not_shipped(relative: &str) -> String {
    format!(
        "project file `{relative}` was not shipped to this host: the agent's configure differs from the controller's"
    )
}

fn walk_disk(dir: &Path, relative: &str) -> anyhow::Result<Vec<ProjectEntry>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(dir)
        .map_err(io_words)
        .with_context(|| format!("cannot read project directory `{relative}`"))?;
    if !meta.is_dir() {
        bail!("project path `{relative}` is not a directory");
    }
    let mut entries = Vec::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let entry = entry.with_context(|| format!("cannot list project directory `{relative}`"))?;
        let rel = entry
            .path()
            .strip_prefix(dir)
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

    #[test]
    fn symlinks_leading_outside_are_refused_and_links_in_trees_are_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "outside-content").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("dirlink")).unwrap();
        std::fs::create_dir(dir.path().join("tree")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("tree/out")).unwrap();
        std::fs::write(dir.path().join("inside"), "in").unwrap();
        std::os::unix::fs::symlink("inside", dir.path().join("ok")).unwrap();
        let p = Project::new(dir.path());
        for err in [
            p.read("link").unwrap_err(),
            p.read("dirlink/secret").unwrap_err(),
            p.walk("dirlink").unwrap_err(),
            p.read("tree/out/secret").unwrap_err(),
        ] {
            assert!(err.is::<OutsideProject>(), "{err:#}");
            assert!(err.to_string().contains("through a symlink"), "{err:#}");
        }
        assert_eq!(p.read("ok").unwrap(), b"in");
        let entries = p.walk("tree").unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].kind, ProjectEntryKind::Symlink);
        assert_eq!(p.read_link("tree/out").unwrap(), outside.path());
        assert!(p.read("a\0b").unwrap_err().to_string().contains("NUL byte"));
        let recorded = p.read_files();
        assert!(!recorded.files.values().any(|v| v == b"outside-content"));
    }

    #[test]
    fn reads_are_recorded_and_can_be_served_shipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("t")).unwrap();
        std::fs::write(dir.path().join("t/a.j2"), "A").unwrap();
        let disk = Project::new(dir.path());
        assert_eq!(disk.read("t/a.j2").unwrap(), b"A");
        assert_eq!(disk.walk("t").unwrap().len(), 1);
        let shipped = Project::shipped(disk.read_files());
        assert_eq!(shipped.read("t/a.j2").unwrap(), b"A");
        assert_eq!(shipped.walk("t").unwrap(), disk.walk("t").unwrap());
        let err = shipped.read("t/b.j2").unwrap_err().to_string();
        assert!(err.contains("was not shipped to this host"), "{err}");
    }

    #[test]
    fn file_contents_travel_as_base64() {
        let mut files = ProjectFiles::default();
        files
            .files
            .insert("bin/blob".into(), vec![0, 159, 146, 150, 255]);
        files.files.insert("t/a.j2".into(), b"A".to_vec());
        let json = serde_json::to_string(&files).unwrap();
        assert_eq!(
            json,
            r#"{"files":{"bin/blob":"AJ+Slv8=","t/a.j2":"QQ=="},"dirs":{},"links":{}}"#
        );
        assert_eq!(serde_json::from_str::<ProjectFiles>(&json).unwrap(), files);
        let err = serde_json::from_str::<ProjectFiles>(
            r#"{"files":{"x":"not base64!"},"dirs":{},"links":{}}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("project file `x` is not valid base64"),
            "{err}"
        );
    }

    #[test]
    fn reads_are_recorded_per_step() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "A").unwrap();
        std::fs::write(dir.path().join("b"), "B").unwrap();
        let project = Project::new(dir.path());
        project.for_step(0).read("a").unwrap();
        project.for_step(1).read("b").unwrap();
        project.for_step(1).read("a").unwrap();
        let keys = |f: ProjectFiles| f.files.into_keys().collect::<Vec<_>>();
        assert_eq!(keys(project.read_by(&[0])), ["a"]);
        assert_eq!(keys(project.read_by(&[1])), ["a", "b"]);
        assert_eq!(keys(project.read_files()), ["a", "b"]);
    }

    #[test]
    fn missing_files_and_nul_bytes_are_worded_without_os_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = Project::new(dir.path());
        let err = p.read("files/motd").unwrap_err();
        assert!(err.is::<MissingProjectFile>(), "{err:#}");
        assert_eq!(
            format!("{err:#}"),
            "project file `files/motd` does not exist"
        );
        let err = p.walk("tree").unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "project directory `tree` does not exist"
        );
        let err = p.read("a\0b").unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "project file name `a\\0b` contains a NUL byte"
        );
        let err = io_words(std::io::Error::from_raw_os_error(13));
        assert_eq!(err.to_string(), "permission denied");
    }
}
