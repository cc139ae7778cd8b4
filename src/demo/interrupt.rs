//! Signals while the demo runs. Ctrl-C and SIGTERM during the setup (before `sync` watches for
//! them itself): the handlers are installed first thing, so a signal during the preload sets a
//! flag the setup checks instead of killing the process with its servers still running (they
//! are in their own process groups and would not see the terminal's Ctrl-C). SIGHUP (the
//! terminal closed) is turned into a SIGTERM to this process, so that `sync` drains and the
//! demo stops its servers then too, instead of dying and leaving them behind.
//!
//! `sync` listens for signals only once its relay runs: a Ctrl-C during its prechecks would be
//! lost (this handler has replaced the default one that would have ended the process). So after
//! the first signal, a SIGTERM is sent to this process every [`RESEND`] until it exits: `sync`
//! sees one as soon as it listens, and once it drains, further ones go unheard (it no longer
//! listens, and no handler ends the process).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// How often the first signal is repeated as a SIGTERM until the process exits.
const RESEND: Duration = Duration::from_secs(1);

/// Set once SIGINT, SIGTERM or SIGHUP arrived.
#[derive(Clone)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Install the handlers now and watch for signals on a thread of its own.
    pub fn watch() -> std::io::Result<Interrupt> {
        let flag = Arc::new(AtomicBool::new(false));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let signals = {
            let _in_rt = rt.enter();
            [
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
                signal(SignalKind::hangup())?,
            ]
        };
        let set = flag.clone();
        std::thread::spawn(move || rt.block_on(watch_loop(signals, &set)));
        Ok(Interrupt(flag))
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Wait for the first signal, set `flag`, then send this process a SIGTERM every [`RESEND`]
/// (at once after a SIGHUP, which `sync` does not listen for).
async fn watch_loop([mut int, mut term, mut hup]: [Signal; 3], flag: &AtomicBool) {
    let hangup = tokio::select! {
        _ = int.recv() => false,
        _ = term.recv() => false,
        _ = hup.recv() => true,
    };
    flag.store(true, Ordering::SeqCst);
    if !hangup {
        tokio::time::sleep(RESEND).await;
    }
    loop {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(std::process::id().to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        tokio::time::sleep(RESEND).await;
    }
}
