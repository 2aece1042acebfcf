//! The learner's side: finding out which values are chosen.

use super::message::{Message, Record, Slot, Value};
use super::{Replica, Role};
use crate::ballot::{Ballot, NodeId};

impl Replica {
    /// The leader of `ballot` says every slot up to `commit` is chosen. A slot
    /// whose value we accepted in that same ballot holds the chosen value
    /// (a ballot proposes one value per slot); for any other we must ask.
    pub(super) fn learn_commit(&mut self, leader: NodeId, ballot: Ballot, commit: Slot) {
        self.known_commit = self.known_commit.max(commit);
        while self.commit < commit {
            let slot = self.commit + 1;
            let Some(entry) = self.log.get_mut(&slot) else {
                break;
            };
            if entry.chosen.is_none() {
                match &entry.accepted {
                    Some((b, v)) if *b == ballot => entry.chosen = Some(v.clone()),
                    _ => break,
                }
            }
            self.commit = slot;
        }
        self.advance_commit();
        self.maybe_catch_up(leader);
    }

    /// Moves the commit point over every following slot whose chosen value
    /// is known.
    pub(super) fn advance_commit(&mut self) {
        while let Some(entry) = self.log.get(&(self.commit + 1)) {
            if entry.chosen.is_none() {
                break;
            }
            self.commit += 1;
        }
        self.fold_configs();
        // A leader may learn that a slot it re-proposed is chosen from a
        // replica outside its promise quorum (catch-up): the value is the one
        // it proposed, and the slot is no longer in flight.
        if let Role::Leader(leader) = &mut self.role {
            let commit = self.commit;
            leader.inflight.retain(|slot, _| *slot > commit);
            // Slots a newer leader got chosen, learned before we heard of
            // its ballot: never propose there.
            leader.next_slot = leader.next_slot.max(commit + 1);
        }
    }

    /// Asks `peer` for chosen values we are missing, at most once per
    /// heartbeat interval unless the last answer made progress.
    pub(super) fn maybe_catch_up(&mut self, peer: NodeId) {
        if self.commit >= self.known_commit {
            self.catch_up_asked = None;
            return;
        }
        let pace = self.config.heartbeat_ticks * 2;
        if self
            .catch_up_asked
            .is_some_and(|asked| self.now < asked + pace)
        {
            return;
        }
        self.catch_up_asked = Some(self.now);
        self.send(
            peer,
            Message::CatchUp {
                from_slot: self.commit + 1,
            },
        );
    }

    /// A peer asks for chosen values from `from_slot` on.
    pub(super) fn on_catch_up(&mut self, from: NodeId, from_slot: Slot) {
        if from_slot <= self.log_start {
            self.send(
                from,
                Message::SnapshotNeeded {
                    slot: self.log_start,
                },
            );
            return;
        }
        let last = self.commit.min(Slot(
            from_slot
                .0
                .saturating_add(self.config.catch_up_slots_max as u64 - 1),
        ));
        let entries: Vec<(Slot, Value)> = Slot::range(from_slot, last)
            .filter_map(|slot| self.chosen(slot).map(|v| (slot, v.clone())))
            .collect();
        self.send(
            from,
            Message::Chosen {
                entries,
                commit: self.commit,
            },
        );
    }

    /// Chosen values from a peer: learn them, durably, then continue asking
    /// if we are still behind.
    pub(super) fn on_chosen(&mut self, from: NodeId, entries: Vec<(Slot, Value)>, commit: Slot) {
        let progressed = entries.iter().any(|(slot, _)| *slot == self.commit + 1);
        for (slot, value) in entries {
            if slot <= self.commit {
                continue;
            }
            let entry = self.log.entry(slot).or_default();
            if entry.chosen.is_some() {
                continue;
            }
            entry.chosen = Some(value.clone());
            self.ready.records.push(Record::Chosen { slot, value });
        }
        self.known_commit = self.known_commit.max(commit);
        self.advance_commit();
        if progressed {
            self.catch_up_asked = None;
        }
        self.maybe_catch_up(from);
    }
}
