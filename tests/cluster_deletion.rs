//! `target::deletion` with a Redis Cluster target (`Plan::cluster`): a real cluster of 3 masters
//! (one replica each) holding the keys of two sources spread over all slots, and a standalone
//! `redis-server` standing for the other source's master (the peer). A key may only be deleted
//! on the master holding it, once the peer answered it does not hold it; batches hold one
//! slot's keys (WATCH and MULTI/EXEC refuse several slots).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use redis_relay::endpoint::Endpoint;
use redis_relay::resp::Reply;
use redis_relay::target::cluster::{key_slot, SlotMap};
use redis_relay::target::deletion::{
    delete_on_cluster, retry, sweep, Authority, DeletionError, Plan, Report, Scope,
};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(5);
/// Keys of source A (the relay's own source) and of source B (the peer's).
const A_KEYS: usize = 600;
const B_KEYS: usize = 300;

fn ep(port: u16) -> Endpoint {
    Endpoint::new("127.0.0.1", port)
}

fn a_key(i: usize) -> String {
    format!("a:{i}")
}

fn b_key(i: usize) -> String {
    format!("b:{i}")
}

/// Source B's master also holds every third key of source A.
fn shared(i: usize) -> bool {
    i.is_multiple_of(3)
}

/// The relay's own keys (its record), kept by rule.
fn own(_db: u32, k: &[u8]) -> bool {
    k.starts_with(b"relay:")
}

/// The cluster with its slot map, a peer, and the keys written.
struct Setup {
    cluster: RedisCluster,
    peer: RedisServer,
    map: SlotMap,
}

impl Setup {
    /// Target: `a:*`, `b:*` and a few `relay:{tag}` keys; peer: `b:*` and the shared `a:*`.
    fn start() -> Setup {
        let cluster = RedisCluster::start(3);
        let peer = RedisServer::start(&[]);
        let map = SlotMap::discover(&[ep(cluster.ports()[0])], TIMEOUT).expect("slot map");
        let s = Setup { cluster, peer, map };
        let mut target: Vec<String> = (0..A_KEYS).map(a_key).collect();
        target.extend((0..B_KEYS).map(b_key));
        target.extend((0..9).map(|i| format!("relay:{{{i}}}:offsets")));
        s.put(&target);
        let mut on_peer: Vec<String> = (0..B_KEYS).map(b_key).collect();
        on_peer.extend((0..A_KEYS).filter(|&i| shared(i)).map(a_key));
        let cmds: Vec<Vec<String>> = on_peer
            .iter()
            .map(|k| vec!["SET".into(), k.clone(), "v".into()])
            .collect();
        s.peer.client().pipeline(&cmds);
        s
    }

    fn seed(&self) -> Endpoint {
        ep(self.cluster.ports()[0])
    }

    /// The port of the master serving `key`.
    fn port_of(&self, key: &str) -> u16 {
        self.map
            .master_for(key_slot(key.as_bytes()))
            .expect("every slot served")
            .port
    }

    /// SET each key on its slot's master.
    fn put(&self, keys: &[String]) {
        let mut by_node: BTreeMap<u16, Vec<Vec<String>>> = BTreeMap::new();
        for k in keys {
            by_node.entry(self.port_of(k)).or_default().push(vec![
                "SET".into(),
                k.clone(),
                "v".into(),
            ]);
        }
        for (port, cmds) in by_node {
            for r in self.cluster.client(port).pipeline(&cmds) {
                assert_eq!(r, Reply::Simple(Bytes::from_static(b"OK")), "SET on {port}");
            }
        }
    }

    /// The keys of every master, by master port.
    fn keys_by_master(&self) -> BTreeMap<u16, BTreeSet<String>> {
        self.cluster
            .master_ports()
            .into_iter()
            .map(|port| {
                let keys = match self.cluster.client(port).cmd(&["KEYS", "*"]) {
                    Reply::Array(Some(ks)) => ks.iter().filter_map(|k| k.as_text()).collect(),
                    other => panic!("KEYS on {port}: {other:?}"),
                };
                (port, keys)
            })
            .collect()
    }

    fn all_keys(&self) -> BTreeSet<String> {
        self.keys_by_master().into_values().flatten().collect()
    }
}

/// Every key the setup wrote.
fn written() -> BTreeSet<String> {
    let mut all: BTreeSet<String> = (0..A_KEYS).map(a_key).collect();
    all.extend((0..B_KEYS).map(b_key));
    all.extend((0..9).map(|i| format!("relay:{{{i}}}:offsets")));
    all
}

/// The keys of source A the peer does not hold: the only ones a sweep may delete.
fn stale() -> BTreeSet<String> {
    (0..A_KEYS).filter(|&i| !shared(i)).map(a_key).collect()
}

fn run_sweep(plan: &Plan) -> (Report, Vec<(u32, Bytes)>) {
    let mut deferred = Vec::new();
    let report = sweep(plan, Scope::Db(0), &mut |db, k| deferred.push((db, k))).expect("sweep");
    (report, deferred)
}

fn sweep_deletes_exactly_the_stale_keys_with(precheck: bool) {
    let s = Setup::start();
    let before = s.keys_by_master();
    let auth = Authority::Peers(vec![ep(s.peer.port)]);
    let seed = s.seed();
    let mut plan = Plan::new(&seed, &auth);
    plan.cluster = true;
    plan.precheck = precheck;
    plan.keep = &own;
    // Small batches: many per slot-group, and every master visited many times.
    plan.batch = 16;
    let (r, deferred) = run_sweep(&plan);
    assert!(deferred.is_empty(), "{deferred:?}");
    let stale = stale();
    assert_eq!(r.scanned as usize, written().len(), "{r:?}");
    assert_eq!(r.kept_by_rule, 9, "{r:?}");
    assert_eq!(r.deleted as usize, stale.len(), "{r:?}");
    assert_eq!(
        r.kept_on_peer as usize,
        B_KEYS + A_KEYS - stale.len(),
        "{r:?}"
    );
    assert!(r.peers_down.is_empty() && r.watch_aborts == 0, "{r:?}");
    let expected: BTreeSet<String> = written().difference(&stale).cloned().collect();
    assert_eq!(s.all_keys(), expected);
    // Each of the three masters held stale keys and lost exactly those.
    let after = s.keys_by_master();
    assert_eq!(before.len(), 3);
    for (port, keys) in &before {
        let gone: BTreeSet<String> = keys.difference(&after[port]).cloned().collect();
        let mine: BTreeSet<String> = keys.intersection(&stale).cloned().collect();
        assert!(!mine.is_empty(), "master {port} held no stale key");
        assert_eq!(gone, mine, "master {port}");
    }
    // The peer is only read.
    assert_eq!(
        s.peer.client().cmd(&["DBSIZE"]).as_int(),
        Some((B_KEYS + A_KEYS - stale.len()) as i64)
    );
    // A second sweep finds nothing more to delete.
    let (again, _) = run_sweep(&plan);
    assert_eq!(again.deleted, 0, "{again:?}");
    assert_eq!(s.all_keys(), expected);
}

#[test]
fn sweep_with_a_peer_deletes_exactly_the_keys_it_does_not_hold_on_every_master() {
    sweep_deletes_exactly_the_stale_keys_with(false);
}

#[test]
fn sweep_with_precheck_deletes_exactly_the_keys_the_peer_does_not_hold() {
    sweep_deletes_exactly_the_stale_keys_with(true);
}

#[test]
fn unknown_writers_delete_nothing_and_a_retry_list_spans_slots() {
    let s = Setup::start();
    let seed = s.seed();
    // Authority::Unknown: everything but the kept keys is counted, nothing deleted.
    let unknown = Authority::Unknown;
    let mut plan = Plan::new(&seed, &unknown);
    plan.cluster = true;
    plan.keep = &own;
    let (r, deferred) = run_sweep(&plan);
    assert!(deferred.is_empty());
    assert_eq!(r.deleted, 0, "{r:?}");
    assert_eq!(r.unattributed as usize, A_KEYS + B_KEYS, "{r:?}");
    assert_eq!(s.all_keys(), written());

    // A retry list over many slots: stale keys, keys on the peer, kept keys, a missing key.
    let auth = Authority::Peers(vec![ep(s.peer.port)]);
    let mut plan = Plan::new(&seed, &auth);
    plan.cluster = true;
    plan.keep = &own;
    plan.batch = 4;
    let list: Vec<String> = (0..60)
        .map(a_key)
        .chain((0..10).map(b_key))
        .chain(["relay:{1}:offsets".to_string(), "never-there".to_string()])
        .collect();
    let slots: BTreeSet<u16> = list.iter().map(|k| key_slot(k.as_bytes())).collect();
    let ports: BTreeSet<u16> = list.iter().map(|k| s.port_of(k)).collect();
    assert!(slots.len() > 50 && ports.len() == 3, "{slots:?} {ports:?}");
    let mut deferred = Vec::new();
    let mut keys = list
        .iter()
        .map(|k| (0u32, Bytes::copy_from_slice(k.as_bytes())));
    let r = retry(&plan, &mut keys, &mut |db, k| deferred.push((db, k))).expect("retry");
    assert!(deferred.is_empty(), "{deferred:?}");
    let doomed: BTreeSet<String> = (0..60).filter(|&i| !shared(i)).map(a_key).collect();
    assert_eq!(r.scanned, 72, "{r:?}");
    assert_eq!(r.kept_by_rule, 1, "{r:?}");
    assert_eq!(r.deleted as usize, doomed.len(), "{r:?}");
    assert_eq!(r.kept_on_peer, 20 + 10, "{r:?}");
    let expected: BTreeSet<String> = written().difference(&doomed).cloned().collect();
    assert_eq!(s.all_keys(), expected);

    // The old value of deferred keys written again: deleted on each slot's master, no proof.
    let gone: Vec<Bytes> = (0..20)
        .map(b_key)
        .chain(["never-there".to_string()])
        .map(|k| Bytes::from(k.into_bytes()))
        .collect();
    let n = delete_on_cluster(&seed, 0, &gone, TIMEOUT).expect("DEL per slot");
    assert_eq!(n, 20);
    let left: BTreeSet<String> = expected
        .iter()
        .filter(|k| !(0..20).any(|i| **k == b_key(i)))
        .cloned()
        .collect();
    assert_eq!(s.all_keys(), left);
}

#[test]
fn a_peer_down_defers_and_a_migrating_slot_is_transient() {
    let s = Setup::start();
    let seed = s.seed();
    // A peer that is down proves nothing: every candidate is deferred, nothing deleted.
    let dead = Authority::Peers(vec![ep(free_port())]);
    let mut plan = Plan::new(&seed, &dead);
    plan.cluster = true;
    plan.keep = &own;
    let (r, deferred) = run_sweep(&plan);
    assert_eq!(r.deleted, 0, "{r:?}");
    assert_eq!(deferred.len(), A_KEYS + B_KEYS, "{r:?}");
    assert_eq!(r.peers_down.len(), 1, "{r:?}");
    assert_eq!(s.all_keys(), written());

    // Slot of a:1 (stale) migrating: the key already moved to the importing node.
    let key = a_key(1);
    let slot = key_slot(key.as_bytes());
    let src = s.port_of(&key);
    let dst = *s
        .cluster
        .master_ports()
        .iter()
        .find(|&&p| p != src)
        .expect("another master");
    let id = |port: u16| s.cluster.client(port).cmd(&["CLUSTER", "MYID"]).as_text();
    let (src_id, dst_id) = (id(src).expect("id"), id(dst).expect("id"));
    let slot_s = slot.to_string();
    s.cluster
        .client(dst)
        .cmd(&["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &src_id]);
    s.cluster
        .client(src)
        .cmd(&["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &dst_id]);
    s.cluster
        .client(src)
        .cmd(&["MIGRATE", "127.0.0.1", &dst.to_string(), &key, "0", "5000"]);
    let auth = Authority::Peers(vec![ep(s.peer.port)]);
    let mut plan = Plan::new(&seed, &auth);
    plan.cluster = true;
    plan.keep = &own;
    // A sweep finds a key on a node the map does not give its slot to.
    let e = sweep(&plan, Scope::Db(0), &mut |_, _| {}).expect_err("slot migrating");
    assert!(
        matches!(&e, DeletionError::Cluster { reason, .. } if reason.contains(&format!("slot {slot}"))),
        "{e}"
    );
    // A retry of the key asks its slot's master by the map, which answers ASK: transient.
    let mut keys = std::iter::once((0u32, Bytes::copy_from_slice(key.as_bytes())));
    let e = retry(&plan, &mut keys, &mut |_, _| {}).expect_err("ASK");
    assert!(
        matches!(&e, DeletionError::Cluster { command, reason, .. } if command == "WATCH" && reason.starts_with("ASK")),
        "{e}"
    );
    let text = e.to_string();
    assert!(text.contains(&format!("127.0.0.1:{src}")), "{text}");
    // Nothing was deleted on either side.
    let mut c = s.cluster.client(dst);
    c.cmd(&["ASKING"]);
    assert_eq!(c.cmd(&["EXISTS", &key]), Reply::Integer(1));
    // Once the slot is given to the importing node, the sweep completes there.
    for port in s.cluster.master_ports() {
        s.cluster
            .client(port)
            .cmd(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &dst_id]);
    }
    let done = wait_until(Duration::from_secs(30), || {
        sweep(&plan, Scope::Db(0), &mut |_, _| {}).is_ok()
    });
    assert!(done, "the sweep never completed after the migration");
    assert_eq!(
        s.all_keys(),
        written().difference(&stale()).cloned().collect()
    );
}
