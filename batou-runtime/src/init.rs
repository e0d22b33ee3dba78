//! `init`: create a deployment repository that converges at once.
//!
//! The files are fixed text (below), written with `create_new` after every one of them was
//! found absent: an existing file is never overwritten, and a refused `init` writes nothing.
//! With `--rust` the repository is also a Cargo package with one component type of its own
//! and a unit test of it; its `batou` dependency is a path (`--batou-path`, a checkout of
//! this workspace or its `batou` crate; by default the checkout this binary was built from)
//! or, when that checkout is gone, this release's version.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use batou_core::ConfigError;

use crate::{Exit, ExitError};

/// What `init` was asked to create.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The directory of the new deployment repository (created when missing).
    #[arg(default_value = ".", value_name = "DIR")]
    pub dir: PathBuf,
    /// Also make it a Cargo package with a component type of its own and its test.
    #[arg(long)]
    pub rust: bool,
    /// With `--rust`: depend on the `batou` crate at this path (a checkout of batou's
    /// workspace, or its `batou/` directory) instead of the checkout this binary was built
    /// from (or, when that is gone, the released version).
    #[arg(long, value_name = "DIR", requires = "rust")]
    pub batou_path: Option<PathBuf>,
}

/// Creates the repository; returns the files written, relative to `args.dir`.
pub fn init(args: &InitArgs) -> anyhow::Result<Vec<PathBuf>> {
    let files = files(args)?;
    let existing: Vec<String> = files
        .iter()
        .map(|(path, _)| path)
        .filter(|path| args.dir.join(path).symlink_metadata().is_ok())
        .map(|path| format!("`{}`", path.display()))
        .collect();
    if !existing.is_empty() {
        return Err(ExitError {
            exit: Exit::DeployFailed,
            error: ConfigError::new(format!(
                "refusing to overwrite {} in `{}`: nothing was written",
                existing.join(", "),
                args.dir.display()
            ))
            .hint("run `init` in an empty directory, or move those files away first"),
        }
        .into());
    }
    for (path, text) in &files {
        let target = args.dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create the directory `{}`", parent.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .with_context(|| format!("cannot create `{}`", target.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("cannot write `{}`", target.display()))?;
    }
    Ok(files.into_iter().map(|(path, _)| path).collect())
}

/// The files of the new repository and their text.
fn files(args: &InitArgs) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut environment = DEV_TOML.to_string();
    let mut files = vec![
        (".gitignore", GITIGNORE.to_string()),
        ("templates/motd.j2", MOTD_TEMPLATE.to_string()),
    ];
    if args.rust {
        environment = environment.replace(
            "components = [\"motd\", \"logs\", \"current\", \"stamp\"]",
            "components = [\"motd\", \"logs\", \"current\", \"stamp\", \"greeting\"]",
        );
        environment.push_str(GREETING_TOML);
        let name = package_name(&args.dir)?;
        files.push(("Cargo.toml", cargo_toml(&name, args.batou_path.as_deref())?));
        files.push(("src/main.rs", MAIN_RS.to_string()));
        files.push(("src/greeting.rs", GREETING_RS.to_string()));
    }
    files.insert(0, ("environments/dev.toml", environment));
    Ok(files
        .into_iter()
        .map(|(path, text)| (PathBuf::from(path), text))
        .collect())
}

/// A Cargo package name from the directory's name: `my deploy` becomes `my-deploy`.
fn package_name(dir: &Path) -> anyhow::Result<String> {
    let dir = std::path::absolute(dir)?;
    let base = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("deployment");
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_matches('-').to_string();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name = format!("deployment-{name}")
            .trim_end_matches('-')
            .to_string();
    }
    Ok(name)
}

/// The `batou` crate of the workspace this binary was built from, while that checkout
/// still exists: what `init --rust` depends on without `--batou-path`.
fn built_from() -> Option<PathBuf> {
    let krate = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .join("batou");
    krate.join("Cargo.toml").is_file().then_some(krate)
}

fn cargo_toml(name: &str, batou_path: Option<&Path>) -> anyhow::Result<String> {
    let built_from = built_from();
    let batou_path = batou_path.or(built_from.as_deref());
    let batou = match batou_path {
        Some(path) => {
            let path = std::path::absolute(path)?;
            let krate = if path.join("batou/Cargo.toml").is_file() {
                path.join("batou")
            } else {
                path
            };
            if !krate.join("Cargo.toml").is_file() {
                return Err(ConfigError::new(format!(
                    "`--batou-path {}` has no `Cargo.toml` and no `batou/Cargo.toml`",
                    krate.display()
                ))
                .hint("pass a checkout of batou's workspace or its `batou/` directory")
                .into());
            }
            let path = krate.to_str().with_context(|| {
                format!("`{}` is not UTF-8, which Cargo.toml needs", krate.display())
            })?;
            format!("path = {}", toml_string(path))
        }
        None => format!("version = \"{}\"", env!("CARGO_PKG_VERSION")),
    };
    Ok(CARGO_TOML
        .replace("@NAME@", name)
        .replace("@BATOU@", &batou))
}

/// `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

const GITIGNORE: &str = "\
# What `batou-local dev` converges (base_dir = \".\" puts it below work/).
/work
# Cargo's build output, when this repository has component types of its own.
/target
";

const DEV_TOML: &str = r#"# The `dev` environment: converge it on this machine with `batou-local dev`.
#
# Every root component below is an instance of a library component type; their attributes
# are described in batou's docs/components.md. With `base_dir = "."`, each root component
# works in `work/<name>/` of this repository, and relative paths are relative to it.

[environment]
connect = "local"
base_dir = "."

# This machine. `data` is free host data for templates (`{{ host.data.greeting }}`).
[hosts.localhost]
components = ["motd", "logs", "current", "stamp"]
data = { greeting = "Welcome" }

# file: a file rendered from a template of this repository (`content` or `source` also
# work), with its permission bits.
[components.motd]
type = "file"
path = "motd"
template = "templates/motd.j2"
vars = { owner = "the operators" }
mode = 0o644

# directory: a directory (give it a `source` directory of this repository to mirror, and
# `purge = true` to remove what the source does not have).
[components.logs]
type = "directory"
path = "logs"
mode = 0o750

# symlink: a stable name for something else; the target is written as given.
[components.current]
type = "symlink"
path = "current"
target = "../motd/motd"

# command: runs while its guard says so (`creates`, `unless` or `on_change`): here until
# the file `stamp` exists. No shell is involved: `argv` is the program and its arguments.
[components.stamp]
type = "command"
argv = ["touch", "stamp"]
creates = "stamp"

# service: a long-running program kept up by runit or systemd, restarted when what it
# watches changes and proven healthy. It needs a supervisor on the host, so it is left out
# here: install runit, run `runsvdir` on a directory of your own, uncomment this, set the
# host's `data` to `{ service_manager = "runit", service_dir = "/path/to/that/dir" }`, add
# that directory to `allow_paths` in `[environment]`, and add "web" to the host's
# `components`.
#
# [components.web]
# type = "service"
# argv = ["python3", "-m", "http.server", "8080", "--bind", "127.0.0.1"]
# cwd = "../motd"
# restart_on = ["motd"]
# health = { http = "http://127.0.0.1:8080/motd", within = "20s" }
"#;

const GREETING_TOML: &str = r#"
# greeting: a component type of this repository (src/greeting.rs), registered in
# src/main.rs. `batou-local dev` builds the package and hands over to its binary.
[components.greeting]
name = "operators"
"#;

const MOTD_TEMPLATE: &str = "\
{{ host.data.greeting }} to {{ host.name }}, looked after by {{ owner }}.
";

const CARGO_TOML: &str = r#"[package]
name = "@NAME@"
version = "0.1.0"
edition = "2024"
publish = false
description = "A deployment repository with component types of its own"

# A workspace of its own, also when this directory lies inside another Cargo workspace.
[workspace]

[dependencies]
batou = { @BATOU@ }
anyhow = "1"
serde = { version = "1", features = ["derive"] }

[dev-dependencies]
# `batou::testing`: converge an environment in process in the tests of the component types.
batou = { @BATOU@, features = ["testing"] }

[profile.dev]
# Smaller debug information: faster builds of the binary that is shipped to hosts.
debug = "line-tables-only"

# The controller hashes the agent binary (this package's) before every deploy.
[profile.dev.package.sha2]
opt-level = 3
"#;

const MAIN_RS: &str = r#"//! This deployment's binary: batou's command line with the component types of this
//! repository registered next to the library's.

mod greeting;

fn main() -> std::process::ExitCode {
    batou::main_with(|registry| {
        registry.register::<greeting::Greeting>("greeting");
    })
}
"#;

const GREETING_RS: &str = r#"//! `Greeting`: a file that greets someone, built from a library `File`.

use batou::{Component, Configure, File};
use serde::Deserialize;

/// A component type of this repository: its attributes are the fields, overridable in
/// `[components.<name>]` of an environment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Greeting {
    /// Who is greeted.
    name: String,
}

impl Component for Greeting {
    fn label(&self) -> String {
        format!("Greeting('{}')", self.name)
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        let text = format!("Hello, {}, from {}!\n", self.name, cx.host().name);
        cx.add(File::new("greeting.txt").content(text).mode(0o644));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use batou::testing::TestProject;

    use super::Greeting;

    #[test]
    fn writes_the_greeting_then_changes_nothing() {
        let mut registry = batou::registry(|_| {});
        registry.register::<Greeting>("greeting");
        let project = TestProject::new(registry);
        project.env(
            "dev",
            "[hosts.localhost]\ncomponents = [\"greeting\"]\n\n\
             [components.greeting]\nname = \"tests\"\n",
        );
        project
            .converge("dev")
            .assert_changed(&["greeting > Workdir", "greeting > File('greeting.txt')"]);
        let text = std::fs::read_to_string(project.workdir("greeting").join("greeting.txt"));
        assert_eq!(text.unwrap(), "Hello, tests, from localhost!\n");
        project.converge("dev").assert_unchanged();
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_follow_the_directory() {
        assert_eq!(
            package_name(Path::new("/x/My Deploy")).unwrap(),
            "my-deploy"
        );
        assert_eq!(package_name(Path::new("/x/shop_ops")).unwrap(), "shop_ops");
        assert_eq!(
            package_name(Path::new("/x/2026")).unwrap(),
            "deployment-2026"
        );
    }

    #[test]
    fn the_batou_dependency_is_a_path_or_this_version() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        // Built inside this workspace, the default is the workspace's `batou` crate.
        let text = cargo_toml("d", None).unwrap();
        let expected = toml_string(workspace.join("batou").to_str().unwrap());
        assert!(
            text.contains(&format!("batou = {{ path = {expected} }}")),
            "{text}"
        );
        let text = cargo_toml("d", Some(workspace)).unwrap();
        let expected = toml_string(workspace.join("batou").to_str().unwrap());
        assert!(
            text.contains(&format!("batou = {{ path = {expected} }}")),
            "{text}"
        );
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert!(parsed["dev-dependencies"]["batou"]["features"].is_array());
        let err = cargo_toml("d", Some(Path::new("/nonexistent"))).unwrap_err();
        assert!(err.to_string().contains("has no `Cargo.toml`"), "{err}");
    }

    #[test]
    fn the_rust_environment_deploys_the_greeting() {
        let args = InitArgs {
            dir: "/tmp/x".into(),
            rust: true,
            batou_path: None,
        };
        let files = files(&args).unwrap();
        let dev = &files[0].1;
        assert!(dev.contains("\"stamp\", \"greeting\"]"), "{dev}");
        assert!(dev.contains("[components.greeting]"));
    }
}
