//! Hash field TTLs toward a target that cannot hold them (Redis before 7.4, Valkey before 9):
//! `--on-unsupported-type stop|drop-ttl`.
//!
//! With `stop` (the default) the relay refuses to lose them: the precheck fails when a source
//! holds keys with field TTLs (`INFO keyspace`: `subexpiry` on Redis, `keys_with_volatile_items`
//! on Valkey), and a snapshot key or a stream command carrying one stops the source's loop,
//! naming the key or command. With `drop-ttl` the data is kept and the TTLs are dropped, each
//! one counted in `redis_relay_field_ttls_dropped_total{stage}`: snapshot fields are written
//! without their expire time, and the stream's field-TTL commands are rewritten to what the
//! target knows (`HSETEX` -> `HSET`, `HGETDEL` -> `HDEL`) or dropped when they only set or
//! remove TTLs (`HPEXPIREAT` and its siblings, `HPERSIST`, `HGETEX`). The master's own later
//! `HDEL`s still remove the fields that expire, but only while the relay runs.

use bytes::Bytes;

/// What to do with hash field TTLs the target cannot hold (`--on-unsupported-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnsupportedPolicy {
    /// Refuse: the precheck fails, and a key or command carrying one stops the relay.
    #[default]
    Stop,
    /// Copy the data without the field TTLs, counting every one dropped.
    DropTtl,
}

/// A stream command under `drop-ttl` toward a target without field TTLs.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamRewrite {
    /// Not a field-TTL command: forward as it is.
    Keep,
    /// Forward these arguments instead.
    Replace(Vec<Bytes>),
    /// Nothing to forward: the command only sets or removes TTLs.
    Drop,
}

/// Commands that only set or remove field TTLs, and commands that carry them.
pub fn is_field_ttl_command(up: &[u8]) -> bool {
    matches!(
        up,
        b"HSETEX"
            | b"HGETEX"
            | b"HGETDEL"
            | b"HEXPIRE"
            | b"HPEXPIRE"
            | b"HEXPIREAT"
            | b"HPEXPIREAT"
            | b"HPERSIST"
    )
}

/// The form of field-TTL command `up` (upper case) with `args` (its name first) that a target
/// without field TTLs takes.
pub fn rewrite_for_old_target(up: &[u8], args: &[Bytes]) -> StreamRewrite {
    match up {
        b"HSETEX" => fields_after(args, b"FIELDS", 2).map_or(StreamRewrite::Drop, |fv| {
            StreamRewrite::Replace(with_name(b"HSET", &args[1], fv))
        }),
        b"HGETDEL" => fields_after(args, b"FIELDS", 1).map_or(StreamRewrite::Drop, |f| {
            StreamRewrite::Replace(with_name(b"HDEL", &args[1], f))
        }),
        _ if is_field_ttl_command(up) => StreamRewrite::Drop,
        _ => StreamRewrite::Keep,
    }
}

/// The arguments after `FIELDS n` (n items of `per` arguments each), when well formed.
fn fields_after<'a>(args: &'a [Bytes], word: &[u8], per: usize) -> Option<&'a [Bytes]> {
    let at = args
        .iter()
        .skip(2)
        .position(|a| a.eq_ignore_ascii_case(word))?
        + 2;
    let n: usize = std::str::from_utf8(args.get(at + 1)?).ok()?.parse().ok()?;
    let items = args.get(at + 2..)?;
    (n > 0 && items.len() == n * per).then_some(items)
}

fn with_name(name: &'static [u8], key: &Bytes, rest: &[Bytes]) -> Vec<Bytes> {
    let mut v = Vec::with_capacity(2 + rest.len());
    v.push(Bytes::from_static(name));
    v.push(key.clone());
    v.extend_from_slice(rest);
    v
}

/// Count field TTLs dropped at `stage` (`snapshot` or `stream`).
pub fn count_dropped(stage: &'static str, n: u64) {
    metrics::counter!("redis_relay_field_ttls_dropped_total", "stage" => stage).increment(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    #[test]
    fn hsetex_keeps_its_fields_and_loses_its_ttl() {
        let a = args(&[
            "HSETEX", "h", "FNX", "PXAT", "99", "FIELDS", "2", "a", "1", "b", "2",
        ]);
        assert_eq!(
            rewrite_for_old_target(b"HSETEX", &a),
            StreamRewrite::Replace(args(&["HSET", "h", "a", "1", "b", "2"]))
        );
        let a = args(&["HSETEX", "h", "KEEPTTL", "fields", "1", "fields", "x"]);
        assert_eq!(
            rewrite_for_old_target(b"HSETEX", &a),
            StreamRewrite::Replace(args(&["HSET", "h", "fields", "x"]))
        );
    }

    #[test]
    fn hgetdel_deletes_and_ttl_commands_go() {
        let a = args(&["HGETDEL", "h", "FIELDS", "2", "a", "b"]);
        assert_eq!(
            rewrite_for_old_target(b"HGETDEL", &a),
            StreamRewrite::Replace(args(&["HDEL", "h", "a", "b"]))
        );
        let a = args(&["HPEXPIREAT", "h", "99", "FIELDS", "1", "a"]);
        assert_eq!(
            rewrite_for_old_target(b"HPEXPIREAT", &a),
            StreamRewrite::Drop
        );
        assert_eq!(rewrite_for_old_target(b"HPERSIST", &a), StreamRewrite::Drop);
        assert_eq!(rewrite_for_old_target(b"HSET", &a), StreamRewrite::Keep);
        // A malformed count is not guessed at.
        let a = args(&["HSETEX", "h", "FIELDS", "3", "a", "1"]);
        assert_eq!(rewrite_for_old_target(b"HSETEX", &a), StreamRewrite::Drop);
    }
}
