//! The link's [`LinkSink`]: everything the master sends goes into the source's spool.

use std::sync::Arc;

use bytes::Bytes;

use crate::source::LinkSink;
use crate::spool::{Spool, SpoolRecord};

pub struct SpoolSink {
    pub spool: Arc<Spool>,
    pub source: String,
}

impl SpoolSink {
    fn put(&self, rec: SpoolRecord) -> std::io::Result<()> {
        self.spool.push(rec).map_err(std::io::Error::other)
    }
}

impl LinkSink for SpoolSink {
    fn full_resync(&mut self, replid: &str, offset: Option<u64>) -> std::io::Result<()> {
        self.put(SpoolRecord::FullResync {
            replid: replid.to_string(),
            offset,
        })
    }

    fn partial_resync(&mut self, replid: &str, offset: u64) -> std::io::Result<()> {
        self.put(SpoolRecord::PartialResync {
            replid: replid.to_string(),
            offset,
        })
    }

    fn rdb_data(&mut self, data: &[u8]) -> std::io::Result<()> {
        metrics::counter!("redis_relay_bytes_received_total", "source" => self.source.clone())
            .increment(data.len() as u64);
        self.put(SpoolRecord::RdbData(Bytes::copy_from_slice(data)))
    }

    fn rdb_end(&mut self) -> std::io::Result<()> {
        self.put(SpoolRecord::RdbEnd)
    }

    fn stream_data(&mut self, data: &[u8]) -> std::io::Result<()> {
        metrics::counter!("redis_relay_bytes_received_total", "source" => self.source.clone())
            .increment(data.len() as u64);
        self.put(SpoolRecord::StreamData(Bytes::copy_from_slice(data)))
    }
}
