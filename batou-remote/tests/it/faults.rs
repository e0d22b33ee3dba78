//! Faults: unknown and changed host keys, unreachable hosts, held locks, killed agents, cut
//! connections, hanging commands. Each ends with a clean re-run.

use std::process::Stdio;
use std::time::{Duration, Instant};

use batou_test_support::procs::{
    Signal, agent_of, children, kill, sleeping, wait_for_some, wait_until,
};

use crate::harness::{Cluster, Project, workspace_root};

const TWO_HOSTS: &str = r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["motd"]

[hosts.web2]
components = ["motd"]

[components.motd]
type = "file"
path = "motd"
content = "Welcome to {{ host.name }}\n"
"#;

/// web1 runs a command that takes `seconds`, then a file; web2 only a file.
pub(crate) fn slow(seconds: &str) -> String {
    format!(
        r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["slow", "motd"]

[hosts.web2]
components = ["motd"]

[components.slow]
type = "command"
argv = ["sh", "-c", "sleep {seconds}; touch done"]
creates = "done"

[components.motd]
type = "file"
path = "motd"
content = "hello\n"
"#
    )
}

#[test]
fn an_unknown_host_key_is_refused_before_anything_runs() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", TWO_HOSTS);
    cluster.forget("web2");
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    let statuses = out.statuses();
    assert_eq!(statuses["web2"], "host_key_refused");
    assert_eq!(statuses["web1"], "not_attempted");
    assert!(
        !cluster.host("web1").home.join("srv/work").exists(),
        "web1 was changed"
    );
    assert!(!cluster.host("web2").home.join("srv").exists());
    let failed = out
        .events()
        .into_iter()
        .find(|e| e["event"] == "host_failed")
        .unwrap();
    assert!(
        failed["error"][0]
            .as_str()
            .unwrap()
            .contains("Host key verification failed"),
        "{failed}"
    );

    // Accepting new keys is explicit; afterwards the key is known.
    let out = cluster.run(p.root(), &["prod", "--accept-new-host-keys"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.count("changed"), 0);
}

#[test]
fn a_changed_host_key_is_refused_even_when_accepting_new_keys() {
    let mut cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", TWO_HOSTS);
    assert_eq!(cluster.run(p.root(), &["prod"]).code, 0);
    cluster.replace_host_key("web1");
    let journal_before = cluster.host("web2").journal("srv").len();
    let out = cluster.run(p.root(), &["prod", "--accept-new-host-keys", "--json"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(out.statuses()["web1"], "host_key_refused");
    assert_eq!(
        cluster.host("web2").journal("srv").len(),
        journal_before + 2,
        "web2 ran steps"
    );
}

#[test]
fn an_unreachable_host_stops_the_run_unless_keep_going() {
    let mut cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", TWO_HOSTS);
    cluster.hosts.get_mut("web2").unwrap().stop();
    let started = Instant::now();
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let statuses = out.statuses();
    assert_eq!(statuses["web2"], "unreachable");
    assert_eq!(statuses["web1"], "not_attempted");
    assert!(!cluster.host("web1").home.join("srv/work").exists());

    let out = cluster.run(p.root(), &["prod", "--keep-going", "--json"]);
    assert_eq!(out.code, 7, "{}", out.stderr);
    assert_eq!(out.statuses()["web1"], "changed");
    assert!(
        cluster
            .host("web1")
            .home
            .join("srv/work/motd/motd")
            .exists()
    );
}

#[test]
fn a_second_deploy_is_refused_while_the_first_holds_the_lock() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", &slow("3"));
    let mut first = cluster
        .command(p.root(), &["prod"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = cluster.host("web1").home.join("srv/.batou/lock");
    wait_until("web1's lock", Duration::from_secs(20), || {
        std::fs::read_to_string(&lock).is_ok_and(|t| !t.is_empty())
    });
    let out = cluster.run(p.root(), &["prod"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    let holder = format!("(pid {})", first.id());
    assert!(
        out.stderr.contains("host is locked by a deploy of root@"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&holder), "{}", out.stderr);
    assert!(first.wait().unwrap().success());
    // The lock is released with its holder; a new deploy converges with nothing to do.
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.count("changed"), 0);
}

#[test]
fn a_killed_agent_means_unknown_state_and_the_next_run_converges() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", &slow("2"));
    let first = cluster
        .command(p.root(), &["prod", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let web1 = cluster.host("web1");
    let agent = wait_for_some("web1's agent", Duration::from_secs(20), || {
        agent_of(&web1.home)
    });
    wait_until("the slow command", Duration::from_secs(20), || {
        sleeping("2")
    });
    let started = Instant::now();
    kill(agent, Signal::SIGKILL);
    let out = first.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the controller hung for {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(6));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains(r#""status":"timeout""#), "{stdout}");
    assert!(stdout.contains("the host's state is unknown"), "{stdout}");

    let out = cluster.run(p.root(), &["prod"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
}

#[test]
fn a_cut_connection_means_unknown_state_and_the_next_run_converges() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", &slow("2"));
    let first = cluster
        .command(p.root(), &["prod", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let web1 = cluster.host("web1");
    wait_until("web1's agent", Duration::from_secs(20), || {
        agent_of(&web1.home).is_some()
    });
    wait_until("the slow command", Duration::from_secs(20), || {
        sleeping("2")
    });
    // Cut the connection: end web1's per-connection sshd processes (children of our sshd).
    for child in children(web1.pid()) {
        kill(child, Signal::SIGKILL);
    }
    let out = first.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The agent goes away with its session (recording the abort if it still can), which
    // releases the lock.
    wait_until("the agent to end", Duration::from_secs(20), || {
        agent_of(&web1.home).is_none()
    });
    let journal = web1.journal("srv");
    assert_eq!(journal[0]["record"], "started", "{journal:?}");
    assert!(
        !journal.iter().any(|r| r["record"] == "finished"),
        "{journal:?}"
    );
    let out = cluster.run(p.root(), &["prod"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
}

#[test]
fn a_hanging_command_fails_at_its_deadline() {
    let cluster = Cluster::start(&["web1"]);
    let p = Project::new();
    p.env(
        "prod",
        "[environment]\nbase_dir = \"srv\"\n[hosts.web1]\ncomponents = [\"hang\"]\n[components.hang]\ntype = \"command\"\nargv = [\"sleep\", \"60\"]\ncreates = \"never\"\ntimeout = 0.5\n",
    );
    let started = Instant::now();
    let out = cluster.run(p.root(), &["prod"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        out.stderr
            .contains("web1:   error: command `sleep 60` timed out after 0.5 s and was killed"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("  web1  failed"), "{}", out.stderr);
}

#[test]
fn hosts_limits_the_run_and_checks_dependencies_outside_it() {
    let cluster = Cluster::start(&["db1", "web1", "web2"]);
    let shop = workspace_root().join("examples/shop");
    let out = cluster.run(&shop, &["production", "--hosts", "web1"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("`web1: app` requires `db1: database`, which is not in this run and has not been deployed according to its host's journal"),
        "{}",
        out.stderr
    );
    assert!(!cluster.host("web1").home.join("srv").exists());

    assert_eq!(
        cluster.run(&shop, &["production", "--hosts", "db1"]).code,
        0
    );
    let logins = cluster.host("web2").logins();
    let out = cluster.run(&shop, &["production", "--hosts", "web1", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.statuses().keys().collect::<Vec<_>>(), ["web1"]);
    assert_eq!(cluster.host("web2").logins(), logins, "web2 was contacted");
    assert!(
        cluster
            .host("web1")
            .home
            .join("srv/work/app/config/app.toml")
            .exists()
    );
}

#[test]
fn a_crashing_agent_shows_its_stderr() {
    let cluster = Cluster::start(&["web1"]);
    let p = Project::new();
    p.env(
        "prod",
        "[environment]\nbase_dir = \"srv\"\n[hosts.web1]\ncomponents = [\"motd\"]\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ncontent = \"hi\\n\"\n",
    );
    assert_eq!(cluster.run(p.root(), &["prod"]).code, 0);
    // Put a crashing program where the cached agent is.
    let cache = cluster.host("web1").home.join(".cache/batou/agents");
    let agent = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .unwrap();
    let mut script = String::from("#!/bin/sh\n");
    for i in 0..50 {
        script.push_str(&format!("echo \"noise {i}\" >&2\n"));
    }
    script.push_str("echo 'agent: out of cheese' >&2\nexit 3\n");
    std::fs::write(&agent, script).unwrap();
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 6, "{}\n{}", out.stdout, out.stderr);
    let failed = out
        .events()
        .into_iter()
        .find(|e| e["event"] == "host_failed")
        .unwrap();
    let error = failed["error"][0].as_str().unwrap();
    assert!(error.contains("the agent ended unexpectedly"), "{error}");
    assert!(error.contains("\n  agent: out of cheese"), "{error}");
    // Only the last lines are kept.
    assert!(error.contains("noise 49"), "{error}");
    assert!(!error.contains("noise 10\n"), "{error}");
    let out = cluster.run(p.root(), &["prod"]);
    assert_eq!(out.code, 6);
    for line in out.stderr.lines().filter(|l| l.contains("cheese")) {
        assert!(
            line.starts_with("web1: ") || line.starts_with("  web1  "),
            "{line:?}\n{}",
            out.stderr
        );
    }

    // A removed agent is uploaded again; then nothing changes.
    std::fs::remove_file(&agent).unwrap();
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.count("agent_uploaded"), 1);
    assert_eq!(out.count("changed"), 0);
}

#[test]
fn every_line_of_a_multi_line_ssh_error_names_its_host() {
    let mut cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", TWO_HOSTS);
    assert_eq!(cluster.run(p.root(), &["prod"]).code, 0);
    // A changed key makes ssh print its many-line warning.
    cluster.replace_host_key("web1");
    let out = cluster.run(p.root(), &["prod"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{}",
        out.stderr
    );
    let summary = out.stderr.find("summary:").unwrap();
    let (live, summary) = out.stderr.split_at(summary);
    for line in live.lines() {
        assert!(
            line.starts_with("web1: ") || line.starts_with("web2: "),
            "{line:?}\n{}",
            out.stderr
        );
    }
    let summary: Vec<&str> = summary.lines().collect();
    assert!(summary.len() > 4, "{}", out.stderr);
    for line in &summary[1..summary.len() - 1] {
        assert!(
            line.starts_with("  web1  ") || line.starts_with("  web2  "),
            "{line:?}\n{}",
            out.stderr
        );
    }
    cluster.forget("web1");
    cluster.trust("web1");
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.count("changed"), 0);
}

#[test]
fn an_address_shaped_like_an_ssh_option_runs_nothing() {
    let cluster = Cluster::start(&["web1"]);
    let marker = std::env::temp_dir().join(format!("bt-proxy-{}", std::process::id()));
    let p = Project::new();
    let env = |address: &str| {
        format!(
            "[environment]\nbase_dir = \"srv\"\n\n[hosts.web1]\n{address}components = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ncontent = \"hello\\n\"\n"
        )
    };
    p.env(
        "prod",
        &env(&format!(
            "address = \"-oProxyCommand=touch {}\"\n",
            marker.display()
        )),
    );
    let out = cluster.run(p.root(), &["prod"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("environments/prod.toml:5:"),
        "{}",
        out.stderr
    );
    assert!(!marker.exists(), "the address ran as an ssh option");
    assert_eq!(cluster.host("web1").logins(), 0);
    assert!(!cluster.host("web1").home.join("srv").exists());

    // The same host by its name deploys, and then changes nothing.
    p.env("prod", &env(""));
    let out = cluster.run(p.root(), &["prod"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
    assert!(!marker.exists());
}

#[test]
fn an_environment_without_hosts_is_a_configuration_error() {
    let cluster = Cluster::start(&["web1"]);
    let p = Project::new();
    p.env("prod", "[environment]\nbase_dir = \"srv\"\n");
    let out = cluster.run(p.root(), &["prod"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "error: environment `prod` has no hosts in environments/prod.toml\nhint: add a `[hosts.<name>]` table with `components = [...]`\n"
    );
    // The same words as batou-local's `choose_host`.
    assert_eq!(cluster.host("web1").logins(), 0);
}

#[test]
fn the_hosts_check_wants_the_latest_deploy_to_have_succeeded() {
    let mut cluster = Cluster::start(&["db1", "web1", "web2"]);
    let shop = workspace_root().join("examples/shop");
    assert_eq!(
        cluster.run(&shop, &["production", "--hosts", "db1"]).code,
        0
    );
    let db1 = cluster.host("db1");
    let journal = db1.home.join("srv/.batou/journal.jsonl");
    let succeeded = std::fs::read_to_string(&journal).unwrap();

    // A later deploy of `database` failed: its success before no longer counts.
    let mut failed = succeeded.clone();
    failed.push_str(
        &serde_json::json!({
            "time": "2100-01-01T00:00:00Z", "record": "step", "environment": "production",
            "host": "db1", "user": "root", "controller_host": "test", "pid": 1,
            "component": "database", "outcome": "failed", "changed": [],
        })
        .to_string(),
    );
    failed.push('\n');
    std::fs::write(&journal, &failed).unwrap();
    let out = cluster.run(&shop, &["production", "--hosts", "web1"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("`web1: app` requires `db1: database`, which is not in this run and its last deploy failed according to its host's journal"),
        "{}",
        out.stderr
    );
    assert!(!cluster.host("web1").home.join("srv").exists());

    // A dry run contacts no host outside `--hosts`: it skips the check with a warning.
    let logins = cluster.host("db1").logins();
    let out = cluster.run(&shop, &["production", "--hosts", "web1", "--dry-run"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("warning: dry run: not checking that `db1: database`, which `web1: app` requires and which is not in this run, was deployed"),
        "{}",
        out.stderr
    );
    assert_eq!(cluster.host("db1").logins(), logins, "db1 was contacted");
    assert!(!cluster.host("web1").home.join("srv").exists());

    // With the journal as the successful deploy left it, web1 converges, and then again
    // with nothing to do.
    std::fs::write(&journal, &succeeded).unwrap();
    let out = cluster.run(&shop, &["production", "--hosts", "web1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cluster.run(&shop, &["production", "--hosts", "web1", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
    let web1_journal = cluster.host("web1").journal("srv").len();

    // An excluded host that cannot be reached is unreachable (7), not a configuration error.
    cluster.hosts.get_mut("db1").unwrap().stop();
    let out = cluster.run(&shop, &["production", "--hosts", "web1", "--json"]);
    assert_eq!(out.code, 7, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(r#""kind":"unreachable""#),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("error: dependencies outside `--hosts` could not be checked: `web1: app` requires `db1: database`, which is not in this run and could not be checked: host `db1` unreachable: "),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("hint: make the host reachable"),
        "{}",
        out.stderr
    );
    assert_eq!(cluster.host("web1").journal("srv").len(), web1_journal);
}

#[test]
fn a_signal_stops_the_hosts_check_at_once() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let cluster = Cluster::start(&["db1", "web1", "web2"]);
    let shop = workspace_root().join("examples/shop");
    assert_eq!(
        cluster.run(&shop, &["production", "--hosts", "db1"]).code,
        0
    );
    // db1's sshd is frozen: reading its journal would wait for the connect timeout.
    let db1 = Pid::from_raw(cluster.host("db1").pid() as i32);
    kill(db1, Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    let child = cluster
        .command(&shop, &["production", "--hosts", "web1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let out = crate::harness::Outcome::from(child.wait_with_output().unwrap());
    let elapsed = started.elapsed();
    kill(db1, Signal::SIGCONT).unwrap();
    assert_eq!(out.code, 130, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "error: interrupted while reading the journals of the hosts outside `--hosts`"
        ),
        "{}",
        out.stderr
    );
    // Well before the 3 s connect timeout would have ended the check.
    assert!(elapsed < Duration::from_millis(2900), "took {elapsed:?}");
    assert!(!cluster.host("web1").home.join("srv").exists());

    let out = cluster.run(&shop, &["production", "--hosts", "web1"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = cluster.run(&shop, &["production", "--hosts", "web1", "--json"]);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
}
