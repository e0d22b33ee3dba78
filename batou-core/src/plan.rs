//! The plan: every host's configured root components, ordered by the resources they share.
//!
//! Building a plan configures every (host, root component) step of the environment once, in
//! rounds until all `require`s are satisfied and stable, then orders the steps as a DAG
//! (provider before requirer, otherwise the environment's order). All of it happens before any
//! host is touched; every problem is a [`ConfigError`] with its place.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use std::sync::Arc;

use crate::configure::Scope;
use crate::protocol::{HostJob, JobHost, JobStep, PlanStep, RemoteHost, RemotePlan};
use crate::resources::{Resources, Unsatisfied};
use crate::secrets::SecretFiles;
use crate::template::is_template;
use crate::{
    Component, ConfigError, Configure, Environment, Host, Place, Project, Registry, Templates,
};

/// Rounds of configuration before resources are declared unsettled.
const MAX_ROUNDS: usize = 64;

/// A configured component and its configured sub-components.
pub(crate) struct Node {
    pub(crate) path: String,
    pub(crate) component: Box<dyn Component>,
    pub(crate) children: Vec<Node>,
}

/// One root component on one host.
pub struct Step {
    pub host: String,
    pub root: String,
    /// Steps (indices into [`Plan::steps`]) that must be done before this one.
    pub after: Vec<usize>,
    /// The resource keys each of those steps provides to this one, for reports.
    pub after_keys: BTreeMap<usize, Vec<String>>,
    pub(crate) type_name: String,
    pub(crate) attributes: Attributes,
    pub(crate) tree: Node,
}

impl Step {
    /// `host: root`, as used in plan reports.
    pub fn label(&self) -> String {
        format!("{}: {}", self.host, self.root)
    }
}

/// A root component's attributes: from the environment file (with spans for errors) or as
/// shipped to an agent.
#[derive(Clone)]
pub(crate) enum Attributes {
    Toml(Spanned<DeValue<'static>>),
    Json(serde_json::Value),
}

/// The ordered steps of an environment.
pub struct Plan {
    pub environment: String,
    steps: Vec<Step>,
    order: Vec<usize>,
    hosts: BTreeMap<String, Host>,
    base_dir: String,
    allow_paths: Vec<String>,
    resources: Resources,
    project: Project,
    secret_files: Arc<SecretFiles>,
    /// Every secret string of the environment with its name (empty on agents).
    secret_values: Vec<(String, String)>,
}

/// One step to configure: a root component of a host with its type and attributes.
struct Slot<'a> {
    host: &'a Host,
    root: String,
    type_name: String,
    attributes: Attributes,
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
        let templates = Templates::new(project.clone());
        let secret_files = Arc::new(SecretFiles::new(
            environment.secret_files.clone(),
            environment.secrets_path.clone(),
        ));
        // Steps in environment order: hosts by name, components as each host lists them.
        let mut slots = Vec::new();
        for host in &environment.hosts {
            for root in &host.components {
                let (type_name, attributes) = match environment.components.get(root) {
                    Some(def) => (def.type_name.clone(), def.attributes.clone()),
                    None => {
                        debug_assert!(registry.contains(root));
                        let offset = environment
                            .reference_spans
                            .get(&(host.name.clone(), root.clone()))
                            .copied()
                            .unwrap_or(0);
                        (
                            root.clone(),
                            Spanned::new(offset..offset, DeValue::Table(DeTable::new())),
                        )
                    }
                };
                slots.push(Slot {
                    host,
                    root: root.clone(),
                    type_name,
                    attributes: Attributes::Toml(attributes),
                });
            }
        }
        check_unassigned(environment, registry, &templates)?;
        let allow_paths: Vec<String> = environment
            .settings
            .allow_paths
            .iter()
            .map(|p| p.get_ref().clone())
            .collect();
        let built = configure_slots(
            &slots,
            &Context {
                environment: &environment.name,
                source: Some(environment),
                base_dir,
                allow_paths: &allow_paths,
                project,
                templates: &templates,
                registry,
                secret_files: &secret_files,
            },
            Resources::default(),
        )?;
        let labels: Vec<String> = slots
            .iter()
            .map(|s| format!("{}: {}", s.host.name, s.root))
            .collect();
        let edges = built.resources.edges();
        let order = order_steps(slots.len(), &edges, &labels)?;
        let mut after: Vec<BTreeMap<usize, Vec<String>>> = vec![BTreeMap::new(); slots.len()];
        for (provider, requirer, key) in edges {
            after[requirer].entry(provider).or_default().push(key);
        }
        let steps = slots
            .into_iter()
            .zip(built.trees)
            .zip(built.attributes)
            .zip(after)
            .map(|(((slot, tree), attributes), after_keys)| Step {
                host: slot.host.name.clone(),
                root: slot.root,
                after: after_keys.keys().copied().collect(),
                after_keys,
                type_name: slot.type_name,
                attributes,
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
            secret_values: environment.secret_values.clone(),
        })
    }

    /// The part of the plan that `host` needs: its steps in plan order, their rendered
    /// attributes, the resource values they require and the project files the plan read.
    pub fn host_job(&self, host: &str) -> Result<HostJob, ConfigError> {
        let steps = self.host_order(host);
        let Some(h) = self.hosts.get(host) else {
            return Err(ConfigError::new(format!("unknown host `{host}`")));
        };
        let mut job_steps = Vec::with_capacity(steps.len());
        for i in &steps {
            let step = &self.steps[*i];
            let attributes = match &step.attributes {
                Attributes::Json(v) => v.clone(),
                Attributes::Toml(v) => {
                    serde_json::Value::deserialize(v.clone().into_deserializer()).map_err(|e| {
                        ConfigError::new(format!(
                            "cannot ship the attributes of `{}`: {}",
                            step.label(),
                            e.message()
                        ))
                    })?
                }
            };
            job_steps.push(JobStep {
                root: step.root.clone(),
                type_name: step.type_name.clone(),
                attributes,
                components: self.component_paths(*i),
            });
        }
        let mut job = HostJob {
            environment: self.environment.clone(),
            host: JobHost {
                name: h.name.clone(),
                data: h.data.clone(),
                address: h.address.clone(),
            },
            base_dir: self.base_dir.clone(),
            allow_paths: self.allow_paths.clone(),
            steps: job_steps,
            resources: self.resources.consumed_by(&steps),
            files: self.project.read_files(),
            secret_files: self.secret_files.used_by(&steps),
            secrets: Vec::new(),
        };
        // The agent masks every secret its job carries, wherever it came from (attributes,
        // host data, resources, files): those whose value occurs in the job.
        if self.secret_values.is_empty() {
            return Ok(job);
        }
        let shipped = serde_json::to_string(&job).expect("jobs always serialize");
        for (name, value) in &self.secret_values {
            let escaped = serde_json::to_string(value).expect("strings serialize");
            if shipped.contains(&escaped[1..escaped.len() - 1])
                && !job.secrets.iter().any(|(_, v)| v == value)
            {
                job.secrets.push((name.clone(), value.clone()));
            }
        }
        Ok(job)
    }

    /// The plan as a controller needs it to deploy over SSH.
    pub fn export(&self, jobs: usize) -> Result<RemotePlan, ConfigError> {
        let mut host_jobs = BTreeMap::new();
        let mut hosts = Vec::new();
        for (name, host) in &self.hosts {
            if host.components.is_empty() {
                continue;
            }
            host_jobs.insert(name.clone(), self.host_job(name)?);
            hosts.push(RemoteHost {
                name: name.clone(),
                address: host.address.clone(),
                port: host.port,
                user: host.user.clone(),
            });
        }
        Ok(RemotePlan {
            environment: self.environment.clone(),
            jobs,
            hosts,
            steps: self
                .steps
                .iter()
                .map(|s| PlanStep {
                    host: s.host.clone(),
                    root: s.root.clone(),
                    after: s.after.clone(),
                    after_keys: s.after_keys.clone(),
                })
                .collect(),
            order: self.order.clone(),
            host_jobs,
            secrets: self.secret_values.clone(),
        })
    }

    /// Configures a host's job as an agent does, with `base_dir` resolved on the host, and
    /// checks that every root component configures to the component paths the controller saw.
    pub fn from_job(
        job: &HostJob,
        registry: &Registry,
        base_dir: &Path,
    ) -> Result<Plan, ConfigError> {
        let project = Project::shipped(job.files.clone());
        let templates = Templates::new(project.clone());
        let secret_files = Arc::new(SecretFiles::new(job.secret_files.clone(), None));
        // The controller rendered attributes with a relative base directory planned as
        // `~/...`; this host knows where that is.
        let home = HomeExpansion::new(&job.base_dir, base_dir);
        let job_steps: Vec<JobStep> = job
            .steps
            .iter()
            .map(|s| JobStep {
                root: s.root.clone(),
                type_name: s.type_name.clone(),
                attributes: home.value(&s.attributes),
                components: s.components.iter().map(|c| home.text(c)).collect(),
            })
            .collect();
        let host = Host {
            name: job.host.name.clone(),
            components: job.steps.iter().map(|s| s.root.clone()).collect(),
            data: job.host.data.clone(),
            address: job.host.address.clone(),
            port: None,
            user: None,
        };
        let slots: Vec<Slot> = job_steps
            .iter()
            .map(|s| Slot {
                host: &host,
                root: s.root.clone(),
                type_name: s.type_name.clone(),
                attributes: Attributes::Json(s.attributes.clone()),
            })
            .collect();
        let built = configure_slots(
            &slots,
            &Context {
                environment: &job.environment,
                source: None,
                base_dir,
                allow_paths: &job.allow_paths,
                project: &project,
                templates: &templates,
                registry,
                secret_files: &secret_files,
            },
            Resources::fixed(job.resources.clone()),
        )?;
        let steps: Vec<Step> = slots
            .into_iter()
            .zip(built.trees)
            .map(|(slot, tree)| Step {
                host: host.name.clone(),
                root: slot.root,
                after: Vec::new(),
                after_keys: BTreeMap::new(),
                type_name: slot.type_name,
                attributes: slot.attributes,
                tree,
            })
            .collect();
        let plan = Plan {
            environment: job.environment.clone(),
            order: (0..steps.len()).collect(),
            steps,
            hosts: BTreeMap::from([(host.name.clone(), host.clone())]),
            base_dir: job.base_dir.clone(),
            allow_paths: job.allow_paths.clone(),
            resources: built.resources,
            project,
            secret_files,
            secret_values: Vec::new(),
        };
        for (i, expected) in job_steps.iter().enumerate() {
            let configured = plan.component_paths(i);
            if configured != expected.components {
                return Err(ConfigError::new(format!(
                    "the agent configured `{}` differently from the controller: expected {:?}, got {:?}",
                    expected.root, expected.components, configured
                ))
                .at(Place::Component {
                    host: host.name.clone(),
                    path: expected.root.clone(),
                })
                .hint("controller and agent must run the same deployment code; configure must not read the host"));
            }
        }
        Ok(plan)
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

    pub(crate) fn step_mut(&mut self, step: usize) -> &mut Step {
        &mut self.steps[step]
    }
}

/// Replaces the planned `~/...` base directory in rendered attribute strings with the real
/// one, where it stands as a path: at the start of the string or after whitespace, `=`, `:`,
/// `,`, a quote or `(`, and followed by `/`, the end, or one of those.
struct HomeExpansion {
    planned: Option<(String, String)>,
}

impl HomeExpansion {
    fn new(job_base_dir: &str, real: &Path) -> Self {
        let planned = crate::environment::planned_base_dir(job_base_dir);
        let planned = planned.to_string_lossy();
        let real = real.to_string_lossy();
        HomeExpansion {
            planned: (planned.starts_with('~') && planned != real)
                .then(|| (planned.into_owned(), real.into_owned())),
        }
    }

    fn text(&self, s: &str) -> String {
        let Some((planned, real)) = &self.planned else {
            return s.to_string();
        };
        let before = |c: char| c.is_whitespace() || "=:,'\"(".contains(c);
        let after = |c: char| c == '/' || before(c) || ")".contains(c);
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        let mut prev: Option<char> = None;
        while let Some(at) = rest.find(planned.as_str()) {
            let head = &rest[..at];
            let p = head.chars().next_back().or(prev);
            let tail = &rest[at + planned.len()..];
            out.push_str(head);
            if p.is_none_or(before) && tail.chars().next().is_none_or(after) {
                out.push_str(real);
            } else {
                out.push_str(planned);
            }
            prev = planned.chars().next_back();
            rest = tail;
        }
        out.push_str(rest);
        out
    }

    fn value(&self, v: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        if self.planned.is_none() {
            return v.clone();
        }
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Array(items) => Value::Array(items.iter().map(|i| self.value(i)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.value(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// What configuring steps needs besides the steps themselves.
struct Context<'a> {
    environment: &'a str,
    /// The environment file, for placing attribute errors (absent on agents).
    source: Option<&'a Environment>,
    base_dir: &'a Path,
    allow_paths: &'a [String],
    project: &'a Project,
    templates: &'a Templates,
    registry: &'a Registry,
    secret_files: &'a SecretFiles,
}

struct Built {
    trees: Vec<Node>,
    /// Attributes with templates rendered for each slot's host.
    attributes: Vec<Attributes>,
    resources: Resources,
}

/// Configures every slot, in rounds until every `require` is satisfied and stable.
fn configure_slots(
    slots: &[Slot],
    cx: &Context,
    mut resources: Resources,
) -> Result<Built, ConfigError> {
    let mut allowed: Vec<PathBuf> = vec![crate::paths::normalize(cx.base_dir)];
    allowed.extend(
        cx.allow_paths
            .iter()
            .map(|p| crate::paths::normalize(Path::new(p))),
    );
    let labels: Vec<String> = slots
        .iter()
        .map(|s| format!("{}: {}", s.host.name, s.root))
        .collect();
    let scopes: Vec<Scope> = slots
        .iter()
        .enumerate()
        .map(|(step, slot)| {
            let workdir = cx.base_dir.join("work").join(&slot.root);
            let host = slot.host;
            let context = minijinja::context! {
                host => minijinja::context! {
                    name => &host.name,
                    data => minijinja::Value::from_serialize(&host.data),
                    address => host.address.as_deref().unwrap_or(&host.name),
                },
                environment => minijinja::context! {
                    name => cx.environment,
                    base_dir => cx.base_dir.to_string_lossy(),
                },
                component => minijinja::context! { name => &slot.root },
                workdir => workdir.to_string_lossy(),
            };
            Scope {
                step,
                root: &slot.root,
                step_labels: &labels,
                host,
                environment: cx.environment,
                base_dir: cx.base_dir,
                workdir,
                allowed: &allowed,
                project: cx.project,
                templates: cx.templates,
                secret_files: cx.secret_files,
                context,
            }
        })
        .collect();

    // Attributes are rendered once per step, before any configure runs.
    let mut attributes = Vec::with_capacity(slots.len());
    for (slot, scope) in slots.iter().zip(&scopes) {
        attributes.push(match &slot.attributes {
            Attributes::Toml(value) => {
                let mut value = value.clone();
                let environment = cx
                    .source
                    .expect("TOML attributes come from an environment file");
                check_decimal_modes(&value, environment, &slot.root)?;
                render_value(&mut value, environment, scope, &slot.root)?;
                Attributes::Toml(value)
            }
            json => json.clone(),
        });
    }

    let mut trees: Vec<Option<Node>> = (0..slots.len()).map(|_| None).collect();
    let mut pending: BTreeSet<usize> = (0..slots.len()).collect();
    for _ in 0..MAX_ROUNDS {
        let before = (resources.clone(), pending.clone());
        for step in pending.clone() {
            resources.reset(step);
            let component = create(cx, &scopes[step], &slots[step].type_name, &attributes[step])?;
            match configure_root(&scopes[step], &mut resources, component) {
                Ok(tree) => {
                    trees[step] = Some(tree);
                    pending.remove(&step);
                }
                Err((_, err)) if err.chain().any(|c| c.is::<Unsatisfied>()) => {}
                Err((path, err)) => {
                    return Err(ConfigError::new(format!("cannot configure `{path}`"))
                        .at(Place::Component {
                            host: scopes[step].host.name.clone(),
                            path,
                        })
                        .caused_by(err));
                }
            }
        }
        for (step, tree) in trees.iter_mut().enumerate() {
            if !pending.contains(&step) && resources.is_stale(step) {
                *tree = None;
                pending.insert(step);
            }
        }
        if pending.is_empty() {
            return Ok(Built {
                trees: trees
                    .into_iter()
                    .map(|t| t.expect("every step is configured once the plan settled"))
                    .collect(),
                attributes,
                resources,
            });
        }
        if (resources.clone(), pending.clone()) == before {
            return Err(unsatisfied_error(&scopes, &resources, &pending));
        }
    }
    Err(ConfigError::new(format!(
        "resources did not settle after {MAX_ROUNDS} rounds of configuration"
    ))
    .hint("a component provides values that depend on what it requires in a loop"))
}

/// A fresh component of a step's type from its (rendered) attributes.
fn create(
    cx: &Context,
    scope: &Scope,
    type_name: &str,
    attributes: &Attributes,
) -> Result<Box<dyn Component>, ConfigError> {
    match attributes {
        Attributes::Toml(value) => {
            let environment = cx
                .source
                .expect("TOML attributes come from an environment file");
            cx.registry
                .create(type_name, value.clone())
                .map_err(|e| attribute_error(environment, scope, &e))
        }
        Attributes::Json(value) => match cx.registry.create_from_json(type_name, value.clone()) {
            Some(result) => result.map_err(|e| {
                ConfigError::new(format!("component `{}`: {e}", scope.root)).at(Place::Component {
                    host: scope.host.name.clone(),
                    path: scope.root.to_string(),
                })
            }),
            None => Err(ConfigError::new(format!(
                "this binary has no component type `{type_name}`"
            ))
            .at(Place::Component {
                host: scope.host.name.clone(),
                path: scope.root.to_string(),
            })
            .hint("the agent must be the same deployment binary as the controller's")),
        },
    }
}

/// Checks the `[components.*]` tables that no host runs, so that their errors do not wait
/// for the day a host lists them: decimal modes, the syntax of templated attributes, and the
/// attributes against their type (with templated strings unrendered, since there is no host
/// to render them for). `configure` does not run for them: it may depend on a host.
fn check_unassigned(
    environment: &Environment,
    registry: &Registry,
    templates: &Templates,
) -> Result<(), ConfigError> {
    for (name, def) in &environment.components {
        if environment
            .hosts
            .iter()
            .any(|h| h.components.contains(name))
        {
            continue;
        }
        let place = environment.source.place(def.attributes.span().start);
        let unassigned = |mut e: ConfigError| {
            e.message = format!("{} (`{name}` is not assigned to any host)", e.message);
            e
        };
        check_decimal_modes(&def.attributes, environment, name).map_err(unassigned)?;
        check_templates(&def.attributes, environment, templates, name).map_err(unassigned)?;
        if let Err(err) = registry.create(&def.type_name, def.attributes.clone()) {
            let mut e = environment.source.toml_error(&err);
            e.message = format!("component `{name}`: {}", e.message);
            if matches!(e.place.as_deref(), None | Some(Place::Path(_))) {
                e = e.at(place);
            }
            return Err(unassigned(e));
        }
    }
    Ok(())
}

/// Compiles every templated string attribute, without rendering it.
fn check_templates(
    value: &Spanned<DeValue<'static>>,
    environment: &Environment,
    templates: &Templates,
    root: &str,
) -> Result<(), ConfigError> {
    match value.get_ref() {
        DeValue::String(s) if is_template(s) => templates
            .check_str(&format!("components.{root}"), s)
            .map_err(|e| {
                ConfigError::new(format!("invalid template in an attribute of `{root}`"))
                    .at(environment.source.place(value.span().start))
                    .caused_by(e)
            }),
        DeValue::Array(items) => items
            .iter()
            .try_for_each(|i| check_templates(i, environment, templates, root)),
        DeValue::Table(table) => table
            .iter()
            .try_for_each(|(_, i)| check_templates(i, environment, templates, root)),
        _ => Ok(()),
    }
}

/// Refuses `mode = 644`: a decimal TOML integer whose digits are all octal digits is an octal
/// mode written without its `0o`, and would set surprising bits (644 is 0o1204). Applies to
/// every attribute called `mode`, at any depth.
fn check_decimal_modes(
    value: &Spanned<DeValue<'static>>,
    environment: &Environment,
    root: &str,
) -> Result<(), ConfigError> {
    match value.get_ref() {
        DeValue::Table(table) => {
            for (key, item) in table.iter() {
                if key.get_ref() == "mode"
                    && let DeValue::Integer(int) = item.get_ref()
                    && int.radix() == 10
                {
                    let digits = int.as_str().replace('_', "");
                    if digits.len() > 1 && digits.chars().all(|c| ('0'..='7').contains(&c)) {
                        let decimal: u64 = digits.parse().unwrap_or(0);
                        return Err(ConfigError::new(format!(
                            "component `{root}`: `mode = {digits}` is the decimal number {decimal} ({decimal:#o} in octal)"
                        ))
                        .at(environment.source.place(item.span().start))
                        .hint(format!(
                            "did you mean 0o{digits}? TOML integers are decimal: write octal modes as 0o{digits} or \"{digits:0>4}\""
                        )));
                    }
                }
                check_decimal_modes(item, environment, root)?;
            }
        }
        DeValue::Array(items) => {
            for item in items {
                check_decimal_modes(item, environment, root)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Renders every string attribute that contains template syntax, in place.
fn render_value(
    value: &mut Spanned<DeValue<'static>>,
    environment: &Environment,
    scope: &Scope,
    root: &str,
) -> Result<(), ConfigError> {
    let span = value.span();
    if environment.is_secret_offset(span.start) {
        // Secret values are never templates: a password may well contain `{{`.
        return Ok(());
    }
    match value.get_mut() {
        DeValue::String(s) if is_template(s) => {
            let rendered = scope
                .templates
                .render_str(&format!("components.{root}"), s, &scope.context)
                .map_err(|e| {
                    ConfigError::new(format!(
                        "cannot render attribute of `{root}` for host `{}`",
                        scope.host.name
                    ))
                    .at(environment.source.place(span.start))
                    .caused_by(e)
                })?;
            *s = std::borrow::Cow::Owned(rendered);
        }
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                render_value(item, environment, scope, root)?;
            }
        }
        DeValue::Table(table) => {
            for (_, item) in table.iter_mut() {
                render_value(item, environment, scope, root)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn attribute_error(environment: &Environment, scope: &Scope, err: &toml::de::Error) -> ConfigError {
    let root = scope.root;
    let mut e = environment.source.toml_error(err);
    e.message = format!("component `{root}`: {}", e.message);
    if matches!(e.place.as_deref(), None | Some(Place::Path(_))) {
        e = e.at(environment.reference_place(&scope.host.name, root));
    }
    e
}

/// Configures a root component and its sub-components, depth first in the order added.
fn configure_root(
    scope: &Scope,
    resources: &mut Resources,
    component: Box<dyn Component>,
) -> Result<Node, (String, anyhow::Error)> {
    let root = scope.root.to_string();
    let mut node = configure_tree(scope, resources, root.clone(), component)?;
    let workdir = Node {
        path: format!("{root} > Workdir"),
        component: Box::new(crate::engine::Workdir(
            scope.workdir.clone(),
            crate::AllowedPaths::new(scope.allowed.iter().cloned()),
        )),
        children: Vec::new(),
    };
    node.children.insert(0, workdir);
    Ok(node)
}

fn configure_tree(
    scope: &Scope,
    resources: &mut Resources,
    path: String,
    mut component: Box<dyn Component>,
) -> Result<Node, (String, anyhow::Error)> {
    let mut cx = Configure {
        scope,
        resources,
        path,
        added: Vec::new(),
    };
    if let Err(e) = component.configure(&mut cx) {
        return Err((cx.path, e));
    }
    let Configure { path, added, .. } = cx;
    let mut children = Vec::with_capacity(added.len());
    for child in added {
        let child_path = format!("{path} > {}", child.label());
        children.push(configure_tree(scope, resources, child_path, child)?);
    }
    Ok(Node {
        path,
        component,
        children,
    })
}

fn unsatisfied_error(
    scopes: &[Scope],
    resources: &Resources,
    pending: &BTreeSet<usize>,
) -> ConfigError {
    let mut lines = Vec::new();
    for step in pending {
        let key = resources.waiting_for(*step).unwrap_or("?");
        lines.push(format!(
            "`{}` requires `{key}`",
            scopes[*step].step_labels[*step]
        ));
    }
    let first = *pending
        .first()
        .expect("an unsatisfied plan has pending steps");
    let scope = &scopes[first];
    let blocked_providers: Vec<String> = pending
        .iter()
        .filter(|s| !resources.provided_by(**s).is_empty())
        .map(|s| format!("`{}`", scope.step_labels[*s]))
        .collect();
    let mut err = ConfigError::new(format!(
        "unsatisfied resource requirements: {}, which no configured component provides",
        lines.join("; ")
    ))
    .at(Place::Component {
        host: scope.host.name.clone(),
        path: scope.root.to_string(),
    });
    err = if blocked_providers.is_empty() {
        err.hint("add a component that provides the resource to some host of the environment")
    } else {
        err.hint(format!(
            "{} stopped at a `require` before providing; components that require each other form a cycle",
            blocked_providers.join(", ")
        ))
    };
    err
}

/// Plan order by Kahn's algorithm, always taking the earliest ready step in environment order;
/// a cycle is reported whole.
fn order_steps(
    count: usize,
    edges: &[(usize, usize, String)],
    labels: &[String],
) -> Result<Vec<usize>, ConfigError> {
    let mut graph: DiGraph<usize, &str> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..count).map(|i| graph.add_node(i)).collect();
    for (from, to, key) in edges {
        graph.add_edge(nodes[*from], nodes[*to], key.as_str());
    }
    let mut cycles: Vec<Vec<usize>> = tarjan_scc(&graph)
        .into_iter()
        .filter(|scc| scc.len() > 1)
        .map(|scc| {
            let mut steps: Vec<usize> = scc.iter().map(|n| graph[*n]).collect();
            steps.sort();
            steps
        })
        .collect();
    if !cycles.is_empty() {
        cycles.sort();
        let cycle = &cycles[0];
        let mut links = Vec::new();
        for (from, to, key) in edges {
            if cycle.contains(from) && cycle.contains(to) {
                links.push(format!(
                    "`{}` requires `{key}` from `{}`",
                    labels[*to], labels[*from]
                ));
            }
        }
        return Err(ConfigError::new(format!(
            "dependency cycle between {}: {}",
            cycle
                .iter()
                .map(|s| format!("`{}`", labels[*s]))
                .collect::<Vec<_>>()
                .join(", "),
            links.join("; ")
        ))
        .hint("a root component cannot be deployed before and after another; move one `provide` to a component that requires nothing from the other"));
    }
    let mut indegree = vec![0usize; count];
    for (_, to, _) in edges {
        indegree[*to] += 1;
    }
    let mut ready: BTreeSet<usize> = (0..count).filter(|i| indegree[*i] == 0).collect();
    let mut order = Vec::with_capacity(count);
    while let Some(step) = ready.pop_first() {
        order.push(step);
        for (from, to, _) in edges {
            if *from == step {
                indegree[*to] -= 1;
                if indegree[*to] == 0 {
                    ready.insert(*to);
                }
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Verdict;
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
            let Attributes::Json(attributes) = &agent.steps()[0].attributes else {
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
}
