//! The acceptor's side: promises, acceptances and heartbeats from leaders.

use super::message::{Message, PromisedEntry, Record, Slot, Value};
use super::{Replica, Role};
use crate::ballot::{Ballot, NodeId};

impl Replica {
    /// Raises the promise to `ballot`, durably, and steps down from any role
    /// that belonged to a lower ballot.
    pub(super) fn promise(&mut self, ballot: Ballot) {
        if ballot > self.promised {
            self.promised = ballot;
            self.ready.records.push(Record::Promise(ballot));
        }
        self.highest_seen = self.highest_seen.max(ballot);
        let own = match &self.role {
            Role::Leader(l) => Some(l.ballot),
            Role::Candidate { ballot, .. } => Some(*ballot),
            Role::Follower | Role::PreCandidate { .. } => None,
        };
        if own.is_some_and(|b| b < ballot) {
            self.become_follower();
        }
    }

    /// Phase 1b for every slot from `from_slot` on.
    pub(super) fn on_prepare(&mut self, from: NodeId, ballot: Ballot, from_slot: Slot) {
        if self.rejoin.is_some() {
            return; // we vote for nobody until the rejoin is complete
        }
        if ballot < self.promised {
            self.nack(from, ballot);
            return;
        }
        let from_leader = self.leader.is_some_and(|(id, _)| id == from);
        if ballot > self.promised && self.now < self.lease_granted_until && !from_leader {
            // We told a leader we would promise nobody else until then. The
            // candidate will time out and try again after the lease. (The
            // leader itself may raise its ballot: it gives up its lease.)
            return;
        }
        self.promise(ballot);
        // A contender is running: give it time before running ourselves.
        self.reset_election_deadline();
        let entries = self.promised_entries(from_slot);
        self.send(
            from,
            Message::Promise {
                ballot,
                commit: self.commit,
                log_start: self.log_start,
                entries,
            },
        );
    }

    /// Phase 2b for a batch of slots, then learning from the commit point.
    pub(super) fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        entries: Vec<(Slot, Value)>,
        commit: Slot,
    ) {
        if ballot < self.promised {
            self.nack(from, ballot);
            return;
        }
        self.promise(ballot);
        self.follow(from, ballot);
        if self.rejoin.is_some() {
            // Not voting yet: only learn what the leader says is chosen.
            self.learn_commit(from, ballot, commit);
            return;
        }
        let mut slots = Vec::with_capacity(entries.len());
        for (slot, value) in entries {
            slots.push(slot);
            if slot <= self.commit {
                // Chosen already: a higher ballot can only carry the same
                // value, so there is nothing to write.
                continue;
            }
            let entry = self.log.entry(slot).or_default();
            if entry.accepted.as_ref().is_some_and(|(b, _)| *b == ballot) {
                continue; // a duplicate
            }
            entry.accepted = Some((ballot, value.clone()));
            self.flawed_note(slot, &value);
            self.ready.records.push(Record::Accept {
                slot,
                ballot,
                value,
            });
        }
        if !slots.is_empty() {
            self.send(from, Message::Accepted { ballot, slots });
        }
        self.learn_commit(from, ballot, commit);
    }

    /// A leader's heartbeat: it is alive, and this is its commit point.
    pub(super) fn on_heartbeat(&mut self, from: NodeId, ballot: Ballot, commit: Slot, seq: u64) {
        if ballot < self.promised {
            self.nack(from, ballot);
            return;
        }
        self.promise(ballot);
        self.follow(from, ballot);
        if self.config.lease_ticks > 0 {
            // The lease: promise nobody else for a while, from now.
            self.lease_granted_until = self
                .lease_granted_until
                .max(self.now + self.config.lease_ticks);
        }
        self.learn_commit(from, ballot, commit);
        let commit = self.commit;
        self.send(
            from,
            Message::HeartbeatAck {
                ballot,
                seq,
                commit,
            },
        );
    }

    /// Refuses `ballot`, saying what we promised instead.
    fn nack(&mut self, to: NodeId, ballot: Ballot) {
        let promised = self.promised;
        self.send(to, Message::Nack { ballot, promised });
    }

    /// What a promise reports from `from_slot` on: for each slot, the chosen
    /// value if known (flagged, so the candidate learns it outright), else
    /// the latest acceptance with its ballot.
    pub(super) fn promised_entries(&self, from_slot: Slot) -> Vec<PromisedEntry> {
        let first = from_slot.max(self.log_start + 1);
        self.log
            .range(first..)
            .filter_map(|(&slot, e)| {
                let (ballot, value) = match (&e.chosen, &e.accepted) {
                    (Some(v), Some((b, _))) => (*b, v.clone()),
                    (Some(v), None) => (Ballot::ZERO, v.clone()),
                    (None, Some((b, v))) => (*b, v.clone()),
                    (None, None) => return None,
                };
                Some(PromisedEntry {
                    slot,
                    ballot,
                    value,
                    chosen: e.chosen.is_some(),
                })
            })
            .collect()
    }

    /// Takes `from` as the leader of `ballot`.
    pub(super) fn follow(&mut self, from: NodeId, ballot: Ballot) {
        if !matches!(self.role, Role::Follower) {
            self.become_follower();
        }
        self.leader = Some((from, ballot));
        self.last_heard_leader = self.now;
        self.reset_election_deadline();
    }
}
