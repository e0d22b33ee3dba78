//! The controller's scheduler: which step runs next, what a host's report changes, and how
//! the run ends. Synchronous and free of I/O, so that it is tested with canned reports.
//!
//! The async loop in `schedule.rs` owns the SSH sessions and channels: it feeds the
//! scheduler what hosts report ([`Scheduler::report`]), carries out the [`Action`]s it
//! returns, and asks for the summary at the end ([`Scheduler::finish`]).
//!
//! The rules:
//! - every host of the run is prepared (connected, given the agent, locked) before the first
//!   step; a host that cannot be prepared stops the run before anything changes, unless
//!   `keep_going`;
//! - each host runs one step at a time in plan order, a step only when every step it depends
//!   on (on any host) finished `changed` or `unchanged`, at most `jobs` hosts at once;
//! - a host's agent may hold up to `pipeline` steps: the running one and the ones queued
//!   behind it, sent ahead so that the next one starts without waiting for a round trip to
//!   the controller. A step is sent ahead only when every step it depends on is done or is
//!   queued ahead of it on the same host (never in a dry run, nor in a rollout). An agent
//!   does not run the steps queued behind a step that failed (it answers `not_attempted`),
//!   and when the run stops (a failure elsewhere, an interrupt) the scheduler cancels the
//!   queued steps of every host ([`Action::Cancel`]), so that no new step starts;
//! - a step whose dependency failed or did not run is skipped with the reason; after a failure
//!   no new step starts (unless `keep_going`), nor after an interrupt;
//! - a host is finished as soon as it can do nothing more: it is told to end its session at
//!   once, and its `host_finished` event carries its own time;
//! - an interrupt ([`Scheduler::interrupt`]) works like a failure that nothing depends on:
//!   no new step starts, running steps finish, every session ends; hosts left with steps not
//!   run are `interrupted`. A step still running when the grace after the interrupt ends
//!   ([`Scheduler::grace_expired`]) leaves its host's state unknown;
//! - a dry run changes nothing, so a failure stops nothing but the prediction that failed:
//!   every host that can be prepared is predicted, also a failed step's host (its later
//!   steps) and steps that depend on a step that failed or was not predicted. Those are
//!   predicted as if the step they depend on would succeed, and a log line says so; the
//!   failed host still fails the run;
//! - with a rollout (`rollout.rs`), rolled hosts start their steps only while their batch
//!   converges, the balancer's step converges again around each batch (drain, undrain),
//!   and a rolled host's failure counts against the budget instead of stopping the run; a
//!   dry run predicts every host as without a rollout.

use std::collections::{BTreeMap, VecDeque};

use crate::Exit;
use crate::rollout::{Move, Rollout, RolloutPlan, World};
use batou_core::protocol::PlanStep;
use batou_core::rollout::StepRollout;
use batou_core::{Event, HostStatus, HostSummary, RootOutcome};

/// The exit status a host with `status` gives the run on its own; `None` for hosts left
/// out because of another host, which take that host's code.
pub fn exit_of(status: HostStatus) -> Option<Exit> {
    match status {
        HostStatus::Changed | HostStatus::Unchanged => Some(Exit::Success),
        HostStatus::Failed => Some(Exit::DeployFailed),
        HostStatus::Unreachable => Some(Exit::Unreachable),
        HostStatus::HostKeyRefused | HostStatus::AuthRefused => Some(Exit::HostKeyOrAuthRefused),
        HostStatus::BecomeRefused => Some(Exit::BecomeRefused),
        HostStatus::LockHeld => Some(Exit::LockHeld),
        HostStatus::Timeout => Some(Exit::Timeout),
        HostStatus::Interrupted => Some(Exit::Interrupted),
        HostStatus::Skipped | HostStatus::NotAttempted => None,
    }
}

/// Why a host stopped: its status and the cause chain for people.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFailure {
    /// How the host failed.
    pub status: HostStatus,
    /// The cause chain, outermost first.
    pub error: Vec<String>,
    /// Whether the host's state is unknown (a step may still be running), whatever the
    /// status: the run then exits with `timeout`.
    pub state_unknown: bool,
}

impl HostFailure {
    /// A failure with this status and cause chain.
    pub fn new(status: HostStatus, error: Vec<String>) -> HostFailure {
        HostFailure {
            status,
            error,
            state_unknown: status == HostStatus::Timeout,
        }
    }

    /// The exit status this failure gives the run.
    pub fn exit(&self) -> Exit {
        if self.state_unknown {
            Exit::Timeout
        } else {
            exit_of(self.status).unwrap_or(Exit::DeployFailed)
        }
    }
}

/// What a host's task reports to the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// Connected, agent shipped and started, lock taken, job configured.
    Ready,
    /// The host could not be prepared.
    SetupFailed(HostFailure),
    /// The run was interrupted before the host was prepared: it was not contacted.
    Cancelled,
    /// A step finished on the host.
    StepDone {
        /// The step's index in the plan.
        step: usize,
        /// How the step ended.
        outcome: RootOutcome,
    },
    /// The session broke during a step (agent died or went silent).
    Broken {
        /// The index of the step that was running.
        step: usize,
        /// Why the session broke.
        failure: HostFailure,
    },
    /// The host's task ended: its session is closed.
    Closed,
    /// A rolled host predicted its steps before its batch is drained.
    Predicted {
        /// Whether any of them would change.
        would_change: bool,
    },
}

/// What the scheduler asks the async loop to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send step `step` (a root component) to `host`'s agent.
    Start {
        /// The host whose agent runs the step.
        host: String,
        /// The step's index in the plan.
        step: usize,
    },
    /// Tell `host`'s agent to end its session (it writes its journal record and exits).
    Finish {
        /// The host whose session ends.
        host: String,
    },
    /// Emit an event.
    Emit(Event),
    /// Tell `host`'s agent not to run the steps queued behind the running one (it answers
    /// each with `not_attempted`): the run stopped.
    Cancel {
        /// The host whose queued steps are dropped.
        host: String,
    },
    /// Send step `step` to `host`'s agent as part of a rollout: a rolled host's step in its
    /// batch, or the balancer's step converged again to drain or undrain.
    StartRollout {
        /// The host whose agent runs the step.
        host: String,
        /// The step's index in the plan.
        step: usize,
        /// The batch, and for the balancer the hook and the hosts in rotation.
        rollout: StepRollout,
    },
    /// Ask `host`'s agent whether these root components would change (a dry run of them
    /// that reports nothing), before its batch of a rollout is drained.
    Predict {
        /// The rolled host.
        host: String,
        /// Its root components still to run, in plan order.
        roots: Vec<String>,
    },
}

/// How to schedule.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerOptions {
    /// Whether the run only reports what it would change.
    pub dry_run: bool,
    /// Whether the other hosts' steps go on after a host failed (always, in a dry run).
    pub keep_going: bool,
    /// Hosts running steps at the same time.
    pub jobs: usize,
    /// Steps a host's agent may hold at once, the running one included (1: a step is sent
    /// only after the previous one finished).
    pub pipeline: usize,
}

/// The summary of a finished run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// One summary per host.
    pub hosts: Vec<HostSummary>,
    /// The exit status of the run.
    pub exit: Exit,
}

#[derive(Debug, Clone, PartialEq)]
enum StepState {
    /// Not part of this run (`--hosts`): checked against the host's journal beforehand.
    Excluded,
    Pending,
    Running,
    Done(RootOutcome),
    /// Not run; the reason says why.
    NotRun(String),
    /// The agent died or went silent during this step.
    Unknown,
    /// Not started because the run was interrupted.
    Interrupted,
}

#[derive(Debug)]
struct HostRun {
    /// Steps still to run, in plan order.
    queue: VecDeque<usize>,
    /// Every step of the host, in plan order.
    steps: Vec<usize>,
    /// Steps sent to the host's agent and not yet reported, in the order sent: the first
    /// one runs, the others are queued behind it on the host.
    in_flight: VecDeque<usize>,
    /// Whether the queued steps were cancelled because the run stopped.
    cancel_sent: bool,
    ready: bool,
    /// Never contacted: the run was interrupted before its turn to be prepared.
    cancelled: bool,
    busy: bool,
    failure: Option<HostFailure>,
    /// Done: no step will run on it any more; `host_finished` was emitted.
    finished: bool,
    closed: bool,
}

/// Why steps that were never started did not start.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    SetupFailed,
    Failure,
    Interrupted,
}

impl Stop {
    fn reason(self) -> &'static str {
        match self {
            Stop::SetupFailed => "not started: another host could not be prepared",
            Stop::Failure => "not started: the deploy stopped after a failure",
            Stop::Interrupted => "not started: the deploy was interrupted",
        }
    }

    /// What steps that never started because of this stop are.
    fn state(self) -> StepState {
        match self {
            Stop::Interrupted => StepState::Interrupted,
            other => StepState::NotRun(other.reason().to_string()),
        }
    }
}

/// The state of one run: steps, hosts, what is running.
pub struct Scheduler<'p> {
    steps: &'p [PlanStep],
    options: SchedulerOptions,
    state: Vec<StepState>,
    hosts: BTreeMap<String, HostRun>,
    running: usize,
    preparing: bool,
    stop: Option<Stop>,
    rollout: Option<Rollout>,
}

impl<'p> Scheduler<'p> {
    /// A run of `steps` (in environment order) in plan `order`, on `hosts` (the hosts of the
    /// run; steps of other hosts are excluded).
    pub fn new(
        steps: &'p [PlanStep],
        order: &[usize],
        hosts: &[String],
        options: SchedulerOptions,
    ) -> Scheduler<'p> {
        let state = steps
            .iter()
            .map(|s| {
                if hosts.contains(&s.host) {
                    StepState::Pending
                } else {
                    StepState::Excluded
                }
            })
            .collect();
        let hosts = hosts
            .iter()
            .map(|name| {
                let mine: Vec<usize> = order
                    .iter()
                    .copied()
                    .filter(|i| steps[*i].host == *name)
                    .collect();
                let run = HostRun {
                    queue: mine.iter().copied().collect(),
                    steps: mine,
                    in_flight: VecDeque::new(),
                    cancel_sent: false,
                    ready: false,
                    cancelled: false,
                    busy: false,
                    failure: None,
                    finished: false,
                    closed: false,
                };
                (name.clone(), run)
            })
            .collect();
        Scheduler {
            steps,
            options,
            state,
            hosts,
            running: 0,
            preparing: true,
            stop: None,
            rollout: None,
        }
    }

    /// Deploys the rolled hosts of `plan` batch by batch. A dry run ignores it: it predicts
    /// every host at once and drains nothing.
    pub fn with_rollout(mut self, plan: RolloutPlan) -> Self {
        if !self.options.dry_run {
            self.rollout = Some(Rollout::new(plan));
        }
        self
    }

    /// Applies what `host` reported at `now` (seconds since the run started) and returns what
    /// to do next.
    pub fn report(&mut self, host: &str, report: Report, now: f64) -> Vec<Action> {
        let mut actions = Vec::new();
        let keep_going = self.keeps_going();
        let dry_run = self.options.dry_run;
        let Some(h) = self.hosts.get_mut(host) else {
            return actions;
        };
        if matches!(report, Report::Predicted { .. } | Report::SetupFailed(_))
            && self.rollout.as_ref().is_some_and(|r| r.is_predicting(host))
        {
            h.busy = false;
            self.running -= 1;
            if let (Some(r), Report::Predicted { would_change }) = (&mut self.rollout, &report) {
                r.predicted(host, *would_change);
            }
        }
        match report {
            Report::Ready => h.ready = true,
            Report::Predicted { .. } => {}
            Report::Cancelled => {
                for step in h.queue.drain(..) {
                    self.state[step] = StepState::Interrupted;
                }
                h.cancelled = true;
                h.closed = true;
            }
            Report::SetupFailed(failure) => {
                actions.push(Action::Emit(Event::HostFailed {
                    host: host.to_string(),
                    status: failure.status,
                    error: failure.error.clone(),
                }));
                let reason = format!("host {}", failure.status.as_str().replace('_', " "));
                for step in h.queue.drain(..) {
                    self.state[step] = StepState::NotRun(reason.clone());
                }
                h.failure = Some(failure);
                h.closed = true;
                if let Some(r) = &mut self.rollout {
                    r.host_failed(host);
                    // A session lost while predicting: the host fails like any other.
                    r.predicted(host, false);
                }
            }
            Report::StepDone { step, outcome }
                if self.rollout.as_ref().is_some_and(|r| r.is_hook(step)) =>
            {
                let failure = (outcome == RootOutcome::Failed).then(|| {
                    HostFailure::new(
                        HostStatus::Failed,
                        vec![format!(
                            "`{}` failed to drain or undrain the rolled hosts",
                            self.steps[step].root
                        )],
                    )
                });
                self.hook_done(host, step, failure);
            }
            Report::Broken { step, failure }
                if self.rollout.as_ref().is_some_and(|r| r.is_hook(step)) =>
            {
                actions.push(Action::Emit(Event::HostFailed {
                    host: host.to_string(),
                    status: failure.status,
                    error: failure.error.clone(),
                }));
                self.hook_done(host, step, Some(failure));
            }
            Report::StepDone { step, outcome } => {
                if self.state[step] != StepState::Running {
                    // Given up on (the grace after an interrupt ended): its host stays unknown.
                    return actions;
                }
                h.in_flight.retain(|s| *s != step);
                if h.in_flight.is_empty() {
                    self.running -= 1;
                    h.busy = false;
                }
                if outcome == RootOutcome::NotAttempted {
                    // Cancelled on the host because the run stopped: the agent did not run it.
                    let stop = self.stop.unwrap_or(Stop::Failure);
                    actions.push(Action::Emit(Event::Skipped {
                        host: host.to_string(),
                        component: self.steps[step].root.clone(),
                        reason: stop.reason().to_string(),
                    }));
                    self.state[step] = stop.state();
                } else {
                    self.state[step] = StepState::Done(outcome);
                }
                // A failed prediction stops nothing: its host's later steps are predicted
                // too, and the host's status says that it failed (`host_status`).
                if outcome == RootOutcome::Failed && !dry_run {
                    h.failure = Some(HostFailure::new(
                        HostStatus::Failed,
                        vec![format!("`{}` failed", self.steps[step].root)],
                    ));
                    // The agent runs none of the steps queued behind the failed one: their
                    // answers (`not_attempted`) are not waited for.
                    if !h.in_flight.is_empty() {
                        h.busy = false;
                        self.running -= 1;
                    }
                    let queued = h.in_flight.drain(..);
                    for later in queued.chain(h.queue.drain(..)) {
                        self.state[later] = StepState::NotRun(
                            "an earlier root component on this host failed".into(),
                        );
                    }
                    // A rolled host's failure counts against the rollout's budget instead.
                    match self.rollout.as_mut().filter(|r| r.rolls(host)) {
                        Some(r) => r.host_failed(host),
                        None if !keep_going => {
                            self.stop.get_or_insert(Stop::Failure);
                        }
                        None => {}
                    }
                }
            }
            Report::Broken { step, failure } => {
                if self.state[step] != StepState::Running {
                    return actions;
                }
                self.running -= 1;
                actions.push(Action::Emit(Event::HostFailed {
                    host: host.to_string(),
                    status: failure.status,
                    error: failure.error.clone(),
                }));
                self.state[step] = StepState::Unknown;
                h.busy = false;
                h.failure = Some(failure);
                let queued = h.in_flight.drain(..).filter(|s| *s != step);
                for later in queued.chain(h.queue.drain(..)) {
                    self.state[later] = StepState::NotRun("the host's state is unknown".into());
                }
                match self.rollout.as_mut().filter(|r| r.rolls(host)) {
                    Some(r) => r.host_failed(host),
                    None if !keep_going => {
                        self.stop.get_or_insert(Stop::Failure);
                    }
                    None => {}
                }
            }
            Report::Closed => h.closed = true,
        }
        if self.preparing
            && self
                .hosts
                .values()
                .all(|h| h.ready || h.cancelled || h.failure.is_some())
        {
            self.preparing = false;
            if self.hosts.values().any(|h| h.failure.is_some())
                && !keep_going
                && self.stop.is_none()
            {
                self.stop = Some(Stop::SetupFailed);
            }
        }
        self.advance(now, &mut actions);
        actions
    }

    /// The run was interrupted: no new step starts; running steps may finish.
    pub fn interrupt(&mut self, now: f64) -> Vec<Action> {
        let mut actions = Vec::new();
        self.stop = Some(Stop::Interrupted);
        self.advance(now, &mut actions);
        actions
    }

    /// Whether the run was interrupted.
    pub fn is_interrupted(&self) -> bool {
        self.stop == Some(Stop::Interrupted)
    }

    /// The grace after an interrupt is over: steps still running are given up on, and their
    /// hosts' state is unknown. `grace` is how long they had, for the message.
    pub fn grace_expired(&mut self, grace: std::time::Duration, now: f64) -> Vec<Action> {
        let mut actions = Vec::new();
        for (name, h) in self.hosts.iter_mut().filter(|(_, h)| h.busy) {
            let hook = self
                .rollout
                .as_ref()
                .and_then(|r| h.steps.iter().copied().find(|i| r.is_hook(*i)));
            let Some(step) = h
                .steps
                .iter()
                .copied()
                .find(|i| self.state[*i] == StepState::Running)
                .or(hook)
            else {
                continue;
            };
            if let (Some(r), Some(hook)) = (&mut self.rollout, hook) {
                r.hook_done(hook, false);
            } else {
                self.state[step] = StepState::Unknown;
            }
            self.running -= 1;
            h.busy = false;
            let failure = HostFailure {
                status: HostStatus::Interrupted,
                error: vec![format!(
                    "`{}` was still running {grace:.0?} after the interrupt: the host's state is unknown",
                    self.steps[step].root
                )],
                state_unknown: true,
            };
            actions.push(Action::Emit(Event::HostFailed {
                host: name.clone(),
                status: failure.status,
                error: failure.error.clone(),
            }));
            let queued = h.in_flight.drain(..).filter(|s| *s != step);
            for later in queued.chain(h.queue.drain(..)) {
                self.state[later] = StepState::Interrupted;
            }
            h.failure = Some(failure);
        }
        self.stop = Some(Stop::Interrupted);
        self.advance(now, &mut actions);
        actions
    }

    /// Whether every host is finished and its session closed: the run is over.
    pub fn is_over(&self) -> bool {
        self.hosts.values().all(|h| h.finished && h.closed)
    }

    /// Whether no step will run any more (sessions may still be closing).
    pub fn is_finished(&self) -> bool {
        self.hosts.values().all(|h| h.finished)
    }

    /// Ends the run: every host's summary, the exit status, and the `run_finished` event
    /// (last in the returned events).
    pub fn finish(&mut self, now: f64) -> (Outcome, Vec<Event>) {
        let mut actions = Vec::new();
        // A host still running a step here never answered: its state is unknown.
        for h in self.hosts.values_mut().filter(|h| h.busy) {
            h.busy = false;
            h.in_flight.clear();
            self.running -= 1;
            for step in &h.steps {
                if self.state[*step] == StepState::Running {
                    self.state[*step] = StepState::Unknown;
                }
            }
            h.failure = Some(HostFailure::new(
                HostStatus::Timeout,
                vec!["the session ended during a step: the host's state is unknown".into()],
            ));
        }
        // Whatever has not started now never will.
        self.stop.get_or_insert(Stop::Failure);
        self.advance(now, &mut actions);
        let mut events: Vec<Event> = actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Emit(e) => Some(e),
                _ => None,
            })
            .collect();
        let mut exit = Exit::Success;
        let mut hosts = Vec::new();
        for name in self.hosts.keys() {
            let (status, detail) = self.host_status(name);
            let code = match &self.hosts[name].failure {
                Some(failure) => Some(failure.exit()),
                None => exit_of(status),
            };
            if let Some(code) = code {
                exit = exit.worst(code);
            }
            hosts.push(HostSummary {
                host: name.clone(),
                status,
                detail,
            });
        }
        // Hosts left out because of another host's failure carry that host's exit status;
        // only when nothing else failed do they count as a failed deploy.
        if exit == Exit::Success
            && hosts
                .iter()
                .any(|s| matches!(s.status, HostStatus::Skipped | HostStatus::NotAttempted))
        {
            exit = Exit::DeployFailed;
        }
        events.push(Event::RunFinished {
            hosts: hosts.clone(),
            seconds: now,
        });
        (Outcome { hosts, exit }, events)
    }

    /// Starts what can start, skips what cannot run, finishes hosts that can do nothing more.
    fn advance(&mut self, now: f64, actions: &mut Vec<Action>) {
        if self.preparing {
            return;
        }
        loop {
            if self.stop.is_none() {
                self.start_ready_steps(actions);
            }
            // The rollout first: rolled hosts it gives up on are not started for its reason.
            if self.advance_rollout(actions) {
                continue;
            }
            let names: Vec<String> = self.hosts.keys().cloned().collect();
            for name in &names {
                self.finish_host_if_done(name, now, actions);
            }
            if self.advance_rollout(actions) {
                continue;
            }
            if self.stop.is_some() {
                self.cancel_queued_steps(actions);
            }
            // Nothing runs and nothing can start: whatever is left waits for nothing.
            if self.running == 0 && self.stop.is_none() {
                let stuck = self
                    .hosts
                    .values()
                    .any(|h| h.failure.is_none() && !h.queue.is_empty());
                if stuck {
                    self.stop = Some(Stop::Failure);
                    continue;
                }
            }
            break;
        }
    }

    /// The run stopped: no step queued on a host behind its running one may start.
    fn cancel_queued_steps(&mut self, actions: &mut Vec<Action>) {
        for (name, h) in &mut self.hosts {
            if h.in_flight.len() > 1 && !h.cancel_sent && h.failure.is_none() {
                h.cancel_sent = true;
                actions.push(Action::Cancel { host: name.clone() });
            }
        }
    }

    /// Lets the rollout move on and carries out its moves; whether anything happened.
    fn advance_rollout(&mut self, actions: &mut Vec<Action>) -> bool {
        let Some(rollout) = &self.rollout else {
            return false;
        };
        let balancer: Vec<&HostRun> = rollout
            .balancer()
            .iter()
            .map(|b| &self.hosts[&self.steps[*b].host])
            .collect();
        let world = World {
            finished: self
                .hosts
                .iter()
                .filter(|(_, h)| h.finished)
                .map(|(n, _)| n.clone())
                .collect(),
            balancer_idle: balancer
                .iter()
                .all(|h| h.ready && !h.busy && h.queue.is_empty() && h.failure.is_none()),
            balancer_failed: balancer
                .iter()
                .any(|h| h.failure.is_some() || h.cancelled || h.finished),
            stopped: self.stop.is_some(),
        };
        let rollout = self.rollout.as_mut().expect("checked above");
        let (moves, progressed) = rollout.advance(&world, self.steps);
        for m in moves {
            match m {
                Move::Emit(event) => actions.push(Action::Emit(event)),
                Move::Hook { step, rollout } => {
                    let host = self.steps[step].host.clone();
                    let h = self
                        .hosts
                        .get_mut(&host)
                        .expect("a balancer host of the run");
                    h.busy = true;
                    self.running += 1;
                    actions.push(Action::StartRollout {
                        host,
                        step,
                        rollout,
                    });
                }
                Move::Predict { host } => {
                    let h = self.hosts.get_mut(&host).expect("a rolled host of the run");
                    h.busy = true;
                    self.running += 1;
                    let roots = h
                        .queue
                        .iter()
                        .map(|i| self.steps[*i].root.clone())
                        .collect();
                    actions.push(Action::Predict { host, roots });
                }
                Move::NotStarted { hosts, reason } => {
                    for name in hosts {
                        let Some(h) = self.hosts.get_mut(&name) else {
                            continue;
                        };
                        if h.busy || h.finished || h.failure.is_some() {
                            continue;
                        }
                        for step in h.queue.drain(..) {
                            actions.push(Action::Emit(Event::Skipped {
                                host: name.clone(),
                                component: self.steps[step].root.clone(),
                                reason: reason.clone(),
                            }));
                            self.state[step] = StepState::NotRun(reason.clone());
                        }
                    }
                }
                Move::StopRun => {
                    if !self.keeps_going() {
                        self.stop.get_or_insert(Stop::Failure);
                    }
                }
            }
        }
        progressed
    }

    /// A balancer's drain or undrain ended; a failure fails the balancer's host.
    fn hook_done(&mut self, host: &str, step: usize, failure: Option<HostFailure>) {
        let h = self.hosts.get_mut(host).expect("known host");
        h.busy = false;
        self.running -= 1;
        let ok = failure.is_none();
        if let Some(failure) = failure {
            h.failure = Some(failure);
            if !self.options.keep_going {
                self.stop.get_or_insert(Stop::Failure);
            }
        }
        if let Some(r) = &mut self.rollout {
            r.hook_done(step, ok);
        }
    }

    fn start_ready_steps(&mut self, actions: &mut Vec<Action>) {
        let jobs = self.options.jobs.max(1);
        let depth = self.pipeline_depth();
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for name in names {
            loop {
                let h = &self.hosts[&name];
                if !h.ready || h.failure.is_some() {
                    break;
                }
                // Busy with a drain, an undrain or a prediction, or its agent holds enough.
                if h.busy && (h.in_flight.is_empty() || h.in_flight.len() >= depth) {
                    break;
                }
                if self.rollout.as_ref().is_some_and(|r| !r.may_start(&name)) {
                    break;
                }
                let Some(&step) = h.queue.front() else { break };
                match self.dependencies(step, depth > 1) {
                    Deps::Waiting => break,
                    Deps::Blocked(reason) => {
                        self.hosts
                            .get_mut(&name)
                            .expect("known host")
                            .queue
                            .pop_front();
                        actions.push(Action::Emit(Event::Skipped {
                            host: name.clone(),
                            component: self.steps[step].root.clone(),
                            reason: reason.clone(),
                        }));
                        self.state[step] = StepState::NotRun(reason);
                    }
                    Deps::Done(assumed) => {
                        let busy = self.hosts[&name].busy;
                        if !busy && self.running >= jobs {
                            break;
                        }
                        for (label, why) in assumed {
                            actions.push(Action::Emit(Event::Log {
                                host: name.clone(),
                                component: self.steps[step].root.clone(),
                                message: format!("predicted as if `{label}` would succeed: {why}"),
                            }));
                        }
                        let h = self.hosts.get_mut(&name).expect("known host");
                        h.queue.pop_front();
                        h.in_flight.push_back(step);
                        if !busy {
                            h.busy = true;
                            self.running += 1;
                        }
                        self.state[step] = StepState::Running;
                        match self.rollout.as_ref().and_then(|r| r.step_rollout(&name)) {
                            Some(rollout) => actions.push(Action::StartRollout {
                                host: name.clone(),
                                step,
                                rollout,
                            }),
                            None => actions.push(Action::Start {
                                host: name.clone(),
                                step,
                            }),
                        }
                    }
                }
            }
        }
    }

    fn finish_host_if_done(&mut self, name: &str, now: f64, actions: &mut Vec<Action>) {
        let stop = self.stop;
        let holds = self
            .rollout
            .as_ref()
            .is_some_and(|r| r.holds(name, self.steps));
        let h = self.hosts.get_mut(name).expect("known host");
        if h.finished || h.busy {
            return;
        }
        // The balancer's session stays open while the rollout may still drain or undrain.
        if holds && h.failure.is_none() && h.ready {
            return;
        }
        if h.failure.is_none() {
            if let Some(stop) = stop {
                let reason = stop.reason();
                for step in h.queue.drain(..) {
                    actions.push(Action::Emit(Event::Skipped {
                        host: name.to_string(),
                        component: self.steps[step].root.clone(),
                        reason: reason.to_string(),
                    }));
                    self.state[step] = stop.state();
                }
            } else if !h.ready || !h.queue.is_empty() {
                return;
            }
        }
        h.finished = true;
        let send_finish = h.ready && !h.closed;
        let not_started = self.roots(name, |s| *s == StepState::Interrupted);
        if !not_started.is_empty() {
            actions.push(Action::Emit(Event::Interrupted {
                host: name.to_string(),
                not_started,
            }));
        }
        let event = self.host_finished_event(name, now);
        actions.push(Action::Emit(event));
        if send_finish {
            actions.push(Action::Finish {
                host: name.to_string(),
            });
        }
    }

    fn roots(&self, name: &str, pick: impl Fn(&StepState) -> bool) -> Vec<String> {
        self.hosts[name]
            .steps
            .iter()
            .filter(|i| pick(&self.state[**i]))
            .map(|i| self.steps[*i].root.clone())
            .collect()
    }

    fn host_finished_event(&self, name: &str, now: f64) -> Event {
        Event::HostFinished {
            host: name.to_string(),
            dry_run: self.options.dry_run,
            changed: self.roots(name, |s| *s == StepState::Done(RootOutcome::Changed)),
            unchanged: self.roots(name, |s| *s == StepState::Done(RootOutcome::Unchanged)),
            failed: self.roots(name, |s| {
                matches!(s, StepState::Done(RootOutcome::Failed) | StepState::Unknown)
            }),
            not_attempted: self.roots(name, |s| {
                matches!(
                    s,
                    StepState::NotRun(_) | StepState::Pending | StepState::Interrupted
                )
            }),
            seconds: now,
        }
    }

    fn host_status(&self, name: &str) -> (HostStatus, String) {
        let h = &self.hosts[name];
        if let Some(f) = &h.failure {
            return (f.status, f.error.join(": "));
        }
        let changed = self.roots(name, |s| *s == StepState::Done(RootOutcome::Changed));
        let failed = self.roots(name, |s| *s == StepState::Done(RootOutcome::Failed));
        if !failed.is_empty() {
            // Only a dry run goes on after a failed step (see `report`).
            let failed: Vec<String> = failed.iter().map(|r| format!("`{r}`")).collect();
            let mut detail = format!("{} failed", failed.join(", "));
            if !changed.is_empty() {
                detail.push_str(&format!("; would change: {}", changed.join(", ")));
            }
            return (HostStatus::Failed, detail);
        }
        let unchanged = self.roots(name, |s| *s == StepState::Done(RootOutcome::Unchanged));
        let not_run = self.roots(name, |s| {
            matches!(s, StepState::NotRun(_) | StepState::Pending)
        });
        let verb = if self.options.dry_run {
            "would change"
        } else {
            "changed"
        };
        let not_started = self.roots(name, |s| *s == StepState::Interrupted);
        if !not_started.is_empty() {
            let mut parts = Vec::new();
            if !changed.is_empty() {
                parts.push(format!("{verb}: {}", changed.join(", ")));
            }
            if !unchanged.is_empty() {
                parts.push(format!("unchanged: {}", unchanged.join(", ")));
            }
            parts.push(format!("not started: {}", not_started.join(", ")));
            return (HostStatus::Interrupted, parts.join("; "));
        }
        if !not_run.is_empty() && changed.is_empty() && unchanged.is_empty() {
            let why = h
                .steps
                .iter()
                .find_map(|i| match &self.state[*i] {
                    StepState::NotRun(r) => Some(r.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let status = if why.starts_with("not started") {
                HostStatus::NotAttempted
            } else {
                HostStatus::Skipped
            };
            (status, why)
        } else if !changed.is_empty() {
            (
                HostStatus::Changed,
                format!("{verb}: {}", changed.join(", ")),
            )
        } else {
            (HostStatus::Unchanged, String::new())
        }
    }

    /// How many steps a host's agent may hold: one in a dry run (whose predictions past a
    /// failed one are logged as assumed, which needs the failure known first) and in a
    /// rollout (whose batches and hooks decide step by step).
    fn pipeline_depth(&self) -> usize {
        if self.options.dry_run || self.rollout.is_some() {
            1
        } else {
            self.options.pipeline.max(1)
        }
    }

    /// Whether `step` may start; with `ahead`, a dependency that runs or is queued on the
    /// same host counts as done: the agent runs it first and does not run `step` if it fails.
    fn dependencies(&self, step: usize, ahead: bool) -> Deps {
        let mut waiting = false;
        let mut assumed = Vec::new();
        for dep in &self.steps[step].after {
            let label = format!("{}: {}", self.steps[*dep].host, self.steps[*dep].root);
            match &self.state[*dep] {
                // Checked before the run: deployed earlier, according to its host's journal.
                StepState::Excluded => {}
                StepState::Done(RootOutcome::Changed | RootOutcome::Unchanged) => {}
                StepState::Running if ahead && self.steps[*dep].host == self.steps[step].host => {}
                StepState::Pending | StepState::Running => waiting = true,
                // A dry run predicts what depends on a prediction that failed or did not
                // happen as if that step would succeed.
                StepState::Done(_) | StepState::Unknown if self.options.dry_run => {
                    assumed.push((label, "its own prediction failed".to_string()));
                }
                StepState::NotRun(reason) if self.options.dry_run => {
                    assumed.push((label, format!("it was not predicted ({reason})")));
                }
                StepState::Done(_) | StepState::Unknown => {
                    return Deps::Blocked(format!("it depends on `{label}`, which failed"));
                }
                StepState::NotRun(_) | StepState::Interrupted => {
                    return Deps::Blocked(format!("it depends on `{label}`, which did not run"));
                }
            }
        }
        if waiting {
            Deps::Waiting
        } else {
            Deps::Done(assumed)
        }
    }

    /// Whether a failure leaves the other hosts' steps running: with `keep_going`, and in
    /// every dry run.
    fn keeps_going(&self) -> bool {
        self.options.keep_going || self.options.dry_run
    }
}

enum Deps {
    /// Every dependency is done; in a dry run, the ones assumed to succeed with the reason.
    Done(Vec<(String, String)>),
    Waiting,
    Blocked(String),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Steps given as `(host, root, [indices it waits for])`, in plan order as listed.
    fn steps(spec: &[(&str, &str, &[usize])]) -> Vec<PlanStep> {
        spec.iter()
            .map(|(host, root, after)| PlanStep {
                host: host.to_string(),
                root: root.to_string(),
                after: after.to_vec(),
                after_keys: BTreeMap::new(),
            })
            .collect()
    }

    fn options(keep_going: bool, jobs: usize) -> SchedulerOptions {
        SchedulerOptions {
            dry_run: false,
            keep_going,
            jobs,
            pipeline: 1,
        }
    }

    /// Drives a scheduler with canned reports and records what it asked for, compactly:
    /// `start web1 app`, `finish web1`, `skipped web2 app`, `failed web1`, `done web1`.
    struct Script<'p> {
        sched: Scheduler<'p>,
        steps: &'p [PlanStep],
        log: Vec<String>,
        clock: f64,
    }

    impl<'p> Script<'p> {
        fn new(steps: &'p [PlanStep], hosts: &[&str], options: SchedulerOptions) -> Self {
            let order: Vec<usize> = (0..steps.len()).collect();
            let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
            Script {
                sched: Scheduler::new(steps, &order, &hosts, options),
                steps,
                log: Vec::new(),
                clock: 0.0,
            }
        }

        fn report(&mut self, host: &str, report: Report) -> &mut Self {
            self.clock += 1.0;
            for action in self.sched.report(host, report, self.clock) {
                self.log.push(match action {
                    Action::Start { host, step } => {
                        format!("start {host} {}", self.steps[step].root)
                    }
                    Action::Finish { host } => format!("finish {host}"),
                    Action::Cancel { host } => format!("cancel {host}"),
                    Action::StartRollout {
                        host,
                        step,
                        rollout,
                    } => match rollout.hook {
                        Some(hook) => format!(
                            "{} {host} {} -> {}",
                            hook.as_str(),
                            self.steps[step].root,
                            rollout.in_rotation.join(",")
                        ),
                        None => format!(
                            "start {host} {} (batch {}/{})",
                            self.steps[step].root, rollout.batch, rollout.batches
                        ),
                    },
                    Action::Emit(Event::RolloutBatch {
                        batch,
                        hosts,
                        failed,
                        max_failed,
                        ..
                    }) => format!(
                        "batch {batch}: {} (failed {failed}/{max_failed})",
                        hosts.join(",")
                    ),
                    Action::Emit(Event::RolloutHook { .. }) => "hook".to_string(),
                    Action::Predict { host, roots } => {
                        format!("predict {host} {}", roots.join(","))
                    }
                    Action::Emit(Event::RolloutStopped {
                        batch,
                        not_attempted,
                        reason,
                        ..
                    }) => format!(
                        "stopped after {batch}: {reason}; not attempted: {}",
                        not_attempted.join(",")
                    ),
                    Action::Emit(Event::Skipped {
                        host, component, ..
                    }) => format!("skipped {host} {component}"),
                    Action::Emit(Event::HostFailed { host, status, .. }) => {
                        format!("{status} {host}")
                    }
                    Action::Emit(Event::HostFinished { host, seconds, .. }) => {
                        format!("done {host} at {seconds}")
                    }
                    Action::Emit(other) => format!("{other:?}"),
                });
            }
            self
        }

        fn ready(&mut self, host: &str) -> &mut Self {
            self.report(host, Report::Ready)
        }

        fn predicted(&mut self, host: &str, would_change: bool) -> &mut Self {
            self.report(host, Report::Predicted { would_change })
        }

        fn done(&mut self, host: &str, root: &str, outcome: RootOutcome) -> &mut Self {
            let step = self.step(host, root);
            self.report(host, Report::StepDone { step, outcome })
        }

        fn step(&self, host: &str, root: &str) -> usize {
            self.steps
                .iter()
                .position(|s| s.host == host && s.root == root)
                .unwrap()
        }

        fn take(&mut self) -> Vec<String> {
            std::mem::take(&mut self.log)
        }

        fn summary(&mut self) -> (Vec<(String, String)>, Exit) {
            let (outcome, events) = self.sched.finish(self.clock);
            assert!(matches!(events.last(), Some(Event::RunFinished { .. })));
            let hosts = outcome
                .hosts
                .into_iter()
                .map(|h| (h.host, h.status.to_string()))
                .collect();
            (hosts, outcome.exit)
        }
    }

    fn statuses(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(h, s)| (h.to_string(), s.to_string()))
            .collect()
    }

    use RootOutcome::{Changed, Failed, Unchanged};

    #[test]
    fn steps_wait_for_every_host_to_be_ready_then_follow_dependencies() {
        // db1's database first; web1's app requires it; web1's motd after its app.
        let plan = steps(&[
            ("db1", "database", &[]),
            ("web1", "app", &[0]),
            ("web1", "motd", &[]),
        ]);
        let mut s = Script::new(&plan, &["db1", "web1"], options(false, 8));
        s.ready("web1");
        assert!(
            s.take().is_empty(),
            "nothing starts before every host is ready"
        );
        s.ready("db1");
        assert_eq!(s.take(), ["start db1 database"]);
        s.done("db1", "database", Changed);
        assert_eq!(s.take(), ["start web1 app", "done db1 at 3", "finish db1"]);
        s.done("web1", "app", Unchanged);
        assert_eq!(s.take(), ["start web1 motd"]);
        s.done("web1", "motd", Unchanged);
        assert_eq!(s.take(), ["done web1 at 5", "finish web1"]);
        s.report("db1", Report::Closed)
            .report("web1", Report::Closed);
        assert!(s.sched.is_over());
        let (hosts, exit) = s.summary();
        assert_eq!(
            hosts,
            statuses(&[("db1", "changed"), ("web1", "unchanged")])
        );
        assert_eq!(exit, Exit::Success);
    }

    #[test]
    fn jobs_cap_the_steps_running_at_once() {
        let plan = steps(&[("a", "x", &[]), ("b", "x", &[]), ("c", "x", &[])]);
        let mut s = Script::new(&plan, &["a", "b", "c"], options(false, 2));
        s.ready("a").ready("b");
        assert!(s.take().is_empty());
        s.ready("c");
        assert_eq!(s.take(), ["start a x", "start b x"]);
        s.done("b", "x", Unchanged);
        assert_eq!(s.take(), ["start c x", "done b at 4", "finish b"]);
    }

    #[test]
    fn a_failure_stops_new_steps_and_leaves_the_rest_not_attempted() {
        let plan = steps(&[
            ("db1", "database", &[]),
            ("web1", "motd", &[]),
            ("web1", "app", &[0]),
        ]);
        let mut s = Script::new(&plan, &["db1", "web1"], options(false, 8));
        s.ready("db1").ready("web1");
        assert_eq!(s.take(), ["start db1 database", "start web1 motd"]);
        s.done("db1", "database", Failed);
        assert_eq!(s.take(), ["done db1 at 3", "finish db1"]);
        // web1's running step finishes; its next step is not started.
        s.done("web1", "motd", Changed);
        assert_eq!(
            s.take(),
            ["skipped web1 app", "done web1 at 4", "finish web1"]
        );
        let (hosts, exit) = s.summary();
        assert_eq!(hosts, statuses(&[("db1", "failed"), ("web1", "changed")]));
        assert_eq!(exit, Exit::DeployFailed);
    }

    #[test]
    fn keep_going_runs_what_does_not_depend_on_the_failure() {
        let plan = steps(&[
            ("db1", "database", &[]),
            ("web1", "app", &[0]),
            ("web2", "motd", &[]),
        ]);
        let mut s = Script::new(&plan, &["db1", "web1", "web2"], options(true, 8));
        s.ready("db1").ready("web1").ready("web2");
        assert_eq!(s.take(), ["start db1 database", "start web2 motd"]);
        s.done("db1", "database", Failed);
        assert_eq!(
            s.take(),
            [
                "skipped web1 app",
                "done db1 at 4",
                "finish db1",
                "done web1 at 4",
                "finish web1"
            ]
        );
        s.done("web2", "motd", Changed);
        assert_eq!(s.take(), ["done web2 at 5", "finish web2"]);
        let (hosts, exit) = s.summary();
        assert_eq!(
            hosts,
            statuses(&[("db1", "failed"), ("web1", "skipped"), ("web2", "changed")])
        );
        assert_eq!(exit, Exit::DeployFailed);
    }

    #[test]
    fn a_broken_session_makes_the_host_unknown_and_blocks_its_dependents() {
        let plan = steps(&[("db1", "database", &[]), ("web1", "app", &[0])]);
        let mut s = Script::new(&plan, &["db1", "web1"], options(true, 8));
        s.ready("db1").ready("web1");
        assert_eq!(s.take(), ["start db1 database"]);
        let failure = HostFailure::new(
            HostStatus::Timeout,
            vec!["no message from the agent for 10 s".into()],
        );
        s.report(
            "db1",
            Report::Broken {
                step: 0,
                failure: failure.clone(),
            },
        );
        assert_eq!(
            s.take(),
            [
                "timeout db1",
                "skipped web1 app",
                "done db1 at 3",
                "finish db1",
                "done web1 at 3",
                "finish web1"
            ]
        );
        let (hosts, exit) = s.summary();
        assert_eq!(hosts, statuses(&[("db1", "timeout"), ("web1", "skipped")]));
        assert_eq!(exit, Exit::Timeout);
    }

    #[test]
    fn a_host_that_cannot_be_prepared_stops_the_run_before_any_step() {
        let plan = steps(&[("web1", "motd", &[]), ("web2", "motd", &[])]);
        let mut s = Script::new(&plan, &["web1", "web2"], options(false, 8));
        s.ready("web1");
        s.report(
            "web2",
            Report::SetupFailed(HostFailure::new(
                HostStatus::HostKeyRefused,
                vec!["Host key verification failed.".into()],
            )),
        );
        assert_eq!(
            s.take(),
            [
                "host_key_refused web2",
                "skipped web1 motd",
                "done web1 at 2",
                "finish web1",
                "done web2 at 2"
            ],
            "the host that failed to prepare has no session to finish"
        );
        let (hosts, exit) = s.summary();
        assert_eq!(
            hosts,
            statuses(&[("web1", "not_attempted"), ("web2", "host_key_refused")])
        );
        assert_eq!(exit, Exit::HostKeyOrAuthRefused);
    }

    #[test]
    fn with_keep_going_prepared_hosts_deploy_despite_a_setup_failure() {
        let plan = steps(&[("web1", "motd", &[]), ("web2", "motd", &[])]);
        let mut s = Script::new(&plan, &["web1", "web2"], options(true, 8));
        s.report(
            "web2",
            Report::SetupFailed(HostFailure::new(
                HostStatus::Unreachable,
                vec!["connection refused".into()],
            )),
        );
        s.ready("web1");
        assert_eq!(
            s.take(),
            ["unreachable web2", "start web1 motd", "done web2 at 2"]
        );
        s.done("web1", "motd", Unchanged);
        let (hosts, exit) = s.summary();
        assert_eq!(
            hosts,
            statuses(&[("web1", "unchanged"), ("web2", "unreachable")])
        );
        assert_eq!(exit, Exit::Unreachable);
    }

    #[test]
    fn excluded_hosts_count_as_deployed() {
        // web1 is in the run; db1 (outside `--hosts`) was checked beforehand.
        let plan = steps(&[("db1", "database", &[]), ("web1", "app", &[0])]);
        let mut s = Script::new(&plan, &["web1"], options(false, 8));
        s.ready("web1");
        assert_eq!(s.take(), ["start web1 app"]);
        s.done("web1", "app", Changed);
        let (hosts, exit) = s.summary();
        assert_eq!(hosts, statuses(&[("web1", "changed")]));
        assert_eq!(exit, Exit::Success);
    }

    #[test]
    fn a_host_that_never_answers_ends_with_its_state_unknown() {
        let plan = steps(&[("web1", "app", &[]), ("web2", "motd", &[])]);
        let mut s = Script::new(&plan, &["web1", "web2"], options(false, 8));
        s.ready("web1").ready("web2");
        s.done("web2", "motd", Unchanged);
        assert!(!s.sched.is_finished(), "web1 still runs `app`");
        // The loop gave up waiting (its channel closed): the summary says what is known.
        let (hosts, exit) = s.summary();
        assert_eq!(
            hosts,
            statuses(&[("web1", "timeout"), ("web2", "unchanged")])
        );
        assert_eq!(exit, Exit::Timeout);
    }

    #[test]
    fn a_dry_run_summary_says_would_change() {
        let plan = steps(&[("web1", "motd", &[])]);
        let mut s = Script::new(
            &plan,
            &["web1"],
            SchedulerOptions {
                dry_run: true,
                keep_going: false,
                jobs: 1,
                pipeline: 1,
            },
        );
        s.ready("web1").done("web1", "motd", Changed);
        let (outcome, _) = s.sched.finish(2.0);
        assert_eq!(outcome.hosts[0].detail, "would change: motd");
    }

    fn dry_run(jobs: usize) -> SchedulerOptions {
        SchedulerOptions {
            dry_run: true,
            keep_going: false,
            jobs,
            pipeline: 1,
        }
    }

    #[test]
    fn a_failed_prediction_stops_no_other_prediction() {
        // db1's database fails to predict; web1's app depends on it, web2's motd does not,
        // and db1 has a later step of its own.
        let plan = steps(&[
            ("db1", "database", &[]),
            ("db1", "backup", &[]),
            ("web1", "app", &[0]),
            ("web2", "motd", &[]),
        ]);
        let mut s = Script::new(&plan, &["db1", "web1", "web2"], dry_run(8));
        s.ready("db1").ready("web1").ready("web2");
        assert_eq!(s.take(), ["start db1 database", "start web2 motd"]);
        s.done("db1", "database", Failed);
        let log = s.take();
        assert_eq!(
            log,
            [
                "start db1 backup",
                "Log { host: \"web1\", component: \"app\", message: \"predicted as if `db1: database` would succeed: its own prediction failed\" }",
                "start web1 app",
            ]
        );
        s.done("web2", "motd", Unchanged);
        s.done("db1", "backup", Changed);
        s.done("web1", "app", Changed);
        let (outcome, _) = s.sched.finish(s.clock);
        let hosts: Vec<_> = outcome
            .hosts
            .iter()
            .map(|h| (h.host.as_str(), h.status.as_str(), h.detail.as_str()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("db1", "failed", "`database` failed; would change: backup"),
                ("web1", "changed", "would change: app"),
                ("web2", "unchanged", ""),
            ]
        );
        assert_eq!(
            outcome.exit,
            Exit::DeployFailed,
            "the failure is still reported"
        );
    }

    #[test]
    fn a_dry_run_predicts_the_other_hosts_when_one_cannot_be_prepared() {
        let plan = steps(&[("db1", "database", &[]), ("web1", "app", &[0])]);
        let mut s = Script::new(&plan, &["db1", "web1"], dry_run(8));
        s.report(
            "db1",
            Report::SetupFailed(HostFailure::new(
                HostStatus::Unreachable,
                vec!["connection refused".into()],
            )),
        );
        s.ready("web1");
        assert_eq!(
            s.take(),
            [
                "unreachable db1",
                "Log { host: \"web1\", component: \"app\", message: \"predicted as if `db1: database` would succeed: it was not predicted (host unreachable)\" }",
                "start web1 app",
                "done db1 at 2",
            ]
        );
        s.done("web1", "app", Unchanged);
        let (hosts, exit) = s.summary();
        assert_eq!(
            hosts,
            statuses(&[("db1", "unreachable"), ("web1", "unchanged")])
        );
        assert_eq!(exit, Exit::Unreachable);
    }

    #[test]
    fn a_dry_run_predicts_past_a_broken_session_on_other_hosts() {
        let plan = steps(&[
            ("db1", "database", &[]),
            ("db1", "backup", &[]),
            ("web1", "app", &[0]),
        ]);
        let mut s = Script::new(&plan, &["db1", "web1"], dry_run(8));
        s.ready("db1").ready("web1");
        assert_eq!(s.take(), ["start db1 database"]);
        let failure = HostFailure::new(HostStatus::Timeout, vec!["silent".into()]);
        s.report("db1", Report::Broken { step: 0, failure });
        let log = s.take();
        assert_eq!(log[0], "timeout db1");
        assert!(log.contains(&"start web1 app".to_string()), "{log:?}");
        assert!(!log.contains(&"start db1 backup".to_string()), "{log:?}");
        s.done("web1", "app", Changed);
        let (hosts, exit) = s.summary();
        assert_eq!(hosts, statuses(&[("db1", "timeout"), ("web1", "changed")]));
        assert_eq!(exit, Exit::Timeout);
    }

    fn pipelined(jobs: usize, pipeline: usize) -> SchedulerOptions {
        SchedulerOptions {
            pipeline,
            ..options(false, jobs)
        }
    }

    #[test]
    fn steps_are_sent_ahead_up_to_the_pipeline_and_a_failure_drops_the_queued_ones() {
        // web1: `a`, `b` after `a`, `c` after web2's `x`, `d`.
        let plan = steps(&[
            ("web1", "a", &[]),
            ("web1", "b", &[0]),
            ("web1", "c", &[4]),
            ("web1", "d", &[]),
            ("web2", "x", &[]),
        ]);
        let mut s = Script::new(&plan, &["web1", "web2"], pipelined(8, 3));
        s.ready("web1").ready("web2");
        // `b` waits for `a` on its own host: queued behind it. `c` waits for another host.
        assert_eq!(s.take(), ["start web1 a", "start web1 b", "start web2 x"]);
        s.done("web1", "a", Failed);
        // The agent does not run `b`: web1 is done without waiting for its answer.
        assert_eq!(s.take(), ["done web1 at 3", "finish web1"]);
        s.done("web1", "b", RootOutcome::NotAttempted);
        assert_eq!(s.take(), Vec::<String>::new());
        s.done("web2", "x", Changed);
        assert_eq!(s.take(), ["done web2 at 5", "finish web2"]);
        let (hosts, exit) = s.summary();
        assert_eq!(hosts, statuses(&[("web1", "failed"), ("web2", "changed")]));
        assert_eq!(exit, Exit::DeployFailed);
        assert_eq!(
            s.sched.state[1],
            StepState::NotRun("an earlier root component on this host failed".into())
        );
    }

    #[test]
    fn a_failure_cancels_the_steps_queued_on_other_hosts() {
        let plan = steps(&[
            ("web1", "a", &[]),
            ("web1", "b", &[]),
            ("web1", "c", &[]),
            ("web2", "x", &[]),
        ]);
        let mut s = Script::new(&plan, &["web1", "web2"], pipelined(8, 3));
        s.ready("web1").ready("web2");
        assert_eq!(
            s.take(),
            [
                "start web1 a",
                "start web1 b",
                "start web1 c",
                "start web2 x"
            ]
        );
        s.done("web2", "x", Failed);
        assert_eq!(s.take(), ["done web2 at 3", "finish web2", "cancel web1"]);
        s.done("web1", "a", Changed);
        assert_eq!(s.take(), Vec::<String>::new());
        s.done("web1", "b", RootOutcome::NotAttempted)
            .done("web1", "c", RootOutcome::NotAttempted);
        assert_eq!(
            s.take(),
            [
                "skipped web1 b",
                "skipped web1 c",
                "done web1 at 6",
                "finish web1"
            ]
        );
        let (hosts, exit) = s.summary();
        assert_eq!(hosts[1], ("web2".to_string(), "failed".to_string()));
        assert_eq!(exit, Exit::DeployFailed);
    }

    #[test]
    fn jobs_count_hosts_and_a_host_holds_its_pipeline_in_one_slot() {
        let plan = steps(&[
            ("web1", "a", &[]),
            ("web1", "b", &[]),
            ("web2", "x", &[]),
            ("web2", "y", &[]),
        ]);
        let mut s = Script::new(&plan, &["web1", "web2"], pipelined(1, 2));
        s.ready("web1").ready("web2");
        assert_eq!(s.take(), ["start web1 a", "start web1 b"]);
        s.done("web1", "a", Changed);
        assert_eq!(s.take(), Vec::<String>::new(), "web1 still holds its slot");
        s.done("web1", "b", Unchanged);
        assert_eq!(
            s.take(),
            [
                "start web2 x",
                "start web2 y",
                "done web1 at 4",
                "finish web1"
            ]
        );
    }

    #[test]
    fn an_interrupt_cancels_the_queued_steps() {
        let plan = steps(&[("web1", "a", &[]), ("web1", "b", &[])]);
        let mut s = Script::new(&plan, &["web1"], pipelined(8, 4));
        s.ready("web1");
        assert_eq!(s.take(), ["start web1 a", "start web1 b"]);
        s.clock += 1.0;
        let actions = s.sched.interrupt(s.clock);
        assert_eq!(
            actions,
            [Action::Cancel {
                host: "web1".into()
            }]
        );
        s.done("web1", "a", Changed)
            .done("web1", "b", RootOutcome::NotAttempted);
        assert_eq!(
            s.take(),
            [
                "skipped web1 b",
                "Interrupted { host: \"web1\", not_started: [\"b\"] }",
                "done web1 at 4",
                "finish web1"
            ]
        );
        let (outcome, _) = s.sched.finish(s.clock);
        assert_eq!(outcome.exit, Exit::Interrupted);
    }

    #[test]
    fn a_dry_run_sends_one_step_at_a_time() {
        let plan = steps(&[("web1", "a", &[]), ("web1", "b", &[])]);
        let options = SchedulerOptions {
            pipeline: 4,
            ..dry_run(8)
        };
        let mut s = Script::new(&plan, &["web1"], options);
        s.ready("web1");
        assert_eq!(s.take(), ["start web1 a"]);
        s.done("web1", "a", Changed);
        assert_eq!(s.take(), ["start web1 b"]);
    }

    #[test]
    fn an_interrupt_lets_running_steps_finish_and_starts_nothing_new() {
        let plan = steps(&[
            ("web1", "app", &[]),
            ("web1", "motd", &[]),
            ("web2", "motd", &[]),
        ]);
        let mut s = Script::new(&plan, &["web1", "web2"], options(false, 1));
        s.ready("web1").ready("web2");
        assert_eq!(s.take(), ["start web1 app"]);
        s.clock += 1.0;
        let actions = s.sched.interrupt(s.clock);
        assert!(s.sched.is_interrupted());
        // web2 never started a step: it is done at once; web1 still runs `app`.
        assert_eq!(actions.len(), 4, "{actions:?}");
        assert!(
            matches!(&actions[1], Action::Emit(Event::Interrupted { host, .. }) if host == "web2")
        );
        s.done("web1", "app", Changed);
        assert_eq!(
            s.take(),
            [
                "skipped web1 motd",
                "Interrupted { host: \"web1\", not_started: [\"motd\"] }",
                "done web1 at 4",
                "finish web1"
            ]
        );
        let (outcome, _) = s.sched.finish(s.clock);
        let hosts: Vec<_> = outcome
            .hosts
            .iter()
            .map(|h| (h.status.as_str(), h.detail.as_str()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("interrupted", "changed: app; not started: motd"),
                ("interrupted", "not started: motd")
            ]
        );
        assert_eq!(outcome.exit, Exit::Interrupted);
    }

    #[test]
    fn a_step_that_outlasts_the_grace_leaves_its_host_unknown() {
        let plan = steps(&[("web1", "slow", &[]), ("web1", "motd", &[])]);
        let mut s = Script::new(&plan, &["web1"], options(false, 8));
        s.ready("web1");
        s.sched.interrupt(2.0);
        let actions = s
            .sched
            .grace_expired(std::time::Duration::from_secs(10), 12.0);
        assert!(
            matches!(&actions[0], Action::Emit(Event::HostFailed { status, .. }) if *status == HostStatus::Interrupted),
            "{actions:?}"
        );
        // The step's late answer changes nothing.
        s.done("web1", "slow", Changed);
        let (outcome, _) = s.sched.finish(13.0);
        assert_eq!(outcome.hosts[0].status, HostStatus::Interrupted);
        assert_eq!(outcome.exit, Exit::Timeout);
    }

    #[test]
    fn hosts_not_yet_prepared_when_interrupted_are_never_contacted() {
        let plan = steps(&[("web1", "motd", &[]), ("web2", "motd", &[])]);
        let mut s = Script::new(&plan, &["web1", "web2"], options(false, 1));
        s.ready("web1");
        s.clock += 1.0;
        s.sched.interrupt(s.clock);
        s.report("web2", Report::Cancelled);
        let log = s.take();
        assert!(log.contains(&"finish web1".to_string()), "{log:?}");
        assert!(!log.contains(&"finish web2".to_string()), "{log:?}");
        let (hosts, exit) = s.summary();
        assert_eq!(
            hosts,
            statuses(&[("web1", "interrupted"), ("web2", "interrupted")])
        );
        assert_eq!(exit, Exit::Interrupted);
    }

    /// A rollout of `component` (none: every host but the balancer's) over `hosts`.
    fn rolling(
        plan: &[PlanStep],
        hosts: &[&str],
        batch: &[&str],
        max_failed: &str,
        balancer: Option<&str>,
    ) -> RolloutPlan {
        use batou_core::rollout::{RolloutSpec, Size};
        let spec = RolloutSpec {
            component: Some("app".into()),
            batch: batch
                .iter()
                .map(|b| Size::parse(b, false).unwrap())
                .collect(),
            max_failed: Size::parse(max_failed, true).unwrap(),
            balancer: balancer.map(str::to_string),
            drain_wait_ms: 0,
        };
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        RolloutPlan::resolve(&spec, plan, &hosts).unwrap()
    }

    fn balanced() -> Vec<PlanStep> {
        steps(&[
            ("app1", "app", &[]),
            ("app2", "app", &[]),
            ("app3", "app", &[]),
            ("db", "db", &[]),
            ("lb", "upstreams", &[]),
        ])
    }

    const BALANCED: &[&str] = &["app1", "app2", "app3", "db", "lb"];

    fn rolled<'p>(plan: &'p [PlanStep], rollout: RolloutPlan) -> Script<'p> {
        let mut s = Script::new(plan, BALANCED, options(false, 8));
        s.sched = Scheduler::new(
            plan,
            &(0..plan.len()).collect::<Vec<_>>(),
            &BALANCED.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            options(false, 8),
        )
        .with_rollout(rollout);
        s
    }

    #[test]
    fn batches_roll_in_order_with_drain_and_undrain_around_each() {
        let plan = balanced();
        let rollout = rolling(&plan, BALANCED, &["1", "100%"], "0", Some("upstreams"));
        let mut s = rolled(&plan, rollout);
        for h in BALANCED {
            s.ready(h);
        }
        // Hosts outside the rollout deploy as today; the balancer first converges as usual.
        assert_eq!(s.take(), ["start db db", "start lb upstreams"]);
        s.done("db", "db", Unchanged);
        assert_eq!(s.take(), ["done db at 6", "finish db"]);
        s.done("lb", "upstreams", Unchanged);
        assert_eq!(s.take(), ["batch 1: app1 (failed 0/0)", "predict app1 app"]);
        s.predicted("app1", true);
        assert_eq!(s.take(), ["hook", "drain lb upstreams -> app2,app3"]);
        s.done("lb", "upstreams", Changed);
        assert_eq!(s.take(), ["start app1 app (batch 1/2)"]);
        s.done("app1", "app", Changed);
        assert_eq!(
            s.take(),
            [
                "done app1 at 10",
                "finish app1",
                "hook",
                "undrain lb upstreams -> app1,app2,app3"
            ]
        );
        s.done("lb", "upstreams", Changed);
        assert_eq!(
            s.take(),
            [
                "batch 2: app2,app3 (failed 0/0)",
                "predict app2 app",
                "predict app3 app"
            ]
        );
        // A host that would change nothing stays in rotation while it converges.
        s.predicted("app2", true).predicted("app3", false);
        assert_eq!(s.take(), ["hook", "drain lb upstreams -> app1,app3"]);
        s.done("lb", "upstreams", Changed);
        assert_eq!(
            s.take(),
            ["start app2 app (batch 2/2)", "start app3 app (batch 2/2)"]
        );
        s.done("app3", "app", Unchanged);
        assert_eq!(s.take(), ["done app3 at 15", "finish app3"]);
        s.done("app2", "app", Changed);
        assert_eq!(
            s.take(),
            [
                "done app2 at 16",
                "finish app2",
                "hook",
                "undrain lb upstreams -> app1,app2,app3"
            ]
        );
        s.done("lb", "upstreams", Changed);
        assert_eq!(s.take(), ["done lb at 17", "finish lb"]);
        let (hosts, exit) = s.summary();
        assert_eq!(
            hosts,
            statuses(&[
                ("app1", "changed"),
                ("app2", "changed"),
                ("app3", "unchanged"),
                ("db", "unchanged"),
                ("lb", "unchanged")
            ])
        );
        assert_eq!(exit, Exit::Success);
    }

    #[test]
    fn a_rollout_that_would_change_nothing_never_drains() {
        let plan = balanced();
        let rollout = rolling(&plan, BALANCED, &["2"], "0", Some("upstreams"));
        let mut s = rolled(&plan, rollout);
        for h in BALANCED {
            s.ready(h);
        }
        s.done("db", "db", Unchanged)
            .done("lb", "upstreams", Unchanged);
        s.take();
        s.predicted("app1", false).predicted("app2", false);
        assert_eq!(
            s.take(),
            ["start app1 app (batch 1/2)", "start app2 app (batch 1/2)"]
        );
        s.done("app1", "app", Unchanged)
            .done("app2", "app", Unchanged);
        s.predicted("app3", false).done("app3", "app", Unchanged);
        let log = s.take();
        assert!(!log.iter().any(|l| l == "hook"), "{log:?}");
        let (hosts, exit) = s.summary();
        assert!(hosts.iter().all(|(_, st)| st == "unchanged"), "{hosts:?}");
        assert_eq!(exit, Exit::Success);
    }

    /// A rollout of one host per batch up to app1's step: db and the balancer done, app1
    /// predicted to change and drained.
    fn at_app1<'p>(plan: &'p [PlanStep], max_failed: &str) -> Script<'p> {
        let rollout = rolling(plan, BALANCED, &["1"], max_failed, Some("upstreams"));
        let mut s = rolled(plan, rollout);
        for h in BALANCED {
            s.ready(h);
        }
        s.done("db", "db", Unchanged)
            .done("lb", "upstreams", Unchanged);
        s.predicted("app1", true).done("lb", "upstreams", Changed);
        let log = s.take();
        assert_eq!(log.last().unwrap(), "start app1 app (batch 1/3)");
        s
    }

    #[test]
    fn a_failure_over_the_budget_starts_no_new_batch() {
        let plan = balanced();
        let mut s = at_app1(&plan, "0");
        s.done("app1", "app", Failed);
        // The failed host stays drained: nothing to put back, no undrain.
        assert_eq!(
            s.take(),
            [
                "done app1 at 10",
                "finish app1",
                "stopped after 1: 1 rolled host failed (app1), `max_failed` allows 0; not attempted: app2,app3",
                "skipped app2 app",
                "skipped app3 app",
                "done app2 at 10",
                "finish app2",
                "done app3 at 10",
                "finish app3",
                "done lb at 10",
                "finish lb"
            ]
        );
        let (outcome, _) = s.sched.finish(s.clock);
        let hosts: Vec<_> = outcome
            .hosts
            .iter()
            .map(|h| (h.host.as_str(), h.status.as_str(), h.detail.as_str()))
            .collect();
        assert_eq!(
            hosts[..3],
            [
                ("app1", "failed", "`app` failed"),
                (
                    "app2",
                    "not_attempted",
                    "not started: the rollout stopped: 1 rolled host failed (app1), `max_failed` allows 0"
                ),
                (
                    "app3",
                    "not_attempted",
                    "not started: the rollout stopped: 1 rolled host failed (app1), `max_failed` allows 0"
                ),
            ]
        );
        assert_eq!(outcome.exit, Exit::DeployFailed);
    }

    #[test]
    fn a_failure_within_the_budget_rolls_on_with_the_host_drained() {
        let plan = balanced();
        let mut s = at_app1(&plan, "1");
        s.done("app1", "app", Failed);
        assert_eq!(
            s.take(),
            [
                "done app1 at 10",
                "finish app1",
                "batch 2: app2 (failed 1/1)",
                "predict app2 app"
            ]
        );
        s.predicted("app2", true);
        assert_eq!(s.take(), ["hook", "drain lb upstreams -> app3"]);
        s.done("lb", "upstreams", Changed);
        s.done("app2", "app", Changed);
        assert_eq!(
            s.take(),
            [
                "start app2 app (batch 2/3)",
                "done app2 at 13",
                "finish app2",
                "hook",
                "undrain lb upstreams -> app2,app3"
            ]
        );
        s.done("lb", "upstreams", Changed);
        s.predicted("app3", true);
        s.done("lb", "upstreams", Changed);
        s.done("app3", "app", Changed);
        s.done("lb", "upstreams", Changed);
        let (hosts, exit) = s.summary();
        assert_eq!(hosts[0], ("app1".into(), "failed".into()));
        assert_eq!(hosts[2], ("app3".into(), "changed".into()));
        assert_eq!(exit, Exit::DeployFailed, "a failed host fails the run");
    }

    #[test]
    fn dependencies_still_hold_inside_a_batch() {
        // app1 requires db's resource; the batch opens at once but app1 waits for db.
        let plan = steps(&[
            ("app1", "app", &[2]),
            ("app2", "app", &[]),
            ("db", "db", &[]),
        ]);
        let hosts = ["app1", "app2", "db"];
        let rollout = rolling(&plan, &hosts, &["1"], "0", None);
        let mut s = Script::new(&plan, &hosts, options(false, 8));
        s.sched = Scheduler::new(
            &plan,
            &[2, 0, 1],
            &hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            options(false, 8),
        )
        .with_rollout(rollout);
        s.ready("app1").ready("app2").ready("db");
        assert_eq!(s.take(), ["start db db", "batch 1: app1 (failed 0/0)"]);
        s.done("db", "db", Changed);
        assert_eq!(
            s.take(),
            ["start app1 app (batch 1/2)", "done db at 4", "finish db"]
        );
        s.done("app1", "app", Changed);
        assert_eq!(
            s.take(),
            [
                "done app1 at 5",
                "finish app1",
                "batch 2: app2 (failed 0/0)",
                "start app2 app (batch 2/2)"
            ]
        );
    }

    #[test]
    fn a_failed_drain_stops_the_rollout_before_its_batch() {
        let plan = balanced();
        let rollout = rolling(&plan, BALANCED, &["1"], "0", Some("upstreams"));
        let mut s = rolled(&plan, rollout);
        for h in BALANCED {
            s.ready(h);
        }
        s.done("db", "db", Unchanged)
            .done("lb", "upstreams", Unchanged);
        s.predicted("app1", true);
        s.take();
        s.done("lb", "upstreams", Failed);
        let log = s.take();
        assert_eq!(
            log[0],
            "stopped after 1: draining a batch from the balancer failed; not attempted: app1,app2,app3"
        );
        assert!(log.contains(&"finish lb".to_string()), "{log:?}");
        let (hosts, exit) = s.summary();
        assert_eq!(
            hosts,
            statuses(&[
                ("app1", "not_attempted"),
                ("app2", "not_attempted"),
                ("app3", "not_attempted"),
                ("db", "unchanged"),
                ("lb", "failed")
            ])
        );
        assert_eq!(exit, Exit::DeployFailed);
    }

    #[test]
    fn an_interrupt_starts_no_new_batch_but_undrains_the_current_one() {
        let plan = balanced();
        let mut s = at_app1(&plan, "0");
        s.sched.interrupt(s.clock);
        s.done("app1", "app", Changed);
        let log = s.take();
        assert!(
            log.contains(&"undrain lb upstreams -> app1,app2,app3".to_string()),
            "{log:?}"
        );
        s.done("lb", "upstreams", Changed);
        let (hosts, exit) = s.summary();
        assert_eq!(hosts[0], ("app1".into(), "changed".into()));
        assert_eq!(hosts[1], ("app2".into(), "interrupted".into()));
        assert_eq!(exit, Exit::Interrupted);
    }

    #[test]
    fn a_dry_run_predicts_every_host_without_batches() {
        let plan = balanced();
        let rollout = rolling(&plan, BALANCED, &["1"], "0", Some("upstreams"));
        let hosts: Vec<String> = BALANCED.iter().map(|h| h.to_string()).collect();
        let mut s = Script::new(&plan, BALANCED, dry_run(8));
        s.sched = Scheduler::new(&plan, &[0, 1, 2, 3, 4], &hosts, dry_run(8)).with_rollout(rollout);
        for h in BALANCED {
            s.ready(h);
        }
        assert_eq!(s.take().len(), 5, "every host's step starts at once");
    }

    #[test]
    fn statuses_serialize_snake_case_and_map_to_exit_codes() {
        assert_eq!(
            serde_json::to_string(&HostStatus::HostKeyRefused).unwrap(),
            "\"host_key_refused\""
        );
        assert_eq!(exit_of(HostStatus::NotAttempted), None);
        assert_eq!(exit_of(HostStatus::LockHeld), Some(Exit::LockHeld));
        assert!(HostStatus::Timeout.is_failure());
        assert!(!HostStatus::Skipped.is_failure());
    }
}
