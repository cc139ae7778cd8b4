//! Keys shown to people.
//!
//! Keys are binary; reports and error messages quote them the way `redis-cli` does, so that
//! any key can be printed on one line and recognised (used by the reader and by `compare`).

/// A key for people: printable ASCII as is, everything else as `\xNN` (like redis-cli).
pub fn escape_key(k: &[u8]) -> String {
    let mut s = String::with_capacity(k.len() + 2);
    s.push('"');
    for &b in k {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escaped() {
        assert_eq!(
            escape_key(b"a\x00b\r\n\"\xff"),
            "\"a\\x00b\\r\\n\\\"\\xff\""
        );
    }
}
