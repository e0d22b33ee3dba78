//! Real sshd hosts on loopback for end-to-end tests.
//!
//! Each host is its own `sshd -D` on 127.0.0.N with a generated host key, its own `HOME`
//! (`SetEnv`) and log; the client side is a generated key, a known_hosts file and an
//! ssh_config that maps host names to addresses, with strict host key checking. Hosts are
//! stopped by PID when the cluster is dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::Outcome;

/// The install command printed when the tests cannot find `sshd`.
pub const INSTALL: &str = "apt-get install -y openssh-server";

/// A running sshd playing one host.
pub struct Host {
    /// The host's name in the environment and the SSH configuration.
    pub name: String,
    /// The loopback address sshd listens on.
    pub address: String,
    /// The port sshd listens on.
    pub port: u16,
    /// The login's home directory.
    pub home: PathBuf,
    /// The directory of sshd's configuration, host key and log.
    pub dir: PathBuf,
    /// Variables set in every session besides `HOME` (see [`Cluster::set_env`]).
    env: Vec<(String, String)>,
    child: Option<Child>,
}

/// Several hosts plus the client configuration to reach them.
pub struct Cluster {
    root: PathBuf,
    /// The hosts, by name. Dropped (their sshd stopped) before the directory they live in.
    pub hosts: BTreeMap<String, Host>,
    /// The client configuration that reaches every host.
    pub ssh_config: PathBuf,
    known_hosts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts one sshd per name on 127.0.0.2, 127.0.0.3, ...
    pub fn start(names: &[&str]) -> Cluster {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "the end-to-end tests need OpenSSH's server: {INSTALL}"
        );
        std::fs::create_dir_all("/run/sshd").unwrap();
        // Short paths: ssh control sockets must fit in ~100 bytes.
        let dir = tempfile::Builder::new()
            .prefix("bt")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().to_path_buf();
        let key = root.join("client_key");
        keygen(&key);
        let mut cluster = Cluster {
            _dir: dir,
            known_hosts: root.join("known_hosts"),
            ssh_config: root.join("ssh_config"),
            root,
            hosts: BTreeMap::new(),
        };
        for (i, name) in names.iter().enumerate() {
            let address = format!("127.0.0.{}", i + 2);
            let port = crate::free_port_on(&address);
            let dir = cluster.root.join(name);
            let home = dir.join("home");
            std::fs::create_dir_all(&home).unwrap();
            keygen(&dir.join("host_key"));
            std::fs::copy(key.with_extension("pub"), dir.join("authorized_keys")).unwrap();
            let host = Host {
                name: name.to_string(),
                address,
                port,
                home,
                dir,
                env: Vec::new(),
                child: None,
            };
            cluster.hosts.insert(name.to_string(), host);
        }
        cluster.write_client_config(&key);
        for name in names {
            cluster.trust(name);
            cluster.hosts.get_mut(*name).unwrap().start();
        }
        cluster
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> &Host {
        &self.hosts[name]
    }

    fn write_client_config(&self, key: &Path) {
        let mut text = String::new();
        for h in self.hosts.values() {
            text.push_str(&format!(
                "Host {}\n  HostName {}\n  Port {}\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n\n",
                h.name,
                h.address,
                h.port,
                key.display(),
                self.known_hosts.display()
            ));
        }
        std::fs::write(&self.ssh_config, text).unwrap();
    }

    /// Adds the host's current key to known_hosts.
    pub fn trust(&self, name: &str) {
        let h = &self.hosts[name];
        let key = std::fs::read_to_string(h.dir.join("host_key.pub")).unwrap();
        let key: Vec<&str> = key.split_whitespace().take(2).collect();
        let line = format!("[{}]:{} {}\n", h.address, h.port, key.join(" "));
        let mut known = std::fs::read_to_string(&self.known_hosts).unwrap_or_default();
        known.push_str(&line);
        std::fs::write(&self.known_hosts, known).unwrap();
    }

    /// Removes every known_hosts line of the host.
    pub fn forget(&self, name: &str) {
        let h = &self.hosts[name];
        let prefix = format!("[{}]:{} ", h.address, h.port);
        let known = std::fs::read_to_string(&self.known_hosts).unwrap_or_default();
        let kept: String = known
            .lines()
            .filter(|l| !l.starts_with(&prefix))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&self.known_hosts, kept).unwrap();
    }

    /// The directory every host's files live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Sets `key=value` in every later session of host `name` (sshd's `SetEnv`, beside
    /// `HOME`), restarting its sshd on the same address.
    pub fn set_env(&mut self, name: &str, key: &str, value: &str) {
        let h = self.hosts.get_mut(name).unwrap();
        h.stop();
        h.env.retain(|(k, _)| k != key);
        h.env.push((key.to_string(), value.to_string()));
        h.start();
    }

    /// Gives the host a new key and restarts it on the same address.
    pub fn replace_host_key(&mut self, name: &str) {
        let h = self.hosts.get_mut(name).unwrap();
        h.stop();
        std::fs::remove_file(h.dir.join("host_key")).unwrap();
        std::fs::remove_file(h.dir.join("host_key.pub")).unwrap();
        keygen(&h.dir.join("host_key"));
        h.start();
    }

    /// Runs `batou-remote` in `project` against this cluster.
    pub fn run(&self, project: &Path, args: &[&str]) -> Outcome {
        Outcome::from(self.command(project, args).output().unwrap())
    }

    /// The `batou-remote` command for `project`, not yet started.
    pub fn command(&self, project: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(crate::bin("batou-remote"));
        cmd.arg("-C")
            .arg(project)
            .arg("--ssh-config")
            .arg(&self.ssh_config)
            .args([
                "--connect-timeout",
                "3",
                "--keepalive",
                "1",
                "--agent-timeout",
                "10",
            ])
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .env("BATOU_AGENT_DIR", crate::agent_dir())
            .env_remove("BATOU_PROJECT_BINARY");
        cmd
    }
}

impl Host {
    fn start(&mut self) {
        let config = self.dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress {}:{}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\nUsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\nMaxSessions 64\nSetEnv HOME={}{}\n",
                self.address,
                self.port,
                self.dir.join("host_key").display(),
                self.dir.join("sshd.pid").display(),
                self.dir.join("authorized_keys").display(),
                self.home.display(),
                self.env
                    .iter()
                    .map(|(k, v)| format!(" {k}={v}"))
                    .collect::<String>()
            ),
        )
        .unwrap();
        let check = Command::new("/usr/sbin/sshd")
            .arg("-t")
            .arg("-f")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "bad sshd config: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-f")
            .arg(&config)
            .arg("-E")
            .arg(self.log())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((self.address.as_str(), self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd for {} did not start",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops this sshd (by its PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The PID of the listening sshd.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The sshd's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    /// How many SSH logins this sshd has accepted so far.
    pub fn logins(&self) -> usize {
        std::fs::read_to_string(self.log())
            .unwrap_or_default()
            .matches("Accepted publickey for")
            .count()
    }

    /// The host's journal records.
    pub fn journal(&self, base: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.home.join(base).join(".batou/journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "batou-test", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
