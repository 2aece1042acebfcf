//! The replica task: the one owner of the replica, its storage and the
//! key-value store.
//!
//! # One turn of the loop
//!
//! 1. Wait for the first of: a client op, a peer message, the next tick, or
//!    the stop signal.
//! 2. Deliver every tick that real time says is due, before anything else:
//!    after a pause (a stalled disk, a stopped process) the replica must see
//!    the time that passed before it serves a read under a lease that may
//!    have run out meanwhile.
//! 3. Handle the event, then take more ops and peer messages, up to
//!    `turn_items_max` each, without waiting.
//! 4. Every few ticks, sweep the waiting writes and reads (hand them on
//!    again, or give up on them).
//! 5. Carry out the replica's `Ready` as its contract allows: hand its
//!    records to the disk thread (`super::disk`), send the messages that may
//!    leave before the records are durable and hold the others until the
//!    disk thread reports them durable, apply the chosen entries to the
//!    store in slot order and answer the writes they carry, then answer the
//!    reads.
//! 6. If the snapshot policy says so, hand a clone of the store to a writer
//!    thread; when it reports the snapshot durable (a snapshot event, like
//!    a fetched snapshot), compact the log below it. See `super::snapshots`.
//!
//! The task runs on the node's runtime, beside the client connections and
//! the peer transport, and never waits for the disk: while the disk thread
//! syncs, the task goes on stepping messages and answering writes, and a
//! report that records are durable is one more event of the loop (it
//! releases the held messages, and counts the leader's own votes).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use paxos::NodeId;
use paxos::replica::{Message, ProposeError, Ready, RecordNo, Replica, RoleName, Slot, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, error, info, warn};

use super::api::{MemberStatus, NodeError, Op, ReadMode, StatusReport};
use super::clients::{Clients, PendingRead, PendingWrite, Session, answer};
use super::config::NodeConfig;
use super::datadir::{ClientIds, DataDir};
use super::disk::Disk;
use super::snapshots::{self, FetchRequest, SnapshotEvent, Snapshots};
use crate::metrics::{self, Metrics};
use crate::net::{Outbox, PeerTable};
use kv::{Reply, Request, Store};
use storage::replica::StorageError;
use storage::snapshot::SnapshotError;

/// Ticks delivered between two `Ready`s while catching up after a pause, so
/// that one `Ready` stays small.
const CATCH_UP_TICKS_PER_READY: u64 = 64;

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

/// What woke the loop.
enum Event {
    /// The disk thread made more records durable.
    Persisted,
    Op(Op),
    Peer(NodeId, Message),
    Snapshot(SnapshotEvent),
    Tick,
    Stop,
}

/// How the task reaches the snapshot machinery.
pub struct SnapshotLinks {
    pub snapshots: Arc<Snapshots>,
    /// Handed to each writer thread, to report back on.
    pub events: mpsc::Sender<SnapshotEvent>,
    /// To the fetcher; requests are dropped while it is busy.
    pub fetch: mpsc::Sender<FetchRequest>,
}

/// Everything the task owns.
pub struct ReplicaTask {
    config: NodeConfig,
    replica: Replica,
    disk: Disk,
    /// The number of the last record the disk thread reported durable.
    durable: u64,
    /// Messages that wait for records up to the number given to be durable.
    held: VecDeque<(u64, NodeId, Message)>,
    store: Store,
    /// The last slot applied to `store`.
    applied: Slot,
    data_dir: DataDir,
    client_ids: ClientIds,
    clients: Clients,
    outbox: Outbox,
    peers: Arc<PeerTable>,
    metrics: Arc<Metrics>,
    status: watch::Sender<StatusReport>,
    started: Instant,
    /// Ticks delivered since `started`.
    ticks: u64,
    next_sweep: Instant,
    sweep_now: bool,
    next_publish: Instant,
    leader: Option<NodeId>,
    role: RoleName,
    /// Request bytes this turn may still propose, so that one turn's forward
    /// message stays well inside a frame.
    propose_budget: usize,
    snapshot_links: SnapshotLinks,
    /// Log entries (slots) and command bytes applied since the last
    /// snapshot was started or installed.
    entries_since: u64,
    bytes_since: u64,
    /// The thread writing a snapshot, while one is.
    writer: Option<std::thread::JoinHandle<()>>,
}

/// The channels the task serves.
pub struct Channels {
    pub ops: mpsc::Receiver<Op>,
    pub inbound: mpsc::Receiver<(NodeId, Message)>,
    pub snapshots: mpsc::Receiver<SnapshotEvent>,
    pub stop: oneshot::Receiver<()>,
}

impl Drop for ReplicaTask {
    fn drop(&mut self) {
        // A snapshot being written finishes before the task is gone, so a
        // node started again on this directory never sees it half done.
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl ReplicaTask {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: NodeConfig,
        replica: Replica,
        disk: Disk,
        (store, applied): (Store, Slot),
        data_dir: DataDir,
        client_ids: ClientIds,
        outbox: Outbox,
        peers: Arc<PeerTable>,
        metrics: Arc<Metrics>,
        status: watch::Sender<StatusReport>,
        snapshot_links: SnapshotLinks,
    ) -> ReplicaTask {
        let now = Instant::now();
        let role = replica.status().role;
        ReplicaTask {
            config,
            replica,
            disk,
            durable: 0,
            held: VecDeque::new(),
            store,
            applied,
            data_dir,
            client_ids,
            clients: Clients::default(),
            outbox,
            peers,
            metrics,
            status,
            started: now,
            ticks: 0,
            next_sweep: now,
            sweep_now: false,
            next_publish: now,
            leader: None,
            role,
            propose_budget: 0,
            snapshot_links,
            entries_since: 0,
            bytes_since: 0,
            writer: None,
        }
    }

    /// Runs until stopped, or until storage fails (a replica that cannot
    /// persist must not go on answering).
    pub async fn run(mut self, mut channels: Channels) -> Result<(), StorageError> {
        // The first Ready re-applies every chosen entry of the durable log.
        self.process_ready()?;
        info!(
            applied = %self.applied,
            keys = self.store.len(),
            "state rebuilt from the log"
        );
        self.publish(true);
        let mut ops_open = true;
        let mut inbound_open = true;
        let mut snapshots_open = true;
        loop {
            let next_tick = self.started
                + Duration::from_millis(self.config.tick_ms.saturating_mul(self.ticks + 1));
            let event = tokio::select! {
                biased;
                _ = &mut channels.stop => Event::Stop,
                failed = &mut self.disk.failed => {
                    return Err(failed.unwrap_or(StorageError::Stopped));
                }
                changed = self.disk.durable.changed() => match changed {
                    Ok(()) => Event::Persisted,
                    Err(_) => return Err(StorageError::Stopped),
                },
                () = sleep_until(next_tick) => Event::Tick,
                op = channels.ops.recv(), if ops_open => match op {
                    Some(op) => Event::Op(op),
                    None => { ops_open = false; Event::Tick }
                },
                message = channels.inbound.recv(), if inbound_open => match message {
                    Some((from, message)) => Event::Peer(from, message),
                    None => { inbound_open = false; Event::Tick }
                },
                event = channels.snapshots.recv(), if snapshots_open => match event {
                    Some(event) => Event::Snapshot(event),
                    None => { snapshots_open = false; Event::Tick }
                },
            };
            if let Event::Stop = event {
                return Ok(());
            }
            self.catch_up_ticks()?;
            self.propose_budget = self.proposal_bytes_per_turn();
            match event {
                Event::Stop => return Ok(()),
                Event::Op(op) => self.on_op(op),
                Event::Peer(from, message) => self.replica.step(from, message),
                Event::Snapshot(event) => self.on_snapshot_event(event),
                Event::Persisted | Event::Tick => {}
            }
            for _ in 1..self.config.turn_items_max {
                if self.propose_budget == 0 {
                    break;
                }
                match channels.ops.try_recv() {
                    Ok(op) => self.on_op(op),
                    Err(_) => break,
                }
            }
            for _ in 1..self.config.turn_items_max {
                match channels.inbound.try_recv() {
                    Ok((from, message)) => self.replica.step(from, message),
                    Err(_) => break,
                }
            }
            self.on_persisted();
            self.watch_leader();
            let now = Instant::now();
            if self.sweep_now || now >= self.next_sweep {
                self.sweep(now);
                self.sweep_now = false;
                self.next_sweep = now + self.sweep_period();
            }
            self.process_ready()?;
            // Writes answered just now may release reads waiting behind
            // them; carry out what asking for their index produced at once.
            if self.release_reads(Instant::now()) {
                self.process_ready()?;
            }
            self.watch_leader();
            self.publish(false);
        }
    }

    fn sweep_period(&self) -> Duration {
        (self.config.tick() * 5).min(Duration::from_millis(50))
    }

    /// Half a frame's worth of requests per turn.
    fn proposal_bytes_per_turn(&self) -> usize {
        (self.config.transport.frame_bytes_max / 2) as usize
    }

    // ----- time ----------------------------------------------------------

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
            self.replica.tick();
            self.ticks += 1;
            delivered += 1;
            if delivered % CATCH_UP_TICKS_PER_READY == 0 {
                self.process_ready()?;
            }
        }
        Ok(())
    }

    // ----- client ops ----------------------------------------------------

    fn on_op(&mut self, op: Op) {
        match op {
            Op::Write {
                conn,
                command,
                reply,
            } => self.on_write(conn, command, reply),
            Op::Read {
                command,
                mode,
                reply,
            } => self.on_read(command, mode, reply),
            Op::Closed { conn } => self.clients.close(conn),
        }
    }

    fn on_write(
        &mut self,
        conn: super::api::ConnId,
        command: kv::Command,
        reply: super::clients::Answer,
    ) {
        if self.clients.writes.len() >= self.config.pending_writes_max {
            answer(
                reply,
                Err(NodeError::Busy(format!(
                    "{} writes are waiting already",
                    self.clients.writes.len()
                ))),
            );
            return;
        }
        if !self.clients.sessions.contains_key(&conn) {
            match self.client_ids.next(&self.data_dir) {
                Ok(client) => {
                    self.clients.sessions.insert(conn, Session::new(client));
                }
                Err(e) => {
                    error!(error = %e, "cannot start a client session");
                    answer(reply, Err(NodeError::Busy(e.to_string())));
                    return;
                }
            }
        }
        let Some(session) = self.clients.sessions.get_mut(&conn) else {
            return;
        };
        let seq = session.next_seq;
        session.next_seq += 1;
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
            answer(
                reply,
                Ok(Reply::Error(format!(
                    "ERR command of {} bytes exceeds the limit of {} bytes",
                    request.len(),
                    self.config.command_bytes_max
                ))),
            );
            return;
        }
        let key = (client, seq);
        self.clients.add_write(
            key,
            PendingWrite {
                conn,
                answer: reply,
                request,
                arrived: Instant::now(),
                proposed: None,
                again: false,
                arrival: 0,
            },
        );
        self.propose(key, Instant::now());
    }

    /// Hands the write `key` to the protocol, if a leader is known.
    fn propose(&mut self, key: (u64, u64), now: Instant) {
        let Some(write) = self.clients.writes.get_mut(&key) else {
            return;
        };
        let len = write.request.len();
        match self.replica.propose(write.request.clone()) {
            Ok(()) => {
                write.proposed = Some(now);
                write.again = false;
                self.propose_budget = self.propose_budget.saturating_sub(len.max(1));
                metrics::add(&self.metrics.proposals, 1);
            }
            Err(ProposeError::NoLeader) => {
                // Waits for a leader, up to the grace period (see sweep).
            }
            Err(ProposeError::Busy(n)) => {
                if write.proposed.is_none()
                    && let Some(write) = self.clients.finish_write(key)
                {
                    answer(
                        write.answer,
                        Err(NodeError::Busy(format!("{n} proposals are queued"))),
                    );
                }
                // A write handed on before stays; the next sweep retries.
            }
        }
    }

    fn on_read(&mut self, command: kv::Command, mode: ReadMode, reply: super::clients::Answer) {
        if !command.is_read_only() {
            answer(reply, Ok(self.store.read(&command)));
            return;
        }
        match mode {
            ReadMode::Stale => answer(reply, Ok(self.store.read(&command))),
            ReadMode::Linearizable => {
                if self.clients.reads.len() >= self.config.pending_reads_max {
                    answer(
                        reply,
                        Err(NodeError::Busy(format!(
                            "{} reads are waiting already",
                            self.clients.reads.len()
                        ))),
                    );
                    return;
                }
                let ctx = self.clients.next_ctx;
                self.clients.next_ctx += 1;
                self.clients.reads.insert(
                    ctx,
                    PendingRead {
                        command,
                        answer: reply,
                        arrived: Instant::now(),
                        asked: None,
                        again: false,
                        index: None,
                        after: self.clients.next_arrival(),
                    },
                );
                if self.clients.writes_done_before(self.clients.next_arrival()) {
                    self.ask_read_index(ctx, Instant::now());
                }
            }
        }
    }

    fn ask_read_index(&mut self, ctx: u64, now: Instant) {
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
                    answer(
                        read.answer,
                        Err(NodeError::Busy(format!("{n} requests are queued"))),
                    );
                }
            }
        }
    }

    /// Asks for the read index of every read whose earlier writes are all
    /// answered now. True if any was asked.
    fn release_reads(&mut self, now: Instant) -> bool {
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
            self.ask_read_index(ctx, now);
        }
        !released.is_empty()
    }

    // ----- timers --------------------------------------------------------

    /// Hands on again, or gives up on, waiting writes and reads.
    fn sweep(&mut self, now: Instant) {
        let leader_known = self.replica.status().leader.is_some();
        let grace = self.config.leader_grace();
        let reforward = Duration::from_millis(self.config.reforward_ms);
        let write_timeout = Duration::from_millis(self.config.write_timeout_ms);
        let read_timeout = Duration::from_millis(self.config.read_timeout_ms);

        let mut refused = Vec::new();
        let mut uncertain = Vec::new();
        let mut due = Vec::new();
        for (&key, w) in &self.clients.writes {
            match w.proposed {
                None if now >= w.arrived + grace => refused.push(key),
                None => {
                    if leader_known {
                        due.push(key);
                    }
                }
                Some(_) if now >= w.arrived + write_timeout => uncertain.push(key),
                Some(at) => {
                    if leader_known && (w.again || now >= at + reforward) {
                        due.push(key);
                    }
                }
            }
        }
        for key in refused {
            if let Some(w) = self.clients.finish_write(key) {
                answer(w.answer, Err(NodeError::ClusterDown));
            }
        }
        for key in uncertain {
            if let Some(w) = self.clients.finish_write(key) {
                debug!(
                    client = key.0,
                    seq = key.1,
                    "no outcome known for a write in time"
                );
                answer(w.answer, Err(NodeError::Uncertain));
            }
        }
        for key in due {
            if self.propose_budget == 0 {
                // The rest go next turn.
                self.sweep_now = true;
                break;
            }
            self.propose(key, now);
        }

        let mut failed = Vec::new();
        let mut ask = Vec::new();
        for (&ctx, r) in &self.clients.reads {
            match r.asked {
                _ if now >= r.arrived + read_timeout => failed.push(ctx),
                None if !leader_known && now >= r.arrived + grace => failed.push(ctx),
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
                answer(r.answer, Err(NodeError::ClusterDown));
            }
        }
        for ctx in ask {
            self.ask_read_index(ctx, now);
        }
    }

    /// Notices leader and role changes: logs them, counts them, and hands
    /// everything waiting on the old leader to the new one.
    fn watch_leader(&mut self) {
        let status = self.replica.status();
        if status.role != self.role {
            if status.role == RoleName::Candidate {
                metrics::add(&self.metrics.elections, 1);
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
                    metrics::add(&self.metrics.leader_changes, 1);
                    self.clients.leader_changed();
                    self.sweep_now = true;
                }
                None => info!(previous = ?self.leader, "no leader known"),
            }
            self.leader = status.leader;
        }
    }

    // ----- the Ready ------------------------------------------------------

    /// Takes in what the disk thread made durable since the last look:
    /// tells the replica, and sends the messages that waited for it.
    fn on_persisted(&mut self) {
        let durable = *self.disk.durable.borrow_and_update();
        if durable <= self.durable {
            return;
        }
        self.durable = durable;
        self.replica.persisted(RecordNo(durable));
        while let Some(&(end, _, _)) = self.held.front() {
            if end > durable {
                break;
            }
            if let Some((_, to, message)) = self.held.pop_front() {
                self.outbox.send(to, message);
            }
        }
    }

    /// Carries out the replica's `Ready`, in the order of its contract.
    fn process_ready(&mut self) -> Result<(), StorageError> {
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

        // 1. To the disk thread, which makes them durable in order.
        if !records.is_empty() && self.disk.write(records, records_end.0).is_err() {
            return Err(StorageError::Stopped);
        }

        // 2. Messages: those that report the records wait for them.
        for (to, message) in messages {
            if let Message::Forward { commands } = &message {
                metrics::add(&self.metrics.forwarded_commands, commands.len() as u64);
            }
            self.outbox.send(to, message);
        }
        for (to, message) in persisted_messages {
            if records_end.0 > self.durable {
                self.held.push_back((records_end.0, to, message));
            } else {
                self.outbox.send(to, message);
            }
        }

        // 3. Apply, in slot order.
        metrics::add(&self.metrics.commits, committed.len() as u64);
        for (slot, value) in committed {
            self.apply(slot, &value);
        }

        // 4. Reads.
        for read in reads {
            if let Some(pending) = self.clients.reads.get_mut(&read.ctx) {
                pending.index = Some(pending.index.map_or(read.index.0, |i| i.min(read.index.0)));
            }
        }
        self.answer_reads();
        for ctx in failed_reads {
            if let Some(read) = self.clients.reads.remove(&ctx) {
                answer(read.answer, Err(NodeError::ClusterDown));
            }
        }

        // 5. Snapshots.
        if let Some((peer, slot)) = snapshot_needed {
            // Dropped while the fetcher is busy: the replica asks again.
            let _ = self
                .snapshot_links
                .fetch
                .try_send(FetchRequest { peer, slot });
        }
        self.maybe_snapshot();
        Ok(())
    }

    // ----- snapshots -------------------------------------------------------

    /// Starts a snapshot of the store at the applied slot when the policy
    /// says one is due and none is being written.
    fn maybe_snapshot(&mut self) {
        if self.writer.is_some()
            || !self
                .config
                .snapshot
                .should_snapshot(self.entries_since, self.bytes_since)
        {
            return;
        }
        let slot = self.applied;
        // The loop's only pause for a snapshot; see `snapshots` on its cost.
        let started = std::time::Instant::now();
        let store = self.store.clone();
        let clone_ms = started.elapsed().as_millis() as u64;
        match snapshots::spawn_write(
            Arc::clone(&self.snapshot_links.snapshots),
            slot,
            store,
            self.snapshot_links.events.clone(),
        ) {
            Ok(writer) => {
                debug!(%slot, clone_ms, "taking a snapshot");
                self.writer = Some(writer);
                self.entries_since = 0;
                self.bytes_since = 0;
            }
            Err(e) => {
                // Tried again after the next applied entry.
                error!(error = %e, "cannot start a thread to take a snapshot");
            }
        }
    }

    fn on_snapshot_event(&mut self, event: SnapshotEvent) {
        match event {
            SnapshotEvent::Written { slot, result } => {
                if let Some(writer) = self.writer.take() {
                    // It sent this as its last act.
                    let _ = writer.join();
                }
                match result {
                    Ok(_) => {
                        metrics::add(&self.metrics.snapshots_taken, 1);
                        // Durable: the log below it may go.
                        self.replica.compact(slot);
                    }
                    Err(SnapshotError::Stale { latest, .. }) => {
                        debug!(
                            %slot,
                            latest, "a newer snapshot was installed meanwhile; this one is moot"
                        );
                    }
                    Err(e) => {
                        error!(
                            %slot,
                            error = %e,
                            "cannot take a snapshot; the log keeps growing until one succeeds"
                        );
                    }
                }
            }
            SnapshotEvent::Fetched { from, meta, store } => {
                let commit = self.replica.status().commit;
                if Slot(meta.slot) <= commit || Slot(meta.slot) <= self.applied {
                    debug!(
                        slot = meta.slot,
                        %commit, "caught up meanwhile; the fetched snapshot is not needed"
                    );
                    return;
                }
                info!(
                    from,
                    slot = meta.slot,
                    keys = store.len(),
                    "installed a snapshot from a peer"
                );
                // Nothing answered from the old store from here on: reads
                // wait for their index, which the new store covers or the
                // log above it will.
                self.store = *store;
                self.applied = Slot(meta.slot);
                self.entries_since = 0;
                self.bytes_since = 0;
                self.replica.install_snapshot(Slot(meta.slot));
                metrics::add(&self.metrics.snapshots_installed, 1);
            }
        }
    }

    /// Applies one chosen slot to the store and answers the writes of this
    /// node that it carries.
    fn apply(&mut self, slot: Slot, value: &Value) {
        if slot <= self.applied {
            return;
        }
        if let Value::Batch(commands) = value {
            self.metrics.batch_commands.observe(commands.len() as f64);
            for (i, command) in commands.iter().enumerate() {
                self.bytes_since += command.len() as u64;
                self.apply_command(slot, i, command);
            }
        }
        self.entries_since += 1;
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
        let request = match Request::decode(command) {
            Ok(request) => request,
            Err(e) => {
                // Every replica decodes the same bytes the same way, so every
                // replica skips this command.
                warn!(%slot, position = i, error = %e, "an undecodable command in the log is skipped");
                return;
            }
        };
        let reply = self.store.apply(index, &request);
        if request.client == 0 {
            return;
        }
        if let Some(write) = self.clients.finish_write((request.client, request.seq)) {
            answer(write.answer, Ok(reply));
        }
    }

    fn answer_reads(&mut self) {
        let applied = self.applied;
        let ready: Vec<u64> = self
            .clients
            .reads
            .iter()
            .filter(|(_, r)| r.index.is_some_and(|i| i <= applied.0))
            .map(|(&ctx, _)| ctx)
            .collect();
        for ctx in ready {
            if let Some(read) = self.clients.reads.remove(&ctx) {
                let reply = self.store.read(&read.command);
                answer(read.answer, Ok(reply));
            }
        }
    }

    // ----- status --------------------------------------------------------

    /// Publishes the status, at most once a tick unless `now`.
    fn publish(&mut self, now: bool) {
        let instant = Instant::now();
        if !now && instant < self.next_publish {
            return;
        }
        self.next_publish = instant + self.config.tick();
        let status = self.replica.status();
        let peers = self.peers.snapshot();
        let progress: std::collections::BTreeMap<u64, u64> = self
            .replica
            .peer_progress()
            .into_iter()
            .map(|(id, s)| (id, s.0))
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
        };
        let report = StatusReport {
            id: me,
            role: role.to_owned(),
            leader_id: status.leader,
            ballot: status.promised.to_string(),
            commit_slot: status.commit.0,
            applied_slot: self.applied.0,
            log_start: status.log_start.0,
            keys: self.store.len() as u64,
            client_connections: self
                .metrics
                .client_connections_open
                .load(std::sync::atomic::Ordering::Relaxed),
            client_addr: self.config.client_addr.clone(),
            http_addr: self.config.http_addr.clone(),
            data_dir: self.data_dir.root().display().to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            members,
        };
        self.status.send_if_modified(|current| {
            if *current == report {
                false
            } else {
                *current = report;
                true
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly, which is its job
mod tests {
    use super::*;

    #[test]
    fn store_indexes_increase_along_the_log_and_stop_at_their_range() {
        assert!(store_index(Slot(1), 0) < store_index(Slot(1), 1));
        assert!(store_index(Slot(1), 65_535) < store_index(Slot(2), 0));
        assert_eq!(store_index(Slot(1), 65_536), None);
        assert_eq!(store_index(Slot(1 << 48), 0), None);
    }
}
