//! Target loss detection: does the target still hold what it acknowledged?
//!
//! Exactly-once rests on the target keeping what it acknowledged. It does not when it is
//! emptied (FLUSHALL/FLUSHDB by someone else, a restart without persistence), restarted from
//! an older save, or failed over to a replica that lost writes. The relay would resume or
//! stream on and the keys written before would be gone without a word.
//!
//! The witness is a marker key per source, `<prefix>marker:<source>` in database 0, holding a
//! generation number. Once a second the source's loop swaps it for the next generation
//! (`SET .. GET`, atomic) and expects to get back the one it wrote last; the checkpoint then
//! written carries the generation. Everything up to the checkpoint's offset was acknowledged
//! before that swap, so:
//! - the marker gone: the target was emptied since the last swap;
//! - an older generation: the target went back in time (an older save, a replica behind);
//! - another value: someone else writes it.
//!
//! The records of the writers cannot serve as this witness on their own: a writer whose keys
//! saw no write keeps an old record, and offsets also advance over PINGs that write nothing,
//! so a record older than the checkpoint is normal. The marker is written by one thread (this
//! loop) and read back in the same atomic command, so no write in flight can make a present
//! marker look lost or a lost one look present. A swap whose reply was lost (the target went
//! away) may have happened: the next check accepts either generation.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::resp::Reply;
use crate::target::control::{ControlConn, ControlError};
use crate::target::writer::PoolState;

/// What to do when the target lost what it acknowledged (`--on-target-loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossPolicy {
    /// Log it, drop the checkpoint and sync the affected source again from a new snapshot.
    #[default]
    Resync,
    /// Stop the relay with the explanation (exit code 1).
    Stop,
}

/// Why the target no longer holds what the relay wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LossReason {
    #[error("the relay's marker key {key} is gone from the target (generation {expected} expected): the target was emptied (FLUSHALL/FLUSHDB, or restarted without persistence)")]
    Emptied { key: String, expected: u64 },
    #[error("the relay's marker key {key} holds generation {found}, older than {expected}: the target holds an older state than it acknowledged (restarted from an older save, or failed over to a replica that lost writes)")]
    Older {
        key: String,
        found: u64,
        expected: u64,
    },
    #[error("the relay's marker key {key} holds {found:?}, not the generation {expected} this relay wrote: another process writes it (two relays for one source?)")]
    Changed {
        key: String,
        found: String,
        expected: u64,
    },
}

impl LossReason {
    /// The `reason` label of `redis_relay_target_loss_total`.
    pub fn label(&self) -> &'static str {
        match self {
            LossReason::Emptied { .. } => "emptied",
            LossReason::Older { .. } => "older",
            LossReason::Changed { .. } => "changed",
        }
    }
}

/// `<prefix>marker:<source>`.
pub fn marker_key(prefix: &str, source: &str) -> String {
    format!("{prefix}marker:{source}")
}

/// One source's marker on the target and what this relay knows of it.
pub struct TargetGuard {
    conn: ControlConn,
    key: String,
    /// The generation this relay wrote last (`None`: none known; the next swap sets one).
    expected: Option<u64>,
    /// A swap whose reply was lost: the target may hold this generation instead.
    attempted: Option<u64>,
    pub policy: LossPolicy,
    /// The writers' reconnect count, and its value at the last check: a writer that had to
    /// reconnect may have found a restarted target, so the check runs at once.
    writers: Option<(Arc<PoolState>, u64)>,
}

impl TargetGuard {
    pub fn new(conn: ControlConn, prefix: &str, source: &str, policy: LossPolicy) -> Self {
        TargetGuard {
            conn,
            key: marker_key(prefix, source),
            expected: None,
            attempted: None,
            policy,
            writers: None,
        }
    }

    /// Check at once whenever one of these writers reconnected.
    pub fn watch_writers(mut self, state: Arc<PoolState>) -> Self {
        let seen = state.reconnects.load(Ordering::Relaxed);
        self.writers = Some((state, seen));
        self
    }

    /// A writer reconnected since the last call.
    pub fn writers_reconnected(&mut self) -> bool {
        let Some((state, seen)) = self.writers.as_mut() else {
            return false;
        };
        let now = state.reconnects.load(Ordering::Relaxed);
        std::mem::replace(seen, now) != now
    }

    /// The generation the target holds as far as this relay knows (what a checkpoint saves).
    pub fn generation(&self) -> Option<u64> {
        self.expected
    }

    /// A new snapshot starts: what the target held before does not matter any more.
    pub fn rearm(&mut self) {
        self.expected = None;
        self.attempted = None;
    }

    /// At start, resuming from a checkpoint that saw generation `saved`: the target must hold
    /// it or a later one (a swap may have happened after the checkpoint was written). A
    /// checkpoint of an earlier version (`None`) gives no verdict.
    pub fn verify_resume(
        &mut self,
        saved: Option<u64>,
    ) -> Result<Option<LossReason>, ControlError> {
        let found = self.get()?;
        let Some(saved) = saved else {
            self.expected = found.as_deref().and_then(parse);
            return Ok(None);
        };
        let verdict = self.judge(found.as_deref(), &[saved], true);
        if verdict.is_none() {
            self.expected = found.as_deref().and_then(parse);
        }
        Ok(verdict)
    }

    /// The periodic check: swap the marker for the next generation and judge what it held.
    pub fn check(&mut self) -> Result<Option<LossReason>, ControlError> {
        let lost_reply = self.attempted;
        let next = self.expected.max(lost_reply).unwrap_or(0) + 1;
        let value = next.to_string();
        // Until the reply comes, the target may hold `next` or not.
        self.attempted = Some(next);
        let old = match self.conn.call(
            self.key.as_bytes(),
            &[b"SET", self.key.as_bytes(), value.as_bytes(), b"GET"],
        )? {
            Reply::Bulk(v) => v,
            other => {
                return Err(ControlError::Io {
                    target: self.conn.target(),
                    command: format!("SET {} GET", self.key),
                    cause: std::io::Error::other(format!("unexpected reply {other:?}")),
                })
            }
        };
        let verdict = match self.expected {
            None => None,
            Some(e) => {
                let mut accept = vec![e];
                accept.extend(lost_reply);
                self.judge(old.as_deref(), &accept, false)
            }
        };
        self.expected = Some(next);
        self.attempted = None;
        Ok(verdict)
    }

    fn get(&mut self) -> Result<Option<Bytes>, ControlError> {
        match self
            .conn
            .call(self.key.as_bytes(), &[b"GET", self.key.as_bytes()])?
        {
            Reply::Bulk(v) => Ok(v),
            other => Err(ControlError::Io {
                target: self.conn.target(),
                command: format!("GET {}", self.key),
                cause: std::io::Error::other(format!("unexpected reply {other:?}")),
            }),
        }
    }

    /// The verdict on `found` when one of `accept` is expected (`or_later`: a later
    /// generation is fine too).
    fn judge(&self, found: Option<&[u8]>, accept: &[u64], or_later: bool) -> Option<LossReason> {
        let expected = accept.iter().copied().max().unwrap_or(0);
        let key = self.key.clone();
        let Some(found) = found else {
            return Some(LossReason::Emptied { key, expected });
        };
        match parse(found) {
            Some(g) if accept.contains(&g) || (or_later && g >= expected) => None,
            Some(g) if g < expected => Some(LossReason::Older {
                key,
                found: g,
                expected,
            }),
            _ => Some(LossReason::Changed {
                key,
                found: String::from_utf8_lossy(found).into_owned(),
                expected,
            }),
        }
    }
}

fn parse(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> TargetGuard {
        // Never connected: `judge` reads nothing from the target.
        let conn = ControlConn::new(Vec::new(), false, std::time::Duration::from_secs(1));
        TargetGuard::new(conn, "p:", "s:1", LossPolicy::Resync)
    }

    #[test]
    fn verdicts_name_what_the_marker_says() {
        let g = guard();
        assert_eq!(g.key, "p:marker:s:1");
        assert_eq!(g.judge(Some(b"5"), &[5], false), None);
        // A lost reply: either generation is fine.
        assert_eq!(g.judge(Some(b"6"), &[5, 6], false), None);
        // At start a later generation than the checkpoint's is fine.
        assert_eq!(g.judge(Some(b"9"), &[5], true), None);
        let gone = g.judge(None, &[5], false).unwrap();
        assert_eq!(gone.label(), "emptied");
        assert!(gone.to_string().contains("FLUSHALL"), "{gone}");
        let older = g.judge(Some(b"3"), &[5], true).unwrap();
        assert_eq!(older.label(), "older");
        assert!(older.to_string().contains("older save"), "{older}");
        assert_eq!(g.judge(Some(b"9"), &[5], false).unwrap().label(), "changed");
        assert_eq!(g.judge(Some(b"x"), &[5], true).unwrap().label(), "changed");
    }
}
