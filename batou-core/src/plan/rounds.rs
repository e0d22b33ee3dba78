//! Configuring steps in rounds until every `require` is satisfied and resources settle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::component::Component;
use crate::configure::{Configure, Scope};
use crate::environment::Host;
use crate::error::{ConfigError, Place};
use crate::plan::attributes::Attributes;
use crate::plan::step::Node;
use crate::project::Project;
use crate::registry::Registry;
use crate::resources::{Resources, Unsatisfied};
use crate::secrets::SecretFiles;
use crate::template::Templates;
use crate::workdir::Workdir;

/// Rounds of configuration before resources are declared unsettled.
const MAX_ROUNDS: usize = 64;

/// One step to configure: a root component of a host with its type and attributes.
pub(super) struct Slot<'a> {
    pub(super) host: &'a Host,
    pub(super) root: String,
    pub(super) type_name: String,
    pub(super) attributes: Attributes<'a>,
}

/// What configuring steps needs besides the steps themselves.
pub(super) struct Context<'a> {
    pub(super) environment: &'a str,
    pub(super) base_dir: &'a Path,
    pub(super) allow_paths: &'a [String],
    pub(super) project: &'a Project,
    pub(super) registry: &'a Registry,
    pub(super) secret_files: &'a SecretFiles,
    pub(super) bundles: &'a crate::bundle::Bundles,
    pub(super) syntax: &'a crate::TemplateSyntax,
    pub(super) facts: &'a crate::FactsInput,
    /// Where errors go: the first ends configuring, or each is kept and the steps that
    /// failed are left out while the others go on.
    pub(super) errors: &'a super::Errors,
    /// The rollout's balancer root and rolled hosts, for its templates' `rollout.*`, and
    /// the hosts in rotation (`None`: all of them).
    pub(super) rollout: Option<(&'a crate::rollout::JobRollout, Option<&'a [String]>)>,
}

pub(super) struct Built<'a> {
    pub(super) trees: Vec<Node>,
    /// Attributes with templates rendered for each slot's host.
    pub(super) attributes: Vec<Attributes<'a>>,
    pub(super) resources: Resources,
}

/// Configures every slot, in rounds until every `require` is satisfied and stable.
pub(super) fn configure_slots<'a>(
    slots: &[Slot<'a>],
    cx: &Context,
    mut resources: Resources,
) -> Result<Built<'a>, ConfigError> {
    let mut allowed: Vec<PathBuf> = vec![crate::paths::normalize(cx.base_dir)];
    allowed.extend(
        cx.allow_paths
            .iter()
            .map(|p| crate::paths::normalize(Path::new(p))),
    );
    let allowed_paths = crate::AllowedPaths::new(allowed.iter().cloned());
    let labels: Vec<String> = slots
        .iter()
        .map(|s| format!("{}: {}", s.host.name, s.root))
        .collect();
    // One template environment per host: a host's steps share compiled templates, and a
    // template's reads are recorded for the host's first step, which is enough because a
    // host's job carries what all of its steps read.
    let mut host_templates: BTreeMap<&str, Templates> = BTreeMap::new();
    for (step, slot) in slots.iter().enumerate() {
        host_templates
            .entry(slot.host.name.as_str())
            .or_insert_with(|| Templates::with_syntax(cx.project.for_step(step), cx.syntax));
    }
    let mut scopes: Vec<Scope> = slots
        .iter()
        .enumerate()
        .map(|(step, slot)| {
            let workdir = cx.base_dir.join("work").join(&slot.root);
            let host = slot.host;
            let facts = cx.facts.of(&host.name);
            let context = minijinja::context! {
                host => minijinja::context! {
                    name => &host.name,
                    data => minijinja::Value::from_serialize(&host.data),
                    address => host.address.as_deref().unwrap_or(&host.name),
                    facts => minijinja::Value::from_object(crate::facts::FactsValue {
                        host: host.name.clone(),
                        facts: facts.clone(),
                        reads: cx.facts.reads.clone(),
                    }),
                },
                environment => minijinja::context! {
                    name => cx.environment,
                    base_dir => cx.base_dir.to_string_lossy(),
                },
                component => minijinja::context! { name => &slot.root },
                workdir => workdir.to_string_lossy(),
            };
            // Only the balancer's step sees the rolled hosts: no other host's job carries
            // them, so no other template could render the same on its agent.
            let context = match cx.rollout {
                Some((rollout, in_rotation)) if rollout.balancer == slot.root => {
                    minijinja::context! {
                        rollout => crate::rollout::template_value(&rollout.hosts, in_rotation),
                        ..context
                    }
                }
                _ => context,
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
                allowed_paths: &allowed_paths,
                project: cx.project.for_step(step),
                templates: &host_templates[slot.host.name.as_str()],
                secret_files: cx.secret_files,
                bundles: cx.bundles,
                context,
                facts,
                fact_reads: cx.facts.reads.clone(),
            }
        })
        .collect();
    // Release roots are configured first, so that every root of their host sees their
    // paths in templates (`release`, `releases.<root>`) when its attributes are rendered.
    let mut failed: BTreeSet<usize> = BTreeSet::new();
    let releases = release_variables(slots, cx, &scopes, &mut resources.clone(), &mut failed)?;
    for scope in &mut scopes {
        if let Some(vars) = releases.get(scope.host.name.as_str()) {
            let release = (vars.len() == 1).then(|| vars.values().next().cloned());
            scope.context = minijinja::context! {
                releases => minijinja::Value::from_serialize(vars),
                release => minijinja::Value::from_serialize(release.flatten()),
                ..scope.context.clone()
            };
        }
    }

    // Attributes are rendered once per step, before any configure runs.
    let mut attributes = Vec::with_capacity(slots.len());
    for (step, (slot, scope)) in slots.iter().zip(&scopes).enumerate() {
        if failed.contains(&step) {
            attributes.push(None);
            continue;
        }
        match slot.attributes.render(scope) {
            Ok(a) => attributes.push(Some(a)),
            Err(err) => {
                cx.errors.report(err)?;
                failed.insert(step);
                attributes.push(None);
            }
        }
    }

    let mut trees: Vec<Option<Node>> = (0..slots.len()).map(|_| None).collect();
    let mut pending: BTreeSet<usize> = (0..slots.len()).filter(|s| !failed.contains(s)).collect();
    for _ in 0..MAX_ROUNDS {
        let before = (resources.clone(), pending.clone());
        for step in pending.clone() {
            resources.reset(step);
            let created = attributes[step]
                .as_ref()
                .expect("pending steps rendered their attributes")
                .create(cx.registry, &slots[step].type_name, &scopes[step]);
            let component = match created {
                Ok(c) => c,
                Err(err) => {
                    cx.errors.report(err)?;
                    failed.insert(step);
                    pending.remove(&step);
                    continue;
                }
            };
            match configure_root(&scopes[step], &mut resources, component) {
                Ok(tree) => {
                    trees[step] = Some(tree);
                    pending.remove(&step);
                }
                Err((_, err)) if err.chain().any(|c| c.is::<Unsatisfied>()) => {}
                Err((path, err)) => {
                    cx.errors
                        .report(configure_error(&scopes[step], path, err))?;
                    resources.reset(step);
                    failed.insert(step);
                    pending.remove(&step);
                }
            }
        }
        for (step, tree) in trees.iter_mut().enumerate() {
            if !pending.contains(&step) && resources.is_stale(step) {
                *tree = None;
                pending.insert(step);
            }
        }
        if pending.is_empty() && !failed.is_empty() {
            // Only when errors are kept: the caller has them.
            return Err(super::Errors::kept());
        }
        if pending.is_empty() {
            return Ok(Built {
                trees: trees
                    .into_iter()
                    .map(|t| t.expect("every step is configured once the plan settled"))
                    .collect(),
                attributes: attributes
                    .into_iter()
                    .map(|a| a.expect("every step rendered its attributes"))
                    .collect(),
                resources,
            });
        }
        if (resources.clone(), pending.clone()) == before {
            let mut err = unsatisfied_error(&scopes, &resources, &pending);
            if !failed.is_empty() {
                err = err.hint(
                    "a root component that failed to configure (see above) may be the provider",
                );
            }
            cx.errors.report(err)?;
            return Err(super::Errors::kept());
        }
    }
    cx.errors.report(
        ConfigError::new(format!(
            "resources did not settle after {MAX_ROUNDS} rounds of configuration"
        ))
        .hint("a component provides values that depend on what it requires in a loop"),
    )?;
    Err(super::Errors::kept())
}

/// What templates see of each release root, by host and root: `id`, `digest`, `path` (this
/// plan's release) and `current` (the link that follows activations and rollbacks).
type ReleaseVariables = BTreeMap<String, BTreeMap<String, BTreeMap<&'static str, String>>>;

/// Configures the slots whose type the registry configures first (releases) with the base
/// template context, and collects the bundles they asked for.
fn release_variables(
    slots: &[Slot],
    cx: &Context,
    scopes: &[Scope],
    resources: &mut Resources,
    failed: &mut BTreeSet<usize>,
) -> Result<ReleaseVariables, ConfigError> {
    let mut out: ReleaseVariables = BTreeMap::new();
    for (step, slot) in slots.iter().enumerate() {
        if !cx.registry.configures_first(&slot.type_name) {
            continue;
        }
        let scope = &scopes[step];
        let component = match slot
            .attributes
            .render(scope)
            .and_then(|a| a.create(cx.registry, &slot.type_name, scope))
        {
            Ok(c) => c,
            Err(err) => {
                cx.errors.report(err)?;
                failed.insert(step);
                continue;
            }
        };
        match configure_root(scope, resources, component) {
            Ok(_) => {}
            // Configured again once what it requires is there.
            Err((_, err)) if err.chain().any(|c| c.is::<Unsatisfied>()) => continue,
            // A failed build is not run twice.
            Err((path, err)) => {
                cx.errors.report(configure_error(scope, path, err))?;
                failed.insert(step);
                continue;
            }
        }
        let Some(bundle) = cx.bundles.of_step(step) else {
            continue;
        };
        let dir = crate::bundle::release_root(cx.base_dir, &slot.root);
        let vars = BTreeMap::from([
            ("id", bundle.id.clone()),
            ("digest", bundle.digest.clone()),
            ("path", dir.join(&bundle.id).to_string_lossy().into_owned()),
            (
                "current",
                dir.join("current").to_string_lossy().into_owned(),
            ),
        ]);
        out.entry(slot.host.name.clone())
            .or_default()
            .insert(slot.root.clone(), vars);
    }
    Ok(out)
}

/// The error of a step whose configure failed at component `path`.
fn configure_error(scope: &Scope, path: String, err: anyhow::Error) -> ConfigError {
    // A component's own hint stays visible: only the outermost one is shown.
    let hint = err
        .chain()
        .find_map(|c| c.downcast_ref::<ConfigError>()?.hint.clone());
    let mut e = ConfigError::new(format!("cannot configure `{path}`"))
        .at(Place::Component {
            host: scope.host.name.clone(),
            path,
        })
        .caused_by(err);
    e.hint = hint;
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
        component: Box::new(Workdir(scope.workdir.clone(), scope.allowed_paths.clone())),
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
