//! The reusable component library: [`File`], [`Directory`], [`Symlink`] and [`Command`].
//!
//! Each type is usable from Rust (builder methods) and from an environment file
//! (`type = "file"` and the type's attributes). Every write is atomic: a temporary file in the
//! same directory, created with its final mode, written, synced and renamed into place.

mod command;
mod directory;
mod file;
mod fs;
mod mode;
pub mod process;
mod symlink;

pub use command::{Command, CommandOutput, run_command};
pub use directory::Directory;
pub use file::File;
pub use fs::write_atomic;
pub use mode::Mode;
pub use symlink::Symlink;

/// Registers the library's types under their environment names:
/// `file`, `directory`, `symlink`, `command`.
pub fn register(registry: &mut batou_core::Registry) {
    registry
        .register::<File>("file")
        .register::<Directory>("directory")
        .register::<Symlink>("symlink")
        .register::<Command>("command");
}
