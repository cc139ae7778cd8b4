//! Reading a live Redis into the canonical JSON form of the corpus (`redis-corpus-canonical/1`,
//! corpus README section 2), so that a server can be compared with `expected.json`, with the
//! canonical form of an RDB ([`crate::rdb::json::canonical_document`]) or with another server.
//!
//! Works against any Redis from 2.8 on (2.4/2.6 through `KEYS` and whole-value reads): the
//! commands are chosen from `INFO server` (`PEXPIRETIME` on 7.0+, `PTTL` before, `XINFO
//! STREAM FULL` on 6.0+, `HPEXPIRETIME` on 7.4+, functions on 7.0+).
//!
//! Speed comes from pipelining across keys: the keys of one `SCAN` page are read together in a
//! few rounds (type/TTL/encoding, then the value, then the rest of big values), each round one
//! pipelined write and its replies. Big values are read in windows (`LRANGE`/`ZRANGE`/
//! `XRANGE ... COUNT`) or with `SSCAN`/`HSCAN`, so that no reply has to hold a whole
//! 300,000-element value. A key that changes type or vanishes between two rounds is read again
//! from the start (a few times) instead of producing a value stitched from two states.
//!
//! What a read of a busy server can and cannot promise: the commands of one round go out in one
//! write and Redis normally runs them back to back (one read of its query buffer), so a value
//! read in one round (up to 64 windows, i.e. 64,000 elements by default) is a consistent
//! snapshot. A bigger value spans rounds; a change of its length between rounds is detected
//! (and the key read again), but a list rotated at constant length is not. `verify` re-reads
//! differing keys for that reason.
//!
//! Only plain RESP2 commands are sent on a plain connection: no `HELLO`, no `CLIENT SETINFO`
//! (some proxies and old servers refuse them).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value as J};

use crate::endpoint::Endpoint;
use crate::resp::{encode_command, Reply};
use crate::target::connection::{info_field, version_tuple};
use crate::target::TargetConn;

/// Elements per window/scan page when a value is read in pieces.
pub const DEFAULT_WINDOW: usize = 1000;
/// Keys per `SCAN` page (and so per pipelined read batch).
pub const DEFAULT_SCAN_COUNT: usize = 1000;
/// How often one key is read again from scratch when it changes while being read.
const MAX_ATTEMPTS: u32 = 5;
/// Windows one big list/zset issues per round (bounds the size of one round's replies).
const WINDOWS_PER_ROUND: usize = 64;

/// What the reader knows about the server, from `INFO server`.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub version: String,
    pub major_minor: (u32, u32),
}

impl ServerFacts {
    pub fn new(version: &str) -> Self {
        ServerFacts {
            version: version.to_string(),
            major_minor: version_tuple(version),
        }
    }
    fn at_least(&self, major: u32, minor: u32) -> bool {
        self.major_minor >= (major, minor)
    }
    /// `SCAN`, `SSCAN`, `HSCAN` (2.8).
    pub fn has_scan(&self) -> bool {
        self.at_least(2, 8)
    }
    /// `PTTL` (2.6); 2.4 only has second-resolution `TTL`.
    pub fn has_pttl(&self) -> bool {
        self.at_least(2, 6)
    }
    /// `PEXPIRETIME` (7.0): exact absolute expiry.
    pub fn has_pexpiretime(&self) -> bool {
        self.at_least(7, 0)
    }
    /// `XINFO STREAM key FULL` (6.0): PEL delivery times and consumer seen times.
    pub fn has_xinfo_full(&self) -> bool {
        self.at_least(6, 0)
    }
    /// Stream metadata v2 (7.0): first id, max deleted id, entries added, entries read.
    pub fn has_stream_v2(&self) -> bool {
        self.at_least(7, 0)
    }
    /// Functions (7.0).
    pub fn has_functions(&self) -> bool {
        self.at_least(7, 0)
    }
    /// Hash field TTLs (7.4).
    pub fn has_field_ttl(&self) -> bool {
        self.at_least(7, 4)
    }
}

/// Settings of the reader.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Elements per window / scan page of a big value.
    pub window: usize,
    /// `SCAN ... COUNT` (keys per batch).
    pub scan_count: usize,
    /// Keys starting with one of these are left out (e.g. the relay's own `redis-relay:`).
    pub ignore_prefixes: Vec<Bytes>,
    /// Socket read timeout.
    pub timeout: Duration,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            window: DEFAULT_WINDOW,
            scan_count: DEFAULT_SCAN_COUNT,
            ignore_prefixes: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }
}

impl ReadOptions {
    /// Whether `key` is excluded by [`ReadOptions::ignore_prefixes`].
    pub fn ignored(&self, key: &[u8]) -> bool {
        self.ignore_prefixes.iter().any(|p| key.starts_with(p))
    }
}

/// A command as its arguments.
type Cmd = Vec<Bytes>;

fn cmd(parts: &[&[u8]]) -> Cmd {
    parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

use crate::rdb::json::b64;
pub use crate::rdb::json::score_json;

/// Bytes of a bulk or simple-string reply.
fn bytes_of(r: &Reply) -> Option<Bytes> {
    match r {
        Reply::Bulk(Some(b)) | Reply::Simple(b) => Some(b.clone()),
        _ => None,
    }
}

fn text_of(r: &Reply) -> Option<String> {
    bytes_of(r).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn array_of(r: &Reply) -> Option<&[Reply]> {
    match r {
        Reply::Array(Some(v)) => Some(v),
        _ => None,
    }
}

/// A flat `name, value, name, value` array (XINFO replies) as a map.
fn flat_map(r: &Reply) -> Option<BTreeMap<String, &Reply>> {
    let items = array_of(r)?;
    let mut m = BTreeMap::new();
    for pair in items.chunks(2) {
        if let [k, v] = pair {
            m.insert(text_of(k)?, v);
        }
    }
    Some(m)
}

/// A reply that does not have the expected shape: the key changed between two rounds (or the
/// server answered an error), so it is read again.
#[derive(Debug)]
struct Unstable(String);

fn unstable(what: &str, r: &Reply) -> Unstable {
    Unstable(format!(
        "{what}: unexpected reply {}",
        r.as_text().unwrap_or_else(|| format!("{r:?}"))
    ))
}

/// The next stream id after `id` (`ms-seq`), for exclusive XRANGE starts on any version.
fn next_stream_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let ms: u64 = ms.parse().ok()?;
    let seq: u64 = seq.parse().ok()?;
    if seq == u64::MAX {
        Some(format!("{}-0", ms.checked_add(1)?))
    } else {
        Some(format!("{ms}-{}", seq + 1))
    }
}

/// What is being asked about a key in one round; replies come back in the same order.
#[derive(Debug, Clone)]
enum Req {
    Type,
    Expire,
    Encoding,
    Get,
    Llen,
    /// A window, with the number of elements it must hold when the length is known.
    Lrange(Option<usize>),
    Smembers,
    /// SCARD/HLEN next to the first scan page: the pages must add up to it.
    Card,
    Sscan,
    Zcard,
    Zrange(Option<usize>),
    Hgetall,
    Hscan,
    FieldTtl(Vec<Bytes>),
    XinfoStream,
    XinfoGroups,
    Xrange,
    XinfoFull,
    Xpending(usize),
    XinfoConsumers(usize),
    Dump,
}

/// A stream being read.
#[derive(Debug, Default)]
struct StreamAcc {
    info: Option<Map<String, J>>,
    /// Groups from XINFO GROUPS: (name, pending, last-delivered-id, entries-read).
    groups: Vec<GroupInfo>,
    groups_known: bool,
    entries: Vec<J>,
    /// Next XRANGE start, `None` once every entry was read.
    next: Option<String>,
    detail_requested: bool,
    detail_done: bool,
}

#[derive(Debug, Default, Clone)]
struct GroupInfo {
    name: Bytes,
    pending: u64,
    last_delivered_id: String,
    entries_read: Option<J>,
    /// From FULL or XPENDING.
    pel: Option<Vec<PelEntry>>,
    /// (name, pel ids, seen_time, active_time).
    consumers: Option<Vec<ConsumerInfo>>,
}

/// (id, consumer, delivery count, delivery time in ms: only from `XINFO STREAM FULL`).
type PelEntry = (String, Bytes, i64, Option<i64>);

#[derive(Debug, Default, Clone)]
struct ConsumerInfo {
    name: Bytes,
    pel: Option<Vec<String>>,
    seen_time_ms: Option<i64>,
    active_time_ms: Option<i64>,
}

/// One key being read across rounds.
#[derive(Debug)]
struct KeyRead {
    key: Bytes,
    attempts: u32,
    ty: Option<String>,
    expire_ms: Option<Option<i64>>,
    encoding: Option<J>,
    absent: bool,
    failed: Option<String>,
    string: Option<Bytes>,
    /// Length of a list/zset from LLEN/ZCARD.
    len: Option<usize>,
    /// Next window start of a list/zset.
    next_index: usize,
    list: Vec<Bytes>,
    zset: Vec<(Bytes, f64)>,
    set: BTreeSet<Bytes>,
    hash: BTreeMap<Bytes, Bytes>,
    /// SSCAN/HSCAN cursor; `None` before the first page and once the scan is complete.
    cursor: Option<Bytes>,
    scan_started: bool,
    field_ttl: BTreeMap<Bytes, i64>,
    field_ttl_next: usize,
    field_ttl_done: bool,
    stream: StreamAcc,
    dump: Option<Option<Bytes>>,
}

impl KeyRead {
    fn new(key: Bytes) -> Self {
        KeyRead {
            key,
            attempts: 0,
            ty: None,
            expire_ms: None,
            encoding: None,
            absent: false,
            failed: None,
            string: None,
            len: None,
            next_index: 0,
            list: Vec::new(),
            zset: Vec::new(),
            set: BTreeSet::new(),
            hash: BTreeMap::new(),
            cursor: None,
            scan_started: false,
            field_ttl: BTreeMap::new(),
            field_ttl_next: 0,
            field_ttl_done: false,
            stream: StreamAcc {
                next: Some("-".into()),
                ..StreamAcc::default()
            },
            dump: None,
        }
    }

    /// Forget everything read so far and start again (the key changed under us).
    fn restart(&mut self, why: Unstable) {
        let attempts = self.attempts + 1;
        let key = std::mem::take(&mut self.key);
        *self = KeyRead::new(key);
        self.attempts = attempts;
        if attempts >= MAX_ATTEMPTS {
            self.failed = Some(format!(
                "the key kept changing while it was read ({attempts} attempts; last: {})",
                why.0
            ));
        }
    }

    fn finished(&self) -> bool {
        if self.absent || self.failed.is_some() {
            return true;
        }
        let Some(ty) = self.ty.as_deref() else {
            return false;
        };
        if self.expire_ms.is_none() {
            return false;
        }
        match ty {
            "string" => self.string.is_some(),
            "list" => self.len.is_some_and(|n| self.list.len() >= n),
            "zset" => self.len.is_some_and(|n| self.zset.len() >= n),
            "set" => self.scan_started && self.cursor.is_none(),
            "hash" => self.scan_started && self.cursor.is_none() && self.field_ttl_done,
            "stream" => {
                self.stream.info.is_some()
                    && self.stream.groups_known
                    && self.stream.next.is_none()
                    && self.stream.detail_done
            }
            _ => self.dump.is_some(),
        }
    }

    /// The commands of the next round for this key.
    fn requests(&mut self, f: &ServerFacts, window: usize, out: &mut Vec<(Req, Cmd)>) {
        let k = &self.key[..];
        let w = window.max(1);
        let Some(ty) = self.ty.clone() else {
            out.push((Req::Type, cmd(&[b"TYPE", k])));
            let exp: &[u8] = if f.has_pexpiretime() {
                b"PEXPIRETIME"
            } else if f.has_pttl() {
                b"PTTL"
            } else {
                b"TTL"
            };
            out.push((Req::Expire, cmd(&[exp, k])));
            out.push((Req::Encoding, cmd(&[b"OBJECT", b"ENCODING", k])));
            return;
        };
        match ty.as_str() {
            "string" => out.push((Req::Get, cmd(&[b"GET", k]))),
            "list" | "zset" => {
                let (len_cmd, range_cmd, len_req): (&[u8], &[u8], Req) = if ty == "list" {
                    (b"LLEN", b"LRANGE", Req::Llen)
                } else {
                    (b"ZCARD", b"ZRANGE", Req::Zcard)
                };
                let total = match self.len {
                    None => {
                        out.push((len_req, cmd(&[len_cmd, k])));
                        w
                    }
                    Some(n) => n,
                };
                let mut start = self.next_index;
                let mut windows = 0;
                while start < total && windows < WINDOWS_PER_ROUND {
                    let stop = (start + w).min(total) - 1;
                    let (s, e) = (start.to_string(), stop.to_string());
                    let mut c = cmd(&[range_cmd, k, s.as_bytes(), e.as_bytes()]);
                    // Once the length is known every window must come back full; a short one
                    // means the value shrank since.
                    let must = self.len.map(|_| stop + 1 - start);
                    let req = if ty == "zset" {
                        c.push(Bytes::from_static(b"WITHSCORES"));
                        Req::Zrange(must)
                    } else {
                        Req::Lrange(must)
                    };
                    out.push((req, c));
                    start = stop + 1;
                    windows += 1;
                }
                self.next_index = start;
            }
            "set" | "hash" => {
                if !self.scan_started || self.cursor.is_some() {
                    let whole = !f.has_scan();
                    let (scan, all, scan_req, all_req): (&[u8], &[u8], Req, Req) = if ty == "set" {
                        (b"SSCAN", b"SMEMBERS", Req::Sscan, Req::Smembers)
                    } else {
                        (b"HSCAN", b"HGETALL", Req::Hscan, Req::Hgetall)
                    };
                    if whole {
                        out.push((all_req, cmd(&[all, k])));
                    } else {
                        if !self.scan_started {
                            let card: &[u8] = if ty == "set" { b"SCARD" } else { b"HLEN" };
                            out.push((Req::Card, cmd(&[card, k])));
                        }
                        let cur = self
                            .cursor
                            .clone()
                            .unwrap_or_else(|| Bytes::from_static(b"0"));
                        let count = w.to_string();
                        out.push((scan_req, cmd(&[scan, k, &cur, b"COUNT", count.as_bytes()])));
                    }
                } else if ty == "hash" && !self.field_ttl_done {
                    // Fields are known; ask for their TTLs in pieces.
                    for _ in 0..WINDOWS_PER_ROUND {
                        let fields: Vec<Bytes> = self
                            .hash
                            .keys()
                            .skip(self.field_ttl_next)
                            .take(w)
                            .cloned()
                            .collect();
                        if fields.is_empty() {
                            break;
                        }
                        self.field_ttl_next += fields.len();
                        let n = fields.len().to_string();
                        let mut c = cmd(&[b"HPEXPIRETIME", k, b"FIELDS", n.as_bytes()]);
                        c.extend(fields.iter().cloned());
                        out.push((Req::FieldTtl(fields), c));
                    }
                }
            }
            "stream" => {
                let s = &mut self.stream;
                if s.info.is_none() {
                    out.push((Req::XinfoStream, cmd(&[b"XINFO", b"STREAM", k])));
                    out.push((Req::XinfoGroups, cmd(&[b"XINFO", b"GROUPS", k])));
                }
                if let Some(start) = &s.next {
                    let count = w.to_string();
                    out.push((
                        Req::Xrange,
                        cmd(&[
                            b"XRANGE",
                            k,
                            start.as_bytes(),
                            b"+",
                            b"COUNT",
                            count.as_bytes(),
                        ]),
                    ));
                }
                if s.groups_known && !s.detail_done && !s.detail_requested {
                    s.detail_requested = true;
                    if f.has_xinfo_full() {
                        // COUNT bounds the entries, the group PELs and the consumer PELs alike;
                        // the largest group PEL is what must fit (COUNT 0 would mean all
                        // entries).
                        let most = s.groups.iter().map(|g| g.pending).max().unwrap_or(0).max(1);
                        let count = most.to_string();
                        out.push((
                            Req::XinfoFull,
                            cmd(&[b"XINFO", b"STREAM", k, b"FULL", b"COUNT", count.as_bytes()]),
                        ));
                    } else {
                        for (i, g) in s.groups.iter().enumerate() {
                            let count = g.pending.max(1).to_string();
                            out.push((
                                Req::Xpending(i),
                                cmd(&[b"XPENDING", k, &g.name, b"-", b"+", count.as_bytes()]),
                            ));
                            out.push((
                                Req::XinfoConsumers(i),
                                cmd(&[b"XINFO", b"CONSUMERS", k, &g.name]),
                            ));
                        }
                    }
                }
            }
            _ => out.push((Req::Dump, cmd(&[b"DUMP", k]))),
        }
    }

    /// Take one reply. `mid_ms` is the midpoint of the round trip (for PTTL).
    fn reply(
        &mut self,
        req: Req,
        r: &Reply,
        f: &ServerFacts,
        window: usize,
        mid_ms: i64,
    ) -> Result<(), Unstable> {
        match req {
            Req::Type => {
                let t = text_of(r).ok_or_else(|| unstable("TYPE", r))?;
                if t == "none" {
                    self.absent = true;
                } else {
                    self.ty = Some(t);
                }
            }
            Req::Expire => {
                let n = r.as_int().ok_or_else(|| unstable("TTL", r))?;
                let e = match n {
                    -1 => None,
                    // The key is gone, or (2.6 and older) has no TTL / does not exist.
                    -2 => {
                        if self.ty.is_some() {
                            return Err(Unstable("the key vanished".into()));
                        }
                        None
                    }
                    n if f.has_pexpiretime() => Some(n),
                    n if f.has_pttl() => Some(mid_ms + n),
                    n => Some(mid_ms + n * 1000),
                };
                self.expire_ms = Some(e);
            }
            Req::Encoding => {
                self.encoding = Some(text_of(r).map_or(J::Null, J::String));
            }
            Req::Get => match r {
                Reply::Bulk(Some(b)) => self.string = Some(b.clone()),
                _ => return Err(unstable("GET", r)),
            },
            Req::Card => {
                let n = r.as_int().ok_or_else(|| unstable("SCARD/HLEN", r))?;
                self.len = Some(n.max(0) as usize);
            }
            Req::Llen | Req::Zcard => {
                let n = r.as_int().ok_or_else(|| unstable("LLEN/ZCARD", r))?;
                if n <= 0 {
                    return Err(Unstable("the key vanished".into()));
                }
                self.len = Some(n as usize);
                if self.next_index > n as usize {
                    self.next_index = n as usize;
                }
            }
            Req::Lrange(must) => {
                let items = array_of(r).ok_or_else(|| unstable("LRANGE", r))?;
                if must.is_some_and(|n| n != items.len()) {
                    return Err(Unstable("the list changed while read".into()));
                }
                for i in items {
                    self.list
                        .push(bytes_of(i).ok_or_else(|| unstable("LRANGE", r))?);
                }
            }
            Req::Zrange(must) => {
                let items = array_of(r).ok_or_else(|| unstable("ZRANGE", r))?;
                if must.is_some_and(|n| 2 * n != items.len()) {
                    return Err(Unstable("the zset changed while read".into()));
                }
                for pair in items.chunks(2) {
                    let [m, s] = pair else {
                        return Err(unstable("ZRANGE", r));
                    };
                    let m = bytes_of(m).ok_or_else(|| unstable("ZRANGE", r))?;
                    let s = text_of(s)
                        .and_then(|t| parse_score(&t))
                        .ok_or_else(|| unstable("ZRANGE score", r))?;
                    self.zset.push((m, s));
                }
            }
            Req::Smembers | Req::Hgetall => {
                let items = array_of(r).ok_or_else(|| unstable("SMEMBERS/HGETALL", r))?;
                self.take_members(items, matches!(req, Req::Hgetall))
                    .ok_or_else(|| unstable("SMEMBERS/HGETALL", r))?;
                self.scan_started = true;
                self.cursor = None;
                if items.is_empty() {
                    return Err(Unstable("the key vanished".into()));
                }
                // Servers without SCAN (before 2.8) have no hash field TTLs either.
                self.field_ttl_done = true;
            }
            Req::Sscan | Req::Hscan => {
                let parts = array_of(r).ok_or_else(|| unstable("SCAN", r))?;
                let [cur, items] = parts else {
                    return Err(unstable("SCAN", r));
                };
                let cur = bytes_of(cur).ok_or_else(|| unstable("SCAN", r))?;
                let items = array_of(items).ok_or_else(|| unstable("SCAN", r))?;
                self.take_members(items, matches!(req, Req::Hscan))
                    .ok_or_else(|| unstable("SCAN", r))?;
                self.scan_started = true;
                self.cursor = (&cur[..] != b"0").then_some(cur);
                if self.cursor.is_none() {
                    let empty = if matches!(req, Req::Hscan) {
                        self.hash.is_empty()
                    } else {
                        self.set.is_empty()
                    };
                    if empty {
                        return Err(Unstable("the key vanished".into()));
                    }
                    if matches!(req, Req::Hscan) {
                        self.field_ttl_done = !f.has_field_ttl()
                            || self
                                .encoding
                                .as_ref()
                                .is_some_and(|e| e.as_str() == Some("listpack"));
                    }
                }
            }
            Req::FieldTtl(fields) => {
                let items = array_of(r).ok_or_else(|| unstable("HPEXPIRETIME", r))?;
                for (field, t) in fields.iter().zip(items) {
                    match t.as_int() {
                        Some(ms) if ms >= 0 => {
                            self.field_ttl.insert(field.clone(), ms);
                        }
                        Some(-1) => {}
                        _ => return Err(unstable("HPEXPIRETIME", r)),
                    }
                }
                if self.field_ttl_next >= self.hash.len() {
                    self.field_ttl_done = true;
                }
            }
            Req::XinfoStream => {
                let m = flat_map(r).ok_or_else(|| unstable("XINFO STREAM", r))?;
                let mut info = Map::new();
                let int = |name: &str| m.get(name).and_then(|v| v.as_int());
                let id = |name: &str| m.get(name).and_then(|v| text_of(v));
                info.insert(
                    "length".into(),
                    json!(int("length").ok_or_else(|| unstable("XINFO STREAM length", r))?),
                );
                info.insert(
                    "last_id".into(),
                    json!(id("last-generated-id").ok_or_else(|| unstable("XINFO STREAM", r))?),
                );
                if f.has_stream_v2() {
                    if let Some(v) = id("recorded-first-entry-id") {
                        info.insert("first_id".into(), json!(v));
                    }
                    if let Some(v) = id("max-deleted-entry-id") {
                        info.insert("max_deleted_entry_id".into(), json!(v));
                    }
                    if let Some(v) = int("entries-added") {
                        info.insert("entries_added".into(), json!(v));
                    }
                }
                self.stream.info = Some(info);
            }
            Req::XinfoGroups => {
                let groups = array_of(r).ok_or_else(|| unstable("XINFO GROUPS", r))?;
                self.stream.groups.clear();
                for g in groups {
                    let m = flat_map(g).ok_or_else(|| unstable("XINFO GROUPS", r))?;
                    let name = m
                        .get("name")
                        .and_then(|v| bytes_of(v))
                        .ok_or_else(|| unstable("XINFO GROUPS name", r))?;
                    self.stream.groups.push(GroupInfo {
                        name,
                        pending: m
                            .get("pending")
                            .and_then(|v| v.as_int())
                            .unwrap_or(0)
                            .max(0) as u64,
                        last_delivered_id: m
                            .get("last-delivered-id")
                            .and_then(|v| text_of(v))
                            .unwrap_or_default(),
                        entries_read: m
                            .get("entries-read")
                            .map(|v| v.as_int().map_or(J::Null, |n| json!(n))),
                        pel: None,
                        consumers: None,
                    });
                }
                self.stream.groups_known = true;
                if self.stream.groups.is_empty() {
                    self.stream.detail_done = true;
                }
            }
            Req::Xrange => {
                let entries = array_of(r).ok_or_else(|| unstable("XRANGE", r))?;
                let mut last = None;
                for e in entries {
                    let parts = array_of(e).ok_or_else(|| unstable("XRANGE", r))?;
                    let [id, fields] = parts else {
                        return Err(unstable("XRANGE", r));
                    };
                    let id = text_of(id).ok_or_else(|| unstable("XRANGE id", r))?;
                    let fields: Vec<J> = array_of(fields)
                        .ok_or_else(|| unstable("XRANGE fields", r))?
                        .iter()
                        .map(|v| bytes_of(v).map(|b| b64(&b)))
                        .collect::<Option<_>>()
                        .ok_or_else(|| unstable("XRANGE fields", r))?;
                    self.stream.entries.push(json!([id, fields]));
                    last = Some(id);
                }
                self.stream.next = if entries.len() < window.max(1) {
                    None
                } else {
                    last.as_deref().and_then(next_stream_id)
                };
            }
            Req::XinfoFull => {
                let m = flat_map(r).ok_or_else(|| unstable("XINFO STREAM FULL", r))?;
                let groups = m
                    .get("groups")
                    .and_then(|g| array_of(g))
                    .ok_or_else(|| unstable("XINFO STREAM FULL groups", r))?;
                let mut full = Vec::new();
                for g in groups {
                    full.push(parse_full_group(g).ok_or_else(|| unstable("XINFO FULL", r))?);
                }
                full.sort_by(|a, b| a.name.cmp(&b.name));
                // The PELs must be complete (a PEL that grew since XINFO GROUPS is cut by COUNT).
                for g in &full {
                    let (pel, declared) = (g.pel.as_ref().map_or(0, Vec::len), g.pending);
                    if pel as u64 != declared {
                        return Err(Unstable(format!(
                            "group PEL changed while read ({pel} of {declared})"
                        )));
                    }
                }
                self.stream.groups = full;
                self.stream.detail_done = true;
            }
            Req::Xpending(i) => {
                let items = array_of(r).ok_or_else(|| unstable("XPENDING", r))?;
                let mut pel = Vec::new();
                for it in items {
                    match array_of(it) {
                        Some([id, consumer, _idle, count]) => pel.push((
                            text_of(id).ok_or_else(|| unstable("XPENDING", r))?,
                            bytes_of(consumer).ok_or_else(|| unstable("XPENDING", r))?,
                            count.as_int().ok_or_else(|| unstable("XPENDING", r))?,
                            None,
                        )),
                        _ => return Err(unstable("XPENDING", r)),
                    }
                }
                let g = self
                    .stream
                    .groups
                    .get_mut(i)
                    .ok_or_else(|| Unstable("groups changed".into()))?;
                if pel.len() as u64 != g.pending {
                    return Err(Unstable("group PEL changed while read".into()));
                }
                g.pel = Some(pel);
                self.check_pre6_detail_done();
            }
            Req::XinfoConsumers(i) => {
                let items = array_of(r).ok_or_else(|| unstable("XINFO CONSUMERS", r))?;
                let mut cons = Vec::new();
                for c in items {
                    let m = flat_map(c).ok_or_else(|| unstable("XINFO CONSUMERS", r))?;
                    cons.push(ConsumerInfo {
                        name: m
                            .get("name")
                            .and_then(|v| bytes_of(v))
                            .ok_or_else(|| unstable("XINFO CONSUMERS", r))?,
                        pel: None,
                        seen_time_ms: None,
                        active_time_ms: None,
                    });
                }
                let g = self
                    .stream
                    .groups
                    .get_mut(i)
                    .ok_or_else(|| Unstable("groups changed".into()))?;
                g.consumers = Some(cons);
                self.check_pre6_detail_done();
            }
            Req::Dump => {
                self.dump = Some(bytes_of(r));
            }
        }
        Ok(())
    }

    fn check_pre6_detail_done(&mut self) {
        if self
            .stream
            .groups
            .iter()
            .all(|g| g.pel.is_some() && g.consumers.is_some())
        {
            // Consumer PELs are the group PEL split by consumer (ID order is kept).
            for g in &mut self.stream.groups {
                let pel = g.pel.clone().unwrap_or_default();
                if let Some(cons) = g.consumers.as_mut() {
                    for c in cons {
                        c.pel = Some(
                            pel.iter()
                                .filter(|p| p.1 == c.name)
                                .map(|p| p.0.clone())
                                .collect(),
                        );
                    }
                }
            }
            self.stream.detail_done = true;
        }
    }

    fn take_members(&mut self, items: &[Reply], hash: bool) -> Option<()> {
        if hash {
            for pair in items.chunks(2) {
                let [f, v] = pair else { return None };
                self.hash.insert(bytes_of(f)?, bytes_of(v)?);
            }
        } else {
            for m in items {
                self.set.insert(bytes_of(m)?);
            }
        }
        Some(())
    }

    /// Whether the reads of a list/zset add up (a value that changed between windows does not).
    fn consistent(&self) -> Result<(), Unstable> {
        match self.ty.as_deref() {
            Some("list") if self.len != Some(self.list.len()) => Err(Unstable(format!(
                "list length changed while read ({} of {:?})",
                self.list.len(),
                self.len
            ))),
            Some("zset") if self.len != Some(self.zset.len()) => {
                Err(Unstable("zset changed while read".into()))
            }
            // SSCAN/HSCAN pages taken from two states of a value do not add up to its size
            // (SCARD/HLEN are only asked where SCAN is used).
            Some("set") if self.len.is_some_and(|n| n != self.set.len()) => {
                Err(Unstable("set changed while read".into()))
            }
            Some("hash") if self.len.is_some_and(|n| n != self.hash.len()) => {
                Err(Unstable("hash changed while read".into()))
            }
            Some("stream") => {
                let declared = self
                    .stream
                    .info
                    .as_ref()
                    .and_then(|i| i["length"].as_u64())
                    .unwrap_or(0);
                if declared != self.stream.entries.len() as u64 {
                    Err(Unstable("stream length changed while read".into()))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    /// The canonical entry (`None` when the key does not exist).
    fn into_json(self, f: &ServerFacts) -> Result<Option<J>, String> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.absent {
            return Ok(None);
        }
        let ty = self.ty.unwrap_or_default();
        let mut o = Map::new();
        o.insert("key".into(), b64(&self.key));
        o.insert("type".into(), json!(ty));
        o.insert("encoding".into(), self.encoding.unwrap_or(J::Null));
        o.insert(
            "expire_ms".into(),
            self.expire_ms.flatten().map_or(J::Null, |v| json!(v)),
        );
        let value = match ty.as_str() {
            "string" => b64(&self.string.unwrap_or_default()),
            "list" => J::Array(self.list.iter().map(|e| b64(e)).collect()),
            "set" => J::Array(self.set.iter().map(|e| b64(e)).collect()),
            "zset" => {
                let mut z = self.zset;
                z.sort_by(|a, b| {
                    a.1.partial_cmp(&b.1)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then_with(|| a.0.cmp(&b.0))
                });
                J::Array(
                    z.iter()
                        .map(|(m, s)| json!([b64(m), score_json(*s)]))
                        .collect(),
                )
            }
            "hash" => {
                let m: Map<String, J> = self
                    .hash
                    .iter()
                    .map(|(k, v)| (B64.encode(k), b64(v)))
                    .collect();
                if f.has_field_ttl() {
                    let fe: Map<String, J> = self
                        .field_ttl
                        .iter()
                        .map(|(k, v)| (B64.encode(k), json!(v)))
                        .collect();
                    o.insert("field_expire_ms".into(), J::Object(fe));
                }
                J::Object(m)
            }
            "stream" => stream_json(self.stream, f),
            _ => json!({"dump": self.dump.flatten().map(|d| B64.encode(d))}),
        };
        o.insert("value".into(), value);
        Ok(Some(J::Object(o)))
    }
}

fn parse_score(t: &str) -> Option<f64> {
    match t {
        "inf" | "+inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        _ => t.parse().ok(),
    }
}

/// One group of `XINFO STREAM key FULL`.
fn parse_full_group(g: &Reply) -> Option<GroupInfo> {
    let m = flat_map(g)?;
    let name = bytes_of(m.get("name")?)?;
    let mut pel = Vec::new();
    for p in array_of(m.get("pending")?)? {
        let [id, consumer, time, count] = array_of(p)? else {
            return None;
        };
        pel.push((
            text_of(id)?,
            bytes_of(consumer)?,
            count.as_int()?,
            time.as_int(),
        ));
    }
    let mut consumers = Vec::new();
    for c in array_of(m.get("consumers")?)? {
        let cm = flat_map(c)?;
        let mut ids = Vec::new();
        for p in array_of(cm.get("pending")?)? {
            ids.push(text_of(array_of(p)?.first()?)?);
        }
        consumers.push(ConsumerInfo {
            name: bytes_of(cm.get("name")?)?,
            pel: Some(ids),
            seen_time_ms: cm.get("seen-time").and_then(|v| v.as_int()),
            active_time_ms: cm.get("active-time").and_then(|v| v.as_int()),
        });
    }
    Some(GroupInfo {
        name,
        pending: m.get("pel-count").and_then(|v| v.as_int()).unwrap_or(0) as u64,
        last_delivered_id: text_of(m.get("last-delivered-id")?)?,
        entries_read: m
            .get("entries-read")
            .map(|v| v.as_int().map_or(J::Null, |n| json!(n))),
        pel: Some(pel),
        consumers: Some(consumers),
    })
}

fn stream_json(s: StreamAcc, f: &ServerFacts) -> J {
    let mut o = s.info.unwrap_or_default();
    o.insert("entries".into(), J::Array(s.entries));
    let mut groups = s.groups;
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    let groups: Vec<J> = groups
        .into_iter()
        .map(|g| {
            let mut go = Map::new();
            go.insert("name".into(), b64(&g.name));
            go.insert("last_delivered_id".into(), json!(g.last_delivered_id));
            if f.has_stream_v2() {
                go.insert("entries_read".into(), g.entries_read.unwrap_or(J::Null));
            }
            let pel = g.pel.unwrap_or_default();
            go.insert(
                "pel".into(),
                J::Array(
                    pel.iter()
                        .map(|(id, c, n, _)| json!([id, b64(c), n]))
                        .collect(),
                ),
            );
            let mut cons = g.consumers.unwrap_or_default();
            cons.sort_by(|a, b| a.name.cmp(&b.name));
            go.insert(
                "consumers".into(),
                J::Array(
                    cons.iter()
                        .map(|c| {
                            let ids = c.pel.clone().unwrap_or_default();
                            json!({"name": b64(&c.name), "pending": ids.len(), "pel": ids})
                        })
                        .collect(),
                ),
            );
            if f.has_xinfo_full() {
                let pdt: Map<String, J> = pel
                    .iter()
                    .map(|(id, _, _, t)| (id.clone(), json!(t.unwrap_or(0))))
                    .collect();
                let ct: Map<String, J> = cons
                    .iter()
                    .map(|c| {
                        let mut t = Map::new();
                        t.insert("seen_time_ms".into(), json!(c.seen_time_ms.unwrap_or(0)));
                        if let Some(a) = c.active_time_ms {
                            t.insert("active_time_ms".into(), json!(a));
                        }
                        (B64.encode(&c.name), J::Object(t))
                    })
                    .collect();
                go.insert(
                    "times".into(),
                    json!({"pel_delivery_time_ms": pdt, "consumers": ct}),
                );
            }
            J::Object(go)
        })
        .collect();
    o.insert("groups".into(), J::Array(groups));
    J::Object(o)
}

/// A blocking, pipelining reader of one live Redis.
pub struct LiveReader {
    conn: TargetConn,
    endpoint: Endpoint,
    pub facts: ServerFacts,
    pub opts: ReadOptions,
    db: Option<u32>,
    /// Keys read so far (for rates).
    pub keys_read: u64,
}

impl LiveReader {
    /// Connect, log in (the URL's user/password), and learn the version from `INFO server`.
    pub fn connect(ep: &Endpoint, opts: ReadOptions) -> anyhow::Result<LiveReader> {
        let mut conn = TargetConn::connect(ep, Duration::from_secs(5))?;
        conn.stream
            .set_read_timeout(Some(opts.timeout))
            .with_context(|| format!("{ep}: set read timeout"))?;
        let info = conn
            .info()
            .with_context(|| format!("{ep}: INFO server failed"))?;
        Ok(LiveReader {
            conn,
            endpoint: ep.clone(),
            facts: ServerFacts::new(&info.version),
            opts,
            db: None,
            keys_read: 0,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Send `cmds` in one write and read their replies, in order.
    fn pipeline(&mut self, cmds: &[Cmd]) -> anyhow::Result<Vec<Reply>> {
        let mut out = BytesMut::new();
        for c in cmds {
            encode_command(&mut out, c);
        }
        self.conn
            .stream
            .write_all(&out)
            .with_context(|| format!("{}: write failed", self.endpoint))?;
        let mut replies = Vec::with_capacity(cmds.len());
        for _ in cmds {
            replies.push(
                self.conn
                    .read_reply()
                    .with_context(|| format!("{}: reading replies failed", self.endpoint))?,
            );
        }
        Ok(replies)
    }

    fn call(&mut self, c: Cmd) -> anyhow::Result<Reply> {
        let r = self.pipeline(&[c])?.pop().unwrap_or(Reply::Bulk(None));
        Ok(r)
    }

    /// `SELECT db` unless it is already selected.
    pub fn select(&mut self, db: u32) -> anyhow::Result<()> {
        if self.db == Some(db) {
            return Ok(());
        }
        let n = db.to_string();
        match self.call(cmd(&[b"SELECT", n.as_bytes()]))? {
            Reply::Error(e) => bail!(
                "{}: SELECT {db} failed: {}",
                self.endpoint,
                String::from_utf8_lossy(&e)
            ),
            _ => {
                self.db = Some(db);
                Ok(())
            }
        }
    }

    /// Non-empty databases and their key counts, from `INFO keyspace` (only the URL's
    /// database when it names one).
    pub fn databases(&mut self) -> anyhow::Result<Vec<(u32, u64)>> {
        let text = self
            .call(cmd(&[b"INFO", b"keyspace"]))?
            .as_text()
            .unwrap_or_default();
        let mut dbs = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("db") else {
                continue;
            };
            let Some((n, fields)) = rest.split_once(':') else {
                continue;
            };
            let Ok(db) = n.parse::<u32>() else { continue };
            let keys = info_field(&fields.replace(',', "\n").replace('=', ":"), "keys")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if !matches!(self.endpoint.db, Some(only) if only != db) {
                dbs.push((db, keys));
            }
        }
        dbs.sort();
        Ok(dbs)
    }

    /// Keys of `db` under an ignored prefix (the relay's own), counted with `SCAN MATCH`: so
    /// that key counts taken from `INFO keyspace` leave them out. 0 before 2.8 (no SCAN).
    pub fn ignored_count(&mut self, db: u32) -> anyhow::Result<u64> {
        if !self.facts.has_scan() {
            return Ok(0);
        }
        self.select(db)?;
        let mut n = 0;
        for p in self.opts.ignore_prefixes.clone() {
            let mut pattern = Vec::with_capacity(p.len() + 1);
            for &b in p.iter() {
                if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
                    pattern.push(b'\\');
                }
                pattern.push(b);
            }
            pattern.push(b'*');
            let mut cursor = b"0".to_vec();
            loop {
                let reply = self.call(cmd(&[
                    b"SCAN", &cursor, b"MATCH", &pattern, b"COUNT", b"10000",
                ]))?;
                let Reply::Array(Some(mut parts)) = reply else {
                    anyhow::bail!("{}: SCAN MATCH: unexpected reply", self.endpoint);
                };
                if let Some(Reply::Array(Some(keys))) = parts.pop() {
                    n += keys.len() as u64;
                }
                cursor = match parts.pop() {
                    Some(Reply::Bulk(Some(c))) => c.to_vec(),
                    _ => b"0".to_vec(),
                };
                if cursor == b"0" {
                    break;
                }
            }
        }
        Ok(n)
    }

    /// One `SCAN` page of `db` (`KEYS *` in one go before 2.8): (next cursor, keys), the keys
    /// under an ignored prefix already left out. Cursor `0` ends the scan.
    pub fn scan_page(&mut self, db: u32, cursor: u64) -> anyhow::Result<(u64, Vec<Bytes>)> {
        self.select(db)?;
        let (next, keys) = if self.facts.has_scan() {
            let (c, n) = (cursor.to_string(), self.opts.scan_count.to_string());
            let r = self.call(cmd(&[b"SCAN", c.as_bytes(), b"COUNT", n.as_bytes()]))?;
            let parse = || -> Option<(u64, Vec<Bytes>)> {
                let [cur, keys] = array_of(&r)? else {
                    return None;
                };
                let next = text_of(cur)?.parse().ok()?;
                let keys = array_of(keys)?
                    .iter()
                    .map(bytes_of)
                    .collect::<Option<_>>()?;
                Some((next, keys))
            };
            parse().ok_or_else(|| anyhow!("{}: SCAN failed: {r:?}", self.endpoint))?
        } else {
            let r = self.call(cmd(&[b"KEYS", b"*"]))?;
            let keys = array_of(&r)
                .and_then(|a| a.iter().map(bytes_of).collect::<Option<Vec<_>>>())
                .ok_or_else(|| anyhow!("{}: KEYS failed: {r:?}", self.endpoint))?;
            (0, keys)
        };
        let keys = keys.into_iter().filter(|k| !self.opts.ignored(k)).collect();
        Ok((next, keys))
    }

    /// Every key of `db` (deduplicated: SCAN may return a key twice), in SCAN order.
    pub fn all_keys(&mut self, db: u32) -> anyhow::Result<Vec<Bytes>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut cursor = 0;
        loop {
            let (next, keys) = self.scan_page(db, cursor)?;
            for k in keys {
                if seen.insert(k.clone()) {
                    out.push(k);
                }
            }
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Up to `n` distinct random keys of `db` (`RANDOMKEY`, pipelined).
    pub fn random_keys(&mut self, db: u32, n: usize) -> anyhow::Result<Vec<Bytes>> {
        self.select(db)?;
        let mut seen = BTreeSet::new();
        // Repeats are likely in small databases; a few rounds fill the sample or show there
        // are not more keys.
        for _ in 0..4 {
            let want = n.saturating_sub(seen.len());
            if want == 0 {
                break;
            }
            let cmds: Vec<Cmd> = (0..want).map(|_| cmd(&[b"RANDOMKEY"])).collect();
            let before = seen.len();
            for r in self.pipeline(&cmds)? {
                if let Some(k) = bytes_of(&r) {
                    if !self.opts.ignored(&k) {
                        seen.insert(k);
                    }
                }
            }
            if seen.len() == before {
                break;
            }
        }
        Ok(seen.into_iter().take(n).collect())
    }

    /// Whether each key exists in `db` (pipelined `EXISTS`).
    pub fn exists(&mut self, db: u32, keys: &[Bytes]) -> anyhow::Result<Vec<bool>> {
        self.select(db)?;
        let cmds: Vec<Cmd> = keys
            .iter()
            .map(|k| vec![Bytes::from_static(b"EXISTS"), k.clone()])
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for r in self.pipeline(&cmds)? {
            out.push(
                r.as_int()
                    .ok_or_else(|| anyhow!("{}: EXISTS failed: {r:?}", self.endpoint))?
                    > 0,
            );
        }
        Ok(out)
    }

    /// Read `keys` of `db` into canonical key entries: `Ok(None)` for a key that does not
    /// exist, `Err` for one that kept changing while it was read.
    pub fn read_keys(
        &mut self,
        db: u32,
        keys: &[Bytes],
    ) -> anyhow::Result<Vec<Result<Option<J>, String>>> {
        self.select(db)?;
        let mut reads: Vec<KeyRead> = keys.iter().cloned().map(KeyRead::new).collect();
        let facts = self.facts.clone();
        let window = self.opts.window;
        loop {
            let mut cmds: Vec<Cmd> = Vec::new();
            let mut owners: Vec<(usize, Req)> = Vec::new();
            let mut batch = Vec::new();
            for (i, kr) in reads.iter_mut().enumerate() {
                if kr.finished() {
                    continue;
                }
                batch.clear();
                kr.requests(&facts, window, &mut batch);
                if batch.is_empty() {
                    // Nothing left to ask, yet incomplete: what was read does not add up
                    // (e.g. windows of a list that was replaced meanwhile). Start over.
                    kr.restart(Unstable("the value changed while read".into()));
                    if kr.finished() {
                        continue;
                    }
                    kr.requests(&facts, window, &mut batch);
                }
                for (req, c) in batch.drain(..) {
                    owners.push((i, req));
                    cmds.push(c);
                }
            }
            if cmds.is_empty() {
                break;
            }
            let sent = now_ms();
            let t0 = Instant::now();
            let replies = self.pipeline(&cmds)?;
            let mid = sent + (t0.elapsed().as_millis() as i64) / 2;
            let mut broken: BTreeMap<usize, Unstable> = BTreeMap::new();
            for ((i, req), r) in owners.into_iter().zip(replies.iter()) {
                if broken.contains_key(&i) {
                    continue;
                }
                if let Err(e) = reads[i].reply(req, r, &facts, window, mid) {
                    broken.insert(i, e);
                }
            }
            for (i, kr) in reads.iter_mut().enumerate() {
                if let Some(e) = broken.remove(&i) {
                    kr.restart(e);
                } else if kr.finished() {
                    if let Err(e) = kr.consistent() {
                        kr.restart(e);
                    }
                }
            }
        }
        self.keys_read += keys.len() as u64;
        Ok(reads.into_iter().map(|kr| kr.into_json(&facts)).collect())
    }

    /// The function libraries (`FUNCTION LIST WITHCODE`) in canonical form; `null` before 7.0.
    pub fn functions(&mut self) -> anyhow::Result<J> {
        if !self.facts.has_functions() {
            return Ok(J::Null);
        }
        let r = self.call(cmd(&[b"FUNCTION", b"LIST", b"WITHCODE"]))?;
        let libs = array_of(&r)
            .ok_or_else(|| anyhow!("{}: FUNCTION LIST failed: {r:?}", self.endpoint))?;
        let mut out = Vec::new();
        for lib in libs {
            let parse = || -> Option<J> {
                let m = flat_map(lib)?;
                let mut fns = Vec::new();
                for f in array_of(m.get("functions")?)? {
                    let fm = flat_map(f)?;
                    let mut flags: Vec<String> = array_of(fm.get("flags")?)?
                        .iter()
                        .filter_map(text_of)
                        .collect();
                    flags.sort();
                    fns.push(json!({
                        "name": text_of(fm.get("name")?)?,
                        "description": fm.get("description").and_then(|d| text_of(d)),
                        "flags": flags,
                    }));
                }
                fns.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                Some(json!({
                    "library_name": text_of(m.get("library_name")?)?,
                    "engine": text_of(m.get("engine")?)?,
                    "code": b64(&bytes_of(m.get("library_code")?)?),
                    "functions": fns,
                }))
            };
            out.push(
                parse()
                    .ok_or_else(|| anyhow!("{}: unexpected FUNCTION LIST reply", self.endpoint))?,
            );
        }
        out.sort_by(|a, b| a["library_name"].as_str().cmp(&b["library_name"].as_str()));
        Ok(J::Array(out))
    }

    /// The whole server in canonical form (corpus README section 2). A key that keeps
    /// changing while it is read fails the whole read: a snapshot of a busy server is not
    /// what this is for (use [`super::verify`], which re-checks).
    pub fn read_document(&mut self) -> anyhow::Result<J> {
        let mut dbs = Map::new();
        for (db, _) in self.databases()? {
            let mut keys = self.all_keys(db)?;
            keys.sort();
            let mut entries = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(self.opts.scan_count.max(1)) {
                for (k, r) in chunk.iter().zip(self.read_keys(db, chunk)?) {
                    match r {
                        Ok(Some(j)) => entries.push(j),
                        Ok(None) => {}
                        Err(e) => bail!("{}: db {db} key {}: {e}", self.endpoint, escape_key(k)),
                    }
                }
            }
            if !entries.is_empty() {
                dbs.insert(
                    db.to_string(),
                    json!({"key_count": entries.len(), "keys": entries}),
                );
            }
        }
        let functions = self.functions()?;
        Ok(json!({
            "format": "redis-corpus-canonical/1",
            "redis_version": self.facts.version,
            "expire_exact": self.facts.has_pexpiretime(),
            "databases": dbs,
            "functions": functions,
        }))
    }
}

/// A key for people: printable ASCII as is, everything else as `\xNN` (like redis-cli).
pub fn escape_key(k: &[u8]) -> String {
    let mut s = String::with_capacity(k.len() + 2);
    s.push('"');
    for &b in k {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    s
}

/// Read a whole server into the canonical document (default options, no key ignored).
pub fn read_canonical(ep: &Endpoint) -> anyhow::Result<J> {
    LiveReader::connect(ep, ReadOptions::default())?.read_document()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_successor() {
        assert_eq!(next_stream_id("5-1").as_deref(), Some("5-2"));
        assert_eq!(
            next_stream_id(&format!("5-{}", u64::MAX)).as_deref(),
            Some("6-0")
        );
        assert_eq!(next_stream_id("x"), None);
    }

    #[test]
    fn keys_escaped() {
        assert_eq!(
            escape_key(b"a\x00b\r\n\"\xff"),
            "\"a\\x00b\\r\\n\\\"\\xff\""
        );
    }

    #[test]
    fn scores() {
        assert_eq!(parse_score("inf"), Some(f64::INFINITY));
        assert_eq!(parse_score("-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_score("1e+300"), Some(1e300));
        assert_eq!(score_json(f64::NEG_INFINITY), json!("-inf"));
        assert_eq!(score_json(0.1), json!(0.1));
    }
}
