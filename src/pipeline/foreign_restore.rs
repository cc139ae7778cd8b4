//! `RESTORE` commands of the stream whose payload the target cannot load.
//!
//! A client's `RESTORE` on the master (a migration tool, `redis-cli --rdb` scripts, a `DUMP`
//! from another server) is propagated as it is, with a payload in the master's RDB format. A
//! target of an older RDB version, or of the other family (Redis 8 and Valkey 9 formats are
//! not each other's), answers "DUMP payload version or checksum are wrong" and the key would
//! be lost. Such a `RESTORE` is rewritten into the commands that build the same value (the
//! snapshot's [`super::rewrite`]), preceded by `DEL` and followed by the expire time, and
//! applied as one transaction at the command's offset, so that it stays exactly-once.
//! `IDLETIME` and `FREQ` (eviction hints) have no command form and are left out.

use bytes::Bytes;

use super::rewrite::{append_expire, append_value, RewriteError, RewriteTarget};
use crate::rdb::{decode_dump_payload, loads_rdb, HashField, KeyMeta, RdbError, Value};
use crate::resp::framer::{CommandFramer, Frame};
use crate::target::commands::CommandBuf;

/// Why a `RESTORE` of the stream could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum ForeignRestoreError {
    #[error("malformed RESTORE (key, TTL and payload expected)")]
    Malformed,
    #[error("its payload cannot be read: {0}")]
    Payload(#[from] RdbError),
    #[error(transparent)]
    Rewrite(#[from] RewriteError),
}

/// The RDB version a `DUMP` payload was written with (the two bytes before its CRC64).
pub fn payload_rdb_version(payload: &[u8]) -> Option<u32> {
    let at = payload.len().checked_sub(10)?;
    Some(u32::from(u16::from_le_bytes([
        payload[at],
        payload[at + 1],
    ])))
}

/// Whether `args` (a `RESTORE`, name first) carries a payload the target, whose RDB version
/// is `target_rdb`, cannot load.
pub fn needs_rewrite(args: &[Bytes], target_rdb: u32) -> bool {
    args.get(3)
        .and_then(|p| payload_rdb_version(p))
        .is_some_and(|v| !loads_rdb(target_rdb, v))
}

/// The value a rewritten `RESTORE` builds, and the commands that build it.
pub struct Rewritten {
    /// `DEL key`, the value's commands, then `PEXPIRE`/`PEXPIREAT` when it has a TTL.
    pub commands: Vec<Frame>,
    /// Hash fields of the value that carry their own TTL.
    pub field_ttls: u64,
}

/// Rewrite `RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f]` (`args`, name
/// first) into plain commands for `target`.
pub fn rewrite(args: &[Bytes], target: &RewriteTarget) -> Result<Rewritten, ForeignRestoreError> {
    let (Some(key), Some(ttl), Some(payload)) = (args.get(1), args.get(2), args.get(3)) else {
        return Err(ForeignRestoreError::Malformed);
    };
    let ttl: i64 = std::str::from_utf8(ttl)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(ForeignRestoreError::Malformed)?;
    let absttl = args[4..].iter().any(|a| a.eq_ignore_ascii_case(b"ABSTTL"));
    let (key_type, value) = decode_dump_payload(payload)?;
    let field_ttls = match &value {
        Value::Hash(fields) => fields
            .iter()
            .filter(|f: &&HashField| f.expire_ms.is_some())
            .count(),
        _ => 0,
    } as u64;
    let meta = KeyMeta {
        db: 0,
        key: key.clone(),
        rdb_type: payload[0],
        key_type,
        expire_ms: (absttl && ttl > 0).then_some(ttl),
        idle: None,
        freq: None,
    };
    let mut out = CommandBuf::new();
    out.push(&[&b"DEL"[..], key]);
    append_value(&mut out, &meta, &value, true, target)?;
    append_expire(&mut out, &meta);
    if !absttl && ttl > 0 {
        // Relative, as the master's replicas take it: from the moment it is applied.
        out.push(&[&b"PEXPIRE"[..], key, ttl.to_string().as_bytes()]);
    }
    Ok(Rewritten {
        commands: frames(out),
        field_ttls,
    })
}

/// The commands of `out`, one frame each.
fn frames(mut out: CommandBuf) -> Vec<Frame> {
    let (bytes, n) = out.take_all();
    let mut framer = CommandFramer::new();
    framer.push(&bytes);
    let mut frames = Vec::with_capacity(n as usize);
    while let Ok(Some(f)) = framer.next_frame() {
        frames.push(f);
    }
    debug_assert_eq!(frames.len(), n as usize);
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdb::crc64;

    /// A DUMP payload of a plain list (RDB type 1) of `items`, written as RDB `version`.
    fn list_payload(version: u16, items: &[&[u8]]) -> Vec<u8> {
        let mut p = vec![1u8, items.len() as u8];
        for i in items {
            p.push(i.len() as u8);
            p.extend_from_slice(i);
        }
        p.extend_from_slice(&version.to_le_bytes());
        let crc = crc64(&p);
        p.extend_from_slice(&crc.to_le_bytes());
        p
    }

    fn args(words: &[&[u8]]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::copy_from_slice(w)).collect()
    }

    #[test]
    fn the_payload_version_is_read_before_the_crc() {
        let mut p = vec![0u8, 1, b'x'];
        p.extend_from_slice(&80u16.to_le_bytes());
        p.extend_from_slice(&[0; 8]);
        assert_eq!(payload_rdb_version(&p), Some(80));
        assert_eq!(payload_rdb_version(&[1, 2]), None);
        let restore = args(&[b"RESTORE", b"k", b"0", &p]);
        assert!(needs_rewrite(&restore, 10));
        assert!(needs_rewrite(&restore, 12));
        assert!(!needs_rewrite(&restore, 80));
    }

    #[test]
    fn a_list_becomes_del_rpush_and_its_expire() {
        let payload = list_payload(10, &[b"a", b"b"]);
        let got = rewrite(
            &args(&[b"RESTORE", b"k", b"5000", &payload, b"REPLACE"]),
            &RewriteTarget::newest(),
        )
        .unwrap();
        let text: Vec<Vec<Bytes>> = got.commands.into_iter().map(|f| f.args).collect();
        assert_eq!(
            text,
            vec![
                args(&[b"DEL", b"k"]),
                args(&[b"RPUSH", b"k", b"a", b"b"]),
                args(&[b"PEXPIRE", b"k", b"5000"]),
            ]
        );
        let abs = rewrite(
            &args(&[b"RESTORE", b"k", b"4102444800000", &payload, b"ABSTTL"]),
            &RewriteTarget::newest(),
        )
        .unwrap();
        assert_eq!(
            abs.commands.last().unwrap().args,
            args(&[b"PEXPIREAT", b"k", b"4102444800000"])
        );
    }

    #[test]
    fn a_malformed_restore_is_an_error() {
        assert!(matches!(
            rewrite(&args(&[b"RESTORE", b"k"]), &RewriteTarget::newest()),
            Err(ForeignRestoreError::Malformed)
        ));
        assert!(matches!(
            rewrite(
                &args(&[b"RESTORE", b"k", b"0", b"short"]),
                &RewriteTarget::newest()
            ),
            Err(ForeignRestoreError::Payload(_))
        ));
    }
}
