//! A blocking, redirect-following client for a Redis Cluster target, for the rare operations
//! that do not go through the slot writers: cross-slot units ([`super::cross_slot`]),
//! commands every master must run (FLUSHALL, SCRIPT LOAD), reading the relay's records back,
//! proven deletions and verify.
//!
//! It keeps a [`SlotMap`] and one lazily opened [`Client`] per master address, and follows
//! what a cluster answers while it changes (see `shared/notes/cluster-target.md`, sections 2
//! and 3):
//!
//! - `-MOVED`: the slot has a new owner; the map is read again and everything is resent
//!   (first to the node the redirection names, since nodes may disagree for a moment);
//! - `-ASK`: the slot is migrating and the key is (or will be) on the importing node; the
//!   batch is resent there once, after `ASKING`, without changing the map;
//! - `-TRYAGAIN` (keys split by a migration), `-CLUSTERDOWN`, `-LOADING`, `-READONLY`,
//!   connection errors and timeouts: back off (100 ms doubling to 2 s) and resend, reading the
//!   map again except on TRYAGAIN (the owner did not change), until a total budget (60 s by
//!   default) runs out.
//!
//! # The resend contract
//!
//! [`ClusterClient::call_in_slot`] resends the *whole* batch after any of the above. That is
//! only right when running it twice is the same as running it once, so callers pass either
//! a transaction (`MULTI` ... `EXEC`: a redirection refuses it whole and nothing runs; a
//! redirection in a `QUEUED` position makes EXEC answer `EXECABORT`, also nothing ran), or
//! idempotent commands (reads, `SET`, `DEL`, `RESTORE ... REPLACE`). One case stays
//! ambiguous: a connection lost after EXEC was sent. The transaction may have run, and it is
//! sent again; the callers' transactions are written so that a second run changes nothing
//! (cross-slot units restore absolute values; records are absolute).
//!
//! Metrics: `redis_relay_cluster_redirects_total{node,kind}` (kind: moved, ask, tryagain,
//! clusterdown; node: who answered) and `redis_relay_cluster_topology_refreshes_total`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::slot::key_slot;
use super::topology::{Node, SlotMap, TopologyError};
use crate::endpoint::Endpoint;
use crate::resp::{encode_command, Client, ClientError, Reply};

/// How long a batch is retried through redirections, migrations and failovers by default:
/// long enough for an automatic failover (`cluster-node-timeout` plus the election).
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(60);
/// First pause after a TRYAGAIN, CLUSTERDOWN or connection error; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// MOVED and ASK are followed at once this many times in a row; after that they back off
/// too (nodes disagree for a moment while `CLUSTER SETSLOT ... NODE` spreads).
const FREE_REDIRECTS: u32 = 5;
/// Keys asked per SCAN step.
const SCAN_COUNT: &str = "1000";

/// Why a cluster operation failed. Each message names the node (`host:port`), the slot when
/// there is one, and the command.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No slot map could be read from any seed.
    #[error("cluster target: {0}")]
    Topology(#[from] TopologyError),
    /// Redirections, migrations or outages outlasted the retry budget.
    #[error("cluster target: gave up on {command} for slot {} after {attempts} attempts in {elapsed:?}; last tried node {node}: {last}", show_slot(*.slot))]
    GaveUp {
        slot: Option<u16>,
        node: String,
        command: String,
        attempts: u32,
        elapsed: Duration,
        last: String,
    },
    /// The node answered an error to one of the relay's own commands.
    #[error("cluster target node {node}: {command} refused (slot {}): {reply}", show_slot(*.slot))]
    Refused {
        node: String,
        slot: Option<u16>,
        command: String,
        reply: String,
    },
    /// A reply of a shape the command does not have.
    #[error("cluster target node {node}: unexpected reply to {command} (slot {}): {reply}", show_slot(*.slot))]
    Unexpected {
        node: String,
        slot: Option<u16>,
        command: String,
        reply: String,
    },
    /// A relay key whose name breaks the cluster's rules (a hash tag to another slot).
    #[error("cluster target: {0}")]
    Invalid(String),
}

fn show_slot(slot: Option<u16>) -> String {
    slot.map_or_else(|| "none".to_string(), |s| s.to_string())
}

/// What a reply asks the client to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Redirect {
    Moved(String),
    Ask(String),
    TryAgain,
    ClusterDown,
    /// LOADING, READONLY, MASTERDOWN: the node is not (yet) the writable owner.
    Transient,
}

impl Redirect {
    /// The redirection an error reply is, if any; `addr` is `host:port` as the node wrote it.
    fn of(reply: &Reply) -> Option<Redirect> {
        let Reply::Error(e) = reply else { return None };
        let text = String::from_utf8_lossy(e);
        let mut words = text.split(' ');
        let first = words.next().unwrap_or("");
        let addr = || words.clone().nth(1).unwrap_or("").to_string();
        match first {
            "MOVED" => Some(Redirect::Moved(addr())),
            "ASK" => Some(Redirect::Ask(addr())),
            "TRYAGAIN" => Some(Redirect::TryAgain),
            "CLUSTERDOWN" => Some(Redirect::ClusterDown),
            "LOADING" | "READONLY" | "MASTERDOWN" => Some(Redirect::Transient),
            _ => None,
        }
    }

    /// The metric label, for the four kinds that are counted.
    fn kind(&self) -> Option<&'static str> {
        match self {
            Redirect::Moved(_) => Some("moved"),
            Redirect::Ask(_) => Some("ask"),
            Redirect::TryAgain => Some("tryagain"),
            Redirect::ClusterDown => Some("clusterdown"),
            Redirect::Transient => None,
        }
    }
}

/// Why one attempt got no usable replies.
enum SendError {
    /// Connection, I/O or timeout: worth another attempt.
    Io(String),
    /// The relay's own SELECT or ASKING refused: another attempt would be refused too.
    Refused(String),
}

/// One open connection and the database it is in (`None`: unknown, SELECT before use).
struct Conn {
    client: Client,
    db: Option<u32>,
}

/// Where the next attempt goes.
#[derive(Debug, Clone)]
struct Hop {
    /// `host:port` of the node.
    addr: String,
    /// Send ASKING first (an ASK redirection).
    asking: bool,
}

/// Retry state of one batch: attempts, pauses and the budget.
struct Retry {
    started: Instant,
    attempts: u32,
    redirects_in_row: u32,
    backoff: Duration,
    last: String,
}

impl Retry {
    fn new() -> Retry {
        Retry {
            started: Instant::now(),
            attempts: 0,
            redirects_in_row: 0,
            backoff: FIRST_BACKOFF,
            last: String::new(),
        }
    }

    /// Sleep before the next attempt (doubling up to [`MAX_BACKOFF`]).
    fn pause(&mut self) {
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// A client of a whole Redis Cluster: routes by slot and follows redirections (module doc).
pub struct ClusterClient {
    /// The configured seeds; their login is used for every node.
    seeds: Vec<Endpoint>,
    timeout: Duration,
    budget: Duration,
    map: SlotMap,
    conns: HashMap<String, Conn>,
}

impl ClusterClient {
    /// Read the slot map from the first seed that answers. The seeds' login (user, password)
    /// is reused for every node: the nodes of a cluster share their ACLs. `timeout` bounds
    /// each connect, read and write (not a whole operation: see [`Self::set_budget`]).
    pub fn connect(seeds: &[Endpoint], timeout: Duration) -> Result<ClusterClient, ClusterError> {
        let map = SlotMap::discover(seeds, timeout)?;
        Ok(ClusterClient {
            seeds: seeds.to_vec(),
            timeout,
            budget: DEFAULT_BUDGET,
            map,
            conns: HashMap::new(),
        })
    }

    /// How long one batch is retried through redirections and outages before it fails
    /// ([`DEFAULT_BUDGET`] unless set).
    pub fn set_budget(&mut self, budget: Duration) {
        self.budget = budget;
    }

    /// Read the slot map again. Asked in turn: the known masters first (they are current
    /// when only slots moved), then the configured seeds (when masters failed over).
    pub fn refresh(&mut self) -> Result<(), ClusterError> {
        metrics::counter!("redis_relay_cluster_topology_refreshes_total").increment(1);
        let login = self.login();
        let mut seeds: Vec<Endpoint> = self
            .map
            .masters()
            .iter()
            .filter(|n| n.is_online_master())
            .map(|n| n.endpoint(&login))
            .collect();
        seeds.extend(self.seeds.iter().cloned());
        self.map = SlotMap::discover(&seeds, self.timeout)?;
        // Connections to nodes that are no longer masters are of no further use.
        let masters: Vec<String> = self.masters().iter().map(Node::addr).collect();
        self.conns.retain(|addr, _| masters.contains(addr));
        Ok(())
    }

    /// The slot map as last read.
    pub fn map(&self) -> &SlotMap {
        &self.map
    }

    /// The online masters (the only nodes written to), as the map lists them.
    pub fn masters(&self) -> Vec<Node> {
        self.map
            .masters()
            .into_iter()
            .filter(|n| n.is_online_master())
            .cloned()
            .collect()
    }

    /// The login every node is reached with: the first seed's.
    fn login(&self) -> Endpoint {
        self.seeds
            .first()
            .cloned()
            .unwrap_or_else(|| Endpoint::new("", 0))
    }

    /// Where `slot` is served now, per the map.
    fn owner(&self, slot: u16) -> Option<String> {
        self.map.master_for(slot).map(Node::addr)
    }

    /// The open connection to `addr`, opening it (and logging in) when needed.
    fn conn(&mut self, addr: &str) -> Result<&mut Conn, String> {
        if !self.conns.contains_key(addr) {
            let ep = self.endpoint_of(addr)?;
            let client =
                Client::connect(&ep, self.timeout).map_err(|e: ClientError| e.to_string())?;
            let _ = client.stream.set_read_timeout(Some(self.timeout));
            let _ = client.stream.set_write_timeout(Some(self.timeout));
            self.conns.insert(
                addr.to_string(),
                Conn {
                    client,
                    db: Some(0),
                },
            );
        }
        self.conns
            .get_mut(addr)
            .ok_or_else(|| format!("no connection to {addr}"))
    }

    /// `host:port` (as [`Node::addr`] writes it) as an endpoint with the seeds' login.
    fn endpoint_of(&self, addr: &str) -> Result<Endpoint, String> {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("node address {addr:?} has no port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("node address {addr:?} has no valid port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let mut ep = self.login();
        ep.host = host.to_string();
        ep.port = port;
        ep.db = None;
        Ok(ep)
    }

    /// Put the connection to `addr` in database `db`, alone and before anything else: were
    /// SELECT pipelined with the commands and refused (a cluster without databases), the
    /// commands would run in the wrong database.
    fn select(&mut self, addr: &str, db: u32) -> Result<(), SendError> {
        let conn = self.conn(addr).map_err(SendError::Io)?;
        if conn.db == Some(db) {
            return Ok(());
        }
        match conn
            .client
            .call(&[b"SELECT".as_slice(), db.to_string().as_bytes()])
        {
            Ok(Reply::Error(e)) => Err(SendError::Refused(format!(
                "SELECT {db} refused: {}",
                String::from_utf8_lossy(&e)
            ))),
            Ok(_) => {
                conn.db = Some(db);
                Ok(())
            }
            Err(e) => {
                self.conns.remove(addr);
                Err(SendError::Io(format!("{addr}: SELECT {db}: {e}")))
            }
        }
    }

    /// Send `commands` pipelined to `hop` in database `db` (ASKING before each command, or
    /// once before a MULTI, when asked) and read every reply.
    /// Returns the replies to `commands` only.
    fn send(
        &mut self,
        hop: &Hop,
        db: u32,
        commands: &[Vec<Bytes>],
    ) -> Result<Vec<Reply>, SendError> {
        self.select(&hop.addr, db)?;
        let conn = self.conn(&hop.addr).map_err(SendError::Io)?;
        let mut out = BytesMut::new();
        let mut extra = Vec::new(); // index in the pipeline of each reply that is not ours
        let mut n = 0usize;
        let in_multi = commands
            .first()
            .is_some_and(|c| c.first().is_some_and(|n| n.eq_ignore_ascii_case(b"MULTI")));
        for (i, c) in commands.iter().enumerate() {
            if hop.asking && (i == 0 || !in_multi) {
                encode_command(&mut out, &[b"ASKING".as_slice()]);
                extra.push(n);
                n += 1;
            }
            encode_command(&mut out, c);
            n += 1;
        }
        let result = exchange(&mut conn.client, &out, n);
        let replies = match result {
            Ok(r) => r,
            Err(e) => {
                self.conns.remove(&hop.addr);
                return Err(SendError::Io(format!("{}: {e}", hop.addr)));
            }
        };
        let mut ours = Vec::with_capacity(commands.len());
        for (i, r) in replies.into_iter().enumerate() {
            if extra.first() == Some(&i) {
                extra.remove(0);
                if let Reply::Error(e) = r {
                    return Err(SendError::Refused(format!(
                        "ASKING refused: {}",
                        String::from_utf8_lossy(&e)
                    )));
                }
                continue;
            }
            ours.push(r);
        }
        let selects = commands
            .iter()
            .any(|c| c.first().is_some_and(|n| n.eq_ignore_ascii_case(b"SELECT")));
        if let Some(conn) = self.conns.get_mut(&hop.addr) {
            conn.db = if selects { None } else { Some(db) };
        }
        Ok(ours)
    }

    /// Send `commands` pipelined to the master of `slot`, in database `db`, and return their
    /// replies, following MOVED, ASK, TRYAGAIN, CLUSTERDOWN and connection errors by resending
    /// the whole batch (module doc) until the budget runs out.
    ///
    /// Contract: `commands` must be safe to send again, whole: one `MULTI` ... `EXEC`
    /// (a redirection refuses it before anything runs) or idempotent commands. Error replies
    /// that are not redirections are returned as they are, for the caller to judge.
    pub fn call_in_slot(
        &mut self,
        slot: u16,
        db: u32,
        commands: &[Vec<Bytes>],
    ) -> Result<Vec<Reply>, ClusterError> {
        let mut retry = Retry::new();
        let mut next: Option<Hop> = None;
        loop {
            retry.attempts += 1;
            let hop = match next.take().or_else(|| {
                self.owner(slot).map(|addr| Hop {
                    addr,
                    asking: false,
                })
            }) {
                Some(h) => h,
                None => {
                    retry.last = format!("no online master serves slot {slot}");
                    self.wait_and_refresh(&mut retry, Some(slot), commands, "none", true)?;
                    continue;
                }
            };
            match self.send(&hop, db, commands) {
                Ok(replies) => match replies.iter().find_map(|r| Some((Redirect::of(r)?, r))) {
                    None => return Ok(replies),
                    Some((redirect, reply)) => {
                        retry.last = format!("{} answered -{}", hop.addr, text_of(reply));
                        next = self.follow(redirect, &hop, &mut retry, Some(slot), commands)?;
                    }
                },
                Err(SendError::Refused(reply)) => {
                    return Err(ClusterError::Refused {
                        node: hop.addr,
                        slot: Some(slot),
                        command: describe(commands),
                        reply,
                    })
                }
                Err(SendError::Io(e)) => {
                    retry.last = e;
                    self.wait_and_refresh(&mut retry, Some(slot), commands, &hop.addr, true)?;
                }
            }
        }
    }

    /// Act on one redirection: count it, read the map again or pause as its kind needs, and
    /// say where the next attempt goes (`None`: the slot's owner per the map).
    fn follow(
        &mut self,
        redirect: Redirect,
        hop: &Hop,
        retry: &mut Retry,
        slot: Option<u16>,
        commands: &[Vec<Bytes>],
    ) -> Result<Option<Hop>, ClusterError> {
        if let Some(kind) = redirect.kind() {
            count_redirect(&hop.addr, kind);
        }
        match redirect {
            Redirect::Moved(to) if retry.redirects_in_row < FREE_REDIRECTS => {
                retry.redirects_in_row += 1;
                self.check_budget(retry, slot, commands, &hop.addr)?;
                if let Err(e) = self.refresh() {
                    tracing::debug!(error = %e, "slot map not read again after MOVED");
                }
                let addr = redirect_addr(&to, &hop.addr, self.map.nodes());
                Ok(Some(Hop {
                    addr,
                    asking: false,
                }))
            }
            Redirect::Ask(to) if retry.redirects_in_row < FREE_REDIRECTS => {
                retry.redirects_in_row += 1;
                self.check_budget(retry, slot, commands, &hop.addr)?;
                let addr = redirect_addr(&to, &hop.addr, self.map.nodes());
                Ok(Some(Hop { addr, asking: true }))
            }
            Redirect::Moved(_) | Redirect::Ask(_) => {
                // Redirected again and again: nodes disagree for now; pause, then the map.
                self.wait_and_refresh(retry, slot, commands, &hop.addr, true)?;
                Ok(None)
            }
            Redirect::TryAgain => {
                self.wait_and_refresh(retry, slot, commands, &hop.addr, false)?;
                Ok(None)
            }
            _ => {
                self.wait_and_refresh(retry, slot, commands, &hop.addr, true)?;
                Ok(None)
            }
        }
    }

    /// Fail when the budget is spent, naming the slot, the node and the last error.
    fn check_budget(
        &self,
        retry: &Retry,
        slot: Option<u16>,
        commands: &[Vec<Bytes>],
        node: &str,
    ) -> Result<(), ClusterError> {
        let elapsed = retry.started.elapsed();
        if elapsed + retry.backoff > self.budget {
            return Err(ClusterError::GaveUp {
                slot,
                node: node.to_string(),
                command: describe(commands),
                attempts: retry.attempts,
                elapsed,
                last: retry.last.clone(),
            });
        }
        Ok(())
    }

    /// Pause before the next attempt (failing when the budget is spent), reading the map
    /// again when `refresh` (a failed read keeps the old map: the next attempt tries again).
    fn wait_and_refresh(
        &mut self,
        retry: &mut Retry,
        slot: Option<u16>,
        commands: &[Vec<Bytes>],
        node: &str,
        refresh: bool,
    ) -> Result<(), ClusterError> {
        self.check_budget(retry, slot, commands, node)?;
        retry.pause();
        retry.redirects_in_row = 0;
        if refresh {
            if let Err(e) = self.refresh() {
                retry.last = format!("{}; reading the slot map again: {e}", retry.last);
            }
        }
        Ok(())
    }

    /// `MULTI`, `commands`, `EXEC` in `slot` (through [`Self::call_in_slot`], so resent after a
    /// redirection) and EXEC's replies, one per command. Errors of single commands inside
    /// EXEC's array are returned as [`Reply::Error`] items for the caller to judge; a
    /// transaction refused whole (EXECABORT) is an error naming the command refused at queue
    /// time.
    pub fn transaction(
        &mut self,
        slot: u16,
        db: u32,
        commands: &[Vec<Bytes>],
    ) -> Result<Vec<Reply>, ClusterError> {
        let mut all = Vec::with_capacity(commands.len() + 2);
        all.push(vec![Bytes::from_static(b"MULTI")]);
        all.extend(commands.iter().cloned());
        all.push(vec![Bytes::from_static(b"EXEC")]);
        let mut replies = self.call_in_slot(slot, db, &all)?;
        let node = self.owner(slot).unwrap_or_default();
        let exec = replies.pop();
        let refused = |command: String, reply: &[u8]| ClusterError::Refused {
            node: node.clone(),
            slot: Some(slot),
            command,
            reply: String::from_utf8_lossy(reply).into_owned(),
        };
        match exec {
            Some(Reply::Array(Some(items))) if items.len() == commands.len() => Ok(items),
            Some(Reply::Error(e)) => {
                // The cause is in the reply to the command refused at queue time.
                for (i, r) in replies.iter().enumerate() {
                    if let Reply::Error(q) = r {
                        let what = if i == 0 {
                            "MULTI".to_string()
                        } else {
                            describe(&commands[i - 1..i])
                        };
                        return Err(refused(what, q));
                    }
                }
                Err(refused(format!("EXEC of {}", describe(commands)), &e))
            }
            other => Err(ClusterError::Unexpected {
                node,
                slot: Some(slot),
                command: format!("EXEC of {}", describe(commands)),
                reply: format!("{other:?}"),
            }),
        }
    }

    /// One command on the master of `key`'s slot (see [`Self::call_in_slot`] for when it is
    /// resent).
    pub fn call_key(&mut self, db: u32, key: &[u8], args: &[Bytes]) -> Result<Reply, ClusterError> {
        let slot = key_slot(key);
        let mut replies = self.call_in_slot(slot, db, &[args.to_vec()])?;
        replies.pop().ok_or_else(|| ClusterError::Unexpected {
            node: self.owner(slot).unwrap_or_default(),
            slot: Some(slot),
            command: describe(&[args.to_vec()]),
            reply: "no reply".into(),
        })
    }

    /// Run `args` (a keyless command: FLUSHALL, SCRIPT LOAD, FUNCTION LOAD) once on every
    /// online master, in database `db`. A node that answers READONLY (or MOVED, or is gone)
    /// is no master anymore: the map is read again and the masters not done yet are asked,
    /// the new ones included. Like [`Self::call_in_slot`], a step is resent after a
    /// connection error, so `args` must be safe to run twice on a node.
    pub fn call_on_every_master(&mut self, db: u32, args: &[Bytes]) -> Result<(), ClusterError> {
        let commands = [args.to_vec()];
        let mut done: Vec<String> = Vec::new();
        let mut retry = Retry::new();
        loop {
            let masters = self.masters();
            let Some(addr) = masters.iter().map(Node::addr).find(|a| !done.contains(a)) else {
                return Ok(());
            };
            retry.attempts += 1;
            let hop = Hop {
                addr: addr.clone(),
                asking: false,
            };
            match self.send(&hop, db, &commands) {
                Ok(replies) => match replies.first() {
                    Some(reply) if Redirect::of(reply).is_some() => {
                        if let Some(kind) = Redirect::of(reply).and_then(|r| r.kind()) {
                            count_redirect(&addr, kind);
                        }
                        retry.last = format!("{addr} answered -{}", text_of(reply));
                        self.wait_and_refresh(&mut retry, None, &commands, &addr, true)?;
                    }
                    Some(Reply::Error(e)) => {
                        return Err(ClusterError::Refused {
                            node: addr,
                            slot: None,
                            command: describe(&commands),
                            reply: String::from_utf8_lossy(e).into_owned(),
                        })
                    }
                    Some(_) => {
                        done.push(addr);
                        retry = Retry::new();
                    }
                    None => return Err(self.no_reply(&addr, None, &commands)),
                },
                Err(SendError::Refused(reply)) => {
                    return Err(ClusterError::Refused {
                        node: addr,
                        slot: None,
                        command: describe(&commands),
                        reply,
                    })
                }
                Err(SendError::Io(e)) => {
                    retry.last = e;
                    self.wait_and_refresh(&mut retry, None, &commands, &addr, true)?;
                }
            }
        }
    }

    fn no_reply(&self, node: &str, slot: Option<u16>, commands: &[Vec<Bytes>]) -> ClusterError {
        ClusterError::Unexpected {
            node: node.to_string(),
            slot,
            command: describe(commands),
            reply: "no reply".into(),
        }
    }

    /// GET each of `keys` in database 0 (records, markers), in order: one pipeline per
    /// master by the map; a key whose reply is a redirection, or whose node did not answer,
    /// is asked again alone through [`Self::call_key`], which follows it.
    pub fn get_many_db0(&mut self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ClusterError> {
        let mut out: Vec<Option<Option<Bytes>>> = vec![None; keys.len()];
        let mut by_node: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            if let Some(addr) = self.owner(key_slot(k.as_bytes())) {
                by_node.entry(addr).or_default().push(i);
            }
        }
        for (addr, idx) in by_node {
            let commands: Vec<Vec<Bytes>> = idx.iter().map(|&i| get_command(&keys[i])).collect();
            let hop = Hop {
                addr: addr.clone(),
                asking: false,
            };
            // A failed pipeline leaves its keys for the one-by-one pass below.
            let Ok(replies) = self.send(&hop, 0, &commands) else {
                continue;
            };
            for (&i, reply) in idx.iter().zip(replies) {
                if Redirect::of(&reply).is_none() {
                    out[i] = Some(bulk_value(reply, &addr, &keys[i])?);
                }
            }
        }
        let mut values = Vec::with_capacity(keys.len());
        for (i, v) in out.into_iter().enumerate() {
            match v {
                Some(v) => values.push(v),
                None => {
                    let key = &keys[i];
                    let reply = self.call_key(0, key.as_bytes(), &get_command(key))?;
                    let node = self.owner(key_slot(key.as_bytes())).unwrap_or_default();
                    values.push(bulk_value(reply, &node, key)?);
                }
            }
        }
        Ok(values)
    }

    /// One SCAN step on `node` in database `db`: the next cursor (0 when done) and the keys
    /// (matching `pattern` when given). Only that node's keys: a master's keys are the keys
    /// of its slots. Retried after connection errors within the budget; keys that migrate
    /// between nodes during a scan may be seen twice or not at all.
    pub fn scan_master(
        &mut self,
        node: &Node,
        db: u32,
        cursor: u64,
        pattern: Option<&[u8]>,
    ) -> Result<(u64, Vec<Bytes>), ClusterError> {
        let addr = node.addr();
        let mut cmd = vec![Bytes::from_static(b"SCAN"), Bytes::from(cursor.to_string())];
        if let Some(p) = pattern {
            cmd.push(Bytes::from_static(b"MATCH"));
            cmd.push(Bytes::copy_from_slice(p));
        }
        cmd.push(Bytes::from_static(b"COUNT"));
        cmd.push(Bytes::from_static(SCAN_COUNT.as_bytes()));
        let commands = [cmd];
        let mut retry = Retry::new();
        let hop = Hop {
            addr: addr.clone(),
            asking: false,
        };
        let reply = loop {
            retry.attempts += 1;
            match self.send(&hop, db, &commands) {
                Ok(mut r) => {
                    break r
                        .pop()
                        .ok_or_else(|| self.no_reply(&addr, None, &commands))?
                }
                Err(SendError::Refused(reply)) => {
                    return Err(ClusterError::Refused {
                        node: addr,
                        slot: None,
                        command: describe(&commands),
                        reply,
                    })
                }
                Err(SendError::Io(e)) => {
                    retry.last = e;
                    self.wait_and_refresh(&mut retry, None, &commands, &addr, false)?;
                }
            }
        };
        parse_scan(reply).ok_or_else(|| ClusterError::Unexpected {
            node: addr,
            slot: None,
            command: describe(&commands),
            reply: "not a [cursor, keys] array".into(),
        })
    }

    /// Every key of every online master in database `db` (matching `pattern`), one SCAN
    /// step at a time: items are `(node, keys)` batches, or the error that ended the scan.
    pub fn scan_all(&mut self, db: u32, pattern: Option<Vec<u8>>) -> MasterScan<'_> {
        let masters = self.masters();
        MasterScan {
            client: self,
            masters,
            at: 0,
            cursor: 0,
            db,
            pattern,
            failed: false,
        }
    }
}

/// The address a redirection names (`host:port`, as the node wrote it), made usable and
/// written as [`Node::addr`] writes it (brackets around IPv6), so that it finds the same
/// connection: an empty host means "the host you asked, this port"; `?` (hostname preferred
/// but none set) is looked up by port among `nodes`.
fn redirect_addr(named: &str, asked: &str, nodes: &[Node]) -> String {
    let Some((host, port)) = named.rsplit_once(':') else {
        return named.to_string();
    };
    let Ok(port) = port.parse::<u16>() else {
        return named.to_string();
    };
    let asked_host = asked
        .rsplit_once(':')
        .map_or(asked, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let host = match host {
        "" => asked_host,
        "?" => match nodes.iter().filter(|n| n.port == port).collect::<Vec<_>>()[..] {
            [one] => one.host.as_str(),
            _ => asked_host,
        },
        h => h.trim_start_matches('[').trim_end_matches(']'),
    };
    Endpoint::new(host, port).to_string()
}

/// `redis_relay_cluster_redirects_total{node,kind}` + 1.
fn count_redirect(node: &str, kind: &'static str) {
    metrics::counter!(
        "redis_relay_cluster_redirects_total",
        "node" => node.to_string(),
        "kind" => kind
    )
    .increment(1);
}

/// The text of a reply, for messages.
fn text_of(reply: &Reply) -> String {
    reply.as_text().unwrap_or_else(|| format!("{reply:?}"))
}

/// Write `out` and read `n` replies.
fn exchange(client: &mut Client, out: &[u8], n: usize) -> std::io::Result<Vec<Reply>> {
    use std::io::Write;
    client.stream.write_all(out)?;
    (0..n).map(|_| client.read_reply()).collect()
}

/// A short description of a batch for messages: the first command names and first keys.
pub(crate) fn describe(commands: &[Vec<Bytes>]) -> String {
    let one = |c: &Vec<Bytes>| {
        let mut s: String = c
            .iter()
            .take(2)
            .map(|a| String::from_utf8_lossy(&a[..a.len().min(48)]).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        if c.len() > 2 {
            s.push_str(" ...");
        }
        s
    };
    let shown: Vec<String> = commands.iter().take(3).map(one).collect();
    match commands.len() {
        0 => "no command".into(),
        1 => shown.join(""),
        n => format!("{} (batch of {n} commands)", shown.join("; ")),
    }
}

/// `GET key`.
fn get_command(key: &str) -> Vec<Bytes> {
    vec![
        Bytes::from_static(b"GET"),
        Bytes::copy_from_slice(key.as_bytes()),
    ]
}

/// A GET reply as a value; an error reply (WRONGTYPE) or another shape is an error.
fn bulk_value(reply: Reply, node: &str, key: &str) -> Result<Option<Bytes>, ClusterError> {
    let slot = Some(key_slot(key.as_bytes()));
    match reply {
        Reply::Bulk(v) => Ok(v),
        Reply::Error(e) => Err(ClusterError::Refused {
            node: node.to_string(),
            slot,
            command: format!("GET {key}"),
            reply: String::from_utf8_lossy(&e).into_owned(),
        }),
        other => Err(ClusterError::Unexpected {
            node: node.to_string(),
            slot,
            command: format!("GET {key}"),
            reply: format!("{other:?}"),
        }),
    }
}

/// `[cursor, [key...]]`.
fn parse_scan(reply: Reply) -> Option<(u64, Vec<Bytes>)> {
    let Reply::Array(Some(mut items)) = reply else {
        return None;
    };
    if items.len() != 2 {
        return None;
    }
    let keys = items.pop()?;
    let cursor = items.pop()?.as_text()?.parse().ok()?;
    let Reply::Array(Some(keys)) = keys else {
        return None;
    };
    let keys = keys
        .into_iter()
        .map(|k| match k {
            Reply::Bulk(Some(b)) => Some(b),
            _ => None,
        })
        .collect::<Option<Vec<Bytes>>>()?;
    Some((cursor, keys))
}

/// The SCAN of every master ([`ClusterClient::scan_all`]).
pub struct MasterScan<'a> {
    client: &'a mut ClusterClient,
    masters: Vec<Node>,
    at: usize,
    cursor: u64,
    db: u32,
    pattern: Option<Vec<u8>>,
    failed: bool,
}

impl Iterator for MasterScan<'_> {
    type Item = Result<(Node, Vec<Bytes>), ClusterError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let node = self.masters.get(self.at)?.clone();
        let step = self
            .client
            .scan_master(&node, self.db, self.cursor, self.pattern.as_deref());
        match step {
            Ok((cursor, keys)) => {
                self.cursor = cursor;
                if cursor == 0 {
                    self.at += 1;
                }
                Some(Ok((node, keys)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::topology::{Health, Role};
    use super::*;

    fn err(s: &str) -> Reply {
        Reply::Error(Bytes::from(s.to_string()))
    }

    #[test]
    fn redirections_are_read_from_error_replies() {
        let moved = err("MOVED 3999 127.0.0.1:6381");
        assert_eq!(
            Redirect::of(&moved),
            Some(Redirect::Moved("127.0.0.1:6381".into()))
        );
        assert_eq!(
            Redirect::of(&err("ASK 3999 10.0.0.2:7000")),
            Some(Redirect::Ask("10.0.0.2:7000".into()))
        );
        let tryagain = err("TRYAGAIN Multiple keys request during rehashing of slot");
        assert_eq!(Redirect::of(&tryagain), Some(Redirect::TryAgain));
        let down = err("CLUSTERDOWN Hash slot not served");
        assert_eq!(Redirect::of(&down), Some(Redirect::ClusterDown));
        let readonly = err("READONLY You can't write against a read only replica.");
        assert_eq!(Redirect::of(&readonly), Some(Redirect::Transient));
        assert_eq!(Redirect::of(&err("EXECABORT Transaction discarded")), None);
        assert_eq!(Redirect::of(&err("WRONGTYPE Operation")), None);
        assert_eq!(
            Redirect::of(&Reply::Simple(Bytes::from_static(b"MOVED"))),
            None
        );
        // A truncated one names no address rather than panicking.
        assert_eq!(
            Redirect::of(&err("MOVED")),
            Some(Redirect::Moved(String::new()))
        );
    }

    #[test]
    fn redirect_addresses_fill_in_unknown_endpoints() {
        let node = Node {
            id: "x".into(),
            host: "10.0.0.9".into(),
            port: 7002,
            role: Role::Master,
            health: Health::Online,
        };
        let nodes = [node];
        let asked = "10.0.0.1:7000";
        assert_eq!(
            redirect_addr("10.0.0.3:7001", asked, &nodes),
            "10.0.0.3:7001"
        );
        assert_eq!(redirect_addr(":7001", asked, &nodes), "10.0.0.1:7001");
        assert_eq!(redirect_addr("?:7002", asked, &nodes), "10.0.0.9:7002");
        assert_eq!(redirect_addr("?:7005", asked, &nodes), "10.0.0.1:7005");
        assert_eq!(redirect_addr("::1:7001", asked, &nodes), "[::1]:7001");
        assert_eq!(redirect_addr(":7001", "[::1]:7000", &nodes), "[::1]:7001");
        assert_eq!(redirect_addr("garbage", asked, &nodes), "garbage");
    }

    #[test]
    fn batches_are_described_shortly_and_scans_parsed() {
        let c = |a: &[&str]| {
            a.iter()
                .map(|s| Bytes::from(s.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(describe(&[c(&["GET", "k"])]), "GET k");
        let d = describe(&[
            c(&["MULTI"]),
            c(&["SET", "k", "v"]),
            c(&["EXEC"]),
            c(&["PING"]),
        ]);
        assert_eq!(d, "MULTI; SET k ...; EXEC (batch of 4 commands)");
        assert_eq!(describe(&[]), "no command");
        let scan = Reply::Array(Some(vec![
            Reply::Bulk(Some(Bytes::from_static(b"17"))),
            Reply::Array(Some(vec![Reply::Bulk(Some(Bytes::from_static(b"a")))])),
        ]));
        assert_eq!(parse_scan(scan), Some((17, vec![Bytes::from_static(b"a")])));
        assert_eq!(parse_scan(Reply::Array(Some(vec![]))), None);
        assert_eq!(parse_scan(err("ERR")), None);
    }
}
