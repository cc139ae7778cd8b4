//! The snapshot part of a spool as a `Read`: RDB payload records until the end record.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};

use crate::spool::{Spool, SpoolRecord};

pub struct SpoolRdbReader {
    spool: Arc<Spool>,
    stop: Arc<AtomicBool>,
    current: Bytes,
    ended: bool,
    /// A record that interrupted the snapshot (a new full resync after a reconnect): the
    /// caller processes it next.
    pub interrupted_by: Option<SpoolRecord>,
    pub bytes: u64,
}

impl SpoolRdbReader {
    pub fn new(spool: Arc<Spool>, stop: Arc<AtomicBool>) -> Self {
        SpoolRdbReader {
            spool,
            stop,
            current: Bytes::new(),
            ended: false,
            interrupted_by: None,
            bytes: 0,
        }
    }

    /// Skip to the end record (the parser stops at the RDB trailer; nothing may follow, but a
    /// corrupt transfer must not leave payload bytes to be read as commands).
    pub fn drain(&mut self) -> std::io::Result<u64> {
        let mut left = 0u64;
        let mut buf = [0u8; 8192];
        loop {
            let n = self.read(&mut buf)?;
            if n == 0 {
                return Ok(left);
            }
            left += n as u64;
        }
    }
}

impl Read for SpoolRdbReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            if self.stop.load(Ordering::Acquire) {
                return Err(std::io::Error::other("shutting down during the snapshot"));
            }
            match self
                .spool
                .pop(Duration::from_millis(200))
                .map_err(std::io::Error::other)?
            {
                Some(SpoolRecord::RdbData(b)) => self.current = b,
                Some(SpoolRecord::RdbEnd) => self.ended = true,
                Some(other) => {
                    self.interrupted_by = Some(other);
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "the snapshot transfer was interrupted (the link reconnected)",
                    ));
                }
                None => {
                    if self.spool.is_finished() {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        self.bytes += n as u64;
        Ok(n)
    }
}
