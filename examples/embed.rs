//! Run a relay inside another program:
//! `cargo run --example embed -- SOURCE_URL TARGET_URL STATE_DIR [SECONDS]`.
//!
//! Starts the relay, prints each source's status every second (state, offsets, lag), and
//! shuts it down gracefully after SECONDS (default 10): the writers drain and the checkpoints
//! are written, so the next run continues with a partial resync.

use std::time::Duration;

use redis_relay::endpoint::Endpoint;
use redis_relay::relay::RelayBuilder;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        args.len() >= 3,
        "usage: embed SOURCE_URL TARGET_URL STATE_DIR [SECONDS]"
    );
    let seconds: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let handle = RelayBuilder::new()
        .source(Endpoint::parse(&args[0])?)
        .target(Endpoint::parse(&args[1])?)
        .state_dir(&args[2])
        .start()?;
    for _ in 0..seconds {
        std::thread::sleep(Duration::from_secs(1));
        if let Some(e) = handle.error() {
            anyhow::bail!(e);
        }
        for s in handle.status() {
            println!(
                "{} state={} snapshot_done={} master_offset={} applied_offset={} lag_bytes={} commands={}",
                s.source,
                s.state,
                s.snapshot_done,
                s.master_offset,
                s.applied_offset,
                s.lag_bytes,
                s.commands_applied
            );
        }
    }
    handle.shutdown(Duration::from_secs(10))?;
    println!("stopped cleanly");
    Ok(())
}
