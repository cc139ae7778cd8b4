//! `ClusterClient` and cross-slot units against a real cluster of 3 masters with a replica
//! each (`support::RedisCluster`): routing to every master, MOVED after `CLUSTER SETSLOT` and
//! after `redis-cli --cluster reshard`, ASK and TRYAGAIN during a migration, commands on
//! every master; cross-slot units compared with what a standalone server computes, and run
//! again after an interruption without writing any slot twice.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use redis_relay::batch::record::slot_key;
use redis_relay::batch::{Bookkeeping, CrossSlot, SlotPart};
use redis_relay::endpoint::Endpoint;
use redis_relay::resp::Reply;
use redis_relay::target::cluster::client::{ClusterClient, ClusterError};
use redis_relay::target::cluster::cross_slot;
use redis_relay::target::cluster::{key_slot, slot_tag};
use support::*;

const TIMEOUT: Duration = Duration::from_secs(5);

fn b(s: &str) -> Bytes {
    Bytes::from(s.to_string())
}

fn args(a: &[&str]) -> Vec<Bytes> {
    a.iter().map(|s| b(s)).collect()
}

fn connect(cluster: &RedisCluster) -> ClusterClient {
    let seeds = [Endpoint::new("127.0.0.1", cluster.ports()[0])];
    ClusterClient::connect(&seeds, TIMEOUT).expect("connect to the cluster")
}

/// The port of the master serving `slot`, per the first node's `CLUSTER NODES`.
fn owner_port(cluster: &RedisCluster, slot: u16) -> u16 {
    cluster
        .view()
        .iter()
        .find(|l| l.role == "master" && l.slots.iter().any(|&(a, z)| a <= slot && slot <= z))
        .map(|l| l.port)
        .expect("every slot has a master")
}

/// `n` keys `<prefix><i>`, each served by a different master.
fn keys_on_masters(client: &ClusterClient, prefix: &str, n: usize) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for i in 0.. {
        let key = format!("{prefix}{i}");
        let owner = client
            .map()
            .master_for(key_slot(key.as_bytes()))
            .unwrap()
            .addr();
        if seen.insert(owner) {
            out.push(key);
        }
        if out.len() == n {
            return out;
        }
    }
    unreachable!()
}

fn get_many(c: &mut ClusterClient, key: &str) -> Option<Bytes> {
    c.get_many_db0(&[key.to_string()]).unwrap().pop().unwrap()
}

fn text(r: &Reply) -> String {
    r.as_text().unwrap_or_else(|| format!("{r:?}"))
}

#[test]
fn keys_go_to_their_masters_and_every_master_runs_keyless_commands() {
    let cluster = RedisCluster::start(3);
    let mut c = connect(&cluster);
    assert_eq!(c.masters().len(), 3);
    let keys = keys_on_masters(&c, "route:", 3);
    for (i, k) in keys.iter().enumerate() {
        let r = c
            .call_key(0, k.as_bytes(), &args(&["SET", k, &i.to_string()]))
            .unwrap();
        assert_eq!(text(&r), "OK");
        // The value is on the slot's master itself.
        let port = owner_port(&cluster, key_slot(k.as_bytes()));
        assert_eq!(text(&cluster.client(port).cmd(&["GET", k])), i.to_string());
    }
    let mut asked: Vec<String> = keys.clone();
    asked.insert(1, "route:absent".into());
    let got = c.get_many_db0(&asked).unwrap();
    let want = vec![Some(b("0")), None, Some(b("1")), Some(b("2"))];
    assert_eq!(got, want);
    // A transaction returns EXEC's replies, errors included.
    let slot = key_slot(keys[0].as_bytes());
    let replies = c
        .transaction(
            slot,
            0,
            &[args(&["INCR", &keys[0]]), args(&["LPUSH", &keys[0], "x"])],
        )
        .unwrap();
    assert_eq!(replies[0], Reply::Integer(1));
    assert!(replies[1].is_error(), "{replies:?}");
    // Database 1 on a cluster without databases: refused, and nothing written to database 0.
    let err = c
        .call_key(1, b"route:db1", &args(&["SET", "route:db1", "x"]))
        .unwrap_err();
    assert!(matches!(err, ClusterError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("SELECT 1"), "{err}");
    assert_eq!(get_many(&mut c, "route:db1"), None);
    // Keyless: once on every master.
    c.call_on_every_master(0, &args(&["CONFIG", "SET", "hz", "11"]))
        .unwrap();
    for port in cluster.ports() {
        let hz = cluster.client(port).cmd(&["CONFIG", "GET", "hz"]);
        let want = if cluster.master_ports().contains(&port) {
            "11"
        } else {
            "10"
        };
        assert_eq!(
            hz,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b("hz"))),
                Reply::Bulk(Some(b(want)))
            ])),
            "{port}"
        );
    }
    // SCAN of every master finds the keys, each on its own master.
    let mut found = BTreeSet::new();
    for step in c.scan_all(0, Some(b"route:*".to_vec())) {
        let (node, ks) = step.unwrap();
        for k in ks {
            let k = String::from_utf8(k.to_vec()).unwrap();
            assert_eq!(owner_port(&cluster, key_slot(k.as_bytes())), node.port);
            found.insert(k);
        }
    }
    assert_eq!(found, keys.iter().cloned().collect());
}

/// `CLUSTER SETSLOT <slot> NODE <id>` on every master, the new owner first.
fn assign_slot(cluster: &RedisCluster, slot: u16, to: &str, order: &[u16]) {
    for &port in order {
        cluster
            .client(port)
            .cmd(&["CLUSTER", "SETSLOT", &slot.to_string(), "NODE", to]);
    }
}

// Long: one cluster walked through SETSLOT, a migration (ASK, TRYAGAIN, budget) and a reshard,
// in order, each step needing the state the last left.
#[test]
fn moved_ask_tryagain_and_a_reshard_are_followed() {
    let cluster = RedisCluster::start(3);
    let mut c = connect(&cluster);
    let view = cluster.view();
    let masters: Vec<_> = view
        .iter()
        .filter(|l| l.role == "master")
        .cloned()
        .collect();
    let (a, bn, cn) = (&masters[0], &masters[1], &masters[2]);
    let order = [bn.port, a.port, cn.port];
    // MOVED: an empty slot of A handed to B; the client's map still says A.
    let slot = a.slots[0].0;
    let key = format!("mv:{{{}}}", slot_tag(slot));
    assign_slot(&cluster, slot, &bn.id, &order);
    let r = c
        .call_key(0, key.as_bytes(), &args(&["SET", &key, "moved"]))
        .unwrap();
    assert_eq!(text(&r), "OK");
    assert_eq!(text(&cluster.client(bn.port).cmd(&["GET", &key])), "moved");
    assert_eq!(
        c.map().master_for(slot).unwrap().port,
        bn.port,
        "map read again"
    );

    // ASK: slot S2 migrating from A to B; keys absent on A are written on B.
    let s2 = a.slots[0].0 + 1;
    let old = format!("old:{{{}}}", slot_tag(s2));
    let (k1, k2) = (
        format!("n1:{{{}}}", slot_tag(s2)),
        format!("n2:{{{}}}", slot_tag(s2)),
    );
    c.call_key(0, old.as_bytes(), &args(&["SET", &old, "on-a"]))
        .unwrap();
    let s2t = s2.to_string();
    cluster
        .client(bn.port)
        .cmd(&["CLUSTER", "SETSLOT", &s2t, "IMPORTING", &a.id]);
    cluster
        .client(a.port)
        .cmd(&["CLUSTER", "SETSLOT", &s2t, "MIGRATING", &bn.id]);
    c.call_key(0, k1.as_bytes(), &args(&["SET", &k1, "asked"]))
        .unwrap();
    // A transaction whose key is absent on A: ASK at queue time, EXECABORT, resent to B.
    let tx = c.transaction(s2, 0, &[args(&["SET", &k2, "tx"])]).unwrap();
    assert_eq!(text(&tx[0]), "OK");
    let on_b = cluster
        .client(bn.port)
        .pipeline(&[vec!["ASKING"], vec!["MGET", &k1, &k2]]);
    assert_eq!(
        on_b[1],
        Reply::Array(Some(vec![
            Reply::Bulk(Some(b("asked"))),
            Reply::Bulk(Some(b("tx")))
        ]))
    );
    // Keys on both sides of the migration: TRYAGAIN until the budget is spent.
    c.set_budget(Duration::from_secs(2));
    let err = c
        .transaction(
            s2,
            0,
            &[args(&["SET", &old, "x"]), args(&["SET", &k1, "y"])],
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ClusterError::GaveUp { .. }), "{msg}");
    assert!(
        msg.contains(&format!("slot {s2}")) && msg.contains("MULTI"),
        "{msg}"
    );
    // Finish the migration: the same transaction goes through (MOVED to B).
    let bport = bn.port.to_string();
    cluster
        .client(a.port)
        .cmd(&["MIGRATE", "127.0.0.1", &bport, &old, "0", "5000"]);
    assign_slot(&cluster, s2, &bn.id, &order);
    c.set_budget(Duration::from_secs(30));
    c.transaction(
        s2,
        0,
        &[args(&["SET", &old, "x"]), args(&["SET", &k1, "y"])],
    )
    .unwrap();
    assert_eq!(text(&cluster.client(bn.port).cmd(&["GET", &old])), "x");

    // A real reshard of 50 slots from C to A, keys in C's first 200 slots written before.
    let mut written = Vec::new();
    for slot in (cn.slots[0].0..).take(200) {
        let k = format!("rs:{{{}}}", slot_tag(slot));
        c.call_key(0, k.as_bytes(), &args(&["SET", &k, "1"]))
            .unwrap();
        written.push((slot, k));
    }
    let out = std::process::Command::new(redis_cli_bin())
        .args(["--cluster", "reshard", &format!("127.0.0.1:{}", cn.port)])
        .args(["--cluster-from", &cn.id, "--cluster-to", &a.id])
        .args(["--cluster-slots", "50", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let moved: Vec<&(u16, String)> = written
        .iter()
        .filter(|(s, _)| owner_port(&cluster, *s) == a.port)
        .collect();
    assert!(
        !moved.is_empty(),
        "the reshard moved none of the slots written"
    );
    for (_, k) in &moved {
        let r = c.call_key(0, k.as_bytes(), &args(&["INCR", k])).unwrap();
        assert_eq!(r, Reply::Integer(2), "{k}");
        assert_eq!(text(&cluster.client(a.port).cmd(&["GET", k])), "2");
    }
}

/// A unit of `commands` (key argument indices in `keys`) with one part per slot, each with
/// its record when `records`.
fn unit(id: &str, commands: &[Vec<&str>], keys: &[Vec<usize>], records: bool) -> CrossSlot {
    let commands: Vec<Vec<Bytes>> = commands.iter().map(|c| args(c)).collect();
    let mut slots: Vec<u16> = commands
        .iter()
        .zip(keys)
        .flat_map(|(c, ps)| ps.iter().map(|&i| key_slot(&c[i])))
        .collect();
    slots.sort_unstable();
    slots.dedup();
    let parts = slots
        .into_iter()
        .map(|slot| SlotPart {
            slot,
            applied: false,
            record: records.then(|| Bookkeeping {
                key: b(&slot_key("t:", "src", slot, slot_tag(slot))),
                value: b(&format!("{id} 0 run 1")),
                transaction: true,
            }),
        })
        .collect();
    CrossSlot {
        db: 0,
        commands,
        key_positions: keys.to_vec(),
        end: 100,
        prefix: "t:".into(),
        source: format!("src-{id}"),
        id: format!("{id} 100"),
        parts,
    }
}

/// What a client sees of `key` without DUMP: its type, its value in a canonical form, and
/// whether it expires.
fn state(mut call: impl FnMut(&[&str]) -> Reply, key: &str) -> String {
    let ty = text(&call(&["TYPE", key]));
    let value = match ty.as_str() {
        "string" => text(&call(&["GET", key])),
        "list" => format!("{:?}", call(&["LRANGE", key, "0", "-1"])),
        "set" => {
            let Reply::Array(Some(mut m)) = call(&["SMEMBERS", key]) else {
                panic!("SMEMBERS {key}")
            };
            m.sort_by_key(text);
            format!("{m:?}")
        }
        "zset" => format!("{:?}", call(&["ZRANGE", key, "0", "-1", "WITHSCORES"])),
        "none" => String::new(),
        other => panic!("type {other} not compared"),
    };
    let ttl = call(&["PTTL", key]).as_int().unwrap();
    format!("{ty} {value} expires:{}", ttl > 0)
}

/// Run `setup` and the unit on a standalone server and on the cluster; the cluster must end
/// with the same state of every key of the unit, every part's record and no scratch key.
fn same_as_standalone(
    c: &mut ClusterClient,
    alone: &RedisServer,
    setup: &[Vec<&str>],
    u: &CrossSlot,
) -> cross_slot::CrossSlotOutcome {
    let mut s = alone.client();
    for cmd in setup {
        s.cmd(cmd);
        c.call_key(0, cmd[1].as_bytes(), &args(cmd)).unwrap();
    }
    let mut tx: Vec<Vec<&[u8]>> = vec![vec![b"MULTI"]];
    tx.extend(
        u.commands
            .iter()
            .map(|c| c.iter().map(|a| a.as_ref()).collect::<Vec<&[u8]>>()),
    );
    tx.push(vec![b"EXEC"]);
    s.pipeline(&tx);
    let outcome = cross_slot::run(c, u).unwrap();
    let keys: BTreeSet<String> = u
        .commands
        .iter()
        .zip(&u.key_positions)
        .flat_map(|(c, ps)| {
            ps.iter()
                .map(|&i| String::from_utf8(c[i].to_vec()).unwrap())
        })
        .collect();
    for k in &keys {
        let there = state(|a| c.call_key(0, k.as_bytes(), &args(a)).unwrap(), k);
        let here = state(|a| s.cmd(a), k);
        assert_eq!(there, here, "{k} after {:?}", u.commands);
    }
    for p in &u.parts {
        let rec = p.record.as_ref().unwrap();
        let key = String::from_utf8(rec.key.to_vec()).unwrap();
        assert_eq!(
            c.get_many_db0(&[key]).unwrap(),
            vec![Some(rec.value.clone())]
        );
    }
    let journal = format!("{{t:xslot:{}}}:j", u.source);
    let k0 = format!("{{t:xslot:{}}}:k0", u.source);
    let left = c
        .call_key(0, journal.as_bytes(), &args(&["EXISTS", &journal, &k0]))
        .unwrap();
    assert_eq!(left, Reply::Integer(0), "scratch keys left");
    assert_eq!(outcome.parts_written, u.parts.len());
    outcome
}

/// A unit to compare: name, setup commands, the unit's commands, their key positions.
type Case<'a> = (
    &'a str,
    Vec<Vec<&'a str>>,
    Vec<Vec<&'a str>>,
    Vec<Vec<usize>>,
);

// Long: one table of units (setup, commands, key positions), each compared in turn.
#[test]
fn cross_slot_units_end_as_on_a_standalone_server() {
    let cluster = RedisCluster::start(3);
    let alone = RedisServer::start(&[]);
    let mut c = connect(&cluster);
    let cases: Vec<Case> = vec![
        (
            "rename",
            vec![
                vec!["SET", "xr:a", "1"],
                vec!["PEXPIRE", "xr:a", "100000"],
                vec!["SET", "xr:b", "old"],
            ],
            vec![vec!["RENAME", "xr:a", "xr:b"]],
            vec![vec![1, 2]],
        ),
        (
            "sunionstore",
            vec![
                vec!["SADD", "xs:1", "x", "y"],
                vec!["SADD", "xs:2", "y", "z"],
                vec!["SET", "xs:d", "old"],
            ],
            vec![vec!["SUNIONSTORE", "xs:d", "xs:1", "xs:2"]],
            vec![vec![1, 2, 3]],
        ),
        (
            "lmove",
            vec![
                vec!["RPUSH", "xl:1", "a", "b", "c"],
                vec!["RPUSH", "xl:2", "z"],
            ],
            vec![
                vec!["LMOVE", "xl:1", "xl:2", "LEFT", "RIGHT"],
                vec!["BLMOVE", "xl:2", "xl:1", "RIGHT", "LEFT", "0"],
            ],
            vec![vec![1, 2], vec![1, 2]],
        ),
        (
            "msetnx",
            vec![vec!["SET", "xm:2", "there"]],
            vec![
                vec!["MSETNX", "xm:1", "1", "xm:2", "2"],
                vec!["MSETNX", "xm:3", "3", "xm:4", "4"],
            ],
            vec![vec![1, 3], vec![1, 3]],
        ),
        (
            "transaction",
            vec![vec!["SET", "xt:a", "5"], vec!["RPUSH", "xt:b", "w"]],
            vec![
                vec!["SELECT", "0"],
                vec!["INCR", "xt:a"],
                vec!["RPUSH", "xt:b", "x"],
                vec!["LPUSH", "xt:a", "wrongtype"],
                vec!["ZADD", "xt:z", "1", "m"],
            ],
            vec![vec![], vec![1], vec![1], vec![1], vec![1]],
        ),
    ];
    for (name, setup, commands, keys) in cases {
        let u = unit(name, &commands, &keys, true);
        assert!(u.parts.len() >= 2, "{name}: keys in one slot only");
        let outcome = same_as_standalone(&mut c, &alone, &setup, &u);
        let errors = usize::from(name == "transaction");
        assert_eq!(outcome.command_errors, errors, "{name}");
        assert!(!outcome.resumed);
    }
}

fn get(c: &mut ClusterClient, key: &str) -> Reply {
    c.call_key(0, key.as_bytes(), &args(&["GET", key])).unwrap()
}

#[test]
fn an_interrupted_unit_writes_each_part_once() {
    let cluster = RedisCluster::start(3);
    let mut c = connect(&cluster);
    let ks = keys_on_masters(&c, "once:", 3);
    for k in &ks {
        c.call_key(0, k.as_bytes(), &args(&["SET", k, "10"]))
            .unwrap();
    }
    let commands = vec![vec!["INCR", ks[0].as_str()], vec!["INCR", ks[1].as_str()]];
    let u = unit("once", &commands, &[vec![1], vec![1]], true);
    // Computed, then "crashed" before the write-back: nothing visible yet.
    let first = cross_slot::prepare(&mut c, &u).unwrap();
    assert!(!first.resumed);
    assert_eq!(get(&mut c, &ks[0]), Reply::Bulk(Some(b("10"))));
    // Computed again: the journal says it was, the INCR does not run twice.
    assert!(cross_slot::prepare(&mut c, &u).unwrap().resumed);
    let outcome = cross_slot::run(&mut c, &u).unwrap();
    assert!(outcome.resumed);
    assert_eq!((outcome.parts_written, outcome.parts_skipped), (2, 0));
    assert_eq!(get(&mut c, &ks[0]), Reply::Bulk(Some(b("11"))));
    assert_eq!(get(&mut c, &ks[1]), Reply::Bulk(Some(b("11"))));
    // Run again after a restart that found both records: nothing written.
    let mut done = u.clone();
    done.parts.iter_mut().for_each(|p| p.applied = true);
    let again = cross_slot::run(&mut c, &done).unwrap();
    assert_eq!((again.parts_written, again.parts_skipped), (0, 2));
    assert_eq!(get(&mut c, &ks[0]), Reply::Bulk(Some(b("11"))));

    // A crash during the write-back: one part's record is there, the other's is not.
    let commands = vec![vec!["INCR", ks[1].as_str()], vec!["INCR", ks[2].as_str()]];
    let mut u2 = unit("half", &commands, &[vec![1], vec![1]], true);
    cross_slot::prepare(&mut c, &u2).unwrap();
    let first_slot = key_slot(ks[1].as_bytes());
    for p in &mut u2.parts {
        p.applied = p.slot == first_slot;
    }
    let outcome = cross_slot::run(&mut c, &u2).unwrap();
    assert_eq!((outcome.parts_written, outcome.parts_skipped), (1, 1));
    // The applied part is not written again (here it shows as not written at all).
    assert_eq!(get(&mut c, &ks[1]), Reply::Bulk(Some(b("11"))));
    assert_eq!(get(&mut c, &ks[2]), Reply::Bulk(Some(b("11"))));

    // Applied parts with no journal: recomputing would apply the unit twice there.
    let mut u3 = unit("lost", &commands, &[vec![1], vec![1]], true);
    u3.parts[0].applied = true;
    let err = cross_slot::run(&mut c, &u3).unwrap_err();
    assert!(err.to_string().contains("cannot recompute"), "{err}");
    assert_eq!(get(&mut c, &ks[2]), Reply::Bulk(Some(b("11"))));
}

#[test]
fn a_write_waits_out_a_master_failover() {
    let mut cluster = RedisCluster::start(3);
    let mut c = connect(&cluster);
    let key = keys_on_masters(&c, "fo:", 3).pop().unwrap();
    let slot = key_slot(key.as_bytes());
    let old = owner_port(&cluster, slot);
    assert_ne!(old, cluster.ports()[0], "the seed stays up");
    c.call_key(0, key.as_bytes(), &args(&["SET", &key, "before"]))
        .unwrap();
    // Let the replica catch up, then stop the master: its replica is promoted after
    // cluster-node-timeout (5 s) and the election. The master is gone before the APPEND is
    // sent, so no attempt is ambiguous (APPEND is not safe to resend otherwise).
    std::thread::sleep(Duration::from_secs(1));
    let at = cluster.nodes.iter().position(|n| n.port == old).unwrap();
    drop(cluster.nodes.remove(at));
    let r = c
        .call_key(0, key.as_bytes(), &args(&["APPEND", &key, "+after"]))
        .unwrap();
    assert_eq!(r, Reply::Integer("before+after".len() as i64));
    let new = c.map().master_for(slot).unwrap().port;
    assert_ne!(new, old);
    assert_eq!(
        text(&cluster.client(new).cmd(&["GET", &key])),
        "before+after"
    );
}
