//! `Purge`: removing what matches a glob, only below the paths a deployment may change.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use batou_core::{AllowedPaths, Component, ConfigError, Configure, Deploy, Verdict, refuse_nul};
use serde::Deserialize;

/// How many matches a verdict names before it counts the rest.
const NAMED: usize = 10;

/// Removes every file, symlink and directory (with its content) that matches `pattern`.
///
/// ```toml
/// [components.old-builds]
/// type = "purge"
/// pattern = "builds/*.tmp"      # relative to the work directory; `**` crosses directories
/// ```
///
/// The pattern's leading part without wildcards is the directory it searches (`builds`); it
/// must lie inside the allowed paths, and matches lie strictly below it. `*`, `?` and `[..]`
/// match within one name, `**` any number of directories. Symlinks are removed as links,
/// never followed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    /// The glob; relative to the work directory, or absolute inside the allowed paths.
    pub pattern: String,
    #[serde(skip)]
    base: PathBuf,
    /// The pattern's parts below `base`, one glob per path part.
    #[serde(skip)]
    matcher: Option<Matcher>,
    /// Paths a purge never removes, nor a directory holding them: the host's state
    /// directory (nor anything in it), the directory of work directories and this root
    /// component's own.
    #[serde(skip)]
    protected: Vec<PathBuf>,
    #[serde(skip)]
    allowed: AllowedPaths,
}

#[derive(Debug, Clone)]
struct Matcher {
    glob: globset::GlobMatcher,
    /// How deep below `base` a match can lie; `None` with `**`.
    depth: Option<usize>,
}

impl Purge {
    /// Removes what matches `pattern` (relative to the work directory).
    pub fn new(pattern: impl Into<String>) -> Self {
        Purge {
            pattern: pattern.into(),
            base: PathBuf::new(),
            matcher: None,
            protected: Vec::new(),
            allowed: AllowedPaths::default(),
        }
    }

    /// Every match below `base`, outermost only, sorted.
    fn matches(&self) -> anyhow::Result<Vec<PathBuf>> {
        let matcher = self
            .matcher
            .as_ref()
            .expect("configure builds the matcher before verify");
        let mut found = Vec::new();
        match std::fs::symlink_metadata(&self.base) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => bail!(
                "`{}`, where pattern `{}` searches, is not a directory",
                self.base.display(),
                self.pattern
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot inspect `{}`", self.base.display()));
            }
        }
        walk(&self.base, Path::new(""), 1, matcher, &mut found)?;
        for path in &found {
            let full = self.base.join(path);
            if let Some(p) = self
                .protected
                .iter()
                .find(|p| p.starts_with(&full) || (p.ends_with(".batou") && full.starts_with(p)))
            {
                bail!(
                    "pattern `{}` matches `{}`, which holds `{}`: a purge never removes the host's state or a work directory",
                    self.pattern,
                    full.display(),
                    p.display()
                );
            }
            self.allowed.check(&full)?;
        }
        Ok(found)
    }
}

/// Collects the entries below `dir` that match, not descending into a match or a symlink.
fn walk(
    dir: &Path,
    relative: &Path,
    depth: usize,
    matcher: &Matcher,
    found: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list `{}`", dir.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot list `{}`", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = relative.join(entry.file_name());
        if matcher.glob.is_match(&rel) {
            found.push(rel);
        } else if entry.file_type()?.is_dir() && matcher.depth.is_none_or(|d| depth < d) {
            walk(&entry.path(), &rel, depth + 1, matcher, found)?;
        }
    }
    Ok(())
}

/// Whether a path part holds glob syntax.
fn is_glob(part: &str) -> bool {
    part.contains(['*', '?', '[', '{'])
}

impl Component for Purge {
    fn label(&self) -> String {
        format!("Purge('{}')", self.pattern)
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        refuse_nul("pattern", &self.pattern)?;
        let parts: Vec<&str> = self.pattern.split('/').collect();
        let Some(first_glob) = parts.iter().position(|p| is_glob(p)) else {
            return Err(ConfigError::new(format!(
                "pattern `{}` has no wildcard",
                self.pattern
            ))
            .hint("a purge removes what matches a glob such as `builds/*.tmp`; use `*`, `?`, `[..]` or `**`")
            .into());
        };
        if parts[first_glob..].iter().any(|p| *p == ".." || *p == ".") {
            bail!(
                "pattern `{}` has `.` or `..` after its first wildcard",
                self.pattern
            );
        }
        let base = parts[..first_glob].join("/");
        let base = if base.is_empty() && self.pattern.starts_with('/') {
            "/".to_string()
        } else {
            base
        };
        self.base = cx.path(if base.is_empty() { "." } else { &base })?;
        let rest = parts[first_glob..].join("/");
        let glob = globset::GlobBuilder::new(&rest)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| {
                anyhow::anyhow!("pattern `{}` is not a glob: {}", self.pattern, e.kind())
            })?;
        let depth = (!rest.contains("**")).then(|| rest.split('/').count());
        self.matcher = Some(Matcher {
            glob: glob.compile_matcher(),
            depth,
        });
        self.protected = vec![
            cx.base_dir().join(".batou"),
            cx.base_dir().join("work"),
            cx.workdir().to_path_buf(),
        ];
        self.allowed = cx.allowed_paths();
        Ok(())
    }

    fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> {
        let found = self.matches()?;
        if found.is_empty() {
            return Ok(Verdict::UpToDate);
        }
        let mut names: Vec<String> = found
            .iter()
            .take(NAMED)
            .map(|p| p.display().to_string())
            .collect();
        if found.len() > NAMED {
            names.push(format!("and {} more", found.len() - NAMED));
        }
        Ok(Verdict::needs_update(format!(
            "matches: {}",
            names.join(", ")
        )))
    }

    fn update(&mut self, _cx: &mut Deploy) -> anyhow::Result<()> {
        for rel in self.matches()? {
            let path = self.base.join(&rel);
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("cannot inspect `{}`", path.display()))?;
            // `remove_dir_all` does not follow symlinks inside the tree; a matched symlink is
            // removed as a link.
            if meta.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            }
            .with_context(|| format!("cannot remove `{}`", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use batou_core::ConvergeOptions;

    use crate::test_util::{config_error, pairs, project};

    fn purge(pattern: &str) -> batou_core::testing::TestProject {
        project(&format!(
            "[hosts.localhost]\ncomponents = [\"clean\"]\n\n[components.clean]\ntype = \"purge\"\npattern = \"{pattern}\"\n"
        ))
    }

    #[test]
    fn what_matches_is_removed_and_the_rest_is_kept() {
        let project = purge("builds/*.tmp");
        let builds = project.workdir("clean").join("builds");
        std::fs::create_dir_all(builds.join("b.tmp/inner")).unwrap();
        std::fs::create_dir_all(builds.join("keep/deep")).unwrap();
        std::fs::write(builds.join("a.tmp"), "x").unwrap();
        std::fs::write(builds.join("keep/deep/c.tmp"), "x").unwrap();
        std::fs::write(builds.join("app"), "x").unwrap();
        std::os::unix::fs::symlink("/etc", builds.join("etc.tmp")).unwrap();
        let dry = project.dry_run("dev");
        assert_eq!(
            dry.reasons(),
            pairs(&[("clean", "matches: a.tmp, b.tmp, etc.tmp")])
        );
        assert!(builds.join("a.tmp").exists());
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["clean"]);
        assert!(!builds.join("a.tmp").exists());
        assert!(!builds.join("b.tmp").exists());
        assert!(std::fs::symlink_metadata(builds.join("etc.tmp")).is_err());
        assert!(
            std::path::Path::new("/etc").is_dir(),
            "a link's target is left alone"
        );
        assert!(builds.join("keep/deep/c.tmp").exists());
        assert!(builds.join("app").exists());
        project.converge("dev").assert_unchanged();

        let project = purge("builds/**/*.tmp");
        let builds = project.workdir("clean").join("builds");
        std::fs::create_dir_all(builds.join("keep/deep")).unwrap();
        std::fs::write(builds.join("keep/deep/c.tmp"), "x").unwrap();
        let run = project.converge("dev");
        assert_eq!(
            run.reasons(),
            pairs(&[("clean", "matches: keep/deep/c.tmp")])
        );
        assert!(builds.join("keep/deep").is_dir());
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn a_missing_directory_has_nothing_to_purge() {
        let project = purge("builds/*");
        project.converge_twice("dev");
    }

    #[test]
    fn patterns_outside_the_allowed_paths_or_without_wildcards_are_refused() {
        for (pattern, want) in [
            (
                "/etc/*.conf",
                "path `/etc` is outside what this deployment may change",
            ),
            ("../../../*", "is outside what this deployment may change"),
            ("builds/old", "pattern `builds/old` has no wildcard"),
            (
                "builds/*/../x",
                "pattern `builds/*/../x` has `.` or `..` after its first wildcard",
            ),
            ("builds/[a", "pattern `builds/[a` is not a glob"),
        ] {
            let err = config_error(&purge(pattern));
            assert!(err.contains(want), "{pattern}: {err}");
        }
    }

    #[test]
    fn the_state_directory_and_work_directories_are_never_removed() {
        let project = purge("../../*");
        let run = project.run("dev", ConvergeOptions::default());
        let failure = run.failure().expect("the base directory holds `work`");
        assert!(
            failure.contains("a purge never removes the host's state or a work directory"),
            "{failure}"
        );
        assert!(project.workdir("clean").is_dir());
    }
}
