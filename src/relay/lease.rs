//! The writer lease: one relay writes a source's records on a target.
//!
//! Two relays with different state dirs replicating the same master into the same target
//! would write the same record keys: each would take the other's records for its own, skip
//! what it never applied, and both would apply the stream. The lock of the state dir
//! ([`super::state_lock`]) cannot see this; the target can. Each relay holds, per source, a
//! key `<prefix>lease:<source>` on the target with its identity (the state dir's id, host,
//! PID, state dir) and a TTL, renewed by a thread of its own every third of the TTL, out of
//! the data batches' path. A relay that finds another identity there refuses to start and
//! names it. A lease left by a killed relay expires after its TTL; a restart on the same
//! state dir (same id) takes its own lease over at once. A clean shutdown deletes it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::resp::Reply;
use crate::target::control::{ControlConn, ControlError};

/// The file in the state dir that holds its id (created once).
pub const ID_FILE: &str = "relay.id";

/// Why a lease could not be taken or kept.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaseError {
    #[error("source {source_name}: another relay writes this source's records on the target: its lease {key} is held by {holder} (expires in {ttl_ms} ms unless renewed); one relay per source and target: stop the other one, or wait for its lease to expire if it was killed")]
    Held {
        source_name: String,
        key: String,
        holder: String,
        ttl_ms: i64,
    },
    #[error("source {source_name}: cannot take the writer lease {key}: {cause}")]
    Target {
        source_name: String,
        key: String,
        cause: String,
    },
    #[error("cannot read or create the state dir's id {path}: {cause}")]
    Id { path: String, cause: String },
}

/// The state dir's id: random, written once, so that a restart on the same state dir is the
/// same writer.
pub fn state_dir_id(dir: &Path) -> Result<String, LeaseError> {
    let path = dir.join(ID_FILE);
    let err = |cause: std::io::Error| LeaseError::Id {
        path: path.display().to_string(),
        cause: cause.to_string(),
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let id = crate::pipeline::dispatcher::run_id().to_string();
    std::fs::write(&path, format!("{id}\n")).map_err(err)?;
    Ok(id)
}

/// `id=<state dir id> host=<host> pid=<pid> state-dir=<dir>`: the id decides, the rest is
/// for the operator.
pub fn identity(id: &str, dir: &Path) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    format!(
        "id={id} host={host} pid={} state-dir={}",
        std::process::id(),
        dir.display()
    )
}

/// The id in an identity (`None`: not one of ours).
fn id_of(identity: &[u8]) -> Option<&str> {
    std::str::from_utf8(identity)
        .ok()?
        .split(' ')
        .next()?
        .strip_prefix("id=")
}

/// `<prefix>lease:<source>`.
pub fn lease_key(prefix: &str, source: &str) -> String {
    format!("{prefix}lease:{source}")
}

/// The leases of this relay's sources on one target.
pub struct Leases {
    conn: ControlConn,
    /// (source, key) per source.
    keys: Vec<(String, String)>,
    id: String,
    identity: String,
    ttl: Duration,
}

impl Leases {
    pub fn new(
        conn: ControlConn,
        prefix: &str,
        sources: &[String],
        id: String,
        identity: String,
        ttl: Duration,
    ) -> Leases {
        Leases {
            conn,
            keys: sources
                .iter()
                .map(|s| (s.clone(), lease_key(prefix, s)))
                .collect(),
            id,
            identity,
            ttl,
        }
    }

    /// Take or renew every lease; fails naming the first held by another relay.
    pub fn renew(&mut self) -> Result<(), LeaseError> {
        for i in 0..self.keys.len() {
            self.renew_one(i)?;
        }
        Ok(())
    }

    fn renew_one(&mut self, i: usize) -> Result<(), LeaseError> {
        let (source, key) = self.keys[i].clone();
        let target = |cause: ControlError| LeaseError::Target {
            source_name: source.clone(),
            key: key.clone(),
            cause: cause.to_string(),
        };
        let ttl = self.ttl.as_millis().max(1).to_string();
        let (k, me) = (key.as_bytes(), self.identity.as_bytes());
        let set = [b"SET", k, me, b"PX", ttl.as_bytes(), b"NX"];
        // A refused SET (a target out of memory) still lets the holder be read below: another
        // relay's lease is found whatever the target's memory.
        let taken = self.conn.call(k, &set);
        if let Ok(Reply::Simple(_)) = taken {
            return Ok(());
        }
        // Held: by ourselves (renewal, or a restart on the same state dir) or another relay.
        let held = match self.conn.call(k, &[b"GET", k]).map_err(target)? {
            Reply::Bulk(v) => v,
            _ => None,
        };
        match held {
            Some(v) if id_of(&v) != Some(self.id.as_str()) => {
                let ttl_ms = match self.conn.call(k, &[b"PTTL", k]) {
                    Ok(Reply::Integer(n)) => n,
                    _ => -1,
                };
                Err(LeaseError::Held {
                    source_name: source.clone(),
                    key: key.clone(),
                    holder: String::from_utf8_lossy(&v).into_owned(),
                    ttl_ms,
                })
            }
            // Ours, or expired between the two commands: (re)write it, unless the target
            // refused the first write.
            _ => {
                taken.map_err(target)?;
                let set = [b"SET", k, me, b"PX", ttl.as_bytes()];
                self.conn.call(k, &set).map_err(target)?;
                Ok(())
            }
        }
    }

    /// Delete the leases still ours (a clean shutdown: another relay may start at once).
    pub fn release(&mut self) {
        for (_, key) in self.keys.clone() {
            let k = key.as_bytes();
            if let Ok(Reply::Bulk(Some(v))) = self.conn.call(k, &[b"GET", k]) {
                if id_of(&v) == Some(self.id.as_str()) {
                    let _ = self.conn.call(k, &[b"DEL", k]);
                }
            }
        }
    }

    /// Renew every third of the TTL on a thread of its own until `stop`; a lease found held
    /// by another relay lands in `lost` (the relay stops with it). The leases are released
    /// when the thread ends.
    pub fn keep(
        mut self,
        stop: Arc<AtomicBool>,
        lost: Arc<Mutex<Option<LeaseError>>>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("relay-lease".into())
            .spawn(move || {
                let period = self.ttl / 3;
                let mut next = Instant::now() + period;
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(50));
                    if Instant::now() < next {
                        continue;
                    }
                    next = Instant::now() + period;
                    match self.renew() {
                        Ok(()) => {}
                        Err(e @ LeaseError::Held { .. }) => {
                            tracing::error!("{e}");
                            *lost.lock() = Some(e);
                            return;
                        }
                        // The target away: the writers wait for it too; retried next period.
                        Err(e) => tracing::warn!("writer lease: {e}"),
                    }
                }
                self.release();
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_decides_and_survives_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let id = state_dir_id(dir.path()).unwrap();
        assert_eq!(state_dir_id(dir.path()).unwrap(), id);
        let me = identity(&id, dir.path());
        assert_eq!(id_of(me.as_bytes()), Some(id.as_str()));
        assert!(me.contains(&format!("pid={}", std::process::id())), "{me}");
        assert_eq!(id_of(b"garbage"), None);
    }
}
