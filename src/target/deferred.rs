//! Deletions the relay could not prove yet, kept until it can.
//!
//! A FLUSHDB of the relay's master, or the stale-key sweep after a forced full resync, deletes a
//! target key only once every peer master answered that it does not hold the key. When a peer
//! cannot answer (down, partitioned), the keys in doubt are neither deleted nor forgotten: they
//! are written here and retried until the peer is back. Two rules keep a retry safe:
//!
//! - a key the relay's own stream writes after the flush is the source's from then on: it
//!   leaves the set before the write is dispatched ([`Deferred::touch`]), so a retry never
//!   deletes it (the caller deletes its old value first: the source's flush deleted it too);
//! - the set survives a restart: the key list is a file in the state dir, rewritten (without
//!   the touched keys) before each checkpoint, so it always reflects at least every command
//!   up to the checkpoint the relay resumes from.
//!
//! Memory: 16 bytes per deferred key (a 128-bit hash of database and key); the keys themselves
//! stay on disk. The width makes a false match (a live key taken for a deferred one, whose
//! value would then be deleted before a write) negligible: about 2^-128 per pair.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

const MAGIC: &[u8; 8] = b"RRDEFER1";

/// The deferred deletions of one source.
pub struct Deferred {
    path: PathBuf,
    /// Hashes of keys touched since the key file was last written, appended here at once so
    /// that a restart sees them (the key file is rewritten at the next checkpoint).
    journal: PathBuf,
    unjournaled: Vec<u128>,
    hashes: HashSet<u128>,
    /// Unix ms of the oldest deferral still pending (0: none).
    since_ms: u64,
    /// Keys were touched since the file was last written: rewrite it before the checkpoint.
    dirty: bool,
}

/// A 64-bit hash of a key in a database (the stale-key sweep keeps a set of these: a
/// collision there only keeps a stale key).
pub fn key_hash(db: u32, key: &[u8]) -> u64 {
    salted(0, db, key)
}

/// The 128-bit hash the deferred set keeps.
fn wide_hash(db: u32, key: &[u8]) -> u128 {
    ((salted(1, db, key) as u128) << 64) | salted(2, db, key) as u128
}

fn salted(salt: u8, db: u32, key: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    salt.hash(&mut h);
    db.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

impl Deferred {
    /// The file of `source` in `state_dir`, loaded if it exists.
    pub fn open(state_dir: &Path, file_name: &str) -> std::io::Result<Deferred> {
        let path = state_dir.join(format!("{file_name}.deferred"));
        let journal = state_dir.join(format!("{file_name}.deferred.touched"));
        let mut d = Deferred {
            path,
            journal,
            unjournaled: Vec::new(),
            hashes: HashSet::new(),
            since_ms: 0,
            dirty: false,
        };
        if d.path.is_file() {
            let (since, keys) = read_file(&d.path)?;
            d.since_ms = since;
            for (db, k) in keys {
                d.hashes.insert(wide_hash(db, &k));
            }
            for h in read_journal(&d.journal)? {
                d.hashes.remove(&h);
            }
            if d.hashes.is_empty() {
                d.since_ms = 0;
            }
        }
        Ok(d)
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Unix ms of the oldest pending deferral, if any.
    pub fn since_ms(&self) -> Option<u64> {
        (!self.hashes.is_empty()).then_some(self.since_ms)
    }

    /// Still waiting to be deleted (not written by the own stream since).
    pub fn contains(&self, db: u32, key: &[u8]) -> bool {
        self.hashes.contains(&wide_hash(db, key))
    }

    /// The own stream is about to write `key`: it is the source's from now on, never deleted
    /// by a retry. True when it was deferred (its old value must go before the write).
    pub fn touch(&mut self, db: u32, key: &[u8]) -> bool {
        let h = wide_hash(db, key);
        let hit = self.hashes.remove(&h);
        if hit {
            self.dirty = true;
            self.unjournaled.push(h);
        }
        hit
    }

    /// Make the touches so far survive a crash (appended to the journal, fsynced): cheap,
    /// unlike rewriting the key file.
    pub fn journal_touches(&mut self) -> std::io::Result<()> {
        if self.unjournaled.is_empty() {
            return Ok(());
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal)?;
        let mut buf = Vec::with_capacity(self.unjournaled.len() * 16);
        for h in self.unjournaled.drain(..) {
            buf.extend_from_slice(&h.to_le_bytes());
        }
        f.write_all(&buf)?;
        f.sync_data()
    }

    /// Add the keys a sweep or flush left in doubt (`now_ms`: when). Appends to the file.
    pub fn add_all(&mut self, keys: &[(u32, Bytes)], now_ms: u64) -> std::io::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut pending = self.pending_keys()?;
        pending.extend(keys.iter().cloned());
        if self.hashes.is_empty() {
            self.since_ms = now_ms;
        }
        for (db, k) in keys {
            self.hashes.insert(wide_hash(*db, k));
        }
        self.write(&pending)
    }

    /// Every key still pending, read from the file (touched ones left out).
    pub fn pending_keys(&self) -> std::io::Result<Vec<(u32, Bytes)>> {
        if !self.path.is_file() || self.hashes.is_empty() {
            return Ok(Vec::new());
        }
        let (_, keys) = read_file(&self.path)?;
        Ok(keys
            .into_iter()
            .filter(|(db, k)| self.hashes.contains(&wide_hash(*db, k)))
            .collect())
    }

    /// After a retry: only `still` remain (the oldest time stays when some do).
    pub fn replace(&mut self, still: Vec<(u32, Bytes)>) -> std::io::Result<()> {
        self.hashes = still.iter().map(|(db, k)| wide_hash(*db, k)).collect();
        if self.hashes.is_empty() {
            self.since_ms = 0;
        }
        self.write(&still)
    }

    /// Forget everything (a new full sweep derives the candidates again).
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.replace(Vec::new())
    }

    /// Rewrite the file without the touched keys, if any were touched (before a checkpoint).
    pub fn save_if_dirty(&mut self) -> std::io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let pending = self.pending_keys()?;
        if pending.is_empty() {
            self.since_ms = 0;
        }
        self.write(&pending)
    }

    /// Write `keys` atomically (temp file, fsync, rename); no file when there is nothing.
    fn write(&mut self, keys: &[(u32, Bytes)]) -> std::io::Result<()> {
        self.dirty = false;
        self.unjournaled.clear();
        if keys.is_empty() {
            remove_if_there(&self.path)?;
            return remove_if_there(&self.journal);
        }
        let tmp = self.path.with_extension("deferred.tmp");
        {
            let f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&tmp)?;
            let mut w = BufWriter::new(f);
            w.write_all(MAGIC)?;
            w.write_all(&self.since_ms.to_le_bytes())?;
            for (db, k) in keys {
                w.write_all(&db.to_le_bytes())?;
                w.write_all(&(k.len() as u32).to_le_bytes())?;
                w.write_all(k)?;
            }
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        // The new key file holds no touched key: the journal's entries are in it already.
        remove_if_there(&self.journal)
    }
}

fn remove_if_there(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The touched hashes (a torn last entry of a crash is ignored: its touch was not promised).
fn read_journal(path: &Path) -> std::io::Result<Vec<u128>> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(data
        .chunks_exact(16)
        .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
        .collect())
}

fn read_file(path: &Path) -> std::io::Result<(u64, Vec<(u32, Bytes)>)> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let mut r = BufReader::new(File::open(path)?);
    let mut head = [0u8; 16];
    r.read_exact(&mut head)
        .map_err(|_| bad("too short for a deferred-deletion file"))?;
    if &head[..8] != MAGIC {
        return Err(bad("not a deferred-deletion file (bad magic)"));
    }
    let since = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
    let mut out = Vec::new();
    let mut rec = [0u8; 8];
    loop {
        match r.read_exact(&mut rec) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let db = u32::from_le_bytes(rec[..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(rec[4..].try_into().expect("4 bytes")) as usize;
        if len > 512 << 20 {
            return Err(bad("key length over 512 MiB"));
        }
        let mut k = vec![0u8; len];
        r.read_exact(&mut k)
            .map_err(|_| bad("truncated key record"))?;
        out.push((db, Bytes::from(k)));
    }
    Ok((since, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn survives_a_restart_without_the_touched_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Deferred::open(dir.path(), "src").unwrap();
        assert!(d.is_empty());
        d.add_all(&[(0, k("a")), (0, k("b")), (3, k("a"))], 1000)
            .unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d.since_ms(), Some(1000));
        assert!(d.touch(0, b"a"));
        assert!(!d.touch(0, b"zzz"));
        assert!(!d.contains(0, b"a"));
        assert!(d.contains(3, b"a"));
        d.save_if_dirty().unwrap();
        let again = Deferred::open(dir.path(), "src").unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(again.since_ms(), Some(1000));
        let mut keys = again.pending_keys().unwrap();
        keys.sort();
        assert_eq!(keys, vec![(0, k("b")), (3, k("a"))]);
    }

    #[test]
    fn journaled_touches_survive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Deferred::open(dir.path(), "j").unwrap();
        d.add_all(&[(0, k("a")), (0, k("b")), (0, k("c"))], 7)
            .unwrap();
        assert!(d.touch(0, b"b"));
        d.journal_touches().unwrap();
        drop(d); // a crash: the key file was not rewritten
        let again = Deferred::open(dir.path(), "j").unwrap();
        assert_eq!(again.len(), 2);
        assert!(!again.contains(0, b"b"));
        let mut keys = again.pending_keys().unwrap();
        keys.sort();
        assert_eq!(keys, vec![(0, k("a")), (0, k("c"))]);
    }

    #[test]
    fn replace_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = Deferred::open(dir.path(), "s").unwrap();
        d.add_all(&[(0, k("a")), (0, k("b"))], 5).unwrap();
        d.add_all(&[(1, k("c"))], 9).unwrap();
        assert_eq!(d.since_ms(), Some(5), "the oldest deferral is kept");
        assert_eq!(d.pending_keys().unwrap().len(), 3);
        d.replace(vec![(0, k("b"))]).unwrap();
        assert_eq!(d.len(), 1);
        d.clear().unwrap();
        assert!(d.is_empty());
        assert_eq!(d.since_ms(), None);
        assert!(!dir.path().join("s.deferred").exists());
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.deferred"), b"garbage!").unwrap();
        let e = Deferred::open(dir.path(), "x").err().unwrap();
        assert!(e.to_string().contains("x.deferred"), "{e}");
    }
}
