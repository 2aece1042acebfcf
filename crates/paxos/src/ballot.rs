//! Ballots: the numbered attempts of the Part-Time Parliament.
//!
//! Every proposal carries a ballot. Ballots are totally ordered and each one
//! belongs to exactly one proposer, because the proposer's node id breaks ties
//! between equal rounds. Two proposers can therefore never issue the same
//! ballot, which is what lets an acceptor tell their proposals apart.

use std::fmt;

/// A node's identity. Legislators in the fable; processes in the code.
pub type NodeId = u64;

/// The attempt number of a ballot. A proposer that needs a fresh ballot takes
/// a round higher than any it has used or seen.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Round(pub u64);

impl fmt::Display for Round {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A ballot number: `(round, node)`, compared round first, then node.
///
/// The derived ordering is the protocol's ordering: the field order below is
/// load-bearing.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Ballot {
    /// The attempt number.
    pub round: Round,
    /// The proposer that owns this ballot.
    pub node: NodeId,
}

impl Ballot {
    /// The ballot below every ballot a proposer can issue (round 0). No
    /// proposer ever uses round 0, so "promised ZERO" means "promised nothing".
    pub const ZERO: Ballot = Ballot {
        round: Round(0),
        node: 0,
    };

    /// The ballot `(round, node)`.
    pub const fn new(round: u64, node: NodeId) -> Ballot {
        Ballot {
            round: Round(round),
            node,
        }
    }

    /// The smallest ballot owned by `node` that is higher than `self`.
    pub fn next_for(self, node: NodeId) -> Ballot {
        // A round that overflows u64 cannot be reached by counting.
        let round = self.round.0.checked_add(1).expect("ballot round overflow");
        Ballot::new(round, node)
    }
}

impl fmt::Display for Ballot {
    /// Printed as `round.node`, for example `3.2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round, self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_node() {
        assert!(Ballot::new(1, 9) < Ballot::new(2, 1));
        assert!(Ballot::new(2, 1) < Ballot::new(2, 3));
        assert!(Ballot::ZERO < Ballot::new(1, 0));
    }

    #[test]
    fn next_for_is_strictly_higher_and_owned() {
        let b = Ballot::new(4, 7).next_for(2);
        assert_eq!(b, Ballot::new(5, 2));
        assert!(b > Ballot::new(4, 7));
        assert_eq!(b.to_string(), "5.2");
    }
}
