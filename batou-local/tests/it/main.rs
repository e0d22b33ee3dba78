//! Integration tests: the built `batou-local` binary on temporary deployment repositories.

mod bad_input;
mod cli;
mod components;
mod demo;
mod example;
mod failure;
mod harness;
mod interrupts;
mod secrets;
