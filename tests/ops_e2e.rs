//! Operations: the status log line without a terminal (`--log-format json` included), the
//! heartbeat and `redis_relay_lag_seconds`, and no write to a source without `--heartbeat`.

mod support;

use std::time::{Duration, Instant};

use support::{wait_until, Client, RedisServer, Relay};

fn s(x: impl ToString) -> String {
    x.to_string()
}

/// `n` hashes (no SET: the master's `cmdstat_set` stays the relay's alone).
fn preload(c: &mut Client, n: usize) {
    let cmds: Vec<Vec<String>> = (0..n)
        .map(|i| vec![s("HSET"), format!("h:{i}"), s("f"), format!("v{i}")])
        .collect();
    for chunk in cmds.chunks(1000) {
        for r in c.pipeline(chunk) {
            assert!(!r.is_error(), "{r:?}");
        }
    }
}

fn args(
    src: &RedisServer,
    tgt: &RedisServer,
    state: &std::path::Path,
    extra: &[&str],
) -> Vec<String> {
    let mut a = vec![
        s("--source"),
        src.url(),
        s("--target"),
        tgt.url(),
        s("--state-dir"),
        state.display().to_string(),
        s("--log-format"),
        s("json"),
    ];
    a.extend(extra.iter().map(s));
    a
}

/// Every line of the log parses as JSON; returns them.
fn json_lines(relay: &Relay) -> Vec<serde_json::Value> {
    let text = relay.log_text();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{text}"))
        })
        .collect()
}

/// The status lines (`fields.phase` set) of `source`.
fn status_lines(relay: &Relay, source: &str) -> Vec<serde_json::Value> {
    json_lines(relay)
        .into_iter()
        .filter(|v| {
            v["fields"]["phase"].is_string() && v["fields"]["source"].as_str() == Some(source)
        })
        .collect()
}

fn heartbeat_key(src: &RedisServer) -> String {
    format!("redis-relay:heartbeat:{}", src.addr())
}

#[test]
fn status_log_line_without_terminal_and_no_write_to_the_source() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let mut m = src.client();
    preload(&mut m, 2000);
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // Not quiet: the status output is on, and stderr is a file, not a terminal.
    let mut relay =
        Relay::start_sync_with(&args(&src, &tgt, state.path(), &[]), state.path(), false);
    let name = src.addr();
    assert!(
        wait_until(Duration::from_secs(30), || relay
            .metric("redis_relay_snapshot_done", &name)
            == Some(1.0)),
        "snapshot not done: {}",
        relay.log_text()
    );
    // Live traffic, then the first status line (every 10 s).
    for i in 0..200 {
        m.cmd(&["RPUSH", "live", &s(i)]);
    }
    let mut lines = Vec::new();
    let found = wait_until(
        Duration::from_secs(14).saturating_sub(started.elapsed()),
        || {
            lines = status_lines(&relay, &name);
            !lines.is_empty()
        },
    );
    assert!(found, "no status line within 14 s: {}", relay.log_text());
    let first = started.elapsed();
    let l = &lines[0];
    let f = &l["fields"];
    assert_eq!(l["level"], "INFO", "{l}");
    assert_eq!(f["phase"], "streaming", "{l}");
    // At rest after the snapshot: in sync (the link's own state is `link`).
    assert_eq!(f["state"], "in sync", "{l}");
    assert_eq!(f["link"], "streaming", "{l}");
    assert_eq!(f["snapshot_keys"], 2000, "{l}");
    assert!(f["lag_bytes"].is_u64(), "{l}");
    assert!(f["ops_per_sec"].is_u64(), "{l}");
    assert_eq!(f["target_errors"], 0, "{l}");
    assert!(
        f.get("lag_seconds").is_none(),
        "no heartbeat, no lag_seconds: {l}"
    );
    let msg = f["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!("{name} in sync: lag ")) && msg.contains("ops/s"),
        "{msg}"
    );
    // The estimate is exported; the heartbeat gauge is not.
    assert!(
        wait_until(Duration::from_secs(5), || relay
            .metric("redis_relay_lag_seconds_estimate", &name)
            .is_some()),
        "{}",
        relay.metrics()
    );
    assert_eq!(relay.metric("redis_relay_lag_seconds", &name), None);
    assert_eq!(
        relay.metric("redis_relay_snapshot_keys", &name),
        Some(2000.0)
    );
    // Without --heartbeat the relay never writes to the source.
    assert_eq!(m.info_field("commandstats", "cmdstat_set"), None);
    assert_eq!(m.cmd(&["EXISTS", &heartbeat_key(&src)]).as_int(), Some(0));
    let (code, _) = relay.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", relay.log_text());
    json_lines(&relay);
    eprintln!("first status line after {first:.1?}");
}

#[test]
fn heartbeat_measures_lag_seconds() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let mut m = src.client();
    preload(&mut m, 2000);
    let state = tempfile::tempdir().unwrap();
    let mut relay = Relay::start_sync(
        &args(&src, &tgt, state.path(), &["--heartbeat", "200ms"]),
        state.path(),
    );
    let name = src.addr();
    let started = Instant::now();
    let mut lag = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            lag = relay.metric("redis_relay_lag_seconds", &name);
            lag.is_some()
        }),
        "no redis_relay_lag_seconds: {}\n{}",
        relay.metrics(),
        relay.log_text()
    );
    eprintln!(
        "lag_seconds appeared after {:.1?}: {lag:?}",
        started.elapsed()
    );
    // Under a write load the measured lag stays small and keeps being measured.
    let mut t = tgt.client();
    let load_until = Instant::now() + Duration::from_secs(3);
    let mut i = 0;
    while Instant::now() < load_until {
        let cmds: Vec<Vec<String>> = (0..100)
            .map(|j| vec![s("RPUSH"), format!("l:{}", j % 10), s(i * 100 + j)])
            .collect();
        m.pipeline(&cmds);
        i += 1;
    }
    m.cmd(&["RPUSH", "done", "1"]);
    assert!(
        wait_until(Duration::from_secs(20), || t
            .cmd(&["EXISTS", "done"])
            .as_int()
            == Some(1)),
        "{}",
        relay.log_text()
    );
    std::thread::sleep(Duration::from_secs(1));
    let lag = relay.metric("redis_relay_lag_seconds", &name).unwrap();
    eprintln!("lag_seconds after the load: {lag}");
    // Every measured heartbeat is in the histogram: one per 200 ms since the snapshot.
    let measured = relay
        .metric("redis_relay_heartbeat_lag_seconds_count", &name)
        .expect("the heartbeat histogram");
    assert!(measured >= 5.0, "{measured} heartbeats measured");
    assert!((0.0..5.0).contains(&lag), "lag_seconds {lag}");
    // The heartbeat is a SET of the current time on the source...
    let text = m
        .cmd(&["GET", &heartbeat_key(&src)])
        .as_text()
        .expect("heartbeat key on the source");
    // `<unix ms>.<µs>`
    let stamp = redis_relay::pipeline::stream_apply::parse_stamp(&text).expect("a stamp") / 1000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(now.abs_diff(stamp) < 5_000, "stamp {stamp}, now {now}");
    let sets: u64 = m
        .info_field("commandstats", "cmdstat_set")
        .and_then(|v| v.split(['=', ',']).nth(1)?.parse().ok())
        .expect("cmdstat_set");
    assert!(sets >= 5, "{sets} heartbeats");
    // ... with a TTL, and never copied to the target.
    let ttl = m.cmd(&["PTTL", &heartbeat_key(&src)]).as_int().unwrap();
    assert!(ttl > 0, "pttl {ttl}");
    assert_eq!(t.cmd(&["EXISTS", &heartbeat_key(&src)]).as_int(), Some(0));
    let (code, _) = relay.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", relay.log_text());
}
