//! The host of a parliament replica: everything between the Multi-Paxos
//! core (`paxos::replica`) and the world, with no I/O, no clock and no
//! threads. The node runs it inside a tokio task; the simulator runs the
//! same code under its simulated disks, network and clocks, so every
//! simulated seed exercises what runs in production.
//!
//! A [`Host`] owns the replica, the key-value store it replicates, the
//! sessions of its clients and their pending answers, the messages that
//! wait for their records to be durable, the snapshot policy, and both ends
//! of snapshot transfers ([`transfer`]).
//!
//! # Inputs
//!
//! | input | from |
//! |---|---|
//! | [`Host::tick`] | the clock: one tick of the replica's logical time |
//! | [`Host::step`] | a peer's message |
//! | [`Host::write`], [`Host::read`], [`Host::closed`] | a client connection |
//! | [`Host::persisted`] | the disk: records up to a number are durable |
//! | [`Host::snapshot_frame`] | a peer's snapshot transfer frame |
//! | [`Host::file_done`] | the outcome of a snapshot file operation |
//! | [`Host::client_epoch`] | a fresh epoch of client ids, made durable |
//! | [`Host::disk_failed`] | the disk cannot write the log any more |
//!
//! # Effects
//!
//! [`Host::effects`] ends a turn (after any number of inputs) and returns
//! what the shell must do, as [`Effects`]: records to append durably (and
//! report with [`Host::persisted`]), messages to send now, answers to
//! clients, snapshot frames to send and snapshot file operations to carry
//! out (through [`files::perform`]). Messages that report promises and
//! acceptances are held here until the disk reports their records durable,
//! then come out as messages to send; no shell decides that on its own.
//!
//! # The order of a turn
//!
//! The replica's `Ready` is carried out as its contract says: its records go
//! to the shell for the disk; its messages that may leave at once go out,
//! the others wait here; chosen entries are applied to the store in slot
//! order and the writes they carry are answered with the store's own reply;
//! then reads whose index is applied are answered from the store.

mod clients;
pub mod cluster;
mod config;
pub mod files;
mod snapshots;
mod stats;
pub mod transfer;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use bytes::Bytes;
use kv::{ClientId, Command, Reply, Request, Seq, Store};
use paxos::NodeId;
use paxos::replica::{
    Change, ChangeError, Config as PaxosConfig, ConfigError, Configs, Durable, Message,
    ProposeError, Ready, Record, RecordNo, Replica, RoleName, Slot, Status, Value,
};
use tracing::{debug, info, warn};

pub use clients::{CLIENT_EPOCH_MAX, ClientIds, ConnId};
pub use config::{Flaw, HostConfig, SnapshotPolicy, TransferConfig};
pub use stats::{BATCH_COMMANDS, Buckets, HostStats};

use clients::{Clients, PendingRead, PendingWrite, Session};
use files::FileOp;
use snapshots::Snapshots;
use transfer::{SnapshotFrame, SnapshotId};

/// How a read may be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Linearizable: under the leader's lease, else after a read-index round.
    Linearizable,
    /// From this node's applied state, possibly stale. Only when the client
    /// asked for it (`READONLY`).
    Stale,
}

/// Why the node could not give an answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// No leader is known, or none can be reached: the command was not
    /// applied. Safe to retry.
    #[error("CLUSTERDOWN no leader is known; retry shortly")]
    ClusterDown,
    /// The command was handed on but no answer came back: it may or may not
    /// have taken effect. Never reported as a failure.
    #[error(
        "UNCERTAIN the leader changed before confirming; the write may or may not have taken effect"
    )]
    Uncertain,
    /// The node is overloaded or shutting down; the command was not applied.
    #[error("BUSY {0}")]
    Busy(String),
    /// The node was removed from the cluster's membership: it serves no
    /// client any more. The command was not applied.
    #[error("REMOVED this node was removed from the cluster; use another member")]
    Removed,
}

/// Why a host cannot start from what is on disk.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the snapshot's membership record cannot be read: {0}")]
    Membership(codec::DecodeError),
}

/// The memberships a snapshot's store carries; `None` for a snapshot from
/// before membership changes existed (its cluster kept its founders).
fn snapshot_configs(store: &Store) -> Result<Option<Configs>, codec::DecodeError> {
    if store.cluster().is_empty() {
        return Ok(None);
    }
    cluster::decode(store.cluster()).map(Some)
}

/// Why nothing more is taken once the disk failed.
fn disk_lost() -> NodeError {
    NodeError::Busy("the node cannot write its log".to_owned())
}

/// The index the store sees for command `i` of `slot`: strictly increasing
/// along the log, as [`Store::apply`] requires. `None` for a position that
/// has no index (more commands in a slot, or more slots, than the scheme
/// holds); such a command is skipped, identically on every replica.
pub fn store_index(slot: Slot, i: usize) -> Option<u64> {
    if i >= 1 << 16 || slot.0 >= 1 << 48 {
        return None;
    }
    Some((slot.0 << 16) | i as u64)
}

/// What the shell must do after a turn; see the module notes.
#[derive(Debug)]
pub struct Effects<T> {
    /// Records to make durable, after every record handed out before them;
    /// once records up to `records_end` are, call [`Host::persisted`].
    pub records: Vec<Record>,
    pub records_end: RecordNo,
    /// Messages to send now.
    pub send: Vec<(NodeId, Message)>,
    /// Answers to clients.
    pub replies: Vec<(T, Result<Reply, NodeError>)>,
    /// Snapshot transfer frames to send, on a link of their own.
    pub frames: Vec<(NodeId, SnapshotFrame)>,
    /// Snapshot file operations, in order (see [`files`]).
    pub files: Vec<FileOp>,
    /// Every slot applied, when [`HostConfig::report_applied`] is set.
    pub applied: Vec<(Slot, Value)>,
    /// The client ids of this epoch are used up: make a fresh epoch durable
    /// and hand it over with [`Host::client_epoch`].
    pub need_client_epoch: bool,
}

impl<T> Default for Effects<T> {
    fn default() -> Self {
        Effects {
            records: Vec::new(),
            records_end: RecordNo::ZERO,
            send: Vec::new(),
            replies: Vec::new(),
            frames: Vec::new(),
            files: Vec::new(),
            applied: Vec::new(),
            need_client_epoch: false,
        }
    }
}

impl<T> Effects<T> {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.send.is_empty()
            && self.replies.is_empty()
            && self.frames.is_empty()
            && self.files.is_empty()
            && self.applied.is_empty()
            && !self.need_client_epoch
    }
}

/// One replica and everything around it; see the module notes. `T` is how
/// the shell finds a client again to answer it (a channel, an id).
pub struct Host<T> {
    config: HostConfig,
    replica: Replica,
    store: Store,
    /// The last slot applied to `store`.
    applied: Slot,
    /// The last record the shell reported durable.
    ///
    /// Invariant: at most `handed`.
    durable: RecordNo,
    /// The last record handed to the shell.
    handed: RecordNo,
    /// Messages that wait for records up to the number given to be durable.
    held: VecDeque<(RecordNo, NodeId, Message)>,
    clients: Clients<T>,
    client_ids: ClientIds,
    /// Ticks delivered.
    now: u64,
    next_sweep: u64,
    sweep_now: bool,
    /// Request bytes proposed since the last `effects`.
    turn_bytes: usize,
    leader: Option<NodeId>,
    role: RoleName,
    snapshots: Snapshots,
    stats: HostStats,
    out: Effects<T>,
    /// The disk failed: nothing more is taken.
    failed: bool,
}

impl<T> Host<T> {
    /// A host for the replica restarted from `durable`, whose store starts
    /// from `snapshot` (the newest on disk, if any) and hands out client ids
    /// of `client_epoch`, which the shell has made durable. A log marked as
    /// rejoining restores as a learner. The first [`Host::effects`] applies
    /// again every chosen entry of the durable log above the snapshot.
    /// `joined` are the memberships a node that joined a running cluster
    /// was told, used when no snapshot carries any (otherwise the founding
    /// one, from `paxos.members`, governs from the first slot).
    pub fn restore(
        config: HostConfig,
        paxos: PaxosConfig,
        durable: Durable,
        snapshot: Option<(SnapshotId, Store)>,
        client_epoch: u64,
        joined: Option<Configs>,
    ) -> Result<Host<T>, RestoreError> {
        let (latest, store) = match snapshot {
            Some((id, store)) => (Some(id), store),
            None => (None, Store::new()),
        };
        let applied = latest.map_or(Slot::ZERO, |id| id.slot);
        let id = paxos.id;
        let configs = snapshot_configs(&store)
            .map_err(RestoreError::Membership)?
            .or(joined);
        let replica = Replica::restore(paxos, durable, applied, configs)?;
        let role = replica.status().role;
        let snapshots = Snapshots::new(config.snapshot, config.transfer, latest);
        Ok(Host {
            config,
            replica,
            store,
            applied,
            durable: RecordNo::ZERO,
            handed: RecordNo::ZERO,
            held: VecDeque::new(),
            clients: Clients::starting_reads_at(client_epoch << 32),
            client_ids: ClientIds::new(id, Some(client_epoch)),
            now: 0,
            next_sweep: 0,
            sweep_now: false,
            turn_bytes: 0,
            leader: None,
            role,
            snapshots,
            stats: HostStats::default(),
            out: Effects::default(),
            failed: false,
        })
    }

    // ----- views -----------------------------------------------------------

    /// The replica's role and progress.
    pub fn status(&self) -> Status {
        self.replica.status()
    }

    /// The last slot applied to the store.
    /// While the replica rejoins: the peers it still waits to hear from
    /// (see `paxos::replica::Replica::rejoin_waiting_for`).
    pub fn rejoin_waiting_for(&self) -> Option<Vec<NodeId>> {
        self.replica.rejoin_waiting_for()
    }

    pub fn applied(&self) -> Slot {
        self.applied
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// On a leader: how far each peer has learned the log.
    pub fn peer_progress(&self) -> Vec<(NodeId, Slot)> {
        self.replica.peer_progress()
    }

    pub fn stats(&self) -> &HostStats {
        &self.stats
    }

    /// The newest snapshot this node holds (and serves to peers).
    pub fn latest_snapshot(&self) -> Option<SnapshotId> {
        self.snapshots.latest()
    }

    /// Every membership the replica knows of, and the first slot each
    /// governs.
    pub fn configs(&self) -> &Configs {
        self.replica.configs()
    }

    /// Proposes a change of membership (on the leader; see
    /// [`Replica::propose_change`]).
    pub fn propose_change(&mut self, change: Change) -> Result<(), ChangeError> {
        if self.failed {
            return Err(ChangeError::Refused(
                "this node cannot write its log".to_owned(),
            ));
        }
        self.replica.propose_change(change)
    }

    /// Hands the leadership to voter `to` (on the leader; see
    /// [`Replica::transfer_leadership`]).
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), ChangeError> {
        self.replica.transfer_leadership(to)
    }

    /// Ticks delivered so far.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Enough was proposed this turn: the shell should take
    /// [`Host::effects`] before it hands over more client requests.
    pub fn turn_full(&self) -> bool {
        self.turn_bytes >= self.config.turn_proposal_bytes_max
    }

    // ----- inputs ------------------------------------------------------------

    /// One tick of the replica's clock.
    pub fn tick(&mut self) {
        if self.failed {
            return;
        }
        self.now += 1;
        self.replica.tick();
        self.snapshots_tick();
    }

    /// A message from peer `from`.
    pub fn step(&mut self, from: NodeId, message: Message) {
        if self.failed {
            return;
        }
        self.replica.step(from, message);
    }

    /// The disk made every record up to `up_to` durable: the replica hears
    /// so, and the messages that waited for them may leave. A report of
    /// records never handed out counts only up to those that were.
    pub fn persisted(&mut self, up_to: RecordNo) {
        let up_to = up_to.min(self.handed);
        if up_to <= self.durable || self.failed {
            return;
        }
        self.durable = up_to;
        self.replica.persisted(up_to);
        while self.held.front().is_some_and(|(end, _, _)| *end <= up_to) {
            if let Some((_, to, message)) = self.held.pop_front() {
                self.out.send.push((to, message));
            }
        }
    }

    /// A fresh epoch of client ids, made durable by the shell after
    /// [`Effects::need_client_epoch`].
    pub fn client_epoch(&mut self, epoch: u64) {
        self.client_ids.renew(epoch);
    }

    /// The disk cannot write the log: every waiting client is answered and
    /// nothing more is taken. A replica that cannot persist must not answer.
    pub fn disk_failed(&mut self) {
        self.failed = true;
        let writes = std::mem::take(&mut self.clients.writes);
        for (_, w) in writes {
            let error = if w.proposed.is_some() {
                NodeError::Uncertain
            } else {
                disk_lost()
            };
            self.out.replies.push((w.answer, Err(error)));
        }
        let reads = std::mem::take(&mut self.clients.reads);
        for (_, r) in reads {
            let error = disk_lost();
            self.out.replies.push((r.answer, Err(error)));
        }
        self.held.clear();
    }

    /// A write from connection `conn`: it goes through the log, and `answer`
    /// gets the store's reply once it is applied here (or why not).
    pub fn write(&mut self, conn: ConnId, command: Command, answer: T) {
        if self.failed {
            let error = disk_lost();
            self.out.replies.push((answer, Err(error)));
            return;
        }
        if self.replica.status().role == RoleName::Removed {
            self.out.replies.push((answer, Err(NodeError::Removed)));
            return;
        }
        if self.clients.writes.len() >= self.config.pending_writes_max {
            let error = NodeError::Busy(format!(
                "{} writes are waiting already",
                self.clients.writes.len()
            ));
            self.out.replies.push((answer, Err(error)));
            return;
        }
        if !self.clients.sessions.contains_key(&conn) {
            let Some(client) = self.client_ids.take() else {
                self.out.need_client_epoch = true;
                let error = NodeError::Busy("client sessions are being renewed".to_owned());
                self.out.replies.push((answer, Err(error)));
                return;
            };
            self.clients.sessions.insert(conn, Session::new(client));
        }
        let Some(session) = self.clients.sessions.get_mut(&conn) else {
            return;
        };
        let seq = session.next_seq;
        session.next_seq = seq.next();
        session.outstanding.insert(seq);
        let ack_below = session.outstanding.first().copied().unwrap_or(seq);
        let client = session.client;
        let request = Request {
            client,
            seq,
            ack_below,
            command,
        }
        .encode();
        if request.len() > self.config.command_bytes_max {
            self.clients.forget(conn, seq);
            let reply = Reply::Error(format!(
                "ERR command of {} bytes exceeds the limit of {} bytes",
                request.len(),
                self.config.command_bytes_max
            ));
            self.out.replies.push((answer, Ok(reply)));
            return;
        }
        let key = (client, seq);
        self.clients.add_write(
            key,
            PendingWrite {
                conn,
                answer,
                request,
                arrived: self.now,
                proposed: None,
                again: false,
                arrival: 0,
            },
        );
        if self.turn_full() {
            // The next turn proposes it (see the sweep).
            self.sweep_now = true;
        } else {
            self.propose(key);
        }
    }

    /// A read-only command, answered as `mode` allows.
    pub fn read(&mut self, command: Command, mode: ReadMode, answer: T) {
        if !command.is_read_only() || mode == ReadMode::Stale {
            let reply = self.store.read(&command);
            self.out.replies.push((answer, Ok(reply)));
            return;
        }
        if self.failed {
            let error = disk_lost();
            self.out.replies.push((answer, Err(error)));
            return;
        }
        if self.replica.status().role == RoleName::Removed {
            self.out.replies.push((answer, Err(NodeError::Removed)));
            return;
        }
        if self.config.flaw == Some(Flaw::ReadWithoutConfirmation)
            && self.replica.status().role == RoleName::Leader
        {
            let reply = self.store.read(&command);
            self.out.replies.push((answer, Ok(reply)));
            return;
        }
        if self.clients.reads.len() >= self.config.pending_reads_max {
            let error = NodeError::Busy(format!(
                "{} reads are waiting already",
                self.clients.reads.len()
            ));
            self.out.replies.push((answer, Err(error)));
            return;
        }
        let ctx = self.clients.next_ctx;
        self.clients.next_ctx += 1;
        self.clients.reads.insert(
            ctx,
            PendingRead {
                command,
                answer,
                arrived: self.now,
                asked: None,
                again: false,
                index: None,
                after: self.clients.next_arrival(),
            },
        );
        if self.clients.writes_done_before(self.clients.next_arrival()) {
            self.ask_read_index(ctx);
        }
    }

    /// Connection `conn` closed: its session is retired once nothing is
    /// owed to it.
    pub fn closed(&mut self, conn: ConnId) {
        self.clients.close(conn);
    }

    // ----- the turn ---------------------------------------------------------

    /// Ends a turn: carries out the replica's `Ready` and everything it
    /// leads to, and returns what the shell must do.
    pub fn effects(&mut self) -> Effects<T> {
        if !self.failed {
            self.watch_leader();
            if self.sweep_now || self.now >= self.next_sweep {
                self.sweep();
                self.sweep_now = false;
                self.next_sweep = self.now + self.config.sweep_ticks.max(1);
            }
            self.process_ready();
            // Writes answered just now may release reads waiting behind
            // them; carry out what asking for their index produced at once.
            if self.release_reads() {
                self.process_ready();
            }
            self.watch_leader();
            self.maybe_snapshot();
        }
        self.turn_bytes = 0;
        std::mem::take(&mut self.out)
    }

    // ----- writes and reads ---------------------------------------------------

    /// Hands the write `key` to the protocol, if a leader is known.
    fn propose(&mut self, key: (ClientId, Seq)) {
        let now = self.now;
        let Some(write) = self.clients.writes.get_mut(&key) else {
            return;
        };
        let len = write.request.len();
        match self.replica.propose(write.request.clone()) {
            Ok(()) => {
                write.proposed = Some(now);
                write.again = false;
                self.turn_bytes += len.max(1);
                self.stats.proposals += 1;
            }
            Err(ProposeError::NoLeader) => {
                // Waits for a leader, up to the grace period (see sweep).
            }
            Err(ProposeError::Busy(n)) => {
                if write.proposed.is_none()
                    && let Some(write) = self.clients.finish_write(key)
                {
                    let error = NodeError::Busy(format!("{n} proposals are queued"));
                    self.out.replies.push((write.answer, Err(error)));
                }
                // A write handed on before stays; the next sweep retries.
            }
        }
    }

    fn ask_read_index(&mut self, ctx: u64) {
        let now = self.now;
        let Some(read) = self.clients.reads.get_mut(&ctx) else {
            return;
        };
        match self.replica.read_index(ctx) {
            Ok(()) => {
                read.asked = Some(now);
                read.again = false;
            }
            Err(ProposeError::NoLeader) => {}
            Err(ProposeError::Busy(n)) => {
                if let Some(read) = self.clients.reads.remove(&ctx) {
                    let error = NodeError::Busy(format!("{n} requests are queued"));
                    self.out.replies.push((read.answer, Err(error)));
                }
            }
        }
    }

    /// Asks for the read index of every read whose earlier writes are all
    /// answered now. True if any was asked.
    fn release_reads(&mut self) -> bool {
        if self.replica.status().leader.is_none() {
            return false;
        }
        let released: Vec<u64> = self
            .clients
            .reads
            .iter()
            .filter(|(_, r)| r.asked.is_none() && self.clients.writes_done_before(r.after))
            .map(|(&ctx, _)| ctx)
            .collect();
        for &ctx in &released {
            self.ask_read_index(ctx);
        }
        !released.is_empty()
    }

    /// Hands on again, or gives up on, waiting writes and reads.
    fn sweep(&mut self) {
        let now = self.now;
        let leader_known = self.replica.status().leader.is_some();
        let grace = self.config.leader_grace_ticks;
        let reforward = self.config.reforward_ticks;
        let write_timeout = self.config.write_timeout_ticks;
        let read_timeout = self.config.read_timeout_ticks;

        // A request arrives somewhere inside tick `arrived`, so only when
        // more than `n` ticks have passed since is it sure that `n` whole
        // ticks went by: a client never gets its answer before the time it
        // was promised.
        let waited = |since: u64, n: u64| now > since + n;
        let mut refused = Vec::new();
        let mut uncertain = Vec::new();
        let mut due = Vec::new();
        for (&key, w) in &self.clients.writes {
            match w.proposed {
                None if waited(w.arrived, grace) => refused.push(key),
                None => {
                    if leader_known {
                        due.push(key);
                    }
                }
                Some(_) if waited(w.arrived, write_timeout) => uncertain.push(key),
                Some(at) => {
                    if leader_known && (w.again || now >= at + reforward) {
                        due.push(key);
                    }
                }
            }
        }
        for key in refused {
            if let Some(w) = self.clients.finish_write(key) {
                self.out
                    .replies
                    .push((w.answer, Err(NodeError::ClusterDown)));
            }
        }
        for key in uncertain {
            if let Some(w) = self.clients.finish_write(key) {
                debug!(
                    client = key.0.0,
                    seq = key.1.0,
                    "no outcome known for a write in time"
                );
                self.out.replies.push((w.answer, Err(NodeError::Uncertain)));
            }
        }
        for key in due {
            if self.turn_full() {
                // The rest go next turn.
                self.sweep_now = true;
                break;
            }
            self.propose(key);
        }

        let mut failed = Vec::new();
        let mut ask = Vec::new();
        for (&ctx, r) in &self.clients.reads {
            match r.asked {
                _ if waited(r.arrived, read_timeout) => failed.push(ctx),
                None if !leader_known && waited(r.arrived, grace) => failed.push(ctx),
                None => {
                    if leader_known && self.clients.writes_done_before(r.after) {
                        ask.push(ctx);
                    }
                }
                Some(at) => {
                    if leader_known && r.index.is_none() && (r.again || now >= at + reforward) {
                        ask.push(ctx);
                    }
                }
            }
        }
        for ctx in failed {
            if let Some(r) = self.clients.reads.remove(&ctx) {
                self.out
                    .replies
                    .push((r.answer, Err(NodeError::ClusterDown)));
            }
        }
        for ctx in ask {
            self.ask_read_index(ctx);
        }
    }

    /// Notices leader and role changes: logs them, counts them, and hands
    /// everything waiting on the old leader to the new one.
    fn watch_leader(&mut self) {
        let status = self.replica.status();
        if status.role != self.role {
            if status.role == RoleName::Candidate {
                self.stats.elections += 1;
            }
            debug!(
                from = self.role.as_str(),
                to = status.role.as_str(),
                "role changed"
            );
            self.role = status.role;
        }
        if status.leader != self.leader {
            match status.leader {
                Some(leader) => {
                    info!(leader, ballot = %status.promised, "leader elected");
                    self.stats.leader_changes += 1;
                    self.clients.leader_changed();
                    self.sweep_now = true;
                }
                None => info!(previous = ?self.leader, "no leader known"),
            }
            self.leader = status.leader;
        }
    }

    // ----- the Ready -----------------------------------------------------------

    /// Carries out the replica's `Ready`, in the order of its contract.
    fn process_ready(&mut self) {
        let Ready {
            records,
            records_end,
            messages,
            persisted_messages,
            committed,
            reads,
            failed_reads,
            snapshot_needed,
        } = self.replica.take_ready();

        // 1. Records, for the shell's disk.
        if self.config.flaw == Some(Flaw::ApplyBeforeChosen) {
            self.apply_accepted(&records);
        }
        self.out.records.extend(records);
        self.out.records_end = records_end;
        self.handed = records_end;

        // 2. Messages: those that report the records wait for them.
        for (_, message) in &messages {
            if let Message::Forward { commands } = message {
                self.stats.forwarded_commands += commands.len() as u64;
            }
        }
        self.out.send.extend(messages);
        let sends_at_once = self.config.flaw == Some(Flaw::SendsBeforeDurable);
        for (to, message) in persisted_messages {
            if records_end <= self.durable || sends_at_once {
                self.out.send.push((to, message));
            } else {
                self.held.push_back((records_end, to, message));
            }
        }

        // 3. Apply, in slot order.
        self.stats.commits += committed.len() as u64;
        for (slot, value) in committed {
            self.apply(slot, &value);
        }

        // 4. Reads.
        for read in reads {
            if let Some(pending) = self.clients.reads.get_mut(&read.ctx) {
                pending.index = Some(pending.index.map_or(read.index, |i| i.min(read.index)));
            }
        }
        self.answer_reads();
        for ctx in failed_reads {
            if let Some(read) = self.clients.reads.remove(&ctx) {
                self.out
                    .replies
                    .push((read.answer, Err(NodeError::ClusterDown)));
            }
        }

        // 5. A snapshot to fetch.
        if let Some((peer, slot)) = snapshot_needed {
            self.start_fetch(peer, slot);
        }
    }

    /// Applies one chosen slot to the store and answers the writes of this
    /// node that it carries.
    fn apply(&mut self, slot: Slot, value: &Value) {
        if slot <= self.applied {
            return;
        }
        if self.config.report_applied {
            self.out.applied.push((slot, value.clone()));
        }
        if let Value::Batch(commands) = value {
            self.stats.batch_commands.observe(commands.len() as f64);
            for (i, command) in commands.iter().enumerate() {
                self.snapshots.applied_bytes(command.len() as u64);
                self.apply_command(slot, i, command);
            }
        }
        self.snapshots.applied_entry();
        self.applied = slot;
    }

    fn apply_command(&mut self, slot: Slot, i: usize, command: &Bytes) {
        let Some(index) = store_index(slot, i) else {
            warn!(
                %slot,
                position = i,
                "a command beyond the store's index range is skipped"
            );
            return;
        };
        let mut request = match Request::decode(command) {
            Ok(request) => request,
            Err(e) => {
                // Every replica decodes the same bytes the same way, so every
                // replica skips this command.
                warn!(%slot, position = i, error = %e, "an undecodable command in the log is skipped");
                return;
            }
        };
        let key = (request.client, request.seq);
        if self.config.flaw == Some(Flaw::RetryAppliedTwice) {
            request.client = ClientId::NONE;
        }
        let reply = self.store.apply(index, &request);
        if key.0 == ClientId::NONE {
            return;
        }
        if let Some(write) = self.clients.finish_write(key) {
            self.out.replies.push((write.answer, Ok(reply)));
        }
    }

    /// The flaw [`Flaw::ApplyBeforeChosen`]: a value accepted for the next
    /// slot is applied at once.
    fn apply_accepted(&mut self, records: &[Record]) {
        for record in records {
            if let Record::Accept { slot, value, .. } = record
                && *slot == self.applied.next()
            {
                self.apply(*slot, value);
            }
        }
    }

    fn answer_reads(&mut self) {
        let applied = self.applied;
        let ready: Vec<u64> = self
            .clients
            .reads
            .iter()
            .filter(|(_, r)| r.index.is_some_and(|i| i <= applied))
            .map(|(&ctx, _)| ctx)
            .collect();
        for ctx in ready {
            if let Some(read) = self.clients.reads.remove(&ctx) {
                let reply = self.store.read(&read.command);
                self.out.replies.push((read.answer, Ok(reply)));
            }
        }
    }
}
