//! Platform facts on a loopback host: gathered only because a template reads them, shipped
//! in the job, checked by the agent, and rendered on the host.

use crate::harness::{Cluster, Project};

#[test]
fn a_template_reads_the_hosts_facts_and_the_agent_agrees() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.file(
        "platform.j2",
        "{{ host.facts.os }} {{ host.facts.distribution }} {{ host.facts.architecture }}\n",
    );
    p.env(
        "prod",
        r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["platform"]

[hosts.web2]
components = ["platform"]

[components.platform]
type = "file"
path = "platform"
template = "platform.j2"
"#,
    );
    let logins = [cluster.host("web1").logins(), cluster.host("web2").logins()];
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, out.stdout);
    // On each host, one login to gather the facts (the hosts are asked at once), one to deploy.
    assert_eq!(cluster.host("web1").logins() - logins[0], 2);
    assert_eq!(cluster.host("web2").logins() - logins[1], 2);
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let id = os_release
        .lines()
        .find_map(|l| l.strip_prefix("ID="))
        .unwrap_or_default()
        .trim_matches('"')
        .to_string();
    for host in ["web1", "web2"] {
        assert_eq!(
            std::fs::read_to_string(cluster.host(host).home.join("srv/work/platform/platform"))
                .unwrap(),
            format!("linux {id} {}\n", std::env::consts::ARCH)
        );
    }
    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}

#[test]
fn an_agent_that_finds_other_facts_than_the_plan_refuses_and_changes_nothing() {
    let cluster = Cluster::start(&["web1"]);
    let home = cluster.host("web1").home.clone();
    // bash, started by sshd for every command, reads the login's ~/.bashrc: the first login
    // (the controller gathering facts) leaves a mark, and every later one (the agent) finds
    // a `uname` that names another architecture first on its PATH.
    let fake = home.join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(
        fake.join("uname"),
        "#!/bin/sh\nif [ \"$1\" = -m ]; then echo aarch64; else exec /bin/uname \"$@\"; fi\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(fake.join("uname"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        home.join(".bashrc"),
        "if [ -e \"$HOME/.gathered\" ]; then export PATH=\"$HOME/fakebin:$PATH\"; else touch \"$HOME/.gathered\"; fi\n",
    )
    .unwrap();
    let p = Project::new();
    p.file("platform.j2", "{{ host.facts.architecture }}\n");
    p.env(
        "prod",
        r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["platform"]

[components.platform]
type = "file"
path = "platform"
template = "platform.j2"
"#,
    );
    let out = cluster.run(p.root(), &["prod"]);
    assert!(
        home.join(".gathered").exists(),
        "the host's shell did not read ~/.bashrc: {}",
        out.stderr
    );
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "the controller planned with other facts of host `web1` than the agent finds"
        ) && out.stderr.contains("aarch64"),
        "{}",
        out.stderr
    );
    assert!(!home.join("srv/work/platform/platform").exists());

    // With the host's own `uname` again, the next deploy converges, and the one after that
    // changes nothing.
    std::fs::remove_file(home.join(".bashrc")).unwrap();
    let fixed = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(fixed.code, 0, "{}", fixed.stderr);
    assert_eq!(
        std::fs::read_to_string(home.join("srv/work/platform/platform")).unwrap(),
        format!("{}\n", std::env::consts::ARCH)
    );
    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}

/// The `plan` role that a project's own binary answers for the controller: without facts it
/// names the hosts whose facts configure read; with `--facts FILE` it plans with them.
#[test]
fn the_plan_role_asks_for_facts_and_plans_with_those_it_is_given() {
    let p = Project::new();
    p.env(
        "prod",
        r#"
[environment]
base_dir = "srv"

[hosts.web1]
address = "127.0.0.2"
components = ["platform"]

[hosts.db1]
address = "127.0.0.3"
components = ["other"]

[components.platform]
type = "file"
path = "{{ host.facts.architecture }}-{{ host.facts.distribution }}.txt"
content = "x\n"

[components.other]
type = "file"
path = "other"
content = "y\n"
"#,
    );
    let binary = batou_test_support::bin("batou-remote");
    let root = p.root().to_str().unwrap();
    let asked = batou_test_support::run_binary(&binary, p.root(), &["plan", "prod", root]);
    assert_eq!(asked.code, 0, "{}", asked.stderr);
    let asked: serde_json::Value = serde_json::from_str(&asked.stdout).unwrap();
    let needed: Vec<&str> = asked["facts_needed"]
        .as_array()
        .unwrap_or_else(|| panic!("no `facts_needed` in {asked}"))
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(needed, ["web1"], "only the host whose facts were read");

    let facts = p.root().join("facts.json");
    std::fs::write(
        &facts,
        r#"{"web1": {"os": "linux", "architecture": "riscv64", "distribution": "testos", "version": "1"}}"#,
    )
    .unwrap();
    let planned = batou_test_support::run_binary(
        &binary,
        p.root(),
        &["plan", "prod", root, "--facts", facts.to_str().unwrap()],
    );
    assert_eq!(planned.code, 0, "{}", planned.stderr);
    let plan: serde_json::Value = serde_json::from_str(&planned.stdout).unwrap();
    assert!(plan.get("facts_needed").is_none(), "{plan}");
    let text = plan.to_string();
    assert!(text.contains("riscv64-testos.txt"), "{text}");
}
