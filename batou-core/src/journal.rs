//! The host's deploy journal: one typed record per line of `<base_dir>/.batou/journal.jsonl`.
//!
//! The agent appends records ([`JournalRecord`]); the controller reads them back (the
//! `--hosts` check, `status` and `history`, see `operations.rs`) with the same types, so that neither side
//! compares strings of the other's making.

use serde::{Deserialize, Serialize};

use crate::RootOutcome;

/// One line of a host's journal: who deployed, and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// RFC 3339 in UTC with nanoseconds: a host's records sort by it.
    pub time: String,
    /// The environment that was deployed.
    pub environment: String,
    /// The host the journal belongs to.
    pub host: String,
    /// The user who started the deploy.
    pub user: String,
    /// The machine the deploy ran from.
    pub controller_host: String,
    /// The controller's process id on that machine.
    pub pid: u32,
    /// What happened; its kind is the `record` field.
    #[serde(flatten)]
    pub entry: JournalEntry,
}

/// What a journal record says happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum JournalEntry {
    /// A deploy took the host's lock.
    Started {
        /// The deployment repository's commit (`-dirty` when it has changes not committed),
        /// when it is a git repository.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
        /// When the controller started: the hosts of one run share it, so that history can
        /// tell runs of one process apart.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<String>,
    },
    /// A root component converged (or failed).
    Step {
        /// The root component's name.
        component: String,
        /// How the step ended.
        outcome: RootOutcome,
        /// When the step started (the record's `time` is when it ended).
        #[serde(default)]
        started: String,
        /// The component paths that changed.
        #[serde(default)]
        changed: Vec<String>,
    },
    /// The deploy ended normally; lists are root component names.
    Finished {
        /// How the deploy went as a whole.
        result: DeployResult,
        /// The root components that changed.
        #[serde(default)]
        changed: Vec<String>,
        /// The root components that were already converged.
        #[serde(default)]
        unchanged: Vec<String>,
        /// The root components that failed.
        #[serde(default)]
        failed: Vec<String>,
        /// Every component path that changed, in order.
        #[serde(default)]
        components_changed: Vec<String>,
    },
    /// A `service` verb ran (`start`, `stop`, `restart`; `status` is not recorded): one
    /// outcome per service. A session for a verb writes only this record.
    Service {
        /// The verb.
        verb: crate::ServiceVerb,
        /// What it did to each service.
        outcomes: Vec<crate::ServiceOutcome>,
    },
    /// A release was made current: activated by a deploy, or rolled back to (by the
    /// automatic rollback or the `rollback` verb).
    Release {
        /// The release's root component.
        component: String,
        /// What made it current.
        action: ReleaseAction,
        /// The release's id.
        id: String,
        /// The id that was current before, if any.
        #[serde(default)]
        previous: Option<String>,
    },
    /// `exec` ran a program with the host's lock held (not with `--no-lock`).
    Exec {
        /// Program and arguments.
        argv: Vec<String>,
        /// Its exit code, when it exited.
        #[serde(default)]
        exit_code: Option<i32>,
        /// Whether it ran past its timeout.
        #[serde(default)]
        timed_out: bool,
    },
    /// The deploy ended early: the agent's configure differed from the controller's, or the
    /// controller disconnected.
    Aborted {
        /// The cause chain, outermost first.
        error: Vec<String>,
    },
    /// `--prune` removed what an orphaned root component created.
    Pruned {
        /// The root component.
        component: String,
        /// The items removed, for people.
        #[serde(default)]
        removed: Vec<String>,
        /// The items left in place, with the reason.
        #[serde(default)]
        kept: Vec<String>,
        /// The items whose removal failed, with the error.
        #[serde(default)]
        failed: Vec<String>,
    },
    /// A step of a rollout begins: a rolled host's root component in its batch, or the
    /// balancer's drain or undrain with the hosts in rotation after it.
    Rollout {
        /// The root component's name.
        component: String,
        /// The batch, counted from 1.
        batch: usize,
        /// How many batches the rollout has.
        batches: usize,
        /// `drain` or `undrain` for the balancer; absent for a rolled host.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hook: Option<crate::rollout::Hook>,
        /// The rolled hosts in rotation after the hook (a hook only).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        in_rotation: Vec<String>,
    },
}

/// What made a release current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseAction {
    /// A deploy activated it.
    Activated,
    /// A rollback went back to it.
    RolledBack,
}

/// Appends `record` (masked) to the journal at `path` and syncs it; the file is created
/// private (0600).
pub fn append(path: &std::path::Path, record: &JournalRecord) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let line = serde_json::to_string(&crate::redact::to_masked_json(record))
        .map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(format!("{line}\n").as_bytes())?;
    file.sync_all()
}

/// How a finished deploy went on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployResult {
    /// Every step converged.
    Success,
    /// Some step failed.
    Failed,
    /// The session ended before any step ran (another host could not be prepared, or the
    /// run was interrupted).
    NotAttempted,
    /// Some steps converged, the others were never started (the run stopped after a failure
    /// on another host, or was interrupted).
    Incomplete,
}

impl JournalRecord {
    /// Parses one journal line; `None` for a line this version cannot read (a torn last
    /// line, a record of a newer version).
    pub fn parse(line: &str) -> Option<JournalRecord> {
        serde_json::from_str(line).ok()
    }

    /// For a step record, the root component and whether it converged.
    pub fn step(&self) -> Option<(&str, RootOutcome)> {
        match &self.entry {
            JournalEntry::Step {
                component, outcome, ..
            } => Some((component, *outcome)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written_with_their_kind_in_record() {
        let record = JournalRecord {
            time: "2026-12-03T09:00:00.000000000Z".into(),
            environment: "production".into(),
            host: "web1".into(),
            user: "alice".into(),
            controller_host: "laptop".into(),
            pid: 42,
            entry: JournalEntry::Step {
                component: "app".into(),
                outcome: RootOutcome::Changed,
                started: "2026-12-03T08:59:59.000000000Z".into(),
                changed: vec!["app > File('app.toml')".into()],
            },
        };
        let line = serde_json::to_string(&record).unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["record"], "step");
        assert_eq!(value["outcome"], "changed");
        assert_eq!(JournalRecord::parse(&line), Some(record.clone()));
        assert_eq!(record.step(), Some(("app", RootOutcome::Changed)));
        assert_eq!(JournalRecord::parse("{\"record\":\"step\""), None);
        // Lists and times that a record lacks read as empty.
        let short = r#"{"time":"t","environment":"e","host":"h","user":"u","controller_host":"c","pid":1,"record":"step","component":"db","outcome":"failed"}"#;
        assert_eq!(
            JournalRecord::parse(short).unwrap().step(),
            Some(("db", RootOutcome::Failed))
        );
    }

    #[test]
    fn finished_records_carry_their_result() {
        let line = r#"{"time":"t","environment":"e","host":"h","user":"u","controller_host":"c","pid":1,"record":"finished","result":"not_attempted","changed":[],"unchanged":[],"failed":[],"components_changed":[]}"#;
        let record = JournalRecord::parse(line).unwrap();
        assert!(matches!(
            record.entry,
            JournalEntry::Finished {
                result: DeployResult::NotAttempted,
                ..
            }
        ));
    }
}
