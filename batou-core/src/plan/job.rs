//! The controller/agent boundary: a host's job out of a plan, and a plan again out of a job.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::environment::Host;
use crate::error::{ConfigError, Place};
use crate::plan::Plan;
use crate::plan::attributes::Attributes;
use crate::plan::rounds::{Context, Slot, configure_slots};
use crate::plan::step::Step;
use crate::project::Project;
use crate::protocol::{HostJob, JobHost, JobStep, PlanStep, RemoteHost, RemotePlan};
use crate::registry::Registry;
use crate::resources::Resources;
use crate::secrets::SecretFiles;

impl Plan {
    /// The part of the plan that `host` needs: its steps in plan order, their rendered
    /// attributes, the resource values they require and the project files the plan read.
    pub fn host_job(&self, host: &str) -> Result<HostJob, ConfigError> {
        self.host_job_of(host, self.host_order(host))
    }

    /// The job of `host`, whose steps in plan order are `steps`.
    fn host_job_of(&self, host: &str, steps: Vec<usize>) -> Result<HostJob, ConfigError> {
        let Some(h) = self.hosts.get(host) else {
            return Err(ConfigError::new(format!("unknown host `{host}`")));
        };
        let mut job_steps = Vec::with_capacity(steps.len());
        for i in &steps {
            let step = &self.steps[*i];
            let attributes = step.attributes.clone().map_err(|e| {
                ConfigError::new(format!(
                    "cannot ship the attributes of `{}`: {e}",
                    step.label()
                ))
            })?;
            job_steps.push(JobStep {
                root: step.root.clone(),
                type_name: step.type_name.clone(),
                attributes,
                components: self.component_paths(*i),
                services: crate::service_paths(self, *i),
            });
        }
        let mut job = HostJob {
            environment: self.environment.clone(),
            host: JobHost {
                name: h.name.clone(),
                data: h.data.clone(),
                address: h.address.clone(),
            },
            base_dir: self.base_dir.clone(),
            allow_paths: self.allow_paths.clone(),
            steps: job_steps,
            resources: self.resources.consumed_by(&steps),
            files: self.project.read_by(&steps),
            secret_files: self.secret_files.used_by(&steps),
            bundles: self.bundles.used_by(&steps),
            secrets: Vec::new(),
            templates: self.syntax.clone(),
            facts: self.facts.get(host).cloned(),
            rollout: self
                .job_rollout
                .clone()
                .filter(|r| steps.iter().any(|i| self.steps[*i].root == r.balancer)),
        };
        // The agent masks every secret its job carries, wherever it came from (attributes,
        // host data, resources, files): those whose value occurs in the job.
        if self.secret_values.is_empty() {
            return Ok(job);
        }
        let shipped = serde_json::to_string(&job).expect("jobs always serialize");
        for (name, value) in &self.secret_values {
            let escaped = serde_json::to_string(value).expect("strings serialize");
            if shipped.contains(&escaped[1..escaped.len() - 1])
                && !job.secrets.iter().any(|(_, v)| v == value)
            {
                job.secrets.push((name.clone(), value.clone()));
            }
        }
        Ok(job)
    }

    /// The plan's graph: every step's host, root component and the steps it waits for, in
    /// environment order (the shape a scheduler needs).
    pub fn plan_steps(&self) -> Vec<PlanStep> {
        self.steps
            .iter()
            .map(|s| PlanStep {
                host: s.host.clone(),
                root: s.root.clone(),
                after: s.after.clone(),
                after_keys: s.after_keys.clone(),
            })
            .collect()
    }

    /// The plan as a controller needs it to deploy over SSH.
    pub fn export(&self, jobs: usize) -> Result<RemotePlan, ConfigError> {
        let mut host_jobs = BTreeMap::new();
        let mut hosts = Vec::new();
        // Every host's steps in plan order, in one pass over the order.
        let mut orders: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &i in &self.order {
            orders
                .entry(self.steps[i].host.as_str())
                .or_default()
                .push(i);
        }
        for (name, host) in &self.hosts {
            if host.components.is_empty() {
                continue;
            }
            let steps = orders.remove(name.as_str()).unwrap_or_default();
            host_jobs.insert(name.clone(), self.host_job_of(name, steps)?);
            hosts.push(RemoteHost {
                name: name.clone(),
                address: host.address.clone(),
                port: host.port,
                user: host.user.clone(),
                become_user: host.become_user.clone(),
            });
        }
        Ok(RemotePlan {
            environment: self.environment.clone(),
            jobs,
            hosts,
            steps: self.plan_steps(),
            order: self.order.clone(),
            host_jobs,
            secrets: self.secret_values.clone(),
            generated: Vec::new(),
            fact_hosts: self.fact_hosts(),
            rollout: self.rollout.clone(),
        })
    }

    /// Configures a host's job as an agent does, with `base_dir` resolved on the host, and
    /// checks that every root component configures to the component paths the controller saw.
    pub fn from_job(
        job: &HostJob,
        registry: &Registry,
        base_dir: &Path,
    ) -> Result<Plan, ConfigError> {
        Self::from_job_in_rotation(job, registry, base_dir, None)
    }

    /// Like [`Plan::from_job`], with only `in_rotation` of the rolled hosts in rotation for
    /// the balancer's templates (`None`: all of them): how a balancer host configures its
    /// job for a rollout's drain and undrain.
    pub fn from_job_in_rotation(
        job: &HostJob,
        registry: &Registry,
        base_dir: &Path,
        in_rotation: Option<&[String]>,
    ) -> Result<Plan, ConfigError> {
        let project = Project::shipped(job.files.clone());
        // The agent checked its own facts against these before configuring.
        let facts = crate::FactsInput {
            facts: job
                .facts
                .iter()
                .map(|f| (job.host.name.clone(), f.clone()))
                .collect(),
            reads: Default::default(),
        };
        let secret_files = Arc::new(SecretFiles::new(job.secret_files.clone(), None));
        let bundles = Arc::new(crate::bundle::Bundles::shipped(job.bundles.clone()));
        // The controller rendered attributes with a relative base directory planned as
        // `~/...`; this host knows where that is.
        let home = HomeExpansion::new(&job.base_dir, base_dir);
        let job_steps: Vec<JobStep> = job
            .steps
            .iter()
            .map(|s| JobStep {
                root: s.root.clone(),
                type_name: s.type_name.clone(),
                attributes: home.value(&s.attributes),
                components: s.components.iter().map(|c| home.text(c)).collect(),
                services: s.services.iter().map(|c| home.text(c)).collect(),
            })
            .collect();
        let host = Host {
            name: job.host.name.clone(),
            components: job.steps.iter().map(|s| s.root.clone()).collect(),
            data: job.host.data.clone(),
            address: job.host.address.clone(),
            port: None,
            user: None,
            become_user: None,
        };
        let slots: Vec<Slot> = job_steps
            .iter()
            .map(|s| Slot {
                host: &host,
                root: s.root.clone(),
                type_name: s.type_name.clone(),
                attributes: Attributes::shipped(s.attributes.clone()),
            })
            .collect();
        let built = configure_slots(
            &slots,
            &Context {
                rollout: job.rollout.as_ref().map(|r| (r, in_rotation)),
                environment: &job.environment,
                base_dir,
                allow_paths: &job.allow_paths,
                project: &project,
                registry,
                secret_files: &secret_files,
                bundles: &bundles,
                syntax: &job.templates,
                facts: &facts,
                errors: &super::Errors::first(),
            },
            Resources::fixed(job.resources.clone()),
        )?;
        let steps: Vec<Step> = slots
            .into_iter()
            .zip(built.trees)
            .map(|(slot, tree)| Step {
                host: host.name.clone(),
                workdir: base_dir.join("work").join(&slot.root),
                root: slot.root,
                after: Vec::new(),
                after_keys: BTreeMap::new(),
                type_name: slot.type_name,
                attributes: slot.attributes.to_json(),
                tree,
            })
            .collect();
        let plan = Plan {
            environment: job.environment.clone(),
            order: (0..steps.len()).collect(),
            steps,
            hosts: BTreeMap::from([(host.name.clone(), host.clone())]),
            base_dir: job.base_dir.clone(),
            allow_paths: job.allow_paths.clone(),
            resources: built.resources,
            project,
            secret_files,
            bundles,
            secret_values: Vec::new(),
            changed: Default::default(),
            changed_roots: Default::default(),
            syntax: job.templates.clone(),
            fact_reads: facts.reads.hosts(),
            writes: Default::default(),
            facts: facts.facts,
            rollout: None,
            job_rollout: job.rollout.clone(),
        };
        for (i, expected) in job_steps.iter().enumerate() {
            let configured = plan.component_paths(i);
            if configured != expected.components {
                return Err(ConfigError::new(format!(
                    "the agent configured `{}` differently from the controller: expected {:?}, got {:?}",
                    expected.root, expected.components, configured
                ))
                .at(Place::Component {
                    host: host.name.clone(),
                    path: expected.root.clone(),
                })
                .hint("controller and agent must run the same deployment code; configure must not read the host"));
            }
        }
        Ok(plan)
    }
}

/// Replaces the planned `~/...` base directory in rendered attribute strings with the real
/// one, where it stands as a path: at the start of the string or after whitespace, `=`, `:`,
/// `,`, a quote or `(`, and followed by `/`, the end, or one of those.
struct HomeExpansion {
    planned: Option<(String, String)>,
}

impl HomeExpansion {
    fn new(job_base_dir: &str, real: &Path) -> Self {
        let planned = crate::environment::planned_base_dir(job_base_dir);
        let planned = planned.to_string_lossy();
        let real = real.to_string_lossy();
        HomeExpansion {
            planned: (planned.starts_with('~') && planned != real)
                .then(|| (planned.into_owned(), real.into_owned())),
        }
    }

    fn text(&self, s: &str) -> String {
        let Some((planned, real)) = &self.planned else {
            return s.to_string();
        };
        let before = |c: char| c.is_whitespace() || "=:,'\"(".contains(c);
        let after = |c: char| c == '/' || before(c) || ")".contains(c);
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        let mut prev: Option<char> = None;
        while let Some(at) = rest.find(planned.as_str()) {
            let head = &rest[..at];
            let p = head.chars().next_back().or(prev);
            let tail = &rest[at + planned.len()..];
            out.push_str(head);
            if p.is_none_or(before) && tail.chars().next().is_none_or(after) {
                out.push_str(real);
            } else {
                out.push_str(planned);
            }
            prev = planned.chars().next_back();
            rest = tail;
        }
        out.push_str(rest);
        out
    }

    fn value(&self, v: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        if self.planned.is_none() {
            return v.clone();
        }
        match v {
            Value::String(s) => Value::String(self.text(s)),
            Value::Array(items) => Value::Array(items.iter().map(|i| self.value(i)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.value(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}
