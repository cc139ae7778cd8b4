//! A blocking RESP client: connect, log in (AUTH, with a user for ACLs), one command and its
//! reply at a time. The relay's side paths use it against any server: the target's writers
//! and deletions, the prechecks and verify against sources, peers and target. The
//! replication link itself is asynchronous and has its own handshake (`source::handshake`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::BytesMut;

use super::transport::Transport;
use super::{encode_command, parse_reply, tls, Reply};
use crate::endpoint::Endpoint;

/// A logged-in connection.
pub struct Client {
    pub stream: Transport,
    buf: BytesMut,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
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
    /// The TLS settings cannot be used, or the TLS handshake (or the server's first answer
    /// through it: a server requiring a client certificate says so only then) failed.
    #[error("target {target}: TLS handshake failed: {reason}")]
    Tls { target: String, reason: String },
}

impl ClientError {
    /// An I/O error of `what`; a TLS failure inside it becomes [`ClientError::Tls`].
    fn io(target: &str, what: &'static str, cause: std::io::Error) -> ClientError {
        match tls::describe(&cause) {
            Some(reason) => ClientError::Tls {
                target: target.to_string(),
                reason,
            },
            None => ClientError::Io {
                target: target.to_string(),
                what,
                cause,
            },
        }
    }
}

impl Client {
    /// Connect, log in, and check the server answers.
    pub fn connect(ep: &Endpoint, timeout: Duration) -> Result<Client, ClientError> {
        let target = ep.to_string();
        let addrs = (ep.host.as_str(), ep.port)
            .to_socket_addrs()
            .map_err(|source| ClientError::Connect {
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
        let stream = stream.ok_or_else(|| ClientError::Connect {
            target: target.clone(),
            cause: last.unwrap_or_else(|| std::io::ErrorKind::AddrNotAvailable.into()),
        })?;
        let io = |what, source| ClientError::io(&target, what, source);
        stream
            .set_nodelay(true)
            .map_err(|e| io("set TCP_NODELAY", e))?;
        let _ = socket2::SockRef::from(&stream).set_keepalive(true);
        let mut conn = Client {
            stream: transport(ep, stream, timeout)?,
            buf: BytesMut::with_capacity(64 * 1024),
        };
        if let Some(pass) = &ep.password {
            let reply = match &ep.username {
                Some(user) => conn.call(&["AUTH", user.as_str(), pass.as_str()]),
                None => conn.call(&["AUTH", pass.as_str()]),
            }
            .map_err(|e| io("AUTH", e))?;
            if let Reply::Error(e) = reply {
                return Err(ClientError::Refused {
                    target,
                    command: "AUTH".into(),
                    reply: String::from_utf8_lossy(&e).into_owned(),
                });
            }
        }
        match conn.call(&["PING"]).map_err(|e| io("PING", e))? {
            Reply::Error(e) => Err(ClientError::Refused {
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
}

/// The connection as `ep` wants it: TCP as is, or TLS with the handshake done.
pub fn transport(
    ep: &Endpoint,
    stream: TcpStream,
    timeout: Duration,
) -> Result<Transport, ClientError> {
    let Some(opts) = &ep.tls else {
        return Ok(Transport::Plain(stream));
    };
    let target = ep.to_string();
    let failed = |reason: String| ClientError::Tls {
        target: target.clone(),
        reason,
    };
    let config = tls::client_config(opts).map_err(|e| failed(e.to_string()))?;
    let name = tls::server_name(ep, opts).map_err(|e| failed(e.to_string()))?;
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| failed(e.to_string()))?;
    Transport::tls(stream, conn, timeout).map_err(|e| {
        failed(tls::describe(&e).unwrap_or_else(|| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("no TLS answer within {timeout:?} (a plain-text server behind rediss://?)")
            }
            _ => format!("{e} (a plain-text server behind rediss://?)"),
        }))
    })
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
