//! One relay per state dir: an exclusive lock on `<state dir>/relay.lock`, held for the life
//! of the process.
//!
//! Two relays on one state dir would both resume from the same checkpoints and both write the
//! same records on the target: each would skip what the other applied, and a batch could be
//! lost or doubled. The lock is a `flock` (`File::try_lock`), so the kernel releases it when the
//! holder dies however it dies (SIGKILL included): a lock file left behind never blocks a
//! restart. The file holds the holder's PID for the error message only.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in the state dir.
pub const LOCK_FILE: &str = "relay.lock";

/// Why the state dir could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the state dir {} is in use by another relay (PID {pid}, see {}): one relay per state dir; stop it or give another --state-dir", dir.display(), dir.join(LOCK_FILE).display())]
    Held { dir: PathBuf, pid: String },
    #[error("cannot lock the state dir {}: {cause}", dir.display())]
    Io { dir: PathBuf, cause: std::io::Error },
}

/// The held lock: dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Take the lock of `dir` (which exists) without waiting, and write our PID into it.
    pub fn acquire(dir: &Path) -> Result<StateLock, LockError> {
        let io = |cause| LockError::Io {
            dir: dir.to_path_buf(),
            cause,
        };
        // Not truncated on open: until we hold the lock, the PID in it is the holder's.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = match pid.trim() {
                    "" => "unknown".to_string(),
                    p => p.to_string(),
                };
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    pid,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_released_one_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let pid = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        // flock locks belong to the open file description: a second open in the same
        // process conflicts like another process would.
        match StateLock::acquire(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        // The file stays behind (as after a SIGKILL): it does not block.
        let _again = StateLock::acquire(dir.path()).unwrap();
    }
}
