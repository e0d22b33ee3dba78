//! Interrupts: SIGINT and SIGTERM to a running controller stop it in order (running steps
//! finish, later steps do not start, sessions end, masters stop, the control directory goes,
//! exit 130); a second signal stops it at once, still cleaning up.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use batou_test_support::procs::{
    agent_of, alive, argv, process_group, processes, sleeping, wait_until,
};

use crate::faults::slow;
use crate::harness::{Cluster, Project};

/// How a signal reaches the controller.
#[derive(Clone, Copy)]
enum Target {
    Process,
    Group,
}

struct Running {
    child: Child,
    masters: Vec<u32>,
    control_dir: PathBuf,
}

/// Starts a deploy and waits until web1's slow command runs.
fn start(cluster: &Cluster, p: &Project, seconds: &str, json: bool) -> Running {
    let mut args = vec!["prod", "--jobs", "1"];
    if json {
        args.push("--json");
    }
    let child = cluster
        .command(p.root(), &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    wait_until("web1's slow command", Duration::from_secs(20), || {
        sleeping(seconds)
    });
    let masters = masters(cluster);
    assert_eq!(masters.len(), 2, "one master per host");
    // A terminal's Ctrl-C goes to its foreground process group: the masters are not in the
    // controller's (which the test made its own with `process_group(0)`).
    for pid in &masters {
        assert_ne!(process_group(*pid), child.id(), "master {pid}");
    }
    let control_dir = masters
        .iter()
        .find_map(|pid| control_socket(*pid))
        .and_then(|s| s.parent().map(PathBuf::from))
        .expect("a master's control socket");
    assert!(control_dir.starts_with("/tmp"), "{control_dir:?}");
    assert!(control_dir.is_dir());
    Running {
        child,
        masters,
        control_dir,
    }
}

fn signal(run: &Running, target: Target, signal: Signal) {
    let pid = Pid::from_raw(run.child.id() as i32);
    match target {
        Target::Process => kill(pid, signal).unwrap(),
        Target::Group => killpg(pid, signal).unwrap(),
    }
}

/// Everything a run must leave behind it, whichever way it was stopped.
fn assert_cleaned_up(masters: &[u32], control_dir: &Path) {
    assert!(
        !control_dir.exists(),
        "control directory {control_dir:?} left"
    );
    wait_until("the masters to stop", Duration::from_secs(20), || {
        masters.iter().all(|pid| !alive(*pid))
    });
}

fn interrupted_in_order(target: Target, sig: Signal, seconds: &str, json: bool) {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", &slow(seconds));
    let run = start(&cluster, &p, seconds, json);
    signal(&run, target, sig);
    let Running {
        child,
        masters,
        control_dir,
    } = run;
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(stderr.contains("no further step starts"), "{stderr}");
    let outcome = crate::harness::Outcome {
        code: 130,
        stdout,
        stderr,
    };
    if json {
        let statuses = outcome.statuses();
        assert_eq!(statuses["web1"], "interrupted", "{}", outcome.stdout);
        assert_eq!(statuses["web2"], "interrupted", "{}", outcome.stdout);
        let interrupted: Vec<_> = outcome
            .events()
            .into_iter()
            .filter(|e| e["event"] == "interrupted")
            .collect();
        assert_eq!(interrupted.len(), 2, "{}", outcome.stdout);
    } else {
        let err = &outcome.stderr;
        for line in [
            "web1: interrupted: not started: motd\n",
            "web2: interrupted: not started: motd\n",
            "\n  web1  interrupted      changed: slow; not started: motd\n",
            "\n  web2  interrupted      not started: motd\n",
            "\n2 hosts: 0 changed, 0 unchanged, 0 failed, 2 interrupted in ",
        ] {
            assert!(err.contains(line), "{line:?} missing:\n{err}");
        }
    }
    let web1 = cluster.host("web1");
    let web2 = cluster.host("web2");
    // The running step finished; the steps after it did not start.
    assert!(web1.home.join("srv/work/slow/done").exists());
    assert!(!web1.home.join("srv/work/motd").exists());
    assert!(!web2.home.join("srv/work/motd").exists());
    // Sessions ended with `finish`: both journals are complete, and neither says success:
    // web1 ran one of its two steps, web2 none.
    for (host, result) in [(web1, "incomplete"), (web2, "not_attempted")] {
        let journal = host.journal("srv");
        let last = journal.last().unwrap();
        assert_eq!(last["record"], "finished", "{journal:?}");
        assert_eq!(last["result"], result, "{journal:?}");
    }
    assert_cleaned_up(&masters, &control_dir);
    converge_and_settle(&cluster, &p);
}

/// The locks are free: a re-run converges the rest, and a further run changes nothing.
fn converge_and_settle(cluster: &Cluster, p: &Project) {
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.count("changed") >= 2, "{}", out.stdout);
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
}

#[test]
fn sigint_to_the_controller_stops_after_the_running_step() {
    interrupted_in_order(Target::Process, Signal::SIGINT, "3.31", true);
}

#[test]
fn sigterm_to_the_controller_stops_after_the_running_step() {
    interrupted_in_order(Target::Process, Signal::SIGTERM, "3.32", false);
}

#[test]
fn sigint_to_the_process_group_spares_the_ssh_masters() {
    interrupted_in_order(Target::Group, Signal::SIGINT, "3.33", true);
}

#[test]
fn a_second_signal_stops_at_once_and_still_cleans_up() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", &slow("4.34"));
    let mut run = start(&cluster, &p, "4.34", true);
    signal(&run, Target::Group, Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    signal(&run, Target::Group, Signal::SIGINT);
    let status = run.child.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // The slow command takes 4.34 s: the controller did not wait for it.
    assert_eq!(status.code(), Some(130));
    assert_cleaned_up(&run.masters, &run.control_dir);
    // The agent ends once it finds its controller gone (at the latest when its step is
    // done), which frees the lock.
    wait_until("web1's agent to end", Duration::from_secs(20), || {
        agent_of(&cluster.host("web1").home).is_none()
    });
    converge_and_settle(&cluster, &p);
}

/// The master connections of this cluster's runs (by their `-F` argument).
fn masters(cluster: &Cluster) -> Vec<u32> {
    let config = cluster.ssh_config.to_string_lossy().into_owned();
    processes()
        .into_iter()
        .filter(|(_, args)| {
            args.first().is_some_and(|a| a.ends_with("ssh"))
                && args.iter().any(|a| a == "-M")
                && args.contains(&config)
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// The control socket of master `pid` (its `-S` argument).
fn control_socket(pid: u32) -> Option<PathBuf> {
    let args = argv(pid)?;
    let i = args.iter().position(|a| a == "-S")?;
    args.get(i + 1).map(PathBuf::from)
}

/// A host still waiting to be prepared when the signal comes is not contacted at all.
#[test]
fn hosts_not_yet_prepared_are_not_contacted_after_a_signal() {
    let cluster = Cluster::start(&["a1", "b2"]);
    let p = Project::new();
    p.env(
        "prod",
        "[environment]\nbase_dir = \"srv\"\n[hosts.a1]\ncomponents = [\"motd\"]\n[hosts.b2]\ncomponents = [\"motd\"]\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ncontent = \"hi\\n\"\n",
    );
    // Both sshds accept connections but never answer: the host that gets the only slot
    // (`--jobs 1`) is being prepared until the connect deadline, the other one waits.
    let frozen: Vec<Pid> = ["a1", "b2"]
        .iter()
        .map(|h| Pid::from_raw(cluster.host(h).pid() as i32))
        .collect();
    for pid in &frozen {
        kill(*pid, Signal::SIGSTOP).unwrap();
    }
    let mut child = cluster
        .command(p.root(), &["prod", "--json", "--jobs", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Every host the controller opens a connection to, by the destination of its master.
    let mut contacted = std::collections::BTreeSet::new();
    let mut first_seen: Option<Instant> = None;
    let mut interrupted = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the controller did not end");
        for pid in masters(&cluster) {
            if let Some(args) = argv(pid) {
                contacted.insert(args.last().unwrap().clone());
                first_seen.get_or_insert_with(Instant::now);
            }
        }
        // Once a connection is under way (so the controller handles signals), interrupt.
        if !interrupted && first_seen.is_some_and(|t| t.elapsed() > Duration::from_millis(300)) {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
            interrupted = true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for pid in &frozen {
        kill(*pid, Signal::SIGCONT).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let outcome = crate::harness::Outcome::from(out);
    assert_eq!(outcome.code, 130, "{}\n{}", outcome.stdout, outcome.stderr);
    assert_eq!(contacted.len(), 1, "{contacted:?}");
    let first = contacted.into_iter().next().unwrap();
    let other = if first == "a1" { "b2" } else { "a1" };
    let statuses = outcome.statuses();
    assert_eq!(statuses[&first], "unreachable", "{}", outcome.stdout);
    assert_eq!(statuses[other], "interrupted", "{}", outcome.stdout);
    assert!(!cluster.host(other).home.join("srv").exists());

    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.count("changed"), 0, "{}", out.stdout);
}

/// A step still running `--agent-timeout` after the signal leaves its host's state unknown.
#[test]
fn a_step_that_outlasts_the_grace_leaves_its_host_unknown() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    // The harness's agent timeout is 10 s.
    p.env("prod", &slow("13.5"));
    let run = start(&cluster, &p, "13.5", true);
    let started = Instant::now();
    signal(&run, Target::Process, Signal::SIGTERM);
    let Running {
        child,
        masters,
        control_dir,
    } = run;
    let out = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    let outcome = crate::harness::Outcome::from(out);
    assert_eq!(outcome.code, 6, "{}\n{}", outcome.stdout, outcome.stderr);
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    assert_eq!(outcome.statuses()["web1"], "interrupted");
    assert_eq!(outcome.statuses()["web2"], "interrupted");
    assert!(
        outcome.stdout.contains(
            "`slow` was still running 10s after the interrupt: the host's state is unknown"
        ),
        "{}",
        outcome.stdout
    );
    assert_cleaned_up(&masters, &control_dir);
    wait_until("web1's agent to end", Duration::from_secs(20), || {
        agent_of(&cluster.host("web1").home).is_none()
    });
    converge_and_settle(&cluster, &p);
}
