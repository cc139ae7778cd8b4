//! Listpack decoding (Redis 7.0+ small collections, quicklist v2 nodes, stream nodes).
//!
//! Layout: `total:u32le count:u16le entry* 0xff`; each entry is `encoding data backlen`, where
//! `backlen` (1 to 5 bytes) stores the size of `encoding data` for backward walks. Forward
//! decoding computes the entry size from the encoding and skips the backlen, checking it.

use super::elem::Elem;
use super::error::EncodingError;
use bytes::Bytes;

const WHAT: &str = "listpack";

/// Forward iterator over the elements of a listpack blob.
pub struct ListpackIter {
    blob: Bytes,
    pos: usize,
    end: usize,
    declared: Option<usize>,
    seen: usize,
    done: bool,
}

/// Size of the backlen field for an entry of `l` bytes (encoding + data).
#[inline]
fn backlen_size(l: usize) -> usize {
    if l < 128 {
        1
    } else if l < 16384 {
        2
    } else if l < 2_097_152 {
        3
    } else if l < 268_435_456 {
        4
    } else {
        5
    }
}

impl ListpackIter {
    pub fn new(blob: Bytes) -> Result<Self, EncodingError> {
        if blob.len() < 7 {
            return Err(EncodingError::TooShort {
                what: WHAT,
                len: blob.len(),
            });
        }
        let total = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
        if total != blob.len() {
            return Err(EncodingError::SizeMismatch {
                what: WHAT,
                header: total,
                len: blob.len(),
            });
        }
        if blob[blob.len() - 1] != 0xff {
            return Err(EncodingError::NoEndMarker { what: WHAT });
        }
        let count = u16::from_le_bytes([blob[4], blob[5]]) as usize;
        let end = blob.len() - 1;
        Ok(ListpackIter {
            blob,
            pos: 6,
            end,
            declared: if count == u16::MAX as usize {
                None
            } else {
                Some(count)
            },
            seen: 0,
            done: false,
        })
    }

    /// The element count from the header, when it is exact (< 65535).
    pub fn declared_len(&self) -> Option<usize> {
        self.declared
    }

    #[inline]
    fn need(&self, n: usize) -> Result<(), EncodingError> {
        if n > self.end - self.pos {
            Err(EncodingError::Overrun {
                what: "listpack entry",
                offset: self.pos,
            })
        } else {
            Ok(())
        }
    }

    fn next_elem(&mut self) -> Result<Option<Elem>, EncodingError> {
        if self.pos >= self.end {
            EncodingError::check_count(WHAT, self.declared, self.seen)?;
            return Ok(None);
        }
        let p = self.pos;
        let (hdr, dlen, elem_int) = self.entry_header(self.blob[p], p)?;
        let l = hdr
            .checked_add(dlen)
            .ok_or(EncodingError::ListpackLengthOverflow)?;
        let total = l + backlen_size(l);
        self.need(total)?;
        let elem = match elem_int {
            Some(v) => Elem::Int(v),
            None => Elem::Str(self.blob.slice(p + hdr..p + hdr + dlen)),
        };
        self.pos = p + total;
        self.seen += 1;
        Ok(Some(elem))
    }

    /// Decode the encoding of the entry at `p` (first byte `enc`): its header size, data size,
    /// and its value when it is an integer.
    #[inline]
    fn entry_header(
        &self,
        enc: u8,
        p: usize,
    ) -> Result<(usize, usize, Option<i64>), EncodingError> {
        let b = &self.blob[..];
        if enc & 0x80 == 0 {
            Ok((1, 0, Some(i64::from(enc & 0x7f))))
        } else if enc & 0xc0 == 0x80 {
            Ok((1, (enc & 0x3f) as usize, None))
        } else if enc & 0xe0 == 0xc0 {
            self.need(2)?;
            let raw = ((u16::from(enc & 0x1f)) << 8) | u16::from(b[p + 1]);
            // Sign-extend 13 bits.
            let v = ((raw << 3) as i16) >> 3;
            Ok((2, 0, Some(i64::from(v))))
        } else if enc & 0xf0 == 0xe0 {
            self.need(2)?;
            Ok((2, (((enc & 0x0f) as usize) << 8) | b[p + 1] as usize, None))
        } else {
            self.extended_header(enc, p)
        }
    }

    /// The encodings 0xf0 to 0xff: a string with a 32-bit length, 16- to 64-bit integers, and
    /// the end marker (not an entry).
    #[inline]
    fn extended_header(
        &self,
        enc: u8,
        p: usize,
    ) -> Result<(usize, usize, Option<i64>), EncodingError> {
        let b = &self.blob[..];
        match enc {
            0xf0 => {
                self.need(5)?;
                let dlen = u32::from_le_bytes([b[p + 1], b[p + 2], b[p + 3], b[p + 4]]) as usize;
                Ok((5, dlen, None))
            }
            0xf1 => {
                self.need(3)?;
                let v = i16::from_le_bytes([b[p + 1], b[p + 2]]);
                Ok((3, 0, Some(i64::from(v))))
            }
            0xf2 => {
                self.need(4)?;
                let v = i32::from_le_bytes([0, b[p + 1], b[p + 2], b[p + 3]]) >> 8;
                Ok((4, 0, Some(i64::from(v))))
            }
            0xf3 => {
                self.need(5)?;
                let v = i32::from_le_bytes([b[p + 1], b[p + 2], b[p + 3], b[p + 4]]);
                Ok((5, 0, Some(i64::from(v))))
            }
            0xf4 => {
                self.need(9)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(&b[p + 1..p + 9]);
                Ok((9, 0, Some(i64::from_le_bytes(a))))
            }
            0xff => Err(EncodingError::UnexpectedEnd {
                what: WHAT,
                offset: p,
            }),
            _ => Err(EncodingError::ListpackEncoding { enc, offset: p }),
        }
    }
}

impl Iterator for ListpackIter {
    type Item = Result<Elem, EncodingError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_elem() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(m) => {
                self.done = true;
                Some(Err(m))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backlen(l: usize) -> Vec<u8> {
        // lpEncodeBacklen: most significant group first without the continuation bit, the
        // following groups with bit 7 set.
        let n = backlen_size(l);
        (0..n)
            .map(|i| {
                let g = ((l >> (7 * (n - 1 - i))) & 127) as u8;
                if i == 0 {
                    g
                } else {
                    g | 128
                }
            })
            .collect()
    }

    /// Test-only listpack encoder covering every encoding class.
    pub(crate) fn encode(elems: &[Elem]) -> Vec<u8> {
        let mut body = Vec::new();
        for e in elems {
            let mut ent = Vec::new();
            match e {
                Elem::Str(s) => {
                    let n = s.len();
                    if n < 64 {
                        ent.push(0x80 | n as u8);
                    } else if n < 4096 {
                        ent.push(0xe0 | (n >> 8) as u8);
                        ent.push((n & 0xff) as u8);
                    } else {
                        ent.push(0xf0);
                        ent.extend_from_slice(&(n as u32).to_le_bytes());
                    }
                    ent.extend_from_slice(s);
                }
                Elem::Int(v) => {
                    let v = *v;
                    if (0..=127).contains(&v) {
                        ent.push(v as u8);
                    } else if (-4096..4096).contains(&v) {
                        let u = (v as u16) & 0x1fff;
                        ent.push(0xc0 | (u >> 8) as u8);
                        ent.push((u & 0xff) as u8);
                    } else if i16::try_from(v).is_ok() {
                        ent.push(0xf1);
                        ent.extend_from_slice(&(v as i16).to_le_bytes());
                    } else if (-(1 << 23)..(1 << 23)).contains(&v) {
                        ent.push(0xf2);
                        ent.extend_from_slice(&(v as i32).to_le_bytes()[..3]);
                    } else if i32::try_from(v).is_ok() {
                        ent.push(0xf3);
                        ent.extend_from_slice(&(v as i32).to_le_bytes());
                    } else {
                        ent.push(0xf4);
                        ent.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
            let l = ent.len();
            ent.extend_from_slice(&backlen(l));
            body.extend_from_slice(&ent);
        }
        let total = 6 + body.len() + 1;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(&(elems.len().min(65535) as u16).to_le_bytes());
        out.extend_from_slice(&body);
        out.push(0xff);
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn roundtrip(elems in proptest::collection::vec(crate::rdb::ziplist::tests::arb_elem(), 0..20)) {
            let blob = Bytes::from(encode(&elems));
            let got: Result<Vec<Elem>, EncodingError> = ListpackIter::new(blob).unwrap().collect();
            prop_assert_eq!(got.unwrap(), elems);
        }
    }

    #[test]
    fn truncated_is_error() {
        let blob = encode(&[Elem::Str(Bytes::from(vec![7u8; 100]))]);
        let mut bad = blob.clone();
        bad.remove(10);
        let total = bad.len() as u32;
        bad[..4].copy_from_slice(&total.to_le_bytes());
        let r: Result<Vec<Elem>, EncodingError> =
            ListpackIter::new(Bytes::from(bad)).unwrap().collect();
        assert!(r.is_err());
    }
}
