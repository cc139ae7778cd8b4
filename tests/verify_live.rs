//! The live reader and `verify` against real `redis-server` processes: corpus dumps loaded by
//! the server itself must read back as `expected.json`, big values must be read in pieces,
//! and `verify` must find (and only find) real differences.

mod canon;
mod support;

use std::time::{Duration, Instant};

use redis_relay::endpoint::Endpoint;
use redis_relay::verify::{
    compare_documents, read_canonical, verify, CompareOptions, DiffKind, LiveReader, ReadOptions,
    VerifyOptions,
};
use serde_json::Value as J;
use support::{corpus_dir, RedisServer};

fn endpoint(s: &RedisServer) -> Endpoint {
    Endpoint::parse(&s.url()).unwrap()
}

/// A server that loaded `rdb` at start (its own `dir`, so the file is not touched).
fn server_with_rdb(rdb: &std::path::Path) -> (RedisServer, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    std::fs::copy(rdb, data.path().join("dump.rdb")).unwrap();
    let dir_line = format!("dir {}", data.path().display());
    let server = RedisServer::start(&[&dir_line, "dbfilename dump.rdb"]);
    (server, data)
}

/// Every corpus dump a 7.0 server can load (RDB <= 10) reads back as its `expected.json`:
/// values, exact expire times, stream PELs and times. Encodings are not compared (they are the
/// loading server's), nor the stream metadata a pre-7.0 `expected.json` does not have.
#[test]
fn corpus_dumps_loaded_by_redis_read_back_as_expected() {
    let mut checked = 0;
    for dir in canon::versions() {
        if canon::rdb_version(&dir) > 10 {
            continue;
        }
        let expected = canon::exact_expected(&dir);
        for rdb in canon::rdb_files(&dir) {
            let (server, _data) = server_with_rdb(&rdb);
            let live = read_canonical(&endpoint(&server)).unwrap();
            let report = compare_documents(&expected, &live, &CompareOptions::default());
            assert!(report.is_equal(), "{}:\n{report}", rdb.display());
            for (db, c) in &report.dbs {
                assert_eq!(c.left_keys, c.right_keys, "{}: db {db}", rdb.display());
                assert!(c.left_keys > 0);
            }
            checked += 1;
        }
    }
    // 2.4.18 .. 7.0.15, plus 5.0.14's lru/lfu dumps.
    assert_eq!(checked, 11);
}

/// On the same version the live canonical form is `expected.json` itself, field for field,
/// except `redis_version`, `expire_exact`-independent nothing else, and raw/embstr.
#[test]
fn same_version_reads_exactly_expected_json() {
    let dir = canon::version_dir(&corpus_dir(), "7.0.15");
    let (server, _data) = server_with_rdb(&dir.join("dump.rdb"));
    let mut live = read_canonical(&endpoint(&server)).unwrap();
    let mut expected = canon::read_json(&dir.join("expected.json"));
    fn normalize(doc: &mut J) {
        doc["redis_version"] = J::Null;
        for db in doc["databases"].as_object_mut().unwrap().values_mut() {
            for k in db["keys"].as_array_mut().unwrap() {
                if k["encoding"] == "embstr" {
                    k["encoding"] = "raw".into();
                }
            }
        }
    }
    normalize(&mut live);
    normalize(&mut expected);
    if live != expected {
        let l = live["databases"]["0"]["keys"].as_array().unwrap();
        let e = expected["databases"]["0"]["keys"].as_array().unwrap();
        for (a, b) in l.iter().zip(e) {
            assert_eq!(a, b, "first differing key");
        }
        assert_eq!(live, expected);
    }
}

/// Big values come in windows and scan pages; the result is the whole value, in order.
#[test]
fn big_values_are_read_in_pieces() {
    let server = RedisServer::start(&[]);
    let mut c = server.client();
    let n = 300_000usize;
    for start in (0..n).step_by(10_000) {
        let mut cmd: Vec<Vec<u8>> = vec![b"RPUSH".to_vec(), b"big:list".to_vec()];
        cmd.extend((start..start + 10_000).map(|i| format!("e{i}").into_bytes()));
        let mut set: Vec<Vec<u8>> = vec![b"SADD".to_vec(), b"big:set".to_vec()];
        set.extend(
            (start..start + 10_000)
                .step_by(3)
                .map(|i| format!("m{i}").into_bytes()),
        );
        let mut hash: Vec<Vec<u8>> = vec![b"HSET".to_vec(), b"big:hash".to_vec()];
        let mut zset: Vec<Vec<u8>> = vec![b"ZADD".to_vec(), b"big:zset".to_vec()];
        for i in (start..start + 10_000).step_by(3) {
            hash.push(format!("f{i}").into_bytes());
            hash.push(format!("v{i}").into_bytes());
            zset.push(format!("{}", (i as f64) / 7.0 - 1000.0).into_bytes());
            zset.push(format!("z{i}").into_bytes());
        }
        c.pipeline(&[cmd, set, hash, zset]);
    }
    let mut cmds = Vec::new();
    for i in 0..25_000u64 {
        cmds.push(vec![
            b"XADD".to_vec(),
            b"big:stream".to_vec(),
            format!("{}-{}", 1_000 + i / 7, i % 7).into_bytes(),
            b"f".to_vec(),
            i.to_string().into_bytes(),
        ]);
    }
    c.pipeline(&cmds);
    c.cmd(&["XGROUP", "CREATE", "big:stream", "g", "0"]);
    // 2,500 pending entries: more than one window, all of them in the PEL.
    c.cmd(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "alice",
        "COUNT",
        "2500",
        "STREAMS",
        "big:stream",
        ">",
    ]);

    let opts = ReadOptions {
        window: 1000,
        ..ReadOptions::default()
    };
    let mut reader = LiveReader::connect(&endpoint(&server), opts).unwrap();
    let t = Instant::now();
    let doc = reader.read_document().unwrap();
    eprintln!("big values read in {:.2?}", t.elapsed());
    let keys = doc["databases"]["0"]["keys"].as_array().unwrap();
    let get = |name: &str| -> &J {
        let b = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, name);
        keys.iter().find(|k| k["key"] == b.as_str()).unwrap()
    };
    let list = get("big:list")["value"].as_array().unwrap();
    assert_eq!(list.len(), n);
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    assert_eq!(list[0], b64("e0").as_str());
    assert_eq!(list[n - 1], b64(&format!("e{}", n - 1)).as_str());
    assert_eq!(list[123_456], b64("e123456").as_str());
    let third = (n / 10_000) * (0..10_000).step_by(3).count();
    assert_eq!(get("big:set")["value"].as_array().unwrap().len(), third);
    assert_eq!(get("big:hash")["value"].as_object().unwrap().len(), third);
    let z = get("big:zset")["value"].as_array().unwrap();
    assert_eq!(z.len(), third);
    assert_eq!(z[0][0], b64("z0").as_str());
    assert_eq!(z[0][1].as_f64(), Some(-1000.0));
    let s = &get("big:stream")["value"];
    assert_eq!(s["entries"].as_array().unwrap().len(), 25_000);
    assert_eq!(s["length"], 25_000);
    let g = &s["groups"][0];
    assert_eq!(g["pel"].as_array().unwrap().len(), 2500);
    assert_eq!(g["consumers"][0]["pending"], 2500);
    assert_eq!(g["entries_read"], 2500);
    assert_eq!(
        g["times"]["pel_delivery_time_ms"]
            .as_object()
            .unwrap()
            .len(),
        2500
    );
}

/// Many small keys: the reader is pipelined (thousands of keys per second even in a debug
/// build), and the result has every key.
#[test]
fn many_small_keys_read_fast() {
    let server = RedisServer::start(&[]);
    let mut c = server.client();
    let n = 20_000;
    let mut cmds = Vec::new();
    for i in 0..n {
        let k = format!("k:{i}");
        cmds.push(match i % 5 {
            0 => vec!["SET".to_string(), k, i.to_string()],
            1 => vec!["RPUSH".into(), k, "a".into(), "b".into()],
            2 => vec!["SADD".into(), k, "a".into(), "b".into()],
            3 => vec!["HSET".into(), k, "f".into(), "v".into()],
            _ => vec!["ZADD".into(), k, "1.5".into(), "m".into()],
        });
        if i % 7 == 0 {
            cmds.push(vec![
                "PEXPIREAT".into(),
                format!("k:{i}"),
                "4102444800123".into(),
            ]);
        }
    }
    for chunk in cmds.chunks(5000) {
        c.pipeline(chunk);
    }
    let mut reader = LiveReader::connect(&endpoint(&server), ReadOptions::default()).unwrap();
    let t = Instant::now();
    let doc = reader.read_document().unwrap();
    let rate = n as f64 / t.elapsed().as_secs_f64();
    eprintln!(
        "{n} small keys read in {:.2?}: {rate:.0} keys/s",
        t.elapsed()
    );
    let keys = doc["databases"]["0"]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), n);
    assert_eq!(
        keys.iter()
            .filter(|k| k["expire_ms"] == 4102444800123i64)
            .count(),
        (0..n).filter(|i| i % 7 == 0).count()
    );
    assert!(rate > 2000.0, "only {rate:.0} keys/s");

    // verify() of the server against itself: both sides read, every key equal.
    let ep = endpoint(&server);
    let r = verify(std::slice::from_ref(&ep), &ep, &VerifyOptions::default()).unwrap();
    eprintln!("verify of {n} keys against themselves: {r}");
    assert!(r.is_equal(), "{r}");
    assert_eq!(r.compare.dbs[&0].left_keys, n as u64);
    assert_eq!(r.compare.dbs[&0].right_keys, n as u64);
    assert_eq!(r.keys_read, 2 * n as u64);
}

fn load(server: &RedisServer, cmds: &[&[&str]]) {
    let mut c = server.client();
    for cmd in cmds {
        c.cmd(cmd);
    }
}

/// Two sources (as behind Twemproxy) and a target holding their union: equal, then every kind
/// of difference, each found once; the relay's own keys are ignored.
#[test]
fn verify_finds_each_kind_of_difference() {
    let a = RedisServer::start(&[]);
    let b = RedisServer::start(&[]);
    let t = RedisServer::start(&[]);
    load(
        &a,
        &[
            &["SET", "s1", "v1"],
            &["RPUSH", "l1", "x", "y"],
            &["SELECT", "2"],
            &["SET", "d2", "x"],
        ],
    );
    load(
        &b,
        &[
            &["SET", "s2", "v2"],
            &["ZADD", "z", "1", "m"],
            &["PEXPIREAT", "z", "4102444800123"],
        ],
    );
    load(
        &t,
        &[
            &["SET", "s1", "v1"],
            &["RPUSH", "l1", "x", "y"],
            &["SET", "s2", "v2"],
            &["ZADD", "z", "1", "m"],
            &["PEXPIREAT", "z", "4102444800123"],
            &["SET", "redis-relay:offsets", "1"],
            &["SELECT", "2"],
            &["SET", "d2", "x"],
        ],
    );
    let sources = [endpoint(&a), endpoint(&b)];
    let opts = VerifyOptions {
        recheck_rounds: 1,
        recheck_delay: Duration::from_millis(50),
        ..VerifyOptions::default()
    };
    let r = verify(&sources, &endpoint(&t), &opts).unwrap();
    assert!(r.is_equal(), "{r}");
    assert_eq!(r.compare.dbs[&0].left_keys, 4);
    assert_eq!(
        r.compare.dbs[&0].right_keys, 4,
        "redis-relay: keys are not counted"
    );
    assert_eq!(r.compare.dbs[&2].right_keys, 1);

    load(
        &t,
        &[
            &["DEL", "s1"],
            &["RPUSH", "l1", "z"],
            &["SET", "extra", "1"],
            &["PEXPIREAT", "z", "4102444801123"],
            &["SELECT", "2"],
            &["DEL", "d2"],
            &["HSET", "d2", "f", "v"],
        ],
    );
    let r = verify(&sources, &endpoint(&t), &opts).unwrap();
    let text = r.to_string();
    assert_eq!(r.compare.count(DiffKind::Missing), 1, "{text}");
    assert_eq!(r.compare.count(DiffKind::Extra), 1, "{text}");
    assert_eq!(r.compare.count(DiffKind::Value), 1, "{text}");
    assert_eq!(r.compare.count(DiffKind::Ttl), 1, "{text}");
    assert_eq!(r.compare.count(DiffKind::Type), 1, "{text}");
    assert_eq!(r.compare.differing_keys(), 5, "{text}");
    assert!(text.contains("db 0 \"s1\" missing"), "{text}");
    assert!(text.contains("db 2 \"d2\" type"), "{text}");
    assert!(text.contains("+1000 ms"), "{text}");
    eprintln!("{text}");

    // With a tolerance the TTL difference goes away; a sample sees the same kinds.
    let mut tolerant = opts.clone();
    tolerant.compare.ttl_tolerance_ms = 1000;
    let r = verify(&sources, &endpoint(&t), &tolerant).unwrap();
    assert_eq!(r.compare.count(DiffKind::Ttl), 0, "{r}");
    let mut sampled = opts.clone();
    sampled.sample = Some(100);
    let r = verify(&sources, &endpoint(&t), &sampled).unwrap();
    assert!(r.sampled);
    assert_eq!(r.compare.count(DiffKind::Missing), 1, "{r}");
    assert_eq!(r.compare.count(DiffKind::Extra), 1, "{r}");
    assert_eq!(r.compare.count(DiffKind::Type), 1, "{r}");
}

/// A difference that goes away before the re-check (a write in flight) is not reported.
#[test]
fn verify_rechecks_writes_in_flight() {
    let a = RedisServer::start(&[]);
    let t = RedisServer::start(&[]);
    load(&a, &[&["SET", "k", "new"], &["SET", "same", "1"]]);
    load(&t, &[&["SET", "k", "old"], &["SET", "same", "1"]]);
    let port = t.port;
    let fixer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let mut c = support::Client::connect(port).unwrap();
        c.cmd(&["SET", "k", "new"]);
    });
    let opts = VerifyOptions {
        recheck_rounds: 3,
        recheck_delay: Duration::from_millis(400),
        ..VerifyOptions::default()
    };
    let r = verify(&[endpoint(&a)], &endpoint(&t), &opts).unwrap();
    fixer.join().unwrap();
    assert!(r.is_equal(), "{r}");
    assert_eq!(r.settled, 1, "{r}");

    // Without re-checks the same situation is a difference.
    load(&t, &[&["SET", "k", "old"]]);
    let opts = VerifyOptions {
        recheck_rounds: 0,
        ..VerifyOptions::default()
    };
    let r = verify(&[endpoint(&a)], &endpoint(&t), &opts).unwrap();
    assert_eq!(r.compare.count(DiffKind::Value), 1, "{r}");
    assert_eq!(r.settled, 0);
}

/// Streams and functions through `verify`: a consumer group state that differs is found,
/// consumer times are ignored on request.
#[test]
fn verify_streams_and_functions() {
    let a = RedisServer::start(&[]);
    let t = RedisServer::start(&[]);
    for s in [&a, &t] {
        load(
            s,
            &[
                &["XADD", "st", "1-1", "f", "v"],
                &["XADD", "st", "1-2", "f", "w"],
                &["XGROUP", "CREATE", "st", "g", "0"],
            ],
        );
    }
    load(
        &a,
        &[&[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "COUNT",
            "1",
            "STREAMS",
            "st",
            ">",
        ]],
    );
    let opts = VerifyOptions {
        recheck_rounds: 0,
        ..VerifyOptions::default()
    };
    let r = verify(&[endpoint(&a)], &endpoint(&t), &opts).unwrap();
    assert_eq!(r.compare.count(DiffKind::Value), 1, "{r}");
    assert!(r.to_string().contains("group \"g\""), "{r}");
    load(
        &t,
        &[&[
            "XREADGROUP",
            "GROUP",
            "g",
            "c",
            "COUNT",
            "1",
            "STREAMS",
            "st",
            ">",
        ]],
    );
    // Same PEL, but delivered at another millisecond (most likely) and seen at another time.
    let mut o = opts.clone();
    o.compare.ignore_stream_times = true;
    let r = verify(&[endpoint(&a)], &endpoint(&t), &o).unwrap();
    assert!(r.is_equal(), "{r}");

    let code = "#!lua name=vlib\nredis.register_function('vf', function() return 1 end)";
    load(&a, &[&["FUNCTION", "LOAD", code]]);
    let r = verify(&[endpoint(&a)], &endpoint(&t), &o).unwrap();
    assert_eq!(r.compare.count(DiffKind::Functions), 1, "{r}");
    load(&t, &[&["FUNCTION", "LOAD", code]]);
    let r = verify(&[endpoint(&a)], &endpoint(&t), &o).unwrap();
    assert!(r.is_equal(), "{r}");
}

/// The command sets of older servers (chosen from the version in `INFO server`), emulated
/// against the 7.0 server here: `KEYS`/`SMEMBERS`/`HGETALL` before 2.8, second-resolution
/// `TTL` on 2.4, relative `PTTL` before 7.0, `XPENDING`/`XINFO CONSUMERS` before 6.0. Each
/// reads the same content (expire times within the documented ±1500 ms).
#[test]
fn older_server_command_sets_read_the_same() {
    let dir = canon::version_dir(&corpus_dir(), "5.0.14");
    let (server, _data) = server_with_rdb(&dir.join("dump.rdb"));
    let expected = canon::exact_expected(&dir);
    let opts = CompareOptions {
        ttl_tolerance_ms: 1500,
        ..CompareOptions::default()
    };
    for version in ["2.4.18", "2.6.17", "2.8.24", "5.0.14", "6.0.20"] {
        let mut reader = LiveReader::connect(&endpoint(&server), ReadOptions::default()).unwrap();
        reader.facts = redis_relay::verify::live::ServerFacts::new(version);
        let live = reader.read_document().unwrap();
        let report = compare_documents(&expected, &live, &opts);
        assert!(report.is_equal(), "as {version}:\n{report}");
        let stream = live["databases"]["0"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key"] == "c3RyZWFtOmdyb3Vwcw==")
            .expect("stream:groups");
        // Times only where XINFO STREAM FULL exists.
        let has_times = stream["value"]["groups"][0].get("times").is_some();
        assert_eq!(has_times, version == "6.0.20", "as {version}");
    }
}

/// A key that is deleted, re-created and changes type while it is read (over many rounds):
/// the reader returns one of the states the key really had, or says it kept changing; never
/// a value stitched from two states of different lengths or types.
#[test]
fn keys_changing_while_read_are_read_again() {
    let server = RedisServer::start(&[]);
    let port = server.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let writer = std::thread::spawn(move || {
        let mut c = support::Client::connect(port).unwrap();
        let mut push: Vec<Vec<u8>> = vec![b"RPUSH".to_vec(), b"hot".to_vec()];
        push.extend((0..3000).map(|i| i.to_string().into_bytes()));
        let mut rounds = 0u64;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            c.pipeline(&[vec![b"DEL".to_vec(), b"hot".to_vec()], push.clone()]);
            c.pipeline(&[
                vec![b"DEL".to_vec(), b"hot".to_vec()],
                vec![b"SET".to_vec(), b"hot".to_vec(), b"now a string".to_vec()],
            ]);
            c.pipeline(&[
                vec![b"DEL".to_vec(), b"hot".to_vec()],
                vec![b"RPUSH".to_vec(), b"hot".to_vec(), b"short".to_vec()],
            ]);
            // A set scanned in pages, replaced by a smaller one and back.
            let mut big: Vec<Vec<u8>> = vec![b"SADD".to_vec(), b"hotset".to_vec()];
            big.extend((0..3000).map(|i| format!("m{i}").into_bytes()));
            c.pipeline(&[vec![b"DEL".to_vec(), b"hotset".to_vec()], big]);
            c.pipeline(&[
                vec![b"DEL".to_vec(), b"hotset".to_vec()],
                vec![
                    b"SADD".to_vec(),
                    b"hotset".to_vec(),
                    b"x".to_vec(),
                    b"m1".to_vec(),
                ],
            ]);
            rounds += 1;
        }
        rounds
    });
    let opts = ReadOptions {
        window: 10,
        ..ReadOptions::default()
    };
    let mut reader = LiveReader::connect(&endpoint(&server), opts).unwrap();
    let (mut lists, mut others, mut gave_up) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let mut both = reader
            .read_keys(
                0,
                &[
                    bytes::Bytes::from_static(b"hot"),
                    bytes::Bytes::from_static(b"hotset"),
                ],
            )
            .unwrap();
        match both.pop().unwrap() {
            Ok(Some(v)) => {
                let n = v["value"].as_array().unwrap().len();
                assert!(n == 3000 || n == 2, "stitched set of {n} members");
            }
            Ok(None) => {}
            Err(e) => assert!(e.contains("kept changing"), "{e}"),
        }
        let r = both.pop().unwrap();
        match r {
            Ok(Some(v)) if v["type"] == "list" => {
                let n = v["value"].as_array().unwrap().len();
                assert!(n == 3000 || n == 1, "stitched list of {n} elements");
                if n == 3000 {
                    let last =
                        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "2999");
                    assert_eq!(v["value"][2999], last.as_str());
                }
                lists += 1;
            }
            Ok(Some(v)) => {
                assert_eq!(v["type"], "string");
                others += 1;
            }
            Ok(None) => others += 1,
            Err(e) => {
                assert!(e.contains("kept changing"), "{e}");
                gave_up += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.join().unwrap();
    eprintln!("{rounds} writer rounds; reads: {lists} lists, {others} other, {gave_up} gave up");
    assert!(rounds > 10 && lists + others + gave_up > 10);
}
