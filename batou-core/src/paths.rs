//! Path handling: resolving component paths and keeping them inside allowed roots.
//!
//! Configure checks paths lexically ([`resolve`], [`is_inside`]): it must not touch the host.
//! On the host, [`AllowedPaths::check`] checks them again on the file system, so that a
//! symlink below an allowed root cannot carry a write (or a read) outside it.

use std::path::{Component as PathPart, Path, PathBuf};
use std::sync::Arc;

use anyhow::bail;

/// The roots a deployment may change on a host (`base_dir` and `allow_paths`), for checking
/// paths on the host itself, where symlinks are resolved.
///
/// Components get it from [`Configure::allowed_paths`](crate::Configure::allowed_paths) and
/// call [`check`](Self::check) in `verify` and `update` before they read or write a path.
#[derive(Debug, Clone, Default)]
pub struct AllowedPaths {
    roots: Arc<[PathBuf]>,
    /// The roots with their symlinks resolved, kept once every root exists (until then a
    /// root may still be created, as a directory or a link, so it is resolved each time).
    /// Clones share it.
    resolved: Arc<std::sync::OnceLock<Vec<PathBuf>>>,
}

impl AllowedPaths {
    /// The given roots, absolute and lexically normalized.
    pub fn new(roots: impl IntoIterator<Item = PathBuf>) -> Self {
        AllowedPaths {
            roots: roots.into_iter().collect(),
            resolved: Arc::default(),
        }
    }

    /// The roots with every symlink resolved.
    fn resolved_roots(&self) -> Vec<PathBuf> {
        if let Some(roots) = self.resolved.get() {
            return roots.clone();
        }
        let roots: Vec<PathBuf> = self.roots.iter().map(|r| resolve_existing(r)).collect();
        if self.roots.iter().all(|r| r.is_dir()) {
            let _ = self.resolved.set(roots.clone());
        }
        roots
    }

    /// Checks that `path`, with every symlink in its parent directories resolved, lies inside
    /// one of the roots (each resolved the same way: a root may itself be reached through a
    /// symlink, such as `/srv -> /data/srv`).
    ///
    /// `path` itself is not followed: components replace a symlink at their path rather than
    /// write through it. Missing directories count as they are written, since whatever
    /// creates them creates real directories below the deepest existing one.
    pub fn check(&self, path: &Path) -> anyhow::Result<()> {
        let path = normalize(path);
        if self.roots.contains(&path) {
            // A root is trusted wherever it leads; only what lies below it is checked.
            return Ok(());
        }
        let real = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => resolve_existing(parent).join(name),
            _ => resolve_existing(&path),
        };
        let roots = self.resolved_roots();
        if !is_inside(&real, &roots) {
            let allowed: Vec<String> = self
                .roots
                .iter()
                .map(|p| format!("`{}`", p.display()))
                .collect();
            bail!(
                "`{}` resolves to `{}` through a symlink, outside what this deployment may change ({})",
                path.display(),
                real.display(),
                allowed.join(", ")
            );
        }
        Ok(())
    }
}

/// `path` made absolute against `base` and normalized without touching the file system.
///
/// `..` is resolved lexically; it never climbs above `/`. When `base` is below a home
/// directory not yet known (`~/...`, as a controller plans for remote hosts), a `path` below
/// `~` is anchored there too.
pub(crate) fn resolve(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() || (base.starts_with("~") && path.starts_with("~")) {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    normalize(&joined)
}

/// Removes `.` and resolves `..` lexically.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            PathPart::CurDir => {}
            PathPart::ParentDir => {
                if !out.pop() {
                    out.push("/");
                }
                if out.as_os_str().is_empty() {
                    out.push("/");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Refuses a value that a host can never accept as a path, link target or user name: one
/// holding a NUL byte. `what` names the attribute (`path`, `target`, `owner`).
pub fn refuse_nul(what: &str, value: &str) -> anyhow::Result<()> {
    if value.contains('\0') {
        bail!(
            "`{what}` contains a NUL byte (`{}`), which no host accepts",
            value.escape_debug()
        );
    }
    Ok(())
}

/// `path` with its deepest existing ancestor canonicalized (every symlink in it resolved) and
/// the missing rest appended as written.
fn resolve_existing(path: &Path) -> PathBuf {
    let path = normalize(path);
    let mut existing = path.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let rest = path
                .strip_prefix(existing)
                .expect("an ancestor is a prefix of its path");
            return if rest.as_os_str().is_empty() {
                real
            } else {
                real.join(rest)
            };
        }
        match existing.parent() {
            Some(parent) => existing = parent,
            None => return path,
        }
    }
}

/// Whether `path` is one of `roots` or lies below one of them.
pub(crate) fn is_inside(path: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().any(|root| path.starts_with(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_base() {
        assert_eq!(
            resolve(Path::new("/srv/work/app"), Path::new("conf/../app.toml")),
            PathBuf::from("/srv/work/app/app.toml")
        );
        assert_eq!(
            resolve(Path::new("/srv/work/app"), Path::new("/etc/motd")),
            PathBuf::from("/etc/motd")
        );
        assert_eq!(
            resolve(Path::new("/srv"), Path::new("../../../etc")),
            PathBuf::from("/etc")
        );
    }

    #[test]
    fn symlinks_below_a_root_cannot_lead_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        let base = real.join("data/srv");
        std::fs::create_dir_all(&base).unwrap();
        std::fs::create_dir(real.join("outside")).unwrap();
        // The root itself is reached through a symlink, as `/srv -> /data/srv`.
        std::os::unix::fs::symlink(&base, real.join("srv")).unwrap();
        std::os::unix::fs::symlink(real.join("outside"), base.join("escape")).unwrap();
        let allowed = AllowedPaths::new([real.join("srv")]);
        allowed.check(&real.join("srv")).unwrap();
        allowed.check(&real.join("srv/work/new/file")).unwrap();
        // A symlink at the path itself is replaced, never followed.
        allowed.check(&real.join("srv/escape")).unwrap();
        let err = allowed
            .check(&real.join("srv/escape/passwd"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("through a symlink, outside what this deployment may change"),
            "{err}"
        );
        assert!(allowed.check(&real.join("srv/escape/deeper/x")).is_err());
        assert!(AllowedPaths::default().check(&real.join("srv/x")).is_err());
    }

    #[test]
    fn inside_means_below_a_root() {
        let roots = [PathBuf::from("/srv/shop"), PathBuf::from("/etc/motd")];
        assert!(is_inside(Path::new("/srv/shop/work/x"), &roots));
        assert!(is_inside(Path::new("/etc/motd"), &roots));
        assert!(!is_inside(Path::new("/srv/shopping"), &roots));
        assert!(!is_inside(Path::new("/etc"), &roots));
    }
}
