//! The roles every deployment binary plays for a controller, besides its command line:
//! serving an agent session, installing an uploaded agent, printing a remote plan.
//!
//! [`HostRole`] is what runs on hosts; the stock agent (`batou-agent`) has those roles
//! only, so that planning (and with it decrypting secrets) is not part of what is shipped.

use std::path::PathBuf;
use std::process::ExitCode;

use batou_core::Registry;
use clap::Subcommand;

use crate::{Exit, agent, identity_source, print_error, registry, remote_plan};

/// Set for a project binary's `plan` role by a controller that plans for a verb: releases
/// are planned without building (see [`batou_core::bundle::skip_builds`]).
pub const SKIP_BUILDS_ENV: &str = "BATOU_SKIP_BUILDS";

/// The roles every deployment binary has besides its command line, for a controller. They
/// are commands of their own, hidden from `--help`.
#[derive(Debug, Subcommand)]
pub enum Role {
    /// The roles a controller starts on hosts.
    #[command(flatten)]
    Host(HostRole),
    /// Print the remote plan of an environment as JSON.
    #[command(hide = true)]
    Plan {
        /// The environment to plan.
        environment: String,
        /// The project's root directory.
        #[arg(default_value = ".")]
        project: PathBuf,
        /// Plan for a dry run: generate no secret for keeps.
        #[arg(long)]
        dry_run: bool,
        /// A JSON file of hosts' platform facts (host name to facts), gathered by the
        /// controller after this role said it needs them.
        #[arg(long)]
        facts: Option<PathBuf>,
    },
}

/// The roles a controller starts on a host: everything an agent binary must have.
#[derive(Debug, Subcommand)]
pub enum HostRole {
    /// Serve one controller session on stdin/stdout.
    #[command(hide = true)]
    Agent,
    /// Verify an uploaded agent (this binary) against its SHA-256 and install it.
    #[command(hide = true)]
    AgentInstall {
        /// The SHA-256 the uploaded binary must have, in hex.
        sha256: String,
        /// Where to install the verified binary.
        target: PathBuf,
    },
    /// Say what the host's bundle store holds of a digest, as one JSON line.
    #[command(hide = true)]
    BundleCheck {
        /// The environment's `base_dir` as the job gives it.
        base_dir: String,
        /// The bundle's SHA-256, in hex.
        sha256: String,
    },
    /// Append stdin to a partial bundle upload; once whole, verify it against its SHA-256
    /// and install it in the store.
    #[command(hide = true)]
    BundleReceive {
        /// The environment's `base_dir` as the job gives it.
        base_dir: String,
        /// The bundle's SHA-256, in hex.
        sha256: String,
        /// The bundle's size in bytes.
        size: u64,
    },
}

impl HostRole {
    /// Serves this role with the library's component types plus the project's.
    pub fn serve(self, register: impl FnOnce(&mut Registry)) -> ExitCode {
        match self {
            HostRole::Agent => ExitCode::from(agent::serve(&registry(register))),
            HostRole::AgentInstall { sha256, target } => {
                ExitCode::from(agent::install(&sha256, &target))
            }
            HostRole::BundleCheck { base_dir, sha256 } => {
                ExitCode::from(crate::releases::check(&base_dir, &sha256))
            }
            HostRole::BundleReceive {
                base_dir,
                sha256,
                size,
            } => ExitCode::from(crate::releases::receive(&base_dir, &sha256, size)),
        }
    }
}

impl Role {
    /// Serves this role with the library's component types plus the project's.
    pub fn serve(self, register: impl FnOnce(&mut Registry)) -> ExitCode {
        match self {
            Role::Host(role) => role.serve(register),
            Role::Plan {
                environment,
                project,
                dry_run,
                facts,
            } => {
                if std::env::var_os(SKIP_BUILDS_ENV).is_some() {
                    batou_core::bundle::skip_builds();
                }
                let identities = identity_source(None);
                let facts = match facts.map(|path| read_facts(&path)).transpose() {
                    Ok(facts) => facts.unwrap_or_default(),
                    Err(err) => {
                        print_error(&err, false);
                        return Exit::of_error(&err).into();
                    }
                };
                match remote_plan(
                    &project,
                    &environment,
                    &registry(register),
                    &identities,
                    dry_run,
                    &facts,
                ) {
                    Ok(plan) => {
                        println!(
                            "{}",
                            serde_json::to_string(&plan).expect("plans always serialize")
                        );
                        ExitCode::SUCCESS
                    }
                    Err(err) => {
                        let exit = Exit::of_error(&err);
                        print_error(&err, false);
                        exit.into()
                    }
                }
            }
        }
    }
}

/// Hosts' facts from the JSON file the controller wrote.
fn read_facts(
    path: &std::path::Path,
) -> anyhow::Result<std::collections::BTreeMap<String, batou_core::Facts>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the facts file `{}`", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("cannot read the facts file `{}`", path.display()))
}
