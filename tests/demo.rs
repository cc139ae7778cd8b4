//! `redis-relay demo` as a newcomer runs it: the binary as a child process, its output in a
//! file. It must start its servers on the ports it prints, sync the preloaded keys and live
//! writes into the target, serve metrics, and on Ctrl-C (SIGINT) exit 0 with every server
//! stopped and its temp dir removed; without the programs it needs, say what to install.

mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{http_get, keys_outside_prefix, port_open, wait_until, Client};

/// The relay's own keys (records, heartbeats): not the data being copied.
const RELAY_PREFIX: &str = "redis-relay:";

/// The demo process; SIGINT, then SIGKILL, when dropped (a failing test leaves no demo behind).
struct Demo {
    child: Child,
    log: PathBuf,
}

impl Demo {
    fn start(args: &[&str], log_dir: &Path) -> Demo {
        let log = log_dir.join("demo.log");
        let out = File::create(&log).expect("demo log");
        let err = out.try_clone().expect("demo log");
        let child = Command::new(env!("CARGO_BIN_EXE_redis-relay"))
            .arg("demo")
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("REDIS_RELAY_TARGET")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn redis-relay demo");
        Demo { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// The exit code once it exited, within `limit`.
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal("INT");
            if self.wait(Duration::from_secs(20)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// What the demo printed before the sync.
#[derive(Debug)]
struct Printed {
    dir: PathBuf,
    masters: Vec<u16>,
    target: u16,
    proxy: u16,
    metrics: u16,
}

impl Printed {
    fn ports(&self) -> Vec<u16> {
        let mut p = self.masters.clone();
        p.extend([self.target, self.proxy, self.metrics]);
        p
    }
}

/// The port of the `127.0.0.1:PORT` on the line starting with `label`.
fn port_on(out: &str, label: &str) -> Option<u16> {
    let line = out.lines().find(|l| l.trim_start().starts_with(label))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("127.0.0.1:"))?
        .parse()
        .ok()
}

/// The addresses, once the whole guide (up to its Ctrl-C line) is printed.
fn parse(out: &str) -> Option<Printed> {
    if !out.contains("Ctrl-C to stop") {
        return None;
    }
    let dir = out
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("temp dir"))?
        .trim();
    Some(Printed {
        dir: PathBuf::from(dir),
        masters: vec![port_on(out, "master 1")?, port_on(out, "master 2")?],
        target: port_on(out, "target")?,
        proxy: port_on(out, "nutcracker")?,
        metrics: port_on(out, "metrics")?,
    })
}

fn printed(demo: &Demo) -> Printed {
    let mut found = None;
    wait_until(Duration::from_secs(60), || {
        found = parse(&demo.output());
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no guide printed:\n{}", demo.output()))
}

fn data_keys(port: u16) -> i64 {
    keys_outside_prefix(&mut Client::connect(port).expect("connect"), RELAY_PREFIX)
}

#[test]
fn demo_syncs_then_stops_everything_on_ctrl_c() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut demo = Demo::start(&["--keys", "20000"], tmp.path());
    let p = printed(&demo);
    assert!(p.dir.is_dir(), "{} missing", p.dir.display());
    assert!(p.dir.join("nutcracker.yml").is_file());
    let on_masters = || p.masters.iter().map(|&m| data_keys(m)).sum::<i64>();
    assert!(on_masters() >= 20_000, "preload: {}", on_masters());
    // The live load keeps writing: the target catches up with the masters' key count.
    let mut last = (0, 0);
    let synced = wait_until(Duration::from_secs(60), || {
        last = (data_keys(p.target), on_masters());
        last.0 >= 20_000 && last.0 == last.1
    });
    assert!(synced, "target, masters: {last:?}\n{}", demo.output());

    let mut proxy = Client::connect(p.proxy).expect("nutcracker");
    proxy.cmd(&["SET", "demo-test:hello", "world"]);
    let mut target = Client::connect(p.target).expect("target");
    let arrived = wait_until(Duration::from_secs(10), || {
        target.cmd(&["GET", "demo-test:hello"]).as_text().as_deref() == Some("world")
    });
    assert!(
        arrived,
        "the write through nutcracker never reached the target"
    );

    // The lag gauges are published by the sampler (every 500 ms), maybe after the write.
    let mut metrics = String::new();
    let published = wait_until(Duration::from_secs(5), || {
        metrics = http_get(p.metrics, "/metrics").expect("GET /metrics");
        metrics.contains("redis_relay_lag_bytes{")
    });
    assert!(published, "{metrics}");
    let done = metrics
        .lines()
        .filter(|l| l.starts_with("redis_relay_snapshot_done{"))
        .filter(|l| l.ends_with(" 1"))
        .count();
    assert_eq!(done, 2, "both snapshots applied:\n{metrics}");

    let sent = Instant::now();
    demo.signal("INT");
    let code = demo.wait(Duration::from_secs(20));
    let out = demo.output();
    assert_eq!(code, Some(0), "exit after SIGINT:\n{out}");
    assert!(out.contains("draining and writing checkpoints"), "{out}");
    eprintln!("demo exited {:?} after SIGINT", sent.elapsed());
    for port in p.ports() {
        assert!(!port_open(port), "port {port} still accepts connections");
    }
    assert!(!p.dir.exists(), "{} still exists", p.dir.display());
}

/// Removes a kept demo dir at the end of the test, passed or failed.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn demo_keep_leaves_the_temp_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut demo = Demo::start(&["--keys", "1000", "--rate", "100", "--keep"], tmp.path());
    let p = printed(&demo);
    let _cleanup = RemoveDir(p.dir.clone());
    // At once after the guide: the signal may come during sync's prechecks, before its relay
    // listens for signals; the demo must stop all the same.
    demo.signal("INT");
    assert_eq!(
        demo.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        demo.output()
    );
    assert!(
        p.dir.join("nutcracker.yml").is_file() && p.dir.join("target/redis.log").is_file(),
        "{} not kept:\n{}",
        p.dir.display(),
        demo.output()
    );
    for port in p.ports() {
        assert!(!port_open(port), "port {port} still accepts connections");
    }
}

#[test]
fn demo_without_redis_server_says_what_to_install() {
    let empty = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_redis-relay"))
        .args(["demo", "--bin-dir"])
        .arg(empty.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run redis-relay demo");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("redis-server not found"), "{err}");
    assert!(
        err.contains("apt-get install redis-server redis-tools nutcracker"),
        "{err}"
    );
}

/// The temp dir and server ports of the demo's first log line (`in DIR: master 1 at
/// 127.0.0.1:P, ...`), once it is written.
fn started(demo: &Demo) -> (PathBuf, Vec<u16>) {
    let mut found = None;
    wait_until(Duration::from_secs(30), || {
        let out = demo.output();
        found = out.lines().find_map(|l| {
            let rest = &l[l.find(" in /")? + 4..];
            let (dir, servers) = rest.split_once(": ")?;
            let ports: Vec<u16> = servers
                .split(", ")
                .filter_map(|s| s.rsplit_once("127.0.0.1:")?.1.parse().ok())
                .collect();
            (ports.len() == 4).then(|| (PathBuf::from(dir), ports))
        });
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no servers logged:\n{}", demo.output()))
}

#[test]
fn demo_ctrl_c_during_the_preload_stops_everything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut demo = Demo::start(&["--keys", "500000"], tmp.path());
    let (dir, ports) = started(&demo);
    assert!(
        wait_until(Duration::from_secs(30), || demo
            .output()
            .contains("preloading 500000 keys")),
        "{}",
        demo.output()
    );
    demo.signal("INT");
    let code = demo.wait(Duration::from_secs(20));
    let out = demo.output();
    assert_eq!(code, Some(0), "{out}");
    // The preload of 500000 keys takes over a second: the signal lands in it.
    assert!(out.contains("interrupted before the sync"), "{out}");
    for port in ports {
        assert!(!port_open(port), "port {port} still accepts connections");
    }
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[test]
fn demo_stops_everything_when_the_terminal_hangs_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut demo = Demo::start(&["--keys", "1000", "--rate", "100"], tmp.path());
    let p = printed(&demo);
    assert!(
        wait_until(Duration::from_secs(30), || http_get(p.metrics, "/metrics")
            .is_ok_and(|m| m.contains("redis_relay_snapshot_done"))),
        "{}",
        demo.output()
    );
    demo.signal("HUP");
    let code = demo.wait(Duration::from_secs(20));
    let out = demo.output();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("draining and writing checkpoints"), "{out}");
    for port in p.ports() {
        assert!(!port_open(port), "port {port} still accepts connections");
    }
    assert!(!p.dir.exists(), "{} still exists", p.dir.display());
}
