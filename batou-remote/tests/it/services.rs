//! Services on two loopback sshd hosts: each host has its own runsvdir (started by the test,
//! stopped by PID) and names its service directory in host data; the service is a real HTTP
//! server on a loopback port of its own.

use batou_test_support::{Runsvdir, procs};

use crate::harness::{Cluster, Project};

use batou_test_support::free_port;

/// The pid runsv reports for `web` on a host whose home is `home`.
fn pid(home: &std::path::Path) -> Option<u32> {
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

fn env(supervisors: &[(&str, &Runsvdir, u16)], content: &str) -> String {
    let allow: Vec<String> = supervisors
        .iter()
        .map(|(_, r, _)| format!("\"{}\"", r.service_dir().display()))
        .collect();
    let mut text = format!(
        "[environment]\nbase_dir = \"srv\"\nallow_paths = [{}]\n\n",
        allow.join(", ")
    );
    for (host, r, port) in supervisors {
        text.push_str(&format!(
            "[hosts.{host}]\ncomponents = [\"config\", \"web\"]\ndata = {{ service_dir = \"{}\", port = {port} }}\n\n",
            r.service_dir().display()
        ));
    }
    text.push_str(&format!(
        r#"[components.config]
type = "file"
path = "index.html"
content = "{content} {{{{ host.name }}}}"

[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{{{{ host.data.port }}}}", "--bind", "127.0.0.1"]
cwd = "../config"
restart_on = ["config"]
health = {{ http = "http://127.0.0.1:{{{{ host.data.port }}}}/", within = "10s", stable = "1s" }}
"#
    ));
    text
}

#[test]
fn a_service_on_two_hosts_starts_stays_and_restarts_on_change() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let (r1, r2) = (Runsvdir::start(), Runsvdir::start());
    let (p1, p2) = (free_port(), free_port());
    let hosts = [("web1", &r1, p1), ("web2", &r2, p2)];
    let p = Project::new();
    p.env("prod", &env(&hosts, "one"));
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, out.stdout);
    let home1 = cluster.host("web1").home.clone();
    let home2 = cluster.host("web2").home.clone();
    let (a, b) = (
        pid(&home1).expect("web on web1"),
        pid(&home2).expect("web on web2"),
    );
    assert_ne!(a, b);

    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
    assert_eq!((pid(&home1), pid(&home2)), (Some(a), Some(b)));

    p.env("prod", &env(&hosts, "two"));
    let changed = cluster.run(p.root(), &["prod"]);
    assert_eq!(changed.code, 0, "{}", changed.stderr);
    assert!(
        changed
            .stderr
            .contains("web1: changed web (restarted (config changed))"),
        "{}",
        changed.stderr
    );
    assert!(
        changed
            .stderr
            .contains("web2: changed web (restarted (config changed))"),
        "{}",
        changed.stderr
    );
    let (a2, b2) = (pid(&home1).unwrap(), pid(&home2).unwrap());
    assert!(a2 != a && b2 != b);
    assert!(!procs::alive(a) && !procs::alive(b));

    let last = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(last.code, 0, "{}", last.stderr);
    assert_eq!(last.count("changed"), 0, "{}", last.stdout);
    assert_eq!((pid(&home1), pid(&home2)), (Some(a2), Some(b2)));
}
