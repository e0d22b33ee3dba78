//! File system helpers shared by the components: atomic writes and ownership lookups.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Writes `data` to `path` atomically with exactly `mode`, and the given ownership.
///
/// `owner` and `group` default to the ids of the process, as for any new file; to keep the
/// ownership of a file being replaced, pass its ids.
///
/// The temporary file lives in the same directory and is created with `mode` from the first
/// byte (the umask can only narrow it; it is set exactly before the rename). On any error the
/// temporary file is removed and `path` is left as it was.
pub fn write_atomic(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
) -> anyhow::Result<()> {
    let dir = parent(path)?;
    let tmp = write_temp(path, data, mode, owner, group, true)?;
    let result = std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename into `{}`", path.display()));
    match result {
        Ok(()) => sync_dir(dir),
        Err(_) => {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    result
}

/// Writes `data` with exactly `mode` and the given ownership into a new temporary sibling of
/// `path`, synced when `sync` says so, and returns the temporary file's path: what
/// [`write_atomic`] renames, or what a component hands to
/// [`Deploy::stage_write`](batou_core::Deploy::stage_write) to share one sync with others.
/// On any error the temporary file is removed.
pub(crate) fn write_temp(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
    sync: bool,
) -> anyhow::Result<PathBuf> {
    parent(path)?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o777)
            .open(&tmp)
            .with_context(|| format!("cannot create `{}`", tmp.display()))?;
        file.write_all(data)
            .with_context(|| format!("cannot write `{}`", tmp.display()))?;
        let created = file
            .metadata()
            .with_context(|| format!("cannot inspect `{}`", tmp.display()))?;
        set_ownership(path, &created, owner, group, |o, g| {
            std::os::unix::fs::fchown(&file, o, g)
        })?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set mode of `{}`", tmp.display()))?;
        if sync {
            file.sync_all()
                .with_context(|| format!("cannot sync `{}`", tmp.display()))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Gives a freshly created temporary file or link (with metadata `created`, to be renamed to
/// `path`) the wanted `owner` and `group`, changing only what differs: an unprivileged run
/// that keeps its own ids never needs the privilege to change them.
pub(crate) fn set_ownership(
    path: &Path,
    created: &std::fs::Metadata,
    owner: Option<u32>,
    group: Option<u32>,
    chown: impl FnOnce(Option<u32>, Option<u32>) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let owner = owner.filter(|o| *o != created.uid());
    let group = group.filter(|g| *g != created.gid());
    if owner.is_none() && group.is_none() {
        return Ok(());
    }
    chown(owner, group).with_context(|| {
        format!(
            "cannot give `{}` owner {} and group {}",
            path.display(),
            owner.unwrap_or(created.uid()),
            group.unwrap_or(created.gid()),
        )
    })
}

/// The parent directory of `path`, which must exist.
/// Why an existing file's mode, owner or group differs from what is wanted (`None`: left as
/// it is), as verify reports it: `mode 0600 -> 0640`, `owner differs`, `group differs`.
pub(crate) fn attribute_drift(
    meta: &std::fs::Metadata,
    mode: Option<crate::Mode>,
    owner: Option<u32>,
    group: Option<u32>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    let have = meta.permissions().mode() & 0o7777;
    if let Some(want) = mode
        && want.0 != have
    {
        reasons.push(format!("mode {} -> {want}", crate::Mode(have)));
    }
    if owner.is_some_and(|o| o != meta.uid()) {
        reasons.push("owner differs".into());
    }
    if group.is_some_and(|g| g != meta.gid()) {
        reasons.push("group differs".into());
    }
    reasons
}

pub(crate) fn parent(path: &Path) -> anyhow::Result<&Path> {
    let dir = path
        .parent()
        .with_context(|| format!("`{}` has no parent directory", path.display()))?;
    if !dir.is_dir() {
        bail!("parent directory `{}` does not exist", dir.display());
    }
    Ok(dir)
}

/// A temporary sibling of `path`, unique per process.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.batou-{}.tmp", std::process::id()))
}

/// Syncs a directory so a rename in it is durable; best effort.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The uid of a user name (or a numeric uid).
///
/// Read from `/etc/passwd` rather than through the C library: the agent is a static
/// executable, and a static glibc's `getpwnam` would load the host's NSS modules, which need
/// the exact glibc the agent was built with. Users that only a directory service (LDAP, NIS)
/// knows are therefore given by number.
pub(crate) fn uid(name: &str) -> anyhow::Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    match lookup_id(Path::new("/etc/passwd"), name) {
        Ok(Some(uid)) => Ok(uid),
        Ok(None) => bail!(
            "unknown user `{name}` (not in `/etc/passwd`; give a numeric uid for users of a directory service)"
        ),
        Err(e) => Err(e).with_context(|| format!("cannot look up user `{name}`")),
    }
}

/// The name of the user `uid` in `/etc/passwd`, if it has one there.
pub(crate) fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id: u32 = fields.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

/// The gid of a group name (or a numeric gid), from `/etc/group` (see [`uid`] for why).
pub(crate) fn gid(name: &str) -> anyhow::Result<u32> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    match lookup_id(Path::new("/etc/group"), name) {
        Ok(Some(gid)) => Ok(gid),
        Ok(None) => bail!(
            "unknown group `{name}` (not in `/etc/group`; give a numeric gid for groups of a directory service)"
        ),
        Err(e) => Err(e).with_context(|| format!("cannot look up group `{name}`")),
    }
}

/// The id (third field) of the entry `name` in a file of `/etc/passwd`'s or `/etc/group`'s
/// format.
fn lookup_id(file: &Path, name: &str) -> std::io::Result<Option<u32>> {
    let text = std::fs::read_to_string(file)?;
    Ok(text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    }))
}
