//! The prechecks that predict a full sync the master will fail (`src/check/transfer.rs`), and
//! the `field-ttl` line of a cluster target, against real servers: each warning is shown to be
//! right by running the relay against the same master and watching the transfer fail
//! (`redis_relay_full_sync_failures_total{reason="closed"}`); the fix named makes the line pass.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as J;
use support::modern::Modern;
use support::{check_line, relay_json, wait_until, RedisCluster, RedisServer, Relay};

fn check(args: &[&str]) -> (i32, J) {
    relay_json("check", args)
}

/// Full syncs of `source` the relay counted as closed by the master.
fn closed_failures(relay: &Relay, source: &str) -> f64 {
    relay
        .metrics()
        .lines()
        .find(|l| {
            l.starts_with("redis_relay_full_sync_failures_total{")
                && l.contains(&format!("source=\"{source}\""))
                && l.contains("reason=\"closed\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The relay from `source` into `target` fails the full sync at least twice (the first try
/// and a retry after the backoff), and never completes it.
fn assert_transfer_fails(source: &RedisServer, target: &RedisServer) {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "--source",
        &source.url(),
        "--target",
        &target.url(),
        "--skip-check",
        "--state-dir",
        &dir.path().join("state").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let relay = Relay::start_sync(&args, dir.path());
    assert!(
        wait_until(Duration::from_secs(30), || closed_failures(
            &relay,
            &source.addr()
        ) >= 2.0),
        "the master did not fail the transfer twice:\n{}",
        relay.log_text()
    );
    assert_eq!(
        relay.metric("redis_relay_snapshot_done", &source.addr()),
        Some(0.0)
    );
}

/// A disk-based master (Redis 7.0, Redis 8.0, Valkey 9.1) whose dir is gone: its last BGSAVE
/// failed, `check` warns with the fix, and the relay's full sync does fail; once the master is
/// diskless the line passes (the snapshot does not touch the dir).
#[test]
fn disk_based_master_whose_bgsave_failed_warns_and_fails_the_transfer() {
    let bins = [
        None,
        Some(Modern::Redis80.server_bin()),
        Some(Modern::Valkey91.server_bin()),
    ];
    for bin in bins {
        let data = tempfile::tempdir().unwrap();
        let gone = data.path().join("rdb");
        std::fs::create_dir(&gone).unwrap();
        let conf = [
            format!("dir {}", gone.display()),
            "repl-diskless-sync no".into(),
        ];
        let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
        let source = match &bin {
            None => RedisServer::start(&conf),
            Some(b) => RedisServer::start_bin(b, &conf),
        };
        let target = RedisServer::start(&[]);
        let mut c = source.client();
        c.cmd(&["SET", "k", "v"]);
        std::fs::remove_dir_all(&gone).unwrap();
        c.cmd(&["BGSAVE"]);
        assert!(wait_until(Duration::from_secs(10), || c
            .info_field("persistence", "rdb_last_bgsave_status")
            .as_deref()
            == Some("err")));

        let (code, r) = check(&["--source", &source.url(), "--target", &target.url()]);
        assert_eq!(code, 0, "a warning is not a failure: {r:#}");
        let l = check_line(&r, "bgsave", &source.addr());
        assert_eq!(l["status"], "warn", "{bin:?}: {r:#}");
        assert!(
            l["message"]
                .as_str()
                .unwrap()
                .contains("rdb_last_bgsave_status:err"),
            "{l}"
        );
        assert!(
            l["fix"]
                .as_str()
                .unwrap()
                .contains("CONFIG SET repl-diskless-sync yes"),
            "{l}"
        );
        assert_transfer_fails(&source, &target);

        c.cmd(&["CONFIG", "SET", "repl-diskless-sync", "yes"]);
        let (_, r) = check(&["--source", &source.url(), "--target", &target.url()]);
        assert_eq!(
            check_line(&r, "bgsave", &source.addr())["status"],
            "pass",
            "{r:#}"
        );
    }
}

/// Writes at several MiB/s against `client-output-buffer-limit replica 512kb 256kb 1`: the
/// `output-buffer` line warns with a limit to set, and the master does drop the relay's
/// transfers ("overcoming of output buffer limits"). Without writes the line passes.
#[test]
fn small_replica_output_buffer_under_writes_warns_and_the_master_drops_the_transfer() {
    let source = RedisServer::start(&[
        "client-output-buffer-limit replica 512kb 256kb 1",
        "repl-diskless-sync-delay 0",
        "enable-debug-command yes",
    ]);
    let target = RedisServer::start(&[]);
    let mut c = source.client();
    c.cmd(&["DEBUG", "POPULATE", "200000", "key", "64"]);
    let (_, r) = check(&["--source", &source.url(), "--target", &target.url()]);
    let l = check_line(&r, "output-buffer", &source.addr());
    assert_eq!(l["status"], "pass", "{r:#}");
    assert!(
        l["message"].as_str().unwrap().contains("hard 512.0 KiB"),
        "{l}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let mut w = source.client();
        std::thread::spawn(move || {
            let v = "v".repeat(10_000);
            let cmds: Vec<Vec<String>> = (0..10)
                .map(|i| vec!["SET".into(), format!("w{i}"), v.clone()])
                .collect();
            while !stop.load(Ordering::Relaxed) {
                w.pipeline(&cmds);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let (code, r) = check(&["--source", &source.url(), "--target", &target.url()]);
    let l = check_line(&r, "output-buffer", &source.addr()).clone();
    assert_transfer_fails(&source, &target);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(code, 0, "a warning is not a failure: {r:#}");
    assert_eq!(l["status"], "warn", "{r:#}");
    assert!(
        l["fix"]
            .as_str()
            .unwrap()
            .contains("CONFIG SET client-output-buffer-limit \"replica "),
        "{l}"
    );
    let log = std::fs::read_to_string(source.dir.path().join("redis.log")).unwrap();
    assert!(
        log.contains("overcoming of output buffer limits"),
        "the master's log does not say why:\n{log}"
    );
}

/// A Redis 8.0 source with hash field TTLs into a cluster of Redis 7.0 masters: the cluster's
/// `field-ttl` line fails under the default `--on-unsupported-type stop`, naming how many
/// masters cannot hold them, and warns under `drop-ttl`; a source without them gives no line.
#[test]
fn cluster_target_without_field_ttls_gets_the_field_ttl_line() {
    let cluster = RedisCluster::start(3);
    let seed = cluster.nodes[0].url();
    let source = RedisServer::start_bin(&Modern::Redis80.server_bin(), &[]);
    let mut c = source.client();
    c.cmd(&["HSET", "plain", "a", "1"]);
    let (_, r) = check(&["--source", &source.url(), "--target", &seed]);
    let lines = r["checks"].as_array().unwrap();
    assert!(
        !lines.iter().any(|l| l["check"] == "field-ttl"),
        "no field TTLs, no line: {r:#}"
    );

    for i in 0..3 {
        let key = format!("h{i}");
        c.cmd(&["HSET", &key, "a", "1", "b", "2"]);
        c.cmd(&["HEXPIRE", &key, "3600", "FIELDS", "1", "a"]);
    }
    let (code, r) = check(&["--source", &source.url(), "--target", &seed]);
    assert_eq!(code, 1, "{r:#}");
    let l = check_line(&r, "field-ttl", "target cluster");
    assert_eq!(l["status"], "fail", "{r:#}");
    let msg = l["message"].as_str().unwrap();
    assert!(msg.starts_with("3 of 3 masters"), "{l}");
    assert!(msg.contains("3 keys"), "{l}");
    assert!(l["fix"].as_str().unwrap().contains("drop-ttl"), "{l}");

    let (code, r) = check(&[
        "--source",
        &source.url(),
        "--target",
        &seed,
        "--on-unsupported-type",
        "drop-ttl",
    ]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(
        check_line(&r, "field-ttl", "target cluster")["status"],
        "warn",
        "{r:#}"
    );
}
