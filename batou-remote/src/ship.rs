//! Shipping release bundles into a host's store, while the host is prepared: after the
//! agent binary is there, before the agent session starts, never in a dry run.
//!
//! Each bundle of the host's job is shipped once, whatever number of components use it:
//! the agent binary says what the store holds (`bundle-check`, which hashes a present entry
//! and removes it when it does not match its digest), and only what is missing travels, raw
//! bytes on a channel of its own (`bundle-receive`), after the bytes that a partial upload
//! left. The agent binary verifies the SHA-256 before the bundle enters the store.

use std::time::Duration;

use batou_core::bundle::StoreState;
use batou_core::protocol::HostJob;
use batou_core::{Bundle, Event};
use openssh::{Session, Stdio};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::agent::{RemoteAgent, SessionError};

/// The distinct bundles of a job, by digest.
pub fn bundles(job: &HostJob) -> Vec<Bundle> {
    let mut out: Vec<Bundle> = Vec::new();
    for bundle in job.bundles.values() {
        if !bundle.is_unbuilt() && !out.iter().any(|b| b.digest == bundle.digest) {
            out.push(bundle.clone());
        }
    }
    out
}

/// Ships every bundle of `job` that the host's store lacks, reporting each upload (and
/// where it resumed) to `on_event`.
pub async fn ship_bundles(
    session: &Session,
    agent: &RemoteAgent,
    job: &HostJob,
    deadline: Duration,
    on_event: &impl Fn(Event),
) -> Result<(), SessionError> {
    let host = &job.host.name;
    let say = |detail: bool, message: String| {
        on_event(if detail {
            Event::Detail {
                host: host.clone(),
                component: String::new(),
                message,
            }
        } else {
            Event::Log {
                host: host.clone(),
                component: String::new(),
                message,
            }
        })
    };
    for bundle in bundles(job) {
        let failed = |message: String| SessionError::Bundle {
            digest: bundle.short_digest().to_string(),
            message,
        };
        let from = match check(session, agent, job, &bundle, deadline).await? {
            StoreState::Present => {
                say(
                    true,
                    format!("bundle {} is on the host already", bundle.short_digest()),
                );
                continue;
            }
            StoreState::Partial { bytes } if bytes <= bundle.size => bytes,
            StoreState::Corrupt => {
                say(
                    false,
                    format!(
                        "bundle {} in the host's store did not match its digest: removed, uploading it again",
                        bundle.short_digest()
                    ),
                );
                0
            }
            StoreState::Partial { .. } | StoreState::Missing => 0,
        };
        let sent = within(deadline, send(session, agent, job, &bundle, from))
            .await?
            .map_err(failed)?;
        say(
            false,
            if from > 0 {
                format!(
                    "bundle {} uploaded: {sent} bytes (resumed at {from} bytes)",
                    bundle.short_digest()
                )
            } else {
                format!("bundle {} uploaded: {sent} bytes", bundle.short_digest())
            },
        );
    }
    Ok(())
}

async fn check(
    session: &Session,
    agent: &RemoteAgent,
    job: &HostJob,
    bundle: &Bundle,
    deadline: Duration,
) -> Result<StoreState, SessionError> {
    let command = agent.command(&["bundle-check", &job.base_dir, &bundle.digest]);
    let output = within(deadline, session.raw_command(&command).output())
        .await?
        .map_err(|source| SessionError::Bundle {
            digest: bundle.short_digest().to_string(),
            message: format!("cannot ask the host's store: {source}"),
        })?;
    if !output.status.success() {
        return Err(SessionError::Bundle {
            digest: bundle.short_digest().to_string(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    serde_json::from_slice(&output.stdout).map_err(|e| SessionError::Bundle {
        digest: bundle.short_digest().to_string(),
        message: format!("cannot read what the host's store holds: {e}"),
    })
}

/// Sends the archive from byte `from` to `bundle-receive`; the bytes sent.
async fn send(
    session: &Session,
    agent: &RemoteAgent,
    job: &HostJob,
    bundle: &Bundle,
    from: u64,
) -> Result<u64, String> {
    let size = bundle.size.to_string();
    let command = agent.command(&["bundle-receive", &job.base_dir, &bundle.digest, &size]);
    let mut child = session
        .raw_command(&command)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .await
        .map_err(|e| format!("cannot start the upload: {e}"))?;
    let mut stdin = child.stdin().take().expect("stdin is piped");
    let mut stderr = child.stderr().take().expect("stderr is piped");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let copy = async {
        let mut file = tokio::fs::File::open(&bundle.archive).await?;
        file.seek(std::io::SeekFrom::Start(from)).await?;
        let sent = tokio::io::copy(&mut file, &mut stdin).await?;
        stdin.shutdown().await?;
        Ok::<_, std::io::Error>(sent)
    };
    let copied = copy.await;
    drop(stdin);
    let status = child.wait().await;
    let errors = errors.await.unwrap_or_default();
    let errors = errors.trim();
    match (copied, status) {
        (Ok(sent), Ok(status)) if status.success() => Ok(sent),
        (Err(e), _) => Err(format!("the upload broke off: {e} {errors}")
            .trim()
            .to_string()),
        (_, Err(e)) => Err(format!("the upload broke off: {e} {errors}")
            .trim()
            .to_string()),
        (Ok(_), Ok(_)) => Err(if errors.is_empty() {
            "the host did not take the bundle".to_string()
        } else {
            errors.to_string()
        }),
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
