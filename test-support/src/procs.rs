//! Processes seen through `/proc`, and waiting with a deadline: what the fault and interrupt
//! tests use to find the commands, agents and connections they start, and to watch them end.
//!
//! Nothing reaps zombies on the test machine (PID 1 does not), so a process counts as gone
//! once it is a zombie: [`alive`] reads its state, and a zombie's command line is empty, so
//! the finders below never return one.

use std::path::Path;
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

/// The pid and command line (argv) of every process.
pub fn processes() -> Vec<(u32, Vec<String>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .expect("/proc is readable")
        .flatten()
    {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push((pid, args));
    }
    out
}

/// The command line of `pid`, if it runs.
pub fn argv(pid: u32) -> Option<Vec<String>> {
    processes()
        .into_iter()
        .find(|(p, _)| *p == pid)
        .map(|(_, args)| args)
}

/// The pids of processes whose whole command line is `argv`.
pub fn processes_with_args(argv: &[&str]) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, args)| args.iter().map(String::as_str).eq(argv.iter().copied()))
        .map(|(pid, _)| pid)
        .collect()
}

/// Whether a `sleep <seconds>` process runs; tests use unusual fractions as markers.
pub fn sleeping(seconds: &str) -> bool {
    !processes_with_args(&["sleep", seconds]).is_empty()
}

/// The agent of the host whose home is `home`: a process running
/// `<home>/.cache/batou/agents/<sha> agent`.
pub fn agent_of(home: &Path) -> Option<u32> {
    let prefix = format!("{}/.cache/batou/agents/", home.display());
    processes()
        .into_iter()
        .find(|(_, args)| args.len() >= 2 && args[0].starts_with(&prefix) && args[1] == "agent")
        .map(|(pid, _)| pid)
}

/// The fields of `/proc/<pid>/stat` after the parenthesised command name (which may itself
/// contain spaces and parentheses): the state, the parent pid, the process group, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// The direct children of `parent`.
pub fn children(parent: u32) -> Vec<u32> {
    let parent = parent.to_string();
    processes()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| stat_fields(*pid).is_some_and(|f| f.get(1) == Some(&parent)))
        .collect()
}

/// The process group of `pid`, which must exist.
pub fn process_group(pid: u32) -> u32 {
    stat_fields(pid)
        .and_then(|f| f.get(2).and_then(|g| g.parse().ok()))
        .unwrap_or_else(|| panic!("no process group for pid {pid}"))
}

/// Whether `pid` runs: it exists and is not a zombie (`State:` in `/proc/<pid>/status`).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|state| !state.trim_start().starts_with('Z'))
    })
}

/// Sends `signal` to `pid`; panics if it cannot be delivered.
pub fn kill(pid: u32, signal: Signal) {
    let raw = i32::try_from(pid).expect("a pid fits an i32");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal)
        .unwrap_or_else(|e| panic!("cannot send {signal} to {pid}: {e}"));
}

/// Polls `done` every 20 ms until it holds and returns how long that took; panics naming
/// `what` once `limit` has passed.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// Polls `find` every 20 ms until it finds something and returns that; panics naming `what`
/// once `limit` has passed.
pub fn wait_for_some<T>(what: &str, limit: Duration, mut find: impl FnMut() -> Option<T>) -> T {
    let mut found = None;
    wait_until(what, limit, || {
        found = find();
        found.is_some()
    });
    found.expect("wait_until returns once found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_found_until_it_is_a_zombie() {
        let mut child = std::process::Command::new("sleep")
            .arg("30.717")
            .spawn()
            .unwrap();
        let pid = child.id();
        let me = std::process::id();
        assert!(alive(pid));
        // Between fork and exec the child still shows this test's command line.
        wait_until("the child to exec sleep", Duration::from_secs(5), || {
            argv(pid).is_some_and(|a| a == ["sleep", "30.717"])
        });
        assert_eq!(processes_with_args(&["sleep", "30.717"]), vec![pid]);
        assert!(sleeping("30.717"));
        assert_eq!(argv(pid).unwrap(), ["sleep", "30.717"]);
        assert!(children(me).contains(&pid));
        assert_eq!(process_group(pid), process_group(me));
        kill(pid, Signal::SIGKILL);
        // Not yet reaped: a zombie, which counts as gone.
        wait_until("the child to die", Duration::from_secs(5), || !alive(pid));
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert!(!sleeping("30.717"));
        child.wait().unwrap();
        assert_eq!(
            wait_for_some("a value", Duration::from_secs(1), || Some(7)),
            7
        );
    }
}
