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
    Controller, FromAgent, HostJob, PROTOCOL_VERSION, Purpose, Refusal, ToAgent,
};
use batou_core::{Event, RootOutcome, ServiceOutcome};
use openssh::{Child, ChildStdin, ChildStdout, Session};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};

use crate::ssh::{Word, shell_command};

/// Where agents are cached on hosts, below `$HOME`.
const AGENT_CACHE: &str = ".cache/batou/agents";

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

/// The local agent binary and its content address.
#[derive(Debug, Clone)]
pub struct AgentBinary {
    /// Where the binary is on this machine.
    pub path: std::path::PathBuf,
    /// Its SHA-256, hex: its name in a host's agent cache.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

impl AgentBinary {
    /// Hashes the binary at `path`.
    pub fn new(path: &Path) -> anyhow::Result<Self> {
        Ok(AgentBinary {
            sha256: batou_runtime::agent::sha256_file(path)?,
            size: std::fs::metadata(path)?.len(),
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn remote(&self) -> Word {
        Word::Home(format!("{AGENT_CACHE}/{}", self.sha256))
    }
}

/// Makes sure the host has the agent; returns whether it had to be uploaded.
///
/// The upload goes to a temporary file that the uploaded binary itself verifies (sha256),
/// syncs and renames into place, so a partial or corrupt upload is never used.
pub async fn ensure_agent(
    session: &Session,
    agent: &AgentBinary,
    deadline: Duration,
) -> Result<bool, SessionError> {
    let check = shell_command(&[
        Word::Literal("test".into()),
        Word::Literal("-x".into()),
        agent.remote(),
    ]);
    let status = within(deadline, session.raw_command(&check).status())
        .await?
        .map_err(|source| SessionError::CannotCheck { source })?;
    if status.success() {
        return Ok(false);
    }
    let tmp = Word::Home(format!(
        "{AGENT_CACHE}/.{}.{}.tmp",
        agent.sha256,
        std::process::id()
    ));
    let script = format!(
        "umask 077 && mkdir -p {dir} && cat > {tmp} && chmod 700 {tmp} && {install} || {{ rm -f {tmp}; exit 1; }}",
        dir = shell_command(&[Word::Home(AGENT_CACHE.into())]),
        tmp = shell_command(std::slice::from_ref(&tmp)),
        install = shell_command(&[
            tmp.clone(),
            Word::Literal("agent-install".into()),
            Word::Literal(agent.sha256.clone()),
            agent.remote(),
        ]),
    );
    let mut child = session
        .raw_command(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .await
        .map_err(|source| SessionError::CannotStartUpload { source })?;
    let upload = async {
        let mut stdin = child.stdin().take().expect("stdin is piped");
        let mut file = tokio::fs::File::open(&agent.path).await?;
        tokio::io::copy(&mut file, &mut stdin).await?;
        stdin.shutdown().await?;
        drop(stdin);
        let mut err = String::new();
        if let Some(mut stderr) = child.stderr().take() {
            stderr.read_to_string(&mut err).await?;
        }
        let status = child.wait().await.map_err(std::io::Error::other)?;
        Ok::<_, std::io::Error>((status, err))
    };
    let (status, stderr) = within(deadline, upload)
        .await?
        .map_err(|source| SessionError::CannotUpload { source })?;
    if !status.success() {
        return Err(SessionError::CannotInstall { stderr });
    }
    Ok(true)
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
        agent: &AgentBinary,
        job: &HostJob,
        dry_run: bool,
        purpose: Purpose,
        controller: &Controller,
        timeout: Duration,
    ) -> Result<Self, SessionError> {
        let command = shell_command(&[agent.remote(), Word::Literal("agent".into())]);
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
        match me.read().await? {
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
        self.send(&ToAgent::Step {
            root: root.to_string(),
            rollout,
        })
        .await?;
        loop {
            match self.read().await? {
                FromAgent::Event { event } => on_event(event),
                FromAgent::StepFinished { outcome, .. } => return Ok(outcome),
                FromAgent::Refused {
                    reason, message, ..
                } => return Err(SessionError::Refused { reason, message }),
                other => return Err(unexpected(other)),
            }
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
