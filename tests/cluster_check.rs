//! The prechecks of a Redis Cluster target (`redis-relay check --target <a node>`), against
//! real clusters of 3 masters with a replica each: the cluster lines pass on a healthy one;
//! unassigned slots, an evicting master, source keys in a database the cluster does not have
//! and a key prefix with a brace each fail with a line naming what and where. A standalone
//! target still gets its `cluster` line.

mod support;

use redis_relay::check::{self, CheckOptions, Sources, Status};
use redis_relay::endpoint::Endpoint;
use serde_json::Value as J;
use support::{check_line, relay_cli, relay_json, RedisCluster, RedisServer};

fn check(args: &[&str]) -> (i32, J) {
    relay_json("check", args)
}

fn status<'a>(r: &'a J, check: &str, subject: &str) -> &'a str {
    check_line(r, check, subject)["status"].as_str().unwrap()
}

fn message<'a>(r: &'a J, check: &str, subject: &str) -> &'a str {
    check_line(r, check, subject)["message"].as_str().unwrap()
}

#[test]
fn healthy_cluster_passes_then_eviction_databases_and_prefix_fail() {
    let cluster = RedisCluster::start(3);
    let source = RedisServer::start(&[]);
    let mut c = source.client();
    for i in 0..300 {
        c.cmd(&["SET", &format!("key:{i}"), "v"]);
    }
    let seed = format!("target cluster 127.0.0.1:{}", cluster.ports()[0]);
    let base = ["--source", &source.url(), "--target", &cluster.url()];
    let (code, r) = check(&base);
    assert_eq!(code, 0, "{r:#}");
    for c in ["prefix", "topology", "slots", "databases", "empty"] {
        assert_eq!(status(&r, c, &seed), "pass", "{c}: {r:#}");
    }
    assert!(message(&r, "topology", &seed).contains("3 masters and 3 replicas"));
    let masters = cluster.master_ports();
    assert_eq!(masters.len(), 3);
    for port in &masters {
        let node = format!("target node 127.0.0.1:{port}");
        for c in ["reachable", "state", "eviction", "version", "memory"] {
            assert_eq!(status(&r, c, &node), "pass", "{c} {node}: {r:#}");
        }
        // The share comes from the sampled keys (about a third each).
        assert!(
            message(&r, "memory", &node).contains("sampled keys"),
            "{r:#}"
        );
    }
    // Replicas are not checked as masters.
    for port in cluster.replica_ports() {
        let node = format!("target node 127.0.0.1:{port}");
        assert!(r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| !l["subject"].as_str().unwrap().contains(&node)));
    }
    let out = relay_cli(&[
        "check",
        "--source",
        &source.url(),
        "--target",
        &cluster.url(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("all 16384 slots are served"), "{text}");

    // A brace in the key prefix.
    let mut args = base.to_vec();
    args.extend(["--key-prefix", "relay{x}:"]);
    let (code, r) = check(&args);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(status(&r, "prefix", &seed), "fail", "{r:#}");
    assert!(message(&r, "prefix", &seed).contains("relay{x}:"), "{r:#}");

    // Keys in db 1: the cluster has db 0 only.
    c.cmd(&["SELECT", "1"]);
    c.cmd(&["SET", "in-db-1", "v"]);
    let (code, r) = check(&base);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(status(&r, "databases", &seed), "fail", "{r:#}");
    assert!(
        message(&r, "databases", &seed).contains("db1 -> db1"),
        "{r:#}"
    );
    let fix = check_line(&r, "databases", &seed)["fix"].as_str().unwrap();
    assert!(fix.contains("--db-map 1:0"), "{fix}");
    // Mapped into db 0 (the filter the command line builds from --db-map 1:0), or left out.
    let mut opts = CheckOptions::new(
        Sources::List(vec![Endpoint::parse(&source.url()).unwrap()]),
        Endpoint::parse(&cluster.url()).unwrap(),
    );
    opts.db_filter.db_map.insert(1, 0);
    let report = check::run(&opts);
    let line = report.find("databases", &seed).expect("a databases line");
    assert_eq!(line.status, Status::Pass, "{report}");
    assert!(line.message.contains("db0, db1 -> db0"), "{report}");
    opts.db_filter.db_map.clear();
    opts.db_filter.dbs = Some(vec![0]);
    let report = check::run(&opts);
    assert_eq!(
        report.find("databases", &seed).unwrap().status,
        Status::Pass,
        "{report}"
    );

    // An evicting master fails, named; --allow-eviction makes it a warning.
    let evicting = masters[1];
    cluster
        .client(evicting)
        .cmd(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    let node = format!("target node 127.0.0.1:{evicting}");
    let (code, r) = check(&[
        "--source",
        &source.url(),
        "--target",
        &cluster.url(),
        "--db",
        "0",
    ]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(status(&r, "eviction", &node), "fail", "{r:#}");
    assert!(message(&r, "eviction", &node).contains("allkeys-lru"));
    let others = format!("target node 127.0.0.1:{}", masters[0]);
    assert_eq!(status(&r, "eviction", &others), "pass", "{r:#}");
    let (code, r) = check(&[
        "--source",
        &source.url(),
        "--target",
        &cluster.url(),
        "--db",
        "0",
        "--allow-eviction",
    ]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(status(&r, "eviction", &node), "warn", "{r:#}");
}

#[test]
fn unassigned_slots_fail_naming_the_range() {
    let cluster = RedisCluster::start(3);
    let source = RedisServer::start(&[]);
    // Every node forgets slots 100-199 (the owner alone would be contradicted by the others).
    for port in cluster.ports() {
        cluster
            .client(port)
            .cmd(&["CLUSTER", "DELSLOTSRANGE", "100", "199"]);
    }
    let seed = format!("target cluster 127.0.0.1:{}", cluster.ports()[0]);
    let (code, r) = check(&["--source", &source.url(), "--target", &cluster.url()]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(status(&r, "slots", &seed), "fail", "{r:#}");
    let msg = message(&r, "slots", &seed);
    assert!(
        msg.contains("100 of 16384") && msg.contains("100-199"),
        "{msg}"
    );
    let fix = check_line(&r, "slots", &seed)["fix"].as_str().unwrap();
    assert!(fix.contains("--cluster fix"), "{fix}");
}

#[test]
fn standalone_target_passes_the_cluster_check() {
    let source = RedisServer::start(&[]);
    let target = RedisServer::start(&[]);
    let (code, report) = check(&["--source", &source.url(), "--target", &target.url()]);
    assert_eq!(code, 0, "{report:#}");
    let line = check_line(&report, "cluster", &format!("target {}", target.addr()));
    assert_eq!(line["status"], "pass", "{line}");
    assert!(report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["check"] != "slots"));
}
