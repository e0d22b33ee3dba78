//! `Presence`: a file that must exist, whose content belongs to someone else.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{Context, bail};
use batou_core::{AllowedPaths, Component, Configure, Deploy, Verdict, refuse_nul};
use serde::Deserialize;

use crate::fs::{gid, uid, write_atomic};
use crate::mode::Mode;

/// Mode of a file that `Presence` creates when none is given.
const DEFAULT_MODE: u32 = 0o644;

/// A file at `path` that exists: created empty when missing, its content never read or
/// changed. Mode, owner and group are managed when given.
///
/// ```toml
/// [components.log]
/// type = "presence"
/// path = "var/app.log"        # the application appends to it; the deploy only creates it
/// mode = 0o640
/// create_parents = true
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Presence {
    /// The file, relative to the work directory (or absolute, inside the allowed paths).
    pub path: String,
    /// Permission bits; when unset, a new file gets 0644 and an existing one keeps its own.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// The owner (name or uid), when managed.
    #[serde(default)]
    pub owner: Option<String>,
    /// The group (name or gid), when managed.
    #[serde(default)]
    pub group: Option<String>,
    /// Create missing parent directories (mode 0755).
    #[serde(default)]
    pub create_parents: bool,
    #[serde(skip)]
    resolved: PathBuf,
    #[serde(skip)]
    allowed: AllowedPaths,
}

impl Presence {
    /// A file at `path` (relative to the work directory) that must exist.
    pub fn new(path: impl Into<String>) -> Self {
        Presence {
            path: path.into(),
            mode: None,
            owner: None,
            group: None,
            create_parents: false,
            resolved: PathBuf::new(),
            allowed: AllowedPaths::default(),
        }
    }

    /// Exact permission bits, e.g. `0o640`.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = Some(Mode(mode));
        self
    }

    /// Owner user name.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Owner group name.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Creates missing parent directories.
    pub fn create_parents(mut self) -> Self {
        self.create_parents = true;
        self
    }

    fn ownership(&self) -> anyhow::Result<(Option<u32>, Option<u32>)> {
        let owner = self.owner.as_deref().map(uid).transpose()?;
        let group = self.group.as_deref().map(gid).transpose()?;
        Ok((owner, group))
    }
}

impl Component for Presence {
    fn label(&self) -> String {
        format!("Presence('{}')", self.path)
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        self.resolved = cx.path(&self.path)?;
        self.allowed = cx.allowed_paths();
        if let Some(owner) = &self.owner {
            refuse_nul("owner", owner)?;
        }
        if let Some(group) = &self.group {
            refuse_nul("group", group)?;
        }
        Ok(())
    }

    fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> {
        self.allowed.check(&self.resolved)?;
        let meta = match std::fs::symlink_metadata(&self.resolved) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Verdict::needs_update("missing"));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot inspect `{}`", self.resolved.display()));
            }
        };
        // Its content is someone else's: what is in the way is reported, never replaced.
        if meta.file_type().is_symlink() {
            bail!(
                "`{}` is a symlink; a presence is a regular file: remove the link or choose another path",
                self.resolved.display()
            );
        }
        if !meta.is_file() {
            bail!(
                "`{}` exists and is not a regular file",
                self.resolved.display()
            );
        }
        let (owner, group) = self.ownership()?;
        let reasons = crate::fs::attribute_drift(&meta, self.mode, owner, group);
        Ok(if reasons.is_empty() {
            Verdict::UpToDate
        } else {
            Verdict::needs_update(reasons.join(", "))
        })
    }

    fn update(&mut self, _cx: &mut Deploy) -> anyhow::Result<()> {
        self.allowed.check(&self.resolved)?;
        let (owner, group) = self.ownership()?;
        match std::fs::symlink_metadata(&self.resolved) {
            Ok(_) => {
                // Only metadata: the content is left exactly as it is.
                if owner.is_some() || group.is_some() {
                    std::os::unix::fs::chown(&self.resolved, owner, group).with_context(|| {
                        format!("cannot change owner of `{}`", self.resolved.display())
                    })?;
                }
                if let Some(mode) = self.mode {
                    std::fs::set_permissions(
                        &self.resolved,
                        std::fs::Permissions::from_mode(mode.0),
                    )
                    .with_context(|| format!("cannot set mode of `{}`", self.resolved.display()))?;
                }
                Ok(())
            }
            Err(_) => {
                if self.create_parents
                    && let Some(parent) = self.resolved.parent()
                {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create `{}`", parent.display()))?;
                }
                let mode = self.mode.map_or(DEFAULT_MODE, |m| m.0);
                write_atomic(&self.resolved, b"", mode, owner, group)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use batou_core::ConvergeOptions;

    use crate::test_util::{mode, pairs, project};

    const LOG: &str = r#"
[hosts.localhost]
components = ["log"]

[components.log]
type = "presence"
path = "var/app.log"
mode = 0o640
create_parents = true
"#;

    #[test]
    fn a_missing_file_is_created_empty_and_its_content_is_never_touched() {
        let project = project(LOG);
        let dry = project.dry_run("dev");
        assert_eq!(
            dry.reasons(),
            pairs(&[("log > Workdir", "missing"), ("log", "missing")])
        );
        assert!(!project.base_dir().exists());
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["log > Workdir", "log"]);
        let path = project.workdir("log").join("var/app.log");
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert_eq!(mode(&path), 0o640);
        project.converge("dev").assert_unchanged();

        std::fs::write(&path, "a line the application wrote\n").unwrap();
        project.converge("dev").assert_unchanged();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let run = project.converge("dev");
        assert_eq!(run.reasons(), pairs(&[("log", "mode 0600 -> 0640")]));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "a line the application wrote\n"
        );
        assert!(run.diffs().is_empty());
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn a_directory_or_a_symlink_in_the_way_is_a_failure_naming_it() {
        let project = project(LOG);
        let var = project.workdir("log").join("var");
        std::fs::create_dir_all(var.join("app.log")).unwrap();
        let run = project.run("dev", ConvergeOptions::default());
        let failure = run.failure().expect("a directory is in the way");
        assert!(
            failure.ends_with("/var/app.log` exists and is not a regular file"),
            "{failure}"
        );
        std::fs::remove_dir(var.join("app.log")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", var.join("app.log")).unwrap();
        let run = project.run("dev", ConvergeOptions::default());
        let failure = run.failure().expect("a symlink is in the way");
        assert!(failure.contains("is a symlink"), "{failure}");
        assert_eq!(
            std::fs::read_link(var.join("app.log")).unwrap().to_str(),
            Some("/etc/hostname")
        );
    }
}
