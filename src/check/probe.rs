//! Talking to one server for the prechecks: connect, log in, read INFO and CONFIG, and turn
//! connection failures into a message with its fix.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::resp::Reply;
use crate::resp::{Client, ClientError};

/// Why a server could not be used, with what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ConnectFailure {
    /// The check that failed: `reachable` or `auth`.
    pub check: &'static str,
    pub message: String,
    pub fix: String,
}

/// A command that failed on the server being checked (the report line names the server, the
/// caller's message the command for I/O failures: `INFO failed: ...`).
// Causes are part of the message (not a `source`), so that `{e}` and `{e:#}` both print them
// once.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The connection broke or timed out during `command`.
    #[error("{cause}")]
    Io {
        command: String,
        cause: std::io::Error,
    },
    /// The server answered `command` with an error (not allowed, renamed, unknown).
    #[error("{command} refused: {reply}")]
    Refused { command: String, reply: String },
    /// `CONFIG GET` of a parameter the server does not have.
    #[error("{command} returned nothing")]
    NoValue { command: String },
    #[error("unexpected reply to {command}: {reply:?}")]
    UnexpectedReply { command: String, reply: Reply },
}

/// Connect and log in; classify the failure.
pub fn connect(ep: &Endpoint, timeout: Duration, role: &str) -> Result<Client, ConnectFailure> {
    let conn = Client::connect(ep, timeout).map_err(|e| classify(ep, &e, role))?;
    let _ = conn
        .stream
        .set_read_timeout(Some(timeout.max(Duration::from_secs(5))));
    let _ = conn
        .stream
        .set_write_timeout(Some(timeout.max(Duration::from_secs(5))));
    Ok(conn)
}

fn classify(ep: &Endpoint, e: &ClientError, role: &str) -> ConnectFailure {
    let flag = if role == "target" {
        "--target"
    } else {
        "--source (or the pool's redis_auth in the Twemproxy config)"
    };
    match e {
        ClientError::Connect { cause: source, .. } => not_connected(ep, source),
        ClientError::Io {
            what,
            cause: source,
            ..
        } => dropped(ep, what, source),
        ClientError::Refused { command, reply, .. } => refused(ep, flag, command, reply),
        ClientError::Tls { reason, .. } => ConnectFailure {
            check: "tls",
            message: format!("TLS handshake failed: {reason}"),
            fix: format!(
                "check {ep}'s certificate and the TLS options of its side (--tls-* for sources and peers, --target-tls-* for the target): the CA that signed it, its dates, the names it carries, and a client certificate if the server requires one"
            ),
        },
    }
}

/// The TCP connection failed: refused (nothing listens) or another network error.
fn not_connected(ep: &Endpoint, source: &std::io::Error) -> ConnectFailure {
    let refused = source.kind() == std::io::ErrorKind::ConnectionRefused;
    let message = if refused {
        format!("connection refused ({source})")
    } else {
        format!("cannot connect: {source}")
    };
    let fix = if refused {
        format!(
            "nothing accepts connections on {ep}: check that redis-server runs there, and that its `bind` directive includes the address the relay connects from (`bind 127.0.0.1` only accepts local clients); a firewall can refuse too"
        )
    } else {
        format!("check the host and port of {ep}, the network path and firewalls")
    };
    ConnectFailure {
        check: "reachable",
        message,
        fix,
    }
}

/// The server accepted the connection, then closed it or did not answer during `what`.
fn dropped(ep: &Endpoint, what: &str, source: &std::io::Error) -> ConnectFailure {
    let reset = matches!(
        source.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::BrokenPipe
    );
    ConnectFailure {
        check: "reachable",
        message: format!("the server closed the connection during {what}: {source}"),
        fix: if reset {
            "the server accepted then dropped the connection: it may be in `protected-mode` (set a password with `requirepass`, or `CONFIG SET protected-mode no` if the network is trusted), at `maxclients`, or not a Redis server".into()
        } else {
            format!("check that {ep} is a Redis server and answers in time")
        },
    }
}

/// The server refused `command` while logging in: protected mode, or a credentials problem
/// (`flag` names the option that holds them).
fn refused(ep: &Endpoint, flag: &str, command: &str, reply: &str) -> ConnectFailure {
    let upper = reply.to_ascii_uppercase();
    if upper.starts_with("DENIED") || upper.contains("PROTECTED MODE") {
        ConnectFailure {
            check: "reachable",
            message: format!("refused by protected mode: {}", first_sentence(reply)),
            fix: format!(
                "{ep} runs in protected mode without a password and only accepts loopback clients: set `requirepass` (and give the password in the URL), or `CONFIG SET protected-mode no` and list the relay's address in `bind` if the network is trusted"
            ),
        }
    } else if upper.starts_with("NOAUTH") {
        ConnectFailure {
            check: "auth",
            message: format!("{ep} requires a password: {command} answered {reply}"),
            fix: format!("give the password in the URL of {flag}: redis://:PASSWORD@{ep} (or redis://USER:PASSWORD@{ep} for an ACL user)"),
        }
    } else if upper.starts_with("WRONGPASS")
        || upper.contains("INVALID PASSWORD")
        || upper.contains("INVALID USERNAME")
    {
        ConnectFailure {
            check: "auth",
            message: format!("authentication failed: {reply}"),
            fix: format!("correct the user name or password in the URL of {flag} (percent-encode `@` and `:` in passwords)"),
        }
    } else if upper.contains("NO PASSWORD IS SET") || upper.contains("WITHOUT ANY PASSWORD") {
        ConnectFailure {
            check: "auth",
            message: format!("a password was given but {ep} has none: {reply}"),
            fix: format!(
                "remove the password from the URL of {flag}, or set `requirepass` on the server"
            ),
        }
    } else {
        ConnectFailure {
            check: "auth",
            message: format!("{command} refused: {reply}"),
            fix: format!("check the credentials and ACL permissions of the user in {flag}"),
        }
    }
}

fn first_sentence(s: &str) -> &str {
    s.split_once(". ").map(|(a, _)| a).unwrap_or(s)
}

/// The fields of an `INFO` reply: `field -> value`.
pub type Info = BTreeMap<String, String>;

/// `INFO` (default sections) as a map of `field -> value`.
pub fn info(conn: &mut Client, section: Option<&str>) -> Result<Info, ProbeError> {
    let reply = match section {
        Some(s) => conn.call(&["INFO", s]),
        None => conn.call(&["INFO"]),
    }
    .map_err(|cause| ProbeError::Io {
        command: "INFO".into(),
        cause,
    })?;
    if let Reply::Error(e) = &reply {
        return Err(ProbeError::Refused {
            command: "INFO".into(),
            reply: String::from_utf8_lossy(e).into_owned(),
        });
    }
    Ok(reply
        .as_text()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

/// `CONFIG GET name`: the outer error when the connection failed, the inner one when the
/// server has no answer (managed services rename or refuse CONFIG).
pub fn config_get(conn: &mut Client, name: &str) -> Result<Result<String, ProbeError>, ProbeError> {
    let command = || format!("CONFIG GET {name}");
    let reply = conn
        .call(&["CONFIG", "GET", name])
        .map_err(|cause| ProbeError::Io {
            command: command(),
            cause,
        })?;
    Ok(match reply {
        Reply::Array(Some(items)) if items.len() >= 2 => Ok(items[1].as_text().unwrap_or_default()),
        Reply::Array(_) => Err(ProbeError::NoValue { command: command() }),
        Reply::Error(e) => Err(ProbeError::Refused {
            command: command(),
            reply: String::from_utf8_lossy(&e).into_owned(),
        }),
        reply => Err(ProbeError::UnexpectedReply {
            command: command(),
            reply,
        }),
    })
}

/// Keys per database from the `keyspace` section of INFO (`db0:keys=3,expires=0,...`).
pub fn keyspace(info: &Info) -> BTreeMap<u32, u64> {
    info.iter()
        .filter_map(|(k, v)| {
            let db = k.strip_prefix("db")?.parse::<u32>().ok()?;
            let keys = v
                .split(',')
                .find_map(|p| p.strip_prefix("keys="))?
                .parse::<u64>()
                .ok()?;
            Some((db, keys))
        })
        .collect()
}

/// Keys holding hash fields with their own TTL, summed over the databases of INFO keyspace:
/// `subexpiry=` on Redis 7.4+, `keys_with_volatile_items=` on Valkey 9.
pub fn field_ttl_keys(info: &Info) -> u64 {
    info.iter()
        .filter(|(k, _)| {
            k.strip_prefix("db")
                .is_some_and(|d| d.parse::<u32>().is_ok())
        })
        .flat_map(|(_, v)| v.split(','))
        .filter_map(|p| {
            p.strip_prefix("subexpiry=")
                .or_else(|| p.strip_prefix("keys_with_volatile_items="))?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The names of the modules a server loads (`MODULE LIST`); empty when it has no such
/// command or refuses it.
pub fn modules(conn: &mut Client) -> Vec<String> {
    let Ok(Reply::Array(Some(items))) = conn.call(&["MODULE", "LIST"]) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|m| match m {
            Reply::Array(Some(fields)) => fields
                .chunks(2)
                .find(|kv| kv[0].as_text().as_deref() == Some("name"))
                .and_then(|kv| kv.get(1)?.as_text()),
            _ => None,
        })
        .collect()
}

/// `512mb`, `1gb`, `1048576` as CONFIG and the config file write sizes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mul) = [
        ("gb", 1u64 << 30),
        ("mb", 1 << 20),
        ("kb", 1 << 10),
        ("g", 1_000_000_000),
        ("m", 1_000_000),
        ("k", 1000),
        ("b", 1),
    ]
    .iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|n| (n.to_string(), *m)))
    .unwrap_or((s.clone(), 1));
    num.trim().parse::<u64>().ok().map(|n| n * mul)
}

/// Bytes for humans: `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("16kb"), Some(16 << 10));
        assert_eq!(parse_size("1mb"), Some(1 << 20));
        assert_eq!(parse_size("2gb"), Some(2 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn keyspace_lines() {
        let mut m = BTreeMap::new();
        m.insert("db0".into(), "keys=3,expires=1,avg_ttl=0".into());
        m.insert("db12".into(), "keys=7,expires=0,avg_ttl=0".into());
        m.insert("dbx".into(), "keys=7".into());
        let k = keyspace(&m);
        assert_eq!(k.get(&0), Some(&3));
        assert_eq!(k.get(&12), Some(&7));
        assert_eq!(k.len(), 2);
    }
}
