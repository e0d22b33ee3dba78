//! Configuration errors: what is wrong and where, found before any host is touched.

use std::fmt;
use std::sync::{Arc, OnceLock};

use toml::Spanned;
use toml::de::DeTable;

/// Where a configuration error is: a spot in a file, or a component on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A position in a file, 1-based line and column.
    File {
        /// The file, relative to the deployment repository.
        path: String,
        /// The line, from 1.
        line: usize,
        /// The column, from 1.
        column: usize,
    },
    /// A whole file.
    Path(String),
    /// A component (by its component path) as configured for one host.
    Component {
        /// The host it was configured for.
        host: String,
        /// Its component path, e.g. `app > File('app.toml')`.
        path: String,
    },
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

    /// The text of a serde custom error (`serde::de::Error::custom`) that carries a hint: when
    /// an environment file is read, the message stays in the error and the hint moves to its
    /// own `hint:` line.
    pub fn serde_message_with_hint(message: &str, hint: &str) -> String {
        format!("{message}{HINT_MARKER}{hint}")
    }
}

/// Separates message and hint in a serde custom error's text; serde messages are one line.
const HINT_MARKER: &str = "\nhint: ";

/// A text file, owned, kept for parsing it again and for turning byte offsets into
/// `file:line:column` places.
#[derive(Clone)]
pub(crate) struct SourceText {
    pub(crate) path: String,
    pub(crate) text: Arc<str>,
    /// The byte offset of every line's start, found on the first `place`: placing is a
    /// binary search, whatever the file's size and however many places are asked for.
    line_starts: Arc<OnceLock<Vec<usize>>>,
}

impl fmt::Debug for SourceText {
    // The text may be decrypted secrets: never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceText")
            .field("path", &self.path)
            .field("len", &self.text.len())
            .finish_non_exhaustive()
    }
}

impl SourceText {
    pub(crate) fn new(path: &str, text: Arc<str>) -> Self {
        SourceText {
            path: path.to_string(),
            text,
            line_starts: Arc::default(),
        }
    }

    /// The text parsed as a TOML document, borrowing from it.
    pub(crate) fn parse(&self) -> Result<Spanned<DeTable<'_>>, ConfigError> {
        DeTable::parse(&self.text).map_err(|e| self.toml_error(&e))
    }

    /// The place of a byte offset; columns count characters, not bytes.
    pub(crate) fn place(&self, offset: usize) -> Place {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        });
        // The last line start at or before the offset.
        let line = starts.partition_point(|&start| start <= offset);
        let line_start = starts[line - 1];
        let column = self.text[line_start..offset].chars().count() + 1;
        Place::File {
            path: self.path.clone(),
            line,
            column,
        }
    }

    /// A configuration error from a TOML parse or deserialize error, placed at its span,
    /// with serde's wording made precise: the duplicate key named, a close name suggested
    /// for an unknown one.
    pub(crate) fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let message = err.message().trim_end();
        // The parser's "expected nothing" (after an unexpected leading zero) tells a user
        // nothing.
        let message = message
            .strip_suffix(", expected nothing")
            .or_else(|| message.strip_suffix("\nexpected nothing"))
            .unwrap_or(message);
        let span = err.span();
        if message == "recursion limit" || message.contains("max recursion depth") {
            let mut e = ConfigError::new(
                "nested too deeply: keys and values may have at most 80 levels",
            )
            .hint("a dotted key or a nesting of arrays and tables this deep is never intended");
            e = match span {
                Some(span) => e.at(self.place(span.start)),
                None => e.at(self.deepest_line()),
            };
            return e;
        }
        let place = match &span {
            Some(span) => self.place(span.start),
            None => Place::Path(self.path.clone()),
        };
        if message == "duplicate key"
            && let Some(key) = span.and_then(|s| self.text.get(s)).map(key_at)
        {
            return ConfigError::new(format!("duplicate key `{key}`"))
                .at(place)
                .hint("each key and table may be defined once; remove or rename one of them");
        }
        let (message, hint) = match message.split_once(HINT_MARKER) {
            Some((message, hint)) => (message, Some(hint.to_string())),
            None => (message, None),
        };
        let (message, suggestion) = humanize_serde(message);
        let mut e = ConfigError::new(message).at(place);
        e.hint = hint;
        if e.message.contains("leading zero") {
            e = e.hint(
                "TOML integers have no leading zeros; write an octal mode as 0o644 or \"0644\"",
            );
        }
        e.suggestion = suggestion;
        e
    }

    /// The line where keys or brackets nest the deepest.
    fn deepest_line(&self) -> Place {
        let mut best = (0, 0);
        for (i, line) in self.text.lines().enumerate() {
            let depth = line
                .chars()
                .filter(|c| matches!(c, '.' | '[' | '{'))
                .count();
            if depth > best.1 {
                best = (i, depth);
            }
        }
        Place::File {
            path: self.path.clone(),
            line: best.0 + 1,
            column: 1,
        }
    }
}

/// The key that a span of TOML starts with: a bare or quoted key, up to `=`, `.` or `]`.
fn key_at(text: &str) -> String {
    let text = text.trim_start_matches(['[', ' ', '\t']);
    if let Some(rest) = text.strip_prefix('"') {
        return rest.split('"').next().unwrap_or_default().to_string();
    }
    if let Some(rest) = text.strip_prefix('\'') {
        return rest.split('\'').next().unwrap_or_default().to_string();
    }
    text.split(['=', '.', ']', ' ', '\t', '\n'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// serde's messages in the words of an environment file, and a suggestion for an unknown
/// name: `unknown field `x`, expected one of `a`, `b`` (and the same for variants, which
/// a user knows as values).
pub(crate) fn humanize_serde(message: &str) -> (String, Option<String>) {
    let mut message = message.replace("unknown variant", "unknown value");
    // Rust's integer type names mean nothing to someone writing TOML.
    for (rust, words) in [
        ("usize", "a non-negative integer"),
        ("u64", "a non-negative integer"),
        ("u32", "a non-negative integer"),
        ("u16", "an integer between 0 and 65535"),
        ("u8", "an integer between 0 and 255"),
        ("i64", "an integer"),
        ("i32", "an integer"),
        ("f64", "a number"),
    ] {
        for pattern in [format!("expected {rust}"), format!("expected a {rust}")] {
            if let Some(rest) = message.strip_suffix(pattern.as_str()) {
                message = format!("{rest}expected {words}");
            }
        }
    }
    for prefix in ["unknown field `", "unknown value `"] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some((word, expected)) = rest.split_once('`') else {
            continue;
        };
        let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let suggestion = did_you_mean(word, candidates.iter().copied()).map(str::to_string);
        return (message.clone(), suggestion);
    }
    (message, None)
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
    fn source_texts_never_show_their_text() {
        let src = SourceText::new("secrets/dev.age", "pw = \"hunter2\"\n".into());
        let shown = format!("{src:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("secrets/dev.age"), "{shown}");
    }

    #[test]
    fn offsets_become_lines_and_columns() {
        let src = SourceText::new("env.toml", "a = 1\nbé = 2\n".into());
        assert_eq!(src.place(0).to_string(), "env.toml:1:1");
        assert_eq!(src.place(6).to_string(), "env.toml:2:1");
        // `=` after a two-byte character is the fourth character of line 2.
        assert_eq!(src.place(10).to_string(), "env.toml:2:4");
        // The newline itself ends its line; past the end is the end.
        assert_eq!(src.place(5).to_string(), "env.toml:1:6");
        assert_eq!(src.place(99).to_string(), "env.toml:3:1");
        // A clone shares the line index and places alike.
        assert_eq!(src.clone().place(6).to_string(), "env.toml:2:1");
    }

    #[test]
    fn serde_messages_get_suggestions_and_user_words() {
        let (m, s) = humanize_serde("unknown field `contnet`, expected one of `path`, `content`");
        assert_eq!(
            m,
            "unknown field `contnet`, expected one of `path`, `content`"
        );
        assert_eq!(s.as_deref(), Some("content"));
        let (m, s) = humanize_serde("unknown variant `sssh`, expected `ssh` or `local`");
        assert_eq!(m, "unknown value `sssh`, expected `ssh` or `local`");
        assert_eq!(s.as_deref(), Some("ssh"));
        let (_, s) = humanize_serde("unknown field `zzz`, expected `path`");
        assert_eq!(s, None);
        let (m, _) = humanize_serde("invalid type: string \"many\", expected usize");
        assert_eq!(
            m,
            "invalid type: string \"many\", expected a non-negative integer"
        );
    }

    #[test]
    fn duplicate_keys_are_named() {
        for (text, want) in [
            (
                "a = 1\nfoo = 1\nfoo = 2\n",
                "duplicate key `foo` in e.toml:3:1",
            ),
            ("[hosts.h]\n[hosts.h]\n", "duplicate key `h` in e.toml:2:8"),
            (
                "\"x y\" = 1\n\"x y\" = 2\n",
                "duplicate key `x y` in e.toml:2:1",
            ),
        ] {
            let src = SourceText::new("e.toml", text.into());
            let err = toml::de::DeTable::parse(text).err().unwrap();
            assert_eq!(src.toml_error(&err).to_string(), want, "{text}");
        }
    }

    #[test]
    fn a_too_deep_key_names_its_line() {
        let src = SourceText::new(
            "e.toml",
            format!("a = 1\n{}b = 1\n", "a.".repeat(100)).into(),
        );
        let e = src.parse().err().unwrap();
        assert!(e.message.starts_with("nested too deeply"), "{e}");
        assert_eq!(e.place.unwrap().to_string(), "e.toml:2:1");

        let text = format!("a = 1\nx = {}{}\n", "[".repeat(200), "]".repeat(200));
        let src = SourceText::new("e.toml", text.into());
        let e = src.parse().err().unwrap();
        assert!(e.message.starts_with("nested too deeply"), "{e}");
        assert!(e.place.unwrap().to_string().starts_with("e.toml:2:"));
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

    #[test]
    fn parser_wording_that_says_nothing_is_left_out() {
        let src = SourceText::new("env.toml", "mode = 0644\n".into());
        let e = src.parse().unwrap_err();
        assert!(!e.to_string().contains("expected nothing"), "{e}");
        assert!(e.to_string().contains("leading zero"), "{e}");
        assert!(e.hint.is_some(), "{e}");
    }

    #[test]
    fn a_hint_in_a_serde_message_moves_to_the_hint() {
        #[derive(Debug)]
        struct Refused;
        impl<'de> serde::Deserialize<'de> for Refused {
            fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
                Err(serde::de::Error::custom(
                    ConfigError::serde_message_with_hint(
                        "a file needs content",
                        "write `content = \"\"`",
                    ),
                ))
            }
        }
        let src = SourceText::new("env.toml", "a = 1\n".into());
        let err = toml::from_str::<Refused>(&src.text).unwrap_err();
        let e = src.toml_error(&err);
        assert_eq!(e.message, "a file needs content");
        assert_eq!(e.hint.as_deref(), Some("write `content = \"\"`"));
    }
}
