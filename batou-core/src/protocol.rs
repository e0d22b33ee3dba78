//! The controller–agent protocol: one JSON object per line over the agent's stdin/stdout.
//!
//! A session: the agent says `hello`; the controller sends `start` with the host's job; the
//! agent takes the host's lock, configures the job and answers `ready` (or `refused`); the
//! controller sends `step` for each root component when its dependencies are done or queued
//! ahead of it on the same agent; the agent runs steps in the order received, streams
//! `event`s and `heartbeat`s and ends each with `step_finished` (`not_attempted`, without
//! running it, for a step queued behind one that failed or dropped by `cancel`); `finish`
//! ends the session with a journal record. A session for a `service` verb says so in `start`
//! (its [`Purpose`]); after `ready` the controller sends one `service` message with the root
//! components, the agent streams their `event`s and answers `service_finished`. Any change
//! to these types that an older peer cannot read bumps [`PROTOCOL_VERSION`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::project::ProjectFiles;
use crate::{Event, RootOutcome, ServiceOutcome, ServiceVerb};

/// The protocol version both sides must agree on.
///
/// 3: a job carries only the project files its host's steps read, file contents as base64.
/// 4: sessions for the `service` verbs (`start.purpose`, `service`, `service_finished`), and
/// a job step lists its services.
/// 5: the `step_finished` event (an older controller cannot read it).
/// 6: jobs carry release bundles; sessions for the `releases` and `rollback` verbs.
/// 7: a job carries the template syntax and the host's facts; a remote plan names the hosts
/// whose facts were read and the secrets generated.
/// 8: `orphans` and `orphans_finished` (the ownership record, `--prune`), the `owner` refusal.
/// 9: sessions for `status`, `history`, `exec` and `lock`; the controller names the
/// project's commit.
/// 10: rollouts: a plan's `rollout`, a balancer job's rolled hosts, a step's batch and hook,
/// `predict` and `predicted`.
/// 11: a remote plan's hosts carry the `become` user.
/// 12: steps are sent ahead of their turn (`not_attempted` answers, `cancel`).
pub const PROTOCOL_VERSION: u32 = 12;

/// Everything one host needs to configure and converge its part of a plan, and nothing more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostJob {
    /// The environment being deployed.
    pub environment: String,
    /// The host the job is for.
    pub host: JobHost,
    /// The environment's `base_dir`; relative paths are relative to the login's home.
    pub base_dir: String,
    /// Absolute paths outside `base_dir` that components may change.
    pub allow_paths: Vec<String>,
    /// The host's root components, in plan order.
    pub steps: Vec<JobStep>,
    /// The resource values the host's root components require.
    pub resources: BTreeMap<String, Vec<serde_json::Value>>,
    /// The project files the controller's configure of this host's steps read.
    pub files: ProjectFiles,
    /// The named secret files the host's components read.
    #[serde(default)]
    pub secret_files: BTreeMap<String, String>,
    /// The release bundles the host's components use, by bundle specification; the
    /// archives themselves travel by digest into the host's store, never in the job.
    #[serde(default)]
    pub bundles: BTreeMap<String, crate::Bundle>,
    /// `(name, value)` of every secret this job carries, for the agent to mask in its
    /// events and journal.
    #[serde(default)]
    pub secrets: Vec<(String, String)>,
    /// The environment's template syntax (line statements and comments), for the agent's
    /// configure to render templates as the controller's did.
    #[serde(default, skip_serializing_if = "crate::TemplateSyntax::is_default")]
    pub templates: crate::TemplateSyntax,
    /// The host's platform facts, when its configure read them: the agent checks its own
    /// against these (refusing with `plan_mismatch` when they differ) and configures with
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<crate::Facts>,
    /// On a balancer's host: the balancer root and the rolled hosts, for its templates'
    /// `rollout.*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::JobRollout>,
}

/// What a controller needs to deploy an environment over SSH: the plan's graph, how to reach
/// each host, and each host's job. A project's own binary prints it with `<binary> plan <env>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemotePlan {
    /// The environment being deployed.
    pub environment: String,
    /// The environment's default of hosts deployed in parallel.
    pub jobs: usize,
    /// Hosts with at least one root component, sorted by name.
    pub hosts: Vec<RemoteHost>,
    /// Every step in environment order.
    pub steps: Vec<PlanStep>,
    /// Step indices in plan order.
    pub order: Vec<usize>,
    /// Each host's job, by host name.
    pub host_jobs: BTreeMap<String, HostJob>,
    /// `(name, value)` of every secret of the environment, for the controller to mask.
    #[serde(default)]
    pub secrets: Vec<(String, String)>,
    /// The names of the secrets that planning generated (stored, or in a dry run made for
    /// this run only), for the controller to report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generated: Vec<String>,
    /// The hosts whose facts a configure read: with facts missing from their jobs, the
    /// controller gathers them and plans again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fact_hosts: Vec<String>,
    /// The environment's `[rollout]`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutSpec>,
}

/// How to reach a host; unset fields come from the user's SSH configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteHost {
    /// The host's name in the environment.
    pub name: String,
    /// The address to connect to, if not the name.
    pub address: Option<String>,
    /// The SSH port.
    pub port: Option<u16>,
    /// The login user.
    pub user: Option<String>,
    /// The user the agent runs as, through `sudo -n`, when not the login user.
    #[serde(default, rename = "become", skip_serializing_if = "Option::is_none")]
    pub become_user: Option<String>,
}

/// A step of a remote plan and the steps it waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStep {
    /// The host the step runs on.
    pub host: String,
    /// The root component's name.
    pub root: String,
    /// The indices of the steps this one waits for.
    pub after: Vec<usize>,
    /// For each step waited for: the resource keys it provides to this one.
    pub after_keys: BTreeMap<usize, Vec<String>>,
}

/// The host as templates see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobHost {
    /// The host's name in the environment.
    pub name: String,
    /// The host's `data` table from the environment.
    pub data: BTreeMap<String, serde_json::Value>,
    /// The host's address, if the environment sets one.
    pub address: Option<String>,
}

/// One root component of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStep {
    /// The root component's name.
    pub root: String,
    /// The registered component type it is an instance of.
    pub type_name: String,
    /// Attributes with templates already rendered for this host.
    pub attributes: serde_json::Value,
    /// The component paths the controller's configure produced, in converge order; the agent
    /// refuses to run when its own configure differs.
    pub components: Vec<String>,
    /// The component paths of the step's services (components a `service` verb acts on),
    /// in converge order.
    #[serde(default)]
    pub services: Vec<String>,
}

/// Who runs a deploy, recorded in the host's lock and journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Controller {
    /// The user who started the deploy.
    pub user: String,
    /// The machine the deploy runs from.
    pub host: String,
    /// The controller's process id on that machine.
    pub pid: u32,
    /// RFC 3339, UTC.
    pub started: String,
    /// The deployment repository's commit, when it is a git repository (`-dirty` when it has
    /// changes not committed); journaled with each deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// Messages from the controller to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToAgent {
    /// Begin a session: take the lock (unless a dry run) and configure the job.
    Start {
        /// The controller's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The host's part of the plan.
        job: Box<HostJob>,
        /// Whether the run only reports what it would change.
        dry_run: bool,
        /// Who runs the deploy.
        controller: Controller,
        /// What the session is for: a deploy, or a `service` verb.
        #[serde(default)]
        purpose: Purpose,
    },
    /// Converge one root component of the job.
    Step {
        /// The root component's name.
        root: String,
        /// The step's batch in a rollout, and for a balancer's step the drain or undrain.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollout: Option<crate::rollout::StepRollout>,
    },
    /// Run the session's `service` verb on the services of these root components, in this
    /// order (a session for a verb only).
    Service {
        /// The root components' names.
        roots: Vec<String>,
    },
    /// List the releases of these release roots (none: every one), rolling back first in a
    /// `rollback` session, to `to` or to the release before the current one.
    Releases {
        /// The release roots' names.
        roots: Vec<String>,
        /// The release to roll back to.
        #[serde(default)]
        to: Option<String>,
    },
    /// End the session: write the journal record and release the lock.
    Finish,
    /// Do not run the steps received and not yet started: answer each with `step_finished`
    /// `not_attempted`. The run stopped (a failure elsewhere, an interrupt); a running step
    /// finishes. The agent acts on it as soon as it reads it, ahead of the queued steps.
    Cancel,
    /// Report the root components the host's ownership record lists and the job does not
    /// (`orphaned` events), and with `prune` remove what they created (`pruned` events; in a
    /// dry run only say what would be removed). A deploy session sends it once, after
    /// `ready` and before the first step.
    Orphans {
        /// Whether to prune them.
        prune: bool,
    },
    /// Report the host's state (a `status` session).
    Status,
    /// Send the last `limit` deploys of the host's journal (a `history` session).
    History {
        /// How many deploys, newest last.
        limit: usize,
    },
    /// Run a program (an `exec` session): no shell, output streamed as `output` events.
    Exec {
        /// Program and arguments.
        argv: Vec<String>,
        /// How long it may run before its process group is ended.
        timeout_seconds: f64,
    },
    /// Run the session's `lock` verb; `acquire` takes the reason.
    Lock {
        /// Why the host is frozen (`acquire` only).
        #[serde(default)]
        reason: Option<String>,
    },
    /// Predict these root components, in order, as a dry run would, on a configure of its
    /// own, reporting no events and writing nothing: which of them would change. A rollout
    /// drains only hosts that would change.
    Predict {
        /// The root components' names.
        roots: Vec<String>,
    },
}

/// What an agent session is for.
///
/// A deploy takes the host's lock unless it is a dry run; so does a `service` verb that
/// changes something (`start`, `stop`, `restart`). `status` only reads and takes no lock, so
/// that it answers while a deploy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Purpose {
    /// Converge the steps the controller sends.
    #[default]
    Deploy,
    /// Run a `service` verb.
    Service {
        /// The verb.
        verb: ServiceVerb,
    },
    /// List the host's releases (`releases`), or roll back first (`rollback`).
    Releases {
        /// Whether to roll back.
        rollback: bool,
    },
    /// Report the host's state: freeze, lock holder, last deploy, services, releases, drift.
    Status,
    /// Read the host's deploy journal.
    History,
    /// Run a program; `lock`: take the host's lock (and respect its freeze) while it runs.
    Exec {
        /// Whether the session takes the lock.
        lock: bool,
    },
    /// Freeze or thaw the host, or show its freeze.
    Lock {
        /// The verb.
        verb: crate::operations::LockVerb,
    },
}

impl Purpose {
    /// Whether the session takes the host's lock.
    pub fn locks(self, dry_run: bool) -> bool {
        match self {
            Purpose::Deploy => !dry_run,
            Purpose::Service { verb } => verb != ServiceVerb::Status,
            Purpose::Releases { rollback } => rollback,
            Purpose::Status | Purpose::History => false,
            Purpose::Exec { lock } => lock,
            Purpose::Lock { verb } => verb != crate::operations::LockVerb::Status,
        }
    }

    /// Whether a deploy freeze refuses the session: every session that takes the lock,
    /// except those of the `lock` verbs themselves.
    pub fn respects_freeze(self, dry_run: bool) -> bool {
        self.locks(dry_run) && !matches!(self, Purpose::Lock { .. })
    }
}

/// Why an agent refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// Another deploy holds the host's lock.
    LockHeld,
    /// The agent's configure of the job differs from the controller's.
    PlanMismatch,
    /// The controller's messages or protocol version are not what this agent speaks.
    Protocol,
    /// Something else went wrong before the session could start.
    Failed,
    /// Another environment owns the host's base directory (its ownership record says so).
    Owner,
}

/// Messages from the agent to the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum FromAgent {
    /// The agent's first message.
    Hello {
        /// The agent's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The agent's batou version.
        version: String,
    },
    /// The agent took the lock (unless a dry run) and configured the job as the controller did.
    Ready,
    /// The agent will not run the session.
    Refused {
        /// Why the agent refused.
        reason: Refusal,
        /// The cause chain, outermost first.
        message: Vec<String>,
        /// The deploy that holds the lock, when the lock is held.
        holder: Option<Controller>,
    },
    /// Something happened while converging a step.
    Event {
        /// The event, as the agent reported it.
        event: Event,
    },
    /// The agent is alive: sent at a fixed interval once the agent is ready.
    Heartbeat,
    /// A step ended.
    StepFinished {
        /// The root component's name.
        root: String,
        /// How the step ended.
        outcome: RootOutcome,
    },
    /// The session's `service` verb ran on every service of the roots asked for.
    ServiceFinished {
        /// One outcome per service, in the order they ran.
        outcomes: Vec<ServiceOutcome>,
    },
    /// The session's `releases` or `rollback` verb ran.
    ReleasesFinished {
        /// One report per release root.
        reports: Vec<crate::ReleaseReport>,
    },
    /// The agent wrote its journal record and ends the session.
    Finished,
    /// The orphans were reported (and pruned, when asked).
    OrphansFinished {
        /// The orphaned root components, in the order they were handled.
        orphans: Vec<String>,
        /// What could not be removed, for the host's failure; empty when all went well.
        failed: Vec<String>,
    },
    /// The host's state, for `status`.
    StatusFinished {
        /// What the agent found.
        state: Box<crate::operations::HostState>,
    },
    /// The host's last deploys, oldest first, for `history`.
    HistoryFinished {
        /// One per deploy.
        deploys: Vec<crate::operations::HostDeploy>,
    },
    /// The program of `exec` ended (its output came as `output` events).
    ExecFinished {
        /// How it ended.
        result: crate::operations::ExecResult,
    },
    /// The `lock` verb ran.
    LockFinished {
        /// What it did and found.
        report: crate::operations::LockReport,
    },
    /// The answer to `predict`: the root components that would change (or whose prediction
    /// failed).
    Predicted {
        /// The root components' names.
        changed: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_single_lines() {
        let msg = FromAgent::StepFinished {
            root: "app".into(),
            outcome: RootOutcome::Changed,
        };
        let line = serde_json::to_string(&msg).unwrap();
        assert_eq!(
            line,
            r#"{"msg":"step_finished","root":"app","outcome":"changed"}"#
        );
        assert_eq!(serde_json::from_str::<FromAgent>(&line).unwrap(), msg);
    }

    #[test]
    fn a_session_says_what_it_is_for() {
        let purpose = Purpose::Service {
            verb: ServiceVerb::Restart,
        };
        assert_eq!(
            serde_json::to_string(&purpose).unwrap(),
            r#"{"kind":"service","verb":"restart"}"#
        );
        assert!(purpose.locks(false));
        assert!(
            !Purpose::Service {
                verb: ServiceVerb::Status
            }
            .locks(false)
        );
        assert!(Purpose::Deploy.locks(false) && !Purpose::Deploy.locks(true));
        // A freeze refuses what takes the lock, except the `lock` verbs that manage it.
        use crate::operations::LockVerb;
        assert!(Purpose::Deploy.respects_freeze(false) && !Purpose::Deploy.respects_freeze(true));
        assert!(Purpose::Exec { lock: true }.respects_freeze(false));
        assert!(!Purpose::Exec { lock: false }.respects_freeze(false));
        assert!(!Purpose::Status.locks(false) && !Purpose::History.locks(false));
        let acquire = Purpose::Lock {
            verb: LockVerb::Acquire,
        };
        assert!(acquire.locks(false) && !acquire.respects_freeze(false));
        assert!(
            !Purpose::Lock {
                verb: LockVerb::Status
            }
            .locks(false)
        );
        assert_eq!(
            serde_json::to_string(&acquire).unwrap(),
            r#"{"kind":"lock","verb":"acquire"}"#
        );
        let msg = ToAgent::Service {
            roots: vec!["web".into()],
        };
        assert_eq!(
            serde_json::to_string(&msg).unwrap(),
            r#"{"msg":"service","roots":["web"]}"#
        );
    }
}
