//! The writer pool: N shared-nothing writers, each owning one target connection.
//!
//! A writer is two threads over one socket: the sender encodes batches into a fixed-size output
//! buffer and writes them (pipelining), the receiver reads the replies in order. They meet
//! through a bounded queue of in-flight batches, which caps what is outstanding on the
//! connection; when it is full the sender waits, its input channel fills, and the dispatchers
//! upstream feel the back-pressure (a source's link keeps reading into its spool meanwhile).
//! A batch is acknowledged to its source's tracker only once every reply of it has arrived,
//! so an applied offset is never ahead of the target.
//!
//! A lone small batch handed to an idle writer does not wait for the sender thread to wake
//! up: the handing thread writes it on the connection itself ([`Lane`]), so that a quiet
//! stream's write crosses one thread boundary in the relay, as in a replica, not two (the
//! p99 lag under CPU contention: docs/performance.md).

use std::collections::VecDeque;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;

use crate::batch::record::Record;
use crate::batch::{Batch, Bookkeeping};
use crate::endpoint::Endpoint;
use crate::resp::client::{read_reply_from, Client, ClientError};
use crate::resp::{encode_command, parse_reply, Reply, Transport};

/// What to do when the target answers a command with an error (`--on-target-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Count it, log it with the command, and go on.
    #[default]
    Skip,
    /// Stop the relay with the error (nothing after it is applied).
    Stop,
}

#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub writers: usize,
    /// Flush the output buffer once it holds this much.
    pub output_buffer: usize,
    /// Batches in flight per connection.
    pub max_in_flight: usize,
    /// Batches queued per writer before dispatchers wait.
    pub queue: usize,
    pub on_error: ErrorPolicy,
    pub connect_timeout: Duration,
    /// A connection that returns no reply (or accepts no byte) this long while batches wait
    /// on it is dropped, and its batches settled by their records (`--target-timeout`): a
    /// partition that drops packets, a target host gone without a reset.
    pub reply_timeout: Duration,
    /// Wait out the target's `OOM` (retry the batch with backoff) rather than count it as an
    /// error reply. `restore` turns it off: a one-shot load ends, with the refused count.
    pub wait_on_oom: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            writers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            output_buffer: 256 * 1024,
            max_in_flight: 16,
            queue: 16,
            on_error: ErrorPolicy::Skip,
            connect_timeout: Duration::from_secs(5),
            reply_timeout: Duration::from_secs(60),
            wait_on_oom: true,
        }
    }
}

/// Why a writer's sender stopped using a connection.
#[derive(Debug, thiserror::Error)]
enum SendStop {
    /// The pool failed or the reply reader found the connection broken.
    #[error("the connection broke")]
    Broken,
    #[error(transparent)]
    Write(#[from] std::io::Error),
    #[error("reply reader stopped")]
    RepliesStopped,
}

/// Shared state of the pool: the first fatal error, and counters.
#[derive(Debug, Default)]
pub struct PoolState {
    fatal: Mutex<Option<WriterFailure>>,
    failed: AtomicBool,
    pub bytes_written: AtomicU64,
    /// Writers (cluster: lanes) waiting for the target to accept writes again (OOM). A lock,
    /// not an atomic: the gauge is set under it, so that two lanes changing it at once cannot
    /// publish their values in the wrong order (a gauge left at 1 after the last lane resumed).
    oom_stalled: Mutex<u64>,
    /// Writer connections that broke and were replaced: the target may have restarted, so
    /// the target loss check runs at once (`pipeline::source_loop::target_loss`).
    pub reconnects: AtomicU64,
    /// Batches written by the thread that handed them over (see [`Lane`]).
    pub lone_writes: AtomicU64,
}

impl PoolState {
    pub fn fail(&self, e: WriterFailure) {
        let mut f = self.fatal.lock();
        if f.is_none() {
            tracing::error!("{e}");
            *f = Some(e);
        }
        self.failed.store(true, Ordering::Release);
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub fn error(&self) -> Option<WriterFailure> {
        self.fatal.lock().clone()
    }

    /// A writer starts (`true`) or stops (`false`) waiting for the target's memory:
    /// `redis_relay_target_stalled{reason="oom"}` is how many wait.
    pub fn oom_stall(&self, on: bool) {
        let mut n = self.oom_stalled.lock();
        *n = if on { *n + 1 } else { n.saturating_sub(1) };
        metrics::gauge!("redis_relay_target_stalled", "reason" => "oom").set(*n as f64);
    }
}

/// Whether an error reply is the target's `OOM` (over `maxmemory` under `noeviction`): a
/// refusal that says nothing ran, and that lasts only until memory is freed.
pub(crate) fn is_oom(e: &[u8]) -> bool {
    e.starts_with(b"OOM ")
}

/// Why the writers stopped: the first fatal error of any of them. The target refused
/// something the relay cannot do without (under `--on-target-error stop`, any command); the
/// message names the source, the command and the database where it applies.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriterFailure {
    /// The pool was aborted (shutdown timed out).
    #[error("aborted")]
    Aborted,
    #[error("source {source_name}: target refused {command} in db {db}: {reply} (--on-target-error stop)")]
    Refused {
        source_name: String,
        command: String,
        db: u32,
        reply: String,
    },
    #[error("target refused SELECT {db}: {reply} (is the target a cluster, or are its databases fewer?)")]
    Select { db: u32, reply: String },
    #[error("target refused a command of the relay's own inside MULTI: {reply}")]
    OwnCommandInMulti { reply: String },
    #[error("target refused MULTI: {reply}")]
    Multi { reply: String },
    #[error("source {source_name}: the target aborted a transaction of {lost} commands: {reply}")]
    TransactionAborted {
        source_name: String,
        lost: usize,
        reply: String,
    },
    #[error("target refused the relay's offset record: {reply}")]
    Record { reply: String },
    /// A cross-slot unit was given to a target that is not a cluster (a bug).
    #[error("a cross-slot unit was sent to a target that is not a cluster")]
    NotSlotted,
    /// The cluster target failed for good (a fact about the cluster: no node answers, a
    /// slot stayed unserved past the retry budget, a cross-slot unit could not run).
    #[error("cluster target: {0}")]
    Cluster(String),
}

/// Why the writer pool cannot take (or did not apply) more batches.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    /// A writer failed (or the pool was aborted): the first fatal error of the pool.
    #[error(transparent)]
    Failed(WriterFailure),
    /// Writer `writer` stopped without an error (its input closed).
    #[error("writer stopped (writer {writer})")]
    Stopped { writer: usize },
}

/// The running pool. Dropping the senders (via [`WriterPool::finish`]) stops the writers once
/// they have drained.
pub struct WriterPool {
    senders: Vec<Sender<Batch>>,
    lanes: Vec<Arc<Lane>>,
    handles: Vec<JoinHandle<()>>,
    pub state: Arc<PoolState>,
    /// Each writer's current socket (to abort).
    sockets: Vec<Arc<Mutex<Option<TcpStream>>>>,
    target: Endpoint,
    connect_timeout: Duration,
}

struct InFlight {
    batch: Batch,
    /// What each reply of this batch answers, in order.
    plan: Vec<Expect>,
    sent_at: Instant,
}

/// What one reply answers.
#[derive(Debug)]
pub(crate) enum Expect {
    /// A SELECT the writer added.
    Select(u32),
    /// Command `cmd` of op `op`.
    Cmd { op: u32, cmd: u32 },
    /// `+OK` to MULTI.
    Multi,
    /// `+QUEUED` (or a queue-time error) for a command inside MULTI.
    Queued(Box<Expect>),
    /// The EXEC array: one element per queued command.
    Exec(Vec<Expect>),
    /// The exactly-once record.
    Book,
}

impl WriterPool {
    /// Connect every writer (all connections must succeed) and start them.
    pub fn start(target: &Endpoint, opts: &WriterOptions) -> Result<WriterPool, ClientError> {
        let n = opts.writers.max(1);
        let state = Arc::new(PoolState::default());
        let mut senders = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        let mut sockets = Vec::with_capacity(n);
        let mut lanes = Vec::with_capacity(n);
        for w in 0..n {
            // Every writer must connect once at start: a wrong address or password is an
            // error now, not a retry loop.
            let conn = Client::connect(target, opts.connect_timeout)?;
            let (tx, rx) = bounded::<Batch>(opts.queue);
            senders.push(tx);
            let slot = Arc::new(Mutex::new(None));
            sockets.push(slot.clone());
            let lane = Arc::new(Lane::default());
            lanes.push(lane.clone());
            let writer = Writer {
                w,
                rx,
                lane,
                state: state.clone(),
                opts: opts.clone(),
                target: target.clone(),
                socket: slot,
                stalled: Arc::new(AtomicBool::new(false)),
            };
            handles.push(
                std::thread::Builder::new()
                    .name(format!("writer-{w}"))
                    .spawn(move || writer.run(conn))
                    .expect("spawn writer thread"),
            );
        }
        Ok(WriterPool {
            senders,
            lanes,
            handles,
            state,
            sockets,
            target: target.clone(),
            connect_timeout: opts.connect_timeout,
        })
    }

    pub fn writers(&self) -> usize {
        self.senders.len()
    }

    /// A sender handle for writer `w` (dispatchers on other threads).
    pub fn handle(&self) -> PoolHandle {
        PoolHandle {
            senders: self.senders.clone(),
            lanes: self.lanes.clone(),
            state: self.state.clone(),
            target: self.target.clone(),
            connect_timeout: self.connect_timeout,
        }
    }

    /// Close the inputs and wait for every writer to drain and stop.
    pub fn finish(self) -> Result<(), PoolError> {
        drop(self.senders);
        join_writers(self.handles, &self.state)
    }

    /// Abort: close the sockets so that blocked threads return.
    pub fn abort(&self) {
        self.state.fail(WriterFailure::Aborted);
        for s in &self.sockets {
            if let Some(s) = s.lock().as_ref() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Wait for every writer thread (their inputs are closed) and return the pool's first
/// fatal error, if any. Both kinds of pool end this way.
pub(crate) fn join_writers(
    handles: Vec<JoinHandle<()>>,
    state: &PoolState,
) -> Result<(), PoolError> {
    for h in handles {
        let _ = h.join();
    }
    match state.error() {
        Some(e) => Err(PoolError::Failed(e)),
        None => Ok(()),
    }
}

/// A cloneable way to send batches to the pool.
#[derive(Clone)]
pub struct PoolHandle {
    senders: Vec<Sender<Batch>>,
    lanes: Vec<Arc<Lane>>,
    pub state: Arc<PoolState>,
    target: Endpoint,
    connect_timeout: Duration,
}

impl super::Writers for PoolHandle {
    fn writers(&self) -> usize {
        PoolHandle::writers(self)
    }

    fn send(&self, w: usize, batch: Batch) -> Result<(), PoolError> {
        PoolHandle::send(self, w, batch)
    }

    fn failure(&self) -> Option<WriterFailure> {
        self.state.error()
    }

    fn read_db0(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ClientError> {
        let target = self.target.to_string();
        let io = |cause| ClientError::Io {
            target: target.clone(),
            what: "reading the relay's records",
            cause,
        };
        let mut conn = Client::connect(&self.target, self.connect_timeout)?;
        if let Reply::Error(e) = conn.call(&["SELECT", "0"]).map_err(io)? {
            return Err(ClientError::Refused {
                target,
                command: "SELECT 0".into(),
                reply: String::from_utf8_lossy(&e).into_owned(),
            });
        }
        let mut values = Vec::with_capacity(keys.len());
        // Chunks keep each reply small whatever the number of keys.
        for chunk in keys.chunks(256) {
            let mut args = vec!["MGET"];
            args.extend(chunk.iter().map(String::as_str));
            match conn.call(&args).map_err(io)? {
                Reply::Array(Some(items)) if items.len() == chunk.len() => {
                    values.extend(items.into_iter().map(|r| match r {
                        Reply::Bulk(Some(b)) => Some(b),
                        _ => None,
                    }))
                }
                other => {
                    return Err(io(std::io::Error::other(format!(
                        "MGET of the records: unexpected reply {other:?}"
                    ))))
                }
            }
        }
        Ok(values)
    }
}

impl PoolHandle {
    pub fn writers(&self) -> usize {
        self.senders.len()
    }

    /// Send a batch to writer `w`, waiting while its queue is full. Fails once the pool has
    /// failed (the batch is not applied).
    pub fn send(&self, w: usize, batch: Batch) -> Result<(), PoolError> {
        let Some(mut batch) = self.lanes[w].write_lone(batch, &self.state) else {
            return Ok(());
        };
        // Counted before it enters the channel, so that no lone write can overtake it.
        self.lanes[w].queued.fetch_add(1, Ordering::AcqRel);
        loop {
            if let Some(e) = self.state.error() {
                self.lanes[w].queued.fetch_sub(1, Ordering::AcqRel);
                return Err(PoolError::Failed(e));
            }
            match self.senders[w].send_timeout(batch, Duration::from_millis(200)) {
                Ok(()) => return Ok(()),
                Err(crossbeam_channel::SendTimeoutError::Timeout(b)) => batch = b,
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => {
                    self.lanes[w].queued.fetch_sub(1, Ordering::AcqRel);
                    return Err(self
                        .state
                        .error()
                        .map_or(PoolError::Stopped { writer: w }, PoolError::Failed));
                }
            }
        }
    }
}

const DIRECT_WRITE: usize = 64 * 1024;

/// Builds the bytes and the reply plan of one batch (the cluster writer uses it too).
pub(crate) struct Encoder<'a> {
    pub(crate) out: &'a mut BytesMut,
    /// Large payloads to write uncopied, each after the buffered bytes before its position.
    pub(crate) direct: Vec<(usize, Bytes)>,
    /// The connection's database (`None`: unknown, SELECT before the next op).
    pub(crate) db: Option<u32>,
}

impl Encoder<'_> {
    fn select(&mut self, db: u32) {
        encode_command(self.out, &[&b"SELECT"[..], db.to_string().as_bytes()]);
    }

    fn payload(&mut self, p: &Bytes) {
        if p.len() >= DIRECT_WRITE {
            // Big payloads go straight to the socket after what is buffered, uncopied.
            self.direct.push((self.out.len(), p.clone()));
        } else {
            self.out.extend_from_slice(p);
        }
    }

    /// Encode the ops of `batch` as they are (a master's transaction as MULTI/EXEC).
    fn plain_ops(&mut self, batch: &Batch, plan: &mut Vec<Expect>) {
        for (i, op) in batch.ops.iter().enumerate() {
            if self.db != Some(op.db) {
                self.select(op.db);
                plan.push(Expect::Select(op.db));
            }
            let cmds = (0..op.replies).map(|c| Expect::Cmd {
                op: i as u32,
                cmd: c,
            });
            if op.atomic {
                encode_command(self.out, &[&b"MULTI"[..]]);
                plan.push(Expect::Multi);
                self.payload(&op.payload);
                let items: Vec<Expect> = cmds.collect();
                plan.extend((0..op.replies).map(|c| {
                    Expect::Queued(Box::new(Expect::Cmd {
                        op: i as u32,
                        cmd: c,
                    }))
                }));
                encode_command(self.out, &[&b"EXEC"[..]]);
                plan.push(Expect::Exec(items));
            } else {
                self.payload(&op.payload);
                plan.extend(cmds);
            }
            self.db = (!op.leaves_db_unknown).then_some(op.db);
        }
    }

    /// Encode `batch`; returns the plan of its replies.
    pub(crate) fn batch(&mut self, batch: &Batch) -> Vec<Expect> {
        let mut plan = Vec::with_capacity(batch.ops.len() + 4);
        match &batch.bookkeeping {
            None => self.plain_ops(batch, &mut plan),
            Some(book) if !book.transaction => {
                // Replayable commands, then their record: the record is on the target only if
                // they ran, and running them twice is harmless (`pipeline::replayable`).
                self.plain_ops(batch, &mut plan);
                if self.db != Some(0) {
                    self.select(0);
                    plan.push(Expect::Select(0));
                }
                encode_command(self.out, &[&b"SET"[..], &book.key, &book.value]);
                plan.push(Expect::Book);
                self.db = Some(0);
            }
            Some(book) => self.transaction(batch, Some(book), &mut plan),
        }
        plan
    }

    /// Encode `batch` as one transaction with its record (if any): the target holds the batch
    /// and its record, or neither.
    pub(crate) fn transaction(
        &mut self,
        batch: &Batch,
        book: Option<&Bookkeeping>,
        plan: &mut Vec<Expect>,
    ) {
        encode_command(self.out, &[&b"MULTI"[..]]);
        plan.push(Expect::Multi);
        let mut items = Vec::new();
        for (i, op) in batch.ops.iter().enumerate() {
            if self.db != Some(op.db) {
                self.select(op.db);
                items.push(Expect::Select(op.db));
            }
            self.payload(&op.payload);
            items.extend((0..op.replies).map(|c| Expect::Cmd {
                op: i as u32,
                cmd: c,
            }));
            self.db = (!op.leaves_db_unknown).then_some(op.db);
        }
        if let Some(book) = book {
            if self.db != Some(0) {
                self.select(0);
                items.push(Expect::Select(0));
            }
            encode_command(self.out, &[&b"SET"[..], &book.key, &book.value]);
            items.push(Expect::Book);
        }
        for it in items.iter() {
            plan.push(Expect::Queued(Box::new(shallow(it))));
        }
        encode_command(self.out, &[&b"EXEC"[..]]);
        plan.push(Expect::Exec(items));
        // Queued SELECTs may not have run (EXECABORT): select again next time.
        self.db = None;
    }
}

fn shallow(e: &Expect) -> Expect {
    match e {
        Expect::Select(d) => Expect::Select(*d),
        Expect::Cmd { op, cmd } => Expect::Cmd { op: *op, cmd: *cmd },
        _ => Expect::Book,
    }
}

/// One writer: its input channel and the connections it goes through.
struct Writer {
    w: usize,
    rx: Receiver<Batch>,
    /// Its connection's sending half, shared with lone writes.
    lane: Arc<Lane>,
    state: Arc<PoolState>,
    opts: WriterOptions,
    target: Endpoint,
    socket: Arc<Mutex<Option<TcpStream>>>,
    /// Waiting for the target's memory (an OOM): set here, cleared by the reply reader at
    /// the next acknowledged batch.
    stalled: Arc<AtomicBool>,
}

/// How one connection ended.
enum Ended {
    /// The input is closed and everything was acknowledged.
    Done,
    /// The pool failed (fatal error elsewhere or here).
    Failed,
    /// The connection broke (or was closed on an OOM, the error's text): these batches were
    /// sent but not acknowledged, in order.
    Broken(Vec<Batch>, String, Option<String>),
}

/// Why a reply reader gave its connection up.
enum Lost {
    /// Reading failed (the connection broke, or no reply within the reply timeout).
    Io(std::io::Error),
    /// The target refused a batch for want of memory (the error's text).
    Oom(String),
}

impl Writer {
    /// Run connections until the input closes or the pool fails. A broken connection is
    /// replaced (with backoff, for as long as it takes); the batches it left unacknowledged
    /// are checked against their records on the target and only those not applied are sent
    /// again, so a reconnect neither loses nor doubles a write.
    fn run(self, first: Client) {
        let mut conn = Some(first);
        let mut resend: Vec<Batch> = Vec::new();
        let mut delay = Duration::from_millis(100);
        let mut oom_delay = Duration::from_millis(100);
        loop {
            let mut c = match conn.take() {
                Some(c) => c,
                None => match self.reconnect(&mut delay) {
                    Some(c) => c,
                    None => return,
                },
            };
            // Also for the reads of `settle` (the reply reader's half shares the socket).
            let t = Some(self.opts.reply_timeout);
            let _ = c.stream.set_read_timeout(t);
            let _ = c.stream.set_write_timeout(t);
            if !resend.is_empty() {
                if let Err(e) = self.settle(&mut c, &mut resend) {
                    tracing::warn!(
                        writer = self.w,
                        "target {}: checking records after a reconnect failed: {e}",
                        self.target
                    );
                    continue;
                }
            }
            match self.connection(c, std::mem::take(&mut resend)) {
                Ended::Done | Ended::Failed => return,
                Ended::Broken(unacked, _, Some(oom)) => {
                    self.out_of_memory(&oom, unacked.len(), &mut oom_delay);
                    resend = unacked;
                }
                Ended::Broken(unacked, why, None) => {
                    metrics::counter!("redis_relay_target_reconnects_total").increment(1);
                    self.state.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        writer = self.w,
                        unacknowledged_batches = unacked.len(),
                        "target {}: connection lost ({why}); reconnecting",
                        self.target
                    );
                    resend = unacked;
                }
            }
        }
    }

    /// The target refused a batch for want of memory (`OOM`, `maxmemory` with `noeviction`):
    /// back-pressure, not a refusal of the command. The connection was closed with nothing of
    /// the batch applied; wait (backoff up to 5 s), then the batch and those after it are
    /// checked against their records and sent again, like after a broken connection. The
    /// sources keep reading into their spools meanwhile.
    fn out_of_memory(&self, reply: &str, batches: usize, delay: &mut Duration) {
        if !self.stalled.swap(true, Ordering::AcqRel) {
            self.state.oom_stall(true);
            *delay = Duration::from_millis(100);
            tracing::error!(
                writer = self.w,
                waiting_batches = batches,
                "target {} is out of memory ({reply}): writes wait until it accepts them again (free memory or raise maxmemory)",
                self.target
            );
        } else {
            tracing::debug!(
                writer = self.w,
                "target still out of memory; retrying in {delay:?}"
            );
        }
        std::thread::sleep(*delay);
        *delay = (*delay * 2).min(Duration::from_secs(5));
    }

    fn reconnect(&self, delay: &mut Duration) -> Option<Client> {
        loop {
            if self.state.failed() {
                return None;
            }
            match Client::connect(&self.target, self.opts.connect_timeout) {
                Ok(c) => {
                    if self.stalled.load(Ordering::Relaxed) {
                        tracing::debug!(writer = self.w, "target {}: reconnected", self.target);
                    } else {
                        tracing::info!(writer = self.w, "target {}: reconnected", self.target);
                    }
                    *delay = Duration::from_millis(100);
                    return Some(c);
                }
                Err(e) => {
                    tracing::warn!(writer = self.w, "{e}; retrying in {delay:?}");
                    std::thread::sleep(*delay);
                    *delay = (*delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Acknowledge the batches the target applied before the connection broke (their record
    /// says so) and remove them from `batches`; the others stay, in order, to be sent again.
    /// On an error nothing is removed.
    fn settle(&self, c: &mut Client, batches: &mut Vec<Batch>) -> std::io::Result<()> {
        c.call(&["SELECT", "0"])?;
        let mut applied = 0;
        for batch in batches.iter() {
            // Batches apply in order: the first one not applied ends the applied prefix.
            let Some(book) = &batch.bookkeeping else {
                break;
            };
            let value = c.call(&[&b"GET"[..], &book.key])?.as_text();
            if !value.is_some_and(|v| record_covers(v.as_bytes(), &book.value)) {
                break;
            }
            applied += 1;
        }
        for batch in batches.drain(..applied) {
            let cmds: u64 =
                batch.ops.iter().map(|o| o.replies as u64).sum::<u64>() + batch.folded();
            batch
                .tracker
                .commands_applied
                .fetch_add(cmds, Ordering::Relaxed);
            batch.tracker.acknowledged(self.w);
        }
        Ok(())
    }

    /// Pipeline batches over one connection until it breaks or the input closes.
    fn connection(&self, c: Client, first: Vec<Batch>) -> Ended {
        let stream = c.stream;
        let read_half = match stream.try_clone() {
            Ok(r) => r,
            Err(e) => return Ended::Broken(first, e.to_string(), None),
        };
        *self.socket.lock() = stream.tcp().try_clone().ok();
        let broken = Arc::new(AtomicBool::new(false));
        let (ftx, frx) = bounded::<InFlight>(self.opts.max_in_flight);
        let replies = self.spawn_replies(read_half, frx, &broken);
        *self.lane.half.lock() = Some(SendHalf {
            stream,
            out: BytesMut::with_capacity(self.opts.output_buffer + 1024),
            output_buffer: self.opts.output_buffer,
            db: None,
            ftx,
            broken,
            queue: first.into(),
            lone_failure: None,
        });
        let sent = self.send_loop();
        // From here no lone write can use the connection.
        let half = self.lane.half.lock().take().expect("the connection's half");
        let SendHalf {
            stream,
            ftx,
            queue,
            lone_failure,
            ..
        } = half;
        let input_closed = sent.is_ok();
        if !input_closed {
            // Wake the reply reader if it waits on a dead or abandoned socket.
            let _ = stream.shutdown(Shutdown::Both);
        }
        drop(ftx);
        let (mut unacked, lost) = replies.join().unwrap_or_else(|_| (Vec::new(), None));
        *self.socket.lock() = None;
        if self.state.failed() {
            return Ended::Failed;
        }
        if input_closed && unacked.is_empty() {
            return Ended::Done;
        }
        unacked.extend(queue);
        let timeout = self.opts.reply_timeout;
        let sent = match (sent, lone_failure) {
            (Err(SendStop::Broken), Some(e)) => Err(SendStop::Write(e)),
            (sent, _) => sent,
        };
        let why = match (sent, lost) {
            (_, Some(Lost::Oom(e))) => return Ended::Broken(unacked, String::new(), Some(e)),
            (_, Some(Lost::Io(e))) if timed_out(&e) => {
                format!("no reply for {timeout:?} (--target-timeout)")
            }
            (Err(SendStop::Write(e)), _) if timed_out(&e) => {
                format!("no byte accepted for {timeout:?} (--target-timeout)")
            }
            (Err(SendStop::Write(e)), _) => e.to_string(),
            (_, Some(Lost::Io(e))) => format!("reading replies: {e}"),
            (Err(SendStop::RepliesStopped), None) => "reply reader stopped".into(),
            (Ok(()) | Err(SendStop::Broken), None) => "the target closed the connection".into(),
        };
        Ended::Broken(unacked, why, None)
    }

    /// Start the reply reader of a connection: it reads the replies of the batches sent
    /// through `frx`, and sets `broken` if the connection breaks.
    fn spawn_replies(
        &self,
        read_half: Transport,
        frx: Receiver<InFlight>,
        broken: &Arc<AtomicBool>,
    ) -> JoinHandle<(Vec<Batch>, Option<Lost>)> {
        let conn = ReplyConn {
            w: self.w,
            state: self.state.clone(),
            policy: self.opts.on_error,
            wait_on_oom: self.opts.wait_on_oom,
            broken: broken.clone(),
            stalled: self.stalled.clone(),
        };
        std::thread::Builder::new()
            .name(format!("writer-{}-replies", self.w))
            .spawn(move || reply_loop(conn, read_half, frx))
            .expect("spawn reply thread")
    }

    /// The sender: send the half's queue, then the input, until the pool fails, the
    /// connection is found broken, a write fails or the input closes. `Ok` once the input
    /// closed and everything was written; otherwise why it stopped. The half is locked for
    /// each batch only, so that a lone write can go between two.
    fn send_loop(&self) -> Result<(), SendStop> {
        loop {
            {
                let mut guard = self.lane.half.lock();
                let half = guard.as_mut().expect("the sender's connection");
                if self.state.failed() || half.broken.load(Ordering::Acquire) {
                    return Err(SendStop::Broken);
                }
                if let Some(batch) = half.queue.pop_front() {
                    let more_ready = !half.queue.is_empty() || !self.rx.is_empty();
                    half.send(batch, more_ready, &self.state)?;
                    continue;
                }
            }
            let batch = match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(b) => b,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    let mut guard = self.lane.half.lock();
                    guard.as_mut().expect("the sender's connection").flush()?;
                    continue;
                }
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            };
            let mut guard = self.lane.half.lock();
            let half = guard.as_mut().expect("the sender's connection");
            // Under the lock: once it reads 0, a lone write finds every batch of the channel
            // written or in the half's queue.
            self.lane.queued.fetch_sub(1, Ordering::AcqRel);
            let more_ready = !self.rx.is_empty();
            half.send(batch, more_ready, &self.state)?;
        }
        let mut guard = self.lane.half.lock();
        Ok(guard.as_mut().expect("the sender's connection").flush()?)
    }
}

/// What a writer shares with the threads that hand it batches: its live connection's sending
/// half, and how many batches its channel still holds.
#[derive(Default)]
struct Lane {
    /// `None` while the writer has no connection.
    half: Mutex<Option<SendHalf>>,
    /// Batches handed over through the channel and not yet taken into the half (written, or
    /// in its queue): while there are any, a lone write would overtake them.
    queued: AtomicUsize,
}

/// A batch at most this large may be written by the thread that hands it over.
const LONE_OPS: usize = 256;
const LONE_BYTES: usize = 64 * 1024;

impl Lane {
    /// Write a small `batch` on the connection from the calling thread when the writer is
    /// idle: nothing in its channel or queue, its half not in use, room in flight. Otherwise
    /// give the batch back, for the channel. The order of a source's batches holds: they are
    /// handed over from one thread, and each either goes through the channel (counted in
    /// `queued` until written) or is written here only once all before it were. A write that
    /// fails marks the connection broken; the batch is with the reply reader (or in the
    /// half's queue), and the sender settles it with the others after reconnecting.
    fn write_lone(&self, batch: Batch, state: &PoolState) -> Option<Batch> {
        if batch.ops.len() > LONE_OPS
            || batch.payload_bytes() > LONE_BYTES
            || self.queued.load(Ordering::Acquire) != 0
        {
            return Some(batch);
        }
        let Some(mut guard) = self.half.try_lock() else {
            return Some(batch);
        };
        let Some(half) = guard.as_mut() else {
            return Some(batch);
        };
        if self.queued.load(Ordering::Acquire) != 0
            || !half.queue.is_empty()
            || half.ftx.is_full()
            || half.broken.load(Ordering::Acquire)
            || state.failed()
        {
            return Some(batch);
        }
        if let Err(e) = half.send_batch(batch, false, state) {
            half.break_off(e);
        }
        state.lone_writes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("redis_relay_lone_writes_total").increment(1);
        None
    }
}

/// The sending half of a writer's connection.
struct SendHalf {
    stream: Transport,
    /// The output buffer, written once it holds `output_buffer` bytes or nothing else is
    /// ready.
    out: BytesMut,
    output_buffer: usize,
    /// The database the connection is in (as sent).
    db: Option<u32>,
    /// The reply reader's queue of batches in flight.
    ftx: Sender<InFlight>,
    /// Set when the connection must not be used any more.
    broken: Arc<AtomicBool>,
    /// Batches to send before the input's: those unacknowledged by the previous connection
    /// and not applied, or one the reply reader could not take.
    queue: VecDeque<Batch>,
    /// Why a lone write failed (the sender reports it when it ends the connection).
    lone_failure: Option<std::io::Error>,
}

impl SendHalf {
    /// Send one batch; first write what is buffered if the connection is at its in-flight
    /// cap, or the replies waited for would never come. (Only the holder of the half adds
    /// to the in-flight queue, so the registration cannot block after this.)
    fn send(&mut self, batch: Batch, more_ready: bool, state: &PoolState) -> Result<(), SendStop> {
        if self.ftx.is_full() {
            if let Err(e) = self.flush() {
                self.queue.push_front(batch);
                return Err(e.into());
            }
        }
        self.send_batch(batch, more_ready, state)
    }

    /// Encode one batch after what is buffered, register it with the reply reader, then
    /// write what must go now (`more_ready`: another batch follows at once).
    fn send_batch(
        &mut self,
        batch: Batch,
        more_ready: bool,
        state: &PoolState,
    ) -> Result<(), SendStop> {
        let mut enc = Encoder {
            out: &mut self.out,
            direct: Vec::new(),
            db: self.db,
        };
        let plan = enc.batch(&batch);
        self.db = enc.db;
        let direct = std::mem::take(&mut enc.direct);
        let bytes = (self.out.len() + direct.iter().map(|d| d.1.len()).sum::<usize>()) as u64;
        // Register before writing: replies may come back before write_all returns.
        let token = InFlight {
            batch,
            plan,
            sent_at: Instant::now(),
        };
        if let Err(e) = self.ftx.send(token) {
            self.queue.push_front(e.into_inner().batch);
            return Err(SendStop::RepliesStopped);
        }
        self.write_encoded(direct, more_ready || !self.queue.is_empty())?;
        state.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Write the large payloads of a batch (`direct`: each after the buffered bytes before
    /// its position), then the buffer if it is full or nothing else is ready. What was
    /// written leaves the buffer.
    fn write_encoded(
        &mut self,
        direct: Vec<(usize, Bytes)>,
        more_ready: bool,
    ) -> std::io::Result<()> {
        let (stream, out) = (&mut self.stream, &mut self.out);
        let mut written = 0;
        let mut result = Ok(());
        for (at, payload) in direct {
            result = stream
                .write_all(&out[written..at])
                .and_then(|_| stream.write_all(&payload));
            written = at;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() && (out.len() >= self.output_buffer || !more_ready) {
            result = stream.write_all(&out[written..]);
            written = out.len();
        }
        result?;
        if written == out.len() {
            out.clear();
        } else if written > 0 {
            let _ = out.split_to(written);
        }
        Ok(())
    }

    /// Write what is buffered, if anything, and empty the buffer (kept as is if the write
    /// fails).
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// A lone write failed: stop using the connection (the reply reader wakes up and hands
    /// back what is in flight; the sender sees `broken` and reports `why`).
    fn break_off(&mut self, why: SendStop) {
        self.broken.store(true, Ordering::Release);
        let _ = self.stream.shutdown(Shutdown::Both);
        if let SendStop::Write(e) = why {
            self.lone_failure = Some(e);
        }
    }
}

/// Whether an I/O error is a socket timeout (`--target-timeout`).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Whether the record value `have` on the target covers the batch whose own record value is
/// `want` (see [`Record::covers`]); a value that is no record covers nothing.
pub(crate) fn record_covers(have: &[u8], want: &[u8]) -> bool {
    match (Record::decode(have), Record::decode(want)) {
        (Ok(have), Ok(want)) => have.covers(&want),
        _ => false,
    }
}

/// Why a reply stops the reading of a connection's replies.
#[derive(Debug)]
pub(crate) enum Halt {
    /// Stop the pool: the reply thread found a reason (already recorded in the pool state).
    Fatal,
    /// The target refused the batch for want of memory (the error's text): nothing of it ran
    /// (a queue-time refusal, or a plain command refused before running); send it again later.
    OutOfMemory(String),
}

pub(crate) struct ReplyCtx<'a> {
    pub(crate) batch: &'a Batch,
    pub(crate) state: &'a PoolState,
    pub(crate) policy: ErrorPolicy,
    /// `OOM` is [`Halt::OutOfMemory`] (else an error reply like the others).
    pub(crate) wait_on_oom: bool,
    /// Commands of the batch answered so far (applied or refused).
    pub(crate) commands: u64,
}

impl ReplyCtx<'_> {
    fn error(&mut self, op: u32, cmd: u32, msg: &[u8]) -> Result<(), Halt> {
        let tracker = &self.batch.tracker;
        let n = tracker.target_errors.fetch_add(1, Ordering::Relaxed) + 1;
        let o = &self.batch.ops[op as usize];
        let what = describe_command(&o.payload, cmd as usize);
        let msg = String::from_utf8_lossy(msg);
        metrics::counter!("redis_relay_target_errors_total", "source" => tracker.name.clone())
            .increment(1);
        if self.policy == ErrorPolicy::Stop {
            self.state.fail(WriterFailure::Refused {
                source_name: tracker.name.clone(),
                command: what,
                db: o.db,
                reply: msg.into_owned(),
            });
            return Err(Halt::Fatal);
        }
        if n <= 20 || n.is_power_of_two() {
            tracing::warn!(source = %tracker.name, db = o.db, errors = n, "target refused {what}: {msg}");
        }
        Ok(())
    }

    /// Check one reply against what it answers. An `OOM` refusal outside an EXEC's array
    /// (queued commands, EXEC, plain commands, the record) is [`Halt::OutOfMemory`].
    pub(crate) fn check(&mut self, expect: &Expect, reply: Reply) -> Result<(), Halt> {
        match &reply {
            Reply::Error(e) if self.wait_on_oom && is_oom(e) => Err(Halt::OutOfMemory(lossy(e))),
            _ => self.check_ran(expect, reply),
        }
    }

    /// [`Self::check`] without the OOM rule: also for the replies inside EXEC's array (the
    /// transaction ran: a command's runtime error there is an error of that command alone).
    fn check_ran(&mut self, expect: &Expect, reply: Reply) -> Result<(), Halt> {
        match (expect, reply) {
            (Expect::Select(db), Reply::Error(e)) => self.fatal(WriterFailure::Select {
                db: *db,
                reply: lossy(&e),
            }),
            (Expect::Cmd { op, cmd }, Reply::Error(e)) => {
                self.commands += 1;
                self.error(*op, *cmd, &e)
            }
            (Expect::Cmd { .. }, _) => {
                self.commands += 1;
                Ok(())
            }
            (Expect::Queued(inner), Reply::Error(e)) => match **inner {
                // Counted here; the EXEC that follows is an EXECABORT.
                Expect::Cmd { op, cmd } => self.error(op, cmd, &e),
                _ => self.fatal(WriterFailure::OwnCommandInMulti { reply: lossy(&e) }),
            },
            (Expect::Multi, Reply::Error(e)) => {
                self.fatal(WriterFailure::Multi { reply: lossy(&e) })
            }
            (Expect::Exec(items), Reply::Array(Some(replies))) => {
                for (it, r) in items.iter().zip(replies) {
                    self.check_ran(it, r)?;
                }
                Ok(())
            }
            (Expect::Exec(items), Reply::Error(e)) => self.exec_aborted(items, &e),
            (Expect::Book, Reply::Error(e)) => {
                self.fatal(WriterFailure::Record { reply: lossy(&e) })
            }
            _ => Ok(()),
        }
    }

    /// A fatal refusal: the pool fails with it (if it is the first), and this reply thread stops.
    fn fatal(&self, failure: WriterFailure) -> Result<(), Halt> {
        self.state.fail(failure);
        Err(Halt::Fatal)
    }

    /// EXECABORT: nothing of the transaction ran. The queue-time error was counted; the
    /// other commands were not applied either.
    fn exec_aborted(&mut self, items: &[Expect], e: &[u8]) -> Result<(), Halt> {
        let lost = items
            .iter()
            .filter(|i| matches!(i, Expect::Cmd { .. }))
            .count();
        let tracker = &self.batch.tracker;
        tracing::error!(source = %tracker.name, commands = lost, "the target aborted a transaction: {}", String::from_utf8_lossy(e));
        if self.policy == ErrorPolicy::Stop {
            return self.fatal(WriterFailure::TransactionAborted {
                source_name: tracker.name.clone(),
                lost,
                reply: lossy(e),
            });
        }
        self.commands += lost as u64;
        Ok(())
    }
}

/// An error reply as text, for a [`WriterFailure`].
fn lossy(e: &[u8]) -> String {
    String::from_utf8_lossy(e).into_owned()
}

/// What a connection's reply reader works with.
struct ReplyConn {
    w: usize,
    state: Arc<PoolState>,
    policy: ErrorPolicy,
    wait_on_oom: bool,
    /// Set when the connection must not be used any more.
    broken: Arc<AtomicBool>,
    /// The writer waits for the target's memory; cleared at the next acknowledged batch.
    stalled: Arc<AtomicBool>,
}

impl ReplyConn {
    /// Stop using the connection: hand `first` and every later batch back to the writer,
    /// which checks their records after reconnecting and sends again those not applied.
    fn abandon(
        &self,
        stream: &Transport,
        first: Batch,
        inflight: &Receiver<InFlight>,
    ) -> Vec<Batch> {
        self.broken.store(true, Ordering::Release);
        let _ = stream.shutdown(Shutdown::Both);
        let mut left = vec![first];
        left.extend(inflight.iter().map(|t| t.batch));
        left
    }

    /// A batch applied: acknowledge it to its source's tracker.
    fn acknowledge(&self, token: InFlight, commands: u64) {
        if self.stalled.load(Ordering::Relaxed) && self.stalled.swap(false, Ordering::AcqRel) {
            self.state.oom_stall(false);
            tracing::info!(writer = self.w, "the target accepts writes again");
        }
        let tracker = &token.batch.tracker;
        tracker
            .commands_applied
            .fetch_add(commands + token.batch.folded(), Ordering::Relaxed);
        metrics::histogram!("redis_relay_apply_latency_seconds")
            .record(token.sent_at.elapsed().as_secs_f64());
        tracker.acknowledged(self.w);
    }
}

/// Read the replies of the batches sent on one connection, in order. Returns the batches
/// left unacknowledged when the connection broke or was abandoned on an OOM (with the OOM's
/// text).
fn reply_loop(
    conn: ReplyConn,
    mut stream: Transport,
    inflight: Receiver<InFlight>,
) -> (Vec<Batch>, Option<Lost>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Ok(token) = inflight.recv() {
        let mut ctx = ReplyCtx {
            batch: &token.batch,
            state: &conn.state,
            policy: conn.policy,
            wait_on_oom: conn.wait_on_oom,
            commands: 0,
        };
        for expect in &token.plan {
            let reply = match read_reply_from(&mut stream, &mut buf) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(writer = conn.w, "reading replies failed: {e}");
                    return (
                        conn.abandon(&stream, token.batch, &inflight),
                        Some(Lost::Io(e)),
                    );
                }
            };
            match ctx.check(expect, reply) {
                Ok(()) => {}
                Err(Halt::Fatal) => {
                    conn.broken.store(true, Ordering::Release);
                    return (Vec::new(), None);
                }
                Err(Halt::OutOfMemory(e)) => {
                    // Nothing of this batch ran; the replies still due on this connection
                    // are not read: it is closed, and the batches sent after this one are
                    // settled by their records like after a broken connection.
                    return (
                        conn.abandon(&stream, token.batch, &inflight),
                        Some(Lost::Oom(e)),
                    );
                }
            }
        }
        let commands = ctx.commands;
        conn.acknowledge(token, commands);
    }
    (Vec::new(), None)
}

/// A short, printable form of the `index`-th command of an encoded payload, for error logs.
pub fn describe_command(payload: &[u8], index: usize) -> String {
    let mut at = 0;
    let mut i = 0;
    while let Ok(Some((reply, used))) = parse_reply(&payload[at..]) {
        if i == index {
            if let Reply::Array(Some(items)) = reply {
                let words: Vec<String> = items
                    .iter()
                    .take(3)
                    .map(|r| match r {
                        Reply::Bulk(Some(b)) => {
                            let s = String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned();
                            format!("{s:?}")
                        }
                        other => format!("{other:?}"),
                    })
                    .collect();
                let more = if items.len() > 3 { " ..." } else { "" };
                return format!("{}{more}", words.join(" "));
            }
            return "<unparsable command>".into();
        }
        at += used;
        i += 1;
    }
    "<unknown command>".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_cover_earlier_batches_of_the_same_run_only() {
        let have = b"abc 500 run1 7";
        assert!(record_covers(have, b"abc 400 run1 6"));
        assert!(record_covers(have, b"abc 500 run1 7"));
        assert!(!record_covers(have, b"abc 600 run1 8"));
        assert!(
            !record_covers(have, b"abc 400 run2 3"),
            "another process's sequence"
        );
        assert!(!record_covers(b"garbage", b"abc 400 run1 3"));
        assert!(!record_covers(b"abc 500 run1 x", b"abc 400 run1 3"));
    }

    #[test]
    fn describes_the_nth_command() {
        let mut b = BytesMut::new();
        encode_command(&mut b, &["SET", "k", "v"]);
        encode_command(&mut b, &["RPUSH", "list", "a", "b", "c"]);
        assert_eq!(describe_command(&b, 1), "\"RPUSH\" \"list\" \"a\" ...");
    }
}
