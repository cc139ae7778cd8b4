//! One source's apply thread: takes records from the spool in order, loads the snapshot,
//! applies the command stream, keeps the applied offset, ACK position and checkpoint.

use std::collections::HashSet;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub mod error;
pub mod sink;

pub use error::{ApplyError, SinkError};
pub use sink::{EventSink, RelayEvent};

use crate::batch::record;
use crate::batch::SourceTracker;
use crate::endpoint::Endpoint;
use crate::pipeline::checkpoint::{self, Checkpoint};
use crate::pipeline::dispatcher::ExactlyOnce;
use crate::pipeline::filter::KeyFilter;
use crate::pipeline::keys::{command_keys, KeySpec};
use crate::pipeline::stream_apply::{Control, StreamApply, StreamOptions};
use crate::pipeline::{ApplyOptions, SnapshotApply};
use crate::pipeline::{Dispatcher, PipelineError};
use crate::rdb::{Event, ParseOptions, RdbParser};
use crate::resp::framer::CommandFramer;
use crate::resp::{Client, ClientError};
use crate::source::topology::KeyOwner;
use crate::source::SourceProgress;
use crate::spool::SpoolRdbReader;
use crate::spool::{Spool, SpoolRecord};
use crate::target::deferred::{key_hash, Deferred};
use crate::target::deletion::{self, Authority, Plan, Scope};

/// A [`Deleter`] from a source's context, field by field (so the output stays free).
macro_rules! deleter {
    ($ctx:expr) => {
        Deleter {
            name: &$ctx.name,
            target: $ctx.target.as_ref(),
            authority: &$ctx.authority,
            owner: $ctx.owner.as_ref(),
            filter: &$ctx.stream_opts.filter,
            own_prefix: &$ctx.stream_opts.own_prefix,
            deferred_keys: &$ctx.deferred_keys,
            deferred_since_ms: &$ctx.deferred_since_ms,
            stop: &$ctx.stop,
        }
    };
}

/// Where a source's data goes.
pub enum Output {
    /// The Redis target, through the writer pool.
    Target {
        dispatcher: Dispatcher,
        apply: Box<ApplyOptions>,
    },
    /// A program's own sink.
    Sink(Box<dyn EventSink>),
}

/// Everything an apply thread needs.
pub struct SourceCtx {
    pub name: String,
    pub spool: Arc<Spool>,
    pub progress: Arc<SourceProgress>,
    pub tracker: Arc<SourceTracker>,
    pub output: Output,
    pub stream_opts: StreamOptions,
    pub parse_opts: ParseOptions,
    pub state_dir: PathBuf,
    pub writers: usize,
    pub stop: Arc<AtomicBool>,
    pub resume: Option<Checkpoint>,
    /// The target, and who else writes into it: a key leaves the target by anything but this
    /// source's own DEL/UNLINK/expiry only when it is proven this source's
    /// ([`crate::target::deletion`]).
    pub target: Option<Endpoint>,
    pub authority: Authority,
    /// Where a key belongs (nutcracker's placement): the peer to ask first.
    pub owner: Option<KeyOwner>,
    /// Keys waiting for a deletion that could not be proven yet (a peer did not answer).
    pub deferred_keys: Arc<AtomicU64>,
    /// Unix ms of the oldest pending deferral (0: none).
    pub deferred_since_ms: Arc<AtomicU64>,
    /// Set once the snapshot is fully acknowledged (or when resuming).
    pub snapshot_done: Arc<AtomicBool>,
    pub rdb_bytes_loaded: Arc<AtomicU64>,
    /// Keys of the current snapshot handed to the writers (or the sink).
    pub snapshot_keys: Arc<AtomicU64>,
    /// Lag measured by the last heartbeat, in microseconds (`u64::MAX`: none yet).
    pub heartbeat_lag_us: Arc<AtomicU64>,
}

/// No heartbeat measured yet.
pub const NO_LAG: u64 = u64::MAX;

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct State {
    replid: Option<String>,
    stream: Option<StreamApply>,
    framer: CommandFramer,
    last_checkpoint: Option<(String, u64)>,
    last_tick: Instant,
    last_cp_time: Instant,
    /// Custom sink: offset of the last event it took.
    sink_offset: u64,
    /// Heartbeats seen in the stream and not yet acknowledged: (stamp ms, end offset).
    heartbeats: VecDeque<(u64, u64)>,
    /// The target connection of [`delete_before_write`], kept between its calls.
    del_conn: Option<Client>,
    /// Deletions waiting for a peer, and when they are tried again.
    deferred: Deferred,
    next_retry: Instant,
    retry_backoff: Duration,
}

/// First wait before deferred deletions are tried again; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Run until stopped or the spool is closed and drained. Returns a fatal error.
pub fn run(mut ctx: SourceCtx) -> Result<(), ApplyError> {
    let deferred =
        Deferred::open(&ctx.state_dir, &crate::endpoint::file_stem(&ctx.name)).map_err(|e| {
            ApplyError::Deferred {
                name: ctx.name.clone(),
                what: "cannot read its deferred deletions",
                cause: e,
            }
        })?;
    if !deferred.is_empty() {
        tracing::warn!(source = %ctx.name, keys = deferred.len(), "deletions deferred before the restart are still waiting for a peer: retrying them");
    }
    let mut st = State {
        replid: None,
        stream: None,
        framer: CommandFramer::new(),
        last_checkpoint: None,
        last_tick: Instant::now(),
        last_cp_time: Instant::now(),
        sink_offset: 0,
        heartbeats: VecDeque::new(),
        del_conn: None,
        deferred,
        next_retry: Instant::now(),
        retry_backoff: RETRY_FIRST,
    };
    publish_deferred(&ctx, &st.deferred);
    if let Some(cp) = ctx.resume.clone() {
        if let Output::Target { dispatcher, .. } = &mut ctx.output {
            let skip = read_records(
                &ctx.target,
                &ctx.stream_opts.own_prefix,
                &ctx.name,
                &cp.replid,
                ctx.writers,
            )
            .map_err(|cause| ApplyError::Records {
                name: ctx.name.clone(),
                cause,
            })?;
            tracing::info!(source = %ctx.name, checkpoint = cp.offset, records = ?skip, "exactly-once: commands the target already applied after the checkpoint are skipped");
            dispatcher.set_skip(skip);
        }
        let eo = exactly_once(&ctx, &cp.replid);
        if let Output::Target { dispatcher, .. } = &mut ctx.output {
            dispatcher.set_exactly_once(Some(eo));
        }
        st.replid = Some(cp.replid.clone());
        st.stream = Some(StreamApply::new(ctx.stream_opts.clone(), cp.offset, cp.db));
        st.sink_offset = cp.offset;
        ctx.tracker.reset(cp.offset);
        ctx.snapshot_done.store(true, Ordering::Release);
        st.last_checkpoint = Some((cp.replid, cp.offset));
    }
    let mut pending: Option<SpoolRecord> = None;
    let result = loop {
        if ctx.stop.load(Ordering::Acquire) {
            break Ok(());
        }
        let rec = match pending.take() {
            Some(r) => Some(r),
            None => match ctx.spool.pop(Duration::from_millis(50)) {
                Ok(r) => r,
                Err(cause) => {
                    break Err(ApplyError::Spool {
                        name: ctx.name.clone(),
                        cause,
                    })
                }
            },
        };
        let step = match rec {
            None => {
                if ctx.spool.is_finished() {
                    break Ok(());
                }
                flush(&mut ctx)
            }
            Some(SpoolRecord::FullResync { replid, offset }) => {
                full_resync(&mut ctx, &mut st, replid, offset, &mut pending)
            }
            Some(SpoolRecord::PartialResync { replid, offset }) => {
                partial_resync(&mut ctx, &mut st, replid, offset)
            }
            Some(SpoolRecord::StreamData(data)) => stream_data(&mut ctx, &mut st, data),
            Some(SpoolRecord::RdbData(_)) | Some(SpoolRecord::RdbEnd) => {
                Err(ApplyError::SnapshotOutsideSync {
                    name: ctx.name.clone(),
                })
            }
        };
        if let Err(e) = step {
            break Err(e);
        }
        if ctx.spool.is_empty() {
            if let Err(e) = flush(&mut ctx) {
                break Err(e);
            }
        }
        check_heartbeats(&ctx, &mut st);
        tick(&mut ctx, &mut st, false);
        if let Err(e) = retry_deferred(&ctx, &mut st) {
            break Err(e);
        }
    };
    // Shutting down: hand over what is batched, wait for the target, checkpoint.
    let drained = match &mut ctx.output {
        Output::Target { dispatcher, .. } => dispatcher.barrier(),
        Output::Sink(_) => Ok(()),
    }
    .map_err(|e| pipeline(&ctx.name, e));
    tick(&mut ctx, &mut st, true);
    result.and(drained)
}

/// A pipeline error of source `name`.
fn pipeline(name: &str, cause: PipelineError) -> ApplyError {
    ApplyError::Pipeline {
        name: name.to_string(),
        cause,
    }
}

fn flush(ctx: &mut SourceCtx) -> Result<(), ApplyError> {
    match &mut ctx.output {
        Output::Target { dispatcher, .. } => dispatcher.flush(),
        Output::Sink(_) => Ok(()),
    }
    .map_err(|e| pipeline(&ctx.name, e))
}

/// Record the lag of the heartbeats the target has now acknowledged (everything before them
/// applied): now minus the stamp written on the source. While the oldest one seen is still
/// waiting, the lag shown is at least its age, so a stuck target shows a growing lag.
fn check_heartbeats(ctx: &SourceCtx, st: &mut State) {
    if st.heartbeats.is_empty() {
        return;
    }
    let applied = applied(ctx, st);
    let now_us = unix_ms().saturating_mul(1000);
    let mut measured = None;
    while let Some(&(stamp, end)) = st.heartbeats.front() {
        if applied < end {
            break;
        }
        st.heartbeats.pop_front();
        measured = Some(now_us.saturating_sub(stamp.saturating_mul(1000)));
    }
    if let Some(lag) = measured {
        ctx.heartbeat_lag_us.store(lag, Ordering::Relaxed);
    }
    if let Some(&(stamp, _)) = st.heartbeats.front() {
        let age = now_us.saturating_sub(stamp.saturating_mul(1000));
        let shown = ctx.heartbeat_lag_us.load(Ordering::Relaxed);
        if shown == NO_LAG || age > shown {
            ctx.heartbeat_lag_us.store(age, Ordering::Relaxed);
        }
    }
}

fn applied(ctx: &SourceCtx, st: &State) -> u64 {
    match &ctx.output {
        Output::Target { .. } => ctx.tracker.applied(),
        Output::Sink(_) => st.sink_offset,
    }
}

/// Publish the applied offset (what ACKs report) and checkpoint once a second.
fn tick(ctx: &mut SourceCtx, st: &mut State, force: bool) {
    if !force && st.last_tick.elapsed() < Duration::from_millis(100) {
        return;
    }
    st.last_tick = Instant::now();
    let applied = applied(ctx, st);
    if ctx.snapshot_done.load(Ordering::Acquire) {
        ctx.progress.set_applied_offset(applied);
    }
    if !force && st.last_cp_time.elapsed() < Duration::from_secs(1) {
        return;
    }
    st.last_cp_time = Instant::now();
    // The deferred set must reflect every command up to the checkpoint written next.
    if let Err(e) = st.deferred.save_if_dirty() {
        tracing::error!(source = %ctx.name, "cannot write the deferred deletions: {e}");
        return;
    }
    publish_deferred(ctx, &st.deferred);
    let (Some(replid), Some(stream)) = (&st.replid, st.stream.as_mut()) else {
        return;
    };
    if replid == "?" || !ctx.snapshot_done.load(Ordering::Acquire) {
        return;
    }
    if st.last_checkpoint.as_ref() == Some(&(replid.clone(), applied)) {
        return;
    }
    let cp = Checkpoint {
        source: ctx.name.clone(),
        replid: replid.clone(),
        offset: applied,
        db: stream.db_at(applied),
        writers: ctx.writers,
    };
    match checkpoint::save(&ctx.state_dir, &cp) {
        Ok(()) => st.last_checkpoint = Some((cp.replid, cp.offset)),
        Err(e) => tracing::error!(source = %ctx.name, "cannot write the checkpoint: {e}"),
    }
}

fn full_resync(
    ctx: &mut SourceCtx,
    st: &mut State,
    replid: String,
    offset: Option<u64>,
    pending: &mut Option<SpoolRecord>,
) -> Result<(), ApplyError> {
    let off = offset.unwrap_or(0);
    tracing::info!(source = %ctx.name, replid = %replid, offset = off, "full resync: loading the snapshot");
    // Whatever was in flight from an earlier stream finishes first.
    if let Output::Target { dispatcher, .. } = &mut ctx.output {
        dispatcher.barrier().map_err(|e| pipeline(&ctx.name, e))?;
    }
    // The target may hold keys of this source from before: after a resume refused, a
    // backlog overrun, or a crash in the middle of an earlier sweep (its records are there).
    let unexpected = st.stream.is_some()
        || ctx.resume.is_some()
        || !st.deferred.is_empty()
        || has_records(ctx).unwrap_or_else(|e| {
            // The sweep only deletes what it proves: sweeping when in doubt is safe.
            tracing::warn!(source = %ctx.name, "{e}: sweeping after the snapshot in case");
            true
        });
    if unexpected {
        tracing::warn!(source = %ctx.name, "the master forced a full resync: its keys are replaced from the new snapshot, and the keys it no longer has are removed from the target");
    }
    ctx.snapshot_done.store(false, Ordering::Release);
    if let Output::Target { dispatcher, .. } = &mut ctx.output {
        // Snapshot batches are recorded too (under the new replid, at the snapshot offset):
        // nothing of them is skipped after a restart (a crash during the snapshot means a new
        // full sync), but a writer that loses its connection knows which ones were applied.
        dispatcher.set_skip(Vec::new());
    }
    if let Err(e) = checkpoint::remove(&ctx.state_dir, &ctx.name) {
        tracing::warn!(source = %ctx.name, "cannot remove the old checkpoint: {e}");
    }
    st.last_checkpoint = None;
    st.stream = None;
    st.replid = Some(replid.clone());
    st.framer = CommandFramer::new();
    ctx.tracker.reset(off);
    ctx.rdb_bytes_loaded.store(0, Ordering::Relaxed);
    ctx.snapshot_keys.store(0, Ordering::Relaxed);
    st.heartbeats.clear();
    let eo = exactly_once(ctx, &replid);
    if let Output::Target { dispatcher, .. } = &mut ctx.output {
        dispatcher.set_exactly_once(Some(eo));
    }

    // A full resync after the target already holds data of this source (a resume refused,
    // a backlog overrun): keys the master deleted meanwhile must not survive on the target,
    // or a later write to the same key would merge with the stale value. Remember the keys of
    // the new snapshot (a 64-bit hash each), and once it is applied delete every target key
    // that is neither in it nor held by another source.
    let mut snapshot_keys: Option<HashSet<u64>> = unexpected.then(HashSet::new);
    let mut reader = SpoolRdbReader::new(ctx.spool.clone(), ctx.stop.clone());
    let counted = CountingRead {
        inner: &mut reader,
        count: ctx.rdb_bytes_loaded.clone(),
    };
    let mut parser = RdbParser::new(counted, ctx.parse_opts.clone());
    let name = ctx.name.clone();
    let keys = ctx.snapshot_keys.clone();
    let result = match &mut ctx.output {
        Output::Target {
            dispatcher, apply, ..
        } => {
            let mut snap = SnapshotApply::new((**apply).clone(), off);
            let filter = apply.filter.clone();
            let seen = &mut snapshot_keys;
            let r = parser.run(|ev| {
                if let Some(set) = seen.as_mut() {
                    let meta = match &ev {
                        Event::Entry(e) => Some(&e.meta),
                        Event::BigStart(m) => Some(m),
                        _ => None,
                    };
                    if let Some(m) = meta {
                        if let Some(db) = u32::try_from(m.db).ok().and_then(|d| filter.map_db(d)) {
                            set.insert(key_hash(db, &m.key));
                        }
                    }
                }
                let r = snap.on_event(ev, dispatcher).map_err(|e| e.into());
                keys.store(snap.stats.keys, Ordering::Relaxed);
                r
            });
            if r.is_ok() {
                let s = &snap.stats;
                tracing::info!(source = %name, keys = s.keys, restored = s.restored, in_mset = s.mset, as_commands = s.rewritten, big = s.big_keys, expired = s.expired_skipped, skipped = s.skipped, "snapshot parsed; waiting for the target to acknowledge it");
            }
            r
        }
        Output::Sink(sink) => {
            sink.event(RelayEvent::FullResync {
                source: name.clone(),
                replid: replid.clone(),
                offset,
            })
            .map_err(|cause| ApplyError::SinkRefusedResync {
                name: name.clone(),
                cause,
            })?;
            parser.run(|ev| {
                if matches!(ev, Event::Entry(_) | Event::BigStart(_)) {
                    keys.fetch_add(1, Ordering::Relaxed);
                }
                sink.event(RelayEvent::Snapshot {
                    source: name.clone(),
                    event: ev,
                })
            })
        }
    };
    let unread = parser.unread() as u64;
    drop(parser);
    if let Err(cause) = result {
        if let Some(next) = reader.interrupted_by.take() {
            tracing::warn!(source = %ctx.name, "snapshot interrupted by a reconnect: starting over");
            *pending = Some(next);
            return Ok(());
        }
        if ctx.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        return Err(ApplyError::Snapshot {
            name: ctx.name.clone(),
            cause: Box::new(cause),
        });
    }
    let extra = unread
        + reader.drain().map_err(|cause| ApplyError::AfterSnapshot {
            name: ctx.name.clone(),
            cause,
        })?;
    if extra > 0 {
        return Err(ApplyError::TrailingBytes {
            name: ctx.name.clone(),
            extra,
        });
    }
    let eo = exactly_once(ctx, &replid);
    match &mut ctx.output {
        Output::Target { dispatcher, .. } => {
            dispatcher.barrier().map_err(|e| pipeline(&ctx.name, e))?;
            dispatcher.set_exactly_once(Some(eo));
        }
        Output::Sink(_) => {}
    }
    if let Some(set) = &snapshot_keys {
        if ctx.target.is_some() {
            tracing::info!(source = %ctx.name, "stale-key sweep: deleting the target keys of this source that are not in the new snapshot");
            delete_proven(deleter!(ctx), &mut st.deferred, Job::Stale(set))?;
        }
    }
    match &mut ctx.output {
        Output::Target { .. } => {}
        Output::Sink(sink) => sink
            .event(RelayEvent::SnapshotEnd {
                source: ctx.name.clone(),
            })
            .map_err(|cause| ApplyError::Sink {
                name: ctx.name.clone(),
                cause,
            })?,
    }
    st.sink_offset = off;
    st.stream = Some(StreamApply::new(ctx.stream_opts.clone(), off, 0));
    ctx.snapshot_done.store(true, Ordering::Release);
    metrics::counter!("redis_relay_full_syncs_total", "source" => ctx.name.clone()).increment(1);
    tracing::info!(source = %ctx.name, "snapshot applied; streaming");
    tick(ctx, st, true);
    Ok(())
}

fn partial_resync(
    ctx: &mut SourceCtx,
    st: &mut State,
    replid: String,
    offset: u64,
) -> Result<(), ApplyError> {
    let Some(stream) = st.stream.as_ref() else {
        return Err(ApplyError::PartialWithoutSnapshot {
            name: ctx.name.clone(),
        });
    };
    if stream.offset() != offset {
        return Err(ApplyError::PartialGap {
            name: ctx.name.clone(),
            offset,
            processed: stream.offset(),
        });
    }
    tracing::info!(source = %ctx.name, replid = %replid, offset, "partial resync: continuing the stream");
    let eo = exactly_once(ctx, &replid);
    if let Output::Target { dispatcher, .. } = &mut ctx.output {
        dispatcher.flush().map_err(|e| pipeline(&ctx.name, e))?;
        dispatcher.set_exactly_once(Some(eo));
    }
    st.replid = Some(replid);
    Ok(())
}

fn stream_data(ctx: &mut SourceCtx, st: &mut State, data: Bytes) -> Result<(), ApplyError> {
    let Some(stream) = st.stream.as_mut() else {
        return Err(ApplyError::StreamBeforeSync {
            name: ctx.name.clone(),
        });
    };
    st.framer.push(&data);
    loop {
        let frame = match st.framer.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(cause) => {
                return Err(ApplyError::BadStream {
                    name: ctx.name.clone(),
                    offset: stream.offset(),
                    cause: Box::new(cause),
                })
            }
        };
        if !st.deferred.is_empty() {
            if let Some(t) = ctx.stream_opts.filter.map_db(stream.current_db()) {
                let hits = touch_keys(&mut st.deferred, t, &frame.args);
                if !hits.is_empty() {
                    let conn = &mut st.del_conn;
                    delete_before_write(deleter!(ctx), &mut st.deferred, conn, t, &hits)?;
                }
            }
        }
        match &mut ctx.output {
            Output::Target { dispatcher, .. } => match stream
                .on_frame(frame, dispatcher)
                .map_err(|e| pipeline(&ctx.name, e))?
            {
                Control::None => {}
                Control::AckRequested => {
                    ctx.progress.set_applied_offset(ctx.tracker.applied());
                    ctx.progress.ack_now.notify_one();
                }
                Control::ScopedFlush { db, end } => {
                    tracing::info!(source = %ctx.name, db = ?db, "FLUSH{} of the source: deleting the target keys proven to be this source's", if db.is_some() { "DB" } else { "ALL" });
                    delete_proven(deleter!(ctx), &mut st.deferred, Job::Flush(db))?;
                    dispatcher.advance(end);
                }
                Control::Heartbeat { stamp_ms, end } => st.heartbeats.push_back((stamp_ms, end)),
            },
            Output::Sink(sink) => {
                if let Some(stamp) = stream.heartbeat_stamp(&frame) {
                    // The relay's own key: not for the sink; the sink has everything before.
                    stream.observe(&frame);
                    st.sink_offset = stream.offset();
                    let lag = unix_ms().saturating_sub(stamp).saturating_mul(1000);
                    ctx.heartbeat_lag_us.store(lag, Ordering::Relaxed);
                    continue;
                }
                let start = stream.offset();
                let end = start + frame.raw.len() as u64;
                let name = frame.name().map(|n| n.to_ascii_uppercase());
                let internal = matches!(
                    name.as_deref(),
                    Some(b"PING") | Some(b"REPLCONF") | Some(b"SELECT") | None
                );
                let getack = name.as_deref() == Some(b"REPLCONF")
                    && frame
                        .args
                        .get(1)
                        .is_some_and(|a| a.eq_ignore_ascii_case(b"GETACK"));
                let db_before = stream.current_db();
                // Keep the stream state (offset, SELECT, MULTI) with a dispatcher-free pass.
                stream.observe(&frame);
                if !internal {
                    sink.event(RelayEvent::Command {
                        source: ctx.name.clone(),
                        db: db_before,
                        offset: end,
                        args: frame.args,
                    })
                    .map_err(|cause| ApplyError::Sink {
                        name: ctx.name.clone(),
                        cause,
                    })?;
                }
                if !stream.in_transaction() {
                    st.sink_offset = end;
                }
                if getack {
                    ctx.progress.set_applied_offset(st.sink_offset);
                    ctx.progress.ack_now.notify_one();
                }
            }
        }
    }
}

/// A reader that counts bytes into an atomic (RDB progress for metrics).
struct CountingRead<'a, R> {
    inner: &'a mut R,
    count: Arc<AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for CountingRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn exactly_once(ctx: &SourceCtx, replid: &str) -> ExactlyOnce {
    ExactlyOnce {
        prefix: String::from_utf8_lossy(&ctx.stream_opts.own_prefix).into_owned(),
        source: ctx.name.clone(),
        replid: replid.to_string(),
    }
}

/// The offsets recorded on the target by each writer for `source` under `replid`.
fn read_records(
    target: &Option<Endpoint>,
    prefix: &[u8],
    source: &str,
    replid: &str,
    writers: usize,
) -> Result<Vec<u64>, ClientError> {
    let Some(target) = target else {
        return Ok(vec![0; writers]);
    };
    let mut conn = Client::connect(target, Duration::from_secs(10))?;
    let prefix = String::from_utf8_lossy(prefix);
    let io = |cause: std::io::Error| ClientError::Io {
        target: target.to_string(),
        what: "reading the relay's offset records",
        cause,
    };
    conn.call(&["SELECT", "0"]).map_err(io)?;
    let mut out = Vec::with_capacity(writers);
    for w in 0..writers {
        let key = record::key(&prefix, source, w);
        let value = conn.call(&["GET", key.as_str()]).map_err(io)?.as_text();
        // No record, another replid's or an unreadable one: nothing to skip.
        let offset = value
            .as_deref()
            .and_then(|v| record::position(v.as_bytes()).ok())
            .filter(|(r, _)| *r == replid)
            .map_or(0, |(_, end)| end);
        out.push(offset);
    }
    Ok(out)
}

/// The parts of a source's context a deletion needs (borrowed apart from its output, which
/// the stream keeps using).
struct Deleter<'a> {
    name: &'a str,
    target: Option<&'a Endpoint>,
    authority: &'a Authority,
    owner: Option<&'a KeyOwner>,
    filter: &'a KeyFilter,
    own_prefix: &'a [u8],
    deferred_keys: &'a AtomicU64,
    deferred_since_ms: &'a AtomicU64,
    stop: &'a AtomicBool,
}

/// What a deletion is for.
enum Job<'a> {
    /// The source flushed one database (`Some`) or all of them.
    Flush(Option<u32>),
    /// After a forced full resync: every key not in the new snapshot (64-bit hashes).
    Stale(&'a HashSet<u64>),
    /// The deletions deferred earlier.
    Retry,
}

impl Job<'_> {
    fn cause(&self) -> &'static str {
        match self {
            Job::Flush(_) => "flush",
            Job::Stale(_) => "stale",
            Job::Retry => "deferred",
        }
    }
}

/// Delete the target keys proven to be this source's ([`crate::target::deletion`]): not held
/// by any peer, not written on the target meanwhile. Keys a peer could not vouch for are
/// deferred; keys nobody can be asked about (no peers known) stay and are counted.
fn delete_proven(d: Deleter<'_>, deferred: &mut Deferred, job: Job<'_>) -> Result<(), ApplyError> {
    let Some(target) = d.target else {
        return Err(ApplyError::DeletionWithoutTarget {
            name: d.name.to_string(),
        });
    };
    let deferred_io = |what: &'static str| {
        move |cause: std::io::Error| ApplyError::Deferred {
            name: d.name.to_string(),
            what,
            cause,
        }
    };
    let peers: Vec<Endpoint> = match d.authority {
        Authority::Peers(p) => p.clone(),
        _ => Vec::new(),
    };
    let hint = |k: &[u8]| -> Option<usize> {
        let o = d.owner?.owner(k)?;
        peers.iter().position(|p| *p == o)
    };
    let peer_dbs = |t: u32| source_dbs_for(d.filter, t);
    let snapshot = match &job {
        Job::Stale(set) => Some(*set),
        _ => None,
    };
    let keep = |db: u32, k: &[u8]| {
        k.starts_with(d.own_prefix)
            || !d.filter.key_allowed(k)
            || !writes_db(d.filter, db)
            || snapshot.is_some_and(|s| s.contains(&key_hash(db, k)))
    };
    if matches!(job, Job::Stale(_)) {
        // The sweep derives every candidate again, the deferred ones included.
        deferred
            .clear()
            .map_err(deferred_io("deferred deletions"))?;
    }
    let pending = match job {
        Job::Retry => deferred
            .pending_keys()
            .map_err(deferred_io("deferred deletions"))?,
        _ => Vec::new(),
    };
    let mut doubt: Vec<(u32, Bytes)> = Vec::new();
    let started = Instant::now();
    let mut backoff = Duration::from_millis(200);
    let report = loop {
        doubt.clear();
        let attempt = {
            let set: &Deferred = deferred;
            let retrying = matches!(job, Job::Retry);
            // A deferred key the own stream wrote since is the source's own data now.
            let still = |db: u32, k: &[u8]| !retrying || set.contains(db, k);
            let plan = Plan {
                target,
                authority: d.authority,
                hint: Some(&hint),
                peer_dbs: &peer_dbs,
                keep: &keep,
                still_candidate: &still,
                batch: deletion::DEFAULT_BATCH,
                precheck: true,
                timeout: Duration::from_secs(2),
            };
            let mut defer = |db: u32, k: Bytes| doubt.push((db, k));
            match &job {
                Job::Flush(db) => {
                    deletion::sweep(&plan, db.map_or(Scope::AllDbs, Scope::Db), &mut defer)
                }
                Job::Stale(_) => deletion::sweep(&plan, Scope::AllDbs, &mut defer),
                Job::Retry => deletion::retry(&plan, &mut pending.iter().cloned(), &mut defer),
            }
        };
        match attempt {
            Ok(r) => break r,
            // The target refused (NOPERM, READONLY, ...): nothing a retry changes.
            Err(error @ deletion::DeletionError::Refused { .. }) => {
                return Err(ApplyError::Deletion {
                    name: d.name.to_string(),
                    cause: job.cause(),
                    error: Box::new(error),
                })
            }
            // The target went away (or answered nonsense): like the writers, wait for it. A
            // new attempt starts over; what the last one deleted is gone and not a candidate.
            Err(e) => {
                if d.stop.load(Ordering::Acquire) {
                    return Err(ApplyError::Deletion {
                        name: d.name.to_string(),
                        cause: job.cause(),
                        error: Box::new(e),
                    });
                }
                tracing::warn!(source = %d.name, cause = job.cause(), "deletion interrupted: {e}; starting it again in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let stored = match job {
        Job::Retry => deferred.replace(doubt),
        _ => deferred.add_all(&doubt, unix_ms()),
    };
    stored.map_err(deferred_io("cannot store the deferred deletions"))?;
    publish(&d, deferred);
    let l = [("source", d.name.to_string())];
    metrics::counter!("redis_relay_deletions_total", "source" => d.name.to_string(), "cause" => job.cause()).increment(report.deleted);
    metrics::counter!("redis_relay_deletions_kept_total", "source" => d.name.to_string(), "reason" => "on_peer").increment(report.kept_on_peer);
    metrics::counter!("redis_relay_deletions_kept_total", "source" => d.name.to_string(), "reason" => "unattributed").increment(report.unattributed);
    metrics::counter!("redis_relay_peer_checks_total", &l).increment(report.peer_round_trips);
    tracing::info!(source = %d.name, cause = job.cause(), scanned = report.scanned, deleted = report.deleted, kept_on_peer = report.kept_on_peer, deferred = report.deferred, unattributed = report.unattributed, peer_round_trips = report.peer_round_trips, watch_aborts = report.watch_aborts, elapsed_ms = started.elapsed().as_millis() as u64, "proven deletion done");
    if report.deferred > 0 {
        tracing::warn!(source = %d.name, keys = deferred.len(), peers_down = ?report.peers_down, "deletion deferred: a peer did not answer, so these keys may be its own; they stay on the target and the deletion is retried until the peer answers");
    }
    if report.unattributed > 0 {
        tracing::warn!(source = %d.name, keys = report.unattributed, "keys left in place: this relay does not know the target's other writers, so it cannot prove these keys are its source's; name the other masters with --peer (or --twemproxy with --local-server), or declare the relay the target's only writer with --target-owner exclusive");
    }
    Ok(())
}

/// Try the deferred deletions again when due (exponential backoff while a peer stays away).
fn retry_deferred(ctx: &SourceCtx, st: &mut State) -> Result<(), ApplyError> {
    if st.deferred.is_empty()
        || Instant::now() < st.next_retry
        || !ctx.snapshot_done.load(Ordering::Acquire)
        || !matches!(ctx.output, Output::Target { .. })
    {
        return Ok(());
    }
    let before = st.deferred.len();
    delete_proven(deleter!(ctx), &mut st.deferred, Job::Retry)?;
    if st.deferred.is_empty() {
        tracing::info!(source = %ctx.name, keys = before, "deferred deletions completed");
        st.retry_backoff = RETRY_FIRST;
    } else {
        st.retry_backoff = (st.retry_backoff * 2).min(RETRY_MAX);
    }
    st.next_retry = Instant::now() + st.retry_backoff;
    Ok(())
}

fn publish(d: &Deleter<'_>, deferred: &Deferred) {
    d.deferred_keys
        .store(deferred.len() as u64, Ordering::Relaxed);
    d.deferred_since_ms
        .store(deferred.since_ms().unwrap_or(0), Ordering::Relaxed);
}

fn publish_deferred(ctx: &SourceCtx, deferred: &Deferred) {
    publish(&deleter!(ctx), deferred);
}

/// Source databases looked at for a target database: the usual 16 and then some, and every
/// database the map names.
fn source_dbs(filter: &KeyFilter) -> impl Iterator<Item = u32> + '_ {
    (0..64u32).chain(filter.db_map.keys().copied())
}

/// The source databases whose keys land in target database `t` (peers are asked there).
fn source_dbs_for(filter: &KeyFilter, t: u32) -> Vec<u32> {
    if filter.is_identity() {
        return vec![t];
    }
    let mut dbs: Vec<u32> = source_dbs(filter)
        .filter(|s| filter.map_db(*s) == Some(t))
        .collect();
    dbs.sort_unstable();
    dbs.dedup();
    dbs
}

/// Some source database lands in target database `t` (else no key there is the relay's).
fn writes_db(filter: &KeyFilter, t: u32) -> bool {
    filter.is_identity() || source_dbs(filter).any(|s| filter.map_db(s) == Some(t))
}

/// The own stream is about to write these keys: they leave the deferred set (a retry never
/// deletes them). Returns those that were deferred.
fn touch_keys(deferred: &mut Deferred, db: u32, args: &[Bytes]) -> Vec<Bytes> {
    let mut hits = Vec::new();
    let touch = |k: &Bytes| {
        if deferred.touch(db, k) {
            hits.push(k.clone());
        }
    };
    match command_keys(args) {
        KeySpec::Keys(keys) => keys.into_iter().for_each(touch),
        KeySpec::Channel(_) => {}
        KeySpec::Global => {
            // Scripts and functions name their keys after numkeys.
            let name = args.first().map(|a| a.to_ascii_uppercase());
            if matches!(
                name.as_deref(),
                Some(b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO")
            ) {
                let n = args
                    .get(2)
                    .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                args.iter().skip(3).take(n).for_each(touch);
            }
        }
    }
    hits
}

/// A deferred key the source writes again: the source's flush (or its new snapshot) had no
/// such key, so the old value goes first and the write lands on nothing, as on the source. A
/// peer's copy of the key, if there were one, is overwritten by this write anyway. Order on
/// a crash: the DEL first, then the deferred set saved without the key, then the write is
/// dispatched; a restart before the save deletes again (the write was not sent), one after it
/// never touches the key again (the write may already be applied).
fn delete_before_write(
    d: Deleter<'_>,
    deferred: &mut Deferred,
    conn: &mut Option<Client>,
    db: u32,
    keys: &[Bytes],
) -> Result<(), ApplyError> {
    let Some(target) = d.target else {
        return Ok(());
    };
    let mut args: Vec<&[u8]> = vec![b"DEL"];
    args.extend(keys.iter().map(|k| &k[..]));
    let db = db.to_string();
    let mut delay = Duration::from_millis(100);
    loop {
        // One connection kept for these deletions (they come one write at a time while keys
        // are deferred); a broken one is replaced.
        if conn.is_none() {
            *conn = Client::connect(target, Duration::from_secs(5)).ok();
        }
        let attempt = match conn.as_mut() {
            None => Err(ClientError::Io {
                target: target.to_string(),
                what: "connecting to delete a deferred key written again",
                cause: std::io::ErrorKind::NotConnected.into(),
            }),
            // SELECT's reply is checked: a DEL in another database would hit someone's key.
            Some(c) => c
                .call(&["SELECT", db.as_str()])
                .and_then(|r| match r {
                    crate::resp::Reply::Error(_) => Ok(r),
                    _ => c.call(&args),
                })
                .map_err(|cause| ClientError::Io {
                    target: target.to_string(),
                    what: "SELECT and DEL of a deferred key written again",
                    cause,
                }),
        };
        if attempt.is_err() {
            *conn = None;
        }
        match attempt {
            Ok(crate::resp::Reply::Error(e)) => {
                return Err(ApplyError::DelRefused {
                    name: d.name.to_string(),
                    target: target.to_string(),
                    reply: String::from_utf8_lossy(&e).into_owned(),
                })
            }
            Ok(crate::resp::Reply::Integer(n)) => {
                metrics::counter!("redis_relay_deletions_total", "source" => d.name.to_string(), "cause" => "written").increment(n.max(0) as u64);
                break;
            }
            Ok(_) => break,
            Err(e) => {
                if d.stop.load(Ordering::Acquire) {
                    return Err(ApplyError::DelStopped {
                        name: d.name.to_string(),
                        cause: e,
                    });
                }
                tracing::warn!(source = %d.name, "deleting the old value of a deferred key written again: {e}; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    deferred
        .journal_touches()
        .map_err(|cause| ApplyError::Deferred {
            name: d.name.to_string(),
            what: "cannot write the deferred deletions",
            cause,
        })?;
    publish(&d, deferred);
    Ok(())
}

/// This source's exactly-once records are on the target: it held this source's data before.
fn has_records(ctx: &SourceCtx) -> Result<bool, ClientError> {
    let (Some(target), Output::Target { .. }) = (&ctx.target, &ctx.output) else {
        return Ok(false);
    };
    let prefix = String::from_utf8_lossy(&ctx.stream_opts.own_prefix);
    let mut conn = Client::connect(target, Duration::from_secs(10))?;
    record::any_on(&mut conn, &prefix, &ctx.name, ctx.writers).map_err(|cause| ClientError::Io {
        target: target.to_string(),
        what: "reading the relay's records",
        cause,
    })
}
