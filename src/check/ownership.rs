//! Prechecks of a relay that shares its target with other writers (a sidecar per Twemproxy
//! backend, or `--peer`s): are the peers reachable (deletions need their answer), which target
//! keys are expected (another backend's), and which keys sit on a backend they do not hash to.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::{probe, IfNotEmpty, Lines, Status, Verdict};
use crate::endpoint::Endpoint;
use crate::resp::{encode_command, Reply};
use crate::resp::{Client, ClientError};
use crate::source::topology::{KeyOwner, Topology};

/// Keys classified per database at most (the rest of a huge target is not read).
const CLASSIFY_CAP: u64 = 100_000;
/// Keys sampled in a report line.
const SAMPLE: usize = 5;

/// A command of these checks that failed. On the server of the report line, it names the
/// command; on another server (a source or peer asked whether it holds keys), the server too
/// (as displayed: no password).
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    /// A source or peer that may hold the target's keys cannot be reached.
    #[error("{server}: {cause}")]
    Connect { server: String, cause: ClientError },
    /// A command failed on the server the report line is about.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A command failed on a source or peer asked whether it holds keys.
    #[error("{server}: {cause}")]
    Holder { server: String, cause: CommandError },
}

/// One command that failed: refused, answered out of protocol, or the connection broke.
// Causes are part of the message (not a `source`), so that `{e}` and `{e:#}` both print them
// once.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{command}: {reply}")]
    Refused {
        command: &'static str,
        reply: String,
    },
    #[error("{command}: unexpected reply {reply:?}")]
    UnexpectedReply { command: &'static str, reply: Reply },
    #[error("{command}: {cause}")]
    Io {
        command: &'static str,
        cause: std::io::Error,
    },
}

impl CommandError {
    fn io(command: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |cause| CommandError::Io { command, cause }
    }

    /// The same failure, on `server` (a source or peer, not the report line's server).
    fn on(self, server: &Endpoint) -> OwnershipError {
        OwnershipError::Holder {
            server: server.to_string(),
            cause: self,
        }
    }
}

/// What the target's keys are, from the point of view of this relay's sources.
#[derive(Debug, Default)]
pub struct Classified {
    /// Keys nutcracker places on a peer backend: the peers' sidecars wrote them.
    pub on_other_backends: u64,
    /// Keys some backend of the pool (or a source or peer) holds.
    pub held: u64,
    /// Keys no backend holds, per database: data of no one the relay knows.
    pub foreign: BTreeMap<u32, u64>,
    pub foreign_sample: Vec<String>,
    /// Not every key was read (over [`CLASSIFY_CAP`] in a database).
    pub capped: bool,
}

/// One line per peer: reachable (pass) or not (warn: deletions of keys in doubt will wait).
pub(super) fn check_peers(peers: &[Endpoint], timeout: Duration, lines: &mut Lines) {
    for p in peers {
        let subject = format!("peer {p}");
        match probe::connect(p, timeout, "peer") {
            Ok(mut c) => match c.call(&["PING"]) {
                Ok(Reply::Error(e)) => lines.add(
                    Status::Warn,
                    &subject,
                    "reachable",
                    format!("PING refused: {}", String::from_utf8_lossy(&e)),
                    Some("the relay asks each peer EXISTS before it deletes a key: allow PING, SELECT and EXISTS for its user".into()),
                ),
                Ok(_) => {
                    lines.add(
                        Status::Pass,
                        &subject,
                        "reachable",
                        "answers: the relay can prove which keys are not this peer's".into(),
                        None,
                    );
                    let probes = super::acl::peer_probes();
                    super::check_acl_as(p, &subject, &probes, timeout, Status::Warn, lines);
                }
                Err(e) => lines.add(Status::Warn, &subject, "reachable", format!("PING failed: {e}"), Some("deletions of keys in doubt wait until it answers".into())),
            },
            Err(f) => lines.add(
                Status::Warn,
                &subject,
                "reachable",
                f.message,
                Some(format!(
                    "{}; meanwhile deletions (FLUSHDB of the source, the sweep after a full resync) of keys this peer might hold are deferred, not done",
                    f.fix
                )),
            ),
        }
    }
}

/// Keys of `ep` that nutcracker would route to another backend (moved by RPOPLPUSH, SMOVE,
/// COPY, a *STORE command, a script, or a change of the pool's config).
pub(super) fn misplaced(ep: &Endpoint, owner: &KeyOwner, timeout: Duration) -> Verdict {
    let mut conn = match probe::connect(ep, timeout, "source") {
        Ok(c) => c,
        Err(f) => return Verdict::warn(f.message, f.fix),
    };
    let dbs = match probe::info(&mut conn, None) {
        Ok(info) => probe::keyspace(&info),
        Err(e) => return Verdict::warn(format!("INFO failed: {e}"), "allow INFO".into()),
    };
    let (mut total, mut moved, mut sample) = (0u64, 0u64, Vec::new());
    for db in dbs.keys() {
        let r = scan_db(&mut conn, *db, u64::MAX, &mut |keys| {
            for k in keys {
                total += 1;
                if owner.owner(k).is_some_and(|o| o != *ep) {
                    moved += 1;
                    if sample.len() < SAMPLE {
                        sample.push(format!("db{db}:{}", crate::verify::escape_key(k)));
                    }
                }
            }
            Ok(())
        });
        if let Err(e) = r {
            return Verdict::warn(format!("SCAN failed: {e}"), "allow SCAN".into());
        }
    }
    if moved == 0 {
        return Verdict::pass(format!(
            "all {total} keys sit on the backend nutcracker routes them to"
        ));
    }
    Verdict::warn(
        format!(
            "{moved} of {total} keys sit on this backend although nutcracker routes them to another one (e.g. {}): written as the destination of RPOPLPUSH/LMOVE/SMOVE/COPY/*STORE or by a script, or before a change of the pool's servers",
            sample.join(", ")
        ),
        "nothing to do for the relay: they are replicated and their deletion is proven like any other; clients going through nutcracker do not find them".into(),
    )
}

/// Classify the keys of the target databases `dbs` (own-prefix keys left out).
pub(super) fn classify_target(
    conn: &mut Client,
    dbs: &BTreeMap<u32, u64>,
    topology: &Topology,
    own_prefix: &str,
    timeout: Duration,
) -> Result<Classified, OwnershipError> {
    let mut holders: Vec<(&Endpoint, Client)> = Vec::new();
    for ep in topology.sources.iter().chain(&topology.peers) {
        match Client::connect(ep, timeout) {
            Ok(c) => holders.push((ep, c)),
            Err(cause) => {
                return Err(OwnershipError::Connect {
                    server: ep.to_string(),
                    cause,
                })
            }
        }
    }
    let mut out = Classified::default();
    for (&db, &n) in dbs {
        if n == 0 {
            continue;
        }
        out.capped |= n > CLASSIFY_CAP;
        let dbs = db.to_string();
        for (ep, h) in holders.iter_mut() {
            expect_ok(h.call(&["SELECT", &dbs]), "SELECT").map_err(|e| e.on(ep))?;
        }
        scan_db(conn, db, CLASSIFY_CAP, &mut |keys| {
            let mut ask = Vec::new();
            for k in keys {
                if k.starts_with(own_prefix.as_bytes()) {
                    continue;
                }
                let elsewhere = topology
                    .owner
                    .as_ref()
                    .and_then(|o| o.owner(k))
                    .is_some_and(|o| !topology.sources.contains(&o));
                if elsewhere {
                    out.on_other_backends += 1;
                } else {
                    ask.push(k.clone());
                }
            }
            let mut held = vec![false; ask.len()];
            for (ep, h) in holders.iter_mut() {
                let answers = exists_each(h, &ask).map_err(|e| e.on(ep))?;
                for (i, e) in answers.into_iter().enumerate() {
                    held[i] |= e;
                }
            }
            for (k, held) in ask.iter().zip(held) {
                if held {
                    out.held += 1;
                } else {
                    *out.foreign.entry(db).or_default() += 1;
                    if out.foreign_sample.len() < SAMPLE {
                        out.foreign_sample
                            .push(format!("db{db}:{}", crate::verify::escape_key(k)));
                    }
                }
            }
            Ok(())
        })?;
    }
    Ok(out)
}

/// The `empty` verdict of a shared target: other backends' keys are expected; keys no
/// backend holds fall under `--if-target-not-empty`.
pub(super) fn judge_shared(c: &Classified, policy: IfNotEmpty, resuming: bool) -> Verdict {
    let expected = format!(
        "{} keys placed on other backends and {} keys held by a backend of the pool or a peer (expected with other writers){}",
        c.on_other_backends,
        c.held,
        if c.capped {
            format!("; the first {CLASSIFY_CAP} keys of each database were read")
        } else {
            String::new()
        }
    );
    let mut v = super::judge_not_empty(&c.foreign, policy, resuming);
    if c.foreign.values().all(|n| *n == 0) {
        return Verdict::pass(format!("the target holds {expected}"));
    }
    v.message = format!(
        "{} keys on the target belong to no backend of the pool and to no peer (e.g. {}); {}; {expected}",
        c.foreign.values().sum::<u64>(),
        c.foreign_sample.join(", "),
        v.message
    );
    v
}

/// The target holds exactly-once records of `source` (in DB 0): the relay wrote there before.
pub(super) fn has_records(conn: &mut Client, own_prefix: &str, source: &Endpoint) -> bool {
    crate::batch::record::any_on(conn, own_prefix, &source.to_string(), 0).unwrap_or(false)
}

/// SCAN `db` of `conn` page by page, at most `cap` keys.
fn scan_db(
    conn: &mut Client,
    db: u32,
    cap: u64,
    f: &mut dyn FnMut(&[Bytes]) -> Result<(), OwnershipError>,
) -> Result<(), OwnershipError> {
    expect_ok(conn.call(&["SELECT", &db.to_string()]), "SELECT")?;
    let mut cursor = "0".to_string();
    let mut seen = 0u64;
    loop {
        let reply = conn
            .call(&["SCAN", cursor.as_str(), "COUNT", "1000"])
            .map_err(CommandError::io("SCAN"))?;
        let Reply::Array(Some(mut parts)) = reply else {
            return Err(CommandError::UnexpectedReply {
                command: "SCAN",
                reply,
            }
            .into());
        };
        let keys: Vec<Bytes> = match parts.pop() {
            Some(Reply::Array(Some(ks))) => ks
                .into_iter()
                .filter_map(|k| match k {
                    Reply::Bulk(Some(b)) => Some(b),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        cursor = parts
            .pop()
            .and_then(|c| c.as_text())
            .unwrap_or_else(|| "0".into());
        seen += keys.len() as u64;
        f(&keys)?;
        if cursor == "0" || seen >= cap {
            return Ok(());
        }
    }
}

fn expect_ok(r: std::io::Result<Reply>, command: &'static str) -> Result<(), CommandError> {
    match r {
        Ok(Reply::Error(e)) => Err(CommandError::Refused {
            command,
            reply: String::from_utf8_lossy(&e).into_owned(),
        }),
        Ok(_) => Ok(()),
        Err(cause) => Err(CommandError::Io { command, cause }),
    }
}

/// EXISTS of each key, pipelined.
fn exists_each(c: &mut Client, keys: &[Bytes]) -> Result<Vec<bool>, CommandError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = BytesMut::new();
    for k in keys {
        encode_command(&mut out, &[&b"EXISTS"[..], k]);
    }
    use std::io::Write;
    c.stream
        .write_all(&out)
        .map_err(CommandError::io("EXISTS"))?;
    keys.iter()
        .map(|_| match c.read_reply() {
            Ok(Reply::Integer(n)) => Ok(n > 0),
            Ok(reply) => Err(CommandError::UnexpectedReply {
                command: "EXISTS",
                reply,
            }),
            Err(cause) => Err(CommandError::Io {
                command: "EXISTS",
                cause,
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_command_and_another_server() {
        let e: OwnershipError = CommandError::UnexpectedReply {
            command: "SCAN",
            reply: Reply::Integer(1),
        }
        .into();
        assert_eq!(e.to_string(), "SCAN: unexpected reply Integer(1)");
        let ep: Endpoint = "127.0.0.1:7001".parse().unwrap();
        let e = expect_ok(Ok(Reply::Error("NOPERM no".into())), "SELECT")
            .unwrap_err()
            .on(&ep);
        assert_eq!(e.to_string(), "127.0.0.1:7001: SELECT: NOPERM no");
    }
}
