//! A Redis Cluster node as the target is refused until the cluster writer exists: `sync`
//! (with and without the prechecks) and `restore` exit non-zero before writing anything, and
//! `check` reports a failed `cluster` line; the message names the target and says why.

mod support;

use support::{check_line, corpus_dir, relay_cli, relay_json, RedisCluster, RedisServer};

const NOT_SUPPORTED: &str = "Redis Cluster targets are not supported yet";

#[test]
fn cluster_target_is_refused_by_sync_restore_and_check() {
    let cluster = RedisCluster::start(3);
    let target = cluster.url();
    let addr = format!("127.0.0.1:{}", cluster.ports()[0]);
    let source = RedisServer::start(&[]);
    let mut c = source.client();
    for i in 0..200 {
        c.cmd(&["SET", &format!("key:{i}"), "v"]);
    }
    let state = tempfile::tempdir().unwrap();
    let sd = state.path().display().to_string();
    let base = [
        "sync",
        "-q",
        "--source",
        &source.url(),
        "--target",
        &target,
        "--state-dir",
        &sd,
    ];

    // The prechecks of sync fail on the cluster line.
    let out = relay_cli(&base);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(NOT_SUPPORTED) && err.contains(&addr), "{err}");

    // Without them, the relay refuses at start, before any writer connects.
    let mut args = base.to_vec();
    args.push("--skip-check");
    let out = relay_cli(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(NOT_SUPPORTED) && err.contains(&addr), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // restore of a corpus RDB.
    let rdb = corpus_dir().join("7.0.15/dump.rdb");
    let out = relay_cli(&[
        "restore",
        &rdb.display().to_string(),
        "--target",
        &target,
        "-q",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(NOT_SUPPORTED) && err.contains(&addr), "{err}");

    // check: a failed `cluster` line with the same explanation and a fix.
    let (code, report) = relay_json("check", &["--source", &source.url(), "--target", &target]);
    assert_eq!(code, 1, "{report:#}");
    let line = check_line(&report, "cluster", &format!("target {addr}"));
    assert_eq!(line["status"], "fail", "{line}");
    let msg = line["message"].as_str().unwrap();
    assert!(msg.contains(NOT_SUPPORTED) && msg.contains(&addr), "{msg}");
    assert!(
        line["fix"].as_str().unwrap().contains("standalone"),
        "{line}"
    );

    // Nothing reached any node.
    assert_eq!(cluster.total_keys(), 0);
    assert_eq!(source.client().cmd(&["DBSIZE"]).as_int(), Some(200));
}

#[test]
fn standalone_target_passes_the_cluster_check() {
    let source = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let (code, report) = relay_json(
        "check",
        &["--source", &source.url(), "--target", &target.url()],
    );
    assert_eq!(code, 0, "{report:#}");
    let line = check_line(&report, "cluster", &format!("target {}", target.addr()));
    assert_eq!(line["status"], "pass", "{line}");
}
