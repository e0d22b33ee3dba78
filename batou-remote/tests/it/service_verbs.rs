//! The `service` verbs of `batou-remote`: `<ENVIRONMENT> service status|start|stop|restart
//! [COMPONENT]...` on every host (or those of `--hosts`), in parallel, against real sshd
//! hosts; the command line's shape (an environment may be called `service`) and its errors.
//! The real scenarios give each host its own runsvdir (started by the test, stopped by PID)
//! through host data `service_dir`, and python's HTTP server on a loopback port of its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use batou_test_support::{Runsvdir, procs};

use crate::harness::{Cluster, Outcome, Project};

const MOTD: &str = r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["motd"]

[components.motd]
type = "file"
path = "motd"
content = "hello\n"
"#;

/// `batou-remote [the cluster's options] ARGS...`.
fn remote(cluster: &Cluster, p: &Project, args: &[&str]) -> Outcome {
    cluster.run(p.root(), args)
}

/// `batou-remote service` deploys the environment `service`; `service service status` is a
/// verb on it, refused before any connection when it has no service.
#[test]
fn an_environment_may_be_called_service() {
    let cluster = Cluster::start(&["web1"]);
    let p = Project::new();
    p.env("service", MOTD);
    let out = remote(&cluster, &p, &["service", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.statuses()["web1"], "changed");
    assert_eq!(
        cluster.host("web1").journal("srv").last().unwrap()["environment"],
        "service"
    );
    let logins = cluster.host("web1").logins();
    let out = remote(&cluster, &p, &["service", "service", "status"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("error: no root component of environment `service` has a service"),
        "{}",
        out.stderr
    );
    let out = remote(&cluster, &p, &["service", "service", "restart", "motdd"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "error: unknown root component `motdd` in environment `service` (did you mean `motd`?)"
        ),
        "{}",
        out.stderr
    );
    let out = remote(
        &cluster,
        &p,
        &["service", "service", "stop", "--keep-going"],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert_eq!(
        cluster.host("web1").logins(),
        logins,
        "no connection for a refused verb"
    );
    let out = remote(&cluster, &p, &["service", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
}

use batou_test_support::free_port;

/// The pid runsv reports for `web` on the host whose home is `home`, while it runs.
fn pid(home: &Path) -> Option<u32> {
    let dir = home.join("srv/work/web/.service/web/supervise");
    if std::fs::read_to_string(dir.join("stat")).ok()?.trim() != "run" {
        return None;
    }
    std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Two hosts, each with `config` (a file) and `web` (a service on its own port, under its
/// own runsvdir).
struct Supervised {
    cluster: Cluster,
    project: Project,
    _supervisors: Vec<Runsvdir>,
    ports: BTreeMap<String, u16>,
}

impl Supervised {
    fn start() -> Supervised {
        Supervised::with("", "")
    }

    /// With `extra_roots` (`, "slow"`) after `config` and `web` on each host, and their
    /// tables `extra`.
    fn with(extra_roots: &str, extra: &str) -> Supervised {
        let cluster = Cluster::start(&["web1", "web2"]);
        let supervisors = vec![Runsvdir::start(), Runsvdir::start()];
        let mut ports = BTreeMap::new();
        let allow: Vec<String> = supervisors
            .iter()
            .map(|r| format!("\"{}\"", r.service_dir().display()))
            .collect();
        let mut text = format!(
            "[environment]\nbase_dir = \"srv\"\nallow_paths = [{}]\n\n",
            allow.join(", ")
        );
        for (host, r) in ["web1", "web2"].iter().zip(&supervisors) {
            let port = free_port();
            ports.insert(host.to_string(), port);
            text.push_str(&format!(
                "[hosts.{host}]\ncomponents = [\"config\", \"web\"{extra_roots}]\ndata = {{ service_dir = \"{}\", port = {port} }}\n\n",
                r.service_dir().display()
            ));
        }
        text.push_str(
            r#"[components.config]
type = "file"
path = "index.html"
content = "hello from {{ host.name }}"

[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{{ host.data.port }}", "--bind", "127.0.0.1"]
cwd = "../config"
health = { http = "http://127.0.0.1:{{ host.data.port }}/", within = "10s", stable = "1s" }
"#,
        );
        text.push_str(extra);
        let project = Project::new();
        project.env("prod", &text);
        Supervised {
            cluster,
            project,
            _supervisors: supervisors,
            ports,
        }
    }

    fn run(&self, args: &[&str]) -> Outcome {
        self.cluster.run(self.project.root(), args)
    }

    fn pid(&self, host: &str) -> Option<u32> {
        pid(&self.cluster.host(host).home)
    }

    fn answers(&self, host: &str) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.ports[host])).is_ok()
    }

    /// A deploy that changes nothing.
    fn assert_idempotent(&self, extra: &[&str]) {
        let mut args = vec!["prod", "--json"];
        args.extend(extra);
        let out = self.run(&args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.count("changed"), 0, "{}", out.stdout);
    }
}

/// The `service` events of a run, by host.
fn services(out: &Outcome) -> BTreeMap<String, serde_json::Value> {
    out.events()
        .into_iter()
        .filter(|e| e["event"] == "service")
        .map(|e| (e["host"].as_str().unwrap().to_string(), e))
        .collect()
}

#[test]
fn status_and_restart_across_two_hosts() {
    let s = Supervised::start();
    let out = s.run(&["prod", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, out.stdout);
    let (a, b) = (s.pid("web1").unwrap(), s.pid("web2").unwrap());

    // status on both hosts: each its own pid; nothing journaled, nothing locked.
    let journal = s.cluster.host("web1").journal("srv").len();
    let out = s.run(&["prod", "service", "status", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let found = services(&out);
    assert_eq!(found.len(), 2, "{}", out.stdout);
    assert_eq!(found["web1"]["status"]["pid"], a);
    assert_eq!(found["web2"]["status"]["pid"], b);
    for e in found.values() {
        assert_eq!(e["verb"], "status");
        assert_eq!(e["component"], "web");
        assert_eq!(e["status"]["manager"], "runit");
        assert_eq!(e["status"]["running"], true);
    }
    assert_eq!(
        out.statuses(),
        BTreeMap::from([
            ("web1".to_string(), "unchanged".to_string()),
            ("web2".to_string(), "unchanged".to_string())
        ])
    );
    assert_eq!(s.cluster.host("web1").journal("srv").len(), journal);

    // Human output: per-host lines and the summary.
    let out = s.run(&["prod", "service", "status"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for (host, pid) in [("web1", a), ("web2", b)] {
        assert!(
            out.stderr
                .contains(&format!("{host}: web: running (runit, pid {pid}, up ")),
            "{}",
            out.stderr
        );
    }
    assert!(
        out.stderr
            .contains("2 hosts: 0 changed, 2 unchanged, 0 failed in"),
        "{}",
        out.stderr
    );

    // `--hosts` limits the verb to one host: the other is not contacted.
    let logins = s.cluster.host("web2").logins();
    let out = s.run(&[
        "prod", "service", "stop", "web", "--hosts", "web1", "--json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(services(&out).keys().collect::<Vec<_>>(), ["web1"]);
    assert_eq!(services(&out)["web1"]["action"], "stopped");
    assert_eq!(s.pid("web1"), None);
    assert_eq!(s.pid("web2"), Some(b));
    assert_eq!(s.cluster.host("web2").logins(), logins);
    // The verb is journaled on the host it ran on.
    let last = s.cluster.host("web1").journal("srv").pop().unwrap();
    assert_eq!(last["record"], "service");
    assert_eq!(last["verb"], "stop");
    assert_eq!(last["outcomes"][0]["action"], "stopped");

    // restart on both, in parallel: web1 was stopped and starts, web2 gets a new process.
    let out = s.run(&["prod", "service", "restart", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let found = services(&out);
    assert_eq!(found["web1"]["action"], "restarted");
    assert_eq!(found["web2"]["action"], "restarted");
    assert_eq!(out.statuses()["web1"], "changed");
    assert_eq!(out.statuses()["web2"], "changed");
    let (a2, b2) = (s.pid("web1").unwrap(), s.pid("web2").unwrap());
    assert!(a2 != a && b2 != b);
    assert!(!procs::alive(b));
    assert!(s.answers("web1") && s.answers("web2"));

    // start of running services: unchanged on both.
    let out = s.run(&["prod", "service", "start", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        services(&out).values().all(|e| e["result"] == "unchanged"),
        "{}",
        out.stdout
    );

    s.assert_idempotent(&[]);
    assert_eq!((s.pid("web1"), s.pid("web2")), (Some(a2), Some(b2)));
}

#[test]
fn exit_codes_of_a_failed_verb_and_an_unreachable_host() {
    let mut s = Supervised::start();
    let out = s.run(&["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    // web2's server cannot start again (its port is taken): restart fails there, exit 1,
    // while web1 restarts.
    let out = s.run(&["prod", "service", "stop", "--hosts", "web2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    procs::wait_until("web2's port to be free", Duration::from_secs(10), || {
        !s.answers("web2")
    });
    let squatter = std::net::TcpListener::bind(("127.0.0.1", s.ports["web2"])).unwrap();
    let out = s.run(&["prod", "service", "restart", "--json"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stderr, out.stdout);
    assert_eq!(out.statuses()["web1"], "changed");
    assert_eq!(out.statuses()["web2"], "failed");
    let failed = &services(&out)["web2"];
    assert_eq!(failed["result"], "failed");
    assert!(failed["error"].as_array().is_some_and(|e| !e.is_empty()));
    drop(squatter);
    let out = s.run(&["prod", "--json"]);
    assert_eq!(out.code, 0, "a deploy starts it again: {}", out.stderr);
    assert!(s.pid("web2").is_some());

    // An unreachable host keeps its exit code; the other host still answers.
    s.cluster.hosts.get_mut("web2").unwrap().stop();
    let out = s.run(&["prod", "service", "status", "--json"]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert_eq!(out.statuses()["web1"], "unchanged");
    assert_eq!(out.statuses()["web2"], "unreachable");
    assert_eq!(out.count("host_failed"), 1, "{}", out.stdout);

    s.assert_idempotent(&["--hosts", "web1"]);
}

/// `start`, `stop` and `restart` take the host's lock like a deploy: during a deploy they end
/// `lock held` (exit 5) naming the holder; `status` only reads and answers.
#[test]
fn verbs_that_change_take_the_lock_and_status_does_not() {
    let s = Supervised::with(
        ", \"slow\"",
        r#"
[components.slow]
type = "command"
argv = ["sh", "-c", "sleep 4.217 && touch slept"]
creates = "slept"
"#,
    );
    let mut deploy = s
        .cluster
        .command(s.project.root(), &["prod", "--hosts", "web1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // `slow` comes after `web`: once it sleeps, web runs and the deploy holds the lock.
    procs::wait_until(
        "the deploy to reach `slow`",
        Duration::from_secs(30),
        || procs::sleeping("4.217"),
    );
    let out = s.run(&["prod", "service", "status", "--hosts", "web1", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(services(&out)["web1"]["status"]["running"], true);
    let pid = s.pid("web1").unwrap();
    let out = s.run(&["prod", "service", "restart", "--hosts", "web1"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr.contains("web1: lock held")
            && out.stderr.contains("host is locked by a deploy of"),
        "{}",
        out.stderr
    );
    assert_eq!(s.pid("web1"), Some(pid), "nothing was restarted");
    procs::wait_until("the deploy to end", Duration::from_secs(30), || {
        deploy.try_wait().unwrap().is_some()
    });
    assert!(deploy.wait().unwrap().success());
    // Free again: the verb runs; then deploys of both hosts change nothing but web2's first.
    let out = s.run(&["prod", "service", "restart", "--hosts", "web1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_ne!(s.pid("web1"), Some(pid));
    let out = s.run(&["prod"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    s.assert_idempotent(&[]);
}
