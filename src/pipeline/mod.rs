//! From a source's records to batches for the writers: the per-source loop
//! ([`source_loop`]: full and partial resyncs, checkpoints, proven deletions), the snapshot
//! apply (RDB values as RESTORE, MSET or commands: [`snapshot_apply`], [`rewrite`]), the
//! stream apply (MULTI/EXEC, SELECT, filters, replayable batches: [`stream_apply`]), and the
//! dispatcher that routes by key over the writers ([`dispatcher`], [`router`]).
//!
//! Owns: the order of a source's commands and the offsets they end at. May not touch: the
//! source link (it reads the spool) or the writers' connections (it hands
//! [`crate::batch::Batch`]es to [`crate::target`]).
pub mod checkpoint;
pub mod cross_slot;
pub mod dispatcher;
pub mod error;
pub mod field_ttl;
pub mod filter;
pub mod fold;
pub mod foreign_restore;
pub mod keys;
pub mod replayable;
pub mod rewrite;
pub mod router;
pub mod snapshot_apply;
pub mod source_loop;
pub mod stream_apply;

pub use dispatcher::Dispatcher;
pub use error::PipelineError;
pub use snapshot_apply::{ApplyOptions, ApplyStats, SnapshotApply};
