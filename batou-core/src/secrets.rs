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

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::SourceText;
use crate::{ConfigError, Place};

/// Environment variable naming an identity file, used when `--identity` is not given.
pub const IDENTITY_ENV: &str = "BATOU_IDENTITY";

/// `secrets/<env>.age`, relative to the project root.
pub fn secrets_path(environment: &str) -> String {
    format!("secrets/{environment}.age")
}

/// `secrets/<env>.recipients`, relative to the project root.
pub fn recipients_path(environment: &str) -> String {
    format!("secrets/{environment}.recipients")
}

/// A secret attribute value: its `Display` and `Debug` show `<secret>`, and so does its
/// serialization, except when it is serialized for a template context (templates render the
/// real value). Use [`Secret::expose`] where the value itself is needed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret<T = String>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    /// The secret value. Never print it: output sinks mask registered secrets, but a value
    /// transformed before printing (e.g. base64-encoded) no longer matches.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Secret<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer).map(Secret)
    }
}

impl<T: Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if minijinja::value::serializing_for_value() {
            self.0.serialize(serializer)
        } else {
            serializer.serialize_str("<secret>")
        }
    }
}

/// Secret host data: `(key, value)` pairs with the key's span.
pub(crate) type HostData = Vec<(Spanned<String>, serde_json::Value)>;

/// The decrypted secrets of an environment, checked for shape.
#[derive(Debug)]
pub struct Secrets {
    pub(crate) path: String,
    pub(crate) text: &'static str,
    /// Attribute overrides per root component, with spans into `text`.
    pub(crate) components: Vec<(Spanned<String>, Spanned<DeValue<'static>>)>,
    /// Host data per host.
    pub(crate) hosts: Vec<(Spanned<String>, HostData)>,
    /// Named secret files.
    pub files: BTreeMap<String, String>,
    /// Every string value with its dotted name, for masking.
    pub values: Vec<(String, String)>,
}

impl Secrets {
    /// Parses decrypted secrets; `path` names the encrypted file in error places.
    pub fn parse(path: &str, text: String) -> Result<Self, ConfigError> {
        // Kept for the whole run like the environment's text: attribute spans point into it.
        let text: &'static str = Box::leak(text.into_boxed_str());
        let source = SourceText {
            path: path.to_string(),
            text,
            overlay: None,
        };
        let doc = DeTable::parse(text).map_err(|e| source.toml_error(&e))?;
        let mut secrets = Secrets {
            path: path.to_string(),
            text,
            components: Vec::new(),
            hosts: Vec::new(),
            files: BTreeMap::new(),
            values: Vec::new(),
        };
        for (key, value) in doc.into_inner() {
            let section = key.get_ref().to_string();
            let at = source.place(key.span().start);
            let DeValue::Table(table) = value.into_inner() else {
                return Err(ConfigError::new(format!("`{section}` must be a table")).at(at));
            };
            match section.as_str() {
                "components" => {
                    for (name, attributes) in table {
                        let n = name.get_ref().to_string();
                        if !attributes.get_ref().is_table() {
                            return Err(ConfigError::new(format!(
                                "`components.{n}` must be a table of attributes"
                            ))
                            .at(source.place(attributes.span().start)));
                        }
                        collect_values(
                            &format!("components.{n}"),
                            &attributes,
                            &mut secrets.values,
                        );
                        secrets
                            .components
                            .push((Spanned::new(name.span(), n), attributes));
                    }
                }
                "hosts" => {
                    for (name, host) in table {
                        let n = name.get_ref().to_string();
                        let host_span = host.span();
                        let DeValue::Table(mut host) = host.into_inner() else {
                            return Err(ConfigError::new(format!("`hosts.{n}` must be a table"))
                                .at(source.place(host_span.start)));
                        };
                        if let Some((other, _)) = host.iter().find(|(k, _)| k.get_ref() != "data") {
                            return Err(ConfigError::new(format!(
                                "unknown key `{}` in `hosts.{n}`",
                                other.get_ref()
                            ))
                            .at(source.place(other.span().start))
                            .hint("secrets of a host go into `[hosts.<name>.data]`"));
                        }
                        let mut data = Vec::new();
                        if let Some(table) = host.remove("data") {
                            let Some(entries) = table.get_ref().as_table() else {
                                return Err(ConfigError::new(format!(
                                    "`hosts.{n}.data` must be a table"
                                ))
                                .at(source.place(table.span().start)));
                            };
                            for (k, v) in entries.iter() {
                                collect_values(
                                    &format!("hosts.{n}.data.{}", k.get_ref()),
                                    v,
                                    &mut secrets.values,
                                );
                                let json = serde_json::Value::deserialize(
                                    toml::de::ValueDeserializer::from(v.clone()),
                                )
                                .map_err(|e| source.toml_error(&e))?;
                                data.push((Spanned::new(k.span(), k.get_ref().to_string()), json));
                            }
                        }
                        secrets.hosts.push((Spanned::new(name.span(), n), data));
                    }
                }
                "files" => {
                    for (name, content) in table {
                        let n = name.get_ref().to_string();
                        let Some(content) = content.get_ref().as_str() else {
                            return Err(ConfigError::new(format!(
                                "secret file `files.\"{n}\"` must be a string"
                            ))
                            .at(source.place(content.span().start)));
                        };
                        secrets
                            .values
                            .push((format!("files.{n}"), content.to_string()));
                        secrets.files.insert(n, content.to_string());
                    }
                }
                _ => {
                    return Err(ConfigError::new(format!("unknown section `{section}`"))
                        .at(at)
                        .suggest(&section, ["components", "hosts", "files"])
                        .hint("secrets have `[components.<name>]`, `[hosts.<name>.data]` and `[files]`"));
                }
            }
        }
        Ok(secrets)
    }

    /// The dotted names of every secret, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.values.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Registers every value for masking in this process's output.
    pub fn register_masks(&self) {
        for (name, value) in &self.values {
            crate::redact::register(name, value);
        }
    }
}

fn collect_values(name: &str, value: &Spanned<DeValue<'static>>, out: &mut Vec<(String, String)>) {
    match value.get_ref() {
        DeValue::String(s) => out.push((name.to_string(), s.to_string())),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_values(&format!("{name}[{i}]"), item, out);
            }
        }
        DeValue::Table(table) => {
            for (k, v) in table.iter() {
                collect_values(&format!("{name}.{}", k.get_ref()), v, out);
            }
        }
        _ => {}
    }
}

/// Secret files as one plan uses them: all of them on the controller, the shipped ones on
/// an agent; which step read which is recorded so that each host gets only its own.
#[derive(Debug, Default)]
pub(crate) struct SecretFiles {
    pub(crate) files: BTreeMap<String, String>,
    pub(crate) path: Option<String>,
    pub(crate) used: Mutex<BTreeMap<usize, Vec<String>>>,
}

impl SecretFiles {
    pub(crate) fn new(files: BTreeMap<String, String>, path: Option<String>) -> Self {
        SecretFiles {
            files,
            path,
            used: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn get(&self, step: usize, name: &str) -> anyhow::Result<Secret<String>> {
        let Some(content) = self.files.get(name) else {
            let known: Vec<&str> = self.files.keys().map(String::as_str).collect();
            let mut message = match &self.path {
                Some(path) => format!("no secret file `{name}` in `{path}`"),
                None => format!("no secret file `{name}`: this environment has no secrets"),
            };
            if let Some(close) = crate::error::did_you_mean(name, known.iter().copied()) {
                message.push_str(&format!(" (did you mean `{close}`?)"));
            }
            anyhow::bail!(message);
        };
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let names = used.entry(step).or_default();
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
        Ok(Secret(content.clone()))
    }

    /// The files the given steps read.
    pub(crate) fn used_by(&self, steps: &[usize]) -> BTreeMap<String, String> {
        let used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        steps
            .iter()
            .filter_map(|s| used.get(s))
            .flatten()
            .map(|n| (n.clone(), self.files[n].clone()))
            .collect()
    }
}

/// Merges secret attribute overrides into an environment component's attributes; a key set
/// in both places is an error.
pub(crate) fn merge(
    into: &mut Spanned<DeValue<'static>>,
    from: Spanned<DeValue<'static>>,
    path: &str,
    secrets: &SourceText,
    shift: usize,
) -> Result<(), ConfigError> {
    let (DeValue::Table(into), DeValue::Table(from)) = (into.get_mut(), from.into_inner()) else {
        unreachable!("callers merge tables");
    };
    for (key, value) in from {
        let name = format!("{path}.{}", key.get_ref());
        match into.get_mut(key.get_ref().as_ref()) {
            Some(existing) if existing.get_ref().is_table() && value.get_ref().is_table() => {
                merge(existing, value, &name, secrets, shift)?;
            }
            Some(_) => {
                return Err(ConfigError::new(format!(
                    "`{name}` is set both in the environment and in the secrets"
                ))
                .at(secrets.place(key.span().start))
                .hint("set each attribute in one place: remove it from the environment file"));
            }
            None => {
                let key = Spanned::new(shifted(key.span(), shift), key.into_inner());
                into.insert(key, shift_spans(value, shift));
            }
        }
    }
    Ok(())
}

fn shifted(span: std::ops::Range<usize>, by: usize) -> std::ops::Range<usize> {
    span.start + by..span.end + by
}

/// The value with every span moved by `by` bytes (into the secrets part of a source text).
pub(crate) fn shift_spans(
    value: Spanned<DeValue<'static>>,
    by: usize,
) -> Spanned<DeValue<'static>> {
    let span = shifted(value.span(), by);
    let inner = match value.into_inner() {
        DeValue::Array(items) => {
            DeValue::Array(items.into_iter().map(|v| shift_spans(v, by)).collect())
        }
        DeValue::Table(table) => {
            let mut out = DeTable::new();
            for (k, v) in table {
                out.insert(
                    Spanned::new(shifted(k.span(), by), k.into_inner()),
                    shift_spans(v, by),
                );
            }
            DeValue::Table(out)
        }
        other => other,
    };
    Spanned::new(span, inner)
}

/// Where identities for decryption come from.
#[derive(Debug, Clone, Default)]
pub struct IdentitySource {
    /// `--identity FILE`: used alone when given.
    pub explicit: Option<PathBuf>,
}

/// Identities loaded for decryption, and what was tried (for error hints).
pub struct Identities {
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
    pub tried: Vec<String>,
    pub skipped: Vec<String>,
}

impl IdentitySource {
    /// `explicit`, else `BATOU_IDENTITY`, else the default files.
    pub fn new(explicit: Option<PathBuf>) -> Self {
        let explicit = explicit.or_else(|| {
            std::env::var_os(IDENTITY_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        IdentitySource { explicit }
    }

    /// The default identity file: `$XDG_CONFIG_HOME/batou/identity.txt` or
    /// `~/.config/batou/identity.txt`.
    pub fn default_file() -> Option<PathBuf> {
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(config.join("batou/identity.txt"))
    }

    fn candidates(&self) -> Vec<PathBuf> {
        if let Some(path) = &self.explicit {
            return vec![path.clone()];
        }
        let mut out: Vec<PathBuf> = Self::default_file().into_iter().collect();
        if let Some(home) = std::env::var_os("HOME") {
            let ssh = PathBuf::from(home).join(".ssh");
            out.push(ssh.join("id_ed25519"));
            out.push(ssh.join("id_rsa"));
        }
        out
    }

    /// Loads every identity that exists; an explicit identity that cannot be read is an error.
    pub fn load(&self) -> Result<Identities, ConfigError> {
        let mut loaded = Identities {
            identities: Vec::new(),
            tried: Vec::new(),
            skipped: Vec::new(),
        };
        for path in self.candidates() {
            let shown = path.display().to_string();
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if self.explicit.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
                    continue;
                }
                Err(e) => {
                    return Err(ConfigError::new(format!("cannot read identity `{shown}`"))
                        .caused_by(e.into()));
                }
            };
            loaded.tried.push(shown.clone());
            match parse_identity(&text, &shown) {
                Ok(mut ids) => loaded.identities.append(&mut ids),
                Err(why) if self.explicit.is_some() => {
                    return Err(ConfigError::new(format!(
                        "cannot use identity `{shown}`: {why}"
                    )));
                }
                Err(why) => loaded.skipped.push(format!("{shown}: {why}")),
            }
        }
        Ok(loaded)
    }
}

impl IdentitySource {
    /// The public keys of your identities (`age1...` of age identities, the `.pub` file
    /// beside an SSH key), for making yourself a recipient.
    pub fn public_keys(&self) -> Result<Vec<String>, ConfigError> {
        let mut keys = Vec::new();
        for path in self.candidates() {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if text.contains("AGE-SECRET-KEY-") {
                for line in text.lines().map(str::trim) {
                    if line.starts_with("AGE-SECRET-KEY-")
                        && let Ok(identity) = age::x25519::Identity::from_str(line)
                    {
                        keys.push(identity.to_public().to_string());
                    }
                }
            } else {
                let mut public = path.clone().into_os_string();
                public.push(".pub");
                if let Ok(public) = std::fs::read_to_string(&public) {
                    let key = public.trim();
                    if Recipient::parse(key).is_ok() {
                        keys.push(key.to_string());
                    }
                }
            }
        }
        Ok(keys)
    }
}

/// A new age X25519 identity: `(AGE-SECRET-KEY-..., age1...)`.
pub fn generate_identity() -> (String, String) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    (
        identity.to_string().expose_secret().to_string(),
        identity.to_public().to_string(),
    )
}

fn parse_identity(
    text: &str,
    name: &str,
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, String> {
    if text.contains("AGE-SECRET-KEY-") {
        let file = age::IdentityFile::from_buffer(text.as_bytes())
            .map_err(|e| format!("not a valid age identity file ({e})"))?;
        return file
            .into_identities()
            .map_err(|e| format!("not a valid age identity file ({e})"));
    }
    match age::ssh::Identity::from_buffer(text.as_bytes(), Some(name.to_string())) {
        Ok(age::ssh::Identity::Unencrypted(key)) => {
            Ok(vec![Box::new(age::ssh::Identity::Unencrypted(key))])
        }
        Ok(age::ssh::Identity::Encrypted(_)) => Err(
            "the SSH key is protected by a passphrase; use an age identity (see docs/secrets.md)"
                .into(),
        ),
        Ok(age::ssh::Identity::Unsupported(_)) => Err("unsupported SSH key type".into()),
        Err(_) => Err("neither an age identity nor an SSH private key".into()),
    }
}

/// One recipient line of a recipients file.
pub struct Recipient {
    /// The key as written (`age1...` or `ssh-ed25519 AAAA...`).
    pub key: String,
    /// The rest of the line: a name or e-mail address.
    pub comment: String,
    recipient: Box<dyn age::Recipient + Send + Sync>,
}

impl Recipient {
    /// Parses `age1... [# comment]` or `ssh-ed25519 AAAA... [comment]`.
    pub fn parse(line: &str) -> Result<Recipient, String> {
        let line = line.trim();
        if line.starts_with("age1") {
            let (key, comment) = match line.split_once(char::is_whitespace) {
                Some((k, rest)) => (k, rest.trim().trim_start_matches('#').trim()),
                None => (line, ""),
            };
            let recipient = age::x25519::Recipient::from_str(key)
                .map_err(|e| format!("invalid age public key `{key}`: {e}"))?;
            return Ok(Recipient {
                key: key.to_string(),
                comment: comment.to_string(),
                recipient: Box::new(recipient),
            });
        }
        if line.starts_with("ssh-") {
            let mut parts = line.splitn(3, char::is_whitespace);
            let kind = parts.next().unwrap_or_default();
            let blob = parts.next().unwrap_or_default();
            let comment = parts
                .next()
                .unwrap_or_default()
                .trim()
                .trim_start_matches('#')
                .trim();
            let key = format!("{kind} {blob}");
            let recipient = age::ssh::Recipient::from_str(&key).map_err(|e| {
                format!(
                    "invalid or unsupported SSH public key `{kind} {}...`: {e:?}",
                    &blob[..blob.len().min(12)]
                )
            })?;
            return Ok(Recipient {
                key,
                comment: comment.to_string(),
                recipient: Box::new(recipient),
            });
        }
        Err(format!(
            "`{}` is neither an age public key (`age1...`) nor an SSH public key (`ssh-ed25519 ...`, `ssh-rsa ...`)",
            line.chars().take(20).collect::<String>()
        ))
    }

    /// The line as written back to a recipients file.
    pub fn line(&self) -> String {
        if self.comment.is_empty() {
            self.key.clone()
        } else if self.key.starts_with("age1") {
            format!("{} # {}", self.key, self.comment)
        } else {
            format!("{} {}", self.key, self.comment)
        }
    }
}

/// Parses a recipients file: one key per line, blank lines and `#` lines ignored.
pub fn parse_recipients(path: &str, text: &str) -> Result<Vec<Recipient>, ConfigError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let column = line.len() - line.trim_start().len() + 1;
        out.push(Recipient::parse(trimmed).map_err(|why| {
            ConfigError::new(why).at(Place::File {
                path: path.to_string(),
                line: i + 1,
                column,
            })
        })?);
    }
    Ok(out)
}

/// Encrypts `cleartext` to `recipients`, ASCII-armored.
pub fn encrypt(cleartext: &str, recipients: &[Recipient]) -> anyhow::Result<Vec<u8>> {
    if recipients.is_empty() {
        anyhow::bail!("no recipients: nobody could decrypt the secrets");
    }
    let encryptor = age::Encryptor::with_recipients(
        recipients
            .iter()
            .map(|r| r.recipient.as_ref() as &dyn age::Recipient),
    )?;
    let mut out = Vec::new();
    let armor = age::armor::ArmoredWriter::wrap_output(&mut out, age::armor::Format::AsciiArmor)?;
    let mut writer = encryptor.wrap_output(armor)?;
    writer.write_all(cleartext.as_bytes())?;
    writer.finish()?.finish()?;
    Ok(out)
}

/// Decrypts an armored (or binary) age file; `path` names it in errors.
pub fn decrypt(data: &[u8], path: &str, identities: &Identities) -> Result<String, ConfigError> {
    let hint_keys = || {
        let mut hint = if identities.tried.is_empty() {
            format!(
                "no identity found: pass `--identity FILE`, set `{IDENTITY_ENV}`, or create `{}`",
                IdentitySource::default_file()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "~/.config/batou/identity.txt".into())
            )
        } else {
            format!("tried: {}", identities.tried.join(", "))
        };
        for skipped in &identities.skipped {
            hint.push_str(&format!("; skipped {skipped}"));
        }
        hint
    };
    let damaged = |what: String| {
        ConfigError::new(format!("`{path}` is damaged or was tampered with: {what}"))
            .at(Place::Path(path.to_string()))
            .hint("restore it from version control")
    };
    let decryptor = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(data))
        .map_err(|e| damaged(e.to_string()))?;
    let mut reader = match decryptor.decrypt(
        identities
            .identities
            .iter()
            .map(|i| i.as_ref() as &dyn age::Identity),
    ) {
        Ok(reader) => reader,
        Err(age::DecryptError::NoMatchingKeys) => {
            return Err(ConfigError::new(format!(
                "cannot decrypt `{path}`: none of your identities is one of its recipients"
            ))
            .at(Place::Path(path.to_string()))
            .hint(format!(
                "{}; someone who can decrypt it adds you with `batou-remote secrets add-recipient`",
                hint_keys()
            )));
        }
        Err(e) => return Err(damaged(e.to_string())),
    };
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .map_err(|e| damaged(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| damaged("the cleartext is not UTF-8".into()))
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
    check_age_format(&data, &relative)?;
    let identities = identities.load()?;
    let text = decrypt(&data, &relative, &identities)?;
    Secrets::parse(&relative, text).map(Some)
}

/// Refuses a file that is not age at all (neither binary nor armored), before any identity
/// is looked for: a cleartext or empty file is a mistake, not damage.
fn check_age_format(data: &[u8], path: &str) -> Result<(), ConfigError> {
    const BINARY: &[u8] = b"age-encryption.org/";
    const ARMOR: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
    let trimmed = data.trim_ascii_start();
    if data.starts_with(BINARY) || trimmed.starts_with(ARMOR) {
        return Ok(());
    }
    let what = if data.is_empty() {
        "it is empty".to_string()
    } else {
        "it starts with neither `age-encryption.org/` nor `-----BEGIN AGE ENCRYPTED FILE-----`"
            .to_string()
    };
    Err(ConfigError::new(format!("`{path}` is not an age-encrypted file: {what}"))
        .at(Place::Path(path.to_string()))
        .hint("create or rewrite it with `batou-remote secrets create <environment>` or `batou-remote secrets edit <environment>`; cleartext secrets do not belong in `secrets/`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_never_display() {
        let s: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(format!("{s} {s:?}"), "<secret> <secret>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<secret>\"");
        assert_eq!(s.expose(), "hunter2");
        // Templates see the value.
        let v = minijinja::Value::from_serialize(&s);
        assert_eq!(v.to_string(), "hunter2");
    }

    #[test]
    fn x25519_round_trip_and_wrong_identity() {
        let me = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let recipients =
            parse_recipients("r", &format!("# team\n{} # me\n", me.to_public())).unwrap();
        assert_eq!(recipients[0].comment, "me");
        let data = encrypt("[files]\nx = \"1\"\n", &recipients).unwrap();
        assert!(data.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----"));
        let ids = |id: age::x25519::Identity| Identities {
            identities: vec![Box::new(id)],
            tried: vec!["test".into()],
            skipped: vec![],
        };
        let clear = decrypt(&data, "s.age", &ids(me.clone())).unwrap();
        assert_eq!(clear, "[files]\nx = \"1\"\n");
        let err = decrypt(&data, "s.age", &ids(other)).unwrap_err();
        assert!(err.to_string().contains("none of your identities"), "{err}");

        // Flip one character of the armored payload.
        let mut text = String::from_utf8(data).unwrap();
        let pos = text.len() / 2;
        let c = if &text[pos..pos + 1] == "A" { "B" } else { "A" };
        text.replace_range(pos..pos + 1, c);
        let err = decrypt(text.as_bytes(), "s.age", &ids(me)).unwrap_err();
        assert!(
            err.to_string().contains("damaged or was tampered with"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_not_age_says_so() {
        for data in [&b""[..], b"[files]\nx = \"1\"\n", b"\x00\x01garbage"] {
            let err = check_age_format(data, "secrets/dev.age").unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("`secrets/dev.age` is not an age-encrypted file"),
                "{err}"
            );
        }
        assert!(check_age_format(b"age-encryption.org/v1\n-> X25519", "s").is_ok());
        assert!(check_age_format(b"\n-----BEGIN AGE ENCRYPTED FILE-----\n", "s").is_ok());
    }

    #[test]
    fn cleartext_shape_is_checked() {
        let s = Secrets::parse(
            "secrets/p.age",
            "[components.app]\npw = \"abc\"\n[hosts.db.data]\nt = \"x\"\n[files]\n\"k.pem\" = \"KEY\"\n"
                .into(),
        )
        .unwrap();
        assert_eq!(
            s.names(),
            ["components.app.pw", "files.k.pem", "hosts.db.data.t"]
        );
        let err = Secrets::parse("secrets/p.age", "\n[component.app]\n".into()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown section `component` in secrets/p.age:2:2 (did you mean `components`?)"
        );
    }
}
