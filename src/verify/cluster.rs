//! The target side of `verify`: one server, or a Redis Cluster read through its masters.
//!
//! A cluster node holds only the keys of its slots and answers `-MOVED` for the others, so a
//! cluster target is read as the cluster: the slot map from the target's address, one
//! [`LiveReader`] per online master, every master scanned for the target's keys, and each key
//! read on the master of its slot. A redirection while reading (the slots moved since the map
//! was read) makes the reader read the map again and the batch once more. The comparison in
//! [`super::verify`] does not know which kind it reads: [`TargetReader`] gives it the same
//! calls as one server.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use serde_json::Value as J;

use super::live::{LiveReader, ReadOptions, ServerFacts};
use crate::endpoint::Endpoint;
use crate::resp::Client;
use crate::target::cluster::{key_slot, kind_of, SlotMap, TargetKind};

/// A key read: `Ok(None)` absent, `Err` unreadable (see [`LiveReader::read_keys`]).
type ReadResult = Result<Option<J>, String>;

/// Where a target scan is: which reader (a master of a cluster; always 0 for one server) and
/// its `SCAN` cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetCursor {
    reader: usize,
    cursor: u64,
}

/// The target: one server, or every master of a cluster.
pub enum TargetReader {
    /// Both boxed: readers hold their buffers inline, and their sizes differ.
    One(Box<LiveReader>),
    Cluster(Box<ClusterReader>),
}

impl TargetReader {
    /// Connect to `ep`; a cluster node (`kind`, else `INFO cluster`) means the whole cluster,
    /// whose slot map `ep` gives (or, when it cannot, one of the other `seeds`).
    pub fn connect(
        ep: &Endpoint,
        seeds: &[Endpoint],
        kind: Option<TargetKind>,
        opts: ReadOptions,
    ) -> anyhow::Result<TargetReader> {
        let kind = match kind {
            Some(k) => k,
            None => detect(ep)?,
        };
        Ok(match kind {
            TargetKind::Standalone => TargetReader::One(Box::new(LiveReader::connect(ep, opts)?)),
            TargetKind::Cluster => {
                TargetReader::Cluster(Box::new(ClusterReader::connect(ep, seeds, opts)?))
            }
        })
    }

    /// What the (first) server supports.
    pub fn facts(&self) -> &ServerFacts {
        match self {
            TargetReader::One(r) => &r.facts,
            TargetReader::Cluster(c) => &c.masters[0].facts,
        }
    }

    /// Keys read so far.
    pub fn keys_read(&self) -> u64 {
        match self {
            TargetReader::One(r) => r.keys_read,
            TargetReader::Cluster(c) => {
                c.keys_read_before + c.masters.iter().map(|m| m.keys_read).sum::<u64>()
            }
        }
    }

    /// Non-empty databases and their key counts (summed over the masters of a cluster).
    pub fn databases(&mut self) -> anyhow::Result<Vec<(u32, u64)>> {
        match self {
            TargetReader::One(r) => r.databases(),
            TargetReader::Cluster(c) => {
                let mut dbs: BTreeMap<u32, u64> = BTreeMap::new();
                for m in &mut c.masters {
                    for (db, n) in m.databases()? {
                        *dbs.entry(db).or_default() += n;
                    }
                }
                Ok(dbs.into_iter().collect())
            }
        }
    }

    /// One page of the target's keys of `db` from `cursor` (start with the default); the
    /// next cursor, `None` when every server was scanned to its end.
    pub fn scan_page(
        &mut self,
        db: u32,
        cursor: TargetCursor,
    ) -> anyhow::Result<(Option<TargetCursor>, Vec<Bytes>)> {
        let readers: &mut [LiveReader] = match self {
            TargetReader::One(r) => std::slice::from_mut(r),
            TargetReader::Cluster(c) => &mut c.masters,
        };
        let Some(reader) = readers.get_mut(cursor.reader) else {
            return Ok((None, Vec::new()));
        };
        let (next, keys) = reader.scan_page(db, cursor.cursor)?;
        let next = if next != 0 {
            Some(TargetCursor {
                reader: cursor.reader,
                cursor: next,
            })
        } else if cursor.reader + 1 < readers.len() {
            Some(TargetCursor {
                reader: cursor.reader + 1,
                cursor: 0,
            })
        } else {
            None
        };
        Ok((next, keys))
    }

    /// Read `keys` of `db` (each on the master of its slot on a cluster).
    pub fn read_keys(&mut self, db: u32, keys: &[Bytes]) -> anyhow::Result<Vec<ReadResult>> {
        match self {
            TargetReader::One(r) => r.read_keys(db, keys),
            TargetReader::Cluster(c) => c.read_keys(db, keys),
        }
    }

    /// Up to `n` random keys of `db` (spread over the masters by their sizes).
    pub fn random_keys(&mut self, db: u32, n: usize) -> anyhow::Result<Vec<Bytes>> {
        match self {
            TargetReader::One(r) => r.random_keys(db, n),
            TargetReader::Cluster(c) => c.random_keys(db, n),
        }
    }

    /// Keys under an ignored prefix in `db` (over every master).
    pub fn ignored_count(&mut self, db: u32) -> anyhow::Result<u64> {
        match self {
            TargetReader::One(r) => r.ignored_count(db),
            TargetReader::Cluster(c) => {
                let mut n = 0;
                for m in &mut c.masters {
                    n += m.ignored_count(db)?;
                }
                Ok(n)
            }
        }
    }

    /// The function libraries (every master of a cluster holds the same: the first speaks).
    pub fn functions(&mut self) -> anyhow::Result<J> {
        match self {
            TargetReader::One(r) => r.functions(),
            TargetReader::Cluster(c) => c.masters[0].functions(),
        }
    }
}

/// Every online master of a cluster, and which serves each slot.
pub struct ClusterReader {
    /// The address given (its login is every node's).
    seed: Endpoint,
    /// Other seeds to ask for the slot map.
    seeds: Vec<Endpoint>,
    opts: ReadOptions,
    map: SlotMap,
    /// One reader per online master, in the order of `ids`.
    masters: Vec<LiveReader>,
    ids: Vec<String>,
    /// Keys read by readers replaced after a new slot map.
    keys_read_before: u64,
}

impl ClusterReader {
    /// Read the slot map from `seed` (else from one of `seeds`) and connect to every online
    /// master.
    pub fn connect(
        seed: &Endpoint,
        seeds: &[Endpoint],
        opts: ReadOptions,
    ) -> anyhow::Result<ClusterReader> {
        let mut all = vec![seed.clone()];
        all.extend(seeds.iter().cloned());
        let mut r = ClusterReader {
            seed: seed.clone(),
            seeds: seeds.to_vec(),
            opts,
            map: discover(&all)?,
            masters: Vec::new(),
            ids: Vec::new(),
            keys_read_before: 0,
        };
        r.connect_masters()?;
        Ok(r)
    }

    /// One reader per online master of the current map.
    fn connect_masters(&mut self) -> anyhow::Result<()> {
        self.keys_read_before += self.masters.iter().map(|m| m.keys_read).sum::<u64>();
        self.masters.clear();
        self.ids.clear();
        for node in self.map.masters() {
            if !node.is_online_master() {
                continue;
            }
            let ep = node.endpoint(&self.seed);
            let reader = LiveReader::connect(&ep, self.opts.clone())
                .with_context(|| format!("target cluster {}: master {ep}", self.seed))?;
            self.masters.push(reader);
            self.ids.push(node.id.clone());
        }
        anyhow::ensure!(
            !self.masters.is_empty(),
            "target cluster {}: no online master in the slot map",
            self.seed
        );
        Ok(())
    }

    /// The slot map again (after a redirection), asked of the seed and of the masters known.
    fn refresh(&mut self) -> anyhow::Result<()> {
        let mut seeds = vec![self.seed.clone()];
        seeds.extend(self.seeds.iter().cloned());
        seeds.extend(self.masters.iter().map(|m| {
            let mut e = m.endpoint().clone();
            e.db = None;
            e
        }));
        self.map = discover(&seeds)?;
        self.connect_masters()
    }

    /// Read `keys`, each on its slot's master; after a redirection, once more with a new map.
    fn read_keys(&mut self, db: u32, keys: &[Bytes]) -> anyhow::Result<Vec<ReadResult>> {
        let (out, redirected) = self.read_routed(db, keys)?;
        if !redirected {
            return Ok(out);
        }
        tracing::debug!(seed = %self.seed, "redirected while reading: slot map read again");
        self.refresh()?;
        Ok(self.read_routed(db, keys)?.0)
    }

    /// One read of `keys` by the current map; and whether a master redirected.
    fn read_routed(&mut self, db: u32, keys: &[Bytes]) -> anyhow::Result<(Vec<ReadResult>, bool)> {
        let mut out: Vec<ReadResult> = vec![Ok(None); keys.len()];
        let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.iter().enumerate() {
            let slot = key_slot(k);
            match self.owner(slot) {
                Some(m) => groups.entry(m).or_default().push(i),
                None => out[i] = Err(format!("slot {slot} has no online master on the target")),
            }
        }
        let mut redirected = false;
        for (m, idx) in groups {
            let batch: Vec<Bytes> = idx.iter().map(|&i| keys[i].clone()).collect();
            let reader = &mut self.masters[m];
            for (i, r) in idx.into_iter().zip(reader.read_keys(db, &batch)?) {
                out[i] = r;
            }
            redirected |= reader.take_redirect();
        }
        Ok((out, redirected))
    }

    /// The index of the reader of `slot`'s master.
    fn owner(&self, slot: u16) -> Option<usize> {
        let node = self.map.master_for(slot)?;
        self.ids.iter().position(|id| *id == node.id)
    }

    /// Up to `n` random keys of `db`, each master's part by its size.
    fn random_keys(&mut self, db: u32, n: usize) -> anyhow::Result<Vec<Bytes>> {
        let mut sizes = Vec::with_capacity(self.masters.len());
        for m in &mut self.masters {
            let size = m.databases()?.into_iter().find(|(d, _)| *d == db);
            sizes.push(size.map_or(0, |(_, k)| k));
        }
        let total: u64 = sizes.iter().sum();
        let mut out = Vec::new();
        for (m, size) in self.masters.iter_mut().zip(sizes) {
            if size > 0 {
                let want = (n as u128 * size as u128).div_ceil(total as u128) as usize;
                out.extend(m.random_keys(db, want)?);
            }
        }
        out.truncate(n);
        Ok(out)
    }
}

/// Whether `ep` is a cluster node. A server (or proxy) that refuses INFO is read as one
/// server, as before clusters.
fn detect(ep: &Endpoint) -> anyhow::Result<TargetKind> {
    let mut conn = Client::connect(ep, Duration::from_secs(5))?;
    Ok(kind_of(&mut conn, None).unwrap_or_else(|e| {
        tracing::debug!(target_ep = %ep, error = %e, "INFO cluster failed: read as one server");
        TargetKind::Standalone
    }))
}

/// The slot map, with the seeds named when no seed gives one.
fn discover(seeds: &[Endpoint]) -> anyhow::Result<SlotMap> {
    SlotMap::discover(seeds, Duration::from_secs(5)).context("target cluster: no slot map")
}
