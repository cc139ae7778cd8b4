//! The replication link's connection to a master: plain TCP, or TLS (tokio-rustls) when the
//! source is `rediss://` (or a Twemproxy pool declared TLS). The handshake, the RDB and the
//! stream read and write it alike; only the split for the stream differs (a plain socket
//! splits without a lock, [`SourceStream::Tls`] through `tokio::io::split`).

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::endpoint::Endpoint;
use crate::resp::tls;

/// A connection to a master.
pub enum SourceStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why TLS could not start: the settings, or the handshake; in words (`resp::tls`).
pub async fn start_tls(
    ep: &Endpoint,
    tcp: TcpStream,
    timeout: std::time::Duration,
) -> Result<SourceStream, String> {
    let Some(opts) = &ep.tls else {
        return Ok(SourceStream::Plain(tcp));
    };
    let config = tls::client_config(opts).map_err(|e| e.to_string())?;
    let name = tls::server_name(ep, opts).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Err(_) => Err(format!(
            "no TLS answer within {timeout:?} (a plain-text server behind rediss://?)"
        )),
        Ok(Err(e)) => Err(tls::describe(&e)
            .unwrap_or_else(|| format!("{e} (a plain-text server behind rediss://?)"))),
        Ok(Ok(s)) => Ok(SourceStream::Tls(Box::new(s))),
    }
}

impl AsyncRead for SourceStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SourceStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            SourceStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SourceStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            SourceStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            SourceStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SourceStream::Plain(s) => Pin::new(s).poll_flush(cx),
            SourceStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            SourceStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            SourceStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
