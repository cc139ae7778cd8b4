//! The writer pool of a Redis Cluster target: slot-partitioned, exactly-once per slot.
//!
//! The pipeline sees one writer per hash slot ([`SLOTS`] lanes: [`Writers::slotted`]); each
//! batch holds one slot's commands, and a batch that needs its record carries that slot's
//! record key (hash-tagged into the slot), so batch and record run in one MULTI/EXEC on the
//! slot's master and migrate or fail over together. Lanes are served by `--writers` threads
//! (slot `s` by thread `s % writers`, [`super::lane`]), each with its own connection to every
//! master it writes to.
//!
//! Commands whose keys span slots, keyless commands for every master and the reading of the
//! records go through one [`ClusterClient`] (rare, blocking, redirect-following).

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{bounded, Sender};
use parking_lot::{Mutex, RwLock};

use super::client::{ClusterClient, ClusterError};
use super::lane::{Job, Lane};
use super::topology::{SlotMap, TopologyError};
use super::{slot_tag, SLOTS};
use crate::batch::{record, Batch, CrossSlot};
use crate::endpoint::Endpoint;
use crate::resp::client::{Client, ClientError};
use crate::resp::Transport;
use crate::target::writer::{join_writers, PoolError, PoolState, WriterFailure, WriterOptions};
use crate::target::Writers;

/// The slot map is read again after this long even without a redirection.
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// Redirections of many batches at once refresh the map once.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);

/// Why the cluster writers could not start (each names the node or seed).
#[derive(Debug, thiserror::Error)]
pub enum ClusterStartError {
    #[error("cluster target: {0}")]
    Topology(#[from] TopologyError),
    /// A master refused the connection or the login: an error now, not a retry loop.
    #[error("cluster target master: {0}")]
    Connect(#[from] ClientError),
    #[error("{0}")]
    Client(#[from] ClusterError),
}

/// What the lanes share: the slot map, the seeds, the pool's state.
pub(super) struct Shared {
    pub seeds: Vec<Endpoint>,
    pub opts: WriterOptions,
    pub state: Arc<PoolState>,
    map: RwLock<Arc<SlotMap>>,
    refreshed: Mutex<Instant>,
    /// Every lane's open sockets (to abort), by (lane, node address).
    sockets: Mutex<HashMap<(usize, String), TcpStream>>,
    /// Per lane: slots waiting for a redirection, a migration or a node to come back.
    pub waiting: Vec<AtomicUsize>,
}

impl Shared {
    pub fn map(&self) -> Arc<SlotMap> {
        self.map.read().clone()
    }

    /// Read the slot map again (from the seeds and the masters known), at most once per
    /// [`MIN_REFRESH_GAP`]; on failure the old map stays (the next redirection tries again).
    pub fn refresh(&self, why: &str) {
        {
            let mut at = self.refreshed.lock();
            if at.elapsed() < MIN_REFRESH_GAP {
                return;
            }
            *at = Instant::now();
        }
        let mut seeds = self.seeds.clone();
        seeds.extend(
            self.map()
                .masters()
                .iter()
                .map(|n| n.endpoint(&self.seeds[0])),
        );
        metrics::counter!("redis_relay_cluster_topology_refreshes_total").increment(1);
        match SlotMap::discover(&seeds, self.opts.connect_timeout) {
            Ok(map) => *self.map.write() = Arc::new(map),
            Err(e) => {
                tracing::warn!("cluster target: reading the slot map after {why} failed: {e}")
            }
        }
    }

    /// Refresh when the map is older than [`REFRESH_EVERY`].
    pub fn refresh_if_old(&self) {
        if self.refreshed.lock().elapsed() >= REFRESH_EVERY {
            self.refresh("timer");
        }
    }

    /// The node at `addr` (`host:port`) with the seeds' login.
    pub fn endpoint(&self, addr: &str) -> Endpoint {
        let (host, port) = split_addr(addr);
        let mut ep = self.seeds[0].clone();
        ep.host = host;
        ep.port = port;
        ep.db = None;
        ep
    }

    pub fn register(&self, lane: usize, addr: &str, s: &Transport) {
        if let Ok(c) = s.tcp().try_clone() {
            self.sockets.lock().insert((lane, addr.to_string()), c);
        }
    }

    pub fn unregister(&self, lane: usize, addr: &str) {
        self.sockets.lock().remove(&(lane, addr.to_string()));
    }
}

/// `host:port` (or `[v6]:port`) split; a missing port is 0 (the connection then fails and
/// names it).
pub(super) fn split_addr(addr: &str) -> (String, u16) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse().unwrap_or(0),
        ),
        None => (addr.to_string(), 0),
    }
}

/// The running pool. [`ClusterPool::finish`] closes the lanes' inputs and waits for them.
pub struct ClusterPool {
    senders: Vec<Sender<Job>>,
    handles: Vec<JoinHandle<()>>,
    pub state: Arc<PoolState>,
    shared: Arc<Shared>,
    client: Arc<Mutex<ClusterClient>>,
}

impl ClusterPool {
    /// Read the slot map from `seeds`, connect to every master once (a wrong address or
    /// password is an error now) and start `opts.writers` lane threads.
    pub fn start(
        seeds: &[Endpoint],
        opts: &WriterOptions,
    ) -> Result<ClusterPool, ClusterStartError> {
        let map = SlotMap::discover(seeds, opts.connect_timeout)?;
        for m in map.masters() {
            Client::connect(&m.endpoint(&seeds[0]), opts.connect_timeout)?;
        }
        let uncovered = map.uncovered_slots();
        if !uncovered.is_empty() {
            tracing::warn!(
                ?uncovered,
                "cluster target: slots without an online master; their batches wait"
            );
        }
        let client = ClusterClient::connect(seeds, opts.connect_timeout)?;
        let n = opts.writers.max(1);
        let state = Arc::new(PoolState::default());
        let shared = Arc::new(Shared {
            seeds: seeds.to_vec(),
            opts: opts.clone(),
            state: state.clone(),
            map: RwLock::new(Arc::new(map)),
            refreshed: Mutex::new(Instant::now()),
            sockets: Mutex::new(HashMap::new()),
            waiting: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        });
        let mut senders = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for t in 0..n {
            let (tx, rx) = bounded::<Job>(opts.queue * 16);
            senders.push(tx);
            let lane = Lane::new(t, rx, shared.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("cluster-writer-{t}"))
                    .spawn(move || lane.run())
                    .expect("spawn cluster writer thread"),
            );
        }
        Ok(ClusterPool {
            senders,
            handles,
            state,
            shared,
            client: Arc::new(Mutex::new(client)),
        })
    }

    /// A cloneable handle for the dispatchers.
    pub fn handle(&self) -> ClusterHandle {
        ClusterHandle {
            senders: self.senders.clone(),
            state: self.state.clone(),
            client: self.client.clone(),
        }
    }

    /// Close the inputs and wait for every lane to drain and stop.
    pub fn finish(self) -> Result<(), PoolError> {
        drop(self.senders);
        join_writers(self.handles, &self.state)
    }

    /// Abort: close every socket so that blocked lanes return.
    pub fn abort(&self) {
        self.state.fail(WriterFailure::Aborted);
        for s in self.shared.sockets.lock().values() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// The pipeline's view of the cluster pool.
#[derive(Clone)]
pub struct ClusterHandle {
    senders: Vec<Sender<Job>>,
    pub state: Arc<PoolState>,
    client: Arc<Mutex<ClusterClient>>,
}

impl ClusterHandle {
    /// A failure of the client's rare operations fails the pool: the unit was not applied,
    /// and nothing after it may be.
    fn fail(&self, what: &str, e: ClusterError) -> PoolError {
        let f = WriterFailure::Cluster(format!("{what}: {e}"));
        self.state.fail(f.clone());
        PoolError::Failed(self.state.error().unwrap_or(f))
    }
}

impl Writers for ClusterHandle {
    fn writers(&self) -> usize {
        SLOTS
    }

    fn send(&self, w: usize, batch: Batch) -> Result<(), PoolError> {
        let lane = w % self.senders.len();
        let mut job = Job {
            slot: w as u16,
            batch,
        };
        loop {
            if let Some(e) = self.state.error() {
                return Err(PoolError::Failed(e));
            }
            match self.senders[lane].send_timeout(job, Duration::from_millis(200)) {
                Ok(()) => return Ok(()),
                Err(crossbeam_channel::SendTimeoutError::Timeout(j)) => job = j,
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => {
                    return Err(self
                        .state
                        .error()
                        .map_or(PoolError::Stopped { writer: lane }, PoolError::Failed))
                }
            }
        }
    }

    fn failure(&self) -> Option<WriterFailure> {
        self.state.error()
    }

    fn read_db0(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, ClientError> {
        self.client
            .lock()
            .get_many_db0(keys)
            .map_err(|e| ClientError::Io {
                target: "cluster".into(),
                what: "reading the relay's records",
                cause: std::io::Error::other(e.to_string()),
            })
    }

    fn slotted(&self) -> bool {
        true
    }

    fn record_key(&self, prefix: &str, source: &str, w: usize) -> String {
        let slot = w as u16;
        record::slot_key(prefix, source, slot, slot_tag(slot))
    }

    fn cross_slot(&self, unit: CrossSlot) -> Result<(), PoolError> {
        let started = Instant::now();
        let r = super::cross_slot::run(&mut self.client.lock(), &unit);
        metrics::histogram!("redis_relay_cluster_cross_slot_seconds")
            .record(started.elapsed().as_secs_f64());
        r.map(|_| ())
            .map_err(|e| self.fail(&format!("cross-slot unit at offset {}", unit.end), e))
    }

    fn every_master(&self, db: u32, commands: Vec<Vec<Bytes>>) -> Result<(), PoolError> {
        let mut client = self.client.lock();
        for c in &commands {
            client.call_on_every_master(db, c).map_err(|e| {
                let name = String::from_utf8_lossy(c.first().map_or(&b""[..], |b| b));
                self.fail(&format!("{name} on every master"), e)
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(split_addr("127.0.0.1:7000"), ("127.0.0.1".into(), 7000));
        assert_eq!(split_addr("[::1]:7001"), ("::1".into(), 7001));
        assert_eq!(split_addr("nohost"), ("nohost".into(), 0));
    }
}
