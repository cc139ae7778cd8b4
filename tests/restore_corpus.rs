//! `redis-relay restore` end to end: every corpus dump into a fresh Redis 7.0, through RESTORE
//! (where the target can load the dump's RDB version) and through plain commands
//! (`--commands-only`), read back with the live reader and compared with `expected.json`.
//! Plus the ways a restore can fail: login, unreachable target, corrupt file, full target.
//!
//! What a 7.0 target legitimately cannot reproduce is allowed, and only that:
//! * `encoding` (never compared);
//! * hash field TTLs of 7.4+ dumps (7.0 has none): asserted to be the only difference;
//! * stream consumer/PEL `times` on the command path (XCLAIM/CREATECONSUMER happen now); the
//!   RESTORE path keeps them and they are compared exactly;
//! * stream metadata only one side has (a pre-7.0 `expected.json` has no `entries_read`).
//!
//! Expire times are compared exactly, against the values stored in the RDB.

mod canon;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use redis_relay::endpoint::Endpoint;
use redis_relay::verify::{compare_documents_named, read_canonical, CompareOptions, DiffKind};
use support::{corpus_dir, free_port, RedisServer};

const BIN: &str = env!("CARGO_BIN_EXE_redis-relay");

fn restore(file: &Path, url: &str, extra: &[&str]) -> Output {
    let out = Command::new(BIN)
        .arg("restore")
        .arg(file)
        .arg("--target")
        .arg(url)
        .arg("-q")
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run redis-relay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "redis-relay panicked:\n{stderr}"
    );
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Restore `rdb` into a fresh 7.0 server and compare with the version's expected content.
/// `extra` are more restore arguments (`--commands-only`, `--big-key-bytes N`).
fn restore_and_compare(dir: &Path, rdb: &Path, extra: &[&str]) {
    let server = RedisServer::start(&[]);
    let commands_only = extra.contains(&"--commands-only");
    let rdb_version = canon::rdb_version(dir);
    let mut extra = extra.to_vec();
    if rdb_version >= 12 {
        // 7.4+ files hold hash field TTLs, which 7.0 cannot: refused unless allowed.
        let refused = restore(rdb, &server.url(), &extra);
        assert!(
            !refused.status.success() && stderr(&refused).contains("hash field TTLs"),
            "{}: a 7.0 target must refuse field TTLs by default:\n{}",
            rdb.display(),
            stderr(&refused)
        );
        server.client().cmd(&["FLUSHALL"]);
        extra.extend(["--on-unsupported-type", "drop-ttl"]);
    }
    let extra = &extra[..];
    let started = std::time::Instant::now();
    let out = restore(rdb, &server.url(), extra);
    let what = format!("{} {}", rdb.display(), extra.join(" "));
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{}",
        out.status.code(),
        stderr(&out)
    );
    let took = started.elapsed();
    // RESTORE is used when the 7.0 target (RDB 10) can load the payloads.
    let restore_path = !commands_only && rdb_version <= 10;
    let summary = stderr(&out);
    if restore_path {
        assert!(
            !summary.contains(" 0 by RESTORE"),
            "{what}: expected the RESTORE path: {summary}"
        );
    } else {
        assert!(
            summary.contains(" 0 by RESTORE"),
            "{what}: expected the command path: {summary}"
        );
    }

    if extra.contains(&"--big-key-bytes") {
        assert!(
            !summary.contains("(0 big)"),
            "{what}: big keys expected: {summary}"
        );
    }
    let expected = canon::exact_expected(dir);
    let live = read_canonical(&Endpoint::parse(&server.url()).unwrap()).unwrap();
    let opts = CompareOptions {
        ttl_tolerance_ms: 0,
        ignore_stream_times: !restore_path,
        max_differences: 100,
    };
    let report = compare_documents_named(&expected, &live, "expected.json", "restored", &opts);
    let field_ttl_hashes = canon::hashes_with_field_ttl(&expected) as u64;
    if rdb_version >= 12 {
        // 7.4+: the hashes with field TTLs lose them on 7.0, and nothing else differs.
        assert!(field_ttl_hashes > 0, "{what}: the dataset has field TTLs");
        assert_eq!(
            report.kinds(),
            [DiffKind::FieldTtl].into_iter().collect(),
            "{what}:\n{report}"
        );
        assert_eq!(
            report.count(DiffKind::FieldTtl),
            field_ttl_hashes,
            "{what}:\n{report}"
        );
    } else {
        assert!(report.is_equal(), "{what}:\n{report}");
    }
    for (db, c) in &report.dbs {
        assert_eq!(c.left_keys, c.right_keys, "{what}: db {db} key count");
    }
    eprintln!(
        "{what}: restored in {took:.2?}, {} keys",
        report.dbs.values().map(|c| c.right_keys).sum::<u64>()
    );
}

fn check_version(name: &str) {
    let dir = canon::version_dir(&corpus_dir(), name);
    let files = canon::rdb_files(&dir);
    for rdb in &files {
        restore_and_compare(&dir, rdb, &[]);
    }
    let dump = dir.join("dump.rdb");
    restore_and_compare(&dir, &dump, &["--commands-only"]);
    // Values over 4 KiB arrive as chunks (BigStart/BigChunk/BigEnd) and are written as
    // bounded commands, whatever the path of the small ones.
    restore_and_compare(&dir, &dump, &["--big-key-bytes", "4096"]);
}

macro_rules! version_tests {
    ($($fn:ident => $name:literal),* $(,)?) => {
        $(#[test] fn $fn() { check_version($name); })*

        /// Every version directory of the corpus has a test above.
        #[test]
        fn every_corpus_version_is_covered() {
            let covered: Vec<&str> = vec![$($name),*];
            let found: Vec<String> = canon::versions()
                .iter()
                .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            assert_eq!(found, covered);
        }
    };
}

version_tests! {
    restore_2_4_18 => "2.4.18",
    restore_2_6_17 => "2.6.17",
    restore_2_8_24 => "2.8.24",
    restore_3_2_13 => "3.2.13",
    restore_4_0_14 => "4.0.14",
    restore_5_0_14 => "5.0.14",
    restore_6_0_20 => "6.0.20",
    restore_6_2_16 => "6.2.16",
    restore_7_0_15 => "7.0.15",
    restore_7_2_6 => "7.2.6",
    restore_7_4_1 => "7.4.1",
    restore_8_0_m01 => "8.0-m01",
}

fn small_dump() -> PathBuf {
    canon::version_dir(&corpus_dir(), "7.0.15").join("dump.rdb")
}

/// A target that needs a password (`requirepass`) and one with an ACL user.
#[test]
fn password_protected_target() {
    let server = RedisServer::start(&["requirepass pass", "user x on >pw ~* &* +@all"]);
    let dir = canon::version_dir(&corpus_dir(), "7.0.15");
    let expected = canon::exact_expected(&dir);
    for url in [
        format!("redis://:pass@127.0.0.1:{}", server.port),
        format!("redis://x:pw@127.0.0.1:{}", server.port),
    ] {
        let mut c = server.client();
        c.cmd(&["AUTH", "pass"]);
        c.cmd(&["FLUSHALL"]);
        c.cmd(&["FUNCTION", "FLUSH"]);
        let out = restore(&small_dump(), &url, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            !stderr(&out).contains("pw@"),
            "no credentials in the output"
        );
        let live = read_canonical(&Endpoint::parse(&url).unwrap()).unwrap();
        let r = compare_documents_named(
            &expected,
            &live,
            "expected",
            url.as_str(),
            &Default::default(),
        );
        assert!(r.is_equal(), "{r}");
    }
}

#[test]
fn wrong_password_fails_cleanly() {
    let server = RedisServer::start(&["requirepass pass"]);
    for url in [
        format!("redis://:nope@127.0.0.1:{}", server.port),
        format!("redis://x:nope@127.0.0.1:{}", server.port),
        format!("redis://127.0.0.1:{}", server.port),
    ] {
        let out = restore(&small_dump(), &url, &[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{url}: {err}");
        assert!(
            err.contains(&format!("127.0.0.1:{}", server.port)),
            "{url}: {err}"
        );
        assert!(
            err.contains("AUTH") || err.contains("NOAUTH"),
            "{url}: {err}"
        );
        assert!(!err.contains("nope"), "the password is not printed: {err}");
    }
}

#[test]
fn unreachable_target_fails_cleanly() {
    let port = free_port();
    let out = restore(&small_dump(), &format!("redis://127.0.0.1:{port}"), &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}

/// A truncated and a corrupted RDB: non-zero exit, and the message says where.
#[test]
fn corrupt_rdb_fails_with_offset() {
    let server = RedisServer::start(&[]);
    let data = std::fs::read(small_dump()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let truncated = tmp.path().join("truncated.rdb");
    std::fs::write(&truncated, &data[..data.len() / 2]).unwrap();
    let out = restore(&truncated, &server.url(), &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("truncated.rdb"), "{err}");
    assert!(err.contains("at byte"), "{err}");

    let mut bad = data.clone();
    bad[9] = 0xEE; // the first opcode after the header: no such opcode
    let corrupt = tmp.path().join("corrupt.rdb");
    std::fs::write(&corrupt, &bad).unwrap();
    let out = restore(&corrupt, &server.url(), &[]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("at byte 9"), "{err}");
}

/// A target that refuses writes (out of memory): exit code 2 and the refused count.
#[test]
fn full_target_exit_code_2() {
    let server = RedisServer::start(&["maxmemory 1mb", "maxmemory-policy noeviction"]);
    let out = restore(&small_dump(), &server.url(), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let refused: u64 = err
        .split(" commands acknowledged, ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refused count in: {err}"));
    assert!(refused > 0, "{err}");
    assert!(err.contains("OOM"), "the target's reason is logged: {err}");
}
