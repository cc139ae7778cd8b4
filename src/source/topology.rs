//! Which masters this relay replicates, and which other masters write into the same target.
//!
//! A relay replicates its *sources*. Everything else that writes into the target is a *peer*:
//! the other backends of the Twemproxy pool when the relay runs as a sidecar beside one of
//! them (`--local-server`), the masters named with `--peer`, or the other sources of the same
//! process. The relay never deletes a key from the target that a peer holds
//! (`crate::target::deletion`), so knowing the peers is what makes deletions safe. With a
//! Twemproxy pool the relay also knows *where* a key belongs (nutcracker's placement), which
//! tells which peer to ask first.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::endpoint::{Endpoint, Login, TlsOptions};
use crate::source::twemproxy::placement::Placement;
use crate::source::twemproxy::{self, TwemproxyError};

/// Where the masters come from (`--source` or `--twemproxy`).
#[derive(Debug, Clone)]
pub enum Sources {
    /// `--source URL ...`
    List(Vec<Endpoint>),
    /// `--twemproxy FILE [--pool NAME] [--local-server NAME ...]`: every backend of the pool,
    /// or (sidecar mode) only the local ones, the others being peers.
    Twemproxy {
        path: PathBuf,
        pool: Option<String>,
        local: Vec<String>,
        /// The backends' user and password instead of the pool's `redis_auth` (default: none).
        login: Login,
        /// `--source-tls`: the backends speak TLS, checked with these options (the file has
        /// only `host:port`).
        tls: Option<Arc<TlsOptions>>,
    },
}

/// Key -> the master it belongs to.
type OwnerFn = dyn Fn(&[u8]) -> Option<Endpoint> + Send + Sync;

/// The backend a key belongs to, as nutcracker routes it (None: not computable).
#[derive(Clone)]
pub struct KeyOwner(Arc<OwnerFn>);

impl KeyOwner {
    pub fn new(f: impl Fn(&[u8]) -> Option<Endpoint> + Send + Sync + 'static) -> Self {
        KeyOwner(Arc::new(f))
    }

    pub fn owner(&self, key: &[u8]) -> Option<Endpoint> {
        (self.0)(key)
    }
}

impl fmt::Debug for KeyOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyOwner(..)")
    }
}

/// The resolved picture.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Masters this relay replicates.
    pub sources: Vec<Endpoint>,
    /// Other masters writing into the target (pool peers, then `--peer`s).
    pub peers: Vec<Endpoint>,
    /// The sources and peers are every writer of the target (a Twemproxy pool is known whole).
    pub pool_known: bool,
    /// Nutcracker's placement, when computable (one pool, not `random`).
    pub owner: Option<KeyOwner>,
    /// The Twemproxy pool's name and, per source, its server name (for labels and logs).
    pub names: Vec<(Endpoint, String)>,
    /// Warnings to log (auto-eject pools, a placement that cannot be computed).
    pub warnings: Vec<String>,
}

/// A topology that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(transparent)]
    Twemproxy(#[from] TwemproxyError),
    #[error("{path}: no Redis backend found")]
    NoBackend { path: String },
    #[error("no source: give --twemproxy FILE or at least one --source URL")]
    NoSource,
    #[error("peer {0} is also a source of this relay")]
    PeerIsSource(String),
}

impl Topology {
    /// Read the Twemproxy config (if any) and split masters into sources and peers.
    pub fn resolve(sources: &Sources, extra_peers: &[Endpoint]) -> Result<Topology, TopologyError> {
        let mut t = match sources {
            Sources::List(eps) => Topology::of_list(eps)?,
            Sources::Twemproxy {
                path,
                pool,
                local,
                login,
                tls,
            } => {
                let mut tw = twemproxy::load_config(path, pool.as_deref())?;
                tw.set_login(login);
                tw.set_tls(tls.as_ref());
                if tw.backends.is_empty() {
                    return Err(TopologyError::NoBackend {
                        path: path.display().to_string(),
                    });
                }
                let warnings: Vec<String> = tw.auto_eject_pools().iter().map(|p| format!("pool {p}: auto_eject_hosts is true: while a backend was ejected, its keys were written to other backends, so one key may exist on two masters and the target keeps whichever wrote last")).collect();
                if local.is_empty() {
                    Topology::of_pools(tw, warnings)
                } else {
                    Topology::of_sidecar(&tw, local, warnings)?
                }
            }
        };
        t.add_peers(extra_peers)?;
        Ok(t)
    }

    /// `--source URL ...`: the sources, nothing known about other writers.
    fn of_list(eps: &[Endpoint]) -> Result<Topology, TopologyError> {
        if eps.is_empty() {
            return Err(TopologyError::NoSource);
        }
        Ok(Topology {
            sources: eps.to_vec(),
            peers: Vec::new(),
            pool_known: false,
            owner: None,
            names: Vec::new(),
            warnings: Vec::new(),
        })
    }

    /// Every backend of the selected pools is a source; placement is known for one pool.
    fn of_pools(tw: twemproxy::TwemproxySources, mut warnings: Vec<String>) -> Topology {
        let owner = match tw.pools.as_slice() {
            [one] => match Placement::for_pool(one) {
                Ok(p) => Some(server_owner(&one.servers, Arc::new(p))),
                Err(e) => {
                    warnings.push(e.to_string());
                    None
                }
            },
            _ => None,
        };
        let names = tw
            .backends
            .iter()
            .map(|b| {
                let n = b.name.clone().unwrap_or_else(|| b.endpoint.addr());
                (b.endpoint.clone(), format!("{} {n}", b.pool))
            })
            .collect();
        Topology {
            sources: tw.backends.into_iter().map(|b| b.endpoint).collect(),
            peers: Vec::new(),
            pool_known: true,
            owner,
            names,
            warnings,
        }
    }

    /// A sidecar: the local servers of the pool are the sources, the others its peers.
    fn of_sidecar(
        tw: &twemproxy::TwemproxySources,
        local: &[String],
        mut warnings: Vec<String>,
    ) -> Result<Topology, TopologyError> {
        let view = twemproxy::sidecar(tw, local)?;
        let owner = view
            .placement
            .clone()
            .map(|p| server_owner(&view.pool.servers, p));
        if view.placement.is_none() {
            warnings.push(format!("pool {}: distribution random: nutcracker picks a server per request, so where a key belongs cannot be computed; every peer is asked", view.pool.name));
        }
        let names = view
            .local
            .iter()
            .map(|&i| {
                let s = &view.pool.servers[i];
                let n = s.name.clone().unwrap_or_else(|| s.address.clone());
                (s.endpoint.clone(), format!("{} {n}", view.pool.name))
            })
            .collect();
        Ok(Topology {
            sources: view.locals(),
            peers: view.peers(),
            pool_known: true,
            owner,
            names,
            warnings,
        })
    }

    /// `--peer`s: other writers of the target, never one of the sources.
    fn add_peers(&mut self, extra_peers: &[Endpoint]) -> Result<(), TopologyError> {
        for p in extra_peers {
            if self.sources.contains(p) {
                return Err(TopologyError::PeerIsSource(p.to_string()));
            }
            if !self.peers.contains(p) {
                self.peers.push(p.clone());
            }
        }
        Ok(())
    }
}

/// The key owner of a pool's placement: the endpoint of the server a key hashes to.
fn server_owner(servers: &[twemproxy::ServerLine], placement: Arc<Placement>) -> KeyOwner {
    let servers: Vec<Endpoint> = servers.iter().map(|s| s.endpoint.clone()).collect();
    KeyOwner::new(move |k| Some(servers[placement.owner(k)].clone()))
}
