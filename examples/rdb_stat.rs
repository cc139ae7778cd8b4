//! Parse an RDB file and print what it holds and how fast it parsed.
//!
//! ```text
//! cargo run --release --example rdb_stat -- FILE [--repeat N] [--json]
//! ```
//! `--json` writes one canonical JSON object per key to stdout instead.

use redis_relay::rdb::{Event, ParseOptions, RdbParser};
use std::collections::BTreeMap;
use std::io::BufReader;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let file = args
        .first()
        .ok_or("usage: rdb_stat FILE [--repeat N] [--json]")?;
    if args.iter().any(|a| a == "--json") {
        let f = BufReader::new(std::fs::File::open(file)?);
        redis_relay::rdb::json::dump_json_lines(f, std::io::stdout().lock())?;
        return Ok(());
    }
    let repeat: usize = args
        .iter()
        .position(|a| a == "--repeat")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let size = std::fs::metadata(file)?.len();
    for _ in 0..repeat {
        let f = BufReader::with_capacity(256 << 10, std::fs::File::open(file)?);
        let mut types: BTreeMap<&'static str, u64> = BTreeMap::new();
        let (mut chunks, mut bigs) = (0u64, 0u64);
        let t = Instant::now();
        let s = RdbParser::new(f, ParseOptions::default()).run(|e| {
            match e {
                Event::Entry(e) => *types.entry(e.meta.key_type.name()).or_default() += 1,
                Event::BigStart(m) => {
                    bigs += 1;
                    *types.entry(m.key_type.name()).or_default() += 1
                }
                Event::BigChunk(_) => chunks += 1,
                _ => {}
            }
            Ok(())
        })?;
        let dt = t.elapsed().as_secs_f64();
        println!(
            "RDB v{}: {} keys ({} big, {} chunks) {:?}, {} bytes in {:.3}s = {:.1} MB/s",
            s.version,
            s.keys,
            bigs,
            chunks,
            types,
            size,
            dt,
            size as f64 / dt / 1e6
        );
    }
    Ok(())
}
