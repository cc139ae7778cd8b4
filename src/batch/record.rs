//! The exactly-once record: the one place that knows how a batch's record key is named and
//! how its value is written and read.
//!
//! Every stream batch a writer sends to the target ends with
//! `SET <prefix>offset:<source>:<writer> "<replid> <end offset> <run id> <sequence>"` in
//! database 0, inside the batch's own MULTI/EXEC (or after its replayable commands on the same
//! connection): the target holds a batch and its record, or neither. That is the contract
//! exactly-once rests on, so the format is fixed: targets written by earlier versions hold
//! records in exactly this form and a restart must keep reading them.
//!
//! Two questions are asked of a record:
//! - on a restart, how far each writer got under the checkpoint's replid ([`position`]: the
//!   commands up to that offset are skipped);
//! - after a broken connection, whether a batch sent on it was applied ([`Record::covers`]).

use bytes::Bytes;

/// The prefix of the relay's own keys on the target (records, heartbeats, markers) when
/// `--key-prefix` is not given.
pub const DEFAULT_PREFIX: &str = "redis-relay:";

/// The value of a record key: how far a writer got, and which batch said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The replication id the offsets belong to.
    pub replid: String,
    /// The stream offset after the batch's last command.
    pub end: u64,
    /// The process that sent the batch (sequence numbers restart with each process).
    pub run: String,
    /// The batch's number among the batches of its writer in this process, from 1.
    pub seq: u64,
}

/// Why a value is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the record is not UTF-8")]
    NotUtf8,
    #[error(
        "the record has {found} space-separated fields instead of {expected} \
         (\"<replid> <end offset> <run id> <sequence>\")"
    )]
    Fields {
        found: usize,
        expected: &'static str,
    },
    #[error("the record's end offset {0:?} is not an unsigned integer")]
    End(String),
    #[error("the record's sequence {0:?} is not an unsigned integer")]
    Seq(String),
}

impl Record {
    /// The value to SET: `<replid> <end> <run> <seq>`, one space between fields. `replid` and
    /// `run` hold no space (a master's replid is hex, and so is [`run_id`]).
    ///
    /// [`run_id`]: crate::pipeline::dispatcher::run_id
    pub fn encode(&self) -> Bytes {
        debug_assert!(!self.replid.contains(' ') && !self.run.contains(' '));
        Bytes::from(self.to_string())
    }

    /// Read a record value: exactly four fields split on single spaces, the end offset and the
    /// sequence unsigned integers (as `u64::from_str` reads them). Nothing else is checked: the
    /// replid and the run id are compared by the callers, not validated.
    pub fn decode(value: &[u8]) -> Result<Record, RecordError> {
        let text = std::str::from_utf8(value).map_err(|_| RecordError::NotUtf8)?;
        let fields: Vec<&str> = text.split(' ').collect();
        let [replid, end, run, seq] = fields[..] else {
            return Err(RecordError::Fields {
                found: fields.len(),
                expected: "4",
            });
        };
        Ok(Record {
            replid: replid.to_string(),
            end: parse_end(end)?,
            run: run.to_string(),
            seq: seq.parse().map_err(|_| RecordError::Seq(seq.to_string()))?,
        })
    }

    /// Whether this record, read from the target, proves that the batch whose own record is
    /// `batch` was applied: same run (sequence numbers restart with each process, so another
    /// run's proves nothing) and a sequence at least as far. A writer applies its batches in
    /// order and each one overwrites the record, so a later batch's record covers the earlier
    /// ones. The replids and offsets play no part.
    pub fn covers(&self, batch: &Record) -> bool {
        self.run == batch.run && self.seq >= batch.seq
    }
}

impl std::fmt::Display for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} {}", self.replid, self.end, self.run, self.seq)
    }
}

/// The replid and end offset of a record value: its first two fields, the others not looked
/// at. Records of versions before batches carried a run id and sequence were just
/// `<replid> <end offset>`, and a restart still takes the offset from those.
pub fn position(value: &[u8]) -> Result<(&str, u64), RecordError> {
    let text = std::str::from_utf8(value).map_err(|_| RecordError::NotUtf8)?;
    let mut fields = text.split(' ');
    match (fields.next(), fields.next()) {
        (Some(replid), Some(end)) => Ok((replid, parse_end(end)?)),
        _ => Err(RecordError::Fields {
            found: 1,
            expected: "at least 2",
        }),
    }
}

fn parse_end(end: &str) -> Result<u64, RecordError> {
    end.parse().map_err(|_| RecordError::End(end.to_string()))
}

/// The record keys of `source` start with this (`<prefix>offset:<source>:`); the writer index
/// follows.
pub fn key_base(prefix: &str, source: &str) -> String {
    format!("{prefix}offset:{source}:")
}

/// The record key of `source`'s batches on `writer`.
pub fn key(prefix: &str, source: &str, writer: usize) -> String {
    format!("{}{writer}", key_base(prefix, source))
}

/// The record key of `source`'s batches in hash slot `slot` of a Redis Cluster target:
/// `<prefix>offset:<source>:slot:<slot>:{<tag>}`, where `tag` hashes to `slot`
/// (`target::cluster::slot_tag`), so the record lives, migrates and fails over with the data
/// it describes. `prefix` and `source` hold no `{` (checked when a cluster target is set up).
pub fn slot_key(prefix: &str, source: &str, slot: u16, tag: &str) -> String {
    format!("{}slot:{slot}:{{{tag}}}", key_base(prefix, source))
}

/// The record keys of `source` for writers `0..writers`.
pub fn keys(prefix: &str, source: &str, writers: usize) -> Vec<String> {
    let base = key_base(prefix, source);
    (0..writers).map(|w| format!("{base}{w}")).collect()
}

/// Writer indices probed for records when the writer count of an earlier run is unknown (or
/// may have been larger than today's).
pub const PROBED_WRITERS: usize = 256;

/// The record keys looked at to tell whether a target holds records of `source`: those of
/// `writers` writers, and at least [`PROBED_WRITERS`].
pub fn probe_keys(prefix: &str, source: &str, writers: usize) -> Vec<String> {
    keys(prefix, source, writers.max(PROBED_WRITERS))
}

/// Whether `target` holds any record of `source` (in DB 0, where records live): the relay
/// wrote this source's data there before, so its stale keys may be there too.
pub fn any_on(
    target: &mut crate::resp::Client,
    prefix: &str,
    source: &str,
    writers: usize,
) -> std::io::Result<bool> {
    use crate::resp::Reply;
    if let Reply::Error(e) = target.call(&["SELECT", "0"])? {
        return Err(std::io::Error::other(format!(
            "SELECT 0 refused: {}",
            String::from_utf8_lossy(&e)
        )));
    }
    let keys = probe_keys(prefix, source, writers);
    let mut args = vec!["EXISTS"];
    args.extend(keys.iter().map(String::as_str));
    match target.call(&args)? {
        Reply::Integer(n) => Ok(n > 0),
        other => Err(std::io::Error::other(format!(
            "EXISTS of the records: unexpected reply {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(replid: &str, end: u64, run: &str, seq: u64) -> Record {
        Record {
            replid: replid.into(),
            end,
            run: run.into(),
            seq,
        }
    }

    #[test]
    fn wire_format_is_fixed() {
        let r = rec("8a1f", 500, "18f2c3a4b5", 7);
        assert_eq!(&r.encode()[..], b"8a1f 500 18f2c3a4b5 7");
        assert_eq!(Record::decode(b"8a1f 500 18f2c3a4b5 7"), Ok(r));
        assert_eq!(
            key_base("redis-relay:", "10.0.0.1:6379"),
            "redis-relay:offset:10.0.0.1:6379:"
        );
        assert_eq!(
            key("redis-relay:", "10.0.0.1:6379", 3),
            "redis-relay:offset:10.0.0.1:6379:3"
        );
        assert_eq!(
            keys("p:", "s", 2),
            vec!["p:offset:s:0".to_string(), "p:offset:s:1".to_string()]
        );
    }

    #[test]
    fn decode_says_what_is_wrong() {
        use RecordError::*;
        assert_eq!(
            Record::decode(b"garbage"),
            Err(Fields {
                found: 1,
                expected: "4"
            })
        );
        assert_eq!(
            Record::decode(b"abc 500"),
            Err(Fields {
                found: 2,
                expected: "4"
            })
        );
        assert_eq!(
            Record::decode(b"abc 500 run 7 x"),
            Err(Fields {
                found: 5,
                expected: "4"
            })
        );
        assert_eq!(Record::decode(b"abc x run 7"), Err(End("x".into())));
        assert_eq!(Record::decode(b"abc -1 run 7"), Err(End("-1".into())));
        assert_eq!(Record::decode(b"abc 5 run 7x"), Err(Seq("7x".into())));
        assert_eq!(Record::decode(b"abc 5 run "), Err(Seq("".into())));
        assert_eq!(Record::decode(b"abc\xff 5 run 7"), Err(NotUtf8));
        let msg = Record::decode(b"abc x run 7").unwrap_err().to_string();
        assert!(msg.contains("end offset \"x\""), "{msg}");
    }

    #[test]
    fn position_reads_old_and_new_records() {
        assert_eq!(position(b"abc 500 run1 7"), Ok(("abc", 500)));
        assert_eq!(position(b"abc 500"), Ok(("abc", 500)), "before run ids");
        assert_eq!(position(b"abc 500 run1"), Ok(("abc", 500)));
        assert_eq!(position(b"abc x run1 7"), Err(RecordError::End("x".into())));
        assert!(matches!(position(b"abc"), Err(RecordError::Fields { .. })));
        assert!(matches!(position(b""), Err(RecordError::Fields { .. })));
    }

    #[test]
    fn records_cover_earlier_batches_of_the_same_run_only() {
        let have = rec("abc", 500, "run1", 7);
        assert!(have.covers(&rec("abc", 400, "run1", 6)));
        assert!(have.covers(&rec("abc", 500, "run1", 7)));
        assert!(!have.covers(&rec("abc", 600, "run1", 8)));
        assert!(
            !have.covers(&rec("abc", 400, "run2", 3)),
            "another process's sequence"
        );
    }

    /// Fields as the relay writes them: no spaces (hex in practice, anything else here).
    fn field() -> impl Strategy<Value = String> {
        "[^ ]{0,48}"
    }

    fn record() -> impl Strategy<Value = Record> {
        (field(), any::<u64>(), field(), any::<u64>()).prop_map(|(replid, end, run, seq)| Record {
            replid,
            end,
            run,
            seq,
        })
    }

    proptest! {
        #[test]
        fn round_trip(r in record()) {
            let v = r.encode();
            prop_assert_eq!(&Record::decode(&v), &Ok(r.clone()));
            prop_assert_eq!(position(&v), Ok((r.replid.as_str(), r.end)));
            prop_assert_eq!(v, Bytes::from(format!("{} {} {} {}", r.replid, r.end, r.run, r.seq)));
        }

        #[test]
        fn covers_is_same_run_and_sequence_order(a in record(), b in record(), same_run: bool) {
            let b = if same_run { Record { run: a.run.clone(), ..b } } else { b };
            prop_assert_eq!(a.covers(&b), a.run == b.run && a.seq >= b.seq);
            // A record covers itself; two records that cover each other are the same batch.
            prop_assert!(a.covers(&a));
            if a.covers(&b) && b.covers(&a) {
                prop_assert_eq!(a.seq, b.seq);
            }
        }

        #[test]
        fn covers_is_transitive(r in record(), s in any::<[u64; 3]>()) {
            let mut s = s;
            s.sort_unstable();
            let at = |seq| Record { seq, ..r.clone() };
            let (lo, mid, hi) = (at(s[0]), at(s[1]), at(s[2]));
            prop_assert!(hi.covers(&mid) && mid.covers(&lo) && hi.covers(&lo));
            prop_assert!(lo.covers(&hi) == (s[0] == s[2]));
        }

        #[test]
        fn garbage_never_panics(v in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Record::decode(&v);
            let _ = position(&v);
        }

        #[test]
        fn a_record_with_a_field_more_or_less_is_rejected(r in record(), extra in field()) {
            let more = format!("{r} {extra}");
            let is_fields_error = matches!(
                Record::decode(more.as_bytes()),
                Err(RecordError::Fields { found: 5, .. })
            );
            prop_assert!(is_fields_error);
            let less = format!("{} {} {}", r.replid, r.end, r.run);
            let is_fields_error = matches!(
                Record::decode(less.as_bytes()),
                Err(RecordError::Fields { found: 3, .. })
            );
            prop_assert!(is_fields_error);
        }
    }
}
