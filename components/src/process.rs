//! The one way this crate runs a program: bounded in time, in its own process group, and never
//! outliving the process that started it.
//!
//! [`run`] starts the program through a *guard*. The forked child C leads a new process group
//! and forks again; the grandchild G execs the program (staying in C's group), and C stays
//! behind, closing every file descriptor except two pipes and the ones registered with
//! [`keep_in_guards`]:
//!
//! - the *alive* pipe, one per process, whose write end only the starting process holds: when
//!   that process dies however it dies (SIGKILL included), the pipe reaches end of file and C
//!   ends its whole group (SIGTERM, then SIGKILL once no descendant is left or after a grace;
//!   C is a child subreaper, so every descendant's end is seen by it);
//! - a per-run *exit* pipe, whose read end the starting process polls: it ends with C, so C's
//!   exit is noticed without reaping C, and C's pid (the group id) cannot be reused while the
//!   group is signalled;
//! - registered descriptors, such as the agent's host lock, so that the kernel lock stays held
//!   until C has ended the command's group: a re-run after a crash is refused rather than
//!   running a second copy.
//!
//! When G exits, C exits with G's status. The starting process then reads output until end of
//! file or a short grace (a background child may hold the pipes), ends what is left of the
//! group, and reaps C. At the deadline the group gets SIGTERM, then SIGKILL after a grace.
//! Output is accumulated as it arrives, so a pipe holder that escaped the group (`setsid`)
//! never blocks the run, and what was written so far is still reported.
//!
//! What to run, and what a result means, is left to callers: [`crate::cmd`] (the builder
//! component authors use) and, through it, [`crate::Command`].

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long output is still read after the program exited, for background processes that
/// still hold its pipes.
const DRAIN: Duration = Duration::from_secs(1);
/// How long processes get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);
/// How many registered descriptors a guard keeps at most.
const MAX_KEPT: usize = 8;
/// Bytes of each output stream kept in memory; beyond that only the end is kept.
const MAX_OUTPUT: usize = 4 << 20;
/// A streamed line longer than this is passed on in pieces of this size.
const MAX_LINE: usize = 64 * 1024;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Program and arguments; no shell is involved.
    pub argv: &'a [String],
    /// Working directory.
    pub cwd: &'a Path,
    /// Variables added to the inherited environment.
    pub env: &'a BTreeMap<String, String>,
    /// How long the whole command, background processes included, may run.
    pub timeout: Duration,
}

/// Receives each complete line of a program's output as it arrives: the stream (`"stdout"`
/// or `"stderr"`) and the line without its newline.
pub type OnLine<'a> = &'a mut dyn FnMut(&'static str, &str);

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It exited with this code.
    Exited(i32),
    /// A signal ended it.
    Signaled(i32),
    /// It was still running at the deadline, and its group was killed.
    TimedOut,
}

impl fmt::Display for Status {
    /// How a program ended, as in a sentence: `succeeded`, `failed with exit code 2`, `was
    /// killed by signal 9`, `timed out`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Exited(0) => f.write_str("succeeded"),
            Status::Exited(code) => write!(f, "failed with exit code {code}"),
            Status::Signaled(signal) => write!(f, "was killed by signal {signal}"),
            Status::TimedOut => f.write_str("timed out"),
        }
    }
}

/// What a program printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// How the program ended.
    pub status: Status,
    /// What the program wrote to stdout.
    pub stdout: String,
    /// What the program wrote to stderr.
    pub stderr: String,
}

/// Keeps a duplicate of `fd` open in every guard started from now on, until the guard has
/// ended its command's process group.
///
/// The agent registers its host lock, so that the lock outlives a crashed agent exactly as
/// long as the command the agent started. The duplicate stays open for the rest of the
/// process.
pub fn keep_in_guards(fd: impl AsFd) -> std::io::Result<()> {
    let fd = fd.as_fd().try_clone_to_owned()?;
    let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    if kept.len() >= MAX_KEPT {
        return Err(std::io::Error::other(format!(
            "guards keep at most {MAX_KEPT} file descriptors"
        )));
    }
    kept.push(fd);
    Ok(())
}

/// Runs a program as described in the module documentation and returns its output; an error
/// means it could not be started.
pub fn run(request: &Request<'_>) -> anyhow::Result<Output> {
    start(request, None)
}

/// Runs a program like [`run`], and passes each line of its output to `on_line` as soon as
/// it is complete: the stream (`"stdout"` or `"stderr"`) and the line without its newline.
/// The output is returned whole all the same.
pub fn run_streaming(request: &Request<'_>, on_line: OnLine<'_>) -> anyhow::Result<Output> {
    start(request, Some(on_line))
}

#[expect(
    clippy::disallowed_methods,
    reason = "this is the one command runner the others go through"
)]
fn start(request: &Request<'_>, on_line: Option<OnLine<'_>>) -> anyhow::Result<Output> {
    let (program, args) = request.argv.split_first().context("empty command")?;
    let starting = || {
        format!(
            "cannot start `{}` in `{}`",
            request.argv.join(" "),
            request.cwd.display()
        )
    };
    let alive = alive_pipe().with_context(starting)?;
    let (exit_read, exit_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).with_context(starting)?;
    let keep = Keep::new(alive, exit_write.as_raw_fd());
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .current_dir(request.cwd)
        .envs(request.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = spawn_guarded(&mut command, keep).with_context(starting)?;
    // Only the guard holds the exit pipe's write end now.
    drop(exit_write);
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    let pgid = Pid::from_raw(i32::try_from(child.id()).context("process id out of range")?);
    let streaming = on_line.is_some();
    let mut running = Running {
        child,
        pgid,
        exit: Some(exit_read),
        stdout: Stream::new(stdout, streaming),
        stderr: Stream::new(stderr, streaming),
        on_line,
    };
    running.wait(request.timeout)
}

/// A started guard and what it printed so far.
struct Running<'a> {
    child: Child,
    pgid: Pid,
    /// The exit pipe, until the guard has exited.
    exit: Option<OwnedFd>,
    stdout: Stream,
    stderr: Stream,
    /// Where complete lines go as they arrive, when streaming.
    on_line: Option<OnLine<'a>>,
}

impl Running<'_> {
    fn wait(&mut self, timeout: Duration) -> anyhow::Result<Output> {
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        while self.exit.is_some() {
            let now = Instant::now();
            if now >= deadline {
                timed_out = true;
                break;
            }
            self.pump(deadline - now);
        }
        if timed_out {
            self.end_group();
        } else {
            let until = Instant::now() + DRAIN;
            loop {
                let now = Instant::now();
                if !(self.stdout.is_open() || self.stderr.is_open()) || now >= until {
                    break;
                }
                self.pump(until - now);
            }
            if others_in_group(self.pgid) {
                self.end_group();
            }
        }
        // The group is ended; reaping the guard frees its pid (and so the group id).
        let status = self.child.wait().context("cannot wait for the command")?;
        self.pump(Duration::ZERO);
        // A last line without its newline.
        for (name, stream) in [("stdout", &mut self.stdout), ("stderr", &mut self.stderr)] {
            if let (Some(on_line), Some(partial)) = (self.on_line.as_mut(), stream.partial.take())
                && !partial.is_empty()
            {
                on_line(name, &String::from_utf8_lossy(&partial));
            }
        }
        let status = if timed_out {
            Status::TimedOut
        } else if let Some(code) = status.code() {
            Status::Exited(code)
        } else {
            Status::Signaled(status.signal().unwrap_or(0))
        };
        Ok(Output {
            status,
            stdout: self.stdout.text(),
            stderr: self.stderr.text(),
        })
    }

    /// SIGTERM to the group, a grace for it to end, then SIGKILL. The guard is not reaped yet,
    /// so the group id is still this command's.
    fn end_group(&mut self) {
        let _ = killpg(self.pgid, Signal::SIGTERM);
        let until = Instant::now() + GRACE;
        loop {
            if self.exit.is_none() && !others_in_group(self.pgid) {
                break;
            }
            let now = Instant::now();
            if now >= until {
                break;
            }
            self.pump((until - now).min(Duration::from_millis(20)));
        }
        let _ = killpg(self.pgid, Signal::SIGKILL);
    }

    /// Waits up to `max` for output or the guard's exit, and takes what arrived.
    fn pump(&mut self, max: Duration) {
        let millis = u16::try_from(max.as_millis()).unwrap_or(1000).min(1000);
        let mut fds = Vec::with_capacity(3);
        let mut who = Vec::with_capacity(3);
        for (i, fd) in [
            self.exit.as_ref(),
            self.stdout.pipe.as_ref(),
            self.stderr.pipe.as_ref(),
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(fd) = fd {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                who.push(i);
            }
        }
        if fds.is_empty() {
            std::thread::sleep(Duration::from_millis(u64::from(millis)));
            return;
        }
        if nix::poll::poll(&mut fds, millis).is_err() {
            // Interrupted: the caller's loop polls again.
            return;
        }
        let ready: Vec<usize> = fds
            .iter()
            .zip(&who)
            .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, i)| *i)
            .collect();
        drop(fds);
        for i in ready {
            match i {
                // Nobody writes to the exit pipe: any event is its end.
                0 => self.exit = None,
                1 => {
                    let lines = self.stdout.read();
                    self.emit("stdout", lines);
                }
                _ => {
                    let lines = self.stderr.read();
                    self.emit("stderr", lines);
                }
            }
        }
    }
}

impl Running<'_> {
    fn emit(&mut self, name: &'static str, lines: Vec<String>) {
        if let Some(on_line) = self.on_line.as_mut() {
            for line in lines {
                on_line(name, &line);
            }
        }
    }
}

/// One output pipe and what came through it.
struct Stream {
    pipe: Option<OwnedFd>,
    buf: Vec<u8>,
    dropped: bool,
    /// When streaming: the start of a line whose newline has not come yet.
    partial: Option<Vec<u8>>,
}

impl Stream {
    fn new(pipe: Option<OwnedFd>, streaming: bool) -> Self {
        Stream {
            pipe,
            buf: Vec::new(),
            dropped: false,
            partial: streaming.then(Vec::new),
        }
    }

    fn is_open(&self) -> bool {
        self.pipe.is_some()
    }

    /// Reads what is available (poll said so, so this does not block); when streaming,
    /// returns the lines it completed.
    fn read(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let Some(pipe) = &self.pipe else {
            return lines;
        };
        let mut chunk = [0u8; 64 * 1024];
        match nix::unistd::read(pipe.as_fd(), &mut chunk) {
            Ok(0) => self.pipe = None,
            Ok(n) => {
                if let Some(partial) = &mut self.partial {
                    partial.extend_from_slice(&chunk[..n]);
                    while let Some(end) = partial
                        .iter()
                        .position(|&b| b == b'\n')
                        .or((partial.len() >= MAX_LINE).then_some(MAX_LINE - 1))
                    {
                        let line: Vec<u8> = partial.drain(..=end).collect();
                        let line = line.strip_suffix(b"\n").unwrap_or(&line);
                        lines.push(String::from_utf8_lossy(line).into_owned());
                    }
                }
                self.buf.extend_from_slice(&chunk[..n]);
                if self.buf.len() > 2 * MAX_OUTPUT {
                    let cut = self.buf.len() - MAX_OUTPUT;
                    self.buf.drain(..cut);
                    self.dropped = true;
                }
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
            Err(_) => self.pipe = None,
        }
        lines
    }

    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.buf);
        if self.dropped {
            format!("(earlier output not kept)\n{text}")
        } else {
            text.into_owned()
        }
    }
}

/// Descriptors registered with [`keep_in_guards`].
static KEPT: Mutex<Vec<OwnedFd>> = Mutex::new(Vec::new());

/// The alive pipe: (read end, write end), both close-on-exec, for the life of the process.
static ALIVE: Mutex<Option<(OwnedFd, OwnedFd)>> = Mutex::new(None);

/// The alive pipe's read end, created on first use.
fn alive_pipe() -> nix::Result<RawFd> {
    let mut alive = ALIVE.lock().unwrap_or_else(|e| e.into_inner());
    if alive.is_none() {
        *alive = Some(nix::unistd::pipe2(OFlag::O_CLOEXEC)?);
    }
    Ok(alive
        .as_ref()
        .map(|(read, _)| read.as_raw_fd())
        .expect("the alive pipe was just created"))
}

/// Whether a process other than the guard, and not yet dead, is in group `pgid`.
fn others_in_group(pgid: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == pgid.as_raw() {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the parenthesised command name: state, ppid, pgrp.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        if pgrp == Some(pgid.as_raw()) && state != "Z" && state != "X" {
            return true;
        }
    }
    false
}

/// The descriptors a guard keeps, sorted, as a fixed array (the guard must not allocate).
#[derive(Debug, Clone, Copy)]
struct Keep {
    alive: RawFd,
    fds: [RawFd; MAX_KEPT + 2],
    len: usize,
}

impl Keep {
    fn new(alive: RawFd, exit: RawFd) -> Self {
        let mut fds = [0; MAX_KEPT + 2];
        fds[0] = alive;
        fds[1] = exit;
        let mut len = 2;
        for fd in KEPT.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            fds[len] = fd.as_raw_fd();
            len += 1;
        }
        fds[..len].sort_unstable();
        Keep { alive, fds, len }
    }
}

#[expect(
    unsafe_code,
    reason = "the guard runs between fork and exec, see `guard`"
)]
fn spawn_guarded(command: &mut std::process::Command, keep: Keep) -> std::io::Result<Child> {
    // SAFETY: `guard` makes only async-signal-safe system calls and does not allocate, as
    // required of code running in the child of a multi-threaded process.
    unsafe {
        command.pre_exec(move || guard(&keep));
    }
    command.spawn()
}

/// Runs in the forked child C, which leads the command's process group: forks G, which
/// returns to exec the program, and becomes G's guard (never returning).
#[expect(
    unsafe_code,
    reason = "fork and raw system calls in the child of a multi-threaded process"
)]
fn guard(keep: &Keep) -> std::io::Result<()> {
    // SAFETY: prctl and fork are async-signal-safe; the grandchild only returns to std's exec
    // path, which is written for the child of a fork.
    let g = unsafe {
        // Orphaned descendants of the program become the guard's children (the setting is not
        // inherited by G), so that the guard can tell when none is left.
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::fork()
    };
    if g < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if g == 0 {
        return Ok(());
    }
    // SAFETY: `watch` uses only async-signal-safe system calls on values on the stack.
    unsafe { watch(g, keep) }
}

/// The guard's loop: pass on G's end, or end the group when the alive pipe ends.
///
/// # Safety
///
/// Only to be called in the child of a fork, with `g` its own child.
#[expect(unsafe_code, reason = "raw system calls between fork and exec")]
unsafe fn watch(g: libc::pid_t, keep: &Keep) -> ! {
    // SAFETY (whole function): every call is an async-signal-safe system call on stack values
    // and descriptors this process owns.
    unsafe {
        close_except(keep);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(sig, libc::SIG_IGN);
        }
        // A handler (doing nothing) makes SIGCHLD interrupt ppoll; blocked outside ppoll, a
        // child's end cannot slip between waitpid and ppoll.
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_child as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_NOCLDSTOP;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut());
        let mut blocked: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut blocked);
        libc::sigaddset(&mut blocked, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &blocked, std::ptr::null_mut());
        let mut open: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut open);
        loop {
            // Reap G, and the orphans of its descendants, which are the guard's children now.
            loop {
                let mut status = 0;
                let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if pid == g {
                    pass_on(status);
                }
                if pid <= 0 {
                    break;
                }
            }
            let mut fd = libc::pollfd {
                fd: keep.alive,
                events: libc::POLLIN,
                revents: 0,
            };
            let second = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            // Nobody writes to the alive pipe: any event is its end, the starter is gone.
            if libc::ppoll(&mut fd, 1, &second, &open) > 0 && fd.revents != 0 {
                end_group(&open);
            }
        }
    }
}

/// Ends the guard's group after its starter died: SIGTERM, then, once no descendant is left or
/// after the grace, SIGKILL to the group (the guard included).
#[expect(unsafe_code, reason = "raw system calls between fork and exec")]
fn end_group(open: &libc::sigset_t) -> ! {
    // SAFETY: async-signal-safe system calls on stack values.
    unsafe {
        libc::kill(0, libc::SIGTERM);
        let mut start: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut start);
        loop {
            let mut status = 0;
            let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
            if pid > 0 {
                continue;
            }
            if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                // Every descendant has ended (a subreaper inherits them all).
                break;
            }
            let mut now: libc::timespec = std::mem::zeroed();
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
            let elapsed_ms =
                (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1_000_000;
            if elapsed_ms >= GRACE.as_millis() as i64 {
                break;
            }
            let tick = libc::timespec {
                tv_sec: 0,
                tv_nsec: 20_000_000,
            };
            // SIGCHLD (unblocked only here) cuts the tick short.
            libc::ppoll(std::ptr::null_mut(), 0, &tick, open);
        }
        // Ends what is left of the group, and the guard.
        libc::kill(0, libc::SIGKILL);
        libc::_exit(137)
    }
}

/// Ends the guard the way G ended: the same exit code, or the same signal.
#[expect(unsafe_code, reason = "raw system calls between fork and exec")]
fn pass_on(status: libc::c_int) -> ! {
    // SAFETY: async-signal-safe system calls on stack values.
    unsafe {
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            libc::signal(sig, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            // The program already dumped its core if it was going to; the guard does not.
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
        libc::_exit(libc::WEXITSTATUS(status))
    }
}

/// Closes every descriptor except those in `keep` (which is sorted).
#[expect(unsafe_code, reason = "raw system calls between fork and exec")]
fn close_except(keep: &Keep) {
    let mut next: libc::c_uint = 0;
    for &fd in &keep.fds[..keep.len] {
        let fd = fd as libc::c_uint;
        if fd > next {
            close_range(next, fd - 1);
        }
        next = next.max(fd + 1);
    }
    close_range(next, libc::c_uint::MAX);

    fn close_range(first: libc::c_uint, last: libc::c_uint) {
        // SAFETY: closing descriptors is async-signal-safe; nothing in this process uses them.
        unsafe {
            if libc::syscall(libc::SYS_close_range, first, last, 0) == 0 {
                return;
            }
            // Kernels before 5.9: close one by one, up to the descriptor limit.
            let mut limit: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur.min(1 << 20) as libc::c_uint
            } else {
                1024
            };
            let mut fd = first;
            while fd <= last && fd < max {
                libc::close(fd as libc::c_int);
                fd += 1;
            }
        }
    }
}

extern "C" fn on_child(_: libc::c_int) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_sh(script: &str, timeout: f64) -> (Output, Duration) {
        let argv = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
        let env = BTreeMap::new();
        let started = Instant::now();
        let out = run(&Request {
            argv: &argv,
            cwd: Path::new("/"),
            env: &env,
            timeout: Duration::from_secs_f64(timeout),
        })
        .unwrap();
        (out, started.elapsed())
    }

    #[test]
    fn exit_codes_signals_and_output_pass_through_the_guard() {
        let (out, _) = run_sh("echo out; echo err >&2; exit 3", 10.0);
        assert_eq!(out.status, Status::Exited(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        let (out, _) = run_sh("kill -USR1 $$", 10.0);
        assert_eq!(out.status, Status::Signaled(libc::SIGUSR1));
    }

    #[test]
    fn streamed_lines_arrive_while_the_program_runs() {
        let argv = vec![
            "sh".to_string(),
            "-c".to_string(),
            "echo first; echo warn >&2; sleep 0.5; printf last".to_string(),
        ];
        let env = BTreeMap::new();
        let started = Instant::now();
        let mut lines = Vec::new();
        let out = run_streaming(
            &Request {
                argv: &argv,
                cwd: Path::new("/"),
                env: &env,
                timeout: Duration::from_secs(10),
            },
            &mut |stream, line| lines.push((stream, line.to_string(), started.elapsed())),
        )
        .unwrap();
        let ended = started.elapsed();
        let names: Vec<(&str, &str)> = lines.iter().map(|(s, l, _)| (*s, l.as_str())).collect();
        assert_eq!(
            names,
            [("stdout", "first"), ("stderr", "warn"), ("stdout", "last")]
        );
        assert!(
            ended - lines[0].2 >= Duration::from_millis(400),
            "the first line came only at the end: {lines:?}"
        );
        assert_eq!(
            out.stdout, "first\nlast",
            "the output is returned whole too"
        );
    }

    #[test]
    fn a_missing_program_is_an_error_at_start() {
        let argv = vec!["/nonexistent/program".to_string()];
        let err = run(&Request {
            argv: &argv,
            cwd: Path::new("/"),
            env: &BTreeMap::new(),
            timeout: Duration::from_secs(5),
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot start `/nonexistent/program`"),
            "{err:#}"
        );
    }

    /// Whether a `sleep <seconds>` process runs (tests use unusual fractions as markers).
    fn sleeping(seconds: &str) -> bool {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c == format!("sleep\0{seconds}\0").as_bytes())
        })
    }

    #[test]
    fn a_quick_command_is_quick() {
        let (out, took) = run_sh("true", 10.0);
        assert_eq!(out.status, Status::Exited(0));
        assert!(took < Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn a_background_child_holding_the_pipes_does_not_block_and_is_ended() {
        let (out, took) = run_sh("sleep 30.101 & echo started", 20.0);
        assert_eq!(out.status, Status::Exited(0));
        assert_eq!(out.stdout, "started\n");
        assert!(took < Duration::from_secs(6), "{took:?}");
        assert!(!sleeping("30.101"));
    }

    #[test]
    fn a_background_child_without_the_pipes_is_ended_too() {
        let (out, took) = run_sh("sleep 30.102 >/dev/null 2>&1 & echo started", 20.0);
        assert_eq!(out.status, Status::Exited(0));
        assert!(took < Duration::from_secs(4), "{took:?}");
        assert!(!sleeping("30.102"));
    }

    #[test]
    fn the_deadline_ends_the_whole_group() {
        let (out, took) = run_sh("sleep 30.103 & echo started; wait", 0.5);
        assert_eq!(out.status, Status::TimedOut);
        assert_eq!(out.stdout, "started\n");
        assert!(took < Duration::from_secs(6), "{took:?}");
        assert!(!sleeping("30.103"));
    }

    #[test]
    fn a_program_ignoring_sigterm_is_killed_after_the_grace() {
        let (out, took) = run_sh("trap '' TERM; echo ready; sleep 30.104; echo late", 0.3);
        assert_eq!(out.status, Status::TimedOut);
        assert_eq!(out.stdout, "ready\n");
        assert!(took < Duration::from_secs(8), "{took:?}");
        assert!(!sleeping("30.104"));
    }

    #[test]
    fn an_escaped_pipe_holder_does_not_block_and_output_so_far_is_kept() {
        let (out, took) = run_sh("echo before; setsid sleep 30.105 & echo after", 20.0);
        assert_eq!(out.status, Status::Exited(0));
        assert_eq!(out.stdout, "before\nafter\n");
        assert!(took < Duration::from_secs(6), "{took:?}");
        // Out of the group, so not ended by the runner: end it here, by its pid.
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x0030.105\0") {
                let pid: i32 = e.file_name().to_string_lossy().parse().unwrap();
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}
