//! The `service` component with a real runit: each test starts its own `runsvdir` on a
//! temporary service directory, deploys a real HTTP server (python's `http.server` on a free
//! loopback port) through the built `batou-local`, and checks pids, health and what the run
//! reported. Every scenario ends with a converge that changes nothing.

use std::time::Duration;

use batou_test_support::{Runsvdir, procs};

use crate::harness::{Outcome, Project};

use batou_test_support::free_port;

/// A project whose host runs `config` (a file root, served as `index.html`) and `web` (the
/// HTTP server in `config`'s work directory), restarted when `config` changes; `extra` is
/// added to `web`'s table.
struct Scenario {
    project: Project,
    runsvdir: Runsvdir,
    port: u16,
}

impl Scenario {
    fn new() -> Scenario {
        Scenario {
            project: Project::new(),
            runsvdir: Runsvdir::start(),
            port: free_port(),
        }
    }

    fn service_dir(&self) -> String {
        self.runsvdir.service_dir().to_string_lossy().into_owned()
    }

    /// The environment `dev`: `[environment]` allowing the service directory, the host with
    /// `service_dir` in its data and `roots`, then `components` (with `{port}` and
    /// `{service_dir}` replaced).
    fn env(&self, roots: &[&str], components: &str) -> &Self {
        let sd = self.service_dir();
        let roots: Vec<String> = roots.iter().map(|r| format!("\"{r}\"")).collect();
        let text = format!(
            "[environment]\nallow_paths = [\"{sd}\"]\n\n[hosts.localhost]\ndata = {{ service_dir = \"{sd}\" }}\ncomponents = [{}]\n\n{}",
            roots.join(", "),
            components
                .replace("{port}", &self.port.to_string())
                .replace("{service_dir}", &sd)
        );
        self.project.env("dev", &text);
        self
    }

    /// The usual pair: `config` with `content`, `web` serving it, restarted on `config`.
    fn web(&self, content: &str, web_extra: &str) -> &Self {
        self.env(
            &["config", "web"],
            &format!(
                r#"[components.config]
type = "file"
path = "index.html"
content = "{content}"

[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{{port}}", "--bind", "127.0.0.1"]
cwd = "../config"
env = {{ PYTHONUNBUFFERED = "1" }}
restart_on = ["config"]
health = {{ http = "http://127.0.0.1:{{port}}/", within = "10s", stable = "1s" }}
{web_extra}
"#
            ),
        )
    }

    fn run(&self, args: &[&str]) -> Outcome {
        let mut all = vec!["dev", "--json"];
        all.extend(args);
        self.project.run(&all)
    }

    fn converge(&self) -> Outcome {
        let out = self.run(&[]);
        assert_eq!(out.code, 0, "deploy failed:\n{}", out.stderr);
        out
    }

    /// The pid runsv reports for service `name`.
    fn pid(&self, name: &str) -> Option<u32> {
        let dir = self.project.path(&format!("work/{name}/.service/{name}"));
        let stat = std::fs::read_to_string(dir.join("supervise/stat")).ok()?;
        if stat.trim() != "run" {
            return None;
        }
        std::fs::read_to_string(dir.join("supervise/pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn get(&self) -> String {
        http_get(self.port)
    }
}

/// `GET /` on the port: the body.
fn http_get(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}

/// `(component, reason)` of every `changed` event.
fn reasons(out: &Outcome) -> Vec<(String, String)> {
    out.events()
        .into_iter()
        .filter(|e| e["event"] == "changed")
        .map(|e| {
            (
                e["component"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn has(out: &Outcome, component: &str, reason: &str) -> bool {
    reasons(out)
        .iter()
        .any(|(c, r)| c == component && r == reason)
}

#[test]
fn a_service_starts_healthy_stays_and_restarts_on_a_config_change() {
    let s = Scenario::new();
    s.web("one", "");
    let first = s.converge();
    assert!(has(&first, "web", "started"), "{:?}", reasons(&first));
    let pid = s.pid("web").expect("web runs");
    assert_eq!(s.get(), "one");
    assert!(first.stdout.contains("healthy after"), "{}", first.stdout);

    // Unchanged: nothing restarts.
    let again = s.converge();
    assert_eq!(again.changed(), Vec::<String>::new());
    assert_eq!(s.pid("web"), Some(pid));

    // A change of `config` restarts `web`: a new process, healthy.
    s.web("two", "");
    let changed = s.converge();
    assert_eq!(
        reasons(&changed),
        [
            ("config".to_string(), "content differs".to_string()),
            ("web".to_string(), "restarted (config changed)".to_string())
        ]
    );
    let new_pid = s.pid("web").expect("web runs");
    assert_ne!(new_pid, pid);
    assert_eq!(s.get(), "two");
    assert!(procs::alive(new_pid));
    assert!(!procs::alive(pid));
    s.project.assert_idempotent(&["dev"]);
    assert_eq!(s.pid("web"), Some(new_pid));

    // The supervisor, not the tool, keeps it alive: killed, runsv starts it again, and a
    // deploy leaves the new process alone.
    procs::kill(new_pid, procs::Signal::SIGKILL);
    let revived = procs::wait_for_some("runsv to start web again", Duration::from_secs(10), || {
        s.pid("web").filter(|p| *p != new_pid)
    });
    procs::wait_until("web to answer again", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", s.port)).is_ok()
    });
    s.project.assert_idempotent(&["dev"]);
    assert_eq!(s.pid("web"), Some(revived));
}

#[test]
fn a_broken_service_fails_within_its_window_with_its_log() {
    let s = Scenario::new();
    s.env(
        &["web"],
        r#"[components.web]
type = "service"
argv = ["sh", "-c", "echo cannot read the configuration >&2; exit 3"]
health = { http = "http://127.0.0.1:{port}/", within = "8s", stable = "1s" }
"#,
    );
    let started = std::time::Instant::now();
    let out = s.project.run(&["dev"]);
    let took = started.elapsed();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let err = &out.stderr;
    assert!(err.contains("service `web` restarted 3 times in"), "{err}");
    assert!(err.contains("lines of the service's log"), "{err}");
    assert!(err.contains("cannot read the configuration"), "{err}");
    assert!(
        err.contains("`web` failed"),
        "the summary names the service:\n{err}"
    );

    // Fixed, it starts; then nothing changes.
    s.env(
        &["web"],
        r#"[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
health = { http = "http://127.0.0.1:{port}/", within = "10s", stable = "1s" }
"#,
    );
    let fixed = s.converge();
    assert!(
        has(&fixed, "web", "restarted (definition changed)") || has(&fixed, "web", "started"),
        "{:?}",
        reasons(&fixed)
    );
    s.project.assert_idempotent(&["dev"]);
}

#[test]
fn a_service_that_never_gets_healthy_fails_after_within() {
    let s = Scenario::new();
    // Listens, but on another port than the probe asks.
    let other = free_port();
    s.env(
        &["web"],
        &format!(
            r#"[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{other}", "--bind", "127.0.0.1"]
health = {{ http = "http://127.0.0.1:{{port}}/", within = "3s", stable = "1s" }}
"#
        ),
    );
    let out = s.project.run(&["dev"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let err = &out.stderr;
    assert!(
        err.contains(&format!(
            "service `web` is not healthy after 3 s: GET http://127.0.0.1:{}/: connection refused",
            s.port
        )),
        "{err}"
    );
    assert!(!err.contains("failed health"), "{err}");

    // On the port the probe asks, it is restarted for its new definition and stays.
    s.env(
        &["web"],
        r#"[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
health = { http = "http://127.0.0.1:{port}/", within = "10s", stable = "1s" }
"#,
    );
    let fixed = s.converge();
    assert!(
        has(&fixed, "web", "restarted (definition changed)"),
        "{:?}",
        reasons(&fixed)
    );
    s.project.assert_idempotent(&["dev"]);
}

#[test]
fn restart_on_across_two_root_components() {
    let s = Scenario::new();
    let two = |config: &str, code: &str| {
        s.env(
            &["config", "code", "web"],
            &format!(
                r#"[components.config]
type = "file"
path = "index.html"
content = "{config}"

[components.code]
type = "file"
path = "app.py"
content = "{code}"

[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{{port}}", "--bind", "127.0.0.1"]
cwd = "../config"
restart_on = ["config", "code"]
health = {{ http = "http://127.0.0.1:{{port}}/", within = "10s", stable = "1s" }}
"#
            ),
        );
    };
    two("a", "1");
    s.converge();
    let first = s.pid("web").unwrap();
    s.project.assert_idempotent(&["dev"]);
    assert_eq!(s.pid("web"), Some(first));

    two("a", "2");
    let out = s.converge();
    assert!(
        has(&out, "web", "restarted (code changed)"),
        "{:?}",
        reasons(&out)
    );
    let second = s.pid("web").unwrap();
    assert_ne!(second, first);

    two("b", "3");
    let dry = s.run(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        has(&dry, "web", "would restart (config, code changed)"),
        "{:?}",
        reasons(&dry)
    );
    assert_eq!(s.pid("web"), Some(second), "a dry run restarts nothing");
    let out = s.converge();
    assert!(
        has(&out, "web", "restarted (config, code changed)"),
        "{:?}",
        reasons(&out)
    );
    assert_ne!(s.pid("web"), Some(second));
    assert_eq!(s.get(), "b");
    s.project.assert_idempotent(&["dev"]);
}

#[test]
fn state_stopped_stops_and_disables() {
    let s = Scenario::new();
    s.web("up", "");
    s.converge();
    let pid = s.pid("web").unwrap();
    let link = s.runsvdir.service_dir().join("web");
    assert!(link.exists());

    s.web("up", "state = \"stopped\"");
    let dry = s.run(&["--dry-run"]);
    assert!(has(&dry, "web", "would stop"), "{:?}", reasons(&dry));
    assert!(procs::alive(pid));
    let out = s.converge();
    assert!(has(&out, "web", "stopped"), "{:?}", reasons(&out));
    assert!(!procs::alive(pid));
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "the link is removed"
    );
    s.project.assert_idempotent(&["dev"]);

    // Running again: started anew.
    s.web("up", "");
    let out = s.converge();
    assert!(has(&out, "web", "started"), "{:?}", reasons(&out));
    assert_eq!(s.get(), "up");
    s.project.assert_idempotent(&["dev"]);
}

#[test]
fn a_dry_run_on_a_fresh_host_says_would_start_and_changes_nothing() {
    let s = Scenario::new();
    s.web("fresh", "");
    let before = crate::harness::snapshot(s.project.root());
    let dry = s.run(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(has(&dry, "web", "would start"), "{:?}", reasons(&dry));
    assert_eq!(crate::harness::snapshot(s.project.root()), before);
    assert_eq!(
        std::fs::read_dir(s.runsvdir.service_dir()).unwrap().count(),
        0,
        "a dry run links nothing"
    );
    // The run then changes what the prediction listed.
    let predicted = dry.changed();
    let out = s.converge();
    assert_eq!(out.changed(), predicted);
    s.project.assert_idempotent(&["dev"]);
}

#[test]
fn a_service_runs_as_its_user_with_its_env() {
    let s = Scenario::new();
    s.env(
        &["web"],
        r#"[components.web]
type = "service"
argv = ["sh", "-c", "echo \"greeting=$GREETING\"; exec python3 -m http.server {port} --bind 127.0.0.1"]
env = { GREETING = "it's \"quoted\" $HOME" }
user = "nobody"
health = { tcp = "127.0.0.1:{port}", within = "10s", stable = "1s" }
"#,
    );
    s.converge();
    let pid = s.pid("web").unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid.split_whitespace().nth(1) == Some("65534"),
        "runs as nobody: {uid}"
    );
    let log = s.project.path("work/web/.service/web/log/main/current");
    procs::wait_until("the greeting in the log", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("greeting=it's \"quoted\" $HOME"))
    });
    s.project.assert_idempotent(&["dev"]);
}

#[test]
fn a_secret_variable_from_the_secrets_file_reaches_only_the_service() {
    use batou_core::secrets::{encrypt, generate_identity, parse_recipients};
    const TOKEN: &str = "svc-secret-token-8d21c4";
    let s = Scenario::new();
    s.env(
        &["web"],
        r#"[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
env = { PLAIN = "visible" }
health = { tcp = "127.0.0.1:{port}", within = "10s", stable = "1s" }
"#,
    );
    let (identity, public) = generate_identity();
    s.project.file("identity.txt", &format!("{identity}\n"));
    s.project
        .file("secrets/dev.recipients", &format!("{public}\n"));
    let recipients = parse_recipients("r", &public).unwrap();
    std::fs::write(
        s.project.path("secrets/dev.age"),
        encrypt(
            &format!("[components.web]\nenv = {{ TOKEN = \"{TOKEN}\" }}\n"),
            &recipients,
        )
        .unwrap(),
    )
    .unwrap();
    let id = s.project.path("identity.txt");
    let id = id.to_str().unwrap();
    let out = s.project.converge(&["dev", "--identity", id]);
    assert!(!out.stderr.contains(TOKEN), "{}", out.stderr);
    let definition = s.project.path("work/web/.service/web");
    let script = std::fs::read_to_string(definition.join("run")).unwrap();
    assert!(!script.contains(TOKEN), "{script}");
    assert!(script.contains("export PLAIN=visible"), "{script}");
    let token = definition.join("env/TOKEN");
    assert_eq!(std::fs::read_to_string(&token).unwrap(), TOKEN);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pid = s.pid("web").unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let want = format!("TOKEN={TOKEN}");
    assert!(environ.split(|b| *b == 0).any(|v| v == want.as_bytes()));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(TOKEN));
    s.project.assert_idempotent(&["dev", "--identity", id]);
    assert_eq!(s.pid("web"), Some(pid));
}

#[test]
fn without_a_runsvdir_the_deploy_says_so() {
    let p = Project::new();
    let sd = tempfile::Builder::new().prefix("btsd").tempdir().unwrap();
    let sd_path = sd.path().display().to_string();
    p.env(
        "dev",
        &format!(
            "[environment]\nallow_paths = [\"{sd_path}\"]\n\n[hosts.localhost]\ncomponents = [\"web\"]\n\n[components.web]\ntype = \"service\"\nargv = [\"sleep\", \"1000.25\"]\nservice_dir = \"{sd_path}\"\n"
        ),
    );
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "runsvdir did not pick up `{sd_path}/web` within 15 s: is runsvdir running on `{sd_path}`?"
        )),
        "{}",
        out.stderr
    );
    assert!(!procs::sleeping("1000.25"));
}

/// The human output of a first deploy, an unchanged one and a restart, pinned (the port,
/// which differs per run, as `[SERVICE_PORT]`).
#[test]
fn service_run_output() {
    let s = Scenario::new();
    let shown = |out: Outcome| out.stderr.replace(&s.port.to_string(), "[SERVICE_PORT]");
    s.web("one", "");
    let first = shown(s.project.converge(&["dev"]));
    batou_test_support::assert_output_snapshot!("service_first_run", first);
    let again = shown(s.project.converge(&["dev"]));
    batou_test_support::assert_output_snapshot!("service_second_run", again);
    s.web("two", "");
    let dry = shown(s.project.converge(&["dev", "--dry-run"]));
    batou_test_support::assert_output_snapshot!("service_would_restart", dry);
    let changed = shown(s.project.converge(&["dev"]));
    batou_test_support::assert_output_snapshot!("service_restart", changed);
    s.project.assert_idempotent(&["dev"]);
}

#[test]
fn a_command_probe_and_an_expected_status_prove_health() {
    let s = Scenario::new();
    s.env(
        &["web"],
        r#"[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
health = { command = ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/')"], within = "10s", stable = "500ms" }
"#,
    );
    let out = s.converge();
    assert!(out.stdout.contains("succeeded"), "{}", out.stdout);
    s.project.assert_idempotent(&["dev"]);

    // With `status`, exactly that status is healthy: 404 for a missing page, proven by the
    // restart that the changed definition (`--directory .`) needs.
    s.env(
        &["web"],
        r#"[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1", "--directory", "."]
health = { http = "http://127.0.0.1:{port}/missing", status = 404, within = "10s", stable = "500ms" }
"#,
    );
    let out = s.converge();
    assert!(
        has(&out, "web", "restarted (definition changed)"),
        "{:?}",
        reasons(&out)
    );
    assert!(
        out.stdout.contains("/missing` answered 404"),
        "{}",
        out.stdout
    );
    s.project.assert_idempotent(&["dev"]);
}
