//! Shipping the agent: the static `agent` build travels compressed and `batou-unpack`
//! installs it; a host of another platform is refused before anything is sent; the host's
//! cache keeps the current and the previous agent; a dry run never writes the cache.

use std::path::Path;

use crate::harness::{Cluster, Project};

const ENV: &str = r#"
[environment]
base_dir = "srv"

[hosts.web1]
components = ["conf"]

[components.conf]
type = "file"
path = "{{ workdir }}/app.conf"
content = "shipped\n"
"#;

fn sha256(path: &Path) -> String {
    batou_test_support::sha256_hex(&std::fs::read(path).unwrap())
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn uploaded_bytes(out: &batou_test_support::Outcome) -> Vec<u64> {
    out.events()
        .iter()
        .filter(|e| e["event"] == "agent_uploaded")
        .map(|e| e["bytes"].as_u64().unwrap())
        .collect()
}

#[test]
fn the_static_agent_travels_compressed_once_and_runs() {
    let cluster = Cluster::start(&["web1"]);
    let home = cluster.host("web1").home.clone();
    let dir = batou_test_support::agent_dir();
    let (agent, unpack) = (dir.join("batou-agent"), dir.join("batou-unpack"));
    let p = Project::new();
    p.env("prod", ENV);

    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, out.stdout);
    let agent_size = std::fs::metadata(&agent).unwrap().len();
    let unpack_size = std::fs::metadata(&unpack).unwrap().len();
    let sent = uploaded_bytes(&out);
    assert_eq!(sent.len(), 1);
    // batou-unpack goes uncompressed, the agent compressed to well under half its size.
    assert!(sent[0] > unpack_size, "{sent:?}");
    assert!(
        sent[0] < unpack_size + agent_size / 2,
        "{sent:?} {agent_size}"
    );

    // The host's cache holds exactly the static agent and batou-unpack, by their hashes.
    let cached = home.join(".cache/batou/agents").join(sha256(&agent));
    assert_eq!(sha256(&cached), sha256(&agent));
    assert_eq!(
        listing(&home.join(".cache/batou/unpack")),
        [sha256(&unpack)]
    );
    let file = std::process::Command::new("file")
        .arg(&cached)
        .output()
        .unwrap();
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(file.contains("statically linked"), "{file}");
    assert!(std::fs::read_to_string(home.join("srv/work/conf/app.conf")).unwrap() == "shipped\n");

    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("agent_uploaded"), 0);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}

#[test]
fn a_host_of_another_platform_is_refused_before_anything_is_sent() {
    let mut cluster = Cluster::start(&["web1"]);
    let shims = cluster.root().join("shims");
    std::fs::create_dir_all(&shims).unwrap();
    let uname = shims.join("uname");
    std::fs::write(&uname, "#!/bin/sh\necho FreeBSD amd64\n").unwrap();
    std::fs::set_permissions(&uname, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    cluster.set_env(
        "web1",
        "PATH",
        &format!("{}:/usr/local/bin:/usr/bin:/bin", shims.display()),
    );
    let home = cluster.host("web1").home.clone();
    let p = Project::new();
    p.env("prod", ENV);

    let out = cluster.run(p.root(), &["prod"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the host runs `FreeBSD amd64`, but the agent is built for `Linux x86_64`: refusing to upload it"),
        "{}",
        out.stderr
    );
    assert!(!home.join(".cache").exists(), "something was uploaded");
    assert!(!home.join("srv").exists());

    // With the real `uname` again, the same host deploys, then changes nothing.
    std::fs::remove_file(&uname).unwrap();
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}

#[test]
fn the_cache_keeps_the_current_and_the_previous_agent() {
    let cluster = Cluster::start(&["web1"]);
    let home = cluster.host("web1").home.clone();
    let cache = home.join(".cache/batou/agents");
    std::fs::create_dir_all(&cache).unwrap();
    // Three agents of earlier deploys, installed a day, two days and three days ago.
    let old: Vec<String> = (1..=3).map(|i| format!("{i}").repeat(64)).collect();
    for (i, name) in old.iter().enumerate() {
        std::fs::write(cache.join(name), "old agent").unwrap();
        let status = std::process::Command::new("touch")
            .arg("-d")
            .arg(format!("{} days ago", i + 1))
            .arg(cache.join(name))
            .status()
            .unwrap();
        assert!(status.success());
    }
    // Not an agent: left alone.
    std::fs::write(cache.join("notes.txt"), "mine").unwrap();
    let p = Project::new();
    p.env("prod", ENV);

    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let current = sha256(&batou_test_support::agent_dir().join("batou-agent"));
    let mut expected = vec![current, old[0].clone(), "notes.txt".to_string()];
    expected.sort();
    assert_eq!(listing(&cache), expected);

    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
    assert_eq!(listing(&cache), expected);
}

#[test]
fn a_dry_run_never_writes_the_agent_cache() {
    let mut cluster = Cluster::start(&["web1"]);
    let tmp = cluster.root().join("web1-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    cluster.set_env("web1", "TMPDIR", &tmp.display().to_string());
    let home = cluster.host("web1").home.clone();
    let p = Project::new();
    p.env("prod", ENV);

    // A fresh host: the agent runs from a temporary directory that the session removes.
    let out = cluster.run(p.root(), &["prod", "--dry-run", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, out.stdout);
    assert_eq!(out.count("agent_uploaded"), 1);
    assert!(!home.join(".cache").exists(), "the dry run wrote the cache");
    assert!(!home.join("srv").exists());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !listing(&tmp).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {:?}",
            listing(&tmp)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // After a deploy, a dry run uses the cached agent and changes nothing in the cache.
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let cache = home.join(".cache/batou/agents");
    let before = listing(&cache);
    let dry = cluster.run(p.root(), &["prod", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(dry.count("agent_uploaded"), 0);
    assert_eq!(listing(&cache), before);
    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}
