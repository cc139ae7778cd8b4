//! The element type shared by the compact encodings (ziplist, listpack, intset, zipmap).

use super::reader::int_bytes;
use bytes::Bytes;

/// One element of a compact encoding: a byte string (a zero-copy slice of the blob) or an
/// integer (the encodings store small numbers in binary form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elem {
    Str(Bytes),
    Int(i64),
}

impl Elem {
    /// The element as Redis would return it (integers as decimal text).
    #[inline]
    pub fn into_bytes(self) -> Bytes {
        match self {
            Elem::Str(b) => b,
            Elem::Int(v) => int_bytes(v),
        }
    }

    /// The element as an integer, parsing strings the way `lpGetInteger`/`string2ll` would.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Elem::Int(v) => Some(*v),
            Elem::Str(b) => parse_i64(b),
        }
    }

    /// The element as a double (zset scores stored as text or integers).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Elem::Int(v) => Some(*v as f64),
            Elem::Str(b) => parse_f64(b),
        }
    }

    /// Size used for big-value accounting.
    #[inline]
    pub fn byte_len(&self) -> usize {
        match self {
            Elem::Str(b) => b.len(),
            Elem::Int(_) => 8,
        }
    }
}

/// Strict decimal integer parse (no leading '+', no spaces, no leading zeros except "0").
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    std::str::from_utf8(b)
        .ok()?
        .parse::<i64>()
        .ok()
        .filter(|v| {
            let mut buf = [0u8; 20];
            super::reader::fmt_i64(*v, &mut buf) == b
        })
}

/// Parse a double as Redis writes them (`%.17g`, "inf", "-inf", "nan").
pub fn parse_f64(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    s.trim().parse::<f64>().ok()
}
