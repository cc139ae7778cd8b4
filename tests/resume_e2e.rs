//! Restarts lose nothing and double nothing: the relay is SIGKILLed at random points under
//! heavy non-idempotent traffic (list pushes and pops, INCRBY, APPEND, HINCRBYFLOAT, SADD/SREM,
//! ZINCRBY, short TTLs) and restarted with the same state dir. No master may count a new full
//! sync, and the target must equal the union of the masters exactly.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::workload::{b, sync_full, traffic};
use support::{wait_until, Client, Nutcracker, RedisServer, Relay};

/// Only commands that set state (replayable: their batches go without MULTI/EXEC), in long
/// pipelines, until `stop`.
fn assignments(mut c: Client, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let cmds: Vec<Vec<Vec<u8>>> = (0..200)
            .map(|j| {
                let k = (i * 7 + j) % 300;
                match j % 6 {
                    0 => b(&["SET".into(), format!("as:{k}"), format!("{i}-{j}")]),
                    1 => b(&[
                        "HSET".into(),
                        format!("ah:{}", k % 40),
                        format!("f{}", j % 9),
                        format!("{i}"),
                    ]),
                    2 => b(&[
                        "SADD".into(),
                        format!("aset:{}", k % 30),
                        format!("{}", i % 40),
                    ]),
                    3 => b(&[
                        "SREM".into(),
                        format!("aset:{}", k % 30),
                        format!("{}", (i + 7) % 40),
                    ]),
                    4 => b(&["DEL".into(), format!("as:{}", (k + 150) % 300)]),
                    _ => b(&[
                        "ZADD".into(),
                        format!("az:{}", k % 20),
                        format!("{}", i % 100),
                        format!("m{}", j % 13),
                    ]),
                }
            })
            .collect();
        for r in c.pipeline(&cmds) {
            assert!(!r.is_error(), "{r:?}");
        }
        done.fetch_add(1, Ordering::Relaxed);
        i += 1;
    }
}

#[test]
fn sigkill_under_traffic_loses_and_doubles_nothing() {
    let a = RedisServer::start(&["repl-diskless-sync no", "repl-backlog-size 64mb"]);
    let bm = RedisServer::start(&[
        "repl-diskless-sync yes",
        "repl-diskless-sync-delay 0",
        "repl-backlog-size 64mb",
    ]);
    let target = RedisServer::start(&[]);
    let proxy = Nutcracker::start(&[a.addr(), bm.addr()]);
    let state = tempfile::tempdir().unwrap();
    let args = vec![
        "--twemproxy".to_string(),
        proxy.config_path.display().to_string(),
        "--target".into(),
        target.url(),
        "--state-dir".into(),
        state.path().display().to_string(),
    ];
    let sources = [a.addr(), bm.addr()];
    let mut relay = Relay::start_sync(&args, state.path());
    assert!(
        wait_until(Duration::from_secs(60), || sources
            .iter()
            .all(|s| relay.metric("redis_relay_snapshot_done", s) == Some(1.0))),
        "first sync: {}",
        relay.log_text()
    );
    let full_before = (sync_full(&a), sync_full(&bm));

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..2)
        .map(|n| {
            let (c, s, d) = (proxy.client(), stop.clone(), done.clone());
            std::thread::spawn(move || traffic(c, "", n * 1_000_000, s, d))
        })
        .collect();
    let stop_assign = Arc::new(AtomicBool::new(false));
    let assigned = Arc::new(AtomicU64::new(0));
    let assigner = {
        let (c, s, d) = (proxy.client(), stop_assign.clone(), assigned.clone());
        std::thread::spawn(move || assignments(c, s, d))
    };

    // Kill at pseudo-random points, keep writing for a second, restart.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut logs = String::new();
    for round in 0..4 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 1200));
        relay.kill();
        logs.push_str(&format!("--- run {round}\n{}", relay.log_text()));
        std::thread::sleep(Duration::from_secs(1));
        relay = Relay::start_sync(&args, state.path());
        assert!(
            wait_until(Duration::from_secs(30), || sources
                .iter()
                .all(|s| relay.metric("redis_relay_snapshot_done", s) == Some(1.0))),
            "restart {round} did not resume: {}",
            relay.log_text()
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    // Assignments alone for a while: their batches run without a transaction.
    std::thread::sleep(Duration::from_secs(1));
    stop_assign.store(true, Ordering::Relaxed);
    assigner.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 100, "traffic ran");
    assert!(assigned.load(Ordering::Relaxed) > 10, "assignments ran");
    let plain: f64 = relay
        .metrics()
        .lines()
        .filter(|l| l.starts_with("redis_relay_batches_total{") && l.contains("transaction=\"no\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(plain > 0.0, "no batch went without a transaction");
    // Let the short TTLs run out on both sides.
    std::thread::sleep(Duration::from_millis(1500));

    logs.push_str(&relay.log_text());
    let addrs: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
    support::assert_union_equal(&addrs, &target.addr(), &logs);
    assert_eq!(
        (sync_full(&a), sync_full(&bm)),
        full_before,
        "a restart caused a full sync; logs:\n{logs}"
    );
    let (code, took) = relay.terminate(Duration::from_secs(10));
    assert_eq!(
        code,
        Some(0),
        "exit after SIGTERM; log:\n{}",
        relay.log_text()
    );
    assert!(took < Duration::from_secs(10));
}
