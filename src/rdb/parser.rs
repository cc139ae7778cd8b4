//! The streaming RDB parser: opcodes, object types and their encodings, RDB versions 1 to 12
//! (`REDIS00NN`) and Valkey's 80 (`VALKEY080`).

use super::collect::{Emit, Limits};
use super::crc::crc64;
use super::decode::{read_value, walk_module};
use super::error::{HandlerError, RdbError};
use super::lzf;
use super::model::*;
use super::passthrough::read_value_undecoded;
use super::reader::{RdbReader, StrHeader};
use bytes::Bytes;
use std::io::Read;

/// Highest RDB format version understood (Redis 7.4 / 8.0).
pub const MAX_RDB_VERSION: u32 = 12;

/// The Valkey RDB version understood (Valkey 9.0 / 9.1, `VALKEY080`). Valkey numbers its own
/// formats from 80 on and writes them with a `VALKEY` magic; 12 to 79 are Redis's (Valkey calls
/// them foreign). A Valkey 9 master sends it to a replica that declares `REPLCONF version 9.0.0`
/// (`source::handshake`), the only way it can send a hash with field TTLs.
pub const VALKEY_RDB_VERSION: u32 = 80;

/// Whether RDB `version` is one of Valkey's own formats (80 on), where type 22 is
/// Valkey's hash with field TTLs, not Redis 7.4's pre-GA hash metadata.
pub fn is_valkey_version(version: u32) -> bool {
    version >= VALKEY_RDB_VERSION
}

/// Whether a server that writes RDB `target` loads a payload of RDB `payload` (RESTORE, or a
/// snapshot): Redis and Valkey share the versions up to 11; from 12 on each has its own (Redis
/// 12 to 79, Valkey 80 on), which the other refuses or misreads (type 22 means different
/// things), however the numbers compare.
pub fn loads_rdb(target: u32, payload: u32) -> bool {
    let family = |v: u32| {
        if is_valkey_version(v) {
            2
        } else if v >= 12 {
            1
        } else {
            0
        }
    };
    payload <= target && (family(payload) == 0 || family(payload) == family(target))
}

/// The parser's type id for the object type byte `t` of an RDB of `version`: the same byte,
/// except Valkey's type 22, which becomes [`types::VALKEY_HASH_2`] so that it cannot be taken
/// for Redis's type 22. `None` for a byte that is no object type of that format.
pub fn object_type_in(version: u32, t: u8) -> Option<u8> {
    if is_valkey_version(version) {
        match t {
            types::HASH_METADATA_PRE_GA => Some(types::VALKEY_HASH_2),
            t if t <= 21 && is_object_type(t) => Some(t),
            _ => None,
        }
    } else {
        is_object_type(t).then_some(t)
    }
}

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
    /// of this RDB version) it saves most of the parse. 0 (the default): always decode;
    /// `u32::MAX`: pass through whatever the version (a consumer with no target, tests). A
    /// version is "at most this" as [`loads_rdb`] says: Redis's 12+ and Valkey's 80+ are
    /// separate lines.
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

/// What the opcodes before a key set for it: the current database, and the expire time and
/// LRU/LFU information that apply to the next key only.
#[derive(Default)]
struct KeyContext {
    db: u64,
    expire: Option<i64>,
    idle: Option<u64>,
    freq: Option<u8>,
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
        | HASH_LISTPACK_EX
        | VALKEY_HASH_2 => KeyType::Hash,
        STREAM_LISTPACKS | STREAM_LISTPACKS_2 | STREAM_LISTPACKS_3 => KeyType::Stream,
        MODULE_PRE_GA | MODULE_2 => KeyType::Module,
        _ => return None,
    })
}

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
        self.read_header(emit)?;
        let mut ctx = KeyContext::default();
        loop {
            self.r.expect(0);
            let at = self.r.position();
            let t = self.r.u8()?;
            if t == op::EOF {
                break;
            }
            self.read_opcode(t, at, &mut ctx, emit)?;
        }
        let checksum = self.read_trailer()?;
        self.emit(emit, Event::End { checksum })?;
        Ok(ParseSummary {
            version: self.version,
            keys: self.keys,
            bytes: self.r.position(),
            checksum,
        })
    }

    /// Read the `REDIS00NN` (or `VALKEY0NN`) header, check the version and announce it.
    fn read_header(&mut self, emit: &mut Emit<'_>) -> Result<(), RdbError> {
        self.r.tail = 0;
        self.r.expect(9);
        let hdr = self.r.array::<9>()?;
        let version = header_version(&hdr)?;
        self.version = version;
        self.r.tail = if version >= 5 { 9 } else { 1 };
        self.emit(emit, Event::Header { version })
    }

    /// Handle the opcode or object type `t` (read from `at`) that is not EOF: update `ctx`,
    /// emit what it announces, or read a key and its value.
    #[inline]
    fn read_opcode(
        &mut self,
        t: u8,
        at: u64,
        ctx: &mut KeyContext,
        emit: &mut Emit<'_>,
    ) -> Result<(), RdbError> {
        match t {
            op::SELECTDB => {
                ctx.db = self.r.plain_len()?;
                self.emit(emit, Event::SelectDb { db: ctx.db })?;
            }
            op::EXPIRETIME => {
                let s = i32::from_le_bytes(self.r.array::<4>()?);
                ctx.expire = Some(i64::from(s) * 1000);
            }
            op::EXPIRETIME_MS => {
                ctx.expire = Some(i64::from_le_bytes(self.r.array::<8>()?));
            }
            op::RESIZEDB => self.read_resize_db(emit)?,
            op::SLOT_INFO => self.read_slot_info(emit)?,
            op::AUX => {
                let key = self.r.string()?;
                let value = self.r.string()?;
                self.emit(emit, Event::Aux { key, value })?;
            }
            op::FREQ => ctx.freq = Some(self.r.u8()?),
            op::IDLE => ctx.idle = Some(self.r.plain_len()?),
            op::MODULE_AUX => self.read_module_aux(at, emit)?,
            op::FUNCTION2 => {
                let code = self.r.string()?;
                self.emit(emit, Event::Function(FunctionLibrary { code }))?;
            }
            op::FUNCTION_PRE_GA => self.read_function_pre_ga(emit)?,
            t if object_type_in(self.version, t).is_some() => self.read_key(t, ctx, emit)?,
            _ => {
                return Err(RdbError::corrupt(
                    at,
                    format!("unknown opcode or object type {t}"),
                ));
            }
        }
        Ok(())
    }

    /// RESIZEDB: the sizes of the database's main and expires tables (a hint).
    fn read_resize_db(&mut self, emit: &mut Emit<'_>) -> Result<(), RdbError> {
        let db_size = self.r.plain_len()?;
        let expires_size = self.r.plain_len()?;
        self.emit(
            emit,
            Event::ResizeDb {
                db_size,
                expires_size,
            },
        )
    }

    /// SLOT_INFO: the sizes of one cluster slot's tables (a hint).
    fn read_slot_info(&mut self, emit: &mut Emit<'_>) -> Result<(), RdbError> {
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
        )
    }

    /// MODULE_AUX (opcode read from `at`): module id, `when` opcode, then a module value,
    /// delivered as its raw bytes.
    fn read_module_aux(&mut self, at: u64, emit: &mut Emit<'_>) -> Result<(), RdbError> {
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
        self.emit(emit, Event::ModuleAux { module_id, raw })
    }

    /// The FUNCTION opcode of the 7.0 release candidates: name, engine, optional description,
    /// body. Redis rebuilds the code as "#!<engine> name=<name>\n<body>", the engine name as
    /// written (FUNCTION LIST then shows e.g. "#!LUA name=lib").
    fn read_function_pre_ga(&mut self, emit: &mut Emit<'_>) -> Result<(), RdbError> {
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
        )
    }

    /// A key of object type byte `wire` and its value; it takes the expire time and LRU/LFU
    /// information `ctx` holds for it.
    #[inline]
    fn read_key(
        &mut self,
        wire: u8,
        ctx: &mut KeyContext,
        emit: &mut Emit<'_>,
    ) -> Result<(), RdbError> {
        let t = object_type_in(self.version, wire).unwrap_or(wire);
        let key = self.r.string()?;
        let key_type = key_type_of(t).unwrap_or(KeyType::Module);
        let meta = KeyMeta {
            db: ctx.db,
            key: key.clone(),
            rdb_type: t,
            key_type,
            expire_ms: ctx.expire.take(),
            idle: ctx.idle.take(),
            freq: ctx.freq.take(),
        };
        self.read_object(wire, t, meta, emit)
            .map_err(|e| e.in_key(&key, wire))?;
        self.keys += 1;
        Ok(())
    }

    /// The CRC64 trailer (RDB 5+), checked against the checksum of what was read unless it
    /// is zero.
    fn read_trailer(&mut self) -> Result<Option<u64>, RdbError> {
        if self.version < 5 {
            return Ok(None);
        }
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
        Ok(Some(stored))
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

    /// The value of a key: `wire` is its type byte in the file (the raw bytes start with it,
    /// as a DUMP payload of that RDB version does), `t` the parser's type id.
    fn read_object(
        &mut self,
        wire: u8,
        t: u8,
        meta: KeyMeta,
        emit: &mut Emit<'_>,
    ) -> Result<(), RdbError> {
        let record = self.opts.capture_raw || t == types::MODULE_2;
        if record {
            self.r.start_record(&[wire]);
        }
        let lim = self.limits();
        let res = if self.opts.capture_raw
            && (self.opts.undecoded_up_to_version == u32::MAX
                || loads_rdb(self.opts.undecoded_up_to_version, self.version))
        {
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
    if version > MAX_RDB_VERSION && version != VALKEY_RDB_VERSION {
        return Err(RdbError::unsupported(
            body_end as u64,
            format!("DUMP payload of RDB version {version} ({})", KNOWN_VERSIONS),
        ));
    }
    let t = object_type_in(version, payload[0])
        .ok_or_else(|| RdbError::corrupt(0, format!("unknown object type {}", payload[0])))?;
    let key_type =
        key_type_of(t).ok_or_else(|| RdbError::corrupt(0, format!("unknown object type {t}")))?;
    if t == payload[0] {
        return Ok((key_type, decode_value_body(&payload[..body_end], 0)?));
    }
    let mut body = payload[..body_end].to_vec();
    body[0] = t;
    Ok((key_type, decode_value_body(&body, 0)?))
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

impl Entry {
    /// The value, decoded from `raw` when the parser passed it through undecoded.
    pub fn decoded_value(&self) -> Result<std::borrow::Cow<'_, Value>, RdbError> {
        match (&self.value, &self.raw) {
            (Value::Undecoded, Some(raw)) => decode_value_body(raw, 0).map(std::borrow::Cow::Owned),
            (Value::Undecoded, None) => {
                Err(RdbError::corrupt(0, "value neither decoded nor captured"))
            }
            (v, _) => Ok(std::borrow::Cow::Borrowed(v)),
        }
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

/// What the version checks say this parser knows.
const KNOWN_VERSIONS: &str = "this parser knows REDIS 1 to 12 and VALKEY 80";

fn known_version(version: u32) -> bool {
    (1..=MAX_RDB_VERSION).contains(&version) || version == VALKEY_RDB_VERSION
}

/// The RDB version of a 9-byte header: `REDIS` and 4 digits (versions up to 79), or `VALKEY`
/// and 3 digits (80 on). A version under the other magic is refused, as Valkey refuses it.
pub fn header_version(hdr: &[u8; 9]) -> Result<u32, RdbError> {
    let (digits, valkey) = if hdr.starts_with(b"REDIS") {
        (&hdr[5..], false)
    } else if hdr.starts_with(b"VALKEY") {
        (&hdr[6..], true)
    } else {
        return Err(RdbError::corrupt(
            0,
            "not an RDB file (no REDIS or VALKEY magic)",
        ));
    };
    let version = std::str::from_utf8(digits)
        .ok()
        .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or_else(|| RdbError::corrupt(9 - digits.len() as u64, "invalid RDB version digits"))?;
    if valkey != is_valkey_version(version) {
        let magic = if valkey { "VALKEY" } else { "REDIS" };
        return Err(RdbError::corrupt(
            0,
            format!("RDB version {version} cannot be written with the {magic} magic"),
        ));
    }
    if !known_version(version) {
        let at = if valkey { 6 } else { 5 };
        return Err(RdbError::unsupported(
            at,
            format!("RDB version {version} ({KNOWN_VERSIONS})"),
        ));
    }
    Ok(version)
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn headers_of_both_families() {
        assert_eq!(header_version(b"REDIS0011").unwrap(), 11);
        assert_eq!(header_version(b"REDIS0012").unwrap(), 12);
        assert_eq!(header_version(b"VALKEY080").unwrap(), 80);
        // Each magic with the other's versions is refused, as Valkey refuses it.
        assert!(header_version(b"VALKEY011").is_err());
        assert!(header_version(b"REDIS0080").is_err());
        // A newer Valkey format (81: types this parser does not know) is named.
        let e = header_version(b"VALKEY081").unwrap_err().to_string();
        assert!(e.contains("81") && e.contains("VALKEY 80"), "{e}");
        assert!(header_version(b"MEMCACHED").is_err());
    }

    #[test]
    fn which_server_loads_which_payload() {
        assert!(loads_rdb(12, 11) && loads_rdb(80, 11) && loads_rdb(11, 9));
        assert!(loads_rdb(80, 80) && loads_rdb(12, 12));
        assert!(
            !loads_rdb(80, 12),
            "Valkey 9 does not load Redis 7.4+ payloads"
        );
        assert!(!loads_rdb(12, 80), "Redis does not load Valkey 9 payloads");
        assert!(!loads_rdb(11, 12) && !loads_rdb(10, 11));
    }

    #[test]
    fn type_22_depends_on_the_format() {
        assert_eq!(object_type_in(12, 22), Some(types::HASH_METADATA_PRE_GA));
        assert_eq!(object_type_in(80, 22), Some(types::VALKEY_HASH_2));
        assert_eq!(object_type_in(80, 24), None);
        assert_eq!(object_type_in(80, 4), Some(types::HASH));
    }
}
