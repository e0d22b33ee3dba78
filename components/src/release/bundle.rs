//! Building a release's bundle on the controller: run the build, then write the listed
//! project files into a deterministic archive (tar, compressed with zstd) named by its
//! SHA-256, kept in the project's `.batou/bundles/`.
//!
//! Deterministic means: entries sorted by path, every mtime 0, owner and group 0 without
//! names, modes kept (permission bits only), no other metadata. Building the same files twice
//! gives the same bytes, so the same digest, and so the same release.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component as PathPart, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use batou_core::{Bundle, ConfigError};
use serde::Serialize;
use sha2::Digest;

/// The zstd level: fast to compress, small enough to ship. Part of the digest: changing it
/// changes every release's identity.
const ZSTD_LEVEL: i32 = 3;
/// How long a build may run.
const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Where the controller keeps bundles, below the project.
const BUNDLES: &str = ".batou/bundles";
/// When this checkout first built each digest: the time in each release's id.
const IDS: &str = ".batou/release-ids.json";

/// What a bundle is made of: its identity on the controller, before building.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Spec {
    /// Run in the project before collecting the files.
    pub(crate) build: Option<Vec<String>>,
    /// Project-relative files and directories.
    pub(crate) files: Vec<String>,
}

/// One entry of the archive.
enum Entry {
    Dir(u32),
    File(u32, PathBuf),
    Link(PathBuf),
}

/// Runs the build (its output shown on stderr, prefixed `build |`), collects the files and
/// writes the bundle; returns it with its id.
pub(crate) fn build(project: &Path, spec: &Spec) -> anyhow::Result<Bundle> {
    if let Some(argv) = &spec.build {
        eprintln!("build | {}", argv.join(" "));
        let out = crate::cmd(argv.clone())
            .cwd(project)
            .timeout(BUILD_TIMEOUT)
            .run_streaming(|_, line| eprintln!("build | {}", batou_core::redact::mask(line)))
            .with_context(|| format!("cannot run the build `{}`", argv.join(" ")))?;
        if !out.success() {
            return Err(ConfigError::new(format!(
                "the build `{}` failed: {}",
                argv.join(" "),
                out.ending()
            ))
            .hint("its output is above; nothing was touched on any host")
            .into());
        }
    }
    let entries = collect(project, &spec.files)?;
    let dir = project.join(BUNDLES);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    let tmp = dir.join(format!(".build-{}", std::process::id()));
    let (digest, size) = write_archive(&tmp, &entries).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    let archive = dir.join(format!("{digest}.tar.zst"));
    std::fs::rename(&tmp, &archive)
        .with_context(|| format!("cannot rename the bundle to `{}`", archive.display()))?;
    let id = release_id(project, &digest)?;
    Ok(Bundle {
        digest,
        id,
        size,
        archive: archive.to_string_lossy().into_owned(),
    })
}

/// The release id of `digest`: the time this checkout first built it (recorded in
/// `.batou/release-ids.json`), then the first 12 characters of the digest.
fn release_id(project: &Path, digest: &str) -> anyhow::Result<String> {
    let path = project.join(IDS);
    let mut ids: BTreeMap<String, String> = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("cannot read `{}`", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    };
    let time = match ids.get(digest) {
        Some(time) => time.clone(),
        None => {
            // Ids sort by time: a digest built within the same second as the latest one of
            // this checkout gets the next second, so that the order of ids is the order of
            // builds.
            let mut at = std::time::SystemTime::now();
            if let Some(latest) = ids.values().max().and_then(|t| parse_compact(t)) {
                at = at.max(latest + Duration::from_secs(1));
            }
            let time = compact_time(at);
            ids.insert(digest.to_string(), time.clone());
            let text = serde_json::to_string_pretty(&ids).expect("maps serialize") + "\n";
            crate::write_atomic(&path, text.as_bytes(), 0o644, None, None)?;
            time
        }
    };
    Ok(format!("{time}-{}", &digest[..12]))
}

/// `20261203T143210Z`: RFC 3339 without separators, so that ids sort by time and are file
/// names.
fn compact_time(time: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect()
}

/// The time of [`compact_time`]'s text.
fn parse_compact(text: &str) -> Option<std::time::SystemTime> {
    let b = text.as_bytes();
    if b.len() != 16 {
        return None;
    }
    let t = |r: std::ops::Range<usize>| text.get(r);
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        t(0..4)?,
        t(4..6)?,
        t(6..8)?,
        t(9..11)?,
        t(11..13)?,
        t(13..15)?
    );
    humantime::parse_rfc3339(&rfc).ok()
}

/// Every entry the listed files make, by archive path (sorted), parents included.
fn collect(project: &Path, files: &[String]) -> anyhow::Result<BTreeMap<String, Entry>> {
    if files.is_empty() {
        bail!("`files` is empty: a release needs files to bundle");
    }
    let mut out = BTreeMap::new();
    for listed in files {
        let relative = checked(listed)?;
        let path = project.join(&relative);
        let meta = std::fs::symlink_metadata(&path).with_context(|| {
            format!(
                "release file `{listed}` is missing: `{}` (did the build make it?)",
                path.display()
            )
        })?;
        let mut parent = relative.parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            out.entry(archive_name(p)).or_insert(Entry::Dir(0o755));
            parent = p.parent();
        }
        add(project, &relative, &meta, &mut out)?;
    }
    Ok(out)
}

fn add(
    project: &Path,
    relative: &Path,
    meta: &std::fs::Metadata,
    out: &mut BTreeMap<String, Entry>,
) -> anyhow::Result<()> {
    let path = project.join(relative);
    let mode = meta.permissions().mode() & 0o7777;
    let name = archive_name(relative);
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(&path)?;
        let inside = target.is_relative()
            && batou_core::normalize_path(
                &relative.parent().unwrap_or(Path::new("")).join(&target),
            )
            .components()
            .all(|c| matches!(c, PathPart::Normal(_)));
        if !inside {
            bail!(
                "release file `{}` is a link out of the release (to `{}`): bundle what it points to instead",
                relative.display(),
                target.display()
            );
        }
        out.insert(name, Entry::Link(target));
    } else if meta.is_dir() {
        out.insert(name, Entry::Dir(mode));
        let mut children: Vec<_> = std::fs::read_dir(&path)
            .with_context(|| format!("cannot list `{}`", path.display()))?
            .collect::<Result<_, _>>()?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let rel = relative.join(child.file_name());
            add(
                project,
                &rel,
                &std::fs::symlink_metadata(child.path())?,
                out,
            )?;
        }
    } else if meta.is_file() {
        out.insert(name, Entry::File(mode, path));
    } else {
        bail!(
            "release file `{}` is neither a file, a directory nor a link",
            relative.display()
        );
    }
    Ok(())
}

/// A listed path as a relative path inside the project, or why not.
fn checked(listed: &str) -> anyhow::Result<PathBuf> {
    batou_core::refuse_nul("files", listed)?;
    let path = Path::new(listed.trim_end_matches('/'));
    if path.as_os_str().is_empty()
        || !path
            .components()
            .all(|c| matches!(c, PathPart::Normal(_) | PathPart::CurDir))
    {
        bail!(
            "release file `{listed}` must be a path inside the project, without `..` (the release holds it under the same path)"
        );
    }
    Ok(path
        .components()
        .filter(|c| matches!(c, PathPart::Normal(_)))
        .collect())
}

fn archive_name(relative: &Path) -> String {
    relative.to_string_lossy().into_owned()
}

/// Writes the archive to `path`; its digest and size.
fn write_archive(path: &Path, entries: &BTreeMap<String, Entry>) -> anyhow::Result<(String, u64)> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    let hashing = Hashing {
        inner: std::io::BufWriter::new(file),
        hasher: sha2::Sha256::new(),
        size: 0,
    };
    let encoder = zstd::Encoder::new(hashing, ZSTD_LEVEL)?;
    let mut tar = tar::Builder::new(encoder);
    tar.mode(tar::HeaderMode::Deterministic);
    for (name, entry) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match entry {
            Entry::Dir(mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                tar.append_data(&mut header, format!("{name}/"), std::io::empty())?;
            }
            Entry::File(mode, source) => {
                let file = std::fs::File::open(source)
                    .with_context(|| format!("cannot read `{}`", source.display()))?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(file.metadata()?.len());
                tar.append_data(&mut header, name, file)?;
            }
            Entry::Link(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, name, target)?;
            }
        }
    }
    let encoder = tar.into_inner()?;
    let mut hashing = encoder.finish()?;
    hashing.flush()?;
    let file = hashing.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let digest = hex(&hashing.hasher.finalize());
    Ok((digest, hashing.size))
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("static/css")).unwrap();
        std::fs::write(dir.path().join("static/css/site.css"), "body {}\n").unwrap();
        std::fs::write(dir.path().join("app.sh"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(
            dir.path().join("app.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("css/site.css", dir.path().join("static/site.css")).unwrap();
        dir
    }

    fn spec(files: &[&str]) -> Spec {
        Spec {
            build: None,
            files: files.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_same_files_give_the_same_digest_and_id_whatever_their_times() {
        let dir = project();
        let first = build(dir.path(), &spec(&["app.sh", "static/"])).unwrap();
        // Other mtimes and a rebuild: the same bytes.
        std::fs::write(dir.path().join("app.sh"), "#!/bin/sh\necho hi\n").unwrap();
        let again = build(dir.path(), &spec(&["static", "app.sh"])).unwrap();
        assert_eq!(first, again);
        assert_eq!(first.digest.len(), 64);
        assert!(first.id.ends_with(&first.digest[..12]), "{}", first.id);
        assert_eq!(first.id.len(), "20261203T143210Z-".len() + 12);
        // A copy of the project elsewhere builds the same digest (its id has its own time).
        let other = project();
        let copy = build(other.path(), &spec(&["app.sh", "static"])).unwrap();
        assert_eq!(copy.digest, first.digest);

        std::fs::write(dir.path().join("static/css/site.css"), "body { x }\n").unwrap();
        let changed = build(dir.path(), &spec(&["app.sh", "static"])).unwrap();
        assert_ne!(changed.digest, first.digest);
        // Built within the same second, it still sorts after the first.
        assert!(changed.id > first.id, "{} after {}", changed.id, first.id);
        assert_eq!(
            parse_compact(&compact_time(std::time::UNIX_EPOCH)),
            Some(std::time::UNIX_EPOCH)
        );
    }

    #[test]
    fn what_cannot_be_bundled_is_refused() {
        let dir = project();
        let err = |files: &[&str]| format!("{:#}", build(dir.path(), &spec(files)).unwrap_err());
        assert!(err(&[]).contains("`files` is empty"));
        assert!(err(&["../x"]).contains("must be a path inside the project"));
        assert!(err(&["nope"]).contains("release file `nope` is missing"));
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("out")).unwrap();
        assert!(err(&["out"]).contains("is a link out of the release"));
        let failed = Spec {
            build: Some(vec!["false".into()]),
            files: vec!["app.sh".into()],
        };
        let e = format!("{:#}", build(dir.path(), &failed).unwrap_err());
        assert!(e.contains("the build `false` failed"), "{e}");
    }
}
