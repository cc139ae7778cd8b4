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
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::capture_master::{mock_master, u, Capture, Rng};
use tokio::net::TcpListener;
use tokio::sync::watch;

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

async fn replay(dir: &str, mode: &str) {
    replay_capture(&support::corpus_dir().join(dir), dir, mode).await;
}

/// Replay `psync-<mode>.bin` of `dir` to the real link and check everything it received.
async fn replay_capture(dir: &Path, label: &str, mode: &str) {
    let cap = Arc::new(Capture::load(dir, mode));
    let (file, meta, cmds) = (&cap.file, &cap.meta, &cap.commands);
    let legacy = meta["sync_command"] == "SYNC";
    let diskless = meta["mode"] == "diskless";
    let stream_at = u(&meta["stream_file_offset"]);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seed = format!("{label}/{mode}");
    let master = tokio::spawn(mock_master(listener, cap.clone(), seed.clone()));

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

/// The modern servers' captures (`tests/data/modern`, made by `examples/capture_replication`):
/// the handshake replies recorded from them (Valkey answers `REPLCONF version`), Valkey 9's
/// `VALKEY080` payload, hash field commands in the stream.
macro_rules! modern_tests {
    ($($name:ident => ($dir:expr, $mode:expr),)*) => {$(
        #[tokio::test(flavor = "current_thread")]
        async fn $name() {
            replay_capture(&support::modern::captures_dir().join($dir), $dir, $mode).await;
        }
    )*};
}

modern_tests! {
    redis_8_0_2_full => ("redis-8.0.2", "full"),
    redis_8_0_2_diskless => ("redis-8.0.2", "diskless"),
    valkey_8_1_1_full => ("valkey-8.1.1", "full"),
    valkey_8_1_1_diskless => ("valkey-8.1.1", "diskless"),
    valkey_9_1_2_full => ("valkey-9.1.2", "full"),
    valkey_9_1_2_diskless => ("valkey-9.1.2", "diskless"),
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
