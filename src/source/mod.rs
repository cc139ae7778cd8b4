//! The source side: the fake replica that connects to each master.
pub mod handshake;
pub mod link;
pub mod topology;
pub mod transfer;
pub mod twemproxy;

pub use link::{run_link, LinkConfig, LinkError, LinkSink, LinkState, SourceProgress};
