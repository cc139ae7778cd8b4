//! Faults with real processes, each under non-idempotent traffic, ending with an exact
//! comparison: the target unreachable for seconds (writers retry, the spool absorbs the
//! stream), the source connection cut (partial resync, no full sync), a silent (stalled)
//! master past the replication timeout, and target error replies counted and logged.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::fault_proxy::FaultProxy;
use support::{wait_until, Client, RedisServer, Relay};

fn traffic(mut c: Client, stop: Arc<AtomicBool>) -> u64 {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let cmds: Vec<Vec<String>> = vec![
            vec!["RPUSH".into(), format!("l:{}", i % 31), i.to_string()],
            vec!["INCRBY".into(), format!("c:{}", i % 13), "3".into()],
            vec!["APPEND".into(), format!("a:{}", i % 7), format!("{i},")],
            vec![
                "HINCRBYFLOAT".into(),
                "hf".into(),
                format!("f{}", i % 5),
                "0.25".into(),
            ],
        ];
        for r in c.pipeline(&cmds) {
            assert!(!r.is_error(), "{r:?}");
        }
        i += 1;
        if i.is_multiple_of(20) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    i
}

fn assert_equal(sources: &[&RedisServer], target: &RedisServer, log: &str) {
    let addrs: Vec<String> = sources.iter().map(|s| s.addr()).collect();
    support::assert_union_equal(&addrs, &target.addr(), log);
}

/// `redis-relay sync` of one source into `target`, returned once the snapshot is applied.
fn synced_relay(
    source_url: String,
    target_url: String,
    state: &std::path::Path,
    extra: &[&str],
    src: &str,
) -> Relay {
    let mut args = vec![
        "--source".to_string(),
        source_url,
        "--target".into(),
        target_url,
        "--state-dir".into(),
        state.display().to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    Relay::start_synced(&args, state, src)
}

fn stat(m: &RedisServer, field: &str) -> i64 {
    m.client()
        .info_field("stats", field)
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

#[test]
fn target_unreachable_then_back_loses_nothing() {
    let master = RedisServer::start(&["repl-diskless-sync no"]);
    let target = RedisServer::start(&[]);
    let to_target = FaultProxy::start(target.port);
    let state = tempfile::tempdir().unwrap();
    let src = master.addr();
    let mut relay = synced_relay(
        master.url(),
        format!("redis://127.0.0.1:{}", to_target.port),
        state.path(),
        &[],
        &src,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let t = {
        let (c, s) = (master.client(), stop.clone());
        std::thread::spawn(move || traffic(c, s))
    };
    std::thread::sleep(Duration::from_millis(500));
    to_target.cut();
    std::thread::sleep(Duration::from_secs(4));
    // The source link stayed up meanwhile (no reconnect, no full sync).
    assert_eq!(relay.metric("redis_relay_connected", &src), Some(1.0));
    to_target.up();
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    assert!(t.join().unwrap() > 50);
    assert_equal(&[&master], &target, &relay.log_text());
    let log = relay.log_text();
    assert!(
        log.contains("connection lost"),
        "log names the target fault:\n{log}"
    );
    assert_eq!(stat(&master, "sync_full"), 1, "{log}");
    let (code, _) = relay.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", relay.log_text());
}

#[test]
fn source_cut_and_stall_resume_partially() {
    // A backlog that covers the outages (the default 1 MB does not, at this write rate).
    let master = RedisServer::start(&["repl-diskless-sync no", "repl-backlog-size 128mb"]);
    let target = RedisServer::start(&[]);
    let to_master = FaultProxy::start(master.port);
    let state = tempfile::tempdir().unwrap();
    let src = format!("127.0.0.1:{}", to_master.port);
    let mut relay = synced_relay(
        format!("redis://{src}"),
        target.url(),
        state.path(),
        &["--repl-timeout", "2"],
        &src,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let t = {
        let (c, s) = (master.client(), stop.clone());
        std::thread::spawn(move || traffic(c, s))
    };
    std::thread::sleep(Duration::from_millis(500));
    // A dropped connection.
    to_master.cut();
    std::thread::sleep(Duration::from_millis(700));
    to_master.up();
    std::thread::sleep(Duration::from_secs(1));
    // A silent master (half-open link): the relay gives up after --repl-timeout and resumes.
    to_master.stall(true);
    std::thread::sleep(Duration::from_secs(3));
    to_master.stall(false);
    to_master.cut();
    to_master.up();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    assert!(t.join().unwrap() > 50);
    let log = relay.log_text();
    assert_equal(&[&master], &target, &log);
    assert_eq!(stat(&master, "sync_full"), 1, "no new full sync:\n{log}");
    assert!(
        stat(&master, "sync_partial_ok") >= 2,
        "partial resyncs:\n{log}"
    );
    let (code, _) = relay.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", relay.log_text());
}

#[test]
fn target_error_replies_are_counted_and_logged() {
    let master = RedisServer::start(&["repl-diskless-sync no"]);
    let target = RedisServer::start(&[]);
    let state = tempfile::tempdir().unwrap();
    let src = master.addr();
    let mut relay = synced_relay(master.url(), target.url(), state.path(), &[], &src);
    // A key of another type on the target only: the master's RPUSH is a WRONGTYPE there.
    target.client().cmd(&["SET", "clash", "string"]);
    let mut m = master.client();
    m.cmd(&["RPUSH", "clash", "x"]);
    m.cmd(&["SET", "after", "1"]);
    assert!(wait_until(Duration::from_secs(10), || relay
        .metric("redis_relay_target_errors_total", &src)
        == Some(1.0)));
    assert!(wait_until(Duration::from_secs(5), || target
        .client()
        .cmd(&["GET", "after"])
        .as_text()
        .as_deref()
        == Some("1")));
    let log = relay.log_text();
    assert!(
        log.contains("WRONGTYPE") && log.contains("\"RPUSH\" \"clash\""),
        "{log}"
    );
    let (code, _) = relay.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0));
}

#[test]
fn failover_to_the_replica_continues_with_a_partial_resync() {
    let master = RedisServer::start(&["repl-diskless-sync no", "repl-backlog-size 64mb"]);
    let replica = RedisServer::start(&[
        &format!("replicaof 127.0.0.1 {}", master.port),
        "repl-backlog-size 64mb",
    ]);
    let target = RedisServer::start(&[]);
    // The relay knows the master by a stable address (a VIP, a DNS name): the proxy.
    let vip = FaultProxy::start(master.port);
    let state = tempfile::tempdir().unwrap();
    let src = format!("127.0.0.1:{}", vip.port);
    let mut relay = synced_relay(
        format!("redis://{src}"),
        target.url(),
        state.path(),
        &[],
        &src,
    );
    let mut m = master.client();
    for i in 0..500 {
        m.cmd(&["RPUSH", "fl", &i.to_string()]);
        m.cmd(&["INCR", "fc"]);
    }
    // Wait until the replica and the relay both have everything, then fail over.
    let offset = || -> i64 {
        master
            .client()
            .info_field("replication", "master_repl_offset")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let want = offset();
    assert!(wait_until(Duration::from_secs(10), || {
        replica
            .client()
            .info_field("replication", "slave_repl_offset")
            .and_then(|v| v.parse::<i64>().ok())
            == Some(want)
            && relay.metric("redis_relay_applied_offset", &src) == Some(want as f64)
    }));
    m.cmd(&["CLIENT", "PAUSE", "5000"]);
    replica.client().cmd(&["REPLICAOF", "NO", "ONE"]);
    vip.set_upstream(replica.port);
    vip.cut();
    vip.up();
    let mut r = replica.client();
    for i in 0..300 {
        r.cmd(&["RPUSH", "fl", &format!("after-{i}")]);
        r.cmd(&["INCRBY", "fc", "2"]);
    }
    assert!(wait_until(Duration::from_secs(15), || target
        .client()
        .cmd(&["LLEN", "fl"])
        .as_int()
        == Some(800)));
    let log = relay.log_text();
    assert_equal(&[&replica], &target, &log);
    assert_eq!(
        stat(&replica, "sync_full"),
        0,
        "the new master served no full sync:\n{log}"
    );
    assert!(stat(&replica, "sync_partial_ok") >= 1, "{log}");
    let (code, _) = relay.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", relay.log_text());
}

#[test]
fn backlog_too_small_for_the_lag_is_warned_before_it_overflows() {
    let master = RedisServer::start(&["repl-diskless-sync no", "repl-backlog-size 1mb"]);
    let target = RedisServer::start(&[]);
    let state = tempfile::tempdir().unwrap();
    let src = master.addr();
    let mut relay = synced_relay(master.url(), target.url(), state.path(), &[], &src);
    assert!(
        wait_until(Duration::from_secs(10), || relay
            .metric("redis_relay_backlog_bytes", &src)
            == Some(1048576.0)),
        "backlog size read from the master: {}",
        relay.metrics()
    );
    // The target stops taking writes; 700 KB arrive on the master meanwhile.
    target.client().cmd(&["CLIENT", "PAUSE", "4000", "WRITE"]);
    let mut m = master.client();
    let value = "x".repeat(1000);
    for i in 0..700 {
        m.cmd(&["SET", &format!("k{i}"), &value]);
    }
    assert!(
        wait_until(Duration::from_secs(3), || relay
            .metric("redis_relay_backlog_usage_ratio", &src)
            .is_some_and(|r| r >= 0.5)),
        "usage ratio: {}",
        relay.metrics()
    );
    assert!(wait_until(Duration::from_secs(3), || relay
        .log_text()
        .contains("CONFIG SET repl-backlog-size")));
    // Once the target is back everything arrives.
    assert!(wait_until(Duration::from_secs(20), || target
        .client()
        .cmd(&["DBSIZE"])
        .as_int()
        >= Some(700)));
    let (code, _) = relay.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", relay.log_text());
}

#[test]
fn forced_full_resync_leaves_no_stale_key_to_merge_with() {
    // A backlog far too small for the outage: the resume must become a full resync.
    let master = RedisServer::start(&["repl-diskless-sync no", "repl-backlog-size 16kb"]);
    let target = RedisServer::start(&[]);
    let to_master = FaultProxy::start(master.port);
    let state = tempfile::tempdir().unwrap();
    let src = format!("127.0.0.1:{}", to_master.port);
    // The relay is the target's only writer: the sweep may delete what no snapshot holds.
    let mut relay = synced_relay(
        format!("redis://{src}"),
        target.url(),
        state.path(),
        &["--target-owner", "exclusive"],
        &src,
    );
    let mut m = master.client();
    m.cmd(&["RPUSH", "gone", "old-1", "old-2"]);
    m.cmd(&["SET", "kept", "1"]);
    assert!(wait_until(Duration::from_secs(10), || target
        .client()
        .cmd(&["LLEN", "gone"])
        .as_int()
        == Some(2)));
    to_master.cut();
    m.cmd(&["DEL", "gone"]);
    let filler = "f".repeat(1000);
    for i in 0..200 {
        m.cmd(&["SET", &format!("filler:{i}"), &filler]);
    }
    to_master.up();
    assert!(
        wait_until(Duration::from_secs(30), || relay
            .metric("redis_relay_full_syncs_total", &src)
            == Some(2.0)
            && relay.metric("redis_relay_snapshot_done", &src) == Some(1.0)),
        "a second full sync: {}",
        relay.log_text()
    );
    // Written after the new snapshot: must not be merged with the stale list.
    m.cmd(&["RPUSH", "gone", "new-1"]);
    let log = relay.log_text();
    assert_equal(&[&master], &target, &log);
    assert_eq!(
        target.client().cmd(&["LRANGE", "gone", "0", "-1"]),
        redis_relay::resp::Reply::Array(Some(vec![redis_relay::resp::Reply::Bulk(Some(
            "new-1".into()
        ))])),
        "the stale list was not merged into"
    );
    let (code, _) = relay.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", relay.log_text());
}
