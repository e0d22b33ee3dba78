//! The controller–agent protocol: one JSON object per line over the agent's stdin/stdout.
//!
//! A session: the agent says `hello`; the controller sends `start` with the host's job; the
//! agent takes the host's lock, configures the job and answers `ready` (or `refused`); the
//! controller sends `step` for each root component when its dependencies are done, the agent
//! streams `event`s and `heartbeat`s and ends each with `step_finished`; `finish` ends the
//! session with a journal record. Any change to these types that an older peer cannot read
//! bumps [`PROTOCOL_VERSION`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::project::ProjectFiles;
use crate::{Event, RootOutcome};

/// The protocol version both sides must agree on.
///
/// 3: a job carries only the project files its host's steps read, file contents as base64.
pub const PROTOCOL_VERSION: u32 = 3;

/// Everything one host needs to configure and converge its part of a plan, and nothing more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostJob {
    pub environment: String,
    pub host: JobHost,
    /// The environment's `base_dir`; relative paths are relative to the login's home.
    pub base_dir: String,
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
    /// `(name, value)` of every secret this job carries, for the agent to mask in its
    /// events and journal.
    #[serde(default)]
    pub secrets: Vec<(String, String)>,
}

/// What a controller needs to deploy an environment over SSH: the plan's graph, how to reach
/// each host, and each host's job. A project's own binary prints it with `<binary> plan <env>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemotePlan {
    pub environment: String,
    /// The environment's default of hosts deployed in parallel.
    pub jobs: usize,
    /// Hosts with at least one root component, sorted by name.
    pub hosts: Vec<RemoteHost>,
    /// Every step in environment order.
    pub steps: Vec<PlanStep>,
    /// Step indices in plan order.
    pub order: Vec<usize>,
    pub host_jobs: BTreeMap<String, HostJob>,
    /// `(name, value)` of every secret of the environment, for the controller to mask.
    #[serde(default)]
    pub secrets: Vec<(String, String)>,
}

/// How to reach a host; unset fields come from the user's SSH configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteHost {
    pub name: String,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
}

/// A step of a remote plan and the steps it waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStep {
    pub host: String,
    pub root: String,
    pub after: Vec<usize>,
    /// For each step waited for: the resource keys it provides to this one.
    pub after_keys: BTreeMap<usize, Vec<String>>,
}

/// The host as templates see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobHost {
    pub name: String,
    pub data: BTreeMap<String, serde_json::Value>,
    pub address: Option<String>,
}

/// One root component of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStep {
    pub root: String,
    pub type_name: String,
    /// Attributes with templates already rendered for this host.
    pub attributes: serde_json::Value,
    /// The component paths the controller's configure produced, in converge order; the agent
    /// refuses to run when its own configure differs.
    pub components: Vec<String>,
}

/// Who runs a deploy, recorded in the host's lock and journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Controller {
    pub user: String,
    pub host: String,
    pub pid: u32,
    /// RFC 3339, UTC.
    pub started: String,
}

/// Messages from the controller to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum ToAgent {
    Start {
        protocol: u32,
        job: Box<HostJob>,
        dry_run: bool,
        controller: Controller,
    },
    Step {
        root: String,
    },
    Finish,
}

/// Why an agent refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    LockHeld,
    PlanMismatch,
    Protocol,
    Failed,
}

/// Messages from the agent to the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
pub enum FromAgent {
    Hello {
        protocol: u32,
        version: String,
    },
    Ready,
    Refused {
        reason: Refusal,
        message: Vec<String>,
        holder: Option<Controller>,
    },
    Event {
        event: Event,
    },
    Heartbeat,
    StepFinished {
        root: String,
        outcome: RootOutcome,
    },
    Finished,
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
}
