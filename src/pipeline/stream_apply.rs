//! The command stream of one source, after the snapshot: routed by key, in order per key.
//!
//! Replication-internal traffic (PING, REPLCONF) never reaches the target; SELECT becomes the
//! database of the following ops; MULTI ... EXEC travels as one op so the target applies it
//! atomically; anything that may touch several writers' keys runs as a barrier (everything
//! before it acknowledged first, and it acknowledged before anything after it is sent).

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::field_ttl::{
    count_dropped, is_field_ttl_command, rewrite_for_old_target, StreamRewrite, UnsupportedPolicy,
};

use bytes::{Bytes, BytesMut};

use super::cross_slot;
use super::dispatcher::Dispatcher;
use super::error::PipelineError;
use super::filter::{Filtered, KeyFilter};
use super::fold::ListRun;
use super::foreign_restore;
use super::keys::{command_keys, KeySpec};
use super::replayable::replayable;
use super::rewrite::RewriteTarget;
use crate::batch::Op;
use crate::resp::framer::Frame;
use crate::target::command_table::CommandTable;
use crate::target::writer::ErrorPolicy;

/// What the stream apply reports to its caller besides ops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Nothing special.
    None,
    /// `REPLCONF GETACK`: the master wants an ACK now.
    AckRequested,
    /// FLUSHDB (`Some(db)`) or FLUSHALL (`None`) on a target shared with other sources: the
    /// caller deletes only the keys proven to be this source's (`crate::target::deletion`),
    /// then calls [`super::Dispatcher::advance`] with `end`. Everything before it is applied.
    ScopedFlush { db: Option<u32>, end: u64 },
    /// The relay's own heartbeat (`SET <prefix>heartbeat:<source> <unix ms>[.<µs>]`, written
    /// on the source by the relay): not forwarded; the target has everything before it once
    /// the applied offset reaches `end`. The stamp in microseconds.
    Heartbeat { stamp_us: u64, end: u64 },
}

/// A heartbeat's stamp, `<unix ms>` or `<unix ms>.<µs, 3 digits>`, in microseconds.
pub fn parse_stamp(text: &str) -> Option<u64> {
    let (ms, us) = match text.split_once('.') {
        Some((ms, frac)) if frac.len() == 3 => (ms, frac.parse::<u64>().ok()?),
        Some(_) => return None,
        None => (text, 0),
    };
    ms.parse::<u64>().ok()?.checked_mul(1000)?.checked_add(us)
}

/// The text of a heartbeat's stamp for `unix_us` microseconds since the epoch.
pub fn format_stamp(unix_us: u64) -> String {
    format!("{}.{:03}", unix_us / 1000, unix_us % 1000)
}

/// Settings of the stream apply.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// Keys under this prefix belong to the relay and are never copied from a source.
    pub own_prefix: Bytes,
    /// Rewrite EVALSHA of a script seen earlier in the stream into EVAL (so a target that lost
    /// its script cache, or never saw the script, cannot answer NOSCRIPT).
    pub evalsha_to_eval: bool,
    /// Drop PUBLISH to Sentinel's hello channel.
    pub drop_sentinel_hello: bool,
    /// Commands never forwarded (upper case).
    pub exclude_commands: Vec<Vec<u8>>,
    /// Other writers share the target (FLUSHDB/FLUSHALL become proven deletions, SWAPDB
    /// affects the others' keys).
    pub shared_target: bool,
    /// Databases and keys copied (shared with the snapshot apply).
    pub filter: Arc<KeyFilter>,
    /// The target's command table: a command it would refuse at queue time is isolated here
    /// (`None`: not checked, the target has no `COMMAND`).
    pub target_commands: Option<Arc<CommandTable>>,
    /// What to do with such a command: skip it (counted, logged) or stop (`--on-target-error`).
    pub on_refused: ErrorPolicy,
    /// `--on-unsupported-type`: what hash field TTL commands become on the target.
    pub on_unsupported_type: UnsupportedPolicy,
    /// The target holds hash field TTLs (Redis 7.4+, Valkey 9+); set from the target's
    /// version when the relay starts.
    pub target_field_ttl: bool,
    /// The target's RDB version and what its commands express: a `RESTORE` whose payload it
    /// cannot load is rewritten as commands ([`super::foreign_restore`]). `None`: forwarded
    /// as it is.
    pub target_rdb: Option<(u32, RewriteTarget)>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            own_prefix: Bytes::from_static(crate::batch::record::DEFAULT_PREFIX.as_bytes()),
            evalsha_to_eval: true,
            drop_sentinel_hello: true,
            exclude_commands: Vec::new(),
            shared_target: false,
            filter: Arc::default(),
            target_commands: None,
            on_refused: ErrorPolicy::Skip,
            on_unsupported_type: UnsupportedPolicy::Stop,
            target_field_ttl: true,
            target_rdb: None,
        }
    }
}

/// Outcome of the database filter on one command.
enum DbFilter {
    /// Forward, in this target database.
    Keep(u32),
    /// Forward the rewritten arguments, in this target database.
    Rewritten(u32),
    /// Not forwarded.
    Drop,
    /// Forward this payload (with this many replies) instead, as a barrier.
    Replace(Bytes, u32),
}

struct MultiBlock {
    start: u64,
    db_at_start: u32,
    commands: Vec<Bytes>,
    /// The commands' arguments, kept only on a cluster target (a transaction spanning slots
    /// runs as a cross-slot unit, which needs them).
    args: Vec<Vec<Bytes>>,
    writer: Option<usize>,
    global: bool,
    selects: bool,
}

/// Counters of the stream apply.
#[derive(Debug, Default, Clone)]
pub struct StreamStats {
    pub commands: u64,
    pub forwarded: u64,
    pub internal: u64,
    pub barriers: u64,
    pub skipped_own_keys: u64,
    pub excluded: u64,
    /// Commands left out (or cut down) by the database and key filter.
    pub filtered: u64,
    /// Commands the target would refuse at queue time, left out (`--on-target-error skip`).
    pub refused: u64,
}

/// Applies one source's command stream.
pub struct StreamApply {
    opts: StreamOptions,
    /// The database the master's next command runs in.
    db: u32,
    /// Offset of the last byte processed.
    offset: u64,
    /// SELECTs seen, as (offset after the SELECT, db): to know the database in effect at any
    /// applied offset (what a checkpoint must store).
    selects: VecDeque<(u64, u32)>,
    multi: Option<MultiBlock>,
    scripts: HashMap<String, Bytes>,
    /// A FLUSHALL (or FLUSHDB of target database 0) was forwarded as is: the relay's own keys
    /// there (the target loss marker) went with it.
    own_keys_flushed: bool,
    pub stats: StreamStats,
}

fn upper_name(name: &[u8]) -> Vec<u8> {
    name.to_ascii_uppercase()
}

fn encode(args: &[Bytes]) -> Bytes {
    let mut b = BytesMut::new();
    crate::resp::encode_command(&mut b, args);
    b.freeze()
}

fn parse_db(arg: Option<&Bytes>) -> Option<u32> {
    std::str::from_utf8(arg?).ok()?.trim().parse().ok()
}

/// A database number as a command argument.
fn db_arg(db: u32) -> Bytes {
    Bytes::from(db.to_string().into_bytes())
}

/// SWAPDB under the database filter: both databases mapped to the target's, or not
/// forwarded when either is not copied.
fn filter_swapdb(f: &KeyFilter, db: u32, args: &mut [Bytes]) -> DbFilter {
    let (Some(a), Some(b)) = (parse_db(args.get(1)), parse_db(args.get(2))) else {
        return DbFilter::Drop;
    };
    match (f.map_db(a), f.map_db(b)) {
        (Some(ta), Some(tb)) => {
            args[1] = db_arg(ta);
            args[2] = db_arg(tb);
            DbFilter::Rewritten(db)
        }
        _ => {
            tracing::warn!(a, b, "SWAPDB with a database that is not copied: not forwarded; the target differs from the source until the next full sync");
            DbFilter::Drop
        }
    }
}

/// A command running in copied database `t` (target number): the database argument of MOVE
/// and COPY ... DB mapped to the target's (a MOVE out of what is copied becomes a DEL, a COPY
/// there is dropped).
fn filter_db_argument(f: &KeyFilter, up: &[u8], args: &mut Vec<Bytes>, t: u32) -> DbFilter {
    if up == b"MOVE" && args.len() == 3 {
        match parse_db(args.get(2)).map(|d| f.map_db(d)) {
            Some(Some(td)) => {
                args[2] = db_arg(td);
                return DbFilter::Rewritten(t);
            }
            // Moved out of what is copied: gone, as far as the target knows.
            Some(None) => {
                *args = vec![Bytes::from_static(b"DEL"), args[1].clone()];
                return DbFilter::Rewritten(t);
            }
            None => {}
        }
    }
    if up == b"COPY" {
        if let Some(i) = args.iter().position(|a| a.eq_ignore_ascii_case(b"DB")) {
            match parse_db(args.get(i + 1)).map(|d| f.map_db(d)) {
                Some(Some(td)) => {
                    args[i + 1] = db_arg(td);
                    return DbFilter::Rewritten(t);
                }
                Some(None) => return DbFilter::Drop,
                None => {}
            }
        }
    }
    DbFilter::Keep(t)
}

/// The writer every key of the command belongs to; `None` when they span writers or the
/// command has no keys to route by (a barrier).
#[inline]
fn route(spec: KeySpec<'_>, d: &Dispatcher) -> Option<usize> {
    match spec {
        KeySpec::Keys(keys) => {
            let first = d.writer_for(keys[0]);
            if keys.iter().all(|k| d.writer_for(k) == first) {
                Some(first)
            } else {
                None
            }
        }
        KeySpec::Channel(c) => Some(d.writer_for(c)),
        KeySpec::Global => None,
    }
}

impl MultiBlock {
    /// Gather one command of the transaction; the block stays on one writer only while
    /// every command routes there.
    #[inline]
    fn add(&mut self, raw: Bytes, route: Option<usize>) {
        self.commands.push(raw);
        match (route, self.writer) {
            (None, _) => self.global = true,
            (Some(w), None) => self.writer = Some(w),
            (Some(w), Some(prev)) if w != prev => self.global = true,
            _ => {}
        }
    }
}

impl StreamApply {
    /// Start after `offset` (the FULLRESYNC offset or a checkpoint) in database `db`.
    pub fn new(opts: StreamOptions, offset: u64, db: u32) -> Self {
        let mut selects = VecDeque::new();
        selects.push_back((offset, db));
        StreamApply {
            opts,
            db,
            offset,
            selects,
            multi: None,
            scripts: HashMap::new(),
            own_keys_flushed: false,
            stats: StreamStats::default(),
        }
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Inside MULTI ... EXEC (offsets inside are not checkpoints).
    pub fn in_transaction(&self) -> bool {
        self.multi.is_some()
    }

    /// Whether a FLUSHALL (or FLUSHDB 0) forwarded as is was applied since the last call: a
    /// flush is a barrier, so once outside a transaction it is acknowledged.
    pub fn take_own_keys_flushed(&mut self) -> bool {
        !self.in_transaction() && std::mem::take(&mut self.own_keys_flushed)
    }

    /// The database in effect after everything up to `offset` ran; forgets older history.
    pub fn db_at(&mut self, offset: u64) -> u32 {
        while self.selects.len() > 1 && self.selects[1].0 <= offset {
            self.selects.pop_front();
        }
        self.selects.front().map(|s| s.1).unwrap_or(self.db)
    }

    /// The database the next command runs in.
    pub fn current_db(&self) -> u32 {
        self.db
    }

    /// Follow a frame without dispatching it (for custom sinks): offset, SELECT, MULTI/EXEC.
    pub fn observe(&mut self, frame: &Frame) {
        self.offset += frame.raw.len() as u64;
        self.stats.commands += 1;
        let Some(name) = frame.name() else { return };
        if name.eq_ignore_ascii_case(b"SELECT") {
            if let Some(db) = parse_db(frame.args.get(1)) {
                self.db = db;
                self.selects.push_back((self.offset, db));
            }
        } else if name.eq_ignore_ascii_case(b"MULTI") {
            self.multi = Some(MultiBlock {
                start: self.offset,
                db_at_start: self.db,
                commands: Vec::new(),
                args: Vec::new(),
                writer: None,
                global: false,
                selects: false,
            });
        } else if name.eq_ignore_ascii_case(b"EXEC") {
            self.multi = None;
        }
    }

    /// The stamp, in microseconds, of a heartbeat the relay wrote on the source (`SET
    /// <prefix>heartbeat:... <unix ms>[.<µs>]`), outside MULTI; `None` for any other frame.
    pub fn heartbeat_stamp(&self, frame: &Frame) -> Option<u64> {
        if self.multi.is_some() || frame.args.len() < 3 {
            return None;
        }
        if !frame.args[0].eq_ignore_ascii_case(b"SET") {
            return None;
        }
        let key = &frame.args[1];
        let prefix = &self.opts.own_prefix;
        if !(key.starts_with(prefix) && key[prefix.len()..].starts_with(b"heartbeat:")) {
            return None;
        }
        parse_stamp(std::str::from_utf8(&frame.args[2]).ok()?)
    }

    /// Handle one frame of the stream.
    pub fn on_frame(&mut self, frame: Frame, d: &mut Dispatcher) -> Result<Control, PipelineError> {
        let start = self.offset;
        let end = start + frame.raw.len() as u64;
        self.offset = end;
        self.stats.commands += 1;
        let Some(name) = frame.name() else {
            return Ok(self.pass_over(d, end));
        };
        let up = upper_name(name);
        if let Some(stamp_us) = self.heartbeat_stamp(&frame) {
            // Before the database filter: the heartbeat is observed whatever is copied.
            self.stats.skipped_own_keys += 1;
            d.advance(end);
            return Ok(Control::Heartbeat { stamp_us, end });
        }
        if let ControlFlow::Break(control) = self.on_control_command(&up, &frame, start, end, d)? {
            return Ok(control);
        }
        if self.excluded(&up) {
            self.stats.excluded += 1;
            return Ok(self.pass_over(d, end));
        }
        if !self.opts.target_field_ttl && is_field_ttl_command(&up) {
            return self.field_ttl_command(&up, frame, start, end, d);
        }
        if up == b"RESTORE" {
            if let Some((rdb, _)) = &self.opts.target_rdb {
                if foreign_restore::needs_rewrite(&frame.args, *rdb) {
                    return self.foreign_restore(frame, start, end, d);
                }
            }
        }
        self.on_command(&up, frame, start, end, d)
    }

    /// A `RESTORE` whose payload the target cannot load: its value as commands, applied as
    /// one transaction at the command's offset (inside the source's own when it is in one).
    /// A payload that cannot be rewritten is forwarded as it is (the target's refusal is
    /// counted), or stops the source under `--on-target-error stop`.
    fn foreign_restore(
        &mut self,
        frame: Frame,
        start: u64,
        end: u64,
        d: &mut Dispatcher,
    ) -> Result<Control, PipelineError> {
        let Some((_, target)) = &self.opts.target_rdb else {
            return self.on_command(b"RESTORE", frame, start, end, d);
        };
        let rewritten = match foreign_restore::rewrite(&frame.args, target) {
            Ok(r) => r,
            Err(e) => {
                let key = String::from_utf8_lossy(frame.args.get(1).map_or(&b""[..], |k| k));
                let version = frame
                    .args
                    .get(3)
                    .and_then(|p| foreign_restore::payload_rdb_version(p));
                if self.opts.on_refused == ErrorPolicy::Stop {
                    return Err(PipelineError::ForeignRestore {
                        key: key.into_owned(),
                        offset: start,
                        version: version.unwrap_or(0),
                        why: e.to_string(),
                    });
                }
                tracing::warn!(%key, offset = start, error = %e, "RESTORE with a payload the target cannot load, and that cannot be rewritten: forwarded as it is");
                return self.on_command(b"RESTORE", frame, start, end, d);
            }
        };
        if rewritten.field_ttls > 0 && !target.field_ttl {
            if self.opts.on_unsupported_type == UnsupportedPolicy::Stop {
                return Err(PipelineError::FieldTtlUnsupported {
                    command: "RESTORE".into(),
                    offset: start,
                });
            }
            count_dropped("stream", rewritten.field_ttls);
        }
        let own_block = self.multi.is_none();
        if own_block {
            self.begin_multi(start);
        }
        for f in rewritten.commands {
            let up = upper_name(&f.args[0]);
            self.on_command(&up, f, start, end, d)?;
        }
        if own_block {
            return self.on_exec(end, d);
        }
        Ok(Control::None)
    }

    /// A hash field TTL command toward a target without field TTLs: stop, or (`drop-ttl`) its
    /// form without TTLs, counted (see [`super::field_ttl`]).
    fn field_ttl_command(
        &mut self,
        up: &[u8],
        frame: Frame,
        start: u64,
        end: u64,
        d: &mut Dispatcher,
    ) -> Result<Control, PipelineError> {
        if self.opts.on_unsupported_type == UnsupportedPolicy::Stop {
            return Err(PipelineError::FieldTtlUnsupported {
                command: String::from_utf8_lossy(up).into_owned(),
                offset: start,
            });
        }
        count_dropped("stream", 1);
        match rewrite_for_old_target(up, &frame.args) {
            StreamRewrite::Replace(args) => {
                let up = upper_name(&args[0]);
                let raw = encode(&args);
                let frame = Frame {
                    args,
                    raw,
                    inline: false,
                };
                self.on_command(&up, frame, start, end, d)
            }
            StreamRewrite::Drop | StreamRewrite::Keep => Ok(self.pass_over(d, end)),
        }
    }

    /// A frame that is not forwarded: the applied offset moves past it, unless it is inside
    /// MULTI (offsets inside a transaction are not applied until its EXEC).
    #[inline]
    fn pass_over(&self, d: &mut Dispatcher, end: u64) -> Control {
        if self.multi.is_none() {
            d.advance(end);
        }
        Control::None
    }

    /// The commands that shape the stream rather than the data: PING and REPLCONF (internal),
    /// SELECT, MULTI and EXEC. `Continue` for any other command.
    #[inline]
    fn on_control_command(
        &mut self,
        up: &[u8],
        frame: &Frame,
        start: u64,
        end: u64,
        d: &mut Dispatcher,
    ) -> Result<ControlFlow<Control>, PipelineError> {
        let control = match up {
            b"PING" | b"REPLCONF" => self.on_internal(up, frame, d, end),
            b"SELECT" => self.on_select(frame, start, end, d)?,
            b"MULTI" => {
                self.begin_multi(start);
                Control::None
            }
            b"EXEC" => self.on_exec(end, d)?,
            _ => return Ok(ControlFlow::Continue(())),
        };
        Ok(ControlFlow::Break(control))
    }

    /// PING or REPLCONF: never forwarded; `REPLCONF GETACK` asks for an ACK.
    fn on_internal(&mut self, up: &[u8], frame: &Frame, d: &mut Dispatcher, end: u64) -> Control {
        self.stats.internal += 1;
        let getack = up == b"REPLCONF"
            && frame
                .args
                .get(1)
                .is_some_and(|a| a.eq_ignore_ascii_case(b"GETACK"));
        self.pass_over(d, end);
        if getack {
            Control::AckRequested
        } else {
            Control::None
        }
    }

    /// SELECT: the database of the following commands; inside MULTI it travels with the
    /// transaction (mapped to the target database), unless that database is not copied.
    fn on_select(
        &mut self,
        frame: &Frame,
        start: u64,
        end: u64,
        d: &mut Dispatcher,
    ) -> Result<Control, PipelineError> {
        let Some(db) = parse_db(frame.args.get(1)) else {
            return Err(PipelineError::BadSelect { offset: start });
        };
        if let Some(m) = self.multi.as_mut() {
            m.selects = true;
            // Commands of a database that is not copied are dropped, so is its SELECT.
            if let Some(t) = self.opts.filter.map_db(db) {
                let select = vec![Bytes::from_static(b"SELECT"), db_arg(t)];
                m.commands.push(encode(&select));
                if d.slotted() {
                    m.args.push(select);
                }
            }
        } else {
            d.advance(end);
        }
        self.db = db;
        self.selects.push_back((end, db));
        Ok(Control::None)
    }

    /// MULTI: the commands up to EXEC are gathered into one op, starting at `start`.
    fn begin_multi(&mut self, start: u64) {
        self.multi = Some(MultiBlock {
            start,
            db_at_start: self.db,
            commands: Vec::new(),
            args: Vec::new(),
            writer: None,
            global: false,
            selects: false,
        });
    }

    /// EXEC: the gathered transaction goes out as one op.
    fn on_exec(&mut self, end: u64, d: &mut Dispatcher) -> Result<Control, PipelineError> {
        let Some(m) = self.multi.take() else {
            // An EXEC without MULTI does nothing on a replica either.
            d.advance(end);
            return Ok(Control::None);
        };
        self.exec(m, end, d)?;
        Ok(Control::None)
    }

    /// Whether the command (upper case) is one of `--exclude-command`.
    #[inline]
    fn excluded(&self, up: &[u8]) -> bool {
        self.opts
            .exclude_commands
            .iter()
            .any(|c| c.as_slice() == up)
    }

    /// A data command: through the database filter, the script cache, the commands with a
    /// meaning beyond their keys and the key filter; then gathered into the transaction, or
    /// sent to the writer of its keys (a barrier when they span writers).
    fn on_command(
        &mut self,
        up: &[u8],
        frame: Frame,
        start: u64,
        end: u64,
        d: &mut Dispatcher,
    ) -> Result<Control, PipelineError> {
        let mut args = frame.args;
        let mut raw = frame.raw;
        let mut rewritten = frame.inline;
        let target_db = match self.target_db(up, &mut args, start, end, d)? {
            ControlFlow::Continue((t, r)) => {
                rewritten |= r;
                t
            }
            ControlFlow::Break(control) => return Ok(control),
        };
        rewritten |= self.track_scripts(up, &mut args);
        if let ControlFlow::Break(control) = self.db_wide(up, target_db, start, end, d)? {
            return Ok(control);
        }
        if self.sentinel_hello(up, &args) {
            self.stats.internal += 1;
            return Ok(self.pass_over(d, end));
        }
        if rewritten {
            raw = encode(&args);
        }
        let route = match self.key_filter(up, &mut args, &mut raw, d, end) {
            ControlFlow::Continue(route) => route,
            ControlFlow::Break(control) => return Ok(control),
        };
        // The filters may have turned the command into another (MOVE out of the copied
        // databases into DEL): the target's check is of the command sent.
        let sent_name = match args.first() {
            Some(n) if !n.eq_ignore_ascii_case(up) => std::borrow::Cow::Owned(upper_name(n)),
            _ => std::borrow::Cow::Borrowed(up),
        };
        if self.refused(&sent_name, &args, start, d)? {
            return Ok(if self.multi.is_some() {
                Control::None
            } else {
                self.pass_over(d, end)
            });
        }
        if let Some(m) = self.multi.as_mut() {
            m.add(raw, route);
            if d.slotted() {
                m.args.push(args);
            }
            return Ok(Control::None);
        }
        self.stats.forwarded += 1;
        if let (Some(w), [_, key, value]) = (route, args.as_slice()) {
            if *sent_name == *b"SET" {
                // No option: the same as `MSET key value`, so a run of them goes as one.
                return d
                    .push_stream_set(w, target_db, key, value, start, end)
                    .map(|_| Control::None);
            }
        }
        if let (Some(w), Some(name)) = (route, ListRun::push_name(&sent_name, &args)) {
            return d
                .push_stream_list(w, target_db, name, &args[1], &args[2..], (start, end))
                .map(|_| Control::None);
        }
        let mut op = Op::new(target_db, raw, 1);
        op.replayable = replayable(up, &args);
        match route {
            Some(w) => d.push(w, op, start, end),
            None if d.slotted() => {
                self.stats.barriers += 1;
                cross_slot::command(up, args, op, start, end, d).map(|_| ())
            }
            None => self.barrier_op(d, op, start, end),
        }
        .map(|_| Control::None)
    }

    /// The database filter, unless everything is copied as is: `Continue` with the target
    /// database and whether the arguments were rewritten; `Break` when the command is dropped
    /// or replaced (the replacement already sent, as a barrier).
    #[inline]
    fn target_db(
        &mut self,
        up: &[u8],
        args: &mut Vec<Bytes>,
        start: u64,
        end: u64,
        d: &mut Dispatcher,
    ) -> Result<ControlFlow<Control, (u32, bool)>, PipelineError> {
        if self.opts.filter.is_identity() {
            return Ok(ControlFlow::Continue((self.db, false)));
        }
        Ok(match self.filter_db(up, args) {
            DbFilter::Keep(t) => ControlFlow::Continue((t, false)),
            DbFilter::Rewritten(t) => ControlFlow::Continue((t, true)),
            DbFilter::Drop => {
                self.stats.filtered += 1;
                ControlFlow::Break(self.pass_over(d, end))
            }
            DbFilter::Replace(payload, replies) => {
                self.stats.filtered += 1;
                self.stats.forwarded += 1;
                let op = Op {
                    db: 0,
                    payload,
                    replies,
                    leaves_db_unknown: true,
                    atomic: false,
                    replayable: false,
                    folded: 0,
                };
                self.barrier_op(d, op, start, end)?;
                ControlFlow::Break(Control::None)
            }
        })
    }

    /// Remember the scripts EVAL and SCRIPT LOAD bring; rewrite EVALSHA of a known script
    /// into EVAL (when enabled). Returns whether the arguments were rewritten.
    #[inline]
    fn track_scripts(&mut self, up: &[u8], args: &mut [Bytes]) -> bool {
        match up {
            b"EVAL" => {
                if let Some(body) = args.get(1) {
                    self.scripts.insert(
                        sha1_smol::Sha1::from(&body[..]).digest().to_string(),
                        body.clone(),
                    );
                }
            }
            b"SCRIPT" if args.len() >= 3 && args[1].eq_ignore_ascii_case(b"LOAD") => {
                self.scripts.insert(
                    sha1_smol::Sha1::from(&args[2][..]).digest().to_string(),
                    args[2].clone(),
                );
            }
            b"EVALSHA" if self.opts.evalsha_to_eval => {
                let known = args
                    .get(1)
                    .and_then(|sha| std::str::from_utf8(sha).ok())
                    .and_then(|sha| self.scripts.get(&sha.to_ascii_lowercase()))
                    .cloned();
                if let Some(body) = known {
                    args[0] = Bytes::from_static(b"EVAL");
                    args[1] = body;
                    return true;
                }
            }
            _ => {}
        }
        false
    }

    /// FLUSHDB, FLUSHALL and SWAPDB on a target shared with other sources: a flush becomes a
    /// proven deletion (`Break` with [`Control::ScopedFlush`], everything before it applied)
    /// or, inside MULTI, is not forwarded; SWAPDB is forwarded with a warning.
    #[inline]
    fn db_wide(
        &mut self,
        up: &[u8],
        target_db: u32,
        start: u64,
        end: u64,
        d: &mut Dispatcher,
    ) -> Result<ControlFlow<Control>, PipelineError> {
        match up {
            b"FLUSHDB" | b"FLUSHALL" if self.opts.shared_target && self.multi.is_none() => {
                self.stats.barriers += 1;
                d.barrier()?;
                let db = (up == b"FLUSHDB").then_some(target_db);
                return Ok(ControlFlow::Break(Control::ScopedFlush { db, end }));
            }
            b"FLUSHDB" | b"FLUSHALL" if self.opts.shared_target => {
                // Inside the source's MULTI the deletion cannot be proven key by key within
                // the transaction; forwarding it would delete other writers' keys.
                tracing::error!(
                    db = self.db,
                    offset = start,
                    "{} inside a MULTI of the source, on a target with other writers: not forwarded; the keys it flushed stay on the target until the next full sync",
                    String::from_utf8_lossy(up)
                );
                self.stats.filtered += 1;
                return Ok(ControlFlow::Break(Control::None));
            }
            b"FLUSHALL" => self.own_keys_flushed = true,
            b"FLUSHDB" if target_db == 0 => self.own_keys_flushed = true,
            b"SWAPDB" if self.opts.shared_target => {
                tracing::warn!(
                    db = self.db,
                    offset = start,
                    "forwarding {} from one source to a target shared by several sources: it also affects the keys the other sources wrote",
                    String::from_utf8_lossy(up)
                );
            }
            _ => {}
        }
        Ok(ControlFlow::Continue(()))
    }

    /// A PUBLISH to Sentinel's hello channel, when those are dropped.
    #[inline]
    fn sentinel_hello(&self, up: &[u8], args: &[Bytes]) -> bool {
        up == b"PUBLISH"
            && self.opts.drop_sentinel_hello
            && args.get(1).is_some_and(|c| &c[..] == b"__sentinel__:hello")
    }

    /// The relay's own keys and the key filter: `Break` when the command is dropped;
    /// otherwise `args` and `raw` are what is forwarded (cut down by the filter if needed),
    /// and `Continue` holds the writer its keys route to (`None`: keys of several writers).
    #[inline]
    fn key_filter(
        &mut self,
        up: &[u8],
        args: &mut Vec<Bytes>,
        raw: &mut Bytes,
        d: &mut Dispatcher,
        end: u64,
    ) -> ControlFlow<Control, Option<usize>> {
        let spec = command_keys(args);
        if let KeySpec::Keys(keys) = &spec {
            if keys.iter().any(|k| k.starts_with(&self.opts.own_prefix)) {
                self.stats.skipped_own_keys += 1;
                return ControlFlow::Break(self.pass_over(d, end));
            }
        }
        let decision = match &spec {
            KeySpec::Keys(keys) => self.opts.filter.split_command(up, args, keys),
            _ => Filtered::Keep,
        };
        match decision {
            // The keys found for the filters route the command too (one key lookup each).
            Filtered::Keep => ControlFlow::Continue(route(spec, d)),
            Filtered::Drop => {
                self.stats.filtered += 1;
                ControlFlow::Break(self.pass_over(d, end))
            }
            Filtered::Rewrite(new) => {
                self.stats.filtered += 1;
                *args = new;
                *raw = encode(args);
                ControlFlow::Continue(route(command_keys(args), d))
            }
        }
    }

    /// The database filter and map on one command: its target database, with database
    /// arguments (MOVE, COPY ... DB, SWAPDB, FLUSHALL) rewritten to target databases.
    fn filter_db(&self, up: &[u8], args: &mut Vec<Bytes>) -> DbFilter {
        let f = &*self.opts.filter;
        match up {
            b"SWAPDB" => filter_swapdb(f, self.db, args),
            b"FLUSHALL" if f.dbs.is_some() => self.filter_flushall(f),
            b"FLUSHALL" => DbFilter::Keep(self.db),
            _ => {
                let Some(t) = f.map_db(self.db) else {
                    return DbFilter::Drop;
                };
                filter_db_argument(f, up, args, t)
            }
        }
    }

    /// FLUSHALL when only some databases are copied: never empty the target's other
    /// databases, FLUSHDB in each copied one instead.
    fn filter_flushall(&self, f: &KeyFilter) -> DbFilter {
        if self.multi.is_some() {
            tracing::warn!("FLUSHALL with --db in a transaction: not forwarded");
            return DbFilter::Drop;
        }
        if self.opts.shared_target {
            // A proven deletion over the copied databases (Control::ScopedFlush).
            return DbFilter::Keep(self.db);
        }
        let dbs = f.target_dbs().unwrap_or_default();
        let mut cmd = BytesMut::new();
        for t in &dbs {
            crate::resp::encode_command(&mut cmd, &[&b"SELECT"[..], t.to_string().as_bytes()]);
            crate::resp::encode_command(&mut cmd, &[&b"FLUSHDB"[..]]);
        }
        DbFilter::Replace(cmd.freeze(), dbs.len() as u32 * 2)
    }

    /// Whether the target would refuse this command at queue time (see
    /// [`crate::target::command_table`]): then it is counted by kind and logged with its name
    /// (never its arguments), and left out of its batch, which applies without it; under
    /// `--on-target-error stop` the source stops instead, its offset before the command.
    fn refused(
        &mut self,
        up: &[u8],
        args: &[Bytes],
        start: u64,
        d: &Dispatcher,
    ) -> Result<bool, PipelineError> {
        let Some(table) = &self.opts.target_commands else {
            return Ok(false);
        };
        let Some(refusal) = table.refusal(up, args) else {
            return Ok(false);
        };
        let tracker = &d.tracker;
        let command = String::from_utf8_lossy(up).into_owned();
        let n = tracker.target_errors.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!("redis_relay_target_errors_total", "source" => tracker.name.clone())
            .increment(1);
        metrics::counter!("redis_relay_target_refused_total", "source" => tracker.name.clone(), "kind" => refusal.kind())
            .increment(1);
        if self.opts.on_refused == ErrorPolicy::Stop {
            return Err(PipelineError::Refused {
                command,
                kind: refusal.kind(),
                offset: start,
            });
        }
        self.stats.refused += 1;
        if n <= 20 || n.is_power_of_two() {
            tracing::warn!(source = %tracker.name, kind = refusal.kind(), errors = n, "the target would refuse {command} at queue time ({} arguments): left out of its batch", args.len());
        }
        Ok(true)
    }

    fn barrier_op(
        &mut self,
        d: &mut Dispatcher,
        op: Op,
        start: u64,
        end: u64,
    ) -> Result<(), PipelineError> {
        self.stats.barriers += 1;
        d.alone(op, start, end)
    }

    fn exec(&mut self, m: MultiBlock, end: u64, d: &mut Dispatcher) -> Result<(), PipelineError> {
        if m.commands.is_empty() {
            // An empty MULTI/EXEC (2.4 sends them for read-only transactions).
            d.advance(end);
            return Ok(());
        }
        let mut payload = BytesMut::new();
        for c in &m.commands {
            payload.extend_from_slice(c);
        }
        // The writer runs these as one transaction (in its own MULTI/EXEC, or inside the
        // exactly-once transaction of the batch).
        let op = Op {
            // A block that starts in a database not copied has a SELECT before any command
            // that is kept.
            db: self.opts.filter.map_db(m.db_at_start).unwrap_or(0),
            payload: payload.freeze(),
            replies: m.commands.len() as u32,
            leaves_db_unknown: m.selects,
            atomic: true,
            replayable: false,
            folded: 0,
        };
        self.stats.forwarded += 1;
        match (m.global || m.selects, m.writer) {
            (false, Some(w)) => d.push(w, op, m.start, end),
            _ if d.slotted() => {
                self.stats.barriers += 1;
                cross_slot::transaction(op.db, m.args, m.start, end, d)
            }
            _ => self.barrier_op(d, op, m.start, end),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_stamps_read_both_forms_and_round_trip() {
        assert_eq!(parse_stamp("1700000000123"), Some(1_700_000_000_123_000));
        assert_eq!(
            parse_stamp("1700000000123.045"),
            Some(1_700_000_000_123_045)
        );
        assert_eq!(format_stamp(1_700_000_000_123_045), "1700000000123.045");
        assert_eq!(parse_stamp(&format_stamp(42_007)), Some(42_007));
        for bad in ["", "x", "12.5", "12.0455", "-1", "1.2.3"] {
            assert_eq!(parse_stamp(bad), None, "{bad:?}");
        }
    }
}
