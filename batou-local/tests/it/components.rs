//! The component library through environments: each converges, then converges to no change.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::harness::Project;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn file_content_template_source_mode_and_owner() {
    let p = Project::new();
    p.file(
        "templates/app.conf.j2",
        "name={{ name }}\nhost={{ host.name }}\nrole={{ host.data.role }}\n",
    );
    p.file("files/static.bin", "static\n");
    p.env(
        "dev",
        r#"
[hosts.localhost]
components = ["literal", "rendered", "copied"]
data = { role = "primary" }

[components.literal]
type = "file"
path = "literal.txt"
content = "on {{ host.name }}\n"
mode = 0o600

[components.rendered]
type = "file"
path = "app.conf"
template = "templates/app.conf.j2"
vars = { name = "shop" }
mode = "0640"
owner = "root"
group = "0"

[components.copied]
type = "file"
path = "deep/er/static.bin"
source = "files/static.bin"
create_parents = true
"#,
    );
    p.converge_twice(&["dev"]);
    let literal = p.path("work/literal/literal.txt");
    assert_eq!(std::fs::read_to_string(&literal).unwrap(), "on localhost\n");
    assert_eq!(mode(&literal), 0o600);
    let rendered = p.path("work/rendered/app.conf");
    assert_eq!(
        std::fs::read_to_string(&rendered).unwrap(),
        "name=shop\nhost=localhost\nrole=primary\n"
    );
    assert_eq!(mode(&rendered), 0o640);
    assert_eq!(std::fs::metadata(&rendered).unwrap().uid(), 0);
    assert_eq!(
        std::fs::read(p.path("work/copied/deep/er/static.bin")).unwrap(),
        b"static\n"
    );

    // A changed template variable changes exactly one file, with a diff.
    std::fs::set_permissions(&literal, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = p.converge(&["dev", "--json"]);
    assert_eq!(out.changed(), vec!["literal"]);
    let reason = out
        .events()
        .into_iter()
        .find(|e| e["event"] == "changed")
        .unwrap();
    assert_eq!(reason["reason"], "mode 0644 -> 0600");
    std::fs::write(&rendered, "name=edited\nhost=localhost\nrole=primary\n").unwrap();
    let out = p.converge(&["dev", "--json"]);
    let diff = out
        .events()
        .into_iter()
        .find(|e| e["event"] == "diff")
        .unwrap();
    assert_eq!(
        diff["diff"],
        "--- app.conf\n+++ app.conf\n@@ -1,3 +1,3 @@\n-name=edited\n+name=shop\n host=localhost\n role=primary\n"
    );
    p.assert_idempotent(&["dev"]);
}

#[test]
fn directory_sync_keeps_extra_files_unless_purging() {
    let p = Project::new();
    p.file("tree/a.txt", "a\n");
    p.file("tree/sub/b.txt", "b\n");
    std::os::unix::fs::symlink("a.txt", p.path("tree/link")).unwrap();
    let env = |purge: bool| {
        format!(
            "[hosts.localhost]\ncomponents = [\"www\"]\n\n[components.www]\ntype = \"directory\"\npath = \"htdocs\"\nsource = \"tree\"\npurge = {purge}\n"
        )
    };
    p.env("dev", &env(false));
    p.converge_twice(&["dev"]);
    let www = p.path("work/www/htdocs");
    assert_eq!(
        std::fs::read_to_string(www.join("sub/b.txt")).unwrap(),
        "b\n"
    );
    assert_eq!(
        std::fs::read_link(www.join("link")).unwrap(),
        std::path::Path::new("a.txt")
    );

    std::fs::write(www.join("extra.txt"), "x").unwrap();
    std::fs::create_dir(www.join("extra-dir")).unwrap();
    std::fs::write(www.join("extra-dir/f"), "x").unwrap();
    p.assert_idempotent(&["dev"]);
    assert!(www.join("extra.txt").exists());

    p.env("dev", &env(true));
    let out = p.converge(&["dev", "--json"]);
    let changed: Vec<_> = out
        .events()
        .into_iter()
        .filter(|e| e["event"] == "changed")
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert_eq!(changed[0]["component"], "www");
    assert_eq!(changed[0]["reason"], "extraneous: extra-dir, extra.txt");
    assert!(!www.join("extra.txt").exists());
    assert!(!www.join("extra-dir").exists());
    assert!(www.join("a.txt").exists());
    p.assert_idempotent(&["dev"]);
}

#[test]
fn directory_mode_is_enforced() {
    let p = Project::new();
    p.env(
        "dev",
        "[hosts.localhost]\ncomponents = [\"d\"]\n\n[components.d]\ntype = \"directory\"\npath = \"private\"\nmode = 0o700\n",
    );
    p.converge_twice(&["dev"]);
    assert_eq!(mode(&p.path("work/d/private")), 0o700);
}

#[test]
fn symlink_is_created_and_retargeted_but_never_replaces_a_file() {
    let p = Project::new();
    let env = |target: &str| {
        format!(
            "[hosts.localhost]\ncomponents = [\"link\"]\n\n[components.link]\ntype = \"symlink\"\npath = \"current\"\ntarget = \"{target}\"\n"
        )
    };
    p.env("dev", &env("releases/1"));
    p.converge_twice(&["dev"]);
    let link = p.path("work/link/current");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::path::Path::new("releases/1")
    );

    p.env("dev", &env("releases/2"));
    let out = p.converge(&["dev", "--json"]);
    let changed = out
        .events()
        .into_iter()
        .find(|e| e["event"] == "changed")
        .unwrap();
    assert_eq!(
        changed["reason"],
        "points to `releases/1` instead of `releases/2`"
    );
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::path::Path::new("releases/2")
    );
    p.assert_idempotent(&["dev"]);

    std::fs::remove_file(&link).unwrap();
    std::fs::write(&link, "precious").unwrap();
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("exists and is not a symlink"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_to_string(&link).unwrap(), "precious");
}

#[test]
fn command_guards_cwd_env_and_timeout() {
    let p = Project::new();
    p.env(
        "dev",
        r#"
[hosts.localhost]
components = ["creates", "unless"]

[components.creates]
type = "command"
argv = ["sh", "-c", "echo \"$GREETING\" > made.txt; pwd >> made.txt"]
env = { GREETING = "hi" }
creates = "made.txt"

[components.unless]
type = "command"
argv = ["touch", "flag"]
unless = ["test", "-e", "flag"]
"#,
    );
    let out = p.converge_twice(&["dev", "--json"]);
    assert_eq!(
        out.changed(),
        vec!["creates > Workdir", "creates", "unless > Workdir", "unless"]
    );
    let made = std::fs::read_to_string(p.path("work/creates/made.txt")).unwrap();
    let workdir = std::fs::canonicalize(p.path("work/creates")).unwrap();
    assert_eq!(made, format!("hi\n{}\n", workdir.display()));
    assert!(p.path("work/unless/flag").exists());

    // A command that does not produce what its guard expects did not converge.
    p.env(
        "dev",
        "[hosts.localhost]\ncomponents = [\"liar\"]\n\n[components.liar]\ntype = \"command\"\nargv = [\"true\"]\ncreates = \"never.txt\"\n",
    );
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("component did not converge: still `never.txt` does not exist after update"),
        "{}",
        out.stderr
    );

    // A command past its deadline is killed, with its whole process group.
    p.env(
        "dev",
        "[hosts.localhost]\ncomponents = [\"slow\"]\n\n[components.slow]\ntype = \"command\"\nargv = [\"sh\", \"-c\", \"sleep 30 & sleep 30\"]\ncreates = \"done\"\ntimeout = 0.3\n",
    );
    let started = std::time::Instant::now();
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("timed out after 0.3 s and was killed"),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the run waited for the command"
    );
}

#[test]
fn directory_sync_starting_with_a_symlink_gets_0755_whatever_the_umask() {
    let p = Project::new();
    std::fs::create_dir_all(p.path("tree")).unwrap();
    std::os::unix::fs::symlink("z.txt", p.path("tree/0link")).unwrap();
    p.file("tree/z.txt", "z\n");
    p.env(
        "dev",
        "[hosts.localhost]\ncomponents = [\"www\"]\n\n[components.www]\ntype = \"directory\"\npath = \"htdocs\"\nsource = \"tree\"\n",
    );
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", "umask 077; exec \"$0\" dev"])
        .arg(env!("CARGO_BIN_EXE_batou-local"))
        .current_dir(p.root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let www = p.path("work/www/htdocs");
    assert_eq!(
        std::fs::read_link(www.join("0link")).unwrap(),
        std::path::Path::new("z.txt")
    );
    assert_eq!(mode(&www), 0o755);
    p.assert_idempotent(&["dev"]);
}
