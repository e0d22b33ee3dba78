//! `Symlink`: a symbolic link pointing at a given target.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{Context, bail};
use batou_core::{AllowedPaths, Component, Configure, Deploy, Verdict, refuse_nul};
use serde::Deserialize;

use crate::fs::{parent, set_ownership, sync_dir, temp_path};

/// A symlink at `path` pointing to `target` (kept exactly as written, relative or absolute).
///
/// An existing symlink is replaced atomically, keeping its owner and group; an existing file
/// or directory at `path` is an error, never silently removed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    /// The symlink's path; relative paths are relative to the root's work directory.
    pub path: String,
    /// What the symlink points to.
    pub target: String,
    #[serde(skip)]
    resolved: PathBuf,
    #[serde(skip)]
    allowed: AllowedPaths,
}

impl Symlink {
    /// A symlink at `path` (relative to the work directory) pointing to `target`.
    pub fn new(path: impl Into<String>, target: impl Into<String>) -> Self {
        Symlink {
            path: path.into(),
            target: target.into(),
            resolved: PathBuf::new(),
            allowed: AllowedPaths::default(),
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
        refuse_nul("target", &self.target)?;
        self.resolved = cx.path(&self.path)?;
        self.allowed = cx.allowed_paths();
        Ok(())
    }

    fn reads_written_files(&self) -> bool {
        // A link is made whatever its target holds.
        false
    }

    fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> {
        self.allowed.check(&self.resolved)?;
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

    fn owned(&self) -> Vec<batou_core::Owned> {
        vec![batou_core::Owned::Symlink {
            path: self.resolved.clone(),
        }]
    }

    fn update(&mut self, _cx: &mut Deploy) -> anyhow::Result<()> {
        self.allowed.check(&self.resolved)?;
        let dir = parent(&self.resolved)?;
        let existing = std::fs::symlink_metadata(&self.resolved).ok();
        let tmp = temp_path(&self.resolved);
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&self.target, &tmp)
            .with_context(|| format!("cannot create symlink `{}`", tmp.display()))?;
        let result = (|| {
            // A replaced link keeps its owner and group; the new one has this process's ids.
            if let Some(old) = &existing {
                let created = std::fs::symlink_metadata(&tmp)
                    .with_context(|| format!("cannot inspect `{}`", tmp.display()))?;
                set_ownership(
                    &self.resolved,
                    &created,
                    Some(old.uid()),
                    Some(old.gid()),
                    |o, g| std::os::unix::fs::lchown(&tmp, o, g),
                )?;
            }
            std::fs::rename(&tmp, &self.resolved)
                .with_context(|| format!("cannot rename into `{}`", self.resolved.display()))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result?;
        sync_dir(dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use batou_core::ConvergeOptions;

    use crate::test_util::{config_error, pairs, project};

    const CURRENT: &str = r#"
[hosts.localhost]
components = ["current"]

[components.current]
type = "symlink"
path = "current"
target = "releases/2"
"#;

    #[test]
    fn a_symlink_is_created_and_a_retargeted_one_repaired() {
        let project = project(CURRENT);
        let run = project.converge("dev");
        run.assert_changed(&["current > Workdir", "current"]);
        assert_eq!(
            run.reasons(),
            pairs(&[("current > Workdir", "missing"), ("current", "missing")])
        );
        let link = project.workdir("current").join("current");
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("releases/2"));
        project.converge("dev").assert_unchanged();

        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("releases/1", &link).unwrap();
        let run = project.converge("dev");
        run.assert_changed(&["current"]);
        assert_eq!(
            run.reasons(),
            pairs(&[("current", "points to `releases/1` instead of `releases/2`")])
        );
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("releases/2"));
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn a_dry_run_predicts_and_links_nothing() {
        let project = project(CURRENT);
        project
            .dry_run("dev")
            .assert_changed(&["current > Workdir", "current"]);
        assert!(!project.base_dir().exists());
        project.converge_twice("dev");
    }

    #[test]
    fn predictions_match_the_run_for_new_retargeted_and_removed_links() {
        let project = project(CURRENT);
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["current > Workdir", "current"]);
        let link = project.workdir("current").join("current");
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink("releases/1", &link).unwrap();
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["current"]);
        std::fs::remove_file(&link).unwrap();
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["current"]);
        // A link in a directory that does not exist yet: predicted, not a failure.
        let deep = crate::test_util::project(
            &CURRENT.replace("path = \"current\"", "path = \"deep/current\""),
        );
        deep.dry_run("dev")
            .assert_changed(&["current > Workdir", "current"]);
    }

    #[test]
    fn a_file_in_the_way_is_a_failure_never_removed() {
        let project = project(CURRENT);
        let path = project.workdir("current").join("current");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "keep me\n").unwrap();
        let run = project.run("dev", ConvergeOptions::default());
        let failure = run.failure().expect("a symlink cannot replace a file");
        assert!(
            failure.ends_with(
                "/work/current/current` exists and is not a symlink; remove it or choose another path"
            ),
            "{failure}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me\n");
    }

    #[test]
    fn an_empty_target_is_a_configuration_error() {
        let err = config_error(&project(&CURRENT.replace("releases/2", "")));
        assert!(err.contains("`target` must not be empty"), "{err}");
    }
}
