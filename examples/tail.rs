//! Print a master's change stream: `cargo run --example tail -- redis://127.0.0.1:6379`.
//!
//! The relay acts as a replica of the master and hands every event to a closure instead of a
//! Redis target: the snapshot's keys first, then each write command with its database and
//! replication offset. Stops after `--seconds N` (default: runs until killed).

use std::time::Duration;

use redis_relay::endpoint::Endpoint;
use redis_relay::rdb::Event;
use redis_relay::relay::{RelayBuilder, RelayEvent};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let seconds: Option<u64> = match (args.next().as_deref(), args.next()) {
        (Some("--seconds"), Some(n)) => Some(n.parse()?),
        _ => None,
    };
    let state = tempfile_dir()?;
    let handle = RelayBuilder::new()
        .source(Endpoint::parse(&url)?)
        .state_dir(&state)
        .sink(|_source| {
            Box::new(|ev: RelayEvent| {
                match ev {
                    RelayEvent::FullResync {
                        source,
                        replid,
                        offset,
                    } => {
                        println!("# {source}: full resync {replid} at {offset:?}")
                    }
                    RelayEvent::Snapshot {
                        event: Event::Entry(e),
                        ..
                    } => println!(
                        "snapshot db={} key={:?} type={}",
                        e.meta.db,
                        String::from_utf8_lossy(&e.meta.key),
                        e.meta.key_type.name()
                    ),
                    RelayEvent::Snapshot {
                        event: Event::BigStart(m),
                        ..
                    } => println!(
                        "snapshot db={} key={:?} type={} (big, in chunks)",
                        m.db,
                        String::from_utf8_lossy(&m.key),
                        m.key_type.name()
                    ),
                    RelayEvent::Snapshot { .. } => {}
                    RelayEvent::SnapshotEnd { source } => println!("# {source}: snapshot done"),
                    RelayEvent::Command {
                        db, offset, args, ..
                    } => {
                        let words: Vec<String> = args
                            .iter()
                            .map(|a| String::from_utf8_lossy(a).into_owned())
                            .collect();
                        println!("{offset} db={db} {}", words.join(" "));
                    }
                }
                Ok(())
            })
        })
        .start()?;
    let started = std::time::Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(e) = handle.error() {
            anyhow::bail!(e);
        }
        if seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
            break;
        }
    }
    handle.shutdown(Duration::from_secs(5))?;
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("redis-relay-tail-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
