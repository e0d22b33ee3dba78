//! The built-in demo: deploys from a copy of this repository's environment and demo files.

use crate::harness::{Project, snapshot, workspace_root};

pub(crate) fn demo_project() -> Project {
    let p = Project::new();
    let root = workspace_root();
    let copy = |rel: &str| {
        let status = std::process::Command::new("cp")
            .arg("-r")
            .arg(root.join(rel))
            .arg(p.path(rel).parent().unwrap())
            .status()
            .unwrap();
        assert!(status.success());
    };
    copy("environments/dev.toml");
    copy("demo");
    p
}

#[test]
fn demo_deploys_and_second_run_changes_nothing() {
    let p = demo_project();
    let out = p.converge_twice(&["dev"]);
    assert!(
        out.stderr.contains("localhost: changed homepage (missing)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("summary:\n  localhost  changed          changed: site, homepage, nginx, docroot\n1 host: 1 changed, 0 unchanged, 0 failed in "),
        "{}",
        out.stderr
    );
    let index = std::fs::read_to_string(p.path("work/site/htdocs/index.html")).unwrap();
    assert!(index.contains("<h1>Hello from batou</h1>"), "{index}");
    assert!(p.path("work/site/htdocs/css/site.css").is_file());
    let conf = std::fs::read_to_string(p.path("work/nginx/site.conf")).unwrap();
    assert!(conf.contains("server_name localhost.test;"), "{conf}");
    assert_eq!(
        std::fs::read_link(p.path("work/docroot/current")).unwrap(),
        std::path::Path::new("../site/htdocs")
    );
}

#[test]
fn dry_run_leaves_the_tree_byte_identical() {
    let p = demo_project();
    let before = snapshot(p.root());
    let out = p.converge(&["dev", "--dry-run"]);
    assert!(
        out.stderr.contains("would change homepage (missing)"),
        "{}",
        out.stderr
    );
    assert_eq!(snapshot(p.root()), before, "a dry run changed the project");

    // Also when a deployment exists and differs.
    p.converge(&["dev"]);
    std::fs::write(p.path("work/site/htdocs/about.html"), "edited\n").unwrap();
    let before = snapshot(p.root());
    let out = p.converge(&["dev", "--dry-run", "--json"]);
    assert_eq!(out.changed(), vec!["site > File('htdocs/about.html')"]);
    assert_eq!(snapshot(p.root()), before);
}

#[test]
fn rendering_is_deterministic_across_processes() {
    let p = demo_project();
    p.converge(&["dev"]);
    let first = snapshot(&p.path("work"));
    std::fs::remove_dir_all(p.path("work")).unwrap();
    p.converge(&["dev"]);
    assert_eq!(snapshot(&p.path("work")), first);
}

#[test]
fn json_events_are_one_object_per_line() {
    let p = demo_project();
    let out = p.converge(&["dev", "--json"]);
    let events = out.events();
    assert_eq!(events.first().unwrap()["event"], "host_started");
    // The same ending as a remote run: the host, then the run.
    let [.., host, run] = events.as_slice() else {
        panic!("too few events: {events:?}")
    };
    assert_eq!(host["event"], "host_finished");
    assert_eq!(
        host["changed"],
        serde_json::json!(["site", "homepage", "nginx", "docroot"])
    );
    assert_eq!(run["event"], "run_finished");
    assert_eq!(run["hosts"][0]["status"], "changed");
    assert!(events.iter().any(|e| e["event"] == "diff"));
}
