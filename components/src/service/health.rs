//! Health: what proves a started service healthy (`http`, `tcp`, `command`), durations as
//! written in environments (`20s`, `500ms`, `1m`), and the wait after a start or restart that
//! either proves the service healthy and stable or fails with why.
//!
//! The supervisor is asked through a closure returning [`Observed`], so that the wait is the
//! same for every manager; the caller adds the service's log to a failure.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};

use super::Observed;
use crate::cmd::cmd;

/// How long a service may take to become healthy after a start or restart, when `within` is
/// not given.
pub(crate) const DEFAULT_WITHIN: Duration = Duration::from_secs(30);
/// How long a healthy service must keep running, with the same process, when `stable` is not
/// given.
pub(crate) const DEFAULT_STABLE: Duration = Duration::from_secs(2);
/// Restarts by the supervisor while waiting for health that count as a crash loop.
const CRASH_LOOP: u64 = 3;
/// The pause between two looks at the supervisor and the probe.
const POLL: Duration = Duration::from_millis(100);
/// The most one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What proves a service healthy, and how long to wait for it.
///
/// ```toml
/// health = { http = "http://127.0.0.1:8080/", within = "20s", stable = "3s" }
/// health = { http = "http://127.0.0.1:8080/ready", status = 204 }
/// health = { tcp = "127.0.0.1:5432" }
/// health = { command = ["pg_isready", "-q"] }
/// health = { within = "10s", stable = "5s" }      # no probe: the process runs and stays up
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub(crate) probe: Option<Probe>,
    pub(crate) within: Duration,
    pub(crate) stable: Duration,
}

/// One way of asking a service whether it is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// An HTTP/1.0 `GET` answered with a 2xx status, or with `status`.
    Http { url: HttpUrl, status: Option<u16> },
    /// A TCP connection to `host:port` is accepted.
    Tcp(String),
    /// The program exits with code 0.
    Command(Vec<String>),
}

/// An `http://` URL, split for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpUrl {
    text: String,
    host: String,
    port: u16,
    path: String,
}

/// Why a service failed to prove itself healthy, without its log (the caller adds it).
#[derive(Debug)]
pub(crate) struct Unhealthy(pub(crate) String);

/// What a successful wait saw, for the log line.
#[derive(Debug)]
pub(crate) struct Proof {
    /// The healthy process.
    pub(crate) pid: Option<u32>,
    /// How long it took to become healthy.
    pub(crate) after: Duration,
    /// What the probe said, when there is one.
    pub(crate) probe: Option<String>,
}

/// Where the wait starts from.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Baseline {
    /// The process before a restart: it is the old one as long as the supervisor shows it.
    pub(crate) old_pid: Option<u32>,
    /// The supervisor's exit or restart count that the start or restart itself accounts for.
    pub(crate) exits: u64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            probe: None,
            within: DEFAULT_WITHIN,
            stable: DEFAULT_STABLE,
        }
    }
}

impl Health {
    /// Healthy when `GET url` (an `http://` URL) answers with a 2xx status.
    pub fn http(url: &str) -> anyhow::Result<Self> {
        Ok(Health {
            probe: Some(Probe::Http {
                url: HttpUrl::parse(url).map_err(anyhow::Error::msg)?,
                status: None,
            }),
            ..Health::default()
        })
    }

    /// Healthy when `host:port` accepts a TCP connection.
    pub fn tcp(address: impl Into<String>) -> Self {
        Health {
            probe: Some(Probe::Tcp(address.into())),
            ..Health::default()
        }
    }

    /// Healthy when `argv` exits with code 0 (run in the root component's work directory).
    pub fn command<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Health {
            probe: Some(Probe::Command(argv.into_iter().map(Into::into).collect())),
            ..Health::default()
        }
    }

    /// Healthy when the process runs, and stays up for `stable`.
    pub fn process() -> Self {
        Health::default()
    }

    /// The HTTP status that counts as healthy, instead of any 2xx (for [`Health::http`]).
    pub fn status(mut self, status: u16) -> Self {
        if let Some(Probe::Http { status: s, .. }) = &mut self.probe {
            *s = Some(status);
        }
        self
    }

    /// How long the service may take to become healthy (default 30 s).
    pub fn within(mut self, within: Duration) -> Self {
        self.within = within;
        self
    }

    /// How long a healthy service must keep its process (default 2 s).
    pub fn stable(mut self, stable: Duration) -> Self {
        self.stable = stable;
        self
    }

    /// Waits until the service is healthy, at most `within`, then watches it for `stable`.
    ///
    /// `observe` asks the supervisor; `workdir` is where a `command` probe runs.
    pub(crate) fn prove(
        &self,
        name: &str,
        baseline: Baseline,
        workdir: &Path,
        mut observe: impl FnMut() -> anyhow::Result<Observed>,
    ) -> Result<Proof, Unhealthy> {
        let started = Instant::now();
        let deadline = started + self.within;
        let mut pids = PidWatch::new(baseline);
        let mut last_problem = String::from("the supervisor has not started it yet");
        let (pid, probe) = loop {
            let now = observe().map_err(|e| Unhealthy(format!("{e:#}")))?;
            let restarts = pids.see(&now);
            if restarts >= CRASH_LOOP {
                return Err(Unhealthy(format!(
                    "service `{name}` restarted {restarts} times in {}: it does not stay up",
                    seconds(started.elapsed())
                )));
            }
            if now.running && !pids.is_old(now.pid) {
                match &self.probe {
                    None => break (now.pid, None),
                    Some(probe) => match probe.check(workdir, deadline) {
                        Ok(said) => break (now.pid, Some(said)),
                        Err(problem) => last_problem = problem,
                    },
                }
            } else if !now.running {
                last_problem = format!("it is not running{}", detail(&now));
            } else if let Some(old) = now.pid {
                last_problem = format!("the process it replaces (pid {old}) has not ended");
            }
            if Instant::now() >= deadline {
                return Err(Unhealthy(format!(
                    "service `{name}` is not healthy after {}: {last_problem}",
                    seconds(self.within)
                )));
            }
            std::thread::sleep(POLL);
        };
        let after = started.elapsed();
        let at_healthy = pids.restarts;
        let after_healthy = Instant::now();
        let stable_until = Instant::now() + self.stable;
        loop {
            let now = observe().map_err(|e| Unhealthy(format!("{e:#}")))?;
            let restarts = pids.see(&now);
            if !now.running && restarts == at_healthy {
                return Err(Unhealthy(format!(
                    "service `{name}` went down {} after it was healthy{}: it did not stay up for {}",
                    seconds(after_healthy.elapsed()),
                    detail(&now),
                    seconds(self.stable)
                )));
            }
            if !now.running || now.pid != pid || restarts > at_healthy {
                let restarts = (restarts - at_healthy).max(1);
                return Err(Unhealthy(format!(
                    "service `{name}` restarted {restarts} {} in {}: it was healthy, then did not stay up for {}",
                    if restarts == 1 { "time" } else { "times" },
                    seconds(started.elapsed()),
                    seconds(self.stable)
                )));
            }
            if Instant::now() >= stable_until {
                break;
            }
            std::thread::sleep(POLL.min(stable_until.saturating_duration_since(Instant::now())));
        }
        Ok(Proof { pid, after, probe })
    }
}

/// Restarts seen while waiting: the supervisor's own count above the baseline, or the
/// process ids that came and went, whichever saw more.
struct PidWatch {
    baseline: Baseline,
    last: Option<u32>,
    changes: u64,
    restarts: u64,
}

impl PidWatch {
    fn new(baseline: Baseline) -> Self {
        PidWatch {
            baseline,
            last: None,
            changes: 0,
            restarts: 0,
        }
    }

    /// Whether `pid` is the process from before a restart.
    fn is_old(&self, pid: Option<u32>) -> bool {
        pid.is_some() && pid == self.baseline.old_pid && self.last.is_none()
    }

    /// Takes one observation in; the restarts seen so far.
    fn see(&mut self, now: &Observed) -> u64 {
        if now.running && !self.is_old(now.pid) {
            if let (Some(last), Some(pid)) = (self.last, now.pid)
                && last != pid
            {
                self.changes += 1;
            }
            self.last = now.pid.or(self.last);
        }
        let counted = now
            .exits
            .map(|e| e.saturating_sub(self.baseline.exits))
            .unwrap_or(0);
        self.restarts = self.changes.max(counted);
        self.restarts
    }
}

impl Probe {
    /// Asks once; what the service said, or why it is not healthy.
    fn check(&self, workdir: &Path, deadline: Instant) -> Result<String, String> {
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(200), PROBE_TIMEOUT);
        match self {
            Probe::Http { url, status } => {
                let got = http_get(url, timeout).map_err(|e| format!("GET {}: {e}", url.text))?;
                let healthy = match status {
                    Some(want) => got == *want,
                    None => (200..300).contains(&got),
                };
                let want = match status {
                    Some(want) => want.to_string(),
                    None => "2xx".to_string(),
                };
                if healthy {
                    Ok(format!("`{}` answered {got}", url.text))
                } else {
                    Err(format!("GET {} answered {got}, expected {want}", url.text))
                }
            }
            Probe::Tcp(address) => {
                tcp_connect(address, timeout).map_err(|e| format!("connect to {address}: {e}"))?;
                Ok(format!("`{address}` accepted a connection"))
            }
            Probe::Command(argv) => {
                let shown = argv.join(" ");
                let out = cmd(argv.iter().cloned())
                    .cwd(workdir)
                    .timeout(timeout)
                    .run()
                    .map_err(|e| format!("`{shown}`: {e:#}"))?;
                if out.success() {
                    Ok(format!("`{shown}` succeeded"))
                } else {
                    let tail = out.stderr.lines().chain(out.stdout.lines()).last();
                    Err(format!(
                        "`{shown}` {}{}",
                        out.ending(),
                        tail.map(|l| format!(" ({l})")).unwrap_or_default()
                    ))
                }
            }
        }
    }
}

impl HttpUrl {
    /// `http://host[:port][/path]`; anything else is refused with why.
    pub(crate) fn parse(text: &str) -> Result<HttpUrl, String> {
        let Some(rest) = text.strip_prefix("http://") else {
            return Err(if text.starts_with("https://") {
                format!(
                    "health URL `{text}` is https: only `http://` URLs can be probed (use `tcp = \"host:port\"` for a TLS port)"
                )
            } else {
                format!("health URL `{text}` must start with `http://`")
            });
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "health URL `{text}` has white space or control characters in its path"
            ));
        }
        let (host, port) = split_host_port(authority)
            .map_err(|e| format!("health URL `{text}`: {e}"))?
            .map_or_else(|| (authority.to_string(), Some(80)), |(h, p)| (h, Some(p)));
        if host.is_empty() {
            return Err(format!("health URL `{text}` has no host"));
        }
        Ok(HttpUrl {
            text: text.to_string(),
            host,
            port: port.unwrap_or(80),
            path: path.to_string(),
        })
    }
}

/// `host:port` (with `[v6]:port`): `None` when there is no port.
fn split_host_port(authority: &str) -> Result<Option<(String, u16)>, String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err("an IPv6 address needs its closing `]`".into());
        };
        match after.strip_prefix(':') {
            Some(port) => (host, port),
            None if after.is_empty() => return Ok(None),
            None => return Err(format!("unexpected `{after}` after the address")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some(pair) => pair,
            None => return Ok(None),
        }
    };
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("port `{port}` is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err("port 0 cannot be probed".into());
    }
    Ok(Some((host.to_string(), port)))
}

/// The first address of `host:port` that accepts a connection within `timeout`.
fn connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    // Addresses and `localhost` without the resolver: in the static agent, glibc's resolver
    // would load the host's NSS modules, which need the glibc it was built with.
    let literal: Option<Vec<std::net::SocketAddr>> = match host {
        "localhost" => Some(vec![
            (std::net::Ipv4Addr::LOCALHOST, port).into(),
            (std::net::Ipv6Addr::LOCALHOST, port).into(),
        ]),
        _ => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| vec![(ip, port).into()]),
    };
    let addresses = match literal {
        Some(addresses) => addresses,
        None => (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
            .collect(),
    };
    let mut last = format!("`{host}` has no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = io_reason(&e),
        }
    }
    Err(last)
}

fn tcp_connect(address: &str, timeout: Duration) -> Result<(), String> {
    match split_host_port(address)? {
        Some((host, port)) => connect(&host, port, timeout).map(drop),
        None => Err(format!("`{address}` has no port")),
    }
}

/// An HTTP/1.0 `GET`: the status code of the answer.
fn http_get(url: &HttpUrl, timeout: Duration) -> Result<u16, String> {
    let mut stream = connect(&url.host, url.port, timeout)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| io_reason(&e))?;
    let host = if url.port == 80 {
        url.host.clone()
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: batou-health\r\nConnection: close\r\n\r\n",
        url.path
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| io_reason(&e))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(io_reason(&e)),
        }
    }
    parse_status_line(&head)
}

/// The status code of `HTTP/1.x NNN ...`.
fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    if line.is_empty() {
        return Err("the connection closed without an answer".into());
    }
    let mut words = line.split_whitespace();
    match (words.next(), words.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(code))) if version.starts_with("HTTP/") => Ok(code),
        _ => Err(format!(
            "the answer is not HTTP: `{}`",
            line.chars().take(60).collect::<String>()
        )),
    }
}

/// An I/O error as a short phrase: `connection refused`, `timed out`.
fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".into(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timed out".into(),
        ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

/// ` (normally down)`, the supervisor's word on a stopped service, when it says one.
fn detail(now: &Observed) -> String {
    now.detail
        .as_ref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

/// A duration for people: `20 s`, `0.5 s`, `1.2 s`.
pub(crate) fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", s)
    }
}

/// A duration as written in an environment: `20s`, `500ms`, `1m`, `1m 30s`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let hint = "write a number and a unit, e.g. `20s`, `500ms` or `1m`";
    if text.trim().is_empty() {
        return Err(format!("duration is empty: {hint}"));
    }
    if text.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!("duration `{text}` has no unit: {hint}"));
    }
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration `{text}`: {e}: {hint}"))
}

/// The `health` table of an environment, checked: exactly one probe (or none), durations
/// parsed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthTable {
    #[serde(default)]
    http: Option<String>,
    #[serde(default)]
    status: Option<u16>,
    #[serde(default)]
    tcp: Option<String>,
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default, deserialize_with = "duration")]
    within: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    stable: Option<Duration>,
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as \"20s\", \"500ms\" or \"1m\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(Text).map(Some)
}

impl<'de> Deserialize<'de> for Health {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let table = HealthTable::deserialize(deserializer)?;
        let given = [
            table.http.is_some(),
            table.tcp.is_some(),
            table.command.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(D::Error::custom(
                "`health` takes one of `http`, `tcp` and `command`, not several",
            ));
        }
        if table.status.is_some() && table.http.is_none() {
            return Err(D::Error::custom(
                "`health` has a `status` but no `http` URL to expect it from",
            ));
        }
        let probe = if let Some(url) = table.http {
            Some(Probe::Http {
                url: HttpUrl::parse(&url).map_err(D::Error::custom)?,
                status: table.status,
            })
        } else if let Some(address) = table.tcp {
            match split_host_port(&address) {
                Ok(Some(_)) => Some(Probe::Tcp(address)),
                Ok(None) => {
                    return Err(D::Error::custom(format!(
                        "health `tcp = \"{address}\"` needs a port: `host:port`"
                    )));
                }
                Err(e) => {
                    return Err(D::Error::custom(format!(
                        "health `tcp = \"{address}\"`: {e}"
                    )));
                }
            }
        } else if let Some(argv) = table.command {
            if argv.is_empty() {
                return Err(D::Error::custom(
                    "health `command` is empty: it needs a program to run",
                ));
            }
            if argv.iter().any(|a| a.contains('\0')) {
                return Err(D::Error::custom(
                    "health `command` contains a NUL byte, which no command can receive",
                ));
            }
            Some(Probe::Command(argv))
        } else {
            None
        };
        let within = table.within.unwrap_or(DEFAULT_WITHIN);
        if within.is_zero() {
            return Err(D::Error::custom("health `within` must be longer than 0 s"));
        }
        Ok(Health {
            probe,
            within,
            stable: table.stable.unwrap_or(DEFAULT_STABLE),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(toml_text: &str) -> Result<Health, String> {
        #[derive(Deserialize, Debug)]
        struct Holder {
            health: Health,
        }
        toml::from_str::<Holder>(toml_text)
            .map(|h| h.health)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn durations_read_as_written() {
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("20"),
            Err(
                "duration `20` has no unit: write a number and a unit, e.g. `20s`, `500ms` or `1m`"
                    .into()
            )
        );
        let err = parse_duration("5x").unwrap_err();
        assert!(err.starts_with("invalid duration `5x`: "), "{err}");
        assert!(
            parse_duration("")
                .unwrap_err()
                .starts_with("duration is empty")
        );
        assert_eq!(seconds(Duration::from_secs(20)), "20 s");
        assert_eq!(seconds(Duration::from_millis(500)), "0.5 s");
        assert_eq!(seconds(Duration::from_millis(2430)), "2.4 s");
    }

    #[test]
    fn health_tables_parse_and_refuse_what_cannot_be_probed() {
        let h = health(
            r#"health = { http = "http://127.0.0.1:8080/ready", within = "20s", stable = "3s" }"#,
        )
        .unwrap();
        assert_eq!(h.within, Duration::from_secs(20));
        assert_eq!(h.stable, Duration::from_secs(3));
        let Some(Probe::Http { url, status: None }) = &h.probe else {
            panic!("{h:?}")
        };
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("127.0.0.1", 8080, "/ready")
        );
        let h = health(r#"health = { http = "http://localhost", status = 204 }"#).unwrap();
        let Some(Probe::Http {
            url,
            status: Some(204),
        }) = &h.probe
        else {
            panic!("{h:?}")
        };
        assert_eq!((url.port, url.path.as_str()), (80, "/"));
        assert_eq!(h.within, DEFAULT_WITHIN);
        let h = health(r#"health = { tcp = "[::1]:5432" }"#).unwrap();
        assert_eq!(h.probe, Some(Probe::Tcp("[::1]:5432".into())));
        let h = health(r#"health = { command = ["true"], stable = "0s" }"#).unwrap();
        assert_eq!(h.stable, Duration::ZERO);
        assert_eq!(health(r#"health = { within = "1s" }"#).unwrap().probe, None);

        for (text, want) in [
            (r#"health = { htp = "x" }"#, "unknown field `htp`"),
            (
                r#"health = { http = "https://x/" }"#,
                "only `http://` URLs can be probed",
            ),
            (
                r#"health = { http = "ftp://x/" }"#,
                "must start with `http://`",
            ),
            (
                r#"health = { http = "http://x:99999/" }"#,
                "port `99999` is not a number",
            ),
            (r#"health = { tcp = "localhost" }"#, "needs a port"),
            (r#"health = { command = [] }"#, "it needs a program to run"),
            (
                r#"health = { http = "http://x/", tcp = "x:1" }"#,
                "not several",
            ),
            (r#"health = { status = 200 }"#, "no `http` URL"),
            (r#"health = { within = "0s" }"#, "longer than 0 s"),
            (r#"health = { within = 20 }"#, "a duration such as"),
            (
                r#"health = { stable = "3 parsecs" }"#,
                "invalid duration `3 parsecs`",
            ),
        ] {
            let err = health(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn status_lines_are_read_and_others_refused() {
        assert_eq!(
            parse_status_line(b"HTTP/1.0 200 OK\r\nServer: x\r\n"),
            Ok(200)
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 503 Busy\r\n"), Ok(503));
        assert_eq!(
            parse_status_line(b""),
            Err("the connection closed without an answer".into())
        );
        assert!(
            parse_status_line(b"SSH-2.0-OpenSSH\r\n")
                .unwrap_err()
                .contains("not HTTP")
        );
    }

    #[test]
    fn probes_ask_real_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.0 204 No Content\r\n\r\n",
                "HTTP/1.0 500 Oops\r\n\r\n",
            ] {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = [0u8; 1024];
                let n = stream.read(&mut request).unwrap();
                assert!(request[..n].starts_with(b"GET /health HTTP/1.0\r\n"));
                stream.write_all(answer.as_bytes()).unwrap();
            }
            listener
        });
        let url = format!("http://127.0.0.1:{port}/health");
        let deadline = Instant::now() + Duration::from_secs(5);
        let probe = Health::http(&url).unwrap().probe.unwrap();
        assert_eq!(
            probe.check(Path::new("/"), deadline),
            Ok(format!("`{url}` answered 204"))
        );
        assert_eq!(
            probe.check(Path::new("/"), deadline),
            Err(format!("GET {url} answered 500, expected 2xx"))
        );
        let listener = server.join().unwrap();
        let tcp = Probe::Tcp(format!("127.0.0.1:{port}"));
        assert!(tcp.check(Path::new("/"), deadline).is_ok());
        drop(listener);
        // Port 9 (discard): nothing listens there on a test machine.
        assert_eq!(
            Probe::Tcp("127.0.0.1:9".into()).check(Path::new("/"), deadline),
            Err("connect to 127.0.0.1:9: connection refused".into())
        );
        let fails = Probe::Command(vec![
            "sh".into(),
            "-c".into(),
            "echo nope >&2; exit 2".into(),
        ]);
        assert_eq!(
            fails.check(Path::new("/"), deadline),
            Err("`sh -c echo nope >&2; exit 2` failed with exit code 2 (nope)".into())
        );
    }

    /// `prove` against a scripted supervisor: each call of `observe` takes the next
    /// `(running, pid, exits)`, the last one repeating.
    fn prove_with(
        health: &Health,
        baseline: Baseline,
        script: &[(bool, u32, u64)],
    ) -> Result<Proof, Unhealthy> {
        let mut calls = 0;
        health.prove("web", baseline, Path::new("/"), || {
            let (running, pid, exits) = script[calls.min(script.len() - 1)];
            calls += 1;
            Ok(Observed {
                running,
                want_up: true,
                pid: (pid != 0).then_some(pid),
                exits: Some(exits),
                ..Observed::default()
            })
        })
    }

    #[test]
    fn the_wait_tells_healthy_from_crash_loops_and_late_services() {
        let quick = Health::process()
            .within(Duration::from_secs(2))
            .stable(Duration::from_millis(300));
        let proof =
            prove_with(&quick, Baseline::default(), &[(false, 0, 0), (true, 7, 0)]).unwrap();
        assert_eq!(proof.pid, Some(7));

        // After a restart, the old process does not count as the healthy one.
        let restart = Baseline {
            old_pid: Some(7),
            exits: 1,
        };
        let proof =
            prove_with(&quick, restart, &[(true, 7, 0), (true, 7, 0), (true, 8, 1)]).unwrap();
        assert_eq!(proof.pid, Some(8));

        // Pids that keep changing, or an exit count that keeps rising: a crash loop, early.
        let pids = [(true, 10, 0), (true, 11, 0), (true, 12, 0), (true, 13, 0)];
        let err = prove_with(&Health::tcp("127.0.0.1:9"), Baseline::default(), &pids).unwrap_err();
        assert!(
            err.0.starts_with("service `web` restarted 3 times in "),
            "{}",
            err.0
        );
        let exits = [(false, 0, 1), (false, 0, 2), (false, 0, 3)];
        let err = prove_with(&quick, Baseline::default(), &exits).unwrap_err();
        assert!(err.0.contains("restarted 3 times"), "{}", err.0);

        // Never running: not healthy after `within`.
        let err = prove_with(&quick, Baseline::default(), &[(false, 0, 0)]).unwrap_err();
        assert_eq!(
            err.0,
            "service `web` is not healthy after 2 s: it is not running"
        );

        // Healthy, then down or replaced during `stable`.
        let err =
            prove_with(&quick, Baseline::default(), &[(true, 7, 0), (false, 0, 0)]).unwrap_err();
        assert!(
            err.0.contains("went down") && err.0.contains("did not stay up for 0.3 s"),
            "{}",
            err.0
        );
        let err =
            prove_with(&quick, Baseline::default(), &[(true, 7, 0), (true, 9, 1)]).unwrap_err();
        assert!(
            err.0.starts_with("service `web` restarted 1 time in "),
            "{}",
            err.0
        );
    }
}
