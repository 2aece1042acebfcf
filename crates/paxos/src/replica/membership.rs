//! Membership by decree: who votes for which slot.
//!
//! The configuration is part of the replicated log. A change is a value of
//! its own ([`Value::Change`]) chosen in some slot `s` like any other, and it
//! governs the slots from `s + α` on, where α ([`Membership::alpha`]) is fixed
//! when the cluster is founded. This is the rule of the Part-Time Parliament:
//! the legislators of decree `n + α` are those named by the decrees up to
//! `n`.
//!
//! # Why it is safe
//!
//! Paxos needs, for each slot, that any quorum that promises a ballot meets
//! any quorum that accepted a value in a lower ballot. Both quorums are
//! drawn from the same voters when every replica agrees on the voters of
//! each slot. The voters of slot `n` are a function of the values chosen up
//! to `n - α` ([`Configs::at`]), and chosen values are the same everywhere,
//! so a replica that knows every chosen value up to `n - α` knows the voters
//! of `n`, and any two replicas that know them agree. Three rules make every
//! decision use only voters it knows:
//!
//! 1. a leader proposes in slot `n` only when it knows every value chosen up
//!    to `n - α` (its window never passes `commit + α`), and counts only the
//!    acceptances of `n`'s voters;
//! 2. a leader proposes in slot `n` only after a quorum of `n`'s voters
//!    promised its ballot (a promise covers every slot from the first one the
//!    candidate had not seen chosen, so when a change brings in voters that
//!    did not promise, the leader asks them before it goes on);
//! 3. a value reported in a promise is a value some leader proposed in its
//!    ballot, whoever reports it, so taking the highest-ballot report among
//!    any superset of a quorum keeps phase 1's guarantee.
//!
//! No two configurations ever govern the same slot, so changes cannot
//! overlap: one chosen at `s2 > s1` governs from `s2 + α`, after the one
//! chosen at `s1`. A leader still proposes one change at a time, and only
//! once the previous one is in force, so that the quorum checks an operator
//! relies on are made against the configuration that will really run.
//!
//! Learners receive the log like voters and their promises and acceptances
//! are recorded as any acceptor's are, but no leader counts them. Retired
//! ids are never members again: a node that was removed cannot come back
//! with old state under its old name.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::message::Slot;
use crate::ballot::NodeId;

/// The largest window α a cluster may use. Slot arithmetic adds α to slot
/// numbers, so a value from a damaged or hostile record must be refused
/// before it is used.
pub const ALPHA_MAX: u64 = 1 << 20;

/// What a member does.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MemberRole {
    /// Votes: its acceptances count for the slots this configuration governs.
    Voter,
    /// Receives the log but does not vote. `promote` asks the leader to make
    /// it a voter once it has caught up.
    Learner { promote: bool },
}

/// One member: its role, and what the host keeps about it (its addresses),
/// opaque to the protocol.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Member {
    pub role: MemberRole,
    pub info: Bytes,
}

/// The members of the parliament for a range of slots.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Membership {
    /// A change chosen in slot `s` governs from slot `s + alpha` on. Fixed
    /// when the cluster is founded.
    pub alpha: u64,
    pub members: BTreeMap<NodeId, Member>,
    /// Ids removed from the parliament; never members again.
    pub retired: BTreeSet<NodeId>,
}

/// A change of membership: the value of a slot of its own.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Change {
    /// A new member, as a learner; `promote` makes it a voter once it has
    /// caught up.
    Add {
        id: NodeId,
        info: Bytes,
        promote: bool,
    },
    /// A learner becomes a voter.
    Promote { id: NodeId },
    /// A member leaves for good.
    Remove { id: NodeId },
    /// A learner takes the place of a member, in one decree: it becomes a
    /// voter (if `old` was one) and `old` leaves for good. Replacing a dead
    /// voter so never lowers the number of voters, even for a moment.
    Replace { old: NodeId, new: NodeId },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Add {
                id, promote: true, ..
            } => write!(f, "add {id}"),
            Change::Add {
                id, promote: false, ..
            } => write!(f, "add learner {id}"),
            Change::Promote { id } => write!(f, "promote {id}"),
            Change::Remove { id } => write!(f, "remove {id}"),
            Change::Replace { old, new } => write!(f, "replace {old} by {new}"),
        }
    }
}

/// Why a change cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    #[error("node {0} was removed from this cluster; a new node needs a new id")]
    Retired(NodeId),
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    #[error("node {0} is already a voter")]
    AlreadyVoter(NodeId),
    #[error("node {0} is the last voter")]
    LastVoter(NodeId),
    #[error("node id 0 is not valid")]
    ZeroId,
    #[error("a membership change is already in progress (in force from slot {0})")]
    InProgress(Slot),
    #[error("only the leader changes the membership")]
    NotLeader,
    #[error("{0}")]
    Refused(String),
}

impl Membership {
    /// The founding parliament: these voters, and the window α.
    pub fn founding(voters: impl IntoIterator<Item = NodeId>, alpha: u64) -> Membership {
        let members = voters
            .into_iter()
            .map(|id| {
                (
                    id,
                    Member {
                        role: MemberRole::Voter,
                        info: Bytes::new(),
                    },
                )
            })
            .collect();
        Membership {
            alpha,
            members,
            retired: BTreeSet::new(),
        }
    }

    /// The voters, in id order.
    pub fn voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.role == MemberRole::Voter)
            .map(|(&id, _)| id)
    }

    /// The learners, in id order.
    pub fn learners(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members
            .iter()
            .filter(|(_, m)| m.role != MemberRole::Voter)
            .map(|(&id, _)| id)
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.members
            .get(&id)
            .is_some_and(|m| m.role == MemberRole::Voter)
    }

    pub fn is_member(&self, id: NodeId) -> bool {
        self.members.contains_key(&id)
    }

    /// The number of voters that makes a quorum.
    pub fn quorum(&self) -> usize {
        self.voters().count() / 2 + 1
    }

    /// Whether the voters among `ids` are a quorum.
    pub fn is_quorum<'a>(&self, ids: impl IntoIterator<Item = &'a NodeId>) -> bool {
        let voters = ids.into_iter().filter(|&&id| self.is_voter(id)).count();
        voters >= self.quorum()
    }

    /// The membership after `change`, or why it cannot be made. Replicas
    /// apply chosen changes with this too: an invalid one changes nothing,
    /// the same way everywhere.
    pub fn apply(&self, change: &Change) -> Result<Membership, ChangeError> {
        let mut next = self.clone();
        match change {
            Change::Add { id, info, promote } => {
                if *id == 0 {
                    return Err(ChangeError::ZeroId);
                }
                if self.retired.contains(id) {
                    return Err(ChangeError::Retired(*id));
                }
                if self.is_member(*id) {
                    return Err(ChangeError::AlreadyMember(*id));
                }
                next.members.insert(
                    *id,
                    Member {
                        role: MemberRole::Learner { promote: *promote },
                        info: info.clone(),
                    },
                );
            }
            Change::Promote { id } => {
                let Some(member) = next.members.get_mut(id) else {
                    return Err(ChangeError::NotAMember(*id));
                };
                if member.role == MemberRole::Voter {
                    return Err(ChangeError::AlreadyVoter(*id));
                }
                member.role = MemberRole::Voter;
            }
            Change::Remove { id } => {
                if !self.is_member(*id) {
                    return Err(ChangeError::NotAMember(*id));
                }
                if self.is_voter(*id) && self.voters().count() == 1 {
                    return Err(ChangeError::LastVoter(*id));
                }
                next.members.remove(id);
                next.retired.insert(*id);
            }
            Change::Replace { old, new } => {
                let Some(gone) = next.members.remove(old) else {
                    return Err(ChangeError::NotAMember(*old));
                };
                let Some(member) = next.members.get_mut(new) else {
                    return Err(ChangeError::NotAMember(*new));
                };
                if member.role == MemberRole::Voter {
                    return Err(ChangeError::AlreadyVoter(*new));
                }
                member.role = gone.role;
                if member.role != MemberRole::Voter {
                    member.role = MemberRole::Learner { promote: false };
                }
                next.retired.insert(*old);
            }
        }
        Ok(next)
    }
}

/// The memberships of a stretch of the log: each with the first slot it
/// governs, in slot order. The first one governs every slot before the next.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Configs {
    history: Vec<(Slot, Membership)>,
}

impl Configs {
    /// A log governed by `membership` from its first slot.
    pub fn new(membership: Membership) -> Configs {
        Configs {
            history: vec![(Slot(1), membership)],
        }
    }

    /// Rebuilds from [`Configs::entries`]; `None` if empty or out of order.
    pub fn from_entries(history: Vec<(Slot, Membership)>) -> Option<Configs> {
        if history.is_empty() || history.windows(2).any(|w| w[0].0 >= w[1].0) {
            return None;
        }
        Some(Configs { history })
    }

    /// Every membership kept, with the first slot it governs.
    pub fn entries(&self) -> &[(Slot, Membership)] {
        &self.history
    }

    /// The window α, the same for the life of the cluster.
    pub fn alpha(&self) -> u64 {
        self.history[0].1.alpha
    }

    /// The membership that governs `slot`.
    pub fn at(&self, slot: Slot) -> &Membership {
        let i = self.history.partition_point(|(from, _)| *from <= slot);
        &self.history[i.saturating_sub(1)].1
    }

    /// The first slot governed by the membership that governs `slot`.
    pub fn governing_from(&self, slot: Slot) -> Slot {
        let i = self.history.partition_point(|(from, _)| *from <= slot);
        self.history[i.saturating_sub(1)].0
    }

    /// The newest membership, in force or not yet.
    pub fn latest(&self) -> &Membership {
        &self.history[self.history.len() - 1].1
    }

    /// The first slot the newest membership governs.
    pub fn latest_from(&self) -> Slot {
        self.history[self.history.len() - 1].0
    }

    /// A change chosen in `slot`: the membership it makes governs from
    /// `slot + α`. Changes must be noted in slot order. An invalid change
    /// changes nothing.
    pub fn note_change(&mut self, slot: Slot, change: &Change) {
        self.note_change_from(slot + self.alpha(), change);
    }

    /// A change governing from slot `from`, after every one noted so far.
    pub(super) fn note_change_from(&mut self, from: Slot, change: &Change) {
        if from <= self.latest_from() {
            return; // noted already
        }
        if let Ok(next) = self.latest().apply(change) {
            self.history.push((from, next));
        }
    }

    /// The distinct memberships that govern the slots from `first` to
    /// `last`.
    pub fn between(&self, first: Slot, last: Slot) -> impl Iterator<Item = &Membership> {
        let start = self
            .history
            .partition_point(|(from, _)| *from <= first)
            .saturating_sub(1);
        self.history[start..]
            .iter()
            .take_while(move |(from, _)| *from <= last)
            .map(|(_, m)| m)
    }

    /// Forgets memberships that govern no slot from `first` on.
    pub fn trim(&mut self, first: Slot) {
        let keep = self
            .history
            .partition_point(|(from, _)| *from <= first)
            .saturating_sub(1);
        self.history.drain(..keep);
    }

    /// The memberships that govern the slots from `first` on (what a
    /// snapshot ending at `first - 1` carries).
    pub fn from_slot(&self, first: Slot) -> Configs {
        let mut c = self.clone();
        c.trim(first);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn founding() -> Membership {
        Membership::founding([1, 2, 3], 4)
    }

    #[test]
    fn changes_apply_in_order_and_invalid_ones_are_refused() {
        let m = founding();
        let add = Change::Add {
            id: 4,
            info: Bytes::from_static(b"x"),
            promote: true,
        };
        let m2 = m.apply(&add).expect("valid");
        assert_eq!(m2.learners().collect::<Vec<_>>(), vec![4]);
        assert_eq!(m2.quorum(), 2, "a learner does not count");
        assert_eq!(m2.apply(&add), Err(ChangeError::AlreadyMember(4)));
        let m3 = m2.apply(&Change::Promote { id: 4 }).expect("valid");
        assert_eq!(m3.quorum(), 3);
        assert!(m3.is_quorum(&[1, 2, 4]));
        assert!(!m3.is_quorum(&[1, 4, 9]), "a stranger does not count");
        let m4 = m3.apply(&Change::Remove { id: 4 }).expect("valid");
        assert_eq!(m4.apply(&add), Err(ChangeError::Retired(4)));
        // A replacement swaps a learner in for a voter in one step.
        let with5 = m4
            .apply(&Change::Add {
                id: 5,
                info: Bytes::new(),
                promote: false,
            })
            .expect("valid");
        let swapped = with5
            .apply(&Change::Replace { old: 2, new: 5 })
            .expect("valid");
        assert_eq!(swapped.voters().collect::<Vec<_>>(), vec![1, 3, 5]);
        assert!(swapped.retired.contains(&2));
        assert_eq!(
            swapped.apply(&Change::Replace { old: 1, new: 3 }),
            Err(ChangeError::AlreadyVoter(3))
        );
        assert_eq!(
            Membership::founding([1], 4).apply(&Change::Remove { id: 1 }),
            Err(ChangeError::LastVoter(1))
        );
    }

    #[test]
    fn a_change_governs_alpha_slots_after_its_own() {
        let mut c = Configs::new(founding());
        c.note_change(Slot(10), &Change::Remove { id: 3 });
        assert!(c.at(Slot(13)).is_voter(3));
        assert!(!c.at(Slot(14)).is_voter(3));
        assert_eq!(c.between(Slot(12), Slot(15)).count(), 2);
        assert_eq!(c.between(Slot(14), Slot(20)).count(), 1);
        // Invalid changes are no-ops everywhere.
        c.note_change(Slot(11), &Change::Promote { id: 9 });
        assert_eq!(c.entries().len(), 2);
        c.trim(Slot(13));
        assert_eq!(c.entries().len(), 2, "slot 13 still needs the founding");
        c.trim(Slot(14));
        assert_eq!(c.entries().len(), 1);
        assert!(
            !c.at(Slot(1)).is_voter(3),
            "the first governs everything before"
        );
    }
}
