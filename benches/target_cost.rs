//! What writing one small key costs the target, by the shape of the commands: the profile
//! behind issue 18's key-heavy full sync (docs/performance.md, "Key-heavy full sync: where each
//! microsecond goes"). A full sync into one target is bounded by that target's one thread, so
//! its CPU per key, for each way of writing a key, says which shape the relay should send.
//!
//! ```sh
//! cargo bench --bench target_cost                                 # 1,000,000 strings, 100,000 aggregates per type
//! cargo bench --bench target_cost -- --keys 50000 --agg-keys 20000  # quicker
//! cargo test --release --bench target_cost                         # every case once at 2,000 keys (a smoke test)
//! ```
//!
//! One `redis-server` of its own (`save ""`, no AOF, a free loopback port, stopped at the end),
//! one connection, commands pipelined in windows of about `WINDOW` commands. For each case the
//! database is emptied (`FLUSHALL SYNC`, not measured), then the keys are written into it, so
//! that every case pays the dictionary's growth as a full sync does. The figure is the
//! server's `used_cpu_user + used_cpu_sys` (`INFO cpu`, getrusage: microsecond resolution)
//! over the case, divided by the keys written. Cases:
//! - 100-byte strings: `MSET` of 16, 64, 256 and 1,024 keys; `SET`; `RESTORE ... REPLACE` of a
//!   string payload (what a key with a TTL or LRU/LFU data costs);
//! - aggregates of 20 elements (listpack-encoded hash, list, sorted set): `RESTORE ... REPLACE`
//!   of the payload (what the relay sends) against the command that builds it (`HSET`,
//!   `RPUSH`, `ZADD` with the 20 elements);
//! - each plain (pipelined) and inside `MULTI`/`EXEC` per batch of 256 and 512 keys, each batch
//!   with one record `SET` as the relay's exactly-once batches carry (an `MSET` larger than the
//!   batch is one batch by itself);
//! - the floor: a native replica loading the same keys from an RDB (`REPLICAOF`, the replica's
//!   CPU over its sync, divided by the keys), after the plain `SET` case and after each
//!   aggregate's plain `RESTORE` case.
//!
//! Every reply is checked: a case with an error reply stops the run (a figure of error
//! replies would measure nothing).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use redis_relay::resp::Reply;
use support::{Client, RedisServer};

/// Commands sent before reading their replies (one write, then the replies).
const WINDOW: usize = 2048;
/// Bytes of a string value (`DEBUG POPULATE`'s size in the issue's data set).
const STRING_BYTES: usize = 100;
/// Elements of an aggregate.
const ELEMENTS: usize = 20;

/// How the keys of a case are written.
#[derive(Clone, Copy)]
enum Shape {
    /// `MSET` of this many keys per command.
    Mset(usize),
    Set,
    RestoreString,
    /// `RESTORE` of a 20-element aggregate's payload.
    Restore(Agg),
    /// The command that builds the aggregate (`HSET`, `RPUSH`, `ZADD` with 20 elements).
    Build(Agg),
}

#[derive(Clone, Copy, PartialEq)]
enum Agg {
    Hash,
    List,
    Zset,
}

impl Agg {
    fn name(self) -> &'static str {
        match self {
            Agg::Hash => "hash",
            Agg::List => "list",
            Agg::Zset => "zset",
        }
    }

    /// The command that creates `key` with the 20 elements.
    fn build(self, key: &[u8]) -> Vec<Vec<u8>> {
        let cmd: &[u8] = match self {
            Agg::Hash => b"HSET",
            Agg::List => b"RPUSH",
            Agg::Zset => b"ZADD",
        };
        let mut args = vec![cmd.to_vec(), key.to_vec()];
        for j in 0..ELEMENTS {
            let element = noise(j as u64, 8);
            match self {
                Agg::Hash => args.extend([format!("f{j}").into_bytes(), element]),
                Agg::List => args.push(element),
                Agg::Zset => args.extend([format!("{j}").into_bytes(), element]),
            }
        }
        args
    }
}

impl Shape {
    fn label(self) -> String {
        match self {
            Shape::Mset(k) => format!("MSET of {k} keys"),
            Shape::Set => "SET".into(),
            Shape::RestoreString => "RESTORE".into(),
            Shape::Restore(a) => format!("RESTORE ({} payload, listpack)", a.name()),
            Shape::Build(a) => match a {
                Agg::Hash => "HSET of 20 fields".into(),
                Agg::List => "RPUSH of 20 elements".into(),
                Agg::Zset => "ZADD of 20 members".into(),
            },
        }
    }

    /// Keys per command.
    fn keys_per_command(self) -> usize {
        match self {
            Shape::Mset(k) => k,
            _ => 1,
        }
    }
}

/// The payloads `DUMP` gives for a 100-byte string and each 20-element aggregate.
struct Payloads {
    string: Vec<u8>,
    hash: Vec<u8>,
    list: Vec<u8>,
    zset: Vec<u8>,
}

/// `n` letters and digits from `seed` (splitmix64): values that LZF cannot shrink, as the e2e
/// bench's data (a server compresses a compressible value in its RDB and in a `DUMP` payload,
/// which would make the RDB load and `RESTORE` look cheaper than they are).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    const A: &[u8; 64] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5eed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            A[((z ^ (z >> 31)) & 63) as usize]
        })
        .collect()
}

fn dump(c: &mut Client, create: Vec<Vec<u8>>) -> Vec<u8> {
    c.cmd(&create);
    let Reply::Bulk(Some(p)) = c.cmd(&[b"DUMP".as_slice(), &create[1]]) else {
        panic!("DUMP returned no payload");
    };
    c.cmd(&[b"DEL".as_slice(), &create[1]]);
    p.to_vec()
}

fn payloads(c: &mut Client) -> Payloads {
    let value = noise(1, STRING_BYTES);
    Payloads {
        string: dump(c, vec![b"SET".to_vec(), b"tmp".to_vec(), value]),
        hash: dump(c, Agg::Hash.build(b"tmp")),
        list: dump(c, Agg::List.build(b"tmp")),
        zset: dump(c, Agg::Zset.build(b"tmp")),
    }
}

/// The commands writing keys `i..i + n` (`n` a multiple of the shape's keys per command, or
/// the rest).
fn commands(shape: Shape, p: &Payloads, i: u64, n: u64) -> Vec<Vec<Vec<u8>>> {
    let key = |j: u64| format!("key:{j}").into_bytes();
    let value = noise(1, STRING_BYTES);
    let restore = |j: u64, payload: &[u8]| {
        vec![
            b"RESTORE".to_vec(),
            key(j),
            b"0".to_vec(),
            payload.to_vec(),
            b"REPLACE".to_vec(),
        ]
    };
    let mut out = Vec::new();
    let mut j = i;
    while j < i + n {
        let cmd = match shape {
            Shape::Mset(k) => {
                let end = (j + k as u64).min(i + n);
                let mut args = vec![b"MSET".to_vec()];
                for x in j..end {
                    args.extend([key(x), value.clone()]);
                }
                j = end;
                out.push(args);
                continue;
            }
            Shape::Set => vec![b"SET".to_vec(), key(j), value.clone()],
            Shape::RestoreString => restore(j, &p.string),
            Shape::Restore(Agg::Hash) => restore(j, &p.hash),
            Shape::Restore(Agg::List) => restore(j, &p.list),
            Shape::Restore(Agg::Zset) => restore(j, &p.zset),
            Shape::Build(a) => a.build(&key(j)),
        };
        out.push(cmd);
        j += 1;
    }
    out
}

/// `used_cpu_user + used_cpu_sys` of the server, seconds.
fn server_cpu(c: &mut Client) -> f64 {
    let text = c.cmd(&["INFO", "cpu"]).as_text().unwrap_or_default();
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    field("used_cpu_user:") + field("used_cpu_sys:")
}

/// Send `cmds` in windows of about `WINDOW`, checking every reply (EXEC's too).
fn send(c: &mut Client, cmds: &mut Vec<Vec<Vec<u8>>>, count: &mut usize) {
    for r in c.pipeline(cmds) {
        let bad = match &r {
            Reply::Error(_) => true,
            Reply::Array(Some(v)) => v.iter().any(|x| x.is_error()),
            Reply::Array(None) => true,
            _ => false,
        };
        assert!(!bad, "the server refused a command: {r:?}");
    }
    *count += cmds.len();
    cmds.clear();
}

/// One case's figures.
struct Figure {
    cpu_us_per_key: f64,
    keys_per_sec: f64,
}

/// Write `keys` keys of `shape` into the emptied server; `batch`: MULTI/EXEC per so many keys.
fn run_case(c: &mut Client, p: &Payloads, shape: Shape, keys: u64, batch: Option<u64>) -> Figure {
    c.cmd(&["FLUSHALL", "SYNC"]);
    // A batch holds at least one command (an MSET larger than the batch is one batch).
    let per_batch = batch.map(|b| b.max(shape.keys_per_command() as u64));
    let step = per_batch.unwrap_or(keys);
    let cpu0 = server_cpu(c);
    let t = Instant::now();
    let (mut window, mut sent, mut nbatch) = (Vec::new(), 0usize, 0u64);
    let mut i = 0;
    while i < keys {
        let n = step.min(keys - i);
        let cmds = commands(shape, p, i, n);
        match per_batch {
            Some(_) => {
                window.push(vec![b"MULTI".to_vec()]);
                window.extend(cmds);
                nbatch += 1;
                window.push(vec![
                    b"SET".to_vec(),
                    b"redis-relay:offset:cost:0".to_vec(),
                    nbatch.to_string().into_bytes(),
                ]);
                window.push(vec![b"EXEC".to_vec()]);
            }
            None => {
                for cmd in cmds {
                    window.push(cmd);
                    if window.len() >= WINDOW {
                        send(c, &mut window, &mut sent);
                    }
                }
            }
        }
        if window.len() >= WINDOW {
            send(c, &mut window, &mut sent);
        }
        i += n;
    }
    send(c, &mut window, &mut sent);
    let secs = t.elapsed().as_secs_f64();
    let cpu = server_cpu(c) - cpu0;
    let held = match c.cmd(&["DBSIZE"]) {
        Reply::Integer(n) => n as u64,
        other => panic!("DBSIZE: {other:?}"),
    };
    let own = u64::from(per_batch.is_some());
    assert_eq!(
        held,
        keys + own,
        "{}: keys held after the case",
        shape.label()
    );
    Figure {
        cpu_us_per_key: cpu * 1e6 / keys as f64,
        keys_per_sec: keys as f64 / secs,
    }
}

/// A native replica's CPU per key to load what `master` holds (`keys` keys) from an RDB.
fn replica_load(master: &RedisServer, keys: u64) -> Figure {
    let r = RedisServer::start(&[]);
    let mut rc = r.client();
    master
        .client()
        .cmd(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]);
    let cpu0 = server_cpu(&mut rc);
    let t = Instant::now();
    rc.cmd(&["REPLICAOF", "127.0.0.1", &master.port.to_string()]);
    let synced = support::wait_until(Duration::from_secs(600), || {
        rc.info_field("replication", "master_link_status")
            .as_deref()
            == Some("up")
            && rc
                .info_field("replication", "master_sync_in_progress")
                .as_deref()
                == Some("0")
    });
    assert!(synced, "the replica never synced");
    let secs = t.elapsed().as_secs_f64();
    let cpu = server_cpu(&mut rc) - cpu0;
    Figure {
        cpu_us_per_key: cpu * 1e6 / keys as f64,
        keys_per_sec: keys as f64 / secs,
    }
}

/// The floor: `keys` keys of `shape` written into a server of their own, then loaded by a native
/// replica from an RDB (its own server: once a replica attached, a master feeds its backlog on
/// every write, which would weigh on the cases after it).
fn floor(p: &Payloads, shape: Shape, keys: u64) -> Figure {
    let master = RedisServer::start(&[]);
    run_case(&mut master.client(), p, shape, keys, None);
    replica_load(&master, keys)
}

/// (string keys, aggregate keys per type); without `--bench` (`cargo test`) 2,000 of each.
fn parse_opts() -> (u64, u64) {
    let full = std::env::args().any(|a| a == "--bench");
    let (mut keys, mut agg) = match full {
        true => (1_000_000u64, 100_000u64),
        false => (2_000, 2_000),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = || -> u64 {
            it.next()
                .and_then(|v| v.replace([',', '_'], "").parse().ok())
                .unwrap_or_else(|| panic!("{a} N"))
        };
        match a.as_str() {
            "--keys" => keys = num(),
            "--agg-keys" => agg = num(),
            "--bench" => {}
            other => {
                panic!("unknown argument {other} (usage: target_cost [--keys N] [--agg-keys N])")
            }
        }
    }
    (keys, agg)
}

fn row(case: &str, wrap: &str, keys: u64, f: &Figure, floor: &Figure) {
    println!(
        "| {case} | {wrap} | {keys} | {:.2} | {:.2}x | {:.0} |",
        f.cpu_us_per_key,
        f.cpu_us_per_key / floor.cpu_us_per_key,
        f.keys_per_sec
    );
}

fn main() {
    let (keys, agg_keys) = parse_opts();
    let server = RedisServer::start(&[]);
    let mut c = server.client();
    let p = payloads(&mut c);
    let wraps: [(&str, Option<u64>); 3] = [
        ("plain", None),
        ("MULTI per 256 keys", Some(256)),
        ("MULTI per 512 keys", Some(512)),
    ];
    // Warm-up: the server's allocator and its first dictionary growths.
    run_case(&mut c, &p, Shape::Set, keys, None);
    println!("\ntarget CPU per key written (redis-server's used_cpu_user+sys over the case, one connection, windows of {WINDOW} commands); the floor: a native replica loading the same keys from an RDB\n");
    println!("| how | batching | keys | target CPU µs/key | vs the RDB load | keys/s (wall) |");
    println!("|---|---|---|---|---|---|");
    let strings = [
        Shape::Mset(16),
        Shape::Mset(64),
        Shape::Mset(256),
        Shape::Mset(1024),
        Shape::Set,
        Shape::RestoreString,
    ];
    let floor_s = floor(&p, Shape::Set, keys);
    row(
        "native replica loading the strings (RDB)",
        "–",
        keys,
        &floor_s,
        &floor_s,
    );
    for shape in strings {
        for (wrap, batch) in wraps {
            let f = run_case(&mut c, &p, shape, keys, batch);
            row(
                &format!("{} (100-byte strings)", shape.label()),
                wrap,
                keys,
                &f,
                &floor_s,
            );
        }
    }
    for agg in [Agg::Hash, Agg::List, Agg::Zset] {
        let floor_a = floor(&p, Shape::Restore(agg), agg_keys);
        row(
            &format!("native replica loading the {} keys (RDB)", agg.name()),
            "–",
            agg_keys,
            &floor_a,
            &floor_a,
        );
        for shape in [Shape::Restore(agg), Shape::Build(agg)] {
            for (wrap, batch) in wraps {
                let f = run_case(&mut c, &p, shape, agg_keys, batch);
                row(&shape.label(), wrap, agg_keys, &f, &floor_a);
            }
        }
    }
}
