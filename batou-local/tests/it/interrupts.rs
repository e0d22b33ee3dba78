//! Interrupts: the first SIGINT or SIGTERM stops `batou-local` after the running root
//! component (exit 130, the summary says interrupted); a second one stops it at once.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use batou_test_support::procs::{sleeping, wait_until};

use crate::harness::{Outcome, Project};

fn slow(seconds: &str) -> String {
    format!(
        r#"
[hosts.localhost]
components = ["slow", "motd"]

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

fn start(p: &Project, seconds: &str, args: &[&str]) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_batou-local"))
        .args(args)
        .current_dir(p.root())
        .env("RUST_BACKTRACE", "0")
        .env_remove("BATOU_PROJECT_BINARY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    wait_until("the slow command", Duration::from_secs(20), || {
        sleeping(seconds)
    });
    child
}

fn finish(child: Child) -> Outcome {
    Outcome::from(child.wait_with_output().unwrap())
}

#[test]
fn a_signal_stops_after_the_running_root_component() {
    for (signal, seconds, group) in [
        (Signal::SIGINT, "2.41", false),
        (Signal::SIGTERM, "2.42", false),
        (Signal::SIGINT, "2.43", true),
    ] {
        let p = Project::new();
        p.env("dev", &slow(seconds));
        let child = start(&p, seconds, &["dev", "--json"]);
        let pid = Pid::from_raw(child.id() as i32);
        if group {
            killpg(pid, signal).unwrap();
        } else {
            kill(pid, signal).unwrap();
        }
        let out = finish(child);
        assert_eq!(out.code, 130, "{}\n{}", out.stdout, out.stderr);
        assert!(
            p.path("work/slow/done").exists(),
            "the running step finished"
        );
        assert!(!p.path("work/motd").exists(), "a later step ran");
        let events = out.events();
        let interrupted = events
            .iter()
            .find(|e| e["event"] == "interrupted")
            .expect("an interrupted event");
        assert_eq!(interrupted["not_started"], serde_json::json!(["motd"]));
        let finished = events
            .iter()
            .find(|e| e["event"] == "host_finished")
            .unwrap();
        assert_eq!(finished["changed"], serde_json::json!(["slow"]));
        assert_eq!(finished["not_attempted"], serde_json::json!(["motd"]));
        p.converge_twice(&["dev"]);
    }

    // Human output.
    let p = Project::new();
    p.env("dev", &slow("2.44"));
    let child = start(&p, "2.44", &["dev"]);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let out = finish(child);
    assert_eq!(out.code, 130, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("SIGINT: no further root component starts"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("localhost: interrupted: not started: motd\n"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("1 host: 0 changed, 0 unchanged, 0 failed, 1 interrupted in "),
        "{}",
        out.stderr
    );
    p.converge_twice(&["dev"]);
}

#[test]
fn a_second_signal_stops_at_once() {
    let p = Project::new();
    p.env("dev", &slow("3.45"));
    let mut child = start(&p, "3.45", &["dev"]);
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    kill(pid, Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(130));
    assert!(!p.path("work/motd").exists());
    // Whatever the stopped command left, the next runs converge and then change nothing.
    wait_until("the slow command to end", Duration::from_secs(20), || {
        !sleeping("3.45")
    });
    p.converge_twice(&["dev"]);
}
