//! Templates with minijinja: strict about undefined values, faithful to whitespace, no escaping.
//!
//! Errors name the template and line and quote the failing expression from the template source,
//! never the values of the context: a context may hold secrets.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};

use crate::Project;

/// Renders project template files and inline template strings.
pub struct Templates {
    env: Environment<'static>,
    /// Sources of loaded templates, kept to quote failing expressions in errors.
    sources: Arc<Mutex<BTreeMap<String, Arc<str>>>>,
}

/// Whether a string contains template syntax and so needs rendering.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

impl Templates {
    /// Templates that load files from `project`.
    pub fn new(project: Project) -> Self {
        let sources: Arc<Mutex<BTreeMap<String, Arc<str>>>> = Arc::default();
        let mut env = base_environment();
        let cache = Arc::clone(&sources);
        env.set_loader(move |name| {
            let data = project.read(name).map_err(|e| {
                // Not `TemplateNotFound` for a template outside the project: the file may
                // well exist, and `ignore missing` must not skip it silently.
                let kind = if e.is::<crate::project::OutsideProject>() {
                    minijinja::ErrorKind::InvalidOperation
                } else {
                    minijinja::ErrorKind::TemplateNotFound
                };
                minijinja::Error::new(kind, format!("{e:#}"))
            })?;
            let text = String::from_utf8(data).map_err(|_| {
                minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("template `{name}` is not UTF-8 text"),
                )
            })?;
            cache
                .lock()
                .expect("template source cache lock is never poisoned")
                .insert(name.to_string(), Arc::from(text.as_str()));
            Ok(Some(text))
        });
        Templates { env, sources }
    }

    /// Renders the project template file `name` (project-relative) with `context`.
    pub fn render_file(&self, name: &str, context: &Value) -> anyhow::Result<String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| self.error(&e, None, context))?;
        template
            .render(context)
            .map_err(|e| self.error(&e, None, context))
    }

    /// Renders the inline template `source`, called `name` in errors, with `context`.
    pub fn render_str(&self, name: &str, source: &str, context: &Value) -> anyhow::Result<String> {
        self.env
            .render_named_str(name, source, context)
            .map_err(|e| self.error(&e, Some(source), context))
    }

    /// Compiles the inline template `source` without rendering it: syntax errors are found
    /// without a context (unknown filters only show when rendering).
    pub fn check_str(&self, name: &str, source: &str) -> anyhow::Result<()> {
        self.env
            .template_from_named_str(name, source)
            .map(|_| ())
            .map_err(|e| self.error(&e, Some(source), &Value::UNDEFINED))
    }

    fn error(
        &self,
        err: &minijinja::Error,
        inline: Option<&str>,
        context: &Value,
    ) -> anyhow::Error {
        let source = match inline {
            Some(s) => Some(Arc::from(s)),
            None => err.name().and_then(|n| {
                self.sources
                    .lock()
                    .expect("template source cache lock is never poisoned")
                    .get(n)
                    .cloned()
            }),
        };
        let mut message = describe(err, source.as_deref());
        if let Some(suggestion) = suggest(err, source.as_deref(), context) {
            message.push_str(&format!(" (did you mean `{suggestion}`?)"));
        }
        anyhow::anyhow!(message)
    }
}

/// minijinja's built-in filters and tests, for suggesting a close name for an unknown one.
const FILTERS: &[&str] = &[
    "abs",
    "attr",
    "batch",
    "bool",
    "capitalize",
    "chain",
    "count",
    "d",
    "default",
    "dictsort",
    "e",
    "escape",
    "first",
    "float",
    "format",
    "groupby",
    "indent",
    "int",
    "items",
    "join",
    "last",
    "length",
    "lines",
    "list",
    "lower",
    "map",
    "max",
    "min",
    "pprint",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "safe",
    "select",
    "selectattr",
    "slice",
    "sort",
    "split",
    "string",
    "sum",
    "title",
    "tojson",
    "trim",
    "unique",
    "upper",
    "urlencode",
    "zip",
];
const TESTS: &[&str] = &[
    "boolean",
    "defined",
    "divisibleby",
    "endingwith",
    "eq",
    "equalto",
    "escaped",
    "even",
    "false",
    "filter",
    "float",
    "ge",
    "greaterthan",
    "gt",
    "in",
    "integer",
    "iterable",
    "le",
    "lessthan",
    "lower",
    "lt",
    "mapping",
    "ne",
    "none",
    "number",
    "odd",
    "safe",
    "sameas",
    "sequence",
    "startingwith",
    "string",
    "test",
    "true",
    "undefined",
    "upper",
];

/// A close name for an unknown filter or test, or for an undefined variable among the
/// context's keys (never its values).
fn suggest(err: &minijinja::Error, source: Option<&str>, context: &Value) -> Option<String> {
    let snippet = source.and_then(|s| s.get(err.range()?))?.trim();
    match err.kind() {
        minijinja::ErrorKind::UnknownFilter => {
            crate::error::did_you_mean(snippet, FILTERS.iter().copied()).map(str::to_string)
        }
        minijinja::ErrorKind::UnknownTest => {
            crate::error::did_you_mean(snippet, TESTS.iter().copied()).map(str::to_string)
        }
        minijinja::ErrorKind::UndefinedError | minijinja::ErrorKind::InvalidOperation => {
            paths_in(snippet)
                .iter()
                .find_map(|path| suggest_path(path, context))
        }
        _ => None,
    }
}

/// The dotted names in an expression: `host.nmae + 1` has `host.nmae`.
fn paths_in(snippet: &str) -> Vec<Vec<&str>> {
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut rest = snippet;
    while !rest.is_empty() {
        let c = rest.chars().next().unwrap_or(' ');
        if c.is_ascii_alphabetic() || c == '_' {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            current.push(&rest[..end]);
            rest = &rest[end..];
            if !rest.starts_with('.') && !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
        } else {
            if c != '.' && !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            rest = &rest[c.len_utf8()..];
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// For a dotted name that does not resolve, the same name with its first unknown part
/// replaced by a close key; the start may be nested (`.data.rol` is `host.data.rol`).
fn suggest_path(path: &[&str], context: &Value) -> Option<String> {
    let (prefix, start) = find_start(path[0], context, Vec::new(), 3)?;
    let mut value = start;
    let mut done = prefix;
    let mut corrected = false;
    for part in path {
        let found = |name: &str| value.get_attr(name).ok().filter(|v| !v.is_undefined());
        let (name, next) = match found(part) {
            Some(next) => (part.to_string(), next),
            None => {
                let keys = keys(&value);
                let Some(close) = crate::error::did_you_mean(part, keys.iter().map(String::as_str))
                else {
                    // Nothing close below a corrected part: suggest what was corrected so far.
                    return corrected.then(|| done.join("."));
                };
                corrected = true;
                let next = found(close)?;
                (close.to_string(), next)
            }
        };
        done.push(name);
        value = next;
    }
    corrected.then(|| done.join("."))
}

/// The map where a dotted name starts: the context itself, or the nearest nested map that
/// has the first part as a key; when none has it, the context.
fn find_start(
    first: &str,
    value: &Value,
    prefix: Vec<String>,
    depth: usize,
) -> Option<(Vec<String>, Value)> {
    let keys = keys(value);
    if keys.iter().any(|k| k == first) {
        return Some((prefix, value.clone()));
    }
    if depth > 0 {
        for key in &keys {
            let Ok(child) = value.get_attr(key) else {
                continue;
            };
            let mut p = prefix.clone();
            p.push(key.clone());
            if let Some(found) = find_start(first, &child, p, depth - 1)
                && !found.0.is_empty()
            {
                return Some(found);
            }
        }
    }
    prefix.is_empty().then(|| (prefix, value.clone()))
}

/// The string keys of a map value.
fn keys(value: &Value) -> Vec<String> {
    if value.kind() != minijinja::value::ValueKind::Map {
        return Vec::new();
    }
    value
        .try_iter()
        .map(|it| it.filter_map(|k| k.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn base_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // Debug info would capture context values (possibly secrets) into errors; the failing
    // expression's source range is enough to place an error.
    env.set_debug(false);
    env
}

/// One line naming template, line, kind and the failing expression; no context values.
fn describe(err: &minijinja::Error, source: Option<&str>) -> String {
    let mut msg = String::new();
    if let Some(name) = err.name() {
        msg.push_str(&format!("template `{name}`"));
        if let Some(line) = err.line() {
            msg.push_str(&format!(" line {line}"));
        }
        msg.push_str(": ");
    }
    msg.push_str(&err.kind().to_string());
    if let Some(detail) = err.detail() {
        msg.push_str(&format!(" ({detail})"));
    }
    if let (Some(range), Some(source)) = (err.range(), source)
        && let Some(snippet) = source.get(range)
        && !snippet.contains('\n')
        && snippet.len() <= 80
    {
        msg.push_str(&format!(" at `{}`", snippet.trim()));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    fn templates() -> Templates {
        Templates::new(Project::new("/nonexistent"))
    }

    #[test]
    fn keeps_trailing_newline_and_does_not_escape() {
        let t = templates();
        let out = t
            .render_str("x", "<{{ a }}>\n", &context! { a => "&" })
            .unwrap();
        assert_eq!(out, "<&>\n");
    }

    #[test]
    fn undefined_values_are_errors_naming_the_expression() {
        let t = templates();
        let err = t
            .render_str(
                "page.j2",
                "a\n{{ host.nme }}\n",
                &context! { host => context!{ name => "s3cret" } },
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("template `page.j2` line 2: undefined value"),
            "{err}"
        );
        assert!(err.contains("`host.nme`"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn undefined_names_and_unknown_filters_suggest_close_names() {
        let t = templates();
        let cx = context! {
            port => 1,
            x => "s3cret",
            host => context! { name => "n", data => context! { role => "r" } },
        };
        for (src, want) in [
            (
                "{{ prot }}",
                "undefined value at `prot` (did you mean `port`?)",
            ),
            ("{{ x | uppper }}", "at `uppper` (did you mean `upper`?)"),
            ("{{ host.nmae }}", "(did you mean `host.name`?)"),
            ("{{ hots.name }}", "(did you mean `host.name`?)"),
            ("{{ hots.nmae }}", "(did you mean `host.name`?)"),
            ("{{ prot + 1 }}", "(did you mean `port`?)"),
            ("{% if prot %}{% endif %}", "(did you mean `port`?)"),
            ("{{ host.data.rol }}", "(did you mean `host.data.role`?)"),
            ("{{ x is strnig }}", "(did you mean `string`?)"),
        ] {
            let err = t.render_str("x", src, &cx).unwrap_err().to_string();
            assert!(err.ends_with(want), "{src}: {err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
        let err = t
            .render_str("x", "{{ zzzzzz }}", &cx)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("did you mean"), "{err}");
    }

    #[test]
    fn syntax_errors_name_template_and_line() {
        let t = templates();
        let err = t
            .render_str("bad.j2", "ok\n{% if %}\n", &context! {})
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("template `bad.j2` line 2: syntax error"),
            "{err}"
        );
    }
}
