//! The shared harness (`batou-test-support`): real sshd hosts on loopback, temporary
//! deployment repositories, runs of the built binaries.

pub(crate) use batou_test_support::{Cluster, Outcome, Project, snapshot, workspace_root};
