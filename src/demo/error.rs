//! What can go wrong while the demo sets itself up: each error says what to do about it.

use std::path::PathBuf;

/// A failure of the demo's own steps (the relay's failures are `sync`'s, reported by it).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "{program} not found (looked in {looked}): install it with `apt-get install redis-server redis-tools nutcracker` (or point --bin-dir at the directory holding it)"
    )]
    MissingBinary {
        program: &'static str,
        looked: String,
    },
    #[error("cannot create the demo's temp dir {path}: {cause}")]
    TempDir {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot start {what}: {cause}")]
    Spawn { what: String, cause: std::io::Error },
    #[error("{what} did not come up: {detail}")]
    NotUp { what: String, detail: String },
    #[error("cannot find a free loopback port: {0}")]
    NoPort(std::io::Error),
    #[error("preload into {server}: {detail}")]
    Preload { server: String, detail: String },
    #[error("the demo's nutcracker config: {0}")]
    Config(String),
    #[error("interrupted before the sync started")]
    Interrupted,
}
