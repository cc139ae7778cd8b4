//! The resyncs of one source's loop: a full resync loads the master's snapshot (and, when
//! the target may hold this source's keys from before, sweeps the ones the snapshot no longer
//! has); a partial resync continues the stream where it stopped.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use super::deletions::{self, Job};
use super::error::ApplyError;
use super::{SourceCtx, SourceLoop};
use crate::pipeline::checkpoint;
use crate::pipeline::filter::KeyFilter;
use crate::pipeline::stream_apply::StreamApply;
use crate::rdb::{Event, RdbParser};
use crate::resp::framer::CommandFramer;
use crate::spool::{SpoolRdbReader, SpoolRecord};
use crate::target::deferred::key_hash;

/// How a snapshot load ended.
enum Loaded {
    /// Parsed to its end; the hashes of its keys when a stale-key sweep follows.
    Complete(Option<HashSet<u64>>),
    /// Interrupted by a reconnect (the record that interrupted it is pending) or a stop.
    Abandoned,
}

impl SourceLoop {
    pub(super) fn full_resync(
        &mut self,
        replid: String,
        offset: Option<u64>,
        pending: &mut Option<SpoolRecord>,
    ) -> Result<(), ApplyError> {
        let off = offset.unwrap_or(0);
        tracing::info!(source = %self.ctx.name, replid = %replid, offset = off, "full resync: loading the snapshot");
        // Whatever was in flight from an earlier stream finishes first.
        self.ctx.output.barrier()?;
        let unexpected = self.target_may_hold_our_keys();
        if unexpected {
            tracing::warn!(source = %self.ctx.name, "the master forced a full resync: its keys are replaced from the new snapshot, and the keys it no longer has are removed from the target");
        }
        self.begin_snapshot(&replid, offset)?;
        match self.load_snapshot(unexpected, pending)? {
            Loaded::Complete(seen) => self.finish_snapshot(off, seen),
            Loaded::Abandoned => Ok(()),
        }
    }

    /// The target may hold keys of this source from before: after a resume refused, a
    /// backlog overrun, or a crash in the middle of an earlier sweep (its records are there).
    fn target_may_hold_our_keys(&self) -> bool {
        let ctx = &self.ctx;
        self.st.stream.is_some()
            || ctx.resume.is_some()
            || !self.st.deferred.set.is_empty()
            || ctx.output.has_records().unwrap_or_else(|e| {
                // The sweep only deletes what it proves: sweeping when in doubt is safe.
                tracing::warn!(source = %ctx.name, "{e}: sweeping after the snapshot in case");
                true
            })
    }

    /// Forget the old stream and checkpoint; the output starts the snapshot.
    fn begin_snapshot(&mut self, replid: &str, offset: Option<u64>) -> Result<(), ApplyError> {
        let ctx = &mut self.ctx;
        let st = &mut self.st;
        ctx.figures.snapshot_done.store(false, Ordering::Release);
        if let Err(e) = checkpoint::remove(&ctx.state_dir, &ctx.name) {
            tracing::warn!(source = %ctx.name, "cannot remove the old checkpoint: {e}");
        }
        st.last_checkpoint = None;
        st.stream = None;
        st.replid = Some(replid.to_string());
        st.framer = CommandFramer::new();
        ctx.tracker.reset(offset.unwrap_or(0));
        ctx.figures.rdb_bytes_loaded.store(0, Ordering::Relaxed);
        ctx.figures.snapshot_keys.store(0, Ordering::Relaxed);
        ctx.tracker.forget_heartbeats();
        st.resync_pending = false;
        if let Some(g) = ctx.guard.as_mut() {
            g.rearm();
        }
        ctx.output.full_resync(replid, offset)
    }

    /// Parse the snapshot from the spool into the output. When `sweep` (the target may hold
    /// keys of this source from before), remember the hash of every key of the new snapshot:
    /// once it is applied, the target keys neither in it nor held by another source go (a
    /// later write to such a key would otherwise merge with the stale value).
    fn load_snapshot(
        &mut self,
        sweep: bool,
        pending: &mut Option<SpoolRecord>,
    ) -> Result<Loaded, ApplyError> {
        let ctx = &mut self.ctx;
        let mut seen: Option<HashSet<u64>> = sweep.then(HashSet::new);
        let mut reader = SpoolRdbReader::new(ctx.spool.clone(), ctx.stop.clone());
        let counted = CountingRead {
            inner: &mut reader,
            count: &ctx.figures.rdb_bytes_loaded,
        };
        let mut parser = RdbParser::new(counted, ctx.parse_opts.clone());
        let filter = &ctx.stream_opts.filter;
        let output = &mut ctx.output;
        let keys = &ctx.figures.snapshot_keys;
        let result = parser.run(|ev| {
            if let Some(set) = seen.as_mut() {
                remember_key(set, filter, &ev);
            }
            let r = output.snapshot_event(ev);
            keys.store(output.snapshot_keys(), Ordering::Relaxed);
            r
        });
        let unread = parser.unread() as u64;
        drop(parser);
        if let Err(cause) = result {
            if let Some(next) = reader.interrupted_by.take() {
                tracing::warn!(source = %ctx.name, "snapshot interrupted by a reconnect: starting over");
                *pending = Some(next);
                return Ok(Loaded::Abandoned);
            }
            if ctx.stop.load(Ordering::Acquire) {
                return Ok(Loaded::Abandoned);
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
        Ok(Loaded::Complete(seen))
    }

    /// The snapshot is parsed: wait for the target, sweep the stale keys, start the stream.
    fn finish_snapshot(&mut self, off: u64, seen: Option<HashSet<u64>>) -> Result<(), ApplyError> {
        self.ctx.output.snapshot_parsed()?;
        if let Some(set) = &seen {
            if self.ctx.target.is_some() {
                tracing::info!(source = %self.ctx.name, "stale-key sweep: deleting the target keys of this source that are not in the new snapshot");
                deletions::delete_proven(&self.ctx, &mut self.st.deferred.set, Job::Stale(set))?;
            }
        }
        self.ctx.output.snapshot_done()?;
        let ctx = &self.ctx;
        self.st.stream = Some(StreamApply::new(ctx.stream_opts.clone(), off, 0));
        ctx.figures.snapshot_done.store(true, Ordering::Release);
        metrics::counter!("redis_relay_full_syncs_total", "source" => ctx.name.clone())
            .increment(1);
        tracing::info!(source = %ctx.name, "snapshot applied; streaming");
        self.tick(true);
        Ok(())
    }

    pub(super) fn partial_resync(&mut self, replid: String, offset: u64) -> Result<(), ApplyError> {
        let ctx: &mut SourceCtx = &mut self.ctx;
        let Some(stream) = self.st.stream.as_ref() else {
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
        ctx.output.partial_resync(&replid)?;
        self.st.replid = Some(replid);
        Ok(())
    }
}

/// Add the key of a snapshot event (an entry, or the start of a big value) to `set`, as the
/// hash of the target database it lands in and its name.
fn remember_key(set: &mut HashSet<u64>, filter: &KeyFilter, ev: &Event) {
    let meta = match ev {
        Event::Entry(e) => &e.meta,
        Event::BigStart(m) => m,
        _ => return,
    };
    if let Some(db) = u32::try_from(meta.db).ok().and_then(|d| filter.map_db(d)) {
        set.insert(key_hash(db, &meta.key));
    }
}

/// A reader that counts bytes into an atomic (RDB progress for metrics).
struct CountingRead<'a, R> {
    inner: &'a mut R,
    count: &'a AtomicU64,
}

impl<R: std::io::Read> std::io::Read for CountingRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
