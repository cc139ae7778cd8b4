//! A source's side of the writer pool: groups ops into per-writer batches and registers each
//! batch with the source's offset tracker before handing it over.

use std::sync::Arc;
use std::time::Duration;

use super::error::PipelineError;
use super::router::partition;
use crate::batch::offsets::SourceTracker;
use crate::batch::record::{self, Record};
use crate::batch::{Batch, Bookkeeping, Op};
use crate::target::commands::CommandBuf;
use crate::target::writer::PoolError;
use crate::target::Writers;

/// Flush a writer's pending batch at this many payload bytes...
const BATCH_BYTES: usize = 128 * 1024;
/// ...or this many ops.
const BATCH_OPS: usize = 512;

pub struct Dispatcher {
    pool: Arc<dyn Writers>,
    pub tracker: Arc<SourceTracker>,
    pending: Vec<Pending>,
    /// Exactly-once records for stream batches (`None` during a snapshot).
    exactly_once: Option<ExactlyOnce>,
    /// Per writer: ops ending at or before this offset were applied before a restart (read
    /// from the target's records) and are skipped.
    skip_upto: Vec<u64>,
    /// Per writer: sequence number of the last recorded batch (with [`run_id`], tells a
    /// writer which of its batches a broken connection applied).
    seq: Vec<u64>,
}

/// Identifies this process in batch records: sequence numbers restart with each process.
pub fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{:x}{:x}", t, std::process::id())
    })
}

/// How batches are recorded on the target: a [`Record`] under [`record::key`] inside each
/// batch's MULTI/EXEC.
#[derive(Debug, Clone)]
pub struct ExactlyOnce {
    /// The relay's key prefix on the target.
    pub prefix: String,
    /// The source, as named in the record keys.
    pub source: String,
    /// The replication id the offsets belong to.
    pub replid: String,
}

#[derive(Default)]
struct Pending {
    ops: Vec<Op>,
    /// Plain commands appended by [`Dispatcher::push_commands`] since the last op: they become
    /// one op (in `open_db`) when something else comes or the batch is flushed.
    open: CommandBuf,
    open_db: u32,
    bytes: usize,
    /// Commands in the batch (ops count as one).
    commands: usize,
    /// Some op of the batch is not replayable (or comes from the snapshot).
    needs_transaction: bool,
    start: u64,
    end: u64,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.open.is_empty()
    }

    /// Turn the open commands into an op.
    fn seal(&mut self) {
        if !self.open.is_empty() {
            let (payload, replies) = self.open.take();
            self.ops.push(Op::new(self.open_db, payload, replies));
        }
    }
}

impl Dispatcher {
    pub fn new(pool: Arc<dyn Writers>, tracker: Arc<SourceTracker>) -> Self {
        let n = pool.writers();
        Dispatcher {
            pool,
            tracker,
            pending: (0..n).map(|_| Pending::default()).collect(),
            exactly_once: None,
            skip_upto: vec![0; n],
            seq: vec![0; n],
        }
    }

    /// Record every stream batch on the target (see [`ExactlyOnce`]); `None` stops recording.
    pub fn set_exactly_once(&mut self, eo: Option<ExactlyOnce>) {
        self.exactly_once = eo;
    }

    /// After a restart: ops of writer `w` ending at or before `skip_upto[w]` are already on
    /// the target.
    pub fn set_skip(&mut self, skip_upto: Vec<u64>) {
        self.skip_upto = skip_upto;
        self.skip_upto.resize(self.pending.len(), 0);
    }

    pub fn writers(&self) -> usize {
        self.pending.len()
    }

    /// The target the batches go to.
    pub fn target(&self) -> &dyn Writers {
        &*self.pool
    }

    /// The writer that owns `key`.
    pub fn writer_for(&self, key: &[u8]) -> usize {
        partition(key, self.pending.len())
    }

    /// Queue `op` for writer `w`; it covers stream offsets `(start, end]`. The batch is on the
    /// tracker's books from its first op on, so that the applied offset can never pass an op
    /// that is still waiting here.
    pub fn push(&mut self, w: usize, op: Op, start: u64, end: u64) -> Result<(), PipelineError> {
        let Some(p) = self.enter(w, start, end) else {
            return Ok(());
        };
        p.seal();
        p.bytes += op.payload.len();
        p.commands += 1;
        p.needs_transaction |= !op.replayable;
        p.ops.push(op);
        self.flush_if_full(w)
    }

    /// Like [`Self::push`] for plain commands that stay in `db`: they are copied into the
    /// writer's pending batch, where consecutive ones in the same database share one buffer
    /// (one allocation per batch instead of one per key during a snapshot).
    pub fn push_commands(
        &mut self,
        w: usize,
        db: u32,
        cmds: &CommandBuf,
        start: u64,
        end: u64,
    ) -> Result<(), PipelineError> {
        if cmds.is_empty() {
            return Ok(());
        }
        let Some(p) = self.enter(w, start, end) else {
            return Ok(());
        };
        if p.open_db != db {
            p.seal();
            p.open_db = db;
        }
        if p.open.is_empty() {
            p.open.reserve(BATCH_BYTES.max(cmds.len()) + 4096);
        }
        p.open.append(cmds);
        p.needs_transaction = true;
        p.bytes += cmds.len();
        p.commands += cmds.count as usize;
        self.flush_if_full(w)
    }

    /// The pending batch of writer `w`, with `(start, end]` on the books; `None` when that
    /// range was applied before a restart (in the same writer's recorded transaction).
    fn enter(&mut self, w: usize, start: u64, end: u64) -> Option<&mut Pending> {
        if end <= self.skip_upto[w] && end > start {
            self.tracker.extend(end);
            return None;
        }
        let p = &mut self.pending[w];
        if p.is_empty() {
            p.start = start;
            self.tracker.opened(w, start);
        }
        p.end = end;
        self.tracker.extend(end);
        Some(p)
    }

    fn flush_if_full(&mut self, w: usize) -> Result<(), PipelineError> {
        let p = &self.pending[w];
        if p.bytes >= BATCH_BYTES || p.commands >= BATCH_OPS {
            self.flush_writer(w)?;
        }
        Ok(())
    }

    /// Bytes up to `end` needed no work (PING, REPLCONF, SELECT): count them as applied once
    /// everything before them is.
    pub fn advance(&mut self, end: u64) {
        self.tracker.extend(end);
    }

    fn flush_writer(&mut self, w: usize) -> Result<(), PipelineError> {
        let p = &mut self.pending[w];
        if p.is_empty() {
            return Ok(());
        }
        p.seal();
        let ops = std::mem::take(&mut p.ops);
        let transaction = std::mem::take(&mut p.needs_transaction);
        p.bytes = 0;
        p.commands = 0;
        let seq = &mut self.seq[w];
        let tracker = &self.tracker;
        let bookkeeping = self.exactly_once.as_ref().map(|eo| {
            *seq += 1;
            metrics::counter!(
                "redis_relay_batches_total",
                "source" => tracker.name.clone(),
                "transaction" => if transaction { "yes" } else { "no" }
            )
            .increment(1);
            let record = Record {
                replid: eo.replid.clone(),
                end: p.end,
                run: run_id().to_string(),
                seq: *seq,
            };
            Bookkeeping {
                key: record::key(&eo.prefix, &eo.source, w).into(),
                value: record.encode(),
                transaction,
            }
        });
        let batch = Batch {
            tracker: self.tracker.clone(),
            ops,
            start: p.start,
            end: p.end,
            bookkeeping,
        };
        Ok(self.pool.send(w, batch)?)
    }

    /// Hand every pending batch to its writer.
    pub fn flush(&mut self) -> Result<(), PipelineError> {
        for w in 0..self.pending.len() {
            self.flush_writer(w)?;
        }
        Ok(())
    }

    /// Flush and wait until the target acknowledged everything of this source: what comes
    /// next may touch keys of several writers and must see all earlier writes.
    pub fn barrier(&mut self) -> Result<(), PipelineError> {
        self.flush()?;
        loop {
            if self.tracker.wait_drained(Duration::from_millis(200)) {
                return Ok(());
            }
            if let Some(e) = self.pool.failure() {
                return Err(PoolError::Failed(e).into());
            }
        }
    }
}
