//! Files written by a release stay readable by every later one.
//!
//! `tests/fixtures/release-0.1/node-1` is the data directory of a one-node
//! cluster as this release writes it: write-ahead log segments, snapshots,
//! the cluster record with its id, the node id and the client-session
//! epoch. It was made by `write_the_format_fixtures` (ignored: run it only
//! when a format changes on purpose, into a new directory beside this one,
//! and keep every old one). The test starts a node on a copy of it, through
//! the same path as `parliament serve`, and reads back every key.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is its job

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use host::SnapshotPolicy;
use kv::{Command, Reply, SetCondition};
use node::api::{NodeError, NodeHandle, ReadMode};
use node::cluster::ClusterFile;
use node::{Node, NodeConfig};
use storage::wal::FsyncPolicy;
use tokio::net::TcpListener;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// The release whose files the fixture holds, and its cluster id.
const RELEASE: &str = "release-0.1";
/// Keys `k0..` written before and after the snapshots, each `v{i}`.
const KEYS: u64 = 120;
const PEER_ADDR: &str = "127.0.0.1:7999";

fn config(dir: &Path) -> NodeConfig {
    let members = BTreeMap::from([(1, PEER_ADDR.to_owned())]);
    let mut c = NodeConfig::new(1, dir.to_path_buf(), members);
    c.client_addr = "127.0.0.1:0".to_owned();
    c.http_addr = "127.0.0.1:0".to_owned();
    c.fsync = FsyncPolicy::Always;
    c.snapshot = SnapshotPolicy {
        entries_max: 50,
        bytes_max: 8 << 10,
    };
    c.wal_segment_bytes_max = 16 << 10;
    c
}

/// A node started on data directory `dir`, as `parliament serve` starts one.
async fn start(dir: &Path) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Node::start(config(dir), listener).await.unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn write_ok(h: &NodeHandle, command: Command) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match h.write(1, command.clone()).await {
            Ok(Reply::Status(_)) => return,
            Ok(other) => panic!("write {command:?} answered {other:?}"),
            Err(NodeError::ClusterDown | NodeError::Busy(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("write {command:?} failed: {e}"),
        }
    }
}

async fn read(h: &NodeHandle, key: &str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match h.read(Command::Get(b(key)), ReadMode::Linearizable).await {
            Ok(reply) => return reply,
            Err(NodeError::ClusterDown | NodeError::Busy(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("read {key} failed: {e}"),
        }
    }
}

/// Writes the fixture of this release. Run by hand only:
/// `cargo test --release --test formats -- --ignored write_the_format_fixtures`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes the fixtures; run only when a format changes on purpose"]
async fn write_the_format_fixtures() {
    let dir = common::Scratch::new("formats-write");
    let node = start(&dir.0).await;
    let h = node.handle();
    for i in 0..KEYS {
        let set = Command::Set {
            key: b(&format!("k{i}")),
            value: b(&format!("v{i}")),
            condition: SetCondition::None,
            get: false,
        };
        write_ok(&h, set).await;
    }
    node.stop().await;
    let target = Path::new(FIXTURES).join(RELEASE).join("node-1");
    let _ = std::fs::remove_dir_all(&target);
    common::copy_dir(&dir.0, &target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_of_release_0_1_are_read() {
    let fixture = Path::new(FIXTURES).join(RELEASE).join("node-1");
    let cluster = ClusterFile::load(&fixture)
        .unwrap()
        .expect("a cluster record");
    let id = cluster.id.expect("the record names its cluster");
    let snapshots = std::fs::read_dir(fixture.join("snapshots"))
        .unwrap()
        .count();
    assert!(snapshots > 0, "the fixture holds snapshots");
    let dir = common::Scratch::new("formats-read");
    common::copy_dir(&fixture, &dir.0);
    let node = start(&dir.0).await;
    let h = node.handle();
    let status = h.status();
    assert_eq!(status.cluster_id, id.to_string());
    assert!(status.log_start > 0, "started from a snapshot: {status:?}");
    for i in 0..KEYS {
        let value = read(&h, &format!("k{i}")).await;
        assert_eq!(value, Reply::Bulk(b(&format!("v{i}"))), "k{i}");
    }
    node.stop().await;
}
