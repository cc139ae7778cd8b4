//! Deletions on behalf of one source, each proven ([`crate::target::deletion`]): a FLUSH of
//! the source, the stale-key sweep after a forced full resync, the retry of deletions a peer
//! could not vouch for, and the old value of a deferred key the source writes again.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::error::ApplyError;
use super::{unix_ms, LoopFigures, SourceCtx};
use crate::endpoint::Endpoint;
use crate::pipeline::filter::KeyFilter;
use crate::pipeline::keys::{command_keys, KeySpec};
use crate::resp::{Client, ClientError, Reply};
use crate::target::deferred::{key_hash, Deferred};
use crate::target::deletion::{self, Authority, DeletionError, Plan, Report, Scope};

pub(super) enum Job<'a> {
    /// The source flushed one database (`Some`) or all of them.
    Flush(Option<u32>),
    /// After a forced full resync: every key not in the new snapshot (64-bit hashes).
    Stale(&'a HashSet<u64>),
    /// The deletions deferred earlier.
    Retry,
}

impl Job<'_> {
    fn cause(&self) -> &'static str {
        match self {
            Job::Flush(_) => "flush",
            Job::Stale(_) => "stale",
            Job::Retry => "deferred",
        }
    }
}

/// Delete the target keys proven to be this source's ([`crate::target::deletion`]): not held
/// by any peer, not written on the target meanwhile. Keys a peer could not vouch for are
/// deferred; keys nobody can be asked about (no peers known) stay and are counted.
pub(super) fn delete_proven(
    ctx: &SourceCtx,
    deferred: &mut Deferred,
    job: Job<'_>,
) -> Result<(), ApplyError> {
    let Some(target) = ctx.target.as_ref() else {
        return Err(ApplyError::DeletionWithoutTarget {
            name: ctx.name.to_string(),
        });
    };
    if matches!(job, Job::Stale(_)) {
        // The sweep derives every candidate again, the deferred ones included.
        deferred
            .clear()
            .map_err(deferred_io(ctx, "deferred deletions"))?;
    }
    let pending = match job {
        Job::Retry => deferred
            .pending_keys()
            .map_err(deferred_io(ctx, "deferred deletions"))?,
        _ => Vec::new(),
    };
    let started = Instant::now();
    let (report, doubt) = sweep_until_done(ctx, target, deferred, &job, &pending)?;
    let stored = match job {
        Job::Retry => deferred.replace(doubt),
        _ => deferred.add_all(&doubt, unix_ms()),
    };
    stored.map_err(deferred_io(ctx, "cannot store the deferred deletions"))?;
    publish(&ctx.figures, deferred);
    report_deletion(ctx, &job, &report, deferred, started);
    Ok(())
}

/// A deferred-deletions file error of this source.
fn deferred_io<'a>(
    ctx: &'a SourceCtx,
    what: &'static str,
) -> impl Fn(std::io::Error) -> ApplyError + 'a {
    move |cause| ApplyError::Deferred {
        name: ctx.name.to_string(),
        what,
        cause,
    }
}

/// Run the job's sweep (or retry) until it completes: a target that went away is waited
/// for like the writers do; one that refused ends it. Returns the report and the keys in
/// doubt (a peer did not answer).
fn sweep_until_done(
    ctx: &SourceCtx,
    target: &Endpoint,
    deferred: &Deferred,
    job: &Job<'_>,
    pending: &[(u32, Bytes)],
) -> Result<(Report, Vec<(u32, Bytes)>), ApplyError> {
    let peers: Vec<Endpoint> = match &ctx.authority {
        Authority::Peers(p) => p.clone(),
        _ => Vec::new(),
    };
    let owner = ctx.owner.as_ref();
    let hint = |k: &[u8]| -> Option<usize> {
        let o = owner?(k)?;
        peers.iter().position(|p| *p == o)
    };
    let filter = &ctx.stream_opts.filter;
    let own_prefix = &ctx.stream_opts.own_prefix;
    let peer_dbs = |t: u32| source_dbs_for(filter, t);
    let snapshot = match job {
        Job::Stale(set) => Some(*set),
        _ => None,
    };
    let keep = |db: u32, k: &[u8]| {
        k.starts_with(own_prefix)
            || !filter.key_allowed(k)
            || !writes_db(filter, db)
            || snapshot.is_some_and(|s| s.contains(&key_hash(db, k)))
    };
    let retrying = matches!(job, Job::Retry);
    // A deferred key the own stream wrote since is the source's own data now.
    let still = |db: u32, k: &[u8]| !retrying || deferred.contains(db, k);
    let plan = Plan {
        target,
        authority: &ctx.authority,
        hint: Some(&hint),
        peer_dbs: &peer_dbs,
        keep: &keep,
        still_candidate: &still,
        batch: deletion::DEFAULT_BATCH,
        precheck: true,
        timeout: Duration::from_secs(2),
        // The target endpoint is then one node, a seed for the slot map.
        cluster: ctx.target_cluster,
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut doubt: Vec<(u32, Bytes)> = Vec::new();
        let mut defer = |db: u32, k: Bytes| doubt.push((db, k));
        let attempt = match job {
            Job::Flush(db) => {
                deletion::sweep(&plan, db.map_or(Scope::AllDbs, Scope::Db), &mut defer)
            }
            Job::Stale(_) => deletion::sweep(&plan, Scope::AllDbs, &mut defer),
            Job::Retry => deletion::retry(&plan, &mut pending.iter().cloned(), &mut defer),
        };
        match attempt {
            Ok(r) => return Ok((r, doubt)),
            // The target refused (NOPERM, READONLY, ...): nothing a retry changes.
            Err(error @ DeletionError::Refused { .. }) => {
                return Err(deletion_failed(ctx, job, error))
            }
            // The target went away (or answered nonsense): like the writers, wait for it. A
            // cluster that redirected, is down or moved slots is waited for the same way; the
            // next attempt reads the slot map again. A new attempt starts over; what the last
            // one deleted was proven on the node holding it, is gone and not a candidate.
            Err(e) => {
                if ctx.stop.load(Ordering::Acquire) {
                    return Err(deletion_failed(ctx, job, e));
                }
                tracing::warn!(source = %ctx.name, cause = job.cause(), "deletion interrupted: {e}; starting it again in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn deletion_failed(ctx: &SourceCtx, job: &Job<'_>, error: DeletionError) -> ApplyError {
    ApplyError::Deletion {
        name: ctx.name.to_string(),
        cause: job.cause(),
        error: Box::new(error),
    }
}

/// Metrics and log lines of a finished deletion.
fn report_deletion(
    ctx: &SourceCtx,
    job: &Job<'_>,
    report: &Report,
    deferred: &Deferred,
    started: Instant,
) {
    let name = &ctx.name;
    let l = [("source", name.to_string())];
    metrics::counter!("redis_relay_deletions_total", "source" => name.to_string(), "cause" => job.cause()).increment(report.deleted);
    metrics::counter!("redis_relay_deletions_kept_total", "source" => name.to_string(), "reason" => "on_peer").increment(report.kept_on_peer);
    metrics::counter!("redis_relay_deletions_kept_total", "source" => name.to_string(), "reason" => "unattributed").increment(report.unattributed);
    metrics::counter!("redis_relay_peer_checks_total", &l).increment(report.peer_round_trips);
    tracing::info!(source = %name, cause = job.cause(), scanned = report.scanned, deleted = report.deleted, kept_on_peer = report.kept_on_peer, deferred = report.deferred, unattributed = report.unattributed, peer_round_trips = report.peer_round_trips, watch_aborts = report.watch_aborts, elapsed_ms = started.elapsed().as_millis() as u64, "proven deletion done");
    if report.deferred > 0 {
        tracing::warn!(source = %name, keys = deferred.len(), peers_down = ?report.peers_down, "deletion deferred: a peer did not answer, so these keys may be its own; they stay on the target and the deletion is retried until the peer answers");
    }
    if report.unattributed > 0 {
        tracing::warn!(source = %name, keys = report.unattributed, "keys left in place: this relay does not know the target's other writers, so it cannot prove these keys are its source's; name the other masters with --peer (or --twemproxy with --local-server), or declare the relay the target's only writer with --target-owner exclusive");
    }
}

/// First wait before deferred deletions are tried again; doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// This source's deletions waiting for a peer, when they are tried again, and the connection
/// kept for deleting the old value of a deferred key written again.
pub(super) struct DeferredDeletions {
    pub set: Deferred,
    next_retry: Instant,
    backoff: Duration,
    del_conn: Option<Client>,
}

impl DeferredDeletions {
    /// The deferred deletions left by an earlier run (none on a first start).
    pub fn open(ctx: &SourceCtx) -> Result<DeferredDeletions, ApplyError> {
        let set = Deferred::open(&ctx.state_dir, &crate::endpoint::file_stem(&ctx.name))
            .map_err(deferred_io(ctx, "cannot read its deferred deletions"))?;
        if !set.is_empty() {
            tracing::warn!(source = %ctx.name, keys = set.len(), "deletions deferred before the restart are still waiting for a peer: retrying them");
        }
        publish(&ctx.figures, &set);
        Ok(DeferredDeletions {
            set,
            next_retry: Instant::now(),
            backoff: RETRY_FIRST,
            del_conn: None,
        })
    }

    /// Try the deferred deletions again when due (exponential backoff while a peer stays
    /// away).
    pub fn retry_if_due(&mut self, ctx: &SourceCtx) -> Result<(), ApplyError> {
        if self.set.is_empty()
            || Instant::now() < self.next_retry
            || !ctx.figures.snapshot_done.load(Ordering::Acquire)
            || !ctx.output.is_target()
        {
            return Ok(());
        }
        let before = self.set.len();
        delete_proven(ctx, &mut self.set, Job::Retry)?;
        if self.set.is_empty() {
            tracing::info!(source = %ctx.name, keys = before, "deferred deletions completed");
            self.backoff = RETRY_FIRST;
        } else {
            self.backoff = (self.backoff * 2).min(RETRY_MAX);
        }
        self.next_retry = Instant::now() + self.backoff;
        Ok(())
    }

    /// The own stream is about to run `args` in target database `db`: deferred keys it
    /// writes leave the set, their old value deleted first ([`delete_before_write`]).
    pub fn before_write(
        &mut self,
        ctx: &SourceCtx,
        db: u32,
        args: &[Bytes],
    ) -> Result<(), ApplyError> {
        if self.set.is_empty() {
            return Ok(());
        }
        let hits = touch_keys(&mut self.set, db, args);
        if hits.is_empty() {
            return Ok(());
        }
        delete_before_write(ctx, &mut self.set, &mut self.del_conn, db, &hits)
    }
}

/// Show the deferred deletions in the loop's figures (status, metrics).
pub(super) fn publish(figures: &LoopFigures, deferred: &Deferred) {
    figures
        .deferred_keys
        .store(deferred.len() as u64, Ordering::Relaxed);
    figures
        .deferred_since_ms
        .store(deferred.since_ms().unwrap_or(0), Ordering::Relaxed);
}

/// Source databases looked at for a target database: the usual 16 and then some, and every
/// database the map names.
fn source_dbs(filter: &KeyFilter) -> impl Iterator<Item = u32> + '_ {
    (0..64u32).chain(filter.db_map.keys().copied())
}

/// The source databases whose keys land in target database `t` (peers are asked there).
fn source_dbs_for(filter: &KeyFilter, t: u32) -> Vec<u32> {
    if filter.is_identity() {
        return vec![t];
    }
    let mut dbs: Vec<u32> = source_dbs(filter)
        .filter(|s| filter.map_db(*s) == Some(t))
        .collect();
    dbs.sort_unstable();
    dbs.dedup();
    dbs
}

/// Some source database lands in target database `t` (else no key there is the relay's).
fn writes_db(filter: &KeyFilter, t: u32) -> bool {
    filter.is_identity() || source_dbs(filter).any(|s| filter.map_db(s) == Some(t))
}

/// The own stream is about to write these keys: they leave the deferred set (a retry never
/// deletes them). Returns those that were deferred.
fn touch_keys(deferred: &mut Deferred, db: u32, args: &[Bytes]) -> Vec<Bytes> {
    let mut hits = Vec::new();
    let touch = |k: &Bytes| {
        if deferred.touch(db, k) {
            hits.push(k.clone());
        }
    };
    match command_keys(args) {
        KeySpec::Keys(keys) => keys.into_iter().for_each(touch),
        KeySpec::Channel(_) => {}
        KeySpec::Global => {
            // Scripts and functions name their keys after numkeys.
            let name = args.first().map(|a| a.to_ascii_uppercase());
            if matches!(
                name.as_deref(),
                Some(b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO")
            ) {
                let n = args
                    .get(2)
                    .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
                    .unwrap_or(0);
                args.iter().skip(3).take(n).for_each(touch);
            }
        }
    }
    hits
}

/// A deferred key the source writes again: the source's flush (or its new snapshot) had no
/// such key, so the old value goes first and the write lands on nothing, as on the source. A
/// peer's copy of the key, if there were one, is overwritten by this write anyway. Order on
/// a crash: the DEL first, then the deferred set saved without the key, then the write is
/// dispatched; a restart before the save deletes again (the write was not sent), one after it
/// never touches the key again (the write may already be applied).
fn delete_before_write(
    ctx: &SourceCtx,
    deferred: &mut Deferred,
    conn: &mut Option<Client>,
    db: u32,
    keys: &[Bytes],
) -> Result<(), ApplyError> {
    let Some(target) = ctx.target.as_ref() else {
        return Ok(());
    };
    if ctx.target_cluster {
        delete_on_cluster(ctx, target, db, keys)?;
    } else {
        delete_on_standalone(ctx, target, conn, db, keys)?;
    }
    deferred
        .journal_touches()
        .map_err(|cause| ApplyError::Deferred {
            name: ctx.name.to_string(),
            what: "cannot write the deferred deletions",
            cause,
        })?;
    publish(&ctx.figures, deferred);
    Ok(())
}

/// [`delete_before_write`] on a standalone target: `DEL` of the keys in `db` on the kept
/// connection, retried until the target answers.
fn delete_on_standalone(
    ctx: &SourceCtx,
    target: &Endpoint,
    conn: &mut Option<Client>,
    db: u32,
    keys: &[Bytes],
) -> Result<(), ApplyError> {
    let mut args: Vec<&[u8]> = vec![b"DEL"];
    args.extend(keys.iter().map(|k| &k[..]));
    let db = db.to_string();
    let mut delay = Duration::from_millis(100);
    loop {
        // One connection kept for these deletions (they come one write at a time while keys
        // are deferred); a broken one is replaced.
        if conn.is_none() {
            *conn = Client::connect(target, Duration::from_secs(5)).ok();
        }
        let attempt = match conn.as_mut() {
            None => Err(ClientError::Io {
                target: target.to_string(),
                what: "connecting to delete a deferred key written again",
                cause: std::io::ErrorKind::NotConnected.into(),
            }),
            // SELECT's reply is checked: a DEL in another database would hit someone's key.
            Some(c) => c
                .call(&["SELECT", db.as_str()])
                .and_then(|r| match r {
                    Reply::Error(_) => Ok(r),
                    _ => c.call(&args),
                })
                .map_err(|cause| ClientError::Io {
                    target: target.to_string(),
                    what: "SELECT and DEL of a deferred key written again",
                    cause,
                }),
        };
        if attempt.is_err() {
            *conn = None;
        }
        match attempt {
            Ok(Reply::Error(e)) => {
                return Err(ApplyError::DelRefused {
                    name: ctx.name.to_string(),
                    target: target.to_string(),
                    reply: String::from_utf8_lossy(&e).into_owned(),
                })
            }
            Ok(Reply::Integer(n)) => {
                metrics::counter!("redis_relay_deletions_total", "source" => ctx.name.to_string(), "cause" => "written").increment(n.max(0) as u64);
                break;
            }
            Ok(_) => break,
            Err(e) => {
                if ctx.stop.load(Ordering::Acquire) {
                    return Err(ApplyError::DelStopped {
                        name: ctx.name.to_string(),
                        cause: e,
                    });
                }
                tracing::warn!(source = %ctx.name, "deleting the old value of a deferred key written again: {e}; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    Ok(())
}

/// [`delete_before_write`] on a cluster target: each key deleted on its slot's master
/// ([`deletion::delete_on_cluster`]); a redirection or a node away is retried with a fresh
/// slot map, a refusal ends the source like on a standalone target.
fn delete_on_cluster(
    ctx: &SourceCtx,
    seed: &Endpoint,
    db: u32,
    keys: &[Bytes],
) -> Result<(), ApplyError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match deletion::delete_on_cluster(seed, db, keys, Duration::from_secs(5)) {
            Ok(n) => {
                metrics::counter!("redis_relay_deletions_total", "source" => ctx.name.to_string(), "cause" => "written").increment(n);
                return Ok(());
            }
            Err(DeletionError::Refused { server, reply, .. }) => {
                return Err(ApplyError::DelRefused {
                    name: ctx.name.to_string(),
                    target: server,
                    reply,
                })
            }
            Err(e) => {
                if ctx.stop.load(Ordering::Acquire) {
                    return Err(ApplyError::DelStopped {
                        name: ctx.name.to_string(),
                        cause: ClientError::Io {
                            target: seed.to_string(),
                            what: "deleting a deferred key written again on the cluster",
                            cause: std::io::Error::other(e.to_string()),
                        },
                    });
                }
                tracing::warn!(source = %ctx.name, "deleting the old value of a deferred key written again: {e}; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
