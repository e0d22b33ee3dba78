//! The ownership record of a host's base directory: `<base_dir>/.batou/inventory.json`.
//!
//! It says which environment owns the base directory, which root components that
//! environment deployed there (in the order they were first deployed) and what each of them
//! created. Components name what they manage with
//! [`Component::owned`](crate::Component::owned); the engine records an item as *created*
//! when it did not exist before the component's `update` and exists after it, so that a file
//! that was there before and was only rewritten is never recorded, and so never removed by a
//! prune. Writing, reading and the ownership check are here; removing what an orphan created
//! is the runtime's (`batou-runtime/src/inventory.rs`), which knows the supervisors.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file name of the record in the host's state directory (`<base_dir>/.batou/`).
pub const INVENTORY_FILE: &str = "inventory.json";

/// Something on a host that a component manages, and that a prune may remove once the
/// component's root is gone from its environment, if the tool created it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Owned {
    /// A regular file.
    File {
        /// Its absolute path.
        path: PathBuf,
    },
    /// A directory: a prune removes it only when it is empty once the items recorded with
    /// it are gone, so that whatever else was put into it stays.
    Directory {
        /// Its absolute path.
        path: PathBuf,
    },
    /// A symbolic link (never followed).
    Symlink {
        /// Its absolute path.
        path: PathBuf,
    },
    /// A directory whose whole content is the tool's, such as a root's unpacked releases:
    /// a prune removes it with everything in it.
    Tree {
        /// Its absolute path.
        path: PathBuf,
    },
    /// A runit service: its definition directory linked into runsvdir's service directory.
    /// Recorded when the link appears; a prune stops the service, removes the link, waits
    /// for runsv to end, then removes the definition directory (with runsv's `supervise`
    /// and the log it kept).
    RunitService {
        /// The service's name.
        name: String,
        /// `<service_dir>/<name>`.
        link: PathBuf,
        /// The definition directory the link points to.
        definition: PathBuf,
    },
    /// A systemd unit. Recorded when enabling it makes its `.wants` link appear; a prune runs
    /// `systemctl disable --now`, removes the unit file and reloads systemd.
    SystemdService {
        /// The unit's name, `<name>.service`.
        unit: String,
        /// The unit file.
        unit_file: PathBuf,
        /// The link `systemctl enable` creates (`<unit_dir>/<target>.wants/<unit>`).
        enabled_link: PathBuf,
    },
}

impl Owned {
    /// The path whose presence says the item is there.
    pub fn marker(&self) -> &Path {
        match self {
            Owned::File { path }
            | Owned::Directory { path }
            | Owned::Symlink { path }
            | Owned::Tree { path } => path,
            Owned::RunitService { link, .. } => link,
            Owned::SystemdService { enabled_link, .. } => enabled_link,
        }
    }

    /// The paths a prune would remove or change for this item (for services: the link and
    /// the definition or unit file), so that a path another root manages is left alone.
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            Owned::RunitService {
                link, definition, ..
            } => vec![link, definition],
            Owned::SystemdService {
                unit_file,
                enabled_link,
                ..
            } => vec![enabled_link, unit_file],
            other => vec![other.marker()],
        }
    }

    /// Whether the item is on this host now (its marker exists; links are not followed).
    pub fn exists(&self) -> bool {
        std::fs::symlink_metadata(self.marker()).is_ok()
    }

    /// The kind, as counted in reports: `file`, `directory`, `symlink`, `tree`, `service`.
    pub fn kind(&self) -> &'static str {
        match self {
            Owned::File { .. } => "file",
            Owned::Directory { .. } => "directory",
            Owned::Symlink { .. } => "symlink",
            Owned::Tree { .. } => "tree",
            Owned::RunitService { .. } | Owned::SystemdService { .. } => "service",
        }
    }
}

impl std::fmt::Display for Owned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owned::RunitService { name, link, .. } => {
                write!(f, "runit service `{name}` (`{}`)", link.display())
            }
            Owned::SystemdService { unit, .. } => write!(f, "systemd unit `{unit}`"),
            other => write!(f, "{} `{}`", other.kind(), other.marker().display()),
        }
    }
}

/// What a prune did with one item of an orphan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneAction {
    /// Removed (in a dry run: would be removed).
    Removed,
    /// Left in place, for the reason given: not empty, managed by a root of the
    /// environment, outside the allowed paths, changed into something else.
    Kept,
    /// Removing it failed; it stays recorded, so that the next prune tries again.
    Failed,
}

/// One root component in the record, with what it created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryRoot {
    /// The root component's name.
    pub name: String,
    /// What its components created, in the order they created it.
    #[serde(default)]
    pub created: Vec<Owned>,
}

/// The ownership record of one host's base directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// The environment that owns the base directory.
    pub environment: String,
    /// The host, as that environment names it.
    pub host: String,
    /// The root components deployed here, in the order they were first deployed (which is
    /// dependency order: providers and watched roots deploy first).
    #[serde(default)]
    pub roots: Vec<InventoryRoot>,
}

/// Another environment owns the base directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "base directory `{}` on host `{host}` belongs to environment `{owner}`, so environment `{environment}` may not deploy into it",
    base_dir.display()
)]
pub struct OwnedByOther {
    /// The base directory.
    pub base_dir: PathBuf,
    /// The host, as the deploying environment names it.
    pub host: String,
    /// The environment the record names.
    pub owner: String,
    /// The environment that tried to deploy.
    pub environment: String,
}

impl OwnedByOther {
    /// What to do about it.
    pub fn hint(&self) -> String {
        format!(
            "give each environment its own `base_dir`; to hand this one over, remove the host from `{}` and deploy it with `--prune`, which releases the base directory",
            self.owner
        )
    }
}

impl Inventory {
    /// A record for `environment` with nothing deployed yet.
    pub fn new(environment: &str, host: &str) -> Self {
        Inventory {
            environment: environment.to_string(),
            host: host.to_string(),
            roots: Vec::new(),
        }
    }

    /// Where the record of `base_dir` lives.
    pub fn path(base_dir: &Path) -> PathBuf {
        base_dir.join(".batou").join(INVENTORY_FILE)
    }

    /// The record of `base_dir`, `None` when there is none.
    pub fn read(base_dir: &Path) -> anyhow::Result<Option<Inventory>> {
        use anyhow::Context;
        let path = Self::path(base_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read `{}`", path.display()));
            }
        };
        let record = serde_json::from_str(&text)
            .with_context(|| format!("cannot read the ownership record `{}`", path.display()))?;
        Ok(Some(record))
    }

    /// The record of `base_dir` for a deploy of `environment`: the one there, a new one when
    /// there is none (a base directory deployed before records existed is adopted), or
    /// [`OwnedByOther`] when another environment owns it.
    pub fn open(base_dir: &Path, environment: &str, host: &str) -> anyhow::Result<Inventory> {
        match Self::read(base_dir)? {
            None => Ok(Inventory::new(environment, host)),
            Some(record) if record.environment == environment => Ok(record),
            Some(record) => Err(OwnedByOther {
                base_dir: base_dir.to_path_buf(),
                host: host.to_string(),
                owner: record.environment,
                environment: environment.to_string(),
            }
            .into()),
        }
    }

    /// Writes the record atomically (a private temporary file, synced, renamed), creating
    /// the state directory (mode 0700) when it is missing.
    pub fn write(&self, base_dir: &Path) -> std::io::Result<()> {
        let path = Self::path(base_dir);
        let dir = path.parent().expect("the record has a directory");
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let tmp = dir.join(format!(".{INVENTORY_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)? + "\n";
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Removes the record of `base_dir`: the base directory no longer belongs to anyone.
    pub fn remove(base_dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(Self::path(base_dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Records that `root` was deployed and created `created`: the root is added at the end
    /// when it is new, new items after the ones it had, each item once. Items recorded
    /// earlier that are gone from the host are forgotten, so that a path someone else makes
    /// later is not taken for the tool's. Says whether the record changed.
    pub fn record(&mut self, root: &str, created: &[Owned]) -> bool {
        let (index, mut changed) = match self.roots.iter().position(|r| r.name == root) {
            Some(i) => (i, false),
            None => {
                self.roots.push(InventoryRoot {
                    name: root.to_string(),
                    created: Vec::new(),
                });
                (self.roots.len() - 1, true)
            }
        };
        let entry = &mut self.roots[index];
        let known = entry.created.len();
        entry.created.retain(Owned::exists);
        changed |= entry.created.len() != known;
        for item in created {
            if !entry.created.contains(item) {
                entry.created.push(item.clone());
                changed = true;
            }
        }
        changed
    }

    /// The recorded roots that are not in `current`, last deployed first (the order a prune
    /// removes them in).
    pub fn orphans(&self, current: &[String]) -> Vec<&InventoryRoot> {
        self.roots
            .iter()
            .rev()
            .filter(|r| !current.contains(&r.name))
            .collect()
    }

    /// Forgets `root` (after a prune).
    pub fn forget(&mut self, root: &str) {
        self.roots.retain(|r| r.name != root);
    }
}

/// Counts of items by kind, `{"file": 12, "directory": 2}`, for reports.
pub fn count_kinds(items: &[Owned]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for item in items {
        *counts.entry(item.kind().to_string()).or_insert(0) += 1;
    }
    counts
}

/// `12 files, 2 directories`, or `nothing` for no items.
pub fn describe_counts(counts: &std::collections::BTreeMap<String, usize>) -> String {
    let parts: Vec<String> = counts
        .iter()
        .map(|(kind, n)| {
            let plural = match (kind.as_str(), n) {
                (_, 1) => kind.clone(),
                ("directory", _) => "directories".to_string(),
                _ => format!("{kind}s"),
            };
            format!("{n} {plural}")
        })
        .collect();
    if parts.is_empty() {
        "nothing it created".to_string()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_environment_is_refused_and_the_same_one_reads_its_record() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a.txt");
        std::fs::write(&file, "x").unwrap();
        let mut record = Inventory::open(tmp.path(), "production", "web1").unwrap();
        record.record("app", &[Owned::File { path: file.clone() }]);
        record.write(tmp.path()).unwrap();
        let again = Inventory::open(tmp.path(), "production", "web1").unwrap();
        assert_eq!(again, record);
        let err = Inventory::open(tmp.path(), "staging", "web1").unwrap_err();
        let owned = err.downcast_ref::<OwnedByOther>().unwrap();
        assert_eq!(owned.owner, "production");
        assert!(
            err.to_string()
                .contains("belongs to environment `production`")
        );
        assert!(err.to_string().contains("`staging`"));
    }

    #[test]
    fn recording_keeps_order_and_forgets_what_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        std::fs::write(&a, "").unwrap();
        std::fs::write(&b, "").unwrap();
        let mut record = Inventory::new("e", "h");
        assert!(record.record("one", &[Owned::File { path: a.clone() }]));
        assert!(record.record("two", &[]), "a new root is a change");
        assert!(!record.record("two", &[]));
        assert!(record.record("one", &[Owned::File { path: b.clone() }]));
        assert!(!record.record("one", &[Owned::File { path: a.clone() }]));
        assert_eq!(record.roots[0].created.len(), 2);
        std::fs::remove_file(&a).unwrap();
        assert!(record.record("one", &[]), "a file that is gone is a change");
        assert_eq!(record.roots[0].created, vec![Owned::File { path: b }]);
        let names: Vec<&str> = record
            .orphans(&["one".into()])
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["two"]);
    }

    #[test]
    fn counts_read_as_words() {
        let items = [
            Owned::File { path: "/a".into() },
            Owned::File { path: "/b".into() },
            Owned::Directory { path: "/c".into() },
        ];
        assert_eq!(
            describe_counts(&count_kinds(&items)),
            "1 directory, 2 files"
        );
    }
}
