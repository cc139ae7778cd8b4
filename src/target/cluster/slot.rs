//! Redis Cluster's key to hash slot mapping, and a hash tag for every slot.
//!
//! A key's slot is CRC16-XMODEM of the key modulo 16384, or of its hash tag: the bytes between
//! the first `{` and the first `}` after it, when there is at least one byte between them.
//! Nothing after that first pair is looked at (`foo{}{bar}` hashes the whole key,
//! `foo{{bar}}` hashes `{bar`, `foo{bar}{zap}` hashes `bar`). Keys are hashed as raw bytes.

use std::sync::OnceLock;

/// How many hash slots a Redis Cluster has.
pub const SLOTS: usize = 16384;

/// The hash slot of `key` (0..16384), as `CLUSTER KEYSLOT` answers.
///
/// `redis_protocol::redis_keyslot` applies the rule above (checked against a reference and
/// against a real cluster's `CLUSTER KEYSLOT` in `tests/cluster_topology.rs`).
#[inline]
pub fn key_slot(key: &[u8]) -> u16 {
    redis_protocol::redis_keyslot(key)
}

/// Candidate characters of a tag: alphanumeric, so never `{` or `}`.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The longest tag needed: alphanumeric strings of 1 to 3 characters reach every slot.
const MAX_TAG: usize = 3;

/// One tag: its bytes and length.
type Tag = ([u8; MAX_TAG], u8);

/// A shortest alphanumeric string whose slot is `slot`: a key `prefix{TAG}suffix` (with no `{`
/// in `prefix`) lands in `slot`. The table is built once, on first use (about 240,000 CRCs of
/// 3 bytes at most).
///
/// Panics when `slot` is not below [`SLOTS`].
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: OnceLock<Vec<Tag>> = OnceLock::new();
    assert!(
        (slot as usize) < SLOTS,
        "slot {slot} is out of range (0..{SLOTS})"
    );
    let (bytes, len) = &TAGS.get_or_init(build_tags)[slot as usize];
    std::str::from_utf8(&bytes[..*len as usize]).expect("alphanumeric tags are ASCII")
}

/// Every slot's first tag in order of length, then of [`ALPHABET`].
fn build_tags() -> Vec<Tag> {
    let mut tags: Vec<Option<Tag>> = vec![None; SLOTS];
    let mut found = 0;
    let mut level: Vec<Vec<u8>> = vec![Vec::new()];
    for _ in 0..MAX_TAG {
        let mut next = Vec::with_capacity(level.len() * ALPHABET.len());
        for prefix in &level {
            for &c in ALPHABET {
                let mut s = prefix.clone();
                s.push(c);
                let slot = key_slot(&s) as usize;
                if tags[slot].is_none() {
                    let mut bytes = [0u8; MAX_TAG];
                    bytes[..s.len()].copy_from_slice(&s);
                    tags[slot] = Some((bytes, s.len() as u8));
                    found += 1;
                }
                next.push(s);
            }
        }
        if found == SLOTS {
            break;
        }
        level = next;
    }
    tags.into_iter()
        .enumerate()
        .map(|(slot, t)| {
            t.unwrap_or_else(|| {
                panic!("no alphanumeric tag of {MAX_TAG} characters for slot {slot}")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule written out, independently of `redis_protocol`.
    fn reference(key: &[u8]) -> u16 {
        let mut k = key;
        if let Some(open) = key.iter().position(|&c| c == b'{') {
            if let Some(len) = key[open + 1..].iter().position(|&c| c == b'}') {
                if len > 0 {
                    k = &key[open + 1..open + 1 + len];
                }
            }
        }
        let mut crc: u16 = 0;
        for &b in k {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc & 0x3fff
    }

    #[test]
    fn known_vectors() {
        // CRC16-XMODEM("123456789") = 0x31C3; the others are `CLUSTER KEYSLOT` answers.
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b"foo{hash_tag}"), 2515);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"8xjx7vWrfPq54mKfFD3Y1CcjjofpnAcQ"), 5458);
    }

    #[test]
    fn hash_tags_follow_the_first_pair_only() {
        // Empty first tag: the whole key.
        assert_eq!(key_slot(b"foo{}{bar}"), reference(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        // From the first `{` to the first `}` after it.
        assert_eq!(key_slot(b"foo{{bar}}"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"{hash_tag}"), key_slot(b"hash_tag"));
        // No closing brace, or a lone one: the whole key.
        for k in [&b"foo{bar"[..], b"{", b"}", b"}{", b"{}", b"a{"] {
            assert_eq!(key_slot(k), reference(k), "{k:?}");
        }
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn binary_keys_are_hashed_as_bytes() {
        let keys: [&[u8]; 5] = [
            b"\x00\xff\x80",
            b"\xc3\x28{\xfe\xff}",
            b"{\x00}",
            b"key\r\nwith\x00nul",
            &[0xff; 300],
        ];
        for k in keys {
            assert_eq!(key_slot(k), reference(k), "{k:?}");
        }
        assert_eq!(key_slot(b"\xc3\x28{\xfe\xff}"), key_slot(b"\xfe\xff"));
        // Not the slot of a lossy UTF-8 re-encoding.
        let lossy = String::from_utf8_lossy(b"\xfe\xff").into_owned();
        assert_ne!(key_slot(b"\xfe\xff"), key_slot(lossy.as_bytes()));
    }

    #[test]
    fn same_as_the_reference_on_every_short_key_over_braces() {
        let mut level: Vec<Vec<u8>> = vec![Vec::new()];
        let mut n = 0;
        for _ in 0..8 {
            let mut next = Vec::new();
            for k in &level {
                for c in b"{}ab" {
                    let mut s = k.clone();
                    s.push(*c);
                    assert_eq!(
                        key_slot(&s),
                        reference(&s),
                        "{:?}",
                        String::from_utf8_lossy(&s)
                    );
                    n += 1;
                    next.push(s);
                }
            }
            level = next;
        }
        assert_eq!(n, 87_380);
    }

    #[test]
    fn every_slot_has_a_shortest_tag_that_maps_back() {
        let mut by_len = [0usize; MAX_TAG + 1];
        for slot in 0..SLOTS as u16 {
            let tag = slot_tag(slot);
            assert!(tag.bytes().all(|b| b.is_ascii_alphanumeric()), "{tag:?}");
            assert_eq!(key_slot(tag.as_bytes()), slot, "{tag}");
            // As the hash tag of a longer key.
            let key = format!("relay:record:{{{tag}}}:source");
            assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
            by_len[tag.len()] += 1;
        }
        // Shortest: every 1-character string's slot has a 1-character tag, and so on.
        assert_eq!(by_len[1], 62);
        for a in ALPHABET {
            assert_eq!(slot_tag(key_slot(&[*a])).len(), 1);
            for b in ALPHABET {
                assert!(slot_tag(key_slot(&[*a, *b])).len() <= 2);
            }
        }
        // The counts of redis's own table (`crc16_slottable.h`).
        assert_eq!(by_len, [0, 62, 3448, 12874]);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn slot_out_of_range_panics() {
        slot_tag(16384);
    }
}
