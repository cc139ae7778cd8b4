//! A buffer of encoded commands with its reply count: the body of one [`Op`].
//!
//! [`Op`]: crate::batch::Op

use bytes::{Bytes, BytesMut};

use crate::resp::encode::{encode_array_header, encode_bulk, encode_bulk_header};

#[derive(Debug, Default)]
pub struct CommandBuf {
    pub payload: BytesMut,
    pub count: u32,
}

impl CommandBuf {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        crate::resp::encode_command(&mut self.payload, args);
        self.count += 1;
    }

    /// Start a command with `n` arguments; the caller then adds exactly `n` with [`Self::arg`].
    pub fn begin(&mut self, n: usize) {
        encode_array_header(&mut self.payload, n);
        self.count += 1;
    }

    pub fn arg(&mut self, a: &[u8]) {
        encode_bulk(&mut self.payload, a);
    }

    /// Add one argument made of `parts` one after the other (no buffer in between).
    pub fn arg_concat(&mut self, parts: &[&[u8]]) {
        encode_bulk_header(&mut self.payload, parts.iter().map(|p| p.len()).sum());
        for p in parts {
            self.payload.extend_from_slice(p);
        }
        self.payload.extend_from_slice(b"\r\n");
    }

    /// Append the commands of `other`.
    pub fn append(&mut self, other: &CommandBuf) {
        self.payload.extend_from_slice(&other.payload);
        self.count += other.count;
    }

    /// Forget the commands, keep the memory.
    pub fn clear(&mut self) {
        self.payload.clear();
        self.count = 0;
    }

    /// Append arguments already encoded as bulk strings (after [`Self::begin`] counted them).
    pub fn raw_args(&mut self, encoded: &[u8]) {
        self.payload.extend_from_slice(encoded);
    }

    /// Make room for `n` more bytes (one allocation for commands of a known size).
    pub fn reserve(&mut self, n: usize) {
        self.payload.reserve(n);
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn len(&self) -> usize {
        self.payload.len()
    }

    /// Take what was built, leaving the buffer empty.
    /// Move the commands out with their whole buffer, leaving nothing allocated (where many
    /// buffers each hold a little, a kept remainder would pin every one of them).
    pub fn take_all(&mut self) -> (Bytes, u32) {
        let n = std::mem::take(&mut self.count);
        (std::mem::take(&mut self.payload).freeze(), n)
    }

    pub fn take(&mut self) -> (Bytes, u32) {
        let n = std::mem::take(&mut self.count);
        (self.payload.split().freeze(), n)
    }
}

/// Format a score so that Redis parses back exactly the same double.
pub fn format_score(score: f64) -> String {
    if score == f64::INFINITY {
        "inf".into()
    } else if score == f64::NEG_INFINITY {
        "-inf".into()
    } else {
        // `{:?}` is the shortest representation that round-trips, with an exponent when that
        // is shorter (Redis reads it with strtod).
        format!("{score:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_round_trip() {
        for s in [
            0.1,
            -2.5,
            1e300,
            1e-300,
            std::f64::consts::PI,
            -0.000001,
            3.0,
            -0.0,
        ] {
            let text = format_score(s);
            assert_eq!(
                text.parse::<f64>().unwrap().to_bits(),
                s.to_bits(),
                "{text}"
            );
        }
        assert_eq!(format_score(f64::INFINITY), "inf");
    }
}
