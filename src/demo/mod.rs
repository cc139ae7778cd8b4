//! `redis-relay demo`: the relay at work in one command, for a newcomer on a fresh clone.
//!
//! Starts two masters, a target and nutcracker in front of the masters (free loopback ports,
//! everything in a temp dir), preloads the masters ([`preload`]), writes through nutcracker
//! during the sync ([`load`]), prints what to look at ([`guide`]); `main.rs` then runs the very
//! `sync` of the command line on it. Every server and the temp dir go away when [`Demo`] is
//! dropped: on Ctrl-C, on a relay failure and on a panic alike.
//!
//! In data-flow order: [`bins`] (where the programs are), [`workdir`], [`procs`] (the servers),
//! [`preload`], [`load`], [`guide`]; [`interrupt`] watches for Ctrl-C during the setup.

mod bins;
mod error;
mod guide;
mod interrupt;
mod load;
mod preload;
mod procs;
mod workdir;

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use redis_relay::config::RunOptions;
use redis_relay::source::twemproxy::{load_config, placement::Placement};

pub use error::DemoError;
pub use interrupt::Interrupt;
use load::Load;
use preload::Preloaded;
use procs::Server;
use workdir::WorkDir;

/// The masters' config beyond the defaults: a snapshot written to disk first, so that its size
/// is known and `sync` draws a bar (a diskless one is a spinner), sent without the diskless
/// 5 s delay; a backlog that holds minutes of the demo's writes (the precheck's advice).
const MASTER_CONFIG: &[&str] = &["repl-diskless-sync no", "repl-backlog-size 64mb"];

/// The options of `redis-relay demo`.
#[derive(Args, Clone, Debug)]
pub struct DemoArgs {
    /// Keys preloaded into the masters before the sync (strings, hashes, lists, sets, zsets).
    #[arg(long, default_value_t = 500_000)]
    pub keys: u64,
    /// Writes per second through nutcracker while the relay runs (0: none).
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// Keep the temp dir (servers' data and logs, nutcracker.yml, relay state) on exit.
    #[arg(long)]
    pub keep: bool,
    /// Look for redis-server and nutcracker only in this directory [default: PATH, then
    /// /usr/sbin and /usr/bin].
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// The demo's servers, load and temp dir. Dropping it stops them all and removes the dir
/// (fields drop in this order: the load, then the servers, then the dir).
pub struct Demo {
    load: Option<Load>,
    /// Masters, then the target, then nutcracker.
    servers: Vec<Server>,
    dir: WorkDir,
    config: PathBuf,
    metrics_port: u16,
    preloaded: Preloaded,
}

impl Demo {
    /// Everything up and loaded, the write load running; [`DemoError::Interrupted`] when a
    /// signal came meanwhile (what was started is stopped).
    pub fn start(args: &DemoArgs, interrupt: &Interrupt) -> Result<Demo, DemoError> {
        let bins = bins::find(args.bin_dir.as_deref())?;
        let dir = WorkDir::create(args.keep)?;
        let mut servers = Vec::new();
        for (name, sub) in [("master 1", "master1"), ("master 2", "master2")] {
            let dir = dir.subdir(sub)?;
            servers.push(procs::start_redis(
                &bins.redis_server,
                name,
                &dir,
                MASTER_CONFIG,
            )?);
        }
        let target_dir = dir.subdir("target")?;
        servers.push(procs::start_redis(
            &bins.redis_server,
            "target",
            &target_dir,
            &[],
        )?);
        let masters = [servers[0].addr(), servers[1].addr()];
        let (proxy, config) = procs::start_nutcracker(&bins.nutcracker, dir.path(), |p| {
            nutcracker_yml(p, &masters)
        })?;
        servers.push(proxy);
        let up: Vec<String> = servers
            .iter()
            .map(|s| format!("{} at {}", s.name, s.addr()))
            .collect();
        tracing::info!("in {}: {}", dir.path().display(), up.join(", "));
        let placement = placement(&config)?;
        if interrupt.is_set() {
            return Err(DemoError::Interrupted);
        }
        tracing::info!("preloading {} keys into the masters", args.keys);
        let eps = [servers[0].endpoint(), servers[1].endpoint()];
        let preloaded = preload::preload(&eps, &placement, args.keys)?;
        tracing::info!("preloaded {} keys in {:.1?}", args.keys, preloaded.elapsed);
        if interrupt.is_set() {
            return Err(DemoError::Interrupted);
        }
        let load = Some(Load::start(servers[3].endpoint(), args.rate));
        Ok(Demo {
            load,
            servers,
            dir,
            config,
            metrics_port: procs::free_port()?,
            preloaded,
        })
    }

    /// The options of the `sync` the demo runs: nutcracker's config, the target, the state dir
    /// in the temp dir, metrics on a free port, a heartbeat for the lag in seconds.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            twemproxy: Some(self.config.clone()),
            target: Some(vec![format!("redis://{}", self.servers[2].addr())]),
            state_dir: Some(self.dir.path().join("relay-state")),
            metrics_addr: Some(([127, 0, 0, 1], self.metrics_port).into()),
            heartbeat: Some(Duration::from_secs(1)),
            ..RunOptions::default()
        }
    }

    /// The addresses and what to try, as printed before the sync.
    pub fn guide(&self) -> guide::Guide {
        guide::Guide {
            dir: self.dir.path().to_path_buf(),
            keep: self.dir.kept(),
            masters: (0..2)
                .map(|i| (self.servers[i].port, self.preloaded.per_master[i]))
                .collect(),
            target: self.servers[2].port,
            proxy: self.servers[3].port,
            config: self.config.clone(),
            metrics: self.metrics_port,
            program: guide::program(),
        }
    }

    /// Stop the load, then every server, then remove the temp dir (unless kept); says so.
    pub fn finish(self) {
        let Demo {
            load,
            mut servers,
            dir,
            ..
        } = self;
        let writes = load.map(Load::stop).unwrap_or(0);
        tracing::info!("{writes} writes went through nutcracker; stopping the servers");
        procs::stop_all(&mut servers);
        let (path, kept) = (dir.path().to_path_buf(), dir.kept());
        drop(dir);
        let done = if kept { "kept" } else { "removed" };
        tracing::info!("servers stopped; {done} {}", path.display());
    }
}

/// One pool `alpha` over the masters, hashed and distributed as the README's quick start.
fn nutcracker_yml(port: u16, masters: &[String]) -> String {
    let mut yaml = format!(
        "alpha:\n  listen: 127.0.0.1:{port}\n  hash: murmur\n  distribution: ketama\n  redis: true\n  auto_eject_hosts: false\n  servers:\n"
    );
    for (i, m) in masters.iter().enumerate() {
        yaml.push_str(&format!("   - {m}:1 server{}\n", i + 1));
    }
    yaml
}

/// Where nutcracker puts each key, read back from the config it runs with.
fn placement(config: &std::path::Path) -> Result<Placement, DemoError> {
    let tw = load_config(config, None).map_err(|e| DemoError::Config(e.to_string()))?;
    let pool = tw
        .pools
        .first()
        .ok_or_else(|| DemoError::Config("no pool".into()))?;
    Placement::for_pool(pool).map_err(|e| DemoError::Config(e.to_string()))
}
