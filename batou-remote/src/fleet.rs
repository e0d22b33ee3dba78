//! One agent session per host, for the verbs that are no deploy: `service`, `releases`,
//! `rollback`, `status`, `history`, `exec` and `lock`.
//!
//! [`each_host`] opens a session on every target host (the same connect, ship and start as a
//! deploy, `schedule::open_session`), up to `jobs` hosts at once and in no order between
//! them, runs the verb's own exchange on it, ends the session and closes the master. Events
//! reach the sink as they arrive; a host that cannot be reached or whose agent refuses gets
//! its `host_failed` event at once. What each host answered goes back to the verb, which
//! turns it into one summary line per host; [`finish`] ends the run with `run_finished` and
//! the exit code of the worst host. Deploys have their own loop (`schedule::deploy`): their
//! hosts wait for each other's steps.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use batou_core::protocol::{Controller, Purpose, RemotePlan};
use batou_core::{Event, EventSink, HostStatus, HostSummary};
use batou_runtime::Exit;
use batou_runtime::scheduler::{HostFailure, exit_of};
use tokio::sync::{Semaphore, mpsc};

use crate::agent::{AgentBinary, AgentSession, SessionError};
use crate::schedule::{self, DeployOptions, RunReport, session_failure};

/// What every host's session needs: the plan, the agent to ship, who runs the verb, and how.
pub struct Fleet<'a> {
    /// The environment's plan (each target host's job comes from it).
    pub plan: &'a RemotePlan,
    /// The binary shipped and started as the agent.
    pub agent: Arc<AgentBinary>,
    /// Who runs the verb, for locks and journals.
    pub controller: Controller,
    /// Connection, deadlines, `jobs` and the interrupt.
    pub options: &'a DeployOptions,
}

/// Passes a host's events to the run's sink, from the host's task.
#[derive(Clone)]
pub struct Emit(Arc<dyn Fn(Event) + Send + Sync>);

impl Emit {
    /// Reports `event` now.
    pub fn event(&self, event: Event) {
        (self.0)(event)
    }
}

/// What a host's task sends the loop.
enum Up<T> {
    Event(Event),
    Done(String, Result<T, HostFailure>),
}

/// Runs `purpose` on each host of `targets`: opens the session, hands it to `work` (the
/// host's name, the session, a way to report events) and ends it, `jobs` hosts at once.
/// Returns each host's answer, or why it has none, by host name. After an interrupt no
/// further host is contacted.
pub async fn each_host<T, F, Fut>(
    fleet: &Fleet<'_>,
    targets: &[String],
    purpose: Purpose,
    work: F,
    sink: &mut dyn EventSink,
) -> BTreeMap<String, Result<T, HostFailure>>
where
    T: Send + 'static,
    F: Fn(String, AgentSession, Emit) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(AgentSession, T), SessionError>> + Send + 'static,
{
    let (up_tx, mut up) = mpsc::unbounded_channel::<Up<T>>();
    let jobs = Arc::new(Semaphore::new(fleet.options.jobs.max(1)));
    for name in targets {
        let host = fleet
            .plan
            .hosts
            .iter()
            .find(|h| &h.name == name)
            .expect("targets are hosts of the plan")
            .clone();
        let job = fleet.plan.host_jobs[name].clone();
        let (agent, controller, options) = (
            Arc::clone(&fleet.agent),
            fleet.controller.clone(),
            fleet.options.clone(),
        );
        let (jobs, up, name, work) = (Arc::clone(&jobs), up_tx.clone(), name.clone(), work.clone());
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
            let emit = Emit(Arc::new(move |e| {
                let _ = events.send(Up::Event(e));
            }));
            let opened = {
                let emit = emit.clone();
                schedule::open_session(
                    &host,
                    &job,
                    &agent,
                    &controller,
                    &options,
                    purpose,
                    move |e| emit.event(e),
                )
                .await
            };
            let (session, agent_session) = match opened {
                Ok(opened) => opened,
                Err(failure) => {
                    let _ = up.send(Up::Done(name, Err(failure)));
                    return;
                }
            };
            let result = match work(name.clone(), agent_session, emit.clone()).await {
                Ok((agent_session, answer)) => {
                    if let Err(err) = agent_session.finish().await {
                        emit.event(Event::Log {
                            host: name.clone(),
                            component: String::new(),
                            message: format!("ending the agent session failed: {err}"),
                        });
                    }
                    Ok(answer)
                }
                Err(err) => Err(session_failure(&err)),
            };
            crate::ssh::close(session, &options.ssh.masters).await;
            let _ = up.send(Up::Done(name, result));
        });
    }
    drop(up_tx);

    let mut answers = BTreeMap::new();
    while let Some(msg) = up.recv().await {
        match msg {
            Up::Event(event) => sink.event(event),
            Up::Done(host, result) => {
                if let Err(failure) = &result {
                    sink.event(Event::HostFailed {
                        host: host.clone(),
                        status: failure.status,
                        error: failure.error.clone(),
                    });
                }
                answers.insert(host, result);
            }
        }
    }
    answers
}

/// One host's line in the summary: its status and detail, and the exit code it gives the
/// run.
pub struct Line {
    /// The summary line.
    pub summary: HostSummary,
    /// The exit code this host alone would give.
    pub exit: Exit,
}

impl Line {
    /// A host that answered: `status` and `detail` from the verb's reading of the answer.
    pub fn answered(host: &str, status: HostStatus, detail: String) -> Line {
        Line {
            summary: HostSummary {
                host: host.to_string(),
                status,
                detail,
            },
            exit: exit_of(status).unwrap_or(Exit::DeployFailed),
        }
    }

    /// A host without an answer (unreachable, refused, timed out).
    pub fn failed(host: &str, failure: &HostFailure) -> Line {
        Line {
            summary: HostSummary {
                host: host.to_string(),
                status: failure.status,
                detail: failure.error.join(": "),
            },
            exit: failure.exit(),
        }
    }
}

/// The summary lines of `answers`: `read` turns each answer into its line, failures become
/// theirs.
pub fn lines<T>(
    answers: &BTreeMap<String, Result<T, HostFailure>>,
    mut read: impl FnMut(&str, &T) -> Line,
) -> Vec<Line> {
    answers
        .iter()
        .map(|(host, result)| match result {
            Ok(answer) => read(host, answer),
            Err(failure) => Line::failed(host, failure),
        })
        .collect()
}

/// Ends the run: `run_finished` with one summary per host (sorted by name) and the exit code
/// of the worst host.
pub fn finish(lines: Vec<Line>, started: Instant, sink: &mut dyn EventSink) -> RunReport {
    let seconds = started.elapsed().as_secs_f64();
    let mut lines = lines;
    lines.sort_by(|a, b| a.summary.host.cmp(&b.summary.host));
    let exit = lines
        .iter()
        .fold(Exit::Success, |worst, line| worst.worst(line.exit));
    let hosts: Vec<HostSummary> = lines.into_iter().map(|l| l.summary).collect();
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
