//! The `service` verbs of `batou-local`: `<ENVIRONMENT> service status|start|stop|restart
//! [COMPONENT]...`, the shape of the command line (an environment may be called `service`)
//! and its errors.

use crate::harness::Project;

const MOTD: &str = "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ncontent = \"hi\\n\"\n";

/// The environment comes first: `batou-local service` deploys the environment `service`,
/// `batou-local service service status` is a verb on it, `deploy service` still deploys it.
#[test]
fn an_environment_may_be_called_service() {
    let p = Project::new();
    p.env("service", MOTD);
    let out = p.converge(&["service", "--json"]);
    assert_eq!(out.changed(), ["motd > Workdir", "motd"]);
    p.assert_idempotent(&["deploy", "service"]);
    // A verb on it: the environment has no service, which is an invalid configuration.
    let out = p.run(&["service", "service", "status"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("error: no root component of environment `service` has a service"),
        "{}",
        out.stderr
    );
    let out = p.run(&["deploy", "service", "service", "status"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    p.assert_idempotent(&["service"]);
}

/// Wrong verbs and options are usage errors (exit 2) that say what is possible; nothing runs.
#[test]
fn wrong_verbs_are_usage_errors() {
    let p = Project::new();
    p.env("dev", MOTD);
    let out = p.run(&["dev", "service", "restrat"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("unrecognized subcommand 'restrat'")
            && out.stderr.contains("'restart'")
            && out
                .stderr
                .contains("Usage: batou-local <ENVIRONMENT> service <VERB>"),
        "{}",
        out.stderr
    );
    let out = p.run(&["dev", "reboot"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("unrecognized subcommand 'reboot'"),
        "{}",
        out.stderr
    );
    // `service` alone lists the verbs.
    let out = p.run(&["dev", "service"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    for verb in ["status", "start", "stop", "restart"] {
        assert!(out.stderr.contains(&format!("  {verb} ")), "{}", out.stderr);
    }
    let out = p.run(&["dev", "service", "stop", "--dry-run"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("`--dry-run` does not apply to the `service` verbs"),
        "{}",
        out.stderr
    );
    assert!(!p.path("work").exists(), "nothing ran");
}
