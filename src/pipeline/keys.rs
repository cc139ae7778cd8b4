//! Where the keys of a replicated command are: what the router needs to keep order per key.
//!
//! Only commands that a master propagates matter here. A command this table does not know is
//! treated as touching everything (a barrier), which is always correct, only slower.

use bytes::Bytes;

/// How a command relates to keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec<'a> {
    /// The listed keys (one or more).
    Keys(Vec<&'a Bytes>),
    /// No key, but ordering against other writes does not matter (PUBLISH: routed by channel).
    Channel(&'a Bytes),
    /// Touches the whole keyspace or unknown keys: FLUSHDB, SWAPDB, scripts, unknown commands.
    Global,
}

fn upper(name: &[u8]) -> [u8; 24] {
    let mut out = [0u8; 24];
    for (o, c) in out.iter_mut().zip(name.iter()) {
        *o = c.to_ascii_uppercase();
    }
    out
}

/// The keys of `args` (command name first).
pub fn command_keys(args: &[Bytes]) -> KeySpec<'_> {
    let Some(name) = args.first() else {
        return KeySpec::Global;
    };
    if name.len() > 24 {
        return KeySpec::Global;
    }
    let up = upper(name);
    let n = &up[..name.len()];
    let all_from = |i: usize| KeySpec::Keys(args.iter().skip(i).collect());
    let at = |idx: &[usize]| {
        let keys: Vec<&Bytes> = idx.iter().filter_map(|&i| args.get(i)).collect();
        if keys.is_empty() {
            KeySpec::Global
        } else {
            KeySpec::Keys(keys)
        }
    };
    match n {
        // Several keys, all arguments.
        b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" | b"PFMERGE" | b"SINTERSTORE"
        | b"SUNIONSTORE" | b"SDIFFSTORE" | b"WATCH" => all_from(1),
        b"MSET" | b"MSETNX" => KeySpec::Keys(args.iter().skip(1).step_by(2).collect()),
        b"RENAME" | b"RENAMENX" | b"RPOPLPUSH" | b"BRPOPLPUSH" | b"SMOVE" | b"LMOVE"
        | b"BLMOVE" | b"COPY" | b"ZRANGESTORE" | b"GEOSEARCHSTORE" => at(&[1, 2]),
        b"BITOP" => all_from(2),
        b"ZUNIONSTORE" | b"ZINTERSTORE" | b"ZDIFFSTORE" => numkeys(args, 2, Some(1)),
        b"LMPOP" | b"ZMPOP" | b"SINTERCARD" | b"ZINTERCARD" => numkeys(args, 1, None),
        b"BLMPOP" | b"BZMPOP" => numkeys(args, 2, None),
        b"BLPOP" | b"BRPOP" | b"BZPOPMIN" | b"BZPOPMAX" => KeySpec::Keys(
            args.iter()
                .skip(1)
                .take(args.len().saturating_sub(2))
                .collect(),
        ),
        b"SORT" | b"SORT_RO" => sort_keys(args),
        b"GEORADIUS" | b"GEORADIUSBYMEMBER" => georadius_keys(args),
        b"XGROUP" | b"XINFO" | b"OBJECT" => at(&[2]),
        b"PUBLISH" | b"SPUBLISH" => match args.get(1) {
            Some(c) => KeySpec::Channel(c),
            None => KeySpec::Global,
        },
        b"MIGRATE" | b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO"
        | b"SCRIPT" | b"FUNCTION" | b"FLUSHDB" | b"FLUSHALL" | b"SWAPDB" | b"MULTI" | b"EXEC"
        | b"SELECT" | b"MOVE" => KeySpec::Global,
        // Everything else a master propagates has one key, first argument.
        _ => at(&[1]),
    }
}

/// Where the keys of `args` are, as indices into `args`, for running the command on other
/// keys (a cross-slot unit on a cluster target): the keys [`command_keys`] finds, and the
/// keys a script declares (EVAL, EVALSHA, FCALL and their `_RO` forms: `numkeys` at 2).
/// `None` when the command's keys are not known.
pub fn key_indices(args: &[Bytes]) -> Option<Vec<usize>> {
    let name = args.first()?;
    let script = [
        &b"EVAL"[..],
        b"EVALSHA",
        b"EVAL_RO",
        b"EVALSHA_RO",
        b"FCALL",
        b"FCALL_RO",
    ]
    .iter()
    .any(|s| name.eq_ignore_ascii_case(s));
    if script {
        let n: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
        return (3 + n <= args.len()).then(|| (3..3 + n).collect());
    }
    match command_keys(args) {
        // The keys are references into `args`: their places are their indices.
        KeySpec::Keys(keys) => keys
            .iter()
            .map(|k| args.iter().position(|a| std::ptr::eq(a, *k)))
            .collect(),
        _ => None,
    }
}

/// SORT's key and its STORE destination; `Global` when BY or GET patterns read other keys.
fn sort_keys(args: &[Bytes]) -> KeySpec<'_> {
    let mut keys = vec![];
    if let Some(k) = args.get(1) {
        keys.push(k);
    }
    let mut i = 2;
    while i < args.len() {
        if args[i].eq_ignore_ascii_case(b"STORE") {
            if let Some(d) = args.get(i + 1) {
                keys.push(d);
            }
        }
        if args[i].eq_ignore_ascii_case(b"BY") || args[i].eq_ignore_ascii_case(b"GET") {
            // BY/GET patterns read other keys.
            return KeySpec::Global;
        }
        i += 1;
    }
    KeySpec::Keys(keys)
}

/// GEORADIUS's key and its STORE or STOREDIST destination.
fn georadius_keys(args: &[Bytes]) -> KeySpec<'_> {
    let mut keys = vec![];
    if let Some(k) = args.get(1) {
        keys.push(k);
    }
    for i in 2..args.len() {
        if args[i].eq_ignore_ascii_case(b"STORE") || args[i].eq_ignore_ascii_case(b"STOREDIST") {
            if let Some(d) = args.get(i + 1) {
                keys.push(d);
            }
        }
    }
    KeySpec::Keys(keys)
}

/// `numkeys` at `count_at`, keys after it; `extra` is one more key position (a destination).
fn numkeys(args: &[Bytes], count_at: usize, extra: Option<usize>) -> KeySpec<'_> {
    let Some(n) = args
        .get(count_at)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<usize>().ok())
    else {
        return KeySpec::Global;
    };
    let mut keys: Vec<&Bytes> = extra.and_then(|i| args.get(i)).into_iter().collect();
    keys.extend(args.iter().skip(count_at + 1).take(n));
    KeySpec::Keys(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(words: &[&str]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::from(w.to_string())).collect()
    }

    fn keys(words: &[&str]) -> Vec<String> {
        let args = a(words);
        match command_keys(&args) {
            KeySpec::Keys(k) => k
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect(),
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn key_positions() {
        assert_eq!(keys(&["set", "k", "v"]), ["k"]);
        assert_eq!(keys(&["MSET", "a", "1", "b", "2"]), ["a", "b"]);
        assert_eq!(
            keys(&["ZUNIONSTORE", "d", "2", "x", "y", "WEIGHTS", "1", "2"]),
            ["d", "x", "y"]
        );
        assert_eq!(keys(&["BITOP", "AND", "d", "x", "y"]), ["d", "x", "y"]);
        assert_eq!(keys(&["SORT", "l", "STORE", "d"]), ["l", "d"]);
        assert_eq!(keys(&["XGROUP", "CREATE", "s", "g", "$"]), ["s"]);
        assert_eq!(keys(&["LMPOP", "2", "a", "b", "LEFT"]), ["a", "b"]);
        assert!(matches!(command_keys(&a(&["FLUSHDB"])), KeySpec::Global));
        assert_eq!(key_indices(&a(&["RENAME", "a", "b"])), Some(vec![1, 2]));
        assert_eq!(
            key_indices(&a(&["MSET", "a", "1", "b", "2"])),
            Some(vec![1, 3])
        );
        assert_eq!(
            key_indices(&a(&["ZUNIONSTORE", "d", "2", "x", "y"])),
            Some(vec![1, 3, 4])
        );
        assert_eq!(
            key_indices(&a(&["EVAL", "return 1", "2", "k1", "k2", "arg"])),
            Some(vec![3, 4])
        );
        assert_eq!(key_indices(&a(&["EVAL", "return 1", "3", "k1"])), None);
        assert_eq!(key_indices(&a(&["FLUSHALL"])), None);
        // The same bytes twice are still two places.
        assert_eq!(key_indices(&a(&["RENAME", "a", "a"])), Some(vec![1, 2]));
        assert!(matches!(
            command_keys(&a(&["PUBLISH", "c", "m"])),
            KeySpec::Channel(_)
        ));
    }
}
