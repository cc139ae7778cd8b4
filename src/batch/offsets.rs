//! Per-source applied offsets with a partitioned writer pool.
//!
//! Writers finish batches in their own order, so "the target has everything up to offset O"
//! is the smallest start offset of any batch still outstanding on any writer (or, when none
//! is, the end of what was dispatched). Each writer keeps its outstanding batches of a source
//! in a FIFO: batches of one source on one writer are acknowledged in dispatch order, so the
//! front of each FIFO is that writer's oldest outstanding batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Offset bookkeeping for one source.
#[derive(Debug)]
pub struct SourceTracker {
    pub name: String,
    /// Index of the source, for the writers' per-source counters.
    pub index: usize,
    outstanding: Vec<Mutex<VecDeque<u64>>>,
    dispatched_end: AtomicU64,
    /// Batches not yet acknowledged, over all writers (for waiting until drained).
    in_flight: Mutex<u64>,
    drained: Condvar,
    /// Commands the target acknowledged (error replies included).
    pub commands_applied: AtomicU64,
    /// Error replies from the target.
    pub target_errors: AtomicU64,
}

impl SourceTracker {
    pub fn new(name: impl Into<String>, index: usize, writers: usize, start_offset: u64) -> Self {
        SourceTracker {
            name: name.into(),
            index,
            outstanding: (0..writers).map(|_| Mutex::new(VecDeque::new())).collect(),
            dispatched_end: AtomicU64::new(start_offset),
            in_flight: Mutex::new(0),
            drained: Condvar::new(),
            commands_applied: AtomicU64::new(0),
            target_errors: AtomicU64::new(0),
        }
    }

    /// Called by the dispatcher when it starts a batch for `writer` at offset `start`.
    pub fn opened(&self, writer: usize, start: u64) {
        self.outstanding[writer].lock().push_back(start);
        *self.in_flight.lock() += 1;
    }

    /// What was dispatched (or needed no work) now reaches `end`.
    pub fn extend(&self, end: u64) {
        self.dispatched_end.fetch_max(end, Ordering::AcqRel);
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
        self.outstanding[writer].lock().pop_front();
        let mut n = self.in_flight.lock();
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.drained.notify_all();
        }
    }

    /// The highest offset up to which the target has acknowledged everything.
    pub fn applied(&self) -> u64 {
        // Read the dispatched end first: a batch dispatched after this read starts at or past it.
        let mut applied = self.dispatched_end.load(Ordering::Acquire);
        for q in &self.outstanding {
            if let Some(&start) = q.lock().front() {
                applied = applied.min(start);
            }
        }
        applied
    }

    pub fn dispatched_end(&self) -> u64 {
        self.dispatched_end.load(Ordering::Acquire)
    }

    pub fn in_flight(&self) -> u64 {
        *self.in_flight.lock()
    }

    /// Block until every dispatched batch is acknowledged, or `timeout` passes (false).
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut n = self.in_flight.lock();
        while *n > 0 {
            if self.drained.wait_until(&mut n, deadline).timed_out() {
                return *n == 0;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
