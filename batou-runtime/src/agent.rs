//! The agent: the deployment binary run on a host as `<binary> agent`, driven by a controller
//! over stdin/stdout with the line-delimited JSON protocol of `batou_core::protocol`.
//!
//! The agent holds an exclusive kernel lock (flock) on `<base_dir>/.batou/lock` for the whole
//! session, so a second deploy of the host fails fast naming the holder; a dead holder's lock
//! is released by the kernel, but only once the command it was running has been ended (the
//! lock is shared with the command runner's guards). Each deploy appends `started` and
//! `finished` (or `aborted`) records to `<base_dir>/.batou/journal.jsonl`. Dry runs neither
//! lock nor write anything. A session for a `service` verb runs the verb on the services of
//! the root components the controller names; `start`, `stop` and `restart` take the lock
//! and append one `service` record, `status` does neither. A frozen host
//! (`<base_dir>/.batou/freeze`, see `operations.rs`) refuses every session that takes the
//! lock, other than the `lock` verbs'; `status`, `history`, `exec` and `lock` sessions are
//! answered by `operations.rs`.

use std::fs::File;
use std::io::{BufRead, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use batou_core::journal::{DeployResult, JournalEntry, JournalRecord};
use batou_core::protocol::{Controller, FromAgent, PROTOCOL_VERSION, Purpose, Refusal, ToAgent};
use batou_core::{ConvergeOptions, Event, EventSink, Plan, Registry, RootOutcome};
use nix::fcntl::{Flock, FlockArg};

/// How often the agent says it is alive, so a controller can tell a busy agent from a dead one.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Serves one controller session on stdin/stdout; returns the process exit status.
pub fn serve(registry: &Registry) -> u8 {
    let out = Writer(Arc::new(Mutex::new(std::io::stdout())));
    let link = Arc::new(Link::default());
    let mut lines = read_lines(Arc::clone(&link)).into_iter();
    match session(registry, &out, &link, &mut lines) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("agent: {}", batou_core::redact::mask(&format!("{err:#}")));
            1
        }
    }
}

/// Checks that this binary's SHA-256 is `expected`, syncs it and renames it to `target`.
///
/// Run as `<temporary upload> agent-install <sha256> <target>` right after an upload, so an
/// incomplete or corrupted upload is never installed.
pub fn install(expected: &str, target: &Path) -> u8 {
    match install_checked(expected, target) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("agent-install: {err:#}");
            1
        }
    }
}

fn install_checked(expected: &str, target: &Path) -> anyhow::Result<()> {
    let me = std::env::current_exe().context("cannot find this executable")?;
    let actual = sha256_file(&me)?;
    if actual != expected {
        bail!("upload is corrupt: sha256 {actual}, expected {expected}");
    }
    File::open(&me)?.sync_all()?;
    std::fs::rename(&me, target)
        .with_context(|| format!("cannot install the agent as `{}`", target.display()))?;
    if let Some(dir) = target.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let mut file = File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Where the session with the controller stands, shared by the session loop and the thread
/// that reads stdin.
///
/// A lost connection must end a running step at once: the process exits, and the guards of
/// its commands end them (see `batou_components::process`). Between steps the session loop
/// notices the end of input itself and records the abort.
#[derive(Default)]
struct Link(AtomicU8, AtomicBool, AtomicUsize);

const IDLE: u8 = 0;
const STEPPING: u8 = 1;
const GONE: u8 = 2;

impl Link {
    /// Marks a step as running; false when the controller is already gone.
    fn begin_step(&self) -> bool {
        self.0
            .compare_exchange(IDLE, STEPPING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    fn end_step(&self) {
        let _ = self
            .0
            .compare_exchange(STEPPING, IDLE, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Records the end of input; true when a step is running.
    fn lost(&self) -> bool {
        self.0.swap(GONE, Ordering::SeqCst) == STEPPING
    }

    /// Whether the controller cancelled the steps queued here (`cancel`).
    fn cancelled(&self) -> bool {
        self.1.load(Ordering::SeqCst)
    }

    /// The session took one of the lines read.
    fn took_line(&self) {
        self.2.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether a message from the controller has arrived that the session has not taken.
    fn has_waiting(&self) -> bool {
        self.2.load(Ordering::SeqCst) > 0
    }
}

/// Whether `line` is the controller's `cancel`, which is read ahead of the steps queued
/// before it. Only short lines are parsed: a job's line is large and is parsed once, later.
fn is_cancel(line: &str) -> bool {
    line.len() <= 64 && matches!(serde_json::from_str(line), Ok(ToAgent::Cancel))
}

/// Reads stdin on a thread, so that its end is noticed while a step runs.
fn read_lines(link: Arc<Link>) -> std::sync::mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.as_deref().is_ok_and(is_cancel) {
                link.1.store(true, Ordering::SeqCst);
            }
            let failed = line.is_err();
            link.2.fetch_add(1, Ordering::SeqCst);
            if tx.send(line).is_err() || failed {
                break;
            }
        }
        if link.lost() {
            // Not `eprintln!`, which panics (ending only this thread) when stderr is gone too.
            let _ = writeln!(
                std::io::stderr(),
                "agent: the controller went away during a step; ending its commands"
            );
            std::process::exit(1);
        }
    });
    rx
}

/// Writes protocol messages, one line each, from any thread.
#[derive(Clone)]
struct Writer(Arc<Mutex<std::io::Stdout>>);

impl Writer {
    fn send(&self, msg: &FromAgent) {
        // A controller that went away is noticed by the stdin reader and the heartbeat.
        let _ = self.try_send(msg);
    }

    fn try_send(&self, msg: &FromAgent) -> std::io::Result<()> {
        let mut line = serde_json::to_string(&batou_core::redact::to_masked_json(msg))
            .expect("protocol messages always serialize");
        // One write per message: a line split in two writes travels in two SSH packets.
        line.push('\n');
        let mut out = self
            .0
            .lock()
            .expect("the agent's stdout lock is never poisoned");
        out.write_all(line.as_bytes())?;
        out.flush()
    }
}

impl EventSink for Writer {
    fn event(&mut self, event: Event) {
        self.send(&FromAgent::Event { event });
    }
}

fn session(
    registry: &Registry,
    out: &Writer,
    link: &Link,
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
) -> anyhow::Result<()> {
    out.send(&FromAgent::Hello {
        protocol: PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION").to_string(),
    });
    let Some(line) = lines.next() else {
        return Ok(());
    };
    link.took_line();
    let msg: ToAgent = match serde_json::from_str(&line?) {
        Ok(msg) => msg,
        Err(e) => {
            refuse(
                out,
                Refusal::Protocol,
                vec![format!("cannot read the start message: {e}")],
                None,
            );
            bail!("protocol error");
        }
    };
    let ToAgent::Start {
        protocol,
        job,
        dry_run,
        controller,
        purpose,
    } = msg
    else {
        refuse(
            out,
            Refusal::Protocol,
            vec!["expected a start message".into()],
            None,
        );
        bail!("protocol error");
    };
    if protocol != PROTOCOL_VERSION {
        refuse(
            out,
            Refusal::Protocol,
            vec![format!(
                "controller speaks protocol {protocol}, this agent speaks {PROTOCOL_VERSION}"
            )],
            None,
        );
        bail!("protocol mismatch");
    }

    for (name, value) in &job.secrets {
        batou_core::redact::register(name, value);
    }
    let base_dir = resolve_base_dir(&job.base_dir)?;
    let state = base_dir.join(".batou");
    // A session for a `service` verb writes a `service` record for its verb, not the
    // `started` and `finished` records of a deploy.
    let deploy = purpose == Purpose::Deploy;
    // The lock lives as long as this binding: the whole session.
    let _lock = if !purpose.locks(dry_run) {
        None
    } else {
        match lock(&state, &controller) {
            Ok(lock) => {
                // Commands' guards keep the lock until they have ended their command, so a
                // crashed agent's host stays locked while its last command is ended.
                batou_components::process::keep_in_guards(&*lock)
                    .context("cannot share the host lock with command guards")?;
                Some(lock)
            }
            Err(LockError::Held(holder)) => {
                let message = match &holder {
                    Some(h) => format!(
                        "host is locked by a deploy of {}@{} (pid {}) since {}",
                        h.user, h.host, h.pid, h.started
                    ),
                    None => "host is locked by another deploy".to_string(),
                };
                refuse(out, Refusal::LockHeld, vec![message], holder);
                return Ok(());
            }
            Err(LockError::Other(e)) => {
                refuse(out, Refusal::Failed, chain(&e), None);
                return Err(e);
            }
        }
    };
    // A frozen host refuses every session that would change it, until `lock release`.
    if purpose.respects_freeze(dry_run) {
        match crate::operations::read_freeze(&state) {
            Ok(None) => {}
            Ok(Some(freeze)) => {
                let message = crate::operations::frozen_message(&freeze);
                refuse(out, Refusal::LockHeld, vec![message], None);
                return Ok(());
            }
            Err(e) => {
                refuse(out, Refusal::Failed, chain(&e), None);
                return Err(e);
            }
        }
    }
    // A deploy checks that the base directory is this environment's before anything
    // changes on the host, in a dry run too (which only reads).
    let mut inventory = if deploy {
        match crate::inventory::HostInventory::open(
            &base_dir,
            &job.environment,
            &job.host.name,
            dry_run,
        ) {
            Ok(inventory) => Some(inventory),
            Err(e) => {
                match crate::inventory::owner_refusal(&e) {
                    Some(message) => refuse(out, Refusal::Owner, message, None),
                    None => refuse(out, Refusal::Failed, chain(&e), None),
                }
                return Ok(());
            }
        }
    } else {
        None
    };
    let journal = purpose.locks(dry_run).then(|| Journal {
        path: state.join("journal.jsonl"),
        environment: job.environment.clone(),
        host: job.host.name.clone(),
        controller: controller.clone(),
    });
    if let Some(j) = journal.as_ref().filter(|_| deploy) {
        j.append(JournalEntry::Started {
            commit: controller.commit.clone(),
            run: Some(controller.started.clone()),
        })?;
    }

    // The controller planned with this host's facts: they must be this host's.
    if let Some(planned) = &job.facts {
        let found = crate::facts::this_machine();
        let differences = match &found {
            Ok(found) => planned.differences(found),
            Err(e) => vec![format!("cannot gather them: {e:#}")],
        };
        if !differences.is_empty() {
            let e = anyhow::anyhow!(
                "the controller planned with other facts of host `{}` than the agent finds: {}",
                job.host.name,
                differences.join(", ")
            );
            refuse(out, Refusal::PlanMismatch, chain(&e), None);
            if let Some(j) = journal.as_ref().filter(|_| deploy) {
                j.append(JournalEntry::Aborted { error: chain(&e) })?;
            }
            return Ok(());
        }
    }
    // `history`, `exec` and `lock` configure nothing of the job: they work whatever its
    // components would do.
    let configured = if matches!(
        purpose,
        Purpose::History | Purpose::Exec { .. } | Purpose::Lock { .. }
    ) {
        std::borrow::Cow::Owned(batou_core::protocol::HostJob {
            steps: Vec::new(),
            ..(*job).clone()
        })
    } else {
        std::borrow::Cow::Borrowed(&*job)
    };
    let mut plan = match Plan::from_job(&configured, registry, &base_dir) {
        Ok(plan) => plan,
        Err(e) => {
            let e = anyhow::Error::new(e);
            refuse(out, Refusal::PlanMismatch, chain(&e), None);
            if let Some(j) = journal.as_ref().filter(|_| deploy) {
                j.append(JournalEntry::Aborted { error: chain(&e) })?;
            }
            return Ok(());
        }
    };
    out.send(&FromAgent::Ready);

    let heartbeat = out.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(HEARTBEAT);
            if heartbeat.try_send(&FromAgent::Heartbeat).is_err() {
                // Nobody listens: a step's outcome could never be reported. Exiting makes
                // the guards end any running command.
                let _ = writeln!(
                    std::io::stderr(),
                    "agent: cannot write to the controller; ending"
                );
                std::process::exit(1);
            }
        }
    });

    // Steps arrive ahead of their turn: none runs after a step failed (outside a dry run,
    // which predicts past failures) or after the controller cancelled the queued ones.
    // Consecutive steps share one sync of their files (see `Unsettled`).
    let options = ConvergeOptions {
        dry_run,
        keep_writes_pending: !dry_run,
    };
    let mut settled = Settled {
        host: job.host.name.clone(),
        dry_run,
        unsettled: Vec::new(),
        outcomes: Vec::new(),
        changed_components: Vec::new(),
        failed: false,
    };
    for line in lines {
        link.took_line();
        let line = line?;
        let msg = serde_json::from_str::<ToAgent>(&line);
        // Whatever else comes, the steps done so far are reported first, in order.
        if !matches!(msg, Ok(ToAgent::Step { .. })) {
            settled.settle(&mut plan, inventory.as_mut(), journal.as_ref(), out)?;
        }
        match msg {
            Ok(ToAgent::Step { root, rollout }) if deploy => {
                let Some(step) = plan.steps().iter().position(|s| s.root == root) else {
                    refuse(
                        out,
                        Refusal::Protocol,
                        vec![format!("no root component `{root}` in this job")],
                        None,
                    );
                    bail!("protocol error");
                };
                let hook = rollout.as_ref().is_some_and(|r| r.hook.is_some());
                // Reported before a step that may take long or read their files: their
                // dependents on other hosts need not wait for it.
                if link.cancelled()
                    || (settled.failed && !dry_run)
                    || hook
                    || rollout.is_some()
                    || settled.unsettled.len() >= SETTLE_EVERY
                    || plan.reads_written_files(step)
                {
                    settled.settle(&mut plan, inventory.as_mut(), journal.as_ref(), out)?;
                }
                if link.cancelled() || (settled.failed && !dry_run) {
                    out.send(&FromAgent::StepFinished {
                        root,
                        outcome: RootOutcome::NotAttempted,
                    });
                    continue;
                }
                if !link.begin_step() {
                    break;
                }
                let mut sink = out.clone();
                let started = now();
                if let (Some(j), Some(r)) = (&journal, &rollout) {
                    j.append(JournalEntry::Rollout {
                        component: root.clone(),
                        batch: r.batch,
                        batches: r.batches,
                        hook: r.hook,
                        in_rotation: r.in_rotation.clone(),
                    })?;
                }
                let report = match rollout.as_ref().filter(|r| r.hook.is_some()) {
                    // A drain or undrain: the balancer's step, configured again with only
                    // these rolled hosts in rotation.
                    Some(r) => crate::rollout::converge_hook(
                        &job,
                        registry,
                        &base_dir,
                        (step, &r.in_rotation),
                        ConvergeOptions {
                            keep_writes_pending: false,
                            ..options
                        },
                        &mut sink,
                    ),
                    None => {
                        let report = batou_core::converge_step(&mut plan, step, options, &mut sink);
                        if let (Some((component, _)), false) = (&report.failure, dry_run) {
                            batou_core::roll_back_after_failure(
                                &mut plan, step, component, &mut sink,
                            );
                        }
                        report
                    }
                };
                link.end_step();
                let failed = report.outcome == RootOutcome::Failed;
                settled.unsettled.push(Unsettled {
                    // A drain or undrain is the balancer's step again: the `finished` record
                    // counts it once, unless it failed.
                    counts: !hook || failed,
                    root,
                    report,
                    started,
                });
                // The next step is already here: its files join this sync.
                if failed || rollout.is_some() || !link.has_waiting() {
                    settled.settle(&mut plan, inventory.as_mut(), journal.as_ref(), out)?;
                }
            }
            Ok(ToAgent::Service { roots }) => {
                let Purpose::Service { verb } = purpose else {
                    refuse(
                        out,
                        Refusal::Protocol,
                        vec!["a `service` message in a deploy session".into()],
                        None,
                    );
                    bail!("protocol error");
                };
                let mut steps = Vec::new();
                for root in &roots {
                    let Some(step) = plan.steps().iter().position(|s| &s.root == root) else {
                        refuse(
                            out,
                            Refusal::Protocol,
                            vec![format!("no root component `{root}` in this job")],
                            None,
                        );
                        bail!("protocol error");
                    };
                    steps.push(step);
                }
                if !link.begin_step() {
                    break;
                }
                let mut sink = out.clone();
                let mut all = Vec::new();
                for step in steps {
                    all.extend(batou_core::control_services(
                        &mut plan, step, verb, &mut sink,
                    ));
                }
                link.end_step();
                if let Some(j) = &journal {
                    j.append(JournalEntry::Service {
                        verb,
                        outcomes: all.clone(),
                    })?;
                }
                out.send(&FromAgent::ServiceFinished { outcomes: all });
            }
            Ok(ToAgent::Releases { roots, to }) => {
                let Purpose::Releases { rollback } = purpose else {
                    refuse(
                        out,
                        Refusal::Protocol,
                        vec!["a `releases` message in another session".into()],
                        None,
                    );
                    bail!("protocol error");
                };
                if !link.begin_step() {
                    break;
                }
                let mut sink = out.clone();
                let reports = batou_core::release_verb(
                    &mut plan,
                    &job.host.name,
                    &roots,
                    rollback.then_some(to.as_deref()),
                    &mut sink,
                );
                link.end_step();
                out.send(&FromAgent::ReleasesFinished { reports });
            }
            Ok(ToAgent::Orphans { prune }) if deploy => {
                let Some(inventory) = inventory.as_mut() else {
                    bail!("a deploy session has an ownership record");
                };
                if !link.begin_step() {
                    break;
                }
                let mut sink = out.clone();
                let report = inventory.orphans(&plan, prune, &mut sink);
                link.end_step();
                let report = match report {
                    Ok(report) => report,
                    Err(e) => {
                        out.send(&FromAgent::OrphansFinished {
                            orphans: Vec::new(),
                            failed: chain(&e),
                        });
                        continue;
                    }
                };
                if let Some(j) = &journal {
                    for pruned in &report.pruned {
                        j.append(JournalEntry::Pruned {
                            component: pruned.root.clone(),
                            removed: pruned.removed.clone(),
                            kept: pruned.kept.clone(),
                            failed: pruned.failed.clone(),
                        })?;
                    }
                }
                out.send(&FromAgent::OrphansFinished {
                    failed: report.failures(),
                    orphans: report.orphans,
                });
            }
            Ok(ToAgent::Status) if purpose == Purpose::Status => {
                let host_state = crate::operations::host_state(&mut plan, &job.host.name, &state);
                match host_state {
                    Ok(host_state) => out.send(&FromAgent::StatusFinished {
                        state: Box::new(host_state),
                    }),
                    Err(e) => {
                        refuse(out, Refusal::Failed, chain(&e), None);
                        return Err(e);
                    }
                }
            }
            Ok(ToAgent::History { limit }) if purpose == Purpose::History => {
                match crate::operations::history(&state, &job.environment, limit) {
                    Ok(deploys) => out.send(&FromAgent::HistoryFinished { deploys }),
                    Err(e) => {
                        refuse(out, Refusal::Failed, chain(&e), None);
                        return Err(e);
                    }
                }
            }
            Ok(ToAgent::Exec {
                argv,
                timeout_seconds,
            }) if matches!(purpose, Purpose::Exec { .. }) => {
                if !link.begin_step() {
                    break;
                }
                let timeout =
                    Duration::try_from_secs_f64(timeout_seconds).unwrap_or(Duration::from_secs(1));
                let mut sink = out.clone();
                let result = crate::operations::exec(
                    &argv,
                    timeout,
                    &crate::operations::exec_dir(&base_dir),
                    &job.host.name,
                    &mut sink,
                );
                link.end_step();
                if let Some(j) = &journal {
                    j.append(JournalEntry::Exec {
                        argv,
                        exit_code: result.exit_code,
                        timed_out: result.timed_out,
                    })?;
                }
                out.send(&FromAgent::ExecFinished { result });
            }
            Ok(ToAgent::Lock { reason }) if matches!(purpose, Purpose::Lock { .. }) => {
                let Purpose::Lock { verb } = purpose else {
                    unreachable!("matched above")
                };
                match crate::operations::lock_verb(&state, verb, reason.as_deref(), &controller) {
                    Ok(report) => out.send(&FromAgent::LockFinished { report }),
                    Err(e) => {
                        refuse(out, Refusal::Failed, chain(&e), None);
                        return Err(e);
                    }
                }
            }
            Ok(ToAgent::Predict { roots }) if deploy => {
                if !link.begin_step() {
                    break;
                }
                let changed = crate::rollout::predict(&job, registry, &base_dir, &roots);
                link.end_step();
                out.send(&FromAgent::Predicted { changed });
            }
            Ok(ToAgent::Finish) => {
                if let Some(inventory) = &inventory {
                    inventory.finish(plan.steps().len())?;
                }
                if let Some(j) = journal.as_ref().filter(|_| deploy) {
                    j.finished(
                        &settled.outcomes,
                        plan.steps().len(),
                        &settled.changed_components,
                    )?;
                }
                out.send(&FromAgent::Finished);
                return Ok(());
            }
            // Acted on by the thread that reads stdin, as soon as it arrived.
            Ok(ToAgent::Cancel) => {}
            Ok(
                ToAgent::Start { .. }
                | ToAgent::Step { .. }
                | ToAgent::Predict { .. }
                | ToAgent::Orphans { .. }
                | ToAgent::Status
                | ToAgent::History { .. }
                | ToAgent::Exec { .. }
                | ToAgent::Lock { .. },
            )
            | Err(_) => {
                refuse(
                    out,
                    Refusal::Protocol,
                    vec!["unexpected message".into()],
                    None,
                );
                bail!("protocol error");
            }
        }
    }
    // The controller went away mid-session: what converged lands and is journaled.
    settled.settle(&mut plan, inventory.as_mut(), journal.as_ref(), out)?;
    if let Some(j) = journal.as_ref().filter(|_| deploy) {
        j.append(JournalEntry::Aborted {
            error: vec!["controller disconnected".into()],
        })?;
    }
    bail!("controller disconnected")
}

/// Steps one sync of their files may share at most.
const SETTLE_EVERY: usize = 64;

/// A step converged whose files may still wait for their sync: it is reported, journaled and
/// recorded in the ownership record once they are durable and in place.
///
/// Consecutive steps share that sync (one `syncfs`, one sync of each directory, one of the
/// journal and one of the ownership record) when the next one has already arrived. Steps
/// are settled before a step that may read what they wrote or take long (a component that
/// [reads written files](batou_core::Component::reads_written_files): commands, services),
/// after a failure, before any other message and when no step is waiting; a step is never
/// reported before its files are durable and visible.
struct Unsettled {
    root: String,
    report: batou_core::StepReport,
    started: String,
    /// Whether it counts in the `finished` record (a drain or undrain does not).
    counts: bool,
}

/// What the session's steps did so far.
struct Settled {
    host: String,
    /// A dry run records nothing in the ownership record.
    dry_run: bool,
    unsettled: Vec<Unsettled>,
    outcomes: Vec<(String, RootOutcome)>,
    changed_components: Vec<String>,
    /// A step failed: no later step runs (outside a dry run).
    failed: bool,
}

impl Settled {
    /// Makes the unsettled steps' files durable and visible, records and journals the steps
    /// and reports them, in order. A failed sync fails the last of them.
    fn settle(
        &mut self,
        plan: &mut Plan,
        inventory: Option<&mut crate::inventory::HostInventory>,
        journal: Option<&Journal>,
        out: &Writer,
    ) -> anyhow::Result<()> {
        if self.unsettled.is_empty() {
            return Ok(());
        }
        if let Err(e) = plan.flush_writes() {
            let e = e.context("cannot make the written files durable");
            let last = self.unsettled.last_mut().expect("checked above");
            out.send(&FromAgent::Event {
                event: Event::Failed {
                    host: self.host.clone(),
                    component: last.root.clone(),
                    error: chain(&e),
                },
            });
            last.report.outcome = RootOutcome::Failed;
        }
        if let Some(inventory) = inventory.filter(|_| !self.dry_run) {
            for s in &self.unsettled {
                inventory.record_step(&s.root, &s.report.created, false)?;
            }
            inventory.save_changes()?;
        }
        if let Some(j) = journal {
            j.append_all(self.unsettled.iter().map(|s| JournalEntry::Step {
                component: s.root.clone(),
                outcome: s.report.outcome,
                started: s.started.clone(),
                changed: s.report.changed.clone(),
            }))?;
        }
        for s in self.unsettled.drain(..) {
            let outcome = s.report.outcome;
            self.failed |= outcome == RootOutcome::Failed;
            self.changed_components.extend(s.report.changed);
            if s.counts {
                self.outcomes.push((s.root.clone(), outcome));
            }
            out.send(&FromAgent::StepFinished {
                root: s.root,
                outcome,
            });
        }
        Ok(())
    }
}

fn refuse(out: &Writer, reason: Refusal, message: Vec<String>, holder: Option<Controller>) {
    out.send(&FromAgent::Refused {
        reason,
        message,
        holder,
    });
}

fn chain(err: &anyhow::Error) -> Vec<String> {
    err.chain().map(|e| e.to_string()).collect()
}

/// The base directory on this host: relative paths (and `~/...`) are relative to `$HOME`.
pub(crate) fn resolve_base_dir(base_dir: &str) -> anyhow::Result<PathBuf> {
    if Path::new(base_dir).is_absolute() {
        return Ok(PathBuf::from(base_dir));
    }
    let home = std::env::var_os("HOME").context("`HOME` is not set on this host")?;
    Ok(batou_core::host_base_dir(base_dir, Path::new(&home)))
}

enum LockError {
    Held(Option<Controller>),
    Other(anyhow::Error),
}

/// Takes the host's lock and records the holder in it.
fn lock(state: &Path, controller: &Controller) -> Result<Flock<File>, LockError> {
    let other = |e: anyhow::Error| LockError::Other(e);
    create_state_dir(state).map_err(other)?;
    let path = state.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open `{}`", path.display()))
        .map_err(other)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::Held(serde_json::from_str(&text).ok()));
        }
        Err((_, errno)) => {
            return Err(other(
                anyhow::Error::new(errno).context(format!("cannot lock `{}`", path.display())),
            ));
        }
    };
    let holder = serde_json::to_string(controller).expect("controllers always serialize");
    let write = (|| -> std::io::Result<()> {
        lock.set_len(0)?;
        lock.rewind()?;
        lock.write_all(holder.as_bytes())?;
        lock.sync_all()
    })();
    write
        .with_context(|| format!("cannot record the lock holder in `{}`", path.display()))
        .map_err(other)?;
    Ok(lock)
}

/// Creates `state` with mode 0700 and its missing parents (the base directory and above) with
/// mode 0755, whatever the umask, like a `directory` component would; existing directories
/// keep their modes.
pub(crate) fn create_state_dir(state: &Path) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    let mut dir = state;
    while !dir.is_dir() {
        missing.push(dir);
        match dir.parent() {
            Some(parent) => dir = parent,
            None => break,
        }
    }
    for dir in missing.into_iter().rev() {
        let mode = if dir == state { 0o700 } else { 0o755 };
        match std::fs::DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set the mode of `{}`", dir.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot create `{}`", dir.display()))
                );
            }
        }
    }
    Ok(())
}

/// The current time, RFC 3339 in UTC with nanoseconds (records of one host sort by it).
fn now() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// The host's append-only deploy journal.
struct Journal {
    path: PathBuf,
    environment: String,
    host: String,
    controller: Controller,
}

impl Journal {
    /// Appends one record, masked, and syncs it.
    fn append(&self, entry: JournalEntry) -> anyhow::Result<()> {
        self.append_all(std::iter::once(entry))
    }

    /// Appends records, masked, in one write, and syncs them once.
    fn append_all(&self, entries: impl Iterator<Item = JournalEntry>) -> anyhow::Result<()> {
        let mut lines = String::new();
        for entry in entries {
            let record = JournalRecord {
                time: now(),
                environment: self.environment.clone(),
                host: self.host.clone(),
                user: self.controller.user.clone(),
                controller_host: self.controller.host.clone(),
                pid: self.controller.pid,
                entry,
            };
            lines.push_str(&serde_json::to_string(
                &batou_core::redact::to_masked_json(&record),
            )?);
            lines.push('\n');
        }
        if lines.is_empty() {
            return Ok(());
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .with_context(|| format!("cannot open the journal `{}`", self.path.display()))?;
        file.write_all(lines.as_bytes())?;
        file.sync_all()?;
        Ok(())
    }

    /// The `finished` record: what ran of the job's `steps` root components.
    fn finished(
        &self,
        outcomes: &[(String, RootOutcome)],
        steps: usize,
        changed: &[String],
    ) -> anyhow::Result<()> {
        let of = |o: RootOutcome| -> Vec<String> {
            outcomes
                .iter()
                .filter(|(_, x)| *x == o)
                .map(|(r, _)| r.clone())
                .collect()
        };
        // A session can end without any step (another host could not be prepared) or before
        // all of them (a failure elsewhere, an interrupt): neither is a success.
        let result = if outcomes.iter().any(|(_, o)| *o == RootOutcome::Failed) {
            DeployResult::Failed
        } else if outcomes.is_empty() {
            DeployResult::NotAttempted
        } else if outcomes.len() < steps {
            DeployResult::Incomplete
        } else {
            DeployResult::Success
        };
        self.append(JournalEntry::Finished {
            result,
            changed: of(RootOutcome::Changed),
            unchanged: of(RootOutcome::Unchanged),
            failed: of(RootOutcome::Failed),
            components_changed: changed.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_state_directory_is_private_and_its_new_parents_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("existing")).unwrap();
        std::fs::set_permissions(
            tmp.path().join("existing"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        let state = tmp.path().join("existing/a/srv/.batou");
        create_state_dir(&state).unwrap();
        assert_eq!(mode(&tmp.path().join("existing")), 0o750);
        assert_eq!(mode(&tmp.path().join("existing/a")), 0o755);
        assert_eq!(mode(&tmp.path().join("existing/a/srv")), 0o755);
        assert_eq!(mode(&state), 0o700);
        // Existing directories keep their modes.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_state_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o750);
    }
}
