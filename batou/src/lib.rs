//! The one dependency of a deployment project.
//!
//! A deployment repository with component types of its own depends on `batou` alone: this
//! crate re-exports the component model ([`Component`], [`Configure`], [`Deploy`],
//! [`Verdict`], [`Secret`]), the library components ([`File`], [`Directory`], [`Symlink`],
//! [`Command`], [`Service`], [`Release`]), the command runner [`cmd`] and the entry point [`main_with`];
//! with the feature `testing`, also `testing` (converging in process, for a project's tests). It adds
//! nothing of its own, so that the crates behind it can be re-cut without touching any
//! project.
//!
//! ```no_run
//! use batou::{Component, Configure, Deploy, File, Verdict};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Motd {
//!     text: String,
//! }
//!
//! impl Component for Motd {
//!     fn label(&self) -> String {
//!         "Motd".into()
//!     }
//!     fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
//!         cx.add(File::new("motd").content(self.text.clone()));
//!         Ok(())
//!     }
//!     fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> {
//!         Ok(Verdict::UpToDate)
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     batou::main_with(|registry| {
//!         registry.register::<Motd>("motd");
//!     })
//! }
//! ```

/// Unified diffs, for components that report file-like changes.
pub use batou_core::diff;
/// The process-wide list of secret values and the masking every output applies.
pub use batou_core::redact;
pub use batou_core::{
    Component, ConfigError, Configure, Deploy, Event, EventSink, Facts, Host, Place, Project,
    Registry, Secret, SubComponent, Templates, Verdict,
};
/// Loading, planning and converging in process, for a project's own tests.
pub use batou_core::{ConvergeOptions, Environment, HostReport, Plan, converge};

pub use batou_components::{
    Archive, ArchiveFormat, Cmd, Command, CommandOutput, CommandStatus, Cron, CronEntry,
    DataFormat, Directory, Download, File, Git, Health, Manager, Mode, NginxSite, Presence, Purge,
    Release, Service, ServiceState, Symlink, Virtualenv, cmd, run_command, write_atomic,
};

/// Converging an environment in process and asserting on its events, for tests of a
/// project's component types (feature `testing`, for `[dev-dependencies]`).
///
/// ```
/// use batou::testing::TestProject;
/// use batou::{Component, Configure, File};
///
/// #[derive(serde::Deserialize)]
/// struct Motd {
///     text: String,
/// }
///
/// impl Component for Motd {
///     fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
///         cx.add(File::new("motd").content(self.text.clone()));
///         Ok(())
///     }
/// }
///
/// let project = TestProject::new(batou::registry(|r| {
///     r.register::<Motd>("motd");
/// }));
/// project.env(
///     "dev",
///     "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntext = \"hello\\n\"\n",
/// );
/// let run = project.converge("dev");
/// run.assert_changed(&["motd > Workdir", "motd > File('motd')"]);
/// assert_eq!(run.diffs()[0].1, "--- motd\n+++ motd\n@@ -0,0 +1 @@\n+hello\n");
/// project.converge("dev").assert_unchanged();
/// ```
#[cfg(feature = "testing")]
pub use batou_core::testing;

/// The deployment binary's entry point and registry.
pub use batou_runtime::{main_with, registry};
