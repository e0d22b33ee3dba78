//! A real runit supervisor for tests: `runsvdir -P` on a temporary service directory, in its
//! own process group, stopped by PID when dropped.
//!
//! Dropping sends SIGHUP to runsvdir, which makes it send TERM to each of its runsv processes
//! and exit; each runsv then stops its service and log service and exits. The drop waits,
//! with a deadline, until every process of the supervisor's tree that it saw has ended.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::procs;

/// The install command printed when the tests cannot find runit.
pub const RUNIT_INSTALL: &str = "install runit: apt-get install runit";

/// A running `runsvdir` on its own temporary service directory (or one given).
pub struct Runsvdir {
    dir: tempfile::TempDir,
    service_dir: PathBuf,
    child: Option<Child>,
}

impl Runsvdir {
    /// Starts `runsvdir -P <tmp>/service`; panics with the install command when runit is
    /// missing.
    pub fn start() -> Runsvdir {
        Runsvdir::start_with(None)
    }

    /// Starts `runsvdir -P <service_dir>`, creating the directory.
    pub fn on(service_dir: &Path) -> Runsvdir {
        Runsvdir::start_with(Some(service_dir))
    }

    fn start_with(service_dir: Option<&Path>) -> Runsvdir {
        for tool in [
            "/usr/bin/runsvdir",
            "/usr/bin/sv",
            "/usr/bin/svlogd",
            "/usr/bin/chpst",
        ] {
            assert!(
                Path::new(tool).exists(),
                "`{tool}` is missing: {RUNIT_INSTALL}"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("btsv")
            .tempdir_in("/tmp")
            .unwrap();
        let service_dir = service_dir.map_or_else(|| dir.path().join("service"), Path::to_path_buf);
        std::fs::create_dir_all(&service_dir).unwrap();
        let log = std::fs::File::create(dir.path().join("runsvdir.log")).unwrap();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new("/usr/bin/runsvdir")
                .arg("-P")
                .arg(&service_dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start runsvdir: {e}: {RUNIT_INSTALL}"))
        };
        Runsvdir {
            dir,
            service_dir,
            child: Some(child),
        }
    }

    /// The service directory runsvdir watches.
    pub fn service_dir(&self) -> PathBuf {
        self.service_dir.clone()
    }

    /// What runsvdir printed (runsv's complaints about service directories).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("runsvdir.log")).unwrap_or_default()
    }

    /// runsvdir's pid.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("runsvdir runs until dropped")
            .id()
    }

    /// Every process below runsvdir now: runsv, log services and the services themselves.
    pub fn tree(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut todo = vec![self.pid()];
        while let Some(pid) = todo.pop() {
            for child in procs::children(pid) {
                out.push(child);
                todo.push(child);
            }
        }
        out
    }

    /// Stops runsvdir and waits until it and every process it supervised have ended.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let tree = {
            let mut out = Vec::new();
            let mut todo = vec![child.id()];
            while let Some(pid) = todo.pop() {
                for c in procs::children(pid) {
                    out.push(c);
                    todo.push(c);
                }
            }
            out
        };
        procs::kill(child.id(), procs::Signal::SIGHUP);
        let _ = child.wait();
        let ended = std::panic::catch_unwind(|| {
            procs::wait_until(
                "runsv and the services it supervised to end",
                Duration::from_secs(20),
                || tree.iter().all(|pid| !procs::alive(*pid)),
            )
        });
        if ended.is_err() {
            // What did not end on TERM gets KILL, by the pids seen, so that no test leaves
            // a service behind.
            for pid in &tree {
                if procs::alive(*pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            panic!("runsvdir's processes did not end within 20 s of SIGHUP: {tree:?}");
        }
    }
}

impl Drop for Runsvdir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop()));
        } else {
            self.stop();
        }
    }
}
