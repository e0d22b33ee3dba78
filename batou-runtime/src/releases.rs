//! Releases on the machine a binary runs on: the local store of bundles that `batou-local`
//! fills without any connection, and the `bundle-check` and `bundle-install` roles through
//! which a controller fills a remote host's store.

use std::path::Path;

use anyhow::Context;
use batou_components::release::store;
use batou_core::{Event, EventSink, Plan};

/// Copies the bundles of `host`'s steps into the store below `base_dir` when it lacks them
/// (resuming a partial copy), before any step runs.
pub(crate) fn store_locally(
    plan: &Plan,
    host: &str,
    base_dir: &Path,
    sink: &mut dyn EventSink,
) -> anyhow::Result<()> {
    let dir = batou_core::bundle::store_dir(base_dir);
    for bundle in plan.host_bundles(host) {
        let copied = store::ensure_local(&dir, &bundle.digest, Path::new(&bundle.archive))
            .with_context(|| format!("cannot store bundle {}", bundle.short_digest()))?;
        let message = match copied {
            None => {
                sink.event(Event::Detail {
                    host: host.to_string(),
                    component: String::new(),
                    message: format!("bundle {} is in the store already", bundle.short_digest()),
                });
                continue;
            }
            Some((bytes, 0)) => format!("bundle {} stored: {bytes} bytes", bundle.short_digest()),
            Some((bytes, from)) => format!(
                "bundle {} stored: {bytes} bytes (resumed at {from} bytes)",
                bundle.short_digest()
            ),
        };
        sink.event(Event::Log {
            host: host.to_string(),
            component: String::new(),
            message,
        });
    }
    Ok(())
}

/// `bundle-check <base_dir> <digest>`: prints what the host's store holds of the digest as
/// one JSON line (`present`, `partial` with its bytes, `missing`, `corrupt`: removed).
pub(crate) fn check(base_dir: &str, digest: &str) -> u8 {
    let result = crate::agent::resolve_base_dir(base_dir)
        .and_then(|base| store::check(&batou_core::bundle::store_dir(&base), digest));
    match result {
        Ok(state) => {
            println!(
                "{}",
                serde_json::to_string(&state).expect("states serialize")
            );
            0
        }
        Err(err) => {
            eprintln!("bundle-check: {err:#}");
            1
        }
    }
}

/// `bundle-receive <base_dir> <digest> <size>`: appends stdin to the partial upload of the
/// digest; once it holds `size` bytes, verifies it and renames it into the store. Input that
/// ends early leaves the partial file for the next upload to resume.
pub(crate) fn receive(base_dir: &str, digest: &str, size: u64) -> u8 {
    let result = crate::agent::resolve_base_dir(base_dir)
        .and_then(|base| receive_into(&batou_core::bundle::store_dir(&base), digest, size));
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("bundle-receive: {err:#}");
            1
        }
    }
}

fn receive_into(store_dir: &Path, digest: &str, size: u64) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    if let store::StoreState::Present = store::check(store_dir, digest)? {
        return Ok(());
    }
    let path = store::partial(store_dir, digest);
    let mut part = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open `{}`", path.display()))?;
    let mut have = part.metadata()?.len();
    if have > size {
        drop(part);
        let _ = std::fs::remove_file(&path);
        anyhow::bail!(
            "the partial upload holds {have} bytes, more than the bundle's {size}: removed"
        );
    }
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; 1 << 20];
    while have < size {
        let n = stdin.read(&mut buf)?;
        if n == 0 {
            part.sync_all()?;
            anyhow::bail!("the upload ended at {have} of {size} bytes; the next deploy resumes it");
        }
        let n = n.min(usize::try_from(size - have).unwrap_or(usize::MAX));
        part.write_all(&buf[..n])?;
        have += n as u64;
    }
    part.sync_all()?;
    drop(part);
    store::install(store_dir, digest)
}
