//! Why the pipeline (dispatcher and stream apply) could not hand a command to the target.

use crate::target::writer::PoolError;

/// A fatal error of the pipeline; the source's apply loop stops on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    /// The writer pool failed (the target refused a command under the stop policy, or one
    /// the relay needs, or the pool was aborted).
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A command the target refuses at queue time (unknown there, wrong arity), under
    /// `--on-target-error stop`: the source's offset stays before it.
    #[error("the target refuses {command} ({kind}) at stream offset {offset}: stopping (--on-target-error stop; `skip` leaves such commands out)")]
    Refused {
        command: String,
        kind: &'static str,
        offset: u64,
    },
    /// A SELECT of the command stream without a valid database number.
    #[error("bad SELECT in the stream at offset {offset}")]
    BadSelect { offset: u64 },
    /// A command a cluster target cannot be brought to the source's state by (keyless
    /// commands inside a transaction that spans slots, keys the relay cannot find).
    #[error(
        "{command} at stream offset {offset} cannot be applied to a Redis Cluster target: {why}"
    )]
    CrossSlotUnsupported {
        command: String,
        offset: u64,
        why: &'static str,
    },
    /// A hash field TTL command toward a target without field TTLs, under
    /// `--on-unsupported-type stop`.
    #[error("{command} at stream offset {offset} sets hash field TTLs, which the target cannot hold (Redis 7.4+ and Valkey 9+ can): use such a target, or --on-unsupported-type drop-ttl to copy the fields without their TTLs")]
    FieldTtlUnsupported { command: String, offset: u64 },
    /// A `RESTORE` of the stream whose payload the target cannot load and the relay cannot
    /// rewrite as commands (a module value, a corrupt payload), under `--on-target-error stop`.
    #[error("RESTORE of {key} at stream offset {offset}: the target cannot load its payload (RDB {version}) and it cannot be rewritten as commands: {why}")]
    ForeignRestore {
        key: String,
        offset: u64,
        version: u32,
        why: String,
    },
}
