//! The local command: converge the root components an environment assigns to this machine,
//! in process, with the same scheduler and summary as a remote run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use batou_core::{
    ConfigError, ConvergeOptions, Environment, Event, EventSink, Plan, Project, Registry,
};
use clap::{Parser, Subcommand};

use crate::output_args::{Output, OutputArgs};
use crate::scheduler::{Action, Report, Scheduler, SchedulerOptions};
use crate::verb::{ReleaseCommand, ServiceCommand, Verb};

/// `clap::Error::exit` with the exit status of [`crate::exit_usage`].
trait ExitUsage {
    fn exit_usage(self) -> !;
}

impl ExitUsage for clap::Error {
    fn exit_usage(self) -> ! {
        crate::exit_usage(self)
    }
}
use crate::{
    Exit, Role, handover, identity_source, load_environment, print_error, registry, secrets_main,
};

/// Converge an environment's components on this machine.
///
/// `batou-local ENVIRONMENT` and `batou-local deploy ENVIRONMENT` are the same; an
/// environment named like a command (`deploy`, `init`, `secrets`, `completions`, `man`,
/// `agent`, `plan`, `help`, ...) needs `deploy`.
///
/// Verbs come after the environment, so that they never take an environment's name:
/// `batou-local ENVIRONMENT service status|start|stop|restart [COMPONENT]...` controls the
/// services of the environment's root components on this machine (`batou-local service`
/// deploys the environment `service`; `batou-local service service status` shows its
/// services).
#[derive(Debug, Parser)]
// No bare `about`: it would take this crate's description, not the command's (the first
// line above).
#[command(
    name = "batou-local",
    version,
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
    /// Converge an environment (what `batou-local ENVIRONMENT` does).
    Deploy(Args),
    /// Create, edit, show and share an environment's secrets (see `secrets --help`).
    #[command(disable_help_flag = true)]
    Secrets {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Create a deployment repository in DIR that `batou-local dev` converges at once.
    Init(crate::init::InitArgs),
    #[command(flatten)]
    Tooling(crate::completions::Tooling),
    #[command(flatten)]
    Role(Role),
}

/// Every verb and command with an example, after the options in `--help` and `help`.
const EXAMPLES: &str = "\
Examples:
  batou-local dev                                  converge environment `dev` on this machine
  batou-local dev --dry-run                        show what would change, change nothing
  batou-local dev --dry-run --detailed-exitcode    ... and exit 2 when something would change
  batou-local dev check                            validate offline: every host, every error
  batou-local dev graph --format dot | dot -Tsvg   the plan as a picture
  batou-local dev service status                   the services of the root components
  batou-local dev service restart web              restart the services of root `web`
  batou-local dev releases                         the releases and which is current
  batou-local dev rollback app --to <ID>           switch `app` back to an earlier release
  batou-local dev status                           this machine: freeze, last deploy, drift
  batou-local dev lock acquire -m \"db migration\"   freeze converges of this base_dir
  batou-local dev --prune                          remove what dropped root components made
  batou-local deploy secrets                       an environment named like a command
  batou-local secrets edit dev                     edit the environment's secrets
  batou-local init my-deployment                   a new deployment repository
  batou-local completions bash                     shell completions (also `man DIR`)";

/// The options of a converge.
#[derive(Debug, clap::Args)]
struct Args {
    /// The environment: `environments/<ENVIRONMENT>.toml`.
    #[arg(required = true)]
    environment: Option<String>,
    #[arg(value_name = "VERB", help = crate::verb::VERB_HELP)]
    verb: Vec<String>,
    /// The host of the environment that this machine is; needed when it has several.
    #[arg(long)]
    host: Option<String>,
    /// Report what would change without changing anything.
    #[arg(long)]
    dry_run: bool,
    /// Remove what root components that the environment no longer assigns to this host
    /// created there (with `--dry-run`: show what would be removed).
    #[arg(long)]
    prune: bool,
    /// With `--dry-run`: exit 2 when some root component would change, 0 when none would
    /// (a wrong command line then exits 64, not 2).
    #[arg(long, requires = "dry_run")]
    detailed_exitcode: bool,
    /// Print one JSON event per line on stdout instead of human output on stderr.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    output: OutputArgs,
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
    /// With the `rollback` verb: the release to switch to (default: the one before the
    /// current one).
    #[arg(long, value_name = "ID")]
    to: Option<String>,
    #[command(flatten)]
    lock: crate::verb::LockArgs,
    /// With the `graph` verb: text for people, or Graphviz DOT.
    #[arg(long, value_enum, value_name = "FORMAT")]
    format: Option<crate::graph::Format>,
    /// With the `check` and `graph` verbs: hosts' platform facts, a JSON object of host
    /// name to facts, for environments whose configure reads them.
    #[arg(long, value_name = "FILE")]
    facts: Option<PathBuf>,
}

/// What a run was asked to do, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The environment to deploy.
    pub environment: String,
    /// The one host to deploy, when not all of them.
    pub host: Option<String>,
    /// Whether the run only reports what it would change.
    pub dry_run: bool,
    /// `--prune`: remove what orphaned root components created.
    pub prune: bool,
    /// `--detailed-exitcode`: a dry run that predicts changes exits 2.
    pub detailed_exitcode: bool,
    /// Whether events go to stdout as JSON lines instead of the human renderer.
    pub json: bool,
    /// How human output looks: colour, verbosity, diffs.
    pub output: Output,
    /// The project's root directory.
    pub project: PathBuf,
    /// A `base_dir` that replaces the environment's.
    pub base_dir: Option<PathBuf>,
    /// The identity file for decrypting secrets (`--identity`).
    pub identity: Option<PathBuf>,
    /// A `service` verb to run instead of a converge.
    pub service: Option<ServiceCommand>,
    /// A `releases` or `rollback` verb to run instead of a converge.
    pub release: Option<ReleaseCommand>,
    /// `status` or `lock` on this machine's `base_dir` instead of a converge.
    pub operation: Option<crate::verb::Operation>,
    /// The `check` verb (offline validation) instead of a converge.
    pub check: bool,
    /// The `graph` verb and its format instead of a converge.
    pub graph: Option<crate::graph::Format>,
    /// `--facts FILE` for `check` and `graph`.
    pub facts: Option<PathBuf>,
}

pub(crate) fn run_main(register: impl Fn(&mut Registry), stock: bool) -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| crate::exit_usage(e));
    match cli.command {
        Some(Command::Role(role)) => role.serve(register),
        Some(Command::Secrets { args }) => secrets_main(args),
        Some(Command::Init(args)) => init_main(&args),
        Some(Command::Tooling(tooling)) => {
            use clap::CommandFactory;
            tooling.run(Cli::command())
        }
        Some(Command::Deploy(args)) => run_local(args, register, stock),
        None => run_local(cli.args, register, stock),
    }
}

fn init_main(args: &crate::init::InitArgs) -> ExitCode {
    match crate::init::init(args) {
        Ok(files) => {
            let dir = args.dir.display();
            for file in files {
                eprintln!("created {}", args.dir.join(file).display());
            }
            let cd = if args.dir == Path::new(".") {
                String::new()
            } else {
                format!("cd {dir} && ")
            };
            eprintln!("next: {cd}batou-local dev");
            ExitCode::SUCCESS
        }
        Err(err) => {
            let exit = Exit::of_error(&err);
            print_error(&err, false);
            exit.into()
        }
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
    if settings.check || settings.graph.is_some() {
        let offline = crate::offline::Offline {
            project: settings.project.clone(),
            environment: settings.environment.clone(),
            facts: settings.facts.clone(),
            json: settings.json,
        };
        return match settings.graph {
            Some(format) => crate::offline::graph(&offline, registry, format),
            None => crate::offline::check(&offline, registry),
        };
    }
    let loaded = load_environment(
        &settings.project,
        &settings.environment,
        registry,
        &identity_source(settings.identity.clone()),
        settings.dry_run,
    )?;
    for line in crate::generated_lines(&settings.environment, &loaded.generated, settings.dry_run) {
        eprintln!("{line}");
    }
    let environment = loaded.environment;
    let host = choose_host(&environment, settings.host.as_deref())?;
    let project = Project::new(&settings.project);
    let base_dir = match &settings.base_dir {
        Some(dir) => std::path::absolute(dir)?,
        None => environment.local_base_dir(&settings.project, crate::planning::home().as_deref()),
    };
    if settings.release.is_some()
        || settings.service.is_some()
        || matches!(
            settings.operation,
            Some(crate::verb::Operation::Lock { .. })
        )
    {
        // The verbs act on what the host has: nothing is built.
        batou_core::bundle::skip_builds();
    }
    // A frozen base directory refuses what would change it (a dry run, `status` and the
    // `lock` verbs only read it, or lift the freeze).
    let changes = match (&settings.operation, &settings.service, &settings.release) {
        (Some(_), _, _) => false,
        (None, Some(service), _) => service.verb != batou_core::ServiceVerb::Status,
        (None, None, Some(release)) => release.rollback,
        (None, None, None) => !settings.dry_run,
    };
    if changes {
        crate::operations::refuse_if_frozen(&base_dir)?;
    }
    let mut plan = build_plan(&environment, registry, &project, &base_dir, &host)?;
    let mut sink: Box<dyn EventSink> = settings.output.sink(settings.json);
    if let Some(operation) = &settings.operation {
        return crate::operations::run_here(&mut plan, &host, &base_dir, operation, sink.as_mut());
    }
    if let Some(command) = &settings.release {
        return releases_here(&mut plan, &host, command, sink.as_mut());
    }
    if let Some(command) = &settings.service {
        // A verb is short and changes no files: a signal ends it like any program, and the
        // guards of the supervisor commands it runs end those.
        return control_here(&mut plan, &host, command, sink.as_mut());
    }
    // From here on a signal no longer kills the process: the first one stops after the
    // running root component, the second one at once.
    let interrupt = watch_signals()?;
    // Before anything changes: the base directory must be this environment's.
    let mut inventory = crate::inventory::HostInventory::open(
        &base_dir,
        &environment.name,
        &host,
        settings.dry_run,
    )
    .map_err(|e| match crate::inventory::owner_refusal(&e) {
        Some(_) => {
            let owned = e
                .downcast_ref::<batou_core::OwnedByOther>()
                .expect("an ownership refusal");
            anyhow::Error::new(crate::ExitError {
                exit: Exit::DeployFailed,
                error: ConfigError::new(owned.to_string()).hint(owned.hint()),
            })
        }
        None => e,
    })?;
    if !settings.dry_run {
        crate::releases::store_locally(&plan, &host, &base_dir, sink.as_mut())?;
    }
    let outcome = converge_here(
        &mut plan,
        &host,
        Here {
            dry_run: settings.dry_run,
            prune: settings.prune,
            interrupt,
            inventory: &mut inventory,
        },
        sink.as_mut(),
    );
    drop(sink);
    Ok(if settings.detailed_exitcode {
        outcome.exit.detailed(&outcome.hosts)
    } else {
        outcome.exit
    })
}

/// Builds the plan; when a configure read this host's platform facts, gathers this
/// machine's (other hosts' stay unknown: they are not this machine) and builds it again, so
/// that a plan that reads no facts is built once, exactly as fast as without them.
fn build_plan(
    environment: &batou_core::Environment,
    registry: &Registry,
    project: &Project,
    base_dir: &std::path::Path,
    host: &str,
) -> anyhow::Result<Plan> {
    let input = batou_core::FactsInput::default();
    let built = Plan::build_with_facts(environment, registry, project, base_dir, &input);
    if !input.reads.hosts().contains(host) {
        return Ok(built?);
    }
    let facts = crate::facts::this_machine().context("cannot gather this machine's facts")?;
    let input = batou_core::FactsInput {
        facts: [(host.to_string(), facts)].into_iter().collect(),
        reads: Default::default(),
    };
    Ok(Plan::build_with_facts(
        environment,
        registry,
        project,
        base_dir,
        &input,
    )?)
}

/// How [`converge_here`] runs.
struct Here<'a> {
    dry_run: bool,
    prune: bool,
    interrupt: &'a AtomicBool,
    inventory: &'a mut crate::inventory::HostInventory,
}

/// Converges this host's steps in process, driven by the same [`Scheduler`] as a remote run,
/// so that events, the summary and the exit code are the same as for one remote host.
/// Orphaned root components are reported (and with `--prune` removed) first, as an agent
/// does when its host is prepared.
fn converge_here(
    plan: &mut Plan,
    host: &str,
    here: Here,
    sink: &mut dyn EventSink,
) -> crate::scheduler::Outcome {
    let Here {
        dry_run,
        prune,
        interrupt,
        inventory,
    } = here;
    let started = Instant::now();
    let now = || started.elapsed().as_secs_f64();
    let steps = plan.plan_steps();
    let order = plan.order().to_vec();
    let mut scheduler = Scheduler::new(
        &steps,
        &order,
        &[host.to_string()],
        SchedulerOptions {
            dry_run,
            keep_going: false,
            jobs: 1,
            // Steps run in this process: there is no round trip to hide.
            pipeline: 1,
        },
    );
    sink.event(Event::HostStarted {
        host: host.to_string(),
        environment: plan.environment.clone(),
        dry_run,
    });
    // Files written by consecutive steps share one sync (see `flush_if_due`).
    let options = ConvergeOptions {
        dry_run,
        keep_writes_pending: true,
    };
    let last_step = order.iter().rev().copied().find(|&i| steps[i].host == host);
    // Every report goes through here: a signal that came in the meantime is told first, so
    // that no further step starts.
    let report = |scheduler: &mut Scheduler, report: Report| {
        let mut actions = Vec::new();
        if interrupt.load(Ordering::SeqCst) && !scheduler.is_interrupted() {
            actions.extend(scheduler.interrupt(now()));
        }
        actions.extend(scheduler.report(host, report, now()));
        actions
    };
    let failures = match inventory.orphans(plan, prune, sink) {
        Ok(orphans) => orphans.failures(),
        Err(e) => vec![format!("{e:#}")],
    };
    let mut actions = if failures.is_empty() {
        report(&mut scheduler, Report::Ready)
    } else {
        let mut error = vec!["the prune failed".to_string()];
        error.extend(failures);
        report(
            &mut scheduler,
            Report::SetupFailed(crate::scheduler::HostFailure::new(
                batou_core::HostStatus::Failed,
                error,
            )),
        )
    };
    while !actions.is_empty() {
        let mut next = Vec::new();
        for action in actions {
            match action {
                // One machine has no rollout: the scheduler never asks for one here.
                Action::Start { step, .. } | Action::StartRollout { step, .. } => {
                    let mut done = batou_core::converge_step(plan, step, options, sink);
                    let stopping = done.failure.is_some()
                        || interrupt.load(Ordering::SeqCst)
                        || Some(step) == last_step;
                    flush_if_due(plan, step, stopping, &mut done, sink);
                    if let (Some((component, _)), false) = (&done.failure, dry_run) {
                        batou_core::roll_back_after_failure(plan, step, component, sink);
                    }
                    if !dry_run {
                        let root = plan.steps()[step].root.clone();
                        // Kept back while the files it lists wait for their sync.
                        let save = plan.pending_writes() == 0;
                        if let Err(e) = inventory.record_step(&root, &done.created, save) {
                            sink.event(Event::Log {
                                host: host.to_string(),
                                component: root,
                                message: format!("{e:#}"),
                            });
                        }
                    }
                    next.extend(report(
                        &mut scheduler,
                        Report::StepDone {
                            step,
                            outcome: done.outcome,
                        },
                    ));
                }
                Action::Finish { .. } => next.extend(report(&mut scheduler, Report::Closed)),
                Action::Predict { .. } => next.extend(report(
                    &mut scheduler,
                    Report::Predicted { would_change: true },
                )),
                Action::Emit(event) => sink.event(event),
                // Nothing is ever queued: each step runs when it is started.
                Action::Cancel { .. } => {}
            }
        }
        actions = next;
    }
    // Steps that were never started leave nothing pending; this is the last chance anyway.
    let late = plan.flush_writes().err();
    if let Some(error) = &late {
        sink.event(Event::Failed {
            host: host.to_string(),
            component: plan.environment.clone(),
            error: error.chain().map(|c| c.to_string()).collect(),
        });
    }
    if late.is_none()
        && !dry_run
        && let Err(e) = inventory.save_changes()
    {
        sink.event(Event::Log {
            host: host.to_string(),
            component: plan.environment.clone(),
            message: format!("{e:#}"),
        });
    }
    let (outcome, events) = scheduler.finish(now());
    for event in events {
        sink.event(event);
    }
    let mut outcome = outcome;
    if late.is_some() {
        outcome.exit = outcome.exit.worst(Exit::DeployFailed);
    }
    outcome
}

/// How many written files at most wait for one sync.
const FLUSH_EVERY: usize = 1000;

/// Makes the files written so far durable and visible when the run is about to report
/// something that depends on them (the host's last step, a failure, an interrupt) or when
/// enough have gathered; a failed flush fails the step that triggered it.
fn flush_if_due(
    plan: &mut Plan,
    step: usize,
    stopping: bool,
    done: &mut batou_core::StepReport,
    sink: &mut dyn EventSink,
) {
    if plan.pending_writes() == 0 || !(stopping || plan.pending_writes() >= FLUSH_EVERY) {
        return;
    }
    if let Err(error) = plan.flush_writes() {
        let error = error.context("cannot make the written files durable");
        let chain: Vec<String> = error.chain().map(|c| c.to_string()).collect();
        let (host, root) = {
            let s = &plan.steps()[step];
            (s.host.clone(), s.root.clone())
        };
        sink.event(Event::Failed {
            host,
            component: root.clone(),
            error: chain.clone(),
        });
        done.outcome = batou_core::RootOutcome::Failed;
        done.failure = Some((root, chain));
    }
}

/// Runs a `service` verb on this host's root components: the ones named, or every one with a
/// service. Names are checked before any service is touched.
fn control_here(
    plan: &mut Plan,
    host: &str,
    command: &ServiceCommand,
    sink: &mut dyn EventSink,
) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let steps: Vec<usize> = (0..plan.steps().len())
        .filter(|&i| plan.steps()[i].host == host)
        .collect();
    let roots: Vec<(String, bool)> = steps
        .iter()
        .map(|&i| {
            (
                plan.steps()[i].root.clone(),
                batou_core::has_services(plan, i),
            )
        })
        .collect();
    let chosen = batou_core::select_roots(&plan.environment, &roots, &command.roots)?;
    let mut outcomes = Vec::new();
    for root in &chosen {
        let step = steps
            .iter()
            .copied()
            .find(|&i| &plan.steps()[i].root == root)
            .expect("select_roots picks from this host's roots");
        outcomes.extend(batou_core::control_services(plan, step, command.verb, sink));
    }
    let (status, detail) = crate::verb::service_summary(command.verb, &outcomes);
    sink.event(Event::RunFinished {
        hosts: vec![batou_core::HostSummary {
            host: host.to_string(),
            status,
            detail,
        }],
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(if status == batou_core::HostStatus::Failed {
        Exit::DeployFailed
    } else {
        Exit::Success
    })
}

/// Runs `releases` or `rollback` on this host's release roots.
fn releases_here(
    plan: &mut Plan,
    host: &str,
    command: &ReleaseCommand,
    sink: &mut dyn EventSink,
) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let roots: Vec<(String, bool)> = plan
        .host_order(host)
        .into_iter()
        .map(|i| {
            (
                plan.steps()[i].root.clone(),
                batou_core::release_steps(plan).contains(&i),
            )
        })
        .collect();
    crate::verb::check_release_roots(&plan.environment, &roots, &command.roots)?;
    let reports = batou_core::release_verb(
        plan,
        host,
        &command.roots,
        command.rollback.then_some(command.to.as_deref()),
        sink,
    );
    let (status, detail) = crate::verb::release_summary(&reports);
    sink.event(Event::RunFinished {
        hosts: vec![batou_core::HostSummary {
            host: host.to_string(),
            status,
            detail,
        }],
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(if status == batou_core::HostStatus::Failed {
        Exit::DeployFailed
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
            std::process::exit(i32::from(Exit::Interrupted.code()));
        })
        .context("cannot start the signal thread")?;
    Ok(&INTERRUPT)
}

/// Writes to stderr directly, past the human output and its progress line.
fn say(text: &str) {
    let _ = nix::unistd::write(std::io::stderr(), text.as_bytes());
}

fn settings(args: Args) -> anyhow::Result<Settings> {
    let verb = verb_of(&args.verb, args.dry_run);
    let (check, graph) = (
        verb == Some(Verb::Check),
        (verb == Some(Verb::Graph)).then(|| args.format.unwrap_or_default()),
    );
    for (given, flag, applies) in [
        (args.format.is_some(), "--format", graph.is_some()),
        (args.facts.is_some(), "--facts", check || graph.is_some()),
        (args.host.is_some(), "--host", !(check || graph.is_some())),
    ] {
        if given && !applies {
            use clap::CommandFactory;
            let to = match flag {
                "--format" => "applies to the `graph` verb only",
                "--facts" => "applies to the `check` and `graph` verbs only",
                _ => "does not apply to `check` and `graph`, which take every host",
            };
            Cli::command()
                .error(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!("`{flag}` {to}"),
                )
                .exit_usage();
        }
    }
    let (service, release, operation) = match verb {
        None | Some(Verb::Check) | Some(Verb::Graph) => (None, None, None),
        Some(Verb::Service(s)) => (Some(s), None, None),
        Some(Verb::Releases(r)) => (None, Some(r), None),
        Some(Verb::Operation(o)) => (None, None, Some(o)),
    };
    // `history` and `exec` and their options are `batou-remote`'s.
    let operation_args = crate::verb::OperationArgs {
        lock: args.lock.clone(),
        ..Default::default()
    };
    let operation = match operation.map(|o| o.with(&operation_args)).transpose() {
        Ok(Some(crate::verb::Operation::History { .. })) => {
            usage("`history` is a verb of `batou-remote`: a local converge keeps no journal")
        }
        Ok(Some(crate::verb::Operation::Exec { .. })) => {
            usage("`exec` is a verb of `batou-remote`: on this machine, run the program yourself")
        }
        Ok(operation) => operation,
        Err(message) => usage(&message),
    };
    // The verbs' options without their verb.
    if operation.is_none()
        && let Err(message) = crate::verb::Operation::Status.with(&operation_args)
    {
        usage(&message);
    }
    if args.to.is_some() && !release.as_ref().is_some_and(|r| r.rollback) {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "`--to` applies to the `rollback` verb only",
            )
            .exit_usage();
    }
    let release = release.map(|r| ReleaseCommand {
        to: args.to.clone(),
        ..r
    });
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
        prune: args.prune,
        detailed_exitcode: args.detailed_exitcode,
        json: args.json,
        output: args.output.resolve(),
        project,
        base_dir: args.base_dir,
        identity: args.identity,
        service,
        release,
        operation,
        check,
        graph,
        facts: args.facts,
    })
}

/// Ends the process with a usage error (exit 2) saying `message`.
fn usage(message: &str) -> ! {
    use clap::CommandFactory;
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

/// The verb after the environment; a wrong one is a usage error (exit 2), like any other
/// wrong word on the command line.
fn verb_of(words: &[String], dry_run: bool) -> Option<Verb> {
    use clap::CommandFactory;
    let command =
        crate::verb::parse_verb("batou-local", words).unwrap_or_else(|e| crate::exit_usage(e));
    if let (Some(verb), true) = (&command, dry_run) {
        let which = match verb {
            Verb::Service(_) => "`service`",
            Verb::Releases(_) => "`releases` and `rollback`",
            Verb::Operation(_) => "`status`, `history`, `exec` and `lock`",
            Verb::Check | Verb::Graph => "`check` and `graph`",
        };
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                format!("`--dry-run` does not apply to the {which} verbs"),
            )
            .exit_usage();
    }
    command
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
