//! The `--json` stream: one event object per line on stdout, after one schema line.
//!
//! Every line carries `"ts"`, the controller's clock when the line was written (RFC 3339, UTC,
//! milliseconds); agents' events get theirs when they reach the controller, so that one stream
//! has one clock. The first line a process writes is `{"event":"schema","version":1,...}`,
//! whichever writer comes first: the sink, or an error before the sink existed. The fields of
//! every event are documented in `docs/json-events.md`, which the tests below hold to the code.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Event, EventSink};

/// The version of the `--json` event schema, in the stream's first line. It grows when an
/// event loses or changes a field; new events and new fields do not change it.
pub const SCHEMA_VERSION: u32 = 1;

/// Whether this process has written its schema line.
static SCHEMA_WRITTEN: AtomicBool = AtomicBool::new(false);

/// Renders events as one JSON object per line.
pub struct JsonOutput<W: Write> {
    out: W,
}

impl<W: Write> JsonOutput<W> {
    /// Writes to `out` (normally stdout).
    pub fn new(out: W) -> Self {
        JsonOutput { out }
    }
}

impl<W: Write> EventSink for JsonOutput<W> {
    fn event(&mut self, event: Event) {
        write_json(
            &mut self.out,
            serde_json::to_value(&event).expect("events always serialize"),
        );
    }
}

/// Writes one event object (`{"event": ..., ...}`) as a line of the `--json` stream: masked,
/// with its timestamp, after the schema line if this process has not written it yet.
///
/// Everything that writes to the `--json` stream goes through here, also the `error` and
/// `warning` lines that do not come from an [`Event`].
pub fn write_json(out: &mut dyn Write, event: serde_json::Value) {
    let mut text = String::new();
    if !SCHEMA_WRITTEN.swap(true, Ordering::SeqCst) {
        text.push_str(&schema_line());
        text.push('\n');
    }
    text.push_str(&json_line(event));
    text.push('\n');
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// One line of the stream (without the newline): `event` masked, with `"ts"` set to now.
pub fn json_line(event: serde_json::Value) -> String {
    let mut json = crate::redact::to_masked_json(&event);
    if let Some(map) = json.as_object_mut() {
        map.insert("ts".into(), serde_json::Value::String(timestamp()));
    }
    serde_json::to_string(&json).expect("JSON values always serialize")
}

/// The stream's first line (without the newline).
pub fn schema_line() -> String {
    json_line(serde_json::json!({"event": "schema", "version": SCHEMA_VERSION}))
}

/// A `warning` line: something the operator should know that does not stop the run.
pub fn warning_event(message: String) -> serde_json::Value {
    serde_json::json!({"event": "warning", "message": message})
}

/// An `error` line: the run ended with an error before or outside the events (`kind` is the
/// exit code's name, `error` the cause chain, `hint` a likely fix).
pub fn error_event(kind: &str, error: Vec<String>, hint: Option<String>) -> serde_json::Value {
    serde_json::json!({"event": "error", "kind": kind, "error": error, "hint": hint})
}

/// Now, as RFC 3339 in UTC with milliseconds: `2026-12-03T13:04:32.123Z`.
fn timestamp() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The documented fields of each line's event: `(event, [(field, type)])`, kept in the same
/// order as the tables of `docs/json-events.md`. Types: `string`, `boolean`, `number`,
/// `integer`, `string[]`, `object`, `object[]`; `?` after a type means it may be `null`;
/// `(optional)` means the field is not always there.
#[cfg(test)]
const SCHEMA: &[(&str, &[(&str, &str)])] = &[
    ("schema", &[("version", "integer")]),
    (
        "host_started",
        &[
            ("host", "string"),
            ("environment", "string"),
            ("dry_run", "boolean"),
        ],
    ),
    (
        "step_started",
        &[("host", "string"), ("component", "string")],
    ),
    (
        "step_finished",
        &[
            ("host", "string"),
            ("component", "string"),
            ("outcome", "string"),
            ("dry_run", "boolean"),
            ("seconds", "number"),
        ],
    ),
    (
        "changed",
        &[
            ("host", "string"),
            ("component", "string"),
            ("reason", "string"),
            ("dry_run", "boolean"),
        ],
    ),
    (
        "diff",
        &[
            ("host", "string"),
            ("component", "string"),
            ("diff", "string"),
        ],
    ),
    (
        "log",
        &[
            ("host", "string"),
            ("component", "string"),
            ("message", "string"),
        ],
    ),
    (
        "detail",
        &[
            ("host", "string"),
            ("component", "string"),
            ("message", "string"),
        ],
    ),
    (
        "failed",
        &[
            ("host", "string"),
            ("component", "string"),
            ("error", "string[]"),
        ],
    ),
    (
        "agent_uploaded",
        &[("host", "string"), ("bytes", "integer")],
    ),
    (
        "skipped",
        &[
            ("host", "string"),
            ("component", "string"),
            ("reason", "string"),
        ],
    ),
    (
        "interrupted",
        &[("host", "string"), ("not_started", "string[]")],
    ),
    (
        "host_failed",
        &[
            ("host", "string"),
            ("status", "string"),
            ("error", "string[]"),
        ],
    ),
    (
        "run_finished",
        &[("hosts", "object[]"), ("seconds", "number")],
    ),
    (
        "service",
        &[
            ("host", "string"),
            ("verb", "string"),
            ("root", "string"),
            ("component", "string"),
            ("result", "string"),
            ("status", "object (optional)"),
            ("action", "string (optional)"),
            ("error", "string[] (optional)"),
        ],
    ),
    (
        "host_finished",
        &[
            ("host", "string"),
            ("dry_run", "boolean"),
            ("changed", "string[]"),
            ("unchanged", "string[]"),
            ("failed", "string[]"),
            ("not_attempted", "string[]"),
            ("seconds", "number"),
        ],
    ),
    (
        "orphaned",
        &[
            ("host", "string"),
            ("component", "string"),
            ("created", "object"),
            ("prune", "boolean"),
            ("dry_run", "boolean"),
        ],
    ),
    (
        "pruned",
        &[
            ("host", "string"),
            ("component", "string"),
            ("item", "string"),
            ("action", "string"),
            ("reason", "string?"),
            ("dry_run", "boolean"),
        ],
    ),
    ("host_orphaned", &[("host", "string"), ("prune", "boolean")]),
    (
        "output",
        &[("host", "string"), ("stream", "string"), ("line", "string")],
    ),
    (
        "exec_finished",
        &[
            ("host", "string"),
            ("exit_code", "integer?"),
            ("signal", "integer?"),
            ("timed_out", "boolean"),
            ("error", "string[]?"),
            ("seconds", "number"),
        ],
    ),
    (
        "host_state",
        &[
            ("host", "string"),
            ("freeze", "object?"),
            ("holder", "object?"),
            ("last_deploy", "object?"),
            ("services", "object[]"),
            ("releases", "object[]"),
            ("drift", "object"),
        ],
    ),
    (
        "deploy",
        &[
            ("started", "string"),
            ("user", "string"),
            ("controller_host", "string"),
            ("commit", "string?"),
            ("result", "string"),
            ("hosts", "object[]"),
            ("changed", "string[]"),
        ],
    ),
    (
        "lock",
        &[
            ("host", "string"),
            ("verb", "string"),
            ("outcome", "string"),
            ("freeze", "object?"),
            ("holder", "object?"),
        ],
    ),
    (
        "rollout_batch",
        &[
            ("batch", "integer"),
            ("batches", "integer"),
            ("hosts", "string[]"),
            ("failed", "integer"),
            ("max_failed", "integer"),
        ],
    ),
    (
        "rollout_hook",
        &[
            ("host", "string"),
            ("component", "string"),
            ("batch", "integer"),
            ("hook", "string"),
            ("targets", "string[]"),
            ("in_rotation", "string[]"),
        ],
    ),
    (
        "rollout_stopped",
        &[
            ("batch", "integer"),
            ("batches", "integer"),
            ("failed", "string[]"),
            ("max_failed", "integer"),
            ("not_attempted", "string[]"),
            ("reason", "string"),
        ],
    ),
    ("warning", &[("message", "string")]),
    (
        "error",
        &[
            ("kind", "string"),
            ("error", "string[]"),
            ("hint", "string?"),
        ],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        HostStatus, HostSummary, RootOutcome, ServiceOutcome, ServiceResult, ServiceStatus,
        ServiceVerb,
    };

    /// One of each event variant; the `match` fails to compile when a variant is added
    /// without a sample here (and so without a row in the schema and the doc).
    fn samples() -> Vec<Event> {
        let host = || "web1".to_string();
        let freeze = || crate::operations::Freeze {
            user: "alice".into(),
            controller_host: "laptop".into(),
            reason: "migration".into(),
            since: "2026-12-03T10:00:00Z".into(),
        };
        let deploy = || crate::operations::HostDeploy {
            host: host(),
            environment: "prod".into(),
            started: "2026-12-03T10:00:00Z".into(),
            finished: None,
            user: "alice".into(),
            controller_host: "laptop".into(),
            pid: 7,
            run: String::new(),
            commit: Some("abc".into()),
            result: None,
            error: None,
            changed: vec![],
            components_changed: 0,
        };
        let component = || "app > File('a')".to_string();
        let service = |result| Event::Service {
            host: host(),
            verb: ServiceVerb::Start,
            outcome: ServiceOutcome {
                root: "app".into(),
                component: "app > Service('app')".into(),
                result,
            },
        };
        let all = vec![
            Event::HostStarted {
                host: host(),
                environment: "dev".into(),
                dry_run: false,
            },
            Event::StepStarted {
                host: host(),
                component: "app".into(),
            },
            Event::StepFinished {
                host: host(),
                component: "app".into(),
                outcome: RootOutcome::Unchanged,
                dry_run: false,
                seconds: 0.25,
            },
            Event::Changed {
                host: host(),
                component: component(),
                reason: "missing".into(),
                dry_run: true,
            },
            Event::Diff {
                host: host(),
                component: component(),
                diff: "+x\n".into(),
            },
            Event::Log {
                host: host(),
                component: component(),
                message: "hello".into(),
            },
            Event::Detail {
                host: host(),
                component: component(),
                message: "running `true`".into(),
            },
            Event::Failed {
                host: host(),
                component: component(),
                error: vec!["boom".into()],
            },
            Event::AgentUploaded {
                host: host(),
                bytes: 1234,
            },
            Event::Skipped {
                host: host(),
                component: "app".into(),
                reason: "`db` failed".into(),
            },
            Event::Interrupted {
                host: host(),
                not_started: vec!["app".into()],
            },
            Event::HostFailed {
                host: host(),
                status: HostStatus::Unreachable,
                error: vec!["unreachable".into()],
            },
            Event::RunFinished {
                hosts: vec![HostSummary {
                    host: host(),
                    status: HostStatus::Changed,
                    detail: String::new(),
                }],
                seconds: 1.5,
            },
            service(ServiceResult::Status {
                status: ServiceStatus {
                    manager: "runit".into(),
                    running: true,
                    pid: Some(1),
                    uptime_seconds: None,
                    restarts: None,
                    detail: None,
                },
            }),
            service(ServiceResult::Changed {
                action: "started".into(),
            }),
            service(ServiceResult::Unchanged),
            service(ServiceResult::Failed {
                error: vec!["boom".into()],
            }),
            Event::HostFinished {
                host: host(),
                dry_run: false,
                changed: vec!["app".into()],
                unchanged: vec![],
                failed: vec![],
                not_attempted: vec![],
                seconds: 2.0,
            },
            Event::Orphaned {
                host: host(),
                component: "app".into(),
                created: [("file".to_string(), 12)].into_iter().collect(),
                prune: false,
                dry_run: false,
            },
            Event::Pruned {
                host: host(),
                component: "app".into(),
                item: "file `/srv/app/a`".into(),
                action: crate::inventory::PruneAction::Removed,
                reason: None,
                dry_run: false,
            },
            Event::HostOrphaned {
                host: host(),
                prune: true,
            },
            Event::Output {
                host: host(),
                stream: "stdout".into(),
                line: "up 3 days".into(),
            },
            Event::ExecFinished {
                host: host(),
                result: crate::operations::ExecResult {
                    exit_code: Some(0),
                    signal: None,
                    timed_out: false,
                    error: None,
                    seconds: 0.1,
                },
            },
            Event::HostState {
                host: host(),
                state: Box::new(crate::operations::HostState {
                    freeze: Some(freeze()),
                    holder: None,
                    last_deploy: Some(deploy()),
                    services: vec![],
                    releases: vec![],
                    drift: crate::operations::Drift {
                        roots: vec!["app".into()],
                        of: 2,
                        components: 1,
                        failed: vec![],
                    },
                }),
            },
            Event::Deploy {
                started: "2026-12-03T10:00:00Z".into(),
                user: "alice".into(),
                controller_host: "laptop".into(),
                commit: None,
                result: "success".into(),
                hosts: vec![deploy()],
                changed: vec!["web1: app".into()],
            },
            Event::Lock {
                host: host(),
                verb: crate::operations::LockVerb::Acquire,
                report: Box::new(crate::operations::LockReport {
                    outcome: crate::operations::LockOutcome::Acquired,
                    freeze: Some(freeze()),
                    holder: None,
                }),
            },
            Event::RolloutBatch {
                batch: 1,
                batches: 3,
                hosts: vec![host()],
                failed: 0,
                max_failed: 1,
            },
            Event::RolloutHook {
                host: "lb".into(),
                component: "upstreams".into(),
                batch: 1,
                hook: crate::rollout::Hook::Drain,
                targets: vec![host()],
                in_rotation: vec!["web2".into()],
            },
            Event::RolloutStopped {
                batch: 1,
                batches: 3,
                failed: vec![host()],
                max_failed: 0,
                not_attempted: vec!["web3".into()],
                reason: "1 rolled host failed, `max_failed` allows 0".into(),
            },
        ];
        for e in &all {
            match e {
                Event::HostStarted { .. }
                | Event::StepStarted { .. }
                | Event::StepFinished { .. }
                | Event::Changed { .. }
                | Event::Diff { .. }
                | Event::Log { .. }
                | Event::Detail { .. }
                | Event::Failed { .. }
                | Event::AgentUploaded { .. }
                | Event::Skipped { .. }
                | Event::Interrupted { .. }
                | Event::HostFailed { .. }
                | Event::RunFinished { .. }
                | Event::Service { .. }
                | Event::HostFinished { .. }
                | Event::Orphaned { .. }
                | Event::Pruned { .. }
                | Event::HostOrphaned { .. } => {}
                Event::Output { .. }
                | Event::ExecFinished { .. }
                | Event::HostState { .. }
                | Event::Deploy { .. }
                | Event::Lock { .. } => {}
                Event::RolloutBatch { .. }
                | Event::RolloutHook { .. }
                | Event::RolloutStopped { .. } => {}
            }
        }
        all
    }

    /// The lines of the stream the samples make, plus the lines that are not events.
    fn lines() -> Vec<serde_json::Value> {
        let mut lines = vec![serde_json::from_str(&schema_line()).unwrap()];
        for e in samples() {
            lines.push(serde_json::from_str(&json_line(serde_json::to_value(e).unwrap())).unwrap());
        }
        lines.push(
            serde_json::from_str(&json_line(crate::output::warning_event("w".into()))).unwrap(),
        );
        lines.push(
            serde_json::from_str(&json_line(crate::output::error_event(
                "invalid_configuration",
                vec!["bad".into()],
                None,
            )))
            .unwrap(),
        );
        lines
    }

    fn type_matches(ty: &str, value: &serde_json::Value) -> bool {
        use serde_json::Value;
        let (ty, nullable) = match ty.strip_suffix('?') {
            Some(t) => (t, true),
            None => (ty, false),
        };
        match (ty, value) {
            (_, Value::Null) => nullable,
            ("string", Value::String(_)) => true,
            ("boolean", Value::Bool(_)) => true,
            ("number", Value::Number(_)) => true,
            ("integer", Value::Number(n)) => n.is_u64() || n.is_i64(),
            ("object", Value::Object(_)) => true,
            ("string[]", Value::Array(a)) => a.iter().all(Value::is_string),
            ("object[]", Value::Array(a)) => a.iter().all(Value::is_object),
            _ => false,
        }
    }

    #[test]
    fn every_line_matches_its_schema() {
        let mut seen = std::collections::BTreeSet::new();
        for line in lines() {
            let map = line.as_object().unwrap();
            let name = map["event"].as_str().unwrap();
            seen.insert(name.to_string());
            let ts = map["ts"].as_str().expect("every line has `ts`");
            assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
            assert_eq!(ts.len(), "2026-12-03T13:04:32.123Z".len(), "{ts}");
            let (_, fields) = SCHEMA
                .iter()
                .find(|(e, _)| *e == name)
                .unwrap_or_else(|| panic!("event `{name}` is not in the schema"));
            for (key, value) in map {
                if key == "event" || key == "ts" {
                    continue;
                }
                let (_, ty) = fields
                    .iter()
                    .find(|(f, _)| f == key)
                    .unwrap_or_else(|| panic!("`{name}` has field `{key}` not in the schema"));
                let ty = ty.trim_end_matches(" (optional)");
                assert!(
                    type_matches(ty, value),
                    "`{name}.{key}` is not {ty}: {value}"
                );
            }
            for (field, ty) in *fields {
                if !ty.ends_with("(optional)") {
                    assert!(map.contains_key(*field), "`{name}` lacks `{field}`: {line}");
                }
            }
        }
        let documented: std::collections::BTreeSet<String> =
            SCHEMA.iter().map(|(e, _)| e.to_string()).collect();
        assert_eq!(seen, documented, "every documented event has a sample");
    }

    /// `docs/json-events.md` has one `### \`event\`` section per event with a table
    /// `| field | type | meaning |`; it must list exactly the schema's fields and types.
    #[test]
    fn the_documentation_matches_the_schema() {
        let doc = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/json-events.md"
        ));
        let mut documented: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for line in doc.lines() {
            if let Some(name) = line
                .strip_prefix("### `")
                .and_then(|rest| rest.strip_suffix('`'))
            {
                documented.push((name.to_string(), Vec::new()));
                continue;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if let (Some((_, fields)), ["", field, ty, _, ""]) = (documented.last_mut(), &cells[..])
                && let Some(field) = field.strip_prefix('`').and_then(|f| f.strip_suffix('`'))
            {
                fields.push((field.to_string(), ty.trim_matches('`').to_string()));
            }
        }
        let expected: Vec<(String, Vec<(String, String)>)> = SCHEMA
            .iter()
            .map(|(e, fields)| {
                (
                    e.to_string(),
                    fields
                        .iter()
                        .map(|(f, t)| (f.to_string(), t.to_string()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(documented, expected);
    }

    #[test]
    fn the_schema_line_comes_first_once() {
        let mut out = Vec::new();
        // Other tests in this process may have written the schema line already.
        SCHEMA_WRITTEN.store(false, Ordering::SeqCst);
        write_json(
            &mut out,
            serde_json::json!({"event": "warning", "message": "a"}),
        );
        write_json(
            &mut out,
            serde_json::json!({"event": "warning", "message": "b"}),
        );
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["event"], "schema");
        assert_eq!(lines[0]["version"], SCHEMA_VERSION);
        assert_eq!(lines[2]["message"], "b");
    }
}
