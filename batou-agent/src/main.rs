//! The stock agent: what `batou-remote` ships to hosts for deployment repositories without
//! component types of their own. It has the roles a controller starts on hosts (`agent`,
//! `agent-install`, `bundle-check`, `bundle-receive`: `batou_runtime::HostRole`) and the
//! library's component types, and nothing else: no SSH, no planning (so no decryption), no
//! local command line, so that its optimised static build (`scripts/build-agent`) stays
//! small on the wire.

use clap::Parser;

/// The roles a controller starts on a host.
#[derive(Debug, Parser)]
#[command(name = "batou-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    role: batou_runtime::HostRole,
}

fn main() -> std::process::ExitCode {
    Cli::parse().role.serve(|_| {})
}
