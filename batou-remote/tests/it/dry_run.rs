//! Dry runs across hosts: a prediction that fails on one host stops no other host's
//! prediction, also of steps that depend on the failed one.

use std::collections::BTreeSet;

use crate::harness::{Cluster, snapshot, workspace_root};

/// `(host, component)` of every `changed` event, sorted (hosts interleave).
fn changes(events: &[serde_json::Value]) -> BTreeSet<(String, String)> {
    events
        .iter()
        .filter(|e| e["event"] == "changed")
        .map(|e| {
            (
                e["host"].as_str().unwrap().to_string(),
                e["component"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_failed_prediction_on_one_host_leaves_the_others_predicted() {
    let cluster = Cluster::start(&["db1", "web1", "web2"]);
    let shop = workspace_root().join("examples/shop");
    // On db1, a directory stands where `database` wants its file: its verify fails.
    let db1 = cluster.host("db1");
    let in_the_way = db1.home.join("srv/work/database/database.conf");
    std::fs::create_dir_all(&in_the_way).unwrap();
    let before: Vec<_> = cluster
        .hosts
        .values()
        .map(|h| snapshot(&h.home.join("srv")))
        .collect();

    let out = cluster.run(&shop, &["production", "--dry-run"]);
    assert_eq!(
        out.code, 1,
        "the failure sets the exit code\n{}",
        out.stderr
    );
    let e = &out.stderr;
    assert!(
        e.contains("db1: failed database > File('database.conf')"),
        "{e}"
    );
    // db1's later step, and the apps on web1 and web2 that require `database`, are predicted.
    assert!(e.contains("db1: would change motd (missing)"), "{e}");
    for web in ["web1", "web2"] {
        assert!(
            e.contains(&format!(
                "{web}: app: predicted as if `db1: database` would succeed: its own prediction failed"
            )),
            "{e}"
        );
        assert!(e.contains(&format!("{web}: would change app > ")), "{e}");
    }
    assert!(
        e.contains("  db1   failed           `database` failed; would change: motd\n"),
        "{e}"
    );
    assert!(
        e.contains("  web1  changed          would change: app, motd\n"),
        "{e}"
    );

    let dry = cluster.run(&shop, &["production", "--dry-run", "--json"]);
    assert_eq!(dry.code, 1, "{}", dry.stderr);
    let statuses = dry.statuses();
    assert_eq!(statuses["db1"], "failed");
    assert_eq!(statuses["web1"], "changed");
    assert_eq!(statuses["web2"], "changed");
    let after: Vec<_> = cluster
        .hosts
        .values()
        .map(|h| snapshot(&h.home.join("srv")))
        .collect();
    // (The agent binary may have been uploaded into `~/.cache`; nothing else changed.)
    assert_eq!(before, after, "a dry run changed a host");

    // Without the fault, the run changes on web1 and web2 exactly what was predicted
    // there, and a second run changes nothing.
    std::fs::remove_dir(&in_the_way).unwrap();
    let real = cluster.run(&shop, &["production", "--json"]);
    assert_eq!(real.code, 0, "{}", real.stderr);
    let on_web = |set: BTreeSet<(String, String)>| -> BTreeSet<(String, String)> {
        set.into_iter().filter(|(h, _)| h != "db1").collect()
    };
    assert_eq!(
        on_web(changes(&dry.events())),
        on_web(changes(&real.events()))
    );
    let again = cluster.run(&shop, &["production", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}
