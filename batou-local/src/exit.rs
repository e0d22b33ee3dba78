//! Exit codes, shared by every batou command (documented in `docs/exit-codes.md`).

use std::process::ExitCode;

use batou_core::ConfigError;

/// How a run ended.
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
}

impl Exit {
    /// The exit status for an error that ended a run early.
    pub fn of_error(err: &anyhow::Error) -> Exit {
        if err.chain().any(|e| e.is::<ConfigError>()) {
            Exit::InvalidConfiguration
        } else {
            Exit::DeployFailed
        }
    }

    /// A stable name for JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Exit::Success => "success",
            Exit::DeployFailed => "deploy_failed",
            Exit::Usage => "usage",
            Exit::InvalidConfiguration => "invalid_configuration",
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}
