//! Checks a `--json` stream line by line against `docs/json-events.md`: every line's event is
//! documented, every field it has is documented with a matching type, and every field the
//! documentation does not mark `(optional)` is there.

use std::collections::BTreeMap;

/// The documented fields of each event: `event -> [(field, type)]`.
fn documented() -> BTreeMap<String, Vec<(String, String)>> {
    let doc = std::fs::read_to_string(crate::workspace_root().join("docs/json-events.md"))
        .expect("docs/json-events.md is readable");
    let mut events: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        if let Some(name) = line
            .strip_prefix("### `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            events.insert(name.to_string(), Vec::new());
            current = Some(name.to_string());
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let (Some(name), ["", field, ty, _, ""]) = (&current, &cells[..])
            && let Some(field) = field.strip_prefix('`').and_then(|f| f.strip_suffix('`'))
        {
            events
                .get_mut(name)
                .expect("the section exists")
                .push((field.to_string(), ty.trim_matches('`').to_string()));
        }
    }
    events
}

fn type_matches(ty: &str, value: &serde_json::Value) -> bool {
    use serde_json::Value;
    let (ty, nullable) = match ty.strip_suffix('?') {
        Some(t) => (t, true),
        None => (ty, false),
    };
    match (ty, value) {
        (_, Value::Null) => nullable,
        ("string", Value::String(_)) | ("boolean", Value::Bool(_)) => true,
        ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => n.is_u64() || n.is_i64(),
        ("object", Value::Object(_)) => true,
        ("string[]", Value::Array(a)) => a.iter().all(Value::is_string),
        ("object[]", Value::Array(a)) => a.iter().all(Value::is_object),
        _ => false,
    }
}

/// Panics, naming the line, unless every line of `stdout` is a documented event with
/// documented fields of the documented types.
pub fn assert_documented_events(stdout: &str) {
    let events = documented();
    for line in stdout.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let map = value
            .as_object()
            .unwrap_or_else(|| panic!("no object: {line}"));
        let name = map["event"]
            .as_str()
            .unwrap_or_else(|| panic!("no event: {line}"));
        let fields = events
            .get(name)
            .unwrap_or_else(|| panic!("event `{name}` is not documented: {line}"));
        for (key, value) in map {
            if key == "event" || key == "ts" {
                continue;
            }
            let (_, ty) = fields
                .iter()
                .find(|(f, _)| f == key)
                .unwrap_or_else(|| panic!("`{name}.{key}` is not documented: {line}"));
            let ty = ty.trim_end_matches(" (optional)");
            assert!(
                type_matches(ty, value),
                "`{name}.{key}` is not {ty}: {line}"
            );
        }
        for (field, ty) in fields {
            if !ty.ends_with("(optional)") {
                assert!(map.contains_key(field), "`{name}` lacks `{field}`: {line}");
            }
        }
    }
}
