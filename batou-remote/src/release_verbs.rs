//! The `releases` and `rollback` verbs over SSH: `batou-remote <ENVIRONMENT> releases
//! [COMPONENT]...` lists each host's releases, `batou-remote <ENVIRONMENT> rollback
//! [COMPONENT]... [--to <ID>]` switches them back in one step (no build, no upload: the plan
//! is made with builds skipped), restarts the services that watch them and checks their
//! health. One agent session per host through `fleet::each_host`, up to `jobs` at once; `rollback` takes the host's
//! lock, `releases` only reads.

use std::collections::BTreeSet;
use std::time::Instant;

use batou_core::protocol::{Purpose, RemotePlan};
use batou_core::{ConfigError, EventSink};
use batou_runtime::verb::{ReleaseCommand, release_summary};

use crate::fleet::{self, Fleet, Line};
use crate::schedule::RunReport;

/// The hosts (in `--hosts`, sorted) that run a release root the verb acts on. Named roots
/// must be release roots of the environment; hosts without any are not contacted.
pub fn targets(
    plan: &RemotePlan,
    hosts: Option<&BTreeSet<String>>,
    command: &ReleaseCommand,
) -> Result<Vec<String>, ConfigError> {
    let in_scope = |host: &str| hosts.is_none_or(|h| h.contains(host));
    // A host's job carries a bundle for each release root it runs (unbuilt for verbs): the
    // roots with one are release roots.
    let mut roots: Vec<(String, bool)> = Vec::new();
    let mut chosen = Vec::new();
    for (host, job) in &plan.host_jobs {
        if !in_scope(host) {
            continue;
        }
        let has_release = !job.bundles.is_empty();
        for step in &job.steps {
            let release = has_release && is_release(&step.type_name);
            match roots.iter_mut().find(|(r, _)| *r == step.root) {
                Some((_, r)) => *r |= release,
                None => roots.push((step.root.clone(), release)),
            }
            if release
                && (command.roots.is_empty() || command.roots.contains(&step.root))
                && !chosen.contains(host)
            {
                chosen.push(host.clone());
            }
        }
    }
    batou_runtime::verb::check_release_roots(&plan.environment, &roots, &command.roots)?;
    Ok(chosen)
}

/// Root components of the library's `release` type; a project's own type that adds a
/// release as a sub-component is found by the agent, which lists what it has.
fn is_release(type_name: &str) -> bool {
    type_name == "release"
}

/// Runs the verb on `targets`, reporting events to `sink` and one summary line per host.
pub async fn control(
    fleet: &Fleet<'_>,
    targets: &[String],
    command: &ReleaseCommand,
    sink: &mut dyn EventSink,
) -> RunReport {
    let started = Instant::now();
    let purpose = Purpose::Releases {
        rollback: command.rollback,
    };
    let (roots, to) = (command.roots.clone(), command.to.clone());
    let answers = fleet::each_host(
        fleet,
        targets,
        purpose,
        move |_, mut session, emit| {
            let (roots, to) = (roots.clone(), to.clone());
            async move {
                let reports = session.releases(&roots, to, move |e| emit.event(e)).await?;
                Ok((session, reports))
            }
        },
        sink,
    )
    .await;
    let lines = fleet::lines(&answers, |host, reports| {
        let (status, detail) = release_summary(reports);
        Line::answered(host, status, detail)
    });
    fleet::finish(lines, started, sink)
}
