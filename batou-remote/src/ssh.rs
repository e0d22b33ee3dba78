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

/// How to open SSH connections.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// Accept and record unknown host keys (a changed key is refused regardless).
    pub accept_new_host_keys: bool,
    /// An ssh_config file to use instead of the user's.
    pub config_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
    /// A private directory for this run's control sockets (see [`control_dir`]).
    pub control_dir: PathBuf,
    /// The master connections of this run, so that they can be ended at once.
    pub masters: Masters,
}

/// Why a host could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("host key refused: {0}")]
    HostKey(String),
    #[error("authentication refused: {0}")]
    Auth(String),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("no connection within {0:.0?}")]
    Timeout(Duration),
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
    let deadline = options.connect_timeout * 2 + Duration::from_secs(2);
    let status = match tokio::time::timeout(deadline, command.status()).await {
        Err(_) => return Err(ConnectError::Timeout(deadline)),
        Ok(Err(err)) => {
            return Err(ConnectError::Unreachable(format!(
                "cannot run `ssh`: {err}"
            )));
        }
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
        Ok(Err(err)) => {
            let _ = session.close().await;
            return Err(ConnectError::Unreachable(format!(
                "the master connection does not answer: {err}"
            )));
        }
        Err(_) => {
            let _ = session.close().await;
            return Err(ConnectError::Timeout(deadline));
        }
    }
    Ok(Arc::new(session))
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
    let checking = if options.accept_new_host_keys {
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
        format!("ConnectTimeout={}", options.connect_timeout.as_secs()).into(),
        "-o".into(),
        format!("ServerAliveInterval={}", options.keepalive.as_secs()).into(),
    ];
    if let Some(port) = host.port {
        argv.extend(["-p".into(), port.to_string().into()]);
    }
    if let Some(user) = &host.user {
        argv.extend(["-l".into(), user.into()]);
    }
    if let Some(config) = &options.config_file {
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
    let text = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .collect::<Vec<_>>()
        .join("\n");
    let text = match text.is_empty() {
        true => format!("`ssh` failed ({status})"),
        false => text,
    };
    if text.contains("Host key verification failed")
        || text.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || text.contains("host key")
    {
        ConnectError::HostKey(text)
    } else if text.contains("Permission denied")
        || text.contains("Too many authentication failures")
    {
        ConnectError::Auth(text)
    } else {
        ConnectError::Unreachable(text)
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
    Literal(String),
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

    fn options(dir: &Path, config: PathBuf) -> SshOptions {
        SshOptions {
            accept_new_host_keys: false,
            config_file: Some(config),
            connect_timeout: Duration::from_secs(2),
            keepalive: Duration::from_secs(1),
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
        };
        let options = options(dir.path(), config);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = runtime.block_on(connect(&host, &options));
        assert!(
            matches!(result, Err(ConnectError::Unreachable(_))),
            "{:?}",
            result.err()
        );
        assert!(!marker.exists(), "the address was taken for an option");
    }
}
