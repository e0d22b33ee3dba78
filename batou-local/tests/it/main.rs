//! Integration tests: the built `batou-local` binary on temporary deployment repositories.

#![expect(clippy::disallowed_methods, reason = "tests start real processes")]

mod bad_input;
mod building_blocks;
mod cli;
mod commands;
mod components;
mod confinement;
mod demo;
mod dry_run;
mod durability;
mod example;
mod facts;
mod failure;
mod generated_secrets;
mod harness;
mod interrupts;
mod library;
mod offline;
mod operations;
mod output;
mod prune;
mod releases;
mod secrets;
mod service_verbs;
mod services;
mod snapshots;
mod templates_compat;
mod tooling;
