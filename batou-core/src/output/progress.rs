//! The live line on a terminal: which root components are running, on which host, for how
//! long.
//!
//! [`ProgressOutput`] wraps a [`HumanOutput`]: before an event's lines it clears the live
//! line, after them it draws it again, and a thread of its own redraws it ten times a second.
//! The line never ends with a newline, so once it is cleared nothing of it is left: the
//! binaries use it only when stderr is a terminal, so that no pipe or log ever sees it.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anstyle::Style;

use super::{HumanOptions, HumanOutput};
use crate::{Event, EventSink};

/// How often the live line is redrawn.
const TICK: Duration = Duration::from_millis(100);
/// The spinner's frames.
const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// A [`HumanOutput`] with a live line for the running root components.
pub struct ProgressOutput<W: Write + Send + 'static> {
    shared: Arc<(Mutex<Live<W>>, Condvar)>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

/// The terminal's width in columns, asked before each redraw (the terminal may be resized).
pub type Width = Box<dyn Fn() -> Option<usize> + Send>;

struct Live<W: Write> {
    human: HumanOutput<W>,
    /// `(host, root component, since)` of every running step, in the order they started.
    running: Vec<(String, String, Instant)>,
    /// Whether the live line is on the screen.
    drawn: bool,
    frame: usize,
    width: Width,
    stop: bool,
}

impl<W: Write + Send + 'static> ProgressOutput<W> {
    /// Renders into `out` (a terminal) as `options` say, with the live line; `width` tells
    /// the terminal's columns, so that the line never wraps.
    pub fn new(out: W, options: HumanOptions, width: Width) -> Self {
        let shared = Arc::new((
            Mutex::new(Live {
                human: HumanOutput::with_options(out, options),
                running: Vec::new(),
                drawn: false,
                frame: 0,
                width,
                stop: false,
            }),
            Condvar::new(),
        ));
        let ticking = Arc::clone(&shared);
        let ticker = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || {
                let (live, wake) = &*ticking;
                let mut guard = lock(live);
                while !guard.stop {
                    guard.frame = guard.frame.wrapping_add(1);
                    guard.draw();
                    guard = wake
                        .wait_timeout(guard, TICK)
                        .map(|(g, _)| g)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
            })
            .ok();
        ProgressOutput { shared, ticker }
    }
}

impl<W: Write + Send + 'static> EventSink for ProgressOutput<W> {
    fn event(&mut self, event: Event) {
        let mut live = lock(&self.shared.0);
        match &event {
            Event::StepStarted { host, component } => {
                live.running
                    .push((host.clone(), component.clone(), Instant::now()));
            }
            Event::StepFinished {
                host, component, ..
            } => live
                .running
                .retain(|(h, c, _)| !(h == host && c == component)),
            Event::HostFinished { host, .. }
            | Event::HostFailed { host, .. }
            | Event::Interrupted { host, .. } => live.running.retain(|(h, _, _)| h != host),
            Event::RunFinished { .. } => live.running.clear(),
            _ => {}
        }
        live.clear();
        live.human.event(event);
        live.draw();
    }
}

impl<W: Write + Send + 'static> Drop for ProgressOutput<W> {
    fn drop(&mut self) {
        {
            let mut live = lock(&self.shared.0);
            live.stop = true;
            live.running.clear();
            live.clear();
        }
        self.shared.1.notify_all();
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

/// The lock, also after a panic elsewhere: the live line is worth less than the output.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl<W: Write> Live<W> {
    /// Removes the live line from the screen.
    fn clear(&mut self) {
        if self.drawn {
            let _ = self.human.writer().write_all(b"\r\x1b[2K");
            let _ = self.human.writer().flush();
            self.drawn = false;
        }
    }

    /// Draws the live line again: the first running step, and how many more there are.
    fn draw(&mut self) {
        self.clear();
        let Some(text) = self.line() else { return };
        let _ = self.human.writer().write_all(text.as_bytes());
        let _ = self.human.writer().flush();
        self.drawn = true;
    }

    fn line(&self) -> Option<String> {
        let (host, component, since) = self.running.first()?;
        let spinner = FRAMES[self.frame % FRAMES.len()];
        let more = match self.running.len() - 1 {
            0 => String::new(),
            n => format!(" (+{n} more)"),
        };
        let text = format!(
            "{spinner} {host}: running {component} ({:.1} s){more}",
            since.elapsed().as_secs_f64()
        );
        // One column short of the width: a line that fills it wraps on some terminals.
        let width = (self.width)().unwrap_or(80).saturating_sub(1).max(10);
        let text: String = crate::redact::mask(&text).chars().take(width).collect();
        Some(if self.human.color() {
            let dim = Style::new().dimmed();
            format!("{}{text}{}", dim.render(), dim.render_reset())
        } else {
            text
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read while the output holds it.
    #[derive(Clone, Default)]
    struct Screen(Arc<Mutex<Vec<u8>>>);

    impl Write for Screen {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_live_line_names_the_running_step_and_is_cleared_after() {
        let screen = Screen::default();
        let mut out = ProgressOutput::new(
            screen.clone(),
            HumanOptions::default(),
            Box::new(|| Some(60)),
        );
        out.event(Event::StepStarted {
            host: "web1".into(),
            component: "app".into(),
        });
        std::thread::sleep(TICK * 3);
        out.event(Event::StepFinished {
            host: "web1".into(),
            component: "app".into(),
            outcome: crate::RootOutcome::Unchanged,
            dry_run: false,
            seconds: 0.3,
        });
        drop(out);
        let text = String::from_utf8(screen.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("web1: running app (0."), "{text:?}");
        assert!(text.ends_with("\r\x1b[2K"), "the line is cleared: {text:?}");
        // Once cleared, what is left on the screen is only the events' lines (none here).
        let last_clear = text.rfind("\r\x1b[2K").unwrap();
        assert!(!text[..last_clear].contains('\n'), "{text:?}");
    }
}
