//! Host groups and `--hosts` exclusions on three hosts, `--dry-run --detailed-exitcode`, and
//! the offline verbs (`check`, `graph`) with no host running.

use crate::harness::{Cluster, Project};

const GROUPS: &str = r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["motd"]

[hosts.web2]
components = ["motd"]

[hosts.db1]
components = ["motd"]

[groups]
web = ["web1", "web2"]

[components.motd]
type = "file"
path = "motd"
content = "Welcome to {{ host.name }}\n"
"#;

fn motd(cluster: &Cluster, host: &str) -> bool {
    cluster.host(host).home.join("srv/work/motd/motd").exists()
}

#[test]
fn groups_and_exclusions_select_hosts_for_deploys_and_verbs() {
    let cluster = Cluster::start(&["web1", "web2", "db1"]);
    let p = Project::new();
    p.env("prod", GROUPS);

    // A group, less one of its hosts.
    let out = cluster.run(p.root(), &["prod", "--json", "--hosts", "web,!web2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.statuses().keys().cloned().collect::<Vec<_>>(), ["web1"]);
    assert!(motd(&cluster, "web1"));
    assert!(!motd(&cluster, "web2") && !motd(&cluster, "db1"));
    assert_eq!(cluster.host("web2").logins(), 0);
    assert_eq!(cluster.host("db1").logins(), 0);

    // An exclusion alone: every host but that one.
    let out = cluster.run(p.root(), &["prod", "--json", "--hosts", "!db1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let statuses = out.statuses();
    assert_eq!(
        statuses.keys().cloned().collect::<Vec<_>>(),
        ["web1", "web2"]
    );
    assert_eq!(statuses["web1"], "unchanged");
    assert_eq!(statuses["web2"], "changed");
    assert!(!motd(&cluster, "db1"));
    assert_eq!(cluster.host("db1").logins(), 0);

    // A dry run of the group predicts nothing, and the rest exits 2 with the detailed code.
    let out = cluster.run(
        p.root(),
        &["prod", "--dry-run", "--detailed-exitcode", "--hosts", "web"],
    );
    assert_eq!(out.code, 0, "nothing pending on `web`: {}", out.stderr);
    let out = cluster.run(
        p.root(),
        &["prod", "--dry-run", "--detailed-exitcode", "--json"],
    );
    assert_eq!(out.code, 2, "db1 would change: {}", out.stderr);
    assert_eq!(out.statuses()["db1"], "changed");
    assert!(!motd(&cluster, "db1"), "a dry run changes nothing");

    // Unknown names are refused before any host is contacted.
    let logins: Vec<usize> = ["web1", "web2", "db1"]
        .iter()
        .map(|h| cluster.host(h).logins())
        .collect();
    for (hosts, want) in [
        (
            "webb",
            "unknown host or group `webb` in `--hosts` for environment `prod` (did you mean `web`?)",
        ),
        (
            "web,!web3",
            "unknown host or group `web3` in `--hosts` for environment `prod` (did you mean `web`?)",
        ),
        (
            "web,!web",
            "`--hosts web,!web` selects no host of environment `prod`",
        ),
    ] {
        let out = cluster.run(p.root(), &["prod", "--hosts", hosts]);
        assert_eq!(out.code, 3, "{hosts}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{hosts}: {}", out.stderr);
    }
    let after: Vec<usize> = ["web1", "web2", "db1"]
        .iter()
        .map(|h| cluster.host(h).logins())
        .collect();
    assert_eq!(logins, after, "no host was contacted");

    // The whole environment converges, then changes nothing.
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.statuses()["db1"], "changed");
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
    let out = cluster.run(p.root(), &["prod", "--dry-run", "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}
