//! From sources to writers: ops and batches, routing by key, per-source applied offsets.
pub mod checkpoint;
pub mod dispatcher;
pub mod error;
pub mod filter;
pub mod keys;
pub mod offsets;
pub mod op;
pub mod record;
pub mod replayable;
pub mod router;
pub mod spool;
pub mod stream_apply;

pub use dispatcher::Dispatcher;
pub use error::PipelineError;
pub use offsets::SourceTracker;
pub use op::{Batch, Op};
