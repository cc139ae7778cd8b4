//! The demo's temp dir (servers' data and logs, `nutcracker.yml`, the relay's state dir),
//! removed when dropped unless kept, so that a panic leaves nothing behind either.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::DemoError;

pub struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    /// A new directory under the system temp dir, named after this process.
    pub fn create(keep: bool) -> Result<WorkDir, DemoError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "redis-relay-demo-{}-{nanos:08x}",
            std::process::id()
        ));
        std::fs::create_dir(&path).map_err(|cause| DemoError::TempDir {
            path: path.clone(),
            cause,
        })?;
        Ok(WorkDir { path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory, created.
    pub fn subdir(&self, name: &str) -> Result<PathBuf, DemoError> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).map_err(|cause| DemoError::TempDir {
            path: p.clone(),
            cause,
        })?;
        Ok(p)
    }

    pub fn kept(&self) -> bool {
        self.keep
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            if let Err(e) = std::fs::remove_dir_all(&self.path) {
                tracing::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}
