//! redis-relay: a replication proxy for Redis.
//!
//! # Layout
//!
//! In data-flow order: a master's bytes enter at the top and leave as commands to the target
//! at the bottom. Each stage imports only stages below it and the shared vocabulary;
//! `tests/layout.rs` checks this, and the absence of import cycles, on every test run.
//!
//! - [`source`]: the fake replica per master: handshake state machine, PSYNC, RDB transfer,
//!   command stream, ACKs ([`source::link`]); the Twemproxy config and nutcracker's key
//!   placement ([`source::twemproxy`]); which masters are sources and which are peers
//!   ([`source::topology`]).
//! - [`spool`]: the durable FIFO between a source's link and its loop (memory, then disk).
//! - [`pipeline`]: one loop per source ([`pipeline::source_loop`]: resyncs, offsets,
//!   checkpoints, proven deletions), the snapshot apply (RESTORE, MSET or commands), the
//!   stream apply (MULTI/EXEC, SELECT, filters), routing by key into per-writer batches.
//! - [`target`]: the writer pool behind the [`target::Writers`] trait (and an in-memory one),
//!   the target's facts, proven deletions ([`target::deletion`]) and deferred ones.
//!
//! Shared vocabulary (used by the stages, using none of them):
//!
//! - [`endpoint`]: where a server is and how to log in (`redis://` URLs, passwords redacted).
//! - [`resp`]: RESP encoding, reply parsing, the replication stream framer, a blocking
//!   [`resp::Client`].
//! - [`rdb`]: the streaming RDB parser (versions 1 to 12) and its encodings.
//! - [`batch`]: ops and batches, the per-source offset tracker, the exactly-once record
//!   ([`batch::record`]).
//!
//! Wiring: [`relay`] connects the stages (builder, handle, status, [`relay::sampler`]: rates
//! and "in sync") and is the library's entry point.
//!
//! Beside the flow:
//!
//! - [`check`]: the prechecks; [`verify`]: key-by-key comparison of sources and target;
//!   [`restore`]: an RDB file into a live Redis through the same apply path.
//! - [`config`]: every option, declared once; [`metrics`]: every metric, described;
//!   [`progress`]: bars and status lines.
//! - [`status`]: the `/status` report and the HTTP endpoint beside `/metrics` (`/healthz`,
//!   `/readyz`), and the `redis-relay status` command's fetching and table.
//!
//! The binary (`src/main.rs`) is the command line over this library; its `demo` module
//! (`src/demo/`) is `redis-relay demo`: local servers, data and a write load, then `sync`.
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
pub mod status;
pub mod target;
pub mod verify;
