//! Rendering events for people (prefixed lines on stderr) and for programs (JSON lines).
//!
//! Both renderers write each event as it arrives, so output is live. Human output prefixes
//! every line with its host, in colour when asked to ([`HumanOptions`]); on a terminal,
//! [`ProgressOutput`] adds a live line for the running steps. JSON output is one event object
//! per line, after a schema line, each with a timestamp (see `docs/json-events.md`). Which
//! options apply (a terminal, `NO_COLOR`, the flags) is for the binaries to decide; this
//! module only renders.

mod human;
mod json;
mod operations;
mod progress;

pub use human::HumanOutput;
pub use json::{
    JsonOutput, SCHEMA_VERSION, error_event, json_line, schema_line, warning_event, write_json,
};
pub use progress::{ProgressOutput, Width};

/// How much human output shows: `-q`, the default, `-v`, `-vv`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Failures and the summary only.
    Quiet,
    /// What changed (or would change), diffs, logs, failures, the summary.
    #[default]
    Normal,
    /// Also unchanged root components and how long each root component took.
    Verbose,
    /// Also when each root component starts and each host's converge begins.
    Debug,
}

impl Verbosity {
    /// The verbosity of `-q` (quiet) and a count of `-v`.
    pub fn from_flags(quiet: bool, verbose: u8) -> Verbosity {
        match (quiet, verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, 1) => Verbosity::Verbose,
            (false, _) => Verbosity::Debug,
        }
    }
}

/// When to colour human output: `--color auto|always|never`, as cargo has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set to a non-empty value.
    #[default]
    Auto,
    /// Always, even into a pipe or a file.
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Whether to colour, given whether the output is a terminal and the value of `NO_COLOR`.
    ///
    /// `NO_COLOR` (<https://no-color.org>) turns colour off when set and not empty; an
    /// explicit `--color always` still wins, as with cargo.
    pub fn resolve(self, is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => is_terminal && no_color.is_none_or(|v| v.is_empty()),
        }
    }
}

impl std::str::FromStr for ColorChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ColorChoice::Auto),
            "always" => Ok(ColorChoice::Always),
            "never" => Ok(ColorChoice::Never),
            other => Err(format!(
                "unknown colour choice `{other}`: use `auto`, `always` or `never`"
            )),
        }
    }
}

/// How [`HumanOutput`] renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanOptions {
    /// Colour outcomes, diffs and the summary with ANSI escapes.
    pub color: bool,
    /// How much to show.
    pub verbosity: Verbosity,
    /// Show the diffs of file changes (`--no-diff` turns them off).
    pub diff: bool,
    /// Show at most this many lines of each diff, then a `… N more lines` marker.
    pub diff_lines: Option<usize>,
}

impl Default for HumanOptions {
    /// Today's output: no colour, normal verbosity, whole diffs.
    fn default() -> Self {
        HumanOptions {
            color: false,
            verbosity: Verbosity::Normal,
            diff: true,
            diff_lines: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_follows_the_choice_the_terminal_and_no_color() {
        let auto = ColorChoice::Auto;
        assert!(auto.resolve(true, None));
        assert!(!auto.resolve(false, None));
        assert!(!auto.resolve(true, Some(OsStr::new("1"))));
        assert!(
            auto.resolve(true, Some(OsStr::new(""))),
            "empty means unset"
        );
        assert!(ColorChoice::Always.resolve(false, Some(OsStr::new("1"))));
        assert!(!ColorChoice::Never.resolve(true, None));
        assert_eq!("always".parse(), Ok(ColorChoice::Always));
        assert!("sometimes".parse::<ColorChoice>().is_err());
    }

    #[test]
    fn quiet_wins_over_verbose() {
        assert_eq!(Verbosity::from_flags(false, 0), Verbosity::Normal);
        assert_eq!(Verbosity::from_flags(false, 1), Verbosity::Verbose);
        assert_eq!(Verbosity::from_flags(false, 3), Verbosity::Debug);
        assert_eq!(Verbosity::from_flags(true, 2), Verbosity::Quiet);
    }
}
