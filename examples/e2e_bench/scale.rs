//! `--scale`: the full sync and the catch-up at 10,000,000 keys from 2 masters, sized to fit a
//! shared machine's memory.
//!
//! The default data set (1,000,000 keys, 595 MB as RESP, values up to 512 bytes) would need
//! about 7 GB per copy at 10,000,000 keys, and the normal run holds four copies at once
//! (masters, native replicas, target, the `redis-cli --pipe` server). So this run:
//! - uses small values: 97% strings of 16 to 64 bytes, 3% hashes, lists, sets and sorted sets
//!   (0.75% each) of 5 to 20 elements of 4 to 16 bytes;
//! - writes the preload straight to the masters (each key to the master nutcracker places it
//!   on, computed with the relay's own placement and checked through nutcracker), generated on
//!   the fly, no file;
//! - has no `redis-cli --pipe` baseline, no steady-lag probes and no big keys;
//! - stops the native replicas (`SHUTDOWN NOSAVE`) once timed, before the relay's sync, so at
//!   most two copies (plus the masters' fork for the sync) exist at once;
//! - refuses to start when `MemAvailable` is below an estimate of what it needs.
//!
//! It measures what the normal run does for the full sync (the relay vs 2 native replicas,
//! timed on the target and on the replicas) and the catch-up rounds, plus the relay's peak
//! RSS and CPU and the servers' `used_memory`.

use super::*;
use redis_relay::source::twemproxy::{load_config, placement::Placement};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Bytes of generated commands per block handed to a master's writer thread.
const BLOCK_BYTES: usize = 1 << 20;
/// Blocks queued per master (the generator waits beyond: memory stays bounded).
const QUEUED_BLOCKS: usize = 8;
/// What one key of this data set costs a Redis, generously (measured: about 140 bytes), and
/// how many copies exist at once (masters and target, the replicas' gone; the fork for the
/// masters' sync adds little without writes): the memory check's estimate.
const BYTES_PER_KEY: u64 = 200;
const COPIES: u64 = 3;

/// What the preload wrote.
struct Loaded {
    keys: u64,
    elements: u64,
    bytes: u64,
}

/// The scale run; prints its table. `o.keys` keys (10,000,000 unless `--keys` says).
// Long: one sequential script of phases sharing the servers, the relay and the figures.
pub fn run(o: &Opts) -> Res<()> {
    let need = o.keys * BYTES_PER_KEY * COPIES;
    let avail = mem_available();
    log(format!(
        "memory: {:.1} GiB available, about {:.1} GiB needed at most",
        gib(avail),
        gib(need)
    ));
    if avail < need {
        return Err(format!(
            "not enough memory for {} keys: {:.1} GiB available, about {:.1} GiB needed (try a smaller --keys)",
            o.keys,
            gib(avail),
            gib(need)
        )
        .into());
    }
    let tmp = tempfile::Builder::new().prefix("e2e-scale").tempdir()?;
    let dir = tmp.path();
    let master_conf = [
        "repl-diskless-sync yes",
        "repl-diskless-sync-delay 0",
        "repl-backlog-size 256mb",
        "client-output-buffer-limit replica 0 0 0",
    ];
    let ma = Server::start(dir, "master-a", &master_conf);
    let mb = Server::start(dir, "master-b", &master_conf);
    let nut = Nutcracker::start(dir, &[&ma, &mb]);
    let t = Instant::now();
    let data = preload(&nut, [&ma, &mb], o.keys)?;
    let expected = dbsize(&ma) + dbsize(&mb);
    let masters_mem = used_memory(&ma) + used_memory(&mb);
    log(format!(
        "preloaded {} keys ({} elements, {:.1} MB as RESP) straight into the masters in {:.1}s: {} + {} keys, used_memory {}",
        data.keys,
        data.elements,
        data.bytes as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        dbsize(&ma),
        dbsize(&mb),
        mib_b(masters_mem)
    ));
    assert_eq!(expected as u64, data.keys, "keys on the masters");
    check_placement(&nut, 1000, o.keys)?;

    // ---- baseline: two native replicas in parallel, then stopped
    let tck = clk_tck();
    let (ra, rb, native_secs) = native_replicas(dir, &ma, &mb);
    // Started just before: their CPU is the sync's (with the RDB's loading).
    let replicas_cpu = cpu_secs(ra.child.id(), tck) + cpu_secs(rb.child.id(), tck);
    assert_eq!(dbsize(&ra) + dbsize(&rb), expected, "replica keys");
    let replicas_mem = used_memory(&ra) + used_memory(&rb);
    log(format!(
        "native replicas: {native_secs:.2}s, used_memory {}; stopping them (SHUTDOWN NOSAVE)",
        mib_b(replicas_mem)
    ));
    for r in [ra, rb] {
        let _ = r.client().try_cmd(&["SHUTDOWN", "NOSAVE"]);
        drop(r);
    }

    // ---- the relay: full sync
    let target = Server::start(dir, "target", &[]);
    let t_sync = Instant::now();
    let wall_sync = std::time::SystemTime::now();
    let mut relay = Relay::start(
        dir,
        "relay",
        &["--twemproxy".into(), nut.config.display().to_string()],
        &target,
    );
    let pid = relay.pid();
    let sampler = RssSampler::start(pid);
    let full = wait_target_holds(&mut relay, &target, [&ma, &mb], expected, t_sync);
    // Where the sync's time goes: the target's CPU over it (it was started just before).
    let target_cpu = cpu_secs(target.child.id(), tck);
    let metrics_done = wait_caught_up(&mut relay, &[&ma, &mb], Duration::from_secs(3600))?;
    let full_secs = full.as_secs_f64();
    let full_rss = sampler.finish(pid);
    let full_cpu = cpu_secs(pid, tck);
    let target_mem = used_memory(&target);
    let own = relay_keys(&target);
    let got = dbsize(&target) - own;
    let bad = sample_check(&[&ma, &mb], &target, 500);
    log(format!(
        "relay full sync: {full_secs:.2}s (metrics said done {:.3}s later), peak RSS {}, {full_cpu:.1} CPU s (target {target_cpu:.1} CPU s, native replicas {replicas_cpu:.1}), target {got} keys (+{own} own), used_memory {}, {bad} of 500 sampled keys differ",
        metrics_done.as_secs_f64(),
        mib(full_rss),
        mib_b(target_mem)
    ));
    log(format!(
        "full sync phases: {}; {}",
        goals::masters_rdb_sent(dir, &["master-a", "master-b"], wall_sync),
        goals::sync_phases(&relay.log, wall_sync)
    ));
    // Issue 18's baseline: one native replica of the target, which holds everything now.
    let (one_secs, one_cpu) = goals::one_replica_of(dir, &target, tck);
    log(format!(
        "one native replica of the target: {one_secs:.2}s ({one_cpu:.1} CPU s of the replica)"
    ));
    let mut notes = Vec::new();
    if got != expected || bad > 0 {
        notes.push(format!(
            "full sync check FAILED: target holds {got} keys (expected {expected}), {bad} of 500 sampled keys differ"
        ));
    }

    // ---- catch-up
    let setup = cluster::Setup {
        dir,
        nut: &nut,
        masters: [&ma, &mb],
        tck,
        rounds: o.catchup_rounds,
        catchup_n: o.catchup_n,
        perf_dir: &o.perf_dir,
    };
    let cu = catch_up(&setup, &target, &mut relay)?;
    if !cu.hwm_reset {
        notes.push("could not reset VmHWM (clear_refs): catch-up RSS is sampled VmRSS only".into());
    }
    let figures = Figures {
        keys: data.keys,
        native_secs,
        full_secs,
        full_rss,
        full_cpu,
        target_cpu,
        replicas_cpu,
        masters_mem,
        replicas_mem,
        target_mem,
        one_secs,
        one_cpu,
    };
    print_table(o, &data, &figures, &cu, &notes);
    drop(relay);
    Ok(())
}

/// The full sync's figures, for the table.
struct Figures {
    keys: u64,
    native_secs: f64,
    full_secs: f64,
    /// KiB.
    full_rss: u64,
    full_cpu: f64,
    /// CPU seconds of the target over the relay's sync, of both native replicas over theirs.
    target_cpu: f64,
    replicas_cpu: f64,
    /// Bytes (`used_memory`).
    masters_mem: u64,
    replicas_mem: u64,
    target_mem: u64,
    /// One native replica of the target (issue 18's baseline): seconds, its CPU seconds.
    one_secs: f64,
    one_cpu: f64,
}

// Long: one table, a row per figure.
fn print_table(o: &Opts, data: &Loaded, f: &Figures, cu: &CatchUp, notes: &[String]) {
    let mut rows = vec![
        row(
            &format!("full sync, {} keys, 2 masters: time", f.keys),
            format!(
                "{:.2} s ({:.0} keys/s)",
                f.full_secs,
                f.keys as f64 / f.full_secs
            ),
            &format!(
                "{:.2} s ({:.0} keys/s), 2 native replicas",
                f.native_secs,
                f.keys as f64 / f.native_secs
            ),
            format!("{:.2}x", f.full_secs / f.native_secs),
            "≤ 1.5x",
            Some(f.full_secs <= 1.5 * f.native_secs),
        ),
        goals::one_replica_row(f.full_secs, f.one_secs, f.keys),
        goals::target_cpu_row(f.target_cpu, f.full_secs, f.one_cpu, f.keys),
        row(
            "full sync: relay peak RSS (VmHWM), CPU",
            format!("{} ({:.1} CPU s)", mib(f.full_rss), f.full_cpu),
            "",
            String::new(),
            "< 64 MiB",
            Some(f.full_rss < 64 * 1024),
        ),
        row(
            "full sync: relay peak RSS, issue 18's goal (flat from 1,000,000 to 10,000,000 keys)",
            mib(f.full_rss),
            "",
            String::new(),
            "≤ 48 MiB (issue 18)",
            Some(f.full_rss <= 48 * 1024),
        ),
        row(
            "full sync: CPU of the target",
            format!("{:.1} CPU s", f.target_cpu),
            &format!("{:.1} CPU s, 2 native replicas together", f.replicas_cpu),
            format!("{:.2}x", f.target_cpu / f.replicas_cpu),
            "(info)",
            None,
        ),
        row(
            "full sync: `used_memory` of the target",
            mib_b(f.target_mem),
            &format!(
                "{} (2 masters), {} (2 native replicas)",
                mib_b(f.masters_mem),
                mib_b(f.replicas_mem)
            ),
            format!("{:.2}x the masters'", f.target_mem as f64 / f.masters_mem as f64),
            "(info)",
            None,
        ),
        row(
            &format!(
                "catch-up after a paused target ({} ops, `redis-benchmark -P 16` via nutcracker), medians of {} rounds",
                cu.load_reqs, o.catchup_rounds
            ),
            format!("{:.0} ops/s", cu.ops),
            &format!("{:.0} ops/s, target's own ingest (`-P 64`)", cu.ingest),
            format!("{:.0}% (median of the rounds' ratios)", 100.0 * cu.ratio),
            "≥ 90%",
            Some(cu.ratio >= 0.9),
        ),
        row(
            "catch-up: relay peak RSS (CPU per round)",
            format!("{} ({:.1} CPU s)", mib(cu.rss_kib), cu.cpu_per_round),
            "",
            String::new(),
            "< 128 MiB",
            Some(cu.rss_kib < 128 * 1024),
        ),
    ];
    rows.extend(goals::round_rows(&cu.rounds, cu.load_reqs));
    print_results(&format!("scale run: {} keys", f.keys), &rows);
    println!(
        "\nData: {} keys ({} elements, {:.1} MB as RESP): 97% strings of 16–64 bytes, 3% hashes/lists/sets/zsets of 5–20 elements.",
        data.keys,
        data.elements,
        data.bytes as f64 / 1e6
    );
    for n in notes {
        println!("\nNOTE: {n}");
    }
}

/// The command that creates key number `i` of the scale data set, appended to `out`; returns
/// its element count.
fn scale_command(rng: &mut Rng, i: u64, out: &mut BytesMut, val: &mut Vec<u8>) -> u64 {
    let kind = i % 400;
    if kind >= 12 {
        let len = rng.range(16, 64) as usize;
        rng.fill(val, len);
        let k = format!("s:{i}");
        encode_command(out, &[b"SET".as_slice(), k.as_bytes(), val]);
        return 1;
    }
    let n = rng.range(5, 20) as usize;
    let (cmd, prefix) = match kind % 4 {
        0 => ("HSET", "h"),
        1 => ("RPUSH", "l"),
        2 => ("SADD", "t"),
        _ => ("ZADD", "z"),
    };
    let mut args: Vec<Vec<u8>> = vec![cmd.into(), format!("{prefix}:{i}").into_bytes()];
    for j in 0..n {
        let vlen = rng.range(4, 16) as usize;
        rng.fill(val, vlen);
        match kind % 4 {
            0 => {
                args.push(format!("f{j}").into_bytes());
                args.push(val.clone());
            }
            1 => args.push(val.clone()),
            2 => args.push(format!("m{j}:{}", String::from_utf8_lossy(val)).into()),
            _ => {
                args.push(format!("{}", rng.range(0, 1_000_000) as f64 / 8.0).into());
                args.push(format!("m{j}").into_bytes());
            }
        }
    }
    encode_command(out, &args);
    n as u64
}

/// The key `scale_command` writes for number `i` (for the placement check).
fn scale_key(i: u64) -> String {
    let kind = i % 400;
    if kind >= 12 {
        return format!("s:{i}");
    }
    let prefix = ["h", "l", "t", "z"][(kind % 4) as usize];
    format!("{prefix}:{i}")
}

/// Generate the data set and write each key straight to the master nutcracker places it on
/// (`masters` in the order of nutcracker's `servers:`), one pipelined connection per master.
fn preload(nut: &Nutcracker, masters: [&Server; 2], keys: u64) -> Res<Loaded> {
    let tw = load_config(&nut.config, None)?;
    let placement = Placement::for_pool(&tw.pools[0])?;
    let mut senders = Vec::new();
    let mut loaders = Vec::new();
    for m in masters {
        let (tx, rx) = sync_channel::<(BytesMut, u64)>(QUEUED_BLOCKS);
        let port = m.port;
        senders.push(tx);
        loaders.push(std::thread::spawn(move || load_blocks(port, rx)));
    }
    let mut rng = Rng(0x5ca1e);
    let mut val = Vec::new();
    let mut bufs = [BytesMut::new(), BytesMut::new()];
    let mut counts = [0u64; 2];
    let mut data = Loaded {
        keys,
        elements: 0,
        bytes: 0,
    };
    for i in 0..keys {
        let m = placement.owner(scale_key(i).as_bytes());
        let before = bufs[m].len();
        data.elements += scale_command(&mut rng, i, &mut bufs[m], &mut val);
        data.bytes += (bufs[m].len() - before) as u64;
        counts[m] += 1;
        if bufs[m].len() >= BLOCK_BYTES {
            send_block(&senders[m], &mut bufs[m], &mut counts[m])?;
        }
    }
    for m in 0..2 {
        send_block(&senders[m], &mut bufs[m], &mut counts[m])?;
    }
    drop(senders);
    let mut commands = 0;
    for l in loaders {
        let (n, errors) = l.join().map_err(|_| "a loader panicked")??;
        if errors > 0 {
            return Err(format!("{errors} errors while preloading").into());
        }
        commands += n;
    }
    // One PING per master ends each load.
    assert_eq!(commands, keys + 2, "replies while preloading");
    Ok(data)
}

/// Hand what `buf` holds (`count` commands) to a master's loader.
fn send_block(tx: &SyncSender<(BytesMut, u64)>, buf: &mut BytesMut, count: &mut u64) -> Res<()> {
    if !buf.is_empty() {
        tx.send((buf.split(), std::mem::take(count)))
            .map_err(|_| "a master's loader stopped")?;
    }
    Ok(())
}

/// Write the blocks from `rx` (each with its command count) to the server at `port`, then a
/// PING, reading every reply meanwhile; returns (replies, error replies).
fn load_blocks(port: u16, rx: Receiver<(BytesMut, u64)>) -> Res<(u64, u64)> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    let mut reader = stream.try_clone()?;
    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (sent_w, done_w) = (sent.clone(), done.clone());
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = stream;
        for (block, count) in rx {
            sent_w.fetch_add(count, Ordering::AcqRel);
            s.write_all(&block)?;
        }
        // The PING's reply comes after `done` is set: the reader cannot wait for it forever.
        sent_w.fetch_add(1, Ordering::AcqRel);
        done_w.store(true, Ordering::Release);
        s.write_all(b"*1\r\n$4\r\nPING\r\n")
    });
    let (mut seen, mut errors) = (0u64, 0u64);
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 256 << 10];
    while !(done.load(Ordering::Acquire) && seen == sent.load(Ordering::Acquire)) {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Err("connection closed while preloading".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some((r, used)) = parse_reply(&buf)? {
            let _ = buf.split_to(used);
            if r.is_error() {
                if errors < 5 {
                    eprintln!("preload error: {r:?}");
                }
                errors += 1;
            }
            seen += 1;
        }
    }
    writer.join().map_err(|_| "preload writer panicked")??;
    Ok((seen, errors))
}

/// `n` keys of the data set, spread over it, must exist through nutcracker: the preload put
/// each key where nutcracker looks for it.
fn check_placement(nut: &Nutcracker, n: u64, keys: u64) -> Res<()> {
    let mut c = Client::connect(nut.port)?;
    let step = (keys / n).max(1);
    for i in (0..keys).step_by(step as usize) {
        let k = scale_key(i);
        if c.int(&["EXISTS", &k]) != 1 {
            return Err(format!("key {k} is not where nutcracker looks for it").into());
        }
    }
    Ok(())
}

/// `used_memory` of `s`, bytes.
fn used_memory(s: &Server) -> u64 {
    s.client()
        .info_field("memory", "used_memory")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `MemAvailable` of `/proc/meminfo`, bytes.
fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

fn mib_b(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}
