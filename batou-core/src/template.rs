//! Templates with minijinja: strict about undefined values, faithful to whitespace, no escaping.
//!
//! Errors name the template and line and quote the failing expression from the template source,
//! never the values of the context: a context may hold secrets.
//!
//! For templates that projects bring from Jinja2 (batou's among them), Python's methods on
//! strings, maps and lists (`.items()`, `.upper()`, `.format(..)`) come from minijinja-contrib's
//! `pycompat`, and line statements (`@@ if ...` on a line of its own) are available with a
//! prefix the environment chooses ([`TemplateSyntax`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

use crate::Project;

/// Renders project template files and inline template strings.
pub struct Templates {
    env: Environment<'static>,
    /// The syntax, for [`jinja2_blank_lines`] before compiling.
    syntax: TemplateSyntax,
    /// Sources of loaded templates, kept to quote failing expressions in errors.
    sources: Arc<Mutex<BTreeMap<String, Arc<str>>>>,
}

/// The template syntax beyond Jinja's defaults that an environment chooses: line statements
/// and line comments, as Jinja2's `line_statement_prefix` and `line_comment_prefix`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSyntax {
    /// A line starting with this (after blanks) is a statement: `@@ for x in xs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_statement_prefix: Option<String>,
    /// A line starting with this, or its rest after it, is a comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line_comment_prefix: Option<String>,
}

impl TemplateSyntax {
    /// Whether this is Jinja's default syntax.
    pub fn is_default(&self) -> bool {
        self.line_statement_prefix.is_none() && self.line_comment_prefix.is_none()
    }

    /// minijinja's syntax configuration, or why there is none: an empty prefix, or one that
    /// clashes with a delimiter or the other prefix.
    fn config(&self) -> Result<minijinja::syntax::SyntaxConfig, String> {
        for (name, prefix) in [
            ("line_statement_prefix", &self.line_statement_prefix),
            ("line_comment_prefix", &self.line_comment_prefix),
        ] {
            if let Some(p) = prefix
                && p.trim().is_empty()
            {
                return Err(format!("`{name}` must not be empty or blank"));
            }
        }
        let mut builder = minijinja::syntax::SyntaxConfig::builder();
        if let Some(p) = &self.line_statement_prefix {
            builder.line_statement_prefix(p.clone());
        }
        if let Some(p) = &self.line_comment_prefix {
            builder.line_comment_prefix(p.clone());
        }
        // Jinja2 drops the blank lines after a line statement; `jinja2_blank_lines` turns
        // them into line comments, which needs a line comment prefix.
        if self.line_statement_prefix.is_some() && self.line_comment_prefix.is_none() {
            builder.line_comment_prefix(BLANK_LINE_MARK);
        }
        builder.build().map_err(|e| {
            e.detail()
                .map_or_else(|| e.kind().to_string(), str::to_string)
        })
    }

    /// Checks that minijinja accepts this syntax.
    pub fn check(&self) -> Result<(), String> {
        self.config().map(|_| ())
    }
}

/// The line comment prefix that stands for a blank line after a line statement when the
/// environment chose no line comment prefix: control characters that no template holds.
const BLANK_LINE_MARK: &str = "\u{1}\u{2}";

/// `source` with the blank lines that follow a line statement turned into line comments, so
/// that they render as nothing, as in Jinja2 (whose line statements end with every blank line
/// after them), while every line keeps its number for errors; and without the colon that
/// Jinja2 allows at the end of a line statement.
fn jinja2_blank_lines<'a>(source: &'a str, syntax: &TemplateSyntax) -> std::borrow::Cow<'a, str> {
    let Some(prefix) = &syntax.line_statement_prefix else {
        return std::borrow::Cow::Borrowed(source);
    };
    let mark = syntax
        .line_comment_prefix
        .as_deref()
        .unwrap_or(BLANK_LINE_MARK);
    let mut out = String::with_capacity(source.len());
    let mut after_statement = false;
    let mut changed = false;
    for line in source.split_inclusive('\n') {
        if after_statement && line.trim().is_empty() {
            out.push_str(mark);
            if line.ends_with('\n') {
                out.push('\n');
            }
            changed = true;
            continue;
        }
        after_statement = line.trim_start().starts_with(prefix.as_str());
        let body = line.trim_end();
        if after_statement && body.ends_with(':') {
            // Jinja2 allows a colon after a line statement that opens a block
            // (`@@ for x in xs:`); a blank keeps the columns.
            out.push_str(&body[..body.len() - 1]);
            out.push(' ');
            out.push_str(&line[body.len()..]);
            changed = true;
            continue;
        }
        out.push_str(line);
    }
    if changed {
        std::borrow::Cow::Owned(out)
    } else {
        std::borrow::Cow::Borrowed(source)
    }
}

/// Whether a string contains template syntax and so needs rendering.
pub(crate) fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

impl Templates {
    /// Templates that load files from `project`, in Jinja's default syntax.
    pub fn new(project: Project) -> Self {
        Self::with_syntax(project, &TemplateSyntax::default())
    }

    /// Templates that load files from `project`, in `syntax` (checked when the environment
    /// was loaded: see [`TemplateSyntax::check`]).
    pub fn with_syntax(project: Project, syntax: &TemplateSyntax) -> Self {
        let sources: Arc<Mutex<BTreeMap<String, Arc<str>>>> = Arc::default();
        let mut env = base_environment();
        if !syntax.is_default() {
            // An environment's syntax is checked when it is loaded, and a job carries the
            // one its controller checked.
            env.set_syntax(
                syntax
                    .config()
                    .expect("template syntax is checked when the environment is loaded"),
            );
        }
        let cache = Arc::clone(&sources);
        let loader_syntax = syntax.clone();
        env.set_loader(move |name| {
            let data = read_template(&project, name).map_err(LoadError::into_minijinja)?;
            let text = crate::environment::utf8(name, data).map_err(|mut e| {
                e.message = format!("template {}", e.message);
                LoadError::new(e.into(), minijinja::ErrorKind::InvalidOperation).into_minijinja()
            })?;
            let text = jinja2_blank_lines(&text, &loader_syntax).into_owned();
            cache
                .lock()
                .expect("template source cache lock is never poisoned")
                .insert(name.to_string(), Arc::from(text.as_str()));
            Ok(Some(text))
        });
        Templates {
            env,
            syntax: syntax.clone(),
            sources,
        }
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
        let source = jinja2_blank_lines(source, &self.syntax);
        self.env
            .render_named_str(name, &source, context)
            .map_err(|e| self.error(&e, Some(&source), context))
    }

    /// Compiles the inline template `source` without rendering it: syntax errors are found
    /// without a context (unknown filters only show when rendering).
    pub fn check_str(&self, name: &str, source: &str) -> anyhow::Result<()> {
        let source = jinja2_blank_lines(source, &self.syntax);
        self.env
            .template_from_named_str(name, &source)
            .map(|_| ())
            .map_err(|e| self.error(&e, Some(&source), &Value::UNDEFINED))
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
        if err.kind() == minijinja::ErrorKind::BadInclude
            && let Some(inner) =
                std::error::Error::source(err).and_then(|c| c.downcast_ref::<minijinja::Error>())
        {
            return self.error(inner, None, context).context(format!(
                "{}cannot render the included template{}",
                heading(err),
                snippet(err, source.as_deref())
            ));
        }
        if let Some(load) = load_error(err) {
            // The template itself could not be loaded: that is the whole error. An include or
            // import that could not load its template names the place of the include.
            return match (err.name(), err.line()) {
                (Some(_), Some(_)) => load.to_anyhow().context(format!(
                    "{}cannot load the template{}",
                    heading(err),
                    snippet(err, source.as_deref())
                )),
                _ => load.to_anyhow(),
            };
        }
        let mut message = describe(err, source.as_deref());
        if let Some(suggestion) = crate::facts::quietly(|| suggest(err, source.as_deref(), context))
        {
            message.push_str(&format!(" (did you mean `{suggestion}`?)"));
        }
        anyhow::anyhow!(message)
    }
}

/// The bytes of the template `name`, with errors worded for a template.
fn read_template(project: &Project, name: &str) -> Result<Vec<u8>, LoadError> {
    use minijinja::ErrorKind::{InvalidOperation, TemplateNotFound};
    if name.contains('\0') {
        let e = anyhow::anyhow!(
            "template name `{}` contains a NUL byte",
            name.escape_debug()
        );
        return Err(LoadError::new(e, InvalidOperation));
    }
    project.read(name).map_err(|e| {
        if let Some(outside) = e.downcast_ref::<crate::project::OutsideProject>() {
            // Not `TemplateNotFound`: the file may well exist, and `ignore missing` must not
            // skip it silently.
            let e = anyhow::anyhow!(outside.describe("template"));
            LoadError::new(e, InvalidOperation)
        } else if e.is::<crate::project::MissingProjectFile>() {
            let e = anyhow::anyhow!("template `{name}` does not exist");
            LoadError::new(e, TemplateNotFound)
        } else {
            LoadError::new(e, InvalidOperation)
        }
    })
}

/// Why a template could not be loaded, carried through minijinja as an error's source so that
/// it is shown in our words and with its hint, not behind minijinja's error kind.
#[derive(Debug)]
struct LoadError {
    kind: minijinja::ErrorKind,
    /// The error chain, outermost first.
    chain: Vec<String>,
    hint: Option<String>,
}

impl LoadError {
    fn new(err: anyhow::Error, kind: minijinja::ErrorKind) -> Self {
        let hint = err
            .chain()
            .find_map(|c| c.downcast_ref::<crate::ConfigError>()?.hint.clone());
        LoadError {
            kind,
            chain: err.chain().map(|c| c.to_string()).collect(),
            hint,
        }
    }

    fn into_minijinja(self) -> minijinja::Error {
        minijinja::Error::new(self.kind, self.chain.join(": ")).with_source(self)
    }

    fn to_anyhow(&self) -> anyhow::Error {
        let mut chain = self.chain.iter().rev();
        let innermost = chain.next().cloned().unwrap_or_default();
        let mut err = match &self.hint {
            Some(hint) if self.chain.len() == 1 => {
                anyhow::Error::new(crate::ConfigError::new(innermost).hint(hint.clone()))
            }
            _ => anyhow::anyhow!(innermost),
        };
        for outer in chain {
            err = err.context(outer.clone());
        }
        err
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.chain.join(": "))
    }
}

impl std::error::Error for LoadError {}

/// The load error behind a minijinja error, if loading a template is what failed.
fn load_error(err: &minijinja::Error) -> Option<&LoadError> {
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        if let Some(load) = c.downcast_ref::<LoadError>() {
            return Some(load);
        }
        cause = c.source();
    }
    None
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
    // Python's methods (`.items()`, `.upper()`, `.format(..)`), as Jinja2 templates call them.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env
}

/// One line naming template, line, what is wrong and the failing expression; no context
/// values.
fn describe(err: &minijinja::Error, source: Option<&str>) -> String {
    let mut msg = heading(err);
    let quoted = snippet(err, source);
    match err.kind() {
        // minijinja's detail only repeats the name (`filter uppper is unknown`).
        minijinja::ErrorKind::UnknownFilter | minijinja::ErrorKind::UnknownTest
            if !quoted.is_empty() =>
        {
            let what = if err.kind() == minijinja::ErrorKind::UnknownFilter {
                "filter"
            } else {
                "test"
            };
            let name = quoted.trim_start_matches(" at ");
            msg.push_str(&format!("unknown {what} {name}"));
            return msg;
        }
        minijinja::ErrorKind::TemplateNotFound => {
            msg.push_str("the included template does not exist");
            msg.push_str(&quoted);
            return msg;
        }
        _ => {}
    }
    msg.push_str(&err.kind().to_string());
    if let Some(detail) = err.detail() {
        msg.push_str(&format!(" ({detail})"));
    }
    msg.push_str(&quoted);
    msg
}

/// `template `name` line N: `, as far as the error knows them.
fn heading(err: &minijinja::Error) -> String {
    let mut msg = String::new();
    if let Some(name) = err.name() {
        msg.push_str(&format!("template `{name}`"));
        if let Some(line) = err.line() {
            msg.push_str(&format!(" line {line}"));
        }
        msg.push_str(": ");
    }
    msg
}

/// ` at `expression`` quoting the failing expression from the source, or nothing.
fn snippet(err: &minijinja::Error, source: Option<&str>) -> String {
    if let (Some(range), Some(source)) = (err.range(), source)
        && let Some(snippet) = source.get(range)
        && !snippet.contains('\n')
        && snippet.len() <= 80
    {
        return format!(" at `{}`", snippet.trim());
    }
    String::new()
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
            (
                "{{ x | uppper }}",
                "unknown filter `uppper` (did you mean `upper`?)",
            ),
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

    #[test]
    fn load_errors_are_worded_for_templates_without_minijinja_kinds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.j2"), b"ok\nb\xe9d\n").unwrap();
        std::fs::write(dir.path().join("inc.j2"), "{% include \"nope.j2\" %}").unwrap();
        std::fs::write(
            dir.path().join("opt.j2"),
            "[{% include \"nope.j2\" ignore missing %}]",
        )
        .unwrap();
        std::fs::write(dir.path().join("outer.j2"), "a\n{% include \"inner.j2\" %}").unwrap();
        std::fs::write(dir.path().join("inner.j2"), "{{ prot }}").unwrap();
        let t = Templates::new(Project::new(dir.path()));
        let cx = context! { port => 1 };
        let chain = |name: &str| {
            let err = t.render_file(name, &cx).unwrap_err();
            err.chain().map(|c| c.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(
            chain("bad.j2"),
            ["template `bad.j2` is not UTF-8 text: invalid byte 0xe9 in bad.j2:2:2"]
        );
        let err = t.render_file("bad.j2", &cx).unwrap_err();
        let hint = err
            .chain()
            .find_map(|c| c.downcast_ref::<crate::ConfigError>()?.hint.clone());
        assert_eq!(hint.as_deref(), Some("save the file as UTF-8"));
        assert_eq!(
            chain("missing.j2"),
            ["template `missing.j2` does not exist"]
        );
        assert_eq!(chain("a\0b"), ["template name `a\\0b` contains a NUL byte"]);
        assert_eq!(
            chain("../x.j2"),
            ["template `../x.j2` lies outside the project"]
        );
        assert_eq!(
            chain("inc.j2"),
            [
                "template `inc.j2` line 1: the included template does not exist at `include \"nope.j2\"`"
            ]
        );
        assert_eq!(t.render_file("opt.j2", &cx).unwrap(), "[]");
        assert_eq!(
            chain("outer.j2"),
            [
                "template `outer.j2` line 2: cannot render the included template at `include \"inner.j2\"`",
                "template `inner.j2` line 1: undefined value at `prot` (did you mean `port`?)",
            ]
        );
        for chain in [chain("bad.j2"), chain("inc.j2"), chain("outer.j2")] {
            for cause in chain {
                assert!(!cause.contains("invalid operation"), "{cause}");
                assert!(!cause.contains("not found"), "{cause}");
            }
        }
    }

    #[test]
    fn unknown_filters_and_tests_are_named_once() {
        let t = templates();
        let err = t
            .render_str("x", "{{ 1 | uppper }}", &context! {})
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "template `x` line 1: unknown filter `uppper` (did you mean `upper`?)"
        );
        let err = t
            .render_str("x", "{{ 1 is strnig }}", &context! {})
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "template `x` line 1: unknown test `strnig` (did you mean `string`?)"
        );
    }

    /// A template written for batou (Jinja2 with `line_statement_prefix="@@"`,
    /// `keep_trailing_newline=True`, `StrictUndefined`), and the bytes Jinja2 3.1.6 renders
    /// from it with the context of the test below.
    const BATOU_TEMPLATE: &str = r#"# {{ component.name }} on {{ host.name }}
@@ for name, port in ports.items()
[{{ name.upper() }}]
listen = {{ "{}:{}".format(address, port) }}
@@ if name.startswith("web")
workers = {{ workers }}
@@ else
workers = 1
@@ endif

@@ endfor
@@ if not flags
# no flags
@@ endif
  @@ for f in flags|sort
flag = {{ f.strip().lower() }}
  @@ endfor
keys = {{ ports.keys()|list|join(",") }}
names = {{ " ".join(["a", "b"]) }}
title = {{ "hello world".title() }} / {{ "x-y".replace("-", "_") }} / {{ "a,b".split(",")|length }}
count = {{ [1, 1, 2].count(1) }} / {{ ports.get("missing", "none") }}
"#;
    const BATOU_RENDERED: &str = r#"# app on web1
[ADMIN]
listen = 127.0.0.1:9090
workers = 1
[WEB]
listen = 127.0.0.1:8080
workers = 4
flag = debug
flag = trace
keys = admin,web
names = a b
title = Hello World / x_y / 2
count = 2 / none
"#;

    fn batou_syntax() -> TemplateSyntax {
        TemplateSyntax {
            line_statement_prefix: Some("@@".into()),
            line_comment_prefix: None,
        }
    }

    #[test]
    fn a_batou_template_renders_the_bytes_jinja2_renders() {
        let t = Templates::with_syntax(Project::new("/nonexistent"), &batou_syntax());
        let cx = context! {
            component => context! { name => "app" },
            host => context! { name => "web1" },
            ports => context! { admin => 9090, web => 8080 },
            address => "127.0.0.1",
            workers => 4,
            flags => vec![" Debug", "TRACE "],
        };
        let out = t.render_str("batou.cfg.j2", BATOU_TEMPLATE, &cx).unwrap();
        assert_eq!(out, BATOU_RENDERED);
    }

    #[test]
    fn blank_lines_after_line_statements_vanish_as_in_jinja2() {
        let t = Templates::with_syntax(Project::new("/nonexistent"), &batou_syntax());
        // Each pair: a template and the bytes Jinja2 3.1.6 renders from it.
        for (source, jinja2) in [
            ("a\n@@ if true\n\n  \n  x\n@@ endif\n\n", "a\n  x\n"),
            ("x\n  @@ if true\n  y\n  @@ endif\nz\n", "x\n  y\nz\n"),
            ("@@ set a = 1\n\n@@ if a\nA\n@@ endif\n", "A\n"),
            ("keep\n\nthis\n", "keep\n\nthis\n"),
            ("@@ for x in [1, 2]:\n{{ x }}\n@@ endfor\n", "1\n2\n"),
        ] {
            let out = t.render_str("x", source, &context! {}).unwrap();
            assert_eq!(out, jinja2, "{source:?}");
        }
        let err = t
            .render_str("x", "@@ if true\n\n\n{{ nope }}\n@@ endif\n", &context! {})
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("template `x` line 4: undefined value"),
            "{err}"
        );
    }

    #[test]
    fn python_methods_work_without_line_statements_too() {
        let t = templates();
        let cx = context! { m => context! { a => 1, b => 2 }, s => "Shop" };
        let out = t
            .render_str(
                "x",
                "{% for k, v in m.items() %}{{ k }}={{ v }} {% endfor %}{{ s.upper() }} {{ '{}-{}'.format(s, 1) }}",
                &cx,
            )
            .unwrap();
        assert_eq!(out, "a=1 b=2 SHOP Shop-1");
        // Without a prefix, `@@` is text.
        assert_eq!(t.render_str("x", "@@ if x\n", &cx).unwrap(), "@@ if x\n");
        let err = t
            .render_str("x", "{{ s.nope() }}", &cx)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown method"), "{err}");
    }

    #[test]
    fn line_comments_and_unusable_syntaxes() {
        let syntax = TemplateSyntax {
            line_statement_prefix: Some("@@".into()),
            line_comment_prefix: Some("##".into()),
        };
        let t = Templates::with_syntax(Project::new("/nonexistent"), &syntax);
        let out = t
            .render_str(
                "x",
                "a\n## gone\n@@ if true\nb ## trailing\n@@ endif\n",
                &context! {},
            )
            .unwrap();
        // Not Jinja2's bytes (`a\n\nb\n`): see docs/environments.md.
        assert_eq!(out, "a\nb ");
        let blank = TemplateSyntax {
            line_statement_prefix: Some(" ".into()),
            line_comment_prefix: None,
        };
        assert_eq!(
            blank.check().unwrap_err(),
            "`line_statement_prefix` must not be empty or blank"
        );
        assert!(syntax.check().is_ok());
    }
}
