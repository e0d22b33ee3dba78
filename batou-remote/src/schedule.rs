//! Running a remote plan: one task per host owns its SSH master and agent session; a thin
//! loop passes what the tasks report to the [`Scheduler`],
//! which decides what runs next (the rules are in `scheduler.rs`), and carries out its
//! actions: send a step, end a session, emit an event. Also the journal check of `--hosts`.
//!
//! An [`Interrupt`] (the first SIGINT or SIGTERM) stops new steps; running steps get the
//! agent timeout to finish, then every session ends with `finish`, so that journals are
//! complete and locks released.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use batou_core::journal::JournalRecord;
use batou_core::protocol::{Controller, HostJob, Purpose, RemoteHost, RemotePlan};
use batou_core::{Event, EventSink, HostSummary, RootOutcome};
use batou_runtime::Exit;
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::agent::{AgentBinary, AgentSession, SessionError, StepMessage, ensure_agent};
use crate::ssh::{self, ConnectError, SshOptions};
use batou_core::HostStatus;
use batou_runtime::rollout::RolloutPlan;
use batou_runtime::scheduler::{Action, HostFailure, Report, Scheduler, SchedulerOptions};

/// How to run a remote plan.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Verify only: report what would change, write nothing, take no lock.
    pub dry_run: bool,
    /// After a failure, go on with every step that does not depend on it.
    pub keep_going: bool,
    /// Hosts deploying at the same time.
    pub jobs: usize,
    /// Longest silence accepted from an agent (it sends heartbeats while working).
    pub agent_timeout: Duration,
    /// How to connect, and the run's control sockets and masters.
    pub ssh: SshOptions,
    /// Limit the run to these hosts.
    pub hosts: Option<BTreeSet<String>>,
    /// `--prune`: remove what orphaned root components created (in a dry run: say what).
    pub prune: bool,
    /// Raised when the run must stop starting steps.
    pub interrupt: Interrupt,
    /// The rollout of the run's rolled hosts, resolved before any connection.
    pub rollout: Option<RolloutPlan>,
}

/// A request to stop a run after the steps that are running; cloned handles share it.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<(AtomicBool, Notify)>);

impl Interrupt {
    /// Asks the run to stop starting steps.
    pub fn raise(&self) {
        self.0.0.store(true, Ordering::SeqCst);
        self.0.1.notify_waiters();
    }

    /// Whether the run was asked to stop.
    pub fn is_raised(&self) -> bool {
        self.0.0.load(Ordering::SeqCst)
    }

    /// Completes once the run is asked to stop.
    pub async fn raised(&self) {
        let notified = self.0.1.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_raised() {
            return;
        }
        notified.await;
    }
}

/// How a run ended for each host, and the exit status it implies.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// One summary per host of the run, sorted by name.
    pub hosts: Vec<HostSummary>,
    /// The exit status the run ends with.
    pub exit: Exit,
    /// How long the run took.
    pub seconds: f64,
}

/// How a connection failure ends a host.
pub(crate) fn connect_failure(err: &ConnectError) -> HostFailure {
    let status = match err {
        ConnectError::HostKeyRefused { .. } => HostStatus::HostKeyRefused,
        ConnectError::AuthRefused { .. } => HostStatus::AuthRefused,
        ConnectError::Unreachable { .. }
        | ConnectError::CannotRunSsh { .. }
        | ConnectError::MasterSilent { .. }
        | ConnectError::Timeout { .. } => HostStatus::Unreachable,
    };
    HostFailure::new(status, vec![err.to_string()])
}

/// How a failed agent session ends a host.
pub(crate) fn session_failure(err: &SessionError) -> HostFailure {
    let status = match err {
        SessionError::LockHeld { .. } => HostStatus::LockHeld,
        SessionError::BecomeRefused { .. } => HostStatus::BecomeRefused,
        SessionError::Timeout { .. } | SessionError::Died { .. } => HostStatus::Timeout,
        SessionError::Refused { .. }
        | SessionError::PlatformMismatch { .. }
        | SessionError::CannotProbe { .. }
        | SessionError::CannotCheck { .. }
        | SessionError::CannotStartUpload { .. }
        | SessionError::CannotUpload { .. }
        | SessionError::CannotInstall { .. }
        | SessionError::Bundle { .. }
        | SessionError::CannotStart { .. }
        | SessionError::ProtocolMismatch { .. }
        | SessionError::BadMessage { .. }
        | SessionError::Unexpected { .. } => HostStatus::Failed,
    };
    HostFailure::new(status, vec![err.to_string()])
}

/// Steps a host's agent holds at once, the running one included: the next steps are sent
/// while one runs, so that each starts without a round trip to the controller (about 2 ms
/// on loopback, more across a network). A handful hides the round trip; more would only
/// run further ahead of a stop, which cancels them anyway.
const PIPELINE: usize = 8;

/// What a host's task sends the loop: a report for the scheduler, or an agent's event.
enum Up {
    Report(String, Report),
    Event(Event),
}

/// What the loop asks of a host's task.
enum Down {
    /// Send a step to the agent: the step's index, its root component, its rollout.
    Step(usize, String, Option<batou_core::rollout::StepRollout>),
    /// Drop the steps queued on the agent behind the running one.
    Cancel,
    Predict(Vec<String>),
    Finish,
}

/// What a host's task waits for next while steps are out on its agent.
enum Next {
    Command(Option<Down>),
    Agent(Result<StepMessage, SessionError>),
}

/// Deploys `plan` with `agent`, reporting events to `sink` as they happen.
///
/// A thin loop: one task per host owns its SSH session and agent; the [`Scheduler`] decides
/// what runs next from what the tasks report.
pub async fn deploy(
    plan: &RemotePlan,
    agent: Arc<AgentBinary>,
    controller: Controller,
    options: &DeployOptions,
    sink: &mut dyn EventSink,
) -> RunReport {
    let started = Instant::now();
    let in_run = |host: &str| options.hosts.as_ref().is_none_or(|h| h.contains(host));
    let names: Vec<String> = plan
        .hosts
        .iter()
        .filter(|h| in_run(&h.name) && plan.host_jobs.contains_key(&h.name))
        .map(|h| h.name.clone())
        .collect();
    let mut scheduler = Scheduler::new(
        &plan.steps,
        &plan.order,
        &names,
        SchedulerOptions {
            dry_run: options.dry_run,
            keep_going: options.keep_going,
            jobs: options.jobs,
            pipeline: PIPELINE,
        },
    );
    if let Some(rollout) = &options.rollout {
        scheduler = scheduler.with_rollout(rollout.clone());
    }

    let (up_tx, mut up) = mpsc::unbounded_channel::<Up>();
    let setup = Arc::new(Semaphore::new(options.jobs.max(1)));
    let mut downs: BTreeMap<String, mpsc::UnboundedSender<Down>> = BTreeMap::new();
    for host in plan.hosts.iter().filter(|h| names.contains(&h.name)) {
        let (down_tx, down_rx) = mpsc::unbounded_channel();
        downs.insert(host.name.clone(), down_tx);
        let task = HostTask {
            host: host.clone(),
            job: plan.host_jobs[&host.name].clone(),
            agent: Arc::clone(&agent),
            controller: controller.clone(),
            options: options.clone(),
            setup: Arc::clone(&setup),
        };
        tokio::spawn(host_task(task, down_rx, up_tx.clone()));
    }
    drop(up_tx);

    // Sessions get the agent timeout (plus a margin) to end once no step runs any more;
    // after an interrupt, running steps get the agent timeout to finish.
    let mut closing_deadline: Option<tokio::time::Instant> = None;
    let mut grace_end: Option<tokio::time::Instant> = None;
    while !scheduler.is_over() {
        if scheduler.is_finished() && closing_deadline.is_none() {
            closing_deadline =
                Some(tokio::time::Instant::now() + options.agent_timeout + Duration::from_secs(5));
        }
        let never = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
        let msg = tokio::select! {
            msg = up.recv() => msg,
            () = options.interrupt.raised(), if !scheduler.is_interrupted() => {
                grace_end = Some(tokio::time::Instant::now() + options.agent_timeout);
                let actions = scheduler.interrupt(started.elapsed().as_secs_f64());
                perform(actions, &downs, plan, sink);
                continue;
            }
            () = tokio::time::sleep_until(grace_end.unwrap_or(never)), if grace_end.is_some() && !scheduler.is_finished() => {
                grace_end = None;
                let now = started.elapsed().as_secs_f64();
                let actions = scheduler.grace_expired(options.agent_timeout, now);
                perform(actions, &downs, plan, sink);
                continue;
            }
            () = tokio::time::sleep_until(closing_deadline.unwrap_or(never)), if closing_deadline.is_some() => break,
        };
        let Some(msg) = msg else { break };
        let (host, report) = match msg {
            Up::Event(e) => {
                sink.event(e);
                continue;
            }
            Up::Report(host, report) => (host, report),
        };
        let actions = scheduler.report(&host, report, started.elapsed().as_secs_f64());
        perform(actions, &downs, plan, sink);
    }

    let seconds = started.elapsed().as_secs_f64();
    let (outcome, events) = scheduler.finish(seconds);
    for event in events {
        sink.event(event);
    }
    RunReport {
        hosts: outcome.hosts,
        exit: outcome.exit,
        seconds,
    }
}

/// With `--hosts`, every step of the run whose dependency lies outside the run must find that
/// dependency deployed in its host's journal: the latest record of that step says it
/// converged (a later failed deploy of it counts against it). Missing dependencies are an
/// invalid configuration (exit 3); an excluded host that cannot be asked ends the run with
/// the status of its connection failure (unreachable: 7). Both before any deploy starts.
///
/// A dry run connects to no host outside `--hosts`: it skips the check and says so.
pub async fn check_excluded_dependencies(
    plan: &RemotePlan,
    options: &DeployOptions,
    warn: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    let Some(selected) = &options.hosts else {
        return Ok(());
    };
    let mut needed: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
    for (i, step) in plan.steps.iter().enumerate() {
        if !selected.contains(&step.host) {
            continue;
        }
        for dep in &step.after {
            let provider = &plan.steps[*dep];
            if !selected.contains(&provider.host) {
                needed
                    .entry(provider.host.as_str())
                    .or_default()
                    .push((*dep, i));
            }
        }
    }
    let label = |i: usize| format!("{}: {}", plan.steps[i].host, plan.steps[i].root);
    if options.dry_run {
        for (dep, requirer) in needed.values().flatten() {
            warn(format!(
                "dry run: not checking that `{}`, which `{}` requires and which is not in this run, was deployed (hosts outside `--hosts` are not contacted)",
                label(*dep),
                label(*requirer)
            ));
        }
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut unchecked: Option<(Exit, Vec<String>)> = None;
    for (host, deps) in needed {
        match deployed_roots(plan, host, options).await {
            Ok(latest) => {
                for (dep, requirer) in deps {
                    let why = match latest.get(&plan.steps[dep].root) {
                        Some(true) => continue,
                        Some(false) => "its last deploy failed according to its host's journal",
                        None => "has not been deployed according to its host's journal",
                    };
                    missing.push(format!(
                        "`{}` requires `{}`, which is not in this run and {why}",
                        label(requirer),
                        label(dep)
                    ));
                }
            }
            Err((exit, error)) => {
                let (worst, lines) = unchecked.get_or_insert((exit, Vec::new()));
                *worst = worst.worst(exit);
                for (dep, requirer) in deps {
                    lines.push(format!(
                        "`{}` requires `{}`, which is not in this run and could not be checked: {error}",
                        label(requirer),
                        label(dep)
                    ));
                }
            }
        }
    }
    let outside: BTreeSet<&str> = plan
        .steps
        .iter()
        .filter(|s| !selected.contains(&s.host))
        .map(|s| s.host.as_str())
        .collect();
    let outside = outside.into_iter().collect::<Vec<_>>().join(", ");
    if !missing.is_empty() {
        return Err(batou_core::ConfigError::new(format!(
            "dependencies outside `--hosts` are missing: {}",
            missing.join("; ")
        ))
        .hint(format!(
            "deploy them first or add their hosts to `--hosts` (not in this run: {outside})"
        ))
        .into());
    }
    if let Some((exit, lines)) = unchecked {
        let error = batou_core::ConfigError::new(format!(
            "dependencies outside `--hosts` could not be checked: {}",
            lines.join("; ")
        ))
        .hint(format!(
            "make the host reachable or add it to `--hosts` (not in this run: {outside}); nothing was deployed"
        ));
        return Err(batou_runtime::ExitError { exit, error }.into());
    }
    Ok(())
}

/// For each root component that a host's journal records, whether its latest step record
/// says it converged (changed or unchanged).
async fn deployed_roots(
    plan: &RemotePlan,
    host: &str,
    options: &DeployOptions,
) -> Result<BTreeMap<String, bool>, (Exit, String)> {
    let remote = plan
        .hosts
        .iter()
        .find(|h| h.name == host)
        .ok_or_else(|| (Exit::DeployFailed, format!("unknown host `{host}`")))?;
    let base = &plan.host_jobs[host].base_dir;
    let journal = if std::path::Path::new(base).is_absolute() {
        ssh::Word::Literal(format!(
            "{}/.batou/journal.jsonl",
            base.trim_end_matches('/')
        ))
    } else {
        // `~/srv` and `srv` both lie below the home directory (a bare `~` is the home).
        let below_home = base.strip_prefix("~/").unwrap_or(base);
        let below_home = if below_home == "~" { "." } else { below_home };
        ssh::Word::Home(format!(
            "{}/.batou/journal.jsonl",
            below_home.trim_end_matches('/')
        ))
    };
    let session = ssh::connect(remote, &options.ssh)
        .await
        .map_err(|e| (connect_failure(&e).exit(), format!("host `{host}` {e}")))?;
    let command = format!(
        "{} 2>/dev/null || true",
        ssh::shell_command(&[ssh::Word::Literal("cat".into()), journal])
    );
    let output = tokio::time::timeout(
        options.agent_timeout,
        session.raw_command(&command).output(),
    )
    .await;
    ssh::close(session, &options.ssh.masters).await;
    let output = match output {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            return Err((
                Exit::Unreachable,
                format!("cannot read the journal of host `{host}`: {e}"),
            ));
        }
        Err(_) => {
            return Err((
                Exit::Timeout,
                format!(
                    "host `{host}` did not send its journal within {:.0?}",
                    options.agent_timeout
                ),
            ));
        }
    };
    // Records are appended in time order: the last one of a step is its latest deploy.
    let mut latest: BTreeMap<String, bool> = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(record) = JournalRecord::parse(line) else {
            continue;
        };
        if record.environment != plan.environment {
            continue;
        }
        if let Some((root, outcome)) = record.step() {
            let converged = matches!(outcome, RootOutcome::Changed | RootOutcome::Unchanged);
            latest.insert(root.to_string(), converged);
        }
    }
    Ok(latest)
}

/// Carries out the scheduler's actions: steps and finishes go to the hosts' tasks, events to
/// the sink.
fn perform(
    actions: Vec<Action>,
    downs: &BTreeMap<String, mpsc::UnboundedSender<Down>>,
    plan: &RemotePlan,
    sink: &mut dyn EventSink,
) {
    for action in actions {
        match action {
            Action::Start { host, step } => {
                let _ = downs[&host].send(Down::Step(step, plan.steps[step].root.clone(), None));
            }
            Action::StartRollout {
                host,
                step,
                rollout,
            } => {
                let root = plan.steps[step].root.clone();
                let _ = downs[&host].send(Down::Step(step, root, Some(rollout)));
            }
            Action::Finish { host } => {
                let _ = downs[&host].send(Down::Finish);
            }
            Action::Cancel { host } => {
                let _ = downs[&host].send(Down::Cancel);
            }
            Action::Predict { host, roots } => {
                let _ = downs[&host].send(Down::Predict(roots));
            }
            Action::Emit(event) => sink.event(event),
        }
    }
}

/// What one host's task needs: how to reach the host, its job, the agent to ship, and the
/// semaphore that bounds how many hosts are prepared at once.
struct HostTask {
    host: RemoteHost,
    job: HostJob,
    agent: Arc<AgentBinary>,
    controller: Controller,
    options: DeployOptions,
    setup: Arc<Semaphore>,
}

/// Connects to `host`, ships the agent when the host lacks it (reporting the upload to
/// `on_event`) and starts an agent session for `purpose`; the SSH master is closed again
/// when that fails.
pub(crate) async fn open_session(
    host: &RemoteHost,
    job: &HostJob,
    agent: &AgentBinary,
    controller: &Controller,
    options: &DeployOptions,
    purpose: Purpose,
    on_event: impl Fn(Event),
) -> Result<(Arc<openssh::Session>, AgentSession), HostFailure> {
    let detail = |message: String| {
        on_event(Event::Detail {
            host: host.name.clone(),
            component: String::new(),
            message,
        })
    };
    detail(format!(
        "connecting: {}",
        ssh::describe_connect(host, &options.ssh)
    ));
    let connecting = std::time::Instant::now();
    let session = ssh::connect(host, &options.ssh)
        .await
        .map_err(|err| connect_failure(&err))?;
    detail(format!(
        "connected in {:.2} s",
        connecting.elapsed().as_secs_f64()
    ));
    let upload_deadline = options.agent_timeout.max(Duration::from_secs(120));
    let (remote, sent) =
        match ensure_agent(&session, agent, host, options.dry_run, upload_deadline).await {
            Ok(ensured) => ensured,
            Err(err) => {
                ssh::close(session, &options.ssh.masters).await;
                return Err(session_failure(&err));
            }
        };
    if sent > 0 {
        on_event(Event::AgentUploaded {
            host: host.name.clone(),
            bytes: sent,
        });
    } else {
        detail(format!(
            "agent {} is on the host already",
            &agent.sha256[..12.min(agent.sha256.len())]
        ));
    }
    let prepared = async {
        // Bundles go into the host's store before any step; a dry run uploads nothing.
        if purpose == Purpose::Deploy && !options.dry_run {
            crate::ship::ship_bundles(&session, &remote, job, upload_deadline, &on_event).await?;
        }
        AgentSession::start(
            Arc::clone(&session),
            &remote,
            job,
            options.dry_run,
            purpose,
            controller,
            options.agent_timeout,
        )
        .await
    };
    match prepared.await {
        Ok(agent_session) => Ok((session, agent_session)),
        Err(err) => {
            remote.discard(&session).await;
            ssh::close(session, &options.ssh.masters).await;
            Err(session_failure(&err))
        }
    }
}

/// Prepares the host, then runs the steps the loop sends until it says finish.
async fn host_task(
    task: HostTask,
    mut down: mpsc::UnboundedReceiver<Down>,
    up: mpsc::UnboundedSender<Up>,
) {
    let HostTask {
        host,
        job,
        agent,
        controller,
        options,
        setup,
    } = task;
    let name = host.name.clone();
    let permit = setup
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    if options.interrupt.is_raised() {
        let _ = up.send(Up::Report(name, Report::Cancelled));
        return;
    }
    let opened = open_session(
        &host,
        &job,
        &agent,
        &controller,
        &options,
        Purpose::Deploy,
        |e| {
            let _ = up.send(Up::Event(e));
        },
    )
    .await;
    let (session, mut agent_session) = match opened {
        Ok(opened) => opened,
        Err(failure) => {
            let _ = up.send(Up::Report(name, Report::SetupFailed(failure)));
            return;
        }
    };
    // Orphans are reported (and pruned) while the host is prepared, before its first step, so
    // that what a removed root left (a port, a path) is gone before its successor starts.
    let events = up.clone();
    let orphans = agent_session
        .orphans(options.prune, move |e| {
            let _ = events.send(Up::Event(e));
        })
        .await;
    let failed = match orphans {
        Ok(failed) if failed.is_empty() => None,
        Ok(failed) => {
            let mut error = vec!["the prune failed".to_string()];
            error.extend(failed);
            Some(HostFailure::new(HostStatus::Failed, error))
        }
        Err(err) => Some(session_failure(&err)),
    };
    if let Some(failure) = failed {
        let _ = agent_session.finish().await;
        ssh::close(session, &options.ssh.masters).await;
        let _ = up.send(Up::Report(name, Report::SetupFailed(failure)));
        return;
    }
    drop(permit);
    let _ = up.send(Up::Report(name.clone(), Report::Ready));
    // The steps out on the agent, oldest (running) first, each with whether it drains the
    // balancer; and a command that waits until they are done (`predict`, `finish`).
    let mut sent: VecDeque<(usize, bool)> = VecDeque::new();
    let mut held: Option<Down> = None;
    loop {
        let next = if sent.is_empty() {
            match held.take() {
                Some(cmd) => Next::Command(Some(cmd)),
                None => Next::Command(down.recv().await),
            }
        } else {
            // Steps the scheduler sends ahead go out at once, while the agent works.
            tokio::select! {
                biased;
                cmd = down.recv(), if held.is_none() => Next::Command(cmd),
                msg = agent_session.step_message() => Next::Agent(msg),
            }
        };
        let cmd = match next {
            Next::Command(None) => return,
            Next::Command(Some(cmd)) => cmd,
            Next::Agent(Ok(StepMessage::Event(e))) => {
                let _ = up.send(Up::Event(e));
                continue;
            }
            Next::Agent(Ok(StepMessage::Finished(_, outcome))) => {
                let (step, drain) = sent.pop_front().expect("a step is out");
                // Requests in flight to the drained hosts end, and the balancer's reload
                // takes effect, before the batch converges.
                let wait = options.rollout.as_ref().map(|r| r.drain_wait);
                if let (true, RootOutcome::Changed, Some(wait)) = (drain, outcome, wait) {
                    tokio::time::sleep(wait).await;
                }
                let _ = up.send(Up::Report(name.clone(), Report::StepDone { step, outcome }));
                continue;
            }
            Next::Agent(Err(err)) => {
                let (step, _) = sent.pop_front().expect("a step is out");
                let failure = session_failure(&err);
                let _ = up.send(Up::Report(name.clone(), Report::Broken { step, failure }));
                drop(agent_session);
                ssh::close(session, &options.ssh.masters).await;
                let _ = up.send(Up::Report(name, Report::Closed));
                return;
            }
        };
        match cmd {
            Down::Step(step, root, rollout) => {
                let drain = rollout
                    .as_ref()
                    .is_some_and(|r| r.hook == Some(batou_core::rollout::Hook::Drain));
                if let Err(err) = agent_session.send_step(&root, rollout).await {
                    // The step that was running, or this one when none was.
                    let step = sent.front().map_or(step, |(running, _)| *running);
                    let failure = session_failure(&err);
                    let _ = up.send(Up::Report(name.clone(), Report::Broken { step, failure }));
                    drop(agent_session);
                    ssh::close(session, &options.ssh.masters).await;
                    let _ = up.send(Up::Report(name, Report::Closed));
                    return;
                }
                sent.push_back((step, drain));
            }
            // A lost session is noticed by the next read.
            Down::Cancel => {
                let _ = agent_session.cancel().await;
            }
            cmd @ (Down::Predict(_) | Down::Finish) if !sent.is_empty() => held = Some(cmd),
            Down::Predict(roots) => match agent_session.predict(&roots).await {
                Ok(changed) => {
                    let would_change = !changed.is_empty();
                    let _ = up.send(Up::Report(name.clone(), Report::Predicted { would_change }));
                }
                Err(err) => {
                    let failure = session_failure(&err);
                    let _ = up.send(Up::Report(name.clone(), Report::SetupFailed(failure)));
                    drop(agent_session);
                    ssh::close(session, &options.ssh.masters).await;
                    return;
                }
            },
            Down::Finish => {
                if let Err(err) = agent_session.finish().await {
                    let _ = up.send(Up::Event(Event::Log {
                        host: name.clone(),
                        component: String::new(),
                        message: format!("ending the agent session failed: {err}"),
                    }));
                }
                ssh::close(session, &options.ssh.masters).await;
                let _ = up.send(Up::Report(name, Report::Closed));
                return;
            }
        }
    }
}
