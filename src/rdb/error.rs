//! Errors of the RDB engine.
//!
//! Every error carries the byte offset in the input where it was detected and, when it happened
//! inside a key, the key (escaped) and its RDB type, because an operator facing a failed full
//! sync of a multi-gigabyte snapshot needs to know *where* and *what* without re-parsing.

use bytes::Bytes;
use std::fmt;

/// Boxed error returned by an event handler; it aborts the parse and is passed through.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong.
#[derive(Debug)]
pub enum RdbErrorKind {
    /// The input ended before the structure was complete.
    UnexpectedEof,
    /// The bytes do not form a valid RDB structure.
    Corrupt(String),
    /// A compact encoding inside a value (ziplist, listpack, intset, zipmap, stream node, LZF
    /// string) is malformed; rendered like [`RdbErrorKind::Corrupt`].
    Encoding(EncodingError),
    /// A valid but unsupported construct (e.g. pre-GA module values).
    Unsupported(String),
    /// The CRC64 trailer does not match the content.
    Checksum { stored: u64, computed: u64 },
    /// The underlying reader failed.
    Io(std::io::Error),
    /// The event handler returned an error.
    Handler(HandlerError),
}

impl From<EncodingError> for RdbErrorKind {
    fn from(e: EncodingError) -> Self {
        RdbErrorKind::Encoding(e)
    }
}

/// What is wrong in a compact encoding (ziplist, listpack, intset, zipmap, stream node, LZF
/// string). Offsets are inside the blob; the parser adds the blob's byte offset in the RDB and
/// the key ([`RdbError::encoding`]). Built only on failure, without allocating: the decoders
/// run for every value of a full sync.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodingError {
    /// The blob is shorter than its fixed header.
    #[error("{what} too short ({len} bytes)")]
    TooShort { what: &'static str, len: usize },
    /// The total size in the header differs from the blob's.
    #[error("{what} header says {header} bytes, blob has {len}")]
    SizeMismatch {
        what: &'static str,
        header: usize,
        len: usize,
    },
    /// The last byte is not the 0xff end marker.
    #[error("{what} does not end with 0xff")]
    NoEndMarker { what: &'static str },
    /// The element count in the header differs from the elements found.
    #[error("{what} header says {header} entries, found {found}")]
    CountMismatch {
        what: &'static str,
        header: usize,
        found: usize,
    },
    /// A part (`what`: "ziplist entry", "zipmap key", ...) extends past the end of the blob.
    #[error("{what} overruns its buffer at offset {offset}")]
    Overrun { what: &'static str, offset: usize },
    /// The 0xff end marker where an entry should start.
    #[error("unexpected {what} end marker at offset {offset}")]
    UnexpectedEnd { what: &'static str, offset: usize },
    #[error("invalid ziplist string encoding 0x{enc:02x}")]
    ZiplistStringEncoding { enc: u8 },
    #[error("invalid ziplist encoding 0x{enc:02x}")]
    ZiplistEncoding { enc: u8 },
    #[error("invalid listpack encoding 0x{enc:02x} at offset {offset}")]
    ListpackEncoding { enc: u8, offset: usize },
    #[error("listpack entry length overflow")]
    ListpackLengthOverflow,
    /// The integer width of an intset is not 2, 4 or 8.
    #[error("invalid intset encoding {width}")]
    IntsetEncoding { width: usize },
    #[error("intset of {len} x {width}-byte integers does not match its {data} data bytes")]
    IntsetSize {
        len: usize,
        width: usize,
        data: usize,
    },
    #[error("empty zipmap")]
    ZipmapEmpty,
    /// A length runs past the end of the zipmap.
    #[error("zipmap truncated")]
    ZipmapTruncated,
    #[error("zipmap ends after a key")]
    ZipmapNoValue,
    #[error("{count} trailing bytes after zipmap end")]
    ZipmapTrailing { count: usize },
    /// A stream node's listpack holds something else than an integer for `what`.
    #[error("stream node: {what} is not an integer")]
    StreamNotInteger { what: &'static str },
    #[error("stream node ends before {what}")]
    StreamEndsBefore { what: &'static str },
    #[error("stream node: negative {what}")]
    StreamNegative { what: &'static str },
    #[error("stream node: master entry terminator is not 0")]
    StreamTerminator,
    #[error("stream node: entry count overflow")]
    StreamCountOverflow,
    #[error("stream node: field count overflow")]
    StreamFieldCountOverflow,
    #[error("stream node: entry lp-count {lp_count} does not match {expected}")]
    StreamLpCount { lp_count: i64, expected: usize },
    #[error("stream node: elements after the last entry")]
    StreamTrailing,
    #[error("stream node: master count {master} but {found} live entries")]
    StreamLiveCount { master: usize, found: usize },
    /// An LZF-compressed string does not decompress. (Part of the message, not a `source`,
    /// like every cause here: `{e}` and `{e:#}` print it once.)
    #[error("LZF string: {0}")]
    Lzf(super::lzf::LzfError),
}

impl EncodingError {
    /// At the end of a blob (`what`) in which `found` entries were found: the header's count,
    /// when it is exact (`declared`), must be that.
    #[inline]
    pub(crate) fn check_count(
        what: &'static str,
        declared: Option<usize>,
        found: usize,
    ) -> Result<(), Self> {
        match declared {
            Some(header) if header != found => Err(EncodingError::CountMismatch {
                what,
                header,
                found,
            }),
            _ => Ok(()),
        }
    }
}

impl From<super::lzf::LzfError> for EncodingError {
    fn from(e: super::lzf::LzfError) -> Self {
        EncodingError::Lzf(e)
    }
}

/// The key being parsed when an error happened.
#[derive(Debug, Clone)]
pub struct KeyContext {
    pub key: Bytes,
    pub rdb_type: u8,
}

/// An RDB parse error: what, at which byte offset, and in which key.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.render())]
pub struct RdbError {
    /// Byte offset in the input (from the first byte of the RDB) where the error was detected.
    pub offset: u64,
    /// The key being parsed, if any.
    pub context: Option<KeyContext>,
    pub kind: RdbErrorKind,
}

impl RdbError {
    pub(crate) fn corrupt(offset: u64, msg: impl Into<String>) -> Self {
        RdbError {
            offset,
            context: None,
            kind: RdbErrorKind::Corrupt(msg.into()),
        }
    }

    /// A malformed encoding in the blob that starts at byte `offset`.
    pub(crate) fn encoding(offset: u64, e: impl Into<EncodingError>) -> Self {
        RdbError {
            offset,
            context: None,
            kind: RdbErrorKind::Encoding(e.into()),
        }
    }

    pub(crate) fn eof(offset: u64) -> Self {
        RdbError {
            offset,
            context: None,
            kind: RdbErrorKind::UnexpectedEof,
        }
    }

    pub(crate) fn unsupported(offset: u64, msg: impl Into<String>) -> Self {
        RdbError {
            offset,
            context: None,
            kind: RdbErrorKind::Unsupported(msg.into()),
        }
    }

    pub(crate) fn io(offset: u64, e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            return Self::eof(offset);
        }
        RdbError {
            offset,
            context: None,
            kind: RdbErrorKind::Io(e),
        }
    }

    pub(crate) fn handler(offset: u64, e: HandlerError) -> Self {
        RdbError {
            offset,
            context: None,
            kind: RdbErrorKind::Handler(e),
        }
    }

    /// Attach the key context unless one is already present.
    pub(crate) fn in_key(mut self, key: &Bytes, rdb_type: u8) -> Self {
        if self.context.is_none() {
            self.context = Some(KeyContext {
                key: key.clone(),
                rdb_type,
            });
        }
        self
    }

    /// True when the input simply ended too early (e.g. a truncated transfer).
    pub fn is_eof(&self) -> bool {
        matches!(self.kind, RdbErrorKind::UnexpectedEof)
    }

    fn render(&self) -> String {
        let ctx = match &self.context {
            Some(c) => format!(
                " (key \"{}\", type {})",
                escape_bytes(&c.key, 200),
                type_name(c.rdb_type)
            ),
            None => String::new(),
        };
        match &self.kind {
            RdbErrorKind::UnexpectedEof => {
                format!("unexpected end of RDB at byte {}{}", self.offset, ctx)
            }
            RdbErrorKind::Corrupt(m) => {
                format!("corrupt RDB at byte {}{}: {}", self.offset, ctx, m)
            }
            RdbErrorKind::Encoding(e) => {
                format!("corrupt RDB at byte {}{}: {}", self.offset, ctx, e)
            }
            RdbErrorKind::Unsupported(m) => {
                format!(
                    "unsupported RDB content at byte {}{}: {}",
                    self.offset, ctx, m
                )
            }
            RdbErrorKind::Checksum { stored, computed } => format!(
                "corrupt RDB at byte {}{}: CRC64 mismatch (stored {:016x}, computed {:016x})",
                self.offset, ctx, stored, computed
            ),
            RdbErrorKind::Io(e) => format!(
                "I/O error reading RDB at byte {}{}: {}",
                self.offset, ctx, e
            ),
            RdbErrorKind::Handler(e) => {
                format!(
                    "RDB event handler failed at byte {}{}: {}",
                    self.offset, ctx, e
                )
            }
        }
    }
}

/// Escape a byte string for messages: printable ASCII as is, the rest as `\xNN`, truncated
/// after `max` input bytes (keys can be megabytes long).
pub fn escape_bytes(b: &[u8], max: usize) -> String {
    let mut s = String::with_capacity(b.len().min(max) + 2);
    for &c in b.iter().take(max) {
        match c {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(c as char),
            _ => {
                use fmt::Write;
                let _ = write!(s, "\\x{c:02x}");
            }
        }
    }
    if b.len() > max {
        s.push_str("...");
    }
    s
}

/// A human name for an RDB object type id, as used in error messages.
pub fn type_name(t: u8) -> &'static str {
    match t {
        0 => "string",
        1 => "list-linkedlist",
        2 => "set-hashtable",
        3 => "zset-skiplist",
        4 => "hash-hashtable",
        5 => "zset-skiplist-2",
        6 => "module-pre-ga",
        7 => "module-2",
        9 => "hash-zipmap",
        10 => "list-ziplist",
        11 => "set-intset",
        12 => "zset-ziplist",
        13 => "hash-ziplist",
        14 => "list-quicklist",
        15 => "stream-listpacks",
        16 => "hash-listpack",
        17 => "zset-listpack",
        18 => "list-quicklist-2",
        19 => "stream-listpacks-2",
        20 => "set-listpack",
        21 => "stream-listpacks-3",
        22 => "hash-metadata-pre-ga",
        23 => "hash-listpack-ex-pre-ga",
        24 => "hash-metadata",
        25 => "hash-listpack-ex",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdb::lzf::LzfError;

    #[test]
    fn encoding_errors_read_as_corrupt_rdb() {
        let e = RdbError::encoding(
            42,
            EncodingError::TooShort {
                what: "ziplist",
                len: 3,
            },
        )
        .in_key(&Bytes::from_static(b"k"), 10);
        assert_eq!(
            e.to_string(),
            "corrupt RDB at byte 42 (key \"k\", type list-ziplist): ziplist too short (3 bytes)"
        );
        let e = RdbError::encoding(7, LzfError::BackrefBeforeStart { offset: 5 });
        assert_eq!(
            e.to_string(),
            "corrupt RDB at byte 7: LZF string: back reference before start of output at 5"
        );
        assert_eq!(
            EncodingError::ListpackEncoding {
                enc: 0xf5,
                offset: 9
            }
            .to_string(),
            "invalid listpack encoding 0xf5 at offset 9"
        );
        // Small enough to keep the decoders' results compact.
        assert!(std::mem::size_of::<EncodingError>() <= 40);
    }
}
