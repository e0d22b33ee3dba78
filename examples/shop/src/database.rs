//! `Database`: a (pretend) database server that provides its address as a resource.

use batou::{Component, Configure, File, Secret};
use serde::{Deserialize, Serialize};

/// What the `database` resource carries to the components that require it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Address {
    pub host: String,
    pub port: u16,
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    #[serde(default = "default_name")]
    name: String,
    #[serde(default = "default_port")]
    port: u16,
    /// The database password, from the environment's secrets
    /// (`[components.database] password = "..."` in `secrets/<env>.age`).
    #[serde(default)]
    password: Option<Secret<String>>,
}

fn default_name() -> String {
    "shop".into()
}

fn default_port() -> u16 {
    5432
}

impl Component for Database {
    fn label(&self) -> String {
        format!("Database('{}')", self.name)
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        let address = Address {
            host: cx.host().name.clone(),
            port: self.port,
            name: self.name.clone(),
        };
        cx.provide("database", &address)?;
        cx.add(
            File::new("database.conf")
                .content(format!("port = {}\ndatabase = {}\n", self.port, self.name)),
        );
        if let Some(password) = &self.password {
            // Readable by the deploying user only, from the first byte on.
            cx.add(
                File::new("credentials")
                    .content(format!("password = {}\n", password.expose()))
                    .mode(0o600),
            );
        }
        Ok(())
    }
}
