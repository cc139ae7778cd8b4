//! End to end: two masters (each with a real replica) behind nutcracker, an empty target, and
//! the `redis-relay sync --twemproxy` binary. The target must end up equal to the union of the
//! masters, key by key (value and absolute expire time), in every DB.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis_relay::resp::Reply;
use support::workload::{b, master_workload, preload};
use support::{wait_until, Nutcracker, RedisServer, Relay};

fn s(x: impl ToString) -> String {
    x.to_string()
}

#[test]
fn twemproxy_cluster_into_one_target() {
    let a = RedisServer::start(&["repl-diskless-sync yes", "repl-diskless-sync-delay 0"]);
    let bm = RedisServer::start(&["repl-diskless-sync no"]);
    let _ra = RedisServer::start(&[&format!("replicaof 127.0.0.1 {}", a.port)]);
    let _rb = RedisServer::start(&[&format!("replicaof 127.0.0.1 {}", bm.port)]);
    let target = RedisServer::start(&[]);
    let proxy = Nutcracker::start(&[a.addr(), bm.addr()]);

    preload(&proxy, 200_000, 3_000, 300_000);
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

    let report = support::verify_union(&sources, &target.addr());
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
