//! End to end, "sidecar per master": three masters behind one nutcracker pool, one shared
//! target, and one `redis-relay sync --twemproxy FILE --local-server sN` per master. A sidecar
//! replicates only its own backend and knows the others as peers: a key it deletes from the
//! target for any other reason than its own master's DEL/UNLINK/expiry (the stale-key sweep
//! after a forced full resync, the translation of its master's FLUSHDB/FLUSHALL) must be a key
//! that no peer holds.
//!
//! Each backend has ~500 "sentinel" keys; a poller checks every 25 ms (one multi-key EXISTS per
//! backend on the target) that every sentinel of every backend that may not lose keys at that
//! moment is on the target, and records each violation (key, backend, scenario). A writer
//! thread writes through nutcracker the whole time (never a sentinel). The scenarios share the
//! topology and run in this order:
//!
//! * (a) forced full resync of s1's sidecar (SIGTERM, deletions on s1 and > 2 MB of writes
//!   to overflow the 1 MB backlog, restart): the deleted keys leave the target, nothing of s2
//!   or s3 does;
//! * (d) the same, SIGKILLed in the middle of its sweep (the target holds ~200k keys of the
//!   pool so the sweep takes a while), restarted: same outcome;
//! * (b) FLUSHDB, then FLUSHALL on s2: its old keys leave the target, its keys written after
//!   each flush stay, nothing of s1 or s3 leaves;
//! * (c) FLUSHDB on s1 while s3 is down (SHUTDOWN SAVE, restarted later on the same port and
//!   dir): the deletion of the keys in doubt is deferred (`redis_relay_deferred_deletions`),
//!   completes once s3 is back; s1's keys written after the flush stay, s3's stay;
//! * (e) `RPOPLPUSH {t}src dst` through nutcracker puts `dst` on the backend X of `{t}src`
//!   although it hashes to Y; FLUSHDB on Y must not delete it from the target.
//!
//! At the end `redis-relay verify` of the union, and of each sidecar (`--local-server sN`),
//! exits 0, and every sidecar exits 0 on SIGTERM.
//!
//! A binary without `--local-server` is run the way a per-master relay runs today (`--source
//! <its backend> --if-target-not-empty ignore`), so that the test fails on what matters (the
//! keys of the other masters deleted in (a)) rather than on the command line.
//!
//! On a failed check the whole log of every sidecar run is written to
//! `target/tmp/sidecar_e2e/sN.log`. `SIDECAR_E2E_KEEP_GOING=1` prints a failed check of a
//! scenario and runs the next ones (the test still fails at the end).

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_relay::resp::Reply;
use support::{
    free_port, redis_server_bin, relay_cli, stop_child, wait_until, Client, Nutcracker,
    RedisServer, Relay,
};

/// Sentinel keys kept per backend.
const SENTINELS: usize = 500;
/// Keys of each type in the preload (strings, hashes, lists, sets, zsets).
const PER_TYPE: usize = 5_000;
/// Plain strings `str:N` in the preload.
const STRINGS: usize = 12_000;
/// Plain strings loaded through nutcracker so that the target is big and a sweep is long.
const BULK: usize = 200_000;

fn cmd<S: AsRef<str>>(words: &[S]) -> Vec<Vec<u8>> {
    words
        .iter()
        .map(|w| w.as_ref().as_bytes().to_vec())
        .collect()
}

/// Pipeline `cmds` in slices of `n`, asserting no error reply.
fn pipe(c: &mut Client, cmds: &[Vec<Vec<u8>>], n: usize, what: &str) {
    for chunk in cmds.chunks(n) {
        for (r, sent) in c.pipeline(chunk).iter().zip(chunk) {
            assert!(
                !r.is_error(),
                "{what}: {:?} failed: {r:?}",
                String::from_utf8_lossy(&sent.join(&b' '))
            );
        }
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A master of the pool: a `redis-server` on a port it keeps across restarts, with its RDB
/// file in its own dir (so `SHUTDOWN SAVE` and a restart bring back its data and replid).
struct Backend {
    name: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Backend {
    fn start(name: &str) -> Backend {
        let mut last = String::new();
        for _ in 0..5 {
            let mut b = Backend {
                name: name.to_string(),
                port: free_port(),
                dir: tempfile::tempdir().expect("tempdir"),
                child: None,
            };
            match b.spawn() {
                Ok(()) => return b,
                Err(e) => last = e,
            }
        }
        panic!("could not start backend {name}: {last}");
    }

    /// Start the server (again) on its port and dir; Ok once it answers PING as itself.
    fn spawn(&mut self) -> Result<(), String> {
        let d = self.dir.path().display();
        let conf = format!(
            "port {}\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndaemonize no\ndir {d}\ndbfilename dump.rdb\nlogfile {d}/redis.log\nrepl-backlog-size 1mb\nrepl-diskless-sync yes\nrepl-diskless-sync-delay 0\n",
            self.port
        );
        let path = self.dir.path().join("redis.conf");
        std::fs::write(&path, conf).map_err(|e| e.to_string())?;
        let child = Command::new(redis_server_bin())
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let pid = child.id().to_string();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!(
                    "{} exited with {st}: {}",
                    self.name,
                    tail(&self.log(), 10)
                ));
            }
            // Answering PING (not -LOADING) as this process, not as a stranger on the port.
            if let Ok(mut c) = Client::connect(self.port) {
                if let Ok(Reply::Simple(_)) = c.try_cmd(&["PING"]) {
                    if c.info_field("server", "process_id").as_deref() == Some(pid.as_str()) {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not answer PING within 20 s", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `SHUTDOWN SAVE`, and wait until the process is gone.
    fn shutdown_save(&mut self) {
        let mut c = self.client();
        if let Ok(Reply::Error(e)) = c.try_cmd(&["SHUTDOWN", "SAVE"]) {
            panic!(
                "SHUTDOWN SAVE on {}: {}",
                self.name,
                String::from_utf8_lossy(&e)
            );
        }
        let mut child = self.child.take().expect("backend running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} still runs 30 s after SHUTDOWN SAVE: {}",
                self.name,
                tail(&self.log(), 10)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            self.dir.path().join("dump.rdb").is_file(),
            "{} saved no dump.rdb on SHUTDOWN SAVE",
            self.name
        );
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn client(&self) -> Client {
        Client::connect(self.port)
            .unwrap_or_else(|e| panic!("connect to backend {}: {e}", self.name))
    }

    fn stat(&self, section: &str, field: &str) -> String {
        self.client()
            .info_field(section, field)
            .unwrap_or_else(|| panic!("INFO {section} of {} has no {field}", self.name))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }
}

/// One nutcracker with one pool over the backends (ketama, fnv1a_64, `{}` hash tags).
type Proxy = Nutcracker;

fn start_proxy(backends: &[Backend]) -> Proxy {
    Nutcracker::start_yaml(|port| {
        let mut yaml = format!(
            "pool:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  hash_tag: \"{{}}\"\n  distribution: ketama\n  redis: true\n  auto_eject_hosts: false\n  timeout: 5000\n  servers:\n"
        );
        for b in backends {
            yaml.push_str(&format!("   - 127.0.0.1:{}:1 {}\n", b.port, b.name));
        }
        yaml
    })
}

/// Index of the backend holding each key (exactly one must).
fn holders(backends: &[Backend], keys: &[String]) -> Vec<usize> {
    let mut found = vec![usize::MAX; keys.len()];
    for (i, b) in backends.iter().enumerate() {
        let mut c = b.client();
        for (n, chunk) in keys.chunks(2000).enumerate() {
            let cmds: Vec<_> = chunk.iter().map(|k| cmd(&["EXISTS", k])).collect();
            for (j, r) in c.pipeline(&cmds).iter().enumerate() {
                if r.as_int() == Some(1) {
                    let at = n * 2000 + j;
                    assert_eq!(
                        found[at],
                        usize::MAX,
                        "{} is on two backends ({} and {})",
                        keys[at],
                        backends[found[at]].name,
                        b.name
                    );
                    found[at] = i;
                }
            }
        }
    }
    if let Some(at) = found.iter().position(|&f| f == usize::MAX) {
        panic!(
            "{} was written through nutcracker but no backend has it",
            keys[at]
        );
    }
    found
}

/// Group `keys` (all existing) by the backend that holds them.
fn by_backend(backends: &[Backend], keys: &[String]) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new(); backends.len()];
    for (k, b) in keys.iter().zip(holders(backends, keys)) {
        out[b].push(k.clone());
    }
    out
}

/// Write `keys` through nutcracker, find where each lives, then delete them again (through
/// nutcracker): names known to hash to each backend, that exist nowhere.
fn placed_names(proxy: &Proxy, backends: &[Backend], keys: Vec<String>) -> Vec<Vec<String>> {
    let mut p = proxy.client();
    let sets: Vec<_> = keys.iter().map(|k| cmd(&["SET", k, "probe"])).collect();
    pipe(&mut p, &sets, 2000, "placing names");
    let out = by_backend(backends, &keys);
    let dels: Vec<_> = keys.iter().map(|k| cmd(&["DEL", k])).collect();
    pipe(&mut p, &dels, 2000, "placing names");
    out
}

/// The keys among `keys` that `c` does not hold.
fn missing(c: &mut Client, keys: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for chunk in keys.chunks(2000) {
        let cmds: Vec<_> = chunk.iter().map(|k| cmd(&["EXISTS", k])).collect();
        for (k, r) in chunk.iter().zip(c.pipeline(&cmds)) {
            if r.as_int() != Some(1) {
                out.push(k.clone());
            }
        }
    }
    out
}

/// The keys among `keys` that `c` holds.
fn present(c: &mut Client, keys: &[String]) -> Vec<String> {
    let gone: HashSet<String> = missing(c, keys).into_iter().collect();
    keys.iter()
        .filter(|k| !gone.contains(*k))
        .cloned()
        .collect()
}

fn first<T: std::fmt::Debug>(v: &[T], n: usize) -> String {
    format!(
        "{:?}{}",
        &v[..v.len().min(n)],
        if v.len() > n { " ..." } else { "" }
    )
}

/// What the poller watches: the sentinels of each backend, and the backends whose keys may
/// legitimately leave the target right now (their master was flushed).
struct Watch {
    sentinels: Vec<Arc<Vec<String>>>,
    allowed: HashSet<usize>,
    scenario: String,
    generation: u64,
}

#[derive(Debug, Clone)]
struct Violation {
    scenario: String,
    backend: String,
    key: String,
    at: Duration,
}

struct Poller {
    watch: Arc<Mutex<Watch>>,
    violations: Arc<Mutex<Vec<Violation>>>,
    polls: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// [`missing`], one EXISTS at a time, without panicking on I/O errors.
fn try_missing(c: &mut Client, keys: &[String]) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for k in keys {
        if c.try_cmd(&["EXISTS", k])?.as_int() != Some(1) {
            out.push(k.clone());
        }
    }
    Ok(out)
}

impl Poller {
    fn start(target_port: u16, names: Vec<String>, sentinels: Vec<Vec<String>>) -> Poller {
        let watch = Arc::new(Mutex::new(Watch {
            sentinels: sentinels.into_iter().map(Arc::new).collect(),
            allowed: HashSet::new(),
            scenario: "setup".into(),
            generation: 0,
        }));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let polls = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (watch, violations, polls, stop) = (
                watch.clone(),
                violations.clone(),
                polls.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut conn: Option<Client> = None;
                let mut recorded: HashSet<(String, String)> = HashSet::new();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(25));
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match Client::connect(target_port) {
                            Ok(c) => conn.insert(c),
                            Err(_) => continue,
                        },
                    };
                    let (generation, work) = {
                        let w = watch.lock().unwrap();
                        let work: Vec<(usize, Arc<Vec<String>>)> = w
                            .sentinels
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !w.allowed.contains(i))
                            .map(|(i, s)| (i, s.clone()))
                            .collect();
                        (w.generation, work)
                    };
                    for (i, keys) in work {
                        let mut all = cmd(&["EXISTS"]);
                        all.extend(keys.iter().map(|k| k.as_bytes().to_vec()));
                        let Ok(n) = c.try_cmd(&all).map(|r| r.as_int()) else {
                            conn = None; // the target is gone (the test is ending)
                            break;
                        };
                        if n == Some(keys.len() as i64) {
                            continue;
                        }
                        let Ok(gone) = try_missing(c, &keys) else {
                            conn = None;
                            break;
                        };
                        let w = watch.lock().unwrap();
                        if w.generation != generation || w.allowed.contains(&i) {
                            continue; // the rules changed meanwhile: look again next round
                        }
                        let mut v = violations.lock().unwrap();
                        for key in gone {
                            if recorded.insert((w.scenario.clone(), key.clone())) {
                                v.push(Violation {
                                    scenario: w.scenario.clone(),
                                    backend: names[i].clone(),
                                    key,
                                    at: t0.elapsed(),
                                });
                            }
                        }
                    }
                    polls.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        Poller {
            watch,
            violations,
            polls,
            stop,
            thread: Some(thread),
        }
    }

    /// From now on, `scenario` is running and the backends in `allowed` may lose keys.
    fn set(&self, scenario: &str, allowed: &[usize]) {
        let mut w = self.watch.lock().unwrap();
        w.scenario = scenario.to_string();
        w.allowed = allowed.iter().copied().collect();
        w.generation += 1;
    }

    fn add_sentinel(&self, backend: usize, key: &str) {
        let mut w = self.watch.lock().unwrap();
        let mut s = (*w.sentinels[backend]).clone();
        s.push(key.to_string());
        w.sentinels[backend] = Arc::new(s);
        w.generation += 1;
    }

    fn violations(&self, scenario: Option<&str>) -> Vec<Violation> {
        self.violations
            .lock()
            .unwrap()
            .iter()
            .filter(|v| scenario.is_none_or(|s| v.scenario == s))
            .cloned()
            .collect()
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the sentinel poller panicked");
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes through nutcracker on rotating keys (never a sentinel) until told to stop, for at
/// most 5 minutes and 2 million rounds; error replies (a backend down) are counted, a lost
/// connection is reopened.
fn writer(port: u16, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>, errors: Arc<AtomicU64>) {
    let started = Instant::now();
    let mut conn: Option<Client> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed)
        && started.elapsed() < Duration::from_secs(300)
        && i < 2_000_000
    {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Client::connect(port) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let cmds = [
            cmd(&["SET", &format!("w:s:{}", i % 1000), &i.to_string()]),
            cmd(&["INCR", &format!("w:c:{}", i % 100)]),
            cmd(&["RPUSH", &format!("w:l:{}", i % 100), &i.to_string()]),
            cmd(&[
                "HSET",
                &format!("w:h:{}", i % 100),
                &format!("f{}", i % 20),
                &i.to_string(),
            ]),
        ];
        for c_ in &cmds {
            match c.try_cmd(c_) {
                Ok(r) if r.is_error() => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                    break;
                }
            }
        }
        i += 1;
        rounds.fetch_add(1, Ordering::Relaxed);
        if i.is_multiple_of(4) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// One sidecar: the relay of one backend, its state dir, the logs of its earlier runs.
struct Sidecar {
    name: String,
    source: String,
    state: tempfile::TempDir,
    logs: tempfile::TempDir,
    relay: Option<Relay>,
    history: String,
    runs: usize,
}

impl Sidecar {
    fn relay(&self) -> &Relay {
        self.relay.as_ref().expect("sidecar running")
    }

    fn metric(&self, name: &str) -> Option<f64> {
        self.relay().metric(name, &self.source)
    }

    /// The whole log of every run so far (the current one last), its last `n` lines.
    fn log_tail(&self, n: usize) -> String {
        let current = self
            .relay
            .as_ref()
            .map(|r| r.log_text())
            .unwrap_or_default();
        format!(
            "--- log of sidecar {} ({}), last {n} lines:\n{}",
            self.name,
            self.source,
            tail(&format!("{}{current}", self.history), n)
        )
    }

    fn retire(&mut self, r: Relay) {
        self.history
            .push_str(&format!("=== run {} ===\n{}", self.runs, r.log_text()));
    }
}

struct Topology {
    backends: Vec<Backend>,
    target: RedisServer,
    proxy: Proxy,
    sidecars: Vec<Sidecar>,
    /// The binary has no `--local-server`: run each sidecar as `--source <its backend>`.
    legacy: bool,
    /// `SIDECAR_E2E_KEEP_GOING=1`: a failed check of a scenario is printed and the next
    /// scenarios run; the test still fails at the end.
    keep_going: bool,
    failures: std::cell::RefCell<Vec<String>>,
    t0: Instant,
}

impl Topology {
    /// A failed check: panic, or (keep-going) print it and remember it for the end. The full
    /// logs of every sidecar run go to files first.
    fn fail(&self, msg: String) {
        let msg = format!("{msg}\n{}", self.dump_logs());
        assert!(self.keep_going, "{msg}");
        eprintln!("[sidecar_e2e] FAILED CHECK: {}", tail(&msg, 400));
        self.failures.borrow_mut().push(msg);
    }

    /// Every sidecar's whole log (all runs) into `<target tmp>/sidecar_e2e/sN.log`.
    fn dump_logs(&self) -> String {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sidecar_e2e");
        let _ = std::fs::create_dir_all(&dir);
        for sc in &self.sidecars {
            let current = sc.relay.as_ref().map(|r| r.log_text()).unwrap_or_default();
            let _ = std::fs::write(
                dir.join(format!("{}.log", sc.name)),
                format!("{}=== run {} (current) ===\n{current}", sc.history, sc.runs),
            );
        }
        format!("full sidecar logs: {}/s{{1,2,3}}.log", dir.display())
    }

    fn check(&self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.fail(msg());
        }
    }

    fn config(&self) -> String {
        self.proxy.config_path.display().to_string()
    }

    fn args(&self, i: usize) -> Vec<String> {
        let sc = &self.sidecars[i];
        let mut a: Vec<String> = if self.legacy {
            vec![
                "--source".into(),
                format!("redis://{}", sc.source),
                "--if-target-not-empty".into(),
                "ignore".into(),
            ]
        } else {
            vec![
                "--twemproxy".into(),
                self.config(),
                "--local-server".into(),
                sc.name.clone(),
            ]
        };
        a.extend([
            "--target".into(),
            self.target.url(),
            "--state-dir".into(),
            sc.state.path().display().to_string(),
        ]);
        a
    }

    fn start_sidecar(&mut self, i: usize) {
        let args = self.args(i);
        let sc = &mut self.sidecars[i];
        assert!(sc.relay.is_none(), "sidecar {} already runs", sc.name);
        sc.runs += 1;
        sc.relay = Some(Relay::start_sync(&args, sc.logs.path()));
    }

    /// Wait until sidecar `i` has applied a snapshot (`redis_relay_snapshot_done` 1).
    fn wait_synced(&mut self, i: usize, limit: Duration, why: &str) {
        let started = Instant::now();
        loop {
            let sc = &mut self.sidecars[i];
            if sc.metric("redis_relay_snapshot_done") == Some(1.0) {
                return;
            }
            let relay = sc.relay.as_mut().expect("sidecar running");
            if let Ok(Some(st)) = relay.child.try_wait() {
                panic!(
                    "{why}: sidecar {} exited with {st} before its snapshot was applied\n{}",
                    sc.name,
                    sc.log_tail(60)
                );
            }
            assert!(
                started.elapsed() < limit,
                "{why}: sidecar {} has not applied its snapshot after {limit:?}\n{}",
                sc.name,
                sc.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM sidecar `i`; it must exit 0.
    fn stop_sidecar(&mut self, i: usize, why: &str) {
        let sc = &mut self.sidecars[i];
        let mut r = sc.relay.take().expect("sidecar running");
        let (code, took) = r.terminate(Duration::from_secs(20));
        sc.retire(r);
        assert_eq!(
            code,
            Some(0),
            "{why}: sidecar {} did not exit 0 within 20 s of SIGTERM (took {took:?})\n{}",
            sc.name,
            sc.log_tail(60)
        );
    }

    fn kill_sidecar(&mut self, i: usize) {
        let sc = &mut self.sidecars[i];
        let mut r = sc.relay.take().expect("sidecar running");
        r.kill();
        sc.retire(r);
    }

    fn logs(&self) -> String {
        self.sidecars
            .iter()
            .map(|s| s.log_tail(40))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn target(&self) -> Client {
        self.target.client()
    }

    /// Wait until the target holds none of `gone` and all of `there`.
    fn wait_target(&self, gone: &[String], there: &[String], limit: Duration, what: &str) {
        let mut t = self.target();
        let ok = wait_until(limit, || {
            present(&mut t, gone).is_empty() && missing(&mut t, there).is_empty()
        });
        if !ok {
            let still = present(&mut t, gone);
            let lost = missing(&mut t, there);
            self.fail(format!(
                "{what} (after {limit:?}): {} keys that should be gone are still on the target: {}; {} keys that should be there are not: {}\n{}",
                still.len(),
                first(&still, 10),
                lost.len(),
                first(&lost, 10),
                self.logs()
            ));
        }
    }

    /// Write `keys` directly on backend `b` (they hash to it).
    fn write_on(&self, b: usize, keys: &[String], value: &str) {
        let cmds: Vec<_> = keys.iter().map(|k| cmd(&["SET", k, value])).collect();
        pipe(&mut self.backends[b].client(), &cmds, 1000, "direct write");
    }

    /// Overflow the 1 MB backlog of backend `b`: 30 × 100 KB on `key` (which lives there).
    fn overflow_backlog(&self, b: usize, key: &str) {
        let big = "x".repeat(100 * 1024);
        let cmds: Vec<_> = (0..30)
            .map(|i| cmd(&["SET", key, &format!("{i}{big}")]))
            .collect();
        pipe(&mut self.backends[b].client(), &cmds, 5, "backlog overflow");
    }

    fn assert_no_violation(&self, poller: &Poller, scenario: &str) {
        let v = poller.violations(Some(scenario));
        if v.is_empty() {
            return;
        }
        let mut by: Vec<String> = Vec::new();
        for b in &self.backends {
            let n = v.iter().filter(|x| x.backend == b.name).count();
            if n > 0 {
                by.push(format!("{}: {n}", b.name));
            }
        }
        // A few per backend.
        let listed: Vec<String> = self
            .backends
            .iter()
            .flat_map(|b| v.iter().filter(|x| x.backend == b.name).take(8))
            .map(|x| {
                format!(
                    "  scenario {} at {:.3}s: sentinel {} of {} missing on the target",
                    x.scenario,
                    x.at.as_secs_f64(),
                    x.key,
                    x.backend
                )
            })
            .collect();
        self.fail(format!(
            "scenario ({scenario}): {} sentinel keys of backends that were not flushed left the target ({}){}\n{}\n{}",
            v.len(),
            by.join(", "),
            if self.legacy {
                " [binary without --local-server: sidecars ran as --source <their backend>]"
            } else {
                ""
            },
            listed.join("\n"),
            self.logs()
        ));
    }

    fn lap(&self, scenario: &str, started: Instant) {
        eprintln!(
            "[sidecar_e2e] {scenario}: {:.1}s (total {:.1}s)",
            started.elapsed().as_secs_f64(),
            self.t0.elapsed().as_secs_f64()
        );
    }
}

/// Through nutcracker: every type, some TTLs, and `BULK` plain strings.
fn preload(proxy: &Proxy) {
    let mut c = proxy.client();
    let mut cmds = Vec::new();
    for i in 0..PER_TYPE {
        let s = i.to_string();
        cmds.push(cmd(&["HSET", &format!("hash:{i}"), "a", "1", "b", &s]));
        cmds.push(cmd(&["RPUSH", &format!("list:{i}"), "a", "b", &s]));
        cmds.push(cmd(&["SADD", &format!("set:{i}"), "a", "b", &s]));
        cmds.push(cmd(&["ZADD", &format!("zset:{i}"), "1", "a", "2.5", &s]));
        if i % 5 == 0 {
            cmds.push(cmd(&[
                "SET",
                &format!("ttl:{i}"),
                "v",
                "PX",
                &(36_000_000 + i).to_string(),
            ]));
            cmds.push(cmd(&[
                "EXPIRE",
                &format!("hash:{i}"),
                &(86_400 + i).to_string(),
            ]));
        }
    }
    // More strings: the scenarios delete some of each backend's (ketama over three names
    // gives one backend only ~12% of the keys).
    cmds.extend((0..STRINGS).map(|i| cmd(&["SET", &format!("str:{i}"), &format!("value-{i}")])));
    pipe(&mut c, &cmds, 5000, "preload");
    for start in (0..BULK).step_by(10_000) {
        let cmds: Vec<_> = (start..start + 10_000)
            .map(|i| cmd(&["SET", &format!("bulk:{i}"), &format!("b{i}")]))
            .collect();
        pipe(&mut c, &cmds, 5000, "bulk preload");
    }
}

fn has_local_server() -> bool {
    let out = relay_cli(&["sync", "--help"]);
    String::from_utf8_lossy(&out.stdout).contains("--local-server")
}

#[test]
fn sidecars_never_delete_their_peers_keys() {
    let t0 = Instant::now();
    let legacy = !has_local_server();
    if legacy {
        eprintln!("[sidecar_e2e] WARNING: `redis-relay sync` has no --local-server: each sidecar runs as `--source <its backend> --if-target-not-empty ignore` (a relay that knows only its own master); the test is expected to fail");
    }
    let backends: Vec<Backend> = ["s1", "s2", "s3"]
        .iter()
        .map(|n| Backend::start(n))
        .collect();
    let target = RedisServer::start(&[]);
    let proxy = start_proxy(&backends);
    let names: Vec<String> = backends.iter().map(|b| b.name.clone()).collect();

    // ---- Preload and key placement.
    let started = Instant::now();
    preload(&proxy);
    let strs: Vec<String> = (0..STRINGS).map(|i| format!("str:{i}")).collect();
    let strs = by_backend(&backends, &strs);
    let sentinels: Vec<Vec<String>> = {
        let mut p = proxy.client();
        let cand: Vec<String> = (0..8000).map(|i| format!("sentinel:{i}")).collect();
        let sets: Vec<_> = cand.iter().map(|k| cmd(&["SET", k, "sentinel"])).collect();
        pipe(&mut p, &sets, 1000, "sentinels");
        let mut per = by_backend(&backends, &cand);
        for (b, s) in per.iter_mut().enumerate() {
            assert!(
                s.len() >= SENTINELS,
                "only {} of 8000 candidate keys hash to {}",
                s.len(),
                names[b]
            );
            s.truncate(SENTINELS);
        }
        per
    };
    let posts = placed_names(
        &proxy,
        &backends,
        (0..3000).map(|i| format!("post:{i}")).collect(),
    );
    for (i, b) in backends.iter().enumerate() {
        eprintln!(
            "[sidecar_e2e] {} ({}): {} keys, {} str: keys, {} post: names",
            b.name,
            b.addr(),
            b.client().cmd(&["DBSIZE"]).as_int().unwrap_or(-1),
            strs[i].len(),
            posts[i].len()
        );
    }
    for (b, s) in strs.iter().enumerate() {
        assert!(s.len() >= 800, "only {} str: keys on {}", s.len(), names[b]);
        assert!(
            posts[b].len() >= 150,
            "only {} post: keys on {}",
            posts[b].len(),
            names[b]
        );
    }
    let mut topo = Topology {
        sidecars: backends
            .iter()
            .map(|b| Sidecar {
                name: b.name.clone(),
                source: b.addr(),
                state: tempfile::tempdir().unwrap(),
                logs: tempfile::tempdir().unwrap(),
                relay: None,
                history: String::new(),
                runs: 0,
            })
            .collect(),
        backends,
        target,
        proxy,
        legacy,
        keep_going: std::env::var_os("SIDECAR_E2E_KEEP_GOING").is_some_and(|v| v == "1"),
        failures: Default::default(),
        t0,
    };
    topo.lap("preload", started);

    // ---- The writer, then the sidecars one after another.
    let started = Instant::now();
    let stop_writer = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let write_errors = Arc::new(AtomicU64::new(0));
    let writer_thread = {
        let (s, r, e, port) = (
            stop_writer.clone(),
            rounds.clone(),
            write_errors.clone(),
            topo.proxy.port,
        );
        std::thread::spawn(move || writer(port, s, r, e))
    };
    for i in 0..3 {
        topo.start_sidecar(i);
        topo.wait_synced(i, Duration::from_secs(120), "first start");
    }
    let all_sentinels: Vec<String> = sentinels.concat();
    topo.wait_target(
        &[],
        &all_sentinels,
        Duration::from_secs(30),
        "setup: sentinels",
    );
    let mut poller = Poller::start(topo.target.port, names.clone(), sentinels.clone());
    topo.lap("sidecars started", started);

    // Per backend, which str: keys each scenario uses.
    let s1 = 0;
    let (a_deleted, rest) = strs[s1].split_at(300);
    let (d_deleted, rest) = rest.split_at(300);
    let (ballast, s1_other) = rest.split_first().unwrap();

    // ---- (a) Forced full resync of s1's sidecar.
    let started = Instant::now();
    poller.set("a", &[s1]);
    topo.stop_sidecar(s1, "(a)");
    let full_before: i64 = topo.backends[s1]
        .stat("stats", "sync_full")
        .parse()
        .unwrap();
    let dels: Vec<_> = a_deleted.iter().map(|k| cmd(&["DEL", k])).collect();
    pipe(
        &mut topo.backends[s1].client(),
        &dels,
        1000,
        "(a) deletions",
    );
    topo.overflow_backlog(s1, ballast);
    topo.start_sidecar(s1);
    topo.wait_synced(s1, Duration::from_secs(90), "(a) restart");
    // Counted once the snapshot is applied (a restarted relay may say "snapshot done" early).
    let (mut full_after, mut full_metric) = (full_before, None);
    let full = wait_until(Duration::from_secs(60), || {
        full_after = topo.backends[s1]
            .stat("stats", "sync_full")
            .parse()
            .unwrap();
        full_metric = topo.sidecars[s1].metric("redis_relay_full_syncs_total");
        full_after > full_before && full_metric.unwrap_or(0.0) >= 1.0
    });
    topo.check(full, || {
        format!(
            "(a): the restart of s1's sidecar was not a full resync (s1 sync_full {full_before} -> {full_after}, redis_relay_full_syncs_total {full_metric:?})\n{}",
            topo.sidecars[s1].log_tail(60)
        )
    });
    topo.wait_target(
        a_deleted,
        &[],
        Duration::from_secs(60),
        "(a): keys deleted on s1 while its sidecar was down",
    );
    std::thread::sleep(Duration::from_millis(500));
    topo.assert_no_violation(&poller, "a");
    poller.set("after a", &[]);
    topo.lap("(a) forced full resync", started);

    // ---- (d) The same, SIGKILLed in the middle of its sweep, restarted. Each try deletes its
    // own keys on s1 and overflows the backlog, starts the sidecar (a forced full resync),
    // waits until its snapshot is parsed (the sweep comes next), waits a bit and SIGKILLs it.
    // A kill that came too late (the snapshot already applied, the sweep done) is retried
    // with another delay; after a kill in time (or the last try) the sidecar is restarted
    // once, as is, and every key deleted on s1 must leave the target.
    let started = Instant::now();
    poller.set("d", &[s1]);
    topo.stop_sidecar(s1, "(d)");
    let marks = ["snapshot parsed", "sweep", "stale"];
    let mut d_deleted_all: Vec<String> = Vec::new();
    let mut caught = false;
    for (round, (delay, batch)) in [0u64, 30, 100, 250]
        .into_iter()
        .zip(d_deleted.chunks(d_deleted.len() / 4))
        .enumerate()
    {
        let dels: Vec<_> = batch.iter().map(|k| cmd(&["DEL", k])).collect();
        pipe(
            &mut topo.backends[s1].client(),
            &dels,
            1000,
            "(d) deletions",
        );
        d_deleted_all.extend_from_slice(batch);
        topo.overflow_backlog(s1, ballast);
        let full_before: i64 = topo.backends[s1]
            .stat("stats", "sync_full")
            .parse()
            .unwrap();
        topo.start_sidecar(s1);
        let sc = &topo.sidecars[s1];
        // The log every 5 ms (the window is short); after a second, the metric now and then
        // (a relay that logs neither mark).
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = false;
        for n in 0u64.. {
            let log = sc.relay().log_text();
            if marks.iter().any(|m| log.contains(m))
                || (n > 200 && n % 20 == 0 && sc.metric("redis_relay_snapshot_done") == Some(1.0))
            {
                seen = true;
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(delay));
        let done = sc.metric("redis_relay_snapshot_done");
        let log = sc.relay().log_text();
        topo.kill_sidecar(s1);
        let full_after: i64 = topo.backends[s1]
            .stat("stats", "sync_full")
            .parse()
            .unwrap();
        let too_late = done == Some(1.0) || log.contains("snapshot applied");
        caught = seen && !too_late;
        eprintln!(
            "[sidecar_e2e] (d) try {round}: SIGKILL {delay} ms after the mark (seen: {seen}), snapshot_done {done:?}, full syncs on s1 {full_before} -> {full_after}: {}",
            if caught {
                "in time (snapshot parsed, not applied)"
            } else if too_late {
                "too late (snapshot applied)"
            } else {
                "before the end of the snapshot"
            }
        );
        topo.check(full_after > full_before, || {
            format!(
                "(d) try {round}: the sidecar's start was not a full resync of s1 ({full_before} -> {full_after})\n{}",
                topo.sidecars[s1].log_tail(60)
            )
        });
        if caught {
            break;
        }
    }
    if !caught {
        eprintln!("[sidecar_e2e] (d) WARNING: no SIGKILL came between the parsed snapshot and its end: the scenario ran as repeated restarts");
    }
    topo.start_sidecar(s1);
    topo.wait_synced(s1, Duration::from_secs(90), "(d) restart after SIGKILL");
    topo.wait_target(
        &d_deleted_all,
        &[],
        Duration::from_secs(60),
        "(d): keys deleted on s1 while its sidecar was down, after a SIGKILL in its forced full resync",
    );
    std::thread::sleep(Duration::from_millis(500));
    topo.assert_no_violation(&poller, "d");
    poller.set("after d", &[]);
    topo.lap("(d) SIGKILL in the sweep", started);

    // ---- (b) FLUSHDB, then FLUSHALL on s2.
    let started = Instant::now();
    let s2 = 1;
    poller.set("b", &[s2]);
    let (b_post1, rest) = posts[s2].split_at(50);
    let b_post2 = &rest[..50];
    let s2_old: Vec<String> = strs[s2].iter().chain(&sentinels[s2]).cloned().collect();
    topo.backends[s2].client().cmd(&["FLUSHDB"]);
    topo.write_on(s2, b_post1, "after-flushdb");
    topo.wait_target(
        &s2_old,
        b_post1,
        Duration::from_secs(60),
        "(b) after FLUSHDB on s2: its old keys gone, its keys written after the flush there",
    );
    topo.backends[s2].client().cmd(&["FLUSHALL"]);
    topo.write_on(s2, b_post2, "after-flushall");
    topo.wait_target(
        b_post1,
        b_post2,
        Duration::from_secs(60),
        "(b) after FLUSHALL on s2: its keys of before gone, its keys written after the flush there",
    );
    topo.write_on(s2, &sentinels[s2], "sentinel");
    topo.wait_target(
        &[],
        &sentinels[s2],
        Duration::from_secs(30),
        "(b): s2's sentinels rewritten",
    );
    std::thread::sleep(Duration::from_millis(300));
    topo.assert_no_violation(&poller, "b");
    poller.set("after b", &[]);
    topo.lap("(b) FLUSHDB and FLUSHALL on s2", started);

    // ---- (c) FLUSHDB on s1 while s3 is down.
    let started = Instant::now();
    let s3 = 2;
    poller.set("c", &[s1]);
    let replid_before = topo.backends[s3].stat("replication", "master_replid");
    let s3_full_metric_before = topo.sidecars[s3].metric("redis_relay_full_syncs_total");
    topo.backends[s3].shutdown_save();
    let down_at = Instant::now();
    let c_post = &posts[s1][..50];
    let s1_old: Vec<String> = s1_other.iter().chain(&sentinels[s1]).cloned().collect();
    topo.backends[s1].client().cmd(&["FLUSHDB"]);
    topo.write_on(s1, c_post, "after-flushdb");
    let deferred = wait_until(Duration::from_secs(20), || {
        topo.sidecars[s1]
            .metric("redis_relay_deferred_deletions")
            .is_some_and(|v| v > 0.0)
    });
    let dd = topo.sidecars[s1].metric("redis_relay_deferred_deletions");
    topo.check(deferred, || {
        format!(
            "(c): with s3 down, FLUSHDB on s1 did not defer any deletion (redis_relay_deferred_deletions{{source=\"{}\"}} = {dd:?})\n{}",
            topo.sidecars[s1].source,
            topo.sidecars[s1].log_tail(60)
        )
    });
    // Give the deferred deletion a few retries while s3 is still down; its age shows.
    std::thread::sleep(Duration::from_millis(1500));
    let mut age = None;
    let aged = wait_until(Duration::from_secs(10), || {
        age = topo.sidecars[s1].metric("redis_relay_deferred_deletion_age_seconds");
        age.is_some_and(|a| a > 0.0)
    });
    topo.check(aged, || {
        format!(
            "(c): deletions deferred for 1.5 s but redis_relay_deferred_deletion_age_seconds{{source=\"{}\"}} is {age:?}",
            topo.sidecars[s1].source
        )
    });
    let s3_keys: Vec<String> = strs[s3].iter().chain(&sentinels[s3]).cloned().collect();
    let lost = missing(&mut topo.target(), &s3_keys);
    topo.check(lost.is_empty(), || {
        format!(
            "(c): keys of s3 (down) left the target while s1 was flushed: {} of them, {}\n{}",
            lost.len(),
            first(&lost, 10),
            topo.logs()
        )
    });
    eprintln!(
        "[sidecar_e2e] (c) s3 down {:.1}s: deferred deletions {dd:?}, then age {age:?} s",
        down_at.elapsed().as_secs_f64()
    );
    if let Err(e) = topo.backends[s3].spawn() {
        panic!("(c): s3 did not start again: {e}");
    }
    let replid_after = topo.backends[s3].stat("replication", "master_replid");
    eprintln!(
        "[sidecar_e2e] (c) s3 back after {:.1}s with {} keys, replid {}",
        down_at.elapsed().as_secs_f64(),
        topo.backends[s3]
            .client()
            .cmd(&["DBSIZE"])
            .as_int()
            .unwrap_or(-1),
        if replid_after == replid_before {
            "kept"
        } else {
            "changed"
        }
    );
    // Back to 0 (or the series dropped, the endpoint still answering).
    let settled = wait_until(Duration::from_secs(60), || {
        let sc = &topo.sidecars[s1];
        match sc.metric("redis_relay_deferred_deletions") {
            Some(v) => v == 0.0,
            None => sc.relay().metrics().contains("redis_relay_"),
        }
    });
    topo.check(settled, || {
        format!(
            "(c): s3 is back but the deferred deletion of s1's sidecar did not complete (redis_relay_deferred_deletions = {:?})\n{}",
            topo.sidecars[s1].metric("redis_relay_deferred_deletions"),
            topo.sidecars[s1].log_tail(60)
        )
    });
    topo.wait_target(
        &s1_old,
        c_post,
        Duration::from_secs(30),
        "(c) after s3 came back: s1's keys of before the flush gone, its keys written after the flush there",
    );
    let mut t = topo.target();
    let wrong: Vec<(String, Option<String>)> = c_post
        .iter()
        .map(|k| (k.clone(), t.cmd(&["GET", k]).as_text()))
        .filter(|(_, v)| v.as_deref() != Some("after-flushdb"))
        .collect();
    topo.check(wrong.is_empty(), || {
        format!(
            "(c): keys written on s1 after its FLUSHDB have another value on the target: {}",
            first(&wrong, 10)
        )
    });
    // s3's own sidecar lived through its master's restart: it is s3's replica again, online.
    let back = wait_until(Duration::from_secs(60), || {
        let sc = &topo.sidecars[s3];
        let online = topo.backends[s3]
            .client()
            .info_field("replication", "slave0")
            .is_some_and(|l| l.contains("state=online"));
        online
            && sc.metric("redis_relay_connected") == Some(1.0)
            && sc.metric("redis_relay_snapshot_done") == Some(1.0)
    });
    topo.check(back, || {
        format!(
            "(c): s3's sidecar did not reconnect to s3 within 60 s\n{}",
            topo.sidecars[s3].log_tail(60)
        )
    });
    eprintln!(
        "[sidecar_e2e] (c) s3's sidecar resumed: full syncs {s3_full_metric_before:?} -> {:?}",
        topo.sidecars[s3].metric("redis_relay_full_syncs_total")
    );
    topo.write_on(s1, &sentinels[s1], "sentinel");
    topo.wait_target(
        &[],
        &sentinels[s1],
        Duration::from_secs(30),
        "(c): s1's sentinels rewritten",
    );
    std::thread::sleep(Duration::from_millis(300));
    topo.assert_no_violation(&poller, "c");
    poller.set("after c", &[]);
    topo.lap("(c) FLUSHDB on s1 with s3 down", started);

    // ---- (e) A key on a backend it does not hash to, then FLUSHDB on the one it hashes to.
    let started = Instant::now();
    let srcs = placed_names(
        &topo.proxy,
        &topo.backends,
        (0..30).map(|i| format!("{{e{i}}}src")).collect(),
    );
    let dsts = placed_names(
        &topo.proxy,
        &topo.backends,
        (0..30).map(|i| format!("edst:{i}")).collect(),
    );
    // X holds the source list, Y is where the destination's name hashes to (any two
    // backends; the candidate names do not always spread over all three).
    let (x, y) = [(0, 1), (0, 2), (1, 2), (2, 1), (1, 0), (2, 0)]
        .into_iter()
        .find(|&(x, y)| !srcs[x].is_empty() && !dsts[y].is_empty())
        .expect("candidate names on two backends");
    let (src, dst) = (srcs[x][0].clone(), dsts[y][0].clone());
    // The probes' SET and DEL reach the target through the sidecars of where they landed;
    // writes of one key by two backends have no order between their sidecars, so the probes
    // must be gone from the target before `dst` is written on another backend. A marker
    // written on each backend after the DELs: once every marker is on the target, each
    // sidecar has applied its DELs (one source's stream keeps its order).
    let probes: Vec<String> = srcs.iter().chain(&dsts).flatten().cloned().collect();
    let markers: Vec<String> = (0..topo.backends.len())
        .map(|b| format!("emark:{b}"))
        .collect();
    for (b, m) in markers.iter().enumerate() {
        topo.backends[b].client().cmd(&["SET", m, "1"]);
    }
    topo.wait_target(
        &[],
        &markers,
        Duration::from_secs(20),
        "(e): the markers after the name probes",
    );
    topo.wait_target(
        &probes,
        &[],
        Duration::from_secs(20),
        "(e): the name probes deleted",
    );
    poller.set("e", &[y]);
    let mut p = topo.proxy.client();
    p.cmd(&["RPUSH", &src, "a", "b", "moved"]);
    let moved = p.cmd(&["RPOPLPUSH", &src, &dst]).as_text();
    assert_eq!(moved.as_deref(), Some("moved"), "RPOPLPUSH {src} {dst}");
    let on_x = topo.backends[x].client().cmd(&["EXISTS", &dst]).as_int();
    let on_y = topo.backends[y].client().cmd(&["EXISTS", &dst]).as_int();
    assert_eq!(
        (on_x, on_y),
        (Some(1), Some(0)),
        "(e): {dst} should live on {} (where {src} is), not on {} (where it hashes)",
        names[x],
        names[y]
    );
    topo.wait_target(
        &[],
        std::slice::from_ref(&dst),
        Duration::from_secs(20),
        "(e): the moved key",
    );
    poller.add_sentinel(x, &dst);
    let y_old: Vec<String> = strs[y].iter().chain(&sentinels[y]).cloned().collect();
    topo.backends[y].client().cmd(&["FLUSHDB"]);
    topo.wait_target(
        &y_old,
        &[],
        Duration::from_secs(60),
        &format!("(e) after FLUSHDB on {}: its old keys gone", names[y]),
    );
    // Nothing deferred (0, or no series).
    let _ = wait_until(Duration::from_secs(20), || {
        topo.sidecars[y]
            .metric("redis_relay_deferred_deletions")
            .is_none_or(|v| v == 0.0)
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut t = topo.target();
    let v = t.cmd(&["LRANGE", &dst, "0", "-1"]);
    let kept = matches!(&v, Reply::Array(Some(items))
        if items.len() == 1 && items[0].as_text().as_deref() == Some("moved"));
    topo.check(kept, || {
        format!(
            "(e): {dst} (lives on {}, hashes to {}) after FLUSHDB on {}: the target has {v:?}\n{}",
            names[x],
            names[y],
            names[y],
            topo.logs()
        )
    });
    topo.write_on(y, &sentinels[y], "sentinel");
    topo.wait_target(
        &[],
        &sentinels[y],
        Duration::from_secs(30),
        "(e): sentinels rewritten",
    );
    topo.assert_no_violation(&poller, "e");
    poller.set("end", &[]);
    topo.lap(
        "(e) a key off its hash, FLUSHDB on the backend it hashes to",
        started,
    );

    // ---- The end: writer stopped, relays caught up, verify.
    let started = Instant::now();
    stop_writer.store(true, Ordering::Relaxed);
    writer_thread.join().expect("writer");
    std::thread::sleep(Duration::from_millis(1000));
    poller.stop();
    let polls = poller.polls.load(Ordering::Relaxed);
    eprintln!(
        "[sidecar_e2e] writer: {} rounds, {} error replies (s3 down in (c)); poller: {polls} polls",
        rounds.load(Ordering::Relaxed),
        write_errors.load(Ordering::Relaxed)
    );
    assert!(rounds.load(Ordering::Relaxed) > 1000, "the writer ran");
    assert!(polls > 100, "the poller ran ({polls} polls)");
    let all = poller.violations(None);
    topo.check(all.is_empty(), || {
        format!(
            "sentinel violations (scenario, backend, key): {}",
            first(
                &all.iter()
                    .map(|v| format!("{} {} {}", v.scenario, v.backend, v.key))
                    .collect::<Vec<_>>(),
                20
            )
        )
    });
    let config = topo.config();
    let url = topo.target.url();
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "verify",
            "--twemproxy",
            &config,
            "--target",
            &url,
            "--recheck-rounds",
            "10",
        ];
        args.extend_from_slice(extra);
        relay_cli(&args)
    };
    let mut last = None;
    for _ in 0..3 {
        let out = verify(&[]);
        if out.status.success() {
            last = None;
            break;
        }
        last = Some(out);
        std::thread::sleep(Duration::from_secs(2));
    }
    if let Some(out) = last {
        topo.fail(format!(
            "verify --twemproxy: the target is not the union of the backends (exit {:?}):\n{}\n{}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            topo.logs()
        ));
    }
    // The moved key lives on X but hashes to Y: which sidecar "owns" it is not defined by the
    // contract, so it goes before the per-sidecar verification.
    topo.backends[x].client().cmd(&["DEL", &dst]);
    topo.wait_target(
        std::slice::from_ref(&dst),
        &[],
        Duration::from_secs(20),
        "the moved key deleted",
    );
    for sc in &topo.sidecars {
        let out = verify(&["--local-server", &sc.name]);
        topo.check(out.status.success(), || {
            format!(
                "verify --local-server {}: the target differs from {} for the keys it owns (exit {:?}):\n{}\n{}\n{}",
                sc.name,
                sc.source,
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                sc.log_tail(40)
            )
        });
    }
    for i in 0..3 {
        topo.stop_sidecar(i, "the end");
    }
    topo.lap("verify and stop", started);
    let failures = topo.failures.borrow();
    assert!(
        failures.is_empty(),
        "{} checks failed (SIDECAR_E2E_KEEP_GOING):\n{}",
        failures.len(),
        failures
            .iter()
            .map(|f| f.lines().next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    );
}
