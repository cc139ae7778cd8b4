//! `--dataset`: which data set the normal run syncs. The value-heavy one (the default, the
//! README's figures) is dominated by the bytes of its values; the key-heavy one (issue 18) by
//! the number of its keys, where a target's per-key work (dictionary insert, object creation,
//! command dispatch) is what a full sync waits for.

use super::*;

/// A data set of the normal run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dataset {
    /// 90% strings of 16 to 512 bytes, 10% hashes, lists, sets and sorted sets of 10 to 1,000
    /// elements (see `generate`).
    ValueHeavy,
    /// 90% strings of 100 bytes (as `DEBUG POPULATE` writes them), 10% hashes, lists and
    /// sorted sets of 20 elements (listpack-encoded: small aggregates).
    KeyHeavy,
}

impl Dataset {
    /// `--dataset value-heavy|key-heavy|both`.
    pub fn parse(s: &str) -> Vec<Dataset> {
        match s {
            "value-heavy" => vec![Dataset::ValueHeavy],
            "key-heavy" => vec![Dataset::KeyHeavy],
            "both" => vec![Dataset::ValueHeavy, Dataset::KeyHeavy],
            other => panic!("--dataset {other}: expected value-heavy, key-heavy or both"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dataset::ValueHeavy => "value-heavy",
            Dataset::KeyHeavy => "key-heavy",
        }
    }

    /// The table's "Data:" description, after the counts.
    pub fn describe(self) -> &'static str {
        match self {
            Dataset::ValueHeavy => {
                "90% strings of 16–512 bytes, 10% hashes/lists/sets/zsets of 10–1000 elements"
            }
            Dataset::KeyHeavy => {
                "key-heavy: 90% strings of 100 bytes, 10% hashes/lists/zsets of 20 elements"
            }
        }
    }
}

/// Elements per aggregate of the key-heavy set.
const AGG_ELEMENTS: usize = 20;
/// Bytes per string value of the key-heavy set (`DEBUG POPULATE <n> <prefix> 100`).
const STRING_BYTES: usize = 100;

/// The command that creates key number `i` of the key-heavy set, appended to `out`; returns
/// its element count. Every tenth key is an aggregate (a hash, list or sorted set in turn),
/// the others 100-byte strings.
pub fn key_heavy_command(rng: &mut Rng, i: u64, out: &mut BytesMut, val: &mut Vec<u8>) -> u64 {
    if !i.is_multiple_of(10) {
        rng.fill(val, STRING_BYTES);
        let k = format!("key:{i}");
        encode_command(out, &[b"SET".as_slice(), k.as_bytes(), val]);
        return 1;
    }
    let kind = (i / 10) % 3;
    let (cmd, prefix) = match kind {
        0 => ("HSET", "hash"),
        1 => ("RPUSH", "list"),
        _ => ("ZADD", "zset"),
    };
    let mut args: Vec<Vec<u8>> = vec![cmd.into(), format!("{prefix}:{i}").into_bytes()];
    for j in 0..AGG_ELEMENTS {
        rng.fill(val, 8);
        match kind {
            0 => {
                args.push(format!("f{j}").into_bytes());
                args.push(val.clone());
            }
            1 => args.push(val.clone()),
            _ => {
                args.push(format!("{}", rng.range(0, 1_000_000)).into_bytes());
                args.push(format!("m{j}:{}", String::from_utf8_lossy(val)).into_bytes());
            }
        }
    }
    encode_command(out, &args);
    AGG_ELEMENTS as u64
}
