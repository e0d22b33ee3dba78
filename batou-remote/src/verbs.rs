//! The `service` verbs over SSH: `batou-remote <ENVIRONMENT> service
//! status|start|stop|restart [COMPONENT]...`.
//!
//! [`targets`] decides, from the plan alone and before any connection, which hosts run the
//! verb on which root components. [`control`] then opens one agent session per host (the same
//! connect, ship and start as a deploy, `schedule::open_session`), up to `jobs` hosts at
//! once, sends the verb, streams the services' events and ends with one summary line per host.
//! There is no ordering between hosts: a verb acts on what the last deploy left running.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use batou_core::protocol::{Controller, Purpose, RemotePlan};
use batou_core::{ConfigError, Event, EventSink, HostStatus, HostSummary, ServiceOutcome};
use batou_runtime::Exit;
use batou_runtime::scheduler::{HostFailure, exit_of};
use batou_runtime::verb::{ServiceCommand, service_summary};
use tokio::sync::{Semaphore, mpsc};

use crate::agent::AgentBinary;
use crate::schedule::{self, DeployOptions, RunReport, session_failure};

/// For each host the verb runs on (sorted by name), the root components whose services it
/// acts on, in the host's plan order.
///
/// The scope is every host of the plan, or those of `--hosts`. Named root components must
/// run on a host in scope and hold a service there; with none named, every root component
/// with a service counts. Hosts with none of them are not contacted.
pub fn targets(
    plan: &RemotePlan,
    hosts: Option<&BTreeSet<String>>,
    command: &ServiceCommand,
) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let in_scope = |host: &str| hosts.is_none_or(|h| h.contains(host));
    // Each root component in scope and whether it holds a service on some host, in
    // environment order.
    let mut roots: Vec<(String, bool)> = Vec::new();
    for (host, job) in &plan.host_jobs {
        if !in_scope(host) {
            continue;
        }
        for step in &job.steps {
            let service = !step.services.is_empty();
            match roots.iter_mut().find(|(r, _)| *r == step.root) {
                Some((_, s)) => *s |= service,
                None => roots.push((step.root.clone(), service)),
            }
        }
    }
    let position = |root: &str| plan.steps.iter().position(|s| s.root == root);
    roots.sort_by_key(|(root, _)| position(root));
    if hosts.is_some() {
        for name in &command.roots {
            let elsewhere = plan.steps.iter().any(|s| &s.root == name);
            if elsewhere && !roots.iter().any(|(r, _)| r == name) {
                return Err(ConfigError::new(format!(
                    "root component `{name}` runs on none of the hosts in `--hosts`"
                ))
                .hint(format!(
                    "it runs on: {}",
                    plan.steps
                        .iter()
                        .filter(|s| &s.root == name)
                        .map(|s| s.host.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    let chosen = batou_core::select_roots(&plan.environment, &roots, &command.roots)?;
    let mut targets = BTreeMap::new();
    for (host, job) in &plan.host_jobs {
        if !in_scope(host) {
            continue;
        }
        let mine: Vec<String> = job
            .steps
            .iter()
            .filter(|s| !s.services.is_empty() && chosen.contains(&s.root))
            .map(|s| s.root.clone())
            .collect();
        if !mine.is_empty() {
            targets.insert(host.clone(), mine);
        }
    }
    Ok(targets)
}

/// What a host's task sends the loop.
enum Up {
    Event(Event),
    Done(String, Result<Vec<ServiceOutcome>, HostFailure>),
}

/// Runs `command` on the services of `targets` (see [`targets`]), in parallel up to
/// `options.jobs` hosts, reporting events to `sink` as they happen and a summary at the end.
///
/// A host whose verb failed on some service ends `failed` (exit 1); a host that could not be
/// reached or whose agent could not be started ends as a deploy would (unreachable,
/// refused keys, lock held, timeout). After an interrupt no further host is contacted.
pub async fn control(
    plan: &RemotePlan,
    targets: &BTreeMap<String, Vec<String>>,
    command: &ServiceCommand,
    agent: Arc<AgentBinary>,
    controller: Controller,
    options: &DeployOptions,
    sink: &mut dyn EventSink,
) -> RunReport {
    let started = Instant::now();
    let purpose = Purpose::Service { verb: command.verb };
    let (up_tx, mut up) = mpsc::unbounded_channel::<Up>();
    let jobs = Arc::new(Semaphore::new(options.jobs.max(1)));
    for (name, roots) in targets {
        let host = plan
            .hosts
            .iter()
            .find(|h| &h.name == name)
            .expect("targets are hosts of the plan")
            .clone();
        let job = plan.host_jobs[name].clone();
        let (agent, controller, options) =
            (Arc::clone(&agent), controller.clone(), options.clone());
        let (jobs, up, roots, name) = (
            Arc::clone(&jobs),
            up_tx.clone(),
            roots.clone(),
            name.clone(),
        );
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
                .service(&roots, move |e| {
                    let _ = events.send(Up::Event(e));
                })
                .await;
            let result = match result {
                Ok(outcomes) => {
                    if let Err(err) = agent_session.finish().await {
                        let _ = up.send(Up::Event(Event::Log {
                            host: name.clone(),
                            component: String::new(),
                            message: format!("ending the agent session failed: {err}"),
                        }));
                    }
                    Ok(outcomes)
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
        match msg {
            Up::Event(event) => sink.event(event),
            Up::Done(host, Ok(outcomes)) => {
                let (status, detail) = service_summary(command.verb, &outcomes);
                let exit = exit_of(status).unwrap_or(Exit::DeployFailed);
                summaries.insert(
                    host.clone(),
                    (
                        HostSummary {
                            host,
                            status,
                            detail,
                        },
                        exit,
                    ),
                );
            }
            Up::Done(host, Err(failure)) => {
                sink.event(Event::HostFailed {
                    host: host.clone(),
                    status: failure.status,
                    error: failure.error.clone(),
                });
                let exit = failure.exit();
                summaries.insert(
                    host.clone(),
                    (
                        HostSummary {
                            host,
                            status: failure.status,
                            detail: failure.error.join(": "),
                        },
                        exit,
                    ),
                );
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use batou_core::ServiceVerb;
    use batou_core::protocol::{HostJob, JobHost, JobStep, PlanStep, RemoteHost};

    /// A plan of `hosts`, each with `(root, has a service)` steps.
    fn plan(hosts: &[(&str, &[(&str, bool)])]) -> RemotePlan {
        let mut steps = Vec::new();
        let mut host_jobs = BTreeMap::new();
        for (host, roots) in hosts {
            let mut job_steps = Vec::new();
            for (root, service) in *roots {
                steps.push(PlanStep {
                    host: host.to_string(),
                    root: root.to_string(),
                    after: Vec::new(),
                    after_keys: BTreeMap::new(),
                });
                job_steps.push(JobStep {
                    root: root.to_string(),
                    type_name: "service".into(),
                    attributes: serde_json::Value::Null,
                    components: vec![root.to_string()],
                    services: if *service {
                        vec![format!("{root} > Service('{root}')")]
                    } else {
                        Vec::new()
                    },
                });
            }
            host_jobs.insert(
                host.to_string(),
                HostJob {
                    environment: "prod".into(),
                    host: JobHost {
                        name: host.to_string(),
                        data: BTreeMap::new(),
                        address: None,
                    },
                    base_dir: "/srv".into(),
                    allow_paths: Vec::new(),
                    steps: job_steps,
                    resources: BTreeMap::new(),
                    files: Default::default(),
                    secret_files: BTreeMap::new(),
                    bundles: BTreeMap::new(),
                    secrets: Vec::new(),
                    templates: Default::default(),
                    facts: None,
                    rollout: None,
                },
            );
        }
        RemotePlan {
            environment: "prod".into(),
            jobs: 2,
            hosts: hosts
                .iter()
                .map(|(h, _)| RemoteHost {
                    name: h.to_string(),
                    address: None,
                    port: None,
                    user: None,
                })
                .collect(),
            order: (0..steps.len()).collect(),
            steps,
            host_jobs,
            secrets: Vec::new(),
            generated: Vec::new(),
            fact_hosts: Vec::new(),
            rollout: None,
        }
    }

    fn command(roots: &[&str]) -> ServiceCommand {
        ServiceCommand {
            verb: ServiceVerb::Status,
            roots: roots.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn hosts(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn every_host_with_a_service_unless_roots_or_hosts_are_named() {
        let plan = plan(&[
            ("web1", &[("config", false), ("web", true)]),
            (
                "web2",
                &[("config", false), ("web", true), ("worker", true)],
            ),
            ("db1", &[("postgres", false)]),
        ]);
        let all = targets(&plan, None, &command(&[])).unwrap();
        assert_eq!(
            all,
            BTreeMap::from([
                ("web1".to_string(), vec!["web".to_string()]),
                (
                    "web2".to_string(),
                    vec!["web".to_string(), "worker".to_string()]
                ),
            ])
        );
        let named = targets(&plan, None, &command(&["worker"])).unwrap();
        assert_eq!(
            named,
            BTreeMap::from([("web2".to_string(), vec!["worker".to_string()])])
        );
        let limited = targets(&plan, Some(&hosts(&["web1"])), &command(&[])).unwrap();
        assert_eq!(
            limited,
            BTreeMap::from([("web1".to_string(), vec!["web".to_string()])])
        );
    }

    #[test]
    fn wrong_names_are_configuration_errors() {
        let plan = plan(&[
            ("web1", &[("config", false), ("web", true)]),
            ("web2", &[("worker", true)]),
            ("db1", &[("postgres", false)]),
        ]);
        let err = targets(&plan, None, &command(&["webb"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown root component `webb` in environment `prod` (did you mean `web`?)"
        );
        let err = targets(&plan, None, &command(&["config"])).unwrap_err();
        assert_eq!(err.to_string(), "root component `config` has no service");
        assert_eq!(
            err.hint.as_deref(),
            Some("root components with a service: web, worker")
        );
        let err = targets(&plan, Some(&hosts(&["web1"])), &command(&["worker"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "root component `worker` runs on none of the hosts in `--hosts`"
        );
        let err = targets(&plan, Some(&hosts(&["db1"])), &command(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no root component of environment `prod` has a service"
        );
    }
}
