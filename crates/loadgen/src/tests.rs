#![allow(clippy::unwrap_used)]
//! The load generator against real servers on loopback ports: a
//! `redis-server`, and with the `etcd` feature a single-member etcd. Each
//! test starts its own server in a scratch directory and stops it on drop,
//! also when the test fails. A test whose server is not installed fails
//! with the command that installs it (`scripts/test` installs them): a test
//! that quietly did nothing would look like a pass.
//!
//! These check that the loop counts what it should; they never judge speed.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::resp_client::RespConn;
use super::*;
use resp::Reply;

/// Generous: a loaded 2-core machine may take long to start a server.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A scratch directory, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(tag: &str) -> ScratchDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "parliament-loadgen-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        ScratchDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server process, killed and reaped on drop (before its directory goes).
struct Server {
    child: Child,
    addr: String,
    _dir: ScratchDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn installed(program: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{program} is not installed: apt-get install -y {}",
        if program == "etcd" {
            "etcd-server"
        } else {
            program
        }
    );
    found
}

/// Starts a throwaway `redis-server` and waits until it answers.
async fn redis() -> Option<Server> {
    if !installed("redis-server") {
        return None;
    }
    let dir = ScratchDir::new("redis");
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server {
        child,
        addr: format!("127.0.0.1:{port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Ok(mut conn) = RespConn::connect(&server.addr).await
            && let Ok(Reply::Simple(pong)) = conn.call(&[b"PING"], CALL_TIMEOUT).await
        {
            assert_eq!(pong, "PONG");
            return Some(server);
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(addr: &str) -> Config {
    Config {
        addrs: vec![addr.to_owned()],
        clients: 8,
        pipeline: 4,
        mix: Mix::parse("set=40,get=40,incr=20").unwrap(),
        keys: 1_000,
        value_bytes: 100,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(2),
        ..Config::default()
    }
}

#[tokio::test]
async fn the_resp_client_talks_to_redis() {
    let Some(redis) = redis().await else { return };
    let mut conn = RespConn::connect(&redis.addr).await.unwrap();
    assert_eq!(
        conn.call(&[b"SET", b"k", b"v\r\n"], CALL_TIMEOUT)
            .await
            .unwrap(),
        Reply::ok()
    );
    assert_eq!(
        conn.call(&[b"GET", b"k"], CALL_TIMEOUT).await.unwrap(),
        Reply::bulk(&b"v\r\n"[..])
    );
    assert_eq!(
        conn.call(&[b"GET", b"missing"], CALL_TIMEOUT)
            .await
            .unwrap(),
        Reply::NullBulk
    );
    match conn.call(&[b"INCR", b"k"], CALL_TIMEOUT).await.unwrap() {
        Reply::Error(text) => assert!(text.starts_with("ERR"), "{text}"),
        other => panic!("INCR of a non-number answered {other:?}"),
    }
    // Pipelined: ten commands in one write, the replies in order.
    for _ in 0..10 {
        conn.queue(&[b"INCR", b"n"]);
    }
    conn.flush().await.unwrap();
    for expected in 1..=10 {
        assert_eq!(conn.read_reply().await.unwrap(), Reply::Integer(expected));
    }
}

#[tokio::test]
async fn a_closed_loop_against_redis_counts_every_command() {
    let Some(redis) = redis().await else { return };
    let config = config(&redis.addr);
    let live = Arc::new(Live::default());
    let run = run(&config, Arc::clone(&live));
    // Liveness only: the run must end, however slow the machine.
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the run did not end")
        .unwrap();

    assert!(report.ops > 0);
    assert_eq!(report.ops, live.ops());
    assert_eq!(report.errors, BTreeMap::new(), "{report}");
    assert_eq!(report.connections, 8);
    assert_eq!(report.seconds, 2.0);
    for name in ["set", "get", "incr"] {
        let command = &report.commands[name];
        assert!(command.ops > 0, "no {name} counted");
        assert!(command.latency_us.p50 > 0.0);
    }
    let sum: u64 = report.commands.values().map(|c| c.ops).sum();
    assert_eq!(sum, report.ops);
    let l = report.latency_us;
    assert!(0.0 < l.p50 && l.p50 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);

    // Every INCR counted was applied (more were, during the warm-up).
    let mut conn = RespConn::connect(&redis.addr).await.unwrap();
    let Reply::Array(counters) = conn.call(&[b"KEYS", b"ctr:*"], CALL_TIMEOUT).await.unwrap()
    else {
        panic!("KEYS did not answer an array");
    };
    let mut applied = 0;
    for key in counters {
        let Reply::Bulk(key) = key else {
            panic!("a key that is not a bulk")
        };
        let Reply::Bulk(value) = conn.call(&[b"GET", &key], CALL_TIMEOUT).await.unwrap() else {
            panic!("a counter without a value");
        };
        applied += std::str::from_utf8(&value).unwrap().parse::<u64>().unwrap();
    }
    assert!(
        applied >= report.commands["incr"].ops,
        "{applied} increments applied, {} counted",
        report.commands["incr"].ops
    );
    assert!(report.to_string().contains("errors: none"));
}

#[tokio::test]
async fn a_request_count_sends_exactly_that_many() {
    let Some(redis) = redis().await else { return };
    let config = Config {
        requests: Some(1_001),
        duration: Duration::from_secs(120),
        warmup: Duration::ZERO,
        ..config(&redis.addr)
    };
    let report = run(&config, Arc::default()).await.unwrap();
    assert_eq!(report.ops + report.errors_total, 1_001, "{report}");
    assert_eq!(report.errors_total, 0, "{report}");
    assert!(report.seconds < 120.0);
}

#[tokio::test]
async fn server_errors_are_counted_by_code() {
    let Some(redis) = redis().await else { return };
    // The only counter key holds text, so every INCR fails.
    let mut conn = RespConn::connect(&redis.addr).await.unwrap();
    let key = workload::key(OpKind::Incr, 0);
    conn.call(&[b"SET", &key, b"text"], CALL_TIMEOUT)
        .await
        .unwrap();
    let config = Config {
        keys: 1,
        mix: Mix::only(OpKind::Incr),
        duration: Duration::from_millis(500),
        ..config(&redis.addr)
    };
    let report = run(&config, Arc::default()).await.unwrap();
    assert_eq!(report.ops, 0);
    assert!(report.errors["ERR"] > 0, "{report}");
    assert_eq!(report.errors.len(), 1, "{report}");
    assert_eq!(report.errors_total, report.errors["ERR"]);
}

/// Needs no server: nothing listens on the port.
#[tokio::test]
async fn refused_connections_are_retried_and_counted() {
    let addr = format!("127.0.0.1:{}", free_port());
    let config = Config {
        clients: 3,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(300),
        ..config(&addr)
    };
    let report = tokio::time::timeout(Duration::from_secs(60), run(&config, Arc::default()))
        .await
        .expect("the run did not end")
        .unwrap();
    assert_eq!(report.ops, 0);
    assert_eq!(report.connections, 0);
    // Each client tried at least once, and again after backing off.
    assert!(report.errors["connect"] >= 3, "{report}");
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    let bad = [
        Config {
            clients: 0,
            ..Config::default()
        },
        Config {
            pipeline: PIPELINE_MAX + 1,
            ..Config::default()
        },
        Config {
            keys: KEYS_MAX + 1,
            ..Config::default()
        },
        Config {
            addrs: vec![],
            ..Config::default()
        },
        Config {
            clients: CLIENTS_MAX,
            pipeline: PIPELINE_MAX,
            value_bytes: 1_000,
            ..Config::default()
        },
        Config {
            duration: Duration::ZERO,
            ..Config::default()
        },
        Config {
            target: Target::Etcd,
            mix: Mix::only(OpKind::Incr),
            ..Config::default()
        },
    ];
    for config in bad {
        assert!(config.validate().is_err(), "{config:?} was accepted");
        assert!(run(&config, Arc::default()).await.is_err());
    }
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use crate::etcd::EtcdClient;

    /// Starts a single-member etcd and waits until it takes a write.
    async fn etcd() -> Option<Server> {
        if !installed("etcd") {
            return None;
        }
        let dir = ScratchDir::new("etcd");
        let client = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let child = Command::new("etcd")
            .args(["--name", "bench"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("bench={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            addr: client.trim_start_matches("http://").to_owned(),
            _dir: dir,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(mut etcd) = EtcdClient::connect(&server.addr, CALL_TIMEOUT).await
                && etcd.put("ready".into(), "yes".into()).await.is_ok()
            {
                return Some(server);
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn the_etcd_client_puts_and_reads_back() {
        let Some(etcd) = etcd().await else { return };
        let mut client = EtcdClient::connect(&etcd.addr, CALL_TIMEOUT).await.unwrap();
        let put = client.put("k".into(), "v1".into()).await.unwrap();
        let revision = put.header.unwrap().revision;
        assert!(revision > 0);
        let got = client.get("k".into()).await.unwrap();
        assert_eq!(got.count, 1);
        assert_eq!(got.kvs.len(), 1);
        assert_eq!(&got.kvs[0].key[..], b"k");
        assert_eq!(&got.kvs[0].value[..], b"v1");
        assert_eq!(got.kvs[0].mod_revision, revision);
        let missing = client.get("nothing".into()).await.unwrap();
        assert_eq!(missing.count, 0);
        assert!(missing.kvs.is_empty());
    }

    #[tokio::test]
    async fn a_closed_loop_against_etcd_counts_puts_and_ranges() {
        let Some(etcd) = etcd().await else { return };
        let config = Config {
            target: Target::Etcd,
            mix: Mix::parse("set=50,get=50").unwrap(),
            clients: 4,
            ..config(&etcd.addr)
        };
        let report = tokio::time::timeout(Duration::from_secs(120), run(&config, Arc::default()))
            .await
            .expect("the run did not end")
            .unwrap();
        assert_eq!(report.errors, BTreeMap::new(), "{report}");
        assert_eq!(report.connections, 4);
        assert!(report.commands["set"].ops > 0, "{report}");
        assert!(report.commands["get"].ops > 0, "{report}");
        // The writes landed: a key the loop wrote holds its value.
        let mut client = EtcdClient::connect(&etcd.addr, CALL_TIMEOUT).await.unwrap();
        let mut found = 0;
        for index in 0..config.keys {
            let key = workload::key(OpKind::Set, index);
            let got = client
                .get(bytes::Bytes::copy_from_slice(&key))
                .await
                .unwrap();
            if let Some(kv) = got.kvs.first() {
                assert_eq!(kv.value.len(), config.value_bytes);
                found += 1;
            }
        }
        assert!(found > 0);
    }
}
