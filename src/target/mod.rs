//! The target side, the end of the data path: the writer pool (one connection per writer,
//! pipelined, acknowledging batches to their sources' trackers), the commands it sends, the
//! target's facts, and the deletions only a proof allows (sweeps, flush translation, the
//! deferred ones); and an in-memory model of a target ([`memory`]) for tests and dry runs.
//! [`cluster`]: the writers of a Redis Cluster target (one lane per hash slot, redirections,
//! cross-slot units); [`TargetPool`] starts either kind.
//!
//! Owns: every write to the target. May not touch: sources, the spool, the pipeline (it takes
//! [`crate::batch::Batch`]es and knows nothing of where they come from).
pub mod cluster;
pub mod command_table;
pub mod commands;
pub mod control;
pub mod deferred;
pub mod deletion;
pub mod info;
pub mod memory;
pub mod writer;

pub use info::TargetInfo;

use bytes::Bytes;

use crate::batch::{record, Batch, CrossSlot};
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
    /// Keys are placed by hash slot (a Redis Cluster): writer `w` is slot `w` (there are
    /// [`cluster::SLOTS`] writers), every batch holds one slot's ops, and commands whose keys
    /// span slots go through [`Writers::cross_slot`] instead.
    fn slotted(&self) -> bool {
        false
    }
    /// The record key of `source`'s batches on writer `w` (on a cluster, in slot `w`).
    fn record_key(&self, prefix: &str, source: &str, w: usize) -> String {
        record::key(prefix, source, w)
    }
    /// Run a unit of commands whose keys span slots, once everything before it is
    /// acknowledged; returns once the target holds every part. Only a slotted target has
    /// such units.
    fn cross_slot(&self, unit: CrossSlot) -> Result<(), PoolError> {
        let _ = unit;
        Err(PoolError::Failed(WriterFailure::NotSlotted))
    }
    /// Run keyless `commands` (argument vectors) in database `db` on every master of a
    /// cluster target, once everything before them is acknowledged: the commands that act on
    /// the node that receives them (FLUSHALL, FLUSHDB, SCRIPT LOAD, FUNCTION LOAD).
    fn every_master(&self, db: u32, commands: Vec<Vec<Bytes>>) -> Result<(), PoolError> {
        let _ = (db, commands);
        Err(PoolError::Failed(WriterFailure::NotSlotted))
    }
}
pub use writer::{ErrorPolicy, PoolHandle, WriterOptions, WriterPool};

use std::sync::Arc;

use crate::endpoint::Endpoint;
use cluster::pool::{ClusterPool, ClusterStartError};
use cluster::TargetKind;
use writer::PoolState;

/// Why the writers could not start (each message names the node).
#[derive(Debug, thiserror::Error)]
pub enum PoolStartError {
    #[error(transparent)]
    Standalone(#[from] ClientError),
    #[error(transparent)]
    Cluster(#[from] ClusterStartError),
}

/// The running writers of a target of either kind.
pub enum TargetPool {
    Standalone(WriterPool),
    Cluster(ClusterPool),
}

impl TargetPool {
    /// Start the writers of a `kind` target reached through `seeds` (one for a standalone
    /// target: the first).
    pub fn start(
        seeds: &[Endpoint],
        kind: TargetKind,
        opts: &WriterOptions,
    ) -> Result<TargetPool, PoolStartError> {
        Ok(match kind {
            TargetKind::Standalone => TargetPool::Standalone(WriterPool::start(&seeds[0], opts)?),
            TargetKind::Cluster => TargetPool::Cluster(ClusterPool::start(seeds, opts)?),
        })
    }

    /// The writers the pipeline partitions keys over (hash slots on a cluster).
    pub fn writers(&self) -> usize {
        match self {
            TargetPool::Standalone(p) => p.writers(),
            TargetPool::Cluster(_) => cluster::SLOTS,
        }
    }

    /// The pipeline's handle.
    pub fn handle(&self) -> Arc<dyn Writers> {
        match self {
            TargetPool::Standalone(p) => Arc::new(p.handle()),
            TargetPool::Cluster(p) => Arc::new(p.handle()),
        }
    }

    /// Shared state: the first fatal error, bytes written.
    pub fn state(&self) -> &Arc<PoolState> {
        match self {
            TargetPool::Standalone(p) => &p.state,
            TargetPool::Cluster(p) => &p.state,
        }
    }

    /// Close the inputs and wait for the writers to drain.
    pub fn finish(self) -> Result<(), PoolError> {
        match self {
            TargetPool::Standalone(p) => p.finish(),
            TargetPool::Cluster(p) => p.finish(),
        }
    }

    /// Abandon the writers (their sockets are closed).
    pub fn abort(&self) {
        match self {
            TargetPool::Standalone(p) => p.abort(),
            TargetPool::Cluster(p) => p.abort(),
        }
    }
}
