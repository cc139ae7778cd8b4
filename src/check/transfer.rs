//! Will the master complete a full sync for the relay? What a master says beforehand about a
//! transfer it will abort. An aborted transfer is retried with backoff and counted
//! (`redis_relay_full_sync_failures_total`), but when its cause stays it fails every time: the
//! relay never gets a snapshot. Two causes can be read from a master before the relay asks:
//!
//! - **The last BGSAVE failed** (`rdb_last_bgsave_status:err`, e.g. its `dir` is gone or full)
//!   **and the master is disk-based** (`repl-diskless-sync no`): every replica's snapshot is a
//!   BGSAVE into that dir, and the master drops the replica when it fails ("SYNC failed. BGSAVE
//!   child returned an error"). A diskless master streams the snapshot over the socket and is
//!   not affected (both checked on Redis 7.0 with the dir removed).
//! - **`client-output-buffer-limit replica` too small for the writes during the transfer**: the
//!   master keeps every write made after the snapshot's fork for the replica until the
//!   snapshot is sent, and the relay reads the snapshot only as fast as the target applies it.
//!   When that buffer passes the hard limit, or stays above the soft limit for its seconds,
//!   the master closes the link and the next attempt meets the same limit.
//!
//! A master that cannot write the snapshot in the format the relay declares (Valkey 9 with hash
//! field TTLs and a replica declaring less than 9.0) is not predicted here: the relay declares
//! 9.0.0, whose format holds every type Valkey 9.1 has.

use super::probe::{self, human_bytes, Info};
use super::{Lines, Verdict};
use crate::resp::Client;

/// Keys per second of a full sync through the relay, taken low on purpose: the rate into a
/// Redis 7.0 target through the command path (plain commands for a Redis 8 or Valkey 9
/// master) on a busy 2-core machine was 120,000 to 330,000 keys/s (`e2e_bench --versions`,
/// docs/performance.md); a remote or loaded target is slower.
pub const SYNC_KEYS_PER_SEC: f64 = 50_000.0;

/// The master's output buffer limit for replicas (`client-output-buffer-limit`, class
/// `replica` or `slave`); 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimit {
    pub hard: u64,
    pub soft: u64,
    pub soft_secs: u64,
}

/// The replica class of `CONFIG GET client-output-buffer-limit`'s value
/// (`normal 0 0 0 slave 268435456 67108864 60 pubsub ...`).
pub fn parse_replica_limit(value: &str) -> Option<BufferLimit> {
    let words: Vec<&str> = value.split_whitespace().collect();
    words.chunks(4).find_map(|c| match c {
        [class, hard, soft, secs] if matches!(*class, "slave" | "replica") => Some(BufferLimit {
            hard: probe::parse_size(hard)?,
            soft: probe::parse_size(soft)?,
            soft_secs: secs.parse().ok()?,
        }),
        _ => None,
    })
}

/// A disk-based master whose last BGSAVE failed will most likely fail the relay's full sync
/// too. `diskless`: `repl-diskless-sync`, `None` when CONFIG GET is refused.
pub fn judge_bgsave(last_bgsave_ok: bool, diskless: Option<bool>) -> Verdict {
    let how = match diskless {
        Some(true) => "diskless (repl-diskless-sync yes): snapshots go over the socket",
        Some(false) => "disk-based (repl-diskless-sync no): snapshots are a BGSAVE into its dir",
        None => "maybe disk-based (CONFIG GET repl-diskless-sync refused)",
    };
    if last_bgsave_ok || diskless == Some(true) {
        let last = if last_bgsave_ok {
            "last BGSAVE ok"
        } else {
            "its last BGSAVE failed, which a socket transfer does not need"
        };
        return Verdict::pass(format!("{how}; {last}"));
    }
    Verdict::warn(
        format!("the master's last BGSAVE failed (rdb_last_bgsave_status:err) and it is {how}; the relay's full sync is such a BGSAVE, and the master drops the relay when it fails, at every attempt"),
        "read the master's log (\"Failed opening the temp RDB file\", \"Background saving error\"): fix its dir or disk (CONFIG GET dir), or send snapshots over the socket: CONFIG SET repl-diskless-sync yes".into(),
    )
}

/// Does the master's replica output buffer hold the writes made while the relay copies
/// `keys` keys at [`SYNC_KEYS_PER_SEC`], at `rate` bytes of writes per second?
pub fn judge_output_buffer(limit: BufferLimit, rate: f64, keys: u64) -> Verdict {
    let secs = keys as f64 / SYNC_KEYS_PER_SEC;
    let need = rate * secs;
    let show = |n: u64| {
        if n == 0 {
            "no limit".to_string()
        } else {
            human_bytes(n)
        }
    };
    let what = format!(
        "client-output-buffer-limit replica: hard {}, soft {} for {} s",
        show(limit.hard),
        show(limit.soft),
        limit.soft_secs
    );
    if rate < 1.0 {
        return Verdict::pass(format!("{what}; no writes measured"));
    }
    let msg = format!("{what}; at {}/s of writes, a full sync of {keys} keys (about {secs:.0} s at {SYNC_KEYS_PER_SEC:.0} keys/s) leaves about {} for the relay in that buffer", human_bytes(rate as u64), human_bytes(need as u64));
    let over_hard = limit.hard > 0 && need > limit.hard as f64;
    // Above the soft limit from soft/rate seconds in until the end of the transfer.
    let over_soft = limit.soft > 0 && secs - limit.soft as f64 / rate > limit.soft_secs as f64;
    if !over_hard && !over_soft {
        return Verdict::pass(msg);
    }
    let mb = ((need * 2.0) as u64).div_ceil(1 << 20).max(1);
    Verdict::warn(
        format!("{msg}: more than the limit, so the master would close the link before the snapshot is sent and every retry would meet the same limit"),
        format!("CONFIG SET client-output-buffer-limit \"replica {mb}mb {mb}mb 0\" on the master for the first sync (twice the estimate; \"replica 0 0 0\" removes the limit), or sync at a quieter time"),
    )
}

/// The `bgsave` and `output-buffer` lines of one source. `rate`: bytes written per second, as
/// measured for the backlog check; `keys`: the source's keys.
pub(super) fn check_transfer(
    conn: &mut Client,
    subject: &str,
    info: &Info,
    rate: f64,
    keys: u64,
    lines: &mut Lines,
) {
    let diskless = match probe::config_get(conn, "repl-diskless-sync") {
        Ok(Ok(v)) => Some(v == "yes"),
        _ => None,
    };
    if let Some(status) = info.get("rdb_last_bgsave_status") {
        lines.verdict(subject, "bgsave", judge_bgsave(status == "ok", diskless));
    }
    // CONFIG GET refused (a least-privilege user): nothing to judge, no line.
    let Ok(Ok(v)) = probe::config_get(conn, "client-output-buffer-limit") else {
        return;
    };
    match parse_replica_limit(&v) {
        Some(limit) => lines.verdict(
            subject,
            "output-buffer",
            judge_output_buffer(limit, rate, keys),
        ),
        None => lines.add(
            super::Status::Warn,
            subject,
            "output-buffer",
            format!("no replica class in client-output-buffer-limit ({v})"),
            Some(
                "make sure the master's replica output buffer holds the writes of a full sync"
                    .into(),
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Status;

    #[test]
    fn replica_class_parsed_both_names() {
        let l = parse_replica_limit("normal 0 0 0 slave 268435456 67108864 60 pubsub 1 2 3");
        assert_eq!(
            l,
            Some(BufferLimit {
                hard: 268435456,
                soft: 67108864,
                soft_secs: 60
            })
        );
        let l = parse_replica_limit("replica 1mb 512kb 5").unwrap();
        assert_eq!((l.hard, l.soft, l.soft_secs), (1 << 20, 512 << 10, 5));
        assert_eq!(parse_replica_limit("normal 0 0 0"), None);
    }

    #[test]
    fn bgsave_warns_only_when_disk_based_or_unknown() {
        assert_eq!(judge_bgsave(true, Some(false)).status, Status::Pass);
        assert_eq!(judge_bgsave(false, Some(true)).status, Status::Pass);
        let v = judge_bgsave(false, Some(false));
        assert_eq!(v.status, Status::Warn);
        assert!(v.fix.unwrap().contains("repl-diskless-sync yes"));
        assert_eq!(judge_bgsave(false, None).status, Status::Warn);
    }

    #[test]
    fn output_buffer_against_the_writes_of_the_transfer() {
        let default = BufferLimit {
            hard: 256 << 20,
            soft: 64 << 20,
            soft_secs: 60,
        };
        // 1M keys: 20 s; 1 MiB/s leaves 20 MiB: under both limits.
        assert_eq!(
            judge_output_buffer(default, (1 << 20) as f64, 1_000_000).status,
            Status::Pass
        );
        // 20 MiB/s: 400 MiB, over the hard limit.
        let v = judge_output_buffer(default, (20 << 20) as f64, 1_000_000);
        assert_eq!(v.status, Status::Warn, "{v:?}");
        assert!(v.fix.unwrap().contains("800mb 800mb 0"));
        // 10M keys: 200 s; 1 MiB/s passes 64 MiB after 64 s and stays above for 136 s > 60.
        assert_eq!(
            judge_output_buffer(default, (1 << 20) as f64, 10_000_000).status,
            Status::Warn
        );
        let none = BufferLimit {
            hard: 0,
            soft: 0,
            soft_secs: 0,
        };
        assert_eq!(
            judge_output_buffer(none, 1e12, 10_000_000).status,
            Status::Pass
        );
        assert_eq!(judge_output_buffer(default, 0.0, 1).status, Status::Pass);
    }
}
