//! A root component's attributes: one source that checks them, renders them for a host,
//! turns them into a component, and places its own errors.
//!
//! On the controller they come from the environment file with the secrets merged in, as TOML
//! with spans, so that an error names `file:line:column` in whichever of the two files the
//! value came from; on an agent they are the JSON the controller shipped, and an error names
//! the component on the host.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::DeValue;

use crate::component::Component;
use crate::configure::Scope;
use crate::environment::{Environment, MergedAttributes};
use crate::error::{ConfigError, Place, SourceText};
use crate::registry::Registry;
use crate::secrets::SecretKeys;
use crate::template::{Templates, is_template};

/// A root component's attributes, with what it takes to place their errors.
#[derive(Clone)]
pub(crate) struct Attributes<'a> {
    repr: Repr<'a>,
}

#[derive(Clone)]
enum Repr<'a> {
    /// From the environment file, secrets merged in.
    File {
        value: Spanned<DeValue<'a>>,
        /// Which keys came from the secrets file: never rendered, placed in that file.
        secret: SecretKeys,
        environment: &'a Environment,
    },
    /// As shipped to an agent, templates already rendered.
    Shipped(serde_json::Value),
}

impl<'a> Attributes<'a> {
    /// Attributes from the environment file (and its merged secrets).
    pub(super) fn from_environment(
        merged: MergedAttributes<'a>,
        environment: &'a Environment,
    ) -> Self {
        Attributes {
            repr: Repr::File {
                value: merged.value,
                secret: merged.secret,
                environment,
            },
        }
    }

    /// Attributes as an agent received them.
    pub(super) fn shipped(value: serde_json::Value) -> Self {
        Attributes {
            repr: Repr::Shipped(value),
        }
    }

    /// The attributes for `scope`'s host: decimal modes refused, templated strings rendered
    /// (secret values never are: a password may well contain `{{`). Shipped attributes were
    /// rendered by the controller.
    pub(super) fn render(&self, scope: &Scope) -> Result<Attributes<'a>, ConfigError> {
        let Repr::File {
            value,
            secret,
            environment,
        } = &self.repr
        else {
            return Ok(self.clone());
        };
        let places = Places {
            secret,
            environment,
        };
        let mut value = value.clone();
        check_decimal_modes(&value, &places, &mut Vec::new(), scope.root)?;
        render_value(&mut value, &places, &mut Vec::new(), scope, scope.root)?;
        Ok(Attributes {
            repr: Repr::File {
                value,
                secret: secret.clone(),
                environment,
            },
        })
    }

    /// A fresh component of `type_name` from these attributes, configured for `scope`.
    pub(super) fn create(
        &self,
        registry: &Registry,
        type_name: &str,
        scope: &Scope,
    ) -> Result<Box<dyn Component>, ConfigError> {
        let root = scope.root;
        let at_component = || Place::Component {
            host: scope.host.name.clone(),
            path: root.to_string(),
        };
        match &self.repr {
            Repr::File {
                value,
                secret,
                environment,
            } => registry.create(type_name, value.clone()).map_err(|err| {
                let places = Places {
                    secret,
                    environment,
                };
                let mut e = places.toml_error(value, &err);
                e.message = format!("component `{root}`: {}", e.message);
                if matches!(e.place.as_deref(), None | Some(Place::Path(_))) {
                    e = e.at(environment.reference_place(&scope.host.name, root));
                }
                e
            }),
            Repr::Shipped(value) => match registry.create_from_json(type_name, value.clone()) {
                Some(result) => result.map_err(|e| {
                    ConfigError::new(format!("component `{root}`: {e}")).at(at_component())
                }),
                None => Err(ConfigError::new(format!(
                    "this binary has no component type `{type_name}`"
                ))
                .at(at_component())
                .hint("the agent must be the same deployment binary as the controller's")),
            },
        }
    }

    /// The attributes as a host job carries them, or why they cannot be.
    pub(super) fn to_json(&self) -> Result<serde_json::Value, String> {
        match &self.repr {
            Repr::File { value, .. } => {
                serde_json::Value::deserialize(value.clone().into_deserializer())
                    .map_err(|e| e.message().to_string())
            }
            Repr::Shipped(value) => Ok(value.clone()),
        }
    }
}

/// Checks the `[components.*]` tables that no host runs, so that their errors do not wait
/// for the day a host lists them: decimal modes, the syntax of templated attributes, and the
/// attributes against their type (with templated strings unrendered, since there is no host
/// to render them for). `configure` does not run for them: it may depend on a host.
pub(super) fn check_unassigned(
    environment: &Environment,
    attributes: &BTreeMap<String, MergedAttributes<'_>>,
    registry: &Registry,
    templates: &Templates,
    errors: &super::Errors,
) -> Result<(), ConfigError> {
    let assigned: std::collections::BTreeSet<&String> = environment
        .hosts
        .iter()
        .flat_map(|h| &h.components)
        .collect();
    for (name, def) in &environment.components {
        if assigned.contains(name) {
            continue;
        }
        let Some(merged) = attributes.get(name) else {
            continue;
        };
        let value = &merged.value;
        let places = Places {
            secret: &merged.secret,
            environment,
        };
        let place = environment.source.place(def.span.start);
        let unassigned = |mut e: ConfigError| {
            e.message = format!("{} (`{name}` is not assigned to any host)", e.message);
            e
        };
        let checked = check_decimal_modes(value, &places, &mut Vec::new(), name)
            .and_then(|()| check_templates(value, &places, &mut Vec::new(), templates, name));
        if let Err(e) = checked {
            errors.report(unassigned(e))?;
            continue;
        }
        if let Err(err) = registry.create(&def.type_name, value.clone()) {
            let mut e = places.toml_error(value, &err);
            e.message = format!("component `{name}`: {}", e.message);
            if matches!(e.place.as_deref(), None | Some(Place::Path(_))) {
                e = e.at(place);
            }
            errors.report(unassigned(e))?;
        }
    }
    Ok(())
}

/// Places spans of one attribute table: in the environment file, or in the secrets file for
/// the keys marked secret.
struct Places<'p> {
    secret: &'p SecretKeys,
    environment: &'p Environment,
}

impl Places<'_> {
    /// The file that a key or value at `path` came from.
    fn source(&self, path: &[String]) -> &SourceText {
        match &self.environment.secrets {
            Some(secrets) if self.secret.contains(path) => secrets,
            _ => &self.environment.source,
        }
    }

    fn place(&self, path: &[String], offset: usize) -> Place {
        self.source(path).place(offset)
    }

    /// A TOML deserialize error of `value`, placed in the file its span belongs to: the
    /// secrets file when only a secret key or value has that span.
    fn toml_error(&self, value: &Spanned<DeValue<'_>>, err: &toml::de::Error) -> ConfigError {
        let (mut in_environment, mut in_secrets) = (false, false);
        if let Some(span) = err.span() {
            spans(value, &mut Vec::new(), &mut |path, s| {
                if s == span {
                    if self.secret.contains(path) {
                        in_secrets = true;
                    } else {
                        in_environment = true;
                    }
                }
            });
        }
        match &self.environment.secrets {
            Some(secrets) if in_secrets && !in_environment => secrets.toml_error(err),
            _ => self.environment.source.toml_error(err),
        }
    }
}

/// Calls `f` with the key path and span of every key and value below `value`.
fn spans(
    value: &Spanned<DeValue<'_>>,
    path: &mut Vec<String>,
    f: &mut impl FnMut(&[String], Range<usize>),
) {
    f(path, value.span());
    match value.get_ref() {
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                spans(item, path, f);
                path.pop();
            }
        }
        DeValue::Table(table) => {
            for (key, item) in table.iter() {
                path.push(key.get_ref().to_string());
                f(path, key.span());
                spans(item, path, f);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Compiles every templated string attribute, without rendering it.
fn check_templates(
    value: &Spanned<DeValue<'_>>,
    places: &Places,
    path: &mut Vec<String>,
    templates: &Templates,
    root: &str,
) -> Result<(), ConfigError> {
    match value.get_ref() {
        DeValue::String(s) if is_template(s) => templates
            .check_str(&format!("components.{root}"), s)
            .map_err(|e| {
                ConfigError::new(format!("invalid template in an attribute of `{root}`"))
                    .at(places.place(path, value.span().start))
                    .caused_by(e)
            }),
        DeValue::Array(items) => items.iter().enumerate().try_for_each(|(i, item)| {
            path.push(i.to_string());
            check_templates(item, places, path, templates, root)?;
            path.pop();
            Ok(())
        }),
        DeValue::Table(table) => table.iter().try_for_each(|(key, item)| {
            path.push(key.get_ref().to_string());
            check_templates(item, places, path, templates, root)?;
            path.pop();
            Ok(())
        }),
        _ => Ok(()),
    }
}

/// Refuses `mode = 644`: a decimal TOML integer whose digits are all octal digits is an octal
/// mode written without its `0o`, and would set surprising bits (644 is 0o1204). Applies to
/// every attribute called `mode`, at any depth.
fn check_decimal_modes(
    value: &Spanned<DeValue<'_>>,
    places: &Places,
    path: &mut Vec<String>,
    root: &str,
) -> Result<(), ConfigError> {
    match value.get_ref() {
        DeValue::Table(table) => {
            for (key, item) in table.iter() {
                path.push(key.get_ref().to_string());
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
                        .at(places.place(path, item.span().start))
                        .hint(format!(
                            "did you mean 0o{digits}? TOML integers are decimal: write octal modes as 0o{digits} or \"{digits:0>4}\""
                        )));
                    }
                }
                check_decimal_modes(item, places, path, root)?;
                path.pop();
            }
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                check_decimal_modes(item, places, path, root)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// Renders every string attribute that contains template syntax, in place, except secrets.
fn render_value(
    value: &mut Spanned<DeValue<'_>>,
    places: &Places,
    path: &mut Vec<String>,
    scope: &Scope,
    root: &str,
) -> Result<(), ConfigError> {
    if places.secret.contains(path) {
        // Secret values are never templates: a password may well contain `{{`.
        return Ok(());
    }
    let span = value.span();
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
                    .at(places.place(path, span.start))
                    .caused_by(e)
                })?;
            *s = std::borrow::Cow::Owned(rendered);
        }
        DeValue::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                render_value(item, places, path, scope, root)?;
                path.pop();
            }
        }
        DeValue::Table(table) => {
            for (key, item) in table.iter_mut() {
                path.push(key.get_ref().to_string());
                render_value(item, places, path, scope, root)?;
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}
