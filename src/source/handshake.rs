//! The replica handshake, as a named state machine mirroring `syncWithMaster` in Redis's
//! `replication.c`: connect, `AUTH`, `PING`, `REPLCONF listening-port`, `REPLCONF capa eof capa
//! psync2`, `REPLCONF version` (Valkey 8+), then `PSYNC <replid> <offset>` (or `PSYNC ? -1`),
//! falling back to `SYNC` for masters older than 2.8 that do not know PSYNC.
//!
//! Commands are sent one at a time and each reply is awaited, so every error can be attributed
//! to the step that caused it. Replies here are single status/error lines; bare `\n`
//! keepalives (which a master sends while it prepares a diskless transfer) are skipped.

use crate::endpoint::Endpoint;
use crate::resp::encode_command;
use bytes::BytesMut;
use std::fmt;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stream::{start_tls, SourceStream};
/// The Valkey version the relay declares (`REPLCONF version`): the newest whose snapshot
/// format (RDB 80, `rdb::VALKEY_RDB_VERSION`) the parser reads.
pub const DECLARED_VALKEY_VERSION: &str = "9.0.0";

/// Longest reply line accepted during the handshake.
const MAX_LINE: usize = 64 * 1024;

/// The steps of the handshake, named like `REPL_STATE_*` in `replication.c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeState {
    Connecting,
    SendAuth,
    ReceiveAuthReply,
    SendPing,
    ReceivePong,
    SendPort,
    ReceivePortReply,
    SendCapa,
    ReceiveCapaReply,
    SendVersion,
    ReceiveVersionReply,
    SendPsync,
    ReceivePsyncReply,
    SendSync,
    Done,
}

impl fmt::Display for HandshakeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            HandshakeState::Connecting => "connecting",
            HandshakeState::SendAuth => "sending AUTH",
            HandshakeState::ReceiveAuthReply => "waiting for the AUTH reply",
            HandshakeState::SendPing => "sending PING",
            HandshakeState::ReceivePong => "waiting for the PING reply",
            HandshakeState::SendPort => "sending REPLCONF listening-port",
            HandshakeState::ReceivePortReply => "waiting for the REPLCONF listening-port reply",
            HandshakeState::SendCapa => "sending REPLCONF capa",
            HandshakeState::ReceiveCapaReply => "waiting for the REPLCONF capa reply",
            HandshakeState::SendVersion => "sending REPLCONF version",
            HandshakeState::ReceiveVersionReply => "waiting for the REPLCONF version reply",
            HandshakeState::SendPsync => "sending PSYNC",
            HandshakeState::ReceivePsyncReply => "waiting for the PSYNC reply",
            HandshakeState::SendSync => "sending SYNC",
            HandshakeState::Done => "done",
        };
        f.write_str(s)
    }
}

/// How the master agreed to start replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncStart {
    /// `+FULLRESYNC <replid> <offset>`: an RDB follows; the first stream byte after it has
    /// offset `offset + 1`.
    Full { replid: String, offset: u64 },
    /// `+CONTINUE [<replid>]`: the stream resumes at the requested offset; `replid` is the new
    /// id announced by a PSYNC2 master, or the one we asked for.
    Continue { replid: String },
    /// The master does not know PSYNC (Redis < 2.8): `SYNC` was sent; an RDB follows, and
    /// there are no offsets and no ACKs.
    LegacySync,
}

/// Result of a successful handshake.
#[derive(Debug)]
pub struct Handshake {
    pub start: SyncStart,
    /// Bytes already read past the PSYNC reply (RDB preamble or stream).
    pub leftover: BytesMut,
    /// Keepalive newlines skipped while waiting for the PSYNC reply.
    pub keepalives: u64,
}

/// What the handshake sends.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    pub endpoint: Endpoint,
    /// Port announced with `REPLCONF listening-port` (shown in the master's INFO replication;
    /// Sentinel may try it, so announce a port that is not a Redis).
    pub listening_port: u16,
    /// `Some((replid, next_offset))` to ask for a partial resync from `next_offset`.
    pub psync: Option<(String, u64)>,
    /// Longest wait for any reply byte.
    pub io_timeout: Duration,
}

/// Why the handshake failed. [`HandshakeError::is_fatal`] tells whether retrying can help.
#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error("{source_name}: cannot connect: {err}")]
    Connect {
        source_name: String,
        err: std::io::Error,
    },
    /// `rediss://`: the TLS settings cannot be used, or the TLS handshake failed.
    #[error("{source_name}: TLS handshake failed: {reason}")]
    Tls { source_name: String, reason: String },
    #[error("{source_name}: I/O error while {state}: {err}")]
    Io {
        source_name: String,
        state: HandshakeState,
        err: std::io::Error,
    },
    #[error("{source_name}: connection closed by the master while {state}")]
    Closed {
        source_name: String,
        state: HandshakeState,
    },
    #[error("{source_name}: no reply from the master within {timeout:?} while {state}")]
    Timeout {
        source_name: String,
        state: HandshakeState,
        timeout: Duration,
    },
    #[error("{source_name}: authentication failed: the master replied {reply:?} ({hint})")]
    Auth {
        source_name: String,
        reply: String,
        hint: &'static str,
    },
    #[error("{source_name}: master cannot serve a replica right now, will retry: it replied {reply:?} while {state}")]
    Retryable {
        source_name: String,
        state: HandshakeState,
        reply: String,
    },
    #[error("{source_name}: protocol error while {state}: expected {expected}, got {got:?}")]
    Protocol {
        source_name: String,
        state: HandshakeState,
        expected: &'static str,
        got: String,
    },
}

impl HandshakeError {
    /// Fatal errors need a configuration change (wrong or missing password): retrying would
    /// only hammer the master.
    pub fn is_fatal(&self) -> bool {
        matches!(self, HandshakeError::Auth { .. })
    }
}

/// Opens the TCP connection with `TCP_NODELAY` (ACKs are tiny and must not wait) and TCP
/// keepalive (to notice a vanished master even when the stream is idle), then TLS on it for
/// a `rediss://` master.
pub async fn connect(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<SourceStream, HandshakeError> {
    let name = endpoint.to_string();
    let fut = TcpStream::connect((endpoint.host.as_str(), endpoint.port));
    let stream = match tokio::time::timeout(timeout, fut).await {
        Err(_) => {
            return Err(HandshakeError::Connect {
                source_name: name,
                err: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect timed out after {timeout:?}"),
                ),
            })
        }
        Ok(Err(err)) => {
            return Err(HandshakeError::Connect {
                source_name: name,
                err,
            })
        }
        Ok(Ok(s)) => s,
    };
    let sock = socket2::SockRef::from(&stream);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let r = sock
        .set_tcp_nodelay(true)
        .and_then(|_| sock.set_tcp_keepalive(&ka));
    if let Err(err) = r {
        return Err(HandshakeError::Connect {
            source_name: name,
            err,
        });
    }
    start_tls(endpoint, stream, timeout)
        .await
        .map_err(|reason| HandshakeError::Tls {
            source_name: name,
            reason,
        })
}

/// Runs the handshake on a connected stream.
pub async fn handshake(
    stream: &mut SourceStream,
    cfg: &HandshakeConfig,
) -> Result<Handshake, HandshakeError> {
    let mut hs = Machine {
        stream,
        cfg,
        name: cfg.endpoint.to_string(),
        buf: BytesMut::with_capacity(16 * 1024),
        keepalives: 0,
        state: HandshakeState::Connecting,
    };
    hs.run().await
}

struct Machine<'a> {
    stream: &'a mut SourceStream,
    cfg: &'a HandshakeConfig,
    name: String,
    buf: BytesMut,
    keepalives: u64,
    state: HandshakeState,
}

/// Where a step of the handshake leads.
enum Step {
    /// On to this state.
    Next(HandshakeState),
    /// The master agreed to replicate: the handshake is over.
    Finished(SyncStart),
}

impl Machine<'_> {
    async fn run(&mut self) -> Result<Handshake, HandshakeError> {
        self.state = if self.cfg.endpoint.password.is_some() {
            HandshakeState::SendAuth
        } else {
            HandshakeState::SendPing
        };
        loop {
            tracing::debug!(source = %self.name, state = %self.state, "replica handshake");
            // The state changes only once its step succeeded: errors name the step that failed.
            match self.step().await? {
                Step::Next(state) => self.state = state,
                Step::Finished(start) => return Ok(self.done(start)),
            }
        }
    }

    /// Runs the current state's step: one function per state, as in `syncWithMaster`.
    async fn step(&mut self) -> Result<Step, HandshakeError> {
        let next = match self.state {
            HandshakeState::Connecting | HandshakeState::Done => {
                unreachable!("not a handshake step")
            }
            HandshakeState::SendAuth => self.send_auth().await?,
            HandshakeState::ReceiveAuthReply => self.receive_auth_reply().await?,
            HandshakeState::SendPing => self.send_ping().await?,
            HandshakeState::ReceivePong => self.receive_pong().await?,
            HandshakeState::SendPort => self.send_port().await?,
            HandshakeState::ReceivePortReply => self.receive_port_reply().await?,
            HandshakeState::SendCapa => self.send_capa().await?,
            HandshakeState::ReceiveCapaReply => self.receive_capa_reply().await?,
            HandshakeState::SendVersion => self.send_version().await?,
            HandshakeState::ReceiveVersionReply => self.receive_version_reply().await?,
            HandshakeState::SendPsync => self.send_psync().await?,
            HandshakeState::ReceivePsyncReply => return self.receive_psync_reply().await,
            HandshakeState::SendSync => return self.send_sync().await,
        };
        Ok(Step::Next(next))
    }

    /// `AUTH [user] password`, from the source URL.
    async fn send_auth(&mut self) -> Result<HandshakeState, HandshakeError> {
        let ep = &self.cfg.endpoint;
        let pass = ep.password.clone().unwrap_or_default();
        match &ep.username {
            Some(u) => self.send(&["AUTH", u.as_str(), pass.as_str()]).await?,
            None => self.send(&["AUTH", pass.as_str()]).await?,
        }
        Ok(HandshakeState::ReceiveAuthReply)
    }

    /// Any error reply to `AUTH` is fatal: the credentials are wrong.
    async fn receive_auth_reply(&mut self) -> Result<HandshakeState, HandshakeError> {
        let reply = self.read_line().await?;
        if reply.starts_with('-') {
            return Err(self.auth_error(reply));
        }
        Ok(HandshakeState::SendPing)
    }

    async fn send_ping(&mut self) -> Result<HandshakeState, HandshakeError> {
        self.send(&["PING"]).await?;
        Ok(HandshakeState::ReceivePong)
    }

    /// A permission error is fatal; any other error (e.g. `-LOADING`) is worth a retry.
    async fn receive_pong(&mut self) -> Result<HandshakeState, HandshakeError> {
        let reply = self.read_line().await?;
        if reply.starts_with("-NOAUTH")
            || reply.starts_with("-NOPERM")
            || reply.starts_with("-ERR operation not permitted")
        {
            return Err(self.auth_error(reply));
        }
        if reply.starts_with('-') {
            return Err(self.retryable(reply));
        }
        if !reply.starts_with('+') {
            return Err(self.protocol("+PONG", reply));
        }
        Ok(HandshakeState::SendPort)
    }

    async fn send_port(&mut self) -> Result<HandshakeState, HandshakeError> {
        let port = self.cfg.listening_port.to_string();
        self.send(&["REPLCONF", "listening-port", port.as_str()])
            .await?;
        Ok(HandshakeState::ReceivePortReply)
    }

    async fn receive_port_reply(&mut self) -> Result<HandshakeState, HandshakeError> {
        self.receive_replconf_reply("listening-port").await?;
        Ok(HandshakeState::SendCapa)
    }

    async fn send_capa(&mut self) -> Result<HandshakeState, HandshakeError> {
        self.send(&["REPLCONF", "capa", "eof", "capa", "psync2"])
            .await?;
        Ok(HandshakeState::ReceiveCapaReply)
    }

    async fn receive_capa_reply(&mut self) -> Result<HandshakeState, HandshakeError> {
        self.receive_replconf_reply("capa").await?;
        Ok(HandshakeState::SendVersion)
    }

    /// `REPLCONF version <x.y.z>`: a Valkey 9 master writes a replica's snapshot in the newest
    /// RDB format that replica's declared version loads, and without a declaration it assumes
    /// 7.2 and writes RDB 11, which cannot hold a hash with field TTLs: it then aborts every
    /// full sync (valkey #2735). The relay declares the Valkey version whose format it parses
    /// (`VALKEY080`, 9.0), never a newer one. Redis masters do not know the field.
    async fn send_version(&mut self) -> Result<HandshakeState, HandshakeError> {
        self.send(&["REPLCONF", "version", DECLARED_VALKEY_VERSION])
            .await?;
        Ok(HandshakeState::ReceiveVersionReply)
    }

    /// Redis and Valkey before 8.0 answer `-ERR Unrecognized REPLCONF option`: expected, so
    /// logged at debug level only.
    async fn receive_version_reply(&mut self) -> Result<HandshakeState, HandshakeError> {
        let reply = self.read_line().await?;
        if reply.starts_with('-') {
            tracing::debug!(source = %self.name, %reply, "master does not know REPLCONF version");
        }
        Ok(HandshakeState::SendPsync)
    }

    /// The reply to `REPLCONF <option>`: an error is not critical (old masters do not know
    /// the option), only logged.
    async fn receive_replconf_reply(&mut self, option: &str) -> Result<(), HandshakeError> {
        let reply = self.read_line().await?;
        if reply.starts_with('-') {
            tracing::info!(source = %self.name, %reply,
                "(non critical) master does not understand REPLCONF {option}");
        }
        Ok(())
    }

    /// `PSYNC <replid> <offset>` to resume, `PSYNC ? -1` for a full resync.
    async fn send_psync(&mut self) -> Result<HandshakeState, HandshakeError> {
        match &self.cfg.psync {
            Some((id, off)) => {
                let off = off.to_string();
                self.send(&["PSYNC", id.as_str(), off.as_str()]).await?
            }
            None => self.send(&["PSYNC", "?", "-1"]).await?,
        }
        Ok(HandshakeState::ReceivePsyncReply)
    }

    /// The end of the handshake, unless the master does not know PSYNC: then `SYNC`.
    async fn receive_psync_reply(&mut self) -> Result<Step, HandshakeError> {
        let reply = self.read_line().await?;
        Ok(match self.psync_reply(reply)? {
            Some(start) => Step::Finished(start),
            None => Step::Next(HandshakeState::SendSync),
        })
    }

    async fn send_sync(&mut self) -> Result<Step, HandshakeError> {
        // Redis itself sends the inline form here.
        self.write(b"SYNC\r\n").await?;
        Ok(Step::Finished(SyncStart::LegacySync))
    }

    fn done(&mut self, start: SyncStart) -> Handshake {
        self.state = HandshakeState::Done;
        Handshake {
            start,
            leftover: std::mem::take(&mut self.buf),
            keepalives: self.keepalives,
        }
    }

    /// Interprets the PSYNC reply; `Ok(None)` means "fall back to SYNC".
    fn psync_reply(&self, reply: String) -> Result<Option<SyncStart>, HandshakeError> {
        if reply.starts_with("+FULLRESYNC") {
            // Some services add tokens: read the first three.
            let mut t = reply.split_whitespace();
            let (_, id, off) = (t.next(), t.next(), t.next());
            let (Some(id), Some(off)) = (id, off) else {
                return Err(self.protocol("+FULLRESYNC <replid> <offset>", reply));
            };
            let Ok(offset) = off.parse::<u64>() else {
                return Err(self.protocol("+FULLRESYNC <replid> <offset>", reply));
            };
            return Ok(Some(SyncStart::Full {
                replid: id.to_string(),
                offset,
            }));
        }
        if reply.starts_with("+CONTINUE") {
            let asked = self.cfg.psync.as_ref().map(|(id, _)| id.clone());
            let new = reply.split_whitespace().nth(1).map(str::to_string);
            let Some(replid) = new.or(asked) else {
                return Err(self.protocol("+FULLRESYNC after PSYNC ? -1", reply));
            };
            return Ok(Some(SyncStart::Continue { replid }));
        }
        if reply.starts_with("-NOAUTH") || reply.starts_with("-NOPERM") {
            return Err(self.auth_error(reply));
        }
        if reply.starts_with('-') {
            if reply.to_ascii_lowercase().contains("unknown command") {
                tracing::info!(source = %self.name, %reply,
                    "master does not support PSYNC (Redis < 2.8): falling back to SYNC (no offsets, no resume)");
                return Ok(None);
            }
            return Err(self.retryable(reply));
        }
        Err(self.protocol("+FULLRESYNC, +CONTINUE or an error", reply))
    }

    fn auth_error(&self, reply: String) -> HandshakeError {
        let hint = if reply.starts_with("-NOAUTH") {
            "the master requires a password: add it to the source URL (redis://:password@host:port)"
        } else if reply.starts_with("-NOPERM") || reply.contains("not permitted") {
            "the user lacks permission for the replication commands: ACL SETUSER <user> +psync +replconf +ping (docs/security.md)"
        } else if reply.starts_with("-WRONGPASS") || reply.contains("invalid password") {
            "wrong user name or password"
        } else {
            "check the source URL credentials"
        };
        HandshakeError::Auth {
            source_name: self.name.clone(),
            reply,
            hint,
        }
    }

    fn retryable(&self, reply: String) -> HandshakeError {
        HandshakeError::Retryable {
            source_name: self.name.clone(),
            state: self.state,
            reply,
        }
    }

    fn protocol(&self, expected: &'static str, got: String) -> HandshakeError {
        HandshakeError::Protocol {
            source_name: self.name.clone(),
            state: self.state,
            expected,
            got,
        }
    }

    async fn send(&mut self, args: &[&str]) -> Result<(), HandshakeError> {
        let mut out = BytesMut::new();
        encode_command(&mut out, args);
        self.write(&out).await
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), HandshakeError> {
        let t = self.cfg.io_timeout;
        let write = async {
            self.stream.write_all(data).await?;
            // TLS may hold records back until flushed.
            self.stream.flush().await
        };
        match tokio::time::timeout(t, write).await {
            Err(_) => Err(HandshakeError::Timeout {
                source_name: self.name.clone(),
                state: self.state,
                timeout: t,
            }),
            Ok(Err(err)) => Err(HandshakeError::Io {
                source_name: self.name.clone(),
                state: self.state,
                err,
            }),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Reads one non-empty reply line (without CRLF), skipping bare `\n` keepalives. The
    /// timeout applies per read, so keepalives keep a slow master alive.
    async fn read_line(&mut self) -> Result<String, HandshakeError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line = self.buf.split_to(nl + 1);
                line.truncate(nl);
                if line.last() == Some(&b'\r') {
                    line.truncate(nl - 1);
                }
                if line.is_empty() {
                    self.keepalives += 1;
                    continue;
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.buf.len() > MAX_LINE {
                let got = String::from_utf8_lossy(&self.buf[..128]).into_owned();
                return Err(self.protocol("a reply line", got));
            }
            self.buf.reserve(4096);
            let t = self.cfg.io_timeout;
            match tokio::time::timeout(t, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => {
                    return Err(HandshakeError::Timeout {
                        source_name: self.name.clone(),
                        state: self.state,
                        timeout: t,
                    })
                }
                Ok(Err(err)) => {
                    return Err(HandshakeError::Io {
                        source_name: self.name.clone(),
                        state: self.state,
                        err,
                    })
                }
                Ok(Ok(0)) => {
                    return Err(HandshakeError::Closed {
                        source_name: self.name.clone(),
                        state: self.state,
                    })
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}
