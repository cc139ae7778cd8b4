//! A mock master that replays a byte-exact replication capture (`psync-*.bin` of the corpus or
//! of `tests/data/modern`): the recorded handshake replies, then the PSYNC reply, keepalives,
//! RDB and command stream in randomly sized chunks. Used by `replica_corpus` (the link alone,
//! strictly: any unexpected command fails) and `modern_captures` (the whole relay, whose side
//! connections to the source get errors, as from a server that refuses them).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_relay::resp::framer::CommandFramer;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One capture: the bytes, the meta file and the decoded commands.
pub struct Capture {
    pub file: Vec<u8>,
    pub meta: Value,
    pub commands: Value,
}

impl Capture {
    /// `psync-<mode>.{bin,meta.json,commands.json}` of `dir`; panics naming a missing file.
    pub fn load(dir: &Path, mode: &str) -> Capture {
        let read = |name: String| {
            let p = dir.join(name);
            std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let json = |name: String| -> Value {
            serde_json::from_slice(&read(name)).expect("capture JSON parses")
        };
        Capture {
            file: read(format!("psync-{mode}.bin")),
            meta: json(format!("psync-{mode}.meta.json")),
            commands: json(format!("psync-{mode}.commands.json")),
        }
    }

    /// The `i`th recorded handshake reply, if the capture has it.
    fn reply(&self, i: usize) -> Option<&[u8]> {
        let hs = self.meta["handshake"].get(i)?;
        let off = u(&hs["reply_file_offset"]);
        Some(&self.file[off..off + u(&hs["reply_len"])])
    }
}

pub fn u(v: &Value) -> usize {
    v.as_u64().expect("number") as usize
}

/// Small deterministic PRNG (xorshift64*), so every run uses the same chunking.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: &str) -> Rng {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in seed.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
        Rng(h | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Chunk sizes mixing tiny (1..16) and larger (up to 16 KiB) pieces.
    pub fn chunk(&mut self) -> usize {
        match self.next() % 4 {
            0 => 1 + (self.next() % 16) as usize,
            1 => 1 + (self.next() % 200) as usize,
            _ => 1 + (self.next() % 16384) as usize,
        }
    }
}

pub fn argv_text(args: &[Vec<u8>]) -> String {
    args.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Commands the mock master received, with their arrival time.
type Received = mpsc::UnboundedReceiver<(Vec<Vec<u8>>, Instant)>;

async fn send_chunked<W: AsyncWriteExt + Unpin>(w: &mut W, data: &[u8], rng: &mut Rng) {
    let mut pos = 0;
    while pos < data.len() {
        let n = rng.chunk().min(data.len() - pos);
        w.write_all(&data[pos..pos + n]).await.unwrap();
        pos += n;
        if rng.next().is_multiple_of(8) {
            w.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
    }
}

#[derive(Default)]
pub struct MockReport {
    /// When the RDB (disk or diskless) had been fully written.
    pub rdb_sent_at: Option<Instant>,
    /// REPLCONF ACKs received (offset, time).
    pub acks: Vec<(u64, Instant)>,
    /// Order of the commands received before the sync started.
    pub handshake: Vec<String>,
}

/// Replays `cap` to the first replica that connects; any command a replica does not send
/// panics.
pub async fn mock_master(listener: TcpListener, cap: Arc<Capture>, seed: String) -> MockReport {
    let (sock, _) = listener.accept().await.unwrap();
    serve(sock, cap, seed, true).await
}

/// Replays `cap` to the connection that sends PSYNC, and answers the relay's other
/// connections to its source (configuration reads, heartbeats) with errors.
pub async fn lenient_mock_master(listener: TcpListener, cap: Arc<Capture>, seed: String) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(serve(sock, cap.clone(), seed.clone(), false));
    }
}

/// Frame what the peer sends into `tx`.
fn spawn_reader(mut rd: tokio::net::tcp::OwnedReadHalf) -> Received {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut framer = CommandFramer::new();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            framer.push(&buf[..n]);
            while let Some(f) = framer.next_frame().expect("replica sent bad RESP") {
                let args: Vec<Vec<u8>> = f.args.iter().map(|a| a.to_vec()).collect();
                if tx.send((args, Instant::now())).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

fn ack_offset(args: &[Vec<u8>]) -> Option<u64> {
    let is_ack = args.len() == 3
        && args[0].eq_ignore_ascii_case(b"REPLCONF")
        && args[1].eq_ignore_ascii_case(b"ACK");
    is_ack.then(|| String::from_utf8_lossy(&args[2]).parse().unwrap())
}

/// One connection; `strict` panics on a command a replica does not send.
async fn serve(
    sock: tokio::net::TcpStream,
    cap: Arc<Capture>,
    seed: String,
    strict: bool,
) -> MockReport {
    let (rd, mut wr) = sock.into_split();
    let mut rx = spawn_reader(rd);
    let mut report = MockReport::default();
    let mut streaming = false;
    loop {
        let (args, at) = match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(c)) => c,
            _ => return report,
        };
        if !streaming {
            report.handshake.push(argv_text(&args));
        }
        if let Some(off) = ack_offset(&args) {
            report.acks.push((off, at));
            continue;
        }
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let sub = args
            .get(1)
            .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
            .unwrap_or_default();
        let reply_to = |i: usize| cap.reply(i).map(<[u8]>::to_vec);
        let reply = match (name.as_str(), sub.as_str()) {
            ("PING", _) => reply_to(0),
            ("REPLCONF", "listening-port") => reply_to(1),
            ("REPLCONF", "capa") => reply_to(2),
            // Captures of servers that do not know `REPLCONF version` (Valkey 8+) do not
            // record the reply; answer as Redis does.
            ("REPLCONF", "version") => reply_to(3)
                .or_else(|| Some(b"-ERR Unrecognized REPLCONF option: version\r\n".to_vec())),
            ("PSYNC", _) | ("SYNC", _) => {
                streaming = replay(&mut wr, &mut rx, &cap, &seed, &name, &mut report).await;
                continue;
            }
            other if strict => panic!("mock master: unexpected command {other:?}"),
            _ => Some(b"-ERR not served by the mock master\r\n".to_vec()),
        };
        wr.write_all(&reply.expect("the capture has the reply"))
            .await
            .unwrap();
    }
}

/// Answer PSYNC (or the SYNC fallback) with the rest of the capture; false when PSYNC got
/// the recorded error of a master without it (a SYNC follows).
async fn replay(
    wr: &mut OwnedWriteHalf,
    rx: &mut Received,
    cap: &Capture,
    seed: &str,
    name: &str,
    report: &mut MockReport,
) -> bool {
    let (file, meta) = (&cap.file, &cap.meta);
    let mut rng = Rng::new(seed);
    let stream_at = u(&meta["stream_file_offset"]);
    if name == "PSYNC" {
        if let Some(e) = meta["psync_error_reply"].as_object() {
            let off = u(&e["reply_file_offset"]);
            wr.write_all(&file[off..off + u(&e["reply_len"])])
                .await
                .unwrap();
            return false;
        }
    }
    let from = match name {
        "PSYNC" => u(&meta["psync_reply_file_offset"]),
        _ => {
            let e = &meta["psync_error_reply"];
            u(&e["reply_file_offset"]) + u(&e["reply_len"])
        }
    };
    send_chunked(wr, &file[from..stream_at], &mut rng).await;
    report.rdb_sent_at = Some(Instant::now());
    if meta["mode"] == "diskless" {
        // Like a real diskless master: the stream starts after the first ACK.
        loop {
            let (args, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("no REPLCONF ACK after the diskless RDB")
                .unwrap();
            if let Some(off) = ack_offset(&args) {
                report.acks.push((off, at));
                break;
            }
        }
    }
    send_chunked(wr, &file[stream_at..], &mut rng).await;
    true
}
