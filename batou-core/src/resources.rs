//! Resources: typed values that root components provide and others require at configure time.
//!
//! Values are kept as JSON so that they can cross hosts and be compared; a requirer sees every
//! provided value of a key, ordered by the plan order of its providers.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The resource store of one plan; steps are indices into the plan's steps.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Resources {
    /// key -> (providing step, value), sorted by step, stable within a step.
    provided: BTreeMap<String, Vec<(usize, Value)>>,
    /// step -> key -> the values it saw when it required the key.
    consumed: BTreeMap<usize, BTreeMap<String, Vec<Value>>>,
    /// step -> the key whose absence stopped its last configure.
    waiting: BTreeMap<usize, String>,
    /// On an agent: the values shipped by the controller, which `require` serves instead.
    fixed: Option<BTreeMap<String, Vec<Value>>>,
    /// step -> the steps of the same host whose changes it watches (`Configure::watch_root`).
    watches: BTreeMap<usize, BTreeSet<usize>>,
}

/// Why one step is deployed after another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Edge {
    /// The later step requires this resource key from the earlier one.
    Requires(String),
    /// The later step watches the earlier one for changes (`restart_on`, `on_change`).
    Watches,
}

/// Raised by `require` when nothing provides a key yet; the plan retries the step later.
#[derive(Debug, thiserror::Error)]
#[error("resource `{key}` is not provided (yet)")]
pub(crate) struct Unsatisfied {
    pub(crate) key: String,
}

impl Resources {
    /// Forgets what `step` provided, consumed and waited for, before configuring it again.
    pub(crate) fn reset(&mut self, step: usize) {
        for values in self.provided.values_mut() {
            values.retain(|(s, _)| *s != step);
        }
        self.provided.retain(|_, v| !v.is_empty());
        self.consumed.remove(&step);
        self.waiting.remove(&step);
        self.watches.remove(&step);
    }

    /// The steps that `step` watches for changes.
    pub(crate) fn watched_by(&self, step: usize) -> Vec<usize> {
        self.watches
            .get(&step)
            .map(|w| w.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The steps that watch `step` for changes, in step order.
    pub(crate) fn watchers_of(&self, step: usize) -> Vec<usize> {
        self.watches
            .iter()
            .filter(|(_, watched)| watched.contains(&step))
            .map(|(watcher, _)| *watcher)
            .collect()
    }

    /// Records that `step` watches `watched` for changes, so that it is deployed after it.
    pub(crate) fn watch(&mut self, step: usize, watched: usize) {
        self.watches.entry(step).or_default().insert(watched);
    }

    /// A store that serves shipped values and ignores what is provided.
    pub(crate) fn fixed(values: BTreeMap<String, Vec<Value>>) -> Self {
        Resources {
            fixed: Some(values),
            ..Resources::default()
        }
    }

    /// The values of `key` that `steps` consumed, for shipping to their host.
    pub(crate) fn consumed_by(&self, steps: &[usize]) -> BTreeMap<String, Vec<Value>> {
        let mut out = BTreeMap::new();
        for step in steps {
            for (key, values) in self.consumed.get(step).into_iter().flatten() {
                out.insert(key.clone(), values.clone());
            }
        }
        out
    }

    pub(crate) fn provide(&mut self, step: usize, key: &str, value: Value) {
        if self.fixed.is_some() {
            return;
        }
        let values = self.provided.entry(key.to_string()).or_default();
        let at = values.partition_point(|(s, _)| *s <= step);
        values.insert(at, (step, value));
    }

    /// Every value of `key` with its provider, recording that `step` consumed them.
    /// Whether values are served from a job (on an agent) rather than from providers.
    pub(crate) fn is_fixed(&self) -> bool {
        self.fixed.is_some()
    }

    pub(crate) fn require(
        &mut self,
        step: usize,
        key: &str,
    ) -> Result<Vec<(usize, Value)>, Unsatisfied> {
        let values = match &self.fixed {
            Some(fixed) => fixed
                .get(key)
                .map(|v| v.iter().map(|v| (step, v.clone())).collect())
                .unwrap_or_default(),
            None => self.provided.get(key).cloned().unwrap_or_default(),
        };
        if values.is_empty() {
            self.waiting.insert(step, key.to_string());
            return Err(Unsatisfied {
                key: key.to_string(),
            });
        }
        self.consumed.entry(step).or_default().insert(
            key.to_string(),
            values.iter().map(|(_, v)| v.clone()).collect(),
        );
        Ok(values)
    }

    /// Whether what `step` consumed differs from what is provided now.
    pub(crate) fn is_stale(&self, step: usize) -> bool {
        if self.fixed.is_some() {
            return false;
        }
        let Some(consumed) = self.consumed.get(&step) else {
            return false;
        };
        consumed.iter().any(|(key, seen)| {
            let now: Vec<&Value> = self
                .provided
                .get(key)
                .map(|v| v.iter().map(|(_, v)| v).collect())
                .unwrap_or_default();
            now.len() != seen.len() || now.iter().zip(seen).any(|(a, b)| *a != b)
        })
    }

    /// The key a step waits for, if its last configure stopped at a missing resource.
    pub(crate) fn waiting_for(&self, step: usize) -> Option<&str> {
        self.waiting.get(&step).map(String::as_str)
    }

    /// Ordering edges (earlier, later, why): every consumed resource from its providers,
    /// without self-edges, and every watched root before its watcher.
    pub(crate) fn edges(&self) -> Vec<(usize, usize, Edge)> {
        let mut edges = BTreeSet::new();
        for (requirer, keys) in &self.consumed {
            for key in keys.keys() {
                for (provider, _) in self.provided.get(key).into_iter().flatten() {
                    if provider != requirer {
                        edges.insert((*provider, *requirer, Edge::Requires(key.clone())));
                    }
                }
            }
        }
        for (watcher, watched) in &self.watches {
            for w in watched {
                edges.insert((*w, *watcher, Edge::Watches));
            }
        }
        edges.into_iter().collect()
    }

    /// The keys a step required, sorted.
    pub(crate) fn consumed_keys(&self, step: usize) -> Vec<String> {
        self.consumed
            .get(&step)
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The keys a step provides, sorted.
    pub(crate) fn provided_by(&self, step: usize) -> BTreeSet<&str> {
        self.provided
            .iter()
            .filter(|(_, v)| v.iter().any(|(s, _)| *s == step))
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_ordered_by_provider_step() {
        let mut r = Resources::default();
        r.provide(3, "db", json!("c"));
        r.provide(1, "db", json!("a"));
        r.provide(1, "db", json!("b"));
        let got: Vec<Value> = r
            .require(0, "db")
            .unwrap()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(got, vec![json!("a"), json!("b"), json!("c")]);
    }

    #[test]
    fn reset_forgets_a_step_and_staleness_is_seen() {
        let mut r = Resources::default();
        r.provide(1, "db", json!(1));
        r.require(2, "db").unwrap();
        assert!(!r.is_stale(2));
        r.provide(3, "db", json!(2));
        assert!(r.is_stale(2));
        r.reset(3);
        assert!(!r.is_stale(2));
        assert_eq!(r.edges(), vec![(1, 2, Edge::Requires("db".to_string()))]);
    }

    #[test]
    fn missing_keys_are_recorded_as_waiting() {
        let mut r = Resources::default();
        assert!(r.require(0, "db").is_err());
        assert_eq!(r.waiting_for(0), Some("db"));
    }
}
