//! The offline verbs: `<ENVIRONMENT> check` and `<ENVIRONMENT> graph`, shared by every
//! deployment binary. Both load and configure the whole environment (every host) on this
//! machine with no host contacted and no identity: the secrets' names and shape come from
//! the cleartext index `secrets/<env>.names` (see `batou_core::secrets::index_text`), with
//! placeholder values, so nothing is decrypted.
//!
//! `check` reports every configuration error it finds (`batou_core::Plan::check`), not just
//! the first; `graph` prints the plan (`crate::graph`). Running them through a project's
//! own binary, when the deployment repository has component types of its own, is the
//! commands' business.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use batou_core::secrets::{IndexState, Secrets, index_path, index_state, secrets_path};
use batou_core::{ConfigError, Connect, Environment, Facts, FactsInput, Plan, Project, Registry};

use crate::Exit;

/// What an offline verb is run on.
#[derive(Debug, Clone)]
pub struct Offline {
    /// The deployment repository.
    pub project: PathBuf,
    /// The environment's name.
    pub environment: String,
    /// `--facts FILE`: hosts' platform facts (JSON, host name to facts) for environments
    /// whose configure reads them.
    pub facts: Option<PathBuf>,
    /// `--json`: errors and warnings as JSON lines on stdout too.
    pub json: bool,
}

/// An environment configured offline: its plan's input and what was found on the way.
struct Loaded {
    environment: Environment,
    /// Errors found before configuring that do not stop it (a stale index).
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    base_dir: PathBuf,
    facts: BTreeMap<String, Facts>,
}

/// `<ENVIRONMENT> check`: every configuration error of the environment, on stderr (and as
/// `error` lines with `--json`); exit 0 when there is none, 3 otherwise.
pub fn check(offline: &Offline, registry: &Registry) -> anyhow::Result<Exit> {
    let mut loaded = match load(offline, registry)? {
        Ok(loaded) => loaded,
        Err(errors) => return Ok(report(offline, errors, &[], None)),
    };
    let input = FactsInput {
        facts: loaded.facts.clone(),
        reads: Default::default(),
    };
    let project = Project::new(&offline.project);
    let found = Plan::check(
        &loaded.environment,
        registry,
        &project,
        &loaded.base_dir,
        &input,
    );
    unknown_facts(&input, &loaded.facts, &mut loaded.warnings);
    let mut errors = loaded.errors;
    errors.extend(found);
    let steps: usize = loaded
        .environment
        .hosts
        .iter()
        .map(|h| h.components.len())
        .sum();
    let hosts = loaded.environment.hosts.len();
    Ok(report(
        offline,
        errors,
        &loaded.warnings,
        Some((hosts, steps)),
    ))
}

/// `<ENVIRONMENT> graph`: the plan, built offline, as text or Graphviz DOT on stdout.
pub fn graph(
    offline: &Offline,
    registry: &Registry,
    format: crate::graph::Format,
) -> anyhow::Result<Exit> {
    let loaded = match load(offline, registry)? {
        Ok(loaded) => loaded,
        Err(errors) => return Ok(report(offline, errors, &[], None)),
    };
    let mut warnings = loaded.warnings;
    // A stale index still has the shape of the secrets as far as the plan goes: say so, and
    // draw.
    warnings.extend(loaded.errors.iter().map(|e| e.to_string()));
    let input = FactsInput {
        facts: loaded.facts.clone(),
        reads: Default::default(),
    };
    let plan = Plan::build_with_facts(
        &loaded.environment,
        registry,
        &Project::new(&offline.project),
        &loaded.base_dir,
        &input,
    )?;
    unknown_facts(&input, &loaded.facts, &mut warnings);
    for warning in &warnings {
        warn(offline.json, warning);
    }
    let text = match format {
        crate::graph::Format::Text => crate::graph::text(&plan),
        crate::graph::Format::Dot => crate::graph::dot(&plan),
    };
    print!("{text}");
    Ok(Exit::Success)
}

/// Loads the environment with placeholder secrets from the names index; `Err` with the
/// errors that stop an offline verb before configuring (the environment file itself, an
/// index that is missing or does not fit the environment).
fn load(
    offline: &Offline,
    registry: &Registry,
) -> anyhow::Result<Result<Loaded, Vec<ConfigError>>> {
    let name = &offline.environment;
    let root = &offline.project;
    let mut environment = match Environment::load(root, name, registry) {
        Ok(e) => e,
        // The file's own errors are found one at a time: the first ends its loading.
        Err(e) => return Ok(Err(vec![e])),
    };
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let age = secrets_path(name);
    let index = index_path(name);
    let encrypted = match std::fs::read(root.join(&age)) {
        Ok(data) => Some(data),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read `{age}`")),
    };
    let index_text = match std::fs::read_to_string(root.join(&index)) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read `{index}`")),
    };
    let regenerate = format!("{} secrets index {name}", program());
    let mut cleartext = None;
    match (&encrypted, index_text) {
        (None, None) => {}
        (None, Some(_)) => warnings.push(format!(
            "`{index}` describes secrets, but `{age}` does not exist: the environment is checked without secrets"
        )),
        (Some(_), None) => {
            return Ok(Err(vec![
                ConfigError::new(format!(
                    "`{index}` does not exist: the names of the secrets in `{age}` are unknown without an identity"
                ))
                .hint(format!(
                    "run `{regenerate}` where an identity can decrypt `{age}`, and commit `{index}`"
                )),
            ]));
        }
        (Some(data), Some(text)) => {
            if index_state(&text, data) == IndexState::Stale {
                errors.push(
                    ConfigError::new(format!(
                        "`{index}` is stale: it was written for another version of `{age}`, so the names checked may be wrong"
                    ))
                    .hint(format!(
                        "run `{regenerate}` where an identity can decrypt `{age}`, and commit `{index}`"
                    )),
                );
            }
            cleartext = Some(text);
        }
    }
    if let Some(text) = &cleartext {
        let applied = Secrets::parse(&index, text.clone())
            .and_then(|secrets| environment.apply_secrets(secrets, registry));
        if let Err(e) = applied {
            errors.push(e);
            return Ok(Err(errors));
        }
    }
    // Generated secrets the index lacks would be generated by the next run: configure with
    // values made for this check only, as a dry run does.
    let missing = match environment.missing_generated() {
        Ok(m) => m,
        Err(e) => {
            errors.push(e);
            return Ok(Err(errors));
        }
    };
    if !missing.is_empty() {
        let text =
            batou_core::secrets::append_generated(cleartext.as_deref().unwrap_or(""), &missing);
        for d in &missing {
            warnings.push(format!(
                "secret `{}` is not generated yet: the next deploy generates it",
                d.name()
            ));
        }
        let reloaded = Environment::load(root, name, registry).and_then(|mut e| {
            e.apply_secrets(Secrets::parse(&index, text)?, registry)?;
            Ok(e)
        });
        match reloaded {
            Ok(e) => environment = e,
            Err(e) => {
                errors.push(e);
                return Ok(Err(errors));
            }
        }
    }
    let facts = match &offline.facts {
        None => BTreeMap::new(),
        Some(path) => read_facts(path)?,
    };
    let base_dir = match environment.settings.connect {
        Connect::Local => environment.local_base_dir(root, crate::planning::home().as_deref()),
        Connect::Ssh => environment.remote_base_dir(),
    };
    Ok(Ok(Loaded {
        environment,
        errors,
        warnings,
        base_dir,
        facts,
    }))
}

/// A warning for every host whose facts a configure read but `--facts` did not give.
fn unknown_facts(input: &FactsInput, given: &BTreeMap<String, Facts>, warnings: &mut Vec<String>) {
    let unknown: Vec<String> = input
        .reads
        .hosts()
        .into_iter()
        .filter(|h| !given.contains_key(h))
        .map(|h| format!("`{h}`"))
        .collect();
    if !unknown.is_empty() {
        warnings.push(format!(
            "configure reads the platform facts of {}, which were unknown (empty) here: pass `--facts FILE` to check with them",
            unknown.join(", ")
        ));
    }
}

/// Hosts' facts from a JSON file: host name to `{os, architecture, distribution, version}`.
fn read_facts(path: &Path) -> anyhow::Result<BTreeMap<String, Facts>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the facts file `{}`", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        ConfigError::new(format!(
            "the facts file `{}` is not a JSON object of hosts' facts: {e}",
            path.display()
        ))
        .hint("for example {\"web1\": {\"os\": \"linux\", \"architecture\": \"x86_64\", \"distribution\": \"debian\", \"version\": \"13\"}}")
        .into()
    })
}

/// Prints warnings, every error and the summary line; the exit status of a check.
fn report(
    offline: &Offline,
    errors: Vec<ConfigError>,
    warnings: &[String],
    size: Option<(usize, usize)>,
) -> Exit {
    for warning in warnings {
        warn(offline.json, warning);
    }
    let count = errors.len();
    for error in errors {
        crate::print_error(&anyhow::Error::new(error), offline.json);
    }
    let env = &offline.environment;
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let scope = size
        .map(|(hosts, steps)| {
            format!(
                " ({}, {})",
                plural(hosts, "host"),
                plural(steps, "root component")
            )
        })
        .unwrap_or_default();
    if count == 0 {
        eprintln!(
            "check: environment `{env}` is valid{scope}; no host was contacted, no secret decrypted"
        );
        Exit::Success
    } else {
        eprintln!(
            "check: environment `{env}` has {}{scope}; no host was contacted",
            plural(count, "error")
        );
        Exit::InvalidConfiguration
    }
}

fn warn(json: bool, warning: &str) {
    if json {
        batou_core::output::write_json(
            &mut std::io::stdout(),
            batou_core::output::warning_event(warning.to_string()),
        );
    }
    eprintln!("warning: {}", batou_core::redact::mask(warning));
}

/// This binary's name, for hints.
fn program() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "batou-remote".into())
}
