//! Per-source applied offsets with a partitioned writer pool.
//!
//! Writers finish batches in their own order, so "the target has everything up to offset O"
//! is the smallest start offset of any batch still outstanding on any writer (or, when none
//! is, the end of what was dispatched). Each writer keeps its outstanding batches of a source
//! in a FIFO: batches of one source on one writer are acknowledged in dispatch order, so the
//! front of each FIFO is that writer's oldest outstanding batch.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
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
            }),
            dispatched_end: AtomicU64::new(start_offset),
            drained: Condvar::new(),
            commands_applied: AtomicU64::new(0),
            target_errors: AtomicU64::new(0),
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
