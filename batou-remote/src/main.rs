//! The stock `batou-remote` binary. It is also the agent that it ships to hosts for
//! deployments without component types of their own (the hidden `agent` command).

fn main() -> std::process::ExitCode {
    batou_remote::main()
}
