//! The operator's verbs of `batou-remote` against real sshd hosts: `status`, `history`,
//! `exec` and `lock`, on several hosts at once, with one host unreachable and one locked
//! (frozen, or held by a running deploy). Every `--json` stream is checked line by line
//! against `docs/json-events.md`; every scenario ends with a deploy that changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use batou_test_support::{assert_documented_events, git, procs};

use crate::harness::{Cluster, Outcome, Project};

/// Each host: `motd` (a file) and `slow` (a command that sleeps once, so that a deploy can be
/// caught holding the host's lock).
const ENV: &str = r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["motd", "slow"]

[hosts.web2]
components = ["motd", "slow"]

[hosts.db1]
components = ["motd", "slow"]

[components.motd]
type = "file"
path = "motd"
content = "hello from {{ host.name }}\n"

[components.slow]
type = "command"
argv = ["sh", "-c", "sleep SLEEP && touch slept"]
creates = "slept"
"#;

/// Three hosts and a deployment repository that is a git repository with one commit.
struct Fleet {
    cluster: Cluster,
    project: Project,
    /// How long `slow` sleeps: each test its own, so that tests running at the same time
    /// wait for their own deploy's `sleep`.
    sleep: &'static str,
}

impl Fleet {
    fn start(sleep: &'static str) -> Fleet {
        let cluster = Cluster::start(&["web1", "web2", "db1"]);
        let project = Project::new();
        project.env("prod", &ENV.replace("SLEEP", sleep));
        git(project.root(), &["init", "-q"]);
        git(project.root(), &["add", "."]);
        git(project.root(), &["commit", "-q", "-m", "first"]);
        Fleet {
            cluster,
            project,
            sleep,
        }
    }

    /// `batou-remote -C <project> ARGS...`; a `--json` run's stream is checked against the
    /// documentation.
    fn run(&self, args: &[&str]) -> Outcome {
        let out = self.cluster.run(self.project.root(), args);
        if args.contains(&"--json") {
            assert_documented_events(&out.stdout);
        }
        out
    }

    fn head(&self) -> String {
        git(self.project.root(), &["rev-parse", "HEAD"])
    }

    /// A path below a host's base directory.
    fn path(&self, host: &str, relative: &str) -> std::path::PathBuf {
        self.cluster.host(host).home.join("srv").join(relative)
    }

    /// Starts a deploy of `host` that holds its lock while `slow` sleeps, and waits for it.
    fn hold_lock(&self, host: &str) -> std::process::Child {
        let _ = std::fs::remove_file(self.path(host, "work/slow/slept"));
        let child = self
            .cluster
            .command(self.project.root(), &["prod", "--hosts", host])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        procs::wait_until(
            "the deploy to reach `slow`",
            Duration::from_secs(60),
            || procs::sleeping(self.sleep),
        );
        child
    }

    /// A deploy (of `args`' hosts) that changes nothing.
    fn assert_idempotent(&self, args: &[&str]) {
        let mut all = vec!["prod", "--json"];
        all.extend(args);
        let out = self.run(&all);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.count("changed"), 0, "{}", out.stdout);
    }
}

fn wait_for(child: &mut std::process::Child) -> std::process::ExitStatus {
    procs::wait_until("the deploy to end", Duration::from_secs(60), || {
        child.try_wait().unwrap().is_some()
    });
    child.wait().unwrap()
}

/// The events of kind `event`, by host.
fn by_host(out: &Outcome, event: &str) -> BTreeMap<String, serde_json::Value> {
    out.events()
        .into_iter()
        .filter(|e| e["event"] == event)
        .map(|e| (e["host"].as_str().unwrap().to_string(), e))
        .collect()
}

#[test]
fn status_shows_each_host_with_its_freeze_holder_last_deploy_and_drift() {
    let mut f = Fleet::start("8.131");
    let out = f.run(&["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // web1 drifts; db1 is frozen; web2 is being deployed.
    std::fs::write(f.path("web1", "work/motd/motd"), "changed by hand\n").unwrap();
    let out = f.run(&[
        "prod",
        "lock",
        "acquire",
        "-m",
        "disk swap",
        "--hosts",
        "db1",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut deploy = f.hold_lock("web2");
    let journal = f.cluster.host("web1").journal("srv").len();

    let out = f.run(&["prod", "status", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, out.stdout);
    let states = by_host(&out, "host_state");
    assert_eq!(states.len(), 3, "{}", out.stdout);
    let web1 = &states["web1"];
    assert_eq!(web1["drift"]["roots"], serde_json::json!(["motd"]));
    assert_eq!(web1["drift"]["of"], 2);
    assert_eq!(web1["freeze"], serde_json::Value::Null);
    assert_eq!(web1["holder"], serde_json::Value::Null);
    let last = &web1["last_deploy"];
    assert_eq!(last["result"], "success");
    assert_eq!(last["user"], "root");
    assert_eq!(last["commit"], f.head().as_str());
    assert_eq!(last["changed"], serde_json::json!(["motd", "slow"]));
    let web2 = &states["web2"];
    assert_eq!(web2["holder"]["user"], "root", "{web2}");
    assert_eq!(web2["drift"]["roots"], serde_json::json!(["slow"]));
    assert_eq!(states["db1"]["freeze"]["reason"], "disk swap");
    assert_eq!(states["db1"]["drift"]["roots"], serde_json::json!([]));
    assert!(out.statuses().values().all(|s| s == "unchanged"));
    assert_eq!(
        f.cluster.host("web1").journal("srv").len(),
        journal,
        "status writes no journal"
    );
    assert_eq!(
        std::fs::read_to_string(f.path("web1", "work/motd/motd")).unwrap(),
        "changed by hand\n",
        "status changes nothing"
    );

    // For people: one block per host, and the summary.
    let out = f.run(&["prod", "status"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for line in [
        "web1: drift: 1 of 2 root components would change (motd; 1 components)",
        "web2: locked now by root@",
        "db1: frozen by root@",
        "web1: last deploy: ",
        "3 hosts:",
    ] {
        assert!(out.stderr.contains(line), "{line}\n{}", out.stderr);
    }
    assert!(wait_for(&mut deploy).success());

    // An unreachable host says why; the others still answer.
    let out = f.run(&["prod", "lock", "release", "--hosts", "db1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    f.cluster.hosts.get_mut("db1").unwrap().stop();
    let out = f.run(&["prod", "status", "--json"]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert_eq!(out.statuses()["db1"], "unreachable");
    assert_eq!(by_host(&out, "host_failed").len(), 1);
    assert_eq!(by_host(&out, "host_state").len(), 2);

    let out = f.run(&["prod", "--hosts", "web1,web2", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    f.assert_idempotent(&["--hosts", "web1,web2"]);
}

#[test]
fn a_freeze_refuses_deploys_until_released() {
    let f = Fleet::start("8.132");
    let out = f.run(&["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    let out = f.run(&[
        "prod",
        "lock",
        "acquire",
        "-m",
        "database migration",
        "--hosts",
        "web2",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let locks = by_host(&out, "lock");
    assert_eq!(locks.keys().collect::<Vec<_>>(), ["web2"]);
    assert_eq!(locks["web2"]["outcome"], "acquired");
    assert_eq!(locks["web2"]["freeze"]["reason"], "database migration");
    assert!(f.path("web2", ".batou/freeze").is_file());

    // A deploy is refused on the frozen host, with who, why and since when.
    let out = f.run(&["prod", "--json"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert_eq!(out.statuses()["web2"], "lock_held");
    let error = by_host(&out, "host_failed")["web2"]["error"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.starts_with("host is frozen by root@")
            && error.contains(" since ")
            && error.contains(": database migration")
            && error.contains("lock release"),
        "{error}"
    );
    let out = f.run(&["prod"]);
    assert_eq!(out.code, 5);
    assert!(
        out.stderr.contains("web2: lock held") && out.stderr.contains("database migration"),
        "{}",
        out.stderr
    );
    // So is `exec`, unless `--no-lock`.
    let out = f.run(&["prod", "exec", "--hosts", "web2", "--", "true"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    let out = f.run(&["prod", "exec", "--no-lock", "--hosts", "web2", "--", "true"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    // `lock status` shows it; acquiring again with another reason leaves it alone.
    let out = f.run(&["prod", "lock", "status", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let locks = by_host(&out, "lock");
    assert_eq!(locks["web2"]["freeze"]["user"], "root");
    assert_eq!(locks["web1"]["freeze"], serde_json::Value::Null);
    let out = f.run(&["prod", "lock", "acquire", "-m", "other", "--json"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    let locks = by_host(&out, "lock");
    assert_eq!(locks["web1"]["outcome"], "acquired");
    assert_eq!(locks["web2"]["outcome"], "held");
    assert_eq!(locks["web2"]["freeze"]["reason"], "database migration");
    assert_eq!(out.statuses()["web2"], "lock_held");

    // Releasing needs no pid file; a second release changes nothing.
    let out = f.run(&["prod", "lock", "release", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        by_host(&out, "lock")
            .values()
            .all(|l| l["outcome"] == "released")
    );
    assert!(!f.path("web2", ".batou/freeze").exists());
    let out = f.run(&["prod", "lock", "release", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        by_host(&out, "lock")
            .values()
            .all(|l| l["outcome"] == "unchanged")
    );

    // Acquiring while a deploy runs is refused at once, naming the deploy.
    let mut deploy = f.hold_lock("web1");
    let out = f.run(&["prod", "lock", "acquire", "-m", "now", "--hosts", "web1"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(
        out.stderr.contains("host is locked by a deploy of root@"),
        "{}",
        out.stderr
    );
    assert!(!f.path("web1", ".batou/freeze").exists());
    let out = f.run(&["prod", "lock", "status", "--hosts", "web1", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(by_host(&out, "lock")["web1"]["holder"]["user"], "root");
    assert!(wait_for(&mut deploy).success());

    // Usage: a reason is required, and the options belong to their verbs.
    let out = f.run(&["prod", "lock", "acquire"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("needs a reason"), "{}", out.stderr);
    let out = f.run(&["prod", "status", "-m", "x"]);
    assert_eq!(out.code, 2, "{}", out.stderr);

    f.assert_idempotent(&[]);
}

#[test]
fn history_merges_the_hosts_journals_in_time_order() {
    let mut f = Fleet::start("8.133");
    let first = f.head();
    let out = f.run(&["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    f.project
        .env("prod", &ENV.replace("hello from", "welcome to"));
    git(f.project.root(), &["commit", "-q", "-am", "second"]);
    let second = f.head();
    let out = f.run(&["prod", "--hosts", "web1", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // A third deploy from a repository with changes not committed.
    std::fs::write(f.project.path("notes.txt"), "x").unwrap();
    git(f.project.root(), &["add", "notes.txt"]);
    let out = f.run(&["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    let out = f.run(&["prod", "history", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let deploys: Vec<serde_json::Value> = out
        .events()
        .into_iter()
        .filter(|e| e["event"] == "deploy")
        .collect();
    assert_eq!(deploys.len(), 3, "{}", out.stdout);
    let hosts = |d: &serde_json::Value| -> Vec<String> {
        d["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["host"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(hosts(&deploys[0]), ["db1", "web1", "web2"]);
    assert_eq!(deploys[0]["commit"], first.as_str());
    assert_eq!(deploys[0]["result"], "success");
    assert_eq!(hosts(&deploys[1]), ["web1"]);
    assert_eq!(deploys[1]["commit"], second.as_str());
    assert_eq!(deploys[1]["changed"], serde_json::json!(["web1: motd"]));
    assert_eq!(hosts(&deploys[2]), ["db1", "web1", "web2"]);
    assert_eq!(deploys[2]["commit"], format!("{second}-dirty").as_str());
    assert_eq!(
        deploys[2]["changed"],
        serde_json::json!(["db1: motd", "web2: motd"])
    );
    assert_eq!(deploys[0]["user"], "root");
    assert!(
        deploys
            .windows(2)
            .all(|w| w[0]["started"].as_str() < w[1]["started"].as_str())
    );

    // `--limit 1`: the newest only; for people one line per deploy.
    let out = f.run(&["prod", "history", "--limit", "1", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let deploys: Vec<serde_json::Value> = out
        .events()
        .into_iter()
        .filter(|e| e["event"] == "deploy")
        .collect();
    assert_eq!(deploys.len(), 1);
    assert_eq!(deploys[0]["commit"], format!("{second}-dirty").as_str());
    let out = f.run(&["prod", "history"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "  root@{}  {}  success  web1: changed web1: motd",
            hostname(),
            &second[..12]
        )),
        "{}",
        out.stderr
    );

    // An unreachable host: the others' deploys still show, and the run says it.
    f.cluster.hosts.get_mut("db1").unwrap().stop();
    let out = f.run(&["prod", "history", "--json"]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert_eq!(out.statuses()["db1"], "unreachable");
    assert_eq!(out.count("deploy"), 3, "{}", out.stdout);
    f.assert_idempotent(&["--hosts", "web1,web2"]);
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn exec_runs_a_program_on_every_host_live_with_a_timeout() {
    let mut f = Fleet::start("8.134");
    let out = f.run(&["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    std::fs::write(f.cluster.host("web2").home.join("fail"), "").unwrap();

    // Output per host as it comes; the worst host decides the exit code.
    let script = "echo first; sleep 2.5; echo second; echo oops >&2; test ! -e \"$HOME/fail\"";
    let out = f.run(&["prod", "exec", "--json", "--", "sh", "-c", script]);
    assert_eq!(out.code, 1, "{}\n{}", out.stderr, out.stdout);
    let finished = by_host(&out, "exec_finished");
    assert_eq!(finished["web1"]["exit_code"], 0);
    assert_eq!(finished["web2"]["exit_code"], 1);
    assert_eq!(out.statuses()["web2"], "failed");
    assert_eq!(out.statuses()["web1"], "unchanged");
    let lines: Vec<serde_json::Value> = out
        .events()
        .into_iter()
        .filter(|e| e["event"] == "output" && e["host"] == "db1")
        .collect();
    let texts: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l["stream"].as_str().unwrap(), l["line"].as_str().unwrap()))
        .collect();
    assert_eq!(
        texts,
        [
            ("stdout", "first"),
            ("stdout", "second"),
            ("stderr", "oops")
        ]
    );
    // A program run with the host's lock is journaled (`history` leaves it out).
    let last = f.cluster.host("web2").journal("srv").pop().unwrap();
    assert_eq!(last["record"], "exec");
    assert_eq!(last["argv"][2], script);
    assert_eq!(last["exit_code"], 1);
    // Live: the first line came while the program still slept.
    let at = |l: &serde_json::Value| humantime::parse_rfc3339(l["ts"].as_str().unwrap()).unwrap();
    let gap = at(&lines[1]).duration_since(at(&lines[0])).unwrap();
    assert!(gap >= Duration::from_secs(2), "{gap:?}");

    // The words travel as argv, never through a shell; the program runs in `base_dir`.
    let out = f.run(&[
        "prod",
        "exec",
        "--hosts",
        "web1",
        "--",
        "sh",
        "-c",
        "echo \"$0|$1\"; pwd",
        "a b;c",
        "$HOME",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("web1: a b;c|$HOME\n"), "{}", out.stderr);
    let base = f.path("web1", "");
    assert!(
        out.stderr.contains(&format!(
            "web1: {}\n",
            base.display().to_string().trim_end_matches('/')
        )),
        "{}",
        out.stderr
    );

    // `--timeout` ends the program's process group on every host: exit 6.
    let out = f.run(&[
        "prod",
        "exec",
        "--timeout",
        "1s",
        "--json",
        "--",
        "sh",
        "-c",
        "sleep 7.319; echo no",
    ]);
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(
        by_host(&out, "exec_finished")
            .values()
            .all(|e| e["timed_out"] == true),
        "{}",
        out.stdout
    );
    procs::wait_until("the sleeps to end", Duration::from_secs(10), || {
        !procs::sleeping("7.319")
    });

    // The host's lock: refused while a deploy runs, unless `--no-lock`.
    let mut deploy = f.hold_lock("web1");
    let out = f.run(&["prod", "exec", "--hosts", "web1", "--", "true"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    let journal = f.cluster.host("web1").journal("srv").len();
    let out = f.run(&["prod", "exec", "--no-lock", "--hosts", "web1", "--", "true"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(f.cluster.host("web1").journal("srv").len(), journal);
    assert!(wait_for(&mut deploy).success());

    // An unreachable host.
    f.cluster.hosts.get_mut("db1").unwrap().stop();
    let out = f.run(&["prod", "exec", "--json", "--", "true"]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert_eq!(out.statuses()["db1"], "unreachable");
    assert_eq!(out.statuses()["web1"], "unchanged");

    f.assert_idempotent(&["--hosts", "web1,web2"]);
}
