//! Scripted end-to-end benchmark: real `redis-server`s and `nutcracker` on free loopback ports in
//! a temp dir, the `redis-relay sync` binary as a child process, and the baselines measured in
//! the same run. Prints a markdown table.
//!
//! ```sh
//! cargo build --release && cargo run --release --example e2e_bench -- [--keys N] [--quick] [--cluster]
//! RELAY_BIN=/path/to/old/redis-relay cargo run --release --example e2e_bench -- --keys N  # another build
//! ```
//!
//! Scenarios (see docs/performance.md):
//! - full sync: two masters behind nutcracker, N keys of mixed types; the relay into an empty
//!   target vs two native replicas (REPLICAOF, in parallel) and `redis-cli --pipe` of the same
//!   data into an empty server;
//! - catch-up: target paused (`CLIENT PAUSE <ms> WRITE`), `redis-benchmark -P 16` through
//!   nutcracker, unpause, time until the relay has applied everything vs `redis-benchmark -P 64`
//!   straight at the target;
//! - steady lag: probe keys SET on one master under a steady load, watched on the target and on
//!   a real replica of that master;
//! - memory: the relay's peak RSS (VmHWM, reset between phases through `/proc/<pid>/clear_refs`)
//!   during the full sync, the catch-up, and a sync of one 5,000,000-element list plus one
//!   2,000,000-field hash.
//! - `--dataset value-heavy|key-heavy|both`: the data set (value-heavy by default; key-heavy is
//!   issue 18's, 90% 100-byte strings); `both` runs the script once for each. Issue 18's goals
//!   are a second table (`e2e_bench/goals.rs`): the full sync against **one native replica of
//!   the target** once it holds everything (beside the two-replica baseline), every catch-up
//!   round against its own baseline, the p99 lag, the relay's RSS.
//! - `--scale`: instead of the above, the full sync and the catch-up at 10,000,000 small keys,
//!   sized to fit the machine's memory; see `e2e_bench/scale.rs`.
//! - `--cluster`: also a Redis Cluster of 3 masters with a replica each as a second target: the
//!   full sync of the same data next to the single target's, and catch-up rounds with every
//!   master paused against the cluster's own ingest (`redis-benchmark --cluster -P 64`); see
//!   `e2e_bench/cluster.rs`.
//! - `--versions`: instead of the above, the full sync of the same data from a Redis 7.0, a
//!   Redis 8.0 and a Valkey 9.1 master, with the relay's and the masters' memory; see
//!   `e2e_bench/versions.rs`.
//!
//! "The target holds everything" is decided from the relay's metrics (`--metrics-addr`):
//! `redis_relay_snapshot_done` is 1 for every source, `redis_relay_lag_bytes` is 0 for every
//! source and `redis_relay_master_offset` equals each master's own `master_repl_offset`.
//! Afterwards (not timed) the target's DBSIZE (minus the relay's own `redis-relay:` keys) is
//! compared with the masters' and a random sample of keys is compared by type and string value.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use redis_relay::batch::record;
use redis_relay::resp::{encode_command, parse_reply, Reply};

use dataset::Dataset;

#[path = "e2e_bench/cluster.rs"]
mod cluster;
#[path = "e2e_bench/dataset.rs"]
mod dataset;
#[path = "e2e_bench/goals.rs"]
mod goals;
#[path = "e2e_bench/scale.rs"]
mod scale;
#[path = "e2e_bench/versions.rs"]
mod versions;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

// ---------------------------------------------------------------------------------------------
// Options

struct Opts {
    keys: u64,
    big_list: u64,
    big_hash: u64,
    catchup_n: u64,
    /// Catch-up rounds (relay, then the baseline), compared by their medians.
    catchup_rounds: usize,
    probes: usize,
    steady_rate: u64,
    size_label: &'static str,
    /// Directory for `perf record` profiles of the relay (full sync, catch-up, big keys).
    perf_dir: Option<PathBuf>,
    /// Only write the generated data set (RESP) to this file and exit (for offline profiling:
    /// `redis-cli --pipe < FILE`, `SAVE`, then `redis-relay restore`).
    gen_only: Option<PathBuf>,
    /// Also a Redis Cluster of 3 masters as a second target (see [`cluster`]).
    cluster: bool,
    /// The scale run instead (see [`scale`]): 10,000,000 small keys unless `--keys` says.
    scale: bool,
    /// The masters-of-each-version run instead (see [`versions`]): 500,000 keys unless
    /// `--keys` says.
    versions: bool,
    /// The data sets of the normal run, one after the other (`--dataset`, see [`dataset`]).
    datasets: Vec<Dataset>,
}

fn parse_opts() -> Opts {
    let mut keys: Option<u64> = None;
    let mut quick = false;
    let mut perf_dir = None;
    let mut gen_only = None;
    let mut cluster = false;
    let mut scale = false;
    let mut versions = false;
    let mut datasets = vec![Dataset::ValueHeavy];
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--keys" => {
                keys = Some(
                    it.next()
                        .and_then(|v| v.replace([',', '_'], "").parse().ok())
                        .expect("--keys N"),
                )
            }
            "--quick" => quick = true,
            "--cluster" => cluster = true,
            "--scale" => scale = true,
            "--versions" => versions = true,
            "--dataset" => {
                datasets = Dataset::parse(&it.next().expect("--dataset value-heavy|key-heavy|both"))
            }
            "--perf" => perf_dir = Some(PathBuf::from(it.next().expect("--perf DIR"))),
            "--gen-only" => gen_only = Some(PathBuf::from(it.next().expect("--gen-only FILE"))),
            "-h" | "--help" => {
                eprintln!("usage: e2e_bench [--keys N] [--quick] [--dataset value-heavy|key-heavy|both] [--cluster] [--scale] [--versions] [--perf DIR] [--gen-only FILE]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other} (usage: e2e_bench [--keys N] [--quick])"),
        }
    }
    if quick {
        Opts {
            keys: keys.unwrap_or(50_000),
            big_list: 500_000,
            big_hash: 200_000,
            catchup_n: 25_000,
            catchup_rounds: 1,
            probes: 200,
            steady_rate: 5_000,
            size_label: "quick",
            perf_dir,
            gen_only,
            cluster,
            scale,
            versions,
            datasets,
        }
    } else {
        Opts {
            keys: keys.unwrap_or(if scale {
                10_000_000
            } else if versions {
                500_000
            } else {
                1_000_000
            }),
            big_list: 5_000_000,
            big_hash: 2_000_000,
            catchup_n: 200_000,
            catchup_rounds: 3,
            probes: 1_000,
            steady_rate: 10_000,
            size_label: "full",
            perf_dir,
            gen_only,
            cluster,
            scale,
            versions,
            datasets,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn find_bin(candidates: &[&str]) -> PathBuf {
    for c in candidates {
        if Path::new(c).is_file() {
            return PathBuf::from(c);
        }
    }
    panic!("none of {candidates:?} exists (apt-get install redis-server redis-tools nutcracker)")
}

fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Debian's `redis-server` (Redis 7.0 on Debian 12).
fn system_server() -> PathBuf {
    find_bin(&["/usr/bin/redis-server", "/usr/local/bin/redis-server"])
}

struct Server {
    port: u16,
    child: Child,
}

impl Server {
    fn start(dir: &Path, name: &str, extra: &[&str]) -> Server {
        Server::start_bin(dir, name, &system_server(), extra)
    }

    /// [`Server::start`] with another server binary (a Redis 8 or Valkey launcher).
    fn start_bin(dir: &Path, name: &str, bin: &Path, extra: &[&str]) -> Server {
        for _ in 0..5 {
            if let Some(s) = Server::start_at(dir, name, bin, free_port(), extra) {
                return s;
            }
        }
        panic!("could not start {} as {name}", bin.display());
    }

    /// One attempt on `port`: `None` when the server does not answer PING within 10 s.
    fn start_at(dir: &Path, name: &str, bin: &Path, port: u16, extra: &[&str]) -> Option<Server> {
        let sdir = dir.join(name);
        std::fs::create_dir_all(&sdir).unwrap();
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndaemonize no\ndir {d}\nlogfile {d}/redis.log\n",
            d = sdir.display()
        );
        for l in extra {
            conf.push_str(l);
            conf.push('\n');
        }
        let cp = sdir.join("redis.conf");
        std::fs::write(&cp, conf).unwrap();
        let mut child = Command::new(bin)
            .arg(&cp)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if let Ok(mut c) = Client::connect(port) {
                if let Ok(Reply::Simple(_)) = c.try_cmd(&["PING"]) {
                    return Some(Server { port, child });
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stop_child(&mut child);
        None
    }

    fn client(&self) -> Client {
        Client::connect(self.port).expect("connect to redis-server")
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

struct Nutcracker {
    port: u16,
    config: PathBuf,
    child: Child,
}

impl Nutcracker {
    fn start(dir: &Path, backends: &[&Server]) -> Nutcracker {
        let ndir = dir.join("nutcracker");
        std::fs::create_dir_all(&ndir).unwrap();
        for _ in 0..5 {
            let port = free_port();
            let stats = free_port();
            let mut yaml = format!(
                "alpha:\n  listen: 127.0.0.1:{port}\n  hash: murmur\n  distribution: ketama\n  redis: true\n  auto_eject_hosts: false\n  server_retry_timeout: 2000\n  servers:\n"
            );
            for (i, b) in backends.iter().enumerate() {
                yaml.push_str(&format!("   - {}:1 server{i}\n", b.addr()));
            }
            let config = ndir.join("nutcracker.yml");
            std::fs::write(&config, yaml).unwrap();
            let mut child = Command::new(find_bin(&[
                "/usr/sbin/nutcracker",
                "/usr/bin/nutcracker",
                "/usr/local/sbin/nutcracker",
            ]))
            .arg("-c")
            .arg(&config)
            .arg("-s")
            .arg(stats.to_string())
            .arg("-o")
            .arg(ndir.join("nutcracker.log"))
            .arg("-p")
            .arg(ndir.join("nutcracker.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nutcracker");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if let Ok(mut c) = Client::connect(port) {
                    if let Ok(Reply::Bulk(_)) = c.try_cmd(&["GET", "nutcracker:probe"]) {
                        return Nutcracker {
                            port,
                            config,
                            child,
                        };
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            stop_child(&mut child);
        }
        panic!("could not start nutcracker");
    }
}

impl Drop for Nutcracker {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

struct Relay {
    child: Child,
    metrics_port: u16,
    log: PathBuf,
}

impl Relay {
    fn start(dir: &Path, name: &str, source_args: &[String], target: &Server) -> Relay {
        Relay::start_url(
            dir,
            name,
            source_args,
            &format!("redis://{}", target.addr()),
        )
    }

    /// The relay into `target` (a URL; one node of a cluster is enough), state in
    /// `<dir>/<name>-state` (the same name again resumes from it).
    fn start_url(dir: &Path, name: &str, source_args: &[String], target: &str) -> Relay {
        // RELAY_BIN: another build of the relay (an older commit, side by side).
        let bin = match std::env::var_os("RELAY_BIN") {
            Some(b) => std::path::PathBuf::from(b),
            None => std::env::current_exe()
                .expect("current_exe")
                .parent()
                .and_then(|d| d.parent())
                .map(|d| d.join("redis-relay"))
                .expect("binary dir"),
        };
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo build --release` first",
            bin.display()
        );
        let metrics_port = free_port();
        let state = dir.join(format!("{name}-state"));
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(&bin)
            .arg("sync")
            .args(source_args)
            .arg("--target")
            .arg(target)
            .arg("--state-dir")
            .arg(&state)
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--skip-check")
            .arg("-q")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .expect("spawn redis-relay");
        Relay {
            child,
            metrics_port,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").unwrap_or_default()
    }

    fn check_alive(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "redis-relay exited with {st}; last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
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

/// `name{...source="<addr>"...} value` for every source, as (source, value).
fn metric_by_source(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| {
            let src = l.split("source=\"").nth(1)?.split('"').next()?.to_string();
            let v = l.rsplit(' ').next()?.parse().ok()?;
            Some((src, v))
        })
        .collect()
}

/// `perf record -g` attached to the relay for one phase, when `--perf DIR` is given.
struct Perf(Option<Child>);

impl Perf {
    fn start(dir: &Option<PathBuf>, pid: u32, name: &str) -> Perf {
        let Some(dir) = dir else { return Perf(None) };
        std::fs::create_dir_all(dir).expect("perf dir");
        // E2E_PERF_ALL=1: every process (servers included), to see who takes the CPU.
        let target = if std::env::var_os("E2E_PERF_ALL").is_some() {
            "-a".to_string()
        } else {
            format!("-p{pid}")
        };
        // E2E_PERF_FREQ: samples per second (499 unless set; a short phase needs more).
        let freq = std::env::var("E2E_PERF_FREQ").unwrap_or_else(|_| "499".into());
        let child = Command::new("perf")
            .args(["record", "-g", "-F", &freq, &target, "-o"])
            .arg(dir.join(format!("{name}.data")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        std::thread::sleep(Duration::from_millis(200));
        Perf(child)
    }

    fn stop(self) {
        if let Some(mut c) = self.0 {
            let _ = Command::new("kill")
                .arg("-INT")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc sampling

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (VmHWM, VmRSS) in KiB.
fn mem_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// utime + stime in seconds.
fn cpu_secs(pid: u32, tck: f64) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let g = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (g(11) + g(12)) / tck
}

/// Reset the peak RSS (VmHWM) of a process we started (Linux: `echo 5 > clear_refs`).
fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Samples VmRSS every 50 ms in a thread, keeping the maximum (a fallback for VmHWM).
struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    th: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max.clone());
        let th = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                m.fetch_max(mem_kib(pid).1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler {
            stop,
            max,
            th: Some(th),
        }
    }

    /// Peak in KiB: the larger of the sampled maximum and VmHWM.
    fn finish(mut self, pid: u32) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.th.take() {
            let _ = t.join();
        }
        self.max.load(Ordering::Relaxed).max(mem_kib(pid).0)
    }
}

// ---------------------------------------------------------------------------------------------
// Client

struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    fn connect(port: u16) -> std::io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Client {
            stream,
            buf: BytesMut::new(),
        })
    }

    fn try_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<Reply> {
        let mut out = BytesMut::new();
        encode_command(&mut out, args);
        self.stream.write_all(&out)?;
        self.read_reply()
    }

    fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        let r = self.try_cmd(args).expect("redis I/O");
        if let Reply::Error(e) = &r {
            panic!("command failed: {}", String::from_utf8_lossy(e));
        }
        r
    }

    fn read_reply(&mut self) -> std::io::Result<Reply> {
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

    fn int(&mut self, args: &[&str]) -> i64 {
        match self.cmd(args) {
            Reply::Integer(i) => i,
            other => panic!("{args:?}: expected an integer, got {other:?}"),
        }
    }

    fn info_field(&mut self, section: &str, field: &str) -> Option<String> {
        let text = self.cmd(&["INFO", section]).as_text()?;
        text.lines().find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
    }
}

/// Commands per block of the data file (`DataStats::blocks` holds each block's end offset).
const BLOCK: u64 = 1000;
/// Most commands in flight while loading (nutcracker buffers whatever it is sent: an unbounded
/// pipeline of the whole file makes it grow by gigabytes).
const WINDOW: u64 = 20_000;

/// Stream a file of RESP commands to `port` and read as many replies, with at most about
/// `WINDOW` commands in flight; returns (commands, errors).
fn pipe_file(path: &Path, port: u16, st: &DataStats) -> Res<(u64, u64)> {
    let commands = st.commands;
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    let mut reader = stream.try_clone()?;
    let path = path.to_path_buf();
    let blocks = st.blocks.clone();
    let replies = Arc::new(AtomicU64::new(0));
    let seen_w = replies.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let data = std::fs::read(path)?;
        let mut s = stream;
        let mut start = 0usize;
        for (i, &end) in blocks.iter().enumerate() {
            let sent_before = i as u64 * BLOCK;
            while sent_before > seen_w.load(Ordering::Acquire) + WINDOW {
                std::thread::sleep(Duration::from_micros(200));
            }
            s.write_all(&data[start..end as usize])?;
            start = end as usize;
        }
        Ok(())
    });
    let (mut seen, mut errors) = (0u64, 0u64);
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 256 << 10];
    while seen < commands {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Err("connection closed while loading".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some((r, used)) = parse_reply(&buf)? {
            let _ = buf.split_to(used);
            if r.is_error() && errors < 5 {
                eprintln!("load error: {r:?}");
            }
            if r.is_error() {
                errors += 1;
            }
            seen += 1;
        }
        replies.store(seen, Ordering::Release);
    }
    writer.join().map_err(|_| "writer panicked")??;
    Ok((seen, errors))
}

// ---------------------------------------------------------------------------------------------
// Data

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        const A: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
        out.clear();
        while out.len() < n {
            let mut r = self.next();
            for _ in 0..10 {
                if out.len() == n {
                    break;
                }
                out.push(A[(r & 63) as usize]);
                r >>= 6;
            }
        }
    }
}

struct DataStats {
    commands: u64,
    keys: u64,
    elements: u64,
    bytes: u64,
    /// End offset in the file of every `BLOCK` commands (and of the last command).
    blocks: Vec<u64>,
}

/// The data set `ds` as RESP commands in a file. Value-heavy: 90% strings of 16..=512 bytes;
/// 10% hashes, lists, sets and sorted sets (2.5% each) of 10..=1000 elements, sizes
/// `10 * 100^(u^2)` (most small and listpack-encoded, some up to 1000 and
/// hashtable/skiplist/quicklist-encoded). Key-heavy: see [`dataset::key_heavy_command`].
fn generate(path: &Path, keys: u64, ds: Dataset) -> Res<DataStats> {
    let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let mut rng = Rng(0x5eed);
    let mut out = BytesMut::with_capacity(1 << 16);
    let mut val = Vec::new();
    let mut st = DataStats {
        commands: 0,
        keys,
        elements: 0,
        bytes: 0,
        blocks: Vec::new(),
    };
    for i in 0..keys {
        out.clear();
        let kind = i % 40;
        if ds == Dataset::KeyHeavy {
            st.elements += dataset::key_heavy_command(&mut rng, i, &mut out, &mut val);
        } else if kind >= 4 {
            let len = rng.range(16, 512) as usize;
            rng.fill(&mut val, len);
            let k = format!("str:{i}");
            encode_command(&mut out, &[b"SET".as_slice(), k.as_bytes(), &val]);
            st.elements += 1;
        } else {
            let n = (10.0 * 100f64.powf(rng.unit().powi(2))).round() as usize;
            let n = n.clamp(10, 1000);
            st.elements += n as u64;
            let (cmd, prefix) = match kind {
                0 => ("HSET", "hash"),
                1 => ("RPUSH", "list"),
                2 => ("SADD", "set"),
                _ => ("ZADD", "zset"),
            };
            let k = format!("{prefix}:{i}");
            let mut args: Vec<Vec<u8>> = vec![cmd.into(), k.into_bytes()];
            for j in 0..n {
                let vlen = rng.range(4, 24) as usize;
                rng.fill(&mut val, vlen);
                match kind {
                    0 => {
                        args.push(format!("f{j}").into_bytes());
                        args.push(val.clone());
                    }
                    1 => args.push(val.clone()),
                    2 => args.push(format!("m{j}:{}", String::from_utf8_lossy(&val)).into()),
                    _ => {
                        args.push(format!("{}", rng.range(0, 1_000_000) as f64 / 8.0).into());
                        args.push(format!("m{j}").into_bytes());
                    }
                }
            }
            encode_command(&mut out, &args);
        }
        st.commands += 1;
        st.bytes += out.len() as u64;
        w.write_all(&out)?;
        if st.commands.is_multiple_of(BLOCK) || st.commands == keys {
            st.blocks.push(st.bytes);
        }
    }
    w.flush()?;
    Ok(st)
}

// ---------------------------------------------------------------------------------------------
// Waiting

fn master_offset(s: &Server) -> i64 {
    s.client()
        .info_field("replication", "master_repl_offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

/// True when the relay's metrics say every source's snapshot is applied, nothing is lagging,
/// and the relay has received everything each master has (`masters`: addr and server).
fn relay_caught_up(relay: &Relay, masters: &[&Server]) -> bool {
    let m = relay.metrics();
    let done = metric_by_source(&m, "redis_relay_snapshot_done");
    let lag = metric_by_source(&m, "redis_relay_lag_bytes");
    let moff = metric_by_source(&m, "redis_relay_master_offset");
    masters.iter().all(|s| {
        let a = s.addr();
        let get = |v: &Vec<(String, f64)>| v.iter().find(|(src, _)| *src == a).map(|x| x.1);
        get(&done) == Some(1.0)
            && get(&lag) == Some(0.0)
            && get(&moff).map(|o| o as i64) == Some(master_offset(s))
    })
}

fn wait_caught_up(relay: &mut Relay, masters: &[&Server], limit: Duration) -> Res<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        relay.check_alive();
        if relay_caught_up(relay, masters) {
            return Ok(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(format!("relay did not catch up within {limit:?}").into())
}

fn replica_synced(replica: &Server, master: &Server) -> bool {
    let mut c = replica.client();
    let up = c.info_field("replication", "master_link_status").as_deref() == Some("up");
    let inprog = c
        .info_field("replication", "master_sync_in_progress")
        .as_deref()
        == Some("0");
    let off = c
        .info_field("replication", "slave_repl_offset")
        .and_then(|v| v.parse::<i64>().ok());
    up && inprog && off == Some(master_offset(master))
}

/// `calls` of SET, LPUSH, HSET, INCR from `INFO commandstats`.
fn cmd_calls(s: &Server) -> [u64; 4] {
    calls(s, ["set", "lpush", "hset", "incr"])
}

/// How many times `s` executed each of `names` (`INFO commandstats`).
fn calls<const N: usize>(s: &Server, names: [&str; N]) -> [u64; N] {
    let text = s
        .client()
        .cmd(&["INFO", "commandstats"])
        .as_text()
        .unwrap_or_default();
    let mut out = [0u64; N];
    for (i, name) in names.iter().enumerate() {
        let prefix = format!("cmdstat_{name}:calls=");
        out[i] = text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.split(',').next()?.parse().ok())
            .unwrap_or(0);
    }
    out
}

fn dbsize(s: &Server) -> i64 {
    s.client().int(&["DBSIZE"])
}

/// Keys of the target that are the relay's own (checkpoints under `redis-relay:`).
fn relay_keys(s: &Server) -> i64 {
    match s.client().cmd(&["KEYS", "redis-relay:*"]) {
        Reply::Array(Some(v)) => v.len() as i64,
        _ => 0,
    }
}

/// Compare `n` random keys of the masters with the target: type and string values.
fn sample_check(masters: &[&Server], target: &Server, n: usize) -> usize {
    let mut t = target.client();
    let mut bad = 0;
    for (i, m) in masters.iter().cycle().take(n).enumerate() {
        let mut c = m.client();
        let Reply::Bulk(Some(key)) = c.cmd(&["RANDOMKEY"]) else {
            continue;
        };
        let ty = c.cmd(&[b"TYPE".as_slice(), &key]);
        let tt = t.cmd(&[b"TYPE".as_slice(), &key]);
        let same = ty == tt
            && (ty.as_text().as_deref() != Some("string")
                || c.cmd(&[b"GET".as_slice(), &key]) == t.cmd(&[b"GET".as_slice(), &key]));
        if !same {
            bad += 1;
            if bad <= 3 {
                eprintln!(
                    "sample {i}: key {} differs ({ty:?} vs {tt:?})",
                    String::from_utf8_lossy(&key)
                );
            }
        }
    }
    bad
}

// ---------------------------------------------------------------------------------------------
// Loads

/// A steady write load through nutcracker: `rate` commands/s in batches every 10 ms.
fn steady_load(port: u16, rate: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut c = Client::connect(port).expect("connect to nutcracker");
        let mut rng = Rng(42);
        let per_tick = (rate / 100).max(1);
        let mut sent = 0u64;
        let mut next = Instant::now();
        let mut out = BytesMut::new();
        while !stop.load(Ordering::Relaxed) {
            out.clear();
            for _ in 0..per_tick {
                let k = format!("load:{}", rng.range(0, 99_999));
                match rng.next() % 4 {
                    0 => encode_command(&mut out, &["SET", &k, "steady-load-value-0123456789"]),
                    1 => encode_command(&mut out, &["INCR", &format!("{k}:n")]),
                    2 => encode_command(&mut out, &["HSET", &format!("{k}:h"), "f", "v"]),
                    _ => encode_command(&mut out, &["LPUSH", &format!("{k}:l"), "x"]),
                }
            }
            if c.stream.write_all(&out).is_err() {
                break;
            }
            for _ in 0..per_tick {
                if c.read_reply().is_err() {
                    return sent;
                }
            }
            sent += per_tick;
            next += Duration::from_millis(10);
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            } else {
                next = Instant::now();
            }
        }
        sent
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The cumulative buckets `(le, count)` of `source`'s `redis_relay_heartbeat_lag_seconds`.
fn heartbeat_buckets(text: &str, source: &str) -> Vec<(f64, f64)> {
    let label = format!("source=\"{source}\"");
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| {
            l.starts_with("redis_relay_heartbeat_lag_seconds_bucket{") && l.contains(&label)
        })
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// `after - before`, bucket by bucket (`before` empty: `after`).
fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, n - was)
        })
        .collect()
}

/// The `q` quantile of cumulative buckets, interpolated linearly inside its bucket (as
/// Prometheus's `histogram_quantile`).
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let inside = n - prev.1;
            let frac = if inside > 0.0 {
                (rank - prev.1) / inside
            } else {
                1.0
            };
            return prev.0 + (le - prev.0) * frac;
        }
        prev = (le, n);
    }
    prev.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Run redis-benchmark; returns (total requests, seconds) summed over its tests.
fn redis_benchmark(port: u16, n: u64, pipeline: u32) -> Res<(u64, f64)> {
    redis_benchmark_with(port, n, pipeline, &[])
}

/// The catch-up's load, issue 18's mix: `redis-benchmark -t set,lpush,hset,incr -P 16 -c 20`
/// (`n` requests per test) through nutcracker.
fn catchup_load(nut_port: u16, n: u64) -> Res<(u64, f64)> {
    redis_benchmark_with(nut_port, n, 16, &["-c", "20"])
}

/// [`redis_benchmark`] with `extra` arguments (`--cluster`: the cluster's own ingest).
fn redis_benchmark_with(port: u16, n: u64, pipeline: u32, extra: &[&str]) -> Res<(u64, f64)> {
    let out = Command::new(find_bin(&[
        "/usr/bin/redis-benchmark",
        "/usr/local/bin/redis-benchmark",
    ]))
    .args(["-h", "127.0.0.1", "-p", &port.to_string()])
    .args(["-t", "set,lpush,hset,incr", "-P", &pipeline.to_string()])
    .args(["-n", &n.to_string(), "-r", "100000", "--csv"])
    .args(extra)
    .stdin(Stdio::null())
    .stderr(Stdio::null())
    .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut reqs, mut secs) = (0u64, 0f64);
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').map(|x| x.trim_matches('"')).collect();
        if let Some(rps) = f.get(1).and_then(|v| v.parse::<f64>().ok()) {
            if rps > 0.0 {
                reqs += n;
                secs += n as f64 / rps;
            }
        }
    }
    if reqs == 0 {
        return Err(format!("redis-benchmark printed no results: {text}").into());
    }
    Ok((reqs, secs))
}

fn sum_metric(relay: &Relay, name: &str) -> f64 {
    metric_by_source(&relay.metrics(), name)
        .iter()
        .map(|x| x.1)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Report

struct Row {
    scenario: String,
    ours: String,
    base: String,
    ratio: String,
    goal: String,
    met: String,
}

/// The report's title line, the machine, and the results table.
fn print_results(what: &str, rows: &[Row]) {
    println!(
        "\nredis-relay e2e benchmark ({what}; loopback, one run, noisy on a shared machine)\n"
    );
    println!("Machine: {}\n", machine());
    println!("| scenario | redis-relay | baseline | ratio | goal | met |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.scenario, r.ours, r.base, r.ratio, r.goal, r.met
        );
    }
}

fn row(
    scenario: &str,
    ours: String,
    base: &str,
    ratio: String,
    goal: &str,
    met: Option<bool>,
) -> Row {
    Row {
        scenario: scenario.into(),
        ours,
        base: base.into(),
        ratio,
        goal: goal.into(),
        met: match met {
            Some(true) => "yes".into(),
            Some(false) => "**no**".into(),
            None => "–".into(),
        },
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = mem
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!(
        "{ncpu} CPUs ({model}), {:.1} GiB RAM, load average at the end {}",
        total as f64 / 1024.0 / 1024.0,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Two native replicas, one per master, synced in parallel (`REPLICAOF`): timed from the
/// commands until both report the link up, no sync in progress and their master's offset.
fn native_replicas(dir: &Path, ma: &Server, mb: &Server) -> (Server, Server, f64) {
    let ra = Server::start(dir, "replica-a", &[]);
    let rb = Server::start(dir, "replica-b", &[]);
    let t = Instant::now();
    ra.client()
        .cmd(&["REPLICAOF", "127.0.0.1", &ma.port.to_string()]);
    rb.client()
        .cmd(&["REPLICAOF", "127.0.0.1", &mb.port.to_string()]);
    let (mut da, mut db) = (None, None);
    while da.is_none() || db.is_none() {
        if da.is_none() && replica_synced(&ra, ma) {
            da = Some(t.elapsed());
        }
        if db.is_none() && replica_synced(&rb, mb) {
            db = Some(t.elapsed());
        }
        assert!(
            t.elapsed() < Duration::from_secs(1800),
            "replicas never synced"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = t.elapsed().as_secs_f64();
    (ra, rb, secs)
}

/// How long after `t_sync` (the relay's start) `target` holds `expected` keys besides the
/// relay's own records. Timed on the target itself, like the replicas on their own INFO (the
/// relay's metrics are refreshed every 500 ms): every key of the data sets is small and
/// arrives whole (one RESTORE, or in an MSET for plain strings), so the target holds
/// everything once its key count, less the relay's record keys, reaches the masters'
/// (records: counted by name, `redis-relay:offset:<source>:<writer>`).
fn wait_target_holds(
    relay: &mut Relay,
    target: &Server,
    masters: [&Server; 2],
    expected: i64,
    t_sync: Instant,
) -> Duration {
    let writers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let records: Vec<String> = masters
        .iter()
        .flat_map(|m| record::keys(record::DEFAULT_PREFIX, &m.addr(), writers))
        .collect();
    let exists: Vec<&str> = ["EXISTS"]
        .into_iter()
        .chain(records.iter().map(|r| r.as_str()))
        .collect();
    loop {
        let own = target.client().int(&exists);
        if dbsize(target) - own >= expected {
            return t_sync.elapsed();
        }
        relay.check_alive();
        assert!(
            t_sync.elapsed() < Duration::from_secs(3600),
            "full sync never completed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// Catch-up (shared by the normal run and `--scale`)

/// What the catch-up rounds measured.
struct CatchUp {
    /// Median of the rounds' applied ops/s (from unpause until the target matched).
    ops: f64,
    /// Median of the rounds' baselines: the target's own ingest (`redis-benchmark -P 64`).
    ingest: f64,
    /// Median of the rounds' ratios (`ops / ingest`, round by round).
    ratio: f64,
    /// The relay's peak RSS over the rounds, KiB.
    rss_kib: u64,
    /// The relay's CPU seconds per round (from pause to caught up and the baseline).
    cpu_per_round: f64,
    /// Requests of one round's load.
    load_reqs: u64,
    /// VmHWM could be reset before the rounds (else the RSS is the sampled VmRSS only).
    hwm_reset: bool,
    /// Every round's rate and baseline (issue 18: ≥ 100% in each).
    rounds: Vec<goals::RoundFigures>,
}

/// One round: what the relay applied per second after the target was unpaused, the target's
/// own ingest right after it, and the load's request count.
struct Round {
    target: goals::TargetWork,
    rate: f64,
    ingest: f64,
    secs: f64,
    load_reqs: u64,
}

/// The catch-up rounds of `s` against `target` (see README "Performance"): a warm-up, then
/// each round the relay's catch-up after a paused target and the target's own ingest.
fn catch_up(s: &cluster::Setup, target: &Server, relay: &mut Relay) -> Res<CatchUp> {
    let [ma, mb] = s.masters;
    let pid = relay.pid();
    // Warm-up: the same load once, target not paused, until the relay has applied it. The
    // measured round and the baseline (`-P 64` at the target, later) then both write keys that
    // exist. Without it the measured round would create ~200,000 keys on a target that already
    // holds the full-sync data set (at 1,000,000 keys that crosses a main-dictionary resize, and
    // the target itself ingests new keys at half the rate of existing ones), while the baseline,
    // run afterwards, would overwrite them: two different workloads.
    let t = Instant::now();
    catchup_load(s.nut.port, s.catchup_n)?;
    wait_caught_up(relay, &[ma, mb], Duration::from_secs(3600))?;
    log(format!(
        "catch-up warm-up: same load once, applied in {:.1}s",
        t.elapsed().as_secs_f64()
    ));
    let hwm_reset = reset_hwm(pid);
    let sampler = RssSampler::start(pid);
    let perf = Perf::start(s.perf_dir, pid, "catch-up");
    let applied0 = sum_metric(relay, "redis_relay_commands_applied_total");
    let cpu0 = cpu_secs(pid, s.tck);
    // Rounds, each the relay's catch-up then the baseline in the same state (the machine's
    // speed drifts within a run): the median of the rounds' ratios is the figure.
    let (mut relay_rates, mut ingest_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut catch_secs, mut load_reqs, mut rounds) = (0.0, 0, Vec::new());
    for round in 1..=s.rounds {
        let r = catch_up_round(s, target, relay, round)?;
        catch_secs += r.secs;
        load_reqs = r.load_reqs;
        relay_rates.push(r.rate);
        ingest_rates.push(r.ingest);
        ratios.push(r.rate / r.ingest);
        rounds.push(goals::RoundFigures {
            target: r.target,
            rate: r.rate,
            ingest: r.ingest,
        });
    }
    let rss_kib = sampler.finish(pid);
    perf.stop();
    let applied = sum_metric(relay, "redis_relay_commands_applied_total") - applied0;
    log(format!(
        "catch-up: {applied} commands applied over {} rounds ({catch_secs:.2}s after unpauses), peak RSS {}",
        s.rounds,
        mib(rss_kib)
    ));
    Ok(CatchUp {
        ops: median(&mut relay_rates),
        ingest: median(&mut ingest_rates),
        ratio: median(&mut ratios),
        rss_kib,
        cpu_per_round: (cpu_secs(pid, s.tck) - cpu0) / s.rounds as f64,
        load_reqs,
        hwm_reset,
        rounds,
    })
}

/// One catch-up round: `CLIENT PAUSE` on the target, the load through nutcracker, unpause,
/// time until the target executed what the masters did; then the target's own ingest.
fn catch_up_round(
    s: &cluster::Setup,
    target: &Server,
    relay: &mut Relay,
    round: usize,
) -> Res<Round> {
    let [ma, mb] = s.masters;
    target
        .client()
        .cmd(&["CLIENT", "PAUSE", "3600000", "WRITE"]);
    let tgt0 = cmd_calls(target);
    let src0 = [cmd_calls(ma), cmd_calls(mb)];
    let t = Instant::now();
    let load_reqs = catchup_load(s.nut.port, s.catchup_n)?.0;
    let src1 = [cmd_calls(ma), cmd_calls(mb)];
    // What the masters executed, per command: the target must have executed as many.
    let want: Vec<u64> = (0..4)
        .map(|i| src1[0][i] + src1[1][i] - src0[0][i] - src0[1][i])
        .collect();
    let load_secs = t.elapsed().as_secs_f64();
    // Let the relay receive everything before unpausing (it reads at full speed).
    let _ = wait_recv(relay, &[ma, mb], Duration::from_secs(60));
    let tcpu0 = cpu_secs(target.child.id(), s.tck);
    target.client().cmd(&["CLIENT", "UNPAUSE"]);
    let t_unpause = Instant::now();
    // Timed on the target itself (the relay's metrics are refreshed every 500 ms, too
    // coarse for a second or two): HSET and INCR calls equal to the masters'. The SETs and
    // LPUSHes are not counted: the relay sends runs of SETs as MSETs (and adds its record
    // SETs) and runs of pushes to one list (redis-benchmark's LPUSHes all go to `mylist`) as
    // one LPUSH. Each writer applies its queue in order and every writer's queue ends with
    // some of the HSETs (redis-benchmark runs SET, INCR, LPUSH, HSET in that order, HSET on
    // random keys), so this holds only once everything is applied.
    let catch = loop {
        let now = cmd_calls(target);
        let d: Vec<u64> = (0..4).map(|i| now[i] - tgt0[i]).collect();
        if d[2..] == want[2..] {
            break t_unpause.elapsed();
        }
        relay.check_alive();
        assert!(
            t_unpause.elapsed() < Duration::from_secs(3600),
            "catch-up never completed"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let tcpu_catch = cpu_secs(target.child.id(), s.tck) - tcpu0;
    let metrics_catch = wait_caught_up(relay, &[ma, mb], Duration::from_secs(3600))?;
    let rate = load_reqs as f64 / catch.as_secs_f64();
    let tcpu1 = cpu_secs(target.child.id(), s.tck);
    let (treqs, tsecs) = redis_benchmark(target.port, s.catchup_n, 64)?;
    let tcpu_base = cpu_secs(target.child.id(), s.tck) - tcpu1;
    let ingest = treqs as f64 / tsecs;
    // What bounds the round: the target's CPU per load op and how busy it was, in the
    // relay's catch-up and in its own ingest (clock ticks: ±10 ms).
    let target = goals::TargetWork {
        relay_us: 1e6 * tcpu_catch / load_reqs as f64,
        relay_busy: tcpu_catch / catch.as_secs_f64(),
        own_us: 1e6 * tcpu_base / treqs as f64,
        own_busy: tcpu_base / tsecs,
    };
    log(format!(
        "catch-up round {round}: {load_reqs} requests through nutcracker in {load_secs:.1}s while the target was paused; target matched {:.3}s after unpause ({rate:.0} ops/s; metrics said caught up {:.3}s later); target's own ingest {ingest:.0} ops/s: {:.0}%; target CPU per op {:.2} µs (busy {:.0}%) vs {:.2} µs (busy {:.0}%) in its own ingest",
        catch.as_secs_f64(),
        metrics_catch.as_secs_f64(),
        100.0 * rate / ingest,
        target.relay_us,
        100.0 * target.relay_busy,
        target.own_us,
        100.0 * target.own_busy
    ));
    Ok(Round {
        target,
        rate,
        ingest,
        secs: catch.as_secs_f64(),
        load_reqs,
    })
}

/// A progress line on stderr, stamped with the seconds since the bench started.
fn log(s: String) {
    eprintln!("[{:>7.1}s] {s}", START.with(|t| t.elapsed().as_secs_f64()));
}

// ---------------------------------------------------------------------------------------------

fn main() -> Res<()> {
    START.with(|_| ());
    let o = parse_opts();
    if let Some(path) = &o.gen_only {
        let st = generate(path, o.keys, o.datasets[0])?;
        eprintln!(
            "wrote {} keys, {} elements, {:.1} MB of RESP to {}",
            st.keys,
            st.elements,
            st.bytes as f64 / 1e6,
            path.display()
        );
        return Ok(());
    }
    if o.scale {
        return scale::run(&o);
    }
    if o.versions {
        return versions::run(&o);
    }
    let mut all = Vec::new();
    for &ds in &o.datasets {
        all.push(run_dataset(&o, ds)?);
    }
    goals::print_summary(&all);
    Ok(())
}

// Long: one sequential script of phases that share the servers, the relay and the figures
// for the table; the cluster phases (`--cluster`) are in `e2e_bench/cluster.rs`.
fn run_dataset(o: &Opts, ds: Dataset) -> Res<goals::Summary> {
    let tmp = tempfile::Builder::new().prefix("e2e-bench").tempdir()?;
    let dir = tmp.path();
    let tck = clk_tck();
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    let master_conf = [
        "repl-diskless-sync yes",
        "repl-diskless-sync-delay 0",
        "repl-backlog-size 512mb",
        "client-output-buffer-limit replica 0 0 0",
    ];
    let ma = Server::start(dir, "master-a", &master_conf);
    let mb = Server::start(dir, "master-b", &master_conf);
    let nut = Nutcracker::start(dir, &[&ma, &mb]);
    log(format!(
        "masters {} {}, nutcracker {}",
        ma.addr(),
        mb.addr(),
        nut.port
    ));

    // ---- data
    let data = dir.join("data.resp");
    let st = generate(&data, o.keys, ds)?;
    log(format!(
        "generated {} keys, {} elements, {:.1} MB of RESP",
        st.keys,
        st.elements,
        st.bytes as f64 / 1e6
    ));
    let t = Instant::now();
    let (_, errs) = pipe_file(&data, nut.port, &st)?;
    assert_eq!(errs, 0, "errors while loading through nutcracker");
    let expected = dbsize(&ma) + dbsize(&mb);
    log(format!(
        "loaded through nutcracker in {:.1}s: {} + {} keys",
        t.elapsed().as_secs_f64(),
        dbsize(&ma),
        dbsize(&mb)
    ));
    assert_eq!(expected as u64, st.keys, "keys on the masters");

    // ---- baseline: redis-cli --pipe into an empty server
    let pipe_secs = {
        let p = Server::start(dir, "pipe-target", &[]);
        let t = Instant::now();
        let st_out = Command::new(find_bin(&[
            "/usr/bin/redis-cli",
            "/usr/local/bin/redis-cli",
        ]))
        .args(["-h", "127.0.0.1", "-p", &p.port.to_string(), "--pipe"])
        .stdin(File::open(&data)?)
        .stdout(Stdio::null())
        .status()?;
        let secs = t.elapsed().as_secs_f64();
        assert!(st_out.success(), "redis-cli --pipe failed");
        assert_eq!(dbsize(&p), expected, "redis-cli --pipe target");
        secs
    };
    log(format!("redis-cli --pipe: {pipe_secs:.2}s"));

    // ---- baseline: two native replicas in parallel
    let (ra, rb, native_secs) = native_replicas(dir, &ma, &mb);
    assert_eq!(dbsize(&ra) + dbsize(&rb), expected, "replica keys");
    log(format!("native replicas: {native_secs:.2}s"));

    // ---- the relay: full sync
    let target = Server::start(dir, "target", &[]);
    let t_sync = Instant::now();
    let wall_sync = std::time::SystemTime::now();
    let mut relay = Relay::start(
        dir,
        "relay",
        &["--twemproxy".into(), nut.config.display().to_string()],
        &target,
    );
    let pid = relay.pid();
    let sampler = RssSampler::start(pid);
    let perf = Perf::start(&o.perf_dir, pid, "full-sync");
    let full = wait_target_holds(&mut relay, &target, [&ma, &mb], expected, t_sync);
    // Where the sync's time goes: the target's CPU over it (it was started just before).
    let target_cpu = cpu_secs(target.child.id(), tck);
    let metrics_done = wait_caught_up(&mut relay, &[&ma, &mb], Duration::from_secs(3600))?;
    log(format!(
        "full sync: target held every key after {:.3}s; the relay's metrics said done {:.3}s later",
        full.as_secs_f64(),
        metrics_done.as_secs_f64()
    ));
    let full_secs = full.as_secs_f64();
    let full_rss = sampler.finish(pid);
    perf.stop();
    let full_cpu = cpu_secs(pid, tck);
    let own = relay_keys(&target);
    let got = dbsize(&target) - own;
    let bad = sample_check(&[&ma, &mb], &target, 500);
    log(format!(
        "relay full sync: {full_secs:.2}s, peak RSS {}, {full_cpu:.1} CPU s, target {got} keys (+{own} own), {bad} of 500 sampled keys differ",
        mib(full_rss)
    ));
    if got != expected || bad > 0 {
        notes.push(format!(
            "full sync check FAILED: target holds {got} keys (expected {expected}), {bad} of 500 sampled keys differ"
        ));
    }
    let keys_s = st.keys as f64 / full_secs;
    rows.push(row(
        &format!("full sync, {} keys, 2 masters: time", st.keys),
        format!("{full_secs:.2} s ({keys_s:.0} keys/s)"),
        &format!(
            "{native_secs:.2} s ({:.0} keys/s), 2 native replicas",
            st.keys as f64 / native_secs
        ),
        format!("{:.2}x", full_secs / native_secs),
        "≤ 1.5x",
        Some(full_secs <= 1.5 * native_secs),
    ));
    rows.push(row(
        "full sync: vs `redis-cli --pipe` of the same data",
        format!("{full_secs:.2} s"),
        &format!(
            "{pipe_secs:.2} s ({:.0} keys/s)",
            st.keys as f64 / pipe_secs
        ),
        format!("{:.2}x", full_secs / pipe_secs),
        "(info)",
        None,
    ));
    rows.push(row(
        "full sync: relay CPU",
        format!("{full_cpu:.1} CPU s"),
        "",
        String::new(),
        "(info)",
        None,
    ));
    rows.push(row(
        "full sync: relay peak RSS",
        mib(full_rss),
        "",
        String::new(),
        "< 64 MiB",
        Some(full_rss < 64 * 1024),
    ));
    // ---- baseline: one native replica of the target, now that it holds everything
    let (one_secs, one_cpu) = goals::one_replica_of(dir, &target, tck);
    log(format!(
        "one native replica of the target: {one_secs:.2}s ({one_cpu:.1} CPU s of the replica)"
    ));
    rows.insert(1, goals::one_replica_row(full_secs, one_secs, st.keys));
    rows.push(goals::target_cpu_row(
        target_cpu, full_secs, one_cpu, st.keys,
    ));
    let phases = format!(
        "{}; {}",
        goals::masters_rdb_sent(dir, &["master-a", "master-b"], wall_sync),
        goals::sync_phases(&relay.log, wall_sync)
    );
    log(format!("full sync phases (relay's log): {phases}"));
    log(format!(
        "target's commandstats after the full sync: {}",
        goals::target_commandstats(&target, target_cpu)
    ));
    rows.push(row(
        "full sync: phases in the relay's log, per source, seconds after its start",
        phases,
        "",
        String::new(),
        "(info)",
        None,
    ));

    // ---- the same full sync into a Redis Cluster (the relay above stays, idle)
    let setup = cluster::Setup {
        dir,
        nut: &nut,
        masters: [&ma, &mb],
        tck,
        rounds: o.catchup_rounds,
        catchup_n: o.catchup_n,
        perf_dir: &o.perf_dir,
    };
    let mut single = cluster::Single {
        full_secs,
        catch_ops: 0.0,
    };
    let cl = match o.cluster {
        true => Some(cluster::full_sync(
            &setup, expected, &single, &mut rows, &mut notes,
        )?),
        false => None,
    };

    // ---- catch-up
    let cu = catch_up(&setup, &target, &mut relay)?;
    if !cu.hwm_reset {
        notes.push("could not reset VmHWM (clear_refs): catch-up RSS is sampled VmRSS only".into());
    }
    let (catch_ops, ingest, ratio) = (cu.ops, cu.ingest, cu.ratio);
    let (catch_rss, catch_cpu, load_reqs) = (cu.rss_kib, cu.cpu_per_round, cu.load_reqs);
    let catch_row = row(
        &format!("catch-up after a paused target ({load_reqs} ops, `redis-benchmark -P 16` via nutcracker), medians of {} rounds", o.catchup_rounds),
        format!("{catch_ops:.0} ops/s"),
        &format!("{ingest:.0} ops/s, target's own ingest (`-P 64`)"),
        format!("{:.0}% (median of the rounds' ratios)", 100.0 * ratio),
        "≥ 90%",
        Some(ratio >= 0.9),
    );

    // ---- steady lag
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(nut.port, o.steady_rate, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let (mut lt, mut lr) = (Vec::new(), Vec::new());
    // How many of the stream's batches took the short path (written by the apply thread).
    let shortcut = |m: &str| {
        (
            cluster::metric_sum(m, "redis_relay_lone_writes_total"),
            cluster::metric_sum(m, "redis_relay_batches_total"),
        )
    };
    let (lone0, batches0) = shortcut(&relay.metrics());
    // Issue 18: the heartbeat-based lag must agree with the probes. Each probe is followed by
    // the relay's heartbeat key on the same master, stamped at the probe's start (the key and
    // stamp `--heartbeat` writes); the relay measures each when the target has everything
    // before it, into `redis_relay_heartbeat_lag_seconds`.
    let beat_key = format!("{}heartbeat:{}", record::DEFAULT_PREFIX, ma.addr());
    let beats0 = heartbeat_buckets(&relay.metrics(), &ma.addr());
    {
        let mut m = ma.client();
        let mut tc = target.client();
        let mut rc = ra.client();
        for i in 0..o.probes {
            let key = format!("probe:{i}");
            let stamp = redis_relay::pipeline::stream_apply::format_stamp(
                redis_relay::batch::offsets::unix_us(),
            );
            let t0 = Instant::now();
            m.cmd(&["SET", &key, "1"]);
            // The heartbeat right after the probe, its reply read once the probe is seen:
            // the probe's timing stays what it was without it (no round trip added).
            let mut beat = BytesMut::new();
            encode_command(&mut beat, &["SET", &beat_key, &stamp, "PX", "60000"]);
            m.stream.write_all(&beat)?;
            let (mut st_, mut sr) = (None, None);
            while st_.is_none() || sr.is_none() {
                if st_.is_none() && tc.cmd(&["EXISTS", &key]) == Reply::Integer(1) {
                    st_ = Some(t0.elapsed());
                }
                if sr.is_none() && rc.cmd(&["EXISTS", &key]) == Reply::Integer(1) {
                    sr = Some(t0.elapsed());
                }
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "probe {key} never arrived"
                );
            }
            lt.push(st_.unwrap().as_secs_f64() * 1e3);
            lr.push(sr.unwrap().as_secs_f64() * 1e3);
            if let Reply::Error(e) = m.read_reply()? {
                return Err(format!("heartbeat refused: {}", String::from_utf8_lossy(&e)).into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let (lone1, batches1) = shortcut(&relay.metrics());
    let beats = bucket_delta(&beats0, &heartbeat_buckets(&relay.metrics(), &ma.addr()));
    let (h50, h99, hn) = (
        bucket_quantile(&beats, 0.5) * 1e3,
        bucket_quantile(&beats, 0.99) * 1e3,
        beats.last().map_or(0.0, |b| b.1),
    );
    stop.store(true, Ordering::Relaxed);
    let sent = load.join().unwrap_or(0);
    lt.sort_by(f64::total_cmp);
    lr.sort_by(f64::total_cmp);
    let (t50, t99, r50, r99) = (
        percentile(&lt, 0.5),
        percentile(&lt, 0.99),
        percentile(&lr, 0.5),
        percentile(&lr, 0.99),
    );
    log(format!(
        "steady lag ({} probes, {sent} load commands): relay p50 {t50:.2} ms p99 {t99:.2} ms; replica p50 {r50:.2} ms p99 {r99:.2} ms; {:.0} of {:.0} stream batches written by the apply thread itself",
        o.probes,
        lone1 - lone0,
        batches1 - batches0
    ));
    log(format!(
        "heartbeat lag ({hn:.0} heartbeats after the probes, redis_relay_heartbeat_lag_seconds): p50 {h50:.2} ms p99 {h99:.2} ms; probes p50 {t50:.2} ms p99 {t99:.2} ms"
    ));

    rows.push(catch_row);
    rows.extend(goals::round_rows(&cu.rounds, load_reqs));
    rows.push(row(
        "catch-up: relay peak RSS (CPU per round, from pause to caught up and the baseline)",
        format!("{} ({catch_cpu:.1} CPU s)", mib(catch_rss)),
        "",
        String::new(),
        "< 128 MiB",
        Some(catch_rss < 128 * 1024),
    ));
    rows.push(row(
        &format!(
            "steady lag p50 ({} probes, {}/s load)",
            o.probes, o.steady_rate
        ),
        format!("{t50:.2} ms"),
        &format!("{r50:.2} ms, native replica"),
        format!("{:.1}x", t50 / r50),
        "(info)",
        None,
    ));
    rows.push(row(
        "steady lag p99",
        format!("{t99:.2} ms"),
        &format!("{r99:.2} ms, native replica"),
        format!("{:.1}x", t99 / r99),
        "≤ 2x",
        Some(t99 <= 2.0 * r99),
    ));
    rows.push(row(
        "steady lag: the relay's heartbeat figure (`redis_relay_heartbeat_lag_seconds`, p50 / p99) against the same probes",
        format!("{h50:.2} / {h99:.2} ms ({hn:.0} heartbeats)"),
        &format!("{t50:.2} / {t99:.2} ms, the probes"),
        format!("{:.2}x / {:.2}x", h50 / t50, h99 / t99),
        "agree, within ±25% (issue 18)",
        Some(goals::agree(h50, t50) && goals::agree(h99, t99)),
    ));
    let (code, _) = {
        let t = Instant::now();
        stop_child(&mut relay.child);
        (
            relay.child.try_wait().ok().flatten().and_then(|s| s.code()),
            t.elapsed(),
        )
    };
    if code != Some(0) {
        notes.push(format!("relay exit code after SIGTERM: {code:?}"));
    }
    drop(relay);
    drop(target);
    if let Some(cl) = cl {
        single.catch_ops = catch_ops;
        cluster::catch_up(&setup, &cl, &single, &mut rows, &mut notes)?;
    }
    drop(ra);
    drop(rb);
    drop(nut);
    drop(ma);
    drop(mb);

    // ---- big keys (independent of the data set: once per run)
    if ds == o.datasets[0] {
        big_keys(o, dir, &master_conf, tck, &mut rows, &mut notes)?;
    }

    // ---- table
    print_results(
        &format!(
            "{} size, {} data set: {} keys",
            o.size_label,
            ds.name(),
            o.keys
        ),
        &rows,
    );
    println!(
        "\nData: {} keys ({} elements, {:.1} MB as RESP): {}.",
        st.keys,
        st.elements,
        st.bytes as f64 / 1e6,
        ds.describe()
    );
    for n in &notes {
        println!("\nNOTE: {n}");
    }
    Ok(goals::Summary {
        dataset: ds,
        keys: st.keys,
        full_secs,
        two_replicas_secs: native_secs,
        one_replica_secs: one_secs,
        rounds: cu.rounds,
        p99: t99,
        replica_p99: r99,
        heartbeat: (h50, h99, t50),
        full_rss,
    })
}

/// One master holding one big list and one big hash, synced by its own relay: the relay's
/// peak RSS with values far larger than a batch.
// Long: one phase (load the master, sync, check, the table's row), as it was inline.
fn big_keys(
    o: &Opts,
    dir: &Path,
    master_conf: &[&str],
    tck: f64,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Res<()> {
    let m3 = Server::start(dir, "master-big", master_conf);
    {
        let mut c = m3.client();
        let mut out = BytesMut::new();
        let mut cmds = 0u64;
        let push = |out: &mut BytesMut, cmds: &mut u64, c: &mut Client, force: bool| {
            if *cmds >= 50 || (force && *cmds > 0) {
                c.stream.write_all(out).unwrap();
                for _ in 0..*cmds {
                    assert!(!c.read_reply().unwrap().is_error());
                }
                out.clear();
                *cmds = 0;
            }
        };
        let mut i = 0u64;
        while i < o.big_list {
            let n = 1000.min(o.big_list - i);
            let mut args = vec!["RPUSH".to_string(), "big:list".into()];
            args.extend((i..i + n).map(|j| format!("element-{j:010}")));
            encode_command(&mut out, &args);
            cmds += 1;
            i += n;
            push(&mut out, &mut cmds, &mut c, false);
        }
        let mut i = 0u64;
        while i < o.big_hash {
            let n = 1000.min(o.big_hash - i);
            let mut args = vec!["HSET".to_string(), "big:hash".into()];
            for j in i..i + n {
                args.push(format!("field-{j:010}"));
                args.push(format!("value-{j}"));
            }
            encode_command(&mut out, &args);
            cmds += 1;
            i += n;
            push(&mut out, &mut cmds, &mut c, false);
        }
        push(&mut out, &mut cmds, &mut c, true);
    }
    let used = m3
        .client()
        .info_field("memory", "used_memory_human")
        .unwrap_or_default();
    log(format!(
        "big keys loaded: list {} elements, hash {} fields, master used_memory {used}",
        o.big_list, o.big_hash
    ));
    let t3 = Server::start(dir, "target-big", &[]);
    let mut relay = Relay::start(
        dir,
        "relay-big",
        &["--source".into(), format!("redis://{}", m3.addr())],
        &t3,
    );
    let pid = relay.pid();
    let sampler = RssSampler::start(pid);
    let perf = Perf::start(&o.perf_dir, pid, "big-keys");
    let big = wait_caught_up(&mut relay, &[&m3], Duration::from_secs(3600))?;
    let big_rss = sampler.finish(pid);
    perf.stop();
    let big_cpu = cpu_secs(pid, tck);
    let llen = t3.client().int(&["LLEN", "big:list"]);
    let hlen = t3.client().int(&["HLEN", "big:hash"]);
    if llen as u64 != o.big_list || hlen as u64 != o.big_hash {
        notes.push(format!(
            "big keys check FAILED: target LLEN {llen}, HLEN {hlen}"
        ));
    }
    log(format!(
        "big keys: synced in {:.2}s, peak RSS {}, {big_cpu:.1} CPU s",
        big.as_secs_f64(),
        mib(big_rss)
    ));
    rows.push(row(
        &format!(
            "big keys: one {}-element list + one {}-field hash, relay peak RSS",
            o.big_list, o.big_hash
        ),
        format!(
            "{} ({:.1} s, {big_cpu:.1} CPU s)",
            mib(big_rss),
            big.as_secs_f64()
        ),
        "",
        String::new(),
        "< 128 MiB",
        Some(big_rss < 128 * 1024),
    ));
    drop(relay);

    Ok(())
}

/// Wait until the relay has received every master's offset (lag may still be > 0).
fn wait_recv(relay: &Relay, masters: &[&Server], limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        let moff = metric_by_source(&relay.metrics(), "redis_relay_master_offset");
        if masters.iter().all(|s| {
            moff.iter()
                .find(|(a, _)| *a == s.addr())
                .map(|x| x.1 as i64)
                == Some(master_offset(s))
        }) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

thread_local! {
    static START: Instant = Instant::now();
}
