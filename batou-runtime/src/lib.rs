//! The runtime of every deployment binary: the stock `batou-local`, the stock `batou-remote`
//! and each project's own binary.
//!
//! - the local command: parse arguments into [`Settings`], load the environment, build the
//!   plan, converge this host's steps, render events, pick the exit code ([`stock_main`],
//!   [`main_with`]);
//! - the roles a controller starts on hosts ([`Role`]): the agent session with its host lock
//!   and journal ([`agent`]), installing an uploaded agent, printing a remote plan;
//! - the hand-over from the stock binary to a project's own ([`handover`]);
//! - the planning pipeline a controller uses ([`load_environment`], [`remote_plan`]);
//! - the scheduler of runs across hosts ([`scheduler`]), exit codes ([`Exit`]), the error
//!   printer ([`print_error`]) and the `secrets` commands ([`secrets`]);
//! - the `service` verbs' command line and summary ([`verb`]), which both commands share;
//! - the offline verbs `check` and `graph` ([`offline`], [`graph`]): the whole environment
//!   configured with no host contacted and no identity;
//! - shell completions and man pages from the clap definitions ([`completions`]), and
//!   `init`, which creates a deployment repository ([`init`]).
//!
//! Projects with their own component types call [`main_with`] from their `main`, through the
//! `batou` facade:
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     batou_runtime::main_with(|registry| {
//!         // registry.register::<MyApp>("app");
//!         let _ = registry;
//!     })
//! }
//! ```

pub mod agent;
pub mod completions;
mod exit;
pub mod facts;
pub mod graph;
pub mod handover;
pub mod init;
pub mod inventory;
mod local;
pub mod offline;
pub mod operations;
pub mod output_args;
mod planning;
mod releases;
mod report;
mod role;
pub mod rollout;
pub mod scheduler;
pub mod secrets;
pub mod verb;

use std::process::ExitCode;

use batou_core::Registry;

pub use exit::{DETAILED_USAGE, Exit, ExitError, exit_usage};
pub use local::{Settings, find_project, run};
pub use planning::{
    Loaded, Planned, generated_lines, identity_source, load_environment, remote_plan,
};
pub use report::print_error;
pub use role::{HostRole, Role, SKIP_BUILDS_ENV};

/// Runs `<program> secrets ARGS...` (the secrets commands parse their own arguments).
pub fn secrets_main(args: Vec<std::ffi::OsString>) -> ExitCode {
    let program = std::env::args_os().next().unwrap_or_else(|| "batou".into());
    let mut argv = vec![program, "secrets".into()];
    argv.extend(args);
    secrets::main(argv)
}

/// Entry point of the stock binary: hands over to the project's own binary when the project
/// is a Cargo package, otherwise runs with the library's component types.
pub fn stock_main() -> ExitCode {
    local::run_main(|_| {}, true)
}

/// Entry point for a project's own binary, with its component types added by `register`.
pub fn main_with(register: impl Fn(&mut Registry)) -> ExitCode {
    local::run_main(register, false)
}

/// The registry of a deployment binary: the library's types plus the project's.
pub fn registry(register: impl FnOnce(&mut Registry)) -> Registry {
    let mut registry = Registry::new();
    batou_components::register(&mut registry);
    register(&mut registry);
    registry
}
