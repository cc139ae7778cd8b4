//! Running a relay in the foreground: status output until SIGTERM/SIGINT or a fatal error.
//!
//! On a terminal (stderr) every source gets its own line, drawn with
//! `indicatif::MultiProgress`: during the snapshot a bar (bytes loaded of the announced size,
//! keys, rate, ETA) or, for a diskless transfer whose size is unknown, a spinner with the bytes;
//! once the snapshot is acknowledged, the live status (lag, ops/s, errors). Log lines are
//! printed above the bars (see [`crate::progress::log_writer`]). Without a terminal, one log
//! line per source every 10 s, with the same numbers as structured fields. `quiet` turns both
//! off.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::sampler::{SourceView, SyncState};
use super::{RelayHandle, SourceStatus};

/// Block until SIGTERM or SIGINT (then shut down gracefully: exit 0) or a fatal error (exit 1).
/// Shows progress per source on a terminal, logs it every 10 s otherwise (see the module doc).
pub fn run_until_signal(handle: &RelayHandle, quiet: bool) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut view = if quiet {
        View::Quiet
    } else if std::io::stderr().is_terminal() {
        View::Bars(Bars::new(handle.status().len()))
    } else {
        View::Log(LogLines::new(Duration::from_secs(10)))
    };
    let outcome = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<_, anyhow::Error>(None),
                _ = tokio::signal::ctrl_c() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if let Some(e) = handle.error() {
                return Ok(Some(e));
            }
            view.update(handle);
        }
    });
    view.finish();
    match outcome? {
        None => {
            tracing::info!("signal received: draining and writing checkpoints");
            handle.shutdown(Duration::from_secs(8))?;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Some(e) => {
            tracing::error!("stopping: {e}");
            let _ = handle.shutdown(Duration::from_secs(5));
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

enum View {
    Quiet,
    Bars(Bars),
    Log(LogLines),
}

impl View {
    fn update(&mut self, handle: &RelayHandle) {
        match self {
            View::Quiet => {}
            View::Bars(b) => b.update(&handle.views()),
            View::Log(l) => l.update(handle),
        }
    }

    fn finish(&mut self) {
        if let View::Bars(b) = self {
            b.finish();
        }
    }
}

/// What a source's line shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the snapshot's first byte (connecting, handshake, the master's BGSAVE).
    Waiting,
    /// Loading a snapshot of known size.
    Snapshot,
    /// Loading a diskless snapshot (size unknown).
    SnapshotDiskless,
    /// Snapshot acknowledged: the stream.
    Live,
}

fn phase(v: &SourceView) -> Phase {
    match v.sync {
        SyncState::Connecting | SyncState::Failing => Phase::Waiting,
        SyncState::Snapshot if v.status.rdb_bytes_total.is_some_and(|t| t > 0) => Phase::Snapshot,
        SyncState::Snapshot => Phase::SnapshotDiskless,
        SyncState::CatchingUp | SyncState::InSync => Phase::Live,
    }
}

/// Before the snapshot or while the link is down: the state and why.
fn waiting_text(v: &SourceView) -> String {
    match &v.why {
        Some(why) => format!("{}: {why}", v.sync),
        None => v.sync.to_string(),
    }
}

/// The lag in seconds to show: the heartbeat's when there is one, else the estimate (`~`).
pub(crate) fn lag_seconds_text(s: &SourceStatus) -> String {
    match (s.lag_seconds, s.lag_seconds_estimate) {
        (Some(v), _) => format!("{v:.2} s"),
        (None, Some(v)) if v.is_finite() => format!("~{v:.1} s"),
        (None, Some(_)) => "no progress".into(),
        (None, None) => "? s".into(),
    }
}

/// Deletions waiting for a peer, when there are any.
fn deferred_text(s: &SourceStatus) -> String {
    if s.deferred_deletions == 0 {
        return String::new();
    }
    format!(
        ", {} deletions deferred (oldest {:.0} s: a peer did not answer)",
        s.deferred_deletions,
        s.deferred_deletion_age_seconds.unwrap_or(0.0)
    )
}

/// One line of text for a source (the log line's message; the bars use the same words).
fn status_text(v: &SourceView) -> String {
    let s = &v.status;
    let ops_per_sec = v.ops_per_sec;
    match phase(v) {
        Phase::Waiting => format!("{} {}", s.source, waiting_text(v)),
        Phase::Snapshot | Phase::SnapshotDiskless => {
            let total = match s.rdb_bytes_total.filter(|t| *t > 0) {
                Some(t) => format!(
                    " of {} ({:.1}%)",
                    HumanBytes(t),
                    s.rdb_bytes_loaded as f64 * 100.0 / t as f64
                ),
                None => " (diskless: size unknown)".into(),
            };
            format!(
                "{} snapshot: {}{total}, {} keys",
                s.source,
                HumanBytes(s.rdb_bytes_loaded),
                s.snapshot_keys
            )
        }
        Phase::Live => {
            format!(
                "{} {}: lag {} ({}), {ops_per_sec:.0} ops/s, {} target errors{}",
                s.source,
                v.sync,
                HumanBytes(s.lag_bytes),
                lag_seconds_text(s),
                s.target_errors,
                if s.spool_bytes > 0 {
                    format!(", spool {}", HumanBytes(s.spool_bytes))
                } else {
                    String::new()
                },
            ) + &deferred_text(s)
        }
    }
}

/// A log line per source every `period` (no terminal).
struct LogLines {
    period: Duration,
    last: Instant,
}

impl LogLines {
    fn new(period: Duration) -> Self {
        LogLines {
            period,
            last: Instant::now(),
        }
    }

    fn update(&mut self, handle: &RelayHandle) {
        if self.last.elapsed() < self.period {
            return;
        }
        self.last = Instant::now();
        for v in handle.views() {
            log_status(&v);
        }
    }
}

/// The periodic log line: `state` is the sync state (`in sync`, `catching up`, ...), `link`
/// the replication link's, `phase` what the line shows (`waiting`, `snapshot`, `streaming`).
fn log_status(v: &SourceView) {
    let s = &v.status;
    let text = status_text(v);
    let state = v.sync.as_str();
    let link = s.state.to_string();
    match phase(v) {
        Phase::Live => tracing::info!(
            source = %s.source,
            state,
            link,
            phase = "streaming",
            lag_bytes = s.lag_bytes,
            lag_seconds = s.lag_seconds,
            lag_seconds_estimate = s.lag_seconds_estimate.filter(|v| v.is_finite()),
            ops_per_sec = v.ops_per_sec.round() as u64,
            commands_applied = s.commands_applied,
            target_errors = s.target_errors,
            spool_bytes = s.spool_bytes,
            snapshot_keys = s.snapshot_keys,
            deferred_deletions = s.deferred_deletions,
            "{text}"
        ),
        p => tracing::info!(
            source = %s.source,
            state,
            link,
            phase = if p == Phase::Waiting { "waiting" } else { "snapshot" },
            rdb_bytes_loaded = s.rdb_bytes_loaded,
            rdb_bytes_total = s.rdb_bytes_total,
            snapshot_keys = s.snapshot_keys,
            keys_per_sec = v.keys_per_sec.round() as u64,
            target_errors = s.target_errors,
            why = v.why.as_deref(),
            "{text}"
        ),
    }
}

/// One line per source on the terminal.
struct Bars {
    mp: MultiProgress,
    lines: Vec<(ProgressBar, Option<Phase>)>,
}

const TICK: &[&str] = &["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏", "✓"];

fn style(p: Phase) -> ProgressStyle {
    let t = match p {
        Phase::Waiting => "{prefix:.bold} {spinner} {msg}",
        Phase::Snapshot => {
            "{prefix:.bold} snapshot [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} {msg} ETA {eta}"
        }
        Phase::SnapshotDiskless => {
            "{prefix:.bold} {spinner} snapshot {bytes} (diskless, size unknown) {bytes_per_sec} {msg}"
        }
        Phase::Live => "{prefix:.bold} {msg}",
    };
    ProgressStyle::with_template(t)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
        .tick_strings(TICK)
}

impl Bars {
    fn new(sources: usize) -> Self {
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5));
        crate::progress::set_active_bars(Some(mp.clone()));
        Bars {
            mp,
            lines: Vec::with_capacity(sources),
        }
    }

    fn update(&mut self, views: &[SourceView]) {
        let width = views
            .iter()
            .map(|v| v.status.source.len())
            .max()
            .unwrap_or(0);
        while self.lines.len() < views.len() {
            let bar = self.mp.add(ProgressBar::new(1));
            self.lines.push((bar, None));
        }
        for (v, (bar, shown)) in views.iter().zip(self.lines.iter_mut()) {
            let s = &v.status;
            let p = phase(v);
            if *shown != Some(p) {
                bar.set_style(style(p));
                bar.set_prefix(format!("{:width$}", s.source));
                // A new snapshot (or the first): the rate and ETA start over.
                bar.reset();
                *shown = Some(p);
            }
            match p {
                Phase::Waiting => {
                    bar.set_message(waiting_text(v));
                    bar.tick();
                }
                Phase::Snapshot | Phase::SnapshotDiskless => {
                    if let Some(t) = s.rdb_bytes_total.filter(|t| *t > 0) {
                        bar.set_length(t);
                    }
                    bar.set_position(s.rdb_bytes_loaded);
                    bar.set_message(format!(
                        "{} keys ({:.0} keys/s)",
                        s.snapshot_keys, v.keys_per_sec
                    ));
                }
                Phase::Live => {
                    let text = status_text(v);
                    let text = text.strip_prefix(&s.source).unwrap_or(&text).trim_start();
                    bar.set_message(text.to_string());
                }
            }
        }
    }

    fn finish(&mut self) {
        for (bar, _) in &self.lines {
            bar.abandon();
        }
        crate::progress::set_active_bars(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::sampler::Sampler;
    use crate::source::LinkState;

    fn status() -> SourceStatus {
        SourceStatus {
            source: "10.0.0.1:6379".into(),
            state: LinkState::Rdb,
            connected: true,
            snapshot_done: false,
            master_offset: 0,
            applied_offset: 0,
            lag_bytes: 0,
            rdb_bytes_loaded: 512 << 20,
            rdb_bytes_total: Some(1 << 30),
            snapshot_keys: 1_234_567,
            lag_seconds: None,
            lag_seconds_estimate: None,
            ingest_bytes_per_sec: None,
            commands_applied: 0,
            target_errors: 0,
            spool_bytes: 0,
            spool_disk_bytes: 0,
            full_syncs: 0,
            deferred_deletions: 0,
            deferred_deletion_age_seconds: None,
            error: None,
            last_error: None,
        }
    }

    /// One look of a new sampler at `s`.
    fn view(s: SourceStatus) -> SourceView {
        Sampler::default().look(vec![s]).remove(0)
    }

    #[test]
    fn snapshot_text_has_bytes_and_keys() {
        let s = view(status());
        assert_eq!(phase(&s), Phase::Snapshot);
        assert_eq!(
            status_text(&s),
            "10.0.0.1:6379 snapshot: 512.00 MiB of 1.00 GiB (50.0%), 1234567 keys"
        );
        let d = view(SourceStatus {
            rdb_bytes_total: None,
            ..status()
        });
        assert_eq!(phase(&d), Phase::SnapshotDiskless);
        assert!(status_text(&d).contains("diskless"), "{}", status_text(&d));
        let w = view(SourceStatus {
            state: LinkState::Connecting,
            rdb_bytes_loaded: 0,
            ..status()
        });
        assert_eq!(phase(&w), Phase::Waiting);
        assert_eq!(
            status_text(&w),
            "10.0.0.1:6379 connecting: connecting to the master"
        );
        let bgsave = view(SourceStatus {
            rdb_bytes_loaded: 0,
            rdb_bytes_total: None,
            ..status()
        });
        assert_eq!(phase(&bgsave), Phase::Waiting);
        assert!(status_text(&bgsave).contains("BGSAVE"));
    }

    #[test]
    fn live_text_has_sync_state_lag_rate_and_errors() {
        let mut s = status();
        s.snapshot_done = true;
        s.state = LinkState::Streaming;
        s.lag_bytes = 2048;
        s.target_errors = 3;
        s.lag_seconds_estimate = Some(0.3);
        let mut v = view(s.clone());
        v.ops_per_sec = 1500.4;
        assert_eq!(
            status_text(&v),
            "10.0.0.1:6379 in sync: lag 2.00 KiB (~0.3 s), 1500 ops/s, 3 target errors"
        );
        s.lag_seconds = Some(0.031);
        assert!(status_text(&view(s.clone())).contains("(0.03 s)"));
        s.lag_seconds = None;
        s.lag_seconds_estimate = Some(f64::INFINITY);
        let behind = view(s.clone());
        assert!(status_text(&behind).contains("catching up: "));
        assert!(status_text(&behind).contains("no progress"));
        s.deferred_deletions = 1234;
        s.deferred_deletion_age_seconds = Some(75.4);
        let v = view(s);
        assert!(
            status_text(&v)
                .ends_with(", 1234 deletions deferred (oldest 75 s: a peer did not answer)"),
            "{}",
            status_text(&v)
        );
    }
}
