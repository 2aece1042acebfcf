use bytes::{Bytes, BytesMut};

use super::*;

type Outcome = (Vec<Request>, Option<ProtocolError>);

/// Decodes everything in `input` handed over at once.
fn decode_all_with(limits: Limits, input: &[u8]) -> Outcome {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::from(input);
    let mut requests = Vec::new();
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(request)) => requests.push(request),
            Ok(None) => return (requests, None),
            Err(error) => return (requests, Some(error)),
        }
    }
}

fn decode_all(input: &[u8]) -> Outcome {
    decode_all_with(Limits::default(), input)
}

/// Decodes `input` handed over in pieces of `chunk` bytes.
fn decode_chunked(limits: Limits, input: &[u8], chunk: usize) -> Outcome {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(request)) => requests.push(request),
                Ok(None) => break,
                Err(error) => return (requests, Some(error)),
            }
        }
    }
    (requests, None)
}

fn req(args: &[&[u8]]) -> Request {
    args.iter().map(|a| Bytes::copy_from_slice(a)).collect()
}

fn ok(requests: Vec<Request>) -> Outcome {
    (requests, None)
}

fn only_error(input: &[u8]) -> ProtocolError {
    match decode_all(input) {
        (requests, Some(error)) if requests.is_empty() => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn encoded(reply: &Reply) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(reply, &mut out);
    out.to_vec()
}

// ---- multibulk ----

#[test]
fn multibulk_request() {
    assert_eq!(
        decode_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n"),
        ok(vec![req(&[b"SET", b"k", b"hello"])])
    );
}

#[test]
fn multibulk_binary_and_empty_arguments() {
    assert_eq!(
        decode_all(b"*3\r\n$0\r\n\r\n$4\r\na\r\nb\r\n$2\r\n\x00\xff\r\n"),
        ok(vec![req(&[b"", b"a\r\nb", b"\x00\xff"])])
    );
}

#[test]
fn empty_and_null_multibulk_are_skipped() {
    assert_eq!(
        decode_all(b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n"),
        ok(vec![req(&[b"PING"])])
    );
}

#[test]
fn incomplete_multibulk_asks_for_more() {
    let input = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
    for end in 0..input.len() {
        assert_eq!(decode_all(&input[..end]), ok(vec![]), "prefix {end}");
    }
}

#[test]
fn bulk_payload_is_split_off_without_copying() {
    let mut buf = BytesMut::from(&b"*1\r\n$5\r\nhello\r\n"[..]);
    let start = buf.as_ptr() as usize;
    let request = Decoder::default()
        .decode(&mut buf)
        .expect("valid")
        .expect("complete");
    assert_eq!(request[0].as_ptr() as usize, start + 8);
    assert!(buf.is_empty());
}

#[test]
fn decoded_bytes_are_consumed_and_the_rest_kept() {
    let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\n*1\r\n$4"[..]);
    let mut decoder = Decoder::default();
    assert_eq!(decoder.decode(&mut buf), Ok(Some(req(&[b"PING"]))));
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"\r\nECHO\r\n");
    assert_eq!(decoder.decode(&mut buf), Ok(Some(req(&[b"ECHO"]))));
    assert!(buf.is_empty());
}

// ---- inline ----

#[test]
fn inline_requests() {
    assert_eq!(decode_all(b"PING\r\n"), ok(vec![req(&[b"PING"])]));
    assert_eq!(
        decode_all(b"SET  k\tv\n  GET k  \r\n"),
        ok(vec![req(&[b"SET", b"k", b"v"]), req(&[b"GET", b"k"])])
    );
}

#[test]
fn empty_inline_lines_are_skipped() {
    assert_eq!(
        decode_all(b"\r\n\n   \r\nPING\r\n"),
        ok(vec![req(&[b"PING"])])
    );
}

#[test]
fn inline_without_line_end_asks_for_more() {
    assert_eq!(decode_all(b"PING"), ok(vec![]));
    assert_eq!(decode_all(b"PING\r"), ok(vec![]));
}

#[test]
fn inline_double_quote_escapes() {
    assert_eq!(
        decode_all(b"SET \"a\\nb\\rc\\td\\be\\af\\\\g\\\"h\\x41\\x7a\\xZZ\\q\" \"\"\r\n"),
        ok(vec![req(&[
            b"SET",
            b"a\nb\rc\td\x08e\x07f\\g\"hAzxZZq",
            b"",
        ])])
    );
}

#[test]
fn inline_single_quotes() {
    assert_eq!(
        decode_all(b"SET 'it\\'s \"raw\" \\n' ''\r\n"),
        ok(vec![req(&[b"SET", b"it's \"raw\" \\n", b""])])
    );
}

#[test]
fn inline_quote_opening_mid_argument() {
    assert_eq!(
        decode_all(b"a\"b c\" d'e f'\n"),
        ok(vec![req(&[b"ab c", b"de f"])])
    );
}

#[test]
fn inline_unbalanced_quotes() {
    for input in [
        &b"SET \"abc\r\n"[..],
        b"SET 'abc\r\n",
        b"SET \"abc\"def\r\n",
        b"SET 'abc'def\r\n",
        b"SET \"abc\\\"\r\n",
    ] {
        assert_eq!(
            only_error(input),
            ProtocolError::UnbalancedQuotes,
            "{input:?}"
        );
    }
}

#[test]
fn inline_unquoted_arguments_are_not_copied() {
    let mut buf = BytesMut::from(&b"GET key\r\n"[..]);
    let start = buf.as_ptr() as usize;
    let request = Decoder::default()
        .decode(&mut buf)
        .expect("valid")
        .expect("complete");
    assert_eq!(request[1].as_ptr() as usize, start + 4);
}

// ---- errors ----

#[test]
fn error_texts() {
    let cases: [(&[u8], &str); 11] = [
        (b"*x\r\n", "invalid multibulk length"),
        (b"*2000000\r\n", "invalid multibulk length"),
        (b"*1\r\n$x\r\n", "invalid bulk length"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$600000000\r\n", "invalid bulk length"),
        (b"*1\r\n:1\r\n", "expected '$', got ':'"),
        (b"*1\r\n\x01", "expected '$', got '\\x01'"),
        (b"SET \"a\r\n", "unbalanced quotes in request"),
        (b"*1\r\n$1\r\nab\r\n", "expected CRLF after bulk data"),
        (b"*1x\r\n", "invalid multibulk length"),
        (b"*1\rx", "invalid multibulk length"),
    ];
    for (input, text) in cases {
        let error = only_error(input);
        assert_eq!(error.to_string(), text, "{input:?}");
        assert_eq!(
            encoded(&error.to_reply()),
            format!("-ERR Protocol error: {text}\r\n").into_bytes()
        );
        assert!(!error.is_silent());
    }
}

#[test]
fn too_big_inline_request() {
    let limits = Limits::default();
    let max = limits.inline_bytes_max;
    let mut line = vec![b'a'; max];
    // Exactly at the limit is fine, with either line end.
    line.extend_from_slice(b"\r\n");
    assert_eq!(decode_all(&line).0.len(), 1);
    line.truncate(max);
    line.push(b'\n');
    assert_eq!(decode_all(&line).0.len(), 1);
    // One byte over fails, whether or not the line end has arrived.
    line.truncate(max);
    line.extend_from_slice(b"a\r\n");
    assert_eq!(only_error(&line), ProtocolError::TooBigInline);
    line.truncate(max + 2);
    assert_eq!(only_error(&line), ProtocolError::TooBigInline);
    assert_eq!(
        ProtocolError::TooBigInline.to_string(),
        "too big inline request"
    );
}

#[test]
fn too_big_count_strings() {
    let max = Limits::default().inline_bytes_max;
    let mut input = b"*".to_vec();
    input.resize(max + 1, b'1');
    assert_eq!(only_error(&input), ProtocolError::TooBigMultibulkCount);
    assert_eq!(
        ProtocolError::TooBigMultibulkCount.to_string(),
        "too big mbulk count string"
    );
    let mut input = b"*1\r\n$".to_vec();
    input.resize(4 + max + 1, b'1');
    assert_eq!(only_error(&input), ProtocolError::TooBigBulkCount);
    assert_eq!(
        ProtocolError::TooBigBulkCount.to_string(),
        "too big bulk count string"
    );
}

#[test]
fn configured_limits_are_enforced() {
    let limits = Limits {
        inline_bytes_max: 16,
        array_len_max: 2,
        bulk_bytes_max: 3,
        request_bytes_max: 30,
    };
    let check = |input: &[u8]| decode_all_with(limits, input);
    assert_eq!(check(b"*2\r\n$3\r\nabc\r\n$3\r\ndef\r\n").0.len(), 1);
    assert_eq!(
        check(b"*3\r\n").1,
        Some(ProtocolError::InvalidMultibulkLength)
    );
    assert_eq!(
        check(b"*1\r\n$4\r\n").1,
        Some(ProtocolError::InvalidBulkLength)
    );
    assert_eq!(check(&[b'a'; 18]).1, Some(ProtocolError::TooBigInline));
    let tight = Limits {
        request_bytes_max: 20,
        ..limits
    };
    // 4 + 9 fits, the second argument would take it to 22.
    assert_eq!(
        decode_all_with(tight, b"*2\r\n$3\r\nabc\r\n$3\r\n").1,
        Some(ProtocolError::TooBigRequest)
    );
}

#[test]
fn huge_bulk_announcement_is_rejected_before_any_payload() {
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::from(&b"*1\r\n$600000000\r\n"[..]);
    let capacity = buf.capacity();
    assert_eq!(
        decoder.decode(&mut buf),
        Err(ProtocolError::InvalidBulkLength)
    );
    assert!(buf.capacity() <= capacity);
}

#[test]
fn allowed_bulk_announcement_allocates_nothing_up_front() {
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::from(&b"*1\r\n$500000000\r\nab"[..]);
    let capacity = buf.capacity();
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(buf.capacity() <= capacity);
}

#[test]
fn errors_are_sticky() {
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::from(&b"*x\r\n*1\r\n$4\r\nPING\r\n"[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(ProtocolError::InvalidMultibulkLength)
    );
    assert_eq!(
        decoder.decode(&mut buf),
        Err(ProtocolError::InvalidMultibulkLength)
    );
}

// ---- HTTP ----

#[test]
fn http_is_detected() {
    for input in [
        &b"POST / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"post /x HTTP/1.0\r\n",
        b"*2\r\n$4\r\nPoSt\r\n$1\r\n/\r\n",
        b"HOST: evil\r\n",
    ] {
        let error = only_error(input);
        assert_eq!(error, ProtocolError::Http, "{input:?}");
        assert!(error.is_silent());
    }
    // `GET / HTTP/1.1` is a (wrong) Redis command; the `Host:` line that
    // follows it must still end the connection.
    let (requests, error) = decode_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n");
    assert_eq!(requests, vec![req(&[b"GET", b"/", b"HTTP/1.1"])]);
    assert_eq!(error, Some(ProtocolError::Http));
    // Only the command name counts.
    assert_eq!(
        decode_all(b"SET post host:\r\n"),
        ok(vec![req(&[b"SET", b"post", b"host:"])])
    );
}

// ---- incremental feeding ----

fn pipeline() -> Vec<u8> {
    let mut input = Vec::new();
    input.extend_from_slice(b"PING\r\n");
    input.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$10\r\n0123456789\r\n");
    input.extend_from_slice(b"\r\n");
    input.extend_from_slice(b"SET k \"a b\\x41\" 'c d'\n");
    input.extend_from_slice(b"*0\r\n");
    input.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n");
    input.extend_from_slice(b"  ECHO   hi  \r\n");
    input.extend_from_slice(b"*1\r\n$0\r\n\r\n");
    input
}

#[test]
fn byte_at_a_time_matches_all_at_once() {
    let input = pipeline();
    let whole = decode_all(&input);
    assert_eq!(whole.0.len(), 6);
    assert_eq!(whole.1, None);
    for chunk in [1, 2, 3, 5, 7, 64] {
        assert_eq!(
            decode_chunked(Limits::default(), &input, chunk),
            whole,
            "chunk {chunk}"
        );
    }
}

#[test]
fn large_bulk_fed_in_pieces() {
    let len = 3 * 1024 * 1024 + 17;
    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut input = format!("*2\r\n$3\r\nSET\r\n${len}\r\n").into_bytes();
    input.extend_from_slice(&payload);
    input.extend_from_slice(b"\r\n");
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::new();
    let mut result = None;
    for piece in input.chunks(4093) {
        assert!(result.is_none(), "request finished early");
        buf.extend_from_slice(piece);
        result = decoder.decode(&mut buf).expect("valid");
    }
    let request = result.expect("complete");
    assert_eq!(request.len(), 2);
    assert_eq!(&request[1][..], &payload[..]);
    assert!(buf.is_empty());
}

#[test]
fn many_arguments_fed_one_byte_at_a_time() {
    let count = 20_000;
    let mut input = format!("*{count}\r\n").into_bytes();
    for i in 0..count {
        let arg = i.to_string();
        input.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    let (requests, error) = decode_chunked(Limits::default(), &input, 1);
    assert_eq!(error, None);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].len(), count);
    assert_eq!(&requests[0][count - 1][..], b"19999");
}

#[test]
fn long_inline_line_fed_one_byte_at_a_time() {
    let mut input = vec![b'x'; Limits::default().inline_bytes_max - 2];
    input.extend_from_slice(b" y\r\n");
    let (requests, error) = decode_chunked(Limits::default(), &input, 1);
    assert_eq!(error, None);
    assert_eq!(requests.len(), 1);
    assert_eq!(&requests[0][1][..], b"y");
}

// ---- randomized ----

/// The project's seeded generator: deterministic and portable.
struct Rng(paxos::rng::Rng);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const INTERESTING: &[u8] = b"*$\r\n \t\"'\\x0123456789-+abcPOST:";

/// Fragments that push the parser towards its edge cases when spliced in.
const FRAGMENTS: &[&[u8]] = &[
    b"*-1\r\n",
    b"*0\r\n",
    b"$-1\r\n",
    b"$99999999999999999999\r\n",
    b"*9223372036854775807\r\n",
    b"$0\r\n\r\n",
    b"\"\\x4",
    b"'\\'",
    b"Host:",
    b"\r\n",
];

fn random_input(rng: &mut Rng) -> Vec<u8> {
    match rng.below(3) {
        // Pure noise, biased towards bytes that mean something.
        0 => (0..rng.below(200))
            .map(|_| {
                if rng.below(2) == 0 {
                    INTERESTING[rng.below(INTERESTING.len())]
                } else {
                    rng.next() as u8
                }
            })
            .collect(),
        // A valid pipeline with a few mutations.
        _ => {
            let mut input = pipeline();
            for _ in 0..=rng.below(4) {
                let at = rng.below(input.len() + 1);
                let byte = INTERESTING[rng.below(INTERESTING.len())];
                match rng.below(4) {
                    0 if at < input.len() => input[at] = byte,
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    2 => {
                        let fragment = FRAGMENTS[rng.below(FRAGMENTS.len())];
                        input.splice(at..at, fragment.iter().copied());
                    }
                    _ => input.insert(at, byte),
                }
            }
            input
        }
    }
}

/// Feeds `input` in random-sized pieces, checking after every call that the
/// decoder either produced a request from consumed input, asked for more
/// while holding only a bounded amount, or failed.
fn decode_randomly_chunked(limits: Limits, input: &[u8], rng: &mut Rng) -> Outcome {
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let mut requests = Vec::new();
    let mut rest = input;
    loop {
        let take = rest.len().min(1 + rng.below(12));
        let (piece, tail) = rest.split_at(take);
        buf.extend_from_slice(piece);
        rest = tail;
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(request)) => {
                    assert!(!request.is_empty());
                    assert!(buf.len() < before, "a request consumes input");
                    requests.push(request);
                }
                Ok(None) => {
                    // One pending element at most: a line, or a bulk.
                    let bound = limits.inline_bytes_max.max(limits.bulk_bytes_max) + 2;
                    assert!(buf.len() <= bound, "buffered {} bytes", buf.len());
                    break;
                }
                Err(error) => return (requests, Some(error)),
            }
        }
        if rest.is_empty() {
            return (requests, None);
        }
    }
}

#[test]
fn random_input_never_panics_and_is_chunking_independent() {
    let tight = Limits {
        inline_bytes_max: 40,
        array_len_max: 8,
        bulk_bytes_max: 32,
        request_bytes_max: 128,
    };
    let mut rng = Rng(paxos::rng::Rng::new(0x9e37_79b9_7f4a_7c15));
    for round in 0..4000 {
        let limits = if round % 2 == 0 {
            tight
        } else {
            Limits::default()
        };
        let input = random_input(&mut rng);
        let whole = decode_all_with(limits, &input);
        assert_eq!(
            decode_randomly_chunked(limits, &input, &mut rng),
            whole,
            "input {input:?}"
        );
    }
}

#[test]
fn one_byte_feeding_is_linear_even_for_long_lines() {
    // Rescanning a line from its start on every byte would take about
    // 10^12 steps here; remembering the scanned prefix makes it instant.
    let limits = Limits {
        inline_bytes_max: 2 * 1024 * 1024,
        ..Limits::default()
    };
    let mut input = vec![b'x'; 1024 * 1024];
    input.extend_from_slice(b"\r\n");
    let (requests, error) = decode_chunked(limits, &input, 1);
    assert_eq!((requests.len(), error), (1, None));
    let mut input = b"*".to_vec();
    input.resize(limits.inline_bytes_max + 1, b'1');
    let (requests, error) = decode_chunked(limits, &input, 1);
    assert!(requests.is_empty());
    assert_eq!(error, Some(ProtocolError::TooBigMultibulkCount));
}

// ---- replies ----

#[test]
fn reply_encoding() {
    let cases: Vec<(Reply, &[u8])> = vec![
        (Reply::ok(), b"+OK\r\n"),
        (Reply::Simple("a\r\nb".into()), b"+a  b\r\n"),
        (Reply::error("ERR bad"), b"-ERR bad\r\n"),
        (Reply::error("ERR x\ny\rz"), b"-ERR x y z\r\n"),
        (Reply::Integer(0), b":0\r\n"),
        (Reply::Integer(-42), b":-42\r\n"),
        (Reply::Integer(i64::MAX), b":9223372036854775807\r\n"),
        (Reply::Integer(i64::MIN), b":-9223372036854775808\r\n"),
        (Reply::bulk(&b"a\r\nb"[..]), b"$4\r\na\r\nb\r\n"),
        (Reply::bulk(Bytes::new()), b"$0\r\n\r\n"),
        (Reply::NullBulk, b"$-1\r\n"),
        (Reply::Array(vec![]), b"*0\r\n"),
        (Reply::NullArray, b"*-1\r\n"),
        (
            Reply::Array(vec![
                Reply::Integer(1),
                Reply::NullBulk,
                Reply::Array(vec![Reply::bulk(&b"x"[..])]),
            ]),
            b"*3\r\n:1\r\n$-1\r\n*1\r\n$1\r\nx\r\n",
        ),
    ];
    for (reply, bytes) in cases {
        assert_eq!(encoded(&reply), bytes, "{reply:?}");
    }
}

#[test]
fn encode_appends() {
    let mut out = BytesMut::from(&b"+A\r\n"[..]);
    encode(&Reply::Integer(7), &mut out);
    assert_eq!(&out[..], b"+A\r\n:7\r\n");
}

// ---- arguments ----

fn args(parts: &[&[u8]]) -> Args {
    Args::new(req(parts)).expect("non-empty")
}

#[test]
fn integer_parsing() {
    let good: [(&[u8], i64); 7] = [
        (b"0", 0),
        (b"1", 1),
        (b"-1", -1),
        (b"123456", 123_456),
        (b"9223372036854775807", i64::MAX),
        (b"-9223372036854775808", i64::MIN),
        (b"-10", -10),
    ];
    for (text, value) in good {
        assert_eq!(parse_i64(text), Some(value), "{text:?}");
    }
    let bad: [&[u8]; 14] = [
        b"",
        b"-",
        b"-0",
        b"01",
        b"00",
        b"-01",
        b"+1",
        b" 1",
        b"1 ",
        b"1a",
        b"0x10",
        b"9223372036854775808",
        b"-9223372036854775809",
        b"99999999999999999999999",
    ];
    for text in bad {
        assert_eq!(parse_i64(text), None, "{text:?}");
    }
    assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
    assert_eq!(parse_u64(b"18446744073709551616"), None);
    assert_eq!(parse_u64(b"-1"), None);
    assert_eq!(parse_u64(b"01"), None);
}

#[test]
fn args_happy_path() {
    let mut a = args(&[b"SET", b"k", b"v", b"EX", b"10", b"nx"]);
    assert_eq!(a.command(), "set");
    assert_eq!(a.remaining(), 5);
    assert_eq!(a.next_bytes(), Ok(Bytes::from_static(b"k")));
    assert_eq!(a.next_bytes(), Ok(Bytes::from_static(b"v")));
    assert!(!a.eat_keyword("PX"));
    assert!(a.eat_keyword("ex"));
    assert_eq!(a.next_u64(), Ok(10));
    assert!(a.eat_keyword("NX"));
    assert!(!a.eat_keyword("NX"));
    assert_eq!(a.remaining(), 0);
    assert_eq!(a.finish(), Ok(()));
}

#[test]
fn args_errors() {
    let mut a = args(&[b"GET"]);
    let error = a.next_bytes().expect_err("missing");
    assert_eq!(
        error.to_string(),
        "ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        encoded(&error.to_reply()),
        b"-ERR wrong number of arguments for 'get' command\r\n"
    );
    let mut a = args(&[b"IncrBy", b"k"]);
    a.next_bytes().expect("key");
    assert_eq!(
        a.next_i64().expect_err("missing").to_string(),
        "ERR wrong number of arguments for 'incrby' command"
    );
    let mut a = args(&[b"INCRBY", b"k", b"+1", b"9223372036854775808", b"x"]);
    a.next_bytes().expect("key");
    assert_eq!(a.next_i64(), Err(ArgError::NotInteger));
    assert_eq!(
        a.next_i64().expect_err("overflow").to_string(),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(a.remaining(), 1);
    assert_eq!(a.clone().finish(), Err(ArgError::Syntax));
    assert_eq!(
        a.finish().expect_err("extra").to_string(),
        "ERR syntax error"
    );
    let a = args(&[b"GET", b"a", b"b"]);
    assert_eq!(
        a.expect_remaining(1),
        Err(ArgError::WrongArity {
            command: "get".into()
        })
    );
    assert_eq!(args(&[b"GET", b"a"]).expect_remaining(1), Ok(()));
    assert!(Args::new(vec![]).is_none());
}

#[test]
fn args_take_rest_and_keywords() {
    let mut a = args(&[b"DEL", b"a", b"b", b"c"]);
    assert_eq!(a.take_rest().len(), 3);
    assert_eq!(a.finish(), Ok(()));
    assert!(keyword_eq(b"WithScores", "WITHSCORES"));
    assert!(!keyword_eq(b"WITHSCORE", "WITHSCORES"));
}
