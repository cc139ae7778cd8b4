//! The cross-version matrix: masters of Redis 7.0, Redis 8.0, Valkey 8.1 and Valkey 9.1 (two
//! of each behind nutcracker) into targets of Redis 7.0, Redis 8.0 and Valkey 9.1, one test per
//! pair. Each runs the e2e scenario: a preload through nutcracker with every type, binary and
//! big keys (chunked), each master's own workload (several DBs, MULTI/EXEC, scripts, RESTORE,
//! MOVE, streams, FLUSHDB), hashes with field TTLs on the masters that have them, writes
//! during the snapshot, non-idempotent traffic through a SIGKILL loop of the relay; then
//! `verify`. Every cell must be exact, except hash field TTLs into a target that cannot hold
//! them: there the precheck announces them, they are dropped under
//! `--on-unsupported-type drop-ttl` and counted, and they are the only difference.
//! The README's "Version matrix" is this file's table.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis_relay::verify::compare::DiffKind;
use support::modern::{preload_field_ttls, stream_field_ttls, ttl_snapshot, Modern};
use support::workload::{master_workload, metric_sum, preload, snapshot_done, sync_full, traffic};
use support::{wait_until, Nutcracker, RedisServer, Relay};

/// A server version of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    /// Debian 12's `redis-server`.
    Redis70,
    Redis80,
    Valkey81,
    Valkey91,
}

impl Server {
    fn start(self, config: &[&str]) -> RedisServer {
        let modern = match self {
            Server::Redis70 => return RedisServer::start(config),
            Server::Redis80 => Modern::Redis80,
            Server::Valkey81 => Modern::Valkey81,
            Server::Valkey91 => Modern::Valkey91,
        };
        RedisServer::start_bin(&modern.server_bin(), config)
    }

    /// Hash field TTLs (Redis 7.4+, Valkey 9.0+).
    fn has_field_ttls(self) -> bool {
        matches!(self, Server::Redis80 | Server::Valkey91)
    }
}

/// How the snapshot's values reach the target, as the README's matrix says: `RESTORE` of the
/// source's payloads where the target loads that RDB format, commands otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path_ {
    Restore,
    Commands,
}

/// The master tags; each master's field TTL keys are prefixed `<tag>:`.
const TAGS: [&str; 2] = ["ma", "mb"];

fn relay_args(
    proxy: &Nutcracker,
    target: &RedisServer,
    state: &Path,
    drop_ttl: bool,
) -> Vec<String> {
    let mut args = vec![
        "--twemproxy".to_string(),
        proxy.config_path.display().to_string(),
        "--target".into(),
        target.url(),
        "--state-dir".into(),
        state.display().to_string(),
        // Big keys (the preload's lists, hashes, sets, the 1 MiB string, the field TTL hash)
        // go in chunks.
        "--big-key-bytes".into(),
        "65536".into(),
    ];
    if drop_ttl {
        args.extend(["--on-unsupported-type".into(), "drop-ttl".into()]);
    }
    args
}

/// The precheck of a pair where field TTLs cannot arrive: without the option it fails naming
/// them; with `drop-ttl` it passes with a warning that announces them.
fn precheck_announces_field_ttls(args_drop: &[String], target: &RedisServer) {
    let plain: Vec<&str> = args_drop[..args_drop.len() - 2]
        .iter()
        .map(String::as_str)
        .collect();
    let (code, report) = support::relay_json("check", &plain);
    assert_eq!(code, 1, "{report:#}");
    let line = support::check_line(&report, "field-ttl", &target.addr());
    assert_eq!(line["status"], "fail", "{line}");
    let with: Vec<&str> = args_drop.iter().map(String::as_str).collect();
    let (code, report) = support::relay_json("check", &with);
    assert_eq!(code, 0, "{report:#}");
    let line = support::check_line(&report, "field-ttl", &target.addr());
    assert_eq!(line["status"], "warn", "{line}");
    assert!(line["message"].as_str().unwrap().contains("keys"), "{line}");
}

/// Values the relay logged for `field` on its "snapshot parsed" lines.
fn parsed_counts(log: &str, field: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("snapshot parsed"))
        .filter_map(|l| {
            let at = l.find(&format!("{field}="))? + field.len() + 1;
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// Keys among the field TTL workload's whose fields carry a TTL on `m`.
fn keys_with_field_ttls(m: &RedisServer, tag: &str) -> u64 {
    let mut c = m.client();
    ttl_snapshot(&mut c, &format!("{tag}:"))
        .iter()
        .filter(|ttls| ttls.iter().any(|&t| t > 0))
        .count() as u64
}

// Long: one scenario, step by step; splitting it would scatter the state it carries.
fn cell(master: Server, target_version: Server, path: Path_) {
    let masters = [
        master.start(&["repl-diskless-sync no", "repl-backlog-size 64mb"]),
        master.start(&[
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
            "repl-backlog-size 64mb",
        ]),
    ];
    let target = target_version.start(&[]);
    let proxy = Nutcracker::start(&[masters[0].addr(), masters[1].addr()]);
    let degraded = master.has_field_ttls() && !target_version.has_field_ttls();

    preload(&proxy, 20_000, 300, 30_000);
    for (m, tag) in masters.iter().zip(TAGS) {
        master_workload(m, tag, if tag == "ma" { "9" } else { "13" });
        if master.has_field_ttls() {
            // nutcracker 0.5 does not know HSETEX/HEXPIRE: their clients talk to the master.
            preload_field_ttls(&mut m.client(), &format!("{tag}:"));
        }
    }
    let state = tempfile::tempdir().unwrap();
    let args = relay_args(&proxy, &target, state.path(), degraded);
    if degraded {
        precheck_announces_field_ttls(&args, &target);
    }

    // Non-idempotent writes through nutcracker from before the snapshot to the end.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2u64)
        .map(|n| {
            let (c, s, d) = (proxy.client(), stop.clone(), done.clone());
            std::thread::spawn(move || traffic(c, "t:", n * 1_000_000, s, d))
        })
        .collect();
    let sources: Vec<String> = masters.iter().map(RedisServer::addr).collect();
    let mut relay = Relay::start_sync(&args, state.path());
    assert!(
        wait_until(Duration::from_secs(90), || snapshot_done(&relay, &sources)),
        "{master:?} -> {target_version:?}: first sync: {}",
        relay.log_text()
    );
    let first = relay.log_text();
    let restored = parsed_counts(&first, "restored");
    assert_eq!(restored.len(), 2, "{first}");
    match path {
        Path_::Restore => assert!(restored.iter().all(|&n| n > 0), "{restored:?}\n{first}"),
        Path_::Commands => assert!(restored.iter().all(|&n| n == 0), "{restored:?}\n{first}"),
    }
    // big:list, big:hash, big:set, big:zset and bin:1mib, wherever nutcracker put them.
    let big: u64 = parsed_counts(&first, "big").iter().sum();
    assert!(big >= 5, "{big} big keys\n{first}");
    let full_before: Vec<i64> = masters.iter().map(sync_full).collect();

    // SIGKILL at pseudo-random points while the traffic and the masters' own writes go on.
    let mut logs = first;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (master as u64) << 8 ^ target_version as u64;
    for round in 0..3 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        for (m, tag) in masters.iter().zip(TAGS) {
            master_workload(
                m,
                &format!("{tag}{round}"),
                if tag == "ma" { "9" } else { "13" },
            );
        }
        std::thread::sleep(Duration::from_millis(200 + seed % 800));
        relay.kill();
        logs.push_str(&format!(
            "--- killed in round {round}\n{}",
            relay.log_text()
        ));
        std::thread::sleep(Duration::from_millis(500));
        relay = Relay::start_sync(&args, state.path());
        assert!(
            wait_until(Duration::from_secs(30), || snapshot_done(&relay, &sources)),
            "{master:?} -> {target_version:?}: restart {round} did not resume: {}",
            relay.log_text()
        );
    }
    if master.has_field_ttls() {
        for (m, tag) in masters.iter().zip(TAGS) {
            stream_field_ttls(&mut m.client(), &format!("{tag}:"));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 50, "traffic ran");
    // The last writes arrive, the short TTLs run out on both sides.
    let mut t = target.client();
    let last = format!("{}:list", TAGS[1]);
    if master.has_field_ttls() {
        assert!(
            wait_until(Duration::from_secs(20), || t.cmd(&["LLEN", &last]).as_int()
                == Some(4)),
            "the stream did not arrive:\n{}",
            relay.log_text()
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    logs.push_str(&relay.log_text());

    let want_field_ttl_keys: u64 = if degraded {
        masters
            .iter()
            .zip(TAGS)
            .map(|(m, tag)| keys_with_field_ttls(m, tag))
            .sum()
    } else {
        0
    };
    assert_equal_but(&sources, &target, path, want_field_ttl_keys, &logs);
    let dropped = metric_sum(&relay, "redis_relay_field_ttls_dropped_total");
    if degraded {
        assert!(dropped > 0.0, "drops not counted:\n{}", relay.metrics());
    } else {
        assert_eq!(dropped, 0.0, "{}", relay.metrics());
    }
    let full_after: Vec<i64> = masters.iter().map(sync_full).collect();
    assert_eq!(
        full_after, full_before,
        "a restart caused a full sync:\n{logs}"
    );
}

/// Whether a difference is a stream consumer's seen or active time that the target set when
/// it applied the master's command: within a second of the master's on the stream path, any
/// time through the commands path (no command sets them; they are the time of the write).
fn consumer_time_of_apply(detail: &str, path: Path_) -> bool {
    let Some(at) = detail
        .find("seen_time_ms: ")
        .or_else(|| detail.find("active_time_ms: "))
    else {
        return false;
    };
    if path == Path_::Commands {
        return true;
    }
    let nums: Vec<i64> = detail[at..]
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    matches!(nums[..], [a, b] if (a - b).abs() < 1000)
}

/// `verify`: the target equals the union of `sources`, except `field_ttl_keys` keys whose
/// field TTLs the target cannot hold, consumer times set on apply (above), and the known
/// `entries_read` divergence of Redis 7.0 and 7.2 masters, which their real replicas share.
fn assert_equal_but(
    sources: &[String],
    target: &RedisServer,
    path: Path_,
    field_ttl_keys: u64,
    log: &str,
) {
    let report = support::verify_union(sources, &target.addr());
    let real: Vec<_> = report
        .compare
        .differences
        .iter()
        .filter(|d| !d.detail.contains("entries_read"))
        .filter(|d| !consumer_time_of_apply(&d.detail, path))
        .filter(|d| d.kind != DiffKind::FieldTtl)
        .collect();
    assert!(
        real.is_empty() && report.compare.count(DiffKind::FieldTtl) == field_ttl_keys,
        "target differs (expected only {field_ttl_keys} keys without their field TTLs):\n{report}\nlog:\n{log}"
    );
}

macro_rules! matrix {
    ($($name:ident: $master:ident -> $target:ident, $path:ident;)*) => {$(
        #[test]
        fn $name() {
            cell(Server::$master, Server::$target, Path_::$path);
        }
    )*};
}

matrix! {
    redis_7_0_into_redis_7_0: Redis70 -> Redis70, Restore;
    redis_7_0_into_redis_8_0: Redis70 -> Redis80, Restore;
    redis_7_0_into_valkey_9_1: Redis70 -> Valkey91, Restore;
    redis_8_0_into_redis_7_0: Redis80 -> Redis70, Commands;
    redis_8_0_into_redis_8_0: Redis80 -> Redis80, Restore;
    redis_8_0_into_valkey_9_1: Redis80 -> Valkey91, Commands;
    valkey_8_1_into_redis_7_0: Valkey81 -> Redis70, Commands;
    valkey_8_1_into_redis_8_0: Valkey81 -> Redis80, Restore;
    valkey_8_1_into_valkey_9_1: Valkey81 -> Valkey91, Restore;
    valkey_9_1_into_redis_7_0: Valkey91 -> Redis70, Commands;
    valkey_9_1_into_redis_8_0: Valkey91 -> Redis80, Commands;
    valkey_9_1_into_valkey_9_1: Valkey91 -> Valkey91, Restore;
}
