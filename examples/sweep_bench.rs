//! How long `target::deletion::sweep` takes on a large shared target, with and without a
//! placement hint. Starts nothing: give it three running redis-servers (their data is
//! replaced).
//!
//! ```text
//! cargo run --release --example sweep_bench -- <target-port> <peer0-port> <peer1-port> \
//!     [--keys 1000000] [--batch 256] [--rounds 1] [--precheck]
//! ```
//!
//! The target holds `k:0 .. k:N-1`; peer 0 holds the keys with i % 3 == 0, peer 1 those with
//! i % 3 == 1; the rest (a third) is stale and must go. The hint places i % 3 == 0 on peer 0,
//! 1 on peer 1 and 2 on the relay's own backend (no peer), as nutcracker's placement would
//! for a pool of three. Before each sweep the stale third is written again.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use redis_relay::endpoint::Endpoint;
use redis_relay::resp::Client;
use redis_relay::resp::{encode_command, Reply};
use redis_relay::target::deletion::{sweep, Authority, Plan, Scope};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: sweep_bench <target-port> <peer0-port> <peer1-port> [--keys N] [--batch N] [--rounds N] [--precheck]";
    if args.len() < 3 {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let port = |s: &str| -> u16 { s.parse().unwrap_or_else(|_| panic!("{usage}")) };
    let target = Endpoint::new("127.0.0.1", port(&args[0]));
    let peers = vec![
        Endpoint::new("127.0.0.1", port(&args[1])),
        Endpoint::new("127.0.0.1", port(&args[2])),
    ];
    let opt = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{usage}")))
            .unwrap_or(default)
    };
    let n = opt("--keys", 1_000_000);
    let batch = opt("--batch", 256);
    let rounds = opt("--rounds", 1);
    let precheck = args.iter().any(|a| a == "--precheck");

    let t0 = Instant::now();
    fill(&target, true, n, |_| true);
    fill(&peers[0], true, n, |i| i % 3 == 0);
    fill(&peers[1], true, n, |i| i % 3 == 1);
    println!(
        "populated: target {n} keys, peers {} + {} keys, {:.1} s",
        n.div_ceil(3),
        (n + 1) / 3,
        t0.elapsed().as_secs_f64()
    );

    let authority = Authority::Peers(peers);
    let placement = |k: &[u8]| -> Option<usize> {
        let i: usize = std::str::from_utf8(k.strip_prefix(b"k:")?)
            .ok()?
            .parse()
            .ok()?;
        match i % 3 {
            0 => Some(0),
            1 => Some(1),
            _ => None,
        }
    };
    for round in 0..rounds {
        for hinted in [false, true] {
            fill(&target, false, n, |i| i % 3 == 2);
            let mut plan = Plan::new(&target, &authority);
            plan.batch = batch;
            plan.timeout = Duration::from_secs(5);
            plan.precheck = precheck;
            if hinted {
                plan.hint = Some(&placement);
            }
            let start = Instant::now();
            let mut deferred = 0u64;
            let r = sweep(&plan, Scope::Db(0), &mut |_, _| deferred += 1).expect("sweep");
            let secs = start.elapsed().as_secs_f64();
            println!(
                "round {round} hint={hinted:<5} precheck={precheck:<5} batch={batch}: {secs:.2} s ({:.0} keys/s) scanned={} deleted={} kept_on_peer={} deferred={} peer_round_trips={} peer_exists={} watch_aborts={}",
                r.scanned as f64 / secs,
                r.scanned,
                r.deleted,
                r.kept_on_peer,
                r.deferred,
                r.peer_round_trips,
                r.peer_exists,
                r.watch_aborts,
            );
        }
    }
}

/// Write `k:i` for every i < n with `pick(i)` (FLUSHALL first when `flush`), pipelined MSETs.
fn fill(ep: &Endpoint, flush: bool, n: usize, pick: impl Fn(usize) -> bool) {
    let mut c = Client::connect(ep, Duration::from_secs(5)).expect("connect");
    if flush {
        assert!(!c.call(&["FLUSHALL"]).expect("FLUSHALL").is_error());
    }
    let keys: Vec<String> = (0..n)
        .filter(|&i| pick(i))
        .map(|i| format!("k:{i}"))
        .collect();
    for window in keys.chunks(100_000) {
        let mut out = BytesMut::new();
        let mut sent = 0;
        for chunk in window.chunks(1000) {
            let mut args: Vec<&[u8]> = vec![b"MSET"];
            for k in chunk {
                args.push(k.as_bytes());
                args.push(b"v");
            }
            encode_command(&mut out, &args);
            sent += 1;
        }
        c.stream.write_all(&out).expect("write");
        for _ in 0..sent {
            if let Reply::Error(e) = c.read_reply().expect("read") {
                panic!("MSET: {}", String::from_utf8_lossy(&e));
            }
        }
    }
}
