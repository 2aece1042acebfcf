//! The replica task: the tokio shell around the node's [`Host`]. The host
//! decides everything (see the `host` crate); this task carries out what it
//! asks, with real time, real channels, the disk thread and the peers.
//!
//! # One turn of the loop
//!
//! 1. Wait for the first of: a client op, a peer message, a snapshot frame,
//!    a snapshot file outcome, the disk reporting records durable, the next
//!    tick, or the stop signal.
//! 2. Deliver every tick that real time says is due, before anything else:
//!    after a pause (a stalled disk, a stopped process) the replica must see
//!    the time that passed before it serves a read under a lease that may
//!    have run out meanwhile.
//! 3. Hand the event to the host, then more ops and peer messages, up to
//!    `turn_items_max` each, without waiting (ops only while the host's turn
//!    has room).
//! 4. Take the host's effects and carry them out: records to the disk
//!    thread (`super::disk`), messages to the peers, answers to the clients,
//!    snapshot frames to the peers' snapshot links, file operations to the
//!    file threads (`super::snapshots`).
//!
//! The task runs on the node's runtime, beside the client connections and
//! the peer transport, and never waits for the disk: while the disk thread
//! syncs, the task goes on stepping messages and answering writes, and a
//! report that records are durable is one more event of the loop.

use std::sync::Arc;
use std::time::Duration;

use host::files::FileDone;
use host::transfer::SnapshotFrame;
use host::{Effects, Host, HostStats};
use paxos::NodeId;
use paxos::replica::{Message, RecordNo, RoleName};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};

use super::api::{MemberStatus, NodeError, Op, StatusReport};
use super::config::NodeConfig;
use super::datadir::DataDir;
use super::disk::Disk;
use super::snapshots::FileThreads;
use crate::metrics::Metrics;
use crate::net::{Outbox, PeerTable};
use kv::Reply;
use storage::replica::StorageError;

/// Ticks delivered between two turns while catching up after a pause, so
/// that one turn stays small.
const CATCH_UP_TICKS_PER_TURN: u64 = 64;

/// How a client is answered.
pub type Answer = oneshot::Sender<Result<Reply, NodeError>>;

/// What woke the loop.
enum Event {
    /// The disk thread made more records durable.
    Persisted,
    Op(Op),
    Peer(NodeId, Message),
    Frame(NodeId, SnapshotFrame),
    File(FileDone),
    Tick,
    Stop,
}

/// The channels the task serves.
pub struct Channels {
    pub ops: mpsc::Receiver<Op>,
    pub inbound: mpsc::Receiver<(NodeId, Message)>,
    pub frames: mpsc::Receiver<(NodeId, SnapshotFrame)>,
    pub files: mpsc::UnboundedReceiver<FileDone>,
    pub stop: oneshot::Receiver<()>,
}

/// Where the task publishes what it knows.
pub struct Published {
    pub status: watch::Sender<StatusReport>,
    pub stats: watch::Sender<HostStats>,
}

/// Everything the task owns.
pub struct ReplicaTask {
    config: NodeConfig,
    host: Host<Answer>,
    disk: Disk,
    files: FileThreads,
    data_dir: DataDir,
    outbox: Outbox,
    peers: Arc<PeerTable>,
    metrics: Arc<Metrics>,
    published: Published,
    started: Instant,
    /// Ticks delivered since `started`.
    ticks: u64,
    next_publish: Instant,
}

impl ReplicaTask {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: NodeConfig,
        host: Host<Answer>,
        disk: Disk,
        files: FileThreads,
        data_dir: DataDir,
        outbox: Outbox,
        peers: Arc<PeerTable>,
        metrics: Arc<Metrics>,
        published: Published,
    ) -> ReplicaTask {
        let now = Instant::now();
        ReplicaTask {
            config,
            host,
            disk,
            files,
            data_dir,
            outbox,
            peers,
            metrics,
            published,
            started: now,
            ticks: 0,
            next_publish: now,
        }
    }

    /// Runs until stopped, or until storage fails (a replica that cannot
    /// persist must not go on answering).
    pub async fn run(mut self, mut channels: Channels) -> Result<(), StorageError> {
        // The first turn re-applies every chosen entry of the durable log.
        self.carry_out()?;
        info!(
            applied = %self.host.applied(),
            keys = self.host.store().len(),
            "state rebuilt from the log"
        );
        self.publish(true);
        let mut ops_open = true;
        let mut inbound_open = true;
        let mut frames_open = true;
        let mut files_open = true;
        loop {
            let next_tick = self.started
                + Duration::from_millis(self.config.tick_ms.saturating_mul(self.ticks + 1));
            let event = tokio::select! {
                biased;
                _ = &mut channels.stop => Event::Stop,
                failed = &mut self.disk.failed => {
                    let error = failed.unwrap_or(StorageError::Stopped);
                    self.fail_clients();
                    return Err(error);
                }
                changed = self.disk.durable.changed() => match changed {
                    Ok(()) => Event::Persisted,
                    Err(_) => {
                        self.fail_clients();
                        return Err(StorageError::Stopped);
                    }
                },
                () = sleep_until(next_tick) => Event::Tick,
                // Snapshot traffic before client and peer traffic, which is
                // drained in bulk below and would otherwise starve it.
                done = channels.files.recv(), if files_open => match done {
                    Some(done) => Event::File(done),
                    None => { files_open = false; Event::Tick }
                },
                frame = channels.frames.recv(), if frames_open => match frame {
                    Some((from, frame)) => Event::Frame(from, frame),
                    None => { frames_open = false; Event::Tick }
                },
                op = channels.ops.recv(), if ops_open => match op {
                    Some(op) => Event::Op(op),
                    None => { ops_open = false; Event::Tick }
                },
                message = channels.inbound.recv(), if inbound_open => match message {
                    Some((from, message)) => Event::Peer(from, message),
                    None => { inbound_open = false; Event::Tick }
                },
            };
            if let Event::Stop = event {
                return Ok(());
            }
            self.catch_up_ticks()?;
            match event {
                Event::Stop => return Ok(()),
                Event::Op(op) => self.on_op(op),
                Event::Peer(from, message) => self.host.step(from, message),
                Event::Frame(from, frame) => self.host.snapshot_frame(from, frame),
                Event::File(done) => self.host.file_done(done),
                Event::Persisted | Event::Tick => {}
            }
            for _ in 1..self.config.turn_items_max {
                if self.host.turn_full() {
                    break;
                }
                match channels.ops.try_recv() {
                    Ok(op) => self.on_op(op),
                    Err(_) => break,
                }
            }
            for _ in 1..self.config.turn_items_max {
                match channels.inbound.try_recv() {
                    Ok((from, message)) => self.host.step(from, message),
                    Err(_) => break,
                }
            }
            while let Ok(done) = channels.files.try_recv() {
                self.host.file_done(done);
            }
            for _ in 1..self.config.turn_items_max {
                match channels.frames.try_recv() {
                    Ok((from, frame)) => self.host.snapshot_frame(from, frame),
                    Err(_) => break,
                }
            }
            let durable = *self.disk.durable.borrow_and_update();
            self.host.persisted(RecordNo(durable));
            self.carry_out()?;
            self.publish(false);
        }
    }

    /// Delivers every tick due by now.
    fn catch_up_ticks(&mut self) -> Result<(), StorageError> {
        let tick_ms = self.config.tick_ms.max(1);
        let due = (self.started.elapsed().as_millis() / u128::from(tick_ms)) as u64;
        let missed = due.saturating_sub(self.ticks);
        if missed > self.config.election_ticks {
            warn!(
                missed_ticks = missed,
                ms = missed * tick_ms,
                "the node fell behind real time (a pause or a stalled disk); catching up"
            );
        }
        let mut delivered = 0;
        while self.ticks < due {
            self.host.tick();
            self.ticks += 1;
            delivered += 1;
            if delivered % CATCH_UP_TICKS_PER_TURN == 0 {
                self.carry_out()?;
            }
        }
        Ok(())
    }

    fn on_op(&mut self, op: Op) {
        match op {
            Op::Write {
                conn,
                command,
                reply,
            } => self.host.write(conn, command, reply),
            Op::Read {
                command,
                mode,
                reply,
            } => self.host.read(command, mode, reply),
            Op::Closed { conn } => self.host.closed(conn),
        }
    }

    /// Takes the host's effects and carries them out.
    fn carry_out(&mut self) -> Result<(), StorageError> {
        let Effects {
            records,
            records_end,
            send,
            replies,
            frames,
            files,
            applied: _,
            need_client_epoch,
        } = self.host.effects();
        let answer = |replies: Vec<(Answer, Result<Reply, NodeError>)>| {
            for (answer, result) in replies {
                // A closed connection no longer wants its answer.
                let _ = answer.send(result);
            }
        };
        // The disk first, so its sync starts as early as it can.
        if !records.is_empty() && self.disk.write(records, records_end.0).is_err() {
            // The answers report applied entries, chosen whatever becomes
            // of this node's disk.
            answer(replies);
            self.fail_clients();
            return Err(StorageError::Stopped);
        }
        for (to, message) in send {
            self.outbox.send(to, message);
        }
        answer(replies);
        for (to, frame) in frames {
            self.outbox.send_frame(to, frame);
        }
        for op in files {
            self.files.perform(op);
        }
        if need_client_epoch {
            match self.data_dir.next_epoch() {
                Ok(epoch) => self.host.client_epoch(epoch),
                Err(e) => error!(error = %e, "cannot start a new epoch of client sessions"),
            }
        }
        Ok(())
    }

    /// The disk failed: every waiting client hears so before the task ends.
    fn fail_clients(&mut self) {
        self.host.disk_failed();
        for (answer, result) in self.host.effects().replies {
            let _ = answer.send(result);
        }
    }

    /// Publishes the status, at most once a tick unless `now`.
    fn publish(&mut self, now: bool) {
        let instant = Instant::now();
        if !now && instant < self.next_publish {
            return;
        }
        self.next_publish = instant + self.config.tick();
        let status = self.host.status();
        let peers = self.peers.snapshot();
        let progress: std::collections::BTreeMap<u64, u64> = self
            .host
            .peer_progress()
            .into_iter()
            .map(|(id, slot)| (id, slot.0))
            .collect();
        let me = self.config.id;
        let members = self
            .config
            .members
            .iter()
            .map(|(&id, addr)| {
                let peer = peers.get(&id);
                MemberStatus {
                    id,
                    peer_addr: addr.clone(),
                    client_addr: if id == me {
                        Some(self.config.client_addr.clone())
                    } else {
                        peer.and_then(|p| p.client_addr.clone())
                    },
                    http_addr: if id == me {
                        Some(self.config.http_addr.clone())
                    } else {
                        peer.and_then(|p| p.http_addr.clone())
                    },
                    connected: id == me || peer.is_some_and(|p| p.outbound),
                    match_slot: if id == me {
                        Some(status.commit.0)
                    } else {
                        progress.get(&id).copied()
                    },
                }
            })
            .collect();
        let role = match status.role {
            RoleName::Leader => "leader",
            RoleName::Follower => "follower",
            RoleName::PreCandidate | RoleName::Candidate => "candidate",
            RoleName::Learner => "learner",
            RoleName::Removed => "removed",
        };
        let open = status.commit + 1;
        let in_force = self.host.configs().at(open);
        let config_slot = self.host.configs().governing_from(open);
        let report = StatusReport {
            id: me,
            role: role.to_owned(),
            leader_id: status.leader,
            ballot: status.promised.to_string(),
            commit_slot: status.commit.0,
            applied_slot: self.host.applied().0,
            log_start: status.log_start.0,
            keys: self.host.store().len() as u64,
            client_connections: u64::try_from(self.metrics.client_connections_open.get())
                .unwrap_or(0),
            client_addr: self.config.client_addr.clone(),
            http_addr: self.config.http_addr.clone(),
            data_dir: self.data_dir.root().display().to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            members,
            voters: in_force.voters().collect(),
            learners: in_force.learners().collect(),
            config_slot: config_slot.0,
        };
        self.published.status.send_if_modified(|current| {
            if *current == report {
                false
            } else {
                *current = report;
                true
            }
        });
        let stats = self.host.stats();
        self.published.stats.send_if_modified(|current| {
            if current == stats {
                false
            } else {
                *current = stats.clone();
                true
            }
        });
    }
}
