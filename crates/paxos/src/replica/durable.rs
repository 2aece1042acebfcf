//! The durable state of a replica and how records rebuild it.

use std::collections::BTreeMap;

use super::message::{Record, Slot, Value};
use crate::ballot::Ballot;

/// Everything a replica must find again after a restart. The host rebuilds it
/// by replaying, in order, the records it persisted ([`Durable::apply`]).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct Durable {
    /// The highest ballot promised.
    ///
    /// Invariant: at least every ballot in `accepted`.
    pub promised: Ballot,
    /// The latest acceptance of each slot above `log_start`.
    pub accepted: BTreeMap<Slot, (Ballot, Value)>,
    /// Chosen values learned from other replicas, where they differ from
    /// what this replica accepted (or it accepted nothing).
    pub chosen: BTreeMap<Slot, Value>,
    /// Every slot up to here is chosen and its value is known here (in
    /// `chosen`, in `accepted`, or in the snapshot below `log_start`).
    pub commit: Slot,
    /// Slots up to here live only in the host's snapshot.
    pub log_start: Slot,
    /// The replica lost its state and has not finished rejoining: it must
    /// not vote (see `rejoin.rs`).
    pub rejoining: bool,
}

impl Durable {
    /// Applies one record, as the replica did when it emitted it.
    pub fn apply(&mut self, record: &Record) {
        match record {
            Record::Promise(ballot) => self.promised = self.promised.max(*ballot),
            Record::Accept {
                slot,
                ballot,
                value,
            } => {
                self.promised = self.promised.max(*ballot);
                if *slot > self.log_start {
                    self.accepted.insert(*slot, (*ballot, value.clone()));
                }
            }
            Record::Commit { up_to } => self.commit = self.commit.max(*up_to),
            Record::Chosen { slot, value } => {
                if *slot > self.log_start {
                    self.chosen.insert(*slot, value.clone());
                }
            }
            Record::Compact { up_to } => {
                if *up_to > self.log_start {
                    self.log_start = *up_to;
                    self.commit = self.commit.max(*up_to);
                    self.accepted = self.accepted.split_off(&(*up_to + 1));
                    self.chosen = self.chosen.split_off(&(*up_to + 1));
                }
            }
            Record::Rejoin => {
                // The state is treated as lost from here (see `rejoin.rs`):
                // a restored copy may hold only some of the votes the
                // replica gave, so it keeps none. What it knows chosen
                // stays, as chosen values: a chosen value never changes.
                let commit = self.commit;
                for (slot, (_, value)) in std::mem::take(&mut self.accepted) {
                    if slot <= commit {
                        self.chosen.entry(slot).or_insert(value);
                    }
                }
                self.rejoining = true;
            }
            Record::Resume => self.rejoining = false,
        }
    }

    /// The chosen value of `slot`, if this state knows it (not below the
    /// snapshot).
    pub fn chosen_value(&self, slot: Slot) -> Option<&Value> {
        if slot > self.commit || slot <= self.log_start {
            return None;
        }
        self.chosen
            .get(&slot)
            .or_else(|| self.accepted.get(&slot).map(|(_, v)| v))
    }
}
