//! Shared helpers for the RDB corpus tests.
#![allow(dead_code)]

use redis_relay::rdb::*;
use serde_json::Value as J;
use std::path::{Path, PathBuf};

pub const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus");

/// The corpus root; panics (never skips) when it is missing.
pub fn corpus() -> PathBuf {
    let p = PathBuf::from(CORPUS);
    assert!(
        p.join("README.md").is_file(),
        "RDB corpus not found at {} (expected ../shared/corpus relative to the crate root)",
        p.display()
    );
    p
}

/// Version directories, sorted.
pub fn versions() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus())
        .expect("read corpus dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("dump.rdb").is_file())
        .collect();
    v.sort();
    assert_eq!(
        v.len(),
        12,
        "expected 12 Redis versions in the corpus, found {}",
        v.len()
    );
    v
}

/// The RDB files of a version directory.
pub fn rdb_files(dir: &Path) -> Vec<PathBuf> {
    ["dump.rdb", "dump-lru.rdb", "dump-lfu.rdb"]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.is_file())
        .collect()
}

pub fn read_json(p: &Path) -> J {
    let s = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    serde_json::from_slice(&s).unwrap_or_else(|e| panic!("parse {}: {e}", p.display()))
}

/// Parse all events of an RDB held in memory.
pub fn events(data: &[u8], opts: ParseOptions) -> (Vec<Event>, ParseSummary) {
    let mut evs = Vec::new();
    let mut p = RdbParser::new(data, opts);
    let s = p
        .run(|e| {
            evs.push(e);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("parse failed: {e}"));
    (evs, s)
}

/// Structural JSON equality where numbers compare as f64 (exactly).
pub fn json_eq(a: &J, b: &J, path: &str, diffs: &mut Vec<String>) {
    if diffs.len() > 20 {
        return;
    }
    match (a, b) {
        (J::Number(x), J::Number(y)) => {
            if x.as_f64() != y.as_f64() {
                diffs.push(format!("{path}: {x} != {y}"));
            }
        }
        (J::Object(x), J::Object(y)) => {
            for k in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => json_eq(p, q, &format!("{path}/{k}"), diffs),
                    (p, q) => diffs.push(format!(
                        "{path}/{k}: present {} vs {}",
                        p.is_some(),
                        q.is_some()
                    )),
                }
            }
        }
        (J::Array(x), J::Array(y)) => {
            if x.len() != y.len() {
                diffs.push(format!("{path}: array length {} != {}", x.len(), y.len()));
            }
            for (i, (p, q)) in x.iter().zip(y).enumerate() {
                json_eq(p, q, &format!("{path}[{i}]"), diffs);
            }
        }
        _ => {
            if a != b {
                let s = |v: &J| {
                    let t = v.to_string();
                    t.chars().take(120).collect::<String>()
                };
                diffs.push(format!("{path}: {} != {}", s(a), s(b)));
            }
        }
    }
}

/// Compare a canonical document with expected.json: `encoding` ignored; `expire_ms` checked
/// exactly against dump.structure.json (per db/key), then ignored in the comparison.
pub fn compare_with_expected(actual: &J, expected: &J, structure: &J, what: &str) {
    let mut exp_expire = std::collections::HashMap::new();
    for k in structure["keys"].as_array().expect("structure keys") {
        exp_expire.insert(
            (
                k["db"].as_u64().unwrap(),
                k["key"].as_str().unwrap().to_string(),
            ),
            k["expire_ms"].as_i64(),
        );
    }
    let mut diffs = Vec::new();
    let strip = |doc: &J, check: bool, diffs: &mut Vec<String>| -> J {
        let mut d = doc.clone();
        if let Some(dbs) = d["databases"].as_object_mut() {
            for (db, v) in dbs.iter_mut() {
                for k in v["keys"].as_array_mut().unwrap() {
                    let o = k.as_object_mut().unwrap();
                    o.remove("encoding");
                    let key = o["key"].as_str().unwrap().to_string();
                    if check {
                        let want = exp_expire.get(&(db.parse::<u64>().unwrap(), key.clone()));
                        match want {
                            Some(w) if *w == o["expire_ms"].as_i64() => {}
                            _ => diffs.push(format!(
                                "db {db} key {key}: expire {:?} vs structure {:?}",
                                o["expire_ms"], want
                            )),
                        }
                    }
                    o.remove("expire_ms");
                }
            }
        }
        d
    };
    let mut a = strip(actual, true, &mut diffs);
    // RDBs before 3.2 (RDB 7) have no `redis-ver` aux field: the version is not in the file.
    if a["redis_version"].is_null() {
        a["redis_version"] = expected["redis_version"].clone();
    }
    let e = strip(expected, false, &mut diffs);
    json_eq(&a, &e, "", &mut diffs);
    assert!(
        diffs.is_empty(),
        "{what}: canonical content differs from expected.json:\n{}",
        diffs.join("\n")
    );
}

/// A DUMP payload from a raw value body: body + version (u16 LE) + CRC64 (LE).
pub fn dump_payload(raw: &[u8], version: u32) -> Vec<u8> {
    let mut p = raw.to_vec();
    p.extend_from_slice(&(version as u16).to_le_bytes());
    let crc = crc64(&p);
    p.extend_from_slice(&crc.to_le_bytes());
    p
}
