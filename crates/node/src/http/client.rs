//! A tiny blocking HTTP/1.1 client for the node's own endpoints: one `GET`
//! per connection (`Connection: close`), a deadline on the whole exchange and
//! a limit on the response size. Enough for `parliament status` and tests;
//! not a general client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::api::StatusReport;

/// The largest response read, headers included.
pub const RESPONSE_BYTES_MAX: usize = 4 << 20;

/// Why a request got no usable answer. Each variant names the address; the
/// underlying error, if any, is its `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve {addr}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no answer from {addr} within {timeout:?}")]
    TimedOut { addr: String, timeout: Duration },
    #[error("connection to {addr} failed")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr} sent a response larger than {RESPONSE_BYTES_MAX} bytes")]
    TooLarge { addr: String },
    #[error("{addr} sent a malformed HTTP response: {reason}")]
    Malformed { addr: String, reason: &'static str },
    #[error("{addr} answered {path} with HTTP {status}")]
    Status {
        addr: String,
        path: String,
        status: u16,
    },
    #[error("{addr} sent a status this version cannot read")]
    Json {
        addr: String,
        source: serde_json::Error,
    },
}

/// A response: its status code, headers (names lower-cased) and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` from `addr` (`host:port`), all within `timeout`.
pub fn get(addr: &str, path: &str, timeout: Duration) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let timed_out = || ClientError::TimedOut {
        addr: addr.to_owned(),
        timeout,
    };
    let io = |source: std::io::Error| {
        if matches!(
            source.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ) {
            timed_out()
        } else {
            ClientError::Io {
                addr: addr.to_owned(),
                source,
            }
        }
    };

    let mut stream = connect(addr, timeout)?;
    stream
        .set_write_timeout(Some(remaining(deadline).ok_or_else(timed_out)?))
        .map_err(io)?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;

    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        stream
            .set_read_timeout(Some(remaining(deadline).ok_or_else(timed_out)?))
            .map_err(io)?;
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        if raw.len() + n > RESPONSE_BYTES_MAX {
            return Err(ClientError::TooLarge {
                addr: addr.to_owned(),
            });
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    parse_response(&raw).map_err(|reason| ClientError::Malformed {
        addr: addr.to_owned(),
        reason,
    })
}

/// `GET /status` from `addr`, expecting 200 and a [`StatusReport`].
pub fn fetch_status(addr: &str, timeout: Duration) -> Result<StatusReport, ClientError> {
    let response = get(addr, "/status", timeout)?;
    if response.status != 200 {
        return Err(ClientError::Status {
            addr: addr.to_owned(),
            path: "/status".to_owned(),
            status: response.status,
        });
    }
    serde_json::from_slice(&response.body).map_err(|source| ClientError::Json {
        addr: addr.to_owned(),
        source,
    })
}

/// Time left before `deadline`, or `None` once it has passed.
fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

/// Connects to the first address `addr` resolves to that accepts.
fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, ClientError> {
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| ClientError::Resolve {
            addr: addr.to_owned(),
            source,
        })?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for candidate in resolved {
        match TcpStream::connect_timeout(&candidate, timeout) {
            Ok(stream) => return Ok(stream),
            Err(error) => last = error,
        }
    }
    Err(ClientError::Connect {
        addr: addr.to_owned(),
        source: last,
    })
}

/// Parses a whole response read until the server closed the connection.
fn parse_response(raw: &[u8]) -> Result<Response, &'static str> {
    let head_end = find(raw, b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err("not an HTTP/1 response");
    }
    let status = parts
        .next()
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("bad status code")?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("bad header line")?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    response.body = if response
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        dechunk(rest)?
    } else if let Some(length) = response.header("content-length") {
        let length: usize = length.parse().map_err(|_| "bad content-length")?;
        rest.get(..length)
            .ok_or("body shorter than content-length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(response)
}

/// Decodes a chunked body.
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or("chunk size without end of line")?;
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let data = rest.get(..size).ok_or("chunk shorter than its size")?;
        body.extend_from_slice(data);
        rest = rest
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or("chunk without end of line")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response_with_content_length() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello";
        let response = parse_response(raw);
        assert_eq!(
            response,
            Ok(Response {
                status: 503,
                headers: vec![
                    ("content-length".to_owned(), "5".to_owned()),
                    ("x-a".to_owned(), "b".to_owned())
                ],
                body: b"hello".to_vec(),
            })
        );
    }

    #[test]
    fn parses_a_chunked_response() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let response = parse_response(raw).map(|r| r.body);
        assert_eq!(response, Ok(b"abcde".to_vec()));
    }

    #[test]
    fn rejects_truncated_and_garbled_responses() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n").is_err());
        assert!(parse_response(b"SMTP 220 hi\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
                .is_err()
        );
    }
}
