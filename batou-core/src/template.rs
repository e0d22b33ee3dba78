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
            .map_err(|e| self.error(&e, None))?;
        template.render(context).map_err(|e| self.error(&e, None))
    }

    /// Renders the inline template `source`, called `name` in errors, with `context`.
    pub fn render_str(&self, name: &str, source: &str, context: &Value) -> anyhow::Result<String> {
        self.env
            .render_named_str(name, source, context)
            .map_err(|e| self.error(&e, Some(source)))
    }

    fn error(&self, err: &minijinja::Error, inline: Option<&str>) -> anyhow::Error {
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
        anyhow::anyhow!(describe(err, source.as_deref()))
    }
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
