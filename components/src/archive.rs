//! `Archive`: a tar (plain, gzip, zstd) or zip archive unpacked into a directory, atomically
//! and only when the archive changed.
//!
//! Unpacking is done in process (the `tar`, `flate2`, `zstd` and `zip` crates), entry by
//! entry, so that every entry is checked before it is written: nothing may land outside the
//! target, neither by its name (`../`, an absolute path) nor through a symbolic link.

use std::io::{Read, Seek};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component as PathPart, Path, PathBuf};

use anyhow::{Context, bail};
use batou_core::{AllowedPaths, Component, ConfigError, Configure, Deploy, Verdict, refuse_nul};
use serde::Deserialize;

use crate::digest::{parse_sha256, sha256, sha256_file, short};
use crate::fs::write_atomic;

/// An archive's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ArchiveFormat {
    /// An uncompressed tar archive.
    #[serde(rename = "tar")]
    Tar,
    /// A gzip-compressed tar archive (`.tar.gz`, `.tgz`).
    #[serde(rename = "tar.gz")]
    TarGz,
    /// A zstd-compressed tar archive (`.tar.zst`, `.tzst`).
    #[serde(rename = "tar.zst")]
    TarZst,
    /// A zip archive.
    #[serde(rename = "zip")]
    Zip,
}

impl ArchiveFormat {
    /// The format a file name says, by its extension.
    fn of(name: &str) -> Option<Self> {
        let name = name.to_ascii_lowercase();
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(ArchiveFormat::TarGz)
        } else if name.ends_with(".tar.zst") || name.ends_with(".tzst") {
            Some(ArchiveFormat::TarZst)
        } else if name.ends_with(".tar") {
            Some(ArchiveFormat::Tar)
        } else if name.ends_with(".zip") {
            Some(ArchiveFormat::Zip)
        } else {
            None
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ArchiveFormat::Tar => "tar",
            ArchiveFormat::TarGz => "tar.gz",
            ArchiveFormat::TarZst => "tar.zst",
            ArchiveFormat::Zip => "zip",
        }
    }
}

/// An archive unpacked into the directory `target`.
///
/// ```toml
/// [components.app]
/// type = "archive"
/// source = "files/app-1.4.2.tar.gz"   # a project file; or `path`, an archive on the host
/// target = "app"                      # relative to the work directory
/// strip_components = 1                # drop the leading `app-1.4.2/` of every entry
/// format = "tar.gz"                   # default: from the archive's name
/// ```
///
/// The archive is unpacked into a directory beside `target`, which then takes `target`'s
/// place in one step (an exchange of the two directories), so that readers see the old tree or
/// the new one. The digest of the unpacked archive is recorded beside `target`
/// (`.<target>.batou-archive`); the archive is unpacked again only when its digest (or
/// `strip_components`) differs from the record, or `target` is missing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Archive {
    /// A project file, relative to the repository's root.
    #[serde(default)]
    pub source: Option<String>,
    /// An archive on the host (a download's `path`, say), relative to the work directory.
    #[serde(default)]
    pub path: Option<String>,
    /// The directory to unpack into, relative to the work directory; the component owns it.
    pub target: String,
    /// The archive's format; by default, its name's extension says.
    #[serde(default)]
    pub format: Option<ArchiveFormat>,
    /// Leading path components dropped from every entry's name.
    #[serde(default)]
    pub strip_components: usize,
    /// The SHA-256 digest the archive must have (64 hex digits). With `path`, give it (the
    /// download's `sha256`) so that a dry run predicts the unpacking of an archive that an
    /// earlier step downloads anew: verify then compares the record with it, not with the
    /// file as it is before that step.
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(skip)]
    resolved_target: PathBuf,
    #[serde(skip)]
    resolved_path: Option<PathBuf>,
    #[serde(skip)]
    data: Option<Vec<u8>>,
    #[serde(skip)]
    digest: String,
    /// `sha256`, checked and in lower case.
    #[serde(skip)]
    expected: Option<String>,
    #[serde(skip)]
    resolved_format: Option<ArchiveFormat>,
    #[serde(skip)]
    allowed: AllowedPaths,
}

impl Archive {
    /// The project file `source` unpacked into `target`.
    pub fn from_source(source: impl Into<String>, target: impl Into<String>) -> Self {
        Archive {
            source: Some(source.into()),
            ..Archive::empty(target.into())
        }
    }

    /// The archive at `path` on the host unpacked into `target`.
    pub fn from_path(path: impl Into<String>, target: impl Into<String>) -> Self {
        Archive {
            path: Some(path.into()),
            ..Archive::empty(target.into())
        }
    }

    fn empty(target: String) -> Self {
        Archive {
            source: None,
            path: None,
            target,
            format: None,
            strip_components: 0,
            sha256: None,
            resolved_target: PathBuf::new(),
            resolved_path: None,
            data: None,
            digest: String::new(),
            expected: None,
            resolved_format: None,
            allowed: AllowedPaths::default(),
        }
    }

    /// The format, instead of the one the name says.
    pub fn format(mut self, format: ArchiveFormat) -> Self {
        self.format = Some(format);
        self
    }

    /// Drops `n` leading path components from every entry's name.
    pub fn strip_components(mut self, n: usize) -> Self {
        self.strip_components = n;
        self
    }

    /// The SHA-256 digest the archive must have.
    pub fn sha256(mut self, digest: impl Into<String>) -> Self {
        self.sha256 = Some(digest.into());
        self
    }

    /// The absolute path of the target directory, known after configure.
    pub fn resolved_target(&self) -> &Path {
        &self.resolved_target
    }

    /// A sibling of the target named `.<target><suffix>`.
    fn beside(&self, suffix: &str) -> PathBuf {
        let name = self
            .resolved_target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.resolved_target
            .with_file_name(format!(".{name}{suffix}"))
    }

    fn record_path(&self) -> PathBuf {
        self.beside(".batou-archive")
    }

    fn record(&self, digest: &str) -> String {
        format!("{digest} strip_components={}\n", self.strip_components)
    }

    /// The digest of the archive as it is now; `None` when the archive on the host does not
    /// exist.
    fn current_digest(&self) -> anyhow::Result<Option<String>> {
        match &self.resolved_path {
            None => Ok(Some(self.digest.clone())),
            Some(path) if !path.exists() => Ok(None),
            Some(path) => sha256_file(path).map(Some),
        }
    }

    fn format_name(&self) -> &str {
        self.source
            .as_deref()
            .or(self.path.as_deref())
            .unwrap_or_default()
    }

    /// Unpacks the archive into the new directory `root`.
    fn unpack(&self, root: &Path) -> anyhow::Result<()> {
        let format = self.resolved_format.expect("configure resolved the format");
        let mut unpacker = Unpacker {
            root: root.to_path_buf(),
            strip: self.strip_components,
            dirs: Vec::new(),
        };
        match (&self.data, &self.resolved_path) {
            (Some(data), _) => unpacker.archive(format, std::io::Cursor::new(data.as_slice()))?,
            (None, Some(path)) => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("cannot open `{}`", path.display()))?;
                unpacker.archive(format, std::io::BufReader::new(file))?
            }
            (None, None) => unreachable!("configure requires `source` or `path`"),
        }
        unpacker.finish()
    }
}

impl Component for Archive {
    fn label(&self) -> String {
        format!("Archive('{}')", self.target)
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        refuse_nul("target", &self.target)?;
        match (&self.source, &self.path) {
            (Some(_), Some(_)) => bail!("set only one of `source` and `path`"),
            (None, None) => {
                return Err(ConfigError::new("an archive needs `source` or `path`")
                    .hint("`source` names a project file, `path` an archive on the host")
                    .into());
            }
            _ => {}
        }
        let name = self.format_name().to_string();
        self.resolved_format = match self.format.or_else(|| ArchiveFormat::of(&name)) {
            Some(format) => Some(format),
            None => {
                return Err(ConfigError::new(format!(
                    "cannot tell the format of archive `{name}` from its name"
                ))
                .hint("set `format` to `tar`, `tar.gz`, `tar.zst` or `zip`")
                .into());
            }
        };
        self.expected = self
            .sha256
            .as_deref()
            .map(|d| parse_sha256("sha256", d))
            .transpose()?;
        if let Some(source) = &self.source {
            let data = cx.project().read(source)?;
            self.digest = sha256(&data);
            if let Some(expected) = &self.expected
                && *expected != self.digest
            {
                bail!(
                    "project file `{source}` has SHA-256 digest {}, not the {expected} that `sha256` says",
                    self.digest
                );
            }
            self.data = Some(data);
        }
        if let Some(path) = &self.path {
            refuse_nul("path", path)?;
            self.resolved_path = Some(cx.workdir().join(path));
        }
        self.resolved_target = cx.path(&self.target)?;
        if self.resolved_target.parent().is_none() {
            bail!("`target` must not be the root directory");
        }
        self.allowed = cx.allowed_paths();
        Ok(())
    }

    fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
        self.allowed.check(&self.resolved_target)?;
        let digest = match &self.expected {
            Some(expected) => Some(expected.clone()),
            None => self.current_digest()?,
        };
        let record = std::fs::read_to_string(self.record_path()).ok();
        let target_is_dir =
            std::fs::symlink_metadata(&self.resolved_target).is_ok_and(|m| m.is_dir());
        if let Some(digest) = &digest
            && target_is_dir
            && record.as_deref() == Some(self.record(digest).as_str())
        {
            return Ok(Verdict::UpToDate);
        }
        let on_host_missing = self.resolved_path.as_ref().is_some_and(|p| !p.exists());
        let Some(digest) = digest.filter(|_| !on_host_missing) else {
            let path = self.resolved_path.as_deref().unwrap_or(Path::new(""));
            if cx.dry_run() {
                return Ok(Verdict::needs_update(format!(
                    "would unpack: archive `{}` does not exist yet",
                    path.display()
                )));
            }
            bail!("archive `{}` does not exist", path.display());
        };
        match std::fs::symlink_metadata(&self.resolved_target) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => bail!(
                "`{}` is in the way: it is not a directory",
                self.resolved_target.display()
            ),
            Err(_) => return Ok(Verdict::needs_update("missing")),
        }
        Ok(match record {
            Some(record) if record == self.record(&digest) => Verdict::UpToDate,
            Some(record) => {
                let old = record.split_whitespace().next().unwrap_or_default();
                Verdict::needs_update(format!(
                    "archive changed: {} -> {}",
                    short(old),
                    short(&digest)
                ))
            }
            None => Verdict::needs_update("not unpacked by this component yet"),
        })
    }

    fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
        self.allowed.check(&self.resolved_target)?;
        crate::fs::parent(&self.resolved_target)?;
        let Some(digest) = self.current_digest()? else {
            bail!(
                "archive `{}` does not exist",
                self.resolved_path
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
            );
        };
        if let Some(expected) = &self.expected
            && *expected != digest
        {
            bail!(
                "archive `{}` has SHA-256 digest {digest}, not the {expected} that `sha256` says",
                self.format_name()
            );
        }
        let staging = self.beside(&format!(".batou-unpack-{}", std::process::id()));
        remove_tree(&staging)?;
        std::fs::create_dir(&staging)
            .with_context(|| format!("cannot create `{}`", staging.display()))?;
        cx.detail(format!(
            "unpacking `{}` ({}) into `{}`",
            self.format_name(),
            self.resolved_format.map_or("", ArchiveFormat::as_str),
            staging.display()
        ));
        if let Err(e) = self.unpack(&staging) {
            let _ = remove_tree(&staging);
            return Err(e.context(format!("cannot unpack `{}`", self.format_name())));
        }
        if self.resolved_target.is_dir() {
            // Both directories exist: exchange them in one step, then remove the old tree.
            nix::fcntl::renameat2(
                nix::fcntl::AT_FDCWD,
                &staging,
                nix::fcntl::AT_FDCWD,
                &self.resolved_target,
                nix::fcntl::RenameFlags::RENAME_EXCHANGE,
            )
            .with_context(|| {
                format!(
                    "cannot exchange `{}` with `{}`",
                    staging.display(),
                    self.resolved_target.display()
                )
            })?;
            remove_tree(&staging)?;
        } else {
            std::fs::rename(&staging, &self.resolved_target).with_context(|| {
                format!("cannot rename into `{}`", self.resolved_target.display())
            })?;
        }
        crate::fs::sync_dir(crate::fs::parent(&self.resolved_target)?);
        write_atomic(
            &self.record_path(),
            self.record(&digest).as_bytes(),
            0o644,
            None,
            None,
        )
    }
}

/// Writes checked entries below `root`.
struct Unpacker {
    root: PathBuf,
    strip: usize,
    /// Directories and their modes, set once every entry is written (a read-only directory
    /// would refuse its own entries).
    dirs: Vec<(PathBuf, u32)>,
}

/// What an entry is.
enum Kind {
    Dir,
    File,
    Symlink(PathBuf),
    HardLink(PathBuf),
}

impl Unpacker {
    fn archive<R: Read + Seek>(&mut self, format: ArchiveFormat, reader: R) -> anyhow::Result<()> {
        match format {
            ArchiveFormat::Tar => self.tar(reader),
            ArchiveFormat::TarGz => self.tar(flate2::read::MultiGzDecoder::new(reader)),
            ArchiveFormat::TarZst => {
                self.tar(zstd::stream::read::Decoder::new(reader).context("not a zstd stream")?)
            }
            ArchiveFormat::Zip => self.zip(reader),
        }
    }

    fn tar(&mut self, reader: impl Read) -> anyhow::Result<()> {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().context("not a tar archive")? {
            let mut entry = entry.context("cannot read the next tar entry")?;
            let name = entry
                .path()
                .context("an entry has no valid name")?
                .into_owned();
            let mode = entry.header().mode().unwrap_or(0o644);
            let kind = match entry.header().entry_type() {
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
                tar::EntryType::Symlink => Kind::Symlink(link_name(&entry, &name)?),
                tar::EntryType::Link => Kind::HardLink(link_name(&entry, &name)?),
                // Headers of extended attributes and long names, which the crate applies.
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
                other => bail!(
                    "entry `{}` is a {other:?} entry, which cannot be unpacked",
                    name.display()
                ),
            };
            self.entry(&name, mode, kind, &mut entry)?;
        }
        Ok(())
    }

    fn zip<R: Read + Seek>(&mut self, reader: R) -> anyhow::Result<()> {
        let mut archive = zip::ZipArchive::new(reader).context("not a zip archive")?;
        for i in 0..archive.len() {
            let mut file = archive
                .by_index(i)
                .with_context(|| format!("cannot read zip entry {}", i + 1))?;
            let name = PathBuf::from(file.name());
            let kind = if file.is_dir() {
                Kind::Dir
            } else if file.is_symlink() {
                let mut target = String::new();
                file.read_to_string(&mut target)
                    .with_context(|| format!("cannot read entry `{}`", name.display()))?;
                Kind::Symlink(PathBuf::from(target))
            } else {
                Kind::File
            };
            let mode = file.unix_mode().unwrap_or(match kind {
                Kind::Dir => 0o755,
                _ => 0o644,
            });
            self.entry(&name, mode, kind, &mut file)?;
        }
        Ok(())
    }

    /// Writes one entry, refusing one that would land outside the root.
    fn entry(
        &mut self,
        name: &Path,
        mode: u32,
        kind: Kind,
        data: &mut dyn Read,
    ) -> anyhow::Result<()> {
        let Some(relative) = self.relative(name)? else {
            return Ok(());
        };
        let dest = self.root.join(&relative);
        self.make_parents(name, &relative)?;
        let existing = std::fs::symlink_metadata(&dest).ok();
        match (&kind, &existing) {
            (Kind::Dir, Some(meta)) if meta.is_dir() => {}
            (_, Some(meta)) if meta.is_dir() => bail!(
                "entry `{}` would replace a directory of an earlier entry",
                name.display()
            ),
            (_, Some(_)) => std::fs::remove_file(&dest)
                .with_context(|| format!("cannot replace `{}`", dest.display()))?,
            (_, None) => {}
        }
        match kind {
            Kind::Dir => {
                if existing.is_none() {
                    std::fs::create_dir(&dest)
                        .with_context(|| format!("cannot create `{}`", dest.display()))?;
                }
                self.dirs.push((dest, mode & 0o777));
            }
            Kind::File => {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode & 0o777)
                    .open(&dest)
                    .with_context(|| format!("cannot create `{}`", dest.display()))?;
                std::io::copy(data, &mut file)
                    .with_context(|| format!("cannot write `{}`", dest.display()))?;
                file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
                    .with_context(|| format!("cannot set mode of `{}`", dest.display()))?;
            }
            Kind::Symlink(target) => {
                check_link_target(name, &relative, &target)?;
                std::os::unix::fs::symlink(&target, &dest)
                    .with_context(|| format!("cannot create link `{}`", dest.display()))?;
            }
            Kind::HardLink(target) => {
                let Some(target_relative) = self.relative(&target)? else {
                    bail!(
                        "hard link `{}` points to `{}`, which `strip_components` removes",
                        name.display(),
                        target.display()
                    );
                };
                self.refuse_links_below(&target, &target_relative)?;
                let source = self.root.join(&target_relative);
                let meta = std::fs::symlink_metadata(&source).with_context(|| {
                    format!(
                        "hard link `{}` points to `{}`, which no earlier entry created",
                        name.display(),
                        target.display()
                    )
                })?;
                if meta.is_dir() {
                    bail!(
                        "hard link `{}` points to the directory `{}`",
                        name.display(),
                        target.display()
                    );
                }
                std::fs::hard_link(&source, &dest)
                    .with_context(|| format!("cannot create link `{}`", dest.display()))?;
            }
        }
        Ok(())
    }

    /// The entry's name below the root, its leading components stripped; `None` when
    /// stripping leaves nothing. Absolute names and `..` are refused.
    fn relative(&self, name: &Path) -> anyhow::Result<Option<PathBuf>> {
        let mut parts = Vec::new();
        for part in name.components() {
            match part {
                PathPart::Normal(p) => parts.push(p),
                PathPart::CurDir => {}
                PathPart::RootDir | PathPart::Prefix(_) => bail!(
                    "entry `{}` has an absolute name, which would land outside the target",
                    name.display()
                ),
                PathPart::ParentDir => bail!(
                    "entry `{}` climbs out with `..`, which would land outside the target",
                    name.display()
                ),
            }
        }
        if parts.len() <= self.strip {
            return Ok(None);
        }
        Ok(Some(parts[self.strip..].iter().collect()))
    }

    /// Creates the entry's missing parent directories, refusing to go through a symbolic
    /// link an earlier entry created.
    fn make_parents(&self, name: &Path, relative: &Path) -> anyhow::Result<()> {
        self.refuse_links_below(name, relative)?;
        if let Some(parent) = relative.parent() {
            let mut dir = self.root.clone();
            for part in parent.components() {
                dir.push(part);
                if std::fs::symlink_metadata(&dir).is_err() {
                    std::fs::create_dir(&dir)
                        .with_context(|| format!("cannot create `{}`", dir.display()))?;
                }
            }
        }
        Ok(())
    }

    /// Refuses an entry whose parent directories include a symbolic link or a file.
    fn refuse_links_below(&self, name: &Path, relative: &Path) -> anyhow::Result<()> {
        let Some(parent) = relative.parent() else {
            return Ok(());
        };
        let mut dir = self.root.clone();
        for part in parent.components() {
            dir.push(part);
            match std::fs::symlink_metadata(&dir) {
                Ok(meta) if meta.file_type().is_symlink() => bail!(
                    "entry `{}` lies below the symbolic link `{}` of an earlier entry",
                    name.display(),
                    dir.strip_prefix(&self.root).unwrap_or(&dir).display()
                ),
                Ok(meta) if !meta.is_dir() => bail!(
                    "entry `{}` lies below the file `{}` of an earlier entry",
                    name.display(),
                    dir.strip_prefix(&self.root).unwrap_or(&dir).display()
                ),
                _ => {}
            }
        }
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        // Deepest first, so that a read-only directory is closed after its children.
        self.dirs
            .sort_by_key(|(dir, _)| std::cmp::Reverse(dir.components().count()));
        for (dir, mode) in &self.dirs {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode))
                .with_context(|| format!("cannot set mode of `{}`", dir.display()))?;
        }
        Ok(())
    }
}

/// The link name of a tar entry.
fn link_name<R: Read>(entry: &tar::Entry<'_, R>, name: &Path) -> anyhow::Result<PathBuf> {
    match entry.link_name() {
        Ok(Some(target)) => Ok(target.into_owned()),
        _ => bail!("link entry `{}` has no target", name.display()),
    }
}

/// Refuses a symbolic link whose target could lead outside the root: an absolute target, or
/// one whose `..` climb above the root or come after a name (a name may itself be a link,
/// after which `..` is no longer where it seems).
fn check_link_target(name: &Path, relative: &Path, target: &Path) -> anyhow::Result<()> {
    let escape = || {
        anyhow::anyhow!(
            "symbolic link `{}` points to `{}`, outside the target",
            name.display(),
            target.display()
        )
    };
    let depth = relative.components().count().saturating_sub(1);
    let mut climbs = 0;
    let mut named = false;
    for part in target.components() {
        match part {
            PathPart::RootDir | PathPart::Prefix(_) => return Err(escape()),
            PathPart::ParentDir if named => {
                bail!(
                    "symbolic link `{}` points to `{}`: `..` after a name is refused, since the name may be a link",
                    name.display(),
                    target.display()
                )
            }
            PathPart::ParentDir => climbs += 1,
            PathPart::CurDir => {}
            PathPart::Normal(_) => named = true,
        }
    }
    if climbs > depth {
        return Err(escape());
    }
    Ok(())
}

/// Removes the directory tree at `path`, if any.
fn remove_tree(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            // A read-only directory in the tree (from an archive's modes) cannot lose its
            // entries: give every directory write permission first.
            for entry in walkdir::WalkDir::new(path).into_iter().flatten() {
                if entry.file_type().is_dir() {
                    let _ = std::fs::set_permissions(
                        entry.path(),
                        std::fs::Permissions::from_mode(0o700),
                    );
                }
            }
            std::fs::remove_dir_all(path)
        }
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return Ok(()),
    }
    .with_context(|| format!("cannot remove `{}`", path.display()))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use batou_core::ConvergeOptions;

    use super::*;
    use crate::test_util::{config_error, mode, project};

    /// An entry of a test archive, its name written as given (also `..` and absolute ones).
    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a str),
        Exe(&'a str, &'a str),
        Link(&'a str, &'a str),
    }

    fn tar_bytes(entries: &[E]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in entries {
            let mut header = tar::Header::new_old();
            let (name, kind, data, link, mode) = match entry {
                E::Dir(n) => (*n, tar::EntryType::Directory, "", "", 0o755),
                E::File(n, d) => (*n, tar::EntryType::Regular, *d, "", 0o644),
                E::Exe(n, d) => (*n, tar::EntryType::Regular, *d, "", 0o755),
                E::Link(n, t) => (*n, tar::EntryType::Symlink, "", *t, 0o777),
            };
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, data.as_bytes()).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn archive_bytes(format: ArchiveFormat, entries: &[E]) -> Vec<u8> {
        match format {
            ArchiveFormat::Tar => tar_bytes(entries),
            ArchiveFormat::TarGz => {
                let mut gz =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                gz.write_all(&tar_bytes(entries)).unwrap();
                gz.finish().unwrap()
            }
            ArchiveFormat::TarZst => zstd::encode_all(tar_bytes(entries).as_slice(), 0).unwrap(),
            ArchiveFormat::Zip => {
                let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
                let options = zip::write::SimpleFileOptions::default();
                for entry in entries {
                    match entry {
                        E::Dir(n) => zip.add_directory(*n, options.unix_permissions(0o755)),
                        E::File(n, d) | E::Exe(n, d) => {
                            let mode = if matches!(entry, E::Exe(..)) {
                                0o755
                            } else {
                                0o644
                            };
                            zip.start_file(*n, options.unix_permissions(mode))
                                .and_then(|()| Ok(zip.write_all(d.as_bytes())?))
                        }
                        E::Link(n, t) => zip.add_symlink(*n, *t, options),
                    }
                    .unwrap();
                }
                zip.finish().unwrap().into_inner()
            }
        }
    }

    const RELEASE: &[E<'static>] = &[
        E::Dir("app-1.0/"),
        E::Dir("app-1.0/bin/"),
        E::Exe("app-1.0/bin/app", "#!/bin/sh\necho app\n"),
        E::File("app-1.0/README", "one\n"),
        E::Link("app-1.0/current", "bin/app"),
        E::Link("app-1.0/bin/readme", "../README"),
    ];

    /// One host with root `app`, an archive of project file `files/<name>` with `attributes`.
    fn app(name: &str, data: &[u8], attributes: &str) -> batou_core::testing::TestProject {
        let project = project(&format!(
            "[hosts.localhost]\ncomponents = [\"app\"]\n\n[components.app]\ntype = \"archive\"\nsource = \"files/{name}\"\ntarget = \"app\"\n{attributes}"
        ));
        project.file(&format!("files/{name}"), data);
        project
    }

    #[test]
    fn every_format_unpacks_with_modes_and_links_and_stays() {
        for (format, name) in [
            (ArchiveFormat::Tar, "app.tar"),
            (ArchiveFormat::TarGz, "app.tar.gz"),
            (ArchiveFormat::TarZst, "app.tar.zst"),
            (ArchiveFormat::Zip, "app.zip"),
        ] {
            let project = app(
                name,
                &archive_bytes(format, RELEASE),
                "strip_components = 1\n",
            );
            project
                .assert_prediction_matches("dev")
                .assert_changed(&["app > Workdir", "app"]);
            let target = project.workdir("app").join("app");
            assert_eq!(
                std::fs::read_to_string(target.join("bin/app")).unwrap(),
                "#!/bin/sh\necho app\n",
                "{name}"
            );
            assert_eq!(mode(&target.join("bin/app")), 0o755, "{name}");
            assert_eq!(mode(&target.join("README")), 0o644, "{name}");
            assert_eq!(
                std::fs::read_link(target.join("current")).unwrap(),
                Path::new("bin/app")
            );
            assert_eq!(
                std::fs::read_to_string(target.join("bin/readme")).unwrap(),
                "one\n"
            );
            let record = std::fs::read_to_string(project.workdir("app").join(".app.batou-archive"));
            assert!(record.unwrap().ends_with(" strip_components=1\n"), "{name}");
        }
    }

    #[test]
    fn a_changed_archive_replaces_the_whole_tree() {
        let project = app(
            "app.tar.gz",
            &archive_bytes(ArchiveFormat::TarGz, RELEASE),
            "",
        );
        project.assert_prediction_matches("dev");
        let target = project.workdir("app").join("app");
        std::fs::write(target.join("stray"), "left by hand").unwrap();
        // Changes inside the tree are not the archive changing: nothing to do.
        project.converge("dev").assert_unchanged();

        let two = archive_bytes(
            ArchiveFormat::TarGz,
            &[E::Dir("app-2.0/"), E::File("app-2.0/README", "two\n")],
        );
        project.file("files/app.tar.gz", &two);
        let run = project.assert_prediction_matches("dev");
        assert_eq!(run.changed(), ["app"]);
        assert!(
            run.reasons()[0].1.starts_with("archive changed: "),
            "{:?}",
            run.reasons()
        );
        assert_eq!(
            std::fs::read_to_string(target.join("app-2.0/README")).unwrap(),
            "two\n"
        );
        assert!(!target.join("app-1.0").exists());
        assert!(!target.join("stray").exists());
        let siblings: Vec<String> = std::fs::read_dir(project.workdir("app"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            siblings.len(),
            2,
            "no staging directory is left: {siblings:?}"
        );

        // The target removed: unpacked again.
        std::fs::remove_dir_all(&target).unwrap();
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["app"]);
    }

    #[test]
    fn entries_that_escape_the_target_are_refused_and_the_old_tree_stays() {
        let cases: &[(&[E], &str)] = &[
            (
                &[E::File("../evil", "x")],
                "entry `../evil` climbs out with `..`",
            ),
            (
                &[E::File("/tmp/evil", "x")],
                "entry `/tmp/evil` has an absolute name",
            ),
            (
                &[E::Dir("a/"), E::Link("a/up", "../../etc")],
                "symbolic link `a/up` points to `../../etc`, outside the target",
            ),
            (
                &[E::Link("abs", "/etc")],
                "symbolic link `abs` points to `/etc`, outside the target",
            ),
            (
                &[E::Link("here", "."), E::Link("sneaky", "here/../etc")],
                "`..` after a name is refused",
            ),
            (
                &[E::Dir("sub/"), E::Link("l", "sub"), E::File("l/file", "x")],
                "entry `l/file` lies below the symbolic link `l` of an earlier entry",
            ),
        ];
        for (entries, message) in cases {
            let project = app("ok.tar", &tar_bytes(&[E::File("kept", "old\n")]), "");
            project.converge("dev");
            project.file("files/ok.tar", tar_bytes(entries));
            let failure = project
                .run("dev", ConvergeOptions::default())
                .failure()
                .unwrap();
            assert!(
                failure.contains("cannot unpack `files/ok.tar`"),
                "{failure}"
            );
            assert!(failure.contains(message), "{failure}");
            let target = project.workdir("app").join("app");
            assert_eq!(
                std::fs::read_to_string(target.join("kept")).unwrap(),
                "old\n"
            );
            assert_eq!(
                std::fs::read_dir(project.workdir("app")).unwrap().count(),
                2
            );
            assert!(!project.base_dir().join("work/evil").exists());
        }
    }

    #[test]
    fn an_archive_on_the_host_is_unpacked_once_it_exists() {
        let project = project(
            "[hosts.localhost]\ncomponents = [\"app\"]\n\n[components.app]\ntype = \"archive\"\npath = \"incoming/app.zip\"\ntarget = \"app\"\n",
        );
        let dry = project.dry_run("dev");
        assert_eq!(
            dry.reasons()[1].1,
            format!(
                "would unpack: archive `{}` does not exist yet",
                project.workdir("app").join("incoming/app.zip").display()
            )
        );
        let failure = project
            .run("dev", ConvergeOptions::default())
            .failure()
            .unwrap();
        assert!(
            failure.ends_with("/incoming/app.zip` does not exist"),
            "{failure}"
        );

        let incoming = project.workdir("app").join("incoming");
        std::fs::create_dir_all(&incoming).unwrap();
        std::fs::write(
            incoming.join("app.zip"),
            archive_bytes(ArchiveFormat::Zip, &[E::File("index.html", "hi\n")]),
        )
        .unwrap();
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["app"]);
        assert_eq!(
            std::fs::read_to_string(project.workdir("app").join("app/index.html")).unwrap(),
            "hi\n"
        );
    }

    #[test]
    fn with_sha256_a_dry_run_predicts_an_archive_an_earlier_step_replaces() {
        let one = archive_bytes(ArchiveFormat::Tar, &[E::File("v", "1\n")]);
        let two = archive_bytes(ArchiveFormat::Tar, &[E::File("v", "2\n")]);
        let env = |digest: &str| {
            format!(
                "[hosts.localhost]\ncomponents = [\"app\"]\n\n[components.app]\ntype = \"archive\"\npath = \"app.tar\"\nsha256 = \"{digest}\"\ntarget = \"app\"\n"
            )
        };
        let project = project(&env(&sha256(&one)));
        std::fs::create_dir_all(project.workdir("app")).unwrap();
        std::fs::write(project.workdir("app").join("app.tar"), &one).unwrap();
        project.assert_prediction_matches("dev");

        // The environment names the next archive before the file on the host is replaced:
        // the prediction says so, and the real run refuses the file that is still there.
        project.env("dev", &env(&sha256(&two)));
        let dry = project.dry_run("dev");
        assert_eq!(
            dry.reasons()[0].1,
            format!(
                "archive changed: {} -> {}",
                short(&sha256(&one)),
                short(&sha256(&two))
            )
        );
        let failure = project
            .run("dev", ConvergeOptions::default())
            .failure()
            .unwrap();
        assert!(
            failure.contains(&format!(
                "archive `app.tar` has SHA-256 digest {}, not the {} that `sha256` says",
                sha256(&one),
                sha256(&two)
            )),
            "{failure}"
        );
        std::fs::write(project.workdir("app").join("app.tar"), &two).unwrap();
        project
            .assert_prediction_matches("dev")
            .assert_changed(&["app"]);
        assert_eq!(
            std::fs::read_to_string(project.workdir("app").join("app/v")).unwrap(),
            "2\n"
        );
    }

    #[test]
    fn bad_attributes_are_configuration_errors() {
        let err = config_error(&project(
            "[hosts.localhost]\ncomponents = [\"app\"]\n\n[components.app]\ntype = \"archive\"\ntarget = \"app\"\n",
        ));
        assert!(err.contains("an archive needs `source` or `path`"), "{err}");
        let err = config_error(&app("app.rar", b"", ""));
        assert!(
            err.contains("cannot tell the format of archive `files/app.rar` from its name"),
            "{err}"
        );
        let err = config_error(&app("app.rar", b"", "format = \"rar\"\n"));
        assert!(
            err.contains(
                "unknown value `rar`, expected one of `tar`, `tar.gz`, `tar.zst`, `zip` in environments/dev.toml:8:10"
            ),
            "{err}"
        );
    }
}
