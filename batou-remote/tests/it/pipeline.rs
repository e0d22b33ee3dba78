//! Steps sent ahead: a host's agent holds the next steps while one runs, and none of them
//! runs after a failure, on its own host or (once cancelled) on another.

use crate::harness::{Cluster, Project};

/// web1 runs `first` (a command that fails unless `status` is 0) and then two files that depend on
/// nothing, so that both are sent ahead while `first` runs.
fn queued(status: u8) -> String {
    format!(
        r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["first", "one", "two"]

[components.first]
type = "command"
argv = ["sh", "-c", "sleep 0.3; test {status} = 0 && touch ran"]
creates = "ran"

[components.one]
type = "file"
path = "one"
content = "1\n"

[components.two]
type = "file"
path = "two"
content = "2\n"
"#
    )
}

#[test]
fn steps_queued_behind_a_failed_one_never_run() {
    let cluster = Cluster::start(&["web1"]);
    let p = Project::new();
    p.env("prod", &queued(1));
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let web1 = cluster.host("web1");
    for file in ["one", "two"] {
        assert!(
            !web1.home.join("srv/work").join(file).join(file).exists(),
            "{file} ran after the failure"
        );
    }
    let finished: Vec<_> = out
        .events()
        .into_iter()
        .filter(|e| e["event"] == "host_finished")
        .collect();
    assert_eq!(finished[0]["failed"], serde_json::json!(["first"]));
    assert_eq!(
        finished[0]["not_attempted"],
        serde_json::json!(["one", "two"])
    );
    // The host's journal records the step that ran, and only that one.
    let steps: Vec<_> = web1
        .journal("srv")
        .into_iter()
        .filter(|r| r["record"] == "step")
        .map(|r| r["component"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(steps, ["first"]);

    p.env("prod", &queued(0));
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(web1.home.join("srv/work/two/two").exists());
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
}

/// web1 runs a slow command and then two files; web2 a command that fails after `fail`
/// seconds, while web1's slow command still runs (`fail` empty: it succeeds).
fn across(fail: &str) -> String {
    let web2 = if fail.is_empty() {
        "touch fixed".to_string()
    } else {
        format!("sleep {fail}; exit 1")
    };
    format!(
        r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["slow", "one", "two"]

[hosts.web2]
components = ["breaks"]

[components.slow]
type = "command"
argv = ["sh", "-c", "sleep 2; touch done"]
creates = "done"

[components.breaks]
type = "command"
argv = ["sh", "-c", "{web2}"]
creates = "fixed"

[components.one]
type = "file"
path = "one"
content = "1\n"

[components.two]
type = "file"
path = "two"
content = "2\n"
"#
    )
}

#[test]
fn a_failure_on_one_host_cancels_the_steps_queued_on_another() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", &across("0.3"));
    let out = cluster.run(p.root(), &["prod", "--json", "--jobs", "2"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let web1 = cluster.host("web1");
    // The running step finished; the two queued behind it did not start.
    assert!(web1.home.join("srv/work/slow/done").exists());
    assert!(!web1.home.join("srv/work/one").exists());
    assert!(!web1.home.join("srv/work/two").exists());
    let skipped: Vec<_> = out
        .events()
        .into_iter()
        .filter(|e| e["event"] == "skipped" && e["host"] == "web1")
        .map(|e| {
            format!(
                "{}: {}",
                e["component"].as_str().unwrap(),
                e["reason"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        skipped,
        [
            "one: not started: the deploy stopped after a failure",
            "two: not started: the deploy stopped after a failure"
        ]
    );
    assert_eq!(out.statuses()["web2"], "failed");

    p.env("prod", &across(""));
    let out = cluster.run(p.root(), &["prod", "--json", "--jobs", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(web1.home.join("srv/work/two/two").exists());
    let out = cluster.run(p.root(), &["prod", "--json", "--jobs", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
}
