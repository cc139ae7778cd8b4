//! Commands the target refuses at queue time (here APPEND, renamed away on the target, as on
//! an older target that does not know a command): left out of their batch, counted by kind,
//! logged by name; everything else of the batch applies exactly once, also across a crash of
//! the relay. Under `--on-target-error stop` the relay exits naming the command, its offset
//! before the batch. Error replies of plain (replayable) batches keep their per-command
//! handling.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use redis_relay::resp::Reply;

use support::faults::{series, wait_caught_up, Traffic};
use support::{wait_until, Client, RedisCluster, RedisServer, Relay};

/// A target that does not know APPEND.
fn target_without_append() -> RedisServer {
    RedisServer::start(&["rename-command APPEND \"\""])
}

fn sync_args(master: &RedisServer, target: &RedisServer, state: &std::path::Path) -> Vec<String> {
    vec![
        "--source".into(),
        master.url(),
        "--target".into(),
        target.url(),
        "--state-dir".into(),
        state.display().to_string(),
    ]
}

/// SCAN of `pattern` on `c`, sorted.
fn keys(c: &mut Client, pattern: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let r = c.cmd(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"]);
        let Reply::Array(Some(parts)) = r else {
            panic!("SCAN: {r:?}")
        };
        cursor = parts[0].as_text().unwrap_or_default();
        if let Reply::Array(Some(ks)) = &parts[1] {
            out.extend(ks.iter().filter_map(|k| k.as_text()));
        }
        if cursor == "0" {
            out.sort();
            return out;
        }
    }
}

/// Counters and lists of `tag` equal on both sides (same keys, same values, same elements in
/// the same order): nothing lost, nothing doubled.
fn assert_counters_and_lists_equal(
    master: &RedisServer,
    target: &RedisServer,
    tag: &str,
    log: &str,
) {
    let (mut m, mut t) = (master.client(), target.client());
    let counters = keys(&mut m, &format!("{tag}:c:*"));
    assert!(!counters.is_empty());
    assert_eq!(counters, keys(&mut t, &format!("{tag}:c:*")), "{log}");
    for k in &counters {
        assert_eq!(m.cmd(&["GET", k]), t.cmd(&["GET", k]), "counter {k}\n{log}");
    }
    let lists = keys(&mut m, &format!("{tag}:l:*"));
    assert!(!lists.is_empty());
    assert_eq!(lists, keys(&mut t, &format!("{tag}:l:*")), "{log}");
    for k in &lists {
        assert_eq!(
            m.cmd(&["LRANGE", k, "0", "-1"]),
            t.cmd(&["LRANGE", k, "0", "-1"]),
            "list {k}\n{log}"
        );
    }
}

#[test]
fn refused_commands_are_left_out_and_the_rest_applies_exactly_once() {
    let master = RedisServer::start(&["repl-diskless-sync no"]);
    let target = target_without_append();
    let state = tempfile::tempdir().unwrap();
    let src = master.addr();
    // In the snapshot: APPEND's key exists before the relay starts (a RESTORE, not refused).
    master.client().cmd(&["APPEND", "q:a:0", "snap,"]);
    let args = sync_args(&master, &target, state.path());
    let mut relay = Relay::start_synced(&args, state.path(), &src);
    let traffic = Traffic::start(master.port, "q");
    // Also a master transaction mixing refused and accepted commands.
    let mut m = master.client();
    for i in 0..50 {
        let i = i.to_string();
        m.pipeline(&[
            vec!["MULTI"],
            vec!["INCR", "q:c:tx"],
            vec!["APPEND", "q:a:tx", "secret-value"],
            vec!["RPUSH", "q:l:tx", &i],
            vec!["EXEC"],
        ]);
    }
    std::thread::sleep(Duration::from_secs(2));
    // A crash in the middle: the records must still keep every batch exactly once.
    relay.kill();
    let mut relay = Relay::start_sync(&args, state.path());
    std::thread::sleep(Duration::from_secs(2));
    let rounds = traffic.finish();
    wait_caught_up(&relay, &master, &src, Duration::from_secs(60));
    let log = relay.log_text();
    assert_counters_and_lists_equal(&master, &target, "q", &log);
    assert_eq!(
        target.client().cmd(&["GET", "q:c:tx"]).as_text().as_deref(),
        Some("50")
    );
    // APPEND's keys hold what the snapshot brought, nothing of the stream.
    let mut t = target.client();
    assert_eq!(t.cmd(&["GET", "q:a:0"]).as_text().as_deref(), Some("snap,"));
    assert_eq!(t.cmd(&["EXISTS", "q:a:tx"]).as_int(), Some(0));
    // Counted by kind (this run of the relay counts those of its own part of the stream),
    // logged by name, never with the values.
    let refused = relay
        .metrics()
        .lines()
        .find(|l| {
            l.starts_with("redis_relay_target_refused_total{")
                && l.contains("kind=\"unknown-command\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(refused.is_some_and(|n| n >= 1.0), "{}", relay.metrics());
    assert!(
        log.contains("APPEND") && log.contains("queue time"),
        "{log}"
    );
    assert!(
        !log.contains("secret-value"),
        "a value reached the log:\n{log}"
    );
    eprintln!("rounds {rounds}, refused by the second relay: {refused:?}");
    let (code, _) = relay.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", relay.log_text());
}

#[test]
fn stop_policy_exits_naming_the_command_without_passing_it() {
    let master = RedisServer::start(&["repl-diskless-sync no"]);
    let target = target_without_append();
    let state = tempfile::tempdir().unwrap();
    let src = master.addr();
    let mut args = sync_args(&master, &target, state.path());
    args.extend(["--on-target-error".to_string(), "stop".to_string()]);
    let mut relay = Relay::start_synced(&args, state.path(), &src);
    let mut m = master.client();
    m.cmd(&["INCR", "n"]);
    assert!(wait_until(Duration::from_secs(10), || target
        .client()
        .cmd(&["GET", "n"])
        .as_text()
        .as_deref()
        == Some("1")));
    // Let a checkpoint be written at that point.
    std::thread::sleep(Duration::from_millis(1500));
    m.pipeline(&[
        vec!["INCR", "n"],
        vec!["APPEND", "a", "x"],
        vec!["RPUSH", "l", "after"],
    ]);
    let exited = wait_until(Duration::from_secs(15), || {
        matches!(relay.child.try_wait(), Ok(Some(_)))
    });
    let log = relay.log_text();
    assert!(exited, "the relay did not stop:\n{log}");
    let code = relay.child.wait().unwrap().code();
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("refuses APPEND") && log.contains("--on-target-error stop"),
        "{log}"
    );
    // Nothing after the refused command reached the target.
    assert_eq!(target.client().cmd(&["EXISTS", "l"]).as_int(), Some(0));
    // Restarted with `skip` on the same state dir: it resumes before the refused command and
    // applies what follows it, once.
    let skip_args: Vec<String> = args[..args.len() - 2].to_vec();
    let relay = Relay::start_sync(&skip_args, state.path());
    wait_caught_up(&relay, &master, &src, Duration::from_secs(30));
    let mut t = target.client();
    assert_eq!(
        t.cmd(&["GET", "n"]).as_text().as_deref(),
        Some("2"),
        "{}",
        relay.log_text()
    );
    assert_eq!(
        t.cmd(&["LRANGE", "l", "0", "-1"]),
        m.cmd(&["LRANGE", "l", "0", "-1"])
    );
    assert_eq!(t.cmd(&["EXISTS", "a"]).as_int(), Some(0));
}

#[test]
fn replayable_batches_keep_their_per_command_errors() {
    // SADD/SET/DEL batches go without a transaction: a WRONGTYPE there is one command's
    // error, counted; the commands around it apply.
    let master = RedisServer::start(&["repl-diskless-sync no"]);
    let target = RedisServer::start(&[]);
    let state = tempfile::tempdir().unwrap();
    let src = master.addr();
    let relay = Relay::start_synced(
        &sync_args(&master, &target, state.path()),
        state.path(),
        &src,
    );
    target
        .client()
        .cmd(&["SET", "clash", "a string on the target only"]);
    let mut m = master.client();
    m.pipeline(&[
        vec!["SET", "before", "1"],
        vec!["SADD", "clash", "x"],
        vec!["SET", "after", "2"],
    ]);
    wait_caught_up(&relay, &master, &src, Duration::from_secs(20));
    let mut t = target.client();
    assert_eq!(t.cmd(&["GET", "before"]).as_text().as_deref(), Some("1"));
    assert_eq!(t.cmd(&["GET", "after"]).as_text().as_deref(), Some("2"));
    assert_eq!(
        relay.metric("redis_relay_target_errors_total", &src),
        Some(1.0),
        "{}",
        relay.log_text()
    );
    assert!(relay.log_text().contains("WRONGTYPE"));
    assert!(
        !relay
            .metrics()
            .contains("redis_relay_target_refused_total{"),
        "a runtime error is not a queue-time refusal"
    );
}

/// Every key of `pattern` on the cluster's masters with its `GET`/`LRANGE` (read from the
/// node that holds it).
fn cluster_values(cluster: &RedisCluster, pattern: &str) -> BTreeMap<String, Reply> {
    let mut out = BTreeMap::new();
    for port in cluster.master_ports() {
        let mut c = cluster.client(port);
        for k in keys(&mut c, pattern) {
            let v = value(&mut c, &k);
            out.insert(k, v);
        }
    }
    out
}

fn value(c: &mut Client, k: &str) -> Reply {
    if k.contains(":l:") {
        c.cmd(&["LRANGE", k, "0", "-1"])
    } else {
        c.cmd(&["GET", k])
    }
}

#[test]
fn cluster_target_leaves_refused_commands_out_and_waits_out_oom() {
    let cluster = RedisCluster::start_with(3, &["rename-command APPEND \"\""]);
    let master = RedisServer::start(&["repl-diskless-sync no", "repl-backlog-size 64mb"]);
    let state = tempfile::tempdir().unwrap();
    let src = master.addr();
    let args = vec![
        "--source".to_string(),
        master.url(),
        "--target".into(),
        cluster.url(),
        "--state-dir".into(),
        state.path().display().to_string(),
    ];
    let relay = Relay::start_synced(&args, state.path(), &src);
    let traffic = Traffic::start(master.port, "k");
    std::thread::sleep(Duration::from_secs(2));
    // Every master over maxmemory: the slots' batches wait, nothing is skipped.
    for port in cluster.master_ports() {
        cluster
            .client(port)
            .cmd(&["CONFIG", "SET", "maxmemory", "1"]);
    }
    let stalled = wait_until(Duration::from_secs(15), || {
        series(&relay, "redis_relay_target_stalled{reason=\"oom\"}").is_some_and(|n| n >= 1.0)
    });
    assert!(stalled, "no OOM alarm:\n{}", relay.log_text());
    std::thread::sleep(Duration::from_secs(2));
    for port in cluster.master_ports() {
        cluster
            .client(port)
            .cmd(&["CONFIG", "SET", "maxmemory", "0"]);
    }
    std::thread::sleep(Duration::from_secs(1));
    traffic.finish();
    wait_caught_up(&relay, &master, &src, Duration::from_secs(90));
    let log = relay.log_text();
    let mut m = master.client();
    for kind in ["c", "l"] {
        let pattern = format!("k:{kind}:*");
        let want: BTreeMap<String, Reply> = keys(&mut m, &pattern)
            .into_iter()
            .map(|k| {
                let v = value(&mut m, &k);
                (k, v)
            })
            .collect();
        assert!(!want.is_empty());
        assert_eq!(cluster_values(&cluster, &pattern), want, "{log}");
    }
    assert!(cluster_values(&cluster, "k:a:*").is_empty(), "{log}");
    assert!(
        relay
            .metrics()
            .contains("redis_relay_target_refused_total{source=\""),
        "{}",
        relay.metrics()
    );
    // The alarm clears once every lane wrote again (the gauge is published by the metrics
    // refresh, up to a second after the catch-up that the offsets show).
    assert!(
        wait_until(Duration::from_secs(5), || series(
            &relay,
            "redis_relay_target_stalled{reason=\"oom\"}"
        ) == Some(0.0)),
        "stalled: {:?}\n{log}",
        series(&relay, "redis_relay_target_stalled{reason=\"oom\"}")
    );
    // The refused APPENDs count as target errors; the OOM waits do not.
    assert!(
        relay
            .metric("redis_relay_target_errors_total", &src)
            .unwrap_or(0.0)
            > 0.0
    );
}
