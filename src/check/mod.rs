//! Prechecks (`redis-relay check`, and the start of `sync`): every source reachable, logged in
//! and able to PSYNC, with a replication backlog that covers a pause at its write rate; the
//! target reachable, logged in, new enough, never evicting, with room for the data and empty
//! (or knowingly not). A Redis Cluster target is checked per master ([`cluster`]): slots
//! covered, `cluster_state:ok`, each master's share of the data, databases other than 0.
//! Every check gives one line: pass, warn or fail, and how to fix it.
//!
//! The decisions are plain functions of what the servers said ([`judge_backlog`],
//! [`judge_target_version`], ...), so they are unit-tested without servers; [`run`] gathers
//! the facts (sources in parallel) and applies them.
//!
//! Beside the data path. Owns: the verdicts. May not touch: any server's data (it only reads:
//! PING, INFO, CONFIG GET, COMMAND INFO, ACL DRYRUN, SELECT, SCAN, EXISTS, RANDOMKEY and
//! CLUSTER SHARDS/SLOTS/INFO; the permission probes of [`acl`] queue writes inside MULTI and
//! DISCARD them, and run an empty MULTI/EXEC).

pub mod acl;
mod cluster;
pub mod probe;
pub mod transfer;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::endpoint::Endpoint;
use crate::pipeline::field_ttl::UnsupportedPolicy;
use crate::pipeline::filter::KeyFilter;
use crate::rdb::loads_rdb;
use crate::resp::Client;
use crate::resp::Reply;
use crate::source::twemproxy::TwemproxySources;
use crate::target::cluster::{kind_of, TargetKind};
use crate::target::info::{version_tuple, ServerVersion};
use probe::{human_bytes, parse_size, Info};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckLine {
    pub status: Status,
    /// What is checked: `source`, `target` or `twemproxy`, and the server or file.
    pub subject: String,
    /// Short name of the check (`reachable`, `auth`, `psync`, `backlog`, `eviction`, ...).
    pub check: String,
    pub message: String,
    /// How to fix it (for warnings and failures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// What to do when the target's databases already hold keys (`--if-target-not-empty`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IfNotEmpty {
    /// Refuse to start ("pre-check and intercept").
    #[default]
    Abort,
    /// Start anyway: snapshot keys replace same-named keys, other keys stay.
    Ignore,
}

mod ownership;

pub use crate::source::topology::Sources;
use crate::source::topology::Topology;

/// Settings of the prechecks.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub sources: Sources,
    /// Other masters writing into the target (`--peer`).
    pub peers: Vec<Endpoint>,
    pub target: Endpoint,
    /// Accept a target whose `maxmemory-policy` evicts keys (warn instead of fail).
    pub allow_eviction: bool,
    pub if_target_not_empty: IfNotEmpty,
    /// The relay's state dir: checkpoints there mean the relay resumes and the target holds
    /// what it wrote before.
    pub state_dir: Option<PathBuf>,
    /// Target databases the relay will write to (after `--db` / `--db-map`); `None`: all.
    pub target_dbs: Option<Vec<u32>>,
    /// Keys under this prefix on the target are the relay's own and do not make it "not empty".
    pub own_prefix: String,
    /// How long each source's write rate is measured.
    pub rate_window: Duration,
    /// A backlog covering fewer seconds of writes than this is a warning.
    pub min_backlog_secs: f64,
    pub timeout: Duration,
    /// `--target-kind`: `None` detects it from the target's `INFO cluster`.
    pub target_kind: Option<TargetKind>,
    /// More seeds of a cluster target besides [`CheckOptions::target`] (the first seed).
    pub target_seeds: Vec<Endpoint>,
    /// The databases copied and where they go (`--db`, `--db-map`): a cluster target has db 0
    /// only, so the check needs to know which source databases land where.
    pub db_filter: KeyFilter,
    /// `--on-unsupported-type`: whether hash field TTLs the target cannot hold fail the check.
    pub on_unsupported_type: UnsupportedPolicy,
}

impl CheckOptions {
    pub fn new(sources: Sources, target: Endpoint) -> Self {
        CheckOptions {
            sources,
            peers: Vec::new(),
            target,
            allow_eviction: false,
            if_target_not_empty: IfNotEmpty::Abort,
            state_dir: None,
            target_dbs: None,
            own_prefix: crate::batch::record::DEFAULT_PREFIX.into(),
            rate_window: Duration::from_secs(1),
            min_backlog_secs: 60.0,
            timeout: Duration::from_secs(3),
            target_kind: None,
            target_seeds: Vec::new(),
            db_filter: KeyFilter::default(),
            on_unsupported_type: UnsupportedPolicy::Stop,
        }
    }
}

/// Every line of a precheck run.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub passed: usize,
    pub warnings: usize,
    pub failed: usize,
    pub checks: Vec<CheckLine>,
    #[serde(serialize_with = "ser_secs")]
    pub elapsed: Duration,
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl CheckReport {
    fn new(checks: Vec<CheckLine>, elapsed: Duration) -> Self {
        let count = |st| checks.iter().filter(|c| c.status == st).count();
        CheckReport {
            ok: count(Status::Fail) == 0,
            passed: count(Status::Pass),
            warnings: count(Status::Warn),
            failed: count(Status::Fail),
            checks,
            elapsed,
        }
    }

    /// Lines with this status.
    pub fn with_status(&self, st: Status) -> impl Iterator<Item = &CheckLine> {
        self.checks.iter().filter(move |c| c.status == st)
    }

    /// The first line of check `check` whose subject contains `subject`.
    pub fn find(&self, check: &str, subject: &str) -> Option<&CheckLine> {
        self.checks
            .iter()
            .find(|c| c.check == check && c.subject.contains(subject))
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = self
            .checks
            .iter()
            .map(|c| c.subject.len())
            .max()
            .unwrap_or(0);
        for c in &self.checks {
            writeln!(
                f,
                "{}  {:w$}  {:10} {}",
                c.status, c.subject, c.check, c.message
            )?;
            if let Some(fix) = &c.fix {
                writeln!(f, "      fix: {fix}")?;
            }
        }
        writeln!(
            f,
            "precheck: {} passed, {} warnings, {} failed ({:.1?})",
            self.passed, self.warnings, self.failed, self.elapsed
        )
    }
}

struct Lines(Vec<CheckLine>);

impl Lines {
    fn add(
        &mut self,
        status: Status,
        subject: &str,
        check: &str,
        message: String,
        fix: Option<String>,
    ) {
        self.0.push(CheckLine {
            status,
            subject: subject.to_string(),
            check: check.to_string(),
            message,
            fix,
        });
    }
    fn verdict(&mut self, subject: &str, check: &str, v: Verdict) {
        self.add(v.status, subject, check, v.message, v.fix);
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: Status,
    pub message: String,
    pub fix: Option<String>,
}

impl Verdict {
    fn pass(message: String) -> Self {
        Verdict {
            status: Status::Pass,
            message,
            fix: None,
        }
    }
    fn warn(message: String, fix: String) -> Self {
        Verdict {
            status: Status::Warn,
            message,
            fix: Some(fix),
        }
    }
    fn fail(message: String, fix: String) -> Self {
        Verdict {
            status: Status::Fail,
            message,
            fix: Some(fix),
        }
    }
}

/// Is the backlog big enough to resume after a pause? `rate` is bytes written per second.
pub fn judge_backlog(backlog: u64, rate: f64, min_secs: f64, estimated: bool) -> Verdict {
    let how = if estimated {
        " (estimated from network input: the master has no backlog yet)"
    } else {
        ""
    };
    if rate < 1.0 {
        return Verdict::pass(format!(
            "repl-backlog-size {}; no writes measured{how}",
            human_bytes(backlog)
        ));
    }
    let secs = backlog as f64 / rate;
    let msg = format!(
        "repl-backlog-size {} holds {secs:.1} s of writes at {}/s{how}",
        human_bytes(backlog),
        human_bytes(rate as u64)
    );
    if secs < min_secs {
        // Enough for five minutes at this rate, rounded up to a whole MiB.
        let want = ((rate * 300.0) as u64).div_ceil(1 << 20).max(1);
        Verdict::warn(
            format!("{msg}: a relay restart or a target stall longer than that costs a full resync"),
            format!("CONFIG SET repl-backlog-size {want}mb (and the same in redis.conf): about 5 minutes of writes at this rate"),
        )
    } else {
        Verdict::pass(msg)
    }
}

/// Can snapshot payloads be RESTOREd on the target? Older targets, and a target of the other
/// family (Redis 7.4+ and Valkey 9+ each have their own RDB versions), get plain commands.
pub fn judge_target_version(sources: &[ServerVersion], target: &ServerVersion) -> Verdict {
    let foreign = sources.iter().find(|s| !loads_rdb(target.rdb(), s.rdb()));
    let Some(source) = foreign else {
        return match sources.iter().max_by_key(|s| s.rdb()) {
            Some(newest) => Verdict::pass(format!(
                "{target} (sources up to {newest}): snapshot keys are copied with RESTORE"
            )),
            None => Verdict::pass(target.to_string()),
        };
    };
    Verdict::warn(
        format!("the target ({target}) cannot load the RDB payloads of a source ({source}, RDB {}; the target's is {}), so every snapshot key is rewritten as plain commands (slower; commands the target does not know are refused and counted as target errors)", source.rdb(), target.rdb()),
        format!("use a target running {source} or newer of the same server for the fast RESTORE path, or accept the command path"),
    )
}

/// Keys with hash field TTLs on the sources toward a target that cannot hold them: fail under
/// `--on-unsupported-type stop`, warn under `drop-ttl`; nothing to say otherwise.
pub fn judge_field_ttls(
    keys: u64,
    target: &ServerVersion,
    policy: UnsupportedPolicy,
) -> Option<Verdict> {
    if keys == 0 || target.has_field_ttl() {
        return None;
    }
    let msg = format!("{keys} keys of the sources have hash fields with their own TTL, which the target ({target}) cannot hold");
    Some(match policy {
        UnsupportedPolicy::Stop => Verdict::fail(
            msg,
            "use a Redis 7.4+ or Valkey 9+ target, or --on-unsupported-type drop-ttl to copy those fields without their TTLs (each counted in redis_relay_field_ttls_dropped_total)".into(),
        ),
        UnsupportedPolicy::DropTtl => Verdict::warn(
            format!("{msg}: copied without them (--on-unsupported-type drop-ttl), each counted in redis_relay_field_ttls_dropped_total"),
            "use a Redis 7.4+ or Valkey 9+ target to keep them".into(),
        ),
    })
}

/// Modules loaded on a source (`MODULE LIST`, e.g. Redis 8's built-in `vectorset`) whose
/// keys cannot reach the target: it lacks the module, or it cannot load the source's RDB
/// payloads (a module value has no command form). Such keys are skipped and counted; the line
/// warns because the relay cannot tell cheaply whether a source holds any.
pub fn judge_modules(
    sources: &[(ServerVersion, Vec<String>)],
    target: &ServerVersion,
    target_modules: &[String],
) -> Option<Verdict> {
    let mut lost: Vec<String> = Vec::new();
    for (version, modules) in sources {
        for m in modules {
            let restorable = target_modules.contains(m) && loads_rdb(target.rdb(), version.rdb());
            if !restorable && !lost.contains(m) {
                lost.push(m.clone());
            }
        }
    }
    if lost.is_empty() {
        return None;
    }
    let names = lost.join(", ");
    Some(Verdict::warn(
        format!("the sources load module(s) {names}: keys of their types (vectorset: Redis 8's vector sets) can only be copied with RESTORE into a target that loads the same module and the source's RDB format, which the target ({target}) cannot: each such key is skipped, logged and counted in redis_relay_snapshot_keys_skipped_total, and their commands are refused (redis_relay_target_refused_total)"),
        format!("use a target of the same server with {names} loaded, or make sure the sources hold no such keys (SCAN 0 TYPE <type> on each)"),
    ))
}

/// A target that evicts keys silently loses data the relay wrote.
pub fn judge_eviction(policy: &str, allow: bool) -> Verdict {
    if policy == "noeviction" {
        return Verdict::pass("maxmemory-policy is noeviction".into());
    }
    let msg = format!("maxmemory-policy is {policy}: when the target fills up it deletes keys the relay wrote, and the copy silently differs from the sources");
    let fix = "CONFIG SET maxmemory-policy noeviction on the target (and in its redis.conf); or pass --allow-eviction to accept it".to_string();
    if allow {
        Verdict::warn(format!("{msg} (allowed by --allow-eviction)"), fix)
    } else {
        Verdict::fail(msg, fix)
    }
}

/// Room on the target for the sources' data.
pub fn judge_headroom(maxmemory: u64, target_used: u64, system_memory: u64, need: u64) -> Verdict {
    judge_room_for(
        "the sources hold",
        maxmemory,
        target_used,
        system_memory,
        need,
    )
}

/// Room for `need` bytes, which `what` describes (`the sources hold`, a shard's share).
fn judge_room_for(
    what_needs: &str,
    maxmemory: u64,
    target_used: u64,
    system_memory: u64,
    need: u64,
) -> Verdict {
    let (limit, what) = if maxmemory > 0 {
        (maxmemory, "maxmemory")
    } else if system_memory > 0 {
        (system_memory, "the host's memory (no maxmemory set)")
    } else {
        return Verdict::pass(format!("no maxmemory; {what_needs} {}", human_bytes(need)));
    };
    let free = limit.saturating_sub(target_used);
    let msg = format!(
        "{what_needs} {}; the target has {} free under {what} ({} used of {})",
        human_bytes(need),
        human_bytes(free),
        human_bytes(target_used),
        human_bytes(limit)
    );
    let fix = format!(
        "give the target at least {} of memory (CONFIG SET maxmemory), or copy fewer databases or keys (--db, --exclude-prefix)",
        human_bytes(target_used + need + need / 5)
    );
    if need > free {
        if maxmemory > 0 {
            Verdict::fail(msg, fix)
        } else {
            Verdict::warn(msg, fix)
        }
    } else if need as f64 > free as f64 * 0.8 {
        Verdict::warn(format!("{msg}: less than 20% to spare"), fix)
    } else {
        Verdict::pass(msg)
    }
}

/// The target's databases hold keys already.
pub fn judge_not_empty(keys: &BTreeMap<u32, u64>, policy: IfNotEmpty, resuming: bool) -> Verdict {
    let used: Vec<String> = keys
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(db, n)| format!("db{db}: {n} keys"))
        .collect();
    if used.is_empty() {
        return Verdict::pass("the target databases are empty".into());
    }
    let list = used.join(", ");
    if resuming {
        return Verdict::pass(format!(
            "the target holds {list}: expected, the relay resumes from its checkpoints in the state dir"
        ));
    }
    let msg = format!("the target is not empty ({list}): snapshot keys replace keys of the same name, every other key stays and `verify` will report it as extra");
    match policy {
        IfNotEmpty::Abort => Verdict::fail(
            msg,
            "empty the target (FLUSHALL on a server you own), choose other databases (--db-map), or pass --if-target-not-empty ignore to copy over what is there".into(),
        ),
        IfNotEmpty::Ignore => Verdict::warn(
            format!("{msg} (--if-target-not-empty ignore)"),
            "nothing to do if this is intended".into(),
        ),
    }
}

/// What one source told us.
struct SourceFacts {
    endpoint: Endpoint,
    version: ServerVersion,
    /// Keys with hash field TTLs (INFO keyspace).
    field_ttl_keys: u64,
    /// Modules it loads (`MODULE LIST`; empty when refused or unknown).
    modules: Vec<String>,
    used: u64,
    /// Keys per database (INFO keyspace).
    keys: BTreeMap<u32, u64>,
}

fn int(info: &Info, field: &str) -> Option<u64> {
    info.get(field)?.parse().ok()
}

/// Connect, log in and read INFO; a failure is one failed line (`info_fix` tells how to allow
/// INFO) and `None`.
fn connect_and_info(
    ep: &Endpoint,
    role: &str,
    subject: &str,
    info_fix: &str,
    opts: &CheckOptions,
    lines: &mut Lines,
) -> Option<(Client, Info)> {
    let mut conn = match probe::connect(ep, opts.timeout, role) {
        Ok(c) => c,
        Err(f) => {
            lines.add(Status::Fail, subject, f.check, f.message, Some(f.fix));
            return None;
        }
    };
    match probe::info(&mut conn, None) {
        Ok(i) => Some((conn, i)),
        Err(e) => {
            lines.add(
                Status::Fail,
                subject,
                "info",
                format!("INFO failed: {e}"),
                Some(info_fix.into()),
            );
            None
        }
    }
}

/// `logged in, ` when the URL has a password (for the `reachable` line).
fn logged_in(ep: &Endpoint) -> &'static str {
    if ep.password.is_some() {
        "logged in, "
    } else {
        ""
    }
}

fn probe_source(
    ep: &Endpoint,
    subject: &str,
    opts: &CheckOptions,
    lines: &mut Lines,
) -> Option<SourceFacts> {
    let info_fix =
        "the relay needs INFO on the source: allow it for the user in the URL (ACL: +info)";
    let (mut conn, info0) = connect_and_info(ep, "source", subject, info_fix, opts, lines)?;
    let t0 = Instant::now();
    let version = ServerVersion::new(info0.get("redis_version"), info0.get("valkey_version"));
    let role = info0.get("role").cloned().unwrap_or_else(|| "?".into());
    let used = int(&info0, "used_memory_dataset")
        .or_else(|| int(&info0, "used_memory"))
        .unwrap_or(0);
    let keyspace = probe::keyspace(&info0);
    let keys: u64 = keyspace.values().sum();
    lines.add(
        Status::Pass,
        subject,
        "reachable",
        format!(
            "{}{version}, role {role}, {keys} keys, {} of data",
            logged_in(ep),
            human_bytes(used)
        ),
        None,
    );
    check_psync(&mut conn, ep, subject, &version.redis, lines);
    check_acl(ep, subject, &acl::source_probes(), opts.timeout, lines);
    if role != "master" {
        lines.add(Status::Warn, subject, "role", format!("this server is a {role}: the relay replicates from it (chained replication), and writes reach it only through its own master"), Some("point the relay at the master, unless replicating from a replica is what you want (less load on the master)".into()));
    }
    let rate = check_backlog(&mut conn, subject, opts, &info0, t0, lines);
    transfer::check_transfer(&mut conn, subject, &info0, rate, keys, lines);
    Some(SourceFacts {
        endpoint: ep.clone(),
        field_ttl_keys: probe::field_ttl_keys(&info0),
        modules: probe::modules(&mut conn),
        version,
        used,
        keys: keyspace,
    })
}

/// The user's permissions for what the relay sends ([`acl`]): one failed `acl` line per
/// refused command, with the `ACL SETUSER` that grants it, or one passing line.
fn check_acl(ep: &Endpoint, subject: &str, probes: &[acl::Probe], t: Duration, lines: &mut Lines) {
    check_acl_as(ep, subject, probes, t, Status::Fail, lines)
}

/// [`check_acl`], a refusal being a line of status `refused` (a peer's only defers deletions).
fn check_acl_as(
    ep: &Endpoint,
    subject: &str,
    probes: &[acl::Probe],
    timeout: Duration,
    refused_status: Status,
    lines: &mut Lines,
) {
    let user = acl::user_of(ep);
    match acl::denied(ep, timeout, probes) {
        Err(e) => lines.add(
            Status::Warn,
            subject,
            "acl",
            format!("cannot probe the permissions of user {user}: {e}"),
            Some("docs/security.md lists the permissions the relay needs".into()),
        ),
        Ok(refused) if refused.is_empty() => {
            let names: Vec<&str> = probes.iter().map(|p| p.acl).collect();
            lines.add(
                Status::Pass,
                subject,
                "acl",
                format!(
                    "user {user} may run what the relay sends ({})",
                    names.join(" ")
                ),
                None,
            )
        }
        Ok(refused) => {
            for (p, reply) in refused {
                lines.add(
                    refused_status,
                    subject,
                    "acl",
                    format!("user {user} may not run '{}' on {ep}: {reply}", p.acl),
                    Some(acl::fix(&user, p.acl, &reply)),
                );
            }
        }
    }
}

/// PSYNC: the version, and the command itself (renamed on some managed services).
fn check_psync(conn: &mut Client, ep: &Endpoint, subject: &str, version: &str, lines: &mut Lines) {
    let v = version_tuple(version);
    if v < (2, 8) {
        lines.add(Status::Warn, subject, "psync", format!("Redis {version} has no PSYNC: the relay uses SYNC, and every reconnect costs a full snapshot"), Some("upgrade the source to 2.8 or newer to resume after a disconnect".into()));
    } else {
        let verdict = psync_available(conn, ep, v);
        lines.verdict(subject, "psync", verdict);
    }
}

/// Backlog against the write rate, measured from `info0` (read at `t0`) for the rate window;
/// returns the rate (bytes per second).
fn check_backlog(
    conn: &mut Client,
    subject: &str,
    opts: &CheckOptions,
    info0: &Info,
    t0: Instant,
    lines: &mut Lines,
) -> f64 {
    // INFO's repl_backlog_size when CONFIG GET is refused: a least-privilege user has no
    // CONFIG GET, which would also show it `requirepass` (docs/security.md).
    let backlog = match probe::config_get(conn, "repl-backlog-size") {
        Ok(Ok(s)) => parse_size(&s),
        _ => None,
    }
    .or_else(|| int(info0, "repl_backlog_size"));
    std::thread::sleep(opts.rate_window.saturating_sub(t0.elapsed()));
    let info1 = probe::info(conn, Some("replication")).ok();
    let stats1 = probe::info(conn, Some("stats")).ok();
    let secs = t0.elapsed().as_secs_f64().max(1e-3);
    let (delta, estimated) = bytes_written(info0, info1.as_ref(), stats1.as_ref());
    let rate = delta as f64 / secs;
    match backlog {
        Some(b) => lines.verdict(subject, "backlog", judge_backlog(b, rate, opts.min_backlog_secs, estimated)),
        None => lines.add(Status::Warn, subject, "backlog", format!("cannot read repl-backlog-size (CONFIG GET refused); writes measured: {}/s", human_bytes(rate as u64)), Some("make sure the backlog holds a few minutes of writes (repl-backlog-size), or a relay restart costs a full snapshot".into())),
    }
    rate
}

/// Bytes written between `info0` and the later INFO sections: the replication offset while
/// the backlog is active, else (estimated) the network input; and whether it is estimated.
fn bytes_written(info0: &Info, info1: Option<&Info>, stats1: Option<&Info>) -> (u64, bool) {
    let active = info0.get("repl_backlog_active").map(String::as_str) == Some("1");
    if active {
        let a = int(info0, "master_repl_offset").unwrap_or(0);
        let b = info1
            .and_then(|i| int(i, "master_repl_offset"))
            .unwrap_or(a);
        (b.saturating_sub(a), false)
    } else {
        let a = int(info0, "total_net_input_bytes").unwrap_or(0);
        let b = stats1
            .and_then(|i| int(i, "total_net_input_bytes"))
            .unwrap_or(a);
        // Less our own INFO and CONFIG commands.
        (b.saturating_sub(a).saturating_sub(120), true)
    }
}

fn psync_available(conn: &mut Client, ep: &Endpoint, v: (u32, u32)) -> Verdict {
    let renamed_fix = "the source has PSYNC renamed or disabled (rename-command in redis.conf, or a managed service that hides it): enable it, or ask the provider for the replication command's name".to_string();
    if v >= (3, 0) {
        match conn.call(&["COMMAND", "INFO", "PSYNC"]) {
            Ok(Reply::Array(Some(items)))
                if items
                    .first()
                    .is_some_and(|i| matches!(i, Reply::Array(None) | Reply::Bulk(None))) =>
            {
                return Verdict::fail(
                    "the server does not know the PSYNC command".into(),
                    renamed_fix,
                );
            }
            Ok(_) | Err(_) => {}
        }
    }
    if v >= (7, 0) {
        let user = acl::user_of(ep);
        for cmd in [
            &["PSYNC", "?", "-1"][..],
            &["REPLCONF", "listening-port", "0"],
        ] {
            let mut args = vec!["ACL", "DRYRUN", user.as_str()];
            args.extend_from_slice(cmd);
            match conn.call(&args) {
                Ok(Reply::Simple(_)) => {}
                Ok(Reply::Bulk(Some(why))) => {
                    return Verdict::fail(
                        format!("user {user} may not run {} on {ep}: {}", cmd[0], String::from_utf8_lossy(&why)),
                        format!("grant replication to the user: ACL SETUSER {user} +psync +replconf +ping"),
                    )
                }
                Ok(Reply::Error(e)) if acl::is_noperm(&e) => {
                    return Verdict::warn(
                        format!("PSYNC available; whether user {user} may run it is not verifiable: ACL DRYRUN refused"),
                        format!("ACL SETUSER {user} +acl|dryrun lets check verify the replication permissions (+psync +replconf +ping)"),
                    )
                }
                _ => {
                    return Verdict::pass("PSYNC available (ACL permission not verifiable with this user)".into())
                }
            }
        }
    }
    Verdict::pass("PSYNC available".into())
}

fn probe_target(
    opts: &CheckOptions,
    sources: &[SourceFacts],
    resuming: bool,
    shared: Option<&Topology>,
    lines: &mut Lines,
) {
    let subject = format!("target {}", opts.target);
    let subject = subject.as_str();
    let info_fix = "the relay needs INFO on the target";
    let Some((mut conn, info)) =
        connect_and_info(&opts.target, "target", subject, info_fix, opts, lines)
    else {
        return;
    };
    if target_kind(&mut conn, opts, subject, lines) == TargetKind::Cluster {
        // The seed may be any node, a replica too: every master is checked instead.
        cluster::check_cluster(opts, sources, resuming, shared, lines);
        return;
    }
    check_target_server(opts, sources, subject, &info, lines);
    check_modules(&mut conn, sources, subject, &info, lines);
    let probes = acl::target_probes(&opts.own_prefix);
    check_acl(&opts.target, subject, &probes, opts.timeout, lines);
    check_eviction(&mut conn, opts, subject, &info, lines);
    let need: u64 = sources.iter().map(|s| s.used).sum();
    lines.verdict(
        subject,
        "memory",
        judge_headroom(
            int(&info, "maxmemory").unwrap_or(0),
            int(&info, "used_memory").unwrap_or(0),
            int(&info, "total_system_memory").unwrap_or(0),
            need,
        ),
    );
    let mut keys = probe::keyspace(&info);
    if let Some(dbs) = &opts.target_dbs {
        keys.retain(|db, _| dbs.contains(db));
    }
    let v = match shared {
        Some(t) => judge_shared_target(&mut conn, opts, &keys, t, resuming),
        None => {
            // The relay's own keys (heartbeat, markers) do not count.
            for (db, n) in keys.iter_mut() {
                if *n > 0 && *n <= 1000 {
                    *n = n.saturating_sub(count_own_keys(&mut conn, *db, &opts.own_prefix));
                }
            }
            judge_not_empty(&keys, opts.if_target_not_empty, resuming)
        }
    };
    lines.verdict(subject, "empty", v);
}

/// The target answered: its version and role, whether it takes writes, and whether it can
/// load the sources' payloads.
fn check_target_server(
    opts: &CheckOptions,
    sources: &[SourceFacts],
    subject: &str,
    info: &Info,
    lines: &mut Lines,
) {
    let version = ServerVersion::new(info.get("redis_version"), info.get("valkey_version"));
    lines.add(
        Status::Pass,
        subject,
        "reachable",
        format!(
            "{}{version}, role {}",
            logged_in(&opts.target),
            info.get("role").map(String::as_str).unwrap_or("?")
        ),
        None,
    );
    if info.get("role").map(String::as_str) == Some("slave") {
        lines.add(
            Status::Fail,
            subject,
            "writable",
            "the target is a replica: it refuses writes".into(),
            Some("point --target at a master, or run REPLICAOF NO ONE on it".into()),
        );
    }
    let versions: Vec<ServerVersion> = sources.iter().map(|s| s.version.clone()).collect();
    lines.verdict(
        subject,
        "version",
        judge_target_version(&versions, &version),
    );
    let field_ttl_keys = sources.iter().map(|s| s.field_ttl_keys).sum();
    if let Some(v) = judge_field_ttls(field_ttl_keys, &version, opts.on_unsupported_type) {
        lines.verdict(subject, "field-ttl", v);
    }
}

/// The `modules` line: modules of the sources whose keys cannot reach the target.
fn check_modules(
    conn: &mut Client,
    sources: &[SourceFacts],
    subject: &str,
    info: &Info,
    lines: &mut Lines,
) {
    let version = ServerVersion::new(info.get("redis_version"), info.get("valkey_version"));
    let facts: Vec<(ServerVersion, Vec<String>)> = sources
        .iter()
        .map(|s| (s.version.clone(), s.modules.clone()))
        .collect();
    if let Some(v) = judge_modules(&facts, &version, &probe::modules(conn)) {
        lines.verdict(subject, "modules", v);
    }
}

/// Whether the target is a Redis Cluster (`--target-kind`, else `INFO cluster`); a
/// standalone target gets a `cluster` line saying so. When the relay cannot tell, it checks
/// one server and warns.
fn target_kind(
    conn: &mut Client,
    opts: &CheckOptions,
    subject: &str,
    lines: &mut Lines,
) -> TargetKind {
    match kind_of(conn, opts.target_kind) {
        Ok(TargetKind::Cluster) => TargetKind::Cluster,
        Ok(TargetKind::Standalone) => {
            let message = if opts.target_kind.is_some() {
                "checked as one server (--target-kind standalone)"
            } else {
                "not a Redis Cluster node"
            };
            lines.add(Status::Pass, subject, "cluster", message.into(), None);
            TargetKind::Standalone
        }
        Err(e) => {
            lines.add(
                Status::Warn,
                subject,
                "cluster",
                format!("cannot tell whether the target is a Redis Cluster node: {e}"),
                Some("allow INFO on the target, or say what it is with --target-kind standalone|cluster".into()),
            );
            TargetKind::Standalone
        }
    }
}

/// The target's `maxmemory-policy` (from INFO, else CONFIG GET).
fn check_eviction(
    conn: &mut Client,
    opts: &CheckOptions,
    subject: &str,
    info: &Info,
    lines: &mut Lines,
) {
    let policy = match info.get("maxmemory_policy") {
        Some(p) => Some(p.clone()),
        None => probe::config_get(conn, "maxmemory-policy")
            .ok()
            .and_then(Result::ok),
    };
    match policy {
        Some(p) => lines.verdict(subject, "eviction", judge_eviction(&p, opts.allow_eviction)),
        None => lines.add(
            Status::Warn,
            subject,
            "eviction",
            "cannot read maxmemory-policy".into(),
            Some("make sure the target's maxmemory-policy is noeviction".into()),
        ),
    }
}

/// Keys on a target shared with other writers: whose they are, told apart by asking the
/// backends of the pool and the peers.
fn judge_shared_target(
    conn: &mut Client,
    opts: &CheckOptions,
    keys: &BTreeMap<u32, u64>,
    t: &Topology,
    resuming: bool,
) -> Verdict {
    // Records of these sources on the target: the relay wrote here before (a crash during
    // a full resync removes the checkpoint, not the data): keys of no backend are its own
    // stale ones, which the sweep after the next snapshot removes.
    let wrote_before = resuming
        || t.sources
            .iter()
            .any(|e| ownership::has_records(conn, &opts.own_prefix, e));
    match ownership::classify_target(conn, keys, t, &opts.own_prefix, opts.timeout) {
        Ok(c) => ownership::judge_shared(&c, opts.if_target_not_empty, wrote_before),
        Err(e) => Verdict::fail(
            format!("cannot tell the target's keys apart: {e}"),
            "every backend of the pool (and every --peer) must answer EXISTS".into(),
        ),
    }
}

fn count_own_keys(conn: &mut Client, db: u32, prefix: &str) -> u64 {
    if prefix.is_empty()
        || conn
            .call(&["SELECT", &db.to_string()])
            .map(|r| r.is_error())
            .unwrap_or(true)
    {
        return 0;
    }
    let pattern = format!("{}*", glob_escape(prefix));
    let mut cursor = "0".to_string();
    let mut n = 0;
    loop {
        let Ok(Reply::Array(Some(parts))) =
            conn.call(&["SCAN", &cursor, "MATCH", &pattern, "COUNT", "1000"])
        else {
            return n;
        };
        cursor = parts
            .first()
            .and_then(|c| c.as_text())
            .unwrap_or_else(|| "0".into());
        if let Some(Reply::Array(Some(ks))) = parts.get(1) {
            n += ks.len() as u64;
        }
        if cursor == "0" {
            return n;
        }
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Checkpoints of these sources in the state dir: the relay resumes.
pub fn resuming(state_dir: Option<&Path>, sources: &[Endpoint]) -> bool {
    let Some(dir) = state_dir else { return false };
    sources
        .iter()
        .any(|s| crate::pipeline::checkpoint::path_for(dir, &s.to_string()).is_file())
}

/// Run every check.
pub fn run(opts: &CheckOptions) -> CheckReport {
    let started = Instant::now();
    let mut lines = Lines(Vec::new());
    let sources = labelled_sources(opts, &mut lines);
    let topology = shared_topology(opts, &mut lines);
    let sources: Vec<(Endpoint, String)> = match &topology {
        Some(t) => sidecar_sources(t, sources, opts, &mut lines),
        None => sources,
    };
    let eps: Vec<Endpoint> = sources.iter().map(|(e, _)| e.clone()).collect();
    check_placement(opts, topology.as_ref(), &sources, &mut lines);
    for (e, subject) in &sources {
        if e.host == opts.target.host && e.port == opts.target.port {
            lines.add(
                Status::Fail,
                subject,
                "distinct",
                "this source is also the target".into(),
                Some("give a --target that is not one of the sources".into()),
            );
        }
    }
    let facts = probe_sources(&sources, opts, &mut lines);
    let resuming = resuming(opts.state_dir.as_deref(), &eps);
    probe_target(opts, &facts, resuming, topology.as_ref(), &mut lines);
    CheckReport::new(lines.0, started.elapsed())
}

/// Sources, with a label naming their pool and server in a Twemproxy config.
fn labelled_sources(opts: &CheckOptions, lines: &mut Lines) -> Vec<(Endpoint, String)> {
    match &opts.sources {
        Sources::List(eps) => eps
            .iter()
            .map(|e| (e.clone(), format!("source {e}")))
            .collect(),
        Sources::Twemproxy {
            path,
            pool,
            login,
            tls,
            ..
        } => {
            let subject = format!("twemproxy {}", path.display());
            let loaded = crate::source::twemproxy::load_config(path, pool.as_deref());
            match loaded.map(|mut tw| {
                tw.set_login(login);
                tw.set_tls(tls.as_ref());
                tw
            }) {
                Err(e) => {
                    lines.add(
                        Status::Fail,
                        &subject,
                        "config",
                        format!("{e}"),
                        Some(
                            "fix the file at the place named (nutcracker -t -c FILE tests it too)"
                                .into(),
                        ),
                    );
                    Vec::new()
                }
                Ok(mut tw) => {
                    tw.set_tls(tls.as_ref());
                    check_twemproxy_config(&tw, &subject, lines);
                    tw.backends
                        .iter()
                        .map(|b| {
                            let name = b
                                .name
                                .as_deref()
                                .map(|n| format!(" {n}"))
                                .unwrap_or_default();
                            (
                                b.endpoint.clone(),
                                format!("source {} ({}{name})", b.endpoint, b.pool),
                            )
                        })
                        .collect()
                }
            }
        }
    }
}

/// What the Twemproxy config gives: Redis backends, skipped memcached pools, pools that eject
/// hosts.
fn check_twemproxy_config(tw: &TwemproxySources, subject: &str, lines: &mut Lines) {
    let names: Vec<&str> = tw.pools.iter().map(|p| p.name.as_str()).collect();
    if tw.backends.is_empty() {
        lines.add(
            Status::Fail,
            subject,
            "config",
            "no Redis backend in the selected pools".into(),
            Some("check --pool and that the pools have `redis: true` and `servers:`".into()),
        );
    } else {
        lines.add(
            Status::Pass,
            subject,
            "config",
            format!(
                "pools {} with {} backends",
                names.join(", "),
                tw.backends.len()
            ),
            None,
        );
    }
    if !tw.skipped_pools.is_empty() {
        lines.add(
            Status::Warn,
            subject,
            "config",
            format!("memcached pools skipped: {}", tw.skipped_pools.join(", ")),
            Some("nothing to do: only Redis pools are replicated".into()),
        );
    }
    for p in tw.auto_eject_pools() {
        lines.add(Status::Warn, subject, "auto-eject", format!("pool {p} has auto_eject_hosts: true: while a backend was ejected its keys went to other backends, so one key may exist on two masters and the target keeps whichever wrote last"), Some("run `verify` after the snapshot; prefer auto_eject_hosts: false for a migration".into()));
    }
}

/// Who else writes into the target: a sidecar's peers, `--peer`s. `None` when nobody else
/// does, or (a failed line) when the sidecar's servers cannot be found.
fn shared_topology(opts: &CheckOptions, lines: &mut Lines) -> Option<Topology> {
    let shared = matches!(&opts.sources, Sources::Twemproxy { local, .. } if !local.is_empty())
        || !opts.peers.is_empty();
    if !shared {
        return None;
    }
    match Topology::resolve(&opts.sources, &opts.peers) {
        Ok(t) => Some(t),
        Err(e) => {
            lines.add(
                Status::Fail,
                "sidecar",
                "config",
                e.to_string(),
                Some("name a server of the pool with --local-server (its name or host:port as written), or auto".into()),
            );
            None
        }
    }
}

/// A shared target: the sources this relay replicates (of `sources`), and its peers checked.
fn sidecar_sources(
    t: &Topology,
    sources: Vec<(Endpoint, String)>,
    opts: &CheckOptions,
    lines: &mut Lines,
) -> Vec<(Endpoint, String)> {
    let list = |eps: &[Endpoint]| {
        eps.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    lines.add(
        Status::Pass,
        "sidecar",
        "peers",
        format!(
            "replicates {}; {} other writer(s) of the target: {}",
            list(&t.sources),
            t.peers.len(),
            list(&t.peers)
        ),
        None,
    );
    ownership::check_peers(&t.peers, opts.timeout, lines);
    sources
        .into_iter()
        .filter(|(e, _)| t.sources.contains(e))
        .collect()
}

/// Keys sitting on a backend they do not hash to (with a computable placement).
fn check_placement(
    opts: &CheckOptions,
    topology: Option<&Topology>,
    sources: &[(Endpoint, String)],
    lines: &mut Lines,
) {
    let owner = match topology {
        Some(t) => t.owner.clone(),
        None => match &opts.sources {
            Sources::Twemproxy { .. } => Topology::resolve(&opts.sources, &[])
                .ok()
                .and_then(|t| t.owner),
            Sources::List(_) => None,
        },
    };
    if let Some(owner) = &owner {
        for (e, subject) in sources {
            lines.verdict(
                subject,
                "placement",
                ownership::misplaced(e, owner, opts.timeout),
            );
        }
    }
}

/// Sources in parallel (each one measures its write rate for `rate_window`); their lines in
/// the order of `sources`, and what each told.
fn probe_sources(
    sources: &[(Endpoint, String)],
    opts: &CheckOptions,
    lines: &mut Lines,
) -> Vec<SourceFacts> {
    let results: Vec<(Vec<CheckLine>, Option<SourceFacts>)> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|(ep, subject)| {
                s.spawn(move || {
                    let mut l = Lines(Vec::new());
                    let facts = probe_source(ep, subject, opts, &mut l);
                    (l.0, facts)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut facts = Vec::new();
    for (l, f) in results {
        lines.0.extend(l);
        facts.extend(f);
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_keys_reach_only_a_target_with_the_module_and_the_format() {
        let redis = |v: &str| ServerVersion::new(Some(&v.to_string()), None);
        let valkey = |v: &str| ServerVersion::new(Some(&"7.2.4".to_string()), Some(&v.to_string()));
        let vset = vec!["vectorset".to_string()];
        let r8 = [(redis("8.0.2"), vset.clone())];
        assert!(judge_modules(&r8, &redis("8.0.2"), &vset).is_none());
        let v = judge_modules(&r8, &redis("7.0.15"), &[]).unwrap();
        assert_eq!(v.status, Status::Warn);
        assert!(v.message.contains("vectorset"), "{v:?}");
        // The module is there, but Valkey does not load Redis 12 payloads.
        assert!(judge_modules(&r8, &valkey("9.1.2"), &vset).is_some());
        assert!(judge_modules(&[(redis("7.0.15"), vec![])], &redis("7.0.15"), &[]).is_none());
    }

    #[test]
    fn older_target_uses_the_command_path() {
        let redis = |v: &str| ServerVersion::new(Some(&v.to_string()), None);
        let valkey = |v: &str| ServerVersion::new(Some(&"7.2.4".to_string()), Some(&v.to_string()));
        let v = judge_target_version(&[redis("7.2.4"), redis("6.2.0")], &redis("6.2.14"));
        assert_eq!(v.status, Status::Warn);
        assert!(v.message.contains("plain commands"), "{v:?}");
        assert!(v.fix.unwrap().contains("7.2.4"));
        let v = judge_target_version(&[redis("7.0.15")], &redis("7.0.15"));
        assert_eq!(v.status, Status::Pass);
        let v = judge_target_version(&[redis("5.0.7")], &redis("7.0.15"));
        assert_eq!(v.status, Status::Pass);
        // 6.0 and 6.2 both write RDB 9: a 6.0 target loads a 6.2 source's payloads.
        assert_eq!(
            judge_target_version(&[redis("6.2.1")], &redis("6.0.9")).status,
            Status::Pass
        );
        // Valkey 9 (RDB 80) and Redis 8 (RDB 12) load each other's shared versions only.
        let v = judge_target_version(&[redis("8.0.2")], &valkey("9.1.2"));
        assert_eq!(v.status, Status::Warn, "{v:?}");
        assert!(v.message.contains("Valkey 9.1.2") && v.message.contains("Redis 8.0.2"));
        let v = judge_target_version(&[valkey("9.1.2")], &redis("8.0.2"));
        assert_eq!(v.status, Status::Warn, "{v:?}");
        let v = judge_target_version(&[valkey("8.1.1"), redis("7.0.15")], &valkey("9.1.2"));
        assert_eq!(v.status, Status::Pass, "{v:?}");
        let v = judge_target_version(&[valkey("9.1.2")], &valkey("9.0.0"));
        assert_eq!(v.status, Status::Pass, "{v:?}");
    }

    #[test]
    fn backlog_against_rate() {
        let v = judge_backlog(16 * 1024, 100_000.0, 60.0, false);
        assert_eq!(v.status, Status::Warn);
        assert!(v.fix.unwrap().contains("CONFIG SET repl-backlog-size"));
        assert_eq!(
            judge_backlog(1 << 20, 0.0, 60.0, false).status,
            Status::Pass
        );
        assert_eq!(
            judge_backlog(100 << 20, 100_000.0, 60.0, false).status,
            Status::Pass
        );
    }

    #[test]
    fn eviction_policy() {
        assert_eq!(judge_eviction("noeviction", false).status, Status::Pass);
        assert_eq!(judge_eviction("allkeys-lru", false).status, Status::Fail);
        assert_eq!(judge_eviction("allkeys-lru", true).status, Status::Warn);
    }

    #[test]
    fn headroom() {
        assert_eq!(judge_headroom(0, 1 << 20, 0, 5 << 30).status, Status::Pass);
        assert_eq!(
            judge_headroom(10 << 20, 1 << 20, 0, 20 << 20).status,
            Status::Fail
        );
        assert_eq!(
            judge_headroom(0, 1 << 20, 8 << 30, 20 << 30).status,
            Status::Warn
        );
        assert_eq!(
            judge_headroom(100 << 20, 1 << 20, 0, 10 << 20).status,
            Status::Pass
        );
    }

    #[test]
    fn not_empty() {
        let mut k = BTreeMap::new();
        assert_eq!(
            judge_not_empty(&k, IfNotEmpty::Abort, false).status,
            Status::Pass
        );
        k.insert(0, 0);
        assert_eq!(
            judge_not_empty(&k, IfNotEmpty::Abort, false).status,
            Status::Pass
        );
        k.insert(3, 10);
        assert_eq!(
            judge_not_empty(&k, IfNotEmpty::Abort, false).status,
            Status::Fail
        );
        assert_eq!(
            judge_not_empty(&k, IfNotEmpty::Ignore, false).status,
            Status::Warn
        );
        assert_eq!(
            judge_not_empty(&k, IfNotEmpty::Abort, true).status,
            Status::Pass
        );
    }
}
