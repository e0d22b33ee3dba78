//! `user` + `become`: log in as an unprivileged user and run the agent as root through
//! real `sudo -n`. Each test creates its own system user and sudoers rule and removes both
//! when it ends, also when it fails.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::harness::{Cluster, Project};

/// The install command printed when the tests cannot find `sudo`.
const INSTALL: &str = "apt-get install -y sudo";

/// A system user made for one test, with its sudoers file; both removed when dropped.
struct TestUser {
    name: String,
    sudoers: PathBuf,
}

impl TestUser {
    /// A new user, unique to this process and test, whose password field lets sshd (without
    /// PAM) accept its key, with no sudo rule yet.
    fn create() -> TestUser {
        assert!(
            Path::new("/usr/bin/sudo").exists(),
            "the become tests need sudo: {INSTALL}"
        );
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "btdeploy{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = std::process::Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", "-p", "*", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "useradd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestUser {
            sudoers: PathBuf::from(format!("/etc/sudoers.d/{name}")),
            name,
        }
    }

    /// Writes the user's sudoers file (checked with `visudo -c` first).
    fn allow(&self, rules: &str) {
        let candidate = std::env::temp_dir().join(format!("{}.sudoers", self.name));
        std::fs::write(&candidate, rules).unwrap();
        let check = std::process::Command::new("visudo")
            .arg("-cf")
            .arg(&candidate)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{rules}: {}",
            String::from_utf8_lossy(&check.stdout)
        );
        std::fs::copy(&candidate, &self.sudoers).unwrap();
        std::fs::set_permissions(
            &self.sudoers,
            std::os::unix::fs::PermissionsExt::from_mode(0o440),
        )
        .unwrap();
        let _ = std::fs::remove_file(candidate);
    }

    fn uid(&self) -> u32 {
        let out = std::process::Command::new("id")
            .args(["-u", &self.name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.sudoers);
        let _ = std::process::Command::new("userdel")
            .args(["-f", &self.name])
            .output();
    }
}

/// A cluster whose host `web1` the test user can log in to: its files readable, its home
/// the user's own.
fn cluster_for(user: &TestUser) -> Cluster {
    let cluster = Cluster::start(&["web1"]);
    let host = cluster.host("web1");
    for dir in [cluster.root(), host.dir.as_path()] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(
        host.dir.join("authorized_keys"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    std::os::unix::fs::chown(&host.home, Some(user.uid()), None).unwrap();
    cluster
}

/// A root-owned base directory the login user cannot write, and a file with a canary in its
/// content, which travels in the job (on stdin), never on a command line.
fn environment(user: &TestUser, base: &Path) -> String {
    format!(
        r#"
[environment]
base_dir = "{base}"
user = "{user}"
become = "root"

[hosts.web1]
components = ["conf"]

[components.conf]
type = "file"
path = "{{{{ workdir }}}}/app.conf"
content = "canary-7f3a91 as {{{{ host.name }}}}\n"
mode = "0600"
"#,
        base = base.display(),
        user = user.name,
    )
}

#[test]
fn the_agent_runs_as_root_through_sudo_and_sudo_logs_no_secret() {
    let user = TestUser::create();
    let cluster = cluster_for(&user);
    let home = cluster.host("web1").home.clone();
    let log = cluster.root().join("sudo.log");
    user.allow(&format!(
        "Defaults:{name} logfile={log}\n{name} ALL=(root) NOPASSWD: {home}/.cache/batou/agents/*, /tmp/batou-dry-run.*/agent\n",
        name = user.name,
        log = log.display(),
        home = home.display(),
    ));
    let base = cluster.root().join("srv");
    let p = Project::new();
    p.env("prod", &environment(&user, &base));

    // A dry run on the fresh host runs the agent, as root, from a temporary directory.
    let dry = cluster.run(p.root(), &["prod", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{}\n{}", dry.stderr, dry.stdout);
    assert!(!home.join(".cache").exists(), "the dry run wrote the cache");
    assert!(!base.exists(), "the dry run wrote the base directory");

    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stderr, out.stdout);
    // The agent is in the login user's cache, owned by it; what it wrote is root's.
    let agents = home.join(".cache/batou/agents");
    let cached = std::fs::read_dir(&agents).unwrap().next().unwrap().unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&cached.metadata().unwrap()),
        user.uid()
    );
    let conf = base.join("work/conf/app.conf");
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "canary-7f3a91 as web1\n"
    );
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&conf).unwrap()),
        0
    );
    let journal = std::fs::read_to_string(base.join(".batou/journal.jsonl")).unwrap();
    assert!(journal.contains("\"finished\""), "{journal}");

    // sudo logged the agent's command lines, and none carries the job.
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("COMMAND="), "{logged}");
    assert!(logged.contains(" agent"), "{logged}");
    assert!(!logged.contains("canary-7f3a91"), "{logged}");

    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}

#[test]
fn a_missing_sudo_rule_is_refused_before_anything_changes() {
    let user = TestUser::create();
    let cluster = cluster_for(&user);
    let home = cluster.host("web1").home.clone();
    let base = cluster.root().join("srv");
    let p = Project::new();
    p.env("prod", &environment(&user, &base));

    // No rule at all, then a rule that wants the password.
    for rules in [
        None,
        Some(format!(
            "{name} ALL=(root) {home}/.cache/batou/agents/*\n",
            name = user.name,
            home = home.display()
        )),
    ] {
        if let Some(rules) = &rules {
            user.allow(rules);
        }
        let out = cluster.run(p.root(), &["prod", "--json"]);
        assert_eq!(out.code, 8, "{rules:?}: {}\n{}", out.stderr, out.stdout);
        let failed: Vec<_> = out
            .events()
            .into_iter()
            .filter(|e| e["event"] == "host_failed")
            .collect();
        assert_eq!(failed.len(), 1, "{}", out.stdout);
        assert_eq!(failed[0]["status"], "become_refused");
        let message = failed[0]["error"][0].as_str().unwrap().to_string();
        let expected = match rules {
            None => [
                format!(
                    "sudo requires a password for `{}` to run the agent as `root` on `web1`",
                    user.name
                ),
                format!(
                    "`{}` is not allowed to run the agent as `root` through sudo on `web1`",
                    user.name
                ),
            ],
            Some(_) => [
                format!(
                    "sudo requires a password for `{}` to run the agent as `root` on `web1`",
                    user.name
                ),
                format!(
                    "sudo requires a password for `{}` to run the agent as `root` on `web1`",
                    user.name
                ),
            ],
        };
        assert!(
            expected.iter().any(|e| message.starts_with(e.as_str())),
            "{message}"
        );
        assert!(!base.exists(), "something changed on the host");
    }

    // With the rule, the same environment deploys, then changes nothing.
    user.allow(&format!(
        "{name} ALL=(root) NOPASSWD: {home}/.cache/batou/agents/*\n",
        name = user.name,
        home = home.display()
    ));
    let out = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let again = cluster.run(p.root(), &["prod", "--json"]);
    assert_eq!(again.count("changed"), 0, "{}", again.stdout);
}
