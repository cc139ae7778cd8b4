//! The shared vocabulary between the pipeline and the target: the unit of work that flows
//! from a source's dispatcher to the writers ([`Op`], [`Batch`]), the per-source offset
//! tracker the writers acknowledge to ([`offsets`]), and the exactly-once record a batch
//! leaves on the target ([`record`]).
//!
//! A dispatcher groups the [`Op`]s it routes to one writer into a [`Batch`], which is what
//! crosses the channel: one channel hand-off and one offset-tracking entry per batch, not per
//! command.
//!
//! Shared vocabulary: imports only `resp`. The pipeline fills batches, the target applies them
//! and acknowledges them through the tracker; neither needs the other's types for that.

use std::sync::Arc;

use bytes::Bytes;

pub mod offsets;
pub mod record;

pub use offsets::SourceTracker;
pub use record::Record;

/// One or more RESP-encoded commands that must run in `db`, in order, on one connection.
#[derive(Debug, Clone)]
pub struct Op {
    /// The database the commands run in; the writer sends SELECT when its connection is elsewhere.
    pub db: u32,
    /// The encoded commands (passed through from the master's stream where possible).
    pub payload: Bytes,
    /// How many replies the payload produces.
    pub replies: u32,
    /// The payload ends in another database than `db` (a MULTI block with SELECT inside):
    /// the writer must SELECT again before its next op.
    pub leaves_db_unknown: bool,
    /// The commands form one transaction (a MULTI ... EXEC of the master, without the MULTI
    /// and EXEC themselves): the writer runs them atomically.
    pub atomic: bool,
    /// Running the commands again after they ran changes nothing, provided what follows runs
    /// again too (see `pipeline::replayable`): a batch of such ops needs no transaction.
    pub replayable: bool,
    /// Commands of the source this op stands for beyond its replies: a run of the stream's
    /// plain `SET`s sent as one `MSET` answers once for all of them. Counted as applied with
    /// the op, so `redis_relay_commands_applied_total` counts the source's commands.
    pub folded: u32,
}

impl Op {
    /// Plain commands (not a transaction) that stay in `db`.
    pub fn new(db: u32, payload: Bytes, replies: u32) -> Op {
        Op {
            db,
            payload,
            replies,
            leaves_db_unknown: false,
            atomic: false,
            replayable: false,
            folded: 0,
        }
    }
}

/// The record that makes a batch exactly-once: `SET key value` in database 0, inside the
/// batch's own MULTI/EXEC, so the target holds the batch and its record, or neither.
#[derive(Debug, Clone)]
pub struct Bookkeeping {
    pub key: Bytes,
    pub value: Bytes,
    /// Run the batch and the record as one MULTI/EXEC. False when every op is replayable:
    /// the commands then go plainly, the record after them on the same connection.
    pub transaction: bool,
}

/// Ops of one source for one writer, covering the stream offsets `(start, end]`.
#[derive(Debug)]
pub struct Batch {
    pub tracker: Arc<SourceTracker>,
    pub ops: Vec<Op>,
    /// Stream offset before the first op (the snapshot's ops all carry the FULLRESYNC offset).
    pub start: u64,
    /// Stream offset after the last op.
    pub end: u64,
    /// Set for stream batches when exactly-once is on.
    pub bookkeeping: Option<Bookkeeping>,
}

/// Commands whose keys span hash slots of a Redis Cluster target: one unit the target runs
/// after everything before it is applied, so that it ends in the source's state (see
/// `target::cluster::cross_slot` for how, and docs/cluster-target.md's per-command guarantees).
///
/// A unit is exactly-once per slot: each slot it writes gets its part in one MULTI/EXEC with
/// that slot's record (`parts`), and a part the target already holds (`applied`) is not
/// written again, also when the unit runs a second time after a restart.
#[derive(Debug, Clone)]
pub struct CrossSlot {
    /// The database the commands run in (0 on a cluster without several databases).
    pub db: u32,
    /// The commands, in order, as argument vectors (a source's transaction has several).
    pub commands: Vec<Vec<Bytes>>,
    /// For each command, the indices of its key arguments in `commands[i]`.
    pub key_positions: Vec<Vec<usize>>,
    /// The stream offset after the unit (what its records say).
    pub end: u64,
    /// The relay's key prefix and the source's name: the unit's scratch keys and its journal
    /// are named from them (`<prefix>xslot:<source>:...`).
    pub prefix: String,
    pub source: String,
    /// Identifies this unit in the journal (the replid and `end`): a unit run again after a
    /// restart finds the results it computed before, and writes those.
    pub id: String,
    /// Every slot of every key of the unit, once each.
    pub parts: Vec<SlotPart>,
}

/// One slot a [`CrossSlot`] unit touches.
#[derive(Debug, Clone)]
pub struct SlotPart {
    pub slot: u16,
    /// The slot's record, written with the part (`None` when exactly-once is off).
    pub record: Option<Bookkeeping>,
    /// The target already holds this part (its record is at or past the unit's end).
    pub applied: bool,
}

impl Batch {
    /// The source's commands folded into the batch's ops beyond their replies (see
    /// [`Op::folded`]).
    pub fn folded(&self) -> u64 {
        self.ops.iter().map(|o| u64::from(o.folded)).sum()
    }

    pub fn payload_bytes(&self) -> usize {
        self.ops.iter().map(|o| o.payload.len()).sum()
    }
}
