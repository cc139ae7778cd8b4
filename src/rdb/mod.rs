//! The RDB engine: a streaming parser for every RDB version (1 to 12), and the encodings inside.
//!
//! Entry points: [`RdbParser`] (events in file order, bounded memory for big values),
//! [`decode_dump_payload`] (one `DUMP` payload), and [`json`] (the canonical JSON form used by
//! the test corpus and for debugging dumps).
//!
//! Shared vocabulary: owns the RDB format and its value model; imports nothing of the crate
//! outside `rdb`.
pub mod model;

mod collect;
pub mod crc;
mod decode;
pub mod elem;
pub mod error;
pub mod function;
pub mod intset;
pub mod json;
pub mod listpack;
pub mod lzf;
pub mod parser;
mod passthrough;
pub(crate) mod reader;
pub mod stream;
pub mod testgen;
pub mod ziplist;
pub mod zipmap;

pub use crc::{crc64, Crc64};
pub use error::{EncodingError, RdbError, RdbErrorKind};
pub use model::*;
pub use parser::{
    decode_dump_payload, decode_string_body, decode_value_body, header_version, is_valkey_version,
    key_type_of, loads_rdb, ParseOptions, ParseSummary, RdbParser, VALKEY_RDB_VERSION,
};
