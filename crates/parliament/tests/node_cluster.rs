//! In-process clusters of real nodes on loopback TCP, driven through
//! `NodeHandle`: replication, elections, restarts, quorum loss and hostile
//! peers.
//!
//! Every node runs its replica task on its own thread and its transport on
//! the test's runtime; stopping a node is abrupt (like a crash after its last
//! fdatasync). Every node is stopped when its cluster is dropped, also when a
//! test fails. Liveness is polled with generous deadlines, never slept for.

#![allow(clippy::unwrap_used)] // a test fails loudly, which is its job

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use host::HostStats;
use host::SnapshotPolicy;
use kv::{Command, Reply, SetCondition};
use node::api::{NodeError, NodeHandle, ReadMode};
use node::cluster::{ClusterFile, ClusterId};
use node::{Node, NodeConfig, StartError};
use storage::wal::FsyncPolicy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Liveness deadline for anything that should take well under a second.
const PATIENCE: Duration = Duration::from_secs(20);

/// A fresh directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("parliament-node-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Cluster {
    members: BTreeMap<u64, String>,
    /// Applied to every node's configuration.
    tweak: fn(&mut NodeConfig),
    nodes: BTreeMap<u64, Node>,
    // Dropped after the nodes (fields drop in order).
    dir: Scratch,
}

impl Cluster {
    /// Binds a peer port per member; starts the nodes in `running`.
    async fn new(name: &str, size: u64, running: &[u64]) -> Cluster {
        Cluster::with(name, size, running, |_| {}).await
    }

    async fn with(name: &str, size: u64, running: &[u64], tweak: fn(&mut NodeConfig)) -> Cluster {
        let mut listeners = BTreeMap::new();
        for id in 1..=size {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listeners.insert(id, l);
        }
        let members = listeners
            .iter()
            .map(|(&id, l)| (id, l.local_addr().unwrap().to_string()))
            .collect();
        let mut cluster = Cluster {
            members,
            tweak,
            nodes: BTreeMap::new(),
            dir: Scratch::new(name),
        };
        for (id, listener) in listeners {
            if running.contains(&id) {
                cluster.start_on(id, listener).await;
            }
        }
        cluster
    }

    fn config(&self, id: u64) -> NodeConfig {
        let mut c = NodeConfig::new(
            id,
            self.dir.0.join(format!("node-{id}")),
            self.members.clone(),
        );
        c.client_addr = format!("127.0.0.1:{}", 16_000 + id);
        c.http_addr = format!("127.0.0.1:{}", 18_000 + id);
        c.fsync = FsyncPolicy::Never;
        (self.tweak)(&mut c);
        c
    }

    async fn start_on(&mut self, id: u64, listener: TcpListener) {
        let node = Node::start(self.config(id), listener).await.unwrap();
        self.nodes.insert(id, node);
    }

    /// Starts (again) node `id` on its peer address.
    async fn start(&mut self, id: u64) {
        let addr = self.members[&id].clone();
        let deadline = Instant::now() + PATIENCE;
        let listener = loop {
            match TcpListener::bind(&addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot rebind {addr}: {e}"),
            }
        };
        self.start_on(id, listener).await;
    }

    async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.stop().await;
        }
    }

    fn handle(&self, id: u64) -> NodeHandle {
        self.nodes[&id].handle()
    }

    /// The leader nodes 1 and 2 agree on, for tests that keep node 3 out.
    async fn leader_of_1_and_2(&self) -> u64 {
        eventually("nodes 1 and 2 agree on a leader of theirs", || async {
            let views = [1, 2].map(|id| self.handle(id).status().leader_id);
            let leader = views[0].filter(|&l| l != 3 && views[1] == Some(l))?;
            (self.handle(leader).status().role == "leader").then_some(leader)
        })
        .await
    }

    /// Node 3 (behind `three`, at applied slot `before`) takes no part: a
    /// while later it has applied nothing more, leads nothing, and neither
    /// node 1 nor node 2 keeps a link to it.
    async fn node_3_stays_cut_off(&self, three: &NodeHandle, before: u64) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let s = three.status();
        assert_eq!(s.applied_slot, before, "node 3 took part");
        assert_ne!(s.role, "leader");
        for id in [1, 2] {
            let view = self.handle(id).status();
            let member = view.members.iter().find(|m| m.id == 3).unwrap();
            assert!(!member.connected, "node {id} keeps a link to node 3");
        }
    }

    /// The leader every running node agrees on.
    async fn leader(&self) -> u64 {
        eventually("the running nodes agree on a leader", || async {
            let views: Vec<Option<u64>> = self
                .nodes
                .values()
                .map(|n| n.handle().status().leader_id)
                .collect();
            let leader = views.first().copied().flatten()?;
            let running = self.nodes.contains_key(&leader);
            let agreed = views.iter().all(|v| *v == Some(leader));
            let leads = running && self.handle(leader).status().role == "leader";
            (agreed && leads).then_some(leader)
        })
        .await
    }
}

/// Polls `f` until it gives a value; panics with `what` after `PATIENCE`.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn set(key: &str, value: &str) -> Command {
    Command::Set {
        key: b(key),
        value: b(value),
        condition: SetCondition::None,
        get: false,
    }
}

fn incr(key: &str) -> Command {
    Command::IncrBy {
        key: b(key),
        delta: 1,
    }
}

/// Writes, retrying while the cluster has no leader; panics on anything but
/// a clean answer.
async fn write_ok(h: &NodeHandle, conn: u64, command: Command) -> Reply {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match h.write(conn, command.clone()).await {
            Ok(reply) => return reply,
            Err(NodeError::ClusterDown | NodeError::Busy(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("write {command:?} failed: {e}"),
        }
    }
}

/// A linearizable read, retrying while no leader can confirm it.
async fn read(h: &NodeHandle, command: Command) -> Reply {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match h.read(command.clone(), ReadMode::Linearizable).await {
            Ok(reply) => return reply,
            Err(NodeError::ClusterDown | NodeError::Busy(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("read {command:?} failed: {e}"),
        }
    }
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(b(s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_anywhere_are_read_linearizably_everywhere() {
    let c = Cluster::new("rw", 3, &[1, 2, 3]).await;
    let leader = c.leader().await;
    for id in 1..=3 {
        let reply = write_ok(&c.handle(id), 1, set(&format!("k{id}"), &format!("v{id}"))).await;
        assert_eq!(reply, Reply::ok(), "set on node {id} (leader {leader})");
    }
    // A write acknowledged anywhere is seen by a linearizable read anywhere.
    for reader in 1..=3 {
        for id in 1..=3 {
            let got = read(&c.handle(reader), Command::Get(b(&format!("k{id}")))).await;
            assert_eq!(got, bulk(&format!("v{id}")), "node {reader} reads k{id}");
        }
    }
    // Increments from every node, on several connections, each applied once.
    let mut tasks = Vec::new();
    for id in 1..=3u64 {
        for conn in 10..13u64 {
            let h = c.handle(id);
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    write_ok(&h, conn, incr("counter")).await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    for reader in 1..=3 {
        assert_eq!(
            read(&c.handle(reader), Command::Get(b("counter"))).await,
            bulk("90")
        );
    }
    // Every node applied the same log.
    let commit = c.handle(leader).status().commit_slot;
    eventually(
        "every node has applied the leader's commit point",
        || async {
            (1..=3)
                .all(|id| c.handle(id).status().applied_slot >= commit)
                .then_some(())
        },
    )
    .await;
    let status = c.handle(1).status();
    assert_eq!(status.members.len(), 3);
    // The published status trails the replica by up to a tick: wait for it.
    eventually("node 1 reports every key", || async {
        (c.handle(1).status().keys >= 4).then_some(())
    })
    .await;
    // Peers told each other their client addresses in the handshake.
    eventually("node 1 knows every member's client address", || async {
        let s = c.handle(1).status();
        s.members
            .iter()
            .all(|m| m.client_addr.as_deref() == Some(&format!("127.0.0.1:{}", 16_000 + m.id)))
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_the_old_one_catches_up() {
    let mut c = Cluster::new("failover", 3, &[1, 2, 3]).await;
    let old = c.leader().await;
    let follower = (1..=3).find(|&id| id != old).unwrap();
    write_ok(&c.handle(follower), 1, set("before", "1")).await;

    // Increments keep arriving at the survivors while the leader dies, until
    // the new leader has served a write.
    let survivors: Vec<u64> = (1..=3).filter(|&id| id != old).collect();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for (i, &id) in survivors.iter().enumerate() {
        let h = c.handle(id);
        let done = std::sync::Arc::clone(&done);
        load.push(tokio::spawn(async move {
            let (mut ok, mut uncertain, mut refused) = (0u64, 0u64, 0u64);
            while !done.load(Ordering::Relaxed) {
                match h.write(100 + i as u64, incr("n")).await {
                    Ok(Reply::Integer(_)) => ok += 1,
                    Ok(other) => panic!("unexpected reply {other:?}"),
                    Err(NodeError::Uncertain) => uncertain += 1,
                    Err(NodeError::ClusterDown | NodeError::Busy(_)) => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(NodeError::Removed) => panic!("no member was removed"),
                }
            }
            (ok, uncertain, refused)
        }));
    }
    eventually("the load has started", || async {
        let n = c
            .handle(old)
            .read(Command::Get(b("n")), ReadMode::Stale)
            .await;
        matches!(n, Ok(Reply::Bulk(_))).then_some(())
    })
    .await;
    let stopped = Instant::now();
    c.stop(old).await;

    let new = c.leader().await;
    assert_ne!(new, old);
    write_ok(&c.handle(new), 1, set("after", "2")).await;
    let took = stopped.elapsed();
    eprintln!("a new leader served a write {took:?} after the old one stopped");
    done.store(true, Ordering::Relaxed);

    let (mut ok, mut uncertain, mut refused) = (0, 0, 0);
    for t in load {
        let (o, u, r) = t.await.unwrap();
        ok += o;
        uncertain += u;
        refused += r;
    }
    eprintln!("increments: {ok} acknowledged, {uncertain} uncertain, {refused} refused");
    // Exactly once: every acknowledged increment counted once; an uncertain
    // one at most once.
    let n = match read(&c.handle(new), Command::Get(b("n"))).await {
        Reply::Bulk(v) => String::from_utf8(v.to_vec())
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        Reply::Nil => 0,
        other => panic!("unexpected {other:?}"),
    };
    assert!(
        ok <= n && n <= ok + uncertain,
        "counter {n}, acknowledged {ok}, uncertain {uncertain}"
    );

    // The old leader comes back and learns what it missed.
    c.start(old).await;
    let h = c.handle(old);
    assert_eq!(read(&h, Command::Get(b("after"))).await, bulk("2"));
    assert_eq!(read(&h, Command::Get(b("before"))).await, bulk("1"));
    let commit = c.handle(new).status().commit_slot;
    eventually("the restarted node applies what it missed", || async {
        (h.status().applied_slot >= commit).then_some(())
    })
    .await;
    assert_eq!(
        h.read(Command::Get(b("after")), ReadMode::Stale).await,
        Ok(bulk("2"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_stopping_every_node() {
    let mut c = Cluster::new("restart", 3, &[1, 2, 3]).await;
    c.leader().await;
    let mut acked = Vec::new();
    for i in 0..30u64 {
        let node = i % 3 + 1;
        let (k, v) = (format!("key{i}"), format!("value{i}"));
        assert_eq!(write_ok(&c.handle(node), i, set(&k, &v)).await, Reply::ok());
        acked.push((k, v));
    }
    for id in 1..=3 {
        c.stop(id).await;
    }
    for id in 1..=3 {
        c.start(id).await;
    }
    c.leader().await;
    for (i, (k, v)) in acked.iter().enumerate() {
        let node = (i as u64 + 1) % 3 + 1;
        assert_eq!(
            read(&c.handle(node), Command::Get(b(k))).await,
            bulk(v),
            "{k}"
        );
    }
    // New sessions after the restart do not collide with old ones: a new
    // write on a reused connection number applies.
    assert_eq!(
        write_ok(&c.handle(1), 0, incr("fresh")).await,
        Reply::Integer(1)
    );
    assert_eq!(
        write_ok(&c.handle(1), 0, incr("fresh")).await,
        Reply::Integer(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_disk_rejoins_as_a_learner() {
    let mut c = Cluster::new("rejoin", 3, &[1, 2, 3]).await;
    let leader = c.leader().await;
    let lost = (1..=3).find(|&id| id != leader).unwrap();
    for i in 0..20 {
        write_ok(&c.handle(leader), 1, set(&format!("k{i}"), "v")).await;
    }
    c.stop(lost).await;
    std::fs::remove_dir_all(c.config(lost).data_dir).unwrap();

    let mut config = c.config(lost);
    config.rejoin = true;
    let addr = c.members[&lost].clone();
    let node = Node::start(config, TcpListener::bind(&addr).await.unwrap())
        .await
        .unwrap();
    c.nodes.insert(lost, node);
    let h = c.handle(lost);
    assert_eq!(h.status().role, "learner");
    eventually("the node has rejoined and votes again", || async {
        let s = h.status();
        (s.role == "follower" && s.leader_id.is_some()).then_some(())
    })
    .await;
    for i in 0..20 {
        assert_eq!(read(&h, Command::Get(b(&format!("k{i}")))).await, bulk("v"));
    }
    // Restarted without the flag, it starts from the log it rebuilt.
    c.stop(lost).await;
    c.start(lost).await;
    assert_ne!(c.handle(lost).status().role, "learner");
    assert_eq!(
        read(&c.handle(lost), Command::Get(b("k19"))).await,
        bulk("v")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_copy_put_back_with_rejoin_rejoins_instead_of_voting() {
    let mut c = Cluster::new("restored", 3, &[1, 2, 3]).await;
    let leader = c.leader().await;
    let restored = (1..=3).find(|&id| id != leader).unwrap();
    write_ok(&c.handle(leader), 1, set("early", "1")).await;
    // A copy of the stopped node's directory...
    c.stop(restored).await;
    let dir = c.config(restored).data_dir;
    let copy = c.dir.0.join("copy");
    common::copy_dir(&dir, &copy);
    c.start(restored).await;
    let leader = c.leader().await;
    for i in 0..10 {
        write_ok(&c.handle(leader), 1, set(&format!("late{i}"), "v")).await;
    }
    // ...put back later: whole, but it has forgotten what the node
    // promised and accepted since. With --rejoin it does not vote on it.
    c.stop(restored).await;
    std::fs::remove_dir_all(&dir).unwrap();
    common::copy_dir(&copy, &dir);
    let mut config = c.config(restored);
    config.rejoin = true;
    let addr = c.members[&restored].clone();
    let node = Node::start(config, TcpListener::bind(&addr).await.unwrap())
        .await
        .unwrap();
    c.nodes.insert(restored, node);
    let h = c.handle(restored);
    let s = h.status();
    assert_eq!(s.role, "learner", "a restored copy rejoins");
    assert!(s.rejoining);
    eventually("the restored node has rejoined and votes again", || async {
        let s = h.status();
        (s.role == "follower" && !s.rejoining).then_some(())
    })
    .await;
    assert_eq!(read(&h, Command::Get(b("early"))).await, bulk("1"));
    assert_eq!(read(&h, Command::Get(b("late9"))).await, bulk("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_started_with_rejoin_is_a_clear_error_not_a_hang() {
    let c = Cluster::new("all-rejoin", 3, &[]).await;
    let mut starts = Vec::new();
    for id in 1..=3 {
        let mut config = c.config(id);
        config.rejoin = true;
        let listener = TcpListener::bind(&c.members[&id]).await.unwrap();
        starts.push(tokio::spawn(Node::start(config, listener)));
    }
    for start in starts {
        let result = tokio::time::timeout(PATIENCE, start)
            .await
            .unwrap()
            .unwrap();
        let Err(e) = result else {
            panic!("a node started rejoining with nobody to rejoin");
        };
        let text = e.to_string();
        assert!(text.contains("--rejoin needs every other member"), "{text}");
        assert!(text.contains("docs/recovery.md"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_founders_share_one_cluster_id_and_refuse_a_node_of_another() {
    // Founders 2 and 3 start first and wait for founder 1 to make the id.
    let mut c = Cluster::new("cluster-id", 3, &[]).await;
    let mut waiting = Vec::new();
    for id in [2, 3] {
        let config = c.config(id);
        let listener = TcpListener::bind(&c.members[&id]).await.unwrap();
        waiting.push((id, tokio::spawn(Node::start(config, listener))));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        waiting.iter().all(|(_, w)| !w.is_finished()),
        "they wait for node 1"
    );
    c.start(1).await;
    for (id, w) in waiting {
        c.nodes.insert(id, w.await.unwrap().unwrap());
    }
    let ids: Vec<String> = (1..=3).map(|id| c.handle(id).status().cluster_id).collect();
    assert_eq!(ids[0].len(), 32, "{ids:?}");
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let leader = c.leader().await;
    write_ok(&c.handle(leader), 1, set("k", "1")).await;

    // Another cluster's node 3 comes up at node 3's address (here: node 3's
    // own data, renamed to another cluster).
    c.stop(3).await;
    let dir = c.config(3).data_dir;
    let mut file = ClusterFile::load(&dir).unwrap().unwrap();
    file.id = Some(ClusterId::generate());
    std::fs::write(dir.join("cluster"), file.encode()).unwrap();
    c.start(3).await;
    let stranger = c.handle(3);
    let before = stranger.status().applied_slot;
    let leader = c.leader_of_1_and_2().await;
    for i in 0..5 {
        write_ok(&c.handle(leader), 1, set("k", &format!("v{i}"))).await;
    }
    // Nodes 1 and 2 moved on (their status is published once a tick);
    // nothing of theirs reaches node 3.
    let moved = c.handle(leader);
    eventually("the leader's commit moves past node 3's", || {
        let moved = moved.clone();
        async move { (moved.status().commit_slot > before).then_some(()) }
    })
    .await;
    c.node_3_stays_cut_off(&stranger, before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_releases_one_apart_run_together_and_further_apart_are_refused() {
    use node::net::frame::{PEER_PROTOCOL, PEER_PROTOCOL_MIN};
    let mut c = Cluster::new("versions", 3, &[1, 2]).await;
    // Node 3 stands for the next release: it speaks this release's peer
    // protocol and the one after it.
    let start_3 = |c: &Cluster, protocols: (u8, u8)| {
        let mut config = c.config(3);
        config.transport.protocols = protocols;
        let addr = c.members[&3].clone();
        async move {
            let listener = TcpListener::bind(&addr).await.unwrap();
            Node::start(config, listener).await.unwrap()
        }
    };
    let node = start_3(&c, (PEER_PROTOCOL_MIN, PEER_PROTOCOL + 1)).await;
    c.nodes.insert(3, node);
    let leader = c.leader().await;
    write_ok(&c.handle(leader), 1, set("mixed", "1")).await;
    // Without node 1 (or 2), nodes of the two releases must agree alone.
    let other = if leader == 1 { 2 } else { 1 };
    c.stop(other).await;
    let survivor = if other == 1 { 2 } else { 1 };
    write_ok(&c.handle(3), 2, set("mixed", "2")).await;
    assert_eq!(
        read(&c.handle(survivor), Command::Get(b("mixed"))).await,
        bulk("2")
    );
    assert_eq!(
        read(&c.handle(3), Command::Get(b("mixed"))).await,
        bulk("2")
    );

    // Two releases apart (it no longer speaks this one): refused.
    c.stop(3).await;
    c.start(other).await;
    let node = start_3(&c, (PEER_PROTOCOL + 1, PEER_PROTOCOL + 1)).await;
    let far = node.handle();
    c.nodes.insert(3, node);
    let before = far.status().applied_slot;
    let leader = c.leader_of_1_and_2().await;
    write_ok(&c.handle(leader), 1, set("mixed", "3")).await;
    c.node_3_stays_cut_off(&far, before).await;
}

/// Asks node `h` for a membership request and returns the reply.
async fn admin(h: &NodeHandle, request: node::api::Admin) -> Reply {
    let (reply, answer) = tokio::sync::oneshot::channel();
    h.send(node::api::Op::Admin { request, reply })
        .await
        .unwrap();
    answer.await.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_membership_change_a_node_that_lost_its_disk_must_be_replaced() {
    let mut c = Cluster::new("rejoin-after-change", 3, &[1, 2, 3]).await;
    let leader = c.leader().await;
    write_ok(&c.handle(leader), 1, set("k", "v")).await;
    // A learner joins the membership (it never needs to run for this).
    let change = paxos::replica::Change::Add {
        id: 9,
        info: node::cluster::Addrs {
            peer: "127.0.0.1:9".into(),
            client: "127.0.0.1:9".into(),
        }
        .encode(),
        promote: false,
    };
    assert_eq!(
        admin(&c.handle(leader), node::api::Admin::Change(change)).await,
        Reply::ok()
    );
    let lost = (1..=3).find(|&id| id != leader).unwrap();
    c.stop(lost).await;
    std::fs::remove_dir_all(c.config(lost).data_dir).unwrap();
    let mut config = c.config(lost);
    config.rejoin = true;
    let addr = c.members[&lost].clone();
    let refused = Node::start(config, TcpListener::bind(&addr).await.unwrap()).await;
    let Err(error) = refused else {
        panic!("a rejoin after a membership change must be refused");
    };
    let text = error.to_string();
    assert!(text.contains("membership changed"), "{text}");
    assert!(
        text.contains(&format!("PAXOS MEMBER REMOVE {lost}")),
        "{text}"
    );
    // No rejoin mark was written: asked again, it refuses again.
    let mut config = c.config(lost);
    config.rejoin = true;
    let again = Node::start(config, TcpListener::bind(&addr).await.unwrap()).await;
    assert!(again.is_err(), "refused again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_after_compaction_gets_a_snapshot_and_becomes_a_voter() {
    let mut c = Cluster::with("join-snapshot", 3, &[1, 2, 3], tiny_snapshots).await;
    let leader = c.leader().await;
    for i in 0..300 {
        write_ok(
            &c.handle(leader),
            1,
            set(&format!("k{i}"), &format!("v{i}")),
        )
        .await;
    }
    eventually("the leader compacted its log", || async {
        (c.handle(leader).status().log_start > 0).then_some(())
    })
    .await;

    // Node 4 starts first, joining: it waits until it is added.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = listener.local_addr().unwrap().to_string();
    let mut config = NodeConfig::new(4, c.dir.0.join("node-4"), BTreeMap::new());
    config.client_addr = "127.0.0.1:16004".to_owned();
    config.http_addr = "127.0.0.1:18004".to_owned();
    config.fsync = FsyncPolicy::Never;
    tiny_snapshots(&mut config);
    config.join = c.members.values().cloned().collect();
    let joining = tokio::spawn(Node::start(config.clone(), listener));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!joining.is_finished(), "it waits to be added");

    let change = paxos::replica::Change::Add {
        id: 4,
        info: node::cluster::Addrs {
            peer: peer_addr.clone(),
            client: "127.0.0.1:16004".into(),
        }
        .encode(),
        promote: true,
    };
    // (The replica task of a follower refuses it, naming the leader: the
    // client port forwards it there, which the process tests cover.)
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = node::api::Admin::Change(change.clone());
    c.handle(follower)
        .send(node::api::Op::Admin { request, reply })
        .await
        .unwrap();
    assert!(matches!(
        answer.await.unwrap(),
        Err(node::api::AdminRefusal::NotLeader(Some((l, _)))) if l == leader
    ));
    assert_eq!(
        admin(&c.handle(leader), node::api::Admin::Change(change.clone())).await,
        Reply::ok()
    );
    let node = joining.await.unwrap().unwrap();
    let h = node.handle();
    c.nodes.insert(4, node);
    eventually("node 4 is promoted to voter", || async {
        let s = c.handle(leader).status();
        s.voters.contains(&4).then_some(())
    })
    .await;
    assert!(h.stats().snapshots_installed >= 1, "it needed the snapshot");
    for i in [0, 150, 299] {
        assert_eq!(
            read(&h, Command::Get(b(&format!("k{i}")))).await,
            bulk(&format!("v{i}"))
        );
    }
    // A voter that lost its data cannot come back by joining under its
    // old id: it would vote with promises it forgot.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut lost = NodeConfig::new(2, c.dir.0.join("node-2-wiped"), BTreeMap::new());
    lost.fsync = FsyncPolicy::Never;
    lost.join = c.members.values().cloned().collect();
    let refused = Node::start(lost, listener).await;
    let Err(error) = refused else {
        panic!("an empty voter must not join");
    };
    assert!(error.to_string().contains("cannot join again"), "{error}");
    // Adding it again is refused with a reason; a restart needs no flags.
    match admin(&c.handle(leader), node::api::Admin::Change(change)).await {
        Reply::Error(e) => assert!(e.contains("already a member"), "{e}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    c.stop(4).await;
    config.join.clear();
    let listener = TcpListener::bind(&peer_addr).await.unwrap();
    let node = Node::start(config, listener).await.unwrap();
    assert_eq!(
        read(&node.handle(), Command::Get(b("k299"))).await,
        bulk("v299")
    );
    c.nodes.insert(4, node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_would_leave_no_working_quorum_is_refused_with_the_missing_members() {
    let mut c = Cluster::new("refused-change", 3, &[1, 2, 3]).await;
    let leader = c.leader().await;
    let others: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let (down, remove) = (others[0], others[1]);
    c.stop(down).await;
    eventually("the leader sees the stopped node go", || async {
        let s = c.handle(leader).status();
        let m = s.members.iter().find(|m| m.id == down)?;
        (!m.connected).then_some(())
    })
    .await;
    // The leader counts a voter as answering for an election timeout
    // (200 to 400 ms here) after it last heard it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Removing the other follower would leave the leader and a stopped
    // node: no quorum of two could answer.
    let request = node::api::Admin::Change(paxos::replica::Change::Remove { id: remove });
    match admin(&c.handle(leader), request).await {
        Reply::Error(e) => {
            assert!(
                e.contains(&format!("[{down}]")),
                "names the missing node: {e}"
            );
            assert!(e.contains("quorum of 2"), "{e}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nothing changed: the cluster still has three voters and serves.
    assert_eq!(c.handle(leader).status().voters, vec![1, 2, 3]);
    write_ok(&c.handle(leader), 1, set("after", "yes")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_refuses_promptly_with_cluster_down() {
    let c = Cluster::new("lone", 3, &[1]).await;
    let h = c.handle(1);
    let started = Instant::now();
    assert_eq!(h.write(1, set("k", "v")).await, Err(NodeError::ClusterDown));
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(
        h.read(Command::Get(b("k")), ReadMode::Linearizable).await,
        Err(NodeError::ClusterDown)
    );
    // A stale read is answered from local state.
    assert_eq!(
        h.read(Command::Get(b("k")), ReadMode::Stale).await,
        Ok(Reply::Nil)
    );
    assert_ne!(h.status().role, "leader".to_owned());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_lost_after_serving_refuses_new_writes() {
    let mut c = Cluster::new("quorum", 3, &[1, 2, 3]).await;
    let leader = c.leader().await;
    write_ok(&c.handle(leader), 1, set("k", "v")).await;
    for id in (1..=3).filter(|&id| id != leader) {
        c.stop(id).await;
    }
    let h = c.handle(leader);
    // The leader steps down once it stops hearing from a quorum; from then
    // on new writes are refused promptly rather than hanging.
    eventually("the lone leader steps down", || async {
        (h.status().leader_id.is_none()).then_some(())
    })
    .await;
    let started = Instant::now();
    assert_eq!(h.write(2, set("k", "w")).await, Err(NodeError::ClusterDown));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_no_known_outcome_is_uncertain_never_failed() {
    // A leader that has just lost its followers still leads for an election
    // timeout (600 ms here, well beyond the time it takes to stop them): the
    // write is proposed, so its fate is unknown until a quorum decides, and
    // the answer at the deadline must say so.
    let mut c = Cluster::with("uncertain", 3, &[1, 2, 3], |config| {
        config.election_ticks = 60;
        config.write_timeout_ms = 500;
    })
    .await;
    let leader = c.leader().await;
    write_ok(&c.handle(leader), 1, set("k", "v")).await;
    for id in (1..=3).filter(|&id| id != leader) {
        c.stop(id).await;
    }
    let started = Instant::now();
    let result = c.handle(leader).write(1, set("k", "w")).await;
    let took = started.elapsed();
    assert_eq!(result, Err(NodeError::Uncertain));
    assert!(
        took >= Duration::from_millis(500),
        "answered after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_speaking_garbage_is_dropped_and_the_node_keeps_serving() {
    let c = Cluster::new("garbage", 3, &[1, 2, 3]).await;
    c.leader().await;
    let target = &c.members[&1];

    /// Sends `bytes` and expects the node to close the connection.
    async fn refused(addr: &str, bytes: &[u8]) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let closed = tokio::time::timeout(PATIENCE, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a handshake reply; keep reading
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the node kept a bad connection open");
    }

    // Not the protocol at all, and a length prefix of about a gigabyte.
    refused(target, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // A handshake from a node that is not a member.
    let hello = |from: u64, to: u64| {
        let mut frame = Vec::new();
        let mut body = Vec::new();
        body.extend_from_slice(b"PRLM");
        body.extend_from_slice(&[node::net::frame::PEER_PROTOCOL, storage::wire::WIRE_FORMAT]);
        body.extend_from_slice(&from.to_be_bytes());
        body.extend_from_slice(&to.to_be_bytes());
        body.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    };
    refused(target, &hello(9, 1)).await;
    // A handshake meant for another node.
    refused(target, &hello(2, 3)).await;
    // A good handshake, then a frame of an unknown kind.
    let mut bad = hello(2, 1);
    bad.extend_from_slice(&[0, 0, 0, 5, 0xff, 1, 2, 3, 4]);
    refused(target, &bad).await;
    // A good handshake, then a message frame that is not a message.
    let mut bad = hello(2, 1);
    bad.extend_from_slice(&[0, 0, 0, 6, 1, 0xff, 1, 2, 3, 4]);
    refused(target, &bad).await;
    // A good handshake, then a snapshot frame that is not a request.
    let mut bad = hello(3, 1);
    bad.extend_from_slice(&[0, 0, 0, 4, 2, 1, 0xee, 0]);
    refused(target, &bad).await;
    // A good handshake, then a frame of random bytes.
    let mut noise = hello(3, 1);
    noise.extend_from_slice(&1000u32.to_be_bytes());
    let mut x = 0x1234_5678_u32;
    for _ in 0..1000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    refused(target, &noise).await;

    // The cluster still serves, through the node that was attacked too.
    assert_eq!(
        write_ok(&c.handle(1), 1, set("still", "here")).await,
        Reply::ok()
    );
    for id in 1..=3 {
        assert_eq!(
            read(&c.handle(id), Command::Get(b("still"))).await,
            bulk("here")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_another_node_is_refused() {
    let mut c = Cluster::new("owner", 3, &[1]).await;
    c.stop(1).await;
    let mut config = c.config(2);
    config.data_dir = c.config(1).data_dir;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    match Node::start(config, listener).await {
        Err(e @ StartError::WrongNode { .. }) => {
            assert!(e.to_string().contains("belongs to node 1"), "{e}");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("node 2 started on node 1's data"),
    }
}

/// Prints write throughput with fdatasync on every append; a measurement,
/// not a test: `cargo test --test node_cluster -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput_with_fsync_always() {
    let c = Cluster::with("throughput", 3, &[1, 2, 3], |config| {
        config.fsync = FsyncPolicy::Always;
    })
    .await;
    let leader = c.leader().await;
    for connections in [1u64, 16, 128] {
        let per_connection = 2_000 / connections;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for conn in 0..connections {
            let h = c.handle(leader);
            tasks.push(tokio::spawn(async move {
                for i in 0..per_connection {
                    write_ok(&h, conn, set(&format!("k{conn}-{i}"), "v")).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let writes = per_connection * connections;
        eprintln!(
            "{connections:>4} connections: {:>8.0} writes/s",
            writes as f64 / secs
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_clients_on_every_node_see_one_database() {
    let c = Cluster::new("redis", 3, &[1, 2, 3]).await;
    c.leader().await;
    // The client port of each node, in front of its handle.
    let mut servers = tokio::task::JoinSet::new();
    let mut ports = Vec::new();
    for id in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        ports.push(listener.local_addr().unwrap().port());
        let config = node::server::Config {
            node_id: id,
            ..node::server::Config::default()
        };
        servers.spawn(node::server::serve_clients(listener, c.handle(id), config));
    }
    tokio::task::spawn_blocking(move || {
        use redis::Commands;
        let mut cons: Vec<redis::Connection> = ports
            .iter()
            .map(|p| {
                redis::Client::open(format!("redis://127.0.0.1:{p}/"))
                    .unwrap()
                    .get_connection()
                    .unwrap()
            })
            .collect();
        for (i, con) in cons.iter_mut().enumerate() {
            let () = con.set(format!("k{i}"), format!("v{i}")).unwrap();
            let n: i64 = con.incr("n", 1).unwrap();
            assert!(n >= 1);
        }
        for con in &mut cons {
            for i in 0..3 {
                let v: String = con.get(format!("k{i}")).unwrap();
                assert_eq!(v, format!("v{i}"));
            }
            let n: i64 = con.get("n").unwrap();
            assert_eq!(n, 3);
        }
        // A transaction through a follower, watched from another node.
        let (a, b): (i64, i64) = redis::pipe()
            .atomic()
            .incr("n", 10)
            .incr("n", 10)
            .query(&mut cons[1])
            .unwrap();
        assert_eq!((a, b), (13, 23));
        let n: i64 = cons[2].get("n").unwrap();
        assert_eq!(n, 23);
        // A pipelined read sees the write sent just before it, on the
        // leader and on followers alike.
        for con in &mut cons {
            for i in 0..50 {
                let (_, v): ((), String) = redis::pipe()
                    .set("p", i.to_string())
                    .get("p")
                    .query(con)
                    .unwrap();
                assert_eq!(v, i.to_string());
            }
        }
    })
    .await
    .unwrap();
    servers.shutdown().await;
}

// ---------------------------------------------------------------------------
// Snapshots, compaction and snapshot transfer
// ---------------------------------------------------------------------------

/// A snapshot every 50 applied entries or 8 KiB of commands, and log
/// segments of 16 KiB, so that a few hundred writes make every node
/// snapshot and drop log segments.
fn tiny_snapshots(config: &mut NodeConfig) {
    config.snapshot = SnapshotPolicy {
        entries_max: 50,
        bytes_max: 8 << 10,
    };
    config.wal_segment_bytes_max = 16 << 10;
}

/// The complete snapshots in a snapshot directory (not the temporary file
/// of one being written), oldest first.
fn snapshot_files(dir: &Path) -> Vec<(String, u64)> {
    let mut found = files(dir, "snap-");
    found.retain(|(name, _)| name.ends_with(".snap"));
    found
}

/// The slot of the newest snapshot in a snapshot directory.
fn newest_snapshot_slot(dir: &Path) -> Option<u64> {
    let (name, _) = snapshot_files(dir).pop()?;
    name.strip_prefix("snap-")?
        .strip_suffix(".snap")?
        .parse()
        .ok()
}

/// Names and sizes of the files in `dir` whose names start with `prefix`,
/// sorted by name.
fn files(dir: &Path, prefix: &str) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let len = e.metadata().ok()?.len();
                    name.starts_with(prefix).then_some((name, len))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// One of the counts the node's replica task published last.
fn counter(c: &Cluster, id: u64, pick: fn(&HostStats) -> u64) -> u64 {
    pick(&c.handle(id).stats())
}

/// Writes `key{i}` = a value of `value_bytes` derived from `i`, for every
/// `i` in `keys`, through node `via`, on `connections` connections at once.
async fn fill(c: &Cluster, via: u64, keys: std::ops::Range<u64>, value_bytes: usize) {
    let connections = 8u64;
    let mut tasks = Vec::new();
    for conn in 0..connections {
        let h = c.handle(via);
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            for i in keys.filter(|i| i % connections == conn) {
                let reply = write_ok(&h, 1000 + conn, set(&key(i), &value(i, value_bytes))).await;
                assert_eq!(reply, Reply::ok(), "set {}", key(i));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn key(i: u64) -> String {
    format!("key{i}")
}

fn value(i: u64, bytes: usize) -> String {
    let mut v = format!("value{i}-");
    while v.len() < bytes {
        v.push(char::from(b'a' + (v.len() as u64 + i) as u8 % 26));
    }
    v
}

/// Checks, from node `id`'s own state (no log, no leader), that it holds
/// every key of `keys` with its value.
async fn holds_every_key(c: &Cluster, id: u64, keys: std::ops::Range<u64>, value_bytes: usize) {
    let h = c.handle(id);
    for i in keys {
        let got = h
            .read(Command::Get(b(&key(i))), ReadMode::Stale)
            .await
            .unwrap();
        assert_eq!(got, bulk(&value(i, value_bytes)), "node {id}, {}", key(i));
    }
}

/// Waits until node `id` has applied every write acknowledged so far: a
/// linearizable read through it is answered only once it has applied up to
/// the leader's commit point.
async fn caught_up(c: &Cluster, id: u64) {
    read(&c.handle(id), Command::Get(b("caught-up"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_compact_the_log_and_a_restart_loads_the_newest() {
    let mut c = Cluster::with("compact", 3, &[1, 2, 3], tiny_snapshots).await;
    let leader = c.leader().await;
    const KEYS: u64 = 600;
    const VALUE_BYTES: usize = 200;
    fill(&c, leader, 0..20, VALUE_BYTES).await;
    // The oldest log segment of each node, before any compaction.
    let first_segments: BTreeMap<u64, String> = (1..=3)
        .map(|id| {
            let wal = c.config(id).data_dir.join("wal");
            (id, files(&wal, "wal-")[0].0.clone())
        })
        .collect();

    fill(&c, leader, 20..KEYS, VALUE_BYTES).await;
    for id in 1..=3 {
        caught_up(&c, id).await;
    }
    for id in 1..=3 {
        let wal = c.config(id).data_dir.join("wal");
        eventually(
            &format!("node {id} snapshots and drops its oldest segments"),
            || async {
                let taken = counter(&c, id, |s| s.snapshots_taken);
                let segments = files(&wal, "wal-");
                let dropped = !segments
                    .iter()
                    .any(|(name, _)| *name == first_segments[&id]);
                (taken >= 2 && c.handle(id).status().log_start > 0 && dropped).then_some(())
            },
        )
        .await;
        let segments = files(&wal, "wal-");
        // A snapshot being written is renamed into place before the oldest
        // one is deleted: wait out that moment.
        let snapshot_dir = c.config(id).data_dir.join("snapshots");
        let snapshots = eventually("retention keeps at most two snapshots", || {
            let found = snapshot_files(&snapshot_dir);
            let kept = found.len() <= 2;
            async move { kept.then_some(found) }
        })
        .await;
        let wal_bytes: u64 = segments.iter().map(|(_, len)| len).sum();
        eprintln!(
            "node {id}: {} snapshots taken, {} kept, {} log segments of {wal_bytes} bytes",
            counter(&c, id, |s| s.snapshots_taken),
            snapshots.len(),
            segments.len(),
        );
        // The log holds about one policy's worth of commands (8 KiB, twice:
        // accepted and chosen) and one segment, not every write.
        let written = KEYS * VALUE_BYTES as u64;
        assert!(
            wal_bytes < written / 2,
            "node {id} keeps {wal_bytes} bytes of log for {written} bytes written: {segments:?}"
        );
        assert!(
            (1..=2).contains(&snapshots.len()),
            "node {id} keeps {snapshots:?}"
        );
    }

    // Every node restarts from its newest snapshot and the log above it.
    let applied_before: BTreeMap<u64, u64> = (1..=3)
        .map(|id| (id, c.handle(id).status().applied_slot))
        .collect();
    for id in 1..=3 {
        c.stop(id).await;
    }
    for id in 1..=3 {
        c.start(id).await;
        let status = c.handle(id).status();
        assert!(status.log_start > 0, "node {id}: {status:?}");
        // Applied from its own files alone: the slots below log_start are
        // gone from every log, and no snapshot was installed from a peer.
        assert!(
            status.applied_slot >= applied_before[&id],
            "node {id} applied {} after its restart, {} before",
            status.applied_slot,
            applied_before[&id]
        );
        assert_eq!(counter(&c, id, |s| s.snapshots_installed), 0);
        holds_every_key(&c, id, 0..KEYS, VALUE_BYTES).await;
    }
    // And the cluster goes on serving, every acknowledged write readable.
    let leader = c.leader().await;
    assert_eq!(
        write_ok(&c.handle(leader), 1, set("after", "restart")).await,
        Reply::ok()
    );
    for id in 1..=3 {
        for i in [0, KEYS / 2, KEYS - 1] {
            assert_eq!(
                read(&c.handle(id), Command::Get(b(&key(i)))).await,
                bulk(&value(i, VALUE_BYTES))
            );
        }
        assert_eq!(
            read(&c.handle(id), Command::Get(b("after"))).await,
            bulk("restart")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    let mut c = Cluster::with("transfer", 3, &[1, 2, 3], tiny_snapshots).await;
    let leader = c.leader().await;
    let lagging = (1..=3).find(|&id| id != leader).unwrap();
    let other = (1..=3).find(|&id| id != leader && id != lagging).unwrap();
    const KEYS: u64 = 300;
    const VALUE_BYTES: usize = 100;
    fill(&c, leader, 0..10, VALUE_BYTES).await;
    caught_up(&c, lagging).await;
    c.stop(lagging).await;

    fill(&c, leader, 10..KEYS, VALUE_BYTES).await;
    let lagging_applied = {
        // What the stopped node holds is below what the others compacted.
        let commit = c.handle(leader).status().commit_slot;
        eventually("the running nodes compact past the stopped one", || async {
            let starts = [leader, other].map(|id| c.handle(id).status().log_start);
            (starts.iter().all(|&s| s > 20)).then_some(())
        })
        .await;
        commit
    };
    let watched = [leader, other];
    let elections = watched.map(|id| counter(&c, id, |s| s.elections));
    let leader_changes = watched.map(|id| counter(&c, id, |s| s.leader_changes));

    c.start(lagging).await;
    eventually("the lagging node installs a snapshot", || async {
        (counter(&c, lagging, |s| s.snapshots_installed) > 0).then_some(())
    })
    .await;
    caught_up(&c, lagging).await;
    eventually("the lagging node reports what it applied", || async {
        (c.handle(lagging).status().applied_slot >= lagging_applied).then_some(())
    })
    .await;
    holds_every_key(&c, lagging, 0..KEYS, VALUE_BYTES).await;
    assert!(counter(&c, lagging, |s| s.transfer_bytes_received) > 0);
    let served: u64 = watched
        .iter()
        .map(|&id| counter(&c, id, |s| s.transfers_served))
        .sum();
    assert!(served >= 1, "no peer reports a transfer served");

    // Nobody noticed: same leader, no election, no leader change.
    assert_eq!(c.leader().await, leader);
    assert_eq!(
        watched.map(|id| counter(&c, id, |s| s.elections)),
        elections,
        "elections on nodes {watched:?}"
    );
    assert_eq!(
        watched.map(|id| counter(&c, id, |s| s.leader_changes)),
        leader_changes,
        "leader changes on nodes {watched:?}"
    );
    // It takes part again: a new write reaches it through the log.
    write_ok(&c.handle(leader), 1, set("later", "1")).await;
    let h = c.handle(lagging);
    eventually("the new write reaches the node that lagged", || async {
        let got = h.read(Command::Get(b("later")), ReadMode::Stale).await;
        (got == Ok(bulk("1"))).then_some(())
    })
    .await;
}

/// Small chunks, a small window and a rate limit, so that a transfer of
/// about 1.5 MB takes a few seconds and can be interrupted; snapshots every
/// 50 entries only.
fn slow_transfers(config: &mut NodeConfig) {
    tiny_snapshots(config);
    config.snapshot.bytes_max = u64::MAX;
    config.transport.snapshot.chunk_bytes_max = 16 << 10;
    config.transport.snapshot.window_chunks = 2;
    config.transport.snapshot.send_bytes_per_sec = 256 << 10;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_snapshot_transfer_resumes_from_its_partial_file() {
    let mut c = Cluster::with("resume", 3, &[1, 2, 3], slow_transfers).await;
    let leader = c.leader().await;
    let lagging = (1..=3).find(|&id| id != leader).unwrap();
    const KEYS: u64 = 1500;
    const VALUE_BYTES: usize = 1000;
    fill(&c, leader, 0..10, VALUE_BYTES).await;
    caught_up(&c, lagging).await;
    c.stop(lagging).await;
    fill(&c, leader, 10..KEYS, VALUE_BYTES).await;
    eventually("the leader compacts past the stopped node", || async {
        (c.handle(leader).status().log_start > 100).then_some(())
    })
    .await;
    // The leader's last snapshot is written, so the one it offers stays the
    // same across the interruption: none is due within 50 slots of the
    // commit point, and none comes after since nothing is written.
    let snapshots = c.config(leader).data_dir.join("snapshots");
    eventually("the leader's last snapshot is written", || async {
        let commit = c.handle(leader).status().commit_slot;
        (newest_snapshot_slot(&snapshots)? + 50 > commit).then_some(())
    })
    .await;
    let other = (1..=3).find(|&id| id != leader && id != lagging).unwrap();
    let watched = [leader, other];
    let leader_changes = watched.map(|id| counter(&c, id, |s| s.leader_changes));

    // Started, the node fetches the leader's snapshot; stop it a part of
    // the way in.
    let incoming = c.config(lagging).data_dir.join("snapshots");
    c.start(lagging).await;
    eventually("a quarter of the snapshot has arrived", || async {
        // incoming-<slot>-<body bytes>-<crc>.part
        let (name, len) = files(&incoming, "incoming-").pop()?;
        let total: u64 = name.split('-').nth(2)?.parse().ok()?;
        (len > total / 4).then_some(())
    })
    .await;
    assert_eq!(
        counter(&c, lagging, |s| s.snapshots_installed),
        0,
        "the transfer is still under way"
    );
    c.stop(lagging).await;
    let partial = files(&incoming, "incoming-");
    assert_eq!(partial.len(), 1, "{partial:?}");
    let had = partial[0].1 - 36; // the partial file's header

    // Started again, it resumes where it stopped.
    c.start(lagging).await;
    eventually("the restarted node installs the snapshot", || async {
        (counter(&c, lagging, |s| s.snapshots_installed) > 0).then_some(())
    })
    .await;
    let stats = c.nodes[&lagging].stats();
    let resumed = stats.transfer_bytes_resumed;
    let received = stats.transfer_bytes_received;
    let installed = snapshot_files(&incoming).pop().unwrap();
    let total = installed.1 - 36;
    eprintln!(
        "snapshot of {total} bytes: {had} bytes before the stop, {resumed} resumed, {received} received after"
    );
    assert_eq!(stats.transfers_resumed, 1);
    assert_eq!(resumed, had, "the partial file was resumed as it was left");
    assert!(received < total, "{received} of {total} bytes sent again");
    assert!(received + resumed >= total);
    assert!(
        files(&incoming, "incoming-").is_empty(),
        "the partial file is gone"
    );
    caught_up(&c, lagging).await;
    holds_every_key(&c, lagging, 0..KEYS, VALUE_BYTES).await;
    // Seconds of transfer, and the heartbeats went on meanwhile.
    assert_eq!(c.leader().await, leader);
    assert_eq!(
        watched.map(|id| counter(&c, id, |s| s.leader_changes)),
        leader_changes,
        "leader changes on nodes {watched:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_stops_the_start_and_names_the_file() {
    let mut c = Cluster::with("damaged", 3, &[1, 2, 3], tiny_snapshots).await;
    let leader = c.leader().await;
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    fill(&c, leader, 0..200, 100).await;
    let dir = c.config(victim).data_dir.join("snapshots");
    eventually("the node has taken a snapshot", || async {
        (counter(&c, victim, |s| s.snapshots_taken) > 0).then_some(())
    })
    .await;
    c.stop(victim).await;
    let (name, _) = snapshot_files(&dir).pop().unwrap();
    let path = dir.join(&name);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let addr = c.members[&victim].clone();
    let listener = TcpListener::bind(&addr).await.unwrap();
    match Node::start(c.config(victim), listener).await {
        Ok(_) => panic!("a node started from a damaged snapshot"),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains(&name), "{text}");
            assert!(text.contains("rejoin"), "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_reports_how_far_each_peer_has_learned_the_log() {
    let c = Cluster::new("lag", 3, &[1, 2, 3]).await;
    let leader = c.leader().await;
    for n in 0..20 {
        write_ok(&c.handle(leader), 1, set(&format!("k{n}"), "v")).await;
    }
    let commit = c.handle(leader).status().commit_slot;
    // Heartbeat acknowledgements carry each follower's commit point.
    eventually("the leader knows every peer's progress", || async {
        let s = c.handle(leader).status();
        s.members
            .iter()
            .all(|m| m.match_slot.is_some_and(|slot| slot >= commit))
            .then_some(())
    })
    .await;
    // A follower reports nothing of the kind: only the leader knows.
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let s = c.handle(follower).status();
    assert!(
        s.members
            .iter()
            .filter(|m| m.id != follower)
            .all(|m| m.match_slot.is_none()),
        "{:?}",
        s.members
    );
}
