//! End-to-end tests: `batou-remote` against real sshd hosts on loopback.

mod cli;
mod deploy;
mod example;
mod faults;
mod harness;
mod interrupts;
mod secrets;
