//! Services: components that a supervisor keeps running, and the operator's verbs on them
//! (`service status|start|stop|restart`).
//!
//! The library's `service` component implements [`ServiceControl`]; the engine finds every
//! component of a root component's tree that does ([`Component::service`](crate::Component::service)) and runs a verb
//! on it with [`control_services`].

use serde::{Deserialize, Serialize};

use crate::plan::Node;
use crate::{ConfigError, Deploy, EventSink, Plan};

/// What the supervisor says of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The supervisor: `runit` or `systemd`.
    pub manager: String,
    /// Whether the service's process runs.
    pub running: bool,
    /// Its process id, while it runs.
    pub pid: Option<u32>,
    /// Seconds since it was last started (or stopped), when the supervisor says.
    pub uptime_seconds: Option<u64>,
    /// How often the supervisor restarted it, when the supervisor counts.
    pub restarts: Option<u64>,
    /// Anything else worth showing (`normally down`, `want up`, a supervisor's complaint).
    pub detail: Option<String>,
}

/// An operator's verb on services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceVerb {
    /// Report manager, running or not, pid, uptime, restarts.
    Status,
    /// Start what does not run.
    Start,
    /// Stop what runs.
    Stop,
    /// Restart, running or not.
    Restart,
}

impl ServiceVerb {
    /// The verb as typed on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceVerb::Status => "status",
            ServiceVerb::Start => "start",
            ServiceVerb::Stop => "stop",
            ServiceVerb::Restart => "restart",
        }
    }
}

/// A component that a supervisor runs, which the service verbs control.
///
/// Each verb gets the same [`Deploy`] context as `verify` (never a dry run), so that it can
/// log and knows its host and work directory. `start` and `stop` are idempotent.
pub trait ServiceControl {
    /// What the supervisor says of the service now.
    fn status(&self, cx: &mut Deploy) -> anyhow::Result<ServiceStatus>;
    /// Starts the service unless it runs, proving it healthy; whether it had to.
    fn start(&self, cx: &mut Deploy) -> anyhow::Result<bool>;
    /// Stops the service if it runs; whether it had to.
    fn stop(&self, cx: &mut Deploy) -> anyhow::Result<bool>;
    /// Restarts the service (starting it when it does not run), proving it healthy.
    fn restart(&self, cx: &mut Deploy) -> anyhow::Result<()>;
}

/// What a verb did to one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum ServiceResult {
    /// `status`: what the supervisor says.
    Status {
        /// The status.
        status: ServiceStatus,
    },
    /// The verb changed something: `started`, `stopped`, `restarted`.
    Changed {
        /// What it did.
        action: String,
    },
    /// The service already was as asked (`start` of a running service).
    Unchanged,
    /// The verb failed; the cause chain.
    Failed {
        /// The error and its causes.
        error: Vec<String>,
    },
}

/// One service a verb ran on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOutcome {
    /// The root component the service belongs to.
    pub root: String,
    /// The service's component path.
    pub component: String,
    /// What happened.
    #[serde(flatten)]
    pub result: ServiceResult,
}

impl ServiceOutcome {
    /// Whether the verb failed on this service.
    pub fn is_failed(&self) -> bool {
        matches!(self.result, ServiceResult::Failed { .. })
    }

    /// Whether the verb changed this service.
    pub fn is_changed(&self) -> bool {
        matches!(self.result, ServiceResult::Changed { .. })
    }
}

/// Runs `verb` on every service in the tree of `step`, in converge order.
///
/// Each outcome is also reported to `sink` as an [`Event::Service`](crate::Event::Service),
/// as it happens.
pub fn control_services(
    plan: &mut Plan,
    step: usize,
    verb: ServiceVerb,
    sink: &mut dyn EventSink,
) -> Vec<ServiceOutcome> {
    let changed_roots = Default::default();
    let (step, host, _) = plan.step_with_host(step);
    let mut services = Vec::new();
    collect(&step.tree, &mut services);
    services
        .into_iter()
        .map(|(path, service)| {
            let mut cx = Deploy {
                host,
                workdir: &step.workdir,
                path: &path,
                dry_run: false,
                subcomponents_changed: false,
                added_changed: &[],
                changed_roots: &changed_roots,
                diff: None,
                sink: &mut *sink,
                pending: None,
            };
            let result = match verb {
                ServiceVerb::Status => service
                    .status(&mut cx)
                    .map(|status| ServiceResult::Status { status }),
                ServiceVerb::Start => service.start(&mut cx).map(|did| changed(did, "started")),
                ServiceVerb::Stop => service.stop(&mut cx).map(|did| changed(did, "stopped")),
                ServiceVerb::Restart => service
                    .restart(&mut cx)
                    .map(|()| changed(true, "restarted")),
            };
            let outcome = ServiceOutcome {
                root: step.root.clone(),
                component: path.clone(),
                result: result.unwrap_or_else(|e| ServiceResult::Failed {
                    error: e.chain().map(|c| c.to_string()).collect(),
                }),
            };
            sink.event(crate::Event::Service {
                host: host.name.clone(),
                verb,
                outcome: outcome.clone(),
            });
            outcome
        })
        .collect()
}

fn changed(did: bool, action: &str) -> ServiceResult {
    if did {
        ServiceResult::Changed {
            action: action.to_string(),
        }
    } else {
        ServiceResult::Unchanged
    }
}

/// Every service of a tree with its component path, in converge (post-order) order.
fn collect<'a>(node: &'a Node, out: &mut Vec<(String, &'a dyn ServiceControl)>) {
    for child in &node.children {
        collect(child, out);
    }
    if let Some(service) = node.component.service() {
        out.push((node.path.clone(), service));
    }
}

/// Whether a step's tree holds any service.
pub fn has_services(plan: &Plan, step: usize) -> bool {
    !service_paths(plan, step).is_empty()
}

/// The component paths of a step's services, in converge order.
pub fn service_paths(plan: &Plan, step: usize) -> Vec<String> {
    let mut out = Vec::new();
    collect(&plan.steps()[step].tree, &mut out);
    out.into_iter().map(|(path, _)| path).collect()
}

/// The root components a verb runs on: the `requested` names, checked against `roots` (each
/// root component in the run's scope and whether it holds a service), or, when none are
/// requested, every root component with a service. In the order of `roots`, without
/// duplicates.
///
/// Unknown names (with a suggestion), named roots without a service, and a scope without any
/// service are configuration errors: nothing is contacted then.
pub fn select_roots(
    environment: &str,
    roots: &[(String, bool)],
    requested: &[String],
) -> Result<Vec<String>, ConfigError> {
    let with_service: Vec<&str> = roots
        .iter()
        .filter(|(_, service)| *service)
        .map(|(root, _)| root.as_str())
        .collect();
    let listing = || {
        if with_service.is_empty() {
            "no root component has a service: add a component of type `service` (see docs/components.md)".to_string()
        } else {
            format!(
                "root components with a service: {}",
                with_service.join(", ")
            )
        }
    };
    for name in requested {
        match roots.iter().find(|(root, _)| root == name) {
            None => {
                return Err(ConfigError::new(format!(
                    "unknown root component `{name}` in environment `{environment}`"
                ))
                .suggest(name, roots.iter().map(|(root, _)| root.as_str()))
                .hint(listing()));
            }
            Some((_, false)) => {
                return Err(
                    ConfigError::new(format!("root component `{name}` has no service"))
                        .hint(listing()),
                );
            }
            Some((_, true)) => {}
        }
    }
    if with_service.is_empty() {
        return Err(ConfigError::new(format!(
            "no root component of environment `{environment}` has a service"
        ))
        .hint("the `service` verbs act on components of type `service` (see docs/components.md)"));
    }
    let mut chosen: Vec<String> = Vec::new();
    for root in with_service {
        if (requested.is_empty() || requested.iter().any(|r| r == root))
            && !chosen.iter().any(|c| c == root)
        {
            chosen.push(root.to_string());
        }
    }
    Ok(chosen)
}
