//! The settings of a [`LiveReader`](super::LiveReader) and their defaults.
//!
//! Kept apart from the reader so that callers (the `verify` command line, tests) can build
//! options without pulling in anything about connections or replies.

use std::time::Duration;

use bytes::Bytes;

/// Elements per window/scan page when a value is read in pieces.
pub const DEFAULT_WINDOW: usize = 1000;
/// Keys per `SCAN` page (and so per pipelined read batch).
pub const DEFAULT_SCAN_COUNT: usize = 1000;

/// Settings of the reader.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Elements per window / scan page of a big value.
    pub window: usize,
    /// `SCAN ... COUNT` (keys per batch).
    pub scan_count: usize,
    /// Keys starting with one of these are left out (e.g. the relay's own `redis-relay:`).
    pub ignore_prefixes: Vec<Bytes>,
    /// Socket read timeout.
    pub timeout: Duration,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            window: DEFAULT_WINDOW,
            scan_count: DEFAULT_SCAN_COUNT,
            ignore_prefixes: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }
}

impl ReadOptions {
    /// Whether `key` is excluded by [`ReadOptions::ignore_prefixes`].
    pub fn ignored(&self, key: &[u8]) -> bool {
        self.ignore_prefixes.iter().any(|p| key.starts_with(p))
    }
}
