//! A blocking connection to the target Redis, with login and the facts the apply path needs.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::BytesMut;

use crate::endpoint::Endpoint;
use crate::resp::{encode_command, parse_reply, Reply};

/// What the apply path needs to know about the target.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    pub version: String,
    /// The newest RDB version the target loads (RESTORE refuses newer payloads).
    pub rdb_version: u32,
}

impl TargetInfo {
    /// Major/minor of `version` (`7.0.15` -> (7, 0)).
    pub fn version_tuple(&self) -> (u32, u32) {
        version_tuple(&self.version)
    }

    /// RESTORE ... ABSTTL, IDLETIME and FREQ exist from 5.0 on.
    pub fn has_absttl(&self) -> bool {
        self.version_tuple() >= (5, 0)
    }
}

pub fn version_tuple(v: &str) -> (u32, u32) {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The RDB version a Redis version writes and accepts at most.
pub fn rdb_version_for(version: &str) -> u32 {
    match version_tuple(version) {
        (0..=1, _) | (2, 0..=5) => 2,
        (2, _) | (3, 0) => 6,
        (3, _) => 7,
        (4, _) => 8,
        (5, _) | (6, _) => 9,
        (7, 0) => 10,
        (7, 2) => 11,
        (7, 4) => 12,
        // 7.9.x is the 8.0 milestone line; 8.x writes RDB 12 (and reads what it writes).
        (7, _) | (8, _) => 12,
        _ => 12,
    }
}

/// A logged-in connection.
pub struct TargetConn {
    pub stream: TcpStream,
    buf: BytesMut,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    // The cause is part of the message (not a `source`), so that `{e}` and `{e:#}` both
    // print it once.
    #[error("target {target}: cannot connect: {cause}")]
    Connect {
        target: String,
        cause: std::io::Error,
    },
    #[error("target {target}: {what}: {cause}")]
    Io {
        target: String,
        what: &'static str,
        cause: std::io::Error,
    },
    #[error("target {target}: {command} failed: {reply}")]
    Refused {
        target: String,
        command: String,
        reply: String,
    },
}

impl TargetConn {
    /// Connect, log in, and check the server answers.
    pub fn connect(ep: &Endpoint, timeout: Duration) -> Result<TargetConn, TargetError> {
        let target = ep.to_string();
        let addrs = (ep.host.as_str(), ep.port)
            .to_socket_addrs()
            .map_err(|source| TargetError::Connect {
                target: target.clone(),
                cause: source,
            })?;
        let mut last = None;
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = stream.ok_or_else(|| TargetError::Connect {
            target: target.clone(),
            cause: last.unwrap_or_else(|| std::io::ErrorKind::AddrNotAvailable.into()),
        })?;
        let io = |what, source| TargetError::Io {
            target: target.clone(),
            what,
            cause: source,
        };
        stream
            .set_nodelay(true)
            .map_err(|e| io("set TCP_NODELAY", e))?;
        let _ = socket2::SockRef::from(&stream).set_keepalive(true);
        let mut conn = TargetConn {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
        };
        if let Some(pass) = &ep.password {
            let reply = match &ep.username {
                Some(user) => conn.call(&["AUTH", user.as_str(), pass.as_str()]),
                None => conn.call(&["AUTH", pass.as_str()]),
            }
            .map_err(|e| io("AUTH", e))?;
            if let Reply::Error(e) = reply {
                return Err(TargetError::Refused {
                    target,
                    command: "AUTH".into(),
                    reply: String::from_utf8_lossy(&e).into_owned(),
                });
            }
        }
        match conn.call(&["PING"]).map_err(|e| io("PING", e))? {
            Reply::Error(e) => Err(TargetError::Refused {
                target,
                command: "PING".into(),
                reply: String::from_utf8_lossy(&e).into_owned(),
            }),
            _ => Ok(conn),
        }
    }

    /// One command, one reply (not for the pipelined hot path).
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> std::io::Result<Reply> {
        let mut out = BytesMut::new();
        encode_command(&mut out, args);
        self.stream.write_all(&out)?;
        self.read_reply()
    }

    /// Read the next reply from the connection.
    pub fn read_reply(&mut self) -> std::io::Result<Reply> {
        read_reply_from(&mut self.stream, &mut self.buf)
    }

    /// `INFO server` facts.
    pub fn info(&mut self) -> std::io::Result<TargetInfo> {
        let text = self
            .call(&["INFO", "server"])?
            .as_text()
            .unwrap_or_default();
        let version = info_field(&text, "redis_version").unwrap_or_else(|| "0.0.0".into());
        let rdb_version = rdb_version_for(&version);
        Ok(TargetInfo {
            version,
            rdb_version,
        })
    }
}

/// A field of an `INFO` reply.
pub fn info_field(text: &str, field: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// Read one reply, keeping what follows it in `buf`.
pub fn read_reply_from(stream: &mut impl Read, buf: &mut BytesMut) -> std::io::Result<Reply> {
    loop {
        if let Some((reply, used)) =
            parse_reply(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
        {
            let _ = buf.split_to(used);
            return Ok(reply);
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        let start = buf.len();
        let cap = buf.capacity();
        buf.resize(cap, 0);
        let n = match stream.read(&mut buf[start..]) {
            Ok(n) => n,
            Err(e) => {
                buf.truncate(start);
                return Err(e);
            }
        };
        buf.truncate(start + n);
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdb_versions() {
        assert_eq!(rdb_version_for("2.4.18"), 2);
        assert_eq!(rdb_version_for("2.8.24"), 6);
        assert_eq!(rdb_version_for("3.2.13"), 7);
        assert_eq!(rdb_version_for("4.0.14"), 8);
        assert_eq!(rdb_version_for("6.2.16"), 9);
        assert_eq!(rdb_version_for("7.0.15"), 10);
        assert_eq!(rdb_version_for("7.2.6"), 11);
        assert_eq!(rdb_version_for("7.4.1"), 12);
        assert_eq!(rdb_version_for("7.9.224"), 12);
    }
}
