//! What the demo prints before the sync starts: where every server is, and what to try in
//! another terminal while the relay runs (every line copy-pasteable, with this run's ports).

use std::fmt;
use std::path::{Path, PathBuf};

/// This run's addresses and paths.
pub struct Guide {
    pub dir: PathBuf,
    pub keep: bool,
    pub masters: Vec<(u16, u64)>,
    pub target: u16,
    pub proxy: u16,
    pub config: PathBuf,
    pub metrics: u16,
    /// How to run `redis-relay` from here.
    pub program: String,
}

impl fmt::Display for Guide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self.dir.display();
        writeln!(f, "redis-relay demo")?;
        writeln!(f, "  temp dir    {dir}")?;
        for (i, (port, keys)) in self.masters.iter().enumerate() {
            writeln!(
                f,
                "  master {}    127.0.0.1:{port}  redis-server, {keys} keys preloaded",
                i + 1
            )?;
        }
        writeln!(f, "  target      127.0.0.1:{}  redis-server", self.target)?;
        writeln!(
            f,
            "  nutcracker  127.0.0.1:{}  pool alpha (murmur, ketama) over the masters: {}",
            self.proxy,
            self.config.display()
        )?;
        writeln!(
            f,
            "  metrics     127.0.0.1:{}  /metrics /status /healthz /readyz",
            self.metrics
        )?;
        self.fmt_try(f)
    }
}

impl Guide {
    /// The commands to try, and how to stop.
    fn fmt_try(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (p, t, m) = (self.proxy, self.target, self.metrics);
        writeln!(f)?;
        writeln!(f, "What to look at, in another terminal:")?;
        writeln!(
            f,
            "  redis-cli -p {p} set hello world     # a write through nutcracker..."
        )?;
        writeln!(
            f,
            "  redis-cli -p {t} get hello           # ...is on the target within milliseconds"
        )?;
        writeln!(
            f,
            "  curl -s 127.0.0.1:{m}/metrics | grep redis_relay_lag_bytes"
        )?;
        writeln!(f, "  curl -s 127.0.0.1:{m}/status")?;
        writeln!(f, "  {} status --addr 127.0.0.1:{m}", self.program)?;
        writeln!(
            f,
            "  {} verify --twemproxy {} --target redis://127.0.0.1:{t}",
            self.program,
            self.config.display()
        )?;
        writeln!(f)?;
        let end = if self.keep { "keeps" } else { "removes" };
        writeln!(
            f,
            "Ctrl-C to stop: the relay drains, checkpoints, and the demo stops its servers and {end} {}",
            self.dir.display()
        )
    }
}

/// How to run this program from the current directory: `redis-relay` when that is what `PATH`
/// finds, else its path (`./target/release/redis-relay` after `cargo run --release`).
pub fn program() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "redis-relay".into();
    };
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("redis-relay"))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok());
    if on_path.is_some_and(|p| exe.canonicalize().is_ok_and(|e| e == p)) {
        return "redis-relay".into();
    }
    relative(&exe)
}

fn relative(exe: &Path) -> String {
    match std::env::current_dir() {
        Ok(cwd) => match exe.strip_prefix(&cwd) {
            Ok(rel) => format!("./{}", rel.display()),
            Err(_) => exe.display().to_string(),
        },
        Err(_) => exe.display().to_string(),
    }
}
