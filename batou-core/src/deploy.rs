//! The deploy context: what `verify` and `update` may use while converging on the host.

use std::path::{Path, PathBuf};

use std::collections::BTreeSet;

use crate::{Event, EventSink, Host, RootWatch, SubComponent};

/// Passed to [`Component::verify`](crate::Component::verify) and
/// [`Component::update`](crate::Component::update).
pub struct Deploy<'a> {
    pub(crate) host: &'a Host,
    pub(crate) workdir: &'a Path,
    pub(crate) path: &'a str,
    pub(crate) dry_run: bool,
    pub(crate) subcomponents_changed: bool,
    /// Whether each sub-component this component added changed, in the order added.
    pub(crate) added_changed: &'a [bool],
    /// The root components of this host that changed earlier in this run.
    pub(crate) changed_roots: &'a BTreeSet<String>,
    pub(crate) diff: Option<String>,
    pub(crate) sink: &'a mut dyn EventSink,
    /// The batch of written files, when the engine runs one.
    pub(crate) pending: Option<&'a mut crate::PendingWrites>,
}

impl Deploy<'_> {
    /// Whether this run only predicts changes; `update` is never called in a dry run.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Whether any sub-component changed (or, in a dry run, would change) in this run.
    ///
    /// This is how "restart the service when its configuration changed" is written. During
    /// the verify that follows `update`, the changes count as handled and this is `false`.
    pub fn subcomponents_changed(&self) -> bool {
        self.subcomponents_changed
    }

    /// Whether the sub-component `sub` (returned by [`Configure::add`](crate::Configure::add))
    /// changed (or, in a dry run, would change) in this run.
    ///
    /// Like [`Deploy::subcomponents_changed`], it is `false` during the verify that follows
    /// `update`. A handle that this component did not receive from its own `add` answers
    /// `false`.
    pub fn changed(&self, sub: SubComponent) -> bool {
        debug_assert!(
            sub.0 < self.added_changed.len() || self.added_changed.is_empty(),
            "a SubComponent handle is only meaningful to the component that added it"
        );
        self.added_changed.get(sub.0).copied().unwrap_or(false)
    }

    /// Whether the watched root component changed (or, in a dry run, would change) earlier
    /// in this run. Watched roots are deployed first ([`Configure::watch_root`](crate::Configure::watch_root)).
    ///
    /// Unlike [`Deploy::changed`], this stays `true` during the verify that follows `update`:
    /// a component that acts on it must remember in `update` that it did.
    pub fn root_changed(&self, watch: &RootWatch) -> bool {
        self.changed_roots.contains(&watch.0)
    }

    /// The host being converged: its `name`, `data` and `address`, as
    /// [`Configure::host`](crate::Configure::host) gives it.
    pub fn host(&self) -> &Host {
        self.host
    }

    /// The root component's work directory, `<base_dir>/work/<root>`, as
    /// [`Configure::workdir`](crate::Configure::workdir) gives it.
    pub fn workdir(&self) -> &Path {
        self.workdir
    }

    /// The component path, e.g. `app > File('app.toml')`.
    pub fn component_path(&self) -> &str {
        self.path
    }

    /// Replaces `path` with `temp`, a temporary file in the same directory that is fully
    /// written (content, mode, ownership) but not synced.
    ///
    /// In a converge, the engine batches these: the data becomes durable with one sync for
    /// many files, then `temp` is renamed over `path` and the directory synced, before any
    /// component that may read it runs ([`Component::reads_written_files`](crate::Component::reads_written_files))
    /// and before the step or the run reports done. Until then [`Deploy::staged`] names
    /// `temp`, so the verify after `update` checks the bytes that will be renamed. Outside a
    /// batch, `temp` is synced and renamed at once.
    pub fn stage_write(&mut self, temp: PathBuf, path: PathBuf) -> anyhow::Result<()> {
        match self.pending.as_deref_mut() {
            Some(pending) => {
                pending.stage(temp, path);
                Ok(())
            }
            None => crate::pending::replace_now(&temp, &path),
        }
    }

    /// The temporary file that holds what [`Deploy::stage_write`] staged for `path`, while
    /// it is not yet renamed into place.
    pub fn staged(&self, path: &Path) -> Option<&Path> {
        self.pending.as_deref().and_then(|p| p.temp_of(path))
    }

    /// Shows a diff for this component's change, after its `changed` line.
    pub fn show_diff(&mut self, diff: String) {
        self.diff = Some(diff);
    }

    /// Says what the component is doing, for `-vv` (a `detail` event): the command it
    /// runs, the file it reads. Hidden at the default verbosity.
    pub fn detail(&mut self, message: impl Into<String>) {
        self.sink.event(Event::Detail {
            host: self.host.name.clone(),
            component: self.path.to_string(),
            message: message.into(),
        });
    }

    /// Shows a message to people, prefixed with host and component path.
    pub fn log(&mut self, message: impl Into<String>) {
        self.sink.event(Event::Log {
            host: self.host.name.clone(),
            component: self.path.to_string(),
            message: message.into(),
        });
    }
}
