//! Environments: one TOML file naming hosts, their root components and attribute overrides.
//!
//! Loading checks everything that can be checked without configuring components: TOML syntax,
//! the shape of `[environment]` and `[hosts.*]`, that every assigned component exists and is
//! assigned at most once per host, and that every `type` is registered. The environment keeps
//! its text (and that of merged secrets); the plan parses attribute overrides again from it,
//! with source spans, and deserializes them per host.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{ConfigError, Place, SourceText};
use crate::registry::Registry;
use crate::secrets::{SecretKeys, Secrets, merge};

/// How the controller reaches the hosts of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Connect {
    /// Over SSH (`batou-remote`).
    #[default]
    Ssh,
    /// This machine (`batou-local`).
    Local,
}

/// The `[environment]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Whether hosts are reached over SSH or deployed on this machine.
    #[serde(default)]
    pub connect: Connect,
    /// Where root components work (`<base_dir>/work/<name>`); relative to the project root
    /// for local runs.
    #[serde(default = "default_base_dir")]
    pub base_dir: String,
    /// Hosts deployed in parallel.
    #[serde(default = "default_jobs")]
    pub jobs: usize,
    /// Absolute paths outside `base_dir` that components may change.
    #[serde(default)]
    pub allow_paths: Vec<Spanned<String>>,
    /// The template syntax (`[environment.templates]`): line statements and comments.
    #[serde(default)]
    pub templates: TemplateSettings,
    /// The login user of every host that sets none of its own.
    #[serde(default)]
    pub user: Option<Spanned<String>>,
    /// The user the agent runs as (through `sudo -n`) on every host that sets none of its
    /// own: `become = "root"`.
    #[serde(default, rename = "become")]
    pub become_user: Option<Spanned<String>>,
}

/// The `[environment.templates]` table: Jinja2's line statement and line comment prefixes,
/// with their places for errors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSettings {
    /// A line starting with this (after blanks) is a statement (batou uses `@@`).
    #[serde(default)]
    pub line_statement_prefix: Option<Spanned<String>>,
    /// A line starting with this, or its rest after it, is a comment.
    #[serde(default)]
    pub line_comment_prefix: Option<Spanned<String>>,
}

impl TemplateSettings {
    /// The syntax, without places.
    pub fn syntax(&self) -> crate::TemplateSyntax {
        crate::TemplateSyntax {
            line_statement_prefix: self
                .line_statement_prefix
                .as_ref()
                .map(|p| p.get_ref().clone()),
            line_comment_prefix: self
                .line_comment_prefix
                .as_ref()
                .map(|p| p.get_ref().clone()),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connect: Connect::default(),
            base_dir: default_base_dir(),
            jobs: default_jobs(),
            allow_paths: Vec::new(),
            templates: TemplateSettings::default(),
            user: None,
            become_user: None,
        }
    }
}

fn default_base_dir() -> String {
    ".".into()
}

fn default_jobs() -> usize {
    4
}

/// A host of an environment.
#[derive(Debug, Clone)]
pub struct Host {
    /// The host's name in the environment.
    pub name: String,
    /// Root components in the order the environment lists them.
    pub components: Vec<String>,
    /// Free data for templates (`{{ host.data.role }}`), sorted by key.
    pub data: BTreeMap<String, serde_json::Value>,
    /// SSH address when it differs from the name.
    pub address: Option<String>,
    /// The SSH port, when not the user's SSH configuration's.
    pub port: Option<u16>,
    /// The login user, when not the user's SSH configuration's (the host's `user`, else the
    /// environment's).
    pub user: Option<String>,
    /// The user the agent runs as, through `sudo -n`, when not the login user (the host's
    /// `become`, else the environment's).
    pub become_user: Option<String>,
}

/// A loaded and checked environment.
#[derive(Debug, Clone)]
pub struct Environment {
    /// The environment's name (its file's stem).
    pub name: String,
    /// The `[environment]` table.
    pub settings: Settings,
    /// Hosts sorted by name.
    pub hosts: Vec<Host>,
    /// The `[groups]` table: group name to its member hosts, as listed (checked: members
    /// are hosts, no group is named like a host).
    pub groups: BTreeMap<String, Vec<String>>,
    /// The `[rollout]` table: rolling deploys in batches (see `rollout.rs`).
    pub rollout: Option<crate::rollout::RolloutSpec>,
    pub(crate) source: SourceText,
    pub(crate) components: BTreeMap<String, ComponentDef>,
    /// Where each host's component references are, for placing errors.
    pub(crate) reference_spans: BTreeMap<(String, String), usize>,
    /// The decrypted secrets' text, once merged: their attribute overrides are merged again
    /// from it whenever the attributes are parsed.
    pub(crate) secrets: Option<SourceText>,
    /// Named secret files and the path of the secrets file they came from.
    pub(crate) secret_files: BTreeMap<String, String>,
    pub(crate) secrets_path: Option<String>,
    /// Every secret string with its dotted name.
    pub(crate) secret_values: Vec<(String, String)>,
    /// The generated secrets the environment declares (`{ generate = "password" }`).
    pub(crate) generated: Vec<crate::secrets::Declaration>,
}

/// A root component definition: its type and where its attribute overrides are.
#[derive(Debug, Clone)]
pub(crate) struct ComponentDef {
    pub(crate) type_name: String,
    /// The span of its `[components.<name>]` table (empty, at the host's reference, for a
    /// registered type with secrets but no table).
    pub(crate) span: Range<usize>,
}

/// A root component's attribute overrides, secrets merged in, borrowing from the
/// environment's texts.
#[derive(Clone)]
pub(crate) struct MergedAttributes<'a> {
    /// The override table without `type`, with spans into the environment file or, for
    /// values in `secret`, into the secrets file.
    pub(crate) value: Spanned<DeValue<'a>>,
    /// Which keys came from the secrets file.
    pub(crate) secret: SecretKeys,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    environment: Option<Settings>,
    #[serde(default)]
    hosts: BTreeMap<Spanned<String>, HostShape>,
    #[serde(default)]
    groups: crate::groups::GroupsShape,
    /// Taken out before deserializing (it keeps its spans); named here so that an unknown
    /// table's error lists it among the valid ones.
    #[serde(default)]
    #[expect(dead_code, reason = "only its name is used, in error messages")]
    components: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    rollout: Option<crate::rollout::RolloutShape>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostShape {
    #[serde(default)]
    components: Vec<Spanned<String>>,
    #[serde(default)]
    data: BTreeMap<String, serde_json::Value>,
    address: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    user: Option<Spanned<String>>,
    #[serde(rename = "become")]
    become_user: Option<Spanned<String>>,
}

impl HostShape {
    /// Address, port and user, checked: they end up on the `ssh` command line, so none may
    /// look like an option or hold whitespace or control characters.
    #[expect(
        clippy::type_complexity,
        reason = "a private triple, named where it is used"
    )]
    fn connection(
        &self,
        host: &str,
        source: &SourceText,
    ) -> Result<(Option<String>, Option<u16>, Option<String>), ConfigError> {
        for (field, value) in [
            ("address", &self.address),
            ("user", &self.user),
            ("become", &self.become_user),
        ] {
            if let Some(value) = value {
                check_word(&format!("`hosts.{host}.{field}`"), value.get_ref())
                    .map_err(|e| e.at(source.place(value.span().start)))?;
            }
        }
        let port = match &self.port {
            None => None,
            Some(port) => match u16::try_from(*port.get_ref()) {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    return Err(ConfigError::new(format!(
                        "`hosts.{host}.port` is {}: a port must be between 1 and 65535",
                        port.get_ref()
                    ))
                    .at(source.place(port.span().start)));
                }
            },
        };
        Ok((
            self.address.as_ref().map(|a| a.get_ref().clone()),
            port,
            self.user.as_ref().map(|u| u.get_ref().clone()),
        ))
    }
}

/// Checks a host's `address` or `user`: not empty, no leading `-`, no whitespace or control
/// characters.
fn check_word(name: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::new(format!("{name} is empty")));
    }
    if value.starts_with('-') {
        return Err(
            ConfigError::new(format!("{name} `{}` starts with `-`", value.escape_debug())).hint(
                "ssh would read it as an option; a host name or address never starts with `-`",
            ),
        );
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(format!(
            "{name} `{}` contains {}",
            value.escape_debug(),
            describe_char(c)
        ))
        .hint("a host name, address or user name has no whitespace or control characters"));
    }
    Ok(())
}

impl Environment {
    /// Loads `environments/<name>.toml` below `project_root` and checks it against `registry`.
    ///
    /// `name` must be a name (see [`check_name`]): it never reaches outside `environments/`.
    pub fn load(project_root: &Path, name: &str, registry: &Registry) -> Result<Self, ConfigError> {
        check_name(name)?;
        let relative = format!("environments/{name}.toml");
        let path = project_root.join(&relative);
        let text = match std::fs::read(&path) {
            Ok(bytes) => utf8(&relative, bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let known = Self::list(project_root);
                let mut err = ConfigError::new(format!(
                    "environment `{name}` not found: `{relative}` does not exist"
                ))
                .suggest(name, known.iter().map(String::as_str));
                if !known.is_empty() {
                    err = err.hint(format!("environments here: {}", known.join(", ")));
                }
                return Err(err);
            }
            Err(e) => {
                return Err(ConfigError::new(format!("cannot read `{relative}`"))
                    .caused_by(anyhow::Error::new(e)));
            }
        };
        Self::parse(name, &relative, text, registry)
    }

    /// The names of the environments below `project_root`, sorted.
    pub fn list(project_root: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(project_root.join("environments"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".toml").map(str::to_string)
            })
            .collect();
        names.sort();
        names
    }

    /// Parses and checks an environment from its text; `path` is used in error places.
    pub fn parse(
        name: &str,
        path: &str,
        text: String,
        registry: &Registry,
    ) -> Result<Self, ConfigError> {
        let text: Arc<str> = Arc::from(text);
        let source = SourceText::new(path, Arc::clone(&text));
        let doc = DeTable::parse(&text).map_err(|e| source.toml_error(&e))?;
        let span = doc.span();
        let mut table = doc.into_inner();
        let components_value = table.remove("components");
        let shape: FileShape =
            FileShape::deserialize(toml::de::Deserializer::from(Spanned::new(span, table)))
                .map_err(|e| source.toml_error(&e))?;

        let settings = shape.environment.unwrap_or_default();
        for (field, value) in [("user", &settings.user), ("become", &settings.become_user)] {
            if let Some(value) = value {
                check_word(&format!("`environment.{field}`"), value.get_ref())
                    .map_err(|e| e.at(source.place(value.span().start)))?;
            }
        }
        for allowed in &settings.allow_paths {
            if !Path::new(allowed.get_ref()).is_absolute() {
                return Err(ConfigError::new(format!(
                    "`allow_paths` entry `{}` must be an absolute path",
                    allowed.get_ref()
                ))
                .at(source.place(allowed.span().start)));
            }
        }

        if let Err(message) = settings.templates.syntax().check() {
            let at = [
                &settings.templates.line_statement_prefix,
                &settings.templates.line_comment_prefix,
            ]
            .into_iter()
            .flatten()
            .map(|p| p.span().start)
            .next()
            .unwrap_or(0);
            return Err(ConfigError::new(format!(
                "the template syntax of `[environment.templates]` is not usable: {message}"
            ))
            .at(source.place(at)));
        }

        let components = parse_components(&source, components_value, registry)?;

        let rollout_shape = shape.rollout;
        let mut hosts = Vec::new();
        let mut reference_spans = BTreeMap::new();
        for (host_key, shape) in shape.hosts {
            let host_name = host_key.get_ref().clone();
            if shape.address.is_none() {
                // The name is the address ssh connects to.
                check_word("host name", &host_name).map_err(|e| {
                    e.at(source.place(host_key.span().start))
                        .hint("without `address`, the host's name is its address")
                })?;
            }
            let mut names = Vec::new();
            for reference in &shape.components {
                let component = reference.get_ref();
                let place = source.place(reference.span().start);
                if !components.contains_key(component) && !registry.contains(component) {
                    let candidates = components
                        .keys()
                        .map(String::as_str)
                        .chain(registry.names());
                    return Err(ConfigError::new(format!("unknown component `{component}`"))
                        .at(place)
                        .suggest(component, candidates)
                        .hint(
                        "define it in a `[components.<name>]` table or use a registered type name",
                    ));
                }
                if names.contains(component) {
                    return Err(ConfigError::new(format!(
                        "component `{component}` is assigned twice to host `{host_name}`"
                    ))
                    .at(place)
                    .hint("use several instances with distinct names and `type = ...`"));
                }
                reference_spans.insert(
                    (host_name.clone(), component.clone()),
                    reference.span().start,
                );
                names.push(component.clone());
            }
            let (address, port, user) = shape.connection(&host_name, &source)?;
            let user = user.or_else(|| settings.user.as_ref().map(|u| u.get_ref().clone()));
            let become_user = shape
                .become_user
                .as_ref()
                .or(settings.become_user.as_ref())
                .map(|u| u.get_ref().clone());
            hosts.push(Host {
                name: host_name,
                components: names,
                data: shape.data,
                address,
                port,
                user,
                become_user,
            });
        }

        let host_names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
        let groups = crate::groups::check_groups(shape.groups, &host_names, &source)?;

        let rollout = rollout_shape
            .map(|r| crate::rollout::check(r, &hosts, &source))
            .transpose()?;

        let tables: Vec<(String, Spanned<DeValue<'_>>)> =
            component_tables(&source)?.into_iter().collect();
        let generated = crate::secrets::generate::declarations(&source, &tables)?;
        drop(tables);

        Ok(Environment {
            name: name.to_string(),
            settings,
            hosts,
            groups,
            rollout,
            source,
            components,
            reference_spans,
            secrets: None,
            secret_files: BTreeMap::new(),
            secrets_path: None,
            secret_values: Vec::new(),
            generated,
        })
    }

    /// Merges decrypted secrets: attribute overrides into root components, data into hosts,
    /// named files for components to install. Secrets for a component no host runs, for an
    /// unknown host, or set both here and in the environment file are errors.
    pub fn apply_secrets(
        &mut self,
        secrets: Secrets,
        registry: &Registry,
    ) -> Result<(), ConfigError> {
        let overlay = &secrets.source;
        for (name, _) in &secrets.generated {
            if !self
                .hosts
                .iter()
                .any(|h| h.components.contains(name.get_ref()))
                || !self.components.contains_key(name.get_ref())
            {
                return Err(ConfigError::new(format!(
                    "a generated secret for component `{}`, which no host runs",
                    name.get_ref()
                ))
                .at(overlay.place(name.span().start))
                .suggest(name.get_ref(), self.components.keys().map(String::as_str))
                .hint("remove the entry with `secrets edit`, or assign the component to a host"));
            }
        }
        for name in &secrets.components {
            let component = name.get_ref();
            let assigned = self.hosts.iter().any(|h| h.components.contains(component));
            let known = self.components.contains_key(component)
                || (assigned && registry.contains(component));
            if !known {
                let candidates: Vec<&str> = self
                    .components
                    .keys()
                    .map(String::as_str)
                    .chain(
                        self.hosts
                            .iter()
                            .flat_map(|h| h.components.iter().map(String::as_str)),
                    )
                    .collect();
                return Err(ConfigError::new(format!(
                    "secrets for unknown component `{component}`"
                ))
                .at(overlay.place(name.span().start))
                .suggest(component, candidates)
                .hint(format!(
                    "no host of `{}` runs a component called `{component}`",
                    self.path()
                )));
            }
            if !assigned {
                return Err(ConfigError::new(format!(
                    "secrets for component `{component}`, which no host runs"
                ))
                .at(overlay.place(name.span().start))
                .hint("assign it to a host or remove its secrets"));
            }
            let offset = self
                .reference_spans
                .iter()
                .find(|((_, c), _)| c == component)
                .map(|(_, offset)| *offset)
                .unwrap_or(0);
            self.components
                .entry(component.clone())
                .or_insert_with(|| ComponentDef {
                    type_name: component.clone(),
                    span: offset..offset,
                });
        }
        // Merging once now refuses a key set in both places before anything else is done.
        self.secrets = Some(secrets.source.clone());
        self.attributes()?;
        for (name, data) in secrets.hosts {
            let Some(host) = self.hosts.iter_mut().find(|h| &h.name == name.get_ref()) else {
                let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
                return Err(ConfigError::new(format!(
                    "secrets for unknown host `{}`",
                    name.get_ref()
                ))
                .at(secrets.source.place(name.span().start))
                .suggest(name.get_ref(), names.iter().map(String::as_str))
                .hint(format!("hosts: {}", names.join(", "))));
            };
            for (key, value) in data {
                if host.data.contains_key(key.get_ref()) {
                    return Err(ConfigError::new(format!(
                        "`hosts.{}.data.{}` is set both in the environment and in the secrets",
                        host.name,
                        key.get_ref()
                    ))
                    .at(secrets.source.place(key.span().start))
                    .hint("set each value in one place: remove it from the environment file"));
                }
                host.data.insert(key.into_inner(), value);
            }
        }
        self.secret_files = secrets.files;
        self.secrets_path = Some(secrets.source.path.clone());
        self.secret_values = secrets.values;
        Ok(())
    }

    /// Every root component's attribute overrides, parsed again from the environment's text
    /// with the secrets' overrides merged in and marked as secret.
    pub(crate) fn attributes(&self) -> Result<BTreeMap<String, MergedAttributes<'_>>, ConfigError> {
        let mut tables = component_tables(&self.source)?;
        let mut out = BTreeMap::new();
        for (name, def) in &self.components {
            let value = match tables.remove(name) {
                Some(mut value) => {
                    if let DeValue::Table(table) = value.get_mut() {
                        table.remove("type");
                    }
                    // A generated secret's value comes from the secrets, below.
                    crate::secrets::generate::strip(&mut value);
                    value
                }
                None => Spanned::new(def.span.clone(), DeValue::Table(DeTable::new())),
            };
            out.insert(
                name.clone(),
                MergedAttributes {
                    value,
                    secret: SecretKeys::default(),
                },
            );
        }
        if let Some(secrets) = &self.secrets {
            for (name, from) in generated_tables(secrets)? {
                if let Some(into) = out.get_mut(&name) {
                    merge(
                        &mut into.value,
                        from,
                        &format!("components.{name}"),
                        &[],
                        &mut into.secret,
                        secrets,
                    )?;
                }
            }
            for (name, from) in component_tables(secrets)? {
                // `apply_secrets` refused secrets for components that are not defined.
                if let Some(into) = out.get_mut(&name) {
                    merge(
                        &mut into.value,
                        from,
                        &format!("components.{name}"),
                        &[],
                        &mut into.secret,
                        secrets,
                    )?;
                }
            }
        }
        Ok(out)
    }

    /// The generated secrets this environment declares for components that hosts run and
    /// whose value the secrets do not hold yet: what [`append_generated`] must make.
    ///
    /// [`append_generated`]: crate::secrets::append_generated
    pub fn missing_generated(&self) -> Result<Vec<crate::secrets::Declaration>, ConfigError> {
        if self.generated.is_empty() {
            return Ok(Vec::new());
        }
        let attributes = self.attributes()?;
        Ok(self
            .generated
            .iter()
            .filter(|d| {
                self.hosts
                    .iter()
                    .any(|h| h.components.contains(&d.component))
            })
            .filter(|d| {
                let Some(merged) = attributes.get(&d.component) else {
                    return true;
                };
                let mut value = merged.value.get_ref();
                for key in &d.attribute {
                    match value {
                        DeValue::Table(t) => match t.get(key.as_str()) {
                            Some(v) => value = v.get_ref(),
                            None => return true,
                        },
                        _ => return true,
                    }
                }
                false
            })
            .cloned()
            .collect())
    }

    /// The host called `name`, or an error suggesting a close name.
    pub fn host(&self, name: &str) -> Result<&Host, ConfigError> {
        self.hosts.iter().find(|h| h.name == name).ok_or_else(|| {
            ConfigError::new(format!(
                "unknown host `{name}` in environment `{}`",
                self.name
            ))
            .at(Place::Path(self.source.path.clone()))
            .suggest(name, self.hosts.iter().map(|h| h.name.as_str()))
            .hint(format!("hosts: {}", self.host_names().join(", ")))
        })
    }

    /// Host names, sorted.
    pub fn host_names(&self) -> Vec<&str> {
        self.hosts.iter().map(|h| h.name.as_str()).collect()
    }

    /// The environment file's path relative to the project root.
    pub fn path(&self) -> &str {
        &self.source.path
    }

    /// The place where `host` lists `component`, or the file when unknown.
    pub(crate) fn reference_place(&self, host: &str, component: &str) -> Place {
        match self
            .reference_spans
            .get(&(host.to_string(), component.to_string()))
        {
            Some(offset) => self.source.place(*offset),
            None => Place::Path(self.source.path.clone()),
        }
    }

    /// The base directory as a controller plans with it for remote hosts: absolute paths as
    /// they are, relative ones (and `~/...`) below `~`, which each agent resolves to its own
    /// home (see [`Plan::from_job`](crate::Plan::from_job)).
    pub fn remote_base_dir(&self) -> PathBuf {
        planned_base_dir(&self.settings.base_dir)
    }

    /// The resolved base directory for a run on this machine: relative to the project root,
    /// `~/...` below `home` (this user's home, as the caller read it from `HOME`).
    pub fn local_base_dir(&self, project_root: &Path, home: Option<&Path>) -> PathBuf {
        let base = &self.settings.base_dir;
        if let (Some(rest), Some(home)) = (below_home(base), home) {
            return crate::paths::normalize(&home.join(rest));
        }
        crate::paths::resolve(project_root, Path::new(base))
    }
}

/// What `base_dir` names below a home directory: `~/x` and `~` explicitly, nothing else.
fn below_home(base_dir: &str) -> Option<&str> {
    if base_dir == "~" {
        Some("")
    } else {
        base_dir.strip_prefix("~/")
    }
}

/// The base directory a controller plans with: absolute as it is, anything else below `~`
/// (`srv`, `~/srv` and `./srv` are all `~/srv`).
pub(crate) fn planned_base_dir(base_dir: &str) -> PathBuf {
    let relative = below_home(base_dir).unwrap_or(base_dir);
    let path = Path::new(relative);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        crate::paths::normalize(&Path::new("~").join(path))
    }
}

/// The base directory on a remote host whose home is `home`: absolute as it is, anything
/// else (`srv`, `~/srv`) below `home`.
pub fn host_base_dir(base_dir: &str, home: &Path) -> PathBuf {
    let relative = below_home(base_dir).unwrap_or(base_dir);
    let path = Path::new(relative);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        crate::paths::normalize(&home.join(path))
    }
}

/// Checks that an environment name is a name: letters, digits, `.`, `_` and `-`, not starting
/// with `.`, so that `environments/<name>.toml` and `secrets/<name>.age` stay in their
/// directories.
pub fn check_name(name: &str) -> Result<(), ConfigError> {
    let bad = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
    let problem = if name.is_empty() {
        "is empty".to_string()
    } else if let Some(c) = bad {
        format!("contains {}", describe_char(c))
    } else if name.starts_with('.') {
        "starts with `.`".to_string()
    } else {
        return Ok(());
    };
    Err(ConfigError::new(format!(
        "invalid environment name `{}`: it {problem}",
        name.escape_debug()
    ))
    .hint("an environment is named by its file `environments/<name>.toml`: letters, digits, `.`, `_` and `-`, not starting with `.`"))
}

/// A character as an error message names it: `/` in backticks, control characters and
/// whitespace by their escape.
fn describe_char(c: char) -> String {
    if c.is_control() || c.is_whitespace() {
        format!("the character `{}`", c.escape_default())
    } else {
        format!("`{c}`")
    }
}

/// The text of a file that must be UTF-8, or an error placing its first invalid byte.
pub(crate) fn utf8(path: &str, bytes: Vec<u8>) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let before = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        ConfigError::new(format!(
            "`{path}` is not UTF-8 text: invalid byte 0x{:02x}",
            bytes[good]
        ))
        .at(Place::File {
            path: path.to_string(),
            line,
            column,
        })
        .hint("save the file as UTF-8")
    })
}

/// The `[components.*]` tables of a parsed text by name, as written (with `type`); a text
/// without `components`, or whose `components` is no table, has none.
fn component_tables(
    source: &SourceText,
) -> Result<BTreeMap<String, Spanned<DeValue<'_>>>, ConfigError> {
    let mut doc = source.parse()?.into_inner();
    let Some(value) = doc.remove("components") else {
        return Ok(BTreeMap::new());
    };
    let DeValue::Table(table) = value.into_inner() else {
        return Ok(BTreeMap::new());
    };
    Ok(table
        .into_iter()
        .filter(|(_, v)| v.get_ref().is_table())
        .map(|(k, v)| (k.into_inner().into_owned(), v))
        .collect())
}

/// The `[[generated]]` entries of a secrets text as attribute tables by component, nested
/// along each entry's attribute path, with the value's span.
fn generated_tables(
    source: &SourceText,
) -> Result<Vec<(String, Spanned<DeValue<'_>>)>, ConfigError> {
    let mut doc = source.parse()?.into_inner();
    let Some(value) = doc.remove("generated") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for entry in crate::secrets::generate::entries(source, value)? {
        let span = entry.value.span();
        let mut value = entry.value;
        for key in entry.attribute.iter().rev() {
            let mut table = DeTable::new();
            table.insert(
                Spanned::new(span.clone(), std::borrow::Cow::Owned(key.clone())),
                value,
            );
            value = Spanned::new(span.clone(), DeValue::Table(table));
        }
        out.push((entry.component, value));
    }
    Ok(out)
}

fn parse_components(
    source: &SourceText,
    value: Option<Spanned<DeValue<'_>>>,
    registry: &Registry,
) -> Result<BTreeMap<String, ComponentDef>, ConfigError> {
    let mut defs = BTreeMap::new();
    let Some(value) = value else {
        return Ok(defs);
    };
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        return Err(ConfigError::new("`components` must be a table").at(source.place(span.start)));
    };
    for (key, value) in table {
        let name = key.get_ref().to_string();
        let span = value.span();
        let DeValue::Table(attributes) = value.into_inner() else {
            return Err(ConfigError::new(format!(
                "`components.{name}` must be a table of attributes"
            ))
            .at(source.place(span.start)));
        };
        let type_name = match attributes.get("type") {
            None => {
                if !registry.contains(&name) {
                    return Err(ConfigError::new(format!(
                        "component `{name}` has no `type` and no type is called `{name}`"
                    ))
                    .at(source.place(key.span().start))
                    .suggest(&name, registry.names())
                    .hint(format!(
                        "add `type = \"...\"`; types: {}",
                        registry.names().collect::<Vec<_>>().join(", ")
                    )));
                }
                name.clone()
            }
            Some(t) => {
                let t_span = t.span();
                let Some(t) = t.get_ref().as_str().map(str::to_string) else {
                    return Err(
                        ConfigError::new("`type` must be a string").at(source.place(t_span.start))
                    );
                };
                if !registry.contains(&t) {
                    return Err(ConfigError::new(format!("unknown component type `{t}`"))
                        .at(source.place(t_span.start))
                        .suggest(&t, registry.names())
                        .hint(format!(
                            "types: {}",
                            registry.names().collect::<Vec<_>>().join(", ")
                        )));
                }
                t
            }
        };
        defs.insert(name, ComponentDef { type_name, span });
    }
    Ok(defs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Environment, ConfigError> {
        let mut registry = Registry::new();
        registry.register::<Nothing>("nothing");
        Environment::parse("dev", "environments/dev.toml", text.into(), &registry)
    }

    #[derive(Deserialize)]
    struct Nothing {}

    impl crate::Component for Nothing {
        fn label(&self) -> String {
            "Nothing".into()
        }
        fn verify(&self, _cx: &mut crate::Deploy) -> anyhow::Result<crate::Verdict> {
            Ok(crate::Verdict::UpToDate)
        }
    }

    #[test]
    fn environment_names_are_names() {
        for good in ["dev", "prod-1", "eu_west.2", "A"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("../other/evil", "contains `/`"),
            (".hidden", "starts with `.`"),
            ("..", "starts with `.`"),
            ("", "is empty"),
            ("a b", "contains the character ` `"),
            ("a\nb", "contains the character `\\n`"),
            ("ü", "contains `ü`"),
        ] {
            let err = check_name(bad).unwrap_err();
            assert!(err.message.ends_with(why), "{bad:?}: {err}");
            assert!(err.hint.is_some());
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("other")).unwrap();
        std::fs::create_dir_all(dir.path().join("environments")).unwrap();
        std::fs::write(dir.path().join("other/evil.toml"), "[hosts.localhost]\n").unwrap();
        let err = Environment::load(dir.path(), "../other/evil", &Registry::new()).unwrap_err();
        assert!(err.message.starts_with("invalid environment name"), "{err}");
    }

    #[test]
    fn host_connection_values_are_checked_with_their_place() {
        for (host, want) in [
            (
                "address = \"-oProxyCommand=x\"",
                "`hosts.web1.address` `-oProxyCommand=x` starts with `-` in environments/dev.toml:2:11",
            ),
            (
                "address = \"a b\"",
                "`hosts.web1.address` `a b` contains the character ` ` in environments/dev.toml:2:11",
            ),
            (
                "user = \"ro\\not\"",
                "`hosts.web1.user` `ro\\not` contains the character `\\n` in environments/dev.toml:2:8",
            ),
            (
                "user = \"\"",
                "`hosts.web1.user` is empty in environments/dev.toml:2:8",
            ),
            (
                "port = 0",
                "`hosts.web1.port` is 0: a port must be between 1 and 65535 in environments/dev.toml:2:8",
            ),
            (
                "port = 65536",
                "`hosts.web1.port` is 65536: a port must be between 1 and 65535 in environments/dev.toml:2:8",
            ),
            (
                "port = -22",
                "`hosts.web1.port` is -22: a port must be between 1 and 65535 in environments/dev.toml:2:8",
            ),
        ] {
            let err = parse(&format!("[hosts.web1]\n{host}\n")).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
        let err = parse("[hosts.\"-oX\"]\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "host name `-oX` starts with `-` in environments/dev.toml:1:8"
        );
        let env =
            parse("[hosts.\"-oX\"]\naddress = \"10.0.0.1\"\nport = 2222\nuser = \"deploy\"\n")
                .unwrap();
        assert_eq!(env.hosts[0].port, Some(2222));
    }

    #[test]
    fn user_and_become_default_from_the_environment_and_are_checked() {
        let env = parse(
            "[environment]\nuser = \"deploy\"\nbecome = \"root\"\n[hosts.web1]\n[hosts.web2]\nuser = \"ops\"\nbecome = \"app\"\n",
        )
        .unwrap();
        let web1 = &env.hosts[0];
        assert_eq!(
            (web1.user.as_deref(), web1.become_user.as_deref()),
            (Some("deploy"), Some("root"))
        );
        let web2 = &env.hosts[1];
        assert_eq!(
            (web2.user.as_deref(), web2.become_user.as_deref()),
            (Some("ops"), Some("app"))
        );
        let err = parse("[hosts.web1]\nbecome = \"-oX\"\n").unwrap_err();
        assert!(
            err.to_string().starts_with(
                "`hosts.web1.become` `-oX` starts with `-` in environments/dev.toml:2:10"
            ),
            "{err}"
        );
        let err = parse("[environment]\nbecome = \"ro ot\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`environment.become` `ro ot` contains"),
            "{err}"
        );
    }

    #[test]
    fn unknown_tables_list_every_valid_one() {
        let err = parse("[hostz.a]\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown field `hostz`, expected one of `environment`, `hosts`, `groups`, `components`, `rollout` in environments/dev.toml:1:2 (did you mean `hosts`?)"
        );
    }

    #[test]
    fn groups_name_hosts_and_are_placed_when_wrong() {
        let hosts = "[hosts.web1]\n[hosts.web2]\n[hosts.db1]\n";
        let env = parse(&format!("{hosts}[groups]\nweb = [\"web1\", \"web2\"]\n")).unwrap();
        assert_eq!(env.groups["web"], ["web1", "web2"]);
        for (groups, want) in [
            (
                "web = [\"web1\", \"wbe2\"]",
                "unknown host `wbe2` in group `web` in environments/dev.toml:5:16 (did you mean `web2`?)",
            ),
            (
                "web1 = [\"web2\"]",
                "group `web1` has the name of host `web1` in environments/dev.toml:5:1",
            ),
            (
                "web = [\"web1\", \"web1\"]",
                "host `web1` is listed twice in group `web` in environments/dev.toml:5:16",
            ),
            (
                "\"!web\" = [\"web1\"]",
                "group name `!web` starts with `!`, which `--hosts` reads as an exclusion in environments/dev.toml:5:1",
            ),
            (
                "web = [\"web1\"]\nall = [\"web\"]",
                "unknown host `web` in group `all` in environments/dev.toml:6:8",
            ),
        ] {
            let err = parse(&format!("{hosts}[groups]\n{groups}\n")).unwrap_err();
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn non_utf8_files_name_the_first_bad_byte() {
        let err = utf8(
            "environments/dev.toml",
            b"[hosts.a]\nx = \"\xc3\xa9\xff\"\n".to_vec(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`environments/dev.toml` is not UTF-8 text: invalid byte 0xff in environments/dev.toml:2:7"
        );
    }

    #[test]
    fn base_dirs_below_home() {
        assert_eq!(planned_base_dir("srv"), Path::new("~/srv"));
        assert_eq!(planned_base_dir("~/srv"), Path::new("~/srv"));
        assert_eq!(planned_base_dir("."), Path::new("~"));
        assert_eq!(planned_base_dir("~"), Path::new("~"));
        assert_eq!(planned_base_dir("/srv"), Path::new("/srv"));
        let home = Path::new("/home/d");
        assert_eq!(host_base_dir("~/srv", home), Path::new("/home/d/srv"));
        assert_eq!(host_base_dir("srv", home), Path::new("/home/d/srv"));
        assert_eq!(host_base_dir("~", home), Path::new("/home/d"));
        assert_eq!(host_base_dir("/srv", home), Path::new("/srv"));
        // `~user` is not a home directory of ours: a relative name like any other.
        assert_eq!(host_base_dir("~x/srv", home), Path::new("/home/d/~x/srv"));
    }
}
