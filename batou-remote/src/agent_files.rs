//! The agent's files on the controller: finding the optimised static agent that is shipped
//! (whatever profile the controller itself was built with), checking that a binary is a
//! static executable and for which platform, and its compressed form.
//!
//! The stock agent is `batou-agent`, built by `scripts/build-agent` with the `agent`
//! profile and statically linked, beside `batou-unpack`, which installs it on hosts. A
//! controller looks for both in this order:
//!
//! 1. the directory `$BATOU_AGENT_DIR`;
//! 2. in a cargo target directory (`<target>/<profile>/batou-remote`), the agent build
//!    `<target>/x86_64-unknown-linux-gnu/agent/` (what `scripts/build-agent` prints);
//! 3. the directory of the controller's own executable (an installation that put the three
//!    programs side by side).
//!
//! A dynamically linked binary is never shipped: it would need this machine's libc on every
//! host.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use batou_core::ConfigError;

/// The environment variable that names the directory holding `batou-agent` and
/// `batou-unpack`.
pub const AGENT_DIR_ENV: &str = "BATOU_AGENT_DIR";

/// The target the shipped agents are built for.
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The zstd level agents are compressed with: the smallest upload; compressing takes a few
/// seconds once per build, since the result is cached.
const LEVEL: i32 = 19;

/// The stock agent and `batou-unpack`, found as the module documentation says.
pub fn stock() -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = agent_dir()?;
    Ok((dir.join("batou-agent"), dir.join("batou-unpack")))
}

/// `batou-unpack`, found as the module documentation says.
pub fn unpack() -> anyhow::Result<PathBuf> {
    Ok(agent_dir()?.join("batou-unpack"))
}

fn agent_dir() -> anyhow::Result<PathBuf> {
    let has_both =
        |dir: &Path| dir.join("batou-agent").is_file() && dir.join("batou-unpack").is_file();
    if let Some(dir) = std::env::var_os(AGENT_DIR_ENV) {
        let dir = PathBuf::from(dir);
        if !has_both(&dir) {
            return Err(ConfigError::new(format!(
                "`{AGENT_DIR_ENV}` is `{}`, which does not hold `batou-agent` and `batou-unpack`",
                dir.display()
            ))
            .hint("build them with `scripts/build-agent`, which prints their directory")
            .into());
        }
        return Ok(dir);
    }
    let me = std::env::current_exe().context("cannot find this executable")?;
    let here = me.parent().map(Path::to_path_buf).unwrap_or_default();
    if let Some(target) = cargo_target_dir(&here) {
        let dir = target.join(AGENT_TARGET).join("agent");
        if has_both(&dir) {
            return Ok(dir);
        }
        return Err(ConfigError::new(format!(
            "the agent for hosts is not built: `{}` lacks `batou-agent` and `batou-unpack`",
            dir.display()
        ))
        .hint(format!(
            "run `scripts/build-agent` (the static `agent` build), or set `{AGENT_DIR_ENV}`"
        ))
        .into());
    }
    if has_both(&here) {
        return Ok(here);
    }
    Err(ConfigError::new(format!(
        "cannot find the agent for hosts: `batou-agent` and `batou-unpack` are not beside `{}`",
        me.display()
    ))
    .hint(format!(
        "install them beside `batou-remote`, or set `{AGENT_DIR_ENV}` to their directory"
    ))
    .into())
}

/// The target directory when `dir` is one of cargo's profile directories (`target/debug`,
/// `target/release`, `target/<triple>/<profile>`): cargo leaves `.fingerprint` there.
fn cargo_target_dir(dir: &Path) -> Option<PathBuf> {
    if !dir.join(".fingerprint").is_dir() {
        return None;
    }
    let parent = dir.parent()?;
    // `target/<triple>/<profile>`: target triples have dashes, profile directories do not
    // need them, and cargo's own are `debug` and `release`.
    let is_triple = parent
        .file_name()
        .is_some_and(|n| n.to_string_lossy().matches('-').count() >= 2);
    if is_triple {
        parent.parent().map(Path::to_path_buf)
    } else {
        Some(parent.to_path_buf())
    }
}

/// What `uname -sm` says on a host that can run the executable at `path` (`Linux x86_64`),
/// read from its ELF header; an error when it is no static Linux executable.
pub fn platform(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let elf = Elf::parse(&bytes).with_context(|| format!("`{}`", path.display()))?;
    if elf.interpreter {
        return Err(ConfigError::new(format!(
            "`{}` is dynamically linked: hosts would need this machine's libc",
            path.display()
        ))
        .hint("ship the static build of `scripts/build-agent` (the `agent` profile)")
        .into());
    }
    let arch = match elf.machine {
        62 => "x86_64",
        183 => "aarch64",
        3 => "i686",
        other => bail!(
            "`{}` is built for an unknown machine ({other})",
            path.display()
        ),
    };
    Ok(format!("Linux {arch}"))
}

/// What the ELF header says.
struct Elf {
    machine: u16,
    /// Whether it asks for a program interpreter (the dynamic loader).
    interpreter: bool,
}

impl Elf {
    fn parse(b: &[u8]) -> anyhow::Result<Elf> {
        // 64-bit little-endian ELF only: what Linux on x86_64 and aarch64 runs.
        if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
            bail!("not a 64-bit little-endian ELF executable");
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let machine = u16_at(0x12);
        let phoff = usize::try_from(u64_at(0x20))?;
        let phentsize = usize::from(u16_at(0x36));
        let phnum = usize::from(u16_at(0x38));
        let mut interpreter = false;
        for i in 0..phnum {
            let at = phoff + i * phentsize;
            if at + 4 > b.len() {
                bail!("truncated program headers");
            }
            // PT_INTERP
            if u32_at(at) == 3 {
                interpreter = true;
            }
        }
        Ok(Elf {
            machine,
            interpreter,
        })
    }
}

/// The executable at `path` (whose SHA-256 is `sha256`) compressed with zstd. Compressed
/// once and kept in `$XDG_CACHE_HOME/batou/compressed/` (else `~/.cache/...`), named by the
/// SHA-256; in memory only when that cannot be written.
pub fn compressed(path: &Path, sha256: &str) -> anyhow::Result<Vec<u8>> {
    let cache = cache_dir().map(|d| d.join(format!("{sha256}.zst")));
    if let Some(cached) = &cache
        && let Ok(bytes) = std::fs::read(cached)
        && decompresses_to(&bytes, sha256)
    {
        return Ok(bytes);
    }
    let raw = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let bytes = zstd::bulk::compress(&raw, LEVEL)
        .with_context(|| format!("cannot compress `{}`", path.display()))?;
    if let Some(cached) = cache {
        // Best effort, atomic: a temporary file beside it, renamed.
        let tmp = cached.with_extension(format!("zst.{}.tmp", std::process::id()));
        if std::fs::write(&tmp, &bytes).is_ok() && std::fs::rename(&tmp, &cached).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(bytes)
}

/// Whether `bytes` decompress to content with SHA-256 `sha256` (a cache entry cut short or
/// damaged is compressed again).
fn decompresses_to(bytes: &[u8], sha256: &str) -> bool {
    use sha2::Digest;
    let Ok(raw) = zstd::stream::decode_all(bytes) else {
        return false;
    };
    let digest: String = sha2::Sha256::digest(&raw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    digest == sha256
}

fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let dir = base.join("batou").join("compressed");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_refused_and_names_its_platform() {
        // This test binary is a dynamically linked x86_64 executable.
        let me = std::env::current_exe().unwrap();
        let err = platform(&me).unwrap_err();
        assert!(
            format!("{err:#}").contains("is dynamically linked"),
            "{err:#}"
        );
        let bytes = std::fs::read(&me).unwrap();
        let elf = Elf::parse(&bytes).unwrap();
        assert_eq!(elf.machine, 62);
        assert!(Elf::parse(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn cargo_profile_directories_lead_to_the_target_directory() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir_all(target.join("debug/.fingerprint")).unwrap();
        std::fs::create_dir_all(target.join("x86_64-unknown-linux-gnu/agent/.fingerprint"))
            .unwrap();
        assert_eq!(
            cargo_target_dir(&target.join("debug")),
            Some(target.clone())
        );
        assert_eq!(
            cargo_target_dir(&target.join("x86_64-unknown-linux-gnu/agent")),
            Some(target.clone())
        );
        assert_eq!(cargo_target_dir(&target), None);
    }
}
