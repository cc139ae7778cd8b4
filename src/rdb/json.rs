//! The canonical JSON form of RDB content (`redis-corpus-canonical/1`, see the corpus README
//! section 2): byte strings as base64, sets sorted by raw bytes, zsets by (score, member),
//! hashes keyed by base64 field, streams with groups, PELs, consumers and their times.
//!
//! It exists so that the parser can be checked against what real servers reported, and so that
//! operators can inspect a snapshot (`dump_json_lines`) without a Redis at hand.

use super::error::{HandlerError, RdbError};
use super::function::parse_library;
use super::model::*;
use super::parser::{ParseOptions, ParseSummary, RdbParser};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value as J};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// A byte string in the canonical form: standard base64.
pub fn b64(b: &[u8]) -> J {
    J::String(B64.encode(b))
}

/// A score as the canonical form writes it: a number when finite, else `"inf"`/`"-inf"`.
pub fn score_json(s: f64) -> J {
    if s.is_finite() {
        serde_json::Number::from_f64(s)
            .map(J::Number)
            .unwrap_or(J::Null)
    } else if s.is_nan() {
        J::String("nan".into())
    } else if s > 0.0 {
        J::String("inf".into())
    } else {
        J::String("-inf".into())
    }
}

/// Best-effort `OBJECT ENCODING` a loading server would pick, from the RDB type (informational).
fn encoding_of(meta: &KeyMeta, value: &Value) -> &'static str {
    use types::*;
    match meta.rdb_type {
        STRING => match value {
            Value::String(s) if super::elem::parse_i64(s).is_some() && s.len() <= 20 => "int",
            Value::String(s) if s.len() <= 44 => "embstr",
            _ => "raw",
        },
        LIST => "linkedlist",
        LIST_ZIPLIST => "ziplist",
        LIST_QUICKLIST | LIST_QUICKLIST_2 => "quicklist",
        SET => "hashtable",
        SET_INTSET => "intset",
        SET_LISTPACK => "listpack",
        ZSET | ZSET_2 => "skiplist",
        ZSET_ZIPLIST => "ziplist",
        ZSET_LISTPACK => "listpack",
        HASH | HASH_METADATA | HASH_METADATA_PRE_GA | VALKEY_HASH_2 => "hashtable",
        HASH_ZIPMAP => "zipmap",
        HASH_ZIPLIST => "ziplist",
        HASH_LISTPACK => "listpack",
        HASH_LISTPACK_EX | HASH_LISTPACK_EX_PRE_GA => "listpackex",
        STREAM_LISTPACKS | STREAM_LISTPACKS_2 | STREAM_LISTPACKS_3 => "stream",
        _ => "module",
    }
}

fn zset_cmp(a: &(Bytes, f64), b: &(Bytes, f64)) -> Ordering {
    a.1.partial_cmp(&b.1)
        .unwrap_or(Ordering::Equal)
        .then_with(|| a.0.cmp(&b.0))
}

fn stream_json(s: &StreamValue, rdb_type: u8) -> J {
    let mut o = Map::new();
    let entries: Vec<J> = s
        .entries
        .iter()
        .map(|e| {
            let fv: Vec<J> = e
                .fields
                .iter()
                .flat_map(|(f, v)| [b64(f), b64(v)])
                .collect();
            json!([e.id.to_string(), fv])
        })
        .collect();
    o.insert("entries".into(), J::Array(entries));
    let empty = StreamMeta::default();
    let m = s.meta.as_ref().unwrap_or(&empty);
    o.insert("length".into(), json!(m.length));
    o.insert("last_id".into(), json!(m.last_id.to_string()));
    if let Some(id) = m.first_id {
        o.insert("first_id".into(), json!(id.to_string()));
    }
    if let Some(id) = m.max_deleted_entry_id {
        o.insert("max_deleted_entry_id".into(), json!(id.to_string()));
    }
    if let Some(n) = m.entries_added {
        o.insert("entries_added".into(), json!(n));
    }
    let mut groups: Vec<&ConsumerGroup> = m.groups.iter().collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    let groups: Vec<J> = groups
        .into_iter()
        .map(|g| group_json(g, rdb_type))
        .collect();
    o.insert("groups".into(), J::Array(groups));
    J::Object(o)
}

/// One consumer group: its ids, PEL and consumers (sorted by name), and apart from them their
/// times (see [`group_times_json`]).
fn group_json(g: &ConsumerGroup, rdb_type: u8) -> J {
    let mut go = Map::new();
    go.insert("name".into(), b64(&g.name));
    go.insert(
        "last_delivered_id".into(),
        json!(g.last_delivered_id.to_string()),
    );
    if rdb_type >= types::STREAM_LISTPACKS_2 {
        go.insert(
            "entries_read".into(),
            g.entries_read.map_or(J::Null, |v| json!(v)),
        );
    }
    let pel: Vec<J> = g
        .pel
        .iter()
        .map(|p| {
            json!([
                p.id.to_string(),
                p.consumer.as_ref().map_or(J::Null, |c| b64(c)),
                p.delivery_count
            ])
        })
        .collect();
    go.insert("pel".into(), J::Array(pel));
    let mut cons: Vec<&Consumer> = g.consumers.iter().collect();
    cons.sort_by(|a, b| a.name.cmp(&b.name));
    let cj: Vec<J> = cons
        .iter()
        .map(|c| {
            let pel: Vec<J> = c.pel.iter().map(|id| json!(id.to_string())).collect();
            json!({"name": b64(&c.name), "pending": c.pel.len(), "pel": pel})
        })
        .collect();
    go.insert("consumers".into(), J::Array(cj));
    go.insert("times".into(), group_times_json(g, &cons));
    J::Object(go)
}

/// The times of a group: its PEL's delivery times and its consumers' seen and active times
/// (apart, so that a comparison can leave them out).
fn group_times_json(g: &ConsumerGroup, cons: &[&Consumer]) -> J {
    let mut pdt = Map::new();
    for p in &g.pel {
        pdt.insert(p.id.to_string(), json!(p.delivery_time_ms as i64));
    }
    let mut ct = Map::new();
    for c in cons {
        let mut t = Map::new();
        t.insert("seen_time_ms".into(), json!(c.seen_time_ms as i64));
        if let Some(a) = c.active_time_ms {
            t.insert("active_time_ms".into(), json!(a as i64));
        }
        ct.insert(B64.encode(&c.name), J::Object(t));
    }
    json!({"pel_delivery_time_ms": pdt, "consumers": ct})
}

/// The canonical JSON object of one key, with a `"db"` field added and a best-effort
/// `"encoding"`. `field_expire_ms` appears on hashes when `rdb_version >= 12` (Redis 7.4+).
pub fn key_to_json(db: u64, meta: &KeyMeta, value: &Value, rdb_version: u32) -> J {
    let mut o = Map::new();
    o.insert("db".into(), json!(db));
    o.insert("key".into(), b64(&meta.key));
    o.insert("type".into(), json!(meta.key_type.name()));
    o.insert("encoding".into(), json!(encoding_of(meta, value)));
    o.insert(
        "expire_ms".into(),
        meta.expire_ms.map_or(J::Null, |v| json!(v)),
    );
    let v = match value {
        Value::String(s) => b64(s),
        Value::List(l) => J::Array(l.iter().map(|e| b64(e)).collect()),
        Value::Set(s) => {
            let mut v: Vec<&Bytes> = s.iter().collect();
            v.sort();
            J::Array(v.into_iter().map(|e| b64(e)).collect())
        }
        Value::ZSet(z) => {
            let mut v: Vec<&(Bytes, f64)> = z.iter().collect();
            v.sort_by(|a, b| zset_cmp(a, b));
            J::Array(
                v.into_iter()
                    .map(|(m, s)| json!([b64(m), score_json(*s)]))
                    .collect(),
            )
        }
        Value::Hash(hf) => {
            let mut m = Map::new();
            let mut fe = Map::new();
            for f in hf {
                m.insert(B64.encode(&f.field), b64(&f.value));
                if let Some(t) = f.expire_ms {
                    fe.insert(B64.encode(&f.field), json!(t));
                }
            }
            if rdb_version >= 12 {
                o.insert("field_expire_ms".into(), J::Object(fe));
            }
            J::Object(m)
        }
        Value::Stream(s) => stream_json(s, meta.rdb_type),
        Value::Module { module_id } => {
            json!({"module": super::model::module_name(*module_id), "module_id": module_id})
        }
        // Only a pass-through parse produces it (`Entry::decoded_value` decodes it).
        Value::Undecoded => json!({ "undecoded": true }),
    };
    o.insert("value".into(), v);
    J::Object(o)
}

/// Append a big-value chunk to the value accumulated so far.
pub fn append_chunk(acc: &mut Option<Value>, chunk: Value) {
    match (acc.as_mut(), chunk) {
        (None, c) => *acc = Some(c),
        (Some(Value::String(a)), Value::String(b)) => {
            let mut m = BytesMut::with_capacity(a.len() + b.len());
            m.extend_from_slice(a);
            m.extend_from_slice(&b);
            *a = m.freeze();
        }
        (Some(Value::List(a)), Value::List(b)) => a.extend(b),
        (Some(Value::Set(a)), Value::Set(b)) => a.extend(b),
        (Some(Value::ZSet(a)), Value::ZSet(b)) => a.extend(b),
        (Some(Value::Hash(a)), Value::Hash(b)) => a.extend(b),
        (Some(Value::Stream(a)), Value::Stream(b)) => {
            let b = *b;
            a.entries.extend(b.entries);
            if b.meta.is_some() {
                a.meta = b.meta;
            }
        }
        (Some(a), b) => *a = b,
    }
}

/// Reassembles whole keys from parser events (big keys included: their chunks are
/// accumulated, which is fine for inspection and tests but not for the data path).
#[derive(Default)]
pub struct KeyAssembler {
    big: Option<(KeyMeta, Option<Value>)>,
}

impl KeyAssembler {
    /// Feed one event; returns a completed key, if this event completed one.
    pub fn feed(&mut self, ev: Event) -> Option<(KeyMeta, Value)> {
        match ev {
            Event::Entry(e) => Some((e.meta, e.value)),
            Event::BigStart(m) => {
                self.big = Some((m, None));
                None
            }
            Event::BigChunk(c) => {
                if let Some((_, acc)) = self.big.as_mut() {
                    append_chunk(acc, c);
                }
                None
            }
            Event::BigEnd => {
                let (m, v) = self.big.take()?;
                let v = v.unwrap_or_else(|| empty_value(m.key_type));
                Some((m, v))
            }
            _ => None,
        }
    }
}

fn empty_value(t: KeyType) -> Value {
    match t {
        KeyType::String => Value::String(Bytes::new()),
        KeyType::List => Value::List(Vec::new()),
        KeyType::Set => Value::Set(Vec::new()),
        KeyType::ZSet => Value::ZSet(Vec::new()),
        KeyType::Hash => Value::Hash(Vec::new()),
        KeyType::Stream => Value::Stream(Box::new(StreamValue {
            entries: Vec::new(),
            meta: None,
        })),
        KeyType::Module => Value::Module { module_id: 0 },
    }
}

/// Write one JSON object per key (one per line) for an RDB of any size.
pub fn dump_json_lines<R: Read, W: Write>(reader: R, out: W) -> Result<ParseSummary, RdbError> {
    let mut out = std::io::BufWriter::new(out);
    let mut asm = KeyAssembler::default();
    let mut version = 0;
    let mut parser = RdbParser::new(reader, ParseOptions::default());
    let summary = parser.run(|ev| -> Result<(), HandlerError> {
        if let Event::Header { version: v } = ev {
            version = v;
        }
        if let Some((m, v)) = asm.feed(ev) {
            serde_json::to_writer(&mut out, &key_to_json(m.db, &m, &v, version))?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })?;
    out.flush().map_err(|e| RdbError::io(summary.bytes, e))?;
    Ok(summary)
}

/// Builds the expected.json-shaped document from parser events.
#[derive(Default)]
pub struct CanonicalBuilder {
    version: u32,
    redis_version: Option<String>,
    dbs: BTreeMap<u64, Vec<(Bytes, J)>>,
    functions: Vec<J>,
    asm: KeyAssembler,
}

impl CanonicalBuilder {
    pub fn feed(&mut self, ev: Event) {
        match &ev {
            Event::Header { version } => self.version = *version,
            Event::Aux { key, value } if &key[..] == b"redis-ver" => {
                self.redis_version = Some(String::from_utf8_lossy(value).into_owned());
            }
            Event::Function(lib) => {
                if let Some(info) = parse_library(&lib.code) {
                    let fns: Vec<J> = info
                        .functions
                        .iter()
                        .map(|f| json!({"name": f.name, "description": f.description, "flags": f.flags}))
                        .collect();
                    self.functions.push(json!({
                        "library_name": info.library_name,
                        "engine": info.engine,
                        "code": b64(&lib.code),
                        "functions": fns,
                    }));
                } else {
                    self.functions.push(json!({"library_name": null, "engine": null, "code": b64(&lib.code), "functions": []}));
                }
            }
            _ => {}
        }
        if let Some((m, v)) = self.asm.feed(ev) {
            let mut j = key_to_json(m.db, &m, &v, self.version);
            if let J::Object(o) = &mut j {
                o.remove("db");
            }
            self.dbs.entry(m.db).or_default().push((m.key.clone(), j));
        }
    }

    pub fn finish(self) -> J {
        let strip_times = self
            .redis_version
            .as_deref()
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse::<u32>().ok())
            .is_some_and(|major| major < 6);
        let mut dbs = Map::new();
        for (db, mut keys) in self.dbs {
            keys.sort_by(|a, b| a.0.cmp(&b.0));
            let keys: Vec<J> = keys
                .into_iter()
                .map(|(_, mut j)| {
                    if strip_times {
                        if let Some(groups) =
                            j.pointer_mut("/value/groups").and_then(J::as_array_mut)
                        {
                            for g in groups {
                                if let J::Object(g) = g {
                                    g.remove("times");
                                }
                            }
                        }
                    }
                    j
                })
                .collect();
            dbs.insert(
                db.to_string(),
                json!({"key_count": keys.len(), "keys": keys}),
            );
        }
        let functions = if self.version >= 10 {
            let mut f = self.functions;
            f.sort_by(|a, b| {
                a["library_name"]
                    .as_str()
                    .unwrap_or("")
                    .cmp(b["library_name"].as_str().unwrap_or(""))
            });
            J::Array(f)
        } else {
            J::Null
        };
        json!({
            "format": "redis-corpus-canonical/1",
            "redis_version": self.redis_version,
            "expire_exact": self.version >= 10,
            "databases": dbs,
            "functions": functions,
        })
    }
}

/// Parse a whole RDB into the canonical document (expected.json shape).
pub fn canonical_document<R: Read>(reader: R) -> Result<J, RdbError> {
    canonical_document_with(reader, ParseOptions::default())
}

/// [`canonical_document`] with explicit parser options (e.g. tiny chunks in tests).
pub fn canonical_document_with<R: Read>(reader: R, opts: ParseOptions) -> Result<J, RdbError> {
    let mut b = CanonicalBuilder::default();
    RdbParser::new(reader, opts).run(|ev| {
        b.feed(ev);
        Ok(())
    })?;
    Ok(b.finish())
}
