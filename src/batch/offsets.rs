//! Per-source applied offsets with a partitioned writer pool.
//!
//! Writers finish batches in their own order, so "the target has everything up to offset O"
//! is the smallest start offset of any batch still outstanding on any writer (or, when none
//! is, the end of what was dispatched). Each writer keeps its outstanding batches of a source
//! in a FIFO: batches of one source on one writer are acknowledged in dispatch order, so the
//! front of each FIFO is that writer's oldest outstanding batch.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Offset bookkeeping for one source.
#[derive(Debug)]
pub struct SourceTracker {
    pub name: String,
    /// Index of the source, for the writers' per-source counters.
    pub index: usize,
    books: Mutex<Books>,
    dispatched_end: AtomicU64,
    drained: Condvar,
    /// Commands the target acknowledged (error replies included).
    pub commands_applied: AtomicU64,
    /// Error replies from the target.
    pub target_errors: AtomicU64,
    /// The lag of the last heartbeat the target has everything before, in microseconds
    /// ([`NO_LAG`]: none yet): measured when the acknowledgement that covers it arrives, on
    /// the writer's thread, not when the source's loop next looks (shared with the loop's
    /// figures, which publish it).
    pub heartbeat_lag_us: Arc<AtomicU64>,
}

/// No heartbeat measured yet.
pub const NO_LAG: u64 = u64::MAX;

/// Microseconds since the Unix epoch.
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The outstanding batches: per writer in dispatch order, and every outstanding start once
/// more in a sorted multiset, so that the oldest one is found without visiting every writer
/// (a cluster target has 16384, one per slot).
#[derive(Debug)]
struct Books {
    per_writer: Vec<VecDeque<u64>>,
    /// Start offset -> how many outstanding batches start there.
    starts: BTreeMap<u64, u32>,
    in_flight: u64,
    /// Heartbeats seen in the stream whose commands before them are not all acknowledged:
    /// (stamp µs, end offset), in stream order.
    heartbeats: VecDeque<(u64, u64)>,
}

impl Books {
    /// Take `writer`'s oldest outstanding batch off the books.
    fn pop_oldest(&mut self, writer: usize) {
        if let Some(start) = self.per_writer[writer].pop_front() {
            if let std::collections::btree_map::Entry::Occupied(mut e) = self.starts.entry(start) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

impl SourceTracker {
    pub fn new(name: impl Into<String>, index: usize, writers: usize, start_offset: u64) -> Self {
        SourceTracker {
            name: name.into(),
            index,
            books: Mutex::new(Books {
                per_writer: (0..writers).map(|_| VecDeque::new()).collect(),
                starts: BTreeMap::new(),
                in_flight: 0,
                heartbeats: VecDeque::new(),
            }),
            dispatched_end: AtomicU64::new(start_offset),
            drained: Condvar::new(),
            commands_applied: AtomicU64::new(0),
            target_errors: AtomicU64::new(0),
            heartbeat_lag_us: Arc::new(AtomicU64::new(NO_LAG)),
        }
    }

    /// Called by the dispatcher when it starts a batch for `writer` at offset `start`.
    pub fn opened(&self, writer: usize, start: u64) {
        let mut b = self.books.lock();
        b.per_writer[writer].push_back(start);
        *b.starts.entry(start).or_insert(0) += 1;
        b.in_flight += 1;
    }

    /// What was dispatched (or needed no work) now reaches `end`.
    pub fn extend(&self, end: u64) {
        // Most calls change nothing (a snapshot's ops all end at one offset): a read-modify-
        // write on every op would fight the writers for this cache line.
        if end > self.dispatched_end.load(Ordering::Acquire) {
            self.dispatched_end.fetch_max(end, Ordering::AcqRel);
        }
    }

    /// A batch `(start, end]` for `writer` (open and extend at once).
    pub fn dispatched(&self, writer: usize, start: u64, end: u64) {
        self.opened(writer, start);
        self.extend(end);
    }

    /// Restart the offset space (a new full sync): only valid while nothing is in flight.
    pub fn reset(&self, offset: u64) {
        self.dispatched_end.store(offset, Ordering::Release);
    }

    /// Called by `writer` once the target answered every command of its oldest batch.
    pub fn acknowledged(&self, writer: usize) {
        self.acknowledged_many([writer]);
    }

    /// [`Self::acknowledged`] for the oldest batch of each of `writers` (a writer listed
    /// twice: its two oldest), under one lock: a cluster writer settles a round of up to
    /// thousands of slots' batches at once.
    pub fn acknowledged_many(&self, writers: impl IntoIterator<Item = usize>) {
        let mut b = self.books.lock();
        for writer in writers {
            b.pop_oldest(writer);
        }
        if b.in_flight == 0 {
            self.drained.notify_all();
        }
        if !b.heartbeats.is_empty() {
            self.settle_heartbeats(&mut b);
        }
    }

    /// A heartbeat written on the source at `stamp_us` ends at stream offset `end` (the
    /// caller has extended the books to it): its lag is measured once the target has
    /// everything before it, now if it already has.
    pub fn heartbeat(&self, stamp_us: u64, end: u64) {
        let mut b = self.books.lock();
        b.heartbeats.push_back((stamp_us, end));
        self.settle_heartbeats(&mut b);
    }

    /// The stamp (µs) of the oldest heartbeat still waiting for the target, if any.
    pub fn oldest_heartbeat(&self) -> Option<u64> {
        self.books.lock().heartbeats.front().map(|h| h.0)
    }

    /// Forget the waiting heartbeats (a new full sync: their offsets mean nothing now).
    pub fn forget_heartbeats(&self) {
        self.books.lock().heartbeats.clear();
    }

    /// Measure the heartbeats the applied offset has reached (under the books' lock).
    fn settle_heartbeats(&self, b: &mut Books) {
        let dispatched = self.dispatched_end.load(Ordering::Acquire);
        let applied = b
            .starts
            .keys()
            .next()
            .map_or(dispatched, |&o| dispatched.min(o));
        let mut measured = None;
        while let Some(&(stamp, end)) = b.heartbeats.front() {
            if applied < end {
                break;
            }
            b.heartbeats.pop_front();
            measured = Some(stamp);
        }
        if let Some(stamp) = measured {
            let lag = unix_us().saturating_sub(stamp);
            self.heartbeat_lag_us.store(lag, Ordering::Relaxed);
            metrics::histogram!("redis_relay_heartbeat_lag_seconds", "source" => self.name.clone())
                .record(lag as f64 / 1e6);
        }
    }

    /// The highest offset up to which the target has acknowledged everything.
    pub fn applied(&self) -> u64 {
        // Read the dispatched end first: a batch dispatched after this read starts at or past it.
        let applied = self.dispatched_end.load(Ordering::Acquire);
        match self.books.lock().starts.keys().next() {
            Some(&oldest) => applied.min(oldest),
            None => applied,
        }
    }

    pub fn dispatched_end(&self) -> u64 {
        self.dispatched_end.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> u64 {
        self.books.lock().in_flight
    }

    /// Block until every dispatched batch is acknowledged, or `timeout` passes (false).
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut b = self.books.lock();
        while b.in_flight > 0 {
            if self.drained.wait_until(&mut b, deadline).timed_out() {
                return b.in_flight == 0;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_measured_when_everything_before_it_is_acknowledged() {
        let t = SourceTracker::new("s", 0, 2, 0);
        // Nothing outstanding: measured at once.
        t.extend(10);
        t.heartbeat(unix_us() - 3_000, 10);
        let lag = t.heartbeat_lag_us.load(Ordering::Relaxed);
        assert!((3_000..1_000_000).contains(&lag), "{lag}");
        // Batches before the next heartbeat: it waits for the last of them.
        t.dispatched(0, 10, 20);
        t.dispatched(1, 20, 30);
        t.extend(35);
        let stamp = unix_us() - 500_000;
        t.heartbeat(stamp, 35);
        assert_eq!(t.oldest_heartbeat(), Some(stamp));
        assert_eq!(t.heartbeat_lag_us.load(Ordering::Relaxed), lag, "not yet");
        t.acknowledged(1);
        assert_eq!(
            t.oldest_heartbeat(),
            Some(stamp),
            "writer 0 still holds 10..20"
        );
        t.acknowledged(0);
        assert_eq!(t.oldest_heartbeat(), None);
        let lag = t.heartbeat_lag_us.load(Ordering::Relaxed);
        assert!((500_000..5_000_000).contains(&lag), "{lag}");
        // A new full sync forgets the waiting ones.
        t.dispatched(0, 35, 40);
        t.heartbeat(unix_us(), 40);
        t.forget_heartbeats();
        assert_eq!(t.oldest_heartbeat(), None);
    }

    #[test]
    fn applied_is_the_oldest_outstanding_start() {
        let t = SourceTracker::new("s", 0, 2, 100);
        assert_eq!(t.applied(), 100);
        t.dispatched(0, 100, 150);
        t.dispatched(1, 150, 180);
        t.dispatched(0, 180, 200);
        assert_eq!(t.applied(), 100);
        t.acknowledged(1); // writer 1 done first: still waiting for writer 0's first batch
        assert_eq!(t.applied(), 100);
        t.acknowledged(0);
        assert_eq!(t.applied(), 180);
        t.acknowledged(0);
        assert_eq!(t.applied(), 200);
        assert!(t.wait_drained(Duration::from_millis(1)));
    }

    #[test]
    fn acknowledging_many_equals_one_by_one() {
        let t = SourceTracker::new("s", 0, 3, 0);
        t.dispatched(0, 0, 10);
        t.dispatched(1, 10, 20);
        t.dispatched(0, 20, 30);
        t.dispatched(2, 30, 40);
        t.acknowledged_many([1, 0]);
        // Writer 0's second batch (from 20) is the oldest left.
        assert_eq!(t.applied(), 20);
        assert_eq!(t.in_flight(), 2);
        assert!(!t.wait_drained(Duration::from_millis(1)));
        t.acknowledged_many([0, 2]);
        assert_eq!(t.applied(), 40);
        assert!(t.wait_drained(Duration::from_millis(1)));
    }

    #[test]
    fn extend_never_moves_back() {
        let t = SourceTracker::new("s", 0, 1, 100);
        t.extend(150);
        t.extend(120);
        assert_eq!(t.dispatched_end(), 150);
    }
}
