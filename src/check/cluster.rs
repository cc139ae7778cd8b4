//! Prechecks of a Redis Cluster target. One server's checks do not describe a cluster: the
//! seed may be a replica, every master holds only its slots' keys, and a slot without an
//! online master refuses every write to it. So the cluster is read from its slot map, and
//! each online master is connected with the seed's login (the nodes share their users) and
//! checked on its own: role, `cluster_state`, eviction policy, version, and memory for the
//! share of the sources' data its slots will take (estimated from a sample of the sources'
//! keys). Databases other than 0 exist on a cluster only where the server allows them
//! (Valkey 9's `cluster-databases`), and the relay's key prefix must not contain a brace
//! (its record keys carry a hash tag after it).
//!
//! Lines about the whole cluster have the subject `target cluster <seed>`, lines about one
//! master `target node <host:port>`.

use std::collections::BTreeMap;
use std::io::Write;

use bytes::BytesMut;

use super::probe::{self, human_bytes, Info};
use super::{
    check_eviction, connect_and_info, count_own_keys, int, judge_field_ttls, judge_not_empty,
    judge_room_for, judge_shared_target, judge_target_version, logged_in, CheckOptions, Lines,
    SourceFacts, Status, Verdict,
};
use crate::pipeline::field_ttl::UnsupportedPolicy;
use crate::resp::{encode_command, Client, Reply};
use crate::source::topology::Topology;
use crate::target::cluster::topology::{MapSource, Node};
use crate::target::cluster::{key_slot, SlotMap, SLOTS};
use crate::target::info::ServerVersion;

/// Keys sampled from the sources (all together) to estimate each master's share.
const SAMPLE_KEYS: usize = 1000;

/// An online master that answered, with what it said.
struct Master {
    node: Node,
    subject: String,
    conn: Client,
    info: Info,
    /// How many slots it serves.
    slots: usize,
}

/// Every cluster line: the prefix, the slot map and its coverage, then per master, then the
/// databases, memory per shard and emptiness over all masters.
pub(super) fn check_cluster(
    opts: &CheckOptions,
    sources: &[SourceFacts],
    resuming: bool,
    shared: Option<&Topology>,
    lines: &mut Lines,
) {
    let subject = format!("target cluster {}", opts.target);
    lines.verdict(&subject, "prefix", judge_prefix(&opts.own_prefix));
    let Some(map) = discover(opts, &subject, lines) else {
        return;
    };
    lines.verdict(&subject, "slots", judge_coverage(&map));
    let mut masters = connect_masters(&map, opts, lines);
    let versions: Vec<ServerVersion> = sources.iter().map(|s| s.version.clone()).collect();
    for m in &mut masters {
        check_master(m, opts, &versions, lines);
    }
    let nodes: Vec<ServerVersion> = masters.iter().map(|m| version_of(&m.info)).collect();
    let field_ttl_keys = sources.iter().map(|s| s.field_ttl_keys).sum();
    if let Some(v) = judge_field_ttls_on(field_ttl_keys, &nodes, opts.on_unsupported_type) {
        lines.verdict(&subject, "field-ttl", v);
    }
    let cluster_dbs = cluster_databases(&mut masters);
    lines.verdict(
        &subject,
        "databases",
        judge_databases(&copied_dbs(opts, sources), cluster_dbs),
    );
    check_memory(opts, sources, &map, &masters, lines);
    check_empty(opts, &mut masters, resuming, shared, &subject, lines);
}

fn version_of(info: &Info) -> ServerVersion {
    ServerVersion::new(info.get("redis_version"), info.get("valkey_version"))
}

/// [`judge_field_ttls`] for a cluster: every master must hold hash field TTLs, since a key
/// with them may land on any slot; the line names the first master version that cannot.
pub fn judge_field_ttls_on(
    keys: u64,
    masters: &[ServerVersion],
    policy: UnsupportedPolicy,
) -> Option<Verdict> {
    let without: Vec<&ServerVersion> = masters.iter().filter(|v| !v.has_field_ttl()).collect();
    let first = without.first()?;
    let mut v = judge_field_ttls(keys, first, policy)?;
    v.message = format!(
        "{} of {} masters of the cluster cannot hold them: {}",
        without.len(),
        masters.len(),
        v.message
    );
    Some(v)
}

/// The relay's record keys on a cluster are `PREFIX...{TAG}...`: a brace in the prefix would
/// make part of the prefix the hash tag, and every record would land in one slot.
pub fn judge_prefix(prefix: &str) -> Verdict {
    if prefix.contains(['{', '}']) {
        Verdict::fail(
            format!("the key prefix {prefix:?} contains a brace: on a cluster the relay's record keys carry a hash tag {{TAG}} after the prefix to live in the slot of their data, and a brace in the prefix would take the tag's place"),
            "choose a --key-prefix without `{` and `}`".into(),
        )
    } else {
        Verdict::pass(format!(
            "key prefix {prefix:?} has no brace: record keys can carry a hash tag"
        ))
    }
}

/// The slot map from the seeds (`--target` first); a failed line when no seed gives one.
fn discover(opts: &CheckOptions, subject: &str, lines: &mut Lines) -> Option<SlotMap> {
    let mut seeds = vec![opts.target.clone()];
    seeds.extend(opts.target_seeds.iter().cloned());
    match SlotMap::discover(&seeds, opts.timeout) {
        Ok(map) => {
            let masters = map.masters().len();
            let replicas = map.nodes().len() - masters;
            lines.add(
                Status::Pass,
                subject,
                "topology",
                format!(
                    "a Redis Cluster of {masters} masters and {replicas} replicas (read with {})",
                    match map.source() {
                        MapSource::Shards => "CLUSTER SHARDS",
                        MapSource::Slots => "CLUSTER SLOTS",
                    }
                ),
                None,
            );
            Some(map)
        }
        Err(e) => {
            lines.add(
                Status::Fail,
                subject,
                "topology",
                format!("cannot read the cluster's slot map: {e}"),
                Some("give nodes of the cluster as --target (several seeds may be given), and allow CLUSTER SHARDS or CLUSTER SLOTS for the user".into()),
            );
            None
        }
    }
}

/// Every slot needs an online master: a write to a slot without one is refused
/// (`CLUSTERDOWN Hash slot not served`).
pub fn judge_coverage(map: &SlotMap) -> Verdict {
    let uncovered = map.uncovered_slots();
    if uncovered.is_empty() {
        return Verdict::pass(format!("all {SLOTS} slots are served by an online master"));
    }
    let count: usize = uncovered.iter().map(|r| r.len()).sum();
    let ranges: Vec<String> = uncovered
        .iter()
        .map(|r| {
            if r.start() == r.end() {
                r.start().to_string()
            } else {
                format!("{}-{}", r.start(), r.end())
            }
        })
        .collect();
    Verdict::fail(
        format!("{count} of {SLOTS} slots have no online master: {}; writes of keys in them are refused (CLUSTERDOWN)", ranges.join(", ")),
        "assign the slots to a master (redis-cli --cluster fix HOST:PORT, or CLUSTER ADDSLOTSRANGE) or bring their master back, and wait for cluster_state:ok".into(),
    )
}

/// Connect and log in to every online master (the seed's user and password); a failed line
/// for each that cannot be used.
fn connect_masters(map: &SlotMap, opts: &CheckOptions, lines: &mut Lines) -> Vec<Master> {
    let mut slots: BTreeMap<&str, usize> = BTreeMap::new();
    for slot in 0..SLOTS as u16 {
        if let Some(n) = map.master_for(slot) {
            *slots.entry(n.id.as_str()).or_default() += 1;
        }
    }
    let info_fix = "the relay needs INFO on every master of the cluster";
    let mut out = Vec::new();
    for node in map.masters().into_iter().filter(|n| n.is_online_master()) {
        let subject = format!("target node {}", node.addr());
        let ep = node.endpoint(&opts.target);
        if let Some((conn, info)) = connect_and_info(&ep, "target", &subject, info_fix, opts, lines)
        {
            out.push(Master {
                slots: slots.get(node.id.as_str()).copied().unwrap_or(0),
                node: node.clone(),
                subject,
                conn,
                info,
            });
        }
    }
    out
}

/// One master: reachable, really a master, sees the cluster up, never evicts, new enough.
fn check_master(
    m: &mut Master,
    opts: &CheckOptions,
    versions: &[ServerVersion],
    lines: &mut Lines,
) {
    let version = version_of(&m.info);
    let role = m.info.get("role").cloned().unwrap_or_else(|| "?".into());
    lines.add(
        Status::Pass,
        &m.subject,
        "reachable",
        format!(
            "{}{version}, role {role}, serves {} slots",
            logged_in(&opts.target),
            m.slots
        ),
        None,
    );
    if role != "master" {
        lines.add(
            Status::Fail,
            &m.subject,
            "writable",
            format!("the slot map lists it as a master, but it says role {role}: it refuses writes (a failover in progress?)"),
            Some("wait for the failover to finish (redis-cli --cluster check HOST:PORT) and run the check again".into()),
        );
    }
    let state = cluster_state(&mut m.conn);
    lines.verdict(&m.subject, "state", judge_state(state));
    check_eviction(&mut m.conn, opts, &m.subject, &m.info, lines);
    let ep = m.node.endpoint(&opts.target);
    let probes = super::acl::target_probes(&opts.own_prefix);
    super::check_acl(&ep, &m.subject, &probes, opts.timeout, lines);
    lines.verdict(
        &m.subject,
        "version",
        judge_target_version(versions, &version),
    );
}

/// `cluster_state` from `CLUSTER INFO`, or why it could not be read.
fn cluster_state(conn: &mut Client) -> Result<String, String> {
    match conn.call(&["CLUSTER", "INFO"]) {
        Ok(Reply::Error(e)) => Err(format!(
            "CLUSTER INFO refused: {}",
            String::from_utf8_lossy(&e)
        )),
        Ok(r) => crate::resp::client::info_field(&r.as_text().unwrap_or_default(), "cluster_state")
            .ok_or_else(|| "CLUSTER INFO has no cluster_state".into()),
        Err(e) => Err(format!("CLUSTER INFO failed: {e}")),
    }
}

/// A master that sees the cluster down refuses writes (`CLUSTERDOWN`).
pub fn judge_state(state: Result<String, String>) -> Verdict {
    match state {
        Ok(s) if s == "ok" => Verdict::pass("cluster_state:ok".into()),
        Ok(s) => Verdict::fail(
            format!("cluster_state:{s}: this master sees the cluster down and refuses writes (CLUSTERDOWN)"),
            "find what is wrong with redis-cli --cluster check HOST:PORT (slots not served, nodes failed) and fix it".into(),
        ),
        Err(e) => Verdict::warn(
            format!("cannot read cluster_state: {e}"),
            "allow CLUSTER INFO for the user, or make sure the cluster says cluster_state:ok".into(),
        ),
    }
}

/// `cluster-databases` (Valkey 9): how many databases the cluster has; 1 where the parameter
/// does not exist or cannot be read.
fn cluster_databases(masters: &mut [Master]) -> u32 {
    masters
        .first_mut()
        .and_then(|m| probe::config_get(&mut m.conn, "cluster-databases").ok())
        .and_then(Result::ok)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1)
}

/// The target database source database `db` is written to, `None` when it is not copied
/// (`--db`, `--db-map`; `target_dbs` as the command line gives it without the filter).
fn target_db(opts: &CheckOptions, db: u32) -> Option<u32> {
    let written = |t: &u32| opts.target_dbs.as_ref().is_none_or(|d| d.contains(t));
    opts.db_filter.map_db(db).filter(written)
}

/// Source databases with keys that are copied, by the target database they go to.
fn copied_dbs(opts: &CheckOptions, sources: &[SourceFacts]) -> BTreeMap<u32, Vec<u32>> {
    let mut out: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for s in sources {
        for (&db, &n) in &s.keys {
            if let Some(t) = target_db(opts, db).filter(|_| n > 0) {
                let v = out.entry(t).or_default();
                if !v.contains(&db) {
                    v.push(db);
                }
            }
        }
    }
    out
}

/// A Redis Cluster has db 0 only (`SELECT 1` is refused), unless it has `cluster-databases`
/// above 1. `copied`: target database to the source databases written into it.
pub fn judge_databases(copied: &BTreeMap<u32, Vec<u32>>, cluster_dbs: u32) -> Verdict {
    let beyond: Vec<(u32, &Vec<u32>)> = copied
        .iter()
        .filter(|(t, _)| **t >= cluster_dbs.max(1))
        .map(|(t, s)| (*t, s))
        .collect();
    let describe = |list: &[(u32, &Vec<u32>)]| {
        list.iter()
            .map(|(t, s)| {
                let s: Vec<String> = s.iter().map(|d| format!("db{d}")).collect();
                format!("{} -> db{t}", s.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if beyond.is_empty() {
        let all: Vec<(u32, &Vec<u32>)> = copied.iter().map(|(t, s)| (*t, s)).collect();
        let what = if all.is_empty() {
            "no keys to copy".to_string()
        } else {
            describe(&all)
        };
        return Verdict::pass(format!(
            "{what}: within the cluster's {} database(s)",
            cluster_dbs.max(1)
        ));
    }
    let maps: Vec<String> = beyond
        .iter()
        .flat_map(|(_, s)| s.iter().map(|d| format!("--db-map {d}:0")))
        .collect();
    Verdict::fail(
        format!("the sources have keys that would go to databases the cluster does not have ({}); the cluster has {} database(s) (cluster-databases), so SELECT of them is refused", describe(&beyond), cluster_dbs.max(1)),
        format!("write them into db 0 with {} (keys of the same name in two databases then collide), copy fewer databases (--db 0), or use a cluster with more databases (Valkey 9: cluster-databases)", maps.join(" ")),
    )
}

/// Memory per master against its share of the sources' data: from a sample of the sources'
/// keys when one can be taken, else from the share of slots it serves.
fn check_memory(
    opts: &CheckOptions,
    sources: &[SourceFacts],
    map: &SlotMap,
    masters: &[Master],
    lines: &mut Lines,
) {
    let total: u64 = sources.iter().map(|s| s.used).sum();
    let sample = sample_slots(opts, sources);
    for m in masters {
        let (share, how) = match &sample {
            Some(slots) => (
                slots
                    .iter()
                    .filter(|s| map.master_for(**s).is_some_and(|n| n.id == m.node.id))
                    .count() as f64
                    / slots.len() as f64,
                format!("{} sampled keys", slots.len()),
            ),
            None => (
                m.slots as f64 / SLOTS as f64,
                format!("{} of {SLOTS} slots, no key sampled", m.slots),
            ),
        };
        let need = (total as f64 * share) as u64;
        let what = format!(
            "its slots take about {:.0}% of the sources' {} (by {how}):",
            share * 100.0,
            human_bytes(total)
        );
        let v = judge_room_for(
            &what,
            int(&m.info, "maxmemory").unwrap_or(0),
            int(&m.info, "used_memory").unwrap_or(0),
            int(&m.info, "total_system_memory").unwrap_or(0),
            need,
        );
        lines.verdict(&m.subject, "memory", v);
    }
}

/// The slots of up to [`SAMPLE_KEYS`] random keys of the sources (spread over sources and
/// copied databases by their key counts); `None` when no key could be sampled.
fn sample_slots(opts: &CheckOptions, sources: &[SourceFacts]) -> Option<Vec<u16>> {
    let copied = |s: &SourceFacts| -> Vec<(u32, u64)> {
        s.keys
            .iter()
            .filter(|(db, n)| **n > 0 && target_db(opts, **db).is_some())
            .map(|(db, n)| (*db, *n))
            .collect()
    };
    let total: u64 = sources.iter().flat_map(copied).map(|(_, n)| n).sum();
    let mut slots = Vec::new();
    for s in sources {
        let Ok(mut conn) = probe::connect(&s.endpoint, opts.timeout, "source") else {
            continue;
        };
        for (db, n) in copied(s) {
            let want = (SAMPLE_KEYS as u128 * n as u128).div_ceil(total.max(1) as u128) as usize;
            if let Ok(keys) = random_keys(&mut conn, db, want) {
                slots.extend(keys.iter().map(|k| key_slot(k)));
            }
        }
    }
    (!slots.is_empty()).then_some(slots)
}

/// `n` pipelined `RANDOMKEY`s in `db` (repeats kept: they weigh as often as drawn).
fn random_keys(conn: &mut Client, db: u32, n: usize) -> std::io::Result<Vec<bytes::Bytes>> {
    if conn.call(&["SELECT", &db.to_string()])?.is_error() {
        return Ok(Vec::new());
    }
    let mut out = BytesMut::new();
    for _ in 0..n {
        encode_command(&mut out, &["RANDOMKEY"]);
    }
    conn.stream.write_all(&out)?;
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        if let Reply::Bulk(Some(k)) = conn.read_reply()? {
            keys.push(k);
        }
    }
    Ok(keys)
}

/// The target databases hold keys already: over every master together (a shared target:
/// per master, whose keys they are).
fn check_empty(
    opts: &CheckOptions,
    masters: &mut [Master],
    resuming: bool,
    shared: Option<&Topology>,
    subject: &str,
    lines: &mut Lines,
) {
    let mut total: BTreeMap<u32, u64> = BTreeMap::new();
    for m in masters.iter_mut() {
        let mut keys = probe::keyspace(&m.info);
        if let Some(dbs) = &opts.target_dbs {
            keys.retain(|db, _| dbs.contains(db));
        }
        if let Some(t) = shared {
            let v = judge_shared_target(&mut m.conn, opts, &keys, t, resuming);
            lines.verdict(&m.subject, "empty", v);
            continue;
        }
        for (db, n) in keys {
            // The relay's own keys (heartbeat, markers) do not count.
            let own = if n > 0 && n <= 1000 {
                count_own_keys(&mut m.conn, db, &opts.own_prefix)
            } else {
                0
            };
            *total.entry(db).or_default() += n.saturating_sub(own);
        }
    }
    if shared.is_none() {
        lines.verdict(
            subject,
            "empty",
            judge_not_empty(&total, opts.if_target_not_empty, resuming),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_in_the_prefix_fail() {
        assert_eq!(judge_prefix("redis-relay:").status, Status::Pass);
        assert_eq!(judge_prefix("relay{x}:").status, Status::Fail);
        assert_eq!(judge_prefix("relay}").status, Status::Fail);
    }

    #[test]
    fn databases_beyond_the_cluster() {
        let mut m = BTreeMap::new();
        m.insert(0, vec![0, 1]);
        assert_eq!(judge_databases(&m, 1).status, Status::Pass);
        m.insert(3, vec![3]);
        let v = judge_databases(&m, 1);
        assert_eq!(v.status, Status::Fail);
        assert!(v.message.contains("db3 -> db3"), "{v:?}");
        assert!(v.fix.unwrap().contains("--db-map 3:0"));
        assert_eq!(judge_databases(&m, 16).status, Status::Pass);
        assert_eq!(judge_databases(&m, 3).status, Status::Fail);
        assert_eq!(judge_databases(&BTreeMap::new(), 1).status, Status::Pass);
    }

    #[test]
    fn field_ttls_need_every_master() {
        let v = |r: &str, k: Option<&str>| {
            ServerVersion::new(Some(&r.to_string()), k.map(str::to_string).as_ref())
        };
        let new = [v("8.0.2", None), v("7.2.4", Some("9.1.2"))];
        let stop = UnsupportedPolicy::Stop;
        assert!(judge_field_ttls_on(5, &new, stop).is_none());
        let mixed = [
            v("8.0.2", None),
            v("7.0.15", None),
            v("7.2.4", Some("8.1.1")),
        ];
        let f = judge_field_ttls_on(5, &mixed, stop).unwrap();
        assert_eq!(f.status, Status::Fail);
        assert!(f.message.starts_with("2 of 3 masters"), "{f:?}");
        assert!(f.message.contains("7.0.15"), "{f:?}");
        let w = judge_field_ttls_on(5, &mixed, UnsupportedPolicy::DropTtl).unwrap();
        assert_eq!(w.status, Status::Warn);
        assert!(judge_field_ttls_on(0, &mixed, stop).is_none());
    }

    #[test]
    fn state() {
        assert_eq!(judge_state(Ok("ok".into())).status, Status::Pass);
        assert_eq!(judge_state(Ok("fail".into())).status, Status::Fail);
        assert_eq!(judge_state(Err("x".into())).status, Status::Warn);
    }
}
