//! Projects with their own component types: build the project's binary and run it instead.
//!
//! A deployment repository whose `Cargo.toml` has a `[package]` is built with cargo (quietly;
//! the build output is shown only when it fails) and the stock binary replaces itself with
//! the project's binary, passing the same arguments.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use batou_core::{ConfigError, Place};

/// Set for the project's binary so that it never hands over again.
pub(crate) const GUARD: &str = "BATOU_PROJECT_BINARY";

/// Hands over to the project's binary when `project` is a Cargo package; returns only when it
/// is not (or with the error that stopped the hand-over).
#[expect(
    clippy::disallowed_methods,
    reason = "exec replaces this process with the project's binary; nothing is left to bound"
)]
pub(crate) fn hand_over_if_package(project: &Path) -> anyhow::Result<()> {
    let Some(binary) = build_if_package(project)? else {
        return Ok(());
    };
    let err = std::process::Command::new(&binary)
        .args(std::env::args_os().skip(1))
        .env(GUARD, "1")
        .exec();
    Err(err).with_context(|| format!("cannot run the project's binary `{}`", binary.display()))
}

/// Builds the project's binary when `project` is a Cargo package; `None` when it is not.
pub fn build_if_package(project: &Path) -> anyhow::Result<Option<PathBuf>> {
    match package_manifest(project) {
        Some(manifest) => build(&manifest, &[], &[]).map(Some),
        None => Ok(None),
    }
}

/// The target that agents shipped to hosts are built for.
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The `agent` profile as `cargo --config` values: the same as `[profile.agent]` in this
/// workspace's `Cargo.toml` (a test holds them together), given on the command line so that a
/// project needs no profile of its own.
pub const AGENT_PROFILE: &[(&str, &str)] = &[
    ("inherits", "\"release\""),
    ("opt-level", "\"z\""),
    ("lto", "\"fat\""),
    ("codegen-units", "1"),
    ("strip", "true"),
    ("panic", "\"abort\""),
    ("incremental", "false"),
    ("package.sha2.opt-level", "3"),
];

/// The flags of static agent builds (see `scripts/build-agent`, which uses the same).
pub const AGENT_RUSTFLAGS: &str = "-C target-feature=+crt-static -C relocation-model=static";

/// Builds the project's binary as an agent for hosts when `project` is a Cargo package:
/// the `agent` profile, statically linked for [`AGENT_TARGET`]; `None` when it is not a
/// package. A controller uses this one binary both to plan and as the agent.
pub fn build_agent_if_package(project: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Some(manifest) = package_manifest(project) else {
        return Ok(None);
    };
    let mut args: Vec<String> = vec![
        "--profile".into(),
        "agent".into(),
        "--target".into(),
        AGENT_TARGET.into(),
    ];
    for (key, value) in AGENT_PROFILE {
        args.push("--config".into());
        args.push(format!("profile.agent.{key}={value}"));
    }
    let env = [(
        format!(
            "CARGO_TARGET_{}_RUSTFLAGS",
            AGENT_TARGET.to_uppercase().replace('-', "_")
        ),
        AGENT_RUSTFLAGS.to_string(),
    )];
    build(&manifest, &args, &env).map(Some)
}

/// The manifest of `project` when it is a Cargo package.
fn package_manifest(project: &Path) -> Option<PathBuf> {
    let manifest = project.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).ok()?;
    toml::from_str::<toml::Table>(&text)
        .is_ok_and(|t| t.contains_key("package"))
        .then_some(manifest)
}

/// Builds the package of `manifest` and returns the path of its binary.
#[expect(
    clippy::disallowed_methods,
    reason = "building the project with cargo has no sensible deadline, and Ctrl-C reaches cargo in this process's group"
)]
fn build(manifest: &Path, args: &[String], env: &[(String, String)]) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = std::process::Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "--message-format=json-render-diagnostics",
        ])
        .args(args)
        .arg("--manifest-path")
        .arg(manifest)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .map_err(|e| {
            ConfigError::new("cannot run `cargo` to build the project's components")
                .at(Place::Path(manifest.display().to_string()))
                .hint(
                    "install Rust with cargo, or remove `[package]` to use only library components",
                )
                .caused_by(e.into())
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let rendered: String = stderr.lines().map(|l| format!("{l}\n")).collect();
        return Err(ConfigError::new(format!(
            "the project's components do not build:\n{}",
            rendered.trim_end()
        ))
        .at(Place::Path(manifest.display().to_string()))
        .into());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let manifest = std::fs::canonicalize(manifest)?;
    let mut binary = None;
    for line in stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_bin = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "bin"));
        let same_manifest = msg["manifest_path"]
            .as_str()
            .and_then(|p| std::fs::canonicalize(p).ok())
            .is_some_and(|p| p == manifest);
        if is_bin
            && same_manifest
            && let Some(exe) = msg["executable"].as_str()
        {
            binary = Some(PathBuf::from(exe));
        }
    }
    binary.ok_or_else(|| {
        ConfigError::new("the project's package has no binary target")
            .at(Place::Path(manifest.display().to_string()))
            .hint("add `src/main.rs` calling `batou::main_with`")
            .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `--config` values of a project's agent build are the workspace's `agent` profile.
    #[test]
    fn the_agent_profile_is_the_workspaces() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        let text = std::fs::read_to_string(manifest).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let profile = &table["profile"]["agent"];
        for (key, value) in AGENT_PROFILE {
            let mut found = profile;
            for part in key.split('.') {
                found = &found[part];
            }
            assert_eq!(&found.to_string(), value, "profile.agent.{key}");
        }
        let keys =
            profile.as_table().unwrap().len() - 1 + profile["package"].as_table().unwrap().len();
        assert_eq!(
            keys,
            AGENT_PROFILE.len(),
            "every key of the profile is passed"
        );
    }
}
