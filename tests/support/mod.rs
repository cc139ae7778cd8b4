//! Real servers for the tests: `redis-server` and `nutcracker` processes on free loopback ports,
//! and Redis Clusters of them, started by the test and stopped (SIGTERM, then SIGKILL) when
//! dropped.

#![allow(dead_code)]

pub mod fault_proxy;
pub mod modern;
pub mod tls;
pub mod workload;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use redis_relay::resp::{encode_command, parse_reply, Reply};

/// The corpus shared by every developer and CI run; tests fail, never skip, without it.
pub fn corpus_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    assert!(
        dir.join("README.md").is_file(),
        "the corpus is missing: expected it at {} (../shared/corpus from the crate root)",
        dir.display()
    );
    dir
}

/// Run the `redis-relay` binary to completion (logs at `warn`, no target from the environment).
pub fn relay_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_redis-relay"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("REDIS_RELAY_TARGET")
        .output()
        .expect("run redis-relay")
}

/// `redis-relay <subcommand> --json <args>`: (exit code, the JSON report on stdout).
pub fn relay_json(subcommand: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec![subcommand, "--json"];
    all.extend_from_slice(args);
    let out = relay_cli(&all);
    let text = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

/// The line of a `check --json` report with this check whose subject contains `subject`.
pub fn check_line<'a>(
    report: &'a serde_json::Value,
    check: &str,
    subject: &str,
) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .expect("a check report")
        .iter()
        .find(|c| c["check"] == check && c["subject"].as_str().unwrap_or("").contains(subject))
        .unwrap_or_else(|| panic!("no {check} line for {subject} in {report:#}"))
}

/// A port that was free a moment ago (the OS picks it; the race with other tests is retried
/// by the callers that start servers).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn which(candidates: &[&str]) -> PathBuf {
    for c in candidates {
        let p = Path::new(c);
        if p.is_file() {
            return p.to_path_buf();
        }
    }
    panic!(
        "none of {candidates:?} exists: install the Debian packages redis-server, redis-tools and nutcracker (.ci/run does)"
    )
}

pub fn redis_server_bin() -> PathBuf {
    which(&["/usr/bin/redis-server", "/usr/local/bin/redis-server"])
}

pub fn redis_cli_bin() -> PathBuf {
    which(&["/usr/bin/redis-cli", "/usr/local/bin/redis-cli"])
}

pub fn nutcracker_bin() -> PathBuf {
    which(&[
        "/usr/sbin/nutcracker",
        "/usr/bin/nutcracker",
        "/usr/local/sbin/nutcracker",
    ])
}

/// A `redis-server` child process with its own temp dir.
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl RedisServer {
    /// Start a server with `save ""`, no AOF, and the extra `config` lines (`["requirepass x"]`).
    pub fn start(config: &[&str]) -> RedisServer {
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            match Self::try_start(port, config) {
                Ok(s) => return s,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start redis-server: {last_err}");
    }

    /// Start a server on a given port (to restart one that was stopped, at the address its
    /// clients know). Retries for a few seconds while the old process releases the port.
    pub fn start_on(port: u16, config: &[&str]) -> RedisServer {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Self::try_start(port, config) {
                Ok(s) => return s,
                Err(e) if Instant::now() > deadline => {
                    panic!("could not start redis-server on port {port}: {e}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// One attempt on `port`: an error (with the server's log) when it does not come up.
    pub fn try_start(port: u16, config: &[&str]) -> Result<RedisServer, String> {
        Self::try_start_bin(&redis_server_bin(), port, config)
    }

    /// [`RedisServer::start`] of another server binary (`support::modern`'s Redis 8 and Valkey).
    pub fn start_bin(bin: &Path, config: &[&str]) -> RedisServer {
        let mut last_err = String::new();
        for _ in 0..5 {
            match Self::try_start_bin(bin, free_port(), config) {
                Ok(s) => return s,
                Err(e) => last_err = e,
            }
        }
        panic!("could not start {}: {last_err}", bin.display());
    }

    /// [`RedisServer::try_start`] of the server binary `bin`.
    pub fn try_start_bin(bin: &Path, port: u16, config: &[&str]) -> Result<RedisServer, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let conf_path = write_conf(dir.path(), port, config).map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut server = RedisServer { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        let password = config
            .iter()
            .find_map(|l| l.strip_prefix("requirepass "))
            .map(|p| p.trim_matches('"').to_string());
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(server.dir.path().join("redis.log"))
                    .unwrap_or_default();
                return Err(format!("redis-server exited with {status}: {log}"));
            }
            if let Ok(mut c) = Client::connect(port) {
                if let Some(p) = &password {
                    let _ = c.cmd(&["AUTH", p]);
                }
                if let Ok(Reply::Simple(_)) = c.try_cmd(&["PING"]) {
                    return Ok(server);
                }
            }
            if Instant::now() > deadline {
                return Err("redis-server did not answer PING within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port).expect("connect to test redis-server")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Write `dir/redis.conf` for a server on `port` (loopback, no persistence, logging to
/// `dir/redis.log`) with the extra `config` lines (a later `bind` line replaces the first).
pub fn write_conf(dir: &Path, port: u16, config: &[&str]) -> std::io::Result<PathBuf> {
    let mut conf = format!(
        "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndaemonize no\ndir {}\nlogfile {}/redis.log\n",
        dir.display(),
        dir.display()
    );
    for line in config {
        conf.push_str(line);
        conf.push('\n');
    }
    let conf_path = dir.join("redis.conf");
    std::fs::write(&conf_path, conf)?;
    Ok(conf_path)
}

/// A Redis Cluster of masters with one replica each, every node a [`RedisServer`] with
/// `cluster-enabled yes` on a free loopback port whose cluster bus port (port + 10000) was free
/// too, created by `redis-cli --cluster create ... --cluster-replicas 1`. Stopped when dropped.
pub struct RedisCluster {
    /// Every node, in the order given to `redis-cli --cluster create`.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `masters` masters and as many replicas, all answering `cluster_state:ok`, every replica
    /// linked to its master. Retries on new ports when a port was taken meanwhile.
    pub fn start(masters: usize) -> RedisCluster {
        Self::start_with(masters, &[])
    }

    /// [`RedisCluster::start`] with `config` lines added to every node's.
    pub fn start_with(masters: usize, config: &[&str]) -> RedisCluster {
        let mut last = String::new();
        for _ in 0..4 {
            match Self::try_start(masters, config) {
                Ok(c) => return c,
                Err(e) => last = e,
            }
        }
        panic!("could not start a Redis Cluster of {masters} masters: {last}");
    }

    fn try_start(masters: usize, config: &[&str]) -> Result<RedisCluster, String> {
        let mut nodes = Vec::new();
        for port in cluster_ports(masters * 2)? {
            let conf = format!("cluster-config-file nodes-{port}.conf");
            let mut lines = vec![
                "cluster-enabled yes",
                &conf,
                "cluster-node-timeout 5000",
                // Replication offsets move within a second of the sync, so that every node
                // soon counts every replica as available (`CLUSTER SLOTS` leaves out
                // replicas at offset 0).
                "repl-ping-replica-period 1",
            ];
            lines.extend_from_slice(config);
            nodes.push(RedisServer::try_start(port, &lines)?);
        }
        let out = Command::new(redis_cli_bin())
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| n.addr()))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run redis-cli: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "redis-cli --cluster create exited with {}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let cluster = RedisCluster { nodes };
        cluster.wait_ready(masters, Duration::from_secs(60))?;
        Ok(cluster)
    }

    /// Every node says `cluster_state:ok` with all slots assigned and every node known, sees
    /// `masters` masters and as many replicas, and every replica's link is up.
    fn wait_ready(&self, masters: usize, limit: Duration) -> Result<(), String> {
        let mut last = String::new();
        let ready = wait_until(limit, || {
            self.nodes.iter().all(|n| {
                let mut c = n.client();
                let info = c.cmd(&["CLUSTER", "INFO"]).as_text().unwrap_or_default();
                let field = |f: &str| {
                    info.lines()
                        .find_map(|l| l.strip_prefix(&format!("{f}:")))
                        .map(|v| v.trim().to_string())
                };
                let nodes = cluster_nodes(&mut c);
                let count = |role: &str| nodes.iter().filter(|l| l.role == role).count();
                let link_up = c.info_field("replication", "role").as_deref() == Some("master")
                    || c.info_field("replication", "master_link_status").as_deref() == Some("up");
                let ok = field("cluster_state").as_deref() == Some("ok")
                    && field("cluster_slots_assigned").as_deref() == Some("16384")
                    && field("cluster_known_nodes") == Some((masters * 2).to_string())
                    && count("master") == masters
                    && count("slave") == masters
                    && link_up
                    && slots_nodes(&mut c) == masters * 2;
                if !ok {
                    last = format!("node {}: {info}", n.port);
                }
                ok
            })
        });
        if ready {
            Ok(())
        } else {
            Err(format!("cluster not ready within {limit:?}: {last}"))
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `redis://127.0.0.1:<port>` of the first node.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    pub fn client(&self, port: u16) -> Client {
        Client::connect(port).expect("connect to a cluster node")
    }

    /// What the first node's `CLUSTER NODES` says, one entry per node.
    pub fn view(&self) -> Vec<ClusterNodeLine> {
        cluster_nodes(&mut self.nodes[0].client())
    }

    /// Ports of the masters, as `CLUSTER NODES` says.
    pub fn master_ports(&self) -> Vec<u16> {
        self.ports_of("master")
    }

    /// Ports of the replicas, as `CLUSTER NODES` says.
    pub fn replica_ports(&self) -> Vec<u16> {
        self.ports_of("slave")
    }

    fn ports_of(&self, role: &str) -> Vec<u16> {
        self.view()
            .iter()
            .filter(|l| l.role == role)
            .map(|l| l.port)
            .collect()
    }

    /// Keys on every node (masters and replicas) together.
    pub fn total_keys(&self) -> i64 {
        self.nodes
            .iter()
            .map(|n| n.client().cmd(&["DBSIZE"]).as_int().unwrap_or(-1))
            .sum()
    }
}

/// How many nodes `CLUSTER SLOTS` names (masters, and the replicas it counts as available).
fn slots_nodes(c: &mut Client) -> usize {
    let mut ids = std::collections::BTreeSet::new();
    if let Reply::Array(Some(ranges)) = c.cmd(&["CLUSTER", "SLOTS"]) {
        for range in ranges {
            if let Reply::Array(Some(items)) = range {
                for node in items.iter().skip(2) {
                    if let Reply::Array(Some(fields)) = node {
                        ids.extend(fields.get(2).and_then(Reply::as_text));
                    }
                }
            }
        }
    }
    ids.len()
}

/// One line of `CLUSTER NODES`: `id ip:port@cport[,hostname] flags master ping pong epoch link
/// slots...`.
#[derive(Debug, Clone)]
pub struct ClusterNodeLine {
    pub id: String,
    pub port: u16,
    /// `master` or `slave`.
    pub role: String,
    /// Slot ranges served (`[slot->-id]` / `[slot-<-id]` migration marks left out).
    pub slots: Vec<(u16, u16)>,
}

fn cluster_nodes(c: &mut Client) -> Vec<ClusterNodeLine> {
    let text = c.cmd(&["CLUSTER", "NODES"]).as_text().unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let addr = f[1].split(['@', ',']).next().unwrap_or("");
            let port = addr.rsplit(':').next().unwrap_or("0").parse().unwrap_or(0);
            let flags: Vec<&str> = f[2].split(',').collect();
            let role = if flags.contains(&"master") {
                "master"
            } else if flags.contains(&"slave") {
                "slave"
            } else {
                "other"
            };
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| match s.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (s.parse().unwrap(), s.parse().unwrap()),
                })
                .collect();
            ClusterNodeLine {
                id: f[0].to_string(),
                port,
                role: role.to_string(),
                slots,
            }
        })
        .collect()
}

/// `n` distinct loopback ports, each free a moment ago with its cluster bus port (+10000)
/// free too, no port being another's bus port.
fn cluster_ports(n: usize) -> Result<Vec<u16>, String> {
    let mut ports: Vec<u16> = Vec::new();
    for _ in 0..10_000 {
        if ports.len() == n {
            return Ok(ports);
        }
        let p = free_port();
        let Some(bus) = p.checked_add(10_000) else {
            continue;
        };
        let clash = ports
            .iter()
            .any(|&q| q == p || q == bus || q.checked_add(10_000) == Some(p));
        if clash || TcpListener::bind(("127.0.0.1", bus)).is_err() {
            continue;
        }
        ports.push(p);
    }
    Err(format!(
        "found only {} ports with a free bus port",
        ports.len()
    ))
}

/// SIGTERM, wait up to 5 s, then SIGKILL.
pub fn stop_child(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A minimal blocking client built on the crate's own RESP code (no HELLO, no CLIENT SETINFO:
/// nutcracker refuses those).
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    pub fn connect(port: u16) -> std::io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            stream,
            buf: BytesMut::new(),
        })
    }

    /// Send one command and return its reply, error replies included.
    pub fn try_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<Reply> {
        let mut out = BytesMut::new();
        encode_command(&mut out, args);
        self.stream.write_all(&out)?;
        self.read_reply()
    }

    /// Send one command; panics on an I/O error or an error reply.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        let r = self.try_cmd(args).expect("redis I/O");
        if let Reply::Error(e) = &r {
            panic!(
                "{:?} failed: {}",
                args.iter()
                    .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
                    .collect::<Vec<_>>(),
                String::from_utf8_lossy(e)
            );
        }
        r
    }

    /// Pipeline many commands, then read all replies.
    pub fn pipeline<A: AsRef<[u8]>>(&mut self, cmds: &[Vec<A>]) -> Vec<Reply> {
        let mut out = BytesMut::new();
        for c in cmds {
            encode_command(&mut out, c);
        }
        self.stream.write_all(&out).expect("redis I/O");
        (0..cmds.len())
            .map(|_| self.read_reply().expect("redis I/O"))
            .collect()
    }

    pub fn read_reply(&mut self) -> std::io::Result<Reply> {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
            {
                let _ = self.buf.split_to(used);
                return Ok(reply);
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn info_field(&mut self, section: &str, field: &str) -> Option<String> {
        let text = self.cmd(&["INFO", section]).as_text()?;
        text.lines().find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
    }
}

/// A `nutcracker` (Twemproxy) in front of some servers, with its YAML config on disk.
pub struct Nutcracker {
    pub port: u16,
    pub config_path: PathBuf,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Nutcracker {
    /// One pool `alpha` in redis mode over `backends` (`127.0.0.1:port`).
    pub fn start(backends: &[String]) -> Nutcracker {
        Self::start_yaml(|port| {
            let mut yaml = format!(
                "alpha:\n  listen: 127.0.0.1:{port}\n  hash: murmur\n  distribution: ketama\n  redis: true\n  auto_eject_hosts: false\n  server_retry_timeout: 2000\n  servers:\n"
            );
            for (i, b) in backends.iter().enumerate() {
                yaml.push_str(&format!("   - {b}:1 server{i}\n"));
            }
            yaml
        })
    }

    /// Any config: `yaml(port)` must make the first pool listen on `127.0.0.1:port`, and that
    /// pool must answer GET (a Redis pool with its backends up).
    pub fn start_yaml(yaml: impl Fn(u16) -> String) -> Nutcracker {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let stats = free_port();
            let yaml = yaml(port);
            let config_path = dir.path().join("nutcracker.yml");
            std::fs::write(&config_path, &yaml).expect("write nutcracker config");
            let mut child = Command::new(nutcracker_bin())
                .arg("-c")
                .arg(&config_path)
                .arg("-s")
                .arg(stats.to_string())
                .arg("-o")
                .arg(dir.path().join("nutcracker.log"))
                .arg("-p")
                .arg(dir.path().join("nutcracker.pid"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nutcracker");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(st)) = child.try_wait() {
                    last = format!(
                        "nutcracker exited with {st} on\n{yaml}\nlog: {}",
                        std::fs::read_to_string(dir.path().join("nutcracker.log"))
                            .unwrap_or_default()
                    );
                    break;
                }
                if let Ok(mut c) = Client::connect(port) {
                    if let Ok(Reply::Bulk(_)) = c.try_cmd(&["GET", "nutcracker:probe"]) {
                        return Nutcracker {
                            port,
                            config_path,
                            dir,
                            child,
                        };
                    }
                }
                if Instant::now() > deadline {
                    stop_child(&mut child);
                    last = "nutcracker did not answer within 10 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start nutcracker: {last}");
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port).expect("connect to nutcracker")
    }
}

impl Drop for Nutcracker {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// The relay binary, started as a child process with its stderr in a log file.
pub struct Relay {
    pub child: Child,
    pub log: PathBuf,
    pub metrics_port: u16,
}

impl Relay {
    /// `redis-relay sync` with `args` plus `--metrics-addr` on a free port.
    pub fn start_sync(args: &[String], log_dir: &Path) -> Relay {
        Self::start_sync_with(args, log_dir, true)
    }

    /// [`Relay::start_sync`], with `-q` only when `quiet`.
    pub fn start_sync_with(args: &[String], log_dir: &Path, quiet: bool) -> Relay {
        let metrics_port = free_port();
        let log = log_dir.join(format!("relay-{}.log", metrics_port));
        let file = std::fs::File::create(&log).expect("relay log file");
        let child = Command::new(env!("CARGO_BIN_EXE_redis-relay"))
            .arg("sync")
            .args(args)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .args(quiet.then_some("-q"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn redis-relay");
        Relay {
            child,
            log,
            metrics_port,
        }
    }

    /// [`Relay::start_sync`], then wait (30 s at most) until the snapshot of `source`
    /// (`host:port`) is applied; panics with the log otherwise.
    pub fn start_synced(args: &[String], log_dir: &Path, source: &str) -> Relay {
        let relay = Self::start_sync(args, log_dir);
        assert!(
            wait_until(Duration::from_secs(30), || relay
                .metric("redis_relay_snapshot_done", source)
                == Some(1.0)),
            "snapshot not applied:\n{}",
            relay.log_text()
        );
        relay
    }

    /// The Prometheus text, or an empty string while the listener is not up.
    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").unwrap_or_default()
    }

    /// Value of `name{source="<source>"...}` in the metrics, if present.
    pub fn metric(&self, name: &str, source: &str) -> Option<f64> {
        let text = self.metrics();
        let label = format!("source=\"{source}\"");
        text.lines()
            .filter(|l| {
                l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(&label)
            })
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait up to `limit`; returns the exit code and the time it took.
    pub fn terminate(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        while started.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return (st.code(), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (None, started.elapsed())
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP GET on loopback (the metrics endpoint).
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out))
}

/// Poll `f` until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// `verify` of the union of `sources` against `target`, re-checking keys in flight, every
/// difference kept in the report.
pub fn verify_union(sources: &[String], target: &str) -> redis_relay::verify::VerifyReport {
    use redis_relay::endpoint::Endpoint;
    use redis_relay::verify::compare::CompareOptions;
    use redis_relay::verify::{verify, VerifyOptions};
    let eps: Vec<Endpoint> = sources
        .iter()
        .map(|s| Endpoint::parse(s).expect("source address"))
        .collect();
    verify(
        &eps,
        &Endpoint::parse(target).expect("target address"),
        &VerifyOptions {
            recheck_rounds: 10,
            compare: CompareOptions {
                max_differences: usize::MAX,
                ..CompareOptions::default()
            },
            ..VerifyOptions::default()
        },
    )
    .expect("verify runs")
}

/// Compare the union of `sources` with `target` (re-checking keys in flight) and panic with the
/// report and `log` when they differ.
pub fn assert_union_equal(sources: &[String], target: &str, log: &str) {
    let report = verify_union(sources, target);
    assert!(report.is_equal(), "target differs:\n{report}\nlog:\n{log}");
}

/// Keys of the current database outside `prefix` (the relay's own records and heartbeats live
/// under `redis-relay:`): DBSIZE minus a SCAN count of `prefix*`.
pub fn keys_outside_prefix(c: &mut Client, prefix: &str) -> i64 {
    let total = c.cmd(&["DBSIZE"]).as_int().unwrap_or(-1);
    let pattern = format!("{prefix}*");
    let mut cursor = "0".to_string();
    let mut inside = 0i64;
    loop {
        let Reply::Array(Some(parts)) =
            c.cmd(&["SCAN", &cursor, "MATCH", &pattern, "COUNT", "1000"])
        else {
            panic!("SCAN did not answer an array");
        };
        cursor = parts[0].as_text().unwrap_or_default();
        if let Reply::Array(Some(keys)) = &parts[1] {
            inside += keys.len() as i64;
        }
        if cursor == "0" {
            return total - inside;
        }
    }
}

/// Whether something accepts TCP connections on the loopback `port`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .is_ok()
}
/// A minimal HTTP GET on loopback: (status code, body). `None` while nothing answers.
pub fn http_get_with_code(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// `GET /status` of a relay as JSON (`Null` while it does not answer).
pub fn relay_status(port: u16) -> serde_json::Value {
    match http_get_with_code(port, "/status") {
        Some((200, body)) => serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::Null,
    }
}
pub mod capture_master;
pub mod faults;
