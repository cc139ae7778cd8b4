//! The capturing replica: a raw socket that sends the relay's handshake (the commands of
//! `source::handshake`, one at a time), `PSYNC ? -1`, and records every byte received during
//! the full sync and the workload that follows; then the meta, commands and
//! expected-after-stream files of the capture.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::BytesMut;
use redis_relay::resp::{encode_command, CommandFramer};
use redis_relay::source::handshake::DECLARED_VALKEY_VERSION;
use redis_relay::verify::read_canonical;
use serde_json::{json, Value as J};
use sha2::{Digest, Sha256};

use crate::dataset::Facts;
use crate::server::Server;
use crate::{cmd, server_json, workload, write_json, Res};

/// The socket and everything read from it so far.
struct Recorder {
    sock: TcpStream,
    file: Vec<u8>,
}

impl Recorder {
    fn send(&mut self, args: &[&str]) -> Res<()> {
        let mut out = BytesMut::new();
        encode_command(&mut out, args);
        self.sock.write_all(&out)?;
        Ok(())
    }

    /// Read what is there (up to the socket's 100 ms timeout); false when nothing came.
    fn read_some(&mut self) -> Res<bool> {
        let mut buf = vec![0u8; 64 * 1024];
        match self.sock.read(&mut buf) {
            Ok(0) => Err("the master closed the connection".into()),
            Ok(n) => {
                self.file.extend_from_slice(&buf[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One reply line starting at `at` (its length with CRLF), reading as needed.
    fn line_at(&mut self, at: usize) -> Res<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(p) = self.file[at..].windows(2).position(|w| w == b"\r\n") {
                return Ok(p + 2);
            }
            if Instant::now() > deadline {
                return Err("no reply line within 10 s".into());
            }
            self.read_some()?;
        }
    }

    fn ack(&mut self, offset: u64) -> Res<()> {
        self.send(&["REPLCONF", "ACK", &offset.to_string()])
    }
}

/// Where things are in a capture once its RDB has arrived.
#[derive(Debug, Default)]
struct Layout {
    newlines_before_fullresync: Vec<usize>,
    fullresync_at: usize,
    fullresync_line: String,
    replid: String,
    initial_offset: u64,
    newlines_before_rdb: Vec<usize>,
    preamble: String,
    payload_at: usize,
    payload_len: usize,
    eof_mark: Option<String>,
    stream_at: usize,
}

/// The layout after `psync_at`, or `None` while the RDB is incomplete.
fn parse_layout(buf: &[u8], psync_at: usize) -> Res<Option<Layout>> {
    let mut l = Layout::default();
    let mut pos = psync_at;
    let line = |pos: usize| -> Option<(String, usize)> {
        let p = buf[pos..].windows(2).position(|w| w == b"\r\n")?;
        Some((
            String::from_utf8_lossy(&buf[pos..pos + p]).into_owned(),
            pos + p + 2,
        ))
    };
    while buf.get(pos) == Some(&b'\n') {
        l.newlines_before_fullresync.push(pos);
        pos += 1;
    }
    l.fullresync_at = pos;
    let Some((text, next)) = line(pos) else {
        return Ok(None);
    };
    let parts: Vec<&str> = text.split(' ').collect();
    let ["+FULLRESYNC", replid, offset] = parts.as_slice() else {
        return Err(format!("unexpected PSYNC reply {text:?}").into());
    };
    l.fullresync_line = text.clone();
    l.replid = replid.to_string();
    l.initial_offset = offset.parse()?;
    pos = next;
    while buf.get(pos) == Some(&b'\n') {
        l.newlines_before_rdb.push(pos);
        pos += 1;
    }
    let Some((preamble, next)) = line(pos) else {
        return Ok(None);
    };
    l.preamble = preamble.clone();
    l.payload_at = next;
    if let Some(mark) = preamble.strip_prefix("$EOF:") {
        let rest = &buf[next..];
        let Some(end) = rest.windows(mark.len()).position(|w| w == mark.as_bytes()) else {
            return Ok(None);
        };
        l.payload_len = end;
        l.stream_at = next + end + mark.len();
        l.eof_mark = Some(mark.to_string());
    } else {
        l.payload_len = preamble
            .strip_prefix('$')
            .ok_or("bad RDB preamble")?
            .parse()?;
        if buf.len() < next + l.payload_len {
            return Ok(None);
        }
        l.stream_at = next + l.payload_len;
    }
    Ok(Some(l))
}

/// The relay's handshake; returns the meta entries and where the PSYNC reply starts.
fn handshake(rec: &mut Recorder) -> Res<(Vec<J>, usize)> {
    let steps: [&[&str]; 4] = [
        &["PING"],
        &["REPLCONF", "listening-port", "6999"],
        &["REPLCONF", "capa", "eof", "capa", "psync2"],
        &["REPLCONF", "version", DECLARED_VALKEY_VERSION],
    ];
    let mut out = Vec::new();
    for args in steps {
        rec.send(args)?;
        let at = rec.file.len();
        let len = rec.line_at(at)?;
        let reply = String::from_utf8_lossy(&rec.file[at..at + len - 2]).into_owned();
        out.push(json!({"sent": args.join(" "), "reply": reply, "reply_file_offset": at, "reply_len": len}));
    }
    rec.send(&["PSYNC", "?", "-1"])?;
    Ok((out, rec.file.len()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One capture (`mode` is `full` or `diskless`) into `dir`.
pub fn capture(master: &Server, facts: &Facts, mode: &str, dir: &Path) -> Res<()> {
    let started = now_ms();
    let mut admin = master.client()?;
    let key_delay_us = 25_000;
    if mode == "full" {
        // A slow BGSAVE (about 2.5 s), so the master's keepalive newlines precede the RDB.
        cmd!(
            &mut admin,
            "CONFIG",
            "SET",
            "rdb-key-save-delay",
            key_delay_us.to_string()
        )?;
    }
    let sock = TcpStream::connect(("127.0.0.1", master.port))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut rec = Recorder {
        sock,
        file: Vec::new(),
    };
    let (hs, psync_at) = handshake(&mut rec)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let layout = loop {
        if let Some(l) = parse_layout(&rec.file, psync_at)? {
            break l;
        }
        if Instant::now() > deadline {
            return Err("the RDB did not arrive within 60 s".into());
        }
        rec.read_some()?;
    };
    cmd!(&mut admin, "CONFIG", "SET", "rdb-key-save-delay", "0")?;
    // A diskless master starts the stream only after this first ACK.
    rec.ack(layout.initial_offset)?;
    let (after, final_offset) = record_workload(&mut rec, master, facts, &layout)?;
    rec.file
        .truncate(layout.stream_at + (final_offset - layout.initial_offset) as usize);

    let commands = decode_commands(&rec.file, &layout)?;
    let name = format!("psync-{mode}");
    std::fs::write(dir.join(format!("{name}.bin")), &rec.file)?;
    let meta = meta_json(
        &rec.file,
        &layout,
        &commands,
        MetaFacts {
            mode,
            hs,
            psync_at,
            final_offset,
            started,
            facts,
            key_delay_us,
        },
    );
    write_json(&dir.join(format!("{name}.meta.json")), &meta)?;
    write_json(
        &dir.join(format!("{name}.commands.json")),
        &json!({"commands": commands}),
    )?;
    let after_name = match mode {
        "full" => "expected-after-stream.json".to_string(),
        _ => format!("expected-after-stream-{mode}.json"),
    };
    write_json(&dir.join(after_name), &after)?;
    eprintln!(
        "{name}: {} bytes, {} commands, offset {} -> {final_offset}",
        rec.file.len(),
        commands.len(),
        layout.initial_offset
    );
    Ok(())
}

/// Run the workload on another connection while recording (ACK once a second); then read
/// the master's content and its final offset, and record up to that offset.
fn record_workload(
    rec: &mut Recorder,
    master: &Server,
    facts: &Facts,
    l: &Layout,
) -> Res<(J, u64)> {
    let ep = master.endpoint();
    let f = facts.clone();
    let worker = std::thread::spawn(move || -> Result<(), String> {
        let mut c = redis_relay::resp::Client::connect(&ep, Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        workload::run(&mut c, &f).map_err(|e| e.to_string())
    });
    let offset = |rec: &Recorder| l.initial_offset + (rec.file.len() - l.stream_at) as u64;
    let mut last_ack = Instant::now();
    while !worker.is_finished() {
        rec.read_some()?;
        if last_ack.elapsed() >= Duration::from_secs(1) {
            rec.ack(offset(rec))?;
            last_ack = Instant::now();
        }
    }
    worker.join().map_err(|_| "the workload panicked")??;
    let after = read_canonical(&master.endpoint())?;
    let info = cmd!(&mut master.client()?, "INFO", "replication")?
        .as_text()
        .unwrap_or_default();
    let end: u64 = redis_relay::resp::client::info_field(&info, "master_repl_offset")
        .ok_or("no master_repl_offset")?
        .parse()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while offset(rec) < end {
        if Instant::now() > deadline {
            return Err(format!("stream stopped at {} before {end}", offset(rec)).into());
        }
        rec.read_some()?;
    }
    rec.ack(end)?;
    Ok((after, end))
}

/// The stream's commands, framed as the relay frames them.
fn decode_commands(file: &[u8], l: &Layout) -> Res<Vec<J>> {
    let mut framer = CommandFramer::new();
    framer.push(&file[l.stream_at..]);
    let mut out = Vec::new();
    let mut at = l.stream_at;
    while let Some(f) = framer.next_frame()? {
        let argv: Vec<String> = f.args.iter().map(|a| B64.encode(a)).collect();
        let text: String = f
            .args
            .iter()
            .map(|a| String::from_utf8_lossy(&a[..a.len().min(40)]).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(120)
            .collect();
        out.push(json!({
            "file_offset": at,
            "repl_offset": l.initial_offset + (at - l.stream_at) as u64,
            "len": f.raw.len(),
            "argv": argv,
            "inline": f.inline,
            "text": text,
        }));
        at += f.raw.len();
    }
    if framer.buffered() != 0 || at != file.len() {
        return Err(format!(
            "the stream does not end on a command boundary ({at} of {})",
            file.len()
        )
        .into());
    }
    Ok(out)
}

struct MetaFacts<'a> {
    mode: &'a str,
    hs: Vec<J>,
    psync_at: usize,
    final_offset: u64,
    started: u64,
    facts: &'a Facts,
    key_delay_us: u64,
}

fn meta_json(file: &[u8], l: &Layout, commands: &[J], m: MetaFacts) -> J {
    let payload = &file[l.payload_at..l.payload_at + l.payload_len];
    let sha: String = Sha256::digest(payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let pings = commands
        .iter()
        .filter(|c| {
            c["argv"][0]
                .as_str()
                .is_some_and(|a| B64.decode(a).is_ok_and(|n| n.eq_ignore_ascii_case(b"ping")))
        })
        .count();
    let diskless = m.mode == "diskless";
    json!({
        "server": server_json(m.facts),
        "mode": if diskless { "diskless" } else { "disk" },
        "sync_command": "PSYNC",
        "file": format!("psync-{}.bin", m.mode),
        "file_size": file.len(),
        "capture_started_unix_ms": m.started,
        "master_config": {
            "repl-diskless-sync": if diskless { "yes" } else { "no" },
            "repl-diskless-sync-delay": if diskless { json!(2) } else { J::Null },
            "rdb-key-save-delay_us": if diskless { J::Null } else { json!(m.key_delay_us) },
            "repl-ping-period": 1,
        },
        "handshake": m.hs,
        "psync_sent": "PSYNC ? -1",
        "psync_reply_file_offset": m.psync_at,
        "keepalive_newlines_before_fullresync": l.newlines_before_fullresync.len(),
        "fullresync_file_offset": l.fullresync_at,
        "fullresync_line": l.fullresync_line,
        "fullresync_line_len": l.fullresync_line.len() + 2,
        "replid": l.replid,
        "initial_offset": l.initial_offset,
        "keepalive_newlines_before_rdb": l.newlines_before_rdb.len(),
        "keepalive_newline_file_offsets": l.newlines_before_fullresync.iter().chain(&l.newlines_before_rdb).collect::<Vec<_>>(),
        "rdb_preamble": l.preamble,
        "rdb_eof_mark": l.eof_mark,
        "rdb_payload_file_offset": l.payload_at,
        "rdb_payload_len": l.payload_len,
        "rdb_payload_sha256": sha,
        "rdb_header": String::from_utf8_lossy(&payload[..payload.len().min(9)]),
        "stream_file_offset": l.stream_at,
        "stream_bytes": file.len() - l.stream_at,
        "stream_commands": commands.len(),
        "stream_inline_commands": 0,
        "stream_pings": pings,
        "final_offset": m.final_offset,
        "master_repl_offset_at_end": m.final_offset,
    })
}
