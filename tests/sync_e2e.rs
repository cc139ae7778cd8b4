//! End to end: two masters (each with a real replica) behind nutcracker, an empty target, and
//! the `redis-relay sync --twemproxy` binary. The target must end up equal to the union of the
//! masters, key by key (value and absolute expire time), in every DB.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis_relay::endpoint::Endpoint;
use redis_relay::resp::Reply;
use redis_relay::verify::{verify, VerifyOptions};
use support::{wait_until, Client, Nutcracker, RedisServer, Relay};

fn s(x: impl ToString) -> String {
    x.to_string()
}

/// Pipeline `cmds` in slices of `n`, asserting no error reply.
fn pipe(c: &mut Client, cmds: Vec<Vec<Vec<u8>>>, n: usize) {
    for chunk in cmds.chunks(n) {
        for r in c.pipeline(chunk) {
            assert!(!r.is_error(), "preload command failed: {r:?}");
        }
    }
}

fn b(words: &[&str]) -> Vec<Vec<u8>> {
    words.iter().map(|w| w.as_bytes().to_vec()).collect()
}

/// Through nutcracker: many small keys of every type, TTLs, binary values, big keys.
fn preload(proxy: &Nutcracker, strings: usize, per_type: usize) {
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
            &s(i),
            "c",
            "x",
        ]));
        cmds.push(b(&["RPUSH", &format!("list:{i}"), "a", "b", &s(i)]));
        cmds.push(b(&["SADD", &format!("set:{i}"), "a", "b", &s(i)]));
        cmds.push(b(&[
            "ZADD",
            &format!("zset:{i}"),
            "1",
            "a",
            "2.5",
            "b",
            &s(i),
            "c",
        ]));
        cmds.push(b(&[
            "SET",
            &format!("ttl:{i}"),
            "v",
            "PX",
            &s(36_000_000 + i),
        ]));
        cmds.push(b(&["EXPIRE", &format!("hash:{i}"), &s(86_400 + i)]));
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
    for start in (0..300_000).step_by(1000) {
        let mut cmd = b(&["RPUSH", "big:list"]);
        cmd.extend((start..start + 1000).map(|i| format!("e{i}").into_bytes()));
        cmds.push(cmd);
    }
    for start in (0..200_000).step_by(1000) {
        let mut cmd = b(&["HSET", "big:hash"]);
        for i in start..start + 1000 {
            cmd.push(format!("f{i}").into_bytes());
            cmd.push(format!("v{i}").into_bytes());
        }
        cmds.push(cmd);
    }
    for start in (0..100_000).step_by(1000) {
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
fn master_workload(m: &RedisServer, tag: &str, scratch_db: &str) {
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

#[test]
fn twemproxy_cluster_into_one_target() {
    let a = RedisServer::start(&["repl-diskless-sync yes", "repl-diskless-sync-delay 0"]);
    let bm = RedisServer::start(&["repl-diskless-sync no"]);
    let _ra = RedisServer::start(&[&format!("replicaof 127.0.0.1 {}", a.port)]);
    let _rb = RedisServer::start(&[&format!("replicaof 127.0.0.1 {}", bm.port)]);
    let target = RedisServer::start(&[]);
    let proxy = Nutcracker::start(&[a.addr(), bm.addr()]);

    preload(&proxy, 200_000, 3_000);
    master_workload(&a, "ma", "9");
    master_workload(&bm, "mb", "13");

    let state = tempfile::tempdir().unwrap();
    let mut relay = Relay::start_sync(
        &[
            s("--twemproxy"),
            proxy.config_path.display().to_string(),
            s("--target"),
            target.url(),
            s("--state-dir"),
            state.path().display().to_string(),
        ],
        state.path(),
    );

    // Keep writing through nutcracker while the snapshots are transferred.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written) = (stop.clone(), written.clone());
        let mut c = proxy.client();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let cmds = vec![
                    b(&["SET", &format!("live:{i}"), &s(i)]),
                    b(&["INCR", "live:counter"]),
                    b(&["RPUSH", "live:list", &s(i)]),
                    b(&["HINCRBY", "live:hash", &format!("f{}", i % 10), "1"]),
                    b(&["SET", &format!("str:{}", i % 1000), &format!("changed-{i}")]),
                ];
                for r in c.pipeline(&cmds) {
                    assert!(!r.is_error(), "{r:?}");
                }
                written.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let sources = [a.addr(), bm.addr()];
    let synced = wait_until(Duration::from_secs(180), || {
        sources
            .iter()
            .all(|src| relay.metric("redis_relay_snapshot_done", src) == Some(1.0))
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        synced,
        "snapshots not applied in time; log:\n{}",
        relay.log_text()
    );
    assert!(written.load(Ordering::Relaxed) > 10, "the live writer ran");

    // Subscribers on the target get what is PUBLISHed on the masters.
    let mut sub = target.client();
    sub.cmd(&["SUBSCRIBE", "news"]);
    master_workload(&a, "ma2", "9");
    master_workload(&bm, "mb2", "13");
    for (m, n) in [(&a, 5), (&bm, 7)] {
        let mut c = m.client();
        for i in 0..n {
            c.cmd(&["PUBLISH", "news", &format!("{}:{i}", m.port)]);
        }
    }
    let mut got = Vec::new();
    for _ in 0..12 {
        match sub.read_reply().expect("message on the target") {
            Reply::Array(Some(items)) => got.push(items[2].as_text().unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got.len(), 12);
    for (m, n) in [(&a, 5), (&bm, 7)] {
        for i in 0..n {
            assert!(got.contains(&format!("{}:{i}", m.port)), "{got:?}");
        }
    }
    let mut c = proxy.client();
    for i in 0..1000 {
        c.cmd(&["SET", &format!("after:{i}"), &s(i)]);
    }

    let eps: Vec<Endpoint> = sources
        .iter()
        .map(|s| Endpoint::parse(s).unwrap())
        .collect();
    let report = verify(
        &eps,
        &Endpoint::parse(&target.addr()).unwrap(),
        &VerifyOptions {
            recheck_rounds: 10,
            ..VerifyOptions::default()
        },
    )
    .expect("verify runs");
    // Known divergence of Redis 7.0/7.2 itself (a real replica has it too): XREADGROUP is
    // propagated as XCLAIM ... LASTID without ENTRIESREAD, so a group's entries_read is unknown.
    let real: Vec<_> = report
        .compare
        .differences
        .iter()
        .filter(|d| !d.detail.contains("entries_read"))
        .collect();
    assert!(
        report.compare.differences.len() < 50 && real.is_empty(),
        "target differs from the masters:\n{report}\nrelay log:\n{}",
        relay.log_text()
    );

    let metrics = relay.metrics();
    for src in &sources {
        assert!(
            metrics.contains(&format!("redis_relay_lag_bytes{{source=\"{src}\"}}")),
            "lag metric for {src} in:\n{metrics}"
        );
    }
    let (code, took) = relay.terminate(Duration::from_secs(10));
    assert_eq!(
        code,
        Some(0),
        "exit code after SIGTERM; log:\n{}",
        relay.log_text()
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
}
