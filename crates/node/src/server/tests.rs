#![allow(clippy::unwrap_used)]

//! Exact RESP bytes in, exact bytes out, over real loopback connections to
//! [`serve_clients`] in front of the fake node.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::testing::{Fault, TestServer};
use super::*;
use crate::api::NodeError;
use kv::key_hash;

/// Generous: a loaded 2-core machine must not fail these tests.
const TIMEOUT: Duration = Duration::from_secs(30);

/// A request in RESP multibulk form.
fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    out
}

fn bulk(text: &str) -> String {
    format!("${}\r\n{text}\r\n", text.len())
}

async fn start() -> TestServer {
    start_with(Config {
        node_id: 7,
        ..Config::default()
    })
    .await
}

async fn start_with(config: Config) -> TestServer {
    TestServer::start(config).await.unwrap()
}

struct Client {
    stream: TcpStream,
}

impl Client {
    async fn connect(server: &TestServer) -> Client {
        Client {
            stream: TcpStream::connect(server.addr).await.unwrap(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads exactly as many bytes as `expected` has and compares.
    async fn expect(&mut self, expected: impl AsRef<[u8]>) {
        let expected = expected.as_ref();
        let mut got = vec![0u8; expected.len()];
        tokio::time::timeout(TIMEOUT, self.stream.read_exact(&mut got))
            .await
            .expect("timed out waiting for a reply")
            .unwrap_or_else(|e| {
                panic!(
                    "connection failed waiting for {:?}: {e}",
                    String::from_utf8_lossy(expected)
                )
            });
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }

    /// Sends one request and expects exactly `reply`.
    async fn call(&mut self, args: &[&str], reply: impl AsRef<[u8]>) {
        self.send(&cmd(args)).await;
        self.expect(reply).await;
    }

    /// Reads until the server closes; returns whatever came before.
    async fn until_closed(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(TIMEOUT, self.stream.read_to_end(&mut rest))
            .await
            .expect("the server did not close the connection");
        // A reset also counts as closed.
        if let Err(error) = read {
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset);
        }
        rest
    }

    /// Reads until the input ends with `suffix`.
    async fn read_until(&mut self, suffix: &[u8]) -> String {
        let mut got = Vec::new();
        while !got.ends_with(suffix) {
            let byte = tokio::time::timeout(TIMEOUT, self.stream.read_u8())
                .await
                .expect("timed out waiting for a reply")
                .unwrap();
            got.push(byte);
        }
        String::from_utf8(got).unwrap()
    }

    /// Reads one whole reply of unknown length, for replies whose content
    /// the test checks piecewise. Handles the reply shapes used below.
    async fn read_bulk(&mut self) -> String {
        let mut header = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            tokio::time::timeout(TIMEOUT, self.stream.read_exact(&mut byte))
                .await
                .unwrap()
                .unwrap();
            header.push(byte[0]);
            if header.ends_with(b"\r\n") {
                break;
            }
        }
        assert_eq!(header[0], b'$', "{}", String::from_utf8_lossy(&header));
        let len: usize = std::str::from_utf8(&header[1..header.len() - 2])
            .unwrap()
            .parse()
            .unwrap();
        let mut body = vec![0u8; len + 2];
        self.stream.read_exact(&mut body).await.unwrap();
        body.truncate(len);
        String::from_utf8(body).unwrap()
    }
}

#[tokio::test]
async fn ping_echo_and_inline_commands() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    c.send(b"PING\r\n").await;
    c.expect("+PONG\r\n").await;
    c.send(b"ping\n").await;
    c.expect("+PONG\r\n").await;
    c.call(&["PING", "hello"], "$5\r\nhello\r\n").await;
    c.call(
        &["PING", "a", "b"],
        "-ERR wrong number of arguments for 'ping' command\r\n",
    )
    .await;
    c.call(&["ECHO", "x y"], "$3\r\nx y\r\n").await;
    c.send(b"ECHO \"a b\\x41\"\r\n").await;
    c.expect("$4\r\na bA\r\n").await;
    // Empty lines are skipped.
    c.send(b"\r\n\r\nPING\r\n").await;
    c.expect("+PONG\r\n").await;
}

#[tokio::test]
async fn unknown_commands_and_arity_errors_read_like_redis() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    c.call(
        &["FOO", "a", "b"],
        "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n",
    )
    .await;
    c.call(
        &["foo"],
        "-ERR unknown command 'foo', with args beginning with: \r\n",
    )
    .await;
    c.call(
        &["GET"],
        "-ERR wrong number of arguments for 'get' command\r\n",
    )
    .await;
    c.call(
        &["get", "a", "b"],
        "-ERR wrong number of arguments for 'get' command\r\n",
    )
    .await;
    c.call(
        &["SET", "k"],
        "-ERR wrong number of arguments for 'set' command\r\n",
    )
    .await;
    let long = "x".repeat(300);
    c.send(&cmd(&["nope", &long])).await;
    c.expect(format!(
        "-ERR unknown command 'nope', with args beginning with: '{}' \r\n",
        "x".repeat(128)
    ))
    .await;
}

#[tokio::test]
async fn string_commands() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    c.call(&["GET", "k"], "$-1\r\n").await;
    c.call(&["SET", "k", "v1"], "+OK\r\n").await;
    c.call(&["GET", "k"], bulk("v1")).await;
    c.call(&["SET", "k", "v2", "NX"], "$-1\r\n").await;
    c.call(&["SET", "k", "v2", "XX", "GET"], bulk("v1")).await;
    c.call(&["SET", "new", "x", "XX"], "$-1\r\n").await;
    c.call(
        &["SET", "k", "v", "EX", "10"],
        "-ERR parliament does not support key expiry\r\n",
    )
    .await;
    c.call(&["SET", "k", "v", "NX", "XX"], "-ERR syntax error\r\n")
        .await;
    c.call(&["SETNX", "k", "x"], ":0\r\n").await;
    c.call(&["SETNX", "fresh", "x"], ":1\r\n").await;
    c.call(&["GETSET", "k", "v3"], bulk("v2")).await;
    c.call(&["GETDEL", "k"], bulk("v3")).await;
    c.call(&["GETDEL", "k"], "$-1\r\n").await;
    c.call(&["INCR", "n"], ":1\r\n").await;
    c.call(&["INCRBY", "n", "10"], ":11\r\n").await;
    c.call(&["DECR", "n"], ":10\r\n").await;
    c.call(&["DECRBY", "n", "-5"], ":15\r\n").await;
    c.call(
        &["INCRBY", "n", "1.5"],
        "-ERR value is not an integer or out of range\r\n",
    )
    .await;
    c.call(
        &["INCR", "fresh"],
        "-ERR value is not an integer or out of range\r\n",
    )
    .await;
    c.call(&["APPEND", "s", "ab"], ":2\r\n").await;
    c.call(&["APPEND", "s", "cd"], ":4\r\n").await;
    c.call(&["STRLEN", "s"], ":4\r\n").await;
    c.call(&["STRLEN", "missing"], ":0\r\n").await;
    c.call(&["MSET", "a", "1", "b", "2"], "+OK\r\n").await;
    c.call(
        &["MGET", "a", "missing", "b"],
        "*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n",
    )
    .await;
    c.call(
        &["MSET", "a", "1", "b"],
        "-ERR wrong number of arguments for 'mset' command\r\n",
    )
    .await;
}

#[tokio::test]
async fn compare_and_swap() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    c.call(&["CAS", "k", "old", "new"], ":0\r\n").await;
    c.call(&["GET", "k"], "$-1\r\n").await;
    c.call(&["SET", "k", "old"], "+OK\r\n").await;
    c.call(&["CAS", "k", "other", "new"], ":0\r\n").await;
    c.call(&["cas", "k", "old", "new"], ":1\r\n").await;
    c.call(&["GET", "k"], bulk("new")).await;
    c.call(
        &["CAS", "k", "new"],
        "-ERR wrong number of arguments for 'cas' command\r\n",
    )
    .await;
    // COMMAND INFO lists it, with one key at position 1.
    c.call(
        &["COMMAND", "INFO", "cas"],
        "*1\r\n*10\r\n$3\r\ncas\r\n:4\r\n*2\r\n+write\r\n+denyoom\r\n:1\r\n:1\r\n:1\r\n*0\r\n*0\r\n*0\r\n*0\r\n",
    )
    .await;
}

#[tokio::test]
async fn keyspace_commands() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    c.call(&["DBSIZE"], ":0\r\n").await;
    c.call(
        &["MSET", "user:1", "a", "user:2", "b", "other", "c"],
        "+OK\r\n",
    )
    .await;
    c.call(&["DBSIZE"], ":3\r\n").await;
    c.call(&["EXISTS", "user:1", "user:1", "nope"], ":2\r\n")
        .await;
    c.call(
        &["KEYS", "user:*"],
        "*2\r\n$6\r\nuser:1\r\n$6\r\nuser:2\r\n",
    )
    .await;
    // SCAN visits keys in hash order; one call with a large COUNT sees all.
    let mut keys = ["user:1", "user:2", "other"];
    keys.sort_by_key(|k| key_hash(k.as_bytes()));
    let expected: String = keys.iter().map(|k| bulk(k)).collect();
    c.call(
        &["SCAN", "0", "COUNT", "100"],
        format!("*2\r\n$1\r\n0\r\n*3\r\n{expected}"),
    )
    .await;
    let users: String = keys
        .iter()
        .filter(|k| k.starts_with("user"))
        .map(|k| bulk(k))
        .collect();
    c.call(
        &[
            "SCAN", "0", "MATCH", "user:*", "COUNT", "100", "TYPE", "string",
        ],
        format!("*2\r\n$1\r\n0\r\n*2\r\n{users}"),
    )
    .await;
    c.call(&["SCAN", "x"], "-ERR invalid cursor\r\n").await;
    c.call(&["SCAN", "0", "COUNT", "0"], "-ERR syntax error\r\n")
        .await;
    c.call(&["SCAN", "0", "BOGUS"], "-ERR syntax error\r\n")
        .await;
    c.call(&["DEL", "user:1", "nope"], ":1\r\n").await;
    c.call(&["UNLINK", "user:2"], ":1\r\n").await;
    c.call(&["FLUSHALL"], "+OK\r\n").await;
    c.call(&["DBSIZE"], ":0\r\n").await;
    c.call(&["FLUSHDB", "ASYNC"], "+OK\r\n").await;
    c.call(&["FLUSHALL", "LATER"], "-ERR syntax error\r\n")
        .await;
}

#[tokio::test]
async fn transactions() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    c.call(&["EXEC"], "-ERR EXEC without MULTI\r\n").await;
    c.call(&["DISCARD"], "-ERR DISCARD without MULTI\r\n").await;
    c.call(&["MULTI"], "+OK\r\n").await;
    c.call(&["MULTI"], "-ERR MULTI calls can not be nested\r\n")
        .await;
    c.call(&["SET", "k", "1"], "+QUEUED\r\n").await;
    c.call(&["INCR", "k"], "+QUEUED\r\n").await;
    c.call(&["PING"], "+QUEUED\r\n").await;
    // A syntax error is reported in place, as Redis does.
    c.call(&["SET", "k", "v", "BAD"], "+QUEUED\r\n").await;
    c.call(&["GET", "k"], "+QUEUED\r\n").await;
    c.call(
        &["EXEC"],
        "*5\r\n+OK\r\n:2\r\n+PONG\r\n-ERR syntax error\r\n$1\r\n2\r\n",
    )
    .await;
    // An empty transaction.
    c.call(&["MULTI"], "+OK\r\n").await;
    c.call(&["EXEC"], "*0\r\n").await;
    // Read-only transactions work too.
    c.call(&["MULTI"], "+OK\r\n").await;
    c.call(&["GET", "k"], "+QUEUED\r\n").await;
    c.call(&["EXISTS", "k"], "+QUEUED\r\n").await;
    c.call(&["EXEC"], "*2\r\n$1\r\n2\r\n:1\r\n").await;
    // DISCARD drops the queue.
    c.call(&["MULTI"], "+OK\r\n").await;
    c.call(&["SET", "k", "discarded"], "+QUEUED\r\n").await;
    c.call(&["DISCARD"], "+OK\r\n").await;
    c.call(&["GET", "k"], bulk("2")).await;
    // Unknown commands and wrong arity abort the transaction.
    c.call(&["MULTI"], "+OK\r\n").await;
    c.call(&["SET", "k", "aborted"], "+QUEUED\r\n").await;
    c.call(
        &["NOSUCH"],
        "-ERR unknown command 'NOSUCH', with args beginning with: \r\n",
    )
    .await;
    c.call(
        &["EXEC"],
        "-EXECABORT Transaction discarded because of previous errors.\r\n",
    )
    .await;
    c.call(&["MULTI"], "+OK\r\n").await;
    c.call(
        &["GET"],
        "-ERR wrong number of arguments for 'get' command\r\n",
    )
    .await;
    c.call(
        &["SELECT", "0"],
        "-ERR Command not allowed inside a transaction\r\n",
    )
    .await;
    c.call(
        &["EXEC"],
        "-EXECABORT Transaction discarded because of previous errors.\r\n",
    )
    .await;
    c.call(&["GET", "k"], bulk("2")).await;
    c.call(&["MULTI"], "+OK\r\n").await;
    c.call(
        &["WATCH", "k"],
        "-ERR WATCH inside MULTI is not allowed\r\n",
    )
    .await;
    c.call(&["EXEC"], "*0\r\n").await;
}

#[tokio::test]
async fn transaction_length_is_limited() {
    let server = start_with(Config {
        transaction_commands_max: 2,
        watched_keys_max: 2,
        ..Config::default()
    })
    .await;
    let mut c = Client::connect(&server).await;
    c.call(
        &["WATCH", "a", "b", "c"],
        "-ERR a connection may watch at most 2 keys\r\n",
    )
    .await;
    c.call(&["MULTI"], "+OK\r\n").await;
    c.call(&["SET", "a", "1"], "+QUEUED\r\n").await;
    c.call(&["PING"], "+QUEUED\r\n").await;
    c.call(
        &["SET", "b", "1"],
        "-ERR a transaction may queue at most 2 commands\r\n",
    )
    .await;
    c.call(
        &["EXEC"],
        "-EXECABORT Transaction discarded because of previous errors.\r\n",
    )
    .await;
}

#[tokio::test]
async fn watch_aborts_exec_when_another_connection_writes() {
    let server = start().await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.call(&["SET", "k", "1"], "+OK\r\n").await;

    // Unchanged: the transaction runs.
    a.call(&["WATCH", "k", "other"], "+OK\r\n").await;
    a.call(&["MULTI"], "+OK\r\n").await;
    a.call(&["INCR", "k"], "+QUEUED\r\n").await;
    a.call(&["EXEC"], "*1\r\n:2\r\n").await;

    // Changed by another connection between WATCH and EXEC: aborted.
    a.call(&["WATCH", "k"], "+OK\r\n").await;
    b.call(&["SET", "k", "10"], "+OK\r\n").await;
    a.call(&["MULTI"], "+OK\r\n").await;
    a.call(&["SET", "k", "lost"], "+QUEUED\r\n").await;
    a.call(&["EXEC"], "*-1\r\n").await;
    a.call(&["GET", "k"], bulk("10")).await;

    // EXEC forgot the watch: the next transaction runs.
    a.call(&["MULTI"], "+OK\r\n").await;
    a.call(&["SET", "k", "won"], "+QUEUED\r\n").await;
    a.call(&["EXEC"], "*1\r\n+OK\r\n").await;

    // UNWATCH forgets too.
    a.call(&["WATCH", "k"], "+OK\r\n").await;
    b.call(&["SET", "k", "again"], "+OK\r\n").await;
    a.call(&["UNWATCH"], "+OK\r\n").await;
    a.call(&["MULTI"], "+OK\r\n").await;
    a.call(&["GET", "k"], "+QUEUED\r\n").await;
    a.call(&["EXEC"], format!("*1\r\n{}", bulk("again"))).await;

    // UNWATCH inside MULTI is queued and changes nothing, as in Redis.
    a.call(&["WATCH", "k"], "+OK\r\n").await;
    a.call(&["MULTI"], "+OK\r\n").await;
    a.call(&["UNWATCH"], "+QUEUED\r\n").await;
    b.call(&["SET", "k", "meanwhile"], "+OK\r\n").await;
    a.call(&["SET", "k", "lost"], "+QUEUED\r\n").await;
    a.call(&["EXEC"], "*-1\r\n").await;

    // All pipelined in one write, EXEC still sees the WATCH's version.
    let mut batch = Vec::new();
    for args in [
        &["WATCH", "k"][..],
        &["MULTI"],
        &["SET", "k", "piped"],
        &["EXEC"],
    ] {
        batch.extend(cmd(args));
    }
    a.send(&batch).await;
    a.expect("+OK\r\n+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n").await;
    b.call(&["GET", "k"], bulk("piped")).await;
}

#[tokio::test]
async fn one_hundred_pipelined_requests_are_answered_in_order() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    let mut requests = Vec::new();
    let mut replies = String::new();
    for i in 0..100 {
        let value = i.to_string();
        match i % 4 {
            0 => {
                requests.extend(cmd(&["SET", "k", &value]));
                replies.push_str("+OK\r\n");
            }
            1 => {
                requests.extend(cmd(&["GET", "k"]));
                replies.push_str(&bulk(&(i - 1).to_string()));
            }
            2 => {
                requests.extend(cmd(&["INCR", "counter"]));
                replies.push_str(&format!(":{}\r\n", i / 4 + 1));
            }
            _ => {
                requests.extend(b"PING\r\n");
                replies.push_str("+PONG\r\n");
            }
        }
    }
    c.send(&requests).await;
    c.expect(replies).await;
}

#[tokio::test]
async fn a_full_pipeline_stops_reading_instead_of_failing() {
    let server = start_with(Config {
        pipeline_depth_max: 2,
        ..Config::default()
    })
    .await;
    let mut c = Client::connect(&server).await;
    let mut requests = Vec::new();
    let mut replies = String::new();
    for i in 1..=500 {
        requests.extend(cmd(&["INCR", "n"]));
        replies.push_str(&format!(":{i}\r\n"));
    }
    c.send(&requests).await;
    c.expect(replies).await;
}

#[tokio::test]
async fn malformed_requests_get_an_error_and_the_node_keeps_serving() {
    let server = start().await;
    let mut other = Client::connect(&server).await;
    other.call(&["SET", "k", "v"], "+OK\r\n").await;

    let mut bad = Client::connect(&server).await;
    bad.send(b"PING\r\n*1\r\n$x\r\nPING\r\n").await;
    let rest = bad.until_closed().await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
    );

    let mut bad = Client::connect(&server).await;
    bad.send(b"*2\r\n+GET\r\n").await;
    let rest = bad.until_closed().await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "-ERR Protocol error: expected '$', got '+'\r\n"
    );

    let mut bad = Client::connect(&server).await;
    bad.send(b"SET k \"unbalanced\r\n").await;
    let rest = bad.until_closed().await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "-ERR Protocol error: unbalanced quotes in request\r\n"
    );

    other.call(&["GET", "k"], bulk("v")).await;
    let mut fresh = Client::connect(&server).await;
    fresh.call(&["GET", "k"], bulk("v")).await;
}

#[tokio::test]
async fn a_600_mb_bulk_is_refused_from_its_header() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    // Only the header is sent: the refusal cannot wait for the payload.
    c.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$629145600\r\n")
        .await;
    let rest = c.until_closed().await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "-ERR Protocol error: invalid bulk length\r\n"
    );
}

#[tokio::test]
async fn size_limits_are_checked_before_the_node() {
    let server = start_with(Config {
        key_bytes_max: 8,
        value_bytes_max: 16,
        ..Config::default()
    })
    .await;
    let mut c = Client::connect(&server).await;
    let long_value = "v".repeat(17);
    c.call(
        &["SET", "k", &long_value],
        "-ERR value is 17 bytes, more than the limit of 16 bytes\r\n",
    )
    .await;
    c.call(
        &["GET", "a-long-key"],
        "-ERR key is 10 bytes, more than the limit of 8 bytes\r\n",
    )
    .await;
    c.call(&["SET", "k", &"v".repeat(16)], "+OK\r\n").await;
    let seen = server.node.seen();
    assert_eq!((seen.writes, seen.reads), (1, 0));
}

#[tokio::test]
async fn http_requests_are_dropped_without_a_reply() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    c.send(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n\r\nFLUSHALL\r\n")
        .await;
    assert_eq!(c.until_closed().await, b"");
    assert_eq!(server.node.seen().writes, 0);
}

#[tokio::test]
async fn quit_answers_then_closes() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    c.send(b"PING\r\nQUIT\r\nSET k v\r\n").await;
    assert_eq!(c.until_closed().await, b"+PONG\r\n+OK\r\n");
    server.node.wait_until(|s| s.closed == 1).await;
    assert_eq!(server.node.seen().writes, 0);
}

#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    let server = start_with(Config {
        connections_max: 2,
        ..Config::default()
    })
    .await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.call(&["PING"], "+PONG\r\n").await;
    b.call(&["PING"], "+PONG\r\n").await;
    let mut c = Client::connect(&server).await;
    assert_eq!(
        c.until_closed().await,
        b"-ERR max number of clients reached\r\n"
    );
    drop(a);
    server.node.wait_until(|s| s.closed == 1).await;
    let mut d = Client::connect(&server).await;
    d.call(&["PING"], "+PONG\r\n").await;
    let metrics = server.node.handle().metrics().clone();
    assert_eq!(metrics.client_connections_total.get(), 3);
    assert_eq!(metrics.client_connections_open.get(), 2);
}

#[tokio::test]
async fn node_errors_are_passed_on() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    server
        .node
        .set_fault(Some(Fault::Fail(NodeError::ClusterDown)));
    c.call(
        &["SET", "k", "v"],
        "-CLUSTERDOWN no leader is known; retry shortly\r\n",
    )
    .await;
    c.call(
        &["GET", "k"],
        "-CLUSTERDOWN no leader is known; retry shortly\r\n",
    )
    .await;
    server.node.set_fault(Some(Fault::Fail(NodeError::Busy(
        "too many requests".to_owned(),
    ))));
    c.call(&["INCR", "n"], "-BUSY too many requests\r\n").await;

    // A write whose answer is lost is uncertain, and here it did apply.
    server.node.set_fault(Some(Fault::DropAnswers));
    c.call(
        &["SET", "k", "maybe"],
        "-UNCERTAIN the leader changed before confirming; the write may or may not have taken effect\r\n",
    )
    .await;
    c.call(&["GET", "k"], "-BUSY the node is shutting down\r\n")
        .await;
    server.node.set_fault(None);
    c.call(&["GET", "k"], bulk("maybe")).await;

    // A WATCH that failed aborts the transaction that follows it.
    server
        .node
        .set_fault(Some(Fault::Fail(NodeError::ClusterDown)));
    c.call(
        &["WATCH", "k"],
        "-CLUSTERDOWN no leader is known; retry shortly\r\n",
    )
    .await;
    server.node.set_fault(None);
    c.call(&["MULTI"], "+OK\r\n").await;
    c.call(&["SET", "k", "x"], "+QUEUED\r\n").await;
    c.call(&["EXEC"], "*-1\r\n").await;
    c.call(&["GET", "k"], bulk("maybe")).await;
}

#[tokio::test]
async fn before_auth_a_stranger_may_send_nothing_large() {
    let server = start_with(Config {
        password: Some("sesame".to_owned()),
        ..Config::default()
    })
    .await;
    // A 100 kB argument is refused from its header, before its bytes.
    let mut c = Client::connect(&server).await;
    c.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100000\r\n").await;
    let rest = c.until_closed().await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "-ERR Protocol error: invalid bulk length\r\n"
    );
    // So is a request of more than ten arguments.
    let mut c = Client::connect(&server).await;
    c.send(b"*11\r\n").await;
    let rest = c.until_closed().await;
    assert_eq!(
        String::from_utf8_lossy(&rest),
        "-ERR Protocol error: invalid multibulk length\r\n"
    );
    // Once authenticated, the connection's limits are the configured ones.
    let mut c = Client::connect(&server).await;
    c.call(&["AUTH", "sesame"], "+OK\r\n").await;
    let value = "v".repeat(100_000);
    c.call(&["SET", "k", &value], "+OK\r\n").await;
    c.call(&["STRLEN", "k"], ":100000\r\n").await;
}

#[tokio::test]
async fn a_stranger_who_never_authenticates_and_an_idle_client_are_let_go() {
    let server = start_with(Config {
        password: Some("sesame".to_owned()),
        auth_deadline: Duration::from_millis(300),
        idle_timeout: Some(Duration::from_millis(600)),
        ..Config::default()
    })
    .await;
    let started = std::time::Instant::now();
    let mut stranger = Client::connect(&server).await;
    assert!(stranger.until_closed().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300));
    // An authenticated client is not held to the AUTH deadline, only to
    // the idle timeout, which each request restarts.
    let mut c = Client::connect(&server).await;
    c.call(&["AUTH", "sesame"], "+OK\r\n").await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        c.call(&["SET", "k", "v"], "+OK\r\n").await;
    }
    let idle = std::time::Instant::now();
    assert!(c.until_closed().await.is_empty());
    assert!(idle.elapsed() >= Duration::from_millis(600));
}

#[tokio::test]
async fn auth_is_required_when_a_password_is_set() {
    let server = start_with(Config {
        password: Some("sesame".to_owned()),
        ..Config::default()
    })
    .await;
    let mut c = Client::connect(&server).await;
    c.call(&["GET", "k"], "-NOAUTH Authentication required.\r\n")
        .await;
    c.call(&["PING"], "-NOAUTH Authentication required.\r\n")
        .await;
    c.call(
        &["AUTH", "wrong"],
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    )
    .await;
    c.call(
        &["AUTH", "admin", "sesame"],
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    )
    .await;
    c.call(&["HELLO", "2"], "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n").await;
    c.call(&["AUTH", "sesame"], "+OK\r\n").await;
    c.call(&["GET", "k"], "$-1\r\n").await;

    let mut d = Client::connect(&server).await;
    d.send(&cmd(&[
        "HELLO", "2", "AUTH", "default", "sesame", "SETNAME", "d",
    ]))
    .await;
    let hello = d.read_until(b"$10\r\npaxos_role\r\n$6\r\nleader\r\n").await;
    assert!(hello.starts_with("*18\r\n$6\r\nserver\r\n"), "{hello}");
    d.call(&["CLIENT", "GETNAME"], bulk("d")).await;

    // Without a password, the default user needs none.
    let open = start().await;
    let mut e = Client::connect(&open).await;
    e.call(&["AUTH", "x"], "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n").await;
    e.call(&["AUTH", "default", "x"], "+OK\r\n").await;
    e.call(
        &["AUTH", "admin", "x"],
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    )
    .await;
}

#[tokio::test]
async fn hello_select_and_client_commands() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    c.send(&cmd(&["CLIENT", "ID"])).await;
    let id = c.read_until(b"\r\n").await;
    let id = id.trim_start_matches(':').trim_end();
    c.call(&["HELLO", "3"], "-NOPROTO unsupported protocol version\r\n")
        .await;
    c.call(
        &["HELLO", "two"],
        "-ERR Protocol version is not an integer or out of range\r\n",
    )
    .await;
    c.call(
        &["HELLO", "2", "BOGUS"],
        "-ERR Syntax error in HELLO option 'BOGUS'\r\n",
    )
    .await;
    let version = env!("CARGO_PKG_VERSION");
    c.call(
        &["HELLO", "2"],
        format!(
            "*18\r\n$6\r\nserver\r\n$10\r\nparliament\r\n$7\r\nversion\r\n{}$5\r\nproto\r\n:2\r\n\
             $2\r\nid\r\n:{id}\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n\
             $7\r\nmodules\r\n*0\r\n$7\r\nnode_id\r\n:7\r\n$10\r\npaxos_role\r\n$6\r\nleader\r\n",
            bulk(version)
        ),
    )
    .await;
    c.call(&["SELECT", "0"], "+OK\r\n").await;
    c.call(&["SELECT", "1"], "-ERR DB index is out of range\r\n")
        .await;
    c.call(
        &["SELECT", "x"],
        "-ERR value is not an integer or out of range\r\n",
    )
    .await;
    c.call(&["CLIENT", "GETNAME"], "$-1\r\n").await;
    c.call(&["CLIENT", "SETNAME", "worker-1"], "+OK\r\n").await;
    c.call(&["CLIENT", "GETNAME"], bulk("worker-1")).await;
    c.call(
        &["CLIENT", "SETNAME", "has space"],
        "-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
    )
    .await;
    c.call(&["CLIENT", "SETINFO", "LIB-NAME", "redis-rs"], "+OK\r\n")
        .await;
    c.call(&["CLIENT", "SETINFO", "lib-ver", "1.2.2"], "+OK\r\n")
        .await;
    c.call(
        &["CLIENT", "SETINFO", "colour", "x"],
        "-ERR Unrecognized option 'colour'\r\n",
    )
    .await;
    c.call(
        &["CLIENT", "SETNAME"],
        "-ERR wrong number of arguments for 'client|setname' command\r\n",
    )
    .await;
    c.call(
        &["CLIENT", "KILL", "x"],
        "-ERR unknown subcommand 'KILL'. Try CLIENT HELP.\r\n",
    )
    .await;
    c.send(&cmd(&["CLIENT", "INFO"])).await;
    let info = c.read_bulk().await;
    assert!(
        info.starts_with(&format!("id={id} addr=127.0.0.1:")),
        "{info}"
    );
    assert!(
        info.contains(&format!(" laddr={} name=worker-1 ", server.addr)),
        "{info}"
    );
    assert!(
        info.ends_with(
            " name=worker-1 db=0 multi=-1 watch=0 flags=N resp=2 lib-name=redis-rs lib-ver=1.2.2\n"
        ),
        "{info}"
    );
}

#[tokio::test]
async fn command_config_and_info() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    c.call(
        &["COMMAND", "COUNT"],
        format!(":{}\r\n", table::COMMANDS.len()),
    )
    .await;
    c.call(
        &["COMMAND", "INFO", "get", "nosuch"],
        "*2\r\n*10\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*0\r\n*0\r\n*0\r\n*0\r\n*-1\r\n",
    )
    .await;
    c.call(&["COMMAND", "DOCS"], "*0\r\n").await;
    c.call(
        &["COMMAND", "NOPE"],
        "-ERR unknown subcommand 'NOPE'. Try COMMAND HELP.\r\n",
    )
    .await;
    c.call(&["CONFIG", "GET", "save"], "*2\r\n$4\r\nsave\r\n$0\r\n\r\n")
        .await;
    c.call(
        &["CONFIG", "GET", "appendonly", "max*"],
        "*4\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n$10\r\nmaxclients\r\n$5\r\n10000\r\n",
    )
    .await;
    c.call(&["CONFIG", "GET", "nosuch"], "*0\r\n").await;
    c.call(
        &["CONFIG", "GET"],
        "-ERR wrong number of arguments for 'config|get' command\r\n",
    )
    .await;
    c.call(
        &["CONFIG", "SET", "save", ""],
        "-ERR CONFIG SET is not supported: parliament is configured when it starts\r\n",
    )
    .await;

    c.call(&["SET", "k", "v"], "+OK\r\n").await;
    c.send(&cmd(&["INFO", "PAXOS"])).await;
    assert_eq!(
        c.read_bulk().await,
        "# Paxos\r\nrole:leader\r\nleader_id:7\r\nballot:1.7\r\ncommit_slot:1\r\n\
         applied_slot:1\r\nlog_start:0\r\nmembers:7\r\nlearners:\r\nconfig_slot:1\r\n\
         rejoining:0\r\nrejoin_waiting_for:\r\n\
         member_7:peer_addr=127.0.0.1:0,client_addr=,connected=1,match_slot=1\r\n"
    );
    c.send(&cmd(&["INFO", "keyspace", "clients"])).await;
    assert_eq!(
        c.read_bulk().await,
        "# Clients\r\nconnected_clients:1\r\nmaxclients:10000\r\n\r\n\
         # Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n"
    );
    c.send(&cmd(&["INFO"])).await;
    let all = c.read_bulk().await;
    for section in ["# Server", "# Clients", "# Stats", "# Keyspace", "# Paxos"] {
        assert!(all.contains(section), "{all}");
    }
    assert!(
        all.contains(&format!("tcp_port:{}\r\n", server.port())),
        "{all}"
    );
    c.send(&cmd(&["INFO", "nosuch"])).await;
    assert_eq!(c.read_bulk().await, "");
}

#[tokio::test]
async fn readonly_allows_stale_reads_until_readwrite() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    c.call(&["GET", "k"], "$-1\r\n").await;
    assert_eq!(server.node.seen().stale_reads, 0);
    c.call(&["READONLY"], "+OK\r\n").await;
    c.call(&["GET", "k"], "$-1\r\n").await;
    c.call(&["MGET", "k", "j"], "*2\r\n$-1\r\n$-1\r\n").await;
    assert_eq!(server.node.seen().stale_reads, 2);
    // WATCH and transactions stay linearizable.
    c.call(&["WATCH", "k"], "+OK\r\n").await;
    c.call(&["MULTI"], "+OK\r\n").await;
    c.call(&["GET", "k"], "+QUEUED\r\n").await;
    c.call(&["EXEC"], "*1\r\n$-1\r\n").await;
    assert_eq!(server.node.seen().stale_reads, 2);
    c.call(&["READWRITE"], "+OK\r\n").await;
    c.call(&["GET", "k"], "$-1\r\n").await;
    assert_eq!(server.node.seen().stale_reads, 2);
}

#[tokio::test]
async fn replies_are_counted_in_the_metrics() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    c.call(&["PING"], "+PONG\r\n").await;
    c.call(
        &["GET"],
        "-ERR wrong number of arguments for 'get' command\r\n",
    )
    .await;
    c.call(&["SET", "k", "v"], "+OK\r\n").await;
    let metrics = server.node.handle().metrics().clone();
    assert_eq!(metrics.client_commands.get(), 3);
    assert_eq!(metrics.client_errors.get(), 1);
}

#[tokio::test]
async fn closing_a_connection_tells_the_node() {
    let server = start().await;
    let mut c = Client::connect(&server).await;
    c.call(&["SET", "k", "v"], "+OK\r\n").await;
    drop(c);
    server.node.wait_until(|s| s.closed == 1).await;
    // Input that ends mid-pipeline still gets its replies.
    let mut c = Client::connect(&server).await;
    c.send(b"GET k\r\nINCR n\r\n").await;
    c.stream.shutdown().await.unwrap();
    assert_eq!(c.until_closed().await, b"$1\r\nv\r\n:1\r\n");
}
