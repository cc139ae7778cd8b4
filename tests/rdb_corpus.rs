//! The parser against the twelve-version corpus: canonical content, expiry, RDB types, raw
//! DUMP bodies, chunked delivery, and the RDB payloads inside the replication captures.

mod common;

use base64::Engine;
use common::*;
use redis_relay::rdb::json::{CanonicalBuilder, KeyAssembler};
use redis_relay::rdb::*;
use std::io::Cursor;

fn canonical(events: &[Event]) -> serde_json::Value {
    let mut b = CanonicalBuilder::default();
    for e in events {
        b.feed(e.clone());
    }
    b.finish()
}

#[test]
fn corpus_dumps_match_expected() {
    let mut files = 0;
    let mut keys_total = 0;
    for dir in versions() {
        let expected = read_json(&dir.join("expected.json"));
        let structure = read_json(&dir.join("dump.structure.json"));
        for f in rdb_files(&dir) {
            let what = f.display().to_string();
            let data = std::fs::read(&f).unwrap();
            let opts = ParseOptions {
                capture_raw: true,
                ..Default::default()
            };
            let (evs, summary) = events(&data, opts);
            assert_eq!(summary.bytes, data.len() as u64, "{what}: consumed bytes");
            if summary.version >= 5 {
                assert!(
                    summary.checksum.is_some_and(|c| c != 0),
                    "{what}: checksum present"
                );
            }
            let doc = canonical(&evs);
            compare_with_expected(&doc, &expected, &structure, &what);

            // Key count and RDB type per key, in file order.
            let ours: Vec<(u64, String, u8)> = evs
                .iter()
                .filter_map(|e| match e {
                    Event::Entry(e) => Some(&e.meta),
                    Event::BigStart(m) => Some(m),
                    _ => None,
                })
                .map(|m| {
                    (
                        m.db,
                        base64::engine::general_purpose::STANDARD.encode(&m.key),
                        m.rdb_type,
                    )
                })
                .collect();
            let theirs: Vec<(u64, String, u8)> = structure["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| {
                    (
                        k["db"].as_u64().unwrap(),
                        k["key"].as_str().unwrap().to_string(),
                        k["rdb_type"].as_u64().unwrap() as u8,
                    )
                })
                .collect();
            if f.ends_with("dump.rdb") {
                assert_eq!(ours, theirs, "{what}: keys/types in file order");
            } else {
                // dump.structure.json indexes dump.rdb; the lru/lfu saves may order keys differently.
                let (mut a, mut b) = (ours.clone(), theirs.clone());
                a.sort();
                b.sort();
                assert_eq!(a, b, "{what}: keys/types");
            }
            assert_eq!(summary.keys as usize, theirs.len(), "{what}: key count");

            // IDLE / FREQ on every key of the lru/lfu dumps.
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            for e in &evs {
                if let Event::Entry(e) = e {
                    if name == "dump-lru.rdb" {
                        assert!(e.meta.idle.is_some(), "{what}: IDLE missing");
                    }
                    if name == "dump-lfu.rdb" {
                        assert!(e.meta.freq.is_some(), "{what}: FREQ missing");
                    }
                }
            }

            // Raw bodies decode back to the same value as DUMP payloads.
            let mut raws = 0;
            for e in &evs {
                if let Event::Entry(e) = e {
                    let raw = e
                        .raw
                        .as_ref()
                        .unwrap_or_else(|| panic!("{what}: raw missing"));
                    let payload = dump_payload(raw, summary.version);
                    let (kt, v) = decode_dump_payload(&payload)
                        .unwrap_or_else(|err| panic!("{what}: decode_dump_payload: {err}"));
                    assert_eq!(kt, e.meta.key_type);
                    assert_eq!(v, e.value, "{what}: raw round trip of key {:?}", e.meta.key);
                    raws += 1;
                }
            }
            assert!(raws > 0);

            // Tiny big-value threshold and chunks: same content, chunked path exercised.
            let tiny = ParseOptions {
                capture_raw: true,
                big_value_bytes: 64,
                chunk_bytes: 100,
                chunk_elements: 3,
                ..Default::default()
            };
            let (tevs, _) = events(&data, tiny);
            let mut bigs = 0;
            for e in &tevs {
                match e {
                    Event::BigStart(_) => bigs += 1,
                    Event::BigChunk(v) => {
                        let n = match v {
                            Value::List(l) | Value::Set(l) => l.len(),
                            Value::ZSet(z) => z.len(),
                            Value::Hash(h) => h.len(),
                            Value::Stream(s) => s.entries.len(),
                            Value::String(s) => {
                                assert!(
                                    s.len() <= 100,
                                    "{what}: string chunk of {} bytes",
                                    s.len()
                                );
                                0
                            }
                            Value::Module { .. } | Value::Undecoded => 0,
                        };
                        assert!(n <= 3, "{what}: chunk of {n} elements");
                    }
                    Event::Entry(e) => {
                        // Whole entries are small: their raw bytes must still round-trip.
                        let payload = dump_payload(e.raw.as_ref().unwrap(), summary.version);
                        assert_eq!(decode_dump_payload(&payload).unwrap().1, e.value);
                    }
                    _ => {}
                }
            }
            assert!(
                bigs > 10,
                "{what}: only {bigs} big keys with a 64-byte threshold"
            );
            assert_eq!(canonical(&tevs), doc, "{what}: chunked parse differs");

            files += 1;
            keys_total += summary.keys;
        }
    }
    assert_eq!(files, 16, "12 dump.rdb + 2 lru + 2 lfu");
    eprintln!("checked {files} RDB files, {keys_total} keys");
}

/// Parse `data` decoding and passing through (`undecoded_up_to_version`): the same events,
/// except that entries may be undecoded, and those decode from their raw bytes to the value
/// the decoding parse gave. Returns how many entries were passed through undecoded.
fn pass_through_matches_decoding(data: &[u8], base: &ParseOptions, what: &str) -> usize {
    let decoding = ParseOptions {
        capture_raw: true,
        ..base.clone()
    };
    let passing = ParseOptions {
        capture_raw: true,
        undecoded_up_to_version: u32::MAX,
        read_ahead: true,
        ..base.clone()
    };
    let (dec, ds) = events(data, decoding);
    let (pass, ps) = events(data, passing);
    assert_eq!(ds, ps, "{what}: summary");
    assert_eq!(dec.len(), pass.len(), "{what}: event count");
    let mut undecoded = 0;
    for (a, b) in dec.iter().zip(&pass) {
        match (a, b) {
            (Event::Entry(a), Event::Entry(b)) => {
                assert_eq!(a.meta, b.meta, "{what}");
                assert_eq!(a.raw, b.raw, "{what}: raw of {:?}", a.meta.key);
                if b.value == Value::Undecoded {
                    undecoded += 1;
                }
                let v = b
                    .decoded_value()
                    .unwrap_or_else(|e| panic!("{what}: {:?}: {e}", a.meta.key));
                assert_eq!(*v, a.value, "{what}: value of {:?}", a.meta.key);
                if let (Value::String(sv), Some(raw)) = (&a.value, &a.raw) {
                    // What the snapshot apply sends in MSETs.
                    let direct = decode_string_body(raw)
                        .unwrap_or_else(|e| panic!("{what}: {:?}: {e}", a.meta.key));
                    assert_eq!(&direct, sv, "{what}: string of {:?}", a.meta.key);
                }
            }
            _ => assert_eq!(a, b, "{what}"),
        }
    }
    undecoded
}

#[test]
fn pass_through_gives_the_events_of_a_decoding_parse() {
    let thresholds = [8 << 20, 2000, 300, 64];
    let mut total = 0;
    for dir in versions() {
        for f in rdb_files(&dir) {
            let data = std::fs::read(&f).unwrap();
            for big in thresholds {
                let base = ParseOptions {
                    big_value_bytes: big,
                    chunk_bytes: 100,
                    chunk_elements: 3,
                    ..Default::default()
                };
                let what = format!("{} (big {big})", f.display());
                let n = pass_through_matches_decoding(&data, &base, &what);
                if big == 8 << 20 {
                    assert!(n > 5, "{what}: only {n} entries passed through");
                }
                total += n;
            }
        }
    }
    // Shapes the corpus lacks: empty collections (never passed through: Redis drops them and
    // RESTORE refuses them), empty quicklist nodes, values around the big threshold.
    let mut w = redis_relay::rdb::testgen::RdbWriter::new(Vec::new(), 11).unwrap();
    let none: &[&[u8]] = &[];
    w.key_set(b"empty-set", none).unwrap();
    w.key_hash(b"empty-hash", &[]).unwrap();
    w.key_zset2(b"empty-zset", &[]).unwrap();
    w.key_list_quicklist2(b"no-nodes", Vec::<Vec<&[u8]>>::new(), 0)
        .unwrap();
    w.key_list_quicklist2(b"empty-node", vec![vec![]], 1)
        .unwrap();
    w.key_list_quicklist2(
        b"empty-and-full",
        vec![vec![], vec![b"a".as_slice(), b"bb", b"12345"]],
        2,
    )
    .unwrap();
    let long: Vec<Vec<u8>> = (0..40).map(|i| vec![b'x'; i * 7]).collect();
    let long: Vec<&[u8]> = long.iter().map(|v| v.as_slice()).collect();
    w.key_set(b"set", &long).unwrap();
    let pairs: Vec<(&[u8], &[u8])> = long.iter().map(|v| (*v, b"-42".as_slice())).collect();
    w.key_hash(b"hash", &pairs).unwrap();
    let members: Vec<(&[u8], f64)> = long.iter().map(|v| (*v, 1.5)).collect();
    w.key_zset2(b"zset", &members).unwrap();
    w.key_list_quicklist2(b"list", long.chunks(7).map(|c| c.to_vec()), 6)
        .unwrap();
    w.key_string(b"int", b"123456789").unwrap();
    w.key_string(b"string", &[b'y'; 3000]).unwrap();
    let data = w.finish().unwrap();
    for big in [8 << 20, 5000, 1000, 300, 64, 1] {
        let base = ParseOptions {
            big_value_bytes: big,
            chunk_bytes: 100,
            chunk_elements: 3,
            ..Default::default()
        };
        let what = format!("generated (big {big})");
        let n = pass_through_matches_decoding(&data, &base, &what);
        if big == 8 << 20 {
            // Everything but the five empty lists, sets, hashes and sorted sets.
            assert_eq!(n, 7, "{what}");
        }
        total += n;
    }
    eprintln!("{total} entries passed through undecoded, all equal to their decoding");
}

#[test]
fn psync_payloads_parse_without_over_reading() {
    let mut n = 0;
    for dir in versions() {
        let expected = read_json(&dir.join("expected.json"));
        let structure = read_json(&dir.join("dump.structure.json"));
        for mode in ["full", "diskless"] {
            let meta_p = dir.join(format!("psync-{mode}.meta.json"));
            if !meta_p.is_file() {
                continue;
            }
            let meta = read_json(&meta_p);
            let bin = std::fs::read(dir.join(format!("psync-{mode}.bin"))).unwrap();
            let off = meta["rdb_payload_file_offset"].as_u64().unwrap() as usize;
            let len = meta["rdb_payload_len"].as_u64().unwrap();
            let what = format!("{} psync-{mode}", dir.display());
            // Hand the parser everything after the payload start, command stream included:
            // it must stop exactly at the end of the RDB.
            let cursor = Cursor::new(&bin[off..]);
            let mut parser = RdbParser::new(cursor, ParseOptions::default());
            let mut b = CanonicalBuilder::default();
            let s = parser
                .run(|e| {
                    b.feed(e);
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(s.bytes, len, "{what}: RDB length");
            assert_eq!(parser.position(), len);
            let cursor = parser.into_inner();
            assert_eq!(
                cursor.position(),
                len,
                "{what}: the parser read past the RDB trailer"
            );
            compare_with_expected(&b.finish(), &expected, &structure, &what);
            // Passing values through (skipping their bytes) must stop at the same place.
            let passing = ParseOptions {
                capture_raw: true,
                undecoded_up_to_version: u32::MAX,
                ..Default::default()
            };
            let mut parser = RdbParser::new(Cursor::new(&bin[off..]), passing);
            let s = parser
                .run(|_| Ok(()))
                .unwrap_or_else(|e| panic!("{what} (pass-through): {e}"));
            assert_eq!(s.bytes, len, "{what} (pass-through): RDB length");
            assert_eq!(
                parser.into_inner().position(),
                len,
                "{what} (pass-through): the parser read past the RDB trailer"
            );
            n += 1;
        }
    }
    assert_eq!(n, 22);
}

#[test]
fn json_lines_dump() {
    let dir = versions()
        .into_iter()
        .find(|d| d.ends_with("7.4.1"))
        .unwrap();
    let data = std::fs::read(dir.join("dump.rdb")).unwrap();
    let mut out = Vec::new();
    let s = json::dump_json_lines(&data[..], &mut out).unwrap();
    let lines: Vec<&[u8]> = out
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len() as u64, s.keys);
    for l in lines {
        let v: serde_json::Value = serde_json::from_slice(l).unwrap();
        assert!(v["db"].is_u64() && v["key"].is_string() && v["type"].is_string());
    }
    // KeyAssembler on an empty event set does nothing.
    assert!(KeyAssembler::default().feed(Event::BigEnd).is_none());
}
