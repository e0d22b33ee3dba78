//! `DataFormat`: writing a data value as JSON, YAML or TOML for a [`File`](crate::File).
//!
//! Output is deterministic: maps are written in key order (the values are
//! `serde_json::Value`s, whose maps are sorted), and every file ends with a newline.
//!
//! YAML is written by the small emitter below rather than by a YAML crate: only writing is
//! needed, the crate that most projects used (`serde_yaml`) is no longer maintained and its
//! forks differ in quality, and a value of the JSON data model has one safe YAML spelling
//! that fits in a page. Every string is double-quoted (JSON's escapes are YAML's), so that no
//! reader takes `no`, `on`, `1.0` or `~` for anything but a string, YAML 1.1 readers
//! included.

use anyhow::bail;
use serde::Deserialize;
use serde_json::Value;

/// How a file's `data` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Pretty-printed JSON, two spaces of indentation.
    Json,
    /// Block-style YAML, strings double-quoted.
    Yaml,
    /// TOML; the data must be a table, and TOML has no null.
    Toml,
}

impl DataFormat {
    /// The format the path's extension names: `.json`, `.yaml` or `.yml`, `.toml`.
    pub(crate) fn from_path(path: &str) -> anyhow::Result<DataFormat> {
        let extension = std::path::Path::new(path)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default();
        Ok(match extension {
            "json" => DataFormat::Json,
            "yaml" | "yml" => DataFormat::Yaml,
            "toml" => DataFormat::Toml,
            _ => {
                return Err(batou_core::ConfigError::new(format!(
                    "cannot tell the format of `data` from the path `{path}`"
                ))
                .hint("set `format` to \"json\", \"yaml\" or \"toml\"")
                .into());
            }
        })
    }

    /// `data` written in this format, ending with a newline.
    pub(crate) fn render(self, data: &Value) -> anyhow::Result<String> {
        match self {
            DataFormat::Json => {
                let mut text = serde_json::to_string_pretty(data)?;
                text.push('\n');
                Ok(text)
            }
            DataFormat::Yaml => {
                let mut out = String::new();
                node(data, 0, &mut out);
                Ok(out)
            }
            DataFormat::Toml => {
                if !data.is_object() {
                    bail!("`data` written as TOML must be a table");
                }
                if let Some(path) = null_in(data, String::new()) {
                    bail!("`data` holds a null at `{path}`, which TOML cannot write");
                }
                Ok(toml::to_string(data)?)
            }
        }
    }
}

/// The dotted path of the first null in `value`, if any.
fn null_in(value: &Value, path: String) -> Option<String> {
    match value {
        Value::Null => Some(path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| null_in(v, format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            null_in(v, p)
        }),
        _ => None,
    }
}

/// Writes `value` where a node starts (the start of the document, or after `- `), nested
/// lines indented by `indent`.
fn node(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (i, (key, v)) in map.iter().enumerate() {
                if i > 0 {
                    pad(indent, out);
                }
                out.push_str(&yaml_key(key));
                out.push(':');
                if is_block(v) {
                    out.push('\n');
                    pad(indent + 2, out);
                    node(v, indent + 2, out);
                } else {
                    out.push(' ');
                    node(v, indent + 2, out);
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    pad(indent, out);
                }
                out.push_str("- ");
                node(v, indent + 2, out);
            }
        }
        scalar => {
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
}

/// Whether `value` is written as indented lines of its own.
fn is_block(value: &Value) -> bool {
    match value {
        Value::Object(map) => !map.is_empty(),
        Value::Array(items) => !items.is_empty(),
        _ => false,
    }
}

fn pad(indent: usize, out: &mut String) {
    out.extend(std::iter::repeat_n(' ', indent));
}

/// A scalar (or an empty collection) in flow style.
fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            let text = n.to_string();
            // YAML 1.1 readers take an exponent as a float only with a dot and a sign.
            match text.split_once('e') {
                Some((mantissa, exponent)) if n.is_f64() => {
                    let mantissa = if mantissa.contains('.') {
                        mantissa.to_string()
                    } else {
                        format!("{mantissa}.0")
                    };
                    let exponent = if exponent.starts_with(['-', '+']) {
                        exponent.to_string()
                    } else {
                        format!("+{exponent}")
                    };
                    format!("{mantissa}e{exponent}")
                }
                _ => text,
            }
        }
        Value::String(s) => quoted(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// A double-quoted YAML string: JSON's escapes, plus the characters that YAML reads as line
/// breaks or a byte order mark.
fn quoted(s: &str) -> String {
    let json = serde_json::to_string(s).expect("a string always serializes");
    json.replace('\u{85}', "\\u0085")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
        .replace('\u{feff}', "\\ufeff")
}

/// A map key: plain when it cannot be read as anything but that string, else quoted.
fn yaml_key(key: &str) -> String {
    const RESERVED: &[&str] = &[
        "y", "yes", "n", "no", "true", "false", "on", "off", "null", "nan", "inf",
    ];
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !RESERVED.contains(&key.to_ascii_lowercase().as_str());
    if plain { key.to_string() } else { quoted(key) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> Value {
        json!({
            "name": "shop",
            "no": "no",
            "workers": 4,
            "ratio": 0.5,
            "big": 1e20,
            "debug": false,
            "tags": ["a", "on", "1.0"],
            "db": {"host": "db1", "port": 5432, "options": {}},
            "servers": [{"host": "a", "weight": 1}, {"host": "b", "weight": 2}],
            "matrix": [[1, 2], []],
            "nothing": null,
            "odd key": "line\nbreak \"quoted\"",
        })
    }

    #[test]
    fn yaml_is_block_style_sorted_with_every_string_quoted() {
        let yaml = DataFormat::Yaml.render(&data()).unwrap();
        assert_eq!(
            yaml,
            r#"big: 1.0e+20
db:
  host: "db1"
  options: {}
  port: 5432
debug: false
matrix:
  - - 1
    - 2
  - []
name: "shop"
"no": "no"
nothing: null
"odd key": "line\nbreak \"quoted\""
ratio: 0.5
servers:
  - host: "a"
    weight: 1
  - host: "b"
    weight: 2
tags:
  - "a"
  - "on"
  - "1.0"
workers: 4
"#
        );
    }

    #[test]
    fn json_is_pretty_and_toml_refuses_what_it_cannot_write() {
        let json = DataFormat::Json
            .render(&json!({"b": [1], "a": "x"}))
            .unwrap();
        assert_eq!(json, "{\n  \"a\": \"x\",\n  \"b\": [\n    1\n  ]\n}\n");
        let toml = DataFormat::Toml
            .render(&json!({"name": "shop", "db": {"port": 5432}, "tags": ["a"]}))
            .unwrap();
        assert_eq!(
            toml,
            "name = \"shop\"\ntags = [\"a\"]\n\n[db]\nport = 5432\n"
        );
        let err = DataFormat::Toml.render(&data()).unwrap_err().to_string();
        assert_eq!(
            err,
            "`data` holds a null at `nothing`, which TOML cannot write"
        );
        let err = DataFormat::Toml
            .render(&json!([1]))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "`data` written as TOML must be a table");
    }

    #[test]
    fn the_extension_names_the_format() {
        assert_eq!(DataFormat::from_path("a/b.yml").unwrap(), DataFormat::Yaml);
        assert_eq!(DataFormat::from_path("b.json").unwrap(), DataFormat::Json);
        assert_eq!(DataFormat::from_path("b.toml").unwrap(), DataFormat::Toml);
        let err = DataFormat::from_path("app.conf").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot tell the format of `data` from the path `app.conf`"
        );
    }
}
