//! The demo's servers as child processes: each in its own process group (a Ctrl-C on the
//! terminal reaches the demo alone, so the relay can drain into a target that is still up),
//! stopped when dropped (SIGTERM, then SIGKILL after [`STOP_GRACE`]) so that no server outlives
//! the demo, even on a panic.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis_relay::endpoint::Endpoint;
use redis_relay::resp::{Client, Reply};

use super::error::DemoError;

/// How long a server gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long a server gets to answer after it was started.
const START_LIMIT: Duration = Duration::from_secs(10);
/// Attempts on new ports when a port picked as free was taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// A running server, stopped when dropped.
pub struct Server {
    pub name: String,
    pub port: u16,
    pub log: PathBuf,
    child: Child,
}

impl Server {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn endpoint(&self) -> Endpoint {
        loopback(self.port)
    }

    /// Send SIGTERM (the server starts exiting; [`Server::wait_or_kill`] finishes).
    pub fn terminate(&self) {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if sent.is_err() {
            // No `kill` program: SIGKILL comes after the grace period anyway.
            tracing::debug!("cannot run kill for {}", self.name);
        }
    }

    /// Wait until the process exited or `deadline` passed, then SIGKILL it if it still runs.
    pub fn wait_or_kill(&mut self, deadline: Instant) {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = self.child.try_wait() {
            tracing::warn!(
                "{} did not exit within {STOP_GRACE:?} of SIGTERM: killed",
                self.name
            );
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
            self.wait_or_kill(Instant::now() + STOP_GRACE);
        }
    }
}

/// Stop several servers at once: SIGTERM to all, then one grace period for all.
pub fn stop_all(servers: &mut [Server]) {
    for s in servers.iter() {
        s.terminate();
    }
    let deadline = Instant::now() + STOP_GRACE;
    for s in servers.iter_mut() {
        s.wait_or_kill(deadline);
    }
}

fn loopback(port: u16) -> Endpoint {
    Endpoint::parse(&format!("redis://127.0.0.1:{port}")).expect("a loopback URL parses")
}

/// A loopback port that was free a moment ago (bound with port 0: the OS picks it).
pub fn free_port() -> Result<u16, DemoError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(DemoError::NoPort)
}

/// `redis-server` on a free port with `save ""`, no AOF, its data and log in `dir`, and the
/// `extra` config lines.
pub fn start_redis(
    bin: &Path,
    name: &str,
    dir: &Path,
    extra: &[&str],
) -> Result<Server, DemoError> {
    let mut last = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port()?;
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndaemonize no\ndir {dir}\nlogfile {dir}/redis.log\n",
            dir = dir.display()
        );
        for line in extra {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = dir.join("redis.conf");
        std::fs::write(&conf_path, conf).map_err(|cause| DemoError::Write {
            path: conf_path.clone(),
            cause,
        })?;
        let child = spawn(Command::new(bin).arg(&conf_path), name)?;
        let server = Server {
            name: name.to_string(),
            port,
            log: dir.join("redis.log"),
            child,
        };
        match wait_up(server, |c| {
            matches!(c.call(&["PING"]), Ok(Reply::Simple(_)))
        }) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(DemoError::NotUp {
        what: name.to_string(),
        detail: last,
    })
}

/// `nutcracker` with the config `yaml(listen_port)` written to `dir/nutcracker.yml`, its stats
/// on another free port, log and pid file in `dir`; up once a GET through it is answered.
pub fn start_nutcracker(
    bin: &Path,
    dir: &Path,
    yaml: impl Fn(u16) -> String,
) -> Result<(Server, PathBuf), DemoError> {
    let mut last = String::new();
    let config = dir.join("nutcracker.yml");
    for _ in 0..PORT_ATTEMPTS {
        let (port, stats) = (free_port()?, free_port()?);
        std::fs::write(&config, yaml(port)).map_err(|cause| DemoError::Write {
            path: config.clone(),
            cause,
        })?;
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&config).args(["-a", "127.0.0.1", "-s"]);
        cmd.arg(stats.to_string())
            .arg("-o")
            .arg(dir.join("nutcracker.log"))
            .arg("-p")
            .arg(dir.join("nutcracker.pid"));
        let server = Server {
            name: "nutcracker".into(),
            port,
            log: dir.join("nutcracker.log"),
            child: spawn(&mut cmd, "nutcracker")?,
        };
        let up = |c: &mut Client| matches!(c.call(&["GET", "demo:probe"]), Ok(Reply::Bulk(_)));
        match wait_up(server, up) {
            Ok(s) => return Ok((s, config)),
            Err(e) => last = e,
        }
    }
    Err(DemoError::NotUp {
        what: "nutcracker".into(),
        detail: last,
    })
}

fn spawn(cmd: &mut Command, name: &str) -> Result<Child, DemoError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|cause| DemoError::Spawn {
            what: name.to_string(),
            cause,
        })
}

/// The server once `ready` holds on a connection to it; its log's tail when it exits first or
/// does not answer within [`START_LIMIT`] (the server is stopped then).
fn wait_up(mut server: Server, ready: impl Fn(&mut Client) -> bool) -> Result<Server, String> {
    let deadline = Instant::now() + START_LIMIT;
    let ep = loopback(server.port);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(format!(
                "exited with {status}; {}: {}",
                server.log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ));
        }
        if let Ok(mut c) = Client::connect(&ep, Duration::from_secs(1)) {
            if ready(&mut c) {
                return Ok(server);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no answer within {START_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
