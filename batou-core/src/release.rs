//! Releases: components that keep unpacked bundles beside a `current` link, and what the
//! operator's verbs and the automatic rollback do with them.
//!
//! The library's `release` component implements [`ReleaseControl`]; this module finds the
//! release of a step's tree ([`Component::release`](crate::Component::release)), lists its
//! releases, and rolls it back: switch `current`, then restart the services of every root
//! component that watches it (`restart_on`), which proves them healthy again.

use serde::{Deserialize, Serialize};

use crate::plan::Node;
use crate::{Deploy, Event, EventSink, Plan, ServiceOutcome, ServiceVerb};

/// One release on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseEntry {
    /// Its id: `<time>-<short digest>`.
    pub id: String,
    /// Whether `current` points at it.
    pub current: bool,
    /// When it was last made current (RFC 3339), if the host's history says.
    pub activated: Option<String>,
    /// Who made it current then (`user@host`), if the host's history says.
    pub by: Option<String>,
}

/// A component that keeps releases and can switch between them.
///
/// Each method gets a [`Deploy`] context (never a dry run) for its host and logging.
pub trait ReleaseControl {
    /// The releases on the host, oldest first.
    fn releases(&self, cx: &mut Deploy) -> anyhow::Result<Vec<ReleaseEntry>>;
    /// Switches `current` to `to`, or to the release that was current before the current
    /// one; returns the ids switched from and to (equal when nothing changed).
    fn roll_back(&self, cx: &mut Deploy, to: Option<&str>) -> anyhow::Result<(String, String)>;
}

/// What a rollback did on one host for one release root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackOutcome {
    /// The release's root component.
    pub root: String,
    /// The id `current` pointed at before, when it pointed anywhere.
    pub from: Option<String>,
    /// The id it points at now, when the switch happened.
    pub to: Option<String>,
    /// The restarts of the services that watch the release.
    pub services: Vec<ServiceOutcome>,
    /// Why the rollback failed (no release to go back to, a restart that was not healthy).
    pub error: Option<Vec<String>>,
}

impl RollbackOutcome {
    /// Whether the switch happened and every service is healthy on the release.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }
}

/// The steps whose tree holds a release.
pub fn release_steps(plan: &Plan) -> Vec<usize> {
    (0..plan.steps().len())
        .filter(|s| find(&plan.steps()[*s].tree).is_some())
        .collect()
}

/// The releases of `step`'s release on this host.
pub fn list_releases(
    plan: &mut Plan,
    step: usize,
    sink: &mut dyn EventSink,
) -> anyhow::Result<Vec<ReleaseEntry>> {
    let (step, host, _) = plan.step_with_host(step);
    let Some((path, release)) = find(&step.tree) else {
        anyhow::bail!("root component `{}` has no release", step.root);
    };
    let changed_roots = Default::default();
    let mut cx = Deploy {
        host,
        workdir: &step.workdir,
        path: &path,
        dry_run: false,
        subcomponents_changed: false,
        added_changed: &[],
        changed_roots: &changed_roots,
        diff: None,
        sink,
        pending: None,
    };
    release.releases(&mut cx)
}

/// Switches `step`'s release to `to` (or back to the release before the current one), then
/// restarts the services of the root components that watch it, which proves them healthy.
pub fn roll_back(
    plan: &mut Plan,
    step: usize,
    to: Option<&str>,
    sink: &mut dyn EventSink,
) -> RollbackOutcome {
    let root = plan.steps()[step].root.clone();
    let host_name = plan.steps()[step].host.clone();
    let switched = {
        let (s, host, _) = plan.step_with_host(step);
        match find(&s.tree) {
            None => Err(anyhow::anyhow!("root component `{root}` has no release")),
            Some((path, release)) => {
                let changed_roots = Default::default();
                let mut cx = Deploy {
                    host,
                    workdir: &s.workdir,
                    path: &path,
                    dry_run: false,
                    subcomponents_changed: false,
                    added_changed: &[],
                    changed_roots: &changed_roots,
                    diff: None,
                    sink: &mut *sink,
                    pending: None,
                };
                release.roll_back(&mut cx, to)
            }
        }
    };
    let (from, to) = match switched {
        Ok(ids) => ids,
        Err(e) => {
            return RollbackOutcome {
                root,
                from: None,
                to: None,
                services: Vec::new(),
                error: Some(e.chain().map(|c| c.to_string()).collect()),
            };
        }
    };
    let mut services = Vec::new();
    if from != to {
        for watcher in plan.watchers_of(step) {
            services.extend(crate::control_services(
                plan,
                watcher,
                ServiceVerb::Restart,
                sink,
            ));
        }
    }
    let failed: Vec<&ServiceOutcome> = services.iter().filter(|o| o.is_failed()).collect();
    let error = (!failed.is_empty()).then(|| {
        let names: Vec<&str> = failed.iter().map(|o| o.component.as_str()).collect();
        vec![format!(
            "release `{to}` of `{root}` on host `{host_name}` is not healthy either: {}",
            names.join(", ")
        )]
    });
    RollbackOutcome {
        root,
        from: Some(from),
        to: Some(to),
        services,
        error,
    }
}

/// After `failed` failed in this run: rolls back every release it watches that changed in
/// this run (its activation is what made the service unhealthy), and reports on the host
/// as "not healthy; rolled back to `<id>`", or why that was not possible.
///
/// Only a failure of one of the step's services counts (`failed_component`, the failing
/// component path): a component that fails before its service restarts says nothing about
/// the release's health.
pub fn roll_back_after_failure(
    plan: &mut Plan,
    failed: usize,
    failed_component: &str,
    sink: &mut dyn EventSink,
) -> Vec<RollbackOutcome> {
    if !crate::service_paths(plan, failed)
        .iter()
        .any(|p| p == failed_component)
    {
        return Vec::new();
    }
    let watched: Vec<usize> = plan
        .watched_by(failed)
        .into_iter()
        .filter(|w| plan.has_changed(*w) && find(&plan.steps()[*w].tree).is_some())
        .collect();
    let host = plan.steps()[failed].host.clone();
    let failed_root = plan.steps()[failed].root.clone();
    let mut outcomes = Vec::new();
    for step in watched {
        let outcome = roll_back(plan, step, None, sink);
        let message = match (&outcome.error, &outcome.to) {
            (None, Some(to)) => format!("not healthy; rolled back to {to}"),
            (Some(error), Some(to)) if outcome.from.as_deref() != Some(to) => {
                format!("not healthy; rolled back to {to}, {}", error.join(": "))
            }
            (Some(error), _) => format!("not healthy; not rolled back: {}", error.join(": ")),
            (None, None) => "not healthy".to_string(),
        };
        sink.event(Event::Failed {
            host: host.clone(),
            component: failed_root.clone(),
            error: vec![message],
        });
        outcomes.push(outcome);
    }
    outcomes
}

/// What a `releases` or `rollback` verb did for one release root on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseReport {
    /// The release's root component.
    pub root: String,
    /// The releases on the host after the verb, oldest first.
    pub releases: Vec<ReleaseEntry>,
    /// What the rollback did (the `rollback` verb only).
    pub rollback: Option<RollbackOutcome>,
    /// Why the releases could not be listed.
    pub error: Option<Vec<String>>,
}

impl ReleaseReport {
    /// Whether listing or rolling back failed.
    pub fn is_failed(&self) -> bool {
        self.error.is_some() || self.rollback.as_ref().is_some_and(|r| !r.succeeded())
    }
}

/// Runs the `releases` verb (`rollback: None`) or the `rollback` verb (`Some(to)`) on the
/// release roots of `host` named in `roots` (none: every one), in plan order: rolls back
/// first, then lists the releases, each as a `log` event of the root.
pub fn release_verb(
    plan: &mut Plan,
    host: &str,
    roots: &[String],
    rollback: Option<Option<&str>>,
    sink: &mut dyn EventSink,
) -> Vec<ReleaseReport> {
    let steps: Vec<usize> = plan
        .host_order(host)
        .into_iter()
        .filter(|s| find(&plan.steps()[*s].tree).is_some())
        .filter(|s| roots.is_empty() || roots.contains(&plan.steps()[*s].root))
        .collect();
    let mut reports = Vec::new();
    for step in steps {
        let root = plan.steps()[step].root.clone();
        let rolled = rollback.map(|to| roll_back(plan, step, to, sink));
        if let Some(r) = &rolled {
            let message = match (&r.error, &r.from, &r.to) {
                (None, Some(from), Some(to)) if from == to => format!("already at release {to}"),
                (None, Some(from), Some(to)) => format!("rolled back {from} -> {to}"),
                (Some(e), _, Some(to)) => format!("switched to {to}, but: {}", e.join(": ")),
                (Some(e), _, _) => format!("not rolled back: {}", e.join(": ")),
                (None, _, _) => "not rolled back".to_string(),
            };
            let event = if r.succeeded() {
                Event::Log {
                    host: host.to_string(),
                    component: root.clone(),
                    message,
                }
            } else {
                Event::Failed {
                    host: host.to_string(),
                    component: root.clone(),
                    error: vec![message],
                }
            };
            sink.event(event);
        }
        let (releases, error) = match list_releases(plan, step, sink) {
            Ok(list) => (list, None),
            Err(e) => (Vec::new(), Some(e.chain().map(|c| c.to_string()).collect())),
        };
        for r in &releases {
            let mut line = format!("release {}", r.id);
            if r.current {
                line.push_str(" (current)");
            }
            if let Some(at) = &r.activated {
                line.push_str(&format!(", activated {at}"));
            }
            if let Some(by) = &r.by {
                line.push_str(&format!(" by {by}"));
            }
            sink.event(Event::Log {
                host: host.to_string(),
                component: root.clone(),
                message: line,
            });
        }
        reports.push(ReleaseReport {
            root,
            releases,
            rollback: rolled,
            error,
        });
    }
    reports
}

/// The first release of a tree with its component path.
fn find(node: &Node) -> Option<(String, &dyn ReleaseControl)> {
    for child in &node.children {
        if let Some(found) = find(child) {
            return Some(found);
        }
    }
    node.component.release().map(|r| (node.path.clone(), r))
}
