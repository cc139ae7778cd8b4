//! A source's side of the writer pool: groups ops into per-writer batches and registers each
//! batch with the source's offset tracker before handing it over.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::error::PipelineError;
use super::fold::{ListRun, StringRun};
use super::router::partition;
use crate::batch::offsets::SourceTracker;
use crate::batch::record::{self, Record};
use crate::batch::{Batch, Bookkeeping, CrossSlot, Op, SlotPart};
use crate::target::cluster::key_slot;
use crate::target::commands::CommandBuf;
use crate::target::writer::PoolError;
use crate::target::Writers;

/// Flush a writer's pending batch at this many payload bytes...
const BATCH_BYTES: usize = 128 * 1024;
/// ...or this many ops.
const BATCH_OPS: usize = 512;
/// On a cluster target (a writer per slot), flush every pending batch once they hold this
/// much together: 16384 batches each allowed [`BATCH_BYTES`] would not keep memory bounded.
const SLOTTED_PENDING_BYTES: usize = 16 << 20;
/// ...or this many commands together.
const SLOTTED_PENDING_COMMANDS: usize = 256 * 1024;

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
    /// Writers with a pending batch (each once), so that a flush does not visit all 16384
    /// of a cluster target.
    dirty: Vec<usize>,
    /// The target places keys by hash slot: writer = slot (see [`Writers::slotted`]).
    slotted: bool,
    /// Bytes and commands pending over all writers (bounded on a slotted target).
    pending_bytes: usize,
    pending_commands: usize,
    /// The smallest start offset of the pending batches since the last full flush.
    oldest_pending: Option<u64>,
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
    /// Plain string keys appended by [`Dispatcher::push_string`] since the last op or
    /// command: they become one `MSET` op when something else comes or the batch is sealed.
    /// (Never non-empty together with `open`: each seals the other first, so order holds.)
    strings: StringRun,
    /// The stream's pushes to one list since the last op or command (see
    /// [`Dispatcher::push_stream_list`]); like `strings`, never open together with another.
    lists: ListRun,
    bytes: usize,
    /// Commands in the batch (ops count as one).
    commands: usize,
    /// Some op of the batch is not replayable (or comes from the snapshot).
    needs_transaction: bool,
    /// Listed in the dispatcher's `dirty`.
    dirty: bool,
    /// Give the open buffer away whole when sealing (a cluster target's 16384 lanes would
    /// each keep an allocation alive otherwise).
    release: bool,
    start: u64,
    end: u64,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.ops.is_empty()
            && self.open.is_empty()
            && self.strings.keys == 0
            && self.lists.count == 0
    }

    /// Turn the open commands into an op (and the runs: only one of them is open).
    fn seal(&mut self) {
        if !self.open.is_empty() {
            let (payload, replies) = if self.release {
                self.open.take_all()
            } else {
                self.open.take()
            };
            self.ops.push(Op::new(self.open_db, payload, replies));
        }
        self.seal_runs();
    }

    fn seal_runs(&mut self) {
        if let Some(op) = self.strings.seal(self.release) {
            self.ops.push(op);
        }
        if let Some(op) = self.lists.seal() {
            self.ops.push(op);
        }
    }
}

impl Dispatcher {
    pub fn new(pool: Arc<dyn Writers>, tracker: Arc<SourceTracker>) -> Self {
        let n = pool.writers();
        let slotted = pool.slotted();
        Dispatcher {
            pool,
            tracker,
            pending: (0..n)
                .map(|_| Pending {
                    release: slotted,
                    ..Pending::default()
                })
                .collect(),
            exactly_once: None,
            skip_upto: vec![0; n],
            seq: vec![0; n],
            dirty: Vec::new(),
            slotted,
            pending_bytes: 0,
            pending_commands: 0,
            oldest_pending: None,
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

    /// The writer that owns `key`: its hash slot on a cluster target.
    #[inline]
    pub fn writer_for(&self, key: &[u8]) -> usize {
        if self.slotted {
            key_slot(key) as usize
        } else {
            partition(key, self.pending.len())
        }
    }

    /// The target places keys by hash slot (a Redis Cluster): commands whose keys span
    /// slots go through [`Self::cross_slot`].
    pub fn slotted(&self) -> bool {
        self.slotted
    }

    /// The record keys of `source`'s batches, one per writer; with `probe`, also those of up
    /// to [`record::PROBED_WRITERS`] writers (an earlier run may have had more).
    pub fn record_keys(&self, prefix: &str, source: &str, probe: bool) -> Vec<String> {
        let n = if probe && !self.slotted {
            self.writers().max(record::PROBED_WRITERS)
        } else {
            self.writers()
        };
        (0..n)
            .map(|w| self.pool.record_key(prefix, source, w))
            .collect()
    }

    /// Writer `w`'s pending batch (and the one the next push opens) gets a record even on a
    /// cluster target: it continues a big key written in chunks, which is not replayable
    /// alone (its RPUSH would run twice after a broken connection).
    pub fn require_record(&mut self, w: usize) {
        self.pending[w].needs_transaction = true;
    }

    /// Queue `op` for writer `w`; it covers stream offsets `(start, end]`. The batch is on the
    /// tracker's books from its first op on, so that the applied offset can never pass an op
    /// that is still waiting here.
    pub fn push(&mut self, w: usize, op: Op, start: u64, end: u64) -> Result<(), PipelineError> {
        let Some(p) = self.enter(w, start, end) else {
            return Ok(());
        };
        p.seal();
        let len = op.payload.len();
        p.bytes += len;
        p.commands += 1;
        p.needs_transaction |= !op.replayable;
        p.ops.push(op);
        self.pending_bytes += len;
        self.pending_commands += 1;
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
        let slotted = self.slotted;
        let Some(p) = self.enter(w, start, end) else {
            return Ok(());
        };
        p.seal_runs();
        if p.open_db != db {
            p.seal();
            p.open_db = db;
        }
        if p.open.is_empty() {
            // On a cluster target a batch holds one slot's keys: a few, in up to 16384
            // pending batches at once, so each grows as it needs instead.
            let want = if slotted {
                cmds.len() + 1024
            } else {
                BATCH_BYTES.max(cmds.len()) + 4096
            };
            p.open.reserve(want);
        }
        p.open.append(cmds);
        // A snapshot batch holds whole keys (a collection's DEL first): on a cluster target
        // it runs as one transaction without a record, and again whole after a broken
        // connection; a record per slot would only double its commands.
        p.needs_transaction |= !slotted;
        p.bytes += cmds.len();
        p.commands += cmds.count as usize;
        self.pending_bytes += cmds.len();
        self.pending_commands += cmds.count as usize;
        self.flush_if_full(w)
    }

    /// A plain string key (no expire time, no options) of the snapshot for writer `w`'s
    /// pending batch, in `db`: consecutive ones share one `MSET` (a cluster writer's batch
    /// holds one slot's keys, so that is legal there), which costs the target one command
    /// instead of one per key, and is encoded straight into the batch's buffer. Anything else
    /// pushed in between closes the `MSET` first, so the batch keeps the order of its
    /// commands.
    pub fn push_string(
        &mut self,
        w: usize,
        db: u32,
        key: &[u8],
        value: &[u8],
        offset: u64,
    ) -> Result<(), PipelineError> {
        self.push_to_run(w, (db, key, value), offset, offset, false)
    }

    /// A plain `SET key value` of the stream (no option: the same effect as `MSET key
    /// value`), covering stream offsets `(start, end]`: consecutive ones for writer `w` in one
    /// database share one `MSET`, as the snapshot's strings do. In the relay's catch-up
    /// about a quarter of the commands are such `SET`s, and a target spends about a fifth
    /// less CPU on a key in an `MSET` than on a `SET` of its own (docs/performance.md).
    /// The run is replayable like the `SET`s it holds, and counts as that many commands.
    pub fn push_stream_set(
        &mut self,
        w: usize,
        db: u32,
        key: &[u8],
        value: &[u8],
        start: u64,
        end: u64,
    ) -> Result<(), PipelineError> {
        self.push_to_run(w, (db, key, value), start, end, true)
    }

    fn push_to_run(
        &mut self,
        w: usize,
        (db, key, value): (u32, &[u8], &[u8]),
        start: u64,
        end: u64,
        stream: bool,
    ) -> Result<(), PipelineError> {
        let slotted = self.slotted;
        let Some(p) = self.enter(w, start, end) else {
            return Ok(());
        };
        let other_run = p.strings.keys > 0 && (p.strings.db != db || p.strings.stream != stream);
        if !p.open.is_empty() || p.lists.count > 0 || other_run {
            p.seal();
        }
        // As in push_commands: a cluster batch grows as it needs, a standalone one is big.
        let slack = if slotted { 1024 } else { BATCH_BYTES + 4096 };
        let added = p.strings.push(db, key, value, slack, stream);
        // A snapshot batch runs whole (see push_commands); the stream's SETs are replayable.
        p.needs_transaction |= !slotted && !stream;
        p.bytes += added;
        p.commands += 1;
        self.pending_bytes += added;
        self.pending_commands += 1;
        self.flush_if_full(w)
    }

    /// A push of the stream (`LPUSH` or `RPUSH`: `name`, from [`ListRun::push_name`]) of
    /// `elements` to `key` in `db`, covering `(start, end]`: consecutive pushes of one
    /// direction to one list for writer `w` go as one variadic push (a queue's producers
    /// write such runs; redis-benchmark's LPUSH test is one). Counted as that many commands;
    /// the target answers, and fails (WRONGTYPE), once for the run.
    #[allow(clippy::too_many_arguments)]
    pub fn push_stream_list(
        &mut self,
        w: usize,
        db: u32,
        name: &'static [u8],
        key: &Bytes,
        elements: &[Bytes],
        (start, end): (u64, u64),
    ) -> Result<(), PipelineError> {
        let Some(p) = self.enter(w, start, end) else {
            return Ok(());
        };
        if !p.lists.continues(db, name, key) {
            p.seal();
        }
        let added = p.lists.push(db, name, key, elements);
        p.needs_transaction = true;
        p.bytes += added;
        p.commands += 1;
        self.pending_bytes += added;
        self.pending_commands += 1;
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
            self.oldest_pending = Some(self.oldest_pending.map_or(start, |o| o.min(start)));
        }
        if !p.dirty {
            p.dirty = true;
            self.dirty.push(w);
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
        if self.slotted
            && (self.pending_bytes >= SLOTTED_PENDING_BYTES
                || self.pending_commands >= SLOTTED_PENDING_COMMANDS)
        {
            if self.oldest_pending == Some(self.pending[w].end) {
                self.flush_larger()?;
            } else {
                self.flush()?;
            }
        }
        Ok(())
    }

    /// Hand over the pending batches at least as large as the average (in bytes or in
    /// commands, whichever reached its cap), keep the others: they go with the next flush, larger. Flushing everything
    /// at the cap makes a snapshot's batches about 2 keys each (16 MiB over 16384 slots), and
    /// each batch costs the relay and the target about as much as a few keys; this about
    /// doubles their size within the same memory bound. Only while every pending op is at one
    /// offset (a snapshot): a batch kept back then holds back nothing of the applied offset.
    fn flush_larger(&mut self) -> Result<(), PipelineError> {
        let dirty = std::mem::take(&mut self.dirty);
        let n = dirty.len().max(1);
        // Measured in what reached its cap.
        let by_bytes = self.pending_bytes >= SLOTTED_PENDING_BYTES;
        let (avg_bytes, avg_commands) = (self.pending_bytes / n, self.pending_commands / n);
        let mut kept = Vec::with_capacity(dirty.len());
        for w in dirty {
            let p = &mut self.pending[w];
            // Not dirty: flushed since it was listed, or listed twice and seen already.
            if !p.dirty {
                continue;
            }
            if (by_bytes && p.bytes >= avg_bytes) || (!by_bytes && p.commands >= avg_commands) {
                self.flush_writer(w)?;
            } else {
                p.dirty = false;
                kept.push(w);
            }
        }
        for &w in &kept {
            self.pending[w].dirty = true;
        }
        self.dirty = kept;
        Ok(())
    }

    /// Bytes up to `end` needed no work (PING, REPLCONF, SELECT): count them as applied once
    /// everything before them is.
    pub fn advance(&mut self, end: u64) {
        self.tracker.extend(end);
    }

    fn flush_writer(&mut self, w: usize) -> Result<(), PipelineError> {
        let p = &mut self.pending[w];
        p.dirty = false;
        if p.is_empty() {
            return Ok(());
        }
        p.seal();
        let ops = std::mem::take(&mut p.ops);
        let transaction = std::mem::take(&mut p.needs_transaction);
        self.pending_bytes = self.pending_bytes.saturating_sub(p.bytes);
        self.pending_commands = self.pending_commands.saturating_sub(p.commands);
        p.bytes = 0;
        p.commands = 0;
        let (start, end) = (p.start, p.end);
        let bookkeeping = self.bookkeeping(w, end, transaction);
        let batch = Batch {
            tracker: self.tracker.clone(),
            ops,
            start,
            end,
            bookkeeping,
        };
        Ok(self.pool.send(w, batch)?)
    }

    /// The record of writer `w`'s next batch, ending at `end`, when exactly-once is on. On a
    /// cluster target a batch of replayable commands goes without one: a record per slot
    /// would double the commands, and running such a batch again after a restart (from the
    /// checkpoint or the slot's last record, whichever is later) changes nothing, since what
    /// follows it runs again too (`pipeline::replayable`).
    fn bookkeeping(&mut self, w: usize, end: u64, transaction: bool) -> Option<Bookkeeping> {
        let eo = self.exactly_once.as_ref()?;
        if self.slotted && !transaction {
            return None;
        }
        self.seq[w] += 1;
        metrics::counter!(
            "redis_relay_batches_total",
            "source" => self.tracker.name.clone(),
            "transaction" => if transaction { "yes" } else { "no" }
        )
        .increment(1);
        let record = Record {
            replid: eo.replid.clone(),
            end,
            run: run_id().to_string(),
            seq: self.seq[w],
        };
        Some(Bookkeeping {
            key: self.pool.record_key(&eo.prefix, &eo.source, w).into(),
            value: record.encode(),
            transaction,
        })
    }

    /// Hand every pending batch to its writer.
    pub fn flush(&mut self) -> Result<(), PipelineError> {
        for w in std::mem::take(&mut self.dirty) {
            self.flush_writer(w)?;
        }
        self.oldest_pending = None;
        Ok(())
    }

    /// Run keyless `commands` on every master of a cluster target (see
    /// [`Writers::every_master`]), between everything before and everything after them.
    pub fn every_master(
        &mut self,
        db: u32,
        commands: Vec<Vec<Bytes>>,
        end: u64,
    ) -> Result<(), PipelineError> {
        self.barrier()?;
        self.pool.every_master(db, commands)?;
        self.advance(end);
        Ok(())
    }

    /// Run `commands` (keys at `key_positions`, in several hash slots of a cluster target)
    /// as one [`CrossSlot`] unit covering stream offsets up to `end`: everything before it
    /// is acknowledged first, and it is applied before anything after it is sent. Each slot
    /// it touches gets its part with that slot's record; a part the target holds since
    /// before a restart is not written again.
    pub fn cross_slot(
        &mut self,
        db: u32,
        commands: Vec<Vec<Bytes>>,
        key_positions: Vec<Vec<usize>>,
        end: u64,
    ) -> Result<(), PipelineError> {
        self.barrier()?;
        let mut slots: Vec<u16> = commands
            .iter()
            .zip(&key_positions)
            .flat_map(|(c, ps)| ps.iter().filter_map(|&i| c.get(i)).map(|k| key_slot(k)))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        let parts = slots
            .into_iter()
            .map(|slot| SlotPart {
                slot,
                applied: end <= self.skip_upto[slot as usize],
                record: self.bookkeeping(slot as usize, end, true),
            })
            .collect();
        let (prefix, source, id) = match &self.exactly_once {
            Some(eo) => (
                eo.prefix.clone(),
                eo.source.clone(),
                format!("{} {end}", eo.replid),
            ),
            None => (String::new(), self.tracker.name.clone(), format!("? {end}")),
        };
        self.pool.cross_slot(CrossSlot {
            db,
            commands,
            key_positions,
            end,
            prefix,
            source,
            id,
            parts,
        })?;
        self.advance(end);
        Ok(())
    }

    /// `op` alone on writer 0, between everything before and everything after it (a command
    /// whose keys are unknown or span writers).
    pub fn alone(&mut self, op: Op, start: u64, end: u64) -> Result<(), PipelineError> {
        self.barrier()?;
        self.push(0, op, start, end)?;
        self.barrier()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resp::client::ClientError;
    use crate::target::writer::WriterFailure;
    use parking_lot::Mutex;

    /// A slotted target that only keeps what it is sent.
    #[derive(Default)]
    struct Recorder {
        sent: Mutex<Vec<(usize, Batch)>>,
    }

    impl Writers for Recorder {
        fn writers(&self) -> usize {
            crate::target::cluster::SLOTS
        }
        fn send(&self, w: usize, batch: Batch) -> Result<(), PoolError> {
            self.sent.lock().push((w, batch));
            Ok(())
        }
        fn failure(&self) -> Option<WriterFailure> {
            None
        }
        fn read_db0(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ClientError> {
            Ok(vec![None; keys.len()])
        }
        fn slotted(&self) -> bool {
            true
        }
    }

    fn dispatcher() -> (Dispatcher, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let tracker = Arc::new(SourceTracker::new("s", 0, rec.writers(), 0));
        (Dispatcher::new(rec.clone(), tracker), rec)
    }

    fn commands(args: &[&[&[u8]]]) -> CommandBuf {
        let mut c = CommandBuf::new();
        for a in args {
            c.push(a);
        }
        c
    }

    /// One op as (db, payload, replies).
    type SentOp = (u32, Vec<u8>, u32);

    /// The batches sent, as (writer, ops).
    fn sent(rec: &Recorder) -> Vec<(usize, Vec<SentOp>)> {
        rec.sent
            .lock()
            .iter()
            .map(|(w, b)| {
                let ops = b.ops.iter();
                (
                    *w,
                    ops.map(|o| (o.db, o.payload.to_vec(), o.replies)).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn consecutive_strings_share_one_mset_and_order_is_kept() {
        let (mut d, rec) = dispatcher();
        d.push_string(7, 0, b"a", b"1", 5).unwrap();
        d.push_string(7, 0, b"b", b"22", 5).unwrap();
        // A SET with an option (or any other command) is not merged: it closes the MSET.
        let ex = commands(&[&[b"SET", b"c", b"3", b"EX", b"10"]]);
        d.push_commands(7, 0, &ex, 5, 5).unwrap();
        d.push_string(7, 0, b"a", b"4", 5).unwrap();
        d.flush().unwrap();
        let got = sent(&rec);
        assert_eq!(got.len(), 1, "one batch for the slot");
        let (w, ops) = &got[0];
        assert_eq!(*w, 7);
        let want: Vec<SentOp> = vec![
            (
                0,
                b"*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$2\r\n22\r\n".to_vec(),
                1,
            ),
            (
                0,
                b"*5\r\n$3\r\nSET\r\n$1\r\nc\r\n$1\r\n3\r\n$2\r\nEX\r\n$2\r\n10\r\n".to_vec(),
                1,
            ),
            // One key alone is a plain SET.
            (0, b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n4\r\n".to_vec(), 1),
        ];
        assert_eq!(ops, &want);
        assert_eq!(d.tracker.in_flight(), 1);
    }

    #[test]
    fn stream_sets_share_one_replayable_mset_that_counts_each() {
        let (mut d, rec) = dispatcher();
        d.set_exactly_once(Some(ExactlyOnce {
            prefix: "p:".into(),
            source: "s".into(),
            replid: "r".into(),
        }));
        // A snapshot key then the stream's SETs: two runs (the snapshot's is not replayable).
        d.push_string(3, 0, b"snap", b"0", 10).unwrap();
        d.push_stream_set(3, 0, b"a", b"1", 10, 20).unwrap();
        d.push_stream_set(3, 0, b"b", b"2", 20, 30).unwrap();
        d.push_stream_set(3, 0, b"c", b"3", 30, 40).unwrap();
        d.flush().unwrap();
        let batches = rec.sent.lock();
        assert_eq!(batches.len(), 1);
        let b = &batches[0].1;
        assert_eq!(
            (b.start, b.end),
            (10, 40),
            "the batch covers every SET's offsets"
        );
        let ops: Vec<(Vec<u8>, u32, bool)> = b
            .ops
            .iter()
            .map(|o| (o.payload.to_vec(), o.folded, o.replayable))
            .collect();
        assert_eq!(
            ops,
            vec![
                (b"*3\r\n$3\r\nSET\r\n$4\r\nsnap\r\n$1\r\n0\r\n".to_vec(), 0, false),
                (
                    b"*7\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n$1\r\nc\r\n$1\r\n3\r\n".to_vec(),
                    2,
                    true
                ),
            ]
        );
        assert_eq!(b.folded(), 2, "3 SETs answered by one reply");
    }

    #[test]
    fn pushes_to_one_list_share_one_variadic_push_until_something_else_comes() {
        let (mut d, rec) = dispatcher();
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let (q, r) = (b("q"), b("r"));
        d.push_stream_list(5, 0, b"LPUSH", &q, &[b("a")], (0, 10))
            .unwrap();
        d.push_stream_list(5, 0, b"LPUSH", &q, &[b("b"), b("c")], (10, 20))
            .unwrap();
        // Another list, then a SET: each closes the run before it.
        d.push_stream_list(5, 0, b"LPUSH", &r, &[b("x")], (20, 30))
            .unwrap();
        d.push_stream_set(5, 0, b"k", b"v", 30, 40).unwrap();
        d.push_stream_list(5, 0, b"LPUSH", &q, &[b("d")], (40, 50))
            .unwrap();
        d.push_stream_list(5, 0, b"RPUSH", &q, &[b("e")], (50, 60))
            .unwrap();
        d.flush().unwrap();
        let got = sent(&rec);
        assert_eq!(got.len(), 1);
        let ops: Vec<String> = got[0]
            .1
            .iter()
            .map(|(_, p, _)| String::from_utf8_lossy(p).replace("\r\n", " "))
            .collect();
        assert_eq!(
            ops,
            vec![
                "*5 $5 LPUSH $1 q $1 a $1 b $1 c ",
                "*3 $5 LPUSH $1 r $1 x ",
                "*3 $3 SET $1 k $1 v ",
                "*3 $5 LPUSH $1 q $1 d ",
                "*3 $5 RPUSH $1 q $1 e ",
            ]
        );
        let batch = &rec.sent.lock()[0].1;
        assert_eq!(batch.folded(), 1, "two LPUSHes answered by one reply");
        assert_eq!((batch.start, batch.end), (0, 60));
    }

    #[test]
    fn strings_of_another_database_or_writer_start_another_mset() {
        let (mut d, rec) = dispatcher();
        d.push_string(1, 0, b"a", b"1", 5).unwrap();
        d.push_string(1, 2, b"b", b"2", 5).unwrap();
        d.push_string(2, 0, b"c", b"3", 5).unwrap();
        d.flush().unwrap();
        let got = sent(&rec);
        let set = |k: &[u8], v: &[u8]| {
            let mut c = CommandBuf::new();
            c.push(&[&b"SET"[..], k, v]);
            c.payload.to_vec()
        };
        assert_eq!(
            got,
            vec![
                (1, vec![(0, set(b"a", b"1"), 1), (2, set(b"b", b"2"), 1)]),
                (2, vec![(0, set(b"c", b"3"), 1)]),
            ]
        );
    }

    #[test]
    fn a_run_counts_its_keys_toward_the_batch_limit() {
        let (mut d, rec) = dispatcher();
        for i in 0..BATCH_OPS {
            d.push_string(3, 0, format!("k{i}").as_bytes(), b"v", 5)
                .unwrap();
        }
        // Full at BATCH_OPS keys: sent as one MSET without a flush.
        let got = sent(&rec);
        assert_eq!(got.len(), 1);
        let (_, ops) = &got[0];
        assert_eq!(ops.len(), 1);
        let head = format!("*{}\r\n$4\r\nMSET\r\n", 1 + 2 * BATCH_OPS);
        assert!(ops[0].1.starts_with(head.as_bytes()));
        let mut framer = crate::resp::CommandFramer::new();
        framer.push(&ops[0].1);
        let frame = framer.next_frame().unwrap().expect("one whole command");
        assert_eq!(frame.args.len(), 1 + 2 * BATCH_OPS);
        assert_eq!(&frame.args[2 * BATCH_OPS - 1][..], b"k511");
        assert!(framer.next_frame().unwrap().is_none());
        assert_eq!(framer.buffered(), 0);
    }

    #[test]
    fn a_snapshot_at_the_cap_hands_over_its_larger_batches_only() {
        let (mut d, rec) = dispatcher();
        let big = vec![b'x'; 8 << 10];
        // Writers 0..1023 hold a small key each, 1024.. a big one, until the cap.
        for w in 0..1024 {
            d.push_string(w, 0, b"k", b"v", 5).unwrap();
        }
        let mut w = 1024;
        while rec.sent.lock().is_empty() {
            d.push_string(w, 0, b"k", &big, 5).unwrap();
            w += 1;
        }
        let sent: Vec<usize> = rec.sent.lock().iter().map(|(w, _)| *w).collect();
        assert!(sent.iter().all(|&w| w >= 1024), "small batches kept back");
        assert_eq!(sent.len(), w - 1024, "every big batch handed over");
        assert!(d.pending_bytes < SLOTTED_PENDING_BYTES / 2);
        // Nothing is lost or sent twice: the rest goes with the next flush.
        d.flush().unwrap();
        let mut all: Vec<usize> = rec.sent.lock().iter().map(|(w, _)| *w).collect();
        all.sort_unstable();
        assert_eq!(all, (0..w).collect::<Vec<_>>());
        assert_eq!(d.tracker.in_flight(), w as u64);
    }

    #[test]
    fn a_stream_at_the_cap_hands_over_everything() {
        let (mut d, rec) = dispatcher();
        let big = vec![b'x'; 8 << 10];
        let mut off = 0;
        for w in 0..1024 {
            d.push_string(w, 0, b"k", b"v", 0).unwrap();
        }
        let mut w = 1024;
        while rec.sent.lock().is_empty() {
            let cmds = commands(&[&[b"SET", b"k", &big]]);
            d.push_commands(w, 0, &cmds, off, off + 10).unwrap();
            off += 10;
            w += 1;
        }
        // Offsets move on: a batch kept back would hold back the applied offset.
        assert_eq!(rec.sent.lock().len(), w);
        assert_eq!(d.pending_bytes, 0);
    }
}
