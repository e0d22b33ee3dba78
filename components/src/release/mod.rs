//! `Release`: a project's files, built once on the controller, bundled deterministically and
//! named by digest, shipped once per host into its store, unpacked beside earlier releases
//! and activated by renaming a `current` link over the old one.
//!
//! On a host, below `base_dir`:
//!
//! ```text
//! releases/.store/<digest>        shipped bundles, verified (shared by every release root)
//! releases/<root>/<id>/           unpacked releases, writable by their owner only
//! releases/<root>/current -> <id>
//! releases/<root>/.history.jsonl  every activation and rollback: when, by whom
//! ```
//!
//! Building is in `bundle.rs`, the store in [`store`]; shipping to remote hosts is the
//! controller's (`batou-remote`), rolling back after an unhealthy service the runtime's,
//! through [`ReleaseControl`].

mod bundle;
pub mod store;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use batou_core::journal::{JournalEntry, JournalRecord, ReleaseAction};
use batou_core::protocol::Controller;
use batou_core::{Bundle, Component, Configure, Deploy, ReleaseControl, ReleaseEntry, Verdict};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use bundle::Spec;

/// Releases kept when `keep` is not given.
const DEFAULT_KEEP: usize = 5;

/// A release of project files.
///
/// ```toml
/// [components.app]
/// type = "release"
/// build = ["cargo", "build", "--release", "--bin", "app"]   # optional, run once on the controller
/// files = ["target/release/app", "static/"]                 # project paths that make the bundle
/// keep = 5
/// ```
///
/// Other root components of the host see `{{ release.current }}` (the link that follows
/// activations and rollbacks), `{{ release.path }}`, `{{ release.id }}` and
/// `{{ release.digest }}` in their attributes (with several release roots on a host:
/// `{{ releases.<root>.current }}`); services name it in `restart_on`.
///
/// From Rust: `Release::new(["app.sh"]).build(["make"]).keep(5)`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Program and arguments run in the project before bundling.
    #[serde(default)]
    build: Option<Vec<String>>,
    /// Project-relative files and directories of the release.
    files: Vec<String>,
    /// Releases kept on the host (`current` and the one before it always are).
    #[serde(default = "default_keep")]
    keep: usize,
    #[serde(skip)]
    configured: Option<Configured>,
}

fn default_keep() -> usize {
    DEFAULT_KEEP
}

struct Configured {
    bundle: Bundle,
    layout: Layout,
    environment: String,
    allowed: batou_core::AllowedPaths,
}

/// Where one release root's releases live.
struct Layout {
    base_dir: PathBuf,
    dir: PathBuf,
    store: PathBuf,
}

/// One line of `.history.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct History {
    time: String,
    action: ReleaseAction,
    id: String,
    previous: Option<String>,
    by: String,
}

impl Release {
    /// A release of these project files and directories.
    pub fn new<S: Into<String>>(files: impl IntoIterator<Item = S>) -> Self {
        Release {
            build: None,
            files: files.into_iter().map(Into::into).collect(),
            keep: DEFAULT_KEEP,
            configured: None,
        }
    }

    /// Runs `argv` in the project (on the controller, once per deploy) before bundling.
    pub fn build<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.build = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Keeps this many releases on the host.
    pub fn keep(mut self, keep: usize) -> Self {
        self.keep = keep;
        self
    }

    fn configured(&self) -> anyhow::Result<&Configured> {
        match &self.configured {
            Some(c) if c.bundle.is_unbuilt() => {
                bail!("the release was planned without building it, so it cannot be deployed")
            }
            Some(c) => Ok(c),
            None => bail!("the release was not configured"),
        }
    }
}

impl Component for Release {
    fn label(&self) -> String {
        "Release".into()
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        if self.keep == 0 {
            bail!("`keep` must be at least 1");
        }
        if self.build.as_ref().is_some_and(Vec::is_empty) {
            bail!("`build` is empty: give a program to run, or leave `build` out");
        }
        let spec = Spec {
            build: self.build.clone(),
            files: self.files.clone(),
        };
        let bundle = cx.bundle(&spec, |project| bundle::build(project.root(), &spec))?;
        let base_dir = cx.base_dir().to_path_buf();
        // Below the base directory by construction (root names are names); not through
        // `cx.path`, which resolves relative to the work directory.
        let dir = batou_core::bundle::release_root(&base_dir, cx.root());
        self.configured = Some(Configured {
            bundle,
            layout: Layout {
                store: batou_core::bundle::store_dir(&base_dir),
                dir,
                base_dir,
            },
            environment: cx.environment().to_string(),
            allowed: cx.allowed_paths(),
        });
        Ok(())
    }

    fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
        let c = self.configured()?;
        c.allowed.check(&c.layout.dir)?;
        let id = &c.bundle.id;
        let current = c.layout.current();
        if !c.layout.dir.join(id).is_dir() {
            return Ok(Verdict::needs_update(if cx.dry_run() {
                format!("would unpack and activate release {id}")
            } else {
                format!("unpacked and activated release {id}")
            }));
        }
        if current.as_deref() != Some(id.as_str()) {
            let was = current.as_deref().unwrap_or("none");
            return Ok(Verdict::needs_update(if cx.dry_run() {
                format!("would activate release {id} (current: {was})")
            } else {
                format!("activated release {id} (current was {was})")
            }));
        }
        let prunable = c.layout.prunable(self.keep)?;
        if !prunable.is_empty() {
            return Ok(Verdict::needs_update(format!(
                "{} {} beyond `keep = {}`",
                if cx.dry_run() {
                    "would remove"
                } else {
                    "removed"
                },
                prunable.join(", "),
                self.keep
            )));
        }
        Ok(Verdict::UpToDate)
    }

    fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
        let c = self.configured()?;
        let id = &c.bundle.id;
        if !c.layout.dir.join(id).is_dir() {
            c.layout.unpack(&c.bundle)?;
        }
        let current = c.layout.current();
        if current.as_deref() != Some(id.as_str()) {
            c.layout.switch(id)?;
            c.record(cx, ReleaseAction::Activated, id, current.as_deref())?;
        }
        for removed in c.layout.prunable(self.keep)? {
            c.layout.remove(&removed)?;
            cx.detail(format!("removed release {removed}"));
        }
        Ok(())
    }

    fn release(&self) -> Option<&dyn ReleaseControl> {
        Some(self)
    }

    /// The root's releases directory (unpacked releases, `current`, the history), which is
    /// the tool's as a whole. The store of bundles is shared by digest and stays.
    fn owned(&self) -> Vec<batou_core::Owned> {
        self.configured
            .as_ref()
            .map(|c| {
                vec![batou_core::Owned::Tree {
                    path: c.layout.dir.clone(),
                }]
            })
            .unwrap_or_default()
    }
}

impl ReleaseControl for Release {
    fn releases(&self, _cx: &mut Deploy) -> anyhow::Result<Vec<ReleaseEntry>> {
        let c = self
            .configured
            .as_ref()
            .context("the release was not configured")?;
        let current = c.layout.current();
        let history = c.layout.history();
        Ok(c.layout
            .ids()?
            .into_iter()
            .map(|id| {
                let last = history.iter().rev().find(|h| h.id == id);
                ReleaseEntry {
                    current: current.as_deref() == Some(id.as_str()),
                    activated: last.map(|h| h.time.clone()),
                    by: last.map(|h| h.by.clone()),
                    id,
                }
            })
            .collect())
    }

    fn roll_back(&self, cx: &mut Deploy, to: Option<&str>) -> anyhow::Result<(String, String)> {
        let c = self
            .configured
            .as_ref()
            .context("the release was not configured")?;
        c.allowed.check(&c.layout.dir)?;
        let Some(current) = c.layout.current() else {
            bail!(
                "no release is current in `{}`: nothing to roll back",
                c.layout.dir.display()
            );
        };
        let ids = c.layout.ids()?;
        let target = match to {
            Some(to) => {
                if !ids.iter().any(|i| i == to) {
                    let known: Vec<String> = ids.iter().map(|i| format!("`{i}`")).collect();
                    return Err(batou_core::ConfigError::new(format!(
                        "release `{to}` is not on host `{}`",
                        cx.host().name
                    ))
                    .suggest(to, ids.iter().map(String::as_str))
                    .hint(format!("releases there: {}", known.join(", ")))
                    .into());
                }
                to.to_string()
            }
            None => match c.layout.previous(&current)? {
                Some(previous) => previous,
                None => bail!("there is no previous release to roll back to (current: {current})"),
            },
        };
        if target != current {
            c.layout.switch(&target)?;
            c.record(cx, ReleaseAction::RolledBack, &target, Some(&current))?;
            cx.log(format!("switched release {current} -> {target}"));
        }
        Ok((current, target))
    }
}

impl Configured {
    /// Appends the activation or rollback to the release's history and, on an agent, to the
    /// host's journal.
    fn record(
        &self,
        cx: &mut Deploy,
        action: ReleaseAction,
        id: &str,
        previous: Option<&str>,
    ) -> anyhow::Result<()> {
        let time = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
        let state = self.layout.base_dir.join(".batou");
        // An agent holds the host's lock with the controller's name in it.
        let holder: Option<Controller> = std::fs::read_to_string(state.join("lock"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let by = match &holder {
            Some(h) => format!("{}@{}", h.user, h.host),
            None => format!(
                "{}@{}",
                std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
                nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
        };
        let line = History {
            time: time.clone(),
            action,
            id: id.to_string(),
            previous: previous.map(str::to_string),
            by,
        };
        let text = serde_json::to_string(&line).expect("history lines serialize") + "\n";
        append(&self.layout.dir.join(".history.jsonl"), text.as_bytes())?;
        if let Some(h) = holder {
            let record = JournalRecord {
                time,
                environment: self.environment.clone(),
                host: cx.host().name.clone(),
                user: h.user,
                controller_host: h.host,
                pid: h.pid,
                entry: JournalEntry::Release {
                    component: cx.component_path().to_string(),
                    action,
                    id: id.to_string(),
                    previous: previous.map(str::to_string),
                },
            };
            batou_core::journal::append(&state.join("journal.jsonl"), &record)
                .context("cannot append to the host's journal")?;
        }
        Ok(())
    }
}

impl Layout {
    /// The id `current` points at.
    fn current(&self) -> Option<String> {
        let target = std::fs::read_link(self.dir.join("current")).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    /// The unpacked releases, oldest first (ids sort by time).
    fn ids(&self) -> anyhow::Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot list `{}`", self.dir.display()));
            }
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "current" || !entry.file_type()?.is_dir() {
                continue;
            }
            ids.push(name);
        }
        ids.sort();
        Ok(ids)
    }

    fn history(&self) -> Vec<History> {
        std::fs::read_to_string(self.dir.join(".history.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The release that was current before `current` was last made current, if it is still
    /// there; without history, the newest release older than `current`.
    fn previous(&self, current: &str) -> anyhow::Result<Option<String>> {
        let ids = self.ids()?;
        let recorded = self
            .history()
            .into_iter()
            .rev()
            .find(|h| h.id == current)
            .and_then(|h| h.previous)
            .filter(|p| p != current && ids.contains(p));
        Ok(recorded.or_else(|| ids.into_iter().rev().find(|i| i.as_str() < current)))
    }

    /// Releases beyond `keep`, oldest first, never `current` nor the one before it.
    fn prunable(&self, keep: usize) -> anyhow::Result<Vec<String>> {
        let ids = self.ids()?;
        let current = self.current();
        let previous = match &current {
            Some(c) => self.previous(c)?,
            None => None,
        };
        let protected = |id: &String| Some(id) == current.as_ref() || Some(id) == previous.as_ref();
        let mut excess = ids.len().saturating_sub(keep);
        let mut out = Vec::new();
        for id in ids {
            if excess == 0 {
                break;
            }
            if !protected(&id) {
                out.push(id);
                excess -= 1;
            }
        }
        Ok(out)
    }

    /// Unpacks the stored bundle into `.<id>.unpacking` beside the releases, checking its
    /// digest on the way, makes it writable by its owner only and renames it to `<id>`.
    fn unpack(&self, bundle: &Bundle) -> anyhow::Result<()> {
        let stored = store::entry(&self.store, &bundle.digest);
        let file = std::fs::File::open(&stored).with_context(|| {
            format!(
                "bundle {} of release {} is not in the host's store `{}`",
                bundle.short_digest(),
                bundle.id,
                self.store.display()
            )
        })?;
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create `{}`", self.dir.display()))?;
        let tmp = self.dir.join(format!(".{}.unpacking", bundle.id));
        if tmp.exists() {
            remove_tree(&tmp)?;
        }
        let result = (|| {
            let mut reader = HashingReader {
                inner: std::io::BufReader::new(file),
                hasher: sha2::Sha256::new(),
            };
            {
                let decoder = zstd::Decoder::new(&mut reader)?;
                let mut archive = tar::Archive::new(decoder);
                archive.set_preserve_permissions(true);
                archive.set_preserve_mtime(false);
                archive
                    .unpack(&tmp)
                    .with_context(|| format!("cannot unpack into `{}`", tmp.display()))?;
            }
            std::io::copy(&mut reader, &mut std::io::sink())?;
            let actual = bundle::hex(&reader.hasher.finalize());
            if actual != bundle.digest {
                let _ = std::fs::remove_file(&stored);
                bail!(
                    "the stored bundle `{}` is corrupt (sha256 {actual}): it was removed, the next deploy ships it again",
                    stored.display()
                );
            }
            read_only_for_others(&tmp)?;
            std::fs::rename(&tmp, self.dir.join(&bundle.id))
                .with_context(|| format!("cannot rename `{}`", tmp.display()))?;
            Ok(())
        })();
        if result.is_err() {
            let _ = remove_tree(&tmp);
        }
        result
    }

    /// Points `current` at `id`: a new link renamed over the old one.
    fn switch(&self, id: &str) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!(".current.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(id, &tmp)
            .with_context(|| format!("cannot create `{}`", tmp.display()))?;
        std::fs::rename(&tmp, self.dir.join("current"))
            .with_context(|| format!("cannot switch `{}`", self.dir.join("current").display()))?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    /// Removes a release: renamed away first, so that no half-removed release keeps its id.
    fn remove(&self, id: &str) -> anyhow::Result<()> {
        let away = self.dir.join(format!(".{id}.removing"));
        std::fs::rename(self.dir.join(id), &away)
            .with_context(|| format!("cannot remove release `{id}`"))?;
        remove_tree(&away)
    }
}

/// Removes a tree whose directories may lack the owner's write bit.
fn remove_tree(path: &Path) -> anyhow::Result<()> {
    for entry in walk(path)? {
        let meta = std::fs::symlink_metadata(&entry)?;
        if meta.is_dir() {
            let mode = meta.permissions().mode() | 0o700;
            std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode))?;
        }
    }
    std::fs::remove_dir_all(path).with_context(|| format!("cannot remove `{}`", path.display()))
}

/// Takes the group's and others' write bits away from a tree (links keep theirs).
fn read_only_for_others(path: &Path) -> anyhow::Result<()> {
    for entry in walk(path)? {
        let meta = std::fs::symlink_metadata(&entry)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7755;
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// `path` and everything below it (not following links).
fn walk(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = vec![path.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if std::fs::symlink_metadata(&p)?.is_dir() {
            for entry in std::fs::read_dir(&p)? {
                out.push(entry?.path());
            }
        }
        i += 1;
    }
    Ok(out)
}

fn append(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open `{}`", path.display()))?;
    file.write_all(data)?;
    file.sync_all()?;
    Ok(())
}

/// A reader that hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use batou_core::{Component, Configure};
    use serde::Deserialize;

    use super::*;
    use crate::test_util::project_with;

    /// A project's own root type that adds a release from Rust.
    #[derive(Deserialize)]
    struct Shop {}

    impl Component for Shop {
        fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
            cx.add(
                Release::new(["site"])
                    .build(["sh", "-c", "echo built > site/built.txt"])
                    .keep(2),
            );
            Ok(())
        }
    }

    #[test]
    fn a_release_from_rust_builds_unpacks_and_activates() {
        let project = project_with::<Shop>(
            "shop",
            "[hosts.localhost]\ncomponents = [\"shop\"]\n\n[components.shop]\ntype = \"shop\"\n",
        );
        project.file("site/index.html", "v1");
        // What `batou-local` does before converging: the bundle into the local store.
        let plan = project.configure("dev").unwrap();
        let bundles = plan.host_bundles("localhost");
        assert_eq!(bundles.len(), 1);
        let store = batou_core::bundle::store_dir(&project.base_dir());
        store::ensure_local(&store, &bundles[0].digest, Path::new(&bundles[0].archive)).unwrap();

        let run = project.converge("dev");
        run.assert_succeeded();
        let dir = project.base_dir().join("releases/shop");
        let id = &bundles[0].id;
        assert_eq!(
            std::fs::read_link(dir.join("current")).unwrap(),
            Path::new(id)
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(id).join("site/built.txt")).unwrap(),
            "built\n"
        );
        project.converge("dev").assert_unchanged();
    }
}
