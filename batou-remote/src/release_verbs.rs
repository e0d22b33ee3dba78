//! The `releases` and `rollback` verbs over SSH: `batou-remote <ENVIRONMENT> releases
//! [COMPONENT]...` lists each host's releases, `batou-remote <ENVIRONMENT> rollback
//! [COMPONENT]... [--to <ID>]` switches them back in one step (no build, no upload: the plan
//! is made with builds skipped), restarts the services that watch them and checks their
//! health. One agent session per host, up to `jobs` at once; `rollback` takes the host's
//! lock, `releases` only reads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use batou_core::protocol::{Controller, Purpose, RemotePlan};
use batou_core::{ConfigError, Event, EventSink, HostStatus, HostSummary, ReleaseReport};
use batou_runtime::Exit;
use batou_runtime::scheduler::{HostFailure, exit_of};
use batou_runtime::verb::{ReleaseCommand, release_summary};
use tokio::sync::{Semaphore, mpsc};

use crate::agent::AgentBinary;
use crate::schedule::{self, DeployOptions, RunReport, session_failure};

/// The hosts (in `--hosts`, sorted) that run a release root the verb acts on. Named roots
/// must be release roots of the environment; hosts without any are not contacted.
pub fn targets(
    plan: &RemotePlan,
    hosts: Option<&BTreeSet<String>>,
    command: &ReleaseCommand,
) -> Result<Vec<String>, ConfigError> {
    let in_scope = |host: &str| hosts.is_none_or(|h| h.contains(host));
    // A host's job carries a bundle for each release root it runs (unbuilt for verbs): the
    // roots with one are release roots.
    let mut roots: Vec<(String, bool)> = Vec::new();
    let mut chosen = Vec::new();
    for (host, job) in &plan.host_jobs {
        if !in_scope(host) {
            continue;
        }
        let has_release = !job.bundles.is_empty();
        for step in &job.steps {
            let release = has_release && is_release(&step.type_name);
            match roots.iter_mut().find(|(r, _)| *r == step.root) {
                Some((_, r)) => *r |= release,
                None => roots.push((step.root.clone(), release)),
            }
            if release
                && (command.roots.is_empty() || command.roots.contains(&step.root))
                && !chosen.contains(host)
            {
                chosen.push(host.clone());
            }
        }
    }
    batou_runtime::verb::check_release_roots(&plan.environment, &roots, &command.roots)?;
    Ok(chosen)
}

/// Root components of the library's `release` type; a project's own type that adds a
/// release as a sub-component is found by the agent, which lists what it has.
fn is_release(type_name: &str) -> bool {
    type_name == "release"
}

enum Up {
    Event(Event),
    Done(String, Result<Vec<ReleaseReport>, HostFailure>),
}

/// Runs the verb on `targets`, reporting events to `sink` and one summary line per host.
pub async fn control(
    plan: &RemotePlan,
    targets: &[String],
    command: &ReleaseCommand,
    agent: Arc<AgentBinary>,
    controller: Controller,
    options: &DeployOptions,
    sink: &mut dyn EventSink,
) -> RunReport {
    let started = Instant::now();
    let purpose = Purpose::Releases {
        rollback: command.rollback,
    };
    let (up_tx, mut up) = mpsc::unbounded_channel::<Up>();
    let jobs = Arc::new(Semaphore::new(options.jobs.max(1)));
    for name in targets {
        let host = plan
            .hosts
            .iter()
            .find(|h| &h.name == name)
            .expect("targets are hosts of the plan")
            .clone();
        let job = plan.host_jobs[name].clone();
        let (agent, controller, options) =
            (Arc::clone(&agent), controller.clone(), options.clone());
        let (jobs, up, name) = (Arc::clone(&jobs), up_tx.clone(), name.clone());
        let (roots, to) = (command.roots.clone(), command.to.clone());
        tokio::spawn(async move {
            let _permit = jobs.acquire_owned().await.expect("never closed");
            if options.interrupt.is_raised() {
                let failure = HostFailure::new(
                    HostStatus::Interrupted,
                    vec!["interrupted before the host was contacted".into()],
                );
                let _ = up.send(Up::Done(name, Err(failure)));
                return;
            }
            let events = up.clone();
            let opened = schedule::open_session(
                &host,
                &job,
                &agent,
                &controller,
                &options,
                purpose,
                move |e| {
                    let _ = events.send(Up::Event(e));
                },
            )
            .await;
            let (session, mut agent_session) = match opened {
                Ok(opened) => opened,
                Err(failure) => {
                    let _ = up.send(Up::Done(name, Err(failure)));
                    return;
                }
            };
            let events = up.clone();
            let result = agent_session
                .releases(&roots, to, move |e| {
                    let _ = events.send(Up::Event(e));
                })
                .await;
            let result = match result {
                Ok(reports) => {
                    let _ = agent_session.finish().await;
                    Ok(reports)
                }
                Err(err) => {
                    drop(agent_session);
                    Err(session_failure(&err))
                }
            };
            crate::ssh::close(session, &options.ssh.masters).await;
            let _ = up.send(Up::Done(name, result));
        });
    }
    drop(up_tx);

    let mut summaries: BTreeMap<String, (HostSummary, Exit)> = BTreeMap::new();
    while let Some(msg) = up.recv().await {
        let (host, summary, exit) = match msg {
            Up::Event(event) => {
                sink.event(event);
                continue;
            }
            Up::Done(host, Ok(reports)) => {
                let (status, detail) = release_summary(&reports);
                let exit = exit_of(status).unwrap_or(Exit::DeployFailed);
                let summary = HostSummary {
                    host: host.clone(),
                    status,
                    detail,
                };
                (host, summary, exit)
            }
            Up::Done(host, Err(failure)) => {
                sink.event(Event::HostFailed {
                    host: host.clone(),
                    status: failure.status,
                    error: failure.error.clone(),
                });
                let summary = HostSummary {
                    host: host.clone(),
                    status: failure.status,
                    detail: failure.error.join(": "),
                };
                (host, summary, failure.exit())
            }
        };
        summaries.insert(host, (summary, exit));
    }
    let seconds = started.elapsed().as_secs_f64();
    let exit = summaries
        .values()
        .fold(Exit::Success, |worst, (_, exit)| worst.worst(*exit));
    let hosts: Vec<HostSummary> = summaries.into_values().map(|(s, _)| s).collect();
    sink.event(Event::RunFinished {
        hosts: hosts.clone(),
        seconds,
    });
    RunReport {
        hosts,
        exit,
        seconds,
    }
}
