//! Where one source's data goes, as one trait with one implementation per output: the Redis
//! target through the writer pool ([`TargetOutput`]) or a program's own sink
//! ([`SinkOutput`]). The per-source loop calls the same steps on either and keeps what is
//! common (offsets, checkpoints, heartbeats, deletions) to itself.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::error::ApplyError;
use super::sink::{EventSink, RelayEvent};
use super::LoopFigures;
use crate::batch::record;
use crate::pipeline::dispatcher::ExactlyOnce;
use crate::pipeline::stream_apply::{Control, StreamApply};
use crate::pipeline::{ApplyOptions, Dispatcher, PipelineError, SnapshotApply};
use crate::rdb::error::HandlerError;
use crate::rdb::Event;
use crate::resp::framer::Frame;
use crate::resp::ClientError;

/// The steps of a source's life, as an output sees them.
pub trait Output: Send {
    /// Resuming from a checkpoint under `replid` at `offset`.
    fn resume(&mut self, replid: &str, offset: u64) -> Result<(), ApplyError>;
    /// A full resync under `replid` starts at `offset` (`None`: a master without offsets).
    /// The loop has already waited for everything handed over before ([`Output::barrier`]).
    fn full_resync(&mut self, replid: &str, offset: Option<u64>) -> Result<(), ApplyError>;
    /// One event of the snapshot.
    fn snapshot_event(&mut self, ev: Event) -> Result<(), HandlerError>;
    /// Keys of the snapshot taken so far.
    fn snapshot_keys(&self) -> u64;
    /// The snapshot is parsed: wait until it is applied.
    fn snapshot_parsed(&mut self) -> Result<(), ApplyError>;
    /// The snapshot and the loop's work after it (the stale-key sweep) are done.
    fn snapshot_done(&mut self) -> Result<(), ApplyError>;
    /// The stream continues under `replid` (partial resync).
    fn partial_resync(&mut self, replid: &str) -> Result<(), ApplyError>;
    /// One command of the stream.
    fn command(&mut self, stream: &mut StreamApply, frame: Frame) -> Result<Control, ApplyError>;
    /// Bytes up to `end` needed no work: applied once everything before them is.
    fn advance(&mut self, end: u64);
    /// Hand over what is batched.
    fn flush(&mut self) -> Result<(), ApplyError>;
    /// Flush and wait until everything handed over is applied.
    fn barrier(&mut self) -> Result<(), ApplyError>;
    /// The stream offset up to which everything is applied (what the ACKs report).
    fn applied(&self) -> u64;
    /// The output is a Redis target: records, proven deletions and deferred keys apply.
    fn is_target(&self) -> bool;
    /// The target holds exactly-once records of this source (it held its data before).
    fn has_records(&self) -> Result<bool, ClientError>;
}

/// The Redis target, through the writer pool.
pub struct TargetOutput {
    name: String,
    prefix: String,
    dispatcher: Dispatcher,
    apply: ApplyOptions,
    snapshot: Option<SnapshotApply>,
}

impl TargetOutput {
    pub fn new(name: String, dispatcher: Dispatcher, apply: ApplyOptions) -> Self {
        TargetOutput {
            name,
            prefix: String::from_utf8_lossy(&apply.own_prefix).into_owned(),
            dispatcher,
            apply,
            snapshot: None,
        }
    }

    fn pipeline(&self, cause: PipelineError) -> ApplyError {
        ApplyError::Pipeline {
            name: self.name.clone(),
            cause,
        }
    }

    fn exactly_once(&self, replid: &str) -> ExactlyOnce {
        ExactlyOnce {
            prefix: self.prefix.clone(),
            source: self.name.clone(),
            replid: replid.to_string(),
        }
    }

    /// The offsets recorded on the target by each writer under `replid` (0: none).
    fn read_records(&self, replid: &str) -> Result<Vec<u64>, ClientError> {
        let keys = self.dispatcher.record_keys(&self.prefix, &self.name, false);
        let values = self.dispatcher.target().read_db0(&keys)?;
        // No record, another replid's or an unreadable one: nothing to skip.
        Ok(values
            .iter()
            .map(|v| {
                v.as_deref()
                    .and_then(|v| record::position(v).ok())
                    .filter(|(r, _)| *r == replid)
                    .map_or(0, |(_, end)| end)
            })
            .collect())
    }
}

impl Output for TargetOutput {
    fn resume(&mut self, replid: &str, offset: u64) -> Result<(), ApplyError> {
        let skip = self
            .read_records(replid)
            .map_err(|cause| ApplyError::Records {
                name: self.name.clone(),
                cause,
            })?;
        tracing::info!(source = %self.name, checkpoint = offset, records = ?skip, "exactly-once: commands the target already applied after the checkpoint are skipped");
        self.dispatcher.set_skip(skip);
        self.dispatcher
            .set_exactly_once(Some(self.exactly_once(replid)));
        Ok(())
    }

    fn full_resync(&mut self, replid: &str, offset: Option<u64>) -> Result<(), ApplyError> {
        // Snapshot batches are recorded too (under the new replid, at the snapshot offset):
        // nothing of them is skipped after a restart (a crash during the snapshot means a new
        // full sync), but a writer that loses its connection knows which ones were applied.
        self.dispatcher.set_skip(Vec::new());
        self.dispatcher
            .set_exactly_once(Some(self.exactly_once(replid)));
        self.snapshot = Some(SnapshotApply::new(self.apply.clone(), offset.unwrap_or(0)));
        Ok(())
    }

    fn snapshot_event(&mut self, ev: Event) -> Result<(), HandlerError> {
        let snap = self
            .snapshot
            .as_mut()
            .ok_or("snapshot event outside a full resync")?;
        snap.on_event(ev, &mut self.dispatcher)
            .map_err(|e| e.into())
    }

    fn snapshot_keys(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.stats.keys)
    }

    fn snapshot_parsed(&mut self) -> Result<(), ApplyError> {
        if let Some(s) = self.snapshot.as_ref().map(|s| &s.stats) {
            tracing::info!(source = %self.name, keys = s.keys, restored = s.restored, in_mset = s.mset, as_commands = s.rewritten, big = s.big_keys, expired = s.expired_skipped, skipped = s.skipped, "snapshot parsed; waiting for the target to acknowledge it");
        }
        self.barrier()
    }

    fn snapshot_done(&mut self) -> Result<(), ApplyError> {
        self.snapshot = None;
        Ok(())
    }

    fn partial_resync(&mut self, replid: &str) -> Result<(), ApplyError> {
        self.flush()?;
        self.dispatcher
            .set_exactly_once(Some(self.exactly_once(replid)));
        Ok(())
    }

    fn command(&mut self, stream: &mut StreamApply, frame: Frame) -> Result<Control, ApplyError> {
        stream
            .on_frame(frame, &mut self.dispatcher)
            .map_err(|e| self.pipeline(e))
    }

    fn advance(&mut self, end: u64) {
        self.dispatcher.advance(end);
    }

    fn flush(&mut self) -> Result<(), ApplyError> {
        self.dispatcher.flush().map_err(|e| self.pipeline(e))
    }

    fn barrier(&mut self) -> Result<(), ApplyError> {
        self.dispatcher.barrier().map_err(|e| self.pipeline(e))
    }

    fn applied(&self) -> u64 {
        self.dispatcher.tracker.applied()
    }

    fn is_target(&self) -> bool {
        true
    }

    fn has_records(&self) -> Result<bool, ClientError> {
        let keys = self.dispatcher.record_keys(&self.prefix, &self.name, true);
        Ok(self
            .dispatcher
            .target()
            .read_db0(&keys)?
            .iter()
            .any(Option::is_some))
    }
}

/// A program's own sink: every event handed over is applied once `event` returns.
pub struct SinkOutput {
    name: String,
    sink: Box<dyn EventSink>,
    /// Offset of the last event the sink took.
    offset: u64,
    keys: u64,
    /// Where the lag of a heartbeat is shown (the sink has everything before it at once).
    figures: Arc<LoopFigures>,
}

impl SinkOutput {
    pub fn new(name: String, sink: Box<dyn EventSink>, figures: Arc<LoopFigures>) -> Self {
        SinkOutput {
            name,
            sink,
            offset: 0,
            keys: 0,
            figures,
        }
    }

    fn deliver(&mut self, ev: RelayEvent) -> Result<(), ApplyError> {
        self.sink.event(ev).map_err(|cause| ApplyError::Sink {
            name: self.name.clone(),
            cause,
        })
    }
}

/// Replication-internal commands: consumed, not delivered to a sink.
fn internal(name: Option<&[u8]>) -> bool {
    match name {
        None => true,
        Some(n) => {
            n.eq_ignore_ascii_case(b"PING")
                || n.eq_ignore_ascii_case(b"REPLCONF")
                || n.eq_ignore_ascii_case(b"SELECT")
        }
    }
}

fn is_getack(frame: &Frame) -> bool {
    frame
        .name()
        .is_some_and(|n| n.eq_ignore_ascii_case(b"REPLCONF"))
        && frame
            .args
            .get(1)
            .is_some_and(|a| a.eq_ignore_ascii_case(b"GETACK"))
}

impl Output for SinkOutput {
    fn resume(&mut self, _replid: &str, offset: u64) -> Result<(), ApplyError> {
        self.offset = offset;
        Ok(())
    }

    fn full_resync(&mut self, replid: &str, offset: Option<u64>) -> Result<(), ApplyError> {
        self.keys = 0;
        self.offset = offset.unwrap_or(0);
        let ev = RelayEvent::FullResync {
            source: self.name.clone(),
            replid: replid.to_string(),
            offset,
        };
        self.sink
            .event(ev)
            .map_err(|cause| ApplyError::SinkRefusedResync {
                name: self.name.clone(),
                cause,
            })
    }

    fn snapshot_event(&mut self, ev: Event) -> Result<(), HandlerError> {
        if matches!(ev, Event::Entry(_) | Event::BigStart(_)) {
            self.keys += 1;
        }
        self.sink.event(RelayEvent::Snapshot {
            source: self.name.clone(),
            event: ev,
        })
    }

    fn snapshot_keys(&self) -> u64 {
        self.keys
    }

    fn snapshot_parsed(&mut self) -> Result<(), ApplyError> {
        Ok(())
    }

    fn snapshot_done(&mut self) -> Result<(), ApplyError> {
        self.deliver(RelayEvent::SnapshotEnd {
            source: self.name.clone(),
        })
    }

    fn partial_resync(&mut self, _replid: &str) -> Result<(), ApplyError> {
        Ok(())
    }

    fn command(&mut self, stream: &mut StreamApply, frame: Frame) -> Result<Control, ApplyError> {
        if let Some(stamp) = stream.heartbeat_stamp(&frame) {
            // The relay's own key: not for the sink; the sink has everything before.
            stream.observe(&frame);
            self.offset = stream.offset();
            let lag = crate::batch::offsets::unix_us().saturating_sub(stamp);
            self.figures.heartbeat_lag_us.store(lag, Ordering::Relaxed);
            return Ok(Control::None);
        }
        let end = stream.offset() + frame.raw.len() as u64;
        let getack = is_getack(&frame);
        let deliver = !internal(frame.name());
        let db_before = stream.current_db();
        // Keep the stream state (offset, SELECT, MULTI) with a dispatcher-free pass.
        stream.observe(&frame);
        if deliver {
            self.deliver(RelayEvent::Command {
                source: self.name.clone(),
                db: db_before,
                offset: end,
                args: frame.args,
            })?;
        }
        if !stream.in_transaction() {
            self.offset = end;
        }
        Ok(if getack {
            Control::AckRequested
        } else {
            Control::None
        })
    }

    fn advance(&mut self, _end: u64) {}

    fn flush(&mut self) -> Result<(), ApplyError> {
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), ApplyError> {
        Ok(())
    }

    fn applied(&self) -> u64 {
        self.offset
    }

    fn is_target(&self) -> bool {
        false
    }

    fn has_records(&self) -> Result<bool, ClientError> {
        Ok(false)
    }
}
