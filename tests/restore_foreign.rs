//! Regressions found by restoring RDB files written by other projects' test suites into a
//! real Redis (the files themselves are not part of this repository: each case is rebuilt
//! here with `RdbWriter`).

mod support;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use redis_relay::endpoint::Endpoint;
use redis_relay::rdb::testgen::{encode_listpack, RdbWriter};
use redis_relay::resp::Reply;
use redis_relay::restore::{restore_file, RestoreOptions, RestoreReport};
use support::RedisServer;

fn write_rdb(path: &Path, version: u32, body: impl FnOnce(&mut RdbWriter<Vec<u8>>)) {
    let mut w = RdbWriter::new(Vec::new(), version).unwrap();
    w.select_db(0).unwrap();
    body(&mut w);
    std::fs::write(path, w.finish().unwrap()).unwrap();
}

fn restore(
    path: &Path,
    server: &RedisServer,
    commands_only: bool,
) -> anyhow::Result<RestoreReport> {
    let opts = RestoreOptions {
        commands_only,
        quiet: true,
        ..Default::default()
    };
    Ok(restore_file(
        path,
        &Endpoint::parse(&server.url()).unwrap(),
        &opts,
    )?)
}

fn dbsize(server: &RedisServer) -> i64 {
    match server.client().cmd(&["DBSIZE"]) {
        Reply::Integer(n) => n,
        other => panic!("DBSIZE: {other:?}"),
    }
}

/// Empty collections (redis/redis tests/assets/corrupt_empty_keys.rdb has one of each
/// encoding): Redis drops them when it loads the file, but RESTORE refuses them ("Bad data
/// format"), so every one used to count as a target error.
#[test]
fn empty_collections_are_skipped_not_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.rdb");
    write_rdb(&path, 10, |w| {
        w.key_string(b"kept", b"v").unwrap();
        w.key_set(b"set", &[]).unwrap();
        w.key_hash(b"hash", &[]).unwrap();
        w.key_zset2(b"zset", &[]).unwrap();
        w.key_list_quicklist2(b"list_no_nodes", Vec::<Vec<&[u8]>>::new(), 0)
            .unwrap();
        // A quicklist with one empty listpack node.
        w.key_list_quicklist2(b"list_empty_node", vec![Vec::<&[u8]>::new()], 1)
            .unwrap();
        // Set and hash as empty listpacks (types 20 and 16).
        let lp = encode_listpack(&[]);
        w.bytes(&[20]).unwrap();
        w.string(b"set_lp").unwrap();
        w.string(&lp).unwrap();
        w.bytes(&[16]).unwrap();
        w.string(b"hash_lp").unwrap();
        w.string(&lp).unwrap();
    });
    for commands_only in [false, true] {
        let server = RedisServer::start(&["sanitize-dump-payload yes"]);
        let report = restore(&path, &server, commands_only).unwrap();
        assert_eq!(report.target_errors, 0, "commands_only={commands_only}");
        assert_eq!(
            report.stats.empty_skipped, 7,
            "commands_only={commands_only}"
        );
        assert_eq!(dbsize(&server), 1, "commands_only={commands_only}");
    }
}

/// A file that fails to parse (here: a wrong CRC64, as in redis/librdb
/// test/dumps/invalid_chksum_v8.rdb) must end the restore with the parse error. It used to
/// hang now and then: the dispatcher kept the writers' inputs open while `finish` waited.
#[test]
fn parse_error_ends_restore_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("badcrc.rdb");
    write_rdb(&path, 8, |w| {
        for i in 0..50 {
            w.key_string(format!("k{i}").as_bytes(), b"v").unwrap();
        }
    });
    let mut data = std::fs::read(&path).unwrap();
    let n = data.len();
    data[n - 1] ^= 0xff;
    std::fs::write(&path, &data).unwrap();
    let server = RedisServer::start(&[]);
    let url = server.url();
    for commands_only in [false, true] {
        for _ in 0..10 {
            let (tx, rx) = mpsc::channel();
            let (p, u) = (path.clone(), url.clone());
            std::thread::spawn(move || {
                let opts = RestoreOptions {
                    commands_only,
                    quiet: true,
                    ..Default::default()
                };
                let _ = tx.send(restore_file(&p, &Endpoint::parse(&u).unwrap(), &opts));
            });
            let res = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("restore of a corrupt file hung");
            let err = res.expect_err("a wrong CRC64 must fail the restore");
            assert!(err.to_string().contains("CRC64"), "{err}");
        }
    }
}

/// A function library of a 7.0 release candidate (opcode 246: name, engine, description flag,
/// body; leonchen83/redis-replicator function.rdb). Redis rebuilds the code with the engine
/// name as written ("#!LUA name=lib1"); we used to lower-case it.
#[test]
fn pre_ga_function_keeps_engine_name() {
    use redis_relay::rdb::{Event, ParseOptions, RdbParser};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fn.rdb");
    let body = b"local function test1() return 1 end redis.register_function('test1', test1)";
    write_rdb(&path, 10, |w| {
        w.bytes(&[246]).unwrap();
        w.string(b"lib1").unwrap();
        w.string(b"LUA").unwrap();
        w.write_len(0).unwrap();
        w.string(body).unwrap();
        w.key_string(b"k", b"v").unwrap();
    });
    let expected = [&b"#!LUA name=lib1\n"[..], &body[..]].concat();
    let data = std::fs::read(&path).unwrap();
    let mut codes = Vec::new();
    RdbParser::new(&data[..], ParseOptions::default())
        .run(|ev| {
            if let Event::Function(lib) = ev {
                codes.push(lib.code.to_vec());
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(codes, vec![expected.clone()]);
    for commands_only in [false, true] {
        let server = RedisServer::start(&[]);
        let report = restore(&path, &server, commands_only).unwrap();
        assert_eq!(report.target_errors, 0);
        let reply = server.client().cmd(&["FUNCTION", "LIST", "WITHCODE"]);
        let text = format!("{reply:?}");
        assert!(text.contains("LUA"), "{text}");
        let found = match reply {
            Reply::Array(Some(libs)) => libs.iter().any(|l| {
                matches!(l, Reply::Array(Some(f)) if f.iter().any(|x| matches!(x, Reply::Bulk(Some(b)) if b[..] == expected[..])))
            }),
            _ => false,
        };
        assert!(found, "library code not found: {text}");
    }
}
