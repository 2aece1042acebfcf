//! The synod under fire: proposers, acceptors and learners of `paxos::synod`
//! over a network that loses, duplicates, reorders and delays messages, with
//! acceptors that crash and restart from their disk and proposers that crash.
//!
//! Time is a tick counter. Every event (a delivery, a timer, a crash) sits in
//! a queue ordered by (tick, sequence number); the sequence number makes ties
//! deterministic. The only source of randomness is one [`Rng`] seeded from the
//! run's seed, so a seed replays the same run, event for event.
//!
//! Checks, after every step that could break them:
//! - agreement: at most one value is ever chosen (a majority of acceptors
//!   accepted it in one ballot);
//! - validity: a chosen value is one the proposers were asked to propose;
//! - learners learn only a chosen value, and all learn the same one;
//! - the output contract: what an acceptor reports in a message is covered by
//!   the ledger it asked to persist before sending.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use paxos::rng::Rng;
use paxos::synod::{
    Acceptor, Envelope, Learner, Ledger, Message, Phase, Proposer, ProposerLedger, majority,
};
use paxos::{Ballot, NodeId};

use super::trace::Trace;
use crate::bugs::SynodBug;

/// The parameters of a family of runs; the seed picks one run.
#[derive(Clone, Debug)]
pub struct SynodSimConfig {
    pub acceptors: usize,
    pub proposers: usize,
    /// Dedicated learners, besides the proposers (which learn too).
    pub learners: usize,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub dup: f64,
    /// Probability that a node crashes at some point of a run.
    pub crash: f64,
    /// Messages take 1..=max_delay ticks; different delays reorder them.
    pub delay_max_ticks: u64,
    /// Ballots a proposer may start before it gives up.
    pub attempts_max: u32,
    pub bug: Option<SynodBug>,
}

impl Default for SynodSimConfig {
    fn default() -> Self {
        SynodSimConfig {
            acceptors: 3,
            proposers: 3,
            learners: 1,
            loss: 0.1,
            dup: 0.05,
            crash: 0.2,
            delay_max_ticks: 10,
            attempts_max: 12,
            bug: None,
        }
    }
}

type Value = u64;

/// What one run did.
#[derive(Clone, Debug)]
pub struct SynodRun {
    pub seed: u64,
    /// The chosen value, if any.
    pub chosen: Option<Value>,
    /// Messages sent until a value was first chosen.
    pub messages_to_choose: Option<u64>,
    pub messages: u64,
    pub ticks: u64,
    /// The first safety violation, described.
    pub violation: Option<String>,
    pub trace: Trace,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Deliver(Envelope<Value>),
    /// Proposer `index` starts (or restarts) a ballot if `ballot` is still
    /// its current attempt (a stale timer is ignored).
    Retry {
        proposer: usize,
        after: Option<Ballot>,
    },
    Crash(NodeId),
    Restart(NodeId),
}

struct AcceptorNode {
    up: bool,
    acceptor: Acceptor<Value>,
    disk: Ledger<Value>,
}

struct ProposerNode {
    up: bool,
    proposer: Proposer<Value>,
    disk: ProposerLedger,
    learner: Learner<Value>,
    attempts: u32,
}

struct Sim<'a> {
    config: &'a SynodSimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, Event)>>,
    acceptors: Vec<AcceptorNode>,
    proposers: Vec<ProposerNode>,
    learners: Vec<Learner<Value>>,
    /// Every acceptance: (ballot, value) -> acceptors.
    votes: BTreeMap<(Ballot, Value), BTreeSet<NodeId>>,
    chosen: BTreeSet<Value>,
    learned: BTreeSet<Value>,
    messages: u64,
    messages_to_choose: Option<u64>,
    violation: Option<String>,
    trace: Trace,
}

const PROPOSER_BASE: NodeId = 101;
const LEARNER_BASE: NodeId = 201;
/// No run lasts longer than this many ticks.
const HORIZON_TICKS: u64 = 20_000;

fn acceptor_id(i: usize) -> NodeId {
    1 + i as NodeId
}

fn proposer_value(i: usize) -> Value {
    1000 + i as Value
}

/// Runs the seed `seed` of `config`. With `keep_trace`, the trace keeps every
/// line (for replays); otherwise only its digest.
pub fn run(config: &SynodSimConfig, seed: u64, keep_trace: bool) -> SynodRun {
    assert!(config.acceptors > 0 && config.proposers > 0);
    let acceptor_ids: Vec<NodeId> = (0..config.acceptors).map(acceptor_id).collect();
    let mut listeners: Vec<NodeId> = (0..config.proposers)
        .map(|i| PROPOSER_BASE + i as NodeId)
        .collect();
    listeners.extend((0..config.learners).map(|i| LEARNER_BASE + i as NodeId));
    let mut sim = Sim {
        config,
        rng: Rng::new(seed),
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        acceptors: acceptor_ids
            .iter()
            .map(|&id| AcceptorNode {
                up: true,
                acceptor: Acceptor::new(id, listeners.clone()),
                disk: Ledger::default(),
            })
            .collect(),
        proposers: (0..config.proposers)
            .map(|i| ProposerNode {
                up: true,
                proposer: Proposer::new(
                    PROPOSER_BASE + i as NodeId,
                    acceptor_ids.clone(),
                    proposer_value(i),
                ),
                disk: ProposerLedger::default(),
                learner: Learner::new(acceptor_ids.clone()),
                attempts: 0,
            })
            .collect(),
        learners: (0..config.learners)
            .map(|_| Learner::new(acceptor_ids.clone()))
            .collect(),
        votes: BTreeMap::new(),
        chosen: BTreeSet::new(),
        learned: BTreeSet::new(),
        messages: 0,
        messages_to_choose: None,
        violation: None,
        trace: Trace::new(keep_trace),
    };
    sim.schedule_start();
    while let Some(Reverse((time, _, event))) = sim.queue.pop() {
        if time > HORIZON_TICKS || sim.violation.is_some() {
            break;
        }
        sim.now = time;
        sim.handle(event);
    }
    SynodRun {
        seed,
        chosen: sim.chosen.iter().next().copied(),
        messages_to_choose: sim.messages_to_choose,
        messages: sim.messages,
        ticks: sim.now,
        violation: sim.violation,
        trace: sim.trace,
    }
}

impl Sim<'_> {
    fn at(&mut self, delay: u64, event: Event) {
        self.seq += 1;
        self.queue
            .push(Reverse((self.now + delay, self.seq, event)));
    }

    fn schedule_start(&mut self) {
        // Proposers start close together, so that ballots compete.
        let spread = self.config.delay_max_ticks * 2;
        for p in 0..self.config.proposers {
            let start = self.rng.between(0, spread);
            self.at(
                start,
                Event::Retry {
                    proposer: p,
                    after: None,
                },
            );
        }
        let nodes: Vec<NodeId> = (0..self.config.acceptors)
            .map(acceptor_id)
            .chain((0..self.config.proposers).map(|i| PROPOSER_BASE + i as NodeId))
            .collect();
        for id in nodes {
            // Up to two crashes a node, within the first few round trips where
            // ballots compete, some so short that delayed messages still find
            // the restarted node.
            let mut from = 1;
            for _ in 0..2 {
                if self.rng.chance(self.config.crash) {
                    let when = self
                        .rng
                        .between(from, from + self.config.delay_max_ticks * 4);
                    let down = self.rng.between(1, self.config.delay_max_ticks * 3);
                    self.at(when, Event::Crash(id));
                    self.at(when + down, Event::Restart(id));
                    from = when + down + 1;
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver(e) => self.deliver(e),
            Event::Retry { proposer, after } => self.retry(proposer, after),
            Event::Crash(id) => self.crash(id),
            Event::Restart(id) => self.restart(id),
        }
    }

    fn send(&mut self, envelope: Envelope<Value>) {
        self.messages += 1;
        if self.rng.chance(self.config.loss) {
            self.trace.record(format!("t={} lost {envelope}", self.now));
            return;
        }
        let copies = if self.rng.chance(self.config.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.between(1, self.config.delay_max_ticks);
            self.at(delay, Event::Deliver(envelope.clone()));
        }
    }

    fn deliver(&mut self, e: Envelope<Value>) {
        let to = e.to;
        if to >= LEARNER_BASE {
            let i = (to - LEARNER_BASE) as usize;
            self.trace.record(format!("t={} {e}", self.now));
            let message = SynodBug::to_learner(self.config.bug, e.message);
            if let Some(v) = self.learners[i].step(e.from, message) {
                self.on_learned(to, v);
            }
        } else if to >= PROPOSER_BASE {
            let i = (to - PROPOSER_BASE) as usize;
            if !self.proposers[i].up {
                self.trace
                    .record(format!("t={} dropped (proposer down) {e}", self.now));
                return;
            }
            self.trace.record(format!("t={} {e}", self.now));
            self.deliver_to_proposer(i, e);
        } else {
            let i = (to - acceptor_id(0)) as usize;
            if !self.acceptors[i].up {
                self.trace
                    .record(format!("t={} dropped (acceptor down) {e}", self.now));
                return;
            }
            self.trace.record(format!("t={} {e}", self.now));
            let ready = self.acceptors[i].acceptor.step(e.from, e.message);
            let requested = match ready.persist {
                Some(ledger) => {
                    // Persist before send: the disk is written first.
                    self.acceptors[i].disk = SynodBug::stored(self.config.bug, &ledger);
                    ledger
                }
                None => self.acceptors[i].acceptor.ledger().clone(),
            };
            for out in ready.send {
                self.check_covered(&requested, &out);
                if let Message::Accepted { ballot, value } = &out.message
                    && out.to == PROPOSER_BASE
                {
                    // Count each acceptance once (it goes to every learner).
                    self.vote(*ballot, *value, out.from);
                }
                self.send(out);
            }
        }
    }

    fn deliver_to_proposer(&mut self, i: usize, e: Envelope<Value>) {
        let node = &mut self.proposers[i];
        if let Message::Accepted { .. } = e.message {
            if let Some(v) = node.learner.step(e.from, e.message) {
                self.on_learned(PROPOSER_BASE + i as NodeId, v);
            }
            return;
        }
        let was_preempted = matches!(node.proposer.phase(), Phase::Preempted { .. });
        let message = SynodBug::to_proposer(self.config.bug, e.message);
        let ready = node.proposer.step(e.from, message);
        let preempted = match node.proposer.phase() {
            Phase::Preempted { by } if !was_preempted => Some(*by),
            _ => None,
        };
        for out in ready.send {
            self.send(out);
        }
        if let Some(by) = preempted {
            // Randomized backoff, doubling with each attempt, so that dueling
            // proposers stop pre-empting each other.
            let attempts = self.proposers[i].attempts.min(6);
            let backoff = self
                .rng
                .between(1, self.config.delay_max_ticks * (1 << attempts));
            self.trace.record(format!(
                "t={} proposer {} pre-empted by {by}, retries in {backoff}",
                self.now,
                PROPOSER_BASE + i as NodeId
            ));
            self.at(
                backoff,
                Event::Retry {
                    proposer: i,
                    after: None,
                },
            );
        }
    }

    /// A proposer's timer fired: start a new ballot unless the attempt it was
    /// set for is no longer current, a value is known, or it gave up.
    fn retry(&mut self, i: usize, after: Option<Ballot>) {
        let id = PROPOSER_BASE + i as NodeId;
        let node = &mut self.proposers[i];
        if !node.up || node.learner.learned().is_some() {
            return;
        }
        if after.is_some() && node.proposer.ballot() != after {
            return; // a timeout for an attempt already replaced
        }
        if after.is_none() && node.proposer.ballot().is_some() {
            return; // a backoff timer, but an attempt is already running
        }
        if node.attempts >= self.config.attempts_max {
            self.trace
                .record(format!("t={} proposer {id} gives up", self.now));
            return;
        }
        node.attempts += 1;
        let ready = node.proposer.prepare();
        if let Some(ledger) = ready.persist {
            node.disk = ledger;
        }
        let ballot = node.proposer.ballot();
        self.trace.record(format!(
            "t={} proposer {id} starts ballot {}",
            self.now,
            ballot.map(|b| b.to_string()).unwrap_or_default()
        ));
        for out in ready.send {
            self.send(out);
        }
        // Give up on this ballot if nothing comes of it in a round trip or so.
        let timeout = self.config.delay_max_ticks * 4 + self.rng.between(0, 10);
        self.at(
            timeout,
            Event::Retry {
                proposer: i,
                after: ballot,
            },
        );
    }

    fn crash(&mut self, id: NodeId) {
        self.trace
            .record(format!("t={} node {id} crashes", self.now));
        if id >= PROPOSER_BASE {
            self.proposers[(id - PROPOSER_BASE) as usize].up = false;
        } else {
            self.acceptors[(id - acceptor_id(0)) as usize].up = false;
        }
    }

    /// A restarted node keeps only what it persisted.
    fn restart(&mut self, id: NodeId) {
        self.trace
            .record(format!("t={} node {id} restarts", self.now));
        if id >= PROPOSER_BASE {
            let i = (id - PROPOSER_BASE) as usize;
            let acceptors: Vec<NodeId> = (0..self.config.acceptors).map(acceptor_id).collect();
            let node = &mut self.proposers[i];
            node.up = true;
            node.proposer = Proposer::restore(id, acceptors.clone(), proposer_value(i), node.disk);
            node.learner = Learner::new(acceptors);
            self.at(
                1,
                Event::Retry {
                    proposer: i,
                    after: None,
                },
            );
        } else {
            let node = &mut self.acceptors[(id - acceptor_id(0)) as usize];
            let listeners = listeners_of(self.config);
            node.up = true;
            node.acceptor = Acceptor::restore(id, listeners, node.disk.clone());
        }
    }

    fn vote(&mut self, ballot: Ballot, value: Value, acceptor: NodeId) {
        let voters = self.votes.entry((ballot, value)).or_default();
        voters.insert(acceptor);
        if voters.len() >= majority(self.config.acceptors) && self.chosen.insert(value) {
            self.trace.record(format!(
                "t={} value {value} is chosen in ballot {ballot}",
                self.now
            ));
            self.messages_to_choose.get_or_insert(self.messages);
            if self.chosen.len() > 1 {
                self.fail(format!(
                    "agreement violated: values {:?} were all chosen",
                    self.chosen
                ));
            }
            if !(0..self.config.proposers).any(|i| proposer_value(i) == value) {
                self.fail(format!("validity violated: {value} was never proposed"));
            }
        }
    }

    fn on_learned(&mut self, learner: NodeId, value: Value) {
        self.trace
            .record(format!("t={} node {learner} learns {value}", self.now));
        if !self.chosen.contains(&value) {
            self.fail(format!(
                "node {learner} learned {value}, which is not chosen (chosen: {:?})",
                self.chosen
            ));
        }
        self.learned.insert(value);
        if self.learned.len() > 1 {
            self.fail(format!("learners disagree: {:?}", self.learned));
        }
    }

    /// The output contract: a promise or acceptance reported in a message is
    /// part of the ledger the acceptor asked to persist first.
    fn check_covered(&mut self, ledger: &Ledger<Value>, out: &Envelope<Value>) {
        let covered = match &out.message {
            Message::Promise { ballot, accepted } => {
                ledger.promised >= *ballot
                    && accepted
                        .as_ref()
                        .is_none_or(|a| ledger.accepted.as_ref() == Some(a))
            }
            Message::Accepted { ballot, value } => {
                ledger.accepted.as_ref() == Some(&(*ballot, *value))
            }
            _ => true,
        };
        if !covered {
            self.fail(format!("{out} was sent before {ledger:?} covered it"));
        }
    }

    fn fail(&mut self, why: String) {
        self.trace.record(format!("t={} VIOLATION {why}", self.now));
        self.violation.get_or_insert(why);
    }
}

fn listeners_of(config: &SynodSimConfig) -> Vec<NodeId> {
    (0..config.proposers)
        .map(|i| PROPOSER_BASE + i as NodeId)
        .chain((0..config.learners).map(|i| LEARNER_BASE + i as NodeId))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bugs::Variant;

    #[test]
    fn a_seed_replays_bit_for_bit() {
        let config = SynodSimConfig::default();
        for seed in 0..20 {
            let a = run(&config, seed, true);
            let b = run(&config, seed, false);
            assert_eq!(a.trace.digest(), b.trace.digest(), "seed {seed}");
            assert_eq!(a.trace.events(), b.trace.events());
            assert_eq!(a.chosen, b.chosen);
        }
        assert_ne!(
            run(&config, 1, false).trace.digest(),
            run(&config, 2, false).trace.digest()
        );
    }

    #[test]
    fn many_seeds_are_safe_and_mostly_decide() {
        let config = SynodSimConfig::default();
        let mut decided = 0;
        for seed in 0..2000 {
            let r = run(&config, seed, false);
            assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
            decided += usize::from(r.chosen.is_some());
        }
        assert!(decided > 1800, "only {decided} of 2000 runs decided");
    }

    #[test]
    fn without_faults_every_run_decides() {
        let config = SynodSimConfig {
            loss: 0.0,
            dup: 0.0,
            crash: 0.0,
            ..SynodSimConfig::default()
        };
        for seed in 0..500 {
            let r = run(&config, seed, false);
            assert!(r.violation.is_none());
            assert!(r.chosen.is_some(), "seed {seed} did not decide");
        }
    }

    #[test]
    fn every_bug_is_caught() {
        for &bug in SynodBug::ALL {
            let config = SynodSimConfig {
                bug: Some(bug),
                ..SynodSimConfig::default()
            };
            let caught = (0..20_000).find(|&seed| run(&config, seed, false).violation.is_some());
            assert!(caught.is_some(), "{} survived 20000 seeds", bug.name());
        }
    }
}
