//! Helpers of the fault tests (queue-time refusals, partitions, a target out of memory or
//! paused, a source hanging mid-RDB): non-idempotent traffic on a master, waiting until the
//! relay has applied everything, and network namespaces reached over veth for real packet
//! loss with `tc` (the `blackhole` qdisc).

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Client, RedisServer, Relay};

/// Writes on a master until stopped: `INCRBY`, `RPUSH` and `APPEND` (running any of them
/// twice shows; losing one shows), pipelined in rounds.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Traffic {
    /// Start on `port` (a master), with keys named after `tag`.
    pub fn start(port: u16, tag: &'static str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), rounds.clone());
        let handle = std::thread::spawn(move || {
            let mut c = Client::connect(port).expect("connect to the master");
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let cmds: Vec<Vec<String>> = vec![
                    vec!["INCRBY".into(), format!("{tag}:c:{}", i % 13), "3".into()],
                    vec!["RPUSH".into(), format!("{tag}:l:{}", i % 31), i.to_string()],
                    vec![
                        "APPEND".into(),
                        format!("{tag}:a:{}", i % 7),
                        format!("{i},"),
                    ],
                ];
                for reply in c.pipeline(&cmds) {
                    assert!(!reply.is_error(), "{reply:?}");
                }
                i += 1;
                r.store(i, Ordering::Relaxed);
                if i.is_multiple_of(10) {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        Traffic {
            stop,
            rounds,
            handle: Some(handle),
        }
    }

    /// Rounds written so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Stop and wait for the last round; returns the rounds written.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("traffic thread");
        }
        self.rounds()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The master's replication offset.
pub fn master_offset(m: &mut Client) -> u64 {
    m.info_field("replication", "master_repl_offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Wait until the relay's applied offset of `source` reaches the master's offset (read once
/// the writes stopped). Panics with the log after `limit`.
pub fn wait_caught_up(relay: &Relay, master: &RedisServer, source: &str, limit: Duration) {
    wait_caught_up_with(relay, &mut master.client(), source, limit)
}

/// [`wait_caught_up`] with a client of the master.
pub fn wait_caught_up_with(relay: &Relay, master: &mut Client, source: &str, limit: Duration) {
    let want = master_offset(master);
    let ok = super::wait_until(limit, || {
        relay.metric("redis_relay_applied_offset", source) == Some(want as f64)
    });
    assert!(
        ok,
        "the relay did not apply up to offset {want} within {limit:?} (applied: {:?}):\n{}",
        relay.metric("redis_relay_applied_offset", source),
        relay.log_text()
    );
}

/// Run `during` (on a scoped thread) and return what it returns with the highest value the
/// gauge `name` of `source` took meanwhile, sampled every 100 ms.
pub fn peak_while<T: Send>(
    relay: &Relay,
    name: &str,
    source: &str,
    during: impl FnOnce() -> T + Send,
) -> (T, f64) {
    std::thread::scope(|s| {
        let job = s.spawn(during);
        let mut peak = 0f64;
        while !job.is_finished() {
            if let Some(v) = relay.metric(name, source) {
                peak = peak.max(v);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (job.join().expect("the fault's thread"), peak)
    })
}

/// Run a command; panics naming it (and the Debian package) when it cannot run or fails.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (package iproute2 provides ip and tc): {e}")
        });
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace joined to the host by a veth pair: the host end `10.<a>.<b>.1`, the
/// namespace end `10.<a>.<b>.2`. Packets between them can be dropped (a partition that drops,
/// not one that closes) with the `blackhole` qdisc on both ends: it discards every packet, as
/// `netem loss 100%` would (this kernel has no netem module). Named after the test process and `tag`;
/// removed when dropped. Needs root (fails loudly without it).
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

impl NetNs {
    pub fn create(tag: u8) -> NetNs {
        let pid = std::process::id();
        let name = format!("rr{}t{tag}", pid % 100_000);
        let host_if = format!("rh{}t{tag}", pid % 100_000);
        let ns_if = format!("rn{}t{tag}", pid % 100_000);
        let (a, b) = (100 + (pid % 100) as u8, tag);
        let host_ip = format!("10.{a}.{b}.1");
        let ns_ip = format!("10.{a}.{b}.2");
        // Leftovers of an earlier run with the same pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        sh("ip", &["netns", "add", &name]);
        let ns = NetNs {
            name,
            host_if,
            host_ip,
            ns_ip,
        };
        sh(
            "ip",
            &[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &ns_if,
            ],
        );
        sh("ip", &["link", "set", &ns_if, "netns", &ns.name]);
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", ns.host_ip),
                "dev",
                &ns.host_if,
            ],
        );
        sh("ip", &["link", "set", &ns.host_if, "up"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", ns.ns_ip),
            "dev",
            &ns_if,
        ]);
        ns.exec(&["ip", "link", "set", &ns_if, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Run a command inside the namespace.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        sh("ip", &args)
    }

    /// Drop every packet leaving the host end (`on`), or forward them again. Both directions
    /// are cut: requests never arrive, so no reply comes back either.
    pub fn drop_packets(&self, on: bool) {
        if on {
            sh(
                "tc",
                &["qdisc", "add", "dev", &self.host_if, "root", "blackhole"],
            );
            self.exec(&[
                "tc",
                "qdisc",
                "add",
                "dev",
                &self.ns_veth(),
                "root",
                "blackhole",
            ]);
        } else {
            sh("tc", &["qdisc", "del", "dev", &self.host_if, "root"]);
            self.exec(&["tc", "qdisc", "del", "dev", &self.ns_veth(), "root"]);
        }
    }

    fn ns_veth(&self) -> String {
        self.host_if.replacen("rh", "rn", 1)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Seconds since `t`, for the reports the tests print.
pub fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// The value of the series whose line starts with `series` (name and labels as Prometheus
/// writes them, e.g. `redis_relay_target_stalled{reason="oom"}`), if present.
pub fn series(relay: &Relay, series: &str) -> Option<f64> {
    relay
        .metrics()
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

impl Client {
    /// Connect to `host:port` (a server in a network namespace).
    pub fn connect_host(host: &str, port: u16) -> std::io::Result<Client> {
        let stream = std::net::TcpStream::connect((host, port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            stream,
            buf: bytes::BytesMut::new(),
        })
    }
}

/// A `redis-server` inside a [`NetNs`], listening on the namespace's veth address and its
/// loopback. Stopped when dropped.
pub struct NsRedis {
    pub host: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

impl NsRedis {
    pub fn start(ns: &NetNs, config: &[&str]) -> NsRedis {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = super::free_port();
        let bind = format!("bind {} 127.0.0.1", ns.ns_ip);
        let mut lines = vec![bind.as_str(), "protected-mode no"];
        lines.extend_from_slice(config);
        let conf_path = super::write_conf(dir.path(), port, &lines).expect("write redis.conf");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(super::redis_server_bin())
            .arg(&conf_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn redis-server in the namespace (package iproute2)");
        let server = NsRedis {
            host: ns.ns_ip.clone(),
            port,
            dir,
            child,
        };
        let up = super::wait_until(Duration::from_secs(10), || {
            server
                .try_client()
                .and_then(|mut c| c.try_cmd(&["PING"]))
                .is_ok_and(|r| !r.is_error())
        });
        assert!(up, "redis-server in namespace {} did not answer", ns.name);
        server
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    fn try_client(&self) -> std::io::Result<Client> {
        Client::connect_host(&self.host, self.port)
    }

    /// A client over the veth (not while packets are dropped).
    pub fn client(&self) -> Client {
        self.try_client()
            .expect("connect to the namespace's redis-server")
    }
}

impl Drop for NsRedis {
    fn drop(&mut self) {
        super::stop_child(&mut self.child);
    }
}

/// [`Traffic`] from inside a namespace (`redis-cli --pipe` on its loopback), so that it goes
/// on while the namespace's veth drops every packet.
pub struct NsTraffic {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    child: Option<std::process::Child>,
}

/// One round of [`NsTraffic`]: the commands of [`Traffic`], RESP-encoded.
fn traffic_round(out: &mut bytes::BytesMut, tag: &str, i: u64) {
    let cmds = [
        [
            "INCRBY".to_string(),
            format!("{tag}:c:{}", i % 13),
            "3".into(),
        ],
        [
            "RPUSH".to_string(),
            format!("{tag}:l:{}", i % 31),
            i.to_string(),
        ],
        [
            "APPEND".to_string(),
            format!("{tag}:a:{}", i % 7),
            format!("{i},"),
        ],
    ];
    for c in &cmds {
        redis_relay::resp::encode_command(out, c);
    }
}

impl NsTraffic {
    pub fn start(ns: &NetNs, port: u16, tag: &'static str) -> NsTraffic {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(super::redis_cli_bin())
            .args(["-p", &port.to_string(), "--pipe"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn redis-cli --pipe in the namespace (packages iproute2, redis-tools)");
        let mut stdin = child.stdin.take().expect("stdin");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            use std::io::Write;
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let mut out = bytes::BytesMut::new();
                for _ in 0..10 {
                    traffic_round(&mut out, tag, i);
                    i += 1;
                }
                stdin.write_all(&out).expect("write to redis-cli --pipe");
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        NsTraffic {
            stop,
            handle: Some(handle),
            child: Some(child),
        }
    }

    /// Stop, let redis-cli read every reply, and check it saw no error.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("traffic thread");
        }
        let child = self.child.take().expect("redis-cli child");
        let out = child.wait_with_output().expect("redis-cli --pipe");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("errors: 0"), "redis-cli --pipe: {text}");
    }
}

impl Drop for NsTraffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
