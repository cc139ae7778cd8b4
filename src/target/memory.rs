//! An in-memory target: the [`Writers`] trait on a model of Redis's keyspace instead of a
//! server.
//!
//! Why: the dispatcher and the stream apply decide what reaches the target, in which order, on
//! which writer, in which database and in which transaction. Checking that against a real Redis
//! needs a server per test and hides the order of batches behind the wire; this model applies
//! each batch's RESP payloads like a writer would (SELECT of the op's database, SELECTs inside
//! payloads, the exactly-once record `SET key value` in database 0) and keeps a log of every
//! batch per writer, so tests can assert contents and order without a server. A program that
//! wants a dry run (what would the relay write?) can hand the pipeline a `MemoryTarget` too
//! (with [`MemoryTarget::without_log`] when the commands themselves are not wanted).
//!
//! Each writer has a bounded queue of `capacity` batches. While the target runs, [`send`]
//! applies the batch at once, on the caller's thread, after whatever the queue still holds
//! (a writer applies its batches in order). While it is paused ([`MemoryTarget::pause`]),
//! batches wait in the queue, and `send` blocks once the queue is full: back-pressure, as a
//! writer pool's channel gives it. [`MemoryTarget::resume`] applies the queued batches and
//! wakes the senders.
//!
//! The model supports the commands listed in [`Model::execute`]; any other command, or wrong
//! arguments, leave an entry in the error log ([`MemoryTarget::errors`]) as a Redis error reply
//! would, and the batch goes on. Transactions never abort (a queue-time error of a real Redis
//! would abort the whole MULTI), and expiry times are recorded, never acted on.
//!
//! [`send`]: Writers::send

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use super::writer::{PoolError, WriterFailure};
use super::Writers;
use crate::batch::Batch;
use crate::resp::{ClientError, CommandFramer};

/// A value of the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(Bytes),
    List(VecDeque<Bytes>),
    Hash(BTreeMap<Bytes, Bytes>),
    Set(BTreeSet<Bytes>),
    /// Member to score.
    ZSet(BTreeMap<Bytes, f64>),
    /// The payload of a RESTORE, kept as it came (the model does not read DUMP payloads).
    Dumped(Bytes),
}

/// An expiry time recorded on a key (never acted on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Relative, in milliseconds (EXPIRE, PEXPIRE, SET EX/PX, RESTORE without ABSTTL).
    InMs(i64),
    /// Absolute, in Unix milliseconds (EXPIREAT, PEXPIREAT, SET EXAT/PXAT, RESTORE ABSTTL).
    AtMs(i64),
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn join<I: IntoIterator<Item = String>>(items: I) -> String {
    items.into_iter().collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => write!(f, "string {:?}", text(s)),
            Value::List(l) => write!(f, "list [{}]", join(l.iter().map(|e| text(e)))),
            Value::Hash(h) => write!(
                f,
                "hash {{{}}}",
                join(h.iter().map(|(k, v)| format!("{}={}", text(k), text(v))))
            ),
            Value::Set(s) => write!(f, "set {{{}}}", join(s.iter().map(|e| text(e)))),
            Value::ZSet(z) => write!(
                f,
                "zset {{{}}}",
                join(z.iter().map(|(m, s)| format!("{}:{s}", text(m))))
            ),
            Value::Dumped(p) => write!(f, "dumped {} bytes", p.len()),
        }
    }
}

/// The keyspace: database to key to value, and the expiry times recorded.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub dbs: BTreeMap<u32, BTreeMap<Bytes, Value>>,
    pub expiries: BTreeMap<u32, BTreeMap<Bytes, Expiry>>,
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
const NOT_INTEGER: &str = "ERR value is not an integer or out of range";

/// The error reply Redis would give, as text (`WRONGTYPE ...`, `ERR ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ErrorReply(pub String);

impl From<&str> for ErrorReply {
    fn from(s: &str) -> Self {
        ErrorReply(s.to_string())
    }
}

fn arity(name: &str) -> ErrorReply {
    ErrorReply(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

fn int(arg: &[u8]) -> Result<i64, ErrorReply> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ErrorReply::from(NOT_INTEGER))
}

fn float(arg: &[u8]) -> Result<f64, ErrorReply> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|f| !f.is_nan())
        .ok_or_else(|| ErrorReply::from("ERR value is not a valid float"))
}

impl Model {
    pub fn get(&self, db: u32, key: &[u8]) -> Option<&Value> {
        self.dbs.get(&db)?.get(key)
    }

    pub fn expiry(&self, db: u32, key: &[u8]) -> Option<Expiry> {
        self.expiries.get(&db)?.get(key).copied()
    }

    /// Every key as `<db> <key> <value>[ expire <expiry>]`, in database and key order.
    pub fn dump(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (db, keys) in &self.dbs {
            for (k, v) in keys {
                let mut line = format!("{db} {} {v}", text(k));
                if let Some(e) = self.expiry(*db, k) {
                    line.push_str(&format!(" expire {e:?}"));
                }
                out.push(line);
            }
        }
        out
    }

    fn remove(&mut self, db: u32, key: &[u8]) -> bool {
        if let Some(e) = self.expiries.get_mut(&db) {
            e.remove(key);
        }
        self.dbs
            .get_mut(&db)
            .is_some_and(|d| d.remove(key).is_some())
    }

    /// Store `value` under `key`, keeping its expiry time (as HSET, RPUSH... do).
    fn put(&mut self, db: u32, key: &Bytes, value: Value) {
        self.dbs.entry(db).or_default().insert(key.clone(), value);
    }

    fn set_expiry(&mut self, db: u32, key: &Bytes, e: Option<Expiry>) {
        match e {
            Some(e) => {
                self.expiries.entry(db).or_default().insert(key.clone(), e);
            }
            None => {
                if let Some(m) = self.expiries.get_mut(&db) {
                    m.remove(&key[..]);
                }
            }
        }
    }

    /// The value of `key`, created with `empty` when missing.
    fn value_or(&mut self, db: u32, key: &Bytes, empty: Value) -> &mut Value {
        self.dbs
            .entry(db)
            .or_default()
            .entry(key.clone())
            .or_insert(empty)
    }

    /// A collection left empty is deleted, as Redis does.
    fn prune(&mut self, db: u32, key: &[u8]) {
        let empty = match self.get(db, key) {
            Some(Value::List(l)) => l.is_empty(),
            Some(Value::Hash(h)) => h.is_empty(),
            Some(Value::Set(s)) => s.is_empty(),
            Some(Value::ZSet(z)) => z.is_empty(),
            _ => false,
        };
        if empty {
            self.remove(db, key);
        }
    }

    /// Run one command in `*db` (SELECT changes it). Supported: SELECT, SET (with EX, PX,
    /// EXAT, PXAT or KEEPTTL), MSET, DEL, UNLINK, INCR, INCRBY, DECR, DECRBY, APPEND, RPUSH,
    /// LPUSH, HSET, HMSET, HDEL, SADD, SREM, ZADD (with CH), ZREM, EXPIRE, PEXPIRE, EXPIREAT,
    /// PEXPIREAT, PERSIST, FLUSHDB, FLUSHALL, RESTORE (with REPLACE, ABSTTL). `Err` holds the
    /// error reply a Redis would give (or would not: an unknown command of the model).
    pub fn execute(&mut self, db: &mut u32, args: &[Bytes]) -> Result<(), ErrorReply> {
        let Some(name) = args.first() else {
            return Ok(());
        };
        let up = text(name).to_ascii_uppercase();
        match up.as_str() {
            "SELECT" | "FLUSHDB" | "FLUSHALL" | "DEL" | "UNLINK" | "RESTORE" => {
                self.keyspace(&up, db, args)
            }
            "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" | "PERSIST" => {
                self.expire(&up, *db, args)
            }
            "SET" | "MSET" | "INCR" | "INCRBY" | "DECR" | "DECRBY" | "APPEND" => {
                self.strings(&up, *db, args)
            }
            "RPUSH" | "LPUSH" | "HSET" | "HMSET" | "HDEL" | "SADD" | "SREM" | "ZADD" | "ZREM" => {
                self.collections(&up, *db, args)
            }
            _ => Err(ErrorReply(format!("ERR unknown command '{}'", text(name)))),
        }
    }

    fn keyspace(&mut self, up: &str, db: &mut u32, args: &[Bytes]) -> Result<(), ErrorReply> {
        match (up, args.len()) {
            ("SELECT", 2) => {
                *db = u32::try_from(int(&args[1])?)
                    .map_err(|_| ErrorReply::from("ERR DB index is out of range"))?;
            }
            ("FLUSHDB", 1 | 2) => {
                self.dbs.remove(db);
                self.expiries.remove(db);
            }
            ("FLUSHALL", 1 | 2) => {
                self.dbs.clear();
                self.expiries.clear();
            }
            ("DEL" | "UNLINK", n) if n >= 2 => {
                for k in &args[1..] {
                    self.remove(*db, k);
                }
            }
            ("RESTORE", n) if n >= 4 => {
                let ttl = int(&args[2])?;
                let opt = |o: &[u8]| args[4..].iter().any(|a| a.eq_ignore_ascii_case(o));
                if self.get(*db, &args[1]).is_some() && !opt(b"REPLACE") {
                    return Err("BUSYKEY Target key name already exists.".into());
                }
                self.put(*db, &args[1], Value::Dumped(args[3].clone()));
                let e = match (ttl, opt(b"ABSTTL")) {
                    (0, _) => None,
                    (t, true) => Some(Expiry::AtMs(t)),
                    (t, false) => Some(Expiry::InMs(t)),
                };
                self.set_expiry(*db, &args[1], e);
            }
            _ => return Err(arity(&up.to_ascii_lowercase())),
        }
        Ok(())
    }

    fn expire(&mut self, up: &str, db: u32, args: &[Bytes]) -> Result<(), ErrorReply> {
        let wanted = if up == "PERSIST" { 2 } else { 3 };
        if args.len() != wanted {
            return Err(arity(&up.to_ascii_lowercase()));
        }
        let e = match up {
            "PERSIST" => None,
            "EXPIRE" => Some(Expiry::InMs(int(&args[2])?.saturating_mul(1000))),
            "PEXPIRE" => Some(Expiry::InMs(int(&args[2])?)),
            "EXPIREAT" => Some(Expiry::AtMs(int(&args[2])?.saturating_mul(1000))),
            _ => Some(Expiry::AtMs(int(&args[2])?)),
        };
        // On a missing key these do nothing (and answer 0).
        if self.get(db, &args[1]).is_some() {
            self.set_expiry(db, &args[1], e);
        }
        Ok(())
    }

    fn strings(&mut self, up: &str, db: u32, args: &[Bytes]) -> Result<(), ErrorReply> {
        let n = args.len();
        match up {
            "SET" if n >= 3 => self.set(db, args),
            "MSET" if n >= 3 && n % 2 == 1 => {
                for kv in args[1..].chunks(2) {
                    self.put(db, &kv[0], Value::String(kv[1].clone()));
                    self.set_expiry(db, &kv[0], None);
                }
                Ok(())
            }
            "INCR" | "DECR" if n == 2 => self.incr(db, &args[1], if up == "INCR" { 1 } else { -1 }),
            "INCRBY" if n == 3 => self.incr(db, &args[1], int(&args[2])?),
            "DECRBY" if n == 3 => {
                let by = int(&args[2])?.checked_neg().ok_or(NOT_INTEGER)?;
                self.incr(db, &args[1], by)
            }
            "APPEND" if n == 3 => match self.value_or(db, &args[1], Value::String(Bytes::new())) {
                Value::String(s) => {
                    let mut v = s.to_vec();
                    v.extend_from_slice(&args[2]);
                    *s = Bytes::from(v);
                    Ok(())
                }
                _ => Err(WRONGTYPE.into()),
            },
            _ => Err(arity(&up.to_ascii_lowercase())),
        }
    }

    /// `SET key value [EX s | PX ms | EXAT s | PXAT ms | KEEPTTL]`.
    fn set(&mut self, db: u32, args: &[Bytes]) -> Result<(), ErrorReply> {
        let mut expiry = None;
        let mut keep = false;
        let mut it = args[3..].iter();
        while let Some(o) = it.next() {
            let o = text(o).to_ascii_uppercase();
            if o == "KEEPTTL" {
                keep = true;
                continue;
            }
            let (relative, scale) = match o.as_str() {
                "EX" => (true, 1000),
                "PX" => (true, 1),
                "EXAT" => (false, 1000),
                "PXAT" => (false, 1),
                _ => {
                    return Err(ErrorReply(format!(
                        "ERR SET option {o} is not in the in-memory target"
                    )))
                }
            };
            let n = int(it.next().ok_or("ERR syntax error")?)?.saturating_mul(scale);
            expiry = Some(if relative {
                Expiry::InMs(n)
            } else {
                Expiry::AtMs(n)
            });
        }
        self.put(db, &args[1], Value::String(args[2].clone()));
        if !keep {
            self.set_expiry(db, &args[1], expiry);
        }
        Ok(())
    }

    fn incr(&mut self, db: u32, key: &Bytes, by: i64) -> Result<(), ErrorReply> {
        match self.value_or(db, key, Value::String(Bytes::from_static(b"0"))) {
            Value::String(s) => {
                let n = int(s)?.checked_add(by).ok_or(NOT_INTEGER)?;
                *s = Bytes::from(n.to_string());
                Ok(())
            }
            _ => Err(WRONGTYPE.into()),
        }
    }

    fn collections(&mut self, up: &str, db: u32, args: &[Bytes]) -> Result<(), ErrorReply> {
        let n = args.len();
        let key = args.get(1).cloned().unwrap_or_default();
        let ok = match up {
            "RPUSH" | "LPUSH" | "SADD" | "SREM" | "HDEL" | "ZREM" => n >= 3,
            "HSET" | "HMSET" => n >= 4 && n.is_multiple_of(2),
            _ => n >= 4,
        };
        if !ok {
            return Err(arity(&up.to_ascii_lowercase()));
        }
        let items = &args[2..];
        let r = match up {
            "RPUSH" | "LPUSH" => self.push(db, &key, items, up == "LPUSH"),
            "HSET" | "HMSET" => match self.value_or(db, &key, Value::Hash(BTreeMap::new())) {
                Value::Hash(h) => {
                    for fv in items.chunks(2) {
                        h.insert(fv[0].clone(), fv[1].clone());
                    }
                    Ok(())
                }
                _ => Err(WRONGTYPE.into()),
            },
            "SADD" => match self.value_or(db, &key, Value::Set(BTreeSet::new())) {
                Value::Set(s) => {
                    s.extend(items.iter().cloned());
                    Ok(())
                }
                _ => Err(WRONGTYPE.into()),
            },
            "ZADD" => self.zadd(db, &key, items),
            _ => self.remove_members(db, &key, items),
        };
        self.prune(db, &key);
        r
    }

    fn push(
        &mut self,
        db: u32,
        key: &Bytes,
        items: &[Bytes],
        left: bool,
    ) -> Result<(), ErrorReply> {
        match self.value_or(db, key, Value::List(VecDeque::new())) {
            Value::List(l) => {
                for e in items {
                    if left {
                        l.push_front(e.clone());
                    } else {
                        l.push_back(e.clone());
                    }
                }
                Ok(())
            }
            _ => Err(WRONGTYPE.into()),
        }
    }

    /// `ZADD key [CH] score member [score member ...]`.
    fn zadd(&mut self, db: u32, key: &Bytes, items: &[Bytes]) -> Result<(), ErrorReply> {
        let items = match items.first() {
            Some(f) if f.eq_ignore_ascii_case(b"CH") => &items[1..],
            _ => items,
        };
        if items.is_empty() || !items.len().is_multiple_of(2) {
            return Err("ERR syntax error (the in-memory target has plain ZADD only)".into());
        }
        let pairs = items
            .chunks(2)
            .map(|p| Ok((p[1].clone(), float(&p[0])?)))
            .collect::<Result<Vec<_>, ErrorReply>>()?;
        match self.value_or(db, key, Value::ZSet(BTreeMap::new())) {
            Value::ZSet(z) => {
                z.extend(pairs);
                Ok(())
            }
            _ => Err(WRONGTYPE.into()),
        }
    }

    /// HDEL, SREM, ZREM: never create the key.
    fn remove_members(&mut self, db: u32, key: &Bytes, items: &[Bytes]) -> Result<(), ErrorReply> {
        let Some(v) = self.dbs.get_mut(&db).and_then(|d| d.get_mut(&key[..])) else {
            return Ok(());
        };
        match v {
            Value::Hash(h) => h.retain(|f, _| !items.contains(f)),
            Value::Set(s) => s.retain(|m| !items.contains(m)),
            Value::ZSet(z) => z.retain(|m, _| !items.contains(m)),
            _ => return Err(WRONGTYPE.into()),
        }
        Ok(())
    }
}

/// One op of an applied batch.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedOp {
    /// The database the op started in.
    pub db: u32,
    /// A master's transaction (the writer runs it as MULTI/EXEC when the batch is not one).
    pub atomic: bool,
    pub replayable: bool,
    /// The commands of its payload, SELECTs included.
    pub commands: Vec<Vec<Bytes>>,
}

/// A batch as a writer applied it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedBatch {
    /// The source's tracker name.
    pub source: String,
    pub start: u64,
    pub end: u64,
    /// Ran as one MULTI/EXEC with its record (a batch with bookkeeping and a non-replayable
    /// op); false for plain batches and batches without a record.
    pub transaction: bool,
    /// The exactly-once record written in database 0 after the ops: key and value.
    pub record: Option<(Bytes, Bytes)>,
    pub ops: Vec<AppliedOp>,
}

impl AppliedBatch {
    /// The commands of every op, in order (the record and the writer's SELECTs left out).
    pub fn commands(&self) -> Vec<Vec<Bytes>> {
        self.ops.iter().flat_map(|o| o.commands.clone()).collect()
    }
}

/// A command the model refused, as a Redis error reply would say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedCommand {
    pub writer: usize,
    /// The database the command ran in.
    pub db: u32,
    /// The command, arguments separated by spaces.
    pub command: String,
    pub reply: String,
}

#[derive(Default)]
struct State {
    model: Model,
    log: Vec<Vec<AppliedBatch>>,
    errors: Vec<RefusedCommand>,
}

struct Slot {
    queue: Mutex<VecDeque<Batch>>,
    space: Condvar,
}

/// The in-memory target (see the module documentation).
pub struct MemoryTarget {
    slots: Vec<Slot>,
    capacity: usize,
    keep_log: bool,
    paused: AtomicBool,
    failure: Mutex<Option<WriterFailure>>,
    state: Mutex<State>,
}

impl MemoryTarget {
    /// `writers` writers (at least one), each with a queue of `capacity` batches while paused
    /// (0: every send waits for [`Self::resume`] while paused).
    pub fn new(writers: usize, capacity: usize) -> MemoryTarget {
        let writers = writers.max(1);
        MemoryTarget {
            slots: (0..writers)
                .map(|_| Slot {
                    queue: Mutex::new(VecDeque::new()),
                    space: Condvar::new(),
                })
                .collect(),
            capacity,
            keep_log: true,
            paused: AtomicBool::new(false),
            failure: Mutex::new(None),
            state: Mutex::new(State {
                log: vec![Vec::new(); writers],
                ..State::default()
            }),
        }
    }

    /// Keep no log of applied batches (a dry run over a long stream).
    pub fn without_log(mut self) -> MemoryTarget {
        self.keep_log = false;
        self
    }

    /// Fail the target as a writer's fatal error would: every later (or waiting) `send`
    /// fails with it, queued batches are never applied, [`Writers::failure`] reports it.
    pub fn fail_with(&self, failure: WriterFailure) {
        self.failure.lock().get_or_insert(failure);
        for s in &self.slots {
            let _q = s.queue.lock();
            s.space.notify_all();
        }
    }

    /// Stop applying: batches wait in their writer's queue, `send` blocks on a full queue.
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Apply what the queues hold (unless the target failed) and wake the blocked senders.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        for (w, s) in self.slots.iter().enumerate() {
            let mut q = s.queue.lock();
            self.drain(w, &mut q);
            s.space.notify_all();
        }
    }

    /// Batches waiting in writer `w`'s queue.
    pub fn queued(&self, w: usize) -> usize {
        self.slots.get(w).map_or(0, |s| s.queue.lock().len())
    }

    pub fn get(&self, db: u32, key: &[u8]) -> Option<Value> {
        self.state.lock().model.get(db, key).cloned()
    }

    pub fn expiry(&self, db: u32, key: &[u8]) -> Option<Expiry> {
        self.state.lock().model.expiry(db, key)
    }

    /// The whole model, one line per key (see [`Model::dump`]).
    pub fn dump(&self) -> Vec<String> {
        self.state.lock().model.dump()
    }

    pub fn model(&self) -> Model {
        self.state.lock().model.clone()
    }

    /// The batches each writer applied, in order (index: writer).
    pub fn log(&self) -> Vec<Vec<AppliedBatch>> {
        self.state.lock().log.clone()
    }

    /// The commands the model refused, in the order they ran.
    pub fn errors(&self) -> Vec<RefusedCommand> {
        self.state.lock().errors.clone()
    }

    fn drain(&self, w: usize, q: &mut VecDeque<Batch>) {
        if self.failure.lock().is_some() {
            return;
        }
        while let Some(b) = q.pop_front() {
            self.apply(w, b);
        }
    }

    /// Run `batch` on the model as writer `w`, then acknowledge it to its tracker.
    fn apply(&self, w: usize, batch: Batch) {
        let mut st = self.state.lock();
        let st = &mut *st;
        let mut ops = Vec::with_capacity(batch.ops.len());
        let (mut commands, mut errors) = (0u64, 0u64);
        for op in &batch.ops {
            let mut db = op.db;
            let (cmds, bad) = parse_payload(&op.payload);
            if let Some(reply) = bad {
                errors += 1;
                st.errors.push(RefusedCommand {
                    writer: w,
                    db,
                    command: format!("{} payload bytes", op.payload.len()),
                    reply,
                });
            }
            for args in &cmds {
                commands += 1;
                let ran_in = db;
                if let Err(reply) = st.model.execute(&mut db, args) {
                    errors += 1;
                    st.errors.push(RefusedCommand {
                        writer: w,
                        db: ran_in,
                        command: command_text(args),
                        reply: reply.0,
                    });
                }
            }
            ops.push(AppliedOp {
                db: op.db,
                atomic: op.atomic,
                replayable: op.replayable,
                commands: cmds,
            });
        }
        let record = batch.bookkeeping.as_ref().map(|b| {
            let mut db0 = 0;
            let set = [Bytes::from_static(b"SET"), b.key.clone(), b.value.clone()];
            // A plain SET of the model cannot fail.
            let _ = st.model.execute(&mut db0, &set);
            (b.key.clone(), b.value.clone())
        });
        if self.keep_log {
            st.log[w].push(AppliedBatch {
                source: batch.tracker.name.clone(),
                start: batch.start,
                end: batch.end,
                transaction: batch.bookkeeping.as_ref().is_some_and(|b| b.transaction),
                record,
                ops,
            });
        }
        let t = &batch.tracker;
        t.commands_applied
            .fetch_add(commands + batch.folded(), Ordering::Relaxed);
        t.target_errors.fetch_add(errors, Ordering::Relaxed);
        t.acknowledged(w);
    }
}

/// The commands of a payload, and why its rest cannot be read (a protocol error, or a
/// command cut short), if it cannot: a Redis would close the connection.
fn parse_payload(payload: &Bytes) -> (Vec<Vec<Bytes>>, Option<String>) {
    let mut framer = CommandFramer::new();
    framer.push(payload);
    let mut out = Vec::new();
    loop {
        match framer.next_frame() {
            Ok(Some(frame)) => {
                if !frame.args.is_empty() {
                    out.push(frame.args);
                }
            }
            Ok(None) if framer.buffered() == 0 => return (out, None),
            Ok(None) => return (out, Some("ERR Protocol error: incomplete command".into())),
            Err(e) => return (out, Some(format!("ERR Protocol error: {e}"))),
        }
    }
}

fn command_text(args: &[Bytes]) -> String {
    args.iter().map(|a| text(a)).collect::<Vec<_>>().join(" ")
}

impl Writers for MemoryTarget {
    fn writers(&self) -> usize {
        self.slots.len()
    }

    fn send(&self, w: usize, batch: Batch) -> Result<(), PoolError> {
        let slot = self.slots.get(w).ok_or(PoolError::Stopped { writer: w })?;
        let mut q = slot.queue.lock();
        loop {
            if let Some(f) = self.failure.lock().clone() {
                return Err(PoolError::Failed(f));
            }
            if !self.paused.load(Ordering::SeqCst) {
                break;
            }
            if q.len() < self.capacity {
                q.push_back(batch);
                return Ok(());
            }
            slot.space.wait(&mut q);
        }
        // Running: what waits in the queue goes first (a writer applies in order).
        self.drain(w, &mut q);
        self.apply(w, batch);
        Ok(())
    }

    fn failure(&self) -> Option<WriterFailure> {
        self.failure.lock().clone()
    }

    /// Strings only, as MGET answers (nil for other types).
    fn read_db0(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ClientError> {
        let st = self.state.lock();
        Ok(keys
            .iter()
            .map(|k| match st.model.get(0, k.as_bytes()) {
                Some(Value::String(s)) => Some(s.clone()),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(m: &mut Model, db: &mut u32, cmd: &str) -> Result<(), ErrorReply> {
        let args: Vec<Bytes> = cmd
            .split(' ')
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        m.execute(db, &args)
    }

    #[test]
    fn the_model_runs_what_redis_would() {
        let mut m = Model::default();
        let mut db = 0;
        for c in [
            "MSET a 1 b 2",
            "INCRBY a 41",
            "APPEND b x",
            "LPUSH l 1 2",
            "RPUSH l 3",
            "HSET h f 1 g 2",
            "HDEL h f g",
            "SADD s x y",
            "SREM s x",
            "ZADD z CH 1.5 m",
            "EXPIRE a 10",
            "PEXPIREAT b 1700000000000",
            "SELECT 4",
            "RESTORE d 0 payload",
            "SET e v",
            "FLUSHDB",
            "RESTORE d 5 payload ABSTTL",
        ] {
            assert_eq!(run(&mut m, &mut db, c), Ok(()), "{c}");
        }
        assert_eq!(db, 4);
        assert_eq!(
            m.dump(),
            vec![
                "0 a string \"42\" expire InMs(10000)",
                "0 b string \"2x\" expire AtMs(1700000000000)",
                "0 l list [2, 1, 3]",
                "0 s set {y}",
                "0 z zset {m:1.5}",
                "4 d dumped 7 bytes expire AtMs(5)",
            ]
        );
        let err = |c: &str, m: &mut Model| run(m, &mut 0, c).unwrap_err().0;
        assert!(err("RESTORE a 0 p", &mut m).starts_with("BUSYKEY"));
        assert!(err("INCR l", &mut m).starts_with("WRONGTYPE"));
        assert!(err("INCR b", &mut m).starts_with("ERR value is not an integer"));
        assert!(err("SET a v NX", &mut m).contains("NX"));
        assert!(err("EVAL x 0", &mut m).starts_with("ERR unknown command"));
        assert_eq!(run(&mut m, &mut db, "FLUSHALL"), Ok(()));
        assert!(m.dump().is_empty());
    }
}
