//! The `redis-relay status` command's side: fetch `/status` from a running relay and print it
//! as a table (one row per source). A plain HTTP/1.0 GET on a blocking socket: the endpoint
//! is ours, on loopback or a private network, and the command needs nothing more.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use indicatif::HumanBytes;

use super::{SourceReport, StatusReport};

/// How long to wait for the relay (connect, and the whole answer).
const TIMEOUT: Duration = Duration::from_secs(5);

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot resolve {addr}: {cause}")]
    Resolve { addr: String, cause: String },
    #[error("cannot reach the relay at {addr} (its --metrics-addr): {cause}")]
    Unreachable { addr: String, cause: std::io::Error },
    #[error("{addr} did not answer like a redis-relay status endpoint: {why}")]
    NotRelay { addr: String, why: String },
}

/// `GET /status` from the relay at `addr` (`host:port`).
pub fn fetch(addr: &str) -> Result<StatusReport, FetchError> {
    let body = get(addr, "/status")?;
    serde_json::from_str(&body).map_err(|e| FetchError::NotRelay {
        addr: addr.into(),
        why: format!("/status is not the status JSON ({e})"),
    })
}

/// The body of a 200 answer to `GET path`.
fn get(addr: &str, path: &str) -> Result<String, FetchError> {
    let sock = resolve(addr)?;
    let unreachable = |cause| FetchError::Unreachable {
        addr: addr.into(),
        cause,
    };
    let mut s = TcpStream::connect_timeout(&sock, TIMEOUT).map_err(unreachable)?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(unreachable)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(unreachable)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(unreachable)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(unreachable)?;
    let text = String::from_utf8_lossy(&raw);
    let not_relay = |why: String| FetchError::NotRelay {
        addr: addr.into(),
        why,
    };
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| not_relay("no HTTP answer".into()))?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(not_relay(format!("{path}: {status}")));
    }
    Ok(body.to_string())
}

fn resolve(addr: &str) -> Result<SocketAddr, FetchError> {
    let resolve_err = |cause: String| FetchError::Resolve {
        addr: addr.into(),
        cause,
    };
    addr.to_socket_addrs()
        .map_err(|e| resolve_err(e.to_string()))?
        .next()
        .ok_or_else(|| resolve_err("no address".into()))
}

/// The table's columns, in the order of [`row`]'s cells.
const COLUMNS: [&str; 8] = [
    "SOURCE",
    "STATE",
    "LAG",
    "LAG s",
    "OPS/s",
    "KEYS",
    "ETA",
    "LAST ERROR",
];

/// The report as a table: one row per source, then a line for the relay.
pub fn table(r: &StatusReport) -> String {
    let mut rows = vec![COLUMNS.map(String::from)];
    rows.extend(r.sources.iter().map(row));
    let widths: Vec<usize> = (0..COLUMNS.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for cells in &rows {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let in_sync = r.sources.iter().filter(|s| s.in_sync()).count();
    out.push_str(&format!(
        "relay {} {}, up {}, {in_sync}/{} sources in sync{}\n",
        r.version,
        r.state,
        duration_text(r.uptime_seconds),
        r.sources.len(),
        if r.ready { " (ready)" } else { "" }
    ));
    out
}

/// One source's cells, in the header's order.
fn row(s: &SourceReport) -> [String; 8] {
    let state = match s.percent {
        Some(p) => format!("{} {p:.0}%", s.state),
        None => s.state.clone(),
    };
    let lag_s = match (s.lag_seconds, s.lag_seconds_from.as_deref()) {
        (Some(v), Some("estimate")) => format!("~{v:.2}"),
        (Some(v), _) => format!("{v:.2}"),
        (None, _) => "-".into(),
    };
    let eta = s
        .eta_snapshot_seconds
        .or(s.eta_catch_up_seconds.filter(|_| !s.in_sync()))
        .map(duration_text)
        .unwrap_or_else(|| "-".into());
    let error = match (&s.last_error, s.in_sync()) {
        (Some(e), _) => e.clone(),
        (None, false) => s.why.clone().unwrap_or_default(),
        (None, true) => "-".into(),
    };
    [
        s.source.clone(),
        state,
        s.lag_bytes
            .map(|b| HumanBytes(b).to_string())
            .unwrap_or_else(|| "-".into()),
        lag_s,
        format!("{:.0}", s.ops_per_sec),
        s.snapshot_keys.to_string(),
        eta,
        error,
    ]
}

/// `42s`, `3m05s`, `2h10m`.
fn duration_text(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(state: &str) -> SourceReport {
        SourceReport {
            source: "127.0.0.1:6379".into(),
            state: state.into(),
            why: None,
            link: "streaming".into(),
            percent: None,
            lag_bytes: Some(0),
            lag_seconds: Some(0.0),
            lag_seconds_from: Some("estimate".into()),
            ops_per_sec: 12.4,
            snapshot_keys: 1000,
            commands_applied: 1500,
            eta_snapshot_seconds: None,
            eta_catch_up_seconds: Some(0.0),
            spool_bytes: 0,
            target_errors: 0,
            full_syncs: 1,
            last_error: None,
        }
    }

    #[test]
    fn table_has_a_row_per_source_and_the_relay_line() {
        let mut snap = source("snapshot");
        snap.source = "10.0.0.2:6380".into();
        snap.percent = Some(42.4);
        snap.lag_bytes = None;
        snap.eta_snapshot_seconds = Some(125.0);
        snap.why = Some("snapshot not applied yet".into());
        let r = StatusReport {
            state: "running".into(),
            version: "0.1.0".into(),
            uptime_seconds: 61.0,
            ready: false,
            sources: vec![source("in sync"), snap],
        };
        let t = table(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        let header: Vec<&str> = lines[0]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            header,
            [
                "SOURCE",
                "STATE",
                "LAG",
                "LAG s",
                "OPS/s",
                "KEYS",
                "ETA",
                "LAST ERROR"
            ]
        );
        // Columns are aligned: every row's STATE starts where the header's does.
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(lines[2].find("snapshot 42%"), Some(col), "{t}");
        assert!(lines[1].starts_with("127.0.0.1:6379  in sync"), "{t}");
        assert!(lines[1].contains("~0.00"), "{t}");
        assert!(lines[2].contains("snapshot 42%"), "{t}");
        // No lag before the snapshot is applied.
        let lag_col = lines[0].find("LAG ").unwrap();
        assert_eq!(&lines[2][lag_col..lag_col + 2], "- ", "{t}");
        assert!(lines[2].contains("2m05s"), "{t}");
        assert!(lines[2].ends_with("snapshot not applied yet"), "{t}");
        assert_eq!(
            lines[3],
            "relay 0.1.0 running, up 1m01s, 1/2 sources in sync"
        );
    }

    #[test]
    fn a_dead_address_is_named_in_the_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let e = fetch(&addr).unwrap_err();
        assert!(matches!(e, FetchError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains(&addr), "{e}");
    }
}
