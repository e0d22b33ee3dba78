//! Events that a converge run reports, as they happen.
//!
//! The same values feed the human renderer, the `--json` stream and (later) the agent protocol,
//! so every field is plain data and serializes deterministically.

use serde::{Deserialize, Serialize};

/// Something that happened while converging one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Converging a host's steps begins.
    HostStarted {
        host: String,
        environment: String,
        dry_run: bool,
    },
    /// A root component starts converging.
    StepStarted { host: String, component: String },
    /// A component needed an update (in a dry run: would need one).
    Changed {
        host: String,
        component: String,
        reason: String,
        dry_run: bool,
    },
    /// The unified diff of a file change, shown after its `changed` event.
    Diff {
        host: String,
        component: String,
        diff: String,
    },
    /// A message a component wants people to see.
    Log {
        host: String,
        component: String,
        message: String,
    },
    /// A component failed; `error` is the cause chain, outermost first.
    Failed {
        host: String,
        component: String,
        error: Vec<String>,
    },
    /// The controller uploaded the agent binary to a host's cache.
    AgentUploaded { host: String, bytes: u64 },
    /// A root component was not run; `reason` says why (a failed dependency, a failed host).
    Skipped {
        host: String,
        component: String,
        reason: String,
    },
    /// The run was interrupted (SIGINT or SIGTERM) before these root components of the host
    /// started; the steps that were running finished first.
    Interrupted {
        host: String,
        not_started: Vec<String>,
    },
    /// A host could not be deployed or its state is unknown: `status` is one of
    /// `unreachable`, `host_key_refused`, `auth_refused`, `lock_held`, `timeout`, `failed`,
    /// `interrupted`.
    HostFailed {
        host: String,
        status: String,
        error: Vec<String>,
    },
    /// A remote run ended: one status per host (`changed`, `unchanged`, `failed`,
    /// `unreachable`, `host_key_refused`, `auth_refused`, `lock_held`, `timeout`, `skipped`,
    /// `not_attempted`, `interrupted`) with a detail for people.
    RunFinished {
        hosts: Vec<HostSummary>,
        seconds: f64,
    },
    /// Converging a host ended; lists are root component names.
    HostFinished {
        host: String,
        dry_run: bool,
        changed: Vec<String>,
        unchanged: Vec<String>,
        failed: Vec<String>,
        not_attempted: Vec<String>,
        seconds: f64,
    },
}

/// One host's line in the summary of a remote run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSummary {
    pub host: String,
    pub status: String,
    pub detail: String,
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
}
