//! A step of a plan: one root component on one host, and its configured tree.

use std::collections::BTreeMap;

use crate::component::Component;

/// A configured component and its configured sub-components.
pub(crate) struct Node {
    pub(crate) path: String,
    pub(crate) component: Box<dyn Component>,
    pub(crate) children: Vec<Node>,
}

/// One root component on one host.
pub struct Step {
    /// The host the step runs on.
    pub host: String,
    /// The root component's name.
    pub root: String,
    /// Steps (indices into [`Plan::steps`](crate::Plan::steps)) that must be done before this one.
    pub after: Vec<usize>,
    /// The resource keys each of those steps provides to this one, for reports (none when
    /// this step only watches that one for changes).
    pub after_keys: BTreeMap<usize, Vec<String>>,
    pub(crate) type_name: String,
    /// The rendered attributes as a host job carries them, or why they cannot be.
    pub(crate) attributes: Result<serde_json::Value, String>,
    pub(crate) tree: Node,
    /// The root component's work directory, `<base_dir>/work/<root>`.
    pub(crate) workdir: std::path::PathBuf,
}

impl Step {
    /// The root component's type name.
    pub fn type_name(&self) -> &str {
        &self.type_name
    }

    /// `host: root`, as used in plan reports.
    pub fn label(&self) -> String {
        format!("{}: {}", self.host, self.root)
    }
}
