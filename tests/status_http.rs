//! The relay's HTTP endpoint and `redis-relay status`, against a running relay (the binary)
//! with real `redis-server` masters and target: `/healthz`, `/readyz` before and after the
//! snapshot, the `/status` states (starting, failing with the error of an unreachable master,
//! in sync, catching up while the target is paused), the `status` table and JSON and their
//! exit codes, a dead address, a path that is not there, and the in-sync log lines.

mod support;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::{
    free_port, http_get_with_code, relay_cli, relay_status, wait_until, RedisServer, Relay,
};

/// The `/status` entry of `source` (`Null` when absent).
fn source_of(status: &Value, source: &str) -> Value {
    status["sources"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["source"] == source))
        .cloned()
        .unwrap_or(Value::Null)
}

fn args(source: &str, target: &str, state: &std::path::Path) -> Vec<String> {
    vec![
        "--source".into(),
        source.into(),
        "--target".into(),
        target.into(),
        "--state-dir".into(),
        state.display().to_string(),
        // The master is down at first: the prechecks would refuse to start.
        "--skip-check".into(),
    ]
}

/// `redis-relay status --addr 127.0.0.1:<port>` with `extra`: (exit code, stdout, stderr).
fn status_cli(port: u16, extra: &[&str]) -> (i32, String, String) {
    let addr = format!("127.0.0.1:{port}");
    let mut all = vec!["status", "--addr", addr.as_str()];
    all.extend_from_slice(extra);
    let out = relay_cli(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_source_goes_from_failing_to_in_sync_and_the_probes_follow() {
    let target = RedisServer::start(&[]);
    let master_port = free_port();
    let src = format!("127.0.0.1:{master_port}");
    let state = tempfile::tempdir().unwrap();
    let relay = Relay::start_sync(
        &args(&format!("redis://{src}"), &target.url(), state.path()),
        state.path(),
    );
    let port = relay.metrics_port;

    // The master does not exist yet: live, not ready, failing with the link's error.
    assert!(
        wait_until(Duration::from_secs(10), || source_of(
            &relay_status(port),
            &src
        )["state"]
            == "failing"),
        "never failing: {:#}\n{}",
        relay_status(port),
        relay.log_text()
    );
    let failing = source_of(&relay_status(port), &src);
    let error = failing["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("refused"), "{failing:#}");
    assert_eq!(failing["why"], failing["last_error"], "{failing:#}");
    assert_eq!(
        http_get_with_code(port, "/healthz"),
        Some((200, "ok\n".into()))
    );
    let (code, body) = http_get_with_code(port, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with(&format!("not ready: {src} failing: ")),
        "{body}"
    );
    assert!(body.contains("refused"), "{body}");
    let (code, table, _) = status_cli(port, &[]);
    assert_eq!(code, 1, "not in sync: exit 1\n{table}");
    let row = table.lines().find(|l| l.starts_with(&src)).unwrap_or("");
    assert!(
        row.contains("failing") && row.contains("refused"),
        "{table}"
    );
    assert!(wait_until(Duration::from_secs(3), || relay
        .metric("redis_relay_in_sync", &src)
        == Some(0.0)));

    // The master comes up with data: snapshot, then in sync.
    let master = RedisServer::start_on(master_port, &["repl-diskless-sync-delay 0"]);
    let mut m = master.client();
    for i in 0..2000 {
        m.cmd(&["SET", &format!("k{i}"), &format!("v{i}")]);
    }
    assert!(
        wait_until(Duration::from_secs(30), || http_get_with_code(
            port, "/readyz"
        )
        .is_some_and(|(c, _)| c == 200)),
        "never ready: {:#}\n{}",
        relay_status(port),
        relay.log_text()
    );
    // Ready means the target has everything.
    support::assert_union_equal(
        std::slice::from_ref(&src),
        &target.addr(),
        &relay.log_text(),
    );
    let status = relay_status(port);
    assert_eq!(status["state"], "running");
    assert_eq!(status["ready"], true);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].as_f64().unwrap() > 0.0);
    let s = source_of(&status, &src);
    assert_eq!(s["state"], "in sync", "{s:#}");
    assert_eq!(s["link"], "streaming", "{s:#}");
    assert_eq!(s["why"], Value::Null, "{s:#}");
    assert_eq!(s["full_syncs"], 1, "{s:#}");
    // The keys came in the snapshot or in the stream: together, every SET.
    let keys = s["snapshot_keys"].as_u64().unwrap();
    assert!(
        s["commands_applied"].as_u64().unwrap() >= 2000 - keys,
        "{s:#}"
    );
    assert!(wait_until(Duration::from_secs(5), || source_of(
        &relay_status(port),
        &src
    )["lag_bytes"]
        == 0));
    let (code, body) = http_get_with_code(port, "/readyz").unwrap();
    assert_eq!((code, body.as_str()), (200, "ready: 1 sources in sync\n"));
    assert!(wait_until(Duration::from_secs(3), || relay
        .metric("redis_relay_in_sync", &src)
        == Some(1.0)));
    let log = relay.log_text();
    assert_eq!(
        log.matches(&format!("{src} in sync: snapshot of {keys} keys applied"))
            .count(),
        1,
        "one in-sync line:\n{log}"
    );

    // The command: table and JSON, exit 0.
    let (code, table, err) = status_cli(port, &[]);
    assert_eq!(code, 0, "{table}{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("SOURCE"), "{table}");
    for col in [
        "STATE",
        "LAG",
        "LAG s",
        "OPS/s",
        "KEYS",
        "ETA",
        "LAST ERROR",
    ] {
        assert!(lines[0].contains(col), "{col}: {table}");
    }
    assert!(
        lines[1].starts_with(&src) && lines[1].contains("in sync"),
        "{table}"
    );
    assert!(lines[1].contains(&keys.to_string()), "{table}");
    assert!(lines[2].ends_with("1/1 sources in sync (ready)"), "{table}");
    let (code, json, err) = status_cli(port, &["--json"]);
    assert_eq!(code, 0, "{json}{err}");
    let parsed: Value = serde_json::from_str(&json).expect("status --json is JSON");
    assert_eq!(parsed["ready"], true);
    assert_eq!(source_of(&parsed, &src)["state"], "in sync");

    // Anything else: 404.
    let (code, body) = http_get_with_code(port, "/nope").unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("/status"), "{body}");
    // The Prometheus text is still there, with the new gauge.
    assert!(relay
        .metrics()
        .contains(&format!("redis_relay_in_sync{{source=\"{src}\"}} 1")));
}

#[test]
fn a_paused_target_makes_the_source_catch_up_then_in_sync_again() {
    let master = RedisServer::start(&["repl-diskless-sync-delay 0"]);
    let target = RedisServer::start(&[]);
    let src = master.addr();
    let state = tempfile::tempdir().unwrap();
    let relay = Relay::start_synced(
        &args(&master.url(), &target.url(), state.path()),
        state.path(),
        &src,
    );
    let port = relay.metrics_port;
    assert!(wait_until(Duration::from_secs(10), || source_of(
        &relay_status(port),
        &src
    )["state"]
        == "in sync"));

    // Writes go on while the target takes none for 8 s.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut m = master.client();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                m.cmd(&["SET", &format!("w{}", i % 100), &i.to_string()]);
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            i
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    target.client().cmd(&["CLIENT", "PAUSE", "8000", "WRITE"]);
    let mut seen = Value::Null;
    let caught = wait_until(Duration::from_secs(7), || {
        seen = source_of(&relay_status(port), &src);
        seen["state"] == "catching up"
    });
    assert!(caught, "never catching up: {seen:#}\n{}", relay.log_text());
    assert!(seen["lag_bytes"].as_u64().unwrap() > 0, "{seen:#}");
    assert!(
        seen["why"].as_str().unwrap_or("").starts_with("lag "),
        "{seen:#}"
    );
    let (code, body) = http_get_with_code(port, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("catching up: lag "), "{body}");

    // The pause ends while the writes go on: in sync again.
    assert!(
        wait_until(Duration::from_secs(20), || source_of(
            &relay_status(port),
            &src
        )["state"]
            == "in sync"),
        "not in sync again: {:#}\n{}",
        relay_status(port),
        relay.log_text()
    );
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 1000, "only {writes} writes");
    let log = relay.log_text();
    assert!(log.contains(&format!("{src} out of sync: lag ")), "{log}");
    assert_eq!(log.matches(&format!("{src} in sync: ")).count(), 1, "{log}");
    assert_eq!(
        log.matches(&format!("{src} in sync again: lag ")).count(),
        1,
        "{log}"
    );

    // Restarted from its state: no snapshot, and the in-sync line says so.
    let mut relay = relay;
    let (code, _) = relay.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", relay.log_text());
    let again = Relay::start_sync(
        &args(&master.url(), &target.url(), state.path()),
        state.path(),
    );
    assert!(
        wait_until(Duration::from_secs(15), || again.log_text().contains(
            &format!("{src} in sync: resumed from the checkpoint, lag ")
        )),
        "{}",
        again.log_text()
    );
    let s = source_of(&relay_status(again.metrics_port), &src);
    assert_eq!(s["full_syncs"], 0, "{s:#}");
}

#[test]
fn before_the_relay_starts_the_status_says_starting() {
    // A target that accepts connections and never answers: the relay stays in its start.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("redis://{}", silent.local_addr().unwrap());
    let master = RedisServer::start(&[]);
    let state = tempfile::tempdir().unwrap();
    let relay = Relay::start_sync(&args(&master.url(), &target, state.path()), state.path());
    let port = relay.metrics_port;
    assert!(
        wait_until(Duration::from_secs(10), || relay_status(port)["state"]
            == "starting"),
        "{}",
        relay.log_text()
    );
    let status = relay_status(port);
    assert_eq!(status["ready"], false);
    assert_eq!(status["sources"], serde_json::json!([]));
    assert_eq!(
        http_get_with_code(port, "/readyz"),
        Some((503, "not ready: relay starting\n".into()))
    );
    assert_eq!(
        http_get_with_code(port, "/healthz"),
        Some((200, "ok\n".into()))
    );
    let (code, table, _) = status_cli(port, &[]);
    assert_eq!(code, 1, "{table}");
    assert!(table.contains("starting, up "), "{table}");
}

#[test]
fn status_of_a_dead_address_names_it_and_exits_2() {
    let port = free_port();
    for extra in [&[][..], &["--json"][..]] {
        let (code, out, err) = status_cli(port, extra);
        assert_eq!(code, 2, "{out}{err}");
        assert!(out.is_empty(), "{out}");
        assert!(
            err.contains(&format!(
                "cannot reach the relay at 127.0.0.1:{port} (its --metrics-addr)"
            )),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // Not an address at all: a clear error too.
    let out = relay_cli(&["status", "--addr", "nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot resolve nowhere"), "{err}");
}
