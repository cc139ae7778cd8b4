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
//!
//! The reader is split by concern: `facts` (what the server version supports), `options`
//! (the reader's settings), `reply` (picking replies apart), `key_read` (one key of any type,
//! round by round), `stream` (the parts of a stream read), `escape` (keys shown to people),
//! and here the [`LiveReader`] itself: the connection, databases, `SCAN`, and the pipelined
//! rounds that drive many key reads at once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value as J};

use crate::endpoint::Endpoint;
use crate::rdb::json::b64;
use crate::resp::client::info_field;
use crate::resp::Client;
use crate::resp::{encode_command, Reply};

mod escape;
mod facts;
mod key_read;
mod options;
mod reply;
mod stream;

pub use crate::rdb::json::score_json;
pub use escape::escape_key;
pub use facts::ServerFacts;
pub use options::{ReadOptions, DEFAULT_SCAN_COUNT, DEFAULT_WINDOW};

use key_read::{KeyRead, Req};
use reply::{array_of, bytes_of, cmd, flat_map, text_of, Cmd, Unstable};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A blocking, pipelining reader of one live Redis.
pub struct LiveReader {
    conn: Client,
    endpoint: Endpoint,
    pub facts: ServerFacts,
    pub opts: ReadOptions,
    db: Option<u32>,
    /// Keys read so far (for rates).
    pub keys_read: u64,
    /// A reply was `-MOVED` or `-ASK` since [`LiveReader::take_redirect`] last asked: a
    /// cluster node did not hold a slot it was asked about (the slot map is out of date).
    redirected: bool,
}

impl LiveReader {
    /// Connect, log in (the URL's user/password), and learn the version from `INFO server`.
    pub fn connect(ep: &Endpoint, opts: ReadOptions) -> anyhow::Result<LiveReader> {
        let mut conn = Client::connect(ep, Duration::from_secs(5))?;
        conn.stream
            .set_read_timeout(Some(opts.timeout))
            .with_context(|| format!("{ep}: set read timeout"))?;
        let info = crate::target::TargetInfo::read(&mut conn)
            .with_context(|| format!("{ep}: INFO server failed"))?;
        Ok(LiveReader {
            conn,
            endpoint: ep.clone(),
            facts: ServerFacts::new(&info.version).with_valkey(info.valkey_version.as_deref()),
            opts,
            db: None,
            keys_read: 0,
            redirected: false,
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
            let r = self
                .conn
                .read_reply()
                .with_context(|| format!("{}: reading replies failed", self.endpoint))?;
            if let Reply::Error(e) = &r {
                self.redirected |= e.starts_with(b"MOVED ") || e.starts_with(b"ASK ");
            }
            replies.push(r);
        }
        Ok(replies)
    }

    /// Whether a reply was a cluster redirection (`-MOVED`, `-ASK`) since the last call.
    pub fn take_redirect(&mut self) -> bool {
        std::mem::take(&mut self.redirected)
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

/// Read a whole server into the canonical document (default options, no key ignored).
pub fn read_canonical(ep: &Endpoint) -> anyhow::Result<J> {
    LiveReader::connect(ep, ReadOptions::default())?.read_document()
}
