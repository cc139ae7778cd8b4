//! `run_link` against a real `redis-server` master (7.x from the system packages): full sync
//! (disk and diskless), streaming, ACKs seen by the master, WAIT through REPLCONF GETACK,
//! partial resync after the master kills the link, authentication errors, and retries when the
//! master is unreachable.

mod support;

use redis_relay::endpoint::Endpoint;
use redis_relay::resp::framer::CommandFramer;
use redis_relay::resp::Reply;
use redis_relay::source::{run_link, LinkConfig, LinkError, LinkSink, LinkState, SourceProgress};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::RedisServer;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the simulated pipeline saw.
#[derive(Default, Debug)]
struct SimLog {
    full: Vec<(String, Option<u64>)>,
    partial: Vec<(String, u64)>,
    rdb_len: usize,
    rdb_ends: usize,
    commands: Vec<Vec<String>>,
    getacks: usize,
    /// Offset after the last framed command.
    offset: u64,
}

/// Stands in for the pipeline: frames the stream, "applies" every command at once (applied
/// offset = offset after it), and on `REPLCONF GETACK` asks the link for an immediate ACK with
/// the offset that does not include the GETACK itself, as a Redis replica does.
struct PipelineSim {
    progress: Arc<SourceProgress>,
    framer: CommandFramer,
    log: Arc<Mutex<SimLog>>,
}

impl LinkSink for PipelineSim {
    fn full_resync(&mut self, replid: &str, offset: Option<u64>) -> std::io::Result<()> {
        let mut l = self.log.lock().unwrap();
        l.full.push((replid.to_string(), offset));
        l.offset = offset.unwrap_or(0);
        self.framer = CommandFramer::new();
        Ok(())
    }
    fn partial_resync(&mut self, replid: &str, offset: u64) -> std::io::Result<()> {
        let mut l = self.log.lock().unwrap();
        // The stream continues right after the last byte received: a partially received
        // command stays in the framer and is completed by the new connection.
        assert_eq!(l.offset + self.framer.buffered() as u64, offset);
        l.partial.push((replid.to_string(), offset));
        Ok(())
    }
    fn rdb_data(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.log.lock().unwrap().rdb_len += data.len();
        Ok(())
    }
    fn rdb_end(&mut self) -> std::io::Result<()> {
        self.log.lock().unwrap().rdb_ends += 1;
        Ok(())
    }
    fn stream_data(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.framer.push(data);
        let mut l = self.log.lock().unwrap();
        while let Some(f) = self
            .framer
            .next_frame()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
        {
            let args: Vec<String> = f
                .args
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let getack = args.len() >= 2
                && args[0].eq_ignore_ascii_case("REPLCONF")
                && args[1].eq_ignore_ascii_case("GETACK");
            if getack {
                l.getacks += 1;
                self.progress.set_applied_offset(l.offset);
                self.progress.ack_now.notify_one();
            }
            l.offset += f.raw.len() as u64;
            if !getack {
                self.progress.set_applied_offset(l.offset);
            }
            l.commands.push(args);
        }
        Ok(())
    }
}

struct Relay {
    progress: Arc<SourceProgress>,
    log: Arc<Mutex<SimLog>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), LinkError>>,
}

fn start_link(url: &str, tweak: impl FnOnce(&mut LinkConfig)) -> Relay {
    let endpoint = Endpoint::parse(url).unwrap();
    let progress = Arc::new(SourceProgress::new(endpoint.to_string()));
    let mut cfg = LinkConfig::new(endpoint);
    cfg.listening_port = 6999;
    cfg.backoff_min = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(400);
    tweak(&mut cfg);
    let log = Arc::new(Mutex::new(SimLog::default()));
    if let Some((_, off)) = &cfg.resume {
        // The pipeline restarts from its checkpoint.
        log.lock().unwrap().offset = *off;
    }
    let sink = PipelineSim {
        progress: progress.clone(),
        framer: CommandFramer::new(),
        log: log.clone(),
    };
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(run_link(cfg, progress.clone(), sink, rx));
    Relay {
        progress,
        log,
        stop,
        task,
    }
}

impl Relay {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("link did not stop")
            .unwrap()
            .expect("link error");
        assert_eq!(self.progress.state(), LinkState::Stopped);
    }

    fn saw(&self, cmd: &[&str]) -> bool {
        self.log
            .lock()
            .unwrap()
            .commands
            .iter()
            .any(|c| c.iter().map(String::as_str).eq(cmd.iter().copied()))
    }
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `slave0:ip=127.0.0.1,port=6999,state=online,offset=123,lag=0` as key/value pairs.
fn replica_info(master: &RedisServer) -> Option<Vec<(String, String)>> {
    let line = master.client().info_field("replication", "slave0")?;
    Some(
        line.split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn field(info: &[(String, String)], k: &str) -> String {
    info.iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn master_offset(master: &RedisServer) -> u64 {
    master
        .client()
        .info_field("replication", "master_repl_offset")
        .unwrap()
        .parse()
        .unwrap()
}

fn stat(master: &RedisServer, name: &str) -> u64 {
    master
        .client()
        .info_field("stats", name)
        .unwrap()
        .parse()
        .unwrap()
}

async fn full_sync_and_stream(diskless: bool) {
    let conf: &[&str] = if diskless {
        &["repl-diskless-sync yes", "repl-diskless-sync-delay 0"]
    } else {
        &["repl-diskless-sync no"]
    };
    let master = RedisServer::start(conf);
    let mut c = master.client();
    for i in 0..100 {
        c.cmd(&["SET", &format!("pre:{i}"), &"x".repeat(i * 10)]);
    }
    c.cmd(&["SELECT", "3"]);
    c.cmd(&["HSET", "h", "f", "v"]);
    let relay = start_link(&master.url(), |_| {});
    let p = relay.progress.clone();
    wait_until("streaming", Duration::from_secs(20), || {
        p.state() == LinkState::Streaming
    })
    .await;
    {
        let l = relay.log.lock().unwrap();
        assert_eq!(l.full.len(), 1);
        assert_eq!(l.rdb_ends, 1);
        assert!(l.rdb_len > 1000, "RDB of {} bytes", l.rdb_len);
        assert_eq!(l.full[0].0.len(), 40);
    }
    if diskless {
        assert_eq!(p.rdb_bytes_total(), None, "expected a $EOF: transfer");
    } else {
        assert_eq!(p.rdb_bytes_total(), Some(p.rdb_bytes_received()));
    }
    c.cmd(&["SELECT", "0"]);
    c.cmd(&["SET", "live:1", "one"]);
    c.cmd(&["RPUSH", "live:list", "a", "b"]);
    c.cmd(&["DEL", "pre:1"]);
    let r = &relay;
    wait_until("streamed writes", Duration::from_secs(10), || {
        r.saw(&["SET", "live:1", "one"]) && r.saw(&["DEL", "pre:1"])
    })
    .await;
    assert!(
        relay.saw(&["rpush", "live:list", "a", "b"])
            || relay.saw(&["RPUSH", "live:list", "a", "b"])
    );
    // The master lists us as an online replica, with the announced port, and the offset we
    // ACK (periodic ACK, once a second) catches up with its own offset.
    let m = &master;
    wait_until(
        "the master to see our ACKed offset",
        Duration::from_secs(10),
        || {
            let Some(info) = replica_info(m) else {
                return false;
            };
            field(&info, "state") == "online"
                && field(&info, "port") == "6999"
                && field(&info, "offset") == master_offset(m).to_string()
        },
    )
    .await;
    assert_eq!(p.received_offset(), master_offset(&master));
    assert_eq!(p.applied_offset(), master_offset(&master));
    assert!(p.acks_sent() >= 1);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_sync_streams_and_acks() {
    full_sync_and_stream(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diskless_full_sync_streams_and_acks() {
    full_sync_and_stream(true).await;
}

/// With periodic ACKs effectively off, `WAIT 1 1000` can only succeed through the GETACK path:
/// the master sends `REPLCONF GETACK *`, the pipeline sees it and asks for an immediate ACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_is_answered_through_getack() {
    let master = RedisServer::start(&["repl-diskless-sync no", "repl-ping-replica-period 60"]);
    let relay = start_link(&master.url(), |c| {
        c.ack_interval = Duration::from_secs(3600)
    });
    let p = relay.progress.clone();
    wait_until("streaming", Duration::from_secs(20), || {
        p.state() == LinkState::Streaming
    })
    .await;
    let mut c = master.client();
    // Give the master time to mark us online (it does so when the RDB is sent).
    let m = &master;
    wait_until("replica online", Duration::from_secs(10), || {
        replica_info(m).is_some_and(|i| field(&i, "state") == "online")
    })
    .await;
    c.cmd(&["SET", "w", "1"]);
    let reply = c.cmd(&["WAIT", "1", "1000"]);
    assert_eq!(reply, Reply::Integer(1), "WAIT did not see our ACK");
    assert!(relay.log.lock().unwrap().getacks >= 1);
    let info = replica_info(&master).unwrap();
    let acked: u64 = field(&info, "offset").parse().unwrap();
    assert!(relay.saw(&["SET", "w", "1"]));
    // What we ACKed excludes the GETACK itself.
    assert_eq!(acked, p.applied_offset());
    assert!(acked < p.received_offset());
    relay.stop().await;
}

/// The master kills the replica connection; the link reconnects and resumes with
/// `PSYNC <replid> <offset+1>`, which the master accepts with `+CONTINUE`: no new full sync,
/// and the writes made while we were away arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resumes_with_partial_sync() {
    let master = RedisServer::start(&["repl-diskless-sync no"]);
    let relay = start_link(&master.url(), |_| {});
    let p = relay.progress.clone();
    wait_until("streaming", Duration::from_secs(20), || {
        p.state() == LinkState::Streaming
    })
    .await;
    let mut c = master.client();
    c.cmd(&["SET", "before", "1"]);
    let r = &relay;
    wait_until("first write", Duration::from_secs(10), || {
        r.saw(&["SET", "before", "1"])
    })
    .await;
    let full_before = stat(&master, "sync_full");
    let partial_before = stat(&master, "sync_partial_ok");
    assert_eq!(full_before, 1);
    let killed = c.cmd(&["CLIENT", "KILL", "TYPE", "replica"]);
    assert_eq!(killed, Reply::Integer(1));
    c.cmd(&["SET", "during", "2"]);
    c.cmd(&["INCR", "counter"]);
    wait_until("partial resync", Duration::from_secs(15), || {
        p.partial_syncs() == 1
    })
    .await;
    c.cmd(&["SET", "after", "3"]);
    wait_until(
        "writes after the reconnect",
        Duration::from_secs(10),
        || r.saw(&["SET", "during", "2"]) && r.saw(&["SET", "after", "3"]),
    )
    .await;
    assert_eq!(stat(&master, "sync_full"), full_before);
    assert_eq!(stat(&master, "sync_partial_ok"), partial_before + 1);
    let (replid, off) = relay.log.lock().unwrap().partial[0].clone();
    assert_eq!(Some(replid), p.replid());
    assert!(off > 0);
    assert_eq!(relay.log.lock().unwrap().full.len(), 1);
    assert_eq!(p.full_syncs(), 1);
    assert!(p.last_error().is_some());
    let m = &master;
    wait_until("offsets to match", Duration::from_secs(10), || {
        p.received_offset() == master_offset(m)
    })
    .await;
    relay.stop().await;
}

/// A checkpoint (replid, offset) from a previous run resumes without a full sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_checkpoint() {
    let master = RedisServer::start(&["repl-diskless-sync no"]);
    let relay = start_link(&master.url(), |_| {});
    let p = relay.progress.clone();
    let mut c = master.client();
    wait_until("streaming", Duration::from_secs(20), || {
        p.state() == LinkState::Streaming
    })
    .await;
    c.cmd(&["SET", "a", "1"]);
    let r = &relay;
    wait_until("write", Duration::from_secs(10), || {
        r.saw(&["SET", "a", "1"])
    })
    .await;
    let checkpoint = (p.replid().unwrap(), relay.log.lock().unwrap().offset);
    relay.stop().await;
    c.cmd(&["SET", "b", "2"]);
    let cp = checkpoint.clone();
    let relay = start_link(&master.url(), move |c| c.resume = Some(cp));
    let p = relay.progress.clone();
    let r = &relay;
    wait_until("resumed write", Duration::from_secs(15), || {
        r.saw(&["SET", "b", "2"])
    })
    .await;
    assert_eq!(p.full_syncs(), 0);
    assert_eq!(p.partial_syncs(), 1);
    assert_eq!(relay.log.lock().unwrap().partial, vec![checkpoint]);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_password_is_fatal() {
    let master = RedisServer::start(&["requirepass s3cret"]);
    for (url, want) in [
        (
            format!("redis://:wrong@127.0.0.1:{}", master.port),
            "WRONGPASS",
        ),
        (format!("redis://127.0.0.1:{}", master.port), "NOAUTH"),
    ] {
        let relay = start_link(&url, |_| {});
        let err = tokio::time::timeout(Duration::from_secs(10), relay.task)
            .await
            .expect("link should stop on an auth error")
            .unwrap()
            .unwrap_err();
        assert!(err.is_fatal());
        let msg = err.to_string();
        assert!(msg.contains(want), "{msg}");
        assert!(msg.contains(&format!("127.0.0.1:{}", master.port)), "{msg}");
        assert!(!msg.contains("wrong@"), "{msg}");
        assert_eq!(relay.progress.state(), LinkState::Failed);
        assert_eq!(relay.progress.connect_attempts(), 1);
    }
    // And the right password works.
    let relay = start_link(
        &format!("redis://:s3cret@127.0.0.1:{}", master.port),
        |_| {},
    );
    let p = relay.progress.clone();
    wait_until("streaming", Duration::from_secs(20), || {
        p.state() == LinkState::Streaming
    })
    .await;
    relay.stop().await;
}

#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn unreachable_master_is_retried_with_a_log_line() {
    let logs = LogBuf::default();
    let w = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || w.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let port = support::free_port();
    let relay = start_link(&format!("redis://127.0.0.1:{port}"), |_| {});
    let p = relay.progress.clone();
    wait_until("3 attempts", Duration::from_secs(10), || {
        p.connect_attempts() >= 3
    })
    .await;
    let err = p.last_error().unwrap();
    assert!(
        err.contains("cannot connect") && err.contains(&port.to_string()),
        "{err}"
    );
    relay.stop().await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("reconnecting in"))
        .unwrap_or_else(|| panic!("no retry log line in:\n{text}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
}
