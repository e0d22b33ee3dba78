//! The command line: `deploy`, environments named like commands, `secrets` as a command.

use std::process::Command;

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

/// `batou-remote deploy [the cluster's options] ARGS...`.
fn deploy(cluster: &Cluster, p: &Project, args: &[&str]) -> Outcome {
    Command::new(env!("CARGO_BIN_EXE_batou-remote"))
        .arg("deploy")
        .arg("-C")
        .arg(p.root())
        .arg("--ssh-config")
        .arg(&cluster.ssh_config)
        .args(["--connect-timeout", "3", "--agent-timeout", "10"])
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env("BATOU_AGENT_DIR", batou_test_support::agent_dir())
        .env_remove("BATOU_PROJECT_BINARY")
        .output()
        .unwrap()
        .into()
}

#[test]
fn environments_named_like_commands_deploy_with_deploy() {
    let cluster = Cluster::start(&["web1"]);
    for name in ["agent", "plan", "secrets", "deploy", "agent-install"] {
        let p = Project::new();
        p.env(name, MOTD);
        let out = deploy(&cluster, &p, &[name, "--json"]);
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        assert_eq!(out.statuses()["web1"], "changed", "{name}");
        let journal = cluster.host("web1").journal("srv");
        assert_eq!(journal.last().unwrap()["environment"], name);
        let out = deploy(&cluster, &p, &[name, "--json"]);
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        assert_eq!(out.count("changed"), 0, "{name}: {}", out.stdout);
        // Reset the host for the next name.
        std::fs::remove_dir_all(cluster.host("web1").home.join("srv")).unwrap();
    }
}

#[test]
fn help_lists_deploy_and_secrets_but_not_the_roles() {
    let out = Command::new(env!("CARGO_BIN_EXE_batou-remote"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("\n  deploy "), "{help}");
    assert!(help.contains("\n  secrets "), "{help}");
    for role in ["agent", "plan", "agent-install"] {
        assert!(!help.contains(&format!("\n  {role} ")), "{help}");
    }
    // `secrets` keeps its own help.
    let out = Command::new(env!("CARGO_BIN_EXE_batou-remote"))
        .args(["secrets", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("add-recipient"), "{help}");
}
