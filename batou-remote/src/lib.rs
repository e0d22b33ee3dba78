//! `batou-remote`: deploy an environment to every host over SSH.
//!
//! The binary is thin: parse arguments into [`Settings`], plan the environment locally (every
//! configuration error ends the run before the first connection), pick the agent binary
//! (this binary, or the project's own when the deployment repository is a Cargo package),
//! run the plan with [`schedule::deploy`], render events, pick the exit code.

pub mod agent;
pub mod agent_files;
pub mod deployed;
mod facts;
pub mod fleet;
pub mod operations;
pub mod release_verbs;
pub mod schedule;
pub mod ship;
pub mod ssh;
pub mod verbs;

/// The secrets commands, shared with `batou-local` (`batou-local/src/secrets.rs`).
pub use batou_runtime::secrets;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use batou_core::protocol::{Controller, RemotePlan};
use batou_core::rollout::{RolloutSpec, Size};
use batou_core::{ConfigError, EventSink};
use batou_runtime::output_args::{Output, OutputArgs};
use batou_runtime::rollout::RolloutPlan;
use batou_runtime::verb::{ReleaseCommand, ServiceCommand, Verb};
use batou_runtime::{Exit, ExitError};
use clap::{Parser, Subcommand};

use crate::agent::AgentBinary;
use crate::schedule::DeployOptions;
use crate::ssh::{SshOptions, SshSettings};

/// Deploy an environment to every host over SSH.
///
/// `batou-remote ENVIRONMENT` and `batou-remote deploy ENVIRONMENT` are the same; an
/// environment named like a command (`deploy`, `secrets`, `completions`, `man`, `agent`,
/// `plan`, `help`, ...) needs `deploy`.
///
/// Verbs come after the environment, so that they never take an environment's name:
/// `batou-remote ENVIRONMENT service status|start|stop|restart [COMPONENT]...` controls the
/// services of the environment's root components on every host (or those of `--hosts`), in
/// parallel (`batou-remote service` deploys the environment `service`; `batou-remote
/// service service status` shows its services).
#[derive(Debug, Parser)]
#[command(
    name = "batou-remote",
    version,
    about,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true,
    after_help = EXAMPLES
)]
struct Cli {
    #[command(flatten)]
    args: Args,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Deploy an environment (what `batou-remote ENVIRONMENT` does).
    Deploy(Box<Args>),
    /// Create, edit, show and share an environment's secrets (see `secrets --help`).
    #[command(disable_help_flag = true)]
    Secrets {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    #[command(flatten)]
    Tooling(batou_runtime::completions::Tooling),
    #[command(flatten)]
    Role(batou_runtime::Role),
}

/// Every verb and command with an example, after the options in `--help` and `help`.
const EXAMPLES: &str = "\
Examples:
  batou-remote prod                                    deploy every host of `prod`
  batou-remote prod --hosts 'web,!web2'                group `web` without host `web2`
  batou-remote prod --hosts '!db1'                     every host but `db1`
  batou-remote prod --dry-run --detailed-exitcode      exit 2 when something would change
  batou-remote prod check                              validate offline: no host, no identity
  batou-remote prod graph --format dot | dot -Tsvg     the plan as a picture
  batou-remote prod service restart app --hosts web    restart `app`'s services on `web`
  batou-remote prod releases                           each host's releases
  batou-remote prod rollback app                       switch `app` back one release
  batou-remote prod status                             each host: lock, last deploy, drift
  batou-remote prod history --limit 5                  the last deploys, from the journals
  batou-remote prod exec --timeout 30s -- uptime       run a program on every host
  batou-remote prod lock acquire -m \"release freeze\"  freeze deploys (`lock release`)
  batou-remote prod --prune                            remove what the environment dropped
  batou-remote deploy secrets                          an environment named like a command
  batou-remote secrets edit prod                       edit the environment's secrets
  batou-remote completions bash                        shell completions (also `man DIR`)";

/// The options of a deploy.
#[derive(Debug, clap::Args)]
struct Args {
    /// The environment: `environments/<ENVIRONMENT>.toml`.
    #[arg(required = true)]
    environment: Option<String>,
    #[arg(value_name = "VERB", help = batou_runtime::verb::VERB_HELP)]
    verb: Vec<String>,
    /// Report what would change without changing anything on any host.
    #[arg(long)]
    dry_run: bool,
    /// With `--dry-run`: exit 2 when some root component would change, 0 when none would
    /// (a wrong command line then exits 64, not 2).
    #[arg(long, requires = "dry_run")]
    detailed_exitcode: bool,
    /// Print one JSON event per line on stdout instead of human output on stderr.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    output: OutputArgs,
    /// Hosts deployed at the same time (default: the environment's `jobs`).
    #[arg(long)]
    jobs: Option<usize>,
    /// After a failure, go on with everything that does not depend on it.
    #[arg(long)]
    keep_going: bool,
    /// Remove what root components (and hosts) that the environment no longer lists created
    /// on their hosts (with `--dry-run`: show what would be removed).
    #[arg(long)]
    prune: bool,
    /// Roll the environment's rolled hosts in batches of these sizes: counts or percentages,
    /// comma-separated, the last one repeating (`--batch 1,25%,100%`). Overrides
    /// `rollout.batch`; without `[rollout]`, rolls every host with steps.
    #[arg(long, value_delimiter = ',', value_name = "SIZE", value_parser = parse_batch)]
    batch: Option<Vec<Size>>,
    /// How many rolled hosts may fail before no new batch starts: a count or a percentage.
    /// Overrides `rollout.max_failed` (default 0).
    #[arg(long, value_name = "SIZE", value_parser = parse_max_failed)]
    max_failed: Option<Size>,
    /// Deploy only these hosts, or run a verb only on them: host and group names,
    /// comma-separated; `!NAME` leaves a host or group out (`--hosts web,!web2`; `--hosts
    /// '!db1'` alone means every host but `db1`).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "HOSTS",
        allow_hyphen_values = true
    )]
    hosts: Option<Vec<String>>,
    /// With the `rollback` verb: the release to switch to (default: the one before the
    /// current one).
    #[arg(long, value_name = "ID")]
    to: Option<String>,
    /// With the `graph` verb: text for people, or Graphviz DOT.
    #[arg(long, value_enum, value_name = "FORMAT")]
    format: Option<batou_runtime::graph::Format>,
    /// With the `check` and `graph` verbs: hosts' platform facts, a JSON object of host
    /// name to facts, for environments whose configure reads them.
    #[arg(long, value_name = "FILE")]
    facts: Option<PathBuf>,
    /// Accept and record the keys of hosts not yet in known_hosts (changed keys are refused).
    #[arg(long)]
    accept_new_host_keys: bool,
    /// Use this ssh_config file instead of `~/.ssh/config`.
    #[arg(long, value_name = "FILE")]
    ssh_config: Option<PathBuf>,
    /// The deployment repository (default: the nearest directory above the current one that
    /// has `environments/`).
    #[arg(long, short = 'C', value_name = "DIR")]
    project: Option<PathBuf>,
    /// Seconds to wait for an SSH connection.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    connect_timeout: f64,
    /// Seconds between SSH keepalives; three missed answers end the connection.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    keepalive: f64,
    /// Longest silence accepted from an agent before its host's state counts as unknown.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    agent_timeout: f64,
    /// Decrypt the environment's secrets with this age identity or SSH private key
    /// (default: `$BATOU_IDENTITY`, `~/.config/batou/identity.txt`, `~/.ssh/id_ed25519`,
    /// `~/.ssh/id_rsa`). See also `batou-remote secrets --help`.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    #[command(flatten)]
    operation: batou_runtime::verb::OperationArgs,
}

/// What a run was asked to do: the command line (and, without `-C`, the current directory),
/// resolved once, before anything is planned or contacted. What the scheduler and ssh need is derived
/// from it once the plan is known ([`Settings::deploy_options`]); nothing is filled in later.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The environment to deploy: `environments/<name>.toml`.
    pub environment: String,
    /// The deployment repository, absolute.
    pub project: PathBuf,
    /// `--json`: one event per line on stdout instead of human output on stderr.
    pub json: bool,
    /// How human output looks: `--color`, `-q`, `-v`, `--no-diff`, `--diff-lines`.
    pub output: Output,
    /// `--dry-run`: report what would change, change nothing.
    pub dry_run: bool,
    /// `--detailed-exitcode`: a dry run that predicts changes exits 2.
    pub detailed_exitcode: bool,
    /// `--keep-going`: after a failure, go on with whatever does not depend on it.
    pub keep_going: bool,
    /// `--prune`: remove what orphaned root components and removed hosts created.
    pub prune: bool,
    /// `--jobs`, which overrides the environment's `jobs`.
    pub jobs: Option<usize>,
    /// The hosts to deploy (or run a verb on) when not all of them: `--hosts` resolved
    /// against the plan, which `run` does before anything uses it (`None` until then).
    pub hosts: Option<BTreeSet<String>>,
    /// `--hosts` as given: host and group names and `!` exclusions, in order.
    pub select: Option<Vec<String>>,
    /// `--batch`, which overrides `rollout.batch`.
    pub batch: Option<Vec<Size>>,
    /// `--max-failed`, which overrides `rollout.max_failed`.
    pub max_failed: Option<Size>,
    /// `--identity`, which overrides `$BATOU_IDENTITY` and the default identity files.
    pub identity: Option<PathBuf>,
    /// Longest silence accepted from an agent (it sends heartbeats while working).
    pub agent_timeout: Duration,
    /// How to connect to hosts.
    pub ssh: SshSettings,
    /// A `service` verb to run instead of a deploy.
    pub service: Option<ServiceCommand>,
    /// A `releases` or `rollback` verb to run instead of a deploy.
    pub release: Option<ReleaseCommand>,
    /// `status`, `history`, `exec` or `lock` instead of a deploy.
    pub operation: Option<batou_runtime::verb::Operation>,
    /// The `check` or `graph` verb instead of a deploy: nothing is contacted.
    pub offline: Option<OfflineVerb>,
}

/// An offline verb with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineVerb {
    /// `graph` (with its format) rather than `check`.
    pub graph: Option<batou_runtime::graph::Format>,
    /// `--facts FILE`.
    pub facts: Option<PathBuf>,
}

impl Settings {
    /// Hosts deploying at the same time: `--jobs`, else the environment's `jobs`; at least
    /// one.
    pub fn jobs(&self, plan: &RemotePlan) -> usize {
        self.jobs.unwrap_or(plan.jobs).max(1)
    }

    /// What the scheduler and ssh need to deploy `plan`, with the run's control directory
    /// (see [`ssh::control_dir`]) and fresh run state: no master connection yet, no
    /// interrupt.
    pub fn deploy_options(&self, plan: &RemotePlan, control_dir: &Path) -> DeployOptions {
        DeployOptions {
            dry_run: self.dry_run,
            keep_going: self.keep_going,
            jobs: self.jobs(plan),
            agent_timeout: self.agent_timeout,
            ssh: SshOptions {
                settings: self.ssh.clone(),
                control_dir: control_dir.to_path_buf(),
                masters: ssh::Masters::default(),
            },
            hosts: self.hosts.clone(),
            prune: self.prune,
            interrupt: schedule::Interrupt::default(),
            rollout: None,
        }
    }

    /// The environment's `[rollout]` with `--batch` and `--max-failed` over it, resolved
    /// against `plan` for the hosts of this run; `None` when there is no rollout. Errors are
    /// configuration errors, found before any host is contacted.
    pub fn rollout(&self, plan: &RemotePlan) -> Result<Option<RolloutPlan>, ConfigError> {
        let mut spec = match (&plan.rollout, &self.batch, &self.max_failed) {
            (None, None, None) => return Ok(None),
            (Some(spec), _, _) => spec.clone(),
            (None, _, _) => RolloutSpec::default(),
        };
        if let Some(batch) = &self.batch {
            spec.batch = batch.clone();
        }
        if let Some(max) = self.max_failed {
            spec.max_failed = max;
        }
        let hosts: Vec<String> = plan
            .hosts
            .iter()
            .filter(|h| self.hosts.as_ref().is_none_or(|s| s.contains(&h.name)))
            .filter(|h| plan.host_jobs.contains_key(&h.name))
            .map(|h| h.name.clone())
            .collect();
        RolloutPlan::resolve(&spec, &plan.steps, &hosts).map(Some)
    }
}

/// Entry point of the stock binary, which is also the agent (and the planner) for
/// deployment repositories without component types of their own.
pub fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| batou_runtime::exit_usage(e));
    let args = match cli.command {
        Some(Command::Role(role)) => return role.serve(|_| {}),
        Some(Command::Secrets { args }) => return batou_runtime::secrets_main(args),
        Some(Command::Tooling(tooling)) => {
            use clap::CommandFactory;
            return tooling.run(Cli::command());
        }
        Some(Command::Deploy(args)) => *args,
        None => cli.args,
    };
    let json = args.json;
    let settings = match settings(args) {
        Ok(settings) => Ok(settings),
        // A wrong verb is a usage error, worded and with the exit code of clap's own.
        Err(err) => match err.downcast::<clap::Error>() {
            Ok(usage) => batou_runtime::exit_usage(usage),
            Err(err) => Err(err),
        },
    };
    match settings.and_then(|s| run(&s)) {
        Ok(exit) => exit.into(),
        Err(err) => {
            let exit = Exit::of_error(&err);
            batou_runtime::print_error(&err, json);
            exit.into()
        }
    }
}

fn settings(args: Args) -> anyhow::Result<Settings> {
    let verb = batou_runtime::verb::parse_verb("batou-remote", &args.verb)?;
    let offline = match &verb {
        Some(Verb::Check) => Some(OfflineVerb {
            graph: None,
            facts: args.facts.clone(),
        }),
        Some(Verb::Graph) => Some(OfflineVerb {
            graph: Some(args.format.unwrap_or_default()),
            facts: args.facts.clone(),
        }),
        _ => None,
    };
    let conflict = |message: String| -> anyhow::Error {
        use clap::CommandFactory;
        Cli::command()
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .into()
    };
    if args.format.is_some() && offline.as_ref().is_none_or(|o| o.graph.is_none()) {
        return Err(conflict(
            "`--format` applies to the `graph` verb only".into(),
        ));
    }
    if args.facts.is_some() && offline.is_none() {
        return Err(conflict(
            "`--facts` applies to the `check` and `graph` verbs only".into(),
        ));
    }
    if offline.is_some() {
        for (given, flag) in [
            (args.dry_run, "--dry-run"),
            (args.keep_going, "--keep-going"),
            (args.hosts.is_some(), "--hosts"),
        ] {
            if given {
                return Err(conflict(format!(
                    "`{flag}` does not apply to `check` and `graph`, which contact no host and take every one"
                )));
            }
        }
    }
    let (service, release, operation) = match verb {
        None | Some(Verb::Check) | Some(Verb::Graph) => (None, None, None),
        Some(Verb::Service(s)) => (Some(s), None, None),
        Some(Verb::Releases(r)) => (None, Some(r), None),
        Some(Verb::Operation(o)) => (None, None, Some(o)),
    };
    // The verbs' options belong to their verb (and are refused without it).
    let operation = match operation {
        Some(o) => Some(o.with(&args.operation).map_err(conflict)?),
        None => {
            batou_runtime::verb::Operation::Status
                .with(&args.operation)
                .map_err(conflict)?;
            None
        }
    };
    if args.to.is_some() && !release.as_ref().is_some_and(|r| r.rollback) {
        use clap::CommandFactory;
        return Err(Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "`--to` applies to the `rollback` verb only",
            )
            .into());
    }
    let release = release.map(|r| ReleaseCommand {
        to: args.to.clone(),
        ..r
    });
    if service.is_some() || release.is_some() || operation.is_some() {
        for (given, flag) in [
            (args.dry_run, "--dry-run"),
            (args.keep_going, "--keep-going"),
            (args.prune, "--prune"),
            (args.batch.is_some(), "--batch"),
            (args.max_failed.is_some(), "--max-failed"),
        ] {
            if given {
                use clap::CommandFactory;
                return Err(Cli::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        format!(
                            "`{flag}` does not apply to the `{}` verbs",
                            if service.is_some() {
                                "service"
                            } else if release.is_some() {
                                "releases` and `rollback"
                            } else {
                                "status`, `history`, `exec` and `lock"
                            }
                        ),
                    )
                    .into());
            }
        }
    }
    let project = match args.project {
        Some(dir) => std::path::absolute(dir)?,
        None => batou_runtime::find_project(&std::env::current_dir()?)?,
    };
    let seconds = |s: f64, name: &str| {
        if s.is_finite() && s > 0.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(ConfigError::new(format!(
                "`--{name}` must be a positive number of seconds"
            )))
        }
    };
    Ok(Settings {
        environment: args
            .environment
            .expect("clap requires the environment of a deploy"),
        project,
        json: args.json,
        output: args.output.resolve(),
        dry_run: args.dry_run,
        detailed_exitcode: args.detailed_exitcode,
        keep_going: args.keep_going,
        prune: args.prune,
        jobs: args.jobs,
        hosts: None,
        select: args.hosts,
        batch: args.batch,
        max_failed: args.max_failed,
        identity: args.identity,
        agent_timeout: seconds(args.agent_timeout, "agent-timeout")?,
        ssh: SshSettings {
            accept_new_host_keys: args.accept_new_host_keys,
            config_file: args.ssh_config,
            // ssh takes whole seconds, and 0 would turn its limits off: round up.
            connect_timeout: whole_seconds(seconds(args.connect_timeout, "connect-timeout")?),
            keepalive: whole_seconds(seconds(args.keepalive, "keepalive")?),
        },
        service,
        release,
        operation,
        offline,
    })
}

/// One size of `--batch`: a count of at least 1 or a percentage.
fn parse_batch(text: &str) -> Result<Size, String> {
    Size::parse(text, false)
}

/// `--max-failed`: a count or a percentage, 0 allowed.
fn parse_max_failed(text: &str) -> Result<Size, String> {
    Size::parse(text, true)
}

/// `d` rounded up to whole seconds (at least one).
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// Plans locally, then deploys; returns the exit status of a completed run.
///
/// Once the plan is built, this takes SIGINT and SIGTERM over for the rest of the process
/// (see `watch_signals`): the first stops the run in order, the second at once.
pub fn run(settings: &Settings) -> anyhow::Result<Exit> {
    if let Some(verb) = &settings.offline {
        return offline(settings, verb);
    }
    let (mut plan, agent_path) = plan(settings)?;
    for line in batou_runtime::generated_lines(&plan.environment, &plan.generated, settings.dry_run)
    {
        eprintln!("{line}");
    }
    // From here on `--hosts` holds host names only: groups and exclusions are resolved.
    let settings = &Settings {
        hosts: check_hosts(&plan, settings)?,
        ..settings.clone()
    };
    let rollout = if settings.service.is_none() && settings.release.is_none() {
        settings.rollout(&plan)?
    } else {
        None
    };
    // Which hosts and services a verb acts on is checked before any connection, too.
    let targets = match &settings.service {
        Some(command) => Some(verbs::targets(&plan, settings.hosts.as_ref(), command)?),
        None => None,
    };
    let release_targets = match &settings.release {
        Some(command) => Some(release_verbs::targets(
            &plan,
            settings.hosts.as_ref(),
            command,
        )?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // From here on a signal no longer kills the process: the first one stops the run in
    // order, the second one at once (see `watch_signals`).
    let signals = {
        let _enter = runtime.enter();
        Signals::new().context("cannot handle SIGINT and SIGTERM")?
    };
    let control_dir =
        ssh::control_dir().context("cannot create a directory for SSH control sockets")?;
    let options = DeployOptions {
        rollout,
        ..settings.deploy_options(&plan, control_dir.path())
    };
    runtime.spawn(watch_signals(
        signals,
        options.interrupt.clone(),
        options.ssh.masters.clone(),
        options.ssh.control_dir.clone(),
    ));
    let agent = Arc::new(AgentBinary::new(&agent_path, &agent_files::unpack()?)?);
    let controller = controller(&settings.project);
    let mut sink: Box<dyn EventSink + Send> = settings.output.sink(settings.json);
    let fleet = fleet::Fleet {
        plan: &plan,
        agent: Arc::clone(&agent),
        controller: controller.clone(),
        options: &options,
    };
    let verb = if let (Some(command), Some(targets)) = (&settings.service, &targets) {
        Some(runtime.block_on(verbs::control(&fleet, targets, command, sink.as_mut())))
    } else if let Some(operation) = &settings.operation {
        let targets = operations::targets(&plan, settings.hosts.as_ref());
        Some(runtime.block_on(operations::run(&fleet, &targets, operation, sink.as_mut())))
    } else if let (Some(command), Some(targets)) = (&settings.release, &release_targets) {
        Some(runtime.block_on(release_verbs::control(
            &fleet,
            targets,
            command,
            sink.as_mut(),
        )))
    } else {
        None
    };
    if let Some(report) = verb {
        runtime.shutdown_timeout(Duration::from_secs(1));
        options.ssh.masters.terminate_all();
        drop(control_dir);
        return Ok(report.exit);
    }
    let json = settings.json;
    let mut warn = |warning: String| {
        if json {
            let event = batou_core::output::warning_event(warning);
            batou_core::output::write_json(&mut std::io::stdout(), event);
        } else {
            eprintln!("warning: {}", batou_core::redact::mask(&warning));
        }
    };
    // Reading the journals of hosts outside `--hosts` stops at the first signal too.
    let checked = runtime.block_on(async {
        tokio::select! {
            checked = schedule::check_excluded_dependencies(&plan, &options, &mut warn) => checked,
            () = options.interrupt.raised() => Err(ExitError {
                exit: Exit::Interrupted,
                error: ConfigError::new(
                    "interrupted while reading the journals of the hosts outside `--hosts`",
                )
                .hint("nothing was deployed"),
            }
            .into()),
        }
    });
    if let Err(err) = checked {
        runtime.shutdown_timeout(Duration::from_secs(1));
        options.ssh.masters.terminate_all();
        return Err(err);
    }
    // Hosts the environment no longer lists: reported, and with `--prune` (and no `--hosts`,
    // which names hosts of the environment) deployed with no root components, so that their
    // agents prune everything they recorded.
    let removed = deployed::removed_hosts(&settings.project, &plan)?;
    let prune_removed = settings.prune && settings.hosts.is_none();
    for (host, _) in &removed {
        sink.event(batou_core::Event::HostOrphaned {
            host: host.clone(),
            prune: prune_removed,
        });
    }
    let removed_names: Vec<String> = if prune_removed {
        deployed::add_to_plan(&mut plan, &removed);
        removed.iter().map(|(name, _)| name.clone()).collect()
    } else {
        Vec::new()
    };
    let report = runtime.block_on(schedule::deploy(
        &plan,
        agent,
        controller,
        &options,
        sink.as_mut(),
    ));
    // Sessions are closed; do not wait for stray tasks, and end any master left over.
    runtime.shutdown_timeout(Duration::from_secs(1));
    options.ssh.masters.terminate_all();
    drop(control_dir);
    // The deploy is done: a record that cannot be written is worth a warning, not a failure.
    if !settings.dry_run
        && let Err(e) = deployed::update(&settings.project, &plan, &removed_names, &report)
    {
        warn(format!("{e:#}"));
    }
    Ok(if settings.detailed_exitcode {
        report.exit.detailed(&report.hosts)
    } else {
        report.exit
    })
}

/// `check` or `graph`: in process with the library's component types, or, when the
/// deployment repository has its own, by the project's binary (its own `check` or `graph`,
/// whose output and exit status pass through). No host is contacted either way.
#[expect(
    clippy::disallowed_methods,
    reason = "the project's binary runs in the foreground with this terminal, like a hand-over"
)]
fn offline(settings: &Settings, verb: &OfflineVerb) -> anyhow::Result<Exit> {
    batou_core::check_name(&settings.environment)?;
    if let Some(binary) = batou_runtime::handover::build_if_package(&settings.project)? {
        let mut command = std::process::Command::new(&binary);
        command
            .arg(&settings.environment)
            .arg(if verb.graph.is_some() {
                "graph"
            } else {
                "check"
            })
            .arg("--project")
            .arg(&settings.project);
        if let Some(format) = verb.graph {
            use clap::ValueEnum;
            let name = format
                .to_possible_value()
                .expect("formats have names")
                .get_name()
                .to_string();
            command.arg("--format").arg(name);
        }
        if let Some(facts) = &verb.facts {
            command.arg("--facts").arg(std::path::absolute(facts)?);
        }
        if settings.json {
            command.arg("--json");
        }
        let status = command
            .status()
            .with_context(|| format!("cannot run the project's binary `{}`", binary.display()))?;
        return Ok(match status.code() {
            Some(0) => Exit::Success,
            Some(3) => Exit::InvalidConfiguration,
            Some(2) => Exit::Usage,
            _ => Exit::DeployFailed,
        });
    }
    let registry = batou_runtime::registry(|_| {});
    let offline = batou_runtime::offline::Offline {
        project: settings.project.clone(),
        environment: settings.environment.clone(),
        facts: verb.facts.clone(),
        json: settings.json,
    };
    match verb.graph {
        Some(format) => batou_runtime::offline::graph(&offline, &registry, format),
        None => batou_runtime::offline::check(&offline, &registry),
    }
}

/// The signals that stop a run: SIGINT (Ctrl-C) and SIGTERM.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// The first signal stops the run after the running steps; the second ends the process at
/// once, still ending the master connections and removing the control directory.
async fn watch_signals(
    mut signals: Signals,
    interrupt: schedule::Interrupt,
    masters: ssh::Masters,
    control_dir: PathBuf,
) {
    let first = signals.next().await;
    interrupt.raise();
    eprintln!(
        "{first}: no further step starts; running steps finish first (send it again to stop at once)"
    );
    let second = signals.next().await;
    eprintln!("{second} again: stopping at once; the hosts' state is unknown");
    masters.terminate_all();
    let _ = std::fs::remove_dir_all(&control_dir);
    std::process::exit(i32::from(Exit::Interrupted.code()));
}

/// How long a project's binary may take to print its plan (configure only: it was built
/// before).
const PLAN_DEADLINE: Duration = Duration::from_secs(300);

/// Runs `command` to completion with its output captured, killing it at `deadline`.
fn output_within(
    command: &mut std::process::Command,
    deadline: Duration,
) -> anyhow::Result<std::process::Output> {
    use std::io::Read;
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut out);
            }
            out
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("it did not print its plan within {deadline:.0?} and was stopped");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// The remote plan and the agent binary: the project's own binary (its static `agent`
/// build) when the deployment repository is a Cargo package, the stock `batou-agent`
/// otherwise (see [`agent_files`]).
#[expect(
    clippy::disallowed_methods,
    reason = "the project's binary prints its plan on stdout, read whole (the runner keeps only the last 4 MiB); `output_within` bounds it"
)]
fn plan(settings: &Settings) -> anyhow::Result<(RemotePlan, PathBuf)> {
    // Before building the project's binary: a bad name must end the run untouched.
    batou_core::check_name(&settings.environment)?;
    // The release verbs act on what the hosts have: nothing is built.
    let skip_builds = settings.release.is_some()
        || settings.service.is_some()
        || settings
            .operation
            .as_ref()
            .is_some_and(operations::skips_builds);
    if skip_builds {
        batou_core::bundle::skip_builds();
    }
    // The project's binary is built once, as the optimised static agent, and plans too: the
    // agent is the binary that planned.
    if let Some(binary) = batou_runtime::handover::build_agent_if_package(&settings.project)? {
        let mut facts = BTreeMap::new();
        let mut generated = Vec::new();
        // Kept until the project's binary has read it.
        let facts_file = tempfile::NamedTempFile::new().context("cannot create a facts file")?;
        loop {
            let mut command = std::process::Command::new(&binary);
            command
                .arg("plan")
                .arg(&settings.environment)
                .arg(&settings.project);
            if skip_builds {
                command.env(batou_runtime::SKIP_BUILDS_ENV, "1");
            }
            if settings.dry_run {
                // A dry run generates no secret for keeps.
                command.arg("--dry-run");
            }
            if !facts.is_empty() {
                std::fs::write(
                    facts_file.path(),
                    serde_json::to_vec(&facts).expect("facts always serialize"),
                )
                .context("cannot write the facts file")?;
                command.arg("--facts").arg(facts_file.path());
            }
            if let Some(identity) = &settings.identity {
                command.env(
                    batou_core::secrets::IDENTITY_ENV,
                    std::path::absolute(identity)?,
                );
            }
            let output = output_within(&mut command, PLAN_DEADLINE).with_context(|| {
                format!("cannot run the project's binary `{}`", binary.display())
            })?;
            if !output.status.success() {
                // The project's binary printed its error already formatted; relay it.
                eprint!(
                    "{}",
                    batou_core::redact::mask(&String::from_utf8_lossy(&output.stderr))
                );
                return Err(ConfigError::new(
                    "the project's binary could not plan the environment",
                )
                .hint("fix the errors above; nothing was touched on any host")
                .into());
            }
            let planned = batou_runtime::Planned::from_json(&output.stdout)
                .context("cannot read the plan printed by the project's binary")?;
            let Some(plan) = next_plan(planned, &mut facts, &mut generated, settings)? else {
                continue;
            };
            for (name, value) in &plan.secrets {
                batou_core::redact::register(name, value);
            }
            return Ok((plan, binary));
        }
    }
    let registry = batou_runtime::registry(|_| {});
    let identities = batou_runtime::identity_source(settings.identity.clone());
    let mut facts = BTreeMap::new();
    let mut generated = Vec::new();
    let plan = loop {
        let planned = batou_runtime::remote_plan(
            &settings.project,
            &settings.environment,
            &registry,
            &identities,
            settings.dry_run,
            &facts,
        )?;
        match next_plan(planned, &mut facts, &mut generated, settings)? {
            Some(plan) => break plan,
            None => continue,
        }
    };
    let (agent, _) = agent_files::stock()?;
    Ok((plan, agent))
}

/// A final plan with the secrets generated on the way, or `None` after gathering the facts
/// that planning asked for (the caller plans again). Facts are asked for at most once per
/// host, so this ends.
fn next_plan(
    planned: batou_runtime::Planned,
    facts: &mut BTreeMap<String, batou_core::Facts>,
    generated: &mut Vec<String>,
    settings: &Settings,
) -> anyhow::Result<Option<RemotePlan>> {
    match planned {
        batou_runtime::Planned::Plan(plan) => {
            let mut plan = *plan;
            generated.append(&mut plan.generated);
            plan.generated = std::mem::take(generated);
            Ok(Some(plan))
        }
        batou_runtime::Planned::NeedsFacts {
            facts_needed,
            generated: mut more,
        } => {
            generated.append(&mut more);
            if let Some(again) = facts_needed.iter().find(|h| facts.contains_key(&h.name)) {
                anyhow::bail!(
                    "planning asked for the facts of host `{}` twice",
                    again.name
                );
            }
            facts.extend(facts::gather(&facts_needed, settings)?);
            Ok(None)
        }
    }
}

/// The plan must have hosts, and `--hosts` must select hosts of the plan: the hosts it
/// names, with its groups and exclusions resolved (`None`: every host).
fn check_hosts(plan: &RemotePlan, settings: &Settings) -> anyhow::Result<Option<BTreeSet<String>>> {
    if plan.hosts.is_empty() {
        // The same error as `batou-local`'s.
        return Err(
            ConfigError::new(format!("environment `{}` has no hosts", plan.environment))
                .at(batou_core::Place::Path(format!(
                    "environments/{}.toml",
                    plan.environment
                )))
                .hint("add a `[hosts.<name>]` table with `components = [...]`")
                .into(),
        );
    }
    let Some(words) = &settings.select else {
        return Ok(None);
    };
    // The groups are the environment file's; a project's binary plans without them, so they
    // are read here (the file only: no component type is needed to read groups).
    let environment = batou_core::Environment::load(
        &settings.project,
        &settings.environment,
        &batou_core::Registry::any_type(),
    )?;
    let known: Vec<&str> = plan.hosts.iter().map(|h| h.name.as_str()).collect();
    Ok(Some(batou_core::select_hosts(
        &plan.environment,
        &known,
        &environment.groups,
        words,
    )?))
}

/// Who is deploying, for host locks and journals.
fn controller(project: &Path) -> Controller {
    let user = std::env::var("USER")
        .ok()
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "unknown".into());
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into());
    Controller {
        user,
        host,
        pid: std::process::id(),
        started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        commit: batou_runtime::operations::project_commit(project),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: &[&str]) -> anyhow::Result<Settings> {
        let mut argv = vec!["batou-remote", "-C", "/srv/deployment"];
        argv.extend(args);
        settings(Cli::try_parse_from(argv)?.args)
    }

    fn plan(jobs: usize) -> RemotePlan {
        RemotePlan {
            environment: "prod".into(),
            jobs,
            hosts: Vec::new(),
            steps: Vec::new(),
            order: Vec::new(),
            host_jobs: Default::default(),
            secrets: Vec::new(),
            generated: Vec::new(),
            fact_hosts: Vec::new(),
            rollout: None,
        }
    }

    #[test]
    fn the_command_line_resolves_into_one_settings_value() {
        let s = resolve(&[
            "prod",
            "--dry-run",
            "--hosts",
            "web2,web1",
            "--connect-timeout",
            "0.5",
            "--agent-timeout",
            "1.5",
            "--ssh-config",
            "ssh_config",
        ])
        .unwrap();
        assert_eq!(s.environment, "prod");
        assert_eq!(s.project, PathBuf::from("/srv/deployment"));
        assert!(s.dry_run && !s.keep_going && !s.json);
        assert_eq!(s.select, Some(vec!["web2".to_string(), "web1".to_string()]));
        assert_eq!(s.hosts, None, "resolved against the plan, later");
        assert_eq!(s.agent_timeout, Duration::from_millis(1500));
        assert_eq!(s.ssh.connect_timeout, Duration::from_secs(1));
        assert_eq!(s.ssh.keepalive, Duration::from_secs(5));
        assert_eq!(s.ssh.config_file, Some(PathBuf::from("ssh_config")));

        let options = s.deploy_options(&plan(4), Path::new("/tmp/batou-x"));
        assert_eq!(options.jobs, 4, "the environment's `jobs` without `--jobs`");
        assert_eq!(options.hosts, s.hosts);
        assert!(options.dry_run && !options.keep_going);
        assert_eq!(options.agent_timeout, s.agent_timeout);
        assert_eq!(options.ssh.control_dir, PathBuf::from("/tmp/batou-x"));
        assert_eq!(options.ssh.settings.connect_timeout, Duration::from_secs(1));
        assert!(!options.interrupt.is_raised());
    }

    #[test]
    fn batch_and_max_failed_override_the_rollout_and_need_no_table() {
        let s = resolve(&["prod", "--batch", "1,25%", "--max-failed", "10%"]).unwrap();
        assert_eq!(s.batch, Some(vec![Size::Count(1), Size::Percent(25)]));
        assert_eq!(s.max_failed, Some(Size::Percent(10)));
        assert!(resolve(&["prod", "--batch", "0"]).is_err());
        assert!(resolve(&["prod", "--max-failed", "x"]).is_err());
        assert!(resolve(&["prod", "service", "status", "--batch", "1"]).is_err());
        assert_eq!(resolve(&["prod"]).unwrap().rollout(&plan(1)).unwrap(), None);
    }

    #[test]
    fn jobs_come_from_the_command_line_over_the_environment() {
        let s = resolve(&["prod", "--jobs", "2"]).unwrap();
        assert_eq!(s.jobs(&plan(8)), 2);
        let s = resolve(&["prod"]).unwrap();
        assert_eq!(s.jobs(&plan(8)), 8);
        // Neither can make a run that deploys nothing.
        assert_eq!(s.jobs(&plan(0)), 1);
        let s = resolve(&["prod", "--jobs", "0"]).unwrap();
        assert_eq!(s.jobs(&plan(3)), 1);
    }

    #[test]
    fn durations_must_be_positive_seconds() {
        for (flag, value) in [
            ("--connect-timeout", "0"),
            ("--keepalive=-1", ""),
            ("--agent-timeout", "nan"),
        ] {
            let args: Vec<&str> = ["prod", flag, value]
                .into_iter()
                .filter(|a| !a.is_empty())
                .collect();
            let err = resolve(&args).unwrap_err();
            let name = flag.split('=').next().unwrap_or(flag);
            assert_eq!(
                err.to_string(),
                format!("`{name}` must be a positive number of seconds"),
                "{flag} {value}"
            );
        }
    }

    #[test]
    fn ssh_durations_round_up_to_whole_seconds() {
        assert_eq!(
            whole_seconds(Duration::from_millis(500)),
            Duration::from_secs(1)
        );
        assert_eq!(
            whole_seconds(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        assert_eq!(
            whole_seconds(Duration::from_millis(2001)),
            Duration::from_secs(3)
        );
    }
}
