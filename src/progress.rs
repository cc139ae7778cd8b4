//! Progress of long jobs: a bar on a terminal, a log line every 10 s otherwise.
//!
//! Beside the data path. Owns: the terminal bars and the periodic log lines; it only reads
//! counters that the jobs update.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The bars being drawn on the terminal, if any: log lines are printed above them.
static ACTIVE_BARS: RwLock<Option<indicatif::MultiProgress>> = RwLock::new(None);

/// Register (or, with `None`, forget) the bars that log lines must not tear.
pub fn set_active_bars(bars: Option<indicatif::MultiProgress>) {
    *ACTIVE_BARS.write().unwrap_or_else(|e| e.into_inner()) = bars;
}

/// A writer to stderr for the log (`tracing_subscriber::fmt().with_writer(log_writer)`): while
/// progress bars are drawn, each log line is printed above them instead of through them.
pub fn log_writer() -> LogWriter {
    LogWriter
}

/// See [`log_writer`].
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bars = ACTIVE_BARS.read().unwrap_or_else(|e| e.into_inner());
        match bars.as_ref() {
            Some(mp) => mp.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Counters a job updates and the reporter reads.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes: AtomicU64,
    pub total_bytes: AtomicU64,
    pub keys: AtomicU64,
    done: AtomicBool,
}

/// Reports a [`Progress`] until dropped or [`Reporter::finish`]ed.
pub struct Reporter {
    progress: Arc<Progress>,
    handle: Option<JoinHandle<()>>,
}

impl Reporter {
    /// Start reporting `label` (a file name, a source). `quiet` turns it off.
    pub fn start(label: String, progress: Arc<Progress>, quiet: bool) -> Reporter {
        let p = progress.clone();
        let handle = (!quiet).then(|| {
            std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || {
                    if std::io::stderr().is_terminal() {
                        bar_loop(&label, &p)
                    } else {
                        log_loop(&label, &p)
                    }
                })
                .expect("spawn progress thread")
        });
        Reporter { progress, handle }
    }

    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.progress.done.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn bar_loop(label: &str, p: &Progress) {
    let total = p.total_bytes.load(Ordering::Relaxed);
    let bar = indicatif::ProgressBar::new(total.max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    while !p.done.load(Ordering::Acquire) {
        bar.set_length(p.total_bytes.load(Ordering::Relaxed).max(1));
        bar.set_position(p.bytes.load(Ordering::Relaxed));
        bar.set_message(format!("{} keys", p.keys.load(Ordering::Relaxed)));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.set_position(p.bytes.load(Ordering::Relaxed));
    bar.finish_with_message(format!("{} keys", p.keys.load(Ordering::Relaxed)));
}

fn log_loop(label: &str, p: &Progress) {
    let mut last = Instant::now();
    while !p.done.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() >= Duration::from_secs(10) {
            last = Instant::now();
            let (b, t) = (
                p.bytes.load(Ordering::Relaxed),
                p.total_bytes.load(Ordering::Relaxed),
            );
            let pct = if t > 0 {
                b as f64 * 100.0 / t as f64
            } else {
                0.0
            };
            tracing::info!(
                "{label}: {b} of {t} bytes ({pct:.1}%), {} keys",
                p.keys.load(Ordering::Relaxed)
            );
        }
    }
}

/// A reader that counts what passes through it into a [`Progress`].
pub struct CountingReader<R> {
    inner: R,
    progress: Arc<Progress>,
}

impl<R> CountingReader<R> {
    pub fn new(inner: R, progress: Arc<Progress>) -> Self {
        CountingReader { inner, progress }
    }
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
