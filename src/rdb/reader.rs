//! The byte source of the parser: a buffered reader that counts, checksums and (on demand)
//! records what it consumes, and never asks the underlying reader for bytes that are not
//! certainly part of the RDB.
//!
//! Why "never over-read": during a full sync the RDB arrives on the same socket as the command
//! stream that follows it. A plain `BufReader` would swallow the first commands. Instead the
//! parser tells the reader how many bytes are *certain* to follow (from the structure it has
//! decoded so far, plus the EOF opcode and CRC64 trailer that close every RDB), and refills only
//! read up to that bound. Big blobs therefore arrive in one read, and small keys in a few.

use super::crc::Crc64;
use super::error::RdbError;
use super::lzf;
use bytes::{Bytes, BytesMut};
use std::io::Read;

const BUF_SIZE: usize = 64 * 1024;

/// Small strings are copied into a shared arena of this size and handed out as slices of it,
/// instead of one allocation per string (hashtable-encoded sets, hashes and zsets are made of
/// millions of small strings).
const ARENA_SIZE: usize = 64 * 1024;
/// Strings up to this size go to the arena.
const ARENA_MAX: usize = 512;

/// A decoded RDB length: a plain length, or the special-encoding selector of a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Len {
    Plain(u64),
    Encoded(u8),
}

/// Header of a string value, decoded before its body so that big strings can be streamed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StrHeader {
    /// `len` raw bytes follow.
    Raw(u64),
    /// An integer-encoded string (its decimal text is the value).
    Int(i64),
    /// LZF: `clen` compressed bytes follow, decompressing to `ulen` bytes.
    Lzf { clen: u64, ulen: u64 },
}

/// Counting, checksumming, recording buffered reader (see the module docs).
pub(crate) struct RdbReader<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// Absolute offset of `buf[0]`.
    base: u64,
    /// Absolute offset up to which bytes are known to exist (safe to read ahead to).
    guaranteed_end: u64,
    /// Bytes that always follow whatever is being parsed (EOF opcode + CRC64 trailer).
    pub(crate) tail: u64,
    crc: Option<Crc64>,
    crc_from: usize,
    rec: Option<Vec<u8>>,
    rec_from: usize,
    /// Bytes consumed before the recording started that begin it (the object type byte).
    rec_seed: ([u8; 1], usize),
    arena: BytesMut,
    /// Read as much as the buffer takes, not only the guaranteed bytes (bounded input).
    pub(crate) read_ahead: bool,
}

impl<R: Read> RdbReader<R> {
    pub(crate) fn new(inner: R, checksum: bool) -> Self {
        RdbReader {
            inner,
            buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
            pos: 0,
            end: 0,
            base: 0,
            guaranteed_end: 0,
            tail: 1,
            crc: if checksum { Some(Crc64::new()) } else { None },
            crc_from: 0,
            rec: None,
            rec_from: 0,
            rec_seed: ([0], 0),
            arena: BytesMut::new(),
            read_ahead: false,
        }
    }

    /// A reader whose input starts at offset `offset` of a file (positions and error offsets
    /// are then absolute).
    pub(crate) fn at_offset(mut self, offset: u64) -> Self {
        self.base = offset;
        self.guaranteed_end = offset;
        self
    }

    /// Bytes consumed so far.
    #[inline]
    pub(crate) fn position(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Declare that at least `n` more bytes (plus the tail) certainly belong to the RDB.
    #[inline]
    pub(crate) fn expect(&mut self, n: u64) {
        let e = self.position().saturating_add(n).saturating_add(self.tail);
        if e > self.guaranteed_end {
            self.guaranteed_end = e;
        }
    }

    /// Bring the checksum and the recording up to the current position.
    fn sync(&mut self) {
        if self.crc_from < self.pos {
            if let Some(d) = self.crc.as_mut() {
                d.update(&self.buf[self.crc_from..self.pos]);
            }
            self.crc_from = self.pos;
        }
        if self.rec_from < self.pos {
            if let Some(r) = self.rec.as_mut() {
                record(r, self.rec_seed, &self.buf[self.rec_from..self.pos]);
            }
            self.rec_from = self.pos;
        }
    }

    /// Make sure `need` (<= BUF_SIZE) bytes are buffered.
    #[cold]
    fn fill(&mut self, need: usize) -> Result<(), RdbError> {
        self.sync();
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.base += self.pos as u64;
            self.end -= self.pos;
            self.pos = 0;
            self.crc_from = 0;
            self.rec_from = 0;
        }
        while self.end < need {
            let ahead = if self.read_ahead {
                BUF_SIZE as u64
            } else {
                self.guaranteed_end.saturating_sub(self.base)
            };
            let want = (ahead.min(BUF_SIZE as u64) as usize).max(need);
            match self.inner.read(&mut self.buf[self.end..want]) {
                Ok(0) => return Err(RdbError::eof(self.base + self.end as u64)),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RdbError::io(self.base + self.end as u64, e)),
            }
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, RdbError> {
        if self.pos >= self.end {
            self.fill(1)?;
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(b)
    }

    /// Read exactly N (small) bytes.
    #[inline]
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], RdbError> {
        if self.end - self.pos < N {
            self.fill(N)?;
        }
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(a)
    }

    /// Fill `dst` completely, going around the buffer for big reads.
    pub(crate) fn read_into(&mut self, dst: &mut [u8]) -> Result<(), RdbError> {
        let avail = self.end - self.pos;
        if dst.len() <= avail {
            dst.copy_from_slice(&self.buf[self.pos..self.pos + dst.len()]);
            self.pos += dst.len();
            return Ok(());
        }
        if dst.len() <= BUF_SIZE / 2 {
            self.fill(dst.len())?;
            dst.copy_from_slice(&self.buf[self.pos..self.pos + dst.len()]);
            self.pos += dst.len();
            return Ok(());
        }
        // Big read: drain the buffer, then read straight into the destination.
        dst[..avail].copy_from_slice(&self.buf[self.pos..self.end]);
        self.pos = self.end;
        self.sync();
        self.base += self.end as u64;
        self.pos = 0;
        self.end = 0;
        self.crc_from = 0;
        self.rec_from = 0;
        let mut done = avail;
        while done < dst.len() {
            match self.inner.read(&mut dst[done..]) {
                Ok(0) => return Err(RdbError::eof(self.base)),
                Ok(n) => {
                    done += n;
                    self.base += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RdbError::io(self.base, e)),
            }
        }
        let direct = &dst[avail..];
        if let Some(d) = self.crc.as_mut() {
            d.update(direct);
        }
        if let Some(r) = self.rec.as_mut() {
            record(r, self.rec_seed, direct);
        }
        Ok(())
    }

    /// Read `n` bytes (from a file-controlled length) into a new buffer. Memory grows only as
    /// bytes actually arrive, so a corrupt huge length fails with EOF instead of an allocation.
    pub(crate) fn bytes(&mut self, n: u64) -> Result<Bytes, RdbError> {
        self.expect(n);
        if n <= BUF_SIZE as u64 {
            let n = n as usize;
            if self.end - self.pos < n {
                // Only the guaranteed bytes were read ahead: bring the rest of this string into
                // the buffer (one read), rather than a zeroed Vec per string.
                self.fill(n)?;
            }
            let src = &self.buf[self.pos..self.pos + n];
            let b = if n == 0 {
                Bytes::new()
            } else if n <= ARENA_MAX {
                if self.arena.capacity() - self.arena.len() < n {
                    self.arena = BytesMut::with_capacity(ARENA_SIZE);
                }
                self.arena.extend_from_slice(src);
                self.arena.split().freeze()
            } else {
                Bytes::copy_from_slice(src)
            };
            self.pos += n;
            return Ok(b);
        }
        let n = usize::try_from(n)
            .map_err(|_| RdbError::corrupt(self.position(), "length does not fit in memory"))?;
        const STEP: usize = 16 << 20;
        let mut v: Vec<u8> = Vec::new();
        while v.len() < n {
            let step = (n - v.len()).min(STEP.max(v.len()));
            let old = v.len();
            v.resize(old + step, 0);
            self.read_into(&mut v[old..])?;
        }
        Ok(Bytes::from(v))
    }

    /// Skip `n` bytes without copying them out (still checksummed and recorded).
    #[inline]
    pub(crate) fn skip(&mut self, n: u64) -> Result<(), RdbError> {
        if (self.end - self.pos) as u64 >= n {
            self.pos += n as usize;
            return Ok(());
        }
        self.skip_across(n)
    }

    #[cold]
    fn skip_across(&mut self, n: u64) -> Result<(), RdbError> {
        self.expect(n);
        let mut left = n;
        loop {
            let k = ((self.end - self.pos) as u64).min(left);
            self.pos += k as usize;
            left -= k;
            if left == 0 {
                return Ok(());
            }
            self.fill(1)?;
        }
    }

    pub(crate) fn len(&mut self) -> Result<Len, RdbError> {
        let b = self.u8()?;
        match b >> 6 {
            0 => Ok(Len::Plain(u64::from(b & 0x3f))),
            1 => {
                let b2 = self.u8()?;
                Ok(Len::Plain((u64::from(b & 0x3f) << 8) | u64::from(b2)))
            }
            2 => match b {
                0x80 => Ok(Len::Plain(u64::from(u32::from_be_bytes(
                    self.array::<4>()?,
                )))),
                0x81 => Ok(Len::Plain(u64::from_be_bytes(self.array::<8>()?))),
                _ => Err(RdbError::corrupt(
                    self.position() - 1,
                    format!("invalid length encoding byte 0x{b:02x}"),
                )),
            },
            _ => Ok(Len::Encoded(b & 0x3f)),
        }
    }

    /// A plain length (an encoded-string selector here is corruption).
    pub(crate) fn plain_len(&mut self) -> Result<u64, RdbError> {
        match self.len()? {
            Len::Plain(n) => Ok(n),
            Len::Encoded(e) => Err(RdbError::corrupt(
                self.position() - 1,
                format!("expected a length, found string encoding {e}"),
            )),
        }
    }

    /// A collection element count; also tells the read-ahead that at least `count * min_each`
    /// bytes follow.
    pub(crate) fn count(&mut self, min_each: u64) -> Result<u64, RdbError> {
        let n = self.plain_len()?;
        self.expect(n.saturating_mul(min_each));
        Ok(n)
    }

    pub(crate) fn str_header(&mut self) -> Result<StrHeader, RdbError> {
        match self.len()? {
            Len::Plain(n) => Ok(StrHeader::Raw(n)),
            Len::Encoded(0) => Ok(StrHeader::Int(i64::from(self.u8()? as i8))),
            Len::Encoded(1) => Ok(StrHeader::Int(i64::from(i16::from_le_bytes(self.array()?)))),
            Len::Encoded(2) => Ok(StrHeader::Int(i64::from(i32::from_le_bytes(self.array()?)))),
            Len::Encoded(3) => {
                let clen = self.plain_len()?;
                let ulen = self.plain_len()?;
                Ok(StrHeader::Lzf { clen, ulen })
            }
            Len::Encoded(e) => Err(RdbError::corrupt(
                self.position() - 1,
                format!("unknown string encoding {e}"),
            )),
        }
    }

    /// A whole string (any encoding).
    pub(crate) fn string(&mut self) -> Result<Bytes, RdbError> {
        let h = self.str_header()?;
        self.string_body(h)
    }

    pub(crate) fn string_body(&mut self, h: StrHeader) -> Result<Bytes, RdbError> {
        match h {
            StrHeader::Raw(n) => self.bytes(n),
            StrHeader::Int(v) => Ok(int_bytes(v)),
            StrHeader::Lzf { clen, ulen } => {
                let at = self.position();
                let comp = self.bytes(clen)?;
                let out = lzf::decompress(&comp, ulen).map_err(|e| RdbError::encoding(at, e))?;
                Ok(Bytes::from(out))
            }
        }
    }

    /// Skip a string of any encoding (used for parts nobody needs, still checksummed).
    pub(crate) fn skip_string(&mut self) -> Result<(), RdbError> {
        match self.str_header()? {
            StrHeader::Raw(n) => self.skip(n),
            StrHeader::Int(_) => Ok(()),
            StrHeader::Lzf { clen, .. } => self.skip(clen),
        }
    }

    /// Little-endian 64-bit millisecond time (EXPIRETIME_MS, stream times).
    pub(crate) fn millis(&mut self) -> Result<u64, RdbError> {
        Ok(u64::from_le_bytes(self.array::<8>()?))
    }

    /// Start recording consumed bytes (for `raw`), seeded with (at most one) byte already
    /// consumed. Nothing is allocated yet: a value that ends inside the buffer is copied once,
    /// at its exact size, by [`Self::take_record`].
    pub(crate) fn start_record(&mut self, seed: &[u8]) {
        self.sync();
        let mut s = [0u8; 1];
        let n = seed.len().min(1);
        s[..n].copy_from_slice(&seed[..n]);
        debug_assert_eq!(n, seed.len(), "a record seed is at most one byte");
        self.rec_seed = (s, n);
        self.rec = Some(Vec::new());
        self.rec_from = self.pos;
    }

    /// A copy of what was recorded so far (the recording goes on).
    pub(crate) fn recorded(&mut self) -> Option<Vec<u8>> {
        self.sync();
        let (seed, n) = self.rec_seed;
        self.rec.as_ref().map(|r| {
            if r.is_empty() {
                seed[..n].to_vec()
            } else {
                r.clone()
            }
        })
    }

    pub(crate) fn stop_record(&mut self) {
        self.rec = None;
    }

    pub(crate) fn take_record(&mut self) -> Option<Bytes> {
        let mut r = self.rec.take()?;
        let tail = &self.buf[self.rec_from..self.pos];
        if r.is_empty() {
            let (seed, n) = self.rec_seed;
            r = Vec::with_capacity(n + tail.len());
            r.extend_from_slice(&seed[..n]);
        }
        r.extend_from_slice(tail);
        self.rec_from = self.pos;
        Some(Bytes::from(r))
    }

    /// The CRC64 of everything consumed so far (None when checksumming is off).
    pub(crate) fn checksum_so_far(&mut self) -> Option<u64> {
        self.sync();
        self.crc.as_ref().map(|d| d.value())
    }

    /// Stop checksumming (after the EOF opcode the trailer itself is not part of it).
    pub(crate) fn disable_checksum(&mut self) {
        self.sync();
        self.crc = None;
    }

    /// Unconsumed buffered bytes (after the RDB: non-empty only with `read_ahead` on an input
    /// that goes on past the RDB; without it the parser never requests such bytes).
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    #[cfg(test)]
    pub(crate) fn get_ref(&self) -> &R {
        &self.inner
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }
}

/// Decode a string header at the start of `b` without a reader (for serialized values held in
/// memory): the header and its length in bytes, or `None` when `b` is too short or invalid.
pub(crate) fn str_header_of(b: &[u8]) -> Option<(StrHeader, usize)> {
    let first = *b.first()?;
    let plain = |b: &[u8]| -> Option<(u64, usize)> {
        let x = *b.first()?;
        match x >> 6 {
            0 => Some((u64::from(x & 0x3f), 1)),
            1 => Some(((u64::from(x & 0x3f) << 8) | u64::from(*b.get(1)?), 2)),
            2 if x == 0x80 => Some((
                u64::from(u32::from_be_bytes(b.get(1..5)?.try_into().ok()?)),
                5,
            )),
            2 if x == 0x81 => Some((u64::from_be_bytes(b.get(1..9)?.try_into().ok()?), 9)),
            _ => None,
        }
    };
    if first >> 6 != 3 {
        let (n, used) = plain(b)?;
        return Some((StrHeader::Raw(n), used));
    }
    match first & 0x3f {
        0 => Some((StrHeader::Int(i64::from(*b.get(1)? as i8)), 2)),
        1 => Some((
            StrHeader::Int(i64::from(i16::from_le_bytes(b.get(1..3)?.try_into().ok()?))),
            3,
        )),
        2 => Some((
            StrHeader::Int(i64::from(i32::from_le_bytes(b.get(1..5)?.try_into().ok()?))),
            5,
        )),
        3 => {
            let (clen, u1) = plain(b.get(1..)?)?;
            let (ulen, u2) = plain(b.get(1 + u1..)?)?;
            Some((StrHeader::Lzf { clen, ulen }, 1 + u1 + u2))
        }
        _ => None,
    }
}

/// Append `bytes` to a recording, starting it with its seed.
fn record(rec: &mut Vec<u8>, (seed, n): ([u8; 1], usize), bytes: &[u8]) {
    if rec.is_empty() {
        rec.reserve(n + bytes.len());
        rec.extend_from_slice(&seed[..n]);
    }
    rec.extend_from_slice(bytes);
}

/// Decimal text of an integer-encoded value as a byte string.
pub(crate) fn int_bytes(v: i64) -> Bytes {
    if (0..SMALL_INTS as i64).contains(&v) {
        return small_ints()[v as usize].clone();
    }
    let mut buf = [0u8; 20];
    let s = fmt_i64(v, &mut buf);
    Bytes::copy_from_slice(s)
}

/// Format an i64 into `buf` without allocating; returns the used tail.
pub(crate) fn fmt_i64(v: i64, buf: &mut [u8; 20]) -> &[u8] {
    let neg = v < 0;
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// Integers below this are shared static strings (no allocation per compact-encoded element).
const SMALL_INTS: usize = 10_000;

fn small_ints() -> &'static [Bytes] {
    static TABLE: std::sync::OnceLock<Box<[Bytes]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let text: &'static mut String = Box::leak(Box::new(String::new()));
        let mut ends = Vec::with_capacity(SMALL_INTS);
        for i in 0..SMALL_INTS {
            text.push_str(&i.to_string());
            ends.push(text.len());
        }
        let text: &'static str = text;
        let mut start = 0;
        ends.into_iter()
            .map(|e| {
                let b = Bytes::from_static(&text.as_bytes()[start..e]);
                start = e;
                b
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fmt_ints() {
        let mut b = [0u8; 20];
        assert_eq!(fmt_i64(0, &mut b), b"0");
        assert_eq!(fmt_i64(-123, &mut b), b"-123");
        assert_eq!(fmt_i64(i64::MIN, &mut b), b"-9223372036854775808");
        assert_eq!(fmt_i64(i64::MAX, &mut b), b"9223372036854775807");
    }

    #[test]
    fn never_reads_past_guarantee() {
        // A reader that panics if asked for more than 3 bytes in total.
        struct Strict(Vec<u8>, usize);
        impl Read for Strict {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                let n = b.len().min(self.0.len() - self.1);
                b[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let mut r = RdbReader::new(Strict(vec![1, 2, 3, 4, 5], 0), false);
        r.tail = 0;
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.array::<2>().unwrap(), [2, 3]);
        assert_eq!(r.get_ref().1, 3);
    }
}
