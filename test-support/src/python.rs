//! [`wheel`]: a tiny pure-Python wheel written directly (a wheel is a zip file with a
//! `.dist-info` directory), so that tests install packages with no network and no build
//! backend; [`PYTHON`], the interpreter the tests use.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The interpreter the virtualenv tests use: Debian's, whose `venv` module comes with
/// `python3-venv`.
pub const PYTHON: &str = "/usr/bin/python3";

/// The install command printed when [`PYTHON`] cannot make a virtual environment.
pub const PYTHON_INSTALL: &str = "apt-get install -y python3-venv";

/// Panics with the install command unless [`PYTHON`] can make virtual environments.
pub fn require_venv() {
    let ok = std::process::Command::new(PYTHON)
        .args(["-c", "import venv, ensurepip"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the virtualenv tests need `{PYTHON}` with `venv` and `ensurepip`: {PYTHON_INSTALL}"
    );
}

/// Writes the wheel of package `name` (a module `name` whose `__init__.py` is `source`) at
/// `version` into `dir` and returns its path.
pub fn wheel(dir: &Path, name: &str, version: &str, source: &str) -> PathBuf {
    let path = dir.join(format!("{name}-{version}-py3-none-any.whl"));
    let info = format!("{name}-{version}.dist-info");
    let files = [
        (format!("{name}/__init__.py"), source.to_string()),
        (
            format!("{info}/METADATA"),
            format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"),
        ),
        (
            format!("{info}/WHEEL"),
            "Wheel-Version: 1.0\nGenerator: batou-test-support\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .to_string(),
        ),
    ];
    let mut record = String::new();
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default().unix_permissions(0o644);
    for (file, content) in &files {
        zip.start_file(file.as_str(), options).unwrap();
        zip.write_all(content.as_bytes()).unwrap();
        let digest = base64_url(&Sha256::digest(content.as_bytes()));
        record.push_str(&format!("{file},sha256={digest},{}\n", content.len()));
    }
    record.push_str(&format!("{info}/RECORD,,\n"));
    zip.start_file(format!("{info}/RECORD"), options).unwrap();
    zip.write_all(record.as_bytes()).unwrap();
    zip.finish().unwrap();
    path
}

/// URL-safe base64 without padding, as wheel records write digests.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
