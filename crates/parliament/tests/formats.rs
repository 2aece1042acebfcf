//! Files written by a release stay readable by every later one.
//!
//! `tests/fixtures/release-0.1/node-1` is the data directory of a one-node
//! cluster as this release writes it: write-ahead log segments, snapshots,
//! the cluster record with its id, the node id and the client-session
//! epoch. It was made by `write_the_format_fixtures` (ignored: run it only
//! when a format changes on purpose, into a new directory beside this one,
//! and keep every old one). The test starts a node on a copy of it, through
//! the same path as `parliament serve`, and reads back every key.
//!
//! `tests/fixtures/release-0.1/cluster.backup` is a backup file of that
//! node's newest snapshot, as `parliament backup` writes one (made by
//! `write_the_backup_fixture`, ignored likewise); the test restores it into
//! a new cluster and reads back every key it holds.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is its job

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use host::SnapshotPolicy;
use kv::{Command, Reply, SetCondition};
use node::api::{NodeError, NodeHandle, ReadMode};
use node::backup::{BackupHeader, BackupWriter, RestoreTarget};
use node::cluster::{ClusterFile, ClusterId};
use node::{Node, NodeConfig};
use storage::snapshot::SnapshotStore;
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

/// Writes the backup fixture of this release from the data directory
/// fixture's newest snapshot. Run by hand only, like the one above.
#[test]
#[ignore = "writes the fixtures; run only when a format changes on purpose"]
fn write_the_backup_fixture() {
    let release = Path::new(FIXTURES).join(RELEASE);
    let fixture = release.join("node-1");
    let source = ClusterFile::load(&fixture).unwrap().unwrap().id.unwrap();
    let (snapshots, _) = SnapshotStore::open(fixture.join("snapshots")).unwrap();
    let meta = snapshots.latest().unwrap().clone();
    let body = snapshots
        .open_body(&meta)
        .unwrap()
        .read_at(0, meta.bytes as usize)
        .unwrap();
    let header = BackupHeader {
        source,
        restored_id: ClusterId::generate(),
        slot: meta.slot,
        body_bytes: meta.bytes,
        body_crc: meta.crc,
        node: 1,
        taken_unix_ms: 1_796_000_000_000,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let path = release.join("cluster.backup");
    let _ = std::fs::remove_file(&path);
    let mut writer = BackupWriter::create(&path, header).unwrap();
    writer.append(&body).unwrap();
    writer.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_of_release_0_1_is_restored() {
    let file = Path::new(FIXTURES).join(RELEASE).join("cluster.backup");
    let (header, store) = node::backup::read_backup(&file).unwrap();
    let dir = common::Scratch::new("formats-backup");
    let target = RestoreTarget {
        data_dir: dir.0.clone(),
        id: 1,
        members: BTreeMap::from([(1, PEER_ADDR.to_owned())]),
        client_addr: String::new(),
    };
    node::backup::restore(&file, &target).unwrap();
    let node = start(&dir.0).await;
    let h = node.handle();
    assert_eq!(h.status().cluster_id, header.restored_id.to_string());
    let mut present = 0;
    for i in 0..KEYS {
        let key = format!("k{i}");
        let expected = store.read(&Command::Get(b(&key)));
        present += usize::from(expected != Reply::Nil);
        assert_eq!(read(&h, &key).await, expected, "{key}");
    }
    assert!(present >= 50, "the backup holds {present} keys");
    node.stop().await;
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
