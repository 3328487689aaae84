//! The progress of the long commands (`backup`, `restore`, `storage
//! migrate`): an `indicatif` bar on a terminal, else a plain line every few
//! seconds and at the end (a log keeps every one).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress of a long command on stderr.
pub(super) struct Progress {
    what: &'static str,
    /// The records to go through, once known (the bar gets a length).
    pub(super) total: Option<u64>,
    pub(super) done: u64,
    /// On a terminal: the bar (redrawn by indicatif, at most 20 times a
    /// second).
    bar: Option<ProgressBar>,
    /// The length the bar was given (`total` may be set later).
    bar_len: Option<u64>,
    started: Instant,
    drawn: Instant,
}

/// How often a plain line is written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

fn counting_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg}: {pos} records, {per_sec}, {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg}: [{bar:30}] {pos}/{len} ({percent}%), {per_sec}, {elapsed}, {eta} left",
    )
    .map(|s| s.progress_chars("#>-"))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Progress {
    pub(super) fn new(what: &'static str, total: Option<u64>) -> Self {
        let now = Instant::now();
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            b.set_style(if total.is_some() {
                bar_style()
            } else {
                counting_style()
            });
            b.set_message(what);
            b
        });
        Self {
            what,
            total,
            done: 0,
            bar,
            bar_len: total,
            started: now,
            drawn: now,
        }
    }

    pub(super) fn add(&mut self, n: u64) {
        self.set(self.done + n);
    }

    pub(super) fn set(&mut self, done: u64) {
        self.done = done;
        match &self.bar {
            Some(bar) => {
                if self.total != self.bar_len {
                    if let Some(t) = self.total {
                        bar.set_length(t);
                        bar.set_style(bar_style());
                    }
                    self.bar_len = self.total;
                }
                bar.set_position(done);
            }
            None if self.drawn.elapsed() >= PLAIN_EVERY => self.line(),
            None => {}
        }
    }

    /// The plain line: `what: done/total records (pct%), rate/s, secs s`.
    fn line(&mut self) {
        self.drawn = Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        let rate = self.done as f64 / secs.max(0.001);
        let of = match self.total {
            Some(t) if t > 0 => {
                let pct = (self.done as f64 / t as f64 * 100.0).min(100.0);
                format!(" {}/{t} records ({pct:.0}%)", self.done)
            }
            _ => format!(" {} records", self.done),
        };
        eprintln!("{}:{of}, {rate:.0}/s, {secs:.0} s", self.what);
    }

    pub(super) fn finish(&mut self) {
        match self.bar.take() {
            Some(bar) => {
                if let Some(t) = self.total {
                    bar.set_length(t);
                }
                bar.set_position(self.done);
                bar.finish();
            }
            None => self.line(),
        }
    }
}
