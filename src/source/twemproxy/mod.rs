//! Reading a Twemproxy (nutcracker) configuration to find the masters behind it.
//!
//! PSYNC cannot go through Twemproxy, so the relay replicates from every backend listed under
//! a pool's `servers:` directly. Each server line is `host:port:weight [name]`; the pool's
//! `redis_auth` is the password of every backend of that pool.
//!
//! With `auto_eject_hosts: true`, keys are re-hashed to other backends while a host is
//! ejected, so one key can exist on two backends and merging them into one target has no
//! defined winner. We cannot fix that, but we report it so the caller can warn loudly.
//!
//! A relay running beside some of the backends (a sidecar) also needs to know which backend
//! owns a key: [`hashkit`] and [`placement`] compute it as nutcracker does, and [`sidecar`]
//! splits a pool into the local servers and their peers.

pub mod hashkit;
mod md5;
pub mod placement;

use crate::endpoint::{Endpoint, Login, TlsOptions};
use placement::{Distribution, Placement, PlacementError};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use thiserror::Error;

/// One Redis backend of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The pool it was first listed in.
    pub pool: String,
    /// The optional server name of the `servers:` line (used by ketama for hashing).
    pub name: Option<String>,
    /// Weight from the `servers:` line.
    pub weight: u32,
    /// Address, with the pool's `redis_auth` as password and `redis_db` as db.
    pub endpoint: Endpoint,
}

/// A pool as written in the file (the fields the relay cares about).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolInfo {
    pub name: String,
    pub listen: Option<String>,
    pub hash: Option<String>,
    pub distribution: Option<String>,
    pub auto_eject_hosts: bool,
    pub redis: bool,
    pub redis_db: Option<u32>,
    /// Line of the pool in the file.
    pub line: u64,
    /// `hash_tag:` (open and close byte): only the part of a key between them is hashed.
    pub hash_tag: Option<[u8; 2]>,
    /// Every `servers:` line of the pool, in file order (a backend shared with an earlier
    /// pool is listed here too, unlike in [`TwemproxySources::backends`]).
    pub servers: Vec<ServerLine>,
}

/// One line of a pool's `servers:`, as written.
///
/// nutcracker places keys by server *name*, not by address, so the text matters: `07005` is
/// not `7005` and `localhost` is not `127.0.0.1` for placement, even when they reach the same
/// Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLine {
    /// The optional name after the address (`host:port:weight name`).
    pub name: Option<String>,
    /// Host name or address, or the socket path of a unix socket line.
    pub host: String,
    /// TCP port; 0 for a unix socket.
    pub port: u16,
    /// `host:port` exactly as written (the socket path for a unix socket).
    pub address: String,
    /// Weight (>= 1, as nutcracker requires).
    pub weight: u32,
    /// Where to connect, with the pool's `redis_auth` and `redis_db`.
    pub endpoint: Endpoint,
}

impl ServerLine {
    /// Parses `host:port:weight [name]` or `/path/to/socket:weight [name]` as nutcracker does:
    /// from the right, so the host is whatever is left before the port (`::1:6379:1` parses).
    pub fn parse(s: &str) -> Result<ServerLine, ServerLineError> {
        let entry = || s.to_string();
        let mut parts = s.split_whitespace();
        let addr = parts.next().ok_or(ServerLineError::Empty)?;
        let name = parts.next().map(str::to_string);
        if let Some(extra) = parts.next() {
            return Err(ServerLineError::Extra {
                extra: extra.to_string(),
                entry: entry(),
            });
        }
        let (address, w) = addr
            .rsplit_once(':')
            .filter(|(a, _)| !a.is_empty())
            .ok_or_else(|| ServerLineError::Malformed { entry: entry() })?;
        let weight: u32 = w.parse().map_err(|_| ServerLineError::BadWeight {
            weight: w.to_string(),
            entry: entry(),
        })?;
        if weight == 0 {
            return Err(ServerLineError::ZeroWeight { entry: entry() });
        }
        let (host, port) = if address.starts_with('/') {
            (address.to_string(), 0)
        } else {
            let (h, p) = address
                .rsplit_once(':')
                .filter(|(h, _)| !h.is_empty())
                .ok_or_else(|| ServerLineError::Malformed { entry: entry() })?;
            let port: u16 =
                p.parse()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| ServerLineError::BadPort {
                        port: p.to_string(),
                        entry: entry(),
                    })?;
            (h.to_string(), port)
        };
        Ok(ServerLine {
            name,
            endpoint: Endpoint::new(host.clone(), port),
            host,
            port,
            address: address.to_string(),
            weight,
        })
    }

    /// True for a `/path/to/socket:weight` line.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The string nutcracker hashes to place this server: the given name; else the host
    /// alone on port 11211 (libmemcached compatibility); else `host:port` as written. A unix
    /// socket without a name is its path followed by `:`.
    pub fn hash_name(&self) -> String {
        if let Some(n) = &self.name {
            n.clone()
        } else if self.is_unix_socket() {
            format!("{}:", self.address)
        } else if self.port == 11211 {
            self.host.clone()
        } else {
            self.address.clone()
        }
    }

    /// The name shown to users: `name (host:port)`, or `host:port`.
    fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{n} ({})", self.address),
            None => self.address.clone(),
        }
    }
}

/// The masters to replicate from, found in a Twemproxy configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwemproxySources {
    /// Backends in file order, each `host:port` once.
    pub backends: Vec<Backend>,
    /// The selected pools, in file order.
    pub pools: Vec<PoolInfo>,
    /// Memcached pools (`redis: false` or absent) skipped when all pools were selected.
    pub skipped_pools: Vec<String>,
}

impl TwemproxySources {
    /// Every server of the selected pools and every backend: `f` applied to its endpoint.
    fn each_endpoint(&mut self, mut f: impl FnMut(&mut Endpoint)) {
        let servers = self.pools.iter_mut().flat_map(|p| p.servers.iter_mut());
        let endpoints = self
            .backends
            .iter_mut()
            .map(|b| &mut b.endpoint)
            .chain(servers.map(|s| &mut s.endpoint));
        for ep in endpoints {
            f(ep);
        }
    }

    /// Every backend with `login` instead of its pool's `redis_auth` (the relay's own user
    /// and password: `--source-user`, `--source-password-file`, `REDIS_RELAY_SOURCE_PASSWORD`).
    pub fn set_login(&mut self, login: &Login) {
        self.each_endpoint(|ep| login.apply(ep));
    }

    /// Every server of the selected pools speaks TLS, checked with `tls` (`--source-tls`);
    /// `None` leaves them plain.
    pub fn set_tls(&mut self, tls: Option<&Arc<TlsOptions>>) {
        self.each_endpoint(|ep| ep.tls = tls.cloned());
    }

    /// Selected pools with `auto_eject_hosts: true`: their keys may live on two backends.
    pub fn auto_eject_pools(&self) -> Vec<&str> {
        self.pools
            .iter()
            .filter(|p| p.auto_eject_hosts)
            .map(|p| p.name.as_str())
            .collect()
    }

    /// True when some selected pool ejects hosts (warn: keys can live on two backends).
    pub fn auto_eject_warning(&self) -> bool {
        self.pools.iter().any(|p| p.auto_eject_hosts)
    }
}

/// A `servers:` entry that is not `host:port:weight [name]` (or `/path:weight [name]`); the
/// message quotes the entry.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ServerLineError {
    #[error("empty server entry (expected host:port:weight [name])")]
    Empty,
    #[error("unexpected {extra:?} in server entry {entry:?} (expected host:port:weight [name])")]
    Extra { extra: String, entry: String },
    #[error("server entry {entry:?} is not host:port:weight [name]")]
    Malformed { entry: String },
    #[error("bad weight {weight:?} in server entry {entry:?} (expected an integer)")]
    BadWeight { weight: String, entry: String },
    #[error("weight 0 in server entry {entry:?} (nutcracker requires a weight >= 1)")]
    ZeroWeight { entry: String },
    #[error("bad port {port:?} in server entry {entry:?}")]
    BadPort { port: String, entry: String },
}

/// A configuration that cannot be used; the message names the pool, field and line.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TwemproxyError {
    #[error("cannot read twemproxy config {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("twemproxy config is not valid YAML for a nutcracker config: {0}")]
    Yaml(String),
    #[error("twemproxy config has no pools")]
    NoPools,
    #[error("twemproxy config has no pool named {wanted:?} (pools: {available})")]
    NoSuchPool { wanted: String, available: String },
    #[error("twemproxy pool {pool:?} (line {line}) is a memcached pool (`redis: true` is missing): PSYNC needs Redis backends")]
    NotRedis { pool: String, line: u64 },
    #[error("twemproxy config has only memcached pools ({0}): nothing to replicate")]
    NoRedisPools(String),
    #[error("twemproxy pool {pool:?}, field {field:?}, line {line}: {reason}")]
    Field {
        pool: String,
        field: &'static str,
        line: u64,
        reason: String,
    },
    #[error("backend {addr} is listed in pool {first:?} and in pool {second:?} (line {line}) with a different redis_auth")]
    ConflictingAuth {
        addr: String,
        first: String,
        second: String,
        line: u64,
    },
    #[error("twemproxy pool {pool:?} has no server {wanted:?} (servers: {available}); give a server name or host:port as written in the config, or `auto`")]
    NoSuchServer {
        wanted: String,
        pool: String,
        available: String,
    },
    #[error("no local server given for twemproxy pool {pool:?} (servers: {available}); give server names, host:port as written in the config, or `auto`")]
    NoLocalServer { pool: String, available: String },
    #[error("the twemproxy config has several Redis pools ({pools}): choose the one this sidecar serves with --pool")]
    SeveralPools { pools: String },
    #[error("`auto`: none of the servers of twemproxy pool {pool:?} has an address of this machine (servers: {available}); name the local servers instead")]
    AutoMatchedNothing { pool: String, available: String },
    #[error(transparent)]
    Placement(#[from] PlacementError),
}

#[derive(Debug, Deserialize)]
struct RawPool {
    listen: Option<Spanned<String>>,
    hash: Option<Spanned<String>>,
    distribution: Option<Spanned<String>>,
    auto_eject_hosts: Option<bool>,
    redis: Option<bool>,
    redis_auth: Option<String>,
    redis_db: Option<Spanned<i64>>,
    hash_tag: Option<Spanned<String>>,
    servers: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Reads a nutcracker YAML file. `pool`: `None` for every Redis pool, or one pool's name.
pub fn load_config(path: &Path, pool: Option<&str>) -> Result<TwemproxySources, TwemproxyError> {
    let text = std::fs::read_to_string(path).map_err(|e| TwemproxyError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_config(&text, pool)
}

/// Parses a nutcracker YAML document. `pool`: `None` for every Redis pool, or one pool's name.
pub fn parse_config(yaml: &str, pool: Option<&str>) -> Result<TwemproxySources, TwemproxyError> {
    let raw: BTreeMap<String, Spanned<RawPool>> =
        serde_saphyr::from_str(yaml).map_err(|e| TwemproxyError::Yaml(e.to_string()))?;
    if raw.is_empty() {
        return Err(TwemproxyError::NoPools);
    }
    let selected = select_pools(raw, pool)?;
    let mut backends = BackendSet::default();
    let mut pools = Vec::new();
    let mut skipped_pools = Vec::new();
    for (name, sp) in selected {
        let line = sp.referenced.line();
        let p = sp.value;
        if p.redis != Some(true) {
            skipped_pools.push(name);
            continue;
        }
        pools.push(read_pool(name, line, p, &mut backends)?);
    }
    if pools.is_empty() {
        return Err(TwemproxyError::NoRedisPools(skipped_pools.join(", ")));
    }
    Ok(TwemproxySources {
        backends: backends.list,
        pools,
        skipped_pools,
    })
}

/// The pools to read, in file order: every pool, or the one named `wanted` (which must be a
/// Redis pool).
fn select_pools(
    raw: BTreeMap<String, Spanned<RawPool>>,
    wanted: Option<&str>,
) -> Result<Vec<(String, Spanned<RawPool>)>, TwemproxyError> {
    // Back to file order (the map is sorted by name).
    let mut pools: Vec<(String, Spanned<RawPool>)> = raw.into_iter().collect();
    pools.sort_by_key(|(_, p)| p.referenced.line());
    let Some(wanted) = wanted else {
        return Ok(pools);
    };
    let available = pools
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let Some(p) = pools.into_iter().find(|(n, _)| n == wanted) else {
        return Err(TwemproxyError::NoSuchPool {
            wanted: wanted.to_string(),
            available,
        });
    };
    if p.1.value.redis != Some(true) {
        return Err(TwemproxyError::NotRedis {
            pool: p.0,
            line: p.1.referenced.line(),
        });
    }
    Ok(vec![p])
}

/// A field of pool `pool` that cannot be used.
fn field_error(pool: &str, field: &'static str, line: u64, reason: String) -> TwemproxyError {
    TwemproxyError::Field {
        pool: pool.to_string(),
        field,
        line,
        reason,
    }
}

/// One Redis pool (at `line`): its settings checked, its servers parsed, and their backends
/// added to `backends`.
fn read_pool(
    name: String,
    line: u64,
    p: RawPool,
    backends: &mut BackendSet,
) -> Result<PoolInfo, TwemproxyError> {
    let (hash_tag, redis_db) = pool_settings(&name, &p)?;
    let password = p.redis_auth.clone().filter(|s| !s.is_empty());
    let servers = match &p.servers {
        Some(s) if !s.value.is_empty() => &s.value,
        Some(s) => {
            return Err(field_error(
                &name,
                "servers",
                s.referenced.line(),
                "the list is empty".into(),
            ))
        }
        None => return Err(field_error(&name, "servers", line, "missing".into())),
    };
    let mut lines: Vec<ServerLine> = Vec::with_capacity(servers.len());
    let mut names: HashMap<String, u64> = HashMap::new();
    for s in servers {
        let mut server = parse_server(&name, s, &mut names)?;
        server.endpoint.password = password.clone();
        server.endpoint.db = redis_db;
        backends.add(&server, &name, s.referenced.line())?;
        lines.push(server);
    }
    Ok(PoolInfo {
        name,
        listen: p.listen.map(|l| l.value),
        hash: p.hash.map(|h| h.value),
        distribution: p.distribution.map(|d| d.value),
        auto_eject_hosts: p.auto_eject_hosts.unwrap_or(false),
        redis: true,
        redis_db,
        line,
        hash_tag,
        servers: lines,
    })
}

/// Checks `hash`, `hash_tag`, `distribution` and `redis_db` (in that order); returns the
/// hash tag and the database.
fn pool_settings(
    name: &str,
    p: &RawPool,
) -> Result<(Option<[u8; 2]>, Option<u32>), TwemproxyError> {
    if let Some(h) = &p.hash {
        if let Err(e) = h.value.parse::<hashkit::HashKind>() {
            return Err(field_error(
                name,
                "hash",
                h.referenced.line(),
                e.to_string(),
            ));
        }
    }
    let hash_tag = match &p.hash_tag {
        None => None,
        Some(t) => Some(<[u8; 2]>::try_from(t.value.as_bytes()).map_err(|_| {
            field_error(
                name,
                "hash_tag",
                t.referenced.line(),
                format!(
                    "{:?} is not 2 bytes (an opening and a closing character, e.g. \"{{}}\")",
                    t.value
                ),
            )
        })?),
    };
    if let Some(d) = &p.distribution {
        if let Err(reason) = d.value.parse::<Distribution>() {
            return Err(field_error(
                name,
                "distribution",
                d.referenced.line(),
                reason,
            ));
        }
    }
    let redis_db = match &p.redis_db {
        None => None,
        Some(db) => Some(u32::try_from(db.value).map_err(|_| {
            field_error(
                name,
                "redis_db",
                db.referenced.line(),
                format!("expected a database index >= 0, got {}", db.value),
            )
        })?),
    };
    Ok((hash_tag, redis_db))
}

/// One `servers:` line of pool `pool`: a TCP server whose name no earlier line of the pool
/// has (`names`: name -> line, as nutcracker refuses duplicates: placement would be ambiguous).
fn parse_server(
    pool: &str,
    s: &Spanned<String>,
    names: &mut HashMap<String, u64>,
) -> Result<ServerLine, TwemproxyError> {
    let sline = s.referenced.line();
    let server = ServerLine::parse(&s.value)
        .map_err(|r| field_error(pool, "servers", sline, r.to_string()))?;
    if server.is_unix_socket() {
        return Err(field_error(
            pool,
            "servers",
            sline,
            format!(
                "unix socket backend {:?} is not supported (the relay connects over TCP)",
                server.address
            ),
        ));
    }
    // nutcracker refuses two servers with one name: placement would be ambiguous.
    if let Some(first) = names.insert(server.hash_name(), sline) {
        return Err(field_error(
            pool,
            "servers",
            sline,
            format!(
                "server {:?} has the same name as the one on line {first} (nutcracker refuses duplicate names)",
                server.hash_name()
            ),
        ));
    }
    Ok(server)
}

/// The backends of the selected pools, each `host:port` once.
#[derive(Default)]
struct BackendSet {
    /// In file order.
    list: Vec<Backend>,
    /// host:port -> (index in `list`, password)
    seen: HashMap<(String, u16), (usize, Option<String>)>,
}

impl BackendSet {
    /// Adds `server` of pool `pool` (listed on `line`) unless its address is known already;
    /// a backend listed again must have the same password.
    fn add(&mut self, server: &ServerLine, pool: &str, line: u64) -> Result<(), TwemproxyError> {
        let password = &server.endpoint.password;
        let key = (server.host.clone(), server.port);
        if let Some((idx, pw)) = self.seen.get(&key) {
            if pw != password {
                return Err(TwemproxyError::ConflictingAuth {
                    addr: self.list[*idx].endpoint.to_string(),
                    first: self.list[*idx].pool.clone(),
                    second: pool.to_string(),
                    line,
                });
            }
            return Ok(());
        }
        self.seen.insert(key, (self.list.len(), password.clone()));
        self.list.push(Backend {
            pool: pool.to_string(),
            name: server.name.clone(),
            weight: server.weight,
            endpoint: Endpoint {
                host: server.host.clone(),
                port: server.port,
                username: None,
                password: password.clone(),
                db: server.endpoint.db,
                tls: None,
            },
        });
        Ok(())
    }
}

/// A pool seen from a relay running beside some of its backends: which servers are local,
/// which are peers, and who owns a key.
#[derive(Debug, Clone)]
pub struct SidecarView {
    /// The pool served.
    pub pool: PoolInfo,
    /// Key ownership; `None` for `distribution: random` (ask the peers instead).
    pub placement: Option<Arc<Placement>>,
    /// The local servers: indices into `pool.servers`, ascending.
    pub local: Vec<usize>,
}

impl SidecarView {
    /// True when server `i` has the address of a local server. Two lines of one pool can
    /// name the same backend; data of either then lands on that one Redis.
    fn is_local_server(&self, i: usize) -> bool {
        let s = &self.pool.servers[i];
        self.local
            .iter()
            .any(|&l| same_address(&self.pool.servers[l], s))
    }

    /// The local backends, each address once.
    pub fn locals(&self) -> Vec<Endpoint> {
        unique_endpoints(self.local.iter().map(|&i| &self.pool.servers[i]))
    }

    /// The pool's other backends (not at a local address), each address once, in file order.
    pub fn peers(&self) -> Vec<Endpoint> {
        unique_endpoints(
            (0..self.pool.servers.len())
                .filter(|&i| !self.is_local_server(i))
                .map(|i| &self.pool.servers[i]),
        )
    }

    /// Index into `pool.servers` of the server owning `key`; `None` when not computable.
    pub fn owner_of(&self, key: &[u8]) -> Option<usize> {
        self.placement.as_ref().map(|p| p.owner(key))
    }

    /// Whether `key` is owned by a local backend; `None` when not computable.
    pub fn is_local(&self, key: &[u8]) -> Option<bool> {
        self.owner_of(key).map(|i| self.is_local_server(i))
    }

    /// For a key: the index into [`SidecarView::peers`] of the peer that owns it; `None` when
    /// it is owned locally or ownership cannot be computed. The function owns what it needs,
    /// so it can be moved to other threads.
    pub fn peer_hint(&self) -> impl Fn(&[u8]) -> Option<usize> + Send + Sync + 'static {
        let peers = self.peers();
        let to_peer: Vec<Option<usize>> = (0..self.pool.servers.len())
            .map(|i| {
                if self.is_local_server(i) {
                    return None;
                }
                let s = &self.pool.servers[i];
                peers
                    .iter()
                    .position(|e| e.host == s.endpoint.host && e.port == s.endpoint.port)
            })
            .collect();
        let placement = self.placement.clone();
        move |key: &[u8]| placement.as_ref().and_then(|p| to_peer[p.owner(key)])
    }
}

fn same_address(a: &ServerLine, b: &ServerLine) -> bool {
    a.endpoint.host == b.endpoint.host && a.endpoint.port == b.endpoint.port
}

fn unique_endpoints<'a>(servers: impl Iterator<Item = &'a ServerLine>) -> Vec<Endpoint> {
    let mut seen = HashSet::new();
    servers
        .filter(|s| seen.insert((s.endpoint.host.clone(), s.endpoint.port)))
        .map(|s| s.endpoint.clone())
        .collect()
}

/// Splits the selected Redis pool into local servers and peers.
///
/// `local` holds server names or `host:port` as written in the config, or the single word
/// `auto`: the servers whose host resolves to an address of this machine (one we can bind).
pub fn sidecar(tw: &TwemproxySources, local: &[String]) -> Result<SidecarView, TwemproxyError> {
    let pool = match tw.pools.as_slice() {
        [p] => p,
        [] => return Err(TwemproxyError::NoRedisPools(tw.skipped_pools.join(", "))),
        many => {
            return Err(TwemproxyError::SeveralPools {
                pools: many
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    };
    let available = || {
        pool.servers
            .iter()
            .map(ServerLine::label)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut chosen: Vec<usize> = Vec::new();
    if let [only] = local {
        if only == "auto" {
            chosen = auto_local(&pool.servers);
            if chosen.is_empty() {
                return Err(TwemproxyError::AutoMatchedNothing {
                    pool: pool.name.clone(),
                    available: available(),
                });
            }
        }
    }
    if chosen.is_empty() {
        if local.is_empty() {
            return Err(TwemproxyError::NoLocalServer {
                pool: pool.name.clone(),
                available: available(),
            });
        }
        for wanted in local {
            let found: Vec<usize> = (0..pool.servers.len())
                .filter(|&i| {
                    let s = &pool.servers[i];
                    s.name.as_deref() == Some(wanted.as_str()) || s.address == *wanted
                })
                .collect();
            if found.is_empty() {
                return Err(TwemproxyError::NoSuchServer {
                    wanted: wanted.clone(),
                    pool: pool.name.clone(),
                    available: available(),
                });
            }
            chosen.extend(found);
        }
        chosen.sort_unstable();
        chosen.dedup();
    }
    Ok(SidecarView {
        pool: pool.clone(),
        placement: match Placement::for_pool(pool) {
            Ok(p) => Some(Arc::new(p)),
            Err(PlacementError::NotComputable { .. }) => None,
            Err(e) => return Err(e.into()),
        },
        local: chosen,
    })
}

/// Servers whose host resolves to an address this machine can bind.
fn auto_local(servers: &[ServerLine]) -> Vec<usize> {
    use std::net::{TcpListener, ToSocketAddrs};
    let mut by_host: HashMap<&str, bool> = HashMap::new();
    (0..servers.len())
        .filter(|&i| {
            let s = &servers[i];
            if s.is_unix_socket() {
                return false;
            }
            *by_host.entry(s.host.as_str()).or_insert_with(|| {
                (s.host.as_str(), s.port)
                    .to_socket_addrs()
                    .map(|mut addrs| addrs.any(|a| TcpListener::bind((a.ip(), 0)).is_ok()))
                    .unwrap_or(false)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"
alpha:
  listen: 127.0.0.1:22121
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: true
  redis: true
  server_retry_timeout: 2000
  server_failure_limit: 1
  servers:
   - 127.0.0.1:6379:1
   - 127.0.0.1:6380:1

beta:
  listen: 127.0.0.1:22122
  hash: fnv1a_64
  hash_tag: "{}"
  distribution: ketama
  auto_eject_hosts: false
  timeout: 400
  redis: true
  redis_auth: "s3cret"
  redis_db: 2
  servers:
   - 10.0.0.1:6379:1 server1
   - 10.0.0.2:6379:1 server2
   - 10.0.0.3:6379:1 server3

gamma:
  listen: 127.0.0.1:22123
  hash: fnv1a_64
  distribution: ketama
  timeout: 400
  backlog: 1024
  preconnect: true
  auto_eject_hosts: true
  server_retry_timeout: 2000
  server_failure_limit: 3
  servers:
   - 127.0.0.1:11212:1
   - 127.0.0.1:11213:1

delta:
  listen: 0.0.0.0:22124
  redis: true
  servers:
   - 127.0.0.1:6380:2
   - cache-1.internal:7000:1
"#;

    #[test]
    fn all_pools() {
        let s = parse_config(CONF, None).unwrap();
        let addrs: Vec<String> = s.backends.iter().map(|b| b.endpoint.to_string()).collect();
        assert_eq!(
            addrs,
            vec![
                "127.0.0.1:6379",
                "127.0.0.1:6380",
                "10.0.0.1:6379",
                "10.0.0.2:6379",
                "10.0.0.3:6379",
                "cache-1.internal:7000"
            ]
        );
        assert_eq!(s.skipped_pools, vec!["gamma"]);
        assert_eq!(
            s.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            vec!["alpha", "beta", "delta"]
        );
        assert!(s.auto_eject_warning());
        assert_eq!(s.auto_eject_pools(), vec!["alpha"]);
        let b = &s.backends[2];
        assert_eq!(b.endpoint.password.as_deref(), Some("s3cret"));
        assert_eq!(b.endpoint.db, Some(2));
        assert_eq!(b.name.as_deref(), Some("server1"));
        assert_eq!(b.pool, "beta");
        assert_eq!(s.backends[0].endpoint.password, None);
        // 127.0.0.1:6380 appears in alpha and delta: kept once, from alpha.
        assert_eq!(s.backends[1].pool, "alpha");
    }

    #[test]
    fn one_pool() {
        let s = parse_config(CONF, Some("beta")).unwrap();
        assert_eq!(s.backends.len(), 3);
        assert!(!s.auto_eject_warning());
        assert_eq!(s.pools[0].hash.as_deref(), Some("fnv1a_64"));
        assert_eq!(s.pools[0].listen.as_deref(), Some("127.0.0.1:22122"));
        let e = parse_config(CONF, Some("nope")).unwrap_err();
        assert!(e.to_string().contains("alpha, beta, gamma, delta"), "{e}");
        let e = parse_config(CONF, Some("gamma")).unwrap_err();
        assert!(matches!(e, TwemproxyError::NotRedis { .. }), "{e}");
        assert!(e.to_string().contains("line 30"), "{e}");
    }

    #[test]
    fn errors_name_pool_field_line() {
        let bad = "p1:\n  redis: true\n  servers:\n   - 127.0.0.1:6379:1\n   - 127.0.0.1:x:1\n";
        let e = parse_config(bad, None).unwrap_err();
        assert_eq!(
            e,
            TwemproxyError::Field {
                pool: "p1".into(),
                field: "servers",
                line: 5,
                reason: "bad port \"x\" in server entry \"127.0.0.1:x:1\"".into()
            }
        );
        let bad = "p1:\n  redis: true\n  hash: sha1\n  servers:\n   - h:1:1\n";
        let e = parse_config(bad, None).unwrap_err().to_string();
        assert!(
            e.contains("\"p1\"") && e.contains("hash") && e.contains("line 3"),
            "{e}"
        );
        let bad = "p1:\n  redis: true\n  distribution: round\n  servers:\n   - h:1:1\n";
        assert!(parse_config(bad, None)
            .unwrap_err()
            .to_string()
            .contains("distribution"));
        let bad = "p1:\n  redis: true\n  listen: 1.2.3.4:5\n";
        let e = parse_config(bad, None).unwrap_err().to_string();
        assert!(e.contains("servers") && e.contains("missing"), "{e}");
        let bad = "p1:\n  redis: true\n  servers:\n   - /tmp/redis.sock:1\n";
        assert!(parse_config(bad, None)
            .unwrap_err()
            .to_string()
            .contains("unix socket"));
        let bad = "p1:\n  redis: true\n  servers:\n   - h:6379\n";
        assert!(parse_config(bad, None)
            .unwrap_err()
            .to_string()
            .contains("host:port:weight"));
        let bad = "p1:\n  redis: true\n  redis_db: -1\n  servers:\n   - h:1:1\n";
        assert!(parse_config(bad, None)
            .unwrap_err()
            .to_string()
            .contains("redis_db"));
        let bad = "p1:\n  redis: true\n  servers: [\n";
        assert!(matches!(
            parse_config(bad, None).unwrap_err(),
            TwemproxyError::Yaml(_)
        ));
        let conflict = "a:\n  redis: true\n  redis_auth: x\n  servers:\n   - h:1:1\nb:\n  redis: true\n  servers:\n   - h:1:1\n";
        let e = parse_config(conflict, None).unwrap_err();
        assert!(
            matches!(e, TwemproxyError::ConflictingAuth { line: 9, .. }),
            "{e}"
        );
        let only_mc = "m:\n  servers:\n   - h:1:1\n";
        assert!(matches!(
            parse_config(only_mc, None).unwrap_err(),
            TwemproxyError::NoRedisPools(_)
        ));
    }

    #[test]
    fn load_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nutcracker.yml");
        std::fs::write(&p, CONF).unwrap();
        assert_eq!(load_config(&p, Some("alpha")).unwrap().backends.len(), 2);
        assert!(matches!(
            load_config(&dir.path().join("missing.yml"), None).unwrap_err(),
            TwemproxyError::Io { .. }
        ));
    }

    #[test]
    fn server_lines_and_hash_names() {
        let s = ServerLine::parse("127.0.0.1:07005:3").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.weight), ("127.0.0.1", 7005, 3));
        assert_eq!(s.address, "127.0.0.1:07005");
        assert_eq!(s.hash_name(), "127.0.0.1:07005");
        assert_eq!(
            ServerLine::parse("cache:11211:1").unwrap().hash_name(),
            "cache"
        );
        let s = ServerLine::parse("10.0.0.1:6379:1 redis-a").unwrap();
        assert_eq!(s.hash_name(), "redis-a");
        assert_eq!(s.name.as_deref(), Some("redis-a"));
        let s = ServerLine::parse("::1:6379:1").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("::1", 6379));
        assert_eq!(s.hash_name(), "::1:6379");
        let s = ServerLine::parse("/run/redis.sock:2").unwrap();
        assert!(s.is_unix_socket());
        assert_eq!((s.port, s.weight), (0, 2));
        assert_eq!(s.hash_name(), "/run/redis.sock:");
        assert_eq!(
            ServerLine::parse("/run/redis.sock:1 sock")
                .unwrap()
                .hash_name(),
            "sock"
        );
        assert!(ServerLine::parse("h:1:0")
            .unwrap_err()
            .to_string()
            .contains("weight 0"));
        assert!(ServerLine::parse("h:1:x")
            .unwrap_err()
            .to_string()
            .contains("bad weight"));
    }

    #[test]
    fn pool_servers_and_hash_tag() {
        let s = parse_config(CONF, None).unwrap();
        let beta = &s.pools[1];
        assert_eq!(beta.hash_tag, Some(*b"{}"));
        assert_eq!(s.pools[0].hash_tag, None);
        let names: Vec<_> = beta.servers.iter().map(|l| l.hash_name()).collect();
        assert_eq!(names, ["server1", "server2", "server3"]);
        assert_eq!(beta.servers[0].endpoint.password.as_deref(), Some("s3cret"));
        assert_eq!(beta.servers[0].endpoint.db, Some(2));
        // delta lists 127.0.0.1:6380 again: kept in its servers, not in backends.
        let delta = &s.pools[2];
        assert_eq!(delta.servers.len(), 2);
        assert_eq!(delta.servers[0].address, "127.0.0.1:6380");
        assert_eq!(delta.servers[0].weight, 2);

        let bad = "p1:\n  redis: true\n  hash_tag: \"{\"\n  servers:\n   - h:1:1\n";
        let e = parse_config(bad, None).unwrap_err();
        assert!(
            matches!(&e, TwemproxyError::Field { pool, field: "hash_tag", line: 3, .. } if pool == "p1"),
            "{e}"
        );
        let bad = "p1:\n  redis: true\n  hash_tag: \"{{}}\"\n  servers:\n   - h:1:1\n";
        assert!(parse_config(bad, None)
            .unwrap_err()
            .to_string()
            .contains("2 bytes"));
        let ok = "p1:\n  redis: true\n  hash_tag: \"$$\"\n  servers:\n   - h:1:1\n";
        assert_eq!(
            parse_config(ok, None).unwrap().pools[0].hash_tag,
            Some(*b"$$")
        );

        let dup = "p1:\n  redis: true\n  servers:\n   - h:1:1 a\n   - h:2:1 a\n";
        let e = parse_config(dup, None).unwrap_err().to_string();
        assert!(e.contains("same name") && e.contains("line 4"), "{e}");
        let zero = "p1:\n  redis: true\n  servers:\n   - h:1:0\n";
        assert!(parse_config(zero, None)
            .unwrap_err()
            .to_string()
            .contains("weight 0"));
    }

    const SIDECAR: &str = r#"
cache:
  redis: true
  hash: murmur
  redis_auth: pw
  servers:
   - 127.0.0.1:7001:1 a
   - 127.0.0.1:7002:1 b
   - 192.0.2.10:7003:1 c
   - 192.0.2.11:7004:1
"#;

    fn view(local: &[&str]) -> Result<SidecarView, TwemproxyError> {
        let tw = parse_config(SIDECAR, None).unwrap();
        let local: Vec<String> = local.iter().map(|s| s.to_string()).collect();
        sidecar(&tw, &local)
    }

    #[test]
    fn sidecar_selects_by_name_and_address() {
        let v = view(&["b", "192.0.2.11:7004"]).unwrap();
        assert_eq!(v.local, vec![1, 3]);
        let addrs = |eps: Vec<Endpoint>| eps.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        assert_eq!(addrs(v.locals()), ["127.0.0.1:7002", "192.0.2.11:7004"]);
        assert_eq!(addrs(v.peers()), ["127.0.0.1:7001", "192.0.2.10:7003"]);
        assert_eq!(v.peers()[0].password.as_deref(), Some("pw"));

        let hint = v.peer_hint();
        let peers = v.peers();
        let placement = v.placement.clone().unwrap();
        let mut seen = [0usize; 4];
        for i in 0..400 {
            let key = format!("key:{i}");
            let owner = placement.owner(key.as_bytes());
            seen[owner] += 1;
            assert_eq!(v.owner_of(key.as_bytes()), Some(owner));
            let local = owner == 1 || owner == 3;
            assert_eq!(v.is_local(key.as_bytes()), Some(local));
            match hint(key.as_bytes()) {
                None => assert!(local, "{key}"),
                Some(p) => {
                    assert!(!local);
                    assert_eq!(peers[p], v.pool.servers[owner].endpoint);
                }
            }
        }
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
    }

    #[test]
    fn sidecar_errors() {
        let e = view(&["z"]).unwrap_err();
        assert!(matches!(e, TwemproxyError::NoSuchServer { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("\"cache\"")
                && msg.contains("a (127.0.0.1:7001)")
                && msg.contains("192.0.2.11:7004"),
            "{msg}"
        );
        // host:port must be written as in the config.
        assert!(view(&["localhost:7001"]).is_err());
        assert!(matches!(
            view(&[]).unwrap_err(),
            TwemproxyError::NoLocalServer { .. }
        ));
        let tw = parse_config(CONF, None).unwrap();
        let e = sidecar(&tw, &["server1".to_string()]).unwrap_err();
        assert!(matches!(e, TwemproxyError::SeveralPools { .. }), "{e}");
        assert!(e.to_string().contains("alpha, beta, delta") && e.to_string().contains("--pool"));
        let tw = parse_config(CONF, Some("beta")).unwrap();
        let e = sidecar(&tw, &["auto".to_string()]).unwrap_err();
        assert!(
            matches!(e, TwemproxyError::AutoMatchedNothing { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("server1 (10.0.0.1:6379)"), "{e}");
    }

    #[test]
    fn sidecar_auto_and_random() {
        // 127.0.0.1 is bindable, 192.0.2.x (TEST-NET-1) is not.
        let v = view(&["auto"]).unwrap();
        assert_eq!(v.local, vec![0, 1]);
        let random = SIDECAR.replace("hash: murmur", "distribution: random");
        let tw = parse_config(&random, None).unwrap();
        let v = sidecar(&tw, &["a".to_string()]).unwrap();
        assert!(v.placement.is_none());
        assert_eq!(v.owner_of(b"k"), None);
        assert_eq!(v.is_local(b"k"), None);
        assert_eq!(v.peer_hint()(b"k"), None);
        assert_eq!(v.peers().len(), 3);
    }

    #[test]
    fn sidecar_shared_address_is_local() {
        // Two names for one backend: when one is local, so is the other.
        let conf = "p:\n  redis: true\n  servers:\n   - 10.1.1.1:6379:1 x\n   - 10.1.1.1:6379:1 y\n   - 10.1.1.2:6379:1 z\n";
        let tw = parse_config(conf, None).unwrap();
        let v = sidecar(&tw, &["x".to_string()]).unwrap();
        assert_eq!(v.local, vec![0]);
        assert_eq!(v.locals().len(), 1);
        assert_eq!(v.peers().len(), 1);
        let hint = v.peer_hint();
        for i in 0..100 {
            let key = format!("k{i}");
            let owner = v.owner_of(key.as_bytes()).unwrap();
            assert_eq!(v.is_local(key.as_bytes()), Some(owner != 2));
            assert_eq!(hint(key.as_bytes()), (owner == 2).then_some(0));
        }
    }
}
