//! Shell completions and man pages, generated from a command's clap definition, and the
//! hidden command that completes environment names.
//!
//! Both commands (and every project binary) flatten [`Tooling`] into their subcommands and
//! pass their own `clap::Command` to [`Tooling::run`], so scripts and pages always match the
//! command line they describe.
//!
//! clap_complete's scripts are static: they know the subcommands and flags, not the files of
//! a project. (Its dynamic completion exists only behind an unstable feature.) So each
//! script gets a few lines appended that ask the binary itself,
//! `<binary> __complete-environments -- WORDS...`, with the words typed so far. The binary
//! reads them with the same option table as the parser: when the next word is the
//! environment, it prints the names of `environments/*.toml` of the project (`-C DIR`, or
//! the nearest directory above the current one with `environments/`), one per line;
//! otherwise nothing. The shell adds those names to clap's candidates.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::{find_project, print_error};

/// The commands for shells and manuals that every deployment binary has.
#[derive(Debug, Subcommand)]
pub enum Tooling {
    /// Print a completion script for SHELL on stdout (environment names are completed too).
    ///
    /// For `batou-local` (likewise `batou-remote`): bash: `source <(batou-local completions
    /// bash)` in `~/.bashrc`; zsh: `source <(batou-local completions zsh)` in `~/.zshrc`
    /// (after `compinit`); fish: `batou-local completions fish >
    /// ~/.config/fish/completions/batou-local.fish`.
    Completions {
        /// The shell to complete for.
        shell: Shell,
    },
    /// Write man pages (section 1) for the command and its subcommands into DIR.
    Man {
        /// Where to write the pages.
        #[arg(default_value = ".", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Print the environments that complete the words typed so far (used by the completion
    /// scripts).
    #[command(hide = true, name = "__complete-environments")]
    CompleteEnvironments {
        /// The words after the program's name, up to the one being completed.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        words: Vec<OsString>,
    },
}

/// The shells completion scripts are generated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// GNU bash.
    Bash,
    /// The Z shell.
    Zsh,
    /// The friendly interactive shell.
    Fish,
}

impl Tooling {
    /// Runs the command for `command`, the binary's whole clap definition.
    pub fn run(self, command: clap::Command) -> ExitCode {
        let result = match self {
            Tooling::Completions { shell } => {
                let mut out = std::io::stdout().lock();
                out.write_all(script(shell, command).as_bytes())
                    .context("cannot write the completion script")
            }
            Tooling::Man { dir } => write_man_pages(command, &dir).map(|paths| {
                for path in paths {
                    println!("{}", path.display());
                }
            }),
            Tooling::CompleteEnvironments { words } => {
                let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
                for name in complete_environments(&command, &words, &cwd) {
                    println!("{name}");
                }
                // Completion must never print an error into the user's command line.
                Ok(())
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                print_error(&err, false);
                ExitCode::FAILURE
            }
        }
    }
}

/// The completion script of `command` for `shell`: clap_complete's, with environment names
/// added from `__complete-environments`.
pub fn script(shell: Shell, command: clap::Command) -> String {
    let mut command = without_hidden_subcommands(command);
    let name = command.get_name().to_string();
    let mut out = Vec::new();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut command, &name, &mut out);
    let mut text = String::from_utf8(out).expect("clap_complete writes UTF-8");
    // A shell function name: `batou-local` becomes `batou_local`.
    let id = name.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    // The function clap_complete registered, which the added one calls first.
    let registered = |marker: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(marker))
            .and_then(|rest| rest.split_whitespace().next())
            .expect("clap_complete registers a completion function")
            .to_string()
    };
    let environments = match shell {
        Shell::Bash => {
            let clap_function = registered("complete -F ");
            format!(
                r#"
# Environment names, from the project's `environments/*.toml`.
_{id}_environments() {{
    {clap_function} "$@"
    local names
    names=$({name} __complete-environments -- "${{COMP_WORDS[@]:1:COMP_CWORD-1}}" 2>/dev/null) || return 0
    [[ -n "$names" ]] || return 0
    local IFS=$'\n'
    COMPREPLY+=( $(compgen -W "$names" -- "${{COMP_WORDS[COMP_CWORD]}}") )
}}
if [[ "${{BASH_VERSINFO[0]}}" -eq 4 && "${{BASH_VERSINFO[1]}}" -ge 4 || "${{BASH_VERSINFO[0]}}" -gt 4 ]]; then
    complete -F _{id}_environments -o nosort -o bashdefault -o default {name}
else
    complete -F _{id}_environments -o bashdefault -o default {name}
fi
"#
            )
        }
        Shell::Zsh => {
            let clap_function = registered("compdef ");
            format!(
                r#"
# Environment names, from the project's `environments/*.toml`.
_{id}_environments() {{
    local -a names
    names=(${{(f)"$({name} __complete-environments -- ${{words[2,CURRENT-1]}} 2>/dev/null)"}})
    (( ${{#names}} )) && compadd -a names
    {clap_function} "$@"
}}
if (( $+functions[compdef] )); then
    compdef _{id}_environments {name}
fi
"#
            )
        }
        Shell::Fish => format!(
            r#"
# Environment names, from the project's `environments/*.toml`.
complete -c {name} -f -a '({name} __complete-environments -- (commandline -opc)[2..-1] 2>/dev/null)'
"#
        ),
    };
    text.push_str(&environments);
    text
}

/// `command` with the same arguments and only its visible subcommands: clap_complete would
/// offer the hidden ones (the roles, `__complete-environments`) as candidates.
fn without_hidden_subcommands(command: clap::Command) -> clap::Command {
    let mut visible = clap::Command::new(command.get_name().to_string())
        .args(command.get_arguments().cloned())
        .subcommands(
            command
                .get_subcommands()
                .filter(|s| !s.is_hide_set())
                .cloned(),
        );
    if let Some(version) = command.get_version() {
        visible = visible.version(version.to_string());
    }
    if let Some(about) = command.get_about() {
        visible = visible.about(about.clone());
    }
    visible
}

/// Writes the man pages of `command` and of each of its visible subcommands into `dir`
/// (`<name>.1`, `<name>-<subcommand>.1`); returns the files written.
pub fn write_man_pages(command: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fn generate(
        command: clap::Command,
        dir: &Path,
        written: &mut Vec<PathBuf>,
    ) -> anyhow::Result<()> {
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            generate(sub.clone(), dir, written)?;
        }
        let path = clap_mangen::Man::new(command)
            .generate_to(dir)
            .with_context(|| format!("cannot write a man page into `{}`", dir.display()))?;
        written.push(path);
        Ok(())
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory `{}`", dir.display()))?;
    let mut command = command.disable_help_subcommand(true);
    command.build();
    let mut written = Vec::new();
    generate(command, dir, &mut written)?;
    written.reverse();
    Ok(written)
}

/// The environment names that complete `words` (the words after the program's name, the
/// one being completed left out), or none when the next word is not an environment.
pub fn complete_environments(
    command: &clap::Command,
    words: &[OsString],
    cwd: &Path,
) -> Vec<String> {
    let Some(project) = environment_position(command, words) else {
        return Vec::new();
    };
    let project = match project {
        Some(dir) => cwd.join(dir),
        None => match find_project(cwd) {
            Ok(dir) => dir,
            Err(_) => return Vec::new(),
        },
    };
    environment_names(&project)
}

/// The names of `environments/*.toml` in `project` that are valid environment names,
/// sorted.
pub fn environment_names(project: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(project.join("environments")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != "toml" || !path.is_file() {
                return None;
            }
            let name = path.file_stem()?.to_str()?.to_string();
            batou_core::check_name(&name).ok().map(|_| name)
        })
        .collect();
    names.sort();
    names
}

/// Whether the next word is the environment: `Some(project)` (the value of `-C`/`--project`
/// when given) if it is, `None` if the words already hold a positional (the environment or
/// another subcommand) or the next word is the value of an option.
fn environment_position(command: &clap::Command, words: &[OsString]) -> Option<Option<PathBuf>> {
    let mut project = None;
    let mut deploy = false;
    let mut words = words.iter().map(|w| w.to_string_lossy());
    while let Some(word) = words.next() {
        if word == "--" {
            return None;
        }
        if let Some(option) = word.strip_prefix("--") {
            let (name, inline) = match option.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (option, None),
            };
            let arg = command.get_arguments().find(|a| a.get_long() == Some(name));
            if arg.is_some_and(takes_value) {
                let value = match inline {
                    Some(value) => value,
                    None => words.next()?.into_owned(),
                };
                if name == "project" {
                    project = Some(PathBuf::from(value));
                }
            }
        } else if let Some(shorts) = word.strip_prefix('-').filter(|s| !s.is_empty()) {
            // A cluster like `-C DIR` or `-CDIR`: the first short that takes a value ends it.
            for (i, short) in shorts.char_indices() {
                let arg = command
                    .get_arguments()
                    .find(|a| a.get_short() == Some(short));
                if arg.is_some_and(takes_value) {
                    let rest = &shorts[i + short.len_utf8()..];
                    let value = if rest.is_empty() {
                        words.next()?.into_owned()
                    } else {
                        rest.to_string()
                    };
                    if short == 'C' {
                        project = Some(PathBuf::from(value));
                    }
                    break;
                }
            }
        } else if word == "deploy" && !deploy {
            deploy = true;
        } else {
            return None;
        }
    }
    Some(project)
}

fn takes_value(arg: &clap::Arg) -> bool {
    arg.get_num_args().is_some_and(|n| n.takes_values()) || arg.get_action().takes_values()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    fn command() -> clap::Command {
        clap::Command::new("batou-local")
            .arg(Arg::new("environment"))
            .arg(Arg::new("project").long("project").short('C'))
            .arg(Arg::new("host").long("host"))
            .arg(
                Arg::new("dry_run")
                    .long("dry-run")
                    .short('n')
                    .action(ArgAction::SetTrue),
            )
            .subcommand(clap::Command::new("deploy"))
    }

    fn position(words: &[&str]) -> Option<Option<PathBuf>> {
        let words: Vec<OsString> = words.iter().map(OsString::from).collect();
        environment_position(&command(), &words)
    }

    #[test]
    fn the_environment_comes_first_or_after_deploy_and_options() {
        assert_eq!(position(&[]), Some(None));
        assert_eq!(position(&["deploy"]), Some(None));
        assert_eq!(position(&["--dry-run"]), Some(None));
        assert_eq!(position(&["-n", "deploy", "--host", "web1"]), Some(None));
        assert_eq!(position(&["-C", "p"]), Some(Some("p".into())));
        assert_eq!(position(&["-Cp"]), Some(Some("p".into())));
        assert_eq!(position(&["-nC", "p"]), Some(Some("p".into())));
        assert_eq!(position(&["--project=p", "deploy"]), Some(Some("p".into())));
    }

    #[test]
    fn no_environment_after_one_or_in_an_option_value() {
        assert_eq!(position(&["dev"]), None);
        assert_eq!(position(&["deploy", "dev"]), None);
        assert_eq!(position(&["secrets"]), None);
        assert_eq!(position(&["--host"]), None);
        assert_eq!(position(&["-C"]), None);
        assert_eq!(position(&["--"]), None);
    }

    #[test]
    fn names_are_the_valid_toml_files_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let envs = dir.path().join("environments");
        std::fs::create_dir(&envs).unwrap();
        for file in [
            "prod.toml",
            "dev.toml",
            "notes.txt",
            ".hidden.toml",
            "bad name.toml",
        ] {
            std::fs::write(envs.join(file), "").unwrap();
        }
        std::fs::create_dir(envs.join("dir.toml")).unwrap();
        assert_eq!(environment_names(dir.path()), ["dev", "prod"]);
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        assert_eq!(
            complete_environments(&command(), &[], &nested),
            ["dev", "prod"]
        );
    }
}
