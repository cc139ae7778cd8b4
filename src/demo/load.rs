//! The live writes during the demo's sync: a thread writing through nutcracker at a steady
//! rate (SET, INCR, LPUSH, LTRIM, HSET on a bounded set of keys), so that the stream has
//! something to carry while the snapshot loads and after it. Stopped when dropped.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use redis_relay::endpoint::Endpoint;
use redis_relay::resp::{encode_command, Client, Reply};

/// How often the thread sends the writes that are due.
const TICK: Duration = Duration::from_millis(10);
/// Most writes in one pipelined batch (the rate catches up over a few ticks after a stall).
const MAX_BATCH: u64 = 1000;

/// The running load; stops and joins its thread when dropped.
pub struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    /// Start writing `rate` commands per second through `proxy` (none when `rate` is 0).
    pub fn start(proxy: Endpoint, rate: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let thread = (rate > 0).then(|| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                if let Err(e) = run(&proxy, rate, &stop, &done) {
                    tracing::warn!("demo write load through {proxy} stopped: {e}");
                }
            })
        });
        Load { stop, done, thread }
    }

    /// Stop the writes; how many were acknowledged.
    pub fn stop(mut self) -> u64 {
        self.halt();
        self.done.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Write at `rate` until `stop`; an error when the proxy fails or refuses a write.
fn run(proxy: &Endpoint, rate: u32, stop: &AtomicBool, done: &AtomicU64) -> Result<(), String> {
    let mut c = Client::connect(proxy, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut out = BytesMut::new();
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        let n = due.saturating_sub(sent).min(MAX_BATCH);
        for i in sent..sent + n {
            encode_command(&mut out, &write(i));
        }
        c.stream.write_all(&out).map_err(|e| e.to_string())?;
        out.clear();
        for _ in 0..n {
            if let Reply::Error(e) = c.read_reply().map_err(|e| e.to_string())? {
                return Err(String::from_utf8_lossy(&e).into_owned());
            }
        }
        sent += n;
        done.store(sent, Ordering::Relaxed);
        std::thread::sleep(TICK);
    }
    Ok(())
}

/// Write number `i`: the five commands in turn, each on a bounded key space.
fn write(i: u64) -> Vec<String> {
    let n = i / 5;
    let s = |v: &str| v.to_string();
    match i % 5 {
        0 => vec![s("SET"), format!("live:string:{}", n % 1000), n.to_string()],
        1 => vec![s("INCR"), format!("live:counter:{}", n % 100)],
        2 => vec![s("LPUSH"), format!("live:list:{}", n % 50), n.to_string()],
        3 => vec![s("LTRIM"), format!("live:list:{}", n % 50), s("0"), s("99")],
        _ => vec![
            s("HSET"),
            format!("live:hash:{}", n % 100),
            format!("f{}", n % 10),
            n.to_string(),
        ],
    }
}
