//! Temporary deployment repositories and runs of the built binaries.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary deployment repository, removed when dropped.
pub struct Project {
    dir: tempfile::TempDir,
}

/// What a run printed and how it exited.
#[derive(Debug)]
pub struct Outcome {
    /// The exit code.
    pub code: i32,
    /// What the run printed to stdout.
    pub stdout: String,
    /// What the run printed to stderr.
    pub stderr: String,
}

impl Project {
    /// An empty repository with `environments/`. Its directory name has no `batou` in it, so
    /// that tests looking for what a run left in `/tmp` are not confused by repositories.
    #[expect(
        clippy::new_without_default,
        reason = "a new project creates a directory"
    )]
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("btp").tempdir().unwrap();
        std::fs::create_dir(dir.path().join("environments")).unwrap();
        Project { dir }
    }

    /// Writes `environments/<name>.toml`.
    pub fn env(&self, name: &str, text: &str) -> &Self {
        self.file(&format!("environments/{name}.toml"), text)
    }

    /// Writes a project file, creating its directories.
    pub fn file(&self, relative: &str, text: &str) -> &Self {
        self.file_bytes(relative, text.as_bytes())
    }

    /// Writes a project file of any bytes, creating its directories.
    pub fn file_bytes(&self, relative: &str, data: &[u8]) -> &Self {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
        self
    }

    /// The absolute path of a project file.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The repository's root directory.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the stock `batou-local` in the project with `args`.
    pub fn run(&self, args: &[&str]) -> Outcome {
        run_binary(crate::bin("batou-local"), self.root(), args)
    }

    /// Runs `batou-local` and asserts success.
    pub fn converge(&self, args: &[&str]) -> Outcome {
        let out = self.run(args);
        assert_eq!(out.code, 0, "run failed:\n{}", out.stderr);
        out
    }

    /// Converges and asserts that a second run changes nothing.
    pub fn converge_twice(&self, args: &[&str]) -> Outcome {
        let first = self.converge(args);
        self.assert_idempotent(args);
        first
    }

    /// Asserts that a `batou-local` run with `args` reports zero changes.
    pub fn assert_idempotent(&self, args: &[&str]) {
        let mut json_args = args.to_vec();
        if !json_args.contains(&"--json") {
            json_args.push("--json");
        }
        let again = self.converge(&json_args);
        let changed = again.changed();
        assert!(changed.is_empty(), "second run changed: {changed:#?}");
    }
}

/// Runs a batou binary with `args` in `cwd`, with backtraces off and no inherited hand-over.
pub fn run_binary(binary: impl AsRef<Path>, cwd: &Path, args: &[&str]) -> Outcome {
    let out = Command::new(binary.as_ref())
        .args(args)
        .current_dir(cwd)
        .env("RUST_BACKTRACE", "0")
        .env_remove("BATOU_PROJECT_BINARY")
        .output()
        .unwrap();
    Outcome::from(out)
}

/// Runs `binary` with `args` in `cwd` with `HOME` set to `home` and no identity from the
/// environment; panics when it runs longer than `deadline` (after killing it).
pub fn run_binary_in(
    binary: &Path,
    cwd: &Path,
    home: &Path,
    args: &[&std::ffi::OsStr],
    deadline: std::time::Duration,
) -> Outcome {
    use std::io::Read;
    let mut child = Command::new(binary)
        .args(args)
        .current_dir(cwd)
        .env("HOME", home)
        .env("RUST_BACKTRACE", "0")
        .env_remove("BATOU_PROJECT_BINARY")
        .env_remove("BATOU_IDENTITY")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            pipe.read_to_end(&mut out).unwrap();
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    let stdout = reader(Box::new(child.stdout.take().unwrap()));
    let stderr = reader(Box::new(child.stderr.take().unwrap()));
    let end = std::time::Instant::now() + deadline;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > end {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("`{}` ran longer than {deadline:?}", binary.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Outcome {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

impl From<std::process::Output> for Outcome {
    fn from(out: std::process::Output) -> Self {
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }
}

impl Outcome {
    /// The JSON events on stdout, after the schema line (which must come first, once), each
    /// checked to carry its timestamp `ts`.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let mut lines: Vec<serde_json::Value> = self
            .stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if lines.is_empty() {
            return lines;
        }
        let schema = lines.remove(0);
        assert_eq!(schema["event"], "schema", "the first line: {}", self.stdout);
        assert_eq!(schema["version"], 1, "{}", self.stdout);
        assert!(schema["ts"].is_string(), "no `ts`: {schema}");
        for line in &lines {
            assert!(line["ts"].is_string(), "no `ts`: {line}");
            assert_ne!(line["event"], "schema", "a second schema line: {line}");
        }
        lines
    }

    /// How many events of kind `event` the run printed.
    pub fn count(&self, event: &str) -> usize {
        self.events().iter().filter(|e| e["event"] == event).count()
    }

    /// Component paths of `changed` events, in order.
    pub fn changed(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == "changed")
            .map(|e| e["component"].as_str().unwrap().to_string())
            .collect()
    }

    /// The run's per-host statuses, from its `run_finished` event.
    pub fn statuses(&self) -> BTreeMap<String, String> {
        let events = self.events();
        let run = events
            .iter()
            .find(|e| e["event"] == "run_finished")
            .expect("run_finished event");
        run["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["host"].as_str().unwrap().to_string(),
                    h["status"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// Every entry below `dir`: kind, mode and content (or link target), for byte comparisons.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return out;
    }
    for entry in walk(dir) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        let rel = entry.strip_prefix(dir).unwrap().to_path_buf();
        let mode = meta.permissions().mode() & 0o7777;
        let desc = if meta.file_type().is_symlink() {
            format!("link -> {}", std::fs::read_link(&entry).unwrap().display())
        } else if meta.is_dir() {
            format!("dir {mode:o}")
        } else {
            format!("file {mode:o} {:?}", std::fs::read(&entry).unwrap())
        };
        out.insert(rel, desc);
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        out.push(path.clone());
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            out.extend(walk(&path));
        }
    }
    out
}
