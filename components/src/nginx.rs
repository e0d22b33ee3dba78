//! `NginxSite`: one nginx configuration file (a site: a server block, say) from a template,
//! checked with `nginx -t` as part of the whole configuration before it replaces the live
//! file, and nginx reloaded only when the file changed.
//!
//! The name follows nginx's own layout (`sites-available`, `sites-enabled`): the component
//! owns one site's file, not nginx, which its package or a `service` runs.
//!
//! The candidate is checked in context: a copy of the main configuration file, in which the
//! `include` that names the live file includes the candidate instead, goes through
//! `nginx -t`. An error in the candidate, or a clash with the rest of the configuration (a
//! duplicate `server_name` on one port is only a warning; an unknown upstream, a
//! duplicate `location`, a bad directive are errors), leaves the live file as it was.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use batou_core::{
    AllowedPaths, Component, ConfigError, Configure, Deploy, Verdict, diff, refuse_nul,
};
use serde::Deserialize;

use crate::cmd::{CommandOutput, cmd};
use crate::download::is_not_found;

/// Where nginx's main configuration file is when `config` does not say.
const DEFAULT_CONFIG: &str = "/etc/nginx/nginx.conf";

/// An nginx configuration file whose content comes from a template or a literal.
///
/// ```toml
/// [components.shop-site]
/// type = "nginx_site"
/// path = "/etc/nginx/sites-enabled/shop.conf"
/// template = "templates/shop.nginx.conf.j2"   # or `content = "..."`
/// vars = { port = 8080 }
/// config = "/etc/nginx/nginx.conf"            # the main configuration file (default)
/// nginx = "nginx"                             # the program (default)
/// # prefix = "/srv/nginx"                     # nginx's `-p`, when it runs with one
/// # reload = ["systemctl", "reload", "nginx"] # default: `nginx -c <config> -s reload`
/// ```
///
/// The main configuration file must include `path` itself, by name or by a pattern in the
/// last path segment (`include /etc/nginx/sites-enabled/*;`), so that the candidate can be
/// checked in its place.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NginxSite {
    /// The live file (absolute, or relative to the work directory).
    pub path: String,
    /// A project template, rendered with `host`, `environment`, `workdir` and `vars`.
    #[serde(default)]
    pub template: Option<String>,
    /// The content, given literally.
    #[serde(default)]
    pub content: Option<String>,
    /// Variables for `template`.
    #[serde(default)]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// nginx's main configuration file.
    #[serde(default)]
    pub config: Option<String>,
    /// The nginx program.
    #[serde(default)]
    pub nginx: Option<String>,
    /// nginx's prefix directory (`-p`), when it runs with one.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The command that reloads nginx; default: `nginx [-p <prefix>] -c <config> -s reload`.
    #[serde(default)]
    pub reload: Option<Vec<String>>,
    #[serde(skip)]
    resolved: PathBuf,
    #[serde(skip)]
    data: Vec<u8>,
    #[serde(skip)]
    allowed: AllowedPaths,
}

impl NginxSite {
    /// The site file at `path` rendered from the project template `template` with `vars`.
    pub fn new(path: impl Into<String>, template: impl Into<String>) -> Self {
        NginxSite {
            template: Some(template.into()),
            ..NginxSite::empty(path.into())
        }
    }

    /// The site file at `path` with the literal `content`.
    pub fn with_content(path: impl Into<String>, content: impl Into<String>) -> Self {
        NginxSite {
            content: Some(content.into()),
            ..NginxSite::empty(path.into())
        }
    }

    fn empty(path: String) -> Self {
        NginxSite {
            path,
            template: None,
            content: None,
            vars: BTreeMap::new(),
            config: None,
            nginx: None,
            prefix: None,
            reload: None,
            resolved: PathBuf::new(),
            data: Vec::new(),
            allowed: AllowedPaths::default(),
        }
    }

    /// Adds a template variable.
    pub fn var(mut self, key: impl Into<String>, value: impl serde::Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.vars.insert(key.into(), value);
        self
    }

    /// nginx's main configuration file, instead of `/etc/nginx/nginx.conf`.
    pub fn config(mut self, config: impl Into<String>) -> Self {
        self.config = Some(config.into());
        self
    }

    /// nginx's prefix directory (`-p`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The command that reloads nginx.
    pub fn reload<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.reload = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    fn config_path(&self) -> PathBuf {
        PathBuf::from(self.config.as_deref().unwrap_or(DEFAULT_CONFIG))
    }

    fn nginx_argv(&self, config: &Path) -> Vec<String> {
        let mut argv = vec![self.nginx.clone().unwrap_or_else(|| "nginx".into())];
        if let Some(prefix) = &self.prefix {
            argv.extend(["-p".into(), prefix.clone()]);
        }
        argv.extend(["-c".into(), config.to_string_lossy().into_owned()]);
        argv
    }

    fn reload_argv(&self) -> Vec<String> {
        match &self.reload {
            Some(argv) => argv.clone(),
            None => {
                let mut argv = self.nginx_argv(&self.config_path());
                argv.extend(["-s".into(), "reload".into()]);
                argv
            }
        }
    }

    /// `.<name><suffix>` beside the live file: a name no `*` pattern matches.
    fn beside(&self, suffix: &str) -> PathBuf {
        let name = self
            .resolved
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.resolved.with_file_name(format!(".{name}{suffix}"))
    }

    fn pending(&self) -> PathBuf {
        self.beside(".batou-reload")
    }

    fn run(&self, cx: &mut Deploy, argv: &[String]) -> anyhow::Result<CommandOutput> {
        cx.detail(format!("running `{}`", argv.join(" ")));
        cmd(argv)
            .timeout(Duration::from_secs(60))
            .run()
            .map_err(|e| {
                if is_not_found(&e) {
                    anyhow::anyhow!(
                        "`{}` is not installed on the host (install it, e.g. `apt-get install nginx`)",
                        argv[0]
                    )
                } else {
                    e
                }
            })
    }

    /// Checks `candidate` in the live file's place with `nginx -t`.
    fn check(&self, cx: &mut Deploy, candidate: &Path) -> anyhow::Result<()> {
        let config = self.config_path();
        let text = std::fs::read_to_string(&config)
            .with_context(|| format!("cannot read nginx's configuration `{}`", config.display()))?;
        let conf_dir = config.parent().unwrap_or(Path::new("/"));
        let Some(test_text) = substitute(&text, conf_dir, &self.resolved, candidate)? else {
            bail!(
                "nginx's configuration `{}` includes no file or pattern that names `{}`, so the new file cannot be checked in its place; include it (or its directory, `include {}/*;`) from `{}`",
                config.display(),
                self.resolved.display(),
                self.resolved.parent().unwrap_or(Path::new("/")).display(),
                config.display()
            );
        };
        let name = config
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let test_config = conf_dir.join(format!(".{name}.batou-{}.tmp", std::process::id()));
        let result = (|| {
            write_private(&test_config, test_text.as_bytes())?;
            let mut argv = self.nginx_argv(&test_config);
            argv.extend(["-t".into(), "-q".into()]);
            let out = self.run(cx, &argv)?;
            if out.success() {
                return Ok(());
            }
            let tail = out
                .tail()
                .replace(&candidate.to_string_lossy().into_owned(), &self.path)
                .replace(
                    &test_config.to_string_lossy().into_owned(),
                    &config.to_string_lossy(),
                );
            bail!(
                "`nginx -t` refused the new `{}`, which is left as it was:\n{tail}",
                self.path
            )
        })();
        let _ = std::fs::remove_file(&test_config);
        result
    }
}

impl Component for NginxSite {
    fn label(&self) -> String {
        format!("NginxSite('{}')", self.path)
    }

    fn configure(&mut self, cx: &mut Configure) -> anyhow::Result<()> {
        self.data = match (&self.template, &self.content) {
            (Some(_), Some(_)) => bail!("set only one of `template` and `content`"),
            (None, None) => {
                return Err(ConfigError::new("an nginx site needs `template` or `content`").into());
            }
            (Some(template), None) => cx.render_file(template, &self.vars)?.into_bytes(),
            (None, Some(content)) => content.clone().into_bytes(),
        };
        for (what, value) in [
            ("config", &self.config),
            ("nginx", &self.nginx),
            ("prefix", &self.prefix),
        ] {
            if let Some(value) = value {
                refuse_nul(what, value)?;
                if value.is_empty() {
                    bail!("`{what}` is empty");
                }
            }
        }
        if let Some(config) = &self.config
            && !config.starts_with('/')
        {
            bail!("`config` `{config}` must be an absolute path");
        }
        if let Some(reload) = &self.reload {
            if reload.is_empty() {
                bail!("`reload` must name a program");
            }
            for (i, arg) in reload.iter().enumerate() {
                refuse_nul(&format!("reload` element `{}", i + 1), arg)?;
            }
        }
        self.resolved = cx.path(&self.path)?;
        self.allowed = cx.allowed_paths();
        Ok(())
    }

    fn verify(&self, cx: &mut Deploy) -> anyhow::Result<Verdict> {
        self.allowed.check(&self.resolved)?;
        let current = match std::fs::symlink_metadata(&self.resolved) {
            Ok(meta) if meta.is_file() => Some(
                std::fs::read(&self.resolved)
                    .with_context(|| format!("cannot read `{}`", self.resolved.display()))?,
            ),
            Ok(_) => bail!(
                "`{}` is in the way: it is not a regular file",
                self.resolved.display()
            ),
            Err(_) => None,
        };
        if let Some(d) = diff::unified(&self.path, current.as_deref().unwrap_or(b""), &self.data) {
            cx.show_diff(d);
        }
        Ok(match current {
            None => Verdict::needs_update("missing"),
            Some(current) if current != self.data => Verdict::needs_update("content differs"),
            Some(_) if self.pending().exists() => {
                Verdict::needs_update("reload pending: the last one failed")
            }
            Some(_) => Verdict::UpToDate,
        })
    }

    fn update(&mut self, cx: &mut Deploy) -> anyhow::Result<()> {
        self.allowed.check(&self.resolved)?;
        crate::fs::parent(&self.resolved)?;
        let changed = std::fs::read(&self.resolved).ok().as_deref() != Some(self.data.as_slice());
        if changed {
            let candidate = self.beside(&format!(".batou-{}.tmp", std::process::id()));
            let result = (|| {
                write_private(&candidate, &self.data)?;
                std::fs::set_permissions(
                    &candidate,
                    std::os::unix::fs::PermissionsExt::from_mode(0o644),
                )
                .with_context(|| format!("cannot set mode of `{}`", candidate.display()))?;
                self.check(cx, &candidate)?;
                // Marked before the switch: a reload that fails (or never runs) is retried
                // by the next deploy, although the file is then already in place.
                write_private(&self.pending(), b"")?;
                std::fs::rename(&candidate, &self.resolved)
                    .with_context(|| format!("cannot rename into `{}`", self.resolved.display()))
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&candidate);
            }
            result?;
            crate::fs::sync_dir(crate::fs::parent(&self.resolved)?);
        }
        let out = self.run(cx, &self.reload_argv())?;
        out.check().context("cannot reload nginx")?;
        let _ = std::fs::remove_file(self.pending());
        cx.log("nginx reloaded");
        Ok(())
    }
}

/// Writes `data` to a new file at `path` with mode 0600 (replacing an older one).
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write `{}`", path.display()))
}

/// The main configuration `text` with the `include` that names `live` replaced by includes
/// of everything it names but `live`, and `candidate` in `live`'s place; `None` when no
/// `include` of `text` names `live`. Relative patterns are relative to `conf_dir`.
fn substitute(
    text: &str,
    conf_dir: &Path,
    live: &Path,
    candidate: &Path,
) -> anyhow::Result<Option<String>> {
    let mut found = false;
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let replaced = include_pattern(line).and_then(|pattern| {
            let pattern = conf_dir.join(pattern);
            if pattern == live {
                return Some(vec![candidate.to_path_buf()]);
            }
            let (dir, glob) = (pattern.parent()?, pattern.file_name()?.to_str()?);
            if dir != live.parent()? || !glob.contains(['*', '?']) {
                return None;
            }
            let live_name = live.file_name()?.to_str()?;
            if !glob_match(glob, live_name) {
                return None;
            }
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .ok()?
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| n != live_name && glob_match(glob, n))
                .collect();
            names.push(live_name.to_string());
            names.sort();
            Some(
                names
                    .into_iter()
                    .map(|n| {
                        if n == live_name {
                            candidate.to_path_buf()
                        } else {
                            dir.join(n)
                        }
                    })
                    .collect(),
            )
        });
        match replaced {
            Some(files) => {
                found = true;
                for file in files {
                    out.push_str(&format!("include \"{}\";\n", file.display()));
                }
            }
            None => out.push_str(line),
        }
    }
    Ok(found.then_some(out))
}

/// The pattern of a line that is a lone `include <pattern>;` directive.
fn include_pattern(line: &str) -> Option<&str> {
    let line = line.split('#').next()?.trim();
    let rest = line.strip_prefix("include")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let pattern = rest.trim().strip_suffix(';')?.trim();
    let pattern = pattern
        .strip_prefix('"')
        .and_then(|p| p.strip_suffix('"'))
        .or_else(|| {
            pattern
                .strip_prefix('\'')
                .and_then(|p| p.strip_suffix('\''))
        })
        .unwrap_or(pattern);
    (!pattern.is_empty() && !pattern.contains(char::is_whitespace)).then_some(pattern)
}

/// Whether `name` matches the glob `pattern` (`*` and `?`), as glob(3) matches a file name:
/// a leading `.` only matches a leading `.` in the pattern.
fn glob_match(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    fn matches(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => matches(&p[1..], n) || (!n.is_empty() && matches(p, &n[1..])),
            (Some('?'), Some(_)) => matches(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => matches(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    matches(&p, &n)
}

#[cfg(test)]
mod tests {
    use batou_core::ConvergeOptions;
    use batou_test_support::Nginx;

    use super::*;
    use crate::test_util::project;

    use batou_test_support::free_port;

    fn server(port: u16, body: &str) -> String {
        format!(
            "server {{\n  listen 127.0.0.1:{port};\n  location / {{ return 200 \"{body}\\n\"; }}\n}}\n"
        )
    }

    /// A running nginx (its first site on a port of its own) and a project whose root
    /// component `site` writes `sites/shop.conf` from `templates/shop.conf.j2`.
    fn setup(extra: &str) -> (Nginx, u16, batou_core::testing::TestProject) {
        let (first, port) = (free_port(), free_port());
        let nginx = Nginx::start(&server(first, "first"), first);
        let project = project(&format!(
            "[environment]\nallow_paths = [\"{dir}\"]\n\n[hosts.localhost]\ncomponents = [\"site\"]\n\n[components.site]\ntype = \"nginx_site\"\npath = \"{dir}/sites/shop.conf\"\ntemplate = \"templates/shop.conf.j2\"\nvars = {{ port = {port} }}\nconfig = \"{dir}/nginx.conf\"\nprefix = \"{dir}\"\n{extra}",
            dir = nginx.dir().display()
        ));
        (nginx, port, project)
    }

    fn template(body: &str) -> String {
        format!(
            "server {{\n  listen 127.0.0.1:{{{{ port }}}};\n  location / {{ return 200 \"{body} {{{{ host.name }}}}\\n\"; }}\n}}\n"
        )
    }

    /// Names in `dir` that are not what the test put there: temporary files left behind.
    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    #[test]
    fn a_site_is_checked_written_and_reloaded_only_when_it_changed() {
        let (nginx, port, project) = setup("");
        project.file("templates/shop.conf.j2", template("one"));
        let pid = nginx.pid();
        let run = project.assert_prediction_matches("dev");
        assert_eq!(run.reasons()[1], ("site".into(), "missing".into()));
        assert_eq!(run.logs(), ["nginx reloaded"]);
        Nginx::wait_for_body(port, "one localhost\n");

        project.file("templates/shop.conf.j2", template("two"));
        let run = project.assert_prediction_matches("dev");
        assert_eq!(run.reasons(), [("site".into(), "content differs".into())]);
        assert!(
            run.diffs()[0]
                .1
                .contains("+  location / { return 200 \"two"),
            "{:?}",
            run.diffs()
        );
        Nginx::wait_for_body(port, "two localhost\n");
        assert_eq!(nginx.pid(), pid, "a reload, not a restart");
        assert!(leftovers(&nginx.sites()).is_empty());
        assert!(leftovers(nginx.dir()).is_empty());
    }

    #[test]
    fn a_candidate_that_nginx_refuses_leaves_the_live_file() {
        let (nginx, port, project) = setup("");
        project.file("templates/shop.conf.j2", template("one"));
        project.converge("dev");
        Nginx::wait_for_body(port, "one localhost\n");
        let live = nginx.sites().join("shop.conf");
        let before = std::fs::read_to_string(&live).unwrap();

        // Wrong on its own: an unknown directive.
        project.file("templates/shop.conf.j2", "bogus on;\n");
        let failure = project
            .run("dev", ConvergeOptions::default())
            .failure()
            .unwrap();
        let path = format!("{}/sites/shop.conf", nginx.dir().display());
        assert!(
            failure.contains(&format!(
                "`nginx -t` refused the new `{path}`, which is left as it was"
            )),
            "{failure}"
        );
        assert!(
            failure.contains(&format!("unknown directive \"bogus\" in {path}:1")),
            "{failure}"
        );

        // Wrong only in context: the first site already defines this upstream.
        let first = std::fs::read_to_string(nginx.sites().join("first.conf")).unwrap();
        let clash = format!("upstream app {{ server 127.0.0.1:1; }}\n{first}");
        std::fs::write(nginx.sites().join("first.conf"), &clash).unwrap();
        project.file(
            "templates/shop.conf.j2",
            "upstream app { server 127.0.0.1:2; }\n",
        );
        let failure = project
            .run("dev", ConvergeOptions::default())
            .failure()
            .unwrap();
        assert!(failure.contains("duplicate upstream \"app\""), "{failure}");

        assert_eq!(std::fs::read_to_string(&live).unwrap(), before);
        assert!(
            leftovers(&nginx.sites()).is_empty(),
            "{:?}",
            leftovers(&nginx.sites())
        );
        assert!(
            leftovers(nginx.dir()).is_empty(),
            "{:?}",
            leftovers(nginx.dir())
        );
        Nginx::wait_for_body(port, "one localhost\n");

        project.file("templates/shop.conf.j2", template("fixed"));
        project.assert_prediction_matches("dev");
        Nginx::wait_for_body(port, "fixed localhost\n");
    }

    #[test]
    fn a_failed_reload_is_retried_by_the_next_deploy() {
        let (nginx, port, project) = setup("reload = [\"false\"]\n");
        project.file("templates/shop.conf.j2", template("one"));
        let failure = project
            .run("dev", ConvergeOptions::default())
            .failure()
            .unwrap();
        assert!(failure.contains("cannot reload nginx"), "{failure}");
        assert!(nginx.sites().join("shop.conf").exists());

        project.env(
            "dev",
            &format!(
                "[environment]\nallow_paths = [\"{dir}\"]\n\n[hosts.localhost]\ncomponents = [\"site\"]\n\n[components.site]\ntype = \"nginx_site\"\npath = \"{dir}/sites/shop.conf\"\ntemplate = \"templates/shop.conf.j2\"\nvars = {{ port = {port} }}\nconfig = \"{dir}/nginx.conf\"\nprefix = \"{dir}\"\n",
                dir = nginx.dir().display()
            ),
        );
        let run = project.assert_prediction_matches("dev");
        assert_eq!(
            run.reasons(),
            [("site".into(), "reload pending: the last one failed".into())]
        );
        Nginx::wait_for_body(port, "one localhost\n");
    }

    #[test]
    fn a_site_the_main_configuration_does_not_include_cannot_be_checked() {
        let (nginx, _port, project) = setup("");
        project.env(
            "dev",
            &format!(
                "[environment]\nallow_paths = [\"{dir}\"]\n\n[hosts.localhost]\ncomponents = [\"site\"]\n\n[components.site]\ntype = \"nginx_site\"\npath = \"{dir}/elsewhere.conf\"\ncontent = \"\"\nconfig = \"{dir}/nginx.conf\"\nprefix = \"{dir}\"\n",
                dir = nginx.dir().display()
            ),
        );
        let failure = project
            .run("dev", ConvergeOptions::default())
            .failure()
            .unwrap();
        assert!(
            failure.contains("includes no file or pattern that names"),
            "{failure}"
        );
        assert!(!nginx.dir().join("elsewhere.conf").exists());
    }

    #[test]
    fn includes_and_globs_are_read_as_nginx_reads_them() {
        assert_eq!(
            include_pattern("  include /etc/nginx/sites-enabled/*;\n"),
            Some("/etc/nginx/sites-enabled/*")
        );
        assert_eq!(
            include_pattern("include \"conf.d/*.conf\"; # all\n"),
            Some("conf.d/*.conf")
        );
        assert_eq!(include_pattern("include_foo x;"), None);
        assert_eq!(include_pattern("# include x;"), None);
        assert!(glob_match("*.conf", "shop.conf"));
        assert!(glob_match("*", "shop.conf"));
        assert!(!glob_match("*", ".shop.conf.batou-1.tmp"));
        assert!(!glob_match("*.conf", "shop.conf.bak"));
        assert!(glob_match("s?op.conf", "shop.conf"));
    }
}
