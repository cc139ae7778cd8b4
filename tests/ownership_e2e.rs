//! Who may delete what on a shared target, with real servers: a plain `--source` relay
//! deletes nothing it cannot attribute, `--peer` protects another master's keys,
//! `--target-owner exclusive` keeps the old behaviour, and `check` tells the target's keys
//! apart and finds keys sitting on a backend they do not hash to.

mod support;

use std::time::Duration;

use support::fault_proxy::FaultProxy;
use support::{check_line as line, relay_json, wait_until, Nutcracker, RedisServer, Relay};

fn args(source: &str, target: &str, state: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "--source".to_string(),
        source.to_string(),
        "--target".into(),
        target.to_string(),
        "--state-dir".into(),
        state.display().to_string(),
        "--if-target-not-empty".into(),
        "ignore".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// `name{source="<src>",<label>="<value>"}` in the Prometheus text.
fn labelled(relay: &Relay, name: &str, src: &str, label: &str, value: &str) -> f64 {
    let text = relay.metrics();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| l.contains(&format!("source=\"{src}\"")))
        .filter(|l| l.contains(&format!("{label}=\"{value}\"")))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn plain_source_keeps_what_it_cannot_attribute_and_exclusive_flushes() {
    // Shared (the default): a FLUSHDB of the only source deletes nothing on the target.
    let master = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let state = tempfile::tempdir().unwrap();
    target.client().cmd(&["SET", "someone-else", "x"]);
    let mut m = master.client();
    for i in 0..50 {
        m.cmd(&["SET", &format!("m:{i}"), "v"]);
    }
    let src = master.addr();
    let mut relay = Relay::start_synced(
        &args(&master.url(), &target.url(), state.path(), &[]),
        state.path(),
        &src,
    );
    m.cmd(&["FLUSHDB"]);
    m.cmd(&["SET", "after", "1"]);
    assert!(
        wait_until(Duration::from_secs(10), || target
            .client()
            .cmd(&["GET", "after"])
            .as_text()
            .is_some()),
        "{}",
        relay.log_text()
    );
    let mut t = target.client();
    assert_eq!(
        t.cmd(&["GET", "someone-else"]).as_text().as_deref(),
        Some("x")
    );
    assert_eq!(
        t.cmd(&["EXISTS", "m:0", "m:49"]).as_int(),
        Some(2),
        "a relay that knows no other writer must not delete what it cannot attribute"
    );
    assert!(
        wait_until(Duration::from_secs(5), || labelled(
            &relay,
            "redis_relay_deletions_kept_total",
            &src,
            "reason",
            "unattributed"
        ) >= 51.0),
        "{}",
        relay.metrics()
    );
    assert!(
        relay.log_text().contains("--target-owner exclusive"),
        "the log names the way out: {}",
        relay.log_text()
    );
    assert_eq!(relay.terminate(Duration::from_secs(10)).0, Some(0));

    // Exclusive: the relay is the target's only writer; the FLUSHDB is the target's too.
    let master = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let state = tempfile::tempdir().unwrap();
    target.client().cmd(&["SET", "someone-else", "x"]);
    let mut m = master.client();
    m.cmd(&["SET", "m:1", "v"]);
    let src = master.addr();
    let mut relay = Relay::start_synced(
        &args(
            &master.url(),
            &target.url(),
            state.path(),
            &["--target-owner", "exclusive"],
        ),
        state.path(),
        &src,
    );
    m.cmd(&["FLUSHDB"]);
    m.cmd(&["SET", "after", "1"]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let mut t = target.client();
            t.cmd(&["GET", "after"]).as_text().is_some()
                && t.cmd(&["EXISTS", "someone-else", "m:1"]).as_int() == Some(0)
        }),
        "{}",
        relay.log_text()
    );
    assert_eq!(relay.terminate(Duration::from_secs(10)).0, Some(0));
}

#[test]
fn a_flush_during_a_target_outage_completes_once_the_target_is_back() {
    let a = RedisServer::start(&[]);
    let peer = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let to_target = FaultProxy::start(target.port);
    let state = tempfile::tempdir().unwrap();
    for i in 0..100 {
        a.client().cmd(&["SET", &format!("a:{i}"), "1"]);
        // The peer's keys, as its own relay would have written them.
        peer.client().cmd(&["SET", &format!("p:{i}"), "1"]);
        target.client().cmd(&["SET", &format!("p:{i}"), "1"]);
    }
    let proxied = format!("redis://127.0.0.1:{}", to_target.port);
    let mut relay = Relay::start_synced(
        &args(&a.url(), &proxied, state.path(), &["--peer", &peer.url()]),
        state.path(),
        &a.addr(),
    );
    to_target.cut();
    a.client().cmd(&["FLUSHDB"]);
    a.client().cmd(&["SET", "a:after", "1"]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        matches!(relay.child.try_wait(), Ok(None)),
        "a target outage during a flush is waited out, not fatal: {}",
        relay.log_text()
    );
    to_target.up();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let mut t = target.client();
            t.cmd(&["EXISTS", "a:0", "a:99"]).as_int() == Some(0)
                && t.cmd(&["GET", "a:after"]).as_text().is_some()
        }),
        "the flush completes once the target is back: {}",
        relay.log_text()
    );
    // Exactly the peer's keys and the write after the flush (besides the relay's records).
    let keys = match target.client().cmd(&["KEYS", "*"]) {
        redis_relay::resp::Reply::Array(Some(ks)) => ks
            .iter()
            .filter_map(|k| k.as_text())
            .filter(|k| !k.starts_with("redis-relay:"))
            .count(),
        other => panic!("KEYS: {other:?}"),
    };
    assert_eq!(keys, 101, "{}", relay.log_text());
    assert_eq!(relay.terminate(Duration::from_secs(10)).0, Some(0));
}

#[test]
fn a_peer_keeps_its_keys_through_the_other_relays_flush() {
    let a = RedisServer::start(&[]);
    let b = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for i in 0..200 {
        a.client().cmd(&["SET", &format!("a:{i}"), "1"]);
        b.client().cmd(&["RPUSH", &format!("b:{i}"), "x"]);
    }
    // Two relays, each knowing the other master as its peer (as two sidecars would).
    let ra = Relay::start_synced(
        &args(&a.url(), &target.url(), sa.path(), &["--peer", &b.url()]),
        sa.path(),
        &a.addr(),
    );
    let rb = Relay::start_synced(
        &args(&b.url(), &target.url(), sb.path(), &["--peer", &a.url()]),
        sb.path(),
        &b.addr(),
    );
    a.client().cmd(&["FLUSHDB"]);
    a.client().cmd(&["SET", "a:after", "1"]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let mut t = target.client();
            t.cmd(&["EXISTS", "a:0", "a:199"]).as_int() == Some(0)
                && t.cmd(&["GET", "a:after"]).as_text().is_some()
        }),
        "A's keys gone, its later write there: {}",
        ra.log_text()
    );
    let mut t = target.client();
    for i in 0..200 {
        assert_eq!(
            t.cmd(&["LLEN", &format!("b:{i}")]).as_int(),
            Some(1),
            "B's key b:{i} must survive A's FLUSHDB"
        );
    }
    assert!(
        labelled(
            &ra,
            "redis_relay_deletions_kept_total",
            &a.addr(),
            "reason",
            "on_peer"
        ) >= 200.0,
        "{}",
        ra.metrics()
    );
    assert!(
        labelled(
            &ra,
            "redis_relay_deletions_total",
            &a.addr(),
            "cause",
            "flush"
        ) >= 200.0,
        "{}",
        ra.metrics()
    );
    drop(rb);
}

#[test]
fn check_in_sidecar_mode_tells_the_target_keys_apart() {
    let s0 = RedisServer::start(&[]);
    let s1 = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let nc = Nutcracker::start(&[s0.addr(), s1.addr()]);
    let mut p = nc.client();
    let keys: Vec<String> = (0..400).map(|i| format!("k:{i}")).collect();
    for k in &keys {
        p.cmd(&["SET", k, "1"]);
    }
    // Which backend holds what (placement as nutcracker did it).
    let on0: Vec<&String> = keys
        .iter()
        .filter(|k| s0.client().cmd(&["EXISTS", k.as_str()]).as_int() == Some(1))
        .collect();
    let on1: Vec<&String> = keys
        .iter()
        .filter(|k| s1.client().cmd(&["EXISTS", k.as_str()]).as_int() == Some(1))
        .collect();
    assert!(!on0.is_empty() && !on1.is_empty());
    // A list on server0 moved by RPOPLPUSH to a name that hashes to server1: it is created
    // on server0 (nutcracker routes by the first key), off its hash.
    let src_list = (0..100)
        .map(|i| format!("l:{i}"))
        .find(|l| {
            p.cmd(&["RPUSH", l, "x"]);
            let here = s0.client().cmd(&["EXISTS", l]).as_int() == Some(1);
            if !here {
                p.cmd(&["DEL", l]);
            }
            here
        })
        .expect("a list name on server0");
    let moved = on1[0].clone();
    p.cmd(&["DEL", &moved]);
    assert_eq!(
        p.cmd(&["RPOPLPUSH", &src_list, &moved])
            .as_text()
            .as_deref(),
        Some("x")
    );
    assert_eq!(s0.client().cmd(&["EXISTS", &moved]).as_int(), Some(1));
    // The target holds server1's keys (written by server1's sidecar, say).
    let mut t = target.client();
    for k in &on1 {
        t.cmd(&["SET", k.as_str(), "1"]);
    }
    let config = nc.config_path.display().to_string();
    let base = [
        "--twemproxy",
        config.as_str(),
        "--local-server",
        "server0",
        "--target",
    ];
    let turl = target.url();
    let mut a: Vec<&str> = base.to_vec();
    a.push(&turl);
    let (code, r) = relay_json("check", &a);
    assert_eq!(code, 0, "the other backend's keys are expected: {r:#}");
    assert_eq!(line(&r, "empty", "target")["status"], "pass", "{r:#}");
    assert!(
        line(&r, "empty", "target")["message"]
            .as_str()
            .unwrap()
            .contains("placed on other backends"),
        "{r:#}"
    );
    // The moved key is reported on the backend that holds it.
    let placement = line(&r, "placement", &s0.addr());
    assert_eq!(placement["status"], "warn", "{r:#}");
    assert!(
        placement["message"].as_str().unwrap().starts_with("1 of "),
        "{placement}"
    );
    // A key no backend holds falls under --if-target-not-empty.
    t.cmd(&["SET", "nobodys", "1"]);
    let (code, r) = relay_json("check", &a);
    assert_eq!(code, 1, "{r:#}");
    let empty = line(&r, "empty", "target");
    assert_eq!(empty["status"], "fail", "{r:#}");
    assert!(
        empty["message"].as_str().unwrap().contains("nobodys"),
        "{empty}"
    );
    // As the systemd template runs it: the pool and target from the file, the local server
    // on the command line.
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("relay.toml");
    std::fs::write(
        &toml,
        format!("twemproxy = {config:?}\ntarget = {turl:?}\n"),
    )
    .unwrap();
    let (_, r) = relay_json(
        "check",
        &[
            "--config",
            toml.to_str().unwrap(),
            "--local-server",
            "server0",
        ],
    );
    let peers = line(&r, "peers", "sidecar");
    assert_eq!(peers["status"], "pass", "{r:#}");
    assert!(
        peers["message"].as_str().unwrap().contains(&s1.addr()),
        "server1 is the peer: {peers}"
    );
    // A name that is not in the pool is a clear error.
    let mut bad: Vec<&str> = a.clone();
    bad[3] = "server9";
    let (code, r) = relay_json("check", &bad);
    assert_eq!(code, 1, "{r:#}");
    assert!(r.to_string().contains("server9"), "{r:#}");
}
