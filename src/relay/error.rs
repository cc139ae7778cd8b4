//! Why a relay did not start, or stopped: typed values up to the CLI, which alone turns them
//! into text and exit codes. Every message names what and where.

use std::path::PathBuf;
use std::sync::Arc;

use crate::pipeline::source_loop::ApplyError;
use crate::resp::ClientError;
use crate::spool::SpoolError;
use crate::target::writer::{PoolError, WriterFailure};

/// Why [`super::RelayBuilder::start`] failed: nothing runs.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no source: give --source or --twemproxy")]
    NoSource,
    #[error("no target: give --target")]
    NoTarget,
    #[error("source {0} is listed twice")]
    Duplicate(String),
    #[error("cannot create the state dir {}: {cause}", dir.display())]
    StateDir { dir: PathBuf, cause: std::io::Error },
    /// The target cannot be reached or refused the login (its message names it).
    #[error(transparent)]
    Target(#[from] ClientError),
    /// The target cannot be used at all: unreachable, INFO refused, a Redis Cluster node.
    #[error(transparent)]
    Unusable(#[from] crate::target::info::TargetUnusable),
    /// The writers could not start (a cluster's slot map, a master's login).
    #[error(transparent)]
    Pool(#[from] crate::target::PoolStartError),
    /// Record keys carry a hash tag on a cluster target: the prefix may not hold one.
    #[error("--key-prefix {0:?} holds '{{' or '}}': on a Redis Cluster target the relay's record keys carry a hash tag of their own; choose a prefix without braces")]
    ClusterPrefix(String),
    #[error("source {name}: unreadable checkpoint: {cause}")]
    Checkpoint { name: String, cause: std::io::Error },
    /// A source's spool could not be opened (its message names the directory).
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot start the relay's {what}: {cause}")]
    Threads {
        what: &'static str,
        cause: std::io::Error,
    },
    /// Another relay runs on the same state dir (its PID is named).
    #[error(transparent)]
    StateDirLocked(#[from] super::state_lock::LockError),
    /// Another relay writes a source's records on the target (named), or the lease failed.
    #[error(transparent)]
    Lease(#[from] super::lease::LeaseError),
    /// The target lost what it acknowledged, under `--on-target-loss stop`.
    #[error("source {name}: target loss: {reason}; not resuming (--on-target-loss stop): the target no longer holds what this relay wrote; start with --on-target-loss resync (or remove the checkpoint {}) to copy the source anew", checkpoint.display())]
    TargetLost {
        name: String,
        reason: crate::pipeline::source_loop::LossReason,
        checkpoint: PathBuf,
    },
    /// The target could not be asked whether it still holds what the checkpoint says.
    #[error("source {name}: cannot check the target's marker before resuming: {cause}")]
    TargetCheck {
        name: String,
        cause: crate::target::control::ControlError,
    },
}

/// Why a running relay stopped, or did not stop cleanly.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RelayError {
    /// The writers failed (shared by every source: the target or the command is named).
    #[error(transparent)]
    Writers(#[from] WriterFailure),
    /// The writer pool did not drain at shutdown.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A source's loop stopped on a fatal error (its message names the source).
    #[error(transparent)]
    Source(Arc<ApplyError>),
    /// A source's replication link gave up (the link's own account of why).
    #[error("source {source_name}: {message}")]
    Link {
        source_name: String,
        message: String,
    },
    #[error("shutdown timed out before the target acknowledged everything")]
    ShutdownTimeout,
    /// Another relay took a source's writer lease on the target.
    #[error(transparent)]
    Lease(#[from] super::lease::LeaseError),
}
