//! What a server version supports, learned once from `INFO server`.
//!
//! The reader works against every Redis from 2.4 on, and the commands it may send (`SCAN`,
//! `PTTL`, `PEXPIRETIME`, `XINFO STREAM FULL`, `HPEXPIRETIME`, `FUNCTION LIST`) depend on the
//! version. Keeping every such question here, one named method each, means the rest of the
//! reader asks "does this server have X" and never compares version numbers itself.

use crate::target::info::{has_field_ttl, version_tuple};

/// What the reader knows about the server, from `INFO server`.
#[derive(Debug, Clone)]
pub struct ServerFacts {
    pub version: String,
    pub major_minor: (u32, u32),
    /// `valkey_version` on Valkey, whose `redis_version` stays 7.2.4.
    pub valkey: Option<String>,
}

impl ServerFacts {
    pub fn new(version: &str) -> Self {
        ServerFacts {
            version: version.to_string(),
            major_minor: version_tuple(version),
            valkey: None,
        }
    }

    /// The facts of a server that says it is Valkey `valkey_version` (if given).
    pub fn with_valkey(mut self, valkey_version: Option<&str>) -> Self {
        self.valkey = valkey_version.map(str::to_string);
        self
    }
    fn at_least(&self, major: u32, minor: u32) -> bool {
        self.major_minor >= (major, minor)
    }
    /// `SCAN`, `SSCAN`, `HSCAN` (2.8).
    pub fn has_scan(&self) -> bool {
        self.at_least(2, 8)
    }
    /// `PTTL` (2.6); 2.4 only has second-resolution `TTL`.
    pub fn has_pttl(&self) -> bool {
        self.at_least(2, 6)
    }
    /// `PEXPIRETIME` (7.0): exact absolute expiry.
    pub fn has_pexpiretime(&self) -> bool {
        self.at_least(7, 0)
    }
    /// `XINFO STREAM key FULL` (6.0): PEL delivery times and consumer seen times.
    pub fn has_xinfo_full(&self) -> bool {
        self.at_least(6, 0)
    }
    /// Stream metadata v2 (7.0): first id, max deleted id, entries added, entries read.
    pub fn has_stream_v2(&self) -> bool {
        self.at_least(7, 0)
    }
    /// Functions (7.0).
    pub fn has_functions(&self) -> bool {
        self.at_least(7, 0)
    }
    /// Hash field TTLs (Redis 7.4, Valkey 9.0).
    pub fn has_field_ttl(&self) -> bool {
        has_field_ttl(&self.version, self.valkey.as_deref())
    }
}
