//! The one sampler of a relay's live figures: every look at [`super::RelayHandle::status`]
//! adds to a short history per source, from which come the rates (ops/s, snapshot bytes/s,
//! applied bytes/s) and the sync state ("in sync" and the rest). The terminal view, the log
//! lines, the `redis_relay_in_sync` gauge and the HTTP `/status` all read the same looks, so
//! no figure is computed twice, and an in-sync transition is logged once.
//!
//! # In sync
//!
//! A source is *in sync* when, at one look: its snapshot is applied (acknowledged by the
//! target), its link is streaming, no fatal error stopped it, and it is caught up: `lag_bytes`
//! is 0, or the lag in seconds is under [`IN_SYNC_LAG`] by both the heartbeat (when there is
//! one) and the estimate (lag bytes over the master's recent write rate). At rest the lag is
//! 0 bytes; under a steady write load that the relay keeps up with, the lag is a few
//! milliseconds of writes.
//!
//! It stays in sync while the lag alone is too big for less than [`OUT_OF_SYNC_GRACE`] (one
//! slow look does not make it flap; the metrics thread looks every 500 ms); it leaves at once
//! for a real reason: a new full resync, the link down, a fatal error.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use indicatif::HumanBytes;

use super::SourceStatus;
use crate::source::LinkState;

/// Lag in seconds under which a streaming source counts as caught up.
pub const IN_SYNC_LAG: f64 = 1.0;
/// How long the lag alone may stay above [`IN_SYNC_LAG`] before an in-sync source is
/// reported as catching up again.
pub const OUT_OF_SYNC_GRACE: Duration = Duration::from_secs(1);
/// The window of the rates: long enough to smooth a bursty load, short enough for an ETA.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// Where a source is, from its first connection to in sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Connecting, in the handshake, or waiting for the master's BGSAVE (no snapshot byte yet).
    Connecting,
    /// Loading the snapshot.
    Snapshot,
    /// Snapshot applied, the stream not caught up yet.
    CatchingUp,
    /// See the module doc.
    InSync,
    /// The link failed (retrying, or stopped by a fatal error); `why` says what happened.
    Failing,
}

impl SyncState {
    /// The words of the status (JSON, log lines, the `status` table).
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Connecting => "connecting",
            SyncState::Snapshot => "snapshot",
            SyncState::CatchingUp => "catching up",
            SyncState::InSync => "in sync",
            SyncState::Failing => "failing",
        }
    }
}

impl std::fmt::Display for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One source at one look: its status, its rates and its sync state.
#[derive(Debug, Clone)]
pub struct SourceView {
    pub status: SourceStatus,
    pub sync: SyncState,
    /// Why the source is not in sync (`None` when it is).
    pub why: Option<String>,
    /// Commands acknowledged by the target per second (snapshot and stream).
    pub ops_per_sec: f64,
    /// Snapshot keys handed to the target per second.
    pub keys_per_sec: f64,
    /// Snapshot bytes parsed per second (`None` until two looks).
    pub load_bytes_per_sec: Option<f64>,
    /// Stream bytes acknowledged by the target per second.
    pub apply_bytes_per_sec: Option<f64>,
}

impl SourceView {
    /// The lag in seconds to show and where it comes from: the heartbeat's when there is one,
    /// else the estimate (finite only).
    pub fn lag_seconds(&self) -> Option<(f64, &'static str)> {
        let s = &self.status;
        match (s.lag_seconds, s.lag_seconds_estimate) {
            (Some(v), _) => Some((v, "heartbeat")),
            (None, Some(v)) if v.is_finite() => Some((v, "estimate")),
            _ => None,
        }
    }

    /// Seconds until the snapshot is loaded: remaining bytes over the recent load rate.
    pub fn eta_snapshot_seconds(&self) -> Option<f64> {
        let s = &self.status;
        let total = s.rdb_bytes_total.filter(|t| *t > 0)?;
        let rate = self.load_bytes_per_sec.filter(|r| *r > 0.0)?;
        (self.sync == SyncState::Snapshot)
            .then(|| total.saturating_sub(s.rdb_bytes_loaded) as f64 / rate)
    }

    /// Seconds until the lag is gone: lag bytes over (apply rate - write rate) when the
    /// target gains on the master; `None` when it does not (or not known yet).
    pub fn eta_catch_up_seconds(&self) -> Option<f64> {
        let s = &self.status;
        if !s.snapshot_done {
            return None;
        }
        if s.lag_bytes == 0 {
            return Some(0.0);
        }
        let gain = self.apply_bytes_per_sec? - s.ingest_bytes_per_sec.unwrap_or(0.0);
        (gain > 0.0).then(|| s.lag_bytes as f64 / gain)
    }

    /// Snapshot progress in percent, while loading one of known size.
    pub fn percent(&self) -> Option<f64> {
        let s = &self.status;
        let total = s.rdb_bytes_total.filter(|t| *t > 0)?;
        (self.sync == SyncState::Snapshot)
            .then(|| (s.rdb_bytes_loaded as f64 * 100.0 / total as f64).min(100.0))
    }
}

/// Samples of a growing counter over the last seconds, for a recent rate.
#[derive(Debug, Default, Clone)]
pub(crate) struct RateWindow {
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    /// Add a sample (at most one per 250 ms) and return the rate per second over `window`
    /// (`None` until the samples span 0.2 s). A counter that went back (a new snapshot)
    /// starts over.
    pub(crate) fn sample(&mut self, value: u64, window: Duration) -> Option<f64> {
        let now = Instant::now();
        if self.samples.back().is_some_and(|(_, v)| *v > value) {
            self.samples.clear();
        }
        // Neither Option::is_none_or (above the MSRV) nor map_or(true, ..) (clippy on newer
        // MSRVs).
        let due = match self.samples.back() {
            Some((t, _)) => now.duration_since(*t) >= Duration::from_millis(250),
            None => true,
        };
        if due {
            self.samples.push_back((now, value));
        }
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > window {
            self.samples.pop_front();
        }
        let (t0, v0) = *self.samples.front()?;
        let (t1, v1) = *self.samples.back()?;
        let secs = t1.duration_since(t0).as_secs_f64();
        (secs >= 0.2).then(|| v1.saturating_sub(v0) as f64 / secs)
    }
}

/// The history of one source.
#[derive(Debug, Default)]
struct Track {
    commands: RateWindow,
    keys: RateWindow,
    loaded: RateWindow,
    applied: RateWindow,
    in_sync: bool,
    /// Since when the lag alone has been too big while in sync.
    lagging_since: Option<Instant>,
    /// The link failed and has not got past the handshake since.
    failing: bool,
    /// A snapshot was applied once: a new one is a full resync.
    had_snapshot: bool,
    /// The in-sync line of the current snapshot was logged.
    announced_snapshot: bool,
}

/// Every source's history and the last look.
#[derive(Debug, Default)]
pub struct Sampler {
    tracks: Vec<Track>,
    last: Vec<SourceView>,
    at: Option<Instant>,
}

impl Sampler {
    /// Take a look: update the histories with `status`, log in-sync transitions, return the
    /// views.
    pub fn look(&mut self, status: Vec<SourceStatus>) -> Vec<SourceView> {
        self.look_at(status, Instant::now())
    }

    /// [`Sampler::look`] at a given time (the tests step the clock).
    fn look_at(&mut self, status: Vec<SourceStatus>, now: Instant) -> Vec<SourceView> {
        self.tracks.resize_with(status.len(), Track::default);
        let views: Vec<SourceView> = status
            .into_iter()
            .zip(self.tracks.iter_mut())
            .map(|(s, t)| t.look(s, now))
            .collect();
        self.last = views.clone();
        self.at = Some(now);
        views
    }

    /// The last look and when it was taken (`None` before the first).
    pub fn last(&self) -> Option<(Instant, Vec<SourceView>)> {
        self.at.map(|at| (at, self.last.clone()))
    }
}

impl Track {
    fn look(&mut self, s: SourceStatus, now: Instant) -> SourceView {
        let ops = self.commands.sample(s.commands_applied, RATE_WINDOW);
        let keys = self.keys.sample(s.snapshot_keys, RATE_WINDOW);
        let loaded = self.loaded.sample(s.rdb_bytes_loaded, RATE_WINDOW);
        let applied = if s.snapshot_done {
            self.applied.sample(s.applied_offset, RATE_WINDOW)
        } else {
            self.applied = RateWindow::default();
            None
        };
        let (sync, why) = self.classify(&s, now);
        SourceView {
            status: s,
            sync,
            why,
            ops_per_sec: ops.unwrap_or(0.0),
            keys_per_sec: keys.unwrap_or(0.0),
            load_bytes_per_sec: loaded,
            apply_bytes_per_sec: applied,
        }
    }

    /// The sync state at this look, with why it is not in sync; logs the transitions.
    fn classify(&mut self, s: &SourceStatus, now: Instant) -> (SyncState, Option<String>) {
        let (state, why) = self.base_state(s);
        if state != SyncState::CatchingUp {
            // A real reason (resync, link down, error): out of sync at once.
            self.leave(s, why.as_deref().unwrap_or("not streaming"));
            return (state, why);
        }
        match lag_problem(s) {
            None => {
                self.lagging_since = None;
                if !self.in_sync {
                    self.enter(s);
                }
                (SyncState::InSync, None)
            }
            Some(p) if self.in_sync => {
                let since = *self.lagging_since.get_or_insert(now);
                if now.duration_since(since) < OUT_OF_SYNC_GRACE {
                    return (SyncState::InSync, None);
                }
                self.leave(s, &p);
                (SyncState::CatchingUp, Some(p))
            }
            Some(p) => (SyncState::CatchingUp, Some(p)),
        }
    }

    /// Log the entry in sync (once per transition): the first since the snapshot names it.
    fn enter(&mut self, s: &SourceStatus) {
        self.in_sync = true;
        let lag = HumanBytes(s.lag_bytes);
        if std::mem::replace(&mut self.announced_snapshot, true) {
            tracing::info!(source = %s.source, lag_bytes = s.lag_bytes, "{} in sync again: lag {lag}", s.source);
        } else if s.full_syncs == 0 {
            // No snapshot in this process: the stream resumed from the checkpoint.
            tracing::info!(source = %s.source, lag_bytes = s.lag_bytes, "{} in sync: resumed from the checkpoint, lag {lag}", s.source);
        } else {
            tracing::info!(
                source = %s.source,
                snapshot_keys = s.snapshot_keys,
                lag_bytes = s.lag_bytes,
                "{} in sync: snapshot of {} keys applied, lag {lag}",
                s.source,
                s.snapshot_keys,
            );
        }
    }

    /// Log the fall out of sync (once) and forget the in-sync state.
    fn leave(&mut self, s: &SourceStatus, why: &str) {
        if self.in_sync {
            tracing::warn!(source = %s.source, why, "{} out of sync: {why}", s.source);
        }
        self.in_sync = false;
        self.lagging_since = None;
    }

    /// The state from the link and the snapshot alone: `CatchingUp` for a streaming source
    /// whose snapshot is applied (the lag decides between it and in sync).
    fn base_state(&mut self, s: &SourceStatus) -> (SyncState, Option<String>) {
        self.had_snapshot |= s.snapshot_done;
        if !s.snapshot_done {
            // The next in-sync line names the new snapshot.
            self.announced_snapshot = false;
        }
        let last_error = || s.last_error.clone().unwrap_or_else(|| "link failed".into());
        if let Some(e) = &s.error {
            return (SyncState::Failing, Some(e.clone()));
        }
        match s.state {
            LinkState::Backoff | LinkState::Failed => self.failing = true,
            LinkState::Rdb | LinkState::Streaming => self.failing = false,
            LinkState::Connecting | LinkState::Handshake | LinkState::Stopped => {}
        }
        if self.failing {
            return (SyncState::Failing, Some(last_error()));
        }
        let why = match s.state {
            LinkState::Connecting => "connecting to the master",
            // The master answers PSYNC once its snapshot starts (after
            // repl-diskless-sync-delay for a diskless one).
            LinkState::Handshake => "replica handshake",
            LinkState::Stopped => "link stopped",
            _ => "",
        };
        if !why.is_empty() {
            return (SyncState::Connecting, Some(why.into()));
        }
        if s.snapshot_done && s.state == LinkState::Streaming {
            return (SyncState::CatchingUp, None);
        }
        if s.snapshot_done {
            // A full resync started after an applied snapshot; the master is saving.
            return (
                SyncState::Connecting,
                Some("full resync: waiting for the snapshot".into()),
            );
        }
        if s.rdb_bytes_loaded == 0 && (s.state != LinkState::Rdb || s.rdb_bytes_total.is_none()) {
            let why = match self.had_snapshot {
                false => "waiting for the master's snapshot (BGSAVE)",
                true => "full resync: waiting for the master's snapshot (BGSAVE)",
            };
            return (SyncState::Connecting, Some(why.into()));
        }
        let why = match self.had_snapshot {
            false => "snapshot not applied yet",
            true => "full resync: new snapshot not applied yet",
        };
        (SyncState::Snapshot, Some(why.into()))
    }
}

/// Why a streaming source with its snapshot applied is not caught up (`None`: it is).
fn lag_problem(s: &SourceStatus) -> Option<String> {
    if s.lag_bytes == 0 {
        return None;
    }
    let heartbeat_ok = s.lag_seconds.is_none_or(|v| v < IN_SYNC_LAG);
    match s.lag_seconds_estimate {
        Some(v) if v < IN_SYNC_LAG && heartbeat_ok => None,
        Some(v) if v.is_infinite() => Some(format!(
            "lag {} and no write on the master to measure it by",
            HumanBytes(s.lag_bytes)
        )),
        Some(v) => Some(format!(
            "lag {} (~{:.1} s{})",
            HumanBytes(s.lag_bytes),
            s.lag_seconds.unwrap_or(v).max(v),
            if s.lag_seconds.is_some() {
                " by the heartbeat"
            } else {
                ""
            }
        )),
        None => Some(format!(
            "lag {} (rate not measured yet)",
            HumanBytes(s.lag_bytes)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streaming() -> SourceStatus {
        SourceStatus {
            source: "10.0.0.1:6379".into(),
            state: LinkState::Streaming,
            connected: true,
            snapshot_done: true,
            master_offset: 1000,
            applied_offset: 1000,
            lag_bytes: 0,
            rdb_bytes_loaded: 4096,
            rdb_bytes_total: Some(4096),
            snapshot_keys: 10,
            lag_seconds: None,
            lag_seconds_estimate: Some(0.0),
            ingest_bytes_per_sec: Some(100.0),
            commands_applied: 10,
            target_errors: 0,
            spool_bytes: 0,
            spool_disk_bytes: 0,
            full_syncs: 1,
            deferred_deletions: 0,
            deferred_deletion_age_seconds: None,
            error: None,
            last_error: None,
        }
    }

    fn lagging(estimate: f64) -> SourceStatus {
        SourceStatus {
            lag_bytes: 5000,
            lag_seconds_estimate: Some(estimate),
            ..streaming()
        }
    }

    fn one(s: &mut Sampler, st: SourceStatus, at: Instant) -> SourceView {
        s.look_at(vec![st], at).remove(0)
    }

    #[test]
    fn in_sync_survives_a_short_lag_and_leaves_after_the_grace() {
        let mut s = Sampler::default();
        let t0 = Instant::now();
        assert_eq!(one(&mut s, streaming(), t0).sync, SyncState::InSync);
        // Writes in flight, a fraction of a second behind: still in sync.
        assert_eq!(one(&mut s, lagging(0.2), t0).sync, SyncState::InSync);
        // Behind by seconds, but for less than the grace.
        let v = one(&mut s, lagging(5.0), t0 + Duration::from_millis(500));
        assert_eq!(v.sync, SyncState::InSync);
        assert_eq!(v.why, None);
        let v = one(&mut s, lagging(5.0), t0 + Duration::from_millis(1600));
        assert_eq!(v.sync, SyncState::CatchingUp);
        assert_eq!(v.why.as_deref(), Some("lag 4.88 KiB (~5.0 s)"), "{v:?}");
        // Caught up again at the next look.
        let v = one(&mut s, lagging(0.1), t0 + Duration::from_secs(6));
        assert_eq!(v.sync, SyncState::InSync);
    }

    #[test]
    fn catching_up_until_the_lag_is_small_and_idle_master_lag_is_not_in_sync() {
        let mut s = Sampler::default();
        let t0 = Instant::now();
        assert_eq!(one(&mut s, lagging(3.0), t0).sync, SyncState::CatchingUp);
        let idle = one(&mut s, lagging(f64::INFINITY), t0);
        assert_eq!(idle.sync, SyncState::CatchingUp);
        assert!(idle.why.unwrap().contains("no write on the master"));
        // The heartbeat says more than 1 s: not in sync, whatever the estimate.
        let hb = SourceStatus {
            lag_seconds: Some(2.5),
            ..lagging(0.1)
        };
        assert_eq!(one(&mut s, hb, t0).sync, SyncState::CatchingUp);
    }

    #[test]
    fn a_full_resync_leaves_at_once() {
        let mut s = Sampler::default();
        let t0 = Instant::now();
        assert_eq!(one(&mut s, streaming(), t0).sync, SyncState::InSync);
        let resync = SourceStatus {
            state: LinkState::Rdb,
            snapshot_done: false,
            rdb_bytes_loaded: 1024,
            rdb_bytes_total: Some(4096),
            ..streaming()
        };
        let v = one(&mut s, resync, t0);
        assert_eq!(v.sync, SyncState::Snapshot);
        assert_eq!(v.percent(), Some(25.0));
        assert!(v.why.unwrap().starts_with("full resync"));
    }

    #[test]
    fn failing_holds_until_the_link_gets_past_the_handshake() {
        let mut s = Sampler::default();
        let t0 = Instant::now();
        let down = SourceStatus {
            state: LinkState::Backoff,
            snapshot_done: false,
            connected: false,
            last_error: Some("connection refused".into()),
            ..streaming()
        };
        let v = one(&mut s, down.clone(), t0);
        assert_eq!(v.sync, SyncState::Failing);
        assert_eq!(v.why.as_deref(), Some("connection refused"));
        let retry = SourceStatus {
            state: LinkState::Connecting,
            ..down.clone()
        };
        assert_eq!(one(&mut s, retry, t0).sync, SyncState::Failing);
        let bgsave = SourceStatus {
            state: LinkState::Rdb,
            rdb_bytes_loaded: 0,
            rdb_bytes_total: None,
            ..down
        };
        assert_eq!(one(&mut s, bgsave, t0).sync, SyncState::Connecting);
    }

    #[test]
    fn eta_of_catch_up_needs_the_target_to_gain() {
        let mut v = Sampler::default().look(vec![lagging(3.0)]).remove(0);
        v.apply_bytes_per_sec = Some(1100.0);
        assert_eq!(v.eta_catch_up_seconds(), Some(5.0));
        v.apply_bytes_per_sec = Some(50.0);
        assert_eq!(v.eta_catch_up_seconds(), None);
    }
}
