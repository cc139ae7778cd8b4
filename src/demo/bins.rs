//! Where `redis-server` and `nutcracker` are: `--bin-dir` alone when given, else `PATH`, then
//! `/usr/sbin` and `/usr/bin` (Debian installs nutcracker in `/usr/sbin`, which a user's `PATH`
//! often lacks).

use std::path::{Path, PathBuf};

use super::error::DemoError;

/// The two programs the demo runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub redis_server: PathBuf,
    pub nutcracker: PathBuf,
}

/// Both programs, or an error naming the missing one and the packages to install.
pub fn find(bin_dir: Option<&Path>) -> Result<Binaries, DemoError> {
    let dirs = search_dirs(bin_dir);
    Ok(Binaries {
        redis_server: find_one("redis-server", &dirs)?,
        nutcracker: find_one("nutcracker", &dirs)?,
    })
}

/// The directories looked in, in order.
fn search_dirs(bin_dir: Option<&Path>) -> Vec<PathBuf> {
    if let Some(d) = bin_dir {
        return vec![d.to_path_buf()];
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.push("/usr/bin".into());
    dirs
}

fn find_one(program: &'static str, dirs: &[PathBuf]) -> Result<PathBuf, DemoError> {
    dirs.iter()
        .map(|d| d.join(program))
        .find(|p| is_executable(p))
        .ok_or_else(|| DemoError::MissingBinary {
            program,
            looked: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
