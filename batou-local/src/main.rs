//! The stock `batou-local` binary: the library's types, handing over to a project's own binary
//! when the deployment repository is a Cargo package.

fn main() -> std::process::ExitCode {
    batou_runtime::stock_main()
}
