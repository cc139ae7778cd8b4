//! Decoding one value (the bytes after its key) of any RDB object type into events: strings,
//! the blob encodings, multi-part values, hashes with field TTLs, streams and modules.
//!
//! Shared by the file parser ([`super::parser`]) and the pass-through walk
//! ([`super::passthrough`]), which falls back to it for values it cannot pass through.

use super::collect::{Collector, Emit, Item, Limits};
use super::elem::{parse_f64, Elem};
use super::error::{EncodingError, HandlerError, RdbError};
use super::listpack::ListpackIter;
use super::lzf;
use super::model::*;
use super::reader::{RdbReader, StrHeader};
use super::stream;
use super::ziplist::ZiplistIter;
use super::{intset, zipmap};
use bytes::Bytes;
use std::io::Read;

/// Largest valid hash-field expire time (ebuckets' 48-bit limit).
const EB_EXPIRE_TIME_MAX: u64 = 0x0000_FFFF_FFFF_FFFF;

/// Walk a MODULE_2 value body (after the module id) to its EOF opcode.
pub(crate) fn walk_module<R: Read>(r: &mut RdbReader<R>, name: &str) -> Result<(), RdbError> {
    loop {
        let at = r.position();
        match r.plain_len()? {
            0 => return Ok(()),
            1 | 2 => {
                r.plain_len()?;
            }
            3 => {
                r.array::<4>()?;
            }
            4 => {
                r.array::<8>()?;
            }
            5 => r.skip_string()?,
            o => {
                return Err(RdbError::corrupt(
                    at,
                    format!("unknown opcode {o} in value of module '{name}'"),
                ));
            }
        }
    }
}

fn h(r_pos: u64) -> impl Fn(HandlerError) -> RdbError {
    move |e| RdbError::handler(r_pos, e)
}

/// How the value of an RDB object type is laid out.
pub(crate) enum Layout {
    /// A string (raw, integer or LZF).
    String,
    /// One blob: a ziplist, listpack, intset or zipmap (after a fixed prefix, see
    /// [`blob_prefix`]).
    Blob,
    /// A count, then that many parts: elements of a plain list, set, sorted set or hash, or
    /// quicklist nodes (see [`decode_part`]).
    Parts,
    /// Anything else (hashes with field TTLs, streams, modules).
    Other,
}

pub(crate) fn layout(t: u8) -> Layout {
    use types::*;
    match t {
        STRING => Layout::String,
        LIST_ZIPLIST
        | SET_INTSET
        | SET_LISTPACK
        | ZSET_ZIPLIST
        | ZSET_LISTPACK
        | HASH_ZIPMAP
        | HASH_ZIPLIST
        | HASH_LISTPACK
        | HASH_LISTPACK_EX
        | HASH_LISTPACK_EX_PRE_GA => Layout::Blob,
        LIST | SET | ZSET | ZSET_2 | HASH | LIST_QUICKLIST | LIST_QUICKLIST_2 => Layout::Parts,
        _ => Layout::Other,
    }
}

/// Read what comes before the blob of a [`Layout::Blob`] value.
pub(crate) fn blob_prefix<R: Read>(r: &mut RdbReader<R>, t: u8) -> Result<(), RdbError> {
    if t == types::HASH_LISTPACK_EX {
        r.millis()?; // minimum field expire time; informational
    }
    Ok(())
}

/// Decode one value of type `t` from `r` and deliver it through `emit`. The reader's
/// recording (if on) is taken as the raw bytes of a whole value.
pub(crate) fn read_value<R: Read>(
    r: &mut RdbReader<R>,
    t: u8,
    meta: KeyMeta,
    lim: Limits,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    use types::*;
    match layout(t) {
        Layout::String => {
            let at = r.position();
            let hdr = r.str_header()?;
            return string_value(r, at, hdr, meta, lim, emit);
        }
        Layout::Blob => {
            blob_prefix(r, t)?;
            let (at, blob) = blob(r)?;
            return blob_value(r, t, meta, lim, at, blob, emit);
        }
        Layout::Parts => {
            let n = r.count(part_min_bytes(t))?;
            let mut c = Collector::new(meta, empty_value(t), lim);
            for _ in 0..n {
                decode_part(r, t, &mut c, emit)?;
            }
            return finish(r, c, None, emit);
        }
        Layout::Other => {}
    }
    match t {
        HASH_METADATA | HASH_METADATA_PRE_GA => read_hash_metadata(r, t, meta, lim, emit),
        VALKEY_HASH_2 => read_valkey_hash_2(r, meta, lim, emit),
        STREAM_LISTPACKS | STREAM_LISTPACKS_2 | STREAM_LISTPACKS_3 => {
            read_stream(r, t, meta, lim, emit)
        }
        MODULE_PRE_GA => Err(RdbError::unsupported(
            r.position(),
            "pre-GA module value (RDB type 6) cannot be parsed without the module",
        )),
        MODULE_2 => read_module_value(r, meta, emit),
        _ => Err(RdbError::corrupt(
            r.position(),
            format!("unknown object type {t}"),
        )),
    }
}

/// A hash with field TTLs (HASH_METADATA, or the form of the 7.4 release candidates): a TTL,
/// a field and a value per field.
fn read_hash_metadata<R: Read>(
    r: &mut RdbReader<R>,
    t: u8,
    meta: KeyMeta,
    lim: Limits,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    let min_expire = if t == types::HASH_METADATA {
        read_min_expire(r)?
    } else {
        0
    };
    let mut c = Collector::new(meta, Value::Hash(Vec::new()), lim);
    let n = r.count(3)?;
    for _ in 0..n {
        read_ttl_field(r, t, min_expire, &mut c, emit)?;
    }
    finish(r, c, None, emit)
}

/// Valkey's hash with field TTLs: a count, then per field its name, its value and its absolute
/// expire time in milliseconds as 8 bytes little-endian (-1: none).
fn read_valkey_hash_2<R: Read>(
    r: &mut RdbReader<R>,
    meta: KeyMeta,
    lim: Limits,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    let mut c = Collector::new(meta, Value::Hash(Vec::new()), lim);
    let n = r.count(10)?;
    for _ in 0..n {
        let field = r.string()?;
        let value = r.string()?;
        let at = r.position();
        let expire_ms = match i64::from_le_bytes(r.array::<8>()?) {
            -1 => None,
            ms if (0..=EB_EXPIRE_TIME_MAX as i64).contains(&ms) => Some(ms),
            ms => {
                return Err(RdbError::corrupt(
                    at,
                    format!("invalid hash field expire time {ms}"),
                ))
            }
        };
        push_ttl_field(r, &mut c, field, value, expire_ms, emit)?;
    }
    finish(r, c, None, emit)
}

/// HASH_METADATA's minimum field expire time, which its field TTLs are relative to.
fn read_min_expire<R: Read>(r: &mut RdbReader<R>) -> Result<u64, RdbError> {
    let at = r.position();
    let min_expire = r.millis()?;
    if min_expire > EB_EXPIRE_TIME_MAX + 1 {
        return Err(RdbError::corrupt(
            at,
            "hash minimum field expire time out of range",
        ));
    }
    Ok(min_expire)
}

/// One field of a hash with field TTLs (its TTL, field and value) pushed into `c`.
#[inline]
fn read_ttl_field<R: Read>(
    r: &mut RdbReader<R>,
    t: u8,
    min_expire: u64,
    c: &mut Collector,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    let at = r.position();
    let ttl = r.plain_len()?;
    let expire_at = field_expire_at(t, ttl, min_expire);
    if expire_at > EB_EXPIRE_TIME_MAX {
        return Err(RdbError::corrupt(
            at,
            format!("invalid hash field expire time {expire_at}"),
        ));
    }
    let field = r.string()?;
    let value = r.string()?;
    let expire_ms = (expire_at != 0).then_some(expire_at as i64);
    push_ttl_field(r, c, field, value, expire_ms, emit)
}

/// Push one field of a hash with field TTLs into `c`; stop recording the raw bytes once the
/// value turned out big (it goes in chunks, never whole).
fn push_ttl_field<R: Read>(
    r: &mut RdbReader<R>,
    c: &mut Collector,
    field: Bytes,
    value: Bytes,
    expire_ms: Option<i64>,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    c.push(
        Item::Hash(HashField {
            field,
            value,
            expire_ms,
        }),
        emit,
    )
    .map_err(h(r.position()))?;
    if c.big {
        r.stop_record();
    }
    Ok(())
}

/// The absolute expire time (0: none) of a field stored with `ttl`: HASH_METADATA stores it
/// as an offset from the minimum plus one, the pre-GA form as is.
#[inline]
fn field_expire_at(t: u8, ttl: u64, min_expire: u64) -> u64 {
    if t == types::HASH_METADATA {
        if ttl == 0 {
            0
        } else {
            ttl.checked_add(min_expire)
                .and_then(|v| v.checked_sub(1))
                .unwrap_or(u64::MAX)
        }
    } else {
        ttl
    }
}

/// A MODULE_2 value: walked to its end and delivered as its raw bytes only.
fn read_module_value<R: Read>(
    r: &mut RdbReader<R>,
    meta: KeyMeta,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    let module_id = r.plain_len()?;
    walk_module(r, &module_name(module_id))?;
    let raw = r.take_record();
    emit(Event::Entry(Entry {
        meta,
        value: Value::Module { module_id },
        raw,
    }))
    .map_err(h(r.position()))
}

/// The empty value of a collection type (what a [`Collector`] starts from).
pub(crate) fn empty_value(t: u8) -> Value {
    use types::*;
    match t {
        LIST | LIST_ZIPLIST | LIST_QUICKLIST | LIST_QUICKLIST_2 => Value::List(Vec::new()),
        SET | SET_INTSET | SET_LISTPACK => Value::Set(Vec::new()),
        ZSET | ZSET_2 | ZSET_ZIPLIST | ZSET_LISTPACK => Value::ZSet(Vec::new()),
        _ => Value::Hash(Vec::new()),
    }
}

/// The least number of bytes one part of a multi-part value takes (for the read-ahead).
pub(crate) fn part_min_bytes(t: u8) -> u64 {
    use types::*;
    match t {
        LIST | SET | LIST_QUICKLIST => 1,
        _ => 2,
    }
}

/// Decode the next part of a multi-part value into `c`: one element of a plain list, set,
/// sorted set or hash (a string, a string and a score, two strings), or one quicklist node.
/// The recording stops once the value turned out big.
pub(crate) fn decode_part<X: Read>(
    r: &mut RdbReader<X>,
    t: u8,
    c: &mut Collector,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    use types::*;
    match t {
        LIST => {
            let b = r.string()?;
            c.push(Item::List(b), emit).map_err(h(r.position()))?;
        }
        SET => {
            let b = r.string()?;
            c.push(Item::Set(b), emit).map_err(h(r.position()))?;
        }
        ZSET | ZSET_2 => {
            let m = r.string()?;
            let score = if t == ZSET_2 {
                f64::from_le_bytes(r.array::<8>()?)
            } else {
                read_string_double(r)?
            };
            c.push(Item::ZSet(m, score), emit)
                .map_err(h(r.position()))?;
        }
        HASH => {
            let field = r.string()?;
            let value = r.string()?;
            c.push(Item::field(field, value), emit)
                .map_err(h(r.position()))?;
        }
        LIST_QUICKLIST | LIST_QUICKLIST_2 => {
            let container = if t == LIST_QUICKLIST_2 {
                quicklist_container(r)?
            } else {
                QUICKLIST_ZIPLIST
            };
            let (at, blob) = blob(r)?;
            match container {
                QUICKLIST_ZIPLIST => {
                    let it = ZiplistIter::new(blob).map_err(|e| RdbError::encoding(at, e))?;
                    push_elems(r, c, it, at, emit, |e| Item::List(e.into_bytes()))?;
                }
                QUICKLIST_PLAIN => {
                    c.push(Item::List(blob), emit).map_err(h(r.position()))?;
                }
                _ => {
                    let it = ListpackIter::new(blob).map_err(|e| RdbError::encoding(at, e))?;
                    push_elems(r, c, it, at, emit, |e| Item::List(e.into_bytes()))?;
                }
            }
        }
        _ => {
            return Err(RdbError::corrupt(
                r.position(),
                format!("object type {t} has no parts"),
            ))
        }
    }
    if c.big {
        r.stop_record();
    }
    Ok(())
}

/// Quicklist node containers: a ziplist (RDB type 14, written as 0 here), one plain element,
/// or a listpack.
pub(crate) const QUICKLIST_ZIPLIST: u64 = 0;
pub(crate) const QUICKLIST_PLAIN: u64 = 1;
pub(crate) const QUICKLIST_PACKED: u64 = 2;

/// The container of the next QUICKLIST_2 node.
pub(crate) fn quicklist_container<X: Read>(r: &mut RdbReader<X>) -> Result<u64, RdbError> {
    let at = r.position();
    let k = r.plain_len()?;
    if k != QUICKLIST_PLAIN && k != QUICKLIST_PACKED {
        return Err(RdbError::corrupt(
            at,
            format!("unknown quicklist container {k}"),
        ));
    }
    Ok(k)
}

/// Decode a value held in one blob (ziplist, listpack, intset or zipmap), read from `at`.
pub(crate) fn blob_value<R: Read>(
    r: &mut RdbReader<R>,
    t: u8,
    meta: KeyMeta,
    lim: Limits,
    at: u64,
    blob: Bytes,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    use types::*;
    let mut c = Collector::new(meta, empty_value(t), lim);
    match t {
        LIST_ZIPLIST => {
            let it = ZiplistIter::new(blob).map_err(|e| RdbError::encoding(at, e))?;
            push_elems(r, &mut c, it, at, emit, |e| Item::List(e.into_bytes()))?;
        }
        SET_INTSET => {
            let it = intset::decode(&blob).map_err(|e| RdbError::encoding(at, e))?;
            for v in it {
                c.push(Item::Set(super::reader::int_bytes(v)), emit)
                    .map_err(h(r.position()))?;
            }
        }
        SET_LISTPACK => {
            let it = ListpackIter::new(blob).map_err(|e| RdbError::encoding(at, e))?;
            push_elems(r, &mut c, it, at, emit, |e| Item::Set(e.into_bytes()))?;
        }
        ZSET_ZIPLIST => {
            let it = ZiplistIter::new(blob).map_err(|e| RdbError::encoding(at, e))?;
            push_zset_pairs(r, &mut c, it, at, emit)?;
        }
        ZSET_LISTPACK => {
            let it = ListpackIter::new(blob).map_err(|e| RdbError::encoding(at, e))?;
            push_zset_pairs(r, &mut c, it, at, emit)?;
        }
        HASH_ZIPMAP => {
            let pairs = zipmap::decode(&blob).map_err(|e| RdbError::encoding(at, e))?;
            for (field, value) in pairs {
                c.push(Item::field(field, value), emit)
                    .map_err(h(r.position()))?;
            }
        }
        HASH_ZIPLIST => {
            let it = ZiplistIter::new(blob).map_err(|e| RdbError::encoding(at, e))?;
            push_hash_tuples(r, &mut c, it, at, false, emit)?;
        }
        HASH_LISTPACK => {
            let it = ListpackIter::new(blob).map_err(|e| RdbError::encoding(at, e))?;
            push_hash_tuples(r, &mut c, it, at, false, emit)?;
        }
        _ => {
            let it = ListpackIter::new(blob).map_err(|e| RdbError::encoding(at, e))?;
            push_hash_tuples(r, &mut c, it, at, true, emit)?;
        }
    }
    if c.big {
        r.stop_record();
    }
    finish(r, c, None, emit)
}

pub(crate) fn finish<R: Read>(
    r: &mut RdbReader<R>,
    c: Collector,
    stream_meta: Option<StreamMeta>,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    let raw = if c.big { None } else { r.take_record() };
    c.finish(raw, stream_meta, emit).map_err(h(r.position()))
}

/// Read a length-prefixed blob (any string encoding, LZF included) with its file offset.
fn blob<R: Read>(r: &mut RdbReader<R>) -> Result<(u64, Bytes), RdbError> {
    let at = r.position();
    Ok((at, r.string()?))
}

fn push_elems<R: Read, I>(
    r: &mut RdbReader<R>,
    c: &mut Collector,
    it: I,
    at: u64,
    emit: &mut Emit<'_>,
    f: impl Fn(Elem) -> Item,
) -> Result<(), RdbError>
where
    I: Iterator<Item = Result<Elem, EncodingError>>,
{
    for e in it {
        let e = e.map_err(|e| RdbError::encoding(at, e))?;
        c.push(f(e), emit).map_err(h(r.position()))?;
    }
    if c.big {
        r.stop_record();
    }
    Ok(())
}

/// The element of a blob (read from `at`) that must follow the one just taken: `missing` says
/// what lacks it when the blob ends instead.
#[inline]
fn following_elem<I>(it: &mut I, at: u64, missing: &'static str) -> Result<Elem, RdbError>
where
    I: Iterator<Item = Result<Elem, EncodingError>>,
{
    match it.next() {
        Some(e) => e.map_err(|e| RdbError::encoding(at, e)),
        None => Err(RdbError::corrupt(at, missing)),
    }
}

fn push_zset_pairs<R: Read, I>(
    r: &mut RdbReader<R>,
    c: &mut Collector,
    mut it: I,
    at: u64,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError>
where
    I: Iterator<Item = Result<Elem, EncodingError>>,
{
    while let Some(m) = it.next() {
        let m = m.map_err(|e| RdbError::encoding(at, e))?;
        let s = following_elem(&mut it, at, "sorted set member without a score")?;
        let score = s
            .as_f64()
            .ok_or_else(|| RdbError::corrupt(at, "sorted set score is not a number"))?;
        c.push(Item::ZSet(m.into_bytes(), score), emit)
            .map_err(h(r.position()))?;
    }
    if c.big {
        r.stop_record();
    }
    Ok(())
}

fn push_hash_tuples<R: Read, I>(
    r: &mut RdbReader<R>,
    c: &mut Collector,
    mut it: I,
    at: u64,
    with_ttl: bool,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError>
where
    I: Iterator<Item = Result<Elem, EncodingError>>,
{
    while let Some(f) = it.next() {
        let f = f.map_err(|e| RdbError::encoding(at, e))?;
        let v = following_elem(&mut it, at, "hash field without a value")?;
        let mut expire_ms = None;
        if with_ttl {
            let ttl = following_elem(&mut it, at, "hash field without a TTL slot")?;
            let ttl = ttl
                .as_int()
                .ok_or_else(|| RdbError::corrupt(at, "hash field TTL is not an integer"))?;
            if ttl < 0 || ttl as u64 > EB_EXPIRE_TIME_MAX {
                return Err(RdbError::corrupt(
                    at,
                    format!("invalid hash field expire time {ttl}"),
                ));
            }
            if ttl != 0 {
                expire_ms = Some(ttl);
            }
        }
        c.push(
            Item::Hash(HashField {
                field: f.into_bytes(),
                value: v.into_bytes(),
                expire_ms,
            }),
            emit,
        )
        .map_err(h(r.position()))?;
    }
    if c.big {
        r.stop_record();
    }
    Ok(())
}

/// ZSET (type 3) score: a length byte, 253/254/255 for nan/+inf/-inf, else ASCII.
fn read_string_double<R: Read>(r: &mut RdbReader<R>) -> Result<f64, RdbError> {
    let at = r.position();
    let n = r.u8()?;
    match n {
        253 => Ok(f64::NAN),
        254 => Ok(f64::INFINITY),
        255 => Ok(f64::NEG_INFINITY),
        _ => {
            let mut buf = [0u8; 255];
            r.read_into(&mut buf[..n as usize])?;
            parse_f64(&buf[..n as usize])
                .ok_or_else(|| RdbError::corrupt(at, "invalid double value"))
        }
    }
}

/// Decode a string value whose header (read from `at`) is `hdr`.
pub(crate) fn string_value<R: Read>(
    r: &mut RdbReader<R>,
    at: u64,
    hdr: StrHeader,
    meta: KeyMeta,
    lim: Limits,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    let size = match hdr {
        StrHeader::Raw(n) => n,
        StrHeader::Int(_) => 0,
        StrHeader::Lzf { ulen, .. } => ulen,
    };
    if size <= lim.big as u64 {
        let v = r.string_body(hdr)?;
        let raw = r.take_record();
        return emit(Event::Entry(Entry {
            meta,
            value: Value::String(v),
            raw,
        }))
        .map_err(h(r.position()));
    }
    r.stop_record();
    let chunk = lim.chunk_bytes.max(1);
    emit(Event::BigStart(meta)).map_err(h(r.position()))?;
    match hdr {
        StrHeader::Raw(n) => {
            r.expect(n);
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk as u64);
                let piece = r.bytes(k)?;
                left -= k;
                emit(Event::BigChunk(Value::String(piece))).map_err(h(r.position()))?;
            }
        }
        StrHeader::Lzf { clen, ulen } => {
            let comp = r.bytes(clen)?;
            let mut dec =
                lzf::StreamDecoder::new(&comp, ulen).map_err(|e| RdbError::encoding(at, e))?;
            while let Some(piece) = dec
                .next_chunk(chunk)
                .map_err(|e| RdbError::encoding(at, e))?
            {
                emit(Event::BigChunk(Value::String(Bytes::from(piece))))
                    .map_err(h(r.position()))?;
            }
        }
        StrHeader::Int(_) => {}
    }
    emit(Event::BigEnd).map_err(h(r.position()))
}

fn read_id<R: Read>(r: &mut RdbReader<R>) -> Result<StreamId, RdbError> {
    let ms = r.plain_len()?;
    let seq = r.plain_len()?;
    Ok(StreamId { ms, seq })
}

/// A stream: its listpack nodes, its metadata and its consumer groups.
fn read_stream<R: Read>(
    r: &mut RdbReader<R>,
    t: u8,
    meta: KeyMeta,
    lim: Limits,
    emit: &mut Emit<'_>,
) -> Result<(), RdbError> {
    let mut c = Collector::new(
        meta,
        Value::Stream(Box::new(StreamValue {
            entries: Vec::new(),
            meta: None,
        })),
        lim,
    );
    let live_total = read_stream_nodes(r, &mut c, emit)?;
    let at = r.position();
    let length = r.plain_len()?;
    let last_id = read_id(r)?;
    let (mut first_id, mut max_deleted_entry_id, mut entries_added) = (None, None, None);
    if t >= types::STREAM_LISTPACKS_2 {
        first_id = Some(read_id(r)?);
        max_deleted_entry_id = Some(read_id(r)?);
        entries_added = Some(r.plain_len()?);
    }
    // Redis does not cross-check the declared length against the nodes; neither do we (the
    // declared length is what XLEN reports after a load).
    let _ = (at, live_total);
    let ngroups = r.count(4)?;
    let mut groups = Vec::new();
    for _ in 0..ngroups {
        groups.push(read_group(r, t)?);
    }
    let smeta = StreamMeta {
        length,
        last_id,
        first_id,
        max_deleted_entry_id,
        entries_added,
        groups,
    };
    finish(r, c, Some(smeta), emit)
}

/// The nodes of a stream (a master id and a listpack each): their live entries pushed into
/// `c`; how many there were.
fn read_stream_nodes<R: Read>(
    r: &mut RdbReader<R>,
    c: &mut Collector,
    emit: &mut Emit<'_>,
) -> Result<u64, RdbError> {
    let nodes = r.count(2)?;
    let mut node_entries = Vec::new();
    let mut live_total: u64 = 0;
    for _ in 0..nodes {
        let at = r.position();
        let key = r.string()?;
        let master = stream::id_from_be(&key)
            .ok_or_else(|| RdbError::corrupt(at, "stream node key is not a 128-bit id"))?;
        let (at, lp) = blob(r)?;
        node_entries.clear();
        let n = stream::decode_node(master, lp, &mut node_entries)
            .map_err(|e| RdbError::encoding(at, e))?;
        if n == 0 && node_entries.is_empty() {
            // Redis never writes empty nodes; tolerate nodes whose entries are all deleted.
        }
        live_total += n as u64;
        for e in node_entries.drain(..) {
            c.push(Item::Stream(e), emit).map_err(h(r.position()))?;
        }
        if c.big {
            r.stop_record();
        }
    }
    Ok(live_total)
}

/// One consumer group: its name, last delivered id, entries read (RDB type 19 on), PEL and
/// consumers.
fn read_group<R: Read>(r: &mut RdbReader<R>, t: u8) -> Result<ConsumerGroup, RdbError> {
    let name = r.string()?;
    let last_delivered_id = read_id(r)?;
    let entries_read = if t >= types::STREAM_LISTPACKS_2 {
        let v = r.plain_len()?;
        if v == u64::MAX {
            None
        } else {
            Some(v as i64)
        }
    } else {
        None
    };
    let mut pel = read_group_pel(r)?;
    let ncons = r.count(10)?;
    let mut consumers = Vec::new();
    for _ in 0..ncons {
        consumers.push(read_consumer(r, t, &mut pel)?);
    }
    Ok(ConsumerGroup {
        name,
        last_delivered_id,
        entries_read,
        pel,
        consumers,
    })
}

/// A group's PEL, in strictly increasing id order (the consumers then name the owners).
fn read_group_pel<R: Read>(r: &mut RdbReader<R>) -> Result<Vec<PendingEntry>, RdbError> {
    let npel = r.count(17)?;
    let mut pel: Vec<PendingEntry> = Vec::new();
    for _ in 0..npel {
        let at = r.position();
        let raw = r.array::<16>()?;
        let id = stream::id_from_be(&raw).unwrap_or_default();
        if pel.last().is_some_and(|p| p.id >= id) {
            return Err(RdbError::corrupt(
                at,
                "consumer group PEL not in id order or duplicated",
            ));
        }
        let delivery_time_ms = r.millis()?;
        let delivery_count = r.plain_len()?;
        pel.push(PendingEntry {
            id,
            delivery_time_ms,
            delivery_count,
            consumer: None,
        });
    }
    Ok(pel)
}

/// One consumer of a group: its name, times and pending ids, each of which must be in the
/// group's `pel` (whose entry it marks as this consumer's).
fn read_consumer<R: Read>(
    r: &mut RdbReader<R>,
    t: u8,
    pel: &mut [PendingEntry],
) -> Result<Consumer, RdbError> {
    let cname = r.string()?;
    let seen_time_ms = r.millis()?;
    let active_time_ms = if t >= types::STREAM_LISTPACKS_3 {
        Some(r.millis()?)
    } else {
        None
    };
    let n = r.count(16)?;
    let mut cpel = Vec::new();
    for _ in 0..n {
        let at = r.position();
        let raw = r.array::<16>()?;
        let id = stream::id_from_be(&raw).unwrap_or_default();
        match pel.binary_search_by(|p| p.id.cmp(&id)) {
            Ok(i) => pel[i].consumer = Some(cname.clone()),
            Err(_) => {
                return Err(RdbError::corrupt(
                    at,
                    "consumer PEL entry not found in group PEL",
                ))
            }
        }
        cpel.push(id);
    }
    Ok(Consumer {
        name: cname,
        seen_time_ms,
        active_time_ms,
        pel: cpel,
    })
}
