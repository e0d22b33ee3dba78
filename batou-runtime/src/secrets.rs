//! `batou-local secrets ...` and `batou-remote secrets ...` (and `<project binary> secrets`):
//! create, edit, show and share an environment's secrets.
//!
//! The cleartext exists only in this process's memory and, while `$EDITOR` runs, in a 0600
//! file inside a private 0700 temporary directory (on `$XDG_RUNTIME_DIR` or `/dev/shm` when
//! available), which is removed in every outcome. An edit that does not validate is never
//! lost: it is reopened, or saved aside encrypted as `secrets/<env>.age.rejected`, from which
//! the next `secrets edit` resumes.

use std::ffi::OsString;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::Exit;
use anyhow::{Context, bail};
use batou_core::secrets::{
    self, IdentitySource, Recipient, Secrets, parse_recipients, recipients_path, secrets_path,
};
use batou_core::{ConfigError, Environment, Registry};
use clap::{Parser, Subcommand};

/// Manage an environment's age-encrypted secrets (`secrets/<ENV>.age`).
#[derive(Debug, Parser)]
#[command(name = "secrets")]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// The deployment repository (default: the nearest directory above the current one that
    /// has `environments/`).
    #[arg(long, short = 'C', value_name = "DIR", global = true)]
    project: Option<PathBuf>,
    /// The age identity or SSH private key to decrypt with (default: `$BATOU_IDENTITY`,
    /// `~/.config/batou/identity.txt`, `~/.ssh/id_ed25519`, `~/.ssh/id_rsa`).
    #[arg(long, value_name = "FILE", global = true)]
    identity: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a new age identity at `~/.config/batou/identity.txt` and print its public key.
    Keygen,
    /// Create the secrets file of an environment, encrypted to the given recipients (default:
    /// the public key of your own identity).
    Create {
        environment: String,
        /// An age public key (`age1...`) or SSH public key (`ssh-ed25519 ...`); repeatable.
        #[arg(long = "recipient", value_name = "KEY")]
        recipients: Vec<String>,
    },
    /// Decrypt to a private temporary file, open `$EDITOR`, validate and re-encrypt.
    Edit { environment: String },
    /// List the names of the secrets (values only with `--values`).
    Show {
        environment: String,
        /// Print the whole cleartext.
        #[arg(long)]
        values: bool,
    },
    /// Add recipients (public keys) and re-encrypt.
    AddRecipient {
        environment: String,
        /// An age public key or SSH public key, with an optional comment (a name).
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Write `secrets/<ENV>.names` again from the decrypted secrets: the names `check` reads
    /// without an identity (every command that writes the secrets writes it too).
    Index { environment: String },
    /// Remove a recipient, by key or by its comment, and re-encrypt.
    RemoveRecipient {
        environment: String,
        /// The key (`age1...`, `ssh-ed25519 AAAA...`) or the comment after it.
        #[arg(value_name = "KEY_OR_NAME")]
        recipient: String,
    },
}

/// The command these commands are run as (`batou-remote secrets`), for hints.
static COMMAND: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn command() -> &'static str {
    COMMAND.get().map_or("batou-remote secrets", String::as_str)
}

/// Runs `<program> secrets ...`; `args` starts with the program name, then `secrets`.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let program = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map_or("batou-remote".into(), |n| n.to_string_lossy().into_owned());
    let _ = COMMAND.set(format!("{program} secrets"));
    // `batou-remote secrets edit x` parses as `secrets edit x`.
    let args = Args::parse_from(
        args.into_iter()
            .enumerate()
            .filter_map(|(i, a)| (i != 1).then_some(a)),
    );
    match run(args) {
        Ok(exit) => exit.into(),
        Err(err) => {
            let exit = Exit::of_error(&err);
            crate::print_error(&err, false);
            exit.into()
        }
    }
}

struct Repo {
    root: PathBuf,
    environment: String,
    identities: IdentitySource,
}

impl Repo {
    fn secrets(&self) -> PathBuf {
        self.root.join(secrets_path(&self.environment))
    }

    fn rejected(&self) -> PathBuf {
        self.root
            .join(format!("{}.rejected", secrets_path(&self.environment)))
    }

    fn recipients_file(&self) -> PathBuf {
        self.root.join(recipients_path(&self.environment))
    }

    /// The environment, checked for hosts and component names (not for component types,
    /// which may live in the project's own binary).
    fn environment(&self) -> Result<Environment, ConfigError> {
        Environment::load(&self.root, &self.environment, &Registry::any_type())
    }

    fn recipients(&self) -> anyhow::Result<Vec<Recipient>> {
        read_recipients(&self.root, &self.environment)
    }

    /// The decrypted cleartext of `path` (the secrets file or a rejected edit).
    fn decrypt(&self, path: &Path) -> anyhow::Result<String> {
        let data =
            std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
        let shown = path
            .strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string();
        let identities = self.identities.load()?;
        Ok(secrets::decrypt(&data, &shown, &identities)?)
    }

    /// Parses `text` and checks it against the environment; returns the secrets' names.
    fn validate(&self, text: &str) -> Result<Vec<String>, ConfigError> {
        let parsed = Secrets::parse(&secrets_path(&self.environment), text.to_string())?;
        let names = parsed.names();
        self.environment()?
            .apply_secrets(parsed, &Registry::any_type())?;
        Ok(names)
    }

    /// Encrypts `text` into `path`; when that is the secrets file, its names index too.
    fn encrypt_to(&self, path: &Path, text: &str, recipients: &[Recipient]) -> anyhow::Result<()> {
        if path == self.secrets() {
            return store_secrets(&self.root, &self.environment, text, recipients);
        }
        let data = secrets::encrypt(text, recipients)?;
        write_atomic(path, &data, 0o644)
    }
}

/// Encrypts `text` to `recipients` as `secrets/<env>.age` and writes its names index
/// `secrets/<env>.names` beside it (both atomically, the secrets first), so that `check`
/// never sees an index older than the secrets without saying so.
pub(crate) fn store_secrets(
    root: &Path,
    environment: &str,
    text: &str,
    recipients: &[Recipient],
) -> anyhow::Result<()> {
    let data = secrets::encrypt(text, recipients)?;
    let relative = secrets_path(environment);
    let path = root.join(&relative);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create `{}`", dir.display()))?;
    }
    write_atomic(&path, &data, 0o644).with_context(|| format!("cannot write `{relative}`"))?;
    write_index(root, environment, text, &data)
}

/// Writes `secrets/<env>.names` for the cleartext `text` whose encrypted form is `data`.
fn write_index(root: &Path, environment: &str, text: &str, data: &[u8]) -> anyhow::Result<()> {
    let index = secrets::index_text(environment, text, data)?;
    let relative = secrets::index_path(environment);
    write_atomic(&root.join(&relative), index.as_bytes(), 0o644)
        .with_context(|| format!("cannot write `{relative}`"))
}

/// The recipients of `environment`'s secrets, from `secrets/<env>.recipients`: an error with
/// a hint when the file is missing or lists nobody.
pub(crate) fn read_recipients(root: &Path, environment: &str) -> anyhow::Result<Vec<Recipient>> {
    let relative = recipients_path(environment);
    let text = match std::fs::read_to_string(root.join(recipients_path(environment))) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::new(format!("`{relative}` does not exist"))
                .hint(format!(
                    "create the secrets with `{cmd} create {}`",
                    environment,
                    cmd = command()
                ))
                .into());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read `{relative}`")),
    };
    let recipients = parse_recipients(&relative, &text)?;
    if recipients.is_empty() {
        return Err(
            ConfigError::new(format!("`{relative}` lists no recipients"))
                .hint(format!(
                    "add a public key with `{} add-recipient`",
                    command()
                ))
                .into(),
        );
    }
    Ok(recipients)
}

fn run(args: Args) -> anyhow::Result<Exit> {
    let identities = crate::identity_source(args.identity.clone());
    let repo = |environment: &str| -> anyhow::Result<Repo> {
        let root = match &args.project {
            Some(dir) => std::path::absolute(dir)?,
            None => crate::find_project(&std::env::current_dir()?)?,
        };
        Ok(Repo {
            root,
            environment: environment.to_string(),
            identities: identities.clone(),
        })
    };
    match &args.command {
        Command::Keygen => keygen(),
        Command::Create {
            environment,
            recipients,
        } => create(&repo(environment)?, recipients),
        Command::Edit { environment } => edit(&repo(environment)?),
        Command::Show {
            environment,
            values,
        } => show(&repo(environment)?, *values),
        Command::AddRecipient { environment, keys } => add_recipients(&repo(environment)?, keys),
        Command::Index { environment } => index(&repo(environment)?),
        Command::RemoveRecipient {
            environment,
            recipient,
        } => remove_recipient(&repo(environment)?, recipient),
    }
}

fn keygen() -> anyhow::Result<Exit> {
    let path = crate::identity_source(None)
        .default_file()
        .context("cannot find the home directory")?;
    if path.exists() {
        return Err(
            ConfigError::new(format!("`{}` already exists", path.display()))
                .hint(format!(
                    "its public key: `{} create` uses it by default",
                    command()
                ))
                .into(),
        );
    }
    let (secret, public) = secrets::generate_identity();
    let dir = path.parent().expect("the identity file has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let text = format!(
        "# batou identity, created {}\n# public key: {public}\n{secret}\n",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    write_atomic(&path, text.as_bytes(), 0o600)?;
    eprintln!("created `{}`; its public key:", path.display());
    println!("{public}");
    Ok(Exit::Success)
}

const TEMPLATE: &str = "\
# Secrets of this environment, the same shape as its overrides:
#
# [components.app]
# db_password = \"...\"
#
# [hosts.db1.data]
# replication_token = \"...\"
#
# [files]
# \"shop.key\" = \"\"\"
# -----BEGIN PRIVATE KEY-----
# ...
# \"\"\"
";

fn create(repo: &Repo, keys: &[String]) -> anyhow::Result<Exit> {
    repo.environment()?;
    let relative = secrets_path(&repo.environment);
    if repo.secrets().exists() {
        return Err(ConfigError::new(format!("`{relative}` already exists"))
            .hint(format!(
                "change it with `{cmd} edit {}`",
                repo.environment,
                cmd = command()
            ))
            .into());
    }
    let recipients = if repo.recipients_file().exists() {
        if !keys.is_empty() {
            bail!(
                "`{}` exists already: add keys with `{cmd} add-recipient`",
                recipients_path(&repo.environment),
                cmd = command()
            );
        }
        repo.recipients()?
    } else {
        let keys = if keys.is_empty() {
            let own = repo.identities.public_keys()?;
            if own.is_empty() {
                return Err(
                    ConfigError::new("no recipient given and no identity of yours found")
                        .hint(format!(
                            "create one with `{} keygen`, or pass `--recipient KEY`",
                            command()
                        ))
                        .into(),
                );
            }
            own
        } else {
            keys.to_vec()
        };
        let mut recipients = Vec::new();
        for key in &keys {
            recipients.push(Recipient::parse(key).map_err(ConfigError::new)?);
        }
        let text: String = std::iter::once(
            "# Who can decrypt this environment's secrets: age or SSH public keys, one per line.\n"
                .to_string(),
        )
        .chain(recipients.iter().map(|r| format!("{}\n", r.line())))
        .collect();
        std::fs::create_dir_all(repo.root.join("secrets"))?;
        write_atomic(&repo.recipients_file(), text.as_bytes(), 0o644)?;
        recipients
    };
    repo.encrypt_to(&repo.secrets(), TEMPLATE, &recipients)?;
    eprintln!(
        "created `{relative}` for {} recipient(s); add secrets with `{cmd} edit {}`",
        recipients.len(),
        repo.environment,
        cmd = command()
    );
    Ok(Exit::Success)
}

fn show(repo: &Repo, values: bool) -> anyhow::Result<Exit> {
    let text = repo.decrypt(&repo.secrets())?;
    if values {
        print!("{text}");
        return Ok(Exit::Success);
    }
    let parsed = Secrets::parse(&secrets_path(&repo.environment), text)?;
    for name in parsed.names() {
        println!("{name}");
    }
    Ok(Exit::Success)
}

fn index(repo: &Repo) -> anyhow::Result<Exit> {
    let data = std::fs::read(repo.secrets())
        .with_context(|| format!("cannot read `{}`", secrets_path(&repo.environment)))?;
    let text = repo.decrypt(&repo.secrets())?;
    // Checked like an edit, so that an index never describes secrets that do not validate.
    let names = repo.validate(&text)?;
    write_index(&repo.root, &repo.environment, &text, &data)?;
    eprintln!(
        "wrote `{}`: {} secret name(s)",
        secrets::index_path(&repo.environment),
        names.len()
    );
    Ok(Exit::Success)
}

fn edit(repo: &Repo) -> anyhow::Result<Exit> {
    // Who can read the result is known before anyone types a secret.
    let recipients = repo.recipients()?;
    let rejected = repo.rejected();
    let resumed = rejected.exists();
    let original = if repo.secrets().exists() {
        repo.decrypt(&repo.secrets())?
    } else {
        TEMPLATE.to_string()
    };
    if let Ok(old) = Secrets::parse("", original.clone()) {
        old.register_masks();
    }
    let start = if resumed {
        eprintln!(
            "resuming the edit saved aside in `{}`",
            rejected
                .strip_prefix(&repo.root)
                .unwrap_or(&rejected)
                .display()
        );
        repo.decrypt(&rejected)?
    } else {
        original.clone()
    };

    let dir = private_dir()?;
    let file = dir.path().join(format!("{}.toml", repo.environment));
    write_new(&file, start.as_bytes())?;
    let interactive = std::io::stdin().is_terminal();
    loop {
        run_editor(&file)?;
        let text = std::fs::read_to_string(&file).context("cannot read the edited file")?;
        if text == original {
            if resumed {
                std::fs::remove_file(&rejected)?;
            }
            eprintln!("no changes");
            return Ok(Exit::Success);
        }
        match repo.validate(&text) {
            Ok(names) => {
                repo.encrypt_to(&repo.secrets(), &text, &recipients)?;
                if resumed || rejected.exists() {
                    let _ = std::fs::remove_file(&rejected);
                }
                eprintln!(
                    "saved `{}`: {} secret(s) for {} recipient(s)",
                    secrets_path(&repo.environment),
                    names.len(),
                    recipients.len()
                );
                return Ok(Exit::Success);
            }
            Err(err) => {
                crate::print_error(&anyhow::Error::new(err), false);
                if interactive && ask("edit again? [Y/n] ")? {
                    continue;
                }
                repo.encrypt_to(&rejected, &text, &recipients)?;
                return Err(ConfigError::new(format!(
                    "the secrets were not changed; your edit is kept, encrypted, in `{}`",
                    rejected
                        .strip_prefix(&repo.root)
                        .unwrap_or(&rejected)
                        .display()
                ))
                .hint(format!(
                    "`{cmd} edit {}` resumes from it",
                    repo.environment,
                    cmd = command()
                ))
                .into());
            }
        }
    }
}

fn add_recipients(repo: &Repo, keys: &[String]) -> anyhow::Result<Exit> {
    let mut recipients = repo.recipients()?;
    let mut added = 0;
    for key in keys {
        let new = Recipient::parse(key).map_err(ConfigError::new)?;
        if recipients.iter().any(|r| r.key == new.key) {
            eprintln!("already a recipient: {}", new.line());
            continue;
        }
        recipients.push(new);
        added += 1;
    }
    if added == 0 {
        return Ok(Exit::Success);
    }
    reencrypt(repo, &recipients)?;
    eprintln!(
        "added {added} recipient(s); `{}` is encrypted to {} recipient(s)",
        secrets_path(&repo.environment),
        recipients.len()
    );
    Ok(Exit::Success)
}

fn remove_recipient(repo: &Repo, which: &str) -> anyhow::Result<Exit> {
    let mut recipients = repo.recipients()?;
    let wanted = Recipient::parse(which).map(|r| r.key).unwrap_or_default();
    let before = recipients.len();
    let mut removed = Vec::new();
    recipients.retain(|r| {
        let matches =
            r.key == which || r.key == wanted || (!r.comment.is_empty() && r.comment == which);
        if matches {
            removed.push(r.line());
        }
        !matches
    });
    if recipients.len() == before {
        return Err(ConfigError::new(format!("no recipient matches `{which}`"))
            .hint(format!(
                "recipients: {}",
                repo.recipients()?
                    .iter()
                    .map(Recipient::line)
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
            .into());
    }
    if recipients.is_empty() {
        return Err(ConfigError::new("refusing to remove the last recipient")
            .hint("nobody could decrypt the secrets any more")
            .into());
    }
    reencrypt(repo, &recipients)?;
    eprintln!("removed {}", removed.join(", "));
    eprintln!(
        "they may keep a copy of the secrets they could read: rotate the values with `{cmd} edit {}`",
        repo.environment,
        cmd = command()
    );
    Ok(Exit::Success)
}

/// Re-encrypts the secrets to `recipients`, then writes the recipients file.
fn reencrypt(repo: &Repo, recipients: &[Recipient]) -> anyhow::Result<()> {
    if repo.secrets().exists() {
        let text = repo.decrypt(&repo.secrets())?;
        repo.encrypt_to(&repo.secrets(), &text, recipients)?;
    }
    let old = std::fs::read_to_string(repo.recipients_file())?;
    let comments: String = old
        .lines()
        .take_while(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let text: String = std::iter::once(comments)
        .chain(recipients.iter().map(|r| format!("{}\n", r.line())))
        .collect();
    write_atomic(&repo.recipients_file(), text.as_bytes(), 0o644)
}

/// A 0700 directory for the cleartext, in memory-backed storage when there is one.
fn private_dir() -> anyhow::Result<tempfile::TempDir> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix("batou-secrets-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a private directory in `{}`", base.display()))
}

/// Creates `path` with mode 0600 from the first byte.
fn write_new(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    file.write_all(data)?;
    Ok(())
}

/// Writes `path` atomically with exactly `mode`.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    batou_components::write_atomic(path, data, mode, None, None)
}

/// Runs `$VISUAL` or `$EDITOR` (default `vi`) on `file` and waits for it. A signal that
/// would end this process (Ctrl-C, SIGTERM, SIGHUP) ends the editor instead, so that the
/// caller still removes the cleartext.
#[expect(
    clippy::disallowed_methods,
    reason = "the editor needs the terminal and has no deadline: the user ends it"
)]
fn run_editor(file: &Path) -> anyhow::Result<()> {
    let editor = std::env::var("VISUAL")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .or_else(|| {
            std::env::var("EDITOR")
                .ok()
                .filter(|e| !e.trim().is_empty())
        })
        .unwrap_or_else(|| "vi".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        // The editor's command may carry arguments (`code --wait`): let the shell split it.
        let mut child = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("editor")
            .arg(file)
            .spawn()
            .with_context(|| format!("cannot start the editor `{editor}`"))?;
        loop {
            tokio::select! {
                status = child.wait() => {
                    let status = status?;
                    if !status.success() {
                        bail!("the editor `{editor}` failed ({status}); the secrets were not changed");
                    }
                    return Ok(());
                }
                // The editor got Ctrl-C too and decides what it means.
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {
                    let _ = child.kill().await;
                    bail!("terminated; the secrets were not changed");
                }
                _ = hangup.recv() => {
                    let _ = child.kill().await;
                    bail!("hung up; the secrets were not changed");
                }
            }
        }
    })
}

fn ask(question: &str) -> anyhow::Result<bool> {
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    let answer = answer.trim().to_lowercase();
    Ok(answer.is_empty() || answer == "y" || answer == "yes")
}
