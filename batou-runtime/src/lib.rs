//! The runtime of every deployment binary: the stock `batou-local`, the stock `batou-remote`
//! and each project's own binary.
//!
//! - the local command: parse arguments into [`Settings`], load the environment, build the
//!   plan, converge this host's steps, render events, pick the exit code ([`stock_main`],
//!   [`main_with`]);
//! - the roles a controller starts on hosts ([`Role`]): the agent session with its host lock
//!   and journal ([`agent`]), installing an uploaded agent, printing a remote plan;
//! - the hand-over from the stock binary to a project's own ([`handover`]);
//! - the planning pipeline a controller uses ([`load_environment`], [`remote_plan`]);
//! - the scheduler of runs across hosts ([`scheduler`]), exit codes ([`Exit`]), the error
//!   printer ([`print_error`]) and the `secrets` commands ([`secrets`]).
//!
//! Projects with their own component types call [`main_with`] from their `main`, through the
//! `batou` facade:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     batou_runtime::main_with(|registry| {
//!         // registry.register::<MyApp>("app");
//!         let _ = registry;
//!     })
//! }
//! ```

pub mod agent;
mod exit;
pub mod handover;
pub mod scheduler;
pub mod secrets;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

use batou_core::output::{HumanOutput, JsonOutput};
use batou_core::secrets::{IDENTITY_ENV, IdentitySource, UserDirs};
use batou_core::{ConfigError, ConvergeOptions, Environment, EventSink, Plan, Project, Registry};
use clap::{Parser, Subcommand};

pub use exit::{Exit, ExitError};

/// Converge an environment's components on this machine.
///
/// `batou-local ENVIRONMENT` and `batou-local deploy ENVIRONMENT` are the same; an
/// environment named like a command (`deploy`, `agent`, `plan`, `help`, ...) needs `deploy`.
#[derive(Debug, Parser)]
#[command(
    name = "batou-local",
    version,
    about,
    subcommand_negates_reqs = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    args: Args,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Converge an environment (what `batou-local ENVIRONMENT` does).
    Deploy(Args),
    /// Create, edit, show and share an environment's secrets (see `secrets --help`).
    #[command(disable_help_flag = true)]
    Secrets {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    #[command(flatten)]
    Role(Role),
}

/// Runs `<program> secrets ARGS...` (the secrets commands parse their own arguments).
pub fn secrets_main(args: Vec<std::ffi::OsString>) -> ExitCode {
    let program = std::env::args_os().next().unwrap_or_else(|| "batou".into());
    let mut argv = vec![program, "secrets".into()];
    argv.extend(args);
    secrets::main(argv)
}

/// The roles every deployment binary has besides its command line, for a controller. They
/// are commands of their own, hidden from `--help`.
#[derive(Debug, Subcommand)]
pub enum Role {
    /// Serve one controller session on stdin/stdout.
    #[command(hide = true)]
    Agent,
    /// Verify an uploaded agent (this binary) against its SHA-256 and install it.
    #[command(hide = true)]
    AgentInstall { sha256: String, target: PathBuf },
    /// Print the remote plan of an environment as JSON.
    #[command(hide = true)]
    Plan {
        environment: String,
        #[arg(default_value = ".")]
        project: PathBuf,
    },
}

/// The options of a converge.
#[derive(Debug, clap::Args)]
struct Args {
    /// The environment: `environments/<ENVIRONMENT>.toml`.
    #[arg(required = true)]
    environment: Option<String>,
    /// The host of the environment that this machine is; needed when it has several.
    #[arg(long)]
    host: Option<String>,
    /// Report what would change without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON event per line on stdout instead of human output on stderr.
    #[arg(long)]
    json: bool,
    /// The deployment repository (default: the nearest directory above the current one that
    /// has `environments/`).
    #[arg(long, short = 'C', value_name = "DIR")]
    project: Option<PathBuf>,
    /// Use this base directory instead of the environment's `base_dir`.
    #[arg(long, value_name = "DIR")]
    base_dir: Option<PathBuf>,
    /// Decrypt the environment's secrets with this age identity or SSH private key
    /// (default: `$BATOU_IDENTITY`, `~/.config/batou/identity.txt`, `~/.ssh/id_ed25519`,
    /// `~/.ssh/id_rsa`).
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
}

/// What a run was asked to do, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    pub environment: String,
    pub host: Option<String>,
    pub dry_run: bool,
    pub json: bool,
    pub project: PathBuf,
    pub base_dir: Option<PathBuf>,
    pub identity: Option<PathBuf>,
}

/// Entry point of the stock binary: hands over to the project's own binary when the project
/// is a Cargo package, otherwise runs with the library's component types.
pub fn stock_main() -> ExitCode {
    run_main(|_| {}, true)
}

/// Entry point for a project's own binary, with its component types added by `register`.
pub fn main_with(register: impl Fn(&mut Registry)) -> ExitCode {
    run_main(register, false)
}

/// The registry of a deployment binary: the library's types plus the project's.
pub fn registry(register: impl FnOnce(&mut Registry)) -> Registry {
    let mut registry = Registry::new();
    batou_components::register(&mut registry);
    register(&mut registry);
    registry
}

impl Role {
    /// Serves this role with the library's component types plus the project's.
    pub fn serve(self, register: impl FnOnce(&mut Registry)) -> ExitCode {
        match self {
            Role::Agent => ExitCode::from(agent::serve(&registry(register))),
            Role::AgentInstall { sha256, target } => {
                ExitCode::from(agent::install(&sha256, &target))
            }
            Role::Plan {
                environment,
                project,
            } => {
                let identities = identity_source(None);
                match remote_plan(&project, &environment, &registry(register), &identities) {
                    Ok(plan) => {
                        println!(
                            "{}",
                            serde_json::to_string(&plan).expect("plans always serialize")
                        );
                        ExitCode::SUCCESS
                    }
                    Err(err) => {
                        let exit = Exit::of_error(&err);
                        print_error(&err, false);
                        exit.into()
                    }
                }
            }
        }
    }
}

/// Loads an environment and plans it for remote hosts (relative base directories below each
/// host's home).
pub fn remote_plan(
    project: &Path,
    environment: &str,
    registry: &Registry,
    identities: &IdentitySource,
) -> anyhow::Result<batou_core::protocol::RemotePlan> {
    let environment = load_environment(project, environment, registry, identities)?;
    let base_dir = environment.remote_base_dir();
    let plan = Plan::build(&environment, registry, &Project::new(project), &base_dir)?;
    Ok(plan.export(environment.settings.jobs)?)
}

/// Where this user's identities are: `explicit` (`--identity`), else `BATOU_IDENTITY`, else
/// the default files below `HOME` and `XDG_CONFIG_HOME`.
pub fn identity_source(explicit: Option<PathBuf>) -> IdentitySource {
    let dirs = UserDirs::new(home().map(Into::into), std::env::var_os("XDG_CONFIG_HOME"));
    IdentitySource::new(explicit, std::env::var_os(IDENTITY_ENV), dirs)
}

/// This user's home directory, from `HOME`.
fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// Loads an environment with its secrets (when it has a secrets file) and registers every
/// secret value for masking in this process's output.
pub fn load_environment(
    project: &Path,
    name: &str,
    registry: &Registry,
    identities: &IdentitySource,
) -> Result<Environment, ConfigError> {
    let mut environment = Environment::load(project, name, registry)?;
    if let Some(secrets) = batou_core::secrets::load(project, name, identities)? {
        secrets.register_masks();
        environment.apply_secrets(secrets, registry)?;
    }
    Ok(environment)
}

fn run_main(register: impl Fn(&mut Registry), stock: bool) -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Role(role)) => role.serve(register),
        Some(Command::Secrets { args }) => secrets_main(args),
        Some(Command::Deploy(args)) => run_local(args, register, stock),
        None => run_local(cli.args, register, stock),
    }
}

fn run_local(args: Args, register: impl FnOnce(&mut Registry), stock: bool) -> ExitCode {
    let json = args.json;
    let result = settings(args).and_then(|settings| {
        // Before a hand-over builds anything: a bad name must end the run untouched.
        batou_core::check_name(&settings.environment)?;
        if stock && std::env::var_os(handover::GUARD).is_none() {
            handover::hand_over_if_package(&settings.project)?;
        }
        run(&settings, &registry(register))
    });
    match result {
        Ok(exit) => exit.into(),
        Err(err) => {
            let exit = Exit::of_error(&err);
            print_error(&err, json);
            exit.into()
        }
    }
}

/// Loads, plans and converges; returns the exit status of a completed run.
///
/// Once the plan is built, this takes SIGINT and SIGTERM over for the rest of the process
/// (see `watch_signals`): the first stops the converge after the running root component.
pub fn run(settings: &Settings, registry: &Registry) -> anyhow::Result<Exit> {
    let environment = load_environment(
        &settings.project,
        &settings.environment,
        registry,
        &identity_source(settings.identity.clone()),
    )?;
    let host = choose_host(&environment, settings.host.as_deref())?;
    let project = Project::new(&settings.project);
    let base_dir = match &settings.base_dir {
        Some(dir) => std::path::absolute(dir)?,
        None => environment.local_base_dir(&settings.project, home().as_deref()),
    };
    let mut plan = Plan::build(&environment, registry, &project, &base_dir)?;
    let options = ConvergeOptions {
        dry_run: settings.dry_run,
    };
    let mut sink: Box<dyn EventSink> = if settings.json {
        Box::new(JsonOutput::new(std::io::stdout().lock()))
    } else {
        Box::new(HumanOutput::new(std::io::stderr().lock()))
    };
    // From here on a signal no longer kills the process: the first one stops after the
    // running root component, the second one at once.
    let interrupt = watch_signals()?;
    let report = batou_core::converge_until(&mut plan, &host, options, interrupt, sink.as_mut());
    drop(sink);
    if !settings.json {
        let state = if !report.succeeded() {
            "1 failed"
        } else if report.interrupted {
            "1 interrupted"
        } else if report.changed_components.is_empty() {
            "0 changed"
        } else if settings.dry_run {
            "1 would change"
        } else {
            "1 changed"
        };
        eprintln!("1 host: {state} in {:.2} s", report.seconds);
    }
    Ok(if !report.succeeded() {
        Exit::DeployFailed
    } else if report.interrupted {
        Exit::Interrupted
    } else {
        Exit::Success
    })
}

/// Takes SIGINT and SIGTERM away from their default (ending the process) and serves them on
/// a thread of their own: the first sets the returned flag, the second ends the process with
/// exit status 130.
///
/// The signals are blocked in this thread before any other starts, so that every thread
/// inherits the mask and only `sigwait` sees them; child processes start with an empty mask
/// (the standard library resets it).
fn watch_signals() -> anyhow::Result<&'static AtomicBool> {
    use nix::sys::signal::{SigSet, Signal};
    static INTERRUPT: AtomicBool = AtomicBool::new(false);
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()
        .context("cannot take over SIGINT and SIGTERM")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let Ok(first) = set.wait() else { return };
            INTERRUPT.store(true, Ordering::SeqCst);
            say(&format!(
                "{}: no further root component starts; the running one finishes first (send it again to stop at once)\n",
                first.as_str()
            ));
            let Ok(second) = set.wait() else { return };
            say(&format!("{} again: stopping at once\n", second.as_str()));
            std::process::exit(i32::from(Exit::Interrupted as u8));
        })
        .context("cannot start the signal thread")?;
    Ok(&INTERRUPT)
}

/// Writes to stderr past its lock, which the human output holds for the whole converge.
fn say(text: &str) {
    let _ = nix::unistd::write(std::io::stderr(), text.as_bytes());
}

fn settings(args: Args) -> anyhow::Result<Settings> {
    let project = match args.project {
        Some(dir) => {
            let dir = std::path::absolute(&dir)?;
            if !dir.join("environments").is_dir() {
                return Err(ConfigError::new(format!(
                    "`{}` is not a deployment repository: it has no `environments/` directory",
                    dir.display()
                ))
                .into());
            }
            dir
        }
        None => find_project(&std::env::current_dir()?)?,
    };
    Ok(Settings {
        environment: args
            .environment
            .expect("clap requires the environment of a converge"),
        host: args.host,
        dry_run: args.dry_run,
        json: args.json,
        project,
        base_dir: args.base_dir,
        identity: args.identity,
    })
}

/// The nearest directory at or above `start` that has an `environments/` directory.
pub fn find_project(start: &Path) -> Result<PathBuf, ConfigError> {
    start
        .ancestors()
        .find(|dir| dir.join("environments").is_dir())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            ConfigError::new(format!(
                "no deployment repository here: no `environments/` directory in `{}` or above",
                start.display()
            ))
            .hint("run in a deployment repository or pass `--project DIR`")
        })
}

/// The host this machine is: `--host`, the only host, or the host named like this machine.
fn choose_host(environment: &Environment, requested: Option<&str>) -> Result<String, ConfigError> {
    if let Some(name) = requested {
        return environment.host(name).map(|h| h.name.clone());
    }
    match environment.hosts.as_slice() {
        [] => Err(
            ConfigError::new(format!("environment `{}` has no hosts", environment.name))
                .at(batou_core::Place::Path(environment.path().to_string()))
                .hint("add a `[hosts.<name>]` table with `components = [...]`"),
        ),
        [only] => Ok(only.name.clone()),
        hosts => {
            let this = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok());
            if let Some(this) = this
                && hosts.iter().any(|h| h.name == this)
            {
                return Ok(this);
            }
            Err(ConfigError::new(format!(
                "environment `{}` has several hosts and none is called like this machine",
                environment.name
            ))
            .hint(format!(
                "choose one with `--host`: {}",
                environment.host_names().join(", ")
            )))
        }
    }
}

/// Prints `error:`, one `caused by:` per cause and `hint:`; in JSON mode also an event line.
pub fn print_error(err: &anyhow::Error, json: bool) {
    let hint = err
        .chain()
        .find_map(|e| {
            e.downcast_ref::<ConfigError>()
                .or_else(|| e.downcast_ref::<ExitError>().map(|x| &x.error))
        })
        .and_then(|c| c.hint.clone());
    let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
    if json {
        let event = serde_json::json!({
            "event": "error",
            "kind": Exit::of_error(err).name(),
            "error": chain,
            "hint": hint,
        });
        println!("{}", batou_core::redact::to_masked_json(&event));
    }
    let mut text = String::new();
    for (i, cause) in chain.iter().enumerate() {
        let label = if i == 0 { "error" } else { "caused by" };
        let mut lines = cause.lines();
        text.push_str(&format!("{label}: {}\n", lines.next().unwrap_or_default()));
        for line in lines {
            text.push_str(&format!("  {line}\n"));
        }
    }
    if let Some(hint) = hint {
        text.push_str(&format!("hint: {hint}\n"));
    }
    eprint!("{}", batou_core::redact::mask(&text));
}
