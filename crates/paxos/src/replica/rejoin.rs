//! Rejoining after the durable state was lost (a corrupt or wiped disk).
//!
//! An acceptor that forgets what it promised or accepted is as dangerous as
//! one that lies: a value chosen with its vote could be overwritten, and a
//! promise it gave could be broken. It must not simply start again empty.
//! Instead it rejoins as a *learner* that does not vote (no promises, no
//! acceptances, no candidacy) until three things are true:
//!
//! 1. **Every** other member has told it what it promised
//!    ([`Message::RejoinQuery`] / [`Message::RejoinReply`]); `floor` is the
//!    highest of those promises. Any ballot the lost state ever promised or
//!    voted in is at most `floor`: a ballot from another leader was promised
//!    durably by that leader first; a ballot of its own that reached the
//!    voting phase was promised by some other member of its quorum.
//! 2. A leader with a ballot `B > floor` has finished phase 1 (it answers
//!    with the first slot of its term). If the current leader's ballot is
//!    not above the floor (it may be one the lost state voted in), the
//!    rejoining replica asks it to run phase 1 again with a higher ballot.
//!    The promise quorum of `B` cannot include the rejoining replica (it
//!    promises nothing, and its lost state never saw a ballot above the
//!    floor), so the leader re-proposed every value that can have been
//!    chosen with a lost vote; and nothing can be chosen below `B` any more:
//!    the quorum promised `B`, the rejoining replica will never vote below
//!    it, and the lost votes plus every member outside the quorum are fewer
//!    than a quorum.
//! 3. Every slot up to that first slot is chosen and known here.
//!
//! Then the replica promises `B`, records [`Record::Resume`], and votes as a
//! follower with an empty acceptor log above its commit point, which is
//! exactly right: no value can have been chosen there with its lost votes.
//!
//! The cost of the rule: a replica rejoins only while every other member
//! answers. A cluster that lost a member for good must replace it before a
//! second member can rejoin. A replica that is itself rejoining answers no
//! query: its promise means nothing.

use std::collections::BTreeMap;

use super::message::{Message, Record, Slot};
use super::{Replica, Role};
use crate::ballot::{Ballot, NodeId};

/// Progress of a rejoin; see the module notes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Rejoin {
    /// The promise each peer reported.
    reported: BTreeMap<NodeId, Ballot>,
    /// The highest of them, fixed once every peer has answered.
    floor: Option<Ballot>,
    /// A leader above the floor, and the first slot of its term.
    target: Option<(Ballot, Slot)>,
    /// When the query was last sent.
    asked: Option<u64>,
}

impl Replica {
    /// Whether this replica is rejoining and must not vote.
    pub fn is_rejoining(&self) -> bool {
        self.rejoin.is_some()
    }

    /// While rejoining: the peers whose answer it still waits for (empty
    /// once every peer answered and it waits for a leader above the floor
    /// and for the log up to that leader's term). `None` when not rejoining.
    pub fn rejoin_waiting_for(&self) -> Option<Vec<NodeId>> {
        let rejoin = self.rejoin.as_ref()?;
        if rejoin.floor.is_some() {
            return Some(Vec::new());
        }
        Some(
            self.peers()
                .filter(|id| !rejoin.reported.contains_key(id))
                .collect(),
        )
    }

    /// Called every tick while rejoining: ask again, at the heartbeat pace,
    /// until the peers have answered and a leader above the floor is known.
    pub(super) fn tick_rejoin(&mut self) {
        let pace = self.config.heartbeat_ticks.max(1) * 2;
        let Some(rejoin) = &mut self.rejoin else {
            return;
        };
        if rejoin.asked.is_some_and(|at| self.now < at + pace) {
            return;
        }
        rejoin.asked = Some(self.now);
        if rejoin.target.is_none() {
            let above = rejoin.floor;
            self.broadcast(Message::RejoinQuery { above });
        }
    }

    /// A peer asks what we promised, and maybe for a ballot above `above`.
    pub(super) fn on_rejoin_query(&mut self, from: NodeId, above: Option<Ballot>) {
        if self.rejoin.is_some() {
            return; // our promise means nothing while we rejoin ourselves
        }
        if let (Role::Leader(leader), Some(floor)) = (&self.role, above)
            && leader.ballot <= floor
        {
            // Our ballot may be one the lost state voted in: take a higher
            // one. Our lease ends with our leadership.
            self.become_follower();
            self.highest_seen = self.highest_seen.max(floor);
            self.start_phase1();
            return;
        }
        let leading_from = match &self.role {
            Role::Leader(leader) if leader.noop_proposed => Some(leader.noop_slot),
            _ => None,
        };
        let promised = self.promised;
        self.send(
            from,
            Message::RejoinReply {
                promised,
                leading_from,
            },
        );
    }

    /// A peer's answer to our query.
    pub(super) fn on_rejoin_reply(
        &mut self,
        from: NodeId,
        promised: Ballot,
        leading_from: Option<Slot>,
    ) {
        let peers = self.peers().count();
        let Some(rejoin) = &mut self.rejoin else {
            return;
        };
        self.highest_seen = self.highest_seen.max(promised);
        let Some(floor) = rejoin.floor else {
            let seen = rejoin.reported.entry(from).or_insert(promised);
            *seen = (*seen).max(promised);
            if rejoin.reported.len() == peers {
                rejoin.floor = rejoin.reported.values().max().copied();
                rejoin.asked = None; // ask for a ballot above it at once
            }
            return;
        };
        if let Some(first) = leading_from
            && promised > floor
            && rejoin.target.is_none_or(|(b, _)| promised > b)
        {
            rejoin.target = Some((promised, first));
        }
        self.maybe_resume();
    }

    /// Votes again once the conditions of the module notes hold.
    pub(super) fn maybe_resume(&mut self) {
        let Some(rejoin) = &self.rejoin else {
            return;
        };
        let Some((ballot, first)) = rejoin.target else {
            return;
        };
        if self.commit < first {
            return;
        }
        self.rejoin = None;
        self.promise(ballot);
        self.ready.records.push(Record::Resume);
        self.reset_election_deadline();
    }
}
