//! The e2e workloads several tests share: a preload through nutcracker with keys of every type,
//! binary and big ones; one master's own workload (several DBs, MULTI/EXEC, scripts, RESTORE,
//! MOVE, streams, FLUSHDB); and non-idempotent traffic for the SIGKILL loops.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis_relay::resp::Reply;

use super::{Client, Nutcracker, RedisServer, Relay};

/// Pipeline `cmds` in slices of `n`, asserting no error reply.
pub fn pipe(c: &mut Client, cmds: Vec<Vec<Vec<u8>>>, n: usize) {
    for chunk in cmds.chunks(n) {
        for r in c.pipeline(chunk) {
            assert!(!r.is_error(), "preload command failed: {r:?}");
        }
    }
}

/// A command's arguments as bytes.
pub fn b<S: AsRef<[u8]>>(words: &[S]) -> Vec<Vec<u8>> {
    words.iter().map(|w| w.as_ref().to_vec()).collect()
}

/// Through nutcracker: many small keys of every type, TTLs, binary values, and big keys of
/// `big` list elements (2/3 as many hash fields, 1/3 as many set and sorted set members).
pub fn preload(proxy: &Nutcracker, strings: usize, per_type: usize, big: usize) {
    let mut c = proxy.client();
    let mut cmds = Vec::new();
    for i in 0..strings {
        cmds.push(b(&["SET", &format!("str:{i}"), &format!("value-{i}")]));
    }
    pipe(&mut c, std::mem::take(&mut cmds), 5000);
    for i in 0..per_type {
        cmds.push(b(&[
            "HSET",
            &format!("hash:{i}"),
            "a",
            "1",
            "b",
            &i.to_string(),
            "c",
            "x",
        ]));
        cmds.push(b(&[
            "RPUSH",
            &format!("list:{i}"),
            "a",
            "b",
            &i.to_string(),
        ]));
        cmds.push(b(&["SADD", &format!("set:{i}"), "a", "b", &i.to_string()]));
        cmds.push(b(&[
            "ZADD",
            &format!("zset:{i}"),
            "1",
            "a",
            "2.5",
            "b",
            &i.to_string(),
            "c",
        ]));
        cmds.push(b(&[
            "SET",
            &format!("ttl:{i}"),
            "v",
            "PX",
            &(36_000_000 + i).to_string(),
        ]));
        cmds.push(b(&[
            "EXPIRE",
            &format!("hash:{i}"),
            &(86_400 + i).to_string(),
        ]));
    }
    pipe(&mut c, std::mem::take(&mut cmds), 5000);
    let binary: Vec<(&str, Vec<u8>)> = vec![
        ("bin:crlf", b"a\r\nb\r\n".to_vec()),
        ("bin:nul", b"\0x\0".to_vec()),
        ("bin:empty", Vec::new()),
        (
            "bin:1mib",
            (0..(1 << 20)).map(|i| (i % 251) as u8).collect(),
        ),
    ];
    for (k, v) in binary {
        c.cmd(&[b"SET".to_vec(), k.as_bytes().to_vec(), v]);
    }
    // Big keys, in bounded commands.
    for start in (0..big).step_by(1000) {
        let mut cmd = b(&["RPUSH", "big:list"]);
        cmd.extend((start..start + 1000).map(|i| format!("e{i}").into_bytes()));
        cmds.push(cmd);
    }
    for start in (0..big * 2 / 3).step_by(1000) {
        let mut cmd = b(&["HSET", "big:hash"]);
        for i in start..start + 1000 {
            cmd.push(format!("f{i}").into_bytes());
            cmd.push(format!("v{i}").into_bytes());
        }
        cmds.push(cmd);
    }
    for start in (0..big / 3).step_by(1000) {
        let mut z = b(&["ZADD", "big:zset"]);
        let mut st = b(&["SADD", "big:set"]);
        for i in start..start + 1000 {
            z.push(format!("{}", i as f64 / 7.0).into_bytes());
            z.push(format!("m{i}").into_bytes());
            st.push(format!("m{i}").into_bytes());
        }
        cmds.push(z);
        cmds.push(st);
    }
    pipe(&mut c, cmds, 20);
}

/// Straight to one master: several DBs, transactions, scripts, RESTORE, MOVE, streams.
pub fn master_workload(m: &RedisServer, tag: &str, scratch_db: &str) {
    let mut c = m.client();
    for db in ["0", "1", "3", "9", "15"] {
        c.cmd(&["SELECT", db]);
        c.cmd(&["SET", &format!("{tag}:db{db}:s"), "x"]);
        c.cmd(&["RPUSH", &format!("{tag}:db{db}:l"), "1", "2", "3"]);
        c.cmd(&["HSET", &format!("{tag}:db{db}:h"), "f", "v"]);
        c.cmd(&["PEXPIRE", &format!("{tag}:db{db}:h"), "100000000"]);
    }
    c.cmd(&["SELECT", "0"]);
    c.cmd(&["MULTI"]);
    c.cmd(&["INCRBY", &format!("{tag}:counter"), "5"]);
    c.cmd(&["LPUSH", &format!("{tag}:txlist"), "a", "b"]);
    c.cmd(&["SELECT", "3"]);
    c.cmd(&["SADD", &format!("{tag}:txset"), "m"]);
    let exec = c.cmd(&["EXEC"]);
    assert!(matches!(exec, Reply::Array(Some(_))), "{exec:?}");
    c.cmd(&["SELECT", "0"]);
    let script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])";
    c.cmd(&[
        "EVAL",
        script,
        "2",
        &format!("{{{tag}}}:e1"),
        &format!("{{{tag}}}:e2"),
        "v1",
    ]);
    let sha = c.cmd(&["SCRIPT", "LOAD", script]).as_text().unwrap();
    c.cmd(&[
        "EVALSHA",
        &sha,
        "2",
        &format!("{{{tag}}}:e1"),
        &format!("{{{tag}}}:e2"),
        "v2",
    ]);
    c.cmd(&[
        "EVALSHA",
        &sha,
        "2",
        &format!("{{{tag}}}:e3"),
        &format!("{{{tag}}}:e2"),
        "v3",
    ]);
    c.cmd(&["RPUSH", &format!("{tag}:dumpme"), "x", "y", "z"]);
    let payload = match c.cmd(&["DUMP", &format!("{tag}:dumpme")]) {
        Reply::Bulk(Some(p)) => p,
        other => panic!("DUMP: {other:?}"),
    };
    c.cmd(&[
        b"RESTORE".to_vec(),
        format!("{tag}:restored").into_bytes(),
        b"0".to_vec(),
        payload.to_vec(),
        b"REPLACE".to_vec(),
    ]);
    c.cmd(&["SET", &format!("{tag}:mover"), "m"]);
    c.cmd(&["MOVE", &format!("{tag}:mover"), "1"]);
    let st = format!("{tag}:stream");
    c.cmd(&["XADD", &st, "1-1", "a", "1"]);
    c.cmd(&["XADD", &st, "*", "b", "2"]);
    c.cmd(&["XADD", &st, "*", "c", "3"]);
    c.cmd(&["XGROUP", "CREATE", &st, "g", "0"]);
    c.cmd(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "alice",
        "COUNT",
        "2",
        "STREAMS",
        &st,
        ">",
    ]);
    c.cmd(&["XACK", &st, "g", "1-1"]);
    c.cmd(&["XDEL", &st, "1-1"]);
    // A DB that only this master uses: filled, then flushed.
    c.cmd(&["SELECT", scratch_db]);
    c.cmd(&["SET", &format!("{tag}:scratch"), "1"]);
    c.cmd(&["RPUSH", &format!("{tag}:scratch2"), "1"]);
    c.cmd(&["FLUSHDB"]);
    c.cmd(&["SELECT", "0"]);
}

/// Mixed non-idempotent writes through `c` (list pushes and pops, INCRBY, APPEND,
/// HINCRBYFLOAT, SADD/SREM, ZINCRBY, short TTLs) on keys prefixed `tag`, counting rounds in
/// `done`, until `stop`. `seed` offsets the values so that two writers differ.
pub fn traffic(mut c: Client, tag: &str, seed: u64, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut i = seed;
    while !stop.load(Ordering::Relaxed) {
        let k = i % 97;
        let cmds: Vec<Vec<Vec<u8>>> = vec![
            b(&["RPUSH", &format!("{tag}list:{k}"), &i.to_string()]),
            b(&["INCRBY", &format!("{tag}ctr:{k}"), &(i % 7 + 1).to_string()]),
            b(&["APPEND", &format!("{tag}app:{}", k % 13), &format!("{i},")]),
            b(&["HINCRBYFLOAT", &format!("{tag}hf:{}", k % 11), "f", "0.5"]),
            b(&[
                "SADD",
                &format!("{tag}set:{}", k % 17),
                &(i % 50).to_string(),
            ]),
            b(&[
                "SREM",
                &format!("{tag}set:{}", k % 17),
                &((i + 25) % 50).to_string(),
            ]),
            b(&[
                "ZINCRBY",
                &format!("{tag}z:{}", k % 5),
                "1.5",
                &format!("m{}", i % 9),
            ]),
            b(&["SET", &format!("{tag}short:{}", i % 200), "x", "PX", "700"]),
            b(&["LPOP", &format!("{tag}list:{}", (k + 1) % 97)]),
        ];
        for r in c.pipeline(&cmds) {
            assert!(!r.is_error(), "{r:?}");
        }
        done.fetch_add(1, Ordering::Relaxed);
        i += 1;
        if i.is_multiple_of(50) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The master's count of full syncs it served (`INFO stats` `sync_full`), -1 when unreadable.
pub fn sync_full(m: &RedisServer) -> i64 {
    m.client()
        .info_field("stats", "sync_full")
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

/// Whether the relay reports every one of `sources` with its snapshot applied.
pub fn snapshot_done(relay: &Relay, sources: &[String]) -> bool {
    sources
        .iter()
        .all(|s| relay.metric("redis_relay_snapshot_done", s) == Some(1.0))
}

/// The sum of a metric over all its label sets.
pub fn metric_sum(relay: &Relay, name: &str) -> f64 {
    relay
        .metrics()
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
