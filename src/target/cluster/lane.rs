//! One thread of the cluster writer pool: the lanes (hash slots) `s % writers == t`.
//!
//! It works in rounds. A round takes at most one batch per slot from what waits (a slot's
//! next batch is sent only once its previous one is settled), groups them by the slot's
//! master, writes every node's share pipelined, then reads the replies node by node. So a
//! redirection can never reorder a slot's batches: nothing of that slot was sent after the
//! redirected one.
//!
//! What a reply says about a batch (see `shared/notes/cluster-target.md`):
//! - EXEC's array: the batch (and its record) ran. Acknowledged.
//! - `-MOVED slot host:port` (to a command or to EXEC): the transaction was discarded; the
//!   map is read again and the batch goes to the named node.
//! - `-ASK slot host:port`: discarded; sent once to the importing node after `ASKING`.
//! - `-TRYAGAIN` (keys of a migrating slot on both nodes), `-CLUSTERDOWN`, `-LOADING`,
//!   `-READONLY`, `-MASTERDOWN`: discarded; the slot waits (backoff up to 2 s, map refreshed
//!   except for TRYAGAIN) and is counted in `redis_relay_cluster_slots_unwritable`, while the
//!   other slots go on. Waiting batches stay in memory up to a bound, then the channel fills
//!   and the sources spool.
//! - A batch without a transaction (replayable commands only) that meets a redirection may
//!   have partly run: it is sent again whole, as a transaction (running it again is harmless).
//! - The connection broke: a batch with a record is acknowledged if the slot's record (read
//!   from the slot's current master) covers it, else sent again; one without is sent again.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::pool::Shared;
use super::topology::Node;
use super::SLOTS;
use crate::batch::Batch;
use crate::resp::client::{read_reply_from, Client};
use crate::resp::{encode_command, Reply, Transport};
use crate::target::writer::{is_oom, record_covers, Encoder, Expect, ReplyCtx};

/// Batches per round (over all nodes) ...
const ROUND_BATCHES: usize = 2048;
/// ...and bytes per round.
const ROUND_BYTES: usize = 8 << 20;
/// Batches taken from the channel and not yet applied, at most: beyond, the channel fills
/// and the dispatchers wait (memory stays bounded while slots wait).
const HELD_CAP: usize = 2048;
/// A node that answers (or reads) nothing for this long is treated as gone.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Redirections followed while reading one record.
const MAX_HOPS: usize = 8;

/// A batch for one slot, as the pool's channel carries it.
pub struct Job {
    pub slot: u16,
    pub batch: Batch,
}

/// Where a batch must go next instead of its slot's master in the map.
#[derive(Debug, Clone)]
enum Route {
    Moved(String),
    Ask(String),
}

/// A batch waiting to be (re)sent.
struct Pending {
    slot: u16,
    batch: Batch,
    route: Option<Route>,
    not_before: Option<Instant>,
    attempts: u32,
    /// Send as one transaction even without a record (after a redirection of a plain batch).
    wrap: bool,
}

impl Pending {
    fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| t <= now)
    }

    /// MULTI/EXEC: with its record, or once redirected (a plain batch may have partly run).
    /// A batch without a record is replayable as a whole: the stream's replayable commands,
    /// or whole snapshot keys (a big key's later chunks carry a record).
    fn transaction(&self) -> bool {
        self.wrap || self.batch.bookkeeping.is_some()
    }

    fn backoff(&mut self, base: Duration) {
        self.attempts += 1;
        let d = base * 2u32.saturating_pow(self.attempts.min(8) - 1);
        self.not_before = Some(Instant::now() + d.min(MAX_BACKOFF));
    }
}

/// Why a batch did not run.
#[derive(Debug)]
enum Redirect {
    Moved(String),
    Ask(String),
    TryAgain,
    Down(String),
    /// `OOM` (the node is over `maxmemory` under `noeviction`): back-pressure, the batch
    /// waits and is sent again once the node accepts writes.
    Oom(String),
}

impl Redirect {
    fn kind(&self) -> &'static str {
        match self {
            Redirect::Moved(_) => "moved",
            Redirect::Ask(_) => "ask",
            Redirect::TryAgain => "tryagain",
            Redirect::Down(_) => "clusterdown",
            Redirect::Oom(_) => "oom",
        }
    }
}

/// A redirection or unavailability error, if `r` is one.
fn redirect_of(r: &Reply) -> Option<Redirect> {
    let Reply::Error(e) = r else { return None };
    let text = String::from_utf8_lossy(e);
    let mut words = text.split_whitespace();
    match words.next()? {
        "MOVED" => Some(Redirect::Moved(words.nth(1)?.to_string())),
        "ASK" => Some(Redirect::Ask(words.nth(1)?.to_string())),
        "TRYAGAIN" => Some(Redirect::TryAgain),
        "OOM" => Some(Redirect::Oom(text.into_owned())),
        "CLUSTERDOWN" | "LOADING" | "READONLY" | "MASTERDOWN" => {
            Some(Redirect::Down(text.into_owned()))
        }
        _ => None,
    }
}

/// The redirection that kept a batch from running, if any. A transaction ran when EXEC
/// answered an array; otherwise its EXEC error or a queued command's says why.
fn redirection(replies: &[Reply], transaction: bool) -> Option<Redirect> {
    if transaction {
        match replies.last()? {
            Reply::Array(Some(_)) => None,
            exec => redirect_of(exec).or_else(|| replies.iter().find_map(redirect_of)),
        }
    } else {
        replies.iter().find_map(redirect_of)
    }
}

/// A connection to one master.
struct NodeConn {
    stream: Transport,
    buf: BytesMut,
    db: Option<u32>,
}

/// A batch written to a node, waiting for its replies.
struct Sent {
    p: Pending,
    plan: Vec<Expect>,
    asking: bool,
    transaction: bool,
}

/// One node's share of a round.
struct NodeRound {
    addr: String,
    sent: Vec<Sent>,
    written_at: Instant,
    /// The write failed: every batch's fate is unknown.
    broken: bool,
}

pub(super) struct Lane {
    t: usize,
    rx: Receiver<Job>,
    sh: Arc<Shared>,
    conns: HashMap<String, NodeConn>,
    held: VecDeque<Pending>,
    closed: bool,
    /// Batches of this round that ran, with their slot and commands: acknowledged together
    /// at the round's end, one tracker lock per source instead of one per batch.
    done: Vec<(Batch, u16, u64)>,
    /// The node whose memory this lane waits for (an OOM refusal), until a batch runs there.
    oom: Option<String>,
}

impl Lane {
    pub fn new(t: usize, rx: Receiver<Job>, sh: Arc<Shared>) -> Lane {
        Lane {
            t,
            rx,
            sh,
            conns: HashMap::new(),
            held: VecDeque::new(),
            closed: false,
            done: Vec::new(),
            oom: None,
        }
    }

    /// Rounds until the input is closed and everything acknowledged, or the pool failed.
    pub fn run(mut self) {
        while !self.sh.state.failed() {
            self.fill();
            if self.closed && self.held.is_empty() {
                break;
            }
            let picked = self.pick();
            if picked.is_empty() {
                self.wait_for_ready();
                continue;
            }
            self.sh.refresh_if_old();
            self.round(picked);
        }
        for addr in self.conns.keys() {
            self.sh.unregister(self.t, addr);
        }
    }

    fn hold(&mut self, job: Job) {
        self.held.push_back(Pending {
            slot: job.slot,
            batch: job.batch,
            route: None,
            not_before: None,
            attempts: 0,
            wrap: false,
        });
    }

    /// Take what the channel has (up to [`HELD_CAP`]); wait a little when nothing waits.
    fn fill(&mut self) {
        if self.held.is_empty() && !self.closed {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(job) => self.hold(job),
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
            }
        }
        while self.held.len() < HELD_CAP && !self.closed {
            match self.rx.try_recv() {
                Ok(job) => self.hold(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.closed = true,
            }
        }
    }

    /// Everything held waits for its backoff: wait for the first to end, or for new input.
    fn wait_for_ready(&mut self) {
        let now = Instant::now();
        let until = self
            .held
            .iter()
            .filter_map(|p| p.not_before)
            .min()
            .map_or(Duration::from_millis(20), |t| {
                t.saturating_duration_since(now)
            });
        let wait = until.min(Duration::from_millis(50));
        if self.closed || self.held.len() >= HELD_CAP {
            std::thread::sleep(wait);
            return;
        }
        match self.rx.recv_timeout(wait) {
            Ok(job) => self.hold(job),
            Err(RecvTimeoutError::Disconnected) => self.closed = true,
            Err(RecvTimeoutError::Timeout) => {}
        }
    }

    /// This round's batches: the first held batch of each slot, if it is ready, within the
    /// round's bounds. Later batches of a slot wait behind its first.
    fn pick(&mut self) -> Vec<Pending> {
        let now = Instant::now();
        let mut seen = vec![0u64; SLOTS / 64];
        let mut waiting = 0;
        let (mut picked, mut bytes) = (Vec::new(), 0usize);
        let mut keep = VecDeque::with_capacity(self.held.len());
        for p in self.held.drain(..) {
            let (word, bit) = (p.slot as usize / 64, 1u64 << (p.slot % 64));
            let first = seen[word] & bit == 0;
            seen[word] |= bit;
            if first && !p.ready(now) {
                waiting += 1;
            }
            if first && p.ready(now) && picked.len() < ROUND_BATCHES && bytes < ROUND_BYTES {
                bytes += p.batch.payload_bytes();
                picked.push(p);
            } else {
                keep.push_back(p);
            }
        }
        self.held = keep;
        self.sh.waiting[self.t].store(waiting, Ordering::Relaxed);
        let total: usize = self
            .sh
            .waiting
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .sum();
        metrics::gauge!("redis_relay_cluster_slots_unwritable").set(total as f64);
        picked
    }

    /// Send `picked` (grouped by node), read the replies, and settle every batch.
    fn round(&mut self, picked: Vec<Pending>) {
        let map = self.sh.map();
        let mut by_node = ByNode::default();
        let mut again = Vec::new();
        for mut p in picked {
            let at = match &p.route {
                Some(Route::Moved(a) | Route::Ask(a)) => Some(by_node.index(a)),
                None => map.master_for(p.slot).map(|n| by_node.index_of(n)),
            };
            match at {
                Some(i) => by_node.nodes[i].1.push(p),
                None => {
                    // No online master serves the slot (failover, unassigned): wait.
                    p.backoff(Duration::from_millis(100));
                    again.push(p);
                }
            }
        }
        let rounds: Vec<NodeRound> = by_node
            .nodes
            .into_iter()
            .filter(|(_, list)| !list.is_empty())
            .filter_map(|(addr, list)| self.write_node(addr, list, &mut again))
            .collect();
        for r in rounds {
            self.read_node(r, &mut again);
        }
        self.acknowledge_done();
        // Back in front, in their order: their slots' later batches wait behind them.
        for p in again.into_iter().rev() {
            self.held.push_front(p);
        }
    }

    /// The connection to `addr`, opened if needed.
    fn conn(&mut self, addr: &str) -> Option<&mut NodeConn> {
        if !self.conns.contains_key(addr) {
            let ep = self.sh.endpoint(addr);
            match Client::connect(&ep, self.sh.opts.connect_timeout) {
                Ok(c) => {
                    // A node gone without a reset must not hold the lane forever, in a read
                    // or in a write whose buffers filled.
                    let _ = c.stream.set_read_timeout(Some(READ_TIMEOUT));
                    let _ = c.stream.set_write_timeout(Some(READ_TIMEOUT));
                    self.sh.register(self.t, addr, &c.stream);
                    self.conns.insert(
                        addr.to_string(),
                        NodeConn {
                            stream: c.stream,
                            buf: BytesMut::with_capacity(64 * 1024),
                            db: None,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(lane = self.t, "cluster target node {addr}: {e}");
                    return None;
                }
            }
        }
        self.conns.get_mut(addr)
    }

    fn drop_conn(&mut self, addr: &str) {
        if let Some(c) = self.conns.remove(addr) {
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        self.sh.unregister(self.t, addr);
    }

    /// Encode and write `list` to `addr`. `None` when the node cannot be reached (the
    /// batches, not sent, go to `again`).
    fn write_node(
        &mut self,
        addr: String,
        list: Vec<Pending>,
        again: &mut Vec<Pending>,
    ) -> Option<NodeRound> {
        let Some(conn) = self.conn(&addr) else {
            self.sh.refresh("a node that cannot be reached");
            for mut p in list {
                p.route = None;
                p.backoff(Duration::from_millis(100));
                again.push(p);
            }
            return None;
        };
        let mut out = BytesMut::with_capacity(64 * 1024);
        let mut direct = Vec::new();
        let mut sent = Vec::with_capacity(list.len());
        for p in list {
            let asking = matches!(p.route, Some(Route::Ask(_)));
            if asking {
                encode_command(&mut out, &[&b"ASKING"[..]]);
            }
            let transaction = p.transaction();
            let mut enc = Encoder {
                out: &mut out,
                direct: Vec::new(),
                db: conn.db,
            };
            let plan = if transaction {
                let mut plan = Vec::with_capacity(p.batch.ops.len() + 4);
                enc.transaction(&p.batch, p.batch.bookkeeping.as_ref(), &mut plan);
                plan
            } else {
                enc.batch(&p.batch)
            };
            conn.db = enc.db;
            direct.append(&mut enc.direct);
            sent.push(Sent {
                p,
                plan,
                asking,
                transaction,
            });
        }
        let bytes = out.len() + direct.iter().map(|d| d.1.len()).sum::<usize>();
        let broken = write_all(&mut conn.stream, &out, direct).is_err();
        self.sh
            .state
            .bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
        Some(NodeRound {
            addr,
            sent,
            written_at: Instant::now(),
            broken,
        })
    }

    /// Read the replies of one node's share and settle each batch.
    fn read_node(&mut self, r: NodeRound, again: &mut Vec<Pending>) {
        let mut sent = r.sent.into_iter();
        if !r.broken {
            for s in sent.by_ref() {
                match self.replies(&r.addr, &s) {
                    Ok(replies) => self.settle_replied(&r.addr, s, replies, again),
                    Err(e) => {
                        tracing::warn!(lane = self.t, "cluster target node {}: {e}", r.addr);
                        self.drop_conn(&r.addr);
                        self.settle_unknown(s.p, again);
                        break;
                    }
                }
                if self.sh.state.failed() {
                    return;
                }
            }
        }
        let rest: Vec<Sent> = sent.collect();
        if r.broken || !rest.is_empty() {
            self.drop_conn(&r.addr);
            metrics::counter!("redis_relay_target_reconnects_total").increment(1);
            self.sh
                .state
                .reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.sh.refresh("a broken connection");
        }
        for s in rest {
            self.settle_unknown(s.p, again);
        }
        let took = r.written_at.elapsed().as_secs_f64();
        metrics::histogram!("redis_relay_apply_latency_seconds").record(took);
        metrics::histogram!("redis_relay_cluster_apply_latency_seconds", "node" => r.addr)
            .record(took);
    }

    /// The replies of one sent batch (the ASKING reply left out).
    fn replies(&mut self, addr: &str, s: &Sent) -> std::io::Result<Vec<Reply>> {
        let conn = self
            .conns
            .get_mut(addr)
            .ok_or_else(|| std::io::Error::other("connection closed"))?;
        if s.asking {
            read_reply_from(&mut conn.stream, &mut conn.buf)?;
        }
        let mut replies = Vec::with_capacity(s.plan.len());
        for _ in 0..s.plan.len() {
            replies.push(read_reply_from(&mut conn.stream, &mut conn.buf)?);
        }
        Ok(replies)
    }

    /// A batch answered: acknowledged if it ran, else back to wait for where it must go.
    fn settle_replied(
        &mut self,
        addr: &str,
        s: Sent,
        replies: Vec<Reply>,
        again: &mut Vec<Pending>,
    ) {
        let wait_on_oom = self.sh.opts.wait_on_oom;
        let why = redirection(&replies, s.transaction)
            .filter(|r| wait_on_oom || !matches!(r, Redirect::Oom(_)));
        let Some(why) = why else {
            if self.oom.as_deref() == Some(addr) {
                self.oom = None;
                self.sh.state.oom_stall(false);
                tracing::info!(
                    lane = self.t,
                    node = addr,
                    "cluster target node accepts writes again"
                );
            }
            self.applied(s.p, &s.plan, replies);
            return;
        };
        let exec_refused =
            s.transaction && matches!(replies.last(), Some(Reply::Error(e)) if is_oom(e));
        metrics::counter!("redis_relay_cluster_redirects_total", "node" => addr.to_string(), "kind" => why.kind())
            .increment(1);
        let mut p = s.p;
        // A plain batch may have partly run: whole, as a transaction, from now on.
        p.wrap = true;
        p.route = None;
        match why {
            Redirect::Moved(to) => {
                self.sh.refresh("MOVED");
                p.route = Some(Route::Moved(resolve(&to, addr)));
                p.attempts += 1;
                if p.attempts > 3 {
                    // Nodes disagree while a slot's new owner spreads: slow down.
                    p.backoff(Duration::from_millis(20));
                }
            }
            Redirect::Ask(to) => p.route = Some(Route::Ask(resolve(&to, addr))),
            Redirect::TryAgain => p.backoff(Duration::from_millis(20)),
            Redirect::Oom(msg) => {
                if exec_refused {
                    // EXEC itself refused leaves the connection inside MULTI: not reusable.
                    self.drop_conn(addr);
                }
                self.out_of_memory(addr, &msg, &mut p);
            }
            Redirect::Down(msg) => {
                self.sh.refresh("CLUSTERDOWN");
                p.backoff(Duration::from_millis(100));
                if p.attempts == 1 || p.attempts.is_power_of_two() {
                    tracing::warn!(
                        slot = p.slot,
                        node = addr,
                        attempts = p.attempts,
                        "cluster target: slot not writable ({msg}); its batches wait"
                    );
                }
            }
        }
        again.push(p);
    }

    /// A node refused `p` for want of memory: the batch waits (backoff up to 2 s) and the
    /// lane counts as stalled (`redis_relay_target_stalled{reason="oom"}`) until a batch runs.
    fn out_of_memory(&mut self, addr: &str, msg: &str, p: &mut Pending) {
        if self.oom.is_none() {
            self.oom = Some(addr.to_string());
            self.sh.state.oom_stall(true);
            tracing::error!(lane = self.t, node = addr, "cluster target node out of memory ({msg}): writes wait until it accepts them again (free memory or raise maxmemory)");
        }
        p.backoff(Duration::from_millis(100));
    }

    /// The batch ran: check its replies (errors of the source's commands are counted or
    /// stop the pool by `--on-target-error`) and acknowledge it.
    fn applied(&mut self, p: Pending, plan: &[Expect], replies: Vec<Reply>) {
        let mut ctx = ReplyCtx {
            batch: &p.batch,
            state: &self.sh.state,
            policy: self.sh.opts.on_error,
            wait_on_oom: self.sh.opts.wait_on_oom,
            commands: 0,
        };
        for (e, r) in plan.iter().zip(replies) {
            if ctx.check(e, r).is_err() {
                return;
            }
        }
        let commands = ctx.commands + p.batch.folded();
        self.done.push((p.batch, p.slot, commands));
    }

    /// Acknowledge the round's applied batches to their sources' trackers, each source's
    /// under one lock. (Within a round a slot has one batch at most, and nothing of a slot
    /// is sent again before its batch is settled, so acknowledging at the round's end keeps
    /// every guarantee; it only releases the batches' memory a little later.)
    fn acknowledge_done(&mut self) {
        let mut done = std::mem::take(&mut self.done);
        done.sort_by_key(|(b, _, _)| Arc::as_ptr(&b.tracker) as usize);
        for group in done.chunk_by(|a, b| Arc::ptr_eq(&a.0.tracker, &b.0.tracker)) {
            let tracker = &group[0].0.tracker;
            let commands: u64 = group.iter().map(|(_, _, c)| c).sum();
            tracker
                .commands_applied
                .fetch_add(commands, Ordering::Relaxed);
            tracker.acknowledged_many(group.iter().map(|(_, slot, _)| *slot as usize));
        }
        done.clear();
        self.done = done;
    }

    /// The connection broke after `p` was written: did it run? Its record says, read from
    /// the slot's master (waiting for one as long as it takes); without a record it is sent
    /// again (it is replayable as a whole).
    fn settle_unknown(&mut self, mut p: Pending, again: &mut Vec<Pending>) {
        p.route = None;
        p.wrap = true;
        let Some(book) = p.batch.bookkeeping.clone() else {
            p.backoff(Duration::from_millis(100));
            again.push(p);
            return;
        };
        let mut delay = Duration::from_millis(100);
        loop {
            if self.sh.state.failed() {
                return;
            }
            match self.read_record(p.slot, &book.key) {
                Ok(Some(have)) if record_covers(&have, &book.value) => {
                    let cmds: u32 = p.batch.ops.iter().map(|o| o.replies).sum();
                    let cmds = u64::from(cmds) + p.batch.folded();
                    self.done.push((p.batch, p.slot, cmds));
                    return;
                }
                Ok(_) => {
                    p.backoff(Duration::from_millis(50));
                    again.push(p);
                    return;
                }
                Err(e) => {
                    tracing::warn!(lane = self.t, slot = p.slot, "cluster target: checking a record after a broken connection: {e}; retrying in {delay:?}");
                    self.sh.refresh("a failed record check");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// `GET key` (database 0) from the master of `slot`, following redirections.
    fn read_record(&mut self, slot: u16, key: &Bytes) -> std::io::Result<Option<Bytes>> {
        let mut route: Option<Route> = None;
        for _ in 0..MAX_HOPS {
            let addr = match &route {
                Some(Route::Moved(a) | Route::Ask(a)) => a.clone(),
                None => self
                    .sh
                    .map()
                    .master_for(slot)
                    .map(|n| n.addr())
                    .ok_or_else(|| {
                        std::io::Error::other(format!("no master serves slot {slot}"))
                    })?,
            };
            let asking = matches!(route, Some(Route::Ask(_)));
            let reply = self.get_on(&addr, key, asking);
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    self.drop_conn(&addr);
                    return Err(e);
                }
            };
            match (redirect_of(&reply), reply) {
                (Some(Redirect::Moved(to)), _) => route = Some(Route::Moved(resolve(&to, &addr))),
                (Some(Redirect::Ask(to)), _) => route = Some(Route::Ask(resolve(&to, &addr))),
                (Some(other), _) => return Err(std::io::Error::other(format!("{other:?}"))),
                (None, Reply::Bulk(v)) => return Ok(v),
                (None, Reply::Error(e)) => {
                    return Err(std::io::Error::other(
                        String::from_utf8_lossy(&e).into_owned(),
                    ))
                }
                (None, _) => return Ok(None),
            }
        }
        Err(std::io::Error::other(format!(
            "slot {slot}: too many redirections"
        )))
    }

    fn get_on(&mut self, addr: &str, key: &Bytes, asking: bool) -> std::io::Result<Reply> {
        let conn = self
            .conn(addr)
            .ok_or_else(|| std::io::Error::other(format!("node {addr} unreachable")))?;
        let mut out = BytesMut::new();
        let mut skip = 0;
        if conn.db != Some(0) {
            encode_command(&mut out, &[&b"SELECT"[..], b"0"]);
            skip += 1;
        }
        if asking {
            encode_command(&mut out, &[&b"ASKING"[..]]);
            skip += 1;
        }
        encode_command(&mut out, &[&b"GET"[..], key]);
        conn.stream.write_all(&out)?;
        for _ in 0..skip {
            read_reply_from(&mut conn.stream, &mut conn.buf)?;
        }
        conn.db = Some(0);
        read_reply_from(&mut conn.stream, &mut conn.buf)
    }
}

/// The address a redirection names; an empty or `?` host means the node just asked.
fn resolve(to: &str, asked: &str) -> String {
    match to.rsplit_once(':') {
        Some((h, p)) if h.is_empty() || h == "?" => {
            let host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
            format!("{host}:{p}")
        }
        _ => to.to_string(),
    }
}

/// A round's batches grouped by the node they go to, in the order the nodes first came
/// (a cluster has a few masters: a short list, and a node's address is made once per round,
/// not once per batch).
#[derive(Default)]
struct ByNode {
    nodes: Vec<(String, Vec<Pending>)>,
    /// The map's nodes already placed in `nodes`, by identity.
    known: Vec<(*const Node, usize)>,
}

impl ByNode {
    /// The index of `addr`'s list, added if new.
    fn index(&mut self, addr: &str) -> usize {
        match self.nodes.iter().position(|(a, _)| a == addr) {
            Some(i) => i,
            None => {
                self.nodes.push((addr.to_string(), Vec::new()));
                self.nodes.len() - 1
            }
        }
    }

    /// The index of master `n`'s list.
    fn index_of(&mut self, n: &Node) -> usize {
        let id = n as *const Node;
        if let Some(&(_, i)) = self.known.iter().find(|(k, _)| *k == id) {
            return i;
        }
        let i = self.index(&n.addr());
        self.known.push((id, i));
        i
    }
}

/// Write the buffered bytes with the large payloads in their places.
fn write_all(
    stream: &mut Transport,
    out: &[u8],
    direct: Vec<(usize, Bytes)>,
) -> std::io::Result<()> {
    let mut written = 0;
    for (at, payload) in direct {
        stream.write_all(&out[written..at])?;
        stream.write_all(&payload)?;
        written = at;
    }
    stream.write_all(&out[written..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> Reply {
        Reply::Error(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn redirections_are_read_from_exec_or_queued_replies() {
        let ok = Reply::Simple(Bytes::from_static(b"OK"));
        let queued = Reply::Simple(Bytes::from_static(b"QUEUED"));
        let ran = vec![
            ok.clone(),
            queued.clone(),
            Reply::Array(Some(vec![ok.clone()])),
        ];
        assert!(redirection(&ran, true).is_none());
        let moved_at_exec = vec![ok.clone(), queued.clone(), err("MOVED 12 10.0.0.2:7001")];
        assert!(
            matches!(redirection(&moved_at_exec, true), Some(Redirect::Moved(a)) if a == "10.0.0.2:7001")
        );
        let ask_queued = vec![
            ok.clone(),
            err("ASK 12 :7002"),
            err("EXECABORT Transaction discarded"),
        ];
        assert!(matches!(redirection(&ask_queued, true), Some(Redirect::Ask(a)) if a == ":7002"));
        let wrongtype = vec![ok.clone(), err("WRONGTYPE x"), err("EXECABORT y")];
        assert!(
            redirection(&wrongtype, true).is_none(),
            "a command error is not a redirection"
        );
        assert!(matches!(
            redirection(&[err("TRYAGAIN Multiple keys")], false),
            Some(Redirect::TryAgain)
        ));
        assert!(matches!(
            redirection(&[ok, err("CLUSTERDOWN The cluster is down")], false),
            Some(Redirect::Down(_))
        ));
        assert_eq!(resolve(":7002", "127.0.0.1:7000"), "127.0.0.1:7002");
        assert_eq!(resolve("?:7002", "h:7000"), "h:7002");
        assert_eq!(resolve("10.0.0.2:7001", "h:7000"), "10.0.0.2:7001");
    }
}
