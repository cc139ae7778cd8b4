//! The relay's status for people and probes: the `/status` JSON model (this file), the HTTP
//! endpoint beside `/metrics` ([`http`]), and the `redis-relay status` command's side
//! ([`client`]).
//!
//! The figures come from the relay's one sampler ([`crate::relay::sampler`]): this module only
//! puts them in the shape of the report. "In sync" is defined there.
//!
//! Beside the data path. Owns: the report's fields and words, readiness.

pub mod client;
pub mod http;

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::relay::{RelayHandle, SourceView, SyncState};

/// The whole relay: `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// `starting` (prechecks done, the relay not started yet) or `running`.
    pub state: String,
    /// The relay's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Seconds since the process started serving the endpoint.
    pub uptime_seconds: f64,
    /// Every source is in sync (and there is at least one).
    pub ready: bool,
    pub sources: Vec<SourceReport>,
}

/// One source in the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceReport {
    /// `host:port` of the master.
    pub source: String,
    /// `connecting`, `snapshot`, `catching up`, `in sync` or `failing`.
    pub state: String,
    /// Why it is not in sync (`null` when it is).
    pub why: Option<String>,
    /// The replication link's own state (`connecting`, `handshake`, `rdb`, `streaming`,
    /// `backoff`, `stopped`, `failed`).
    pub link: String,
    /// Snapshot progress, while loading one of known size.
    pub percent: Option<f64>,
    /// Stream bytes the target does not have yet; `null` until the snapshot is applied (the
    /// stream waits in the spool meanwhile).
    pub lag_bytes: Option<u64>,
    /// Lag in seconds: the heartbeat's when there is one, else the estimate.
    pub lag_seconds: Option<f64>,
    /// Where `lag_seconds` comes from: `heartbeat` or `estimate`.
    pub lag_seconds_from: Option<String>,
    /// Commands acknowledged by the target per second (last 5 s).
    pub ops_per_sec: f64,
    /// Keys of the current (or last) snapshot handed to the target.
    pub snapshot_keys: u64,
    /// Commands acknowledged by the target, snapshot and stream.
    pub commands_applied: u64,
    /// Remaining snapshot bytes over the recent load rate.
    pub eta_snapshot_seconds: Option<f64>,
    /// Lag bytes over (apply rate - write rate) when positive.
    pub eta_catch_up_seconds: Option<f64>,
    pub spool_bytes: u64,
    pub target_errors: u64,
    pub full_syncs: u64,
    /// The last error of the source or its link (it may have recovered since).
    pub last_error: Option<String>,
}

impl SourceReport {
    fn of(v: &SourceView) -> SourceReport {
        let s = &v.status;
        let lag = v.lag_seconds();
        SourceReport {
            source: s.source.clone(),
            state: v.sync.as_str().into(),
            why: v.why.clone(),
            link: s.state.to_string(),
            percent: v.percent().map(round2),
            lag_bytes: s.snapshot_done.then_some(s.lag_bytes),
            lag_seconds: lag.map(|(v, _)| round3(v)),
            lag_seconds_from: lag.map(|(_, from)| from.into()),
            ops_per_sec: round2(v.ops_per_sec),
            snapshot_keys: s.snapshot_keys,
            commands_applied: s.commands_applied,
            eta_snapshot_seconds: v.eta_snapshot_seconds().map(round2),
            eta_catch_up_seconds: v.eta_catch_up_seconds().map(round2),
            spool_bytes: s.spool_bytes,
            target_errors: s.target_errors,
            full_syncs: s.full_syncs,
            last_error: s.last_error.clone(),
        }
    }

    pub fn in_sync(&self) -> bool {
        self.state == SyncState::InSync.as_str()
    }
}

impl StatusReport {
    /// The report of a running relay (`Some`), or of one not started yet.
    pub fn of(relay: Option<&RelayHandle>, uptime: Duration) -> StatusReport {
        let sources: Vec<SourceReport> = relay
            .map(|h| h.views().iter().map(SourceReport::of).collect())
            .unwrap_or_default();
        StatusReport {
            state: if relay.is_some() {
                "running"
            } else {
                "starting"
            }
            .into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: round2(uptime.as_secs_f64()),
            ready: !sources.is_empty() && sources.iter().all(SourceReport::in_sync),
            sources,
        }
    }

    /// Why the relay is not ready, one short clause per source not in sync (`None`: ready).
    pub fn not_ready(&self) -> Option<String> {
        if self.state != "running" {
            return Some(format!("relay {}", self.state));
        }
        if self.ready {
            return None;
        }
        let clauses: Vec<String> = self
            .sources
            .iter()
            .filter(|s| !s.in_sync())
            .map(|s| match &s.why {
                Some(why) => format!("{} {}: {why}", s.source, s.state),
                None => format!("{} {}", s.source, s.state),
            })
            .collect();
        Some(clauses.join("; "))
    }
}

/// JSON numbers people read: two decimals.
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// Lags in seconds: milliseconds.
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
