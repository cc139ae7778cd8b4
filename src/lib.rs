//! redis-relay: a replication proxy for Redis.
pub mod endpoint;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod rdb;
pub mod relay;
pub mod resp;
pub mod restore;
pub mod source;
pub mod target;
pub mod verify;
