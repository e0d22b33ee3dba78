//! Converging in process, for tests of component types (feature `testing`).
//!
//! A [`TestProject`] is a temporary deployment repository with its own base directory:
//! write environment files and project files into it, converge an environment in this
//! process with the registry under test, assert on the events, and converge again to prove
//! that nothing changes. No binary, no agent, no SSH: the same engine `batou-local` runs.
//!
//! ```
//! use batou_core::testing::TestProject;
//! # use batou_core::{Component, Deploy, Registry, Verdict};
//! # #[derive(serde::Deserialize)]
//! # struct Nothing {}
//! # impl Component for Nothing {
//! #     fn label(&self) -> String { "Nothing".into() }
//! #     fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> { Ok(Verdict::UpToDate) }
//! # }
//! let mut registry = Registry::new();
//! registry.register::<Nothing>("nothing");
//! let project = TestProject::new(registry);
//! project.env("dev", "[hosts.localhost]\ncomponents = [\"nothing\"]\n");
//! project
//!     .converge("dev")
//!     .assert_changed(&["nothing > Workdir"]);
//! project.converge("dev").assert_unchanged();
//! ```
//!
//! Every method panics on failure, with the events of the run in the message: it is meant
//! for tests only.

use std::path::{Path, PathBuf};

use crate::{
    ConfigError, ConvergeOptions, Environment, Event, HostReport, Plan, Project, Registry,
};

/// A temporary deployment repository and base directory, removed when dropped.
pub struct TestProject {
    dir: tempfile::TempDir,
    registry: Registry,
    facts: std::collections::BTreeMap<String, crate::Facts>,
}

/// What one in-process converge reported.
#[derive(Debug)]
pub struct Run {
    /// Every event, in order.
    pub events: Vec<Event>,
    /// The host's report.
    pub report: HostReport,
}

impl TestProject {
    /// An empty repository (with `environments/`) whose components come from `registry`.
    pub fn new(registry: Registry) -> TestProject {
        let dir = tempfile::Builder::new()
            .prefix("btt")
            .tempdir()
            .expect("a temporary directory can be created");
        std::fs::create_dir_all(dir.path().join("project/environments"))
            .expect("the project directory can be created");
        TestProject {
            dir,
            registry,
            facts: Default::default(),
        }
    }

    /// Plans as if `host` had been found to have `facts` (hosts without are unknown), for
    /// tests of components that choose a variant by [`Configure::facts`](crate::Configure::facts).
    pub fn facts(&mut self, host: &str, facts: crate::Facts) -> &mut Self {
        self.facts.insert(host.to_string(), facts);
        self
    }

    /// Writes `environments/<name>.toml`.
    pub fn env(&self, name: &str, text: &str) -> &Self {
        self.file(&format!("environments/{name}.toml"), text)
    }

    /// Writes a project file, creating its directories.
    pub fn file(&self, relative: &str, text: impl AsRef<[u8]>) -> &Self {
        let path = self.root().join(relative);
        std::fs::create_dir_all(path.parent().expect("project files have a parent"))
            .expect("project directories can be created");
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write `{}`: {e}", path.display()));
        self
    }

    /// The repository's root.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("project")
    }

    /// The base directory the environment converges into (outside the repository).
    pub fn base_dir(&self) -> PathBuf {
        self.dir.path().join("base")
    }

    /// A root component's work directory: `<base_dir>/work/<root>`.
    pub fn workdir(&self, root: &str) -> PathBuf {
        self.base_dir().join("work").join(root)
    }

    /// Converges the only host of environment `name`; panics unless it succeeds.
    pub fn converge(&self, name: &str) -> Run {
        let run = self.run(name, ConvergeOptions::default());
        run.assert_succeeded();
        run
    }

    /// Predicts what converging environment `name` would change; panics unless it succeeds.
    pub fn dry_run(&self, name: &str) -> Run {
        let run = self.run(
            name,
            ConvergeOptions {
                dry_run: true,
                ..Default::default()
            },
        );
        run.assert_succeeded();
        run
    }

    /// Converges, then converges again and asserts that the second run changed nothing;
    /// returns the first run.
    pub fn converge_twice(&self, name: &str) -> Run {
        let first = self.converge(name);
        self.converge(name).assert_unchanged();
        first
    }

    /// Checks the promise of a dry run against the real run: predicts environment `name`,
    /// asserts that the prediction wrote nothing (the project and the base directory are
    /// byte for byte as before), converges for real, asserts that exactly the predicted
    /// component paths changed, in the same order, then converges again and asserts that
    /// nothing changed. Returns the real run.
    ///
    /// Call it once per scenario, after arranging the host's state (drift, removals):
    ///
    /// ```
    /// # use batou_core::testing::TestProject;
    /// # use batou_core::{Component, Deploy, Registry, Verdict};
    /// # #[derive(serde::Deserialize)]
    /// # struct Nothing {}
    /// # impl Component for Nothing {
    /// #     fn label(&self) -> String { "Nothing".into() }
    /// #     fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> { Ok(Verdict::UpToDate) }
    /// # }
    /// # let mut registry = Registry::new();
    /// # registry.register::<Nothing>("nothing");
    /// let project = TestProject::new(registry);
    /// project.env("dev", "[hosts.localhost]\ncomponents = [\"nothing\"]\n");
    /// project
    ///     .assert_prediction_matches("dev")
    ///     .assert_changed(&["nothing > Workdir"]);
    /// ```
    pub fn assert_prediction_matches(&self, name: &str) -> Run {
        let before = tree(self.path());
        let dry = self.dry_run(name);
        let after = tree(self.path());
        if before != after {
            let changed: Vec<&String> = before
                .iter()
                .filter(|(path, entry)| after.get(*path) != Some(entry))
                .map(|(path, _)| path)
                .chain(after.keys().filter(|path| !before.contains_key(*path)))
                .collect();
            panic!(
                "the dry run of `{name}` changed {changed:?}\nevents: {:#?}",
                dry.events
            );
        }
        let real = self.converge(name);
        assert_eq!(
            dry.changed(),
            real.changed(),
            "the dry run of `{name}` predicted other changes (left) than the run made (right)\n\
             prediction: {:#?}\nrun: {:#?}",
            dry.events,
            real.events
        );
        self.converge(name).assert_unchanged();
        real
    }

    /// Converges environment `name` with `options` and returns the run, whether or not a
    /// component failed; panics on a configuration error (see [`TestProject::configure`]).
    pub fn run(&self, name: &str, options: ConvergeOptions) -> Run {
        let mut plan = self
            .configure(name)
            .unwrap_or_else(|e| panic!("environment `{name}` is invalid: {e}"));
        let host = only_host(&plan, name);
        let mut events = Vec::new();
        let report = crate::converge(&mut plan, &host, options, &mut |e: Event| events.push(e));
        Run { events, report }
    }

    /// Loads and configures environment `name`: the plan, or the configuration error.
    pub fn configure(&self, name: &str) -> Result<Plan, ConfigError> {
        let root = self.root();
        let environment = Environment::load(&root, name, &self.registry)?;
        Plan::build_with_facts(
            &environment,
            &self.registry,
            &Project::new(&root),
            &self.base_dir(),
            &crate::FactsInput {
                facts: self.facts.clone(),
                ..Default::default()
            },
        )
    }

    /// The temporary directory holding the project and the base directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Run {
    /// Component paths that changed (or would change), in order.
    pub fn changed(&self) -> Vec<String> {
        self.report.changed_components.clone()
    }

    /// Panics unless every root component converged.
    pub fn assert_succeeded(&self) -> &Self {
        assert!(
            self.report.succeeded(),
            "the run failed: {:?}\nevents: {:#?}",
            self.report.failure,
            self.events
        );
        self
    }

    /// Panics unless exactly `expected` changed, in this order.
    pub fn assert_changed(&self, expected: &[&str]) -> &Self {
        assert_eq!(self.changed(), expected, "events: {:#?}", self.events);
        self
    }

    /// Panics unless nothing changed (the idempotency check).
    pub fn assert_unchanged(&self) -> &Self {
        self.assert_changed(&[])
    }

    /// The failing component's path and cause chain joined by `: `, when one failed.
    pub fn failure(&self) -> Option<String> {
        self.report
            .failure
            .as_ref()
            .map(|(path, chain)| format!("{path}: {}", chain.join(": ")))
    }

    /// The reasons given for changes, by component path.
    pub fn reasons(&self) -> Vec<(String, String)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Changed {
                    component, reason, ..
                } => Some((component.clone(), reason.clone())),
                _ => None,
            })
            .collect()
    }

    /// The diffs shown, by component path.
    pub fn diffs(&self) -> Vec<(String, String)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Diff {
                    component, diff, ..
                } => Some((component.clone(), diff.clone())),
                _ => None,
            })
            .collect()
    }

    /// The messages components logged.
    pub fn logs(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Log { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }
}

/// An entry of [`tree`]: kind (`d`, `f`, `l`), permission bits, owner, group and content.
type Entry = (char, u32, u32, u32, Vec<u8>);

/// What a tree holds, by path relative to `root`: each entry's kind, permission bits,
/// ownership and content (a file's bytes, a link's target), for telling whether anything
/// changed.
fn tree(root: &Path) -> std::collections::BTreeMap<String, Entry> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut found = std::collections::BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o7777;
            let relative = path
                .strip_prefix(root)
                .expect("entries lie below the root")
                .display()
                .to_string();
            let (kind, content) = if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap_or_default();
                ('l', target.into_os_string().into_encoded_bytes())
            } else if meta.is_dir() {
                pending.push(path.clone());
                ('d', Vec::new())
            } else {
                ('f', std::fs::read(&path).unwrap_or_default())
            };
            found.insert(relative, (kind, mode, meta.uid(), meta.gid(), content));
        }
    }
    found
}

fn only_host(plan: &Plan, environment: &str) -> String {
    let hosts: std::collections::BTreeSet<&str> =
        plan.steps().iter().map(|s| s.host.as_str()).collect();
    match Vec::from_iter(hosts).as_slice() {
        [host] => host.to_string(),
        other => {
            panic!("environment `{environment}` must have one host with steps, it has {other:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde::Deserialize;

    use super::TestProject;
    use crate::{Component, Configure, Deploy, Registry, SubComponent, Verdict};

    /// Creates a file (relative to the work directory) when it is missing.
    struct Touch {
        name: String,
        path: PathBuf,
    }

    impl Component for Touch {
        fn label(&self) -> String {
            format!("Touch('{}')", self.name)
        }
        fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
            self.path = cx.path(&self.name)?;
            Ok(())
        }
        fn verify(&self, _cx: &mut Deploy) -> anyhow::Result<Verdict> {
            Ok(if self.path.exists() {
                Verdict::UpToDate
            } else {
                Verdict::needs_update("missing")
            })
        }
        fn update(&mut self, _cx: &mut Deploy) -> anyhow::Result<()> {
            Ok(std::fs::write(&self.path, "")?)
        }
    }

    /// Adds two touches and logs, on each update, which of them changed.
    #[derive(Deserialize)]
    struct Pair {
        #[serde(skip)]
        subs: Vec<SubComponent>,
    }

    impl Component for Pair {
        fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
            for name in ["a", "b"] {
                let sub = cx.add(Touch {
                    name: name.into(),
                    path: PathBuf::new(),
                });
                self.subs.push(sub);
            }
            Ok(())
        }
        fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
            Ok(if cx.subcomponents_changed() {
                Verdict::needs_update("a touch changed")
            } else {
                Verdict::UpToDate
            })
        }
        fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
            let which: Vec<bool> = self.subs.iter().map(|s| cx.changed(*s)).collect();
            cx.log(format!("changed: {which:?}"));
            Ok(())
        }
    }

    fn project() -> TestProject {
        let mut registry = Registry::new();
        registry.register::<Pair>("pair");
        let project = TestProject::new(registry);
        project.env("dev", "[hosts.localhost]\ncomponents = [\"pair\"]\n");
        project
    }

    #[test]
    fn a_parent_asks_whether_one_sub_component_changed() {
        let project = project();
        let first = project.converge("dev");
        first.assert_changed(&[
            "pair > Workdir",
            "pair > Touch('a')",
            "pair > Touch('b')",
            "pair",
        ]);
        assert_eq!(first.logs(), ["changed: [true, true]"]);

        std::fs::remove_file(project.workdir("pair").join("b")).unwrap();
        let second = project.converge("dev");
        second.assert_changed(&["pair > Touch('b')", "pair"]);
        assert_eq!(second.logs(), ["changed: [false, true]"]);

        project.converge("dev").assert_unchanged();
    }

    /// Reports, from verify, the host and work directory the deploy context gives.
    #[derive(Deserialize)]
    struct WhereAmI {}

    impl Component for WhereAmI {
        fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
            let workdir = cx.workdir().to_path_buf();
            cx.log(format!("{} {}", cx.host().name, workdir.display()));
            Ok(Verdict::UpToDate)
        }
    }

    #[test]
    fn the_deploy_context_knows_the_host_and_the_work_directory() {
        let mut registry = Registry::new();
        registry.register::<WhereAmI>("where");
        let project = TestProject::new(registry);
        project.env("dev", "[hosts.web1]\ncomponents = [\"where\"]\n");
        let run = project.converge("dev");
        let expected = format!("web1 {}", project.workdir("where").display());
        assert_eq!(run.logs(), [expected]);
    }

    #[test]
    fn a_dry_run_predicts_without_changing() {
        let project = project();
        let dry = project.dry_run("dev");
        assert_eq!(dry.changed().len(), 4, "{:?}", dry.changed());
        assert!(!project.base_dir().exists());
        project.converge_twice("dev");
    }
}
