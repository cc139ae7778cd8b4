//! The relay's own control keys on the target (the loss marker, the writer leases): one
//! command at a time on a connection of their own, never through the writers, so that they
//! stay out of the data batches' path. On a Redis Cluster target each key goes to the master
//! of its slot (redirections followed).
//!
//! The connection is opened when first needed and dropped after any error: the next call
//! connects again, so a target that restarted is reached without anything else to do.

use std::time::Duration;

use bytes::Bytes;

use super::cluster::client::{ClusterClient, ClusterError};
use crate::endpoint::Endpoint;
use crate::resp::client::{Client, ClientError};
use crate::resp::Reply;

/// Why a control command did not get its answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("target {target}: {command}: {cause}")]
    Io {
        target: String,
        command: String,
        cause: std::io::Error,
    },
    #[error("target {target}: {command} refused: {reply}")]
    Refused {
        target: String,
        command: String,
        reply: String,
    },
}

/// A lazily opened connection for control keys in database 0.
pub struct ControlConn {
    seeds: Vec<Endpoint>,
    cluster: bool,
    timeout: Duration,
    plain: Option<Client>,
    slotted: Option<ClusterClient>,
}

impl ControlConn {
    /// For the target reached through `seeds` (a standalone target: the first); `cluster`:
    /// it is a Redis Cluster.
    pub fn new(seeds: Vec<Endpoint>, cluster: bool, timeout: Duration) -> ControlConn {
        ControlConn {
            seeds,
            cluster,
            timeout,
            plain: None,
            slotted: None,
        }
    }

    /// The target's name in messages.
    pub fn target(&self) -> String {
        self.seeds
            .first()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    /// Run `args` (whose key is `key`) in database 0. An error reply is returned as
    /// [`ControlError::Refused`]; any other failure drops the connection.
    pub fn call(&mut self, key: &[u8], args: &[&[u8]]) -> Result<Reply, ControlError> {
        let r = if self.cluster {
            self.call_cluster(key, args)
        } else {
            self.call_plain(args)
        };
        if r.is_err() {
            self.plain = None;
            self.slotted = None;
        }
        match r? {
            Reply::Error(e) => Err(ControlError::Refused {
                target: self.target(),
                command: describe(args),
                reply: String::from_utf8_lossy(&e).into_owned(),
            }),
            reply => Ok(reply),
        }
    }

    fn call_plain(&mut self, args: &[&[u8]]) -> Result<Reply, ControlError> {
        let io = |target: String, command: String| {
            move |cause| ControlError::Io {
                target,
                command,
                cause,
            }
        };
        if self.plain.is_none() {
            let mut c = Client::connect(&self.seeds[0], self.timeout)?;
            let t = Some(self.timeout);
            let _ = c.stream.set_read_timeout(t);
            let _ = c.stream.set_write_timeout(t);
            let r = c
                .call(&["SELECT", "0"])
                .map_err(io(self.target(), "SELECT 0".into()))?;
            if let Reply::Error(e) = r {
                return Err(ControlError::Refused {
                    target: self.target(),
                    command: "SELECT 0".into(),
                    reply: String::from_utf8_lossy(&e).into_owned(),
                });
            }
            self.plain = Some(c);
        }
        let (target, command) = (self.target(), describe(args));
        let c = self.plain.as_mut().expect("connected above");
        c.call(args).map_err(io(target, command))
    }

    fn call_cluster(&mut self, key: &[u8], args: &[&[u8]]) -> Result<Reply, ControlError> {
        if self.slotted.is_none() {
            self.slotted = Some(ClusterClient::connect(&self.seeds, self.timeout)?);
        }
        let c = self.slotted.as_mut().expect("connected above");
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a)).collect();
        Ok(c.call_key(0, key, &args)?)
    }
}

/// The command's name and key for messages (never the values: they may be long).
fn describe(args: &[&[u8]]) -> String {
    args.iter()
        .take(2)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
