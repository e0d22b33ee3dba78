//! Merging secret attribute overrides into an environment's root components.
//!
//! Merged values keep their spans into the secrets file; what marks them as secret is their
//! key path, recorded in [`SecretKeys`] beside the merged table. Rendering skips them (a
//! password may well contain `{{`) and errors inside them are placed in the secrets file.

use toml::Spanned;
use toml::de::DeValue;

use crate::error::{ConfigError, SourceText};

/// The key paths, within one root component's attribute table, of the values that came from
/// the secrets file: each marks its whole subtree as secret.
#[derive(Debug, Clone, Default)]
pub(crate) struct SecretKeys(Vec<Vec<String>>);

impl SecretKeys {
    /// Whether the key or value at `path` (keys from the attribute table down) is secret.
    pub(crate) fn contains(&self, path: &[String]) -> bool {
        self.0.iter().any(|k| path.starts_with(k))
    }
}

/// Merges secret attribute overrides `from` into an environment component's attributes
/// `into`, recording each inserted key in `secret`; a key set in both places is an error.
/// `name` is the dotted name of the table (`components.app`), `at` its key path.
pub(crate) fn merge<'a>(
    into: &mut Spanned<DeValue<'a>>,
    from: Spanned<DeValue<'a>>,
    name: &str,
    at: &[String],
    secret: &mut SecretKeys,
    secrets: &SourceText,
) -> Result<(), ConfigError> {
    let (DeValue::Table(into), DeValue::Table(from)) = (into.get_mut(), from.into_inner()) else {
        unreachable!("callers merge tables");
    };
    for (key, value) in from {
        let dotted = format!("{name}.{}", key.get_ref());
        let mut path = at.to_vec();
        path.push(key.get_ref().to_string());
        match into.get_mut(key.get_ref().as_ref()) {
            Some(existing) if existing.get_ref().is_table() && value.get_ref().is_table() => {
                merge(existing, value, &dotted, &path, secret, secrets)?;
            }
            Some(_) => {
                return Err(ConfigError::new(format!(
                    "`{dotted}` is set both in the environment and in the secrets"
                ))
                .at(secrets.place(key.span().start))
                .hint("set each attribute in one place: remove it from the environment file"));
            }
            None => {
                into.insert(key, value);
                secret.0.push(path);
            }
        }
    }
    Ok(())
}
