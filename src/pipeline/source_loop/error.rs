//! Why a source's apply loop stopped: every error names the source (and where it applies,
//! the offset, the target or the kind of deletion).

use crate::pipeline::PipelineError;
use crate::rdb::RdbError;
use crate::resp::client::ClientError;
use crate::resp::framer::FrameError;
use crate::spool::SpoolError;
use crate::target::deletion::DeletionError;

/// An error a program's [`crate::relay::EventSink`] returned.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// A fatal error of one source's apply loop. Rendered to text only at the boundary
/// ([`crate::relay::RelayHandle::error`] and the logs).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The deferred deletions could not be read or written (`what` says which).
    #[error("source {name}: {what}: {cause}")]
    Deferred {
        name: String,
        what: &'static str,
        cause: std::io::Error,
    },
    /// The source's spool failed (its message names the spool's directory).
    #[error("source {name}: {cause}")]
    Spool { name: String, cause: SpoolError },
    /// The pipeline to the target failed; the writers' message names the target and the
    /// command, and is shared by every source (so it is not prefixed with this one).
    #[error("{cause}")]
    Pipeline { name: String, cause: PipelineError },
    /// Snapshot bytes arrived while no full resync was under way.
    #[error("source {name}: snapshot data outside a full resync")]
    SnapshotOutsideSync { name: String },
    /// The snapshot did not parse (or the target or sink refused one of its events); the RDB
    /// error carries the byte offset and the key.
    #[error("source {name}: snapshot: {cause}")]
    Snapshot { name: String, cause: Box<RdbError> },
    /// Reading what follows the RDB in the snapshot transfer failed.
    #[error("source {name}: after the snapshot: {cause}")]
    AfterSnapshot { name: String, cause: std::io::Error },
    /// The snapshot transfer held bytes after the end of the RDB.
    #[error("source {name}: {extra} bytes after the end of the RDB in the snapshot transfer")]
    TrailingBytes { name: String, extra: u64 },
    /// A program's sink refused the start of a full resync.
    #[error("source {name}: sink refused the full resync: {cause}")]
    SinkRefusedResync { name: String, cause: SinkError },
    /// A program's sink refused an event.
    #[error("source {name}: sink: {cause}")]
    Sink { name: String, cause: SinkError },
    #[error("source {name}: partial resync without a loaded snapshot")]
    PartialWithoutSnapshot { name: String },
    #[error("source {name}: partial resync at offset {offset}, but the stream was processed up to {processed} (a gap would lose writes)")]
    PartialGap {
        name: String,
        offset: u64,
        processed: u64,
    },
    #[error("source {name}: stream data before any sync")]
    StreamBeforeSync { name: String },
    /// The target no longer holds what it acknowledged, under `--on-target-loss stop`.
    #[error("source {name}: target loss: {reason}; stopped (--on-target-loss stop): the target no longer holds what this relay wrote; start again with --on-target-loss resync (or remove the state dir's checkpoint) to copy the source anew")]
    TargetLost {
        name: String,
        reason: super::target_loss::LossReason,
    },
    #[error("source {name}: bad command stream at offset {offset}: {cause}")]
    BadStream {
        name: String,
        offset: u64,
        cause: Box<FrameError>,
    },
    /// Reading the exactly-once records on the target failed (the message names the target).
    #[error("source {name}: {cause}")]
    Records { name: String, cause: ClientError },
    #[error("source {name}: a deletion without a target")]
    DeletionWithoutTarget { name: String },
    /// A proven deletion failed; `cause` is "flush", "stale" or "deferred".
    #[error("source {name}: {cause} deletion: {error}")]
    Deletion {
        name: String,
        cause: &'static str,
        error: Box<DeletionError>,
    },
    #[error("source {name}: target {target} refused DEL of a deferred key written again: {reply}")]
    DelRefused {
        name: String,
        target: String,
        reply: String,
    },
    #[error("source {name}: stopped while deleting a deferred key: {cause}")]
    DelStopped { name: String, cause: ClientError },
}

impl ApplyError {
    /// The source this error is about.
    pub fn source_name(&self) -> &str {
        match self {
            ApplyError::Deferred { name, .. }
            | ApplyError::Spool { name, .. }
            | ApplyError::Pipeline { name, .. }
            | ApplyError::SnapshotOutsideSync { name }
            | ApplyError::Snapshot { name, .. }
            | ApplyError::AfterSnapshot { name, .. }
            | ApplyError::TrailingBytes { name, .. }
            | ApplyError::SinkRefusedResync { name, .. }
            | ApplyError::Sink { name, .. }
            | ApplyError::PartialWithoutSnapshot { name }
            | ApplyError::PartialGap { name, .. }
            | ApplyError::StreamBeforeSync { name }
            | ApplyError::TargetLost { name, .. }
            | ApplyError::BadStream { name, .. }
            | ApplyError::Records { name, .. }
            | ApplyError::DeletionWithoutTarget { name }
            | ApplyError::Deletion { name, .. }
            | ApplyError::DelRefused { name, .. }
            | ApplyError::DelStopped { name, .. } => name,
        }
    }
}
