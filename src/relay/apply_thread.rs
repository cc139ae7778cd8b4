//! One source's apply thread: takes records from the spool in order, loads the snapshot,
//! applies the command stream, keeps the applied offset, ACK position and checkpoint.

use std::collections::HashSet;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::events::{EventSink, RelayEvent};
use super::rdb_reader::SpoolRdbReader;
use crate::endpoint::Endpoint;
use crate::pipeline::checkpoint::{self, Checkpoint};
use crate::pipeline::dispatcher::{record_base, record_key, ExactlyOnce};
use crate::pipeline::scoped_flush::{delete_unowned, scoped_flush};
use crate::pipeline::spool::{Spool, SpoolRecord};
use crate::pipeline::stream_apply::{Control, StreamApply, StreamOptions};
use crate::pipeline::{Dispatcher, SourceTracker};
use crate::rdb::{Event, ParseOptions, RdbParser};
use crate::resp::framer::CommandFramer;
use crate::source::SourceProgress;
use crate::target::{ApplyOptions, SnapshotApply, TargetConn};

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
    /// The target and the other sources (for a FLUSHDB/FLUSHALL scoped to this source).
    pub target: Option<Endpoint>,
    pub other_sources: Vec<Endpoint>,
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
}

/// Run until stopped or the spool is closed and drained. Returns a fatal error.
pub fn run(mut ctx: SourceCtx) -> Result<(), String> {
    let mut st = State {
        replid: None,
        stream: None,
        framer: CommandFramer::new(),
        last_checkpoint: None,
        last_tick: Instant::now(),
        last_cp_time: Instant::now(),
        sink_offset: 0,
        heartbeats: VecDeque::new(),
    };
    if let Some(cp) = ctx.resume.clone() {
        if let Output::Target { dispatcher, .. } = &mut ctx.output {
            let skip = read_records(
                &ctx.target,
                &ctx.stream_opts.own_prefix,
                &ctx.name,
                &cp.replid,
                ctx.writers,
            )?;
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
                Err(e) => break Err(e.to_string()),
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
            Some(SpoolRecord::RdbData(_)) | Some(SpoolRecord::RdbEnd) => Err(format!(
                "source {}: snapshot data outside a full resync",
                ctx.name
            )),
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
    };
    // Shutting down: hand over what is batched, wait for the target, checkpoint.
    let drained = match &mut ctx.output {
        Output::Target { dispatcher, .. } => dispatcher.barrier(),
        Output::Sink(_) => Ok(()),
    };
    tick(&mut ctx, &mut st, true);
    result.and(drained)
}

fn flush(ctx: &mut SourceCtx) -> Result<(), String> {
    match &mut ctx.output {
        Output::Target { dispatcher, .. } => dispatcher.flush(),
        Output::Sink(_) => Ok(()),
    }
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
) -> Result<(), String> {
    let off = offset.unwrap_or(0);
    tracing::info!(source = %ctx.name, replid = %replid, offset = off, "full resync: loading the snapshot");
    // Whatever was in flight from an earlier stream finishes first.
    if let Output::Target { dispatcher, .. } = &mut ctx.output {
        dispatcher.barrier()?;
    }
    let unexpected = st.stream.is_some() || ctx.resume.is_some();
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
            .map_err(|e| format!("source {name}: sink refused the full resync: {e}"))?;
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
    if let Err(e) = result {
        if let Some(next) = reader.interrupted_by.take() {
            tracing::warn!(source = %ctx.name, "snapshot interrupted by a reconnect: starting over");
            *pending = Some(next);
            return Ok(());
        }
        if ctx.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        return Err(format!("source {}: snapshot: {e}", ctx.name));
    }
    let extra = unread
        + reader
            .drain()
            .map_err(|e| format!("source {}: after the snapshot: {e}", ctx.name))?;
    if extra > 0 {
        return Err(format!(
            "source {}: {extra} bytes after the end of the RDB in the snapshot transfer",
            ctx.name
        ));
    }
    let eo = exactly_once(ctx, &replid);
    match &mut ctx.output {
        Output::Target { dispatcher, .. } => {
            dispatcher.barrier()?;
            dispatcher.set_exactly_once(Some(eo));
            if let (Some(set), Some(target)) = (&snapshot_keys, &ctx.target) {
                let deleted = delete_unowned(
                    target,
                    &ctx.other_sources,
                    None,
                    &ctx.stream_opts.own_prefix,
                    &|db, k| set.contains(&key_hash(db, k)),
                )
                .map_err(|e| format!("source {}: removing stale keys: {e:#}", ctx.name))?;
                tracing::warn!(source = %ctx.name, deleted, "forced full resync: removed the target keys that are neither in the new snapshot nor on another source");
            }
        }
        Output::Sink(sink) => sink
            .event(RelayEvent::SnapshotEnd {
                source: ctx.name.clone(),
            })
            .map_err(|e| format!("source {}: sink: {e}", ctx.name))?,
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
) -> Result<(), String> {
    let Some(stream) = st.stream.as_ref() else {
        return Err(format!(
            "source {}: partial resync without a loaded snapshot",
            ctx.name
        ));
    };
    if stream.offset() != offset {
        return Err(format!(
            "source {}: partial resync at offset {offset}, but the stream was processed up to {} (a gap would lose writes)",
            ctx.name,
            stream.offset()
        ));
    }
    tracing::info!(source = %ctx.name, replid = %replid, offset, "partial resync: continuing the stream");
    let eo = exactly_once(ctx, &replid);
    if let Output::Target { dispatcher, .. } = &mut ctx.output {
        dispatcher.flush()?;
        dispatcher.set_exactly_once(Some(eo));
    }
    st.replid = Some(replid);
    Ok(())
}

fn stream_data(ctx: &mut SourceCtx, st: &mut State, data: Bytes) -> Result<(), String> {
    let Some(stream) = st.stream.as_mut() else {
        return Err(format!("source {}: stream data before any sync", ctx.name));
    };
    st.framer.push(&data);
    loop {
        let frame = match st.framer.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(format!(
                    "source {}: bad command stream at offset {}: {e}",
                    ctx.name,
                    stream.offset()
                ))
            }
        };
        match &mut ctx.output {
            Output::Target { dispatcher, .. } => match stream.on_frame(frame, dispatcher)? {
                Control::None => {}
                Control::AckRequested => {
                    ctx.progress.set_applied_offset(ctx.tracker.applied());
                    ctx.progress.ack_now.notify_one();
                }
                Control::ScopedFlush { db, end } => {
                    let target = ctx.target.as_ref().ok_or_else(|| {
                        format!("source {}: scoped flush without a target", ctx.name)
                    })?;
                    let deleted =
                        scoped_flush(target, &ctx.other_sources, db, &ctx.stream_opts.own_prefix)
                            .map_err(|e| {
                            format!("source {}: FLUSH on a shared target: {e:#}", ctx.name)
                        })?;
                    tracing::info!(source = %ctx.name, db = ?db, deleted, "FLUSH from one of several sources: deleted the target keys that no other source holds");
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
                    .map_err(|e| format!("source {}: sink: {e}", ctx.name))?;
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
        key_base: record_base(
            &String::from_utf8_lossy(&ctx.stream_opts.own_prefix),
            &ctx.name,
        ),
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
) -> Result<Vec<u64>, String> {
    let Some(target) = target else {
        return Ok(vec![0; writers]);
    };
    let mut conn =
        TargetConn::connect(target, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let prefix = String::from_utf8_lossy(prefix);
    let io =
        |e: std::io::Error| format!("target {target}: reading the relay's offset records: {e}");
    conn.call(&["SELECT", "0"]).map_err(io)?;
    let mut out = Vec::with_capacity(writers);
    for w in 0..writers {
        let key = record_key(&prefix, source, w);
        let value = conn.call(&["GET", key.as_str()]).map_err(io)?.as_text();
        // "<replid> <end offset> <run id> <sequence>"
        let offset = value
            .as_deref()
            .map(|v| v.split(' ').collect::<Vec<_>>())
            .filter(|t| t.len() >= 2 && t[0] == replid)
            .and_then(|t| t[1].parse::<u64>().ok())
            .unwrap_or(0);
        out.push(offset);
    }
    Ok(out)
}

/// A 64-bit hash of a key in a database (the stale-key sweep keeps a set of these).
fn key_hash(db: u32, key: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    db.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}
