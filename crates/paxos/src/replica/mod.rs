//! Multi-Paxos: a replicated log of commands, the same on every replica.
//!
//! A [`Replica`] plays all three roles of the synod for every slot of the log
//! at once. It is driven like the synod roles, without I/O:
//!
//! - [`Replica::step`] hands it a message from a peer,
//! - [`Replica::tick`] advances its logical clock by one tick,
//! - [`Replica::propose`] and [`Replica::read_index`] come from clients,
//! - [`Replica::take_ready`] collects what it asks the host to do,
//! - [`Replica::persisted`] says which of the records it asked for are
//!   durable.
//!
//! # The output contract
//!
//! Records are numbered from 1 in the order the replica hands them out
//! ([`RecordNo`]); [`Ready::records_end`] is the number of the last record
//! of a `Ready` (or of an earlier one, if it has none). The host carries a
//! `Ready` out so:
//!
//! 1. write `records` durably, after every record handed out before them;
//!    once records up to `records_end` are durable, call
//!    [`Replica::persisted`] with it;
//! 2. send `messages` whenever it likes, and `persisted_messages` only once
//!    records up to `records_end` are durable: they report promises and
//!    acceptances that are only true once on disk, so the replica keeps them
//!    apart and no host has to tell them apart itself;
//! 3. apply `committed` to the state machine, in order (chosen values are
//!    facts: this need not wait for the records);
//! 4. then answer the `reads` (each is linearizable once the entries up to its
//!    index are applied, which step 3 has done).
//!
//! The host may go on stepping, ticking and taking `Ready`s while the records
//! are being written: the leader counts its own acceptance of a slot only
//! once [`Replica::persisted`] covers it, so nothing is chosen on the
//! strength of a vote that a crash could still take back, and a proposer's
//! accepts may travel while its own disk is busy. A host that writes
//! synchronously calls `persisted` right after the write, before sending.
//!
//! # How it works
//!
//! One leader at a time runs phase 2 only, for a window of slots, batching
//! many client commands per slot. A replica that stops hearing from a leader
//! first asks its peers whether they too miss it (pre-vote), then runs phase 1
//! once, with a ballot higher than any it has seen, for every slot from its
//! first one not known chosen. With a quorum of promises it re-proposes, in
//! its own ballot, the highest-ballot value reported for each open slot, fills
//! gaps with no-ops, and commits a no-op of its own before it serves reads.
//! The leader piggybacks its commit point on accepts and heartbeats; a
//! follower marks a slot chosen when it holds the leader's value for it, and
//! otherwise asks for the chosen values (catch-up).
//!
//! Reads are linearizable: either under a lease (followers that acknowledged
//! the leader's heartbeat refuse to promise any other ballot for
//! `lease_ticks`; the leader trusts its lease for a shorter time that allows
//! for clock drift), or by read-index (a heartbeat round confirms the leader is
//! still leader before it answers at its commit point).

mod acceptor;
mod durable;
mod election;
mod leader;
mod learner;
mod membership;
mod message;
mod rejoin;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

pub use durable::Durable;
pub use membership::{ALPHA_MAX, Change, ChangeError, Configs, Member, MemberRole, Membership};
pub use message::{Message, PromisedEntry, Record, RecordNo, Slot, Value};

use crate::ballot::{Ballot, NodeId};
use crate::rng::Rng;

/// How a replica behaves. Times are in ticks of the host's clock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// This replica.
    pub id: NodeId,
    /// The founding voters, this replica included. Used only by a replica
    /// that has no membership from a snapshot: the log says who the members
    /// are from then on.
    pub members: Vec<NodeId>,
    /// The founding window α: a membership change chosen in slot `s`
    /// governs from slot `s + alpha`. Every founding member must use the
    /// same value; it is kept in the log's memberships from then on.
    pub alpha: u64,
    /// A learner added to become a voter is promoted once its commit point
    /// is within this many slots of the leader's.
    pub promote_within_slots: u64,
    /// A leader sends heartbeats this often.
    pub heartbeat_ticks: u64,
    /// A follower suspects its leader after a random silence between this
    /// and twice this.
    pub election_ticks: u64,
    /// How long a follower that acknowledged a heartbeat refuses to promise
    /// another ballot; 0 turns leader leases off (reads use read-index).
    pub lease_ticks: u64,
    /// The largest rate, in parts per million, at which two clocks may drift
    /// apart. The leader shortens its lease by it.
    pub drift_ppm: u64,
    /// Slots a leader may have proposed but not yet seen chosen.
    pub inflight_slots_max: u64,
    /// Commands a leader puts in one slot.
    pub batch_commands_max: usize,
    /// Payload bytes a leader puts in one slot (a single larger command still
    /// gets a slot of its own).
    pub batch_bytes_max: usize,
    /// Proposals a leader queues while its window is full, or a follower
    /// queues for the leader, before refusing more.
    pub pending_commands_max: usize,
    /// Chosen values sent in one catch-up message.
    pub catch_up_slots_max: usize,
    /// Seeds the election jitter. Give each replica its own.
    pub seed: u64,
    /// A deliberately broken rule, for the simulator to catch. A node never
    /// sets one.
    pub flaw: Option<Flaw>,
}

/// A deliberately broken rule of membership, for the simulator to catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flaw {
    /// A replica acts on a membership change as soon as it proposes or
    /// accepts it, before it is chosen (and without waiting α slots).
    ConfigBeforeChosen,
    /// Removed members keep receiving the log, and their acceptances keep
    /// counting.
    RemovedStillVotes,
    /// A leader that asks a voter a change brought in for its promise
    /// ignores the commit point the promise reports, and proposes in slots
    /// that voter knows are chosen (and may have compacted).
    LatePromiseIgnoresCommit,
    /// A leader takes a new change while the previous one is not yet in
    /// force, and checks it against the membership without the pending
    /// one, so its quorum check no longer describes what will run.
    OverlappingChanges,
}

impl Config {
    /// A configuration with defaults suited to a tick of about 10 ms.
    pub fn new(id: NodeId, members: Vec<NodeId>) -> Config {
        Config {
            id,
            members,
            alpha: 64,
            promote_within_slots: 64,
            heartbeat_ticks: 2,
            election_ticks: 20,
            lease_ticks: 16,
            drift_ppm: 50_000,
            inflight_slots_max: 64,
            batch_commands_max: 512,
            batch_bytes_max: 1 << 20,
            pending_commands_max: 65_536,
            catch_up_slots_max: 256,
            seed: id,
            flaw: None,
        }
    }

    /// Checks the relations the protocol relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let unique: BTreeSet<_> = self.members.iter().collect();
        if unique.len() != self.members.len() {
            return Err(ConfigError::DuplicateMember);
        }
        if self.alpha == 0 || self.alpha > membership::ALPHA_MAX {
            return Err(ConfigError::Timing("alpha must be between 1 and 1048576"));
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err(ConfigError::Timing(
                "heartbeat_ticks must be at least 1 and below election_ticks",
            ));
        }
        if self.lease_ticks >= self.election_ticks {
            return Err(ConfigError::Timing(
                "lease_ticks must be below election_ticks",
            ));
        }
        if self.drift_ppm >= 500_000 {
            return Err(ConfigError::Timing("drift_ppm must be below 500000"));
        }
        if self.inflight_slots_max == 0
            || self.batch_commands_max == 0
            || self.catch_up_slots_max == 0
        {
            return Err(ConfigError::Timing(
                "inflight_slots_max, batch_commands_max and catch_up_slots_max must be positive",
            ));
        }
        Ok(())
    }

    /// The founding membership.
    pub fn founding(&self) -> Membership {
        Membership::founding(self.members.iter().copied(), self.alpha)
    }

    /// How long a leader may trust a lease confirmed by a heartbeat it sent
    /// `lease_ticks` ago, by its own clock. Followers refuse promises for
    /// `lease_ticks` of *their* clock from when they saw the heartbeat; a clock
    /// runs at most `1 + drift` and at least `1 - drift` times real time, and
    /// each clock may be up to one tick behind the real time it reads.
    pub fn leader_lease_ticks(&self) -> u64 {
        if self.lease_ticks < 2 {
            return 0;
        }
        let ppm = u128::from(self.drift_ppm);
        let scaled = u128::from(self.lease_ticks - 1) * (1_000_000 - ppm) / (1_000_000 + ppm);
        u64::try_from(scaled).unwrap_or(0).saturating_sub(1)
    }
}

/// A configuration the protocol cannot run with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("a member is listed twice")]
    DuplicateMember,
    #[error("{0}")]
    Timing(&'static str),
}

/// Why a proposal or read was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// No leader is known; try again later, or at another replica.
    #[error("no leader is known")]
    NoLeader,
    /// Too many proposals are queued.
    #[error("too many pending proposals ({0})")]
    Busy(usize),
}

/// A read that may now be answered: linearizable once entries up to `index`
/// are applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReadState {
    pub ctx: u64,
    pub index: Slot,
}

/// What the replica asks its host to do; see the module notes for the order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ready {
    /// Durable writes, in order, after every record of earlier `Ready`s.
    pub records: Vec<Record>,
    /// The number of the last record handed out so far, this `Ready`'s
    /// included (records are numbered from 1 since the replica was made).
    pub records_end: RecordNo,
    /// Messages that may leave at once: they claim nothing about this
    /// replica's durable state.
    pub messages: Vec<(NodeId, Message)>,
    /// Messages that may leave only once records up to `records_end` are
    /// durable.
    pub persisted_messages: Vec<(NodeId, Message)>,
    /// Chosen entries to apply, in slot order, each exactly once.
    pub committed: Vec<(Slot, Value)>,
    /// Reads that may be answered once `committed` is applied.
    pub reads: Vec<ReadState>,
    /// Reads this replica can no longer confirm (it lost leadership);
    /// answer them with an error or retry them.
    pub failed_reads: Vec<u64>,
    /// A peer (first) says slots up to the given slot are compacted: fetch
    /// its snapshot and call [`Replica::install_snapshot`].
    pub snapshot_needed: Option<(NodeId, Slot)>,
}

impl Ready {
    /// Nothing to do (whatever `records_end` says).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.messages.is_empty()
            && self.persisted_messages.is_empty()
            && self.committed.is_empty()
            && self.reads.is_empty()
            && self.failed_reads.is_empty()
            && self.snapshot_needed.is_none()
    }
}

/// A replica's role, for status reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleName {
    Follower,
    /// Asking peers whether they miss the leader too.
    PreCandidate,
    /// Running phase 1.
    Candidate,
    Leader,
    /// Not voting: a learner of the membership, or rebuilding lost state
    /// (see `rejoin.rs`).
    Learner,
    /// Removed from the membership: it neither votes nor serves.
    Removed,
}

impl RoleName {
    pub fn as_str(self) -> &'static str {
        match self {
            RoleName::Follower => "follower",
            RoleName::PreCandidate => "precandidate",
            RoleName::Candidate => "candidate",
            RoleName::Leader => "leader",
            RoleName::Learner => "learner",
            RoleName::Removed => "removed",
        }
    }
}

/// A snapshot of a replica's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: RoleName,
    pub leader: Option<NodeId>,
    pub promised: Ballot,
    pub commit: Slot,
    pub applied: Slot,
    pub log_start: Slot,
    /// On a leader: slots proposed and not yet chosen.
    pub inflight: u64,
    /// On a leader: commands waiting for the window; elsewhere, for a leader.
    pub pending: usize,
    /// On a leader: whether it has committed its no-op and may serve reads.
    pub serving: bool,
}

/// What a slot holds here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Entry {
    /// This replica's latest acceptance for the slot.
    accepted: Option<(Ballot, Value)>,
    /// The chosen value, once known.
    chosen: Option<Value>,
}

/// A proposal of the leader that is not chosen yet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct InFlight {
    value: Value,
    /// Acceptors that accepted it in the leader's ballot.
    accepted_by: BTreeSet<NodeId>,
}

/// A read waiting for its leadership check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PendingRead {
    ctx: u64,
    /// Where to send the answer; `None` for a read of this replica's host.
    origin: Option<NodeId>,
    /// Confirmed by a heartbeat round numbered at least this.
    seq: u64,
    index: Slot,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Leader {
    ballot: Ballot,
    /// Phase 1 covers every slot from here on.
    from_slot: Slot,
    /// The acceptors that promised this ballot.
    promisers: BTreeSet<NodeId>,
    /// For each slot not proposed yet, the highest-ballot value reported in
    /// any promise: what this leader must propose there.
    reported: BTreeMap<Slot, (Ballot, Value)>,
    /// When voters that have not promised were last asked to.
    prepare_asked: Option<u64>,
    next_slot: Slot,
    inflight: BTreeMap<Slot, InFlight>,
    /// The no-op of this term, past every slot reported in a promise; reads
    /// wait until it is committed. It moves on while it is not proposed.
    noop_slot: Slot,
    noop_proposed: bool,
    /// A membership change waiting for a slot, and the slot of the last one
    /// proposed.
    change: Option<Change>,
    change_slot: Option<Slot>,
    /// Leadership being handed to a voter, since when: no new proposals,
    /// no lease, and the hand-over once it has caught up.
    transfer: Option<(NodeId, u64)>,
    pending: VecDeque<Bytes>,
    /// New slots not yet sent to the followers.
    unsent: Vec<(Slot, Value)>,
    /// The commit point last broadcast to the followers.
    commit_sent: Slot,
    heartbeat_seq: u64,
    /// When each recent heartbeat round was sent, by seq.
    heartbeat_sent: BTreeMap<u64, u64>,
    heartbeat_due: bool,
    next_heartbeat: u64,
    /// The highest heartbeat seq each peer acknowledged.
    acked_seq: BTreeMap<NodeId, u64>,
    /// The commit point each peer last reported.
    peer_commit: BTreeMap<NodeId, Slot>,
    /// Counts catch-up requests, to ask each peer in turn when none is
    /// known to be ahead.
    catch_up_turn: usize,
    /// When each peer last answered in this ballot.
    last_heard: BTreeMap<NodeId, u64>,
    lease_until: u64,
    /// The first slot of the membership whose voters granted the lease.
    lease_from: Slot,
    /// Reads waiting for their heartbeat round.
    reads: Vec<PendingRead>,
    /// Reads waiting for the no-op to commit before they get an index.
    early_reads: Vec<(u64, Option<NodeId>)>,
    /// Set by leader code that finds it must give up leadership.
    step_down: bool,
    /// Slots proposed in this ballot whose own acceptance is not yet
    /// durable, with the number of the record that makes it so. The
    /// leader's vote for them counts once [`Replica::persisted`] covers it.
    own_votes: VecDeque<(RecordNo, Slot)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Role {
    Follower,
    PreCandidate {
        granted: BTreeSet<NodeId>,
        started: u64,
    },
    Candidate {
        ballot: Ballot,
        from_slot: Slot,
        promises: BTreeMap<NodeId, Promised>,
        started: u64,
    },
    Leader(Box<Leader>),
}

/// What a candidate heard from one acceptor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Promised {
    commit: Slot,
    entries: Vec<PromisedEntry>,
}

/// A Multi-Paxos replica: acceptor, proposer and learner for every slot.
///
/// Comparable and hashable as a whole, so that a model checker can tell
/// two states of a cluster apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Replica {
    config: Config,
    rng: Rng,
    /// Ticks since this replica started.
    now: u64,

    // Acceptor state; mirrored durably through `Record`s.
    /// Invariant: `promised >= b` for every accepted `(b, _)` in `log`.
    promised: Ballot,
    log: BTreeMap<Slot, Entry>,
    /// Slots up to here are in the host's snapshot only.
    log_start: Slot,
    /// Every slot up to here is chosen with its value known.
    /// Invariant: `log_start <= applied <= commit`.
    commit: Slot,
    /// The commit point last made durable with `Record::Commit`.
    commit_recorded: Slot,
    /// Entries emitted to the host for applying.
    applied: Slot,
    /// Who votes for which slot; changes chosen up to `configs_through`
    /// are noted in it.
    configs: Configs,
    configs_through: Slot,

    // What this replica knows of the leader.
    leader: Option<(NodeId, Ballot)>,
    last_heard_leader: u64,
    /// The highest commit point a leader told us about.
    known_commit: Slot,
    /// Refuse to promise a new ballot before this tick (a lease we granted,
    /// or the lease we may have granted before a restart).
    lease_granted_until: u64,
    election_deadline: u64,
    /// The highest ballot heard of, to go above it when preparing.
    highest_seen: Ballot,
    /// When this replica last asked for catch-up, to pace the requests.
    catch_up_asked: Option<u64>,
    role: Role,

    /// Set while rebuilding lost state: the replica does not vote.
    rejoin: Option<rejoin::Rejoin>,
    /// Commands waiting for a leader to forward them to.
    forward: Vec<Bytes>,
    /// Reads answered by the leader, waiting for the index to be applied.
    reads_waiting: Vec<ReadState>,
    /// Records handed out (in `Ready`s taken, and in `ready`), and how many
    /// of them the host reported durable.
    records_handed: RecordNo,
    records_durable: RecordNo,
    ready: Ready,
}

impl Replica {
    /// A replica with nothing durable yet.
    pub fn new(config: Config) -> Result<Replica, ConfigError> {
        Replica::restore(config, Durable::default(), Slot::ZERO, None)
    }

    /// A replica whose durable state was lost (a damaged or wiped disk): it
    /// rejoins as a learner and votes again only once that is safe (see
    /// `rejoin.rs`). Its first record marks the log as rejoining, so a crash
    /// before the rejoin completes restarts it.
    pub fn rejoin(config: Config) -> Result<Replica, ConfigError> {
        let durable = Durable {
            rejoining: true,
            ..Durable::default()
        };
        let mut replica = Replica::restore(config, durable, Slot::ZERO, None)?;
        replica.ready.records.push(Record::Rejoin);
        Ok(replica)
    }

    /// A replica restarted from its durable state, whose host's state machine
    /// already holds every entry up to `applied` (its snapshot). The snapshot
    /// may be ahead of the durable log (a crash after the snapshot was saved
    /// but before the log recorded it): its slots are chosen, so the log
    /// below it is dropped.
    ///
    /// `configs` are the memberships the snapshot carries (see
    /// [`Replica::snapshot_configs`]); without a snapshot, the founding
    /// membership of `config` governs the log from its first slot. A replica
    /// that is not among the founders is not a member until a change adds
    /// it: it runs for nothing and counts for nothing.
    pub fn restore(
        config: Config,
        mut durable: Durable,
        applied: Slot,
        configs: Option<Configs>,
    ) -> Result<Replica, ConfigError> {
        config.validate()?;
        let configs = configs.unwrap_or_else(|| Configs::new(config.founding()));
        let mut ready = Ready::default();
        if applied > durable.log_start {
            let record = Record::Compact { up_to: applied };
            durable.apply(&record);
            ready.records.push(record);
        }
        let mut log: BTreeMap<Slot, Entry> = BTreeMap::new();
        for (slot, (ballot, value)) in durable.accepted {
            log.entry(slot).or_default().accepted = Some((ballot, value));
        }
        for (slot, value) in durable.chosen {
            log.entry(slot).or_default().chosen = Some(value);
        }
        // Slots up to the durable commit are chosen with the value we hold.
        for (slot, entry) in log.range_mut(..=durable.commit) {
            if entry.chosen.is_none() {
                entry.chosen = entry.accepted.as_ref().map(|(_, v)| v.clone());
            }
            assert!(
                entry.chosen.is_some() || *slot <= durable.log_start,
                "durable commit {} covers slot {slot} with no value",
                durable.commit
            );
        }
        let applied = applied.max(durable.log_start);
        let rejoin = durable.rejoining.then(rejoin::Rejoin::default);
        // The snapshot's memberships hold the changes chosen up to it; the
        // log holds the rest.
        let configs_through = applied;
        let mut rng = Rng::new(config.seed);
        let election_deadline = config.election_ticks + rng.below(config.election_ticks);
        let mut replica = Replica {
            rng,
            now: 0,
            promised: durable.promised,
            log,
            log_start: durable.log_start,
            commit: durable.commit,
            commit_recorded: durable.commit,
            applied,
            configs,
            configs_through,
            leader: None,
            last_heard_leader: 0,
            known_commit: durable.commit,
            // We may have granted a lease just before we stopped: wait it out.
            lease_granted_until: config.lease_ticks,
            election_deadline,
            highest_seen: durable.promised,
            catch_up_asked: None,
            role: Role::Follower,
            rejoin,
            forward: Vec::new(),
            reads_waiting: Vec::new(),
            records_handed: RecordNo::ZERO,
            records_durable: RecordNo::ZERO,
            ready,
            config,
        };
        replica.fold_configs();
        replica.check_invariants();
        Ok(replica)
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current role and progress.
    pub fn status(&self) -> Status {
        let (role, inflight, pending, serving) = match &self.role {
            Role::Follower => (RoleName::Follower, 0, self.forward.len(), false),
            Role::PreCandidate { .. } => (RoleName::PreCandidate, 0, self.forward.len(), false),
            Role::Candidate { .. } => (RoleName::Candidate, 0, self.forward.len(), false),
            Role::Leader(l) => (
                RoleName::Leader,
                l.inflight.len() as u64,
                l.pending.len(),
                self.serving(l),
            ),
        };
        let role = if self.rejoin.is_some() {
            RoleName::Learner
        } else if role == RoleName::Follower && !self.votes_now() {
            if self.is_gone(self.config.id) {
                RoleName::Removed
            } else {
                RoleName::Learner
            }
        } else {
            role
        };
        Status {
            id: self.config.id,
            role,
            leader: self.leader.map(|(id, _)| id),
            promised: self.promised,
            commit: self.commit,
            applied: self.applied,
            log_start: self.log_start,
            inflight,
            pending,
            serving,
        }
    }

    /// On a leader: how far each peer has learned the log (its commit point
    /// as it last reported it). Empty elsewhere.
    pub fn peer_progress(&self) -> Vec<(NodeId, Slot)> {
        match &self.role {
            Role::Leader(l) => l.peer_commit.iter().map(|(&id, &s)| (id, s)).collect(),
            _ => Vec::new(),
        }
    }

    /// The chosen value of `slot`, if known and not compacted.
    pub fn chosen(&self, slot: Slot) -> Option<&Value> {
        self.log.get(&slot).and_then(|e| e.chosen.as_ref())
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.now += 1;
        if self.rejoin.is_some() {
            self.tick_rejoin();
            self.check_invariants();
            return;
        }
        match &self.role {
            Role::Leader(_) => {
                self.tick_leader();
                self.maybe_promote();
                self.maybe_hand_over();
            }
            Role::Follower => {
                if self.now >= self.election_deadline {
                    if self.votes_now() {
                        self.start_pre_vote();
                    } else {
                        // Learners and removed members never run.
                        self.reset_election_deadline();
                    }
                }
            }
            Role::PreCandidate { started, .. } | Role::Candidate { started, .. } => {
                if self.now >= started + self.config.election_ticks {
                    // No quorum in time: wait a fresh random while.
                    self.become_follower();
                }
            }
        }
        self.check_invariants();
    }

    /// Hands the replica a message from `from`.
    pub fn step(&mut self, from: NodeId, message: Message) {
        if from == self.config.id {
            return;
        }
        if self.is_gone(from) && self.config.flaw != Some(Flaw::RemovedStillVotes) {
            // A removed member counts for nothing, but may learn the log,
            // and so its own removal.
            match message {
                Message::CatchUp { from_slot } => self.on_catch_up(from, from_slot),
                Message::Chosen { .. } => {}
                _ => self.send(
                    from,
                    Message::Chosen {
                        entries: Vec::new(),
                        commit: self.commit,
                    },
                ),
            }
            return;
        }
        match message {
            Message::PreVote { ballot } => self.on_pre_vote(from, ballot),
            Message::PreVoteReply { ballot, granted } => {
                self.on_pre_vote_reply(from, ballot, granted)
            }
            Message::Prepare { ballot, from_slot } => self.on_prepare(from, ballot, from_slot),
            Message::Promise {
                ballot,
                commit,
                log_start: _,
                entries,
            } => self.on_promise(from, ballot, commit, entries),
            Message::Nack { ballot, promised } => self.on_nack(ballot, promised),
            Message::Accept {
                ballot,
                entries,
                commit,
            } => self.on_accept(from, ballot, entries, commit),
            Message::Accepted { ballot, slots } => self.on_accepted(from, ballot, &slots),
            Message::Heartbeat {
                ballot,
                commit,
                seq,
            } => self.on_heartbeat(from, ballot, commit, seq),
            Message::HeartbeatAck {
                ballot,
                seq,
                commit,
            } => self.on_heartbeat_ack(from, ballot, seq, commit),
            Message::CatchUp { from_slot } => self.on_catch_up(from, from_slot),
            Message::Chosen { entries, commit } => self.on_chosen(from, entries, commit),
            Message::SnapshotNeeded { slot } => {
                if slot > self.commit && self.ready.snapshot_needed.is_none() {
                    self.ready.snapshot_needed = Some((from, slot));
                }
            }
            Message::Forward { commands } => {
                if let Role::Leader(_) = self.role {
                    for command in commands {
                        // A full queue drops the rest; the origin retries.
                        if self.propose(command).is_err() {
                            break;
                        }
                    }
                }
            }
            Message::ReadIndexRequest { ctx } => {
                if let Role::Leader(_) = self.role {
                    self.leader_read(ctx, Some(from));
                }
            }
            Message::ReadIndexReply { ctx, index } => {
                self.reads_waiting.push(ReadState { ctx, index });
            }
            Message::RejoinQuery { above } => self.on_rejoin_query(from, above),
            Message::RejoinReply {
                promised,
                leading_from,
            } => self.on_rejoin_reply(from, promised, leading_from),
            Message::TransferLeadership { ballot, to } => self.on_transfer(from, ballot, to),
        }
        self.maybe_resume();
        self.check_invariants();
    }

    /// Proposes a client command. On a follower, the command is forwarded to
    /// the leader it knows of; its result shows when it is applied.
    pub fn propose(&mut self, command: Bytes) -> Result<(), ProposeError> {
        let max = self.config.pending_commands_max;
        match &mut self.role {
            Role::Leader(leader) => {
                if leader.pending.len() >= max {
                    return Err(ProposeError::Busy(leader.pending.len()));
                }
                leader.pending.push_back(command);
                Ok(())
            }
            _ => {
                if self.leader.is_none() {
                    return Err(ProposeError::NoLeader);
                }
                if self.forward.len() >= max {
                    return Err(ProposeError::Busy(self.forward.len()));
                }
                self.forward.push(command);
                Ok(())
            }
        }
    }

    /// Asks for a linearizable read point. The answer comes in
    /// [`Ready::reads`] with the same `ctx` (or in [`Ready::failed_reads`]).
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        match &self.role {
            Role::Leader(_) => {
                self.leader_read(ctx, None);
                Ok(())
            }
            _ => match self.leader {
                Some((leader, _)) => {
                    self.send(leader, Message::ReadIndexRequest { ctx });
                    Ok(())
                }
                None => Err(ProposeError::NoLeader),
            },
        }
    }

    /// Proposes a change of membership. Only the leader takes one, and only
    /// one at a time: none may be waiting or chosen and not yet in force.
    /// The change must leave a quorum of the new voters connected and
    /// caught up (within `promote_within_slots`), so that the cluster keeps
    /// working once it is in force.
    pub fn propose_change(&mut self, change: Change) -> Result<(), ChangeError> {
        let Role::Leader(leader) = &self.role else {
            return Err(ChangeError::NotLeader);
        };
        // A change proposed and not known chosen yet (once chosen, the
        // membership it makes is the latest, checked below).
        let proposed = leader.change_slot.is_some_and(|slot| slot > self.commit);
        let overlap = self.config.flaw == Some(Flaw::OverlappingChanges);
        if (leader.change.is_some() || proposed) && !overlap {
            return Err(ChangeError::InProgress(self.configs.latest_from()));
        }
        if self.configs.latest_from() > self.commit + 1 && !overlap {
            return Err(ChangeError::InProgress(self.configs.latest_from()));
        }
        let next = self.configs.latest().apply(&change)?;
        let (ready, missing) = self.healthy_voters(&next);
        if !next.is_quorum(&ready) {
            return Err(ChangeError::Refused(format!(
                "after {change} the voters would be {:?}, of which {:?} are not connected or \
                 not caught up; a quorum of {} is needed",
                next.voters().collect::<Vec<_>>(),
                missing,
                next.quorum()
            )));
        }
        if let Role::Leader(leader) = &mut self.role {
            leader.change = Some(change);
        }
        Ok(())
    }

    /// Hands the leadership to voter `to` (on the leader): the leader stops
    /// proposing, waits until `to` has every chosen slot, then tells
    /// everyone and steps down in the same moment; its followers release
    /// the lease they granted it (it no longer reads under it) and `to` runs
    /// phase 1 at once. Commands that arrive meanwhile wait and go to the
    /// new leader. Abandoned if it does not happen within an election
    /// timeout.
    pub fn transfer_leadership(&mut self, to: NodeId) -> Result<(), ChangeError> {
        let me = self.config.id;
        let now = self.now;
        let voter = self.voters_now().is_voter(to) && self.configs.latest().is_voter(to);
        let Role::Leader(leader) = &mut self.role else {
            return Err(ChangeError::NotLeader);
        };
        if to == me {
            return Err(ChangeError::Refused(format!("node {to} leads already")));
        }
        if !voter {
            return Err(ChangeError::Refused(format!(
                "node {to} is not a voter; only a voter can lead"
            )));
        }
        if let Some((other, _)) = leader.transfer {
            return Err(ChangeError::Refused(format!(
                "leadership is being handed to node {other} already"
            )));
        }
        leader.transfer = Some((to, now));
        Ok(())
    }

    /// On a leader whose removal (or demotion) is chosen: hands the
    /// leadership to the most advanced voter of the new membership.
    fn maybe_hand_over(&mut self) {
        let Role::Leader(leader) = &self.role else {
            return;
        };
        let latest = self.configs.latest();
        if latest.is_voter(self.config.id) || leader.transfer.is_some() {
            return;
        }
        let heard = |id: &NodeId| {
            leader
                .last_heard
                .get(id)
                .is_some_and(|&t| self.now < t + self.config.election_ticks)
        };
        let best = latest
            .voters()
            .filter(|id| heard(id) && self.voters_now().is_voter(*id))
            .max_by_key(|id| leader.peer_commit.get(id).copied().unwrap_or(Slot::ZERO));
        if let Some(to) = best {
            let _ = self.transfer_leadership(to);
        }
    }

    /// The leader of `ballot` hands over to `to`.
    fn on_transfer(&mut self, from: NodeId, ballot: Ballot, to: NodeId) {
        if self.leader != Some((from, ballot)) || ballot < self.promised {
            return;
        }
        // It gave up its lease before it said so: ours to it may go.
        self.lease_granted_until = self.now;
        if to == self.config.id && self.votes_now() && self.rejoin.is_none() {
            self.leader = None;
            self.start_phase1();
        } else {
            self.reset_election_deadline();
        }
    }

    /// On a leader: proposes to promote a learner added to become a voter
    /// once it has caught up, when no other change is in progress.
    fn maybe_promote(&mut self) {
        let Role::Leader(leader) = &self.role else {
            return;
        };
        if !self.serving(leader) {
            return;
        }
        let within = self.config.promote_within_slots;
        let ready = self.configs.latest().members.iter().find_map(|(&id, m)| {
            let caught_up = leader
                .peer_commit
                .get(&id)
                .is_some_and(|&c| c + within >= self.commit);
            (m.role == (MemberRole::Learner { promote: true }) && caught_up).then_some(id)
        });
        if let Some(id) = ready {
            // Refused while another change is in progress: tried again later.
            let _ = self.propose_change(Change::Promote { id });
        }
    }

    /// On a leader: the voters of `membership` that answered within an
    /// election timeout and are caught up, and those that are not.
    fn healthy_voters(&self, membership: &Membership) -> (Vec<NodeId>, Vec<NodeId>) {
        let Role::Leader(leader) = &self.role else {
            return (Vec::new(), membership.voters().collect());
        };
        let within = self.config.promote_within_slots;
        membership.voters().partition(|&id| {
            if id == self.config.id {
                return true;
            }
            let heard = leader
                .last_heard
                .get(&id)
                .is_some_and(|&t| self.now < t + self.config.election_ticks);
            let caught_up = leader
                .peer_commit
                .get(&id)
                .is_some_and(|&c| c + within >= self.commit);
            heard && caught_up
        })
    }

    /// The host's snapshot now holds every entry up to `up_to` (at most what
    /// was applied): the log below it may go.
    pub fn compact(&mut self, up_to: Slot) {
        let up_to = up_to.min(self.applied);
        if up_to <= self.log_start {
            return;
        }
        self.log = self.log.split_off(&(up_to + 1));
        self.log_start = up_to;
        self.configs.trim(up_to + 1);
        self.ready.records.push(Record::Compact { up_to });
        self.check_invariants();
    }

    /// The host installed a snapshot holding every entry up to `slot`
    /// (received from a peer after [`Ready::snapshot_needed`]), with the
    /// memberships it carries.
    pub fn install_snapshot(&mut self, slot: Slot, configs: Configs) {
        if slot <= self.commit {
            return;
        }
        self.log = self.log.split_off(&(slot + 1));
        self.log_start = slot;
        self.commit = slot;
        self.applied = slot;
        self.configs = configs;
        self.configs_through = slot;
        self.known_commit = self.known_commit.max(slot);
        self.ready.records.push(Record::Compact { up_to: slot });
        self.advance_commit();
        self.check_invariants();
    }

    /// The host made every record up to number `up_to` durable (see the
    /// output contract). Reports of records never handed out are ignored.
    pub fn persisted(&mut self, up_to: RecordNo) {
        let handed = self.records_handed;
        let up_to = up_to.min(handed);
        if up_to <= self.records_durable {
            return;
        }
        self.records_durable = up_to;
        self.count_own_votes(up_to);
        self.check_invariants();
    }

    /// The number the next record pushed onto `ready.records` will have.
    fn next_record_number(&self) -> RecordNo {
        self.records_handed + (self.ready.records.len() as u64 + 1)
    }

    /// Collects everything the replica asks its host to do.
    pub fn take_ready(&mut self) -> Ready {
        if let Role::Leader(_) = self.role {
            self.flush_leader();
        } else if !self.forward.is_empty()
            && let Some((leader, _)) = self.leader
        {
            let commands = std::mem::take(&mut self.forward);
            self.send(leader, Message::Forward { commands });
        }
        if self.commit > self.commit_recorded {
            self.ready
                .records
                .push(Record::Commit { up_to: self.commit });
            self.commit_recorded = self.commit;
        }
        while self.applied < self.commit {
            self.applied += 1;
            let value = self
                .log
                .get(&self.applied)
                .and_then(|e| e.chosen.clone())
                .expect("a committed slot above the snapshot has its chosen value");
            self.ready.committed.push((self.applied, value));
        }
        let applied = self.applied;
        let (done, waiting): (Vec<ReadState>, Vec<ReadState>) = self
            .reads_waiting
            .drain(..)
            .partition(|r| r.index <= applied);
        self.reads_waiting = waiting;
        self.ready.reads.extend(done);
        self.check_invariants();
        self.records_handed = self.records_handed + self.ready.records.len() as u64;
        self.ready.records_end = self.records_handed;
        std::mem::take(&mut self.ready)
    }

    fn send(&mut self, to: NodeId, message: Message) {
        if message.needs_durable_records() {
            self.ready.persisted_messages.push((to, message));
        } else {
            self.ready.messages.push((to, message));
        }
    }

    /// Every member of the memberships from the first open slot on, voters
    /// and learners, this replica excepted.
    fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.config.id;
        let mut all = BTreeSet::new();
        for m in self.configs.between(self.commit + 1, Slot(u64::MAX)) {
            all.extend(m.members.keys().copied());
        }
        if self.config.flaw == Some(Flaw::RemovedStillVotes) {
            all.extend(self.configs.latest().retired.iter().copied());
        }
        all.into_iter().filter(move |&m| m != me)
    }

    /// Whether `id` was removed and no longer belongs to any membership from
    /// the first open slot on (until its removal is in force, it still
    /// votes where it is a voter).
    fn is_gone(&self, id: NodeId) -> bool {
        self.configs.latest().retired.contains(&id)
            && !self
                .configs
                .between(self.commit + 1, Slot(u64::MAX))
                .any(|m| m.is_member(id))
    }

    /// The membership of the first slot not known chosen: its voters elect
    /// leaders, confirm reads and hold leases.
    fn voters_now(&self) -> &Membership {
        self.configs.at(self.commit + 1)
    }

    /// Whether this replica votes for the first open slot.
    fn votes_now(&self) -> bool {
        self.voters_now().is_voter(self.config.id)
    }

    /// Every membership this replica knows of, and the first slot each
    /// governs.
    pub fn configs(&self) -> &Configs {
        &self.configs
    }

    /// The memberships a snapshot of the state up to `slot` (at most the
    /// commit point) must carry: those the changes chosen up to `slot` make.
    pub fn snapshot_configs(&self, slot: Slot) -> Configs {
        let limit = slot + self.configs.alpha();
        let kept: Vec<(Slot, Membership)> = self
            .configs
            .from_slot(slot + 1)
            .entries()
            .iter()
            .filter(|(from, _)| *from <= limit)
            .cloned()
            .collect();
        Configs::from_entries(kept).unwrap_or_else(|| self.configs.from_slot(slot + 1))
    }

    /// The `ConfigBeforeChosen` flaw: notes a change as soon as it is
    /// proposed or accepted here.
    fn flawed_note(&mut self, slot: Slot, value: &Value) {
        if self.config.flaw == Some(Flaw::ConfigBeforeChosen)
            && let Value::Change(change) = value
        {
            let from = (slot + 1).max(self.configs.latest_from() + 1);
            let change = change.clone();
            self.configs.note_change_from(from, &change);
        }
    }

    /// Notes the membership changes among newly committed slots.
    fn fold_configs(&mut self) {
        while self.configs_through < self.commit {
            let slot = self.configs_through + 1;
            if let Some(Value::Change(change)) = self.log.get(&slot).and_then(|e| e.chosen.as_ref())
            {
                let change = change.clone();
                self.configs.note_change(slot, &change);
            }
            self.configs_through = slot;
        }
        if matches!(self.role, Role::Follower) && self.is_gone(self.config.id) {
            // Removed: nobody leads for us any more.
            self.leader = None;
            self.forward.clear();
        }
    }

    fn broadcast(&mut self, message: Message) {
        let peers: Vec<NodeId> = self.peers().collect();
        for peer in peers {
            self.send(peer, message.clone());
        }
    }

    fn reset_election_deadline(&mut self) {
        let e = self.config.election_ticks;
        self.election_deadline = self.now + e + self.rng.below(e);
    }

    /// Panics if the replica's state is inconsistent. Cheap; always on.
    pub fn check_invariants(&self) {
        assert!(
            self.log_start <= self.applied && self.applied <= self.commit,
            "replica {}: log_start {} applied {} commit {}",
            self.config.id,
            self.log_start,
            self.applied,
            self.commit
        );
        if let Some((first, _)) = self.log.first_key_value() {
            assert!(*first > self.log_start, "entry below the snapshot");
        }
        if let Some((_, entry)) = self.log.last_key_value()
            && let Some((b, _)) = &entry.accepted
        {
            assert!(*b <= self.promised, "accepted above the promise");
        }
        if self.rejoin.is_some() {
            assert!(
                matches!(self.role, Role::Follower),
                "a rejoining replica neither leads nor runs"
            );
            for entry in self.log.values() {
                assert!(entry.accepted.is_none(), "a rejoining replica accepted");
            }
        }
        if let Role::Leader(l) = &self.role {
            assert_eq!(l.ballot, self.promised, "a leader's ballot is its promise");
            if let Some((slot, _)) = l.inflight.first_key_value() {
                assert!(*slot > self.commit, "in flight below commit");
            }
        }
    }
}
