//! `redis-relay verify`: every planted difference (missing, extra, changed value, changed TTL,
//! changed type) is reported, in its database; an exact copy, even with other encodings on the
//! target, is equal; exit codes 0 / 1.

mod support;

use redis_relay::resp::Reply;
use serde_json::Value as J;
use support::{relay_cli, relay_json, Client, RedisCluster, RedisServer};

fn verify_json(args: &[&str]) -> (i32, J) {
    relay_json("verify", args)
}

/// The same data on any server: every type, TTLs, several DBs.
fn fill(c: &mut Client) {
    for db in ["0", "3"] {
        c.cmd(&["SELECT", db]);
        let mut cmds: Vec<Vec<String>> = Vec::new();
        for i in 0..2000 {
            cmds.push(vec!["SET".into(), format!("s:{i}"), format!("v{i}")]);
        }
        for i in 0..200 {
            let k = format!("h:{i}");
            cmds.push(vec![
                "HSET".into(),
                k.clone(),
                "a".into(),
                "1".into(),
                "b".into(),
                i.to_string(),
            ]);
            cmds.push(vec![
                "RPUSH".into(),
                format!("l:{i}"),
                "x".into(),
                "y".into(),
            ]);
            cmds.push(vec![
                "SADD".into(),
                format!("set:{i}"),
                "1".into(),
                "2".into(),
                "3".into(),
            ]);
            cmds.push(vec![
                "ZADD".into(),
                format!("z:{i}"),
                "1.5".into(),
                "a".into(),
                "2".into(),
                "b".into(),
            ]);
            cmds.push(vec!["PEXPIREAT".into(), k, "4102444800000".into()]);
        }
        cmds.push(vec![
            "XADD".into(),
            "stream".into(),
            "1-1".into(),
            "f".into(),
            "v".into(),
        ]);
        for r in c.pipeline(&cmds) {
            assert!(!r.is_error(), "{r:?}");
        }
    }
    c.cmd(&["SELECT", "0"]);
}

#[test]
fn exact_copy_is_equal_even_with_other_encodings() {
    let src = RedisServer::start(&[]);
    // The target stores hashes, sets and zsets in their big encodings.
    let tgt = RedisServer::start(&[
        "hash-max-listpack-entries 0",
        "set-max-intset-entries 0",
        "zset-max-listpack-entries 0",
    ]);
    fill(&mut src.client());
    fill(&mut tgt.client());
    let (code, r) = verify_json(&["--source", &src.url(), "--target", &tgt.url()]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["equal"], true);
    let dbs = r["databases"].as_array().unwrap();
    assert_eq!(dbs.len(), 2, "{r:#}");
    for d in dbs {
        assert_eq!(d["source_keys"], 2001 + 800);
        assert_eq!(d["target_keys"], 2001 + 800);
        assert_eq!(d["differing"], 0);
    }
    // A sample is equal too; text output has the table and says so.
    let out = relay_cli(&[
        "verify",
        "--sample",
        "300",
        "--source",
        &src.url(),
        "--target",
        &tgt.url(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("no differences") && text.contains("sample"),
        "{text}"
    );
}

#[test]
fn every_planted_difference_is_reported() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    fill(&mut src.client());
    fill(&mut tgt.client());
    let mut t = tgt.client();
    t.cmd(&["SELECT", "3"]);
    t.cmd(&["DEL", "s:7"]); // missing
    t.cmd(&["SET", "only-on-target", "x"]); // extra
    t.cmd(&["SET", "s:8", "changed"]); // value
    t.cmd(&["HSET", "h:9", "b", "other"]); // value of a hash
    t.cmd(&["PEXPIREAT", "h:10", "4102444900000"]); // ttl
    t.cmd(&["PEXPIREAT", "s:11", "4102444900000"]); // ttl where the source has none
    t.cmd(&["DEL", "l:12"]);
    t.cmd(&["SET", "l:12", "x"]); // type
    let (code, r) = verify_json(&[
        "--source",
        &src.url(),
        "--target",
        &tgt.url(),
        "--recheck-rounds",
        "1",
    ]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(r["equal"], false);
    let diffs = r["differences"].as_array().unwrap();
    let has = |key: &str, kind: &str| {
        diffs
            .iter()
            .any(|d| d["key"] == key && d["kind"] == kind && d["db"] == 3)
    };
    assert!(has("s:7", "missing"), "{r:#}");
    assert!(has("only-on-target", "extra"), "{r:#}");
    assert!(has("s:8", "value"), "{r:#}");
    assert!(has("h:9", "value"), "{r:#}");
    assert!(has("h:10", "ttl"), "{r:#}");
    assert!(has("s:11", "ttl"), "{r:#}");
    assert!(has("l:12", "type"), "{r:#}");
    assert_eq!(diffs.len(), 7, "nothing else differs: {r:#}");
    let db0 = r["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["db"] == 0)
        .unwrap();
    assert_eq!(db0["differing"], 0);
    // A tolerance of more than the TTL shift hides the TTL differences only.
    let (code, r) = verify_json(&[
        "--source",
        &src.url(),
        "--target",
        &tgt.url(),
        "--recheck-rounds",
        "0",
        "--ttl-tolerance-ms",
        "200000",
    ]);
    assert_eq!(code, 1);
    let kinds: Vec<&str> = r["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "ttl").count(),
        1,
        "only s:11 (no TTL on the source): {kinds:?}"
    );
    // The text report has the per-DB table with key counts on both sides.
    let out = relay_cli(&[
        "verify",
        "--recheck-rounds",
        "0",
        "--source",
        &src.url(),
        "--target",
        &tgt.url(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("left keys") && text.contains("right keys"),
        "{text}"
    );
    assert!(
        text.contains("s:7") && text.contains("only-on-target"),
        "{text}"
    );
}

#[test]
fn writes_in_flight_settle_on_recheck() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    fill(&mut src.client());
    fill(&mut tgt.client());
    src.client().cmd(&["SET", "late", "1"]);
    // The "relay" applies the write a moment later.
    let port = tgt.port;
    let applier = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        Client::connect(port).unwrap().cmd(&["SET", "late", "1"]);
    });
    let (code, r) = verify_json(&["--source", &src.url(), "--target", &tgt.url()]);
    applier.join().unwrap();
    assert_eq!(code, 0, "{r:#}");
    // Seen different on the first pass (unless the pass was slower than the write), then equal.
    assert!(r["settled_on_recheck"].as_u64().unwrap() <= 1, "{r:#}");
    assert!(r["differences"].as_array().unwrap().is_empty(), "{r:#}");
}

/// A single-key command on the cluster node that serves the key (following one `-MOVED`).
fn cluster_cmd(cluster: &RedisCluster, args: &[String]) -> Reply {
    let r = cluster
        .client(cluster.ports()[0])
        .try_cmd(args)
        .expect("redis I/O");
    let Reply::Error(e) = &r else { return r };
    let e = String::from_utf8_lossy(e).into_owned();
    let Some(addr) = e.strip_prefix("MOVED ").and_then(|m| m.split(' ').nth(1)) else {
        return r;
    };
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    cluster.client(port).try_cmd(args).expect("redis I/O")
}

/// Data for db 0 of a source and a cluster: every common type, TTLs, keys in every master.
fn cluster_data() -> Vec<Vec<String>> {
    let v = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let mut cmds = Vec::new();
    for i in 0..600 {
        cmds.push(v(&["SET", &format!("s:{i}"), &format!("v{i}")]));
    }
    for i in 0..60 {
        let h = format!("h:{i}");
        cmds.push(v(&["HSET", &h, "a", "1", "b", &i.to_string()]));
        cmds.push(v(&["PEXPIREAT", &h, "4102444800000"]));
        cmds.push(v(&["RPUSH", &format!("l:{i}"), "x", "y"]));
        cmds.push(v(&["SADD", &format!("set:{i}"), "1", "2", "3"]));
        cmds.push(v(&["ZADD", &format!("z:{i}"), "1.5", "a", "2", "b"]));
    }
    cmds.push(v(&["XADD", "stream", "1-1", "f", "v"]));
    cmds
}

#[test]
fn cluster_target_is_read_through_its_masters() {
    let cluster = RedisCluster::start(3);
    let src = RedisServer::start(&[]);
    let mut c = src.client();
    for cmd in cluster_data() {
        assert!(!c.cmd(&cmd).is_error(), "{cmd:?}");
        let r = cluster_cmd(&cluster, &cmd);
        assert!(!r.is_error(), "{cmd:?}: {r:?}");
    }
    // Every master holds a part of the keys.
    for port in cluster.master_ports() {
        assert!(cluster.client(port).cmd(&["DBSIZE"]).as_int().unwrap() > 100);
    }
    let (code, r) = verify_json(&["--source", &src.url(), "--target", &cluster.url()]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["equal"], true);
    let db0 = &r["databases"][0];
    assert_eq!(db0["source_keys"], 600 + 4 * 60 + 1, "{r:#}");
    assert_eq!(db0["target_keys"], 600 + 4 * 60 + 1, "{r:#}");
    // A sample reads the cluster too.
    let (code, r) = verify_json(&[
        "--sample",
        "200",
        "--source",
        &src.url(),
        "--target",
        &cluster.url(),
    ]);
    assert_eq!(code, 0, "{r:#}");

    // A changed value and a key only on the cluster, on whichever masters they live.
    let set = |k: &str, v: &str| vec!["SET".to_string(), k.to_string(), v.to_string()];
    cluster_cmd(&cluster, &set("s:7", "changed"));
    cluster_cmd(&cluster, &set("only-on-target", "x"));
    cluster_cmd(&cluster, &vec!["DEL".to_string(), "h:3".to_string()]);
    let (code, r) = verify_json(&[
        "--source",
        &src.url(),
        "--target",
        &cluster.url(),
        "--recheck-rounds",
        "1",
    ]);
    assert_eq!(code, 1, "{r:#}");
    let diffs = r["differences"].as_array().unwrap();
    let has = |key: &str, kind: &str| diffs.iter().any(|d| d["key"] == key && d["kind"] == kind);
    assert!(has("s:7", "value"), "{r:#}");
    assert!(has("only-on-target", "extra"), "{r:#}");
    assert!(has("h:3", "missing"), "{r:#}");
    assert_eq!(diffs.len(), 3, "nothing else differs: {r:#}");
}
