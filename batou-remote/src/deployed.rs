//! The controller's record of the hosts each environment's deploys reached:
//! `<project>/.batou/deployed-hosts.json`, beside the release id index.
//!
//! A host removed from an environment is no longer in its file, so nothing else says how to
//! reach it. This record does (address, port, user, `become` user, base directory and allowed paths as last
//! deployed), so that the next deploy reports the host as orphaned without contacting it, and
//! `--prune` can connect to it and remove what the environment created there. It lives in
//! the project: another checkout of the project (another operator's) has its own, and does
//! not know the hosts this one deployed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use batou_core::HostStatus;
use batou_core::protocol::{HostJob, JobHost, RemoteHost, RemotePlan};
use serde::{Deserialize, Serialize};

use crate::schedule::RunReport;

/// The record's path below the project.
pub const DEPLOYED_HOSTS: &str = ".batou/deployed-hosts.json";

/// How a deploy reached a host, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedHost {
    /// The address connected to, if not the name.
    #[serde(default)]
    pub address: Option<String>,
    /// The SSH port.
    #[serde(default)]
    pub port: Option<u16>,
    /// The login user.
    #[serde(default)]
    pub user: Option<String>,
    /// The user the agent ran as (`become`), if not the login user.
    #[serde(default, rename = "become", skip_serializing_if = "Option::is_none")]
    pub become_user: Option<String>,
    /// The base directory as the environment planned it.
    pub base_dir: String,
    /// The environment's `allow_paths` then.
    #[serde(default)]
    pub allow_paths: Vec<String>,
}

/// Environment name → host name → how it was reached.
type Record = BTreeMap<String, BTreeMap<String, DeployedHost>>;

fn path(project: &Path) -> PathBuf {
    project.join(DEPLOYED_HOSTS)
}

fn read(project: &Path) -> anyhow::Result<Record> {
    let path = path(project);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("cannot read the host record `{}`", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    }
}

/// The hosts the record says deploys of `plan`'s environment reached and `plan` no longer
/// has, sorted by name.
pub fn removed_hosts(
    project: &Path,
    plan: &RemotePlan,
) -> anyhow::Result<Vec<(String, DeployedHost)>> {
    let record = read(project)?;
    Ok(record
        .get(&plan.environment)
        .into_iter()
        .flatten()
        .filter(|(name, _)| !plan.host_jobs.contains_key(*name))
        .map(|(name, host)| (name.clone(), host.clone()))
        .collect())
}

/// Adds `removed` hosts to `plan` with a job of no root components, for a prune: their
/// agents find every root of their record orphaned.
pub fn add_to_plan(plan: &mut RemotePlan, removed: &[(String, DeployedHost)]) {
    for (name, host) in removed {
        plan.hosts.push(RemoteHost {
            name: name.clone(),
            address: host.address.clone(),
            port: host.port,
            user: host.user.clone(),
            become_user: host.become_user.clone(),
        });
        plan.host_jobs.insert(
            name.clone(),
            HostJob {
                environment: plan.environment.clone(),
                host: JobHost {
                    name: name.clone(),
                    data: BTreeMap::new(),
                    address: host.address.clone(),
                },
                base_dir: host.base_dir.clone(),
                allow_paths: host.allow_paths.clone(),
                steps: Vec::new(),
                resources: BTreeMap::new(),
                files: Default::default(),
                secret_files: BTreeMap::new(),
                bundles: BTreeMap::new(),
                secrets: Vec::new(),
                templates: Default::default(),
                facts: None,
                rollout: None,
            },
        );
    }
    plan.hosts.sort_by(|a, b| a.name.cmp(&b.name));
}

/// After a deploy (not a dry run): records the hosts of `plan` that an agent session reached
/// (changed, unchanged or failed), and forgets the `removed` hosts whose prune succeeded.
pub fn update(
    project: &Path,
    plan: &RemotePlan,
    removed: &[String],
    report: &RunReport,
) -> anyhow::Result<()> {
    let mut record = read(project)?;
    let entry = record.entry(plan.environment.clone()).or_default();
    for summary in &report.hosts {
        let reached = matches!(
            summary.status,
            HostStatus::Changed | HostStatus::Unchanged | HostStatus::Failed
        );
        if removed.contains(&summary.host) {
            if matches!(summary.status, HostStatus::Changed | HostStatus::Unchanged) {
                entry.remove(&summary.host);
            }
            continue;
        }
        let (Some(host), Some(job)) = (
            plan.hosts.iter().find(|h| h.name == summary.host),
            plan.host_jobs.get(&summary.host),
        ) else {
            continue;
        };
        if reached {
            entry.insert(
                host.name.clone(),
                DeployedHost {
                    address: host.address.clone(),
                    port: host.port,
                    user: host.user.clone(),
                    become_user: host.become_user.clone(),
                    base_dir: job.base_dir.clone(),
                    allow_paths: job.allow_paths.clone(),
                },
            );
        }
    }
    if entry.is_empty() {
        record.remove(&plan.environment);
    }
    let path = path(project);
    let dir = path.parent().expect("the record has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let text = serde_json::to_string_pretty(&record).expect("the record serializes") + "\n";
    // Runs from one checkout may end at the same time: each writes its own temporary file.
    let tmp = dir.join(format!(".deployed-hosts.json.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().with_context(|| format!("cannot write the host record `{}`", path.display()))
}
