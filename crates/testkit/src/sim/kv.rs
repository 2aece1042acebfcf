//! A simulated parliament: nodes that run the node's own host
//! (`host::Host`) around `paxos::replica`, clients that behave like real
//! ones, and every fault the network, the disks and the clocks can throw at
//! them. One `u64` seed decides it all.
//!
//! The simulator stands where the node's tokio shell stands: it carries out
//! the host's effects (records to its simulated disk, messages and snapshot
//! frames to its simulated network, snapshot file operations to snapshot
//! files in memory, through the same `host::files::perform` the node uses)
//! and feeds the host its inputs. So every seed exercises the code that
//! decides, in production, when messages leave, what is applied and
//! answered, and how snapshots are taken, sent and installed.
//!
//! # The world
//!
//! Time is in microseconds. Each node ticks its host every 10 ms *by its own
//! clock*, which runs fast or slow by up to the configured drift. Messages
//! between nodes take 0.1 to 3 ms, sometimes much longer (which reorders
//! them), and are lost or duplicated at the configured rates; partitions cut
//! links symmetrically, in one direction only, or between some pairs of
//! nodes. Snapshot frames travel the same way, on links of their own.
//!
//! A node's disk makes records durable a little after they are written, in
//! order, and now and then stalls for longer than a message's round trip.
//! The node goes on meanwhile, as the real one does. A crash loses
//! everything not yet durable, except that it may tear the write in
//! progress, keeping a prefix of its records (what the log keeps after
//! cutting a torn tail). Crashes also land exactly on the boundaries: just
//! after a sync, before anything it released, and just after a snapshot is
//! saved, before the log records the compaction. A crash may damage the disk
//! (a flipped bit the checksums catch): the node then comes back empty and
//! rejoins as a learner, as an operator would start it with `--rejoin`.
//!
//! Nodes snapshot their state machine every few slots and compact the log
//! below; a node that needs slots compacted away fetches a peer's snapshot
//! in small chunks, resuming what its partial file kept when a crash or
//! lost chunks interrupt it. A restarted node loads its newest snapshot and
//! re-applies the log above it.
//!
//! Clients run one operation at a time (read, write, compare-and-swap or
//! increment on a few keys), each on a connection to one node, as a Redis
//! client does. An answer that says the operation was not applied
//! (`CLUSTERDOWN`, `BUSY`, a refused connection) is tried again at another
//! node; an answer that leaves it open (`UNCERTAIN`, a connection lost to a
//! crash) makes it indeterminate, and the client carries on as a new
//! process, as Jepsen's clients do. After the chaos comes a calm phase
//! (network healed, every node up) in which the cluster must make progress
//! again.
//!
//! # Checks
//!
//! - agreement: every replica applies the same value in every slot;
//! - persist before send: a message leaves only once what it reports is
//!   on the simulated disk (checked on every message);
//! - linearizability of the whole client history (which also catches lost
//!   acknowledged writes, stale reads and commands applied twice);
//! - liveness: operations complete in the calm phase.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;
use host::files::{FileDone, FileOp, Performed, perform};
use host::transfer::SnapshotFrame;
use host::{Effects, Flaw, Host, HostConfig, NodeError, ReadMode, SnapshotPolicy, TransferConfig};
use kv::{Command, Reply, SetCondition};
use paxos::NodeId;
use paxos::replica::{
    Change, Config, Durable, Flaw as PaxosFlaw, Membership, Message, Record, RecordNo, RoleName,
    Slot, Value,
};
use paxos::rng::Rng;

use super::files::MemSnapshots;
use super::trace::Trace;
use crate::bugs::Variant;
use crate::check::{self, History, Op, OpId, Outcome, Ret};

/// Microseconds of simulated time.
type Micros = u64;

const TICK: Micros = 10_000;

/// Deliberately broken variants of the replicated database.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum KvBug {
    /// A new leader ignores the accepted values reported in promises.
    IgnorePromisedValues,
    /// A leader answers reads from its state machine without a lease or a
    /// read-index round (a flaw of the host).
    ReadWithoutConfirmation,
    /// Leases are trusted for their full length, not shortened for drift.
    LeaseWithoutDriftWait,
    /// A follower applies a value as soon as it accepts it, before it is
    /// chosen (a flaw of the host).
    ApplyBeforeChosen,
    /// The state machine ignores client sessions, so a write proposed again
    /// is applied again (a flaw of the host).
    RetryAppliedTwice,
    /// A node whose disk was damaged comes back empty and votes at once,
    /// instead of rejoining as a learner.
    RejoinVotesAtOnce,
    /// A node whose data directory was put back from an old copy, started
    /// with `--rejoin`, trusts the copy because its log is whole, and votes
    /// with the promises it made since forgotten.
    RejoinTrustsWholeLog,
    /// The disk tells the host its records are durable as soon as they are
    /// written, so a leader counts its own vote before its disk holds it.
    PersistedBeforeSync,
    /// The host lets messages that report its records leave before the disk
    /// has made them durable.
    HostSendsBeforeDurable,
    /// A replica acts on a membership change it has only proposed or
    /// accepted.
    ConfigBeforeChosen,
    /// Removed members keep voting.
    RemovedStillVotes,
    /// A leader ignores the commit point of a promise it asked for after
    /// its election.
    LatePromiseIgnoresCommit,
    /// A leader takes a membership change while the previous one is
    /// pending, checked against a membership that will never run.
    OverlappingChanges,
}

impl Variant for KvBug {
    const ALL: &'static [KvBug] = &[
        KvBug::IgnorePromisedValues,
        KvBug::ReadWithoutConfirmation,
        KvBug::LeaseWithoutDriftWait,
        KvBug::ApplyBeforeChosen,
        KvBug::RetryAppliedTwice,
        KvBug::RejoinVotesAtOnce,
        KvBug::RejoinTrustsWholeLog,
        KvBug::PersistedBeforeSync,
        KvBug::HostSendsBeforeDurable,
        KvBug::ConfigBeforeChosen,
        KvBug::RemovedStillVotes,
        KvBug::LatePromiseIgnoresCommit,
        KvBug::OverlappingChanges,
    ];

    fn name(self) -> &'static str {
        match self {
            KvBug::IgnorePromisedValues => "ignore-promised-values",
            KvBug::ReadWithoutConfirmation => "read-without-confirmation",
            KvBug::LeaseWithoutDriftWait => "lease-without-drift-wait",
            KvBug::ApplyBeforeChosen => "apply-before-chosen",
            KvBug::RetryAppliedTwice => "retry-applied-twice",
            KvBug::RejoinVotesAtOnce => "rejoin-votes-at-once",
            KvBug::RejoinTrustsWholeLog => "rejoin-trusts-whole-log",
            KvBug::PersistedBeforeSync => "persisted-before-sync",
            KvBug::HostSendsBeforeDurable => "host-sends-before-durable",
            KvBug::ConfigBeforeChosen => "config-before-chosen",
            KvBug::RemovedStillVotes => "removed-still-votes",
            KvBug::LatePromiseIgnoresCommit => "late-promise-ignores-commit",
            KvBug::OverlappingChanges => "overlapping-changes",
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
            KvBug::RetryAppliedTwice => "a write proposed again that is applied twice",
            KvBug::RejoinVotesAtOnce => "a node that lost its disk and votes again at once",
            KvBug::RejoinTrustsWholeLog => {
                "a node put back from an old copy that trusts its whole log and votes at once"
            }
            KvBug::PersistedBeforeSync => {
                "a disk that reports records durable as soon as they are written"
            }
            KvBug::HostSendsBeforeDurable => {
                "a host that sends promises and acceptances before they are durable"
            }
            KvBug::ConfigBeforeChosen => {
                "a node that acts on a membership change it has only proposed or accepted"
            }
            KvBug::RemovedStillVotes => "removed members whose acceptances still count",
            KvBug::LatePromiseIgnoresCommit => {
                "a leader that ignores the commit point of a promise that comes after its election"
            }
            KvBug::OverlappingChanges => {
                "a membership change taken while another is pending, its quorum check made against a membership that never runs"
            }
        }
    }
}

impl KvBug {
    /// The host's flaw this variant is, if it is one.
    fn flaw(self) -> Option<Flaw> {
        match self {
            KvBug::ReadWithoutConfirmation => Some(Flaw::ReadWithoutConfirmation),
            KvBug::ApplyBeforeChosen => Some(Flaw::ApplyBeforeChosen),
            KvBug::RetryAppliedTwice => Some(Flaw::RetryAppliedTwice),
            KvBug::HostSendsBeforeDurable => Some(Flaw::SendsBeforeDurable),
            KvBug::IgnorePromisedValues
            | KvBug::LeaseWithoutDriftWait
            | KvBug::RejoinVotesAtOnce
            | KvBug::RejoinTrustsWholeLog
            | KvBug::PersistedBeforeSync
            | KvBug::ConfigBeforeChosen
            | KvBug::RemovedStillVotes
            | KvBug::LatePromiseIgnoresCommit
            | KvBug::OverlappingChanges => None,
        }
    }

    /// The protocol's flaw this variant is, if it is one.
    pub(crate) fn paxos_flaw(self) -> Option<PaxosFlaw> {
        match self {
            KvBug::ConfigBeforeChosen => Some(PaxosFlaw::ConfigBeforeChosen),
            KvBug::RemovedStillVotes => Some(PaxosFlaw::RemovedStillVotes),
            KvBug::LatePromiseIgnoresCommit => Some(PaxosFlaw::LatePromiseIgnoresCommit),
            KvBug::OverlappingChanges => Some(PaxosFlaw::OverlappingChanges),
            _ => None,
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
    /// Whether the membership changes during the chaos: members added (as
    /// learners, most of them to be promoted), promoted and removed, the
    /// leader included.
    pub reconfigure: bool,
    /// Nodes that may join beside the founders, each under a new id.
    pub spares: usize,
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
            reconfigure: true,
            spares: 2,
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
    /// The voters in force at the end, as the most advanced node sees them.
    pub voters: Vec<NodeId>,
}

/// Counts of the storage and membership events of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskEvents {
    /// Crashes that kept part of the write in progress.
    pub torn_writes: u64,
    /// Crashes armed on a sync or snapshot boundary.
    pub boundary_crashes: u64,
    /// Disks damaged, of them those put back from an old copy of the data
    /// directory, and rejoins completed.
    pub damaged: u64,
    pub restored: u64,
    pub rejoined: u64,
    /// Snapshots saved, and snapshots installed from a peer.
    pub snapshots: u64,
    pub installs: u64,
    /// Membership changes proposed, and those chosen.
    pub changes_proposed: u64,
    pub changes_chosen: u64,
    /// Leadership hand-overs started.
    pub transfers: u64,
}

impl DiskEvents {
    /// Adds another run's counts to these.
    pub fn add(&mut self, other: &DiskEvents) {
        self.torn_writes += other.torn_writes;
        self.boundary_crashes += other.boundary_crashes;
        self.damaged += other.damaged;
        self.restored += other.restored;
        self.rejoined += other.rejoined;
        self.snapshots += other.snapshots;
        self.installs += other.installs;
        self.changes_proposed += other.changes_proposed;
        self.changes_chosen += other.changes_chosen;
        self.transfers += other.transfers;
    }
}

/// What travels between endpoints.
#[derive(Clone, Debug)]
enum Packet {
    Peer(Message),
    /// A snapshot transfer frame, as encoded for the wire.
    Frame(Bytes),
    /// A client's request on its connection `conn` to the node.
    Request {
        client: usize,
        conn: u64,
        token: Token,
    },
    /// The node's answer.
    Reply {
        token: Token,
        result: Result<Reply, NodeError>,
    },
}

/// Which attempt of which client operation an answer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Token {
    client: usize,
    seq: u64,
    attempt: u32,
}

/// Where a crash may be armed to land.
#[derive(Clone, Copy, Debug)]
enum CrashPoint {
    /// Right after the next sync completes, before anything it releases.
    AfterSync,
    /// During the next sync: a prefix of its records lands, the rest is torn.
    DuringSync,
    /// Right after the next snapshot is saved, before the host hears of it.
    AfterSnapshot,
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
    Reconfigure,
    Calm,
    ClientStart(usize),
    /// The connection of an attempt broke (its node crashed) or never came
    /// up; `refused` when the request surely never reached the node.
    ConnectionLost {
        token: Token,
        refused: bool,
    },
    /// A client gave up waiting.
    ClientTimeout(Token),
    /// A client tries again after a definite refusal.
    ClientRetry(Token),
    /// A snapshot file operation of `node`, asked for before `epoch`'s
    /// crash, is carried out now.
    File {
        node: usize,
        epoch: u64,
        op: Box<FileOp>,
    },
}

/// Client endpoints are numbered from here, nodes from 0.
const CLIENT: usize = 1 << 20;

/// Records written to a node's disk and not yet synced.
struct Batch {
    id: u64,
    records: Vec<Record>,
    /// The number of the batch's last record, reported to the host once the
    /// batch is durable.
    end: RecordNo,
}

struct Node {
    up: bool,
    /// Increments on every crash, so that stale disk completions are ignored.
    epoch: u64,
    paxos: Config,
    host_config: HostConfig,
    /// `None` while the node is down.
    host: Option<Host<Token>>,
    /// What the disk holds for sure.
    disk: Durable,
    unsynced: VecDeque<Batch>,
    next_batch: u64,
    /// When the disk will have synced everything written so far.
    disk_busy_until: Micros,
    files: MemSnapshots,
    /// When the file thread, and the snapshot writer, will be done with
    /// what they were given (each works through its own in order).
    file_busy_until: Micros,
    writer_busy_until: Micros,
    /// The last epoch of client ids handed out (kept in the data directory).
    client_epoch: u64,
    /// This node's clock rate, in parts per million away from real time.
    drift: i64,
    crash_at: Option<CrashPoint>,
    /// The disk was damaged in the last crash.
    damaged: bool,
    /// Started at least once (a spare is not, until it joins).
    started: bool,
    /// Gone for good: its disk was damaged after the membership began to
    /// change, so the operator replaces it instead of rejoining it.
    gone: bool,
    /// The operator's copy of the data directory, taken at the node's
    /// previous restart (the disk and the snapshot files as they were).
    copy: Option<(Durable, MemSnapshots)>,
    /// The damaged disk will be replaced by `copy`, not by an empty one.
    put_back: bool,
}

struct Pending {
    id: OpId,
    op: Op,
    key: String,
    seq: u64,
    attempt: u32,
    /// The node the current attempt went to.
    node: usize,
}

struct Client {
    /// The process id in the history; a new one after an indeterminate op.
    process: u64,
    seq: u64,
    node: usize,
    /// The open connection: its node and id.
    conn: Option<(usize, u64)>,
    pending: Option<Pending>,
    done: usize,
    /// The last value this client saw per key (for plausible CAS).
    seen: BTreeMap<String, String>,
}

/// Attempts of one operation refused before the client gives up on it.
const ATTEMPTS_MAX: u32 = 8;
/// A client gives up waiting after this long (the host answers every write
/// and read well before).
const CLIENT_PATIENCE: Micros = 8_000_000;

struct Sim<'a> {
    config: &'a KvSimConfig,
    /// Whether this run changes the membership.
    reconfigure: bool,
    rng: Rng,
    now: Micros,
    seq: u64,
    queue: BinaryHeap<Reverse<(Micros, u64, usize)>>,
    events: BTreeMap<usize, Event>,
    next_event: usize,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    next_conn: u64,
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

/// The host's settings in the simulator: the node's, in its 10 ms ticks,
/// with snapshots every few slots sent in small chunks.
fn host_config(config: &KvSimConfig, rng: &mut Rng) -> HostConfig {
    HostConfig {
        leader_grace_ticks: 40,
        reforward_ticks: 20,
        write_timeout_ticks: 300,
        read_timeout_ticks: 100,
        sweep_ticks: 2,
        snapshot: SnapshotPolicy {
            entries_max: if config.snapshots {
                rng.between(4, 40)
            } else {
                u64::MAX
            },
            bytes_max: u64::MAX,
        },
        transfer: TransferConfig {
            chunk_bytes_max: rng.between(32, 512) as usize,
            window_chunks: rng.between(1, 4) as usize,
            resend_ticks: 5,
            idle_ticks: 20,
            send_bytes_per_tick: 0,
            serving_max: 2,
            fetch_retry_ticks: rng.between(1, 5),
        },
        // Small turns now and then, so that proposals wait for the next.
        turn_proposal_bytes_max: if rng.chance(0.5) {
            rng.between(40, 400) as usize
        } else {
            64 << 20
        },
        report_applied: true,
        flaw: config.bug.and_then(KvBug::flaw),
        ..HostConfig::default()
    }
}

/// Runs seed `seed` of `config`.
pub fn run(config: &KvSimConfig, seed: u64, keep_trace: bool) -> KvRun {
    assert!(config.nodes >= 1 && config.clients >= 1 && config.keys >= 1);
    let mut rng = Rng::new(seed);
    let members: Vec<NodeId> = (1..=config.nodes as NodeId).collect();
    // The window of membership changes, the same for the whole cluster:
    // now and then smaller than the leader's window of slots in flight (16),
    // so that the window is cut at α; otherwise larger.
    let alpha = if rng.chance(0.3) {
        rng.between(2, 9)
    } else {
        rng.between(16, 49)
    };
    // Six runs in ten change the membership; the others keep the founders,
    // so that the faults that need a settled membership (long leaderships
    // under skewed clocks, rejoins) keep their share of the runs.
    let reconfigure = config.reconfigure && rng.chance(0.6);
    let spares = if reconfigure { config.spares } else { 0 };
    let mut nodes = Vec::new();
    for i in 0..config.nodes + spares {
        let mut c = Config::new(i as NodeId + 1, members.clone());
        c.seed = rng.next_u64();
        c.alpha = alpha;
        c.promote_within_slots = rng.between(1, 20);
        c.flaw = config.bug.and_then(KvBug::paxos_flaw);
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
        let host_config = host_config(config, &mut rng);
        // Spares start only when they join.
        let founder = i < config.nodes;
        let host = founder.then(|| {
            Host::restore(
                host_config.clone(),
                c.clone(),
                Durable::default(),
                None,
                1,
                None,
            )
            .expect("the simulator's config is valid")
        });
        nodes.push(Node {
            up: founder,
            epoch: 0,
            paxos: c,
            host_config,
            host,
            disk: Durable::default(),
            unsynced: VecDeque::new(),
            next_batch: 0,
            disk_busy_until: 0,
            files: MemSnapshots::default(),
            file_busy_until: 0,
            writer_busy_until: 0,
            client_epoch: 1,
            drift,
            crash_at: None,
            damaged: false,
            started: founder,
            gone: false,
            copy: None,
            put_back: false,
        });
    }
    let clients = (0..config.clients)
        .map(|i| Client {
            process: i as u64,
            seq: 0,
            node: i % config.nodes,
            conn: None,
            pending: None,
            done: 0,
            seen: BTreeMap::new(),
        })
        .collect();
    let mut sim = Sim {
        config,
        reconfigure,
        rng,
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        events: BTreeMap::new(),
        next_event: 0,
        nodes,
        clients,
        next_conn: 1,
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
    let voters = sim
        .nodes
        .iter()
        .filter_map(|n| n.host.as_ref())
        .max_by_key(|h| h.status().commit)
        .map(|h| h.configs().at(h.status().commit + 1).voters().collect())
        .unwrap_or_default();
    KvRun {
        voters,
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
            // The first turn of a new host.
            self.carry_out(n);
        }
        for c in 0..self.clients.len() {
            let first = self.rng.between(100_000, 600_000);
            self.at(first, Event::ClientStart(c));
        }
        if self.config.partitions || self.config.crashes {
            let first = self.rng.between(100_000, 500_000);
            self.at(first, Event::Fault);
        }
        if self.reconfigure {
            let first = self.rng.between(200_000, 800_000);
            self.at(first, Event::Reconfigure);
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
            Event::Reconfigure => self.reconfigure(),
            Event::Calm => self.start_calm(),
            Event::ClientStart(c) => self.client_next(c),
            Event::ConnectionLost { token, refused } => self.connection_lost(token, refused),
            Event::ClientTimeout(token) => self.client_timeout(token),
            Event::ClientRetry(token) => self.client_retry(token),
            Event::File { node, epoch, op } => {
                if self.nodes[node].epoch == epoch && self.nodes[node].up {
                    self.perform(node, *op);
                    self.carry_out(node);
                }
            }
        }
    }

    // ----- nodes ---------------------------------------------------------

    fn host(&mut self, n: usize) -> Option<&mut Host<Token>> {
        self.nodes[n].host.as_mut()
    }

    fn tick(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        // The node's own clock: a fast clock ticks more often.
        let period = (TICK as i64 * 1_000_000 / (1_000_000 + node.drift)) as Micros;
        if let Some(host) = node.host.as_mut() {
            host.tick();
            self.carry_out(n);
        }
        self.at(period, Event::Tick(n));
    }

    /// Carries out the host's effects, as the node's replica task does, until
    /// it has nothing more to say.
    fn carry_out(&mut self, n: usize) {
        loop {
            let Some(host) = self.host(n) else {
                return;
            };
            let effects = host.effects();
            if effects.is_empty() {
                return;
            }
            self.carry_out_once(n, effects);
            if self.violation.is_some() {
                return;
            }
        }
    }

    fn carry_out_once(&mut self, n: usize, effects: Effects<Token>) {
        let Effects {
            records,
            records_end,
            send,
            replies,
            frames,
            files,
            applied,
            need_client_epoch,
        } = effects;
        if records.contains(&Record::Resume) {
            self.disk.rejoined += 1;
            self.log(|| format!("node {} finished rejoining and votes again", n + 1));
        }
        if !records.is_empty() {
            self.write(n, records, records_end);
        }
        for (to, message) in send {
            if let Some(why) = uncovered(&self.nodes[n].disk, &message) {
                self.fail(format!(
                    "node {} sent {message} before it was durable: {why}",
                    n + 1
                ));
                return;
            }
            self.send(n, to as usize - 1, Packet::Peer(message));
        }
        for (slot, value) in applied {
            self.check_agreement(n, slot, &value);
            if self.violation.is_some() {
                return;
            }
        }
        for (token, result) in replies {
            self.send(n, CLIENT + token.client, Packet::Reply { token, result });
        }
        for (to, frame) in frames {
            self.send(n, to as usize - 1, Packet::Frame(frame.encode()));
        }
        for op in files {
            self.queue_file_op(n, op);
        }
        if need_client_epoch {
            let node = &mut self.nodes[n];
            node.client_epoch += 1;
            let epoch = node.client_epoch;
            if let Some(host) = node.host.as_mut() {
                host.client_epoch(epoch);
            }
        }
    }

    /// Writes records to the disk, which syncs them a little later (or now
    /// and then much later), all in one group commit per sync.
    fn write(&mut self, n: usize, records: Vec<Record>, end: RecordNo) {
        let node = &mut self.nodes[n];
        let id = node.next_batch;
        node.next_batch += 1;
        node.unsynced.push_back(Batch { id, records, end });
        let epoch = node.epoch;
        let latency = if self.rng.chance(0.15) {
            self.rng.between(2_000, 30_000)
        } else {
            self.rng.between(50, 600)
        };
        let node = &mut self.nodes[n];
        let done = node.disk_busy_until.max(self.now) + latency;
        node.disk_busy_until = done;
        self.at(done - self.now, Event::Synced { node: n, epoch, id });
        if self.config.bug == Some(KvBug::PersistedBeforeSync)
            && let Some(host) = self.host(n)
        {
            // The disk claims what it has not done yet.
            host.persisted(end);
        }
    }

    /// Hands a snapshot file operation to the node's file thread (or, for
    /// a save, to its writer), which gets to it a little later, in order; a
    /// crash loses what was not done.
    fn queue_file_op(&mut self, n: usize, op: FileOp) {
        let saving = matches!(op, FileOp::Save { .. });
        let latency = if saving {
            self.rng.between(1_000, 10_000)
        } else if self.rng.chance(0.05) {
            self.rng.between(2_000, 20_000)
        } else {
            self.rng.between(50, 500)
        };
        let node = &mut self.nodes[n];
        let lane = if saving {
            &mut node.writer_busy_until
        } else {
            &mut node.file_busy_until
        };
        let done = (*lane).max(self.now) + latency;
        *lane = done;
        let epoch = node.epoch;
        self.at(
            done - self.now,
            Event::File {
                node: n,
                epoch,
                op: Box::new(op),
            },
        );
    }

    /// Carries out one snapshot file operation, as the node's file threads
    /// do, and hands what it came to back to the host.
    fn perform(&mut self, n: usize, op: FileOp) {
        let saving = matches!(op, FileOp::Save { .. });
        let installing = matches!(op, FileOp::Install { .. });
        match perform(&mut self.nodes[n].files, op) {
            Performed::Done(done) => {
                match &done {
                    FileDone::Saved {
                        slot,
                        result: Ok(_),
                    } => {
                        self.disk.snapshots += 1;
                        if let Some(CrashPoint::AfterSnapshot) = self.nodes[n].crash_at {
                            self.disk.boundary_crashes += 1;
                            let slot = *slot;
                            self.log(|| {
                                format!("node {} crashes right after a snapshot at {slot}", n + 1)
                            });
                            self.crash_and_restart_later(n);
                            return;
                        }
                    }
                    FileDone::Installed { id, result: Ok(_) } => {
                        self.disk.installs += 1;
                        let slot = id.slot;
                        self.log(|| format!("node {} installs the snapshot at slot {slot}", n + 1));
                    }
                    FileDone::Installed { result: Err(e), .. } => {
                        let e = e.clone();
                        self.log(|| format!("node {} cannot install a snapshot: {e}", n + 1));
                    }
                    _ => {}
                }
                debug_assert!(!saving || matches!(done, FileDone::Saved { .. }));
                debug_assert!(!installing || matches!(done, FileDone::Installed { .. }));
                if let Some(host) = self.host(n) {
                    host.file_done(done);
                }
            }
            Performed::Send(to, frame) => {
                self.send(n, to as usize - 1, Packet::Frame(frame.encode()));
            }
            Performed::Nothing => {}
        }
    }

    fn check_agreement(&mut self, n: usize, slot: Slot, value: &Value) {
        let description = describe(value);
        match self.applied_values.get(&slot) {
            Some(other) if *other != description => {
                let other = other.clone();
                self.fail(format!(
                    "slot {slot}: node {} applies {description}, another node applied {other}",
                    n + 1
                ));
            }
            Some(_) => {}
            None => {
                if matches!(value, Value::Change(_)) {
                    self.disk.changes_chosen += 1;
                }
                self.applied_values.insert(slot, description);
            }
        }
    }

    fn synced(&mut self, n: usize, epoch: u64, id: u64) {
        if self.nodes[n].epoch != epoch || !self.nodes[n].up {
            return; // the writes died with a crash
        }
        let mut end = None;
        while self.nodes[n].unsynced.front().is_some_and(|b| b.id <= id) {
            let Some(batch) = self.nodes[n].unsynced.pop_front() else {
                break;
            };
            if let Some(point) = self.nodes[n].crash_at
                && !matches!(point, CrashPoint::AfterSnapshot)
            {
                // The sync completed, or tore part-way; either way the node
                // dies before acting on it.
                let total = batch.records.len();
                let kept = match point {
                    CrashPoint::DuringSync => self.rng.below(total.max(1) as u64) as usize,
                    _ => total,
                };
                for record in &batch.records[..kept] {
                    self.nodes[n].disk.apply(record);
                }
                self.disk.boundary_crashes += 1;
                if kept < total {
                    self.disk.torn_writes += 1;
                }
                // The log is a prefix: what was written after this batch
                // cannot have landed when part of it did not.
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
            for record in &batch.records {
                self.nodes[n].disk.apply(record);
            }
            end = Some(batch.end);
        }
        if let Some(end) = end
            && let Some(host) = self.host(n)
        {
            host.persisted(end);
            self.carry_out(n);
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
        if others_whole && self.survives_a_loss() && self.rng.chance(self.config.corrupt) {
            self.nodes[n].damaged = true;
            self.disk.damaged += 1;
            if self.disk.changes_proposed > 0 {
                // A rejoin rebuilds under the membership the node was
                // founded with; once that may have changed, the operator
                // replaces the node by a new one instead.
                self.nodes[n].gone = true;
                self.log(|| format!("node {} has a damaged disk and is gone for good", n + 1));
            } else if self.nodes[n].copy.is_some() && self.rng.chance(0.5) {
                // The operator puts back an old copy of the data directory:
                // whole, but it forgot what the node promised since.
                self.nodes[n].put_back = true;
                self.disk.restored += 1;
                self.log(|| {
                    format!(
                        "node {} has a damaged disk; an old copy will be put back",
                        n + 1
                    )
                });
            } else {
                self.log(|| format!("node {} has a damaged disk", n + 1));
            }
        }
        let Sim { nodes, rng, .. } = self;
        let node = &mut nodes[n];
        node.files.crash(rng);
        node.up = false;
        node.host = None;
        node.epoch += 1;
        node.unsynced.clear();
        node.crash_at = None;
        // Every connection to it breaks.
        for c in 0..self.clients.len() {
            if self.clients[c].conn.is_some_and(|(at, _)| at == n) {
                self.clients[c].conn = None;
                if let Some(p) = &self.clients[c].pending
                    && p.node == n
                {
                    let token = Token {
                        client: c,
                        seq: p.seq,
                        attempt: p.attempt,
                    };
                    let delay = self.rng.between(100, 3_000);
                    self.at(
                        delay,
                        Event::ConnectionLost {
                            token,
                            refused: false,
                        },
                    );
                }
            }
        }
    }

    /// Whether the cluster can lose a node's disk for good (once the
    /// membership changes, a damaged node is replaced, not rejoined): every
    /// membership the most advanced node knows has at least three voters.
    fn survives_a_loss(&self) -> bool {
        if self.disk.changes_proposed == 0 {
            return true; // it rejoins
        }
        let Some(host) = self
            .nodes
            .iter()
            .filter_map(|n| n.host.as_ref())
            .max_by_key(|h| h.status().commit)
        else {
            return false;
        };
        host.configs()
            .entries()
            .iter()
            .all(|(_, m)| m.voters().count() >= 3)
    }

    fn crash_and_restart_later(&mut self, n: usize) {
        self.crash(n);
        let down = self.rng.between(50_000, 1_500_000);
        self.at(down, Event::Restart(n));
    }

    fn restart(&mut self, n: usize) {
        if self.nodes[n].up || !self.nodes[n].started || self.nodes[n].gone {
            return;
        }
        let bug = self.config.bug;
        let node = &mut self.nodes[n];
        let snapshot = if node.damaged && node.put_back {
            // The copy goes back and the node starts with `--rejoin`, which
            // writes the rejoin mark into the copy's log before anything else.
            node.damaged = false;
            node.put_back = false;
            let (disk, files) = node.copy.clone().unwrap_or_default();
            node.disk = disk;
            if bug != Some(KvBug::RejoinTrustsWholeLog) {
                node.disk.apply(&Record::Rejoin);
            }
            node.files = files;
            let snapshot = node.files.latest();
            self.log(|| format!("node {} restarts from an old copy and rejoins", n + 1));
            snapshot
        } else if node.damaged {
            // Recovery finds a bad checksum and stops; the operator moves
            // the damaged data aside and starts the node rejoining, which
            // writes its rejoin mark before anything else.
            node.damaged = false;
            node.files.wipe();
            node.disk = Durable {
                rejoining: bug != Some(KvBug::RejoinVotesAtOnce),
                ..Durable::default()
            };
            self.log(|| format!("node {} restarts empty and rejoins", n + 1));
            None
        } else {
            let snapshot = node.files.latest();
            let slot = snapshot.as_ref().map_or(Slot::ZERO, |(id, _)| id.slot);
            // The operator copies the data directory of the stopped node.
            node.copy = Some((node.disk.clone(), node.files.clone()));
            self.log(|| format!("node {} restarts from snapshot at slot {slot}", n + 1));
            snapshot
        };
        let node = &mut self.nodes[n];
        // Each start takes the next epoch of client ids, durably.
        node.client_epoch += 1;
        let host = Host::restore(
            node.host_config.clone(),
            node.paxos.clone(),
            node.disk.clone(),
            snapshot,
            node.client_epoch,
            None,
        )
        .expect("the simulator's config is valid");
        node.host = Some(host);
        node.up = true;
        node.disk_busy_until = self.now;
        node.file_busy_until = self.now;
        node.writer_busy_until = self.now;
        self.carry_out(n);
    }

    // ----- network -------------------------------------------------------

    /// Sends between nodes through the faulty network; between a client and
    /// a node over its connection, which loses nothing while it stands.
    fn send(&mut self, from: usize, to: usize, packet: Packet) {
        let client_link = from >= CLIENT || to >= CLIENT;
        let lossy = !self.calm && !client_link;
        if lossy && self.rng.chance(self.config.loss) {
            return;
        }
        let copies = if lossy && self.rng.chance(self.config.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if !client_link && self.rng.chance(0.05) {
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
            if let Packet::Reply { token, result } = packet {
                self.client_reply(token, result);
            }
            return;
        }
        if !self.nodes[to].up {
            if let Packet::Request { token, .. } = packet {
                // Nobody listens: the connection is refused.
                let delay = self.rng.between(100, 1_000);
                self.at(
                    delay,
                    Event::ConnectionLost {
                        token,
                        refused: true,
                    },
                );
            }
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
                if let Some(host) = self.host(to) {
                    host.step(from as NodeId + 1, message);
                }
            }
            Packet::Frame(bytes) => match SnapshotFrame::decode(bytes) {
                Ok(frame) => {
                    self.log(|| {
                        format!("{} -> {} snapshot {}", from + 1, to + 1, frame_name(&frame))
                    });
                    if let Some(host) = self.host(to) {
                        host.snapshot_frame(from as NodeId + 1, frame);
                    }
                }
                Err(e) => {
                    self.fail(format!("a snapshot frame does not decode: {e}"));
                    return;
                }
            },
            Packet::Request {
                client,
                conn,
                token,
            } => self.node_request(to, client, conn, token),
            Packet::Reply { .. } => {}
        }
        self.carry_out(to);
    }

    /// A client's request reaches node `n` on connection `conn`.
    fn node_request(&mut self, n: usize, client: usize, conn: u64, token: Token) {
        let Some(pending) = &self.clients[client].pending else {
            return;
        };
        if pending.seq != token.seq || pending.attempt != token.attempt {
            return;
        }
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
        let Some(host) = self.host(n) else {
            return;
        };
        match command {
            None => host.read(Command::Get(key), ReadMode::Linearizable, token),
            Some(command) => host.write(conn, command, token),
        }
    }

    // ----- faults --------------------------------------------------------

    /// Node `i` is up and leads.
    fn leads(&self, i: usize) -> bool {
        self.nodes[i]
            .host
            .as_ref()
            .is_some_and(|h| h.status().role == RoleName::Leader)
    }

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
                    let leads = self.leads(i);
                    self.nodes[i].drift = if leads { -span } else { span };
                }
                self.log(|| "clocks skewed: leaders slow, others fast".to_owned());
            }
            5 | 8 if self.config.partitions => {
                // Cut whoever leads from everyone else: the deposed leader
                // is where stale reads and lost writes come from.
                let leader = (0..n).find(|&i| self.leads(i));
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
                let leader = (0..n).find(|&i| self.leads(i));
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

    /// A random node that was ever started (a client does not know of a
    /// spare before it joins).
    fn any_node(&mut self) -> usize {
        let started: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].started)
            .collect();
        started[self.rng.below(started.len() as u64) as usize]
    }

    /// The started node after `n`, in turn.
    fn next_node(&self, n: usize) -> usize {
        let count = self.nodes.len();
        (1..=count)
            .map(|k| (n + k) % count)
            .find(|&i| self.nodes[i].started)
            .unwrap_or(n)
    }

    /// The operator changes the membership at the leader (or hands its
    /// leadership to another voter): adds a spare (half
    /// of them to become voters), promotes a learner, swaps a learner in for
    /// a voter, removes a member (one that is gone for good first, the
    /// leader itself now and then).
    fn reconfigure(&mut self) {
        if self.calm {
            return;
        }
        let next = self.rng.between(50_000, 300_000);
        self.at(next, Event::Reconfigure);
        let Some(l) = (0..self.nodes.len()).find(|&i| self.leads(i)) else {
            return;
        };
        let Some(latest) = self.nodes[l]
            .host
            .as_ref()
            .map(|h| h.configs().latest().clone())
        else {
            return;
        };
        if self.rng.chance(0.15) {
            // Hand the leadership to another voter.
            let voters: Vec<NodeId> = latest.voters().collect();
            let pick = |rng: &mut Rng, ids: &[NodeId]| ids[rng.below(ids.len() as u64) as usize];
            let others: Vec<NodeId> = voters
                .iter()
                .copied()
                .filter(|&id| id != l as NodeId + 1 && !self.nodes[id as usize - 1].gone)
                .collect();
            if others.is_empty() {
                return;
            }
            let to = pick(&mut self.rng, &others);
            let Some(host) = self.host(l) else {
                return;
            };
            let result = host.transfer_leadership(to);
            self.log(|| format!("node {} hands its leadership to {to}: {result:?}", l + 1));
            self.disk.transfers += u64::from(result.is_ok());
            self.carry_out(l);
            return;
        }
        // A hurried operator sometimes asks for a second change at once,
        // before the first is chosen; the leader must refuse it.
        if self.propose_some_change(l, &latest) && self.rng.chance(0.3) {
            self.propose_some_change(l, &latest);
        }
    }

    /// Asks leader `l` for a change that makes sense in membership
    /// `latest`; whether the leader took it.
    fn propose_some_change(&mut self, l: usize, latest: &Membership) -> bool {
        let members: Vec<NodeId> = latest.members.keys().copied().collect();
        let learners: Vec<NodeId> = latest.learners().collect();
        let gone: Vec<NodeId> = members
            .iter()
            .copied()
            .filter(|&id| self.nodes[id as usize - 1].gone)
            .collect();
        let spare = (0..self.nodes.len()).find(|&i| !self.nodes[i].started);
        let pick = |rng: &mut Rng, ids: &[NodeId]| ids[rng.below(ids.len() as u64) as usize];
        let voters: Vec<NodeId> = latest.voters().collect();
        let change = match self.rng.below(10) {
            _ if !gone.is_empty() && !learners.is_empty() => Change::Replace {
                old: gone[0],
                new: pick(&mut self.rng, &learners),
            },
            _ if !gone.is_empty() => Change::Remove { id: gone[0] },
            0..=3 if spare.is_some() => {
                let i = spare.unwrap_or_default();
                let id = i as NodeId + 1;
                self.start_spare(i);
                Change::Add {
                    id,
                    info: Bytes::from(format!("node-{id}")),
                    promote: self.rng.chance(0.5),
                }
            }
            4 if !learners.is_empty() => Change::Promote {
                id: pick(&mut self.rng, &learners),
            },
            5 if !learners.is_empty() => Change::Replace {
                old: pick(&mut self.rng, &voters),
                new: pick(&mut self.rng, &learners),
            },
            6 => Change::Remove {
                id: l as NodeId + 1,
            },
            7..=9 => Change::Remove {
                id: pick(&mut self.rng, &members),
            },
            _ => return false,
        };
        // Voters go only while four or more remain (a learner any time, a
        // gone one always): a node may still lose its disk for good, and
        // three voters survive that.
        if let Change::Remove { id } = change
            && latest.is_voter(id)
            && latest.voters().count() < 4
            && !gone.contains(&id)
        {
            return false;
        }
        let Some(host) = self.host(l) else {
            return false;
        };
        let result = host.propose_change(change.clone());
        match &result {
            Ok(()) => {
                self.disk.changes_proposed += 1;
                self.log(|| format!("node {} proposes: {change}", l + 1));
            }
            Err(e) => self.log(|| format!("node {} refuses to {change}: {e}", l + 1)),
        }
        self.carry_out(l);
        result.is_ok()
    }

    /// Starts spare `n` with an empty disk, not yet a member.
    fn start_spare(&mut self, n: usize) {
        self.nodes[n].started = true;
        self.log(|| format!("node {} starts, empty, to join", n + 1));
        self.restart(n);
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
            let node = self.any_node();
            self.switch_node(c, node);
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
            node: client.node,
        });
        self.client_send(c);
    }

    /// Moves the client to `node`, closing its connection to another.
    fn switch_node(&mut self, c: usize, node: usize) {
        if self.clients[c].node == node {
            return;
        }
        self.clients[c].node = node;
        if let Some((at, conn)) = self.clients[c].conn.take()
            && let Some(host) = self.host(at)
        {
            host.closed(conn);
            self.carry_out(at);
        }
    }

    fn client_send(&mut self, c: usize) {
        let node = self.clients[c].node;
        let conn = match self.clients[c].conn {
            Some((_, conn)) => conn,
            None => {
                let conn = self.next_conn;
                self.next_conn += 1;
                self.clients[c].conn = Some((node, conn));
                conn
            }
        };
        let Some(p) = &mut self.clients[c].pending else {
            return;
        };
        p.node = node;
        let token = Token {
            client: c,
            seq: p.seq,
            attempt: p.attempt,
        };
        self.send(
            CLIENT + c,
            node,
            Packet::Request {
                client: c,
                conn,
                token,
            },
        );
        self.at(CLIENT_PATIENCE, Event::ClientTimeout(token));
    }

    /// The pending operation, if `token` is its current attempt.
    fn current(&self, token: Token) -> bool {
        self.clients[token.client]
            .pending
            .as_ref()
            .is_some_and(|p| p.seq == token.seq && p.attempt == token.attempt)
    }

    /// The operation was surely not applied: try it again at the next node,
    /// after a pause, or give up on it.
    fn refused(&mut self, token: Token) {
        let c = token.client;
        let next = self.next_node(self.clients[c].node);
        self.switch_node(c, next);
        if token.attempt + 1 >= ATTEMPTS_MAX {
            self.complete(c, Outcome::Fail);
            return;
        }
        if let Some(p) = &mut self.clients[c].pending {
            p.attempt += 1;
            let retry = Token {
                attempt: p.attempt,
                ..token
            };
            let backoff = self.rng.between(20_000, 100_000);
            self.at(backoff, Event::ClientRetry(retry));
        }
    }

    fn client_retry(&mut self, token: Token) {
        if self.current(token) {
            self.client_send(token.client);
        }
    }

    /// The outcome of the operation may never be known: it may still take
    /// effect. The process is done; the client carries on as a new one.
    fn indeterminate(&mut self, c: usize) {
        let Some(p) = &self.clients[c].pending else {
            return;
        };
        let outcome = if p.op == Op::Read {
            Outcome::Fail
        } else {
            Outcome::Info
        };
        self.complete(c, outcome);
        let client = &mut self.clients[c];
        client.process = self.next_process;
        self.next_process += 1;
    }

    fn connection_lost(&mut self, token: Token, refused: bool) {
        if !self.current(token) {
            return;
        }
        self.clients[token.client].conn = None;
        if refused {
            self.refused(token);
        } else {
            self.indeterminate(token.client);
        }
    }

    fn client_timeout(&mut self, token: Token) {
        if !self.current(token) {
            return;
        }
        let c = token.client;
        // Gives up on the connection too, as a client library would.
        if let Some((at, conn)) = self.clients[c].conn.take()
            && let Some(host) = self.host(at)
        {
            host.closed(conn);
            self.carry_out(at);
        }
        self.indeterminate(c);
    }

    fn client_reply(&mut self, token: Token, result: Result<Reply, NodeError>) {
        if !self.current(token) {
            return; // a late answer to an attempt given up on
        }
        let c = token.client;
        let reply = match result {
            Ok(reply) => reply,
            Err(NodeError::ClusterDown | NodeError::Busy(_) | NodeError::Removed) => {
                // Not taken: safe to try again (elsewhere).
                self.refused(token);
                return;
            }
            Err(NodeError::Uncertain) => {
                self.indeterminate(c);
                return;
            }
        };
        let Some(p) = &self.clients[c].pending else {
            return;
        };
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
        match (&p.op, &outcome) {
            (Op::Read, Outcome::Ok(Ret::Read(Some(v)))) | (Op::Write(v), Outcome::Ok(_)) => {
                let (key, v) = (p.key.clone(), v.clone());
                self.clients[c].seen.insert(key, v);
            }
            (Op::Cas { new, .. }, Outcome::Ok(_)) => {
                let (key, new) = (p.key.clone(), new.clone());
                self.clients[c].seen.insert(key, new);
            }
            _ => {}
        }
        if matches!(outcome, Outcome::Ok(_)) {
            self.acked += 1;
            if self.calm {
                self.acked_in_calm += 1;
            }
        }
        self.complete(c, outcome);
    }

    /// Records the end of the client's operation and schedules its next.
    fn complete(&mut self, c: usize, outcome: Outcome) {
        let Some(p) = self.clients[c].pending.take() else {
            return;
        };
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
        Value::Change(change) => change.to_string(),
    }
}

/// A snapshot frame, for the trace.
fn frame_name(frame: &SnapshotFrame) -> String {
    match frame {
        SnapshotFrame::Request { min_slot } => format!("request from slot {min_slot}"),
        SnapshotFrame::Offer(id) => format!("offer of slot {} ({} bytes)", id.slot, id.bytes),
        SnapshotFrame::Decline(why) => format!("decline ({why:?})"),
        SnapshotFrame::Chunk(c) => format!("chunk at {} of {}", c.offset, c.data.len()),
        SnapshotFrame::Ack(a) => format!("ack to {} ({:?})", a.next_offset, a.status),
    }
}

/// Why `message` reports something `durable` does not hold, if it does.
pub(crate) fn uncovered(durable: &Durable, message: &Message) -> Option<String> {
    match message {
        Message::Promise { ballot, .. }
        | Message::HeartbeatAck { ballot, .. }
        | Message::Prepare { ballot, .. }
            if durable.promised < *ballot =>
        {
            Some(format!("promised {} on disk", durable.promised))
        }
        Message::Nack { promised, .. } if durable.promised < *promised => {
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
        assert!(total.restored > 0, "no old copy was put back: {total:?}");
        assert!(total.rejoined > 0, "{total:?}");
        assert!(total.snapshots > 0, "{total:?}");
        assert!(total.installs > 0, "{total:?}");
    }

    #[test]
    fn memberships_change_and_the_calm_works_in_the_new_ones() {
        let config = KvSimConfig::default();
        let mut total = DiskEvents::default();
        let mut changed = 0;
        let mut joined = 0;
        for seed in 0..40 {
            let r = run(&config, seed, false);
            assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
            total.add(&r.disk);
            changed += usize::from(r.voters != [1, 2, 3]);
            joined += usize::from(r.voters.iter().any(|&id| id > 3));
        }
        assert!(total.changes_chosen > 20, "{total:?}");
        assert!(changed > 5 && joined > 5, "{changed} {joined}");
        // Without reconfiguration the founders stay.
        let fixed = KvSimConfig {
            reconfigure: false,
            ..KvSimConfig::default()
        };
        let r = run(&fixed, 1, false);
        assert!(r.violation.is_none(), "{:?}", r.violation);
        assert_eq!(r.voters, vec![1, 2, 3]);
        assert_eq!(r.disk.changes_chosen, 0);
    }

    #[test]
    fn without_faults_everything_is_acknowledged() {
        let config = KvSimConfig {
            loss: 0.0,
            dup: 0.0,
            partitions: false,
            crashes: false,
            // Removing the leader ends its term, and the writes it had in
            // hand end uncertain: that is a fault too.
            reconfigure: false,
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
