//! Single-decree Paxos, the synod of the Part-Time Parliament, exactly as
//! *Paxos Made Simple* (section 2) describes it.
//!
//! Three roles, each a plain state machine with no I/O:
//!
//! - [`Proposer`] (the priest who wants a decree passed) runs phase 1a
//!   ([`Proposer::prepare`]) and phase 2a (on a quorum of promises);
//! - [`Acceptor`] (the legislator with a ledger) answers phase 1b and 2b;
//! - [`Learner`] finds out which value was chosen.
//!
//! A value is *chosen* when a majority of acceptors accepted it in the same
//! ballot. Once a value is chosen, every higher ballot proposes that same value,
//! so the choice can never change.
//!
//! # The output contract
//!
//! Handlers return a [`Ready`]: an optional durable state to persist and the
//! messages to send. **`persist` must be durable before any message of the same
//! `Ready` leaves the node.** An acceptor that promised or accepted and then
//! forgot it on a restart could promise a lower ballot again, and two values
//! could be chosen. Proposers persist the highest round they used for the same
//! reason: a restarted proposer must never reuse a ballot with another value.

use std::fmt;

use crate::ballot::{Ballot, NodeId, Round};

/// A message between the roles, named for its phase.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Message<V> {
    /// Phase 1a: "promise me not to accept anything below `ballot`".
    Prepare { ballot: Ballot },
    /// Phase 1b: the promise, with the highest-ballot value this acceptor has
    /// accepted, if any.
    Promise {
        ballot: Ballot,
        accepted: Option<(Ballot, V)>,
    },
    /// Phase 2a: "accept `value` in `ballot`".
    Accept { ballot: Ballot, value: V },
    /// Phase 2b: "I accepted `value` in `ballot`", sent to the learners.
    Accepted { ballot: Ballot, value: V },
    /// A refusal of `ballot` because the acceptor promised `promised`, higher.
    /// Not in the paper's two phases; it saves a losing proposer from waiting
    /// for a timeout (the paper's own suggested optimisation).
    Nack { ballot: Ballot, promised: Ballot },
}

/// A message with its sender and receiver.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Envelope<V> {
    pub from: NodeId,
    pub to: NodeId,
    pub message: Message<V>,
}

impl<V: fmt::Debug> fmt::Display for Message<V> {
    /// A compact form for traces: `Promise(2.11, accepted 1.12=b)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Prepare { ballot } => write!(f, "Prepare({ballot})"),
            Message::Promise {
                ballot,
                accepted: None,
            } => write!(f, "Promise({ballot}, nothing accepted)"),
            Message::Promise {
                ballot,
                accepted: Some((b, v)),
            } => write!(f, "Promise({ballot}, accepted {b}={v:?})"),
            Message::Accept { ballot, value } => write!(f, "Accept({ballot}, {value:?})"),
            Message::Accepted { ballot, value } => write!(f, "Accepted({ballot}, {value:?})"),
            Message::Nack { ballot, promised } => {
                write!(f, "Nack({ballot}, promised {promised})")
            }
        }
    }
}

impl<V: fmt::Debug> fmt::Display for Envelope<V> {
    /// `3 -> 11 Promise(...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} {}", self.from, self.to, self.message)
    }
}

/// What a handler asks its caller to do.
///
/// Contract: `persist`, when present, must be durable before any message in
/// `send` leaves the node.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Ready<S, V> {
    /// The role's whole durable state, to be written before sending.
    pub persist: Option<S>,
    /// Messages that may leave once `persist` is durable.
    pub send: Vec<Envelope<V>>,
}

impl<S, V> Ready<S, V> {
    fn empty() -> Self {
        Ready {
            persist: None,
            send: Vec::new(),
        }
    }
}

/// The number of acceptors that makes a majority of `n`.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

// ---------------------------------------------------------------------------
// Acceptor
// ---------------------------------------------------------------------------

/// An acceptor's ledger: everything it must remember across a restart.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Ledger<V> {
    /// The highest ballot this acceptor has promised (`Ballot::ZERO`: none).
    ///
    /// Invariant: `promised >= accepted.0` whenever something was accepted.
    pub promised: Ballot,
    /// The value accepted in the highest ballot so far, with that ballot.
    pub accepted: Option<(Ballot, V)>,
}

impl<V> Default for Ledger<V> {
    fn default() -> Self {
        Ledger {
            promised: Ballot::ZERO,
            accepted: None,
        }
    }
}

/// A legislator's acceptor role.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Acceptor<V> {
    id: NodeId,
    learners: Vec<NodeId>,
    ledger: Ledger<V>,
}

impl<V: Clone + PartialEq> Acceptor<V> {
    /// A fresh acceptor that reports acceptances to `learners`.
    pub fn new(id: NodeId, learners: Vec<NodeId>) -> Self {
        Self::restore(id, learners, Ledger::default())
    }

    /// An acceptor restarted from the ledger it persisted.
    pub fn restore(id: NodeId, learners: Vec<NodeId>, ledger: Ledger<V>) -> Self {
        let acceptor = Acceptor {
            id,
            learners,
            ledger,
        };
        acceptor.check_invariants();
        acceptor
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current durable state.
    pub fn ledger(&self) -> &Ledger<V> {
        &self.ledger
    }

    /// Handles a message addressed to this acceptor. Messages meant for other
    /// roles are ignored.
    pub fn step(&mut self, from: NodeId, message: Message<V>) -> Ready<Ledger<V>, V> {
        let ready = match message {
            Message::Prepare { ballot } => self.on_prepare(from, ballot),
            Message::Accept { ballot, value } => self.on_accept(from, ballot, value),
            Message::Promise { .. } | Message::Accepted { .. } | Message::Nack { .. } => {
                Ready::empty()
            }
        };
        self.check_invariants();
        ready
    }

    /// Phase 1b. Promise `ballot` unless a higher ballot was promised already.
    /// A repeated prepare of the promised ballot is answered again, so that a
    /// lost promise can be recovered by a duplicate prepare.
    fn on_prepare(&mut self, from: NodeId, ballot: Ballot) -> Ready<Ledger<V>, V> {
        if ballot < self.ledger.promised {
            return self.nack(from, ballot);
        }
        let mut ready = Ready::empty();
        if ballot > self.ledger.promised {
            self.ledger.promised = ballot;
            ready.persist = Some(self.ledger.clone());
        }
        ready.send.push(Envelope {
            from: self.id,
            to: from,
            message: Message::Promise {
                ballot,
                accepted: self.ledger.accepted.clone(),
            },
        });
        ready
    }

    /// Phase 2b. Accept unless a higher ballot was promised. Accepting also
    /// promises `ballot`: an acceptor never accepts below what it accepted.
    fn on_accept(&mut self, from: NodeId, ballot: Ballot, value: V) -> Ready<Ledger<V>, V> {
        if ballot < self.ledger.promised {
            return self.nack(from, ballot);
        }
        let mut ready = Ready::empty();
        let already = matches!(&self.ledger.accepted, Some((b, v)) if *b == ballot && *v == value);
        if !already {
            self.ledger.promised = ballot;
            self.ledger.accepted = Some((ballot, value.clone()));
            ready.persist = Some(self.ledger.clone());
        }
        for &learner in &self.learners {
            ready.send.push(Envelope {
                from: self.id,
                to: learner,
                message: Message::Accepted {
                    ballot,
                    value: value.clone(),
                },
            });
        }
        ready
    }

    fn nack(&self, to: NodeId, ballot: Ballot) -> Ready<Ledger<V>, V> {
        Ready {
            persist: None,
            send: vec![Envelope {
                from: self.id,
                to,
                message: Message::Nack {
                    ballot,
                    promised: self.ledger.promised,
                },
            }],
        }
    }

    /// Panics if the ledger is inconsistent. Cheap; always on.
    pub fn check_invariants(&self) {
        if let Some((accepted, _)) = &self.ledger.accepted {
            assert!(
                *accepted <= self.ledger.promised,
                "acceptor {}: accepted ballot {accepted} above promised {}",
                self.id,
                self.ledger.promised
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Proposer
// ---------------------------------------------------------------------------

/// A proposer's durable state: the highest round it has used. A restarted
/// proposer continues above it, so it never issues one ballot twice.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct ProposerLedger {
    pub round: Round,
}

/// Where a proposer stands.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Phase<V> {
    /// Has not started a ballot since it was created or restarted.
    Idle,
    /// Phase 1: waiting for promises to `ballot`. `promises` holds each
    /// answering acceptor once, sorted by acceptor, with what it reported as
    /// accepted. (Sorted rather than in arrival order, so that equal knowledge
    /// is an equal state: the model checker relies on it.)
    Preparing {
        ballot: Ballot,
        promises: Vec<(NodeId, Option<(Ballot, V)>)>,
    },
    /// Phase 2: `Accept(ballot, value)` was sent to every acceptor.
    Accepting { ballot: Ballot, value: V },
    /// An acceptor refused this proposer's ballot because it promised `by`.
    /// The caller should call [`Proposer::prepare`] again after a randomized
    /// backoff, so that two proposers do not keep pre-empting each other.
    Preempted { by: Ballot },
}

/// A priest who wants a decree passed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Proposer<V> {
    id: NodeId,
    acceptors: Vec<NodeId>,
    /// The value this proposer would like chosen, used only when no acceptor
    /// in the quorum reports an accepted value.
    value: V,
    ledger: ProposerLedger,
    /// The highest ballot heard of from acceptors (volatile; an optimisation
    /// so the next ballot jumps past it).
    highest_seen: Ballot,
    phase: Phase<V>,
}

impl<V: Clone + PartialEq> Proposer<V> {
    /// A proposer that wants `value` chosen by `acceptors`.
    pub fn new(id: NodeId, acceptors: Vec<NodeId>, value: V) -> Self {
        Self::restore(id, acceptors, value, ProposerLedger::default())
    }

    /// A proposer restarted from the ledger it persisted.
    pub fn restore(id: NodeId, acceptors: Vec<NodeId>, value: V, ledger: ProposerLedger) -> Self {
        assert!(!acceptors.is_empty(), "a proposer needs acceptors");
        Proposer {
            id,
            acceptors,
            value,
            ledger,
            highest_seen: Ballot::ZERO,
            phase: Phase::Idle,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn phase(&self) -> &Phase<V> {
        &self.phase
    }

    pub fn ledger(&self) -> ProposerLedger {
        self.ledger
    }

    /// The value this proposer was asked to propose.
    pub fn own_value(&self) -> &V {
        &self.value
    }

    /// The ballot of the attempt under way, if any.
    pub fn ballot(&self) -> Option<Ballot> {
        match &self.phase {
            Phase::Preparing { ballot, .. } | Phase::Accepting { ballot, .. } => Some(*ballot),
            Phase::Idle | Phase::Preempted { .. } => None,
        }
    }

    /// Phase 1a: start a new ballot, higher than any this proposer has used or
    /// heard of, and send `Prepare` to every acceptor. Calling it again (after
    /// a timeout or a pre-emption) abandons the attempt under way.
    pub fn prepare(&mut self) -> Ready<ProposerLedger, V> {
        let floor = Ballot {
            round: self.ledger.round,
            node: self.id,
        }
        .max(self.highest_seen);
        let ballot = floor.next_for(self.id);
        self.ledger.round = ballot.round;
        self.phase = Phase::Preparing {
            ballot,
            promises: Vec::new(),
        };
        Ready {
            persist: Some(self.ledger),
            send: self
                .acceptors
                .iter()
                .map(|&to| Envelope {
                    from: self.id,
                    to,
                    message: Message::Prepare { ballot },
                })
                .collect(),
        }
    }

    /// Handles a message addressed to this proposer.
    pub fn step(&mut self, from: NodeId, message: Message<V>) -> Ready<ProposerLedger, V> {
        match message {
            Message::Promise { ballot, accepted } => self.on_promise(from, ballot, accepted),
            Message::Nack { ballot, promised } => {
                self.on_nack(ballot, promised);
                Ready::empty()
            }
            Message::Prepare { .. } | Message::Accept { .. } | Message::Accepted { .. } => {
                Ready::empty()
            }
        }
    }

    fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        accepted: Option<(Ballot, V)>,
    ) -> Ready<ProposerLedger, V> {
        if !self.acceptors.contains(&from) {
            return Ready::empty();
        }
        let quorum = majority(self.acceptors.len());
        let Phase::Preparing {
            ballot: current,
            promises,
        } = &mut self.phase
        else {
            return Ready::empty();
        };
        if *current != ballot {
            return Ready::empty();
        }
        let Err(slot) = promises.binary_search_by_key(&from, |(a, _)| *a) else {
            return Ready::empty(); // a duplicate promise counts once
        };
        if accepted.as_ref().is_some_and(|(b, _)| *b >= ballot) {
            // A correct acceptor cannot have accepted at or above a ballot
            // whose phase 1 is still running. Such a promise is malformed;
            // ignore it rather than let the network crash us.
            return Ready::empty();
        }
        promises.insert(slot, (from, accepted));
        if promises.len() < quorum {
            return Ready::empty();
        }
        // Phase 2a: the value of the highest-ballot acceptance among the
        // promises, or our own when the quorum has accepted nothing. This is
        // the rule that keeps a chosen value chosen.
        let value = promises
            .iter()
            .filter_map(|(_, a)| a.as_ref())
            .max_by_key(|(b, _)| *b)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| self.value.clone());
        self.phase = Phase::Accepting {
            ballot,
            value: value.clone(),
        };
        Ready {
            persist: None,
            send: self
                .acceptors
                .iter()
                .map(|&to| Envelope {
                    from: self.id,
                    to,
                    message: Message::Accept {
                        ballot,
                        value: value.clone(),
                    },
                })
                .collect(),
        }
    }

    /// A nack for the ballot under way pre-empts it. A nack for an older
    /// ballot is ignored: the attempt it refused is already abandoned.
    fn on_nack(&mut self, ballot: Ballot, promised: Ballot) {
        if self.ballot() == Some(ballot) && promised > ballot {
            self.highest_seen = self.highest_seen.max(promised);
            self.phase = Phase::Preempted { by: promised };
        }
    }
}

// ---------------------------------------------------------------------------
// Learner
// ---------------------------------------------------------------------------

/// Acceptances of one value in one ballot.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
struct Tally<V> {
    ballot: Ballot,
    value: V,
    /// Distinct acceptors, sorted.
    acceptors: Vec<NodeId>,
}

/// Finds out which value has been chosen.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Learner<V> {
    acceptors: Vec<NodeId>,
    tallies: Vec<Tally<V>>,
    learned: Option<V>,
}

impl<V: Clone + PartialEq> Learner<V> {
    /// A learner listening to `acceptors`.
    pub fn new(acceptors: Vec<NodeId>) -> Self {
        assert!(!acceptors.is_empty(), "a learner needs acceptors");
        Learner {
            acceptors,
            tallies: Vec::new(),
            learned: None,
        }
    }

    /// The value learned so far.
    pub fn learned(&self) -> Option<&V> {
        self.learned.as_ref()
    }

    /// Whether `acceptor`'s acceptance of `value` in `ballot` was counted.
    pub fn has_counted(&self, acceptor: NodeId, ballot: Ballot, value: &V) -> bool {
        self.tallies
            .iter()
            .any(|t| t.ballot == ballot && t.value == *value && t.acceptors.contains(&acceptor))
    }

    /// Handles an `Accepted`; returns the value if it was learned just now.
    ///
    /// A value is learned when a majority of acceptors accepted it *in the same
    /// ballot*. Acceptances from different ballots never add up: an acceptor
    /// that accepted `v` in ballot 1 may later accept `w` in ballot 3.
    pub fn step(&mut self, from: NodeId, message: Message<V>) -> Option<V> {
        let Message::Accepted { ballot, value } = message else {
            return None;
        };
        if !self.acceptors.contains(&from) {
            return None;
        }
        let quorum = majority(self.acceptors.len());
        // Tallies stay sorted by ballot (then arrival) so that equal knowledge
        // is an equal state whatever the order messages arrived in.
        let index = match self
            .tallies
            .iter()
            .position(|t| t.ballot == ballot && t.value == value)
        {
            Some(i) => i,
            None => {
                let at = self.tallies.partition_point(|t| t.ballot <= ballot);
                self.tallies.insert(
                    at,
                    Tally {
                        ballot,
                        value,
                        acceptors: Vec::new(),
                    },
                );
                at
            }
        };
        let tally = &mut self.tallies[index];
        if let Err(at) = tally.acceptors.binary_search(&from) {
            tally.acceptors.insert(at, from);
        }
        if self.learned.is_none() && tally.acceptors.len() >= quorum {
            self.learned = Some(tally.value.clone());
            return self.learned.clone();
        }
        None
    }
}

#[cfg(test)]
mod tests;
