//! The stock `batou-remote` binary. It is also the agent that it ships to hosts for
//! deployments without component types of their own.

fn main() -> std::process::ExitCode {
    if let Some(code) = batou_local::serve_role(|_| {}) {
        return code;
    }
    batou_remote::main()
}
