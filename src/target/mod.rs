//! The target side: connections, the writer pool, and how snapshot values become commands.
pub mod apply;
pub mod commands;
pub mod connection;
pub mod deletion;
pub mod rewrite;
pub mod writer;

pub use apply::{ApplyOptions, ApplyStats, SnapshotApply};
pub use connection::{TargetConn, TargetError, TargetInfo};
pub use writer::{ErrorPolicy, PoolHandle, WriterOptions, WriterPool};
