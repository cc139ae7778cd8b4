//! A master process of the given binary on a free loopback port, stopped (by its own pid) when
//! dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis_relay::endpoint::Endpoint;
use redis_relay::resp::{Client, Reply};
use tempfile::TempDir;

use crate::Res;

pub struct Server {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

impl Server {
    /// Start `bin` with `config` lines, in `dir` (a fresh temporary directory if `None`; a
    /// given one may hold the `dump.rdb` to load).
    pub fn start(bin: &Path, config: &[String], dir: Option<TempDir>) -> Res<Server> {
        let dir = match dir {
            Some(d) => d,
            None => tempfile::tempdir()?,
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut conf = format!(
            "port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndaemonize no\ndir {d}\nlogfile {d}/server.log\n",
            d = dir.path().display()
        );
        for line in config {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = dir.path().join("server.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new(bin)
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut server = Server { child, port, dir };
        server.wait_ready()?;
        Ok(server)
    }

    /// Until PING answers and the dataset (if any) is loaded.
    fn wait_ready(&mut self) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log =
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
                return Err(format!("the server exited with {status}:\n{log}").into());
            }
            if let Ok(mut c) = self.client() {
                if let Ok(Reply::Bulk(Some(info))) = c.call(&["INFO", "persistence"]) {
                    if String::from_utf8_lossy(&info).contains("loading:0") {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err("the server did not come up within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::parse(&format!("redis://127.0.0.1:{}", self.port)).expect("loopback URL")
    }

    pub fn client(&self) -> Res<Client> {
        Ok(Client::connect(&self.endpoint(), Duration::from_secs(30))?)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM by pid, then wait; SIGKILL if it lingers.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
