//! What the rest of the process may ask of the replica task.
//!
//! Client connections, the HTTP server and tests hold a [`NodeHandle`]. It is
//! cheap to clone; every call goes through one bounded channel to the task
//! that owns the replica, so a slow replica pushes back on its clients
//! instead of queueing without limit.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;
use crate::snapshots::DiskSnapshots;
use host::HostStats;
use host::transfer::SnapshotId;
use kv::{Command, Reply};

pub use host::{ConnId, NodeError, ReadMode};

/// One request from a client connection to the replica task.
#[derive(Debug)]
pub enum Op {
    /// A command that goes through the log (writes, `EXEC`). Replied to once
    /// it is chosen and applied.
    Write {
        conn: ConnId,
        command: Command,
        reply: oneshot::Sender<Result<Reply, NodeError>>,
    },
    /// A read-only command (see [`Command::is_read_only`]).
    Read {
        command: Command,
        mode: ReadMode,
        reply: oneshot::Sender<Result<Reply, NodeError>>,
    },
    /// The connection closed: its session may be retired once its last
    /// write is answered.
    Closed { conn: ConnId },
    /// A request about the membership (`PAXOS ...`).
    Admin {
        request: Admin,
        reply: oneshot::Sender<Result<Reply, AdminRefusal>>,
    },
    /// A snapshot on disk of the applied slot or a later one, for a backup
    /// (`PAXOS BACKUP`): answered once it is durable.
    Snapshot {
        reply: oneshot::Sender<Result<SnapshotId, NodeError>>,
    },
}

/// What an operator asks of the parliament.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admin {
    /// Every member, its role, addresses and progress.
    Members,
    /// A change of membership; answered once it is chosen.
    Change(paxos::replica::Change),
    /// Hand the leadership to this voter; answered once it leads.
    Transfer(paxos::NodeId),
}

/// Why the replica task did not answer an [`Admin`] request itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminRefusal {
    /// Only the leader can; this is the leader as far as this node knows
    /// (its id and client address), if any.
    NotLeader(Option<(paxos::NodeId, String)>),
}

/// A member of the cluster as this node knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    /// `voter` or `learner`, in the newest membership.
    #[serde(default)]
    pub role: String,
    /// Peer (replication) address.
    pub peer_addr: String,
    /// Client (RESP) and HTTP addresses, once the member has told us.
    pub client_addr: Option<String>,
    pub http_addr: Option<String>,
    /// This node has a live peer connection to the member (always true for
    /// itself).
    pub connected: bool,
    /// The highest slot the member is known to have accepted or learned,
    /// when this node leads; lag is the leader's commit minus this.
    pub match_slot: Option<u64>,
}

/// The node's view of itself, published after every step of the replica
/// task and served as JSON on `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StatusReport {
    pub id: u64,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: String,
    pub leader_id: Option<u64>,
    /// The highest ballot promised, as `round.node`.
    pub ballot: String,
    pub commit_slot: u64,
    pub applied_slot: u64,
    pub log_start: u64,
    pub keys: u64,
    pub client_connections: u64,
    pub client_addr: String,
    pub http_addr: String,
    pub data_dir: String,
    pub version: String,
    /// The cluster this node belongs to (`crate::cluster::ClusterId`).
    #[serde(default)]
    pub cluster_id: String,
    pub uptime_seconds: u64,
    pub members: Vec<MemberStatus>,
    /// The voters and learners of the membership in force (the log's, which
    /// governs the first slot not known chosen), and the first slot it
    /// governs.
    #[serde(default)]
    pub voters: Vec<u64>,
    #[serde(default)]
    pub learners: Vec<u64>,
    #[serde(default)]
    pub config_slot: u64,
    /// The node lost its state (or was started with `--rejoin`) and does not
    /// vote until the rejoin completes; it waits for these members to
    /// answer (empty once all did).
    #[serde(default)]
    pub rejoining: bool,
    #[serde(default)]
    pub rejoin_waiting_for: Vec<u64>,
}

/// A cheap, clonable handle on the replica task.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    ops: mpsc::Sender<Op>,
    status: watch::Receiver<StatusReport>,
    stats: watch::Receiver<HostStats>,
    metrics: Arc<Metrics>,
    /// The node's snapshot files, which backups read; none in tests that
    /// have no data directory.
    snapshots: Option<DiskSnapshots>,
}

impl NodeHandle {
    /// Wraps the channel ends the replica task serves.
    pub fn new(
        ops: mpsc::Sender<Op>,
        status: watch::Receiver<StatusReport>,
        stats: watch::Receiver<HostStats>,
        metrics: Arc<Metrics>,
    ) -> NodeHandle {
        NodeHandle {
            ops,
            status,
            stats,
            metrics,
            snapshots: None,
        }
    }

    /// The handle of a node whose snapshot files are `snapshots`.
    pub(crate) fn with_snapshots(mut self, snapshots: DiskSnapshots) -> NodeHandle {
        self.snapshots = Some(snapshots);
        self
    }

    /// The node's snapshot files, if it has a data directory.
    pub(crate) fn snapshots(&self) -> Option<&DiskSnapshots> {
        self.snapshots.as_ref()
    }

    /// Sends `command` through the log; the reply once it is applied.
    pub async fn write(&self, conn: ConnId, command: Command) -> Result<Reply, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Write {
            conn,
            command,
            reply,
        })
        .await?;
        answer.await.unwrap_or(Err(NodeError::Uncertain))
    }

    /// Answers a read-only command as `mode` allows.
    pub async fn read(&self, command: Command, mode: ReadMode) -> Result<Reply, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Read {
            command,
            mode,
            reply,
        })
        .await?;
        // A read that lost its answer changed nothing: safe to report busy.
        answer
            .await
            .unwrap_or_else(|_| Err(NodeError::Busy("the node is shutting down".to_owned())))
    }

    /// Tells the replica task that a connection closed.
    pub async fn closed(&self, conn: ConnId) {
        // Nothing to do if the task is gone: the process is stopping.
        let _ = self.ops.send(Op::Closed { conn }).await;
    }

    /// Queues an op; waits while the channel is full (backpressure).
    pub async fn send(&self, op: Op) -> Result<(), NodeError> {
        self.ops
            .send(op)
            .await
            .map_err(|_| NodeError::Busy("the node is shutting down".to_owned()))
    }

    /// The latest status the replica task published.
    pub fn status(&self) -> StatusReport {
        self.status.borrow().clone()
    }

    /// What the replica task has counted, as of its latest status.
    pub fn stats(&self) -> HostStats {
        self.stats.borrow().clone()
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}
