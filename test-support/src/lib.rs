//! The harness that every crate's integration tests share (a dev-dependency only).
//!
//! - [`Project`]: a temporary deployment repository with `environments/`.
//! - [`bin`]: the path of a binary that cargo built for this workspace, wherever the target
//!   directory is (`CARGO_TARGET_DIR` is honoured, since the path is found from the running
//!   test binary's own location).
//! - [`run_binary`] and [`Outcome`]: a run's exit code and output, its JSON events, the
//!   changed components and the per-host statuses.
//! - [`snapshot`]: every entry below a directory, for byte comparisons.
//! - [`Cluster`]: real `sshd` processes on 127.0.0.2, 127.0.0.3, ... playing hosts.
//! - [`procs`]: processes found through `/proc` (children, process groups, agents, markers),
//!   signals, and waits with a deadline.
//! - [`HttpServer`]: an HTTP file server on 127.0.0.1 with byte ranges, for downloads.
//! - [`wheel`]: a tiny Python wheel for installs without network access.
//! - [`CronUser`]: a system user for one test, with a real crontab.
//! - [`Nginx`]: a real nginx on a temporary directory, the test's child.
//! - [`GitRepo`], [`tar_gz`], [`sha256_hex`]: fixtures for the library components.
//! - [`Runsvdir`]: a real runit supervisor on a temporary service directory.
//! - [`assert_output_snapshot!`]: insta snapshots of human output, with temporary paths,
//!   ports, durations, sizes and key fingerprints filtered out.
//!
//! Everything here panics on failure: it is test code.

#![expect(clippy::disallowed_methods, reason = "tests start real processes")]

mod cluster;
mod cron;
mod filters;
mod http;
mod json_events;
mod library;
mod nginx;
mod ports;
pub mod procs;
mod project;
mod python;
mod runit;
mod templates;

pub use cluster::{Cluster, Host, INSTALL};
pub use cron::{CRON_INSTALL, CronUser};
pub use filters::snapshot_filters;
pub use http::{HttpServer, Request as HttpRequest};
/// Snapshot testing, re-exported for [`assert_output_snapshot!`].
pub use insta;
pub use json_events::assert_documented_events;
pub use library::{GIT_INSTALL, GitRepo, git, sha256_hex, tar_gz};
pub use nginx::{NGINX, NGINX_INSTALL, Nginx};
pub use ports::{free_port, free_port_on};
pub use project::{Outcome, Project, run_binary, run_binary_in, snapshot};
pub use python::{PYTHON, PYTHON_INSTALL, require_venv, wheel};
pub use runit::{RUNIT_INSTALL, Runsvdir};
pub use templates::{BATOU_TEMPLATE, BATOU_TEMPLATE_JINJA2, batou_template_env};

use std::path::{Path, PathBuf};

/// The repository root of this workspace.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test-support crate sits in the workspace root")
        .to_path_buf()
}

/// The directory of the agents shipped to hosts (`batou-agent`, `batou-unpack`): built once
/// per test process with `scripts/build-agent` (a no-op when they are fresh, as after
/// `scripts/test`) into the running test's target directory.
pub fn agent_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary has a path");
        let target = exe
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .expect("test binaries run from <target>/<profile>/deps");
        let out = std::process::Command::new(workspace_root().join("scripts/build-agent"))
            .env("CARGO_TARGET_DIR", target)
            .output()
            .expect("cannot run scripts/build-agent");
        assert!(
            out.status.success(),
            "scripts/build-agent failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("x86_64-unknown-linux-gnu/agent")
    })
    .clone()
}

/// The path of the workspace binary `name` (`batou-local`, `batou-remote`,
/// `shop-deployment`), built in the same target directory and profile as the running test.
///
/// Integration tests run from `<target>/<profile>/deps/`; binaries sit in `<target>/<profile>/`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries run from <target>/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "`{}` is not built; run `cargo build --workspace` first",
        path.display()
    );
    path
}
