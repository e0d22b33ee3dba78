//! The `service` verbs of `batou-remote`: `<ENVIRONMENT> service status|start|stop|restart
//! [COMPONENT]...` on every host (or those of `--hosts`), in parallel, against real sshd
//! hosts; the command line's shape (an environment may be called `service`) and its errors.

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

/// `batou-remote [the cluster's options] ARGS...`.
fn remote(cluster: &Cluster, p: &Project, args: &[&str]) -> Outcome {
    Command::new(env!("CARGO_BIN_EXE_batou-remote"))
        .arg("-C")
        .arg(p.root())
        .arg("--ssh-config")
        .arg(&cluster.ssh_config)
        .args(["--connect-timeout", "3", "--agent-timeout", "20"])
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("BATOU_PROJECT_BINARY")
        .output()
        .unwrap()
        .into()
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
