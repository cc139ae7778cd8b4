//! FLUSHDB/FLUSHALL from one of several sources merged into one target.
//!
//! Forwarded as is, a flush on one master would also delete what the other masters wrote into
//! the same target database. The merged keyspace is the union of the masters, so after master
//! A flushes a database, the target's database must hold exactly the keys the *other* masters
//! hold there. The relay therefore scans the target database and deletes each key that no
//! other source has (checked with pipelined EXISTS on the other masters). Everything the
//! flushing source sent before the flush is applied first (a barrier), and nothing after it is
//! sent until the deletion is done. A key another master creates meanwhile exists on that
//! master, so it is kept.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::endpoint::Endpoint;
use crate::resp::{encode_command, Reply};
use crate::target::TargetConn;

const SCAN_COUNT: &str = "1000";

/// Delete from `target` (in `db`, or every DB when `None`) the keys that none of `others`
/// holds. Returns the number of keys deleted.
pub fn scoped_flush(
    target: &Endpoint,
    others: &[Endpoint],
    db: Option<u32>,
    keep_prefix: &[u8],
) -> anyhow::Result<u64> {
    delete_unowned(target, others, db, keep_prefix, &|_, _| false)
}

/// Like [`scoped_flush`], but also keeps every key for which `keep(db, key)` is true: after a
/// forced full resync, the keys of the new snapshot (so only the stale ones go).
pub fn delete_unowned(
    target: &Endpoint,
    others: &[Endpoint],
    db: Option<u32>,
    keep_prefix: &[u8],
    keep: &dyn Fn(u32, &[u8]) -> bool,
) -> anyhow::Result<u64> {
    let timeout = Duration::from_secs(10);
    let mut t = TargetConn::connect(target, timeout)?;
    let mut srcs: Vec<TargetConn> = others
        .iter()
        .map(|o| TargetConn::connect(o, timeout).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<_>>()?;
    let dbs: Vec<u32> = match db {
        Some(d) => vec![d],
        None => keyspace_dbs(&mut t)?,
    };
    let mut deleted = 0;
    for d in dbs {
        let ds = d.to_string();
        expect_ok(t.call(&["SELECT", ds.as_str()])?, "SELECT on the target")?;
        for s in srcs.iter_mut() {
            expect_ok(s.call(&["SELECT", ds.as_str()])?, "SELECT on a source")?;
        }
        let mut cursor = "0".to_string();
        loop {
            let reply = t.call(&["SCAN", cursor.as_str(), "COUNT", SCAN_COUNT])?;
            let (next, keys) = scan_reply(reply)?;
            let mut doomed: Vec<Bytes> = keys
                .into_iter()
                .filter(|k| !k.starts_with(keep_prefix) && !keep(d, k))
                .collect();
            for s in srcs.iter_mut() {
                if doomed.is_empty() {
                    break;
                }
                let held = exists_each(s, &doomed)?;
                doomed = doomed
                    .into_iter()
                    .zip(held)
                    .filter(|(_, h)| !h)
                    .map(|(k, _)| k)
                    .collect();
            }
            if !doomed.is_empty() {
                let mut args: Vec<&[u8]> = vec![b"DEL"];
                args.extend(doomed.iter().map(|k| &k[..]));
                if let Reply::Integer(n) = t.call(&args)? {
                    deleted += n as u64;
                }
            }
            cursor = next;
            if cursor == "0" {
                break;
            }
        }
    }
    Ok(deleted)
}

fn expect_ok(r: Reply, what: &str) -> anyhow::Result<()> {
    match r {
        Reply::Error(e) => anyhow::bail!("{what}: {}", String::from_utf8_lossy(&e)),
        _ => Ok(()),
    }
}

fn keyspace_dbs(t: &mut TargetConn) -> anyhow::Result<Vec<u32>> {
    let text = t.call(&["INFO", "keyspace"])?.as_text().unwrap_or_default();
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("db")?.split(':').next()?.parse().ok())
        .collect())
}

fn scan_reply(r: Reply) -> anyhow::Result<(String, Vec<Bytes>)> {
    match r {
        Reply::Array(Some(mut items)) if items.len() == 2 => {
            let keys = match items.pop() {
                Some(Reply::Array(Some(ks))) => ks
                    .into_iter()
                    .filter_map(|k| match k {
                        Reply::Bulk(Some(b)) => Some(b),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let cursor = items
                .pop()
                .and_then(|c| c.as_text())
                .unwrap_or_else(|| "0".into());
            Ok((cursor, keys))
        }
        Reply::Error(e) => anyhow::bail!("SCAN: {}", String::from_utf8_lossy(&e)),
        other => anyhow::bail!("SCAN: unexpected reply {other:?}"),
    }
}

/// EXISTS of each key, pipelined (EXISTS with several keys only counts them).
fn exists_each(c: &mut TargetConn, keys: &[Bytes]) -> anyhow::Result<Vec<bool>> {
    let mut out = BytesMut::new();
    for k in keys {
        encode_command(&mut out, &[&b"EXISTS"[..], k]);
    }
    use std::io::Write;
    c.stream.write_all(&out)?;
    keys.iter()
        .map(|_| match c.read_reply()? {
            Reply::Integer(n) => Ok(n > 0),
            Reply::Error(e) => anyhow::bail!("EXISTS: {}", String::from_utf8_lossy(&e)),
            other => anyhow::bail!("EXISTS: unexpected reply {other:?}"),
        })
        .collect()
}
