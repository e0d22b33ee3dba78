//! `App`: the shop application, configured from a template with the database's address, and
//! reloaded whenever its configuration changes.

use std::io::Write;

use anyhow::Context;
use batou::{Component, Configure, Deploy, Directory, File, Verdict};
use serde::Deserialize;

use crate::database::Address;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    port: u16,
    #[serde(default = "default_workers")]
    workers: u32,
    #[serde(skip)]
    reload_log: std::path::PathBuf,
}

fn default_workers() -> u32 {
    2
}

impl Component for App {
    fn label(&self) -> String {
        "App".into()
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        let database: Address = cx.require_one("database")?;
        cx.add(Directory::new("config").mode(0o750));
        cx.add(
            File::new("config/app.toml")
                .template(
                    "components/app/app.toml.j2",
                    serde_json::json!({
                        "port": self.port,
                        "workers": self.workers,
                        "database": database,
                    }),
                )
                .mode(0o640),
        );
        self.reload_log = cx.path("reloads.log")?;
        Ok(())
    }

    fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
        // The service must pick up a changed configuration: batou's
        // `assert_no_subcomponent_changes`.
        if cx.subcomponents_changed() {
            return Ok(Verdict::needs_update("configuration changed: reload"));
        }
        Ok(Verdict::UpToDate)
    }

    fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.reload_log)
            .with_context(|| format!("cannot open `{}`", self.reload_log.display()))?;
        writeln!(log, "reloaded")?;
        cx.log("reloaded the application");
        Ok(())
    }
}
