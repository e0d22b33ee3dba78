//! `Command`: a guarded command, and [`run_command`], the older spelling of [`crate::cmd`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use batou_core::{Component, ConfigError, Configure, Deploy, Verdict};
use serde::Deserialize;

use crate::cmd::{Cmd, CommandOutput, DEFAULT_TIMEOUT, cmd};

/// A command that runs when its guard says the host needs it.
///
/// A command must say how to tell that it is done, or it could not converge: `creates` (runs
/// while that path is missing) or `unless` (runs while that command fails). `unless` also runs
/// in dry runs, so it must not change anything.
///
/// ```toml
/// [components.build]
/// type = "command"
/// argv = ["make", "install"]
/// creates = "bin/app"
/// timeout = 60
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Program and arguments; no shell is involved.
    pub argv: Vec<String>,
    /// Working directory, relative to the work directory; defaults to the work directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Variables added to the inherited environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds before the command (and its process group) is killed.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Run only while this path does not exist.
    #[serde(default)]
    pub creates: Option<String>,
    /// Run only while this command fails.
    #[serde(default)]
    pub unless: Option<Vec<String>>,
    /// Show what the command printed also when it succeeds (always shown when it fails).
    #[serde(default)]
    pub show_output: bool,
    #[serde(skip)]
    resolved_cwd: PathBuf,
    #[serde(skip)]
    resolved_creates: Option<PathBuf>,
}

impl Command {
    /// A command running `argv` in the work directory; add a guard with `creates` or `unless`.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Command {
            argv: argv.into_iter().map(Into::into).collect(),
            cwd: None,
            env: BTreeMap::new(),
            timeout: None,
            creates: None,
            unless: None,
            show_output: false,
            resolved_cwd: PathBuf::new(),
            resolved_creates: None,
        }
    }

    /// Runs only while `path` does not exist.
    pub fn creates(mut self, path: impl Into<String>) -> Self {
        self.creates = Some(path.into());
        self
    }

    /// Runs only while `argv` fails.
    pub fn unless<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.unless = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Seconds before the command is killed.
    pub fn timeout(mut self, seconds: f64) -> Self {
        self.timeout = Some(seconds);
        self
    }

    /// Refuses values that no program can receive: NUL bytes end C strings, and `=` ends an
    /// environment variable's name.
    fn check_host_can_accept(&self) -> anyhow::Result<()> {
        let nul = |what: String| -> anyhow::Result<()> {
            bail!("{what} contains a NUL byte, which no command can receive")
        };
        for (i, arg) in self.argv.iter().enumerate() {
            if arg.contains('\0') {
                nul(format!("`argv` element {}", i + 1))?;
            }
        }
        for (i, arg) in self.unless.iter().flatten().enumerate() {
            if arg.contains('\0') {
                nul(format!("`unless` element {}", i + 1))?;
            }
        }
        for (name, value) in [("cwd", &self.cwd), ("creates", &self.creates)] {
            if value.as_ref().is_some_and(|v| v.contains('\0')) {
                nul(format!("`{name}`"))?;
            }
        }
        for (key, value) in &self.env {
            if key.contains('\0') {
                nul(format!("`env` key `{}`", key.escape_debug()))?;
            }
            if key.is_empty() {
                bail!("an `env` key is empty: a variable needs a name");
            }
            if key.contains('=') {
                bail!(
                    "`env` key `{}` is not a variable name: it must not contain `=`",
                    key.escape_debug()
                );
            }
            if value.contains('\0') {
                nul(format!("`env` value of `{key}`"))?;
            }
        }
        Ok(())
    }

    /// `argv` as this command runs it: in its `cwd`, with its `env` and `timeout`.
    fn cmd(&self, argv: &[String]) -> Cmd {
        let timeout = self
            .timeout
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs_f64);
        cmd(argv)
            .cwd(&self.resolved_cwd)
            .envs(&self.env)
            .timeout(timeout)
    }
}

impl Component for Command {
    fn label(&self) -> String {
        format!("Command('{}')", self.argv.join(" "))
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        if self.argv.is_empty() {
            bail!("`argv` must name a program");
        }
        if self.unless.as_ref().is_some_and(Vec::is_empty) {
            bail!("`unless` must name a program");
        }
        if self.creates.is_none() && self.unless.is_none() {
            let message = format!("command `{}` has no guard", self.argv.join(" "));
            return Err(ConfigError::new(message)
                .hint("set `creates` or `unless` so that it can converge")
                .into());
        }
        if let Some(t) = self.timeout
            && !(t.is_finite() && t > 0.0)
        {
            bail!("`timeout` must be a positive number of seconds");
        }
        self.check_host_can_accept()?;
        self.resolved_cwd = match &self.cwd {
            Some(cwd) => cx.path(cwd)?,
            None => cx.workdir().to_path_buf(),
        };
        self.resolved_creates = self.creates.as_ref().map(|c| cx.path(c)).transpose()?;
        Ok(())
    }

    fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> {
        if let Some(path) = &self.resolved_creates
            && std::fs::symlink_metadata(path).is_err()
        {
            return Ok(Verdict::needs_update(format!(
                "`{}` does not exist",
                self.creates.as_deref().unwrap_or_default()
            )));
        }
        if let Some(unless) = &self.unless {
            let out = self.cmd(unless).run()?;
            // A guard that hangs is an error, not a reason to run the command.
            if out.timed_out() {
                return Err(anyhow::anyhow!(out.failure()));
            }
            if !out.success() {
                return Ok(Verdict::needs_update(format!(
                    "`{}` {}",
                    unless.join(" "),
                    out.status
                )));
            }
        }
        Ok(Verdict::UpToDate)
    }

    fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
        let out = self.cmd(&self.argv).run()?.check()?;
        if self.show_output {
            let text = out.tail();
            if !text.is_empty() {
                cx.log(text);
            }
        }
        Ok(())
    }
}

/// Runs `argv` in `cwd` with `env` added, capturing its output: the same as
/// `cmd(argv).cwd(cwd).envs(env).timeout(timeout).run()` (see [`crate::cmd`]), except that a
/// timeout is an error.
///
/// `timeout` bounds the whole command: at the deadline its process group is killed and the
/// result is an error carrying the tail of its output, never a success. Background processes
/// the command leaves behind are ended when it exits.
pub fn run_command(
    argv: &[String],
    cwd: &std::path::Path,
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> anyhow::Result<CommandOutput> {
    let out = cmd(argv).cwd(cwd).envs(env).timeout(timeout).run()?;
    if out.timed_out() {
        bail!(out.failure());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use batou_core::ConvergeOptions;

    use crate::test_util::{config_error, pairs, project};

    /// An environment with one command `build`, whose table is `attributes`.
    fn build(attributes: &str) -> batou_core::testing::TestProject {
        project(&format!(
            "[hosts.localhost]\ncomponents = [\"build\"]\n\n[components.build]\ntype = \"command\"\n{attributes}"
        ))
    }

    #[test]
    fn creates_runs_the_command_until_the_path_exists() {
        let project = build(
            r#"argv = ["sh", "-c", "echo \"$GREETING\" > out"]
creates = "out"
env = { GREETING = "hello {{ host.name }}" }
"#,
        );
        let run = project.converge("dev");
        run.assert_changed(&["build > Workdir", "build"]);
        assert_eq!(
            run.reasons(),
            pairs(&[
                ("build > Workdir", "missing"),
                ("build", "`out` does not exist")
            ])
        );
        let out = project.workdir("build").join("out");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello localhost\n");
        project.converge("dev").assert_unchanged();

        std::fs::remove_file(&out).unwrap();
        let run = project.converge("dev");
        run.assert_changed(&["build"]);
        assert_eq!(run.reasons(), pairs(&[("build", "`out` does not exist")]));
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn unless_runs_the_command_while_the_guard_fails_also_in_dry_runs() {
        let project = build(
            r#"argv = ["touch", "flag"]
unless = ["test", "-e", "flag"]
"#,
        );
        std::fs::create_dir_all(project.workdir("build")).unwrap();
        let dry = project.dry_run("dev");
        dry.assert_changed(&["build"]);
        assert_eq!(
            dry.reasons(),
            pairs(&[("build", "`test -e flag` failed with exit code 1")])
        );
        assert!(!project.workdir("build").join("flag").exists());

        project.converge("dev").assert_changed(&["build"]);
        assert!(project.workdir("build").join("flag").exists());
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn show_output_logs_what_the_command_printed() {
        let project = build(
            r#"argv = ["sh", "-c", "echo built; touch out"]
creates = "out"
show_output = true
"#,
        );
        assert_eq!(
            project.converge_twice("dev").logs(),
            ["--- stdout ---\nbuilt"]
        );
    }

    #[test]
    fn a_failing_command_shows_how_it_ended_and_its_output_tail() {
        let project = build(
            r#"argv = ["sh", "-c", "echo out; echo err >&2; exit 3"]
creates = "out"
"#,
        );
        let run = project.run("dev", ConvergeOptions::default());
        assert_eq!(
            run.failure().as_deref(),
            Some(
                "build: command `sh -c echo out; echo err >&2; exit 3` failed with exit code 3\n\
                 --- stdout ---\nout\n--- stderr ---\nerr"
            )
        );
    }

    #[test]
    fn a_command_past_its_timeout_is_killed_and_fails() {
        let project = build(
            r#"argv = ["sh", "-c", "echo started; sleep 30.301"]
creates = "out"
timeout = 1.5
"#,
        );
        let run = project.run("dev", ConvergeOptions::default());
        assert_eq!(
            run.failure().as_deref(),
            Some(
                "build: command `sh -c echo started; sleep 30.301` timed out after 1.5 s and was killed\n\
                 --- stdout ---\nstarted"
            )
        );
    }

    #[test]
    fn a_command_without_a_guard_is_a_configuration_error() {
        let err = config_error(&build("argv = [\"make\"]\n"));
        assert!(err.contains("command `make` has no guard"), "{err}");
    }
}
