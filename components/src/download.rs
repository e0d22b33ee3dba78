//! `Download`: a file fetched from a URL on the host, checked against its SHA-256 digest.
//!
//! The host fetches, with `curl` through the process runner (bounded in time, in its own
//! process group): the controller never holds the file, and a host behind a proxy or a
//! firewall fetches the way its own tools do. The host needs `curl`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use batou_core::{AllowedPaths, Component, ConfigError, Configure, Deploy, Verdict, refuse_nul};
use serde::Deserialize;

use crate::cmd::cmd;
use crate::digest::{parse_sha256, sha256_file, short};

/// How long one fetch may take when `timeout` does not say.
const DEFAULT_TIMEOUT: f64 = 300.0;

/// A file downloaded from `url`, whose SHA-256 digest must be `sha256`.
///
/// ```toml
/// [components.app-tarball]
/// type = "download"
/// url = "https://example.com/app-1.4.2.tar.gz"
/// sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
/// path = "app-1.4.2.tar.gz"     # default: the last segment of the URL's path
/// timeout = 600                 # seconds for one fetch (default 300)
/// ```
///
/// It downloads only when the file is missing or its digest differs. An interrupted
/// download is resumed from the partial file kept beside the target; a download whose
/// digest differs is an error that leaves the old file in place.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Download {
    /// An `http://` or `https://` URL; redirects are followed (to `http` and `https` only).
    pub url: String,
    /// The SHA-256 digest the file must have, 64 hex digits.
    pub sha256: String,
    /// Where the file goes, relative to the work directory; defaults to the last segment of
    /// the URL's path.
    #[serde(default)]
    pub path: Option<String>,
    /// Seconds one fetch may take.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(skip)]
    resolved: PathBuf,
    #[serde(skip)]
    digest: String,
    #[serde(skip)]
    allowed: AllowedPaths,
}

impl Download {
    /// A download of `url` whose digest must be `sha256`.
    pub fn new(url: impl Into<String>, sha256: impl Into<String>) -> Self {
        Download {
            url: url.into(),
            sha256: sha256.into(),
            path: None,
            timeout: None,
            resolved: PathBuf::new(),
            digest: String::new(),
            allowed: AllowedPaths::default(),
        }
    }

    /// Where the file goes, relative to the work directory.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Seconds one fetch may take.
    pub fn timeout(mut self, seconds: f64) -> Self {
        self.timeout = Some(seconds);
        self
    }

    /// The absolute path of the file, known after configure.
    pub fn resolved_path(&self) -> &Path {
        &self.resolved
    }

    /// The partial file beside the target, kept between runs so that a fetch resumes.
    fn partial(&self) -> PathBuf {
        let name = self
            .resolved
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.resolved
            .with_file_name(format!(".{name}.batou-download"))
    }

    /// Fetches into the partial file, resuming it when `resume`; `Ok(false)` when curl
    /// failed in a way a fresh start may mend (the server cannot resume, say).
    fn fetch(&self, cx: &mut Deploy, resume: bool) -> anyhow::Result<bool> {
        let partial = self.partial();
        let seconds = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let mut argv: Vec<String> = [
            "curl",
            "--fail",
            "--silent",
            "--show-error",
            "--location",
            "--proto",
            "=http,https",
            "--proto-redir",
            "=http,https",
            "--max-time",
        ]
        .map(String::from)
        .into();
        argv.push(format!("{seconds}"));
        if resume {
            argv.extend(["--continue-at".into(), "-".into()]);
        }
        argv.extend(["--output".into(), partial.to_string_lossy().into_owned()]);
        // The URL may carry a token: it reaches curl through a private config file, never
        // its command line.
        let config = self
            .resolved
            .with_file_name(format!(".{}.batou-curlrc", file_name(&self.resolved)));
        argv.extend(["--config".into(), config.to_string_lossy().into_owned()]);
        cx.detail(format!("running `{}` for `{}`", argv.join(" "), self.url));
        let escaped = self.url.replace('\\', "\\\\").replace('"', "\\\"");
        crate::fs::write_atomic(
            &config,
            format!("url = \"{escaped}\"\n").as_bytes(),
            0o600,
            None,
            None,
        )?;
        let out = cmd(&argv)
            // curl's own `--max-time` ends it first; this bounds a curl that hangs anyway.
            .timeout(Duration::from_secs_f64(seconds + 10.0))
            .run();
        let _ = std::fs::remove_file(&config);
        let out = out
            .map_err(|e| {
                if is_not_found(&e) {
                    anyhow::anyhow!(
                        "cannot download `{}`: `curl` is not installed on the host (install it, e.g. `apt-get install curl`)",
                        self.url
                    )
                } else {
                    e
                }
            })?;
        if out.success() {
            return Ok(true);
        }
        if resume {
            return Ok(false);
        }
        bail!(
            "cannot download `{}`: {}",
            self.url,
            out.failure().trim_end()
        )
    }
}

impl Component for Download {
    fn label(&self) -> String {
        format!("Download('{}')", self.url)
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        refuse_nul("url", &self.url)?;
        let rest = self
            .url
            .strip_prefix("https://")
            .or_else(|| self.url.strip_prefix("http://"));
        let Some(rest) = rest else {
            return Err(ConfigError::new(format!(
                "`url` `{}` is not an `http://` or `https://` URL",
                self.url
            ))
            .into());
        };
        if rest.is_empty()
            || self
                .url
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            bail!("`url` `{}` is not a URL", self.url.escape_debug());
        }
        self.digest = parse_sha256("sha256", &self.sha256)?;
        if let Some(t) = self.timeout
            && !(t.is_finite() && t > 0.0)
        {
            bail!("`timeout` must be a positive number of seconds");
        }
        let path = match &self.path {
            Some(path) => path.clone(),
            None => file_name_of(rest).ok_or_else(|| {
                ConfigError::new(format!(
                    "cannot name the file after `url` `{}`: its path has no last segment",
                    self.url
                ))
                .hint("set `path`")
            })?,
        };
        self.resolved = cx.path(&path)?;
        self.allowed = cx.allowed_paths();
        Ok(())
    }

    fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
        self.allowed.check(&self.resolved)?;
        let meta = match std::fs::symlink_metadata(&self.resolved) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Verdict::needs_update("missing"));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot inspect `{}`", self.resolved.display()));
            }
        };
        if !meta.is_file() {
            bail!("`{}` is not a regular file", self.resolved.display());
        }
        cx.detail(format!("hashing `{}`", self.resolved.display()));
        let digest = sha256_file(&self.resolved)?;
        Ok(if digest == self.digest {
            Verdict::UpToDate
        } else {
            Verdict::needs_update(format!(
                "digest {} differs from {}",
                short(&digest),
                short(&self.digest)
            ))
        })
    }

    fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
        self.allowed.check(&self.resolved)?;
        let partial = self.partial();
        self.allowed.check(&partial)?;
        crate::fs::parent(&self.resolved)?;
        let mut resume = std::fs::symlink_metadata(&partial).is_ok_and(|m| m.is_file());
        if resume {
            let size = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            cx.detail(format!("resuming `{}` at {size} bytes", partial.display()));
        } else {
            // Whatever stands there (a directory, a link) is not a download of ours.
            remove(&partial)?;
        }
        let digest = loop {
            if !self.fetch(cx, resume)? {
                // The server could not resume (or the partial file was complete already and
                // the server said so): start over.
                remove(&partial)?;
                resume = false;
                continue;
            }
            let digest = sha256_file(&partial)?;
            if digest == self.digest || !resume {
                break digest;
            }
            // The partial file may have come from an older version at the same URL.
            remove(&partial)?;
            resume = false;
        };
        if digest != self.digest {
            remove(&partial)?;
            bail!(
                "the download of `{}` has SHA-256 digest {digest}, not the {} that `sha256` says; `{}` is left as it was (if the file was meant to change, set `sha256` to its new digest)",
                self.url,
                self.digest,
                self.resolved.display()
            );
        }
        let file = std::fs::File::open(&partial)
            .with_context(|| format!("cannot open `{}`", partial.display()))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("cannot set mode of `{}`", partial.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot sync `{}`", partial.display()))?;
        std::fs::rename(&partial, &self.resolved)
            .with_context(|| format!("cannot rename into `{}`", self.resolved.display()))?;
        Ok(())
    }
}

/// The file name of `path`, for sibling names.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The last segment of a URL's path (without the scheme), without query or fragment.
fn file_name_of(rest: &str) -> Option<String> {
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (_authority, path) = rest.split_once('/')?;
    let name = path.rsplit('/').next()?;
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_string())
}

/// Removes the file or link at `path`, if any.
fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return Ok(()),
    }
    .with_context(|| format!("cannot remove `{}`", path.display()))
}

/// Whether `error` says that something (a program) was not found.
pub(crate) fn is_not_found(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    })
}

#[cfg(test)]
mod tests {
    use batou_core::ConvergeOptions;
    use batou_test_support::HttpServer;

    use super::*;
    use crate::digest::sha256;
    use crate::test_util::{config_error, pairs, project};

    const DATA: &[u8] = b"release 1.0\n";

    /// One host with the root component `app`, a download with the given attribute lines.
    fn app(attributes: &str) -> batou_core::testing::TestProject {
        project(&format!(
            "[hosts.localhost]\ncomponents = [\"app\"]\n\n[components.app]\ntype = \"download\"\n{attributes}"
        ))
    }

    fn served(server: &HttpServer, data: &[u8]) -> batou_core::testing::TestProject {
        server.set("/app.tar.gz", data);
        app(&format!(
            "url = \"{}\"\nsha256 = \"{}\"\n",
            server.url("/app.tar.gz"),
            sha256(DATA)
        ))
    }

    #[test]
    fn a_download_is_fetched_once_and_again_after_drift() {
        let server = HttpServer::start();
        let project = served(&server, DATA);
        let run = project.assert_prediction_matches("dev");
        assert_eq!(
            run.reasons(),
            pairs(&[("app > Workdir", "missing"), ("app", "missing")])
        );
        let path = project.workdir("app").join("app.tar.gz");
        assert_eq!(std::fs::read(&path).unwrap(), DATA);
        assert_eq!(server.requests().len(), 1);

        std::fs::write(&path, b"tampered").unwrap();
        let run = project.assert_prediction_matches("dev");
        assert_eq!(
            run.reasons(),
            pairs(&[(
                "app",
                &format!(
                    "digest {} differs from {}",
                    short(&sha256(b"tampered")),
                    short(&sha256(DATA))
                )
            )])
        );
        assert_eq!(std::fs::read(&path).unwrap(), DATA);
        assert_eq!(server.requests().len(), 2);
    }

    #[test]
    fn a_digest_mismatch_is_an_error_that_leaves_the_old_file() {
        let server = HttpServer::start();
        let project = served(&server, b"something else\n");
        let run = project.run("dev", ConvergeOptions::default());
        let failure = run.failure().unwrap();
        assert!(
            failure.contains(&format!(
                "has SHA-256 digest {}, not the {} that `sha256` says",
                sha256(b"something else\n"),
                sha256(DATA)
            )),
            "{failure}"
        );
        assert!(!project.workdir("app").join("app.tar.gz").exists());

        let path = project.workdir("app").join("app.tar.gz");
        std::fs::write(&path, b"old").unwrap();
        let failure = project
            .run("dev", ConvergeOptions::default())
            .failure()
            .unwrap();
        assert!(failure.contains("is left as it was"), "{failure}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        // No partial file is left behind to be resumed.
        assert!(
            !project
                .workdir("app")
                .join(".app.tar.gz.batou-download")
                .exists()
        );

        server.set("/app.tar.gz", DATA);
        project.assert_prediction_matches("dev");
        assert_eq!(std::fs::read(&path).unwrap(), DATA);
    }

    #[test]
    fn an_interrupted_download_resumes_from_the_partial_file() {
        let server = HttpServer::start();
        let project = served(&server, DATA);
        server.cut_next_after(5);
        let failure = project
            .run("dev", ConvergeOptions::default())
            .failure()
            .unwrap();
        assert!(failure.contains("cannot download"), "{failure}");
        let partial = project.workdir("app").join(".app.tar.gz.batou-download");
        assert_eq!(std::fs::read(&partial).unwrap(), &DATA[..5]);
        assert!(!project.workdir("app").join("app.tar.gz").exists());

        project.assert_prediction_matches("dev");
        assert_eq!(
            std::fs::read(project.workdir("app").join("app.tar.gz")).unwrap(),
            DATA
        );
        assert!(!partial.exists());
        let ranges: Vec<Option<String>> = server.requests().into_iter().map(|r| r.range).collect();
        assert_eq!(ranges, [None, Some("bytes=5-".to_string())]);
    }

    #[test]
    fn a_server_that_cannot_resume_gets_a_fresh_request() {
        let server = HttpServer::start();
        let project = served(&server, DATA);
        server.honour_ranges(false);
        std::fs::create_dir_all(project.workdir("app")).unwrap();
        let partial = project.workdir("app").join(".app.tar.gz.batou-download");
        std::fs::write(&partial, b"stale bytes").unwrap();
        project.assert_prediction_matches("dev");
        assert_eq!(
            std::fs::read(project.workdir("app").join("app.tar.gz")).unwrap(),
            DATA
        );
        assert!(!partial.exists());
    }

    #[test]
    fn bad_attributes_are_configuration_errors() {
        let digest = sha256(DATA);
        let err = config_error(&app("url = \"http://127.0.0.1/a\"\nsha256 = \"abc\"\n"));
        assert!(
            err.contains("`sha256` must be a SHA-256 digest of 64 hex digits, not `abc`"),
            "{err}"
        );
        let err = config_error(&app(&format!(
            "url = \"ftp://127.0.0.1/a\"\nsha256 = \"{digest}\"\n"
        )));
        assert!(
            err.contains("`url` `ftp://127.0.0.1/a` is not an `http://` or `https://` URL"),
            "{err}"
        );
        let err = config_error(&app(&format!(
            "url = \"http://127.0.0.1/\"\nsha256 = \"{digest}\"\n"
        )));
        assert!(err.contains("cannot name the file after `url`"), "{err}");
        let err = config_error(&app(&format!(
            "url = \"http://127.0.0.1/a\"\nsha256 = \"{digest}\"\nsha = 1\n"
        )));
        assert!(err.contains("unknown field `sha`"), "{err}");
    }

    #[test]
    fn the_file_is_named_after_the_url() {
        assert_eq!(
            file_name_of("example.com/a/app-1.0.tar.gz?x=1").as_deref(),
            Some("app-1.0.tar.gz")
        );
        assert_eq!(file_name_of("example.com/"), None);
        assert_eq!(file_name_of("example.com"), None);
    }
}
