//! [`cmd`]: running a program from a component, and [`CommandOutput`], what it printed and how
//! it ended.
//!
//! A builder over [`crate::process::run`] (bounded in time, in its own process group, never
//! outliving the deployment), for `verify` and `update` bodies that ask the host something or
//! change it with a program:
//!
//! ```no_run
//! # fn f() -> anyhow::Result<()> {
//! use batou_components::cmd;
//!
//! let active = cmd(["systemctl", "is-active", "shop"]).run()?;
//! if active.code() != Some(0) {
//!     cmd(["systemctl", "restart", "shop"]).check()?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`CommandOutput::check`] and [`CommandOutput::tail`] are the one way a failed command is
//! reported: the library's [`crate::Command`] uses them too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;

use crate::process::{Request, Status};

/// How long a command may run when no timeout is given.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// Lines of each output stream kept for error messages.
const OUTPUT_TAIL: usize = 40;

/// A program to run: start one with [`cmd`], add a working directory, variables and a
/// timeout, then [`run`](Cmd::run) or [`check`](Cmd::check) it.
#[derive(Debug, Clone)]
pub struct Cmd {
    argv: Vec<String>,
    cwd: Option<PathBuf>,
    env: BTreeMap<String, String>,
    timeout: Duration,
}

/// What a finished command printed, and how it ended.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// Program and arguments, as run.
    pub argv: Vec<String>,
    /// How it ended: an exit code, a signal, or the deadline.
    pub status: Status,
    /// Everything it wrote to stdout (the end only, beyond 4 MiB).
    pub stdout: String,
    /// Everything it wrote to stderr (the end only, beyond 4 MiB).
    pub stderr: String,
    /// The deadline it ran under, for the message of a timeout.
    timeout: Duration,
}

/// A program and its arguments, run without a shell: `cmd(["systemctl", "is-active", name])`.
///
/// It runs in the current directory with the inherited environment and a timeout of 300 s
/// until [`Cmd::cwd`], [`Cmd::env`] and [`Cmd::timeout`] say otherwise.
pub fn cmd<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Cmd {
    Cmd {
        argv: argv.into_iter().map(Into::into).collect(),
        cwd: None,
        env: BTreeMap::new(),
        timeout: DEFAULT_TIMEOUT,
    }
}

impl Cmd {
    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.argv.push(arg.into());
        self
    }

    /// Runs in `dir` (a path resolved with `Configure::path`, typically).
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Adds the variable `key` to the inherited environment.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Adds every variable of `vars`.
    pub fn envs<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// How long the command, and everything it starts, may run; then its process group is
    /// killed and the output says [`Status::TimedOut`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The program and arguments.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// Runs the command and returns its output whatever its exit code; an error means it
    /// could not be started (a missing program or working directory, say).
    pub fn run(&self) -> anyhow::Result<CommandOutput> {
        self.start(None)
    }

    /// Runs the command like [`Cmd::run`], passing each line it prints to `on_line` as soon
    /// as the line is complete: the stream (`"stdout"` or `"stderr"`) and the line.
    pub fn run_streaming(
        &self,
        mut on_line: impl FnMut(&'static str, &str),
    ) -> anyhow::Result<CommandOutput> {
        self.start(Some(&mut on_line))
    }

    fn start(&self, on_line: Option<crate::process::OnLine<'_>>) -> anyhow::Result<CommandOutput> {
        if self.argv.is_empty() {
            bail!("a command needs a program to run");
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                bail!(
                    "`env` key `{}` of command `{}` is not a variable name: it must be non-empty and contain neither `=` nor a NUL byte",
                    key.escape_debug(),
                    self.argv.join(" ")
                );
            }
        }
        let request = Request {
            argv: &self.argv,
            cwd: self.cwd.as_deref().unwrap_or(Path::new(".")),
            env: &self.env,
            timeout: self.timeout,
        };
        let out = match on_line {
            Some(on_line) => crate::process::run_streaming(&request, on_line)?,
            None => crate::process::run(&request)?,
        };
        Ok(CommandOutput {
            argv: self.argv.clone(),
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
            timeout: self.timeout,
        })
    }

    /// Runs the command and returns its output if it exited with code 0; otherwise an error
    /// naming the command, how it ended and the tail of its output (see
    /// [`CommandOutput::check`]).
    pub fn check(&self) -> anyhow::Result<CommandOutput> {
        self.run()?.check()
    }
}

impl CommandOutput {
    /// The exit code; `None` when a signal or the deadline ended the command.
    pub fn code(&self) -> Option<i32> {
        match self.status {
            Status::Exited(code) => Some(code),
            Status::Signaled(_) | Status::TimedOut => None,
        }
    }

    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.status == Status::Exited(0)
    }

    /// The signal that ended it, when one did (not the deadline's).
    pub fn signal(&self) -> Option<i32> {
        match self.status {
            Status::Signaled(signal) => Some(signal),
            Status::Exited(_) | Status::TimedOut => None,
        }
    }

    /// Whether it was still running at the deadline and was killed.
    pub fn timed_out(&self) -> bool {
        self.status == Status::TimedOut
    }

    /// The output itself if the command exited with code 0; otherwise the error of
    /// [`CommandOutput::failure`].
    pub fn check(self) -> anyhow::Result<CommandOutput> {
        if self.success() {
            Ok(self)
        } else {
            Err(anyhow::anyhow!(self.failure()))
        }
    }

    /// How the command ended, for a message: `` command `make` failed with exit code 2 ``,
    /// then the tail of its output.
    ///
    /// ```text
    /// command `sh -c echo out; echo err >&2; exit 3` failed with exit code 3
    /// --- stdout ---
    /// out
    /// --- stderr ---
    /// err
    /// ```
    pub fn failure(&self) -> String {
        let mut text = format!("command `{}` {}", self.argv.join(" "), self.ending());
        let tail = self.tail();
        if !tail.is_empty() {
            text.push('\n');
            text.push_str(&tail);
        }
        text
    }

    /// How the command ended, as in a sentence: `succeeded`, `failed with exit code 2`,
    /// `was killed by signal 9`, `timed out after 2 s and was killed`.
    pub fn ending(&self) -> String {
        match self.status {
            // `Display` of f64 writes `2` for 2.0 and `0.5` for 0.5, as the user wrote them.
            Status::TimedOut => format!(
                "timed out after {} s and was killed",
                self.timeout.as_secs_f64()
            ),
            status => status.to_string(),
        }
    }

    /// The last 40 lines of stdout and of stderr, each under a `--- stdout ---` or
    /// `--- stderr ---` heading; empty when the command printed nothing.
    pub fn tail(&self) -> String {
        let mut text = String::new();
        for (name, stream) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let lines: Vec<&str> = stream.lines().collect();
            if lines.is_empty() {
                continue;
            }
            let skip = lines.len().saturating_sub(OUTPUT_TAIL);
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&format!("--- {name} ---"));
            if skip > 0 {
                text.push_str(&format!("\n({skip} earlier lines not shown)"));
            }
            for line in &lines[skip..] {
                text.push('\n');
                text.push_str(line);
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use batou_core::{Component, Configure, ConvergeOptions, Deploy, Verdict};
    use serde::Deserialize;

    use super::*;
    use crate::test_util::{pairs, project_with};

    fn sh(script: &str) -> Cmd {
        cmd(["sh", "-c", script])
    }

    #[test]
    fn run_reports_the_exit_code_and_output() {
        let out = sh("echo out; echo err >&2; exit 3").run().unwrap();
        assert_eq!(out.code(), Some(3));
        assert!(!out.success());
        assert_eq!(out.signal(), None);
        assert_eq!(
            (out.stdout.as_str(), out.stderr.as_str()),
            ("out\n", "err\n")
        );
        let out = sh("true").check().unwrap();
        assert_eq!(out.code(), Some(0));
    }

    #[test]
    fn cwd_env_and_arguments_reach_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let out = sh("pwd; echo \"$GREETING\" \"$0\"")
            .arg("arg-zero")
            .cwd(dir.path())
            .env("GREETING", "hello")
            .check()
            .unwrap();
        let pwd = dir.path().canonicalize().unwrap();
        assert_eq!(out.stdout, format!("{}\nhello arg-zero\n", pwd.display()));
    }

    #[test]
    fn check_names_the_command_how_it_ended_and_the_output_tail() {
        let err = sh("echo out; echo err >&2; exit 3").check().unwrap_err();
        assert_eq!(
            err.to_string(),
            "command `sh -c echo out; echo err >&2; exit 3` failed with exit code 3\n\
             --- stdout ---\nout\n--- stderr ---\nerr"
        );
        let err = sh("seq 1 100; exit 1").check().unwrap_err().to_string();
        assert!(
            err.contains("--- stdout ---\n(60 earlier lines not shown)\n61\n"),
            "{err}"
        );
        assert!(err.ends_with("\n100"), "{err}");
    }

    #[test]
    fn signals_and_timeouts_are_told_apart_from_exit_codes() {
        let out = sh("kill -TERM $$").run().unwrap();
        assert_eq!((out.code(), out.signal()), (None, Some(libc::SIGTERM)));
        assert_eq!(
            out.check().unwrap_err().to_string(),
            "command `sh -c kill -TERM $$` was killed by signal 15"
        );

        let out = sh("echo started; sleep 30.201")
            .timeout(Duration::from_millis(1500))
            .run()
            .unwrap();
        assert!(out.timed_out());
        assert_eq!((out.code(), out.signal()), (None, None));
        assert_eq!(
            out.check().unwrap_err().to_string(),
            "command `sh -c echo started; sleep 30.201` timed out after 1.5 s and was killed\n\
             --- stdout ---\nstarted"
        );
    }

    #[test]
    fn a_command_that_cannot_start_is_an_error_of_run() {
        let err = cmd(["/nonexistent/program"]).run().unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot start `/nonexistent/program`"),
            "{err:#}"
        );
        let err = cmd(Vec::<String>::new()).run().unwrap_err();
        assert_eq!(err.to_string(), "a command needs a program to run");
        let err = cmd(["true"]).env("A=B", "c").run().unwrap_err();
        assert!(err.to_string().contains("is not a variable name"), "{err}");
    }

    /// A component that asks the host with `cmd` and changes it with `cmd`: a marker file
    /// that `make_marker` (a program in the work directory) creates.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Marker {
        #[serde(default)]
        fail: bool,
        #[serde(skip)]
        workdir: PathBuf,
    }

    impl Component for Marker {
        fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
            self.workdir = cx.workdir().to_path_buf();
            Ok(())
        }

        fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> {
            // No `cwd`: in a dry run, the work directory may not exist yet.
            let marker = self.workdir.join("marker");
            let test = cmd(["test", "-e"]).arg(marker.to_string_lossy()).run()?;
            Ok(match test.code() {
                Some(0) => Verdict::UpToDate,
                _ => Verdict::needs_update(format!("no marker: `test -e` {}", test.status)),
            })
        }

        fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
            let script = if self.fail {
                "echo cannot make the marker >&2; exit 4"
            } else {
                "echo \"$CONTENT\" > marker; echo made"
            };
            let out = cmd(["sh", "-c", script])
                .cwd(&self.workdir)
                .env("CONTENT", "marked")
                .timeout(Duration::from_secs(10))
                .check()?;
            cx.log(out.stdout.trim_end().to_string());
            Ok(())
        }
    }

    fn marker(attributes: &str) -> batou_core::testing::TestProject {
        project_with::<Marker>(
            "marker",
            &format!(
                "[hosts.localhost]\ncomponents = [\"marker\"]\n\n[components.marker]\n{attributes}"
            ),
        )
    }

    #[test]
    fn a_component_built_on_cmd_converges_and_stays() {
        let project = marker("");
        let dry = project.dry_run("dev");
        dry.assert_changed(&["marker > Workdir", "marker"]);
        assert!(!project.base_dir().exists());

        let run = project.converge("dev");
        run.assert_changed(&["marker > Workdir", "marker"]);
        assert_eq!(
            run.reasons(),
            pairs(&[
                ("marker > Workdir", "missing"),
                ("marker", "no marker: `test -e` failed with exit code 1"),
            ])
        );
        assert_eq!(run.logs(), ["made"]);
        let path = project.workdir("marker").join("marker");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "marked\n");
        project.converge("dev").assert_unchanged();

        std::fs::remove_file(&path).unwrap();
        project.converge("dev").assert_changed(&["marker"]);
        project.converge("dev").assert_unchanged();
    }

    #[test]
    fn a_failed_check_in_a_component_names_the_command_and_its_output() {
        let project = marker("fail = true\n");
        let run = project.run("dev", ConvergeOptions::default());
        assert_eq!(
            run.failure().as_deref(),
            Some(
                "marker: command `sh -c echo cannot make the marker >&2; exit 4` failed with exit code 4\n\
                 --- stderr ---\ncannot make the marker"
            )
        );
    }
}
