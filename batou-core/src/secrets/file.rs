//! The secrets file format: the cleartext TOML inside `secrets/<env>.age`, checked for shape.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{ConfigError, SourceText};

/// Secret host data: `(key, value)` pairs with the key's span.
pub(crate) type HostData = Vec<(Spanned<String>, serde_json::Value)>;

/// The decrypted secrets of an environment, checked for shape.
#[derive(Debug)]
pub struct Secrets {
    /// The cleartext, kept to merge and place attribute overrides.
    pub(crate) source: SourceText,
    /// The root components with attribute overrides (`[components.<name>]`), with the spans
    /// of their names; the overrides themselves are parsed again from `source` when merged.
    pub(crate) components: Vec<Spanned<String>>,
    /// Host data per host.
    pub(crate) hosts: Vec<(Spanned<String>, HostData)>,
    /// Named secret files.
    pub files: BTreeMap<String, String>,
    /// The generated secrets (`[[generated]]`): component and attribute path, with the span
    /// of the entry's `component` for errors.
    pub(crate) generated: Vec<(Spanned<String>, Vec<String>)>,
    /// Every string value with its dotted name, for masking.
    pub values: Vec<(String, String)>,
}

impl Secrets {
    /// Parses decrypted secrets; `path` names the encrypted file in error places.
    pub fn parse(path: &str, text: String) -> Result<Self, ConfigError> {
        let text: Arc<str> = Arc::from(text);
        let source = SourceText::new(path, Arc::clone(&text));
        let doc = DeTable::parse(&text).map_err(|e| source.toml_error(&e))?;
        let mut secrets = Secrets {
            source: source.clone(),
            components: Vec::new(),
            hosts: Vec::new(),
            files: BTreeMap::new(),
            generated: Vec::new(),
            values: Vec::new(),
        };
        for (key, value) in doc.into_inner() {
            let section = key.get_ref().to_string();
            let at = source.place(key.span().start);
            if section == "generated" {
                for entry in super::generate::entries(&source, value)? {
                    let name = format!(
                        "components.{}.{}",
                        entry.component,
                        entry.attribute.join(".")
                    );
                    if let Some(v) = entry.value.get_ref().as_str() {
                        secrets.values.push((name, v.to_string()));
                    }
                    secrets.generated.push((
                        Spanned::new(entry.at..entry.at, entry.component),
                        entry.attribute,
                    ));
                }
                continue;
            }
            let DeValue::Table(table) = value.into_inner() else {
                return Err(ConfigError::new(format!("`{section}` must be a table")).at(at));
            };
            match section.as_str() {
                "components" => {
                    for (name, attributes) in table {
                        let n = name.get_ref().to_string();
                        if !attributes.get_ref().is_table() {
                            return Err(ConfigError::new(format!(
                                "`components.{n}` must be a table of attributes"
                            ))
                            .at(source.place(attributes.span().start)));
                        }
                        collect_values(
                            &format!("components.{n}"),
                            &attributes,
                            &mut secrets.values,
                        );
                        secrets.components.push(Spanned::new(name.span(), n));
                    }
                }
                "hosts" => {
                    for (name, host) in table {
                        let n = name.get_ref().to_string();
                        let host_span = host.span();
                        let DeValue::Table(mut host) = host.into_inner() else {
                            return Err(ConfigError::new(format!("`hosts.{n}` must be a table"))
                                .at(source.place(host_span.start)));
                        };
                        if let Some((other, _)) = host.iter().find(|(k, _)| k.get_ref() != "data") {
                            return Err(ConfigError::new(format!(
                                "unknown key `{}` in `hosts.{n}`",
                                other.get_ref()
                            ))
                            .at(source.place(other.span().start))
                            .hint("secrets of a host go into `[hosts.<name>.data]`"));
                        }
                        let mut data = Vec::new();
                        if let Some(table) = host.remove("data") {
                            let Some(entries) = table.get_ref().as_table() else {
                                return Err(ConfigError::new(format!(
                                    "`hosts.{n}.data` must be a table"
                                ))
                                .at(source.place(table.span().start)));
                            };
                            for (k, v) in entries.iter() {
                                collect_values(
                                    &format!("hosts.{n}.data.{}", k.get_ref()),
                                    v,
                                    &mut secrets.values,
                                );
                                let json = serde_json::Value::deserialize(
                                    toml::de::ValueDeserializer::from(v.clone()),
                                )
                                .map_err(|e| source.toml_error(&e))?;
                                data.push((Spanned::new(k.span(), k.get_ref().to_string()), json));
                            }
                        }
                        secrets.hosts.push((Spanned::new(name.span(), n), data));
                    }
                }
                "files" => {
                    for (name, content) in table {
                        let n = name.get_ref().to_string();
                        let Some(content) = content.get_ref().as_str() else {
                            return Err(ConfigError::new(format!(
                                "secret file `files.\"{n}\"` must be a string"
                            ))
                            .at(source.place(content.span().start)));
                        };
                        secrets
                            .values
                            .push((format!("files.{n}"), content.to_string()));
                        secrets.files.insert(n, content.to_string());
                    }
                }
                _ => {
                    return Err(ConfigError::new(format!("unknown section `{section}`"))
                        .at(at)
                        .suggest(&section, ["components", "hosts", "files", "generated"])
                        .hint("secrets have `[components.<name>]`, `[hosts.<name>.data]`, `[files]` and `[[generated]]`"));
                }
            }
        }
        Ok(secrets)
    }

    /// The dotted names of every secret, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.values.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// The cleartext.
    pub fn text(&self) -> &str {
        &self.source.text
    }

    /// The path of the encrypted file, as named in error places.
    pub fn path(&self) -> &str {
        &self.source.path
    }

    /// Registers every value for masking in this process's output.
    pub fn register_masks(&self) {
        for (name, value) in &self.values {
            crate::redact::register(name, value);
        }
    }
}

fn collect_values(name: &str, value: &Spanned<DeValue<'_>>, out: &mut Vec<(String, String)>) {
    match value.get_ref() {
        DeValue::String(s) => out.push((name.to_string(), s.to_string())),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_values(&format!("{name}[{i}]"), item, out);
            }
        }
        DeValue::Table(table) => {
            for (k, v) in table.iter() {
                collect_values(&format!("{name}.{}", k.get_ref()), v, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleartext_shape_is_checked() {
        let s = Secrets::parse(
            "secrets/p.age",
            "[components.app]\npw = \"abc\"\n[hosts.db.data]\nt = \"x\"\n[files]\n\"k.pem\" = \"KEY\"\n"
                .into(),
        )
        .unwrap();
        assert_eq!(
            s.names(),
            ["components.app.pw", "files.k.pem", "hosts.db.data.t"]
        );
        let err = Secrets::parse("secrets/p.age", "\n[component.app]\n".into()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown section `component` in secrets/p.age:2:2 (did you mean `components`?)"
        );
    }
}
