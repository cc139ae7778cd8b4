//! The blocking client's TLS transport split in two halves used from two threads, as the
//! target's writers use it: one thread writes megabytes while the other reads the echo. An
//! echo server stops reading while its writes back are not read, so a reader that waited on
//! the writer (or the reverse) would hang here instead of passing.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use redis_relay::endpoint::TlsOptions;
use redis_relay::resp::{tls, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::tls::Certs;

/// A TLS echo server for one connection, on a free loopback port.
fn echo_server(certs: &Certs) -> (u16, std::thread::JoinHandle<u64>) {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.path("server.pem"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_file(certs.path("server.key")).unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        let mut s = rustls::StreamOwned::new(conn, sock);
        let mut buf = vec![0u8; 32 * 1024];
        let mut echoed = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return echoed,
                Ok(n) => {
                    s.write_all(&buf[..n]).unwrap();
                    echoed += n as u64;
                }
            }
        }
    });
    (port, handle)
}

#[test]
fn tls_halves_write_and_read_at_once_without_deadlock() {
    let certs = Certs::generate();
    let (port, server) = echo_server(&certs);
    let opts = TlsOptions {
        ca_file: Some(certs.path("ca.pem")),
        ..TlsOptions::default()
    };
    let config = tls::build(&opts).expect("client config");
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut writer = Transport::tls(sock, conn, Duration::from_secs(5)).expect("handshake");
    assert!(writer.is_tls());
    let mut reader = writer.try_clone().unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    const TOTAL: usize = 16 << 20;
    let data: Vec<u8> = (0..TOTAL).map(|i| (i * 7 % 251) as u8).collect();
    let sent = data.clone();
    let w = std::thread::spawn(move || {
        for chunk in sent.chunks(100_000) {
            writer.write_all(chunk).unwrap();
        }
        writer
    });
    let mut got = vec![0u8; TOTAL];
    reader.read_exact(&mut got).expect("the whole echo");
    assert!(got == data, "the echo differs from what was written");
    let writer = w.join().unwrap();
    writer.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(server.join().unwrap(), TOTAL as u64);
}
