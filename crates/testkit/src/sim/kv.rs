//! A simulated parliament: replicas of `paxos::replica` with key-value state
//! machines, clients that behave like real ones, and every fault the network,
//! the disks and the clocks can throw at them. One `u64` seed decides it all.
//!
//! # The world
//!
//! Time is in microseconds. Each node ticks its replica every 10 ms *by its own
//! clock*, which runs fast or slow by up to the configured drift. Messages take
//! 0.1 to 3 ms, sometimes much longer (which reorders them), and are lost or
//! duplicated at the configured rates; partitions cut links symmetrically, in
//! one direction only, or between some pairs of nodes.
//!
//! A node's disk makes records durable a little after they are written, in
//! order, and now and then stalls for longer than a message's round trip.
//! The node goes on meanwhile, as the real one does: only the messages that
//! report what the records say wait for them (see the output contract of
//! `paxos::replica`); accepts, heartbeats and commit points leave at once,
//! and chosen entries are applied and answered at once. A crash loses
//! everything not yet durable and the messages waiting for it, except that
//! it may tear the write in progress, keeping a prefix of its records (what
//! the log keeps after cutting a torn tail). Crashes also land exactly on the boundaries:
//! just after a sync, before anything it released, and just after a snapshot
//! is saved, before the log records the compaction. A crash may damage the
//! disk (a flipped bit the checksums catch): the node then comes back empty
//! and rejoins as a learner (`paxos::replica::Replica::rejoin`).
//!
//! Nodes snapshot their state machine every few slots and compact the log
//! below; a node that needs slots compacted away fetches the snapshot from a
//! peer in chunks, resuming where it stopped when chunks are lost. A
//! restarted node loads its snapshot and re-applies the log above it.
//!
//! Clients run one operation at a time (read, write, compare-and-swap or
//! increment on a few keys). They time out, retry the same request (same
//! session and sequence number) at another node, and after a few attempts
//! record the operation as indeterminate and carry on as a new process, as
//! Jepsen's clients do. After the chaos comes a calm phase (network healed,
//! every node up) in which the cluster must make progress again.
//!
//! # Checks
//!
//! - agreement: every replica applies the same value in every slot;
//! - persist before send: a message leaves only once what it reports is
//!   durable (checked on every message);
//! - linearizability of the whole client history (which also catches lost
//!   acknowledged writes, stale reads and commands applied twice);
//! - liveness: operations complete in the calm phase.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;
use paxos::NodeId;
use paxos::replica::{Config, Durable, Message, Record, RecordNo, Replica, Slot, Value};
use paxos::rng::Rng;

use super::trace::Trace;
use crate::bugs::Variant;
use crate::check::{self, History, Op, OpId, Outcome, Ret};
use kv::{Command, Reply, Request, SetCondition, Store};

/// Microseconds of simulated time.
type Micros = u64;

const TICK: Micros = 10_000;

/// Deliberately broken variants of the replicated database.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum KvBug {
    /// A new leader ignores the accepted values reported in promises.
    IgnorePromisedValues,
    /// A leader answers reads from its state machine without a lease or a
    /// read-index round.
    ReadWithoutConfirmation,
    /// Leases are trusted for their full length, not shortened for drift.
    LeaseWithoutDriftWait,
    /// A follower applies a value as soon as it accepts it, before it is
    /// chosen.
    ApplyBeforeChosen,
    /// The state machine ignores client sessions, so a retried command is
    /// applied again.
    RetryAppliedTwice,
    /// A node whose disk was damaged comes back empty and votes at once,
    /// instead of rejoining as a learner.
    RejoinVotesAtOnce,
    /// The host tells the replica its records are durable as soon as it
    /// writes them, so a leader counts its own vote before its disk holds it.
    PersistedBeforeSync,
}

impl Variant for KvBug {
    const ALL: &'static [KvBug] = &[
        KvBug::IgnorePromisedValues,
        KvBug::ReadWithoutConfirmation,
        KvBug::LeaseWithoutDriftWait,
        KvBug::ApplyBeforeChosen,
        KvBug::RetryAppliedTwice,
        KvBug::RejoinVotesAtOnce,
        KvBug::PersistedBeforeSync,
    ];

    fn name(self) -> &'static str {
        match self {
            KvBug::IgnorePromisedValues => "ignore-promised-values",
            KvBug::ReadWithoutConfirmation => "read-without-confirmation",
            KvBug::LeaseWithoutDriftWait => "lease-without-drift-wait",
            KvBug::ApplyBeforeChosen => "apply-before-chosen",
            KvBug::RetryAppliedTwice => "retry-applied-twice",
            KvBug::RejoinVotesAtOnce => "rejoin-votes-at-once",
            KvBug::PersistedBeforeSync => "persisted-before-sync",
        }
    }

    fn description(self) -> &'static str {
        match self {
            KvBug::IgnorePromisedValues => {
                "a new leader that ignores the accepted values in promises"
            }
            KvBug::ReadWithoutConfirmation => {
                "a leader that serves reads without lease or read-index"
            }
            KvBug::LeaseWithoutDriftWait => "a lease without the drift wait",
            KvBug::ApplyBeforeChosen => "a follower that applies a slot before it is chosen",
            KvBug::RetryAppliedTwice => "a client retry that is applied twice",
            KvBug::RejoinVotesAtOnce => "a node that lost its disk and votes again at once",
            KvBug::PersistedBeforeSync => {
                "a host that reports records durable as soon as it writes them"
            }
        }
    }
}

/// The parameters of a family of runs; the seed picks one run.
#[derive(Clone, Debug)]
pub struct KvSimConfig {
    pub nodes: usize,
    pub clients: usize,
    /// Operations in a run, over all clients.
    pub ops: usize,
    pub keys: usize,
    pub loss: f64,
    pub dup: f64,
    /// Whether partitions happen during the chaos.
    pub partitions: bool,
    /// Whether nodes crash (and restart) during the chaos.
    pub crashes: bool,
    /// Largest clock drift rate, parts per million, of any node.
    pub drift_ppm: u64,
    /// Length of the chaos phase.
    pub chaos_ms: u64,
    /// Chance that a crash damages the node's disk (at most one node at a
    /// time: a majority of damaged disks is data loss no protocol survives).
    pub corrupt: f64,
    /// Chance that a crash tears the write in progress.
    pub torn: f64,
    /// Whether nodes snapshot and compact their logs.
    pub snapshots: bool,
    pub bug: Option<KvBug>,
}

impl Default for KvSimConfig {
    fn default() -> Self {
        KvSimConfig {
            nodes: 3,
            clients: 8,
            ops: 200,
            keys: 3,
            loss: 0.1,
            dup: 0.05,
            partitions: true,
            crashes: true,
            // Real clocks drift by well under 0.1%; the simulator allows 40%
            // so that any mistake in lease arithmetic shows.
            drift_ppm: 400_000,
            chaos_ms: 3_000,
            corrupt: 0.2,
            torn: 0.5,
            snapshots: true,
            bug: None,
        }
    }
}

/// What one run did.
#[derive(Debug)]
pub struct KvRun {
    pub seed: u64,
    /// Operations invoked.
    pub ops: usize,
    /// Operations that completed with a definite result.
    pub acked: usize,
    pub slots_applied: Slot,
    pub violation: Option<String>,
    /// The linearizability search ran out of budget on these keys: the run
    /// is neither proved correct nor caught (not a violation).
    pub undecided: Vec<String>,
    pub history: History,
    pub trace: Trace,
    /// What the disks went through, to show the faults were exercised.
    pub disk: DiskEvents,
}

/// Counts of the storage events of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskEvents {
    /// Crashes that kept part of the write in progress.
    pub torn_writes: u64,
    /// Crashes armed on a sync or snapshot boundary.
    pub boundary_crashes: u64,
    /// Disks damaged, and rejoins completed.
    pub damaged: u64,
    pub rejoined: u64,
    /// Snapshots saved, and snapshots installed from a peer.
    pub snapshots: u64,
    pub installs: u64,
}

impl DiskEvents {
    /// Adds another run's counts to these.
    pub fn add(&mut self, other: &DiskEvents) {
        self.torn_writes += other.torn_writes;
        self.boundary_crashes += other.boundary_crashes;
        self.damaged += other.damaged;
        self.rejoined += other.rejoined;
        self.snapshots += other.snapshots;
        self.installs += other.installs;
    }
}

/// Where a message goes: between replicas, or between a client and a node.
#[derive(Clone, Debug)]
enum Packet {
    Peer(Message),
    Request {
        client: usize,
        seq: u64,
    },
    Reply {
        client: usize,
        seq: u64,
        reply: Reply,
    },
    /// "Send me your snapshot at `slot` (0: your latest) from `offset`."
    SnapshotRequest {
        slot: Slot,
        offset: usize,
    },
    /// A piece of a snapshot.
    SnapshotChunk {
        slot: Slot,
        offset: usize,
        total: usize,
        data: Bytes,
    },
}

/// Bytes of snapshot per chunk: small, so that transfers take many chunks.
const CHUNK_BYTES: usize = 64;

/// Where a crash may be armed to land.
#[derive(Clone, Copy, Debug)]
enum CrashPoint {
    /// Right after the next sync completes, before anything it releases.
    AfterSync,
    /// During the next sync: a prefix of its records lands, the rest is torn.
    DuringSync,
    /// Right after the next snapshot is saved, before the compaction record.
    AfterSnapshot,
}

/// A snapshot being received.
#[derive(Clone, Debug)]
struct Incoming {
    from: usize,
    slot: Slot,
    data: Vec<u8>,
    last_progress: Micros,
}

#[derive(Clone, Debug)]
enum Event {
    Tick(usize),
    /// A packet arrives. Endpoints are node indexes, or `CLIENT` + index.
    Deliver {
        from: usize,
        to: usize,
        packet: Packet,
    },
    /// Disk writes of `node` made before `epoch`'s crash complete up to batch `id`.
    Synced {
        node: usize,
        epoch: u64,
        id: u64,
    },
    Restart(usize),
    Fault,
    Calm,
    ClientStart(usize),
    ClientTimeout {
        client: usize,
        seq: u64,
        attempt: u32,
    },
}

/// Client endpoints are numbered from here, nodes from 0.
const CLIENT: usize = 1 << 20;

/// What a node's Ready asked for that waits for its records to be durable.
struct Batch {
    id: u64,
    records: Vec<Record>,
    /// The number of the batch's last record, reported to the replica once
    /// the batch is durable.
    records_end: RecordNo,
    /// Messages that report what the records say.
    messages: Vec<(NodeId, Message)>,
}

struct Node {
    up: bool,
    /// Increments on every crash, so that stale disk completions are ignored.
    epoch: u64,
    config: Config,
    replica: Replica,
    disk: Durable,
    unsynced: VecDeque<Batch>,
    next_batch: u64,
    /// When the disk will have synced everything written so far.
    disk_busy_until: Micros,
    store: Store,
    /// The last slot applied to `store`.
    applied: Slot,
    /// Writes waiting to be applied here: (client, seq) -> client index.
    waiting_writes: BTreeMap<(u64, u64), usize>,
    /// Reads waiting for their read index: ctx -> (client index, seq, key).
    waiting_reads: BTreeMap<u64, (usize, u64, Bytes)>,
    next_ctx: u64,
    /// This node's clock rate, in parts per million away from real time.
    drift: i64,
    /// The durable snapshot: the slot it holds everything up to, and its bytes.
    snapshot: Option<(Slot, Bytes)>,
    /// Snapshot every this many applied slots (0: never).
    snapshot_every: u64,
    incoming: Option<Incoming>,
    crash_at: Option<CrashPoint>,
    /// The disk was damaged in the last crash.
    damaged: bool,
}

struct Pending {
    id: OpId,
    op: Op,
    key: String,
    seq: u64,
    attempt: u32,
}

struct Client {
    /// The process id in the history; a new one after an indeterminate op.
    process: u64,
    /// The session id the state machine deduplicates by.
    session: u64,
    seq: u64,
    node: usize,
    pending: Option<Pending>,
    done: usize,
    /// The last value this client saw per key (for plausible CAS).
    seen: BTreeMap<String, String>,
}

const ATTEMPTS_MAX: u32 = 6;
/// A client waits between these for an answer before it tries elsewhere.
const CLIENT_TIMEOUT: (Micros, Micros) = (40_000, 200_000);

struct Sim<'a> {
    config: &'a KvSimConfig,
    rng: Rng,
    now: Micros,
    seq: u64,
    queue: BinaryHeap<Reverse<(Micros, u64, usize)>>,
    events: BTreeMap<usize, Event>,
    next_event: usize,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    /// Directed links that drop everything.
    cut: BTreeSet<(usize, usize)>,
    calm: bool,
    calm_since: Micros,
    /// The value every replica applied in each slot (by its description).
    applied_values: BTreeMap<Slot, String>,
    history: History,
    ops_started: usize,
    acked: usize,
    acked_in_calm: usize,
    next_process: u64,
    violation: Option<String>,
    undecided: Vec<String>,
    trace: Trace,
    disk: DiskEvents,
}

/// Runs seed `seed` of `config`.
pub fn run(config: &KvSimConfig, seed: u64, keep_trace: bool) -> KvRun {
    assert!(config.nodes >= 1 && config.clients >= 1 && config.keys >= 1);
    let mut rng = Rng::new(seed);
    let members: Vec<NodeId> = (1..=config.nodes as NodeId).collect();
    let mut nodes = Vec::new();
    for i in 0..config.nodes {
        let mut c = Config::new(i as NodeId + 1, members.clone());
        c.seed = rng.next_u64();
        c.drift_ppm = if config.bug == Some(KvBug::LeaseWithoutDriftWait) {
            0
        } else {
            config.drift_ppm
        };
        c.election_ticks = 20;
        c.lease_ticks = 19;
        c.inflight_slots_max = 16;
        c.batch_commands_max = 64;
        // Clocks at the edges of the bound are the most adversarial: most
        // nodes run as fast or as slow as the bound allows.
        let span = config.drift_ppm as i64;
        let drift = match rng.below(4) {
            0 => span,
            1 => -span,
            _ => rng.between(0, 2 * span as u64) as i64 - span,
        };
        let replica = Replica::new(c.clone()).expect("the simulator's config is valid");
        nodes.push(Node {
            up: true,
            epoch: 0,
            config: c,
            replica,
            disk: Durable::default(),
            unsynced: VecDeque::new(),
            next_batch: 0,
            disk_busy_until: 0,
            store: Store::new(),
            applied: Slot::ZERO,
            waiting_writes: BTreeMap::new(),
            waiting_reads: BTreeMap::new(),
            next_ctx: 1,
            drift,
            snapshot: None,
            snapshot_every: if config.snapshots {
                rng.between(4, 40)
            } else {
                0
            },
            incoming: None,
            crash_at: None,
            damaged: false,
        });
    }
    let clients = (0..config.clients)
        .map(|i| Client {
            process: i as u64,
            session: i as u64 + 1,
            seq: 0,
            node: i % config.nodes,
            pending: None,
            done: 0,
            seen: BTreeMap::new(),
        })
        .collect();
    let mut sim = Sim {
        config,
        rng,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: BTreeMap::new(),
        next_event: 0,
        nodes,
        clients,
        cut: BTreeSet::new(),
        calm: false,
        calm_since: 0,
        applied_values: BTreeMap::new(),
        history: History::new(),
        ops_started: 0,
        acked: 0,
        acked_in_calm: 0,
        next_process: config.clients as u64,
        violation: None,
        undecided: Vec::new(),
        trace: Trace::new(keep_trace),
        disk: DiskEvents::default(),
    };
    sim.start();
    let calm_end = config.chaos_ms * 1000 + 30_000_000;
    while let Some(Reverse((time, _, id))) = sim.queue.pop() {
        let Some(event) = sim.events.remove(&id) else {
            continue;
        };
        if time > calm_end || sim.violation.is_some() || sim.finished() {
            break;
        }
        sim.now = time;
        sim.handle(event);
    }
    sim.finish();
    let slots_applied = sim
        .applied_values
        .keys()
        .next_back()
        .copied()
        .unwrap_or(Slot::ZERO);
    KvRun {
        seed,
        ops: sim.ops_started,
        acked: sim.acked,
        slots_applied,
        violation: sim.violation,
        undecided: sim.undecided,
        history: sim.history,
        trace: sim.trace,
        disk: sim.disk,
    }
}

impl Sim<'_> {
    fn at(&mut self, delay: Micros, event: Event) {
        self.seq += 1;
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.queue.push(Reverse((self.now + delay, self.seq, id)));
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        let text = line();
        let now = self.now;
        self.trace
            .record(format!("{:>6}.{:03}ms {text}", now / 1000, now % 1000));
    }

    fn fail(&mut self, why: String) {
        self.log(|| format!("VIOLATION {why}"));
        self.violation.get_or_insert(why);
    }

    fn start(&mut self) {
        for n in 0..self.nodes.len() {
            let first = self.rng.between(1, TICK);
            self.at(first, Event::Tick(n));
        }
        for c in 0..self.clients.len() {
            let first = self.rng.between(100_000, 600_000);
            self.at(first, Event::ClientStart(c));
        }
        if self.config.partitions || self.config.crashes {
            let first = self.rng.between(100_000, 500_000);
            self.at(first, Event::Fault);
        }
        self.at(self.config.chaos_ms * 1000, Event::Calm);
    }

    fn finished(&self) -> bool {
        self.ops_started >= self.config.ops && self.clients.iter().all(|c| c.pending.is_none())
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick(n) => self.tick(n),
            Event::Deliver { from, to, packet } => self.deliver(from, to, packet),
            Event::Synced { node, epoch, id } => self.synced(node, epoch, id),
            Event::Restart(n) => self.restart(n),
            Event::Fault => self.fault(),
            Event::Calm => self.start_calm(),
            Event::ClientStart(c) => self.client_next(c),
            Event::ClientTimeout {
                client,
                seq,
                attempt,
            } => self.client_timeout(client, seq, attempt),
        }
    }

    // ----- nodes ---------------------------------------------------------

    fn tick(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        // The node's own clock: a fast clock ticks more often.
        let period = (TICK as i64 * 1_000_000 / (1_000_000 + node.drift)) as Micros;
        if node.up {
            node.replica.tick();
            self.collect(n);
            self.retry_snapshot(n);
        }
        self.at(period, Event::Tick(n));
    }

    /// Takes the node's Ready and writes its records. Messages that report
    /// them wait until they are durable; everything else happens at once:
    /// accepts, heartbeats and commit points leave, chosen entries are
    /// applied and reads answered.
    fn collect(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let ready = node.replica.take_ready();
        if ready.is_empty() {
            return;
        }
        if let Some((peer, _)) = ready.snapshot_needed {
            self.start_snapshot_fetch(n, peer as usize - 1);
        }
        if ready.records.contains(&Record::Resume) {
            self.disk.rejoined += 1;
            self.log(|| format!("node {} finished rejoining and votes again", n + 1));
        }
        let (waiting, now) = (ready.persisted_messages, ready.messages);
        let node = &mut self.nodes[n];
        if self.config.bug == Some(KvBug::PersistedBeforeSync) {
            // The leader now counts its own votes on records a crash may
            // still take back.
            node.replica.persisted(ready.records_end);
        }
        if !ready.records.is_empty() || !waiting.is_empty() {
            let id = node.next_batch;
            node.next_batch += 1;
            let has_records = !ready.records.is_empty();
            node.unsynced.push_back(Batch {
                id,
                records: ready.records,
                records_end: ready.records_end,
                messages: waiting,
            });
            let epoch = node.epoch;
            // Group commit: one sync covers every batch written before it
            // starts. Now and then the disk stalls, for longer than a
            // message takes to go and come back.
            let latency = if !has_records {
                0
            } else if self.rng.chance(0.15) {
                self.rng.between(2_000, 30_000)
            } else {
                self.rng.between(50, 600)
            };
            let done = node.disk_busy_until.max(self.now) + latency;
            node.disk_busy_until = done;
            self.at(done - self.now, Event::Synced { node: n, epoch, id });
        }
        for (to, message) in now {
            self.send(n, to as usize - 1, Packet::Peer(message));
        }
        for (slot, value) in ready.committed {
            if slot > self.nodes[n].applied {
                self.apply(n, slot, &value);
            }
            if self.violation.is_some() {
                return;
            }
        }
        self.maybe_snapshot(n);
        if !self.nodes[n].up {
            return; // crashed right after saving the snapshot
        }
        for read in ready.reads {
            if let Some((client, seq, key)) = self.nodes[n].waiting_reads.remove(&read.ctx) {
                let reply = self.nodes[n].store.read(&Command::Get(key));
                self.send(n, CLIENT + client, Packet::Reply { client, seq, reply });
            }
        }
        for ctx in ready.failed_reads {
            if let Some((client, seq, _)) = self.nodes[n].waiting_reads.remove(&ctx) {
                let reply = Reply::error("ERR read could not be confirmed");
                self.send(n, CLIENT + client, Packet::Reply { client, seq, reply });
            }
        }
    }

    fn synced(&mut self, n: usize, epoch: u64, id: u64) {
        if self.nodes[n].epoch != epoch || !self.nodes[n].up {
            return; // the writes died with a crash
        }
        while self.nodes[n].unsynced.front().is_some_and(|b| b.id <= id) {
            let Some(batch) = self.nodes[n].unsynced.pop_front() else {
                break;
            };
            if let Some(point) = self.nodes[n].crash_at {
                // The sync completed, or tore part-way; either way the node
                // dies before acting on it.
                let kept = match point {
                    CrashPoint::DuringSync => {
                        self.rng.below(batch.records.len().max(1) as u64) as usize
                    }
                    _ => batch.records.len(),
                };
                if !matches!(point, CrashPoint::AfterSnapshot) {
                    for record in &batch.records[..kept] {
                        self.nodes[n].disk.apply(record);
                    }
                    let total = batch.records.len();
                    self.disk.boundary_crashes += 1;
                    if kept < total {
                        self.disk.torn_writes += 1;
                    }
                    // The log is a prefix: what was written after this
                    // batch cannot have landed when part of it did not.
                    self.nodes[n].unsynced.clear();
                    self.log(|| {
                        format!(
                            "node {} crashes {point:?}, {kept} of {total} records kept",
                            n + 1
                        )
                    });
                    self.crash_and_restart_later(n);
                    return;
                }
            }
            self.release(n, batch);
            if self.violation.is_some() || !self.nodes[n].up {
                return;
            }
        }
        // Records made durable may have chosen slots (the leader's own
        // votes count only now).
        self.collect(n);
    }

    /// The batch's records are durable: the replica hears so, and the
    /// messages that report them may leave.
    fn release(&mut self, n: usize, batch: Batch) {
        for record in &batch.records {
            self.nodes[n].disk.apply(record);
            if self.config.bug == Some(KvBug::ApplyBeforeChosen)
                && let Record::Accept { slot, value, .. } = record
                && *slot == self.nodes[n].applied + 1
            {
                let (slot, value) = (*slot, value.clone());
                self.apply(n, slot, &value);
            }
        }
        self.nodes[n].replica.persisted(batch.records_end);
        for (to, message) in batch.messages {
            if let Some(why) = uncovered(&self.nodes[n].disk, &message) {
                self.fail(format!(
                    "node {} sent {message} before it was durable: {why}",
                    n + 1
                ));
                return;
            }
            self.send(n, to as usize - 1, Packet::Peer(message));
        }
    }

    fn apply(&mut self, n: usize, slot: Slot, value: &Value) {
        let description = describe(value);
        match self.applied_values.get(&slot) {
            Some(other) if *other != description => {
                self.fail(format!(
                    "slot {slot}: node {} applies {description}, another node applied {other}",
                    n + 1
                ));
                return;
            }
            Some(_) => {}
            None => {
                self.applied_values.insert(slot, description);
            }
        }
        self.nodes[n].applied = slot;
        for (i, command) in value.commands().iter().enumerate() {
            let Ok(mut request) = Request::decode(command) else {
                continue;
            };
            let key = (request.client, request.seq);
            if self.config.bug == Some(KvBug::RetryAppliedTwice) {
                request.client = 0;
            }
            let node = &mut self.nodes[n];
            let reply = node.store.apply((slot.0 << 16) | i as u64, &request);
            if let Some(client) = node.waiting_writes.remove(&key) {
                let seq = key.1;
                self.send(n, CLIENT + client, Packet::Reply { client, seq, reply });
            }
        }
    }

    fn crash(&mut self, n: usize) {
        if !self.nodes[n].up {
            return;
        }
        self.log(|| format!("node {} crashes", n + 1));
        // The write in progress may be torn: the log keeps a prefix of its
        // records (the torn tail is cut on recovery).
        if self.rng.chance(self.config.torn) {
            let total: usize = self.nodes[n].unsynced.iter().map(|b| b.records.len()).sum();
            let kept = self.rng.below(total as u64 + 1) as usize;
            if kept > 0 {
                let records: Vec<Record> = self.nodes[n]
                    .unsynced
                    .iter()
                    .flat_map(|b| b.records.iter().cloned())
                    .take(kept)
                    .collect();
                for record in &records {
                    self.nodes[n].disk.apply(record);
                }
                self.disk.torn_writes += 1;
                self.log(|| {
                    format!(
                        "node {} tore its last write after {kept} of {total} records",
                        n + 1
                    )
                });
            }
        }
        // A flipped bit the checksums will catch, on at most one node at a
        // time.
        let others_whole = (0..self.nodes.len())
            .filter(|&o| o != n)
            .all(|o| !self.nodes[o].damaged && !self.nodes[o].disk.rejoining);
        if others_whole && self.rng.chance(self.config.corrupt) {
            self.nodes[n].damaged = true;
            self.disk.damaged += 1;
            self.log(|| format!("node {} has a damaged disk", n + 1));
        }
        let node = &mut self.nodes[n];
        node.up = false;
        node.epoch += 1;
        node.unsynced.clear();
        node.waiting_writes.clear();
        node.waiting_reads.clear();
        node.incoming = None;
        node.crash_at = None;
    }

    fn crash_and_restart_later(&mut self, n: usize) {
        self.crash(n);
        let down = self.rng.between(50_000, 1_500_000);
        self.at(down, Event::Restart(n));
    }

    fn restart(&mut self, n: usize) {
        if self.nodes[n].up {
            return;
        }
        let bug = self.config.bug;
        let node = &mut self.nodes[n];
        let config = node.config.clone();
        if node.damaged {
            // Recovery finds a bad checksum and stops; the operator moves
            // the damaged data aside and starts the node rejoining, which
            // writes its rejoin mark before anything else.
            node.damaged = false;
            node.snapshot = None;
            node.store = Store::new();
            node.applied = Slot::ZERO;
            if bug == Some(KvBug::RejoinVotesAtOnce) {
                node.disk = Durable::default();
                node.replica = Replica::new(config).expect("the simulator's config is valid");
            } else {
                node.disk = Durable {
                    rejoining: true,
                    ..Durable::default()
                };
                node.replica = Replica::rejoin(config).expect("the simulator's config is valid");
            }
            self.log(|| format!("node {} restarts empty and rejoins", n + 1));
        } else {
            let (applied, store) = match &node.snapshot {
                Some((slot, bytes)) => match Store::restore_from(&mut &bytes[..]) {
                    Ok(store) => (*slot, store),
                    Err(e) => panic!("node {}: own snapshot unreadable: {e}", n + 1),
                },
                None => (Slot::ZERO, Store::new()),
            };
            node.replica = Replica::restore(config, node.disk.clone(), applied)
                .expect("the simulator's config is valid");
            node.store = store;
            node.applied = applied;
            self.log(|| format!("node {} restarts from snapshot at slot {applied}", n + 1));
        }
        let node = &mut self.nodes[n];
        node.up = true;
        node.disk_busy_until = self.now;
    }

    // ----- snapshots -----------------------------------------------------

    /// Saves a snapshot every few slots and lets the replica compact.
    fn maybe_snapshot(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let last = node.snapshot.as_ref().map_or(Slot::ZERO, |(slot, _)| *slot);
        if node.snapshot_every == 0 || node.applied < last + node.snapshot_every {
            return;
        }
        let mut bytes = Vec::new();
        if node.store.snapshot_to(&mut bytes).is_err() {
            return;
        }
        // Saved atomically (temp file, sync, rename): durable at once.
        let slot = node.applied;
        node.snapshot = Some((slot, Bytes::from(bytes)));
        self.disk.snapshots += 1;
        if let Some(CrashPoint::AfterSnapshot) = node.crash_at {
            self.disk.boundary_crashes += 1;
            self.log(|| format!("node {} crashes right after a snapshot at {slot}", n + 1));
            self.crash_and_restart_later(n);
            return;
        }
        node.replica.compact(slot);
        self.collect(n);
    }

    /// The replica needs slots a peer compacted: fetch the peer's snapshot,
    /// unless a fetch is already making progress.
    fn start_snapshot_fetch(&mut self, n: usize, peer: usize) {
        let node = &mut self.nodes[n];
        if node
            .incoming
            .as_ref()
            .is_some_and(|i| self.now < i.last_progress + 200_000)
        {
            return;
        }
        node.incoming = Some(Incoming {
            from: peer,
            slot: Slot::ZERO,
            data: Vec::new(),
            last_progress: self.now,
        });
        self.send(
            n,
            peer,
            Packet::SnapshotRequest {
                slot: Slot::ZERO,
                offset: 0,
            },
        );
    }

    /// Asks again for the next chunk when the last one seems lost.
    fn retry_snapshot(&mut self, n: usize) {
        let Some(incoming) = &self.nodes[n].incoming else {
            return;
        };
        if self.now < incoming.last_progress + 50_000 {
            return;
        }
        let (from, slot, offset) = (incoming.from, incoming.slot, incoming.data.len());
        if let Some(i) = &mut self.nodes[n].incoming {
            i.last_progress = self.now;
        }
        self.send(n, from, Packet::SnapshotRequest { slot, offset });
    }

    /// A peer asks for a chunk of our snapshot.
    fn serve_snapshot(&mut self, n: usize, to: usize, slot: Slot, offset: usize) {
        let Some((have, bytes)) = &self.nodes[n].snapshot else {
            return;
        };
        // A newer snapshot replaces the one asked for: start it over.
        let offset = if slot == *have { offset } else { 0 };
        let end = (offset + CHUNK_BYTES).min(bytes.len());
        if offset > end {
            return;
        }
        let chunk = Packet::SnapshotChunk {
            slot: *have,
            offset,
            total: bytes.len(),
            data: bytes.slice(offset..end),
        };
        self.send(n, to, chunk);
    }

    /// A chunk arrives: keep it if it is the next one, install when whole.
    fn on_snapshot_chunk(
        &mut self,
        n: usize,
        from: usize,
        slot: Slot,
        offset: usize,
        total: usize,
        data: Bytes,
    ) {
        let now = self.now;
        let Some(incoming) = &mut self.nodes[n].incoming else {
            return;
        };
        if incoming.slot != slot {
            if offset != 0 {
                return;
            }
            incoming.slot = slot;
            incoming.data.clear();
        }
        if offset != incoming.data.len() {
            return; // a duplicate or out of order: the retry asks again
        }
        incoming.from = from;
        incoming.data.extend_from_slice(&data);
        incoming.last_progress = now;
        if incoming.data.len() < total {
            let next = incoming.data.len();
            self.send(n, from, Packet::SnapshotRequest { slot, offset: next });
            return;
        }
        let Some(incoming) = self.nodes[n].incoming.take() else {
            return;
        };
        let bytes = Bytes::from(incoming.data);
        let store = match Store::restore_from(&mut &bytes[..]) {
            Ok(store) => store,
            Err(e) => {
                self.fail(format!(
                    "node {}: a transferred snapshot is unreadable: {e}",
                    n + 1
                ));
                return;
            }
        };
        let node = &mut self.nodes[n];
        if slot <= node.replica.status().commit {
            return; // caught up meanwhile
        }
        self.log(|| {
            format!(
                "node {} installs the snapshot at slot {slot} from node {}",
                n + 1,
                from + 1
            )
        });
        self.disk.installs += 1;
        let node = &mut self.nodes[n];
        node.store = store;
        node.snapshot = Some((slot, bytes));
        node.applied = slot;
        node.replica.install_snapshot(slot);
        self.collect(n);
    }

    // ----- network -------------------------------------------------------

    fn send(&mut self, from: usize, to: usize, packet: Packet) {
        let lossy = !self.calm;
        if lossy && self.rng.chance(self.config.loss) {
            return;
        }
        let copies = if lossy && self.rng.chance(self.config.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.rng.chance(0.05) {
                self.rng.between(3_000, 40_000)
            } else {
                self.rng.between(100, 3_000)
            };
            self.at(
                delay,
                Event::Deliver {
                    from,
                    to,
                    packet: packet.clone(),
                },
            );
        }
    }

    fn deliver(&mut self, from: usize, to: usize, packet: Packet) {
        let node_of = |e: usize| (e < CLIENT).then_some(e);
        if let (Some(a), Some(b)) = (node_of(from), node_of(to))
            && self.cut.contains(&(a, b))
        {
            return;
        }
        if to >= CLIENT {
            if let Packet::Reply { client, seq, reply } = packet {
                self.client_reply(client, seq, reply);
            }
            return;
        }
        if !self.nodes[to].up {
            return;
        }
        match packet {
            Packet::Peer(mut message) => {
                if self.config.bug == Some(KvBug::IgnorePromisedValues)
                    && let Message::Promise { entries, .. } = &mut message
                {
                    entries.retain(|e| e.chosen);
                }
                self.log(|| format!("{} -> {} {message}", from + 1, to + 1));
                self.nodes[to].replica.step(from as NodeId + 1, message);
                self.collect(to);
            }
            Packet::Request { client, seq } => self.node_request(to, client, seq),
            Packet::Reply { .. } => {}
            Packet::SnapshotRequest { slot, offset } => self.serve_snapshot(to, from, slot, offset),
            Packet::SnapshotChunk {
                slot,
                offset,
                total,
                data,
            } => self.on_snapshot_chunk(to, from, slot, offset, total, data),
        }
    }

    /// A client's request reaches node `n`.
    fn node_request(&mut self, n: usize, client: usize, seq: u64) {
        let Some(pending) = &self.clients[client].pending else {
            return;
        };
        if pending.seq != seq {
            return;
        }
        let session = self.clients[client].session;
        let key = Bytes::from(pending.key.clone());
        let command = match &pending.op {
            Op::Read => None,
            Op::Write(v) => Some(Command::Set {
                key: key.clone(),
                value: Bytes::from(v.clone()),
                condition: SetCondition::None,
                get: false,
            }),
            Op::Cas { expected, new } => Some(Command::Cas {
                key: key.clone(),
                expected: expected.clone().map(Bytes::from),
                new: Bytes::from(new.clone()),
            }),
            Op::Incr(delta) => Some(Command::IncrBy {
                key: key.clone(),
                delta: *delta,
            }),
        };
        let node = &mut self.nodes[n];
        let result = match command {
            None => {
                if self.config.bug == Some(KvBug::ReadWithoutConfirmation)
                    && node.replica.status().role == paxos::replica::RoleName::Leader
                {
                    let reply = node.store.read(&Command::Get(key));
                    self.send(n, CLIENT + client, Packet::Reply { client, seq, reply });
                    return;
                }
                let ctx = node.next_ctx;
                node.next_ctx += 1;
                node.waiting_reads.insert(ctx, (client, seq, key));
                node.replica.read_index(ctx)
            }
            Some(command) => {
                let request = Request {
                    client: session,
                    seq,
                    ack_below: seq,
                    command,
                };
                node.waiting_writes.insert((session, seq), client);
                node.replica.propose(request.encode())
            }
        };
        if let Err(e) = result {
            let node = &mut self.nodes[n];
            node.waiting_writes.remove(&(session, seq));
            node.waiting_reads
                .retain(|_, (c, s, _)| !(*c == client && *s == seq));
            let reply = Reply::Error(format!("CLUSTERDOWN {e}"));
            self.send(n, CLIENT + client, Packet::Reply { client, seq, reply });
        }
        self.collect(n);
    }

    // ----- faults --------------------------------------------------------

    fn fault(&mut self) {
        if self.calm {
            return;
        }
        let n = self.nodes.len();
        let choice = self.rng.below(10);
        match choice {
            7 if self.config.drift_ppm > 0 => {
                // Clock skew at the edges of the bound: the leader's clock
                // runs as slow as allowed and everyone else's as fast, so a
                // lease the leader trusts for too long shows.
                let span = self.config.drift_ppm as i64;
                for i in 0..n {
                    let leads = self.nodes[i].up
                        && self.nodes[i].replica.status().role == paxos::replica::RoleName::Leader;
                    self.nodes[i].drift = if leads { -span } else { span };
                }
                self.log(|| "clocks skewed: leaders slow, others fast".to_owned());
            }
            5 | 8 if self.config.partitions => {
                // Cut whoever leads from everyone else: the deposed leader
                // is where stale reads and lost writes come from.
                let leader = (0..n).find(|&i| {
                    self.nodes[i].up
                        && self.nodes[i].replica.status().role == paxos::replica::RoleName::Leader
                });
                self.cut.clear();
                if let Some(l) = leader {
                    for other in (0..n).filter(|&o| o != l) {
                        self.cut.insert((l, other));
                        self.cut.insert((other, l));
                    }
                    self.log(|| format!("leader {} isolated", l + 1));
                }
            }
            0 | 1 if self.config.crashes => {
                // Half the time the leader: its crash, with its own records
                // still on their way to a slow disk, is where a vote counted
                // too early would show.
                let leader = (0..n).find(|&i| {
                    self.nodes[i].up
                        && self.nodes[i].replica.status().role == paxos::replica::RoleName::Leader
                });
                let victim = match leader {
                    Some(l) if self.rng.chance(0.5) => l,
                    _ => self.rng.below(n as u64) as usize,
                };
                self.crash_and_restart_later(victim);
            }
            9 if self.config.crashes => {
                // A crash exactly on a boundary: after a sync, or after a
                // snapshot is saved.
                let victim = self.rng.below(n as u64) as usize;
                let point = match self.rng.below(3) {
                    0 => CrashPoint::AfterSync,
                    1 => CrashPoint::DuringSync,
                    _ => CrashPoint::AfterSnapshot,
                };
                if self.nodes[victim].up {
                    self.nodes[victim].crash_at = Some(point);
                    self.log(|| format!("node {} will crash {point:?}", victim + 1));
                }
            }
            2 if self.config.partitions => {
                // Symmetric: a random minority or majority side.
                self.cut.clear();
                let side: Vec<bool> = (0..n).map(|_| self.rng.chance(0.5)).collect();
                for a in 0..n {
                    for b in 0..n {
                        if side[a] != side[b] {
                            self.cut.insert((a, b));
                        }
                    }
                }
                self.log(|| format!("partition {side:?}"));
            }
            3 if self.config.partitions => {
                // Asymmetric: one node hears nobody, or nobody hears it.
                self.cut.clear();
                let victim = self.rng.below(n as u64) as usize;
                let deaf = self.rng.chance(0.5);
                for other in 0..n {
                    if other != victim {
                        self.cut.insert(if deaf {
                            (other, victim)
                        } else {
                            (victim, other)
                        });
                    }
                }
                self.log(|| {
                    format!(
                        "node {} is {}",
                        victim + 1,
                        if deaf { "deaf" } else { "mute" }
                    )
                });
            }
            4 if self.config.partitions && n >= 3 => {
                // Partial: one link is cut both ways; both ends still reach
                // the others.
                self.cut.clear();
                let a = self.rng.below(n as u64) as usize;
                let b = (a + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                self.cut.insert((a, b));
                self.cut.insert((b, a));
                self.log(|| format!("link {}-{} cut", a + 1, b + 1));
            }
            _ => {
                self.cut.clear();
                self.log(|| "network healed".to_owned());
            }
        }
        let next = self.rng.between(100_000, 600_000);
        self.at(next, Event::Fault);
    }

    fn start_calm(&mut self) {
        self.log(|| "calm: network healed, every node up".to_owned());
        self.calm = true;
        self.calm_since = self.now;
        self.cut.clear();
        for n in 0..self.nodes.len() {
            self.nodes[n].crash_at = None;
            self.restart(n);
        }
    }

    // ----- clients -------------------------------------------------------

    fn client_next(&mut self, c: usize) {
        if self.clients[c].pending.is_some() || self.ops_started >= self.config.ops {
            return;
        }
        self.ops_started += 1;
        let key = format!("k{}", self.rng.below(self.config.keys as u64));
        let unique = (c as u64 + 1) * 1_000_000 + self.clients[c].done as u64;
        let op = match self.rng.below(10) {
            0..=3 => Op::Read,
            4..=6 => Op::Write(unique.to_string()),
            7 | 8 => Op::Cas {
                expected: self.clients[c].seen.get(&key).cloned(),
                new: unique.to_string(),
            },
            _ => Op::Incr(self.rng.between(1, 5) as i64),
        };
        // Like clients behind a load balancer, some operations go to any node.
        if self.rng.chance(0.5) {
            self.clients[c].node = self.rng.below(self.nodes.len() as u64) as usize;
        }
        let client = &mut self.clients[c];
        client.seq += 1;
        let seq = client.seq;
        let id = self
            .history
            .invoke(client.process, op.clone(), key.clone(), self.now * 1000);
        client.pending = Some(Pending {
            id,
            op,
            key,
            seq,
            attempt: 0,
        });
        self.client_send(c);
    }

    fn client_send(&mut self, c: usize) {
        let client = &self.clients[c];
        let Some(p) = &client.pending else {
            return;
        };
        let (seq, attempt, node) = (p.seq, p.attempt, client.node);
        self.send(CLIENT + c, node, Packet::Request { client: c, seq });
        let timeout = self.rng.between(CLIENT_TIMEOUT.0, CLIENT_TIMEOUT.1);
        self.at(
            timeout,
            Event::ClientTimeout {
                client: c,
                seq,
                attempt,
            },
        );
    }

    /// Tries the same request again at the next node, or gives up on it.
    fn client_retry(&mut self, c: usize) {
        let nodes = self.nodes.len();
        let client = &mut self.clients[c];
        client.node = (client.node + 1) % nodes;
        let Some(p) = &mut client.pending else {
            return;
        };
        p.attempt += 1;
        if p.attempt < ATTEMPTS_MAX {
            self.client_send(c);
            return;
        }
        // Indeterminate: it may still take effect. The process is done; the
        // client carries on as a new one.
        let Some(p) = client.pending.take() else {
            return;
        };
        let outcome = if p.op == Op::Read {
            Outcome::Fail
        } else {
            Outcome::Info
        };
        let _ = self.history.complete(p.id, outcome, self.now * 1000);
        client.process = self.next_process;
        self.next_process += 1;
        client.done += 1;
        let think = self.rng.between(1_000, 50_000);
        self.at(think, Event::ClientStart(c));
    }

    fn client_timeout(&mut self, c: usize, seq: u64, attempt: u32) {
        let current = self.clients[c]
            .pending
            .as_ref()
            .is_some_and(|p| p.seq == seq && p.attempt == attempt);
        if current {
            self.client_retry(c);
        }
    }

    fn client_reply(&mut self, c: usize, seq: u64, reply: Reply) {
        let Some(p) = &self.clients[c].pending else {
            return;
        };
        if p.seq != seq {
            return; // a late answer to an operation already finished
        }
        if let Reply::Error(text) = &reply
            && (text.starts_with("CLUSTERDOWN") || text.starts_with("ERR read"))
        {
            // Not taken here; the request may have been taken by an earlier
            // attempt elsewhere, so retrying with the same seq is the only
            // safe move.
            let attempt = p.attempt;
            let backoff = self.rng.between(20_000, 100_000);
            self.at(
                backoff,
                Event::ClientTimeout {
                    client: c,
                    seq,
                    attempt,
                },
            );
            return;
        }
        let outcome = match (&p.op, &reply) {
            (Op::Read, Reply::Bulk(v)) => {
                Outcome::Ok(Ret::Read(Some(String::from_utf8_lossy(v).into_owned())))
            }
            (Op::Read, Reply::Nil) => Outcome::Ok(Ret::Read(None)),
            (Op::Write(_), Reply::Status(_)) => Outcome::Ok(Ret::Write),
            (Op::Cas { .. }, Reply::Integer(1)) => Outcome::Ok(Ret::Cas),
            (Op::Cas { .. }, Reply::Integer(0)) => Outcome::Fail,
            (Op::Incr(_), Reply::Integer(n)) => Outcome::Ok(Ret::Incr(*n)),
            (Op::Incr(_), Reply::Error(_)) => Outcome::Fail,
            (op, reply) => {
                let why = format!("client {c}: unexpected reply {reply:?} to {op:?}");
                self.fail(why);
                return;
            }
        };
        let Some(p) = self.clients[c].pending.take() else {
            return;
        };
        match (&p.op, &outcome) {
            (Op::Read, Outcome::Ok(Ret::Read(Some(v)))) | (Op::Write(v), Outcome::Ok(_)) => {
                self.clients[c].seen.insert(p.key.clone(), v.clone());
            }
            (Op::Cas { new, .. }, Outcome::Ok(_)) => {
                self.clients[c].seen.insert(p.key.clone(), new.clone());
            }
            _ => {}
        }
        if matches!(outcome, Outcome::Ok(_)) {
            self.acked += 1;
            if self.calm {
                self.acked_in_calm += 1;
            }
        }
        let _ = self.history.complete(p.id, outcome, self.now * 1000);
        self.clients[c].done += 1;
        let think = self.rng.between(1_000, 50_000);
        self.at(think, Event::ClientStart(c));
    }

    // ----- the verdict ---------------------------------------------------

    fn finish(&mut self) {
        if self.violation.is_some() {
            return;
        }
        // Operations still open at the end are indeterminate.
        for c in 0..self.clients.len() {
            if let Some(p) = self.clients[c].pending.take() {
                let outcome = if p.op == Op::Read {
                    Outcome::Fail
                } else {
                    Outcome::Info
                };
                let _ = self.history.complete(p.id, outcome, self.now * 1000);
            }
        }
        if self.calm && self.acked_in_calm == 0 && self.ops_started < self.config.ops {
            self.fail(format!(
                "no progress: nothing completed in {} ms of calm",
                (self.now - self.calm_since) / 1000
            ));
            return;
        }
        if !self.finished() && self.ops_started < self.config.ops {
            self.fail(format!(
                "no progress: only {} of {} operations were started",
                self.ops_started, self.config.ops
            ));
            return;
        }
        let verdict = check::check_history(&self.history, &check::Options::default());
        if let Some(v) = verdict.violation {
            let mut why = String::from("history is not linearizable: ");
            let _ = write!(why, "{v}");
            self.fail(why);
        } else {
            self.undecided = verdict.unknown_keys;
        }
    }
}

/// A value as the agreement check compares it.
fn describe(value: &Value) -> String {
    match value {
        Value::Noop => "noop".to_owned(),
        Value::Batch(commands) => {
            let mut h: u64 = 0xCBF2_9CE4_8422_2325;
            for c in commands {
                for b in c.iter().chain(b"|") {
                    h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01B3);
                }
            }
            format!("batch of {} ({h:016x})", commands.len())
        }
    }
}

/// Why `message` reports something `durable` does not hold, if it does.
fn uncovered(durable: &Durable, message: &Message) -> Option<String> {
    match message {
        Message::Promise { ballot, .. } | Message::HeartbeatAck { ballot, .. }
            if durable.promised < *ballot =>
        {
            Some(format!("promised {} on disk", durable.promised))
        }
        Message::Accepted { ballot, slots } => slots
            .iter()
            .find(|slot| {
                **slot > durable.commit
                    && durable.accepted.get(slot).is_none_or(|(b, _)| b != ballot)
            })
            .map(|slot| format!("slot {slot} not accepted in {ballot} on disk")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_bit_for_bit() {
        let config = KvSimConfig {
            ops: 60,
            ..KvSimConfig::default()
        };
        for seed in 0..3 {
            let a = run(&config, seed, true);
            let b = run(&config, seed, false);
            assert_eq!(a.trace.digest(), b.trace.digest(), "seed {seed}");
            assert_eq!(a.acked, b.acked);
        }
    }

    #[test]
    fn seeds_under_full_faults_are_clean() {
        for nodes in [3, 5] {
            let config = KvSimConfig {
                nodes,
                ops: 100,
                ..KvSimConfig::default()
            };
            for seed in 0..40 {
                let r = run(&config, seed, false);
                assert!(
                    r.violation.is_none(),
                    "{nodes} nodes, seed {seed}: {:?}",
                    r.violation
                );
                assert!(
                    r.acked > 0,
                    "{nodes} nodes, seed {seed}: nothing acknowledged"
                );
            }
        }
    }

    #[test]
    fn disk_faults_snapshots_and_rejoins_are_exercised() {
        let config = KvSimConfig::default();
        let mut total = DiskEvents::default();
        for seed in 0..40 {
            let r = run(&config, seed, false);
            assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
            total.add(&r.disk);
        }
        assert!(total.torn_writes > 0, "{total:?}");
        assert!(total.boundary_crashes > 0, "{total:?}");
        assert!(total.damaged > 0, "{total:?}");
        assert!(total.rejoined > 0, "{total:?}");
        assert!(total.snapshots > 0, "{total:?}");
        assert!(total.installs > 0, "{total:?}");
    }

    #[test]
    fn without_faults_everything_is_acknowledged() {
        let config = KvSimConfig {
            loss: 0.0,
            dup: 0.0,
            partitions: false,
            crashes: false,
            ops: 100,
            ..KvSimConfig::default()
        };
        for seed in 0..10 {
            let r = run(&config, seed, false);
            assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
            assert_eq!(r.acked + failed_cas_or_incr(&r.history), 100, "seed {seed}");
        }
    }

    fn failed_cas_or_incr(history: &History) -> usize {
        history
            .operations()
            .iter()
            .filter(|o| matches!(o.outcome(), Outcome::Fail))
            .count()
    }
}
