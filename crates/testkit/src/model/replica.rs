//! The Multi-Paxos replica as a model: the real `paxos::replica::Replica`,
//! every interleaving of a small cluster.
//!
//! # What is explored
//!
//! A few replicas (three founders, and a fourth when a scenario adds one),
//! each with a disk and a host that this module plays, as the node's host
//! does: it writes the records a replica hands out, tells the replica when
//! they are durable, sends the messages that report them only then, applies
//! committed values to a state machine and answers reads. Every step below is
//! an action of its own, so every order of them is explored:
//!
//! - **time**: a tick of every replica's clock at once, up to `ticks` in a
//!   run, and up to `skew` single ticks of one replica (a clock that runs
//!   fast: the drift the lease rule allows for, see below);
//! - **the network**: any message sent can be delivered at any time, or
//!   never (loss), in any order (reordering), and up to `dups` times a
//!   message is delivered and kept, to be delivered again (duplication);
//! - **the disk**: each batch of records is made durable by a step of its
//!   own, so a durability report can lag as far as the search likes;
//! - **crashes**: up to `crashes` times a replica stops and restarts from its
//!   disk, which keeps what was durable and any prefix of what was written
//!   but not yet synced (a torn write); up to `put_backs` times a
//!   replica's disk is replaced by a copy of what it held when the search
//!   began (an old backup put back) and it restarts with `--rejoin`; up to
//!   `wipes` times a replica loses
//!   its disk and rejoins;
//! - **snapshots**: up to `compactions` times a host snapshots its state
//!   machine and its replica compacts the log behind it; a replica asked
//!   for slots a peer compacted installs that peer's snapshot;
//! - **clients**: up to `writes` writes, each proposed at any replica, which
//!   may propose one again (`retries`, as a client does after a timeout), up
//!   to `reads` linearizable reads at any replica, and, in a reconfiguration
//!   scenario, one membership change asked of any replica.
//!
//! A search starts from a cluster that just started, one that elected a
//! leader, or one deeper still that a scripted prefix of the same steps
//! reaches (see [`Start`]): some paths to harm are longer than a search
//! that finishes can walk from the beginning, and the prefix walks the
//! part of them that needs no choice.
//!
//! # What is checked, in every state
//!
//! - agreement: every state machine applies the same value in each slot;
//! - a chosen value never changes: no two values of a slot each win a quorum
//!   of durable acceptances in a ballot (the voters of a slot are those of
//!   the membership that governs it, by the changes applied before it);
//! - a value is applied only once it is chosen by a quorum of durable
//!   acceptances (so nothing is chosen on a vote a crash can take back, and
//!   a removed member's vote counts for nothing);
//! - nothing leaves a replica before the records it reports are durable;
//! - a read returns every write acknowledged before the read began (a write
//!   is acknowledged once any state machine applied it);
//! - a write takes effect once, however often it was proposed;
//! - membership changes are chosen at least α slots apart (one change at a
//!   time, the next only once the previous is in force);
//! - with `liveness` on: from every reachable state, a new write is still
//!   chosen once the faults stop (a calm run: every disk synced, every
//!   message delivered, every clock ticking, until the write is applied or
//!   [`CALM_ROUNDS`] rounds have passed).
//!
//! # Clocks and leases
//!
//! The search's order of steps is real time. Global ticks move every clock
//! together; a skew tick moves one clock ahead of the others. A follower
//! that granted a lease refuses other leaders for `lease_ticks` of its own
//! clock; the leader trusts the lease for a shorter time that allows for a
//! drift of `drift_ppm`. The configurations pick `skew` no larger than the
//! drift the correct lease allows for over a lease, so the correct replica
//! must be safe, and a lease that ignores drift must not be.
//!
//! # Reductions, and why they are sound
//!
//! - **Fingerprints** (see `explorer.rs`): a state is remembered by a 64-bit
//!   hash of all of it, replicas included.
//! - **The network is a set.** A message sent while an identical one is
//!   still undelivered adds nothing. A replica's answer to a message depends
//!   only on its state and the message, so a second identical copy is what a
//!   duplication makes, and duplications are bounded by `dups` anyway.
//! - **No drop action.** A lost message is one never delivered. Properties
//!   read the replicas, disks, state machines and records, never the
//!   network, so a state with an extra undelivered message satisfies exactly
//!   what the same state without it does.
//! - **Writes are issued in order** (write `a` before `b`): the values are
//!   interchangeable, and no property tells them apart.
//! - **Crash and restart are one step**: a replica that is down is one that
//!   receives nothing, which the network already allows.
//! - Each of the first and third can be turned off (`every_send_counts`,
//!   `writes_any_order`) to measure what it saves; `docs/protocol.md` gives
//!   the figures.
//! - **Not used: symmetry of replica ids.** Ids are not interchangeable here:
//!   they break ties between ballots, seed the election jitter, and decide
//!   who is a founder, so permuting them would merge states that behave
//!   differently.
//!
//! # Not modelled
//!
//! Snapshot transfers that are slow, lost or torn (one is a single step
//! here), leadership transfer, and batches over one command. The simulator
//! covers those.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use paxos::NodeId;
use paxos::replica::{
    Change, Config, Configs, Durable, Message, Record, RecordNo, Replica, RoleName, Slot, Value,
};

use super::explorer::{Expectation, Model, Property, fingerprint};
use crate::sim::kv::{KvBug, uncovered};

/// How many rounds a calm run may take before the liveness check gives up.
pub const CALM_ROUNDS: usize = 60;

/// Membership changes the model asks for, one after another. None removes
/// the leader of the state where the first change is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// A fourth replica is added as a learner, to be promoted by the leader
    /// once caught up.
    Add,
    /// The third founder leaves, then the second.
    Remove,
    /// A fourth replica is added as a learner, then takes the third
    /// founder's place.
    Replace,
}

impl Scenario {
    pub fn parse(name: &str) -> Option<Scenario> {
        match name {
            "add" => Some(Scenario::Add),
            "remove" => Some(Scenario::Remove),
            "replace" => Some(Scenario::Replace),
            _ => None,
        }
    }

    /// Whether the scenario needs a spare replica.
    fn spare(self) -> bool {
        self != Scenario::Remove
    }

    /// The changes, in the order they are asked for, for `founders`
    /// founding voters of which `keep` (the first leader) is never removed.
    pub fn changes(self, founders: usize, keep: NodeId) -> Vec<Change> {
        let spare = founders as NodeId + 1;
        let mut others = (1..spare).rev().filter(|&id| id != keep);
        let last = others.next().unwrap_or(keep);
        let before_last = others.next().unwrap_or(keep);
        match self {
            Scenario::Add => vec![Change::Add {
                id: spare,
                info: Bytes::new(),
                promote: true,
            }],
            Scenario::Remove => vec![
                Change::Remove { id: last },
                Change::Remove { id: before_last },
            ],
            Scenario::Replace => vec![
                Change::Add {
                    id: spare,
                    info: Bytes::new(),
                    promote: false,
                },
                Change::Replace {
                    old: last,
                    new: spare,
                },
            ],
        }
    }
}

/// Where a search begins. Every start but `Fresh` is reached by a scripted
/// prefix of the same steps the search takes, without faults but the cuts
/// it names; the search then explores everything from there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A cluster that has just started: nobody leads.
    Fresh,
    /// A leader elected and its no-op applied everywhere.
    Elected,
    /// A replacement that two founders missed. The leader adds replica 4
    /// as a learner, then replaces the highest founder that does not lead
    /// by it while that founder is cut off; the change and the no-op that
    /// brings it into force are chosen with the third founder. With that
    /// one cut off too, write `a` is chosen in the first slot the new
    /// membership governs, by the leader and replica 4 alone, and 4
    /// snapshots and compacts its log. Then the leader is cut off for good
    /// and the two founders come back: a quorum of the old membership that
    /// never saw `a` chosen. A leader they elect learns that `a`'s slot is
    /// chosen only from replica 4's promise, which it asks for after its
    /// election, and which reports the slot as its commit point, not as a
    /// vote (4 compacted it).
    ReplacedBehind,
}

impl Start {
    pub fn parse(name: &str) -> Option<Start> {
        match name {
            "fresh" => Some(Start::Fresh),
            "elected" => Some(Start::Elected),
            "replaced-behind" => Some(Start::ReplacedBehind),
            _ => None,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Start::Fresh => " just started",
            Start::Elected => " with a leader elected",
            Start::ReplacedBehind => " after a replacement that two founders missed",
        }
    }
}

/// The configuration to explore.
#[derive(Clone, Debug)]
pub struct ReplicaModel {
    /// Founding voters.
    pub replicas: usize,
    pub writes: u8,
    pub reads: u8,
    /// Global ticks in a run.
    pub ticks: u8,
    /// Single-replica ticks in a run (clock drift).
    pub skew: u8,
    /// Every clock but the first leader's runs fast, at the largest rate
    /// the drift bound allows against it: two ticks for each of the
    /// leader's (a rate of 2 = (1 + 1/3) / (1 - 1/3), the `drift_ppm` of
    /// 333,333 the lease configuration allows for).
    pub fast_clocks: bool,
    pub crashes: u8,
    pub wipes: u8,
    /// Disks replaced by the copy taken when the search began.
    pub put_backs: u8,
    pub dups: u8,
    pub retries: u8,
    /// Snapshots a host takes (the replica compacts its log behind them).
    pub compactions: u8,
    /// Reads under leases (otherwise by read-index only).
    pub leases: bool,
    pub scenario: Option<Scenario>,
    /// How many of the scenario's changes are asked for.
    pub changes: u8,
    /// The window α of membership changes.
    pub alpha: u64,
    /// Disks sync by steps of their own (otherwise a batch is durable as
    /// soon as it is written, as a host that writes synchronously does).
    pub lag: bool,
    /// Where the search begins.
    pub start: Start,
    /// The network delivers in rounds: a `Round` step delivers every
    /// message sent before it (and syncs every disk), instead of one
    /// message per step. Fewer interleavings, so longer runs.
    pub rounds: bool,
    /// Whether the first leader may be cut off for good (a partition): from
    /// then on nothing reaches it and nothing it sends arrives.
    pub isolations: u8,
    /// Turns off a reduction, to measure it: a message sent while an
    /// identical one is undelivered is a second copy in the network.
    pub every_send_counts: bool,
    /// Turns off a reduction, to measure it: writes may be proposed in any
    /// order, not `a` before `b`.
    pub writes_any_order: bool,
    /// Check in every state that a write can still be chosen.
    pub liveness: bool,
    pub bug: Option<KvBug>,
    /// The leader of the first state that asks for a change: changes
    /// leave it in place, so that they are about membership, not about
    /// handing over leadership.
    first_leader: std::sync::OnceLock<NodeId>,
    /// Each replica as the search began: the copy a put-back restores.
    copies: std::sync::OnceLock<Vec<Arc<Node>>>,
}

impl Default for ReplicaModel {
    fn default() -> Self {
        ReplicaModel {
            replicas: 3,
            writes: 1,
            reads: 0,
            ticks: 4,
            skew: 0,
            fast_clocks: false,
            crashes: 0,
            wipes: 0,
            put_backs: 0,
            dups: 0,
            retries: 0,
            compactions: 0,
            leases: false,
            scenario: None,
            changes: 1,
            alpha: 2,
            lag: false,
            start: Start::Elected,
            rounds: false,
            isolations: 0,
            every_send_counts: false,
            writes_any_order: false,
            liveness: false,
            bug: None,
            first_leader: std::sync::OnceLock::new(),
            copies: std::sync::OnceLock::new(),
        }
    }
}

/// A batch of records written and not yet durable, with the messages that
/// wait for it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Batch {
    pub end: RecordNo,
    pub records: Vec<Record>,
    pub held: Vec<(NodeId, Message)>,
}

/// One replica and its host.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Node {
    pub replica: Replica,
    /// What a restart finds.
    pub disk: Durable,
    /// Written, not yet durable, oldest first.
    pub unsynced: Vec<Batch>,
    /// Records reported durable to the replica.
    pub reported: RecordNo,
    /// The state machine: the value applied in each slot, from slot 1.
    pub applied: Vec<Value>,
    /// Reads asked here and not yet answered: (read number, read index
    /// once known).
    pub reads: Vec<(u8, Option<Slot>)>,
    /// The host's snapshot: the state machine up to this slot (the first
    /// slots of `applied`), with the memberships it carries.
    pub snapshot: (Slot, Option<Configs>),
}

/// A client read: what it must see, and what it saw.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ReadOp {
    pub node: NodeId,
    /// Writes acknowledged before it began.
    pub required: u32,
    pub answer: Option<Answer>,
    /// Answered in the step that asked it (a lease read on the leader).
    pub at_once: bool,
}

/// How a read ended.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Answer {
    /// It returned these writes, by bit.
    Saw(u32),
    /// Its replica crashed first, and the client's connection with it.
    Lost,
}

/// A property broken by an event (the rest are read off the state).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Broken {
    Agreement,
    AppliedUnchosen,
    SentEarly,
    StaleRead,
    AppliedTwice,
}

/// One global state of the cluster.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ReplicaState {
    /// Shared between states until one of them changes a node.
    pub nodes: Vec<Arc<Node>>,
    /// Messages sent and not delivered: (fingerprint, from, to, message),
    /// sorted by fingerprint, each once.
    pub network: Vec<(u64, NodeId, NodeId, Message)>,
    /// Every durable acceptance: (slot, ballot, acceptor) -> value.
    pub votes: BTreeMap<(Slot, paxos::Ballot, NodeId), Value>,
    /// The value first applied in each slot by any state machine.
    pub decided: BTreeMap<Slot, Value>,
    pub time: u8,
    pub skews: u8,
    pub crashes: u8,
    pub wipes: u8,
    pub put_backs: u8,
    pub dups: u8,
    pub retries: u8,
    pub compactions: u8,
    /// Writes proposed, by bit.
    pub issued: u32,
    pub changes: u8,
    /// Replicas cut off, by bit (of their id).
    pub isolated: u32,
    /// Snapshots installed from a peer.
    pub installed: u8,
    /// Writes applied somewhere (acknowledged), by bit.
    pub acknowledged: u32,
    pub reads: Vec<ReadOp>,
    /// What went wrong, and a line that says how.
    pub broken: Vec<(Broken, String)>,
}

impl ReplicaState {
    /// Whether no event has broken the property `kind` stands for.
    fn intact(&self, kind: Broken) -> bool {
        self.broken.iter().all(|(k, _)| *k != kind)
    }
}

/// A step of the system.
#[derive(Clone, PartialEq, Eq)]
pub enum ReplicaAction {
    Tick,
    Skew(NodeId),
    Deliver {
        index: usize,
        keep: bool,
        from: NodeId,
        to: NodeId,
        message: Message,
    },
    Persist(NodeId),
    /// Every message sent so far is delivered, and every disk syncs.
    Round,
    Isolate(NodeId),
    Crash {
        node: NodeId,
        torn: usize,
    },
    Wipe(NodeId),
    PutBack(NodeId),
    Compact(NodeId),
    Write {
        write: u8,
        at: NodeId,
        retry: bool,
    },
    Read(NodeId),
    Change(NodeId),
}

impl fmt::Debug for ReplicaAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaAction::Tick => write!(f, "every clock ticks"),
            ReplicaAction::Skew(n) => write!(f, "node {n}'s clock ticks alone (drift)"),
            ReplicaAction::Deliver {
                keep,
                from,
                to,
                message,
                ..
            } => write!(
                f,
                "deliver {from} -> {to} {message}{}",
                if *keep { " (and keep a copy)" } else { "" }
            ),
            ReplicaAction::Persist(n) => write!(f, "node {n}'s disk syncs its oldest batch"),
            ReplicaAction::Round => write!(f, "every message sent is delivered, every disk syncs"),
            ReplicaAction::Isolate(n) => write!(f, "node {n} is cut off from the others for good"),
            ReplicaAction::Crash { node, torn: 0 } => {
                write!(f, "node {node} crashes and restarts from its disk")
            }
            ReplicaAction::Crash { node, torn } => write!(
                f,
                "node {node} crashes with {torn} unsynced record(s) on disk, and restarts"
            ),
            ReplicaAction::Wipe(n) => write!(f, "node {n} loses its disk and restarts empty"),
            ReplicaAction::PutBack(n) => write!(
                f,
                "node {n}'s disk is replaced by its copy from the start, and it restarts with --rejoin"
            ),
            ReplicaAction::Compact(n) => {
                write!(
                    f,
                    "node {n} snapshots its state machine and compacts its log"
                )
            }
            ReplicaAction::Write { write, at, retry } => write!(
                f,
                "a client {} write {} at node {at}",
                if *retry { "retries" } else { "proposes" },
                write_name(*write)
            ),
            ReplicaAction::Read(n) => write!(f, "a client reads at node {n}"),
            ReplicaAction::Change(n) => write!(f, "an operator asks node {n} for the next change"),
        }
    }
}

fn write_name(write: u8) -> char {
    char::from(b'a' + write)
}

fn command(write: u8) -> Bytes {
    Bytes::from(vec![b'a' + write])
}

/// The write a command is, if it is one of the model's.
fn write_of(command: &Bytes) -> Option<u8> {
    match command.as_ref() {
        [c] if c.is_ascii_lowercase() => Some(c - b'a'),
        _ => None,
    }
}

impl ReplicaModel {
    /// Replica ids, spares included.
    fn ids(&self) -> Vec<NodeId> {
        let spares = usize::from(self.scenario.is_some_and(Scenario::spare));
        (1..=(self.replicas + spares) as NodeId).collect()
    }

    /// A configuration in which the broken variant `bug` shows.
    pub fn for_bug(bug: KvBug) -> ReplicaModel {
        let base = ReplicaModel {
            bug: Some(bug),
            ..ReplicaModel::default()
        };
        match bug {
            KvBug::IgnorePromisedValues => ReplicaModel { ticks: 3, ..base },
            KvBug::ReadWithoutConfirmation => ReplicaModel {
                ticks: 4,
                reads: 1,
                rounds: true,
                isolations: 1,
                ..base
            },
            KvBug::LeaseWithoutDriftWait => ReplicaModel {
                ticks: 10,
                reads: 1,
                leases: true,
                fast_clocks: true,
                rounds: true,
                isolations: 1,
                ..base
            },
            KvBug::ApplyBeforeChosen => ReplicaModel {
                ticks: 2,
                start: Start::Fresh,
                ..base
            },
            KvBug::RetryAppliedTwice => ReplicaModel {
                ticks: 1,
                retries: 1,
                ..base
            },
            KvBug::RejoinVotesAtOnce => ReplicaModel {
                ticks: 2,
                wipes: 1,
                ..base
            },
            KvBug::RejoinTrustsWholeLog => ReplicaModel {
                ticks: 3,
                put_backs: 1,
                ..base
            },
            KvBug::PersistedBeforeSync => ReplicaModel {
                ticks: 2,
                lag: true,
                start: Start::Fresh,
                ..base
            },
            KvBug::HostSendsBeforeDurable => ReplicaModel {
                ticks: 2,
                lag: true,
                start: Start::Fresh,
                ..base
            },
            KvBug::ConfigBeforeChosen => ReplicaModel {
                replicas: 4,
                ticks: 0,
                scenario: Some(Scenario::Remove),
                ..base
            },
            KvBug::RemovedStillVotes => ReplicaModel {
                ticks: 3,
                scenario: Some(Scenario::Remove),
                ..base
            },
            // Harm takes a replacement, a change of leader and a
            // compaction: the search starts after the first and the last.
            KvBug::LatePromiseIgnoresCommit => ReplicaModel {
                ticks: 1,
                writes: 0,
                start: Start::ReplacedBehind,
                scenario: Some(Scenario::Replace),
                changes: 2,
                ..base
            },
            KvBug::OverlappingChanges => ReplicaModel {
                ticks: 1,
                writes: 0,
                scenario: Some(Scenario::Remove),
                changes: 2,
                ..base
            },
        }
    }

    /// The leader of the first state that asked (node 1 if it had none).
    fn first_leader(&self, state: &ReplicaState) -> NodeId {
        *self.first_leader.get_or_init(|| {
            state
                .nodes
                .iter()
                .find(|n| n.replica.status().role == RoleName::Leader)
                .map_or(1, |n| n.replica.id())
        })
    }

    /// The next change to ask for, if any is left.
    fn next_change(&self, state: &ReplicaState) -> Option<Change> {
        let keep = self.first_leader(state);
        let changes = self.scenario?.changes(self.replicas, keep);
        changes
            .into_iter()
            .take(usize::from(self.changes))
            .nth(usize::from(state.changes))
    }

    /// The replica configuration: timings as small as the rules allow.
    pub fn config(&self, id: NodeId) -> Config {
        let founders: Vec<NodeId> = (1..=self.replicas as NodeId).collect();
        let mut c = Config::new(id, founders);
        c.alpha = self.alpha;
        c.promote_within_slots = 1;
        c.heartbeat_ticks = 1;
        if self.leases {
            // The leader trusts its lease for ticks that the follower's
            // refusal outlasts by the drift; see the module notes.
            // A lease nearly as long as the election timeout, so that a
            // lease trusted without the drift allowance outlives the
            // followers' wait when their clocks run fast.
            c.election_ticks = 10;
            c.lease_ticks = 9;
            c.drift_ppm = if self.bug == Some(KvBug::LeaseWithoutDriftWait) {
                0
            } else {
                333_333
            };
        } else {
            c.election_ticks = 2;
            c.lease_ticks = 0;
        }
        c.inflight_slots_max = 4;
        c.pending_commands_max = 4;
        c.catch_up_slots_max = 8;
        c.flaw = self.bug.and_then(KvBug::paxos_flaw);
        c
    }

    fn founding(&self) -> Configs {
        let founders = 1..=self.replicas as NodeId;
        Configs::new(paxos::replica::Membership::founding(founders, self.alpha))
    }

    /// The memberships by the changes applied so far: who votes for `slot`.
    fn true_configs(&self, state: &ReplicaState, below: Slot) -> Configs {
        let mut configs = self.founding();
        for (slot, value) in state.decided.range(..below) {
            if let Value::Change(change) = value {
                configs.note_change(*slot, change);
            }
        }
        configs
    }

    /// The values that won a quorum of durable acceptances in `slot`.
    fn chosen_values(&self, state: &ReplicaState, slot: Slot) -> Vec<Value> {
        let configs = self.true_configs(state, slot);
        let membership = configs.at(slot);
        let mut chosen: Vec<Value> = Vec::new();
        let mut run: Vec<(paxos::Ballot, &Value, Vec<NodeId>)> = Vec::new();
        let low = (slot, paxos::Ballot::ZERO, 0);
        for ((s, ballot, node), value) in state.votes.range(low..) {
            if *s != slot {
                break;
            }
            match run.iter_mut().find(|(b, v, _)| b == ballot && *v == value) {
                Some((_, _, by)) => by.push(*node),
                None => run.push((*ballot, value, vec![*node])),
            }
        }
        for (_, value, by) in run {
            if membership.is_quorum(&by) && !chosen.contains(value) {
                chosen.push(value.clone());
            }
        }
        chosen
    }

    fn index(&self, id: NodeId) -> usize {
        (id - 1) as usize
    }

    /// Carries out everything replica `id` asked for.
    fn carry_out(&self, state: &mut ReplicaState, id: NodeId) {
        let i = self.index(id);
        loop {
            let node = Arc::make_mut(&mut state.nodes[i]);
            let ready = node.replica.take_ready();
            let end = ready.records_end;
            if ready.is_empty() {
                break;
            }
            // 1. Records: written now, durable at a `Persist` step.
            let lies = self.bug == Some(KvBug::PersistedBeforeSync);
            if self.bug == Some(KvBug::ApplyBeforeChosen) {
                // The broken host applies a value accepted for its next slot.
                for record in &ready.records {
                    if let Record::Accept { slot, value, .. } = record {
                        self.apply(state, id, *slot, value.clone());
                    }
                }
            }
            let node = Arc::make_mut(&mut state.nodes[i]);
            let mut send_now = ready.messages;
            let at_once = self.bug == Some(KvBug::HostSendsBeforeDurable);
            if !ready.records.is_empty() {
                node.unsynced.push(Batch {
                    end,
                    records: ready.records,
                    held: Vec::new(),
                });
            }
            if end <= node.reported || at_once {
                send_now.extend(ready.persisted_messages);
            } else if let Some(last) = node.unsynced.last_mut() {
                last.held.extend(ready.persisted_messages);
            }
            let mut again = false;
            if lies && end > node.reported {
                // The disk claims what it has not done yet.
                node.reported = end;
                node.replica.persisted(end);
                for batch in &mut node.unsynced {
                    send_now.append(&mut batch.held);
                }
                again = true;
            }
            for (to, message) in send_now {
                self.send(state, id, to, message);
            }
            if !self.lag {
                while !state.nodes[i].unsynced.is_empty() {
                    self.sync_oldest(state, id);
                }
                again = true;
            }
            // 3. Apply, in slot order.
            for (slot, value) in ready.committed {
                self.apply(state, id, slot, value);
            }
            if let Some((from, _)) = ready.snapshot_needed {
                self.fetch_snapshot(state, id, from);
                again = true;
            }
            // 4. Reads.
            let node = Arc::make_mut(&mut state.nodes[i]);
            for read in ready.reads {
                if let Some(r) = node.reads.iter_mut().find(|r| u64::from(r.0) == read.ctx) {
                    r.1 = Some(r.1.map_or(read.index, |x| x.min(read.index)));
                }
            }
            node.reads
                .retain(|(ctx, _)| !ready.failed_reads.contains(&u64::from(*ctx)));
            self.answer_reads(state, id);
            if !again {
                break;
            }
        }
    }

    fn answer_reads(&self, state: &mut ReplicaState, id: NodeId) {
        let i = self.index(id);
        let node = Arc::make_mut(&mut state.nodes[i]);
        let applied = Slot(node.applied.len() as u64);
        let mut done = Vec::new();
        node.reads.retain(|&(ctx, index)| {
            let ready = index.is_some_and(|x| x <= applied);
            if ready {
                done.push(ctx);
            }
            !ready
        });
        let seen = writes_in(&state.nodes[i].applied);
        for ctx in done {
            self.answer(state, ctx, seen);
        }
    }

    fn answer(&self, state: &mut ReplicaState, ctx: u8, seen: u32) {
        let read = &mut state.reads[usize::from(ctx)];
        read.answer = Some(Answer::Saw(seen));
        if read.required & !seen != 0 {
            let line = format!(
                "read {ctx} at node {} returned writes {} but {} were acknowledged before it began",
                read.node,
                names(seen),
                names(read.required)
            );
            state.broken.push((Broken::StaleRead, line));
        }
    }

    /// The host applies `value` in `slot` to replica `id`'s state machine.
    fn apply(&self, state: &mut ReplicaState, id: NodeId, slot: Slot, value: Value) {
        let i = self.index(id);
        if slot.0 != state.nodes[i].applied.len() as u64 + 1 {
            return; // applied already (the apply-before-chosen host)
        }
        match state.decided.get(&slot) {
            Some(first) if *first != value => {
                let line =
                    format!("node {id} applied {value:?} in slot {slot}, another node {first:?}");
                state.broken.push((Broken::Agreement, line));
            }
            Some(_) => {}
            None => {
                state.decided.insert(slot, value.clone());
            }
        }
        if !self.chosen_values(state, slot).contains(&value) {
            let line = format!(
                "node {id} applied {value:?} in slot {slot}, which no quorum's durable votes chose"
            );
            state.broken.push((Broken::AppliedUnchosen, line));
        }
        let before = writes_in(&state.nodes[i].applied);
        for w in value.commands().iter().filter_map(write_of) {
            let bit = 1u32 << w;
            // The host's sessions make a write proposed again a no-op; the
            // broken host applies it again.
            if before & bit != 0 && self.bug == Some(KvBug::RetryAppliedTwice) {
                let line = format!("node {id} applied write {} a second time", write_name(w));
                state.broken.push((Broken::AppliedTwice, line));
            }
            state.acknowledged |= bit;
        }
        Arc::make_mut(&mut state.nodes[i]).applied.push(value);
    }

    fn send(&self, state: &mut ReplicaState, from: NodeId, to: NodeId, message: Message) {
        let disk = &state.nodes[self.index(from)].disk;
        if let Some(why) = uncovered(disk, &message) {
            let line = format!("node {from} sent {to} {message} but has {why}");
            state.broken.push((Broken::SentEarly, line));
        }
        let cut = |id: NodeId| state.isolated & (1 << id) != 0;
        if to == 0 || self.index(to) >= state.nodes.len() || cut(from) || cut(to) {
            return;
        }
        let entry = (fingerprint(&(from, to, &message)), from, to, message);
        let at = state.network.partition_point(|e| e.0 < entry.0);
        if !self.every_send_counts
            && state.network[at..]
                .iter()
                .take_while(|e| e.0 == entry.0)
                .any(|e| e == &entry)
        {
            return;
        }
        state.network.insert(at, entry);
    }

    /// Replica `id` installs peer `from`'s snapshot (the transfer is one
    /// step here; the simulator cuts it into chunks that may be lost).
    fn fetch_snapshot(&self, state: &mut ReplicaState, id: NodeId, from: NodeId) {
        let cut = |n: NodeId| state.isolated & (1 << n) != 0;
        if cut(id) || cut(from) {
            return;
        }
        let peer = &state.nodes[self.index(from)];
        let (slot, Some(configs)) = peer.snapshot.clone() else {
            return;
        };
        let prefix = peer.applied[..slot.0 as usize].to_vec();
        let node = Arc::make_mut(&mut state.nodes[self.index(id)]);
        if node.replica.status().commit >= slot {
            return;
        }
        node.applied = prefix;
        node.snapshot = (slot, Some(configs.clone()));
        node.replica.install_snapshot(slot, configs);
        state.installed = state.installed.saturating_add(1);
    }

    /// Replica `id`'s host snapshots its state machine and the replica
    /// compacts its log up to there.
    fn compact(&self, state: &mut ReplicaState, id: NodeId) {
        let node = Arc::make_mut(&mut state.nodes[self.index(id)]);
        let applied = node.replica.status().applied;
        let configs = node.replica.snapshot_configs(applied);
        node.snapshot = (applied, Some(configs));
        node.replica.compact(applied);
        self.carry_out(state, id);
    }

    fn restart(&self, state: &mut ReplicaState, id: NodeId, replica: Replica) {
        let i = self.index(id);
        let node = Arc::make_mut(&mut state.nodes[i]);
        node.replica = replica;
        node.unsynced.clear();
        node.reported = RecordNo::ZERO;
        // The state machine comes back from the snapshot.
        node.applied.truncate(node.snapshot.0.0 as usize);
        for (ctx, _) in node.reads.drain(..) {
            // The client's connection went down with the node.
            state.reads[usize::from(ctx)].answer = Some(Answer::Lost);
        }
        self.carry_out(state, id);
    }

    /// Syncs replica `id`'s oldest batch, and carries out what follows.
    fn persist(&self, state: &mut ReplicaState, id: NodeId) {
        self.sync_oldest(state, id);
        self.carry_out(state, id);
    }

    /// Syncs replica `id`'s oldest batch: its records are durable, the
    /// replica is told, and the messages that waited leave.
    fn sync_oldest(&self, state: &mut ReplicaState, id: NodeId) {
        let i = self.index(id);
        if state.nodes[i].unsynced.is_empty() {
            return;
        }
        let batch = Arc::make_mut(&mut state.nodes[i]).unsynced.remove(0);
        for record in &batch.records {
            Arc::make_mut(&mut state.nodes[i]).disk.apply(record);
            if let Record::Accept {
                slot,
                ballot,
                value,
            } = record
            {
                state.votes.insert((*slot, *ballot, id), value.clone());
            }
        }
        let node = Arc::make_mut(&mut state.nodes[i]);
        if batch.end > node.reported {
            node.reported = batch.end;
            node.replica.persisted(batch.end);
        }
        for (to, message) in batch.held {
            self.send(state, id, to, message);
        }
    }

    /// Whether a new write is chosen from `state` once faults stop.
    pub fn calm_chooses(&self, state: &ReplicaState) -> bool {
        let mut s = state.clone();
        s.isolated = 0; // partitions heal
        let probe = command(25);
        for _ in 0..CALM_ROUNDS {
            self.calm_round(&mut s);
            for id in self.ids() {
                let node = Arc::make_mut(&mut s.nodes[self.index(id)]);
                if node.applied.iter().any(|v| v.commands().contains(&probe)) {
                    return true;
                }
                if node.replica.status().role == RoleName::Leader
                    && node.replica.propose(probe.clone()).is_ok()
                {
                    self.carry_out(&mut s, id);
                }
            }
        }
        false
    }

    /// One round without faults: every disk synced and every message
    /// delivered (and those they cause, a few times over), then every clock
    /// ticks once.
    fn calm_round(&self, s: &mut ReplicaState) {
        for _ in 0..4 {
            self.sync_all(s);
            let network = std::mem::take(&mut s.network);
            for (_, from, to, message) in network {
                self.deliver(s, from, to, message);
            }
        }
        self.sync_all(s);
        for id in self.ids() {
            Arc::make_mut(&mut s.nodes[self.index(id)]).replica.tick();
            self.carry_out(s, id);
        }
    }

    fn sync_all(&self, s: &mut ReplicaState) {
        for id in self.ids() {
            while !s.nodes[self.index(id)].unsynced.is_empty() {
                self.persist(s, id);
            }
        }
    }

    /// The cluster after a calm start: a leader elected, its no-op applied
    /// everywhere, nothing in flight.
    fn elected(&self, mut s: ReplicaState) -> ReplicaState {
        let settled = |s: &ReplicaState| {
            let leader = s.nodes.iter().find(|n| {
                n.replica.status().role == RoleName::Leader && n.replica.status().serving
            });
            leader.is_some_and(|l| {
                let commit = l.replica.status().commit;
                s.network.is_empty()
                    && s.nodes
                        .iter()
                        .take(self.replicas)
                        .all(|n| n.unsynced.is_empty() && n.applied.len() as u64 == commit.0)
            })
        };
        for _ in 0..CALM_ROUNDS {
            if settled(&s) {
                return s;
            }
            self.calm_round(&mut s);
            for _ in 0..4 {
                self.sync_all(&mut s);
                let network = std::mem::take(&mut s.network);
                for (_, from, to, message) in network {
                    self.deliver(&mut s, from, to, message);
                }
            }
        }
        panic!("a calm start elected no leader in {CALM_ROUNDS} rounds")
    }

    /// Calm rounds, in which the replicas of `cut` (a mask of ids) send and
    /// receive nothing, until `done`.
    fn settle_until(
        &self,
        s: &mut ReplicaState,
        cut: u32,
        what: &str,
        done: impl Fn(&ReplicaState) -> bool,
    ) {
        s.isolated = cut;
        let reaches = |e: &(u64, NodeId, NodeId, Message)| cut & (1 << e.1 | 1 << e.2) == 0;
        s.network.retain(reaches);
        for _ in 0..CALM_ROUNDS {
            if done(s) {
                return;
            }
            self.calm_round(s);
        }
        panic!("the scripted start did not get {what} in {CALM_ROUNDS} rounds");
    }

    /// The start [`Start::ReplacedBehind`] describes, from an elected
    /// cluster of three.
    fn replaced_behind(&self, mut s: ReplicaState) -> ReplicaState {
        assert_eq!(
            self.replicas, 3,
            "the replaced-behind start has three founders"
        );
        let leader = self.first_leader(&s);
        let changes = Scenario::Replace.changes(self.replicas, leader);
        let [join, replace] = &changes[..] else {
            unreachable!("a replacement is two changes");
        };
        let Change::Replace { old, new: spare } = *replace else {
            unreachable!("the second change of a replacement replaces");
        };
        let other = (1..=3)
            .find(|&id| id != leader && id != old)
            .unwrap_or(leader);
        let applied = |s: &ReplicaState, id: NodeId, value: &Value| {
            s.nodes[self.index(id)]
                .applied
                .iter()
                .position(|v| v == value)
        };
        for change in [join, replace] {
            Arc::make_mut(&mut s.nodes[self.index(leader)])
                .replica
                .propose_change(change.clone())
                .expect("the scripted start's change is valid");
            s.changes += 1;
            self.carry_out(&mut s, leader);
            if change == join {
                // Every replica, the learner included, applies the join.
                let join = Value::Change(join.clone());
                self.settle_until(&mut s, 0, "the learner caught up", |s| {
                    self.ids()
                        .into_iter()
                        .all(|id| applied(s, id, &join).is_some())
                });
            }
        }
        // The replacement and the slots before it takes force, chosen by the
        // leader and `other` while `old` hears nothing.
        let replaced = Value::Change(replace.clone());
        let alpha = self.alpha as usize;
        self.settle_until(&mut s, 1 << old, "the replacement chosen", |s| {
            let node = &s.nodes[self.index(leader)];
            applied(s, leader, &replaced).is_some_and(|at| node.applied.len() >= at + alpha)
        });
        // Write `a`, chosen by the new membership without `other` or `old`.
        let write = command(0);
        Arc::make_mut(&mut s.nodes[self.index(leader)])
            .replica
            .propose(write.clone())
            .expect("the leader takes a write");
        s.issued |= 1;
        self.carry_out(&mut s, leader);
        let cut = 1 << old | 1 << other;
        self.settle_until(&mut s, cut, "write a applied by the spare", |s| {
            s.nodes[self.index(spare)]
                .applied
                .iter()
                .any(|v| v.commands().contains(&write))
        });
        self.compact(&mut s, spare);
        // The old leader is gone for good; `other` and `old` are back.
        self.settle_until(&mut s, 1 << leader, "the old leader cut off", |_| true);
        s
    }

    fn deliver(&self, state: &mut ReplicaState, from: NodeId, to: NodeId, mut message: Message) {
        if self.bug == Some(KvBug::IgnorePromisedValues)
            && let Message::Promise { entries, .. } = &mut message
        {
            entries.retain(|e| e.chosen);
        }
        Arc::make_mut(&mut state.nodes[self.index(to)])
            .replica
            .step(from, message);
        self.carry_out(state, to);
    }

    /// The configuration in one line.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!(
            "{} replicas{}, {} write(s), {} read(s), {} tick(s)",
            self.replicas,
            self.start.describe(),
            self.writes,
            self.reads,
            self.ticks
        )];
        let counts = [
            (self.skew, "drift tick(s)"),
            (self.retries, "retry(ies)"),
            (self.crashes, "crash(es)"),
            (self.wipes, "lost disk(s)"),
            (self.put_backs, "old copy(ies) put back"),
            (self.compactions, "compaction(s)"),
            (self.dups, "duplicate(s)"),
            (self.isolations, "isolation(s)"),
        ];
        for (n, what) in counts {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        let switches = [
            (self.leases, "leases"),
            (self.fast_clocks, "fast clocks but the leader's"),
            (self.lag, "lagging disks"),
            (self.rounds, "delivery in rounds"),
            (self.liveness, "liveness"),
            (self.every_send_counts, "every send a copy (reduction off)"),
            (self.writes_any_order, "writes in any order (reduction off)"),
        ];
        parts.extend(
            switches
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, what)| what.to_string()),
        );
        if let Some(scenario) = self.scenario {
            parts.push(format!("{scenario:?} (alpha {})", self.alpha).to_lowercase());
        }
        if let Some(bug) = self.bug {
            parts.push(format!("bug {}", crate::bugs::Variant::name(bug)));
        }
        parts.join(", ")
    }

    /// How to read a trace.
    pub fn legend(&self) -> String {
        format!(
            "replicas 1..={}{}, writes 'a', 'b', ..., ballots written round.node, slots from 1",
            self.replicas,
            if self.scenario.is_some_and(Scenario::spare) {
                format!(" and spare {}", self.replicas + 1)
            } else {
                String::new()
            }
        )
    }

    /// A few lines on each replica of `state`.
    pub fn describe(&self, state: &ReplicaState) -> String {
        let mut out = String::new();
        for node in &state.nodes {
            let s = node.replica.status();
            let applied: Vec<String> = node.applied.iter().map(short).collect();
            out.push_str(&format!(
                "  node {}: {} promised {} commit {} applied [{}], disk promised {} commit {}, {} batch(es) unsynced\n",
                s.id,
                s.role.as_str(),
                s.promised,
                s.commit,
                applied.join(" "),
                node.disk.promised,
                node.disk.commit,
                node.unsynced.len()
            ));
        }
        for (kind, line) in &state.broken {
            out.push_str(&format!("  broken ({kind:?}): {line}\n"));
        }
        out
    }
}

/// A slot's value in a few characters.
fn short(value: &Value) -> String {
    match value {
        Value::Noop => "noop".into(),
        Value::Batch(commands) => commands
            .iter()
            .map(|c| write_of(c).map_or('?', write_name))
            .collect(),
        Value::Change(change) => format!("({change})"),
    }
}

fn writes_in(applied: &[Value]) -> u32 {
    applied
        .iter()
        .flat_map(Value::commands)
        .filter_map(write_of)
        .fold(0, |mask, w| mask | (1u32 << w))
}

fn names(mask: u32) -> String {
    let names: String = (0..32u8)
        .filter(|w| mask & (1 << w) != 0)
        .map(write_name)
        .collect();
    format!("{{{names}}}")
}

impl Model for ReplicaModel {
    type State = ReplicaState;
    type Action = ReplicaAction;

    fn init_states(&self) -> Vec<ReplicaState> {
        let nodes = self
            .ids()
            .into_iter()
            .map(|id| Node {
                replica: Replica::new(self.config(id)).expect("the model's configuration is valid"),
                disk: Durable::default(),
                unsynced: Vec::new(),
                reported: RecordNo::ZERO,
                applied: Vec::new(),
                reads: Vec::new(),
                snapshot: (Slot::ZERO, None),
            })
            .map(Arc::new)
            .collect();
        let start = ReplicaState {
            nodes,
            network: Vec::new(),
            votes: BTreeMap::new(),
            decided: BTreeMap::new(),
            time: 0,
            skews: 0,
            crashes: 0,
            wipes: 0,
            put_backs: 0,
            dups: 0,
            retries: 0,
            compactions: 0,
            issued: 0,
            changes: 0,
            isolated: 0,
            installed: 0,
            acknowledged: 0,
            reads: Vec::new(),
            broken: Vec::new(),
        };
        let start = match self.start {
            Start::Fresh => start,
            Start::Elected => self.elected(start),
            Start::ReplacedBehind => self.replaced_behind(self.elected(start)),
        };
        self.copies.get_or_init(|| start.nodes.clone());
        vec![start]
    }

    fn actions(&self, state: &ReplicaState, actions: &mut Vec<ReplicaAction>) {
        let ids = self.ids();
        if state.time < self.ticks {
            actions.push(ReplicaAction::Tick);
        }
        if self.rounds {
            let busy = state.nodes.iter().any(|n| !n.unsynced.is_empty());
            if busy || !state.network.is_empty() {
                actions.push(ReplicaAction::Round);
            }
        }
        for (index, (_, from, to, message)) in state.network.iter().enumerate() {
            if self.rounds {
                break;
            }
            for keep in [true, false] {
                if keep && state.dups >= self.dups {
                    continue;
                }
                actions.push(ReplicaAction::Deliver {
                    index,
                    keep,
                    from: *from,
                    to: *to,
                    message: message.clone(),
                });
            }
        }
        for &id in &ids {
            let node = &state.nodes[self.index(id)];
            if !node.unsynced.is_empty() && !self.rounds {
                actions.push(ReplicaAction::Persist(id));
            }
            if state.isolated.count_ones() < u32::from(self.isolations)
                && state.isolated & (1 << id) == 0
                && id == self.first_leader(state)
            {
                actions.push(ReplicaAction::Isolate(id));
            }
        }
        for &id in &ids {
            if state.skews < self.skew {
                actions.push(ReplicaAction::Skew(id));
            }
            for write in 0..self.writes {
                let issued = state.issued & (1 << write) != 0;
                // Writes go in order unless told otherwise (a reduction).
                let next = state.issued.count_ones() == u32::from(write);
                if !issued && (next || self.writes_any_order) {
                    actions.push(ReplicaAction::Write {
                        write,
                        at: id,
                        retry: false,
                    });
                }
            }
            if state.retries < self.retries {
                let issued = (0..self.writes).filter(|w| state.issued & (1 << w) != 0);
                for write in issued {
                    actions.push(ReplicaAction::Write {
                        write,
                        at: id,
                        retry: true,
                    });
                }
            }
            if state.reads.len() < usize::from(self.reads) {
                actions.push(ReplicaAction::Read(id));
            }
            if self.next_change(state).is_some() {
                actions.push(ReplicaAction::Change(id));
            }
            if state.crashes < self.crashes {
                let unsynced: usize = state.nodes[self.index(id)]
                    .unsynced
                    .iter()
                    .map(|b| b.records.len())
                    .sum();
                for torn in 0..=unsynced {
                    actions.push(ReplicaAction::Crash { node: id, torn });
                }
            }
            if state.wipes < self.wipes {
                actions.push(ReplicaAction::Wipe(id));
            }
            if state.put_backs < self.put_backs {
                actions.push(ReplicaAction::PutBack(id));
            }
            let status = state.nodes[self.index(id)].replica.status();
            if state.compactions < self.compactions && status.applied > status.log_start {
                actions.push(ReplicaAction::Compact(id));
            }
        }
    }

    fn next_state(&self, state: &ReplicaState, action: &ReplicaAction) -> Option<ReplicaState> {
        let mut next = state.clone();
        match action {
            ReplicaAction::Tick => {
                next.time += 1;
                let leader = self.first_leader(&next);
                for id in self.ids() {
                    let extra = self.fast_clocks && id != leader;
                    for _ in 0..1 + usize::from(extra) {
                        Arc::make_mut(&mut next.nodes[self.index(id)])
                            .replica
                            .tick();
                        self.carry_out(&mut next, id);
                    }
                }
            }
            ReplicaAction::Skew(id) => {
                next.skews += 1;
                Arc::make_mut(&mut next.nodes[self.index(*id)])
                    .replica
                    .tick();
                self.carry_out(&mut next, *id);
            }
            ReplicaAction::Deliver { index, keep, .. } => {
                let (_, from, to, message) = if *keep {
                    next.dups += 1;
                    next.network.get(*index)?.clone()
                } else {
                    next.network.remove(*index)
                };
                self.deliver(&mut next, from, to, message);
            }
            ReplicaAction::Persist(id) => self.persist(&mut next, *id),
            ReplicaAction::Round => {
                self.sync_all(&mut next);
                let network = std::mem::take(&mut next.network);
                for (_, from, to, message) in network {
                    self.deliver(&mut next, from, to, message);
                }
                self.sync_all(&mut next);
            }
            ReplicaAction::Isolate(id) => {
                next.isolated |= 1 << id;
                let cut = |e: &(u64, NodeId, NodeId, Message)| e.1 == *id || e.2 == *id;
                next.network.retain(|e| !cut(e));
            }
            ReplicaAction::Crash { node, torn } => {
                next.crashes += 1;
                let i = self.index(*node);
                let records: Vec<Record> = next.nodes[i]
                    .unsynced
                    .iter()
                    .flat_map(|b| b.records.iter().cloned())
                    .take(*torn)
                    .collect();
                for record in &records {
                    Arc::make_mut(&mut next.nodes[i]).disk.apply(record);
                    if let Record::Accept {
                        slot,
                        ballot,
                        value,
                    } = record
                    {
                        next.votes.insert((*slot, *ballot, *node), value.clone());
                    }
                }
                let (applied, configs) = next.nodes[i].snapshot.clone();
                let replica = Replica::restore(
                    self.config(*node),
                    next.nodes[i].disk.clone(),
                    applied,
                    configs,
                )
                .expect("the model's configuration is valid");
                self.restart(&mut next, *node, replica);
            }
            ReplicaAction::Wipe(id) => {
                next.wipes += 1;
                let i = self.index(*id);
                let config = self.config(*id);
                let replica = if self.bug == Some(KvBug::RejoinVotesAtOnce) {
                    Replica::new(config)
                } else {
                    Replica::rejoin(config)
                }
                .expect("the model's configuration is valid");
                let node = Arc::make_mut(&mut next.nodes[i]);
                node.disk = Durable::default();
                node.snapshot = (Slot::ZERO, None);
                self.restart(&mut next, *id, replica);
            }
            ReplicaAction::PutBack(id) => {
                next.put_backs += 1;
                let i = self.index(*id);
                let copy = Arc::clone(&self.copies.get()?[i]);
                let mut disk = copy.disk.clone();
                if self.bug != Some(KvBug::RejoinTrustsWholeLog) {
                    // What `--rejoin` writes first into the copy's log.
                    disk.apply(&Record::Rejoin);
                }
                let (applied, configs) = copy.snapshot.clone();
                let replica = Replica::restore(self.config(*id), disk.clone(), applied, configs)
                    .expect("the model's configuration is valid");
                let node = Arc::make_mut(&mut next.nodes[i]);
                node.disk = disk;
                node.snapshot = copy.snapshot.clone();
                node.applied = copy.applied.clone();
                self.restart(&mut next, *id, replica);
            }
            ReplicaAction::Compact(id) => {
                next.compactions += 1;
                self.compact(&mut next, *id);
            }
            ReplicaAction::Write { write, at, retry } => {
                let i = self.index(*at);
                Arc::make_mut(&mut next.nodes[i])
                    .replica
                    .propose(command(*write))
                    .ok()?;
                if *retry {
                    next.retries += 1;
                } else {
                    next.issued |= 1 << write;
                }
                self.carry_out(&mut next, *at);
            }
            ReplicaAction::Read(id) => {
                let i = self.index(*id);
                let ctx = next.reads.len() as u8;
                let required = next.acknowledged;
                let leads = next.nodes[i].replica.status().role == RoleName::Leader;
                if self.bug == Some(KvBug::ReadWithoutConfirmation) && leads {
                    next.reads.push(ReadOp {
                        node: *id,
                        required,
                        answer: None,
                        at_once: true,
                    });
                    let seen = writes_in(&next.nodes[i].applied);
                    self.answer(&mut next, ctx, seen);
                    return Some(next);
                }
                Arc::make_mut(&mut next.nodes[i])
                    .replica
                    .read_index(u64::from(ctx))
                    .ok()?;
                next.reads.push(ReadOp {
                    node: *id,
                    required,
                    answer: None,
                    at_once: false,
                });
                Arc::make_mut(&mut next.nodes[i]).reads.push((ctx, None));
                self.carry_out(&mut next, *id);
                let read = &mut next.reads[usize::from(ctx)];
                read.at_once = read.answer.is_some();
            }
            ReplicaAction::Change(id) => {
                let change = self.next_change(&next)?;
                Arc::make_mut(&mut next.nodes[self.index(*id)])
                    .replica
                    .propose_change(change)
                    .ok()?;
                next.changes += 1;
                self.carry_out(&mut next, *id);
            }
        }
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut properties = vec![
            Property {
                name: "agreement: every state machine applies the same value in each slot",
                expectation: Expectation::Always,
                holds: |_, s: &ReplicaState| s.intact(Broken::Agreement),
            },
            Property {
                name: "a chosen value never changes",
                expectation: Expectation::Always,
                holds: |m: &ReplicaModel, s: &ReplicaState| {
                    let mut slots: Vec<Slot> = s.votes.keys().map(|(slot, _, _)| *slot).collect();
                    slots.dedup();
                    slots
                        .iter()
                        .all(|&slot| m.chosen_values(s, slot).len() <= 1)
                },
            },
            Property {
                name: "a value is applied only once a quorum's durable votes chose it",
                expectation: Expectation::Always,
                holds: |_, s: &ReplicaState| s.intact(Broken::AppliedUnchosen),
            },
            Property {
                name: "nothing is sent before the records it reports are durable",
                expectation: Expectation::Always,
                holds: |_, s: &ReplicaState| s.intact(Broken::SentEarly),
            },
            Property {
                name: "a read returns every write acknowledged before it began",
                expectation: Expectation::Always,
                holds: |_, s: &ReplicaState| s.intact(Broken::StaleRead),
            },
            Property {
                name: "a write takes effect once, however often it is proposed",
                expectation: Expectation::Always,
                holds: |_, s: &ReplicaState| s.intact(Broken::AppliedTwice),
            },
            Property {
                name: "membership changes are chosen at least alpha slots apart",
                expectation: Expectation::Always,
                holds: |m: &ReplicaModel, s: &ReplicaState| {
                    let changes: Vec<Slot> = s
                        .decided
                        .iter()
                        .filter(|(_, v)| matches!(v, Value::Change(_)))
                        .map(|(slot, _)| *slot)
                        .collect();
                    changes.windows(2).all(|w| w[1].since(w[0]) >= m.alpha)
                },
            },
            Property {
                name: "sanity: a leader is elected and serves",
                expectation: Expectation::Sometimes,
                holds: |_, s: &ReplicaState| {
                    s.nodes.iter().any(|n| {
                        let status = n.replica.status();
                        status.role == RoleName::Leader && status.serving
                    })
                },
            },
        ];
        if self.writes > 0 {
            properties.push(Property {
                name: "sanity: a write is acknowledged",
                expectation: Expectation::Sometimes,
                holds: |_, s: &ReplicaState| s.acknowledged != 0,
            });
        }
        if self.reads > 0 {
            properties.push(Property {
                name: "sanity: a read is answered",
                expectation: Expectation::Sometimes,
                holds: |_, s: &ReplicaState| {
                    s.reads
                        .iter()
                        .any(|r| matches!(r.answer, Some(Answer::Saw(_))))
                },
            });
        }
        if self.leases && self.reads > 0 {
            properties.push(Property {
                name: "sanity: a read is answered at once, under a lease",
                expectation: Expectation::Sometimes,
                holds: |_, s: &ReplicaState| s.reads.iter().any(|r| r.at_once),
            });
        }
        if self.compactions > 0 {
            properties.push(Property {
                name: "sanity: a replica installs a peer's snapshot",
                expectation: Expectation::Sometimes,
                holds: |_, s: &ReplicaState| s.installed > 0,
            });
        }
        if self.scenario.is_some() {
            properties.push(Property {
                name: "sanity: the membership change is chosen",
                expectation: Expectation::Sometimes,
                holds: |_, s: &ReplicaState| {
                    s.decided.values().any(|v| matches!(v, Value::Change(_)))
                },
            });
        }
        if self.liveness {
            properties.push(Property {
                name: "liveness: once faults stop, a new write is chosen",
                expectation: Expectation::Always,
                holds: |m, s| m.calm_chooses(s),
            });
        }
        properties
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bugs::Variant;
    use crate::model::{Options, explore};

    fn check_all(model: &ReplicaModel) {
        let report = explore(model, Options::default());
        println!(
            "{}: {} states, {} transitions, depth {}, {:?}",
            model.summary(),
            report.states,
            report.transitions,
            report.max_depth,
            report.elapsed
        );
        assert!(report.complete);
        for f in &report.findings {
            assert!(
                f.ok(),
                "{} failed: {:?}",
                f.name,
                f.trace.as_ref().map(|t| t.steps.len())
            );
        }
    }

    #[test]
    fn the_replica_is_safe_with_a_crash() {
        check_all(&ReplicaModel {
            ticks: 1,
            crashes: 1,
            ..ReplicaModel::default()
        });
    }

    #[test]
    fn a_new_cluster_elects_and_chooses_safely() {
        check_all(&ReplicaModel {
            ticks: 2,
            writes: 0,
            start: Start::Fresh,
            ..ReplicaModel::default()
        });
    }

    #[test]
    fn leases_are_safe_when_the_followers_clocks_run_fast() {
        check_all(&ReplicaModel {
            ticks: 8,
            reads: 1,
            leases: true,
            fast_clocks: true,
            rounds: true,
            isolations: 1,
            ..ReplicaModel::default()
        });
    }

    #[test]
    fn a_write_can_always_still_be_chosen() {
        check_all(&ReplicaModel {
            ticks: 1,
            liveness: true,
            ..ReplicaModel::default()
        });
    }

    #[test]
    fn the_reductions_only_merge_states() {
        let reduced = ReplicaModel {
            ticks: 1,
            ..ReplicaModel::default()
        };
        let full = ReplicaModel {
            every_send_counts: true,
            writes_any_order: true,
            writes: 2,
            rounds: true,
            ..reduced.clone()
        };
        let reduced_two = ReplicaModel {
            writes: 2,
            rounds: true,
            ..reduced.clone()
        };
        let count = |m: &ReplicaModel| {
            let report = explore(m, Options::default());
            assert!(report.ok() && report.complete, "{}", m.summary());
            report.states
        };
        assert!(count(&reduced_two) < count(&full));
        let unreduced = ReplicaModel {
            every_send_counts: true,
            ..reduced.clone()
        };
        assert!(count(&reduced) < count(&unreduced));
    }

    /// From the replaced-behind start, one configuration that the correct
    /// replica passes in a complete search and that a leader ignoring a late
    /// promise's commit point fails.
    #[test]
    fn a_late_promise_is_heeded_after_a_missed_replacement() {
        let correct = ReplicaModel {
            ticks: 6,
            rounds: true,
            ..ReplicaModel::for_bug(KvBug::LatePromiseIgnoresCommit)
        };
        let correct = ReplicaModel {
            bug: None,
            ..correct
        };
        check_all(&correct);
        let broken = ReplicaModel {
            bug: Some(KvBug::LatePromiseIgnoresCommit),
            ..correct
        };
        let report = explore(&broken, Options::default());
        let agreement = report
            .findings
            .iter()
            .find(|f| f.name.starts_with("agreement"))
            .expect("agreement is checked");
        assert!(!agreement.ok(), "the broken leader was not caught");
    }

    #[test]
    fn the_fast_variants_are_caught_with_short_traces() {
        for bug in [
            KvBug::IgnorePromisedValues,
            KvBug::ApplyBeforeChosen,
            KvBug::RetryAppliedTwice,
            KvBug::PersistedBeforeSync,
            KvBug::HostSendsBeforeDurable,
            KvBug::OverlappingChanges,
            KvBug::ConfigBeforeChosen,
        ] {
            let model = ReplicaModel::for_bug(bug);
            let options = Options {
                stop_at_violation: true,
                ..Options::default()
            };
            let report = explore(&model, options);
            let trace = report
                .findings
                .iter()
                .find(|f| f.expectation == Expectation::Always && !f.ok())
                .and_then(|f| f.trace.as_ref());
            let Some(trace) = trace else {
                panic!("{} was not caught", bug.name());
            };
            assert!(
                !trace.steps.is_empty() && trace.steps.len() <= 12,
                "{}: a trace of {} steps",
                bug.name(),
                trace.steps.len()
            );
        }
    }
}
