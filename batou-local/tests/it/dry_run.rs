//! Dry runs through the built binary: on a fresh host and after drift, the prediction lists
//! exactly the component paths the real run then changes, writes nothing, and a converge after
//! the run changes nothing.

use crate::harness::{Outcome, Project, snapshot};

/// Every library component: a templated file, a synced directory, a plain directory, a
/// symlink and commands guarded by `unless`, `creates` and `on_change`.
const EVERYTHING: &str = r#"
[hosts.localhost]
components = ["config", "site", "data", "current", "build", "marker", "reload"]

[components.config]
type = "file"
path = "app.conf"
template = "templates/app.conf.j2"
vars = { workers = 4 }
mode = 0o640

[components.site]
type = "directory"
path = "htdocs"
source = "site"
purge = true

[components.data]
type = "directory"
path = "data"
mode = 0o750

[components.current]
type = "symlink"
path = "current"
target = "releases/2"

[components.build]
type = "command"
argv = ["sh", "-c", "echo built > out"]
unless = ["test", "-e", "out"]

[components.marker]
type = "command"
argv = ["touch", "marker"]
creates = "marker"

[components.reload]
type = "command"
argv = ["sh", "-c", "echo reloaded >> reloads"]
on_change = ["config", "site"]
"#;

fn everything() -> Project {
    let p = Project::new();
    p.file("templates/app.conf.j2", "workers = {{ workers }}\n");
    p.file("site/index.html", "<h1>shop</h1>\n");
    p.file("site/css/shop.css", "h1 { color: red }\n");
    p.env("dev", EVERYTHING);
    p
}

/// Predicts, checks that nothing was written, converges, checks that exactly the predicted
/// component paths changed, and converges again to no change. Returns the dry run's human
/// output and the real run.
fn assert_prediction_matches(p: &Project) -> (String, Outcome) {
    let before = snapshot(p.root());
    let human = p.converge(&["dev", "--dry-run"]).stderr;
    let dry = p.converge(&["dev", "--dry-run", "--json"]);
    assert_eq!(snapshot(p.root()), before, "a dry run changed the project");
    assert!(
        dry.events()
            .iter()
            .filter(|e| e["event"] == "changed")
            .all(|e| e["dry_run"] == true)
    );
    let real = p.converge(&["dev", "--json"]);
    assert_eq!(
        dry.changed(),
        real.changed(),
        "prediction (left) and run (right) differ\nprediction: {}",
        dry.stdout
    );
    p.assert_idempotent(&["dev"]);
    (human, real)
}

#[test]
fn on_a_fresh_host_the_prediction_is_what_the_run_changes() {
    let p = everything();
    let (human, real) = assert_prediction_matches(&p);
    assert_eq!(
        real.changed(),
        [
            "config > Workdir",
            "config",
            "site > Workdir",
            "site > Directory('htdocs')",
            "site > Directory('htdocs/css')",
            "site > File('htdocs/css/shop.css')",
            "site > File('htdocs/index.html')",
            "data > Workdir",
            "data",
            "current > Workdir",
            "current",
            "build > Workdir",
            "build",
            "marker > Workdir",
            "marker",
            "reload > Workdir",
            "reload",
        ]
    );
    assert!(
        human.contains("would change build (guard cannot run yet: work directory missing)"),
        "{human}"
    );
    assert!(
        human.contains("would change reload (would run: config, site changed)"),
        "{human}"
    );
    assert_eq!(
        std::fs::read_to_string(p.path("work/reload/reloads")).unwrap(),
        "reloaded\n"
    );
}

#[test]
fn after_drift_the_prediction_is_what_the_run_changes() {
    let p = everything();
    p.converge(&["dev"]);

    // Drift in every component but the commands' guards.
    std::fs::write(p.path("work/config/app.conf"), "workers = 1\n").unwrap();
    std::fs::write(p.path("work/site/htdocs/stray.html"), "stray\n").unwrap();
    std::fs::remove_dir_all(p.path("work/site/htdocs/css")).unwrap();
    std::fs::remove_dir(p.path("work/data/data")).unwrap();
    std::fs::remove_file(p.path("work/current/current")).unwrap();
    std::os::unix::fs::symlink("releases/1", p.path("work/current/current")).unwrap();
    let (human, real) = assert_prediction_matches(&p);
    assert_eq!(
        real.changed(),
        [
            "config",
            "site > Directory('htdocs/css')",
            "site > File('htdocs/css/shop.css')",
            "site",
            "data",
            "current",
            "reload",
        ]
    );
    assert!(
        human.contains("would change site (extraneous: stray.html)"),
        "{human}"
    );
    assert_eq!(
        std::fs::read_to_string(p.path("work/reload/reloads")).unwrap(),
        "reloaded\nreloaded\n"
    );

    // The commands' guards: their results removed, a new template; `reload` watches only
    // `config` and `site`, so a change elsewhere does not run it.
    std::fs::remove_file(p.path("work/build/out")).unwrap();
    std::fs::remove_file(p.path("work/marker/marker")).unwrap();
    let (_, real) = assert_prediction_matches(&p);
    assert_eq!(real.changed(), ["build", "marker"]);
    p.file("templates/app.conf.j2", "workers = {{ workers }} # tuned\n");
    let (_, real) = assert_prediction_matches(&p);
    assert_eq!(real.changed(), ["config", "reload"]);
}
