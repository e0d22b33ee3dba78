//! The human output of a remote run with a failing host, pinned as snapshots (`snapshots/`):
//! per-host lines, the failure with its cause, the summary; then the fixed run and a run that
//! changes nothing.

use batou_test_support::assert_output_snapshot;

use crate::harness::{Cluster, Project};

/// web1 runs `argv`, guarded by `creates = "done"`; web2 only a file.
fn environment(argv: &str) -> String {
    format!(
        r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["build", "motd"]

[hosts.web2]
components = ["motd"]

[components.build]
type = "command"
argv = {argv}
creates = "done"

[components.motd]
type = "file"
path = "motd"
content = "Welcome to {{{{ host.name }}}}\n"
"#
    )
}

/// `stderr` with the agent uploads first, sorted by host: hosts connect and upload at the same
/// time even with `--jobs 1`, so those lines come in any order and anywhere before the host's
/// own first step. Every other line keeps its place.
fn stable(stderr: &str) -> String {
    let (mut uploads, rest): (Vec<&str>, Vec<&str>) = stderr
        .lines()
        .partition(|l| l.contains(": uploaded the agent ("));
    uploads.sort();
    uploads
        .into_iter()
        .chain(rest)
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn remote_run_with_a_failure_output() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env(
        "prod",
        &environment(r#"["sh", "-c", "echo 'make: no rule' >&2; exit 2"]"#),
    );
    let failed = cluster.run(p.root(), &["prod", "--jobs", "1"]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(failed.stderr.contains("web1"), "{}", failed.stderr);
    // The exit code is pinned with the text.
    assert_output_snapshot!(
        "remote_failure_run",
        format!("exit {}\n{}", failed.code, stable(&failed.stderr))
    );
    assert!(!cluster.host("web1").home.join("srv/work/done").exists());

    p.env("prod", &environment(r#"["sh", "-c", "touch done"]"#));
    let fixed = cluster.run(p.root(), &["prod", "--jobs", "1"]);
    assert_eq!(fixed.code, 0, "{}", fixed.stderr);
    assert_output_snapshot!("remote_fixed_run", stable(&fixed.stderr));
    let again = cluster.run(p.root(), &["prod", "--jobs", "1", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stderr);
    let again = cluster.run(p.root(), &["prod", "--jobs", "1"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_output_snapshot!("remote_unchanged_run", stable(&again.stderr));
}
