//! Throughput of the replication stream framer on small commands (the hot path of the relay).
//! Reports commands/s as "elements/s". Also framing + re-encoding for the target.
//!
//! The `vs_redis_protocol/*` groups measure our framer, encoder and hash slot against the
//! `redis-protocol` crate (RESP2, zero-copy `BytesMut` decoding) on the same inputs, after
//! checking that both give the same commands, the same bytes and the same slots
//! (docs/performance.md, "RESP: our framer and encoder against `redis-protocol`").

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::encode::extend_encode;
use redis_protocol::resp2::types::BytesFrame;
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

/// A second mix closer to a busy master: SET (values 16 B to 4 KiB, every 1000th 256 KiB),
/// HSET with several fields, RPUSH (every 500th with 2,000 elements), MULTI/EXEC blocks, PING.
fn stream_mixed(n: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut i = 0;
    while i < n {
        let k = format!("user:{:08}", next() % 1_000_000);
        match i % 10 {
            0..=2 => {
                let len = if i % 1000 == 0 {
                    256 * 1024
                } else {
                    16 << (next() % 9)
                };
                let v = vec![b'v'; len];
                encode_command(
                    &mut out,
                    &[&b"SET"[..], k.as_bytes(), &v, b"PXAT", b"2111303699112"],
                );
            }
            3 | 4 => encode_command(
                &mut out,
                &[
                    "HSET",
                    &k,
                    "name",
                    "alice",
                    "email",
                    "a@example.com",
                    "visits",
                    "17",
                ],
            ),
            5 | 6 => {
                let n_el = if i % 500 == 5 { 2000 } else { 1 + next() % 5 };
                let mut args = vec![b"RPUSH".to_vec(), format!("list:{k}").into_bytes()];
                for e in 0..n_el {
                    args.push(format!("element-{e}").into_bytes());
                }
                encode_command(&mut out, &args);
            }
            7 => {
                encode_command(&mut out, &["MULTI"]);
                encode_command(&mut out, &["INCR", &format!("counter:{k}")]);
                encode_command(&mut out, &["EXPIRE", &format!("counter:{k}"), "3600"]);
                encode_command(&mut out, &["EXEC"]);
                i += 3;
            }
            8 => encode_command(&mut out, &["PING"]),
            _ => encode_command(&mut out, &["DEL", &k]),
        }
        i += 1;
    }
    out.to_vec()
}

/// Reading a stream with our framer, as the replica link does: push each read, take every
/// complete command.
fn frame_ours(data: &[u8], chunk: usize, mut f: impl FnMut(&[Bytes])) {
    let mut fr = CommandFramer::new();
    for piece in data.chunks(chunk) {
        fr.push(piece);
        while let Some(frame) = fr.next_frame().unwrap() {
            f(&frame.args);
        }
    }
    assert_eq!(fr.buffered(), 0);
}

/// The same with `redis-protocol`: append each read to a `BytesMut`, decode frames until it
/// answers "incomplete" (`Ok(None)`), then wait for the next read. It parses an incomplete
/// frame again from its start on every read (no resumable state).
fn frame_rp(data: &[u8], chunk: usize, mut f: impl FnMut(&[BytesFrame])) {
    let mut buf = BytesMut::with_capacity(chunk.max(64 * 1024));
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some((frame, _amt, _raw)) = decode_bytes_mut(&mut buf).unwrap() {
            match frame {
                BytesFrame::Array(items) => f(&items),
                other => panic!("not a command: {other:?}"),
            }
        }
    }
    assert!(buf.is_empty());
}

fn rp_args(items: &[BytesFrame]) -> Vec<Bytes> {
    items
        .iter()
        .map(|it| match it {
            BytesFrame::BulkString(b) => b.clone(),
            other => panic!("not a bulk string: {other:?}"),
        })
        .collect()
}

fn commands(data: &[u8]) -> Vec<Vec<Bytes>> {
    let mut v = Vec::new();
    frame_ours(data, data.len().max(1), |a| v.push(a.to_vec()));
    v
}

/// Both readers give the same commands, whatever the read size.
fn check_same_commands(data: &[u8]) {
    let want = commands(data);
    for chunk in [1460, 16 * 1024, 256 * 1024] {
        let mut got = Vec::new();
        frame_rp(data, chunk, |items| got.push(rp_args(items)));
        assert!(
            got == want,
            "redis-protocol framed differently ({chunk}-byte reads)"
        );
    }
}

/// What `redis-protocol` does with what masters also send: a bare `\n` keepalive and inline
/// commands (Redis 2.4/2.6). Our framer takes both.
fn check_inline_support() {
    for input in [&b"\n"[..], b"\r\n", b"PING\r\n", b"select 0\r\n"] {
        let mut ours = CommandFramer::new();
        ours.push(input);
        assert!(ours.next_frame().unwrap().is_some(), "{input:?}");
        let mut buf = BytesMut::from(input);
        assert!(
            decode_bytes_mut(&mut buf).is_err(),
            "redis-protocol now accepts {input:?}: update README (Dependencies)"
        );
    }
}

/// Redis Cluster's hash slot: CRC16-XMODEM of the key, or of the hash tag (the bytes between the
/// first `{` and the first `}` after it, if not empty), modulo 16384. The reference for
/// `redis_protocol::redis_keyslot`.
fn ref_keyslot(key: &[u8]) -> u16 {
    let mut k = key;
    if let Some(open) = key.iter().position(|&c| c == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&c| c == b'}') {
            if len > 0 {
                k = &key[open + 1..open + 1 + len];
            }
        }
    }
    crc16_xmodem(k) & 0x3fff
}

const CRC16_TABLE: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u16) << 8;
        let mut b = 0;
        while b < 8 {
            c = if c & 0x8000 != 0 {
                (c << 1) ^ 0x1021
            } else {
                c << 1
            };
            b += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

fn crc16_xmodem(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[((crc >> 8) as u8 ^ b) as usize]
    })
}

/// Keys for the slot checks: every string of up to 7 bytes over `{`, `}`, `a`, `b`, the tricky
/// tags named in the issue, Redis's documented examples, and the bench keys.
fn slot_check_keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
    let mut level = vec![Vec::new()];
    for _ in 0..7 {
        let mut nl = Vec::new();
        for k in &level {
            for c in b"{}ab" {
                let mut n: Vec<u8> = k.clone();
                n.push(*c);
                nl.push(n);
            }
        }
        keys.extend(nl.iter().cloned());
        level = nl;
    }
    for k in [
        "{}",
        "{a",
        "a{}{b}",
        "{user1}x",
        "{",
        "}",
        "}{",
        "{{}}",
        "foo{}{bar}",
        "foo{{bar}}zap",
        "foo{bar}{zap}",
        "{user1000}.following",
        "{user1000}.followers",
        "user{1000}",
    ] {
        keys.push(k.as_bytes().to_vec());
    }
    keys.extend(bench_keys(20_000));
    keys
}

fn bench_keys(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| match i % 4 {
            0 => format!("key:{i:08}").into_bytes(),
            1 => format!("{{user{}}}:profile", i % 5000).into_bytes(),
            2 => format!("session:{i:016x}:data:with:a:longer:name").into_bytes(),
            _ => format!("counter:{{}}:{i}").into_bytes(),
        })
        .collect()
}

fn check_keyslots() {
    // Known values (CRC16("123456789") = 0x31C3; `CLUSTER KEYSLOT` answers).
    assert_eq!(crc16_xmodem(b"123456789"), 0x31c3);
    for (k, slot) in [
        ("foo", 12182),
        ("bar", 5061),
        ("somekey", 11058),
        ("8xjx7vWrfPq54mKfFD3Y1CcjjofpnAcQ", 5458),
    ] {
        assert_eq!(ref_keyslot(k.as_bytes()), slot, "{k}");
    }
    for (key, same_as) in [
        ("{user1}x", "user1"),
        ("{}", "{}"),
        ("{a", "{a"),
        ("a{}{b}", "a{}{b}"),
        ("foo{{bar}}zap", "{bar"),
        ("foo{bar}{zap}", "bar"),
    ] {
        assert_eq!(
            ref_keyslot(key.as_bytes()),
            crc16_xmodem(same_as.as_bytes()) & 0x3fff,
            "{key}"
        );
    }
    let keys = slot_check_keys();
    for k in &keys {
        assert_eq!(
            redis_protocol::redis_keyslot(k),
            ref_keyslot(k),
            "redis_keyslot differs on {:?}",
            String::from_utf8_lossy(k)
        );
    }
    eprintln!(
        "redis_keyslot == reference on {} keys (incl. {{}}, {{a, a{{}}{{b}}, {{user1}}x)",
        keys.len()
    );
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

/// Ours against `redis-protocol` 6 on the same inputs: framing, encoding, hash slots.
fn bench_vs_redis_protocol(c: &mut Criterion) {
    check_inline_support();
    check_keyslots();
    let inputs = [("small", stream(200_000)), ("mixed", stream_mixed(100_000))];

    // (a) Framing the replication stream, arriving in reads of 1460 B (one TCP segment),
    // 16 KiB (the relay's read size) and 256 KiB; commands straddle the read boundaries.
    let mut g = c.benchmark_group("vs_redis_protocol/frame");
    for (name, data) in &inputs {
        check_same_commands(data);
        let cmds = commands(data).len() as u64;
        eprintln!("input {name}: {} bytes, {cmds} commands", data.len());
        g.throughput(Throughput::ElementsAndBytes {
            elements: cmds,
            bytes: data.len() as u64,
        });
        for chunk in [1460, 16 * 1024, 256 * 1024] {
            let reads = if chunk % 1024 != 0 {
                format!("{chunk}B")
            } else {
                format!("{}k", chunk / 1024)
            };
            g.bench_function(format!("ours/{name}/{reads}_reads"), |b| {
                b.iter(|| {
                    let mut n = 0usize;
                    frame_ours(data, chunk, |a| n += black_box(a).len());
                    n
                })
            });
            g.bench_function(format!("redis_protocol/{name}/{reads}_reads"), |b| {
                b.iter(|| {
                    let mut n = 0usize;
                    frame_rp(data, chunk, |a| n += black_box(a).len());
                    n
                })
            });
        }
    }
    g.finish();

    // (b) Encoding the writers' output: framed commands (Vec<Bytes>) into one buffer.
    let mut g = c.benchmark_group("vs_redis_protocol/encode");
    for (name, data) in &inputs {
        let cmds = commands(data);
        let rp_frames: Vec<BytesFrame> = cmds
            .iter()
            .map(|a| BytesFrame::Array(a.iter().cloned().map(BytesFrame::BulkString).collect()))
            .collect();
        let mut ours = BytesMut::new();
        let mut theirs = BytesMut::new();
        for (a, f) in cmds.iter().zip(&rp_frames) {
            encode_command(&mut ours, a);
            extend_encode(&mut theirs, f, false).unwrap();
        }
        assert!(
            ours == theirs && ours[..] == data[..],
            "encoders differ on {name}"
        );
        g.throughput(Throughput::ElementsAndBytes {
            elements: cmds.len() as u64,
            bytes: data.len() as u64,
        });
        let mut out = BytesMut::with_capacity(data.len() + 1024);
        g.bench_function(format!("ours/{name}"), |b| {
            b.iter(|| {
                out.clear();
                for a in &cmds {
                    encode_command(&mut out, a);
                }
                black_box(out.len())
            })
        });
        // What a writer holding arguments would do: build the frame, then encode it.
        g.bench_function(format!("redis_protocol_build_frame/{name}"), |b| {
            b.iter(|| {
                out.clear();
                for a in &cmds {
                    let f =
                        BytesFrame::Array(a.iter().cloned().map(BytesFrame::BulkString).collect());
                    extend_encode(&mut out, &f, false).unwrap();
                }
                black_box(out.len())
            })
        });
        // The encoder alone, frames built beforehand.
        g.bench_function(format!("redis_protocol_prebuilt/{name}"), |b| {
            b.iter(|| {
                out.clear();
                for f in &rp_frames {
                    extend_encode(&mut out, f, false).unwrap();
                }
                black_box(out.len())
            })
        });
    }
    g.finish();

    // (c) Hash slots.
    let keys = bench_keys(100_000);
    let mut g = c.benchmark_group("vs_redis_protocol/keyslot");
    g.throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function("reference_crc16_table", |b| {
        b.iter(|| {
            keys.iter()
                .map(|k| ref_keyslot(black_box(k)) as u64)
                .sum::<u64>()
        })
    });
    g.bench_function("redis_protocol", |b| {
        b.iter(|| {
            keys.iter()
                .map(|k| redis_protocol::redis_keyslot(black_box(k)) as u64)
                .sum::<u64>()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = bench, bench_vs_redis_protocol
}
criterion_main!(benches);
