//! The twelve key hashes of nutcracker's `hash:` setting, bit for bit.
//!
//! Knowing which backend owns a key only works if we hash exactly as the running proxy does,
//! including its accidents, so each function below keeps them on purpose:
//!
//! * nutcracker reads keys through a signed `char` (x86-64 build): one_at_a_time, the four FNV
//!   variants and hsieh's 3-byte tail sign-extend bytes >= 0x80 (0xE9 becomes 0xFFFFFFE9);
//! * `crc16` keeps its running value in a `u32` and never masks it, so it is not CRC-16 above
//!   the low 16 bits (and it is not Redis Cluster's slot either);
//! * `crc32` is `(crc32 >> 16) & 0x7fff` (libmemcached compatibility), `crc32a` the full CRC;
//! * `fnv1a_64` (the default hash) runs in 32 bits with the 64-bit constants truncated;
//! * `hsieh` starts from 0, not from the length; `murmur` seeds with `0xdeadbeef * len`;
//!   `jenkins` is lookup3 `hashlittle` with initval 13.
//!
//! All of them return the `u32` nutcracker feeds to the distribution.

use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// A nutcracker `hash:` function.
// `Fnv1a_64` reads better than `Fnv1a64` next to nutcracker's `fnv1a_64`.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashKind {
    OneAtATime,
    Md5,
    Crc16,
    Crc32,
    Crc32a,
    Fnv1_64,
    Fnv1a_64,
    Fnv1_32,
    Fnv1a_32,
    Hsieh,
    Murmur,
    Jenkins,
}

/// A `hash:` value nutcracker does not know.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("unknown hash {0:?} (expected one of one_at_a_time, md5, crc16, crc32, crc32a, fnv1_64, fnv1a_64, fnv1_32, fnv1a_32, hsieh, murmur, jenkins)")]
pub struct UnknownHash(pub String);

impl HashKind {
    /// Every hash, in nutcracker's own order.
    pub const ALL: [HashKind; 12] = [
        HashKind::OneAtATime,
        HashKind::Md5,
        HashKind::Crc16,
        HashKind::Crc32,
        HashKind::Crc32a,
        HashKind::Fnv1_64,
        HashKind::Fnv1a_64,
        HashKind::Fnv1_32,
        HashKind::Fnv1a_32,
        HashKind::Hsieh,
        HashKind::Murmur,
        HashKind::Jenkins,
    ];

    /// nutcracker's default when a pool has no `hash:`.
    pub const DEFAULT: HashKind = HashKind::Fnv1a_64;

    /// The name written in the YAML.
    pub fn name(self) -> &'static str {
        match self {
            HashKind::OneAtATime => "one_at_a_time",
            HashKind::Md5 => "md5",
            HashKind::Crc16 => "crc16",
            HashKind::Crc32 => "crc32",
            HashKind::Crc32a => "crc32a",
            HashKind::Fnv1_64 => "fnv1_64",
            HashKind::Fnv1a_64 => "fnv1a_64",
            HashKind::Fnv1_32 => "fnv1_32",
            HashKind::Fnv1a_32 => "fnv1a_32",
            HashKind::Hsieh => "hsieh",
            HashKind::Murmur => "murmur",
            HashKind::Jenkins => "jenkins",
        }
    }

    /// The value nutcracker computes for `key` (the hashed part, after any hash tag).
    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            HashKind::OneAtATime => one_at_a_time(key),
            HashKind::Md5 => {
                let d = super::md5::digest(key);
                u32::from_le_bytes([d[0], d[1], d[2], d[3]])
            }
            HashKind::Crc16 => crc16(key),
            HashKind::Crc32 => (crc32(key) >> 16) & 0x7fff,
            HashKind::Crc32a => crc32(key),
            HashKind::Fnv1_64 => fnv1_64(key),
            HashKind::Fnv1a_64 => fnv1a_64(key),
            HashKind::Fnv1_32 => fnv1_32(key),
            HashKind::Fnv1a_32 => fnv1a_32(key),
            HashKind::Hsieh => hsieh(key),
            HashKind::Murmur => murmur(key),
            HashKind::Jenkins => jenkins(key),
        }
    }
}

impl FromStr for HashKind {
    type Err = UnknownHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HashKind::ALL
            .into_iter()
            .find(|h| h.name() == s)
            .ok_or_else(|| UnknownHash(s.to_string()))
    }
}

impl fmt::Display for HashKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A key byte as nutcracker's signed `char` widens it to 32 bits.
fn signed(b: u8) -> u32 {
    b as i8 as i32 as u32
}

fn one_at_a_time(key: &[u8]) -> u32 {
    let mut v: u32 = 0;
    for &b in key {
        v = v.wrapping_add(signed(b));
        v = v.wrapping_add(v << 10);
        v ^= v >> 6;
    }
    v = v.wrapping_add(v << 3);
    v ^= v >> 11;
    v.wrapping_add(v << 15)
}

/// CRC-16/XMODEM table (poly 0x1021, not reflected).
const CRC16_TABLE: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 0x8000 != 0 {
                (c << 1) ^ 0x1021
            } else {
                c << 1
            };
            bit += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// The XMODEM step with a `u32` accumulator that is never cut back to 16 bits: the bytes
/// shifted past bit 15 stay and make the value differ from a real CRC-16.
fn crc16(key: &[u8]) -> u32 {
    let mut crc: u32 = 0;
    for &b in key {
        crc = (crc << 8) ^ u32::from(CRC16_TABLE[(((crc >> 8) ^ u32::from(b)) & 0xff) as usize]);
    }
    crc
}

/// Standard CRC-32 (IEEE, reflected); crc-fast has it (it has no CRC-16 at all).
fn crc32(key: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32IsoHdlc, key) as u32
}

const FNV_64_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_64_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV_32_INIT: u32 = 2_166_136_261;
const FNV_32_PRIME: u32 = 16_777_619;

fn fnv1_64(key: &[u8]) -> u32 {
    let mut h = FNV_64_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV_64_PRIME);
        h ^= b as i8 as i64 as u64;
    }
    h as u32
}

/// Not FNV-1a 64: the arithmetic is 32-bit with both constants truncated.
fn fnv1a_64(key: &[u8]) -> u32 {
    let mut h = FNV_64_INIT as u32;
    for &b in key {
        h ^= signed(b);
        h = h.wrapping_mul(FNV_64_PRIME as u32);
    }
    h
}

fn fnv1_32(key: &[u8]) -> u32 {
    let mut h = FNV_32_INIT;
    for &b in key {
        h = h.wrapping_mul(FNV_32_PRIME);
        h ^= signed(b);
    }
    h
}

fn fnv1a_32(key: &[u8]) -> u32 {
    let mut h = FNV_32_INIT;
    for &b in key {
        h ^= signed(b);
        h = h.wrapping_mul(FNV_32_PRIME);
    }
    h
}

/// Paul Hsieh's SuperFastHash, starting from 0 instead of the length.
fn hsieh(key: &[u8]) -> u32 {
    if key.is_empty() {
        return 0;
    }
    let le16 = |s: &[u8]| u32::from(s[0]) | (u32::from(s[1]) << 8);
    let mut h: u32 = 0;
    let mut blocks = key.chunks_exact(4);
    for b in &mut blocks {
        h = h.wrapping_add(le16(&b[0..2]));
        let tmp = (le16(&b[2..4]) << 11) ^ h;
        h = (h << 16) ^ tmp;
        h = h.wrapping_add(h >> 11);
    }
    let rest = blocks.remainder();
    match rest.len() {
        3 => {
            h = h.wrapping_add(le16(rest));
            h ^= h << 16;
            h ^= signed(rest[2]) << 18;
            h = h.wrapping_add(h >> 11);
        }
        2 => {
            h = h.wrapping_add(le16(rest));
            h ^= h << 11;
            h = h.wrapping_add(h >> 17);
        }
        1 => {
            h = h.wrapping_add(u32::from(rest[0]));
            h ^= h << 10;
            h = h.wrapping_add(h >> 1);
        }
        _ => {}
    }
    h ^= h << 3;
    h = h.wrapping_add(h >> 5);
    h ^= h << 4;
    h = h.wrapping_add(h >> 17);
    h ^= h << 25;
    h.wrapping_add(h >> 6)
}

/// MurmurHash2 with nutcracker's length-derived seed.
fn murmur(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let len = key.len() as u32;
    let mut h = 0xdead_beef_u32.wrapping_mul(len) ^ len;
    let mut blocks = key.chunks_exact(4);
    for b in &mut blocks {
        let mut k = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = blocks.remainder();
    if !rest.is_empty() {
        for (i, &b) in rest.iter().enumerate() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// Bob Jenkins' lookup3 `hashlittle` with nutcracker's initval, 13.
fn jenkins(key: &[u8]) -> u32 {
    hashlittle(key, 13)
}

/// lookup3 `hashlittle`. Reading zero-padded little-endian words is what its aligned,
/// half-aligned and byte-wise paths all amount to.
fn hashlittle(key: &[u8], initval: u32) -> u32 {
    let init = 0xdead_beef_u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(initval);
    let (mut a, mut b, mut c) = (init, init, init);
    let word = |s: &[u8]| {
        let mut w = [0u8; 4];
        w[..s.len()].copy_from_slice(s);
        u32::from_le_bytes(w)
    };
    let mut rest = key;
    while rest.len() > 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        // mix(a, b, c)
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(4);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(6);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(8);
        b = b.wrapping_add(a);
        a = a.wrapping_sub(c);
        a ^= c.rotate_left(16);
        c = c.wrapping_add(b);
        b = b.wrapping_sub(a);
        b ^= a.rotate_left(19);
        a = a.wrapping_add(c);
        c = c.wrapping_sub(b);
        c ^= b.rotate_left(4);
        b = b.wrapping_add(a);
        rest = &rest[12..];
    }
    if rest.is_empty() {
        return c;
    }
    let part = |from: usize| &rest[from.min(rest.len())..(from + 4).min(rest.len())];
    a = a.wrapping_add(word(part(0)));
    b = b.wrapping_add(word(part(4)));
    c = c.wrapping_add(word(part(8)));
    // final(a, b, c)
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c.wrapping_sub(b.rotate_left(24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for h in HashKind::ALL {
            assert_eq!(h.name().parse::<HashKind>(), Ok(h));
            assert_eq!(h.to_string(), h.name());
        }
        assert_eq!(
            "sha1".parse::<HashKind>(),
            Err(UnknownHash("sha1".to_string()))
        );
        assert_eq!("FNV1A_64".parse::<HashKind>().ok(), None);
    }

    /// Upstream `src/test_all.c` (the libmemcached vectors).
    #[test]
    fn apple_vectors() {
        let want = [
            (HashKind::OneAtATime, 2297466611),
            (HashKind::Md5, 3195025439),
            (HashKind::Crc16, 3662830516),
            (HashKind::Crc32, 10542),
            (HashKind::Crc32a, 2838417488),
            (HashKind::Fnv1_64, 473199127),
            (HashKind::Fnv1a_64, 1488911807),
            (HashKind::Fnv1_32, 67176023),
            (HashKind::Fnv1a_32, 280767167),
            (HashKind::Hsieh, 3738850110),
            (HashKind::Murmur, 4142305122),
            (HashKind::Jenkins, 1442444624),
        ];
        assert_eq!(want.len(), HashKind::ALL.len());
        for (h, v) in want {
            assert_eq!(h.hash(b"apple"), v, "{h}");
        }
    }

    #[test]
    fn signed_byte_vectors() {
        let cafe = b"caf\xc3\xa9";
        assert_eq!(HashKind::Fnv1a_64.hash(cafe), 3472276361);
        assert_ne!(HashKind::Fnv1a_64.hash(cafe), 3483635081); // unsigned bytes
        assert_eq!(HashKind::OneAtATime.hash(cafe), 3650908318);
        assert_ne!(HashKind::OneAtATime.hash(cafe), 2425794034);
        assert_eq!(HashKind::Hsieh.hash(b"ab\xe9"), 307729637);
    }

    #[test]
    fn quirks() {
        // crc16: the low 16 bits are CRC-16/XMODEM ("123456789" -> 0x31C3), the rest is the
        // unmasked history.
        assert_eq!(HashKind::Crc16.hash(b"123456789") & 0xffff, 0x31c3);
        assert!(HashKind::Crc16.hash(b"123456789") > 0xffff);
        // crc32a is the standard check value; crc32 keeps 15 bits of it.
        assert_eq!(HashKind::Crc32a.hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(
            HashKind::Crc32.hash(b"123456789"),
            (0xcbf4_3926 >> 16) & 0x7fff
        );
        // fnv1a_64 equals real 64-bit FNV-1a truncated for ASCII keys.
        let mut h = FNV_64_INIT;
        for &b in b"apple" {
            h = (h ^ u64::from(b)).wrapping_mul(FNV_64_PRIME);
        }
        assert_eq!(HashKind::Fnv1a_64.hash(b"apple"), h as u32);
        assert_eq!(HashKind::Hsieh.hash(b""), 0);
        assert_eq!(
            HashKind::Jenkins.hash(b""),
            0xdead_beef_u32.wrapping_add(13)
        );
    }

    #[test]
    fn lookup3_vectors() {
        // lookup3.c's own driver5 values.
        assert_eq!(hashlittle(b"", 0), 0xdead_beef);
        assert_eq!(hashlittle(b"", 0xdead_beef), 0xbd5b_7dde);
        let four = b"Four score and seven years ago";
        assert_eq!(hashlittle(four, 0), 0x1777_0551);
        assert_eq!(hashlittle(four, 1), 0xcd62_8161);
    }
}
