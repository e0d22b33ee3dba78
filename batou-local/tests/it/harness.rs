//! The shared harness (`batou-test-support`): temporary deployment repositories and runs of
//! the built binaries.

pub use batou_test_support::{Outcome, Project, bin, run_binary, snapshot, workspace_root};
