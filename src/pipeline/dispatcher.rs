//! A source's side of the writer pool: groups ops into per-writer batches and registers each
//! batch with the source's offset tracker before handing it over.

use std::sync::Arc;
use std::time::Duration;

use super::offsets::SourceTracker;
use super::op::{Batch, Op};
use super::router::partition;
use crate::target::PoolHandle;

/// Flush a writer's pending batch at this many payload bytes...
const BATCH_BYTES: usize = 128 * 1024;
/// ...or this many ops.
const BATCH_OPS: usize = 512;

pub struct Dispatcher {
    pool: PoolHandle,
    pub tracker: Arc<SourceTracker>,
    pending: Vec<Pending>,
}

#[derive(Default)]
struct Pending {
    ops: Vec<Op>,
    bytes: usize,
    start: u64,
    end: u64,
}

impl Dispatcher {
    pub fn new(pool: PoolHandle, tracker: Arc<SourceTracker>) -> Self {
        let n = pool.writers();
        Dispatcher {
            pool,
            tracker,
            pending: (0..n).map(|_| Pending::default()).collect(),
        }
    }

    pub fn writers(&self) -> usize {
        self.pending.len()
    }

    /// The writer that owns `key`.
    pub fn writer_for(&self, key: &[u8]) -> usize {
        partition(key, self.pending.len())
    }

    /// Queue `op` for writer `w`; it covers stream offsets `(start, end]`. The batch is on the
    /// tracker's books from its first op on, so that the applied offset can never pass an op
    /// that is still waiting here.
    pub fn push(&mut self, w: usize, op: Op, start: u64, end: u64) -> Result<(), String> {
        let p = &mut self.pending[w];
        if p.ops.is_empty() {
            p.start = start;
            self.tracker.opened(w, start);
        }
        p.end = end;
        self.tracker.extend(end);
        p.bytes += op.payload.len();
        p.ops.push(op);
        if p.bytes >= BATCH_BYTES || p.ops.len() >= BATCH_OPS {
            self.flush_writer(w)?;
        }
        Ok(())
    }

    /// Bytes up to `end` needed no work (PING, REPLCONF, SELECT): count them as applied once
    /// everything before them is.
    pub fn advance(&mut self, end: u64) {
        self.tracker.extend(end);
    }

    fn flush_writer(&mut self, w: usize) -> Result<(), String> {
        let p = &mut self.pending[w];
        if p.ops.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut p.ops);
        p.bytes = 0;
        let batch = Batch {
            tracker: self.tracker.clone(),
            ops,
            start: p.start,
            end: p.end,
        };
        self.pool.send(w, batch)
    }

    /// Hand every pending batch to its writer.
    pub fn flush(&mut self) -> Result<(), String> {
        for w in 0..self.pending.len() {
            self.flush_writer(w)?;
        }
        Ok(())
    }

    /// Flush and wait until the target acknowledged everything of this source: what comes
    /// next may touch keys of several writers and must see all earlier writes.
    pub fn barrier(&mut self) -> Result<(), String> {
        self.flush()?;
        loop {
            if self.tracker.wait_drained(Duration::from_millis(200)) {
                return Ok(());
            }
            if let Some(e) = self.pool.state.error() {
                return Err(e);
            }
        }
    }
}
