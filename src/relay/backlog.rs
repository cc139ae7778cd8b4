//! Watches each master's replication backlog against the relay's lag.
//!
//! A partial resync after a disconnect or a restart works only while the master's backlog
//! still holds the first byte the relay lacks. When the lag (bytes received by the master but
//! not yet acknowledged by the target) approaches `repl-backlog-size`, the next reconnect would
//! cost a full snapshot: warn before that happens, with the size to set.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::Inner;
use crate::endpoint::Endpoint;
use crate::resp::Client;
use crate::resp::Reply;

/// Warn when the lag exceeds this share of the backlog.
const WARN_RATIO: f64 = 0.5;
/// How often the masters' backlog sizes are read.
const PERIOD: Duration = Duration::from_secs(2);

pub(super) fn spawn(inner: Weak<Inner>, endpoints: Vec<Endpoint>) {
    let _ = std::thread::Builder::new()
        .name("relay-backlog".into())
        .spawn(move || {
            let mut sizes: Vec<Option<u64>> = vec![None; endpoints.len()];
            let mut last_read = vec![None::<Instant>; endpoints.len()];
            let mut last_warn = vec![None::<Instant>; endpoints.len()];
            let mut peak_lag = vec![0u64; endpoints.len()];
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let Some(inner) = inner.upgrade() else { return };
                if inner.stop.load(Ordering::Acquire) {
                    return;
                }
                for (i, ep) in endpoints.iter().enumerate() {
                    if last_read[i].is_none_or(|t: Instant| t.elapsed() >= PERIOD * 15)
                        || sizes[i].is_none() && last_read[i].is_none_or(|t| t.elapsed() >= PERIOD)
                    {
                        last_read[i] = Some(Instant::now());
                        if let Some(n) = backlog_size(ep) {
                            sizes[i] = Some(n);
                        }
                    }
                    let Some(size) = sizes[i] else { continue };
                    let s = &inner.sources[i];
                    if !s.figures.snapshot_done.load(Ordering::Acquire) {
                        continue;
                    }
                    let lag = s
                        .progress
                        .received_offset()
                        .saturating_sub(s.tracker.applied());
                    peak_lag[i] = peak_lag[i].max(lag);
                    let ratio = lag as f64 / size.max(1) as f64;
                    let l = [("source", s.name.clone())];
                    metrics::gauge!("redis_relay_backlog_bytes", &l).set(size as f64);
                    metrics::gauge!("redis_relay_backlog_usage_ratio", &l).set(ratio);
                    if ratio >= WARN_RATIO
                        && last_warn[i].is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(30))
                    {
                        last_warn[i] = Some(Instant::now());
                        let advise = (peak_lag[i].max(lag) * 4).max(size * 2).next_power_of_two();
                        tracing::warn!(
                            source = %s.name,
                            lag_bytes = lag,
                            repl_backlog_size = size,
                            "the lag is {:.0}% of the master's repl-backlog-size: a reconnect now would need a full resync; raise it (CONFIG SET repl-backlog-size {advise}) or speed up the target",
                            ratio * 100.0
                        );
                    }
                }
            }
        });
}

/// `CONFIG GET repl-backlog-size` on a master (None when CONFIG is refused or renamed, as on
/// some managed services).
fn backlog_size(ep: &Endpoint) -> Option<u64> {
    let mut c = Client::connect(ep, Duration::from_secs(2)).ok()?;
    match c.call(&["CONFIG", "GET", "repl-backlog-size"]).ok()? {
        Reply::Array(Some(items)) => items.get(1)?.as_int().map(|n| n as u64),
        _ => None,
    }
}
