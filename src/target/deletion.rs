//! Deleting target keys only when they are proven to be the relay's own.
//!
//! After a master's FLUSHDB/FLUSHALL, or after a forced full resync (stale keys), the relay must
//! remove from the target what its own source(s) no longer hold. The target is often shared:
//! other masters (the other backends of a nutcracker pool, other relays running as sidecars)
//! write into the same databases. A key may therefore be deleted only when it is *proven* to be
//! the relay's own:
//!
//! 1. no peer master holds it at deletion time (pipelined `EXISTS` on every peer), and
//! 2. nobody wrote it on the target between that check and the `DEL`: the key is `WATCH`ed on
//!    the target *before* the peer check and deleted in `MULTI`/`DEL`/`EXEC`, so a write by
//!    another relay (or by the relay's own stream) after the check makes `EXEC` abort, and the
//!    batch is examined again.
//!
//! A peer that cannot answer proves nothing: the keys only it could hold are handed back to the
//! caller (`defer`), which stores them and calls [`retry`] later. A relay that does not know who
//! else writes to the target ([`Authority::Unknown`]) deletes nothing and counts the keys.
//!
//! On a Redis Cluster target ([`Plan::cluster`]) the same proofs run on the master of each key's
//! slot: every master's keys are scanned, candidates are batched per (db, hash slot) because
//! WATCH and MULTI/EXEC may only touch one slot, and a redirection, a cluster that is down or a
//! slot map that changes during the call ends the call with [`DeletionError::Cluster`], which
//! the caller treats as transient (it starts over with a fresh map). A key is only ever deleted
//! by the EXEC of the node that held it under WATCH.
//!
//! Blocking I/O on purpose: a deletion runs while the flushing source's stream is held back, so
//! there is nothing else for the caller's thread to do meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::endpoint::Endpoint;
use crate::resp::client::{self, read_reply_from, Client, ClientError};
use crate::resp::{encode_command, Reply, Transport};
use crate::target::cluster::{key_slot, SlotMap, SLOTS};

/// Keys per WATCH/MULTI batch: large enough that the round trips (one WATCH, one per peer, one
/// EXEC) are paid for many keys, small enough that a write to one of them aborts little work.
/// Not larger: Redis (7.0 at least) checks each key WATCH adds against every key the
/// connection already watches, so a batch costs the target O(batch²). Measured on 1M keys
/// (2 peers, a third stale, loaded 2-core machine): batch 64: 11.7 s, 128: 7.9 s, 256: 6.6 s,
/// 1024: 17 s, 4096: 57 s.
pub const DEFAULT_BATCH: usize = 256;
/// Connect/read timeout for peers: a peer slower than this is treated as down (its keys are
/// deferred), which is safe, so the bound can be short.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// EXEC aborts of one batch before it is split (a hot key must not stall the whole sweep).
const MAX_ABORTS: u32 = 5;
const SCAN_COUNT: &str = "1000";
/// The target is not optional (an error there fails the call), so it gets a generous bound:
/// only a hung server should hit it.
const TARGET_MIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest reply text quoted in an error.
const QUOTE_MAX: usize = 200;

/// Who besides this relay may hold keys on the target.
#[derive(Debug, Clone)]
pub enum Authority {
    /// `--target-owner exclusive`: the relay is the target's only writer; candidates are
    /// deleted without asking anyone.
    Exclusive,
    /// The other writers are these masters (the pool's other backends, `--peer`s, the other
    /// sources of the same process). A candidate is deleted only once every peer answered that
    /// it does not hold it. An empty list means the relay's source(s) are the only writers (a
    /// pool of one backend): candidates are deleted. The endpoints' own db is not used: peers
    /// are asked in the dbs [`Plan::peer_dbs`] names.
    Peers(Vec<Endpoint>),
    /// Writers unknown: nothing is deleted, candidates are counted as unattributed.
    Unknown,
}

/// Which target databases a [`sweep`] scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Db(u32),
    /// Every db listed in the target's `INFO keyspace` (the ones holding keys).
    AllDbs,
}

/// Where a key most likely lives: an index into the peers.
pub type Hint<'a> = dyn Fn(&[u8]) -> Option<usize> + Sync + 'a;
/// Target db -> the source dbs whose keys land there.
pub type PeerDbs<'a> = dyn Fn(u32) -> Vec<u32> + Sync + 'a;
/// A yes/no question about a key of a db.
pub type KeyTest<'a> = dyn Fn(u32, &[u8]) -> bool + Sync + 'a;

/// What a deletion needs to know; see [`Plan::new`] for the defaults.
pub struct Plan<'a> {
    /// The endpoint's own db is not used: [`Scope`] (or the keys given to [`retry`]) names the
    /// dbs.
    pub target: &'a Endpoint,
    pub authority: &'a Authority,
    /// Index into the peers of the peer a key most likely lives on (nutcracker's placement),
    /// asked first; None: no hint. A hint that returns None for a key (placed on the relay's
    /// own backend) has that key asked of every peer at once.
    pub hint: Option<&'a Hint<'a>>,
    /// Target db -> the source dbs whose keys land there (peers are asked in those dbs;
    /// usually `vec![db]`). An empty list means no peer can hold keys of that target db.
    pub peer_dbs: &'a PeerDbs<'a>,
    /// Never candidates: the relay's own key prefix, keys the relay's filters never copy, the
    /// keys of a new snapshot.
    pub keep: &'a KeyTest<'a>,
    /// Asked after WATCH and before the peer check: false when the key must no longer be
    /// deleted (the relay's own stream wrote it since the flush). The caller marks keys
    /// *before* dispatching writes, so a key seen as still a candidate here is written on the
    /// target only after the WATCH, and EXEC then aborts.
    pub still_candidate: &'a KeyTest<'a>,
    /// Keys per WATCH/MULTI batch (at least 1).
    pub batch: usize,
    /// Connect/read timeout for peers.
    pub timeout: Duration,
    /// Ask the peers about the whole batch *before* the WATCH, and WATCH (and ask again) only
    /// the keys no peer held. Keeping a key needs no proof, so the first answer is final for
    /// the keys a peer holds; only those about to be deleted pay for the guard. Worth it when
    /// most candidates are on peers (a sidecar's master flushed its share of a merged target,
    /// or the stale-key pass after a resync, whose candidates are mostly the other masters'
    /// keys): WATCH costs the target O(batch²). Costs one more peer round per batch, so off
    /// when most candidates are stale. Measured on 1M keys, 2/3 of them on 2 peers, batch 256,
    /// loaded 2-core machine: 5.4-8.5 s without, 3.9-5.7 s with.
    pub precheck: bool,
    /// The target is a Redis Cluster and [`Plan::target`] one of its nodes (a seed for the
    /// slot map): keys are scanned on every master and decided on the master of their slot.
    pub cluster: bool,
}

fn same_db(db: u32) -> Vec<u32> {
    vec![db]
}

fn keep_nothing(_: u32, _: &[u8]) -> bool {
    false
}

fn always(_: u32, _: &[u8]) -> bool {
    true
}

impl<'a> Plan<'a> {
    /// No hint, peers asked in the same db, nothing kept, every candidate still a candidate,
    /// [`DEFAULT_BATCH`], [`DEFAULT_TIMEOUT`], no precheck; set the fields that differ.
    pub fn new(target: &'a Endpoint, authority: &'a Authority) -> Plan<'a> {
        Plan {
            target,
            authority,
            hint: None,
            peer_dbs: &same_db,
            keep: &keep_nothing,
            still_candidate: &always,
            batch: DEFAULT_BATCH,
            timeout: DEFAULT_TIMEOUT,
            precheck: false,
            cluster: false,
        }
    }
}

/// What a [`sweep`] or [`retry`] did.
#[derive(Default, Debug, Clone)]
pub struct Report {
    /// Keys examined: returned by SCAN, or given to [`retry`].
    pub scanned: u64,
    /// Keys the target's DEL replies counted.
    pub deleted: u64,
    /// Candidates a peer holds: kept.
    pub kept_on_peer: u64,
    /// Candidates in doubt (a peer could not answer, or the key was written on every one of
    /// its last WATCHes), handed to `defer`.
    pub deferred: u64,
    /// Candidates under [`Authority::Unknown`]: not deleted, not deferred.
    pub unattributed: u64,
    /// Pipelined EXISTS exchanges with peers (one per peer asked per batch and round).
    pub peer_round_trips: u64,
    /// EXEC aborts (a watched key was written while its batch was examined).
    pub watch_aborts: u64,
    /// `host:port` of each peer that could not answer during this call.
    pub peers_down: Vec<String>,
    /// Keys `keep` excluded.
    pub kept_by_rule: u64,
    /// Keys `still_candidate` withdrew (written by the relay's own stream since the flush).
    pub superseded: u64,
    /// EXISTS commands sent to peers (what a hint saves).
    pub peer_exists: u64,
}

/// A deletion that could not go on. Every variant names the server (`host:port`, never a
/// password) and the command.
#[derive(Debug, thiserror::Error)]
pub enum DeletionError {
    #[error("{role} {server}: {command}: {cause}")]
    Io {
        role: &'static str,
        server: String,
        command: String,
        cause: std::io::Error,
    },
    #[error("{role} {server}: {command} refused: {reply}")]
    Refused {
        role: &'static str,
        server: String,
        command: String,
        reply: String,
    },
    #[error("{role} {server}: {command}: unexpected reply {reply}")]
    Unexpected {
        role: &'static str,
        server: String,
        command: String,
        reply: String,
    },
    /// A cluster target could not serve the call as the slot map said: a redirection (-MOVED,
    /// -ASK, -TRYAGAIN), -CLUSTERDOWN, a slot without an online master, a slot migrating or a
    /// map that changed during the call, or no slot map at all. Not a refusal: nothing whose
    /// proof failed was deleted, and the call should start over with a fresh map (after a
    /// backoff).
    #[error("cluster target {server}: {command}: {reason}")]
    Cluster {
        server: String,
        command: String,
        reason: String,
    },
}

impl DeletionError {
    fn from_target(e: ClientError) -> DeletionError {
        match e {
            ClientError::Connect { target, cause } => DeletionError::Io {
                role: "target",
                server: target,
                command: "connect".into(),
                cause,
            },
            ClientError::Io {
                target,
                what,
                cause,
            } => DeletionError::Io {
                role: "target",
                server: target,
                command: what.into(),
                cause,
            },
            ClientError::Tls { target, reason } => DeletionError::Io {
                role: "target",
                server: target,
                command: "connect".into(),
                cause: std::io::Error::other(format!("TLS handshake failed: {reason}")),
            },
            ClientError::Refused {
                target,
                command,
                reply,
            } => DeletionError::Refused {
                role: "target",
                server: target,
                command,
                reply,
            },
        }
    }
}

/// A reply quoted in an error, bounded.
fn quote(r: &Reply) -> String {
    let mut s = match r {
        Reply::Error(e) => String::from_utf8_lossy(e).into_owned(),
        other => format!("{other:?}"),
    };
    if s.len() > QUOTE_MAX {
        let mut end = QUOTE_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// SCAN the scope and delete the proven candidates; keys in doubt go to `defer(db, key)`.
///
/// SCAN may return a key twice (the target rehashing meanwhile): it is then counted twice,
/// and may be deferred twice, so the caller should store deferred keys as a set.
///
/// On a cluster ([`Plan::cluster`]) every master is scanned and each key decided on the master
/// of its slot; [`DeletionError::Cluster`] means: call again.
pub fn sweep(
    plan: &Plan,
    scope: Scope,
    defer: &mut dyn FnMut(u32, Bytes),
) -> Result<Report, DeletionError> {
    if plan.cluster {
        return sweep_cluster(plan, scope, defer);
    }
    let mut s = Session::open(plan, plan.target)?;
    let dbs = match scope {
        Scope::Db(d) => vec![d],
        Scope::AllDbs => s.target.keyspace_dbs()?,
    };
    for db in dbs {
        s.target.select(db)?;
        let mut batcher = Batcher::new(plan.batch);
        let mut cursor = Bytes::from_static(b"0");
        loop {
            let (next, keys) = s.target.scan(&cursor)?;
            for k in keys {
                if let Some((d, batch)) = s.admit(db, k).and_then(|k| batcher.push(db, k)) {
                    s.process(d, batch, defer)?;
                }
            }
            if &next[..] == b"0" {
                break;
            }
            cursor = next;
        }
        if let Some((d, batch)) = batcher.finish() {
            s.process(d, batch, defer)?;
        }
    }
    Ok(s.report)
}

/// The same for an explicit list of keys (retrying deferred deletions). `keep` and
/// `still_candidate` apply again: the snapshot or the stream may have claimed a key since it
/// was deferred. On a cluster each key is decided on the master of its slot.
pub fn retry(
    plan: &Plan,
    keys: &mut dyn Iterator<Item = (u32, Bytes)>,
    defer: &mut dyn FnMut(u32, Bytes),
) -> Result<Report, DeletionError> {
    if plan.cluster {
        return retry_cluster(plan, keys, defer);
    }
    let mut s = Session::open(plan, plan.target)?;
    let mut batcher = Batcher::new(plan.batch);
    for (db, k) in keys {
        if let Some((d, batch)) = s.admit(db, k).and_then(|k| batcher.push(db, k)) {
            s.target.select(d)?;
            s.process(d, batch, defer)?;
        }
    }
    if let Some((d, batch)) = batcher.finish() {
        s.target.select(d)?;
        s.process(d, batch, defer)?;
    }
    Ok(s.report)
}

/// [`sweep`] on a cluster: the masters one after the other, each scanned for its own keys.
/// A sweep must see every key, so it fails (transiently) when some slot has no online master,
/// and when the slot map changed before it ended (a slot that moved from a master not yet
/// scanned to one already scanned would have been missed).
fn sweep_cluster(
    plan: &Plan,
    scope: Scope,
    defer: &mut dyn FnMut(u32, Bytes),
) -> Result<Report, DeletionError> {
    let map = discover(plan)?;
    let masters = serving_masters(plan, &map)?;
    let Some(first) = masters.first() else {
        return Ok(Report::default());
    };
    let mut s = Session::open(plan, first)?;
    for node in &masters {
        s.switch(node)?;
        s.sweep_node(&map, scope, defer)?;
    }
    let now = discover(plan)?;
    if let Some(slot) = (0..SLOTS as u16).find(|&slot| owner(&map, slot) != owner(&now, slot)) {
        return Err(DeletionError::Cluster {
            server: plan.target.to_string(),
            command: "CLUSTER SHARDS".into(),
            reason: format!(
                "slot {slot} moved during the sweep (from {} to {}): some of its keys may not have been examined",
                owner(&map, slot).unwrap_or_else(|| "nobody".into()),
                owner(&now, slot).unwrap_or_else(|| "nobody".into())
            ),
        });
    }
    Ok(s.report)
}

/// [`retry`] on a cluster: the keys grouped by (slot, db), each group decided on its slot's
/// master in batches of at most [`Plan::batch`] keys.
fn retry_cluster(
    plan: &Plan,
    keys: &mut dyn Iterator<Item = (u32, Bytes)>,
    defer: &mut dyn FnMut(u32, Bytes),
) -> Result<Report, DeletionError> {
    let mut groups: BTreeMap<(u16, u32), Vec<Bytes>> = BTreeMap::new();
    for (db, k) in keys {
        groups.entry((key_slot(&k), db)).or_default().push(k);
    }
    let map = discover(plan)?;
    let mut s: Option<Session> = None;
    for ((slot, db), group) in groups {
        let node = master_of(plan, &map, slot)?;
        let s = match &mut s {
            Some(s) => s,
            None => s.insert(Session::open(plan, &node)?),
        };
        s.switch(&node)?;
        let admitted: Vec<Bytes> = group.into_iter().filter_map(|k| s.admit(db, k)).collect();
        if admitted.is_empty() {
            continue;
        }
        s.target.select(db)?;
        for batch in admitted.chunks(plan.batch.max(1)) {
            s.process(db, batch.to_vec(), defer)?;
        }
    }
    Ok(s.map(|s| s.report).unwrap_or_default())
}

/// Delete `keys` of `db` on a cluster without any proof, each on the master of its slot (one
/// DEL per slot: DEL refuses keys of several slots). For the old value of a deferred key the
/// relay's own stream is about to write again (the write replaces any peer's copy anyway).
/// Returns how many keys the DELs counted; a redirection is [`DeletionError::Cluster`]
/// (transient: call again).
pub fn delete_on_cluster(
    seed: &Endpoint,
    db: u32,
    keys: &[Bytes],
    timeout: Duration,
) -> Result<u64, DeletionError> {
    // No transaction here: Unknown spares the connections the MULTI check.
    let unknown = Authority::Unknown;
    let mut plan = Plan::new(seed, &unknown);
    plan.cluster = true;
    plan.timeout = timeout;
    let map = discover(&plan)?;
    let mut groups: BTreeMap<u16, Vec<&[u8]>> = BTreeMap::new();
    for k in keys {
        groups.entry(key_slot(k)).or_default().push(k);
    }
    let mut nodes: Vec<Target> = Vec::new();
    let mut deleted = 0;
    for (slot, group) in groups {
        let ep = master_of(&plan, &map, slot)?;
        let name = ep.to_string();
        let i = match nodes.iter().position(|t| t.name == name) {
            Some(i) => i,
            None => {
                nodes.push(Target::connect(&ep, &plan)?);
                nodes.len() - 1
            }
        };
        let node = &mut nodes[i];
        node.select(db)?;
        let mut args: Vec<&[u8]> = Vec::with_capacity(group.len() + 1);
        args.push(b"DEL");
        args.extend(group);
        match node.call(&args, "DEL")? {
            Reply::Integer(n) => deleted += n.max(0) as u64,
            other => return Err(node.unexpected("DEL", &other)),
        }
    }
    Ok(deleted)
}

/// The cluster's slot map, asked of [`Plan::target`].
fn discover(plan: &Plan) -> Result<SlotMap, DeletionError> {
    let timeout = plan.timeout.max(TARGET_MIN_TIMEOUT);
    SlotMap::discover(std::slice::from_ref(plan.target), timeout).map_err(|e| {
        DeletionError::Cluster {
            server: plan.target.to_string(),
            command: "CLUSTER SHARDS".into(),
            reason: e.to_string(),
        }
    })
}

/// `host:port` of the online master serving `slot`, if any.
fn owner(map: &SlotMap, slot: u16) -> Option<String> {
    map.master_for(slot).map(|n| n.addr())
}

/// The endpoint (with the target's login) of the online master serving `slot`.
fn master_of(plan: &Plan, map: &SlotMap, slot: u16) -> Result<Endpoint, DeletionError> {
    map.master_for(slot)
        .map(|n| n.endpoint(plan.target))
        .ok_or_else(|| DeletionError::Cluster {
            server: plan.target.to_string(),
            command: "CLUSTER SHARDS".into(),
            reason: format!("slot {slot} has no online master"),
        })
}

/// The masters serving at least one slot, in slot order; fails when some slot has no online
/// master (its keys could not be examined).
fn serving_masters(plan: &Plan, map: &SlotMap) -> Result<Vec<Endpoint>, DeletionError> {
    let mut out: Vec<Endpoint> = Vec::new();
    for slot in 0..SLOTS as u16 {
        let ep = master_of(plan, map, slot)?;
        if !out.contains(&ep) {
            out.push(ep);
        }
    }
    Ok(out)
}

/// Candidates of one node's scan grouped by hash slot: a group is handed out when it holds
/// `size` keys; [`SlotBatcher::full`] says when the groups together hold `cap` keys and
/// should all be handed out (bounds the memory when the node's keys spread over many slots).
#[derive(Debug)]
struct SlotBatcher {
    size: usize,
    cap: usize,
    held: usize,
    groups: HashMap<u16, Vec<Bytes>>,
}

/// Most candidates a [`SlotBatcher`] holds before handing out every group.
const SLOT_BATCHER_CAP: usize = 262_144;

impl SlotBatcher {
    fn new(size: usize, cap: usize) -> SlotBatcher {
        SlotBatcher {
            size: size.max(1),
            cap: cap.max(1),
            held: 0,
            groups: HashMap::new(),
        }
    }

    fn push(&mut self, slot: u16, key: Bytes) -> Option<Vec<Bytes>> {
        let group = self.groups.entry(slot).or_default();
        group.push(key);
        self.held += 1;
        if group.len() < self.size {
            return None;
        }
        self.held -= group.len();
        self.groups.remove(&slot)
    }

    fn full(&self) -> bool {
        self.held >= self.cap
    }

    /// Every group, in slot order.
    fn drain(&mut self) -> Vec<Vec<Bytes>> {
        self.held = 0;
        let mut all: Vec<(u16, Vec<Bytes>)> = self.groups.drain().collect();
        all.sort_unstable_by_key(|(slot, _)| *slot);
        all.into_iter().map(|(_, g)| g).collect()
    }
}

/// Groups keys into batches of one db and at most `size` keys, in arrival order. A batch is
/// handed out when the next key does not fit (another db, or the batch is full), so `push`
/// yields at most one batch.
#[derive(Debug)]
struct Batcher {
    size: usize,
    db: u32,
    keys: Vec<Bytes>,
}

impl Batcher {
    fn new(size: usize) -> Batcher {
        let size = size.max(1);
        Batcher {
            size,
            db: 0,
            keys: Vec::with_capacity(size.min(4096)),
        }
    }

    fn push(&mut self, db: u32, key: Bytes) -> Option<(u32, Vec<Bytes>)> {
        let out = if !self.keys.is_empty() && (db != self.db || self.keys.len() >= self.size) {
            Some((self.db, std::mem::take(&mut self.keys)))
        } else {
            None
        };
        self.db = db;
        self.keys.push(key);
        out
    }

    fn finish(&mut self) -> Option<(u32, Vec<Bytes>)> {
        (!self.keys.is_empty()).then(|| (self.db, std::mem::take(&mut self.keys)))
    }
}

/// The first round with a hint: each key goes to its hinted peer; a key without a hint (or with
/// an index past the peers) goes to every peer, since it will have to be asked everywhere
/// anyway. Returns, per peer, indices into the keys.
fn first_round(hints: &[Option<usize>], peers: usize) -> Vec<Vec<usize>> {
    let mut asks = vec![Vec::new(); peers];
    for (i, h) in hints.iter().enumerate() {
        match h {
            Some(p) if *p < peers => asks[*p].push(i),
            _ => asks.iter_mut().for_each(|a| a.push(i)),
        }
    }
    asks
}

/// The second round with a hint: a key its hinted peer did not hold (or could not answer for)
/// is asked of every other peer. Keys without a usable hint were asked everywhere already.
fn second_round(hints: &[Option<usize>], found: &[bool], peers: usize) -> Vec<Vec<usize>> {
    let mut asks = vec![Vec::new(); peers];
    for (i, h) in hints.iter().enumerate() {
        match h {
            Some(q) if *q < peers && !found[i] => {
                for (p, a) in asks.iter_mut().enumerate() {
                    if p != *q {
                        a.push(i);
                    }
                }
            }
            _ => {}
        }
    }
    asks
}

/// What becomes of one candidate once the peers answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Kept,
    Deferred,
    Delete,
}

/// Found on a peer wins over doubt: a key some peer holds is kept whoever else was down.
fn verdict(found: bool, doubt: bool) -> Verdict {
    if found {
        Verdict::Kept
    } else if doubt {
        Verdict::Deferred
    } else {
        Verdict::Delete
    }
}

/// An EXISTS reply: whether the key is there; None for anything else.
fn exists_reply(r: &Reply) -> Option<bool> {
    match r {
        Reply::Integer(n) => Some(*n > 0),
        _ => None,
    }
}

/// How a `MULTI; DEL ...; EXEC` ended.
#[derive(Debug, PartialEq, Eq)]
enum ExecOutcome {
    /// Nil: a watched key changed; nothing ran.
    Aborted,
    Deleted(u64),
    /// An error reply (EXECABORT, or DEL's own error inside the array).
    Failed(String),
}

fn exec_reply(r: &Reply) -> Option<ExecOutcome> {
    match r {
        Reply::Array(None) | Reply::Bulk(None) => Some(ExecOutcome::Aborted),
        Reply::Array(Some(items)) if items.len() == 1 => match &items[0] {
            Reply::Integer(n) => Some(ExecOutcome::Deleted((*n).max(0) as u64)),
            e @ Reply::Error(_) => Some(ExecOutcome::Failed(quote(e))),
            _ => None,
        },
        e @ Reply::Error(_) => Some(ExecOutcome::Failed(quote(e))),
        _ => None,
    }
}

/// A SCAN reply: (next cursor, keys).
fn scan_reply(r: Reply) -> Option<(Bytes, Vec<Bytes>)> {
    let Reply::Array(Some(mut items)) = r else {
        return None;
    };
    if items.len() != 2 {
        return None;
    }
    let keys = match items.pop()? {
        Reply::Array(Some(ks)) => ks
            .into_iter()
            .map(|k| match k {
                Reply::Bulk(Some(b)) => Some(b),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?,
        _ => return None,
    };
    let cursor = match items.pop()? {
        Reply::Bulk(Some(c)) | Reply::Simple(c) => c,
        _ => return None,
    };
    Some((cursor, keys))
}

/// The dbs of an `INFO keyspace` text (`db3:keys=1,expires=0,avg_ttl=0`).
fn keyspace_dbs(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|l| l.strip_prefix("db")?.split(':').next()?.parse().ok())
        .collect()
}

/// Read a peer's answers to one pipeline, recording the keys it holds; the first failure
/// (I/O, timeout, error reply) ends the reading: the connection is then unusable.
fn read_answers(
    conn: &mut PeerConn,
    name: &str,
    expect: &[Expect],
    found: &mut [bool],
) -> Option<DeletionError> {
    for e in expect {
        let command = match e {
            Expect::Select => "SELECT",
            Expect::Exists(_) => "EXISTS",
        };
        let r = match conn.recv() {
            Ok(r) => r,
            Err(cause) => {
                return Some(DeletionError::Io {
                    role: "peer",
                    server: name.into(),
                    command: command.into(),
                    cause,
                })
            }
        };
        let ok = match e {
            Expect::Select => is_ok(&r),
            Expect::Exists(i) => match exists_reply(&r) {
                Some(held) => {
                    found[*i] |= held;
                    true
                }
                None => false,
            },
        };
        if !ok {
            let (server, command, reply) = (name.into(), command.into(), quote(&r));
            return Some(if r.is_error() {
                DeletionError::Refused {
                    role: "peer",
                    server,
                    command,
                    reply,
                }
            } else {
                DeletionError::Unexpected {
                    role: "peer",
                    server,
                    command,
                    reply,
                }
            });
        }
    }
    None
}

/// One peer's pipeline for a round: in each of `dbs` (a SELECT first unless the connection
/// is already there, from `selected` on), EXISTS of each key of `idx`; with what each reply
/// answers.
fn exists_pipeline(
    idx: &[usize],
    keys: &[Bytes],
    dbs: &[u32],
    mut selected: Option<u32>,
) -> (BytesMut, Vec<Expect>) {
    let mut out = BytesMut::new();
    let mut expect = Vec::with_capacity(idx.len() * dbs.len() + dbs.len());
    for &d in dbs {
        if selected != Some(d) {
            encode_command(&mut out, &[&b"SELECT"[..], d.to_string().as_bytes()]);
            expect.push(Expect::Select);
            selected = Some(d);
        }
        for &i in idx {
            encode_command(&mut out, &[&b"EXISTS"[..], &keys[i]]);
            expect.push(Expect::Exists(i));
        }
    }
    (out, expect)
}

/// A cluster's answer that the command belongs elsewhere or cannot be served now (-MOVED,
/// -ASK, -TRYAGAIN, -CLUSTERDOWN): not a refusal, the call starts over with a fresh map.
fn is_redirection(r: &Reply) -> bool {
    match r {
        Reply::Error(e) => redirection_text(&String::from_utf8_lossy(e)),
        _ => false,
    }
}

/// The text of an error reply is a redirection (see [`is_redirection`]).
fn redirection_text(e: &str) -> bool {
    matches!(
        e.split(' ').next(),
        Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN")
    )
}

fn is_ok(r: &Reply) -> bool {
    matches!(r, Reply::Simple(s) if &s[..] == b"OK")
}

/// The target connection (on a cluster: one master's) and the db it has selected.
struct Target {
    conn: Client,
    name: String,
    db: Option<u32>,
    /// A cluster node: redirections and -CLUSTERDOWN are [`DeletionError::Cluster`].
    cluster: bool,
}

impl Target {
    /// Connect to `ep` with the target's timeouts. Unless nothing will be deleted, check
    /// first that the connection may open a transaction: the deletions are pipelined as
    /// MULTI; DEL; EXEC, and were MULTI refused (an ACL without it) the DEL would run at once,
    /// outside the WATCH guard.
    fn connect(ep: &Endpoint, plan: &Plan) -> Result<Target, DeletionError> {
        let timeout = plan.timeout.max(TARGET_MIN_TIMEOUT);
        let conn = Client::connect(ep, timeout).map_err(DeletionError::from_target)?;
        let mut target = Target {
            conn,
            name: ep.to_string(),
            db: None,
            cluster: plan.cluster,
        };
        target
            .conn
            .stream
            .set_read_timeout(Some(timeout))
            .and_then(|_| target.conn.stream.set_write_timeout(Some(timeout)))
            .map_err(|e| target.io("set timeouts", e))?;
        if !matches!(plan.authority, Authority::Unknown) {
            target.call_ok(&["MULTI"], "MULTI")?;
            target.call_ok(&["DISCARD"], "DISCARD")?;
        }
        Ok(target)
    }

    fn io(&self, command: &str, cause: std::io::Error) -> DeletionError {
        DeletionError::Io {
            role: "target",
            server: self.name.clone(),
            command: command.into(),
            cause,
        }
    }

    /// An error reply to `command`: a refusal, or on a cluster a redirection.
    fn refused(&self, command: &str, r: &Reply) -> DeletionError {
        if self.cluster && is_redirection(r) {
            return DeletionError::Cluster {
                server: self.name.clone(),
                command: command.into(),
                reason: quote(r),
            };
        }
        DeletionError::Refused {
            role: "target",
            server: self.name.clone(),
            command: command.into(),
            reply: quote(r),
        }
    }

    fn unexpected(&self, command: &str, r: &Reply) -> DeletionError {
        DeletionError::Unexpected {
            role: "target",
            server: self.name.clone(),
            command: command.into(),
            reply: quote(r),
        }
    }

    fn send(&mut self, out: &[u8], command: &str) -> Result<(), DeletionError> {
        self.conn
            .stream
            .write_all(out)
            .map_err(|e| self.io(command, e))
    }

    /// The next reply; an error reply is a [`DeletionError::Refused`] for `command`.
    fn recv(&mut self, command: &str) -> Result<Reply, DeletionError> {
        let r = self.conn.read_reply().map_err(|e| self.io(command, e))?;
        if r.is_error() {
            return Err(self.refused(command, &r));
        }
        Ok(r)
    }

    fn call<A: AsRef<[u8]>>(&mut self, args: &[A], command: &str) -> Result<Reply, DeletionError> {
        let mut out = BytesMut::new();
        encode_command(&mut out, args);
        self.send(&out, command)?;
        self.recv(command)
    }

    fn call_ok<A: AsRef<[u8]>>(&mut self, args: &[A], command: &str) -> Result<(), DeletionError> {
        let r = self.call(args, command)?;
        if is_ok(&r) {
            Ok(())
        } else {
            Err(self.unexpected(command, &r))
        }
    }

    fn select(&mut self, db: u32) -> Result<(), DeletionError> {
        if self.db != Some(db) {
            let d = db.to_string();
            self.call_ok(&["SELECT", d.as_str()], &format!("SELECT {db}"))?;
            self.db = Some(db);
        }
        Ok(())
    }

    fn keyspace_dbs(&mut self) -> Result<Vec<u32>, DeletionError> {
        let r = self.call(&["INFO", "keyspace"], "INFO keyspace")?;
        match r.as_text() {
            Some(text) => Ok(keyspace_dbs(&text)),
            None => Err(self.unexpected("INFO keyspace", &r)),
        }
    }

    fn scan(&mut self, cursor: &[u8]) -> Result<(Bytes, Vec<Bytes>), DeletionError> {
        let r = self.call(
            &[&b"SCAN"[..], cursor, b"COUNT", SCAN_COUNT.as_bytes()],
            "SCAN",
        )?;
        let shown = quote(&r);
        scan_reply(r).ok_or_else(|| DeletionError::Unexpected {
            role: "target",
            server: self.name.clone(),
            command: "SCAN".into(),
            reply: shown,
        })
    }
}

/// A peer connection. Not a [`Client`]: a peer that accepts the TCP connection but never
/// answers (stopped, overloaded) must time out already during AUTH/PING, so the socket
/// timeouts are set before the login.
struct PeerConn {
    stream: Transport,
    buf: BytesMut,
}

impl PeerConn {
    fn connect(ep: &Endpoint, timeout: Duration) -> Result<PeerConn, DeletionError> {
        let server = ep.to_string();
        let io = |command: &str, cause| DeletionError::Io {
            role: "peer",
            server: server.clone(),
            command: command.into(),
            cause,
        };
        let mut last = None;
        let mut stream = None;
        for a in (ep.host.as_str(), ep.port)
            .to_socket_addrs()
            .map_err(|e| io("resolve", e))?
        {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = stream.ok_or_else(|| {
            io(
                "connect",
                last.unwrap_or_else(|| std::io::ErrorKind::AddrNotAvailable.into()),
            )
        })?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|_| stream.set_write_timeout(Some(timeout)))
            .and_then(|_| stream.set_nodelay(true))
            .map_err(|e| io("connect", e))?;
        let stream = client::transport(ep, stream, timeout).map_err(|e| match e {
            ClientError::Tls { reason, .. } => io(
                "connect",
                std::io::Error::other(format!("TLS handshake failed: {reason}")),
            ),
            other => io("connect", std::io::Error::other(other.to_string())),
        })?;
        let mut conn = PeerConn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
        };
        let refused = |command: &str, r: &Reply| DeletionError::Refused {
            role: "peer",
            server: server.clone(),
            command: command.into(),
            reply: quote(r),
        };
        if let Some(pass) = &ep.password {
            let r = match &ep.username {
                Some(user) => conn.call(&["AUTH", user.as_str(), pass.as_str()]),
                None => conn.call(&["AUTH", pass.as_str()]),
            }
            .map_err(|e| io("AUTH", e))?;
            if r.is_error() {
                return Err(refused("AUTH", &r));
            }
        }
        let r = conn.call(&["PING"]).map_err(|e| io("PING", e))?;
        if r.is_error() {
            return Err(refused("PING", &r));
        }
        Ok(conn)
    }

    fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<Reply> {
        let mut out = BytesMut::new();
        encode_command(&mut out, args);
        self.stream.write_all(&out)?;
        self.recv()
    }

    fn recv(&mut self) -> std::io::Result<Reply> {
        read_reply_from(&mut self.stream, &mut self.buf)
    }
}

enum PeerState {
    /// Not connected yet (peers are connected on first use: a sweep with no candidates
    /// contacts nobody).
    Idle,
    Up {
        conn: PeerConn,
        db: Option<u32>,
    },
    /// Could not answer once: not asked again during this call, its keys are in doubt.
    Down,
}

struct Peer<'a> {
    ep: &'a Endpoint,
    name: String,
    state: PeerState,
}

/// What one reply in a peer's pipeline answers.
#[derive(Clone, Copy)]
enum Expect {
    Select,
    Exists(usize),
}

/// The result of examining a batch once.
enum Attempt {
    /// EXEC aborted: examine the batch again.
    Aborted,
    Done(Outcome),
}

#[derive(Default)]
struct Outcome {
    superseded: u64,
    kept: u64,
    deferred: Vec<Bytes>,
    deleted: u64,
}

/// One call's connections and counters.
struct Session<'p, 'a> {
    plan: &'p Plan<'a>,
    /// The node batches are decided on (on a cluster: the master of the batch's slot).
    target: Target,
    /// A cluster's other masters connected during this call, kept for the next switch.
    spare: Vec<Target>,
    peers: Vec<Peer<'a>>,
    report: Report,
}

impl<'p, 'a> Session<'p, 'a> {
    /// Connect to `first` (the target, or on a cluster the first master to work on); peers
    /// are connected on first use.
    fn open(plan: &'p Plan<'a>, first: &Endpoint) -> Result<Session<'p, 'a>, DeletionError> {
        let target = Target::connect(first, plan)?;
        let peers = match plan.authority {
            Authority::Peers(eps) => eps
                .iter()
                .map(|ep| Peer {
                    ep,
                    name: ep.to_string(),
                    state: PeerState::Idle,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(Session {
            plan,
            target,
            spare: Vec::new(),
            peers,
            report: Report::default(),
        })
    }

    /// Make `ep` (a cluster master) the node batches are decided on, reusing its connection
    /// if it was connected before during this call.
    fn switch(&mut self, ep: &Endpoint) -> Result<(), DeletionError> {
        let name = ep.to_string();
        if self.target.name == name {
            return Ok(());
        }
        let next = match self.spare.iter().position(|t| t.name == name) {
            Some(i) => self.spare.swap_remove(i),
            None => Target::connect(ep, self.plan)?,
        };
        let prev = std::mem::replace(&mut self.target, next);
        self.spare.push(prev);
        Ok(())
    }

    /// Scan the current cluster master's keys in the scope and decide them in batches of one
    /// (db, slot). A key of a slot the map gives to another master means the slot is migrating
    /// (or the map is stale): the call fails transiently rather than decide it here.
    fn sweep_node(
        &mut self,
        map: &SlotMap,
        scope: Scope,
        defer: &mut dyn FnMut(u32, Bytes),
    ) -> Result<(), DeletionError> {
        let dbs = match scope {
            Scope::Db(d) => vec![d],
            Scope::AllDbs => self.target.keyspace_dbs()?,
        };
        for db in dbs {
            self.target.select(db)?;
            let mut slots = SlotBatcher::new(self.plan.batch, SLOT_BATCHER_CAP);
            let mut cursor = Bytes::from_static(b"0");
            loop {
                let (next, keys) = self.target.scan(&cursor)?;
                for k in keys {
                    let slot = key_slot(&k);
                    self.check_owner(map, slot)?;
                    if let Some(batch) = self.admit(db, k).and_then(|k| slots.push(slot, k)) {
                        self.process(db, batch, defer)?;
                    }
                }
                if slots.full() || &next[..] == b"0" {
                    for batch in slots.drain() {
                        self.process(db, batch, defer)?;
                    }
                }
                if &next[..] == b"0" {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }

    /// The current node serves `slot` by the map (else [`DeletionError::Cluster`]).
    fn check_owner(&self, map: &SlotMap, slot: u16) -> Result<(), DeletionError> {
        let owner = owner(map, slot);
        if owner.as_deref() == Some(self.target.name.as_str()) {
            return Ok(());
        }
        Err(DeletionError::Cluster {
            server: self.target.name.clone(),
            command: "SCAN".into(),
            reason: format!(
                "holds a key of slot {slot}, which the slot map gives to {} (slot migrating, or the map is stale)",
                owner.unwrap_or_else(|| "nobody".into())
            ),
        })
    }

    /// Count a key and return it if it is a candidate.
    fn admit(&mut self, db: u32, key: Bytes) -> Option<Bytes> {
        self.report.scanned += 1;
        if (self.plan.keep)(db, &key) {
            self.report.kept_by_rule += 1;
            None
        } else {
            Some(key)
        }
    }

    /// Decide a batch of candidates of `db` (the target has `db` selected).
    fn process(
        &mut self,
        db: u32,
        keys: Vec<Bytes>,
        defer: &mut dyn FnMut(u32, Bytes),
    ) -> Result<(), DeletionError> {
        if matches!(self.plan.authority, Authority::Unknown) {
            self.report.unattributed += keys.len() as u64;
            return Ok(());
        }
        let keys = if self.plan.precheck {
            self.precheck(db, keys, defer)
        } else {
            keys
        };
        if keys.is_empty() {
            return Ok(());
        }
        let mut work = vec![keys];
        while let Some(batch) = work.pop() {
            let mut aborts = 0;
            loop {
                match self.attempt(db, &batch)? {
                    Attempt::Done(o) => {
                        self.report.superseded += o.superseded;
                        self.report.kept_on_peer += o.kept;
                        self.report.deleted += o.deleted;
                        self.report.deferred += o.deferred.len() as u64;
                        for k in o.deferred {
                            defer(db, k);
                        }
                        break;
                    }
                    Attempt::Aborted => {
                        self.report.watch_aborts += 1;
                        aborts += 1;
                        if aborts < MAX_ABORTS {
                            continue;
                        }
                        // Some key keeps being written: isolate it instead of stalling the
                        // rest; a single key that keeps changing is left for later.
                        if batch.len() == 1 {
                            self.report.deferred += 1;
                            defer(db, batch[0].clone());
                        } else {
                            let mut first = batch;
                            let second = first.split_off(first.len() / 2);
                            work.push(second);
                            work.push(first);
                        }
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// [`Plan::precheck`]: settle the keys a peer holds (kept) or might hold (deferred) without
    /// WATCH; return the others, which still need the guarded check.
    fn precheck(
        &mut self,
        db: u32,
        keys: Vec<Bytes>,
        defer: &mut dyn FnMut(u32, Bytes),
    ) -> Vec<Bytes> {
        if self.peers.is_empty() {
            return keys;
        }
        let (found, doubt) = self.check_peers(db, &keys, false);
        let mut rest = Vec::with_capacity(keys.len());
        for (i, k) in keys.into_iter().enumerate() {
            match verdict(found[i], doubt[i]) {
                Verdict::Kept => self.report.kept_on_peer += 1,
                Verdict::Deferred => {
                    self.report.deferred += 1;
                    defer(db, k);
                }
                Verdict::Delete => rest.push(k),
            }
        }
        rest
    }

    /// WATCH the batch, drop what the stream claimed, ask the peers, delete the rest in one
    /// transaction. Always leaves the connection with nothing watched.
    fn attempt(&mut self, db: u32, batch: &[Bytes]) -> Result<Attempt, DeletionError> {
        let mut out = BytesMut::new();
        self.watch(&mut out, batch)?;
        let mut outcome = Outcome::default();
        let live = self.unclaimed(db, batch, &mut outcome);
        let doomed = self.doomed(db, &live, &mut outcome);
        if doomed.len() == 1 {
            self.target.call_ok(&["UNWATCH"], "UNWATCH")?;
            return Ok(Attempt::Done(outcome));
        }
        self.delete_watched(&mut out, &doomed, outcome)
    }

    /// WATCH the keys of the batch (encoded into `out`), before anything is checked.
    fn watch(&mut self, out: &mut BytesMut, batch: &[Bytes]) -> Result<(), DeletionError> {
        let mut args: Vec<&[u8]> = Vec::with_capacity(batch.len() + 1);
        args.push(b"WATCH");
        args.extend(batch.iter().map(|k| &k[..]));
        encode_command(out, &args);
        self.target.send(out, "WATCH")?;
        let r = self.target.recv("WATCH")?;
        if !is_ok(&r) {
            return Err(self.target.unexpected("WATCH", &r));
        }
        Ok(())
    }

    /// The keys of the batch the stream has not claimed (written again) since they were
    /// found; the others are counted as superseded.
    fn unclaimed(&self, db: u32, batch: &[Bytes], outcome: &mut Outcome) -> Vec<Bytes> {
        let mut live: Vec<Bytes> = Vec::with_capacity(batch.len());
        for k in batch {
            if (self.plan.still_candidate)(db, k) {
                live.push(k.clone());
            } else {
                outcome.superseded += 1;
            }
        }
        live
    }

    /// `DEL` followed by the keys no peer holds or might hold; those a peer holds are counted
    /// as kept, those in doubt deferred.
    fn doomed<'k>(&mut self, db: u32, live: &'k [Bytes], outcome: &mut Outcome) -> Vec<&'k [u8]> {
        // After a precheck no peer held these a moment ago: ask every peer at once.
        let (found, doubt) = self.check_peers(db, live, self.plan.precheck);
        let mut doomed: Vec<&[u8]> = Vec::with_capacity(live.len() + 1);
        doomed.push(b"DEL");
        for (i, k) in live.iter().enumerate() {
            match verdict(found[i], doubt[i]) {
                Verdict::Kept => outcome.kept += 1,
                Verdict::Deferred => outcome.deferred.push(k.clone()),
                Verdict::Delete => doomed.push(k),
            }
        }
        doomed
    }

    /// Delete the watched keys: MULTI, the `doomed` DEL, EXEC and UNWATCH (encoded into
    /// `out`), and what EXEC answered.
    fn delete_watched(
        &mut self,
        out: &mut BytesMut,
        doomed: &[&[u8]],
        outcome: Outcome,
    ) -> Result<Attempt, DeletionError> {
        // One round trip; UNWATCH is a no-op after EXEC but keeps the rule "nothing watched
        // when a batch is left" independent of how EXEC ended.
        out.clear();
        encode_command(out, &["MULTI"]);
        encode_command(out, doomed);
        encode_command(out, &["EXEC"]);
        encode_command(out, &["UNWATCH"]);
        self.target.send(out, "MULTI/DEL/EXEC")?;
        let multi = self.target.recv("MULTI")?;
        if !is_ok(&multi) {
            return Err(self.target.unexpected("MULTI", &multi));
        }
        let queued = self
            .target
            .conn
            .read_reply()
            .map_err(|e| self.target.io("DEL", e))?;
        let exec = self
            .target
            .conn
            .read_reply()
            .map_err(|e| self.target.io("EXEC", e))?;
        let unwatch = self.target.recv("UNWATCH")?;
        if queued.is_error() {
            return Err(self.target.refused("DEL", &queued));
        }
        if !is_ok(&unwatch) {
            return Err(self.target.unexpected("UNWATCH", &unwatch));
        }
        self.exec_attempt(&exec, outcome)
    }

    /// What the EXEC of a deletion answered: aborted (a watched key changed), or how many
    /// keys were deleted.
    fn exec_attempt(&self, exec: &Reply, mut outcome: Outcome) -> Result<Attempt, DeletionError> {
        match exec_reply(exec) {
            Some(ExecOutcome::Aborted) => Ok(Attempt::Aborted),
            Some(ExecOutcome::Deleted(n)) => {
                outcome.deleted = n;
                Ok(Attempt::Done(outcome))
            }
            Some(ExecOutcome::Failed(e)) if self.target.cluster && redirection_text(&e) => {
                Err(DeletionError::Cluster {
                    server: self.target.name.clone(),
                    command: "EXEC (DEL)".into(),
                    reason: e,
                })
            }
            Some(ExecOutcome::Failed(e)) => Err(DeletionError::Refused {
                role: "target",
                server: self.target.name.clone(),
                command: "EXEC (DEL)".into(),
                reply: e,
            }),
            None => Err(self.target.unexpected("EXEC", exec)),
        }
    }

    /// For each key: (found on some peer, some peer that might hold it could not answer).
    /// `at_once`: every key to every peer in one parallel round, ignoring the hint.
    fn check_peers(&mut self, db: u32, keys: &[Bytes], at_once: bool) -> (Vec<bool>, Vec<bool>) {
        let mut found = vec![false; keys.len()];
        let mut doubt = vec![false; keys.len()];
        let n = self.peers.len();
        if n == 0 || keys.is_empty() {
            return (found, doubt);
        }
        let dbs = (self.plan.peer_dbs)(db);
        if dbs.is_empty() {
            return (found, doubt);
        }
        if at_once {
            let asks = first_round(&vec![None; keys.len()], n);
            self.ask(&asks, keys, &dbs, &mut found, &mut doubt);
            return (found, doubt);
        }
        match self.plan.hint {
            None => {
                // Peer after peer, each asked only what the previous ones did not hold.
                for p in 0..n {
                    let rest: Vec<usize> = (0..keys.len()).filter(|&i| !found[i]).collect();
                    if rest.is_empty() {
                        break;
                    }
                    let mut asks = vec![Vec::new(); n];
                    asks[p] = rest;
                    self.ask(&asks, keys, &dbs, &mut found, &mut doubt);
                }
            }
            Some(hint) => {
                let hints: Vec<Option<usize>> = keys.iter().map(|k| hint(k)).collect();
                let asks = first_round(&hints, n);
                self.ask(&asks, keys, &dbs, &mut found, &mut doubt);
                let asks = second_round(&hints, &found, n);
                self.ask(&asks, keys, &dbs, &mut found, &mut doubt);
            }
        }
        (found, doubt)
    }

    /// One round: every peer with something to ask gets its pipeline written first, then the
    /// replies are read, so the peers work in parallel. A peer that fails is marked down and
    /// the keys it was asked and did not confirm become doubtful.
    fn ask(
        &mut self,
        asks: &[Vec<usize>],
        keys: &[Bytes],
        dbs: &[u32],
        found: &mut [bool],
        doubt: &mut [bool],
    ) {
        let inflight = self.send_asks(asks, keys, dbs, doubt);
        self.read_asks(inflight, asks, dbs, found, doubt);
    }

    /// Write each peer's pipeline of the round (connecting it on first use); the peers written
    /// to, with what their replies answer. The keys of a peer that is down or cannot be
    /// written to become doubtful.
    fn send_asks(
        &mut self,
        asks: &[Vec<usize>],
        keys: &[Bytes],
        dbs: &[u32],
        doubt: &mut [bool],
    ) -> Vec<(usize, Vec<Expect>)> {
        let mut inflight: Vec<(usize, Vec<Expect>)> = Vec::new();
        for (p, idx) in asks.iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            self.connect_idle(p);
            let name = self.peers[p].name.clone();
            let PeerState::Up { conn, db: current } = &mut self.peers[p].state else {
                idx.iter().for_each(|&i| doubt[i] = true);
                continue;
            };
            let (out, expect) = exists_pipeline(idx, keys, dbs, *current);
            self.report.peer_round_trips += 1;
            self.report.peer_exists += (idx.len() * dbs.len()) as u64;
            match conn.stream.write_all(&out) {
                Ok(()) => {
                    // Counted as selected only once the replies confirm it.
                    *current = None;
                    inflight.push((p, expect));
                }
                Err(cause) => {
                    let e = DeletionError::Io {
                        role: "peer",
                        server: name,
                        command: "EXISTS".into(),
                        cause,
                    };
                    self.mark_down(p, &e);
                    idx.iter().for_each(|&i| doubt[i] = true);
                }
            }
        }
        inflight
    }

    /// Connect peer `p` if it was never used (marked down if that fails).
    fn connect_idle(&mut self, p: usize) {
        if let PeerState::Idle = self.peers[p].state {
            match PeerConn::connect(self.peers[p].ep, self.plan.timeout) {
                Ok(conn) => self.peers[p].state = PeerState::Up { conn, db: None },
                Err(e) => self.mark_down(p, &e),
            }
        }
    }

    /// Read the replies of each peer written to into `found`. A peer that fails is marked
    /// down and the keys it was asked and did not confirm become doubtful.
    fn read_asks(
        &mut self,
        inflight: Vec<(usize, Vec<Expect>)>,
        asks: &[Vec<usize>],
        dbs: &[u32],
        found: &mut [bool],
        doubt: &mut [bool],
    ) {
        for (p, expect) in inflight {
            let name = self.peers[p].name.clone();
            let failure = match &mut self.peers[p].state {
                PeerState::Up { conn, db: current } => {
                    let failure = read_answers(conn, &name, &expect, found);
                    if failure.is_none() {
                        *current = dbs.last().copied();
                    }
                    failure
                }
                _ => None,
            };
            if let Some(e) = failure {
                self.mark_down(p, &e);
                for &i in &asks[p] {
                    if !found[i] {
                        doubt[i] = true;
                    }
                }
            }
        }
    }

    fn mark_down(&mut self, p: usize, e: &DeletionError) {
        let peer = &mut self.peers[p];
        tracing::warn!(peer = %peer.name, error = %e, "peer could not answer: the keys only it might hold are not deleted (deferred)");
        peer.state = PeerState::Down;
        if !self.report.peers_down.contains(&peer.name) {
            self.report.peers_down.push(peer.name.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn drain(bt: &mut Batcher, items: &[(u32, &str)]) -> Vec<(u32, Vec<Bytes>)> {
        let mut out: Vec<_> = items
            .iter()
            .filter_map(|(d, k)| bt.push(*d, b(k)))
            .collect();
        out.extend(bt.finish());
        out
    }

    #[test]
    fn batches_split_by_size_and_db() {
        let mut bt = Batcher::new(2);
        let got = drain(
            &mut bt,
            &[(0, "a"), (0, "b"), (0, "c"), (1, "d"), (1, "e"), (0, "f")],
        );
        assert_eq!(
            got,
            vec![
                (0, vec![b("a"), b("b")]),
                (0, vec![b("c")]),
                (1, vec![b("d"), b("e")]),
                (0, vec![b("f")]),
            ]
        );
        assert_eq!(bt.finish(), None);
    }

    #[test]
    fn batch_of_zero_means_one() {
        let mut bt = Batcher::new(0);
        let got = drain(&mut bt, &[(3, "a"), (3, "b")]);
        assert_eq!(got, vec![(3, vec![b("a")]), (3, vec![b("b")])]);
    }

    #[test]
    fn hint_rounds() {
        // keys: 0 -> peer 1, 1 -> peer 0, 2 -> no hint, 3 -> out of range (like no hint)
        let hints = [Some(1), Some(0), None, Some(7)];
        let r1 = first_round(&hints, 2);
        assert_eq!(r1, vec![vec![1, 2, 3], vec![0, 2, 3]]);
        // key 0 found on its peer, key 1 not: only key 1 goes on, to peer 1.
        let found = [true, false, false, false];
        assert_eq!(second_round(&hints, &found, 2), vec![vec![], vec![1]]);
        // all found where hinted: no second round at all
        assert!(second_round(&hints, &[true, true, false, false], 2)
            .iter()
            .all(|a| a.is_empty()));
        // three peers: the miss is asked of both others
        assert_eq!(
            second_round(&[Some(2)], &[false], 3),
            vec![vec![0], vec![0], vec![]]
        );
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(true, true), Verdict::Kept);
        assert_eq!(verdict(true, false), Verdict::Kept);
        assert_eq!(verdict(false, true), Verdict::Deferred);
        assert_eq!(verdict(false, false), Verdict::Delete);
    }

    #[test]
    fn exists_replies() {
        assert_eq!(exists_reply(&Reply::Integer(1)), Some(true));
        assert_eq!(exists_reply(&Reply::Integer(0)), Some(false));
        assert_eq!(exists_reply(&Reply::Error(b("LOADING"))), None);
        assert_eq!(exists_reply(&Reply::Bulk(None)), None);
    }

    #[test]
    fn exec_replies() {
        assert_eq!(exec_reply(&Reply::Array(None)), Some(ExecOutcome::Aborted));
        assert_eq!(
            exec_reply(&Reply::Array(Some(vec![Reply::Integer(3)]))),
            Some(ExecOutcome::Deleted(3))
        );
        assert_eq!(
            exec_reply(&Reply::Error(b("EXECABORT Transaction discarded"))),
            Some(ExecOutcome::Failed(
                "EXECABORT Transaction discarded".into()
            ))
        );
        assert_eq!(
            exec_reply(&Reply::Array(Some(vec![Reply::Error(b("NOPERM x"))]))),
            Some(ExecOutcome::Failed("NOPERM x".into()))
        );
        assert_eq!(exec_reply(&Reply::Integer(1)), None);
    }

    #[test]
    fn scan_replies() {
        let r = Reply::Array(Some(vec![
            Reply::Bulk(Some(b("17"))),
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b("a"))),
                Reply::Bulk(Some(b("b"))),
            ])),
        ]));
        assert_eq!(scan_reply(r), Some((b("17"), vec![b("a"), b("b")])));
        assert_eq!(scan_reply(Reply::Error(b("NOPERM"))), None);
        assert_eq!(scan_reply(Reply::Array(Some(vec![]))), None);
    }

    #[test]
    fn keyspace() {
        let text =
            "# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\ndb12:keys=1,expires=1,avg_ttl=9\r\n";
        assert_eq!(keyspace_dbs(text), vec![0, 12]);
        assert!(keyspace_dbs("# Keyspace\r\n").is_empty());
    }

    #[test]
    fn errors_name_server_and_command_not_password() {
        let mut ep = Endpoint::new("10.0.0.1", 6380);
        ep.password = Some("sekret".into());
        let e = DeletionError::Refused {
            role: "target",
            server: ep.to_string(),
            command: "DEL".into(),
            reply: "NOPERM this user has no permissions".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("10.0.0.1:6380") && text.contains("DEL"),
            "{text}"
        );
        assert!(!text.contains("sekret"));
        let long = Reply::Error(Bytes::from(vec![b'x'; 1000]));
        assert!(quote(&long).chars().count() <= QUOTE_MAX + 1);
    }

    #[test]
    fn plan_defaults() {
        let ep = Endpoint::new("h", 1);
        let a = Authority::Exclusive;
        let p = Plan::new(&ep, &a);
        assert_eq!((p.peer_dbs)(4), vec![4]);
        assert!(!(p.keep)(0, b"k"));
        assert!((p.still_candidate)(0, b"k"));
        assert_eq!(p.batch, DEFAULT_BATCH);
        assert!(!p.cluster);
    }

    #[test]
    fn slot_batches_hold_one_slot_and_are_bounded() {
        let mut sb = SlotBatcher::new(2, 5);
        assert_eq!(sb.push(7, b("a")), None);
        assert_eq!(sb.push(3, b("b")), None);
        // Slot 7's group is full: handed out alone.
        assert_eq!(sb.push(7, b("c")), Some(vec![b("a"), b("c")]));
        assert!(!sb.full());
        for (slot, k) in [(1, "d"), (9, "e"), (4, "f")] {
            assert_eq!(sb.push(slot, b(k)), None);
        }
        // Four keys held in four slots, a fifth makes it full.
        assert!(!sb.full());
        assert_eq!(sb.push(5, b("g")), None);
        assert!(sb.full());
        assert_eq!(
            sb.drain(),
            vec![
                vec![b("d")],
                vec![b("b")],
                vec![b("f")],
                vec![b("g")],
                vec![b("e")]
            ]
        );
        assert!(!sb.full() && sb.drain().is_empty());
    }

    #[test]
    fn redirections_are_told_from_refusals() {
        for e in [
            "MOVED 3999 127.0.0.1:6381",
            "ASK 3999 127.0.0.1:6381",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
        ] {
            assert!(redirection_text(e), "{e}");
            assert!(is_redirection(&Reply::Error(b(e))), "{e}");
        }
        for e in [
            "NOPERM x",
            "EXECABORT Transaction discarded",
            "CROSSSLOT Keys",
            "MOVEDX",
        ] {
            assert!(!redirection_text(e), "{e}");
        }
        assert!(!is_redirection(&Reply::Simple(b("MOVED"))));
    }
}
