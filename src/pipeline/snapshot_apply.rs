//! Snapshot events to ops: RESTORE where the target can load the source's payloads, plain
//! commands where it cannot, and always bounded commands for big keys.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::field_ttl::{count_dropped, UnsupportedPolicy};
use super::rewrite::{append_expire, append_value, RewriteTarget};
use crate::pipeline::filter::KeyFilter;
use crate::pipeline::Dispatcher;
use crate::rdb::{Crc64, Entry, Event, KeyMeta, KeyType, StreamId, Value};
use crate::resp::encode::encode_bulk;
use crate::target::commands::CommandBuf;

/// Append a DUMP/RESTORE payload as one argument: the serialized value, the 2-byte RDB version
/// and the CRC64 of both, little endian.
pub fn arg_dump_payload(c: &mut CommandBuf, raw: &[u8], rdb_version: u16) {
    let version = rdb_version.to_le_bytes();
    let mut crc = Crc64::new();
    crc.update(raw);
    crc.update(&version);
    c.arg_concat(&[raw, &version, &crc.value().to_le_bytes()]);
}

/// How snapshot keys are written.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Use RESTORE when the target's RDB version allows it.
    pub use_restore: bool,
    /// The target's RDB version and capabilities.
    pub target_rdb_version: u32,
    pub target_has_absttl: bool,
    pub target_version: (u32, u32),
    pub rewrite: RewriteTarget,
    /// Skip keys whose expire time has passed (they would vanish on arrival anyway).
    pub skip_expired: bool,
    /// Databases and keys copied, and where databases go (shared with the stream apply).
    pub filter: Arc<KeyFilter>,
    /// Keys under this prefix are the relay's own and never copied from a source.
    pub own_prefix: Bytes,
    /// `--on-unsupported-type`: hash field TTLs toward a target without them.
    pub on_unsupported_type: UnsupportedPolicy,
}

impl ApplyOptions {
    /// What [`ParseOptions::undecoded_up_to_version`](crate::rdb::ParseOptions) should be
    /// for this apply: values of RDBs that RESTORE can load need no decoding.
    pub fn undecoded_up_to_version(&self) -> u32 {
        if self.use_restore {
            self.target_rdb_version
        } else {
            0
        }
    }

    pub fn for_target(info: &crate::target::TargetInfo) -> Self {
        ApplyOptions {
            use_restore: true,
            target_rdb_version: info.rdb_version,
            target_has_absttl: info.has_absttl(),
            target_version: info.version_tuple(),
            rewrite: RewriteTarget::from_info(info),
            skip_expired: true,
            filter: Arc::default(),
            own_prefix: Bytes::from_static(crate::batch::record::DEFAULT_PREFIX.as_bytes()),
            on_unsupported_type: UnsupportedPolicy::Stop,
        }
    }
}

/// Counters of one snapshot load.
#[derive(Debug, Default, Clone)]
pub struct ApplyStats {
    pub keys: u64,
    pub restored: u64,
    pub rewritten: u64,
    pub big_keys: u64,
    pub expired_skipped: u64,
    /// Empty lists, sets, sorted sets and hashes (Redis skips them when it loads an RDB, and
    /// refuses them in RESTORE).
    pub empty_skipped: u64,
    pub skipped: u64,
    /// Keys under the relay's own prefix found in a snapshot (not copied).
    pub skipped_own: u64,
    /// Keys left out by the filter (`--db`, key prefixes and regexes).
    pub filtered: u64,
    pub functions: u64,
    /// String keys without expire time or LRU/LFU data, written in `MSET`s (not counted in
    /// `restored` or `rewritten`).
    pub mset: u64,
    /// Hash field TTLs not written (`--on-unsupported-type drop-ttl`, a target without them).
    pub field_ttls_dropped: u64,
}

/// Plain string keys gathered for one writer's next `MSET`.
#[derive(Default)]
struct StringRun {
    db: u32,
    /// The encoded key/value arguments.
    args: BytesMut,
    keys: usize,
}

/// An `MSET` goes once it holds this many keys...
const MSET_KEYS: usize = 256;
/// ...or this many bytes of arguments.
const MSET_BYTES: usize = 64 * 1024;

/// Turns the events of one RDB into ops on a dispatcher.
pub struct SnapshotApply {
    opts: ApplyOptions,
    source_rdb_version: u32,
    big: Option<BigKey>,
    pub stats: ApplyStats,
    /// The stream offset the snapshot corresponds to (ops are registered at it).
    offset: u64,
    /// Reused for each key's commands (they are copied into the writer's batch).
    scratch: CommandBuf,
    /// Per writer: plain string keys waiting for their `MSET`. One `MSET` of many keys costs
    /// the target far less than a `RESTORE` per key (no payload check, no RDB decoding, one
    /// command dispatch), and most keys of most datasets are such strings. (Not on a cluster
    /// target: see `push_string`.)
    strings: Vec<StringRun>,
}

struct BigKey {
    meta: KeyMeta,
    db: u32,
    writer: usize,
    first: bool,
    skip: bool,
    /// The first entry id of a big stream (its chunks come before its metadata).
    stream_first: Option<StreamId>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Dispatch(#[from] crate::pipeline::PipelineError),
    /// A key with hash field TTLs toward a target without them, under
    /// `--on-unsupported-type stop`.
    #[error("snapshot key {key:?} has {fields} hash field TTLs, which the target cannot hold (Redis 7.4+ and Valkey 9+ can): use such a target, or --on-unsupported-type drop-ttl to copy the fields without their TTLs")]
    FieldTtlUnsupported { key: String, fields: usize },
}

impl SnapshotApply {
    pub fn new(opts: ApplyOptions, offset: u64) -> Self {
        SnapshotApply {
            opts,
            source_rdb_version: 0,
            big: None,
            stats: ApplyStats::default(),
            offset,
            scratch: CommandBuf::new(),
            strings: Vec::new(),
        }
    }

    fn now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn expired(&self, meta: &KeyMeta) -> bool {
        self.opts.skip_expired && meta.expire_ms.is_some_and(|ms| ms <= Self::now_ms())
    }

    /// An empty command buffer (the reused one).
    fn buf(&mut self) -> CommandBuf {
        let mut c = std::mem::take(&mut self.scratch);
        c.clear();
        c
    }

    fn send(
        &mut self,
        d: &mut Dispatcher,
        w: usize,
        db: u32,
        cmds: CommandBuf,
    ) -> Result<(), ApplyError> {
        let res = d
            .push_commands(w, db, &cmds, self.offset, self.offset)
            .map_err(ApplyError::Dispatch);
        self.scratch = cmds;
        res
    }

    /// A command that acts on the node receiving it (SCRIPT LOAD, FUNCTION LOAD): to writer 0,
    /// or on a cluster target to every master.
    fn node_wide(&mut self, d: &mut Dispatcher, args: Vec<Bytes>) -> Result<(), ApplyError> {
        if d.slotted() {
            return Ok(d.every_master(0, vec![args], self.offset)?);
        }
        let mut c = self.buf();
        c.push(&args);
        self.send(d, 0, 0, c)
    }

    /// Handle one parser event.
    pub fn on_event(&mut self, ev: Event, d: &mut Dispatcher) -> Result<(), ApplyError> {
        match ev {
            Event::Header { version } => self.source_rdb_version = version,
            Event::Aux { key, value } if &key[..] == b"lua" => {
                // Scripts cached on a 4.0-6.2 master: load them so that later EVALSHAs work.
                self.node_wide(
                    d,
                    vec![
                        Bytes::from_static(b"SCRIPT"),
                        Bytes::from_static(b"LOAD"),
                        value,
                    ],
                )?;
            }
            Event::Function(lib) => {
                if self.opts.target_version >= (7, 0) {
                    let load = vec![
                        Bytes::from_static(b"FUNCTION"),
                        Bytes::from_static(b"LOAD"),
                        Bytes::from_static(b"REPLACE"),
                        lib.code.clone(),
                    ];
                    self.node_wide(d, load)?;
                    self.stats.functions += 1;
                } else {
                    tracing::warn!("the target is older than Redis 7.0 and has no functions: a function library is not copied");
                }
            }
            Event::Entry(entry) => self.entry(entry, d)?,
            Event::BigStart(meta) => self.big_start(meta, d)?,
            Event::BigChunk(value) => self.big_chunk(value, d)?,
            Event::BigEnd => self.big_end(d)?,
            Event::End { .. } => self.flush_strings(d)?,
            _ => {}
        }
        Ok(())
    }

    fn own_key(&mut self, key: &[u8]) -> bool {
        let own = !self.opts.own_prefix.is_empty() && key.starts_with(&self.opts.own_prefix);
        if own {
            self.stats.skipped_own += 1;
        }
        own
    }

    /// The target database of a key, or `None` when the filter leaves it out.
    fn map_db(&mut self, db: u64, key: &[u8]) -> Option<u32> {
        let f = &self.opts.filter;
        let mapped = u32::try_from(db)
            .ok()
            .and_then(|d| f.map_db(d))
            .filter(|_| f.key_allowed(key));
        if mapped.is_none() {
            self.stats.filtered += 1;
        }
        mapped
    }

    fn entry(&mut self, entry: Entry, d: &mut Dispatcher) -> Result<(), ApplyError> {
        self.stats.keys += 1;
        if self.left_out(&entry) {
            return Ok(());
        }
        let Some(db) = self.map_db(entry.meta.db, &entry.meta.key) else {
            return Ok(());
        };
        let w = d.writer_for(&entry.meta.key);
        if let Some(v) = plain_string(&entry) {
            return self.push_string(d, w, db, &entry.meta.key, &v);
        }
        self.field_ttls(&entry.meta.key, &entry.value)?;
        let mut c = self.buf();
        if !self.value_commands(&mut c, &entry, db) {
            return Ok(());
        }
        self.send(d, w, db, c)
    }

    /// Hash field TTLs in `value` (decoded: it goes as commands) toward a target without
    /// them: an error under `stop`, counted as dropped under `drop-ttl`.
    fn field_ttls(&mut self, key: &[u8], value: &Value) -> Result<(), ApplyError> {
        let Value::Hash(fields) = value else {
            return Ok(());
        };
        if self.opts.rewrite.field_ttl {
            return Ok(());
        }
        let n = fields.iter().filter(|f| f.expire_ms.is_some()).count();
        if n == 0 {
            return Ok(());
        }
        if self.opts.on_unsupported_type == UnsupportedPolicy::Stop {
            return Err(ApplyError::FieldTtlUnsupported {
                key: String::from_utf8_lossy(key).into_owned(),
                fields: n,
            });
        }
        self.stats.field_ttls_dropped += n as u64;
        count_dropped("snapshot", n as u64);
        Ok(())
    }

    /// Keys of the snapshot the target does not get: expired ones (counted), the relay's own,
    /// and empty collections (counted).
    fn left_out(&mut self, entry: &Entry) -> bool {
        if self.expired(&entry.meta) {
            self.stats.expired_skipped += 1;
            return true;
        }
        if self.own_key(&entry.meta.key) {
            return true;
        }
        if is_empty_collection(&entry.value) {
            // Redis never holds an empty collection: a loading server drops such keys
            // ("empty keys skipped"), and RESTORE refuses them as bad data.
            self.stats.empty_skipped += 1;
            return true;
        }
        false
    }

    /// The commands that recreate the key, into `c`: RESTORE of the source's payload where
    /// the target can load it, plain commands otherwise. `false` if the key is skipped.
    fn value_commands(&mut self, c: &mut CommandBuf, entry: &Entry, db: u32) -> bool {
        let restorable = self.opts.use_restore
            && crate::rdb::loads_rdb(self.opts.target_rdb_version, self.source_rdb_version);
        match (&entry.raw, restorable) {
            (Some(raw), true) => {
                self.push_restore(c, &entry.meta, raw);
                self.stats.restored += 1;
                true
            }
            _ => self.rewrite_value(c, entry, db),
        }
    }

    /// The key as plain commands (a DEL first for a collection, its TTL after). `false` if
    /// its value cannot be decoded or written as commands: logged, and the key skipped.
    fn rewrite_value(&mut self, c: &mut CommandBuf, entry: &Entry, db: u32) -> bool {
        let value = match entry.decoded_value() {
            Ok(v) => v,
            Err(e) => return self.skip_key(&entry.meta.key, db, e),
        };
        if entry.meta.key_type != KeyType::String {
            c.push(&[&b"DEL"[..], &entry.meta.key]);
        }
        match append_value(c, &entry.meta, &value, true, &self.opts.rewrite) {
            Ok(()) => {
                append_expire(c, &entry.meta);
                self.stats.rewritten += 1;
                true
            }
            Err(e) => self.skip_key(&entry.meta.key, db, e),
        }
    }

    /// Log why a key cannot be written and count it as skipped; `false`, for
    /// [`Self::rewrite_value`].
    fn skip_key(&mut self, key: &[u8], db: u32, e: impl std::fmt::Display) -> bool {
        tracing::error!(key = %String::from_utf8_lossy(key), db, "{e}");
        metrics::counter!("redis_relay_snapshot_keys_skipped_total").increment(1);
        self.stats.skipped += 1;
        false
    }

    /// Add a plain string key to writer `w`'s next `MSET`.
    fn push_string(
        &mut self,
        d: &mut Dispatcher,
        w: usize,
        db: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), ApplyError> {
        if d.slotted() {
            // A cluster target has 16384 writers (slots): runs per slot would hold nearly
            // every string of the snapshot until its end. The key goes in the slot's batch
            // now, where the batch's consecutive strings share one MSET.
            self.stats.mset += 1;
            return Ok(d.push_string(w, db, key, value, self.offset)?);
        }
        if self.strings.len() <= w {
            self.strings
                .resize_with(d.writers().max(w + 1), StringRun::default);
        }
        if self.strings[w].keys > 0 && self.strings[w].db != db {
            self.flush_string_run(d, w)?;
        }
        let run = &mut self.strings[w];
        run.db = db;
        encode_bulk(&mut run.args, key);
        encode_bulk(&mut run.args, value);
        run.keys += 1;
        self.stats.mset += 1;
        if run.keys >= MSET_KEYS || run.args.len() >= MSET_BYTES {
            self.flush_string_run(d, w)?;
        }
        Ok(())
    }

    fn flush_string_run(&mut self, d: &mut Dispatcher, w: usize) -> Result<(), ApplyError> {
        let run = &mut self.strings[w];
        if run.keys == 0 {
            return Ok(());
        }
        let (db, n) = (run.db, run.keys);
        let args = run.args.split();
        run.keys = 0;
        let mut c = self.buf();
        c.begin(1 + 2 * n);
        c.arg(b"MSET");
        c.raw_args(&args);
        self.send(d, w, db, c)
    }

    /// Send every pending `MSET` (at the end of the snapshot).
    fn flush_strings(&mut self, d: &mut Dispatcher) -> Result<(), ApplyError> {
        for w in 0..self.strings.len() {
            self.flush_string_run(d, w)?;
        }
        Ok(())
    }

    fn push_restore(&self, c: &mut CommandBuf, meta: &KeyMeta, raw: &[u8]) {
        let absttl = self.opts.target_has_absttl;
        let ttl = match meta.expire_ms {
            None => None,
            Some(ms) if absttl => Some(ms.to_string()),
            Some(ms) => Some((ms - Self::now_ms()).max(1).to_string()),
        };
        let idle = meta.idle.filter(|_| absttl).map(|i| i.to_string());
        let freq = meta.freq.filter(|_| absttl).map(|f| f.to_string());
        let args = 5
            + usize::from(absttl && ttl.is_some())
            + 2 * usize::from(idle.is_some())
            + 2 * usize::from(freq.is_some());
        c.reserve(raw.len() + meta.key.len() + 128);
        c.begin(args);
        c.arg(b"RESTORE");
        c.arg(&meta.key);
        c.arg(ttl.as_deref().map_or(b"0", str::as_bytes));
        arg_dump_payload(c, raw, self.source_rdb_version as u16);
        c.arg(b"REPLACE");
        if absttl && ttl.is_some() {
            c.arg(b"ABSTTL");
        }
        if let Some(i) = &idle {
            c.arg(b"IDLETIME");
            c.arg(i.as_bytes());
        }
        if let Some(f) = &freq {
            c.arg(b"FREQ");
            c.arg(f.as_bytes());
        }
    }

    fn big_start(&mut self, meta: KeyMeta, d: &mut Dispatcher) -> Result<(), ApplyError> {
        self.stats.keys += 1;
        self.stats.big_keys += 1;
        let skip_expired = self.expired(&meta);
        if skip_expired {
            self.stats.expired_skipped += 1;
        }
        let db = if skip_expired || self.own_key(&meta.key) {
            None
        } else {
            self.map_db(meta.db, &meta.key)
        };
        let w = d.writer_for(&meta.key);
        let mut c = self.buf();
        if let Some(db) = db {
            c.push(&[&b"DEL"[..], &meta.key]);
            d.require_record(w);
            self.send(d, w, db, c)?;
        }
        self.big = Some(BigKey {
            db: db.unwrap_or(0),
            skip: db.is_none(),
            meta,
            writer: w,
            first: true,
            stream_first: None,
        });
        Ok(())
    }

    fn big_chunk(&mut self, mut value: Value, d: &mut Dispatcher) -> Result<(), ApplyError> {
        let mut c = self.buf();
        let Some(big) = self.big.as_mut() else {
            return Ok(());
        };
        if big.skip {
            return Ok(());
        }
        if let Value::Stream(s) = &mut value {
            if big.stream_first.is_none() {
                big.stream_first = s.entries.first().map(|e| e.id);
            }
            if let Some(m) = s.meta.as_mut() {
                if m.first_id.is_none() && m.entries_added.is_none() {
                    m.first_id = big.stream_first;
                }
            }
        }

        if !self.opts.rewrite.field_ttl {
            let key = big.meta.key.clone();
            self.field_ttls(&key, &value)?;
        }
        let Some(big) = self.big.as_mut() else {
            return Ok(());
        };
        if let Err(e) = append_value(&mut c, &big.meta, &value, big.first, &self.opts.rewrite) {
            tracing::error!(key = %String::from_utf8_lossy(&big.meta.key), "{e}");
            big.skip = true;
            self.stats.skipped += 1;
            return Ok(());
        }
        big.first = false;
        let (w, db) = (big.writer, big.db);
        d.require_record(w);
        self.send(d, w, db, c)
    }

    fn big_end(&mut self, d: &mut Dispatcher) -> Result<(), ApplyError> {
        let Some(big) = self.big.take() else {
            return Ok(());
        };
        if big.skip {
            return Ok(());
        }
        self.stats.rewritten += 1;
        let mut c = self.buf();
        append_expire(&mut c, &big.meta);
        d.require_record(big.writer);
        self.send(d, big.writer, big.db, c)
    }
}

/// The value of a string key with nothing else to carry (no TTL, LRU or LFU data), which
/// can go in an `MSET`; `None` for any other key, or a string that cannot be decoded.
fn plain_string(entry: &Entry) -> Option<Bytes> {
    let m = &entry.meta;
    if m.key_type != KeyType::String
        || m.expire_ms.is_some()
        || m.idle.is_some()
        || m.freq.is_some()
    {
        return None;
    }
    match &entry.value {
        Value::String(v) => Some(v.clone()),
        _ => entry
            .raw
            .as_ref()
            .and_then(|r| crate::rdb::decode_string_body(r).ok()),
    }
}

/// Whether `v` is a list, set, sorted set or hash without elements (streams may be empty).
fn is_empty_collection(v: &Value) -> bool {
    match v {
        Value::List(l) => l.is_empty(),
        Value::Set(l) => l.is_empty(),
        Value::ZSet(l) => l.is_empty(),
        Value::Hash(l) => l.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_footer_matches_redis_dump() {
        // DUMP of the string "bar" on Redis 7.0 (RDB 10): \x00\x03bar\n\x00 + CRC64.
        let mut c = CommandBuf::new();
        arg_dump_payload(&mut c, b"\x00\x03bar", 10);
        let (p, _) = c.take();
        assert_eq!(&p[..4], b"$15\r");
        let body = &p[5..p.len() - 2];
        assert_eq!(&body[..7], b"\x00\x03bar\x0a\x00");
        assert_eq!(
            crate::rdb::decode_dump_payload(body).unwrap().1,
            Value::String(Bytes::from_static(b"bar"))
        );
        assert_eq!(crate::rdb::crc64(b"123456789"), 0xe9c6d914c4b8d9ca);
    }
}
