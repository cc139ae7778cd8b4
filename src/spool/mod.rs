//! The spool: a FIFO between a source's link and its apply thread that never makes the link
//! wait. Records stay in memory up to a budget; beyond it they go to segment files under the
//! state directory, and the reader drains the files before it returns to memory, so order
//! holds. A master therefore never sees its replica stop reading (which would cost a full
//! resync at its output-buffer limit), and memory stays bounded whatever the target's speed.
//!
//! The hand-off between the two ends of a source: `relay` connects the link to
//! [`Spool::push`]; the pipeline's per-source loop pops records and reads the snapshot through
//! [`SpoolRdbReader`]. Owns: the spool files under the state directory. May not touch: the
//! source, the pipeline, the target (it imports nothing of the crate).

pub mod rdb_reader;

pub use rdb_reader::SpoolRdbReader;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

/// What travels through the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpoolRecord {
    FullResync { replid: String, offset: Option<u64> },
    PartialResync { replid: String, offset: u64 },
    RdbData(Bytes),
    RdbEnd,
    StreamData(Bytes),
}

impl SpoolRecord {
    fn size(&self) -> usize {
        match self {
            SpoolRecord::RdbData(b) | SpoolRecord::StreamData(b) => b.len() + 16,
            _ => 64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {dir}: {what}: {source}")]
    Io {
        dir: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("spool {dir} is full ({bytes} bytes on disk, limit {limit}): the target is too slow for this source; raise --spool-max-bytes or speed up the target")]
    Full { dir: String, bytes: u64, limit: u64 },
    #[error("spool {dir}: corrupt record on disk")]
    Corrupt { dir: String },
}

/// Sizes of a spool.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub memory_bytes: usize,
    pub segment_bytes: u64,
    pub max_disk_bytes: u64,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            memory_bytes: 4 << 20,
            segment_bytes: 64 << 20,
            max_disk_bytes: 16 << 30,
        }
    }
}

struct Inner {
    mem: VecDeque<SpoolRecord>,
    mem_bytes: usize,
    /// Segment files in order: the reader is in the first, the writer appends to the last.
    segments: VecDeque<Segment>,
    writer: Option<BufWriter<File>>,
    reader: Option<BufReader<File>>,
    next_segment: u64,
    closed: bool,
}

struct Segment {
    path: PathBuf,
    written: u64,
    read: u64,
    sealed: bool,
}

/// A spool for one source.
pub struct Spool {
    dir: PathBuf,
    opts: SpoolOptions,
    inner: Mutex<Inner>,
    ready: Condvar,
    /// Bytes currently on disk, unread (for metrics and the cap).
    pub disk_bytes: AtomicU64,
    /// Bytes currently held in memory.
    pub memory_bytes: AtomicU64,
}

impl Spool {
    /// A spool whose files live in `dir` (created; stale segments from an earlier run are
    /// removed: after a restart the stream is asked again from the checkpoint).
    pub fn new(dir: &Path, opts: SpoolOptions) -> Result<Arc<Spool>, SpoolError> {
        let io = |what, source| SpoolError::Io {
            dir: dir.display().to_string(),
            what,
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io("create directory", e))?;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".spool") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Arc::new(Spool {
            dir: dir.to_path_buf(),
            opts,
            inner: Mutex::new(Inner {
                mem: VecDeque::new(),
                mem_bytes: 0,
                segments: VecDeque::new(),
                writer: None,
                reader: None,
                next_segment: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            disk_bytes: AtomicU64::new(0),
            memory_bytes: AtomicU64::new(0),
        }))
    }

    fn io_err(&self, what: &'static str, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            dir: self.dir.display().to_string(),
            what,
            source,
        }
    }

    /// Append a record. Never waits for the reader.
    pub fn push(&self, rec: SpoolRecord) -> Result<(), SpoolError> {
        let size = rec.size();
        let mut g = self.inner.lock();
        if g.segments.is_empty() && g.mem_bytes + size <= self.opts.memory_bytes {
            g.mem_bytes += size;
            g.mem.push_back(rec);
            self.memory_bytes
                .store(g.mem_bytes as u64, Ordering::Relaxed);
        } else {
            self.push_disk(&mut g, &rec)?;
        }
        drop(g);
        self.ready.notify_one();
        Ok(())
    }

    fn push_disk(&self, g: &mut Inner, rec: &SpoolRecord) -> Result<(), SpoolError> {
        let on_disk = self.disk_bytes.load(Ordering::Relaxed);
        if on_disk > self.opts.max_disk_bytes {
            return Err(SpoolError::Full {
                dir: self.dir.display().to_string(),
                bytes: on_disk,
                limit: self.opts.max_disk_bytes,
            });
        }
        let need_new = match g.segments.back() {
            None => true,
            Some(s) => s.written >= self.opts.segment_bytes,
        };
        if need_new {
            if let Some(w) = g.writer.as_mut() {
                w.flush().map_err(|e| self.io_err("flush segment", e))?;
            }
            if let Some(s) = g.segments.back_mut() {
                s.sealed = true;
            }
            let path = self.dir.join(format!("{:08}.spool", g.next_segment));
            g.next_segment += 1;
            let f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| self.io_err("create segment", e))?;
            g.writer = Some(BufWriter::with_capacity(1 << 20, f));
            g.segments.push_back(Segment {
                path,
                written: 0,
                read: 0,
                sealed: false,
            });
        }
        let (tag, body): (u8, Vec<u8>) = encode(rec);
        let w = g.writer.as_mut().expect("segment writer exists");
        let mut header = [0u8; 5];
        header[0] = tag;
        header[1..5].copy_from_slice(&(body.len() as u32).to_le_bytes());
        w.write_all(&header)
            .and_then(|_| w.write_all(&body))
            .map_err(|e| self.io_err("write segment", e))?;
        let n = 5 + body.len() as u64;
        if let Some(s) = g.segments.back_mut() {
            s.written += n;
        }
        self.disk_bytes.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// No more records will come; the reader gets `None` once it has drained the spool.
    pub fn close(&self) {
        self.inner.lock().closed = true;
        self.ready.notify_all();
    }

    /// The next record, waiting up to `timeout`. `Ok(None)` on timeout or when closed and
    /// drained (see [`Spool::is_finished`]).
    pub fn pop(&self, timeout: Duration) -> Result<Option<SpoolRecord>, SpoolError> {
        let mut g = self.inner.lock();
        loop {
            if let Some(rec) = g.mem.pop_front() {
                g.mem_bytes -= rec.size();
                self.memory_bytes
                    .store(g.mem_bytes as u64, Ordering::Relaxed);
                return Ok(Some(rec));
            }
            if !g.segments.is_empty() {
                if let Some(rec) = self.pop_disk(&mut g)? {
                    return Ok(Some(rec));
                }
            }
            if g.closed {
                return Ok(None);
            }
            if self.ready.wait_for(&mut g, timeout).timed_out() {
                if let Some(rec) = g.mem.pop_front() {
                    g.mem_bytes -= rec.size();
                    self.memory_bytes
                        .store(g.mem_bytes as u64, Ordering::Relaxed);
                    return Ok(Some(rec));
                }
                return Ok(None);
            }
        }
    }

    /// Read the next record from the oldest segment; `None` when the segments are drained
    /// (then they are removed and new records go to memory again).
    fn pop_disk(&self, g: &mut Inner) -> Result<Option<SpoolRecord>, SpoolError> {
        loop {
            let Some(front) = g.segments.front() else {
                return Ok(None);
            };
            if front.read < front.written {
                if g.reader.is_none() {
                    let f = File::open(&front.path).map_err(|e| self.io_err("open segment", e))?;
                    let mut r = BufReader::with_capacity(1 << 20, f);
                    if front.read > 0 {
                        std::io::copy(&mut (&mut r).take(front.read), &mut std::io::sink())
                            .map_err(|e| self.io_err("seek segment", e))?;
                    }
                    g.reader = Some(r);
                }
                // The writer may still buffer this segment's tail.
                if !front.sealed {
                    if let Some(w) = g.writer.as_mut() {
                        w.flush().map_err(|e| self.io_err("flush segment", e))?;
                    }
                }
                let r = g.reader.as_mut().expect("reader opened above");
                let mut header = [0u8; 5];
                r.read_exact(&mut header)
                    .map_err(|e| self.io_err("read segment", e))?;
                let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
                let mut body = vec![0u8; len];
                r.read_exact(&mut body)
                    .map_err(|e| self.io_err("read segment", e))?;
                let n = 5 + len as u64;
                if let Some(s) = g.segments.front_mut() {
                    s.read += n;
                }
                self.disk_bytes.fetch_sub(n, Ordering::Relaxed);
                let rec = decode(header[0], body).ok_or_else(|| SpoolError::Corrupt {
                    dir: self.dir.display().to_string(),
                })?;
                return Ok(Some(rec));
            }
            // This segment is fully read.
            let done = g.segments.pop_front().expect("front exists");
            g.reader = None;
            if g.segments.is_empty() {
                g.writer = None;
            }
            let _ = std::fs::remove_file(&done.path);
            if g.segments.is_empty() {
                return Ok(None);
            }
        }
    }

    /// Closed and nothing left.
    pub fn is_finished(&self) -> bool {
        let g = self.inner.lock();
        g.closed && g.mem.is_empty() && g.segments.is_empty()
    }

    /// Nothing buffered right now.
    pub fn is_empty(&self) -> bool {
        let g = self.inner.lock();
        g.mem.is_empty() && g.segments.iter().all(|s| s.read >= s.written)
    }
}

fn encode(rec: &SpoolRecord) -> (u8, Vec<u8>) {
    match rec {
        SpoolRecord::FullResync { replid, offset } => {
            let mut b = offset
                .map(|o| o as i64)
                .unwrap_or(-1)
                .to_le_bytes()
                .to_vec();
            b.extend_from_slice(replid.as_bytes());
            (1, b)
        }
        SpoolRecord::PartialResync { replid, offset } => {
            let mut b = offset.to_le_bytes().to_vec();
            b.extend_from_slice(replid.as_bytes());
            (2, b)
        }
        SpoolRecord::RdbData(d) => (3, d.to_vec()),
        SpoolRecord::RdbEnd => (4, Vec::new()),
        SpoolRecord::StreamData(d) => (5, d.to_vec()),
    }
}

fn decode(tag: u8, body: Vec<u8>) -> Option<SpoolRecord> {
    let head = |b: &[u8]| -> Option<(i64, String)> {
        let n = i64::from_le_bytes(b.get(..8)?.try_into().ok()?);
        Some((n, String::from_utf8(b.get(8..)?.to_vec()).ok()?))
    };
    Some(match tag {
        1 => {
            let (n, replid) = head(&body)?;
            SpoolRecord::FullResync {
                replid,
                offset: (n >= 0).then_some(n as u64),
            }
        }
        2 => {
            let (n, replid) = head(&body)?;
            SpoolRecord::PartialResync {
                replid,
                offset: n as u64,
            }
        }
        3 => SpoolRecord::RdbData(Bytes::from(body)),
        4 => SpoolRecord::RdbEnd,
        5 => SpoolRecord::StreamData(Bytes::from(body)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_holds_across_memory_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(
            dir.path(),
            SpoolOptions {
                memory_bytes: 1000,
                segment_bytes: 3000,
                max_disk_bytes: 1 << 30,
            },
        )
        .unwrap();
        let mut expect = Vec::new();
        let mut got = Vec::new();
        let mut n = 0u32;
        // Interleave pushes and pops so that the spool goes to disk and comes back.
        for round in 0..20 {
            for _ in 0..(if round % 3 == 0 { 50 } else { 5 }) {
                let rec = if n.is_multiple_of(7) {
                    SpoolRecord::FullResync {
                        replid: format!("id{n}"),
                        offset: Some(n as u64),
                    }
                } else {
                    SpoolRecord::StreamData(Bytes::from(vec![n as u8; (n % 300) as usize]))
                };
                expect.push(rec.clone());
                spool.push(rec).unwrap();
                n += 1;
            }
            for _ in 0..20 {
                if let Some(r) = spool.pop(Duration::from_millis(1)).unwrap() {
                    got.push(r);
                }
            }
        }
        spool.close();
        while let Some(r) = spool.pop(Duration::from_millis(1)).unwrap() {
            got.push(r);
        }
        assert_eq!(got, expect);
        assert!(spool.is_finished());
        assert_eq!(spool.disk_bytes.load(Ordering::Relaxed), 0);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "segments removed once read");
    }

    #[test]
    fn cap_is_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(
            dir.path(),
            SpoolOptions {
                memory_bytes: 0,
                segment_bytes: 100,
                max_disk_bytes: 1000,
            },
        )
        .unwrap();
        let mut err = None;
        for _ in 0..100 {
            if let Err(e) = spool.push(SpoolRecord::StreamData(Bytes::from(vec![0u8; 100]))) {
                err = Some(e);
                break;
            }
        }
        assert!(matches!(err, Some(SpoolError::Full { .. })), "{err:?}");
    }
}
