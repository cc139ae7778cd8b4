//! The writer/apply path against a real `redis-server`: batches of SET, MSET, RESTORE and
//! RPUSH built by the relay's own [`Dispatcher`] (the batch size the pipeline uses) and applied
//! by its [`WriterPool`] (one connection and one output buffer per writer, pipelined), each
//! inside MULTI/EXEC with the exactly-once record and without a transaction (plain pipelined).
//! Reports commands/s as "elements/s".
//!
//! Before the criterion groups it runs `redis-benchmark -P 64 -t set,mset,lpush` against the
//! same server and prints a table: the relay's rate beside the server's own ingest rate, so
//! that the figures say how much of the server's speed the writer path uses.
//!
//! ```sh
//! cargo bench --bench apply            # about 1 minute on 2 vCPUs
//! cargo test --release --bench apply   # each case once, a smoke test
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput};
use redis_relay::batch::record::DEFAULT_PREFIX;
use redis_relay::batch::SourceTracker;
use redis_relay::endpoint::Endpoint;
use redis_relay::pipeline::dispatcher::ExactlyOnce;
use redis_relay::pipeline::Dispatcher;
use redis_relay::resp::Reply;
use redis_relay::target::commands::CommandBuf;
use redis_relay::target::{WriterOptions, WriterPool, Writers};
use support::RedisServer;

/// Commands per measured iteration: 16 batches of the dispatcher's 512 commands.
const OPS: usize = 8192;
/// Distinct keys per case: SETs and RESTOREs overwrite, so memory stays bounded.
const KEYS: usize = 100_000;
/// Lists the RPUSHes go to (one element per command, as `redis-benchmark -t lpush`).
const LISTS: usize = 1_000;
/// Keys per MSET, as `redis-benchmark -t mset`.
const MSET_KEYS: usize = 10;
/// The value of SET and MSET: 3 bytes, `redis-benchmark`'s default `-d 3`.
const VALUE: &[u8] = b"xxx";

/// The commands a case applies.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Set,
    Mset,
    Restore,
    Rpush,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Set, Kind::Mset, Kind::Restore, Kind::Rpush];

    fn name(self) -> &'static str {
        match self {
            Kind::Set => "SET",
            Kind::Mset => "MSET",
            Kind::Restore => "RESTORE",
            Kind::Rpush => "RPUSH",
        }
    }

    /// The `redis-benchmark` test it is compared with (its CSV name), if any.
    fn baseline(self) -> Option<&'static str> {
        match self {
            Kind::Set => Some("SET"),
            Kind::Mset => Some("MSET (10 keys)"),
            Kind::Rpush => Some("LPUSH"),
            Kind::Restore => None,
        }
    }
}

/// One prepared command: the writer its (first) key goes to, and its encoding.
struct Prepared {
    writer: usize,
    cmd: CommandBuf,
}

/// `OPS` commands of `kind`, starting at key number `first`, routed as the dispatcher routes.
/// `dump` is the DUMP payload RESTORE loads.
fn prepare(kind: Kind, d: &Dispatcher, dump: &[u8], first: usize) -> Vec<Prepared> {
    (first..first + OPS)
        .map(|i| {
            let mut cmd = CommandBuf::new();
            let key = format!("{}:{:06}", kind.name(), i % KEYS);
            match kind {
                Kind::Set => cmd.push(&[b"SET".as_slice(), key.as_bytes(), VALUE]),
                Kind::Mset => {
                    // The command goes to its first key's writer (the snapshot groups an
                    // MSET's keys by writer; here nothing else runs on the keys).
                    let mut args: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
                    for j in 0..MSET_KEYS {
                        args.push(format!("{key}:{j}").into_bytes());
                        args.push(VALUE.to_vec());
                    }
                    cmd.push(&args);
                }
                Kind::Restore => cmd.push(&[
                    b"RESTORE".as_slice(),
                    key.as_bytes(),
                    b"0",
                    dump,
                    b"REPLACE",
                ]),
                Kind::Rpush => {
                    let list = format!("list:{:04}", i % LISTS);
                    cmd.push(&[b"RPUSH".as_slice(), list.as_bytes(), VALUE]);
                }
            }
            let writer = match kind {
                Kind::Mset => d.writer_for(format!("{key}:0").as_bytes()),
                Kind::Rpush => d.writer_for(format!("list:{:04}", i % LISTS).as_bytes()),
                _ => d.writer_for(key.as_bytes()),
            };
            Prepared { writer, cmd }
        })
        .collect()
}

/// The relay's writer path to the bench's server: the pool and one source's dispatcher.
struct WriterPath {
    pool: WriterPool,
    dispatcher: Dispatcher,
    /// The stream offset of the next command (each covers one byte of offsets).
    offset: u64,
}

impl WriterPath {
    /// A pool with the relay's default options and a dispatcher that records every batch
    /// (MULTI/EXEC with the exactly-once record) when `exactly_once`, else sends them plainly.
    fn start(server: &RedisServer, exactly_once: bool) -> WriterPath {
        let endpoint = Endpoint::parse(&server.url()).expect("the server's URL");
        let pool = WriterPool::start(&endpoint, &WriterOptions::default()).expect("writer pool");
        let handle: Arc<dyn Writers> = Arc::new(pool.handle());
        let tracker = Arc::new(SourceTracker::new("bench", 0, pool.writers(), 0));
        let mut dispatcher = Dispatcher::new(handle, tracker);
        if exactly_once {
            dispatcher.set_exactly_once(Some(ExactlyOnce {
                prefix: DEFAULT_PREFIX.into(),
                source: "bench".into(),
                replid: "0".repeat(40),
            }));
        }
        WriterPath {
            pool,
            dispatcher,
            offset: 0,
        }
    }

    /// Push `cmds` through the dispatcher and wait until the target acknowledged them all.
    fn apply(&mut self, cmds: &[Prepared]) {
        for p in cmds {
            let start = self.offset;
            self.offset += 1;
            self.dispatcher
                .push_commands(p.writer, 0, &p.cmd, start, self.offset)
                .expect("dispatch");
        }
        self.dispatcher
            .barrier()
            .expect("the target applied the batches");
    }

    /// Error replies so far: a bench of refused commands would measure nothing.
    fn assert_no_errors(&self, what: &str) {
        let errors = self
            .dispatcher
            .tracker
            .target_errors
            .load(Ordering::Relaxed);
        assert_eq!(errors, 0, "{what}: the target refused {errors} commands");
    }

    fn finish(self) {
        drop(self.dispatcher);
        self.pool.finish().expect("writer pool");
    }
}

/// A serialized 10-field hash (listpack) made with DUMP on the server: what the snapshot
/// apply sends for a small collection.
fn dump_payload(server: &RedisServer) -> Vec<u8> {
    let mut c = server.client();
    let mut args = vec!["HSET".to_string(), "dump:src".into()];
    for j in 0..10 {
        args.push(format!("field-{j}"));
        args.push(format!("value-{j:08}"));
    }
    c.cmd(&args);
    let Reply::Bulk(Some(payload)) = c.cmd(&["DUMP", "dump:src"]) else {
        panic!("DUMP returned no payload");
    };
    c.cmd(&["FLUSHALL"]);
    payload.to_vec()
}

/// `redis-benchmark -P 64 -t set,mset,lpush -n <n> --csv` on the server: requests/s by test.
fn redis_benchmark(server: &RedisServer, n: u64) -> Vec<(String, f64)> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args(["-P", "64", "-t", "set,mset,lpush", "-n", &n.to_string()])
        .arg("--csv")
        .output()
        .expect("run redis-benchmark (Debian package redis-tools)");
    assert!(out.status.success(), "redis-benchmark failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let rates: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',').map(|s| s.trim_matches('"'));
            let (test, rps) = (f.next()?, f.next()?.parse().ok()?);
            Some((test.to_string(), rps))
        })
        .collect();
    assert_eq!(rates.len(), 3, "redis-benchmark's CSV: {text}");
    server.client().cmd(&["FLUSHALL"]);
    rates
}

/// The relay's rate for `kind`, timed directly over `rounds` iterations (the table's figure;
/// criterion then measures each case with its statistics).
fn quick_rate(server: &RedisServer, kind: Kind, exactly_once: bool, rounds: usize) -> f64 {
    let dump = dump_payload(server);
    let mut path = WriterPath::start(server, exactly_once);
    let cmds = prepare(kind, &path.dispatcher, &dump, 0);
    path.apply(&cmds);
    let t = Instant::now();
    for _ in 0..rounds {
        path.apply(&cmds);
    }
    let rate = (rounds * OPS) as f64 / t.elapsed().as_secs_f64();
    path.assert_no_errors(kind.name());
    path.finish();
    server.client().cmd(&["FLUSHALL"]);
    rate
}

/// The table: each case's rate in both modes beside `redis-benchmark -P 64`'s.
fn print_table(server: &RedisServer, full: bool) {
    let n = if full { 500_000 } else { 10_000 };
    let rounds = if full { 30 } else { 1 };
    let base = redis_benchmark(server, n);
    println!("\nWriter path vs redis-benchmark -P 64 -n {n} (same server, commands/s):\n");
    println!("| commands | relay, MULTI/EXEC + record | relay, plain pipelined | redis-benchmark -P 64 | MULTI / rb | plain / rb |");
    println!("|---|---|---|---|---|---|");
    for kind in Kind::ALL {
        let multi = quick_rate(server, kind, true, rounds);
        let plain = quick_rate(server, kind, false, rounds);
        let rb = kind
            .baseline()
            .and_then(|t| base.iter().find(|(name, _)| name == t))
            .cloned();
        let (rb_text, r1, r2) = match rb {
            Some((name, rps)) => (
                format!("{rps:.0} ({name})"),
                format!("{:.2}", multi / rps),
                format!("{:.2}", plain / rps),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        println!(
            "| {} | {multi:.0} | {plain:.0} | {rb_text} | {r1} | {r2} |",
            kind.name()
        );
    }
    println!();
}

/// One criterion case: `OPS` commands of `kind` per iteration through a fresh pool.
fn bench_case(
    g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    server: &RedisServer,
    kind: Kind,
    exactly_once: bool,
) {
    let dump = dump_payload(server);
    let mut path = WriterPath::start(server, exactly_once);
    let cmds = prepare(kind, &path.dispatcher, &dump, 0);
    let mode = if exactly_once { "multi" } else { "plain" };
    g.bench_function(format!("{}/{mode}", kind.name()), |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                path.apply(&cmds);
            }
            t.elapsed()
        })
    });
    path.assert_no_errors(kind.name());
    path.finish();
    server.client().cmd(&["FLUSHALL"]);
}

fn main() {
    // Dropped on every exit, a panic's unwinding included: the server is stopped.
    let server = RedisServer::start(&[]);
    let full = std::env::args().any(|a| a == "--bench");
    print_table(&server, full);
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(OPS as u64));
    for kind in Kind::ALL {
        for exactly_once in [true, false] {
            bench_case(&mut g, &server, kind, exactly_once);
        }
    }
    g.finish();
    c.final_summary();
}
