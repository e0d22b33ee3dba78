//! `scripts/demo-remote`, run as a user would, with the build output outside `./target`:
//! it finds the binaries through cargo, deploys to three loopback hosts, deploys again with
//! no change, and leaves no sshd running; a failed build starts no host.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use batou_test_support::{INSTALL, bin, procs};

use crate::harness::workspace_root;

/// Runs the demo with `CARGO_TARGET_DIR=target_dir` and `--keep`; panics after `deadline`.
fn demo(target_dir: &Path, deadline: Duration) -> (i32, String) {
    assert!(
        Path::new("/usr/sbin/sshd").exists(),
        "sshd is missing: {INSTALL}"
    );
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(workspace_root().join("scripts/demo-remote"))
        .arg("--keep")
        .current_dir(std::env::temp_dir())
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let end = Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > end {
            procs::kill(child.id(), nix::sys::signal::Signal::SIGTERM);
            child.wait().unwrap();
            panic!(
                "the demo ran longer than {deadline:?}:\n{}",
                std::fs::read_to_string(log.path()).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(log.path()).unwrap();
    (status.code().unwrap_or(-1), output)
}

#[test]
fn the_remote_demo_honours_cargo_target_dir_and_stops_its_hosts() {
    // Another name for this build's target directory: cargo builds nothing new, and a script
    // that looked in `./target` would not find its binaries through this name.
    let target = bin("batou-remote")
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let names = tempfile::tempdir().unwrap();
    let alias = names.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, &alias).unwrap();
    let (code, output) = demo(&alias, Duration::from_secs(600));
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("3 hosts: 3 changed, 0 unchanged, 0 failed"),
        "{output}"
    );
    assert!(
        output.contains("3 hosts: 0 changed, 3 unchanged, 0 failed"),
        "{output}"
    );
    let root: PathBuf = output
        .lines()
        .find_map(|l| l.strip_prefix("the hosts' files are in "))
        .expect("--keep names the hosts' directory")
        .into();
    let root_text = root.to_str().unwrap().to_string();
    let left: Vec<u32> = procs::processes()
        .into_iter()
        .filter(|(_, argv)| argv.iter().any(|a| a.starts_with(&root_text)))
        .map(|(pid, _)| pid)
        .collect();
    std::fs::remove_dir_all(&root).unwrap();
    assert!(left.is_empty(), "processes of the demo still run: {left:?}");
}

#[test]
fn a_failed_build_starts_no_host() {
    // A file where the target directory should be: cargo cannot build.
    let names = tempfile::tempdir().unwrap();
    let not_a_dir = names.path().join("target");
    std::fs::write(&not_a_dir, "").unwrap();
    let (code, output) = demo(&not_a_dir, Duration::from_secs(120));
    assert_ne!(code, 0, "{output}");
    assert!(!output.contains("$ batou-remote"), "{output}");
    assert!(!output.contains("the hosts' files are in"), "{output}");
}
