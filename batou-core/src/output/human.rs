//! The human renderer: host-prefixed lines on stderr and the final summary.

use std::io::Write;

use anstyle::{AnsiColor, Style};

use super::{HumanOptions, Verbosity};
use crate::{Event, EventSink, RootOutcome, ServiceOutcome, ServiceResult, ServiceVerb};

/// Renders events as human-readable, host-prefixed lines.
pub struct HumanOutput<W: Write> {
    out: W,
    options: HumanOptions,
}

impl<W: Write> HumanOutput<W> {
    /// Writes to `out` (normally stderr) with the default options: today's output.
    pub fn new(out: W) -> Self {
        HumanOutput::with_options(out, HumanOptions::default())
    }

    /// Writes to `out` with colour, verbosity and diffs as `options` say.
    pub fn with_options(out: W, options: HumanOptions) -> Self {
        HumanOutput { out, options }
    }

    /// The writer, for a live line drawn between events ([`super::ProgressOutput`]).
    pub(crate) fn writer(&mut self) -> &mut W {
        &mut self.out
    }

    /// Whether this output colours.
    pub(crate) fn color(&self) -> bool {
        self.options.color
    }

    fn lines(&mut self, host: &str, text: &str) {
        for line in text.lines() {
            let _ = writeln!(self.out, "{host}: {line}");
        }
    }
}

impl<W: Write> EventSink for HumanOutput<W> {
    fn event(&mut self, event: Event) {
        // Rendered whole, then masked: no secret value reaches the terminal, whichever
        // field of the event carried it.
        let mut rendered = HumanOutput {
            out: Vec::new(),
            options: self.options,
        };
        rendered.render(event);
        let text = String::from_utf8_lossy(&rendered.out);
        let _ = self.out.write_all(crate::redact::mask(&text).as_bytes());
        let _ = self.out.flush();
    }
}

/// The colours of outcomes and diffs, after the conventions of Ansible and cargo.
const CHANGED: Style = AnsiColor::Yellow.on_default();
const WOULD_CHANGE: Style = AnsiColor::Cyan.on_default();
const UNCHANGED: Style = AnsiColor::Green.on_default();
const FAILED: Style = AnsiColor::Red.on_default().bold();
const DIFF_ADDED: Style = AnsiColor::Green.on_default();
const DIFF_REMOVED: Style = AnsiColor::Red.on_default();
const DIFF_HUNK: Style = AnsiColor::Cyan.on_default();
const DIFF_HEADER: Style = Style::new().bold();
const DIM: Style = Style::new().dimmed();

/// The style of a summary status.
fn status_style(status: &str) -> Style {
    match status {
        "changed" => CHANGED,
        "unchanged" => UNCHANGED,
        "skipped" | "not attempted" => DIM,
        _ => FAILED,
    }
}

/// Whether `event` is shown at `verbosity`: `-q` keeps failures and the summary.
fn shown(event: &Event, verbosity: Verbosity) -> bool {
    match event {
        Event::HostStarted { .. } | Event::StepStarted { .. } | Event::Detail { .. } => {
            verbosity >= Verbosity::Debug
        }
        Event::StepFinished { .. } => verbosity >= Verbosity::Verbose,
        Event::Failed { .. }
        | Event::HostFailed { .. }
        | Event::Interrupted { .. }
        | Event::RolloutStopped { .. }
        | Event::RunFinished { .. } => true,
        Event::Service { outcome, .. } => {
            verbosity > Verbosity::Quiet || matches!(outcome.result, ServiceResult::Failed { .. })
        }
        Event::Changed { .. }
        | Event::Diff { .. }
        | Event::Log { .. }
        | Event::AgentUploaded { .. }
        | Event::Skipped { .. }
        | Event::HostFinished { .. }
        | Event::RolloutBatch { .. }
        | Event::RolloutHook { .. }
        | Event::Orphaned { .. }
        | Event::HostOrphaned { .. } => verbosity > Verbosity::Quiet,
        Event::Pruned { action, .. } => {
            verbosity > Verbosity::Quiet || *action == crate::inventory::PruneAction::Failed
        }
        Event::ExecFinished { .. } => verbosity > Verbosity::Quiet,
        // What the operator's verbs were asked for.
        Event::Output { .. }
        | Event::HostState { .. }
        | Event::Deploy { .. }
        | Event::Lock { .. } => true,
    }
}

impl HumanOutput<Vec<u8>> {
    /// `text` in `style` when colouring.
    fn paint(&self, style: Style, text: &str) -> String {
        if self.options.color {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_string()
        }
    }

    /// A diff's lines, indented, coloured and cut as the options say.
    fn diff_text(&self, diff: &str) -> String {
        let total = diff.lines().count();
        let keep = self.options.diff_lines.unwrap_or(usize::MAX);
        let mut text = String::new();
        for line in diff.lines().take(keep) {
            let style = if line.starts_with("+++") || line.starts_with("---") {
                DIFF_HEADER
            } else if line.starts_with('+') {
                DIFF_ADDED
            } else if line.starts_with('-') {
                DIFF_REMOVED
            } else if line.starts_with("@@") {
                DIFF_HUNK
            } else {
                Style::new()
            };
            text.push_str(&format!("    {}\n", self.paint(style, line)));
        }
        if total > keep {
            let more = total - keep;
            let noun = if more == 1 { "line" } else { "lines" };
            text.push_str(&format!(
                "    {}\n",
                self.paint(DIM, &format!("… {more} more {noun}"))
            ));
        }
        text
    }

    fn render(&mut self, event: Event) {
        if !shown(&event, self.options.verbosity) {
            return;
        }
        match event {
            Event::HostStarted {
                host,
                environment,
                dry_run,
            } => {
                let how = if dry_run { " (dry run)" } else { "" };
                self.lines(
                    &host,
                    &format!("converging environment `{environment}`{how}"),
                );
            }
            Event::StepStarted { host, component } => {
                let text = format!("{} {component}", self.paint(DIM, "starting"));
                self.lines(&host, &text);
            }
            Event::StepFinished {
                host,
                component,
                outcome,
                dry_run,
                seconds,
            } => {
                let (word, style) = match outcome {
                    RootOutcome::Changed if dry_run => ("would change", WOULD_CHANGE),
                    RootOutcome::Changed => ("changed", CHANGED),
                    RootOutcome::Unchanged => ("unchanged", UNCHANGED),
                    RootOutcome::Failed => ("failed", FAILED),
                    RootOutcome::NotAttempted => ("not attempted", DIM),
                };
                let text = format!("{} {component} in {seconds:.2} s", self.paint(style, word));
                self.lines(&host, &text);
            }
            Event::RunFinished { hosts, seconds } => {
                let width = hosts.iter().map(|h| h.host.len()).max().unwrap_or(0);
                let _ = writeln!(self.out, "summary:");
                let mut counts: Vec<(String, usize)> = Vec::new();
                for h in &hosts {
                    let status = h.status.as_str().replace('_', " ");
                    // A detail of several lines (an ssh error, an agent's stderr) keeps the
                    // host on each of its lines.
                    let mut lines = h.detail.lines();
                    let first = lines.next().unwrap_or_default();
                    let padded = format!("{status:16}");
                    let painted = padded.replacen(
                        status.as_str(),
                        &self.paint(status_style(&status), &status),
                        1,
                    );
                    let row = format!("  {:width$}  {painted} {}", h.host, first);
                    let _ = writeln!(self.out, "{}", row.trim_end());
                    for line in lines {
                        let row = format!("  {:width$}  {:16} {}", h.host, "", line);
                        let _ = writeln!(self.out, "{}", row.trim_end());
                    }
                    match counts.iter_mut().find(|(s, _)| *s == status) {
                        Some((_, n)) => *n += 1,
                        None => counts.push((status, 1)),
                    }
                }
                for status in ["changed", "unchanged", "failed"] {
                    if !counts.iter().any(|(s, _)| s == status) {
                        counts.push((status.to_string(), 0));
                    }
                }
                let order = |s: &str| {
                    ["changed", "unchanged", "failed"]
                        .iter()
                        .position(|x| *x == s)
                        .unwrap_or(3)
                };
                counts.sort_by_key(|(s, _)| order(s));
                let parts: Vec<String> = counts
                    .iter()
                    .map(|(s, n)| {
                        let part = format!("{n} {s}");
                        if *n > 0 {
                            self.paint(status_style(s), &part)
                        } else {
                            part
                        }
                    })
                    .collect();
                let noun = if hosts.len() == 1 { "host" } else { "hosts" };
                let _ = writeln!(
                    self.out,
                    "{} {noun}: {} in {seconds:.2} s",
                    hosts.len(),
                    parts.join(", ")
                );
            }
            Event::RolloutBatch {
                batch,
                batches,
                hosts,
                failed,
                max_failed,
            } => {
                let left = max_failed.saturating_sub(failed);
                let noun = if left == 1 { "failure" } else { "failures" };
                let _ = writeln!(
                    self.out,
                    "rollout: batch {batch}/{batches}: {} ({failed} failed so far, {left} more {noun} allowed)",
                    hosts.join(", ")
                );
            }
            Event::RolloutHook {
                host,
                component,
                batch,
                hook,
                targets,
                in_rotation,
            } => {
                let rotation = if in_rotation.is_empty() {
                    "none".to_string()
                } else {
                    in_rotation.join(", ")
                };
                let text = format!(
                    "{component}: {} batch {batch}: {} (in rotation: {rotation})",
                    hook.as_str(),
                    targets.join(", ")
                );
                self.lines(&host, &text);
            }
            Event::RolloutStopped {
                batch,
                batches,
                failed,
                max_failed,
                not_attempted,
                reason,
            } => {
                let _ = writeln!(
                    self.out,
                    "{} after batch {batch}/{batches}: {reason}",
                    self.paint(FAILED, "rollout stopped")
                );
                if !failed.is_empty() {
                    let _ = writeln!(
                        self.out,
                        "  failed: {} (`max_failed` allows {max_failed})",
                        failed.join(", ")
                    );
                }
                if !not_attempted.is_empty() {
                    let _ = writeln!(self.out, "  not attempted: {}", not_attempted.join(", "));
                }
            }
            Event::AgentUploaded { host, bytes } => {
                self.lines(
                    &host,
                    &format!("uploaded the agent ({:.1} MB)", bytes as f64 / 1e6),
                );
            }
            Event::Skipped {
                host,
                component,
                reason,
            } => {
                let text = format!("{} {component}: {reason}", self.paint(DIM, "skipped"));
                self.lines(&host, &text);
            }
            Event::Interrupted { host, not_started } => self.lines(
                &host,
                &format!("interrupted: not started: {}", not_started.join(", ")),
            ),
            Event::HostFailed {
                host,
                status,
                error,
            } => {
                let text = format!(
                    "{}\n{}",
                    self.paint(FAILED, &status.as_str().replace('_', " ")),
                    chain_text(&error)
                );
                self.lines(&host, &text);
            }
            Event::Changed {
                host,
                component,
                reason,
                dry_run,
            } => {
                let verb = if dry_run {
                    self.paint(WOULD_CHANGE, "would change")
                } else {
                    self.paint(CHANGED, "changed")
                };
                self.lines(&host, &format!("{verb} {component} ({reason})"));
            }
            Event::Diff { host, diff, .. } => {
                if self.options.diff {
                    let text = self.diff_text(&diff);
                    self.lines(&host, &text);
                }
            }
            Event::Log {
                host,
                component,
                message,
            } => self.lines(&host, &format!("{component}: {message}")),
            Event::Detail {
                host,
                component,
                message,
            } => {
                let line = if component.is_empty() {
                    message
                } else {
                    format!("{component}: {message}")
                };
                self.lines(&host, &line);
            }
            Event::Failed {
                host,
                component,
                error,
            } => {
                let text = format!(
                    "{} {component}\n{}",
                    self.paint(FAILED, "failed"),
                    chain_text(&error)
                );
                self.lines(&host, &text);
            }
            Event::Service {
                host,
                verb,
                outcome,
            } => {
                let text = service_text(verb, &outcome, |style, text| self.paint(style, text));
                self.lines(&host, &text);
            }
            Event::HostFinished {
                host,
                dry_run,
                changed,
                unchanged,
                failed,
                not_attempted,
                seconds,
            } => {
                let verb = if dry_run { "would change" } else { "changed" };
                let mut parts = vec![format!("{} {verb}", changed.len())];
                parts.push(format!("{} unchanged", unchanged.len()));
                parts.push(format!("{} failed", failed.len()));
                if !not_attempted.is_empty() {
                    parts.push(format!(
                        "{} not attempted ({})",
                        not_attempted.len(),
                        not_attempted.join(", ")
                    ));
                }
                self.lines(
                    &host,
                    &format!("root components: {} in {seconds:.2} s", parts.join(", ")),
                );
            }
            Event::Orphaned {
                host,
                component,
                created,
                prune,
                dry_run,
            } => {
                let what = crate::inventory::describe_counts(&created);
                let then = match (prune, dry_run) {
                    (true, true) => "a prune would remove what it created",
                    (true, false) => "pruning what it created",
                    (false, _) => "nothing about it changes; `--prune` removes what it created",
                };
                let text = format!(
                    "{} `{component}` on {host}, {what} (not in the environment any more): {then}",
                    self.paint(WOULD_CHANGE, "orphaned:")
                );
                self.lines(&host, &text);
            }
            Event::Pruned {
                host,
                component,
                item,
                action,
                reason,
                dry_run,
            } => {
                use crate::inventory::PruneAction;
                let verb = match (action, dry_run) {
                    (PruneAction::Removed, true) => self.paint(WOULD_CHANGE, "would remove"),
                    (PruneAction::Removed, false) => self.paint(CHANGED, "removed"),
                    (PruneAction::Kept, true) => self.paint(DIM, "would keep"),
                    (PruneAction::Kept, false) => self.paint(DIM, "kept"),
                    (PruneAction::Failed, _) => self.paint(FAILED, "cannot remove"),
                };
                let why = reason.map(|r| format!(" ({r})")).unwrap_or_default();
                self.lines(&host, &format!("{verb} {component}: {item}{why}"));
            }
            Event::HostOrphaned { host, prune } => {
                let then = if prune {
                    "pruning what the environment created there"
                } else {
                    "it is not contacted and nothing on it changes; `--prune` removes what the environment created there"
                };
                let text = format!(
                    "{} host `{host}` is not in the environment any more: {then}",
                    self.paint(WOULD_CHANGE, "orphaned:")
                );
                self.lines(&host, &text);
            }
            Event::Output { host, line, .. } => self.lines(&host, &line),
            Event::ExecFinished { host, result } => {
                let style = if result.succeeded() {
                    UNCHANGED
                } else {
                    FAILED
                };
                let text = self.paint(style, &super::operations::exec_text(&result));
                self.lines(&host, &text);
            }
            Event::HostState { host, state } => {
                self.lines(&host, &super::operations::state_text(&state));
            }
            Event::Deploy {
                started,
                user,
                controller_host,
                commit,
                result,
                hosts,
                changed,
            } => {
                let line = super::operations::history_text(
                    &started,
                    &user,
                    &controller_host,
                    commit.as_deref(),
                    &result,
                    &hosts,
                    &changed,
                );
                let _ = writeln!(self.out, "{line}");
            }
            Event::Lock { host, verb, report } => {
                self.lines(&host, &super::operations::lock_text(verb, &report));
            }
        }
        let _ = self.out.flush();
    }
}

/// One service's line (or lines, for a failure) after a `service` verb.
fn service_text(
    verb: ServiceVerb,
    outcome: &ServiceOutcome,
    paint: impl Fn(Style, &str) -> String,
) -> String {
    let component = &outcome.component;
    match &outcome.result {
        ServiceResult::Status { status } => {
            let mut facts = vec![status.manager.clone()];
            if let Some(pid) = status.pid {
                facts.push(format!("pid {pid}"));
            }
            if let Some(seconds) = status.uptime_seconds {
                let state = if status.running { "up" } else { "down" };
                facts.push(format!("{state} {}", duration_text(seconds)));
            }
            if let Some(restarts) = status.restarts {
                let noun = if restarts == 1 { "restart" } else { "restarts" };
                facts.push(format!("{restarts} {noun}"));
            }
            if let Some(detail) = &status.detail {
                facts.push(detail.clone());
            }
            let state = if status.running {
                paint(UNCHANGED, "running")
            } else {
                paint(FAILED, "not running")
            };
            format!("{component}: {state} ({})", facts.join(", "))
        }
        ServiceResult::Changed { action } => format!("{} {component}", paint(CHANGED, action)),
        ServiceResult::Unchanged => {
            let why = match verb {
                ServiceVerb::Start => " (already running)",
                ServiceVerb::Stop => " (already stopped)",
                ServiceVerb::Status | ServiceVerb::Restart => "",
            };
            format!("{} {component}{why}", paint(UNCHANGED, "unchanged"))
        }
        ServiceResult::Failed { error } => {
            format!(
                "{} {component} ({})\n{}",
                paint(FAILED, "failed"),
                verb.as_str(),
                chain_text(error)
            )
        }
    }
}

/// Seconds for people: `42 s`, `3 min 5 s`, `2 h 10 min`, `4 d 3 h`.
fn duration_text(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {s} s")
    } else {
        format!("{s} s")
    }
}

/// An error chain as indented `error:` / `caused by:` lines.
fn chain_text(error: &[String]) -> String {
    let mut text = String::new();
    for (i, cause) in error.iter().enumerate() {
        let label = if i == 0 { "error" } else { "caused by" };
        for (n, line) in cause.lines().enumerate() {
            if n == 0 {
                text.push_str(&format!("  {label}: {line}\n"));
            } else {
                text.push_str(&format!("    {line}\n"));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::HumanOptions;
    use crate::{HostStatus, HostSummary};

    fn render(events: Vec<Event>) -> String {
        let mut buf = Vec::new();
        let mut out = HumanOutput::new(&mut buf);
        for e in events {
            out.event(e);
        }
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn every_line_has_the_host_prefix() {
        let text = render(vec![
            Event::Changed {
                host: "web1".into(),
                component: "app > File('a')".into(),
                reason: "missing".into(),
                dry_run: false,
            },
            Event::Diff {
                host: "web1".into(),
                component: "app > File('a')".into(),
                diff: "--- a\n+++ a\n+x\n".into(),
            },
            Event::Failed {
                host: "web1".into(),
                component: "app".into(),
                error: vec!["boom\nsecond line".into(), "cause".into()],
            },
        ]);
        for line in text.lines() {
            assert!(line.starts_with("web1: "), "{line:?}");
        }
        assert!(
            text.contains("web1: changed app > File('a') (missing)\n"),
            "{text}"
        );
        assert!(text.contains("web1:     +x\n"), "{text}");
        assert!(
            text.contains("web1:   error: boom\nweb1:     second line\nweb1:   caused by: cause\n"),
            "{text}"
        );
    }

    #[test]
    fn colour_marks_outcomes_and_diff_lines_and_quiet_keeps_failures() {
        let events = || {
            vec![
                Event::Changed {
                    host: "web1".into(),
                    component: "app".into(),
                    reason: "missing".into(),
                    dry_run: false,
                },
                Event::Diff {
                    host: "web1".into(),
                    component: "app".into(),
                    diff: "@@ -1 +1 @@\n-old\n+new\n".into(),
                },
                Event::Failed {
                    host: "web1".into(),
                    component: "db".into(),
                    error: vec!["boom".into()],
                },
                Event::Service {
                    host: "web1".into(),
                    verb: ServiceVerb::Start,
                    outcome: ServiceOutcome {
                        root: "web".into(),
                        component: "web".into(),
                        result: ServiceResult::Unchanged,
                    },
                },
            ]
        };
        let render_with = |options: HumanOptions| {
            let mut buf = Vec::new();
            let mut out = HumanOutput::with_options(&mut buf, options);
            for e in events() {
                out.event(e);
            }
            String::from_utf8(buf).unwrap()
        };
        let text = render_with(HumanOptions {
            color: true,
            ..HumanOptions::default()
        });
        assert_eq!(
            text,
            "web1: \x1b[33mchanged\x1b[0m app (missing)\n\
             web1:     \x1b[36m@@ -1 +1 @@\x1b[0m\n\
             web1:     \x1b[31m-old\x1b[0m\n\
             web1:     \x1b[32m+new\x1b[0m\n\
             web1: \x1b[1m\x1b[31mfailed\x1b[0m db\n\
             web1:   error: boom\n\
             web1: \x1b[32munchanged\x1b[0m web (already running)\n"
        );
        let quiet = render_with(HumanOptions {
            verbosity: Verbosity::Quiet,
            ..HumanOptions::default()
        });
        assert_eq!(quiet, "web1: failed db\nweb1:   error: boom\n");
    }

    #[test]
    fn every_line_of_a_summary_detail_names_its_host() {
        let text = render(vec![
            Event::HostFailed {
                host: "db1".into(),
                status: HostStatus::Unreachable,
                error: vec!["unreachable: ssh: connect to host\nsecond line of ssh".into()],
            },
            Event::RunFinished {
                hosts: vec![
                    HostSummary {
                        host: "db1".into(),
                        status: HostStatus::Unreachable,
                        detail: "unreachable: first\nsecond line of ssh\n".into(),
                    },
                    HostSummary {
                        host: "web10".into(),
                        status: HostStatus::Unchanged,
                        detail: String::new(),
                    },
                ],
                seconds: 1.0,
            },
        ]);
        let mut lines = text.lines();
        for line in lines.by_ref().take(3) {
            assert!(line.starts_with("db1: "), "{line:?}\n{text}");
        }
        assert_eq!(lines.next(), Some("summary:"), "{text}");
        assert_eq!(
            lines.next(),
            Some("  db1    unreachable      unreachable: first")
        );
        assert_eq!(
            lines.next(),
            Some("  db1                     second line of ssh")
        );
        assert_eq!(lines.next(), Some("  web10  unchanged"));
    }

    #[test]
    fn service_verbs_say_what_they_found_and_did() {
        let outcome = |result| ServiceOutcome {
            root: "web".into(),
            component: "web > Service('web')".into(),
            result,
        };
        let status = |running, pid, uptime| ServiceResult::Status {
            status: crate::ServiceStatus {
                manager: "runit".into(),
                running,
                pid,
                uptime_seconds: Some(uptime),
                restarts: Some(1),
                detail: None,
            },
        };
        let text = render(vec![
            Event::Service {
                host: "web1".into(),
                verb: ServiceVerb::Status,
                outcome: outcome(status(true, Some(42), 3725)),
            },
            Event::Service {
                host: "web1".into(),
                verb: ServiceVerb::Status,
                outcome: outcome(status(false, None, 4)),
            },
            Event::Service {
                host: "web1".into(),
                verb: ServiceVerb::Start,
                outcome: outcome(ServiceResult::Unchanged),
            },
            Event::Service {
                host: "web1".into(),
                verb: ServiceVerb::Restart,
                outcome: outcome(ServiceResult::Changed {
                    action: "restarted".into(),
                }),
            },
            Event::Service {
                host: "web1".into(),
                verb: ServiceVerb::Start,
                outcome: outcome(ServiceResult::Failed {
                    error: vec!["not healthy after 20 s".into()],
                }),
            },
        ]);
        assert_eq!(
            text,
            "web1: web > Service('web'): running (runit, pid 42, up 1 h 2 min, 1 restart)\n\
             web1: web > Service('web'): not running (runit, down 4 s, 1 restart)\n\
             web1: unchanged web > Service('web') (already running)\n\
             web1: restarted web > Service('web')\n\
             web1: failed web > Service('web') (start)\n\
             web1:   error: not healthy after 20 s\n"
        );
    }
}
