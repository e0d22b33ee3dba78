//! `File`: a regular file with given content, mode and ownership.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use batou_core::{
    AllowedPaths, Component, ConfigError, Configure, Deploy, Secret, Verdict, diff, refuse_nul,
};
use serde::{Deserialize, Deserializer};

use crate::data::DataFormat;
use crate::fs::{gid, uid, write_temp};
use crate::mode::Mode;

/// Mode of new files when none is given.
const DEFAULT_MODE: u32 = 0o644;
/// Mode of files installed from secrets, or whose content carries a secret value, when none
/// is given.
const SECRET_MODE: u32 = 0o600;

/// A file whose content comes from a literal, a project template or a project source file.
///
/// ```toml
/// [components.motd]
/// type = "file"
/// path = "motd"                       # relative to the root component's work directory
/// template = "templates/motd.j2"      # or `content = "..."`, or `source = "files/motd"`
/// vars = { greeting = "hello" }       # extra template variables
/// mode = 0o644
/// ```
///
/// Or data written as JSON, YAML or TOML:
///
/// ```toml
/// [components.settings]
/// type = "file"
/// path = "settings.json"              # `format` defaults to the extension's
/// data = { workers = 4, listen = ["127.0.0.1:8080"] }
/// ```
///
/// One of `content`, `template`, `source`, `secret` and `data` is required (`content = ""`
/// for an empty file): a file without any would silently empty an existing one. From Rust, a
/// [`Secret`] can be the content too: [`File::secret_content`].
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct File {
    /// The file, relative to the work directory (or absolute, inside the allowed paths).
    pub path: String,
    /// The content, given literally.
    #[serde(default)]
    pub content: Option<String>,
    /// A project template file, rendered with `host`, `environment`, `workdir` and `vars`.
    #[serde(default)]
    pub template: Option<String>,
    /// A project file copied byte for byte.
    #[serde(default)]
    pub source: Option<String>,
    /// A named secret file (`[files]` in the environment's secrets). The file gets mode 0600
    /// unless `mode` says otherwise, and its changes are reported without a diff.
    #[serde(default)]
    pub secret: Option<String>,
    /// Secret content given from Rust ([`File::secret_content`]); treated like `secret`.
    #[serde(skip)]
    pub secret_content: Option<Secret<String>>,
    /// Data serialised as the file's content, in `format`.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    /// How `data` is written: `json`, `yaml` or `toml`; by default the path's extension
    /// (`.json`, `.yaml` or `.yml`, `.toml`) says.
    #[serde(default)]
    pub format: Option<DataFormat>,
    /// Variables for `template`, besides `host`, `environment` and `workdir`.
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Permission bits; when unset, new files get 0644 (0600 when the content carries a secret
    /// value) and existing files keep theirs.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// The owner (name or uid); when unset, a new file gets the deploying user and an
    /// existing one keeps its owner.
    #[serde(default)]
    pub owner: Option<String>,
    /// The group (name or gid), kept the same way as the owner.
    #[serde(default)]
    pub group: Option<String>,
    /// Create missing parent directories (mode 0755).
    #[serde(default)]
    pub create_parents: bool,
    #[serde(skip)]
    resolved: PathBuf,
    /// Why the `vars` given to [`File::template`] were refused, reported by configure.
    #[serde(skip)]
    vars_error: Option<String>,
    /// Whether the `vars` given to [`File::template`] hold a [`Secret`].
    #[serde(skip)]
    vars_secret: bool,
    #[serde(skip)]
    bytes: Vec<u8>,
    #[serde(skip)]
    allowed: AllowedPaths,
}

impl std::fmt::Debug for File {
    /// Everything but the content and the values of `vars`, which may carry secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = |n: usize| format!("<{n} bytes>");
        f.debug_struct("File")
            .field("path", &self.path)
            .field("content", &self.content.as_ref().map(|c| bytes(c.len())))
            .field("template", &self.template)
            .field("source", &self.source)
            .field("secret", &self.secret)
            .field("secret_content", &self.secret_content)
            .field("data", &self.data.as_ref().map(|_| "<data>"))
            .field("format", &self.format)
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("mode", &self.mode)
            .field("owner", &self.owner)
            .field("group", &self.group)
            .field("create_parents", &self.create_parents)
            .finish_non_exhaustive()
    }
}

impl<'de> Deserialize<'de> for File {
    /// The derived deserializer plus the check that some content is given. The check runs
    /// inside the attribute table's own deserializer, so that an environment file's error
    /// names the table's place.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Attributes;
        impl<'de> serde::de::Visitor<'de> for Attributes {
            type Value = File;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table of file attributes")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<File, A::Error> {
                let file = File::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                if !file.has_content() {
                    return Err(serde::de::Error::custom(
                        ConfigError::serde_message_with_hint(NO_CONTENT, NO_CONTENT_HINT),
                    ));
                }
                Ok(file)
            }
        }
        deserializer.deserialize_map(Attributes)
    }
}

const NO_CONTENT: &str = "a file needs one of `content`, `template`, `source`, `secret` and `data`";
const NO_CONTENT_HINT: &str = "write `content = \"\"` for an empty file";

impl File {
    /// A file at `path` (relative to the work directory); give it content with
    /// [`content`](Self::content), [`template`](Self::template), [`source`](Self::source) or
    /// [`secret`](Self::secret).
    pub fn new(path: impl Into<String>) -> Self {
        File {
            path: path.into(),
            content: None,
            template: None,
            source: None,
            secret: None,
            secret_content: None,
            vars: BTreeMap::new(),
            mode: None,
            owner: None,
            group: None,
            create_parents: false,
            resolved: PathBuf::new(),
            vars_error: None,
            vars_secret: false,
            data: None,
            format: None,
            bytes: Vec::new(),
            allowed: AllowedPaths::default(),
        }
    }

    /// Content from the named secret file of the environment's secrets.
    pub fn secret(mut self, name: impl Into<String>) -> Self {
        self.secret = Some(name.into());
        self
    }

    /// Literal content.
    pub fn content(mut self, content: impl Into<String>) -> Self {
        self.content = Some(content.into());
        self
    }

    /// Secret content, such as a key or a configuration built from a password: like a named
    /// [`secret`](Self::secret) file, the file gets mode 0600 unless [`mode`](Self::mode)
    /// says otherwise, and its changes are reported without a diff.
    pub fn secret_content(mut self, content: Secret<String>) -> Self {
        self.secret_content = Some(content);
        self
    }

    /// Content rendered from a project template with extra `vars`: a value that serializes
    /// to a map (a struct, a map, `serde_json::json!({..})`), whose top-level keys become
    /// template variables. Anything else (a string, a list, `()`) is an error at configure.
    /// A [`Secret`] in `vars` renders as its value, and makes the file secret like
    /// [`secret_content`](Self::secret_content) does (0600 unless `mode` is given, no diff).
    /// `serde_json::json!` turns a `Secret` into `"<secret>"` before the file sees it: pass a
    /// struct or a map holding the `Secret` instead.
    pub fn template(mut self, template: impl Into<String>, vars: impl serde::Serialize) -> Self {
        let template = template.into();
        // Through the template engine's serializer, as `Configure::render_file` does, so
        // that a `Secret` among the vars gives the template its value, not `<secret>`.
        let exposed = serde_json::to_value(minijinja::Value::from_serialize(&vars));
        // Serialized plainly, a `Secret` shows `<secret>`: a difference means one is there.
        self.vars_secret = match (&exposed, serde_json::to_value(&vars)) {
            (Ok(exposed), Ok(plain)) => *exposed != plain,
            _ => false,
        };
        match exposed {
            Ok(serde_json::Value::Object(map)) => {
                self.vars = map.into_iter().collect();
                self.vars_error = None;
            }
            Ok(other) => {
                let kind = match other {
                    serde_json::Value::Null => "nothing (null)",
                    serde_json::Value::Bool(_) => "a bool",
                    serde_json::Value::Number(_) => "a number",
                    serde_json::Value::String(_) => "a string",
                    _ => "a list",
                };
                self.vars_error = Some(format!(
                    "the `vars` of template `{template}` must be a map of variable names to values (a struct, a map or a `json!({{..}})` object), not {kind}"
                ));
            }
            Err(e) => {
                self.vars_error = Some(format!(
                    "cannot turn the `vars` of template `{template}` into variables: {e}"
                ));
            }
        }
        self.template = Some(template);
        self
    }

    /// Content serialised from `data` (anything that serializes, such as a struct or
    /// `serde_json::json!({..})`) in `format`.
    pub fn data(mut self, data: impl serde::Serialize, format: DataFormat) -> Self {
        match serde_json::to_value(data) {
            Ok(value) => self.data = Some(value),
            Err(e) => {
                self.vars_error = Some(format!("cannot turn the `data` into a value: {e}"));
                self.data = Some(serde_json::Value::Null);
            }
        }
        self.format = Some(format);
        self
    }

    /// Content copied from a project file.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Exact permission bits, e.g. `0o600`.
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

    /// The absolute path, known after configure.
    pub fn resolved_path(&self) -> &std::path::Path {
        &self.resolved
    }

    fn has_content(&self) -> bool {
        self.content.is_some()
            || self.template.is_some()
            || self.source.is_some()
            || self.secret.is_some()
            || self.secret_content.is_some()
            || self.data.is_some()
    }

    /// Whether the content is secret by declaration, so that no diff may show it.
    fn is_secret(&self) -> bool {
        self.secret.is_some() || self.secret_content.is_some() || self.vars_secret
    }

    fn ownership(&self) -> anyhow::Result<(Option<u32>, Option<u32>)> {
        let owner = self.owner.as_deref().map(uid).transpose()?;
        let group = self.group.as_deref().map(gid).transpose()?;
        Ok((owner, group))
    }
}

impl Component for File {
    fn label(&self) -> String {
        format!("File('{}')", self.path)
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
        if let Some(error) = &self.vars_error {
            bail!("{error}");
        }
        if self.format.is_some() && self.data.is_none() {
            bail!("`format` says how `data` is written: set `data` too");
        }
        let given = [
            self.content.is_some(),
            self.template.is_some(),
            self.source.is_some(),
            self.secret.is_some(),
            self.secret_content.is_some(),
            self.data.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => return Err(ConfigError::new(NO_CONTENT).hint(NO_CONTENT_HINT).into()),
            1 => {}
            _ if self.secret_content.is_some() => bail!(
                "set only one of `content`, `template`, `source`, `secret`, `data` and `secret_content`"
            ),
            _ => bail!("set only one of `content`, `template`, `source`, `secret` and `data`"),
        }
        let data = if let Some(content) = &self.content {
            content.clone().into_bytes()
        } else if let Some(template) = &self.template {
            cx.render_file(template, &self.vars)?.into_bytes()
        } else if let Some(source) = &self.source {
            cx.project().read(source)?
        } else if let Some(name) = &self.secret {
            cx.secret_file(name)?.expose().clone().into_bytes()
        } else if let Some(secret) = &self.secret_content {
            secret.expose().clone().into_bytes()
        } else if let Some(data) = &self.data {
            let format = match self.format {
                Some(format) => format,
                None => DataFormat::from_path(&self.path)?,
            };
            format.render(data)?.into_bytes()
        } else {
            unreachable!("one content attribute is set")
        };
        self.bytes = data;
        if self.mode.is_none() && (self.is_secret() || carries_secret(&self.bytes)) {
            self.mode = Some(Mode(SECRET_MODE));
        }
        Ok(())
    }

    fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
        self.allowed.check(&self.resolved)?;
        // A file written earlier in this run whose batch is not yet flushed is seen through
        // its temporary file: the bytes and attributes that will be renamed into place.
        let seen = cx
            .staged(&self.resolved)
            .map_or_else(|| self.resolved.clone(), Path::to_path_buf);
        let meta = match std::fs::symlink_metadata(&seen) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.is_secret()
                    && let Some(d) = diff::unified(&self.path, b"", &self.bytes)
                {
                    cx.show_diff(d);
                }
                return Ok(Verdict::needs_update("missing"));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot inspect `{}`", self.resolved.display()));
            }
        };
        if meta.is_dir() {
            bail!("`{}` is a directory", self.resolved.display());
        }
        let mut reasons = Vec::new();
        if meta.file_type().is_symlink() {
            reasons.push("is a symlink".to_string());
        } else {
            let current = std::fs::read(&seen)
                .with_context(|| format!("cannot read `{}`", self.resolved.display()))?;
            if self.is_secret() {
                if current != self.bytes {
                    reasons.push("secret content differs".into());
                }
            } else if let Some(d) = diff::unified(&self.path, &current, &self.bytes) {
                // The new lines are masked, but the old ones may hold a secret's previous
                // value, which masking no longer knows: they are not shown.
                let d = if carries_secret(&self.bytes) {
                    hide_removed_lines(&d)
                } else {
                    d
                };
                cx.show_diff(d);
                reasons.push("content differs".into());
            }
            let (owner, group) = self.ownership()?;
            reasons.extend(crate::fs::attribute_drift(&meta, self.mode, owner, group));
        }
        Ok(if reasons.is_empty() {
            Verdict::UpToDate
        } else {
            Verdict::needs_update(reasons.join(", "))
        })
    }

    fn reads_written_files(&self) -> bool {
        false
    }

    /// The file, and with `create_parents` the directories above it, which the engine
    /// records only when they were missing.
    fn owned(&self) -> Vec<batou_core::Owned> {
        let mut owned = Vec::new();
        if self.create_parents {
            owned.extend(
                self.resolved
                    .ancestors()
                    .skip(1)
                    .map(|p| batou_core::Owned::Directory {
                        path: p.to_path_buf(),
                    }),
            );
            owned.reverse();
        }
        owned.push(batou_core::Owned::File {
            path: self.resolved.clone(),
        });
        owned
    }

    fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
        self.allowed.check(&self.resolved)?;
        if self.create_parents
            && let Some(parent) = self.resolved.parent()
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
        let existing = std::fs::symlink_metadata(&self.resolved)
            .ok()
            .filter(|m| m.is_file());
        let mode = match (self.mode, &existing) {
            (Some(m), _) => m.0,
            (None, Some(meta)) => meta.permissions().mode() & 0o7777,
            (None, None) => DEFAULT_MODE,
        };
        let (owner, group) = self.ownership()?;
        let same_content = existing.is_some()
            && std::fs::read(&self.resolved).is_ok_and(|current| current == self.bytes);
        if same_content {
            // Only metadata differs: change it in place, the content stays as it is.
            if owner.is_some() || group.is_some() {
                std::os::unix::fs::chown(&self.resolved, owner, group).with_context(|| {
                    format!("cannot change owner of `{}`", self.resolved.display())
                })?;
            }
            std::fs::set_permissions(&self.resolved, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set mode of `{}`", self.resolved.display()))?;
            return Ok(());
        }
        // A rewritten file keeps its owner and group unless they are given: the temporary
        // file would otherwise carry the ids of this process.
        let owner = owner.or(existing.as_ref().map(MetadataExt::uid));
        let group = group.or(existing.as_ref().map(MetadataExt::gid));
        let temp = write_temp(&self.resolved, &self.bytes, mode, owner, group, false)?;
        cx.stage_write(temp, self.resolved.clone())
    }
}

/// Whether `data` contains a secret value registered for masking: such a file must not be
/// world-readable, whichever attribute brought the secret in.
/// A unified diff with the text of its removed lines replaced, for files that carry secrets.
fn hide_removed_lines(diff: &str) -> String {
    diff.lines()
        .map(|line| {
            if line.starts_with('-') && !line.starts_with("---") {
                "-(a line of the old content, not shown: the file carries secrets)"
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + if diff.ends_with('\n') { "\n" } else { "" }
}

fn carries_secret(data: &[u8]) -> bool {
    batou_core::redact::active()
        && matches!(
            batou_core::redact::mask(&String::from_utf8_lossy(data)),
            Cow::Owned(_)
        )
}

#[cfg(test)]
mod tests {
    use batou_core::{Component, Configure, ConvergeOptions, Secret};
    use serde::Deserialize;

    use super::File;
    use crate::test_util::{config_error, mode, pairs, project, project_with};

    const MOTD: &str = r#"
[hosts.localhost]
components = ["motd"]

[components.motd]
type = "file"
path = "motd"
content = "hello\n"
mode = 0o640
"#;

    #[test]
    fn content_converges_with_a_diff_and_then_stays() {
        let project = project(MOTD);
        let run = project.converge("dev");
        run.assert_changed(&["motd > Workdir", "motd"]);
        assert_eq!(
            run.reasons(),
            pairs(&[("motd > Workdir", "missing"), ("motd", "missing")])
        );
        assert_eq!(
            run.diffs(),
            pairs(&[("motd", "--- motd\n+++ motd\n@@ -0,0 +1 @@\n+hello\n")])
        );
        let path = project.workdir("motd").join("motd");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
        assert_eq!(mode(&path), 0o640);
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn a_dry_run_predicts_and_writes_nothing() {
        let project = project(MOTD);
        let dry = project.dry_run("dev");
        dry.assert_changed(&["motd > Workdir", "motd"]);
        assert_eq!(dry.diffs().len(), 1, "{:?}", dry.diffs());
        assert!(!project.base_dir().exists());
        project.converge_twice("dev");
    }

    #[test]
    fn drift_in_content_and_mode_is_reported_and_repaired() {
        let project = project(MOTD);
        project.converge("dev");
        let path = project.workdir("motd").join("motd");
        std::fs::write(&path, "tampered\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .unwrap();

        let dry = project.dry_run("dev");
        dry.assert_changed(&["motd"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "tampered\n");

        let run = project.converge("dev");
        run.assert_changed(&["motd"]);
        assert_eq!(
            run.reasons(),
            pairs(&[("motd", "content differs, mode 0666 -> 0640")])
        );
        assert_eq!(
            run.diffs(),
            pairs(&[(
                "motd",
                "--- motd\n+++ motd\n@@ -1 +1 @@\n-tampered\n+hello\n"
            )])
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
        assert_eq!(mode(&path), 0o640);
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn a_template_sees_its_vars_and_the_host() {
        let project = project(
            r#"
[hosts.localhost]
components = ["motd"]

[components.motd]
type = "file"
path = "motd"
template = "templates/motd.j2"
vars = { name = "world" }
"#,
        );
        project.file("templates/motd.j2", "Hello {{ name }} on {{ host.name }}\n");
        project
            .converge_twice("dev")
            .assert_changed(&["motd > Workdir", "motd"]);
        let path = project.workdir("motd").join("motd");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "Hello world on localhost\n"
        );
        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn a_directory_in_the_way_is_a_failure_naming_it() {
        let project = project(MOTD);
        std::fs::create_dir_all(project.workdir("motd").join("motd")).unwrap();
        let run = project.run("dev", ConvergeOptions::default());
        let failure = run.failure().expect("the file cannot replace a directory");
        assert!(failure.starts_with("motd: `"), "{failure}");
        assert!(
            failure.ends_with("/work/motd/motd` is a directory"),
            "{failure}"
        );
    }

    /// Adds the library's `File` the way a Rust component does, in one of several ways.
    #[derive(Deserialize)]
    struct FromRust {
        case: String,
    }

    impl Component for FromRust {
        fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
            match self.case.as_str() {
                "secret" => {
                    let key = Secret::new("-----KEY rust-secret-content-value\n".to_string());
                    cx.add(File::new("key").secret_content(key));
                }
                "secret-with-mode" => {
                    let key = Secret::new("rust-secret-content-0640\n".to_string());
                    cx.add(File::new("key").secret_content(key).mode(0o640));
                }
                "secret-and-content" => {
                    let key = Secret::new("x".to_string());
                    cx.add(File::new("key").secret_content(key).content("y"));
                }
                "vars-map" => {
                    #[derive(serde::Serialize)]
                    struct Vars {
                        port: u16,
                    }
                    cx.add(File::new("conf").template("t.j2", Vars { port: 8080 }));
                }
                "vars-secret" => {
                    #[derive(serde::Serialize)]
                    struct Vars {
                        port: Secret<String>,
                    }
                    let port = Secret::new("8443".to_string());
                    cx.add(File::new("conf").template("t.j2", Vars { port }));
                }
                "vars-string" => {
                    cx.add(File::new("conf").template("t.j2", "port = 8080"));
                }
                "vars-list" => {
                    cx.add(File::new("conf").template("t.j2", [1, 2]));
                }
                other => anyhow::bail!("unknown case `{other}`"),
            };
            Ok(())
        }
    }

    fn from_rust(case: &str) -> batou_core::testing::TestProject {
        let project = project_with::<FromRust>(
            "rust",
            &format!(
                "[hosts.localhost]\ncomponents = [\"rust\"]\n\n[components.rust]\ncase = \"{case}\"\n"
            ),
        );
        project.file("t.j2", "port = {{ port }}\n");
        project
    }

    #[test]
    fn secret_content_is_private_and_never_shown_in_a_diff() {
        let project = from_rust("secret");
        let run = project.converge("dev");
        run.assert_changed(&["rust > Workdir", "rust > File('key')"]);
        assert_eq!(
            run.reasons()[1],
            pairs(&[("rust > File('key')", "missing")])[0]
        );
        assert_eq!(run.diffs(), pairs(&[]));
        let path = project.workdir("rust").join("key");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "-----KEY rust-secret-content-value\n"
        );
        assert_eq!(mode(&path), 0o600);
        project.converge("dev").assert_unchanged();

        std::fs::write(&path, "tampered\n").unwrap();
        let run = project.converge("dev");
        run.assert_changed(&["rust > File('key')"]);
        assert_eq!(
            run.reasons(),
            pairs(&[("rust > File('key')", "secret content differs")])
        );
        assert_eq!(run.diffs(), pairs(&[]));
        let shown = format!("{:?}", run.events);
        assert!(!shown.contains("rust-secret-content-value"), "{shown}");
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn a_mode_given_with_secret_content_wins() {
        let project = from_rust("secret-with-mode");
        project.converge_twice("dev");
        assert_eq!(mode(&project.workdir("rust").join("key")), 0o640);
    }

    #[test]
    fn a_file_never_shows_its_content_in_debug_output() {
        let file = File::new("key").secret_content(Secret::new("debug-hidden-value".into()));
        let shown = format!("{file:?}");
        assert!(!shown.contains("debug-hidden-value"), "{shown}");
    }

    #[test]
    fn secret_content_and_another_content_are_refused() {
        let err = config_error(&from_rust("secret-and-content"));
        assert!(
            err.to_string().contains(
                "set only one of `content`, `template`, `source`, `secret`, `data` and `secret_content`"
            ),
            "{err}"
        );
    }

    #[test]
    fn template_vars_from_rust_must_be_a_map() {
        let project = from_rust("vars-map");
        project.converge_twice("dev");
        assert_eq!(
            std::fs::read_to_string(project.workdir("rust").join("conf")).unwrap(),
            "port = 8080\n"
        );
        // A `Secret` among the vars renders as its value, privately and without a diff.
        let project = from_rust("vars-secret");
        let run = project.converge_twice("dev");
        assert_eq!(run.diffs(), pairs(&[]));
        let conf = project.workdir("rust").join("conf");
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), "port = 8443\n");
        assert_eq!(mode(&conf), 0o600);
        for (case, kind) in [("vars-string", "a string"), ("vars-list", "a list")] {
            let err = config_error(&from_rust(case));
            assert!(
                err.contains(&format!(
                    "the `vars` of template `t.j2` must be a map of variable names to values (a struct, a map or a `json!({{..}})` object), not {kind}"
                )),
                "{case}: {err}"
            );
        }
    }

    /// Four files, one per way of giving content, with mode and ownership managed.
    const FILES: &str = r#"
[hosts.localhost]
components = ["literal", "rendered", "copied", "owned"]

[components.literal]
type = "file"
path = "etc/literal"
content = "hello\n"
mode = 0o640
create_parents = true

[components.rendered]
type = "file"
path = "rendered"
template = "templates/rendered.j2"
vars = { greeting = "hi" }

[components.copied]
type = "file"
path = "copied"
source = "files/copied"
mode = 0o600

[components.owned]
type = "file"
path = "owned"
content = "mine\n"
owner = "0"
group = "0"
"#;

    #[test]
    fn predictions_match_the_run_for_content_template_source_mode_and_owner() {
        let project = project(FILES);
        project.file("templates/rendered.j2", "{{ greeting }} {{ host.name }}\n");
        project.file("files/copied", "copied\n");
        let fresh = project.assert_prediction_matches("dev");
        assert_eq!(fresh.changed().len(), 8, "{:?}", fresh.changed());
        let workdir = |root: &str, name: &str| project.workdir(root).join(name);

        // Content drift, a changed template and a changed source file.
        std::fs::write(workdir("literal", "etc/literal"), "tampered\n").unwrap();
        project.file("templates/rendered.j2", "{{ greeting }} again\n");
        project.file("files/copied", "copied twice\n");
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["literal", "rendered", "copied"]);

        // Mode and owner drift.
        let set_mode = |path: std::path::PathBuf, bits: u32| {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(bits))
                .unwrap()
        };
        set_mode(workdir("literal", "etc/literal"), 0o666);
        set_mode(workdir("copied", "copied"), 0o644);
        std::os::unix::fs::chown(workdir("owned", "owned"), Some(65534), Some(65534)).unwrap();
        let run = project.assert_prediction_matches("dev");
        run.assert_changed(&["literal", "copied", "owned"]);
        assert_eq!(
            run.reasons(),
            pairs(&[
                ("literal", "mode 0666 -> 0640"),
                ("copied", "mode 0644 -> 0600"),
                ("owned", "owner differs, group differs"),
            ])
        );

        // Removed files, and a removed parent directory.
        std::fs::remove_dir_all(workdir("literal", "etc")).unwrap();
        std::fs::remove_file(workdir("rendered", "rendered")).unwrap();
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["literal", "rendered"]);
    }

    #[test]
    fn a_dry_run_on_a_fresh_host_predicts_a_file_in_a_missing_directory() {
        // Without `create_parents` the real run needs the directory from elsewhere; the
        // prediction does not fail for want of it.
        let project = project(&MOTD.replace("path = \"motd\"", "path = \"deep/motd\""));
        project
            .dry_run("dev")
            .assert_changed(&["motd > Workdir", "motd"]);
    }

    #[test]
    fn data_is_written_in_the_format_of_the_extension_and_converges() {
        let project = project(
            r#"
[hosts.localhost]
components = ["settings", "plain"]

[components.settings]
type = "file"
path = "settings.yaml"

[components.settings.data]
name = "{{ host.name }}"
workers = 4
flag = "no"
db = { port = 5432 }

[components.plain]
type = "file"
path = "plain.conf"
format = "toml"
data = { name = "shop" }
"#,
        );
        project.assert_prediction_matches("dev").assert_changed(&[
            "settings > Workdir",
            "settings",
            "plain > Workdir",
            "plain",
        ]);
        let dir = project.workdir("settings");
        assert_eq!(
            std::fs::read_to_string(dir.join("settings.yaml")).unwrap(),
            "db:\n  port: 5432\nflag: \"no\"\nname: \"localhost\"\nworkers: 4\n"
        );
        assert_eq!(
            std::fs::read_to_string(project.workdir("plain").join("plain.conf")).unwrap(),
            "name = \"shop\"\n"
        );
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn data_without_a_known_format_and_format_without_data_are_refused() {
        let env = |attributes: &str| {
            project(&format!(
                "[hosts.localhost]\ncomponents = [\"f\"]\n\n[components.f]\ntype = \"file\"\n{attributes}"
            ))
        };
        let err = config_error(&env("path = \"app.conf\"\ndata = { a = 1 }\n"));
        assert!(
            err.ends_with("cannot tell the format of `data` from the path `app.conf`"),
            "{err}"
        );
        let err = config_error(&env(
            "path = \"a.json\"\ncontent = \"\"\nformat = \"json\"\n",
        ));
        assert!(
            err.ends_with("`format` says how `data` is written: set `data` too"),
            "{err}"
        );
        let err = config_error(&env("path = \"a.json\"\ndata = 1\nformat = \"jsn\"\n"));
        assert!(
            err.contains("unknown value `jsn`, expected one of `json`, `yaml`, `toml`"),
            "{err}"
        );
        let err = config_error(&env("path = \"a.toml\"\ndata = [1]\n"));
        assert!(
            err.ends_with("`data` written as TOML must be a table"),
            "{err}"
        );
    }
}
