//! Corrupted and truncated inputs: always an error naming the byte offset, never a panic.
//! Plus a bounded deterministic mutation fuzzer over the corpus (the same harness as
//! `fuzz/fuzz_targets/rdb_parse.rs`, runnable on stable without cargo-fuzz).

mod common;

use common::*;
use redis_relay::rdb::*;

/// Deterministic xorshift64* generator (no dev-dependency needed, reproducible failures).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn parse(data: &[u8], opts: ParseOptions) -> Result<ParseSummary, RdbError> {
    RdbParser::new(data, opts).run(|_| Ok(()))
}

#[test]
fn truncation_always_fails_with_offset() {
    let mut checked = 0;
    for dir in versions() {
        let data = std::fs::read(dir.join("dump.rdb")).unwrap();
        let mut rng = Rng(0x1234_5678 ^ data.len() as u64);
        let mut cuts: Vec<usize> = (0..600.min(data.len())).collect();
        for _ in 0..300 {
            cuts.push(rng.below(data.len()));
        }
        cuts.push(data.len() - 1);
        for (i, cut) in cuts.into_iter().enumerate() {
            // Every other cut also through the pass-through walk (values skipped undecoded).
            let err = parse(
                &data[..cut],
                ParseOptions {
                    capture_raw: true,
                    undecoded_up_to_version: if i % 2 == 0 { 0 } else { u32::MAX },
                    read_ahead: i % 3 == 0,
                    ..Default::default()
                },
            )
            .expect_err("a truncated RDB must not parse");
            let msg = err.to_string();
            assert!(
                err.is_eof(),
                "{}: cut at {cut}: expected EOF error, got {msg}",
                dir.display()
            );
            assert!(
                msg.contains(&format!("at byte {cut}")),
                "cut {cut}: message lacks offset: {msg}"
            );
            checked += 1;
        }
    }
    eprintln!("{checked} truncations checked");
}

#[test]
fn byte_flips_fail_or_are_caught_by_checksum() {
    let mut errs = 0;
    let mut oks = 0;
    for dir in versions() {
        let data = std::fs::read(dir.join("dump.rdb")).unwrap();
        let version: u32 = std::str::from_utf8(&data[5..9]).unwrap().parse().unwrap();
        let mut rng = Rng(0xfeed ^ data.len() as u64);
        for i in 0..120 {
            let mut d = data.clone();
            let pos = if i < 40 { i } else { rng.below(d.len()) };
            d[pos] ^= 1 << rng.below(8);
            match parse(&d, ParseOptions::default()) {
                Ok(_) => {
                    // A flip in the version digits can turn the file into an RDB < 5, which
                    // has no trailer: that one is legitimately undetectable.
                    assert!(
                        version < 5 || pos < 9,
                        "{}: flip at {pos} not detected despite CRC64",
                        dir.display()
                    );
                    oks += 1;
                }
                Err(e) => {
                    assert!(
                        e.to_string().contains("at byte "),
                        "message lacks offset: {e}"
                    );
                    errs += 1;
                }
            }
            // Without the checksum the decoders see the corruption: any result, no panic.
            if i % 4 != 0 {
                continue;
            }
            for undecoded_up_to_version in [0, u32::MAX] {
                let _ = parse(
                    &d,
                    ParseOptions {
                        verify_checksum: false,
                        capture_raw: true,
                        undecoded_up_to_version,
                        ..Default::default()
                    },
                );
            }
            let _ = parse(
                &d,
                ParseOptions {
                    verify_checksum: false,
                    big_value_bytes: 50,
                    chunk_bytes: 7,
                    chunk_elements: 2,
                    ..Default::default()
                },
            );
        }
    }
    eprintln!("byte flips: {errs} errors, {oks} harmless (RDB v2 without checksum)");
}

#[test]
fn error_names_key_and_type() {
    // A list-quicklist-2 key whose listpack header lies about its size.
    let mut w = redis_relay::rdb::testgen::RdbWriter::new(Vec::new(), 10).unwrap();
    w.key_list_quicklist2(b"foo", vec![vec![&b"a"[..], &b"b"[..]]], 1)
        .unwrap();
    let mut d = w.finish().unwrap();
    // Node blob starts after: header 9, type 1, key 4, node count 1, container 1, blob len 1.
    let lp = 9 + 1 + 4 + 1 + 1 + 1;
    d[lp] = d[lp].wrapping_add(1);
    let err = parse(
        &d,
        ParseOptions {
            verify_checksum: false,
            ..Default::default()
        },
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("key \"foo\", type list-quicklist-2"), "{msg}");
    assert!(msg.starts_with("corrupt RDB at byte "), "{msg}");
}

/// Build a minimal RDB holding one key whose value body is `raw` (type byte first).
fn mini_rdb(raw: &[u8], version: u32) -> Vec<u8> {
    let mut d = format!("REDIS{version:04}").into_bytes();
    d.push(raw[0]);
    d.extend_from_slice(&[3, b'k', b'e', b'y']);
    d.extend_from_slice(&raw[1..]);
    d.push(0xff);
    let crc = crc64(&d);
    d.extend_from_slice(&crc.to_le_bytes());
    d
}

fn fix_crc(d: &mut [u8]) {
    if d.len() > 8 {
        let n = d.len() - 8;
        let crc = crc64(&d[..n]);
        d[n..].copy_from_slice(&crc.to_le_bytes());
    }
}

fn mutate(rng: &mut Rng, seed: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
    let mut d = seed.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if d.is_empty() {
            break;
        }
        match rng.below(8) {
            0 => {
                let p = rng.below(d.len());
                d[p] ^= 1 << rng.below(8);
            }
            1 => {
                let p = rng.below(d.len());
                d[p] = [0, 0xff, 0x7f, 0x80, 0xfe, 0x40, 0xc0, 0x3f][rng.below(8)];
            }
            2 => {
                let p = rng.below(d.len());
                let n = rng.below(16).min(d.len() - p);
                d.drain(p..p + n);
            }
            3 => {
                let p = rng.below(d.len());
                let n = rng.below(16);
                let b = rng.next().to_le_bytes();
                for i in 0..n {
                    d.insert(p, b[i % 8]);
                }
            }
            4 => {
                let p = rng.below(d.len());
                d.truncate(p);
            }
            5 => {
                // Splice a chunk of another seed.
                let o = &pool[rng.below(pool.len())];
                if !o.is_empty() {
                    let a = rng.below(o.len());
                    let n = rng.below(64).min(o.len() - a);
                    let p = rng.below(d.len());
                    d.splice(p..p, o[a..a + n].iter().copied());
                }
            }
            6 => {
                // Interesting length bytes: big 32/64-bit lengths.
                let p = rng.below(d.len());
                let v: &[u8] = [
                    &[0x80u8, 0x7f, 0xff, 0xff, 0xff][..],
                    &[0x81, 0, 0, 0, 1, 0, 0, 0, 0][..],
                    &[0xc3, 0x10, 0x40][..],
                ][rng.below(3)];
                d.splice(p..p, v.iter().copied());
            }
            _ => {
                let p = rng.below(d.len());
                let q = rng.below(d.len());
                d.swap(p, q);
            }
        }
    }
    d
}

#[test]
fn mutation_fuzz_bounded() {
    let start = std::time::Instant::now();
    // Seeds: every key of three versions as a mini RDB, plus its DUMP payload.
    let mut seeds: Vec<(Vec<u8>, u32)> = Vec::new();
    for dir in versions() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        if !["2.4.18", "3.2.13", "5.0.14", "7.4.1"].contains(&name.as_str()) {
            continue;
        }
        let data = std::fs::read(dir.join("dump.rdb")).unwrap();
        let (evs, s) = events(
            &data,
            ParseOptions {
                capture_raw: true,
                ..Default::default()
            },
        );
        for e in evs {
            if let Event::Entry(e) = e {
                let raw = e.raw.unwrap();
                if raw.len() < 20_000 {
                    seeds.push((raw.to_vec(), s.version));
                }
            }
        }
    }
    let pool: Vec<Vec<u8>> = seeds.iter().map(|s| s.0.clone()).collect();
    let mut rng = Rng(0x5eed_0001);
    let iterations = 20_000;
    let mut ok = 0;
    for i in 0..iterations {
        let (raw, version) = &seeds[rng.below(seeds.len())];
        let m = mutate(&mut rng, raw, &pool);
        if m.is_empty() {
            continue;
        }
        // As a whole file (checksum fixed up so the decoders see the mutation).
        let mut file = mini_rdb(&m, *version);
        if i % 2 == 0 {
            fix_crc(&mut file);
        }
        let opts = match i % 3 {
            0 => ParseOptions {
                capture_raw: true,
                big_value_bytes: 40,
                chunk_bytes: 16,
                chunk_elements: 2,
                ..Default::default()
            },
            1 => ParseOptions {
                capture_raw: true,
                ..Default::default()
            },
            // The pass-through walk, with a threshold that sends some values back to decoding.
            _ => ParseOptions {
                capture_raw: true,
                big_value_bytes: 200,
                undecoded_up_to_version: u32::MAX,
                ..Default::default()
            },
        };
        if parse(&file, opts).is_ok() {
            ok += 1;
        }
        // As a DUMP payload.
        let _ = decode_dump_payload(&dump_payload(&m, *version));
    }
    eprintln!(
        "mutation fuzz: {iterations} inputs from {} seeds, {ok} parsed OK, {:?}",
        seeds.len(),
        start.elapsed()
    );
}
