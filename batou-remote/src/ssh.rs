//! SSH: one multiplexed master connection per host, with strict host keys and deadlines.
//!
//! Uses the system `ssh` and the `openssh` crate's native multiplexing, so the user's
//! `~/.ssh/config`, agents and jump hosts apply. The master runs with BatchMode (never
//! prompts), a connect timeout, keepalives and an idle `ControlPersist`, so it ends by itself
//! when this process dies. Commands for the remote shell are built as argv and quoted in
//! exactly one place, [`shell_command`].
//!
//! This module starts the master `ssh` itself rather than through
//! `openssh::SessionBuilder`: the builder puts the destination last on ssh's command line
//! with no `--` before it, so an address such as `-oProxyCommand=...` would be read as an
//! option. Here the destination always follows `--`, and the master starts in a process
//! group of its own, so that a terminal's Ctrl-C (sent to the whole foreground process
//! group) reaches only the controller, which then ends its sessions in order.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batou_core::protocol::RemoteHost;
use openssh::Session;

/// How to open SSH connections, as the command line says.
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Accept and record unknown host keys (a changed key is refused regardless).
    pub accept_new_host_keys: bool,
    /// An ssh_config file to use instead of the user's.
    pub config_file: Option<PathBuf>,
    /// ssh's `ConnectTimeout`, in whole seconds.
    pub connect_timeout: Duration,
    /// ssh's `ServerAliveInterval`, in whole seconds.
    pub keepalive: Duration,
}

/// What connecting needs during a run: the settings, and the run's control sockets.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// How to connect, resolved from the command line.
    pub settings: SshSettings,
    /// A private directory for this run's control sockets (see [`control_dir`]).
    pub control_dir: PathBuf,
    /// The master connections of this run, so that they can be ended at once.
    pub masters: Masters,
}

/// Why a host could not be reached.
///
/// The Display texts are the messages users see (in `host_failed` events and summaries);
/// a variant whose cause is another error shows that error's text too, so print it with
/// `to_string()`, not as a chain.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// ssh refused the host's key: unknown (without `--accept-new-host-keys`) or changed.
    #[error("host key refused: {ssh}")]
    HostKeyRefused {
        /// What ssh said.
        ssh: SshOutput,
    },
    /// The host refused every identity ssh offered.
    #[error("authentication refused: {ssh}")]
    AuthRefused {
        /// What ssh said.
        ssh: SshOutput,
    },
    /// ssh failed for another reason (no route, connection refused, ...), or said nothing.
    #[error("unreachable: {}", SshOrStatus(.ssh, .status))]
    Unreachable {
        /// What ssh said (maybe nothing).
        ssh: SshOutput,
        /// How ssh exited.
        status: std::process::ExitStatus,
    },
    /// The system `ssh` could not be started.
    #[error("unreachable: cannot run `ssh`: {source}")]
    CannotRunSsh {
        /// Why `ssh` could not be started.
        #[source]
        source: std::io::Error,
    },
    /// ssh authenticated, but its master connection does not answer on its control socket.
    #[error("unreachable: the master connection does not answer: {source}")]
    MasterSilent {
        /// What the control socket answered.
        #[source]
        source: openssh_mux_client::Error,
    },
    /// No connection within the deadline (ssh's own `ConnectTimeout` covers only TCP).
    #[error("no connection within {timeout:.0?}")]
    Timeout {
        /// The deadline that passed.
        timeout: Duration,
    },
}

/// What ssh wrote about a failed connection: its non-empty lines, trimmed, without the
/// notes that a key was recorded. Shown one line under the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOutput {
    /// ssh's lines, in the order it wrote them.
    pub lines: Vec<String>,
}

impl SshOutput {
    /// The lines of ssh's log that say something about the failure.
    pub fn from_log(log: &str) -> Self {
        SshOutput {
            lines: log
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
                .map(String::from)
                .collect(),
        }
    }

    fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    fn contains(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }
}

/// ssh's output, or its exit status when it said nothing.
struct SshOrStatus<'a>(&'a SshOutput, &'a std::process::ExitStatus);

impl std::fmt::Display for SshOrStatus<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.is_empty() {
            true => write!(f, "`ssh` failed ({})", self.1),
            false => self.0.fmt(f),
        }
    }
}

impl std::fmt::Display for SshOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.lines.join("\n"))
    }
}

/// The running master connections of a run: control socket and PID of each.
#[derive(Debug, Clone, Default)]
pub struct Masters(Arc<Mutex<BTreeMap<PathBuf, u32>>>);

impl Masters {
    fn add(&self, control: &Path, pid: u32) {
        self.lock().insert(control.to_path_buf(), pid);
    }

    fn take(&self, control: &Path) -> Option<u32> {
        self.lock().remove(control)
    }

    /// Ends every master connection still running (by PID), for a run that must stop at once.
    pub fn terminate_all(&self) {
        let masters = std::mem::take(&mut *self.lock());
        for (control, pid) in masters {
            terminate(pid, &control);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, u32>> {
        // A panic while holding this lock leaves a consistent map: keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Seconds a master connection stays up without channels; bounds its life after a crash.
const IDLE_PERSIST: usize = 15;

/// Numbers the control sockets of one run.
static NEXT_MASTER: AtomicUsize = AtomicUsize::new(0);

/// Opens the master connection to `host`.
#[expect(
    clippy::disallowed_methods,
    reason = "the master lives for the whole run in its own process group, and `Masters` ends it by PID"
)]
pub async fn connect(
    host: &RemoteHost,
    options: &SshOptions,
) -> Result<Arc<Session>, ConnectError> {
    let n = NEXT_MASTER.fetch_add(1, Ordering::Relaxed);
    let control = options.control_dir.join(format!("{n}.sock"));
    let log = options.control_dir.join(format!("{n}.log"));
    let argv = master_argv(host, options, &control, &log);
    let mut command = tokio::process::Command::new("ssh");
    command
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    // ssh's own ConnectTimeout covers TCP; this deadline also covers a peer that accepts the
    // connection and then never speaks. With `-f`, ssh goes to the background (a session of
    // its own) once authenticated, and the process started here exits.
    let deadline = options.settings.connect_timeout * 2 + Duration::from_secs(2);
    let status = match tokio::time::timeout(deadline, command.status()).await {
        Err(_) => return Err(ConnectError::Timeout { timeout: deadline }),
        Ok(Err(source)) => return Err(ConnectError::CannotRunSsh { source }),
        Ok(Ok(status)) => status,
    };
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        return Err(classify(&text, status));
    }
    let session = Session::resume_mux(control.clone().into_boxed_path(), Some(log.into()));
    let pid = async {
        openssh_mux_client::Connection::connect(&control)
            .await?
            .send_alive_check()
            .await
    };
    match tokio::time::timeout(deadline, pid).await {
        Ok(Ok(pid)) => options.masters.add(&control, pid.get()),
        Ok(Err(source)) => {
            let _ = session.close().await;
            return Err(ConnectError::MasterSilent { source });
        }
        Err(_) => {
            let _ = session.close().await;
            return Err(ConnectError::Timeout { timeout: deadline });
        }
    }
    Ok(Arc::new(session))
}

/// The master's command line as `connect` starts it, for `-vv`: `ssh` and its arguments,
/// with `N` standing for the master's number in its control socket and log paths.
pub fn describe_connect(host: &RemoteHost, options: &SshOptions) -> String {
    let control = options.control_dir.join("N.sock");
    let log = options.control_dir.join("N.log");
    let argv = master_argv(host, options, &control, &log);
    let words: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("ssh {}", words.join(" "))
}

/// Closes a master connection once nothing else uses it, and makes sure its process ends.
pub async fn close(session: Arc<Session>, masters: &Masters) {
    let Ok(session) = Arc::try_unwrap(session) else {
        return;
    };
    let control = session.control_socket().to_path_buf();
    // Stopping the listener ends the master once its last channel has closed.
    let _ = tokio::time::timeout(Duration::from_secs(5), session.close()).await;
    if let Some(pid) = masters.take(&control) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while is_master(pid, &control) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        terminate(pid, &control);
    }
}

/// The master's command line: every value the environment gives (port, user, destination)
/// is an option's argument or follows `--`, so none can become an option of its own.
fn master_argv(
    host: &RemoteHost,
    options: &SshOptions,
    control: &Path,
    log: &Path,
) -> Vec<OsString> {
    let checking = if options.settings.accept_new_host_keys {
        "StrictHostKeyChecking=accept-new"
    } else {
        "StrictHostKeyChecking=yes"
    };
    let mut argv: Vec<OsString> = vec![
        "-E".into(),
        log.into(),
        "-S".into(),
        control.into(),
        "-M".into(),
        "-f".into(),
        "-N".into(),
        "-o".into(),
        format!("ControlPersist={IDLE_PERSIST}s").into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        checking.into(),
        "-o".into(),
        format!(
            "ConnectTimeout={}",
            options.settings.connect_timeout.as_secs()
        )
        .into(),
        "-o".into(),
        format!(
            "ServerAliveInterval={}",
            options.settings.keepalive.as_secs()
        )
        .into(),
    ];
    if let Some(port) = host.port {
        argv.extend(["-p".into(), port.to_string().into()]);
    }
    if let Some(user) = &host.user {
        argv.extend(["-l".into(), user.into()]);
    }
    if let Some(config) = &options.settings.config_file {
        argv.extend(["-F".into(), config.into()]);
    }
    argv.push("--".into());
    argv.push(destination(host).into());
    argv
}

/// Where `host` is reached: its address, or its name (which the ssh_config may map).
pub fn destination(host: &RemoteHost) -> &str {
    host.address.as_deref().unwrap_or(&host.name)
}

/// Sorts ssh's own message into the failures that users act on differently.
fn classify(log: &str, status: std::process::ExitStatus) -> ConnectError {
    let ssh = SshOutput::from_log(log);
    if ssh.contains("Host key verification failed")
        || ssh.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || ssh.contains("host key")
    {
        ConnectError::HostKeyRefused { ssh }
    } else if ssh.contains("Permission denied") || ssh.contains("Too many authentication failures")
    {
        ConnectError::AuthRefused { ssh }
    } else {
        ConnectError::Unreachable { ssh, status }
    }
}

/// Whether `pid` is still the master serving `control` (and not a zombie or a new process).
fn is_master(pid: u32, control: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    if stat
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'))
    {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let control = control.as_os_str().as_encoded_bytes();
    cmdline.split(|b| *b == 0).any(|arg| arg == control)
}

/// Ends the master `pid` if it is still the one serving `control`.
fn terminate(pid: u32, control: &Path) {
    if is_master(pid, control) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// A private, short directory for one run's control sockets (socket paths must stay under
/// ~100 bytes, so it lives in `/tmp` whatever `TMPDIR` says); removed when dropped.
pub fn control_dir() -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("batou-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in("/tmp")
}

/// Quotes one word for a POSIX shell.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A word of a remote command: literal, or a path below the remote `$HOME`.
#[derive(Debug, Clone)]
pub enum Word {
    /// A word passed as it is (quoted).
    Literal(String),
    /// A path relative to the remote `$HOME` (quoted, after `"$HOME"/`).
    Home(String),
}

/// Builds the remote shell command for `argv`: the only place remote commands are quoted.
pub fn shell_command(argv: &[Word]) -> String {
    argv.iter()
        .map(|w| match w {
            Word::Literal(s) => shell_quote(s),
            Word::Home(rel) => format!("\"$HOME\"/{}", shell_quote(rel)),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
#[expect(clippy::disallowed_methods, reason = "tests start real processes")]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        assert_eq!(shell_quote("plain/path-1.0"), "plain/path-1.0");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("$HOME; rm"), "'$HOME; rm'");
        let cmd = shell_command(&[
            Word::Home(".cache/batou/agents/abc".into()),
            Word::Literal("agent".into()),
        ]);
        assert_eq!(cmd, "\"$HOME\"/.cache/batou/agents/abc agent");
        // Round trip through a real shell.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote("a 'b' $c \"d\"")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "a 'b' $c \"d\"");
    }

    fn exit(code: i32) -> std::process::ExitStatus {
        std::os::unix::process::ExitStatusExt::from_raw(code << 8)
    }

    /// ssh's messages (as OpenSSH 9 writes them) sort into the failures users act on, and
    /// each shows exactly as before.
    #[test]
    fn ssh_messages_sort_into_what_happened() {
        let cases = [
            (
                "Host key verification failed.\n",
                "host key refused: Host key verification failed.",
            ),
            (
                "No ED25519 host key is known for [127.0.0.2]:2222 and you have requested strict checking.\nHost key verification failed.\n",
                "host key refused: No ED25519 host key is known for [127.0.0.2]:2222 and you have requested strict checking.\nHost key verification failed.",
            ),
            (
                "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n",
                "host key refused: @@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
            ),
            (
                "Warning: Permanently added '[127.0.0.2]:2222' (ED25519) to the list of known hosts.\r\nroot@127.0.0.2: Permission denied (publickey).\n",
                "authentication refused: root@127.0.0.2: Permission denied (publickey).",
            ),
            (
                "Received disconnect from 127.0.0.2 port 2222:2: Too many authentication failures\n",
                "authentication refused: Received disconnect from 127.0.0.2 port 2222:2: Too many authentication failures",
            ),
            (
                "ssh: connect to host 127.0.0.2 port 2222: Connection refused\n",
                "unreachable: ssh: connect to host 127.0.0.2 port 2222: Connection refused",
            ),
            (
                "  kex_exchange_identification: Connection closed by remote host  \n\n",
                "unreachable: kex_exchange_identification: Connection closed by remote host",
            ),
            (
                "Warning: Permanently added '[127.0.0.2]:2222' (ED25519) to the list of known hosts.\n",
                "unreachable: `ssh` failed (exit status: 255)",
            ),
            ("", "unreachable: `ssh` failed (exit status: 255)"),
        ];
        for (log, message) in cases {
            let err = classify(log, exit(255));
            assert_eq!(err.to_string(), message, "{log:?}");
            let expected = match message.split(':').next() {
                Some("host key refused") => matches!(err, ConnectError::HostKeyRefused { .. }),
                Some("authentication refused") => matches!(err, ConnectError::AuthRefused { .. }),
                _ => matches!(err, ConnectError::Unreachable { .. }),
            };
            assert!(expected, "{log:?} gave {err:?}");
        }
    }

    #[test]
    fn the_output_keeps_ssh_lines_as_data() {
        let ConnectError::AuthRefused { ssh } = classify(
            "Warning: Permanently added 'x' (ED25519) to the list of known hosts.\n a \nb: Permission denied (publickey).\n",
            exit(255),
        ) else {
            panic!("not an authentication failure");
        };
        assert_eq!(ssh.lines, ["a", "b: Permission denied (publickey)."]);
    }

    #[test]
    fn failures_without_ssh_output_keep_their_cause() {
        use std::error::Error as _;
        let err = ConnectError::CannotRunSsh {
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(
            err.to_string(),
            "unreachable: cannot run `ssh`: no such file"
        );
        assert_eq!(
            err.source().map(|s| s.to_string()).as_deref(),
            Some("no such file")
        );
        let err = ConnectError::Timeout {
            timeout: Duration::from_secs(22),
        };
        assert_eq!(err.to_string(), "no connection within 22s");
        let err = ConnectError::Unreachable {
            ssh: SshOutput::from_log(""),
            status: exit(1),
        };
        assert_eq!(
            err.to_string(),
            "unreachable: `ssh` failed (exit status: 1)"
        );
    }

    fn options(dir: &Path, config: PathBuf) -> SshOptions {
        SshOptions {
            settings: SshSettings {
                accept_new_host_keys: false,
                config_file: Some(config),
                connect_timeout: Duration::from_secs(2),
                keepalive: Duration::from_secs(1),
            },
            control_dir: dir.to_path_buf(),
            masters: Masters::default(),
        }
    }

    #[test]
    fn the_destination_follows_a_double_dash() {
        let host = RemoteHost {
            name: "web1".into(),
            address: Some("-oProxyCommand=x".into()),
            port: Some(2222),
            user: Some("-oUser=x".into()),
            become_user: None,
        };
        let argv = master_argv(
            &host,
            &options(Path::new("/tmp/d"), "/c".into()),
            Path::new("/tmp/d/0.sock"),
            Path::new("/tmp/d/0.log"),
        );
        let argv: Vec<&str> = argv.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(&argv[argv.len() - 2..], ["--", "-oProxyCommand=x"]);
        // Values of options are the argument that follows the option.
        let user = argv.iter().position(|a| *a == "-l").unwrap();
        assert_eq!(argv[user + 1], "-oUser=x");
    }

    /// An address that `ssh` would take for an option never runs what it says: connecting
    /// fails, and the command of the would-be option is not run.
    #[test]
    fn an_address_that_looks_like_an_option_is_only_a_name() {
        let dir = control_dir().unwrap();
        let marker = dir.path().join("proxied");
        // Every name goes to a closed port on loopback: no lookup or traffic leaves the
        // machine.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("ssh_config");
        std::fs::write(
            &config,
            format!("Host *\n  HostName 127.0.0.1\n  Port {port}\n  BatchMode yes\n"),
        )
        .unwrap();
        let address = format!("-oProxyCommand=touch {}", marker.display());

        // The control: as an option, the value runs its command.
        let status = std::process::Command::new("ssh")
            .arg("-F")
            .arg(&config)
            .arg(&address)
            .arg("web1")
            .arg("true")
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success());
        assert!(marker.exists(), "the control did not run the proxy command");
        std::fs::remove_file(&marker).unwrap();

        let host = RemoteHost {
            name: "web1".into(),
            address: Some(address),
            port: None,
            user: None,
            become_user: None,
        };
        let options = options(dir.path(), config);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = runtime.block_on(connect(&host, &options));
        assert!(
            matches!(result, Err(ConnectError::Unreachable { .. })),
            "{:?}",
            result.err()
        );
        assert!(!marker.exists(), "the address was taken for an option");
    }
}
