//! Issue 18's goals ("performance at the limit of one target"), each beside its baseline:
//! - full sync at most 1.1x **one native replica loading the same data** (a replica of the
//!   target once it holds everything: the fastest way into one Redis process, so the limit
//!   for any tool writing to one target), shown beside the two-replica baseline;
//! - catch-up at least 100% of the target's own `-P 64` ingest of the same mix, in every
//!   round, not only the median;
//! - p99 lag at most 1.2x a real replica's on the same probes;
//! - the relay's own heartbeat-based lag agreeing with those probes (p50 and p99 within
//!   ±25%; each probe is followed by a heartbeat key stamped at its start);
//! - the relay's peak RSS at most 48 MiB at 1,000,000 keys (flat up to 10,000,000: `--scale`).

use super::*;

/// One native replica of `target` (which holds every key by now): `REPLICAOF` until its link
/// is up, no sync in progress and the target's offset reached, like the two-replica baseline;
/// then stopped (`SHUTDOWN NOSAVE`) so that the rest of the run writes to a target without a
/// replica. Returns (seconds, the replica's CPU seconds: started just before, so its load).
pub fn one_replica_of(dir: &Path, target: &Server, tck: f64) -> (f64, f64) {
    // Redis 7 syncs diskless by default, after a 5 s delay for more replicas to join.
    target
        .client()
        .cmd(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]);
    let r = Server::start(dir, "replica-of-target", &[]);
    let t = Instant::now();
    r.client()
        .cmd(&["REPLICAOF", "127.0.0.1", &target.port.to_string()]);
    while !replica_synced(&r, target) {
        assert!(
            t.elapsed() < Duration::from_secs(1800),
            "the replica of the target never synced"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs(r.child.id(), tck);
    assert_eq!(
        dbsize(&r),
        dbsize(target),
        "keys on the replica of the target"
    );
    let _ = r.client().try_cmd(&["SHUTDOWN", "NOSAVE"]);
    drop(r);
    (secs, cpu)
}

/// One round's catch-up: the relay's applied ops/s and the target's own ingest right after.
pub struct RoundFigures {
    pub rate: f64,
    pub ingest: f64,
    pub target: TargetWork,
}

/// The target's CPU per load op (µs) and busy share (CPU s over wall s) in a round's catch-up
/// and in its own ingest: what bounds the ratio.
#[derive(Clone, Copy)]
pub struct TargetWork {
    pub relay_us: f64,
    pub relay_busy: f64,
    pub own_us: f64,
    pub own_busy: f64,
}

/// What one data set's run measured, for the goals' table.
pub struct Summary {
    pub dataset: Dataset,
    pub keys: u64,
    pub full_secs: f64,
    pub two_replicas_secs: f64,
    pub one_replica_secs: f64,
    pub rounds: Vec<RoundFigures>,
    /// Steady lag p99, ms: the relay's (probes seen on the target) and the native replica's.
    pub p99: f64,
    pub replica_p99: f64,
    /// The heartbeat-based lag's p50 and p99 over the probes, and the probes' p50, ms (the
    /// probes' p99 is `p99`).
    pub heartbeat: (f64, f64, f64),
    /// The relay's peak RSS during the full sync, KiB.
    pub full_rss: u64,
}

/// Issue 18's item 3: the relay's heartbeat-based lag and the probes' agree when each
/// quantile is within ±25% of the other's.
pub fn agree(heartbeat: f64, probes: f64) -> bool {
    (0.75..=1.25).contains(&(heartbeat / probes))
}

/// The rows of every round, each against its own baseline (goal ≥ 100% each).
pub fn round_rows(rounds: &[RoundFigures], load_reqs: u64) -> Vec<Row> {
    rounds
        .iter()
        .enumerate()
        .map(|(i, r)| {
            row(
                &format!("catch-up round {} ({load_reqs} ops)", i + 1),
                format!(
                    "{:.0} ops/s (target {:.2} µs/op, busy {:.0}%)",
                    r.rate,
                    r.target.relay_us,
                    100.0 * r.target.relay_busy
                ),
                &format!(
                    "{:.0} ops/s, target's own ingest (`-P 64`; {:.2} µs/op, busy {:.0}%)",
                    r.ingest,
                    r.target.own_us,
                    100.0 * r.target.own_busy
                ),
                format!("{:.0}%", 100.0 * r.rate / r.ingest),
                "≥ 100% (issue 18)",
                Some(r.rate >= r.ingest),
            )
        })
        .collect()
}

/// The full sync against the one-replica baseline (the goal) and the two-replica one.
pub fn one_replica_row(full_secs: f64, one_secs: f64, keys: u64) -> Row {
    row(
        "full sync: vs one native replica of the target holding everything (all keys into one process)",
        format!("{full_secs:.2} s"),
        &format!(
            "{one_secs:.2} s ({:.0} keys/s), 1 native replica of the target",
            keys as f64 / one_secs
        ),
        format!("{:.2}x", full_secs / one_secs),
        "≤ 1.1x (issue 18)",
        Some(full_secs <= 1.1 * one_secs),
    )
}

/// The target's CPU over the relay's full sync beside the one native replica's over its load:
/// how busy the target's one thread was, and how much more work per key the relay's commands
/// cost it than an RDB load.
pub fn target_cpu_row(target_cpu: f64, full_secs: f64, one_cpu: f64, keys: u64) -> Row {
    row(
        "full sync: CPU of the target over the sync (µs per key, share of the sync's time)",
        format!(
            "{target_cpu:.2} CPU s ({:.2} µs/key, busy {:.0}%)",
            target_cpu * 1e6 / keys as f64,
            100.0 * target_cpu / full_secs
        ),
        &format!(
            "{one_cpu:.2} CPU s ({:.2} µs/key), the one native replica loading the same keys",
            one_cpu * 1e6 / keys as f64
        ),
        format!("{:.2}x", target_cpu / one_cpu),
        "(info)",
        None,
    )
}

/// When the relay's log says each source's full sync reached each phase, in seconds after
/// `start` (the relay's start, wall clock): "loading the snapshot", "snapshot parsed" (the whole
/// RDB received: the parser follows the master's stream) and "snapshot applied" (acknowledged
/// by the target). Says whether the sync waited for the masters' RDBs or for the target.
pub fn sync_phases(log: &Path, start: std::time::SystemTime) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let day = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() % 86_400.0)
    };
    let t0 = day(start);
    let marks = [
        ("full resync: loading the snapshot", "loading"),
        ("snapshot parsed", "RDB parsed"),
        ("snapshot applied", "applied"),
    ];
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some((_, name)) = marks.iter().find(|(m, _)| line.contains(m)) else {
            continue;
        };
        // `2026-12-07T22:45:11.123456Z  INFO ...`: the time of day, UTC.
        let Some(tod) = line
            .split_whitespace()
            .next()
            .and_then(|ts| ts.split_once('T'))
            .map(|(_, t)| t.trim_end_matches('Z'))
        else {
            continue;
        };
        let secs: Vec<f64> = tod.split(':').filter_map(|x| x.parse().ok()).collect();
        if secs.len() != 3 {
            continue;
        }
        let at = (secs[0] * 3600.0 + secs[1] * 60.0 + secs[2] - t0).rem_euclid(86_400.0);
        let src = line
            .split("source=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("?");
        out.push(format!("{src} {name} {at:.2} s"));
    }
    out.join("; ")
}

/// When each master's log says its RDB for the relay was all handed to the socket (diskless:
/// "done reading from pipe"), in seconds after `start`: the first such line after it, per
/// master (`<dir>/<name>/redis.log`, times of day in milliseconds). With the relay's phases,
/// says whether the full sync waited for the masters or for the target.
pub fn masters_rdb_sent(dir: &Path, names: &[&str], start: std::time::SystemTime) -> String {
    let t0 = start
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() % 86_400.0);
    let mut out = Vec::new();
    for name in names {
        let text = std::fs::read_to_string(dir.join(name).join("redis.log")).unwrap_or_default();
        // `123:M 07 Dec 2026 22:58:01.123 * Diskless rdb transfer, done reading from pipe, ...`
        let at = text
            .lines()
            .filter(|l| l.contains("done reading from pipe"))
            .filter_map(|l| {
                let tod = l.split_whitespace().nth(4)?;
                let v: Vec<f64> = tod.split(':').filter_map(|x| x.parse().ok()).collect();
                (v.len() == 3).then(|| v[0] * 3600.0 + v[1] * 60.0 + v[2] - t0)
            })
            .find(|&d| (0.0..43_200.0).contains(&d));
        match at {
            Some(d) => out.push(format!("{name} RDB sent {d:.2} s")),
            None => out.push(format!("{name} RDB sent ?")),
        }
    }
    out.join("; ")
}

/// The target's own accounting of what it executed (`INFO commandstats`: calls and
/// microseconds inside each command), for the commands a full sync sends; with `cpu_secs`, the
/// target's CPU over the sync, the rest is reading, parsing and replying.
pub fn target_commandstats(target: &Server, cpu_secs: f64) -> String {
    let text = target
        .client()
        .cmd(&["INFO", "commandstats"])
        .as_text()
        .unwrap_or_default();
    let mut inside = 0.0;
    let mut parts = Vec::new();
    for name in ["mset", "restore", "set", "multi", "exec", "select"] {
        let Some(line) = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:")))
        else {
            continue;
        };
        let field = |f: &str| -> f64 {
            line.split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{f}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let (calls, usec) = (field("calls"), field("usec"));
        // EXEC's time includes the commands inside it, counted under their own names.
        if name == "exec" {
            parts.push(format!(
                "exec {calls:.0} calls (its time holds the queued commands')"
            ));
            continue;
        }
        inside += usec / 1e6;
        parts.push(format!("{name} {calls:.0} calls {:.2} s", usec / 1e6));
    }
    format!(
        "{}; inside commands {inside:.2} s of {cpu_secs:.2} CPU s",
        parts.join(", ")
    )
}

/// Print issue 18's goals for every data set run: goal, figure, baseline, met or not.
pub fn print_summary(all: &[Summary]) {
    println!("\nIssue 18 goals (one run each; the machine is shared, so single runs are noisy)\n");
    println!("| data set | goal | redis-relay | baseline | ratio | met |");
    println!("|---|---|---|---|---|---|");
    let yes = |b: bool| if b { "yes" } else { "**no**" };
    for s in all {
        let d = format!("{}, {} keys", s.dataset.name(), s.keys);
        println!(
            "| {d} | full sync ≤ 1.1x one native replica | {:.2} s | {:.2} s one replica; {:.2} s two replicas ({:.2}x) | {:.2}x | {} |",
            s.full_secs,
            s.one_replica_secs,
            s.two_replicas_secs,
            s.full_secs / s.two_replicas_secs,
            s.full_secs / s.one_replica_secs,
            yes(s.full_secs <= 1.1 * s.one_replica_secs)
        );
        let pct: Vec<String> = s
            .rounds
            .iter()
            .map(|r| format!("{:.0}%", 100.0 * r.rate / r.ingest))
            .collect();
        let min = s
            .rounds
            .iter()
            .map(|r| r.rate / r.ingest)
            .fold(f64::INFINITY, f64::min);
        println!(
            "| {d} | catch-up ≥ 100% of the target's own `-P 64` ingest, every round | rounds {} | the same round's ingest | min {:.0}% | {} |",
            pct.join(", "),
            100.0 * min,
            yes(!s.rounds.is_empty() && min >= 1.0)
        );
        println!(
            "| {d} | steady lag p99 ≤ 1.2x a real replica's | {:.2} ms | {:.2} ms, native replica | {:.2}x | {} |",
            s.p99,
            s.replica_p99,
            s.p99 / s.replica_p99,
            yes(s.p99 <= 1.2 * s.replica_p99)
        );
        let (h50, h99, t50) = s.heartbeat;
        println!(
            "| {d} | heartbeat lag agrees with the probes (p50, p99 within ±25%) | {h50:.2} / {h99:.2} ms | {t50:.2} / {:.2} ms, the probes | {:.2}x / {:.2}x | {} |",
            s.p99,
            h50 / t50,
            h99 / s.p99,
            yes(agree(h50, t50) && agree(h99, s.p99))
        );
        println!(
            "| {d} | relay peak RSS ≤ 48 MiB at 1M keys (full sync) | {} | | | {} |",
            mib(s.full_rss),
            yes(s.full_rss <= 48 * 1024)
        );
    }
    println!("| – | RSS flat from 1M to 10M keys | `--scale` (a separate run) | | | – |");
}
