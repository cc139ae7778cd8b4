//! The blocking client's connection: plain TCP, or TLS over TCP (rustls's blocking API).
//!
//! What the callers need of it, as of a `TcpStream`: read, write, socket timeouts, shutdown,
//! and a split into a reader and a writer used from two threads (the target's writers send
//! on one thread and read the replies on another), plus the raw socket to shut down from a
//! third (abort).
//!
//! Plain TCP stays a `TcpStream` behind one `match`: no lock, no copy. TLS: one
//! `rustls::ClientConnection` behind a mutex, shared by the halves ([`Transport::try_clone`]),
//! each half with its own clone of the socket. The reader reads raw bytes from the socket
//! *without* the lock, then locks to decrypt them and take the plaintext. The writer takes the
//! socket-write lock, then the connection's lock to encrypt into its buffer, releases the
//! connection and writes the records: records reach the socket in the order they were made,
//! and a reader never waits for a writer blocked on a full socket (the writer holds only the
//! write lock then). TLS output the reader's side produces (a key update's answer) is sent
//! by the reader if the write lock is free, else by the writer's next write.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustls::ClientConnection;

/// A connection to a Redis server, plain or TLS. Dropping it does not close the socket
/// while another half holds a clone (as with `TcpStream::try_clone`).
pub enum Transport {
    Plain(TcpStream),
    Tls(TlsHalf),
}

/// One half of a TLS connection: a socket clone, the shared TLS state, a buffer for raw
/// bytes read and one for records to write.
pub struct TlsHalf {
    sock: TcpStream,
    shared: Arc<TlsShared>,
    raw: Vec<u8>,
    out: Vec<u8>,
}

struct TlsShared {
    /// The TLS session, and raw bytes read but not yet taken by it.
    conn: Mutex<TlsState>,
    /// Held while records are written to the socket, so that they go out in order.
    write: Mutex<()>,
}

struct TlsState {
    conn: ClientConnection,
    pending: Vec<u8>,
    pos: usize,
}

/// Raw bytes read from the socket at a time.
const RAW_READ: usize = 64 * 1024;

impl Transport {
    /// TLS over `sock`, the handshake done: its failure is the error (with the rustls error
    /// inside, for [`super::tls::describe`]). `timeout` bounds each read and write of it; the
    /// socket's own timeouts are kept.
    pub fn tls(
        mut sock: TcpStream,
        mut conn: ClientConnection,
        timeout: Duration,
    ) -> io::Result<Transport> {
        let before = (sock.read_timeout()?, sock.write_timeout()?);
        sock.set_read_timeout(Some(before.0.map_or(timeout, |t| t.min(timeout))))?;
        sock.set_write_timeout(Some(before.1.map_or(timeout, |t| t.min(timeout))))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        sock.set_read_timeout(before.0)?;
        sock.set_write_timeout(before.1)?;
        let shared = Arc::new(TlsShared {
            conn: Mutex::new(TlsState {
                conn,
                pending: Vec::new(),
                pos: 0,
            }),
            write: Mutex::new(()),
        });
        Ok(Transport::Tls(TlsHalf::new(sock, shared)))
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.sock,
        }
    }

    /// Another handle on the same connection, for the other half of a split (one reads, the
    /// other writes; as with TCP, two readers at once would share the bytes between them).
    pub fn try_clone(&self) -> io::Result<Transport> {
        Ok(match self {
            Transport::Plain(s) => Transport::Plain(s.try_clone()?),
            Transport::Tls(t) => {
                Transport::Tls(TlsHalf::new(t.sock.try_clone()?, t.shared.clone()))
            }
        })
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(t)
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_write_timeout(t)
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.tcp().shutdown(how)
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}

impl Read for Transport {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Transport {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(t) => t.write(buf),
        }
    }

    #[inline]
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(_) => Ok(()),
        }
    }
}

/// A rustls error as an I/O error, the rustls error kept inside.
fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsHalf {
    fn new(sock: TcpStream, shared: Arc<TlsShared>) -> TlsHalf {
        TlsHalf {
            sock,
            shared,
            raw: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Plaintext into `buf`: what the session holds, else the raw bytes pending, else more
    /// from the socket (read without the lock).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            // What the session took from the pending raw bytes: `None` when none were
            // pending (then more must come from the socket).
            let took = {
                let mut st = self.shared.conn.lock();
                match st.conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                let TlsState { conn, pending, pos } = &mut *st;
                if *pos < pending.len() {
                    let mut rest = &pending[*pos..];
                    *pos += conn.read_tls(&mut rest)?;
                    conn.process_new_packets().map_err(tls_err)?;
                    Some(conn.wants_write())
                } else {
                    None
                }
            };
            match took {
                Some(true) => {
                    let shared = self.shared.clone();
                    let write = shared.write.try_lock();
                    if write.is_some() {
                        self.send_pending()?;
                    }
                    drop(write);
                }
                Some(false) => {}
                None => self.fill()?,
            }
        }
    }

    /// Read raw bytes from the socket (no lock held) and queue them for the session. At the
    /// end of the stream the session is told, so that its reader reports a clean close or a
    /// truncation.
    fn fill(&mut self) -> io::Result<()> {
        self.raw.resize(RAW_READ, 0);
        let n = self.sock.read(&mut self.raw)?;
        let mut st = self.shared.conn.lock();
        if n == 0 {
            let mut empty: &[u8] = &[];
            st.conn.read_tls(&mut empty)?;
            st.conn.process_new_packets().map_err(tls_err)?;
            return Ok(());
        }
        let TlsState { pending, pos, .. } = &mut *st;
        pending.drain(..*pos);
        *pos = 0;
        pending.extend_from_slice(&self.raw[..n]);
        Ok(())
    }

    /// Encrypt some of `buf` and write the records (under the write lock, in order).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let shared = self.shared.clone();
        let _w = shared.write.lock();
        let n = self.shared.conn.lock().conn.writer().write(buf)?;
        self.send_pending()?;
        Ok(n)
    }

    /// Write every record the session has ready. The caller holds the write lock.
    fn send_pending(&mut self) -> io::Result<()> {
        loop {
            self.out.clear();
            {
                let mut st = self.shared.conn.lock();
                while st.conn.wants_write() {
                    st.conn.write_tls(&mut self.out)?;
                }
            }
            if self.out.is_empty() {
                return Ok(());
            }
            self.sock.write_all(&self.out)?;
        }
    }
}
