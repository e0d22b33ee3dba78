//! `Virtualenv`: a Python virtual environment made with the host's interpreter
//! (`python -m venv`) and filled from a requirements file with its own `pip`.
//!
//! A stamp inside the environment (`.batou-virtualenv`) records the interpreter it was made
//! with and the digest of the requirements (and `pip_args`) last installed, so that it is
//! rebuilt only when the interpreter changed and updated only when the requirements did.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use batou_core::{AllowedPaths, Component, Configure, Deploy, Verdict, refuse_nul};
use serde::Deserialize;

use crate::cmd::{CommandOutput, cmd};
use crate::digest::sha256;
use crate::download::is_not_found;
use crate::fs::write_atomic;

/// How long `pip install` may run when `timeout` does not say.
const DEFAULT_TIMEOUT: f64 = 600.0;
/// The stamp's name inside the environment.
const STAMP: &str = ".batou-virtualenv";
/// What prints the interpreter's identity: its real path and its version.
const IDENTITY: &str =
    "import os, sys; print(os.path.realpath(sys.executable)); print(sys.version.split()[0])";

/// A Python virtual environment with the packages of a requirements file.
///
/// ```toml
/// [components.venv]
/// type = "virtualenv"
/// path = "venv"                        # relative to the work directory (default `venv`)
/// python = "python3"                   # the interpreter, a name on PATH or a path
/// requirements = "requirements.txt"    # a project file
/// pip_args = ["--no-index", "--find-links", "/srv/wheels"]
/// timeout = 600                        # seconds for `pip install`
/// ```
///
/// It is rebuilt from scratch when the interpreter's real path or version changed (or the
/// environment is missing or no longer runs), and `pip install --requirement` runs again
/// when the requirements or `pip_args` changed. Packages dropped from the requirements stay
/// installed until the environment is rebuilt.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Virtualenv {
    /// The environment's directory, relative to the work directory.
    #[serde(default = "default_path")]
    pub path: String,
    /// The interpreter that makes the environment: a program name on PATH or a path.
    #[serde(default = "default_python")]
    pub python: String,
    /// A project file in pip's requirements format.
    #[serde(default)]
    pub requirements: Option<String>,
    /// More arguments for `pip install`, e.g. `["--no-index", "--find-links", "wheels"]`.
    #[serde(default)]
    pub pip_args: Vec<String>,
    /// Seconds `pip install` may run.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(skip)]
    resolved: PathBuf,
    #[serde(skip)]
    workdir: PathBuf,
    #[serde(skip)]
    data: Option<Vec<u8>>,
    #[serde(skip)]
    digest: String,
    #[serde(skip)]
    allowed: AllowedPaths,
}

fn default_path() -> String {
    "venv".to_string()
}

fn default_python() -> String {
    "python3".to_string()
}

/// What converging has to do.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// Make the environment anew (and install), for this reason.
    Build(String),
    /// Install the requirements again.
    Install,
}

/// What the stamp records.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stamp {
    python: String,
    requirements: String,
}

impl Stamp {
    fn parse(text: &str) -> Stamp {
        let mut stamp = Stamp::default();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("python ") {
                stamp.python = v.to_string();
            } else if let Some(v) = line.strip_prefix("requirements ") {
                stamp.requirements = v.to_string();
            }
        }
        stamp
    }

    fn render(&self) -> String {
        format!(
            "python {}\nrequirements {}\n",
            self.python, self.requirements
        )
    }
}

impl Virtualenv {
    /// A virtual environment at `path` (relative to the work directory) made with `python3`.
    pub fn new(path: impl Into<String>) -> Self {
        Virtualenv {
            path: path.into(),
            python: default_python(),
            requirements: None,
            pip_args: Vec::new(),
            timeout: None,
            resolved: PathBuf::new(),
            workdir: PathBuf::new(),
            data: None,
            digest: String::new(),
            allowed: AllowedPaths::default(),
        }
    }

    /// The interpreter, instead of `python3`.
    pub fn python(mut self, python: impl Into<String>) -> Self {
        self.python = python.into();
        self
    }

    /// The project file of requirements.
    pub fn requirements(mut self, file: impl Into<String>) -> Self {
        self.requirements = Some(file.into());
        self
    }

    /// Adds arguments for `pip install`.
    pub fn pip_args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.pip_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The absolute path of the environment, known after configure.
    pub fn resolved_path(&self) -> &std::path::Path {
        &self.resolved
    }

    fn run(&self, cx: &mut Deploy, argv: &[String], timeout: f64) -> anyhow::Result<CommandOutput> {
        cx.detail(format!("running `{}`", argv.join(" ")));
        let mut command = cmd(argv)
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env("PIP_NO_INPUT", "1")
            .timeout(Duration::from_secs_f64(timeout));
        if self.workdir.is_dir() {
            command = command.cwd(&self.workdir);
        }
        command.run()
    }

    /// The interpreter's real path and version, as the stamp records them.
    fn identity(&self, cx: &mut Deploy) -> anyhow::Result<String> {
        let argv = [self.python.clone(), "-c".into(), IDENTITY.into()];
        let out = self.run(cx, &argv, 60.0).map_err(|e| {
            if is_not_found(&e) {
                anyhow::anyhow!(
                    "the interpreter `{}` is not installed on the host (install it, e.g. `apt-get install python3-venv`)",
                    self.python
                )
            } else {
                e
            }
        })?;
        let out = out.check()?;
        Ok(out.stdout.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    fn venv_python(&self) -> PathBuf {
        self.resolved.join("bin/python")
    }

    /// What converging has to do, or nothing.
    fn action(&self, cx: &mut Deploy, identity: &str) -> anyhow::Result<Option<Action>> {
        match std::fs::symlink_metadata(&self.resolved) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => bail!(
                "`{}` is in the way: it is not a directory",
                self.resolved.display()
            ),
            Err(_) => return Ok(Some(Action::Build("missing".into()))),
        }
        let Ok(text) = std::fs::read_to_string(self.resolved.join(STAMP)) else {
            if !self.resolved.join("pyvenv.cfg").exists()
                && std::fs::read_dir(&self.resolved)?.next().is_some()
            {
                bail!(
                    "`{}` is in the way: it is a directory that is not a virtual environment",
                    self.resolved.display()
                );
            }
            return Ok(Some(Action::Build(
                "not built by this component yet".into(),
            )));
        };
        let stamp = Stamp::parse(&text);
        if stamp.python != identity {
            return Ok(Some(Action::Build(format!(
                "interpreter changed: `{}` -> `{identity}`",
                stamp.python
            ))));
        }
        let argv = [
            self.venv_python().to_string_lossy().into_owned(),
            "-c".into(),
            String::new(),
        ];
        let runs = self.run(cx, &argv, 60.0).is_ok_and(|o| o.success());
        if !runs {
            return Ok(Some(Action::Build("its `bin/python` does not run".into())));
        }
        if stamp.requirements != self.digest {
            return Ok(Some(Action::Install));
        }
        Ok(None)
    }
}

impl Component for Virtualenv {
    fn label(&self) -> String {
        format!("Virtualenv('{}')", self.path)
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        refuse_nul("python", &self.python)?;
        if self.python.is_empty() {
            bail!("`python` is empty: name an interpreter");
        }
        for (i, arg) in self.pip_args.iter().enumerate() {
            refuse_nul(&format!("pip_args` element `{}", i + 1), arg)?;
        }
        if let Some(t) = self.timeout
            && !(t.is_finite() && t > 0.0)
        {
            bail!("`timeout` must be a positive number of seconds");
        }
        let mut digest_input = Vec::new();
        if let Some(file) = &self.requirements {
            let data = cx.project().read(file)?;
            digest_input.extend_from_slice(&data);
            self.data = Some(data);
        }
        for arg in &self.pip_args {
            digest_input.push(0);
            digest_input.extend_from_slice(arg.as_bytes());
        }
        self.digest = if self.data.is_some() {
            sha256(&digest_input)
        } else {
            "none".to_string()
        };
        self.resolved = cx.path(&self.path)?;
        self.workdir = cx.workdir().to_path_buf();
        self.allowed = cx.allowed_paths();
        Ok(())
    }

    fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
        self.allowed.check(&self.resolved)?;
        let identity = self.identity(cx)?;
        Ok(match self.action(cx, &identity)? {
            None => Verdict::UpToDate,
            Some(Action::Build(reason)) => Verdict::NeedsUpdate(reason),
            Some(Action::Install) => Verdict::needs_update("requirements changed"),
        })
    }

    fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
        self.allowed.check(&self.resolved)?;
        let identity = self.identity(cx)?;
        let Some(action) = self.action(cx, &identity)? else {
            return Ok(());
        };
        let path = self.resolved.to_string_lossy().into_owned();
        if let Action::Build(_) = action {
            // The scripts of an environment name its absolute path: it cannot be built
            // beside and moved into place, so it is rebuilt where it stands.
            if self.resolved.exists() {
                std::fs::remove_dir_all(&self.resolved)
                    .with_context(|| format!("cannot remove `{}`", self.resolved.display()))?;
            }
            crate::fs::parent(&self.resolved)?;
            let argv = [
                self.python.clone(),
                "-m".into(),
                "venv".into(),
                path.clone(),
            ];
            self.run(cx, &argv, 300.0)?.check()?;
        }
        if let Some(data) = &self.data {
            let file = self.resolved.join("requirements.txt");
            write_atomic(&file, data, 0o644, None, None)?;
            let mut argv = vec![
                self.venv_python().to_string_lossy().into_owned(),
                "-m".into(),
                "pip".into(),
                "install".into(),
                "--quiet".into(),
                "--disable-pip-version-check".into(),
                "--no-input".into(),
                "--requirement".into(),
                file.to_string_lossy().into_owned(),
            ];
            argv.extend(self.pip_args.iter().cloned());
            let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
            self.run(cx, &argv, timeout)?.check()?;
        }
        let stamp = Stamp {
            python: identity,
            requirements: self.digest.clone(),
        };
        write_atomic(
            &self.resolved.join(STAMP),
            stamp.render().as_bytes(),
            0o644,
            None,
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use batou_core::ConvergeOptions;
    use batou_test_support::{PYTHON, require_venv, wheel};

    use super::*;
    use crate::test_util::{config_error, pairs, project};

    /// A wheel directory with `greeting` 1.0 and 2.0.
    fn wheels() -> tempfile::TempDir {
        require_venv();
        let dir = tempfile::tempdir().unwrap();
        wheel(dir.path(), "greeting", "1.0", "WORDS = 'hello'\n");
        wheel(dir.path(), "greeting", "2.0", "WORDS = 'hello again'\n");
        dir
    }

    fn app(wheels: &std::path::Path, python: &str) -> batou_core::testing::TestProject {
        let project = project(&format!(
            "[hosts.localhost]\ncomponents = [\"app\"]\n\n[components.app]\ntype = \"virtualenv\"\npython = \"{python}\"\nrequirements = \"requirements.txt\"\npip_args = [\"--no-index\", \"--find-links\", \"{}\"]\n",
            wheels.display()
        ));
        project.file("requirements.txt", "greeting==1.0\n");
        project
    }

    fn words(project: &batou_core::testing::TestProject) -> String {
        let python = project.workdir("app").join("venv/bin/python");
        cmd([
            python.to_string_lossy().as_ref(),
            "-c",
            "import greeting; print(greeting.WORDS)",
        ])
        .check()
        .unwrap()
        .stdout
    }

    #[test]
    fn an_environment_is_built_updated_on_new_requirements_and_stays() {
        let wheels = wheels();
        let project = app(wheels.path(), PYTHON);
        let run = project.assert_prediction_matches("dev");
        assert_eq!(
            run.reasons(),
            pairs(&[("app > Workdir", "missing"), ("app", "missing")])
        );
        assert_eq!(words(&project), "hello\n");
        let marker = project.workdir("app").join("venv/marker");
        std::fs::write(&marker, "").unwrap();

        project.file("requirements.txt", "greeting==2.0\n");
        let run = project.assert_prediction_matches("dev");
        assert_eq!(run.reasons(), pairs(&[("app", "requirements changed")]));
        assert_eq!(words(&project), "hello again\n");
        assert!(
            marker.exists(),
            "an update of the requirements does not rebuild"
        );
    }

    #[test]
    fn a_changed_interpreter_rebuilds_the_environment() {
        let wheels = wheels();
        let project = app(wheels.path(), PYTHON);
        project.converge("dev");
        let marker = project.workdir("app").join("venv/marker");
        std::fs::write(&marker, "").unwrap();

        // A copy of the interpreter elsewhere is another interpreter.
        let other = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(PYTHON).unwrap();
        let copy = other.path().join("python3");
        std::fs::copy(&real, &copy).unwrap();
        let copy = copy.to_string_lossy().into_owned();
        project.env(
            "dev",
            &format!(
                "[hosts.localhost]\ncomponents = [\"app\"]\n\n[components.app]\ntype = \"virtualenv\"\npython = \"{copy}\"\nrequirements = \"requirements.txt\"\npip_args = [\"--no-index\", \"--find-links\", \"{}\"]\n",
                wheels.path().display()
            ),
        );
        let run = project.assert_prediction_matches("dev");
        let reason = &run.reasons()[0].1;
        assert!(
            reason.starts_with(&format!("interpreter changed: `{} ", real.display())),
            "{reason}"
        );
        assert!(reason.contains(&format!("-> `{copy} ")), "{reason}");
        assert!(!marker.exists(), "the environment was rebuilt");
        assert_eq!(words(&project), "hello\n");
    }

    #[test]
    fn a_missing_interpreter_fails_and_unknown_attributes_are_errors() {
        let wheels = wheels();
        let project = app(wheels.path(), "/nonexistent/python3");
        let failure = project
            .run(
                "dev",
                ConvergeOptions {
                    dry_run: true,
                    ..Default::default()
                },
            )
            .failure()
            .unwrap();
        assert!(
            failure.contains("the interpreter `/nonexistent/python3` is not installed on the host"),
            "{failure}"
        );
        let err = config_error(project.env(
            "dev",
            "[hosts.localhost]\ncomponents = [\"app\"]\n\n[components.app]\ntype = \"virtualenv\"\nrequirement = \"r.txt\"\n",
        ));
        assert!(err.contains("unknown field `requirement`"), "{err}");
        assert!(err.contains("did you mean `requirements`?"), "{err}");
        let err = config_error(project.env(
            "dev",
            "[hosts.localhost]\ncomponents = [\"app\"]\n\n[components.app]\ntype = \"virtualenv\"\nrequirements = \"missing.txt\"\n",
        ));
        assert!(
            err.contains("project file `missing.txt` does not exist"),
            "{err}"
        );
    }
}
