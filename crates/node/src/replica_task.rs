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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use host::files::FileDone;
use host::transfer::SnapshotFrame;
use host::{Effects, Host, HostStats};
use paxos::NodeId;
use paxos::replica::{Change, Configs, Message, RecordNo, RoleName, Slot};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{error, info, warn};

use super::api::{Admin, AdminRefusal, MemberStatus, NodeError, Op, StatusReport};
use super::cluster::{self, Addrs, ClusterFile};
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

/// How an operator's request is answered.
type AdminAnswer = oneshot::Sender<Result<Reply, AdminRefusal>>;

/// What an operator's request waits for before it is answered.
enum Goal {
    /// The change is chosen.
    Chosen(Change),
    /// This voter leads.
    Leads(NodeId),
}

/// An operator's request waiting for its effect.
struct AdminWait {
    goal: Goal,
    /// The tick after which it is answered with an error.
    until: u64,
    reply: AdminAnswer,
}

/// A backup waiting for a snapshot of at least `slot` to be durable.
struct SnapshotWait {
    slot: Slot,
    /// Failed saves counted when it was asked: one more fails it.
    failures: u64,
    /// The tick after which it is answered with an error.
    until: u64,
    reply: oneshot::Sender<Result<host::transfer::SnapshotId, NodeError>>,
}

/// How long a backup may wait for its snapshot to be written: a store of
/// many gigabytes takes minutes.
const SNAPSHOT_WAIT_MS: u64 = 30 * 60 * 1000;

/// What the task knows of where the members are.
struct Membership {
    /// `DIR/cluster`.
    file: ClusterFile,
    /// Every address known: the file's, then the log's.
    book: BTreeMap<NodeId, Addrs>,
    /// The memberships the book was built from (their first slots).
    seen: Vec<Slot>,
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
    membership: Membership,
    admin: Vec<AdminWait>,
    snapshot_waits: Vec<SnapshotWait>,
    /// When the log last said what a rejoin waits for.
    rejoin_reported: Option<Instant>,
}

/// How often a rejoin that waits says so in the log.
const REJOIN_REPORT_EVERY: Duration = Duration::from_secs(10);

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
        file: ClusterFile,
    ) -> ReplicaTask {
        let now = Instant::now();
        let membership = Membership {
            file,
            book: BTreeMap::new(),
            seen: Vec::new(),
        };
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
            membership,
            admin: Vec::new(),
            snapshot_waits: Vec::new(),
            rejoin_reported: None,
        }
    }

    /// Runs until stopped, or until storage fails (a replica that cannot
    /// persist must not go on answering).
    pub async fn run(mut self, mut channels: Channels) -> Result<(), StorageError> {
        // The first turn re-applies every chosen entry of the durable log.
        self.carry_out()?;
        self.follow_membership();
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
            Op::Admin { request, reply } => self.on_admin(request, reply),
            Op::Snapshot { reply } => {
                let role = self.host.status().role;
                if role == RoleName::Removed {
                    let _ = reply.send(Err(NodeError::Removed));
                    return;
                }
                let slot = self.host.want_snapshot();
                info!(%slot, "a snapshot was asked for (a backup)");
                self.snapshot_waits.push(SnapshotWait {
                    slot,
                    failures: self.host.stats().snapshot_failures,
                    until: self.ticks + SNAPSHOT_WAIT_MS.div_ceil(self.config.tick_ms.max(1)),
                    reply,
                });
            }
        }
    }

    /// Answers the backups whose snapshot is durable, or failed.
    fn check_snapshot_waits(&mut self) {
        if self.snapshot_waits.is_empty() {
            return;
        }
        let latest = self.host.latest_snapshot();
        let failures = self.host.stats().snapshot_failures;
        let now = self.ticks;
        let mut waiting = Vec::new();
        for wait in std::mem::take(&mut self.snapshot_waits) {
            if let Some(id) = latest.filter(|id| id.slot >= wait.slot) {
                let _ = wait.reply.send(Ok(id));
            } else if failures > wait.failures {
                let _ = wait.reply.send(Err(NodeError::Busy(
                    "the snapshot for the backup could not be saved (the node's log says why)"
                        .to_owned(),
                )));
            } else if now > wait.until {
                let _ = wait.reply.send(Err(NodeError::Busy(
                    "the snapshot for the backup was not written in time".to_owned(),
                )));
            } else {
                waiting.push(wait);
            }
        }
        self.snapshot_waits = waiting;
    }

    // ----- membership --------------------------------------------------------

    /// Keeps the peer links, the address book and what joining nodes are
    /// told in step with the memberships the log holds.
    fn follow_membership(&mut self) {
        let configs = self.host.configs();
        // Called every turn: compare without allocating.
        let firsts = || configs.entries().iter().map(|(from, _)| *from);
        if firsts().eq(self.membership.seen.iter().copied()) {
            return;
        }
        let seen: Vec<Slot> = firsts().collect();
        let book = cluster::address_book(&self.membership.file, configs);
        let peers: BTreeMap<NodeId, String> = book
            .iter()
            .filter(|(id, _)| configs.entries().iter().any(|(_, m)| m.is_member(**id)))
            .map(|(&id, addrs)| (id, addrs.peer.clone()))
            .collect();
        self.outbox.set_peers(&peers);
        self.peers.set_directory(cluster::directory(
            &self.membership.file,
            configs,
            self.config.id,
        ));
        let latest = configs.latest();
        info!(
            voters = ?latest.voters().collect::<Vec<_>>(),
            learners = ?latest.learners().collect::<Vec<_>>(),
            from_slot = %configs.latest_from(),
            "membership"
        );
        self.membership.book = book;
        self.membership.seen = seen;
    }

    /// The client address of member `id`, if known. A member listening on
    /// every interface (0.0.0.0 or [::]) is reached at its peer address's
    /// host.
    fn client_addr_of(&self, id: NodeId) -> Option<String> {
        if id == self.config.id {
            return Some(self.config.client_addr.clone());
        }
        let addr = self
            .membership
            .book
            .get(&id)
            .map(|a| a.client.clone())
            .filter(|a| !a.is_empty())
            .or_else(|| {
                self.peers
                    .snapshot()
                    .get(&id)
                    .and_then(|p| p.client_addr.clone())
            })?;
        let (host, port) = addr.rsplit_once(':')?;
        if !matches!(host, "0.0.0.0" | "[::]" | "::" | "") {
            return Some(addr);
        }
        let peer = &self.membership.book.get(&id)?.peer;
        let (peer_host, _) = peer.rsplit_once(':')?;
        Some(format!("{peer_host}:{port}"))
    }

    fn on_admin(&mut self, request: Admin, reply: AdminAnswer) {
        let status = self.host.status();
        if status.role != RoleName::Leader {
            let leader = status.leader.filter(|&l| l != self.config.id);
            let addr = leader.and_then(|l| self.client_addr_of(l).map(|addr| (l, addr)));
            let answer = match (leader, addr) {
                (None, _) if request == Admin::Members => Ok(self.members_reply()),
                (Some(l), None) => Ok(Reply::Error(format!(
                    "TRYAGAIN node {l} leads, but its client address is not known here yet; \
                     retry, or ask node {l}"
                ))),
                (_, addr) => Err(AdminRefusal::NotLeader(addr)),
            };
            let _ = reply.send(answer);
            return;
        }
        let (result, goal, ms) = match request {
            Admin::Members => {
                let _ = reply.send(Ok(self.members_reply()));
                return;
            }
            Admin::Change(change) => (
                self.host.propose_change(change.clone()),
                Goal::Chosen(change),
                self.config.write_timeout_ms,
            ),
            Admin::Transfer(to) => (
                self.host.transfer_leadership(to),
                Goal::Leads(to),
                // The hand-over is abandoned after an election timeout;
                // the new leader then needs one more to be known.
                self.config.tick_ms * self.config.election_ticks * 4,
            ),
        };
        match result {
            Ok(()) => self.admin.push(AdminWait {
                goal,
                until: self.ticks + ms.div_ceil(self.config.tick_ms.max(1)),
                reply,
            }),
            Err(e) => {
                let _ = reply.send(Ok(Reply::Error(format!("ERR {e}"))));
            }
        }
    }

    /// Answers the operators' requests whose effect is seen, or whose time
    /// ran out.
    fn check_admin(&mut self) {
        if self.admin.is_empty() {
            return;
        }
        let configs = self.host.configs();
        let leader = self.host.status().leader;
        let now = self.ticks;
        let mut waiting = Vec::new();
        for wait in std::mem::take(&mut self.admin) {
            let done = match &wait.goal {
                Goal::Chosen(change) => is_made(configs, change),
                Goal::Leads(to) => leader == Some(*to),
            };
            if done {
                let _ = wait.reply.send(Ok(Reply::ok()));
            } else if now > wait.until {
                let text = match &wait.goal {
                    Goal::Chosen(change) => format!(
                        "ERR the change ({change}) was proposed but is not known chosen yet; \
                         check PAXOS MEMBERS before trying again"
                    ),
                    Goal::Leads(to) => format!(
                        "ERR node {to} did not take the leadership in time (it must be a \
                         connected, caught-up voter); check PAXOS MEMBERS"
                    ),
                };
                let _ = wait.reply.send(Ok(Reply::Error(text)));
            } else {
                waiting.push(wait);
            }
        }
        self.admin = waiting;
    }

    /// `PAXOS MEMBERS`: one entry per member of the newest membership.
    fn members_reply(&self) -> Reply {
        let configs = self.host.configs();
        let latest = configs.latest();
        let status = self.host.status();
        let progress: BTreeMap<NodeId, Slot> = self.host.peer_progress().into_iter().collect();
        let peers = self.peers.snapshot();
        let me = self.config.id;
        let bulk = |s: &str| Reply::Bulk(bytes::Bytes::copy_from_slice(s.as_bytes()));
        let entries = latest
            .members
            .iter()
            .map(|(&id, member)| {
                let peer_addr = self.membership.book.get(&id).map(|a| a.peer.clone());
                let match_slot = if id == me {
                    Some(status.commit)
                } else {
                    progress.get(&id).copied()
                };
                let connected =
                    id == me || peers.get(&id).is_some_and(|p| p.outbound || p.inbound > 0);
                Reply::Array(vec![
                    bulk("id"),
                    Reply::Integer(id as i64),
                    bulk("role"),
                    bulk(role_name(member)),
                    bulk("peer_addr"),
                    bulk(&peer_addr.unwrap_or_default()),
                    bulk("client_addr"),
                    bulk(&self.client_addr_of(id).unwrap_or_default()),
                    bulk("match_slot"),
                    match_slot.map_or(Reply::Nil, |s| Reply::Integer(s.0 as i64)),
                    bulk("connected"),
                    bulk(if connected { "yes" } else { "no" }),
                ])
            })
            .collect();
        Reply::Array(entries)
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

    /// Says in the log, every so often, what a rejoin waits for: a rejoin
    /// needs every other member to answer, so one that waits long is
    /// usually one the operator must act on.
    fn report_rejoin(&mut self, waiting: Option<&[NodeId]>) {
        let Some(waiting) = waiting else {
            self.rejoin_reported = None;
            return;
        };
        let now = Instant::now();
        if self
            .rejoin_reported
            .is_some_and(|at| now < at + REJOIN_REPORT_EVERY)
        {
            return;
        }
        if self.rejoin_reported.is_some() {
            if waiting.is_empty() {
                info!(
                    "still rejoining: every member answered; waiting for a leader above the \
                     ballots this node may have voted in, and for the log up to its term"
                );
            } else {
                warn!(
                    ?waiting,
                    "still rejoining: a rejoin needs an answer from every other member, and \
                     these have not answered (down, unreachable, or rejoining themselves). \
                     Bring them up; if more than one member lost its state, see \
                     docs/recovery.md"
                );
            }
        }
        self.rejoin_reported = Some(now);
    }

    /// Publishes the status, at most once a tick unless `now`.
    fn publish(&mut self, now: bool) {
        self.follow_membership();
        self.check_admin();
        self.check_snapshot_waits();
        let instant = Instant::now();
        if !now && instant < self.next_publish {
            return;
        }
        self.next_publish = instant + self.config.tick();
        let status = self.host.status();
        let rejoin = self.host.rejoin_waiting_for();
        let peers = self.peers.snapshot();
        let progress: std::collections::BTreeMap<u64, u64> = self
            .host
            .peer_progress()
            .into_iter()
            .map(|(id, slot)| (id, slot.0))
            .collect();
        let me = self.config.id;
        let latest = self.host.configs().latest();
        let members = latest
            .members
            .iter()
            .map(|(&id, member)| {
                let peer = peers.get(&id);
                MemberStatus {
                    id,
                    role: role_name(member).to_owned(),
                    peer_addr: self
                        .membership
                        .book
                        .get(&id)
                        .map(|a| a.peer.clone())
                        .unwrap_or_default(),
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
            cluster_id: self
                .membership
                .file
                .id
                .map_or_else(String::new, |id| id.to_string()),
            uptime_seconds: self.started.elapsed().as_secs(),
            members,
            voters: in_force.voters().collect(),
            learners: in_force.learners().collect(),
            config_slot: config_slot.0,
            rejoining: rejoin.is_some(),
            rejoin_waiting_for: rejoin.clone().unwrap_or_default(),
        };
        self.peers.set_rejoining(rejoin.is_some());
        self.report_rejoin(rejoin.as_deref());
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

/// `voter` or `learner`, as `PAXOS MEMBERS` and `/status` say it.
fn role_name(member: &paxos::replica::Member) -> &'static str {
    if member.role == paxos::replica::MemberRole::Voter {
        "voter"
    } else {
        "learner"
    }
}

/// Whether the membership `change` asks for is the newest one.
fn is_made(configs: &Configs, change: &Change) -> bool {
    let latest = configs.latest();
    match change {
        Change::Add { id, .. } => latest.is_member(*id),
        Change::Promote { id } => latest.is_voter(*id),
        Change::Remove { id } => latest.retired.contains(id),
        Change::Replace { old, .. } => latest.retired.contains(old),
    }
}
