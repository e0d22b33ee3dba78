//! Releases on loopback sshd hosts, each with its own runsvdir and a real HTTP server run
//! from the release: shipped by digest once per host, an unchanged re-deploy that sends
//! nothing, a second release beside the first, an unhealthy release rolled back by itself,
//! an upload cut off and resumed, a corrupted store entry replaced. Every scenario ends with
//! a converge that changes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use batou_test_support::{Runsvdir, procs};

use crate::harness::{Cluster, Outcome, Project};

use batou_test_support::free_port;

/// Hosts with a runsvdir and a port each, and a project whose `app` (and `mirror`, a second
/// release root of the same files) ship `site/`, served by `web` from `app`'s `current`.
struct Scenario {
    cluster: Cluster,
    project: Project,
    hosts: Vec<(String, Runsvdir, u16)>,
}

impl Scenario {
    fn new(names: &[&str], mirror: bool) -> Scenario {
        let s = Scenario {
            cluster: Cluster::start(names),
            project: Project::new(),
            hosts: names
                .iter()
                .map(|n| (n.to_string(), Runsvdir::start(), free_port()))
                .collect(),
        };
        s.env(mirror);
        s
    }

    fn env(&self, mirror: bool) {
        let allow: Vec<String> = self
            .hosts
            .iter()
            .map(|(_, r, _)| format!("\"{}\"", r.service_dir().display()))
            .collect();
        let roots = if mirror {
            "\"app\", \"mirror\", \"web\""
        } else {
            "\"app\", \"web\""
        };
        let mut text = format!(
            "[environment]\nbase_dir = \"srv\"\nallow_paths = [{}]\n\n",
            allow.join(", ")
        );
        for (host, r, port) in &self.hosts {
            text.push_str(&format!(
                "[hosts.{host}]\ncomponents = [{roots}]\ndata = {{ service_dir = \"{}\", port = {port} }}\n\n",
                r.service_dir().display()
            ));
        }
        if mirror {
            text.push_str("[components.mirror]\ntype = \"release\"\nfiles = [\"site/\"]\n\n");
        }
        text.push_str(
            r#"[components.app]
type = "release"
files = ["site/"]

[components.web]
type = "service"
argv = ["python3", "-m", "http.server", "{{ host.data.port }}", "--bind", "127.0.0.1"]
cwd = "{{ releases.app.current }}/site"
restart_on = ["app"]
health = { http = "http://127.0.0.1:{{ host.data.port }}/ok.txt", within = "3s", stable = "300ms" }
"#,
        );
        self.project.env("prod", &text);
    }

    fn site(&self, version: &str, healthy: bool) {
        self.project.file("site/index.html", version);
        if healthy {
            self.project.file("site/ok.txt", "ok\n");
        } else {
            let _ = std::fs::remove_file(self.project.path("site/ok.txt"));
        }
    }

    fn run(&self, args: &[&str]) -> Outcome {
        let mut all = vec!["prod", "--json"];
        all.extend(args);
        self.cluster.run(self.project.root(), &all)
    }

    fn deploy(&self) -> Outcome {
        let out = self.run(&[]);
        assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
        out
    }

    fn assert_unchanged(&self) {
        let out = self.deploy();
        assert_eq!(out.changed(), Vec::<String>::new(), "{}", out.stdout);
        assert_eq!(uploads(&out), Vec::<String>::new());
    }

    fn home(&self, host: &str) -> PathBuf {
        self.cluster.host(host).home.clone()
    }

    fn current(&self, host: &str, root: &str) -> String {
        std::fs::read_link(self.home(host).join(format!("srv/releases/{root}/current")))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    fn store(&self, host: &str) -> PathBuf {
        self.home(host).join("srv/releases/.store")
    }

    fn get(&self, host: &str) -> String {
        let port = self.hosts.iter().find(|(h, _, _)| h == host).unwrap().2;
        procs::wait_until("web to answer", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        http_get(port)
    }
}

fn http_get(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out)
}

/// `host: message` of every log event about a bundle upload.
fn uploads(out: &Outcome) -> Vec<String> {
    out.events()
        .into_iter()
        .filter(|e| e["event"] == "log")
        .filter_map(|e| {
            let m = e["message"].as_str()?;
            m.contains("uploaded")
                .then(|| format!("{}: {m}", e["host"].as_str().unwrap_or_default()))
        })
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn releases_ship_once_per_host_activate_and_an_unchanged_deploy_sends_nothing() {
    let s = Scenario::new(&["web1", "web2"], true);
    s.site("v1", true);
    let first = s.deploy();
    // One upload per host, although two release roots use the bundle.
    let up = uploads(&first);
    assert_eq!(up.len(), 2, "{up:?}");
    for host in ["web1", "web2"] {
        assert_eq!(s.get(host), "v1");
        let store = entries(&s.store(host));
        assert_eq!(store.len(), 1, "{store:?}");
        let id = s.current(host, "app");
        assert!(id.ends_with(&store[0][..12]), "{id} {store:?}");
        assert_eq!(s.current(host, "mirror"), id);
    }
    let journal = s.cluster.host("web1").journal("srv");
    assert!(
        journal
            .iter()
            .any(|r| r["record"] == "release" && r["action"] == "activated"),
        "{journal:?}"
    );
    s.assert_unchanged();

    // A second release: shipped, activated, the first stays beside it.
    let one = s.current("web1", "app");
    s.site("v2", true);
    let second = s.deploy();
    assert_eq!(uploads(&second).len(), 2);
    for host in ["web1", "web2"] {
        assert_eq!(s.get(host), "v2");
        let two = s.current(host, "app");
        assert_ne!(two, one);
        let ids = entries(&s.home(host).join("srv/releases/app"));
        assert!(ids.contains(&one) && ids.contains(&two), "{ids:?}");
    }
    s.assert_unchanged();

    // A dry run of a third release uploads nothing.
    s.site("v3", true);
    let dry = s.run(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(uploads(&dry), Vec::<String>::new());
    assert_eq!(entries(&s.store("web1")).len(), 2);
    s.site("v2", true);
    s.assert_unchanged();
}

#[test]
fn an_unhealthy_release_is_rolled_back_on_its_host_and_the_previous_one_serves() {
    let s = Scenario::new(&["web1"], false);
    s.site("v1", true);
    s.deploy();
    let good = s.current("web1", "app");
    s.site("v2 broken", false);
    let out = s.run(&[]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains(&format!("not healthy; rolled back to {good}")),
        "{}",
        out.stdout
    );
    assert_eq!(s.current("web1", "app"), good);
    assert_eq!(s.get("web1"), "v1");
    let journal = s.cluster.host("web1").journal("srv");
    assert!(
        journal.iter().any(|r| r["record"] == "release"
            && r["action"] == "rolled_back"
            && r["id"] == good.as_str()),
        "{journal:?}"
    );
    s.site("v1", true);
    s.assert_unchanged();
}

/// 24 MiB that zstd cannot shrink.
fn noise(seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(24 << 20);
    while out.len() < 24 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

#[test]
fn an_upload_cut_off_resumes_and_a_corrupted_store_entry_is_replaced() {
    let s = Scenario::new(&["web1"], false);
    s.site("v1", true);
    s.project.file_bytes("site/blob.bin", &noise(7));
    let store = s.store("web1");
    let mut child = s
        .cluster
        .command(s.project.root(), &["prod", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Cut the upload off once some bytes arrived: end the receiving end by its pid.
    let receiver = procs::wait_for_some("the upload to start", Duration::from_secs(60), || {
        let part = entries(&store).into_iter().find(|n| n.ends_with(".part"))?;
        let size = std::fs::metadata(store.join(&part)).ok()?.len();
        (size > 0).then_some(())?;
        procs::processes()
            .into_iter()
            .find(|(_, argv)| argv.iter().any(|a| a == "bundle-receive"))
            .map(|(pid, _)| pid)
    });
    procs::kill(receiver, procs::Signal::SIGKILL);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the deploy did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let part = entries(&store)
        .into_iter()
        .find(|n| n.ends_with(".part"))
        .expect("the partial upload stays");
    let had = std::fs::metadata(store.join(&part)).unwrap().len();
    assert!(had > 0);

    let resumed = s.deploy();
    let up = uploads(&resumed);
    assert_eq!(up.len(), 1, "{up:?}");
    assert!(
        up[0].contains(&format!("(resumed at {had} bytes)")),
        "{up:?}"
    );
    assert_eq!(s.get("web1"), "v1");
    s.assert_unchanged();

    // A store entry that no longer matches its digest is found, removed and shipped again.
    let digest = entries(&store).into_iter().next().unwrap();
    std::fs::write(store.join(&digest), b"not the bundle").unwrap();
    let repaired = s.deploy();
    assert!(
        repaired.stdout.contains("did not match its digest"),
        "{}",
        repaired.stdout
    );
    assert_eq!(uploads(&repaired).len(), 1);
    let hash = {
        use sha2::Digest;
        let bytes = std::fs::read(store.join(&digest)).unwrap();
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(hash, digest);
    s.assert_unchanged();
}

#[test]
fn rollback_and_roll_forward_over_ssh_and_the_releases_of_each_host() {
    let s = Scenario::new(&["web1", "web2"], false);
    s.site("v1", true);
    s.deploy();
    let one = s.current("web1", "app");
    s.site("v2", true);
    s.deploy();
    let two = s.current("web1", "app");

    // Only web1, in one step: no upload, the service restarted and healthy on the old one.
    let back = s.run(&["rollback", "--hosts", "web1"]);
    assert_eq!(back.code, 0, "{}\n{}", back.stdout, back.stderr);
    assert_eq!(uploads(&back), Vec::<String>::new());
    assert_eq!(s.current("web1", "app"), one);
    assert_eq!(s.get("web1"), "v1");
    assert_eq!(s.current("web2", "app"), two);
    assert_eq!(s.get("web2"), "v2");
    let statuses = back.statuses();
    assert_eq!(statuses.get("web1").map(String::as_str), Some("changed"));
    assert!(!statuses.contains_key("web2"), "{statuses:?}");
    let journal = s.cluster.host("web1").journal("srv");
    assert!(
        journal.iter().any(|r| r["record"] == "release"
            && r["action"] == "rolled_back"
            && r["id"] == one.as_str()
            && r["previous"] == two.as_str()),
        "{journal:?}"
    );

    let listed = s.run(&["releases"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    // Hosts answer in parallel: their lines come in any order.
    let mut current: Vec<String> = listed
        .events()
        .into_iter()
        .filter(|e| e["event"] == "log")
        .filter_map(|e| {
            let m = e["message"].as_str()?;
            m.contains("(current)")
                .then(|| format!("{}: {m}", e["host"].as_str().unwrap()))
        })
        .collect();
    current.sort();
    assert_eq!(current.len(), 2, "{current:?}");
    assert!(
        current[0].starts_with(&format!("web1: release {one} (current)")),
        "{current:?}"
    );
    assert!(
        current[1].starts_with(&format!("web2: release {two} (current)")),
        "{current:?}"
    );
    assert!(current[0].contains(" by "), "{current:?}");

    // Forward again by id; then a deploy changes nothing.
    let forward = s.run(&["rollback", "--to", &two, "--hosts", "web1"]);
    assert_eq!(forward.code, 0, "{}", forward.stdout);
    assert_eq!(s.current("web1", "app"), two);
    assert_eq!(s.get("web1"), "v2");
    s.assert_unchanged();
}
