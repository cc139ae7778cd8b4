//! Which writer a key belongs to.
//!
//! The function must stay the same across releases and restarts: exactly-once resume relies on
//! a key always landing on the same writer (the writer count is part of the saved state).

/// 64-bit FNV-1a over the key, folded; cheap and stable.
pub fn partition(key: &[u8], writers: usize) -> usize {
    if writers <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Mix the high bits in: FNV's low bits are weak for short keys.
    h ^= h >> 32;
    (h % writers as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_spread() {
        assert_eq!(partition(b"user:1", 4), partition(b"user:1", 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[partition(format!("key:{i}").as_bytes(), 4)] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }
}
