//! Rolling deploys behind a real nginx: four app hosts (loopback sshd hosts, each with its
//! own runsvdir supervising a Python HTTP server that serves its release) and a balancer
//! host whose `nginx_site` renders the upstreams from `rollout.in_rotation`. A load loop
//! sends requests through nginx for the whole rollout of a new release: none may fail. Then a
//! release whose health fails on its first host: the rollout stops at the budget, the other
//! hosts keep the old release, nginx routes only to healthy hosts. Every scenario ends with
//! a converge that changes nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use batou_test_support::{Nginx, Runsvdir, free_port};

use crate::harness::{Cluster, Outcome, Project};

const APPS: [&str; 4] = ["app1", "app2", "app3", "app4"];

struct Scenario {
    cluster: Cluster,
    project: Project,
    runit: Vec<Runsvdir>,
    nginx: Nginx,
    /// The port every app host's server listens on, at its own address.
    port: u16,
    /// nginx's port for the apps.
    listen: u16,
}

impl Scenario {
    fn new() -> Scenario {
        let mut names = APPS.to_vec();
        names.push("lb");
        let cluster = Cluster::start(&names);
        // The environment gives the app hosts their loopback addresses (the balancer's
        // upstreams are those); ssh must find the same settings under them.
        let config = std::fs::read_to_string(&cluster.ssh_config).unwrap();
        let mut text = String::new();
        for block in config.split("\n\n").filter(|b| !b.trim().is_empty()) {
            let name = block.lines().next().unwrap().trim_start_matches("Host ");
            let address = &cluster.host(name).address;
            text.push_str(&block.replacen(
                &format!("Host {name}\n"),
                &format!("Host {name} {address}\n"),
                1,
            ));
            text.push_str("\n\n");
        }
        std::fs::write(&cluster.ssh_config, text).unwrap();
        let status = free_port();
        let nginx = Nginx::start(
            &format!("server {{ listen 127.0.0.1:{status}; return 200 \"up\\n\"; }}\n"),
            status,
        );
        let s = Scenario {
            runit: APPS.iter().map(|_| Runsvdir::start()).collect(),
            port: free_port(),
            listen: free_port(),
            cluster,
            project: Project::new(),
            nginx,
        };
        s.env("");
        s.project.file(
            "upstreams.conf.j2",
            "upstream apps {\n\
             {% for h in rollout.in_rotation %}    server {{ h.address }}:{{ port }};\n{% endfor %}\
             {% if not rollout.in_rotation %}    server 127.0.0.1:1 down;\n{% endif %}\
             }\n\
             server {\n    listen 127.0.0.1:{{ listen }};\n    location / {\n        proxy_pass http://apps;\n        proxy_next_upstream off;\n    }\n}\n",
        );
        s
    }

    /// The environment, with `extra` lines in `[rollout]`.
    fn env(&self, extra: &str) {
        let mut allow: Vec<String> = self
            .runit
            .iter()
            .map(|r| format!("\"{}\"", r.service_dir().display()))
            .collect();
        allow.push(format!("\"{}\"", self.nginx.dir().display()));
        let mut text = format!(
            "[environment]\nbase_dir = \"srv\"\nallow_paths = [{}]\n\n",
            allow.join(", ")
        );
        for (name, runit) in APPS.iter().zip(&self.runit) {
            text.push_str(&format!(
                "[hosts.{name}]\naddress = \"{}\"\ncomponents = [\"app\", \"web\"]\ndata = {{ service_dir = \"{}\" }}\n\n",
                self.cluster.host(name).address,
                runit.service_dir().display()
            ));
        }
        let n = self.nginx.dir().display();
        text.push_str(&format!(
            r#"[hosts.lb]
address = "{lb}"
components = ["upstreams"]

[rollout]
component = "app"
batch = [1, "50%"]
max_failed = 0
balancer = "upstreams"
drain_wait = "300ms"
{extra}

[components.app]
type = "release"
files = ["site/"]

[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{port}", "--bind", "{{{{ host.address }}}}"]
cwd = "{{{{ releases.app.current }}}}/site"
restart_on = ["app"]
health = {{ http = "http://{{{{ host.address }}}}:{port}/ok.txt", within = "2s", stable = "300ms" }}

[components.upstreams]
type = "nginx_site"
path = "{n}/sites/apps.conf"
template = "upstreams.conf.j2"
vars = {{ port = {port}, listen = {listen} }}
config = "{n}/nginx.conf"
prefix = "{n}"
"#,
            lb = self.cluster.host("lb").address,
            port = self.port,
            listen = self.listen,
        ));
        self.project.env("prod", &text);
    }

    fn site(&self, version: &str, healthy: bool) {
        self.project.file("site/index.html", version);
        if healthy {
            self.project.file("site/ok.txt", "ok\n");
        } else {
            let _ = std::fs::remove_file(self.project.path("site/ok.txt"));
        }
    }

    fn run(&self) -> Outcome {
        self.cluster
            .run(self.project.root(), &["prod", "--json", "--jobs", "8"])
    }

    fn deploy(&self) -> Outcome {
        let out = self.run();
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        out
    }

    fn assert_unchanged(&self) {
        let out = self.deploy();
        assert_eq!(out.changed(), Vec::<String>::new(), "{}", out.stdout);
        assert_eq!(
            out.count("rollout_hook"),
            0,
            "nothing drained: {}",
            out.stdout
        );
    }

    /// What `host`'s own server answers for `/`.
    fn served(&self, host: &str) -> String {
        let address = self.cluster.host(host).address.clone();
        get(&address, self.port).unwrap_or_else(|e| panic!("{host}: {e}"))
    }

    fn upstreams(&self) -> String {
        std::fs::read_to_string(self.nginx.sites().join("apps.conf")).unwrap()
    }
}

/// `GET /` on `address:port` over HTTP/1.1, one connection per request: the body of a 200,
/// or what went wrong.
fn get(address: &str, port: u16) -> Result<String, String> {
    let mut s = TcpStream::connect((address, port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: apps\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    s.read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end: {response:?}"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    Ok(body.to_string())
}

/// Requests through nginx in a loop until stopped (or a deadline passes).
struct Load {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Vec<String>, Vec<String>)>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(180);
            let (mut ok, mut failed) = (Vec::new(), Vec::new());
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                match get("127.0.0.1", port) {
                    Ok(body) => ok.push(body),
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        });
        Load { stop, thread }
    }

    /// The bodies answered and the failures.
    fn stop(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

/// `(host, batch)` of the first `rollout` record of the last deploy in each app host's
/// journal, and the time its step started and ended.
fn batches(s: &Scenario) -> Vec<(String, u64, String, String)> {
    let mut out = Vec::new();
    for host in APPS {
        let journal = s.cluster.host(host).journal("srv");
        let started = journal
            .iter()
            .rposition(|r| r["record"] == "started")
            .unwrap();
        let last = &journal[started..];
        let batch = last
            .iter()
            .find(|r| r["record"] == "rollout" && r["component"] == "app")
            .unwrap_or_else(|| panic!("{host}: no rollout record in {last:?}"));
        let step = last
            .iter()
            .find(|r| r["record"] == "step" && r["component"] == "app")
            .unwrap();
        out.push((
            host.to_string(),
            batch["batch"].as_u64().unwrap(),
            step["started"].as_str().unwrap().to_string(),
            step["time"].as_str().unwrap().to_string(),
        ));
    }
    out
}

#[test]
fn a_rolling_deploy_behind_nginx_drops_no_request_and_a_bad_release_stops_at_the_budget() {
    let s = Scenario::new();
    s.site("v1", true);
    s.deploy();
    Nginx::wait_for_body(s.listen, "v1");
    for host in APPS {
        assert_eq!(s.served(host), "v1");
    }
    s.assert_unchanged();

    // A new release rolls out under load: no request fails.
    s.site("v2", true);
    let load = Load::start(s.listen);
    let out = s.deploy();
    let (ok, failed) = load.stop();
    assert_eq!(failed, Vec::<String>::new(), "{} answered", ok.len());
    assert!(
        ok.len() > 50,
        "the load ran during the rollout: {}",
        ok.len()
    );
    assert!(ok.iter().all(|b| b == "v1" || b == "v2"), "{ok:?}");
    for host in APPS {
        assert_eq!(s.served(host), "v2");
    }
    Nginx::wait_for_body(s.listen, "v2");
    // The batches, in order, in the events and in the journals.
    let events = out.events();
    let announced: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "rollout_batch")
        .map(|e| format!("{}: {}", e["batch"], e["hosts"]))
        .collect();
    assert_eq!(
        announced,
        [r#"1: ["app1"]"#, r#"2: ["app2","app3"]"#, r#"3: ["app4"]"#]
    );
    let hooks: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "rollout_hook")
        .map(|e| format!("{} {}: {}", e["hook"], e["batch"], e["in_rotation"]))
        .collect();
    assert_eq!(
        hooks,
        [
            r#""drain" 1: ["app2","app3","app4"]"#,
            r#""undrain" 1: ["app1","app2","app3","app4"]"#,
            r#""drain" 2: ["app1","app4"]"#,
            r#""undrain" 2: ["app1","app2","app3","app4"]"#,
            r#""drain" 3: ["app1","app2","app3"]"#,
            r#""undrain" 3: ["app1","app2","app3","app4"]"#,
        ]
    );
    let journals = batches(&s);
    let batch_of: Vec<u64> = journals.iter().map(|(_, b, _, _)| *b).collect();
    assert_eq!(batch_of, [1, 2, 2, 3]);
    // Each batch started after the one before had ended (RFC 3339 in UTC sorts as text).
    assert!(journals[0].3 < journals[1].2 && journals[0].3 < journals[2].2);
    assert!(journals[1].3 < journals[3].2 && journals[2].3 < journals[3].2);
    let lb: Vec<String> = s
        .cluster
        .host("lb")
        .journal("srv")
        .iter()
        .filter(|r| r["record"] == "rollout")
        .map(|r| format!("{} {}", r["hook"], r["batch"]))
        .collect();
    assert_eq!(
        lb[lb.len() - 6..],
        [
            r#""drain" 1"#,
            r#""undrain" 1"#,
            r#""drain" 2"#,
            r#""undrain" 2"#,
            r#""drain" 3"#,
            r#""undrain" 3"#
        ]
    );
    s.assert_unchanged();

    // A release whose health fails: the first host fails and stays drained, the rollout
    // stops, the others keep serving v2, and nginx routes only to them.
    s.site("v3", false);
    let load = Load::start(s.listen);
    let out = s.run();
    let (ok, failed) = load.stop();
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(failed, Vec::<String>::new(), "{} answered", ok.len());
    assert!(ok.iter().all(|b| b == "v2"), "{ok:?}");
    let statuses = out.statuses();
    assert_eq!(statuses["app1"], "failed", "{statuses:?}");
    for host in ["app2", "app3", "app4"] {
        assert_eq!(statuses[host], "not_attempted", "{statuses:?}");
    }
    let stopped = out
        .events()
        .into_iter()
        .find(|e| e["event"] == "rollout_stopped")
        .expect("rollout_stopped");
    assert_eq!(stopped["batch"], 1);
    assert_eq!(stopped["failed"], serde_json::json!(["app1"]));
    assert_eq!(
        stopped["not_attempted"],
        serde_json::json!(["app2", "app3", "app4"])
    );
    for host in APPS {
        // app1 rolled back to v2 by itself; the others were never touched.
        assert_eq!(s.served(host), "v2", "{host}");
    }
    let upstreams = s.upstreams();
    assert!(
        !upstreams.contains(&format!("{}:", s.cluster.host("app1").address)),
        "{upstreams}"
    );
    for host in ["app2", "app3", "app4"] {
        assert!(
            upstreams.contains(&format!("{}:", s.cluster.host(host).address)),
            "{upstreams}"
        );
    }
    for _ in 0..20 {
        assert_eq!(get("127.0.0.1", s.listen).as_deref(), Ok("v2"));
    }

    // Back to the good release: the balancer's own converge puts app1 back into rotation,
    // no host would change, so nothing is drained; then nothing changes at all.
    s.site("v2", true);
    let out = s.deploy();
    assert_eq!(out.count("rollout_hook"), 0, "{}", out.stdout);
    assert!(
        s.upstreams()
            .contains(&format!("{}:", s.cluster.host("app1").address))
    );
    s.assert_unchanged();
}

/// `--batch` and `--max-failed` on the command line: two hosts at a time, a budget of 25%
/// of four hosts (one); and a balancer outside `--hosts`, refused before any connection.
#[test]
fn the_command_line_sets_batches_and_budget_and_a_config_error_contacts_no_host() {
    let s = Scenario::new();
    s.site("v1", true);
    let out = s.cluster.run(
        s.project.root(),
        &["prod", "--json", "--batch", "2", "--max-failed", "25%"],
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let batches: Vec<serde_json::Value> = out
        .events()
        .into_iter()
        .filter(|e| e["event"] == "rollout_batch")
        .map(|e| e["hosts"].clone())
        .collect();
    assert_eq!(
        batches,
        [
            serde_json::json!(["app1", "app2"]),
            serde_json::json!(["app3", "app4"])
        ]
    );
    assert!(
        out.events()
            .iter()
            .all(|e| e["event"] != "rollout_batch" || e["max_failed"] == 1)
    );
    s.assert_unchanged();

    // The balancer outside `--hosts`: refused before any connection.
    let logins = s.cluster.host("app1").logins();
    let out = s
        .cluster
        .run(s.project.root(), &["prod", "--hosts", "app1,app2"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "the rollout's balancer `upstreams` runs on host `lb`, which is not in this run"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(s.cluster.host("app1").logins(), logins);
}
