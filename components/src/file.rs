//! `File`: a regular file with given content, mode and ownership.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::{Context, bail};
use batou_core::{AllowedPaths, Component, Configure, Deploy, Verdict, diff, refuse_nul};
use serde::{Deserialize, Deserializer};

use crate::fs::{gid, uid, write_atomic};
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
/// One of `content`, `template`, `source` and `secret` is required (`content = ""` for an
/// empty file): a file without any would silently empty an existing one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct File {
    pub path: String,
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
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Permission bits; when unset, new files get 0644 (0600 when the content carries a secret
    /// value) and existing files keep theirs.
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// Create missing parent directories (mode 0755).
    #[serde(default)]
    pub create_parents: bool,
    #[serde(skip)]
    resolved: PathBuf,
    #[serde(skip)]
    data: Vec<u8>,
    #[serde(skip)]
    allowed: AllowedPaths,
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
                    return Err(serde::de::Error::custom(NO_CONTENT));
                }
                Ok(file)
            }
        }
        deserializer.deserialize_map(Attributes)
    }
}

const NO_CONTENT: &str = "a file needs one of `content`, `template`, `source` and `secret`; write `content = \"\"` for an empty file";

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
            vars: BTreeMap::new(),
            mode: None,
            owner: None,
            group: None,
            create_parents: false,
            resolved: PathBuf::new(),
            data: Vec::new(),
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

    /// Content rendered from a project template with extra `vars`.
    pub fn template(mut self, template: impl Into<String>, vars: impl serde::Serialize) -> Self {
        self.template = Some(template.into());
        if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(vars) {
            self.vars = map.into_iter().collect();
        }
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
        self.data = match (&self.content, &self.template, &self.source, &self.secret) {
            (Some(content), None, None, None) => content.clone().into_bytes(),
            (None, Some(template), None, None) => {
                cx.render_file(template, &self.vars)?.into_bytes()
            }
            (None, None, Some(source), None) => cx.project().read(source)?,
            (None, None, None, Some(name)) => {
                if self.mode.is_none() {
                    self.mode = Some(Mode(SECRET_MODE));
                }
                cx.secret_file(name)?.expose().clone().into_bytes()
            }
            (None, None, None, None) => bail!(NO_CONTENT),
            _ => bail!("set only one of `content`, `template`, `source` and `secret`"),
        };
        if self.mode.is_none() && carries_secret(&self.data) {
            self.mode = Some(Mode(SECRET_MODE));
        }
        Ok(())
    }

    fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
        self.allowed.check(&self.resolved)?;
        let meta = match std::fs::symlink_metadata(&self.resolved) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if self.secret.is_none()
                    && let Some(d) = diff::unified(&self.path, b"", &self.data)
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
            let current = std::fs::read(&self.resolved)
                .with_context(|| format!("cannot read `{}`", self.resolved.display()))?;
            if self.secret.is_some() {
                if current != self.data {
                    reasons.push("secret content differs".into());
                }
            } else if let Some(d) = diff::unified(&self.path, &current, &self.data) {
                cx.show_diff(d);
                reasons.push("content differs".into());
            }
            let mode = meta.permissions().mode() & 0o7777;
            if let Some(want) = self.mode
                && want.0 != mode
            {
                reasons.push(format!("mode {} -> {want}", Mode(mode)));
            }
            let (owner, group) = self.ownership()?;
            if owner.is_some_and(|o| o != meta.uid()) {
                reasons.push("owner differs".into());
            }
            if group.is_some_and(|g| g != meta.gid()) {
                reasons.push("group differs".into());
            }
        }
        Ok(if reasons.is_empty() {
            Verdict::UpToDate
        } else {
            Verdict::needs_update(reasons.join(", "))
        })
    }

    fn update(&mut self, _cx: &mut Deploy) -> anyhow::Result<()> {
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
            && std::fs::read(&self.resolved).is_ok_and(|current| current == self.data);
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
        write_atomic(&self.resolved, &self.data, mode, owner, group)
    }
}

/// Whether `data` contains a secret value registered for masking: such a file must not be
/// world-readable, whichever attribute brought the secret in.
fn carries_secret(data: &[u8]) -> bool {
    batou_core::redact::active()
        && matches!(
            batou_core::redact::mask(&String::from_utf8_lossy(data)),
            Cow::Owned(_)
        )
}
