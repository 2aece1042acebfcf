//! Incremental request decoder.

use bytes::{Buf, Bytes, BytesMut};

use super::args::parse_i64;
use super::inline::split_inline;
use super::reply::Reply;

/// One client request: the command name followed by its arguments.
///
/// Never empty: requests without arguments are skipped, as Redis does.
pub type Request = Vec<Bytes>;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GIB: usize = 1024 * MIB;

/// How many arguments are pre-allocated for a multibulk request. The
/// announced count is untrusted, so the vector grows as arguments arrive.
const ARGS_PREALLOC_MAX: usize = 64;

/// Size limits that bound what one request may make the server buffer.
///
/// Every limit is checked as soon as the announced size is known, before the
/// bytes arrive, so a client cannot make the server wait for (or allocate)
/// more than the limits allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest inline command line in bytes, not counting the line end.
    /// Also bounds the `*<count>` and `$<len>` header lines. Default 64 KiB.
    pub inline_bytes_max: usize,
    /// Most arguments in one multibulk request. Default 1,048,576.
    pub array_len_max: usize,
    /// Longest bulk string argument in bytes. Default 512 MiB.
    pub bulk_bytes_max: usize,
    /// Largest whole multibulk request in bytes, headers and line ends
    /// included. Default 1 GiB.
    pub request_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            inline_bytes_max: 64 * KIB,
            array_len_max: MIB,
            bulk_bytes_max: 512 * MIB,
            request_bytes_max: GIB,
        }
    }
}

/// A malformed or oversized request.
///
/// The texts are Redis's, so clients and tests written against Redis see the
/// same messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("invalid bulk length")]
    InvalidBulkLength,
    #[error("expected '$', got '{}'", show_byte(*.0))]
    ExpectedBulk(u8),
    #[error("too big inline request")]
    TooBigInline,
    #[error("too big mbulk count string")]
    TooBigMultibulkCount,
    #[error("too big bulk count string")]
    TooBigBulkCount,
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
    /// The two bytes after a bulk payload were not `\r\n`. Redis skips them
    /// unchecked; we refuse, because it means the stream is out of step.
    #[error("expected CRLF after bulk data")]
    BulkTerminator,
    /// The whole request exceeds [`Limits::request_bytes_max`].
    #[error("too big request")]
    TooBigRequest,
    /// The client speaks HTTP (for instance a browser tricked into posting
    /// to the Redis port). Drop the connection without replying.
    #[error("HTTP request on the Redis port")]
    Http,
}

impl ProtocolError {
    /// Whether to close the connection without sending any reply.
    pub fn is_silent(&self) -> bool {
        matches!(self, Self::Http)
    }

    /// The error reply to send before closing the connection.
    pub fn to_reply(&self) -> Reply {
        Reply::Error(format!("ERR Protocol error: {self}"))
    }
}

/// Shows a byte the way Redis's `%c` would for printable ASCII, and escaped
/// otherwise, so an error text stays readable and valid UTF-8.
fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() || b == b' ' {
        char::from(b).to_string()
    } else {
        format!("\\x{b:02x}")
    }
}

/// Where the decoder is inside the current request.
#[derive(Debug)]
enum State {
    /// Between requests.
    Idle,
    /// Inside a multibulk request whose `*<count>` line has been consumed.
    Multibulk(Multibulk),
}

#[derive(Debug)]
struct Multibulk {
    /// Announced argument count.
    count: usize,
    /// Arguments received so far, already split off the buffer.
    args: Vec<Bytes>,
    /// Length of the bulk whose `$<len>` line has been consumed but whose
    /// payload has not fully arrived yet.
    bulk_len: Option<usize>,
    /// Bytes of this request accounted for so far, including the announced
    /// size of the pending bulk.
    request_bytes: usize,
}

/// Incremental RESP2 request decoder for one connection.
///
/// Call [`Decoder::decode`] whenever bytes are appended to the buffer. All
/// progress is kept between calls (arguments already received, the pending
/// bulk length, how far a line has been searched), so feeding input in tiny
/// pieces costs time linear in its size.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    state: State,
    /// Prefix of the buffer already searched for the current line's end.
    scanned: usize,
    /// The first error, repeated on later calls: after an error the stream
    /// is out of step and nothing more may be decoded from it.
    failed: Option<ProtocolError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            state: State::Idle,
            scanned: 0,
            failed: None,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Changes the limits from the next request on (a client that has just
    /// authenticated is allowed more).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Decodes the next request from the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` holds no complete request yet; consumed
    /// bytes are removed from `buf`, and the caller must only append to it
    /// between calls. Argument payloads are split off `buf` without copying.
    /// After an error the connection must be closed; further calls return
    /// the same error.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.decode_request(buf);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        if let Ok(Some(request)) = &result
            && is_http(request)
        {
            self.failed = Some(ProtocolError::Http);
            return Err(ProtocolError::Http);
        }
        result
    }

    fn decode_request(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        loop {
            let step = match (&self.state, buf.first()) {
                (State::Multibulk(_), _) => self.continue_multibulk(buf)?,
                (State::Idle, None) => return Ok(None),
                (State::Idle, Some(b'*')) => self.start_multibulk(buf)?,
                (State::Idle, Some(_)) => self.inline(buf)?,
            };
            match step {
                Step::More => return Ok(None),
                Step::Skipped => {}
                Step::Done(request) => return Ok(Some(request)),
            }
        }
    }

    /// Parses one inline command line.
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        let max = self.limits.inline_bytes_max;
        let from = self.scanned.min(buf.len());
        let Some(newline) = find(buf, from, b'\n') else {
            // A line end arriving later would leave more than `max` bytes
            // of content even if preceded by '\r'.
            if buf.len() > max.saturating_add(1) {
                return Err(ProtocolError::TooBigInline);
            }
            self.scanned = buf.len();
            return Ok(Step::More);
        };
        let content_len = if newline > 0 && buf[newline - 1] == b'\r' {
            newline - 1
        } else {
            newline
        };
        if content_len > max {
            return Err(ProtocolError::TooBigInline);
        }
        self.scanned = 0;
        let mut line = buf.split_to(newline + 1).freeze();
        line.truncate(content_len);
        let args = split_inline(&line)?;
        if args.is_empty() {
            Ok(Step::Skipped)
        } else {
            Ok(Step::Done(args))
        }
    }

    /// Parses the `*<count>` line that opens a multibulk request.
    fn start_multibulk(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        let Some(line_len) = self.header_line(
            buf,
            ProtocolError::TooBigMultibulkCount,
            ProtocolError::InvalidMultibulkLength,
        )?
        else {
            return Ok(Step::More);
        };
        let count = parse_i64(&buf[1..line_len]).ok_or(ProtocolError::InvalidMultibulkLength)?;
        buf.advance(line_len + 2);
        if count <= 0 {
            // Redis treats empty and null arrays as no request at all.
            return Ok(Step::Skipped);
        }
        let count = usize::try_from(count)
            .ok()
            .filter(|&count| count <= self.limits.array_len_max)
            .ok_or(ProtocolError::InvalidMultibulkLength)?;
        self.state = State::Multibulk(Multibulk {
            count,
            args: Vec::with_capacity(count.min(ARGS_PREALLOC_MAX)),
            bulk_len: None,
            request_bytes: line_len + 2,
        });
        Ok(Step::Skipped)
    }

    /// Reads as many bulk arguments of the current multibulk as available.
    fn continue_multibulk(&mut self, buf: &mut BytesMut) -> Result<Step, ProtocolError> {
        loop {
            let State::Multibulk(mb) = &mut self.state else {
                return Ok(Step::Skipped);
            };
            match mb.bulk_len {
                None => {
                    let Some(&first) = buf.first() else {
                        return Ok(Step::More);
                    };
                    if first != b'$' {
                        return Err(ProtocolError::ExpectedBulk(first));
                    }
                    let Some(line_len) = self.header_line(
                        buf,
                        ProtocolError::TooBigBulkCount,
                        ProtocolError::InvalidBulkLength,
                    )?
                    else {
                        return Ok(Step::More);
                    };
                    let len = parse_i64(&buf[1..line_len])
                        .and_then(|len| usize::try_from(len).ok())
                        .filter(|&len| len <= self.limits.bulk_bytes_max)
                        .ok_or(ProtocolError::InvalidBulkLength)?;
                    let State::Multibulk(mb) = &mut self.state else {
                        return Ok(Step::Skipped);
                    };
                    mb.request_bytes = mb
                        .request_bytes
                        .saturating_add(line_len + 2)
                        .saturating_add(len)
                        .saturating_add(2);
                    if mb.request_bytes > self.limits.request_bytes_max {
                        return Err(ProtocolError::TooBigRequest);
                    }
                    buf.advance(line_len + 2);
                    mb.bulk_len = Some(len);
                }
                Some(len) => {
                    // Wait for the payload to arrive: nothing is allocated
                    // for it here, whatever length was announced.
                    if buf.len() < len.saturating_add(2) {
                        return Ok(Step::More);
                    }
                    if &buf[len..len + 2] != b"\r\n" {
                        return Err(ProtocolError::BulkTerminator);
                    }
                    let arg = buf.split_to(len).freeze();
                    buf.advance(2);
                    mb.args.push(arg);
                    mb.bulk_len = None;
                    if mb.args.len() == mb.count {
                        let args = std::mem::take(&mut mb.args);
                        self.state = State::Idle;
                        return Ok(Step::Done(args));
                    }
                }
            }
        }
    }

    /// Finds the `\r\n` ending a `*<count>` or `$<len>` line at the front of
    /// `buf` and returns the line's length without the line end.
    fn header_line(
        &mut self,
        buf: &BytesMut,
        too_big: ProtocolError,
        malformed: ProtocolError,
    ) -> Result<Option<usize>, ProtocolError> {
        let max = self.limits.inline_bytes_max;
        let from = self.scanned.min(buf.len());
        let Some(cr) = find(buf, from, b'\r') else {
            if buf.len() > max {
                return Err(too_big);
            }
            self.scanned = buf.len();
            return Ok(None);
        };
        if cr > max {
            return Err(too_big);
        }
        match buf.get(cr + 1) {
            None => {
                self.scanned = cr;
                Ok(None)
            }
            Some(b'\n') => {
                self.scanned = 0;
                Ok(Some(cr))
            }
            Some(_) => Err(malformed),
        }
    }
}

/// What one parsing step achieved.
enum Step {
    /// The buffer holds no further complete element.
    More,
    /// Input was consumed without completing a request.
    Skipped,
    Done(Request),
}

fn find(buf: &[u8], from: usize, byte: u8) -> Option<usize> {
    buf[from..]
        .iter()
        .position(|&b| b == byte)
        .map(|offset| from + offset)
}

/// Redis registers `POST` and `Host:` as commands that close the connection,
/// so that a browser tricked into sending HTTP to the port cannot smuggle
/// commands in the request body. We check every request, not only the
/// first, because `Host:` arrives on the second line of an HTTP request.
fn is_http(request: &Request) -> bool {
    request.first().is_some_and(|name| {
        name.eq_ignore_ascii_case(b"post") || name.eq_ignore_ascii_case(b"host:")
    })
}
