//! Fixtures for the library components' end-to-end tests: [`GitRepo`], a bare repository
//! with a clone that commits and pushes (real `git`), [`tar_gz`], an archive made with the
//! real `tar`, and [`sha256_hex`].

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The install command printed when the tests cannot find `git`.
pub const GIT_INSTALL: &str = "apt-get install -y git";

/// A bare repository (`origin`) and a working clone that commits to `main` and pushes.
pub struct GitRepo {
    _dir: tempfile::TempDir,
    /// The bare repository, which components clone.
    pub bare: PathBuf,
    work: PathBuf,
}

impl GitRepo {
    /// A bare repository whose `main` has one commit: `app.py` with `content`.
    pub fn new(content: &str) -> GitRepo {
        assert!(
            Command::new("git").arg("--version").output().is_ok(),
            "the git tests need `git`: {GIT_INSTALL}"
        );
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("app.git");
        let work = dir.path().join("work");
        git(
            dir.path(),
            &["init", "--quiet", "--bare", "-b", "main", "app.git"],
        );
        git(dir.path(), &["clone", "--quiet", "app.git", "work"]);
        let repo = GitRepo {
            _dir: dir,
            bare,
            work,
        };
        repo.commit("app.py", content);
        repo
    }

    /// Commits `content` to `file`, pushes `main`, and returns the commit id.
    pub fn commit(&self, file: &str, content: &str) -> String {
        std::fs::write(self.work.join(file), content).unwrap();
        git(&self.work, &["add", file]);
        git(&self.work, &["commit", "--quiet", "-m", "change"]);
        git(&self.work, &["push", "--quiet", "origin", "HEAD:main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

/// Runs git with `args` in `dir` and returns its trimmed stdout; panics if it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A gzip-compressed tar archive, made with `tar`, of `files` (name, content) below the
/// directory `top`.
pub fn tar_gz(top: &str, files: &[(&str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        let path = dir.path().join(top).join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    let archive = dir.path().join("out.tar.gz");
    let out = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(dir.path())
        .arg(top)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(archive).unwrap()
}

/// The SHA-256 digest of `data` as 64 lower-case hex digits.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
