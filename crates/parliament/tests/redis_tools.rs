//! Redis's own tools against a real three-node cluster of `parliament
//! serve` processes: `redis-cli` on every node, `redis-benchmark` with no
//! errors, and clients that misbehave without stopping the node.
//!
//! The tools come from Debian's redis-tools, which `scripts/test` installs; a
//! missing tool fails the test with the command that installs it.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is its job

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{ServeCluster, eventually, get_all, run, set_until_ok, tool};

/// Runs `redis-cli -p PORT args...` (with `input` on standard input) and
/// returns its standard output.
fn cli(port: u16, args: &[&str], input: &str) -> String {
    let port = port.to_string();
    let all: Vec<&str> = ["-p", port.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    let (ok, out, err) = run(tool("redis-cli"), &all, input);
    assert!(ok, "redis-cli {args:?}: {out}{err}");
    out
}

/// A cluster that has elected a leader and taken a first write.
fn ready_cluster(name: &str) -> ServeCluster {
    let c = ServeCluster::start(name);
    c.leader(None);
    set_until_ok(c.client_ports[0], "ready", "yes");
    c
}

#[test]
fn redis_cli_works_against_every_node() {
    let c = ready_cluster("redis-cli");
    for (i, &port) in c.client_ports.iter().enumerate() {
        let key = format!("cli-{i}");
        assert_eq!(cli(port, &["set", &key, "hello"], ""), "OK\n");
        assert_eq!(cli(port, &["get", &key], ""), "hello\n");
        let counter = format!("count-{i}");
        assert_eq!(cli(port, &["incr", &counter], ""), "1\n");
        assert_eq!(cli(port, &["incrby", &counter, "41"], ""), "42\n");
        // A transaction through redis-cli's interactive input.
        let tx = cli(
            port,
            &[],
            &format!("multi\nset tx-{i} a\nincr {counter}\nget tx-{i}\nexec\n"),
        );
        assert_eq!(
            tx,
            "OK\nQUEUED\nQUEUED\nQUEUED\nOK\n43\na\n",
            "node {}",
            i + 1
        );
        // parliament's compare-and-swap.
        assert_eq!(cli(port, &["cas", &key, "hello", "world"], ""), "1\n");
        assert_eq!(cli(port, &["cas", &key, "hello", "again"], ""), "0\n");
        assert_eq!(cli(port, &["get", &key], ""), "world\n");
    }
    // Every node sees every node's writes.
    let keys: Vec<String> = (0..3).map(|i| format!("cli-{i}")).collect();
    for &port in &c.client_ports {
        assert_eq!(get_all(port, &keys), vec![Some("world".to_owned()); 3]);
    }
    let info = cli(c.client_ports[1], &["info", "paxos"], "");
    assert!(info.contains("# Paxos"), "{info}");
    assert!(info.contains("leader_id:"), "{info}");
    assert!(info.contains("commit_slot:"), "{info}");
}

#[test]
fn redis_benchmark_runs_without_errors() {
    let c = ready_cluster("redis-benchmark");
    // One node leads and two forward: run against a follower and the leader.
    let leader = c.leader(None);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    for id in [leader, follower] {
        let port = c.client_ports[(id - 1) as usize];
        let out = Command::new(tool("redis-benchmark"))
            .args(["-p", &port.to_string()])
            .args(["-t", "ping,set,get,incr", "-n", "20000", "-c", "16", "-q"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        let lower = text.to_lowercase();
        assert!(!lower.contains("error"), "{text}");
        for test in ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"] {
            assert!(
                text.lines()
                    .any(|l| l.contains(&format!("{test}: ")) && l.contains("requests per second")),
                "no figure for {test}: {text}"
            );
        }
    }
}

/// Sends `bytes` on a fresh connection and returns what comes back before
/// the node closes it (or a read timeout).
fn exchange(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn misbehaving_clients_get_clear_errors_and_the_node_keeps_serving() {
    let c = ready_cluster("bad-clients");
    let port = c.client_ports[0];

    let reply = exchange(port, b"*1\r\n$abc\r\n");
    assert!(reply.starts_with("-ERR Protocol error"), "{reply:?}");

    // A 600 MB bulk length is refused from its header, before any of it.
    let reply = exchange(port, b"*2\r\n$3\r\nSET\r\n$600000000\r\n");
    assert!(reply.starts_with("-ERR Protocol error"), "{reply:?}");
    assert!(reply.contains("bulk"), "{reply:?}");

    // Redis drops a connection that speaks HTTP, without a word.
    let reply = exchange(port, b"POST / HTTP/1.1\r\nHost: example\r\n\r\n");
    assert_eq!(reply, "");

    let reply = exchange(port, b"NOSUCHCOMMAND a b\r\n");
    assert!(
        reply.starts_with("-ERR unknown command 'NOSUCHCOMMAND'"),
        "{reply:?}"
    );

    // A thousand idle connections at once.
    let idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let reply = eventually("the node answers with 1000 idle connections open", || {
        let r = exchange(port, b"PING\r\nQUIT\r\n");
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(reply, "+PONG\r\n+OK\r\n");
    set_until_ok(port, "after-the-crowd", "still-here");
    drop(idle);
    assert_eq!(
        get_all(c.client_ports[2], &["after-the-crowd".to_owned()]),
        vec![Some("still-here".to_owned())]
    );
}
