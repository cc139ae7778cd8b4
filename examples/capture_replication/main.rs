//! Capture a modern server's replication output into `tests/data/modern/<server>-<version>/`,
//! in the layout of the corpus (`../shared/corpus/README.md`), so the parser and the replica
//! side are tested on Redis 8 and Valkey 8/9 without a live server.
//!
//! ```text
//! cargo run --release --example capture_replication -- <server binary> tests/data/modern
//! ```
//!
//! It starts a master of the binary on a free loopback port, loads a deterministic dataset
//! (every type the server can hold, hash field TTLs where it has them), saves `dump.rdb` and
//! reads `expected.json` from the live master (`verify::read_canonical`, the canonical form the
//! tests compare with). Then it connects as a replica sending exactly the relay's handshake and
//! records every byte of a disk-based full sync plus a command workload (`psync-full.*`), and
//! the same on a fresh diskless master started from `dump.rdb` (`psync-diskless.*`). Each
//! capture gets a meta file (offsets), the decoded commands, and the master's content at the end.
//! The data is deterministic; replids, stream auto IDs, delivery times and PINGs are not.

mod dataset;
mod replica;
mod server;
mod workload;

use std::path::{Path, PathBuf};

use redis_relay::verify::{compare_documents_named, read_canonical, CompareOptions};
use serde_json::{json, Value as J};
use server::Server;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bin, out] = args.as_slice() else {
        return Err("usage: capture_replication <server binary> <output root>".into());
    };
    let bin = PathBuf::from(bin);
    let master = Server::start(&bin, &disk_config(), None)?;
    let facts = dataset::Facts::probe(&mut master.client()?)?;
    let dir = Path::new(out).join(&facts.dir_name);
    std::fs::create_dir_all(&dir)?;
    eprintln!("capturing {} into {}", facts.dir_name, dir.display());

    dataset::load(&mut master.client()?, &facts)?;
    master.client()?.call(&["SAVE"])?;
    let dump = master.dir().join("dump.rdb");
    std::fs::copy(&dump, dir.join("dump.rdb"))?;
    let expected = read_canonical(&master.endpoint())?;
    write_json(&dir.join("expected.json"), &expected)?;

    replica::capture(&master, &facts, "full", &dir)?;
    drop(master);

    // Diskless: a fresh master loaded from the dump, checked to hold the same data first.
    let seed = tempfile::tempdir()?;
    std::fs::copy(dir.join("dump.rdb"), seed.path().join("dump.rdb"))?;
    let master = Server::start(&bin, &diskless_config(), Some(seed))?;
    let loaded = read_canonical(&master.endpoint())?;
    let report = compare_documents_named(
        &expected,
        &loaded,
        "expected.json",
        "reloaded",
        &CompareOptions::default(),
    );
    if !report.is_equal() {
        return Err(format!("dump.rdb reloaded differs:\n{report}").into());
    }
    replica::capture(&master, &facts, "diskless", &dir)?;
    eprintln!("done: {}", dir.display());
    Ok(())
}

/// Settings of both masters (the corpus's, plus debug commands for quicklist plain nodes).
fn base_config() -> Vec<String> {
    [
        "repl-ping-replica-period 1",
        "repl-timeout 60",
        "enable-debug-command yes",
        "protected-mode no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn disk_config() -> Vec<String> {
    let mut c = base_config();
    c.push("repl-diskless-sync no".into());
    c
}

fn diskless_config() -> Vec<String> {
    let mut c = base_config();
    c.push("repl-diskless-sync yes".into());
    c.push("repl-diskless-sync-delay 2".into());
    c.push("dbfilename dump.rdb".into());
    c
}

/// Pretty JSON, one value per line, ending with a newline.
fn write_json(path: &Path, v: &J) -> Res<()> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    std::fs::write(path, s)?;
    Ok(())
}

/// The facts every meta file carries.
fn server_json(facts: &dataset::Facts) -> J {
    json!({"name": facts.name, "version": facts.version, "field_ttls": facts.field_ttls})
}
