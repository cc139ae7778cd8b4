//! What the apply path needs to know about the target: its version and the newest RDB
//! version its RESTORE accepts.

use std::time::Duration;

use super::cluster::{kind_of, TargetKind};
use crate::endpoint::Endpoint;
use crate::resp::client::{info_field, Client};
use crate::resp::ClientError;

/// Why the target cannot be written to at all (each message names the target).
#[derive(Debug, thiserror::Error)]
pub enum TargetUnusable {
    /// It cannot be reached or refused the login.
    #[error(transparent)]
    Connect(#[from] ClientError),
    #[error("target {target}: INFO failed: {cause}")]
    Info {
        target: String,
        cause: std::io::Error,
    },
    /// No target address was given (a bug of the caller: options require one).
    #[error("no target address")]
    NoSeed,
}

/// What the apply path needs to know about the target.
#[derive(Debug, Clone)]
pub struct TargetInfo {
    /// `redis_version` (Valkey reports 7.2.4 there, frozen).
    pub version: String,
    /// `valkey_version`, on Valkey only.
    pub valkey_version: Option<String>,
    /// One Redis, or a Redis Cluster (detected unless `--target-kind` says).
    pub kind: TargetKind,
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

    /// Hash field TTLs (`HPEXPIREAT`): Redis 7.4+, Valkey 9.0+.
    pub fn has_field_ttl(&self) -> bool {
        has_field_ttl(&self.version, self.valkey_version.as_deref())
    }

    /// `Redis 7.0.15` or `Valkey 9.1.2`, for messages.
    pub fn product(&self) -> String {
        server_product(&self.version, self.valkey_version.as_deref())
    }
}

/// A server's version as its `INFO server` gives it: `redis_version`, and `valkey_version` on
/// Valkey (whose `redis_version` stays 7.2.4 whatever its release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    pub redis: String,
    pub valkey: Option<String>,
}

impl ServerVersion {
    /// From the two INFO fields (a missing `redis_version` reads as 0.0.0).
    pub fn new(redis: Option<&String>, valkey: Option<&String>) -> Self {
        ServerVersion {
            redis: redis.cloned().unwrap_or_else(|| "0.0.0".into()),
            valkey: valkey.cloned(),
        }
    }

    /// The RDB version the server writes and loads at most.
    pub fn rdb(&self) -> u32 {
        server_rdb_version(&self.redis, self.valkey.as_deref())
    }

    /// Hash field TTLs: Redis 7.4+, Valkey 9.0+.
    pub fn has_field_ttl(&self) -> bool {
        has_field_ttl(&self.redis, self.valkey.as_deref())
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&server_product(&self.redis, self.valkey.as_deref()))
    }
}

/// Whether a server of these INFO versions holds hash field TTLs: Redis 7.4+, Valkey 9.0+.
pub fn has_field_ttl(redis_version: &str, valkey_version: Option<&str>) -> bool {
    match valkey_version {
        Some(v) => version_tuple(v) >= (9, 0),
        None => version_tuple(redis_version) >= (7, 4),
    }
}

/// `Redis <redis_version>`, or `Valkey <valkey_version>` when the server says it is Valkey.
pub fn server_product(redis_version: &str, valkey_version: Option<&str>) -> String {
    match valkey_version {
        Some(v) => format!("Valkey {v}"),
        None => format!("Redis {redis_version}"),
    }
}

/// The RDB version a server writes and loads at most, from its INFO versions: Valkey 9 has
/// its own (80); Valkey 7.2 to 8.1 write Redis 7.2's (11), whatever `redis_version` says.
pub fn server_rdb_version(redis_version: &str, valkey_version: Option<&str>) -> u32 {
    match valkey_version.map(version_tuple) {
        Some(v) if v >= (9, 0) => crate::rdb::VALKEY_RDB_VERSION,
        Some(_) => 11,
        None => rdb_version_for(redis_version),
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

impl TargetInfo {
    /// Connect to the first seed that answers and learn what the target is and accepts,
    /// before any writer connects. The last seed's error is returned when none answers.
    pub fn probe(
        seeds: &[Endpoint],
        forced: Option<TargetKind>,
        timeout: Duration,
    ) -> Result<TargetInfo, TargetUnusable> {
        let mut last = TargetUnusable::NoSeed;
        for seed in seeds {
            match Self::probe_one(seed, forced, timeout) {
                Ok(info) => return Ok(info),
                Err(e) => {
                    tracing::debug!(seed = %seed, "target seed did not answer: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    fn probe_one(
        target: &Endpoint,
        forced: Option<TargetKind>,
        timeout: Duration,
    ) -> Result<TargetInfo, TargetUnusable> {
        let mut conn = Client::connect(target, timeout)?;
        let info_failed = |cause| TargetUnusable::Info {
            target: target.to_string(),
            cause,
        };
        let mut info = TargetInfo::read(&mut conn).map_err(info_failed)?;
        info.kind = kind_of(&mut conn, forced).map_err(info_failed)?;
        Ok(info)
    }

    /// `INFO server` facts of a connected server.
    pub fn read(conn: &mut Client) -> std::io::Result<TargetInfo> {
        let text = conn
            .call(&["INFO", "server"])?
            .as_text()
            .unwrap_or_default();
        let version = info_field(&text, "redis_version").unwrap_or_else(|| "0.0.0".into());
        let valkey_version = info_field(&text, "valkey_version");
        let rdb_version = server_rdb_version(&version, valkey_version.as_deref());
        Ok(TargetInfo {
            version,
            valkey_version,
            kind: TargetKind::Standalone,
            rdb_version,
        })
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
