//! Configuring steps in rounds until every `require` is satisfied and resources settle.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::component::Component;
use crate::configure::{Configure, Scope};
use crate::environment::{Environment, Host};
use crate::error::{ConfigError, Place};
use crate::plan::attributes::{Attributes, attribute_error, check_decimal_modes, render_value};
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
    pub(super) attributes: Attributes,
}

/// What configuring steps needs besides the steps themselves.
pub(super) struct Context<'a> {
    pub(super) environment: &'a str,
    /// The environment file, for placing attribute errors (absent on agents).
    pub(super) source: Option<&'a Environment>,
    pub(super) base_dir: &'a Path,
    pub(super) allow_paths: &'a [String],
    pub(super) project: &'a Project,
    pub(super) registry: &'a Registry,
    pub(super) secret_files: &'a SecretFiles,
}

pub(super) struct Built {
    pub(super) trees: Vec<Node>,
    /// Attributes with templates rendered for each slot's host.
    pub(super) attributes: Vec<Attributes>,
    pub(super) resources: Resources,
}

/// Configures every slot, in rounds until every `require` is satisfied and stable.
pub(super) fn configure_slots(
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
                project: cx.project.for_step(step),
                templates: Templates::new(cx.project.for_step(step)),
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
        component: Box::new(Workdir(
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
