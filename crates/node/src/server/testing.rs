//! Test support: a stand-in for the replica task, and a server on a
//! loopback port in front of it.
//!
//! [`FakeNode`] answers the [`NodeHandle`] contract from one local
//! [`Store`], with no log and no peers: writes are applied in arrival order
//! with exactly-once session tags, reads are answered from the store. It
//! can be told to fail every request (as a node without a leader would) or
//! to drop its answers (as a leader that lost its office would). Not meant
//! for production use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Config, serve_clients};
use crate::api::{ConnId, MemberStatus, NodeError, NodeHandle, Op, ReadMode, StatusReport};
use crate::metrics::Metrics;
use kv::{Request, Store};

/// Requests queued to the fake node before senders wait.
const OPS_QUEUE_MAX: usize = 1024;

/// How the fake node misbehaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every read and write is refused with this error; nothing is applied.
    Fail(NodeError),
    /// Writes are applied but their answers are dropped, so the client
    /// hears `UNCERTAIN`; reads are dropped unanswered.
    DropAnswers,
}

/// What the fake node has seen, for tests to wait on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub writes: u64,
    pub reads: u64,
    /// Reads the client allowed to be stale (`READONLY`).
    pub stale_reads: u64,
    /// Connections reported closed.
    pub closed: u64,
}

/// A replica task stand-in; see the module documentation. Stops when
/// dropped.
pub struct FakeNode {
    handle: NodeHandle,
    fault: watch::Sender<Option<Fault>>,
    seen: watch::Receiver<Seen>,
    task: JoinHandle<()>,
}

impl FakeNode {
    /// Starts the fake on the current tokio runtime, as node `id`.
    pub fn spawn(id: u64) -> FakeNode {
        let (ops_tx, ops) = mpsc::channel(OPS_QUEUE_MAX);
        let (status_tx, status) = watch::channel(status_report(id, &Store::new(), 0));
        let (fault, faults) = watch::channel(None);
        let (seen_tx, seen) = watch::channel(Seen::default());
        let (_, stats) = watch::channel(host::HostStats::default());
        let metrics = Arc::new(Metrics::new(status.clone(), stats.clone()));
        let handle = NodeHandle::new(ops_tx, status, stats, metrics);
        let task = tokio::spawn(run(id, ops, faults, status_tx, seen_tx));
        FakeNode {
            handle,
            fault,
            seen,
            task,
        }
    }

    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Makes the node misbehave from the next request on; `None` heals it.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.fault.send_replace(fault);
    }

    pub fn seen(&self) -> Seen {
        self.seen.borrow().clone()
    }

    /// Waits until `condition` holds for what the node has seen; panics
    /// after a generous timeout, with the last value.
    pub async fn wait_until(&self, condition: impl Fn(&Seen) -> bool) -> Seen {
        let mut seen = self.seen.clone();
        let waited =
            tokio::time::timeout(Duration::from_secs(30), seen.wait_for(|s| condition(s))).await;
        match waited {
            Ok(Ok(seen)) => seen.clone(),
            _ => panic!(
                "condition not met; the fake node has seen {:?}",
                self.seen()
            ),
        }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    id: u64,
    mut ops: mpsc::Receiver<Op>,
    faults: watch::Receiver<Option<Fault>>,
    status: watch::Sender<StatusReport>,
    seen: watch::Sender<Seen>,
) {
    let mut store = Store::new();
    let mut index = 0u64;
    // Next sequence number of each connection's session.
    let mut seqs: HashMap<ConnId, u64> = HashMap::new();
    while let Some(op) = ops.recv().await {
        let fault = faults.borrow().clone();
        match op {
            Op::Write {
                conn,
                command,
                reply,
            } => {
                seen.send_modify(|s| s.writes += 1);
                if let Some(Fault::Fail(error)) = fault {
                    let _ = reply.send(Err(error));
                    continue;
                }
                let seq = seqs.entry(conn).or_insert(0);
                *seq += 1;
                index += 1;
                // Answers go back in order, so every earlier seq has been
                // answered: acknowledge them all.
                let request = Request {
                    client: kv::ClientId(conn),
                    seq: kv::Seq(*seq),
                    ack_below: kv::Seq(*seq),
                    command,
                };
                let answer = store.apply(index, &request);
                if fault != Some(Fault::DropAnswers) {
                    let _ = reply.send(Ok(answer));
                }
                status.send_replace(status_report(id, &store, index));
            }
            Op::Read {
                command,
                mode,
                reply,
            } => {
                seen.send_modify(|s| {
                    s.reads += 1;
                    if mode == ReadMode::Stale {
                        s.stale_reads += 1;
                    }
                });
                match fault {
                    Some(Fault::Fail(error)) => {
                        let _ = reply.send(Err(error));
                    }
                    Some(Fault::DropAnswers) => drop(reply),
                    None => {
                        let _ = reply.send(Ok(store.read(&command)));
                    }
                }
            }
            Op::Closed { conn } => {
                seqs.remove(&conn);
                seen.send_modify(|s| s.closed += 1);
            }
            // The stand-in leads alone: it has no membership to change.
            Op::Admin { reply, .. } => {
                let _ = reply.send(Ok(kv::Reply::Error(
                    "ERR the stand-in node has no membership".to_owned(),
                )));
            }
            Op::Snapshot { reply } => {
                let _ = reply.send(Err(NodeError::Busy(
                    "the stand-in node has no snapshots".to_owned(),
                )));
            }
        }
    }
}

fn status_report(id: u64, store: &Store, index: u64) -> StatusReport {
    StatusReport {
        id,
        role: "leader".to_owned(),
        leader_id: Some(id),
        ballot: format!("1.{id}"),
        commit_slot: index,
        applied_slot: index,
        log_start: 0,
        keys: u64::try_from(store.len()).unwrap_or(u64::MAX),
        client_connections: 0,
        client_addr: String::new(),
        http_addr: String::new(),
        data_dir: String::new(),
        version: super::introspection::VERSION.to_owned(),
        cluster_id: String::new(),
        uptime_seconds: 0,
        members: vec![MemberStatus {
            id,
            role: "voter".to_owned(),
            peer_addr: "127.0.0.1:0".to_owned(),
            client_addr: None,
            http_addr: None,
            connected: true,
            match_slot: Some(index),
        }],
        voters: vec![id],
        learners: Vec::new(),
        config_slot: 1,
        rejoining: false,
        rejoin_waiting_for: Vec::new(),
    }
}

/// [`serve_clients`] on a loopback port in front of a [`FakeNode`]. Both
/// stop when this is dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub node: FakeNode,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    /// Starts a server with `config` on the current tokio runtime.
    pub async fn start(config: Config) -> std::io::Result<TestServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let node = FakeNode::spawn(config.node_id);
        let task = tokio::spawn(serve_clients(listener, node.handle(), config));
        Ok(TestServer { addr, node, task })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
