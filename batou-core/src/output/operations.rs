//! The human lines of the operator's verbs: `status` (`host_state`), `history` (`deploy`),
//! `exec` (`output`, `exec_finished`) and `lock` (`lock`). Each function returns the text
//! without the host prefix, which the renderer adds.

use crate::operations::{ExecResult, HostState, LockOutcome, LockReport, LockVerb};
use crate::protocol::Controller;
use crate::{ServiceResult, operations::HostDeploy};

/// A holder of the host's lock, as people read it.
fn holder_text(holder: &Controller) -> String {
    format!(
        "{}@{} (pid {}) since {}",
        holder.user, holder.host, holder.pid, holder.started
    )
}

/// The lines of a host's `status`.
pub(super) fn state_text(state: &HostState) -> String {
    let mut lines = Vec::new();
    match &state.freeze {
        Some(freeze) => lines.push(format!("frozen by {}", freeze.describe())),
        None => lines.push("not frozen".to_string()),
    }
    if let Some(holder) = &state.holder {
        lines.push(format!("locked now by {}", holder_text(holder)));
    }
    match &state.last_deploy {
        Some(d) => lines.push(format!("last deploy: {}", deploy_text(d))),
        None => lines.push("last deploy: none in the journal".to_string()),
    }
    for outcome in &state.services {
        let text = match &outcome.result {
            ServiceResult::Status { status } if status.running => {
                let pid = status.pid.map(|p| format!(", pid {p}")).unwrap_or_default();
                format!("running ({}{pid})", status.manager)
            }
            ServiceResult::Status { status } => format!("not running ({})", status.manager),
            ServiceResult::Failed { error } => format!("unknown: {}", error.join(": ")),
            ServiceResult::Changed { action } => action.clone(),
            ServiceResult::Unchanged => "unchanged".to_string(),
        };
        lines.push(format!("service {}: {text}", outcome.component));
    }
    for r in &state.releases {
        lines.push(format!(
            "release {}: current {} ({} kept)",
            r.root,
            r.current.as_deref().unwrap_or("none"),
            r.releases
        ));
    }
    let drift = &state.drift;
    let mut text = if drift.roots.is_empty() {
        format!("drift: none ({} root components up to date)", drift.of)
    } else {
        format!(
            "drift: {} of {} root components would change ({}; {} components)",
            drift.roots.len(),
            drift.of,
            drift.roots.join(", "),
            drift.components
        )
    };
    for (root, error) in &drift.failed {
        text.push_str(&format!("\ndrift of {root} unknown: {}", error.join(": ")));
    }
    lines.push(text);
    lines.join("\n")
}

/// One host's deploy: `2026-12-03T10:00:00Z by alice@laptop, commit abc: success, changed app`.
pub(super) fn deploy_text(d: &HostDeploy) -> String {
    let commit = d
        .commit
        .as_deref()
        .map(|c| format!(", commit {}", short(c)))
        .unwrap_or_default();
    let result = match (&d.result, &d.error) {
        (_, Some(error)) => format!("aborted ({})", error.join(": ")),
        (Some(result), None) => serde_json::to_value(result)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
            .replace('_', " "),
        (None, None) => "unfinished".to_string(),
    };
    let changed = if d.changed.is_empty() {
        String::new()
    } else {
        format!(", changed {}", d.changed.join(", "))
    };
    format!(
        "{} by {}@{}{commit}: {result}{changed}",
        d.started, d.user, d.controller_host
    )
}

/// A commit as people read it: the first 12 hex digits, and `-dirty` if so.
fn short(commit: &str) -> String {
    let (hash, dirty) = match commit.strip_suffix("-dirty") {
        Some(hash) => (hash, "-dirty"),
        None => (commit, ""),
    };
    format!("{}{dirty}", &hash[..hash.len().min(12)])
}

/// One line of `history`: when, who, commit, result, hosts and what changed.
pub(super) fn history_text(
    started: &str,
    user: &str,
    controller_host: &str,
    commit: Option<&str>,
    result: &str,
    hosts: &[HostDeploy],
    changed: &[String],
) -> String {
    let names: Vec<&str> = hosts.iter().map(|h| h.host.as_str()).collect();
    let commit = commit.map(short).unwrap_or_else(|| "-".to_string());
    let changed = if changed.is_empty() {
        "nothing changed".to_string()
    } else {
        format!("changed {}", changed.join(", "))
    };
    format!(
        "{started}  {user}@{controller_host}  {commit}  {}  {}: {changed}",
        result.replace('_', " "),
        names.join(", ")
    )
}

/// How a program of `exec` ended on a host.
pub(super) fn exec_text(result: &ExecResult) -> String {
    format!("{} in {:.2} s", result.describe(), result.seconds)
}

/// A host's line after a `lock` verb.
pub(super) fn lock_text(verb: LockVerb, report: &LockReport) -> String {
    let freeze = report.freeze.as_ref().map(|f| f.describe());
    let mut text = match (verb, report.outcome, freeze) {
        (_, LockOutcome::Acquired, Some(f)) => format!("frozen by {f}"),
        (_, LockOutcome::Released, Some(f)) => format!("thawed (was frozen by {f})"),
        (_, LockOutcome::Held, Some(f)) => format!("already frozen by {f}"),
        (LockVerb::Release, LockOutcome::Unchanged, None) => {
            "not frozen (nothing to release)".into()
        }
        (_, _, Some(f)) => format!("frozen by {f}"),
        (_, _, None) => "not frozen".into(),
    };
    if let Some(holder) = &report.holder {
        text.push_str(&format!("; locked now by {}", holder_text(holder)));
    }
    text
}
