//! Filters on a real sync: `--db`, `--db-map`, key include/exclude by prefix and regex, and
//! `--exclude-command`, on the snapshot and on the stream alike, with multi-key commands whose
//! keys the filter splits.

mod support;

use std::time::Duration;

use redis_relay::resp::Reply;
use support::{wait_until, Client, RedisServer, Relay};

fn s(x: &str) -> String {
    x.to_string()
}

/// Sorted keys of `db` on the target.
fn keys(c: &mut Client, db: u32) -> Vec<String> {
    c.cmd(&["SELECT", &db.to_string()]);
    let mut k: Vec<String> = match c.cmd(&["KEYS", "*"]) {
        Reply::Array(Some(items)) => items.iter().filter_map(|i| i.as_text()).collect(),
        other => panic!("{other:?}"),
    };
    k.retain(|k| !k.starts_with("redis-relay:"));
    k.sort();
    k
}

fn get(c: &mut Client, db: u32, key: &str) -> Option<String> {
    c.cmd(&["SELECT", &db.to_string()]);
    c.cmd(&["GET", key]).as_text()
}

/// The same writes before the relay starts (snapshot) and after (stream), with a tag.
fn writes(m: &mut Client, tag: &str) {
    for db in ["0", "1", "2"] {
        m.cmd(&["SELECT", db]);
        for k in ["user:1", "user:tmp:1", "order:12", "order:x", "other:1"] {
            m.cmd(&["SET", &format!("{k}:{tag}"), db]);
        }
    }
    m.cmd(&["SELECT", "0"]);
}

#[test]
fn filters_apply_to_snapshot_and_stream() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let mut m = src.client();
    writes(&mut m, "snap");
    m.cmd(&["SET", "user:counter", "10"]);
    m.cmd(&["SET", "user:mv", "1"]);
    m.cmd(&["SET", "user:ren", "1"]);
    m.cmd(&["SET", "other:del", "1"]);
    m.cmd(&["SET", "user:del", "1"]);

    let state = tempfile::tempdir().unwrap();
    let mut relay = Relay::start_sync(
        &[
            s("--source"),
            src.url(),
            s("--target"),
            tgt.url(),
            s("--state-dir"),
            state.path().display().to_string(),
            s("--db"),
            s("0,1"),
            s("--db-map"),
            s("1:5"),
            s("--include-prefix"),
            s("user:"),
            s("--include-regex"),
            s("^order:[0-9]+:"),
            s("--exclude-prefix"),
            s("user:tmp:"),
            s("--exclude-command"),
            s("incr"),
        ],
        state.path(),
    );
    let src_name = src.addr();
    assert!(
        wait_until(Duration::from_secs(30), || relay
            .metric("redis_relay_snapshot_done", &src_name)
            == Some(1.0)),
        "snapshot not done: {}",
        relay.log_text()
    );
    writes(&mut m, "live");
    m.cmd(&["INCR", "user:counter"]); // excluded command
    m.cmd(&["MSET", "user:m", "1", "other:m", "2"]); // split: only user:m
    m.cmd(&["DEL", "user:del", "other:del"]); // split: user:del deleted
    m.cmd(&["MOVE", "user:mv", "2"]); // into a database not copied: gone from the target
    m.cmd(&["RENAME", "user:ren", "other:ren"]); // split: forwarded whole
    m.cmd(&["SET", "done", "1"]);
    m.cmd(&["SET", "user:done", "1"]);
    let mut t = tgt.client();
    assert!(
        wait_until(Duration::from_secs(20), || get(&mut t, 0, "user:done")
            .is_some()),
        "stream not applied: {}",
        relay.log_text()
    );
    let expect_db = |tags: &[&str], extra: &[&str]| {
        let mut v: Vec<String> = Vec::new();
        for tag in tags {
            v.push(format!("order:12:{tag}"));
            v.push(format!("user:1:{tag}"));
        }
        v.extend(extra.iter().map(|e| e.to_string()));
        v.sort();
        v
    };
    assert_eq!(
        keys(&mut t, 0),
        expect_db(
            &["snap", "live"],
            &["user:counter", "user:m", "other:ren", "user:done"]
        ),
        "db 0"
    );
    assert_eq!(
        keys(&mut t, 5),
        expect_db(&["snap", "live"], &[]),
        "db 1 -> 5"
    );
    assert_eq!(get(&mut t, 5, "user:1:live").as_deref(), Some("1"));
    assert!(keys(&mut t, 1).is_empty(), "db 1 is mapped away");
    assert!(keys(&mut t, 2).is_empty(), "db 2 is not copied");
    assert_eq!(
        get(&mut t, 0, "user:counter").as_deref(),
        Some("10"),
        "INCR excluded"
    );
    let (code, _) = relay.terminate(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{}", relay.log_text());
}
