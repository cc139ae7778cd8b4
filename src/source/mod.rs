//! The source side, the start of the data path: the fake replica that connects to each master
//! (handshake state machine, PSYNC, the RDB transfer, the command stream, ACKs), and which
//! masters are sources and which are peers (the Twemproxy config, nutcracker's placement).
//!
//! Owns: the replication connection of each master and its offsets as received. May not
//! touch: anything downstream; a link hands what it reads to a [`LinkSink`] (the relay plugs
//! the spool in) and learns what is applied from its [`SourceProgress`].
pub mod handshake;
pub mod link;
pub mod stream;
pub mod topology;
pub mod transfer;
pub mod twemproxy;

pub use link::{run_link, LinkConfig, LinkError, LinkSink, LinkState, SourceProgress};
