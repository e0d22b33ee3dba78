//! [`Nginx`]: a real nginx master process on a temporary directory, in the foreground as
//! the test's child, whose main configuration includes `<dir>/sites/*.conf`; stopped by PID
//! when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The install command printed when the tests cannot find nginx.
pub const NGINX_INSTALL: &str = "apt-get install -y nginx";

/// Where Debian's package puts the program.
pub const NGINX: &str = "/usr/sbin/nginx";

/// A running nginx.
pub struct Nginx {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Nginx {
    /// Starts nginx with `site` (a server block) as `sites/first.conf`, and waits until
    /// `port` on 127.0.0.1 answers. Panics with the install command when nginx is missing.
    pub fn start(site: &str, port: u16) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "the nginx tests need nginx: {NGINX_INSTALL}"
        );
        let dir = tempfile::Builder::new().prefix("ngx").tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("sites")).unwrap();
        std::fs::create_dir_all(d.join("tmp")).unwrap();
        let temp: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
            .iter()
            .map(|t| format!("  {t}_temp_path {}/tmp/{t};\n", d.display()))
            .collect();
        std::fs::write(
            d.join("nginx.conf"),
            format!(
                "daemon off;\npid {0}/nginx.pid;\nerror_log {0}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n{temp}  include {0}/sites/*.conf;\n}}\n",
                d.display()
            ),
        )
        .unwrap();
        std::fs::write(d.join("sites/first.conf"), site).unwrap();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(d)
            .arg("-e")
            .arg(d.join("error.log"))
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .spawn()
            .unwrap();
        let nginx = Nginx {
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on port {port}: {}",
                std::fs::read_to_string(nginx.dir().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// The directory of its configuration, logs and pid file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The main configuration file.
    pub fn config(&self) -> PathBuf {
        self.dir().join("nginx.conf")
    }

    /// The directory its configuration includes every `*.conf` of.
    pub fn sites(&self) -> PathBuf {
        self.dir().join("sites")
    }

    /// The master process's PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The body nginx answers for `GET /` on `port`, or `None` while it does not answer.
    pub fn get(port: u16) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
    }

    /// Waits (up to 10 s) until `GET /` on `port` answers `body`.
    pub fn wait_for_body(port: u16, body: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = Nginx::get(port);
            if got.as_deref() == Some(body) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx on port {port} answers {got:?}, not {body:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM to the master, which ends its workers; then reap it.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
