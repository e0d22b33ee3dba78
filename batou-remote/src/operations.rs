//! The operator's verbs over SSH: `batou-remote <ENVIRONMENT> status`, `history [--limit
//! N]`, `exec [--timeout D] [--no-lock] -- ARGV...` and `lock acquire -m REASON|release|
//! status`, on every host of the environment (or those of `--hosts`), in parallel through
//! `fleet::each_host`, each ending with one summary line per host and the exit code of the
//! worst host.
//!
//! `status` and `history` only read (no lock, no journal); `exec` takes the host's lock and
//! respects its freeze unless `--no-lock`; `lock acquire` and `release` take the host's lock
//! for the moment they write the freeze, so that they are refused while a deploy runs.

use std::collections::BTreeSet;
use std::time::Instant;

use batou_core::operations::{HostDeploy, merge_deploys};
use batou_core::protocol::{FromAgent, Purpose, RemotePlan, ToAgent};
use batou_core::{Event, EventSink, HostStatus};
use batou_runtime::operations::{lock_detail, state_detail};
use batou_runtime::verb::Operation;

use crate::agent::unexpected;
use crate::fleet::{self, Fleet, Line};
use crate::schedule::RunReport;

/// The hosts a verb runs on: every host of the plan, or those of `--hosts`, sorted.
pub fn targets(plan: &RemotePlan, hosts: Option<&BTreeSet<String>>) -> Vec<String> {
    plan.hosts
        .iter()
        .filter(|h| hosts.is_none_or(|s| s.contains(&h.name)))
        .filter(|h| plan.host_jobs.contains_key(&h.name))
        .map(|h| h.name.clone())
        .collect()
}

/// Whether planning may skip the release builds for `operation`: everything but `status`,
/// whose drift compares the host with what a deploy would ship.
pub fn skips_builds(operation: &Operation) -> bool {
    !matches!(operation, Operation::Status)
}

/// The session's purpose for `operation`.
fn purpose(operation: &Operation) -> Purpose {
    match operation {
        Operation::Status => Purpose::Status,
        Operation::History { .. } => Purpose::History,
        Operation::Exec { lock, .. } => Purpose::Exec { lock: *lock },
        Operation::Lock { verb, .. } => Purpose::Lock { verb: *verb },
    }
}

/// What a host answered.
enum Answer {
    State(String),
    History(Vec<HostDeploy>),
    Exec(batou_core::operations::ExecResult),
    Lock(batou_core::operations::LockReport),
}

/// Runs `operation` on `targets`, reporting events to `sink` as they come (for `history`,
/// the merged deploys once every host answered) and a summary line per host.
pub async fn run(
    fleet: &Fleet<'_>,
    targets: &[String],
    operation: &Operation,
    sink: &mut dyn EventSink,
) -> RunReport {
    let started = Instant::now();
    let request = match operation {
        Operation::Status => ToAgent::Status,
        Operation::History { limit } => ToAgent::History { limit: *limit },
        Operation::Exec { argv, timeout, .. } => ToAgent::Exec {
            argv: argv.clone(),
            timeout_seconds: timeout.as_secs_f64(),
        },
        Operation::Lock { reason, .. } => ToAgent::Lock {
            reason: reason.clone(),
        },
    };
    let lock_verb = match operation {
        Operation::Lock { verb, .. } => Some(*verb),
        _ => None,
    };
    let answers = fleet::each_host(
        fleet,
        targets,
        purpose(operation),
        move |host, mut session, emit| {
            let request = request.clone();
            async move {
                let events = emit.clone();
                let answer = session.request(&request, move |e| events.event(e)).await?;
                let answer = match answer {
                    FromAgent::StatusFinished { state } => {
                        let detail = state_detail(&state);
                        emit.event(Event::HostState { host, state });
                        Answer::State(detail)
                    }
                    FromAgent::HistoryFinished { deploys } => Answer::History(deploys),
                    FromAgent::ExecFinished { result } => {
                        emit.event(Event::ExecFinished {
                            host,
                            result: result.clone(),
                        });
                        Answer::Exec(result)
                    }
                    FromAgent::LockFinished { report } => {
                        if let Some(verb) = lock_verb {
                            emit.event(Event::Lock {
                                host,
                                verb,
                                report: Box::new(report.clone()),
                            });
                        }
                        Answer::Lock(report)
                    }
                    other => return Err(unexpected(other)),
                };
                Ok((session, answer))
            }
        },
        sink,
    )
    .await;
    if let Operation::History { limit } = operation {
        let all: Vec<HostDeploy> = answers
            .values()
            .filter_map(|a| match a {
                Ok(Answer::History(deploys)) => Some(deploys.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        for deploy in merge_deploys(all, *limit) {
            let changed = deploy
                .hosts
                .iter()
                .flat_map(|h| {
                    h.changed
                        .iter()
                        .map(move |root| format!("{}: {root}", h.host))
                })
                .collect();
            sink.event(Event::Deploy {
                result: deploy.result().to_string(),
                started: deploy.started,
                user: deploy.user,
                controller_host: deploy.controller_host,
                commit: deploy.commit,
                hosts: deploy.hosts,
                changed,
            });
        }
    }
    let lines = fleet::lines(&answers, |host, answer| match answer {
        Answer::State(detail) => Line::answered(host, HostStatus::Unchanged, detail.clone()),
        Answer::History(deploys) => {
            let noun = if deploys.len() == 1 {
                "deploy"
            } else {
                "deploys"
            };
            Line::answered(
                host,
                HostStatus::Unchanged,
                format!("{} {noun} read from the journal", deploys.len()),
            )
        }
        Answer::Exec(result) => {
            let status = if result.timed_out {
                HostStatus::Timeout
            } else if result.succeeded() {
                HostStatus::Unchanged
            } else {
                HostStatus::Failed
            };
            Line::answered(host, status, result.describe())
        }
        Answer::Lock(report) => {
            let (status, detail) = lock_detail(report);
            Line::answered(host, status, detail)
        }
    });
    fleet::finish(lines, started, sink)
}
