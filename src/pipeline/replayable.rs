//! Which replicated commands may be applied twice.
//!
//! Why: every stream batch carries its exactly-once record, and a batch runs as one
//! `MULTI`/`EXEC` with it so that the target holds both or neither. That transaction costs the
//! target about 45% more time per command (measured: 800,000 pipelined writes in 0.56-0.61 s
//! plainly, 0.82-0.96 s in 512-command transactions). A batch made only of commands that set
//! state regardless of what was there (`SET` without conditions or relative TTLs, `HSET`,
//! `SADD`, `DEL`, ...) needs no transaction: if the connection or the relay dies between its
//! commands and its record, the batch is sent again after the last record, and running such
//! commands again, followed by everything after them in order, leaves the same data. The
//! record still goes last on the same connection, so a record on the target still means that
//! its batch ran.

use bytes::Bytes;

/// True when `args` (a command of the replication stream, `upper` its upper-case name) may be
/// run again after it ran, provided every later command of its keys runs again after it.
/// Conditional forms (`NX`, `XX`, `GT`, `LT`), relative expiry times and anything that reads
/// before it writes (`INCR`, `LPUSH`, `APPEND`, scripts, ...) are not. Nor are `PEXPIREAT`,
/// `EXPIREAT` and `PERSIST`: they change a key without setting it, so run again they can hit a
/// key that a later `SREM` of its last member had deleted on the master, and that the `SREM`,
/// run again, no longer deletes (`tests/replayable_redis.rs` found it).
pub fn replayable(upper: &[u8], args: &[Bytes]) -> bool {
    let opts = |from: usize| args.iter().skip(from);
    match upper {
        b"DEL" | b"UNLINK" | b"HDEL" | b"SREM" | b"ZREM" => args.len() >= 2,
        b"HSET" | b"HMSET" => args.len() >= 4 && args.len().is_multiple_of(2),
        b"MSET" => args.len() >= 3 && args.len() % 2 == 1,
        b"SADD" => args.len() >= 3,
        // SET key value [KEEPTTL | EXAT s | PXAT ms] [GET]
        b"SET" => {
            let mut it = opts(3);
            while let Some(o) = it.next() {
                if o.eq_ignore_ascii_case(b"KEEPTTL") || o.eq_ignore_ascii_case(b"GET") {
                    continue;
                }
                if o.eq_ignore_ascii_case(b"PXAT") || o.eq_ignore_ascii_case(b"EXAT") {
                    if it.next().is_none() {
                        return false;
                    }
                    continue;
                }
                return false;
            }
            args.len() >= 3
        }
        // ZADD key [CH] score member [score member ...]
        b"ZADD" => {
            let flags = opts(2)
                .take_while(|a| a.first().is_some_and(|c| c.is_ascii_alphabetic()))
                .collect::<Vec<_>>();
            let pairs = args.len().saturating_sub(2 + flags.len());
            flags.iter().all(|f| f.eq_ignore_ascii_case(b"CH"))
                && pairs >= 2
                && pairs.is_multiple_of(2)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(cmd: &str) -> bool {
        let args: Vec<Bytes> = cmd
            .split(' ')
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        replayable(&args[0].to_ascii_uppercase(), &args)
    }

    #[test]
    fn assignments_are_replayable() {
        for c in [
            "SET k v",
            "set k v PXAT 1700000000000",
            "SET k v KEEPTTL",
            "SET k v EXAT 1700000000 GET",
            "HSET h f v f2 v2",
            "HMSET h f v",
            "MSET a 1 b 2",
            "SADD s a b",
            "SREM s a",
            "ZADD z 1 a 2.5 b",
            "ZADD z CH 1 a",
            "ZADD z -1 a",
            "ZREM z a",
            "DEL a b",
            "UNLINK a",
            "HDEL h f",
        ] {
            assert!(check(c), "{c}");
        }
    }

    #[test]
    fn the_rest_is_not() {
        for c in [
            "SET k v EX 10",
            "SET k v PX 10",
            "SET k v NX",
            "SET k v XX",
            "SET k",
            "SET k v PXAT",
            "INCR k",
            "INCRBY k 2",
            "LPUSH l a",
            "RPUSH l a",
            "LPOP l",
            "APPEND k v",
            "HINCRBY h f 1",
            "ZINCRBY z 1 a",
            "ZADD z NX 1 a",
            "ZADD z GT 1 a",
            "ZADD z INCR 1 a",
            "ZADD z 1",
            "PEXPIREAT k 1700000000000",
            "EXPIREAT k 1700000000",
            "PERSIST k",
            "EXPIRE k 10",
            "MSETNX a 1",
            "HSETNX h f v",
            "EVAL x 0",
            "SETRANGE k 0 v",
            "DEL",
            "HSET h f",
            "MSET a",
        ] {
            assert!(!check(c), "{c}");
        }
    }
}
