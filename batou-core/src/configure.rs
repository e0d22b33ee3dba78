//! The configure context: what a component may use while building its sub-component tree.
//!
//! Everything here is pure with respect to the host: it reads the project (templates, source
//! files), the environment and resources, and records sub-components and provided resources.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::paths::{AllowedPaths, refuse_nul};
use crate::resources::Resources;
use crate::secrets::{Secret, SecretFiles};
use crate::{Component, Host, Project, Templates, paths};

/// What one step's configure sees of the environment; shared by the step's whole tree.
pub(crate) struct Scope<'a> {
    pub(crate) step: usize,
    pub(crate) root: &'a str,
    pub(crate) step_labels: &'a [String],
    pub(crate) host: &'a Host,
    pub(crate) environment: &'a str,
    pub(crate) base_dir: &'a Path,
    pub(crate) workdir: PathBuf,
    pub(crate) allowed: &'a [PathBuf],
    /// The same roots for checks on the host, shared so that their resolution is cached.
    pub(crate) allowed_paths: &'a crate::AllowedPaths,
    /// The project as this step reads it (reads are recorded for the step).
    pub(crate) project: Project,
    /// Templates loading through `project`.
    pub(crate) templates: &'a Templates,
    pub(crate) secret_files: &'a SecretFiles,
    /// The plan's bundles: built once per specification on the controller, shipped to agents.
    pub(crate) bundles: &'a crate::bundle::Bundles,
    pub(crate) context: minijinja::Value,
    /// The host's facts as planned ([`crate::Facts::unknown`] until gathered).
    pub(crate) facts: crate::Facts,
    pub(crate) fact_reads: crate::FactReads,
}

/// A sub-component that a component added, for asking later whether it changed.
///
/// Only meaningful to the component that added it (it is the sub-component's position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubComponent(pub(crate) usize);

/// A root component of the same host that a component watches for changes, returned by
/// [`Configure::watch_root`]; [`Deploy::root_changed`](crate::Deploy::root_changed) asks
/// whether it changed in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootWatch(pub(crate) String);

impl RootWatch {
    /// The watched root component's name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// Passed to [`Component::configure`]: add sub-components, provide and require resources,
/// render templates, resolve paths.
pub struct Configure<'a> {
    pub(crate) scope: &'a Scope<'a>,
    pub(crate) resources: &'a mut Resources,
    pub(crate) path: String,
    pub(crate) added: Vec<Box<dyn Component>>,
}

impl<'a> Configure<'a> {
    /// Adds a sub-component; sub-components converge before their parent, in the order added.
    ///
    /// The returned handle lets [`Deploy::changed`](crate::Deploy::changed) ask whether this
    /// one sub-component changed, e.g. "reload the daemon only when its unit file changed".
    pub fn add(&mut self, component: impl Component) -> SubComponent {
        self.added.push(Box::new(component));
        SubComponent(self.added.len() - 1)
    }

    /// Watches the root component `name` of this host for changes: this root component is
    /// deployed after it, and [`Deploy::root_changed`](crate::Deploy::root_changed) tells
    /// whether it changed (or, in a dry run, would change) in this run. This is how
    /// `restart_on` and `on_change` are written.
    ///
    /// A name that is not a root component of this host, or this root component itself, is
    /// an error that suggests a close name.
    pub fn watch_root(&mut self, name: &str) -> anyhow::Result<RootWatch> {
        let host = self.scope.host;
        if name == self.scope.root {
            bail!("`{name}` cannot watch itself for changes");
        }
        if !host.components.iter().any(|c| c == name) {
            let others = host
                .components
                .iter()
                .map(String::as_str)
                .filter(|c| *c != self.scope.root);
            let listed: Vec<String> = others.clone().map(|c| format!("`{c}`")).collect();
            let hint = if listed.is_empty() {
                format!("host `{}` has no other root component to watch", host.name)
            } else {
                format!(
                    "the other root components of host `{}` are {}",
                    host.name,
                    listed.join(", ")
                )
            };
            return Err(crate::ConfigError::new(format!(
                "`{name}` is not a root component of host `{}`",
                host.name
            ))
            .suggest(name, others)
            .hint(hint)
            .into());
        }
        let label = format!("{}: {name}", host.name);
        if let Some(watched) = self.scope.step_labels.iter().position(|l| *l == label) {
            self.resources.watch(self.scope.step, watched);
        }
        Ok(RootWatch(name.to_string()))
    }

    /// The host this component is configured for.
    pub fn host(&self) -> &Host {
        self.scope.host
    }

    /// The host's platform facts (OS, distribution, version, architecture), for choosing a
    /// variant: a service manager, a package name.
    ///
    /// Asking is recorded: a plan whose configure asked is built again once the host's
    /// facts are known, and every value is empty until then. Configure stays pure: the facts
    /// are gathered by the command that plans, not here.
    pub fn facts(&self) -> &crate::Facts {
        self.scope.fact_reads.record(&self.scope.host.name);
        &self.scope.facts
    }

    /// The environment's name.
    pub fn environment(&self) -> &str {
        self.scope.environment
    }

    /// The root component's work directory, `<base_dir>/work/<root>`.
    pub fn workdir(&self) -> &Path {
        &self.scope.workdir
    }

    /// The environment's base directory as resolved for this run.
    pub fn base_dir(&self) -> &Path {
        self.scope.base_dir
    }

    /// The component path being configured, e.g. `app > File('app.toml')`.
    pub fn component_path(&self) -> &str {
        &self.path
    }

    /// The deployment repository, for reading source files.
    pub fn project(&self) -> &Project {
        &self.scope.project
    }

    /// `path` resolved against the work directory, refused if it lies outside the paths this
    /// deployment may change (`base_dir` and the environment's `allow_paths`) or holds a NUL
    /// byte, which no path on a host can.
    ///
    /// The check is lexical: configure does not touch the host. Components check the path
    /// again on the host, with symlinks resolved, through [`Configure::allowed_paths`].
    pub fn path(&self, path: impl AsRef<Path>) -> anyhow::Result<PathBuf> {
        let path = path.as_ref();
        refuse_nul("path", &path.to_string_lossy())?;
        let resolved = paths::resolve(&self.scope.workdir, path);
        if !paths::is_inside(&resolved, self.scope.allowed) {
            let allowed: Vec<String> = self
                .scope
                .allowed
                .iter()
                .map(|p| format!("`{}`", p.display()))
                .collect();
            bail!(
                "path `{}` is outside what this deployment may change ({})",
                path.display(),
                allowed.join(", ")
            );
        }
        Ok(resolved)
    }

    /// The roots this deployment may change, for checking resolved paths on the host in
    /// `verify` and `update` ([`AllowedPaths::check`]).
    pub fn allowed_paths(&self) -> AllowedPaths {
        self.scope.allowed_paths.clone()
    }

    /// The content of the named secret file (`[files]` in the environment's secrets). Only
    /// hosts whose components ask for a secret file receive it.
    pub fn secret_file(&self, name: &str) -> anyhow::Result<Secret<String>> {
        self.scope.secret_files.get(self.scope.step, name)
    }

    /// The bundle of a release whose specification is `spec`: on the controller `make` builds
    /// it, once per run however many hosts and steps ask (each later call answers the first
    /// result); on an agent it is the bundle the controller built, shipped in the job. With
    /// [`skip_builds`](crate::bundle::skip_builds), [`Bundle::unbuilt`](crate::Bundle::unbuilt).
    ///
    /// Building reads the controller's project directly, not through [`Configure::project`]:
    /// the archive travels to hosts by digest, never inside the job.
    pub fn bundle(
        &mut self,
        spec: &impl Serialize,
        make: impl FnOnce(&Project) -> anyhow::Result<crate::Bundle>,
    ) -> anyhow::Result<crate::Bundle> {
        let key = serde_json::to_string(spec).context("cannot serialize a bundle specification")?;
        let project = &self.scope.project;
        self.scope
            .bundles
            .get(self.scope.step, &key, || make(project))
    }

    /// The root component being configured.
    pub fn root(&self) -> &str {
        self.scope.root
    }

    /// Provides `value` under `key` to every component that requires it, on any host.
    pub fn provide<T: Serialize>(&mut self, key: &str, value: &T) -> anyhow::Result<()> {
        let value = serde_json::to_value(value)
            .with_context(|| format!("cannot serialize resource `{key}`"))?;
        self.resources.provide(self.scope.step, key, value);
        Ok(())
    }

    /// Every value provided under `key`, ordered by plan order of the providers.
    ///
    /// The requiring root component is deployed after every provider. While nothing provides
    /// `key`, this fails and the plan configures this root component again later.
    pub fn require<T: DeserializeOwned>(&mut self, key: &str) -> anyhow::Result<Vec<T>> {
        Ok(self
            .require_from(key)?
            .into_iter()
            .map(|(_, value)| value)
            .collect())
    }

    /// The values under `key` with the label of the step that provided each.
    fn require_from<T: DeserializeOwned>(
        &mut self,
        key: &str,
    ) -> anyhow::Result<Vec<(Option<&str>, T)>> {
        let values = self.resources.require(self.scope.step, key)?;
        let fixed = self.resources.is_fixed();
        values
            .into_iter()
            .map(|(provider, value)| {
                let label = self.scope.step_labels[provider].as_str();
                let value = serde_json::from_value(value).with_context(|| {
                    format!("resource `{key}` provided by `{label}` has an unexpected shape")
                })?;
                // On an agent, values come from the job and their providers are not known.
                Ok(((!fixed).then_some(label), value))
            })
            .collect()
    }

    /// The single value provided under `key`; several providers are an error naming them.
    pub fn require_one<T: DeserializeOwned>(&mut self, key: &str) -> anyhow::Result<T> {
        let mut values = self.require_from::<T>(key)?;
        if values.len() != 1 {
            let providers: Vec<String> = values
                .iter()
                .filter_map(|(label, _)| label.map(|l| format!("`{l}`")))
                .collect();
            if providers.is_empty() {
                bail!(
                    "resource `{key}` is provided {} times, expected once",
                    values.len()
                );
            }
            bail!(
                "resource `{key}` is provided {} times, expected once: by {}",
                values.len(),
                providers.join(", ")
            );
        }
        Ok(values.remove(0).1)
    }

    /// The template context: `host`, `environment`, `workdir` and `vars`' top-level keys.
    pub fn template_context(&self, vars: impl Serialize) -> minijinja::Value {
        let vars = minijinja::Value::from_serialize(vars);
        minijinja::context! { ..vars, ..self.scope.context.clone() }
    }

    /// Renders the project template file `name` with the template context plus `vars`.
    pub fn render_file(&self, name: &str, vars: impl Serialize) -> anyhow::Result<String> {
        self.scope
            .templates
            .render_file(name, &self.template_context(vars))
    }

    /// Renders an inline template, called `name` in errors.
    pub fn render_str(
        &self,
        name: &str,
        source: &str,
        vars: impl Serialize,
    ) -> anyhow::Result<String> {
        self.scope
            .templates
            .render_str(name, source, &self.template_context(vars))
    }
}
