//! The planning pipeline: an environment loaded with its secrets, planned for remote hosts;
//! where this user's identities are. Controllers (`batou-remote`, and a project binary's
//! `plan` role) and the local converge share it.

use std::path::{Path, PathBuf};

use batou_core::secrets::{IDENTITY_ENV, IdentitySource, UserDirs};
use batou_core::{ConfigError, Environment, Plan, Project, Registry};

/// Loads an environment and plans it for remote hosts (relative base directories below each
/// host's home).
pub fn remote_plan(
    project: &Path,
    environment: &str,
    registry: &Registry,
    identities: &IdentitySource,
) -> anyhow::Result<batou_core::protocol::RemotePlan> {
    let environment = load_environment(project, environment, registry, identities)?;
    let base_dir = environment.remote_base_dir();
    let plan = Plan::build(&environment, registry, &Project::new(project), &base_dir)?;
    Ok(plan.export(environment.settings.jobs)?)
}

/// Where this user's identities are: `explicit` (`--identity`), else `BATOU_IDENTITY`, else
/// the default files below `HOME` and `XDG_CONFIG_HOME`.
pub fn identity_source(explicit: Option<PathBuf>) -> IdentitySource {
    let dirs = UserDirs::new(home().map(Into::into), std::env::var_os("XDG_CONFIG_HOME"));
    IdentitySource::new(explicit, std::env::var_os(IDENTITY_ENV), dirs)
}

/// This user's home directory, from `HOME`.
pub(crate) fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// Loads an environment with its secrets (when it has a secrets file) and registers every
/// secret value for masking in this process's output.
pub fn load_environment(
    project: &Path,
    name: &str,
    registry: &Registry,
    identities: &IdentitySource,
) -> Result<Environment, ConfigError> {
    let mut environment = Environment::load(project, name, registry)?;
    if let Some(secrets) = batou_core::secrets::load(project, name, identities)? {
        secrets.register_masks();
        environment.apply_secrets(secrets, registry)?;
    }
    Ok(environment)
}
