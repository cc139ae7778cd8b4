//! Issue 18's goals ("performance at the limit of one target"), each beside its baseline:
//! - full sync at most 1.1x **one native replica loading the same data** (a replica of the
//!   target once it holds everything: the fastest way into one Redis process, so the limit
//!   for any tool writing to one target), shown beside the two-replica baseline;
//! - catch-up at least 100% of the target's own `-P 64` ingest of the same mix, in every
//!   round, not only the median;
//! - p99 lag at most 1.2x a real replica's on the same probes;
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
    /// The relay's peak RSS during the full sync, KiB.
    pub full_rss: u64,
}

/// The rows of every round, each against its own baseline (goal ≥ 100% each).
pub fn round_rows(rounds: &[RoundFigures], load_reqs: u64) -> Vec<Row> {
    rounds
        .iter()
        .enumerate()
        .map(|(i, r)| {
            row(
                &format!("catch-up round {} ({load_reqs} ops)", i + 1),
                format!("{:.0} ops/s", r.rate),
                &format!("{:.0} ops/s, target's own ingest (`-P 64`)", r.ingest),
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
        println!(
            "| {d} | relay peak RSS ≤ 48 MiB at 1M keys (full sync) | {} | | | {} |",
            mib(s.full_rss),
            yes(s.full_rss <= 48 * 1024)
        );
    }
    println!("| – | RSS flat from 1M to 10M keys | `--scale` (a separate run) | | | – |");
}
