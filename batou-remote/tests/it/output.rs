//! Output of a remote run: `step_finished` travels from the agents like every event, JSON
//! lines carry the controller's timestamps, and `-q` / `-v` shape the human output.

use crate::harness::{Cluster, Project};

const ENVIRONMENT: &str = r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["motd", "banner"]

[components.motd]
type = "file"
path = "motd"
content = "Welcome to {{ host.name }}\n"

[components.banner]
type = "file"
path = "banner"
content = "hello\n"
"#;

#[test]
fn remote_runs_report_every_step_and_honour_quiet_and_verbose() {
    let cluster = Cluster::start(&["web1"]);
    let p = Project::new();
    p.env("prod", ENVIRONMENT);
    let first = cluster.run(p.root(), &["prod", "-q"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(
        first.stderr.starts_with("summary:\n  web1  changed"),
        "-q prints only the summary: {}",
        first.stderr
    );

    p.env("prod", &ENVIRONMENT.replace("hello", "hello again"));
    let json = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(json.code, 0, "{}", json.stderr);
    let events = json.events();
    let finished: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e["event"] == "step_finished")
        .map(|e| {
            (
                e["component"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(finished, [("motd", "unchanged"), ("banner", "changed")]);
    let stamps: Vec<&str> = events.iter().map(|e| e["ts"].as_str().unwrap()).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "one clock for the whole stream: {stamps:?}"
    );

    let verbose = cluster.run(p.root(), &["prod", "-v", "--color", "never"]);
    assert_eq!(verbose.code, 0, "{}", verbose.stderr);
    for name in ["motd", "banner"] {
        assert!(
            verbose
                .stderr
                .contains(&format!("web1: unchanged {name} in ")),
            "{}",
            verbose.stderr
        );
    }
    assert!(
        !verbose.stderr.contains("connecting:"),
        "{}",
        verbose.stderr
    );

    // -vv adds how the host is reached.
    let very = cluster.run(p.root(), &["prod", "-vv", "--color", "never"]);
    assert_eq!(very.code, 0, "{}", very.stderr);
    let connecting = very
        .stderr
        .lines()
        .find(|l| l.starts_with("web1: connecting: ssh "))
        .unwrap_or_else(|| panic!("no connecting line: {}", very.stderr));
    assert!(
        connecting.contains("StrictHostKeyChecking=yes") && connecting.contains(" -- "),
        "{connecting}"
    );
    assert!(
        very.stderr.contains("web1: connected in "),
        "{}",
        very.stderr
    );
    assert!(
        very.stderr.contains("is on the host already"),
        "{}",
        very.stderr
    );
    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.changed(), Vec::<String>::new());
}
