//! The offline verbs and CLI conventions: `check` with no host and no identity (every error
//! at once, a missing secret name, a missing or stale names index), `graph` as text and DOT,
//! `--dry-run --detailed-exitcode`, and `help`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use batou_test_support::assert_output_snapshot;

use crate::harness::{Project, workspace_binary, workspace_root};

/// Two hosts reached over SSH that nobody runs: `check` must not try them.
const PROD: &str = r#"
[environment]
base_dir = "srv"

[hosts.web1]
address = "192.0.2.1"
components = ["app", "tls"]

[hosts.db1]
address = "192.0.2.2"
components = ["motd"]

[groups]
all = ["web1", "db1"]

[components.app]
type = "file"
path = "app.conf"
template = "app.conf.j2"

[components.tls]
type = "file"
path = "tls.key"
secret = "tls.key"

[components.motd]
type = "file"
path = "motd"
content = "db {{ host.name }}\n"
"#;

const SECRETS: &str =
    "[components.app.vars]\ntoken = \"t0k3n-7531\"\n\n[files]\n\"tls.key\" = \"KEY-8642\"\n";

/// Runs `binary` in `project` with `home` as HOME and nothing else that could hold an
/// identity; `editor` writes the secrets' cleartext.
fn run_in(binary: &Path, project: &Path, home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary)
        .args(args)
        .current_dir(project)
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", home)
        .env("EDITOR", home.join("editor.sh"))
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("BATOU_IDENTITY")
        .env_remove("VISUAL")
        .env_remove("BATOU_PROJECT_BINARY")
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A project with `PROD` and its secrets, made with an identity in a home of its own; the
/// returned home has the identity, which the checks below never use.
fn project_with_secrets() -> (Project, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    let p = Project::new();
    p.env("prod", PROD);
    p.file("app.conf.j2", "token = {{ token }}\n");
    let editor = home.path().join("editor.sh");
    std::fs::write(
        &editor,
        format!("#!/bin/sh\nset -e\ncat > \"$1\" <<'EOF'\n{SECRETS}EOF\n"),
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = crate::harness::bin("batou-local");
    for args in [
        &["secrets", "keygen"][..],
        &["secrets", "create", "prod"],
        &["secrets", "edit", "prod"],
    ] {
        let (code, _, err) = run_in(&bin, p.root(), home.path(), args);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    (p, home)
}

#[test]
fn check_needs_no_host_and_no_identity_and_reports_every_error() {
    let (p, _identity_home) = project_with_secrets();
    p.file(
        "environments/prod.toml",
        &PROD.replace(
            "template = \"app.conf.j2\"",
            "template = \"app.conf.j2\"\nvars = {}",
        ),
    );
    let index = std::fs::read_to_string(p.path("secrets/prod.names")).unwrap();
    assert!(
        index.contains("\"tls.key\" = \"<secret:files.tls.key>\""),
        "{index}"
    );
    assert!(
        !index.contains("t0k3n-7531") && !index.contains("KEY-8642"),
        "{index}"
    );

    // Without any identity: a home with nothing in it.
    let empty = tempfile::tempdir().unwrap();
    let local = crate::harness::bin("batou-local");
    let remote = workspace_binary("batou-remote");
    p.env("prod", PROD);
    for binary in [&local, &remote] {
        let (code, _, err) = run_in(binary, p.root(), empty.path(), &["prod", "check"]);
        assert_eq!(code, 0, "{}: {err}", binary.display());
        assert!(
            err.contains("check: environment `prod` is valid (2 hosts, 3 root components); no host was contacted, no secret decrypted"),
            "{err}"
        );
    }

    // Three errors on two hosts, one of them a secret name the secrets do not have.
    p.env(
        "prod",
        &PROD
            .replace("secret = \"tls.key\"", "secret = \"tls.pem\"")
            .replace("content = \"db {{ host.name }}\\n\"", "contnet = \"db\\n\"")
            .replace("token = {{ token }}", "token = {{ tokn }}"),
    );
    p.file("app.conf.j2", "token = {{ tokn }}\n");
    let snapshot_before = crate::harness::snapshot(p.root());
    for binary in [&local, &remote] {
        let (code, _, err) = run_in(binary, p.root(), empty.path(), &["prod", "check"]);
        assert_eq!(code, 3, "{err}");
        assert!(err.contains("unknown field `contnet`"), "{err}");
        assert!(
            err.contains(
                "no secret file `tls.pem` in `secrets/prod.names` (did you mean `tls.key`?)"
            ),
            "{err}"
        );
        assert!(err.contains("tokn"), "{err}");
        assert!(
            err.contains("check: environment `prod` has 3 errors (2 hosts, 3 root components); no host was contacted"),
            "{err}"
        );
        assert!(
            !err.contains("t0k3n-7531") && !err.contains("KEY-8642"),
            "{err}"
        );
    }
    assert_eq!(
        snapshot_before,
        crate::harness::snapshot(p.root()),
        "check wrote nothing"
    );
    let (code, out, _) = run_in(&local, p.root(), empty.path(), &["prod", "check", "--json"]);
    assert_eq!(code, 3);
    let errors: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|e: &serde_json::Value| e["event"] == "error")
        .collect();
    assert_eq!(errors.len(), 3, "{out}");
    assert!(errors.iter().all(|e| e["kind"] == "invalid_configuration"));

    // A stale index is an error that says what to do, and the rest is still checked.
    p.env("prod", PROD);
    p.file("app.conf.j2", "token = {{ token }}\n");
    let stale: String = index
        .lines()
        .map(|l| {
            if l.starts_with("# sha256 of the encrypted file: ") {
                "# sha256 of the encrypted file: 00".to_string()
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    p.file("secrets/prod.names", &stale);
    let (code, _, err) = run_in(&local, p.root(), empty.path(), &["prod", "check"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("`secrets/prod.names` is stale: it was written for another version of `secrets/prod.age`"), "{err}");
    assert!(
        err.contains("hint: run `batou-local secrets index prod` where an identity can decrypt"),
        "{err}"
    );
    assert!(err.contains("has 1 error"), "{err}");

    // `secrets index` (with the identity) writes it again; a missing index is an error too.
    let (code, _, err) = run_in(
        &local,
        p.root(),
        _identity_home.path(),
        &["secrets", "index", "prod"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(p.path("secrets/prod.names")).unwrap(),
        index
    );
    std::fs::remove_file(p.path("secrets/prod.names")).unwrap();
    let (code, _, err) = run_in(&local, p.root(), empty.path(), &["prod", "check"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("`secrets/prod.names` does not exist: the names of the secrets in `secrets/prod.age` are unknown without an identity"), "{err}");
}

const GRAPH: &str = r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["site", "service"]

[hosts.web2]
components = ["site"]

[components.site]
type = "file"
path = "index.html"
content = "hello\n"

[components.service]
type = "command"
argv = ["true"]
on_change = ["site"]
"#;

#[test]
fn graph_prints_the_plan_as_text_and_dot() {
    let p = Project::new();
    p.env("prod", GRAPH);
    let out = p.run(&["prod", "graph"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_output_snapshot!("graph_text", out.stdout);
    let out = p.run(&["prod", "graph", "--format", "dot"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_output_snapshot!("graph_dot", out.stdout);

    let shop = workspace_root().join("examples/shop");
    let remote = workspace_binary("batou-remote");
    let run = |format: &str| {
        let out = Command::new(&remote)
            .args([
                "-C",
                shop.to_str().unwrap(),
                "production",
                "graph",
                "--format",
                format,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_output_snapshot!("graph_shop_production_text", run("text"));
    let dot = run("dot");
    assert_output_snapshot!("graph_shop_production_dot", dot);

    let out = p.run(&["prod", "check", "--format", "dot"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("`--format` applies to the `graph` verb only"),
        "{}",
        out.stderr
    );
}

#[test]
fn detailed_exitcode_says_whether_changes_are_pending() {
    let p = Project::new();
    p.env("dev", "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ncontent = \"hi\\n\"\n");
    let out = p.run(&["dev", "--dry-run", "--detailed-exitcode"]);
    assert_eq!(out.code, 2, "changes pending: {}", out.stderr);
    assert!(!p.path("work/motd/motd").exists());
    // Without the flag a dry run with changes is a success, as before.
    assert_eq!(p.run(&["dev", "--dry-run"]).code, 0);
    p.converge(&["dev"]);
    let out = p.run(&["dev", "--dry-run", "--detailed-exitcode"]);
    assert_eq!(out.code, 0, "nothing pending: {}", out.stderr);
    // A wrong command line cannot be taken for pending changes.
    let out = p.run(&["dev", "--dry-run", "--detailed-exitcode", "--bogus"]);
    assert_eq!(out.code, 64, "{}", out.stderr);
    let out = p.run(&["dev", "--detailed-exitcode"]);
    assert_eq!(out.code, 64, "needs --dry-run: {}", out.stderr);
    p.assert_idempotent(&["dev"]);
}

#[test]
fn help_is_help_and_shows_every_verb() {
    let p = Project::new();
    for binary in ["batou-local", "batou-remote"] {
        let help = Command::new(workspace_binary(binary))
            .arg("help")
            .current_dir(p.root())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(help.status.success(), "{help:?}");
        let text = String::from_utf8(help.stdout).unwrap();
        for verb in [
            "check",
            "graph",
            "service",
            "releases",
            "rollback",
            "--detailed-exitcode",
            "secrets",
            "Examples:",
        ] {
            assert!(text.contains(verb), "{binary} help lacks {verb}:\n{text}");
        }
        let long = Command::new(workspace_binary(binary))
            .arg("--help")
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(long.stdout).unwrap(),
            text,
            "{binary}: `help` is `--help`"
        );
    }
}

#[test]
fn check_takes_facts_from_a_file_or_warns_that_they_were_unknown() {
    let p = Project::new();
    p.env(
        "prod",
        "[hosts.web1]\naddress = \"192.0.2.1\"\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ncontent = \"{% if host.facts.os != 'linux' %}{{ fail }}{% endif %}ok\\n\"\n",
    );
    let out = p.run(&["prod", "check"]);
    assert_eq!(out.code, 3, "unknown facts are empty: {}", out.stderr);
    assert!(
        out.stderr.contains("warning: configure reads the platform facts of `web1`, which were unknown (empty) here: pass `--facts FILE` to check with them"),
        "{}",
        out.stderr
    );
    p.file(
        "facts.json",
        r#"{"web1": {"os": "linux", "architecture": "x86_64", "distribution": "debian", "version": "13"}}"#,
    );
    let facts = p.path("facts.json");
    let out = p.run(&["prod", "check", "--facts", facts.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("warning:"), "{}", out.stderr);
    p.file("facts.json", "[1]");
    let out = p.run(&["prod", "check", "--facts", facts.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("is not a JSON object of hosts' facts"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_project_with_its_own_types_is_checked_by_its_binary() {
    let shop = workspace_root().join("examples/shop");
    let empty = tempfile::tempdir().unwrap();
    for binary in ["batou-local", "batou-remote"] {
        let (code, _, err) = run_in(
            &workspace_binary(binary),
            &shop,
            empty.path(),
            &["production", "check"],
        );
        assert_eq!(code, 0, "{binary}: {err}");
        assert!(
            err.contains("check: environment `production` is valid (3 hosts, 6 root components)"),
            "{err}"
        );
    }
}
