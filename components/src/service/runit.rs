//! runit: the service definition directory (`run`, `finish`, `log/run`, an env directory for
//! secret variables), the link into the supervisor's service directory that enables it, the
//! supervisor's status files, and `sv`.
//!
//! The definition is daemontools-compatible: `run` `exec`s the program, so that the process
//! runsv supervises is the service itself; its output goes through `log/run` (`svlogd -tt`)
//! to `log/main/current`, which the tool reads back for failures.

use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use batou_core::{AllowedPaths, Component, Configure, Deploy, Verdict};

use super::Observed;
use crate::cmd::cmd;
use crate::fs::write_atomic;

/// How long runsvdir may take to start a runsv for a new link (it looks every 5 s).
const PICKUP: Duration = Duration::from_secs(15);
/// The timeout of every `sv` call; `sv` itself does not wait (no `-w`/`-v`).
const SV_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped service may take to go down.
const STOP: Duration = Duration::from_secs(15);
/// The offset of TAI64 labels from the Unix epoch (2^62 plus runit's 10 s).
const TAI64_UNIX: u64 = 4_611_686_018_427_387_914;

/// What a runit service is, once configured.
#[derive(Debug, Clone)]
pub(crate) struct Runit {
    /// The definition directory, `<workdir>/.service/<name>`.
    pub(crate) definition: PathBuf,
    /// The supervisor's service directory.
    pub(crate) service_dir: PathBuf,
    /// `<service_dir>/<name>`, the link that enables the service.
    pub(crate) link: PathBuf,
    pub(crate) allowed: AllowedPaths,
}

/// What the `run` script is made of.
pub(crate) struct RunScript<'a> {
    pub(crate) name: &'a str,
    pub(crate) argv: &'a [String],
    pub(crate) cwd: &'a Path,
    /// Variables written into the script (no secrets).
    pub(crate) env: &'a BTreeMap<String, String>,
    /// The env directory `chpst -e` reads the secret variables from, if there are any.
    pub(crate) env_dir: Option<&'a Path>,
    pub(crate) user: Option<&'a str>,
}

/// The `log/run` script: timestamps (`-tt`) and `log/main/current`.
pub(crate) const LOG_RUN: &str = "#!/bin/sh\n\
# Written by batou: the service's output, with timestamps, to log/main/current.\n\
exec 2>&1\n\
mkdir -p main\n\
exec svlogd -tt main\n";

/// The `finish` script: runsv runs it after every exit of the service; its count is the
/// `restarts` of `service status`.
pub(crate) const FINISH: &str = "#!/bin/sh\n\
# Written by batou: counts the service's exits (runsv runs this after each one).\n\
n=$(cat exits 2>/dev/null)\n\
echo $((${n:-0} + 1)) > exits\n";

/// The `run` script: `cd`, variables, then `exec` of the program (through `chpst` for a user
/// or secret variables).
pub(crate) fn run_script(s: &RunScript) -> String {
    let mut out = format!(
        "#!/bin/sh\n# Written by batou for service `{}`; changes here are overwritten.\nexec 2>&1\n",
        s.name
    );
    out.push_str(&format!(
        "cd {} || exit 111\n",
        shell_quote(&s.cwd.to_string_lossy())
    ));
    for (key, value) in s.env {
        out.push_str(&format!("export {key}={}\n", shell_quote(value)));
    }
    let mut words: Vec<String> = Vec::new();
    if s.env_dir.is_some() || s.user.is_some() {
        words.push("chpst".into());
        if let Some(dir) = s.env_dir {
            words.push("-e".into());
            words.push(dir.to_string_lossy().into_owned());
        }
        if let Some(user) = s.user {
            words.push("-u".into());
            words.push(user.to_string());
        }
    }
    words.extend(s.argv.iter().cloned());
    let quoted: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
    out.push_str(&format!("exec {}\n", quoted.join(" ")));
    out
}

/// `word` as one word for `sh`: bare when it is plainly safe, else in single quotes.
pub(crate) fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl Runit {
    /// What runsv says, read from its files: never fails on a service that is not there.
    pub(crate) fn observe(&self) -> anyhow::Result<Observed> {
        let enabled = std::fs::read_link(&self.link).is_ok_and(|t| t == self.definition);
        let supervised = answers(&self.definition.join("supervise/ok"));
        let exits = std::fs::read_to_string(self.definition.join("exits"))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let mut observed = Observed {
            supervised,
            enabled,
            exits: Some(exits.unwrap_or(0)),
            ..Observed::default()
        };
        if !supervised {
            observed.detail = Some(if enabled {
                "runsv does not run for it".into()
            } else {
                "not enabled".into()
            });
            return Ok(observed);
        }
        let status = match std::fs::read(self.definition.join("supervise/status")) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(observed),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "cannot read `{}`",
                        self.definition.join("supervise/status").display()
                    )
                });
            }
        };
        let status = SuperviseStatus::parse(&status)?;
        observed.running = status.state == State::Run && status.pid.is_some();
        observed.want_up = status.want_up;
        observed.pid = status.pid.filter(|_| observed.running);
        observed.since = status.since_unix.and_then(|since| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_secs();
            Some(now.saturating_sub(since))
        });
        observed.detail = match (status.state, status.want_up) {
            (State::Run, false) => Some("want down".into()),
            (State::Down, true) => Some("want up".into()),
            (State::Down, false) => Some("down".into()),
            (State::Finish, _) => Some("finishing".into()),
            (State::Run, true) => None,
        };
        if status.paused {
            observed.detail = Some("paused".into());
        }
        Ok(observed)
    }

    /// Links the definition into the service directory (atomically) and waits for runsvdir
    /// to supervise it.
    pub(crate) fn enable(&self) -> anyhow::Result<()> {
        self.allowed.check(&self.link)?;
        if std::fs::read_link(&self.link).ok().as_deref() != Some(self.definition.as_path()) {
            if let Ok(meta) = std::fs::symlink_metadata(&self.link)
                && !meta.file_type().is_symlink()
            {
                bail!(
                    "`{}` exists and is not a symlink; remove it or choose another `name`",
                    self.link.display()
                );
            }
            if !self.service_dir.is_dir() {
                bail!(
                    "service directory `{}` does not exist: is runit installed, and is `service_dir` right?",
                    self.service_dir.display()
                );
            }
            let tmp = self.link.with_file_name(format!(
                ".{}.batou-tmp",
                self.link.file_name().unwrap_or_default().to_string_lossy()
            ));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(&self.definition, &tmp)
                .with_context(|| format!("cannot create symlink `{}`", tmp.display()))?;
            std::fs::rename(&tmp, &self.link).with_context(|| {
                let _ = std::fs::remove_file(&tmp);
                format!("cannot rename into `{}`", self.link.display())
            })?;
        }
        let ok = self.definition.join("supervise/ok");
        let deadline = Instant::now() + PICKUP;
        while !answers(&ok) {
            if Instant::now() >= deadline {
                bail!(
                    "runsvdir did not pick up `{}` within {} s: is runsvdir running on `{}`?",
                    self.link.display(),
                    PICKUP.as_secs(),
                    self.service_dir.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops the service and removes the link: runsvdir then ends its runsv.
    pub(crate) fn disable(&self) -> anyhow::Result<()> {
        self.allowed.check(&self.link)?;
        if answers(&self.definition.join("supervise/ok")) {
            self.stop()?;
        }
        match std::fs::symlink_metadata(&self.link) {
            Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(&self.link)
                .with_context(|| format!("cannot remove `{}`", self.link.display()))?,
            Ok(_) => bail!(
                "`{}` exists and is not a symlink; it was left alone",
                self.link.display()
            ),
            Err(_) => {}
        }
        Ok(())
    }

    /// `sv up`.
    pub(crate) fn start(&self) -> anyhow::Result<()> {
        self.reset_exits(0)?;
        self.sv("up", &self.definition)
    }

    /// `sv restart` (of the log service too when its definition changed).
    pub(crate) fn restart(&self, log_too: bool) -> anyhow::Result<()> {
        if log_too {
            self.sv("restart", &self.definition.join("log"))?;
        }
        self.reset_exits(0)?;
        self.sv("restart", &self.definition)
    }

    /// `sv down`, then waits for the process to end.
    pub(crate) fn stop(&self) -> anyhow::Result<()> {
        self.sv("down", &self.definition)?;
        let deadline = Instant::now() + STOP;
        // Down, not only not running: `finish` has run, so the exit is counted.
        let down = || {
            std::fs::read(self.definition.join("supervise/status"))
                .ok()
                .and_then(|b| SuperviseStatus::parse(&b).ok())
                .is_none_or(|s| s.state == State::Down)
        };
        while !down() {
            if Instant::now() >= deadline {
                bail!(
                    "service `{}` did not stop within {} s of `sv down`",
                    self.definition.display(),
                    STOP.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.reset_exits(0)
    }

    /// The last `lines` lines of the service's own log.
    pub(crate) fn log_tail(&self, lines: usize) -> Option<(String, String)> {
        let path = self.definition.join("log/main/current");
        let text = std::fs::read_to_string(&path).ok()?;
        Some((path.display().to_string(), last_lines(&text, lines)))
    }

    fn sv(&self, verb: &str, dir: &Path) -> anyhow::Result<()> {
        cmd(["sv", verb])
            .arg(dir.to_string_lossy())
            .timeout(SV_TIMEOUT)
            .check()
            .with_context(|| format!("cannot `sv {verb}` `{}`", dir.display()))?;
        Ok(())
    }

    /// Sets the exit count that `finish` keeps: 0 when the tool starts, restarts, stops or
    /// proved the service healthy, so that `restarts` counts what the supervisor did since.
    pub(crate) fn reset_exits(&self, n: u64) -> anyhow::Result<()> {
        write_atomic(
            &self.definition.join("exits"),
            format!("{n}\n").as_bytes(),
            0o644,
            None,
            None,
        )
    }
}

/// The state byte of runsv's `supervise/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Down,
    Run,
    Finish,
}

/// runsv's 20-byte `supervise/status`: TAI64N of the last change (12 bytes), pid (4 bytes,
/// little-endian), paused, want (`u`/`d`), term flag, state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SuperviseStatus {
    pub(crate) since_unix: Option<u64>,
    pub(crate) pid: Option<u32>,
    pub(crate) paused: bool,
    pub(crate) want_up: bool,
    pub(crate) state: State,
}

impl SuperviseStatus {
    pub(crate) fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        if bytes.len() < 20 {
            bail!(
                "runsv's status file has {} bytes, expected 20 (is this runit's runsv?)",
                bytes.len()
            );
        }
        let label = u64::from_be_bytes(bytes[0..8].try_into().expect("8 bytes"));
        let pid = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        let state = match bytes[19] {
            0 => State::Down,
            1 => State::Run,
            2 => State::Finish,
            other => bail!("runsv's status file has an unknown state {other}"),
        };
        Ok(SuperviseStatus {
            since_unix: label.checked_sub(TAI64_UNIX),
            pid: (pid != 0).then_some(pid),
            paused: bytes[16] != 0,
            want_up: bytes[17] == b'u',
            state,
        })
    }
}

/// Whether a runsv reads `supervise/ok`: opening a FIFO for writing without blocking
/// fails when nothing has it open for reading (the way `sv` tells).
pub(crate) fn answers(ok: &Path) -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(ok)
        .is_ok()
}

/// The last `n` lines of `text`.
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The files of an env directory for `chpst -e`: one file per variable, mode 0600, holding
/// the value (newlines written as NUL bytes, as envdir reads them back); files of variables
/// no longer given are removed.
#[derive(Debug)]
pub(crate) struct EnvDir {
    relative: String,
    vars: BTreeMap<String, batou_core::Secret<String>>,
    resolved: PathBuf,
    allowed: AllowedPaths,
}

impl EnvDir {
    pub(crate) fn new(
        relative: String,
        vars: BTreeMap<String, batou_core::Secret<String>>,
    ) -> Self {
        EnvDir {
            relative,
            vars,
            resolved: PathBuf::new(),
            allowed: AllowedPaths::default(),
        }
    }

    fn wanted(&self) -> BTreeMap<String, Vec<u8>> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().replace('\n', "\0").into_bytes()))
            .collect()
    }

    /// Variables whose file is missing, differs, is not private, or is not wanted.
    fn differences(&self) -> anyhow::Result<Vec<String>> {
        let mut differ = Vec::new();
        let wanted = self.wanted();
        for (key, data) in &wanted {
            let path = self.resolved.join(key);
            let same = std::fs::symlink_metadata(&path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o7777 == 0o600)
                && std::fs::read(&path).is_ok_and(|d| d == *data);
            if !same {
                differ.push(key.clone());
            }
        }
        match std::fs::read_dir(&self.resolved) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.with_context(|| {
                        format!("cannot read directory `{}`", self.resolved.display())
                    })?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !wanted.contains_key(&name) && !name.starts_with('.') {
                        differ.push(name);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read directory `{}`", self.resolved.display())
                });
            }
        }
        differ.sort();
        differ.dedup();
        Ok(differ)
    }
}

impl Component for EnvDir {
    fn label(&self) -> String {
        format!("EnvDir('{}')", self.relative)
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        self.resolved = cx.path(&self.relative)?;
        self.allowed = cx.allowed_paths();
        Ok(())
    }

    fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> {
        self.allowed.check(&self.resolved)?;
        let differ = self.differences()?;
        Ok(if differ.is_empty() {
            Verdict::UpToDate
        } else {
            let names: Vec<String> = differ.iter().map(|k| format!("`{k}`")).collect();
            Verdict::needs_update(format!("secret variables {} differ", names.join(", ")))
        })
    }

    fn update(&mut self, _cx: &mut Deploy) -> anyhow::Result<()> {
        self.allowed.check(&self.resolved)?;
        std::fs::create_dir_all(&self.resolved)
            .with_context(|| format!("cannot create `{}`", self.resolved.display()))?;
        std::fs::set_permissions(&self.resolved, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot set mode of `{}`", self.resolved.display()))?;
        let wanted = self.wanted();
        for name in self.differences()? {
            let path = self.resolved.join(&name);
            match wanted.get(&name) {
                Some(data) => write_atomic(&path, data, 0o600, None, None)?,
                None => std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove `{}`", path.display()))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_script_execs_the_program_quoted() {
        let env = BTreeMap::from([
            ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
            ("GREETING".to_string(), "it's \"here\" $HOME".to_string()),
        ]);
        let argv: Vec<String> = [
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "127.0.0.1",
        ]
        .map(String::from)
        .to_vec();
        let script = run_script(&RunScript {
            name: "web",
            argv: &argv,
            cwd: Path::new("/srv/work/web/htdocs"),
            env: &env,
            env_dir: None,
            user: None,
        });
        assert_eq!(
            script,
            "#!/bin/sh\n\
             # Written by batou for service `web`; changes here are overwritten.\n\
             exec 2>&1\n\
             cd /srv/work/web/htdocs || exit 111\n\
             export GREETING='it'\\''s \"here\" $HOME'\n\
             export PYTHONUNBUFFERED=1\n\
             exec python3 -m http.server 8080 --bind 127.0.0.1\n"
        );
        let argv: Vec<String> = ["sh", "-c", "echo $X; exec sleep 1"]
            .map(String::from)
            .to_vec();
        let script = run_script(&RunScript {
            name: "job",
            argv: &argv,
            cwd: Path::new("/srv/a dir"),
            env: &BTreeMap::new(),
            env_dir: Some(Path::new("/srv/.service/job/env")),
            user: Some("nobody"),
        });
        assert!(
            script.ends_with(
                "cd '/srv/a dir' || exit 111\n\
                 exec chpst -e /srv/.service/job/env -u nobody sh -c 'echo $X; exec sleep 1'\n"
            ),
            "{script}"
        );
    }

    #[test]
    fn the_run_script_says_what_sh_reads_back() {
        let tricky = [
            "a b",
            "it's",
            "$(echo no)",
            "`no`",
            "tab\tand\nnewline",
            "",
            "*",
        ];
        let argv: Vec<String> = ["printf", "[%s]"]
            .into_iter()
            .chain(tricky)
            .map(String::from)
            .collect();
        let quoted: Vec<String> = argv.iter().map(|w| shell_quote(w)).collect();
        let out = cmd(["sh", "-c", &quoted.join(" ")]).check().unwrap();
        let want: String = tricky.iter().map(|t| format!("[{t}]")).collect();
        assert_eq!(out.stdout, want);
    }

    #[test]
    fn supervise_status_is_read_as_runsv_writes_it() {
        // Written by runsv for a running service with pid 26465.
        let bytes = [
            0x40, 0, 0, 0, 0x6b, 0x11, 0x59, 0x35, 0x03, 0x64, 0xfa, 0xfc, 0x61, 0x67, 0, 0, 0,
            b'u', 0, 1,
        ];
        assert_eq!(
            SuperviseStatus::parse(&bytes).unwrap(),
            SuperviseStatus {
                since_unix: Some(1_796_299_051),
                pid: Some(26465),
                paused: false,
                want_up: true,
                state: State::Run,
            }
        );
        let mut down = bytes;
        down[12..16].copy_from_slice(&[0, 0, 0, 0]);
        down[17] = b'd';
        down[19] = 0;
        let status = SuperviseStatus::parse(&down).unwrap();
        assert_eq!(
            (status.pid, status.want_up, status.state),
            (None, false, State::Down)
        );
        assert!(SuperviseStatus::parse(&bytes[..10]).is_err());
    }

    #[test]
    fn log_tails_keep_the_last_lines() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let tail = last_lines(&text, 20);
        assert!(tail.starts_with("line 11\n"), "{tail}");
        assert!(tail.ends_with("line 30"), "{tail}");
        assert_eq!(last_lines("one\n", 20), "one");
    }
}
