//! Encoding commands as RESP multibulk arrays, the only form every Redis accepts in a pipeline.

use bytes::{BufMut, BytesMut};

/// Append `*<n>\r\n$<len>\r\n<arg>\r\n...` for `args` to `out`.
pub fn encode_command<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) {
    let total: usize = args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>() + 16;
    out.reserve(total);
    put_header(out, b'*', args.len());
    for arg in args {
        encode_bulk(out, arg.as_ref());
    }
}

/// Append one bulk string `$<len>\r\n<data>\r\n`.
pub fn encode_bulk(out: &mut BytesMut, data: &[u8]) {
    put_header(out, b'$', data.len());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Append a bulk string header `$<len>\r\n`, for callers that write the data (then `\r\n`)
/// themselves.
pub fn encode_bulk_header(out: &mut BytesMut, len: usize) {
    put_header(out, b'$', len);
}

/// Append an array header `*<n>\r\n`, for callers that stream the arguments themselves.
pub fn encode_array_header(out: &mut BytesMut, n: usize) {
    put_header(out, b'*', n);
}

fn put_header(out: &mut BytesMut, kind: u8, n: usize) {
    let digits = itoa_buf(n);
    out.put_u8(kind);
    out.put_slice(digits.as_bytes());
    out.put_slice(b"\r\n");
}

/// Small integer formatting without going through `fmt` (this runs once per argument).
fn itoa_buf(mut n: usize) -> ShortStr {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    ShortStr { buf, start: i }
}

struct ShortStr {
    buf: [u8; 20],
    start: usize,
}

impl ShortStr {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// The encoded length of a command, without encoding it (to plan batches).
pub fn encoded_len<A: AsRef<[u8]>>(args: &[A]) -> usize {
    fn digits(mut n: usize) -> usize {
        let mut d = 1;
        while n >= 10 {
            n /= 10;
            d += 1;
        }
        d
    }
    3 + digits(args.len())
        + args
            .iter()
            .map(|a| {
                let l = a.as_ref().len();
                5 + digits(l) + l
            })
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_binary_args() {
        let mut out = BytesMut::new();
        encode_command(&mut out, &[&b"SET"[..], b"k\r\n", b""]);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n");
        assert_eq!(encoded_len(&[&b"SET"[..], b"k\r\n", b""]), out.len());
    }

    #[test]
    fn length_of_large_counts() {
        let args: Vec<Vec<u8>> = (0..12).map(|i| vec![b'x'; i * 1000]).collect();
        let mut out = BytesMut::new();
        encode_command(&mut out, &args);
        assert_eq!(encoded_len(&args), out.len());
    }
}
