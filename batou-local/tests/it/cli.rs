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
