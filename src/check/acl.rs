//! Whether the relay's users may run what the relay will send, so that a missing ACL
//! permission is a failed precheck naming the user, the server, the command and the
//! `ACL SETUSER` that grants it, not a fatal error minutes into a sync.
//!
//! Reads are real calls (SELECT 0, SCAN, TYPE, EXISTS, MGET of a key that does not exist).
//! Writes are queued inside `MULTI` and dropped with `DISCARD`: Redis checks a command's
//! permissions (command and keys) when it queues it, so `+QUEUED` proves the permission and
//! nothing runs. EXEC is proven by an empty transaction. PSYNC can only be asked with
//! `ACL DRYRUN` (Redis 7+): see `psync_available` in the parent module.
//!
//! The probes run on a connection of their own (a refused EXEC could leave it in MULTI).

use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::resp::{Client, Reply};

/// One command the relay sends, as probed.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Its name in ACL rules (`restore`, `object|encoding`).
    pub acl: &'static str,
    pub args: Vec<String>,
    /// Queued inside MULTI (a write) rather than run (a read).
    pub queued: bool,
}

/// What the server said to one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// `-NOPERM ...`: the reply, whole.
    Denied(String),
}

/// A key no one writes: probes read it, or queue writes to it that never run.
const DATA_KEY: &str = "redis-relay-acl-probe";

fn probe(acl: &'static str, args: &[&str], queued: bool) -> Probe {
    Probe {
        acl,
        args: args.iter().map(|s| s.to_string()).collect(),
        queued,
    }
}

/// What the relay sends to the target: the snapshot (RESTORE, MSET), the exactly-once
/// batches (MULTI, SET of a record under `prefix`, EXEC), the resume (MGET of the records),
/// the deletions (SCAN, TYPE, EXISTS, WATCH, DEL) and `verify`'s reads.
pub fn target_probes(prefix: &str) -> Vec<Probe> {
    let record = format!("{prefix}acl-probe");
    let r = record.as_str();
    let mut probes = reads(r);
    probes.extend([
        probe("mget", &["MGET", r], false),
        probe("watch", &["WATCH", r], false),
        probe("unwatch", &["UNWATCH"], false),
        probe("multi", &["MULTI"], false),
        probe("restore", &["RESTORE", DATA_KEY, "0", "x", "REPLACE"], true),
        probe("mset", &["MSET", DATA_KEY, "x"], true),
        probe("pexpireat", &["PEXPIREAT", DATA_KEY, "1"], true),
        probe("del", &["DEL", DATA_KEY], true),
        probe("set", &["SET", r, "x"], true),
        probe("discard", &["DISCARD"], false),
        probe("exec", &["EXEC"], false),
    ]);
    probes
}

/// The reads both sides get: the database, a key scan, a key's type and existence, and `GET`
/// of `get_key` (a record on the target, any key on a source).
fn reads(get_key: &str) -> Vec<Probe> {
    vec![
        probe("ping", &["PING"], false),
        probe("select", &["SELECT", "0"], false),
        probe("scan", &["SCAN", "0", "COUNT", "1"], false),
        probe("type", &["TYPE", DATA_KEY], false),
        probe("exists", &["EXISTS", DATA_KEY], false),
        probe("get", &["GET", get_key], false),
    ]
}

/// What the relay reads from a source besides replication (PSYNC, REPLCONF, probed apart):
/// the database, the keys `verify` and the deletion proofs look at.
pub fn source_probes() -> Vec<Probe> {
    reads(DATA_KEY)
}

/// What the deletion proofs ask a peer (`PING`, `SELECT`, `EXISTS`): without them a deletion
/// of a key the peer might hold is deferred, never done.
pub fn peer_probes() -> Vec<Probe> {
    vec![
        probe("ping", &["PING"], false),
        probe("select", &["SELECT", "0"], false),
        probe("exists", &["EXISTS", DATA_KEY], false),
    ]
}

/// Whether `reply` is an ACL refusal.
pub fn is_noperm(reply: &[u8]) -> bool {
    reply.starts_with(b"NOPERM")
}

/// Run `probes` on a new connection to `ep`; the refused ones, with the server's reply.
/// `MULTI` ... `DISCARD` frame the queued probes; `EXEC` is sent inside an empty `MULTI`.
pub fn denied(
    ep: &Endpoint,
    timeout: Duration,
    probes: &[Probe],
) -> std::io::Result<Vec<(Probe, String)>> {
    let mut conn = Client::connect(ep, timeout).map_err(std::io::Error::other)?;
    let _ = conn.stream.set_read_timeout(Some(timeout));
    let mut out = Vec::new();
    let mut in_multi = false;
    for p in probes {
        if p.acl == "exec" {
            // An empty transaction: EXEC runs nothing.
            in_multi = matches!(conn.call(&["MULTI"])?, Reply::Simple(_));
            if !in_multi {
                continue;
            }
        }
        if p.queued && !in_multi {
            // MULTI was refused (reported): the writes cannot be probed without it.
            continue;
        }
        let outcome = outcome(&conn.call(&p.args)?);
        match p.acl {
            "multi" => in_multi = outcome == Outcome::Allowed,
            "discard" | "exec" => in_multi = in_multi && outcome != Outcome::Allowed,
            _ => {}
        }
        if let Outcome::Denied(reply) = outcome {
            out.push((p.clone(), reply));
        }
    }
    Ok(out)
}

fn outcome(reply: &Reply) -> Outcome {
    match reply {
        Reply::Error(e) if is_noperm(e) => Outcome::Denied(String::from_utf8_lossy(e).into()),
        _ => Outcome::Allowed,
    }
}

/// The `ACL SETUSER` that grants what `reply` refused to `user`: the command, or (a key
/// refusal) the keys.
pub fn fix(user: &str, acl: &str, reply: &str) -> String {
    if reply.contains("key") {
        format!("ACL SETUSER {user} ~* (the relay writes every key of the sources and its own under --key-prefix), then ACL SAVE or CONFIG REWRITE to keep it")
    } else {
        format!("ACL SETUSER {user} +{acl}, then ACL SAVE or CONFIG REWRITE to keep it (docs/security.md lists every permission the relay needs)")
    }
}

/// The ACL user of `ep` (`default` without a user name in the URL).
pub fn user_of(ep: &Endpoint) -> String {
    ep.username.clone().unwrap_or_else(|| "default".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_fixes() {
        assert!(is_noperm(
            b"NOPERM this user has no permissions to run the 'restore' command"
        ));
        assert!(!is_noperm(b"ERR unknown command"));
        assert_eq!(
            outcome(&Reply::Error(b"NOPERM x".to_vec().into())),
            Outcome::Denied("NOPERM x".into())
        );
        assert_eq!(outcome(&Reply::Simple("QUEUED".into())), Outcome::Allowed);
        assert!(fix("relay", "restore", "NOPERM ... 'restore' command")
            .starts_with("ACL SETUSER relay +restore"));
        assert!(fix(
            "relay",
            "set",
            "NOPERM this user has no permissions to access one of the keys"
        )
        .starts_with("ACL SETUSER relay ~*"));
        let t = target_probes("p:");
        assert!(t.iter().any(|p| p.acl == "restore" && p.queued));
        assert!(t.iter().any(|p| p.args == ["SET", "p:acl-probe", "x"]));
    }
}
