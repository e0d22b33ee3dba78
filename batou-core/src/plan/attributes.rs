//! A root component's attributes: checked, rendered for a host, and turned into a component.

use toml::Spanned;
use toml::de::DeValue;

use crate::configure::Scope;
use crate::environment::Environment;
use crate::error::{ConfigError, Place};
use crate::registry::Registry;
use crate::template::{Templates, is_template};

/// A root component's attributes: from the environment file (with spans for errors) or as
/// shipped to an agent.
#[derive(Clone)]
pub(crate) enum Attributes {
    Toml(Spanned<DeValue<'static>>),
    Json(serde_json::Value),
}

/// Checks the `[components.*]` tables that no host runs, so that their errors do not wait
/// for the day a host lists them: decimal modes, the syntax of templated attributes, and the
/// attributes against their type (with templated strings unrendered, since there is no host
/// to render them for). `configure` does not run for them: it may depend on a host.
pub(super) fn check_unassigned(
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
pub(super) fn check_decimal_modes(
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
pub(super) fn render_value(
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

pub(super) fn attribute_error(
    environment: &Environment,
    scope: &Scope,
    err: &toml::de::Error,
) -> ConfigError {
    let root = scope.root;
    let mut e = environment.source.toml_error(err);
    e.message = format!("component `{root}`: {}", e.message);
    if matches!(e.place.as_deref(), None | Some(Place::Path(_))) {
        e = e.at(environment.reference_place(&scope.host.name, root));
    }
    e
}
