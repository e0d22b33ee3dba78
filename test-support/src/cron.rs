//! [`CronUser`]: a system user created for one test, whose crontab the test reads and
//! writes with the real `crontab`; the crontab and the user are removed when it is dropped.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The install command printed when the tests cannot find `crontab`.
pub const CRON_INSTALL: &str = "apt-get install -y cron";

/// A user that exists for one test.
pub struct CronUser {
    /// The user's name.
    pub name: String,
}

impl CronUser {
    /// Creates a user without a home directory or a login shell; panics with the install
    /// command when `crontab` is missing.
    pub fn create() -> CronUser {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        assert!(
            Command::new("crontab").arg("-V").output().is_ok(),
            "the cron tests need Debian's `crontab`: {CRON_INSTALL}"
        );
        let name = format!(
            "btcron{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "useradd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        CronUser { name }
    }

    /// The user's crontab, empty when there is none.
    pub fn crontab(&self) -> String {
        let out = Command::new("crontab")
            .args(["-l", "-u", &self.name])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    /// Installs `text` as the user's crontab.
    pub fn set_crontab(&self, text: &str) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("crontab");
        std::fs::write(&file, text).unwrap();
        let out = Command::new("crontab")
            .args(["-u", &self.name])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "crontab failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for CronUser {
    fn drop(&mut self) {
        let _ = Command::new("crontab")
            .args(["-r", "-u", &self.name])
            .output();
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}
