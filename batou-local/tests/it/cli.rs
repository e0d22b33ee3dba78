//! The command line: `deploy`, and environments named like commands.

use crate::harness::Project;

const MOTD: &str = "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ncontent = \"hi\\n\"\n";

#[test]
fn deploy_converges_like_the_bare_form() {
    let p = Project::new();
    p.env("dev", MOTD);
    let out = p.converge(&["deploy", "dev", "--json"]);
    assert_eq!(out.changed(), ["motd > Workdir", "motd"]);
    p.assert_idempotent(&["dev"]);
    p.assert_idempotent(&["deploy", "--dry-run", "dev"]);
}

#[test]
fn environments_named_like_commands_deploy_with_deploy() {
    for name in [
        "agent",
        "plan",
        "agent-install",
        "deploy",
        "secrets",
        "help",
    ] {
        let p = Project::new();
        p.env(name, MOTD);
        let out = p.converge(&["deploy", name, "--json"]);
        assert_eq!(out.changed().len(), 2, "{name}: {}", out.stdout);
        assert!(p.path("work/motd/motd").exists(), "{name}");
        p.assert_idempotent(&["deploy", name]);
    }
}

#[test]
fn roles_are_hidden_from_help() {
    let p = Project::new();
    let out = p.run(&["--help"]);
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("deploy"), "{}", out.stdout);
    for role in ["agent", "plan"] {
        assert!(
            !out.stdout.contains(&format!("  {role} ")),
            "{role} shown:\n{}",
            out.stdout
        );
    }
    let out = p.run(&[]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("<ENVIRONMENT>"), "{}", out.stderr);
}

/// `batou-local secrets` works like `batou-remote secrets`: keygen, create, edit, show, and
/// a converge that uses the secret.
#[test]
fn secrets_commands_work_in_batou_local() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    let home = tempfile::tempdir().unwrap();
    let p = Project::new();
    p.env(
        "dev",
        "[hosts.localhost]\ncomponents = [\"app\"]\n\n[components.app]\ntype = \"file\"\npath = \"app.conf\"\n",
    );
    let editor = home.path().join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nset -e\nprintf '[components.app]\\ncontent = \"pw-7654321\\\\n\"\\n' > \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_batou-local"))
            .args(args)
            .current_dir(p.root())
            .env("HOME", home.path())
            .env("XDG_RUNTIME_DIR", home.path())
            .env("EDITOR", &editor)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("BATOU_IDENTITY")
            .env_remove("VISUAL")
            .env_remove("BATOU_PROJECT_BINARY")
            .env("RUST_BACKTRACE", "0")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (code, public, err) = run(&["secrets", "keygen"]);
    assert_eq!(code, 0, "{err}");
    assert!(public.starts_with("age1"), "{public}");
    // Hints name the command that was run.
    let (code, _, err) = run(&["secrets", "keygen"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("hint: its public key: `batou-local secrets create` uses it by default"),
        "{err}"
    );
    let (code, _, err) = run(&["secrets", "create", "dev"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("`batou-local secrets edit dev`"), "{err}");
    let (code, _, err) = run(&["secrets", "edit", "dev"]);
    assert_eq!(code, 0, "{err}");
    let (code, names, err) = run(&["secrets", "show", "dev"]);
    assert_eq!(code, 0, "{err}");
    assert!(names.contains("app"), "{names}");
    assert!(!names.contains("pw-7654321"), "{names}");
    // The default identity decrypts; the secret reaches the file and no output.
    for changes in [1, 0] {
        let (code, out, err) = run(&["dev", "--json"]);
        assert_eq!(code, 0, "{err}");
        assert!(!out.contains("pw-7654321") && !err.contains("pw-7654321"));
        let changed = out.lines().filter(|l| l.contains(r#""event":"changed""#));
        assert_eq!(changed.count(), changes * 2, "{out}");
    }
    assert_eq!(
        std::fs::read_to_string(p.path("work/app/app.conf")).unwrap(),
        "pw-7654321\n"
    );
}
