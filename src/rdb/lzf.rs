//! LZF decompression (the format Redis uses for compressed strings and quicklist nodes).
//!
//! Format: a control byte `c`. If `c < 32`, `c + 1` literal bytes follow. Otherwise it is a
//! back reference: length `c >> 5` (7 means "add the next byte"), plus 2; offset
//! `((c & 0x1f) << 8) + next byte + 1` bytes back from the current output end.
//!
//! Two forms: [`decompress`] for values that fit in memory, and [`StreamDecoder`] which keeps
//! only the 8 KiB back-reference window plus one output chunk, for big strings.

/// What is wrong with an LZF stream (offsets are in the compressed input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LzfError {
    /// The declared uncompressed length does not fit in memory addresses.
    #[error("uncompressed length too large")]
    LengthTooLarge,
    /// The input ended with output still missing.
    #[error("decompressed to {got} bytes, expected {expected}")]
    LengthMismatch { got: usize, expected: usize },
    #[error("literal run overruns input at {offset}")]
    LiteralOverrun { offset: usize },
    #[error("output exceeds declared length")]
    OutputTooLong,
    #[error("truncated back reference")]
    TruncatedBackref,
    #[error("back reference before start of output at {offset}")]
    BackrefBeforeStart { offset: usize },
    /// A control unit is cut by the end of the input.
    #[error("truncated LZF input")]
    Truncated,
}

/// Largest back-reference distance LZF can express.
const WINDOW: usize = 8192;

/// Decompress `input`, which must produce exactly `ulen` bytes.
pub fn decompress(input: &[u8], ulen: u64) -> Result<Vec<u8>, LzfError> {
    let ulen = usize::try_from(ulen).map_err(|_| LzfError::LengthTooLarge)?;
    // LZF expands at most ~132x (3 input bytes -> 264 output bytes); cap the reservation by
    // what the input can produce so a lying header cannot trigger a huge allocation.
    let cap = ulen.min(input.len().saturating_mul(132).saturating_add(64));
    let mut out = Vec::with_capacity(cap);
    decode_into(input, &mut out, 0, ulen)?;
    if out.len() != ulen {
        return Err(LzfError::LengthMismatch {
            got: out.len(),
            expected: ulen,
        });
    }
    Ok(out)
}

/// Core loop: appends to `out`; `dropped` bytes of logical output were already removed from
/// the front of `out` (streaming); output is limited to `limit` logical bytes.
/// Returns the input position where it stopped (input exhausted).
fn decode_into(
    input: &[u8],
    out: &mut Vec<u8>,
    dropped: usize,
    limit: usize,
) -> Result<(), LzfError> {
    let mut ip = 0usize;
    while ip < input.len() {
        let ctrl = input[ip] as usize;
        ip += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            let lit = input
                .get(ip..ip + run)
                .ok_or(LzfError::LiteralOverrun { offset: ip - 1 })?;
            if dropped + out.len() + run > limit {
                return Err(LzfError::OutputTooLong);
            }
            out.extend_from_slice(lit);
            ip += run;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                len += *input.get(ip).ok_or(LzfError::TruncatedBackref)? as usize;
                ip += 1;
            }
            len += 2;
            let lo = *input.get(ip).ok_or(LzfError::TruncatedBackref)? as usize;
            ip += 1;
            let dist = ((ctrl & 0x1f) << 8) + lo + 1;
            if dist > out.len() {
                return Err(LzfError::BackrefBeforeStart { offset: ip - 2 });
            }
            if dropped + out.len() + len > limit {
                return Err(LzfError::OutputTooLong);
            }
            let start = out.len() - dist;
            if dist >= len {
                out.extend_from_within(start..start + len);
            } else {
                // Overlapping copy: repeats the pattern, byte by byte semantics.
                for i in 0..len {
                    let b = out[start + i];
                    out.push(b);
                }
            }
        }
    }
    Ok(())
}

/// Streaming decompressor for big strings: feed the whole compressed blob once, pull output
/// chunks of bounded size. Holds at most `chunk + 8 KiB` of output.
pub struct StreamDecoder<'a> {
    input: &'a [u8],
    ip: usize,
    out: Vec<u8>,
    /// Logical bytes already handed out and dropped from `out`.
    dropped: usize,
    ulen: usize,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(input: &'a [u8], ulen: u64) -> Result<Self, LzfError> {
        let ulen = usize::try_from(ulen).map_err(|_| LzfError::LengthTooLarge)?;
        Ok(StreamDecoder {
            input,
            ip: 0,
            out: Vec::new(),
            dropped: 0,
            ulen,
        })
    }

    /// Next output piece of at most `chunk` bytes; `None` when done (and complete).
    pub fn next_chunk(&mut self, chunk: usize) -> Result<Option<Vec<u8>>, LzfError> {
        let chunk = chunk.max(1);
        // Decode in input slices until we have enough output or the input is exhausted.
        while self.out.len() < chunk + WINDOW && self.ip < self.input.len() {
            // Decode one control unit at a time via a bounded sub-slice: find its extent.
            let ctrl = self.input[self.ip] as usize;
            let unit = if ctrl < 32 {
                1 + ctrl + 1
            } else if ctrl >> 5 == 7 {
                3
            } else {
                2
            };
            let end = (self.ip + unit).min(self.input.len());
            let slice = &self.input[self.ip..end];
            if slice.len() < unit {
                return Err(LzfError::Truncated);
            }
            decode_into(slice, &mut self.out, self.dropped, self.ulen)?;
            self.ip = end;
        }
        let keep = if self.ip < self.input.len() {
            WINDOW
        } else {
            0
        };
        let avail = self.out.len().saturating_sub(keep);
        if avail == 0 {
            if self.ip >= self.input.len() && self.dropped + self.out.len() != self.ulen {
                return Err(LzfError::LengthMismatch {
                    got: self.dropped + self.out.len(),
                    expected: self.ulen,
                });
            }
            return Ok(None);
        }
        let n = avail.min(chunk);
        let piece = self.out[..n].to_vec();
        self.out.drain(..n);
        self.dropped += n;
        Ok(Some(piece))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny (non-optimal) LZF compressor for tests: greedy matches via a hash of 3 bytes.
    pub(crate) fn compress(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut lit: Vec<u8> = Vec::new();
        let mut table = std::collections::HashMap::new();
        let flush = |lit: &mut Vec<u8>, out: &mut Vec<u8>| {
            for c in lit.chunks(32) {
                out.push((c.len() - 1) as u8);
                out.extend_from_slice(c);
            }
            lit.clear();
        };
        let mut i = 0;
        while i < input.len() {
            if i + 3 <= input.len() {
                let key = &input[i..i + 3];
                if let Some(&j) = table.get(key) {
                    let j: usize = j;
                    let dist = i - j;
                    if (1..=WINDOW).contains(&dist) {
                        let mut len = 0;
                        while i + len < input.len() && len < 264 && input[j + len] == input[i + len]
                        {
                            len += 1;
                        }
                        if len >= 3 {
                            flush(&mut lit, &mut out);
                            let l = len - 2;
                            let off = dist - 1;
                            if l < 7 {
                                out.push(((l << 5) | (off >> 8)) as u8);
                            } else {
                                out.push(((7 << 5) | (off >> 8)) as u8);
                                out.push((l - 7) as u8);
                            }
                            out.push((off & 0xff) as u8);
                            for k in 0..len {
                                if i + k + 3 <= input.len() {
                                    table.insert(input[i + k..i + k + 3].to_vec(), i + k);
                                }
                            }
                            i += len;
                            continue;
                        }
                    }
                }
                table.insert(key.to_vec(), i);
            }
            lit.push(input[i]);
            i += 1;
        }
        flush(&mut lit, &mut out);
        out
    }

    #[test]
    fn roundtrip() {
        let data: Vec<u8> = (0..50_000u32).map(|i| ((i / 7) % 251) as u8).collect();
        let c = compress(&data);
        assert!(c.len() < data.len());
        assert_eq!(decompress(&c, data.len() as u64).unwrap(), data);
        let mut s = StreamDecoder::new(&c, data.len() as u64).unwrap();
        let mut got = Vec::new();
        while let Some(p) = s.next_chunk(1000).unwrap() {
            assert!(p.len() <= 1000);
            got.extend_from_slice(&p);
        }
        assert_eq!(got, data);
    }

    #[test]
    fn rejects_garbage() {
        assert!(decompress(&[0xff, 0x00], 10).is_err());
        assert!(decompress(&[5, 1, 2], 6).is_err());
        assert!(decompress(&[0, 1], 2).is_err());
    }
}
