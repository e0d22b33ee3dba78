//! The human output of whole runs, pinned as snapshots (`snapshots/`).

use batou_test_support::assert_output_snapshot;

use crate::harness::{Project, workspace_root};

#[test]
fn demo_run_output() {
    let p = crate::demo::demo_project();
    let first = p.converge(&["dev"]);
    assert_output_snapshot!("demo_first_run", first.stderr);
    let again = p.converge(&["dev"]);
    assert_output_snapshot!("demo_second_run", again.stderr);
    let dry = p.converge(&["dev", "--dry-run"]);
    assert_output_snapshot!("demo_dry_run", dry.stderr);
}

#[test]
fn shop_run_output() {
    let base = Project::new();
    let base_dir = base.path("deploy");
    let shop = workspace_root().join("examples/shop");
    let args = [
        "-C",
        shop.to_str().unwrap(),
        "dev",
        "--base-dir",
        base_dir.to_str().unwrap(),
    ];
    let first = base.converge(&args);
    assert_output_snapshot!("shop_first_run", first.stderr);
    let again = base.converge(&args);
    assert_output_snapshot!("shop_second_run", again.stderr);
}

/// `--help` of `binary` with `args` before it: stdout, exit 0.
fn help(binary: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(crate::harness::bin(binary))
        .args(args)
        .arg("--help")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn help_texts() {
    assert_output_snapshot!("help_batou_local", help("batou-local", &[]));
    assert_output_snapshot!("help_batou_remote", help("batou-remote", &[]));
    assert_output_snapshot!(
        "help_batou_remote_deploy",
        help("batou-remote", &["deploy"])
    );
}
