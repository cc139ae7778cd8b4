//! What the RDB parser yields: events in file order, and the logical values they carry.
//!
//! The parser never holds a whole big value: a key whose value is larger than the configured
//! threshold is announced with [`Event::BigStart`], delivered as a series of [`Event::BigChunk`]s
//! (each a partial [`Value`] to be *appended* to what came before), and closed by
//! [`Event::BigEnd`]. Every other key arrives whole as one [`Event::Entry`], with its raw
//! serialized bytes when the caller asked for them (the body of a `DUMP`/`RESTORE` payload).

use bytes::Bytes;

/// RDB object type ids (the byte that precedes a key in the file and starts a DUMP payload).
pub mod types {
    pub const STRING: u8 = 0;
    pub const LIST: u8 = 1;
    pub const SET: u8 = 2;
    pub const ZSET: u8 = 3;
    pub const HASH: u8 = 4;
    pub const ZSET_2: u8 = 5;
    pub const MODULE_PRE_GA: u8 = 6;
    pub const MODULE_2: u8 = 7;
    pub const HASH_ZIPMAP: u8 = 9;
    pub const LIST_ZIPLIST: u8 = 10;
    pub const SET_INTSET: u8 = 11;
    pub const ZSET_ZIPLIST: u8 = 12;
    pub const HASH_ZIPLIST: u8 = 13;
    pub const LIST_QUICKLIST: u8 = 14;
    pub const STREAM_LISTPACKS: u8 = 15;
    pub const HASH_LISTPACK: u8 = 16;
    pub const ZSET_LISTPACK: u8 = 17;
    pub const LIST_QUICKLIST_2: u8 = 18;
    pub const STREAM_LISTPACKS_2: u8 = 19;
    pub const SET_LISTPACK: u8 = 20;
    pub const STREAM_LISTPACKS_3: u8 = 21;
    pub const HASH_METADATA_PRE_GA: u8 = 22;
    pub const HASH_LISTPACK_EX_PRE_GA: u8 = 23;
    pub const HASH_METADATA: u8 = 24;
    pub const HASH_LISTPACK_EX: u8 = 25;
    /// Valkey 9's hash with field TTLs (its type byte 22 in a `VALKEY080` file, where 22 does
    /// not mean [`HASH_METADATA_PRE_GA`]). The parser's own id, never a byte of a file.
    pub const VALKEY_HASH_2: u8 = 150;
}

/// The logical type of a key, as `TYPE` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    String,
    List,
    Set,
    ZSet,
    Hash,
    Stream,
    Module,
}

impl KeyType {
    /// The name `TYPE` answers with (`module` for module values).
    pub fn name(self) -> &'static str {
        match self {
            KeyType::String => "string",
            KeyType::List => "list",
            KeyType::Set => "set",
            KeyType::ZSet => "zset",
            KeyType::Hash => "hash",
            KeyType::Stream => "stream",
            KeyType::Module => "module",
        }
    }
}

/// Everything known about a key before its value.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyMeta {
    /// The database selected by the last SELECTDB opcode (0 when none came yet).
    pub db: u64,
    pub key: Bytes,
    /// The RDB object type id (see [`types`]).
    pub rdb_type: u8,
    pub key_type: KeyType,
    /// Absolute expire time in unix milliseconds (EXPIRETIME seconds are converted).
    pub expire_ms: Option<i64>,
    /// LRU idle time in seconds (IDLE opcode).
    pub idle: Option<u64>,
    /// LFU frequency (FREQ opcode).
    pub freq: Option<u8>,
}

/// One field of a hash, with its own expire time (hash field TTLs, Redis 7.4+).
#[derive(Debug, Clone, PartialEq)]
pub struct HashField {
    pub field: Bytes,
    pub value: Bytes,
    /// Absolute expire time in unix milliseconds, if the field has one.
    pub expire_ms: Option<i64>,
}

/// A stream entry id `<ms>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamEntry {
    pub id: StreamId,
    /// Field/value pairs in entry order.
    pub fields: Vec<(Bytes, Bytes)>,
}

/// A pending (delivered, not acknowledged) entry of a consumer group.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingEntry {
    pub id: StreamId,
    pub delivery_time_ms: u64,
    pub delivery_count: u64,
    /// The consumer that owns it (from the consumers' own PEL lists); `None` only in a corrupt
    /// file where no consumer claims the entry.
    pub consumer: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Consumer {
    pub name: Bytes,
    pub seen_time_ms: u64,
    /// RDB stream v3 (Redis 7.2+) only.
    pub active_time_ms: Option<u64>,
    /// Ids of the entries this consumer owns, in id order.
    pub pel: Vec<StreamId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerGroup {
    pub name: Bytes,
    pub last_delivered_id: StreamId,
    /// RDB stream v2+ (Redis 7.0+); `None` when the file does not carry it or it is unknown.
    pub entries_read: Option<i64>,
    /// The group PEL in id order.
    pub pel: Vec<PendingEntry>,
    pub consumers: Vec<Consumer>,
}

/// Stream-level metadata; delivered once, after all entries.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StreamMeta {
    pub length: u64,
    pub last_id: StreamId,
    /// RDB stream v2+ only.
    pub first_id: Option<StreamId>,
    pub max_deleted_entry_id: Option<StreamId>,
    pub entries_added: Option<u64>,
    pub groups: Vec<ConsumerGroup>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamValue {
    /// Entries in id order (deleted entries are not included).
    pub entries: Vec<StreamEntry>,
    /// `Some` in a whole value and in the last chunk of a big stream; `None` in earlier chunks.
    pub meta: Option<StreamMeta>,
}

/// A logical value, or in a [`Event::BigChunk`] a part of one to append to the previous parts.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string (in a chunk: the next bytes of the string).
    String(Bytes),
    /// List elements in list order.
    List(Vec<Bytes>),
    /// Set members (in file order).
    Set(Vec<Bytes>),
    /// Sorted set members with scores (in file order).
    ZSet(Vec<(Bytes, f64)>),
    /// Hash fields (in file order).
    Hash(Vec<HashField>),
    Stream(Box<StreamValue>),
    /// A module value: only its raw serialized form can be moved (RESTORE with the module
    /// loaded on the target). `module_id` is the 64-bit id; its name is [`module_name`].
    Module {
        module_id: u64,
    },
    /// Not decoded: the parser was asked to pass values through
    /// ([`ParseOptions::undecoded_up_to_version`](super::ParseOptions)); `Entry::raw` holds
    /// it, [`Entry::decoded_value`] decodes it.
    Undecoded,
}

/// A whole key with a value small enough to hold in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub meta: KeyMeta,
    pub value: Value,
    /// The serialized value as it appears in the file, starting with the type byte: exactly the
    /// body of a DUMP payload (append the 2-byte RDB version and the CRC64 to make one).
    /// Present when the parser was asked to capture raw bytes.
    pub raw: Option<Bytes>,
}

/// One function library (FUNCTION2 opcode; also the pre-GA FUNCTION opcode).
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionLibrary {
    /// The library source, starting with `#!<engine> name=<library>`.
    pub code: Bytes,
}

/// Everything the parser reports, in file order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `REDIS00NN`: the RDB version NN.
    Header {
        version: u32,
    },
    /// An AUX field (`redis-ver`, `repl-id`, `lua`, ...).
    Aux {
        key: Bytes,
        value: Bytes,
    },
    SelectDb {
        db: u64,
    },
    ResizeDb {
        db_size: u64,
        expires_size: u64,
    },
    /// Redis cluster SLOT_INFO opcode (Redis 7.4+/8).
    SlotInfo {
        slot_id: u64,
        slot_size: u64,
        expires_slot_size: u64,
    },
    /// MODULE_AUX data, passed through raw (the bytes after the opcode).
    ModuleAux {
        module_id: u64,
        raw: Bytes,
    },
    Function(FunctionLibrary),
    /// A whole key.
    Entry(Entry),
    /// A key too big to hold whole begins; chunks follow, then [`Event::BigEnd`].
    BigStart(KeyMeta),
    /// The next part of the current big key's value.
    BigChunk(Value),
    /// The current big key is complete.
    BigEnd,
    /// The EOF opcode. `checksum` is the CRC64 trailer (RDB 5+), verified when not zero.
    End {
        checksum: Option<u64>,
    },
}

/// Decode the 9-character module type name from a 64-bit module id (for messages).
pub fn module_name(module_id: u64) -> String {
    const CHARSET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut id = module_id >> 10;
    let mut name = [0u8; 9];
    for slot in name.iter_mut().rev() {
        *slot = CHARSET[(id & 63) as usize];
        id >>= 6;
    }
    String::from_utf8_lossy(&name).into_owned()
}
