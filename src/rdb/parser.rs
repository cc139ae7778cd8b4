//! The streaming RDB parser: opcodes, object types and their encodings, RDB versions 1 to 12.

use super::collect::{Collector, Emit, Item, Limits};
use super::crc::crc64;
use super::elem::{parse_f64, Elem};
use super::error::{EncodingError, HandlerError, RdbError};
use super::listpack::ListpackIter;
use super::lzf;
use super::model::*;
use super::passthrough::read_value_undecoded;
use super::reader::{RdbReader, StrHeader};
use super::stream;
use super::ziplist::ZiplistIter;
use super::{intset, zipmap};
use bytes::Bytes;
use std::io::Read;

/// Highest RDB format version understood (Redis 7.4 / 8.0).
pub const MAX_RDB_VERSION: u32 = 12;

mod op {
    pub const SLOT_INFO: u8 = 244;
    pub const FUNCTION2: u8 = 245;
    pub const FUNCTION_PRE_GA: u8 = 246;
    pub const MODULE_AUX: u8 = 247;
    pub const IDLE: u8 = 248;
    pub const FREQ: u8 = 249;
    pub const AUX: u8 = 250;
    pub const RESIZEDB: u8 = 251;
    pub const EXPIRETIME_MS: u8 = 252;
    pub const EXPIRETIME: u8 = 253;
    pub const SELECTDB: u8 = 254;
    pub const EOF: u8 = 255;
}

/// Parser settings.
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// Keep the serialized bytes of each whole key (`Entry::raw`), so it can be moved with
    /// `RESTORE` without re-encoding.
    pub capture_raw: bool,
    /// Values whose decoded size exceeds this are delivered in chunks (default 8 MiB).
    pub big_value_bytes: usize,
    /// Maximum bytes per chunk of a big value (default 1 MiB).
    pub chunk_bytes: usize,
    /// Maximum elements per chunk of a big value (default 1024).
    pub chunk_elements: usize,
    /// Verify the CRC64 trailer (when it is not zero). Default true.
    pub verify_checksum: bool,
    /// With `capture_raw`, when the file's RDB version is at most this: values that are not
    /// big are not decoded but delivered as [`Value::Undecoded`] with their `raw` bytes (see
    /// [`super::passthrough`]). For a consumer that only forwards `raw` (RESTORE into a target
    /// of this RDB version) it saves most of the parse. 0 (the default): always decode.
    pub undecoded_up_to_version: u32,
    /// The input ends where the RDB ends (a file, or the relay's spool, which keeps the
    /// snapshot apart from the command stream): read ahead as far as the buffer allows. By
    /// default (false) only bytes certain to belong to the RDB are read, as on a replication
    /// socket where the command stream follows; that means many small reads on keys made of
    /// many small parts. [`RdbParser::unread`] tells what was read beyond the RDB.
    pub read_ahead: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            capture_raw: false,
            big_value_bytes: 8 << 20,
            chunk_bytes: 1 << 20,
            chunk_elements: 1024,
            verify_checksum: true,
            undecoded_up_to_version: 0,
            read_ahead: false,
        }
    }
}

/// What a completed parse found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseSummary {
    pub version: u32,
    /// Keys delivered (whole or big).
    pub keys: u64,
    /// Bytes consumed, trailer included.
    pub bytes: u64,
    /// The CRC64 trailer (RDB 5+).
    pub checksum: Option<u64>,
}

/// Streaming parser over any reader. It never reads past the CRC64 trailer (see
/// [`super::reader`]), so it can consume an RDB from a replication socket.
pub struct RdbParser<R: Read> {
    r: RdbReader<R>,
    opts: ParseOptions,
    version: u32,
    keys: u64,
}

fn is_object_type(t: u8) -> bool {
    t <= 7 || (9..=25).contains(&t)
}

/// The logical type of an RDB object type id.
pub fn key_type_of(t: u8) -> Option<KeyType> {
    use types::*;
    Some(match t {
        STRING => KeyType::String,
        LIST | LIST_ZIPLIST | LIST_QUICKLIST | LIST_QUICKLIST_2 => KeyType::List,
        SET | SET_INTSET | SET_LISTPACK => KeyType::Set,
        ZSET | ZSET_2 | ZSET_ZIPLIST | ZSET_LISTPACK => KeyType::ZSet,
        HASH
        | HASH_ZIPMAP
        | HASH_ZIPLIST
        | HASH_LISTPACK
        | HASH_METADATA_PRE_GA
        | HASH_LISTPACK_EX_PRE_GA
        | HASH_METADATA
        | HASH_LISTPACK_EX => KeyType::Hash,
        STREAM_LISTPACKS | STREAM_LISTPACKS_2 | STREAM_LISTPACKS_3 => KeyType::Stream,
        MODULE_PRE_GA | MODULE_2 => KeyType::Module,
        _ => return None,
    })
}

/// Largest valid hash-field expire time (ebuckets' 48-bit limit).
const EB_EXPIRE_TIME_MAX: u64 = 0x0000_FFFF_FFFF_FFFF;

impl<R: Read> RdbParser<R> {
    pub fn new(reader: R, opts: ParseOptions) -> Self {
        let verify = opts.verify_checksum;
        let mut r = RdbReader::new(reader, verify);
        r.read_ahead = opts.read_ahead;
        RdbParser {
            r,
            opts,
            version: 0,
            keys: 0,
        }
    }

    /// Bytes consumed from the reader so far.
    pub fn position(&self) -> u64 {
        self.r.position()
    }

    /// Bytes read from the input but not consumed: after `run`, what followed the RDB within
    /// the read-ahead (always 0 without [`ParseOptions::read_ahead`]).
    pub fn unread(&self) -> usize {
        self.r.buffered().len()
    }

    /// The RDB version from the header (0 before it was read).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The underlying reader (positioned right after the trailer once `run` succeeded).
    pub fn into_inner(self) -> R {
        self.r.into_inner()
    }

    /// Parse to the EOF opcode (and the CRC64 trailer), calling `on_event` for each event in
    /// file order. An error from `on_event` aborts the parse and is returned inside
    /// [`RdbError`].
    pub fn run<F>(&mut self, mut on_event: F) -> Result<ParseSummary, RdbError>
    where
        F: FnMut(Event) -> Result<(), HandlerError>,
    {
        let emit: &mut Emit<'_> = &mut on_event;
        self.r.tail = 0;
        self.r.expect(9);
        let hdr = self.r.array::<9>()?;
        if &hdr[..5] != b"REDIS" {
            return Err(RdbError::corrupt(0, "not an RDB file (no REDIS magic)"));
        }
        let version = std::str::from_utf8(&hdr[5..])
            .ok()
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| RdbError::corrupt(5, "invalid RDB version digits"))?;
        if version == 0 || version > MAX_RDB_VERSION {
            return Err(RdbError::unsupported(
                5,
                format!("RDB version {version} (this parser knows 1 to {MAX_RDB_VERSION})"),
            ));
        }
        self.version = version;
        self.r.tail = if version >= 5 { 9 } else { 1 };
        self.emit(emit, Event::Header { version })?;

        let mut db: u64 = 0;
        let mut expire: Option<i64> = None;
        let mut idle: Option<u64> = None;
        let mut freq: Option<u8> = None;
        loop {
            self.r.expect(0);
            let at = self.r.position();
            let t = self.r.u8()?;
            match t {
                op::EOF => break,
                op::SELECTDB => {
                    db = self.r.plain_len()?;
                    self.emit(emit, Event::SelectDb { db })?;
                }
                op::EXPIRETIME => {
                    let s = i32::from_le_bytes(self.r.array::<4>()?);
                    expire = Some(i64::from(s) * 1000);
                }
                op::EXPIRETIME_MS => {
                    expire = Some(i64::from_le_bytes(self.r.array::<8>()?));
                }
                op::RESIZEDB => {
                    let db_size = self.r.plain_len()?;
                    let expires_size = self.r.plain_len()?;
                    self.emit(
                        emit,
                        Event::ResizeDb {
                            db_size,
                            expires_size,
                        },
                    )?;
                }
                op::SLOT_INFO => {
                    let slot_id = self.r.plain_len()?;
                    let slot_size = self.r.plain_len()?;
                    let expires_slot_size = self.r.plain_len()?;
                    self.emit(
                        emit,
                        Event::SlotInfo {
                            slot_id,
                            slot_size,
                            expires_slot_size,
                        },
                    )?;
                }
                op::AUX => {
                    let key = self.r.string()?;
                    let value = self.r.string()?;
                    self.emit(emit, Event::Aux { key, value })?;
                }
                op::FREQ => freq = Some(self.r.u8()?),
                op::IDLE => idle = Some(self.r.plain_len()?),
                op::MODULE_AUX => {
                    self.r.start_record(&[]);
                    let module_id = self.r.plain_len()?;
                    let when_op = self.r.plain_len()?;
                    if when_op != 2 {
                        self.r.stop_record();
                        return Err(RdbError::corrupt(at, "MODULE_AUX: bad 'when' opcode"));
                    }
                    let _when = self.r.plain_len()?;
                    let walked = self.walk_module_value(&module_name(module_id));
                    let raw = self.r.take_record().unwrap_or_default();
                    walked?;
                    self.emit(emit, Event::ModuleAux { module_id, raw })?;
                }
                op::FUNCTION2 => {
                    let code = self.r.string()?;
                    self.emit(emit, Event::Function(FunctionLibrary { code }))?;
                }
                op::FUNCTION_PRE_GA => {
                    // 7.0 release candidates: name, engine, optional description, body. Redis
                    // rebuilds the code as "#!<engine> name=<name>\n<body>", the engine name as
                    // written (FUNCTION LIST then shows e.g. "#!LUA name=lib").
                    let name = self.r.string()?;
                    let engine = self.r.string()?;
                    if self.r.plain_len()? != 0 {
                        self.r.skip_string()?;
                    }
                    let body = self.r.string()?;
                    let mut code = Vec::with_capacity(body.len() + name.len() + 16);
                    code.extend_from_slice(b"#!");
                    code.extend_from_slice(&engine);
                    code.extend_from_slice(b" name=");
                    code.extend_from_slice(&name);
                    code.push(b'\n');
                    code.extend_from_slice(&body);
                    self.emit(
                        emit,
                        Event::Function(FunctionLibrary {
                            code: Bytes::from(code),
                        }),
                    )?;
                }
                t if is_object_type(t) => {
                    let key = self.r.string()?;
                    let key_type = key_type_of(t).unwrap_or(KeyType::Module);
                    let meta = KeyMeta {
                        db,
                        key: key.clone(),
                        rdb_type: t,
                        key_type,
                        expire_ms: expire.take(),
                        idle: idle.take(),
                        freq: freq.take(),
                    };
                    self.read_object(t, meta, emit)
                        .map_err(|e| e.in_key(&key, t))?;
                    self.keys += 1;
                }
                _ => {
                    return Err(RdbError::corrupt(
                        at,
                        format!("unknown opcode or object type {t}"),
                    ));
                }
            }
        }

        let mut checksum = None;
        if self.version >= 5 {
            let computed = self.r.checksum_so_far();
            self.r.disable_checksum();
            self.r.tail = 0;
            let at = self.r.position();
            self.r.expect(8);
            let stored = u64::from_le_bytes(self.r.array::<8>()?);
            if let Some(c) = computed {
                if stored != 0 && c != stored {
                    return Err(RdbError {
                        offset: at,
                        context: None,
                        kind: super::error::RdbErrorKind::Checksum {
                            stored,
                            computed: c,
                        },
                    });
                }
            }
            checksum = Some(stored);
        }
        self.emit(emit, Event::End { checksum })?;
        Ok(ParseSummary {
            version: self.version,
            keys: self.keys,
            bytes: self.r.position(),
            checksum,
        })
    }

    #[inline]
    fn emit(&self, emit: &mut Emit<'_>, ev: Event) -> Result<(), RdbError> {
        emit(ev).map_err(|e| RdbError::handler(self.r.position(), e))
    }

    fn limits(&self) -> Limits {
        Limits {
            big: self.opts.big_value_bytes,
            chunk_bytes: self.opts.chunk_bytes.max(1),
            chunk_elems: self.opts.chunk_elements.max(1),
        }
    }

    fn read_object(&mut self, t: u8, meta: KeyMeta, emit: &mut Emit<'_>) -> Result<(), RdbError> {
        let record = self.opts.capture_raw || t == types::MODULE_2;
        if record {
            self.r.start_record(&[t]);
        }
        let lim = self.limits();
        let res = if self.opts.capture_raw && self.version <= self.opts.undecoded_up_to_version {
            read_value_undecoded(&mut self.r, t, meta, lim, emit)
        } else {
            read_value(&mut self.r, t, meta, lim, emit)
        };
        self.r.stop_record();
        res
    }

    fn walk_module_value(&mut self, name: &str) -> Result<(), RdbError> {
        walk_module(&mut self.r, name)
    }
}

/// Walk a MODULE_2 value body (after the module id) to its EOF opcode.
fn walk_module<R: Read>(r: &mut RdbReader<R>, name: &str) -> Result<(), RdbError> {
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
        HASH_METADATA | HASH_METADATA_PRE_GA => {
            let mut min_expire = 0u64;
            if t == HASH_METADATA {
                let at = r.position();
                min_expire = r.millis()?;
                if min_expire > EB_EXPIRE_TIME_MAX + 1 {
                    return Err(RdbError::corrupt(
                        at,
                        "hash minimum field expire time out of range",
                    ));
                }
            }
            let mut c = Collector::new(meta, Value::Hash(Vec::new()), lim);
            let n = r.count(3)?;
            for _ in 0..n {
                let at = r.position();
                let ttl = r.plain_len()?;
                let expire_at = if t == HASH_METADATA {
                    if ttl == 0 {
                        0
                    } else {
                        ttl.checked_add(min_expire)
                            .and_then(|v| v.checked_sub(1))
                            .unwrap_or(u64::MAX)
                    }
                } else {
                    ttl
                };
                if expire_at > EB_EXPIRE_TIME_MAX {
                    return Err(RdbError::corrupt(
                        at,
                        format!("invalid hash field expire time {expire_at}"),
                    ));
                }
                let field = r.string()?;
                let value = r.string()?;
                let expire_ms = if expire_at == 0 {
                    None
                } else {
                    Some(expire_at as i64)
                };
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
            }
            finish(r, c, None, emit)
        }
        STREAM_LISTPACKS | STREAM_LISTPACKS_2 | STREAM_LISTPACKS_3 => {
            read_stream(r, t, meta, lim, emit)
        }
        MODULE_PRE_GA => Err(RdbError::unsupported(
            r.position(),
            "pre-GA module value (RDB type 6) cannot be parsed without the module",
        )),
        MODULE_2 => {
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
        _ => Err(RdbError::corrupt(
            r.position(),
            format!("unknown object type {t}"),
        )),
    }
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
        let s = match it.next() {
            Some(s) => s.map_err(|e| RdbError::encoding(at, e))?,
            None => return Err(RdbError::corrupt(at, "sorted set member without a score")),
        };
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
        let v = match it.next() {
            Some(v) => v.map_err(|e| RdbError::encoding(at, e))?,
            None => return Err(RdbError::corrupt(at, "hash field without a value")),
        };
        let mut expire_ms = None;
        if with_ttl {
            let ttl = match it.next() {
                Some(x) => x.map_err(|e| RdbError::encoding(at, e))?,
                None => return Err(RdbError::corrupt(at, "hash field without a TTL slot")),
            };
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
        let ncons = r.count(10)?;
        let mut consumers = Vec::new();
        for _ in 0..ncons {
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
            consumers.push(Consumer {
                name: cname,
                seen_time_ms,
                active_time_ms,
                pel: cpel,
            });
        }
        groups.push(ConsumerGroup {
            name,
            last_delivered_id,
            entries_read,
            pel,
            consumers,
        });
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

/// Decode one DUMP/RESTORE payload (type byte + value + 2-byte RDB version + CRC64, CRC
/// verified) into a value. Used to check captured raw bytes and to read `DUMP` replies.
pub fn decode_dump_payload(payload: &[u8]) -> Result<(KeyType, Value), RdbError> {
    if payload.len() < 11 {
        return Err(RdbError::corrupt(0, "DUMP payload too short"));
    }
    let body_end = payload.len() - 10;
    let crc_at = payload.len() - 8;
    let stored = u64::from_le_bytes(payload[crc_at..].try_into().unwrap_or([0; 8]));
    let computed = crc64(&payload[..crc_at]);
    if stored != computed {
        return Err(RdbError {
            offset: crc_at as u64,
            context: None,
            kind: super::error::RdbErrorKind::Checksum { stored, computed },
        });
    }
    let version = u32::from(u16::from_le_bytes([
        payload[body_end],
        payload[body_end + 1],
    ]));
    if version > MAX_RDB_VERSION {
        return Err(RdbError::unsupported(
            body_end as u64,
            format!(
                "DUMP payload of RDB version {version} (this parser knows 1 to {MAX_RDB_VERSION})"
            ),
        ));
    }
    let body = &payload[..body_end];
    let key_type = key_type_of(body[0])
        .ok_or_else(|| RdbError::corrupt(0, format!("unknown object type {}", body[0])))?;
    Ok((key_type, decode_value_body(body, 0)?))
}

/// The value of a serialized string (`Entry::raw` of a string key): a slice of `body` when it
/// is stored plainly, else decoded (integer or LZF).
pub fn decode_string_body(body: &Bytes) -> Result<Bytes, RdbError> {
    if body.first() != Some(&types::STRING) {
        return Err(RdbError::corrupt(0, "not a serialized string"));
    }
    let (h, used) = super::reader::str_header_of(&body[1..])
        .ok_or_else(|| RdbError::corrupt(1, "invalid string header"))?;
    let at = 1 + used;
    let end = |n: u64| {
        usize::try_from(n)
            .ok()
            .and_then(|n| at.checked_add(n))
            .filter(|e| *e == body.len())
            .ok_or_else(|| RdbError::corrupt(at as u64, "string length does not match"))
    };
    match h {
        StrHeader::Raw(n) => Ok(body.slice(at..end(n)?)),
        StrHeader::Int(v) => Ok(super::reader::int_bytes(v)),
        StrHeader::Lzf { clen, ulen } => lzf::decompress(&body[at..end(clen)?], ulen)
            .map(Bytes::from)
            .map_err(|e| RdbError::encoding(at as u64, e)),
    }
}

/// Decode a serialized value: the type byte and the value, as in [`Entry::raw`] (a DUMP payload
/// without its version and CRC). `at` is its offset in the file, for error messages.
pub fn decode_value_body(body: &[u8], at: u64) -> Result<Value, RdbError> {
    let Some(&t) = body.first() else {
        return Err(RdbError::corrupt(at, "empty serialized value"));
    };
    let key_type =
        key_type_of(t).ok_or_else(|| RdbError::corrupt(at, format!("unknown object type {t}")))?;
    let mut r = RdbReader::new(body, false).at_offset(at);
    r.tail = 0;
    r.u8()?;
    let meta = KeyMeta {
        db: 0,
        key: Bytes::new(),
        rdb_type: t,
        key_type,
        expire_ms: None,
        idle: None,
        freq: None,
    };
    let lim = Limits {
        big: usize::MAX,
        chunk_bytes: usize::MAX,
        chunk_elems: usize::MAX,
    };
    let mut out = None;
    let mut sink = |ev: Event| -> Result<(), HandlerError> {
        if let Event::Entry(e) = ev {
            out = Some(e.value);
        }
        Ok(())
    };
    read_value(&mut r, t, meta, lim, &mut sink)?;
    let end = at + body.len() as u64;
    if r.position() != end {
        return Err(RdbError::corrupt(
            r.position(),
            "trailing bytes after the serialized value",
        ));
    }
    out.ok_or_else(|| RdbError::corrupt(at, "the serialized value produced no value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_bodies_decode_without_a_reader() {
        let cases: [(&[u8], &[u8]); 6] = [
            (b"\x00\x03bar", b"bar"),
            (b"\x00\x00", b""),
            (b"\x00\xc0\x85", b"-123"),
            (b"\x00\xc1\x39\x30", b"12345"),
            (b"\x00\xc2\x15\xcd\x5b\x07", b"123456789"),
            (b"\x00\x40\x02hi", b"hi"),
        ];
        for (body, want) in cases {
            let got = decode_string_body(&Bytes::copy_from_slice(body)).unwrap();
            assert_eq!(&got[..], want, "{body:?}");
        }
        // A 14-bit length must cover exactly the rest.
        assert!(decode_string_body(&Bytes::from_static(b"\x00\x40\x03hi")).is_err());
        assert!(decode_string_body(&Bytes::from_static(b"\x00\x05ab")).is_err());
        assert!(decode_string_body(&Bytes::from_static(b"\x02\x03bar")).is_err());
        assert!(decode_string_body(&Bytes::from_static(b"\x00\xc3")).is_err());
    }
}
