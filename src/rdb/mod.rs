//! The RDB engine: a streaming parser for every RDB version (1 to 12), and the encodings inside.
pub mod model;

pub use model::*;
