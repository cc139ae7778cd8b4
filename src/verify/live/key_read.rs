//! Reading one key of any type, across pipelined rounds.
//!
//! [`KeyRead`] is a small state machine per key: each round it says which commands it still
//! needs ([`KeyRead::requests`]), takes their replies in order ([`KeyRead::reply`]), and when it
//! is [`finished`](KeyRead::finished) checks that what it read adds up before turning into
//! the canonical entry. [`LiveReader::read_keys`](super::LiveReader::read_keys) drives many of
//! them at once so that one round trip serves a whole `SCAN` page. A reply that does not fit
//! ([`Unstable`]) restarts the key from scratch, a few times at most. Streams keep their own
//! state in [`StreamAcc`] (see [`super::stream`]).

use std::collections::{BTreeMap, BTreeSet};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value as J};

use super::facts::ServerFacts;
use super::reply::{array_of, bytes_of, cmd, parse_score, text_of, unstable, Cmd, Unstable};
use super::stream::{stream_json, StreamAcc};
use crate::rdb::json::{b64, score_json};
use crate::resp::Reply;

/// How often one key is read again from scratch when it changes while being read.
const MAX_ATTEMPTS: u32 = 5;
/// Windows one big list/zset issues per round (bounds the size of one round's replies).
const WINDOWS_PER_ROUND: usize = 64;

/// What is being asked about a key in one round; replies come back in the same order.
#[derive(Debug, Clone)]
pub(super) enum Req {
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

/// One key being read across rounds.
#[derive(Debug)]
pub(super) struct KeyRead {
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
    pub(super) fn new(key: Bytes) -> Self {
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
    pub(super) fn restart(&mut self, why: Unstable) {
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

    pub(super) fn finished(&self) -> bool {
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
    pub(super) fn requests(&mut self, f: &ServerFacts, window: usize, out: &mut Vec<(Req, Cmd)>) {
        let w = window.max(1);
        let Some(ty) = self.ty.clone() else {
            self.first_requests(f, out);
            return;
        };
        match ty.as_str() {
            "string" => out.push((Req::Get, cmd(&[b"GET", &self.key]))),
            "list" => self.window_requests(false, w, out),
            "zset" => self.window_requests(true, w, out),
            "set" => self.member_requests(false, f, w, out),
            "hash" => self.member_requests(true, f, w, out),
            "stream" => self.stream.requests(&self.key, f, w, out),
            _ => out.push((Req::Dump, cmd(&[b"DUMP", &self.key]))),
        }
    }

    /// The first round of any key: its type, its expiry and its encoding.
    fn first_requests(&self, f: &ServerFacts, out: &mut Vec<(Req, Cmd)>) {
        let k = &self.key[..];
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
    }

    /// A list or zset: its length (first round), then up to [`WINDOWS_PER_ROUND`] windows.
    fn window_requests(&mut self, zset: bool, w: usize, out: &mut Vec<(Req, Cmd)>) {
        let k = &self.key[..];
        let (len_cmd, range_cmd, len_req): (&[u8], &[u8], Req) = if !zset {
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
            let req = if zset {
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

    /// A set or hash: its members (scan pages, or all at once before 2.8), then for a hash the
    /// field TTLs.
    fn member_requests(
        &mut self,
        hash: bool,
        f: &ServerFacts,
        w: usize,
        out: &mut Vec<(Req, Cmd)>,
    ) {
        if !self.scan_started || self.cursor.is_some() {
            self.scan_requests(hash, f, w, out);
        } else if hash && !self.field_ttl_done {
            self.field_ttl_requests(w, out);
        }
    }

    /// The next `SSCAN`/`HSCAN` page (with `SCARD`/`HLEN` beside the first), or
    /// `SMEMBERS`/`HGETALL` on servers without SCAN.
    fn scan_requests(&self, hash: bool, f: &ServerFacts, w: usize, out: &mut Vec<(Req, Cmd)>) {
        let k = &self.key[..];
        let whole = !f.has_scan();
        let (scan, all, scan_req, all_req): (&[u8], &[u8], Req, Req) = if !hash {
            (b"SSCAN", b"SMEMBERS", Req::Sscan, Req::Smembers)
        } else {
            (b"HSCAN", b"HGETALL", Req::Hscan, Req::Hgetall)
        };
        if whole {
            out.push((all_req, cmd(&[all, k])));
        } else {
            if !self.scan_started {
                let card: &[u8] = if !hash { b"SCARD" } else { b"HLEN" };
                out.push((Req::Card, cmd(&[card, k])));
            }
            let cur = self
                .cursor
                .clone()
                .unwrap_or_else(|| Bytes::from_static(b"0"));
            let count = w.to_string();
            out.push((scan_req, cmd(&[scan, k, &cur, b"COUNT", count.as_bytes()])));
        }
    }

    /// Fields are known; ask for their TTLs in pieces.
    fn field_ttl_requests(&mut self, w: usize, out: &mut Vec<(Req, Cmd)>) {
        let k = &self.key[..];
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

    /// Take one reply. `mid_ms` is the midpoint of the round trip (for PTTL).
    pub(super) fn reply(
        &mut self,
        req: Req,
        r: &Reply,
        f: &ServerFacts,
        window: usize,
        mid_ms: i64,
    ) -> Result<(), Unstable> {
        match req {
            Req::Type => self.take_type(r),
            Req::Expire => self.take_expire(r, f, mid_ms),
            Req::Encoding => {
                self.encoding = Some(text_of(r).map_or(J::Null, J::String));
                Ok(())
            }
            Req::Get => self.take_string(r),
            Req::Card => self.take_card(r),
            Req::Llen | Req::Zcard => self.take_len(r),
            Req::Lrange(must) => self.take_list_window(r, must),
            Req::Zrange(must) => self.take_zset_window(r, must),
            Req::Smembers => self.take_all_members(r, false),
            Req::Hgetall => self.take_all_members(r, true),
            Req::Sscan => self.take_scan_page(r, false, f),
            Req::Hscan => self.take_scan_page(r, true, f),
            Req::FieldTtl(fields) => self.take_field_ttls(r, &fields),
            Req::XinfoStream => self.stream.take_info(r, f),
            Req::XinfoGroups => self.stream.take_groups(r),
            Req::Xrange => self.stream.take_entries(r, window),
            Req::XinfoFull => self.stream.take_full(r),
            Req::Xpending(i) => self.stream.take_pending(i, r),
            Req::XinfoConsumers(i) => self.stream.take_consumers(i, r),
            Req::Dump => {
                self.dump = Some(bytes_of(r));
                Ok(())
            }
        }
    }

    /// `TYPE`: `none` means the key does not exist.
    fn take_type(&mut self, r: &Reply) -> Result<(), Unstable> {
        let t = text_of(r).ok_or_else(|| unstable("TYPE", r))?;
        if t == "none" {
            self.absent = true;
        } else {
            self.ty = Some(t);
        }
        Ok(())
    }

    /// `PEXPIRETIME`, `PTTL` or `TTL`, as an absolute time in ms (relative ones from the
    /// midpoint of the round trip).
    fn take_expire(&mut self, r: &Reply, f: &ServerFacts, mid_ms: i64) -> Result<(), Unstable> {
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
        Ok(())
    }

    /// `GET`.
    fn take_string(&mut self, r: &Reply) -> Result<(), Unstable> {
        match r {
            Reply::Bulk(Some(b)) => self.string = Some(b.clone()),
            _ => return Err(unstable("GET", r)),
        }
        Ok(())
    }

    /// `SCARD`/`HLEN` beside the first scan page.
    fn take_card(&mut self, r: &Reply) -> Result<(), Unstable> {
        let n = r.as_int().ok_or_else(|| unstable("SCARD/HLEN", r))?;
        self.len = Some(n.max(0) as usize);
        Ok(())
    }

    /// `LLEN`/`ZCARD`.
    fn take_len(&mut self, r: &Reply) -> Result<(), Unstable> {
        let n = r.as_int().ok_or_else(|| unstable("LLEN/ZCARD", r))?;
        if n <= 0 {
            return Err(Unstable("the key vanished".into()));
        }
        self.len = Some(n as usize);
        if self.next_index > n as usize {
            self.next_index = n as usize;
        }
        Ok(())
    }

    /// One `LRANGE` window (`must`: the elements it has to hold).
    fn take_list_window(&mut self, r: &Reply, must: Option<usize>) -> Result<(), Unstable> {
        let items = array_of(r).ok_or_else(|| unstable("LRANGE", r))?;
        if must.is_some_and(|n| n != items.len()) {
            return Err(Unstable("the list changed while read".into()));
        }
        for i in items {
            self.list
                .push(bytes_of(i).ok_or_else(|| unstable("LRANGE", r))?);
        }
        Ok(())
    }

    /// One `ZRANGE ... WITHSCORES` window (`must`: the members it has to hold).
    fn take_zset_window(&mut self, r: &Reply, must: Option<usize>) -> Result<(), Unstable> {
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
        Ok(())
    }

    /// `SMEMBERS`/`HGETALL` (servers without SCAN): the whole value at once.
    fn take_all_members(&mut self, r: &Reply, hash: bool) -> Result<(), Unstable> {
        let items = array_of(r).ok_or_else(|| unstable("SMEMBERS/HGETALL", r))?;
        self.take_members(items, hash)
            .ok_or_else(|| unstable("SMEMBERS/HGETALL", r))?;
        self.scan_started = true;
        self.cursor = None;
        if items.is_empty() {
            return Err(Unstable("the key vanished".into()));
        }
        // Servers without SCAN (before 2.8) have no hash field TTLs either.
        self.field_ttl_done = true;
        Ok(())
    }

    /// One `SSCAN`/`HSCAN` page; the last one decides whether field TTLs are needed.
    fn take_scan_page(&mut self, r: &Reply, hash: bool, f: &ServerFacts) -> Result<(), Unstable> {
        let parts = array_of(r).ok_or_else(|| unstable("SCAN", r))?;
        let [cur, items] = parts else {
            return Err(unstable("SCAN", r));
        };
        let cur = bytes_of(cur).ok_or_else(|| unstable("SCAN", r))?;
        let items = array_of(items).ok_or_else(|| unstable("SCAN", r))?;
        self.take_members(items, hash)
            .ok_or_else(|| unstable("SCAN", r))?;
        self.scan_started = true;
        self.cursor = (&cur[..] != b"0").then_some(cur);
        if self.cursor.is_none() {
            let empty = if hash {
                self.hash.is_empty()
            } else {
                self.set.is_empty()
            };
            if empty {
                return Err(Unstable("the key vanished".into()));
            }
            if hash {
                self.field_ttl_done = !f.has_field_ttl()
                    || self
                        .encoding
                        .as_ref()
                        .is_some_and(|e| e.as_str() == Some("listpack"));
            }
        }
        Ok(())
    }

    /// `HPEXPIRETIME` of `fields`.
    fn take_field_ttls(&mut self, r: &Reply, fields: &[Bytes]) -> Result<(), Unstable> {
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
        Ok(())
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
    pub(super) fn consistent(&self) -> Result<(), Unstable> {
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
    pub(super) fn into_json(self, f: &ServerFacts) -> Result<Option<J>, String> {
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
