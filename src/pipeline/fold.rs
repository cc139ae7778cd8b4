//! Commands folded into one for the target: the same effect, fewer commands to run.
//!
//! - [`StringRun`]: consecutive plain string keys of one writer and database (the snapshot's
//!   strings, the stream's `SET key value`s) as one `MSET`.
//! - [`ListRun`]: consecutive `LPUSH`es (or `RPUSH`es) of the stream to one list as one
//!   variadic push: `LPUSH k a b` then `LPUSH k c` leave the list `LPUSH k a b c` leaves.
//!
//! A target spends part of a small command's CPU on running a command at all (parsing, call,
//! propagation, statistics; a fifth of a new string key's in `benches/target_cost.rs`), and a
//! push run looks its list up once, so a run costs it less than its commands one by one
//! (docs/performance.md: the target's CPU per op in the catch-up). The dispatcher keeps at
//! most one run (or open buffer) per pending batch and seals it before anything else joins
//! the batch, so the batch keeps the order of its commands.

use bytes::{Bytes, BytesMut};

use crate::batch::Op;
use crate::resp::encode::encode_bulk;

/// Room left at the front of a [`StringRun`]'s buffer for its command header, which is
/// known only when the run is sealed (`*<2n+1>\r\n$4\r\nMSET\r\n`: at most 23 bytes).
pub(crate) const RUN_GAP: usize = 24;

/// One writer's plain string keys waiting for their `MSET`: the key/value arguments,
/// encoded once, after [`RUN_GAP`] bytes where the header goes when sealed (no copy).
#[derive(Default)]
pub(crate) struct StringRun {
    args: BytesMut,
    pub(crate) keys: u32,
    pub(crate) db: u32,
    /// The keys are the stream's `SET`s (each a command of the source: the op counts them,
    /// and is replayable), not the snapshot's.
    pub(crate) stream: bool,
}

impl StringRun {
    /// The `SET` (one key) or `MSET` header of `keys` keys, and its length.
    fn header(keys: u32) -> ([u8; RUN_GAP], usize) {
        use std::io::Write;
        let mut h = [0u8; RUN_GAP];
        let mut w = &mut h[..];
        // Cannot fail: the longest header (u32::MAX keys) is 23 bytes.
        let _ = if keys == 1 {
            w.write_all(b"*3\r\n$3\r\nSET\r\n")
        } else {
            write!(w, "*{}\r\n$4\r\nMSET\r\n", 1 + 2 * u64::from(keys))
        };
        let len = RUN_GAP - w.len();
        (h, len)
    }

    /// The run as one op (`None` when empty), leaving it empty: with `release`, giving its
    /// whole buffer away.
    pub(crate) fn seal(&mut self, release: bool) -> Option<Op> {
        if self.keys == 0 {
            return None;
        }
        let (h, len) = Self::header(self.keys);
        let at = RUN_GAP - len;
        self.args[at..RUN_GAP].copy_from_slice(&h[..len]);
        let buf = if release {
            std::mem::take(&mut self.args)
        } else {
            self.args.split()
        };
        let mut op = Op::new(self.db, buf.freeze().slice(at..), 1);
        if self.stream {
            op.folded = self.keys - 1;
            op.replayable = true;
        }
        self.keys = 0;
        Some(op)
    }

    /// Add `key` = `value` (in `db`, which the caller made the run's); returns the bytes added.
    pub(crate) fn push(
        &mut self,
        db: u32,
        key: &[u8],
        value: &[u8],
        slack: usize,
        stream: bool,
    ) -> usize {
        let before = self.args.len();
        if self.keys == 0 {
            self.db = db;
            self.stream = stream;
            self.args
                .reserve(RUN_GAP + key.len() + value.len() + 32 + slack);
            self.args.extend_from_slice(&[0; RUN_GAP]);
        }
        encode_bulk(&mut self.args, key);
        encode_bulk(&mut self.args, value);
        self.keys += 1;
        self.args.len() - before
    }
}

/// One writer's consecutive pushes to one list of the stream, waiting for their variadic
/// command: the elements, encoded once; the header (name, key) is written when sealed.
#[derive(Default)]
pub(crate) struct ListRun {
    elements: BytesMut,
    /// Elements in the run.
    pub(crate) count: u32,
    /// The source's commands folded into it.
    commands: u32,
    pub(crate) db: u32,
    /// `LPUSH` or `RPUSH`.
    pub(crate) name: &'static [u8],
    pub(crate) key: Bytes,
}

impl ListRun {
    /// The push command named `name` (`LPUSH` or `RPUSH`, upper case) if `args` (name, key,
    /// elements) is one: what a run can hold.
    pub(crate) fn push_name(name: &[u8], args: &[Bytes]) -> Option<&'static [u8]> {
        if args.len() < 3 {
            return None;
        }
        match name {
            b"LPUSH" => Some(b"LPUSH"),
            b"RPUSH" => Some(b"RPUSH"),
            _ => None,
        }
    }

    /// Whether a push of `name` to `key` in `db` continues this run (an empty run continues
    /// nothing: the caller starts it).
    pub(crate) fn continues(&self, db: u32, name: &[u8], key: &[u8]) -> bool {
        self.count > 0 && self.db == db && self.name == name && self.key == key
    }

    /// Add one command's elements (the run is empty, or [`Self::continues`] said yes);
    /// returns the bytes added.
    pub(crate) fn push(
        &mut self,
        db: u32,
        name: &'static [u8],
        key: &Bytes,
        elements: &[Bytes],
    ) -> usize {
        let before = self.elements.len();
        if self.count == 0 {
            self.db = db;
            self.name = name;
            self.key = key.clone();
            self.commands = 0;
        }
        for e in elements {
            encode_bulk(&mut self.elements, e);
        }
        self.count += elements.len() as u32;
        self.commands += 1;
        self.elements.len() - before
    }

    /// The run as one op (`None` when empty), leaving it empty. Not replayable: a push
    /// adds to what is there.
    pub(crate) fn seal(&mut self) -> Option<Op> {
        if self.count == 0 {
            return None;
        }
        let mut payload = BytesMut::with_capacity(self.elements.len() + self.key.len() + 32);
        payload.extend_from_slice(format!("*{}\r\n", 2 + u64::from(self.count)).as_bytes());
        encode_bulk(&mut payload, self.name);
        encode_bulk(&mut payload, &self.key);
        payload.extend_from_slice(&self.elements);
        self.elements.clear();
        let mut op = Op::new(self.db, payload.freeze(), 1);
        op.folded = self.commands - 1;
        self.count = 0;
        self.commands = 0;
        Some(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_headers_fit_their_gap() {
        for keys in [1, 2, 9, 10, 512, u32::MAX] {
            let (h, len) = StringRun::header(keys);
            assert!(len < RUN_GAP);
            let text = String::from_utf8_lossy(&h[..len]).into_owned();
            let want = if keys == 1 {
                "*3\r\n$3\r\nSET\r\n".to_string()
            } else {
                format!("*{}\r\n$4\r\nMSET\r\n", 1 + 2 * u64::from(keys))
            };
            assert_eq!(text, want);
        }
    }

    #[test]
    fn a_list_run_is_one_variadic_push_counting_its_commands() {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let mut run = ListRun::default();
        let key = b("q");
        assert!(
            !run.continues(0, b"LPUSH", b"q"),
            "an empty run continues nothing"
        );
        run.push(0, b"LPUSH", &key, &[b("a"), b("b")]);
        assert!(run.continues(0, b"LPUSH", b"q"));
        assert!(!run.continues(0, b"RPUSH", b"q"), "another direction");
        assert!(!run.continues(1, b"LPUSH", b"q"), "another database");
        assert!(!run.continues(0, b"LPUSH", b"r"), "another list");
        run.push(0, b"LPUSH", &key, &[b("c")]);
        let op = run.seal().expect("a run");
        assert_eq!(
            &op.payload[..],
            b"*5\r\n$5\r\nLPUSH\r\n$1\r\nq\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
        );
        assert_eq!((op.replies, op.folded, op.replayable), (1, 1, false));
        assert!(run.seal().is_none(), "sealing empties the run");
        assert_eq!(
            ListRun::push_name(b"RPUSH", &[b("RPUSH"), b("k"), b("x")]),
            Some(&b"RPUSH"[..])
        );
        assert_eq!(
            ListRun::push_name(b"LPUSHX", &[b("LPUSHX"), b("k"), b("x")]),
            None
        );
        assert_eq!(ListRun::push_name(b"LPUSH", &[b("LPUSH"), b("k")]), None);
    }
}
