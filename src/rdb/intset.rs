//! Intset decoding (small integer-only sets): `encoding:u32le (2|4|8) length:u32le` followed by
//! `length` little-endian signed integers of `encoding` bytes each.

use super::error::EncodingError;

/// Decode an intset blob into its integers, in stored (ascending) order.
pub fn decode(blob: &[u8]) -> Result<IntsetIter<'_>, EncodingError> {
    if blob.len() < 8 {
        return Err(EncodingError::TooShort {
            what: "intset",
            len: blob.len(),
        });
    }
    let enc = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
    let len = u32::from_le_bytes([blob[4], blob[5], blob[6], blob[7]]) as usize;
    if !matches!(enc, 2 | 4 | 8) {
        return Err(EncodingError::IntsetEncoding { width: enc });
    }
    let body = &blob[8..];
    if len.checked_mul(enc) != Some(body.len()) {
        return Err(EncodingError::IntsetSize {
            len,
            width: enc,
            data: body.len(),
        });
    }
    Ok(IntsetIter { body, enc, pos: 0 })
}

/// Iterator over the integers of an intset (already validated to be well formed).
pub struct IntsetIter<'a> {
    body: &'a [u8],
    enc: usize,
    pos: usize,
}

impl IntsetIter<'_> {
    pub fn len(&self) -> usize {
        self.body.len() / self.enc
    }

    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }
}

impl Iterator for IntsetIter<'_> {
    type Item = i64;
    fn next(&mut self) -> Option<i64> {
        let c = self.body.get(self.pos..self.pos + self.enc)?;
        self.pos += self.enc;
        Some(match self.enc {
            2 => i64::from(i16::from_le_bytes([c[0], c[1]])),
            4 => i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            _ => i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(vals: &[i64]) -> Vec<u8> {
        let mut v = vals.to_vec();
        v.sort();
        v.dedup();
        let enc = if v.iter().all(|x| i16::try_from(*x).is_ok()) {
            2
        } else if v.iter().all(|x| i32::try_from(*x).is_ok()) {
            4
        } else {
            8
        };
        let mut out = Vec::new();
        out.extend_from_slice(&(enc as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        for x in &v {
            out.extend_from_slice(&x.to_le_bytes()[..enc]);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn roundtrip(vals in prop_oneof![
            proptest::collection::vec(any::<i16>().prop_map(i64::from), 0..40),
            proptest::collection::vec(any::<i32>().prop_map(i64::from), 0..40),
            proptest::collection::vec(any::<i64>(), 0..40),
        ]) {
            let mut want = vals.clone();
            want.sort();
            want.dedup();
            let blob = encode(&vals);
            let got: Vec<i64> = decode(&blob).unwrap().collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn bad_sizes() {
        assert!(decode(&[2, 0, 0, 0, 2, 0, 0, 0, 1, 0]).is_err());
        assert!(decode(&[3, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode(&[8, 0, 0, 0, 255, 255, 255, 255]).is_err());
    }
}
