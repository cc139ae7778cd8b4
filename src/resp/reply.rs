//! Parsing replies from a Redis server (the target, and a master during the handshake).
//!
//! Split in two like tokio's mini-redis: [`parse_reply`] returns `Ok(None)` while the buffer
//! holds only part of a reply, so the caller reads more and tries again; it never consumes
//! anything until a whole reply is there.

use bytes::Bytes;

/// Deepest nesting of arrays accepted (replies to our own commands are at most 2 deep).
const MAX_DEPTH: usize = 32;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(Bytes),
    Error(Bytes),
    Integer(i64),
    Bulk(Option<Bytes>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// The text of a simple string, error or bulk reply (lossy), for messages and checks.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Reply::Simple(b) | Reply::Error(b) | Reply::Bulk(Some(b)) => {
                Some(String::from_utf8_lossy(b).into_owned())
            }
            Reply::Integer(i) => Some(i.to_string()),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Integer(i) => Some(*i),
            Reply::Bulk(Some(b)) | Reply::Simple(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("protocol error at byte {offset}: {msg}")]
    Invalid { offset: usize, msg: String },
}

fn invalid(offset: usize, msg: impl Into<String>) -> ProtocolError {
    ProtocolError::Invalid {
        offset,
        msg: msg.into(),
    }
}

/// Parse one reply from the start of `buf`: `Ok(Some((reply, consumed)))`, or `Ok(None)` when
/// more bytes are needed.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let mut pos = 0;
    match parse_at(buf, &mut pos, 0)? {
        Some(r) => Ok(Some((r, pos))),
        None => Ok(None),
    }
}

fn line(buf: &[u8], pos: &mut usize) -> Result<Option<(usize, usize)>, ProtocolError> {
    let start = *pos;
    match memchr_crlf(&buf[start..]) {
        Some(i) => {
            *pos = start + i + 2;
            Ok(Some((start, start + i)))
        }
        None => Ok(None),
    }
}

fn memchr_crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\r') {
        let at = from + i;
        if at + 1 >= buf.len() {
            return None;
        }
        if buf[at + 1] == b'\n' {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn parse_int(bytes: &[u8], offset: usize) -> Result<i64, ProtocolError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| {
            invalid(
                offset,
                format!(
                    "expected an integer, got {:?}",
                    String::from_utf8_lossy(bytes)
                ),
            )
        })
}

fn parse_at(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<Reply>, ProtocolError> {
    if *pos >= buf.len() {
        return Ok(None);
    }
    if depth > MAX_DEPTH {
        return Err(invalid(*pos, "reply nested too deeply"));
    }
    let kind = buf[*pos];
    let type_at = *pos;
    *pos += 1;
    let Some((s, e)) = line(buf, pos)? else {
        return Ok(None);
    };
    let body = &buf[s..e];
    let reply = match kind {
        b'+' => Reply::Simple(Bytes::copy_from_slice(body)),
        b'-' => Reply::Error(Bytes::copy_from_slice(body)),
        b':' => Reply::Integer(parse_int(body, s)?),
        b'$' => {
            let len = parse_int(body, s)?;
            if len < 0 {
                Reply::Bulk(None)
            } else {
                let len = len as usize;
                let end = pos
                    .checked_add(len)
                    .ok_or_else(|| invalid(s, "bulk length overflows"))?;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(invalid(end, "bulk string not followed by CRLF"));
                }
                let data = Bytes::copy_from_slice(&buf[*pos..end]);
                *pos = end + 2;
                Reply::Bulk(Some(data))
            }
        }
        b'*' => {
            let n = parse_int(body, s)?;
            if n < 0 {
                Reply::Array(None)
            } else {
                let mut items = Vec::with_capacity((n as usize).min(1024));
                for _ in 0..n {
                    match parse_at(buf, pos, depth + 1)? {
                        Some(r) => items.push(r),
                        None => return Ok(None),
                    }
                }
                Reply::Array(Some(items))
            }
        }
        other => {
            return Err(invalid(
                type_at,
                format!("unexpected reply type byte {:?}", other as char),
            ))
        }
    };
    Ok(Some(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_and_waits_for_more() {
        let cases: &[(&[u8], Reply)] = &[
            (b"+OK\r\n", Reply::Simple(Bytes::from_static(b"OK"))),
            (b"-ERR x\r\n", Reply::Error(Bytes::from_static(b"ERR x"))),
            (b":-12\r\n", Reply::Integer(-12)),
            (
                b"$3\r\na\r\n\r\n",
                Reply::Bulk(Some(Bytes::from_static(b"a\r\n"))),
            ),
            (b"$-1\r\n", Reply::Bulk(None)),
            (
                b"*2\r\n:1\r\n$0\r\n\r\n",
                Reply::Array(Some(vec![
                    Reply::Integer(1),
                    Reply::Bulk(Some(Bytes::new())),
                ])),
            ),
        ];
        for (wire, want) in cases {
            for cut in 0..wire.len() {
                assert_eq!(parse_reply(&wire[..cut]).unwrap(), None, "cut at {cut}");
            }
            assert_eq!(parse_reply(wire).unwrap(), Some((want.clone(), wire.len())));
        }
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_reply(b"?x\r\n").is_err());
        assert!(parse_reply(b"$2\r\nabcd").is_err());
        assert!(parse_reply(b":x\r\n").is_err());
    }
}
