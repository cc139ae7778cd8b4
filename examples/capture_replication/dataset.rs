//! The deterministic dataset: every type a modern server holds, in its small and large
//! encodings, with expires, hash field TTLs (where the server has them), streams with consumer
//! groups, functions and several databases. Pseudo-random bytes come from SHA-256 in counter
//! mode; every absolute time is far in the future, so the captures stay valid for decades.

use redis_relay::resp::{Client, Reply};
use sha2::{Digest, Sha256};

use crate::Res;

/// 2100-01-01T00:00:00.123Z and 2200-01-01T00:00:00.456Z, in ms.
pub const Y2100_MS: &str = "4102444800123";
pub const Y2200_MS: &str = "7258118400456";

/// Run one command; an error reply is an error (nothing here is expected to fail).
pub fn run(c: &mut Client, args: &[Vec<u8>]) -> Res<Reply> {
    let r = c.call(args)?;
    if let Reply::Error(e) = &r {
        let shown: Vec<String> = args
            .iter()
            .take(4)
            .map(|a| String::from_utf8_lossy(&a[..a.len().min(40)]).into_owned())
            .collect();
        return Err(format!("{shown:?}: {}", String::from_utf8_lossy(e)).into());
    }
    Ok(r)
}

pub fn arg(a: impl AsRef<[u8]>) -> Vec<u8> {
    a.as_ref().to_vec()
}

/// `cmd!(client, "SET", key, value)`: run a command of mixed byte-like arguments.
#[macro_export]
macro_rules! cmd {
    ($c:expr, $($a:expr),+ $(,)?) => {
        $crate::dataset::run($c, &[$($crate::dataset::arg($a)),+])
    };
}

/// `n` pseudo-random bytes named by `label`.
pub fn random(label: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut i: u64 = 0;
    while out.len() < n {
        let mut h = Sha256::new();
        h.update(label.as_bytes());
        h.update(i.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        i += 1;
    }
    out.truncate(n);
    out
}

/// What the server is, and which optional commands it has.
#[derive(Clone)]
pub struct Facts {
    /// `redis` or `valkey`.
    pub name: String,
    pub version: String,
    /// `<name>-<version>`: the output directory.
    pub dir_name: String,
    /// HSETEX/HEXPIRE and friends (Redis 7.4+/8, Valkey 9).
    pub field_ttls: bool,
    /// HGETDEL / HGETEX (Redis 8, Valkey 9).
    pub hgetdel: bool,
}

impl Facts {
    pub fn probe(c: &mut Client) -> Res<Facts> {
        let info = run(c, &[arg("INFO"), arg("server")])?
            .as_text()
            .unwrap_or_default();
        let field = |f: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("{f}:")))
                .map(|v| v.trim().to_string())
        };
        let (name, version) = match field("valkey_version") {
            Some(v) => ("valkey".to_string(), v),
            None => (
                "redis".to_string(),
                field("redis_version").ok_or("no version")?,
            ),
        };
        let mut has = |command: &str| -> Res<bool> {
            Ok(
                match run(c, &[arg("COMMAND"), arg("INFO"), arg(command)])? {
                    // Unknown commands come back as a nil entry.
                    Reply::Array(Some(items)) => {
                        matches!(items.first(), Some(Reply::Array(Some(_))))
                    }
                    _ => false,
                },
            )
        };
        Ok(Facts {
            dir_name: format!("{name}-{version}"),
            field_ttls: has("HSETEX")? && has("HPEXPIREAT")?,
            hgetdel: has("HGETDEL")? && has("HGETEX")?,
            name,
            version,
        })
    }
}

/// Load the whole dataset.
pub fn load(c: &mut Client, facts: &Facts) -> Res<()> {
    strings(c)?;
    lists(c)?;
    sets_and_zsets(c)?;
    hashes(c)?;
    if facts.field_ttls {
        field_ttls(c)?;
    }
    streams(c)?;
    expires_dbs_functions(c)?;
    Ok(())
}

fn strings(c: &mut Client) -> Res<()> {
    let ints = [
        "0",
        "42",
        "-123",
        "127",
        "-32768",
        "2147483647",
        "-9223372036854775808",
        "9223372036854775807",
        "10000",
    ];
    for (i, v) in ints.iter().enumerate() {
        cmd!(c, "SET", format!("int:{i}"), v)?;
    }
    for (i, v) in ["007", "+5", "3.14", "18446744073709551616", " 1", "-0"]
        .iter()
        .enumerate()
    {
        cmd!(c, "SET", format!("notint:{i}"), v)?;
    }
    cmd!(c, "SET", "str:empty", "")?;
    cmd!(c, "SET", "str:short", "hello")?;
    cmd!(c, "SET", "str:embstr44", "e".repeat(44))?;
    cmd!(c, "SET", "str:raw100", "r".repeat(100))?;
    cmd!(c, "SET", "str:binary", random("binary", 300))?;
    cmd!(c, "SET", "str:resp", b"*1\r\n$4\r\nPING\r\n\0\xff")?;
    cmd!(c, "SET", "str:utf8", "h\u{e9}llo w\u{f6}rld \u{1f600}")?;
    cmd!(c, "SET", "str:lzf", "abcdefgh".repeat(500))?;
    for n in [20, 21, 63, 64, 16383, 16384] {
        cmd!(
            c,
            "SET",
            format!("str:len{n}"),
            random(&format!("len{n}"), n)
        )?;
    }
    // Big values: one incompressible (raw in the RDB), one repetitive (LZF-compressed).
    cmd!(c, "SET", "str:big:random", random("big", 64 * 1024))?;
    cmd!(c, "SET", "str:big:lzf", random("block", 4096).repeat(16))?;
    cmd!(c, "SET", b"key:\0\r\n\xff", "binary key name")?;
    cmd!(c, "SET", "", "empty key name")?;
    cmd!(c, "SET", "str:built", "1")?;
    cmd!(c, "INCRBYFLOAT", "str:built", "0.5")?;
    cmd!(c, "APPEND", "str:built", "-appended")?;
    cmd!(c, "SETRANGE", "str:range", "10", "x")?;
    cmd!(c, "SETBIT", "bitmap:sparse", "100000", "1")?;
    let hll: Vec<Vec<u8>> = (0..3000).map(|i| format!("e{i}").into_bytes()).collect();
    let mut args = vec![arg("PFADD"), arg("hll:dense")];
    args.extend(hll);
    run(c, &args)?;
    cmd!(c, "PFADD", "hll:sparse", "a", "b", "c")?;
    Ok(())
}

fn push_all(c: &mut Client, command: &str, key: &str, items: Vec<Vec<u8>>) -> Res<()> {
    for chunk in items.chunks(500) {
        let mut args = vec![arg(command), arg(key)];
        args.extend(chunk.iter().cloned());
        run(c, &args)?;
    }
    Ok(())
}

fn numbered(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}{i}").into_bytes())
        .collect()
}

fn lists(c: &mut Client) -> Res<()> {
    let small = [
        "a",
        "",
        "12",
        "-1",
        "127",
        "128",
        "-32768",
        "8388607",
        "2147483648",
        "-9223372036854775808",
    ];
    push_all(c, "RPUSH", "list:small", small.iter().map(arg).collect())?;
    push_all(
        c,
        "RPUSH",
        "list:lengths",
        [63, 64, 4095, 4096]
            .iter()
            .map(|n| vec![b'l'; *n])
            .collect(),
    )?;
    let mut big = numbered("item:", 3000);
    for (i, v) in big.iter_mut().enumerate() {
        if i % 3 == 0 {
            *v = i.to_string().into_bytes();
        }
    }
    push_all(c, "RPUSH", "list:big", big)?;
    // Inner quicklist nodes LZF-compressed in memory and in the RDB.
    cmd!(c, "CONFIG", "SET", "list-compress-depth", "1")?;
    push_all(
        c,
        "RPUSH",
        "list:compressed",
        numbered("compressed-element-", 2000),
    )?;
    cmd!(c, "CONFIG", "SET", "list-compress-depth", "0")?;
    // Quicklist PLAIN nodes: elements over the packed threshold.
    cmd!(c, "DEBUG", "QUICKLIST-PACKED-THRESHOLD", "1000")?;
    cmd!(
        c,
        "RPUSH",
        "list:plain",
        "small",
        random("plain", 2000),
        "small2"
    )?;
    cmd!(c, "DEBUG", "QUICKLIST-PACKED-THRESHOLD", "1073741824")?;
    Ok(())
}

fn sets_and_zsets(c: &mut Client) -> Res<()> {
    cmd!(c, "SADD", "set:int16", "1", "2", "3", "-300")?;
    cmd!(
        c,
        "SADD",
        "set:int64",
        "1",
        "9223372036854775807",
        "-9223372036854775808"
    )?;
    cmd!(c, "SADD", "set:small", "a", "b", "", "12")?;
    cmd!(c, "SADD", "set:binary", b"\0\xff", b"\r\n", "x".repeat(100))?;
    push_all(c, "SADD", "set:big", numbered("member-", 600))?;
    push_all(c, "SADD", "set:ints:big", numbered("", 1000))?;
    let specials = [
        ("inf", "+inf"),
        ("ninf", "-inf"),
        ("tenth", "0.1"),
        ("neg", "-2.5"),
        ("huge", "1e300"),
        ("tiny", "1e-300"),
        ("pi", "3.141592653589793"),
        ("int", "42"),
    ];
    let mut args = vec![arg("ZADD"), arg("zset:small")];
    for (m, s) in specials {
        args.extend([arg(s), arg(m)]);
    }
    run(c, &args)?;
    let mut args = vec![arg("ZADD"), arg("zset:big")];
    for i in 0..300 {
        args.extend([
            arg(format!("{}", f64::from(i) * 1.25 - 100.0)),
            arg(format!("m{i}")),
        ]);
    }
    args.extend([
        arg("+inf"),
        arg("x".repeat(100)),
        arg("-inf"),
        arg("bottom"),
    ]);
    run(c, &args)?;
    cmd!(c, "ZADD", "zset:same", "1", "b", "1", "a", "1", "c")?;
    Ok(())
}

fn hashes(c: &mut Client) -> Res<()> {
    cmd!(
        c,
        "HSET",
        "hash:small",
        "f",
        "v",
        "",
        "empty-field",
        "empty-value",
        "",
        "n",
        "12"
    )?;
    let mut args = vec![arg("HSET"), arg("hash:big")];
    for i in 0..600 {
        args.extend([arg(format!("field{i}")), arg(format!("value{i}"))]);
    }
    run(c, &args)?;
    cmd!(c, "HSET", "hash:longvalue", "f", "v".repeat(100))?;
    cmd!(c, "HSET", "hash:binary", b"\0\xff", b"\r\n\0")?;
    cmd!(c, "HINCRBY", "hash:small", "counter", "5")?;
    cmd!(c, "HINCRBYFLOAT", "hash:small", "float", "1.5")?;
    Ok(())
}

/// Hashes whose fields have their own TTLs, in every encoding: small (listpack with TTLs),
/// big (hashtable with TTL metadata), with a key TTL too, set by HSETEX.
fn field_ttls(c: &mut Client) -> Res<()> {
    cmd!(c, "HSET", "fttl:small", "a", "1", "b", "2", "c", "3")?;
    cmd!(
        c,
        "HPEXPIREAT",
        "fttl:small",
        Y2100_MS,
        "FIELDS",
        "2",
        "a",
        "b"
    )?;
    let mut args = vec![arg("HSET"), arg("fttl:big")];
    // More fields than any listpack limit (512 on Redis 8), so a hashtable with TTL metadata.
    for i in 0..600 {
        args.extend([arg(format!("f{i}")), arg(format!("v{i}"))]);
    }
    run(c, &args)?;
    let mut args = vec![
        arg("HPEXPIREAT"),
        arg("fttl:big"),
        arg(Y2200_MS),
        arg("FIELDS"),
        arg("300"),
    ];
    args.extend((0..300).map(|i| arg(format!("f{}", i * 2))));
    run(c, &args)?;
    cmd!(c, "HSET", "fttl:keyttl", "x", "1", "y", "2")?;
    cmd!(c, "HPEXPIREAT", "fttl:keyttl", Y2200_MS, "FIELDS", "1", "x")?;
    cmd!(c, "PEXPIREAT", "fttl:keyttl", Y2100_MS)?;
    cmd!(
        c,
        "HSETEX",
        "fttl:hsetex",
        "PXAT",
        Y2100_MS,
        "FIELDS",
        "2",
        "p",
        "1",
        "q",
        "2"
    )?;
    Ok(())
}

fn streams(c: &mut Client) -> Res<()> {
    for i in 1..=30 {
        let id = format!("1700000000000-{i}");
        if i % 3 == 0 {
            cmd!(
                c,
                "XADD",
                "stream:groups",
                &id,
                "f",
                i.to_string(),
                "extra",
                "x"
            )?;
        } else {
            cmd!(c, "XADD", "stream:groups", &id, b"bin\0", random(&id, 20))?;
        }
    }
    cmd!(
        c,
        "XDEL",
        "stream:groups",
        "1700000000000-4",
        "1700000000000-5"
    )?;
    cmd!(c, "XGROUP", "CREATE", "stream:groups", "g1", "0")?;
    cmd!(c, "XGROUP", "CREATE", "stream:groups", "g2", "$")?;
    cmd!(
        c,
        "XGROUP",
        "CREATE",
        "stream:groups",
        "g3",
        "1700000000000-10"
    )?;
    cmd!(
        c,
        "XREADGROUP",
        "GROUP",
        "g1",
        "alice",
        "COUNT",
        "6",
        "STREAMS",
        "stream:groups",
        ">"
    )?;
    cmd!(
        c,
        "XREADGROUP",
        "GROUP",
        "g1",
        "bob",
        "COUNT",
        "3",
        "STREAMS",
        "stream:groups",
        ">"
    )?;
    cmd!(
        c,
        "XACK",
        "stream:groups",
        "g1",
        "1700000000000-1",
        "1700000000000-2"
    )?;
    cmd!(
        c,
        "XCLAIM",
        "stream:groups",
        "g1",
        "carol",
        "0",
        "1700000000000-3"
    )?;
    cmd!(
        c,
        "XREADGROUP",
        "GROUP",
        "g1",
        "alice",
        "COUNT",
        "2",
        "STREAMS",
        "stream:groups",
        "0"
    )?;
    cmd!(c, "XGROUP", "CREATECONSUMER", "stream:groups", "g1", "idle")?;
    cmd!(
        c,
        "XREADGROUP",
        "GROUP",
        "g3",
        "dave",
        "COUNT",
        "2",
        "STREAMS",
        "stream:groups",
        ">"
    )?;
    for i in 1..=300 {
        cmd!(
            c,
            "XADD",
            "stream:big",
            format!("1700000001000-{i}"),
            "n",
            i.to_string()
        )?;
    }
    for i in 1..=40 {
        cmd!(
            c,
            "XADD",
            "stream:trimmed",
            "MAXLEN",
            "10",
            format!("1-{i}"),
            "v",
            "x"
        )?;
    }
    cmd!(c, "XADD", "stream:empty", "5-1", "a", "b")?;
    cmd!(c, "XDEL", "stream:empty", "5-1")?;
    cmd!(
        c,
        "XGROUP",
        "CREATE",
        "stream:grouponly",
        "g",
        "$",
        "MKSTREAM"
    )?;
    cmd!(c, "XADD", "stream:ttl", "7-7", "a", "b")?;
    cmd!(c, "PEXPIREAT", "stream:ttl", Y2200_MS)?;
    Ok(())
}

const LIBRARY: &str = "#!lua name=caplib\n\
redis.register_function('cap_set', function(keys, args) return redis.call('SET', keys[1], args[1]) end)\n\
redis.register_function{function_name='cap_get', callback=function(keys) return redis.call('GET', keys[1]) end, flags={'no-writes'}}\n";

fn expires_dbs_functions(c: &mut Client) -> Res<()> {
    cmd!(c, "SET", "ttl:str", "v", "PXAT", Y2100_MS)?;
    cmd!(c, "RPUSH", "ttl:list", "a", "b")?;
    cmd!(c, "PEXPIREAT", "ttl:list", Y2200_MS)?;
    cmd!(c, "SADD", "ttl:set", "a")?;
    cmd!(c, "PEXPIREAT", "ttl:set", Y2100_MS)?;
    cmd!(c, "ZADD", "ttl:zset", "1", "a")?;
    cmd!(c, "PEXPIREAT", "ttl:zset", Y2100_MS)?;
    cmd!(c, "HSET", "ttl:hash", "a", "1")?;
    cmd!(c, "PEXPIREAT", "ttl:hash", Y2200_MS)?;
    for db in ["1", "5", "15"] {
        cmd!(c, "SELECT", db)?;
        cmd!(c, "SET", "str:short", format!("in db {db}"))?;
        cmd!(c, "RPUSH", format!("list:db{db}"), "x", "y")?;
        cmd!(c, "SET", "ttl:other-db", "v", "PXAT", Y2100_MS)?;
    }
    cmd!(c, "SELECT", "0")?;
    cmd!(c, "FUNCTION", "LOAD", LIBRARY)?;
    Ok(())
}
