//! The target side, the end of the data path: the writer pool (one connection per writer,
//! pipelined, acknowledging batches to their sources' trackers), the commands it sends, the
//! target's facts, and the deletions only a proof allows (sweeps, flush translation, the
//! deferred ones).
//!
//! Owns: every write to the target. May not touch: sources, the spool, the pipeline (it takes
//! [`crate::batch::Batch`]es and knows nothing of where they come from).
pub mod commands;
pub mod deferred;
pub mod deletion;
pub mod info;
pub mod writer;

pub use info::TargetInfo;
pub use writer::{ErrorPolicy, PoolHandle, WriterOptions, WriterPool};
