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

/// `bundle-install <base_dir> <digest>`: verifies the uploaded `<digest>.part` and renames it
/// into the store.
pub(crate) fn install(base_dir: &str, digest: &str) -> u8 {
    let result = crate::agent::resolve_base_dir(base_dir)
        .and_then(|base| store::install(&batou_core::bundle::store_dir(&base), digest));
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("bundle-install: {err:#}");
            1
        }
    }
}
