//! Lexical path handling: resolving component paths and keeping them inside allowed roots.

use std::path::{Component as PathPart, Path, PathBuf};

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
    fn inside_means_below_a_root() {
        let roots = [PathBuf::from("/srv/shop"), PathBuf::from("/etc/motd")];
        assert!(is_inside(Path::new("/srv/shop/work/x"), &roots));
        assert!(is_inside(Path::new("/etc/motd"), &roots));
        assert!(!is_inside(Path::new("/srv/shopping"), &roots));
        assert!(!is_inside(Path::new("/etc"), &roots));
    }
}
