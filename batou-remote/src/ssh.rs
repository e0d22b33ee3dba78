//! SSH: one multiplexed master connection per host, with strict host keys and deadlines.
//!
//! Uses the system `ssh` through the `openssh` crate's native multiplexing, so the user's
//! `~/.ssh/config`, agents and jump hosts apply. The master runs with BatchMode (never
//! prompts), a connect timeout, keepalives and an idle `ControlPersist`, so it ends by itself
//! when this process dies. Commands for the remote shell are built as argv and quoted in
//! exactly one place, [`shell_command`].

use std::num::NonZeroUsize;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use batou_core::protocol::RemoteHost;
use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};

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

/// Seconds a master connection stays up without channels; bounds its life after a crash.
const IDLE_PERSIST: usize = 15;

/// Opens the master connection to `host`.
pub async fn connect(
    host: &RemoteHost,
    options: &SshOptions,
) -> Result<Arc<Session>, ConnectError> {
    let mut builder = SessionBuilder::default();
    builder
        .known_hosts_check(if options.accept_new_host_keys {
            KnownHosts::Add
        } else {
            KnownHosts::Strict
        })
        .connect_timeout(options.connect_timeout)
        .server_alive_interval(options.keepalive)
        .control_directory(&options.control_dir)
        .control_persist(ControlPersist::IdleFor(
            NonZeroUsize::new(IDLE_PERSIST).expect("non-zero"),
        ));
    if let Some(port) = host.port {
        builder.port(port);
    }
    if let Some(user) = &host.user {
        builder.user(user.clone());
    }
    if let Some(config) = &options.config_file {
        builder.config_file(config);
    }
    let destination = host.address.as_deref().unwrap_or(&host.name);
    // ssh's own ConnectTimeout covers TCP; this deadline also covers a peer that accepts the
    // connection and then never speaks.
    let deadline = options.connect_timeout * 2 + Duration::from_secs(2);
    match tokio::time::timeout(deadline, builder.connect_mux(destination)).await {
        Err(_) => Err(ConnectError::Timeout(deadline)),
        Ok(Ok(session)) => Ok(Arc::new(session)),
        Ok(Err(err)) => Err(classify(&err)),
    }
}

/// Sorts ssh's own message into the failures that users act on differently.
fn classify(err: &openssh::Error) -> ConnectError {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    let text = text.trim().to_string();
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
}
