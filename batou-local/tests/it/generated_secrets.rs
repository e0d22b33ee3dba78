//! Generated secrets: made once on the controller, stored encrypted in the environment's
//! secrets file, reused on every later run, never shown; a dry run generates nothing.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use batou_core::secrets::{Identities, IdentitySource, UserDirs, decrypt, generate_identity};

use crate::harness::Project;

const ENV: &str = r#"
[environment]
base_dir = "out"

[hosts.localhost]
components = ["app", "deploy-key"]

[components.app]
type = "file"
path = "app.conf"
template = "app.conf.j2"

[components.app.vars]
password = { generate = "password", length = 24 }
token = { generate = "hex" }

[components.deploy-key]
type = "file"
path = "id_ed25519"
content = { generate = "ed25519" }
"#;

/// A project with `ENV`, its template, and recipients but no secrets file yet; returns the
/// project and the identity file's path.
fn project() -> (Project, String) {
    let p = Project::new();
    p.env("dev", ENV).file(
        "app.conf.j2",
        "password = {{ password }}\ntoken = {{ token }}\n",
    );
    let (secret, public) = generate_identity();
    p.file("identity.txt", &format!("{secret}\n"));
    p.file("secrets/dev.recipients", &format!("{public}\n"));
    let id = p.path("identity.txt").to_str().unwrap().to_string();
    (p, id)
}

/// The decrypted secrets of `dev`, as TOML.
fn cleartext(p: &Project, id: &str) -> toml::Table {
    let identities: Identities =
        IdentitySource::new(Some(id.into()), None, UserDirs::new(None, None))
            .load()
            .unwrap();
    let data = std::fs::read(p.path("secrets/dev.age")).unwrap();
    decrypt(&data, "secrets/dev.age", &identities)
        .unwrap()
        .parse()
        .unwrap()
}

fn generated<'a>(secrets: &'a toml::Table, attribute: &str) -> &'a toml::Table {
    secrets["generated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_table().unwrap())
        .find(|e| e["attribute"].as_str() == Some(attribute))
        .unwrap_or_else(|| panic!("no generated `{attribute}`"))
}

#[test]
fn secrets_are_generated_once_stored_encrypted_and_reused() {
    let (p, id) = project();
    let dry = p.converge(&["dev", "--dry-run", "--identity", &id]);
    for name in [
        "components.app.vars.password",
        "components.app.vars.token",
        "components.deploy-key.content",
    ] {
        assert!(
            dry.stderr.contains(&format!(
                "would generate secret `{name}` (a dry run stores nothing)"
            )),
            "{}",
            dry.stderr
        );
    }
    assert!(dry.stderr.contains("would change app"), "{}", dry.stderr);
    assert!(
        !p.path("secrets/dev.age").exists(),
        "a dry run stores nothing"
    );
    assert!(!p.path("out").exists(), "a dry run writes nothing");

    let first = p.converge(&["dev", "--identity", &id]);
    assert!(
        first.stderr.contains(
            "generated secret `components.app.vars.password`, stored in `secrets/dev.age`"
        ),
        "{}",
        first.stderr
    );
    let stored = std::fs::read(p.path("secrets/dev.age")).unwrap();
    assert!(stored.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"));
    let secrets = cleartext(&p, &id);
    let password = generated(&secrets, "vars.password")["value"]
        .as_str()
        .unwrap();
    let token = generated(&secrets, "vars.token")["value"].as_str().unwrap();
    let key = generated(&secrets, "content")["value"].as_str().unwrap();
    assert_eq!(password.len(), 24);
    assert_eq!(token.len(), 64);
    assert!(key.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
    let conf = p.path("out/work/app/app.conf");
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        format!("password = {password}\ntoken = {token}\n")
    );
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&conf), 0o600, "a file carrying secrets is private");
    for value in [password, token, key.lines().nth(1).unwrap()] {
        assert!(!first.stderr.contains(value), "{}", first.stderr);
        assert!(!first.stdout.contains(value));
        assert!(!dry.stderr.contains(value));
    }
    assert!(
        first
            .stderr
            .contains("<secret:components.app.vars.password>"),
        "{}",
        first.stderr
    );

    // The key is a real OpenSSH key: ssh-keygen derives the public key stored beside it.
    let key_file = p.path("out/work/deploy-key/id_ed25519");
    assert_eq!(mode(&key_file), 0o600);
    let public = Command::new("ssh-keygen")
        .args(["-y", "-f"])
        .arg(&key_file)
        .output()
        .expect("ssh-keygen runs (apt-get install openssh-client)");
    assert!(
        public.status.success(),
        "{}",
        String::from_utf8_lossy(&public.stderr)
    );
    let derived = String::from_utf8(public.stdout).unwrap();
    let stored_public = generated(&secrets, "content")["public"].as_str().unwrap();
    assert_eq!(
        derived.split_whitespace().take(2).collect::<Vec<_>>(),
        stored_public.split_whitespace().take(2).collect::<Vec<_>>()
    );

    // Every later run reuses them: nothing is generated, the file is not rewritten.
    let again = p.converge(&["dev", "--identity", &id]);
    assert!(!again.stderr.contains("generated"), "{}", again.stderr);
    assert_eq!(std::fs::read(p.path("secrets/dev.age")).unwrap(), stored);
    p.assert_idempotent(&["dev", "--identity", &id]);
    let dry = p.converge(&["dev", "--dry-run", "--identity", &id]);
    assert!(!dry.stderr.contains("would generate"), "{}", dry.stderr);
    // `secrets show` lists them with the other secrets.
    let show = p.converge(&["secrets", "show", "dev", "--identity", &id]);
    assert!(
        show.stdout.contains("components.app.vars.password"),
        "{}",
        show.stdout
    );
}

#[test]
fn bad_declarations_are_refused_with_their_place_and_nothing_is_stored() {
    let (p, id) = project();
    p.env(
        "dev",
        "[hosts.localhost]\ncomponents = [\"app\"]\n\n[components.app]\ntype = \"file\"\npath = \"a\"\ncontent = { generate = \"pasword\" }\n",
    );
    let out = p.run(&["dev", "--identity", &id]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "error: `generate` of `components.app.content` is `pasword`: expected one of `password`, `hex`, `ed25519` in environments/dev.toml:7:24 (did you mean `password`?)"
        ),
        "{}",
        out.stderr
    );
    p.env(
        "dev",
        "[hosts.localhost]\ncomponents = [\"app\"]\n\n[components.app]\ntype = \"file\"\npath = \"a\"\ncontent = { generate = \"hex\", length = 2 }\n",
    );
    let out = p.run(&["dev", "--identity", &id]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("`length` of `components.app.content` is 2: it must be between 8 and 4096 in environments/dev.toml:7:40"),
        "{}",
        out.stderr
    );
    assert!(!p.path("secrets/dev.age").exists());

    // Without recipients, nothing can be stored: the run stops before touching anything.
    std::fs::remove_file(p.path("secrets/dev.recipients")).unwrap();
    p.env("dev", ENV);
    let out = p.run(&["dev", "--identity", &id]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("cannot store the generated secrets of environment `dev`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("`secrets/dev.recipients` does not exist"),
        "{}",
        out.stderr
    );
    assert!(!p.path("out").exists());
    assert!(!p.path("secrets/dev.age").exists());
}
