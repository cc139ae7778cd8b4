//! The cluster's slot map: which master serves each of the 16384 hash slots, and the cluster's
//! nodes (replicas are known but never chosen for writes).
//!
//! Read from `CLUSTER SHARDS` (Redis 7.0+), or `CLUSTER SLOTS` when a server refuses SHARDS
//! (older servers, or an ACL without it). Parsing is pure ([`parse_shards`], [`parse_slots`])
//! and takes RESP2 replies, the only protocol the relay's client speaks.
//!
//! A node's address is its `endpoint` field, what the server tells clients to use (the IP, the
//! hostname or something else by `cluster-preferred-endpoint-type`), with two special values:
//! `?` (hostname preferred but none announced: the node's `ip` is used) and an empty or null
//! endpoint (`unknown-endpoint`: the host the command was sent to, with the node's port).

use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use super::slot::SLOTS;
use crate::endpoint::Endpoint;
use crate::resp::{Client, ClientError, Reply};

/// A node's role in its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    Replica,
}

/// A node's health as the answering node sees it (`CLUSTER SHARDS`'s `health`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Online,
    Failed,
    Loading,
    /// A value this code does not know (kept for messages).
    Other(String),
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The 40-character node id (`host:port` when an old `CLUSTER SLOTS` gives none).
    pub id: String,
    /// Where clients reach it (see the module doc for `?` and empty endpoints).
    pub host: String,
    /// Its plain (non-TLS) client port.
    pub port: u16,
    pub role: Role,
    pub health: Health,
}

impl Node {
    /// `host:port` (brackets around an IPv6 literal).
    pub fn addr(&self) -> String {
        Endpoint::new(self.host.clone(), self.port).to_string()
    }

    /// This node's address with the login of `login` (the nodes of a cluster share their
    /// users and passwords).
    pub fn endpoint(&self, login: &Endpoint) -> Endpoint {
        Endpoint {
            host: self.host.clone(),
            port: self.port,
            username: login.username.clone(),
            password: login.password.clone(),
            db: None,
            tls: login.tls.clone(),
        }
    }

    /// A master that answers: the only kind of node writes go to.
    pub fn is_online_master(&self) -> bool {
        self.role == Role::Master && self.health == Health::Online
    }
}

/// Which command a [`SlotMap`] was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapSource {
    Shards,
    Slots,
}

/// Every slot's master, and every node the answering server knows.
#[derive(Debug, Clone)]
pub struct SlotMap {
    nodes: Vec<Node>,
    /// Per slot, the index in `nodes` of the master of the shard serving it.
    owners: Vec<Option<u16>>,
    source: MapSource,
}

impl SlotMap {
    /// Ask each seed in turn for the slot map; the first that answers gives it (it may still
    /// have [`SlotMap::uncovered_slots`]). Fails naming every seed and what went wrong.
    pub fn discover(seeds: &[Endpoint], timeout: Duration) -> Result<SlotMap, TopologyError> {
        if seeds.is_empty() {
            return Err(TopologyError::NoSeed);
        }
        let mut failures = Vec::new();
        for seed in seeds {
            match from_seed(seed, timeout) {
                Ok(map) => return Ok(map),
                Err(e) => {
                    tracing::debug!(seed = %seed, error = %e, "no slot map from this seed");
                    failures.push(e);
                }
            }
        }
        Err(TopologyError::NoAnswer(SeedErrors(failures)))
    }

    /// The online master serving `slot`, if any. Panics when `slot` is not below 16384.
    pub fn master_for(&self, slot: u16) -> Option<&Node> {
        self.owners[slot as usize]
            .map(|i| &self.nodes[i as usize])
            .filter(|n| n.is_online_master())
    }

    /// The masters, online or not, with or without slots, in the order the server listed them.
    pub fn masters(&self) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Master)
            .collect()
    }

    /// Every node, replicas included.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The ranges of slots with no online master (no owner, or its master failed or loading).
    pub fn uncovered_slots(&self) -> Vec<RangeInclusive<u16>> {
        let mut out: Vec<RangeInclusive<u16>> = Vec::new();
        for slot in 0..SLOTS as u16 {
            if self.master_for(slot).is_some() {
                continue;
            }
            match out.last_mut() {
                Some(r) if *r.end() + 1 == slot => *r = *r.start()..=slot,
                _ => out.push(slot..=slot),
            }
        }
        out
    }

    /// The command the map was read from.
    pub fn source(&self) -> MapSource {
        self.source
    }
}

/// Why no slot map could be read.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("no seed to discover the cluster from: give at least one target address")]
    NoSeed,
    #[error("no seed gave a slot map: {0}")]
    NoAnswer(SeedErrors),
}

/// The failures of every seed tried, in order.
#[derive(Debug)]
pub struct SeedErrors(pub Vec<SeedError>);

impl fmt::Display for SeedErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Why one seed gave no slot map; each names the seed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// Not reachable, or the login was refused (the message names the seed).
    #[error(transparent)]
    Connect(#[from] ClientError),
    #[error("seed {seed}: {command} failed: {cause}")]
    Io {
        seed: String,
        command: &'static str,
        cause: std::io::Error,
    },
    #[error("seed {seed}: CLUSTER SHARDS refused ({shards}) and CLUSTER SLOTS refused ({slots})")]
    Refused {
        seed: String,
        shards: String,
        slots: String,
    },
    #[error("seed {seed}: unexpected {command} reply: {cause}")]
    Reply {
        seed: String,
        command: &'static str,
        cause: ParseError,
    },
}

/// What is wrong with a `CLUSTER SHARDS` or `CLUSTER SLOTS` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("expected {what}, got {got}")]
    Shape { what: &'static str, got: String },
    #[error("{what} has no {field:?}")]
    Missing {
        what: &'static str,
        field: &'static str,
    },
    #[error("slot range {start}-{end} is not within 0-16383")]
    SlotRange { start: i64, end: i64 },
    #[error("slot {slot} is served by both {first} and {second}")]
    Conflict {
        slot: u16,
        first: String,
        second: String,
    },
    #[error("node {id}: {reason}")]
    Node { id: String, reason: String },
}

/// One seed: connect, ask SHARDS, else SLOTS.
fn from_seed(seed: &Endpoint, timeout: Duration) -> Result<SlotMap, SeedError> {
    let mut conn = Client::connect(seed, timeout)?;
    let _ = conn.stream.set_read_timeout(Some(timeout));
    let _ = conn.stream.set_write_timeout(Some(timeout));
    let call = |conn: &mut Client, command: &'static str| {
        let args: Vec<&str> = command.split(' ').collect();
        conn.call(&args).map_err(|cause| SeedError::Io {
            seed: seed.to_string(),
            command,
            cause,
        })
    };
    let parsed = |command, r: Result<SlotMap, ParseError>| {
        r.map_err(|cause| SeedError::Reply {
            seed: seed.to_string(),
            command,
            cause,
        })
    };
    let shards = match call(&mut conn, "CLUSTER SHARDS")? {
        Reply::Error(e) => String::from_utf8_lossy(&e).into_owned(),
        reply => return parsed("CLUSTER SHARDS", parse_shards(&reply, &seed.host)),
    };
    match call(&mut conn, "CLUSTER SLOTS")? {
        Reply::Error(e) => Err(SeedError::Refused {
            seed: seed.to_string(),
            shards,
            slots: String::from_utf8_lossy(&e).into_owned(),
        }),
        reply => parsed("CLUSTER SLOTS", parse_slots(&reply, &seed.host)),
    }
}

/// Nodes and slot owners as they are read.
struct Builder {
    nodes: Vec<Node>,
    owners: Vec<Option<u16>>,
}

impl Builder {
    fn new() -> Self {
        Builder {
            nodes: Vec::new(),
            owners: vec![None; SLOTS],
        }
    }

    /// The node's index, adding it when its id is new.
    fn add(&mut self, node: Node) -> u16 {
        if let Some(i) = self.nodes.iter().position(|n| n.id == node.id) {
            return i as u16;
        }
        self.nodes.push(node);
        (self.nodes.len() - 1) as u16
    }

    fn assign(&mut self, start: i64, end: i64, owner: u16) -> Result<(), ParseError> {
        if start < 0 || end < start || end >= SLOTS as i64 {
            return Err(ParseError::SlotRange { start, end });
        }
        for slot in start as usize..=end as usize {
            match self.owners[slot] {
                Some(o) if o != owner => {
                    return Err(ParseError::Conflict {
                        slot: slot as u16,
                        first: self.nodes[o as usize].addr(),
                        second: self.nodes[owner as usize].addr(),
                    })
                }
                _ => self.owners[slot] = Some(owner),
            }
        }
        Ok(())
    }

    fn finish(self, source: MapSource) -> SlotMap {
        SlotMap {
            nodes: self.nodes,
            owners: self.owners,
            source,
        }
    }
}

/// Parse a RESP2 `CLUSTER SHARDS` reply; `asked_host` is the host the command was sent to
/// (for nodes with an unknown endpoint).
///
/// Each shard is a flat key/value array with `slots` (flat start, end pairs) and `nodes` (flat
/// key/value arrays: `id`, `port`, `tls-port`, `ip`, `endpoint`, `hostname`, `role`,
/// `replication-offset`, `health`). A shard's slots go to its online master, or to its first
/// master when none is online (then they count as uncovered).
pub fn parse_shards(reply: &Reply, asked_host: &str) -> Result<SlotMap, ParseError> {
    let mut b = Builder::new();
    for shard in array(reply, "an array of shards")? {
        let fields = pairs(shard, "a shard (key/value array)")?;
        let slots = array(field(&fields, "slots", "a shard")?, "the shard's slots")?;
        let mut masters = Vec::new();
        for n in array(field(&fields, "nodes", "a shard")?, "the shard's nodes")? {
            let node = shards_node(n, asked_host)?;
            let (is_master, online) = (node.role == Role::Master, node.is_online_master());
            let i = b.add(node);
            if is_master {
                masters.push((i, online));
            }
        }
        let online: Vec<u16> = masters.iter().filter(|m| m.1).map(|m| m.0).collect();
        if online.len() > 1 {
            return Err(ParseError::Node {
                id: b.nodes[online[1] as usize].id.clone(),
                reason: format!(
                    "a second online master in the shard of {}",
                    b.nodes[online[0] as usize].addr()
                ),
            });
        }
        let owner = online.first().copied().or(masters.first().map(|m| m.0));
        if slots.len() % 2 != 0 {
            return Err(shape("start, end pairs of slots", &slots.len()));
        }
        for pair in slots.chunks(2) {
            let start = int(&pair[0], "a slot number")?;
            let end = int(&pair[1], "a slot number")?;
            if let Some(owner) = owner {
                b.assign(start, end, owner)?;
            }
        }
    }
    Ok(b.finish(MapSource::Shards))
}

/// One node of a shard.
fn shards_node(reply: &Reply, asked_host: &str) -> Result<Node, ParseError> {
    let what = "a node of CLUSTER SHARDS";
    let fields = pairs(reply, "a node (key/value array)")?;
    let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    let id = text(field(&fields, "id", what)?, "a node id")?;
    let node_err = |reason: String| ParseError::Node {
        id: id.clone(),
        reason,
    };
    let port = match get("port").map(|p| int(p, "a port")).transpose()? {
        Some(p) if p > 0 && p <= u16::MAX as i64 => p as u16,
        Some(p) => return Err(node_err(format!("port {p} is not a TCP port"))),
        None if get("tls-port").is_some() => {
            return Err(node_err(
                "only a TLS port (tls-port): TLS targets are not supported yet".into(),
            ))
        }
        None => {
            return Err(ParseError::Missing {
                what,
                field: "port",
            })
        }
    };
    let endpoint = get("endpoint")
        .map(|e| opt_text(e, "an endpoint"))
        .transpose()?;
    let ip = get("ip").map(|e| opt_text(e, "an IP")).transpose()?;
    let host = choose_host(
        endpoint.flatten().as_deref(),
        ip.flatten().as_deref(),
        asked_host,
    )
    .map_err(node_err)?;
    let role = match text(field(&fields, "role", what)?, "a role")?.as_str() {
        "master" => Role::Master,
        "replica" | "slave" => Role::Replica,
        other => return Err(node_err(format!("unknown role {other:?}"))),
    };
    let health = match get("health").map(|h| text(h, "a health")).transpose()? {
        None => Health::Online,
        Some(h) => match h.as_str() {
            "online" => Health::Online,
            "fail" | "failed" => Health::Failed,
            "loading" => Health::Loading,
            _ => Health::Other(h),
        },
    };
    Ok(Node {
        id,
        host,
        port,
        role,
        health,
    })
}

/// Where to reach a node: its endpoint, its IP for `?`, the asked host for an unknown one.
fn choose_host(
    endpoint: Option<&str>,
    ip: Option<&str>,
    asked_host: &str,
) -> Result<String, String> {
    match endpoint {
        Some("?") => match ip {
            Some(ip) if !ip.is_empty() => Ok(ip.to_string()),
            _ => Err("endpoint \"?\" (cluster-preferred-endpoint-type hostname, no cluster-announce-hostname) and no IP".into()),
        },
        Some(e) if !e.is_empty() => Ok(e.to_string()),
        // Unknown endpoint: the host the command went to, with the node's port.
        _ => Ok(asked_host.to_string()),
    }
}

/// Parse a RESP2 `CLUSTER SLOTS` reply; `asked_host` as for [`parse_shards`].
///
/// One entry per contiguous range: `[start, end, master, replica...]`, each node `[endpoint,
/// port, id, {ip, hostname}]` (the id since 4.0, the metadata since 7.0). SLOTS tells no
/// health: it leaves out failed and loading replicas, and its masters count as online.
pub fn parse_slots(reply: &Reply, asked_host: &str) -> Result<SlotMap, ParseError> {
    let mut b = Builder::new();
    for entry in array(reply, "an array of slot ranges")? {
        let items = array(entry, "a slot range [start, end, master, replicas...]")?;
        if items.len() < 3 {
            return Err(shape("a slot range with a master", &items.len()));
        }
        let start = int(&items[0], "a slot number")?;
        let end = int(&items[1], "a slot number")?;
        let master = b.add(slots_node(&items[2], asked_host, Role::Master)?);
        for r in &items[3..] {
            b.add(slots_node(r, asked_host, Role::Replica)?);
        }
        b.assign(start, end, master)?;
    }
    Ok(b.finish(MapSource::Slots))
}

/// One node of a `CLUSTER SLOTS` range.
fn slots_node(reply: &Reply, asked_host: &str, role: Role) -> Result<Node, ParseError> {
    let items = array(reply, "a node [endpoint, port, id, metadata]")?;
    if items.len() < 2 {
        return Err(shape("a node with an endpoint and a port", &items.len()));
    }
    let endpoint = opt_text(&items[0], "an endpoint")?;
    let port = int(&items[1], "a port")?;
    let mut ip = None;
    if let Some(meta) = items.get(3) {
        for (k, v) in pairs(meta, "node metadata (key/value array)")? {
            if k == "ip" {
                ip = opt_text(v, "an IP")?;
            }
        }
    }
    let id = match items.get(2) {
        Some(r) => text(r, "a node id")?,
        None => format!("{}:{port}", endpoint.as_deref().unwrap_or(asked_host)),
    };
    let host = choose_host(endpoint.as_deref(), ip.as_deref(), asked_host).map_err(|reason| {
        ParseError::Node {
            id: id.clone(),
            reason,
        }
    })?;
    if port <= 0 || port > u16::MAX as i64 {
        return Err(ParseError::Node {
            id,
            reason: format!("port {port} is not a TCP port"),
        });
    }
    Ok(Node {
        id,
        host,
        port: port as u16,
        role,
        health: Health::Online,
    })
}

fn shape(what: &'static str, got: &dyn fmt::Debug) -> ParseError {
    ParseError::Shape {
        what,
        got: format!("{got:?}"),
    }
}

fn array<'a>(r: &'a Reply, what: &'static str) -> Result<&'a [Reply], ParseError> {
    match r {
        Reply::Array(Some(items)) => Ok(items),
        other => Err(shape(what, other)),
    }
}

/// A flat key/value array as pairs (keys as text).
fn pairs<'a>(r: &'a Reply, what: &'static str) -> Result<Vec<(String, &'a Reply)>, ParseError> {
    let items = array(r, what)?;
    if items.len() % 2 != 0 {
        return Err(shape(what, r));
    }
    items
        .chunks(2)
        .map(|kv| Ok((text(&kv[0], "a field name")?, &kv[1])))
        .collect()
}

fn field<'a>(
    fields: &[(String, &'a Reply)],
    name: &'static str,
    what: &'static str,
) -> Result<&'a Reply, ParseError> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| *v)
        .ok_or(ParseError::Missing { what, field: name })
}

fn text(r: &Reply, what: &'static str) -> Result<String, ParseError> {
    match r {
        Reply::Bulk(Some(b)) | Reply::Simple(b) => Ok(String::from_utf8_lossy(b).into_owned()),
        other => Err(shape(what, other)),
    }
}

/// Text, or `None` for a null bulk string.
fn opt_text(r: &Reply, what: &'static str) -> Result<Option<String>, ParseError> {
    match r {
        Reply::Bulk(None) => Ok(None),
        other => text(other, what).map(Some),
    }
}

fn int(r: &Reply, what: &'static str) -> Result<i64, ParseError> {
    match r {
        Reply::Integer(i) => Ok(*i),
        other => Err(shape(what, other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn b(s: &str) -> Reply {
        Reply::Bulk(Some(Bytes::copy_from_slice(s.as_bytes())))
    }
    fn i(n: i64) -> Reply {
        Reply::Integer(n)
    }
    fn a(items: Vec<Reply>) -> Reply {
        Reply::Array(Some(items))
    }

    /// A `CLUSTER SHARDS` node as 7.0 writes it.
    fn node(id: &str, port: i64, endpoint: &str, role: &str, health: &str) -> Reply {
        a(vec![
            b("id"),
            b(id),
            b("port"),
            i(port),
            b("ip"),
            b("10.0.0.1"),
            b("endpoint"),
            b(endpoint),
            b("role"),
            b(role),
            b("replication-offset"),
            i(1234),
            b("health"),
            b(health),
        ])
    }

    fn shard(slots: &[i64], nodes: Vec<Reply>) -> Reply {
        a(vec![
            b("slots"),
            a(slots.iter().map(|s| i(*s)).collect()),
            b("nodes"),
            a(nodes),
        ])
    }

    fn three_shards() -> Reply {
        a(vec![
            shard(
                &[0, 5460],
                vec![
                    node("m1", 7001, "10.0.0.1", "master", "online"),
                    node("r1", 7004, "10.0.0.1", "replica", "online"),
                ],
            ),
            shard(
                &[5461, 10922],
                vec![
                    node("r2", 7005, "10.0.0.1", "replica", "online"),
                    node("m2", 7002, "10.0.0.1", "master", "online"),
                ],
            ),
            shard(
                &[10923, 16383],
                vec![
                    node("m3", 7003, "10.0.0.1", "master", "online"),
                    node("r3", 7006, "10.0.0.1", "replica", "loading"),
                ],
            ),
        ])
    }

    #[test]
    fn shards_of_three_masters_cover_every_slot_and_never_a_replica() {
        let map = parse_shards(&three_shards(), "seed").unwrap();
        assert_eq!(map.source(), MapSource::Shards);
        assert!(map.uncovered_slots().is_empty());
        assert_eq!(map.nodes().len(), 6);
        let masters: Vec<&str> = map.masters().iter().map(|n| n.id.as_str()).collect();
        assert_eq!(masters, ["m1", "m2", "m3"]);
        assert_eq!(map.master_for(0).unwrap().port, 7001);
        assert_eq!(map.master_for(5460).unwrap().port, 7001);
        assert_eq!(map.master_for(5461).unwrap().addr(), "10.0.0.1:7002");
        assert_eq!(map.master_for(16383).unwrap().id, "m3");
        for slot in 0..SLOTS as u16 {
            assert_eq!(map.master_for(slot).unwrap().role, Role::Master);
        }
        let r3 = map.nodes().iter().find(|n| n.id == "r3").unwrap();
        assert_eq!((r3.role, &r3.health), (Role::Replica, &Health::Loading));
    }

    #[test]
    fn gaps_and_split_ranges_are_uncovered() {
        let reply = a(vec![
            shard(
                &[0, 99, 200, 299],
                vec![node("m1", 7001, "h", "master", "online")],
            ),
            // A shard with no slots (a fresh master) and one with no master.
            shard(&[], vec![node("m2", 7002, "h", "master", "online")]),
            shard(
                &[300, 399],
                vec![node("r3", 7006, "h", "replica", "online")],
            ),
        ]);
        let map = parse_shards(&reply, "seed").unwrap();
        assert_eq!(map.uncovered_slots(), vec![100..=199, 300..=16383]);
        assert_eq!(map.master_for(250).unwrap().id, "m1");
        assert!(map.master_for(350).is_none());
        assert_eq!(map.masters().len(), 2);
    }

    #[test]
    fn failed_or_loading_masters_leave_their_slots_uncovered() {
        let reply = a(vec![
            shard(&[0, 8191], vec![node("m1", 7001, "h", "master", "fail")]),
            shard(
                &[8192, 16383],
                vec![node("m2", 7002, "h", "master", "loading")],
            ),
        ]);
        let map = parse_shards(&reply, "seed").unwrap();
        assert_eq!(map.uncovered_slots(), vec![0..=16383]);
        assert_eq!(map.nodes()[0].health, Health::Failed);
        // After a failover: the old master failed, its replica promoted.
        let reply = a(vec![shard(
            &[0, 16383],
            vec![
                node("old", 7001, "h", "master", "fail"),
                node("new", 7004, "h", "master", "online"),
            ],
        )]);
        let map = parse_shards(&reply, "seed").unwrap();
        assert_eq!(map.master_for(42).unwrap().id, "new");
        // Two online masters in one shard is not a state this code guesses about.
        let reply = a(vec![shard(
            &[0, 16383],
            vec![
                node("x", 7001, "h", "master", "online"),
                node("y", 7004, "h", "master", "online"),
            ],
        )]);
        assert!(matches!(
            parse_shards(&reply, "seed"),
            Err(ParseError::Node { id, .. }) if id == "y"
        ));
    }

    #[test]
    fn endpoints_question_mark_and_unknown() {
        let with = |endpoint: Reply, ip: &str| {
            a(vec![shard(
                &[0, 16383],
                vec![a(vec![
                    b("id"),
                    b("m"),
                    b("port"),
                    i(7001),
                    b("ip"),
                    b(ip),
                    b("endpoint"),
                    endpoint,
                    b("role"),
                    b("master"),
                    b("health"),
                    b("online"),
                ])],
            )])
        };
        let host = |r: Reply| parse_shards(&r, "seed.example").map(|m| m.nodes()[0].host.clone());
        assert_eq!(
            host(with(b("node1.example"), "10.1.1.1")).unwrap(),
            "node1.example"
        );
        assert_eq!(host(with(b("?"), "10.1.1.1")).unwrap(), "10.1.1.1");
        assert!(matches!(
            host(with(b("?"), "")),
            Err(ParseError::Node { .. })
        ));
        assert_eq!(host(with(b(""), "10.1.1.1")).unwrap(), "seed.example");
        assert_eq!(host(with(Reply::Bulk(None), "")).unwrap(), "seed.example");
    }

    #[test]
    fn tls_only_nodes_and_bad_replies_are_errors() {
        let tls = a(vec![shard(
            &[0, 16383],
            vec![a(vec![
                b("id"),
                b("m"),
                b("tls-port"),
                i(7001),
                b("endpoint"),
                b("h"),
                b("role"),
                b("master"),
            ])],
        )]);
        let e = parse_shards(&tls, "seed").unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        let m = || vec![node("m", 7001, "h", "master", "online")];
        for (reply, want) in [
            (b("nope"), "expected an array of shards"),
            (a(vec![shard(&[0], m())]), "pairs"),
            (a(vec![shard(&[0, 16384], m())]), "0-16383"),
            (a(vec![shard(&[5, 4], m())]), "5-4"),
            (a(vec![a(vec![b("slots"), a(vec![])])]), "no \"nodes\""),
            (
                a(vec![
                    shard(&[0, 10], m()),
                    shard(&[10, 20], vec![node("n", 7002, "h", "master", "online")]),
                ]),
                "slot 10 is served by both h:7001 and h:7002",
            ),
        ] {
            let e = parse_shards(&reply, "seed").unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }

    fn slots_node(endpoint: Reply, port: i64, id: &str, meta: Option<Vec<Reply>>) -> Reply {
        let mut v = vec![endpoint, i(port), b(id)];
        if let Some(m) = meta {
            v.push(a(m));
        }
        a(v)
    }

    #[test]
    fn slots_reply_of_7_0_and_older() {
        let reply = a(vec![
            a(vec![
                i(0),
                i(5460),
                slots_node(b("10.0.0.1"), 7001, "m1", Some(vec![])),
                slots_node(b("10.0.0.1"), 7004, "r1", Some(vec![])),
            ]),
            a(vec![
                i(5461),
                i(10922),
                slots_node(b("?"), 7002, "m2", Some(vec![b("ip"), b("10.0.0.2")])),
            ]),
            a(vec![
                i(10923),
                i(16000),
                slots_node(
                    Reply::Bulk(None),
                    7003,
                    "m3",
                    Some(vec![b("ip"), b("10.0.0.3")]),
                ),
            ]),
            // The same master again (ranges are contiguous runs).
            a(vec![
                i(16001),
                i(16383),
                slots_node(b("10.0.0.1"), 7001, "m1", None),
            ]),
        ]);
        let map = parse_slots(&reply, "seed").unwrap();
        assert_eq!(map.source(), MapSource::Slots);
        assert!(map.uncovered_slots().is_empty());
        assert_eq!(map.nodes().len(), 4);
        assert_eq!(map.masters().len(), 3);
        assert_eq!(map.master_for(16383).unwrap().id, "m1");
        assert_eq!(map.master_for(6000).unwrap().host, "10.0.0.2");
        assert_eq!(map.master_for(11000).unwrap().host, "seed");
        assert_eq!(map.nodes()[1].role, Role::Replica);
        // 3.x: no id, no metadata.
        let old = a(vec![a(vec![
            i(0),
            i(16383),
            a(vec![b("127.0.0.1"), i(30001)]),
            a(vec![b("127.0.0.1"), i(30004)]),
        ])]);
        let map = parse_slots(&old, "seed").unwrap();
        assert_eq!(map.master_for(1).unwrap().id, "127.0.0.1:30001");
        assert_eq!(map.nodes()[1].id, "127.0.0.1:30004");
        // Errors.
        let e = parse_slots(&a(vec![a(vec![i(0), i(1)])]), "seed").unwrap_err();
        assert!(e.to_string().contains("with a master"), "{e}");
        let e = parse_slots(&a(vec![a(vec![i(0), i(1), a(vec![b("h"), i(0)])])]), "s");
        assert!(e.unwrap_err().to_string().contains("port 0"));
    }

    #[test]
    fn node_endpoint_keeps_the_login() {
        let map = parse_shards(&three_shards(), "seed").unwrap();
        let login = Endpoint::parse("redis://user:pw@seed:7001/0").unwrap();
        let ep = map.master_for(6000).unwrap().endpoint(&login);
        assert_eq!((ep.host.as_str(), ep.port), ("10.0.0.1", 7002));
        assert_eq!(ep.username.as_deref(), Some("user"));
        assert_eq!(ep.password.as_deref(), Some("pw"));
        assert_eq!(ep.db, None);
    }

    #[test]
    fn no_seed_is_an_error() {
        let e = SlotMap::discover(&[], Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, TopologyError::NoSeed));
    }
}
