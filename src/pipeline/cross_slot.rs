//! Commands that no single hash slot of a Redis Cluster target can run: their keys span
//! slots, or they have none. What each becomes, so that the cluster ends in the source's
//! state (docs/cluster-target.md lists the guarantee per command):
//!
//! - **split**: DEL, UNLINK and MSET are cut into one command per slot, each sent to that
//!   slot's writer like any other command (same end state; not atomic across slots, which no
//!   reader of the source could rely on after the fact either);
//! - **every-master**: FLUSHALL, FLUSHDB, SCRIPT and FUNCTION act on the node that receives
//!   them, so they go to every master;
//! - **rewrite**: everything else with keys in several slots (RENAME, the moves, the
//!   *STORE commands, BITOP, PFMERGE, COPY, MSETNX, scripts with declared keys, a source
//!   transaction spanning slots) runs as one [`crate::batch::CrossSlot`] unit: the target
//!   computes the source's result on scratch keys and writes each slot's part with that
//!   slot's record (`target::cluster::cross_slot`);
//! - **noop**: SWAPDB and MOVE between two databases mapped to the same target database
//!   change nothing there (the union of both is what the target holds);
//! - **barrier**: a keyless command of no known scope (an unknown command) is sent alone to
//!   writer 0, as on a standalone target.
//!
//! Every such command is counted in `redis_relay_cross_slot_total{command,handling}`.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

use super::dispatcher::Dispatcher;
use super::error::PipelineError;
use super::keys::key_indices;
use super::replayable::replayable;
use crate::batch::Op;

/// What became of a command (the `handling` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    Split,
    EveryMaster,
    Rewrite,
    Noop,
    Barrier,
    /// Keys all in one slot after all (a script's declared keys): sent to that slot's writer.
    OneSlot,
}

impl Handling {
    pub fn label(self) -> &'static str {
        match self {
            Handling::Split => "split",
            Handling::EveryMaster => "every-master",
            Handling::Rewrite => "rewrite",
            Handling::Noop => "noop",
            Handling::Barrier => "barrier",
            Handling::OneSlot => "one-slot",
        }
    }
}

/// Command names used as the `command` label; anything else is `other` (bounded labels).
const LABELED: &[&str] = &[
    "DEL",
    "UNLINK",
    "MSET",
    "MSETNX",
    "RENAME",
    "RENAMENX",
    "RPOPLPUSH",
    "BRPOPLPUSH",
    "LMOVE",
    "BLMOVE",
    "SMOVE",
    "SINTERSTORE",
    "SUNIONSTORE",
    "SDIFFSTORE",
    "ZUNIONSTORE",
    "ZINTERSTORE",
    "ZDIFFSTORE",
    "ZRANGESTORE",
    "GEOSEARCHSTORE",
    "GEORADIUS",
    "GEORADIUSBYMEMBER",
    "SORT",
    "BITOP",
    "PFMERGE",
    "COPY",
    "EVAL",
    "EVALSHA",
    "FCALL",
    "FLUSHALL",
    "FLUSHDB",
    "SCRIPT",
    "FUNCTION",
    "SWAPDB",
    "MOVE",
    "EXEC",
    "LMPOP",
    "ZMPOP",
    "BLMPOP",
    "BZMPOP",
];

fn count(up: &[u8], handling: Handling) {
    let name = std::str::from_utf8(up).unwrap_or("other");
    let command = LABELED
        .iter()
        .find(|c| **c == name)
        .map_or("other".to_string(), |c| c.to_ascii_lowercase());
    metrics::counter!("redis_relay_cross_slot_total", "command" => command, "handling" => handling.label())
        .increment(1);
}

fn encode(args: &[Bytes]) -> Bytes {
    let mut b = BytesMut::new();
    crate::resp::encode_command(&mut b, args);
    b.freeze()
}

/// Apply one command (upper-case name `up`, arguments `args`, encoded as `op`) whose keys
/// are not in one slot, covering stream offsets `(start, end]`.
pub fn command(
    up: &[u8],
    args: Vec<Bytes>,
    op: Op,
    start: u64,
    end: u64,
    d: &mut Dispatcher,
) -> Result<Handling, PipelineError> {
    let handling = match up {
        b"DEL" | b"UNLINK" | b"MSET" => split(up, &args, op.db, start, end, d)?,
        b"FLUSHALL" | b"FLUSHDB" | b"SCRIPT" | b"FUNCTION" => {
            d.every_master(op.db, vec![args], end)?;
            Handling::EveryMaster
        }
        b"SWAPDB" | b"MOVE" => same_db_move(up, &args, op, start, end, d)?,
        _ => by_keys(args, op, start, end, d)?,
    };
    count(up, handling);
    Ok(handling)
}

/// One command per slot, each with the keys (and values) of that slot, in their order.
fn split(
    up: &[u8],
    args: &[Bytes],
    db: u32,
    start: u64,
    end: u64,
    d: &mut Dispatcher,
) -> Result<Handling, PipelineError> {
    let step = if up == b"MSET" { 2 } else { 1 };
    let mut parts: BTreeMap<usize, Vec<Bytes>> = BTreeMap::new();
    for chunk in args[1..].chunks(step) {
        parts
            .entry(d.writer_for(&chunk[0]))
            .or_insert_with(|| vec![args[0].clone()])
            .extend(chunk.iter().cloned());
    }
    for (w, part) in parts {
        let mut op = Op::new(db, encode(&part), 1);
        op.replayable = replayable(up, &part);
        d.push(w, op, start, end)?;
    }
    Ok(Handling::Split)
}

/// SWAPDB of two databases, or MOVE to a database, that the database map sends to the
/// target database the command runs in: nothing changes on the target. Otherwise (a cluster
/// with several databases) MOVE goes to its key's slot; SWAPDB is refused by clusters.
fn same_db_move(
    up: &[u8],
    args: &[Bytes],
    op: Op,
    start: u64,
    end: u64,
    d: &mut Dispatcher,
) -> Result<Handling, PipelineError> {
    let db_at = |i: usize| -> Option<u32> { std::str::from_utf8(args.get(i)?).ok()?.parse().ok() };
    let same = match up {
        b"SWAPDB" => db_at(1).is_some() && db_at(1) == db_at(2),
        _ => db_at(2) == Some(op.db),
    };
    if same {
        d.advance(end);
        return Ok(Handling::Noop);
    }
    if up == b"MOVE" && args.len() == 3 {
        let w = d.writer_for(&args[1]);
        d.push(w, op, start, end)?;
        return Ok(Handling::OneSlot);
    }
    Err(PipelineError::CrossSlotUnsupported {
        command: String::from_utf8_lossy(up).into_owned(),
        offset: start,
        why: "SWAPDB is not allowed in cluster mode; map both databases to the same target database (--db-map)",
    })
}

/// A command with keys: to its slot's writer when they share one (a script's declared
/// keys), as a cross-slot unit when they do not, alone on writer 0 when it has none.
fn by_keys(
    args: Vec<Bytes>,
    op: Op,
    start: u64,
    end: u64,
    d: &mut Dispatcher,
) -> Result<Handling, PipelineError> {
    let Some(positions) = key_indices(&args) else {
        d.alone(op, start, end)?;
        return Ok(Handling::Barrier);
    };
    let mut lanes = positions.iter().map(|&i| d.writer_for(&args[i]));
    let Some(first) = lanes.next() else {
        d.alone(op, start, end)?;
        return Ok(Handling::Barrier);
    };
    if lanes.all(|w| w == first) {
        d.push(first, op, start, end)?;
        return Ok(Handling::OneSlot);
    }
    d.cross_slot(op.db, vec![args], vec![positions], end)?;
    Ok(Handling::Rewrite)
}

/// A source transaction (`commands`, each its arguments, SELECTs included) whose keys span
/// slots: one cross-slot unit, so it runs atomically on the scratch slot and each slot's
/// part is written once. Keyless commands other than SELECT cannot run there.
pub fn transaction(
    db: u32,
    commands: Vec<Vec<Bytes>>,
    start: u64,
    end: u64,
    d: &mut Dispatcher,
) -> Result<(), PipelineError> {
    let mut positions = Vec::with_capacity(commands.len());
    for c in &commands {
        let name = c
            .first()
            .map(|n| n.to_ascii_uppercase())
            .unwrap_or_default();
        match key_indices(c) {
            Some(p) => positions.push(p),
            None if name == b"SELECT" => positions.push(Vec::new()),
            None => {
                return Err(PipelineError::CrossSlotUnsupported {
                    command: format!("{} inside MULTI", String::from_utf8_lossy(&name)),
                    offset: start,
                    why: "a transaction spanning hash slots can only hold commands with known keys",
                })
            }
        }
    }
    d.cross_slot(db, commands, positions, end)?;
    count(b"EXEC", Handling::Rewrite);
    Ok(())
}
