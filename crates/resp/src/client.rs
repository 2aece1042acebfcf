//! The client side of RESP2, without I/O: commands encoded as arrays of
//! bulk strings, and replies decoded incrementally with limits, so a
//! confused or hostile server cannot make a client buffer without bound.
//! The load generator and the node's forwarding of admin commands use it.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{Reply, parse_i64, put_len_header};

/// Bounds on what one reply may make the client buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Longest status, error or header line, without its line end.
    pub line_bytes_max: usize,
    /// Longest bulk string.
    pub bulk_bytes_max: usize,
    /// Most elements in one array.
    pub array_len_max: usize,
    /// Deepest nesting of arrays.
    pub depth_max: usize,
}

impl Default for ReplyLimits {
    fn default() -> Self {
        Self {
            line_bytes_max: 64 * 1024,
            bulk_bytes_max: 512 * 1024 * 1024,
            array_len_max: 1 << 20,
            depth_max: 16,
        }
    }
}

/// A reply that is not valid RESP2, or exceeds the [`ReplyLimits`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("unknown reply type byte {0:#04x}")]
    UnknownType(u8),
    #[error("a reply line is longer than {0} bytes")]
    LineTooLong(usize),
    #[error("a reply line does not end in CRLF")]
    BareLineFeed,
    #[error("bad length or integer in a reply header")]
    BadNumber,
    #[error("a bulk reply of {0} bytes exceeds the limit")]
    BulkTooLarge(i64),
    #[error("an array reply of {0} elements exceeds the limit")]
    ArrayTooLong(i64),
    #[error("arrays nested deeper than {0}")]
    TooDeep(usize),
    #[error("a bulk reply is not followed by CRLF")]
    BulkTerminator,
}

/// Appends `args` to `out` as one RESP2 command (an array of bulk strings).
pub fn encode_command(args: &[&[u8]], out: &mut BytesMut) {
    out.reserve(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    put_len_header(out, b'*', args.len());
    for arg in args {
        put_len_header(out, b'$', arg.len());
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
}

/// Decodes replies from the front of a buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplyDecoder {
    limits: ReplyLimits,
}

impl ReplyDecoder {
    pub fn new(limits: ReplyLimits) -> Self {
        Self { limits }
    }

    /// Takes one whole reply off the front of `buf`, or returns `Ok(None)`
    /// and leaves `buf` as it is when the reply is not complete yet.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
        match self.parse(buf, 0, 0)? {
            Some((reply, end)) => {
                buf.advance(end);
                Ok(Some(reply))
            }
            None => Ok(None),
        }
    }

    /// Parses the reply that starts at `at`; returns it and where it ends.
    fn parse(
        &self,
        buf: &[u8],
        at: usize,
        depth: usize,
    ) -> Result<Option<(Reply, usize)>, ReplyError> {
        let Some(&kind) = buf.get(at) else {
            return Ok(None);
        };
        let Some((line, next)) = self.line(buf, at + 1)? else {
            return Ok(None);
        };
        let text = || String::from_utf8_lossy(line).into_owned();
        let reply = match kind {
            b'+' => (Reply::Simple(text()), next),
            b'-' => (Reply::Error(text()), next),
            b':' => (Reply::Integer(number(line)?), next),
            b'$' => {
                let len = number(line)?;
                if len == -1 {
                    return Ok(Some((Reply::NullBulk, next)));
                }
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&n| n <= self.limits.bulk_bytes_max)
                    .ok_or(ReplyError::BulkTooLarge(len))?;
                let end = next + len;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(ReplyError::BulkTerminator);
                }
                (
                    Reply::Bulk(Bytes::copy_from_slice(&buf[next..end])),
                    end + 2,
                )
            }
            b'*' => {
                let len = number(line)?;
                if len == -1 {
                    return Ok(Some((Reply::NullArray, next)));
                }
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&n| n <= self.limits.array_len_max)
                    .ok_or(ReplyError::ArrayTooLong(len))?;
                if depth >= self.limits.depth_max {
                    return Err(ReplyError::TooDeep(self.limits.depth_max));
                }
                // The count is checked but still untrusted: grow as
                // elements arrive.
                let mut items = Vec::with_capacity(len.min(64));
                let mut at = next;
                for _ in 0..len {
                    let Some((item, end)) = self.parse(buf, at, depth + 1)? else {
                        return Ok(None);
                    };
                    items.push(item);
                    at = end;
                }
                (Reply::Array(items), at)
            }
            other => return Err(ReplyError::UnknownType(other)),
        };
        Ok(Some(reply))
    }

    /// The line that starts at `at`, and where the next one starts.
    fn line<'b>(&self, buf: &'b [u8], at: usize) -> Result<Option<(&'b [u8], usize)>, ReplyError> {
        let rest = buf.get(at..).unwrap_or_default();
        let window = &rest[..rest.len().min(self.limits.line_bytes_max + 2)];
        match window.iter().position(|&b| b == b'\n') {
            Some(0) => Err(ReplyError::BareLineFeed),
            Some(lf) if window[lf - 1] != b'\r' => Err(ReplyError::BareLineFeed),
            Some(lf) => Ok(Some((&window[..lf - 1], at + lf + 1))),
            None if window.len() == self.limits.line_bytes_max + 2 => {
                Err(ReplyError::LineTooLong(self.limits.line_bytes_max))
            }
            None => Ok(None),
        }
    }
}

fn number(line: &[u8]) -> Result<i64, ReplyError> {
    parse_i64(line).ok_or(ReplyError::BadNumber)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::encode;

    fn decode_all(bytes: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut buf = BytesMut::from(bytes);
        let decoder = ReplyDecoder::default();
        let mut out = Vec::new();
        while let Some(reply) = decoder.decode(&mut buf)? {
            out.push(reply);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(out)
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        encode_command(&[b"SET", b"key:1", b""], &mut out);
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$5\r\nkey:1\r\n$0\r\n\r\n");
    }

    #[test]
    fn every_reply_type_decodes() {
        let replies = decode_all(
            b"+OK\r\n-CLUSTERDOWN no leader\r\n:-42\r\n$3\r\na\r\n\r\n$-1\r\n*2\r\n:1\r\n*1\r\n$0\r\n\r\n*-1\r\n*0\r\n",
        )
        .unwrap();
        assert_eq!(
            replies,
            vec![
                Reply::Simple("OK".to_owned()),
                Reply::Error("CLUSTERDOWN no leader".to_owned()),
                Reply::Integer(-42),
                Reply::bulk(&b"a\r\n"[..]),
                Reply::NullBulk,
                Reply::Array(vec![
                    Reply::Integer(1),
                    Reply::Array(vec![Reply::bulk(&b""[..])])
                ]),
                Reply::NullArray,
                Reply::Array(vec![]),
            ]
        );
    }

    /// The server's encoder and this decoder agree on every reply shape.
    #[test]
    fn decodes_what_the_server_encodes() {
        let replies = [
            Reply::ok(),
            Reply::error("ERR value is not an integer or out of range"),
            Reply::Integer(i64::MIN),
            Reply::Integer(i64::MAX),
            Reply::bulk(vec![0u8, 255, b'\r', b'\n']),
            Reply::NullBulk,
            Reply::Array(vec![Reply::NullBulk, Reply::Array(vec![Reply::ok()])]),
        ];
        let mut wire = BytesMut::new();
        for reply in &replies {
            encode(reply, &mut wire);
        }
        assert_eq!(decode_all(&wire).unwrap(), replies);
    }

    /// A reply that arrives a byte at a time decodes once, at its last byte.
    #[test]
    fn partial_replies_wait_for_more_bytes() {
        let wire = b"*2\r\n$5\r\nhello\r\n:7\r\n";
        let decoder = ReplyDecoder::default();
        let mut buf = BytesMut::new();
        for (i, &b) in wire.iter().enumerate() {
            buf.put_u8(b);
            let got = decoder.decode(&mut buf).unwrap();
            if i + 1 < wire.len() {
                assert_eq!(got, None, "complete too early at byte {i}");
                assert_eq!(buf.len(), i + 1, "consumed a partial reply");
            } else {
                assert_eq!(
                    got,
                    Some(Reply::Array(vec![
                        Reply::bulk(&b"hello"[..]),
                        Reply::Integer(7)
                    ]))
                );
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert_eq!(decode_all(b"?x\r\n"), Err(ReplyError::UnknownType(b'?')));
        assert_eq!(decode_all(b":12a\r\n"), Err(ReplyError::BadNumber));
        assert_eq!(decode_all(b"+OK\n"), Err(ReplyError::BareLineFeed));
        assert_eq!(decode_all(b"$-2\r\n"), Err(ReplyError::BulkTooLarge(-2)));
        assert_eq!(decode_all(b"$1\r\nab\r\n"), Err(ReplyError::BulkTerminator));
        assert_eq!(decode_all(b"*-5\r\n"), Err(ReplyError::ArrayTooLong(-5)));
    }

    #[test]
    fn limits_are_enforced_before_the_bytes_arrive() {
        let decoder = ReplyDecoder::new(ReplyLimits {
            line_bytes_max: 8,
            bulk_bytes_max: 10,
            array_len_max: 3,
            depth_max: 2,
        });
        let check = |bytes: &[u8]| decoder.decode(&mut BytesMut::from(bytes));
        assert_eq!(check(b"$11\r\n"), Err(ReplyError::BulkTooLarge(11)));
        assert_eq!(check(b"*4\r\n"), Err(ReplyError::ArrayTooLong(4)));
        assert_eq!(check(b"*1\r\n*1\r\n*1\r\n"), Err(ReplyError::TooDeep(2)));
        assert_eq!(check(b"+1234567890"), Err(ReplyError::LineTooLong(8)));
        // Nine bytes may still be eight and a CR: wait for the next byte.
        assert_eq!(check(b"+123456789"), Ok(None));
        assert_eq!(
            check(b"+12345678\r\n"),
            Ok(Some(Reply::Simple("12345678".to_owned())))
        );
    }
}
