//! SHA-256 digests as lower-case hex: of bytes in memory and of files on the host, and the
//! check of a digest given in an environment.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// The SHA-256 digest of `data`, as 64 lower-case hex digits.
pub(crate) fn sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// The SHA-256 digest of the file at `path`, read in blocks.
pub(crate) fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read `{}`", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// `digest` (the value of attribute `what`) in lower case, if it is 64 hex digits.
pub(crate) fn parse_sha256(what: &str, digest: &str) -> anyhow::Result<String> {
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "`{what}` must be a SHA-256 digest of 64 hex digits, not `{}`",
            digest.escape_debug()
        );
    }
    Ok(digest.to_ascii_lowercase())
}

/// The first 12 digits of a digest or commit, for messages.
pub(crate) fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_lower_case_hex() {
        assert_eq!(
            sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(sha256_file(&path).unwrap(), sha256(b"abc"));
        assert_eq!(
            parse_sha256("sha256", &sha256(b"abc").to_uppercase()).unwrap(),
            sha256(b"abc")
        );
        let err = parse_sha256("sha256", "abc").unwrap_err().to_string();
        assert_eq!(
            err,
            "`sha256` must be a SHA-256 digest of 64 hex digits, not `abc`"
        );
    }
}
