//! Age keys: identities for decryption, recipients for encryption, and the two operations.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{ConfigError, Place};

/// Environment variable naming an identity file, used when `--identity` is not given.
pub const IDENTITY_ENV: &str = "BATOU_IDENTITY";

/// The user's directories, with the values the caller read from `HOME` and
/// `XDG_CONFIG_HOME` (an empty value counts as unset).
#[derive(Debug, Clone, Default)]
pub struct UserDirs {
    /// The user's home directory (`HOME`).
    pub home: Option<PathBuf>,
    /// The user's configuration directory (`XDG_CONFIG_HOME`).
    pub config_home: Option<PathBuf>,
}

impl UserDirs {
    /// From the values of `HOME` and `XDG_CONFIG_HOME`.
    pub fn new(home: Option<OsString>, config_home: Option<OsString>) -> Self {
        let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
        UserDirs {
            home: set(home),
            config_home: set(config_home),
        }
    }

    /// The default identity file: `$XDG_CONFIG_HOME/batou/identity.txt` or
    /// `~/.config/batou/identity.txt`.
    pub fn default_identity_file(&self) -> Option<PathBuf> {
        let config = self
            .config_home
            .clone()
            .or_else(|| self.home.as_ref().map(|h| h.join(".config")))?;
        Some(config.join("batou/identity.txt"))
    }
}

/// Where identities for decryption come from.
#[derive(Debug, Clone, Default)]
pub struct IdentitySource {
    /// The identity file used alone, when one was named.
    explicit: Option<PathBuf>,
    dirs: UserDirs,
}

/// Identities loaded for decryption, and what was tried (for error hints).
pub struct Identities {
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
    /// The identity files that were looked at.
    pub tried: Vec<String>,
    /// The identity files that could not be used, each with why.
    pub skipped: Vec<String>,
    /// The default identity file, named in the hint when nothing was found.
    default_file: Option<PathBuf>,
}

impl IdentitySource {
    /// `explicit` (`--identity FILE`), else `from_env` (the value of [`IDENTITY_ENV`] as the
    /// caller read it; empty counts as unset), else the default files below `dirs`.
    pub fn new(explicit: Option<PathBuf>, from_env: Option<OsString>, dirs: UserDirs) -> Self {
        let explicit = explicit.or_else(|| from_env.filter(|v| !v.is_empty()).map(PathBuf::from));
        IdentitySource { explicit, dirs }
    }

    /// The default identity file (see [`UserDirs::default_identity_file`]).
    pub fn default_file(&self) -> Option<PathBuf> {
        self.dirs.default_identity_file()
    }

    fn candidates(&self) -> Vec<PathBuf> {
        if let Some(path) = &self.explicit {
            return vec![path.clone()];
        }
        let mut out: Vec<PathBuf> = self.default_file().into_iter().collect();
        if let Some(home) = &self.dirs.home {
            let ssh = home.join(".ssh");
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
            default_file: self.default_file(),
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
                identities
                    .default_file
                    .as_ref()
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

/// Refuses a file that is not age at all (neither binary nor armored), before any identity
/// is looked for: a cleartext or empty file is a mistake, not damage.
pub(super) fn check_age_format(data: &[u8], path: &str) -> Result<(), ConfigError> {
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
            default_file: None,
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
    fn identity_sources_take_the_callers_values() {
        let dirs = UserDirs::new(Some("/home/u".into()), None);
        let source = IdentitySource::new(None, None, dirs.clone());
        assert_eq!(
            source.candidates(),
            [
                PathBuf::from("/home/u/.config/batou/identity.txt"),
                PathBuf::from("/home/u/.ssh/id_ed25519"),
                PathBuf::from("/home/u/.ssh/id_rsa"),
            ]
        );
        // `BATOU_IDENTITY`'s value wins over the defaults, `--identity` over both; an empty
        // value counts as unset.
        let from_env = IdentitySource::new(None, Some("/env/id".into()), dirs.clone());
        assert_eq!(from_env.candidates(), [PathBuf::from("/env/id")]);
        let explicit = IdentitySource::new(Some("/cli/id".into()), Some("/env/id".into()), dirs);
        assert_eq!(explicit.candidates(), [PathBuf::from("/cli/id")]);
        let empty = IdentitySource::new(None, Some("".into()), UserDirs::new(None, None));
        assert!(empty.candidates().is_empty());
        let xdg = UserDirs::new(Some("/home/u".into()), Some("/cfg".into()));
        assert_eq!(
            xdg.default_identity_file(),
            Some(PathBuf::from("/cfg/batou/identity.txt"))
        );
    }
}
