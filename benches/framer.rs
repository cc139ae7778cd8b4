//! Throughput of the replication stream framer on small commands (the hot path of the relay).
//! Reports commands/s as "elements/s". Also framing + re-encoding for the target.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use redis_relay::resp::encode_command;
use redis_relay::resp::framer::CommandFramer;
use std::hint::black_box;

/// A realistic mix: SET with PXAT, SELECT, PING, HSET, DEL, INCR.
fn stream(n: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    for i in 0..n {
        let k = format!("key:{i:08}");
        match i % 6 {
            0 => encode_command(
                &mut out,
                &["SET", &k, "some-value-123", "PXAT", "2111303699112"],
            ),
            1 => encode_command(&mut out, &["SELECT", "0"]),
            2 => encode_command(&mut out, &["PING"]),
            3 => encode_command(&mut out, &["HSET", &k, "field", "value"]),
            4 => encode_command(&mut out, &["DEL", &k]),
            _ => encode_command(&mut out, &["INCR", &k]),
        }
    }
    out.to_vec()
}

fn bench(c: &mut Criterion) {
    const N: usize = 200_000;
    let data = stream(N);
    let mut g = c.benchmark_group("framer");
    g.throughput(Throughput::Elements(N as u64));
    for chunk in [16 * 1024, 256 * 1024] {
        g.bench_function(format!("small_commands_{}k_reads", chunk / 1024), |b| {
            b.iter(|| {
                let mut f = CommandFramer::new();
                let mut n = 0usize;
                for piece in data.chunks(chunk) {
                    f.push(piece);
                    while let Some(fr) = f.next_frame().unwrap() {
                        n += black_box(fr).args.len();
                    }
                }
                n
            })
        });
    }
    // Framing plus re-encoding every command for the target, as the apply path does.
    g.bench_function("frame_and_reencode_256k_reads", |b| {
        let mut out = BytesMut::with_capacity(data.len() + 1024);
        b.iter(|| {
            out.clear();
            let mut f = CommandFramer::new();
            for piece in data.chunks(256 * 1024) {
                f.push(piece);
                while let Some(fr) = f.next_frame().unwrap() {
                    encode_command(&mut out, &fr.args);
                }
            }
            black_box(out.len())
        })
    });
    // Re-encoding alone (already framed arguments).
    let frames: Vec<_> = {
        let mut f = CommandFramer::new();
        f.push(&data);
        std::iter::from_fn(|| f.next_frame().unwrap()).collect()
    };
    g.bench_function("reencode_only", |b| {
        let mut out = BytesMut::with_capacity(data.len() + 1024);
        b.iter(|| {
            out.clear();
            for fr in &frames {
                encode_command(&mut out, &fr.args);
            }
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
