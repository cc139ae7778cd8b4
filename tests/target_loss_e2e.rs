//! The relay trusts nothing of the target it did not check (issue 15, items 1 and 2), against
//! real servers:
//! - a target emptied while the relay was stopped (FLUSHALL), while it runs, restarted without
//!   persistence, or restarted from an older save: detected (log names the reason, metric
//!   `redis_relay_target_loss_total`), and under the default `--on-target-loss resync` the
//!   source is copied again until the target equals it; under `stop` the relay exits non-zero
//!   with the explanation;
//! - a second relay on the same state dir exits at once naming the first one's PID, and a
//!   restart after a SIGKILL of the first works;
//! - a second relay with another state dir for the same source and target refuses, naming the
//!   first, until the first one's lease expires after its SIGKILL.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{wait_until, RedisServer, Relay};

/// Keys written on the source before the relay starts.
const KEYS: u64 = 1203;

fn args(source: &RedisServer, target_port: u16, state: &std::path::Path) -> Vec<String> {
    vec![
        "--source".into(),
        source.url(),
        "--target".into(),
        format!("redis://127.0.0.1:{target_port}"),
        "--state-dir".into(),
        state.display().to_string(),
        "--writers".into(),
        "2".into(),
    ]
}

fn with(mut a: Vec<String>, more: &[&str]) -> Vec<String> {
    a.extend(more.iter().map(|s| s.to_string()));
    a
}

/// `KEYS` strings on `source`.
fn fill(source: &RedisServer) {
    let mut c = source.client();
    let cmds: Vec<Vec<String>> = (0..KEYS)
        .map(|i| vec!["SET".into(), format!("k:{i}"), format!("v{i}")])
        .collect();
    for r in c.pipeline(&cmds) {
        assert!(!r.is_error(), "{r:?}");
    }
}

/// Keys of the target outside the relay's prefix.
fn data_keys(port: u16) -> i64 {
    match support::Client::connect(port) {
        Ok(mut c) => support::keys_outside_prefix(&mut c, "redis-relay:"),
        Err(_) => -1,
    }
}

fn source_keys(source: &RedisServer) -> i64 {
    source.client().cmd(&["DBSIZE"]).as_int().unwrap_or(-1)
}

fn sync_full(m: &RedisServer) -> i64 {
    m.client()
        .info_field("stats", "sync_full")
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1)
}

/// The sum of `redis_relay_target_loss_total` lines with `reason`.
fn losses(relay: &Relay, reason: &str) -> f64 {
    let label = format!("reason=\"{reason}\"");
    relay
        .metrics()
        .lines()
        .filter(|l| l.starts_with("redis_relay_target_loss_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Wait until the target holds as many data keys as the source, then compare them exactly.
fn assert_equal_soon(source: &RedisServer, target_port: u16, relay: &Relay, what: &str) {
    let want = source_keys(source);
    assert!(
        wait_until(Duration::from_secs(60), || data_keys(target_port) == want),
        "{what}: target holds {} of {want} keys; log:\n{}",
        data_keys(target_port),
        relay.log_text()
    );
    support::assert_union_equal(
        &[source.addr()],
        &format!("127.0.0.1:{target_port}"),
        &relay.log_text(),
    );
}

/// Wait (at most `limit`) for the relay to exit; its exit code.
fn exit_code(relay: &mut Relay, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = relay.child.try_wait() {
            return st.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn target_flushed_while_the_relay_is_stopped() {
    let source = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    fill(&source);
    let state = tempfile::tempdir().unwrap();
    let base = args(&source, target.port, state.path());
    let mut relay = Relay::start_synced(&base, state.path(), &source.addr());
    assert_equal_soon(&source, target.port, &relay, "first sync");
    assert_eq!(relay.terminate(Duration::from_secs(10)).0, Some(0));
    target.client().cmd(&["FLUSHALL"]);

    // --on-target-loss stop: no resume, exit non-zero with the reason.
    let mut stopped = Relay::start_sync(
        &with(base.clone(), &["--on-target-loss", "stop"]),
        state.path(),
    );
    let code = exit_code(&mut stopped, Duration::from_secs(20));
    let log = stopped.log_text();
    assert!(
        code.is_some_and(|c| c != 0),
        "exit code {code:?}; log:\n{log}"
    );
    assert!(
        log.contains("target loss")
            && log.contains("emptied")
            && log.contains("--on-target-loss stop"),
        "{log}"
    );
    assert_eq!(data_keys(target.port), 0, "nothing written after the stop");

    // The default: a new full sync, the target equal to the source again.
    let full_before = sync_full(&source);
    let relay = Relay::start_synced(&base, state.path(), &source.addr());
    assert_equal_soon(&source, target.port, &relay, "after the resync");
    let log = relay.log_text();
    assert!(
        log.contains("target loss") && log.contains("emptied"),
        "{log}"
    );
    assert!(log.contains("--on-target-loss resync"), "{log}");
    assert_eq!(losses(&relay, "emptied"), 1.0, "{}", relay.metrics());
    assert_eq!(sync_full(&source), full_before + 1, "one new full sync");
}

/// Writes to `source` until `stop`: SET and INCR of a few hundred keys.
fn writer(
    source: &RedisServer,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let mut c = source.client();
    std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let cmds = vec![
                vec!["SET".to_string(), format!("w:{}", i % 300), format!("{i}")],
                vec!["INCR".to_string(), format!("ctr:{}", i % 7)],
            ];
            for r in c.pipeline(&cmds) {
                assert!(!r.is_error(), "{r:?}");
            }
            done.fetch_add(1, Ordering::Relaxed);
            i += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

/// Count of "target loss" lines in `relay`'s log.
fn loss_lines(relay: &Relay) -> usize {
    relay.log_text().matches("target loss:").count()
}

#[test]
fn target_flushed_while_the_relay_runs() {
    let source = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    fill(&source);
    let state = tempfile::tempdir().unwrap();
    let relay = Relay::start_synced(
        &args(&source, target.port, state.path()),
        state.path(),
        &source.addr(),
    );
    let (stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let w = writer(&source, stop.clone(), done.clone());
    std::thread::sleep(Duration::from_secs(2));
    let full_before = sync_full(&source);
    let mut delays = Vec::new();
    for round in 0..3 {
        let seen = loss_lines(&relay);
        let flushed = Instant::now();
        target.client().cmd(&["FLUSHALL"]);
        let mut found = false;
        while flushed.elapsed() < Duration::from_secs(20) {
            if loss_lines(&relay) > seen {
                found = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            found,
            "round {round}: FLUSHALL not detected; log:\n{}",
            relay.log_text()
        );
        delays.push(flushed.elapsed());
        // The new snapshot applied (the one of the first sync, then one per round).
        assert!(
            wait_until(Duration::from_secs(30), || relay
                .log_text()
                .matches("snapshot applied; streaming")
                .count()
                == round as usize + 2),
            "round {round}: no new snapshot applied; log:\n{}",
            relay.log_text()
        );
        assert_eq!(
            sync_full(&source),
            full_before + round + 1,
            "one full sync per loss"
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
    eprintln!("detection delays of FLUSHALL while running: {delays:?}");
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    assert!(done.load(Ordering::Relaxed) > 100, "writes ran");
    assert_equal_soon(&source, target.port, &relay, "after the resyncs");
    assert_eq!(losses(&relay, "emptied"), 3.0, "{}", relay.metrics());
    assert!(relay.log_text().contains("emptied"));
}

#[test]
fn target_restarted_without_persistence() {
    let source = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let port = target.port;
    fill(&source);
    let state = tempfile::tempdir().unwrap();
    let relay = Relay::start_synced(
        &args(&source, port, state.path()),
        state.path(),
        &source.addr(),
    );
    let (stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let w = writer(&source, stop.clone(), done.clone());
    std::thread::sleep(Duration::from_secs(2));
    drop(target);
    let target = RedisServer::start_on(port, &[]);
    assert!(
        wait_until(Duration::from_secs(20), || loss_lines(&relay) > 0),
        "restart not detected; log:\n{}",
        relay.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    assert_equal_soon(&source, target.port, &relay, "after the restart");
    assert!(losses(&relay, "emptied") >= 1.0, "{}", relay.metrics());
}

#[test]
fn target_restored_from_an_older_save() {
    let source = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let port = target.port;
    fill(&source);
    let state = tempfile::tempdir().unwrap();
    let relay = Relay::start_synced(
        &args(&source, port, state.path()),
        state.path(),
        &source.addr(),
    );
    assert_equal_soon(&source, port, &relay, "first sync");
    target.client().cmd(&["SAVE"]);
    let saved = tempfile::tempdir().unwrap();
    std::fs::copy(
        target.dir.path().join("dump.rdb"),
        saved.path().join("dump.rdb"),
    )
    .unwrap();
    // More writes, applied and checked (the marker moves on) after the save.
    let (stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let w = writer(&source, stop.clone(), done.clone());
    std::thread::sleep(Duration::from_secs(3));
    drop(target);
    let dir = format!("dir {}", saved.path().display());
    let target = RedisServer::start_on(port, &[&dir]);
    assert!(data_keys(port) > 0, "the target loaded the save");
    assert!(
        wait_until(Duration::from_secs(20), || loss_lines(&relay) > 0),
        "older save not detected; log:\n{}",
        relay.log_text()
    );
    assert!(relay.log_text().contains("older"), "{}", relay.log_text());
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    assert_equal_soon(&source, target.port, &relay, "after the older save");
    assert_eq!(losses(&relay, "older"), 1.0, "{}", relay.metrics());
}

#[test]
fn one_relay_per_state_dir() {
    let source = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    fill(&source);
    let state = tempfile::tempdir().unwrap();
    let base = args(&source, target.port, state.path());
    let mut first = Relay::start_synced(&base, state.path(), &source.addr());
    let started = Instant::now();
    let mut second = Relay::start_sync(&base, state.path());
    let code = exit_code(&mut second, Duration::from_secs(15));
    let log = second.log_text();
    assert!(
        code.is_some_and(|c| c != 0),
        "second relay: exit {code:?}; log:\n{log}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    let pid = first.child.id().to_string();
    assert!(
        log.contains("in use by another relay") && log.contains(&format!("PID {pid}")),
        "the error names the holder ({pid}):\n{log}"
    );
    assert!(log.contains(&state.path().display().to_string()), "{log}");
    // A SIGKILLed holder leaves the lock file; a restart on the same state dir works at once.
    first.kill();
    assert!(state.path().join("relay.lock").exists());
    let full_before = sync_full(&source);
    let third = Relay::start_synced(&base, state.path(), &source.addr());
    source.client().cmd(&["SET", "after", "restart"]);
    assert_equal_soon(&source, target.port, &third, "after the restart");
    assert_eq!(sync_full(&source), full_before, "resumed, no new full sync");
    assert!(
        !third.log_text().contains("target loss"),
        "{}",
        third.log_text()
    );
}

#[test]
fn one_writer_per_source_and_target() {
    let source = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    fill(&source);
    let (state1, state2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    const TTL: Duration = Duration::from_secs(6);
    let lease = ["--lease-ttl", "6s", "--if-target-not-empty", "ignore"];
    let a1 = with(args(&source, target.port, state1.path()), &lease);
    let a2 = with(args(&source, target.port, state2.path()), &lease);
    let mut first = Relay::start_synced(&a1, state1.path(), &source.addr());
    let pid = first.child.id();
    let mut second = Relay::start_sync(&a2, state2.path());
    let code = exit_code(&mut second, Duration::from_secs(15));
    let log = second.log_text();
    assert!(
        code.is_some_and(|c| c != 0),
        "second relay: exit {code:?}; log:\n{log}"
    );
    assert!(
        log.contains("another relay writes this source's records")
            && log.contains(&format!("pid={pid}"))
            && log.contains(&state1.path().display().to_string()),
        "the error names the first relay:\n{log}"
    );
    // Killed: its lease stays until the TTL runs out.
    first.kill();
    let killed = Instant::now();
    let mut early = Relay::start_sync(&a2, state2.path());
    let code = exit_code(&mut early, Duration::from_secs(15));
    assert!(
        code.is_some_and(|c| c != 0) && killed.elapsed() < TTL,
        "refused while the lease lives ({:?} after the kill): {code:?}\n{}",
        killed.elapsed(),
        early.log_text()
    );
    if let Some(rest) = TTL.checked_sub(killed.elapsed()) {
        std::thread::sleep(rest + Duration::from_millis(500));
    }
    let second = Relay::start_synced(&a2, state2.path(), &source.addr());
    source.client().cmd(&["SET", "after", "takeover"]);
    assert_equal_soon(
        &source,
        target.port,
        &second,
        "the second relay after the lease expired",
    );
}

/// A FLUSHALL of the source itself, forwarded as is (the relay is the target's only writer),
/// empties the target too: that is replication, not a loss. The marker is re-armed once the
/// flush is acknowledged; no resync follows, and the writes after it arrive.
#[test]
fn a_flush_of_the_source_forwarded_as_is_is_not_a_loss() {
    let source = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    fill(&source);
    let state = tempfile::tempdir().unwrap();
    let base = with(
        args(&source, target.port, state.path()),
        &["--target-owner", "exclusive"],
    );
    let relay = Relay::start_synced(&base, state.path(), &source.addr());
    assert_equal_soon(&source, target.port, &relay, "first sync");
    let mut c = source.client();
    c.cmd(&["FLUSHALL"]);
    for i in 0..50 {
        c.cmd(&["RPUSH", "after", &i.to_string()]);
    }
    // Several marker checks (one a second) after the flush.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(losses(&relay, "emptied"), 0.0, "{}", relay.log_text());
    assert!(
        !relay.log_text().contains("target loss"),
        "{}",
        relay.log_text()
    );
    assert_eq!(sync_full(&source), 1, "no second full sync");
    assert_equal_soon(&source, target.port, &relay, "after the flush");
}
