//! What replicas say to each other, and what they ask their host to persist.

use std::fmt;

use bytes::Bytes;

use super::membership::Change;
use crate::ballot::Ballot;

/// A position in the replicated log. Slot 0 is never used: "up to slot 0"
/// means "nothing".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Slot(pub u64);

impl Slot {
    /// "Nothing": below every slot that holds a value.
    pub const ZERO: Slot = Slot(0);

    /// The slot after this one.
    pub fn next(self) -> Slot {
        self + 1
    }

    /// How many slots lie after `earlier` up to and including this one
    /// (0 when `earlier` is not before it).
    pub fn since(self, earlier: Slot) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// The slots from `first` to `last`, both included.
    pub fn range(first: Slot, last: Slot) -> impl DoubleEndedIterator<Item = Slot> {
        (first.0..=last.0).map(Slot)
    }
}

impl std::ops::Add<u64> for Slot {
    type Output = Slot;
    fn add(self, n: u64) -> Slot {
        Slot(self.0 + n)
    }
}

impl std::ops::AddAssign<u64> for Slot {
    fn add_assign(&mut self, n: u64) {
        self.0 += n;
    }
}

impl std::ops::Sub<u64> for Slot {
    type Output = Slot;
    fn sub(self, n: u64) -> Slot {
        Slot(self.0 - n)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The number of a record the replica handed its host: records are
/// numbered from 1 in the order they are handed out, and "durable up to
/// record n" covers every record up to n.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct RecordNo(pub u64);

impl RecordNo {
    /// Before the first record.
    pub const ZERO: RecordNo = RecordNo(0);
}

impl std::ops::Add<u64> for RecordNo {
    type Output = RecordNo;
    fn add(self, n: u64) -> RecordNo {
        RecordNo(self.0 + n)
    }
}

impl fmt::Display for RecordNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a slot holds once chosen: nothing (a no-op a new leader uses to fill
/// gaps and to mark its term), a batch of client commands, opaque to the
/// protocol, or a change of membership (see `membership.rs`).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Value {
    Noop,
    Batch(Vec<Bytes>),
    Change(Change),
}

impl Value {
    /// Commands in the value.
    pub fn commands(&self) -> &[Bytes] {
        match self {
            Value::Noop | Value::Change(_) => &[],
            Value::Batch(commands) => commands,
        }
    }

    /// Payload bytes, for limits and metrics.
    pub fn bytes(&self) -> usize {
        self.commands().iter().map(Bytes::len).sum()
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Noop => write!(f, "noop"),
            Value::Batch(commands) => write!(f, "batch of {}", commands.len()),
            Value::Change(change) => write!(f, "{change}"),
        }
    }
}

/// An acceptor's vote for a slot, as reported in a promise.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PromisedEntry {
    pub slot: Slot,
    /// The ballot the value was accepted in.
    pub ballot: Ballot,
    pub value: Value,
    /// The acceptor knows this value is chosen: the candidate may learn it
    /// outright instead of proposing it again.
    pub chosen: bool,
}

/// A message between replicas. Every message carries the sender's view of the
/// ballot it concerns; stale ones are recognised by it and ignored.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Message {
    /// "Would you support a new leader?" Sent before phase 1 so that a node
    /// that cannot win, or whose peers still hear a healthy leader, does not
    /// raise ballots and depose it.
    PreVote { ballot: Ballot },
    /// The answer to `PreVote`.
    PreVoteReply { ballot: Ballot, granted: bool },
    /// Phase 1a for every slot from `from_slot` on.
    Prepare { ballot: Ballot, from_slot: Slot },
    /// Phase 1b: the promise, with every value this acceptor accepted from
    /// `from_slot` on, and how far it knows the log is chosen.
    Promise {
        ballot: Ballot,
        /// The acceptor knows every slot up to here is chosen.
        commit: Slot,
        /// Slots below this were compacted into a snapshot.
        log_start: Slot,
        entries: Vec<PromisedEntry>,
    },
    /// A refusal: the acceptor promised `promised`, higher than `ballot`.
    Nack { ballot: Ballot, promised: Ballot },
    /// Phase 2a for a batch of slots, with the leader's commit point.
    Accept {
        ballot: Ballot,
        entries: Vec<(Slot, Value)>,
        commit: Slot,
    },
    /// Phase 2b: the acceptor accepted these slots in `ballot`.
    Accepted { ballot: Ballot, slots: Vec<Slot> },
    /// The leader is alive; everything up to `commit` is chosen. `seq`
    /// numbers the heartbeat round, for leases and read-index.
    Heartbeat {
        ballot: Ballot,
        commit: Slot,
        seq: u64,
    },
    /// The answer to a heartbeat: this acceptor still follows `ballot`, and
    /// knows every slot up to `commit` is chosen (how far behind it is).
    HeartbeatAck {
        ballot: Ballot,
        seq: u64,
        commit: Slot,
    },
    /// A follower asks the leader for chosen values from `from_slot` on.
    CatchUp { from_slot: Slot },
    /// Chosen values, in slot order, and the sender's commit point.
    Chosen {
        entries: Vec<(Slot, Value)>,
        commit: Slot,
    },
    /// The slots a follower asked for were compacted away: it needs the
    /// snapshot taken at `slot` (sent by the hosts, outside the protocol).
    SnapshotNeeded { slot: Slot },
    /// A follower hands client commands to the leader.
    Forward { commands: Vec<Bytes> },
    /// A follower asks the leader to confirm a linearizable read point.
    ReadIndexRequest { ctx: u64 },
    /// The leader's answer: a read is linearizable once `index` is applied.
    ReadIndexReply { ctx: u64, index: Slot },
    /// A replica that lost its durable state asks what its peers promised
    /// (see `rejoin.rs`); once it knows, it asks a leader whose ballot is not
    /// `above` that floor to run phase 1 again with a higher one.
    RejoinQuery { above: Option<Ballot> },
    /// The answer: the sender's promise, and, when it leads with phase 1
    /// done, the first slot of its term (its no-op).
    RejoinReply {
        promised: Ballot,
        leading_from: Option<Slot>,
    },
    /// The leader of `ballot` hands its leadership to `to`: it has given up
    /// its lease, so its followers release the lease they granted it, and
    /// `to` runs phase 1 at once.
    TransferLeadership { ballot: Ballot, to: crate::NodeId },
}

impl Message {
    /// Whether the message may leave only once every record handed out
    /// with it (and before it) is durable: it reports a promise or an
    /// acceptance, claims a ballot (a proposer must never reuse one after
    /// a crash), or speaks for a replica that is rejoining.
    ///
    /// The others carry no claim about this replica's durable state and may
    /// leave at once: phase 2a accepts (the leader's own acceptance counts
    /// only once durable), heartbeats and commit points (chosen values are
    /// facts), forwarded commands, catch-up and read-index traffic, and the
    /// pre-vote, which promises nothing.
    pub(crate) fn needs_durable_records(&self) -> bool {
        match self {
            Message::Prepare { .. }
            | Message::Promise { .. }
            | Message::Nack { .. }
            | Message::Accepted { .. }
            | Message::HeartbeatAck { .. }
            | Message::RejoinQuery { .. }
            | Message::RejoinReply { .. } => true,
            Message::PreVote { .. }
            | Message::PreVoteReply { .. }
            | Message::Accept { .. }
            | Message::Heartbeat { .. }
            | Message::CatchUp { .. }
            | Message::Chosen { .. }
            | Message::SnapshotNeeded { .. }
            | Message::Forward { .. }
            | Message::ReadIndexRequest { .. }
            | Message::ReadIndexReply { .. }
            | Message::TransferLeadership { .. } => false,
        }
    }

    /// A short name, for traces and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::PreVote { .. } => "PreVote",
            Message::PreVoteReply { .. } => "PreVoteReply",
            Message::Prepare { .. } => "Prepare",
            Message::Promise { .. } => "Promise",
            Message::Nack { .. } => "Nack",
            Message::Accept { .. } => "Accept",
            Message::Accepted { .. } => "Accepted",
            Message::Heartbeat { .. } => "Heartbeat",
            Message::HeartbeatAck { .. } => "HeartbeatAck",
            Message::CatchUp { .. } => "CatchUp",
            Message::Chosen { .. } => "Chosen",
            Message::SnapshotNeeded { .. } => "SnapshotNeeded",
            Message::Forward { .. } => "Forward",
            Message::ReadIndexRequest { .. } => "ReadIndexRequest",
            Message::ReadIndexReply { .. } => "ReadIndexReply",
            Message::RejoinQuery { .. } => "RejoinQuery",
            Message::RejoinReply { .. } => "RejoinReply",
            Message::TransferLeadership { .. } => "TransferLeadership",
        }
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::PreVote { ballot } => write!(f, "PreVote({ballot})"),
            Message::PreVoteReply { ballot, granted } => {
                write!(f, "PreVoteReply({ballot}, granted={granted})")
            }
            Message::Prepare { ballot, from_slot } => {
                write!(f, "Prepare({ballot}, from slot {from_slot})")
            }
            Message::Promise {
                ballot,
                commit,
                log_start,
                entries,
            } => write!(
                f,
                "Promise({ballot}, commit {commit}, log from {log_start}, {} entries)",
                entries.len()
            ),
            Message::Nack { ballot, promised } => write!(f, "Nack({ballot}, promised {promised})"),
            Message::Accept {
                ballot,
                entries,
                commit,
            } => {
                let slots: Vec<String> = entries.iter().map(|(s, v)| format!("{s}:{v}")).collect();
                write!(
                    f,
                    "Accept({ballot}, [{}], commit {commit})",
                    slots.join(" ")
                )
            }
            Message::Accepted { ballot, slots } => write!(f, "Accepted({ballot}, {slots:?})"),
            Message::Heartbeat {
                ballot,
                commit,
                seq,
            } => write!(f, "Heartbeat({ballot}, commit {commit}, #{seq})"),
            Message::HeartbeatAck {
                ballot,
                seq,
                commit,
            } => {
                write!(f, "HeartbeatAck({ballot}, #{seq}, commit {commit})")
            }
            Message::CatchUp { from_slot } => write!(f, "CatchUp(from slot {from_slot})"),
            Message::Chosen { entries, commit } => {
                let first = entries.first().map_or(Slot::ZERO, |(s, _)| *s);
                write!(
                    f,
                    "Chosen({} from slot {first}, commit {commit})",
                    entries.len()
                )
            }
            Message::SnapshotNeeded { slot } => write!(f, "SnapshotNeeded(at slot {slot})"),
            Message::Forward { commands } => write!(f, "Forward({} commands)", commands.len()),
            Message::ReadIndexRequest { ctx } => write!(f, "ReadIndexRequest(#{ctx})"),
            Message::ReadIndexReply { ctx, index } => {
                write!(f, "ReadIndexReply(#{ctx}, index {index})")
            }
            Message::RejoinQuery { above: None } => write!(f, "RejoinQuery"),
            Message::RejoinQuery { above: Some(b) } => write!(f, "RejoinQuery(above {b})"),
            Message::RejoinReply {
                promised,
                leading_from,
            } => match leading_from {
                Some(slot) => write!(f, "RejoinReply({promised}, leading from slot {slot})"),
                None => write!(f, "RejoinReply({promised})"),
            },
            Message::TransferLeadership { ballot, to } => {
                write!(f, "TransferLeadership({ballot}, to {to})")
            }
        }
    }
}

/// A change to a replica's durable state. The host writes records in order;
/// replaying them with [`crate::replica::Durable::apply`] rebuilds the state.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Record {
    /// The acceptor promised `ballot` (and nothing below it any more).
    Promise(Ballot),
    /// The acceptor accepted `value` for `slot` in `ballot`.
    Accept {
        slot: Slot,
        ballot: Ballot,
        value: Value,
    },
    /// Every slot up to `up_to` is chosen, with the value this replica
    /// accepted for it or recorded with [`Record::Chosen`].
    Commit { up_to: Slot },
    /// `value` is chosen for `slot` (learned from another replica).
    Chosen { slot: Slot, value: Value },
    /// Slots up to `up_to` are in a snapshot the host made durable; their
    /// records may be dropped.
    Compact { up_to: Slot },
    /// This replica lost its durable state and is rejoining: it must not
    /// vote until it has caught up safely. The first record of a rebuilt log.
    Rejoin,
    /// The rejoin is complete: the replica votes again.
    Resume,
}
