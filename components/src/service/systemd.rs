//! systemd: the unit file, an `EnvironmentFile` (mode 0600) for secret variables, and
//! `systemctl` (`daemon-reload` only when the unit changed, `enable --now`, `restart`,
//! `disable --now`, `show` for the status).
//!
//! systemd does not run where this is tested: units are checked as text (snapshot) and with
//! `systemd-analyze verify`; the `systemctl` calls are not exercised against a real systemd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use super::Observed;
use crate::cmd::cmd;

/// The timeout of every `systemctl` call (`enable --now` and `restart` wait for the start job).
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(90);

/// The target units are enabled for: `enable` links them into `<unit_dir>/<target>.wants/`.
pub(crate) const WANTED_BY: &str = "multi-user.target";

/// What a systemd service is, once configured.
#[derive(Debug, Clone)]
pub(crate) struct Systemd {
    /// `<name>.service`.
    pub(crate) unit: String,
    /// `<unit_dir>/<unit>`.
    pub(crate) unit_file: PathBuf,
}

/// What the unit file is made of.
pub(crate) struct Unit<'a> {
    pub(crate) description: &'a str,
    pub(crate) argv: &'a [String],
    pub(crate) cwd: &'a Path,
    /// `Environment=` lines (no secrets).
    pub(crate) env: &'a BTreeMap<String, String>,
    /// The `EnvironmentFile=` with the secret variables, if there are any.
    pub(crate) env_file: Option<&'a Path>,
    pub(crate) user: Option<&'a str>,
}

/// The unit file's text.
pub(crate) fn render_unit(u: &Unit) -> String {
    let mut out = String::from("# Written by batou; changes here are overwritten.\n[Unit]\n");
    out.push_str(&format!("Description={}\n", specifiers(u.description)));
    out.push_str("\n[Service]\nType=simple\n");
    let words: Vec<String> = u.argv.iter().map(|a| exec_word(a)).collect();
    out.push_str(&format!("ExecStart={}\n", words.join(" ")));
    out.push_str(&format!(
        "WorkingDirectory={}\n",
        specifiers(&u.cwd.to_string_lossy())
    ));
    for (key, value) in u.env {
        out.push_str(&format!(
            "Environment={}\n",
            quoted(&format!("{key}={value}"), false)
        ));
    }
    if let Some(file) = u.env_file {
        out.push_str(&format!(
            "EnvironmentFile={}\n",
            specifiers(&file.to_string_lossy())
        ));
    }
    if let Some(user) = u.user {
        out.push_str(&format!("User={}\n", specifiers(user)));
    }
    out.push_str(&format!(
        "Restart=always\nRestartSec=1\n\n[Install]\nWantedBy={WANTED_BY}\n"
    ));
    out
}

/// The `EnvironmentFile=` text: `KEY="value"`, with `\`, `"`, `$` and `` ` `` escaped.
pub(crate) fn render_env_file(vars: &BTreeMap<String, String>) -> String {
    vars.iter()
        .map(|(k, v)| {
            let mut escaped = String::new();
            for c in v.chars() {
                if "\\\"$`".contains(c) {
                    escaped.push('\\');
                }
                escaped.push(c);
            }
            format!("{k}=\"{escaped}\"\n")
        })
        .collect()
}

/// One `ExecStart=` word: quoted, `$` doubled so that no variable is expanded.
fn exec_word(word: &str) -> String {
    if word == ";" {
        return "\\;".into();
    }
    quoted(word, true)
}

/// `"text"` with C-style escapes and `%` doubled (unit file specifiers); `$` doubled too
/// when `dollars`.
fn quoted(text: &str, dollars: bool) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '%' => out.push_str("%%"),
            '$' if dollars => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `%` doubled, for values that are not quoted.
fn specifiers(text: &str) -> String {
    text.replace('%', "%%")
}

impl Systemd {
    /// `systemctl show`: what systemd says of the unit; an unknown unit is not running.
    pub(crate) fn observe(&self) -> anyhow::Result<Observed> {
        let out = self.systemctl(&[
            "show",
            &self.unit,
            "--property=LoadState,ActiveState,SubState,MainPID,NRestarts,UnitFileState,ActiveEnterTimestampMonotonic",
        ])?;
        Ok(parse_show(&out, monotonic_now()))
    }

    /// `daemon-reload` when the unit changed, then `enable --now`.
    pub(crate) fn enable(&self, reload: bool) -> anyhow::Result<()> {
        if reload {
            self.systemctl(&["daemon-reload"])?;
        }
        self.systemctl(&["enable", "--now", &self.unit]).map(drop)
    }

    /// `daemon-reload` when the unit changed, then `restart` (and `enable`).
    pub(crate) fn restart(&self, reload: bool) -> anyhow::Result<()> {
        if reload {
            self.systemctl(&["daemon-reload"])?;
        }
        self.systemctl(&["enable", &self.unit])?;
        self.systemctl(&["restart", &self.unit]).map(drop)
    }

    /// `start`, for the `service start` verb.
    pub(crate) fn start(&self) -> anyhow::Result<()> {
        self.systemctl(&["start", &self.unit]).map(drop)
    }

    /// `stop`, for the `service stop` verb.
    pub(crate) fn stop(&self) -> anyhow::Result<()> {
        self.systemctl(&["stop", &self.unit]).map(drop)
    }

    /// `disable --now`.
    pub(crate) fn disable(&self, reload: bool) -> anyhow::Result<()> {
        if reload {
            self.systemctl(&["daemon-reload"])?;
        }
        self.systemctl(&["disable", "--now", &self.unit]).map(drop)
    }

    /// `daemon-reload`, after a unit file was removed.
    pub(crate) fn reload(&self) -> anyhow::Result<()> {
        self.systemctl(&["daemon-reload"]).map(drop)
    }

    /// The journal's last `lines` lines of the unit.
    pub(crate) fn log_tail(&self, lines: usize) -> Option<(String, String)> {
        let out = cmd(["journalctl", "--no-pager", "-o", "short-iso", "-n"])
            .arg(lines.to_string())
            .arg("-u")
            .arg(&self.unit)
            .timeout(Duration::from_secs(10))
            .run()
            .ok()?;
        out.success().then(|| {
            (
                format!("journalctl -u {}", self.unit),
                out.stdout.trim_end().to_string(),
            )
        })
    }

    fn systemctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut out = cmd(["systemctl", "--no-pager"]).timeout(SYSTEMCTL_TIMEOUT);
        for arg in args {
            out = out.arg(*arg);
        }
        let shown = args.join(" ");
        let result = out
            .run()
            .with_context(|| format!("cannot run `systemctl {shown}`: is systemd installed?"))?;
        if !result.success() {
            bail!("{}", result.failure());
        }
        Ok(result.stdout)
    }
}

/// `KEY=value` lines of `systemctl show`, read into what the supervisor says;
/// `monotonic_us` is now on the monotonic clock, for the uptime.
pub(crate) fn parse_show(text: &str, monotonic_us: Option<u64>) -> Observed {
    let props: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| props.get(k).copied().unwrap_or_default();
    let loaded = get("LoadState") == "loaded";
    let active = get("ActiveState");
    let pid = get("MainPID").parse::<u32>().ok().filter(|p| *p != 0);
    let running = active == "active" && pid.is_some();
    let since = get("ActiveEnterTimestampMonotonic")
        .parse::<u64>()
        .ok()
        .filter(|t| *t != 0)
        .zip(monotonic_us)
        .map(|(entered, now)| now.saturating_sub(entered) / 1_000_000);
    let sub = get("SubState");
    Observed {
        supervised: loaded,
        enabled: matches!(get("UnitFileState"), "enabled" | "enabled-runtime"),
        running,
        want_up: matches!(active, "active" | "activating" | "reloading"),
        pid: pid.filter(|_| running),
        since: since.filter(|_| running),
        exits: get("NRestarts").parse().ok(),
        detail: (!running || sub != "running").then(|| {
            format!(
                "{} ({})",
                if active.is_empty() { "unknown" } else { active },
                if sub.is_empty() { "?" } else { sub }
            )
        }),
    }
}

/// Microseconds on `CLOCK_MONOTONIC`, which systemd's `...TimestampMonotonic` uses.
fn monotonic_now() -> Option<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
    Some(u64::try_from(now.tv_sec()).ok()? * 1_000_000 + u64::try_from(now.tv_nsec()).ok()? / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web_unit(env_file: Option<&Path>, user: Option<&str>) -> String {
        let argv: Vec<String> = [
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "127.0.0.1",
        ]
        .map(String::from)
        .to_vec();
        let env = BTreeMap::from([
            ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
            ("GREETING".to_string(), "100% \"sure\" $HOME".to_string()),
        ]);
        render_unit(&Unit {
            description: "web (environment production)",
            argv: &argv,
            cwd: Path::new("/srv/app/work/web/htdocs"),
            env: &env,
            env_file,
            user,
        })
    }

    #[test]
    fn a_unit_renders_escaped() {
        insta::assert_snapshot!(
            "unit",
            web_unit(
                Some(Path::new("/srv/app/work/web/.service/web.env")),
                Some("www-data")
            )
        );
        let argv: Vec<String> = ["/bin/sh", "-c", "echo $HOME 50% \\ \"q\"", ";"]
            .map(String::from)
            .to_vec();
        let unit = render_unit(&Unit {
            description: "x",
            argv: &argv,
            cwd: Path::new("/"),
            env: &BTreeMap::new(),
            env_file: None,
            user: None,
        });
        assert!(
            unit.contains(r#"ExecStart="/bin/sh" "-c" "echo $$HOME 50%% \\ \"q\"" \;"#),
            "{unit}"
        );
    }

    #[test]
    fn env_files_escape_what_systemd_would_expand() {
        let vars = BTreeMap::from([("TOKEN".to_string(), r#"a"b$c\d`e"#.to_string())]);
        assert_eq!(render_env_file(&vars), "TOKEN=\"a\\\"b\\$c\\\\d\\`e\"\n");
    }

    /// `systemd-analyze verify` on rendered units: the one check against systemd's own
    /// reading of them that runs here.
    #[test]
    fn systemd_analyze_accepts_rendered_units() {
        let analyze = Path::new("/usr/bin/systemd-analyze");
        assert!(
            analyze.exists(),
            "systemd-analyze is missing: install it with `apt-get install systemd` (scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let htdocs = dir.path().join("htdocs");
        std::fs::create_dir(&htdocs).unwrap();
        let env_file = dir.path().join("web.env");
        std::fs::write(
            &env_file,
            render_env_file(&BTreeMap::from([("K".into(), "v".into())])),
        )
        .unwrap();
        let argv: Vec<String> = ["/usr/bin/python3", "-m", "http.server", "8080"]
            .map(String::from)
            .to_vec();
        let env = BTreeMap::from([("A".to_string(), "50% \"x\" $y".to_string())]);
        let unit = render_unit(&Unit {
            description: "web (environment dev)",
            argv: &argv,
            cwd: &htdocs,
            env: &env,
            env_file: Some(&env_file),
            user: Some("root"),
        });
        let path = dir.path().join("batou-test-web.service");
        std::fs::write(&path, unit).unwrap();
        let out = cmd([analyze.to_string_lossy().into_owned()])
            .arg("verify")
            .arg("--man=no")
            .arg(path.to_string_lossy())
            .env("SYSTEMD_LOG_LEVEL", "warning")
            .timeout(Duration::from_secs(60))
            .run()
            .unwrap();
        let complaints: Vec<&str> = out
            .stderr
            .lines()
            .chain(out.stdout.lines())
            .filter(|l| l.contains("batou-test-web"))
            .collect();
        assert!(
            out.success() && complaints.is_empty(),
            "systemd-analyze verify: {}\n{}\n{}",
            out.ending(),
            out.stdout,
            out.stderr
        );
    }

    #[test]
    fn systemctl_show_reads_into_a_status() {
        let running = "LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=4242\nNRestarts=2\nUnitFileState=enabled\nActiveEnterTimestampMonotonic=5000000\n";
        let seen = parse_show(running, Some(65_000_000));
        assert_eq!(
            (
                seen.supervised,
                seen.enabled,
                seen.running,
                seen.pid,
                seen.since,
                seen.exits
            ),
            (true, true, true, Some(4242), Some(60), Some(2))
        );
        assert_eq!(seen.detail, None);
        let missing = "LoadState=not-found\nActiveState=inactive\nSubState=dead\nMainPID=0\nNRestarts=0\nUnitFileState=\nActiveEnterTimestampMonotonic=0\n";
        let seen = parse_show(missing, Some(1));
        assert_eq!(
            (seen.supervised, seen.enabled, seen.running, seen.pid),
            (false, false, false, None)
        );
        assert_eq!(seen.detail.as_deref(), Some("inactive (dead)"));
        let failed = parse_show(
            "LoadState=loaded\nActiveState=failed\nSubState=failed\nMainPID=0\nUnitFileState=disabled\n",
            None,
        );
        assert_eq!(failed.detail.as_deref(), Some("failed (failed)"));
        assert!(!failed.want_up);
    }
}
