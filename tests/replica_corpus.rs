//! The real `run_link` against a mock master that replays the byte-exact captures of the corpus
//! (`psync-*.bin`, Redis 2.4.18 to 8.0-m01): handshake replies, PSYNC error and SYNC fallback for
//! 2.4/2.6, keepalives, the RDB in both framings, and the command stream, sent in randomly sized
//! chunks. Then the received stream is framed with `CommandFramer` in random chunks and compared
//! with `*.commands.json`.

mod support;

use base64::Engine;
use redis_relay::endpoint::Endpoint;
use redis_relay::resp::framer::CommandFramer;
use redis_relay::source::{run_link, LinkConfig, LinkSink, SourceProgress};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Small deterministic PRNG (xorshift64*), so every run uses the same chunking.
struct Rng(u64);
impl Rng {
    fn new(seed: &str) -> Rng {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in seed.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
        Rng(h | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Chunk sizes mixing tiny (1..16) and larger (up to 16 KiB) pieces.
    fn chunk(&mut self) -> usize {
        match self.next() % 4 {
            0 => 1 + (self.next() % 16) as usize,
            1 => 1 + (self.next() % 200) as usize,
            _ => 1 + (self.next() % 16384) as usize,
        }
    }
}

#[derive(Default, Debug)]
struct Record {
    full: Vec<(String, Option<u64>)>,
    partial: Vec<(String, u64)>,
    rdb: Vec<u8>,
    rdb_ends: usize,
    stream: Vec<u8>,
}

#[derive(Clone)]
struct RecordingSink(Arc<Mutex<Record>>);

impl LinkSink for RecordingSink {
    fn full_resync(&mut self, replid: &str, offset: Option<u64>) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap()
            .full
            .push((replid.to_string(), offset));
        Ok(())
    }
    fn partial_resync(&mut self, replid: &str, offset: u64) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap()
            .partial
            .push((replid.to_string(), offset));
        Ok(())
    }
    fn rdb_data(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut r = self.0.lock().unwrap();
        assert_eq!(r.rdb_ends, 0, "RDB data after rdb_end");
        r.rdb.extend_from_slice(data);
        Ok(())
    }
    fn rdb_end(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap().rdb_ends += 1;
        Ok(())
    }
    fn stream_data(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut r = self.0.lock().unwrap();
        assert_eq!(r.rdb_ends, 1, "stream data before rdb_end");
        r.stream.extend_from_slice(data);
        Ok(())
    }
}

fn u(v: &Value) -> usize {
    v.as_u64().expect("number") as usize
}

fn argv_text(args: &[Vec<u8>]) -> String {
    args.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Commands the mock master received (name upper-cased, args).
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

struct MockReport {
    /// When the RDB (disk or diskless) had been fully written.
    rdb_sent_at: Option<Instant>,
    /// REPLCONF ACKs received (offset, time).
    acks: Vec<(u64, Instant)>,
    /// Order of the commands received before the sync started.
    handshake: Vec<String>,
}

/// Replays one capture to the first replica that connects.
async fn mock_master(
    listener: TcpListener,
    file: Vec<u8>,
    meta: Value,
    seed: String,
) -> MockReport {
    let (sock, _) = listener.accept().await.unwrap();
    let (mut rd, mut wr) = sock.into_split();
    let (tx, mut rx): (_, Received) = mpsc::unbounded_channel();
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
    let mut rng = Rng::new(&seed);
    let hs = meta["handshake"].as_array().unwrap().clone();
    let reply = |i: usize| {
        let off = u(&hs[i]["reply_file_offset"]);
        file[off..off + u(&hs[i]["reply_len"])].to_vec()
    };
    let mut report = MockReport {
        rdb_sent_at: None,
        acks: Vec::new(),
        handshake: Vec::new(),
    };
    let stream_at = u(&meta["stream_file_offset"]);
    let diskless = meta["mode"] == "diskless";
    let mut streaming = false;
    loop {
        let (args, at) = match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(c)) => c,
            _ => return report,
        };
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let sub = args
            .get(1)
            .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
            .unwrap_or_default();
        if !streaming {
            report.handshake.push(argv_text(&args));
        }
        match (name.as_str(), sub.as_str()) {
            ("PING", _) => wr.write_all(&reply(0)).await.unwrap(),
            ("REPLCONF", "listening-port") => wr.write_all(&reply(1)).await.unwrap(),
            ("REPLCONF", "capa") => wr.write_all(&reply(2)).await.unwrap(),
            // No captured version knows `REPLCONF version` (Valkey 8+); answer as Redis does.
            ("REPLCONF", "version") => wr
                .write_all(b"-ERR Unrecognized REPLCONF option: version\r\n")
                .await
                .unwrap(),
            ("REPLCONF", "ack") => {
                let off: u64 = String::from_utf8_lossy(&args[2]).parse().unwrap();
                report.acks.push((off, at));
            }
            ("PSYNC", _) => {
                if let Some(e) = meta["psync_error_reply"].as_object() {
                    let off = u(&e["reply_file_offset"]);
                    wr.write_all(&file[off..off + u(&e["reply_len"])])
                        .await
                        .unwrap();
                    continue;
                }
                let from = u(&meta["psync_reply_file_offset"]);
                streaming = true;
                send_chunked(&mut wr, &file[from..stream_at], &mut rng).await;
                report.rdb_sent_at = Some(Instant::now());
                if diskless {
                    // Like a real diskless master: the stream starts after the first ACK.
                    loop {
                        let (args, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                            .await
                            .expect("no REPLCONF ACK after the diskless RDB")
                            .unwrap();
                        if args[0].eq_ignore_ascii_case(b"REPLCONF")
                            && args[1].eq_ignore_ascii_case(b"ACK")
                        {
                            let off: u64 = String::from_utf8_lossy(&args[2]).parse().unwrap();
                            report.acks.push((off, at));
                            break;
                        }
                    }
                }
                send_chunked(&mut wr, &file[stream_at..], &mut rng).await;
            }
            ("SYNC", _) => {
                let e = &meta["psync_error_reply"];
                let from = u(&e["reply_file_offset"]) + u(&e["reply_len"]);
                streaming = true;
                send_chunked(&mut wr, &file[from..stream_at], &mut rng).await;
                report.rdb_sent_at = Some(Instant::now());
                send_chunked(&mut wr, &file[stream_at..], &mut rng).await;
            }
            other => panic!("mock master: unexpected command {other:?}"),
        }
    }
}

async fn replay(dir: &str, mode: &str) {
    let corpus = support::corpus_dir().join(dir);
    let file = std::fs::read(corpus.join(format!("psync-{mode}.bin"))).unwrap();
    let meta: Value = serde_json::from_slice(
        &std::fs::read(corpus.join(format!("psync-{mode}.meta.json"))).unwrap(),
    )
    .unwrap();
    let cmds: Value = serde_json::from_slice(
        &std::fs::read(corpus.join(format!("psync-{mode}.commands.json"))).unwrap(),
    )
    .unwrap();
    let legacy = meta["sync_command"] == "SYNC";
    let diskless = meta["mode"] == "diskless";
    let stream_at = u(&meta["stream_file_offset"]);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seed = format!("{dir}/{mode}");
    let master = tokio::spawn(mock_master(
        listener,
        file.clone(),
        meta.clone(),
        seed.clone(),
    ));

    let endpoint = Endpoint::parse(&format!("redis://127.0.0.1:{port}")).unwrap();
    let progress = Arc::new(SourceProgress::new(endpoint.to_string()));
    let mut cfg = LinkConfig::new(endpoint);
    cfg.listening_port = 6999;
    // Diskless: a huge ACK period, so only the immediate post-RDB ACK can start the stream.
    cfg.ack_interval = if diskless {
        Duration::from_secs(3600)
    } else {
        Duration::from_millis(100)
    };
    cfg.read_buffer_size = 4096 + (Rng::new(&seed).next() % 8192) as usize;
    let record = Arc::new(Mutex::new(Record::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let link = tokio::spawn(run_link(
        cfg,
        progress.clone(),
        RecordingSink(record.clone()),
        stop_rx,
    ));

    let expected_stream = &file[stream_at..];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if record.lock().unwrap().stream.len() >= expected_stream.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{seed}: stream incomplete: {} of {} bytes; state {}; last error {:?}",
            record.lock().unwrap().stream.len(),
            expected_stream.len(),
            progress.state(),
            progress.last_error()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !legacy {
        // Let a periodic ACK (disk mode, 100 ms) go out with the final offset.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop_tx.send(true).unwrap();
    link.await.unwrap().expect("link ended with an error");
    let report = master.await.unwrap();

    let rec = record.lock().unwrap();
    // Handshake as a real replica does it, and the SYNC fallback on 2.4/2.6.
    let mut want_hs = vec![
        "PING",
        "REPLCONF listening-port 6999",
        "REPLCONF capa eof capa psync2",
        "REPLCONF version 9.0.0",
        "PSYNC ? -1",
    ];
    if legacy {
        want_hs.push("SYNC");
    }
    assert_eq!(report.handshake, want_hs, "{seed}");
    // FULLRESYNC replid and offset.
    if legacy {
        assert_eq!(rec.full, vec![("?".to_string(), None)], "{seed}");
    } else {
        let replid = meta["replid"].as_str().unwrap().to_string();
        let initial = meta["initial_offset"].as_u64().unwrap();
        assert_eq!(rec.full, vec![(replid.clone(), Some(initial))], "{seed}");
        assert_eq!(progress.replid(), Some(replid), "{seed}");
    }
    assert!(rec.partial.is_empty());
    assert_eq!(rec.rdb_ends, 1);
    // RDB payload: exact bytes, length and sha256 (keepalives and the EOF mark excluded).
    assert_eq!(rec.rdb.len(), u(&meta["rdb_payload_len"]), "{seed}");
    let sha = Sha256::digest(&rec.rdb);
    let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, meta["rdb_payload_sha256"].as_str().unwrap(), "{seed}");
    let p0 = u(&meta["rdb_payload_file_offset"]);
    assert!(rec.rdb == file[p0..p0 + rec.rdb.len()], "{seed}");
    assert_eq!(progress.rdb_bytes_received(), rec.rdb.len() as u64);
    // Stream: the file tail, exactly; offsets.
    assert!(rec.stream == expected_stream, "{seed}: stream bytes differ");
    if legacy {
        assert_eq!(progress.received_offset(), expected_stream.len() as u64);
        assert!(report.acks.is_empty(), "{seed}: ACK sent to a SYNC master");
    } else {
        let final_offset = meta["final_offset"].as_u64().unwrap();
        assert_eq!(progress.received_offset(), final_offset, "{seed}");
        assert!(!report.acks.is_empty(), "{seed}: no REPLCONF ACK");
    }
    if diskless {
        let rdb_at = report.rdb_sent_at.unwrap();
        let (_, ack_at) = report.acks[0];
        assert!(
            ack_at.duration_since(rdb_at) < Duration::from_secs(2),
            "{seed}: first ACK {:?} after the diskless RDB",
            ack_at.duration_since(rdb_at)
        );
    }

    // Frame the stream in random chunks and compare with commands.json.
    let list = cmds["commands"].as_array().unwrap();
    let mut framer = CommandFramer::new();
    let mut rng = Rng::new(&format!("{seed}/framer"));
    let mut frames = Vec::new();
    let mut pos = 0;
    while pos < rec.stream.len() {
        let n = rng.chunk().min(rec.stream.len() - pos);
        framer.push(&rec.stream[pos..pos + n]);
        pos += n;
        while let Some(f) = framer.next_frame().unwrap() {
            frames.push(f);
        }
    }
    assert_eq!(framer.buffered(), 0);
    assert_eq!(frames.len(), list.len(), "{seed}: command count");
    let b64 = base64::engine::general_purpose::STANDARD;
    let initial = meta["initial_offset"].as_u64();
    let mut off = 0usize;
    for (i, (f, c)) in frames.iter().zip(list).enumerate() {
        let want: Vec<Vec<u8>> = c["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| b64.decode(a.as_str().unwrap()).unwrap())
            .collect();
        let got: Vec<Vec<u8>> = f.args.iter().map(|a| a.to_vec()).collect();
        assert_eq!(got, want, "{seed}: command {i} ({})", c["text"]);
        assert_eq!(f.raw.len(), u(&c["len"]), "{seed}: command {i} length");
        assert_eq!(
            f.inline,
            c["inline"].as_bool().unwrap(),
            "{seed}: command {i}"
        );
        assert_eq!(stream_at + off, u(&c["file_offset"]), "{seed}: command {i}");
        match initial {
            Some(init) => assert_eq!(Some(init + off as u64), c["repl_offset"].as_u64()),
            None => assert!(c["repl_offset"].is_null()),
        }
        off += f.raw.len();
    }
    assert_eq!(off, expected_stream.len());
    let inline = frames.iter().filter(|f| f.inline).count() as u64;
    assert_eq!(inline, meta["stream_inline_commands"].as_u64().unwrap());
}

macro_rules! corpus_tests {
    ($($name:ident => ($dir:expr, $mode:expr),)*) => {$(
        #[tokio::test(flavor = "current_thread")]
        async fn $name() {
            replay($dir, $mode).await;
        }
    )*};
}

corpus_tests! {
    v2_4_18_full => ("2.4.18", "full"),
    v2_6_17_full => ("2.6.17", "full"),
    v2_8_24_full => ("2.8.24", "full"),
    v2_8_24_diskless => ("2.8.24", "diskless"),
    v3_2_13_full => ("3.2.13", "full"),
    v3_2_13_diskless => ("3.2.13", "diskless"),
    v4_0_14_full => ("4.0.14", "full"),
    v4_0_14_diskless => ("4.0.14", "diskless"),
    v5_0_14_full => ("5.0.14", "full"),
    v5_0_14_diskless => ("5.0.14", "diskless"),
    v6_0_20_full => ("6.0.20", "full"),
    v6_0_20_diskless => ("6.0.20", "diskless"),
    v6_2_16_full => ("6.2.16", "full"),
    v6_2_16_diskless => ("6.2.16", "diskless"),
    v7_0_15_full => ("7.0.15", "full"),
    v7_0_15_diskless => ("7.0.15", "diskless"),
    v7_2_6_full => ("7.2.6", "full"),
    v7_2_6_diskless => ("7.2.6", "diskless"),
    v7_4_1_full => ("7.4.1", "full"),
    v7_4_1_diskless => ("7.4.1", "diskless"),
    v8_0_m01_full => ("8.0-m01", "full"),
    v8_0_m01_diskless => ("8.0-m01", "diskless"),
}

#[test]
fn corpus_has_22_captures() {
    let n = std::fs::read_dir(support::corpus_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten())
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("psync-") && n.ends_with(".bin")
        })
        .count();
    assert_eq!(n, 22);
}
