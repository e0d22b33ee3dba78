//! The example project with its own component types, deployed to three hosts.

use crate::harness::{Cluster, workspace_root};

#[test]
fn three_hosts_with_a_cross_host_dependency() {
    let cluster = Cluster::start(&["db1", "web1", "web2"]);
    let shop = workspace_root().join("examples/shop");
    let out = cluster.run(&shop, &["production", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, out.stdout);
    // The project's own binary was shipped, and it configured the same way on every host.
    assert_eq!(out.count("agent_uploaded"), 3);
    for web in ["web1", "web2"] {
        let conf =
            std::fs::read_to_string(cluster.host(web).home.join("srv/work/app/config/app.toml"))
                .unwrap();
        assert!(
            conf.contains("url = \"postgres://db1:5432/shop\""),
            "{conf}"
        );
    }
    assert!(!cluster.host("db1").home.join("srv/work/app").exists());

    // The journals show each app step starting after the database step finished.
    let db_done = step(&cluster.host("db1").journal("srv"), "database")["time"]
        .as_str()
        .unwrap()
        .to_string();
    for web in ["web1", "web2"] {
        let journal = cluster.host(web).journal("srv");
        let app = step(&journal, "app");
        let started = app["started"].as_str().unwrap();
        assert!(
            started > db_done.as_str(),
            "{web}: app started {started}, database finished {db_done}"
        );
    }

    let again = cluster.run(&shop, &["production", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
    assert_eq!(again.count("agent_uploaded"), 0);
}

fn step<'a>(journal: &'a [serde_json::Value], component: &str) -> &'a serde_json::Value {
    journal
        .iter()
        .find(|r| r["record"] == "step" && r["component"] == component)
        .unwrap_or_else(|| panic!("no step record for {component}: {journal:?}"))
}
