//! redis-relay: a replication proxy for Redis.
//!
//! # Layout
//!
//! In data-flow order: a master's bytes enter at the top and leave as commands to the target
//! at the bottom; the modules after the line work beside the flow.
//!
//! - [`endpoint`]: where a server is and how to log in (`redis://` URLs, passwords redacted).
//! - [`source`]: the fake replica per master: handshake state machine, PSYNC, RDB transfer,
//!   command stream, ACKs ([`source::link`]); the Twemproxy config and nutcracker's key
//!   placement ([`source::twemproxy`]); which masters are sources and which are peers
//!   ([`source::topology`]).
//! - [`rdb`]: the streaming RDB parser (versions 1 to 12) and its encodings.
//! - [`resp`]: RESP encoding, reply parsing, the replication stream framer.
//! - [`pipeline`]: the spool, the stream apply (MULTI/EXEC, SELECT, filters), routing by key
//!   over the writers, per-source applied offsets, checkpoints, the exactly-once record
//!   ([`batch::record`]).
//! - [`target`]: writer connections and the pool, snapshot values as RESTORE or commands,
//!   proven deletions ([`target::deletion`]).
//! - [`relay`]: wires them together (builder, handle, one apply thread per source, deferred
//!   deletions) and is the library's entry point.
//!
//! ---
//!
//! - [`check`]: the prechecks; [`verify`]: key-by-key comparison of sources and target;
//!   [`restore`]: an RDB file into a live Redis through the same apply path.
//! - [`config`]: `--config` files; [`metrics`]: every metric, described; [`progress`]: bars
//!   and status lines.
pub mod batch;
pub mod check;
pub mod config;
pub mod endpoint;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod rdb;
pub mod relay;
pub mod resp;
pub mod restore;
pub mod source;
pub mod spool;
pub mod target;
pub mod verify;
