//! Confinement and keeping what is on the host: project files are read only inside the
//! project (resolved, not lexically), writes stay inside the allowed paths (resolved on the
//! host), rewrites keep ownership, files carrying secrets are private, and a file without
//! content is an error, not an empty file. Values no host accepts (NUL bytes in paths, link
//! targets, owners, project file names) and the configure-time refusals below are also cases
//! of the bad-input corpus (`bad_input.rs`), for both binaries.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use batou_core::secrets::{encrypt, generate_identity, parse_recipients};

use crate::harness::{Outcome, Project, snapshot};

/// Content of the file outside the project that escapes point at; it must appear nowhere.
const CANARY: &str = "outside-canary-5d1c9e";

/// A directory outside the project holding `secret` with [`CANARY`].
fn outside() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("batou-outside")
        .tempdir()
        .unwrap();
    std::fs::write(dir.path().join("secret"), CANARY).unwrap();
    dir
}

fn file_env(attribute: &str) -> String {
    format!(
        "[hosts.localhost]\ncomponents = [\"a\"]\n\n[components.a]\ntype = \"file\"\npath = \"a\"\n{attribute}\n"
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Asserts a refusal with `code` whose output holds `message` and never the canary.
fn assert_refused(out: &Outcome, code: i32, message: &str) {
    assert_eq!(out.code, code, "{}\n{}", out.stderr, out.stdout);
    assert!(
        out.stderr.contains(message) || out.stdout.contains(message),
        "{}\n{}",
        out.stderr,
        out.stdout
    );
    assert!(!out.stderr.contains(CANARY), "{}", out.stderr);
    assert!(!out.stdout.contains(CANARY), "{}", out.stdout);
}

/// Asserts that no file below `dir` holds the canary (symlinks are not followed).
fn assert_no_canary(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            assert_no_canary(&path);
        } else if meta.is_file() {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            assert!(
                !text.contains(CANARY),
                "{} holds the outside file",
                path.display()
            );
        }
    }
}

/// A project file that is a symlink out of the project, read as `source`, `template`, or
/// through a template's `include` or `import`: refused before anything is written, and the
/// outside file's content appears in no output. Once the link is a file of the project, the
/// same environment converges, then changes nothing.
#[test]
fn project_symlinks_leading_outside_are_refused_for_every_read() {
    let out_dir = outside();
    let secret = out_dir.path().join("secret");
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("source = \"link\"", &[]),
        ("template = \"link\"", &[]),
        (
            "template = \"t.j2\"",
            &[("t.j2", "{% include \"link\" %}\n")],
        ),
        (
            "template = \"t.j2\"",
            &[("t.j2", "{% import \"link\" as m %}{{ m.x }}\n")],
        ),
        (
            "template = \"t.j2\"",
            &[("t.j2", "{% include \"link\" ignore missing %}\n")],
        ),
    ];
    for (attribute, files) in cases {
        let p = Project::new();
        for (path, text) in *files {
            p.file(path, text);
        }
        std::os::unix::fs::symlink(&secret, p.path("link")).unwrap();
        p.env("dev", &file_env(attribute));
        for args in [&["dev"][..], &["dev", "--json"], &["dev", "--dry-run"]] {
            let out = p.run(args);
            assert_refused(&out, 3, "`link` lies outside the project: it resolves to");
        }
        assert!(!p.path("work").exists(), "{attribute}");

        std::fs::remove_file(p.path("link")).unwrap();
        p.file("link", "{% macro x() %}inside{% endmacro %}\n");
        p.converge_twice(&["dev"]);
    }
}

#[test]
fn include_outside_the_project_says_so() {
    let p = Project::new();
    p.file("t.j2", "{% include \"../../etc/passwd\" %}\n");
    p.env("dev", &file_env("template = \"t.j2\""));
    let out = p.run(&["dev"]);
    assert_refused(
        &out,
        3,
        "template `../../etc/passwd` lies outside the project",
    );
    assert!(!out.stderr.contains("not found"), "{}", out.stderr);
    assert!(!out.stderr.contains("root:x:0:0"), "{}", out.stderr);
    p.file("t.j2", "inside\n");
    p.converge_twice(&["dev"]);
}

/// A synced tree's symlinks are copied as symlinks, whatever they point to, and never
/// followed: not a file link, not a directory link. A `source` directory that is itself a
/// link out of the project is refused.
#[test]
fn synced_trees_copy_symlinks_and_never_read_through_them() {
    let out_dir = outside();
    let p = Project::new();
    p.file("tree/a.txt", "a\n");
    std::os::unix::fs::symlink(out_dir.path().join("secret"), p.path("tree/file-link")).unwrap();
    std::os::unix::fs::symlink(out_dir.path(), p.path("tree/dir-link")).unwrap();
    std::os::unix::fs::symlink(out_dir.path(), p.path("tree-link")).unwrap();
    let env = |source: &str| {
        format!(
            "[hosts.localhost]\ncomponents = [\"www\"]\n\n[components.www]\ntype = \"directory\"\npath = \"htdocs\"\nsource = \"{source}\"\n"
        )
    };
    p.env("dev", &env("tree-link"));
    let out = p.run(&["dev"]);
    assert_refused(&out, 3, "project file `tree-link` lies outside the project");
    assert!(!p.path("work").exists());

    p.env("dev", &env("tree"));
    let out = p.converge_twice(&["dev"]);
    assert!(!out.stderr.contains(CANARY), "{}", out.stderr);
    let www = p.path("work/www/htdocs");
    assert_eq!(
        std::fs::read_link(www.join("file-link")).unwrap(),
        out_dir.path().join("secret")
    );
    assert_eq!(
        std::fs::read_link(www.join("dir-link")).unwrap(),
        out_dir.path()
    );
    assert_no_canary(&p.path("work"));
}

/// A symlink inside `base_dir` that points outside it cannot carry a write, or a read (the
/// diff of an existing file), outside: each of file, directory and symlink fails on the host,
/// the outside directory is left as it was and its file appears in no output.
#[test]
fn a_symlink_inside_base_dir_cannot_lead_a_write_outside() {
    let out_dir = outside();
    let before = snapshot(out_dir.path());
    let cases = [
        "type = \"file\"\npath = \"escape/secret\"\ncontent = \"overwritten\\n\"",
        "type = \"file\"\npath = \"escape/new/file\"\ncontent = \"x\"\ncreate_parents = true",
        "type = \"directory\"\npath = \"escape/newdir\"",
        "type = \"symlink\"\npath = \"escape/newlink\"\ntarget = \"x\"",
    ];
    for case in cases {
        let p = Project::new();
        std::fs::create_dir_all(p.path("work/a")).unwrap();
        std::os::unix::fs::symlink(out_dir.path(), p.path("work/a/escape")).unwrap();
        p.env(
            "dev",
            &format!("[hosts.localhost]\ncomponents = [\"a\"]\n\n[components.a]\n{case}\n"),
        );
        for args in [&["dev"][..], &["dev", "--dry-run"], &["dev", "--json"]] {
            let out = p.run(args);
            assert_refused(
                &out,
                1,
                "through a symlink, outside what this deployment may change",
            );
        }
        assert_eq!(snapshot(out_dir.path()), before, "{case}");

        // The same component on a real directory converges.
        std::fs::remove_file(p.path("work/a/escape")).unwrap();
        std::fs::create_dir(p.path("work/a/escape")).unwrap();
        p.converge_twice(&["dev"]);
        assert_eq!(snapshot(out_dir.path()), before, "{case}");
    }
}

/// A `work` directory that is a symlink out of `base_dir` cannot make the work directory of a
/// root component appear outside.
#[test]
fn a_work_symlink_out_of_base_dir_is_refused() {
    let out_dir = outside();
    let before = snapshot(out_dir.path());
    let p = Project::new();
    std::os::unix::fs::symlink(out_dir.path(), p.path("work")).unwrap();
    p.env("dev", &file_env("content = \"x\""));
    let out = p.run(&["dev"]);
    assert_refused(
        &out,
        1,
        "through a symlink, outside what this deployment may change",
    );
    assert_eq!(snapshot(out_dir.path()), before);
    std::fs::remove_file(p.path("work")).unwrap();
    p.converge_twice(&["dev"]);
}

/// `base_dir` itself may be reached through a symlink (as `/srv -> /data/srv`).
#[test]
fn base_dir_reached_through_a_symlink_is_allowed() {
    let real = tempfile::tempdir().unwrap();
    let p = Project::new();
    std::os::unix::fs::symlink(real.path(), p.path("srv")).unwrap();
    p.env(
        "dev",
        "[environment]\nbase_dir = \"srv\"\n\n[hosts.localhost]\ncomponents = [\"a\", \"d\", \"l\"]\n\n[components.a]\ntype = \"file\"\npath = \"a\"\ncontent = \"a\\n\"\n\n[components.d]\ntype = \"directory\"\npath = \"sub/dir\"\n\n[components.l]\ntype = \"symlink\"\npath = \"l\"\ntarget = \"a\"\n",
    );
    p.converge_twice(&["dev"]);
    assert_eq!(
        std::fs::read_to_string(real.path().join("work/a/a")).unwrap(),
        "a\n"
    );
    assert!(real.path().join("work/d/sub/dir").is_dir());
}

/// A file without content is an error at its table's place; an existing file is untouched,
/// and `content = ""` empties it on purpose.
#[test]
fn a_file_without_content_is_an_error_and_touches_nothing() {
    let p = Project::new();
    std::fs::create_dir_all(p.path("work/a")).unwrap();
    std::fs::write(p.path("work/a/a"), "precious\n").unwrap();
    p.env("dev", &file_env("mode = 0o600"));
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "component `a`: a file needs one of `content`, `template`, `source`, `secret` and `data` in environments/dev.toml:4:1\nhint: write `content = \"\"` for an empty file"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(p.path("work/a/a")).unwrap(),
        "precious\n"
    );
    assert_eq!(mode(&p.path("work/a/a")), 0o644);

    p.env("dev", &file_env("content = \"\""));
    p.converge_twice(&["dev"]);
    assert_eq!(std::fs::read(p.path("work/a/a")).unwrap(), b"");
}

/// A rewritten file, a file of a synced tree and a replaced symlink keep their owner and
/// group (`nobody:nogroup`) and mode unless the environment sets them. Needs root.
#[test]
fn rewrites_keep_owner_group_and_mode() {
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap().uid;
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .unwrap()
        .gid;
    let p = Project::new();
    p.file("tree/t.txt", "one\n");
    let env = |content: &str, target: &str| {
        format!(
            "[hosts.localhost]\ncomponents = [\"a\", \"www\", \"l\"]\n\n[components.a]\ntype = \"file\"\npath = \"a\"\ncontent = \"{content}\"\n\n[components.www]\ntype = \"directory\"\npath = \"htdocs\"\nsource = \"tree\"\n\n[components.l]\ntype = \"symlink\"\npath = \"l\"\ntarget = \"{target}\"\n"
        )
    };
    p.env("dev", &env("one", "x"));
    p.converge_twice(&["dev"]);
    let file = p.path("work/a/a");
    let synced = p.path("work/www/htdocs/t.txt");
    let link = p.path("work/l/l");
    for path in [&file, &synced] {
        nix::unistd::chown(path, Some(nobody), Some(nogroup)).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    std::os::unix::fs::lchown(&link, Some(nobody.as_raw()), Some(nogroup.as_raw())).unwrap();

    p.env("dev", &env("two", "y"));
    p.file("tree/t.txt", "two\n");
    let out = p.converge(&["dev", "--json"]);
    assert_eq!(
        out.changed(),
        vec!["a", "www > File('htdocs/t.txt')", "l"],
        "{}",
        out.stdout
    );
    for path in [&file, &synced] {
        let meta = std::fs::metadata(path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (nobody.as_raw(), nogroup.as_raw())
        );
    }
    assert_eq!(mode(&file), 0o640);
    // A synced file's mode follows its source file, as before.
    assert_eq!(mode(&synced), mode(&p.path("tree/t.txt")));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "two");
    let meta = std::fs::symlink_metadata(&link).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (nobody.as_raw(), nogroup.as_raw())
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("y"));
    p.assert_idempotent(&["dev"]);

    // Given owner and group win.
    p.env(
        "dev",
        &env("three", "y").replace(
            "content = \"three\"",
            "content = \"three\"\nowner = \"root\"\ngroup = \"root\"",
        ),
    );
    p.converge_twice(&["dev"]);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
}

/// A file whose content carries a secret value, through a template, `vars`, `content` or
/// `secret`, is created 0600 unless `mode` says otherwise; other files get 0644, and an
/// existing world-readable file that comes to carry a secret is tightened.
#[test]
fn files_carrying_secrets_are_private() {
    let p = Project::new();
    p.file("secret.j2", "password = {{ password }}\n");
    p.file("plain.j2", "password = {{ password | default('-') }}\n");
    p.file("data.j2", "token = {{ host.data.token }}\n");
    p.env(
        "dev",
        r#"
[hosts.localhost]
components = ["templated", "plain", "literal", "data", "loose", "key"]

[components.templated]
type = "file"
path = "templated"
template = "secret.j2"

[components.plain]
type = "file"
path = "plain"
template = "plain.j2"

[components.literal]
type = "file"
path = "literal"

[components.data]
type = "file"
path = "data"
template = "data.j2"

[components.loose]
type = "file"
path = "loose"
template = "secret.j2"
mode = 0o644

[components.key]
type = "file"
path = "key"
secret = "key"
"#,
    );
    let (identity, public) = generate_identity();
    p.file("identity.txt", &format!("{identity}\n"));
    let recipients = parse_recipients("r", &public).unwrap();
    let secrets = r#"
[components.templated.vars]
password = "pw-c0ffee-91d2"

[components.loose.vars]
password = "pw-c0ffee-91d2"

[components.literal]
content = "lit-7e3a0b55"

[hosts.localhost.data]
token = "tok-2b8e4f10"

[files]
key = "key-material-5a5a5a"
"#;
    std::fs::create_dir_all(p.path("secrets")).unwrap();
    std::fs::write(
        p.path("secrets/dev.age"),
        encrypt(secrets, &recipients).unwrap(),
    )
    .unwrap();
    let id = p.path("identity.txt").to_str().unwrap().to_string();
    let args = ["dev", "--identity", id.as_str()];
    p.converge_twice(&args);
    let work = p.path("work");
    for (path, want) in [
        ("templated/templated", 0o600),
        ("plain/plain", 0o644),
        ("literal/literal", 0o600),
        ("data/data", 0o600),
        ("loose/loose", 0o644),
        ("key/key", 0o600),
    ] {
        assert_eq!(mode(&work.join(path)), want, "{path}");
    }

    // A file written before its content carried a secret is tightened.
    std::fs::set_permissions(
        work.join("templated/templated"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let mut json = args.to_vec();
    json.push("--json");
    let out = p.converge(&json);
    assert_eq!(out.changed(), vec!["templated"], "{}", out.stdout);
    assert!(out.stdout.contains("mode 0644 -> 0600"), "{}", out.stdout);
    assert_eq!(mode(&work.join("templated/templated")), 0o600);
    p.assert_idempotent(&args);
}

/// A deploy that cannot keep a file's owner (it runs as `nobody` and the file is root's, in a
/// directory `nobody` may write) fails and leaves the file as it was, rather than hand it to
/// `nobody`. Needs root, to start the run as `nobody`.
#[test]
fn an_unprivileged_rewrite_that_cannot_keep_the_owner_fails_and_keeps_the_file() {
    let p = Project::new();
    p.env("dev", &file_env("content = \"new\""));
    let workdir = p.path("work/a");
    std::fs::create_dir_all(&workdir).unwrap();
    std::fs::write(workdir.join("a"), "old").unwrap();
    for dir in [p.root(), &p.path("work"), &workdir] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let run = || {
        std::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_batou-local"))
            .arg("dev")
            .current_dir(p.root())
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("owner 0 and group 0"), "{stderr}");
    let meta = std::fs::metadata(workdir.join("a")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(std::fs::read_to_string(workdir.join("a")).unwrap(), "old");
    let leftovers: Vec<_> = std::fs::read_dir(&workdir).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "a temporary file was left behind");

    // Once the file may be given away, the same deploy converges and then changes nothing.
    std::fs::remove_file(workdir.join("a")).unwrap();
    assert!(run().status.success());
    let again = run();
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("0 changed"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
