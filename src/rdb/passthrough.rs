//! Delivering values without decoding them, for a consumer that only forwards their serialized
//! bytes (`RESTORE` into a target that reads this RDB version).
//!
//! Why: decoding costs an allocation and a copy per element (a 1,000,000-key snapshot holds
//! about 14 million of them), and `RESTORE` needs none of it, only [`Entry::raw`]. The walk
//! reads just the structure that finds the end of a value (string lengths, part counts), that
//! tells an empty collection (Redis drops those when it loads an RDB and `RESTORE` refuses
//! them), and that bounds the value's decoded size from above. A value that is, or could be,
//! bigger than `big_value_bytes` is decoded as usual, so the events are exactly those of a
//! decoding parse, except that a passed-through [`Entry`] holds [`Value::Undecoded`].
//!
//! What is not checked: the elements inside a passed-through value (a listpack's entries, a
//! score's digits). The bytes come from a master and the file's CRC64 covers them, which is
//! what a real replica relies on when it loads the same bytes.

use std::io::Read;

use super::collect::{Collector, Emit, Limits, ELEM_OVERHEAD};
use super::decode::{
    blob_prefix, blob_value, decode_part, empty_value, finish, layout, part_min_bytes,
    quicklist_container, read_value, string_value, Layout, QUICKLIST_PACKED, QUICKLIST_PLAIN,
    QUICKLIST_ZIPLIST,
};
use super::error::RdbError;
use super::model::types::*;
use super::model::*;
use super::reader::{RdbReader, StrHeader};

/// Upper bound of the decoded size (as the collector accounts it) of a blob of `len` bytes.
/// The densest encodings spend 2 bytes on an element of up to 6 characters (an intset's 16-bit
/// integer), which the collector counts as at most 16 + 6 bytes: 11 per blob byte (12 here).
fn blob_bound(len: u64) -> u64 {
    len.saturating_mul(12).saturating_add(ELEM_OVERHEAD as u64)
}

/// Size of the blob of an empty container of type `t`: a longer blob holds an element.
fn empty_blob_len(t: u8) -> u64 {
    match t {
        LIST_ZIPLIST | ZSET_ZIPLIST | HASH_ZIPLIST => 11,
        SET_INTSET => 8,
        HASH_ZIPMAP => 2,
        _ => 7, // listpack
    }
}

/// Decoded length of a string with header `h`.
fn str_len(h: StrHeader) -> u64 {
    match h {
        StrHeader::Raw(n) => n,
        StrHeader::Lzf { ulen, .. } => ulen,
        StrHeader::Int(v) => {
            let mut buf = [0u8; 20];
            super::reader::fmt_i64(v, &mut buf).len() as u64
        }
    }
}

/// Skip the body of a string with header `h`.
fn skip_body<R: Read>(r: &mut RdbReader<R>, h: StrHeader) -> Result<(), RdbError> {
    match h {
        StrHeader::Raw(n) => r.skip(n),
        StrHeader::Lzf { clen, .. } => r.skip(clen),
        StrHeader::Int(_) => Ok(()),
    }
}

/// Skip a whole string; its decoded length.
fn skip_str<R: Read>(r: &mut RdbReader<R>) -> Result<u64, RdbError> {
    let h = r.str_header()?;
    skip_body(r, h)?;
    Ok(str_len(h))
}

/// Read the value of type `t` (right after its key; the reader is recording it) and deliver
/// it undecoded when it is certainly not big, decoded otherwise.
pub(crate) fn read_value_undecoded<R: Read>(
    r: &mut RdbReader<R>,
    t: u8,
    meta: KeyMeta,
    lim: Limits,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    match layout(t) {
        Layout::String => {
            let at = r.position();
            let h = r.str_header()?;
            if str_len(h) > lim.big as u64 {
                return string_value(r, at, h, meta, lim, emit);
            }
            skip_body(r, h)?;
            deliver(r, meta, emit)
        }
        Layout::Blob => {
            blob_prefix(r, t)?;
            let at = r.position();
            let h = r.str_header()?;
            let len = match h {
                StrHeader::Int(_) => 0,
                _ => str_len(h),
            };
            if len <= empty_blob_len(t) || blob_bound(len) > lim.big as u64 {
                let blob = r.string_body(h)?;
                return blob_value(r, t, meta, lim, at, blob, emit);
            }
            skip_body(r, h)?;
            deliver(r, meta, emit)
        }
        Layout::Parts => walk_parts(r, t, meta, lim, emit),
        Layout::Other => read_value(r, t, meta, lim, emit),
    }
}

/// Emit the value recorded so far as an undecoded entry.
fn deliver<R: Read>(
    r: &mut RdbReader<R>,
    meta: KeyMeta,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    let raw = r.take_record();
    let at = r.position();
    emit(Event::Entry(Entry {
        meta,
        value: Value::Undecoded,
        raw,
    }))
    .map_err(|e| RdbError::handler(at, e))
}

/// Walk the next part of a multi-part value: its decoded size as the collector would count
/// it (exact for elements, an upper bound for quicklist nodes), and whether it holds an element.
fn skip_part<R: Read>(r: &mut RdbReader<R>, t: u8) -> Result<(u64, bool), RdbError> {
    let e = ELEM_OVERHEAD as u64;
    Ok(match t {
        LIST | SET => (e + skip_str(r)?, true),
        ZSET => {
            let m = skip_str(r)?;
            let n = r.u8()?;
            if n < 253 {
                r.skip(u64::from(n))?;
            }
            (e + m + 8, true)
        }
        ZSET_2 => {
            let m = skip_str(r)?;
            r.skip(8)?;
            (e + m + 8, true)
        }
        HASH => {
            let f = skip_str(r)?;
            let v = skip_str(r)?;
            (e + f + v + 8, true)
        }
        _ => {
            let container = if t == LIST_QUICKLIST_2 {
                quicklist_container(r)?
            } else {
                QUICKLIST_ZIPLIST
            };
            let len = skip_str(r)?;
            match container {
                QUICKLIST_PLAIN => (e + len, true),
                QUICKLIST_PACKED => (blob_bound(len), len > empty_blob_len(SET_LISTPACK)),
                _ => (blob_bound(len), len > empty_blob_len(LIST_ZIPLIST)),
            }
        }
    })
}

/// A list, set, sorted set or hash made of parts (elements, or quicklist nodes): walk them
/// while they add up to less than a big value; deliver the whole undecoded, or decode it.
fn walk_parts<R: Read>(
    r: &mut RdbReader<R>,
    t: u8,
    meta: KeyMeta,
    lim: Limits,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    let start = r.position();
    let n = r.count(part_min_bytes(t))?;
    let mut total: u64 = 0;
    let mut any = false;
    for i in 0..n {
        let (size, has) = skip_part(r, t)?;
        total = total.saturating_add(size);
        any |= has;
        if total > lim.big as u64 {
            return decode_walked(r, t, meta, lim, start, i + 1, n, emit);
        }
    }
    if !any {
        return decode_walked(r, t, meta, lim, start, n, n, emit);
    }
    deliver(r, meta, emit)
}

/// Decode a value of which `walked` of `n` parts were walked: those again from the recording
/// (a copy: the recording stays the raw bytes of the value if it ends up not big), the rest
/// from the input. The events are those a decoding parse gives.
#[allow(clippy::too_many_arguments)]
fn decode_walked<R: Read>(
    r: &mut RdbReader<R>,
    t: u8,
    meta: KeyMeta,
    lim: Limits,
    start: u64,
    walked: u64,
    n: u64,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    let rec = r
        .recorded()
        .ok_or_else(|| RdbError::corrupt(start, "value walked without recording it"))?;
    let mut c = Collector::new(meta, empty_value(t), lim);
    // The recording starts with the type byte, then the value from `start`.
    {
        let mut again = RdbReader::new(rec.get(1..).unwrap_or_default(), false).at_offset(start);
        again.tail = 0;
        again.plain_len()?;
        for _ in 0..walked {
            decode_part(&mut again, t, &mut c, emit)?;
        }
    }
    drop(rec);
    if c.big {
        r.stop_record();
    }
    for _ in walked..n {
        decode_part(r, t, &mut c, emit)?;
    }
    finish(r, c, None, emit)
}
