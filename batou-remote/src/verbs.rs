//! The `service` verbs over SSH: `batou-remote <ENVIRONMENT> service
//! status|start|stop|restart [COMPONENT]...`.
//!
//! [`targets`] decides, from the plan alone and before any connection, which hosts run the
//! verb on which root components. [`control`] then runs it through `fleet::each_host` (one
//! agent session per host, up to `jobs` at once), streams the services' events and ends
//! with one summary line per host.
//! There is no ordering between hosts: a verb acts on what the last deploy left running.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use batou_core::protocol::{Purpose, RemotePlan};
use batou_core::{ConfigError, EventSink};
use batou_runtime::verb::{ServiceCommand, service_summary};

use crate::fleet::{self, Fleet, Line};
use crate::schedule::RunReport;

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

/// Runs `command` on the services of `targets` (see [`targets`]), in parallel up to
/// `jobs` hosts, reporting events to `sink` as they happen and a summary at the end.
///
/// A host whose verb failed on some service ends `failed` (exit 1); a host that could not be
/// reached or whose agent could not be started ends as a deploy would (unreachable,
/// refused keys, lock held, timeout). After an interrupt no further host is contacted.
pub async fn control(
    fleet: &Fleet<'_>,
    targets: &BTreeMap<String, Vec<String>>,
    command: &ServiceCommand,
    sink: &mut dyn EventSink,
) -> RunReport {
    let started = Instant::now();
    let purpose = Purpose::Service { verb: command.verb };
    let roots = Arc::new(targets.clone());
    let hosts: Vec<String> = targets.keys().cloned().collect();
    let answers = fleet::each_host(
        fleet,
        &hosts,
        purpose,
        move |host, mut session, emit| {
            let roots = Arc::clone(&roots);
            async move {
                let outcomes = session
                    .service(&roots[&host], move |e| emit.event(e))
                    .await?;
                Ok((session, outcomes))
            }
        },
        sink,
    )
    .await;
    let lines = fleet::lines(&answers, |host, outcomes| {
        let (status, detail) = service_summary(command.verb, outcomes);
        Line::answered(host, status, detail)
    });
    fleet::finish(lines, started, sink)
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
                    become_user: None,
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
