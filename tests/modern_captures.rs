//! The modern servers' captures (`tests/data/modern`, made by `examples/capture_replication`
//! from Redis 8.0.2, Valkey 8.1.1 and Valkey 9.1.2): without a live master, the parser reads
//! every `dump.rdb` and every capture's RDB payload to exactly the content read from the live
//! master (`expected.json`); and the whole relay, fed each capture by a mock master in random
//! chunks, leaves a fresh server of the same version equal to the master at the end of the
//! capture (`expected-after-stream*.json`). The replica side alone is checked byte by byte in
//! `replica_corpus` (`redis_8_0_2_full` ...).

mod canon;
mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use canon::{dump_payload, events, read_json};
use redis_relay::endpoint::Endpoint;
use redis_relay::rdb::json::CanonicalBuilder;
use redis_relay::rdb::*;
use redis_relay::verify::{
    compare_documents_named, read_canonical, CompareOptions, CompareReport, DiffKind,
};
use serde_json::Value as J;
use support::capture_master::{lenient_mock_master, u, Capture};
use support::modern::{captures_dir, Modern, CAPTURES};
use support::{RedisServer, Relay};

fn canonical(evs: &[Event]) -> J {
    let mut b = CanonicalBuilder::default();
    for e in evs {
        b.feed(e.clone());
    }
    b.finish()
}

/// `actual` holds exactly the keys, values, expire times (0 ms tolerance), field TTLs, stream
/// metadata and times, and functions of `expected`.
fn assert_same_content(expected: &J, actual: &J, what: &str) {
    let r = compare_documents_named(
        expected,
        actual,
        "expected",
        "parsed",
        &CompareOptions::default(),
    );
    assert!(r.is_equal(), "{what}:\n{r}");
    let keys = |d: &J| -> usize {
        d["databases"]
            .as_object()
            .map(|dbs| {
                dbs.values()
                    .map(|v| v["keys"].as_array().unwrap().len())
                    .sum()
            })
            .unwrap_or(0)
    };
    assert!(keys(expected) >= 60, "{what}: only {} keys", keys(expected));
    assert_eq!(keys(expected), keys(actual), "{what}: key count");
}

/// The RDB object type ids each server's dump holds: every encoding the dataset makes.
/// Strings (0), hashtable set/zset/hash (2, 5, 4), intset (11), quicklist 2 (18), listpack
/// set/zset/hash (20, 17, 16), stream v3 (21); field TTL hashes: Redis's listpack-ex (25) and
/// metadata (24), Valkey 9's hash type 22 (the parser's `VALKEY_HASH_2`).
fn expected_types(dir: &str) -> BTreeSet<u8> {
    let mut t: BTreeSet<u8> = [0, 2, 4, 5, 11, 16, 17, 18, 20, 21].into();
    match dir {
        "redis-8.0.2" => t.extend([24, 25]),
        "valkey-9.1.2" => t.extend([types::VALKEY_HASH_2]),
        _ => {}
    }
    t
}

/// One RDB: parsed whole, in small chunks, and entry by entry through DUMP payloads, always
/// to `expected`; returns the set of RDB type names seen.
fn check_rdb(data: &[u8], expected: &J, what: &str) -> BTreeSet<u8> {
    let opts = ParseOptions {
        capture_raw: true,
        ..Default::default()
    };
    let (evs, summary) = events(data, opts);
    assert_eq!(summary.bytes, data.len() as u64, "{what}: consumed bytes");
    assert!(summary.checksum.is_some_and(|c| c != 0), "{what}: checksum");
    let doc = canonical(&evs);
    assert_same_content(expected, &doc, what);
    let mut types = BTreeSet::new();
    for e in &evs {
        if let Event::Entry(e) = e {
            types.insert(e.meta.rdb_type);
            let payload = dump_payload(e.raw.as_ref().expect("raw"), summary.version);
            let (_, v) = decode_dump_payload(&payload)
                .unwrap_or_else(|err| panic!("{what}: {:?}: {err}", e.meta.key));
            assert_eq!(v, e.value, "{what}: raw round trip of {:?}", e.meta.key);
        }
    }
    let tiny = ParseOptions {
        big_value_bytes: 64,
        chunk_bytes: 100,
        chunk_elements: 3,
        ..Default::default()
    };
    let (tevs, _) = events(data, tiny);
    let bigs = tevs
        .iter()
        .filter(|e| matches!(e, Event::BigStart(_)))
        .count();
    assert!(bigs > 20, "{what}: only {bigs} big keys at 64 bytes");
    assert_eq!(canonical(&tevs), doc, "{what}: chunked parse differs");
    types
}

#[test]
fn dumps_parse_to_the_live_masters_content() {
    for (dir, _) in CAPTURES {
        let path = captures_dir().join(dir);
        let expected = read_json(&path.join("expected.json"));
        let data = std::fs::read(path.join("dump.rdb")).unwrap();
        let what = format!("{dir}/dump.rdb");
        let types = check_rdb(&data, &expected, &what);
        let want = expected_types(dir);
        assert!(
            types.is_superset(&want),
            "{what}: RDB types {types:?}, missing {:?}",
            want.difference(&types).collect::<Vec<_>>()
        );
        // Hashes with field TTLs wherever the server has them (not Valkey 8.1).
        let ttl_hashes = canon::hashes_with_field_ttl(&expected);
        match dir {
            "valkey-8.1.1" => assert_eq!(ttl_hashes, 0, "{what}"),
            _ => assert!(
                ttl_hashes >= 4,
                "{what}: {ttl_hashes} hashes with field TTLs"
            ),
        }
    }
}

/// The payload of every capture, parsed from the capture file with the command stream after
/// it: the parser stops exactly at the RDB's end, and the content is the master's.
#[test]
fn capture_payloads_parse_to_the_live_masters_content() {
    for (dir, _) in CAPTURES {
        let path = captures_dir().join(dir);
        let expected = read_json(&path.join("expected.json"));
        for mode in ["full", "diskless"] {
            let cap = Capture::load(&path, mode);
            let what = format!("{dir}/psync-{mode}");
            let off = u(&cap.meta["rdb_payload_file_offset"]);
            let len = cap.meta["rdb_payload_len"].as_u64().unwrap();
            let mut parser = RdbParser::new(
                std::io::Cursor::new(&cap.file[off..]),
                ParseOptions::default(),
            );
            let mut b = CanonicalBuilder::default();
            let s = parser
                .run(|e| {
                    b.feed(e);
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(s.bytes, len, "{what}: RDB length");
            assert_eq!(parser.into_inner().position(), len, "{what}: read past");
            assert_same_content(&expected, &b.finish(), &what);
            check_rdb(&cap.file[off..off + len as usize], &expected, &what);
        }
    }
}

/// `doc` without the relay's own keys (records and heartbeats under `redis-relay:`).
fn without_relay_keys(mut doc: J) -> J {
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(dbs) = doc["databases"].as_object_mut() {
        for v in dbs.values_mut() {
            let keys = v["keys"].as_array_mut().unwrap();
            keys.retain(|k| {
                let name = b64.decode(k["key"].as_str().unwrap()).unwrap();
                !name.starts_with(b"redis-relay:")
            });
            v["key_count"] = keys.len().into();
        }
        dbs.retain(|_, v| v["key_count"] != 0);
    }
    doc
}

/// The relay (`sync`), its source a mock master replaying the capture in random chunks, its
/// target a fresh server of the captured version: once the target acknowledged the capture's
/// final offset, it holds exactly what the master held at the end of the capture (expire
/// times and field TTLs to the millisecond; stream consumer times excepted, a replica's are
/// its own).
fn relay_capture_into_same_server(dir: &str, server: Modern, mode: &str) {
    relay_capture_into(dir, mode, &server.server_bin());
}

/// [`relay_capture_into_same_server`] with a target of the server binary `target_bin`.
fn relay_capture_into(dir: &str, mode: &str, target_bin: &std::path::Path) {
    let (r, _, what) = relay_capture(dir, mode, target_bin, &[]);
    assert!(r.is_equal(), "{what}:\n{r}");
}

/// Run the relay (`extra` arguments added) from the capture into a fresh `target_bin` until
/// the final offset is acknowledged; the comparison of the target with the capture's
/// expected-after-stream, that file's content, and a description with the relay's log.
fn relay_capture(
    dir: &str,
    mode: &str,
    target_bin: &std::path::Path,
    extra: &[&str],
) -> (CompareReport, J, String) {
    let path = captures_dir().join(dir);
    let what = format!("{dir}/psync-{mode} into {}", target_bin.display());
    let cap = Arc::new(Capture::load(&path, mode));
    let final_offset = cap.meta["final_offset"].as_u64().unwrap();
    let after = match mode {
        "full" => "expected-after-stream.json",
        _ => "expected-after-stream-diskless.json",
    };
    let expected = read_json(&path.join(after));
    let target = RedisServer::start_bin(target_bin, &[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let source = listener.local_addr().unwrap().to_string();
    rt.spawn(lenient_mock_master(
        listener,
        cap.clone(),
        format!("{what}/relay"),
    ));
    let tmp = tempfile::tempdir().unwrap();
    let args: Vec<String> = vec![
        "--source".into(),
        format!("redis://{source}"),
        "--target".into(),
        target.url(),
        "--state-dir".into(),
        tmp.path().join("state").display().to_string(),
        // The prechecks read the source's INFO, which a capture does not hold.
        "--skip-check".into(),
        // The only writer of the target: the source's FLUSHDB empties the target's database.
        "--target-owner".into(),
        "exclusive".into(),
    ];
    let args = [args, extra.iter().map(|a| a.to_string()).collect()].concat();
    let mut relay = Relay::start_sync(&args, tmp.path());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let applied = relay.metric("redis_relay_applied_offset", &source);
        if applied == Some(final_offset as f64) {
            break;
        }
        let exited = relay.child.try_wait().unwrap();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "{what}: applied offset {applied:?}, never {final_offset} (exit {exited:?}):\n{}",
            relay.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let live = read_canonical(&Endpoint::parse(&target.url()).unwrap()).unwrap();
    let opts = CompareOptions {
        ttl_tolerance_ms: 0,
        ignore_stream_times: true,
        max_differences: 100,
    };
    let r = compare_documents_named(&expected, &without_relay_keys(live), after, "target", &opts);
    let what = format!("{what}\nlog:\n{}", relay.log_text());
    (r, expected, what)
}

macro_rules! relay_tests {
    ($($name:ident => ($dir:expr, $server:expr, $mode:expr),)*) => {$(
        #[test]
        fn $name() {
            relay_capture_into_same_server($dir, $server, $mode);
        }
    )*};
}

relay_tests! {
    relay_redis_8_0_2_full => ("redis-8.0.2", Modern::Redis80, "full"),
    relay_redis_8_0_2_diskless => ("redis-8.0.2", Modern::Redis80, "diskless"),
    relay_valkey_8_1_1_full => ("valkey-8.1.1", Modern::Valkey81, "full"),
    relay_valkey_8_1_1_diskless => ("valkey-8.1.1", Modern::Valkey81, "diskless"),
    relay_valkey_9_1_2_full => ("valkey-9.1.2", Modern::Valkey91, "full"),
    relay_valkey_9_1_2_diskless => ("valkey-9.1.2", Modern::Valkey91, "diskless"),
}

/// Across servers that hold the same types: Valkey 9.1's `VALKEY080` snapshot and verbatim
/// `HGETDEL` into Redis 8.0, and Redis 8.0's into Valkey 9.1: the same end state.
#[test]
fn relay_valkey_9_1_2_full_into_redis_8_0() {
    relay_capture_into("valkey-9.1.2", "full", &Modern::Redis80.server_bin());
}

#[test]
fn relay_redis_8_0_2_diskless_into_valkey_9_1() {
    relay_capture_into("redis-8.0.2", "diskless", &Modern::Valkey91.server_bin());
}

/// Valkey 8.1 (no field TTLs, RDB 11) into Debian's Redis 7.0 (RDB 10): the same end state.
#[test]
fn relay_valkey_8_1_1_full_into_redis_7_0() {
    relay_capture_into("valkey-8.1.1", "full", &support::redis_server_bin());
}

/// Field TTLs into Redis 7.0, which cannot hold them, with `--on-unsupported-type drop-ttl`:
/// the snapshot's and the stream's (HSETEX, HPEXPIREAT, HPERSIST, HGETEX, and Valkey 9.1's
/// verbatim HGETDEL) arrive as plain fields; the hashes with field TTLs differ in those TTLs
/// and in nothing else.
fn field_ttls_dropped_into_redis_7_0(dir: &str) {
    let extra = ["--on-unsupported-type", "drop-ttl"];
    let (r, expected, what) = relay_capture(dir, "full", &support::redis_server_bin(), &extra);
    let hashes = canon::hashes_with_field_ttl(&expected) as u64;
    assert!(hashes >= 4, "{what}: {hashes} hashes with field TTLs");
    assert_eq!(r.kinds(), [DiffKind::FieldTtl].into(), "{what}:\n{r}");
    assert_eq!(r.count(DiffKind::FieldTtl), hashes, "{what}:\n{r}");
}

#[test]
fn relay_redis_8_0_2_field_ttls_dropped_into_redis_7_0() {
    field_ttls_dropped_into_redis_7_0("redis-8.0.2");
}

#[test]
fn relay_valkey_9_1_2_field_ttls_dropped_into_redis_7_0() {
    field_ttls_dropped_into_redis_7_0("valkey-9.1.2");
}
