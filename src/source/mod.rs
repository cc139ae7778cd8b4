//! The source side: the fake replica that connects to each master.
pub mod handshake;
pub mod link;
pub mod transfer;
pub mod topology;
pub mod twemproxy;

pub use link::{run_link, LinkConfig, LinkError, LinkSink, LinkState, SourceProgress};
