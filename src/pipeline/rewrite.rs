//! Snapshot values as plain commands, for targets that cannot RESTORE the source's payloads
//! (an older RDB version) and for big keys, which are always sent in bounded pieces.
//!
//! Every function appends to a [`CommandBuf`]; a value's commands stay together in one op,
//! so they reach one writer in order.

use bytes::Bytes;

use crate::rdb::{HashField, KeyMeta, StreamId, StreamMeta, StreamValue, Value};
use crate::target::commands::{format_score, CommandBuf};
use crate::target::TargetInfo;

/// Elements per command when a collection is written as commands.
pub const ELEMENTS_PER_COMMAND: usize = 1024;
/// Argument bytes per command (beyond this the command is split).
pub const BYTES_PER_COMMAND: usize = 1024 * 1024;

/// Why a value cannot be written as commands.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error("module value of type {0} can only be moved with RESTORE (load the module on the target, and use a target whose RDB version is at least the source's)")]
    Module(String),
    #[error("the value was passed through undecoded; decode it (Entry::decoded_value) before rewriting it as commands")]
    Undecoded,
}

/// What the rewrite needs to know about the target.
#[derive(Debug, Clone)]
pub struct RewriteTarget {
    /// HSET with several fields (4.0+); older targets get HMSET.
    pub multi_field_hset: bool,
    /// HPEXPIREAT (Redis 7.4+, Valkey 9+); older targets lose hash field TTLs (with a warning).
    pub field_ttl: bool,
    /// XSETID ENTRIESADDED/MAXDELETEDID and XGROUP ... ENTRIESREAD (7.0+).
    pub stream_v2: bool,
    /// XGROUP CREATECONSUMER (6.2+).
    pub create_consumer: bool,
}

impl RewriteTarget {
    pub fn from_info(info: &TargetInfo) -> Self {
        let v = info.version_tuple();
        RewriteTarget {
            multi_field_hset: v >= (4, 0),
            field_ttl: info.has_field_ttl(),
            stream_v2: v >= (7, 0),
            create_consumer: v >= (6, 2),
        }
    }

    /// The newest of everything (for tests and embedding without a live target).
    pub fn newest() -> Self {
        RewriteTarget {
            multi_field_hset: true,
            field_ttl: true,
            stream_v2: true,
            create_consumer: true,
        }
    }
}

/// Append the commands that create `meta.key` with (a part of) `value`. `first` is true for a
/// whole value and for the first chunk of a big one (then strings are SET, not APPENDed).
/// The caller deletes the key beforehand when needed and sets the key's expire afterwards.
pub fn append_value(
    out: &mut CommandBuf,
    meta: &KeyMeta,
    value: &Value,
    first: bool,
    target: &RewriteTarget,
) -> Result<(), RewriteError> {
    let key = &meta.key[..];
    match value {
        Value::String(s) => {
            if first {
                out.push(&[&b"SET"[..], key, s]);
            } else {
                for piece in s.chunks(BYTES_PER_COMMAND) {
                    out.push(&[&b"APPEND"[..], key, piece]);
                }
            }
        }
        Value::List(items) => push_members(out, b"RPUSH", key, items),
        Value::Set(items) => push_members(out, b"SADD", key, items),
        Value::ZSet(items) => {
            let mut start = 0;
            while start < items.len() {
                let end = chunk_end(items[start..].iter().map(|(m, _)| m.len() + 24)) + start;
                out.begin(2 + 2 * (end - start));
                out.arg(b"ZADD");
                out.arg(key);
                for (m, s) in &items[start..end] {
                    out.arg(format_score(*s).as_bytes());
                    out.arg(m);
                }
                start = end;
            }
        }
        Value::Hash(fields) => append_hash(out, key, fields, target),
        Value::Stream(s) => append_stream(out, key, s, target),
        Value::Module { module_id } => {
            return Err(RewriteError::Module(crate::rdb::module_name(*module_id)))
        }
        Value::Undecoded => return Err(RewriteError::Undecoded),
    }
    Ok(())
}

/// Append `PEXPIREAT key ms` when the key has an expire time.
pub fn append_expire(out: &mut CommandBuf, meta: &KeyMeta) {
    if let Some(ms) = meta.expire_ms {
        out.push(&[&b"PEXPIREAT"[..], &meta.key, ms.to_string().as_bytes()]);
    }
}

/// How many of the next elements fit in one command.
fn chunk_end(sizes: impl Iterator<Item = usize>) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for s in sizes {
        if n > 0 && (n == ELEMENTS_PER_COMMAND || bytes + s > BYTES_PER_COMMAND) {
            break;
        }
        bytes += s;
        n += 1;
    }
    n
}

fn push_members(out: &mut CommandBuf, cmd: &[u8], key: &[u8], items: &[Bytes]) {
    let mut start = 0;
    while start < items.len() {
        let end = chunk_end(items[start..].iter().map(|m| m.len() + 16)) + start;
        out.begin(2 + (end - start));
        out.arg(cmd);
        out.arg(key);
        for m in &items[start..end] {
            out.arg(m);
        }
        start = end;
    }
}

fn append_hash(out: &mut CommandBuf, key: &[u8], fields: &[HashField], target: &RewriteTarget) {
    let cmd: &[u8] = if target.multi_field_hset {
        b"HSET"
    } else {
        b"HMSET"
    };
    let mut start = 0;
    while start < fields.len() {
        let end = chunk_end(
            fields[start..]
                .iter()
                .map(|f| f.field.len() + f.value.len() + 32),
        ) + start;
        out.begin(2 + 2 * (end - start));
        out.arg(cmd);
        out.arg(key);
        for f in &fields[start..end] {
            out.arg(&f.field);
            out.arg(&f.value);
        }
        start = end;
    }
    let with_ttl: Vec<&HashField> = fields.iter().filter(|f| f.expire_ms.is_some()).collect();
    if with_ttl.is_empty() {
        return;
    }
    if !target.field_ttl {
        // Allowed by --on-unsupported-type drop-ttl and counted by the snapshot apply.
        return;
    }
    for f in with_ttl {
        let ms = f.expire_ms.unwrap_or_default().to_string();
        out.push(&[
            &b"HPEXPIREAT"[..],
            key,
            ms.as_bytes(),
            b"FIELDS",
            b"1",
            &f.field,
        ]);
    }
}

fn append_stream(out: &mut CommandBuf, key: &[u8], s: &StreamValue, target: &RewriteTarget) {
    for e in &s.entries {
        let id = e.id.to_string();
        out.begin(3 + 2 * e.fields.len());
        out.arg(b"XADD");
        out.arg(key);
        out.arg(id.as_bytes());
        for (f, v) in &e.fields {
            out.arg(f);
            out.arg(v);
        }
    }
    if let Some(meta) = &s.meta {
        if meta.first_id.is_none() && meta.entries_added.is_none() {
            // A stream of an RDB older than 10: give the group estimate the first entry's id.
            let mut m = meta.clone();
            m.first_id = s.entries.first().map(|e| e.id);
            append_stream_meta(out, key, &m, target);
        } else {
            append_stream_meta(out, key, meta, target);
        }
    }
}

/// The `entries_read` of a consumer group that Redis 7.0+ estimates when it loads a stream of
/// an RDB older than 10 (`streamEstimateDistanceFromFirstEverEntry`, with `entries_added` set
/// to the length and no deleted entries): `XGROUP CREATE` without ENTRIESREAD would leave it
/// unknown instead. `first_id` is the stream's first entry (none when it is empty).
pub fn estimate_entries_read(
    length: u64,
    last_id: StreamId,
    first_id: Option<StreamId>,
    group_id: StreamId,
) -> Option<i64> {
    let added = length as i64;
    if added == 0 {
        return Some(0);
    }
    match group_id.cmp(&last_id) {
        std::cmp::Ordering::Equal => return Some(added),
        std::cmp::Ordering::Greater => return None,
        std::cmp::Ordering::Less => {}
    }
    match group_id.cmp(&first_id.unwrap_or_default()) {
        std::cmp::Ordering::Less => Some(0),
        std::cmp::Ordering::Equal => Some(1),
        std::cmp::Ordering::Greater => None,
    }
}

/// The consumer group `XGROUP CREATE ... MKSTREAM` makes an empty stream with, destroyed right
/// after. A group name on the user's stream, not a key: the relay's key prefix (which reserves
/// part of the keyspace, and may be set with `--key-prefix`) has no say in it, so it is fixed
/// rather than built from [`DEFAULT_PREFIX`](crate::batch::record::DEFAULT_PREFIX).
const MKSTREAM_GROUP: &[u8] = b"redis-relay:mkstream";

fn append_stream_meta(out: &mut CommandBuf, key: &[u8], meta: &StreamMeta, target: &RewriteTarget) {
    let last = meta.last_id.to_string();
    if meta.length == 0 {
        append_empty_stream(out, key, meta, &last);
    }
    append_setid(out, key, meta, &last, target);
    for g in &meta.groups {
        append_group(out, key, meta, g, target);
        append_pending(out, key, g);
    }
}

/// An empty stream has no entry to create it with: XGROUP CREATE ... MKSTREAM (the helper
/// group destroyed right after) when it never had one, else an entry with its last id that
/// MAXLEN 0 trims at once (so it keeps that last id).
fn append_empty_stream(out: &mut CommandBuf, key: &[u8], meta: &StreamMeta, last: &str) {
    if meta.last_id == Default::default() {
        // XGROUP CREATE ... MKSTREAM makes an empty stream; the helper group goes after.
        out.push(&[
            &b"XGROUP"[..],
            b"CREATE",
            key,
            MKSTREAM_GROUP,
            b"0",
            b"MKSTREAM",
        ]);
        out.push(&[&b"XGROUP"[..], b"DESTROY", key, MKSTREAM_GROUP]);
    } else {
        // An empty stream keeps its last id: add an entry with that id that MAXLEN 0
        // trims at once.
        out.push(&[
            &b"XADD"[..],
            key,
            b"MAXLEN",
            b"0",
            last.as_bytes(),
            b"x",
            b"y",
        ]);
    }
}

/// XSETID: the stream's last id, and on a 7.0+ target its entries-added counter and
/// largest deleted id.
fn append_setid(
    out: &mut CommandBuf,
    key: &[u8],
    meta: &StreamMeta,
    last: &str,
    target: &RewriteTarget,
) {
    if target.stream_v2 {
        let added = meta.entries_added.unwrap_or(meta.length).to_string();
        let maxdel = meta.max_deleted_entry_id.unwrap_or_default().to_string();
        out.push(&[
            &b"XSETID"[..],
            key,
            last.as_bytes(),
            b"ENTRIESADDED",
            added.as_bytes(),
            b"MAXDELETEDID",
            maxdel.as_bytes(),
        ]);
    } else {
        out.push(&[&b"XSETID"[..], key, last.as_bytes()]);
    }
}

/// XGROUP CREATE of one consumer group at its last delivered id (with its entries-read
/// counter, known or estimated, on a 7.0+ target), then its consumers (6.2+).
fn append_group(
    out: &mut CommandBuf,
    key: &[u8],
    meta: &StreamMeta,
    g: &crate::rdb::ConsumerGroup,
    target: &RewriteTarget,
) {
    let gid = g.last_delivered_id.to_string();
    let mut entries_read = g.entries_read;
    if entries_read.is_none() && meta.entries_added.is_none() {
        entries_read = estimate_entries_read(
            meta.length,
            meta.last_id,
            meta.first_id,
            g.last_delivered_id,
        );
    }
    match (target.stream_v2, entries_read) {
        (true, Some(n)) if n >= 0 => out.push(&[
            &b"XGROUP"[..],
            b"CREATE",
            key,
            &g.name,
            gid.as_bytes(),
            b"ENTRIESREAD",
            n.to_string().as_bytes(),
        ]),
        _ => out.push(&[&b"XGROUP"[..], b"CREATE", key, &g.name, gid.as_bytes()]),
    }
    for c in &g.consumers {
        if target.create_consumer {
            out.push(&[&b"XGROUP"[..], b"CREATECONSUMER", key, &g.name, &c.name]);
        }
    }
}

/// The group's pending entries, each claimed by its consumer with XCLAIM ... FORCE JUSTID
/// (delivery time and count kept); an entry without a consumer is left out.
fn append_pending(out: &mut CommandBuf, key: &[u8], g: &crate::rdb::ConsumerGroup) {
    for p in &g.pel {
        let Some(consumer) = &p.consumer else {
            continue;
        };
        let id = p.id.to_string();
        out.push(&[
            &b"XCLAIM"[..],
            key,
            &g.name,
            consumer,
            b"0",
            id.as_bytes(),
            b"TIME",
            p.delivery_time_ms.to_string().as_bytes(),
            b"RETRYCOUNT",
            p.delivery_count.to_string().as_bytes(),
            b"FORCE",
            b"JUSTID",
        ]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdb::{ConsumerGroup, KeyType, StreamEntry};

    fn id(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    #[test]
    fn entries_read_estimate_follows_redis() {
        let (last, first) = (id(50, 0), Some(id(10, 0)));
        assert_eq!(estimate_entries_read(0, id(0, 0), None, id(5, 0)), Some(0));
        assert_eq!(estimate_entries_read(30, last, first, last), Some(30));
        assert_eq!(estimate_entries_read(30, last, first, id(60, 0)), None);
        assert_eq!(estimate_entries_read(30, last, first, id(0, 0)), Some(0));
        assert_eq!(estimate_entries_read(30, last, first, id(10, 0)), Some(1));
        assert_eq!(estimate_entries_read(30, last, first, id(20, 0)), None);
    }

    /// A stream of an RDB < 10 (no entries_added) into a 7.0+ target: a group whose last
    /// delivered id is the stream's last id gets ENTRIESREAD = length, as Redis computes on
    /// load (found with HDT3213/rdb cases/stream_listpacks_1.rdb: XINFO said 150, we null).
    #[test]
    fn old_stream_group_gets_estimated_entries_read() {
        let entries: Vec<StreamEntry> = (1..=3)
            .map(|i| StreamEntry {
                id: id(i, 0),
                fields: vec![(Bytes::from_static(b"f"), Bytes::from_static(b"v"))],
            })
            .collect();
        let group = |name: &'static [u8], last| ConsumerGroup {
            name: Bytes::from_static(name),
            last_delivered_id: last,
            entries_read: None,
            pel: Vec::new(),
            consumers: Vec::new(),
        };
        let v = Value::Stream(Box::new(StreamValue {
            entries,
            meta: Some(StreamMeta {
                length: 3,
                last_id: id(3, 0),
                first_id: None,
                max_deleted_entry_id: None,
                entries_added: None,
                groups: vec![group(b"all", id(3, 0)), group(b"first", id(1, 0))],
            }),
        }));
        let meta = KeyMeta {
            db: 0,
            key: Bytes::from_static(b"s"),
            rdb_type: crate::rdb::types::STREAM_LISTPACKS,
            key_type: KeyType::Stream,
            expire_ms: None,
            idle: None,
            freq: None,
        };
        let mut c = CommandBuf::new();
        append_value(&mut c, &meta, &v, true, &RewriteTarget::newest()).unwrap();
        let (payload, _) = c.take();
        let text = String::from_utf8_lossy(&payload).replace("\r\n", " ");
        assert!(
            text.contains("CREATE $1 s $3 all $3 3-0 $11 ENTRIESREAD $1 3"),
            "{text}"
        );
        assert!(
            text.contains("CREATE $1 s $5 first $3 1-0 $11 ENTRIESREAD $1 1"),
            "{text}"
        );
    }
}
