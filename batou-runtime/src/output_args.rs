//! The output flags both commands share (`--color`, `-q`, `-v`, `--no-diff`,
//! `--diff-lines`), what they resolve into, and the event sink they choose.
//!
//! Whether stderr is a terminal and whether `NO_COLOR` is set are asked here, once, when the
//! sink is built; `batou_core::output` only renders what it is told.

use std::io::IsTerminal;

use batou_core::EventSink;
use batou_core::output::{
    ColorChoice, HumanOptions, HumanOutput, JsonOutput, ProgressOutput, Verbosity,
};

/// The output flags, flattened into each command's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Colour human output: `auto` (on a terminal, unless `NO_COLOR` is set), `always` or
    /// `never`. `--json` is never coloured.
    #[arg(
        long,
        value_name = "WHEN",
        default_value = "auto",
        value_parser = ["auto", "always", "never"]
    )]
    pub color: String,
    /// Print only failures and the summary.
    #[arg(long, short = 'q', conflicts_with = "verbose")]
    pub quiet: bool,
    /// Also print unchanged root components and how long each took; `-vv` also when each
    /// root component starts and each host's converge begins.
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Do not print the diffs of file changes.
    #[arg(long)]
    pub no_diff: bool,
    /// Print at most N lines of each diff, then how many more there are.
    #[arg(long, value_name = "N", conflicts_with = "no_diff")]
    pub diff_lines: Option<usize>,
}

/// How a run's human output looks, resolved from [`OutputArgs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    /// `--color`.
    pub color: ColorChoice,
    /// `-q`, `-v`, `-vv`.
    pub verbosity: Verbosity,
    /// Whether diffs are shown (not `--no-diff`).
    pub diff: bool,
    /// `--diff-lines`.
    pub diff_lines: Option<usize>,
}

impl OutputArgs {
    /// The output these flags ask for.
    pub fn resolve(&self) -> Output {
        Output {
            color: self
                .color
                .parse()
                .expect("clap accepts only the three colour choices"),
            verbosity: Verbosity::from_flags(self.quiet, self.verbose),
            diff: !self.no_diff,
            diff_lines: self.diff_lines,
        }
    }
}

impl Output {
    /// The event sink of a run: JSON lines on stdout, or human output on stderr (with the
    /// live progress line when stderr is a terminal).
    pub fn sink(&self, json: bool) -> Box<dyn EventSink + Send> {
        if json {
            return Box::new(JsonOutput::new(std::io::stdout()));
        }
        let terminal = std::io::stderr().is_terminal();
        let options = HumanOptions {
            color: self
                .color
                .resolve(terminal, std::env::var_os("NO_COLOR").as_deref()),
            verbosity: self.verbosity,
            diff: self.diff,
            diff_lines: self.diff_lines,
        };
        if terminal {
            Box::new(ProgressOutput::new(
                std::io::stderr(),
                options,
                Box::new(|| {
                    console::Term::stderr()
                        .size_checked()
                        .map(|(_, columns)| usize::from(columns))
                }),
            ))
        } else {
            Box::new(HumanOutput::with_options(std::io::stderr(), options))
        }
    }
}

impl Default for Output {
    /// Today's human output.
    fn default() -> Self {
        Output {
            color: ColorChoice::Auto,
            verbosity: Verbosity::Normal,
            diff: true,
            diff_lines: None,
        }
    }
}
