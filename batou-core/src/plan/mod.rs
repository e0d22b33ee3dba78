//! The plan: every host's configured root components, ordered by the resources they share.
//!
//! Building a plan configures every (host, root component) step of the environment once, in
//! rounds until all `require`s are satisfied and stable (`rounds.rs`), then orders the steps
//! as a DAG (`order.rs`: provider before requirer, otherwise the environment's order). All of
//! it happens before any host is touched; every problem is a [`ConfigError`] with its place.
//! What crosses to an agent, and how an agent configures it again, is in `job.rs`; attribute
//! values and the checks and rendering they go through are in `attributes.rs`.

mod attributes;
mod job;
mod order;
mod rounds;
mod step;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::environment::{Environment, Host, MergedAttributes};
use crate::error::ConfigError;
use crate::plan::attributes::{Attributes, check_unassigned};
use crate::plan::order::order_steps;
use crate::plan::rounds::{Context, Slot, configure_slots};
use crate::project::Project;
use crate::registry::Registry;
use crate::resources::{Edge, Resources};
use crate::secrets::{SecretFiles, SecretKeys};
use crate::template::Templates;

pub(crate) use step::Node;
pub use step::Step;

/// The message of the error a build ends with once it kept its errors (never shown: the
/// kept errors are).
const KEPT: &str = "the plan has configuration errors";

/// Where a plan's configuration errors go: the first ends the build ([`Plan::build`]), or
/// each is kept and the build goes on without what failed ([`Plan::check`]).
pub(crate) struct Errors(Option<std::cell::RefCell<Vec<ConfigError>>>);

impl Errors {
    /// The first error ends the build.
    pub(crate) fn first() -> Errors {
        Errors(None)
    }

    fn keep() -> Errors {
        Errors(Some(std::cell::RefCell::new(Vec::new())))
    }

    /// `Err(err)` when the first error ends the build; otherwise keeps it, and the caller
    /// goes on without what failed.
    pub(crate) fn report(&self, err: ConfigError) -> Result<(), ConfigError> {
        match &self.0 {
            None => Err(err),
            Some(kept) => {
                kept.borrow_mut().push(err);
                Ok(())
            }
        }
    }

    /// The error that ends a build whose errors were kept.
    pub(crate) fn kept() -> ConfigError {
        ConfigError::new(KEPT)
    }

    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|k| k.borrow().is_empty())
    }

    fn take(self) -> Vec<ConfigError> {
        self.0.map(|k| k.into_inner()).unwrap_or_default()
    }
}

/// The ordered steps of an environment.
pub struct Plan {
    /// The environment the plan is for.
    pub environment: String,
    steps: Vec<Step>,
    order: Vec<usize>,
    hosts: BTreeMap<String, Host>,
    base_dir: String,
    allow_paths: Vec<String>,
    resources: Resources,
    project: Project,
    secret_files: Arc<SecretFiles>,
    /// The bundles the plan's release components asked for.
    bundles: Arc<crate::bundle::Bundles>,
    /// Every secret string of the environment with its name (empty on agents).
    secret_values: Vec<(String, String)>,
    /// The steps that changed (or, in a dry run, would change) so far in this run.
    changed: std::collections::BTreeSet<usize>,
    /// The names of the changed steps' roots, by host.
    changed_roots: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// The environment's template syntax, which jobs carry to agents.
    syntax: crate::TemplateSyntax,
    /// The hosts' facts as planned (only those gathered), which jobs carry to agents.
    facts: BTreeMap<String, crate::Facts>,
    /// The hosts whose facts a configure read.
    fact_reads: std::collections::BTreeSet<String>,
    /// Files written by the steps converged so far that are not yet durable and visible.
    writes: crate::PendingWrites,
    /// The environment's `[rollout]`.
    rollout: Option<crate::rollout::RolloutSpec>,
    /// What the balancer's host job carries of the rollout (with a balancer only).
    job_rollout: Option<crate::rollout::JobRollout>,
}

impl Plan {
    /// Configures every step of `environment` and orders them.
    ///
    /// `base_dir` is the environment's base directory as resolved for this run; root
    /// components work in `<base_dir>/work/<name>` and may change only paths below `base_dir`
    /// and the environment's `allow_paths`.
    pub fn build(
        environment: &Environment,
        registry: &Registry,
        project: &Project,
        base_dir: &Path,
    ) -> Result<Plan, ConfigError> {
        Self::build_with_facts(
            environment,
            registry,
            project,
            base_dir,
            &crate::FactsInput::default(),
        )
    }

    /// Like [`Plan::build`], with hosts' platform facts: those in `facts.facts` as gathered,
    /// the others unknown. Every host whose facts a configure read is recorded in
    /// `facts.reads` (also when building fails), so that the caller can gather them and
    /// build again.
    pub fn build_with_facts(
        environment: &Environment,
        registry: &Registry,
        project: &Project,
        base_dir: &Path,
        facts: &crate::FactsInput,
    ) -> Result<Plan, ConfigError> {
        Self::build_reporting(
            environment,
            registry,
            project,
            base_dir,
            facts,
            &Errors::first(),
        )
    }

    /// Every configuration error of `environment`'s plan, not just the first: what
    /// [`Plan::build_with_facts`] would refuse, as far as configuring can go. A root
    /// component whose attributes, creation or configure fail is left out and the others are
    /// configured; a step that requires what a failed one would have provided is reported as
    /// unsatisfied, with a hint saying so. Ordering (cycles) is checked only when every step
    /// configured. Empty when the plan builds.
    pub fn check(
        environment: &Environment,
        registry: &Registry,
        project: &Project,
        base_dir: &Path,
        facts: &crate::FactsInput,
    ) -> Vec<ConfigError> {
        let errors = Errors::keep();
        let result =
            Self::build_reporting(environment, registry, project, base_dir, facts, &errors);
        let mut kept = errors.take();
        if let Err(err) = result
            && err.message != KEPT
        {
            kept.push(err);
        }
        kept
    }

    fn build_reporting(
        environment: &Environment,
        registry: &Registry,
        project: &Project,
        base_dir: &Path,
        facts: &crate::FactsInput,
        errors: &Errors,
    ) -> Result<Plan, ConfigError> {
        let syntax = environment.settings.templates.syntax();
        let templates = Templates::with_syntax(project.clone(), &syntax);
        let secret_files = Arc::new(SecretFiles::new(
            environment.secret_files.clone(),
            environment.secrets_path.clone(),
        ));
        // Steps in environment order: hosts by name, components as each host lists them.
        let attributes = environment.attributes()?;
        let mut slots = Vec::new();
        for host in &environment.hosts {
            for root in &host.components {
                let (type_name, merged) =
                    match (environment.components.get(root), attributes.get(root)) {
                        (Some(def), Some(merged)) => (def.type_name.clone(), merged.clone()),
                        _ => {
                            debug_assert!(registry.contains(root));
                            let offset = environment
                                .reference_spans
                                .get(&(host.name.clone(), root.clone()))
                                .copied()
                                .unwrap_or(0);
                            (
                                root.clone(),
                                MergedAttributes {
                                    value: Spanned::new(
                                        offset..offset,
                                        DeValue::Table(DeTable::new()),
                                    ),
                                    secret: SecretKeys::default(),
                                },
                            )
                        }
                    };
                slots.push(Slot {
                    host,
                    root: root.clone(),
                    type_name,
                    attributes: Attributes::from_environment(merged, environment),
                });
            }
        }
        check_unassigned(environment, &attributes, registry, &templates, errors)?;
        let bundles = Arc::new(crate::bundle::Bundles::default());
        let allow_paths: Vec<String> = environment
            .settings
            .allow_paths
            .iter()
            .map(|p| p.get_ref().clone())
            .collect();
        let rollout = environment.rollout.as_ref().and_then(|spec| {
            Some(crate::rollout::JobRollout {
                balancer: spec.balancer.clone()?,
                hosts: spec.rotation_hosts(&environment.hosts),
            })
        });
        let built = configure_slots(
            &slots,
            &Context {
                rollout: rollout.as_ref().map(|r| (r, None)),
                environment: &environment.name,
                base_dir,
                allow_paths: &allow_paths,
                project,
                registry,
                secret_files: &secret_files,
                bundles: &bundles,
                syntax: &syntax,
                facts,
                errors,
            },
            Resources::default(),
        )?;
        if !errors.is_empty() {
            // Every step configured, but an unassigned component's table was wrong.
            return Err(Errors::kept());
        }
        let labels: Vec<String> = slots
            .iter()
            .map(|s| format!("{}: {}", s.host.name, s.root))
            .collect();
        let edges = built.resources.edges();
        let order = order_steps(slots.len(), &edges, &labels)?;
        let mut after: Vec<BTreeMap<usize, Vec<String>>> = vec![BTreeMap::new(); slots.len()];
        for (earlier, later, edge) in edges {
            let keys = after[later].entry(earlier).or_default();
            if let Edge::Requires(key) = edge {
                keys.push(key);
            }
        }
        let steps = slots
            .into_iter()
            .zip(built.trees)
            .zip(built.attributes)
            .zip(after)
            .map(|(((slot, tree), attributes), after_keys)| Step {
                host: slot.host.name.clone(),
                workdir: base_dir.join("work").join(&slot.root),
                root: slot.root,
                after: after_keys.keys().copied().collect(),
                after_keys,
                type_name: slot.type_name,
                attributes: attributes.to_json(),
                tree,
            })
            .collect();
        Ok(Plan {
            environment: environment.name.clone(),
            steps,
            order,
            hosts: environment
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.clone()))
                .collect(),
            base_dir: environment.settings.base_dir.clone(),
            allow_paths,
            resources: built.resources,
            project: project.clone(),
            secret_files,
            bundles,
            secret_values: environment.secret_values.clone(),
            changed: Default::default(),
            changed_roots: Default::default(),
            syntax,
            facts: facts.facts.clone(),
            fact_reads: facts.reads.hosts(),
            writes: Default::default(),
            rollout: environment.rollout.clone(),
            job_rollout: rollout,
        })
    }

    /// The hosts whose facts a configure read, sorted.
    pub fn fact_hosts(&self) -> Vec<String> {
        self.fact_reads.iter().cloned().collect()
    }

    /// The hosts whose facts were read but not given: what to gather before building again.
    pub fn missing_facts(&self) -> Vec<String> {
        self.fact_reads
            .iter()
            .filter(|h| !self.facts.contains_key(*h))
            .cloned()
            .collect()
    }

    /// All steps, in environment order (not plan order).
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Step indices in plan order: every step after all steps it depends on.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// The steps of `host`, in plan order.
    pub fn host_order(&self, host: &str) -> Vec<usize> {
        self.order
            .iter()
            .copied()
            .filter(|i| self.steps[*i].host == host)
            .collect()
    }

    /// Every component path of a step's tree, in converge (post-order) order.
    pub fn component_paths(&self, step: usize) -> Vec<String> {
        fn walk(node: &Node, out: &mut Vec<String>) {
            for child in &node.children {
                walk(child, out);
            }
            out.push(node.path.clone());
        }
        let mut out = Vec::new();
        walk(&self.steps[step].tree, &mut out);
        out
    }

    /// Whether any component of a step may read what earlier steps wrote
    /// ([`Component::reads_written_files`](crate::Component::reads_written_files)): before
    /// it converges, the files staged so far are made durable and visible.
    pub fn reads_written_files(&self, step: usize) -> bool {
        fn walk(node: &Node) -> bool {
            node.component.reads_written_files() || node.children.iter().any(walk)
        }
        walk(&self.steps[step].tree)
    }

    /// What every component of a step's tree manages ([`Component::owned`](crate::Component::owned)),
    /// in converge order: nothing is looked at on the host.
    pub fn owned(&self, step: usize) -> Vec<crate::Owned> {
        fn walk(node: &Node, out: &mut Vec<crate::Owned>) {
            for child in &node.children {
                walk(child, out);
            }
            out.extend(node.component.owned());
        }
        let mut out = Vec::new();
        walk(&self.steps[step].tree, &mut out);
        out
    }

    /// The environment's `allow_paths`: absolute paths outside `base_dir` that components
    /// may change.
    pub fn allow_paths(&self) -> &[String] {
        &self.allow_paths
    }

    /// The names of the root components of `step`'s host that changed so far in this run,
    /// taken out of the plan while the step converges; [`Plan::record_changed`] puts them
    /// back.
    pub(crate) fn take_changed_roots(&mut self, step: usize) -> std::collections::BTreeSet<String> {
        let host = &self.steps[step].host;
        self.changed_roots.remove(host).unwrap_or_default()
    }

    /// Records whether `step` changed (or would change) in this run, and gives back what
    /// [`Plan::take_changed_roots`] took.
    pub(crate) fn record_changed(
        &mut self,
        step: usize,
        changed: bool,
        mut roots: std::collections::BTreeSet<String>,
    ) {
        let s = &self.steps[step];
        if changed {
            self.changed.insert(step);
            roots.insert(s.root.clone());
        }
        self.changed_roots.insert(s.host.clone(), roots);
    }

    /// The bundles the steps of `host` use, once each by digest.
    pub fn host_bundles(&self, host: &str) -> Vec<crate::Bundle> {
        let mut out: Vec<crate::Bundle> = Vec::new();
        for bundle in self.bundles.used_by(&self.host_order(host)).into_values() {
            if !bundle.is_unbuilt() && !out.iter().any(|b| b.digest == bundle.digest) {
                out.push(bundle);
            }
        }
        out
    }

    /// The bundle a step's release component asked for, if any.
    pub fn bundle_of(&self, step: usize) -> Option<crate::Bundle> {
        self.bundles.of_step(step)
    }

    /// The resource keys `step` provides, sorted.
    pub fn provided_keys(&self, step: usize) -> Vec<String> {
        self.resources
            .provided_by(step)
            .into_iter()
            .map(str::to_string)
            .collect()
    }

    /// The resource keys `step` requires, sorted.
    pub fn required_keys(&self, step: usize) -> Vec<String> {
        self.resources.consumed_keys(step)
    }

    /// The hosts of the plan with their root components in the environment's order, by name
    /// (also hosts without any).
    pub fn hosts(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.hosts
            .iter()
            .map(|(name, host)| (name.as_str(), host.components.as_slice()))
    }

    /// The steps `step` watches for changes.
    pub fn watched_by(&self, step: usize) -> Vec<usize> {
        self.resources.watched_by(step)
    }

    /// Whether `step` changed (or would change) so far in this run.
    pub fn has_changed(&self, step: usize) -> bool {
        self.changed.contains(&step)
    }

    /// The steps of the same host that watch `step` for changes (`restart_on`).
    pub fn watchers_of(&self, step: usize) -> Vec<usize> {
        self.resources.watchers_of(step)
    }

    /// A step to converge, with its host.
    pub(crate) fn step_with_host(
        &mut self,
        step: usize,
    ) -> (&mut Step, &Host, &mut crate::PendingWrites) {
        let step = &mut self.steps[step];
        let host = &self.hosts[&step.host];
        (step, host, &mut self.writes)
    }

    /// Makes the files that steps converged with
    /// [`keep_writes_pending`](crate::ConvergeOptions::keep_writes_pending) staged durable
    /// and visible; returns how many there were.
    pub fn flush_writes(&mut self) -> anyhow::Result<usize> {
        self.writes.flush()
    }

    /// How many written files wait for [`Plan::flush_writes`].
    pub fn pending_writes(&self) -> usize {
        self.writes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::HostJob;
    use crate::{Component, Configure, Verdict};
    use serde::Deserialize;

    /// A test component that provides and requires resource keys, in the listed order.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Node {
        #[serde(default)]
        steps: Vec<String>,
        #[serde(default)]
        password: Option<crate::Secret>,
        #[serde(default)]
        secret_file: Option<String>,
        #[serde(skip)]
        seen: Vec<String>,
    }

    impl Component for Node {
        fn label(&self) -> String {
            "Node".into()
        }
        fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
            if let Some(name) = &self.secret_file {
                cx.secret_file(name)?;
            }
            if let Some(password) = &self.password {
                anyhow::ensure!(!password.expose().is_empty(), "empty password");
            }
            for step in &self.steps {
                if let Some(key) = step.strip_prefix("provide:") {
                    cx.provide(key, &cx.host().name.clone())?;
                } else if let Some(key) = step.strip_prefix("require_one:") {
                    let value: String = cx.require_one(key)?;
                    self.seen.push(value);
                } else if let Some(root) = step.strip_prefix("watch:") {
                    cx.watch_root(root)?;
                } else if let Some(key) = step.strip_prefix("require:") {
                    let values: Vec<String> = cx.require(key)?;
                    self.seen.extend(values);
                }
            }
            Ok(())
        }
        fn verify(&self, _cx: &mut crate::Deploy) -> anyhow::Result<Verdict> {
            Ok(Verdict::UpToDate)
        }
    }

    fn registry() -> Registry {
        let mut registry = Registry::new();
        registry.register::<Node>("node");
        registry
    }

    fn plan(toml: &str) -> Result<Plan, ConfigError> {
        let registry = registry();
        let env = Environment::parse(
            "test",
            "environments/test.toml",
            toml.to_string(),
            &registry,
        )?;
        Plan::build(
            &env,
            &registry,
            &Project::new("/nonexistent"),
            Path::new("/srv/test"),
        )
    }

    fn order(plan: &Plan) -> Vec<String> {
        plan.order()
            .iter()
            .map(|i| plan.steps()[*i].label())
            .collect()
    }

    fn check(toml: &str) -> Vec<String> {
        let registry = registry();
        let env = Environment::parse(
            "test",
            "environments/test.toml",
            toml.to_string(),
            &registry,
        )
        .unwrap();
        Plan::check(
            &env,
            &registry,
            &Project::new("/nonexistent"),
            Path::new("/srv/test"),
            &crate::FactsInput::default(),
        )
        .iter()
        .map(|e| e.to_string())
        .collect()
    }

    #[test]
    fn a_check_reports_every_failed_step_and_goes_on_with_the_others() {
        let errors = check(
            r#"
[hosts.web1]
components = ["app", "cache"]
[hosts.db1]
components = ["db"]
[components.app]
type = "node"
steps = ["require:database"]
[components.cache]
type = "node"
secret_file = "cache.key"
[components.db]
type = "node"
stepz = ["provide:database"]
[components.spare]
type = "node"
steps = 3
"#,
        );
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(
            errors[0].contains("(`spare` is not assigned to any host)"),
            "{errors:#?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("unknown field `stepz`")),
            "{errors:#?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("cannot configure `cache` in host `web1`")),
            "{errors:#?}"
        );
        assert!(
            errors
                .last()
                .unwrap()
                .starts_with("unsatisfied resource requirements: `web1: app` requires `database`"),
            "the requirer of what the failed step provides: {errors:#?}"
        );
        // Without errors there is nothing to report, and a build agrees.
        let good = "[hosts.a]\ncomponents = [\"x\"]\n[components.x]\ntype = \"node\"\n";
        assert!(check(good).is_empty());
        assert!(plan(good).is_ok());
    }

    #[test]
    fn providers_come_before_requirers_across_hosts() {
        let plan = plan(
            r#"
[hosts.web1]
components = ["app"]
[hosts.db1]
components = ["db"]
[components.app]
type = "node"
steps = ["require:database"]
[components.db]
type = "node"
steps = ["provide:database"]
"#,
        )
        .unwrap();
        assert_eq!(order(&plan), vec!["db1: db", "web1: app"]);
        let app = plan.steps().iter().position(|s| s.root == "app").unwrap();
        assert_eq!(
            plan.steps()[app].after_keys.values().next().unwrap(),
            &vec!["database".to_string()]
        );
    }

    #[test]
    fn a_requirer_sees_every_provider_even_those_configured_later() {
        // `early` requires `x` before `late` provides it, so it is configured again.
        let plan = plan(
            r#"
[hosts.a]
components = ["early", "late"]
[hosts.b]
components = ["late2"]
[components.early]
type = "node"
steps = ["require:x"]
[components.late]
type = "node"
steps = ["provide:x"]
[components.late2]
type = "node"
steps = ["provide:x"]
"#,
        )
        .unwrap();
        assert_eq!(order(&plan), vec!["a: late", "b: late2", "a: early"]);
    }

    #[test]
    fn a_watched_root_comes_first_and_unknown_names_are_refused_with_a_suggestion() {
        let watched = plan(
            r#"
[hosts.h]
components = ["web", "config"]
[components.web]
type = "node"
steps = ["watch:config"]
[components.config]
type = "node"
"#,
        )
        .unwrap();
        assert_eq!(order(&watched), vec!["h: config", "h: web"]);
        let web = watched
            .steps()
            .iter()
            .position(|s| s.root == "web")
            .unwrap();
        assert_eq!(watched.steps()[web].after.len(), 1);
        assert!(watched.steps()[web].after_keys.values().all(Vec::is_empty));

        let err = plan(
            r#"
[hosts.h]
components = ["web", "config"]
[hosts.other]
components = ["db"]
[components.web]
type = "node"
steps = ["watch:confg"]
[components.config]
type = "node"
[components.db]
type = "node"
"#,
        )
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "cannot configure `web` in host `h`, component `web`"
        );
        assert_eq!(
            std::error::Error::source(&err).unwrap().to_string(),
            "`confg` is not a root component of host `h` (did you mean `config`?)"
        );
        assert_eq!(
            err.hint.as_deref(),
            Some("the other root components of host `h` are `config`")
        );

        let err = plan(
            r#"
[hosts.h]
components = ["a", "b"]
[components.a]
type = "node"
steps = ["watch:b"]
[components.b]
type = "node"
steps = ["watch:a"]
"#,
        )
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "dependency cycle between `h: a`, `h: b`: `h: b` watches `h: a` for changes; `h: a` watches `h: b` for changes"
        );
    }

    #[test]
    fn cycles_are_reported_whole() {
        let err = plan(
            r#"
[hosts.h]
components = ["a", "b"]
[components.a]
type = "node"
steps = ["provide:x", "require:y"]
[components.b]
type = "node"
steps = ["provide:y", "require:x"]
"#,
        )
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "dependency cycle between `h: a`, `h: b`: `h: b` requires `x` from `h: a`; `h: a` requires `y` from `h: b`"
        );
        assert!(err.hint.is_some());
    }

    #[test]
    fn mutual_requirements_before_providing_are_unsatisfied_with_a_cycle_hint() {
        let err = plan(
            r#"
[hosts.h]
components = ["a", "b"]
[components.a]
type = "node"
steps = ["require:y", "provide:x"]
[components.b]
type = "node"
steps = ["require:x", "provide:y"]
"#,
        )
        .err()
        .unwrap();
        assert_eq!(
            err.to_string(),
            "unsatisfied resource requirements: `h: a` requires `y`; `h: b` requires `x`, which no configured component provides in host `h`, component `a`"
        );
    }

    #[test]
    fn require_one_with_several_providers_names_them() {
        let err = plan(
            r#"
[hosts.a]
components = ["db"]
[hosts.b]
components = ["db", "app"]
[components.db]
type = "node"
steps = ["provide:database"]
[components.app]
type = "node"
steps = ["require_one:database"]
"#,
        )
        .err()
        .unwrap();
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert!(
            chain.contains(
                "resource `database` is provided 2 times, expected once: by `a: db`, `b: db`"
            ),
            "{chain}"
        );
    }

    #[test]
    fn components_no_host_runs_are_checked_too() {
        let base = "[hosts.h]\ncomponents = [\"a\"]\n[components.a]\ntype = \"node\"\n[components.spare]\ntype = \"node\"\n";
        assert!(plan(base).is_ok());
        for (extra, want) in [
            (
                "stpes = []\n",
                "component `spare`: unknown field `stpes`, expected one of `steps`, `password`, `secret_file` (`spare` is not assigned to any host) in environments/test.toml:7:1 (did you mean `steps`?)",
            ),
            (
                "secret_file = \"{% if %}\"\n",
                "invalid template in an attribute of `spare` (`spare` is not assigned to any host) in environments/test.toml:7:15",
            ),
            (
                "[components.spare.x]\nmode = 755\n",
                "component `spare`: `mode = 755` is the decimal number 755 (0o1363 in octal) (`spare` is not assigned to any host) in environments/test.toml:8:8",
            ),
        ] {
            let err = plan(&format!("{base}{extra}")).err().expect(extra);
            assert_eq!(err.to_string(), want);
        }
        // Templates that need a host are not rendered: no false error.
        assert!(
            plan(&format!(
                "{base}secret_file = \"{{{{ host.data.role }}}}\"\n"
            ))
            .is_ok()
        );
    }

    #[test]
    fn unsatisfied_names_who_requires_what() {
        let err = plan(
            "[hosts.h]\ncomponents = [\"a\"]\n[components.a]\ntype = \"node\"\nsteps = [\"require:db\"]\n",
        )
        .err()
        .unwrap();
        assert!(
            err.to_string()
                .starts_with("unsatisfied resource requirements: `h: a` requires `db`"),
            "{err}"
        );
        assert_eq!(
            err.hint.as_deref(),
            Some("add a component that provides the resource to some host of the environment")
        );
    }

    #[test]
    fn without_resources_the_environment_order_holds() {
        let plan = plan(
            "[hosts.b]\ncomponents = [\"z\", \"y\"]\n[hosts.a]\ncomponents = [\"x\"]\n[components.z]\ntype=\"node\"\n[components.y]\ntype=\"node\"\n[components.x]\ntype=\"node\"\n",
        )
        .unwrap();
        assert_eq!(order(&plan), vec!["a: x", "b: z", "b: y"]);
        assert_eq!(plan.host_order("b").len(), 2);
        assert_eq!(
            plan.component_paths(plan.host_order("a")[0]),
            vec!["x > Workdir", "x"]
        );
    }

    #[test]
    fn each_host_job_carries_only_the_secrets_its_components_use() {
        let toml = r#"
[hosts.web1]
components = ["app"]
[hosts.db1]
components = ["db"]
[components.app]
type = "node"
steps = ["require:database"]
secret_file = "app.key"
[components.db]
type = "node"
steps = ["provide:database"]
"#;
        let registry = registry();
        let mut env =
            Environment::parse("test", "environments/test.toml", toml.into(), &registry).unwrap();
        let secrets = crate::secrets::Secrets::parse(
            "secrets/test.age",
            "[components.app]\npassword = \"canary-pw-1\"\n[files]\n\"app.key\" = \"canary-key-2\"\n\"unused\" = \"canary-3\"\n".into(),
        )
        .unwrap();
        env.apply_secrets(secrets, &registry).unwrap();
        let plan = Plan::build(
            &env,
            &registry,
            &Project::new("/nonexistent"),
            Path::new("/srv"),
        )
        .unwrap();
        let db = serde_json::to_string(&plan.host_job("db1").unwrap()).unwrap();
        assert!(!db.contains("canary"), "{db}");
        let web = plan.host_job("web1").unwrap();
        assert_eq!(web.secret_files.keys().collect::<Vec<_>>(), ["app.key"]);
        let names: Vec<&str> = web.secrets.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["components.app.password", "files.app.key"]);
        assert!(!serde_json::to_string(&web).unwrap().contains("canary-3"));
        // The agent configures from what it received.
        let agent = Plan::from_job(&web, &registry, Path::new("/srv")).unwrap();
        assert_eq!(agent.component_paths(0), vec!["app > Workdir", "app"]);
    }

    /// A component whose label is its `path` attribute, like a file.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Labelled {
        path: String,
        #[serde(default)]
        note: String,
    }

    impl Component for Labelled {
        fn label(&self) -> String {
            format!("Labelled('{}')", self.path)
        }
        fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
            if self.note == "leaf" {
                return Ok(());
            }
            let resolved = cx.path(&self.path)?;
            cx.add(Labelled {
                path: resolved.display().to_string(),
                note: "leaf".into(),
            });
            Ok(())
        }
        fn verify(&self, _cx: &mut crate::Deploy) -> anyhow::Result<Verdict> {
            Ok(Verdict::UpToDate)
        }
    }

    #[test]
    fn the_agent_expands_the_planned_home_in_rendered_attributes() {
        let mut registry = registry();
        registry.register::<Labelled>("labelled");
        for base_dir in ["srv", "~/srv", "./srv"] {
            let toml = format!(
                r#"
[environment]
base_dir = "{base_dir}"
[hosts.web1]
components = ["app"]
[components.app]
type = "labelled"
path = "{{{{ workdir }}}}/app.conf"
note = "root={{{{ environment.base_dir }}}} x=~/srvx y=a~/srv"
"#
            );
            let env =
                Environment::parse("test", "environments/test.toml", toml, &registry).unwrap();
            let planned = env.remote_base_dir();
            assert_eq!(planned, Path::new("~/srv"), "{base_dir}");
            let plan =
                Plan::build(&env, &registry, &Project::new("/nonexistent"), &planned).unwrap();
            let job = plan.host_job("web1").unwrap();
            assert_eq!(job.steps[0].attributes["path"], "~/srv/work/app/app.conf");
            let real = crate::host_base_dir(&job.base_dir, Path::new("/home/deploy"));
            assert_eq!(real, Path::new("/home/deploy/srv"));
            assert_eq!(
                job.steps[0].components[1],
                "app > Labelled('~/srv/work/app/app.conf')"
            );
            let agent = Plan::from_job(&job, &registry, &real).unwrap();
            assert_eq!(
                agent.component_paths(0),
                [
                    "app > Workdir",
                    "app > Labelled('/home/deploy/srv/work/app/app.conf')",
                    "app"
                ]
            );
            let Ok(attributes) = &agent.steps()[0].attributes else {
                panic!("an agent's attributes are JSON");
            };
            assert_eq!(attributes["path"], "/home/deploy/srv/work/app/app.conf");
            // Only the base directory as a path is expanded, not look-alikes.
            assert_eq!(
                attributes["note"],
                "root=/home/deploy/srv x=~/srvx y=a~/srv"
            );
        }
    }

    #[test]
    fn a_host_job_configures_the_same_on_the_agent() {
        let toml = r#"
[hosts.web1]
components = ["app"]
[hosts.db1]
components = ["db"]
[components.app]
type = "node"
steps = ["require:database"]
[components.db]
type = "node"
steps = ["provide:database"]
"#;
        let plan = plan(toml).unwrap();
        let job = plan.host_job("web1").unwrap();
        assert_eq!(job.steps.len(), 1);
        assert_eq!(job.resources["database"], vec![serde_json::json!("db1")]);
        assert!(!job.resources.contains_key("other"));
        // Shipped as JSON, configured again from it.
        let line = serde_json::to_string(&job).unwrap();
        let job: HostJob = serde_json::from_str(&line).unwrap();
        let registry = registry();
        let agent = Plan::from_job(&job, &registry, Path::new("/home/x/srv")).unwrap();
        assert_eq!(agent.component_paths(0), vec!["app > Workdir", "app"]);

        let mut tampered = job.clone();
        tampered.steps[0].components.push("app > File('x')".into());
        let err = Plan::from_job(&tampered, &registry, Path::new("/srv"))
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("the agent configured `app` differently"),
            "{err}"
        );

        let mut missing = job;
        missing.resources.clear();
        assert!(Plan::from_job(&missing, &registry, Path::new("/srv")).is_err());
    }

    /// A component that reads a project file and renders a project template in configure.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Reader {
        file: String,
        template: String,
    }

    impl Component for Reader {
        fn label(&self) -> String {
            "Reader".into()
        }
        fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
            cx.project().read(&self.file)?;
            cx.render_file(&self.template, serde_json::json!({}))?;
            Ok(())
        }
        fn verify(&self, _cx: &mut crate::Deploy) -> anyhow::Result<Verdict> {
            Ok(Verdict::UpToDate)
        }
    }

    #[test]
    fn each_host_job_carries_only_the_project_files_its_steps_read() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["web.conf", "db.conf", "shared.j2"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let mut registry = registry();
        registry.register::<Reader>("reader");
        let toml = r#"
[hosts.web1]
components = ["web"]
[hosts.db1]
components = ["db"]
[components.web]
type = "reader"
file = "web.conf"
template = "shared.j2"
[components.db]
type = "reader"
file = "db.conf"
template = "shared.j2"
"#;
        let env =
            Environment::parse("test", "environments/test.toml", toml.into(), &registry).unwrap();
        let plan = Plan::build(
            &env,
            &registry,
            &Project::new(dir.path()),
            Path::new("/srv"),
        )
        .unwrap();
        let files = |host: &str| {
            let job = plan.host_job(host).unwrap();
            job.files.files.into_keys().collect::<Vec<_>>()
        };
        // The template both render travels to both, though it was loaded once.
        assert_eq!(files("web1"), ["shared.j2", "web.conf"]);
        assert_eq!(files("db1"), ["db.conf", "shared.j2"]);
        let job = plan.host_job("web1").unwrap();
        let agent = Plan::from_job(&job, &registry, Path::new("/srv")).unwrap();
        assert_eq!(agent.component_paths(0), ["web > Workdir", "web"]);
    }

    #[test]
    fn merged_secrets_are_flagged_not_rendered_and_placed_in_their_file() {
        let mut registry = registry();
        registry.register::<Labelled>("labelled");
        let plan_with = |secrets: &str| {
            let toml = "[hosts.web1]\ncomponents = [\"app\"]\n[components.app]\ntype = \"labelled\"\npath = \"{{ workdir }}/x\"\n";
            let mut env =
                Environment::parse("test", "environments/test.toml", toml.into(), &registry)
                    .unwrap();
            let secrets =
                crate::secrets::Secrets::parse("secrets/test.age", secrets.into()).unwrap();
            env.apply_secrets(secrets, &registry)?;
            Plan::build(
                &env,
                &registry,
                &Project::new("/nonexistent"),
                Path::new("/srv"),
            )
        };
        // A secret that looks like a template is left as it is; the environment's is rendered.
        let plan = plan_with("[components.app]\nnote = \"{{ pass }}word\"\n").unwrap();
        let job = plan.host_job("web1").unwrap();
        assert_eq!(job.steps[0].attributes["note"], "{{ pass }}word");
        assert_eq!(job.steps[0].attributes["path"], "/srv/work/app/x");
        // An error in a secret value names the secrets file, one in the environment its own.
        let err = plan_with("\n[components.app]\nnote = 5\n").err().unwrap();
        assert_eq!(
            err.to_string(),
            "component `app`: invalid type: integer `5`, expected a string in secrets/test.age:3:8"
        );
        let err = plan_with("[components.app]\nnope = \"x\"\n").err().unwrap();
        assert!(
            err.to_string()
                .ends_with("in secrets/test.age:2:1 (did you mean `note`?)"),
            "{err}"
        );
        let err = plan_with("[components.app]\npath = \"y\"\n").err().unwrap();
        assert!(
            err.to_string().ends_with(
                "set both in the environment and in the secrets in secrets/test.age:2:1"
            ),
            "{err}"
        );
    }
}
