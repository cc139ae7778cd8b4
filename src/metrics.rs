//! The Prometheus metrics the relay emits. The library only emits through the `metrics`
//! facade; the binary installs the recorder and serves it ([`crate::status::http`]). Every
//! name here is listed, with its meaning, in docs/metrics.md.
//!
//! Beside the data path. Owns: the names and their descriptions. The stages emit through the
//! `metrics` facade and never import this module.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

use crate::source::LinkState;

pub const SYNC_STATES: [LinkState; 7] = [
    LinkState::Connecting,
    LinkState::Handshake,
    LinkState::Rdb,
    LinkState::Streaming,
    LinkState::Backoff,
    LinkState::Stopped,
    LinkState::Failed,
];

/// Register descriptions (HELP lines) for every metric.
// Long: a flat table, one call per metric (name, unit, help text), like the metrics table of docs/metrics.md; split, it would only be arbitrary groups of the same call.
pub fn describe() {
    describe_gauge!(
        "redis_relay_lag_bytes",
        Unit::Bytes,
        "Master replication offset minus the offset the target has acknowledged, per source"
    );
    describe_gauge!(
        "redis_relay_lag_seconds",
        Unit::Seconds,
        "With --heartbeat: time from the heartbeat's write on the source until the target acknowledged everything written before it"
    );
    describe_gauge!(
        "redis_relay_lag_seconds_estimate",
        Unit::Seconds,
        "Lag bytes divided by the master's write rate over the last 10 s (an estimate; +Inf when behind while the master is idle)"
    );
    describe_gauge!(
        "redis_relay_snapshot_keys",
        "Keys of the current (or last) snapshot handed to the target"
    );
    describe_gauge!(
        "redis_relay_applied_offset",
        "Highest stream offset up to which the target acknowledged everything, per source"
    );
    describe_gauge!(
        "redis_relay_master_offset",
        "Master replication offset: last stream byte received from the source"
    );
    describe_counter!(
        "redis_relay_commands_applied_total",
        "Commands acknowledged by the target (snapshot and stream), per source"
    );
    describe_counter!(
        "redis_relay_bytes_received_total",
        Unit::Bytes,
        "Bytes received from the source (RDB and stream)"
    );
    describe_gauge!(
        "redis_relay_rdb_bytes_loaded",
        Unit::Bytes,
        "Bytes of the current snapshot parsed and handed to the writers"
    );
    describe_gauge!(
        "redis_relay_rdb_bytes_total",
        Unit::Bytes,
        "Size of the current snapshot as announced by the master (0 for diskless transfers)"
    );
    describe_gauge!("redis_relay_sync_state", "1 for the current state of the source's replication link (connecting, handshake, rdb, streaming, backoff, stopped, failed)");
    describe_counter!(
        "redis_relay_target_errors_total",
        "Error replies from the target, per source"
    );
    describe_histogram!(
        "redis_relay_apply_latency_seconds",
        Unit::Seconds,
        "Time from writing a batch to the target to its last reply"
    );
    describe_gauge!(
        "redis_relay_spool_bytes",
        Unit::Bytes,
        "Bytes waiting in the source's spool (memory and disk)"
    );
    describe_counter!(
        "redis_relay_batches_total",
        "Stream batches sent: transaction=yes in MULTI/EXEC with their record, no for batches of replayable commands"
    );
    describe_gauge!(
        "redis_relay_spool_disk_bytes",
        Unit::Bytes,
        "Bytes of the spool on disk"
    );
    describe_counter!(
        "redis_relay_full_syncs_total",
        "Full resyncs (snapshots) completed, per source"
    );
    describe_counter!(
        "redis_relay_snapshot_keys_skipped_total",
        "Snapshot keys that could not be written to the target (a module value, such as a Redis 8 vector set, toward a target that cannot RESTORE it; an undecodable value): each logged with its key"
    );
    describe_counter!(
        "redis_relay_field_ttls_dropped_total",
        "Hash field TTLs not written to a target that cannot hold them (--on-unsupported-type drop-ttl), per stage (snapshot, stream)"
    );
    describe_counter!(
        "redis_relay_full_sync_failures_total",
        "Full syncs the master started that ended before the snapshot was complete, per source and reason (closed, master_error, timeout, bad_transfer, io)"
    );
    describe_counter!(
        "redis_relay_target_loss_total",
        "Times the target was found without what it acknowledged, per source and reason: emptied (marker gone: FLUSHALL/FLUSHDB, restart without persistence), older (an older save, a failover to a replica behind), changed (someone else writes the marker)"
    );
    describe_gauge!(
        "redis_relay_snapshot_done",
        "1 once the source's snapshot is acknowledged by the target"
    );
    describe_gauge!(
        "redis_relay_in_sync",
        "1 while the source is in sync: snapshot applied, link streaming, lag 0 B or under 1 s (see `redis-relay status`)"
    );
    describe_gauge!(
        "redis_relay_connected",
        "1 while the replication link to the source is up"
    );
    describe_gauge!(
        "redis_relay_backlog_bytes",
        Unit::Bytes,
        "The master's repl-backlog-size"
    );
    describe_gauge!(
        "redis_relay_backlog_usage_ratio",
        "Lag bytes divided by the master's repl-backlog-size (1 = a reconnect needs a full resync)"
    );
    describe_counter!(
        "redis_relay_acks_sent_total",
        "REPLCONF ACKs sent to the source"
    );
    describe_counter!(
        "redis_relay_source_reconnects_total",
        "Connection attempts to the source after the first"
    );
    describe_gauge!(
        "redis_relay_deferred_deletions",
        "target keys whose deletion (after a FLUSHDB/FLUSHALL of the source, or a forced full resync) waits for a peer master that did not answer"
    );
    describe_gauge!(
        "redis_relay_deferred_deletion_age_seconds",
        Unit::Seconds,
        "age of the oldest deferred deletion (0 when none)"
    );
    describe_counter!(
        "redis_relay_deletions_total",
        "target keys deleted as proven to be the source's, by cause: flush (FLUSHDB/FLUSHALL of the source), stale (sweep after a forced full resync), deferred (a deferred deletion completed), written (a deferred key the source wrote again: its old value deleted just before the write)"
    );
    describe_counter!(
        "redis_relay_deletions_kept_total",
        "target keys a deletion left in place, by reason: on_peer (a peer master holds the key), unattributed (the relay knows no other writer and cannot prove the key is its own)"
    );
    describe_counter!(
        "redis_relay_peer_checks_total",
        "pipelined EXISTS round trips to peer masters made to prove deletions"
    );
    describe_histogram!(
        "redis_relay_heartbeat_lag_seconds",
        Unit::Seconds,
        "With --heartbeat: each heartbeat's lag, from its write on the source until the target acknowledged everything before it"
    );
    describe_counter!(
        "redis_relay_lone_writes_total",
        "Small batches written to an idle writer's connection by the thread that handed them over (one thread hand-off instead of two)"
    );
    describe_counter!(
        "redis_relay_target_reconnects_total",
        "Writer connections to the target that broke and were replaced"
    );
    describe_counter!(
        "redis_relay_cluster_redirects_total",
        "Cluster target: MOVED, ASK, TRYAGAIN and CLUSTERDOWN replies, by node and kind (the batch was not applied and is sent again)"
    );
    describe_counter!(
        "redis_relay_cluster_topology_refreshes_total",
        "Cluster target: slot map reads (after MOVED, a broken connection, CLUSTERDOWN, or every 10 s)"
    );
    describe_histogram!(
        "redis_relay_cluster_apply_latency_seconds",
        Unit::Seconds,
        "Cluster target: time from writing a round of batches to a master until its last reply, by node"
    );
    describe_gauge!(
        "redis_relay_cluster_slots_unwritable",
        "Cluster target: hash slots whose batches wait for a master (CLUSTERDOWN, failover, node gone, migration)"
    );
    describe_counter!(
        "redis_relay_cross_slot_total",
        "Cluster target: commands whose keys span hash slots (or have none), by command and handling: split, rewrite, every-master, noop, barrier, one-slot"
    );
    describe_histogram!(
        "redis_relay_cluster_cross_slot_seconds",
        Unit::Seconds,
        "Cluster target: time to apply one cross-slot unit (read, compute on scratch keys, write back per slot)"
    );
    describe_counter!(
        "redis_relay_target_refused_total",
        "Commands the target would refuse at queue time (unknown-command, wrong-arity, unknown-subcommand), left out of their batch, per source and kind"
    );
    describe_gauge!(
        "redis_relay_target_stalled",
        "Writers (cluster: lanes) waiting for the target to accept writes again, by reason (oom: over maxmemory under noeviction)"
    );
}
