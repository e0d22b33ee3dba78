//! Gathering hosts' platform facts for planning: one command per host over a short-lived
//! SSH master, before any agent is shipped. Only environments whose configure reads facts
//! get here; the plan is then built again with them.

use std::collections::BTreeMap;

use anyhow::Context;
use batou_core::protocol::RemoteHost;
use batou_core::{ConfigError, Facts};
use batou_runtime::ExitError;

use crate::schedule::connect_failure;
use crate::ssh::{self, SshOptions, Word};

/// The facts of `hosts`; a host that cannot be reached or asked ends
/// the run with its connection's exit code, before anything was deployed.
pub(crate) fn gather(
    hosts: &[RemoteHost],
    settings: &crate::Settings,
) -> anyhow::Result<BTreeMap<String, Facts>> {
    let control_dir =
        ssh::control_dir().context("cannot create a directory for SSH control sockets")?;
    let options = SshOptions {
        settings: settings.ssh.clone(),
        control_dir: control_dir.path().to_path_buf(),
        masters: ssh::Masters::default(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let timeout = settings.agent_timeout;
    // All hosts at once, one short command each, only for the hosts whose facts configure
    // read; the first failure in host order is the one reported.
    let result = runtime.block_on(async {
        let asks: Vec<_> = hosts
            .iter()
            .map(|host| {
                let (host, options) = (host.clone(), options.clone());
                tokio::spawn(async move { ask(&host, &options, timeout).await })
            })
            .collect();
        let mut facts = BTreeMap::new();
        for (host, ask) in hosts.iter().zip(asks) {
            let found = ask.await.context("gathering facts stopped")??;
            facts.insert(host.name.clone(), found);
        }
        anyhow::Ok(facts)
    });
    options.masters.terminate_all();
    drop(control_dir);
    result
}

async fn ask(
    host: &RemoteHost,
    options: &SshOptions,
    timeout: std::time::Duration,
) -> anyhow::Result<Facts> {
    let name = &host.name;
    let session = ssh::connect(host, options).await.map_err(|e| ExitError {
        exit: connect_failure(&e).exit(),
        error: ConfigError::new(format!("cannot gather the facts of host `{name}`: {e}")).hint(
            "configure reads this host's facts, so planning needs the host; nothing was deployed",
        ),
    })?;
    let command = ssh::shell_command(&[
        Word::Literal("sh".into()),
        Word::Literal("-c".into()),
        Word::Literal(batou_core::facts::SCRIPT.into()),
    ]);
    let output = tokio::time::timeout(timeout, session.raw_command(&command).output()).await;
    ssh::close(session, &options.masters).await;
    match output {
        Ok(Ok(output)) if output.status.success() => {
            Ok(Facts::parse(&String::from_utf8_lossy(&output.stdout)))
        }
        Ok(Ok(output)) => Err(ConfigError::new(format!(
            "cannot gather the facts of host `{name}`: the command {}",
            output.status
        ))
        .into()),
        Ok(Err(e)) => Err(ExitError {
            exit: batou_runtime::Exit::Unreachable,
            error: ConfigError::new(format!("cannot gather the facts of host `{name}`: {e}")),
        }
        .into()),
        Err(_) => Err(ExitError {
            exit: batou_runtime::Exit::Timeout,
            error: ConfigError::new(format!(
                "host `{name}` did not send its facts within {timeout:.0?}"
            )),
        }
        .into()),
    }
}
