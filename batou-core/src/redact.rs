//! Masking secret values in everything a run prints or records.
//!
//! A process registers every secret value it holds (the controller: all secrets of the
//! environment; an agent: those its job carries). Every output sink (human and JSON output,
//! error messages, the agent's protocol messages and journal) passes its text through
//! [`mask`], which replaces each registered value by `<secret:NAME>`: the reader sees which
//! secret was hidden, never its value. Multi-line values are also masked line by line, so
//! that a diff, which prints a file line by line, cannot show them either.

use std::borrow::Cow;
use std::sync::RwLock;

/// Registered `(value, name)` pairs, longest value first.
static SECRETS: RwLock<Vec<(String, String)>> = RwLock::new(Vec::new());

/// Lines of multi-line secrets shorter than this are not masked on their own (they would
/// hide common text such as a lone `}`); the whole value always is.
const MIN_LINE: usize = 8;

/// Registers a secret value under `name` (e.g. `components.app.db_password`).
pub fn register(name: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    let mut add = |v: &str| {
        if !secrets.iter().any(|(known, _)| known == v) {
            secrets.push((v.to_string(), name.to_string()));
        }
    };
    add(value);
    if value.contains('\n') {
        for line in value.lines().map(str::trim) {
            if line.len() >= MIN_LINE {
                add(line);
            }
        }
    }
    secrets.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
}

/// Whether any secret is registered.
pub fn active() -> bool {
    !SECRETS.read().unwrap_or_else(|e| e.into_inner()).is_empty()
}

/// `text` with every registered secret value replaced by `<secret:NAME>`.
pub fn mask(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = Cow::Borrowed(text);
    for (value, name) in secrets.iter() {
        if out.contains(value.as_str()) {
            out = Cow::Owned(out.replace(value.as_str(), &format!("<secret:{name}>")));
        }
    }
    out
}

/// Masks every string (and object key) inside a JSON value, in place.
pub fn mask_json(value: &mut serde_json::Value) {
    if !active() {
        return;
    }
    walk(value);
}

fn walk(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => {
            if let Cow::Owned(masked) = mask(s) {
                *s = masked;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
        serde_json::Value::Object(map) => {
            let entries = std::mem::take(map);
            for (key, mut item) in entries {
                walk(&mut item);
                map.insert(mask(&key).into_owned(), item);
            }
        }
        _ => {}
    }
}

/// A serializable value turned into JSON with every secret masked.
pub fn to_masked_json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    let mut json = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    mask_json(&mut json);
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_whole_values_and_lines_of_multi_line_values() {
        register("components.t.password", "hunter2-but-longer");
        register(
            "files.t.key",
            "-----BEGIN KEY-----\nc2VjcmV0LWtleS1ieXRlcw==\n}\n",
        );
        assert_eq!(
            mask("password=hunter2-but-longer;"),
            "password=<secret:components.t.password>;"
        );
        assert_eq!(
            mask("host:     +c2VjcmV0LWtleS1ieXRlcw==\n"),
            "host:     +<secret:files.t.key>\n"
        );
        // Short lines of a multi-line value stay readable elsewhere.
        assert_eq!(mask("fn main() {}"), "fn main() {}");
        let mut json =
            serde_json::json!({"a": ["x hunter2-but-longer y"], "hunter2-but-longer": 1});
        mask_json(&mut json);
        assert_eq!(
            json,
            serde_json::json!({"a": ["x <secret:components.t.password> y"], "<secret:components.t.password>": 1})
        );
    }
}
