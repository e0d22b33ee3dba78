//! Verbs on an environment other than a deploy: `<ENVIRONMENT> service
//! status|start|stop|restart [COMPONENT...]`, `<ENVIRONMENT> releases [COMPONENT...]` and
//! `<ENVIRONMENT> rollback [COMPONENT...]` (with `--to <ID>`), the operator's verbs
//! `status`, `history`, `exec -- ARGV...` and `lock acquire|release|status` (with
//! [`OperationArgs`]), and the offline `<ENVIRONMENT> check` and `<ENVIRONMENT> graph`
//! (`crate::offline`), shared by `batou-local` and `batou-remote`.
//!
//! The environment comes first and the verb after it, so that no verb takes away an
//! environment's name: `batou-remote service` deploys the environment `service`, and
//! `batou-remote service service status` shows the services of that environment. The commands
//! collect the words after the environment and hand them to [`parse_verb`]; running the verb
//! is theirs (in process, or through agents).

use batou_core::{HostStatus, ReleaseReport, ServiceOutcome, ServiceResult, ServiceVerb};
use clap::{Parser, Subcommand};

/// A `service` verb and the root components it names (none: every one with a service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCommand {
    /// What to do.
    pub verb: ServiceVerb,
    /// The root components named on the command line, in that order.
    pub roots: Vec<String>,
}

/// A verb after the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// `service status|start|stop|restart [COMPONENT]...`.
    Service(ServiceCommand),
    /// `releases [COMPONENT]...` or `rollback [COMPONENT]...`.
    Releases(ReleaseCommand),
    /// `check`: validate the environment offline (see `crate::offline`).
    Check,
    /// `graph`: print the plan (`--format text|dot`).
    Graph,
    /// `status`, `history`, `exec -- ARGV...` or `lock acquire|release|status`, with the
    /// options of [`OperationArgs`] still to be added ([`Operation::with`]).
    Operation(Operation),
}

/// An operator's verb: what the hosts are like, what happened, run a program, freeze.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `status`: reachability, freeze, lock holder, last deploy, services, releases, drift.
    Status,
    /// `history [--limit N]`: the deploys of the environment, merged from the hosts.
    History {
        /// How many deploys, newest last.
        limit: usize,
    },
    /// `exec [--timeout D] [--no-lock] -- ARGV...`.
    Exec {
        /// Program and arguments.
        argv: Vec<String>,
        /// How long the program may run on each host.
        timeout: std::time::Duration,
        /// Whether to take the host's lock (and respect its freeze): not with `--no-lock`.
        lock: bool,
    },
    /// `lock acquire -m REASON`, `lock release`, `lock status`.
    Lock {
        /// Which.
        verb: batou_core::operations::LockVerb,
        /// `-m`: why (`acquire` only).
        reason: Option<String>,
    },
}

/// How many deploys `history` shows without `--limit`.
pub const HISTORY_LIMIT: usize = 20;

/// How long `exec` lets a program run without `--timeout`.
pub const EXEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// The options of the operator's verbs, which both commands take on their command line
/// (they come before `--` and may stand anywhere after the environment).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OperationArgs {
    /// With `history`: how many deploys to show, the newest last (default: 20).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// With `exec`: how long the program may run on each host (a duration like `5m` or
    /// `1h`, or seconds; default: 5 minutes); then its process group is ended.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// With `exec`: do not take the host's lock, and run even on a frozen host.
    #[arg(long)]
    pub no_lock: bool,
    /// `-m`, the option of `lock acquire`.
    #[command(flatten)]
    pub lock: LockArgs,
}

/// The option of `lock acquire`, the one operator's option `batou-local` takes too.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LockArgs {
    /// With `lock acquire`: why the hosts are frozen, shown to anyone who tries to deploy.
    #[arg(long, short = 'm', value_name = "REASON")]
    pub message: Option<String>,
}

impl Operation {
    /// The verb with the options given on the command line; an option that does not belong
    /// to it (or a missing reason) is a usage error's message.
    pub fn with(self, args: &OperationArgs) -> Result<Operation, String> {
        let name = match &self {
            Operation::Status => "status",
            Operation::History { .. } => "history",
            Operation::Exec { .. } => "exec",
            Operation::Lock { .. } => "lock",
        };
        let given = [
            (args.limit.is_some(), "--limit", "history"),
            (args.timeout.is_some(), "--timeout", "exec"),
            (args.no_lock, "--no-lock", "exec"),
            (args.lock.message.is_some(), "--message", "lock"),
        ];
        for (given, flag, verb) in given {
            if given && verb != name {
                return Err(format!("`{flag}` applies to the `{verb}` verb only"));
            }
        }
        Ok(match self {
            Operation::History { .. } => Operation::History {
                limit: args.limit.unwrap_or(HISTORY_LIMIT).max(1),
            },
            Operation::Exec { argv, .. } => Operation::Exec {
                argv,
                timeout: match &args.timeout {
                    Some(text) => parse_duration(text)?,
                    None => EXEC_TIMEOUT,
                },
                lock: !args.no_lock,
            },
            Operation::Lock { verb, .. } => {
                use batou_core::operations::LockVerb;
                let reason = args.lock.message.clone();
                match (verb, &reason) {
                    (LockVerb::Acquire, None) => {
                        return Err("`lock acquire` needs a reason: `-m \"why\"`".into());
                    }
                    (LockVerb::Acquire, Some(r)) if r.trim().is_empty() => {
                        return Err("`lock acquire` needs a reason that is not empty".into());
                    }
                    (LockVerb::Release | LockVerb::Status, Some(_)) => {
                        return Err("`--message` applies to `lock acquire` only".into());
                    }
                    _ => {}
                }
                Operation::Lock { verb, reason }
            }
            Operation::Status => Operation::Status,
        })
    }
}

/// `30s`, `5m`, `1h 30m` or a number of seconds; positive.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let parsed = match text.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => {
            Ok(std::time::Duration::from_secs_f64(seconds))
        }
        Ok(_) => Err(()),
        Err(_) => humantime::parse_duration(text.trim()).map_err(|_| ()),
    };
    match parsed {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!(
            "`--timeout {text}` is no duration: give seconds or a duration like `30s` or `5m`"
        )),
    }
}

/// A `releases` or `rollback` verb and the release roots it names (none: every one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseCommand {
    /// `rollback` rather than `releases`.
    pub rollback: bool,
    /// The release roots named on the command line, in that order.
    pub roots: Vec<String>,
    /// `--to`: the release to roll back to (default: the one before the current one).
    pub to: Option<String>,
}

/// The words after the environment.
#[derive(Debug, Parser)]
#[command(
    no_binary_name = true,
    disable_help_subcommand = true,
    subcommand_value_name = "VERB"
)]
enum VerbLine {
    /// Control the services of the environment's root components.
    #[command(subcommand)]
    Service(ServiceLine),
    /// List each host's releases: which is current, when and by whom each was activated.
    Releases(Releases),
    /// Switch back to the release before the current one (or `--to <ID>`) in one step:
    /// no build, no upload; restart the services that watch it and check their health.
    Rollback(Releases),
    /// Validate the environment offline, for CI: configure every host, resolve resources,
    /// render templates, check the secrets' names; no host is contacted, no identity needed.
    Check,
    /// Print the plan: hosts, root components, resources provided and required, the order
    /// (`--format dot` for Graphviz).
    Graph,
    /// Show each host: reachable, frozen, locked, last deploy, services, releases, drift.
    Status,
    /// Show the environment's deploys, merged from the hosts' journals (`--limit N`).
    History,
    /// Run a program on every host (`--timeout D`, `--no-lock`): `exec -- ARGV...`.
    Exec(ExecLine),
    /// Freeze deploys (`lock acquire -m REASON`), lift the freeze, or show it.
    #[command(subcommand)]
    Lock(LockLine),
}

#[derive(Debug, clap::Args)]
struct ExecLine {
    /// The program and its arguments (no shell).
    #[arg(
        value_name = "ARGV",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    argv: Vec<String>,
}

#[derive(Debug, Subcommand)]
#[command(subcommand_value_name = "VERB", subcommand_help_heading = "Verbs")]
enum LockLine {
    /// Freeze deploys on the hosts, with a reason (`-m`).
    Acquire,
    /// Lift the freeze.
    Release,
    /// Show the freeze and who deploys right now.
    Status,
}

#[derive(Debug, clap::Args)]
struct Releases {
    /// Release roots to act on (default: every one).
    #[arg(value_name = "COMPONENT")]
    components: Vec<String>,
}

#[derive(Debug, Subcommand)]
#[command(subcommand_value_name = "VERB", subcommand_help_heading = "Verbs")]
enum ServiceLine {
    /// Show manager, running or not, pid, uptime and restarts of each service.
    Status(Components),
    /// Start the services that do not run.
    Start(Components),
    /// Stop the services that run.
    Stop(Components),
    /// Restart the services (starting those that do not run).
    Restart(Components),
}

#[derive(Debug, clap::Args)]
struct Components {
    /// Root components whose services to act on (default: every one with a service).
    #[arg(value_name = "COMPONENT")]
    components: Vec<String>,
}

/// What the `VERB` words after the environment ask for: `None` for a deploy (no words), the
/// `service` verb otherwise. `program` names the command in usage errors
/// (`batou-local <ENVIRONMENT>`).
pub fn parse_verb(program: &str, words: &[String]) -> Result<Option<Verb>, clap::Error> {
    if words.is_empty() {
        return Ok(None);
    }
    use clap::CommandFactory;
    // `--help` after the environment is the command's own (it lists the verbs too), so the
    // verbs' help does not offer one.
    let command = VerbLine::command()
        .bin_name(format!("{program} <ENVIRONMENT>"))
        .disable_help_flag(true)
        .mut_subcommands(|c| {
            c.disable_help_flag(true)
                .mut_subcommands(|c| c.disable_help_flag(true))
        });
    let matches = command.try_get_matches_from(words)?;
    let line = <VerbLine as clap::FromArgMatches>::from_arg_matches(&matches)?;
    use batou_core::operations::LockVerb;
    let operation = |o| Ok(Some(Verb::Operation(o)));
    let service = match line {
        VerbLine::Service(service) => service,
        VerbLine::Status => return operation(Operation::Status),
        VerbLine::History => return operation(Operation::History { limit: 0 }),
        VerbLine::Exec(e) => {
            return operation(Operation::Exec {
                argv: e.argv,
                timeout: EXEC_TIMEOUT,
                lock: true,
            });
        }
        VerbLine::Lock(l) => {
            let verb = match l {
                LockLine::Acquire => LockVerb::Acquire,
                LockLine::Release => LockVerb::Release,
                LockLine::Status => LockVerb::Status,
            };
            return operation(Operation::Lock { verb, reason: None });
        }
        VerbLine::Check => return Ok(Some(Verb::Check)),
        VerbLine::Graph => return Ok(Some(Verb::Graph)),
        VerbLine::Releases(r) => {
            return Ok(Some(Verb::Releases(ReleaseCommand {
                rollback: false,
                roots: r.components,
                to: None,
            })));
        }
        VerbLine::Rollback(r) => {
            return Ok(Some(Verb::Releases(ReleaseCommand {
                rollback: true,
                roots: r.components,
                to: None,
            })));
        }
    };
    let (verb, roots) = match service {
        ServiceLine::Status(c) => (ServiceVerb::Status, c.components),
        ServiceLine::Start(c) => (ServiceVerb::Start, c.components),
        ServiceLine::Stop(c) => (ServiceVerb::Stop, c.components),
        ServiceLine::Restart(c) => (ServiceVerb::Restart, c.components),
    };
    Ok(Some(Verb::Service(ServiceCommand { verb, roots })))
}

/// Checks the release roots a `releases` or `rollback` verb names against `roots` (each
/// root component in scope and whether it is a release): unknown names (with a suggestion)
/// and roots that are no release are configuration errors, and so is a scope without any.
pub fn check_release_roots(
    environment: &str,
    roots: &[(String, bool)],
    requested: &[String],
) -> Result<(), batou_core::ConfigError> {
    use batou_core::ConfigError;
    let releases: Vec<&str> = roots
        .iter()
        .filter(|(_, r)| *r)
        .map(|(n, _)| n.as_str())
        .collect();
    let listing = || {
        if releases.is_empty() {
            "no root component is a release: add a component of type `release` (see docs/releases.md)".to_string()
        } else {
            format!("release roots: {}", releases.join(", "))
        }
    };
    for name in requested {
        match roots.iter().find(|(root, _)| root == name) {
            None => {
                return Err(ConfigError::new(format!(
                    "unknown root component `{name}` in environment `{environment}`"
                ))
                .suggest(name, roots.iter().map(|(root, _)| root.as_str()))
                .hint(listing()));
            }
            Some((_, false)) => {
                return Err(
                    ConfigError::new(format!("root component `{name}` is not a release"))
                        .hint(listing()),
                );
            }
            Some((_, true)) => {}
        }
    }
    if releases.is_empty() {
        return Err(ConfigError::new(format!(
            "no root component of environment `{environment}` is a release"
        ))
        .hint(listing()));
    }
    Ok(())
}

/// A host's line in the summary after `releases` or `rollback`: failed when any release
/// root failed, changed when a rollback switched a release, unchanged otherwise; the detail
/// says what is current (and what was) per release root.
pub fn release_summary(reports: &[ReleaseReport]) -> (HostStatus, String) {
    let mut status = HostStatus::Unchanged;
    let mut parts = Vec::new();
    for r in reports {
        let current = r
            .releases
            .iter()
            .find(|e| e.current)
            .map(|e| e.id.as_str())
            .unwrap_or("none");
        let part = match &r.rollback {
            Some(rb) if !rb.succeeded() => {
                status = HostStatus::Failed;
                format!(
                    "{}: rollback failed ({})",
                    r.root,
                    rb.error.clone().unwrap_or_default().join(": ")
                )
            }
            Some(rb) if rb.from != rb.to => {
                if status != HostStatus::Failed {
                    status = HostStatus::Changed;
                }
                format!(
                    "{}: rolled back {} -> {current}",
                    r.root,
                    rb.from.as_deref().unwrap_or("none")
                )
            }
            _ if r.error.is_some() => {
                status = HostStatus::Failed;
                format!(
                    "{}: {}",
                    r.root,
                    r.error.clone().unwrap_or_default().join(": ")
                )
            }
            _ => format!(
                "{}: {} release{}, current {current}",
                r.root,
                r.releases.len(),
                if r.releases.len() == 1 { "" } else { "s" }
            ),
        };
        parts.push(part);
    }
    if parts.is_empty() {
        parts.push("no release roots".to_string());
    }
    (status, parts.join("; "))
}

/// The help of the `VERB` words, for a command's `--help`.
pub const VERB_HELP: &str = "A verb instead of a deploy, after the environment: `service status|start|stop|restart [COMPONENT]...` controls the services of the named root components (default: every one with a service); `releases [COMPONENT]...` lists the releases; `rollback [COMPONENT]...` switches back to the previous release (or `--to <ID>`); `status` shows each host; `history` its deploys and `exec -- ARGV...` runs a program (`batou-remote` only); `lock acquire -m REASON|release|status` freezes deploys (see docs/operations.md); `check` validates the environment offline (no host contacted, no identity needed); `graph` prints the hosts, steps, resources and their order as text or Graphviz DOT (`--format text|dot`)";

/// A host's line in the summary after a `service` verb: failed when any service failed,
/// changed when the verb changed any, unchanged otherwise (`status` changes nothing); the
/// detail counts the services by result.
pub fn service_summary(verb: ServiceVerb, outcomes: &[ServiceOutcome]) -> (HostStatus, String) {
    let status = if outcomes.iter().any(ServiceOutcome::is_failed) {
        HostStatus::Failed
    } else if outcomes.iter().any(ServiceOutcome::is_changed) {
        HostStatus::Changed
    } else {
        HostStatus::Unchanged
    };
    let mut counts: Vec<(String, usize)> = Vec::new();
    for outcome in outcomes {
        let word = match &outcome.result {
            ServiceResult::Status { status } if status.running => "running".to_string(),
            ServiceResult::Status { .. } => "not running".to_string(),
            ServiceResult::Changed { action } => action.clone(),
            ServiceResult::Unchanged => "unchanged".to_string(),
            ServiceResult::Failed { .. } => "failed".to_string(),
        };
        match counts.iter_mut().find(|(w, _)| *w == word) {
            Some((_, n)) => *n += 1,
            None => counts.push((word, 1)),
        }
    }
    let noun = if outcomes.len() == 1 {
        "service"
    } else {
        "services"
    };
    let parts: Vec<String> = counts.iter().map(|(w, n)| format!("{n} {w}")).collect();
    let detail = format!(
        "{} {noun} ({}): {}",
        outcomes.len(),
        verb.as_str(),
        parts.join(", ")
    );
    (status, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn the_words_after_the_environment_name_a_verb_or_nothing() {
        assert_eq!(parse_verb("batou-local", &[]).unwrap(), None);
        assert_eq!(
            parse_verb("batou-local", &words("service status")).unwrap(),
            Some(Verb::Service(ServiceCommand {
                verb: ServiceVerb::Status,
                roots: Vec::new()
            }))
        );
        assert_eq!(
            parse_verb("batou-local", &words("service restart web api")).unwrap(),
            Some(Verb::Service(ServiceCommand {
                verb: ServiceVerb::Restart,
                roots: vec!["web".into(), "api".into()]
            }))
        );
        assert_eq!(
            parse_verb("batou-local", &words("rollback app")).unwrap(),
            Some(Verb::Releases(ReleaseCommand {
                rollback: true,
                roots: vec!["app".into()],
                to: None,
            }))
        );
        assert_eq!(
            parse_verb("batou-local", &words("releases")).unwrap(),
            Some(Verb::Releases(ReleaseCommand {
                rollback: false,
                roots: Vec::new(),
                to: None,
            }))
        );
        assert_eq!(
            parse_verb("batou-remote", &words("exec ls -la /srv")).unwrap(),
            Some(Verb::Operation(Operation::Exec {
                argv: words("ls -la /srv"),
                timeout: EXEC_TIMEOUT,
                lock: true,
            }))
        );
        assert_eq!(
            parse_verb("batou-remote", &words("lock release")).unwrap(),
            Some(Verb::Operation(Operation::Lock {
                verb: batou_core::operations::LockVerb::Release,
                reason: None,
            }))
        );
        assert!(parse_verb("batou-remote", &words("exec")).is_err());
        assert_eq!(
            parse_verb("batou-local", &words("check")).unwrap(),
            Some(Verb::Check)
        );
        assert_eq!(
            parse_verb("batou-local", &words("graph")).unwrap(),
            Some(Verb::Graph)
        );
        let err = parse_verb("batou-local", &words("service reload")).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidSubcommand);
        let err = parse_verb("batou-local", &words("servce status")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("'servce'") && text.contains("'service'"),
            "{text}"
        );
        assert!(
            text.contains("batou-local <ENVIRONMENT>"),
            "usage names the command: {text}"
        );
        let err = parse_verb("batou-local", &words("service")).unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
    }

    #[test]
    fn the_operations_take_their_own_options_only() {
        use batou_core::operations::LockVerb;
        let args = |limit, timeout: Option<&str>, no_lock, message: Option<&str>| OperationArgs {
            limit,
            timeout: timeout.map(str::to_string),
            no_lock,
            lock: LockArgs {
                message: message.map(str::to_string),
            },
        };
        assert_eq!(
            Operation::History { limit: 0 }.with(&args(Some(3), None, false, None)),
            Ok(Operation::History { limit: 3 })
        );
        assert_eq!(
            Operation::History { limit: 0 }.with(&OperationArgs::default()),
            Ok(Operation::History {
                limit: HISTORY_LIMIT
            })
        );
        let exec = || Operation::Exec {
            argv: vec!["uptime".into()],
            timeout: EXEC_TIMEOUT,
            lock: true,
        };
        assert_eq!(
            exec().with(&args(None, Some("90s"), true, None)),
            Ok(Operation::Exec {
                argv: vec!["uptime".into()],
                timeout: std::time::Duration::from_secs(90),
                lock: false,
            })
        );
        assert_eq!(
            exec().with(&args(None, Some("2.5"), false, None)).unwrap(),
            Operation::Exec {
                argv: vec!["uptime".into()],
                timeout: std::time::Duration::from_millis(2500),
                lock: true,
            }
        );
        assert!(exec().with(&args(None, Some("soon"), false, None)).is_err());
        assert!(exec().with(&args(None, Some("0"), false, None)).is_err());
        assert_eq!(
            Operation::Status.with(&args(Some(1), None, false, None)),
            Err("`--limit` applies to the `history` verb only".into())
        );
        let lock = |verb| Operation::Lock { verb, reason: None };
        assert!(
            lock(LockVerb::Acquire)
                .with(&OperationArgs::default())
                .is_err()
        );
        assert_eq!(
            lock(LockVerb::Acquire).with(&args(None, None, false, Some("migration"))),
            Ok(Operation::Lock {
                verb: LockVerb::Acquire,
                reason: Some("migration".into())
            })
        );
        assert!(
            lock(LockVerb::Release)
                .with(&args(None, None, false, Some("x")))
                .is_err()
        );
    }

    #[test]
    fn a_summary_counts_services_by_result() {
        let outcome = |result| ServiceOutcome {
            root: "web".into(),
            component: "web > Service('web')".into(),
            result,
        };
        let restarted = || {
            outcome(ServiceResult::Changed {
                action: "restarted".into(),
            })
        };
        assert_eq!(
            service_summary(ServiceVerb::Restart, &[restarted(), restarted()]),
            (
                HostStatus::Changed,
                "2 services (restart): 2 restarted".into()
            )
        );
        assert_eq!(
            service_summary(
                ServiceVerb::Start,
                &[
                    outcome(ServiceResult::Unchanged),
                    outcome(ServiceResult::Failed { error: Vec::new() })
                ]
            ),
            (
                HostStatus::Failed,
                "2 services (start): 1 unchanged, 1 failed".into()
            )
        );
        assert_eq!(
            service_summary(ServiceVerb::Stop, &[outcome(ServiceResult::Unchanged)]),
            (
                HostStatus::Unchanged,
                "1 service (stop): 1 unchanged".into()
            )
        );
    }
}
