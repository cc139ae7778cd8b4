//! A small RDB *writer* and a synthetic dataset generator, for benchmarks and for memory tests
//! of the data path (e.g. a 1 GB RDB holding one 300 MB list). The files it writes are valid
//! RDB version 10 (Redis 7.0) files with a CRC64 trailer, loadable by a real server.

use super::crc::Crc64;
use std::io::{self, Write};

/// Writes RDB structures and maintains the CRC64 as it goes.
pub struct RdbWriter<W: Write> {
    w: W,
    crc: Crc64,
    written: u64,
}

impl<W: Write> RdbWriter<W> {
    /// Start a file: writes the `REDIS00NN` header.
    pub fn new(w: W, version: u32) -> io::Result<Self> {
        let mut s = RdbWriter {
            w,
            crc: Crc64::new(),
            written: 0,
        };
        s.raw(format!("REDIS{version:04}").as_bytes())?;
        Ok(s)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn raw(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc.update(b);
        self.written += b.len() as u64;
        self.w.write_all(b)
    }

    /// Bytes written as they are (an object type byte, a hand-made encoding), CRC included.
    pub fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.raw(b)
    }

    pub fn write_len(&mut self, n: u64) -> io::Result<()> {
        if n < 64 {
            self.raw(&[n as u8])
        } else if n < 16384 {
            self.raw(&[0x40 | (n >> 8) as u8, (n & 0xff) as u8])
        } else if n <= u64::from(u32::MAX) {
            let mut b = [0x80u8; 5];
            b[1..].copy_from_slice(&(n as u32).to_be_bytes());
            self.raw(&b)
        } else {
            let mut b = [0x81u8; 9];
            b[1..].copy_from_slice(&n.to_be_bytes());
            self.raw(&b)
        }
    }

    /// A raw (not int-encoded, not compressed) string.
    pub fn string(&mut self, s: &[u8]) -> io::Result<()> {
        self.write_len(s.len() as u64)?;
        self.raw(s)
    }

    pub fn aux(&mut self, k: &[u8], v: &[u8]) -> io::Result<()> {
        self.raw(&[250])?;
        self.string(k)?;
        self.string(v)
    }

    pub fn select_db(&mut self, db: u64) -> io::Result<()> {
        self.raw(&[254])?;
        self.write_len(db)
    }

    pub fn resize_db(&mut self, size: u64, expires: u64) -> io::Result<()> {
        self.raw(&[251])?;
        self.write_len(size)?;
        self.write_len(expires)
    }

    pub fn expire_ms(&mut self, at: i64) -> io::Result<()> {
        self.raw(&[252])?;
        self.raw(&at.to_le_bytes())
    }

    pub fn key_string(&mut self, key: &[u8], val: &[u8]) -> io::Result<()> {
        self.raw(&[0])?;
        self.string(key)?;
        self.string(val)
    }

    /// A list as quicklist v2 packed nodes (each node a listpack of the given elements).
    pub fn key_list_quicklist2<'a, I>(
        &mut self,
        key: &[u8],
        nodes: I,
        node_count: u64,
    ) -> io::Result<()>
    where
        I: IntoIterator<Item = Vec<&'a [u8]>>,
    {
        self.raw(&[18])?;
        self.string(key)?;
        self.write_len(node_count)?;
        for node in nodes {
            self.write_len(2)?;
            let lp = encode_listpack(&node);
            self.string(&lp)?;
        }
        Ok(())
    }

    /// A set in hashtable form (type 2).
    pub fn key_set(&mut self, key: &[u8], members: &[&[u8]]) -> io::Result<()> {
        self.raw(&[2])?;
        self.string(key)?;
        self.write_len(members.len() as u64)?;
        for m in members {
            self.string(m)?;
        }
        Ok(())
    }

    /// A hash in hashtable form (type 4).
    pub fn key_hash(&mut self, key: &[u8], pairs: &[(&[u8], &[u8])]) -> io::Result<()> {
        self.raw(&[4])?;
        self.string(key)?;
        self.write_len(pairs.len() as u64)?;
        for (f, v) in pairs {
            self.string(f)?;
            self.string(v)?;
        }
        Ok(())
    }

    /// A sorted set with binary scores (type 5, ZSET_2).
    pub fn key_zset2(&mut self, key: &[u8], members: &[(&[u8], f64)]) -> io::Result<()> {
        self.raw(&[5])?;
        self.string(key)?;
        self.write_len(members.len() as u64)?;
        for (m, s) in members {
            self.string(m)?;
            self.raw(&s.to_le_bytes())?;
        }
        Ok(())
    }

    /// Write the EOF opcode and the CRC64 trailer; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.raw(&[255])?;
        let crc = self.crc.value();
        self.w.write_all(&crc.to_le_bytes())?;
        self.written += 8;
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Encode a listpack of string elements (valid for Redis: header, entries with backlen, end).
pub fn encode_listpack(elems: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(7 + elems.iter().map(|e| e.len() + 6).sum::<usize>());
    out.extend_from_slice(&[0; 6]);
    for e in elems {
        let n = e.len();
        let start = out.len();
        if n < 64 {
            out.push(0x80 | n as u8);
        } else if n < 4096 {
            out.push(0xe0 | (n >> 8) as u8);
            out.push((n & 0xff) as u8);
        } else {
            out.push(0xf0);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        out.extend_from_slice(e);
        let l = out.len() - start;
        let bl = if l < 128 {
            1
        } else if l < 16384 {
            2
        } else if l < 2_097_152 {
            3
        } else if l < 268_435_456 {
            4
        } else {
            5
        };
        for i in 0..bl {
            let g = ((l >> (7 * (bl - 1 - i))) & 127) as u8;
            out.push(if i == 0 { g } else { g | 128 });
        }
    }
    out.push(0xff);
    let total = out.len() as u32;
    out[..4].copy_from_slice(&total.to_le_bytes());
    let count = elems.len().min(65535) as u16;
    out[4..6].copy_from_slice(&count.to_le_bytes());
    out
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Approximate total payload bytes.
    pub total_bytes: u64,
    /// Approximate payload bytes of the one big list (`big:list`), included in the total.
    pub list_bytes: u64,
    /// Bytes per list element.
    pub list_elem_bytes: usize,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            total_bytes: 200 << 20,
            list_bytes: 50 << 20,
            list_elem_bytes: 100,
        }
    }
}

/// What was generated (for the caller's checks, e.g. `DBSIZE` and `LLEN`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenStats {
    pub keys: u64,
    pub list_len: u64,
    pub bytes: u64,
}

/// Deterministic filler bytes (xorshift), printable so values are easy to eyeball.
struct Filler(u64);

impl Filler {
    fn fill(&mut self, out: &mut Vec<u8>, n: usize) {
        out.clear();
        while out.len() < n {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            for b in self.0.to_le_bytes() {
                if out.len() < n {
                    out.push(b'a' + b % 26);
                }
            }
        }
    }
}

/// Generate a synthetic RDB (version 10): one big quicklist-2 list of about `list_bytes`, then
/// strings, hashes, sets and sorted sets up to about `total_bytes`.
pub fn generate<W: Write>(out: W, opts: &GenOptions) -> io::Result<GenStats> {
    let mut w = RdbWriter::new(out, 10)?;
    w.aux(b"redis-ver", b"7.0.15")?;
    w.aux(b"redis-bits", b"64")?;
    w.aux(b"ctime", b"1700000000")?;
    w.select_db(0)?;
    let mut f = Filler(0x9e37_79b9_7f4a_7c15);
    let mut stats = GenStats::default();
    write_big_list(&mut w, &mut f, opts, &mut stats)?;

    // The rest: a rotation of strings, hashes, sets and zsets.
    let mut buf = Vec::new();
    let mut k: u64 = 0;
    while w.written() < opts.total_bytes {
        write_rotation_key(&mut w, &mut f, &mut buf, k)?;
        k += 1;
        stats.keys += 1;
    }
    stats.bytes = w.written() + 9;
    let mut out = w.finish()?;
    out.flush()?;
    Ok(stats)
}

/// The big list, in ~8 KB packed nodes (Redis' default list-max-listpack-size -2).
fn write_big_list<W: Write>(
    w: &mut RdbWriter<W>,
    f: &mut Filler,
    opts: &GenOptions,
    stats: &mut GenStats,
) -> io::Result<()> {
    let esz = opts.list_elem_bytes.max(1);
    let list_len = opts.list_bytes / esz as u64;
    if list_len == 0 {
        return Ok(());
    }
    let per_node = (8192 / (esz + 8)).max(1) as u64;
    let nodes = list_len.div_ceil(per_node);
    let mut elem = Vec::new();
    f.fill(&mut elem, esz);
    let mut left = list_len;
    let mut idx: u64 = 0;
    let node_iter = std::iter::from_fn(|| {
        if left == 0 {
            return None;
        }
        let n = left.min(per_node);
        left -= n;
        Some(n)
    });
    // Elements: a shared random body with a unique numeric prefix.
    let mut store: Vec<Vec<u8>> = Vec::new();
    w.raw(&[18])?;
    w.string(b"big:list")?;
    w.write_len(nodes)?;
    for n in node_iter {
        store.clear();
        for _ in 0..n {
            let mut e = format!("{idx:012}:").into_bytes();
            e.extend_from_slice(&elem[..esz.saturating_sub(e.len()).min(elem.len())]);
            store.push(e);
            idx += 1;
        }
        let refs: Vec<&[u8]> = store.iter().map(|e| e.as_slice()).collect();
        w.write_len(2)?;
        w.string(&encode_listpack(&refs))?;
    }
    stats.keys += 1;
    stats.list_len = list_len;
    Ok(())
}

/// Key number `k` of the rotation: a string, a hash, a set or a sorted set.
fn write_rotation_key<W: Write>(
    w: &mut RdbWriter<W>,
    f: &mut Filler,
    buf: &mut Vec<u8>,
    k: u64,
) -> io::Result<()> {
    let key = format!("key:{k}");
    match k % 4 {
        0 => {
            let n = 100 + (k % 900) as usize;
            f.fill(buf, n);
            w.key_string(key.as_bytes(), buf)?;
        }
        1 => {
            let fields: Vec<(Vec<u8>, Vec<u8>)> = (0..100)
                .map(|i| {
                    f.fill(buf, 40);
                    (format!("field:{i}").into_bytes(), buf.clone())
                })
                .collect();
            let refs: Vec<(&[u8], &[u8])> = fields
                .iter()
                .map(|(a, b)| (a.as_slice(), b.as_slice()))
                .collect();
            w.key_hash(key.as_bytes(), &refs)?;
        }
        2 => {
            let members: Vec<Vec<u8>> = (0..100)
                .map(|i| format!("member:{k}:{i}").into_bytes())
                .collect();
            let refs: Vec<&[u8]> = members.iter().map(|m| m.as_slice()).collect();
            w.key_set(key.as_bytes(), &refs)?;
        }
        _ => {
            let members: Vec<(Vec<u8>, f64)> = (0..100)
                .map(|i| (format!("m:{i}").into_bytes(), i as f64 * 1.5 - 20.0))
                .collect();
            let refs: Vec<(&[u8], f64)> = members.iter().map(|(m, s)| (m.as_slice(), *s)).collect();
            w.key_zset2(key.as_bytes(), &refs)?;
        }
    }
    Ok(())
}
