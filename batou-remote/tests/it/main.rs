//! End-to-end tests: `batou-remote` against real sshd hosts on loopback.

#![expect(clippy::disallowed_methods, reason = "tests start real processes")]

mod agent_shipping;
mod base_dir;
mod r#become;
mod building_blocks;
mod cli;
mod confinement;
mod demo_script;
mod deploy;
mod dry_run;
mod example;
mod facts;
mod faults;
mod generated_secrets;
mod harness;
mod interrupts;
mod library;
mod offline;
mod operations;
mod output;
mod pipeline;
mod process_faults;
mod prune;
mod releases;
mod rollout;
mod secrets;
mod service_verbs;
mod services;
mod snapshots;
mod templates_compat;
