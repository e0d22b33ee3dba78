//! The names index `secrets/<env>.names`: the shape of an environment's secrets without
//! their values, in cleartext beside the encrypted file, so that an offline check can
//! configure the environment with no identity present.
//!
//! The index is the cleartext's TOML with every value replaced: strings by
//! `<secret:NAME>` (the name masking uses), integers and floats by 0, booleans by `false`,
//! dates by 1970-01-01. The `component`, `attribute`, `kind`, `length` and `public` keys of
//! `[[generated]]` entries are kept, since they are not secret. A comment line records the
//! SHA-256 of the encrypted file it was written for, so that a reader tells a current index
//! from a stale one. Writing and reading the files is the callers'; this module only makes
//! and reads the text.

use sha2::{Digest, Sha256};

use crate::error::ConfigError;

/// The comment line that records which encrypted file an index describes.
const DIGEST_PREFIX: &str = "# sha256 of the encrypted file: ";

/// `secrets/<env>.names`, relative to the project root.
pub fn index_path(environment: &str) -> String {
    format!("secrets/{environment}.names")
}

/// What an index says about the encrypted file beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexState {
    /// It was written for exactly this encrypted file.
    Current,
    /// It was written for another version of the encrypted file (or records none).
    Stale,
}

/// The index text for `cleartext`, the decrypted secrets whose encrypted form is
/// `encrypted`; `environment` names the files in its header.
pub fn index_text(
    environment: &str,
    cleartext: &str,
    encrypted: &[u8],
) -> Result<String, ConfigError> {
    let mut table: toml::Table = cleartext.parse().map_err(|e: toml::de::Error| {
        ConfigError::new(format!(
            "cannot index the secrets of `{environment}`: {}",
            e.message()
        ))
    })?;
    for (key, value) in table.iter_mut() {
        if key == "generated" {
            if let toml::Value::Array(entries) = value {
                for entry in entries.iter_mut() {
                    if let toml::Value::Table(entry) = entry {
                        let name = format!(
                            "components.{}.{}",
                            entry
                                .get("component")
                                .and_then(|v| v.as_str())
                                .unwrap_or("?"),
                            entry
                                .get("attribute")
                                .and_then(|v| v.as_str())
                                .unwrap_or("?"),
                        );
                        for (k, v) in entry.iter_mut() {
                            if !matches!(
                                k.as_str(),
                                "component" | "attribute" | "kind" | "length" | "public"
                            ) {
                                placeholder(&name, v);
                            }
                        }
                    }
                }
            }
            continue;
        }
        placeholder(key, value);
    }
    let body = toml::to_string(&table).expect("a TOML table serializes");
    Ok(format!(
        "# The secrets of `{age}` without their values: names and shape only.\n\
         # Written by every `secrets` command that writes `{age}`; read by `{environment} check`,\n\
         # which needs no identity. Commit it with `{age}`; do not edit it.\n\
         {DIGEST_PREFIX}{digest}\n\n{body}",
        age = super::secrets_path(environment),
        digest = sha256_hex(encrypted),
    ))
}

/// Whether `index` (the text of `secrets/<env>.names`) describes `encrypted`.
pub fn index_state(index: &str, encrypted: &[u8]) -> IndexState {
    let recorded = index
        .lines()
        .find_map(|l| l.strip_prefix(DIGEST_PREFIX))
        .map(str::trim);
    if recorded == Some(sha256_hex(encrypted).as_str()) {
        IndexState::Current
    } else {
        IndexState::Stale
    }
}

/// Replaces every value below `value` by its placeholder; `name` is its dotted name.
fn placeholder(name: &str, value: &mut toml::Value) {
    match value {
        toml::Value::String(s) => *s = format!("<secret:{name}>"),
        toml::Value::Integer(i) => *i = 0,
        toml::Value::Float(f) => *f = 0.0,
        toml::Value::Boolean(b) => *b = false,
        toml::Value::Datetime(d) => {
            *d = "1970-01-01".parse().expect("a valid date");
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                placeholder(&format!("{name}[{i}]"), item);
            }
        }
        toml::Value::Table(table) => {
            for (k, v) in table.iter_mut() {
                placeholder(&format!("{name}.{k}"), v);
            }
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEARTEXT: &str = r#"
[components.database]
password = "correct horse"
port = 5432
options = ["a", "b"]

[hosts.db1.data]
token = "t0k3n-v4lue"

[files]
"shop.key" = "KEY"

[[generated]]
component = "app"
attribute = "vars.key"
kind = "hex"
value = "abcdef"
"#;

    #[test]
    fn an_index_has_every_name_and_no_value() {
        let text = index_text("prod", CLEARTEXT, b"age bytes").unwrap();
        for value in ["correct horse", "5432", "t0k3n-v4lue", "KEY", "abcdef"] {
            assert!(!text.contains(value), "{value} in {text}");
        }
        let secrets = super::super::Secrets::parse("secrets/prod.names", text.clone()).unwrap();
        assert_eq!(
            secrets.names(),
            [
                "components.app.vars.key",
                "components.database.options[0]",
                "components.database.options[1]",
                "components.database.password",
                "files.shop.key",
                "hosts.db1.data.token"
            ]
        );
        assert!(
            text.contains("password = \"<secret:components.database.password>\""),
            "{text}"
        );
        assert!(text.contains("port = 0"), "{text}");
        assert!(text.contains("kind = \"hex\""), "{text}");
        assert_eq!(index_state(&text, b"age bytes"), IndexState::Current);
        assert_eq!(index_state(&text, b"other bytes"), IndexState::Stale);
        assert_eq!(index_state("", b"age bytes"), IndexState::Stale);
    }
}
