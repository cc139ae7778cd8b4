//! Framer throughput in commands per second of CPU time (so that a busy machine does not
//! distort it): `cargo run --release --example framer_throughput [commands]`.

use bytes::BytesMut;
use redis_relay::resp::encode_command;
use redis_relay::resp::framer::CommandFramer;
use std::hint::black_box;

/// CPU time of this thread, in ns (Linux), or wall time elsewhere.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
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
    let data = out.to_vec();
    for round in 0..5 {
        let t = cpu_ns();
        let mut f = CommandFramer::new();
        let mut frames = 0usize;
        for piece in data.chunks(64 * 1024) {
            f.push(piece);
            while let Some(fr) = f.next_frame().unwrap() {
                black_box(&fr);
                frames += 1;
            }
        }
        let dt = (cpu_ns() - t) as f64 / 1e9;
        assert_eq!(frames, n);
        println!(
            "round {round}: {n} commands ({:.1} MB) in {:.3} s CPU: {:.2} M commands/s, {:.0} MB/s",
            data.len() as f64 / 1e6,
            dt,
            n as f64 / dt / 1e6,
            data.len() as f64 / dt / 1e6
        );
    }
}
