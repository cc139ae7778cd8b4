//! The relay as a library: configure with [`RelayBuilder`], run with [`RelayBuilder::start`],
//! watch and stop through the returned [`RelayHandle`].
//!
//! ```no_run
//! use redis_relay::endpoint::Endpoint;
//! use redis_relay::relay::RelayBuilder;
//!
//! let handle = RelayBuilder::new()
//!     .source(Endpoint::parse("redis://10.0.0.1:6379").unwrap())
//!     .target(Endpoint::parse("redis://127.0.0.1:6380").unwrap())
//!     .state_dir("/var/lib/redis-relay")
//!     .start()
//!     .unwrap();
//! for s in handle.status() {
//!     println!("{}: {} lag {} bytes", s.source, s.state, s.lag_bytes);
//! }
//! handle.shutdown(std::time::Duration::from_secs(10)).unwrap();
//! ```
//!
//! Each source gets a link task (the fake replica, on the relay's own small tokio runtime)
//! that only reads the socket and spools, and a loop thread ([`crate::pipeline::source_loop`])
//! that parses, routes and tracks offsets. The writers are shared by all sources.
//!
//! Owns: the wiring (which link feeds which spool, which loop writes through which pool), the
//! handle, the status and the metrics refresh. Holds no logic of the data path itself: that
//! lives in the stages it connects.

mod backlog;
pub mod error;
pub mod lease;
mod run;
pub mod sampler;
mod spool_sink;
pub mod state_lock;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use crate::pipeline::source_loop::{ApplyError, EventSink, RelayEvent, SinkError};
pub use error::{RelayError, StartError};
pub use run::run_until_signal;
pub use sampler::{SourceView, SyncState};

use crate::batch::SourceTracker;
use crate::endpoint::Endpoint;
use crate::pipeline::checkpoint;
use crate::pipeline::checkpoint::Checkpoint;
use crate::pipeline::source_loop::{
    self, AckPosition, LoopFigures, LossPolicy, Output, SinkOutput, SourceCtx, TargetGuard,
    TargetOutput,
};
use crate::pipeline::stream_apply::{format_stamp, StreamOptions};
use crate::pipeline::{ApplyOptions, Dispatcher};
use crate::rdb::ParseOptions;
use crate::resp::Client;
use crate::source::topology::KeyOwner;
use crate::source::{LinkConfig, LinkState, SourceProgress};
use crate::spool::{Spool, SpoolOptions};
use crate::target::cluster::TargetKind;
use crate::target::deletion::Authority;
use crate::target::{TargetInfo, TargetPool, WriterOptions};

/// Everything a relay needs; built by [`RelayBuilder`].
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub sources: Vec<Endpoint>,
    pub target: Option<Endpoint>,
    /// More addresses of a cluster target, tried after `target` (seeds).
    pub target_seeds: Vec<Endpoint>,
    /// `Some` forces what the target is; `None` detects it (`INFO cluster`).
    pub target_kind: Option<TargetKind>,
    pub state_dir: PathBuf,
    pub writers: WriterOptions,
    pub spool: SpoolOptions,
    pub stream: StreamOptions,
    /// Values bigger than this are written as chunked commands (never one RESTORE).
    pub big_value_bytes: usize,
    /// Use RESTORE when the target's RDB version allows it.
    pub use_restore: bool,
    /// Announced to the masters with `REPLCONF listening-port` (see docs/guarantees.md: Sentinel).
    pub listening_port: u16,
    pub repl_timeout: Duration,
    /// Write `SET <prefix>heartbeat:<source> <unix ms>` on each source this often (a normal
    /// client connection) and measure the lag in seconds when it comes back in the stream.
    pub heartbeat: Option<Duration>,
    /// Who else writes into the target: decides which keys the relay may ever delete.
    pub ownership: Ownership,
    /// What to do when the target lost what it acknowledged (`--on-target-loss`).
    pub on_target_loss: LossPolicy,
    /// TTL of the writer leases on the target (see [`lease`]).
    pub lease_ttl: Duration,
}

/// Who writes into the target (`--target-owner`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetOwner {
    /// Other writers may exist: only keys proven to be the relay's are deleted.
    #[default]
    Shared,
    /// The relay (all its sources) is the target's only writer.
    Exclusive,
}

/// What the relay knows of the target's other writers.
#[derive(Debug, Clone, Default)]
pub struct Ownership {
    /// Masters outside this relay that write into the target (pool peers, `--peer`).
    pub peers: Vec<Endpoint>,
    /// The sources and peers are every writer (a whole Twemproxy pool).
    pub pool_known: bool,
    /// Where a key belongs (nutcracker's placement): which peer to ask first.
    pub owner: Option<KeyOwner>,
    pub target_owner: TargetOwner,
}

impl Ownership {
    /// The authority a deletion on behalf of `source` needs, among `all_sources` of the relay.
    pub fn authority(&self, source: &Endpoint, all_sources: &[Endpoint]) -> Authority {
        let mut peers: Vec<Endpoint> = all_sources
            .iter()
            .filter(|o| *o != source)
            .cloned()
            .collect();
        for p in &self.peers {
            if !peers.contains(p) {
                peers.push(p.clone());
            }
        }
        match (peers.is_empty(), self.target_owner, self.pool_known) {
            (true, TargetOwner::Exclusive, _) => Authority::Exclusive,
            (true, TargetOwner::Shared, false) => Authority::Unknown,
            _ => Authority::Peers(peers),
        }
    }
}

/// Makes the sink of each source (called with its `host:port`).
type SinkFactory = Box<dyn FnMut(&str) -> Box<dyn EventSink> + Send>;

/// Builder of a relay.
pub struct RelayBuilder {
    cfg: RelayConfig,
    sink_factory: Option<SinkFactory>,
}

impl Default for RelayBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl RelayBuilder {
    pub fn new() -> Self {
        RelayBuilder {
            cfg: RelayConfig {
                sources: Vec::new(),
                target: None,
                target_seeds: Vec::new(),
                target_kind: None,
                state_dir: PathBuf::from("redis-relay-state"),
                writers: WriterOptions::default(),
                spool: SpoolOptions::default(),
                stream: StreamOptions::default(),
                big_value_bytes: ParseOptions::default().big_value_bytes,
                use_restore: true,
                listening_port: 0,
                repl_timeout: Duration::from_secs(60),
                heartbeat: None,
                ownership: Ownership::default(),
                on_target_loss: LossPolicy::default(),
                lease_ttl: DEFAULT_LEASE_TTL,
            },
            sink_factory: None,
        }
    }

    pub fn from_config(cfg: RelayConfig) -> Self {
        RelayBuilder {
            cfg,
            sink_factory: None,
        }
    }

    pub fn source(mut self, ep: Endpoint) -> Self {
        self.cfg.sources.push(ep);
        self
    }

    pub fn sources(mut self, eps: impl IntoIterator<Item = Endpoint>) -> Self {
        self.cfg.sources.extend(eps);
        self
    }

    pub fn target(mut self, ep: Endpoint) -> Self {
        self.cfg.target = Some(ep);
        self
    }

    /// More seeds of a cluster target (tried after [`Self::target`]).
    pub fn target_seeds(mut self, eps: impl IntoIterator<Item = Endpoint>) -> Self {
        self.cfg.target_seeds.extend(eps);
        self
    }

    /// Force the target's kind instead of detecting it.
    pub fn target_kind(mut self, kind: Option<TargetKind>) -> Self {
        self.cfg.target_kind = kind;
        self
    }

    pub fn state_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cfg.state_dir = dir.as_ref().to_path_buf();
        self
    }

    pub fn writers(mut self, opts: WriterOptions) -> Self {
        self.cfg.writers = opts;
        self
    }

    pub fn spool(mut self, opts: SpoolOptions) -> Self {
        self.cfg.spool = opts;
        self
    }

    pub fn stream_options(mut self, opts: StreamOptions) -> Self {
        self.cfg.stream = opts;
        self
    }

    pub fn big_value_bytes(mut self, n: usize) -> Self {
        self.cfg.big_value_bytes = n;
        self
    }

    pub fn use_restore(mut self, yes: bool) -> Self {
        self.cfg.use_restore = yes;
        self
    }

    pub fn listening_port(mut self, port: u16) -> Self {
        self.cfg.listening_port = port;
        self
    }

    pub fn repl_timeout(mut self, t: Duration) -> Self {
        self.cfg.repl_timeout = t;
        self
    }

    /// Write a heartbeat key on every source each `period` (`None`: never write to a source).
    pub fn heartbeat(mut self, period: Option<Duration>) -> Self {
        self.cfg.heartbeat = period;
        self
    }

    /// Send every source's events to a sink of your own instead of a Redis target. The
    /// factory is called once per source with its `host:port`.
    pub fn sink<F>(mut self, factory: F) -> Self
    where
        F: FnMut(&str) -> Box<dyn EventSink> + Send + 'static,
    {
        self.sink_factory = Some(Box::new(factory));
        self
    }

    /// The target's other writers (see [`Ownership`]).
    pub fn ownership(mut self, o: Ownership) -> Self {
        self.cfg.ownership = o;
        self
    }

    /// What to do when the target lost what it acknowledged.
    pub fn on_target_loss(mut self, p: LossPolicy) -> Self {
        self.cfg.on_target_loss = p;
        self
    }

    /// TTL of the writer leases on the target.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.cfg.lease_ttl = ttl;
        self
    }

    pub fn config(&self) -> &RelayConfig {
        &self.cfg
    }

    /// Connect and start everything. Fails at once when the target is unreachable or a
    /// checkpoint is unreadable; source connection problems are retried by the links.
    pub fn start(mut self) -> Result<RelayHandle, StartError> {
        let mut cfg = self.checked_config()?;
        let lock = state_lock::StateLock::acquire(&cfg.state_dir)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("relay-links")
            .enable_all()
            .build()
            .map_err(|cause| StartError::Threads {
                what: "link runtime",
                cause,
            })?;
        let (pool, apply_opts) = match (&cfg.target, &self.sink_factory) {
            (_, Some(_)) => (None, None),
            (Some(t), None) => {
                let (pool, apply) = start_target(&cfg, t)?;
                cfg.stream.target_commands = read_command_table(&cfg, t);
                cfg.stream.on_refused = cfg.writers.on_error;
                (Some(pool), Some(apply))
            }
            (None, None) => return Err(StartError::NoTarget),
        };
        let target_cluster = matches!(pool, Some(TargetPool::Cluster(_)));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stop = Arc::new(AtomicBool::new(false));
        let lease_lost = Arc::default();
        let lease_thread = match pool {
            Some(_) => Some(keep_leases(&cfg, target_cluster, &stop, &lease_lost)?),
            None => None,
        };
        let wiring = Wiring {
            cfg: &cfg,
            writers: pool.as_ref().map(|p| p.writers()).unwrap_or(1),
            pool_state: pool.as_ref().map(|p| p.state().clone()),
            target_cluster,
            stop,
            stop_rx,
        };
        let mut sources = Vec::new();
        for (i, ep) in cfg.sources.iter().enumerate() {
            let output = |tracker: &Arc<SourceTracker>, figures: &Arc<LoopFigures>| {
                let name = ep.to_string();
                match (&pool, &mut self.sink_factory, &apply_opts) {
                    (_, Some(f), _) => {
                        Box::new(SinkOutput::new(name.clone(), f(&name), figures.clone()))
                            as Box<dyn Output>
                    }
                    (Some(p), None, Some(apply)) => Box::new(TargetOutput::new(
                        name,
                        Dispatcher::new(p.handle(), tracker.clone()),
                        apply.clone(),
                    )),
                    _ => unreachable!("a target has a pool and apply options"),
                }
            };
            sources.push(wiring.source(i, ep, apply_opts.as_ref(), &runtime, output)?);
        }
        let handle = RelayHandle {
            inner: Arc::new(Inner {
                sources,
                pool: Mutex::new(pool),
                stop: wiring.stop.clone(),
                stop_tx,
                runtime: Mutex::new(Some(runtime)),
                started: Instant::now(),
                sampler: Mutex::new(sampler::Sampler::default()),
                lease_lost,
                lease_thread: Mutex::new(lease_thread),
                _lock: lock,
            }),
        };
        handle.spawn_metrics_updater();
        backlog::spawn(Arc::downgrade(&handle.inner), cfg.sources.clone());
        Ok(handle)
    }

    /// The configuration checked (sources given once each, the state dir there), with what
    /// follows from it.
    fn checked_config(&self) -> Result<RelayConfig, StartError> {
        let mut cfg = self.cfg.clone();
        if cfg.sources.is_empty() {
            return Err(StartError::NoSource);
        }
        // A FLUSHDB/FLUSHALL of a source is forwarded as is only when that source is the
        // target's only writer; otherwise it becomes a deletion of the keys proven its own.
        cfg.stream.shared_target = cfg.sources.len() > 1
            || cfg.ownership.target_owner != TargetOwner::Exclusive
            || !cfg.stream.filter.merged().is_empty();
        let mut names = std::collections::HashSet::new();
        for s in &cfg.sources {
            if !names.insert(s.to_string()) {
                return Err(StartError::Duplicate(s.to_string()));
            }
        }
        std::fs::create_dir_all(&cfg.state_dir).map_err(|cause| StartError::StateDir {
            dir: cfg.state_dir.clone(),
            cause,
        })?;
        Ok(cfg)
    }
}

/// Connect to the target, learn what it is and accepts, and start its writers.
fn start_target(cfg: &RelayConfig, t: &Endpoint) -> Result<(TargetPool, ApplyOptions), StartError> {
    let mut seeds = vec![t.clone()];
    seeds.extend(cfg.target_seeds.iter().cloned());
    let info = TargetInfo::probe(&seeds, cfg.target_kind, cfg.writers.connect_timeout)?;
    tracing::info!(target = %t, version = %info.product(), rdb_version = info.rdb_version, kind = ?info.kind, "target connected");
    if info.kind == TargetKind::Cluster {
        let prefix = String::from_utf8_lossy(&cfg.stream.own_prefix);
        if prefix.contains(['{', '}']) {
            return Err(StartError::ClusterPrefix(prefix.into_owned()));
        }
    }
    let mut a = ApplyOptions::for_target(&info);
    a.use_restore = cfg.use_restore;
    a.own_prefix = cfg.stream.own_prefix.clone();
    a.filter = cfg.stream.filter.clone();
    a.on_unsupported_type = cfg.stream.on_unsupported_type;
    Ok((TargetPool::start(&seeds, info.kind, &cfg.writers)?, a))
}

/// The target's command table, to isolate the commands it refuses at queue time (see
/// [`crate::target::command_table`]); `None` (logged) when it cannot be read: such commands
/// then abort their batch transaction on the target, as before.
fn read_command_table(
    cfg: &RelayConfig,
    t: &Endpoint,
) -> Option<Arc<crate::target::command_table::CommandTable>> {
    use crate::target::command_table::CommandTable;
    let (ep, timeout) = (t.clone(), cfg.writers.connect_timeout);
    let ask = Box::new(move |name: &[u8]| {
        let mut c = Client::connect(&ep, timeout).map_err(std::io::Error::other)?;
        c.stream.set_read_timeout(Some(timeout))?;
        CommandTable::info_arity(&mut c, name)
    });
    let read = Client::connect(t, cfg.writers.connect_timeout)
        .map_err(|e| e.to_string())
        .and_then(|mut c| CommandTable::read(&mut c, Some(ask)).map_err(|e| e.to_string()));
    match read {
        Ok(Some(table)) => {
            tracing::debug!(target = %t, commands = table.len(), "target command table read");
            Some(Arc::new(table))
        }
        Ok(None) => {
            tracing::warn!(target = %t, "the target has no COMMAND: commands it refuses at queue time will abort their batch");
            None
        }
        Err(e) => {
            tracing::warn!(target = %t, "reading the target's command table failed ({e}): commands it refuses at queue time will abort their batch");
            None
        }
    }
}

/// The writer leases default TTL (`--lease-ttl`).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);

/// The control connection to the target (marker and leases).
fn control_conn(cfg: &RelayConfig, target_cluster: bool) -> crate::target::control::ControlConn {
    let mut seeds: Vec<Endpoint> = cfg.target.iter().cloned().collect();
    seeds.extend(cfg.target_seeds.iter().cloned());
    crate::target::control::ControlConn::new(seeds, target_cluster, cfg.writers.connect_timeout)
}

/// Take the writer leases of every source and keep them renewed on their own thread; an error
/// when another relay holds one.
fn keep_leases(
    cfg: &RelayConfig,
    target_cluster: bool,
    stop: &Arc<AtomicBool>,
    lost: &Arc<Mutex<Option<lease::LeaseError>>>,
) -> Result<JoinHandle<()>, StartError> {
    let mut leases = leases(cfg, target_cluster)?;
    match leases.renew() {
        Ok(()) => {}
        Err(e @ lease::LeaseError::Held { .. }) => return Err(e.into()),
        // Not held by another relay, but not written either (the target out of memory, or
        // gone): the writers wait for the target too; the keeper takes it when it can.
        Err(e) => tracing::warn!("writer lease not taken yet ({e}); retried"),
    }
    leases
        .keep(stop.clone(), Arc::clone(lost))
        .map_err(|cause| StartError::Threads {
            what: "lease thread",
            cause,
        })
}

/// The writer leases of every source on the target, under this state dir's identity.
fn leases(cfg: &RelayConfig, target_cluster: bool) -> Result<lease::Leases, StartError> {
    let id = lease::state_dir_id(&cfg.state_dir)?;
    let names: Vec<String> = cfg.sources.iter().map(|s| s.to_string()).collect();
    let identity = lease::identity(&id, &cfg.state_dir);
    Ok(lease::Leases::new(
        control_conn(cfg, target_cluster),
        &String::from_utf8_lossy(&cfg.stream.own_prefix),
        &names,
        id,
        identity,
        cfg.lease_ttl,
    ))
}

/// Who may hold a key the deletions of source `ep` consider. When `--db-map` merges
/// databases, the source itself is asked too: a FLUSHDB of its database 1 may only delete the
/// target keys that its database 0 (merged into the same target database) does not hold.
fn authority_for(cfg: &RelayConfig, ep: &Endpoint) -> Authority {
    let authority = cfg.ownership.authority(ep, &cfg.sources);
    if cfg.stream.filter.merged().is_empty() {
        return authority;
    }
    match authority {
        Authority::Peers(mut peers) => {
            peers.push(ep.clone());
            Authority::Peers(peers)
        }
        Authority::Exclusive => Authority::Peers(vec![ep.clone()]),
        Authority::Unknown => Authority::Unknown,
    }
}

/// What every source is wired with.
struct Wiring<'a> {
    cfg: &'a RelayConfig,
    writers: usize,
    /// The writers' shared state (a Redis target): their reconnects trigger a loss check.
    pool_state: Option<Arc<crate::target::writer::PoolState>>,
    target_cluster: bool,
    stop: Arc<AtomicBool>,
    stop_rx: tokio::sync::watch::Receiver<bool>,
}

impl Wiring<'_> {
    /// Wire source `i`: its checkpoint, spool, loop thread, link task and heartbeat.
    fn source(
        &self,
        i: usize,
        ep: &Endpoint,
        apply: Option<&ApplyOptions>,
        runtime: &tokio::runtime::Runtime,
        output: impl FnOnce(&Arc<SourceTracker>, &Arc<LoopFigures>) -> Box<dyn Output>,
    ) -> Result<SourceRuntime, StartError> {
        let cfg = self.cfg;
        let name = ep.to_string();
        let (resume, guard) = self.resume_point(&name, apply)?;
        let spool = Spool::new(
            &cfg.state_dir
                .join("spool")
                .join(crate::endpoint::file_stem(&name)),
            cfg.spool.clone(),
        )?;
        let progress = Arc::new(SourceProgress::new(name.clone()));
        let tracker = Arc::new(SourceTracker::new(name.clone(), i, self.writers, 0));
        let figures = Arc::new(LoopFigures::measured_by(&tracker));
        let ctx = SourceCtx {
            name: name.clone(),
            spool: spool.clone(),
            acks: progress.clone(),
            tracker: tracker.clone(),
            output: output(&tracker, &figures),
            stream_opts: StreamOptions {
                target_field_ttl: apply.is_none_or(|a| a.rewrite.field_ttl),
                target_rdb: apply.map(|a| (a.target_rdb_version, a.rewrite.clone())),
                ..cfg.stream.clone()
            },
            parse_opts: parse_options(cfg, apply),
            state_dir: cfg.state_dir.clone(),
            writers: self.writers,
            stop: self.stop.clone(),
            resume: resume.clone(),
            target: cfg.target.clone(),
            target_cluster: self.target_cluster,
            authority: authority_for(cfg, ep),
            owner: cfg
                .ownership
                .owner
                .clone()
                .map(|o| Arc::new(move |k: &[u8]| o.owner(k)) as source_loop::OwnerHint),
            figures: figures.clone(),
            guard,
        };
        let (apply, fatal) = spawn_loop(ctx)?;
        let mut link_cfg = LinkConfig::new(ep.clone());
        link_cfg.listening_port = cfg.listening_port;
        link_cfg.repl_timeout = cfg.repl_timeout;
        link_cfg.resume = resume.map(|cp| (cp.replid, cp.offset));
        let sink = spool_sink::SpoolSink {
            spool: spool.clone(),
            source: name.clone(),
        };
        let _link = runtime.spawn(crate::source::run_link(
            link_cfg,
            progress.clone(),
            sink,
            self.stop_rx.clone(),
        ));
        if let Some(period) = cfg.heartbeat {
            let key = heartbeat_key(&cfg.stream.own_prefix, Some(&name));
            spawn_heartbeat(ep.clone(), key, period, self.stop.clone())?;
        }
        Ok(SourceRuntime {
            name,
            progress,
            tracker,
            spool,
            figures,
            ingest: Mutex::new(sampler::RateWindow::default()),
            apply: Mutex::new(Some(apply)),
            fatal,
        })
    }

    /// Where source `name` resumes (its checkpoint, if the target still holds what it says),
    /// and the guard of its target (a Redis target only).
    fn resume_point(
        &self,
        name: &str,
        apply: Option<&ApplyOptions>,
    ) -> Result<(Option<Checkpoint>, Option<TargetGuard>), StartError> {
        let resume = self.checkpoint(name, apply.is_some())?;
        let mut guard = apply.map(|a| {
            let g = TargetGuard::new(
                control_conn(self.cfg, self.target_cluster),
                &String::from_utf8_lossy(&a.own_prefix),
                name,
                self.cfg.on_target_loss,
            );
            match &self.pool_state {
                Some(state) => g.watch_writers(state.clone()),
                None => g,
            }
        });
        let resume = match (resume, guard.as_mut()) {
            (Some(cp), Some(g)) => self.verify_target(cp, g)?,
            (resume, _) => resume,
        };
        Ok((resume, guard))
    }

    /// Resume from `cp` only if the target still holds what the checkpoint says it
    /// acknowledged; otherwise, as `--on-target-loss` says, forget the checkpoint (a full
    /// sync follows) or refuse to start.
    fn verify_target(
        &self,
        cp: Checkpoint,
        guard: &mut TargetGuard,
    ) -> Result<Option<Checkpoint>, StartError> {
        let name = cp.source.clone();
        let reason = match guard.verify_resume(cp.target_marker) {
            Ok(None) => return Ok(Some(cp)),
            Ok(Some(reason)) => reason,
            Err(cause) => return Err(StartError::TargetCheck { name, cause }),
        };
        metrics::counter!("redis_relay_target_loss_total", "source" => name.clone(), "reason" => reason.label())
            .increment(1);
        if guard.policy == LossPolicy::Stop {
            return Err(StartError::TargetLost {
                checkpoint: checkpoint::path_for(&self.cfg.state_dir, &name),
                name,
                reason,
            });
        }
        tracing::error!(source = %name, reason = reason.label(), "target loss: {reason}; not resuming from the checkpoint at offset {}: syncing the source again from a new snapshot (--on-target-loss resync)", cp.offset);
        checkpoint::remove(&self.cfg.state_dir, &name)
            .map_err(|cause| StartError::Checkpoint { name, cause })?;
        Ok(None)
    }

    /// The checkpoint of source `name`, if any (logged).
    fn checkpoint(&self, name: &str, to_target: bool) -> Result<Option<Checkpoint>, StartError> {
        let resume = checkpoint::load(&self.cfg.state_dir, name).map_err(|cause| {
            StartError::Checkpoint {
                name: name.to_string(),
                cause,
            }
        })?;
        if let Some(cp) = &resume {
            let writers = self.writers;
            if to_target && cp.writers != writers {
                tracing::warn!(source = %name, "the checkpoint was written with {} writers, now {writers}", cp.writers);
            }
            tracing::info!(source = %name, replid = %cp.replid, offset = cp.offset, db = cp.db, "resuming from the checkpoint");
        }
        Ok(resume)
    }
}

/// How a source's snapshot is parsed for this target.
fn parse_options(cfg: &RelayConfig, apply: Option<&ApplyOptions>) -> ParseOptions {
    ParseOptions {
        capture_raw: cfg.use_restore,
        big_value_bytes: cfg.big_value_bytes,
        undecoded_up_to_version: apply.map_or(0, |a| a.undecoded_up_to_version()),
        // The spool hands the snapshot over apart from the stream.
        read_ahead: true,
        ..ParseOptions::default()
    }
}

/// Start a source's loop on its own thread; its fatal error lands in the returned slot.
/// Where a source's loop leaves its fatal error (the loop's thread ends with it).
type FatalSlot = Arc<Mutex<Option<Arc<ApplyError>>>>;

fn spawn_loop(ctx: SourceCtx) -> Result<(JoinHandle<()>, FatalSlot), StartError> {
    let fatal: FatalSlot = Arc::default();
    let slot = fatal.clone();
    let name = ctx.name.clone();
    let handle = std::thread::Builder::new()
        .name(format!("apply-{name}"))
        .spawn(move || {
            if let Err(e) = source_loop::run(ctx) {
                tracing::error!(source = %name, "{e}");
                *slot.lock() = Some(Arc::new(e));
            }
        })
        .map_err(|cause| StartError::Threads {
            what: "source loop thread",
            cause,
        })?;
    Ok((handle, fatal))
}

/// The link reports its ACK position through the loop's [`AckPosition`].
impl AckPosition for SourceProgress {
    fn set_applied(&self, offset: u64) {
        self.set_applied_offset(offset);
    }

    fn ack_now(&self) {
        self.ack_now.notify_one();
    }

    fn full_sync_now(&self) {
        self.ask_full_sync();
    }
}

/// `<prefix>heartbeat:<host:port>`.
fn heartbeat_key(prefix: &[u8], source: Option<&String>) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(b"heartbeat:");
    k.extend_from_slice(source.map(|s| s.as_bytes()).unwrap_or_default());
    k
}

/// The heartbeat writer of one source: `SET <key> <unix ms> PX <ttl>` every `period` through
/// its own client connection (never the replication link). The key expires by itself once the
/// relay is gone (the master then replicates a DEL, which the stream apply skips as well).
fn spawn_heartbeat(
    ep: Endpoint,
    key: Vec<u8>,
    period: Duration,
    stop: Arc<AtomicBool>,
) -> Result<(), StartError> {
    let ttl_ms = (period.as_millis() as u64 * 10).max(60_000).to_string();
    std::thread::Builder::new()
        .name(format!("heartbeat-{ep}"))
        .spawn(move || {
            let mut conn: Option<Client> = None;
            let mut warned = false;
            let mut next = Instant::now();
            while !stop.load(Ordering::Acquire) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(100)));
                    continue;
                }
                next += period;
                if next < now {
                    next = now + period;
                }
                if conn.is_none() {
                    let timeout = period.clamp(Duration::from_millis(200), Duration::from_secs(5));
                    match Client::connect(&ep, timeout) {
                        Ok(c) => {
                            let t = Some(timeout.max(Duration::from_secs(2)));
                            let _ = c.stream.set_read_timeout(t);
                            let _ = c.stream.set_write_timeout(t);
                            conn = Some(c);
                        }
                        Err(e) => {
                            if !warned {
                                tracing::warn!(source = %ep, "heartbeat: cannot connect: {e}");
                                warned = true;
                            }
                            continue;
                        }
                    }
                }
                let stamp = format_stamp(crate::batch::offsets::unix_us());
                let args: [&[u8]; 5] = [b"SET", &key, stamp.as_bytes(), b"PX", ttl_ms.as_bytes()];
                let problem = match conn.as_mut().map(|c| c.call(&args)) {
                    Some(Ok(crate::resp::Reply::Error(e))) => Some(format!(
                        "the source refused the write: {}",
                        String::from_utf8_lossy(&e)
                    )),
                    Some(Ok(_)) | None => None,
                    Some(Err(e)) => {
                        conn = None;
                        Some(e.to_string())
                    }
                };
                match problem {
                    // Logged once until a heartbeat gets through again.
                    Some(p) if !warned => {
                        tracing::warn!(source = %ep, "heartbeat: {p}");
                        warned = true;
                    }
                    Some(_) => {}
                    None => warned = false,
                }
            }
        })
        .map_err(|cause| StartError::Threads {
            what: "heartbeat thread",
            cause,
        })?;
    Ok(())
}

struct SourceRuntime {
    name: String,
    progress: Arc<SourceProgress>,
    tracker: Arc<SourceTracker>,
    spool: Arc<Spool>,
    figures: Arc<LoopFigures>,
    /// Bytes received from the master (its offset) over the last seconds.
    ingest: Mutex<sampler::RateWindow>,
    apply: Mutex<Option<JoinHandle<()>>>,
    fatal: FatalSlot,
}

struct Inner {
    sources: Vec<SourceRuntime>,
    pool: Mutex<Option<TargetPool>>,
    stop: Arc<AtomicBool>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    started: Instant,
    /// The one sampler of the figures (see [`sampler`]), fed by the metrics thread.
    sampler: Mutex<sampler::Sampler>,
    /// A writer lease taken by another relay while running.
    lease_lost: Arc<Mutex<Option<lease::LeaseError>>>,
    /// Renews the leases; releases them when the relay stops.
    lease_thread: Mutex<Option<JoinHandle<()>>>,
    /// One relay per state dir: held until the relay is dropped.
    _lock: state_lock::StateLock,
}

/// Status of one source.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    pub source: String,
    pub state: LinkState,
    pub connected: bool,
    pub snapshot_done: bool,
    /// Last stream offset received from the master.
    pub master_offset: u64,
    /// Offset up to which the target acknowledged everything.
    pub applied_offset: u64,
    pub lag_bytes: u64,
    pub rdb_bytes_loaded: u64,
    pub rdb_bytes_total: Option<u64>,
    /// Keys of the current (or last) snapshot handed to the target.
    pub snapshot_keys: u64,
    /// Lag in seconds measured by the heartbeat (with [`RelayBuilder::heartbeat`] only): the
    /// time from the heartbeat's write on the source until the target acknowledged everything
    /// the source wrote before it.
    pub lag_seconds: Option<f64>,
    /// Lag in seconds estimated as `lag_bytes` over the recent rate of the master's offset
    /// (bytes per second over the last 10 s); `None` during the snapshot.
    pub lag_seconds_estimate: Option<f64>,
    /// Bytes per second the master's offset grew over the last 10 s.
    pub ingest_bytes_per_sec: Option<f64>,
    pub commands_applied: u64,
    pub target_errors: u64,
    pub spool_bytes: u64,
    /// The part of `spool_bytes` in segment files on disk.
    pub spool_disk_bytes: u64,
    pub full_syncs: u64,
    /// Target keys whose deletion waits for a peer that did not answer.
    pub deferred_deletions: u64,
    /// Age of the oldest of them, in seconds.
    pub deferred_deletion_age_seconds: Option<f64>,
    /// The fatal error that stopped the source, if any.
    pub error: Option<String>,
    /// The last error of the source (fatal, or of the link: it may have recovered since).
    pub last_error: Option<String>,
}

/// The window of the master's write rate (the lag estimate's divisor).
const INGEST_WINDOW: Duration = Duration::from_secs(10);

/// A running relay. Cheap to clone.
#[derive(Clone)]
pub struct RelayHandle {
    inner: Arc<Inner>,
}

impl RelayHandle {
    /// Status of every source.
    pub fn status(&self) -> Vec<SourceStatus> {
        self.inner
            .sources
            .iter()
            .map(|s| {
                let received = s.progress.received_offset();
                let done = s.figures.snapshot_done.load(Ordering::Acquire);
                let applied = if done { s.tracker.applied() } else { 0 };
                let lag_bytes = received.saturating_sub(applied);
                let rate = s.ingest.lock().sample(received, INGEST_WINDOW);
                let estimate = match (done, rate) {
                    (false, _) => None,
                    (true, _) if lag_bytes == 0 => Some(0.0),
                    (true, Some(r)) if r > 0.0 => Some(lag_bytes as f64 / r),
                    // Behind while the master wrote nothing for 10 s: no progress to
                    // divide by, the lag grows without bound.
                    (true, Some(_)) => Some(f64::INFINITY),
                    (true, None) => None,
                };
                let hb = s.figures.heartbeat_lag_us.load(Ordering::Relaxed);
                let last_link_error = s.progress.last_error();
                let link_error = match s.progress.state() {
                    LinkState::Failed => last_link_error.clone(),
                    _ => None,
                };
                let fatal = s.fatal.lock().as_ref().map(|e| e.to_string());
                SourceStatus {
                    source: s.name.clone(),
                    state: s.progress.state(),
                    connected: s.progress.is_connected(),
                    snapshot_done: done,
                    master_offset: received,
                    applied_offset: applied,
                    lag_bytes,
                    rdb_bytes_loaded: s.figures.rdb_bytes_loaded.load(Ordering::Relaxed),
                    rdb_bytes_total: s.progress.rdb_bytes_total(),
                    snapshot_keys: s.figures.snapshot_keys.load(Ordering::Relaxed),
                    lag_seconds: (hb != source_loop::NO_LAG).then(|| hb as f64 / 1e6),
                    lag_seconds_estimate: estimate,
                    ingest_bytes_per_sec: rate,
                    commands_applied: s.tracker.commands_applied.load(Ordering::Relaxed),
                    target_errors: s.tracker.target_errors.load(Ordering::Relaxed),
                    spool_bytes: s.spool.memory_bytes.load(Ordering::Relaxed)
                        + s.spool.disk_bytes.load(Ordering::Relaxed),
                    spool_disk_bytes: s.spool.disk_bytes.load(Ordering::Relaxed),
                    full_syncs: s.progress.full_syncs(),
                    deferred_deletions: s.figures.deferred_keys.load(Ordering::Relaxed),
                    deferred_deletion_age_seconds: match s
                        .figures
                        .deferred_since_ms
                        .load(Ordering::Relaxed)
                    {
                        0 => None,
                        since => Some(source_loop::unix_ms().saturating_sub(since) as f64 / 1000.0),
                    },
                    last_error: fatal.clone().or(last_link_error),
                    error: fatal.or(link_error),
                }
            })
            .collect()
    }

    /// Take a look through the sampler: every source's status, rates and sync state (see
    /// [`sampler`]). The metrics thread looks every 500 ms; views of other callers are the
    /// same looks, so prefer [`RelayHandle::views`].
    fn look(&self) -> Vec<SourceView> {
        let status = self.status();
        self.inner.sampler.lock().look(status)
    }

    /// The last look of the sampler (taken at most 500 ms ago while the relay runs), or a
    /// new one before the first.
    pub fn views(&self) -> Vec<SourceView> {
        let last = self.inner.sampler.lock().last();
        match last {
            Some((_, views)) => views,
            None => self.look(),
        }
    }

    /// How long ago the sampler took its last look (`None` before the first). More than a few
    /// seconds means the relay's status thread is stuck.
    pub fn last_look_age(&self) -> Option<Duration> {
        self.inner.sampler.lock().last().map(|(at, _)| at.elapsed())
    }

    /// The first fatal error of any source or of the writers, if one happened. Transient
    /// problems (a master restarting, a refused connection) are retried and are not errors.
    pub fn error(&self) -> Option<RelayError> {
        if let Some(e) = self.inner.lease_lost.lock().clone() {
            return Some(RelayError::Lease(e));
        }
        if let Some(p) = self.inner.pool.lock().as_ref() {
            if let Some(e) = p.state().error() {
                return Some(RelayError::Writers(e));
            }
        }
        self.inner.sources.iter().find_map(|s| {
            if let Some(e) = s.fatal.lock().clone() {
                return Some(RelayError::Source(e));
            }
            (s.progress.state() == LinkState::Failed).then(|| RelayError::Link {
                source_name: s.name.clone(),
                message: s
                    .progress
                    .last_error()
                    .unwrap_or_else(|| "replication link failed".into()),
            })
        })
    }

    /// Every source has its snapshot applied.
    pub fn all_snapshots_done(&self) -> bool {
        self.inner
            .sources
            .iter()
            .all(|s| s.figures.snapshot_done.load(Ordering::Acquire))
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Stop reading, let the writers drain, write the checkpoints, and stop. Returns the
    /// first fatal error, if any happened while running.
    pub fn shutdown(&self, timeout: Duration) -> Result<(), RelayError> {
        let deadline = Instant::now() + timeout;
        let inner = &self.inner;
        inner.stop.store(true, Ordering::Release);
        let _ = inner.stop_tx.send(true);
        for s in &inner.sources {
            s.spool.close();
        }
        // The apply threads hand over their batches, wait for the target and checkpoint.
        let running = || {
            inner
                .sources
                .iter()
                .any(|s| s.apply.lock().as_ref().is_some_and(|h| !h.is_finished()))
        };
        while Instant::now() < deadline && running() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut first_err = None;
        if let Some(pool) = inner.pool.lock().take() {
            if running() {
                // Abandon the writers (their sockets are closed); the checkpoints on disk
                // only cover what the target acknowledged, so nothing is lost.
                first_err = Some(RelayError::ShutdownTimeout);
                pool.abort();
            } else if let Err(e) = pool.finish() {
                first_err.get_or_insert(RelayError::Pool(e));
            }
        }
        for s in &inner.sources {
            if let Some(h) = s.apply.lock().take() {
                let _ = h.join();
            }
            if let Some(e) = s.fatal.lock().clone() {
                first_err.get_or_insert(RelayError::Source(e));
            }
        }
        if let Some(rt) = inner.runtime.lock().take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        if let Some(h) = inner.lease_thread.lock().take() {
            let _ = h.join();
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn spawn_metrics_updater(&self) {
        let weak = Arc::downgrade(&self.inner);
        let _ = std::thread::Builder::new()
            .name("relay-metrics".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(500));
                let Some(inner) = weak.upgrade() else { return };
                if inner.stop.load(Ordering::Acquire) {
                    return;
                }
                let h = RelayHandle { inner };
                for v in h.look() {
                    h.publish_metrics(&v);
                }
            });
    }

    /// Set the per-source gauges and counters of one look.
    fn publish_metrics(&self, v: &SourceView) {
        let s = &v.status;
        let l = [("source", s.source.clone())];
        metrics::gauge!("redis_relay_lag_bytes", &l).set(s.lag_bytes as f64);
        metrics::gauge!("redis_relay_applied_offset", &l).set(s.applied_offset as f64);
        metrics::gauge!("redis_relay_master_offset", &l).set(s.master_offset as f64);
        metrics::counter!("redis_relay_commands_applied_total", &l).absolute(s.commands_applied);
        metrics::gauge!("redis_relay_rdb_bytes_loaded", &l).set(s.rdb_bytes_loaded as f64);
        metrics::gauge!("redis_relay_rdb_bytes_total", &l)
            .set(s.rdb_bytes_total.unwrap_or(0) as f64);
        metrics::gauge!("redis_relay_spool_bytes", &l).set(s.spool_bytes as f64);
        metrics::gauge!("redis_relay_spool_disk_bytes", &l).set(s.spool_disk_bytes as f64);
        metrics::gauge!("redis_relay_snapshot_done", &l).set(if s.snapshot_done {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("redis_relay_in_sync", &l).set(if v.sync == SyncState::InSync {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("redis_relay_connected", &l).set(if s.connected { 1.0 } else { 0.0 });
        metrics::gauge!("redis_relay_snapshot_keys", &l).set(s.snapshot_keys as f64);
        metrics::gauge!("redis_relay_deferred_deletions", &l).set(s.deferred_deletions as f64);
        metrics::gauge!("redis_relay_deferred_deletion_age_seconds", &l)
            .set(s.deferred_deletion_age_seconds.unwrap_or(0.0));
        if let Some(v) = s.lag_seconds {
            metrics::gauge!("redis_relay_lag_seconds", &l).set(v);
        }
        if let Some(v) = s.lag_seconds_estimate {
            metrics::gauge!("redis_relay_lag_seconds_estimate", &l).set(v);
        }
        if let Some(p) = self.inner.sources.iter().find(|x| x.name == s.source) {
            let p = &p.progress;
            metrics::counter!("redis_relay_acks_sent_total", &l).absolute(p.acks_sent());
            metrics::counter!("redis_relay_source_reconnects_total", &l)
                .absolute(p.connect_attempts().saturating_sub(1));
            for (reason, n) in p.full_sync_failures() {
                metrics::counter!("redis_relay_full_sync_failures_total", "source" => s.source.clone(), "reason" => reason)
                    .absolute(n);
            }
        }
        for st in crate::metrics::SYNC_STATES {
            metrics::gauge!("redis_relay_sync_state", "source" => s.source.clone(), "state" => st.to_string())
                .set(if st == s.state { 1.0 } else { 0.0 });
        }
    }
}

#[cfg(test)]
mod ownership_tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new("127.0.0.1", port)
    }

    fn peers(a: Authority) -> Option<Vec<u16>> {
        match a {
            Authority::Peers(p) => Some(p.iter().map(|e| e.port).collect()),
            _ => None,
        }
    }

    #[test]
    fn authority_of_each_deployment() {
        let one = [ep(1)];
        let two = [ep(1), ep(2)];
        // One plain --source: nobody to ask, nothing attributable.
        let o = Ownership::default();
        assert!(matches!(o.authority(&ep(1), &one), Authority::Unknown));
        // Several sources in one process: they are each other's peers.
        assert_eq!(peers(o.authority(&ep(1), &two)), Some(vec![2]));
        // --peer given.
        let o = Ownership {
            peers: vec![ep(7)],
            ..Ownership::default()
        };
        assert_eq!(peers(o.authority(&ep(1), &two)), Some(vec![2, 7]));
        // A whole pool known, of one backend: the relay is its only writer.
        let o = Ownership {
            pool_known: true,
            ..Ownership::default()
        };
        assert_eq!(peers(o.authority(&ep(1), &one)), Some(vec![]));
        // --target-owner exclusive.
        let o = Ownership {
            target_owner: TargetOwner::Exclusive,
            peers: vec![ep(7)],
            ..Ownership::default()
        };
        assert_eq!(peers(o.authority(&ep(1), &one)), Some(vec![7]));
        let o = Ownership {
            target_owner: TargetOwner::Exclusive,
            ..Ownership::default()
        };
        assert!(matches!(o.authority(&ep(1), &one), Authority::Exclusive));
        assert_eq!(peers(o.authority(&ep(1), &two)), Some(vec![2]));
    }
}
