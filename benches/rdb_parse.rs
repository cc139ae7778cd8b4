//! Parser throughput (MB/s) per encoding family (generated in memory), on the 7.4.1 corpus
//! dump and on a generated RDB.
//!
//! The generated file (~200 MB, or `RDB_BENCH_MB`) is written once into a temp dir. It is read
//! through a `BufReader<File>` as a replica would read a socket through its own buffer.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use redis_relay::rdb::testgen::{encode_listpack, generate, GenOptions, RdbWriter};
use redis_relay::rdb::{Event, ParseOptions, RdbParser};
use std::io::BufReader;

fn parse_bytes(data: &[u8], opts: &ParseOptions) -> u64 {
    let mut n = 0u64;
    RdbParser::new(data, opts.clone())
        .run(|e| {
            if matches!(e, Event::Entry(_) | Event::BigChunk(_)) {
                n += 1;
            }
            Ok(())
        })
        .expect("parse");
    n
}

fn bench(c: &mut Criterion) {
    let corpus = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/corpus/7.4.1/dump.rdb"
    );
    let data = std::fs::read(corpus).expect("corpus 7.4.1/dump.rdb");
    let mut g = c.benchmark_group("rdb_parse");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.bench_function("corpus_7.4.1", |b| {
        b.iter(|| parse_bytes(&data, &ParseOptions::default()))
    });
    g.bench_function("corpus_7.4.1_raw", |b| {
        let o = ParseOptions {
            capture_raw: true,
            ..Default::default()
        };
        b.iter(|| parse_bytes(&data, &o))
    });
    g.bench_function("corpus_7.4.1_undecoded", |b| {
        b.iter(|| parse_bytes(&data, &undecoded()))
    });

    let mb: u64 = std::env::var("RDB_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gen.rdb");
    let f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
    let opts = GenOptions {
        total_bytes: mb << 20,
        list_bytes: (mb << 20) / 4,
        list_elem_bytes: 100,
    };
    generate(f, &opts).expect("generate");
    let size = std::fs::metadata(&path).unwrap().len();
    g.throughput(Throughput::Bytes(size));
    g.sample_size(10);
    g.bench_function(format!("generated_{mb}MB"), |b| {
        b.iter(|| {
            let f = BufReader::with_capacity(256 << 10, std::fs::File::open(&path).unwrap());
            let mut n = 0u64;
            RdbParser::new(f, ParseOptions::default())
                .run(|_| {
                    n += 1;
                    Ok(())
                })
                .expect("parse");
            n
        })
    });
    g.finish();
}

/// What a relay into a target of the same version parses with: raw bytes, values undecoded,
/// reading ahead (its input ends with the RDB).
fn undecoded() -> ParseOptions {
    ParseOptions {
        capture_raw: true,
        undecoded_up_to_version: u32::MAX,
        read_ahead: true,
        ..Default::default()
    }
}

/// One in-memory RDB (version 11) of about `target` bytes holding keys of one encoding family.
fn family_rdb(family: &str, target: usize) -> Vec<u8> {
    let mut w = RdbWriter::new(Vec::with_capacity(target + 1024), 11).unwrap();
    w.select_db(0).unwrap();
    let val = vec![b'v'; 100];
    let elems: Vec<Vec<u8>> = (0..100)
        .map(|j| format!("element-{j:06}").into_bytes())
        .collect();
    let e: Vec<&[u8]> = elems.iter().map(|x| x.as_slice()).collect();
    let mut i = 0u64;
    while (w.written() as usize) < target {
        let key = format!("{family}:{i}");
        let k = key.as_bytes();
        match family {
            "string" => w.key_string(k, &val).unwrap(),
            "list_quicklist" => w
                .key_list_quicklist2(k, (0..10).map(|_| e.clone()), 10)
                .unwrap(),
            "set_hashtable" => w.key_set(k, &e).unwrap(),
            "hash_hashtable" => {
                let pairs: Vec<(&[u8], &[u8])> = e.chunks(2).map(|p| (p[0], p[1])).collect();
                w.key_hash(k, &pairs).unwrap()
            }
            "zset_skiplist" => {
                let m: Vec<(&[u8], f64)> = e.iter().map(|x| (*x, 1.5)).collect();
                w.key_zset2(k, &m).unwrap()
            }
            // Listpack-encoded small values: type byte (written as a 1-byte length), key, blob.
            "hash_listpack" | "zset_listpack" | "set_listpack" => {
                let (ty, lp) = match family {
                    "hash_listpack" => (16, encode_listpack(&e[..64])),
                    "zset_listpack" => {
                        let mut z: Vec<&[u8]> = Vec::new();
                        for x in &e[..32] {
                            z.push(x);
                            z.push(b"1.5");
                        }
                        (17, encode_listpack(&z))
                    }
                    _ => (20, encode_listpack(&e[..64])),
                };
                w.write_len(ty).unwrap();
                w.string(k).unwrap();
                w.string(&lp).unwrap();
            }
            other => panic!("unknown family {other}"),
        }
        i += 1;
    }
    w.finish().unwrap()
}

/// MB/s per encoding family, from memory.
fn bench_families(c: &mut Criterion) {
    let mut g = c.benchmark_group("rdb_parse_family");
    g.sample_size(10);
    for family in [
        "string",
        "list_quicklist",
        "set_hashtable",
        "set_listpack",
        "hash_hashtable",
        "hash_listpack",
        "zset_skiplist",
        "zset_listpack",
    ] {
        let data = family_rdb(family, 16 << 20);
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(family, |b| {
            b.iter(|| parse_bytes(&data, &ParseOptions::default()))
        });
        g.bench_function(format!("{family}_undecoded"), |b| {
            b.iter(|| parse_bytes(&data, &undecoded()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_families, bench);
criterion_main!(benches);
