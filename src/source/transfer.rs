//! Receiving the RDB snapshot that follows `+FULLRESYNC` (or `SYNC`).
//!
//! Wire format, as the master's `replication.c` sends it:
//! * any number of bare `\n` keepalives (once a second while a disk BGSAVE runs); they are not
//!   part of the replication offset;
//! * `-<error>` if the master gave up (e.g. the BGSAVE failed);
//! * disk-based: `$<len>\r\n` followed by exactly `len` bytes, with **no** trailing CRLF;
//! * diskless: `$EOF:<40-byte mark>\r\n`, the payload, then the same 40 bytes. The mark can be
//!   split across reads, so the last 39 bytes are held back until we know they are not the
//!   start of the mark: the sink never sees any byte of the mark.
//!
//! Anything after the payload (or after the closing mark) in the same read is the beginning of
//! the command stream; [`RdbReceiver::feed`] reports where it starts.
//!
//! The receiver is sans-IO so the framing can be tested byte by byte without sockets.

use std::fmt;

/// Length of the diskless EOF mark (`CONFIG_RUN_ID_SIZE`).
pub const EOF_MARK_LEN: usize = 40;
/// Longest preamble line accepted (Redis reads it into a 1 KiB buffer).
const MAX_PREAMBLE_LINE: usize = 4096;

/// How the payload is delimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdbFraming {
    /// `$<len>`: exactly this many bytes.
    Sized(u64),
    /// `$EOF:<mark>`: until the mark.
    EofMark([u8; EOF_MARK_LEN]),
}

/// The transfer could not be understood, or the master reported an error instead of an RDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferError {
    /// The master sent `-<message>` instead of the RDB preamble (e.g. a failed BGSAVE).
    MasterError(String),
    /// Something other than `$<len>` / `$EOF:<mark>` / `\n`.
    BadPreamble(String),
    /// A preamble line longer than the limit.
    PreambleTooLong,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::MasterError(m) => {
                write!(f, "master aborted the RDB transfer with an error: {m}")
            }
            TransferError::BadPreamble(l) => write!(
                f,
                "expected the RDB preamble \"$<len>\" or \"$EOF:<40-byte mark>\", got {l:?}"
            ),
            TransferError::PreambleTooLong => write!(
                f,
                "expected the RDB preamble \"$<len>\", got a line longer than {MAX_PREAMBLE_LINE} bytes"
            ),
        }
    }
}

impl std::error::Error for TransferError {}

/// Progress of one [`RdbReceiver::feed`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// All input consumed; the payload is not complete.
    More,
    /// The payload is complete; the first `consumed` bytes of the input belonged to the
    /// transfer and the rest (if any) is the command stream.
    Done { consumed: usize },
}

#[derive(Debug)]
enum State {
    Preamble,
    Sized { remaining: u64 },
    Marked { mark: [u8; EOF_MARK_LEN] },
    Done,
}

/// Sans-IO receiver of the RDB transfer. See the module documentation.
#[derive(Debug)]
pub struct RdbReceiver {
    state: State,
    /// Partial preamble line.
    line: Vec<u8>,
    /// Diskless: bytes held back because they could be the start of the mark (< 40).
    tail: Vec<u8>,
    framing: Option<RdbFraming>,
    keepalives: u64,
    payload_bytes: u64,
}

impl Default for RdbReceiver {
    fn default() -> Self {
        Self::new()
    }
}

impl RdbReceiver {
    pub fn new() -> Self {
        RdbReceiver {
            state: State::Preamble,
            line: Vec::new(),
            tail: Vec::with_capacity(EOF_MARK_LEN),
            framing: None,
            keepalives: 0,
            payload_bytes: 0,
        }
    }

    /// The framing, once the preamble has been read.
    pub fn framing(&self) -> Option<&RdbFraming> {
        self.framing.as_ref()
    }

    /// Payload size announced by `$<len>` (None for diskless or before the preamble).
    pub fn total_len(&self) -> Option<u64> {
        match self.framing {
            Some(RdbFraming::Sized(n)) => Some(n),
            _ => None,
        }
    }

    /// True for a `$EOF:` (diskless) transfer.
    pub fn is_diskless(&self) -> bool {
        matches!(self.framing, Some(RdbFraming::EofMark(_)))
    }

    /// Keepalive newlines skipped before the preamble.
    pub fn keepalives(&self) -> u64 {
        self.keepalives
    }

    /// Payload bytes handed to the sink so far.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Consumes `data`, handing payload bytes to `out` (in order, never a byte of the mark).
    /// `out`'s errors are returned as `Ok(Err(..))`, so the caller can tell them from protocol
    /// errors.
    pub fn feed<E>(
        &mut self,
        data: &[u8],
        out: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Result<Fed, E>, TransferError> {
        let mut pos = 0;
        loop {
            match &mut self.state {
                State::Done => return Ok(Ok(Fed::Done { consumed: pos })),
                State::Preamble => {
                    let Some(nl) = data[pos..].iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(&data[pos..]);
                        if self.line.len() > MAX_PREAMBLE_LINE {
                            return Err(TransferError::PreambleTooLong);
                        }
                        return Ok(Ok(Fed::More));
                    };
                    self.line.extend_from_slice(&data[pos..pos + nl]);
                    pos += nl + 1;
                    if self.line.len() > MAX_PREAMBLE_LINE {
                        return Err(TransferError::PreambleTooLong);
                    }
                    let mut line = std::mem::take(&mut self.line);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if line.is_empty() {
                        self.keepalives += 1;
                        continue;
                    }
                    self.state = parse_preamble(&line)?;
                    self.framing = Some(match &self.state {
                        State::Sized { remaining } => RdbFraming::Sized(*remaining),
                        State::Marked { mark } => RdbFraming::EofMark(*mark),
                        _ => unreachable!("parse_preamble returns a payload state"),
                    });
                }
                State::Sized { remaining } => {
                    let avail = (data.len() - pos) as u64;
                    let take = avail.min(*remaining) as usize;
                    if take > 0 {
                        if let Err(e) = out(&data[pos..pos + take]) {
                            return Ok(Err(e));
                        }
                        self.payload_bytes += take as u64;
                        *remaining -= take as u64;
                        pos += take;
                    }
                    if *remaining == 0 {
                        self.state = State::Done;
                        continue;
                    }
                    return Ok(Ok(Fed::More));
                }
                State::Marked { mark } => {
                    let mark = *mark;
                    let input = &data[pos..];
                    return Ok(self.feed_marked(&mark, input, out).map(|r| match r {
                        Some(used) => Fed::Done {
                            consumed: pos + used,
                        },
                        None => Fed::More,
                    }));
                }
            }
        }
    }

    /// Diskless payload: returns `Some(bytes of input used)` when the mark was found.
    fn feed_marked<E>(
        &mut self,
        mark: &[u8; EOF_MARK_LEN],
        input: &[u8],
        out: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Option<usize>, E> {
        let t = self.tail.len();
        // 1. A mark straddling the held-back tail and the new input.
        let head = &input[..input.len().min(EOF_MARK_LEN - 1)];
        let mut window = [0u8; 2 * EOF_MARK_LEN];
        window[..t].copy_from_slice(&self.tail);
        window[t..t + head.len()].copy_from_slice(head);
        let found = find(&window[..t + head.len()], mark)
            .map(|p| (p, true))
            // 2. A mark entirely inside the new input.
            .or_else(|| find(input, mark).map(|p| (p + t, false)));
        if let Some((p, _)) = found {
            // `p` is in combined (tail + input) coordinates; the payload is combined[..p].
            if p <= t {
                if p > 0 {
                    out(&self.tail[..p])?;
                }
            } else {
                if t > 0 {
                    out(&self.tail)?;
                }
                out(&input[..p - t])?;
            }
            self.payload_bytes += p as u64;
            self.tail.clear();
            self.state = State::Done;
            return Ok(Some(p + EOF_MARK_LEN - t));
        }
        // No mark: everything except the last 39 combined bytes is payload.
        let total = t + input.len();
        let keep = total.min(EOF_MARK_LEN - 1);
        let emit = total - keep;
        if emit > 0 {
            let from_tail = emit.min(t);
            if from_tail > 0 {
                out(&self.tail[..from_tail])?;
            }
            if emit > from_tail {
                out(&input[..emit - from_tail])?;
            }
            self.payload_bytes += emit as u64;
        }
        // New tail: combined[emit..].
        let mut new_tail = [0u8; EOF_MARK_LEN];
        let mut n = 0;
        if emit < t {
            let part = &self.tail[emit..];
            new_tail[..part.len()].copy_from_slice(part);
            n = part.len();
        }
        let in_from = emit.saturating_sub(t);
        let part = &input[in_from..];
        new_tail[n..n + part.len()].copy_from_slice(part);
        n += part.len();
        self.tail.clear();
        self.tail.extend_from_slice(&new_tail[..n]);
        Ok(None)
    }
}

fn parse_preamble(line: &[u8]) -> Result<State, TransferError> {
    let shown = || String::from_utf8_lossy(&line[..line.len().min(128)]).into_owned();
    match line[0] {
        b'-' => Err(TransferError::MasterError(
            String::from_utf8_lossy(&line[1..]).into_owned(),
        )),
        b'$' => {
            if let Some(rest) = line[1..].strip_prefix(b"EOF:") {
                if rest.len() < EOF_MARK_LEN {
                    return Err(TransferError::BadPreamble(shown()));
                }
                let mut mark = [0u8; EOF_MARK_LEN];
                mark.copy_from_slice(&rest[..EOF_MARK_LEN]);
                return Ok(State::Marked { mark });
            }
            let len = std::str::from_utf8(&line[1..])
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| TransferError::BadPreamble(shown()))?;
            Ok(State::Sized { remaining: len })
        }
        _ => Err(TransferError::BadPreamble(shown())),
    }
}

/// First occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8; EOF_MARK_LEN]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `data` split at `cuts`; returns (payload, stream bytes after the transfer).
    fn run(data: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, Vec<u8>, RdbReceiver), TransferError> {
        let mut r = RdbReceiver::new();
        let mut payload = Vec::new();
        let mut stream = Vec::new();
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&data.len())) {
            let chunk = &data[last..c];
            last = c;
            if r.is_done() {
                stream.extend_from_slice(chunk);
                continue;
            }
            let fed = r
                .feed(chunk, &mut |b: &[u8]| {
                    payload.extend_from_slice(b);
                    Ok::<(), ()>(())
                })?
                .unwrap();
            if let Fed::Done { consumed } = fed {
                stream.extend_from_slice(&chunk[consumed..]);
            }
        }
        Ok((payload, stream, r))
    }

    #[test]
    fn sized_every_split() {
        let data = b"\n\n$10\r\n0123456789*1\r\n$4\r\nPING\r\n";
        for a in 0..=data.len() {
            for b in a..=data.len() {
                let (p, s, r) = run(data, &[a, b]).unwrap();
                assert_eq!(p, b"0123456789");
                assert_eq!(s, b"*1\r\n$4\r\nPING\r\n");
                assert_eq!(r.keepalives(), 2);
                assert_eq!(r.total_len(), Some(10));
            }
        }
    }

    #[test]
    fn eof_mark_every_split() {
        let mark = b"0123456789abcdef0123456789abcdef01234567";
        let mut data = b"\n$EOF:".to_vec();
        data.extend_from_slice(mark);
        data.extend_from_slice(b"\r\n");
        // Payload contains prefixes of the mark to trip a naive search.
        let payload =
            b"REDIS0011\x010123456789abc0123456789abcdef0123456789abcdef0123456\xff".to_vec();
        data.extend_from_slice(&payload);
        data.extend_from_slice(mark);
        data.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        for a in 0..=data.len() {
            for b in (a..=data.len()).step_by(3) {
                let (p, s, r) = run(&data, &[a, b]).unwrap();
                assert_eq!(p, payload, "split {a} {b}");
                assert_eq!(s, b"*1\r\n$4\r\nPING\r\n", "split {a} {b}");
                assert!(r.is_diskless());
                assert_eq!(r.payload_bytes(), payload.len() as u64);
            }
        }
        let cuts: Vec<usize> = (1..data.len()).collect();
        let (p, _, _) = run(&data, &cuts).unwrap();
        assert_eq!(p, payload);
    }

    #[test]
    fn empty_payloads() {
        let (p, s, _) = run(b"$0\r\nX", &[]).unwrap();
        assert!(p.is_empty());
        assert_eq!(s, b"X");
        let mark = [b'm'; 40];
        let mut d = b"$EOF:".to_vec();
        d.extend_from_slice(&mark);
        d.extend_from_slice(b"\r\n");
        d.extend_from_slice(&mark);
        let (p, s, _) = run(&d, &[d.len() - 3]).unwrap();
        assert!(p.is_empty() && s.is_empty());
    }

    #[test]
    fn errors() {
        assert_eq!(
            run(b"-ERR BGSAVE failed\r\n", &[]).unwrap_err(),
            TransferError::MasterError("ERR BGSAVE failed".into())
        );
        assert!(matches!(
            run(b"+OK\r\n", &[]).unwrap_err(),
            TransferError::BadPreamble(_)
        ));
        assert!(matches!(
            run(b"$abc\r\n", &[]).unwrap_err(),
            TransferError::BadPreamble(_)
        ));
        assert!(matches!(
            run(b"$EOF:short\r\n", &[]).unwrap_err(),
            TransferError::BadPreamble(_)
        ));
        assert_eq!(
            run(&vec![b'$'; 5000], &[]).unwrap_err(),
            TransferError::PreambleTooLong
        );
        assert!(!TransferError::PreambleTooLong.to_string().is_empty());
    }
}
