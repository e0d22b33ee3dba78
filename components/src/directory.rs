//! `Directory`: a directory, optionally synced from a directory of the project.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use batou_core::{AllowedPaths, Component, Configure, Deploy, ProjectEntryKind, Verdict};
use serde::Deserialize;

use crate::mode::Mode;
use crate::{File, Symlink};

/// Mode of new directories when none is given.
const DEFAULT_MODE: u32 = 0o755;

/// A directory at `path`; with `source`, its tree mirrors a project directory.
///
/// Synced entries become sub-components (`File`, `Directory`, `Symlink`), so each change is
/// reported with its diff. Entries in the target that the source lacks are left alone unless
/// `purge = true`; entries matching `exclude` are neither copied nor purged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    /// The directory's path; relative paths are relative to the root's work directory.
    pub path: String,
    /// The directory's permission bits, when they are managed.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// A project directory whose tree is copied into this one.
    #[serde(default)]
    pub source: Option<String>,
    /// Remove entries that the source does not have.
    #[serde(default)]
    pub purge: bool,
    /// Globs of entries that are neither copied from the source nor purged: a pattern
    /// without `/` matches a name at any depth (`*.pyc`, `__pycache__`), one with `/` the
    /// path below the directory (`var/cache`). An excluded directory's whole tree is
    /// excluded.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(skip)]
    excluded: Option<globset::GlobSet>,
    #[serde(skip)]
    resolved: PathBuf,
    /// Relative paths the source tree defines, for purging.
    #[serde(skip)]
    expected: BTreeSet<PathBuf>,
    #[serde(skip)]
    allowed: AllowedPaths,
}

impl Directory {
    /// A directory at `path` (relative to the work directory).
    pub fn new(path: impl Into<String>) -> Self {
        Directory {
            path: path.into(),
            mode: None,
            source: None,
            purge: false,
            exclude: Vec::new(),
            excluded: None,
            resolved: PathBuf::new(),
            expected: BTreeSet::new(),
            allowed: AllowedPaths::default(),
        }
    }

    /// Mirrors the project directory `source` into this one.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Removes entries the source does not have.
    pub fn purge(mut self) -> Self {
        self.purge = true;
        self
    }

    /// Exact permission bits, e.g. `0o750`.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(Mode(mode));
        self
    }

    /// Neither copies nor purges entries matching `pattern` (see [`Directory::exclude`]).
    pub fn exclude(mut self, pattern: impl Into<String>) -> Self {
        self.exclude.push(pattern.into());
        self
    }

    /// Whether the relative path `rel`, or a directory it lies in, is excluded.
    fn is_excluded(&self, rel: &Path) -> bool {
        let Some(set) = &self.excluded else {
            return false;
        };
        rel.ancestors()
            .filter(|a| !a.as_os_str().is_empty())
            .any(|a| set.is_match(a))
    }

    /// The `exclude` patterns as one matcher; a pattern without `/` matches at any depth.
    fn build_excluded(&self) -> anyhow::Result<Option<globset::GlobSet>> {
        if self.exclude.is_empty() {
            return Ok(None);
        }
        let mut set = globset::GlobSetBuilder::new();
        for pattern in &self.exclude {
            batou_core::refuse_nul("exclude", pattern)?;
            let trimmed = pattern.trim_matches('/');
            if trimmed.is_empty() || trimmed.split('/').any(|p| p == ".." || p == ".") {
                bail!("`exclude` pattern `{pattern}` names no entry below the directory");
            }
            let anchored = if trimmed.contains('/') {
                trimmed.to_string()
            } else {
                format!("**/{trimmed}")
            };
            let glob = globset::GlobBuilder::new(&anchored)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| {
                    anyhow::anyhow!("`exclude` pattern `{pattern}` is not a glob: {}", e.kind())
                })?;
            set.add(glob);
        }
        Ok(Some(set.build()?))
    }

    /// Entries below the directory that the source does not define, outermost only.
    fn extraneous(&self) -> anyhow::Result<Vec<PathBuf>> {
        let mut found = Vec::new();
        if !self.resolved.is_dir() {
            return Ok(found);
        }
        collect_extraneous(
            &self.resolved,
            Path::new(""),
            &|rel| self.expected.contains(rel) || self.is_excluded(rel),
            &|rel| self.is_excluded(rel),
            &mut found,
        )?;
        Ok(found)
    }

    /// Creates the directory when it is missing and gives it its mode.
    fn create_or_fix_mode(&self) -> anyhow::Result<()> {
        let created = !self.resolved.is_dir();
        if created {
            std::fs::create_dir_all(&self.resolved)
                .with_context(|| format!("cannot create `{}`", self.resolved.display()))?;
        }
        let mode = self.mode.map(|m| m.0).unwrap_or(DEFAULT_MODE);
        let current = std::fs::metadata(&self.resolved)?.permissions().mode() & 0o7777;
        // New directories get their mode whatever the umask; existing ones keep theirs
        // unless `mode` is set.
        if (self.mode.is_some() || created) && current != mode {
            std::fs::set_permissions(&self.resolved, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set mode of `{}`", self.resolved.display()))?;
        }
        Ok(())
    }
}

/// Collects the entries below `dir` that are not `kept`, descending into kept directories
/// unless they are `left` alone whole (excluded).
fn collect_extraneous(
    dir: &Path,
    relative: &Path,
    kept: &dyn Fn(&Path) -> bool,
    left: &dyn Fn(&Path) -> bool,
    found: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list `{}`", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list `{}`", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = relative.join(entry.file_name());
        if !kept(&rel) {
            found.push(rel);
        } else if !left(&rel) && entry.file_type()?.is_dir() {
            collect_extraneous(&entry.path(), &rel, kept, left, found)?;
        }
    }
    Ok(())
}

impl Component for Directory {
    fn label(&self) -> String {
        format!("Directory('{}')", self.path)
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        self.resolved = cx.path(&self.path)?;
        self.allowed = cx.allowed_paths();
        if self.purge && self.source.is_none() {
            bail!("`purge` needs a `source` to know which entries belong");
        }
        if !self.exclude.is_empty() && self.source.is_none() {
            bail!("`exclude` needs a `source`: it says which entries are not synced");
        }
        self.excluded = self.build_excluded()?;
        let Some(source) = self.source.clone() else {
            return Ok(());
        };
        let base = self.path.trim_end_matches('/').to_string();
        let entries = cx.project().walk(&source)?;
        // Sub-components converge before this directory, so the directory itself (with its
        // mode) is the first of them: the entries need it, and a dry run predicts it once,
        // there, as the real run creates it. This component then only purges.
        let mut own = Directory::new(base.clone());
        own.mode = self.mode;
        cx.add(own);
        for entry in entries {
            if self.is_excluded(Path::new(&entry.relative)) {
                continue;
            }
            self.expected.insert(PathBuf::from(&entry.relative));
            let target = format!("{base}/{}", entry.relative);
            let from = format!("{}/{}", source.trim_end_matches('/'), entry.relative);
            match entry.kind {
                ProjectEntryKind::Directory => cx.add(Directory::new(target).mode(entry.mode)),
                ProjectEntryKind::File => cx.add(
                    File::new(target)
                        .source(from)
                        .mode(entry.mode)
                        .create_parents(),
                ),
                ProjectEntryKind::Symlink => {
                    // Copied as a symlink with the same target, never followed: what it
                    // points to is not read, wherever it points.
                    let link = cx.project().read_link(&from)?;
                    cx.add(Symlink::new(target, link.to_string_lossy()))
                }
            };
        }
        Ok(())
    }

    fn reads_written_files(&self) -> bool {
        // A synced tree is compared entry by entry, which may include files written before.
        self.source.is_some()
    }

    fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> {
        self.allowed.check(&self.resolved)?;
        let meta = match std::fs::symlink_metadata(&self.resolved) {
            // With a source, the first sub-component creates the directory: missing here
            // means a dry run, in which it was predicted there and nothing is left to purge.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.source.is_some() => {
                return Ok(Verdict::UpToDate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Verdict::needs_update("missing"));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot inspect `{}`", self.resolved.display()));
            }
            Ok(meta) => meta,
        };
        if !meta.is_dir() {
            bail!(
                "`{}` exists and is not a directory",
                self.resolved.display()
            );
        }
        let mut reasons = Vec::new();
        let mode = meta.permissions().mode() & 0o7777;
        // With a source, the mode belongs to the first sub-component.
        if let Some(want) = self.mode.filter(|_| self.source.is_none())
            && want.0 != mode
        {
            reasons.push(format!("mode {} -> {want}", Mode(mode)));
        }
        if self.purge {
            let extra = self.extraneous()?;
            if !extra.is_empty() {
                let names: Vec<String> = extra.iter().map(|p| p.display().to_string()).collect();
                reasons.push(format!("extraneous: {}", names.join(", ")));
            }
        }
        Ok(if reasons.is_empty() {
            Verdict::UpToDate
        } else {
            Verdict::needs_update(reasons.join("; "))
        })
    }

    /// The directory (with a `source`, its first sub-component creates it; the synced
    /// entries are sub-components of their own).
    fn owned(&self) -> Vec<batou_core::Owned> {
        if self.source.is_some() {
            return Vec::new();
        }
        vec![batou_core::Owned::Directory {
            path: self.resolved.clone(),
        }]
    }

    fn update(&mut self, _cx: &mut Deploy) -> anyhow::Result<()> {
        self.allowed.check(&self.resolved)?;
        if self.source.is_none() {
            self.create_or_fix_mode()?;
        }
        if self.purge {
            for rel in self.extraneous()? {
                let path = self.resolved.join(&rel);
                let meta = std::fs::symlink_metadata(&path)?;
                if meta.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                }
                .with_context(|| format!("cannot remove `{}`", path.display()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use batou_core::ConvergeOptions;

    use crate::test_util::{config_error, mode, pairs, project};

    const DATA: &str = r#"
[hosts.localhost]
components = ["data"]

[components.data]
type = "directory"
path = "data"
mode = 0o750
"#;

    const SITE: &str = r#"
[hosts.localhost]
components = ["site"]

[components.site]
type = "directory"
path = "htdocs"
source = "site"
purge = true
"#;

    /// A project whose `site/` holds a page, a stylesheet below `css/` and a symlink.
    fn site() -> batou_core::testing::TestProject {
        let project = project(SITE);
        project.file("site/index.html", "<h1>shop</h1>\n");
        project.file("site/css/shop.css", "h1 { color: red }\n");
        std::os::unix::fs::symlink("index.html", project.root().join("site/home.html")).unwrap();
        project
    }

    #[test]
    fn a_directory_gets_its_mode_and_drift_is_repaired() {
        let project = project(DATA);
        let run = project.converge("dev");
        run.assert_changed(&["data > Workdir", "data"]);
        assert_eq!(
            run.reasons(),
            pairs(&[("data > Workdir", "missing"), ("data", "missing")])
        );
        let path = project.workdir("data").join("data");
        assert_eq!(mode(&path), 0o750);
        project.converge("dev").assert_unchanged();

        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let run = project.converge("dev");
        run.assert_changed(&["data"]);
        assert_eq!(run.reasons(), pairs(&[("data", "mode 0700 -> 0750")]));
        assert_eq!(mode(&path), 0o750);
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn a_source_tree_is_mirrored_entry_by_entry() {
        let project = site();
        let run = project.converge("dev");
        run.assert_changed(&[
            "site > Workdir",
            "site > Directory('htdocs')",
            "site > Directory('htdocs/css')",
            "site > File('htdocs/css/shop.css')",
            "site > Symlink('htdocs/home.html')",
            "site > File('htdocs/index.html')",
        ]);
        let htdocs = project.workdir("site").join("htdocs");
        assert_eq!(
            std::fs::read_to_string(htdocs.join("css/shop.css")).unwrap(),
            "h1 { color: red }\n"
        );
        assert_eq!(
            std::fs::read_link(htdocs.join("home.html")).unwrap(),
            std::path::Path::new("index.html")
        );
        assert_eq!(
            run.diffs()
                .iter()
                .map(|(c, _)| c.as_str())
                .collect::<Vec<_>>(),
            [
                "site > File('htdocs/css/shop.css')",
                "site > File('htdocs/index.html')"
            ]
        );
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn a_dry_run_predicts_the_tree_exactly_and_creates_nothing() {
        let project = site();
        let dry = project.dry_run("dev");
        // The directory itself is predicted once, as its first sub-component, which is
        // where the run creates it; the root only purges.
        dry.assert_changed(&[
            "site > Workdir",
            "site > Directory('htdocs')",
            "site > Directory('htdocs/css')",
            "site > File('htdocs/css/shop.css')",
            "site > Symlink('htdocs/home.html')",
            "site > File('htdocs/index.html')",
        ]);
        assert!(!project.base_dir().exists());
        project.assert_prediction_matches("dev");
    }

    #[test]
    fn predictions_match_the_run_for_plain_directories() {
        let project = project(DATA);
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["data > Workdir", "data"]);
        let path = project.workdir("data").join("data");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["data"]);
        std::fs::remove_dir(&path).unwrap();
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["data"]);
    }

    #[test]
    fn predictions_match_the_run_for_a_source_tree_as_it_drifts() {
        let project = project(&format!("{SITE}mode = 0o750\n"));
        project.file("site/index.html", "<h1>shop</h1>\n");
        project.file("site/css/shop.css", "h1 { color: red }\n");
        project.file("site/css/print/print.css", "h1 { color: black }\n");
        project.assert_prediction_matches("dev");
        let htdocs = project.workdir("site").join("htdocs");

        // A changed, a removed and a stray file, a stray directory.
        std::fs::write(htdocs.join("index.html"), "<h1>defaced</h1>\n").unwrap();
        std::fs::remove_file(htdocs.join("css/shop.css")).unwrap();
        std::fs::write(htdocs.join("css/stray.css"), "").unwrap();
        std::fs::create_dir(htdocs.join("old")).unwrap();
        project.assert_prediction_matches("dev").assert_changed(&[
            "site > File('htdocs/css/shop.css')",
            "site > File('htdocs/index.html')",
            "site",
        ]);

        // A removed nested directory, and the top directory's mode.
        std::fs::remove_dir_all(htdocs.join("css")).unwrap();
        std::fs::set_permissions(&htdocs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        project.assert_prediction_matches("dev").assert_changed(&[
            "site > Directory('htdocs')",
            "site > Directory('htdocs/css')",
            "site > Directory('htdocs/css/print')",
            "site > File('htdocs/css/print/print.css')",
            "site > File('htdocs/css/shop.css')",
        ]);
        assert_eq!(mode(&htdocs), 0o750);

        // The whole tree removed.
        std::fs::remove_dir_all(&htdocs).unwrap();
        assert_eq!(project.assert_prediction_matches("dev").changed().len(), 6);

        // A source file removed from the project: purged.
        std::fs::remove_file(project.root().join("site/index.html")).unwrap();
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["site"]);
        assert!(!htdocs.join("index.html").exists());
    }

    #[test]
    fn purge_removes_what_the_source_lacks_and_a_changed_file_is_rewritten() {
        let project = site();
        project.converge("dev");
        let htdocs = project.workdir("site").join("htdocs");
        std::fs::write(htdocs.join("stray.txt"), "left over\n").unwrap();
        std::fs::create_dir(htdocs.join("old")).unwrap();
        std::fs::write(htdocs.join("old/page.html"), "old\n").unwrap();
        std::fs::write(htdocs.join("index.html"), "<h1>defaced</h1>\n").unwrap();

        let run = project.converge("dev");
        run.assert_changed(&["site > File('htdocs/index.html')", "site"]);
        assert_eq!(
            run.reasons(),
            pairs(&[
                ("site > File('htdocs/index.html')", "content differs"),
                ("site", "extraneous: old, stray.txt"),
            ])
        );
        assert!(!htdocs.join("stray.txt").exists());
        assert!(!htdocs.join("old").exists());
        assert_eq!(
            std::fs::read_to_string(htdocs.join("index.html")).unwrap(),
            "<h1>shop</h1>\n"
        );
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn purge_without_a_source_is_a_configuration_error() {
        let project = project(&format!("{DATA}purge = true\n"));
        let err = config_error(&project);
        assert!(
            err.contains("`purge` needs a `source` to know which entries belong"),
            "{err}"
        );
    }

    #[test]
    fn a_file_in_the_way_is_a_failure_naming_it() {
        let project = project(DATA);
        std::fs::create_dir_all(project.workdir("data")).unwrap();
        std::fs::write(project.workdir("data").join("data"), "").unwrap();
        let run = project.run("dev", ConvergeOptions::default());
        let failure = run.failure().expect("a directory cannot replace a file");
        assert!(
            failure.ends_with("/work/data/data` exists and is not a directory"),
            "{failure}"
        );
    }

    #[test]
    fn excluded_entries_are_neither_copied_nor_purged() {
        let project = project(
            r#"
[hosts.localhost]
components = ["site"]

[components.site]
type = "directory"
path = "htdocs"
source = "site"
purge = true
exclude = ["*.pyc", "var/cache"]
"#,
        );
        project.file("site/index.html", "<h1>shop</h1>\n");
        project.file("site/app.pyc", "bytecode");
        project.file("site/lib/mod.pyc", "bytecode");
        project.file("site/lib/mod.py", "pass\n");
        project.file("site/var/cache/x", "cached\n");
        let htdocs = project.workdir("site").join("htdocs");
        std::fs::create_dir_all(htdocs.join("var/cache/local")).unwrap();
        std::fs::write(htdocs.join("var/cache/local/state"), "mine").unwrap();
        std::fs::write(htdocs.join("local.pyc"), "mine").unwrap();
        std::fs::write(htdocs.join("stray.html"), "old").unwrap();
        let dry = project.dry_run("dev");
        assert!(
            dry.reasons()
                .contains(&("site".into(), "extraneous: stray.html".into())),
            "{:?}",
            dry.reasons()
        );
        project.assert_prediction_matches("dev");
        assert!(htdocs.join("index.html").is_file());
        assert!(htdocs.join("lib/mod.py").is_file());
        assert!(!htdocs.join("app.pyc").exists());
        assert!(!htdocs.join("lib/mod.pyc").exists());
        assert!(!htdocs.join("var/cache/x").exists());
        assert!(htdocs.join("var/cache/local/state").is_file());
        assert!(htdocs.join("local.pyc").is_file());
        assert!(!htdocs.join("stray.html").exists());
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn exclude_without_a_source_or_with_a_bad_pattern_is_refused() {
        let env = |attributes: &str| {
            project(&format!(
                "[hosts.localhost]\ncomponents = [\"d\"]\n\n[components.d]\ntype = \"directory\"\npath = \"d\"\n{attributes}"
            ))
        };
        let err = config_error(&env("exclude = [\"*.pyc\"]\n"));
        assert!(
            err.ends_with("`exclude` needs a `source`: it says which entries are not synced"),
            "{err}"
        );
        let err = config_error(&env("source = \"site\"\nexclude = [\"../x\"]\n"));
        assert!(
            err.ends_with("`exclude` pattern `../x` names no entry below the directory"),
            "{err}"
        );
        let err = config_error(&env("source = \"site\"\nexclude = [\"[a\"]\n"));
        assert!(
            err.contains("`exclude` pattern `[a` is not a glob"),
            "{err}"
        );
    }
}
