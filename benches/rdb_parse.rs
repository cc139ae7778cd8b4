//! Parser throughput (MB/s) on the 7.4.1 corpus dump and on a generated RDB.
//!
//! The generated file (~200 MB, or `RDB_BENCH_MB`) is written once into a temp dir. It is read
//! through a `BufReader<File>` as a replica would read a socket through its own buffer.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use redis_relay::rdb::testgen::{generate, GenOptions};
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

criterion_group!(benches, bench);
criterion_main!(benches);
