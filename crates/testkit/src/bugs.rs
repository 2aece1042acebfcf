//! Deliberately broken variants of the protocol, so that anyone can watch the
//! model checker and the simulator catch them.
//!
//! The broken behaviour is injected at the boundary of the real, correct types
//! (what a role's disk keeps, what a role makes of a message it receives) and
//! never inside the `paxos` crate, so the protocol core has no broken code
//! path to switch on by mistake.

use paxos::Ballot;
use paxos::synod::{Ledger, Message};

/// A family of broken variants, named on the command line.
pub trait Variant: Copy + Sized + 'static {
    const ALL: &'static [Self];
    /// The name used with `--bug`.
    fn name(self) -> &'static str;
    fn description(self) -> &'static str;

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|b| b.name() == name)
    }
}

/// A broken synod.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SynodBug {
    /// The acceptor keeps its accepted value across a restart but not its
    /// promise, so after a restart it may accept below a ballot it promised.
    ForgetPromise,
    /// The proposer ignores the accepted values reported in promises and always
    /// proposes its own value in phase 2.
    IgnorePromisedValues,
    /// The learner counts acceptances of a value across different ballots.
    LearnerMixesBallots,
}

impl Variant for SynodBug {
    const ALL: &'static [SynodBug] = &[
        SynodBug::ForgetPromise,
        SynodBug::IgnorePromisedValues,
        SynodBug::LearnerMixesBallots,
    ];

    fn name(self) -> &'static str {
        match self {
            SynodBug::ForgetPromise => "forget-promise",
            SynodBug::IgnorePromisedValues => "ignore-promised-values",
            SynodBug::LearnerMixesBallots => "learner-mixes-ballots",
        }
    }

    fn description(self) -> &'static str {
        match self {
            SynodBug::ForgetPromise => "an acceptor that forgets its promise on restart",
            SynodBug::IgnorePromisedValues => {
                "a proposer that ignores the values reported in promises"
            }
            SynodBug::LearnerMixesBallots => {
                "a learner that counts acceptances across different ballots"
            }
        }
    }
}

impl SynodBug {
    /// What an acceptor's disk holds after it was asked to persist `ledger`.
    pub fn stored<V: Clone>(bug: Option<SynodBug>, ledger: &Ledger<V>) -> Ledger<V> {
        let mut stored = ledger.clone();
        if bug == Some(SynodBug::ForgetPromise) {
            stored.promised = stored.accepted.as_ref().map_or(Ballot::ZERO, |(b, _)| *b);
        }
        stored
    }

    /// The message as a proposer of this variant takes it in.
    pub fn to_proposer<V>(bug: Option<SynodBug>, message: Message<V>) -> Message<V> {
        match message {
            Message::Promise { ballot, .. } if bug == Some(SynodBug::IgnorePromisedValues) => {
                Message::Promise {
                    ballot,
                    accepted: None,
                }
            }
            other => other,
        }
    }

    /// The message as a learner of this variant takes it in.
    pub fn to_learner<V>(bug: Option<SynodBug>, message: Message<V>) -> Message<V> {
        match message {
            Message::Accepted { value, .. } if bug == Some(SynodBug::LearnerMixesBallots) => {
                Message::Accepted {
                    ballot: Ballot::ZERO,
                    value,
                }
            }
            other => other,
        }
    }
}
