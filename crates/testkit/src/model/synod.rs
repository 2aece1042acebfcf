//! The synod as a model: the real `paxos::synod` roles, every interleaving.
//!
//! # What is explored
//!
//! Three acceptors, some proposers each with its own value, and learners. The
//! network is a set of messages sent. Any message in it can be delivered at
//! any time, any number of times, or never: that one rule models loss,
//! duplication, delay and reordering at once, and keeps the state space finite.
//! Acceptors may restart (a bounded number of times) from what their disk
//! holds. Each proposer may start a bounded number of ballots, which models
//! retries after timeouts and pre-emptions.
//!
//! # Learners: every possible learner at once
//!
//! A learner influences nothing: it only listens. Rather than one learner whose
//! every delivery pattern multiplies the state space a hundredfold, the model
//! checks all learners together. In each state it takes every set of at most
//! as many `Accepted` messages as there are acceptors, out of all the
//! acceptances made so far (`votes`), feeds each set in every order to a fresh
//! real [`Learner`], and requires that whatever that learner learns is chosen.
//! Any learner, under any pattern of loss, duplication and delay, has received
//! one of those sets when it learns (a learner that learns from more messages
//! also learns from the smallest subset that forms its quorum), so this is at
//! least as strong as one learner interleaved with everything else.
//!
//! # Pruning dead messages
//!
//! Kept forever, the set of messages sent is a record of history, and two runs
//! that reach the same roles' states by different paths would count as
//! different states: millions of them even for one proposer. So after every
//! step the model drops each message that is *dead*: delivering it can change
//! nothing, now or in any state reachable from here. Dropping a dead message
//! removes no behaviour (its delivery would be a stutter step forever), so the
//! pruned model has exactly the reachable role states of the unpruned one.
//! Each rule depends only on quantities that never move back:
//!
//! - `Promise(b)` to a proposer not in phase 1 of `b`, or that already counted
//!   this acceptor: a proposer never returns to a ballot it left.
//! - `Nack(b)` to a proposer whose ballot under way is not `b`: stale nacks are
//!   ignored, and ballots only grow.
//! - `Prepare(b)` to an acceptor whose promise is `>= b` in memory and on disk,
//!   and `Accept(b)` to one whose promise is `> b` in both, when the sender has
//!   left `b`: the acceptor can only answer with a promise or a nack for `b`,
//!   and both are dead. (The lower of the two promises never decreases, even
//!   across a restart that reloads the disk.)
//! - `Accepted` messages: they are recorded in `votes` when sent, and the
//!   learners read `votes`.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};

use paxos::synod::{Acceptor, Envelope, Learner, Ledger, Message, Phase, Proposer, majority};
use paxos::{Ballot, NodeId};

use super::explorer::{Expectation, Model, Property};
use crate::bugs::SynodBug;

pub type Value = char;

/// The configuration to explore.
#[derive(Clone, Debug)]
pub struct SynodModel {
    pub acceptors: usize,
    pub proposers: usize,
    /// Ballots each proposer may start.
    pub rounds: u8,
    /// Acceptor restarts in a run, in total.
    pub restarts: u8,
    pub bug: Option<SynodBug>,
    /// Learner verdicts by set of votes (the same votes recur in many states).
    learnable: RefCell<HashMap<Vec<Vote>, Option<LearnerWitness>>>,
}

impl SynodModel {
    pub fn new(proposers: usize, rounds: u8, restarts: u8, bug: Option<SynodBug>) -> Self {
        SynodModel {
            acceptors: 3,
            proposers,
            rounds,
            restarts,
            bug,
            learnable: RefCell::new(HashMap::new()),
        }
    }
}

impl Default for SynodModel {
    fn default() -> Self {
        SynodModel::new(2, 2, 1, None)
    }
}

/// An acceptance: (ballot, value, acceptor).
pub type Vote = (Ballot, Value, NodeId);

/// A learner that learned a value that was not chosen, and what it received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LearnerWitness {
    /// The `Accepted` messages it received, in order: (acceptor, ballot, value).
    pub received: Vec<Vote>,
    pub learned: Value,
}

const LEARNER: NodeId = 21;

fn acceptor_id(i: usize) -> NodeId {
    1 + i as NodeId
}

fn proposer_id(i: usize) -> NodeId {
    11 + i as NodeId
}

fn proposer_value(i: usize) -> Value {
    (b'a' + i as u8) as char
}

/// One global state of the system.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct SynodState {
    pub acceptors: Vec<Acceptor<Value>>,
    /// What each acceptor's disk holds: where a restart resumes from.
    pub disks: Vec<Ledger<Value>>,
    pub proposers: Vec<Proposer<Value>>,
    /// Ballots each proposer has started.
    pub attempts: Vec<u8>,
    /// Messages sent that are not dead (see the module notes); sorted, each
    /// once. (A sorted vector rather than a set: one allocation to clone.)
    pub network: Vec<Envelope<Value>>,
    /// Every acceptance ever made, sorted by ballot then value, each once.
    pub votes: Vec<Vote>,
    pub restarts: u8,
}

/// A step of the system.
#[derive(Clone, PartialEq, Eq)]
pub enum SynodAction {
    /// Proposer starts a ballot (phase 1a).
    Prepare(NodeId),
    /// A message reaches its receiver.
    Deliver(Envelope<Value>),
    /// An acceptor crashes and restarts from its disk.
    Restart(NodeId),
}

impl std::fmt::Debug for SynodAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SynodAction::Prepare(p) => write!(f, "proposer {p} starts a ballot"),
            SynodAction::Deliver(e) => write!(f, "deliver {e}"),
            SynodAction::Restart(a) => write!(f, "acceptor {a} restarts from its disk"),
        }
    }
}

impl SynodModel {
    /// How to read node ids in traces.
    pub fn legend(&self) -> String {
        format!(
            "acceptors 1..={}, proposers 11..={} (values 'a', 'b', ...), ballots written round.proposer",
            self.acceptors,
            10 + self.proposers
        )
    }

    fn acceptor_ids(&self) -> Vec<NodeId> {
        (0..self.acceptors).map(acceptor_id).collect()
    }

    /// The values chosen so far: a majority of acceptors accepted the same
    /// value in the same ballot.
    pub fn chosen(&self, state: &SynodState) -> BTreeSet<Value> {
        chosen_in(&state.votes, majority(self.acceptors))
    }

    /// A learner that, fed some of the acceptances made so far in some order,
    /// learns a value that is not chosen (see the module notes).
    pub fn misled_learner(&self, state: &SynodState) -> Option<LearnerWitness> {
        if let Some(verdict) = self.learnable.borrow().get(&state.votes) {
            return verdict.clone();
        }
        let verdict = self.find_misled_learner(&state.votes);
        self.learnable
            .borrow_mut()
            .insert(state.votes.clone(), verdict.clone());
        verdict
    }

    fn find_misled_learner(&self, votes: &[Vote]) -> Option<LearnerWitness> {
        let chosen = chosen_in(votes, majority(self.acceptors));
        let mut found = None;
        let mut order = Vec::new();
        each_arrangement(votes, self.acceptors, &mut order, &mut |received| {
            let mut learner = Learner::new(self.acceptor_ids());
            for &(ballot, value, from) in received {
                let message = SynodBug::to_learner(self.bug, Message::Accepted { ballot, value });
                if let Some(learned) = learner.step(from, message)
                    && !chosen.contains(&learned)
                {
                    found = Some(LearnerWitness {
                        received: received.to_vec(),
                        learned,
                    });
                    return true;
                }
            }
            false
        });
        found
    }

    fn proposer_index(&self, id: NodeId) -> Option<usize> {
        let i = id.checked_sub(proposer_id(0))? as usize;
        (i < self.proposers).then_some(i)
    }

    fn acceptor_index(&self, id: NodeId) -> Option<usize> {
        let i = id.checked_sub(acceptor_id(0))? as usize;
        (i < self.acceptors).then_some(i)
    }

    /// Whether delivering `e` can never change anything again (module notes).
    fn is_dead(&self, state: &SynodState, e: &Envelope<Value>) -> bool {
        if let Some(p) = self.proposer_index(e.to) {
            let proposer = &state.proposers[p];
            return match &e.message {
                Message::Promise { ballot, .. } => !matches!(
                    proposer.phase(),
                    Phase::Preparing { ballot: current, promises }
                        if current == ballot && promises.iter().all(|(a, _)| *a != e.from)
                ),
                Message::Nack { ballot, .. } => proposer.ballot() != Some(*ballot),
                _ => true,
            };
        }
        let Some(a) = self.acceptor_index(e.to) else {
            return true; // learners read `votes`
        };
        let floor = state.acceptors[a]
            .ledger()
            .promised
            .min(state.disks[a].promised);
        let sender_left = |ballot: &Ballot| {
            self.proposer_index(e.from)
                .is_none_or(|p| state.proposers[p].ballot() != Some(*ballot))
        };
        match &e.message {
            Message::Prepare { ballot } => *ballot <= floor && sender_left(ballot),
            Message::Accept { ballot, .. } => *ballot < floor && sender_left(ballot),
            _ => true,
        }
    }
}

fn chosen_in(votes: &[Vote], quorum: usize) -> BTreeSet<Value> {
    let mut chosen = BTreeSet::new();
    // Sorted by (ballot, value): count the acceptors of each run.
    let mut run: Option<(Ballot, Value, usize)> = None;
    for &(b, v, _) in votes {
        let n = match run {
            Some((rb, rv, n)) if rb == b && rv == v => n + 1,
            _ => 1,
        };
        run = Some((b, v, n));
        if n >= quorum {
            chosen.insert(v);
        }
    }
    chosen
}

/// Inserts `item` into the sorted, duplicate-free `items`.
fn insert_sorted<T: Ord>(items: &mut Vec<T>, item: T) {
    if let Err(at) = items.binary_search(&item) {
        items.insert(at, item);
    }
}

/// Calls `visit` with every arrangement (ordered selection without
/// repetition) of at most `max` items, until `visit` returns true.
fn each_arrangement<T: Copy>(
    items: &[T],
    max: usize,
    prefix: &mut Vec<T>,
    visit: &mut dyn FnMut(&[T]) -> bool,
) -> bool {
    if !prefix.is_empty() && visit(prefix) {
        return true;
    }
    if prefix.len() == max {
        return false;
    }
    for (i, &item) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        prefix.push(item);
        let stop = each_arrangement(&rest, max, prefix, visit);
        prefix.pop();
        if stop {
            return true;
        }
    }
    false
}

impl Model for SynodModel {
    type State = SynodState;
    type Action = SynodAction;

    fn init_states(&self) -> Vec<SynodState> {
        let acceptors = self.acceptor_ids();
        vec![SynodState {
            acceptors: acceptors
                .iter()
                .map(|&id| Acceptor::new(id, vec![LEARNER]))
                .collect(),
            disks: vec![Ledger::default(); self.acceptors],
            proposers: (0..self.proposers)
                .map(|i| Proposer::new(proposer_id(i), acceptors.clone(), proposer_value(i)))
                .collect(),
            attempts: vec![0; self.proposers],
            network: Vec::new(),
            votes: Vec::new(),
            restarts: 0,
        }]
    }

    fn actions(&self, state: &SynodState, actions: &mut Vec<SynodAction>) {
        for (i, &attempts) in state.attempts.iter().enumerate() {
            if attempts < self.rounds {
                actions.push(SynodAction::Prepare(proposer_id(i)));
            }
        }
        for e in &state.network {
            actions.push(SynodAction::Deliver(e.clone()));
        }
        if state.restarts < self.restarts {
            // A restart is enabled only where it would change something: a
            // correct acceptor keeps its whole state on disk, so restarting it
            // is a stutter step and exploring it would only copy states.
            for (i, a) in state.acceptors.iter().enumerate() {
                if *a.ledger() != state.disks[i] {
                    actions.push(SynodAction::Restart(acceptor_id(i)));
                }
            }
        }
    }

    fn next_state(&self, state: &SynodState, action: &SynodAction) -> Option<SynodState> {
        let mut next = state.clone();
        match action {
            SynodAction::Prepare(id) => {
                let i = self.proposer_index(*id)?;
                next.attempts[i] += 1;
                let ready = next.proposers[i].prepare();
                ready
                    .send
                    .into_iter()
                    .for_each(|e| insert_sorted(&mut next.network, e));
            }
            SynodAction::Restart(id) => {
                let i = self.acceptor_index(*id)?;
                next.restarts += 1;
                next.acceptors[i] = Acceptor::restore(*id, vec![LEARNER], next.disks[i].clone());
            }
            SynodAction::Deliver(e) => {
                let message = e.message.clone();
                if let Some(i) = self.proposer_index(e.to) {
                    let message = SynodBug::to_proposer(self.bug, message);
                    let ready = next.proposers[i].step(e.from, message);
                    ready
                        .send
                        .into_iter()
                        .for_each(|e| insert_sorted(&mut next.network, e));
                } else if let Some(i) = self.acceptor_index(e.to) {
                    let ready = next.acceptors[i].step(e.from, message);
                    if let Some(ledger) = &ready.persist {
                        // Persist before send: the disk is written first.
                        next.disks[i] = SynodBug::stored(self.bug, ledger);
                    }
                    for sent in ready.send {
                        if let Message::Accepted { ballot, value } = sent.message {
                            insert_sorted(&mut next.votes, (ballot, value, e.to));
                        } else {
                            insert_sorted(&mut next.network, sent);
                        }
                    }
                }
            }
        }
        // The dead-ness rules never read the network itself.
        let mut network = std::mem::take(&mut next.network);
        network.retain(|e| !self.is_dead(&next, e));
        next.network = network;
        // Deliveries that change nothing lead to a known state; the explorer
        // recognises it by its fingerprint, which is cheaper than comparing.
        Some(next)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property {
                name: "agreement: at most one value is chosen",
                expectation: Expectation::Always,
                holds: |m, s| m.chosen(s).len() <= 1,
            },
            Property {
                name: "validity: a chosen value was proposed",
                expectation: Expectation::Always,
                holds: |m, s| {
                    m.chosen(s)
                        .iter()
                        .all(|v| s.proposers.iter().any(|p| p.own_value() == v))
                },
            },
            Property {
                name: "a learner learns only a chosen value",
                expectation: Expectation::Always,
                holds: |m, s| m.misled_learner(s).is_none(),
            },
            Property {
                name: "sanity: a value can be chosen",
                expectation: Expectation::Sometimes,
                holds: |m, s| !m.chosen(s).is_empty(),
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bugs::Variant;
    use crate::model::{Options, explore};

    #[test]
    fn arrangements_cover_every_order_up_to_the_bound() {
        let mut seen = Vec::new();
        each_arrangement(&[1, 2, 3], 2, &mut Vec::new(), &mut |a| {
            seen.push(a.to_vec());
            false
        });
        // 3 of length 1, 6 of length 2.
        assert_eq!(seen.len(), 9);
        assert!(seen.contains(&vec![3, 1]));
    }

    #[test]
    fn the_synod_is_safe_for_two_proposers_with_one_ballot_each() {
        let model = SynodModel::new(2, 1, 1, None);
        let report = explore(&model, Options::default());
        println!(
            "synod, 3 acceptors, 2 proposers x 1 ballot: {} states, {} transitions, {:?}",
            report.states, report.transitions, report.elapsed
        );
        assert!(report.complete);
        for f in &report.findings {
            assert!(f.ok(), "{} failed: {:?}", f.name, f.trace);
        }
    }

    fn hunt(bug: SynodBug, proposers: usize, rounds: u8) {
        let model = SynodModel::new(proposers, rounds, 1, Some(bug));
        let options = Options {
            stop_at_violation: true,
            ..Options::default()
        };
        let report = explore(&model, options);
        let violated: Vec<_> = report
            .findings
            .iter()
            .filter(|f| f.expectation == Expectation::Always && f.trace.is_some())
            .collect();
        assert!(!violated.is_empty(), "{} was not caught", bug.name());
        for f in violated {
            println!("{} violates '{}':\n{:?}", bug.name(), f.name, f.trace);
        }
    }

    #[test]
    fn forgetting_a_promise_is_caught() {
        hunt(SynodBug::ForgetPromise, 2, 1);
    }

    #[test]
    fn ignoring_promised_values_is_caught() {
        hunt(SynodBug::IgnorePromisedValues, 2, 1);
    }

    #[test]
    fn a_learner_mixing_ballots_is_caught() {
        hunt(SynodBug::LearnerMixesBallots, 2, 2);
    }
}
