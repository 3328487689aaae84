//! The progress bar of the long commands.

use std::io::IsTerminal;
use std::time::Duration;

/// Progress of a long command on stderr: a bar redrawn in place on a
/// terminal, else a plain line every few seconds (a log keeps every one).
pub(super) struct Progress {
    what: &'static str,
    pub(super) total: Option<u64>,
    pub(super) done: u64,
    tty: bool,
    started: std::time::Instant,
    drawn: std::time::Instant,
}

impl Progress {
    pub(super) fn new(what: &'static str, total: Option<u64>) -> Self {
        let now = std::time::Instant::now();
        Self {
            what,
            total,
            done: 0,
            tty: std::io::stderr().is_terminal(),
            started: now,
            drawn: now,
        }
    }

    pub(super) fn add(&mut self, n: u64) {
        self.set(self.done + n);
    }

    pub(super) fn set(&mut self, done: u64) {
        self.done = done;
        let every = if self.tty {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.drawn.elapsed() >= every {
            self.draw();
        }
    }

    fn draw(&mut self) {
        self.drawn = std::time::Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        let rate = self.done as f64 / secs.max(0.001);
        let of = match self.total {
            Some(t) if t > 0 => {
                let pct = (self.done as f64 / t as f64 * 100.0).min(100.0);
                if self.tty {
                    let filled = (pct / 100.0 * 30.0) as usize;
                    format!(
                        " [{}{}] {}/{t} ({pct:.0}%)",
                        "#".repeat(filled),
                        "-".repeat(30 - filled),
                        self.done
                    )
                } else {
                    format!(" {}/{t} records ({pct:.0}%)", self.done)
                }
            }
            _ => format!(" {} records", self.done),
        };
        let line = format!("{}:{of}, {rate:.0}/s, {secs:.0} s", self.what);
        if self.tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }

    pub(super) fn finish(&mut self) {
        self.draw();
        if self.tty {
            eprintln!();
        }
    }
}
