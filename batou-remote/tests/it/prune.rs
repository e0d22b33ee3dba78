//! The ownership record over SSH: another environment refused on a host before anything
//! changes, orphaned root components on several hosts, a host removed from the environment
//! (the controller's `.batou/deployed-hosts.json`), `--prune --dry-run` and `--prune`, and a
//! second prune that changes nothing. Every scenario ends with a deploy that changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::harness::{Cluster, Project, snapshot};

/// `prod` with `app` (a file below new directories and a directory) and `keep` on the
/// hosts given.
fn environment(name_hosts: &[(&str, &[&str])]) -> String {
    let mut text = String::from("[environment]\nbase_dir = \"srv\"\n\n");
    for (host, roots) in name_hosts {
        let roots: Vec<String> = roots.iter().map(|r| format!("\"{r}\"")).collect();
        text.push_str(&format!(
            "[hosts.{host}]\ncomponents = [{}]\n\n",
            roots.join(", ")
        ));
    }
    text.push_str(
        r#"[components.app]
type = "file"
path = "conf/app.conf"
content = "app on {{ host.name }}\n"
create_parents = true

[components.data]
type = "directory"
path = "data"

[components.keep]
type = "file"
path = "keep.txt"
content = "keep\n"
"#,
    );
    text
}

/// The host's base directory without the lock file, whose holder every session records.
fn state(home: &Path) -> BTreeMap<PathBuf, String> {
    let mut s = snapshot(&home.join("srv"));
    s.remove(Path::new(".batou/lock"));
    s
}

fn journal_records(cluster: &Cluster, host: &str, record: &str) -> Vec<serde_json::Value> {
    cluster
        .host(host)
        .journal("srv")
        .into_iter()
        .filter(|r| r["record"] == record)
        .collect()
}

#[test]
fn another_environment_is_refused_on_the_host_before_anything_changes() {
    let cluster = Cluster::start(&["web1"]);
    let home = cluster.host("web1").home.clone();
    let p = Project::new();
    p.env("prod", &environment(&[("web1", &["app", "keep"])]));
    p.env("staging", &environment(&[("web1", &["keep"])]));
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let before = state(&home);
    let records = cluster.host("web1").journal("srv").len();
    for args in [
        &["staging"][..],
        &["staging", "--dry-run"],
        &["staging", "--prune"],
    ] {
        let mut args = args.to_vec();
        args.push("--json");
        let out = cluster.run(p.root(), &args);
        assert_eq!(out.code, 1, "{args:?}: {}", out.stderr);
        assert_eq!(out.statuses()["web1"], "failed");
        let failed = out
            .events()
            .into_iter()
            .find(|e| e["event"] == "host_failed")
            .unwrap();
        let error = failed["error"].to_string();
        let base = home.join("srv").display().to_string();
        assert!(
            error.contains(&format!(
                "base directory `{base}` on host `web1` belongs to environment `prod`, so environment `staging` may not deploy into it"
            )),
            "{error}"
        );
        assert!(error.contains("hint: give each environment its own `base_dir`"));
        assert_eq!(state(&home), before, "{args:?}");
        assert_eq!(
            cluster.host("web1").journal("srv").len(),
            records,
            "a refused deploy writes nothing into the other environment's journal"
        );
    }
    let human = cluster.run(p.root(), &["staging"]);
    assert_eq!(human.code, 1, "{}", human.stderr);
    assert!(
        human
            .stderr
            .contains("error: the agent refused: base directory `")
            && human.stderr.contains("belongs to environment `prod`"),
        "{}",
        human.stderr
    );
    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}

#[test]
fn orphans_and_a_removed_host_are_reported_then_pruned() {
    let cluster = Cluster::start(&["web1", "web2", "web3"]);
    let home = |h: &str| cluster.host(h).home.clone();
    let p = Project::new();
    p.env(
        "prod",
        &environment(&[
            ("web1", &["app", "data", "keep"]),
            ("web2", &["app"]),
            ("web3", &["app", "data"]),
        ]),
    );
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let record = std::fs::read_to_string(p.path(".batou/deployed-hosts.json")).unwrap();
    for host in ["web1", "web2", "web3"] {
        assert!(record.contains(&format!("\"{host}\"")), "{record}");
    }
    // Someone else's file in a directory `data` created.
    std::fs::write(home("web1").join("srv/work/data/data/mine"), "mine\n").unwrap();

    // `app` and `data` leave web1, web3 leaves the environment.
    p.env(
        "prod",
        &environment(&[("web1", &["keep"]), ("web2", &["app"])]),
    );
    let before: Vec<_> = ["web1", "web2", "web3"].map(|h| state(&home(h))).into();
    let web3_logins = cluster.host("web3").logins();
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let events = out.events();
    let orphaned: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "orphaned")
        .map(|e| format!("{} {} {}", e["host"], e["component"], e["created"]))
        .collect();
    assert_eq!(
        orphaned,
        [
            r#""web1" "data" {"directory":2}"#,
            r#""web1" "app" {"directory":2,"file":1}"#
        ]
    );
    let removed: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "host_orphaned")
        .collect();
    assert_eq!(removed.len(), 1, "{}", out.stdout);
    assert_eq!(removed[0]["host"], "web3");
    assert_eq!(removed[0]["prune"], false);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
    assert_eq!(
        cluster.host("web3").logins(),
        web3_logins,
        "web3 is not contacted"
    );
    let human = cluster.run(p.root(), &["prod"]);
    assert!(
        human.stderr.contains(
            "orphaned: `app` on web1, 2 directories, 1 file (not in the environment any more)"
        ),
        "{}",
        human.stderr
    );
    assert!(
        human
            .stderr
            .contains("orphaned: host `web3` is not in the environment any more"),
        "{}",
        human.stderr
    );
    let unchanged: Vec<_> = ["web1", "web2", "web3"].map(|h| state(&home(h))).into();
    // Journals grew, nothing else did.
    let strip = |states: &[BTreeMap<PathBuf, String>]| {
        states
            .iter()
            .map(|s| {
                let mut s = s.clone();
                s.remove(Path::new(".batou/journal.jsonl"));
                s
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&unchanged), strip(&before));

    // A dry run of the prune says what it would remove on web1 and web3 and changes nothing.
    let dry = cluster.run(p.root(), &["prod", "--prune", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    let would: Vec<String> = dry
        .events()
        .iter()
        .filter(|e| e["event"] == "pruned")
        .map(|e| {
            format!(
                "{} {} {} {}",
                e["host"], e["action"], e["component"], e["item"]
            )
        })
        .collect();
    assert!(
        would
            .iter()
            .any(|w| w.starts_with("\"web3\" \"removed\" \"app\" \"file")),
        "{would:#?}"
    );
    let after_dry: Vec<_> = ["web1", "web2", "web3"].map(|h| state(&home(h))).into();
    assert_eq!(strip(&after_dry), strip(&unchanged));

    // The prune.
    let out = cluster.run(p.root(), &["prod", "--prune", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let did: Vec<String> = out
        .events()
        .iter()
        .filter(|e| e["event"] == "pruned")
        .map(|e| {
            format!(
                "{} {} {} {}",
                e["host"], e["action"], e["component"], e["item"]
            )
        })
        .collect();
    let mut sorted_did = did.clone();
    sorted_did.sort();
    let mut sorted_would = would.clone();
    sorted_would.sort();
    assert_eq!(sorted_did, sorted_would, "the dry run predicted the prune");
    let srv = |h: &str| home(h).join("srv");
    assert!(!srv("web1").join("work/app").exists());
    assert!(
        srv("web1").join("work/data/data/mine").exists(),
        "not the tool's"
    );
    assert!(srv("web1").join("work/keep/keep.txt").exists());
    assert!(!srv("web3").join("work/app").exists());
    assert!(!srv("web3").join("work/data").exists());
    assert!(
        !srv("web3").join(".batou/inventory.json").exists(),
        "web3's base directory is released"
    );
    assert_eq!(
        strip(&[state(&home("web2"))]),
        strip(&[before[1].clone()]),
        "web2 is untouched"
    );
    assert_eq!(journal_records(&cluster, "web1", "pruned").len(), 2);
    assert_eq!(journal_records(&cluster, "web3", "pruned").len(), 2);
    let record = std::fs::read_to_string(p.path(".batou/deployed-hosts.json")).unwrap();
    assert!(!record.contains("\"web3\""), "{record}");

    // A second prune finds nothing and does not contact web3.
    let settled: Vec<_> = ["web1", "web2", "web3"].map(|h| state(&home(h))).into();
    let web3_logins = cluster.host("web3").logins();
    let again = cluster.run(p.root(), &["prod", "--prune", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("orphaned"), 0, "{}", again.stdout);
    assert_eq!(again.count("host_orphaned"), 0, "{}", again.stdout);
    assert_eq!(again.count("pruned"), 0, "{}", again.stdout);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
    assert_eq!(cluster.host("web3").logins(), web3_logins);
    let now: Vec<_> = ["web1", "web2", "web3"].map(|h| state(&home(h))).into();
    assert_eq!(strip(&now), strip(&settled));
    let last = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(last.code, 0, "{}", last.stderr);
    assert_eq!(last.count("changed"), 0, "{}", last.stdout);
}

#[test]
fn a_removed_hosts_service_is_stopped_and_taken_from_its_runsvdir() {
    use batou_test_support::{Runsvdir, procs};
    let cluster = Cluster::start(&["web1", "web2"]);
    let runsvdir = Runsvdir::start();
    let sd = runsvdir.service_dir();
    let env = |hosts: &[&str]| {
        let mut text = format!(
            "[environment]\nbase_dir = \"srv\"\nallow_paths = [\"{}\"]\n\n",
            sd.display()
        );
        for host in hosts {
            let roots = if *host == "web2" {
                "\"web\""
            } else {
                "\"keep\""
            };
            text.push_str(&format!(
                "[hosts.{host}]\ncomponents = [{roots}]\ndata = {{ service_dir = \"{}\" }}\n\n",
                sd.display()
            ));
        }
        text.push_str(
            "[components.web]\ntype = \"service\"\nargv = [\"sleep\", \"1000.5\"]\n\n[components.keep]\ntype = \"file\"\npath = \"keep.txt\"\ncontent = \"keep\\n\"\n",
        );
        text
    };
    let p = Project::new();
    p.env("prod", &env(&["web1", "web2"]));
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(procs::sleeping("1000.5"));
    let definition = cluster.host("web2").home.join("srv/work/web/.service/web");
    assert_eq!(std::fs::read_link(sd.join("web")).unwrap(), definition);

    p.env("prod", &env(&["web1"]));
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.count("host_orphaned"), 1, "{}", out.stdout);
    assert!(procs::sleeping("1000.5"), "not pruned without `--prune`");
    let out = cluster.run(p.root(), &["prod", "--prune", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.events().iter().any(|e| e["event"] == "pruned"
            && e["host"] == "web2"
            && e["action"] == "removed"
            && e["item"]
                .as_str()
                .unwrap()
                .starts_with("runit service `web`")),
        "{}",
        out.stdout
    );
    assert!(!procs::sleeping("1000.5"), "the service ended");
    assert!(!sd.join("web").exists() && !definition.exists());
    procs::wait_until("runsv exits", std::time::Duration::from_secs(10), || {
        runsvdir.tree().iter().all(|pid| !procs::alive(*pid))
    });
    let again = cluster.run(p.root(), &["prod", "--prune", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("pruned"), 0, "{}", again.stdout);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}
