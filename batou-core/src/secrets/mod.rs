//! Secrets: one age-encrypted file per environment, decrypted on the controller only.
//!
//! `secrets/<env>.age` (ASCII-armored) holds TOML shaped like the environment's overrides:
//!
//! ```toml
//! [components.app]
//! db_password = "..."           # merged into the `app` component's attributes
//!
//! [hosts.db1.data]
//! replication_token = "..."     # merged into the host's data
//!
//! [files]
//! "shop.key" = """-----BEGIN PRIVATE KEY-----..."""   # installed with File's `secret`
//! ```
//!
//! `secrets/<env>.recipients` lists who can decrypt it: age X25519 public keys (`age1...`) or
//! SSH public keys (`ssh-ed25519 ...`, `ssh-rsa ...`), one per line, `#` comments allowed.
//! Identities for decryption come from `--identity`, `BATOU_IDENTITY`, the default identity
//! file `~/.config/batou/identity.txt` or the user's SSH keys (`~/.ssh/id_ed25519`,
//! `~/.ssh/id_rsa`).
//!
//! Generated secrets (`{ generate = "password" }` in an environment, `[[generated]]` in the
//! cleartext) are in `generate.rs`.
//!
//! The parts: [`Secret`] (`secret.rs`), the cleartext format ([`Secrets`], `file.rs`), the
//! merge into an environment's attributes, which marks every merged value as secret
//! (`merge.rs`), named secret files as a plan uses them (`secret_files.rs`), and age
//! identities and recipients (`keys.rs`), and the names index `secrets/<env>.names` that
//! lets an offline check configure without decrypting (`index.rs`). Reading `BATOU_IDENTITY`, `HOME` and
//! `XDG_CONFIG_HOME` is left to the binaries: [`IdentitySource`] takes their values.

mod file;
pub(crate) mod generate;
mod index;
mod keys;
mod merge;
mod secret;
mod secret_files;

use std::path::Path;

use crate::error::ConfigError;

pub use file::Secrets;
pub use generate::{Declaration, Kind as GenerateKind, append as append_generated};
pub use index::{IndexState, index_path, index_state, index_text};
pub use keys::{
    IDENTITY_ENV, Identities, IdentitySource, Recipient, UserDirs, decrypt, encrypt,
    generate_identity, parse_recipients,
};
pub(crate) use merge::{SecretKeys, merge};
pub use secret::Secret;
pub(crate) use secret_files::SecretFiles;

/// `secrets/<env>.age`, relative to the project root.
pub fn secrets_path(environment: &str) -> String {
    format!("secrets/{environment}.age")
}

/// `secrets/<env>.recipients`, relative to the project root.
pub fn recipients_path(environment: &str) -> String {
    format!("secrets/{environment}.recipients")
}

/// Reads and decrypts the secrets of `environment`, if it has a secrets file.
pub fn load(
    project_root: &Path,
    environment: &str,
    identities: &IdentitySource,
) -> Result<Option<Secrets>, ConfigError> {
    let relative = secrets_path(environment);
    let data = match std::fs::read(project_root.join(&relative)) {
        Ok(data) => data,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ConfigError::new(format!("cannot read `{relative}`")).caused_by(e.into()));
        }
    };
    keys::check_age_format(&data, &relative)?;
    let identities = identities.load()?;
    let text = decrypt(&data, &relative, &identities)?;
    Secrets::parse(&relative, text).map(Some)
}
