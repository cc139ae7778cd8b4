//! The relay's event stream, for programs that bring their own sink instead of a Redis target.

use bytes::Bytes;

use crate::rdb::Event;

/// What a source produced, in order, with the stream offset it reaches.
#[derive(Debug, Clone)]
pub enum RelayEvent {
    /// The master starts a full resync at `offset` (`None`: a pre-2.8 master without offsets).
    FullResync {
        source: String,
        replid: String,
        offset: Option<u64>,
    },
    /// One event of the master's RDB snapshot.
    Snapshot { source: String, event: Event },
    /// The snapshot is complete; commands follow.
    SnapshotEnd { source: String },
    /// A write command of the stream, run in `db`; `offset` is the stream offset after it.
    /// Transactions arrive as `MULTI`, the commands, `EXEC`. Replication-internal commands
    /// (PING, REPLCONF, SELECT) are consumed, not delivered.
    Command {
        source: String,
        db: u32,
        offset: u64,
        args: Vec<Bytes>,
    },
}

/// A consumer of [`RelayEvent`]s. Called from the source's apply thread; returning means the
/// event is durably handled (the relay may acknowledge it to the master and checkpoint it).
pub trait EventSink: Send {
    fn event(&mut self, ev: RelayEvent) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

impl<F> EventSink for F
where
    F: FnMut(RelayEvent) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send,
{
    fn event(&mut self, ev: RelayEvent) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self(ev)
    }
}
