//! The `service` verbs of `batou-local`: `<ENVIRONMENT> service status|start|stop|restart
//! [COMPONENT]...`, the shape of the command line (an environment may be called `service`)
//! and its errors; and the verbs on a real service under a real runit (`runsvdir` on a
//! temporary service directory, python's HTTP server on a free loopback port).

use std::time::Duration;

use batou_test_support::{Runsvdir, procs};

use crate::harness::{Outcome, Project};

const MOTD: &str = "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ncontent = \"hi\\n\"\n";

/// The environment comes first: `batou-local service` deploys the environment `service`,
/// `batou-local service service status` is a verb on it, `deploy service` still deploys it.
#[test]
fn an_environment_may_be_called_service() {
    let p = Project::new();
    p.env("service", MOTD);
    let out = p.converge(&["service", "--json"]);
    assert_eq!(out.changed(), ["motd > Workdir", "motd"]);
    p.assert_idempotent(&["deploy", "service"]);
    // A verb on it: the environment has no service, which is an invalid configuration.
    let out = p.run(&["service", "service", "status"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("error: no root component of environment `service` has a service"),
        "{}",
        out.stderr
    );
    let out = p.run(&["deploy", "service", "service", "status"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    p.assert_idempotent(&["service"]);
}

/// `ENVIRONMENT service` without a verb lists the verbs (a usage error, exit 2), the same for
/// both commands; pinned.
#[test]
fn the_verbs_help() {
    let p = Project::new();
    p.env("dev", MOTD);
    let out = p.run(&["dev", "service"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    batou_test_support::assert_output_snapshot!("help_service_verbs", out.stderr);
    let remote = crate::harness::run_binary(
        crate::harness::workspace_binary("batou-remote"),
        p.root(),
        &["dev", "service"],
    );
    assert_eq!(remote.code, 2, "{}", remote.stderr);
    assert_eq!(
        remote.stderr,
        out.stderr.replace("batou-local", "batou-remote"),
        "both commands have the same verbs"
    );
}

/// Wrong verbs and options are usage errors (exit 2) that say what is possible; nothing runs.
#[test]
fn wrong_verbs_are_usage_errors() {
    let p = Project::new();
    p.env("dev", MOTD);
    let out = p.run(&["dev", "service", "restrat"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("unrecognized subcommand 'restrat'")
            && out.stderr.contains("'restart'")
            && out
                .stderr
                .contains("Usage: batou-local <ENVIRONMENT> service <VERB>"),
        "{}",
        out.stderr
    );
    let out = p.run(&["dev", "reboot"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("unrecognized subcommand 'reboot'"),
        "{}",
        out.stderr
    );
    // `service` alone lists the verbs.
    let out = p.run(&["dev", "service"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    for verb in ["status", "start", "stop", "restart"] {
        assert!(out.stderr.contains(&format!("  {verb} ")), "{}", out.stderr);
    }
    let out = p.run(&["dev", "service", "stop", "--dry-run"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("`--dry-run` does not apply to the `service` verbs"),
        "{}",
        out.stderr
    );
    assert!(!p.path("work").exists(), "nothing ran");
    p.converge_twice(&["dev"]);
}

/// A deployment with a real service under a real runit: `config` (a file, not a service)
/// and `web` (python's HTTP server on a free loopback port), in environment `env_name`.
struct Supervised {
    project: Project,
    runsvdir: Runsvdir,
    port: u16,
    env_name: &'static str,
}

impl Supervised {
    fn start(env_name: &'static str) -> Supervised {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = Supervised {
            project: Project::new(),
            runsvdir: Runsvdir::start(),
            port,
            env_name,
        };
        let sd = s.runsvdir.service_dir().to_string_lossy().into_owned();
        let text = format!(
            r#"[environment]
allow_paths = ["{sd}"]

[hosts.localhost]
data = {{ service_dir = "{sd}" }}
components = ["config", "web"]

[components.config]
type = "file"
path = "index.html"
content = "hello"

[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
cwd = "../config"
health = {{ http = "http://127.0.0.1:{port}/", within = "10s", stable = "1s" }}
"#
        );
        s.project.env(env_name, &text);
        s
    }

    /// `batou-local <env> ARGS... --json`.
    fn run(&self, args: &[&str]) -> Outcome {
        let mut all = vec![self.env_name];
        all.extend(args);
        all.push("--json");
        self.project.run(&all)
    }

    /// A verb that must succeed: its `service` events.
    fn verb(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut all = vec!["service"];
        all.extend(args);
        let out = self.run(&all);
        assert_eq!(out.code, 0, "{args:?}:\n{}\n{}", out.stderr, out.stdout);
        out.events()
            .into_iter()
            .filter(|e| e["event"] == "service")
            .collect()
    }

    /// The pid runsv reports for `web`, while it runs.
    fn pid(&self) -> Option<u32> {
        let dir = self.project.path("work/web/.service/web/supervise");
        if std::fs::read_to_string(dir.join("stat")).ok()?.trim() != "run" {
            return None;
        }
        std::fs::read_to_string(dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn answers(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }
}

/// The one event of a verb on `web`.
fn only(events: &[serde_json::Value]) -> &serde_json::Value {
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["host"], "localhost");
    assert_eq!(events[0]["root"], "web");
    assert_eq!(events[0]["component"], "web");
    &events[0]
}

#[test]
fn status_stop_start_restart_on_a_real_service() {
    let s = Supervised::start("dev");
    let deployed = s.run(&[]);
    assert_eq!(deployed.code, 0, "{}", deployed.stderr);
    let pid = s.pid().expect("web runs after the deploy");

    // status: manager, running, the supervisor's pid, an uptime; it changes nothing.
    let status = s.verb(&["status"]);
    let e = only(&status);
    assert_eq!(e["verb"], "status");
    assert_eq!(e["result"], "status");
    assert_eq!(e["status"]["manager"], "runit");
    assert_eq!(e["status"]["running"], true);
    assert_eq!(e["status"]["pid"], pid);
    assert!(e["status"]["uptime_seconds"].is_u64(), "{e}");
    assert_eq!(s.pid(), Some(pid));

    // Human output: one line per service with its host, then the summary.
    let out = s.project.run(&["dev", "service", "status"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("localhost: web: running (runit, pid {pid}, up ")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("  localhost  unchanged        1 service (status): 1 running"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout, "", "human output goes to stderr");

    // stop, and stop again: unchanged.
    let e = s.verb(&["stop"]);
    assert_eq!(only(&e)["result"], "changed");
    assert_eq!(only(&e)["action"], "stopped");
    assert_eq!(s.pid(), None);
    procs::wait_until("the stopped server to go", Duration::from_secs(10), || {
        !procs::alive(pid)
    });
    assert!(!s.answers());
    let e = s.verb(&["status", "web"]);
    assert_eq!(only(&e)["status"]["running"], false);
    assert_eq!(only(&e)["status"]["pid"], serde_json::Value::Null);
    let e = s.verb(&["stop"]);
    assert_eq!(only(&e)["result"], "unchanged");
    let out = s.project.run(&["dev", "service", "stop"]);
    assert!(
        out.stderr
            .contains("localhost: unchanged web (already stopped)"),
        "{}",
        out.stderr
    );

    // start, healthy; start again: unchanged, same process.
    let e = s.verb(&["start"]);
    assert_eq!(only(&e)["action"], "started");
    let started = s.pid().expect("web runs after start");
    assert_ne!(started, pid);
    assert!(s.answers(), "start waits until the service is healthy");
    let out = s.run(&["service", "start"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let e: Vec<_> = out
        .events()
        .into_iter()
        .filter(|e| e["event"] == "service")
        .collect();
    assert_eq!(only(&e)["result"], "unchanged");
    assert_eq!(out.statuses()["localhost"], "unchanged");
    assert_eq!(s.pid(), Some(started));

    // restart: a new process, healthy; the summary says changed.
    let out = s.run(&["service", "restart"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.statuses()["localhost"], "changed");
    let restarted = s.pid().expect("web runs after restart");
    assert_ne!(restarted, started);
    assert!(!procs::alive(started));
    assert!(s.answers());

    // A deploy after the verbs changes nothing and restarts nothing.
    s.project.assert_idempotent(&["dev"]);
    assert_eq!(s.pid(), Some(restarted));
}

#[test]
fn named_roots_are_checked_before_any_service_is_touched() {
    let s = Supervised::start("dev");
    assert_eq!(s.run(&[]).code, 0);
    let pid = s.pid().expect("web runs");
    let out = s.project.run(&["dev", "service", "stop", "webb"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "error: unknown root component `webb` in environment `dev` (did you mean `web`?)\n\
         hint: root components with a service: web\n"
    );
    // A root component without a service, even next to one with.
    let out = s
        .project
        .run(&["dev", "service", "restart", "web", "config"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "error: root component `config` has no service\n\
         hint: root components with a service: web\n"
    );
    assert_eq!(s.pid(), Some(pid), "nothing was stopped or restarted");
    s.project.assert_idempotent(&["dev"]);
}

/// An environment called `service`: `batou-local service` deploys it, `batou-local service
/// service restart` restarts its services.
#[test]
fn verbs_on_an_environment_called_service() {
    let s = Supervised::start("service");
    let out = s.project.run(&["service"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let pid = s.pid().expect("web runs");
    let e = s.verb(&["restart", "web"]);
    assert_eq!(only(&e)["action"], "restarted");
    let restarted = s.pid().expect("web runs");
    assert_ne!(restarted, pid);
    s.project.assert_idempotent(&["service"]);
    s.project.assert_idempotent(&["deploy", "service"]);
    assert_eq!(s.pid(), Some(restarted));
}

/// A start that cannot become healthy fails the verb: exit 1, the cause on the host's line.
#[test]
fn a_failed_start_exits_1() {
    let s = Supervised::start("dev");
    assert_eq!(s.run(&[]).code, 0);
    assert!(!s.verb(&["stop"]).is_empty());
    procs::wait_until("the port to be free", Duration::from_secs(10), || {
        !s.answers()
    });
    // Something else holds the port now: the server exits at once, again and again.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", s.port)).unwrap();
    let out = s.project.run(&["dev", "service", "start"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("localhost: failed web (start)\nlocalhost:   error: "),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("  localhost  failed           1 service (start): 1 failed"),
        "{}",
        out.stderr
    );
    drop(squatter);
    // Free again: a deploy starts it, and the next changes nothing.
    let out = s.run(&[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(s.pid().is_some());
    s.project.assert_idempotent(&["dev"]);
}
