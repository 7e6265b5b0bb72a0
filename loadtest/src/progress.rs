//! Progress on long runs (indicatif, on stderr; hidden when stderr is not a terminal, so
//! logs of `deploy/local/bench.sh` stay readable) and one-line phase messages.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Prints what the run does next (stderr, so stdout keeps only the summary).
pub fn phase(message: impl AsRef<str>) {
    eprintln!("loadtest: {}", message.as_ref());
}

/// A bar counting `total` items.
pub fn counter(label: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left) {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_owned());
    bar
}

/// A bar that fills over `length` of wall-clock time, by itself, until dropped.
#[derive(Debug)]
pub struct Timed {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Timed {
    /// Starts filling now.
    pub fn start(label: &str, length: Duration) -> Timed {
        let total = u64::try_from(length.as_millis()).unwrap_or(u64::MAX).max(1);
        let bar = ProgressBar::new(total);
        let style =
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {elapsed_precise} / {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.to_owned());
        bar.set_message(format!("{:.0?}", length));
        let filling = bar.clone();
        let started = Instant::now();
        let ticker = tokio::spawn(async move {
            loop {
                let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                filling.set_position(elapsed.min(total));
                if elapsed >= total {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Timed { bar, ticker }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
