//! A Redis Cluster as the target, end to end: a Twemproxy pool of two masters (and a
//! database 1 mapped to 0) copied into a real cluster of three masters with a replica each,
//! under non-idempotent traffic, through SIGKILLs of the relay, a slot migration during the
//! full sync and another during the stream, and a `CLUSTER FAILOVER`; then every cross-slot
//! command. The cluster must hold exactly the union of the sources: nothing lost, nothing
//! doubled.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis_relay::resp::Reply;
use support::workload::{metric_sum, snapshot_done, sync_full};
use support::{redis_cli_bin, wait_until, Client, Nutcracker, RedisCluster, RedisServer, Relay};

fn b(words: &[String]) -> Vec<Vec<u8>> {
    words.iter().map(|w| w.as_bytes().to_vec()).collect()
}

/// Non-idempotent writes (list pushes and pops, INCRBY, APPEND, HINCRBYFLOAT, SADD/SREM,
/// ZINCRBY) through `c` until `stop`; `select` first when given (a master's database 1).
fn traffic(
    mut c: Client,
    select: Option<&str>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    tag: &str,
) {
    if let Some(db) = select {
        assert!(!c.cmd(&["SELECT", db]).is_error());
    }
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let k = i % 97;
        let cmds: Vec<Vec<Vec<u8>>> = vec![
            b(&["RPUSH".into(), format!("{tag}list:{k}"), format!("{i}")]),
            b(&[
                "INCRBY".into(),
                format!("{tag}ctr:{k}"),
                format!("{}", i % 7 + 1),
            ]),
            b(&[
                "APPEND".into(),
                format!("{tag}app:{}", k % 13),
                format!("{i},"),
            ]),
            b(&[
                "HINCRBYFLOAT".into(),
                format!("{tag}hf:{}", k % 11),
                "f".into(),
                "0.5".into(),
            ]),
            b(&[
                "SADD".into(),
                format!("{tag}set:{}", k % 17),
                format!("{}", i % 50),
            ]),
            b(&[
                "SREM".into(),
                format!("{tag}set:{}", k % 17),
                format!("{}", (i + 25) % 50),
            ]),
            b(&[
                "ZINCRBY".into(),
                format!("{tag}z:{}", k % 5),
                "1.5".into(),
                format!("m{}", i % 9),
            ]),
            b(&["LPOP".into(), format!("{tag}list:{}", (k + 1) % 97)]),
        ];
        for r in c.pipeline(&cmds) {
            assert!(!r.is_error(), "{r:?}");
        }
        done.fetch_add(1, Ordering::Relaxed);
        i += 1;
        if i.is_multiple_of(20) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A comparable form of every key of `db` on the server at `port` (the relay's own keys
/// left out): type and value, collections sorted where order carries no meaning.
fn contents(port: u16, db: u32, into: &mut BTreeMap<Vec<u8>, String>) {
    let mut c = Client::connect(port).unwrap();
    assert!(!c.cmd(&["SELECT", &db.to_string()]).is_error());
    let mut cursor = "0".to_string();
    loop {
        let r = c.cmd(&["SCAN", &cursor, "COUNT", "1000"]);
        let Reply::Array(Some(parts)) = r else {
            panic!("SCAN: {r:?}")
        };
        cursor = parts[0].as_text().unwrap();
        let Reply::Array(Some(keys)) = &parts[1] else {
            panic!()
        };
        for k in keys {
            let Reply::Bulk(Some(k)) = k else { continue };
            if k.starts_with(b"redis-relay:") {
                continue;
            }
            into.insert(k.to_vec(), value_of(&mut c, k));
        }
        if cursor == "0" {
            break;
        }
    }
}

fn value_of(c: &mut Client, k: &[u8]) -> String {
    let kind = c.cmd(&[&b"TYPE"[..], k]).as_text().unwrap_or_default();
    let sorted = |r: Reply| {
        let mut v: Vec<String> = match r {
            Reply::Array(Some(items)) => items.iter().filter_map(|i| i.as_text()).collect(),
            other => vec![format!("{other:?}")],
        };
        v.sort();
        v.join(",")
    };
    let v = match kind.as_str() {
        "string" => format!("{:?}", c.cmd(&[&b"GET"[..], k])),
        "list" => format!("{:?}", c.cmd(&[&b"LRANGE"[..], k, b"0", b"-1"])),
        "hash" => sorted(c.cmd(&[&b"HGETALL"[..], k])),
        "set" => sorted(c.cmd(&[&b"SMEMBERS"[..], k])),
        "zset" => format!(
            "{:?}",
            c.cmd(&[&b"ZRANGE"[..], k, b"0", b"-1", b"WITHSCORES"])
        ),
        other => format!("<{other}>"),
    };
    format!("{kind}:{v}")
}

/// The sources' keys (database 1 mapped to 0) and the cluster's, each side read once.
fn both_sides(
    sources: &[u16],
    cluster: &RedisCluster,
) -> (BTreeMap<Vec<u8>, String>, BTreeMap<Vec<u8>, String>) {
    let mut want = BTreeMap::new();
    for p in sources {
        contents(*p, 0, &mut want);
        contents(*p, 1, &mut want);
    }
    let mut have = BTreeMap::new();
    for p in cluster.master_ports() {
        contents(p, 0, &mut have);
    }
    (want, have)
}

/// Wait until the cluster holds exactly what the sources hold (writes in flight settle).
fn assert_cluster_equal(sources: &[u16], cluster: &RedisCluster, log: &dyn Fn() -> String) {
    let mut last = String::new();
    let equal = wait_until(Duration::from_secs(60), || {
        let (want, have) = both_sides(sources, cluster);
        if want == have {
            return true;
        }
        let missing: Vec<_> = want
            .keys()
            .filter(|k| !have.contains_key(*k))
            .take(5)
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        let extra: Vec<_> = have
            .keys()
            .filter(|k| !want.contains_key(*k))
            .take(5)
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        let differ: Vec<_> = want
            .iter()
            .filter(|(k, v)| have.get(*k).is_some_and(|h| h != *v))
            .take(3)
            .map(|(k, v)| {
                format!(
                    "{}: source {v} target {}",
                    String::from_utf8_lossy(k),
                    have[k]
                )
            })
            .collect();
        last = format!("{} source keys, {} target keys; missing {missing:?}; extra {extra:?}; differing {differ:?}", want.len(), have.len());
        false
    });
    assert!(
        equal,
        "the cluster differs from the sources: {last}\nlog:\n{}",
        log()
    );
}

/// `redis-cli --cluster reshard`: move `slots` slots from the first master to the second.
fn reshard(cluster: &RedisCluster, slots: usize) -> std::process::Child {
    let view = cluster.view();
    let masters: Vec<_> = view
        .iter()
        .filter(|l| l.role == "master" && !l.slots.is_empty())
        .collect();
    let (from, to) = (&masters[0], &masters[1]);
    Command::new(redis_cli_bin())
        .args(["--cluster", "reshard", &format!("127.0.0.1:{}", from.port)])
        .args(["--cluster-from", &from.id, "--cluster-to", &to.id])
        .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
        .args(["--cluster-pipeline", "50"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli --cluster reshard")
}

fn wait_child(mut c: std::process::Child, what: &str) {
    let st = c.wait().expect(what);
    let mut err = String::new();
    if let Some(mut e) = c.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(st.success(), "{what} failed: {err}");
}

/// `CLUSTER FAILOVER` on a replica; returns once it is a master.
fn failover(cluster: &RedisCluster) -> u16 {
    let replica = cluster.replica_ports()[0];
    let mut c = cluster.client(replica);
    assert!(!c.cmd(&["CLUSTER", "FAILOVER"]).is_error());
    assert!(
        wait_until(Duration::from_secs(30), || c
            .info_field("replication", "role")
            .as_deref()
            == Some("master")),
        "replica {replica} did not take over"
    );
    replica
}

/// Load keys of every type (some with a TTL far away) into `port`'s database `db`.
fn preload(port: u16, db: u32, tag: &str, n: usize) {
    let mut c = Client::connect(port).unwrap();
    assert!(!c.cmd(&["SELECT", &db.to_string()]).is_error());
    let cmds: Vec<Vec<Vec<u8>>> = (0..n)
        .map(|i| match i % 5 {
            0 => b(&["SET".into(), format!("{tag}s:{i}"), format!("v{i}")]),
            1 => b(&[
                "RPUSH".into(),
                format!("{tag}l:{i}"),
                "a".into(),
                "b".into(),
                format!("{i}"),
            ]),
            2 => b(&[
                "HSET".into(),
                format!("{tag}h:{i}"),
                "f".into(),
                format!("{i}"),
                "g".into(),
                "x".into(),
            ]),
            3 => b(&[
                "SADD".into(),
                format!("{tag}S:{i}"),
                "a".into(),
                format!("{i}"),
            ]),
            _ => b(&[
                "ZADD".into(),
                format!("{tag}z:{i}"),
                "1".into(),
                format!("m{i}"),
            ]),
        })
        .collect();
    for chunk in cmds.chunks(500) {
        for r in c.pipeline(chunk) {
            assert!(!r.is_error(), "{r:?}");
        }
    }
    let ttl: Vec<Vec<Vec<u8>>> = (0..n / 10)
        .map(|i| {
            b(&[
                "EXPIRE".into(),
                format!("{tag}s:{}", i * 5),
                "100000".into(),
            ])
        })
        .collect();
    c.pipeline(&ttl);
}

#[test]
fn twemproxy_pool_into_a_cluster_through_kills_migrations_and_a_failover() {
    let a = RedisServer::start(&["repl-backlog-size 64mb"]);
    let bm = RedisServer::start(&[
        "repl-backlog-size 64mb",
        "repl-diskless-sync yes",
        "repl-diskless-sync-delay 0",
    ]);
    let cluster = RedisCluster::start(3);
    let proxy = Nutcracker::start(&[a.addr(), bm.addr()]);
    // Enough keys that the first migration runs while the snapshot is applied.
    preload(a.port, 0, "a:", 60_000);
    preload(bm.port, 0, "b:", 60_000);
    preload(a.port, 1, "a1:", 2_000);
    let state = tempfile::tempdir().unwrap();
    let args = vec![
        "--twemproxy".to_string(),
        proxy.config_path.display().to_string(),
        "--target".into(),
        cluster.url(),
        "--db-map".into(),
        "1:0".into(),
        "--state-dir".into(),
        state.path().display().to_string(),
    ];
    let sources = [a.addr(), bm.addr()];
    let mut relay = Relay::start_sync(&args, state.path());
    // A slot migration during the full sync.
    let moving = reshard(&cluster, 1500);
    assert!(
        wait_until(Duration::from_secs(120), || snapshot_done(&relay, &sources)),
        "first sync: {}",
        relay.log_text()
    );
    wait_child(moving, "reshard during the full sync");
    let full_before = (sync_full(&a), sync_full(&bm));

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for (tag, client, db) in [
        ("p0:", proxy.client(), None),
        ("p1:", proxy.client(), None),
        ("d1:", a.client(), Some("1")),
    ] {
        let (s, d) = (stop.clone(), done.clone());
        workers.push(std::thread::spawn(move || traffic(client, db, s, d, tag)));
    }
    let mut logs = String::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..3 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 1200));
        if round == 1 {
            // A slot migration during the stream, the relay writing all along.
            wait_child(reshard(&cluster, 800), "reshard during the stream");
        }
        relay.kill();
        logs.push_str(&format!("--- run {round}\n{}", relay.log_text()));
        std::thread::sleep(Duration::from_millis(500));
        relay = Relay::start_sync(&args, state.path());
        assert!(
            wait_until(Duration::from_secs(60), || snapshot_done(&relay, &sources)),
            "restart {round} did not resume: {}",
            relay.log_text()
        );
    }
    // A failover of a target master while the relay writes.
    let promoted = failover(&cluster);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 200, "traffic ran");
    let current = relay.log_text();
    let all = |l: &str| format!("{l}--- last run\n{}", current);
    assert_cluster_equal(&[a.port, bm.port], &cluster, &|| all(&logs));
    assert_eq!(
        (sync_full(&a), sync_full(&bm)),
        full_before,
        "a restart caused a full sync"
    );
    // A FLUSHDB of database 1, merged into the cluster's database 0 with database 0: only
    // the keys database 0 does not hold go (the relay asks the source itself).
    let mut db1 = a.client();
    assert!(!db1.cmd(&["SELECT", "1"]).is_error());
    assert!(!db1.cmd(&["FLUSHDB"]).is_error());
    assert_cluster_equal(&[a.port, bm.port], &cluster, &|| all(&logs));
    let redirects = metric_sum(&relay, "redis_relay_cluster_redirects_total");
    assert!(
        redirects > 0.0,
        "the failover of {promoted} redirected nothing:\n{}",
        relay.metrics()
    );
    let (code, _) = relay.terminate(Duration::from_secs(20));
    assert_eq!(
        code,
        Some(0),
        "exit after SIGTERM; log:\n{}",
        relay.log_text()
    );
}

/// Every command of the item 5, with keys in several slots, from one master into
/// the cluster: the cluster ends in the master's state, and each is counted.
#[test]
fn cross_slot_commands_end_in_the_sources_state() {
    let m = RedisServer::start(&[]);
    let cluster = RedisCluster::start(3);
    let state = tempfile::tempdir().unwrap();
    let mut c = m.client();
    let setup: Vec<Vec<Vec<u8>>> = vec![
        b(&[
            "RPUSH".into(),
            "xl:a".into(),
            "1".into(),
            "2".into(),
            "3".into(),
        ]),
        b(&[
            "SADD".into(),
            "xs:a".into(),
            "1".into(),
            "2".into(),
            "3".into(),
        ]),
        b(&["SADD".into(), "xs:b".into(), "3".into(), "4".into()]),
        b(&[
            "ZADD".into(),
            "xz:a".into(),
            "1".into(),
            "a".into(),
            "2".into(),
            "b".into(),
        ]),
        b(&["ZADD".into(), "xz:b".into(), "5".into(), "b".into()]),
        b(&["SET".into(), "xbit:a".into(), "abc".into()]),
        b(&["SET".into(), "xbit:b".into(), "zzz".into()]),
        b(&["PFADD".into(), "xhll:a".into(), "1".into(), "2".into()]),
        b(&["PFADD".into(), "xhll:b".into(), "3".into()]),
        b(&[
            "SET".into(),
            "xr:from".into(),
            "moved".into(),
            "EX".into(),
            "10000".into(),
        ]),
        b(&["SET".into(), "xcopy:a".into(), "original".into()]),
        b(&["SET".into(), "xctr:a".into(), "10".into()]),
    ];
    for r in c.pipeline(&setup) {
        assert!(!r.is_error(), "{r:?}");
    }
    let lib = |name: &str| {
        format!("#!lua name={name}\nredis.register_function('{name}_f', function(keys, args) return 1 end)")
    };
    assert!(!c.cmd(&["FUNCTION", "LOAD", &lib("snaplib")]).is_error());
    let args = vec![
        "--source".to_string(),
        m.url(),
        "--target".into(),
        cluster.url(),
        "--target-owner".into(),
        "exclusive".into(),
        "--state-dir".into(),
        state.path().display().to_string(),
    ];
    let relay = Relay::start_synced(&args, state.path(), &m.addr());
    let stream: Vec<Vec<Vec<u8>>> = vec![
        b(&[
            "MSET".into(),
            "xm:1".into(),
            "a".into(),
            "xm:2".into(),
            "b".into(),
            "xm:3".into(),
            "c".into(),
        ]),
        b(&["DEL".into(), "xm:1".into(), "xm:2".into()]),
        b(&[
            "MSET".into(),
            "xu:1".into(),
            "a".into(),
            "xu:2".into(),
            "b".into(),
        ]),
        b(&["UNLINK".into(), "xu:1".into(), "xu:2".into()]),
        b(&["RENAME".into(), "xr:from".into(), "xr:to".into()]),
        b(&["RPOPLPUSH".into(), "xl:a".into(), "xl:b".into()]),
        b(&[
            "LMOVE".into(),
            "xl:a".into(),
            "xl:c".into(),
            "LEFT".into(),
            "RIGHT".into(),
        ]),
        b(&["SMOVE".into(), "xs:a".into(), "xs:c".into(), "1".into()]),
        b(&[
            "SINTERSTORE".into(),
            "xs:i".into(),
            "xs:a".into(),
            "xs:b".into(),
        ]),
        b(&[
            "SUNIONSTORE".into(),
            "xs:u".into(),
            "xs:a".into(),
            "xs:b".into(),
        ]),
        b(&[
            "SDIFFSTORE".into(),
            "xs:d".into(),
            "xs:a".into(),
            "xs:b".into(),
        ]),
        b(&[
            "ZUNIONSTORE".into(),
            "xz:u".into(),
            "2".into(),
            "xz:a".into(),
            "xz:b".into(),
        ]),
        b(&[
            "ZINTERSTORE".into(),
            "xz:i".into(),
            "2".into(),
            "xz:a".into(),
            "xz:b".into(),
        ]),
        b(&[
            "BITOP".into(),
            "OR".into(),
            "xbit:or".into(),
            "xbit:a".into(),
            "xbit:b".into(),
        ]),
        b(&[
            "PFMERGE".into(),
            "xhll:m".into(),
            "xhll:a".into(),
            "xhll:b".into(),
        ]),
        b(&["COPY".into(), "xcopy:a".into(), "xcopy:b".into()]),
        b(&[
            "MSETNX".into(),
            "xn:1".into(),
            "a".into(),
            "xn:2".into(),
            "b".into(),
        ]),
        b(&[
            "EVAL".into(),
            "redis.call('INCR', KEYS[1]); return redis.call('RPUSH', KEYS[2], ARGV[1])".into(),
            "2".into(),
            "xctr:a".into(),
            "xl:e".into(),
            "v".into(),
        ]),
        b(&["MULTI".into()]),
        b(&["INCRBY".into(), "xctr:a".into(), "5".into()]),
        b(&["RPUSH".into(), "xl:t".into(), "in-tx".into()]),
        b(&["SADD".into(), "xs:t".into(), "m".into()]),
        b(&["EXEC".into()]),
    ];
    for r in c.pipeline(&stream) {
        assert!(!r.is_error(), "{r:?}");
    }
    assert!(!c.cmd(&["FUNCTION", "LOAD", &lib("streamlib")]).is_error());
    let log = || relay.log_text();
    assert_cluster_equal(&[m.port], &cluster, &log);
    // Function libraries act on the node that loads them: every master has both, the one
    // of the snapshot and the one of the stream.
    for p in cluster.master_ports() {
        let mut node = cluster.client(p);
        assert!(
            wait_until(Duration::from_secs(10), || {
                let list = format!("{:?}", node.cmd(&["FUNCTION", "LIST"]));
                list.contains("snaplib") && list.contains("streamlib")
            }),
            "master {p} lacks a library: {:?}\n{}",
            node.cmd(&["FUNCTION", "LIST"]),
            relay.log_text()
        );
    }
    // EVAL reaches the stream as its effects inside MULTI/EXEC (Redis 7 replicates scripts
    // by effects): counted as `exec`, like the source's own transaction.
    let counted = relay.metrics();
    for command in [
        "mset",
        "del",
        "unlink",
        "rename",
        "rpoplpush",
        "lmove",
        "smove",
        "sinterstore",
        "bitop",
        "pfmerge",
        "copy",
        "msetnx",
        "exec",
    ] {
        assert!(
            counted
                .lines()
                .any(|l| l.starts_with("redis_relay_cross_slot_total{")
                    && l.contains(&format!("command=\"{command}\""))),
            "{command} not counted:\n{counted}"
        );
    }
    // A FLUSHALL of the only writer (exclusive target): every master is emptied.
    assert!(!c.cmd(&["FLUSHALL"]).is_error());
    assert!(!c.cmd(&["SET", "after:flush", "1"]).is_error());
    assert_cluster_equal(&[m.port], &cluster, &log);
}

/// MOVE and SWAPDB between two databases that `--db-map 1:0` merges into the cluster's
/// database 0 change nothing there (`noop`); the cluster still equals the source's union.
#[test]
fn move_and_swapdb_between_merged_databases() {
    let m = RedisServer::start(&[]);
    let cluster = RedisCluster::start(3);
    let state = tempfile::tempdir().unwrap();
    preload(m.port, 0, "m0:", 300);
    preload(m.port, 1, "m1:", 300);
    let args = vec![
        "--source".to_string(),
        m.url(),
        "--target".into(),
        cluster.url(),
        "--db-map".into(),
        "1:0".into(),
        "--state-dir".into(),
        state.path().display().to_string(),
    ];
    let relay = Relay::start_synced(&args, state.path(), &m.addr());
    let mut c = m.client();
    for cmd in [
        vec!["MOVE", "m0:s:0", "1"],
        vec!["SWAPDB", "0", "1"],
        vec!["SELECT", "1"],
        vec!["MOVE", "m1:s:5", "0"],
        vec!["RPUSH", "after:swap", "x"],
    ] {
        assert!(!c.cmd(&cmd).is_error(), "{cmd:?}");
    }
    let log = || relay.log_text();
    assert_cluster_equal(&[m.port], &cluster, &log);
    let counted = relay.metrics();
    for command in ["move", "swapdb"] {
        assert!(
            counted
                .lines()
                .any(|l| l.starts_with("redis_relay_cross_slot_total{")
                    && l.contains(&format!("command=\"{command}\""))
                    && l.contains("handling=\"noop\"")),
            "{command} not counted as noop:\n{counted}"
        );
    }
}

/// `restore` of an RDB file into a cluster: every key lands on the master of its slot.
#[test]
fn restore_an_rdb_file_into_a_cluster() {
    let m = RedisServer::start(&[]);
    let cluster = RedisCluster::start(3);
    preload(m.port, 0, "r:", 5_000);
    let mut c = m.client();
    assert!(!c.cmd(&["SAVE"]).is_error());
    let dir = c.cmd(&["CONFIG", "GET", "dir"]);
    let Reply::Array(Some(parts)) = dir else {
        panic!("CONFIG GET dir: {dir:?}")
    };
    let rdb = std::path::Path::new(&parts[1].as_text().unwrap()).join("dump.rdb");
    let out = support::relay_cli(&[
        "restore",
        &rdb.display().to_string(),
        "--target",
        &cluster.url(),
        "-q",
    ]);
    assert!(
        out.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want = BTreeMap::new();
    contents(m.port, 0, &mut want);
    let mut have = BTreeMap::new();
    for p in cluster.master_ports() {
        contents(p, 0, &mut have);
    }
    assert_eq!(want.len(), 5_000);
    assert!(
        want == have,
        "{} keys restored of {}",
        have.len(),
        want.len()
    );
}
