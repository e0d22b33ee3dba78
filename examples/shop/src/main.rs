//! The shop's deployment: two component types of its own, registered next to the library's.
//!
//! `batou-local dev` in this directory builds this binary and hands over to it.

mod app;
mod database;

fn main() -> std::process::ExitCode {
    batou::main_with(|registry| {
        registry
            .register::<app::App>("app")
            .register::<database::Database>("database");
    })
}
