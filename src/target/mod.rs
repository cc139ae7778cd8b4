//! The target side, the end of the data path: the writer pool (one connection per writer,
//! pipelined, acknowledging batches to their sources' trackers), the commands it sends, the
//! target's facts, and the deletions only a proof allows (sweeps, flush translation, the
//! deferred ones); and an in-memory model of a target ([`memory`]) for tests and dry runs.
//! [`cluster`]: key slots, the slot map of a Redis Cluster, and the detection that makes the
//! relay refuse a cluster target until a slot-aware writer exists.
//!
//! Owns: every write to the target. May not touch: sources, the spool, the pipeline (it takes
//! [`crate::batch::Batch`]es and knows nothing of where they come from).
pub mod cluster;
pub mod commands;
pub mod deferred;
pub mod deletion;
pub mod info;
pub mod memory;
pub mod writer;

pub use info::TargetInfo;

use bytes::Bytes;

use crate::batch::Batch;
use crate::resp::ClientError;
use writer::{PoolError, WriterFailure};

/// The target as the pipeline sees it: writers that each apply their batches in order and
/// acknowledge them to the batch's tracker once applied, and the relay's records in database 0.
/// [`PoolHandle`] is the real one (the writer pool on a Redis); tests without a server (and
/// dry runs) use [`memory::MemoryTarget`] behind the same trait.
pub trait Writers: Send + Sync {
    /// How many writers (keys are partitioned over them).
    fn writers(&self) -> usize;
    /// Hand `batch` to writer `w`, waiting while its queue is full (back-pressure). Fails once
    /// the target has failed (the batch is not applied).
    fn send(&self, w: usize, batch: Batch) -> Result<(), PoolError>;
    /// The first fatal error of any writer.
    fn failure(&self) -> Option<WriterFailure>;
    /// The values of `keys` in database 0 (where the relay's records live), in order.
    fn read_db0(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ClientError>;
}
pub use writer::{ErrorPolicy, PoolHandle, WriterOptions, WriterPool};
