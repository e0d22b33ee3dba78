//! Configuration errors: what is wrong and where, found before any host is touched.

use std::fmt;

/// Where a configuration error is: a spot in a file, or a component on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A position in a file, 1-based line and column.
    File {
        path: String,
        line: usize,
        column: usize,
    },
    /// A whole file.
    Path(String),
    /// A component (by its component path) as configured for one host.
    Component { host: String, path: String },
    /// A host of the environment.
    Host(String),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::File { path, line, column } => write!(f, "{path}:{line}:{column}"),
            Place::Path(path) => write!(f, "{path}"),
            Place::Component { host, path } => write!(f, "host `{host}`, component `{path}`"),
            Place::Host(host) => write!(f, "host `{host}`"),
        }
    }
}

/// An invalid environment, component attribute, template, resource graph or project file.
///
/// Every such error is raised while loading or planning, so a run that fails with it has
/// touched nothing on any host.
#[derive(Debug, thiserror::Error)]
#[error(
    "{message}{}{}",
    place.as_ref().map(|p| format!(" in {p}")).unwrap_or_default(),
    suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
)]
pub struct ConfigError {
    /// What is wrong, lower case, names in backticks.
    pub message: String,
    /// Where it is, when known (boxed: errors travel up many frames, places are cold).
    pub place: Option<Box<Place>>,
    /// A close name for a misspelt one, shown after the place.
    pub suggestion: Option<String>,
    /// A likely fix, printed on its own `hint:` line.
    pub hint: Option<String>,
    /// The underlying cause, e.g. a component's own error chain.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ConfigError {
    /// An error without place, hint or cause.
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError {
            message: message.into(),
            place: None,
            suggestion: None,
            hint: None,
            source: None,
        }
    }

    /// Sets the place.
    pub fn at(mut self, place: Place) -> Self {
        self.place = Some(Box::new(place));
        self
    }

    /// Suggests the candidate closest to `word`, if one is close enough.
    pub fn suggest<'a>(
        mut self,
        word: &str,
        candidates: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        self.suggestion = did_you_mean(word, candidates).map(str::to_string);
        self
    }

    /// Sets the hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Sets the cause.
    pub fn caused_by(mut self, source: anyhow::Error) -> Self {
        self.source = Some(source.into());
        self
    }
}

/// A text file kept for turning byte offsets into `file:line:column` places.
#[derive(Debug, Clone)]
pub(crate) struct SourceText {
    pub(crate) path: String,
    pub(crate) text: &'static str,
    /// A second file whose spans start at an offset past this text (decrypted secrets
    /// merged into an environment's attributes).
    pub(crate) overlay: Option<Box<(usize, SourceText)>>,
}

impl SourceText {
    /// The place of a byte offset; columns count characters, not bytes.
    pub(crate) fn place(&self, offset: usize) -> Place {
        if let Some(overlay) = &self.overlay
            && offset >= overlay.0
        {
            return overlay.1.place(offset - overlay.0);
        }
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        Place::File {
            path: self.path.clone(),
            line,
            column,
        }
    }

    /// A configuration error from a TOML parse or deserialize error, placed at its span.
    pub(crate) fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let message = err.message().trim_end().to_string();
        let place = match err.span() {
            Some(span) => self.place(span.start),
            None => Place::Path(self.path.clone()),
        };
        ConfigError::new(message).at(place)
    }
}

/// The closest of `candidates` to `word`, when one is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let src = SourceText {
            path: "env.toml".into(),
            text: "a = 1\nbé = 2\n",
            overlay: None,
        };
        assert_eq!(src.place(0).to_string(), "env.toml:1:1");
        assert_eq!(src.place(6).to_string(), "env.toml:2:1");
        // `=` after a two-byte character is the fourth character of line 2.
        assert_eq!(src.place(10).to_string(), "env.toml:2:4");
    }

    #[test]
    fn suggestions_need_similarity() {
        assert_eq!(did_you_mean("nginxx", ["nginx", "app"]), Some("nginx"));
        assert_eq!(did_you_mean("zzz", ["nginx", "app"]), None);
    }

    #[test]
    fn display_names_the_place() {
        let e = ConfigError::new("unknown component `x`").at(Place::Host("web1".into()));
        assert_eq!(e.to_string(), "unknown component `x` in host `web1`");
        let e = ConfigError::new("unknown component `nginxx`")
            .at(Place::Host("web1".into()))
            .suggest("nginxx", ["nginx"]);
        assert_eq!(
            e.to_string(),
            "unknown component `nginxx` in host `web1` (did you mean `nginx`?)"
        );
    }
}
