//! The converge contract: what every component type implements.

use crate::{Configure, Deploy};

/// What `verify` observed on the host.
///
/// "Needs update" is a value, not an error: the engine reports the reason and calls `update`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The host already is as the component describes it.
    UpToDate,
    /// The host differs; the string says how, for people (`content differs`, `missing`).
    NeedsUpdate(String),
}

impl Verdict {
    /// A `NeedsUpdate` verdict with the given reason.
    pub fn needs_update(reason: impl Into<String>) -> Self {
        Verdict::NeedsUpdate(reason.into())
    }
}

/// A piece of a deployment that converges idempotently.
///
/// The engine calls `configure` once (pure: no host I/O), converges the sub-components it added
/// (post-order, in the order they were added), then calls `verify`; on `NeedsUpdate` it calls
/// `update` and verifies again. A component whose second verify still needs an update is an
/// error ("did not converge").
pub trait Component: Send + 'static {
    /// How this component appears in component paths, e.g. `File('/srv/app/app.toml')`.
    ///
    /// Root components appear under their instance name instead. The default is the type's
    /// name without its module path (`Reload` for `shop::app::Reload`); a type of which a
    /// parent adds several instances should say which one it is.
    fn label(&self) -> String {
        short_type_name(std::any::type_name::<Self>())
    }

    /// Builds the sub-component tree and declares resources. Must not touch the host.
    fn configure(&mut self, _cx: &mut Configure) -> anyhow::Result<()> {
        Ok(())
    }

    /// Observes the host. The default suits components that only group sub-components.
    fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> {
        Ok(Verdict::UpToDate)
    }

    /// Changes the host so that `verify` returns `UpToDate`.
    fn update(&mut self, _cx: &mut Deploy) -> anyhow::Result<()> {
        Ok(())
    }

    /// Whether `verify` or `update` may read what components converged before it wrote.
    ///
    /// Files written by components that use [`Deploy::stage_write`](crate::Deploy::stage_write)
    /// become durable and visible in batches; before a component that answers `true` (the
    /// default) is verified, the engine makes every staged file durable and renames it into
    /// place. The library's `File`, `Symlink` and `Directory` (without `source`) read only
    /// their own path and answer `false`, so that a run of them shares one sync.
    fn reads_written_files(&self) -> bool {
        true
    }

    /// This component as a supervised service, for the `service` verbs; `None` for
    /// everything that is not one.
    fn service(&self) -> Option<&dyn crate::ServiceControl> {
        None
    }

    /// This component as a keeper of releases, for the `releases` and `rollback` verbs and
    /// the automatic rollback; `None` for everything that is not one.
    fn release(&self) -> Option<&dyn crate::ReleaseControl> {
        None
    }

    /// What this component manages on the host (files, directories, links, services), for
    /// the ownership record. Pure, like `label`: it names paths, it does not look at them.
    ///
    /// The engine looks before and after `update`: an item that was missing before and is
    /// there after is recorded as created by this component's root, and only such items are
    /// ever removed by `--prune` once the root is gone from its environment. Items that
    /// existed before (a file that was only rewritten) are never recorded. The default, no
    /// items, suits components that only group others or change nothing a prune could undo.
    fn owned(&self) -> Vec<crate::Owned> {
        Vec::new()
    }
}

/// `a::b::Name<c::D>` → `Name<D>`: every path segment of a type name without its modules.
fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    for ch in full.chars() {
        if ch.is_alphanumeric() || ch == '_' || ch == ':' {
            segment.push(ch);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or_default());
            segment.clear();
            out.push(ch);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_labels_are_short_type_names() {
        assert_eq!(short_type_name("shop::app::Reload"), "Reload");
        assert_eq!(
            short_type_name("a::Wrapper<alloc::string::String, b::C>"),
            "Wrapper<String, C>"
        );
        struct Plain;
        impl Component for Plain {}
        assert_eq!(Plain.label(), "Plain");
    }
}
