//! The source task: one fake replica connected to one master, for the life of the relay.
//!
//! The link reads the socket at full speed and hands every byte to a [`LinkSink`] (which
//! spools to disk): a master drops a replica that stops reading (`repl-timeout` during a
//! diskless transfer, the replica output-buffer limit while streaming), and the next attempt
//! would be a full resync. So the link never parses the command stream and never waits for the
//! target; the pipeline frames the spooled stream and reports what the target acknowledged
//! through [`SourceProgress::set_applied_offset`]. The link only:
//! * counts the replication offset exactly (every stream byte, PINGs and GETACKs included; the
//!   keepalive `\n` before the RDB not),
//! * sends `REPLCONF ACK <applied offset>` once a second, at once when the pipeline asks
//!   (`ack_now`, for `REPLCONF GETACK`), and right after a diskless RDB (the master starts the
//!   stream only after that first ACK); never to a legacy `SYNC` master, which has no offsets,
//! * declares the master dead after `repl_timeout` without a byte,
//! * reconnects with exponential backoff and resumes with `PSYNC <replid> <received + 1>`.

use crate::endpoint::Endpoint;
use crate::resp::encode_command;
use crate::source::handshake::{
    connect, handshake, Handshake, HandshakeConfig, HandshakeError, SyncStart,
};
use crate::source::stream::SourceStream;
use crate::source::transfer::{Fed, RdbReceiver, TransferError};
use bytes::BytesMut;
use parking_lot::Mutex;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Notify};
use tokio::time::{Instant, MissedTickBehavior};

/// Period of the extra ACKs sent until the master's first stream byte (see `stream`).
const EARLY_ACK_INTERVAL: Duration = Duration::from_millis(50);
/// At most this many of them: 2 s.
const EARLY_ACKS: u32 = 40;

/// Where the link puts what it receives. Must never block for long: the implementation
/// spools to disk.
pub trait LinkSink: Send + 'static {
    /// A full resync starts: an RDB follows. `offset` is the offset of `+FULLRESYNC` (the
    /// first stream byte after the RDB is `offset + 1`); `None` for a legacy `SYNC` master,
    /// whose `replid` is `"?"`. It can come again at any time, also in the middle of an RDB
    /// whose connection was lost (no `rdb_end` then): discard whatever the previous sync left.
    fn full_resync(&mut self, replid: &str, offset: Option<u64>) -> std::io::Result<()>;
    /// A partial resync (`+CONTINUE`) was accepted: the stream continues after `offset`
    /// (offset of the next stream byte - 1). `replid` is the master's current id.
    fn partial_resync(&mut self, replid: &str, offset: u64) -> std::io::Result<()>;
    /// RDB payload bytes, in order (never the EOF mark).
    fn rdb_data(&mut self, data: &[u8]) -> std::io::Result<()>;
    /// The RDB payload is complete; stream data follows.
    fn rdb_end(&mut self) -> std::io::Result<()>;
    /// Command stream bytes, in order, exactly as received.
    fn stream_data(&mut self, data: &[u8]) -> std::io::Result<()>;
}

/// What the link is doing (for metrics and status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    Connecting = 0,
    Handshake = 1,
    Rdb = 2,
    Streaming = 3,
    Backoff = 4,
    Stopped = 5,
    Failed = 6,
}

impl LinkState {
    fn from_u8(v: u8) -> LinkState {
        match v {
            0 => LinkState::Connecting,
            1 => LinkState::Handshake,
            2 => LinkState::Rdb,
            3 => LinkState::Streaming,
            4 => LinkState::Backoff,
            5 => LinkState::Stopped,
            _ => LinkState::Failed,
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkState::Connecting => "connecting",
            LinkState::Handshake => "handshake",
            LinkState::Rdb => "rdb",
            LinkState::Streaming => "streaming",
            LinkState::Backoff => "backoff",
            LinkState::Stopped => "stopped",
            LinkState::Failed => "failed",
        })
    }
}

/// Shared between the link and the pipeline (atomics, no locks on the hot path).
#[derive(Debug)]
pub struct SourceProgress {
    /// `host:port` of the master.
    pub name: String,
    received_offset: AtomicU64,
    applied_offset: AtomicU64,
    /// The pipeline asks for an immediate ACK (it saw `REPLCONF GETACK`).
    pub ack_now: Notify,
    /// The pipeline asks for a new full sync (the target lost data): see
    /// [`SourceProgress::ask_full_sync`].
    full_sync_asked: AtomicBool,
    full_sync_now: Notify,
    state: AtomicU8,
    rdb_bytes_received: AtomicU64,
    /// `u64::MAX` while unknown (diskless, or before the preamble).
    rdb_bytes_total: AtomicU64,
    connected: AtomicBool,
    connect_attempts: AtomicU64,
    full_syncs: AtomicU64,
    /// Full syncs that failed, per [`FULL_SYNC_FAILURE_REASONS`] entry.
    full_sync_failures: [AtomicU64; FULL_SYNC_FAILURE_REASONS.len()],
    partial_syncs: AtomicU64,
    acks_sent: AtomicU64,
    replid: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
}

impl SourceProgress {
    pub fn new(name: impl Into<String>) -> Self {
        SourceProgress {
            name: name.into(),
            received_offset: AtomicU64::new(0),
            applied_offset: AtomicU64::new(0),
            ack_now: Notify::new(),
            full_sync_asked: AtomicBool::new(false),
            full_sync_now: Notify::new(),
            state: AtomicU8::new(LinkState::Connecting as u8),
            rdb_bytes_received: AtomicU64::new(0),
            rdb_bytes_total: AtomicU64::new(u64::MAX),
            connected: AtomicBool::new(false),
            connect_attempts: AtomicU64::new(0),
            full_syncs: AtomicU64::new(0),
            full_sync_failures: Default::default(),
            partial_syncs: AtomicU64::new(0),
            acks_sent: AtomicU64::new(0),
            replid: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    /// Master offset of the last byte received (handed to the sink). For a legacy `SYNC`
    /// master, which has no offsets, the number of stream bytes since the SYNC.
    /// Drop the connection and ask the master for a full sync (`PSYNC ? -1`) instead of
    /// resuming: what the relay wrote from this master is gone from the target.
    pub fn ask_full_sync(&self) {
        self.full_sync_asked.store(true, Ordering::Release);
        self.full_sync_now.notify_one();
    }

    pub fn received_offset(&self) -> u64 {
        self.received_offset.load(Ordering::Acquire)
    }
    /// What the pipeline reported as applied by the target (sent in `REPLCONF ACK`).
    pub fn applied_offset(&self) -> u64 {
        self.applied_offset.load(Ordering::Acquire)
    }
    /// Set by the pipeline: the offset durably applied (or spooled) — what we may ACK.
    pub fn set_applied_offset(&self, off: u64) {
        self.applied_offset.store(off, Ordering::Release);
    }
    pub fn state(&self) -> LinkState {
        LinkState::from_u8(self.state.load(Ordering::Relaxed))
    }
    pub fn rdb_bytes_received(&self) -> u64 {
        self.rdb_bytes_received.load(Ordering::Relaxed)
    }
    /// Announced RDB size (`None` for a diskless transfer).
    pub fn rdb_bytes_total(&self) -> Option<u64> {
        match self.rdb_bytes_total.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(n),
        }
    }
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    pub fn connect_attempts(&self) -> u64 {
        self.connect_attempts.load(Ordering::Relaxed)
    }
    /// Full syncs that failed, with their reason (every reason, zeros included).
    pub fn full_sync_failures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FULL_SYNC_FAILURE_REASONS
            .iter()
            .zip(&self.full_sync_failures)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
    }

    /// Count a full sync that `err` ended, and say so: a master that fails every transfer
    /// (the relay then backs off, doubling the delay up to `backoff_max`) is a problem on the
    /// master's side, and its log has the reason.
    fn full_sync_failed(&self, err: &LinkError) {
        let reason = err.full_sync_failure_reason();
        if let Some(i) = FULL_SYNC_FAILURE_REASONS.iter().position(|r| *r == reason) {
            self.full_sync_failures[i].fetch_add(1, Ordering::Relaxed);
        }
        tracing::warn!(source = %self.name, reason, error = %err,
            "full sync failed before the snapshot was complete; if it keeps failing, the master's log says why (BGSAVE failed, the snapshot could not be written in the format this replica declared, client-output-buffer-limit replica reached)");
    }

    pub fn full_syncs(&self) -> u64 {
        self.full_syncs.load(Ordering::Relaxed)
    }
    pub fn partial_syncs(&self) -> u64 {
        self.partial_syncs.load(Ordering::Relaxed)
    }
    pub fn acks_sent(&self) -> u64 {
        self.acks_sent.load(Ordering::Relaxed)
    }
    /// The master's replication id (run id before 4.0), once known.
    pub fn replid(&self) -> Option<String> {
        self.replid.lock().clone()
    }
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    fn set_state(&self, s: LinkState) {
        let old = self.state.swap(s as u8, Ordering::Relaxed);
        if old != s as u8 {
            tracing::info!(source = %self.name, state = %s, "replication link state");
        }
    }
}

/// Settings of one link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub endpoint: Endpoint,
    /// Announced with `REPLCONF listening-port` (see [`HandshakeConfig::listening_port`]).
    /// The default, 0, is a port nothing listens on, so Sentinel cannot mistake us for a
    /// usable replica.
    pub listening_port: u16,
    /// From a checkpoint: `(replid, last offset applied)`; the link asks for
    /// `PSYNC replid offset+1`.
    pub resume: Option<(String, u64)>,
    /// The master is dead after this long without a byte (Redis `repl-timeout`).
    pub repl_timeout: Duration,
    /// Period of `REPLCONF ACK`.
    pub ack_interval: Duration,
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles up to `backoff_max`, reset after a successful sync.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Socket read size.
    pub read_buffer_size: usize,
}

impl LinkConfig {
    /// Defaults matching a Redis replica: 60 s timeout, ACK every second.
    pub fn new(endpoint: Endpoint) -> Self {
        LinkConfig {
            endpoint,
            listening_port: 0,
            resume: None,
            repl_timeout: Duration::from_secs(60),
            ack_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            read_buffer_size: 256 * 1024,
        }
    }
}

/// Why a link session ended. [`LinkError::is_fatal`] errors stop the link.
#[derive(Debug, Error)]
pub enum LinkError {
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    #[error("{source_name}: RDB transfer: {err}")]
    Transfer {
        source_name: String,
        err: TransferError,
    },
    #[error("{source_name}: the sink failed to store data received from the master: {err}")]
    Sink {
        source_name: String,
        err: std::io::Error,
    },
    #[error("{source_name}: I/O error while {phase}: {err}")]
    Io {
        source_name: String,
        phase: &'static str,
        err: std::io::Error,
    },
    #[error("{source_name}: connection closed by the master while {phase}")]
    Closed {
        source_name: String,
        phase: &'static str,
    },
    #[error("{source_name}: no data from the master for {timeout:?} while {phase}: declaring it dead (repl-timeout)")]
    Timeout {
        source_name: String,
        phase: &'static str,
        timeout: Duration,
    },
    #[error("{source_name}: unexpected reply: {what}")]
    Unexpected { source_name: String, what: String },
    /// The pipeline asked for a new full sync ([`SourceProgress::ask_full_sync`]).
    #[error("{source_name}: a full sync was asked for (the target lost data)")]
    FullSyncAsked { source_name: String },
}

/// Why a full sync (after `+FULLRESYNC`, before the end of the RDB) failed: the label of
/// `redis_relay_full_sync_failures_total`.
pub const FULL_SYNC_FAILURE_REASONS: [&str; 5] =
    ["closed", "master_error", "timeout", "bad_transfer", "io"];

impl LinkError {
    /// The [`FULL_SYNC_FAILURE_REASONS`] entry of this error, when it ended a full sync:
    /// `closed` is the master dropping the link (its BGSAVE failed, it could not write the
    /// snapshot in the format the replica declared, the replica's output buffer overflowed,
    /// or someone killed the link: the master's log says which).
    pub fn full_sync_failure_reason(&self) -> &'static str {
        match self {
            LinkError::Closed { .. } => "closed",
            LinkError::Transfer {
                err: TransferError::MasterError(_),
                ..
            } => "master_error",
            LinkError::Timeout { .. } => "timeout",
            LinkError::Transfer { .. } | LinkError::Unexpected { .. } => "bad_transfer",
            _ => "io",
        }
    }

    /// Fatal: a wrong/missing password, or the sink cannot store data. Everything else is
    /// retried with backoff.
    pub fn is_fatal(&self) -> bool {
        match self {
            LinkError::Handshake(h) => h.is_fatal(),
            LinkError::Sink { .. } => true,
            _ => false,
        }
    }
}

/// Runs the link until `shutdown` becomes true (returns `Ok`) or a fatal error (returns it).
pub async fn run_link(
    cfg: LinkConfig,
    progress: Arc<SourceProgress>,
    mut sink: impl LinkSink,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), LinkError> {
    let name = progress.name.clone();
    let mut replid: Option<String> = None;
    if let Some((id, off)) = &cfg.resume {
        replid = Some(id.clone());
        progress.received_offset.store(*off, Ordering::Release);
        *progress.replid.lock() = Some(id.clone());
    }
    let mut backoff = cfg.backoff_min;
    loop {
        if *shutdown.borrow() {
            break;
        }
        progress.connect_attempts.fetch_add(1, Ordering::Relaxed);
        if progress.full_sync_asked.swap(false, Ordering::AcqRel) {
            tracing::info!(source = %name, "a full sync was asked for: PSYNC ? -1");
            replid = None;
        }
        let mut synced = false;
        let r = {
            let sess = session(&cfg, &progress, &mut sink, &mut replid, &mut synced);
            tokio::select! {
                r = sess => Some(r),
                _ = wait_shutdown(&mut shutdown) => None,
            }
        };
        progress.connected.store(false, Ordering::Relaxed);
        let err = match r {
            None => break,
            Some(Ok(())) => unreachable!("a session only ends with an error"),
            Some(Err(e)) => e,
        };
        *progress.last_error.lock() = Some(err.to_string());
        if progress.state() == LinkState::Rdb && !err.is_fatal() {
            progress.full_sync_failed(&err);
        }
        if err.is_fatal() {
            tracing::error!(source = %name, error = %err, "replication link stopped: fatal error");
            progress.set_state(LinkState::Failed);
            return Err(err);
        }
        if synced {
            backoff = cfg.backoff_min;
        }
        if matches!(err, LinkError::FullSyncAsked { .. }) {
            continue;
        }
        tracing::warn!(source = %name, error = %err,
            "replication link failed; reconnecting in {:?}", backoff);
        progress.set_state(LinkState::Backoff);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = wait_shutdown(&mut shutdown) => break,
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
    progress.set_state(LinkState::Stopped);
    tracing::info!(source = %name, offset = progress.received_offset(), "replication link shut down");
    Ok(())
}

async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    // A dropped sender also means shutdown.
    let _ = rx.wait_for(|v| *v).await;
}

struct Session<'a, S> {
    cfg: &'a LinkConfig,
    progress: &'a SourceProgress,
    sink: &'a mut S,
    name: &'a str,
}

/// One connection: handshake, the RDB if the master sends one, then the stream until an error.
async fn session<S: LinkSink>(
    cfg: &LinkConfig,
    progress: &SourceProgress,
    sink: &mut S,
    replid: &mut Option<String>,
    synced: &mut bool,
) -> Result<(), LinkError> {
    let name = progress.name.as_str();
    let (mut stream, hs) = connect_and_handshake(cfg, progress, replid.as_ref()).await?;
    let mut s = Session {
        cfg,
        progress,
        sink,
        name,
    };
    // A legacy `SYNC` master has no offsets: no ACKs.
    let legacy = matches!(hs.start, SyncStart::LegacySync);
    let rest = match hs.start {
        SyncStart::Full { replid: id, offset } => {
            s.full_resync(&mut stream, id, offset, hs.leftover, replid)
                .await?
        }
        SyncStart::Continue { replid: id } => s.partial_resync(id, hs.leftover, replid)?,
        SyncStart::LegacySync => s.legacy_sync(&mut stream, hs.leftover, replid).await?,
    };
    *synced = true;
    progress.set_state(LinkState::Streaming);
    if !rest.is_empty() {
        s.sink.stream_data(&rest).map_err(|e| s.sink_err(e))?;
        progress
            .received_offset
            .fetch_add(rest.len() as u64, Ordering::AcqRel);
    }
    s.stream(&mut stream, legacy).await
}

/// Connects and runs the replica handshake, asking to resume from `replid` when known.
async fn connect_and_handshake(
    cfg: &LinkConfig,
    progress: &SourceProgress,
    replid: Option<&String>,
) -> Result<(SourceStream, Handshake), LinkError> {
    progress.set_state(LinkState::Connecting);
    let mut stream = connect(&cfg.endpoint, cfg.connect_timeout).await?;
    progress.connected.store(true, Ordering::Relaxed);
    tracing::info!(source = %progress.name, "connected; starting the replica handshake");
    progress.set_state(LinkState::Handshake);
    let hcfg = HandshakeConfig {
        endpoint: cfg.endpoint.clone(),
        listening_port: cfg.listening_port,
        psync: replid.map(|id| (id.clone(), progress.received_offset() + 1)),
        io_timeout: cfg.repl_timeout,
    };
    let hs = handshake(&mut stream, &hcfg).await?;
    Ok((stream, hs))
}

impl<S: LinkSink> Session<'_, S> {
    fn sink_err(&self, err: std::io::Error) -> LinkError {
        LinkError::Sink {
            source_name: self.name.to_string(),
            err,
        }
    }

    fn io_err(&self, phase: &'static str, err: std::io::Error) -> LinkError {
        LinkError::Io {
            source_name: self.name.to_string(),
            phase,
            err,
        }
    }

    /// `+FULLRESYNC`: the sink starts over and receives the RDB; returns the bytes after it.
    /// `replid` is the resume point: none until the RDB is complete.
    async fn full_resync(
        &mut self,
        stream: &mut SourceStream,
        id: String,
        offset: u64,
        leftover: BytesMut,
        replid: &mut Option<String>,
    ) -> Result<BytesMut, LinkError> {
        tracing::info!(source = %self.name, replid = %id, offset,
            "full resync (+FULLRESYNC): receiving the RDB snapshot");
        // Until the RDB is complete there is nothing to resume from.
        *replid = None;
        self.progress.full_syncs.fetch_add(1, Ordering::Relaxed);
        *self.progress.replid.lock() = Some(id.clone());
        self.progress
            .received_offset
            .store(offset, Ordering::Release);
        self.sink
            .full_resync(&id, Some(offset))
            .map_err(|e| self.sink_err(e))?;
        let (rest, diskless) = self.receive_rdb(stream, leftover).await?;
        *replid = Some(id);
        if diskless {
            // The master starts the stream only after our first ACK.
            self.send_ack(stream).await?;
        }
        Ok(rest)
    }

    /// `+CONTINUE`: the stream resumes where it stopped, perhaps under a new replication id.
    fn partial_resync(
        &mut self,
        id: String,
        leftover: BytesMut,
        replid: &mut Option<String>,
    ) -> Result<BytesMut, LinkError> {
        let Some(old) = replid.clone() else {
            return Err(LinkError::Unexpected {
                source_name: self.name.to_string(),
                what: "+CONTINUE although no partial resync was asked".into(),
            });
        };
        let off = self.progress.received_offset();
        if old != id {
            tracing::info!(source = %self.name, old = %old, new = %id,
                "master replication id changed (failover): continuing with the new id");
        }
        tracing::info!(source = %self.name, replid = %id, offset = off + 1,
            "partial resync accepted (+CONTINUE)");
        self.progress.partial_syncs.fetch_add(1, Ordering::Relaxed);
        *self.progress.replid.lock() = Some(id.clone());
        self.sink
            .partial_resync(&id, off)
            .map_err(|e| self.sink_err(e))?;
        *replid = Some(id);
        Ok(leftover)
    }

    /// `SYNC` to a master older than 2.8: an RDB, then a stream without offsets.
    async fn legacy_sync(
        &mut self,
        stream: &mut SourceStream,
        leftover: BytesMut,
        replid: &mut Option<String>,
    ) -> Result<BytesMut, LinkError> {
        tracing::info!(source = %self.name,
            "legacy SYNC: receiving the RDB snapshot (no offsets: a reconnect means a new full sync)");
        *replid = None;
        self.progress.full_syncs.fetch_add(1, Ordering::Relaxed);
        *self.progress.replid.lock() = None;
        self.progress.received_offset.store(0, Ordering::Release);
        self.sink
            .full_resync("?", None)
            .map_err(|e| self.sink_err(e))?;
        let (rest, _) = self.receive_rdb(stream, leftover).await?;
        Ok(rest)
    }

    /// Receives the RDB; returns the bytes that followed it and whether it was diskless.
    async fn receive_rdb(
        &mut self,
        stream: &mut SourceStream,
        leftover: BytesMut,
    ) -> Result<(BytesMut, bool), LinkError> {
        const PHASE: &str = "receiving the RDB";
        let p = self.progress;
        p.set_state(LinkState::Rdb);
        p.rdb_bytes_received.store(0, Ordering::Relaxed);
        p.rdb_bytes_total.store(u64::MAX, Ordering::Relaxed);
        let mut rx = RdbReceiver::new();
        let mut buf = vec![0u8; self.cfg.read_buffer_size];
        let mut pending = Some(leftover);
        let rest = loop {
            let n;
            let data: &[u8] = match &pending {
                Some(l) => l,
                None => {
                    n = self.read(stream, &mut buf, PHASE).await?;
                    &buf[..n]
                }
            };
            let sink = &mut *self.sink;
            let fed = rx
                .feed(data, &mut |b: &[u8]| sink.rdb_data(b))
                .map_err(|err| LinkError::Transfer {
                    source_name: self.name.to_string(),
                    err,
                })?
                .map_err(|e| self.sink_err(e))?;
            let had_framing = p.rdb_bytes_total.load(Ordering::Relaxed) != u64::MAX;
            if let (false, Some(total)) = (had_framing, rx.total_len()) {
                p.rdb_bytes_total.store(total, Ordering::Relaxed);
                tracing::info!(source = %self.name, bytes = total, "RDB transfer started (disk-based, $<len>)");
            }
            p.rdb_bytes_received
                .store(rx.payload_bytes(), Ordering::Relaxed);
            if let Fed::Done { consumed } = fed {
                break BytesMut::from(&data[consumed..]);
            }
            pending = None;
        };
        self.sink.rdb_end().map_err(|e| self.sink_err(e))?;
        tracing::info!(source = %self.name, bytes = rx.payload_bytes(), diskless = rx.is_diskless(),
            keepalives = rx.keepalives(), "RDB snapshot received");
        Ok((rest, rx.is_diskless()))
    }

    async fn read(
        &self,
        stream: &mut SourceStream,
        buf: &mut [u8],
        phase: &'static str,
    ) -> Result<usize, LinkError> {
        match tokio::time::timeout(self.cfg.repl_timeout, stream.read(buf)).await {
            Err(_) => Err(LinkError::Timeout {
                source_name: self.name.to_string(),
                phase,
                timeout: self.cfg.repl_timeout,
            }),
            Ok(Err(e)) => Err(self.io_err(phase, e)),
            Ok(Ok(0)) => Err(LinkError::Closed {
                source_name: self.name.to_string(),
                phase,
            }),
            Ok(Ok(n)) => Ok(n),
        }
    }

    async fn send_ack<W: tokio::io::AsyncWrite + Unpin>(&self, w: &mut W) -> Result<(), LinkError> {
        let off = self.progress.applied_offset().to_string();
        let mut out = BytesMut::with_capacity(64);
        encode_command(&mut out, &["REPLCONF", "ACK", off.as_str()]);
        let write = async {
            w.write_all(&out).await?;
            // TLS may hold records back until flushed.
            w.flush().await
        };
        match tokio::time::timeout(Duration::from_secs(10), write).await {
            Err(_) => Err(self.io_err(
                "sending REPLCONF ACK",
                std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"),
            )),
            Ok(Err(e)) => Err(self.io_err("sending REPLCONF ACK", e)),
            Ok(Ok(())) => {
                self.progress.acks_sent.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(source = %self.name, offset = %off, "REPLCONF ACK sent");
                Ok(())
            }
        }
    }

    /// Streams until an error (a shutdown cancels this future from outside).
    async fn stream(&mut self, stream: &mut SourceStream, legacy: bool) -> Result<(), LinkError> {
        match stream {
            SourceStream::Plain(s) => {
                let (rd, wr) = s.split();
                self.stream_halves(rd, wr, legacy).await
            }
            SourceStream::Tls(s) => {
                let (rd, wr) = tokio::io::split(s.as_mut());
                self.stream_halves(rd, wr, legacy).await
            }
        }
    }

    /// [`Session::stream`] on the halves of the connection.
    async fn stream_halves<R, W>(
        &mut self,
        mut rd: R,
        mut wr: W,
        legacy: bool,
    ) -> Result<(), LinkError>
    where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        const PHASE: &str = "streaming commands";
        let mut buf = vec![0u8; self.cfg.read_buffer_size];
        let mut ack = tokio::time::interval(self.cfg.ack_interval);
        ack.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ack.tick().await; // the first tick is immediate
        let timeout = self.cfg.repl_timeout;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        // Until the master's first stream byte, an ACK every EARLY_ACK_INTERVAL too (at most
        // EARLY_ACKS): after a diskless transfer Redis starts the stream on the first ACK that
        // arrives once it has marked the transfer done (`repl_put_online_on_ack`), and the ACK
        // sent right after the RDB may come before that; waiting for the 1 s tick would hold
        // the first writes back for up to a second.
        let mut early = tokio::time::interval(EARLY_ACK_INTERVAL);
        early.tick().await;
        let mut early_left = if legacy { 0 } else { EARLY_ACKS };
        loop {
            tokio::select! {
                r = rd.read(&mut buf) => {
                    let n = match r {
                        Ok(0) => return Err(LinkError::Closed { source_name: self.name.to_string(), phase: PHASE }),
                        Ok(n) => n,
                        Err(e) => return Err(self.io_err(PHASE, e)),
                    };
                    early_left = 0;
                    self.sink.stream_data(&buf[..n]).map_err(|e| self.sink_err(e))?;
                    self.progress.received_offset.fetch_add(n as u64, Ordering::AcqRel);
                    deadline.as_mut().reset(Instant::now() + timeout);
                }
                _ = ack.tick(), if !legacy => self.send_ack(&mut wr).await?,
                _ = early.tick(), if early_left > 0 => {
                    early_left -= 1;
                    self.send_ack(&mut wr).await?;
                }
                _ = self.progress.ack_now.notified(), if !legacy => self.send_ack(&mut wr).await?,
                // A permit left from before this connection is not a request any more.
                _ = self.progress.full_sync_now.notified() => {
                    if self.progress.full_sync_asked.load(Ordering::Acquire) {
                        return Err(LinkError::FullSyncAsked { source_name: self.name.to_string() });
                    }
                }
                _ = &mut deadline => return Err(LinkError::Timeout {
                    source_name: self.name.to_string(), phase: PHASE, timeout,
                }),
            }
        }
    }
}
