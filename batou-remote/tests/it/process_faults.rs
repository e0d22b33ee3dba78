//! Commands on remote hosts are bounded and never outlive their agent: a backgrounded child
//! does not keep a run alive, a killed agent or a cut connection takes its running command
//! with it, and the host lock is held until that command is gone, so a step never runs twice
//! at once. Also: a prepared host whose run stopped before any step records that no step ran.

use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use batou_test_support::procs::{
    Signal, agent_of, children, kill, processes_with_args, wait_until,
};

use crate::harness::{Cluster, Project};

/// One host `web1` running one command component `job` with the given attribute lines.
fn job(attributes: &str) -> String {
    format!(
        "[environment]\nbase_dir = \"srv\"\n\n[hosts.web1]\ncomponents = [\"job\"]\n\n[components.job]\ntype = \"command\"\n{attributes}\n"
    )
}

/// A command that converges, so that a scenario can end with a run that changes nothing.
const CONVERGES: &str = "argv = [\"touch\", \"ok\"]\ncreates = \"ok\"";

#[test]
fn a_timeout_bounds_a_backgrounded_command_on_a_host() {
    let cluster = Cluster::start(&["web1"]);
    let p = Project::new();
    p.env(
        "prod",
        &job("argv = [\"sh\", \"-c\", \"sleep 20.201 & echo started; wait\"]\ncreates = \"never\"\ntimeout = 2"),
    );
    let started = Instant::now();
    let out = cluster.run(p.root(), &["prod"]);
    let took = started.elapsed();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(took < Duration::from_secs(12), "the run took {took:?}");
    assert!(
        out.stderr.contains(
            "web1:   error: command `sh -c sleep 20.201 & echo started; wait` timed out after 2 s and was killed"
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("started"), "{}", out.stderr);
    assert!(processes_with_args(&["sleep", "20.201"]).is_empty());

    // The issue's reproduction: the direct child exits, a background child holds the pipes.
    p.env(
        "prod",
        &job("argv = [\"sh\", \"-c\", \"sleep 20.202 & echo started\"]\ncreates = \"never\"\ntimeout = 2"),
    );
    let started = Instant::now();
    let out = cluster.run(p.root(), &["prod"]);
    let took = started.elapsed();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(took < Duration::from_secs(12), "the run took {took:?}");
    assert!(
        out.stderr.contains("component did not converge"),
        "{}",
        out.stderr
    );
    assert!(processes_with_args(&["sleep", "20.202"]).is_empty());

    p.env("prod", &job(CONVERGES));
    assert_eq!(cluster.run(p.root(), &["prod"]).code, 0);
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
}

/// A command that records each start in `runs.log`, noting `double` when the previous
/// starter still runs (a zombie does not count: nothing may reap it here); the first run ignores SIGTERM (so only the guard's SIGKILL, after its
/// grace, ends it) and sleeps `marker` seconds (a marker for finding it), later ones a moment.
fn recorded(marker: &str) -> String {
    RECORDED.replace("MARKER", marker)
}

const RECORDED: &str = r#"argv = ["sh", "-c", """
old=/proc/$(cat running 2>/dev/null)
if [ -f running ] && [ -e "$old" ] && ! grep -q '^State:.Z' "$old/status"; then echo double >> runs.log; fi
echo $$ > running
echo "start $$" >> runs.log
if [ -f once ]; then sleep 0.2; else touch once; trap '' TERM; sleep MARKER; fi
echo "end $$" >> runs.log
touch done
"""]
creates = "done"
timeout = 60"#;

#[test]
fn a_killed_agent_takes_its_command_with_it_and_a_step_never_runs_twice() {
    let cluster = Cluster::start(&["web1"]);
    let p = Project::new();
    p.env("prod", &job(&recorded("20.203")));
    let web1 = cluster.host("web1");
    let first = cluster
        .command(p.root(), &["prod", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = None;
    wait_until("the agent and its command", Duration::from_secs(20), || {
        agent = agent_of(&web1.home);
        agent.is_some() && !processes_with_args(&["sleep", "20.203"]).is_empty()
    });
    kill(agent.unwrap(), Signal::SIGKILL);

    // An immediate re-run is refused while the guard ends the old command, or runs after it.
    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert!(
        again.code == 5 || again.code == 0,
        "{}\n{}",
        again.stdout,
        again.stderr
    );
    if again.code == 5 {
        assert_eq!(again.statuses()["web1"], "lock_held", "{}", again.stdout);
    }
    let took = wait_until("the old command to end", Duration::from_secs(10), || {
        processes_with_args(&["sleep", "20.203"]).is_empty()
    });
    assert!(took < Duration::from_secs(10));
    let out = first.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Once the guard has ended the command the lock is free; a re-run converges.
    let log = web1.home.join("srv/work/job/runs.log");
    wait_until("the lock to be free", Duration::from_secs(10), || {
        agent_of(&web1.home).is_none()
    });
    let mut out = cluster.run(p.root(), &["prod"]);
    for _ in 0..20 {
        if out.code != 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        out = cluster.run(p.root(), &["prod"]);
    }
    assert_eq!(out.code, 0, "{}", out.stderr);
    let runs = std::fs::read_to_string(&log).unwrap();
    assert!(!runs.contains("double"), "two copies ran at once:\n{runs}");
    assert_eq!(runs.matches("end ").count(), 1, "{runs}");
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
}

#[test]
fn a_cut_connection_ends_the_running_command() {
    let cluster = Cluster::start(&["web1"]);
    let p = Project::new();
    p.env("prod", &job(&recorded("20.204")));
    let web1 = cluster.host("web1");
    let first = cluster
        .command(p.root(), &["prod", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the command", Duration::from_secs(20), || {
        agent_of(&web1.home).is_some() && !processes_with_args(&["sleep", "20.204"]).is_empty()
    });
    // Cut the connection: end web1's per-connection sshd processes (children of our sshd).
    for child in children(web1.pid()) {
        kill(child, Signal::SIGKILL);
    }
    // The agent notices the end of its input mid-step and ends; its guard ends the command.
    wait_until("the agent to end", Duration::from_secs(10), || {
        agent_of(&web1.home).is_none()
    });
    wait_until("the command to end", Duration::from_secs(10), || {
        processes_with_args(&["sleep", "20.204"]).is_empty()
    });
    let out = first.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut out = cluster.run(p.root(), &["prod"]);
    for _ in 0..20 {
        if out.code != 5 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        out = cluster.run(p.root(), &["prod"]);
    }
    assert_eq!(out.code, 0, "{}", out.stderr);
    let runs = std::fs::read_to_string(web1.home.join("srv/work/job/runs.log")).unwrap();
    assert!(!runs.contains("double"), "two copies ran at once:\n{runs}");
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
}

#[test]
fn a_prepared_host_records_that_no_step_ran_when_another_host_failed_to_prepare() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env(
        "prod",
        "[environment]\nbase_dir = \"srv\"\n[hosts.web1]\ncomponents = [\"motd\"]\n[hosts.web2]\ncomponents = [\"motd\"]\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ncontent = \"hello\\n\"\n",
    );
    // Hold web2's lock, as another deploy would.
    let state = cluster.host("web2").home.join("srv/.batou");
    std::fs::create_dir_all(&state).unwrap();
    let file = std::fs::File::create(state.join("lock")).unwrap();
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    assert!(held.as_raw_fd() >= 0);
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert_eq!(out.statuses()["web1"], "not_attempted", "{}", out.stdout);
    let journal = cluster.host("web1").journal("srv");
    let finished = journal
        .iter()
        .rfind(|r| r["record"] == "finished")
        .unwrap_or_else(|| panic!("{journal:?}"));
    assert_eq!(finished["result"], "not_attempted", "{finished}");
    assert!(
        !journal.iter().any(|r| r["record"] == "step"),
        "{journal:?}"
    );
    // The base directory is public, only the state directory is private.
    let mode = |path: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(cluster.host("web1").home.join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("srv"), 0o755);
    assert_eq!(mode("srv/.batou"), 0o700);

    drop(held);
    assert_eq!(cluster.run(p.root(), &["prod"]).code, 0);
    let journal = cluster.host("web1").journal("srv");
    assert_eq!(journal.last().unwrap()["result"], "success", "{journal:?}");
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
}
