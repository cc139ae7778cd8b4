//! Running a [`CrossSlot`] unit (commands whose keys span hash slots) on a Redis Cluster so
//! that the cluster ends exactly in the state the source had after them, each slot written
//! once, also when the relay dies half-way.
//!
//! No cluster node can run RENAME `a` `b` when `a` and `b` live in different slots, and a
//! transaction may only touch one slot. So the unit is computed elsewhere and its results
//! copied, in three durable steps:
//!
//! 1. **Compute** ([`prepare`]): every key's value before the unit (DUMP and PTTL, from its
//!    own slot) is restored into a scratch key, and the unit's commands run on the scratch
//!    keys, all in one transaction in the scratch slot T, which also sets the journal to the
//!    unit's id. Scratch keys and journal share the hash tag `{<prefix>xslot:<source>}`, so
//!    they all live in T. Either the scratch keys hold the results and the journal says so,
//!    or nothing changed.
//! 2. **Write back**: for each slot part not yet applied, the scratch copies of that slot's
//!    keys are restored over the real keys (or the keys deleted when their copy is absent)
//!    in one transaction with the slot's record: the part and its record land together.
//! 3. **Clean up**: the scratch keys and the journal are deleted.
//!
//! A run that finds the journal already holding the unit's id skips step 1: the results are
//! those computed before the crash, not a second application (an INCR is not doubled). Parts
//! whose record already covers the unit (`applied`) are not written again. Every transaction
//! here restores absolute values, so resending one whose reply was lost changes nothing.
//! Without records (exactly-once off) no part is ever known as applied: a crash during the
//! write-back is still repaired from the journal, but a unit run again after its clean-up
//! is applied twice, like any command replayed without exactly-once.
//!
//! Values are held in memory (DUMP payloads of every key of the unit): units are rare, and
//! a key too large for memory would not fit a single RESTORE either.

use bytes::Bytes;

use super::client::{describe, ClusterClient, ClusterError};
use super::slot::key_slot;
use crate::batch::{CrossSlot, SlotPart};
use crate::resp::Reply;

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrossSlotOutcome {
    /// Slot parts written (with their records).
    pub parts_written: usize,
    /// Slot parts skipped because the target already held them.
    pub parts_skipped: usize,
    /// The unit's own commands that answered an error inside the transaction (as they did,
    /// or would have, on the source: WRONGTYPE and the like); the others still ran. 0 when
    /// `resumed`: the run that computed the results saw them.
    pub command_errors: usize,
    /// The results were found computed by an earlier, interrupted run (the journal).
    pub resumed: bool,
}

/// The names a unit works with.
struct Plan {
    /// The unit's distinct keys, in order of first appearance.
    keys: Vec<Bytes>,
    /// `scratch[i]` holds the copy of `keys[i]`.
    scratch: Vec<Bytes>,
    journal: Bytes,
    /// The slot of the journal and every scratch key.
    slot: u16,
    /// The unit's commands on the scratch keys, in their non-blocking forms, SELECT,
    /// MULTI and EXEC left out.
    commands: Vec<Vec<Bytes>>,
}

/// Commands of a source transaction that are not run on scratch: the unit's database is
/// fixed, and the unit runs in a transaction of its own.
const SKIPPED: [&[u8]; 3] = [b"SELECT", b"MULTI", b"EXEC"];

impl Plan {
    /// Name the scratch keys and rewrite the commands; fails when the relay's names would not
    /// share one slot (a prefix or source name with braces that break the hash tag).
    fn new(unit: &CrossSlot) -> Result<Plan, ClusterError> {
        let base = format!("{{{}xslot:{}}}", unit.prefix, unit.source);
        let journal = Bytes::from(format!("{base}:j"));
        let slot = key_slot(&journal);
        let mut keys: Vec<Bytes> = Vec::new();
        let mut commands = Vec::new();
        for (i, c) in unit.commands.iter().enumerate() {
            let name = c
                .first()
                .map(|n| n.to_ascii_uppercase())
                .unwrap_or_default();
            if SKIPPED.contains(&name.as_slice()) {
                continue;
            }
            let mut args = c.clone();
            for &p in unit.key_positions.get(i).map(Vec::as_slice).unwrap_or(&[]) {
                let Some(key) = c.get(p) else { continue };
                let at = match keys.iter().position(|k| k == key) {
                    Some(at) => at,
                    None => {
                        keys.push(key.clone());
                        keys.len() - 1
                    }
                };
                args[p] = Bytes::from(format!("{base}:k{at}"));
            }
            commands.push(non_blocking(args));
        }
        let scratch: Vec<Bytes> = (0..keys.len())
            .map(|i| Bytes::from(format!("{base}:k{i}")))
            .collect();
        if let Some(bad) = scratch.iter().find(|k| key_slot(k) != slot) {
            return Err(ClusterError::Invalid(format!(
                "scratch key {} is not in the journal's slot {slot}: the key prefix {:?} or the source name {:?} breaks the hash tag",
                String::from_utf8_lossy(bad),
                unit.prefix,
                unit.source
            )));
        }
        Ok(Plan {
            keys,
            scratch,
            journal,
            slot,
            commands,
        })
    }

    /// Indices (in `keys`) of the keys in `slot`.
    fn keys_in(&self, slot: u16) -> Vec<usize> {
        (0..self.keys.len())
            .filter(|&i| key_slot(&self.keys[i]) == slot)
            .collect()
    }
}

/// The non-blocking form of a blocking command (a source's stream may carry them as they
/// were called): BLMOVE and BRPOPLPUSH without their trailing timeout, BLMPOP and BZMPOP
/// without their leading one. Key positions are replaced before this, so the shift of
/// BLMPOP's arguments does not matter.
fn non_blocking(mut args: Vec<Bytes>) -> Vec<Bytes> {
    let name = args
        .first()
        .map(|n| n.to_ascii_uppercase())
        .unwrap_or_default();
    let (new, drop_at): (&'static [u8], usize) = match name.as_slice() {
        b"BLMOVE" => (b"LMOVE", args.len() - 1),
        b"BRPOPLPUSH" => (b"RPOPLPUSH", args.len() - 1),
        b"BLMPOP" => (b"LMPOP", 1),
        b"BZMPOP" => (b"ZMPOP", 1),
        _ => return args,
    };
    if args.len() > drop_at && drop_at > 0 {
        args.remove(drop_at);
    }
    args[0] = Bytes::from_static(new);
    args
}

fn cmd(args: &[&[u8]]) -> Vec<Bytes> {
    args.iter().map(|a| Bytes::copy_from_slice(a)).collect()
}

/// Run `unit` to the end (module doc): compute on scratch unless the journal says it was,
/// write back every part not applied, clean up.
pub fn run(client: &mut ClusterClient, unit: &CrossSlot) -> Result<CrossSlotOutcome, ClusterError> {
    let plan = Plan::new(unit)?;
    if unit.parts.iter().all(|p| p.applied) {
        // Written completely before; only the scratch keys may be left (a crash before the
        // clean-up), and only when the journal is still this unit's.
        if journal_is(client, unit, &plan)? {
            clean_up(client, unit, &plan)?;
        }
        return Ok(CrossSlotOutcome {
            parts_skipped: unit.parts.len(),
            ..CrossSlotOutcome::default()
        });
    }
    let mut outcome = compute(client, unit, &plan)?;
    for part in &unit.parts {
        if part.applied {
            outcome.parts_skipped += 1;
        } else {
            write_part(client, unit, &plan, part)?;
            outcome.parts_written += 1;
        }
    }
    clean_up(client, unit, &plan)?;
    Ok(outcome)
}

/// Steps 1 and 2 only: make the scratch keys hold the unit's results and the journal its
/// id (nothing when it already does). [`run`] calls it first; on its own it leaves the
/// cluster as a crash right after the computation would, which is how the tests show that
/// a second run writes each part once.
pub fn prepare(
    client: &mut ClusterClient,
    unit: &CrossSlot,
) -> Result<CrossSlotOutcome, ClusterError> {
    let plan = Plan::new(unit)?;
    compute(client, unit, &plan)
}

/// The journal holds this unit's id.
fn journal_is(
    client: &mut ClusterClient,
    unit: &CrossSlot,
    plan: &Plan,
) -> Result<bool, ClusterError> {
    let get = cmd(&[b"GET", &plan.journal]);
    let reply = client
        .call_in_slot(plan.slot, unit.db, std::slice::from_ref(&get))?
        .pop();
    Ok(matches!(reply, Some(Reply::Bulk(Some(v))) if v == unit.id.as_bytes()))
}

/// Step 1, unless the journal says it was done.
fn compute(
    client: &mut ClusterClient,
    unit: &CrossSlot,
    plan: &Plan,
) -> Result<CrossSlotOutcome, ClusterError> {
    if journal_is(client, unit, plan)? {
        return Ok(CrossSlotOutcome {
            resumed: true,
            ..CrossSlotOutcome::default()
        });
    }
    if unit.parts.iter().any(|p| p.applied) {
        // Some slots hold the unit's results but no computation is recorded: recomputing
        // from keys already written would apply the unit twice there.
        return Err(ClusterError::Invalid(format!(
            "cross-slot unit {:?} ({}): some slots already hold it but its journal {} does not name it; cannot recompute it safely",
            unit.id,
            describe(&unit.commands),
            String::from_utf8_lossy(&plan.journal)
        )));
    }
    let before = dump_keys(client, unit.db, &plan.keys)?;
    let mut tx: Vec<Vec<Bytes>> = Vec::new();
    let mut del = vec![Bytes::from_static(b"DEL")];
    del.extend(plan.scratch.iter().cloned());
    tx.push(del);
    for (i, state) in before.iter().enumerate() {
        if let Some((dump, ttl)) = state {
            tx.push(restore(&plan.scratch[i], *ttl, dump, false));
        }
    }
    let first_unit = tx.len();
    tx.extend(plan.commands.iter().cloned());
    tx.push(vec![
        Bytes::from_static(b"SET"),
        plan.journal.clone(),
        Bytes::from(unit.id.clone()),
    ]);
    let replies = client.transaction(plan.slot, unit.db, &tx)?;
    let mut errors = 0;
    for (i, r) in replies.iter().enumerate() {
        if let Reply::Error(e) = r {
            if i >= first_unit && i < first_unit + plan.commands.len() {
                errors += 1;
                continue;
            }
            return Err(refused(client, plan.slot, &tx[i], e));
        }
    }
    Ok(CrossSlotOutcome {
        command_errors: errors,
        ..CrossSlotOutcome::default()
    })
}

fn refused(client: &ClusterClient, slot: u16, command: &[Bytes], reply: &[u8]) -> ClusterError {
    ClusterError::Refused {
        node: client
            .map()
            .master_for(slot)
            .map(|n| n.addr())
            .unwrap_or_default(),
        slot: Some(slot),
        command: describe(&[command.to_vec()]),
        reply: String::from_utf8_lossy(reply).into_owned(),
    }
}

/// `RESTORE key ttl dump [REPLACE]`.
fn restore(key: &Bytes, ttl: u64, dump: &Bytes, replace: bool) -> Vec<Bytes> {
    let mut c = vec![
        Bytes::from_static(b"RESTORE"),
        key.clone(),
        Bytes::from(ttl.to_string()),
        dump.clone(),
    ];
    if replace {
        c.push(Bytes::from_static(b"REPLACE"));
    }
    c
}

/// DUMP and PTTL of each key, read from its own slot (pipelined per slot): `None` for a
/// key that does not exist, else its serialized value and its time to live in ms for
/// RESTORE (0: none).
fn dump_keys(
    client: &mut ClusterClient,
    db: u32,
    keys: &[Bytes],
) -> Result<Vec<Option<(Bytes, u64)>>, ClusterError> {
    let mut out = vec![None; keys.len()];
    let mut slots: Vec<u16> = keys.iter().map(|k| key_slot(k)).collect();
    slots.sort_unstable();
    slots.dedup();
    for slot in slots {
        let idx: Vec<usize> = (0..keys.len())
            .filter(|&i| key_slot(&keys[i]) == slot)
            .collect();
        let mut commands = Vec::new();
        for &i in &idx {
            commands.push(cmd(&[b"DUMP", &keys[i]]));
            commands.push(cmd(&[b"PTTL", &keys[i]]));
        }
        let replies = client.call_in_slot(slot, db, &commands)?;
        for (n, &i) in idx.iter().enumerate() {
            let (dump, pttl) = (replies.get(2 * n), replies.get(2 * n + 1));
            out[i] = key_state(dump, pttl).map_err(|reply| ClusterError::Unexpected {
                node: client
                    .map()
                    .master_for(slot)
                    .map(|n| n.addr())
                    .unwrap_or_default(),
                slot: Some(slot),
                command: describe(&commands[2 * n..2 * n + 2]),
                reply,
            })?;
        }
    }
    Ok(out)
}

/// A key's DUMP and PTTL replies as its state (see [`dump_keys`]).
fn key_state(dump: Option<&Reply>, pttl: Option<&Reply>) -> Result<Option<(Bytes, u64)>, String> {
    match (dump, pttl) {
        (Some(Reply::Bulk(None)), _) => Ok(None),
        (Some(Reply::Bulk(Some(d))), Some(Reply::Integer(t))) => Ok(match *t {
            // Expired between the two commands.
            -2 => None,
            -1 => Some((d.clone(), 0)),
            // Expires within the millisecond: 0 would mean "no expiry" to RESTORE.
            t if t >= 0 => Some((d.clone(), (t as u64).max(1))),
            _ => return Err(format!("PTTL answered {t}")),
        }),
        other => Err(format!("{other:?}")),
    }
}

/// Step 2 for one part: the scratch copies of the part's keys over the keys, with the
/// slot's record, in one transaction in that slot.
fn write_part(
    client: &mut ClusterClient,
    unit: &CrossSlot,
    plan: &Plan,
    part: &SlotPart,
) -> Result<(), ClusterError> {
    let idx = plan.keys_in(part.slot);
    let scratch: Vec<Bytes> = idx.iter().map(|&i| plan.scratch[i].clone()).collect();
    let results = dump_keys_in(client, unit.db, plan.slot, &scratch)?;
    let mut tx = Vec::new();
    for (&i, state) in idx.iter().zip(&results) {
        tx.push(match state {
            Some((dump, ttl)) => restore(&plan.keys[i], *ttl, dump, true),
            None => cmd(&[b"DEL", &plan.keys[i]]),
        });
    }
    if let Some(record) = &part.record {
        if unit.db != 0 {
            // Records live in database 0.
            tx.push(cmd(&[b"SELECT", b"0"]));
        }
        tx.push(cmd(&[b"SET", &record.key, &record.value]));
    }
    if tx.is_empty() {
        return Ok(());
    }
    let replies = client.transaction(part.slot, unit.db, &tx)?;
    for (c, r) in tx.iter().zip(&replies) {
        if let Reply::Error(e) = r {
            return Err(refused(client, part.slot, c, e));
        }
    }
    Ok(())
}

/// [`dump_keys`] for keys known to share `slot` (the scratch keys).
fn dump_keys_in(
    client: &mut ClusterClient,
    db: u32,
    slot: u16,
    keys: &[Bytes],
) -> Result<Vec<Option<(Bytes, u64)>>, ClusterError> {
    if keys.iter().any(|k| key_slot(k) != slot) {
        return Err(ClusterError::Invalid(format!(
            "scratch keys {} are not all in slot {slot}",
            describe(&[keys.to_vec()])
        )));
    }
    dump_keys(client, db, keys)
}

/// Step 3: the scratch keys and the journal deleted.
fn clean_up(client: &mut ClusterClient, unit: &CrossSlot, plan: &Plan) -> Result<(), ClusterError> {
    let mut del = vec![Bytes::from_static(b"DEL")];
    del.extend(plan.scratch.iter().cloned());
    del.push(plan.journal.clone());
    let replies = client.call_in_slot(plan.slot, unit.db, std::slice::from_ref(&del))?;
    match replies.first() {
        Some(Reply::Error(e)) => Err(refused(client, plan.slot, &del, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    fn unit(commands: Vec<Vec<&str>>, keys: Vec<Vec<usize>>) -> CrossSlot {
        CrossSlot {
            db: 0,
            commands: commands
                .into_iter()
                .map(|c| c.into_iter().map(b).collect())
                .collect(),
            key_positions: keys,
            end: 10,
            prefix: "rr:".into(),
            source: "s1".into(),
            id: "abc 10".into(),
            parts: Vec::new(),
        }
    }

    #[test]
    fn plan_names_scratch_keys_in_one_slot_and_rewrites_commands() {
        let u = unit(
            vec![
                vec!["SELECT", "0"],
                vec!["RENAME", "a", "b"],
                vec!["BLMOVE", "b", "c", "LEFT", "RIGHT", "5"],
                vec!["BRPOPLPUSH", "c", "a", "0"],
            ],
            vec![vec![], vec![1, 2], vec![1, 2], vec![1, 2]],
        );
        let p = Plan::new(&u).unwrap();
        assert_eq!(p.keys, vec![b("a"), b("b"), b("c")]);
        assert_eq!(p.journal, b("{rr:xslot:s1}:j"));
        assert_eq!(p.scratch[2], b("{rr:xslot:s1}:k2"));
        assert!(p.scratch.iter().all(|k| key_slot(k) == p.slot));
        let k = |i: usize| format!("{{rr:xslot:s1}}:k{i}");
        let want: Vec<Vec<Bytes>> = vec![
            vec![b("RENAME"), b(&k(0)), b(&k(1))],
            vec![b("LMOVE"), b(&k(1)), b(&k(2)), b("LEFT"), b("RIGHT")],
            vec![b("RPOPLPUSH"), b(&k(2)), b(&k(0))],
        ];
        assert_eq!(p.commands, want);
        assert_eq!(
            non_blocking(vec![b("BLMPOP"), b("1"), b("1"), b("x"), b("LEFT")]),
            vec![b("LMPOP"), b("1"), b("x"), b("LEFT")]
        );
    }

    #[test]
    fn key_states_from_dump_and_pttl() {
        let d = Reply::Bulk(Some(b("x")));
        assert_eq!(key_state(Some(&Reply::Bulk(None)), None), Ok(None));
        assert_eq!(
            key_state(Some(&d), Some(&Reply::Integer(-1))),
            Ok(Some((b("x"), 0)))
        );
        assert_eq!(
            key_state(Some(&d), Some(&Reply::Integer(0))),
            Ok(Some((b("x"), 1)))
        );
        assert_eq!(key_state(Some(&d), Some(&Reply::Integer(-2))), Ok(None));
        assert!(key_state(Some(&Reply::Error(b("ERR"))), None).is_err());
        assert!(key_state(None, None).is_err());
    }
}
