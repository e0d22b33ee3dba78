//! Release bundles as a plan knows them: what a component asked the controller to build,
//! named by digest, and the same answers again on an agent.
//!
//! Building is the component's business (`batou_components::Release` runs the build and
//! writes the archive); this module only remembers each bundle once per run, keyed by the
//! component's bundle specification, records which plan steps use it so that each host's
//! job carries only its own, and serves the shipped answers on agents, which never build.
//! Where releases live on a host is fixed here ([`release_root`]) because templates of
//! other root components see those paths before any release component is configured.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

/// One built bundle: the deterministic archive of a release's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// The SHA-256 of the archive, hex: the release's identity.
    pub digest: String,
    /// The release's id on hosts: when this checkout first built the digest, and the
    /// digest's first 12 characters (`20261203T143210Z-1a2b3c4d5e6f`).
    pub id: String,
    /// The archive's size in bytes.
    pub size: u64,
    /// Where the controller keeps the archive (empty on agents that did not build it).
    #[serde(default)]
    pub archive: String,
}

impl Bundle {
    /// The stand-in of a bundle that was not built (verbs plan without building).
    pub fn unbuilt() -> Self {
        Bundle {
            digest: String::new(),
            id: String::new(),
            size: 0,
            archive: String::new(),
        }
    }

    /// Whether this is [`Bundle::unbuilt`].
    pub fn is_unbuilt(&self) -> bool {
        self.digest.is_empty()
    }

    /// The first 12 characters of the digest.
    pub fn short_digest(&self) -> &str {
        &self.digest[..12.min(self.digest.len())]
    }
}

/// Where the releases of root component `root` live: `<base_dir>/releases/<root>`, with
/// `<id>/` per unpacked release and the `current` link.
pub fn release_root(base_dir: &Path, root: &str) -> PathBuf {
    base_dir.join("releases").join(root)
}

/// The store of shipped bundles on a host: `<base_dir>/releases/.store`, one file per
/// digest, shared by every release root of the host.
pub fn store_dir(base_dir: &Path) -> PathBuf {
    base_dir.join("releases").join(".store")
}

/// What a host's store holds of a digest: the answer of the agent binary's `bundle-check`
/// role to a controller, one JSON line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StoreState {
    /// The verified bundle.
    Present,
    /// A partial upload of this many bytes, to be resumed.
    Partial {
        /// Bytes already on the host.
        bytes: u64,
    },
    /// Nothing.
    Missing,
    /// An entry whose content did not match its digest: it was removed.
    Corrupt,
}

static SKIP_BUILDS: AtomicBool = AtomicBool::new(false);

/// Makes plans of this process answer every bundle with [`Bundle::unbuilt`] instead of
/// building it: the `releases` and `rollback` verbs act on what hosts have.
pub fn skip_builds() {
    SKIP_BUILDS.store(true, Ordering::SeqCst);
}

/// Whether [`skip_builds`] was called.
pub fn builds_skipped() -> bool {
    SKIP_BUILDS.load(Ordering::SeqCst)
}

/// The bundles of one plan: built (or shipped) once per specification, and which steps
/// asked for which.
#[derive(Default)]
pub(crate) struct Bundles {
    /// On an agent: what the controller built, by specification.
    shipped: Option<BTreeMap<String, Bundle>>,
    known: Mutex<BTreeMap<String, Bundle>>,
    by_step: Mutex<BTreeMap<usize, BTreeSet<String>>>,
}

impl Bundles {
    /// The bundles a job carries, for an agent's configure.
    pub(crate) fn shipped(bundles: BTreeMap<String, Bundle>) -> Self {
        Bundles {
            shipped: Some(bundles),
            ..Bundles::default()
        }
    }

    /// The bundle of specification `key` for `step`: built by `make` the first time on a
    /// controller, the shipped one on an agent.
    pub(crate) fn get(
        &self,
        step: usize,
        key: &str,
        make: impl FnOnce() -> anyhow::Result<Bundle>,
    ) -> anyhow::Result<Bundle> {
        let bundle = match &self.shipped {
            Some(shipped) => match shipped.get(key) {
                Some(b) => b.clone(),
                None => anyhow::bail!(
                    "the job carries no bundle for this release: the controller did not build it"
                ),
            },
            None => {
                let known = self.known.lock().expect("never poisoned").get(key).cloned();
                match known {
                    Some(b) => b,
                    None => {
                        let b = if builds_skipped() {
                            Bundle::unbuilt()
                        } else {
                            make()?
                        };
                        self.known
                            .lock()
                            .expect("never poisoned")
                            .insert(key.to_string(), b.clone());
                        b
                    }
                }
            }
        };
        self.by_step
            .lock()
            .expect("never poisoned")
            .entry(step)
            .or_default()
            .insert(key.to_string());
        Ok(bundle)
    }

    /// The bundles `steps` asked for, by specification.
    pub(crate) fn used_by(&self, steps: &[usize]) -> BTreeMap<String, Bundle> {
        let by_step = self.by_step.lock().expect("never poisoned");
        let known = self.known.lock().expect("never poisoned");
        let mut out = BTreeMap::new();
        for key in steps.iter().filter_map(|s| by_step.get(s)).flatten() {
            let bundle = match &self.shipped {
                Some(shipped) => shipped.get(key),
                None => known.get(key),
            };
            if let Some(b) = bundle {
                out.insert(key.clone(), b.clone());
            }
        }
        out
    }

    /// The first bundle `step` asked for.
    pub(crate) fn of_step(&self, step: usize) -> Option<Bundle> {
        let key = self
            .by_step
            .lock()
            .expect("never poisoned")
            .get(&step)?
            .first()?
            .clone();
        match &self.shipped {
            Some(shipped) => shipped.get(&key).cloned(),
            None => self
                .known
                .lock()
                .expect("never poisoned")
                .get(&key)
                .cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(digest: &str) -> Bundle {
        Bundle {
            digest: digest.into(),
            id: format!("t-{digest}"),
            size: 1,
            archive: String::new(),
        }
    }

    #[test]
    fn a_specification_is_built_once_and_jobs_carry_only_their_steps_bundles() {
        let bundles = Bundles::default();
        let mut built = 0;
        for step in [0, 1] {
            bundles
                .get(step, "a", || {
                    built += 1;
                    Ok(bundle("aa"))
                })
                .unwrap();
        }
        bundles.get(2, "b", || Ok(bundle("bb"))).unwrap();
        assert_eq!(built, 1);
        assert_eq!(bundles.used_by(&[1]).keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(bundles.of_step(2).unwrap().digest, "bb");
        let shipped = Bundles::shipped(bundles.used_by(&[0]));
        assert_eq!(shipped.get(0, "a", || unreachable!()).unwrap().digest, "aa");
        assert!(shipped.get(0, "b", || unreachable!()).is_err());
    }
}
