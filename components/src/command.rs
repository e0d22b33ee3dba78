//! `Command`: a guarded command, and [`run_command`], the older spelling of [`crate::cmd`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use batou_core::{Component, ConfigError, Configure, Deploy, RootWatch, Verdict};
use serde::Deserialize;

use crate::cmd::{Cmd, CommandOutput, DEFAULT_TIMEOUT, cmd};

/// A command that runs when its guards say the host needs it.
///
/// A command must say how to tell that it is done, or it could not converge: `creates` (runs
/// while that path is missing), `unless` (runs while that command fails) or `on_change` (runs
/// when one of those root components of the same host changed in this deploy, for reloads
/// and migrations). When several are given, it runs only when every one of them says so:
/// `on_change` is asked first, then `creates`, and `unless` runs only when both agree. `unless`
/// also runs in dry runs, so it must not change anything; in a dry run where it cannot run
/// yet (its `cwd` or its program does not exist), the command is predicted to run.
///
/// ```toml
/// [components.build]
/// type = "command"
/// argv = ["make", "install"]
/// creates = "bin/app"
/// timeout = 60
///
/// [components.reload]
/// type = "command"
/// argv = ["systemctl", "reload", "nginx"]
/// on_change = ["nginx-config"]
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
    /// Run only when one of these root components (of the same host) changed in this deploy;
    /// they are deployed before this one.
    #[serde(default)]
    pub on_change: Option<Vec<String>>,
    /// Show what the command prints, line by line as it runs, also when it succeeds (the
    /// tail is always shown when it fails).
    #[serde(default)]
    pub show_output: bool,
    /// The exit codes that count as success (default `[0]`); a signal or the timeout never
    /// does.
    #[serde(default)]
    pub returncodes: Option<Vec<i64>>,
    /// Any exit code counts as success (a signal or the timeout still fails the command).
    #[serde(default)]
    pub ignore_returncode: bool,
    #[serde(skip)]
    resolved_cwd: PathBuf,
    #[serde(skip)]
    resolved_creates: Option<PathBuf>,
    #[serde(skip)]
    watches: Vec<RootWatch>,
    /// Whether `update` ran in this deploy: the watched roots still count as changed in the
    /// verify after it, and the command must not run twice for one change.
    #[serde(skip)]
    ran: bool,
}

impl Command {
    /// A command running `argv` in the work directory; add a guard with `creates`, `unless` or
    /// `on_change`.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Command {
            argv: argv.into_iter().map(Into::into).collect(),
            cwd: None,
            env: BTreeMap::new(),
            timeout: None,
            creates: None,
            unless: None,
            on_change: None,
            show_output: false,
            returncodes: None,
            ignore_returncode: false,
            resolved_cwd: PathBuf::new(),
            resolved_creates: None,
            watches: Vec::new(),
            ran: false,
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

    /// Runs only when one of the root components `roots` (of the same host) changed in this
    /// deploy.
    pub fn on_change<S: Into<String>>(mut self, roots: impl IntoIterator<Item = S>) -> Self {
        self.on_change = Some(roots.into_iter().map(Into::into).collect());
        self
    }

    /// Working directory, relative to the work directory.
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Seconds before the command is killed.
    pub fn timeout(mut self, seconds: f64) -> Self {
        self.timeout = Some(seconds);
        self
    }

    /// The exit codes that count as success, instead of only 0.
    pub fn returncodes(mut self, codes: impl IntoIterator<Item = i32>) -> Self {
        self.returncodes = Some(codes.into_iter().map(i64::from).collect());
        self
    }

    /// Any exit code counts as success; a signal or the timeout still fails the command.
    pub fn ignore_returncode(mut self) -> Self {
        self.ignore_returncode = true;
        self
    }

    /// Whether the command's exit counts as success: an accepted exit code, never a signal
    /// or the timeout.
    fn accepted(&self, out: &CommandOutput) -> bool {
        match out.code() {
            None => false,
            Some(_) if self.ignore_returncode => true,
            Some(code) => match &self.returncodes {
                Some(codes) => codes.contains(&i64::from(code)),
                None => code == 0,
            },
        }
    }

    /// Refuses accepted exit codes that cannot be one: an empty list, codes outside
    /// 0..=255, or both `returncodes` and `ignore_returncode`.
    fn check_returncodes(&self) -> anyhow::Result<()> {
        let Some(codes) = &self.returncodes else {
            return Ok(());
        };
        if self.ignore_returncode {
            return Err(
                ConfigError::new("set `returncodes` or `ignore_returncode`, not both")
                    .hint("`ignore_returncode = true` accepts every exit code")
                    .into(),
            );
        }
        if codes.is_empty() {
            bail!("`returncodes` is empty: no exit code would count as success");
        }
        if let Some(bad) = codes.iter().find(|c| !(0..=255).contains(*c)) {
            bail!("`returncodes` holds {bad}: an exit code is between 0 and 255");
        }
        Ok(())
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

    /// Why the working directory cannot be used, when it does not exist.
    fn missing_cwd(&self) -> Option<String> {
        if self.resolved_cwd.is_dir() {
            return None;
        }
        Some(match &self.cwd {
            Some(_) => "`cwd` missing".to_string(),
            None => "work directory missing".to_string(),
        })
    }

    /// The `unless` guard's verdict: `None` when it says the command is done, else the
    /// reason to run. In a dry run, a guard that cannot run yet (its working directory or its
    /// program does not exist, as on a fresh host) says "run".
    fn unless_says_run(&self, unless: &[String], dry_run: bool) -> anyhow::Result<Option<String>> {
        if let Some(missing) = self.missing_cwd() {
            if dry_run {
                return Ok(Some(format!("guard cannot run yet: {missing}")));
            }
            bail!(
                "cannot run guard `{}`: its working directory `{}` does not exist",
                unless.join(" "),
                self.resolved_cwd.display()
            );
        }
        let out = match self.cmd(unless).run() {
            Ok(out) => out,
            Err(e) if dry_run && is_not_found(&e) => {
                return Ok(Some(format!(
                    "guard cannot run yet: `{}` not found",
                    unless[0]
                )));
            }
            Err(e) => return Err(e),
        };
        // A guard that hangs is an error, not a reason to run the command.
        if out.timed_out() {
            return Err(anyhow::anyhow!(out.failure()));
        }
        Ok((!out.success()).then(|| format!("`{}` {}", unless.join(" "), out.status)))
    }
}

impl Command {
    /// The accepted exit codes, as a message lists them.
    fn accepted_codes(&self) -> String {
        match &self.returncodes {
            Some(codes) => codes
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            None => "0".into(),
        }
    }
}

/// Whether `error` says that something (a program) was not found.
fn is_not_found(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    })
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
        if self.on_change.as_ref().is_some_and(Vec::is_empty) {
            bail!("`on_change` must name a root component");
        }
        if self.creates.is_none() && self.unless.is_none() && self.on_change.is_none() {
            let message = format!("command `{}` has no guard", self.argv.join(" "));
            return Err(ConfigError::new(message)
                .hint("set `creates`, `unless` or `on_change` so that it can converge")
                .into());
        }
        if let Some(t) = self.timeout
            && !(t.is_finite() && t > 0.0)
        {
            bail!("`timeout` must be a positive number of seconds");
        }
        self.check_host_can_accept()?;
        self.check_returncodes()?;
        self.resolved_cwd = match &self.cwd {
            Some(cwd) => cx.path(cwd)?,
            None => cx.workdir().to_path_buf(),
        };
        self.resolved_creates = self.creates.as_ref().map(|c| cx.path(c)).transpose()?;
        self.watches = Vec::new();
        for root in self.on_change.iter().flatten() {
            let watch = cx.watch_root(root)?;
            if !self.watches.contains(&watch) {
                self.watches.push(watch);
            }
        }
        Ok(())
    }

    fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
        // Every guard given must say "run"; the cheap ones are asked first, so that `unless`
        // runs only when the others agree.
        let mut reasons = Vec::new();
        if self.on_change.is_some() {
            let changed: Vec<&str> = self
                .watches
                .iter()
                .filter(|w| cx.root_changed(w))
                .map(RootWatch::name)
                .collect();
            // The watched roots still count as changed after `update`: it ran for them.
            if changed.is_empty() || self.ran {
                return Ok(Verdict::UpToDate);
            }
            reasons.push(format!("{} changed", changed.join(", ")));
        }
        if let Some(path) = &self.resolved_creates {
            if std::fs::symlink_metadata(path).is_ok() {
                return Ok(Verdict::UpToDate);
            }
            reasons.push(format!(
                "`{}` does not exist",
                self.creates.as_deref().unwrap_or_default()
            ));
        }
        if let Some(unless) = &self.unless {
            cx.detail(format!(
                "guard: running `{}` in `{}`",
                unless.join(" "),
                self.resolved_cwd.display()
            ));
            match self.unless_says_run(unless, cx.dry_run())? {
                Some(reason) => reasons.push(reason),
                None => return Ok(Verdict::UpToDate),
            }
        }
        let reason = reasons.join("; ");
        Ok(Verdict::needs_update(
            if cx.dry_run() && self.on_change.is_some() {
                format!("would run: {reason}")
            } else {
                reason
            },
        ))
    }

    fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
        if self.missing_cwd().is_some() {
            bail!(
                "cannot run `{}`: its working directory `{}` does not exist",
                self.argv.join(" "),
                self.resolved_cwd.display()
            );
        }
        cx.detail(format!(
            "running `{}` in `{}`",
            self.argv.join(" "),
            self.resolved_cwd.display()
        ));
        let command = self.cmd(&self.argv);
        // With `show_output`, each line is shown as it comes, so that a long command is
        // seen working; a failure still reports the tail with the error.
        let out = if self.show_output {
            command.run_streaming(|_, line| cx.log(line))?
        } else {
            command.run()?
        };
        if !self.accepted(&out) {
            let argv = self.argv.join(" ");
            let err = match out.check() {
                Err(e) => e,
                // Exit code 0, which `returncodes` does not list.
                Ok(_) => anyhow::anyhow!("command `{argv}` exited with code 0"),
            };
            return Err(match &self.returncodes {
                Some(_) => err.context(format!(
                    "`{argv}` did not end with one of its `returncodes` ({})",
                    self.accepted_codes()
                )),
                None => err,
            });
        }
        if !out.success() {
            cx.detail(format!(
                "`{}` exited with code {}, which is accepted",
                self.argv.join(" "),
                out.code().unwrap_or_default()
            ));
        }
        self.ran = true;
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
        assert_eq!(project.converge_twice("dev").logs(), ["built"]);
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

    /// Root `config` (a file) and root `reload`, a command that runs when `config` changed;
    /// `attributes` are added to `reload`'s table.
    fn reload(attributes: &str) -> batou_core::testing::TestProject {
        project(&format!(
            r#"[hosts.localhost]
components = ["reload", "config"]

[components.config]
type = "file"
path = "app.conf"
content = "workers = 4\n"

[components.reload]
type = "command"
argv = ["sh", "-c", "echo reloaded >> reloads"]
on_change = ["config"]
{attributes}"#
        ))
    }

    #[test]
    fn on_change_runs_the_command_only_when_the_watched_root_changed() {
        let project = reload("");
        let reloads = project.workdir("reload").join("reloads");
        // `reload` is listed first but watches `config`, so it is deployed after it.
        let dry = project.dry_run("dev");
        dry.assert_changed(&["config > Workdir", "config", "reload > Workdir", "reload"]);
        assert_eq!(dry.reasons()[3].1, "would run: config changed");
        let run = project.assert_prediction_matches("dev");
        assert_eq!(run.reasons()[3], ("reload".into(), "config changed".into()));
        assert_eq!(std::fs::read_to_string(&reloads).unwrap(), "reloaded\n");

        // Nothing changed: nothing runs (assert_prediction_matches converged twice).
        assert_eq!(std::fs::read_to_string(&reloads).unwrap(), "reloaded\n");

        // The watched file drifts: the command runs once more.
        std::fs::write(project.workdir("config").join("app.conf"), "workers = 2\n").unwrap();
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["config", "reload"]);
        assert_eq!(
            std::fs::read_to_string(&reloads).unwrap(),
            "reloaded\nreloaded\n"
        );
    }

    #[test]
    fn every_guard_given_must_say_run() {
        // `creates` names a file the command does not make: it still converges, since
        // `on_change` says "done" after it ran.
        let project = reload("creates = \"never\"\n");
        project.assert_prediction_matches("dev");
        std::fs::write(project.workdir("reload").join("never"), "").unwrap();
        std::fs::write(project.workdir("config").join("app.conf"), "drift\n").unwrap();
        // `config` changed, but `creates` exists: the command does not run.
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["config"]);
        let reloads = project.workdir("reload").join("reloads");
        assert_eq!(std::fs::read_to_string(&reloads).unwrap(), "reloaded\n");

        // `unless` runs only when the other guards say run, and its success means done.
        let project = reload("unless = [\"test\", \"-e\", \"reloads\"]\n");
        let run = project.assert_prediction_matches("dev");
        assert_eq!(
            run.reasons()[3].1,
            "config changed; `test -e reloads` failed with exit code 1"
        );
        std::fs::write(project.workdir("config").join("app.conf"), "drift\n").unwrap();
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["config"]);
    }

    #[test]
    fn unknown_or_empty_on_change_names_are_configuration_errors() {
        let err = config_error(reload("").env(
            "dev",
            "[hosts.localhost]\ncomponents = [\"reload\", \"config\"]\n\n[components.config]\ntype = \"file\"\npath = \"c\"\ncontent = \"\"\n\n[components.reload]\ntype = \"command\"\nargv = [\"true\"]\non_change = [\"confg\"]\n",
        ));
        assert!(
            err.contains("`confg` is not a root component of host `localhost`"),
            "{err}"
        );
        assert!(err.contains("did you mean `config`?"), "{err}");
        let err = config_error(&build("argv = [\"true\"]\non_change = []\n"));
        assert!(
            err.contains("`on_change` must name a root component"),
            "{err}"
        );
    }

    #[test]
    fn a_guard_that_cannot_run_yet_is_predicted_to_run() {
        // On a fresh host the work directory, the guard's `cwd`, does not exist yet.
        let project =
            build("argv = [\"touch\", \"flag\"]\nunless = [\"test\", \"-e\", \"flag\"]\n");
        let dry = project.dry_run("dev");
        assert_eq!(
            dry.reasons(),
            pairs(&[
                ("build > Workdir", "missing"),
                ("build", "guard cannot run yet: work directory missing"),
            ])
        );
        project.assert_prediction_matches("dev");

        // A guard whose program an earlier step would install.
        let project = build("argv = [\"touch\", \"flag\"]\nunless = [\"./check-flag\"]\n");
        std::fs::create_dir_all(project.workdir("build")).unwrap();
        let dry = project.dry_run("dev");
        assert_eq!(
            dry.reasons(),
            pairs(&[("build", "guard cannot run yet: `./check-flag` not found")])
        );
    }

    /// A directory and a command working in it, added the way a Rust component does.
    #[derive(serde::Deserialize)]
    struct Compile {}

    impl batou_core::Component for Compile {
        fn configure(&mut self, cx: &mut batou_core::Configure) -> anyhow::Result<()> {
            cx.add(crate::Directory::new("src"));
            cx.add(
                super::Command::new(["sh", "-c", "echo built > out"])
                    .cwd("src")
                    .unless(["test", "-e", "out"]),
            );
            Ok(())
        }

        fn verify(&self, _cx: &mut batou_core::Deploy) -> anyhow::Result<batou_core::Verdict> {
            Ok(batou_core::Verdict::UpToDate)
        }
    }

    #[test]
    fn a_guard_in_a_cwd_that_an_earlier_component_creates_is_predicted_to_run() {
        let project = crate::test_util::project_with::<Compile>(
            "compile",
            "[hosts.localhost]\ncomponents = [\"compile\"]\n",
        );
        let dry = project.dry_run("dev");
        assert_eq!(
            dry.reasons()[2],
            (
                "compile > Command('sh -c echo built > out')".into(),
                "guard cannot run yet: `cwd` missing".into()
            )
        );
        project.assert_prediction_matches("dev").assert_changed(&[
            "compile > Workdir",
            "compile > Directory('src')",
            "compile > Command('sh -c echo built > out')",
        ]);
        let out = project.workdir("compile").join("src/out");
        assert_eq!(std::fs::read_to_string(out).unwrap(), "built\n");
    }

    #[test]
    fn a_missing_cwd_in_a_real_run_is_a_failure_naming_it() {
        let project = build("argv = [\"true\"]\ncwd = \"nowhere\"\nunless = [\"false\"]\n");
        let run = project.run("dev", ConvergeOptions::default());
        let failure = run.failure().expect("the guard cannot run");
        assert!(
            failure.starts_with("build: cannot run guard `false`: its working directory `"),
            "{failure}"
        );
        assert!(
            failure.ends_with("/work/build/nowhere` does not exist"),
            "{failure}"
        );
    }

    #[test]
    fn accepted_exit_codes_count_as_success_and_others_fail_naming_them() {
        let project = build(
            "argv = [\"sh\", \"-c\", \"touch out; exit 1\"]\ncreates = \"out\"\nreturncodes = [0, 1]\n",
        );
        project
            .converge("dev")
            .assert_changed(&["build > Workdir", "build"]);
        project.converge("dev").assert_unchanged();

        let project = build(
            "argv = [\"sh\", \"-c\", \"touch out; exit 7\"]\ncreates = \"out\"\nignore_returncode = true\n",
        );
        project
            .converge("dev")
            .assert_changed(&["build > Workdir", "build"]);
        project.converge("dev").assert_unchanged();

        let project =
            build("argv = [\"sh\", \"-c\", \"exit 3\"]\ncreates = \"out\"\nreturncodes = [0, 1]\n");
        let run = project.run("dev", ConvergeOptions::default());
        let failure = run.failure().expect("exit code 3 is not accepted");
        assert!(
            failure.starts_with(
                "build: `sh -c exit 3` did not end with one of its `returncodes` (0, 1): command `sh -c exit 3` failed with exit code 3"
            ),
            "{failure}"
        );

        let project = build("argv = [\"true\"]\ncreates = \"out\"\nreturncodes = [1]\n");
        let run = project.run("dev", ConvergeOptions::default());
        let failure = run.failure().expect("exit code 0 is not accepted");
        assert!(
            failure.ends_with(
                "`true` did not end with one of its `returncodes` (1): command `true` exited with code 0"
            ),
            "{failure}"
        );
    }

    #[test]
    fn accepted_exit_codes_that_cannot_be_are_refused_at_configure() {
        for (attributes, want) in [
            (
                "returncodes = []\n",
                "`returncodes` is empty: no exit code would count as success",
            ),
            (
                "returncodes = [256]\n",
                "`returncodes` holds 256: an exit code is between 0 and 255",
            ),
            (
                "returncodes = [0]\nignore_returncode = true\n",
                "set `returncodes` or `ignore_returncode`, not both",
            ),
        ] {
            let err = config_error(&build(&format!(
                "argv = [\"true\"]\ncreates = \"out\"\n{attributes}"
            )));
            assert!(err.ends_with(want), "{attributes}: {err}");
        }
    }
}
