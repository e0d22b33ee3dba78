//! Exit codes, shared by every batou command (documented in `docs/exit-codes.md`).

use std::process::ExitCode;

use batou_core::ConfigError;

/// How a run ended. The process's exit status is [`Exit::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything converged (or, in a dry run, was predicted).
    Success = 0,
    /// A component failed on some host.
    DeployFailed = 1,
    /// The command line was wrong (clap's own code).
    Usage = 2,
    /// The configuration is invalid; nothing was touched on any host.
    InvalidConfiguration = 3,
    /// A host's key was unknown or changed, or it refused authentication.
    HostKeyOrAuthRefused = 4,
    /// A host is being deployed by someone else.
    LockHeld = 5,
    /// A host did not answer in time or its agent died: its state is unknown.
    Timeout = 6,
    /// A host could not be reached.
    Unreachable = 7,
    /// `sudo -n` refused to run the agent as a host's `become` user (a password is required
    /// or the login user is not allowed); nothing was changed on that host.
    BecomeRefused = 8,
    /// The run was interrupted (SIGINT or SIGTERM) and stopped before it was done.
    Interrupted = 130,
    /// `--dry-run --detailed-exitcode`: the prediction completed and some host would change
    /// (exit status 2, terraform's convention, which `Usage` has too, so that its code is
    /// given by [`Exit::code`]; a wrong command line then exits 64 instead).
    ChangesPending,
}

/// The exit status of a wrong command line when `--detailed-exitcode` is given: `EX_USAGE`
/// of sysexits.h, so that 2 means pending changes and nothing else.
pub const DETAILED_USAGE: u8 = 64;

/// Ends the process for a wrong command line: clap's own message and status (2), or, when
/// the command line asks for `--detailed-exitcode`, [`DETAILED_USAGE`] (help and version
/// requests exit 0 as always).
pub fn exit_usage(err: clap::Error) -> ! {
    use clap::error::ErrorKind;
    let asked = std::env::args_os().any(|a| a == "--detailed-exitcode");
    if !asked
        || matches!(
            err.kind(),
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
        )
    {
        err.exit()
    }
    let _ = err.print();
    std::process::exit(i32::from(DETAILED_USAGE))
}

/// An error found before any host was deployed that ends the run with `exit` rather than
/// with exit 3 (for example an unreachable host whose journal a `--hosts` run must read).
#[derive(Debug)]
pub struct ExitError {
    /// The exit status the run ends with.
    pub exit: Exit,
    /// What is wrong, with its hint.
    pub error: ConfigError,
}

impl std::fmt::Display for ExitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for ExitError {}

impl Exit {
    /// The exit status for an error that ended a run early.
    pub fn of_error(err: &anyhow::Error) -> Exit {
        if let Some(e) = err.chain().find_map(|e| e.downcast_ref::<ExitError>()) {
            e.exit
        } else if err.chain().any(|e| e.is::<ConfigError>()) {
            Exit::InvalidConfiguration
        } else {
            Exit::DeployFailed
        }
    }

    /// The process's exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::ChangesPending => 2,
            other => other as u8,
        }
    }

    /// With `--dry-run --detailed-exitcode`: a completed prediction (`exit` is success) in
    /// which some host would change ends with [`Exit::ChangesPending`]; anything else ends
    /// as it is.
    pub fn detailed(self, hosts: &[batou_core::HostSummary]) -> Exit {
        let pending = hosts
            .iter()
            .any(|h| h.status == batou_core::HostStatus::Changed);
        if self == Exit::Success && pending {
            Exit::ChangesPending
        } else {
            self
        }
    }

    /// A stable name for JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Exit::Success => "success",
            Exit::DeployFailed => "deploy_failed",
            Exit::Usage => "usage",
            Exit::InvalidConfiguration => "invalid_configuration",
            Exit::HostKeyOrAuthRefused => "host_key_or_auth_refused",
            Exit::LockHeld => "lock_held",
            Exit::Timeout => "timeout",
            Exit::Unreachable => "unreachable",
            Exit::BecomeRefused => "become_refused",
            Exit::Interrupted => "interrupted",
            Exit::ChangesPending => "changes_pending",
        }
    }

    /// Which of two exit statuses a run with both ends with: the one a person must look at
    /// first (unknown state, then an interrupt, then failures, then refusals, then
    /// unreachable hosts).
    pub fn worst(self, other: Exit) -> Exit {
        fn rank(e: Exit) -> u8 {
            match e {
                Exit::Timeout => 8,
                Exit::Interrupted => 7,
                Exit::DeployFailed => 6,
                Exit::InvalidConfiguration => 5,
                Exit::HostKeyOrAuthRefused | Exit::BecomeRefused => 4,
                Exit::LockHeld => 3,
                Exit::Unreachable => 2,
                Exit::Usage => 1,
                Exit::ChangesPending => 0,
                Exit::Success => 0,
            }
        }
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}
