//! Leader election: pre-vote, then phase 1 over every open slot.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::message::{Message, PromisedEntry, Record, Slot, Value};
use super::{Flaw, Leader, Promised, Replica, Role};
use crate::ballot::{Ballot, NodeId};

impl Replica {
    /// Whether this replica has heard from a leader recently enough to
    /// believe it alive.
    fn hears_leader(&self) -> bool {
        self.leader.is_some() && self.now < self.last_heard_leader + self.config.election_ticks
    }

    /// The leader went quiet: ask the peers whether they miss it too before
    /// raising any ballot, so that a replica cut off from the others, or one
    /// whose peers still hear a healthy leader, disturbs nobody.
    pub(super) fn start_pre_vote(&mut self) {
        self.leader = None;
        self.reset_election_deadline();
        let mut granted = BTreeSet::new();
        granted.insert(self.config.id);
        self.role = Role::PreCandidate {
            granted,
            started: self.now,
        };
        let ballot = self.highest_seen.next_for(self.config.id);
        if self.voters_now().is_quorum(&[self.config.id]) {
            self.start_phase1();
        } else {
            self.broadcast(Message::PreVote { ballot });
        }
    }

    pub(super) fn on_pre_vote(&mut self, from: NodeId, ballot: Ballot) {
        let leading = matches!(self.role, Role::Leader(_));
        let granted = !leading
            && self.rejoin.is_none()
            && !self.hears_leader()
            && self.now >= self.lease_granted_until
            && ballot > self.promised;
        self.send(from, Message::PreVoteReply { ballot, granted });
        if ballot <= self.promised {
            // Tell the candidate what it must beat: a voter that cannot
            // run itself (one whose membership it does not know in force
            // yet) would otherwise refuse the same ballot forever.
            let promised = self.promised;
            self.send(from, Message::Nack { ballot, promised });
        }
    }

    pub(super) fn on_pre_vote_reply(&mut self, from: NodeId, ballot: Ballot, granted: bool) {
        if ballot != self.highest_seen.next_for(self.config.id) || !granted {
            return;
        }
        let Role::PreCandidate { granted: votes, .. } = &mut self.role else {
            return;
        };
        votes.insert(from);
        let votes = votes.clone();
        if self.voters_now().is_quorum(&votes) {
            self.start_phase1();
        }
    }

    /// Phase 1a: a ballot above any seen, for every slot not known chosen.
    pub(super) fn start_phase1(&mut self) {
        if self.now < self.lease_granted_until {
            // We may still owe a lease to the previous leader.
            self.become_follower();
            return;
        }
        let ballot = self
            .highest_seen
            .max(self.promised)
            .next_for(self.config.id);
        let from_slot = self.commit + 1;
        self.promise(ballot);
        self.role = Role::Candidate {
            ballot,
            from_slot,
            promises: BTreeMap::new(),
            started: self.now,
        };
        // Our own promise, as our acceptor would answer it.
        let own = self.promised_entries(from_slot);
        self.broadcast(Message::Prepare { ballot, from_slot });
        self.on_promise(self.config.id, ballot, self.commit, own);
    }

    pub(super) fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit: Slot,
        entries: Vec<PromisedEntry>,
    ) {
        if let Role::Leader(_) = self.role {
            self.on_late_promise(from, ballot, commit, entries);
            return;
        }
        let Role::Candidate {
            ballot: current,
            promises,
            ..
        } = &mut self.role
        else {
            return;
        };
        if *current != ballot {
            return;
        }
        promises.insert(from, Promised { commit, entries });
        let promisers: Vec<NodeId> = promises.keys().copied().collect();
        if self.voters_now().is_quorum(&promisers) {
            self.become_leader();
        }
    }

    /// A promise that reaches the leader after its election: from a voter
    /// that a membership change brought in (the leader asked it), or a slow
    /// one. What it reports counts for every slot not proposed yet.
    fn on_late_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit: Slot,
        entries: Vec<PromisedEntry>,
    ) {
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        if leader.ballot != ballot || !leader.promisers.insert(from) {
            return;
        }
        // As at the election: slots up to the commit point it reports are
        // chosen (it may have compacted them, so it cannot report its votes
        // there); never propose there, learn them instead.
        if self.config.flaw != Some(Flaw::LatePromiseIgnoresCommit) {
            leader.next_slot = leader.next_slot.max(commit + 1);
        }
        let next = leader.next_slot;
        leader.reported = leader.reported.split_off(&next);
        let mut chosen = Vec::new();
        for e in entries {
            if e.chosen {
                chosen.push(e);
            } else if e.slot >= next {
                note_highest(&mut leader.reported, e.slot, e.ballot, e.value);
            }
        }
        self.known_commit = self.known_commit.max(commit);
        for e in chosen {
            self.learn_chosen(e.slot, &e.value);
        }
        self.advance_commit();
    }

    pub(super) fn on_nack(&mut self, ballot: Ballot, promised: Ballot) {
        if promised <= ballot {
            return;
        }
        self.highest_seen = self.highest_seen.max(promised);
        let own = match &self.role {
            Role::Leader(l) => Some(l.ballot),
            Role::Candidate { ballot, .. } => Some(*ballot),
            Role::Follower | Role::PreCandidate { .. } => None,
        };
        if own == Some(ballot) {
            self.become_follower();
        }
    }

    /// Gives up any leadership or candidacy.
    pub(super) fn become_follower(&mut self) {
        if let Role::Leader(leader) = &mut self.role {
            // Reads of our own host can no longer be confirmed; commands not
            // yet proposed go to whoever leads next.
            let failed: Vec<u64> = leader
                .reads
                .iter()
                .map(|r| (r.ctx, r.origin))
                .chain(leader.early_reads.iter().copied())
                .filter(|(_, origin)| origin.is_none())
                .map(|(ctx, _)| ctx)
                .collect();
            self.ready.failed_reads.extend(failed);
            let pending = std::mem::take(&mut leader.pending);
            self.forward.extend(pending);
            self.forward.truncate(self.config.pending_commands_max);
            self.leader = None;
        }
        self.role = Role::Follower;
        self.reset_election_deadline();
    }

    /// A quorum promised: take over every open slot. The slots are proposed
    /// in order as the window allows (see [`Replica::fill_slots`]).
    fn become_leader(&mut self) {
        let Role::Candidate {
            ballot,
            from_slot,
            promises,
            ..
        } = std::mem::replace(&mut self.role, Role::Follower)
        else {
            return;
        };
        // Slots up to the highest commit point reported are chosen: never
        // propose them again (an acceptor that compacted one could not report
        // its vote), but learn their values from whoever has them.
        let mut commit_reported = self.commit;
        let mut best_reporter = self.config.id;
        let mut reported: BTreeMap<Slot, (Ballot, Value)> = BTreeMap::new();
        for (&acceptor, promised) in &promises {
            if promised.commit > commit_reported {
                commit_reported = promised.commit;
                best_reporter = acceptor;
            }
            for e in &promised.entries {
                if e.slot < from_slot {
                    continue;
                }
                if e.chosen {
                    self.learn_chosen(e.slot, &e.value);
                    continue;
                }
                // The value accepted in the highest ballot is the only one
                // that can have been chosen: it is what we must propose.
                note_highest(&mut reported, e.slot, e.ballot, e.value.clone());
            }
        }
        let last_reported = reported.keys().next_back().copied().unwrap_or(Slot::ZERO);
        let top = last_reported
            .max(commit_reported)
            .max(self.log.keys().next_back().copied().unwrap_or(Slot::ZERO));
        let peers: Vec<NodeId> = self.peers().collect();
        let next_slot = (commit_reported + 1).max(from_slot);
        let leader = Leader {
            ballot,
            from_slot,
            promisers: promises.keys().copied().collect(),
            // Reports at or below the commit point are moot: those slots
            // are chosen.
            reported: reported.split_off(&next_slot),
            prepare_asked: None,
            next_slot,
            inflight: BTreeMap::new(),
            noop_slot: top + 1,
            noop_proposed: false,
            change: None,
            change_slot: None,
            transfer: None,
            pending: VecDeque::new(),
            unsent: Vec::new(),
            commit_sent: Slot::ZERO,
            heartbeat_seq: 0,
            heartbeat_sent: BTreeMap::new(),
            heartbeat_due: true,
            next_heartbeat: self.now,
            acked_seq: BTreeMap::new(),
            peer_commit: BTreeMap::new(),
            catch_up_turn: 0,
            last_heard: peers.iter().map(|&p| (p, self.now)).collect(),
            lease_until: 0,
            lease_from: Slot::ZERO,
            reads: Vec::new(),
            early_reads: Vec::new(),
            step_down: false,
            own_votes: VecDeque::new(),
        };
        self.leader = Some((self.config.id, ballot));
        self.known_commit = self.known_commit.max(commit_reported);
        self.role = Role::Leader(Box::new(leader));
        // Commands queued for a leader while we were not one are ours now.
        let queued = std::mem::take(&mut self.forward);
        if let Role::Leader(leader) = &mut self.role {
            leader.pending.extend(queued);
        }
        self.advance_commit();
        // Chosen slots we lack: ask the replica that reported the most.
        if self.commit < commit_reported && best_reporter != self.config.id {
            self.catch_up_asked = None;
            self.maybe_catch_up(best_reporter);
        }
    }

    /// Records that `value` is chosen for `slot` (learned from a promise).
    fn learn_chosen(&mut self, slot: Slot, value: &Value) {
        if slot <= self.commit {
            return;
        }
        let entry = self.log.entry(slot).or_default();
        if entry.chosen.is_none() {
            entry.chosen = Some(value.clone());
            self.ready.records.push(Record::Chosen {
                slot,
                value: value.clone(),
            });
        }
    }
}

/// Keeps, for `slot`, the value reported with the highest ballot.
fn note_highest(
    reported: &mut BTreeMap<Slot, (Ballot, Value)>,
    slot: Slot,
    ballot: Ballot,
    value: Value,
) {
    if reported.get(&slot).is_none_or(|(b, _)| ballot > *b) {
        reported.insert(slot, (ballot, value));
    }
}
