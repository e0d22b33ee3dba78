//! Generated secrets through `batou-remote`: generated once by the controller, stored in the
//! environment's secrets file, shipped only to the host whose component uses them, reused
//! on the next deploy, and never shown.

use std::path::Path;

use batou_core::secrets::{IdentitySource, UserDirs, decrypt, generate_identity};

use crate::harness::{Cluster, Project};

const ENV: &str = r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["db"]

[hosts.web2]
components = ["motd"]

[components.db]
type = "file"
path = "db.conf"
template = "db.conf.j2"
vars = { password = { generate = "password" } }

[components.motd]
type = "file"
path = "motd"
content = "hello\n"
"#;

/// Whether any file below `dir` contains `needle`.
fn contains(dir: &Path, needle: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            contains(&path, needle)
        } else {
            meta.is_file()
                && std::fs::read(&path)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes())
        }
    })
}

#[test]
fn a_generated_secret_reaches_only_its_host_and_is_reused() {
    let cluster = Cluster::start(&["web1", "web2"]);
    let p = Project::new();
    p.env("prod", ENV);
    let (secret, public) = generate_identity();
    p.file("identity.txt", &format!("{secret}\n"));
    p.file("secrets/prod.recipients", &format!("{public}\n"));
    let id = p.path("identity.txt").to_str().unwrap().to_string();

    p.file("db.conf.j2", "password = {{ password }}\n");

    let dry = cluster.run(p.root(), &["prod", "--dry-run", "--identity", &id]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stderr.contains(
            "would generate secret `components.db.vars.password` (a dry run stores nothing)"
        ),
        "{}",
        dry.stderr
    );
    assert!(!p.path("secrets/prod.age").exists());

    let run = cluster.run(p.root(), &["prod", "--json", "--identity", &id]);
    assert_eq!(run.code, 0, "{}\n{}", run.stderr, run.stdout);
    assert!(
        run.stderr.contains(
            "generated secret `components.db.vars.password`, stored in `secrets/prod.age`"
        ),
        "{}",
        run.stderr
    );
    let identities = IdentitySource::new(Some(id.clone().into()), None, UserDirs::new(None, None))
        .load()
        .unwrap();
    let data = std::fs::read(p.path("secrets/prod.age")).unwrap();
    let text = decrypt(&data, "secrets/prod.age", &identities).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    let password = doc["generated"][0]["value"].as_str().unwrap().to_string();
    assert_eq!(password.len(), 32);

    let web1 = &cluster.host("web1").home;
    assert_eq!(
        std::fs::read_to_string(web1.join("srv/work/db/db.conf")).unwrap(),
        format!("password = {password}\n")
    );
    assert!(
        !contains(&cluster.host("web2").home, &password),
        "web2 never receives it"
    );
    assert!(
        !contains(&web1.join("srv/.batou"), &password),
        "the journal masks it"
    );
    assert!(!run.stdout.contains(&password) && !run.stderr.contains(&password));

    let again = cluster.run(p.root(), &["prod", "--json", "--identity", &id]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(!again.stderr.contains("generated"), "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
    assert_eq!(std::fs::read(p.path("secrets/prod.age")).unwrap(), data);
}
