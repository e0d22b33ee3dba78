//! The ownership record of a host's base directory as a deploy uses it, on an agent and in a
//! local run alike: the check that the base directory is this environment's (before anything
//! changes), the report of orphaned root components, `--prune`, and recording what each step
//! created.
//!
//! The record's format and the ownership rule are `batou_core::inventory`'s; removing one
//! item is `batou_components::prune`'s. Here: which items, in which order, and what is never
//! touched (a path a root component of the environment manages, a path outside `base_dir`
//! and `allow_paths`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use batou_components::prune::{Pruner, Removal};
use batou_core::inventory::{PruneAction, count_kinds};
use batou_core::{AllowedPaths, Event, EventSink, Inventory, Owned, Plan};

/// A host's ownership record during one deploy.
#[derive(Debug)]
pub struct HostInventory {
    base_dir: PathBuf,
    host: String,
    record: Inventory,
    dry_run: bool,
    /// Whether a record is on disk (a deploy that changes nothing writes nothing).
    on_disk: bool,
    /// Whether `record` has changes the record on disk lacks.
    dirty: bool,
}

/// What one orphan's prune did, for the journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrunedRoot {
    /// The orphaned root component.
    pub root: String,
    /// The items removed.
    pub removed: Vec<String>,
    /// The items kept, with the reason.
    pub kept: Vec<String>,
    /// The items whose removal failed, with the error.
    pub failed: Vec<String>,
}

/// What [`HostInventory::orphans`] found and did.
#[derive(Debug, Clone, Default)]
pub struct OrphanReport {
    /// The orphaned root components, in the order they were handled.
    pub orphans: Vec<String>,
    /// One entry per pruned orphan (none without `--prune`).
    pub pruned: Vec<PrunedRoot>,
}

impl OrphanReport {
    /// Every item whose removal failed, for the host's failure.
    pub fn failures(&self) -> Vec<String> {
        self.pruned
            .iter()
            .flat_map(|p| p.failed.iter().map(move |f| format!("{}: {f}", p.root)))
            .collect()
    }
}

impl HostInventory {
    /// Reads the record of `base_dir` for a deploy of `environment` to `host`; an error (a
    /// [`batou_core::OwnedByOther`] among its causes) when another environment owns it.
    /// Nothing is written here, and in a dry run nothing ever is.
    pub fn open(
        base_dir: &Path,
        environment: &str,
        host: &str,
        dry_run: bool,
    ) -> anyhow::Result<Self> {
        let record = Inventory::open(base_dir, environment, host)?;
        Ok(HostInventory {
            on_disk: Inventory::path(base_dir).exists(),
            base_dir: base_dir.to_path_buf(),
            host: host.to_string(),
            record,
            dry_run,
            dirty: false,
        })
    }

    /// Reports every root component the record lists and `plan` no longer has for this
    /// host (an `orphaned` event each), and with `prune` removes what they created, last
    /// deployed first and within each the last created first (`pruned` events; in a dry run
    /// only what would be removed). A path that a root of `plan` manages, or that lies
    /// outside `base_dir` and `allow_paths`, is kept. A pruned orphan leaves the record;
    /// items whose removal failed stay in it, for the next prune.
    pub fn orphans(
        &mut self,
        plan: &Plan,
        prune: bool,
        sink: &mut dyn EventSink,
    ) -> anyhow::Result<OrphanReport> {
        let steps: Vec<usize> = (0..plan.steps().len())
            .filter(|i| plan.steps()[*i].host == self.host)
            .collect();
        let current: Vec<String> = steps
            .iter()
            .map(|i| plan.steps()[*i].root.clone())
            .collect();
        let mut managed: BTreeMap<PathBuf, String> = BTreeMap::new();
        for step in &steps {
            for item in plan.owned(*step) {
                for path in item.paths() {
                    managed.insert(path.to_path_buf(), plan.steps()[*step].root.clone());
                }
            }
        }
        let mut roots = vec![batou_core::normalize_path(&self.base_dir)];
        roots.extend(
            plan.allow_paths()
                .iter()
                .map(|p| batou_core::normalize_path(Path::new(p))),
        );
        let allowed = AllowedPaths::new(roots);
        let orphans: Vec<batou_core::inventory::InventoryRoot> =
            self.record.orphans(&current).into_iter().cloned().collect();
        let mut report = OrphanReport::default();
        let mut pruner = Pruner::new(self.dry_run);
        for orphan in orphans {
            let present: Vec<Owned> = orphan
                .created
                .iter()
                .filter(|o| o.exists())
                .cloned()
                .collect();
            sink.event(Event::Orphaned {
                host: self.host.clone(),
                component: orphan.name.clone(),
                created: count_kinds(&present),
                prune,
                dry_run: self.dry_run,
            });
            report.orphans.push(orphan.name.clone());
            if !prune {
                continue;
            }
            let mut done = PrunedRoot {
                root: orphan.name.clone(),
                ..PrunedRoot::default()
            };
            let mut left = Vec::new();
            for item in orphan.created.iter().rev() {
                let (action, reason) = match keep_reason(item, &managed, &allowed) {
                    Some(reason) => (PruneAction::Kept, Some(reason)),
                    None => match pruner.remove(item) {
                        Ok(Removal::Gone) => continue,
                        Ok(Removal::Removed) => (PruneAction::Removed, None),
                        Ok(Removal::Kept(reason)) => (PruneAction::Kept, Some(reason)),
                        Err(e) => {
                            left.push(item.clone());
                            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
                            (PruneAction::Failed, Some(chain.join(": ")))
                        }
                    },
                };
                let text = item.to_string();
                let with_reason = match &reason {
                    Some(r) => format!("{text} ({r})"),
                    None => text.clone(),
                };
                match action {
                    PruneAction::Removed => done.removed.push(text.clone()),
                    PruneAction::Kept => done.kept.push(with_reason),
                    PruneAction::Failed => done.failed.push(with_reason),
                }
                sink.event(Event::Pruned {
                    host: self.host.clone(),
                    component: orphan.name.clone(),
                    item: text,
                    action,
                    reason,
                    dry_run: self.dry_run,
                });
            }
            if !self.dry_run {
                if left.is_empty() {
                    self.record.forget(&orphan.name);
                } else if let Some(r) = self.record.roots.iter_mut().find(|r| r.name == orphan.name)
                {
                    left.reverse();
                    r.created = left;
                }
            }
            report.pruned.push(done);
        }
        if prune && !report.orphans.is_empty() {
            self.save()?;
        }
        Ok(report)
    }

    /// Records that `root` converged (or failed) having created `created`. The first record
    /// is written at once, so that the base directory is this environment's from the first
    /// step on; later ones when `save` says so (the files they list are in place) or at
    /// [`HostInventory::save_changes`].
    pub fn record_step(&mut self, root: &str, created: &[Owned], save: bool) -> anyhow::Result<()> {
        self.dirty |= self.record.record(root, created);
        if self.on_disk && !(self.dirty && save) {
            return Ok(());
        }
        self.save()
    }

    /// Writes the changes that [`HostInventory::record_step`] kept back.
    pub fn save_changes(&mut self) -> anyhow::Result<()> {
        if self.dirty { self.save() } else { Ok(()) }
    }

    /// Ends the deploy: a host whose job has no root components any more (a host removed from
    /// its environment, pruned) and whose record lists none releases its base directory.
    pub fn finish(&self, steps: usize) -> anyhow::Result<()> {
        if self.dry_run || steps > 0 || !self.record.roots.is_empty() {
            return Ok(());
        }
        Inventory::remove(&self.base_dir).with_context(|| {
            format!(
                "cannot remove the ownership record `{}`",
                Inventory::path(&self.base_dir).display()
            )
        })
    }

    fn save(&mut self) -> anyhow::Result<()> {
        if self.dry_run {
            return Ok(());
        }
        self.record.write(&self.base_dir).with_context(|| {
            format!(
                "cannot write the ownership record `{}`",
                Inventory::path(&self.base_dir).display()
            )
        })?;
        self.on_disk = true;
        self.dirty = false;
        Ok(())
    }
}

/// Why `item` must stay whatever it is now: a root of the environment manages one of its
/// paths, or one lies outside the allowed paths (with symlinks in its parents resolved).
fn keep_reason(
    item: &Owned,
    managed: &BTreeMap<PathBuf, String>,
    allowed: &AllowedPaths,
) -> Option<String> {
    for path in item.paths() {
        if let Some(root) = managed.get(path) {
            return Some(format!("root component `{root}` manages it now"));
        }
        if allowed.check(path).is_err() {
            return Some("outside `base_dir` and `allow_paths`".into());
        }
    }
    None
}

/// The error text of an ownership refusal, with its hint, when `err` is one.
pub fn owner_refusal(err: &anyhow::Error) -> Option<Vec<String>> {
    let owned = err
        .chain()
        .find_map(|e| e.downcast_ref::<batou_core::OwnedByOther>())?;
    Some(vec![owned.to_string(), format!("hint: {}", owned.hint())])
}
