//! Gathering this machine's platform facts, for `batou-local` and for an agent checking the
//! facts its job was planned with (the controller gathers remote hosts' over SSH).

use batou_core::Facts;

/// The facts of this machine: [`batou_core::facts::SCRIPT`] run through `sh`, as a
/// controller runs it on a remote host, so that both read the same way.
pub fn this_machine() -> anyhow::Result<Facts> {
    let out = batou_components::cmd(["sh", "-c", batou_core::facts::SCRIPT])
        .timeout(std::time::Duration::from_secs(10))
        .check()?;
    Ok(Facts::parse(&out.stdout))
}
