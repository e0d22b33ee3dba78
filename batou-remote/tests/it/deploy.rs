//! Deploying environments to several hosts.

use crate::harness::{Cluster, Project, snapshot};

const FILES: &str = r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["motd", "conf"]

[hosts.web2]
components = ["motd"]

[components.motd]
type = "file"
path = "motd"
content = "Welcome to {{ host.name }}\n"

[components.conf]
type = "file"
path = "app.conf"
content = "port = 8080\n"
mode = 0o640
"#;

#[test]
fn deploys_files_to_two_hosts_then_changes_nothing() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", FILES);
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, out.stdout);
    assert_eq!(out.count("agent_uploaded"), 2);
    let web1 = cluster.host("web1");
    assert_eq!(
        std::fs::read_to_string(web1.home.join("srv/work/motd/motd")).unwrap(),
        "Welcome to web1\n"
    );
    assert_eq!(
        std::fs::read_to_string(cluster.host("web2").home.join("srv/work/motd/motd")).unwrap(),
        "Welcome to web2\n"
    );
    assert!(!cluster.host("web2").home.join("srv/work/conf").exists());
    let statuses = out.statuses();
    assert_eq!(statuses["web1"], "changed");
    assert_eq!(statuses["web2"], "changed");

    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
    assert_eq!(again.count("agent_uploaded"), 0);
    assert_eq!(again.statuses()["web1"], "unchanged");

    let records: Vec<String> = web1
        .journal("srv")
        .iter()
        .map(|r| r["record"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        records,
        [
            "started", "step", "step", "finished", "started", "step", "step", "finished"
        ]
    );
}

#[test]
fn human_output_is_live_prefixed_and_summarised() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", FILES);
    let out = cluster.run(p.root(), &["prod"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let e = &out.stderr;
    assert!(e.contains("web1: changed motd (missing)\n"), "{e}");
    assert!(e.contains("web2:     +Welcome to web2\n"), "{e}");
    assert!(e.contains("summary:\n"), "{e}");
    assert!(
        e.contains("  web1  changed          changed: motd, conf\n"),
        "{e}"
    );
    assert!(
        e.contains("2 hosts: 2 changed, 0 unchanged, 0 failed in "),
        "{e}"
    );
}

#[test]
fn dry_run_changes_nothing_on_any_host() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", FILES);
    let out = cluster.run(p.root(), &["prod", "--dry-run", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.count("changed") >= 3);
    for h in cluster.hosts.values() {
        assert!(
            !h.home.join("srv").exists(),
            "dry run created the base directory on {}",
            h.name
        );
    }

    cluster.run(p.root(), &["prod"]);
    std::fs::write(
        cluster.host("web1").home.join("srv/work/conf/app.conf"),
        "drift\n",
    )
    .unwrap();
    let before: Vec<_> = cluster
        .hosts
        .values()
        .map(|h| snapshot(&h.home.join("srv")))
        .collect();
    let out = cluster.run(p.root(), &["prod", "--dry-run", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let changed: Vec<_> = out
        .events()
        .into_iter()
        .filter(|e| e["event"] == "changed")
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["component"], "conf");
    assert_eq!(changed[0]["dry_run"], true);
    let after: Vec<_> = cluster
        .hosts
        .values()
        .map(|h| snapshot(&h.home.join("srv")))
        .collect();
    assert_eq!(before, after, "a dry run changed a host");
}

#[test]
fn configuration_errors_open_no_connection() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", &FILES.replace("[\"motd\"]", "[\"motdd\"]"));
    let out = cluster.run(p.root(), &["prod"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "unknown component `motdd` in environments/prod.toml:9:15 (did you mean `motd`?)"
        ),
        "{}",
        out.stderr
    );
    for h in cluster.hosts.values() {
        assert_eq!(h.logins(), 0, "{} was contacted", h.name);
    }
    p.env("prod", FILES);
    let out = cluster.run(p.root(), &["prod", "--hosts", "web3"]);
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.contains("unknown host `web3` in `--hosts`"),
        "{}",
        out.stderr
    );
    for h in cluster.hosts.values() {
        assert_eq!(h.logins(), 0, "{} was contacted", h.name);
    }
}
