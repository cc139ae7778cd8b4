//! Stream listpack nodes (t_stream.c layout).
//!
//! Each radix-tree node is keyed by a 128-bit big-endian master id and holds a listpack:
//!
//! ```text
//! master entry: count deleted num-fields field_1 .. field_N 0
//! each entry:   flags ms-delta seq-delta [num-fields field_1 value_1 ..] | [value_1 ..] lp-count
//! ```
//!
//! `flags` bit 0 = deleted (skipped), bit 1 = same fields as the master entry (only values
//! follow). Ids are deltas from the master id.

use super::elem::Elem;
use super::listpack::ListpackIter;
use super::model::{StreamEntry, StreamId};
use bytes::Bytes;

const FLAG_DELETED: i64 = 1;
const FLAG_SAMEFIELDS: i64 = 2;

/// Parse a 16-byte big-endian stream id (node keys, PEL entries).
pub fn id_from_be(b: &[u8]) -> Option<StreamId> {
    if b.len() != 16 {
        return None;
    }
    let mut ms = [0u8; 8];
    let mut seq = [0u8; 8];
    ms.copy_from_slice(&b[..8]);
    seq.copy_from_slice(&b[8..]);
    Some(StreamId {
        ms: u64::from_be_bytes(ms),
        seq: u64::from_be_bytes(seq),
    })
}

fn int(it: &mut ListpackIter, what: &str) -> Result<i64, String> {
    match it.next() {
        Some(Ok(e)) => e
            .as_int()
            .ok_or_else(|| format!("stream node: {what} is not an integer")),
        Some(Err(m)) => Err(m),
        None => Err(format!("stream node ends before {what}")),
    }
}

fn elem(it: &mut ListpackIter, what: &str) -> Result<Bytes, String> {
    match it.next() {
        Some(Ok(e)) => Ok(e.into_bytes()),
        Some(Err(m)) => Err(m),
        None => Err(format!("stream node ends before {what}")),
    }
}

fn count(v: i64, what: &str) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("stream node: negative {what}"))
}

/// Decode the live entries of one node, appending them to `out`. Returns the number of live
/// entries found.
pub fn decode_node(
    master: StreamId,
    blob: Bytes,
    out: &mut Vec<StreamEntry>,
) -> Result<usize, String> {
    let mut it = ListpackIter::new(blob)?;
    let live = count(int(&mut it, "master count")?, "count")?;
    let deleted = count(int(&mut it, "master deleted count")?, "deleted count")?;
    let nmaster = count(int(&mut it, "master field count")?, "field count")?;
    let mut master_fields = Vec::with_capacity(nmaster.min(1024));
    for _ in 0..nmaster {
        master_fields.push(elem(&mut it, "master field")?);
    }
    if int(&mut it, "master terminator")? != 0 {
        return Err("stream node: master entry terminator is not 0".into());
    }
    let total = live
        .checked_add(deleted)
        .ok_or("stream node: entry count overflow")?;
    let mut found_live = 0usize;
    for _ in 0..total {
        let flags = int(&mut it, "entry flags")?;
        let dms = int(&mut it, "entry id ms delta")?;
        let dseq = int(&mut it, "entry id seq delta")?;
        let id = StreamId {
            ms: master.ms.wrapping_add(dms as u64),
            seq: master.seq.wrapping_add(dseq as u64),
        };
        let deleted = flags & FLAG_DELETED != 0;
        let mut fields = Vec::new();
        let n_lp = if flags & FLAG_SAMEFIELDS != 0 {
            if !deleted {
                fields.reserve(nmaster);
            }
            for f in &master_fields {
                let v = elem(&mut it, "entry value")?;
                if !deleted {
                    fields.push((f.clone(), v));
                }
            }
            3 + nmaster
        } else {
            let nf = count(int(&mut it, "entry field count")?, "field count")?;
            if !deleted {
                fields.reserve(nf.min(1024));
            }
            for _ in 0..nf {
                let f = elem(&mut it, "entry field")?;
                let v = elem(&mut it, "entry value")?;
                if !deleted {
                    fields.push((f, v));
                }
            }
            nf.checked_mul(2)
                .and_then(|x| x.checked_add(4))
                .ok_or("stream node: field count overflow")?
        };
        let lp_count = int(&mut it, "entry lp-count")?;
        if usize::try_from(lp_count).ok() != Some(n_lp) {
            return Err(format!(
                "stream node: entry lp-count {lp_count} does not match {n_lp}"
            ));
        }
        if !deleted {
            found_live += 1;
            out.push(StreamEntry { id, fields });
        }
    }
    match it.next() {
        None => {}
        Some(Err(m)) => return Err(m),
        Some(Ok(_)) => return Err("stream node: elements after the last entry".into()),
    }
    if found_live != live {
        return Err(format!(
            "stream node: master count {live} but {found_live} live entries"
        ));
    }
    Ok(found_live)
}

/// Convenience: the element list of a listpack (used by tests and small decoders).
#[allow(dead_code)]
pub(crate) fn elems(blob: Bytes) -> Result<Vec<Elem>, String> {
    ListpackIter::new(blob)?.collect()
}
