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
use super::error::EncodingError;
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

fn int(it: &mut ListpackIter, what: &'static str) -> Result<i64, EncodingError> {
    match it.next() {
        Some(Ok(e)) => e.as_int().ok_or(EncodingError::StreamNotInteger { what }),
        Some(Err(m)) => Err(m),
        None => Err(EncodingError::StreamEndsBefore { what }),
    }
}

fn elem(it: &mut ListpackIter, what: &'static str) -> Result<Bytes, EncodingError> {
    match it.next() {
        Some(Ok(e)) => Ok(e.into_bytes()),
        Some(Err(m)) => Err(m),
        None => Err(EncodingError::StreamEndsBefore { what }),
    }
}

fn count(v: i64, what: &'static str) -> Result<usize, EncodingError> {
    usize::try_from(v).map_err(|_| EncodingError::StreamNegative { what })
}

/// Decode the live entries of one node, appending them to `out`. Returns the number of live
/// entries found.
pub fn decode_node(
    master: StreamId,
    blob: Bytes,
    out: &mut Vec<StreamEntry>,
) -> Result<usize, EncodingError> {
    let mut it = ListpackIter::new(blob)?;
    let (live, deleted, master_fields) = read_master_entry(&mut it)?;
    let total = live
        .checked_add(deleted)
        .ok_or(EncodingError::StreamCountOverflow)?;
    let mut found_live = 0usize;
    for _ in 0..total {
        if let Some(e) = decode_entry(&mut it, master, &master_fields)? {
            found_live += 1;
            out.push(e);
        }
    }
    match it.next() {
        None => {}
        Some(Err(m)) => return Err(m),
        Some(Ok(_)) => return Err(EncodingError::StreamTrailing),
    }
    if found_live != live {
        return Err(EncodingError::StreamLiveCount {
            master: live,
            found: found_live,
        });
    }
    Ok(found_live)
}

/// The master entry of a node: its live and deleted entry counts and the master fields.
fn read_master_entry(it: &mut ListpackIter) -> Result<(usize, usize, Vec<Bytes>), EncodingError> {
    let live = count(int(it, "master count")?, "count")?;
    let deleted = count(int(it, "master deleted count")?, "deleted count")?;
    let nmaster = count(int(it, "master field count")?, "field count")?;
    let mut master_fields = Vec::with_capacity(nmaster.min(1024));
    for _ in 0..nmaster {
        master_fields.push(elem(it, "master field")?);
    }
    if int(it, "master terminator")? != 0 {
        return Err(EncodingError::StreamTerminator);
    }
    Ok((live, deleted, master_fields))
}

/// One entry of a node (flags, id deltas, its fields and values, lp-count): `None` when it
/// is deleted.
#[inline]
fn decode_entry(
    it: &mut ListpackIter,
    master: StreamId,
    master_fields: &[Bytes],
) -> Result<Option<StreamEntry>, EncodingError> {
    let flags = int(it, "entry flags")?;
    let dms = int(it, "entry id ms delta")?;
    let dseq = int(it, "entry id seq delta")?;
    let id = StreamId {
        ms: master.ms.wrapping_add(dms as u64),
        seq: master.seq.wrapping_add(dseq as u64),
    };
    let deleted = flags & FLAG_DELETED != 0;
    let mut fields = Vec::new();
    let n_lp = if flags & FLAG_SAMEFIELDS != 0 {
        read_master_field_values(it, master_fields, deleted, &mut fields)?
    } else {
        read_own_fields(it, deleted, &mut fields)?
    };
    let lp_count = int(it, "entry lp-count")?;
    if usize::try_from(lp_count).ok() != Some(n_lp) {
        return Err(EncodingError::StreamLpCount {
            lp_count,
            expected: n_lp,
        });
    }
    Ok(if deleted {
        None
    } else {
        Some(StreamEntry { id, fields })
    })
}

/// The values of an entry that has the master entry's fields (kept in `fields` unless it is
/// deleted); the entry's listpack element count.
#[inline]
fn read_master_field_values(
    it: &mut ListpackIter,
    master_fields: &[Bytes],
    deleted: bool,
    fields: &mut Vec<(Bytes, Bytes)>,
) -> Result<usize, EncodingError> {
    if !deleted {
        fields.reserve(master_fields.len());
    }
    for f in master_fields {
        let v = elem(it, "entry value")?;
        if !deleted {
            fields.push((f.clone(), v));
        }
    }
    Ok(3 + master_fields.len())
}

/// The fields and values of an entry that has its own (kept in `fields` unless it is
/// deleted); the entry's listpack element count.
#[inline]
fn read_own_fields(
    it: &mut ListpackIter,
    deleted: bool,
    fields: &mut Vec<(Bytes, Bytes)>,
) -> Result<usize, EncodingError> {
    let nf = count(int(it, "entry field count")?, "field count")?;
    if !deleted {
        fields.reserve(nf.min(1024));
    }
    for _ in 0..nf {
        let f = elem(it, "entry field")?;
        let v = elem(it, "entry value")?;
        if !deleted {
            fields.push((f, v));
        }
    }
    nf.checked_mul(2)
        .and_then(|x| x.checked_add(4))
        .ok_or(EncodingError::StreamFieldCountOverflow)
}

/// Convenience: the element list of a listpack (used by tests and small decoders).
#[allow(dead_code)]
pub(crate) fn elems(blob: Bytes) -> Result<Vec<Elem>, EncodingError> {
    ListpackIter::new(blob)?.collect()
}
