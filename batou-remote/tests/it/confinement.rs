//! Confinement over SSH: a project symlink out of the repository is refused before any host
//! is contacted, a symlink below a host's `base_dir` cannot lead an agent's write (or read)
//! outside it, and the agent makes a file carrying a secret private.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use batou_core::secrets::{encrypt, generate_identity, parse_recipients};

use crate::harness::{Cluster, Outcome, Project, snapshot};

const CANARY: &str = "outside-canary-0be7d3";

fn assert_no_canary(out: &Outcome) {
    assert!(!out.stdout.contains(CANARY), "{}", out.stdout);
    assert!(!out.stderr.contains(CANARY), "{}", out.stderr);
}

fn file_env(attribute: &str) -> String {
    format!(
        "[environment]\nbase_dir = \"srv\"\n\n[hosts.web1]\ncomponents = [\"a\"]\n\n[components.a]\ntype = \"file\"\n{attribute}\n"
    )
}

#[test]
fn a_project_symlink_out_of_the_repository_is_refused_before_connecting() {
    let cluster = Cluster::start(&["web1"]);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), CANARY).unwrap();
    let p = Project::new();
    std::os::unix::fs::symlink(outside.path().join("secret"), p.root().join("link")).unwrap();
    p.env("prod", &file_env("path = \"a\"\nsource = \"link\""));
    for args in [&["prod"][..], &["prod", "--json"]] {
        let out = cluster.run(p.root(), args);
        assert_eq!(out.code, 3, "{}\n{}", out.stderr, out.stdout);
        assert!(
            (out.stderr.clone() + &out.stdout)
                .contains("project file `link` lies outside the project"),
            "{}\n{}",
            out.stderr,
            out.stdout
        );
        assert_no_canary(&out);
    }
    let web1 = cluster.host("web1");
    assert_eq!(web1.logins(), 0, "web1 was contacted");
    assert!(!web1.home.join("srv").exists());

    std::fs::remove_file(p.root().join("link")).unwrap();
    std::fs::write(p.root().join("link"), "inside\n").unwrap();
    let out = cluster.run(p.root(), &["prod"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}

#[test]
fn a_symlink_below_base_dir_on_the_host_cannot_lead_a_write_outside() {
    let cluster = Cluster::start(&["web1"]);
    let web1 = cluster.host("web1");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), CANARY).unwrap();
    let before = snapshot(outside.path());
    let workdir = web1.home.join("srv/work/a");
    std::fs::create_dir_all(&workdir).unwrap();
    std::os::unix::fs::symlink(outside.path(), workdir.join("escape")).unwrap();
    let p = Project::new();
    p.env(
        "prod",
        &file_env("path = \"escape/secret\"\ncontent = \"overwritten\\n\""),
    );
    for args in [&["prod"][..], &["prod", "--dry-run"], &["prod", "--json"]] {
        let out = cluster.run(p.root(), args);
        assert_eq!(out.code, 1, "{}\n{}", out.stderr, out.stdout);
        assert!(
            (out.stderr.clone() + &out.stdout)
                .contains("through a symlink, outside what this deployment may change"),
            "{}\n{}",
            out.stderr,
            out.stdout
        );
        assert_no_canary(&out);
    }
    assert_eq!(snapshot(outside.path()), before);

    std::fs::remove_file(workdir.join("escape")).unwrap();
    std::fs::create_dir(workdir.join("escape")).unwrap();
    let out = cluster.run(p.root(), &["prod"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
    assert_eq!(snapshot(outside.path()), before);
    assert_eq!(
        std::fs::read_to_string(workdir.join("escape/secret")).unwrap(),
        "overwritten\n"
    );
}

/// The agent decides modes with the secrets its own job carries: a template rendered from a
/// secret is 0600 on the host, a plain one 0644; a rewrite keeps the file's owner and group.
#[test]
fn the_agent_makes_files_carrying_secrets_private_and_keeps_ownership() {
    let cluster = Cluster::start(&["web1"]);
    let web1 = cluster.host("web1");
    let p = Project::new();
    std::fs::write(p.root().join("t.j2"), "password = {{ password }}\n").unwrap();
    let env = |plain: &str| {
        format!(
            "[environment]\nbase_dir = \"srv\"\n\n[hosts.web1]\ncomponents = [\"conf\", \"plain\"]\n\n[components.conf]\ntype = \"file\"\npath = \"conf\"\ntemplate = \"t.j2\"\n\n[components.plain]\ntype = \"file\"\npath = \"plain\"\ncontent = \"{plain}\"\n"
        )
    };
    p.env("prod", &env("one"));
    let (secret, public) = generate_identity();
    let id = p.root().join("identity.txt");
    std::fs::write(&id, format!("{secret}\n")).unwrap();
    std::fs::create_dir_all(p.root().join("secrets")).unwrap();
    let recipients = parse_recipients("r", &public).unwrap();
    std::fs::write(
        p.root().join("secrets/prod.age"),
        encrypt(
            "[components.conf.vars]\npassword = \"pw-remote-83c1d0\"\n",
            &recipients,
        )
        .unwrap(),
    )
    .unwrap();
    let id = id.to_str().unwrap();
    let out = cluster.run(p.root(), &["prod", "--identity", id]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mode = |path: &str| {
        std::fs::metadata(web1.home.join("srv/work").join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("conf/conf"), 0o600);
    assert_eq!(mode("plain/plain"), 0o644);

    let plain = web1.home.join("srv/work/plain/plain");
    nix::unistd::chown(&plain, Some(65534.into()), Some(65534.into())).unwrap();
    p.env("prod", &env("two"));
    let out = cluster.run(p.root(), &["prod", "--identity", id]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let meta = std::fs::metadata(&plain).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "two");
    let again = cluster.run(p.root(), &["prod", "--json", "--identity", id]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}
