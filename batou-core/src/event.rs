//! Events that a converge run reports, as they happen.
//!
//! The same values feed the human renderer, the `--json` stream and (later) the agent protocol,
//! so every field is plain data and serializes deterministically.

use serde::{Deserialize, Serialize};

use crate::{RootOutcome, ServiceOutcome, ServiceVerb};

/// Something that happened while converging one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Converging a host's steps begins.
    HostStarted {
        /// The host the event is about.
        host: String,
        /// The environment being deployed.
        environment: String,
        /// Whether the run only reports what it would change.
        dry_run: bool,
    },
    /// A root component starts converging.
    StepStarted {
        /// The host the event is about.
        host: String,
        /// The root component the event is about.
        component: String,
    },
    /// A root component finished converging, whatever its outcome (`changed`, `unchanged`,
    /// `failed`): the one event an unchanged root component has.
    StepFinished {
        /// The host the event is about.
        host: String,
        /// The root component the event is about.
        component: String,
        /// How the root component ended: `changed`, `unchanged` or `failed`.
        outcome: RootOutcome,
        /// Whether the run only reports what it would change.
        dry_run: bool,
        /// How long converging the root component took.
        seconds: f64,
    },
    /// A component needed an update (in a dry run: would need one).
    Changed {
        /// The host the event is about.
        host: String,
        /// The root component the event is about.
        component: String,
        /// Why the component needed an update, for people.
        reason: String,
        /// Whether the run only reports what it would change.
        dry_run: bool,
    },
    /// The unified diff of a file change, shown after its `changed` event.
    Diff {
        /// The host the event is about.
        host: String,
        /// The root component the event is about.
        component: String,
        /// The unified diff, old content to new.
        diff: String,
    },
    /// A message a component wants people to see.
    Log {
        /// The host the event is about.
        host: String,
        /// The root component the event is about.
        component: String,
        /// The message, as the component wrote it.
        message: String,
    },
    /// What the tool does on the way, for `-vv`: a command a component runs, how a host is
    /// reached. `component` is empty for what concerns the host as a whole.
    Detail {
        /// The host the event is about.
        host: String,
        /// The component path, or empty.
        component: String,
        /// What is being done.
        message: String,
    },
    /// A component failed; `error` is the cause chain, outermost first.
    Failed {
        /// The host the event is about.
        host: String,
        /// The root component the event is about.
        component: String,
        /// The cause chain, outermost first.
        error: Vec<String>,
    },
    /// The controller uploaded the agent binary to a host's cache.
    AgentUploaded {
        /// The host the event is about.
        host: String,
        /// The size of the uploaded binary.
        bytes: u64,
    },
    /// A root component was not run; `reason` says why (a failed dependency, a failed host).
    Skipped {
        /// The host the event is about.
        host: String,
        /// The root component the event is about.
        component: String,
        /// Why the component was not run, for people.
        reason: String,
    },
    /// The run was interrupted (SIGINT or SIGTERM) before these root components of the host
    /// started; the steps that were running finished first.
    Interrupted {
        /// The host the event is about.
        host: String,
        /// The root components that did not start.
        not_started: Vec<String>,
    },
    /// A host could not be deployed or its state is unknown: `status` is one of
    /// `unreachable`, `host_key_refused`, `auth_refused`, `lock_held`, `timeout`, `failed`,
    /// `interrupted`.
    HostFailed {
        /// The host the event is about.
        host: String,
        /// How the host failed, one of the statuses above.
        status: HostStatus,
        /// The cause chain, outermost first.
        error: Vec<String>,
    },
    /// A remote run ended: one status per host (`changed`, `unchanged`, `failed`,
    /// `unreachable`, `host_key_refused`, `auth_refused`, `lock_held`, `timeout`, `skipped`,
    /// `not_attempted`, `interrupted`) with a detail for people.
    RunFinished {
        /// One summary per host.
        hosts: Vec<HostSummary>,
        /// How long the whole run took.
        seconds: f64,
    },
    /// A `service` verb ran on one service: what the supervisor says (`status`), or what the
    /// verb did (`changed` with its action, `unchanged`, `failed` with the cause chain).
    Service {
        /// The host the event is about.
        host: String,
        /// The verb that ran.
        verb: ServiceVerb,
        /// The root component, the service's component path and the result.
        #[serde(flatten)]
        outcome: ServiceOutcome,
    },
    /// Converging a host ended; lists are root component names.
    HostFinished {
        /// The host the event is about.
        host: String,
        /// Whether the run only reports what it would change.
        dry_run: bool,
        /// The root components that changed (in a dry run: would change).
        changed: Vec<String>,
        /// The root components that were already converged.
        unchanged: Vec<String>,
        /// The root components that failed.
        failed: Vec<String>,
        /// The root components that were not run.
        not_attempted: Vec<String>,
        /// How long converging this host took.
        seconds: f64,
    },
    /// A root component that the host's ownership record lists but the environment no
    /// longer assigns to the host. Reported on every deploy; nothing about it changes unless
    /// the run prunes.
    Orphaned {
        /// The host the event is about.
        host: String,
        /// The orphaned root component.
        component: String,
        /// What it created and the record still lists, counted by kind (`file`,
        /// `directory`, `symlink`, `tree`, `service`).
        created: std::collections::BTreeMap<String, usize>,
        /// Whether this run prunes it (`--prune`; with `--dry-run`: shows what it would
        /// remove).
        prune: bool,
        /// Whether the run only reports what it would change.
        dry_run: bool,
    },
    /// What a prune did (in a dry run: would do) with one item an orphan created.
    Pruned {
        /// The host the event is about.
        host: String,
        /// The orphaned root component.
        component: String,
        /// The item, for people: `file `/srv/app/work/app/app.toml``.
        item: String,
        /// `removed`, `kept` or `failed`.
        action: crate::inventory::PruneAction,
        /// Why it was kept, or why removing it failed.
        reason: Option<String>,
        /// Whether the run only reports what it would change.
        dry_run: bool,
    },
    /// A host that an earlier deploy of this environment reached (the project's
    /// `.batou/deployed-hosts.json`) and that the environment no longer lists. Without
    /// `--prune` it is not contacted and nothing on it changes.
    HostOrphaned {
        /// The host the event is about.
        host: String,
        /// Whether this run prunes it: connects and removes what the environment created there.
        prune: bool,
    },
    /// A line a program of `exec` printed, as it came.
    Output {
        /// The host the program runs on.
        host: String,
        /// `stdout` or `stderr`.
        stream: String,
        /// The line, without its newline.
        line: String,
    },
    /// The program of `exec` ended on a host.
    ExecFinished {
        /// The host the program ran on.
        host: String,
        /// How it ended.
        #[serde(flatten)]
        result: crate::operations::ExecResult,
    },
    /// A host's state, for `status`.
    HostState {
        /// The host the report is about.
        host: String,
        /// What its agent found.
        #[serde(flatten)]
        state: Box<crate::operations::HostState>,
    },
    /// One deploy of the environment across its hosts, for `history` (oldest first).
    Deploy {
        /// When the first host started.
        started: String,
        /// Who deployed.
        user: String,
        /// From which machine.
        controller_host: String,
        /// The deployment repository's commit, when it is a git repository.
        commit: Option<String>,
        /// The run's result: `success`, `failed`, `aborted`, `unfinished`, `incomplete`,
        /// `not_attempted`.
        result: String,
        /// Each host's part: host, result, changed root components, times.
        hosts: Vec<crate::operations::HostDeploy>,
        /// The changed root components as `host: root`.
        changed: Vec<String>,
    },
    /// A `lock` verb ran on a host.
    Lock {
        /// The host the event is about.
        host: String,
        /// `acquire`, `release` or `status`.
        verb: crate::operations::LockVerb,
        /// What it did and found.
        #[serde(flatten)]
        report: Box<crate::operations::LockReport>,
    },
    /// A batch of a rollout starts: its hosts, and the failure budget before it.
    RolloutBatch {
        /// The batch, counted from 1.
        batch: usize,
        /// How many batches the rollout has.
        batches: usize,
        /// The batch's hosts, sorted by name.
        hosts: Vec<String>,
        /// Rolled hosts that failed so far.
        failed: usize,
        /// How many rolled hosts may fail (`max_failed`, resolved to a count).
        max_failed: usize,
    },
    /// The balancer's root component converges again to drain a batch's hosts before they
    /// converge, or to undrain the healthy ones after.
    RolloutHook {
        /// The balancer's host.
        host: String,
        /// The balancer's root component.
        component: String,
        /// The batch, counted from 1.
        batch: usize,
        /// `drain` or `undrain`.
        hook: crate::rollout::Hook,
        /// The hosts drained, or put back into rotation.
        targets: Vec<String>,
        /// The rolled hosts in rotation once the hook converged.
        in_rotation: Vec<String>,
    },
    /// A rollout stopped before its last batch: too many hosts failed, or the balancer did.
    RolloutStopped {
        /// The last batch that started.
        batch: usize,
        /// How many batches the rollout has.
        batches: usize,
        /// The rolled hosts that failed.
        failed: Vec<String>,
        /// How many rolled hosts may fail.
        max_failed: usize,
        /// The rolled hosts of later batches, never started.
        not_attempted: Vec<String>,
        /// Why the rollout stopped, for people.
        reason: String,
    },
}

/// One host's line in the summary of a remote run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSummary {
    /// The host the line is about.
    pub host: String,
    /// The host's outcome.
    pub status: HostStatus,
    /// What happened, for people.
    pub detail: String,
}

/// How a run ended for one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// Some root component changed (in a dry run: would change).
    Changed,
    /// Every root component was already up to date.
    Unchanged,
    /// A root component failed, or the agent refused or could not be started.
    Failed,
    /// The host could not be reached.
    Unreachable,
    /// The host's key was unknown or changed.
    HostKeyRefused,
    /// The host refused the login.
    AuthRefused,
    /// Someone else is deploying the host.
    LockHeld,
    /// The agent went silent or died: the host's state is unknown.
    Timeout,
    /// The host's steps were left out because something they depend on failed.
    Skipped,
    /// The host's steps were not started because the run stopped early.
    NotAttempted,
    /// The run was interrupted before all of the host's steps ran.
    Interrupted,
    /// The login user may not run the agent as the `become` user without a password
    /// (`sudo -n` refused); nothing was changed on the host.
    BecomeRefused,
}

impl HostStatus {
    /// The name used in events and summaries (`host_key_refused`).
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Changed => "changed",
            HostStatus::Unchanged => "unchanged",
            HostStatus::Failed => "failed",
            HostStatus::Unreachable => "unreachable",
            HostStatus::HostKeyRefused => "host_key_refused",
            HostStatus::AuthRefused => "auth_refused",
            HostStatus::LockHeld => "lock_held",
            HostStatus::Timeout => "timeout",
            HostStatus::Skipped => "skipped",
            HostStatus::NotAttempted => "not_attempted",
            HostStatus::Interrupted => "interrupted",
            HostStatus::BecomeRefused => "become_refused",
        }
    }

    /// Whether the host failed on its own (as opposed to being left out or converging).
    pub fn is_failure(self) -> bool {
        !matches!(
            self,
            HostStatus::Changed
                | HostStatus::Unchanged
                | HostStatus::Skipped
                | HostStatus::NotAttempted
        )
    }
}

impl std::fmt::Display for HostStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Receives events as they happen.
pub trait EventSink {
    /// Handles one event.
    fn event(&mut self, event: Event);
}

impl<F: FnMut(Event)> EventSink for F {
    fn event(&mut self, event: Event) {
        self(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_a_tag() {
        let e = Event::Changed {
            host: "h".into(),
            component: "app > File('x')".into(),
            reason: "missing".into(),
            dry_run: false,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"event":"changed","host":"h","component":"app > File('x')","reason":"missing","dry_run":false}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
    }

    #[test]
    fn service_events_are_flat() {
        let e = Event::Service {
            host: "h".into(),
            verb: ServiceVerb::Status,
            outcome: ServiceOutcome {
                root: "web".into(),
                component: "web > Service('web')".into(),
                result: crate::ServiceResult::Status {
                    status: crate::ServiceStatus {
                        manager: "runit".into(),
                        running: true,
                        pid: Some(42),
                        uptime_seconds: Some(7),
                        restarts: None,
                        detail: None,
                    },
                },
            },
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"event":"service","host":"h","verb":"status","root":"web","component":"web > Service('web')","result":"status","status":{"manager":"runit","running":true,"pid":42,"uptime_seconds":7,"restarts":null,"detail":null}}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
        let e = Event::Service {
            host: "h".into(),
            verb: ServiceVerb::Stop,
            outcome: ServiceOutcome {
                root: "web".into(),
                component: "web > Service('web')".into(),
                result: crate::ServiceResult::Unchanged,
            },
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"event":"service","host":"h","verb":"stop","root":"web","component":"web > Service('web')","result":"unchanged"}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
    }
}
