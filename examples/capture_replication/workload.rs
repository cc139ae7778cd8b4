//! The command workload run on the master while a capture records the stream: the usual
//! writes of every type, transactions, scripts, functions, flushes, the modern hash commands
//! (HSETEX, HGETEX, HGETDEL, HEXPIRE, HPERSIST, HPEXPIREAT) where the server has them, and
//! short TTLs (keys and hash fields) that expire during the capture. Relative TTLs are 75
//! years; the master propagates them as absolute times, so the captures stay valid.

use std::time::Duration;

use redis_relay::resp::{Client, Reply};

use crate::dataset::{Facts, Y2100_MS, Y2200_MS};
use crate::{cmd, Res};

const LONG_TTL_S: &str = "2365200000";
const LONG_TTL_MS: &str = "2365200000000";

pub fn run(c: &mut Client, facts: &Facts) -> Res<()> {
    strings_and_keys(c)?;
    collections(c)?;
    if facts.field_ttls {
        field_ttl_commands(c, facts)?;
    }
    streams(c)?;
    transactions_and_scripts(c)?;
    short_ttls(c, facts)?;
    Ok(())
}

fn strings_and_keys(c: &mut Client) -> Res<()> {
    cmd!(c, "SET", "wl:str", "value")?;
    cmd!(c, "SET", "wl:ex", "v", "EX", LONG_TTL_S)?;
    cmd!(c, "SETEX", "wl:setex", LONG_TTL_S, "v")?;
    cmd!(c, "APPEND", "wl:str", "-more")?;
    cmd!(c, "INCR", "int:1")?;
    cmd!(c, "INCRBYFLOAT", "int:2", "1.25")?;
    cmd!(c, "DECRBY", "int:8", "5")?;
    cmd!(c, "MSET", "wl:m1", "1", "wl:m2", "2")?;
    cmd!(c, "SETNX", "wl:m1", "not set")?;
    cmd!(c, "GETDEL", "wl:m2")?;
    cmd!(c, "GETEX", "str:short", "EX", LONG_TTL_S)?;
    cmd!(c, "EXPIRE", "str:raw100", LONG_TTL_S)?;
    cmd!(c, "PERSIST", "ttl:str")?;
    cmd!(c, "DEL", "str:big:random", "no-such-key")?;
    cmd!(c, "UNLINK", "str:len16384")?;
    cmd!(c, "RENAME", "str:lzf", "wl:renamed")?;
    cmd!(c, "MOVE", "notint:0", "1")?;
    cmd!(c, "COPY", "str:utf8", "wl:copied", "DB", "5")?;
    cmd!(c, "SETRANGE", "wl:str", "2", b"\0\r\n")?;
    cmd!(c, "SELECT", "5")?;
    cmd!(c, "SET", "wl:in5", "five")?;
    cmd!(c, "SELECT", "9")?;
    cmd!(c, "SET", "wl:scratch", "gone soon")?;
    cmd!(c, "FLUSHDB")?;
    cmd!(c, "SELECT", "0")?;
    cmd!(c, "SWAPDB", "10", "11")?;
    Ok(())
}

fn collections(c: &mut Client) -> Res<()> {
    cmd!(c, "LPUSH", "list:big", "head")?;
    cmd!(c, "RPUSH", "list:big", "tail")?;
    cmd!(c, "LPOP", "list:small")?;
    cmd!(c, "RPOP", "list:small")?;
    cmd!(c, "LINSERT", "list:big", "BEFORE", "item:1", "inserted")?;
    cmd!(c, "LSET", "list:big", "5", "set")?;
    cmd!(c, "LTRIM", "list:compressed", "0", "1499")?;
    cmd!(c, "LMOVE", "list:small", "wl:list", "LEFT", "RIGHT")?;
    cmd!(c, "BLPOP", "list:small", "1")?;
    cmd!(c, "SADD", "set:int16", "70000")?;
    cmd!(c, "SREM", "set:small", "a")?;
    cmd!(c, "SPOP", "set:big")?;
    cmd!(c, "SUNIONSTORE", "wl:union", "set:small", "set:int16")?;
    cmd!(c, "ZADD", "zset:small", "5", "new")?;
    cmd!(c, "ZINCRBY", "zset:big", "2.5", "m3")?;
    cmd!(c, "ZREM", "zset:big", "m4")?;
    cmd!(c, "ZPOPMIN", "zset:same")?;
    cmd!(c, "HSET", "hash:small", "wl", "1", "f", "changed")?;
    cmd!(c, "HDEL", "hash:big", "field7")?;
    cmd!(c, "HINCRBY", "hash:small", "counter", "3")?;
    cmd!(c, "HINCRBYFLOAT", "hash:small", "float", "0.25")?;
    cmd!(c, "PFADD", "hll:sparse", "d")?;
    cmd!(c, "SETBIT", "bitmap:sparse", "7", "1")?;
    Ok(())
}

fn field_ttl_commands(c: &mut Client, facts: &Facts) -> Res<()> {
    cmd!(c, "HSETEX", "wl:fx", "PXAT", Y2100_MS, "FIELDS", "3", "a", "1", "b", "2", "c", "3")?;
    cmd!(c, "HSETEX", "wl:fx", "EX", LONG_TTL_S, "FIELDS", "1", "d", "4")?;
    if facts.hgetdel {
        cmd!(c, "HGETEX", "wl:fx", "PXAT", Y2200_MS, "FIELDS", "1", "a")?;
        cmd!(c, "HGETEX", "wl:fx", "PERSIST", "FIELDS", "1", "b")?;
        cmd!(c, "HGETDEL", "wl:fx", "FIELDS", "1", "c")?;
    }
    cmd!(c, "HEXPIRE", "hash:small", LONG_TTL_S, "FIELDS", "1", "f")?;
    cmd!(
        c,
        "HPEXPIRE",
        "hash:big",
        LONG_TTL_MS,
        "FIELDS",
        "2",
        "field1",
        "field2"
    )?;
    cmd!(
        c,
        "HPEXPIREAT",
        "hash:longvalue",
        Y2200_MS,
        "FIELDS",
        "1",
        "f"
    )?;
    cmd!(c, "HPERSIST", "fttl:small", "FIELDS", "1", "a")?;
    cmd!(c, "HPERSIST", "fttl:big", "FIELDS", "2", "f0", "f2")?;
    cmd!(c, "HSET", "fttl:big", "f4", "overwritten")?;
    cmd!(c, "HDEL", "fttl:keyttl", "y")?;
    Ok(())
}

fn streams(c: &mut Client) -> Res<()> {
    cmd!(
        c,
        "XADD",
        "stream:groups",
        "1700000000000-50",
        "wl",
        "explicit"
    )?;
    cmd!(c, "XADD", "stream:groups", "*", "wl", "auto")?;
    cmd!(c, "XADD", "stream:big", "MAXLEN", "250", "*", "n", "trim")?;
    cmd!(c, "XDEL", "stream:big", "1700000001000-100")?;
    cmd!(c, "XTRIM", "stream:trimmed", "MAXLEN", "5")?;
    cmd!(
        c,
        "XREADGROUP",
        "GROUP",
        "g2",
        "erin",
        "COUNT",
        "2",
        "STREAMS",
        "stream:groups",
        ">"
    )?;
    cmd!(c, "XACK", "stream:groups", "g1", "1700000000000-3")?;
    cmd!(
        c,
        "XCLAIM",
        "stream:groups",
        "g1",
        "frank",
        "0",
        "1700000000000-6"
    )?;
    cmd!(
        c,
        "XAUTOCLAIM",
        "stream:groups",
        "g3",
        "grace",
        "0",
        "0-0",
        "COUNT",
        "1"
    )?;
    cmd!(
        c,
        "XGROUP",
        "SETID",
        "stream:groups",
        "g3",
        "1700000000000-20"
    )?;
    cmd!(c, "XGROUP", "DELCONSUMER", "stream:groups", "g1", "idle")?;
    cmd!(c, "XGROUP", "CREATE", "stream:big", "wg", "0")?;
    cmd!(c, "XGROUP", "DESTROY", "stream:grouponly", "g")?;
    Ok(())
}

fn transactions_and_scripts(c: &mut Client) -> Res<()> {
    cmd!(c, "MULTI")?;
    cmd!(c, "SET", "wl:tx", "1")?;
    cmd!(c, "INCR", "wl:tx")?;
    cmd!(c, "SELECT", "1")?;
    cmd!(c, "SET", "wl:tx-db1", "x")?;
    let exec = cmd!(c, "EXEC")?;
    if !matches!(exec, Reply::Array(Some(_))) {
        return Err(format!("EXEC: {exec:?}").into());
    }
    cmd!(c, "SELECT", "0")?;
    let script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])";
    cmd!(c, "EVAL", script, "2", "wl:eval", "wl:evalcount", "v")?;
    let sha = cmd!(c, "SCRIPT", "LOAD", script)?
        .as_text()
        .unwrap_or_default();
    cmd!(c, "EVALSHA", &sha, "2", "wl:eval", "wl:evalcount", "w")?;
    cmd!(
        c,
        "EVAL",
        "return redis.call('GET', KEYS[1])",
        "1",
        "wl:eval"
    )?;
    cmd!(c, "FCALL", "cap_set", "1", "wl:fcall", "via function")?;
    cmd!(c, "FCALL_RO", "cap_get", "1", "wl:fcall")?;
    cmd!(c, "PUBLISH", "channel", "message")?;
    Ok(())
}

/// Keys and hash fields with TTLs under a second; waits (the master PINGs meanwhile) until
/// they are gone, one key expired lazily by a read, so their deletions are in the stream.
fn short_ttls(c: &mut Client, facts: &Facts) -> Res<()> {
    cmd!(c, "SET", "wl:short1", "v", "PX", "300")?;
    cmd!(c, "SET", "wl:short2", "v", "PX", "400")?;
    cmd!(c, "SELECT", "1")?;
    cmd!(c, "SET", "wl:short-db1", "v", "PX", "300")?;
    cmd!(c, "SELECT", "0")?;
    if facts.field_ttls {
        cmd!(c, "HSET", "wl:fshort", "stays", "1")?;
        cmd!(
            c,
            "HSETEX",
            "wl:fshort",
            "PX",
            "500",
            "FIELDS",
            "1",
            "goes",
            "2"
        )?;
    }
    std::thread::sleep(Duration::from_millis(2500));
    cmd!(c, "GET", "wl:short1")?;
    if facts.field_ttls {
        cmd!(c, "HGETALL", "wl:fshort")?;
    }
    for _ in 0..100 {
        let left = cmd!(c, "EXISTS", "wl:short1", "wl:short2")?.as_int();
        cmd!(c, "SELECT", "1")?;
        let left1 = cmd!(c, "EXISTS", "wl:short-db1")?.as_int();
        cmd!(c, "SELECT", "0")?;
        let field = if facts.field_ttls {
            cmd!(c, "HEXISTS", "wl:fshort", "goes")?.as_int()
        } else {
            Some(0)
        };
        if left == Some(0) && left1 == Some(0) && field == Some(0) {
            std::thread::sleep(Duration::from_millis(1500));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("short-TTL keys did not expire".into())
}
