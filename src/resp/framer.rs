//! Incremental framer for the replication command stream.
//!
//! A master sends its replicas the commands it executed, mostly as RESP multibulk arrays
//! (`*<n>\r\n$<len>\r\n<bytes>\r\n...`), but Redis 2.4/2.6 also send some in the *inline* form
//! (`select 0\r\n`, `PING\r\n`), and any master may send a bare `\n` to keep the link alive.
//! Every one of those bytes counts in the replication offset, so the framer hands out each
//! command together with its exact raw bytes: summing `raw.len()` over the frames gives the
//! offset progress, and `raw` can be passed through to a target unchanged.
//!
//! Design points, because this is the hot path of the relay:
//! * Frames are zero-copy: the raw bytes are split off the internal buffer and every argument
//!   is a [`Bytes`] slice of them. The only per-command allocation is the `args` vector.
//! * Parsing is resumable: a partially received array keeps its progress (arguments already
//!   located, pending bulk length), so a 1M-element command received in 16 KiB reads is scanned
//!   once, not once per read.
//! * Limits follow Redis's own (`networking.c`): 64 KiB for an inline request or a count line,
//!   `INT_MAX` arguments per array, and a bulk length capped by `proto-max-bulk-len` (512 MiB by
//!   default; configurable here, since a master may have raised it).
//! * Unlike Redis, the `\r\n` after each bulk string is verified: a master never sends anything
//!   else there, so anything else means the stream is desynchronised and must not be applied.

use bytes::{Bytes, BytesMut};
use std::fmt;

/// Longest inline request or `*<n>`/`$<n>` line Redis accepts (`PROTO_INLINE_MAX_SIZE`).
pub const INLINE_MAX_SIZE: usize = 64 * 1024;
/// Default largest bulk string (`proto-max-bulk-len`, 512 MiB).
pub const DEFAULT_MAX_BULK_LEN: u64 = 512 * 1024 * 1024;
/// Largest argument count Redis accepts in one multibulk request (`INT_MAX`).
pub const DEFAULT_MAX_ARRAY_LEN: u64 = i32::MAX as u64;
/// Arguments preallocated for one array at most: the declared count comes from the network and
/// must not decide how much memory we reserve up front (Redis uses the same bound).
const PREALLOC_ARGS: usize = 1024;

/// Limits enforced while framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramerLimits {
    /// Largest accepted bulk string length, in bytes.
    pub max_bulk_len: u64,
    /// Largest accepted number of elements in one array.
    pub max_array_len: u64,
    /// Longest accepted inline request (and `*`/`$` count line).
    pub max_inline_len: usize,
}

impl Default for FramerLimits {
    fn default() -> Self {
        FramerLimits {
            max_bulk_len: DEFAULT_MAX_BULK_LEN,
            max_array_len: DEFAULT_MAX_ARRAY_LEN,
            max_inline_len: INLINE_MAX_SIZE,
        }
    }
}

/// One command of the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The arguments (command name first). Empty for a bare newline or a `*0`/`*-1` array,
    /// which Redis consumes without executing anything; such frames still count in the offset.
    pub args: Vec<Bytes>,
    /// The exact bytes of the command as received; `raw.len()` is its contribution to the
    /// replication offset.
    pub raw: Bytes,
    /// True when the command came in the inline form (`select 0\r\n`) rather than as an array.
    pub inline: bool,
}

impl Frame {
    /// True when there is nothing to execute (keepalive newline, empty array).
    pub fn is_empty(&self) -> bool {
        self.args.is_empty()
    }

    /// The command name, if any (case as received).
    pub fn name(&self) -> Option<&[u8]> {
        self.args.first().map(|a| a.as_ref())
    }
}

/// What was wrong with the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameErrorKind {
    /// A `*<n>` line whose count is not an integer in range.
    InvalidArrayLen(String),
    /// An array with more elements than allowed.
    ArrayTooLong { len: u64, max: u64 },
    /// A `$<n>` line whose length is not a non-negative integer.
    InvalidBulkLen(String),
    /// A bulk string longer than allowed.
    BulkTooLong { len: u64, max: u64 },
    /// Something else where a `$` bulk header was expected.
    ExpectedBulk { got: u8 },
    /// The two bytes after a bulk string were not `\r\n`.
    MissingCrlf { got: [u8; 2] },
    /// A `\r` not followed by `\n` at the end of a count line.
    BadLineEnd { got: u8 },
    /// A line (inline request or count) longer than the limit without a line end.
    LineTooLong { max: usize },
    /// An inline request with unbalanced quotes.
    UnbalancedQuotes,
}

/// A protocol error, with the stream position (bytes consumed before the bad command).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// Stream bytes successfully framed before the command that failed.
    pub stream_pos: u64,
    pub kind: FrameErrorKind,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replication stream protocol error in the command starting at stream byte {}: ",
            self.stream_pos
        )?;
        match &self.kind {
            FrameErrorKind::InvalidArrayLen(s) => {
                write!(f, "expected an array length after '*', got {s:?}")
            }
            FrameErrorKind::ArrayTooLong { len, max } => {
                write!(f, "array of {len} elements exceeds the limit of {max}")
            }
            FrameErrorKind::InvalidBulkLen(s) => {
                write!(f, "expected a bulk length after '$', got {s:?}")
            }
            FrameErrorKind::BulkTooLong { len, max } => {
                write!(
                    f,
                    "bulk string of {len} bytes exceeds the limit of {max} bytes"
                )
            }
            FrameErrorKind::ExpectedBulk { got } => {
                write!(f, "expected '$', got {:?}", char::from(*got))
            }
            FrameErrorKind::MissingCrlf { got } => write!(
                f,
                "expected \"\\r\\n\" after a bulk string, got {:?}",
                String::from_utf8_lossy(got)
            ),
            FrameErrorKind::BadLineEnd { got } => {
                write!(f, "expected '\\n' after '\\r', got {:?}", char::from(*got))
            }
            FrameErrorKind::LineTooLong { max } => {
                write!(
                    f,
                    "no line end within {max} bytes (inline request or count line)"
                )
            }
            FrameErrorKind::UnbalancedQuotes => write!(f, "unbalanced quotes in inline request"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Result of scanning a `*<n>\r\n` / `$<n>\r\n` line.
enum Line {
    /// Value and position just after the `\n`.
    Int(i64, usize),
    /// The line is not complete yet.
    Incomplete,
    /// Not a valid integer line; carries the offending text.
    Invalid(String),
    /// `\r` followed by something else.
    BadEnd(u8),
}

/// Resumable framer of a replication command stream. See the module documentation.
#[derive(Debug)]
pub struct CommandFramer {
    buf: BytesMut,
    limits: FramerLimits,
    /// Parse position inside `buf` for the command being framed (which starts at `buf[0]`).
    pos: usize,
    /// Inside a multibulk array: arguments still to locate.
    args_left: u64,
    /// True while framing a multibulk array (`args_left` and `bulk_len` are meaningful).
    in_array: bool,
    /// Length of the bulk whose header was parsed but whose bytes are not all here.
    bulk_len: Option<usize>,
    /// Inline request: bytes already searched for `\n` (so the search resumes).
    inline_scanned: usize,
    /// Argument ranges (relative to the command start) located so far; reused across commands.
    ranges: Vec<(usize, usize)>,
    /// Stream bytes framed so far.
    consumed: u64,
    /// A protocol error is final: the stream cannot be resynchronised.
    error: Option<FrameError>,
}

impl Default for CommandFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandFramer {
    /// A framer with Redis's default limits.
    pub fn new() -> Self {
        Self::with_limits(FramerLimits::default())
    }

    pub fn with_limits(limits: FramerLimits) -> Self {
        CommandFramer {
            buf: BytesMut::with_capacity(64 * 1024),
            limits,
            pos: 0,
            args_left: 0,
            in_array: false,
            bulk_len: None,
            inline_scanned: 0,
            ranges: Vec::new(),
            consumed: 0,
            error: None,
        }
    }

    /// Appends received stream bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Direct access to the input buffer, to read into it without an intermediate copy
    /// (for example with `AsyncReadExt::read_buf`). Only append to it.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet returned in a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Stream bytes returned in frames so far (sum of `raw.len()`).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Returns the next complete command, `Ok(None)` when more data is needed, or the protocol
    /// error that makes the rest of the stream unusable (sticky: returned again on later calls).
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let r = if self.in_array {
            self.continue_array()
        } else {
            self.start_command()
        };
        match r {
            Ok(f) => Ok(f),
            Err(kind) => {
                let e = FrameError {
                    stream_pos: self.consumed,
                    kind,
                };
                self.error = Some(e.clone());
                Err(e)
            }
        }
    }

    fn start_command(&mut self) -> Result<Option<Frame>, FrameErrorKind> {
        let Some(&first) = self.buf.first() else {
            return Ok(None);
        };
        if first != b'*' {
            return self.inline_command();
        }
        match scan_int_line(&self.buf, 1, self.limits.max_inline_len) {
            Line::Incomplete => {
                if self.buf.len() > self.limits.max_inline_len {
                    return Err(FrameErrorKind::LineTooLong {
                        max: self.limits.max_inline_len,
                    });
                }
                Ok(None)
            }
            Line::Invalid(s) => Err(FrameErrorKind::InvalidArrayLen(s)),
            Line::BadEnd(b) => Err(FrameErrorKind::BadLineEnd { got: b }),
            Line::Int(n, next) => {
                if n <= 0 {
                    // Redis consumes `*0`/`*-1` and executes nothing.
                    return Ok(Some(self.emit(next, false)));
                }
                let n = n as u64;
                if n > self.limits.max_array_len {
                    return Err(FrameErrorKind::ArrayTooLong {
                        len: n,
                        max: self.limits.max_array_len,
                    });
                }
                self.in_array = true;
                self.args_left = n;
                self.pos = next;
                self.ranges.clear();
                self.ranges.reserve((n as usize).min(PREALLOC_ARGS));
                self.continue_array()
            }
        }
    }

    fn continue_array(&mut self) -> Result<Option<Frame>, FrameErrorKind> {
        while self.args_left > 0 {
            let len = match self.bulk_len {
                Some(len) => len,
                None => {
                    let Some(&b) = self.buf.get(self.pos) else {
                        return Ok(None);
                    };
                    if b != b'$' {
                        return Err(FrameErrorKind::ExpectedBulk { got: b });
                    }
                    match scan_int_line(&self.buf, self.pos + 1, self.limits.max_inline_len) {
                        Line::Incomplete => {
                            if self.buf.len() - self.pos > self.limits.max_inline_len {
                                return Err(FrameErrorKind::LineTooLong {
                                    max: self.limits.max_inline_len,
                                });
                            }
                            return Ok(None);
                        }
                        Line::Invalid(s) => return Err(FrameErrorKind::InvalidBulkLen(s)),
                        Line::BadEnd(b) => return Err(FrameErrorKind::BadLineEnd { got: b }),
                        Line::Int(l, next) => {
                            if l < 0 {
                                return Err(FrameErrorKind::InvalidBulkLen(l.to_string()));
                            }
                            if l as u64 > self.limits.max_bulk_len {
                                return Err(FrameErrorKind::BulkTooLong {
                                    len: l as u64,
                                    max: self.limits.max_bulk_len,
                                });
                            }
                            let l = l as usize;
                            self.pos = next;
                            self.bulk_len = Some(l);
                            // No up-front reservation of `l` bytes: the length comes from the
                            // network, and the buffer grows (amortised) as the bytes arrive.
                            l
                        }
                    }
                }
            };
            let start = self.pos;
            let end = start + len;
            if self.buf.len() < end + 2 {
                return Ok(None);
            }
            let crlf = [self.buf[end], self.buf[end + 1]];
            if crlf != *b"\r\n" {
                return Err(FrameErrorKind::MissingCrlf { got: crlf });
            }
            self.ranges.push((start, end));
            self.pos = end + 2;
            self.bulk_len = None;
            self.args_left -= 1;
        }
        // Complete.
        let raw_len = self.pos;
        self.in_array = false;
        self.pos = 0;
        let raw = self.buf.split_to(raw_len).freeze();
        self.consumed += raw_len as u64;
        let args = self.ranges.iter().map(|&(s, e)| raw.slice(s..e)).collect();
        if self.ranges.capacity() > 64 * PREALLOC_ARGS {
            // Do not keep the memory of one huge command forever.
            self.ranges = Vec::new();
        }
        Ok(Some(Frame {
            args,
            raw,
            inline: false,
        }))
    }

    /// Inline request, as Redis's `processInlineBuffer`: up to `\n` (an optional `\r` before it
    /// is part of the line end), arguments split like `sdssplitargs`.
    fn inline_command(&mut self) -> Result<Option<Frame>, FrameErrorKind> {
        let from = self.inline_scanned;
        let Some(nl) = self.buf[from..].iter().position(|&b| b == b'\n') else {
            self.inline_scanned = self.buf.len();
            if self.buf.len() > self.limits.max_inline_len {
                return Err(FrameErrorKind::LineTooLong {
                    max: self.limits.max_inline_len,
                });
            }
            return Ok(None);
        };
        let nl = from + nl;
        self.inline_scanned = 0;
        let line_end = if nl > 0 && self.buf[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        let raw = self.buf.split_to(nl + 1).freeze();
        let line = &raw[..line_end];
        let args = if line.iter().any(|&b| b == b'"' || b == b'\'') {
            split_args_quoted(line)
                .ok_or(FrameErrorKind::UnbalancedQuotes)?
                .into_iter()
                .map(Bytes::from)
                .collect()
        } else {
            let mut args = Vec::new();
            let mut i = 0;
            while i < line.len() {
                while i < line.len() && (is_space(line[i]) || line[i] == 0) {
                    i += 1;
                }
                let s = i;
                while i < line.len() && !is_token_end(line[i]) {
                    i += 1;
                }
                if i > s {
                    args.push(raw.slice(s..i));
                }
            }
            args
        };
        self.consumed += raw.len() as u64;
        Ok(Some(Frame {
            args,
            raw,
            inline: true,
        }))
    }

    fn emit(&mut self, len: usize, inline: bool) -> Frame {
        let raw = self.buf.split_to(len).freeze();
        self.consumed += len as u64;
        Frame {
            args: Vec::new(),
            raw,
            inline,
        }
    }
}

/// `isspace` in the C locale, as `sdssplitargs` uses.
#[inline]
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Characters that end an unquoted token in `sdssplitargs`.
#[inline]
fn is_token_end(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0)
}

/// Parses `<integer>\r\n` starting at `start` with Redis's `string2ll` strictness (optional
/// `-`, no `+`, no leading zeros, must fit in an `i64`).
#[inline]
fn scan_int_line(buf: &[u8], start: usize, max_line: usize) -> Line {
    let mut i = start;
    let mut neg = false;
    let mut v: i64 = 0;
    let mut digits = 0usize;
    // `max_line` bounds the scan; overflow is checked per digit.
    let limit = buf.len().min(start.saturating_add(max_line));
    if i < limit && buf[i] == b'-' {
        neg = true;
        i += 1;
    }
    while i < limit {
        let b = buf[i];
        if b.is_ascii_digit() {
            digits += 1;
            if digits == 2 && v == 0 {
                // Leading zero: string2ll rejects it; say so without waiting for the line end.
                return invalid_line(buf, start);
            }
            v = match v
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(b - b'0')))
            {
                Some(v) => v,
                None => return invalid_line(buf, start),
            };
            i += 1;
            continue;
        }
        if b != b'\r' {
            return invalid_line(buf, start);
        }
        // `\r` found: the line must be a valid integer and end with `\n`.
        let Some(&lf) = buf.get(i + 1) else {
            return Line::Incomplete;
        };
        if lf != b'\n' {
            return Line::BadEnd(lf);
        }
        let first = if neg { start + 1 } else { start };
        if digits == 0 || (digits > 1 && buf[first] == b'0') || (neg && v == 0) {
            return invalid_line(buf, start);
        }
        return Line::Int(if neg { -v } else { v }, i + 2);
    }
    Line::Incomplete
}

#[cold]
fn invalid_line(buf: &[u8], start: usize) -> Line {
    let rest = &buf[start..];
    let end = rest
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(rest.len())
        .min(32);
    Line::Invalid(String::from_utf8_lossy(&rest[..end]).into_owned())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits an inline line with quotes the way Redis's `sdssplitargs` does: `"..."` understands
/// `\xHH`, `\n`, `\r`, `\t`, `\b`, `\a` and `\<char>`; `'...'` understands only `\'`; a closing
/// quote must be followed by a space or the end. Returns `None` on unbalanced quotes.
fn split_args_quoted(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        // NUL ends a token too (C strings); skip it like a space so the loop always advances.
        while i < n && (is_space(line[i]) || line[i] == 0) {
            i += 1;
        }
        if i >= n {
            return Some(args);
        }
        args.push(quoted_token(line, &mut i)?);
    }
}

/// The token of an inline line that starts at `line[*i]` (not a space), with its quotes and
/// escapes resolved; `*i` moves past it. `None` on unbalanced quotes.
#[inline]
fn quoted_token(line: &[u8], i: &mut usize) -> Option<Vec<u8>> {
    let n = line.len();
    let mut p = *i;
    let mut cur = Vec::new();
    let mut inq = false; // inside "double quotes"
    let mut insq = false; // inside 'single quotes'
    loop {
        if inq {
            if p >= n {
                return None;
            }
            if line[p] == b'\\'
                && p + 3 < n
                && line[p + 1] == b'x'
                && hex_val(line[p + 2]).is_some()
                && hex_val(line[p + 3]).is_some()
            {
                cur.push(hex_val(line[p + 2])? * 16 + hex_val(line[p + 3])?);
                p += 3;
            } else if line[p] == b'\\' && p + 1 < n {
                p += 1;
                cur.push(match line[p] {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'a' => 0x07,
                    c => c,
                });
            } else if line[p] == b'"' {
                if p + 1 < n && !is_space(line[p + 1]) {
                    return None;
                }
                p += 1;
                break;
            } else {
                cur.push(line[p]);
            }
        } else if insq {
            if p >= n {
                return None;
            }
            if line[p] == b'\\' && p + 1 < n && line[p + 1] == b'\'' {
                p += 1;
                cur.push(b'\'');
            } else if line[p] == b'\'' {
                if p + 1 < n && !is_space(line[p + 1]) {
                    return None;
                }
                p += 1;
                break;
            } else {
                cur.push(line[p]);
            }
        } else {
            if p >= n {
                break;
            }
            match line[p] {
                c if is_token_end(c) => {
                    break;
                }
                b'"' => inq = true,
                b'\'' => insq = true,
                c => cur.push(c),
            }
        }
        p += 1;
    }
    *i = p;
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            v.extend_from_slice(a);
            v.extend_from_slice(b"\r\n");
        }
        v
    }

    fn frame_all(data: &[u8], split: &[usize]) -> Result<Vec<Frame>, FrameError> {
        let mut f = CommandFramer::new();
        let mut out = Vec::new();
        let mut last = 0;
        for &s in split.iter().chain(std::iter::once(&data.len())) {
            f.push(&data[last..s]);
            last = s;
            while let Some(fr) = f.next_frame()? {
                out.push(fr);
            }
        }
        assert_eq!(f.buffered(), 0, "leftover bytes");
        Ok(out)
    }

    fn argv(f: &Frame) -> Vec<&[u8]> {
        f.args.iter().map(|a| a.as_ref()).collect()
    }

    #[test]
    fn multibulk_and_inline_mixed_split_everywhere() {
        let mut data = encode(&[b"SET", b"k", b"v"]);
        data.extend_from_slice(b"select 1\r\n");
        data.extend_from_slice(b"\n");
        data.extend_from_slice(&encode(&[b"DEL", b"", b"x\r\ny"]));
        data.extend_from_slice(b"PING\r\n");
        data.extend_from_slice(b"*0\r\n");
        data.extend_from_slice(b"  ping   x \n");
        let expect: Vec<(Vec<&[u8]>, bool)> = vec![
            (vec![b"SET", b"k", b"v"], false),
            (vec![b"select", b"1"], true),
            (vec![], true),
            (vec![b"DEL", b"", b"x\r\ny"], false),
            (vec![b"PING"], true),
            (vec![], false),
            (vec![b"ping", b"x"], true),
        ];
        for cut in 0..=data.len() {
            for cut2 in [cut, (cut + 7).min(data.len())] {
                let frames = frame_all(&data, &[cut, cut2]).unwrap();
                let got: Vec<(Vec<&[u8]>, bool)> =
                    frames.iter().map(|f| (argv(f), f.inline)).collect();
                assert_eq!(got, expect, "cut at {cut},{cut2}");
                let raw: Vec<u8> = frames.iter().flat_map(|f| f.raw.to_vec()).collect();
                assert_eq!(raw, data);
            }
        }
        // Byte by byte.
        let cuts: Vec<usize> = (1..data.len()).collect();
        assert_eq!(frame_all(&data, &cuts).unwrap().len(), expect.len());
    }

    #[test]
    fn consumed_counts_every_byte() {
        let mut f = CommandFramer::new();
        f.push(b"\n\r\n*1\r\n$4\r\nPING\r\n*-1\r\n");
        let mut n = 0;
        while let Some(fr) = f.next_frame().unwrap() {
            n += fr.raw.len();
        }
        assert_eq!(n, 22);
        assert_eq!(f.consumed(), 22);
    }

    fn err_of(data: &[u8]) -> FrameErrorKind {
        let mut f = CommandFramer::new();
        f.push(data);
        loop {
            match f.next_frame() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no error for {data:?}"),
                Err(e) => {
                    // Sticky.
                    assert_eq!(f.next_frame().unwrap_err(), e);
                    assert!(!e.to_string().is_empty());
                    return e.kind;
                }
            }
        }
    }

    #[test]
    fn bad_input_gives_errors() {
        assert!(matches!(
            err_of(b"*x\r\n"),
            FrameErrorKind::InvalidArrayLen(_)
        ));
        assert!(matches!(
            err_of(b"*01\r\n"),
            FrameErrorKind::InvalidArrayLen(_)
        ));
        assert!(matches!(
            err_of(b"*1\r\n$-1\r\n"),
            FrameErrorKind::InvalidBulkLen(_)
        ));
        assert!(matches!(
            err_of(b"*1\r\n$abc\r\n"),
            FrameErrorKind::InvalidBulkLen(_)
        ));
        assert!(matches!(
            err_of(b"*1\r\n:1\r\n"),
            FrameErrorKind::ExpectedBulk { got: b':' }
        ));
        assert!(matches!(
            err_of(b"*1\r\n$3\r\nfooXY"),
            FrameErrorKind::MissingCrlf { .. }
        ));
        assert!(matches!(
            err_of(b"*1\r\n$3\r\nfoo\r\r"),
            FrameErrorKind::MissingCrlf { .. }
        ));
        assert!(matches!(
            err_of(b"*1\rX"),
            FrameErrorKind::BadLineEnd { got: b'X' }
        ));
        assert!(matches!(
            err_of(b"*1\r\n$536870913\r\n"),
            FrameErrorKind::BulkTooLong { .. }
        ));
        assert!(matches!(
            err_of(b"*2147483648\r\n"),
            FrameErrorKind::ArrayTooLong { .. }
        ));
        assert!(matches!(
            err_of(b"*99999999999999999999999\r\n"),
            FrameErrorKind::InvalidArrayLen(_)
        ));
        assert!(matches!(
            err_of(b"set \"abc\r\n"),
            FrameErrorKind::UnbalancedQuotes
        ));
        let long = vec![b'a'; INLINE_MAX_SIZE + 1];
        assert!(matches!(err_of(&long), FrameErrorKind::LineTooLong { .. }));
        let mut long = b"*".to_vec();
        long.extend(std::iter::repeat_n(b'1', INLINE_MAX_SIZE + 1));
        assert!(matches!(err_of(&long), FrameErrorKind::InvalidArrayLen(_)));
        let mut long = b"*1\r\n$".to_vec();
        long.extend(std::iter::repeat_n(b'0', INLINE_MAX_SIZE + 1));
        assert!(matches!(err_of(&long), FrameErrorKind::InvalidBulkLen(_)));
        // Error position: after the good command.
        let mut f = CommandFramer::new();
        f.push(b"*1\r\n$4\r\nPING\r\n*1\r\n$1\r\nab\r\n");
        assert!(f.next_frame().unwrap().is_some());
        assert_eq!(f.next_frame().unwrap_err().stream_pos, 14);
    }

    #[test]
    fn inline_quotes_like_sdssplitargs() {
        let mut f = CommandFramer::new();
        f.push(b"set \"a b\\x41\\n\" 'c\\'d' e\r\n");
        let fr = f.next_frame().unwrap().unwrap();
        assert_eq!(argv(&fr), vec![&b"set"[..], b"a bA\n", b"c'd", b"e"]);
        let mut f = CommandFramer::new();
        f.push(b"set \"a\"b\r\n");
        assert_eq!(
            f.next_frame().unwrap_err().kind,
            FrameErrorKind::UnbalancedQuotes
        );
    }

    #[test]
    fn big_array_progress_is_kept() {
        // 200k arguments pushed in 1 KiB pieces: must finish quickly (linear).
        let args: Vec<Vec<u8>> = (0..200_000).map(|i| format!("m{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        let data = encode(&refs);
        let mut f = CommandFramer::new();
        let t = std::time::Instant::now();
        let mut got = None;
        for chunk in data.chunks(1024) {
            f.push(chunk);
            if let Some(fr) = f.next_frame().unwrap() {
                got = Some(fr);
            }
        }
        let fr = got.unwrap();
        assert_eq!(fr.args.len(), 200_000);
        assert_eq!(&fr.args[199_999][..], b"m199999");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn big_bulk_in_pieces() {
        let v = vec![b'x'; 3 * 1024 * 1024 + 5];
        let data = encode(&[b"SET", b"k", &v]);
        let mut f = CommandFramer::new();
        let mut got = None;
        for chunk in data.chunks(16 * 1024) {
            f.push(chunk);
            assert!(got.is_none());
            got = f.next_frame().unwrap();
        }
        let fr = got.unwrap();
        assert_eq!(fr.args[2].len(), v.len());
        assert_eq!(fr.raw.len(), data.len());
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn roundtrip_random_argv(
                cmds in prop::collection::vec(
                    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..6),
                    1..30),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
            ) {
                let mut data = Vec::new();
                for c in &cmds {
                    let refs: Vec<&[u8]> = c.iter().map(|a| a.as_slice()).collect();
                    data.extend_from_slice(&encode(&refs));
                }
                let mut split: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
                split.sort_unstable();
                let frames = frame_all(&data, &split).unwrap();
                prop_assert_eq!(frames.len(), cmds.len());
                let mut off = 0;
                for (fr, c) in frames.iter().zip(&cmds) {
                    let got: Vec<Vec<u8>> = fr.args.iter().map(|a| a.to_vec()).collect();
                    prop_assert_eq!(&got, c);
                    prop_assert_eq!(&fr.raw[..], &data[off..off + fr.raw.len()]);
                    off += fr.raw.len();
                }
                prop_assert_eq!(off, data.len());
            }

            #[test]
            fn garbage_never_panics(data in prop::collection::vec(any::<u8>(), 0..300),
                                    cut in any::<prop::sample::Index>()) {
                let c = cut.index(data.len() + 1);
                let mut f = CommandFramer::new();
                f.push(&data[..c]);
                while let Ok(Some(_)) = f.next_frame() {}
                f.push(&data[c..]);
                while let Ok(Some(_)) = f.next_frame() {}
            }
        }
    }
}
