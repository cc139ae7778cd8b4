//! redis-relay: a replication proxy for Redis.
pub mod endpoint;
pub mod pipeline;
pub mod progress;
pub mod rdb;
pub mod resp;
pub mod restore;
pub mod target;
pub mod verify;
