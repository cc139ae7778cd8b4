//! A fault-injecting TCP proxy for the tests: forwards a loopback port to an upstream, and on
//! command cuts every connection and refuses new ones (a crash or a network partition), or
//! stalls them (bytes held, connections kept: a half-open peer).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct FaultProxy {
    pub port: u16,
    upstream: Arc<AtomicU16>,
    down: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    /// Bytes still forwarded from upstream before everything stalls (`u64::MAX`: no limit).
    budget: Arc<AtomicU64>,
}

impl FaultProxy {
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = Arc::new(AtomicU16::new(upstream));
        let budget = Arc::new(AtomicU64::new(u64::MAX));
        {
            let (down, stalled, conns, stop, upstream, budget) = (
                down.clone(),
                stalled.clone(),
                conns.clone(),
                stop.clone(),
                upstream.clone(),
                budget.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let client = match listener.accept() {
                        Ok((c, _)) => c,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    if down.load(Ordering::Relaxed) {
                        drop(client);
                        continue;
                    }
                    let _ = client.set_nonblocking(false);
                    let to = upstream.load(Ordering::Relaxed);
                    let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    {
                        let mut c = conns.lock().unwrap();
                        c.push(client.try_clone().unwrap());
                        c.push(server.try_clone().unwrap());
                    }
                    pump(
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        stalled.clone(),
                        None,
                    );
                    pump(server, client, stalled.clone(), Some(budget.clone()));
                }
            });
        }
        FaultProxy {
            port,
            upstream,
            down,
            stalled,
            conns,
            stop,
            budget,
        }
    }

    /// Close every connection and refuse new ones until [`FaultProxy::up`].
    pub fn cut(&self) {
        self.down.store(true, Ordering::Relaxed);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// New connections go to `port` from now on (a failover behind a stable address).
    pub fn set_upstream(&self, port: u16) {
        self.upstream.store(port, Ordering::Relaxed);
    }

    pub fn up(&self) {
        self.down.store(false, Ordering::Relaxed);
    }

    /// Hold all bytes (connections stay open) until `stall(false)`.
    pub fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::Relaxed);
    }

    /// Forward about `bytes` more from upstream (whole reads of up to 64 KiB), then stall as
    /// [`FaultProxy::stall`] does: a peer that hangs in the middle of a transfer.
    pub fn stall_after(&self, bytes: u64) {
        self.budget.store(bytes, Ordering::Relaxed);
    }

    /// Stop counting bytes towards a stall (after [`FaultProxy::stall_after`]).
    pub fn unlimited(&self) {
        self.budget.store(u64::MAX, Ordering::Relaxed);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    stalled: Arc<AtomicBool>,
    budget: Option<Arc<AtomicU64>>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while stalled.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    while stalled.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    if let Some(b) = &budget {
                        let left = b.load(Ordering::Relaxed);
                        if left != u64::MAX {
                            b.store(left.saturating_sub(n as u64), Ordering::Relaxed);
                            if left <= n as u64 {
                                stalled.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
