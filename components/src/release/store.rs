//! The store of shipped bundles on a host, `<base_dir>/releases/.store/`: one file per
//! digest, written as `<digest>.part` and renamed to `<digest>` only after its SHA-256 was
//! checked, so that only whole and verified bundles are ever unpacked.
//!
//! The controller asks [`check`] what the host has (through the agent binary's `bundle-check`
//! role over SSH, or in process for `batou-local`), sends what is missing after the bytes a
//! partial file already holds, and lets [`install`] verify and rename it.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::Digest;

pub use batou_core::bundle::StoreState;

/// The store entry of `digest` below `store`.
pub fn entry(store: &Path, digest: &str) -> PathBuf {
    store.join(digest)
}

/// The partial upload of `digest` below `store`.
pub fn partial(store: &Path, digest: &str) -> PathBuf {
    store.join(format!("{digest}.part"))
}

/// What the store holds of `digest`, creating the store (0700) when missing. A present
/// entry is hashed: one whose content differs from its digest is removed and reported as
/// [`StoreState::Corrupt`].
pub fn check(store: &Path, digest: &str) -> anyhow::Result<StoreState> {
    check_digest(digest)?;
    create_store(store)?;
    let path = entry(store, digest);
    if path.exists() {
        if sha256(&path)? == digest {
            return Ok(StoreState::Present);
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the corrupt `{}`", path.display()))?;
        return Ok(StoreState::Corrupt);
    }
    match std::fs::metadata(partial(store, digest)) {
        Ok(m) => Ok(StoreState::Partial { bytes: m.len() }),
        Err(_) => Ok(StoreState::Missing),
    }
}

/// Verifies the partial upload of `digest` and renames it into the store; a partial file
/// whose hash differs is removed, so that the next upload starts over.
pub fn install(store: &Path, digest: &str) -> anyhow::Result<()> {
    check_digest(digest)?;
    let part = partial(store, digest);
    let actual = sha256(&part)?;
    if actual != digest {
        let _ = std::fs::remove_file(&part);
        bail!("the uploaded bundle is corrupt: sha256 {actual}, expected {digest}; it was removed");
    }
    std::fs::File::open(&part)?.sync_all()?;
    let target = entry(store, digest);
    std::fs::rename(&part, &target)
        .with_context(|| format!("cannot install the bundle as `{}`", target.display()))?;
    std::fs::File::open(store)?.sync_all()?;
    Ok(())
}

/// Copies the controller's archive into a store on this machine (`batou-local`), resuming a
/// partial copy; returns the bytes copied and where the copy resumed, or `None` when the
/// store has the bundle.
pub fn ensure_local(
    store: &Path,
    digest: &str,
    archive: &Path,
) -> anyhow::Result<Option<(u64, u64)>> {
    use std::io::{Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let from = match check(store, digest)? {
        StoreState::Present => return Ok(None),
        StoreState::Partial { bytes } => bytes,
        StoreState::Missing | StoreState::Corrupt => 0,
    };
    let mut source = std::fs::File::open(archive)
        .with_context(|| format!("cannot read the bundle `{}`", archive.display()))?;
    source.seek(std::io::SeekFrom::Start(from))?;
    let mut part = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(partial(store, digest))?;
    let copied = std::io::copy(&mut source, &mut part)?;
    part.flush()?;
    drop(part);
    install(store, digest)?;
    Ok(Some((copied, from)))
}

/// The hex SHA-256 of a file.
pub fn sha256(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(super::bundle::hex(&hasher.finalize()))
}

fn check_digest(digest: &str) -> anyhow::Result<()> {
    if digest.len() != 64 || !digest.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("`{digest}` is not a SHA-256 in hex");
    }
    Ok(())
}

fn create_store(store: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if store.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(store)
        .with_context(|| format!("cannot create the bundle store `{}`", store.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_copy_resumes_and_a_corrupt_entry_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("bundle");
        std::fs::write(&archive, b"0123456789").unwrap();
        let digest = sha256(&archive).unwrap();
        let store = dir.path().join("store");
        assert_eq!(check(&store, &digest).unwrap(), StoreState::Missing);
        std::fs::write(partial(&store, &digest), b"0123").unwrap();
        assert_eq!(
            check(&store, &digest).unwrap(),
            StoreState::Partial { bytes: 4 }
        );
        assert_eq!(
            ensure_local(&store, &digest, &archive).unwrap(),
            Some((6, 4))
        );
        assert_eq!(check(&store, &digest).unwrap(), StoreState::Present);
        assert_eq!(ensure_local(&store, &digest, &archive).unwrap(), None);
        std::fs::write(entry(&store, &digest), b"garbage").unwrap();
        assert_eq!(check(&store, &digest).unwrap(), StoreState::Corrupt);
        assert_eq!(check(&store, &digest).unwrap(), StoreState::Missing);
        std::fs::write(partial(&store, &digest), b"01234x6789").unwrap();
        let err = install(&store, &digest).unwrap_err().to_string();
        assert!(err.contains("the uploaded bundle is corrupt"), "{err}");
        assert!(!partial(&store, &digest).exists());
    }
}
