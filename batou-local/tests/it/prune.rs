//! The ownership record of the base directory with the built `batou-local`: another
//! environment refused before anything changes, orphaned root components reported, `--prune`
//! (with `--dry-run` first) removing only what the tool created, a service stopped and taken
//! from a real runsvdir. Every scenario ends with a converge that changes nothing.

use batou_test_support::{Runsvdir, procs};
use std::path::Path;

use crate::harness::{Project, snapshot};

/// `app` syncs a directory of three files and writes a file below new directories; `pre`
/// rewrites a file that was there before; `keep` stays in the environment.
fn environment(roots: &[&str]) -> String {
    let roots: Vec<String> = roots.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        r#"
[hosts.localhost]
components = [{}]

[components.app]
type = "directory"
path = "site"
source = "site"

[components.deep]
type = "file"
path = "a/b/deep.conf"
content = "deep\n"
create_parents = true

[components.pre]
type = "file"
path = "existing.txt"
content = "new\n"

[components.keep]
type = "file"
path = "keep.txt"
content = "keep\n"
"#,
        roots.join(", ")
    )
}

fn events_of<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

#[test]
fn orphans_are_reported_then_pruned_and_a_second_prune_changes_nothing() {
    let p = Project::new();
    p.file("site/index.html", "<h1>hi</h1>\n");
    p.file("site/css/style.css", "h1 {}\n");
    p.file("site/robots.txt", "\n");
    // A file and its directory that were there before the first deploy: rewritten, not
    // created, so no prune may remove them.
    p.file("work/pre/existing.txt", "old\n");
    p.env("dev", &environment(&["app", "deep", "pre", "keep"]));
    p.converge_twice(&["dev"]);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.path(".batou/inventory.json")).unwrap())
            .unwrap();
    assert_eq!(record["environment"], "dev", "{record:#}");
    let roots: Vec<&str> = record["roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(roots, ["app", "deep", "pre", "keep"]);
    let pre = &record["roots"][2]["created"];
    assert_eq!(pre.as_array().unwrap().len(), 0, "{record:#}");
    // Someone else's file inside what `app` created keeps its directory.
    p.file("work/app/site/css/user.css", "mine\n");

    // `app`, `deep` and `pre` leave the environment: reported, nothing changes.
    p.env("dev", &environment(&["keep"]));
    let before = snapshot(p.root());
    let out = p.converge(&["dev", "--json"]);
    let events = out.events();
    let orphaned = events_of(&events, "orphaned");
    let names: Vec<&str> = orphaned
        .iter()
        .map(|e| e["component"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pre", "deep", "app"], "last deployed first");
    assert_eq!(orphaned[2]["created"]["file"], 3, "{:#}", orphaned[2]);
    assert_eq!(orphaned[2]["created"]["directory"], 3, "{:#}", orphaned[2]);
    assert_eq!(orphaned[2]["prune"], false);
    assert!(events_of(&events, "pruned").is_empty());
    assert!(out.changed().is_empty(), "{:?}", out.changed());
    assert_eq!(snapshot(p.root()), before);
    let human = p.converge(&["dev"]);
    assert!(
        human
            .stderr
            .contains("orphaned: `app` on localhost, 3 directories, 3 files (not in the environment any more): nothing about it changes; `--prune` removes what it created"),
        "{}",
        human.stderr
    );

    // A dry run shows what a prune would remove, and removes nothing.
    let dry = p.converge(&["dev", "--prune", "--dry-run", "--json"]);
    let would: Vec<String> = events_of(&dry.events(), "pruned")
        .iter()
        .map(|e| format!("{} {} {}", e["action"], e["component"], e["item"]))
        .collect();
    assert_eq!(snapshot(p.root()), before);
    assert!(
        dry.events()
            .iter()
            .filter(|e| e["event"] == "pruned")
            .all(|e| e["dry_run"] == true),
        "{would:#?}"
    );

    // The prune removes exactly that.
    let out = p.converge(&["dev", "--prune", "--json"]);
    let did: Vec<String> = events_of(&out.events(), "pruned")
        .iter()
        .map(|e| format!("{} {} {}", e["action"], e["component"], e["item"]))
        .collect();
    assert_eq!(did, would, "the dry run predicted the prune");
    let work = p.path("work");
    for gone in [
        "app/site/index.html",
        "app/site/robots.txt",
        "app/site/css/style.css",
        "deep/a/b/deep.conf",
        "deep/a",
        "deep",
    ] {
        assert!(!work.join(gone).exists(), "{gone} is still there");
    }
    // What the tool did not create stays, and so do the directories holding it.
    assert_eq!(
        std::fs::read_to_string(work.join("app/site/css/user.css")).unwrap(),
        "mine\n"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("pre/existing.txt")).unwrap(),
        "new\n"
    );
    assert!(
        did.iter()
            .any(|d| d.starts_with("\"kept\" \"app\" \"directory") && d.contains("/site/css")),
        "{did:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("keep/keep.txt")).unwrap(),
        "keep\n"
    );
    // Nothing else changed: outside `work/app` and `work/deep` the tree is as it was, but
    // for the record.
    let outside = |s: std::collections::BTreeMap<std::path::PathBuf, String>| {
        s.into_iter()
            .filter(|(k, _)| {
                !k.starts_with("work/app")
                    && !k.starts_with("work/deep")
                    && !k.starts_with(".batou/inventory.json")
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(outside(snapshot(p.root())), outside(before));
    let record = std::fs::read_to_string(p.path(".batou/inventory.json")).unwrap();
    assert!(!record.contains("\"app\""), "{record}");

    // A second prune finds no orphan and changes nothing.
    let after = snapshot(p.root());
    let again = p.converge(&["dev", "--prune", "--json"]);
    assert_eq!(again.count("orphaned"), 0, "{}", again.stdout);
    assert_eq!(again.count("pruned"), 0, "{}", again.stdout);
    assert!(again.changed().is_empty());
    assert_eq!(snapshot(p.root()), after);
    p.assert_idempotent(&["dev"]);
}

#[test]
fn another_environment_is_refused_before_anything_changes() {
    let p = Project::new();
    p.env("dev", &environment(&["keep"]));
    p.env("staging", &environment(&["keep", "deep"]));
    p.converge_twice(&["dev"]);
    let before = snapshot(p.root());
    for args in [
        &["staging"][..],
        &["staging", "--dry-run"],
        &["staging", "--prune"],
    ] {
        let out = p.run(args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        let base = p.root().display().to_string();
        assert!(
            out.stderr.contains(&format!(
                "error: base directory `{base}` on host `localhost` belongs to environment `dev`, so environment `staging` may not deploy into it"
            )),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains("hint: give each environment its own `base_dir`")
        );
        assert_eq!(snapshot(p.root()), before, "{args:?}");
    }
    // With a base directory of its own, the other environment deploys.
    let elsewhere = tempfile::tempdir().unwrap();
    let dir = elsewhere.path().display().to_string();
    p.converge(&["staging", "--base-dir", &dir]);
    assert!(elsewhere.path().join("work/deep/a/b/deep.conf").exists());
    p.assert_idempotent(&["staging", "--base-dir", &dir]);
    p.assert_idempotent(&["dev"]);
}

#[test]
fn a_pruned_service_is_stopped_and_taken_from_runsvdir() {
    let mut runsvdir = Runsvdir::start();
    let sd = runsvdir.service_dir();
    let sd_text = sd.display().to_string();
    let p = Project::new();
    let env = |roots: &str| {
        format!(
            "[environment]\nallow_paths = [\"{sd_text}\"]\n\n[hosts.localhost]\ncomponents = [{roots}]\n\n[components.web]\ntype = \"service\"\nargv = [\"sleep\", \"1000.75\"]\nservice_dir = \"{sd_text}\"\n\n[components.other]\ntype = \"file\"\npath = \"other.txt\"\ncontent = \"x\\n\"\n"
        )
    };
    p.env("dev", &env("\"web\", \"other\""));
    p.converge_twice(&["dev"]);
    assert!(procs::sleeping("1000.75"));
    let definition = p.path("work/web/.service/web");
    assert_eq!(std::fs::read_link(sd.join("web")).unwrap(), definition);

    p.env("dev", &env("\"other\""));
    let out = p.converge(&["dev", "--json"]);
    assert_eq!(out.count("orphaned"), 1);
    assert!(
        procs::sleeping("1000.75"),
        "an orphan without `--prune` keeps running"
    );
    let dry = p.converge(&["dev", "--prune", "--dry-run", "--json"]);
    assert!(
        dry.events().iter().any(|e| e["event"] == "pruned"
            && e["action"] == "removed"
            && e["item"]
                .as_str()
                .unwrap()
                .starts_with("runit service `web`")),
        "{}",
        dry.stdout
    );
    assert!(procs::sleeping("1000.75"));
    let out = p.converge(&["dev", "--prune", "--json"]);
    assert!(
        out.stderr.is_empty() || !out.stderr.contains("error"),
        "{}",
        out.stderr
    );
    assert!(!sd.join("web").exists(), "the link is gone");
    assert!(!definition.exists(), "the definition is gone");
    assert!(!p.path("work/web").exists(), "the work directory is gone");
    // The prune waited for runsv to let go of the service, which has ended; runsv itself
    // exits right after.
    assert!(!procs::sleeping("1000.75"));
    procs::wait_until("runsv exits", std::time::Duration::from_secs(10), || {
        runsvdir.tree().iter().all(|pid| !procs::alive(*pid))
    });
    let again = p.converge(&["dev", "--prune", "--json"]);
    assert_eq!(again.count("pruned"), 0, "{}", again.stdout);
    p.assert_idempotent(&["dev"]);
    assert!(Path::new(&p.path("work/other/other.txt")).exists());
    runsvdir.stop();
}

#[test]
fn a_pruned_release_root_takes_its_releases_and_leaves_the_shared_store() {
    let p = Project::new();
    p.file("site/index.html", "one\n");
    let env = |roots: &str| {
        format!(
            "[hosts.localhost]\ncomponents = [{roots}]\n\n[components.app]\ntype = \"release\"\nfiles = [\"site/\"]\n\n[components.other]\ntype = \"file\"\npath = \"other.txt\"\ncontent = \"x\\n\"\n"
        )
    };
    p.env("dev", &env("\"app\", \"other\""));
    p.converge_twice(&["dev"]);
    assert!(p.path("releases/app/current").exists());
    let store = snapshot(&p.path("releases/.store"));
    assert!(!store.is_empty());

    p.env("dev", &env("\"other\""));
    let out = p.converge(&["dev", "--prune", "--json"]);
    let pruned: Vec<String> = out
        .events()
        .iter()
        .filter(|e| e["event"] == "pruned" && e["action"] == "removed")
        .map(|e| e["item"].as_str().unwrap().to_string())
        .collect();
    assert!(
        pruned
            .iter()
            .any(|i| i.starts_with("tree `") && i.ends_with("releases/app`")),
        "{pruned:#?}"
    );
    assert!(!p.path("releases/app").exists());
    assert_eq!(
        snapshot(&p.path("releases/.store")),
        store,
        "the store stays"
    );
    assert!(!p.path("work/app").exists());
    p.assert_idempotent(&["dev", "--prune"]);
}
