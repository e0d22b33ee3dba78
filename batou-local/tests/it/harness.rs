//! The shared harness (`batou-test-support`): temporary deployment repositories and runs of
//! the built binaries.

pub(crate) use batou_test_support::{
    Outcome, Project, bin, run_binary, run_binary_in, snapshot, workspace_root,
};

/// A binary of this workspace's build that is not part of this package (`batou-remote`):
/// `scripts/test` builds the whole workspace before running the tests.
pub(crate) fn workspace_binary(name: &str) -> std::path::PathBuf {
    bin(name)
}
