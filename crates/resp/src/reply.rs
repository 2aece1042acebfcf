//! RESP2 replies and their encoding.

use bytes::{BufMut, Bytes, BytesMut};

/// A reply to one request, as RESP2 can express it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a short status line.
    Simple(String),
    /// `-ERR message`: the text includes the error code (`ERR`, `WRONGTYPE`…).
    Error(String),
    Integer(i64),
    /// A binary-safe string.
    Bulk(Bytes),
    /// The absent value, e.g. `GET` of a missing key.
    NullBulk,
    Array(Vec<Reply>),
    /// The absent array, e.g. an aborted transaction.
    NullArray,
}

impl Reply {
    pub fn ok() -> Self {
        Self::Simple("OK".to_owned())
    }

    pub fn error(text: impl Into<String>) -> Self {
        Self::Error(text.into())
    }

    pub fn bulk(bytes: impl Into<Bytes>) -> Self {
        Self::Bulk(bytes.into())
    }
}

/// Appends the RESP2 encoding of `reply` to `out`.
///
/// Line breaks in simple strings and errors are replaced by spaces: a line
/// break there would end the reply early and desynchronise the client.
pub fn encode(reply: &Reply, out: &mut BytesMut) {
    match reply {
        Reply::Simple(text) => put_line(out, b'+', text.as_bytes()),
        Reply::Error(text) => put_line(out, b'-', text.as_bytes()),
        Reply::Integer(n) => put_header(out, b':', *n),
        Reply::Bulk(bytes) => {
            put_len_header(out, b'$', bytes.len());
            out.reserve(bytes.len() + 2);
            out.put_slice(bytes);
            out.put_slice(b"\r\n");
        }
        Reply::NullBulk => out.put_slice(b"$-1\r\n"),
        Reply::Array(items) => {
            put_len_header(out, b'*', items.len());
            for item in items {
                encode(item, out);
            }
        }
        Reply::NullArray => out.put_slice(b"*-1\r\n"),
    }
}

fn put_line(out: &mut BytesMut, prefix: u8, text: &[u8]) {
    out.reserve(text.len() + 3);
    out.put_u8(prefix);
    for &b in text {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    out.put_slice(b"\r\n");
}

/// Writes `<prefix><n>\r\n` without going through the formatting machinery,
/// since every bulk and array reply starts with one.
fn put_header(out: &mut BytesMut, prefix: u8, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        // `rest % 10` is below 10, so the cast cannot truncate.
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.reserve(24);
    out.put_u8(prefix);
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[at..]);
    out.put_slice(b"\r\n");
}

/// Lengths of in-memory values always fit in an i64.
/// Writes the header of a bulk string or an array of `len` (`$` or `*`).
pub fn put_len_header(out: &mut BytesMut, prefix: u8, len: usize) {
    put_header(out, prefix, i64::try_from(len).unwrap_or(i64::MAX));
}
