//! Ziplist decoding (lists, zsets and hashes of Redis 2.6 to 6.2, quicklist v1 nodes).
//!
//! Layout: `zlbytes:u32le zltail:u32le zllen:u16le entry* 0xff`. Each entry is
//! `prevlen (1 byte, or 0xfe + u32le) encoding data`. The decoder walks forward only and
//! checks every length against the blob, returning zero-copy slices for strings.

use super::elem::Elem;
use super::error::EncodingError;
use bytes::Bytes;

const WHAT: &str = "ziplist";

/// Forward iterator over the elements of a ziplist blob.
pub struct ZiplistIter {
    blob: Bytes,
    pos: usize,
    end: usize,
    declared: Option<usize>,
    seen: usize,
    done: bool,
}

impl ZiplistIter {
    /// Validate the header and position at the first entry.
    pub fn new(blob: Bytes) -> Result<Self, EncodingError> {
        if blob.len() < 11 {
            return Err(EncodingError::TooShort {
                what: WHAT,
                len: blob.len(),
            });
        }
        let zlbytes = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
        if zlbytes != blob.len() {
            return Err(EncodingError::SizeMismatch {
                what: WHAT,
                header: zlbytes,
                len: blob.len(),
            });
        }
        if blob[blob.len() - 1] != 0xff {
            return Err(EncodingError::NoEndMarker { what: WHAT });
        }
        let zllen = u16::from_le_bytes([blob[8], blob[9]]) as usize;
        let end = blob.len() - 1;
        Ok(ZiplistIter {
            blob,
            pos: 10,
            end,
            declared: if zllen == u16::MAX as usize {
                None
            } else {
                Some(zllen)
            },
            seen: 0,
            done: false,
        })
    }

    /// The element count from the header, when it is exact (< 65535).
    pub fn declared_len(&self) -> Option<usize> {
        self.declared
    }

    fn take(&mut self, n: usize) -> Result<&[u8], EncodingError> {
        if n > self.end - self.pos {
            return Err(EncodingError::Overrun {
                what: "ziplist entry",
                offset: self.pos,
            });
        }
        let s = &self.blob[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn next_elem(&mut self) -> Result<Option<Elem>, EncodingError> {
        if self.pos >= self.end {
            EncodingError::check_count(WHAT, self.declared, self.seen)?;
            return Ok(None);
        }
        // prevlen
        let p = self.take(1)?[0];
        if p == 0xfe {
            self.take(4)?;
        } else if p == 0xff {
            return Err(EncodingError::UnexpectedEnd {
                what: WHAT,
                offset: self.pos - 1,
            });
        }
        let enc = self.take(1)?[0];
        let e = match enc >> 6 {
            0 => {
                let n = (enc & 0x3f) as usize;
                self.str(n)?
            }
            1 => {
                let b = self.take(1)?[0];
                let n = (((enc & 0x3f) as usize) << 8) | b as usize;
                self.str(n)?
            }
            2 => {
                if enc != 0x80 {
                    return Err(EncodingError::ZiplistStringEncoding { enc });
                }
                let b = self.take(4)?;
                let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
                self.str(n)?
            }
            _ => match enc {
                0xc0 => {
                    let b = self.take(2)?;
                    Elem::Int(i64::from(i16::from_le_bytes([b[0], b[1]])))
                }
                0xd0 => {
                    let b = self.take(4)?;
                    Elem::Int(i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                }
                0xe0 => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    Elem::Int(i64::from_le_bytes(a))
                }
                0xf0 => {
                    let b = self.take(3)?;
                    // Sign-extend 24 bits.
                    let v = i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8;
                    Elem::Int(i64::from(v))
                }
                0xfe => Elem::Int(i64::from(self.take(1)?[0] as i8)),
                0xf1..=0xfd => Elem::Int(i64::from(enc & 0x0f) - 1),
                _ => return Err(EncodingError::ZiplistEncoding { enc }),
            },
        };
        self.seen += 1;
        Ok(Some(e))
    }

    fn str(&mut self, n: usize) -> Result<Elem, EncodingError> {
        let start = self.pos;
        self.take(n)?;
        Ok(Elem::Str(self.blob.slice(start..start + n)))
    }
}

impl Iterator for ZiplistIter {
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

    /// Test-only ziplist encoder covering every encoding class.
    pub(crate) fn encode(elems: &[Elem]) -> Vec<u8> {
        let mut body = Vec::new();
        let mut prev = 0usize;
        for e in elems {
            let mut ent = Vec::new();
            if prev < 254 {
                ent.push(prev as u8);
            } else {
                ent.push(0xfe);
                ent.extend_from_slice(&(prev as u32).to_le_bytes());
            }
            match e {
                Elem::Str(s) => {
                    let n = s.len();
                    if n < 64 {
                        ent.push(n as u8);
                    } else if n < 16384 {
                        ent.push(0x40 | (n >> 8) as u8);
                        ent.push((n & 0xff) as u8);
                    } else {
                        ent.push(0x80);
                        ent.extend_from_slice(&(n as u32).to_be_bytes());
                    }
                    ent.extend_from_slice(s);
                }
                Elem::Int(v) => {
                    let v = *v;
                    if (0..=12).contains(&v) {
                        ent.push(0xf1 + v as u8);
                    } else if i8::try_from(v).is_ok() {
                        ent.push(0xfe);
                        ent.push(v as i8 as u8);
                    } else if i16::try_from(v).is_ok() {
                        ent.push(0xc0);
                        ent.extend_from_slice(&(v as i16).to_le_bytes());
                    } else if (-(1 << 23)..(1 << 23)).contains(&v) {
                        ent.push(0xf0);
                        ent.extend_from_slice(&(v as i32).to_le_bytes()[..3]);
                    } else if i32::try_from(v).is_ok() {
                        ent.push(0xd0);
                        ent.extend_from_slice(&(v as i32).to_le_bytes());
                    } else {
                        ent.push(0xe0);
                        ent.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
            prev = ent.len();
            body.extend_from_slice(&ent);
        }
        let total = 10 + body.len() + 1;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(elems.len().min(65535) as u16).to_le_bytes());
        out.extend_from_slice(&body);
        out.push(0xff);
        out
    }

    pub(crate) fn arb_elem() -> impl Strategy<Value = Elem> {
        prop_oneof![
            any::<i64>().prop_map(Elem::Int),
            (-20i64..20).prop_map(Elem::Int),
            prop_oneof![
                Just(i64::from(i16::MIN)),
                Just(i64::from(i16::MAX)),
                Just(-(1 << 23)),
                Just((1 << 23) - 1),
                Just(i64::from(i32::MIN)),
                Just(i64::from(i32::MAX)),
                Just(i64::MIN),
                Just(i64::MAX),
                Just(-4096),
                Just(4095),
                Just(127),
                Just(128),
            ]
            .prop_map(Elem::Int),
            prop_oneof![
                Just(0usize),
                Just(1),
                Just(63),
                Just(64),
                Just(4095),
                Just(4096),
                Just(16383),
                Just(16384),
                0usize..200
            ]
            .prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n..=n))
            .prop_map(|v| Elem::Str(Bytes::from(v))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn roundtrip(elems in proptest::collection::vec(arb_elem(), 0..20)) {
            let blob = Bytes::from(encode(&elems));
            let got: Result<Vec<Elem>, EncodingError> = ZiplistIter::new(blob).unwrap().collect();
            prop_assert_eq!(got.unwrap(), elems);
        }
    }
}
