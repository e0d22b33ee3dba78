//! Commands are bounded: a timeout bounds the whole command, and background processes never
//! block a run and are ended with their command. Values no program can receive (NUL bytes,
//! `=` in an env key) are cases of the bad-input corpus (`bad_input.rs`).

use std::time::{Duration, Instant};

use batou_test_support::procs::{sleeping, wait_until};

use crate::harness::Project;

/// One host running one command component `job` with the given attribute lines.
fn job(attributes: &str) -> String {
    format!(
        "[hosts.localhost]\ncomponents = [\"job\"]\n\n[components.job]\ntype = \"command\"\n{attributes}\n"
    )
}

/// A command that converges, so that a scenario can end with a run that changes nothing.
const CONVERGES: &str = "argv = [\"touch\", \"ok\"]\ncreates = \"ok\"";

#[test]
fn a_timeout_bounds_a_command_with_a_background_child() {
    let p = Project::new();
    p.env(
        "dev",
        &job("argv = [\"sh\", \"-c\", \"sleep 20.123 & echo started; wait\"]\ncreates = \"never\"\ntimeout = 2"),
    );
    let started = Instant::now();
    let out = p.run(&["dev"]);
    let took = started.elapsed();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(took < Duration::from_secs(10), "the run took {took:?}");
    assert!(
        out.stderr.contains(
            "error: command `sh -c sleep 20.123 & echo started; wait` timed out after 2 s and was killed"
        ),
        "{}",
        out.stderr
    );
    // The tail of its output comes with the error.
    assert!(
        out.stderr
            .contains("--- stdout ---\nlocalhost:     started"),
        "{}",
        out.stderr
    );
    assert!(!sleeping("20.123"), "the background child outlived the run");

    p.env("dev", &job(CONVERGES));
    p.converge_twice(&["dev"]);
}

#[test]
fn a_background_child_holding_the_output_never_blocks_a_run() {
    // The reproduction from the issue: the direct child exits at once, its background child
    // holds the pipes for 20 s. The run goes on (here the guard is never satisfied, so the
    // component did not converge) and the background child is ended.
    let p = Project::new();
    p.env(
        "dev",
        &job("argv = [\"sh\", \"-c\", \"sleep 20.124 & echo started\"]\ncreates = \"never\"\ntimeout = 2"),
    );
    let started = Instant::now();
    let out = p.run(&["dev"]);
    let took = started.elapsed();
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(took < Duration::from_secs(10), "the run took {took:?}");
    assert!(
        out.stderr
            .contains("component did not converge: still `never` does not exist after update"),
        "{}",
        out.stderr
    );
    assert!(!sleeping("20.124"), "the background child outlived the run");

    // A command that does its work and leaves a child behind succeeds promptly.
    p.env(
        "dev",
        &job("argv = [\"sh\", \"-c\", \"sleep 20.125 & echo started > made\"]\ncreates = \"made\"\nshow_output = true"),
    );
    let started = Instant::now();
    let out = p.run(&["dev", "--json"]);
    let took = started.elapsed();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(took < Duration::from_secs(6), "the run took {took:?}");
    assert!(out.changed().contains(&"job".to_string()), "{}", out.stdout);
    assert!(p.path("work/job/made").exists());
    assert!(!sleeping("20.125"), "the background child outlived the run");
    p.assert_idempotent(&["dev"]);
}

#[test]
fn a_command_does_not_outlive_a_killed_run() {
    let p = Project::new();
    p.env(
        "dev",
        &job("argv = [\"sh\", \"-c\", \"sleep 20.126; touch made\"]\ncreates = \"made\""),
    );
    let mut run = std::process::Command::new(env!("CARGO_BIN_EXE_batou-local"))
        .arg("dev")
        .current_dir(p.root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .env_remove("BATOU_PROJECT_BINARY")
        .spawn()
        .unwrap();
    wait_until("the command to start", Duration::from_secs(20), || {
        sleeping("20.126")
    });
    run.kill().unwrap();
    run.wait().unwrap();
    let killed = Instant::now();
    while sleeping("20.126") {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the command outlived the run"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!p.path("work/job/made").exists());

    p.env("dev", &job(CONVERGES));
    p.converge_twice(&["dev"]);
}
