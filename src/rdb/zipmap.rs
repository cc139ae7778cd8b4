//! Zipmap decoding (hashes written by Redis 2.4 and older).
//!
//! Layout: `zmlen:u8` then `len key len free value <free bytes>` pairs and `0xff`. A length is
//! one byte below 254, or 254 followed by a u32le; `free` is one byte of unused padding after
//! the value.

use super::elem::Elem;
use super::error::EncodingError;
use bytes::Bytes;

/// Decode a zipmap blob into (field, value) pairs.
pub fn decode(blob: &Bytes) -> Result<Vec<(Bytes, Bytes)>, EncodingError> {
    let b = &blob[..];
    if b.is_empty() {
        return Err(EncodingError::ZipmapEmpty);
    }
    let mut pos = 1usize;
    let mut out = Vec::new();
    let read_len = |pos: &mut usize| -> Result<Option<usize>, EncodingError> {
        let c = *b.get(*pos).ok_or(EncodingError::ZipmapTruncated)?;
        *pos += 1;
        match c {
            0xff => Ok(None),
            254 => {
                let s = b
                    .get(*pos..*pos + 4)
                    .ok_or(EncodingError::ZipmapTruncated)?;
                *pos += 4;
                Ok(Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize))
            }
            0..=253 => Ok(Some(c as usize)),
        }
    };
    loop {
        let klen = match read_len(&mut pos)? {
            None => break,
            Some(n) => n,
        };
        if klen > b.len() - pos {
            return Err(EncodingError::Overrun {
                what: "zipmap key",
                offset: pos,
            });
        }
        let key = blob.slice(pos..pos + klen);
        pos += klen;
        let vlen = read_len(&mut pos)?.ok_or(EncodingError::ZipmapNoValue)?;
        let free = *b.get(pos).ok_or(EncodingError::ZipmapTruncated)? as usize;
        pos += 1;
        if vlen > b.len() - pos || free > b.len() - pos - vlen {
            return Err(EncodingError::Overrun {
                what: "zipmap value",
                offset: pos,
            });
        }
        let val = blob.slice(pos..pos + vlen);
        pos += vlen + free;
        out.push((key, val));
    }
    if pos != b.len() {
        return Err(EncodingError::ZipmapTrailing {
            count: b.len() - pos,
        });
    }
    Ok(out)
}

/// Zipmap elements as [`Elem`]s, for symmetry with the other compact encodings.
pub fn decode_elems(blob: &Bytes) -> Result<Vec<Elem>, EncodingError> {
    Ok(decode(blob)?
        .into_iter()
        .flat_map(|(k, v)| [Elem::Str(k), Elem::Str(v)])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc_len(out: &mut Vec<u8>, n: usize) {
        if n < 254 {
            out.push(n as u8);
        } else {
            out.push(254);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
    }

    #[test]
    fn roundtrip() {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"".to_vec(), b"x".to_vec()),
            (vec![1; 300], vec![]),
            (b"k".to_vec(), vec![9; 253]),
        ];
        let mut z = vec![pairs.len() as u8];
        for (k, v) in &pairs {
            enc_len(&mut z, k.len());
            z.extend_from_slice(k);
            enc_len(&mut z, v.len());
            z.push(2);
            z.extend_from_slice(v);
            z.extend_from_slice(&[0, 0]);
        }
        z.push(0xff);
        let got = decode(&Bytes::from(z)).unwrap();
        assert_eq!(got.len(), 3);
        for ((k, v), (gk, gv)) in pairs.iter().zip(got) {
            assert_eq!(&k[..], &gk[..]);
            assert_eq!(&v[..], &gv[..]);
        }
        assert!(decode(&Bytes::from_static(&[1, 5, b'a'])).is_err());
    }
}
