//! The data the demo's snapshot carries: `--keys` keys of mixed types (strings, hashes, lists,
//! sets, sorted sets) written straight to the masters, each key on the master nutcracker
//! places it on (so that a GET through nutcracker finds it), pipelined in batches: enough
//! keys that the snapshot's progress bars are visible for a few seconds, written in seconds.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use redis_relay::endpoint::Endpoint;
use redis_relay::resp::{encode_command, Client, Reply};
use redis_relay::source::twemproxy::placement::Placement;

use super::error::DemoError;

/// Commands sent before their replies are read.
const BATCH: usize = 2000;

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct Preloaded {
    /// Keys per master, in the order of the masters given.
    pub per_master: Vec<u64>,
    pub elapsed: Duration,
}

/// Write `keys` keys into `masters` (nutcracker's servers in file order), placed by
/// `placement`; one thread per master.
pub fn preload(
    masters: &[Endpoint],
    placement: &Placement,
    keys: u64,
) -> Result<Preloaded, DemoError> {
    let started = Instant::now();
    let per_master = std::thread::scope(|scope| {
        let threads: Vec<_> = masters
            .iter()
            .enumerate()
            .map(|(i, ep)| scope.spawn(move || load_master(ep, i, placement, keys)))
            .collect();
        threads
            .into_iter()
            .zip(masters)
            .map(|(t, ep)| {
                t.join().unwrap_or_else(|_| {
                    Err(DemoError::Preload {
                        server: ep.to_string(),
                        detail: "the preload thread panicked".into(),
                    })
                })
            })
            .collect::<Result<Vec<u64>, DemoError>>()
    })?;
    Ok(Preloaded {
        per_master,
        elapsed: started.elapsed(),
    })
}

/// Every key among the first `keys` that `placement` gives to master `index`; how many.
fn load_master(
    ep: &Endpoint,
    index: usize,
    placement: &Placement,
    keys: u64,
) -> Result<u64, DemoError> {
    let fail = |detail: String| DemoError::Preload {
        server: ep.to_string(),
        detail,
    };
    let mut c = Client::connect(ep, Duration::from_secs(5)).map_err(|e| fail(e.to_string()))?;
    let mut out = BytesMut::with_capacity(1 << 20);
    let (mut pending, mut written) = (0, 0);
    for i in 0..keys {
        let key = key_name(i);
        if placement.owner(key.as_bytes()) != index {
            continue;
        }
        encode_command(&mut out, &command(i, &key));
        pending += 1;
        written += 1;
        if pending == BATCH {
            flush(&mut c, &mut out, pending).map_err(fail)?;
            pending = 0;
        }
    }
    flush(&mut c, &mut out, pending).map_err(fail)?;
    Ok(written)
}

/// Send the batch in `out` and read its `n` replies; the first error reply is an error.
fn flush(c: &mut Client, out: &mut BytesMut, n: usize) -> Result<(), String> {
    c.stream.write_all(out).map_err(|e| e.to_string())?;
    out.clear();
    for _ in 0..n {
        match c.read_reply().map_err(|e| e.to_string())? {
            Reply::Error(e) => return Err(String::from_utf8_lossy(&e).into_owned()),
            _ => continue,
        }
    }
    Ok(())
}

/// Key `i`'s name: its type in it, so that a look at the target tells what it is.
fn key_name(i: u64) -> String {
    let kind = match i % 10 {
        0..=4 => "string",
        5 | 6 => "hash",
        7 => "list",
        8 => "set",
        _ => "zset",
    };
    format!("demo:{kind}:{i}")
}

/// The command that writes key `i`: half strings, then hashes, lists, sets and sorted sets of
/// five elements each.
fn command(i: u64, key: &str) -> Vec<String> {
    let value = |n: u64| format!("value-{i}-{n}-{}", "x".repeat(16));
    let mut args: Vec<String> = match i % 10 {
        0..=4 => return vec!["SET".into(), key.into(), value(0)],
        5 | 6 => vec!["HSET".into(), key.into()],
        7 => vec!["RPUSH".into(), key.into()],
        8 => vec!["SADD".into(), key.into()],
        _ => vec!["ZADD".into(), key.into()],
    };
    for n in 0..5 {
        match i % 10 {
            5 | 6 => args.extend([format!("field{n}"), value(n)]),
            9 => args.extend([format!("{}", i * 5 + n), value(n)]),
            _ => args.push(value(n)),
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_written() {
        let cmds: Vec<String> = (0..10)
            .map(|i| command(i, &key_name(i))[0].clone())
            .collect();
        for c in ["SET", "HSET", "RPUSH", "SADD", "ZADD"] {
            assert!(cmds.iter().any(|x| x == c), "{c} missing in {cmds:?}");
        }
        assert_eq!(command(9, "k").len(), 2 + 10);
        assert_eq!(key_name(7), "demo:list:7");
    }
}
