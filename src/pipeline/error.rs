//! Why the pipeline (dispatcher and stream apply) could not hand a command to the target.

use crate::target::writer::PoolError;

/// A fatal error of the pipeline; the source's apply loop stops on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipelineError {
    /// The writer pool failed (the target refused a command under the stop policy, or one
    /// the relay needs, or the pool was aborted).
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A SELECT of the command stream without a valid database number.
    #[error("bad SELECT in the stream at offset {offset}")]
    BadSelect { offset: u64 },
}
