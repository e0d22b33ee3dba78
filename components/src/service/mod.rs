//! `Service`: a long-running program that a supervisor (runit or systemd) keeps running,
//! started when it does not run, restarted exactly when its definition or what it watches
//! changed, and proven healthy before the deploy goes on.
//!
//! The supervisor, not the tool, keeps the process alive after the deploy: the tool writes
//! the definition (sub-components), enables it, asks the supervisor to start or restart it,
//! and watches the result for `within` and `stable`. The managers' details live in
//! [`runit`] and [`systemd`], the probes and the wait in [`health`].

mod health;
mod runit;
mod systemd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use batou_core::{
    Component, ConfigError, Configure, Deploy, RootWatch, Secret, ServiceControl, ServiceStatus,
    SubComponent, Verdict,
};
use serde::Deserialize;

pub use health::Health;
use health::{Baseline, seconds};
use runit::{EnvDir, RunScript, Runit};
use systemd::{Systemd, Unit};

use crate::File;

/// Lines of the service's own log shown with a failure.
const LOG_LINES: usize = 20;
/// The service directory runsvdir watches when neither `service_dir` nor host data say.
const DEFAULT_SERVICE_DIR: &str = "/etc/service";
/// Where unit files go when `unit_dir` does not say.
const DEFAULT_UNIT_DIR: &str = "/etc/systemd/system";

/// Which supervisor runs a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    /// runit (`runsvdir`, `runsv`, `sv`): a daemontools-style definition directory linked
    /// into the service directory.
    Runit,
    /// systemd: a unit file, `systemctl`.
    Systemd,
}

impl Manager {
    fn as_str(self) -> &'static str {
        match self {
            Manager::Runit => "runit",
            Manager::Systemd => "systemd",
        }
    }
}

/// Whether a service should run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    /// Enabled and running (the default).
    #[default]
    Running,
    /// Stopped and disabled.
    Stopped,
}

/// A supervised service.
///
/// ```toml
/// [components.web]
/// type = "service"
/// argv = ["python3", "-m", "http.server", "8080", "--bind", "127.0.0.1"]
/// cwd = "htdocs"                       # relative to the root component's work directory
/// env = { PYTHONUNBUFFERED = "1" }
/// manager = "runit"                    # or "systemd"; default: host data `service_manager`
/// restart_on = ["config"]              # root components of the same host
/// health = { http = "http://127.0.0.1:8080/", within = "20s", stable = "3s" }
/// ```
///
/// From Rust, [`Service::new`] and its builder methods; [`Service::restart_when`] adds a
/// sub-component whose change restarts the service.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Program and arguments; `run` `exec`s them, no shell is involved.
    argv: Vec<String>,
    /// Working directory, relative to the root component's work directory.
    #[serde(default)]
    cwd: Option<String>,
    /// Variables of the service's environment; secret values go to a private file.
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Secret variables given from Rust.
    #[serde(skip)]
    secret_env: BTreeMap<String, Secret<String>>,
    /// The user the program runs as.
    #[serde(default)]
    user: Option<String>,
    /// The service's name; defaults to the root component's name.
    #[serde(default)]
    name: Option<String>,
    /// The supervisor; defaults to host data `service_manager`, else runit.
    #[serde(default)]
    manager: Option<Manager>,
    /// runit's service directory; defaults to host data `service_dir`, else `/etc/service`.
    #[serde(default)]
    service_dir: Option<String>,
    /// systemd's unit directory; defaults to `/etc/systemd/system`.
    #[serde(default)]
    unit_dir: Option<String>,
    /// Root components of this host whose change restarts the service.
    #[serde(default)]
    restart_on: Vec<String>,
    /// What proves the service healthy after a start or restart.
    #[serde(default)]
    health: Option<Health>,
    /// `running` (default) or `stopped`.
    #[serde(default)]
    state: ServiceState,
    /// Sub-components whose change restarts the service (from Rust).
    #[serde(skip)]
    restart_when: Vec<Box<dyn Component>>,
    #[serde(skip)]
    configured: Option<Configured>,
    /// Set by `update`: the restart it did answers this run's changes.
    #[serde(skip)]
    handled: bool,
}

/// What configure resolved.
struct Configured {
    name: String,
    workdir: PathBuf,
    supervisor: Supervisor,
    health: Health,
    watches: Vec<RootWatch>,
    /// The sub-components that make up the definition.
    definition: Vec<SubComponent>,
    /// runit's `log/run`, whose change restarts the log service too.
    log_definition: Option<SubComponent>,
    /// `restart_when` sub-components and their labels.
    when: Vec<(SubComponent, String)>,
}

enum Supervisor {
    Runit(Runit),
    Systemd(Systemd),
}

/// What the supervisor says of a service, whichever it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Observed {
    /// runit: a runsv answers for it; systemd: the unit is loaded.
    pub(crate) supervised: bool,
    /// runit: linked into the service directory; systemd: `enabled`.
    pub(crate) enabled: bool,
    pub(crate) running: bool,
    pub(crate) want_up: bool,
    pub(crate) pid: Option<u32>,
    /// Seconds in the current state.
    pub(crate) since: Option<u64>,
    /// runit: exits counted by `finish` since the tool last started it; systemd:
    /// `NRestarts`.
    pub(crate) exits: Option<u64>,
    pub(crate) detail: Option<String>,
}

/// What converging has to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Start,
    Enable,
    Restart(Vec<String>),
    Stop,
}

impl Action {
    fn reason(&self, dry_run: bool) -> String {
        let (done, would) = match self {
            Action::Start => ("started".to_string(), "would start".to_string()),
            Action::Enable => ("enabled".to_string(), "would enable".to_string()),
            Action::Stop => ("stopped".to_string(), "would stop".to_string()),
            Action::Restart(why) => {
                let why = why.join(", ");
                (
                    format!("restarted ({why} changed)"),
                    format!("would restart ({why} changed)"),
                )
            }
        };
        if dry_run { would } else { done }
    }
}

impl Service {
    /// A service running `argv` in the root component's work directory.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Service {
            argv: argv.into_iter().map(Into::into).collect(),
            cwd: None,
            env: BTreeMap::new(),
            secret_env: BTreeMap::new(),
            user: None,
            name: None,
            manager: None,
            service_dir: None,
            unit_dir: None,
            restart_on: Vec::new(),
            health: None,
            state: ServiceState::Running,
            restart_when: Vec::new(),
            configured: None,
            handled: false,
        }
    }

    /// The working directory, relative to the work directory (or absolute).
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Adds a variable to the service's environment.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Adds a secret variable: it reaches the service through a file only the supervisor
    /// reads (mode 0600), never a command line or a world-readable file.
    pub fn secret_env(mut self, key: impl Into<String>, value: Secret<String>) -> Self {
        self.secret_env.insert(key.into(), value);
        self
    }

    /// The user the program runs as.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The service's name (default: the root component's name); give one when a root
    /// component has several services.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The supervisor, instead of the host's.
    pub fn manager(mut self, manager: Manager) -> Self {
        self.manager = Some(manager);
        self
    }

    /// runit's service directory.
    pub fn service_dir(mut self, dir: impl Into<String>) -> Self {
        self.service_dir = Some(dir.into());
        self
    }

    /// systemd's unit directory.
    pub fn unit_dir(mut self, dir: impl Into<String>) -> Self {
        self.unit_dir = Some(dir.into());
        self
    }

    /// Restarts the service when the root component `root` of this host changed.
    pub fn restart_on(mut self, root: impl Into<String>) -> Self {
        self.restart_on.push(root.into());
        self
    }

    /// Adds `component` as a sub-component (converged before the service) and restarts the
    /// service when it changed: its configuration file, say.
    pub fn restart_when(mut self, component: impl Component) -> Self {
        self.restart_when.push(Box::new(component));
        self
    }

    /// What proves the service healthy.
    pub fn health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// `Running` (default) or `Stopped`.
    pub fn state(mut self, state: ServiceState) -> Self {
        self.state = state;
        self
    }

    fn configured(&self) -> anyhow::Result<&Configured> {
        match &self.configured {
            Some(c) => Ok(c),
            None => bail!("the service was not configured"),
        }
    }

    /// What converging has to do, as the supervisor says now.
    fn action(&self, cx: &Deploy, c: &Configured, now: &Observed) -> Option<Action> {
        match self.state {
            ServiceState::Stopped => (now.enabled || now.running).then_some(Action::Stop),
            ServiceState::Running => {
                let triggers = if self.handled {
                    Vec::new()
                } else {
                    c.triggers(cx)
                };
                if !now.running || !now.want_up {
                    Some(Action::Start)
                } else if !triggers.is_empty() {
                    Some(Action::Restart(triggers))
                } else if !now.enabled {
                    Some(Action::Enable)
                } else {
                    None
                }
            }
        }
    }

    fn check_attributes(&self) -> anyhow::Result<()> {
        if self.argv.is_empty() {
            bail!("`argv` is empty: a service needs a program to run");
        }
        for (i, arg) in self.argv.iter().enumerate() {
            if arg.contains('\0') {
                bail!(
                    "`argv` element {} contains a NUL byte, which no command can receive",
                    i + 1
                );
            }
            if is_secret(arg) {
                bail!(
                    "`argv` element {} carries a secret, which would show on the service's command line: pass it in `env`",
                    i + 1
                );
            }
        }
        for key in self.env.keys().chain(self.secret_env.keys()) {
            let valid = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                bail!(
                    "`env` key `{}` is not a variable name: use letters, digits and `_`, not starting with a digit",
                    key.escape_debug()
                );
            }
        }
        for (key, value) in &self.env {
            if value.contains('\0') {
                bail!("`env` value of `{key}` contains a NUL byte, which no command can receive");
            }
        }
        for (what, value) in [
            ("cwd", &self.cwd),
            ("user", &self.user),
            ("service_dir", &self.service_dir),
            ("unit_dir", &self.unit_dir),
        ] {
            if let Some(v) = value {
                batou_core::refuse_nul(what, v)?;
                if what == "user" && (v.is_empty() || v.chars().any(char::is_whitespace)) {
                    bail!("`user` `{v}` is not a user name");
                }
            }
        }
        Ok(())
    }
}

impl Configured {
    /// Why the service must restart in this run: `definition`, changed `restart_when`
    /// sub-components, changed `restart_on` roots.
    fn triggers(&self, cx: &Deploy) -> Vec<String> {
        let mut why = Vec::new();
        if self.definition.iter().any(|s| cx.changed(*s)) {
            why.push("definition".to_string());
        }
        for (sub, label) in &self.when {
            if cx.changed(*sub) {
                why.push(label.clone());
            }
        }
        for watch in &self.watches {
            if cx.root_changed(watch) {
                why.push(watch.name().to_string());
            }
        }
        why
    }

    fn observe(&self) -> anyhow::Result<Observed> {
        match &self.supervisor {
            Supervisor::Runit(r) => r.observe(),
            Supervisor::Systemd(s) => s.observe(),
        }
    }

    fn manager(&self) -> Manager {
        match self.supervisor {
            Supervisor::Runit(_) => Manager::Runit,
            Supervisor::Systemd(_) => Manager::Systemd,
        }
    }

    fn definition_changed(&self, cx: &Deploy) -> bool {
        self.definition.iter().any(|s| cx.changed(*s))
    }

    /// Starts (enabling first), waits for health; the log line for people.
    fn start(&self, reload: bool) -> anyhow::Result<String> {
        let exits = match &self.supervisor {
            Supervisor::Runit(r) => {
                r.enable()?;
                if !r.observe()?.running {
                    r.start()?;
                }
                0
            }
            Supervisor::Systemd(s) => {
                s.enable(reload)?;
                s.observe()?.exits.unwrap_or(0)
            }
        };
        self.prove(Baseline {
            old_pid: None,
            exits,
        })
    }

    /// Restarts (the log service too when its definition changed), waits for health.
    fn restart(&self, old_pid: Option<u32>, reload: bool, log_too: bool) -> anyhow::Result<String> {
        let exits = match &self.supervisor {
            Supervisor::Runit(r) => {
                r.enable()?;
                r.restart(log_too)?;
                // The old process's exit runs `finish` once.
                1
            }
            Supervisor::Systemd(s) => {
                s.restart(reload)?;
                s.observe()?.exits.unwrap_or(0)
            }
        };
        self.prove(Baseline { old_pid, exits })
    }

    fn prove(&self, baseline: Baseline) -> anyhow::Result<String> {
        match self
            .health
            .prove(&self.name, baseline, &self.workdir, || self.observe())
        {
            Ok(proof) => {
                if let Supervisor::Runit(r) = &self.supervisor {
                    // The exit of the process a restart replaced is not one to report.
                    r.reset_exits(0)?;
                }
                let mut line = format!("healthy after {}", seconds(proof.after));
                if let Some(probe) = proof.probe {
                    line.push_str(&format!(" ({probe})"));
                }
                if let Some(pid) = proof.pid {
                    line.push_str(&format!(", pid {pid}"));
                }
                line.push_str(&format!(", stable for {}", seconds(self.health.stable)));
                Ok(line)
            }
            Err(unhealthy) => {
                let mut text = unhealthy.0;
                let tail = match &self.supervisor {
                    Supervisor::Runit(r) => r.log_tail(LOG_LINES),
                    Supervisor::Systemd(s) => s.log_tail(LOG_LINES),
                };
                match tail {
                    Some((source, lines)) if !lines.is_empty() => text.push_str(&format!(
                        "\n--- last {LOG_LINES} lines of the service's log ({source}) ---\n{lines}"
                    )),
                    _ => text.push_str("\n(the service's log is empty)"),
                }
                bail!("{text}")
            }
        }
    }

    /// Whether the service is deployed: runit's link and runsv are there.
    fn require_deployed(&self, cx: &Deploy, now: &Observed) -> anyhow::Result<()> {
        if let Supervisor::Runit(_) = &self.supervisor
            && !(now.enabled && now.supervised)
        {
            bail!(
                "service `{}` is not deployed on host `{}` ({}): deploy it first",
                self.name,
                cx.host().name,
                now.detail.as_deref().unwrap_or("no runsv answers for it")
            );
        }
        Ok(())
    }
}

/// Whether `value` holds a registered secret value.
fn is_secret(value: &str) -> bool {
    batou_core::redact::active()
        && matches!(batou_core::redact::mask(value), std::borrow::Cow::Owned(_))
}

/// A service's name as a file name: letters, digits, `.`, `_`, `-`, `@`, not starting
/// with `.` or `-`.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    if !valid {
        bail!(
            "service name `{}` is not a file name: use letters, digits, `.`, `_`, `-` and `@`",
            name.escape_debug()
        );
    }
    Ok(())
}

/// `dir` resolved and inside the allowed paths, or a configuration error that says to allow
/// it.
fn allowed_dir(cx: &Configure, dir: &str, attribute: &str) -> anyhow::Result<PathBuf> {
    cx.path(dir).map_err(|e| {
        ConfigError::new(format!(
            "`{attribute}` `{dir}` is not a path this deployment may change"
        ))
        .hint(format!(
            "add `{dir}` to `allow_paths` in the environment's `[environment]` table"
        ))
        .caused_by(e)
        .into()
    })
}

/// A string from host data `key`, if given.
fn host_data(cx: &Configure, key: &str) -> anyhow::Result<Option<String>> {
    match cx.host().data.get(key) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ConfigError::new(format!(
            "host data `{key}` of host `{}` must be a string, not `{other}`",
            cx.host().name
        ))
        .into()),
    }
}

/// A component given to `restart_when`, as added to the tree.
struct Boxed(Box<dyn Component>);

impl Component for Boxed {
    fn label(&self) -> String {
        self.0.label()
    }
    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        self.0.configure(cx)
    }
    fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
        self.0.verify(cx)
    }
    fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
        self.0.update(cx)
    }
    fn service(&self) -> Option<&dyn ServiceControl> {
        self.0.service()
    }
}

impl Component for Service {
    fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("Service('{name}')"),
            None => format!(
                "Service('{}')",
                self.argv.first().map(String::as_str).unwrap_or_default()
            ),
        }
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        self.check_attributes()?;
        let workdir = cx.workdir().to_path_buf();
        let name = match &self.name {
            Some(name) => name.clone(),
            None => workdir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        check_name(&name)?;
        let manager = match self.manager {
            Some(m) => m,
            None => match host_data(cx, "service_manager")?.as_deref() {
                None | Some("runit") => Manager::Runit,
                Some("systemd") => Manager::Systemd,
                Some(other) => {
                    return Err(ConfigError::new(format!(
                        "host data `service_manager` of host `{}` is `{other}`: expected `runit` or `systemd`",
                        cx.host().name
                    ))
                    .suggest(other, ["runit", "systemd"])
                    .into());
                }
            },
        };
        let mut watches = Vec::new();
        for root in &self.restart_on {
            watches.push(cx.watch_root(root)?);
        }
        let cwd = match &self.cwd {
            Some(cwd) => batou_core::normalize_path(&workdir.join(cwd)),
            None => workdir.clone(),
        };
        // Values carrying a secret go to the private file; the rest are written plainly.
        let mut plain = BTreeMap::new();
        let mut secret: BTreeMap<String, Secret<String>> = self.secret_env.clone();
        for (key, value) in &self.env {
            if is_secret(value) {
                secret.insert(key.clone(), Secret::new(value.clone()));
            } else {
                plain.insert(key.clone(), value.clone());
            }
        }
        let mut when = Vec::new();
        for component in self.restart_when.drain(..) {
            let label = component.label();
            when.push((cx.add(Boxed(component)), label));
        }
        let mut definition = Vec::new();
        let mut log_definition = None;
        let relative = format!(".service/{name}");
        let supervisor = match manager {
            Manager::Runit => {
                let service_dir = match &self.service_dir {
                    Some(dir) => dir.clone(),
                    None => host_data(cx, "service_dir")?
                        .unwrap_or_else(|| DEFAULT_SERVICE_DIR.to_string()),
                };
                let service_dir_path = allowed_dir(cx, &service_dir, "service_dir")?;
                let link = service_dir_path.join(&name);
                allowed_dir(cx, &link.to_string_lossy(), "service_dir")?;
                let definition_dir = cx.path(&relative)?;
                for (key, value) in &secret {
                    let v = value.expose();
                    if v.is_empty() || v.ends_with([' ', '\t']) {
                        bail!(
                            "the secret `env` value of `{key}` is empty or ends in white space, which runit's env directory cannot hold"
                        );
                    }
                }
                let env_dir = (!secret.is_empty()).then(|| definition_dir.join("env"));
                let script = runit::run_script(&RunScript {
                    name: &name,
                    argv: &self.argv,
                    cwd: &cwd,
                    env: &plain,
                    env_dir: env_dir.as_deref(),
                    user: self.user.as_deref(),
                });
                if env_dir.is_some() {
                    definition.push(cx.add(EnvDir::new(format!("{relative}/env"), secret)));
                }
                definition.push(cx.add(executable(&format!("{relative}/run"), script)));
                definition.push(cx.add(executable(&format!("{relative}/finish"), runit::FINISH)));
                let log = cx.add(executable(&format!("{relative}/log/run"), runit::LOG_RUN));
                definition.push(log);
                log_definition = Some(log);
                Supervisor::Runit(Runit {
                    definition: definition_dir,
                    service_dir: service_dir_path,
                    link,
                    allowed: cx.allowed_paths(),
                })
            }
            Manager::Systemd => {
                let unit_dir = self.unit_dir.as_deref().unwrap_or(DEFAULT_UNIT_DIR);
                let unit_dir_path = allowed_dir(cx, unit_dir, "unit_dir")?;
                let unit = format!("{name}.service");
                let unit_path = unit_dir_path.join(&unit);
                allowed_dir(cx, &unit_path.to_string_lossy(), "unit_dir")?;
                let env_file = (!secret.is_empty()).then(|| cx.path(format!("{relative}.env")));
                let env_file = env_file.transpose()?;
                if env_file.is_some() {
                    let exposed = secret
                        .iter()
                        .map(|(k, v)| (k.clone(), v.expose().clone()))
                        .collect();
                    let text = systemd::render_env_file(&exposed);
                    definition.push(
                        cx.add(
                            File::new(format!("{relative}.env"))
                                .secret_content(Secret::new(text))
                                .mode(0o600)
                                .create_parents(),
                        ),
                    );
                }
                let text = systemd::render_unit(&Unit {
                    description: &format!("{name} (environment {})", cx.environment()),
                    argv: &self.argv,
                    cwd: &cwd,
                    env: &plain,
                    env_file: env_file.as_deref(),
                    user: self.user.as_deref(),
                });
                definition.push(
                    cx.add(
                        File::new(unit_path.to_string_lossy())
                            .content(text)
                            .mode(0o644),
                    ),
                );
                Supervisor::Systemd(Systemd {
                    unit,
                    unit_file: unit_path,
                })
            }
        };
        self.configured = Some(Configured {
            name,
            workdir,
            supervisor,
            health: self.health.clone().unwrap_or_default(),
            watches,
            definition,
            log_definition,
            when,
        });
        Ok(())
    }

    fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
        let c = self.configured()?;
        if let Supervisor::Runit(r) = &c.supervisor {
            r.allowed.check(&r.link)?;
        }
        let now = c.observe()?;
        Ok(match self.action(cx, c, &now) {
            Some(action) => Verdict::needs_update(action.reason(cx.dry_run())),
            None => Verdict::UpToDate,
        })
    }

    fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
        let c = self.configured()?;
        let now = c.observe()?;
        let reload = c.definition_changed(cx);
        let line = match self.action(cx, c, &now) {
            None => None,
            Some(Action::Start) => Some(c.start(reload)?),
            Some(Action::Restart(_)) => {
                let log_too = c.log_definition.is_some_and(|s| cx.changed(s));
                Some(c.restart(now.pid, reload, log_too)?)
            }
            Some(Action::Enable) => {
                match &c.supervisor {
                    Supervisor::Runit(r) => r.enable()?,
                    Supervisor::Systemd(s) => s.enable(reload)?,
                }
                None
            }
            Some(Action::Stop) => {
                match &c.supervisor {
                    Supervisor::Runit(r) => r.disable()?,
                    Supervisor::Systemd(s) => s.disable(reload)?,
                }
                None
            }
        };
        if let Some(line) = line {
            cx.log(line);
        }
        self.handled = true;
        Ok(())
    }

    fn service(&self) -> Option<&dyn ServiceControl> {
        Some(self)
    }

    /// The service as installed: runit's link into the service directory, systemd's
    /// `.wants` link, either of which appears when the tool enables the service. Its
    /// definition files are its sub-components' own.
    fn owned(&self) -> Vec<batou_core::Owned> {
        let Some(c) = &self.configured else {
            return Vec::new();
        };
        vec![match &c.supervisor {
            Supervisor::Runit(r) => batou_core::Owned::RunitService {
                name: c.name.clone(),
                link: r.link.clone(),
                definition: r.definition.clone(),
            },
            Supervisor::Systemd(s) => batou_core::Owned::SystemdService {
                unit: s.unit.clone(),
                enabled_link: s
                    .unit_file
                    .with_file_name(format!("{}.wants", systemd::WANTED_BY))
                    .join(&s.unit),
                unit_file: s.unit_file.clone(),
            },
        }]
    }
}

/// Stops a runit service a prune removes and takes it from the supervisor: `sv down`, the
/// link out of the service directory, then waits (up to `wait`) for runsvdir to end its
/// runsv, and removes the definition directory with what runsv and svlogd kept in it.
pub(crate) fn remove_runit(link: &Path, definition: &Path, wait: Duration) -> anyhow::Result<()> {
    let service_dir = link
        .parent()
        .context("a service link has a directory")?
        .to_path_buf();
    let r = Runit {
        definition: definition.to_path_buf(),
        allowed: batou_core::AllowedPaths::new([service_dir.clone()]),
        service_dir,
        link: link.to_path_buf(),
    };
    r.disable()?;
    let ok = definition.join("supervise/ok");
    let deadline = std::time::Instant::now() + wait;
    while runit::answers(&ok) {
        if std::time::Instant::now() >= deadline {
            bail!(
                "runsv still supervises `{}` {} s after its link was removed: is runsvdir running on `{}`?",
                definition.display(),
                wait.as_secs(),
                r.service_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    crate::prune::remove_tree(definition)
}

/// Takes a systemd unit a prune removes from systemd: `disable --now`, the unit file, a
/// `daemon-reload`.
pub(crate) fn remove_systemd(unit: &str, unit_file: &Path) -> anyhow::Result<()> {
    let s = Systemd {
        unit: unit.to_string(),
        unit_file: unit_file.to_path_buf(),
    };
    s.disable(false)?;
    match std::fs::remove_file(unit_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove `{}`", unit_file.display()));
        }
        _ => {}
    }
    s.reload()
}

impl ServiceControl for Service {
    /// runit's `restarts` are the exits `finish` counted since the tool last started,
    /// restarted or stopped the service; systemd's are its `NRestarts`.
    fn status(&self, _cx: &mut Deploy) -> anyhow::Result<ServiceStatus> {
        let c = self.configured()?;
        let now = c.observe()?;
        Ok(ServiceStatus {
            manager: c.manager().as_str().to_string(),
            running: now.running,
            pid: now.pid,
            uptime_seconds: now.since,
            restarts: now.exits,
            detail: now.detail,
        })
    }

    fn start(&self, cx: &mut Deploy) -> anyhow::Result<bool> {
        let c = self.configured()?;
        let now = c.observe()?;
        if now.running && now.want_up {
            return Ok(false);
        }
        c.require_deployed(cx, &now)?;
        let line = match &c.supervisor {
            Supervisor::Runit(r) => {
                r.start()?;
                c.prove(Baseline::default())?
            }
            Supervisor::Systemd(s) => {
                s.start()?;
                c.prove(Baseline {
                    old_pid: None,
                    exits: s.observe()?.exits.unwrap_or(0),
                })?
            }
        };
        cx.log(line);
        Ok(true)
    }

    fn stop(&self, cx: &mut Deploy) -> anyhow::Result<bool> {
        let c = self.configured()?;
        let now = c.observe()?;
        if !now.running {
            return Ok(false);
        }
        c.require_deployed(cx, &now)?;
        match &c.supervisor {
            Supervisor::Runit(r) => r.stop()?,
            Supervisor::Systemd(s) => s.stop()?,
        }
        Ok(true)
    }

    fn restart(&self, cx: &mut Deploy) -> anyhow::Result<()> {
        let c = self.configured()?;
        let now = c.observe()?;
        c.require_deployed(cx, &now)?;
        let line = if now.running {
            c.restart(now.pid, false, false)?
        } else {
            c.start(false)?
        };
        cx.log(line);
        Ok(())
    }
}

/// A script of the definition: mode 0755, parents created.
fn executable(relative: &str, text: impl Into<String>) -> File {
    File::new(relative)
        .content(text)
        .mode(0o755)
        .create_parents()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use batou_core::{Component, Configure, ServiceResult, ServiceVerb, control_services};
    use batou_test_support::{Runsvdir, procs};
    use serde::Deserialize;

    use super::*;
    use crate::test_util::{config_error, mode, pairs, project, project_with};

    use batou_test_support::free_port;

    /// An environment whose host runs `roots`, with `service_dir` allowed and in host data,
    /// then `components`.
    fn environment(service_dir: &Path, roots: &[&str], components: &str) -> String {
        let sd = service_dir.display();
        let roots: Vec<String> = roots.iter().map(|r| format!("\"{r}\"")).collect();
        format!(
            "[environment]\nallow_paths = [\"{sd}\"]\n\n[hosts.localhost]\ndata = {{ service_dir = \"{sd}\" }}\ncomponents = [{}]\n\n{components}",
            roots.join(", ")
        )
    }

    fn http_service(port: u16, extra: &str) -> String {
        format!(
            r#"[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
health = {{ http = "http://127.0.0.1:{port}/", within = "10s", stable = "500ms" }}
{extra}
"#
        )
    }

    fn pid(project: &batou_core::testing::TestProject, root: &str, name: &str) -> Option<u32> {
        let dir = project
            .workdir(root)
            .join(format!(".service/{name}/supervise"));
        if std::fs::read_to_string(dir.join("stat")).ok()?.trim() != "run" {
            return None;
        }
        std::fs::read_to_string(dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    #[test]
    fn a_dry_run_on_a_fresh_host_predicts_the_definition_and_a_start() {
        let dir = tempfile::tempdir().unwrap();
        let project = project(&environment(dir.path(), &["web"], &http_service(1, "")));
        let dry = project.dry_run("dev");
        assert_eq!(
            dry.reasons(),
            pairs(&[
                ("web > Workdir", "missing"),
                ("web > File('.service/web/run')", "missing"),
                ("web > File('.service/web/finish')", "missing"),
                ("web > File('.service/web/log/run')", "missing"),
                ("web", "would start"),
            ])
        );
        assert!(!project.base_dir().exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn configure_refuses_what_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let err = |components: &str, roots: &[&str]| {
            config_error(&project(&environment(dir.path(), roots, components)))
        };
        let web = |attrs: &str| format!("[components.web]\ntype = \"service\"\n{attrs}\n");
        for (attrs, want) in [
            (
                "argv = []",
                "`argv` is empty: a service needs a program to run",
            ),
            (
                "argv = [\"true\"]\nname = \"../x\"",
                "service name `../x` is not a file name",
            ),
            (
                "argv = [\"true\"]\nenv = { \"1A\" = \"x\" }",
                "`env` key `1A` is not a variable name",
            ),
            (
                "argv = [\"true\"]\nuser = \"a b\"",
                "`user` `a b` is not a user name",
            ),
            (
                "argv = [\"true\"]\nrestart_on = [\"web\"]",
                "`web` cannot watch itself for changes",
            ),
            (
                "argv = [\"true\"]\nservice_dir = \"/etc/service\"",
                "`service_dir` `/etc/service` is not a path this deployment may change",
            ),
            (
                "argv = [\"true\"]\nmanager = \"systemd\"",
                "`unit_dir` `/etc/systemd/system` is not a path this deployment may change",
            ),
        ] {
            let e = err(&web(attrs), &["web"]);
            assert!(e.contains(want), "{attrs}: {e}");
        }
        let hosted = format!(
            "[environment]\n[hosts.localhost]\ndata = {{ service_manager = \"upstart\" }}\ncomponents = [\"web\"]\n\n{}",
            web("argv = [\"true\"]")
        );
        let e = config_error(&project(&hosted));
        assert!(
            e.contains("host data `service_manager` of host `localhost` is `upstart`: expected `runit` or `systemd`"),
            "{e}"
        );
    }

    #[test]
    fn a_secret_never_reaches_the_command_line() {
        batou_core::redact::register("svc-token", "svc-argv-secret-5521");
        let dir = tempfile::tempdir().unwrap();
        let components = "[components.web]\ntype = \"service\"\nargv = [\"app\", \"--token\", \"svc-argv-secret-5521\"]\n";
        let e = config_error(&project(&environment(dir.path(), &["web"], components)));
        assert!(
            e.contains("`argv` element 3 carries a secret, which would show on the service's command line: pass it in `env`"),
            "{e}"
        );
    }

    #[test]
    fn a_systemd_host_renders_a_unit_and_a_private_env_file() {
        batou_core::redact::register("svc-systemd", "svc-systemd-secret-7730");
        let dir = tempfile::tempdir().unwrap();
        let units = dir.path().join("units");
        let text = format!(
            "[environment]\nallow_paths = [\"{}\"]\n\n[hosts.localhost]\ndata = {{ service_manager = \"systemd\" }}\ncomponents = [\"web\"]\n\n[components.web]\ntype = \"service\"\nargv = [\"/usr/bin/python3\", \"-m\", \"http.server\"]\nunit_dir = \"{}\"\nenv = {{ TOKEN = \"svc-systemd-secret-7730\", PLAIN = \"1\" }}\n",
            units.display(),
            units.display()
        );
        let project = project(&text);
        let dry = project.run(
            "dev",
            batou_core::ConvergeOptions {
                dry_run: true,
                ..Default::default()
            },
        );
        let reasons = dry.reasons();
        assert_eq!(
            reasons[1..3],
            pairs(&[
                ("web > File('.service/web.env')", "missing"),
                (
                    &format!("web > File('{}/web.service')", units.display()),
                    "missing"
                ),
            ])[..]
        );
        // systemd does not run here: asking it is the service's failure, naming the command.
        let failure = dry.failure().expect("systemctl cannot answer here");
        assert!(
            failure.contains("systemctl --no-pager show web.service"),
            "{failure}"
        );
        let shown = format!("{:?}", dry.events);
        assert!(!shown.contains("svc-systemd-secret-7730"), "{shown}");
        assert!(shown.contains("Environment=\\\"PLAIN=1\\\""), "{shown}");
    }

    #[test]
    fn service_control_reports_starts_stops_and_restarts() {
        let runsvdir = Runsvdir::start();
        let port = free_port();
        let project = project(&environment(
            &runsvdir.service_dir(),
            &["web"],
            &http_service(port, ""),
        ));
        let run = project.converge("dev");
        assert_eq!(run.reasons().last().unwrap().1, "started");
        let first = pid(&project, "web", "web").unwrap();
        project.converge("dev").assert_unchanged();

        let mut plan = project.configure("dev").unwrap();
        let mut verb = |verb: ServiceVerb| {
            let mut events = Vec::new();
            let mut sink = |e: batou_core::Event| events.push(e);
            let mut out = control_services(&mut plan, 0, verb, &mut sink);
            assert_eq!(out.len(), 1, "{out:?}");
            out.remove(0).result
        };
        let ServiceResult::Status { status } = verb(ServiceVerb::Status) else {
            panic!("no status")
        };
        assert_eq!(
            (
                status.manager.as_str(),
                status.running,
                status.pid,
                status.restarts
            ),
            ("runit", true, Some(first), Some(0))
        );
        assert_eq!(verb(ServiceVerb::Start), ServiceResult::Unchanged);
        assert_eq!(
            verb(ServiceVerb::Stop),
            ServiceResult::Changed {
                action: "stopped".into()
            }
        );
        assert!(!procs::alive(first));
        let ServiceResult::Status { status } = verb(ServiceVerb::Status) else {
            panic!("no status")
        };
        assert_eq!((status.running, status.pid), (false, None));
        assert_eq!(status.detail.as_deref(), Some("down"));
        assert_eq!(verb(ServiceVerb::Stop), ServiceResult::Unchanged);
        assert_eq!(
            verb(ServiceVerb::Start),
            ServiceResult::Changed {
                action: "started".into()
            }
        );
        let second = pid(&project, "web", "web").unwrap();
        assert_ne!(second, first);
        assert_eq!(
            verb(ServiceVerb::Restart),
            ServiceResult::Changed {
                action: "restarted".into()
            }
        );
        let third = pid(&project, "web", "web").unwrap();
        assert_ne!(third, second);

        // The supervisor restarting it on its own is what `restarts` counts.
        procs::kill(third, procs::Signal::SIGKILL);
        procs::wait_until("runsv to restart web", Duration::from_secs(10), || {
            pid(&project, "web", "web").is_some_and(|p| p != third)
        });
        let ServiceResult::Status { status } = verb(ServiceVerb::Status) else {
            panic!("no status")
        };
        assert_eq!(status.restarts, Some(1));
        project.converge("dev").assert_unchanged();

        // A service that is stopped by the verb is started by the next deploy.
        let mut plan = project.configure("dev").unwrap();
        let mut sink = |_: batou_core::Event| {};
        control_services(&mut plan, 0, ServiceVerb::Stop, &mut sink);
        let run = project.converge("dev");
        assert_eq!(run.reasons(), pairs(&[("web", "started")]));
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn service_control_refuses_a_service_that_is_not_deployed() {
        let dir = tempfile::tempdir().unwrap();
        let project = project(&environment(dir.path(), &["web"], &http_service(1, "")));
        let mut plan = project.configure("dev").unwrap();
        let mut sink = |_: batou_core::Event| {};
        let out = control_services(&mut plan, 0, ServiceVerb::Start, &mut sink);
        let ServiceResult::Failed { error } = &out[0].result else {
            panic!("{out:?}")
        };
        assert_eq!(
            error[0],
            "service `web` is not deployed on host `localhost` (not enabled): deploy it first"
        );
    }

    /// A project component that runs its own service, restarted when its configuration file
    /// (a sub-component of the service) changed.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct App {
        port: u16,
        greeting: String,
    }

    impl Component for App {
        fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
            let service_dir = cx.host().data["service_dir"].as_str().unwrap().to_string();
            cx.add(
                Service::new(["python3", "-m", "http.server", &self.port.to_string()])
                    .name("app")
                    .cwd("htdocs")
                    .service_dir(service_dir)
                    .secret_env("APP_TOKEN", Secret::new("svc-env-secret-4410".into()))
                    .restart_when(
                        File::new("htdocs/index.html")
                            .content(self.greeting.clone())
                            .create_parents(),
                    )
                    .health(
                        Health::http(&format!("http://127.0.0.1:{}/", self.port))
                            .unwrap()
                            .within(Duration::from_secs(10))
                            .stable(Duration::from_millis(500)),
                    ),
            );
            Ok(())
        }
    }

    #[test]
    fn a_rust_component_restarts_its_service_when_its_sub_component_changed() {
        batou_core::redact::register("svc-env", "svc-env-secret-4410");
        let runsvdir = Runsvdir::start();
        let port = free_port();
        let env = |greeting: &str| {
            environment(
                &runsvdir.service_dir(),
                &["shop"],
                &format!(
                    "[components.shop]\ntype = \"app\"\nport = {port}\ngreeting = \"{greeting}\"\n"
                ),
            )
        };
        let project = project_with::<App>("app", &env("hello"));
        let run = project.converge("dev");
        assert_eq!(
            run.reasons(),
            pairs(&[
                ("shop > Workdir", "missing"),
                (
                    "shop > Service('app') > File('htdocs/index.html')",
                    "missing"
                ),
                (
                    "shop > Service('app') > EnvDir('.service/app/env')",
                    "secret variables `APP_TOKEN` differ"
                ),
                (
                    "shop > Service('app') > File('.service/app/run')",
                    "missing"
                ),
                (
                    "shop > Service('app') > File('.service/app/finish')",
                    "missing"
                ),
                (
                    "shop > Service('app') > File('.service/app/log/run')",
                    "missing"
                ),
                ("shop > Service('app')", "started"),
            ])
        );
        // The secret is in a private file, not in the run script, and reaches the process.
        let definition = project.workdir("shop").join(".service/app");
        let token = definition.join("env/APP_TOKEN");
        assert_eq!(
            std::fs::read_to_string(&token).unwrap(),
            "svc-env-secret-4410"
        );
        assert_eq!(mode(&token), 0o600);
        let script = std::fs::read_to_string(definition.join("run")).unwrap();
        assert!(!script.contains("svc-env-secret-4410"), "{script}");
        let first = pid(&project, "shop", "app").unwrap();
        let environ = std::fs::read(format!("/proc/{first}/environ")).unwrap();
        assert!(
            environ
                .split(|b| *b == 0)
                .any(|v| v == b"APP_TOKEN=svc-env-secret-4410"),
            "the service did not get its secret variable"
        );
        let cmdline = std::fs::read(format!("/proc/{first}/cmdline")).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains("svc-env-secret"));
        project.converge("dev").assert_unchanged();
        assert_eq!(pid(&project, "shop", "app"), Some(first));

        project.env("dev", &env("bye"));
        let run = project.converge("dev");
        assert_eq!(
            run.reasons(),
            pairs(&[
                (
                    "shop > Service('app') > File('htdocs/index.html')",
                    "content differs"
                ),
                (
                    "shop > Service('app')",
                    "restarted (File('htdocs/index.html') changed)"
                ),
            ])
        );
        assert_ne!(pid(&project, "shop", "app"), Some(first));
        project.converge("dev").assert_unchanged();
    }
}
