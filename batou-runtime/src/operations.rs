//! The host's side of the operator's verbs, shared by the agent and `batou-local`: the
//! deploy freeze (`<base_dir>/.batou/freeze`), who holds the host's lock (read without taking
//! it), the state that `status` reports, the deploys that `history` reads from the journal,
//! and the program that `exec` runs.
//!
//! The freeze is a file, not a lock: it outlives every process, and lifting it needs no pid.
//! Who holds the host's `flock` right now is read from `/proc/locks`, so that `status` never
//! takes the lock, not even for an instant in which a deploy could find it held.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use batou_core::journal::JournalRecord;
use batou_core::operations::{
    CurrentRelease, Drift, ExecResult, Freeze, HostDeploy, HostState, LockOutcome, LockReport,
    LockVerb,
};
use batou_core::protocol::Controller;
use batou_core::{ConvergeOptions, Event, EventSink, Plan, RootOutcome, ServiceVerb};

/// The freeze file in a host's state directory (`<base_dir>/.batou`).
pub fn freeze_path(state: &Path) -> PathBuf {
    state.join("freeze")
}

/// The host's freeze, if it has one.
pub fn read_freeze(state: &Path) -> anyhow::Result<Option<Freeze>> {
    let path = freeze_path(state);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("cannot read the freeze `{}`", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read `{}`", path.display()))),
    }
}

/// Why a frozen host refuses a deploy, naming the freeze and how to lift it.
pub fn frozen_message(freeze: &Freeze) -> String {
    format!(
        "host is frozen by {} (lift the freeze with `lock release`)",
        freeze.describe()
    )
}

/// Runs a `lock` verb on the host whose state directory is `state`. `acquire` and `release`
/// are called with the host's lock held (no deploy runs meanwhile); `status` without.
pub fn lock_verb(
    state: &Path,
    verb: LockVerb,
    reason: Option<&str>,
    by: &Controller,
) -> anyhow::Result<LockReport> {
    let freeze = read_freeze(state)?;
    let holder = match verb {
        LockVerb::Status => lock_holder(state),
        LockVerb::Acquire | LockVerb::Release => None,
    };
    let (outcome, freeze) = match (verb, freeze) {
        (LockVerb::Status, freeze) => (LockOutcome::Unchanged, freeze),
        (LockVerb::Acquire, Some(f)) => {
            let same = f.user == by.user
                && f.controller_host == by.host
                && Some(f.reason.as_str()) == reason;
            let outcome = if same {
                LockOutcome::Unchanged
            } else {
                LockOutcome::Held
            };
            (outcome, Some(f))
        }
        (LockVerb::Acquire, None) => {
            let freeze = Freeze {
                user: by.user.clone(),
                controller_host: by.host.clone(),
                reason: reason.unwrap_or_default().to_string(),
                since: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            };
            crate::agent::create_state_dir(state)?;
            let text = serde_json::to_string(&freeze).expect("freezes always serialize");
            batou_components::write_atomic(&freeze_path(state), text.as_bytes(), 0o644, None, None)
                .context("cannot write the freeze")?;
            (LockOutcome::Acquired, Some(freeze))
        }
        (LockVerb::Release, Some(f)) => {
            let path = freeze_path(state);
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove `{}`", path.display()))?;
            (LockOutcome::Released, Some(f))
        }
        (LockVerb::Release, None) => (LockOutcome::Unchanged, None),
    };
    Ok(LockReport {
        outcome,
        freeze,
        holder,
    })
}

/// Who holds the host's lock (`<state>/lock`) right now: the holder its file names, when the
/// kernel lists an exclusive `flock` on that file in `/proc/locks`.
pub fn lock_holder(state: &Path) -> Option<Controller> {
    use std::os::unix::fs::MetadataExt;
    let path = state.join("lock");
    let meta = std::fs::metadata(&path).ok()?;
    let dev = meta.dev();
    // The kernel's encoding of a device number (glibc's `major` and `minor`).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let id = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let held = locks.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        // `1: FLOCK  ADVISORY  WRITE 4242 fd:01:123 0 EOF`; waiting locks have `->`.
        words.get(1) == Some(&"FLOCK") && words.contains(&"WRITE") && words.contains(&id.as_str())
    });
    if !held {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    serde_json::from_str(&text).ok()
}

/// The last `limit` deploys of `environment` in the host's journal, oldest first.
pub fn history(state: &Path, environment: &str, limit: usize) -> anyhow::Result<Vec<HostDeploy>> {
    let path = state.join("journal.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot read the journal `{}`", path.display())));
        }
    };
    let records: Vec<JournalRecord> = text.lines().filter_map(JournalRecord::parse).collect();
    let mut deploys = batou_core::operations::deploys(environment, &records);
    let skip = deploys.len().saturating_sub(limit);
    Ok(deploys.split_off(skip))
}

/// A sink that keeps nothing: the dry run of `status` counts, it does not show.
struct Discard;

impl EventSink for Discard {
    fn event(&mut self, _: Event) {}
}

/// The state of `host` for `status`: freeze, lock holder, last deploy, services, current
/// releases, and the drift a dry run of its steps finds. Changes nothing.
pub fn host_state(plan: &mut Plan, host: &str, state: &Path) -> anyhow::Result<HostState> {
    let freeze = read_freeze(state)?;
    let holder = lock_holder(state);
    let last_deploy = history(state, &plan.environment.clone(), 1)?.pop();
    let order = plan.host_order(host);
    let mut services = Vec::new();
    for &step in &order {
        if batou_core::has_services(plan, step) {
            services.extend(batou_core::control_services(
                plan,
                step,
                ServiceVerb::Status,
                &mut Discard,
            ));
        }
    }
    let mut releases = Vec::new();
    if !batou_core::release_steps(plan).is_empty() {
        for report in batou_core::release_verb(plan, host, &[], None, &mut Discard) {
            releases.push(CurrentRelease {
                current: report
                    .releases
                    .iter()
                    .find(|e| e.current)
                    .map(|e| e.id.clone()),
                releases: report.releases.len(),
                root: report.root,
            });
        }
    }
    let mut drift = Drift {
        roots: Vec::new(),
        of: order.len(),
        components: 0,
        failed: Vec::new(),
    };
    for &step in &order {
        let root = plan.steps()[step].root.clone();
        let report = batou_core::converge_step(
            plan,
            step,
            ConvergeOptions {
                dry_run: true,
                ..Default::default()
            },
            &mut Discard,
        );
        match report.outcome {
            RootOutcome::Changed => {
                drift.components += report.changed.len();
                drift.roots.push(root);
            }
            RootOutcome::Failed => {
                let error = report.failure.map(|(_, e)| e).unwrap_or_default();
                drift.failed.push((root, error));
            }
            RootOutcome::Unchanged | RootOutcome::NotAttempted => {}
        }
    }
    Ok(HostState {
        freeze,
        holder,
        last_deploy,
        services,
        releases,
        drift,
    })
}

/// Runs `argv` (no shell) in `cwd` for at most `timeout` through the command runner (its
/// process group ends with it, or at the deadline), passing each line to `sink` as an
/// `output` event of `host` as soon as it is complete.
pub fn exec(
    argv: &[String],
    timeout: Duration,
    cwd: &Path,
    host: &str,
    sink: &mut dyn EventSink,
) -> ExecResult {
    let started = Instant::now();
    let ran = batou_components::cmd(argv.iter().cloned())
        .cwd(cwd)
        .timeout(timeout)
        .run_streaming(|stream, line| {
            sink.event(Event::Output {
                host: host.to_string(),
                stream: stream.to_string(),
                line: line.to_string(),
            })
        });
    let seconds = started.elapsed().as_secs_f64();
    match ran {
        Ok(out) => ExecResult {
            exit_code: out.code(),
            signal: out.signal(),
            timed_out: out.timed_out(),
            error: None,
            seconds,
        },
        Err(e) => ExecResult {
            exit_code: None,
            signal: None,
            timed_out: false,
            error: Some(e.chain().map(|c| c.to_string()).collect()),
            seconds,
        },
    }
}

/// Where `exec` runs a program: the base directory when it exists, else the home directory.
pub fn exec_dir(base_dir: &Path) -> PathBuf {
    if base_dir.is_dir() {
        return base_dir.to_path_buf();
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Who runs a verb on this machine: the user and the machine's name (for a freeze made
/// with `batou-local`).
pub fn controller_here() -> Controller {
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
        commit: None,
    }
}

/// The deployment repository's commit when it is a git repository (`-dirty` when tracked
/// files have changes not committed); `None` without git or outside a repository.
pub fn project_commit(project: &Path) -> Option<String> {
    let git = |args: &[&str]| {
        batou_components::cmd(["git"].iter().chain(args).map(|a| a.to_string()))
            .cwd(project)
            .timeout(Duration::from_secs(10))
            .run()
            .ok()
            .filter(|out| out.success())
            .map(|out| out.stdout.trim().to_string())
    };
    let commit = git(&["rev-parse", "--verify", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|changes| !changes.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

/// `batou-local`'s refusal to converge (or run a verb that changes the host) while
/// `base_dir` is frozen: exit code `lock_held`.
pub(crate) fn refuse_if_frozen(base_dir: &Path) -> anyhow::Result<()> {
    if let Some(freeze) = read_freeze(&base_dir.join(".batou"))? {
        return Err(crate::ExitError {
            exit: crate::Exit::LockHeld,
            error: batou_core::ConfigError::new(format!(
                "`{}` {}",
                base_dir.display(),
                frozen_message(&freeze)
            ))
            .hint("see docs/operations.md#lock"),
        }
        .into());
    }
    Ok(())
}

/// Runs `status` or `lock` on this machine's `base_dir` (`batou-local`); `history` and
/// `exec` are `batou-remote`'s (a local converge keeps no journal, and a local program is
/// run by the shell).
pub(crate) fn run_here(
    plan: &mut Plan,
    host: &str,
    base_dir: &Path,
    operation: &crate::verb::Operation,
    sink: &mut dyn EventSink,
) -> anyhow::Result<crate::Exit> {
    use crate::verb::Operation;
    let started = Instant::now();
    let state = base_dir.join(".batou");
    let (status, detail, exit) = match operation {
        Operation::Status => {
            let found = host_state(plan, host, &state)?;
            let detail = state_detail(&found);
            sink.event(Event::HostState {
                host: host.to_string(),
                state: Box::new(found),
            });
            (
                batou_core::HostStatus::Unchanged,
                detail,
                crate::Exit::Success,
            )
        }
        Operation::Lock { verb, reason } => {
            let report = lock_verb(&state, *verb, reason.as_deref(), &controller_here())?;
            let (status, detail) = lock_detail(&report);
            let exit = crate::scheduler::exit_of(status).unwrap_or(crate::Exit::DeployFailed);
            sink.event(Event::Lock {
                host: host.to_string(),
                verb: *verb,
                report: Box::new(report),
            });
            (status, detail, exit)
        }
        Operation::History { .. } | Operation::Exec { .. } => {
            unreachable!("refused before planning")
        }
    };
    sink.event(Event::RunFinished {
        hosts: vec![batou_core::HostSummary {
            host: host.to_string(),
            status,
            detail,
        }],
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(exit)
}

/// A host's summary detail after `status`: frozen or not, drift.
pub fn state_detail(state: &HostState) -> String {
    let mut parts = Vec::new();
    if let Some(f) = &state.freeze {
        parts.push(format!("frozen by {}@{}", f.user, f.controller_host));
    }
    if let Some(h) = &state.holder {
        parts.push(format!("deploy running ({}@{})", h.user, h.host));
    }
    let drift = &state.drift;
    parts.push(if drift.roots.is_empty() && drift.failed.is_empty() {
        "no drift".to_string()
    } else if drift.failed.is_empty() {
        format!(
            "{} of {} root components would change",
            drift.roots.len(),
            drift.of
        )
    } else {
        format!(
            "{} of {} root components would change, {} unknown",
            drift.roots.len(),
            drift.of,
            drift.failed.len()
        )
    });
    parts.join(", ")
}

/// A host's status and summary detail after a `lock` verb: someone else's freeze in the way
/// of `acquire` is `lock_held`.
pub fn lock_detail(report: &LockReport) -> (batou_core::HostStatus, String) {
    use batou_core::HostStatus;
    let who = |f: &Freeze| format!("{}@{}: {}", f.user, f.controller_host, f.reason);
    match (report.outcome, &report.freeze) {
        (LockOutcome::Acquired, Some(f)) => (HostStatus::Changed, format!("frozen by {}", who(f))),
        (LockOutcome::Released, Some(f)) => (
            HostStatus::Changed,
            format!("thawed (was frozen by {})", who(f)),
        ),
        (LockOutcome::Held, Some(f)) => (
            HostStatus::LockHeld,
            format!("already frozen by {} since {}", who(f), f.since),
        ),
        (_, Some(f)) => (HostStatus::Unchanged, format!("frozen by {}", who(f))),
        (_, None) => (HostStatus::Unchanged, "not frozen".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Controller {
        Controller {
            user: "alice".into(),
            host: "laptop".into(),
            pid: 1,
            started: "t".into(),
            commit: None,
        }
    }

    #[test]
    fn a_freeze_is_acquired_once_shown_and_released() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join(".batou");
        let r = lock_verb(&state, LockVerb::Status, None, &me()).unwrap();
        assert_eq!((r.outcome, r.freeze), (LockOutcome::Unchanged, None));
        let r = lock_verb(&state, LockVerb::Acquire, Some("migration"), &me()).unwrap();
        assert_eq!(r.outcome, LockOutcome::Acquired);
        assert_eq!(read_freeze(&state).unwrap().unwrap().reason, "migration");
        let r = lock_verb(&state, LockVerb::Acquire, Some("migration"), &me()).unwrap();
        assert_eq!(r.outcome, LockOutcome::Unchanged);
        let bob = Controller {
            user: "bob".into(),
            ..me()
        };
        let r = lock_verb(&state, LockVerb::Acquire, Some("other"), &bob).unwrap();
        assert_eq!(r.outcome, LockOutcome::Held);
        assert_eq!(r.freeze.unwrap().user, "alice");
        // Anyone may lift a freeze: no pid file to guess.
        let r = lock_verb(&state, LockVerb::Release, None, &bob).unwrap();
        assert_eq!(r.outcome, LockOutcome::Released);
        assert_eq!(read_freeze(&state).unwrap(), None);
        let r = lock_verb(&state, LockVerb::Release, None, &bob).unwrap();
        assert_eq!(r.outcome, LockOutcome::Unchanged);
    }

    #[test]
    fn the_lock_holder_is_read_without_taking_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().to_path_buf();
        assert_eq!(lock_holder(&state), None);
        let path = state.join("lock");
        std::fs::write(&path, serde_json::to_string(&me()).unwrap()).unwrap();
        assert_eq!(lock_holder(&state), None, "a file alone is no lock");
        let file = std::fs::File::open(&path).unwrap();
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .unwrap();
        assert_eq!(lock_holder(&state), Some(me()));
        drop(lock);
        assert_eq!(lock_holder(&state), None);
    }

    #[test]
    fn exec_streams_lines_and_ends_at_its_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let mut lines = Vec::new();
        let argv: Vec<String> = ["sh", "-c", "echo one; echo two >&2; exit 3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r = exec(
            &argv,
            Duration::from_secs(10),
            tmp.path(),
            "web1",
            &mut |e: Event| lines.push(e),
        );
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(lines.len(), 2);
        let argv: Vec<String> = ["sleep", "30"].iter().map(|s| s.to_string()).collect();
        let r = exec(
            &argv,
            Duration::from_millis(300),
            tmp.path(),
            "web1",
            &mut |_: Event| {},
        );
        assert!(r.timed_out && r.exit_code.is_none(), "{r:?}");
        assert!(r.seconds < 10.0);
    }
}
