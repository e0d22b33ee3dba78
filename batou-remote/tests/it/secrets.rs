//! Secrets over SSH: the canary never leaks, hosts get only their own secrets, and the
//! `secrets` commands keep the cleartext safe.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use batou_core::secrets::{encrypt, generate_identity, parse_recipients};

use crate::harness::{Cluster, Project};

/// A random lowercase hex string: a value no test text could contain by accident.
fn random(len: usize) -> String {
    let bytes = std::fs::read("/proc/sys/kernel/random/uuid").unwrap();
    let mut out = String::from_utf8(bytes).unwrap().trim().replace('-', "");
    while out.len() < len {
        out.push_str(&random(len - out.len()));
    }
    out.truncate(len);
    out
}

/// Writes an age identity file and returns (identity path, public key).
fn identity(dir: &Path, name: &str) -> (PathBuf, String) {
    let (secret, public) = generate_identity();
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, public)
}

/// Encrypts `cleartext` as the environment's secrets for `public`.
fn write_secrets(project: &Path, env: &str, public: &str, cleartext: &str) {
    std::fs::create_dir_all(project.join("secrets")).unwrap();
    std::fs::write(
        project.join(format!("secrets/{env}.recipients")),
        format!("{public} # tester\n"),
    )
    .unwrap();
    let recipients = parse_recipients("r", public).unwrap();
    std::fs::write(
        project.join(format!("secrets/{env}.age")),
        encrypt(cleartext, &recipients).unwrap(),
    )
    .unwrap();
}

/// Every file below `dir` whose bytes contain `needle`, relative to `dir`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(path.strip_prefix(dir).unwrap().to_path_buf());
                }
            }
        }
    }
    found.sort();
    found
}

const ENV: &str = r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["conf", "key", "printer"]

[hosts.web2]
components = ["conf", "key", "broken"]

[hosts.other]
components = ["motd"]

[components.conf]
type = "file"
path = "app.conf"
template = "app.conf.j2"
vars = { user = "shop" }

[components.key]
type = "file"
path = "shop.key"
secret = "shop.key"

# Deliberately prints the file that holds the secret.
[components.printer]
type = "command"
argv = ["sh", "-c", "cat ../conf/app.conf && touch printed"]
creates = "printed"
show_output = true

# Fails, and its output (shown on failure) holds the secret.
[components.broken]
type = "command"
argv = ["sh", "-c", "cat ../conf/app.conf; exit 3"]
creates = "never"

[components.motd]
type = "file"
path = "motd"
content = "hello from {{ host.name }}\n"
"#;

#[test]
fn the_canary_reaches_only_its_targets_and_no_output() {
    let cluster = Cluster::start(&["web1", "web2", "other"]);
    let p = Project::new();
    p.env("prod", ENV);
    std::fs::write(
        p.root().join("app.conf.j2"),
        "user = {{ user }}\npassword = {{ password }}\n",
    )
    .unwrap();
    let canary = random(32);
    let key_line = random(40);
    let (id, public) = identity(p.root(), "identity.txt");
    write_secrets(
        p.root(),
        "prod",
        &public,
        &format!(
            "[components.conf.vars]\npassword = \"{canary}\"\n\n[files]\n\"shop.key\" = \"\"\"\n-----BEGIN TEST KEY-----\n{key_line}\n-----END TEST KEY-----\n\"\"\"\n"
        ),
    );
    let id = id.to_str().unwrap();
    let mut outputs = Vec::new();

    let dry = cluster.run(p.root(), &["prod", "--dry-run", "--identity", id]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stderr
            .contains("+password = <secret:components.conf.vars.password>"),
        "{}",
        dry.stderr
    );
    outputs.push(dry);
    for host in ["web1", "web2", "other"] {
        assert!(!cluster.host(host).home.join("srv/work").exists());
    }

    let json = cluster.run(
        p.root(),
        &["prod", "--json", "--keep-going", "--identity", id],
    );
    assert_eq!(json.code, 1, "{}\n{}", json.stderr, json.stdout);
    let statuses = json.statuses();
    assert_eq!(statuses["web1"], "changed");
    assert_eq!(statuses["web2"], "failed");
    let events = json.stdout.clone();
    assert!(
        events.contains("password = <secret:components.conf.vars.password>"),
        "the failing command's output is shown, masked: {events}"
    );
    outputs.push(json);

    let human = cluster.run(p.root(), &["prod", "--keep-going", "--identity", id]);
    assert_eq!(human.code, 1, "{}", human.stderr);
    outputs.push(human);

    // Without the failing component everything converges, and then nothing changes.
    p.env("prod", &ENV.replace(r#""key", "broken"]"#, r#""key"]"#));
    let fixed = cluster.run(p.root(), &["prod", "--identity", id]);
    assert_eq!(fixed.code, 0, "{}", fixed.stderr);
    outputs.push(fixed);
    let again = cluster.run(p.root(), &["prod", "--json", "--identity", id]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
    outputs.push(again);

    for out in &outputs {
        for secret in [&canary, &key_line] {
            assert!(
                !out.stdout.contains(secret.as_str()),
                "leak on stdout: {}",
                out.stdout
            );
            assert!(
                !out.stderr.contains(secret.as_str()),
                "leak on stderr: {}",
                out.stderr
            );
        }
    }
    assert!(
        outputs[2]
            .stderr
            .contains("<secret:components.conf.vars.password>"),
        "{}",
        outputs[2].stderr
    );

    for host in ["web1", "web2"] {
        let h = cluster.host(host);
        assert_eq!(
            files_containing(&h.home, &canary),
            [PathBuf::from("srv/work/conf/app.conf")],
            "{host}"
        );
        assert_eq!(
            files_containing(&h.home, &key_line),
            [PathBuf::from("srv/work/key/shop.key")],
            "{host}"
        );
        let key = h.home.join("srv/work/key/shop.key");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{host}");
        assert!(!h.journal("srv").is_empty());
        // Nothing the hosts logged names a secret.
        let log = std::fs::read_to_string(h.log()).unwrap();
        assert!(!log.contains(&canary) && !log.contains(&key_line), "{host}");
    }
    let other = cluster.host("other");
    assert!(files_containing(&other.dir, &canary).is_empty());
    assert!(files_containing(&other.dir, &key_line).is_empty());
    assert!(other.home.join("srv/work/motd/motd").exists());
}

#[test]
fn without_a_matching_identity_nothing_is_touched() {
    let cluster = Cluster::start(&["web1"]);
    let p = Project::new();
    p.env(
        "prod",
        "[environment]\nbase_dir = \"srv\"\n[hosts.web1]\ncomponents = [\"conf\"]\n[components.conf]\ntype = \"file\"\npath = \"app.conf\"\n",
    );
    let (_, public) = identity(p.root(), "mine.txt");
    let (stranger, _) = identity(p.root(), "stranger.txt");
    write_secrets(
        p.root(),
        "prod",
        &public,
        "[components.conf]\ncontent = \"s3cret-value\"\n",
    );
    let out = cluster.run(
        p.root(),
        &["prod", "--identity", stranger.to_str().unwrap()],
    );
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "error: cannot decrypt `secrets/prod.age`: none of your identities is one of its recipients"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(cluster.host("web1").logins(), 0);
}

/// The `secrets` command with `HOME` and the runtime directory inside the test.
struct Secrets {
    dir: tempfile::TempDir,
    project: Project,
}

impl Secrets {
    fn new() -> Self {
        let s = Secrets {
            dir: tempfile::tempdir().unwrap(),
            project: Project::new(),
        };
        std::fs::create_dir_all(s.runtime()).unwrap();
        s.project.env(
            "prod",
            "[hosts.web1]\ncomponents = [\"app\"]\n[components.app]\ntype = \"file\"\npath = \"x\"\n",
        );
        s
    }

    fn runtime(&self) -> PathBuf {
        self.dir.path().join("runtime")
    }

    fn run(&self, args: &[&str], editor: Option<&str>) -> (i32, String, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_batou-remote"));
        cmd.arg("secrets")
            .args(args)
            .arg("-C")
            .arg(self.project.root())
            .env("HOME", self.dir.path())
            .env("XDG_RUNTIME_DIR", self.runtime())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("BATOU_IDENTITY")
            .env_remove("VISUAL")
            .stdin(std::process::Stdio::null());
        match editor {
            Some(script) => {
                let path = self.dir.path().join("editor.sh");
                std::fs::write(&path, format!("#!/bin/sh\nset -e\n{script}\n")).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
                cmd.env("EDITOR", &path);
            }
            None => {
                cmd.env("EDITOR", "false");
            }
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    fn file(&self, rel: &str) -> PathBuf {
        self.project.root().join(rel)
    }
}

#[test]
fn keygen_create_edit_show_and_a_rejected_edit_that_is_kept() {
    let s = Secrets::new();
    let (code, public, err) = s.run(&["keygen"], None);
    assert_eq!(code, 0, "{err}");
    assert!(public.starts_with("age1"), "{public}");
    let identity = s.dir.path().join(".config/batou/identity.txt");
    assert_eq!(
        std::fs::metadata(&identity).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (code, _, err) = s.run(&["create", "prod"], None);
    assert_eq!(code, 0, "{err}");
    let recipients = std::fs::read_to_string(s.file("secrets/prod.recipients")).unwrap();
    assert!(recipients.contains(public.trim()), "{recipients}");
    let armored = std::fs::read_to_string(s.file("secrets/prod.age")).unwrap();
    assert!(armored.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));

    // A valid edit: the editor sees the cleartext in a private file, which is gone after.
    let seen = s.dir.path().join("seen");
    let (code, _, err) = s.run(
        &["edit", "prod"],
        Some(&format!(
            "ls -ld \"$(dirname \"$1\")\" \"$1\" > {seen}\nprintf '[components.app]\\ncontent = \"pw-1234567\"\\n' > \"$1\"",
            seen = seen.display()
        )),
    );
    assert_eq!(code, 0, "{err}");
    let listing = std::fs::read_to_string(&seen).unwrap();
    assert!(listing.starts_with("drwx------"), "{listing}");
    assert!(
        listing.lines().nth(1).unwrap().starts_with("-rw-------"),
        "{listing}"
    );
    assert_eq!(std::fs::read_dir(s.runtime()).unwrap().count(), 0);
    let (code, names, _) = s.run(&["show", "prod"], None);
    assert_eq!(code, 0);
    assert_eq!(names, "components.app.content\n");
    let (_, values, _) = s.run(&["show", "prod", "--values"], None);
    assert!(values.contains("pw-1234567"));

    // An invalid edit without a terminal to ask on: saved aside, encrypted; nothing changes.
    let before = std::fs::read(s.file("secrets/prod.age")).unwrap();
    let (code, _, err) = s.run(
        &["edit", "prod"],
        Some("printf '[components.ap]\\ncontent = \"pw-new-value\"\\n' > \"$1\""),
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("secrets for unknown component `ap`"), "{err}");
    assert!(err.contains("(did you mean `app`?)"), "{err}");
    assert!(
        err.contains("your edit is kept, encrypted, in `secrets/prod.age.rejected`"),
        "{err}"
    );
    assert_eq!(std::fs::read(s.file("secrets/prod.age")).unwrap(), before);
    let rejected = std::fs::read_to_string(s.file("secrets/prod.age.rejected")).unwrap();
    assert!(!rejected.contains("pw-new-value"));
    assert_eq!(std::fs::read_dir(s.runtime()).unwrap().count(), 0);

    // The next edit resumes from the rejected text; fixing it saves and drops the copy.
    let (code, _, err) = s.run(
        &["edit", "prod"],
        Some("grep -q 'pw-new-value' \"$1\"\nsed -i 's/components.ap]/components.app]/' \"$1\""),
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("resuming the edit"), "{err}");
    assert!(!s.file("secrets/prod.age.rejected").exists());
    let (_, values, _) = s.run(&["show", "prod", "--values"], None);
    assert!(values.contains("pw-new-value"), "{values}");

    // A failing editor changes nothing and leaves no cleartext behind.
    let before = std::fs::read(s.file("secrets/prod.age")).unwrap();
    let (code, _, err) = s.run(&["edit", "prod"], Some("echo garbage > \"$1\"; exit 1"));
    assert_ne!(code, 0);
    assert!(err.contains("the secrets were not changed"), "{err}");
    assert_eq!(std::fs::read(s.file("secrets/prod.age")).unwrap(), before);
    assert_eq!(std::fs::read_dir(s.runtime()).unwrap().count(), 0);
}

#[test]
fn recipients_are_added_and_removed_with_age_and_ssh_keys() {
    let s = Secrets::new();
    let (alice, alice_pub) = identity(s.dir.path(), "alice.txt");
    let alice = alice.to_str().unwrap();
    let bob = s.dir.path().join("bob_ed25519");
    let carol = s.dir.path().join("carol_rsa");
    for (key, kind) in [(&bob, "ed25519"), (&carol, "rsa")] {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-C", "tester", "-f"])
            .arg(key)
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let public = |key: &Path| {
        let text = std::fs::read_to_string(key.with_file_name(format!(
            "{}.pub",
            key.file_name().unwrap().to_str().unwrap()
        )))
        .unwrap();
        let parts: Vec<&str> = text.split_whitespace().take(2).collect();
        parts.join(" ")
    };
    let (code, _, err) = s.run(
        &[
            "create",
            "prod",
            "--recipient",
            &format!("{alice_pub} # alice"),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = s.run(
        &["edit", "prod", "--identity", alice],
        Some("printf '[components.app]\\ncontent = \"shared-secret\"\\n' > \"$1\""),
    );
    assert_eq!(code, 0, "{err}");

    // Bob (ssh-ed25519) cannot read it until Alice adds him.
    let (code, _, err) = s.run(&["show", "prod", "--identity", bob.to_str().unwrap()], None);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("none of your identities"), "{err}");
    let (code, _, err) = s.run(
        &[
            "add-recipient",
            "prod",
            &format!("{} bob", public(&bob)),
            &format!("{} carol", public(&carol)),
            "--identity",
            alice,
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    for key in [&bob, &carol] {
        let (code, values, err) = s.run(
            &[
                "show",
                "prod",
                "--values",
                "--identity",
                key.to_str().unwrap(),
            ],
            None,
        );
        assert_eq!(code, 0, "{err}");
        assert!(values.contains("shared-secret"));
    }

    // Removing Alice by name: Bob re-encrypts, and Alice can no longer decrypt.
    let (code, _, err) = s.run(
        &[
            "remove-recipient",
            "prod",
            "alice",
            "--identity",
            bob.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rotate the values"), "{err}");
    let (code, _, _) = s.run(&["show", "prod", "--identity", alice], None);
    assert_eq!(code, 3);
    let recipients = std::fs::read_to_string(s.file("secrets/prod.recipients")).unwrap();
    assert!(!recipients.contains(&alice_pub));

    // A tampered file is refused as such.
    let path = s.file("secrets/prod.age");
    let mut text = std::fs::read_to_string(&path).unwrap();
    let mid = text.len() / 2;
    let c = if &text[mid..mid + 1] == "A" { "B" } else { "A" };
    text.replace_range(mid..mid + 1, c);
    std::fs::write(&path, text).unwrap();
    let (code, _, err) = s.run(&["show", "prod", "--identity", bob.to_str().unwrap()], None);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("damaged or was tampered with"), "{err}");
}
