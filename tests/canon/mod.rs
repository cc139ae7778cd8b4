//! Helpers shared by the tests that compare live servers with the corpus's canonical JSON.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value as J;

#[path = "../common/mod.rs"]
mod common;
#[allow(unused_imports)] // each test binary uses its own subset
pub use common::{dump_payload, events, rdb_files, read_json, versions};

/// One version directory, by name (`"7.0.15"`).
pub fn version_dir(corpus: &Path, name: &str) -> PathBuf {
    let d = corpus.join(name);
    assert!(
        d.join("dump.rdb").is_file(),
        "{} has no dump.rdb",
        d.display()
    );
    d
}

/// The RDB version of the version's dump (from `dump.structure.json`).
pub fn rdb_version(dir: &Path) -> u64 {
    read_json(&dir.join("dump.structure.json"))["rdb_version"]
        .as_u64()
        .expect("rdb_version in dump.structure.json")
}

/// `expected.json` with every `expire_ms` replaced by the exact value stored in the RDB
/// (`dump.structure.json`), so that restored content can be compared with 0 ms tolerance on
/// every version (before 7.0, `expected.json` holds PTTL-derived approximations).
pub fn exact_expected(dir: &Path) -> J {
    let mut expected = read_json(&dir.join("expected.json"));
    let structure = read_json(&dir.join("dump.structure.json"));
    let exact: HashMap<(u64, String), J> = structure["keys"]
        .as_array()
        .expect("keys in dump.structure.json")
        .iter()
        .map(|k| {
            (
                (
                    k["db"].as_u64().unwrap(),
                    k["key"].as_str().unwrap().to_string(),
                ),
                k["expire_ms"].clone(),
            )
        })
        .collect();
    let dbs = expected["databases"].as_object_mut().expect("databases");
    let mut n = 0;
    for (db, v) in dbs.iter_mut() {
        let db: u64 = db.parse().unwrap();
        for e in v["keys"].as_array_mut().unwrap() {
            let key = e["key"].as_str().unwrap().to_string();
            let t = exact.get(&(db, key.clone())).unwrap_or_else(|| {
                panic!(
                    "{}: db {db} key {key} not in dump.structure.json",
                    dir.display()
                )
            });
            let approx = e["expire_ms"].as_i64();
            // The approximation must be close to the exact value, or the two files disagree.
            if let (Some(a), Some(x)) = (approx, t.as_i64()) {
                assert!(
                    (a - x).abs() <= 1500,
                    "{}: {key}: {a} vs {x}",
                    dir.display()
                );
            }
            e["expire_ms"] = t.clone();
            n += 1;
        }
    }
    assert_eq!(
        n,
        exact.len(),
        "{}: key counts of expected.json and dump.structure.json",
        dir.display()
    );
    expected
}

/// Hashes with at least one field TTL in a canonical document.
pub fn hashes_with_field_ttl(doc: &J) -> usize {
    doc["databases"]
        .as_object()
        .map(|dbs| {
            dbs.values()
                .flat_map(|d| d["keys"].as_array().cloned().unwrap_or_default())
                .filter(|k| {
                    k.get("field_expire_ms")
                        .and_then(J::as_object)
                        .is_some_and(|m| !m.is_empty())
                })
                .count()
        })
        .unwrap_or(0)
}
