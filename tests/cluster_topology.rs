//! Redis Cluster groundwork against a real cluster of 3 masters with a replica each
//! (`support::RedisCluster`): the slot map read from `CLUSTER SHARDS` (and `CLUSTER SLOTS` when
//! SHARDS is refused), key slots and slot tags as the server computes them, and detection.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use redis_relay::endpoint::Endpoint;
use redis_relay::resp::{Client as RelayClient, Reply};
use redis_relay::target::cluster::topology::{Health, MapSource, Role, SeedError, TopologyError};
use redis_relay::target::cluster::{is_cluster, key_slot, slot_tag, SlotMap, SLOTS};
use support::{free_port, RedisCluster, RedisServer};

const TIMEOUT: Duration = Duration::from_secs(5);

fn ep(port: u16) -> Endpoint {
    Endpoint::new("127.0.0.1", port)
}

/// Each slot's master port as the first node's `CLUSTER NODES` says (the test's own parser).
fn owners_from_cluster_nodes(cluster: &RedisCluster) -> Vec<Option<u16>> {
    let mut owners = vec![None; SLOTS];
    for line in cluster.view().iter().filter(|l| l.role == "master") {
        for &(start, end) in &line.slots {
            for s in start..=end {
                owners[s as usize] = Some(line.port);
            }
        }
    }
    owners
}

#[test]
fn slot_map_from_shards_covers_every_slot_with_the_masters_only() {
    let cluster = RedisCluster::start(3);
    let masters: BTreeSet<u16> = cluster.master_ports().into_iter().collect();
    let replicas: BTreeSet<u16> = cluster.replica_ports().into_iter().collect();
    assert_eq!((masters.len(), replicas.len()), (3, 3));
    // A dead seed first: the next one answers.
    let dead = free_port();
    let map = SlotMap::discover(&[ep(dead), ep(cluster.ports()[0])], TIMEOUT).unwrap();
    assert_eq!(
        map.source(),
        MapSource::Shards,
        "Redis 7.0 answers CLUSTER SHARDS"
    );
    assert!(
        map.uncovered_slots().is_empty(),
        "{:?}",
        map.uncovered_slots()
    );
    let map_masters: BTreeSet<u16> = map.masters().iter().map(|n| n.port).collect();
    assert_eq!(map_masters, masters);
    assert_eq!(map.nodes().len(), 6);
    let map_replicas: BTreeSet<u16> = map
        .nodes()
        .iter()
        .filter(|n| n.role == Role::Replica)
        .map(|n| n.port)
        .collect();
    assert_eq!(map_replicas, replicas);
    assert!(
        map.nodes().iter().all(|n| n.health == Health::Online),
        "{:?}",
        map.nodes()
    );
    let expected = owners_from_cluster_nodes(&cluster);
    for slot in 0..SLOTS as u16 {
        let m = map.master_for(slot).expect("covered");
        assert!(m.is_online_master() && !replicas.contains(&m.port));
        assert_eq!(Some(m.port), expected[slot as usize], "slot {slot}");
        assert_eq!(m.host, "127.0.0.1");
        assert_eq!(m.id.len(), 40);
    }
    // A replica as the seed gives the same map.
    let replica = *replicas.iter().next().unwrap();
    let from_replica = SlotMap::discover(&[ep(replica)], TIMEOUT).unwrap();
    for slot in 0..SLOTS as u16 {
        assert_eq!(
            from_replica.master_for(slot).map(|n| n.port),
            map.master_for(slot).map(|n| n.port)
        );
    }
}

#[test]
fn keys_routed_by_the_map_are_accepted_without_moved() {
    let cluster = RedisCluster::start(3);
    let map = SlotMap::discover(&[ep(cluster.ports()[0])], TIMEOUT).unwrap();
    let masters = cluster.master_ports();
    let mut per_node: Vec<(u16, Vec<Vec<Vec<u8>>>)> =
        masters.iter().map(|&p| (p, vec![])).collect();
    let mut wrong: Vec<(u16, Vec<Vec<Vec<u8>>>)> = masters.iter().map(|&p| (p, vec![])).collect();
    let keys = test_keys(1000);
    for key in &keys {
        let owner = map.master_for(key_slot(key)).unwrap().port;
        let set = vec![b"SET".to_vec(), key.clone(), b"v".to_vec()];
        per_node
            .iter_mut()
            .find(|(p, _)| *p == owner)
            .unwrap()
            .1
            .push(set.clone());
        // Another master must answer MOVED to the owner.
        let other = masters.iter().find(|&&p| p != owner).unwrap();
        wrong
            .iter_mut()
            .find(|(p, _)| p == other)
            .unwrap()
            .1
            .push(set);
    }
    let mut accepted = 0;
    for (port, cmds) in &per_node {
        for (cmd, reply) in cmds.iter().zip(cluster.client(*port).pipeline(cmds)) {
            assert_eq!(reply, Reply::Simple("OK".into()), "{:?} on {port}", cmd[1]);
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1000);
    let mut moved = 0;
    for (port, cmds) in &wrong {
        for (cmd, reply) in cmds.iter().zip(cluster.client(*port).pipeline(cmds)) {
            let owner = map.master_for(key_slot(&cmd[1])).unwrap().port;
            let want = format!("MOVED {} 127.0.0.1:{owner}", key_slot(&cmd[1]));
            assert_eq!(reply, Reply::Error(want.into()), "{:?} on {port}", cmd[1]);
            moved += 1;
        }
    }
    assert_eq!(moved, 1000);
    let on_masters: i64 = masters
        .iter()
        .map(|&p| cluster.client(p).cmd(&["DBSIZE"]).as_int().unwrap())
        .sum();
    assert_eq!(on_masters, 1000);
}

/// `n` keys: plain names, hash tags (empty, nested, second pairs) and binary bytes.
fn test_keys(n: usize) -> Vec<Vec<u8>> {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..n)
        .map(|i| match i % 8 {
            0 => format!("key:{i}").into_bytes(),
            1 => format!("{{user{}}}:profile:{i}", i % 50).into_bytes(),
            2 => format!("foo{{}}{{bar}}{i}").into_bytes(),
            3 => format!("foo{{{{bar{}}}}}{i}", i % 7).into_bytes(),
            4 => format!("a{{b{}}}{{zap}}:{i}", i % 11).into_bytes(),
            5 => format!("{{{i}").into_bytes(),
            // Random bytes, braces and NUL likely among them.
            6 => {
                let mut k: Vec<u8> = (0..next() % 24).map(|_| next() as u8).collect();
                k.extend_from_slice(&i.to_be_bytes());
                k
            }
            _ => {
                let mut k = vec![0xff, 0x00, b'{'];
                k.extend((0..next() % 6).map(|_| next() as u8));
                k.extend_from_slice(b"}\r\n");
                k.extend_from_slice(&i.to_le_bytes());
                k
            }
        })
        .collect()
}

#[test]
fn key_slot_and_slot_tags_match_cluster_keyslot() {
    let cluster = RedisCluster::start(3);
    let mut c = cluster.client(cluster.ports()[0]);
    let keys = test_keys(2000);
    let binary = keys
        .iter()
        .filter(|k| std::str::from_utf8(k).is_err())
        .count();
    let tagged = keys.iter().filter(|k| k.contains(&b'{')).count();
    assert!(
        binary >= 250 && tagged >= 1000,
        "{binary} binary, {tagged} with a brace"
    );
    let cmds: Vec<Vec<Vec<u8>>> = keys
        .iter()
        .map(|k| vec![b"CLUSTER".to_vec(), b"KEYSLOT".to_vec(), k.clone()])
        .collect();
    for (k, reply) in keys.iter().zip(c.pipeline(&cmds)) {
        assert_eq!(reply, Reply::Integer(key_slot(k).into()), "{k:?}");
    }
    // Every slot's tag, inside a longer key, lands in that slot.
    let cmds: Vec<Vec<String>> = (0..SLOTS as u16)
        .map(|s| {
            let key = format!("relay:{{{}}}:record", slot_tag(s));
            vec!["CLUSTER".into(), "KEYSLOT".into(), key]
        })
        .collect();
    for (slot, reply) in c.pipeline(&cmds).into_iter().enumerate() {
        assert_eq!(
            reply,
            Reply::Integer(slot as i64),
            "tag {}",
            slot_tag(slot as u16)
        );
    }
}

/// A user of node `port` with every permission but `rule` (`-cluster|shards`), as a login.
fn user_without(cluster: &RedisCluster, port: u16, user: &str, rule: &str) -> Endpoint {
    let setuser = ["ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", rule];
    cluster.client(port).cmd(&setuser);
    Endpoint::parse(&format!("redis://{user}:pw@127.0.0.1:{port}")).unwrap()
}

#[test]
fn slots_is_the_fallback_when_shards_is_refused() {
    let cluster = RedisCluster::start(3);
    let seed = cluster.ports()[1];
    // A user who may not run CLUSTER SHARDS (as on a server before 7.0, which does not know it).
    let login = user_without(&cluster, seed, "noshards", "-cluster|shards");
    let map = SlotMap::discover(&[login], TIMEOUT).unwrap();
    assert_eq!(map.source(), MapSource::Slots);
    assert!(map.uncovered_slots().is_empty());
    assert_eq!(map.masters().len(), 3);
    assert_eq!(map.nodes().len(), 6, "replicas are listed by SLOTS too");
    let shards = SlotMap::discover(&[ep(seed)], TIMEOUT).unwrap();
    assert_eq!(shards.source(), MapSource::Shards);
    for slot in 0..SLOTS as u16 {
        let (a, b) = (
            map.master_for(slot).unwrap(),
            shards.master_for(slot).unwrap(),
        );
        assert_eq!((&a.id, a.port), (&b.id, b.port), "slot {slot}");
    }
    // Neither command allowed: the error names the seed and both refusals.
    let login = user_without(&cluster, seed, "nocluster", "-cluster");
    let e = SlotMap::discover(&[login], TIMEOUT).unwrap_err();
    let TopologyError::NoAnswer(errs) = &e else {
        panic!("{e}")
    };
    assert!(matches!(errs.0[..], [SeedError::Refused { .. }]), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("127.0.0.1:{seed}")) && msg.contains("NOPERM"),
        "{msg}"
    );
}

#[test]
fn discovery_failures_name_every_seed_and_detection_tells_cluster_from_standalone() {
    let standalone = RedisServer::start(&[]);
    let dead = free_port();
    let e = SlotMap::discover(&[ep(dead), ep(standalone.port)], TIMEOUT).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{dead}")), "{msg}");
    assert!(
        msg.contains(&format!("127.0.0.1:{}", standalone.port)),
        "{msg}"
    );
    assert!(msg.contains("cluster support disabled"), "{msg}");
    let mut conn = RelayClient::connect(&ep(standalone.port), TIMEOUT).unwrap();
    assert!(!is_cluster(&mut conn).unwrap());
    let cluster = RedisCluster::start(3);
    for port in cluster.ports() {
        let mut conn = RelayClient::connect(&ep(port), TIMEOUT).unwrap();
        assert!(is_cluster(&mut conn).unwrap(), "node {port}");
    }
}
