//! The deployment model: components, environments, resources, the plan and the converge engine.
//!
//! `batou-core` knows nothing about SSH or about any command line. It turns an environment file
//! plus a [`Registry`] of component types into a [`Plan`] (every host's configured component
//! trees, ordered by their resources), and converges the steps of one host on the machine it
//! runs on with [`converge`]. Binaries (`batou-local`, `batou-remote`) and the component library
//! (`batou-components`) build on it.
//!
//! ```no_run
//! use batou_core::{Component, Configure, Deploy, Registry, Verdict};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Hello {
//!     greeting: String,
//! }
//!
//! impl Component for Hello {
//!     fn label(&self) -> String {
//!         "Hello".into()
//!     }
//!     fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> {
//!         Ok(Verdict::UpToDate)
//!     }
//! }
//!
//! let mut registry = Registry::new();
//! registry.register::<Hello>("hello");
//! ```

pub mod bundle;
mod component;
mod configure;
mod deploy;
pub mod diff;
mod engine;
mod environment;
mod error;
mod event;
pub mod facts;
mod groups;
pub mod inventory;
pub mod journal;
pub mod operations;
pub mod output;
mod paths;
mod pending;
mod plan;
mod project;
pub mod protocol;
pub mod redact;
mod registry;
mod release;
mod resources;
pub mod rollout;
pub mod secrets;
mod service;
mod template;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod workdir;

pub use bundle::Bundle;
pub use component::{Component, Verdict};
pub use configure::{Configure, RootWatch, SubComponent};
pub use deploy::Deploy;
pub use engine::{ConvergeOptions, HostReport, RootOutcome, StepReport, converge, converge_step};
pub use environment::{
    Connect, Environment, Host, Settings, TemplateSettings, check_name, host_base_dir,
};
pub use error::{ConfigError, Place};
pub use event::{Event, EventSink, HostStatus, HostSummary};
pub use facts::{FactReads, Facts, FactsInput};
pub use groups::select_hosts;
pub use inventory::{Inventory, Owned, OwnedByOther};
pub use paths::{AllowedPaths, refuse_nul};
pub use pending::PendingWrites;
pub use plan::{Plan, Step};
pub use project::{Project, ProjectEntry, ProjectEntryKind, ProjectFiles};
pub use registry::Registry;
pub use release::{
    ReleaseControl, ReleaseEntry, ReleaseReport, RollbackOutcome, list_releases, release_steps,
    release_verb, roll_back, roll_back_after_failure,
};
pub use secrets::Secret;
pub use service::{
    ServiceControl, ServiceOutcome, ServiceResult, ServiceStatus, ServiceVerb, control_services,
    has_services, select_roots, service_paths,
};
pub use template::{TemplateSyntax, Templates};

/// Removes `.` and resolves `..` lexically, without touching the file system.
pub fn normalize_path(path: &std::path::Path) -> std::path::PathBuf {
    paths::normalize(path)
}
