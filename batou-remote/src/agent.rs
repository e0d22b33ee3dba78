//! The controller's side of an agent session: ship the binary, start it, speak the protocol.
//!
//! Every read has a deadline: the agent sends heartbeats while it works, so silence longer
//! than the agent timeout means the host's state is unknown, never that it succeeded.
//! The agent's stderr is kept (its last [`STDERR_LINES`] lines) and shown when the agent
//! ends unexpectedly, so that a crash says why.

use openssh::Stdio;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use batou_core::protocol::{
    Controller, FromAgent, HostJob, PROTOCOL_VERSION, Purpose, Refusal, RemoteHost, ToAgent,
};
use batou_core::{Event, RootOutcome, ServiceOutcome};
use openssh::{Child, ChildStdin, ChildStdout, Session};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};

use crate::ssh::{Word, shell_command};

/// Where agents are cached on hosts, below `$HOME`.
const AGENT_CACHE: &str = ".cache/batou/agents";

/// Where `batou-unpack` is cached on hosts, below `$HOME`.
const UNPACK_CACHE: &str = ".cache/batou/unpack";

/// How many of the agent's last stderr lines an error shows.
pub const STDERR_LINES: usize = 40;

/// How many characters of each of those lines it keeps.
const STDERR_LINE_CHARS: usize = 1000;

/// How long to wait for the rest of a dead agent's stderr.
const STDERR_GRACE: Duration = Duration::from_secs(1);

/// Why a host's session failed after connecting.
///
/// The Display texts are the messages users see (in `host_failed` events and summaries);
/// a variant whose cause is another error shows that error's text too, so print it with
/// `to_string()`, not as a chain.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Another deploy holds the host's lock; the agent names the holder.
    #[error("{}", .message.join(": "))]
    LockHeld {
        /// The agent's message.
        message: Vec<String>,
        /// The deploy that holds the lock, when the lock file names it.
        holder: Option<Controller>,
    },
    /// The agent refused the session or a step for another reason.
    #[error("the agent refused: {}", .message.join(": "))]
    Refused {
        /// Why, as the agent classified it.
        reason: Refusal,
        /// The agent's message, outermost first.
        message: Vec<String>,
    },
    /// The agent (or the upload) was silent for longer than the deadline.
    #[error("no answer from the agent within {timeout:.0?}: the host's state is unknown")]
    Timeout {
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The agent's pipes closed or broke in the middle of the session.
    #[error(
        "the agent ended unexpectedly: the host's state is unknown{}{}",
        in_parens(.source.as_ref()),
        StderrLines(.stderr)
    )]
    Died {
        /// Why reading or writing failed; `None` when the agent closed its output.
        #[source]
        source: Option<std::io::Error>,
        /// The agent's last stderr lines (at most [`STDERR_LINES`], masked).
        stderr: Vec<String>,
    },
    /// The host runs another operating system or architecture than the agent is built for.
    #[error("the host runs `{host}`, but the agent is built for `{agent}`: refusing to upload it")]
    PlatformMismatch {
        /// What `uname -sm` said on the host.
        host: String,
        /// The platform of the agent binary.
        agent: String,
    },
    /// `sudo -n` refused to run the agent as the host's `become` user; nothing was changed.
    #[error("{message}\n{}", .sudo.join("\n"))]
    BecomeRefused {
        /// What was refused, naming the login user, the `become` user and the host.
        message: String,
        /// sudo's own lines.
        sudo: Vec<String>,
        /// The login user.
        login: String,
    },
    /// The first command on the host did not say what it should (`uname -sm`, `id -un`).
    #[error("cannot ask the host for its platform: {stderr}")]
    CannotProbe {
        /// What the command wrote to stderr.
        stderr: String,
    },
    /// Checking whether the host has the agent failed.
    #[error("cannot check for the agent: {source}")]
    CannotCheck {
        /// What the SSH session reported.
        #[source]
        source: openssh::Error,
    },
    /// The upload of the agent could not start.
    #[error("cannot start the agent upload: {source}")]
    CannotStartUpload {
        /// What the SSH session reported.
        #[source]
        source: openssh::Error,
    },
    /// The upload of the agent broke off.
    #[error("cannot upload the agent: {source}")]
    CannotUpload {
        /// Why writing the upload failed.
        #[source]
        source: std::io::Error,
    },
    /// The uploaded agent did not install itself.
    #[error("cannot install the agent: {}", .stderr.trim())]
    CannotInstall {
        /// What the install wrote to stderr.
        stderr: String,
    },
    /// A release bundle could not be shipped into the host's store.
    #[error("cannot ship bundle {digest}: {message}")]
    Bundle {
        /// The bundle's short digest.
        digest: String,
        /// What went wrong.
        message: String,
    },
    /// The agent could not be started.
    #[error("cannot start the agent: {source}")]
    CannotStart {
        /// What the SSH session reported.
        #[source]
        source: openssh::Error,
    },
    /// The agent speaks another protocol version.
    #[error(
        "the agent (version {version}) speaks protocol {protocol}, this controller {PROTOCOL_VERSION}"
    )]
    ProtocolMismatch {
        /// The agent's version.
        version: String,
        /// The protocol version the agent speaks.
        protocol: u32,
    },
    /// A line from the agent is not a protocol message.
    #[error("cannot read the agent's message: {source}")]
    BadMessage {
        /// Why the line could not be read.
        #[source]
        source: serde_json::Error,
    },
    /// A protocol message that does not fit the session's state.
    #[error("unexpected `{}` message from the agent", message_kind(.message))]
    Unexpected {
        /// The message that came.
        message: Box<FromAgent>,
    },
}

/// A protocol message's kind, its `msg` tag (`ready`, `step_finished`, ...).
fn message_kind(message: &FromAgent) -> String {
    serde_json::to_value(message)
        .ok()
        .and_then(|v| v["msg"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// ` (the error)`, or nothing.
fn in_parens(err: Option<&std::io::Error>) -> String {
    err.map(|e| format!(" ({e})")).unwrap_or_default()
}

/// The agent's last stderr lines under a heading, each on a line of its own, or nothing.
struct StderrLines<'a>(&'a [String]);

impl std::fmt::Display for StderrLines<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        f.write_str("\nthe agent's stderr (last lines):")?;
        for line in self.0 {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

/// The local agent binary, its content address, the platform it is built for, and the
/// compressed form it travels in.
#[derive(Debug, Clone)]
pub struct AgentBinary {
    /// Where the binary is on this machine.
    pub path: std::path::PathBuf,
    /// Its SHA-256, hex: its name in a host's agent cache.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
    /// What `uname -sm` says on a host that can run it (`Linux x86_64`).
    pub platform: String,
    /// The binary compressed with zstd, as it is sent.
    compressed: Arc<Vec<u8>>,
    /// The program that unpacks it on hosts.
    unpack: Arc<Unpack>,
}

/// `batou-unpack`: the small static program that decompresses, verifies and installs an
/// agent on a host. It is sent uncompressed, once per host, and cached by its SHA-256.
#[derive(Debug)]
struct Unpack {
    bytes: Vec<u8>,
    sha256: String,
}

impl AgentBinary {
    /// Hashes the binary at `path`, checks that it is a static executable, and compresses
    /// it (once per build: the compressed form is kept in the controller's cache); `unpack`
    /// is the `batou-unpack` program sent along to hosts that lack it.
    pub fn new(path: &Path, unpack: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let platform = crate::agent_files::platform(path)?;
        let sha256 = batou_runtime::agent::sha256_file(path)?;
        let unpack_platform = crate::agent_files::platform(unpack)?;
        if unpack_platform != platform {
            anyhow::bail!(
                "`{}` is built for `{unpack_platform}`, the agent `{}` for `{platform}`",
                unpack.display(),
                path.display()
            );
        }
        let unpack_bytes =
            std::fs::read(unpack).with_context(|| format!("cannot read `{}`", unpack.display()))?;
        Ok(AgentBinary {
            size: std::fs::metadata(path)?.len(),
            compressed: Arc::new(crate::agent_files::compressed(path, &sha256)?),
            unpack: Arc::new(Unpack {
                sha256: sha256_bytes(&unpack_bytes),
                bytes: unpack_bytes,
            }),
            platform,
            sha256,
            path: path.to_path_buf(),
        })
    }

    /// The size of the compressed binary, as it is sent.
    pub fn compressed_size(&self) -> u64 {
        self.compressed.len() as u64
    }

    /// The size of `batou-unpack`, sent once to each host that lacks it.
    pub fn unpack_size(&self) -> u64 {
        self.unpack.bytes.len() as u64
    }

    fn cached(&self) -> Word {
        Word::Home(format!("{AGENT_CACHE}/{}", self.sha256))
    }

    fn cached_unpack(&self) -> Word {
        Word::Home(format!("{UNPACK_CACHE}/{}", self.unpack.sha256))
    }
}

fn sha256_bytes(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The agent of one session on a host: where it is and as whom it runs.
#[derive(Debug, Clone)]
pub struct RemoteAgent {
    path: Word,
    become_user: Option<String>,
    /// In a dry run on a host whose cache lacks the agent: the temporary directory it was
    /// unpacked into, removed when the agent ends.
    scratch: Option<String>,
    /// The login user, as the host said (`id -un`).
    login: String,
    host: String,
}

impl RemoteAgent {
    /// The remote command that runs the agent binary with `args`, through `sudo -n` when
    /// the host has a `become` user.
    pub(crate) fn command(&self, args: &[&str]) -> String {
        let mut argv = Vec::new();
        if let Some(user) = &self.become_user {
            argv.extend(["sudo", "-n", "-u", user.as_str(), "--"].map(|w| Word::Literal(w.into())));
        }
        argv.push(self.path.clone());
        argv.extend(args.iter().map(|a| Word::Literal((*a).to_string())));
        shell_command(&argv)
    }

    /// The command of an agent session; in a dry run with a temporary agent, the temporary
    /// directory is removed when the agent ends.
    fn session_command(&self) -> String {
        let agent = self.command(&["agent"]);
        match &self.scratch {
            None => agent,
            Some(dir) => format!(
                "{agent}; s=$?; rm -rf {}; exit $s",
                shell_command(&[Word::Literal(dir.clone())])
            ),
        }
    }

    /// Removes the temporary directory of a dry run's agent, when setting up the session
    /// failed before the agent could remove it.
    pub(crate) async fn discard(&self, session: &Session) {
        if let Some(dir) = &self.scratch {
            let command = shell_command(&[
                Word::Literal("rm".into()),
                Word::Literal("-rf".into()),
                Word::Literal(dir.clone()),
            ]);
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                session.raw_command(&command).status(),
            )
            .await;
        }
    }

    /// The refusal that `sudo`'s lines on the agent's stderr describe, if any.
    fn become_refused(&self, stderr: &[String]) -> Option<SessionError> {
        let target = self.become_user.as_ref()?;
        let lines: Vec<String> = stderr
            .iter()
            .filter(|l| l.starts_with("sudo:") || l.contains("sudoers"))
            .cloned()
            .collect();
        if lines.is_empty() {
            return None;
        }
        let text = lines.join(" ");
        let (login, host) = (&self.login, &self.host);
        let what = if text.contains("password is required") {
            format!(
                "sudo requires a password for `{login}` to run the agent as `{target}` on `{host}`"
            )
        } else if text.contains("unknown user") {
            format!("sudo does not know the user `{target}` on `{host}`")
        } else if text.contains("not allowed") || text.contains("not in the sudoers") {
            format!(
                "`{login}` is not allowed to run the agent as `{target}` through sudo on `{host}`"
            )
        } else {
            format!("sudo refused to run the agent as `{target}` for `{login}` on `{host}`")
        };
        Some(SessionError::BecomeRefused {
            message: what,
            sudo: lines,
            login: login.clone(),
        })
    }
}

/// What the host said in the first round trip: its platform, its login user, and which of
/// the agent and `batou-unpack` its cache has.
#[derive(Debug, PartialEq, Eq)]
struct Probe {
    platform: String,
    login: String,
    cached: Cached,
}

#[derive(Debug, PartialEq, Eq)]
enum Cached {
    Agent,
    Unpack,
    Nothing,
}

impl Probe {
    fn command(agent: &AgentBinary) -> String {
        format!(
            "uname -sm; id -un; if test -x {}; then echo agent; elif test -x {}; then echo unpack; else echo nothing; fi",
            shell_command(&[agent.cached()]),
            shell_command(&[agent.cached_unpack()]),
        )
    }

    fn parse(stdout: &str) -> Option<Probe> {
        let mut lines = stdout.lines().map(str::trim);
        let platform = lines
            .next()?
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let login = lines.next()?.to_string();
        let cached = match lines.next()? {
            "agent" => Cached::Agent,
            "unpack" => Cached::Unpack,
            "nothing" => Cached::Nothing,
            _ => return None,
        };
        Some(Probe {
            platform,
            login,
            cached,
        })
    }
}

/// Makes sure the host can run the agent; returns it and the bytes uploaded (0 when the
/// host's cache had it).
///
/// One round trip says the host's platform (`uname -sm`) and what its cache holds; a host
/// whose platform differs from the agent's is refused before anything is sent. The agent
/// travels compressed and `batou-unpack` (sent first when the host lacks it) decompresses it
/// into a temporary file, checks its SHA-256, syncs and renames it into place, and prunes the
/// cache to the current and the previous agent. A dry run never writes the cache: a missing
/// agent goes into a temporary directory that the session removes.
pub async fn ensure_agent(
    session: &Session,
    agent: &AgentBinary,
    host: &RemoteHost,
    dry_run: bool,
    deadline: Duration,
) -> Result<(RemoteAgent, u64), SessionError> {
    let output = within(
        deadline,
        session.raw_command(Probe::command(agent)).output(),
    )
    .await?
    .map_err(|source| SessionError::CannotCheck { source })?;
    let probe = Probe::parse(&String::from_utf8_lossy(&output.stdout)).ok_or_else(|| {
        SessionError::CannotProbe {
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        }
    })?;
    if probe.platform != agent.platform {
        return Err(SessionError::PlatformMismatch {
            host: probe.platform,
            agent: agent.platform.clone(),
        });
    }
    let mut remote = RemoteAgent {
        path: agent.cached(),
        become_user: host.become_user.clone(),
        scratch: None,
        login: probe.login,
        host: host.name.clone(),
    };
    if probe.cached == Cached::Agent {
        return Ok((remote, 0));
    }
    let (unpack, dir) = if dry_run {
        let dir = scratch_dir(session, deadline).await?;
        remote.scratch = Some(dir.clone());
        remote.path = Word::Literal(format!("{dir}/agent"));
        let unpack = match probe.cached {
            Cached::Unpack => agent.cached_unpack(),
            _ => Word::Literal(format!("{dir}/unpack")),
        };
        (unpack, Word::Literal(dir))
    } else {
        (agent.cached_unpack(), Word::Home(AGENT_CACHE.into()))
    };
    let mut sent = 0;
    let result = async {
        if probe.cached == Cached::Nothing {
            let tmp = match &unpack {
                Word::Home(path) => Word::Home(format!("{path}.{}.tmp", std::process::id())),
                Word::Literal(path) => Word::Literal(format!("{path}.tmp")),
            };
            let parent = match &unpack {
                Word::Home(_) => Word::Home(UNPACK_CACHE.into()),
                Word::Literal(_) => dir.clone(),
            };
            let script = format!(
                "umask 022 && mkdir -p {parent} && cat > {tmp} && chmod 755 {tmp} && {tmp} self-install {sha} {unpack} || {{ rm -f {tmp}; exit 1; }}",
                parent = shell_command(std::slice::from_ref(&parent)),
                tmp = shell_command(std::slice::from_ref(&tmp)),
                sha = agent.unpack.sha256,
                unpack = shell_command(std::slice::from_ref(&unpack)),
            );
            upload(session, &script, &agent.unpack.bytes, deadline).await?;
            sent += agent.unpack_size();
        }
        let script = format!(
            "umask 022 && mkdir -p {dir} && {unpack} {sha} {target}",
            dir = shell_command(std::slice::from_ref(&dir)),
            unpack = shell_command(std::slice::from_ref(&unpack)),
            sha = agent.sha256,
            target = shell_command(std::slice::from_ref(&remote.path)),
        );
        upload(session, &script, &agent.compressed, deadline).await?;
        sent += agent.compressed_size();
        Ok::<_, SessionError>(())
    }
    .await;
    match result {
        Ok(()) => Ok((remote, sent)),
        Err(err) => {
            remote.discard(session).await;
            Err(err)
        }
    }
}

/// A new temporary directory on the host for a dry run's agent (mode 0755, so that a
/// `become` user can run what it holds).
async fn scratch_dir(session: &Session, deadline: Duration) -> Result<String, SessionError> {
    let command = "d=$(mktemp -d \"${TMPDIR:-/tmp}/batou-dry-run.XXXXXX\") && chmod 755 \"$d\" && printf '%s\\n' \"$d\"";
    let output = within(deadline, session.raw_command(command).output())
        .await?
        .map_err(|source| SessionError::CannotCheck { source })?;
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || !dir.starts_with('/') {
        return Err(SessionError::CannotInstall {
            stderr: format!(
                "cannot create a temporary directory for the dry run's agent: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(dir)
}

/// Runs `script` on the host with `bytes` on its stdin; its stderr is the error when it
/// fails.
async fn upload(
    session: &Session,
    script: &str,
    bytes: &[u8],
    deadline: Duration,
) -> Result<(), SessionError> {
    let mut child = session
        .raw_command(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .await
        .map_err(|source| SessionError::CannotStartUpload { source })?;
    let upload = async {
        let mut stdin = child.stdin().take().expect("stdin is piped");
        let mut stderr = child.stderr().take().expect("stderr is piped");
        let errors = tokio::spawn(async move {
            let mut err = String::new();
            let _ = stderr.read_to_string(&mut err).await;
            err
        });
        // A program that fails early closes its stdin: its stderr says why, not the pipe.
        let written = async {
            stdin.write_all(bytes).await?;
            stdin.shutdown().await
        }
        .await;
        drop(stdin);
        let err = errors.await.unwrap_or_default();
        let status = child.wait().await.map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>((status, err, written))
    };
    let (status, stderr, written) = within(deadline, upload)
        .await?
        .map_err(|source| SessionError::CannotUpload { source })?;
    if !status.success() {
        return Err(SessionError::CannotInstall { stderr });
    }
    written.map_err(|source| SessionError::CannotUpload { source })
}

/// What an agent says while it runs the steps it was sent.
#[derive(Debug)]
pub enum StepMessage {
    /// Something happened in the running step.
    Event(Event),
    /// A step ended (the root component's name and how).
    Finished(String, RootOutcome),
}

/// A running agent session on one host.
pub struct AgentSession {
    child: Child<Arc<Session>>,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    timeout: Duration,
    stderr: StderrTail,
}

/// The last lines an agent wrote to stderr, read by a task of their own.
#[derive(Clone, Default)]
struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    closed: Arc<tokio::sync::Notify>,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl StderrTail {
    fn spawn(stderr: openssh::ChildStderr) -> Self {
        let tail = StderrTail::default();
        let keep = tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut kept = keep.lock();
                if kept.len() == STDERR_LINES {
                    kept.pop_front();
                }
                // Lines are bounded too: a runaway line must not grow the controller.
                // Masked before it is cut, so that no part of a secret survives.
                let line = batou_core::redact::mask(&line);
                kept.push_back(line.chars().take(STDERR_LINE_CHARS).collect());
            }
            keep.done.store(true, std::sync::atomic::Ordering::SeqCst);
            keep.closed.notify_waiters();
        });
        tail
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<String>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kept lines, once stderr is closed or a short grace has passed.
    async fn lines(&self) -> Vec<String> {
        let closed = self.closed.notified();
        tokio::pin!(closed);
        closed.as_mut().enable();
        if !self.done.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = tokio::time::timeout(STDERR_GRACE, closed).await;
        }
        self.lock().iter().cloned().collect()
    }

    async fn died(&self, source: Option<std::io::Error>) -> SessionError {
        SessionError::Died {
            source,
            stderr: self.lines().await,
        }
    }
}

impl AgentSession {
    /// Starts the agent, sends the job and waits until it holds the lock (when `purpose`
    /// needs it) and configured.
    pub async fn start(
        session: Arc<Session>,
        agent: &RemoteAgent,
        job: &HostJob,
        dry_run: bool,
        purpose: Purpose,
        controller: &Controller,
        timeout: Duration,
    ) -> Result<Self, SessionError> {
        let command = agent.session_command();
        let mut child = Session::to_raw_command(session, command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .await
            .map_err(|source| SessionError::CannotStart { source })?;
        let stdin = child.stdin().take().expect("stdin is piped");
        let stdout = child.stdout().take().expect("stdout is piped");
        let stderr = StderrTail::spawn(child.stderr().take().expect("stderr is piped"));
        let mut me = AgentSession {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            timeout,
            stderr,
        };
        let hello = match me.read().await {
            Err(SessionError::Died { source, stderr }) => {
                return Err(agent
                    .become_refused(&stderr)
                    .unwrap_or(SessionError::Died { source, stderr }));
            }
            other => other?,
        };
        match hello {
            FromAgent::Hello { protocol, .. } if protocol == PROTOCOL_VERSION => {}
            FromAgent::Hello { protocol, version } => {
                return Err(SessionError::ProtocolMismatch { version, protocol });
            }
            other => return Err(unexpected(other)),
        }
        me.send(&ToAgent::Start {
            protocol: PROTOCOL_VERSION,
            job: Box::new(job.clone()),
            dry_run,
            controller: controller.clone(),
            purpose,
        })
        .await?;
        match me.read().await? {
            FromAgent::Ready => Ok(me),
            FromAgent::Refused {
                reason: Refusal::LockHeld,
                message,
                holder,
            } => Err(SessionError::LockHeld { message, holder }),
            FromAgent::Refused {
                reason, message, ..
            } => Err(SessionError::Refused { reason, message }),
            other => Err(unexpected(other)),
        }
    }

    /// Runs one root component, passing its events to `on_event` as they arrive.
    pub async fn step(
        &mut self,
        root: &str,
        on_event: impl FnMut(Event),
    ) -> Result<RootOutcome, SessionError> {
        self.step_in_rollout(root, None, on_event).await
    }

    /// Runs one root component as part of a rollout: a rolled host's step in its batch, or
    /// the balancer's drain or undrain (see `batou_core::rollout::StepRollout`).
    pub async fn step_in_rollout(
        &mut self,
        root: &str,
        rollout: Option<batou_core::rollout::StepRollout>,
        mut on_event: impl FnMut(Event),
    ) -> Result<RootOutcome, SessionError> {
        self.send_step(root, rollout).await?;
        loop {
            match self.step_message().await? {
                StepMessage::Event(event) => on_event(event),
                StepMessage::Finished(_, outcome) => return Ok(outcome),
            }
        }
    }

    /// Sends a step without waiting for it: the agent runs the steps it receives in order.
    pub async fn send_step(
        &mut self,
        root: &str,
        rollout: Option<batou_core::rollout::StepRollout>,
    ) -> Result<(), SessionError> {
        self.send(&ToAgent::Step {
            root: root.to_string(),
            rollout,
        })
        .await
    }

    /// Drops the steps sent and not yet started: the agent answers them `not_attempted`.
    pub async fn cancel(&mut self) -> Result<(), SessionError> {
        self.send(&ToAgent::Cancel).await
    }

    /// The next message of the steps sent: an event, or the end of the oldest one.
    pub async fn step_message(&mut self) -> Result<StepMessage, SessionError> {
        match self.read().await? {
            FromAgent::Event { event } => Ok(StepMessage::Event(event)),
            FromAgent::StepFinished { root, outcome } => Ok(StepMessage::Finished(root, outcome)),
            FromAgent::Refused {
                reason, message, ..
            } => Err(SessionError::Refused { reason, message }),
            other => Err(unexpected(other)),
        }
    }

    /// Asks whether `roots` would change, as a dry run of them that reports nothing: the
    /// roots that would (or whose prediction failed).
    pub async fn predict(&mut self, roots: &[String]) -> Result<Vec<String>, SessionError> {
        self.send(&ToAgent::Predict {
            roots: roots.to_vec(),
        })
        .await?;
        match self.read().await? {
            FromAgent::Predicted { changed } => Ok(changed),
            FromAgent::Refused {
                reason, message, ..
            } => Err(SessionError::Refused { reason, message }),
            other => Err(unexpected(other)),
        }
    }

    /// Runs the session's `service` verb on the services of `roots`, passing their events
    /// to `on_event` as they arrive.
    pub async fn service(
        &mut self,
        roots: &[String],
        mut on_event: impl FnMut(Event),
    ) -> Result<Vec<ServiceOutcome>, SessionError> {
        self.send(&ToAgent::Service {
            roots: roots.to_vec(),
        })
        .await?;
        loop {
            match self.read().await? {
                FromAgent::Event { event } => on_event(event),
                FromAgent::ServiceFinished { outcomes } => return Ok(outcomes),
                FromAgent::Refused {
                    reason, message, ..
                } => return Err(SessionError::Refused { reason, message }),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Runs the session's `releases` or `rollback` verb on these release roots.
    pub async fn releases(
        &mut self,
        roots: &[String],
        to: Option<String>,
        mut on_event: impl FnMut(Event),
    ) -> Result<Vec<batou_core::ReleaseReport>, SessionError> {
        self.send(&ToAgent::Releases {
            roots: roots.to_vec(),
            to,
        })
        .await?;
        loop {
            match self.read().await? {
                FromAgent::Event { event } => on_event(event),
                FromAgent::ReleasesFinished { reports } => return Ok(reports),
                FromAgent::Refused {
                    reason, message, ..
                } => return Err(SessionError::Refused { reason, message }),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Reports the host's orphaned root components and, with `prune`, removes what they
    /// created, passing the `orphaned` and `pruned` events to `on_event`; returns what could
    /// not be removed (empty when all went well).
    pub async fn orphans(
        &mut self,
        prune: bool,
        mut on_event: impl FnMut(Event),
    ) -> Result<Vec<String>, SessionError> {
        self.send(&ToAgent::Orphans { prune }).await?;
        loop {
            match self.read().await? {
                FromAgent::Event { event } => on_event(event),
                FromAgent::OrphansFinished { failed, .. } => return Ok(failed),
                FromAgent::Refused {
                    reason, message, ..
                } => return Err(SessionError::Refused { reason, message }),
                other => return Err(unexpected(other)),
            }
        }
    }

    /// Sends `msg` (a `status`, `history`, `exec` or `lock` request), passing the events
    /// that come to `on_event` as they arrive, and returns the agent's answer: the first
    /// other message.
    pub async fn request(
        &mut self,
        msg: &ToAgent,
        mut on_event: impl FnMut(Event),
    ) -> Result<FromAgent, SessionError> {
        self.send(msg).await?;
        loop {
            match self.read().await? {
                FromAgent::Event { event } => on_event(event),
                FromAgent::Refused {
                    reason, message, ..
                } => return Err(SessionError::Refused { reason, message }),
                other => return Ok(other),
            }
        }
    }

    /// Ends the session: the agent writes its journal record and exits.
    pub async fn finish(mut self) -> Result<(), SessionError> {
        self.send(&ToAgent::Finish).await?;
        match self.read().await? {
            FromAgent::Finished => {}
            other => return Err(unexpected(other)),
        }
        drop(self.stdin);
        let _ = within(self.timeout, self.child.wait()).await;
        Ok(())
    }

    async fn send(&mut self, msg: &ToAgent) -> Result<(), SessionError> {
        let mut line = serde_json::to_string(msg).expect("protocol messages always serialize");
        line.push('\n');
        let write = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await
        };
        match within(self.timeout, write).await? {
            Ok(()) => Ok(()),
            Err(e) => Err(self.stderr.died(Some(e)).await),
        }
    }

    /// The next message that is not a heartbeat.
    async fn read(&mut self) -> Result<FromAgent, SessionError> {
        loop {
            let line = match within(self.timeout, self.lines.next_line()).await? {
                Ok(line) => line,
                Err(e) => return Err(self.stderr.died(Some(e)).await),
            };
            let Some(line) = line else {
                return Err(self.stderr.died(None).await);
            };
            match serde_json::from_str::<FromAgent>(&line) {
                Ok(FromAgent::Heartbeat) => continue,
                Ok(msg) => return Ok(msg),
                Err(source) => return Err(SessionError::BadMessage { source }),
            }
        }
    }
}

pub(crate) fn unexpected(message: FromAgent) -> SessionError {
    SessionError::Unexpected {
        message: Box::new(message),
    }
}

async fn within<T>(
    deadline: Duration,
    f: impl std::future::Future<Output = T>,
) -> Result<T, SessionError> {
    tokio::time::timeout(deadline, f)
        .await
        .map_err(|_| SessionError::Timeout { timeout: deadline })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_dead_agent_says_why_and_shows_its_last_stderr_lines() {
        let err = SessionError::Died {
            source: Some(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "broken pipe",
            )),
            stderr: vec!["noise 49".into(), "agent: out of cheese".into()],
        };
        assert_eq!(
            err.to_string(),
            "the agent ended unexpectedly: the host's state is unknown (broken pipe)\n\
             the agent's stderr (last lines):\n  noise 49\n  agent: out of cheese"
        );
        assert_eq!(
            err.source().map(|s| s.to_string()).as_deref(),
            Some("broken pipe")
        );
        let err = SessionError::Died {
            source: None,
            stderr: Vec::new(),
        };
        assert_eq!(
            err.to_string(),
            "the agent ended unexpectedly: the host's state is unknown"
        );
        assert!(err.source().is_none());
    }

    #[test]
    fn refusals_keep_the_agents_reason_and_holder() {
        let holder = Controller {
            user: "root".into(),
            host: "ops".into(),
            pid: 42,
            started: "2026-12-03T09:00:00Z".into(),
            commit: None,
        };
        let err = SessionError::LockHeld {
            message: vec![
                "host is locked by a deploy of root@ops (pid 42) since 2026-12-03T09:00:00Z".into(),
            ],
            holder: Some(holder.clone()),
        };
        assert_eq!(
            err.to_string(),
            "host is locked by a deploy of root@ops (pid 42) since 2026-12-03T09:00:00Z"
        );
        assert!(matches!(err, SessionError::LockHeld { holder: Some(h), .. } if h == holder));
        let err = SessionError::Refused {
            reason: Refusal::PlanMismatch,
            message: vec!["the plan does not match".into(), "step `app`".into()],
        };
        assert_eq!(
            err.to_string(),
            "the agent refused: the plan does not match: step `app`"
        );
    }

    #[test]
    fn the_other_failures_read_as_before() {
        let timeout = SessionError::Timeout {
            timeout: Duration::from_secs(60),
        };
        assert_eq!(
            timeout.to_string(),
            "no answer from the agent within 60s: the host's state is unknown"
        );
        let install = SessionError::CannotInstall {
            stderr: "\nsha256 mismatch\n".into(),
        };
        assert_eq!(
            install.to_string(),
            "cannot install the agent: sha256 mismatch"
        );
        let mismatch = SessionError::ProtocolMismatch {
            version: "0.0.1".into(),
            protocol: 0,
        };
        assert_eq!(
            mismatch.to_string(),
            format!(
                "the agent (version 0.0.1) speaks protocol 0, this controller {PROTOCOL_VERSION}"
            )
        );
        let unexpected = unexpected(FromAgent::Ready);
        assert_eq!(
            unexpected.to_string(),
            "unexpected `ready` message from the agent"
        );
        let source = serde_json::from_str::<FromAgent>("{").unwrap_err();
        let text = format!("cannot read the agent's message: {source}");
        assert_eq!(SessionError::BadMessage { source }.to_string(), text);
    }
}
