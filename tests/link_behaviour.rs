//! `run_link` against a scripted master, for the behaviours a real server does not show on
//! demand: a silent master (repl-timeout), a connection lost in the middle of the RDB (the
//! next attempt must be a new full sync), and the PSYNC arguments used to resume.

use redis_relay::endpoint::Endpoint;
use redis_relay::resp::framer::CommandFramer;
use redis_relay::source::{run_link, LinkConfig, LinkSink, LinkState, SourceProgress};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const ID: &str = "1255563650c16a70d800f94aff428fa7a653838d";

#[derive(Default)]
struct Events(Vec<String>);

#[derive(Clone)]
struct Sink(Arc<Mutex<Events>>);
impl LinkSink for Sink {
    fn full_resync(&mut self, replid: &str, offset: Option<u64>) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap()
            .0
            .push(format!("full {replid} {offset:?}"));
        Ok(())
    }
    fn partial_resync(&mut self, replid: &str, offset: u64) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap()
            .0
            .push(format!("partial {replid} {offset}"));
        Ok(())
    }
    fn rdb_data(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0.lock().unwrap().0.push(format!("rdb {}", data.len()));
        Ok(())
    }
    fn rdb_end(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap().0.push("rdb_end".into());
        Ok(())
    }
    fn stream_data(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0
            .lock()
            .unwrap()
            .0
            .push(format!("stream {}", String::from_utf8_lossy(data)));
        Ok(())
    }
}

/// Reads commands until PSYNC, answering the handshake; returns the PSYNC arguments.
async fn handshake(s: &mut TcpStream) -> String {
    let mut f = CommandFramer::new();
    let mut buf = [0u8; 1024];
    loop {
        while let Some(fr) = f.next_frame().unwrap() {
            let text: Vec<String> = fr
                .args
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            match text[0].as_str() {
                "PING" => s.write_all(b"+PONG\r\n").await.unwrap(),
                "REPLCONF" => s.write_all(b"+OK\r\n").await.unwrap(),
                "PSYNC" => return text.join(" "),
                other => panic!("unexpected {other}"),
            }
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        f.push(&buf[..n]);
    }
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn silent_master_times_out_then_resumes_and_rdb_drop_forces_full_sync() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (psyncs_tx, mut psyncs) = mpsc::unbounded_channel::<String>();
    let master = tokio::spawn(async move {
        // 1: full sync, 11 stream bytes, then silence (the link must time out).
        let (mut s, _) = l.accept().await.unwrap();
        psyncs_tx.send(handshake(&mut s).await).unwrap();
        s.write_all(format!("+FULLRESYNC {ID} 100\r\n$3\r\nRDB*1\r\n$1\r\nX\r\n").as_bytes())
            .await
            .unwrap();
        let mut held = vec![s];
        // 2: partial resync accepted, a few bytes, then the connection drops.
        let (mut s, _) = l.accept().await.unwrap();
        psyncs_tx.send(handshake(&mut s).await).unwrap();
        s.write_all(b"+CONTINUE\r\n*1\r\n$1\r\nY\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
        // 3: full resync again (say the backlog is gone), connection lost mid-RDB.
        let (mut s, _) = l.accept().await.unwrap();
        psyncs_tx.send(handshake(&mut s).await).unwrap();
        s.write_all(format!("+FULLRESYNC {ID} 500\r\n$100\r\npartial").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(s);
        // 4: must be PSYNC ? -1: the RDB never completed.
        let (mut s, _) = l.accept().await.unwrap();
        psyncs_tx.send(handshake(&mut s).await).unwrap();
        s.write_all(format!("+FULLRESYNC {ID} 600\r\n$0\r\n").as_bytes())
            .await
            .unwrap();
        held.push(s);
        tokio::time::sleep(Duration::from_secs(30)).await;
    });

    let ep = Endpoint::new("127.0.0.1", port);
    let progress = Arc::new(SourceProgress::new(ep.to_string()));
    let mut cfg = LinkConfig::new(ep);
    cfg.repl_timeout = Duration::from_millis(400);
    cfg.backoff_min = Duration::from_millis(20);
    let events = Arc::new(Mutex::new(Events::default()));
    let (stop, rx) = watch::channel(false);
    let link = tokio::spawn(run_link(cfg, progress.clone(), Sink(events.clone()), rx));

    assert_eq!(psyncs.recv().await.unwrap(), "PSYNC ? -1");
    let p = progress.clone();
    wait_until("offset 111", || p.received_offset() == 111).await;
    // The timeout is reported, then the link resumes from the byte after 111.
    assert_eq!(psyncs.recv().await.unwrap(), format!("PSYNC {ID} 112"));
    let err = progress.last_error().unwrap();
    assert!(err.contains("no data from the master"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    wait_until("offset 122", || p.received_offset() == 122).await;
    assert_eq!(psyncs.recv().await.unwrap(), format!("PSYNC {ID} 123"));
    assert_eq!(psyncs.recv().await.unwrap(), "PSYNC ? -1");
    wait_until("4th sync", || {
        p.state() == LinkState::Streaming && p.received_offset() == 600
    })
    .await;
    stop.send(true).unwrap();
    link.await.unwrap().unwrap();
    master.abort();
    let ev = events.lock().unwrap().0.clone();
    assert_eq!(
        ev,
        vec![
            format!("full {ID} Some(100)"),
            "rdb 3".into(),
            "rdb_end".into(),
            "stream *1\r\n$1\r\nX\r\n".into(),
            format!("partial {ID} 111"),
            "stream *1\r\n$1\r\nY\r\n".into(),
            format!("full {ID} Some(500)"),
            "rdb 7".into(),
            format!("full {ID} Some(600)"),
            "rdb_end".into(),
        ]
    );
    assert_eq!(progress.full_syncs(), 3);
    assert_eq!(progress.partial_syncs(), 1);
}
