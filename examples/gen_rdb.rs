//! Generate a synthetic RDB (version 10, loadable by Redis 7.0+) for memory and load tests.
//!
//! ```text
//! cargo run --release --example gen_rdb -- --out /tmp/big.rdb --list-mb 300 --total-mb 1000
//! ```
//! Prints the key count and the big list's length (`big:list`) for DBSIZE / LLEN checks.

use redis_relay::rdb::testgen::{generate, GenOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut out = None;
    let mut list_mb: u64 = 300;
    let mut total_mb: u64 = 1000;
    let mut elem: usize = 100;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--out" => out = Some(val()?),
            "--list-mb" => list_mb = val()?.parse()?,
            "--total-mb" => total_mb = val()?.parse()?,
            "--elem-bytes" => elem = val()?.parse()?,
            "-h" | "--help" => {
                println!("usage: gen_rdb --out FILE [--list-mb 300] [--total-mb 1000] [--elem-bytes 100]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let out = out.ok_or("--out FILE is required")?;
    let f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&out)?);
    let opts = GenOptions {
        total_bytes: total_mb << 20,
        list_bytes: list_mb << 20,
        list_elem_bytes: elem,
    };
    let s = generate(f, &opts)?;
    println!(
        "wrote {out}: {} bytes, {} keys, big:list LLEN {}",
        s.bytes, s.keys, s.list_len
    );
    Ok(())
}
