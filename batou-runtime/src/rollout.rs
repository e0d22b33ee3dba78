//! The rules of a rolling deploy, for the scheduler: which batch a rolled host belongs to,
//! when the next batch may start, when the balancer drains and undrains, and when the
//! failure budget stops the rollout. Pure and synchronous like the scheduler, which asks
//! `Rollout::advance` what to do whenever something changed and carries it out.
//!
//! A batch goes through: drain (the balancer's root component converges with the batch's
//! hosts out of rotation), converge (every step of the batch's hosts, dependencies and
//! `jobs` as usual), undrain (the balancer converges with the healthy ones back). A rolled
//! host that failed stays drained and counts against `max_failed`; when more rolled hosts
//! failed than it allows, no new batch starts. Hosts outside the rollout deploy as today.
//! The `[rollout]` table itself is `batou_core::rollout`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use batou_core::protocol::{HostJob, PlanStep};
use batou_core::rollout::{Hook, RolloutSpec, Size, StepRollout};
use batou_core::{
    ConfigError, ConvergeOptions, Event, EventSink, Plan, Registry, RootOutcome, StepReport,
};

/// A rollout resolved against a plan and the hosts of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPlan {
    /// The rolled hosts of the run, batch by batch, each sorted by name.
    pub batches: Vec<Vec<String>>,
    /// How many rolled hosts may fail before no new batch starts.
    pub max_failed: usize,
    /// The balancer's steps (one per host running it), converged again around each batch.
    pub balancer: Vec<usize>,
    /// Every rolled host of the environment (also those outside `--hosts`), sorted: the
    /// rotation the balancer starts from.
    pub rotation: Vec<String>,
    /// How long to wait after a drain before the batch converges.
    pub drain_wait: Duration,
}

impl RolloutPlan {
    /// Resolves `spec` against the plan's `steps` for a run of `hosts`.
    ///
    /// Errors (before any host is contacted): a balancer host outside the run, a balancer
    /// that waits for a rolled host's step (it could never drain the first batch).
    pub fn resolve(
        spec: &RolloutSpec,
        steps: &[PlanStep],
        hosts: &[String],
    ) -> Result<RolloutPlan, ConfigError> {
        let balancer_hosts: BTreeSet<&str> = steps
            .iter()
            .filter(|s| spec.balancer.as_ref() == Some(&s.root))
            .map(|s| s.host.as_str())
            .collect();
        let rotation: BTreeSet<&str> = steps
            .iter()
            .filter(|s| match &spec.component {
                Some(c) => &s.root == c,
                None => !balancer_hosts.contains(s.host.as_str()),
            })
            .map(|s| s.host.as_str())
            .collect();
        let rolled: Vec<String> = rotation
            .iter()
            .filter(|h| hosts.iter().any(|r| r == *h))
            .map(|h| h.to_string())
            .collect();
        let balancer: Vec<usize> = steps
            .iter()
            .enumerate()
            .filter(|(_, s)| spec.balancer.as_ref() == Some(&s.root))
            .map(|(i, _)| i)
            .collect();
        for &b in &balancer {
            let host = &steps[b].host;
            if !hosts.contains(host) {
                return Err(ConfigError::new(format!(
                    "the rollout's balancer `{}` runs on host `{host}`, which is not in this run",
                    steps[b].root
                ))
                .hint(format!(
                    "add `{host}` to `--hosts`: it drains and undrains the rolled hosts"
                )));
            }
            if let Some(dep) = waits_for(steps, b, &rotation) {
                return Err(ConfigError::new(format!(
                    "the rollout's balancer `{}: {}` waits for `{}: {}`, a rolled host's step",
                    host, steps[b].root, steps[dep].host, steps[dep].root
                ))
                .hint("the balancer drains the first batch before any rolled host converges: it must not require their resources"));
            }
        }
        Ok(RolloutPlan {
            batches: batches(&rolled, &spec.batch),
            max_failed: spec.max_failed.of(rolled.len()),
            balancer,
            rotation: rotation.into_iter().map(str::to_string).collect(),
            drain_wait: spec.drain_wait(),
        })
    }
}

/// Splits `hosts` into batches of `sizes` (the last size repeats; each at least 1).
pub fn batches(hosts: &[String], sizes: &[Size]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = hosts;
    while !rest.is_empty() {
        let size = sizes
            .get(out.len())
            .or(sizes.last())
            .copied()
            .unwrap_or(Size::Count(1))
            .of(hosts.len())
            .clamp(1, rest.len());
        let (batch, more) = rest.split_at(size);
        out.push(batch.to_vec());
        rest = more;
    }
    out
}

/// A step on which step `step` waits, directly or not, that runs on one of `hosts`.
fn waits_for(steps: &[PlanStep], step: usize, hosts: &BTreeSet<&str>) -> Option<usize> {
    let mut seen = BTreeSet::new();
    let mut todo = steps[step].after.clone();
    while let Some(dep) = todo.pop() {
        if !seen.insert(dep) {
            continue;
        }
        if hosts.contains(steps[dep].host.as_str()) {
            return Some(dep);
        }
        todo.extend(steps[dep].after.iter().copied());
    }
    None
}

/// Converges the balancer's step `step` of `job` for a drain or undrain: the job configured
/// again with only `in_rotation` of the rolled hosts in rotation (what its templates see as
/// `rollout.in_rotation`). Runs on the balancer's agent.
pub(crate) fn converge_hook(
    job: &HostJob,
    registry: &Registry,
    base_dir: &Path,
    (step, in_rotation): (usize, &[String]),
    options: ConvergeOptions,
    sink: &mut dyn EventSink,
) -> StepReport {
    match Plan::from_job_in_rotation(job, registry, base_dir, Some(in_rotation)) {
        Ok(mut plan) => batou_core::converge_step(&mut plan, step, options, sink),
        Err(e) => {
            let root = job.steps[step].root.clone();
            let error: Vec<String> = anyhow::Error::new(e)
                .chain()
                .map(|c| c.to_string())
                .collect();
            sink.event(Event::Failed {
                host: job.host.name.clone(),
                component: root.clone(),
                error: error.clone(),
            });
            StepReport {
                outcome: RootOutcome::Failed,
                changed: Vec::new(),
                failure: Some((root, error)),
                created: Vec::new(),
            }
        }
    }
}

/// Predicts `roots` of `job` in order, as a dry run would, on a configure of its own (so
/// that the session's plan records no change): the roots that would change, or whose
/// prediction failed. Runs on a rolled host's agent before its batch is drained.
pub(crate) fn predict(
    job: &HostJob,
    registry: &Registry,
    base_dir: &Path,
    roots: &[String],
) -> Vec<String> {
    let Ok(mut plan) = Plan::from_job(job, registry, base_dir) else {
        // The real converge reports why; draining first is the safe side.
        return roots.to_vec();
    };
    let options = ConvergeOptions {
        dry_run: true,
        ..Default::default()
    };
    let mut changed = Vec::new();
    for root in roots {
        let Some(step) = plan.steps().iter().position(|s| &s.root == root) else {
            changed.push(root.clone());
            continue;
        };
        let report = batou_core::converge_step(&mut plan, step, options, &mut |_: Event| {});
        if report.outcome != RootOutcome::Unchanged {
            changed.push(root.clone());
        }
    }
    changed
}

/// What the scheduler knows that the rollout needs, at the moment it asks.
#[derive(Debug, Clone, Default)]
pub(crate) struct World {
    /// Hosts on which no step will run any more.
    pub(crate) finished: BTreeSet<String>,
    /// Whether every balancer host is prepared, idle and done with its own steps.
    pub(crate) balancer_idle: bool,
    /// Whether a balancer host failed or was never prepared.
    pub(crate) balancer_failed: bool,
    /// Whether the run stopped starting steps (a failure outside the budget, an interrupt).
    pub(crate) stopped: bool,
}

/// What the rollout asks the scheduler to do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Move {
    /// Emit an event.
    Emit(Event),
    /// Predict whether `host`'s steps would change (its batch is about to be drained).
    Predict {
        /// The rolled host.
        host: String,
    },
    /// Converge the balancer's step `step` again for a drain or undrain.
    Hook {
        /// The balancer's step.
        step: usize,
        /// The batch, the hook and the hosts in rotation.
        rollout: StepRollout,
    },
    /// These rolled hosts will never start: their steps are not run, for this reason.
    NotStarted {
        /// The hosts.
        hosts: Vec<String>,
        /// Why, starting with "not started".
        reason: String,
    },
    /// The budget is exceeded: the run stops as after any failure.
    StopRun,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Batch `n` has not started.
    Before(usize),
    /// Batch `n`'s hosts predict whether they would change.
    Predicting(usize),
    Draining(usize),
    /// Batch `n`'s hosts converge.
    Open(usize),
    Undraining(usize),
    Over,
}

/// The state of a rollout during a run.
#[derive(Debug)]
pub(crate) struct Rollout {
    plan: RolloutPlan,
    batch_of: BTreeMap<String, usize>,
    phase: Phase,
    failed: BTreeSet<String>,
    drained: BTreeSet<String>,
    hooks: BTreeSet<usize>,
    hook_failed: bool,
    /// Hosts of the current batch still predicting, and those that would change.
    predicting: BTreeSet<String>,
    changing: BTreeSet<String>,
    /// The rolled hosts in rotation as the balancer last converged.
    in_rotation: Vec<String>,
}

impl Rollout {
    pub(crate) fn new(plan: RolloutPlan) -> Rollout {
        let batch_of = plan
            .batches
            .iter()
            .enumerate()
            .flat_map(|(i, b)| b.iter().map(move |h| (h.clone(), i)))
            .collect();
        Rollout {
            batch_of,
            phase: Phase::Before(0),
            failed: BTreeSet::new(),
            drained: BTreeSet::new(),
            hooks: BTreeSet::new(),
            hook_failed: false,
            predicting: BTreeSet::new(),
            changing: BTreeSet::new(),
            in_rotation: plan.rotation.clone(),
            plan,
        }
    }

    /// Whether `host` is a rolled host of this run.
    pub(crate) fn rolls(&self, host: &str) -> bool {
        self.batch_of.contains_key(host)
    }

    /// What a step of `host` tells its agent: its batch; `None` outside the rollout.
    pub(crate) fn step_rollout(&self, host: &str) -> Option<StepRollout> {
        self.batch_of.get(host).map(|b| StepRollout {
            batch: b + 1,
            batches: self.plan.batches.len(),
            hook: None,
            in_rotation: Vec::new(),
        })
    }

    /// Whether `host` may start a step now: hosts outside the rollout always may, rolled
    /// hosts while their batch converges.
    pub(crate) fn may_start(&self, host: &str) -> bool {
        match self.batch_of.get(host) {
            None => true,
            Some(b) => self.phase == Phase::Open(*b),
        }
    }

    /// Whether `host` is a balancer host that the rollout still needs.
    pub(crate) fn holds(&self, host: &str, steps: &[PlanStep]) -> bool {
        self.phase != Phase::Over && self.plan.balancer.iter().any(|b| steps[*b].host == host)
    }

    /// The balancer's steps.
    pub(crate) fn balancer(&self) -> &[usize] {
        &self.plan.balancer
    }

    /// Whether `step` is a balancer's step running a drain or an undrain.
    pub(crate) fn is_hook(&self, step: usize) -> bool {
        self.hooks.contains(&step)
    }

    /// A rolled host failed: it counts against the budget and stays drained.
    pub(crate) fn host_failed(&mut self, host: &str) {
        if self.rolls(host) {
            self.failed.insert(host.to_string());
        }
    }

    /// Whether `host` is predicting.
    pub(crate) fn is_predicting(&self, host: &str) -> bool {
        self.predicting.contains(host)
    }

    /// `host` predicted its steps: whether any would change (a failed prediction counts
    /// as a change).
    pub(crate) fn predicted(&mut self, host: &str, would_change: bool) {
        self.predicting.remove(host);
        if would_change {
            self.changing.insert(host.to_string());
        }
    }

    /// A drain or undrain ended; `ok` says whether the balancer converged.
    pub(crate) fn hook_done(&mut self, step: usize, ok: bool) {
        self.hooks.remove(&step);
        if !ok {
            self.hook_failed = true;
        }
    }

    /// The next moves, given the run's state, and whether the rollout moved on at all
    /// (it may move on without a move: a batch that needs no undrain).
    pub(crate) fn advance(&mut self, world: &World, steps: &[PlanStep]) -> (Vec<Move>, bool) {
        let before = self.phase;
        let moves = self.next_moves(world, steps);
        let moved = !moves.is_empty() || self.phase != before;
        (moves, moved)
    }

    fn next_moves(&mut self, world: &World, steps: &[PlanStep]) -> Vec<Move> {
        let mut moves = Vec::new();
        let batches = self.plan.batches.len();
        match self.phase {
            Phase::Over => {}
            Phase::Before(b) if b >= batches => self.phase = Phase::Over,
            Phase::Before(b) => {
                if world.stopped {
                    self.give_up((b, b), None, "not started: the deploy stopped", &mut moves);
                } else if self.failed.len() > self.plan.max_failed {
                    let reason = self.over_budget();
                    self.give_up(
                        (b, b),
                        Some(reason.clone()),
                        &format!("not started: the rollout stopped: {reason}"),
                        &mut moves,
                    );
                    moves.push(Move::StopRun);
                } else if !self.plan.balancer.is_empty() && world.balancer_failed {
                    let reason = "the balancer failed".to_string();
                    self.give_up(
                        (b, b),
                        Some(reason),
                        "not started: the rollout stopped: the balancer failed",
                        &mut moves,
                    );
                } else if self.plan.balancer.is_empty() || world.balancer_idle {
                    let hosts = self.plan.batches[b].clone();
                    moves.push(Move::Emit(Event::RolloutBatch {
                        batch: b + 1,
                        batches,
                        hosts: hosts.clone(),
                        failed: self.failed.len(),
                        max_failed: self.plan.max_failed,
                    }));
                    if self.plan.balancer.is_empty() {
                        self.phase = Phase::Open(b);
                    } else {
                        // Only hosts that would change leave the rotation.
                        self.changing.clear();
                        for host in hosts.iter().filter(|h| !world.finished.contains(*h)) {
                            self.predicting.insert(host.clone());
                            moves.push(Move::Predict { host: host.clone() });
                        }
                        self.phase = Phase::Predicting(b);
                    }
                }
            }
            Phase::Predicting(b) if self.predicting.is_empty() && world.stopped => {
                self.give_up(
                    (b + 1, b),
                    None,
                    "not started: the deploy stopped",
                    &mut moves,
                );
            }
            Phase::Predicting(b) if self.predicting.is_empty() => {
                let targets: Vec<String> = self.changing.iter().cloned().collect();
                self.drained.extend(targets.iter().cloned());
                if self.hook(b, Hook::Drain, targets, steps, &mut moves) {
                    self.phase = Phase::Draining(b);
                } else {
                    self.phase = Phase::Open(b);
                }
            }
            Phase::Draining(b) if self.hooks.is_empty() => {
                if self.hook_failed {
                    self.give_up(
                        (b + 1, b),
                        Some("draining a batch from the balancer failed".into()),
                        "not started: the rollout stopped: draining a batch from the balancer failed",
                        &mut moves,
                    );
                } else {
                    self.phase = Phase::Open(b);
                }
            }
            Phase::Open(b) => {
                if self.plan.batches[b]
                    .iter()
                    .all(|h| world.finished.contains(h))
                {
                    if self.plan.balancer.is_empty() {
                        self.phase = Phase::Before(b + 1);
                    } else {
                        let back: Vec<String> = self.plan.batches[b]
                            .iter()
                            .filter(|h| self.drained.contains(*h) && !self.failed.contains(*h))
                            .cloned()
                            .collect();
                        for h in &back {
                            self.drained.remove(h);
                        }
                        // Failed hosts stay drained (or leave the rotation now); nothing
                        // else to do when the rotation is as the balancer has it.
                        if self.hook(b, Hook::Undrain, back, steps, &mut moves) {
                            self.phase = Phase::Undraining(b);
                        } else {
                            self.phase = Phase::Before(b + 1);
                        }
                    }
                }
            }
            Phase::Undraining(b) if self.hooks.is_empty() => {
                if self.hook_failed {
                    self.give_up(
                        (b + 1, b + 1),
                        Some("undraining a batch from the balancer failed".into()),
                        "not started: the rollout stopped: undraining a batch from the balancer failed",
                        &mut moves,
                    );
                } else {
                    self.phase = Phase::Before(b + 1);
                }
            }
            Phase::Predicting(_) | Phase::Draining(_) | Phase::Undraining(_) => {}
        }
        moves
    }

    /// "2 rolled hosts failed (app1, app2), `max_failed` allows 1".
    fn over_budget(&self) -> String {
        let n = self.failed.len();
        let noun = if n == 1 { "host" } else { "hosts" };
        let names: Vec<&str> = self.failed.iter().map(String::as_str).collect();
        format!(
            "{n} rolled {noun} failed ({}), `max_failed` allows {}",
            names.join(", "),
            self.plan.max_failed
        )
    }

    /// Ends the rollout after batch `last` (counted from 1) started: the hosts of batch
    /// index `from` and later never start. With a `reason`, the rollout says why it stopped
    /// (`rollout_stopped`).
    fn give_up(
        &mut self,
        (last, from): (usize, usize),
        reason: Option<String>,
        not_started: &str,
        moves: &mut Vec<Move>,
    ) {
        let rest: Vec<String> = self
            .plan
            .batches
            .iter()
            .skip(from)
            .flatten()
            .cloned()
            .collect();
        if let Some(reason) = reason {
            moves.push(Move::Emit(Event::RolloutStopped {
                batch: last,
                batches: self.plan.batches.len(),
                failed: self.failed.iter().cloned().collect(),
                max_failed: self.plan.max_failed,
                not_attempted: rest.clone(),
                reason,
            }));
        }
        if !rest.is_empty() {
            moves.push(Move::NotStarted {
                hosts: rest,
                reason: not_started.to_string(),
            });
        }
        self.phase = Phase::Over;
    }

    /// Converges every balancer step again with the drained and the failed hosts out of
    /// rotation; `false` (and nothing to do) when the rotation would not change.
    fn hook(
        &mut self,
        b: usize,
        hook: Hook,
        targets: Vec<String>,
        steps: &[PlanStep],
        moves: &mut Vec<Move>,
    ) -> bool {
        let in_rotation: Vec<String> = self
            .plan
            .rotation
            .iter()
            .filter(|h| !self.drained.contains(*h) && !self.failed.contains(*h))
            .cloned()
            .collect();
        if in_rotation == self.in_rotation {
            return false;
        }
        self.in_rotation = in_rotation.clone();
        for &step in &self.plan.balancer {
            moves.push(Move::Emit(Event::RolloutHook {
                host: steps[step].host.clone(),
                component: steps[step].root.clone(),
                batch: b + 1,
                hook,
                targets: targets.clone(),
                in_rotation: in_rotation.clone(),
            }));
            moves.push(Move::Hook {
                step,
                rollout: StepRollout {
                    batch: b + 1,
                    batches: self.plan.batches.len(),
                    hook: Some(hook),
                    in_rotation: in_rotation.clone(),
                },
            });
            self.hooks.insert(step);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn batches_take_counts_and_percentages_and_repeat_the_last_size() {
        let hosts = names(&["a", "b", "c", "d", "e"]);
        let sizes = |s: &[&str]| -> Vec<Size> {
            s.iter().map(|t| Size::parse(t, false).unwrap()).collect()
        };
        assert_eq!(
            batches(&hosts, &sizes(&["1", "25%", "100%"])),
            [names(&["a"]), names(&["b", "c"]), names(&["d", "e"])]
        );
        assert_eq!(
            batches(&hosts, &sizes(&["2"])),
            [names(&["a", "b"]), names(&["c", "d"]), names(&["e"])]
        );
        assert_eq!(
            batches(&hosts, &sizes(&["1%"])).len(),
            5,
            "at least one host each"
        );
        assert!(batches(&[], &sizes(&["1"])).is_empty());
    }

    fn step(host: &str, root: &str, after: &[usize]) -> PlanStep {
        PlanStep {
            host: host.into(),
            root: root.into(),
            after: after.to_vec(),
            after_keys: BTreeMap::new(),
        }
    }

    #[test]
    fn resolving_finds_the_rolled_hosts_and_refuses_a_balancer_that_waits_for_them() {
        let steps = [
            step("app1", "app", &[]),
            step("app2", "app", &[]),
            step("app3", "app", &[]),
            step("lb", "upstreams", &[]),
            step("db", "db", &[]),
        ];
        let spec = RolloutSpec {
            component: Some("app".into()),
            batch: vec![Size::Count(2)],
            max_failed: Size::Percent(50),
            balancer: Some("upstreams".into()),
            drain_wait_ms: 100,
        };
        let all = names(&["app1", "app2", "app3", "db", "lb"]);
        let plan = RolloutPlan::resolve(&spec, &steps, &all).unwrap();
        assert_eq!(plan.batches, [names(&["app1", "app2"]), names(&["app3"])]);
        assert_eq!(plan.max_failed, 2, "50% of 3, rounded up");
        assert_eq!(plan.balancer, [3]);
        // `--hosts app3,lb`: app1 and app2 stay in rotation, untouched.
        let plan = RolloutPlan::resolve(&spec, &steps, &names(&["app3", "lb"])).unwrap();
        assert_eq!(plan.batches, [names(&["app3"])]);
        assert_eq!(plan.rotation, names(&["app1", "app2", "app3"]));
        let err = RolloutPlan::resolve(&spec, &steps, &names(&["app3"])).unwrap_err();
        assert!(
            err.to_string()
                .contains("host `lb`, which is not in this run"),
            "{err}"
        );
        // Without `component`: every host but the balancer's.
        let spec2 = RolloutSpec {
            component: None,
            ..spec.clone()
        };
        let plan = RolloutPlan::resolve(&spec2, &steps, &all).unwrap();
        assert_eq!(plan.rotation, names(&["app1", "app2", "app3", "db"]));
        let mut waiting = steps.to_vec();
        waiting[3].after = vec![4];
        waiting[4].after = vec![0];
        let err = RolloutPlan::resolve(&spec, &waiting, &all).unwrap_err();
        assert!(err.to_string().contains("waits for `app1: app`"), "{err}");
    }
}
