//! Durable per-source state: where to resume with PSYNC after a restart.
//!
//! Written only once the source's snapshot is entirely acknowledged by the target, and only
//! with an applied offset (never ahead of the target), at a transaction boundary. The write is
//! atomic: a temp file, fsync, rename, fsync of the directory.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// `host:port` of the master.
    pub source: String,
    /// The master's replication id.
    pub replid: String,
    /// Every stream byte up to this offset is applied on the target.
    pub offset: u64,
    /// The database selected at `offset` (a master does not repeat SELECT after +CONTINUE).
    pub db: u32,
    /// Writers at the time (the key partitioning depends on it).
    pub writers: usize,
    /// The generation of the source's marker key on the target once everything up to
    /// `offset` was acknowledged (`pipeline::source_loop::target_loss`): a target holding an
    /// older one, or none, lost what it acknowledged. `None` in checkpoints of earlier
    /// versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_marker: Option<u64>,
}

/// The checkpoint file of `source` under `state_dir`.
pub fn path_for(state_dir: &Path, source: &str) -> PathBuf {
    let safe = crate::endpoint::file_stem(source);
    state_dir.join(format!("{safe}.checkpoint.json"))
}

pub fn load(state_dir: &Path, source: &str) -> std::io::Result<Option<Checkpoint>> {
    let path = path_for(state_dir, source);
    match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data).map(Some).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn save(state_dir: &Path, cp: &Checkpoint) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let path = path_for(state_dir, &cp.source);
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(cp).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    if let Ok(dir) = File::open(state_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Forget a source's checkpoint (a full sync started: the old position is meaningless).
pub fn remove(state_dir: &Path, source: &str) -> std::io::Result<()> {
    match std::fs::remove_file(path_for(state_dir, source)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), "127.0.0.1:6379").unwrap(), None);
        let cp = Checkpoint {
            source: "127.0.0.1:6379".into(),
            replid: "a".repeat(40),
            offset: 12345,
            db: 3,
            writers: 2,
            target_marker: Some(7),
        };
        save(dir.path(), &cp).unwrap();
        assert_eq!(load(dir.path(), "127.0.0.1:6379").unwrap(), Some(cp));
        remove(dir.path(), "127.0.0.1:6379").unwrap();
        assert_eq!(load(dir.path(), "127.0.0.1:6379").unwrap(), None);
    }

    #[test]
    fn checkpoints_of_earlier_versions_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{"source":"s:1","replid":"r","offset":5,"db":0,"writers":2}"#;
        std::fs::write(path_for(dir.path(), "s:1"), old).unwrap();
        let cp = load(dir.path(), "s:1").unwrap().unwrap();
        assert_eq!((cp.offset, cp.target_marker), (5, None));
    }
}
