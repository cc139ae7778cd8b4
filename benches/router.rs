//! The key router: where a command's keys are (`pipeline::keys::command_keys`) and which writer
//! they go to (`pipeline::router::partition`), over a realistic mix of replicated commands.
//! Reports commands/s as "elements/s".

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use redis_relay::pipeline::keys::{command_keys, KeySpec};
use redis_relay::pipeline::router::partition;
use std::hint::black_box;

fn args(words: &[&str]) -> Vec<Bytes> {
    words
        .iter()
        .map(|w| Bytes::copy_from_slice(w.as_bytes()))
        .collect()
}

/// What a master propagates under a mixed web workload: mostly single-key writes, some
/// multi-key commands, a few keyless ones (SELECT, PING, PUBLISH).
fn mix(n: usize) -> Vec<Vec<Bytes>> {
    (0..n)
        .map(|i| {
            let k = format!(
                "user:{:08}:profile",
                i.wrapping_mul(2_654_435_761) % 1_000_000
            );
            let k2 = format!("session:{:08}", i % 50_000);
            match i % 20 {
                0..=5 => args(&[
                    "SET",
                    &k,
                    "some-value-of-medium-size",
                    "PXAT",
                    "2111303699112",
                ]),
                6..=8 => args(&["HSET", &k, "field", "value", "f2", "v2"]),
                9 | 10 => args(&["LPUSH", &k2, "item"]),
                11 => args(&["INCRBY", &k, "5"]),
                12 => args(&["ZADD", &k, "1.5", "member"]),
                13 => args(&["SADD", &k2, "a", "b", "c"]),
                14 => args(&["DEL", &k, &k2, "other:key"]),
                15 => args(&["MSET", &k, "1", &k2, "2"]),
                16 => args(&["PEXPIREAT", &k, "2111303699112"]),
                17 => args(&["SELECT", "0"]),
                18 => args(&["PING"]),
                _ => args(&["RENAME", &k, &k2]),
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    const N: usize = 100_000;
    let cmds = mix(N);
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("command_keys", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for a in &cmds {
                if let KeySpec::Keys(k) = command_keys(black_box(a)) {
                    n += k.len();
                }
            }
            n
        })
    });
    for writers in [2usize, 8] {
        g.bench_function(
            format!("command_keys_and_partition_{writers}_writers"),
            |b| {
                b.iter(|| {
                    let mut acc = 0usize;
                    for a in &cmds {
                        match command_keys(black_box(a)) {
                            KeySpec::Keys(keys) => {
                                for k in keys {
                                    acc = acc.wrapping_add(partition(k, writers));
                                }
                            }
                            KeySpec::Channel(ch) => acc = acc.wrapping_add(partition(ch, writers)),
                            KeySpec::Global => acc = acc.wrapping_add(1),
                        }
                    }
                    acc
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
