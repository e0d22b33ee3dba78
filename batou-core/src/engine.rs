//! The converge engine: runs one host's steps of a plan on this machine.
//!
//! Sub-components converge first, in the order they were added; a component that needs an
//! update is updated and verified again. A failure stops the host: later steps are not
//! attempted, and the report says which components had already changed.

use std::time::Instant;

use crate::plan::Node;
use crate::{Deploy, Event, EventSink, Plan, Verdict};

/// How to converge.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvergeOptions {
    /// Verify only: report what would change, write nothing.
    pub dry_run: bool,
    /// Keep the files a step staged pending after it ends, so that the steps after it
    /// share their sync; the caller must [`Plan::flush_writes`] before it reports the step
    /// or the host done to anyone. Otherwise each step flushes before it ends.
    pub keep_writes_pending: bool,
}

/// What happened to one root component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RootOutcome {
    /// At least one of its components needed an update (in a dry run: would need one).
    Changed,
    /// Every one of its components was already converged.
    Unchanged,
    /// One of its components failed.
    Failed,
    /// It was not run: a dependency failed, the host failed or the run was interrupted.
    NotAttempted,
}

/// The outcome of converging one host.
#[derive(Debug, Clone)]
pub struct HostReport {
    /// The host that was converged.
    pub host: String,
    /// Root components in the order they were (or would have been) converged.
    pub roots: Vec<(String, RootOutcome)>,
    /// Every component path that changed (or would change), in order.
    pub changed_components: Vec<String>,
    /// The component path and cause chain of a failure.
    pub failure: Option<(String, Vec<String>)>,
    /// How long converging the host took.
    pub seconds: f64,
}

impl HostReport {
    /// Whether every attempted root converged.
    pub fn succeeded(&self) -> bool {
        self.failure.is_none()
    }

    /// Names of the root components with the given outcome.
    pub fn roots_with(&self, outcome: RootOutcome) -> Vec<String> {
        self.roots
            .iter()
            .filter(|(_, o)| *o == outcome)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// What converging one root component did.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// How the root component ended.
    pub outcome: RootOutcome,
    /// Component paths that changed (or would change), in order.
    pub changed: Vec<String>,
    /// The failing component path and cause chain.
    pub failure: Option<(String, Vec<String>)>,
    /// What the step's components created (missing before their `update`, there after it),
    /// in the order they created it; also after a failure. Empty in a dry run.
    pub created: Vec<crate::Owned>,
}

/// Converges one step of a plan (a root component and its sub-components).
pub fn converge_step(
    plan: &mut Plan,
    step: usize,
    options: ConvergeOptions,
    sink: &mut dyn EventSink,
) -> StepReport {
    let started = Instant::now();
    let changed_roots = plan.take_changed_roots(step);
    let index = step;
    let (step, host_data, pending) = plan.step_with_host(step);
    let staged_before = pending.len();
    let host = step.host.clone();
    let root = step.root.clone();
    sink.event(Event::StepStarted {
        host: host.clone(),
        component: step.root.clone(),
    });
    let mut changed = Vec::new();
    let mut created = Vec::new();
    let mut run = Run {
        host: &host,
        host_data,
        workdir: &step.workdir,
        options,
        sink: &mut *sink,
        changed: &mut changed,
        created: &mut created,
        changed_roots: &changed_roots,
        pending,
    };
    // A root's first child is its Workdir, which the root did not add itself.
    let mut result = run.converge(&mut step.tree, 1);
    if result.is_err() {
        // What the failed step staged is dropped; what the steps before it staged lands.
        run.pending.discard_from(staged_before);
    }
    if !options.keep_writes_pending || result.is_err() {
        let flushed = run.pending.flush();
        if let (Err(error), Ok(_)) = (flushed, &result) {
            result = Err(Failure {
                path: step.root.clone(),
                error: error.context("cannot make the written files durable"),
            });
        }
    }
    plan.record_changed(index, matches!(result, Ok(true)), changed_roots);
    let report = match result {
        Ok(any) => StepReport {
            outcome: if any {
                RootOutcome::Changed
            } else {
                RootOutcome::Unchanged
            },
            changed,
            failure: None,
            created,
        },
        Err(failure) => {
            let chain: Vec<String> = failure.error.chain().map(|c| c.to_string()).collect();
            sink.event(Event::Failed {
                host: host.clone(),
                component: failure.path.clone(),
                error: chain.clone(),
            });
            StepReport {
                outcome: RootOutcome::Failed,
                changed,
                failure: Some((failure.path, chain)),
                created,
            }
        }
    };
    sink.event(Event::StepFinished {
        host,
        component: root,
        outcome: report.outcome,
        dry_run: options.dry_run,
        seconds: started.elapsed().as_secs_f64(),
    });
    report
}

/// Converges the steps of `host` in plan order, reporting events to `sink` as they happen.
///
/// A failing step stops the host: its later steps are not attempted.
pub fn converge(
    plan: &mut Plan,
    host: &str,
    options: ConvergeOptions,
    sink: &mut dyn EventSink,
) -> HostReport {
    let started = Instant::now();
    sink.event(Event::HostStarted {
        host: host.to_string(),
        environment: plan.environment.clone(),
        dry_run: options.dry_run,
    });
    let mut report = HostReport {
        host: host.to_string(),
        roots: Vec::new(),
        changed_components: Vec::new(),
        failure: None,
        seconds: 0.0,
    };
    for step in plan.host_order(host) {
        let root = plan.steps()[step].root.clone();
        if report.failure.is_some() {
            report.roots.push((root, RootOutcome::NotAttempted));
            continue;
        }
        let step_report = converge_step(plan, step, options, sink);
        report.changed_components.extend(step_report.changed);
        report.failure = step_report.failure;
        report.roots.push((root, step_report.outcome));
    }
    report.seconds = started.elapsed().as_secs_f64();
    sink.event(report.finished_event(options.dry_run));
    report
}

impl HostReport {
    /// The `host_finished` event summarising this report.
    pub fn finished_event(&self, dry_run: bool) -> Event {
        Event::HostFinished {
            host: self.host.clone(),
            dry_run,
            changed: self.roots_with(RootOutcome::Changed),
            unchanged: self.roots_with(RootOutcome::Unchanged),
            failed: self.roots_with(RootOutcome::Failed),
            not_attempted: self.roots_with(RootOutcome::NotAttempted),
            seconds: self.seconds,
        }
    }
}

struct Failure {
    path: String,
    error: anyhow::Error,
}

struct Run<'a> {
    host: &'a str,
    host_data: &'a crate::Host,
    workdir: &'a std::path::Path,
    options: ConvergeOptions,
    sink: &'a mut dyn EventSink,
    changed: &'a mut Vec<String>,
    created: &'a mut Vec<crate::Owned>,
    changed_roots: &'a std::collections::BTreeSet<String>,
    pending: &'a mut crate::PendingWrites,
}

impl Run<'_> {
    /// Converges a node after its children; returns whether anything in it changed.
    ///
    /// The first `implicit` children were added by the engine, not by the node's component.
    fn converge(&mut self, node: &mut Node, implicit: usize) -> Result<bool, Failure> {
        let mut children_changed = Vec::with_capacity(node.children.len());
        for child in &mut node.children {
            children_changed.push(self.converge(child, 0)?);
        }
        let sub_changed = children_changed.contains(&true);
        let added_changed = children_changed.get(implicit..).unwrap_or_default();
        let fail = |error: anyhow::Error| Failure {
            path: node.path.clone(),
            error,
        };
        if node.component.reads_written_files() && !self.pending.is_empty() {
            self.pending
                .flush()
                .map_err(|e| e.context("cannot make the files written before it durable"))
                .map_err(fail)?;
        }
        let (verdict, diff) = self
            .verify(node, sub_changed, added_changed)
            .map_err(fail)?;
        let Verdict::NeedsUpdate(reason) = verdict else {
            return Ok(sub_changed);
        };
        self.sink.event(Event::Changed {
            host: self.host.to_string(),
            component: node.path.clone(),
            reason,
            dry_run: self.options.dry_run,
        });
        if let Some(diff) = diff {
            self.sink.event(Event::Diff {
                host: self.host.to_string(),
                component: node.path.clone(),
                diff,
            });
        }
        self.changed.push(node.path.clone());
        if self.options.dry_run {
            return Ok(true);
        }
        let mut cx = Deploy {
            host: self.host_data,
            workdir: self.workdir,
            path: &node.path,
            dry_run: false,
            subcomponents_changed: sub_changed,
            added_changed,
            changed_roots: self.changed_roots,
            diff: None,
            sink: &mut *self.sink,
            pending: Some(&mut *self.pending),
        };
        // What is missing now and there after the update was created by it, even when the
        // update then fails half way.
        let missing: Vec<crate::Owned> = node
            .component
            .owned()
            .into_iter()
            .filter(|o| !o.exists())
            .collect();
        let updated = node.component.update(&mut cx);
        // A file in the batch of pending writes is there once the batch is flushed.
        let pending = &*self.pending;
        self.created.extend(
            missing
                .into_iter()
                .filter(|o| o.exists() || pending.temp_of(o.marker()).is_some()),
        );
        updated.map_err(|error| Failure {
            path: node.path.clone(),
            error,
        })?;
        // Sub-component changes were handled by this update; verify the result alone.
        let (again, _) = self.verify(node, false, &[]).map_err(|error| Failure {
            path: node.path.clone(),
            error,
        })?;
        if let Verdict::NeedsUpdate(reason) = again {
            return Err(Failure {
                path: node.path.clone(),
                error: anyhow::anyhow!("component did not converge: still {reason} after update"),
            });
        }
        Ok(true)
    }

    fn verify(
        &mut self,
        node: &Node,
        sub_changed: bool,
        added_changed: &[bool],
    ) -> anyhow::Result<(Verdict, Option<String>)> {
        let mut cx = Deploy {
            host: self.host_data,
            workdir: self.workdir,
            path: &node.path,
            dry_run: self.options.dry_run,
            subcomponents_changed: sub_changed,
            added_changed,
            changed_roots: self.changed_roots,
            diff: None,
            sink: &mut *self.sink,
            pending: Some(&mut *self.pending),
        };
        let verdict = node.component.verify(&mut cx)?;
        Ok((verdict, cx.diff))
    }
}
