//! Redis Cluster as a target: the slot-partitioned writers and what they stand on.
//!
//! - [`pool`]: the writer pool the pipeline sees as one writer per hash slot, served by
//!   [`lane`] threads (one batch in flight per slot; MOVED, ASK, TRYAGAIN, CLUSTERDOWN and
//!   broken connections handled per batch);
//! - [`slot`]: a key's hash slot ([`key_slot`]) and a hash tag for every slot ([`slot_tag`]),
//!   so that a record key can live in the slot of the data it describes;
//! - [`topology`]: the slot map ([`SlotMap`]) from `CLUSTER SHARDS` or `CLUSTER SLOTS`;
//! - [`client`]: a blocking client of the whole cluster that follows MOVED, ASK, TRYAGAIN and
//!   outages ([`client::ClusterClient`]), for the rare operations beside the slot writers;
//! - [`cross_slot`]: running a unit whose keys span slots on scratch keys, then writing each
//!   slot's part with its record, exactly once per slot and safe across a crash;
//! - [`is_cluster`], [`kind_of`]: whether a server is a cluster node (`--target-kind`).
pub mod client;
pub mod cross_slot;
mod lane;
pub mod pool;
pub mod slot;
pub mod topology;

pub use slot::{key_slot, slot_tag, SLOTS};
pub use topology::{SlotMap, TopologyError};

use crate::resp::client::info_field;
use crate::resp::{Client, Reply};

/// What the target is (`--target-kind`): detected from `INFO cluster` unless forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// One Redis (or a proxy in front of several): every key goes to it.
    Standalone,
    /// A Redis Cluster: keys are written to the master of their hash slot.
    Cluster,
}

/// The kind of the target whose first reachable seed is `conn`: `forced` if given, else
/// what `INFO cluster` says.
pub fn kind_of(conn: &mut Client, forced: Option<TargetKind>) -> std::io::Result<TargetKind> {
    if let Some(k) = forced {
        return Ok(k);
    }
    Ok(if is_cluster(conn)? {
        TargetKind::Cluster
    } else {
        TargetKind::Standalone
    })
}

/// `INFO cluster` says `cluster_enabled:1`. Servers without cluster support (before 3.0) have
/// no such section and answer `false`; a refused `INFO` is an error (the relay cannot tell).
pub fn is_cluster(conn: &mut Client) -> std::io::Result<bool> {
    match conn.call(&["INFO", "cluster"])? {
        Reply::Error(e) => Err(std::io::Error::other(format!(
            "INFO cluster refused: {}",
            String::from_utf8_lossy(&e)
        ))),
        reply => Ok(info_says_cluster(&reply.as_text().unwrap_or_default())),
    }
}

/// The text of an `INFO` reply says `cluster_enabled:1`.
pub fn info_says_cluster(info: &str) -> bool {
    info_field(info, "cluster_enabled").as_deref() == Some("1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_enabled_from_info_text() {
        assert!(info_says_cluster("# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!info_says_cluster("# Cluster\r\ncluster_enabled:0\r\n"));
        // Before 3.0: no cluster section at all.
        assert!(!info_says_cluster(""));
    }
}
