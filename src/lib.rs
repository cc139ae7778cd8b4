//! redis-relay: a replication proxy for Redis.
pub mod rdb;
pub mod resp;
