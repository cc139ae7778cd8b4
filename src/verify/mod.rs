//! `verify`: compare the content of the source masters with the target, key by key.
//!
//! The sources are read as a union (the masters of a Twemproxy cluster each hold a part of the
//! keys; the relay writes them all into one target). Every source key is read on its source
//! and on the target and compared by logical value ([`compare`]); then the target is scanned
//! for keys that no source has. On live data a difference may only be a write in flight (the
//! relay applies it a few milliseconds later), so differing keys are read again after
//! [`VerifyOptions::recheck_delay`], up to [`VerifyOptions::recheck_rounds`] times, and only
//! what still differs is reported. Keys under the relay's own prefix (`redis-relay:`) are not
//! data and are left out on both sides.
//!
//! Memory: the names of the keys of one database (of the sources) are held while that database
//! is compared, to find the target's extra keys and to compare a key SCAN returns twice only
//! once; values are held one SCAN page at a time.
//!
//! Beside the data path. Owns: the comparison and its report. May not touch: any server's data
//! (read-only commands only).

pub mod cluster;
pub mod compare;
pub mod live;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value as J;

use crate::endpoint::Endpoint;
use crate::source::topology::KeyOwner;
use crate::target::cluster::TargetKind;
pub use cluster::{TargetCursor, TargetReader};
pub use compare::{
    compare_documents, compare_documents_named, compare_entry, CompareOptions, CompareReport,
    DiffKind, Difference,
};
pub use live::{escape_key, read_canonical, LiveReader, ReadOptions};

/// The relay's own keys (offsets, markers): never compared.
pub const RELAY_PREFIX: &[u8] = crate::batch::record::DEFAULT_PREFIX.as_bytes();

/// Differing keys kept for re-checks; beyond this they are reported without a re-check (a
/// target that misses everything must not make verify hold every key name twice).
const MAX_RECHECK_KEYS: usize = 100_000;

/// Settings of a verification.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub compare: CompareOptions,
    /// Compare a random sample of about this many keys (per side) instead of every key.
    pub sample: Option<usize>,
    /// Re-reads of keys that differ, to tell real differences from writes in flight.
    pub recheck_rounds: usize,
    pub recheck_delay: Duration,
    /// Compare function libraries too (7.0+ on both sides).
    pub functions: bool,
    pub read: ReadOptions,
    /// A sidecar's view: compare its backend(s) with the target keys they own only.
    pub owned: Option<OwnedScope>,
    /// `--target-kind`: `None` reads a cluster node's whole cluster (`INFO cluster`).
    pub target_kind: Option<TargetKind>,
}

/// Which target keys belong to the compared sources when other masters write into the same
/// target (`verify --twemproxy FILE --local-server NAME`): those nutcracker places on one of
/// the sources (or, without a computable placement, every key), less those a peer holds.
#[derive(Debug, Clone)]
pub struct OwnedScope {
    pub owner: Option<KeyOwner>,
    pub local: Vec<Endpoint>,
    pub peers: Vec<Endpoint>,
}

impl OwnedScope {
    fn places_here(&self, key: &[u8]) -> bool {
        match &self.owner {
            Some(o) => o.owner(key).is_some_and(|e| self.local.contains(&e)),
            None => true,
        }
    }
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            compare: CompareOptions::default(),
            sample: None,
            recheck_rounds: 3,
            recheck_delay: Duration::from_secs(1),
            functions: true,
            read: ReadOptions {
                ignore_prefixes: vec![Bytes::from_static(RELAY_PREFIX)],
                ..ReadOptions::default()
            },
            owned: None,
            target_kind: None,
        }
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub compare: CompareReport,
    /// Keys that differed at first and were equal on a re-check (writes in flight).
    pub settled: u64,
    /// Keys read on the sources and on the target (re-checks included).
    pub keys_read: u64,
    pub elapsed: Duration,
    pub sampled: bool,
}

impl VerifyReport {
    pub fn is_equal(&self) -> bool {
        self.compare.is_equal()
    }

    /// Keys read per second, both sides together.
    pub fn keys_per_sec(&self) -> f64 {
        self.keys_read as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.compare)?;
        writeln!(
            f,
            "{}{} keys read in {:.2?} ({:.0} keys/s); {} keys differed at first and matched on a re-check",
            if self.sampled { "sampled: " } else { "" },
            self.keys_read,
            self.elapsed,
            self.keys_per_sec(),
            self.settled
        )
    }
}

/// A key that differed and waits for a re-check: (db, key, owning source or `None` when it
/// was only found on the target).
type Pending = (u32, Bytes, Option<usize>);

/// Compare the union of `sources` with `target`.
pub fn verify(
    sources: &[Endpoint],
    target: &Endpoint,
    opts: &VerifyOptions,
) -> anyhow::Result<VerifyReport> {
    let started = Instant::now();
    anyhow::ensure!(!sources.is_empty(), "verify needs at least one source");
    let mut srcs: Vec<LiveReader> = sources
        .iter()
        .map(|s| LiveReader::connect(s, opts.read.clone()))
        .collect::<anyhow::Result<_>>()?;
    let mut tgt = TargetReader::connect(target, opts.target_kind, opts.read.clone())?;
    let mut peers: Vec<LiveReader> = opts
        .owned
        .iter()
        .flat_map(|o| o.peers.iter())
        .map(|p| LiveReader::connect(p, opts.read.clone()))
        .collect::<anyhow::Result<_>>()?;
    let left_name = sources
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    let mut report = CompareReport::new(
        format!("source {left_name}"),
        format!("target {target}"),
        &opts.compare,
    );
    let mut dbs: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for s in &mut srcs {
        for (db, n) in s.databases()? {
            dbs.entry(db).or_default().0 += n;
        }
    }
    for (db, n) in tgt.databases()? {
        dbs.entry(db).or_default().1 += n;
    }
    let mut pending: Vec<Pending> = Vec::new();
    let mut job = Job {
        opts,
        report: &mut report,
        pending: &mut pending,
        peers: &mut peers,
    };
    for (&db, &(src_n, tgt_n)) in &dbs {
        match opts.sample {
            None => job.full_db(db, &mut srcs, &mut tgt)?,
            Some(n) => job.sample_db(db, n, (src_n, tgt_n), &dbs, &mut srcs, &mut tgt)?,
        }
    }
    if opts.functions && srcs.iter().all(|s| s.facts.has_functions()) && tgt.facts().has_functions()
    {
        // Each master of a cluster holds the same libraries; the first one stands for all.
        let l = srcs[0].functions()?;
        let r = tgt.functions()?;
        report.record_functions(&l, &r);
    }
    let settled = recheck(&mut report, pending, opts, &mut srcs, &mut tgt)?;
    if let Some(n) = opts.sample {
        report.notes.push(format!(
            "random sample of about {n} keys per side; key counts are the servers' DBSIZE"
        ));
    }
    let keys_read = srcs.iter().map(|s| s.keys_read).sum::<u64>() + tgt.keys_read();
    Ok(VerifyReport {
        compare: report,
        settled,
        keys_read,
        elapsed: started.elapsed(),
        sampled: opts.sample.is_some(),
    })
}

struct Job<'a> {
    opts: &'a VerifyOptions,
    report: &'a mut CompareReport,
    pending: &'a mut Vec<Pending>,
    /// The peers of [`VerifyOptions::owned`] (none otherwise).
    peers: &'a mut Vec<LiveReader>,
}

type ReadResult = Result<Option<J>, String>;

/// Read the same keys on a source and on the target at the same time.
fn read_both(
    src: &mut LiveReader,
    tgt: &mut TargetReader,
    db: u32,
    keys: &[Bytes],
) -> anyhow::Result<(Vec<ReadResult>, Vec<ReadResult>)> {
    std::thread::scope(|s| {
        let t = s.spawn(|| tgt.read_keys(db, keys));
        let l = src.read_keys(db, keys);
        let r = t
            .join()
            .map_err(|_| anyhow::anyhow!("target reader panicked"))?;
        Ok((l?, r?))
    })
}

impl Job<'_> {
    /// Compare one batch of keys of source `si`; differing keys wait for a re-check.
    fn compare_batch(
        &mut self,
        db: u32,
        si: usize,
        keys: &[Bytes],
        srcs: &mut [LiveReader],
        tgt: &mut TargetReader,
    ) -> anyhow::Result<()> {
        let (l, r) = read_both(&mut srcs[si], tgt, db, keys)?;
        for ((k, l), r) in keys.iter().zip(l).zip(r) {
            let equal = match (&l, &r) {
                (Ok(a), Ok(b)) => {
                    compare_entry(a.as_ref(), b.as_ref(), &self.opts.compare).is_empty()
                }
                _ => false,
            };
            if equal {
                self.report.db_mut(db).compared += 1;
            } else {
                self.defer_or_record(db, k, Some(si), l, r);
            }
        }
        Ok(())
    }

    /// Queue a differing key for re-checks, or record it now when re-checks are off or full.
    fn defer_or_record(
        &mut self,
        db: u32,
        key: &Bytes,
        owner: Option<usize>,
        l: ReadResult,
        r: ReadResult,
    ) {
        if self.opts.recheck_rounds > 0 && self.pending.len() < MAX_RECHECK_KEYS {
            self.pending.push((db, key.clone(), owner));
        } else {
            record(self.report, db, key, l, r, &self.opts.compare);
        }
    }

    fn full_db(
        &mut self,
        db: u32,
        srcs: &mut [LiveReader],
        tgt: &mut TargetReader,
    ) -> anyhow::Result<()> {
        let mut seen: HashSet<Bytes> = HashSet::new();
        for si in 0..srcs.len() {
            let mut cursor = 0;
            loop {
                let (next, keys) = srcs[si].scan_page(db, cursor)?;
                // A key seen twice (SCAN repeats, or two masters holding it) is compared once:
                // the first source holding it stands for the union.
                let keys: Vec<Bytes> = keys
                    .into_iter()
                    .filter(|k| seen.insert(k.clone()))
                    .collect();
                if !keys.is_empty() {
                    self.compare_batch(db, si, &keys, srcs, tgt)?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        self.report.db_mut(db).left_keys = seen.len() as u64;
        // Keys only on the target.
        let mut target_seen: HashSet<Bytes> = HashSet::new();
        let mut cursor = TargetCursor::default();
        loop {
            let (next, keys) = tgt.scan_page(db, cursor)?;
            let keys = self.owned_here(db, keys, &seen)?;
            let fresh: Vec<Bytes> = keys
                .into_iter()
                .filter(|k| target_seen.insert(k.clone()))
                .collect();
            let unknown: Vec<Bytes> = fresh.into_iter().filter(|k| !seen.contains(k)).collect();
            if !unknown.is_empty() {
                self.check_extra(db, &unknown, srcs, tgt)?;
            }
            let Some(next) = next else { break };
            cursor = next;
        }
        self.report.db_mut(db).right_keys = target_seen.len() as u64;
        Ok(())
    }

    /// With [`VerifyOptions::owned`]: the target keys that belong to the compared sources
    /// (seen on them, or placed on them and held by no peer). Otherwise all of `keys`.
    fn owned_here(
        &mut self,
        db: u32,
        keys: Vec<Bytes>,
        seen: &HashSet<Bytes>,
    ) -> anyhow::Result<Vec<Bytes>> {
        let Some(scope) = &self.opts.owned else {
            return Ok(keys);
        };
        let mut keys: Vec<Bytes> = keys
            .into_iter()
            .filter(|k| seen.contains(k) || scope.places_here(k))
            .collect();
        for p in self.peers.iter_mut() {
            let unseen: Vec<Bytes> = keys
                .iter()
                .filter(|k| !seen.contains(*k))
                .cloned()
                .collect();
            if unseen.is_empty() {
                break;
            }
            let held: HashSet<Bytes> = unseen
                .iter()
                .zip(p.exists(db, &unseen)?)
                .filter(|(_, e)| *e)
                .map(|(k, _)| k.clone())
                .collect();
            keys.retain(|k| !held.contains(k));
        }
        Ok(keys)
    }

    /// Keys found on the target: which source (if any) has them now; compare accordingly.
    fn check_extra(
        &mut self,
        db: u32,
        keys: &[Bytes],
        srcs: &mut [LiveReader],
        tgt: &mut TargetReader,
    ) -> anyhow::Result<()> {
        let mut owner: Vec<Option<usize>> = vec![None; keys.len()];
        for (si, s) in srcs.iter_mut().enumerate() {
            for (i, e) in s.exists(db, keys)?.into_iter().enumerate() {
                if e && owner[i].is_none() {
                    owner[i] = Some(si);
                }
            }
        }
        for si in 0..srcs.len() {
            let mine: Vec<Bytes> = keys
                .iter()
                .zip(&owner)
                .filter(|(_, o)| **o == Some(si))
                .map(|(k, _)| k.clone())
                .collect();
            if !mine.is_empty() {
                // Created on the source after it was scanned: compare like any source key.
                self.compare_batch(db, si, &mine, srcs, tgt)?;
            }
        }
        let orphans: Vec<Bytes> = keys
            .iter()
            .zip(&owner)
            .filter(|(_, o)| o.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        if !orphans.is_empty() {
            let r = tgt.read_keys(db, &orphans)?;
            for (k, r) in orphans.iter().zip(r) {
                self.defer_or_record(db, k, None, Ok(None), r);
            }
        }
        Ok(())
    }

    fn sample_db(
        &mut self,
        db: u32,
        n: usize,
        (src_n, tgt_n): (u64, u64),
        all: &BTreeMap<u32, (u64, u64)>,
        srcs: &mut [LiveReader],
        tgt: &mut TargetReader,
    ) -> anyhow::Result<()> {
        let total_src: u64 = all.values().map(|v| v.0).sum();
        let total_tgt: u64 = all.values().map(|v| v.1).sum();
        // The sample is spread over databases (and sources) by their sizes.
        let share = |part: u64, total: u64| -> usize {
            if part == 0 {
                0
            } else {
                ((n as u128 * part as u128).div_ceil(total.max(1) as u128) as usize).max(1)
            }
        };
        let mut seen: HashSet<Bytes> = HashSet::new();
        for si in 0..srcs.len() {
            let size = srcs[si]
                .databases()?
                .into_iter()
                .find(|(d, _)| *d == db)
                .map_or(0, |(_, k)| k);
            let want = share(size, total_src);
            if want == 0 {
                continue;
            }
            let keys: Vec<Bytes> = srcs[si]
                .random_keys(db, want)?
                .into_iter()
                .filter(|k| seen.insert(k.clone()))
                .collect();
            for chunk in keys.chunks(self.opts.read.scan_count.max(1)) {
                self.compare_batch(db, si, chunk, srcs, tgt)?;
            }
        }
        let want = share(tgt_n, total_tgt);
        if want > 0 {
            let keys: Vec<Bytes> = tgt
                .random_keys(db, want)?
                .into_iter()
                .filter(|k| !seen.contains(k))
                .collect();
            let keys = self.owned_here(db, keys, &seen)?;
            for chunk in keys.chunks(self.opts.read.scan_count.max(1)) {
                self.check_extra(db, chunk, srcs, tgt)?;
            }
        }
        // INFO's counts, less the relay's own keys (records, heartbeats).
        let mut own = 0;
        for s in srcs.iter_mut() {
            own += s.ignored_count(db)?;
        }
        let tgt_own = tgt.ignored_count(db)?;
        let c = self.report.db_mut(db);
        c.left_keys = src_n.saturating_sub(own);
        c.right_keys = tgt_n.saturating_sub(tgt_own);
        Ok(())
    }
}

fn record(
    report: &mut CompareReport,
    db: u32,
    key: &[u8],
    l: ReadResult,
    r: ReadResult,
    opts: &CompareOptions,
) {
    match (l, r) {
        (Ok(a), Ok(b)) => {
            report.record_key(db, key, a.as_ref(), b.as_ref(), opts);
        }
        (Err(e), _) => report.record_unreadable(db, key, &format!("on the source: {e}")),
        (_, Err(e)) => report.record_unreadable(db, key, &format!("on the target: {e}")),
    }
}

/// Re-read the keys that differed until they match or the rounds are used up; record what
/// still differs. Returns how many settled.
fn recheck(
    report: &mut CompareReport,
    mut pending: Vec<Pending>,
    opts: &VerifyOptions,
    srcs: &mut [LiveReader],
    tgt: &mut TargetReader,
) -> anyhow::Result<u64> {
    let mut settled = 0;
    for round in 0..opts.recheck_rounds {
        if pending.is_empty() {
            break;
        }
        std::thread::sleep(opts.recheck_delay);
        let last = round + 1 == opts.recheck_rounds;
        let mut still = Vec::new();
        // Group by (db, owner) so that each group is one pipelined read per side.
        let mut groups: BTreeMap<(u32, Option<usize>), Vec<Bytes>> = BTreeMap::new();
        for (db, k, o) in pending.drain(..) {
            groups.entry((db, o)).or_default().push(k);
        }
        for ((db, owner), keys) in groups {
            for chunk in keys.chunks(opts.read.scan_count.max(1)) {
                // A key only on the target may have been created on a source since.
                let mut owners = vec![owner; chunk.len()];
                if owner.is_none() {
                    for (si, s) in srcs.iter_mut().enumerate() {
                        for (i, e) in s.exists(db, chunk)?.into_iter().enumerate() {
                            if e && owners[i].is_none() {
                                owners[i] = Some(si);
                            }
                        }
                    }
                }
                let r = tgt.read_keys(db, chunk)?;
                let mut l: Vec<ReadResult> = vec![Ok(None); chunk.len()];
                for (si, s) in srcs.iter_mut().enumerate() {
                    let idx: Vec<usize> = (0..chunk.len())
                        .filter(|&i| owners[i] == Some(si))
                        .collect();
                    if idx.is_empty() {
                        continue;
                    }
                    let keys: Vec<Bytes> = idx.iter().map(|&i| chunk[i].clone()).collect();
                    for (i, v) in idx.into_iter().zip(s.read_keys(db, &keys)?) {
                        l[i] = v;
                    }
                }
                for (i, (lv, rv)) in l.into_iter().zip(r).enumerate() {
                    let equal = match (&lv, &rv) {
                        (Ok(a), Ok(b)) => {
                            compare_entry(a.as_ref(), b.as_ref(), &opts.compare).is_empty()
                        }
                        _ => false,
                    };
                    if equal {
                        settled += 1;
                        report.db_mut(db).compared += 1;
                    } else if last {
                        record(report, db, &chunk[i], lv, rv, &opts.compare);
                    } else {
                        still.push((db, chunk[i].clone(), owners[i]));
                    }
                }
            }
        }
        pending = still;
    }
    Ok(settled)
}
