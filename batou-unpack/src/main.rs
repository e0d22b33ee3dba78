//! `batou-unpack`: installs an agent on a host from a zstd stream on stdin.
//!
//! The controller sends the agent compressed, so something on the host has to decompress it,
//! and a host needs nothing but sshd and a shell: no `zstd`, no `gzip`. This small static
//! program is that something. It is sent uncompressed once per host and cached by its own
//! SHA-256 beside the agents; each agent after it travels compressed.
//!
//! - `batou-unpack <sha256> <target>`: decompress stdin into a temporary file beside
//!   `<target>` (created with its final mode), check the result's SHA-256, sync it, rename it
//!   to `<target>`, sync the directory, then prune the directory: keep `<target>` and the most
//!   recently installed other entry, remove the rest.
//! - `batou-unpack self-install <sha256> <target>`: the same checks for this program itself,
//!   just uploaded to a temporary path: hash, sync, rename, prune.
//!
//! Errors go to stderr as one line each and end the program with status 1; a partial or
//! corrupt result is never renamed into place.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sha2::Digest;

/// How many entries a cache directory keeps: the current one and the previous one.
const KEEP: usize = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [cmd, sha256, target] if cmd == "self-install" => self_install(sha256, Path::new(target)),
        [sha256, target] => unpack(sha256, Path::new(target)),
        _ => Err("usage: batou-unpack [self-install] <sha256> <target>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "batou-unpack: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Decompresses stdin into `target`, checked against `expected`; then prunes.
fn unpack(expected: &str, target: &Path) -> Result<(), String> {
    let tmp = temporary(target);
    let written = write_checked(&tmp, expected);
    if let Err(message) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(message);
    }
    install(&tmp, target)?;
    prune(target);
    Ok(())
}

fn write_checked(tmp: &Path, expected: &str) -> Result<(), String> {
    // The agent carries no secret and may be run by the `become` user: readable by all.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(tmp)
        .map_err(|e| format!("cannot create `{}`: {e}", tmp.display()))?;
    let mut decoder = zstd::stream::read::Decoder::new(std::io::stdin().lock())
        .map_err(|e| format!("cannot start decompressing: {e}"))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = decoder
            .read(&mut buf)
            .map_err(|e| format!("cannot decompress the upload: {e}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| format!("cannot write `{}`: {e}", tmp.display()))?;
    }
    let actual = hex(&hasher.finalize());
    if actual != expected {
        return Err(format!(
            "the upload is corrupt: sha256 {actual}, expected {expected}"
        ));
    }
    file.sync_all()
        .map_err(|e| format!("cannot sync `{}`: {e}", tmp.display()))
}

/// Checks that this program's SHA-256 is `expected` and renames it to `target`.
fn self_install(expected: &str, target: &Path) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let actual = sha256_file(&me)?;
    if actual != expected {
        let _ = std::fs::remove_file(&me);
        return Err(format!(
            "the upload is corrupt: sha256 {actual}, expected {expected}"
        ));
    }
    File::open(&me)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot sync `{}`: {e}", me.display()))?;
    install(&me, target)?;
    prune(target);
    Ok(())
}

/// Renames `tmp` to `target` and syncs the directory, so the rename is durable.
fn install(tmp: &Path, target: &Path) -> Result<(), String> {
    if let Err(e) = std::fs::rename(tmp, target) {
        let _ = std::fs::remove_file(tmp);
        return Err(format!("cannot install `{}`: {e}", target.display()));
    }
    if let Some(dir) = target.parent() {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Removes every cached entry of `target`'s directory (names of 64 hex digits) except
/// `target` and the most recently installed other one. Best effort: an entry another
/// upload removes first is no error.
fn prune(target: &Path) {
    let Some(dir) = target.parent() else { return };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut others: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| is_digest(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .filter(|p| p != target)
        .filter_map(|p| {
            let modified = std::fs::symlink_metadata(&p).ok()?.modified().ok()?;
            Some((modified, p))
        })
        .collect();
    others.sort();
    let remove = others.len().saturating_sub(KEEP - 1);
    for (_, path) in others.into_iter().take(remove) {
        let _ = std::fs::remove_file(path);
    }
}

fn is_digest(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `.<name>.<pid>.tmp` beside `target`: hidden, so that pruning never sees it.
fn temporary(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

fn sha256_file(path: &Path) -> Result<String, String> {
    let mut file =
        File::open(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
