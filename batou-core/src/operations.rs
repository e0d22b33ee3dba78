//! What the operator's verbs exchange and report: `status` ([`HostState`]), `history`
//! ([`HostDeploy`], read from a host's journal by [`deploys`]), `exec` ([`ExecResult`]) and
//! `lock` ([`Freeze`], [`LockVerb`], [`LockReport`]).
//!
//! The agent fills these in on its host and sends them to the controller, which merges and
//! renders them; how they are gathered (the freeze file, the lock, the journal) is the
//! runtime's.

use serde::{Deserialize, Serialize};

use crate::ServiceOutcome;
use crate::journal::{DeployResult, JournalEntry, JournalRecord};
use crate::protocol::Controller;

/// A deploy freeze on a host: `<base_dir>/.batou/freeze`, written by `lock acquire`, removed
/// by `lock release`. While it is there, every deploy and every verb that takes the host's
/// lock is refused (`lock_held`), naming it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    /// Who froze the host.
    pub user: String,
    /// The machine they froze it from.
    pub controller_host: String,
    /// Why, in their words.
    pub reason: String,
    /// When, RFC 3339 in UTC.
    pub since: String,
}

impl Freeze {
    /// `alice@laptop since 2026-12-03T10:00:00Z: database migration`.
    pub fn describe(&self) -> String {
        format!(
            "{}@{} since {}: {}",
            self.user, self.controller_host, self.since, self.reason
        )
    }
}

/// Which `lock` verb a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockVerb {
    /// Freeze the host (the reason travels in the `lock` message).
    Acquire,
    /// Lift the freeze.
    Release,
    /// Show the freeze and the running deploy, if any.
    Status,
}

impl LockVerb {
    /// The verb's word: `acquire`, `release`, `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockVerb::Acquire => "acquire",
            LockVerb::Release => "release",
            LockVerb::Status => "status",
        }
    }
}

/// What a `lock` verb did on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockOutcome {
    /// The host is frozen now.
    Acquired,
    /// The freeze was lifted.
    Released,
    /// Nothing to do: the same freeze was there already, or none was there to release, or
    /// `status`.
    Unchanged,
    /// Someone else's freeze is in place: `acquire` left it alone.
    Held,
}

impl LockOutcome {
    /// The outcome's word: `acquired`, `released`, `unchanged`, `held`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockOutcome::Acquired => "acquired",
            LockOutcome::Released => "released",
            LockOutcome::Unchanged => "unchanged",
            LockOutcome::Held => "held",
        }
    }
}

/// A host's answer to a `lock` verb.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockReport {
    /// What the verb did.
    pub outcome: LockOutcome,
    /// The freeze after the verb (for `release`: the one lifted).
    pub freeze: Option<Freeze>,
    /// The deploy (or verb) holding the host's lock right now, if any.
    pub holder: Option<Controller>,
}

/// One deploy of one host, read back from its journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostDeploy {
    /// The host.
    pub host: String,
    /// The environment deployed.
    pub environment: String,
    /// When the deploy took the host's lock.
    pub started: String,
    /// When it ended, if it did.
    pub finished: Option<String>,
    /// Who deployed.
    pub user: String,
    /// From which machine.
    pub controller_host: String,
    /// The controller's process id.
    pub pid: u32,
    /// When the controller started (one run across hosts shares it); empty for deploys
    /// journaled before it was recorded.
    pub run: String,
    /// The deployment repository's commit, when it is a git repository.
    pub commit: Option<String>,
    /// How the deploy went; `None` while it runs (or when the agent died).
    pub result: Option<DeployResult>,
    /// The error of an aborted deploy.
    pub error: Option<Vec<String>>,
    /// The root components that changed.
    pub changed: Vec<String>,
    /// Every component path that changed.
    pub components_changed: usize,
}

/// What drift a host has: the dry run of its steps, without changing anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// The root components a deploy would change, in plan order.
    pub roots: Vec<String>,
    /// How many root components the host has.
    pub of: usize,
    /// How many components (sub-components included) would change.
    pub components: usize,
    /// Root components whose verify failed, with the cause chain.
    pub failed: Vec<(String, Vec<String>)>,
}

/// The current release of a release root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurrentRelease {
    /// The release's root component.
    pub root: String,
    /// The current release's id, if any.
    pub current: Option<String>,
    /// How many releases the host keeps.
    pub releases: usize,
}

/// A host's answer to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    /// The deploy freeze, if any.
    pub freeze: Option<Freeze>,
    /// The deploy (or verb) holding the host's lock right now, if any.
    pub holder: Option<Controller>,
    /// The host's last deploy of this environment.
    pub last_deploy: Option<HostDeploy>,
    /// The services' status.
    pub services: Vec<ServiceOutcome>,
    /// The release roots' current releases.
    pub releases: Vec<CurrentRelease>,
    /// What a deploy would change.
    pub drift: Drift,
}

/// How a command of `exec` ended on a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// Whether it ran past `--timeout` and its process group was ended.
    pub timed_out: bool,
    /// Why it could not be started.
    pub error: Option<Vec<String>>,
    /// How long it ran.
    pub seconds: f64,
}

impl ExecResult {
    /// Whether the command exited with code 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// How it ended, for people: `exit 0`, `exit 3`, `killed by signal 9`, `timed out`,
    /// `cannot start: ...`.
    pub fn describe(&self) -> String {
        if let Some(error) = &self.error {
            return format!("cannot start: {}", error.join(": "));
        }
        if self.timed_out {
            return "timed out (its process group was ended)".into();
        }
        match (self.exit_code, self.signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "ended".into(),
        }
    }
}

/// The deploys of `environment` in a host's journal records, oldest first: one per `started`
/// record, with what its later records say (steps, the end). Records of other environments,
/// of verbs and of releases are left out.
pub fn deploys(environment: &str, records: &[JournalRecord]) -> Vec<HostDeploy> {
    let mut deploys: Vec<HostDeploy> = Vec::new();
    // The deploy a record belongs to: the latest open one of the same controller process.
    let open = |deploys: &mut Vec<HostDeploy>, r: &JournalRecord| -> Option<usize> {
        deploys.iter().rposition(|d| {
            d.finished.is_none()
                && d.pid == r.pid
                && d.user == r.user
                && d.controller_host == r.controller_host
        })
    };
    for r in records.iter().filter(|r| r.environment == environment) {
        match &r.entry {
            JournalEntry::Started { commit, run } => deploys.push(HostDeploy {
                host: r.host.clone(),
                environment: r.environment.clone(),
                started: r.time.clone(),
                finished: None,
                user: r.user.clone(),
                controller_host: r.controller_host.clone(),
                pid: r.pid,
                run: run.clone().unwrap_or_default(),
                commit: commit.clone(),
                result: None,
                error: None,
                changed: Vec::new(),
                components_changed: 0,
            }),
            JournalEntry::Finished {
                result,
                changed,
                components_changed,
                ..
            } => {
                if let Some(i) = open(&mut deploys, r) {
                    let d = &mut deploys[i];
                    d.finished = Some(r.time.clone());
                    d.result = Some(*result);
                    d.changed = changed.clone();
                    d.components_changed = components_changed.len();
                }
            }
            JournalEntry::Aborted { error } => {
                if let Some(i) = open(&mut deploys, r) {
                    let d = &mut deploys[i];
                    d.finished = Some(r.time.clone());
                    d.error = Some(error.clone());
                }
            }
            JournalEntry::Step { .. }
            | JournalEntry::Service { .. }
            | JournalEntry::Release { .. }
            | JournalEntry::Exec { .. }
            | JournalEntry::Pruned { .. }
            | JournalEntry::Rollout { .. } => {}
        }
    }
    deploys
}

/// One deploy across hosts: the hosts' records of one controller run, merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deploy {
    /// When the first host started.
    pub started: String,
    /// Who deployed.
    pub user: String,
    /// From which machine.
    pub controller_host: String,
    /// The commit, when the project is a git repository.
    pub commit: Option<String>,
    /// Each host's part, sorted by host.
    pub hosts: Vec<HostDeploy>,
}

impl Deploy {
    /// The run's result: the worst of its hosts' (`failed`, then running or aborted as
    /// `incomplete`, then `incomplete`, `not_attempted`, `success`).
    pub fn result(&self) -> &'static str {
        let results: Vec<Option<DeployResult>> = self.hosts.iter().map(|h| h.result).collect();
        if results.contains(&Some(DeployResult::Failed)) {
            "failed"
        } else if self.hosts.iter().any(|h| h.error.is_some()) {
            "aborted"
        } else if results.contains(&None) {
            "unfinished"
        } else if results.contains(&Some(DeployResult::Incomplete)) {
            "incomplete"
        } else if results
            .iter()
            .all(|r| *r == Some(DeployResult::NotAttempted))
        {
            "not_attempted"
        } else {
            "success"
        }
    }
}

/// Merges hosts' deploys into runs (same user, machine, process and start of the
/// controller), ordered by when they started, and keeps the last `limit`.
pub fn merge_deploys(hosts: Vec<HostDeploy>, limit: usize) -> Vec<Deploy> {
    let mut runs: Vec<Deploy> = Vec::new();
    let mut hosts = hosts;
    hosts.sort_by(|a, b| a.started.cmp(&b.started).then(a.host.cmp(&b.host)));
    for host in hosts {
        let same = |d: &Deploy| {
            let first = &d.hosts[0];
            first.user == host.user
                && first.controller_host == host.controller_host
                && first.pid == host.pid
                && first.run == host.run
                && !d.hosts.iter().any(|h| h.host == host.host)
        };
        match runs.iter_mut().rev().find(|d| same(d)) {
            Some(run) => {
                if run.commit.is_none() {
                    run.commit = host.commit.clone();
                }
                run.hosts.push(host);
                run.hosts.sort_by(|a, b| a.host.cmp(&b.host));
            }
            None => runs.push(Deploy {
                started: host.started.clone(),
                user: host.user.clone(),
                controller_host: host.controller_host.clone(),
                commit: host.commit.clone(),
                hosts: vec![host],
            }),
        }
    }
    let skip = runs.len().saturating_sub(limit);
    runs.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RootOutcome;

    fn record(time: &str, host: &str, pid: u32, entry: JournalEntry) -> JournalRecord {
        JournalRecord {
            time: time.into(),
            environment: "prod".into(),
            host: host.into(),
            user: "alice".into(),
            controller_host: "laptop".into(),
            pid,
            entry,
        }
    }

    fn started(run: &str) -> JournalEntry {
        JournalEntry::Started {
            commit: Some("abc".into()),
            run: Some(run.into()),
        }
    }

    fn finished(result: DeployResult, changed: &[&str]) -> JournalEntry {
        JournalEntry::Finished {
            result,
            changed: changed.iter().map(|c| c.to_string()).collect(),
            unchanged: Vec::new(),
            failed: Vec::new(),
            components_changed: vec!["x".into()],
        }
    }

    #[test]
    fn a_journal_reads_back_as_deploys() {
        let records = vec![
            record("t1", "web1", 7, started("r1")),
            record(
                "t2",
                "web1",
                7,
                JournalEntry::Step {
                    component: "app".into(),
                    outcome: RootOutcome::Changed,
                    started: "t1".into(),
                    changed: vec![],
                },
            ),
            record("t3", "web1", 7, finished(DeployResult::Success, &["app"])),
            record("t4", "web1", 8, started("r2")),
            record(
                "t5",
                "web1",
                8,
                JournalEntry::Aborted {
                    error: vec!["controller disconnected".into()],
                },
            ),
            record("t6", "web1", 9, started("r3")),
        ];
        let found = deploys("prod", &records);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].result, Some(DeployResult::Success));
        assert_eq!(found[0].changed, ["app"]);
        assert_eq!(found[0].commit.as_deref(), Some("abc"));
        assert_eq!(
            found[1].error.as_ref().unwrap()[0],
            "controller disconnected"
        );
        assert_eq!(found[2].finished, None);
        assert!(deploys("staging", &records).is_empty());
    }

    #[test]
    fn hosts_deploys_merge_into_runs_in_time_order() {
        let mut all = deploys(
            "prod",
            &[
                record("t1", "web1", 7, started("r1")),
                record("t3", "web1", 7, finished(DeployResult::Success, &["app"])),
                record("t5", "web1", 9, started("r2")),
                record("t6", "web1", 9, finished(DeployResult::Failed, &[])),
            ],
        );
        all.extend(deploys(
            "prod",
            &[
                record("t2", "web2", 7, started("r1")),
                record("t4", "web2", 7, finished(DeployResult::Success, &[])),
            ],
        ));
        let runs = merge_deploys(all.clone(), 10);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].hosts.len(), 2);
        assert_eq!(runs[0].result(), "success");
        assert_eq!(runs[1].result(), "failed");
        let last = merge_deploys(all, 1);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].started, "t5");
    }
}
