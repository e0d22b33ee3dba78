//! The reusable component library: [`File`], [`Directory`], [`Symlink`], [`Command`],
//! [`Service`], [`Release`], [`Presence`] and [`Purge`]; for a web application's deployment
//! [`Download`], [`Archive`], [`Git`], [`Virtualenv`], [`Cron`] and [`NginxSite`]; and [`cmd`],
//! the command runner for component authors.
//!
//! Each type is usable from Rust (builder methods) and from an environment file
//! (`type = "file"` and the type's attributes). Every write is atomic: a temporary file in the
//! same directory, created with its final mode, written, synced and renamed into place.

mod archive;
mod cmd;
mod command;
mod cron;
mod data;
mod digest;
mod directory;
mod download;
mod file;
mod fs;
mod git;
mod mode;
mod nginx;
mod presence;
pub mod process;
pub mod prune;
mod purge;
pub mod release;
mod service;
mod symlink;
mod virtualenv;

pub use archive::{Archive, ArchiveFormat};
pub use cmd::{Cmd, CommandOutput, cmd};
pub use command::{Command, run_command};
pub use cron::{Cron, CronEntry};
pub use data::DataFormat;
pub use directory::Directory;
pub use download::Download;
pub use file::File;
pub use fs::write_atomic;
pub use git::Git;
pub use mode::Mode;
pub use nginx::NginxSite;
pub use presence::Presence;
pub use process::Status as CommandStatus;
pub use purge::Purge;
pub use release::Release;
pub use service::{Health, Manager, Service, ServiceState};
pub use symlink::Symlink;
pub use virtualenv::Virtualenv;

/// Registers the library's types under their environment names:
/// `file`, `directory`, `symlink`, `command`, `service`, `presence`, `purge`, `release`,
/// `download`, `archive`, `git`, `virtualenv`, `cron`, `nginx_site`.
pub fn register(registry: &mut batou_core::Registry) {
    registry
        .register::<File>("file")
        .register::<Directory>("directory")
        .register::<Symlink>("symlink")
        .register::<Command>("command")
        .register::<Service>("service")
        .register::<Presence>("presence")
        .register::<Purge>("purge")
        .register::<Release>("release")
        .register::<Download>("download")
        .register::<Archive>("archive")
        .register::<Git>("git")
        .register::<Virtualenv>("virtualenv")
        .register::<Cron>("cron")
        .register::<NginxSite>("nginx_site")
        .configure_first("release");
}

/// What the components' unit tests share: a [`TestProject`](batou_core::testing::TestProject)
/// with the library registered.
#[cfg(test)]
mod test_util {
    use batou_core::testing::TestProject;
    use batou_core::{Component, Registry};

    /// A project whose environment `dev` is `environment` (TOML), with the library's types in
    /// its registry.
    pub(crate) fn project(environment: &str) -> TestProject {
        let mut registry = Registry::new();
        crate::register(&mut registry);
        with_registry(registry, environment)
    }

    /// Like [`project`], with a test's own component type registered as `name`.
    pub(crate) fn project_with<T>(name: &str, environment: &str) -> TestProject
    where
        T: Component + serde::de::DeserializeOwned,
    {
        let mut registry = Registry::new();
        crate::register(&mut registry);
        registry.register::<T>(name);
        with_registry(registry, environment)
    }

    fn with_registry(registry: Registry, environment: &str) -> TestProject {
        let project = TestProject::new(registry);
        project.env("dev", environment);
        project
    }

    /// The configuration error of environment `dev` with its causes, joined by `: `; panics
    /// if it configures. (`TestProject::configure` returns a `Plan`, which has no `Debug` for
    /// `unwrap_err`.)
    pub(crate) fn config_error(project: &TestProject) -> String {
        match project.configure("dev") {
            Ok(_) => panic!("environment `dev` configured without an error"),
            Err(e) => format!("{:#}", anyhow::Error::from(e)),
        }
    }

    /// The permission bits of `path`.
    pub(crate) fn mode(path: &std::path::Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    /// `(component, reason)` pairs, for comparing with `Run::reasons`.
    pub(crate) fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }
}

/// A Rust component that chooses its variant by the host's platform facts.
#[cfg(test)]
mod facts_variants {
    use batou_core::{Component, Configure, Facts};

    use crate::File;

    /// Writes the name of the web server package the host's distribution ships.
    #[derive(serde::Deserialize)]
    struct WebServer {}

    impl Component for WebServer {
        fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
            let facts = cx.facts().clone();
            let package = match facts.distribution.as_str() {
                "debian" | "ubuntu" => "nginx-light",
                "alpine" => "nginx-mainline",
                _ if facts.like.iter().any(|l| l == "debian") => "nginx-light",
                _ => "nginx",
            };
            cx.add(File::new("package").content(format!("{package}\n")));
            Ok(())
        }
    }

    fn on(facts: Option<Facts>) -> String {
        let mut project = crate::test_util::project_with::<WebServer>(
            "web",
            "[hosts.localhost]\ncomponents = [\"web\"]\n\n[components.web]\n",
        );
        if let Some(facts) = facts {
            project.facts("localhost", facts);
        }
        project.converge("dev").assert_succeeded();
        project.converge("dev").assert_unchanged();
        std::fs::read_to_string(project.workdir("web").join("package")).unwrap()
    }

    fn distribution(id: &str, like: &[&str]) -> Facts {
        Facts {
            os: "linux".into(),
            architecture: "x86_64".into(),
            distribution: id.into(),
            like: like.iter().map(|l| l.to_string()).collect(),
            ..Facts::unknown()
        }
    }

    #[test]
    fn a_component_chooses_its_variant_by_the_hosts_distribution() {
        assert_eq!(on(Some(distribution("debian", &[]))), "nginx-light\n");
        assert_eq!(on(Some(distribution("alpine", &[]))), "nginx-mainline\n");
        assert_eq!(
            on(Some(distribution("linuxmint", &["ubuntu", "debian"]))),
            "nginx-light\n"
        );
        assert_eq!(on(Some(distribution("fedora", &[]))), "nginx\n");
        // Facts not gathered: every value is empty, and the component takes its default.
        assert_eq!(on(None), "nginx\n");
    }
}
