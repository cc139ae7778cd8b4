//! One source's loop: takes its records from the spool in order, loads the snapshot, applies
//! the command stream, keeps the applied offset, the ACK position and the checkpoint, and
//! runs the deletions proven this source's.
//!
//! Owns: the order of one source's records, its checkpoint file and its deferred deletions.
//! May not touch: the source link (it reports what is applied through [`AckPosition`]) or
//! another source's keys (every deletion is proven: [`crate::target::deletion`]). Where the
//! data goes is an [`Output`]: the target through the writer pool, or a program's sink.

mod deletions;
pub mod error;
pub mod output;
mod resync;
pub mod sink;
pub mod target_loss;

pub use error::{ApplyError, SinkError};
pub use output::{Output, SinkOutput, TargetOutput};
pub use sink::{EventSink, RelayEvent};
pub use target_loss::{LossPolicy, LossReason, TargetGuard};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::batch::offsets::unix_us;
use crate::batch::SourceTracker;
use crate::endpoint::Endpoint;
use crate::pipeline::checkpoint::{self, Checkpoint};
use crate::pipeline::stream_apply::{Control, StreamApply, StreamOptions};
use crate::rdb::ParseOptions;
use crate::resp::framer::CommandFramer;
use crate::spool::{Spool, SpoolRecord};
use crate::target::deletion::Authority;
use deletions::{DeferredDeletions, Job};

/// Where the loop reports what is applied; the source's link ACKs it to the master.
pub trait AckPosition: Send + Sync {
    /// Everything up to `offset` of the stream is applied.
    fn set_applied(&self, offset: u64);
    /// The master asked for an ACK (`REPLCONF GETACK`): send one now.
    fn ack_now(&self);
    /// Drop the replication link and sync again from a new snapshot (`PSYNC ? -1`): the
    /// target lost what it acknowledged. Only a loop with a [`TargetGuard`] asks; outputs
    /// without one need not implement it.
    fn full_sync_now(&self) {}
}

/// Where a key belongs (nutcracker's placement), to ask that peer first; `None`: unknown.
pub type OwnerHint = Arc<dyn Fn(&[u8]) -> Option<Endpoint> + Send + Sync>;

/// What the relay reads of a source's loop (status line, metrics), lock-free.
#[derive(Debug)]
pub struct LoopFigures {
    /// Set once the snapshot is fully acknowledged (or when resuming).
    pub snapshot_done: AtomicBool,
    pub rdb_bytes_loaded: AtomicU64,
    /// Keys of the current snapshot handed to the writers (or the sink).
    pub snapshot_keys: AtomicU64,
    /// Lag measured by the last heartbeat, in microseconds ([`NO_LAG`]: none yet): the
    /// source tracker's ([`SourceTracker::heartbeat_lag_us`], which measures it when the
    /// target acknowledges) once [`LoopFigures::measured_by`] shares it.
    pub heartbeat_lag_us: Arc<AtomicU64>,
    /// Keys waiting for a deletion that could not be proven yet (a peer did not answer).
    pub deferred_keys: AtomicU64,
    /// Unix ms of the oldest pending deferral (0: none).
    pub deferred_since_ms: AtomicU64,
}

impl Default for LoopFigures {
    fn default() -> Self {
        LoopFigures {
            snapshot_done: AtomicBool::new(false),
            rdb_bytes_loaded: AtomicU64::new(0),
            snapshot_keys: AtomicU64::new(0),
            heartbeat_lag_us: Arc::new(AtomicU64::new(NO_LAG)),
            deferred_keys: AtomicU64::new(0),
            deferred_since_ms: AtomicU64::new(0),
        }
    }
}

/// Everything a source's loop needs.
pub struct SourceCtx {
    pub name: String,
    pub spool: Arc<Spool>,
    pub acks: Arc<dyn AckPosition>,
    pub tracker: Arc<SourceTracker>,
    pub output: Box<dyn Output>,
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
    /// The target is a Redis Cluster (`target` is one of its nodes): deletions go to the
    /// master of each key's slot.
    pub target_cluster: bool,
    pub authority: Authority,
    pub owner: Option<OwnerHint>,
    pub figures: Arc<LoopFigures>,
    /// Checks that the target still holds what it acknowledged (a Redis target only).
    pub guard: Option<TargetGuard>,
}

pub use crate::batch::offsets::NO_LAG;

impl LoopFigures {
    /// Figures whose heartbeat lag is the one `tracker` measures.
    pub fn measured_by(tracker: &SourceTracker) -> LoopFigures {
        LoopFigures {
            heartbeat_lag_us: tracker.heartbeat_lag_us.clone(),
            ..LoopFigures::default()
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The loop's own state between records.
struct State {
    replid: Option<String>,
    stream: Option<StreamApply>,
    framer: CommandFramer,
    last_checkpoint: Option<(String, u64)>,
    last_tick: Instant,
    last_cp_time: Instant,
    deferred: DeferredDeletions,
    /// The target lost data and a new full sync was asked for: no checkpoint, no check until
    /// it starts.
    resync_pending: bool,
    /// The target lost data under `--on-target-loss stop`: the loop ends with it.
    lost: Option<LossReason>,
    /// When the last failed target check was logged (one warning per minute).
    guard_warned: Option<Instant>,
}

/// One source's loop: its context and its state.
struct SourceLoop {
    ctx: SourceCtx,
    st: State,
}

/// Run until stopped or the spool is closed and drained. Returns a fatal error.
pub fn run(ctx: SourceCtx) -> Result<(), ApplyError> {
    let mut lp = SourceLoop::open(ctx)?;
    let result = lp.run_records();
    // Shutting down: hand over what is batched, wait for the target, checkpoint.
    let drained = lp.ctx.output.barrier();
    lp.tick(true);
    result.and(drained)
}

impl SourceLoop {
    /// The loop with its deferred deletions read, resumed from its checkpoint if any.
    fn open(ctx: SourceCtx) -> Result<SourceLoop, ApplyError> {
        let deferred = DeferredDeletions::open(&ctx)?;
        let mut lp = SourceLoop {
            ctx,
            st: State {
                replid: None,
                stream: None,
                framer: CommandFramer::new(),
                last_checkpoint: None,
                last_tick: Instant::now(),
                last_cp_time: Instant::now(),
                deferred,
                resync_pending: false,
                lost: None,
                guard_warned: None,
            },
        };
        if let Some(cp) = lp.ctx.resume.clone() {
            lp.resume(cp)?;
        }
        Ok(lp)
    }

    /// Continue from checkpoint `cp`: the stream state it saved, the records the target holds.
    fn resume(&mut self, cp: Checkpoint) -> Result<(), ApplyError> {
        let ctx = &mut self.ctx;
        ctx.output.resume(&cp.replid, cp.offset)?;
        self.st.replid = Some(cp.replid.clone());
        self.st.stream = Some(StreamApply::new(ctx.stream_opts.clone(), cp.offset, cp.db));
        ctx.tracker.reset(cp.offset);
        ctx.figures.snapshot_done.store(true, Ordering::Release);
        self.st.last_checkpoint = Some((cp.replid, cp.offset));
        Ok(())
    }

    /// Take records until stopped, the spool is finished, or an error.
    fn run_records(&mut self) -> Result<(), ApplyError> {
        let mut pending: Option<SpoolRecord> = None;
        while !self.ctx.stop.load(Ordering::Acquire) {
            let rec = match pending.take() {
                Some(r) => Some(r),
                None => self
                    .ctx
                    .spool
                    .pop(Duration::from_millis(50))
                    .map_err(|cause| ApplyError::Spool {
                        name: self.ctx.name.clone(),
                        cause,
                    })?,
            };
            match rec {
                None if self.ctx.spool.is_finished() => return Ok(()),
                None => self.ctx.output.flush()?,
                Some(rec) => self.record(rec, &mut pending)?,
            }
            self.between_records()?;
        }
        Ok(())
    }

    /// One record of the spool. A snapshot interrupted by a reconnect leaves the record
    /// that interrupted it in `pending`.
    fn record(
        &mut self,
        rec: SpoolRecord,
        pending: &mut Option<SpoolRecord>,
    ) -> Result<(), ApplyError> {
        match rec {
            SpoolRecord::FullResync { replid, offset } => self.full_resync(replid, offset, pending),
            SpoolRecord::PartialResync { replid, offset } => self.partial_resync(replid, offset),
            SpoolRecord::StreamData(data) => self.stream_data(data),
            SpoolRecord::RdbData(_) | SpoolRecord::RdbEnd => Err(ApplyError::SnapshotOutsideSync {
                name: self.ctx.name.clone(),
            }),
        }
    }

    /// Housekeeping after each record: flush when idle, heartbeats, offsets and
    /// checkpoints, deferred deletions.
    fn between_records(&mut self) -> Result<(), ApplyError> {
        if self.ctx.spool.is_empty() {
            self.ctx.output.flush()?;
        }
        self.tick(false);
        if let Some(reason) = self.st.lost.take() {
            return Err(ApplyError::TargetLost {
                name: self.ctx.name.clone(),
                reason,
            });
        }
        self.st.deferred.retry_if_due(&self.ctx)
    }

    /// While a heartbeat waits for the target, the lag shown is at least its age, so that a
    /// stuck target shows a growing lag. (The lag of an acknowledged heartbeat is measured by
    /// the tracker when the acknowledgement arrives.)
    fn heartbeat_age(&mut self) {
        let Some(stamp) = self.ctx.tracker.oldest_heartbeat() else {
            return;
        };
        let lag_us = &self.ctx.tracker.heartbeat_lag_us;
        let age = unix_us().saturating_sub(stamp);
        let shown = lag_us.load(Ordering::Relaxed);
        if shown == NO_LAG || age > shown {
            lag_us.store(age, Ordering::Relaxed);
        }
    }

    /// Publish the applied offset (what ACKs report) and checkpoint once a second.
    fn tick(&mut self, force: bool) {
        if !force && self.st.last_tick.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.st.last_tick = Instant::now();
        self.heartbeat_age();
        let applied = self.ctx.output.applied();
        if self.ctx.figures.snapshot_done.load(Ordering::Acquire) {
            self.ctx.acks.set_applied(applied);
        }
        let reconnected = self
            .ctx
            .guard
            .as_mut()
            .is_some_and(TargetGuard::writers_reconnected);
        if !force && !reconnected && self.st.last_cp_time.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.st.last_cp_time = Instant::now();
        // The deferred set must reflect every command up to the checkpoint written next.
        if let Err(e) = self.st.deferred.set.save_if_dirty() {
            tracing::error!(source = %self.ctx.name, "cannot write the deferred deletions: {e}");
            return;
        }
        deletions::publish(&self.ctx.figures, &self.st.deferred.set);
        // `applied` was read before the marker's swap: everything the checkpoint covers was
        // acknowledged before the generation it saves.
        if self.watch_target() {
            self.checkpoint(applied);
        }
    }

    /// Check that the target still holds what it acknowledged (see [`target_loss`]); false
    /// when no checkpoint may be written now (the target lost data, or a resync is pending).
    fn watch_target(&mut self) -> bool {
        if self.st.resync_pending || self.st.lost.is_some() {
            return false;
        }
        let Some(guard) = self.ctx.guard.as_mut() else {
            return true;
        };
        match guard.check() {
            Ok(None) => {
                self.st.guard_warned = None;
                true
            }
            Ok(Some(reason)) => {
                self.target_lost(reason);
                false
            }
            Err(e) => {
                // Unreachable target: the writers wait for it too, nothing is acknowledged.
                if self
                    .st
                    .guard_warned
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
                {
                    tracing::warn!(source = %self.ctx.name, "cannot check the target's marker: {e}");
                    self.st.guard_warned = Some(Instant::now());
                }
                true
            }
        }
    }

    /// The target lost what it acknowledged: count it, then sync again from a new snapshot
    /// or stop, as `--on-target-loss` says.
    fn target_lost(&mut self, reason: LossReason) {
        let ctx = &self.ctx;
        metrics::counter!("redis_relay_target_loss_total", "source" => ctx.name.clone(), "reason" => reason.label())
            .increment(1);
        let policy = ctx.guard.as_ref().map(|g| g.policy).unwrap_or_default();
        if policy == LossPolicy::Stop {
            tracing::error!(source = %ctx.name, reason = reason.label(), "target loss: {reason} (--on-target-loss stop)");
            self.st.lost = Some(reason);
            return;
        }
        tracing::error!(source = %ctx.name, reason = reason.label(), "target loss: {reason}; syncing the source again from a new snapshot (--on-target-loss resync)");
        if let Err(e) = checkpoint::remove(&ctx.state_dir, &ctx.name) {
            tracing::warn!(source = %ctx.name, "cannot remove the checkpoint: {e}");
        }
        self.st.last_checkpoint = None;
        self.st.resync_pending = true;
        ctx.acks.full_sync_now();
    }

    /// Save the checkpoint at `applied` if it moved (never during a snapshot).
    fn checkpoint(&mut self, applied: u64) {
        let ctx = &self.ctx;
        let st = &mut self.st;
        let (Some(replid), Some(stream)) = (&st.replid, st.stream.as_mut()) else {
            return;
        };
        if replid == "?" || !ctx.figures.snapshot_done.load(Ordering::Acquire) {
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
            target_marker: ctx.guard.as_ref().and_then(TargetGuard::generation),
        };
        match checkpoint::save(&ctx.state_dir, &cp) {
            Ok(()) => st.last_checkpoint = Some((cp.replid, cp.offset)),
            Err(e) => tracing::error!(source = %ctx.name, "cannot write the checkpoint: {e}"),
        }
    }

    /// Bytes of the command stream: every complete command goes to the output.
    fn stream_data(&mut self, data: Bytes) -> Result<(), ApplyError> {
        let ctx = &mut self.ctx;
        let st = &mut self.st;
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
            if !st.deferred.set.is_empty() {
                if let Some(t) = ctx.stream_opts.filter.map_db(stream.current_db()) {
                    st.deferred.before_write(ctx, t, &frame.args)?;
                }
            }
            let control = ctx.output.command(stream, frame)?;
            on_control(ctx, &mut st.deferred, control)?;
            if stream.take_own_keys_flushed() {
                // The source's FLUSHALL (or FLUSHDB 0), forwarded as is and acknowledged, took
                // the relay's marker with it: not a loss of the target's.
                if let Some(g) = ctx.guard.as_mut() {
                    g.rearm();
                }
            }
        }
    }
}

/// What the stream apply asked of the loop.
fn on_control(
    ctx: &mut SourceCtx,
    deferred: &mut DeferredDeletions,
    control: Control,
) -> Result<(), ApplyError> {
    match control {
        Control::None => {}
        Control::AckRequested => {
            ctx.acks.set_applied(ctx.output.applied());
            ctx.acks.ack_now();
        }
        Control::ScopedFlush { db, end } => {
            tracing::info!(source = %ctx.name, db = ?db, "FLUSH{} of the source: deleting the target keys proven to be this source's", if db.is_some() { "DB" } else { "ALL" });
            deletions::delete_proven(ctx, &mut deferred.set, Job::Flush(db))?;
            ctx.output.advance(end);
        }
        Control::Heartbeat { stamp_us, end } => ctx.tracker.heartbeat(stamp_us, end),
    }
    Ok(())
}
