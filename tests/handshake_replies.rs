//! The replica handshake against a scripted master: every reply form the protocol notes list
//! (extra FULLRESYNC tokens, CONTINUE with and without a new id, keepalives before the reply,
//! LOADING / NOMASTERLINK / ERR, NOAUTH, unknown PSYNC -> SYNC) and the bytes read past the reply.

use redis_relay::endpoint::Endpoint;
use redis_relay::resp::framer::CommandFramer;
use redis_relay::source::handshake::{
    connect, handshake, HandshakeConfig, HandshakeError, SyncStart,
};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ID: &str = "1255563650c16a70d800f94aff428fa7a653838d";
const ID2: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A master that answers each received command (upper-cased name) from `script`, in order of
/// the names; returns what it received.
async fn scripted(
    script: Vec<(&'static str, Vec<u8>)>,
) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut f = CommandFramer::new();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let mut script = script.into_iter();
        loop {
            while let Some(fr) = f.next_frame().unwrap() {
                let text: Vec<String> = fr
                    .args
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                got.push(text.join(" "));
                let Some((name, reply)) = script.next() else {
                    return got;
                };
                assert!(
                    text[0].eq_ignore_ascii_case(name),
                    "expected {name}, got {text:?}"
                );
                s.write_all(&reply).await.unwrap();
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => f.push(&buf[..n]),
            }
        }
    });
    (port, h)
}

/// What Redis 7 answers to the handshake before PSYNC (it does not know `REPLCONF version`).
fn std_prefix() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("PING", b"+PONG\r\n".to_vec()),
        ("REPLCONF", b"+OK\r\n".to_vec()),
        ("REPLCONF", b"+OK\r\n".to_vec()),
        (
            "REPLCONF",
            b"-ERR Unrecognized REPLCONF option: version\r\n".to_vec(),
        ),
    ]
}

async fn run(
    script: Vec<(&'static str, Vec<u8>)>,
    password: Option<&str>,
    psync: Option<(String, u64)>,
) -> (
    Result<redis_relay::source::handshake::Handshake, HandshakeError>,
    Vec<String>,
) {
    let (port, master) = scripted(script).await;
    let mut ep = Endpoint::new("127.0.0.1", port);
    ep.password = password.map(str::to_string);
    let cfg = HandshakeConfig {
        endpoint: ep.clone(),
        listening_port: 7001,
        psync,
        io_timeout: Duration::from_secs(5),
    };
    let mut s = connect(&ep, Duration::from_secs(5)).await.unwrap();
    let r = handshake(&mut s, &cfg).await;
    drop(s);
    (r, master.await.unwrap())
}

#[tokio::test]
async fn fullresync_with_extra_tokens_keepalives_and_leftover() {
    let mut script = std_prefix();
    script.push((
        "PSYNC",
        format!("\n\n+FULLRESYNC {ID} 42 extra token\r\n$5\r\nhel").into_bytes(),
    ));
    let (r, sent) = run(script, None, None).await;
    let hs = r.unwrap();
    assert_eq!(
        hs.start,
        SyncStart::Full {
            replid: ID.into(),
            offset: 42
        }
    );
    assert_eq!(hs.keepalives, 2);
    assert_eq!(&hs.leftover[..], b"$5\r\nhel");
    assert_eq!(
        sent,
        vec![
            "PING",
            "REPLCONF listening-port 7001",
            "REPLCONF capa eof capa psync2",
            "REPLCONF version 9.0.0",
            "PSYNC ? -1"
        ]
    );
}

#[tokio::test]
async fn auth_first_then_continue_with_new_id() {
    let mut script = vec![("AUTH", b"+OK\r\n".to_vec())];
    script.extend(std_prefix());
    script.push(("PSYNC", format!("+CONTINUE {ID2}\r\n*1\r\n").into_bytes()));
    let (r, sent) = run(script, Some("pw"), Some((ID.into(), 1001))).await;
    let hs = r.unwrap();
    assert_eq!(hs.start, SyncStart::Continue { replid: ID2.into() });
    assert_eq!(&hs.leftover[..], b"*1\r\n");
    assert_eq!(sent[0], "AUTH pw");
    assert_eq!(sent[5], format!("PSYNC {ID} 1001"));
}

#[tokio::test]
async fn bare_continue_keeps_the_id() {
    let mut script = std_prefix();
    script.push(("PSYNC", b"+CONTINUE\r\n".to_vec()));
    let (r, _) = run(script, None, Some((ID.into(), 5))).await;
    assert_eq!(r.unwrap().start, SyncStart::Continue { replid: ID.into() });
}

#[tokio::test]
async fn old_master_falls_back_to_sync() {
    let script = vec![
        ("PING", b"+PONG\r\n".to_vec()),
        ("REPLCONF", b"+OK\r\n".to_vec()),
        (
            "REPLCONF",
            b"-ERR Unrecognized REPLCONF option: capa\r\n".to_vec(),
        ),
        (
            "REPLCONF",
            b"-ERR Unrecognized REPLCONF option: version\r\n".to_vec(),
        ),
        ("PSYNC", b"-ERR unknown command 'PSYNC'\r\n".to_vec()),
    ];
    let (r, sent) = run(script, None, None).await;
    assert_eq!(r.unwrap().start, SyncStart::LegacySync);
    assert_eq!(sent.last().unwrap(), "SYNC");
}

#[tokio::test]
async fn transient_errors_are_retryable() {
    for reply in [
        "-LOADING Redis is loading the dataset in memory",
        "-NOMASTERLINK Can't SYNC while not connected with my master",
        "-ERR BGSAVE failed",
    ] {
        let mut script = std_prefix();
        script.push(("PSYNC", format!("{reply}\r\n").into_bytes()));
        let (r, _) = run(script, None, None).await;
        let e = r.unwrap_err();
        assert!(!e.is_fatal(), "{e}");
        assert!(matches!(e, HandshakeError::Retryable { .. }), "{e}");
        assert!(e.to_string().contains(reply), "{e}");
        assert!(e.to_string().contains("PSYNC"), "{e}");
    }
    // LOADING to PING too.
    let (r, _) = run(
        vec![("PING", b"-LOADING Redis is loading\r\n".to_vec())],
        None,
        None,
    )
    .await;
    assert!(!r.unwrap_err().is_fatal());
}

#[tokio::test]
async fn auth_errors_are_fatal() {
    let (r, _) = run(
        vec![("PING", b"-NOAUTH Authentication required.\r\n".to_vec())],
        None,
        None,
    )
    .await;
    let e = r.unwrap_err();
    assert!(e.is_fatal());
    assert!(e.to_string().contains("requires a password"), "{e}");
    let (r, _) = run(
        vec![(
            "AUTH",
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n".to_vec(),
        )],
        Some("bad"),
        None,
    )
    .await;
    let e = r.unwrap_err();
    assert!(e.is_fatal());
    assert!(e.to_string().contains("wrong user name or password"), "{e}");
    assert!(!e.to_string().contains("bad"), "{e}");
}

#[tokio::test]
async fn protocol_errors() {
    let mut script = std_prefix();
    script.push(("PSYNC", b":1\r\n".to_vec()));
    let (r, _) = run(script, None, None).await;
    assert!(matches!(r.unwrap_err(), HandshakeError::Protocol { .. }));
    let mut script = std_prefix();
    script.push((
        "PSYNC",
        format!("+FULLRESYNC {ID} notanumber\r\n").into_bytes(),
    ));
    let (r, _) = run(script, None, None).await;
    let e = r.unwrap_err();
    assert!(
        e.to_string()
            .contains("expected +FULLRESYNC <replid> <offset>"),
        "{e}"
    );
    // The master closes the connection before replying.
    let (r, _) = run(vec![], None, None).await;
    assert!(matches!(r.unwrap_err(), HandshakeError::Closed { .. }));
}
