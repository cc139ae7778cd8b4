//! Running a relay in the foreground: status output until SIGTERM/SIGINT or a fatal error.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::RelayHandle;

/// Block until SIGTERM or SIGINT (then shut down gracefully: exit 0) or a fatal error (exit 1).
/// Prints a status line every 10 s (every second on a terminal).
pub fn run_until_signal(handle: &RelayHandle, quiet: bool) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tty = std::io::stderr().is_terminal();
    let period = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(10)
    };
    let outcome = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut last = Instant::now();
        let mut last_cmds = 0u64;
        loop {
            tokio::select! {
                _ = term.recv() => return Ok::<_, anyhow::Error>(None),
                _ = tokio::signal::ctrl_c() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if let Some(e) = handle.error() {
                return Ok(Some(e));
            }
            if !quiet && last.elapsed() >= period {
                let secs = last.elapsed().as_secs_f64();
                last = Instant::now();
                let status = handle.status();
                let cmds: u64 = status.iter().map(|s| s.commands_applied).sum();
                let rate = (cmds.saturating_sub(last_cmds)) as f64 / secs;
                last_cmds = cmds;
                let parts: Vec<String> = status
                    .iter()
                    .map(|s| {
                        if s.snapshot_done {
                            format!("{} {} lag {} B", s.source, s.state, s.lag_bytes)
                        } else {
                            let total = s
                                .rdb_bytes_total
                                .map(|t| format!("/{t}"))
                                .unwrap_or_default();
                            format!(
                                "{} {} snapshot {}{total} B",
                                s.source, s.state, s.rdb_bytes_loaded
                            )
                        }
                    })
                    .collect();
                let errors: u64 = status.iter().map(|s| s.target_errors).sum();
                let line = format!(
                    "{} | {rate:.0} cmd/s | {errors} target errors",
                    parts.join(" | ")
                );
                if tty {
                    eprint!("\r\x1b[2K{line}");
                } else {
                    tracing::info!("{line}");
                }
            }
        }
    });
    if tty && !quiet {
        eprintln!();
    }
    match outcome? {
        None => {
            tracing::info!("signal received: draining and writing checkpoints");
            handle.shutdown(Duration::from_secs(8))?;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Some(e) => {
            tracing::error!("stopping: {e}");
            let _ = handle.shutdown(Duration::from_secs(5));
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
