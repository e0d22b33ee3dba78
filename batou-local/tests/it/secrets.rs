//! Secrets in local runs: merged into overrides, installed with their mode, masked in output,
//! and refused with a place when they do not fit the environment.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use batou_core::secrets::{encrypt, generate_identity, parse_recipients};

use crate::harness::Project;

const ENV: &str = r#"
[environment]
base_dir = "out"

[hosts.localhost]
components = ["conf", "key", "literal"]
data = { role = "primary" }

[components.conf]
type = "file"
path = "app.conf"
template = "app.conf.j2"

[components.key]
type = "file"
path = "tls.key"
secret = "tls.key"

[components.literal]
type = "file"
path = "literal"
"#;

const SECRETS: &str = r#"
[components.conf.vars]
password = "pw-4f9a2c81e7"

[components.literal]
content = "{{ not a template }} lit-93be01"

[hosts.localhost.data]
token = "tok-77d1e0a3b5"

[files]
"tls.key" = """
-----BEGIN TEST KEY-----
a2V5LW1hdGVyaWFsLWZvci10ZXN0cw
-----END TEST KEY-----
"""
"#;

/// A project with `ENV`, a template and secrets encrypted for a new age identity; returns
/// the project and the identity file's path.
fn project(secrets: &str) -> (Project, String) {
    let p = Project::new();
    p.env("dev", ENV).file(
        "app.conf.j2",
        "role = {{ host.data.role }}\ntoken = {{ host.data.token | default('-') }}\npassword = {{ password | default('-') }}\n",
    );
    let (secret, public) = generate_identity();
    p.file("identity.txt", &format!("{secret}\n"));
    write_secrets(&p, &public, secrets);
    let id = p.path("identity.txt").to_str().unwrap().to_string();
    (p, id)
}

fn write_secrets(p: &Project, recipient: &str, secrets: &str) {
    p.file("secrets/dev.recipients", &format!("{recipient}\n"));
    let recipients = parse_recipients("r", recipient).unwrap();
    std::fs::write(
        p.path("secrets/dev.age"),
        encrypt(secrets, &recipients).unwrap(),
    )
    .unwrap();
}

#[test]
fn secrets_converge_into_files_and_never_into_output() {
    let (p, id) = project(SECRETS);
    let dry = p.converge(&["dev", "--dry-run", "--identity", &id]);
    assert!(!p.path("out").exists(), "a dry run writes nothing");
    let first = p.converge(&["dev", "--identity", &id]);
    let json = p.converge(&["dev", "--json", "--identity", &id]);
    p.assert_idempotent(&["dev", "--identity", &id]);

    assert_eq!(
        std::fs::read_to_string(p.path("out/work/conf/app.conf")).unwrap(),
        "role = primary\ntoken = tok-77d1e0a3b5\npassword = pw-4f9a2c81e7\n"
    );
    // Secret values are never rendered as templates.
    assert_eq!(
        std::fs::read_to_string(p.path("out/work/literal/literal")).unwrap(),
        "{{ not a template }} lit-93be01"
    );
    let key = p.path("out/work/key/tls.key");
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .contains("a2V5LW1hdGVyaWFsLWZvci10ZXN0cw")
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    for out in [&dry, &first, &json] {
        for secret in [
            "pw-4f9a2c81e7",
            "tok-77d1e0a3b5",
            "lit-93be01",
            "a2V5LW1hdGVyaWFsLWZvci10ZXN0cw",
        ] {
            assert!(
                !out.stdout.contains(secret),
                "{secret} on stdout: {}",
                out.stdout
            );
            assert!(
                !out.stderr.contains(secret),
                "{secret} on stderr: {}",
                out.stderr
            );
        }
    }
    assert!(
        dry.stderr
            .contains("+password = <secret:components.conf.vars.password>"),
        "{}",
        dry.stderr
    );
    assert!(
        dry.stderr
            .contains("+token = <secret:hosts.localhost.data.token>")
    );
    assert!(
        dry.stderr
            .contains("would change key (missing)\nlocalhost: would change literal"),
        "{}",
        dry.stderr
    );
}

#[test]
fn a_rotated_secret_never_shows_its_old_value_in_a_diff() {
    let (p, id) = project(SECRETS);
    p.converge(&["dev", "--identity", &id]);
    // The password changes: masking knows only the new value.
    let (_, public) = {
        let text = std::fs::read_to_string(p.path("secrets/dev.recipients")).unwrap();
        ((), text.trim().to_string())
    };
    write_secrets(
        &p,
        &public,
        &SECRETS.replace("pw-4f9a2c81e7", "pw-new-0b7c55"),
    );
    for args in [
        &["dev", "--dry-run", "--identity", &id][..],
        &["dev", "--identity", &id],
        &["dev", "--json", "--identity", &id],
    ] {
        let out = p.converge(args);
        for old_or_new in ["pw-4f9a2c81e7", "pw-new-0b7c55"] {
            assert!(!out.stderr.contains(old_or_new), "{}", out.stderr);
            assert!(!out.stdout.contains(old_or_new), "{}", out.stdout);
        }
    }
    let again = p.run(&["dev", "--identity", &id, "--dry-run"]);
    assert!(!again.stderr.contains("pw-4f9a2c81e7"), "{}", again.stderr);
    assert_eq!(
        std::fs::read_to_string(p.path("out/work/conf/app.conf")).unwrap(),
        "role = primary\ntoken = tok-77d1e0a3b5\npassword = pw-new-0b7c55\n"
    );
    p.assert_idempotent(&["dev", "--identity", &id]);
}

#[test]
fn an_ssh_key_is_an_identity() {
    let p = Project::new();
    p.env(
        "dev",
        "[environment]\nbase_dir = \"out\"\n[hosts.localhost]\ncomponents = [\"conf\"]\n[components.conf]\ntype = \"file\"\npath = \"c\"\n",
    );
    let key = p.path("id_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dev@laptop", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = std::fs::read_to_string(p.path("id_ed25519.pub")).unwrap();
    write_secrets(
        &p,
        public.trim(),
        "[components.conf]\ncontent = \"from-ssh-1234\"\n",
    );
    p.converge_twice(&["dev", "--identity", key.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(p.path("out/work/conf/c")).unwrap(),
        "from-ssh-1234"
    );
}

/// Runs with secrets that do not fit and returns the error output; asserts that nothing was
/// written.
fn refused(secrets: &str, extra: &[&str]) -> String {
    let (p, id) = project(secrets);
    let mut args = vec!["dev", "--identity", &id];
    args.extend_from_slice(extra);
    let out = p.run(&args);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(!p.path("out").exists(), "an invalid run touched nothing");
    out.stderr
}

#[test]
fn secrets_that_do_not_fit_are_refused_with_their_place() {
    let err = refused("\n[components.cnof]\nx = \"1234\"\n", &[]);
    assert!(
        err.starts_with(
            "error: secrets for unknown component `cnof` in secrets/dev.age:2:13 (did you mean `conf`?)\n"
        ),
        "{err}"
    );
    let err = refused("[hosts.localhots.data]\nx = \"1234\"\n", &[]);
    assert!(
        err.starts_with("error: secrets for unknown host `localhots` in secrets/dev.age:1:8 (did you mean `localhost`?)\n"),
        "{err}"
    );
    let err = refused("[components.conf]\ntemplate = \"x.j2\"\n", &[]);
    assert!(
        err.starts_with("error: `components.conf.template` is set both in the environment and in the secrets in secrets/dev.age:2:1\n"),
        "{err}"
    );
    let err = refused("[components.conf]\nmode = \"abc-secret\"\n", &[]);
    assert!(err.contains("in secrets/dev.age:2:8"), "{err}");
    assert!(!err.contains("abc-secret"), "{err}");
    let err = refused("[components.conf.vars]\npassword = 'x'\n[files]\n", &[]);
    assert!(
        err.contains("no secret file `tls.key` in `secrets/dev.age`"),
        "{err}"
    );
    let err = refused("[componets]\n", &[]);
    assert!(
        err.contains("unknown section `componets` in secrets/dev.age:1:2"),
        "{err}"
    );
}

#[test]
fn a_wrong_identity_or_a_tampered_file_touches_nothing() {
    let (p, _) = project(SECRETS);
    let (other, _) = generate_identity();
    p.file("other.txt", &format!("{other}\n"));
    let out = p.run(&["dev", "--identity", p.path("other.txt").to_str().unwrap()]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "cannot decrypt `secrets/dev.age`: none of your identities is one of its recipients"
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint: tried: "), "{}", out.stderr);
    assert!(!p.path("out").exists());

    let (p, id) = project(SECRETS);
    let path = p.path("secrets/dev.age");
    let mut text = std::fs::read_to_string(&path).unwrap();
    let mid = text.len() / 2;
    let c = if &text[mid..mid + 1] == "A" { "B" } else { "A" };
    text.replace_range(mid..mid + 1, c);
    std::fs::write(&path, text).unwrap();
    let out = p.run(&["dev", "--identity", &id]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("`secrets/dev.age` is damaged or was tampered with"),
        "{}",
        out.stderr
    );
    assert!(!p.path("out").exists());
}
