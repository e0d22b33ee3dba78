//! Scheduling a remote plan: hosts in parallel, each host one step at a time in plan order,
//! every step as soon as the steps it depends on (on any host) are done.
//!
//! All hosts are connected, given the agent and locked before the first step runs, so a host
//! that cannot be reached or is locked stops the run before anything changed (unless
//! `keep_going`). After a failure no new step starts; with `keep_going` every step that does
//! not depend on the failure still runs.
//!
//! An [`Interrupt`] (the first SIGINT or SIGTERM) works like a failure that nothing depends
//! on: no new step starts, every agent finishes the step it is running (for at most the
//! agent timeout), and every session ends with `finish`, so that journals are complete and
//! locks released. The hosts left with steps not run are reported as `interrupted`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use batou_core::protocol::{Controller, HostJob, RemoteHost, RemotePlan};
use batou_core::{Event, EventSink, HostSummary, RootOutcome};
use batou_local::Exit;
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::agent::{AgentBinary, AgentSession, SessionError, ensure_agent};
use crate::ssh::{self, ConnectError, SshOptions};

/// How to run a remote plan.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    pub dry_run: bool,
    pub keep_going: bool,
    /// Hosts deploying at the same time.
    pub jobs: usize,
    /// Longest silence accepted from an agent (it sends heartbeats while working).
    pub agent_timeout: Duration,
    pub ssh: SshOptions,
    /// Limit the run to these hosts.
    pub hosts: Option<BTreeSet<String>>,
    /// Raised when the run must stop starting steps.
    pub interrupt: Interrupt,
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
    pub hosts: Vec<HostSummary>,
    pub exit: Exit,
    pub seconds: f64,
}

#[derive(Debug, Clone)]
enum StepState {
    /// Not part of this run (`--hosts`).
    Excluded,
    Pending,
    Running,
    Done(RootOutcome),
    /// Not run: the reason says why (a dependency failed, the run stopped, ...).
    NotRun(String),
    /// Not started because the run was interrupted.
    Interrupted,
    /// The agent died or went silent during this step.
    Unknown,
}

/// A host's failure, with the exit status it implies.
#[derive(Debug, Clone)]
struct HostFailure {
    status: &'static str,
    exit: Exit,
    error: Vec<String>,
}

impl HostFailure {
    fn connect(err: &ConnectError) -> Self {
        let (status, exit) = match err {
            ConnectError::HostKey(_) => ("host_key_refused", Exit::HostKeyOrAuthRefused),
            ConnectError::Auth(_) => ("auth_refused", Exit::HostKeyOrAuthRefused),
            ConnectError::Unreachable(_) => ("unreachable", Exit::Unreachable),
            ConnectError::Timeout(_) => ("unreachable", Exit::Unreachable),
        };
        HostFailure {
            status,
            exit,
            error: vec![err.to_string()],
        }
    }

    fn session(err: &SessionError) -> Self {
        let (status, exit) = match err {
            SessionError::LockHeld(_) => ("lock_held", Exit::LockHeld),
            SessionError::Timeout(_) | SessionError::Died { .. } => ("timeout", Exit::Timeout),
            SessionError::Refused(_) | SessionError::Failed(_) => ("failed", Exit::DeployFailed),
        };
        HostFailure {
            status,
            exit,
            error: vec![err.to_string()],
        }
    }
}

enum Up {
    Ready(String),
    /// The run was interrupted before the host was prepared: it was not contacted.
    Cancelled(String),
    SetupFailed(String, HostFailure),
    Event(Event),
    StepDone(usize, RootOutcome),
    Broken(String, usize, SessionError),
    Closed(String),
}

enum Down {
    Step(usize, String),
    Finish,
}

struct HostRun {
    queue: VecDeque<usize>,
    down: mpsc::UnboundedSender<Down>,
    ready: bool,
    busy: bool,
    failure: Option<HostFailure>,
    closed: bool,
}

/// Deploys `plan` with `agent`, reporting events to `sink` as they happen.
pub async fn deploy(
    plan: &RemotePlan,
    agent: Arc<AgentBinary>,
    controller: Controller,
    options: &DeployOptions,
    sink: &mut dyn EventSink,
) -> RunReport {
    let started = Instant::now();
    let in_run = |host: &str| options.hosts.as_ref().is_none_or(|h| h.contains(host));
    let mut state: Vec<StepState> = plan
        .steps
        .iter()
        .map(|s| {
            if in_run(&s.host) {
                StepState::Pending
            } else {
                StepState::Excluded
            }
        })
        .collect();

    let (up_tx, mut up) = mpsc::unbounded_channel::<Up>();
    let setup = Arc::new(Semaphore::new(options.jobs.max(1)));
    let mut hosts: BTreeMap<String, HostRun> = BTreeMap::new();
    for host in &plan.hosts {
        if !in_run(&host.name) {
            continue;
        }
        let Some(job) = plan.host_jobs.get(&host.name) else {
            continue;
        };
        let (down_tx, down_rx) = mpsc::unbounded_channel();
        let queue = plan
            .order
            .iter()
            .copied()
            .filter(|i| plan.steps[*i].host == host.name)
            .collect();
        hosts.insert(
            host.name.clone(),
            HostRun {
                queue,
                down: down_tx,
                ready: false,
                busy: false,
                failure: None,
                closed: false,
            },
        );
        tokio::spawn(host_task(
            host.clone(),
            job.clone(),
            Arc::clone(&agent),
            controller.clone(),
            options.clone(),
            Arc::clone(&setup),
            down_rx,
            up_tx.clone(),
        ));
    }
    drop(up_tx);

    // Phase one: every host connected, shipped and locked, or failed.
    let mut waiting = hosts.len();
    while waiting > 0 {
        let Some(msg) = up.recv().await else { break };
        match msg {
            Up::Ready(host) => {
                hosts.get_mut(&host).expect("known host").ready = true;
                waiting -= 1;
            }
            Up::SetupFailed(host, failure) => {
                sink.event(Event::HostFailed {
                    host: host.clone(),
                    status: failure.status.to_string(),
                    error: failure.error.clone(),
                });
                let h = hosts.get_mut(&host).expect("known host");
                h.failure = Some(failure);
                h.closed = true;
                waiting -= 1;
            }
            Up::Cancelled(host) => {
                hosts.get_mut(&host).expect("known host").closed = true;
                waiting -= 1;
            }
            Up::Event(e) => sink.event(e),
            Up::Closed(host) => hosts.get_mut(&host).expect("known host").closed = true,
            Up::StepDone(..) | Up::Broken(..) => {
                unreachable!("no step runs before all hosts are ready")
            }
        }
    }
    let setup_failed = hosts.values().any(|h| h.failure.is_some());
    let mut interrupted = options.interrupt.is_raised();
    let mut stop = (setup_failed && !options.keep_going) || interrupted;
    // After an interrupt, running steps get the agent timeout to finish.
    let mut grace = tokio::time::Instant::now() + options.agent_timeout;
    for (name, h) in hosts.iter_mut() {
        if let Some(f) = &h.failure {
            for step in h.queue.drain(..) {
                state[step] = StepState::NotRun(format!("host {}", f.status.replace('_', " ")));
                let _ = name;
            }
        }
    }

    // Phase two: run steps as their dependencies allow.
    let mut running = 0usize;
    loop {
        if !stop {
            for (name, h) in hosts.iter_mut() {
                if !h.ready || h.busy || h.failure.is_some() {
                    continue;
                }
                while let Some(&step) = h.queue.front() {
                    match dependencies(plan, &state, step) {
                        Deps::Waiting => break,
                        Deps::Blocked(reason) => {
                            h.queue.pop_front();
                            sink.event(Event::Skipped {
                                host: name.clone(),
                                component: plan.steps[step].root.clone(),
                                reason: reason.clone(),
                            });
                            state[step] = StepState::NotRun(reason);
                        }
                        Deps::Done => {
                            if running >= options.jobs.max(1) {
                                break;
                            }
                            h.queue.pop_front();
                            let _ = h.down.send(Down::Step(step, plan.steps[step].root.clone()));
                            h.busy = true;
                            running += 1;
                            state[step] = StepState::Running;
                            break;
                        }
                    }
                }
            }
        }
        if running == 0 {
            break;
        }
        let msg = tokio::select! {
            msg = up.recv() => msg,
            () = options.interrupt.raised(), if !interrupted => {
                interrupted = true;
                stop = true;
                grace = tokio::time::Instant::now() + options.agent_timeout;
                continue;
            }
            () = tokio::time::sleep_until(grace), if interrupted => {
                // Steps still running: their hosts' state is unknown.
                for (i, s) in state.iter_mut().enumerate() {
                    if matches!(s, StepState::Running) {
                        *s = StepState::Unknown;
                        let h = hosts.get_mut(&plan.steps[i].host).expect("known host");
                        h.failure = Some(HostFailure {
                            status: "interrupted",
                            exit: Exit::Timeout,
                            error: vec![format!(
                                "`{}` was still running {:.0?} after the interrupt: the host's state is unknown",
                                plan.steps[i].root, options.agent_timeout
                            )],
                        });
                    }
                }
                break;
            }
        };
        let Some(msg) = msg else { break };
        match msg {
            Up::Event(e) => sink.event(e),
            Up::StepDone(step, outcome) => {
                running -= 1;
                state[step] = StepState::Done(outcome);
                let host = &plan.steps[step].host;
                let h = hosts.get_mut(host).expect("known host");
                h.busy = false;
                if outcome == RootOutcome::Failed {
                    h.failure = Some(HostFailure {
                        status: "failed",
                        exit: Exit::DeployFailed,
                        error: vec![format!("`{}` failed", plan.steps[step].root)],
                    });
                    for later in h.queue.drain(..) {
                        state[later] = StepState::NotRun(
                            "an earlier root component on this host failed".into(),
                        );
                    }
                    stop |= !options.keep_going;
                }
            }
            Up::Broken(host, step, err) => {
                running -= 1;
                let failure = HostFailure::session(&err);
                sink.event(Event::HostFailed {
                    host: host.clone(),
                    status: failure.status.to_string(),
                    error: failure.error.clone(),
                });
                state[step] = StepState::Unknown;
                let h = hosts.get_mut(&host).expect("known host");
                h.busy = false;
                h.failure = Some(failure);
                for later in h.queue.drain(..) {
                    state[later] = StepState::NotRun("the host's state is unknown".into());
                }
                stop |= !options.keep_going;
            }
            Up::Closed(host) => hosts.get_mut(&host).expect("known host").closed = true,
            Up::Ready(_) | Up::SetupFailed(..) | Up::Cancelled(_) => {}
        }
    }
    let reason = if interrupted {
        "not started: the deploy was interrupted"
    } else if setup_failed {
        "not started: another host could not be prepared"
    } else {
        "not started: the deploy stopped after a failure"
    };
    for (name, h) in hosts.iter_mut() {
        for step in h.queue.drain(..) {
            sink.event(Event::Skipped {
                host: name.clone(),
                component: plan.steps[step].root.clone(),
                reason: reason.to_string(),
            });
            state[step] = if interrupted {
                StepState::Interrupted
            } else {
                StepState::NotRun(reason.to_string())
            };
        }
    }

    // End every session: agents write their journal records and exit; masters close.
    for h in hosts.values() {
        if !h.closed {
            let _ = h.down.send(Down::Finish);
        }
    }
    let mut finish_deadline =
        tokio::time::Instant::now() + options.agent_timeout + Duration::from_secs(5);
    if interrupted {
        finish_deadline = finish_deadline.min(grace + Duration::from_secs(5));
    }
    while hosts.values().any(|h| !h.closed) {
        match tokio::time::timeout_at(finish_deadline, up.recv()).await {
            Ok(Some(Up::Closed(host))) => hosts.get_mut(&host).expect("known host").closed = true,
            Ok(Some(Up::Event(e))) => sink.event(e),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }

    let seconds = started.elapsed().as_secs_f64();
    let mut exit = Exit::Success;
    let mut summaries = Vec::new();
    for (name, h) in &hosts {
        let steps: Vec<usize> = (0..plan.steps.len())
            .filter(|i| plan.steps[*i].host == *name)
            .collect();
        let roots = |f: &dyn Fn(&StepState) -> bool| -> Vec<String> {
            steps
                .iter()
                .filter(|i| f(&state[**i]))
                .map(|i| plan.steps[*i].root.clone())
                .collect()
        };
        let changed = roots(&|s| matches!(s, StepState::Done(RootOutcome::Changed)));
        let unchanged = roots(&|s| matches!(s, StepState::Done(RootOutcome::Unchanged)));
        let failed =
            roots(&|s| matches!(s, StepState::Done(RootOutcome::Failed) | StepState::Unknown));
        let not_run = roots(&|s| {
            matches!(
                s,
                StepState::NotRun(_) | StepState::Pending | StepState::Interrupted
            )
        });
        let not_started = roots(&|s| matches!(s, StepState::Interrupted));
        if !not_started.is_empty() {
            sink.event(Event::Interrupted {
                host: name.clone(),
                not_started: not_started.clone(),
            });
        }
        sink.event(Event::HostFinished {
            host: name.clone(),
            dry_run: options.dry_run,
            changed: changed.clone(),
            unchanged: unchanged.clone(),
            failed: failed.clone(),
            not_attempted: not_run.clone(),
            seconds,
        });
        let (status, detail) = if let Some(f) = &h.failure {
            exit = exit.worst(f.exit);
            if f.status == "interrupted" {
                exit = exit.worst(Exit::Interrupted);
            }
            (f.status.to_string(), f.error.join(": "))
        } else if !not_started.is_empty() {
            exit = exit.worst(Exit::Interrupted);
            let verb = if options.dry_run {
                "would change"
            } else {
                "changed"
            };
            let mut parts = Vec::new();
            if !changed.is_empty() {
                parts.push(format!("{verb}: {}", changed.join(", ")));
            }
            if !unchanged.is_empty() {
                parts.push(format!("unchanged: {}", unchanged.join(", ")));
            }
            parts.push(format!("not started: {}", not_started.join(", ")));
            ("interrupted".to_string(), parts.join("; "))
        } else if !not_run.is_empty() && changed.is_empty() && unchanged.is_empty() {
            let why = steps
                .iter()
                .find_map(|i| match &state[*i] {
                    StepState::NotRun(r) => Some(r.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let status = if why.starts_with("not started") {
                "not_attempted"
            } else {
                "skipped"
            };
            (status.to_string(), why)
        } else if !changed.is_empty() {
            let verb = if options.dry_run {
                "would change"
            } else {
                "changed"
            };
            (
                "changed".to_string(),
                format!("{verb}: {}", changed.join(", ")),
            )
        } else {
            ("unchanged".to_string(), String::new())
        };
        summaries.push(HostSummary {
            host: name.clone(),
            status,
            detail,
        });
    }
    // Hosts left out because of another host's failure carry that host's exit status; only
    // when nothing else failed do they count as a failed deploy.
    if exit == Exit::Success
        && summaries
            .iter()
            .any(|s| s.status == "skipped" || s.status == "not_attempted")
    {
        exit = Exit::DeployFailed;
    }
    sink.event(Event::RunFinished {
        hosts: summaries.clone(),
        seconds,
    });
    RunReport {
        hosts: summaries,
        exit,
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
        return Err(batou_local::ExitError { exit, error }.into());
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
        ssh::Word::Home(format!(
            "{}/.batou/journal.jsonl",
            base.trim_end_matches('/')
        ))
    };
    let session = ssh::connect(remote, &options.ssh)
        .await
        .map_err(|e| (HostFailure::connect(&e).exit, format!("host `{host}` {e}")))?;
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
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if record["record"] == "step"
            && record["environment"] == plan.environment.as_str()
            && let Some(root) = record["component"].as_str()
        {
            let converged = record["outcome"] == "changed" || record["outcome"] == "unchanged";
            latest.insert(root.to_string(), converged);
        }
    }
    Ok(latest)
}

enum Deps {
    Done,
    Waiting,
    Blocked(String),
}

fn dependencies(plan: &RemotePlan, state: &[StepState], step: usize) -> Deps {
    let mut waiting = false;
    for dep in &plan.steps[step].after {
        let label = format!("{}: {}", plan.steps[*dep].host, plan.steps[*dep].root);
        match &state[*dep] {
            // Checked before the run: deployed earlier, according to its host's journal.
            StepState::Excluded => {}
            StepState::Done(RootOutcome::Changed | RootOutcome::Unchanged) => {}
            StepState::Pending | StepState::Running => waiting = true,
            StepState::Done(_) | StepState::Unknown => {
                return Deps::Blocked(format!("it depends on `{label}`, which failed"));
            }
            StepState::NotRun(_) | StepState::Interrupted => {
                return Deps::Blocked(format!("it depends on `{label}`, which did not run"));
            }
        }
    }
    if waiting { Deps::Waiting } else { Deps::Done }
}

#[allow(clippy::too_many_arguments)]
async fn host_task(
    host: RemoteHost,
    job: HostJob,
    agent: Arc<AgentBinary>,
    controller: Controller,
    options: DeployOptions,
    setup: Arc<Semaphore>,
    mut down: mpsc::UnboundedReceiver<Down>,
    up: mpsc::UnboundedSender<Up>,
) {
    let name = host.name.clone();
    let permit = setup
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    if options.interrupt.is_raised() {
        let _ = up.send(Up::Cancelled(name));
        return;
    }
    let session = match ssh::connect(&host, &options.ssh).await {
        Ok(session) => session,
        Err(err) => {
            let _ = up.send(Up::SetupFailed(name, HostFailure::connect(&err)));
            return;
        }
    };
    let upload_deadline = options.agent_timeout.max(Duration::from_secs(120));
    let prepared = async {
        if ensure_agent(&session, &agent, upload_deadline).await? {
            let _ = up.send(Up::Event(Event::AgentUploaded {
                host: name.clone(),
                bytes: agent.size,
            }));
        }
        AgentSession::start(
            Arc::clone(&session),
            &agent,
            &job,
            options.dry_run,
            &controller,
            options.agent_timeout,
        )
        .await
    };
    let mut agent_session = match prepared.await {
        Ok(s) => s,
        Err(err) => {
            let _ = up.send(Up::SetupFailed(name, HostFailure::session(&err)));
            ssh::close(session, &options.ssh.masters).await;
            return;
        }
    };
    drop(permit);
    let _ = up.send(Up::Ready(name.clone()));
    while let Some(cmd) = down.recv().await {
        match cmd {
            Down::Step(step, root) => {
                let events = up.clone();
                match agent_session
                    .step(&root, move |e| {
                        let _ = events.send(Up::Event(e));
                    })
                    .await
                {
                    Ok(outcome) => {
                        let _ = up.send(Up::StepDone(step, outcome));
                    }
                    Err(err) => {
                        let _ = up.send(Up::Broken(name.clone(), step, err));
                        drop(agent_session);
                        ssh::close(session, &options.ssh.masters).await;
                        let _ = up.send(Up::Closed(name));
                        return;
                    }
                }
            }
            Down::Finish => {
                if let Err(err) = agent_session.finish().await {
                    let _ = up.send(Up::Event(Event::Log {
                        host: name.clone(),
                        component: String::new(),
                        message: format!("ending the agent session failed: {err}"),
                    }));
                }
                ssh::close(session, &options.ssh.masters).await;
                let _ = up.send(Up::Closed(name));
                return;
            }
        }
    }
}
