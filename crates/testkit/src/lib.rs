//! The test kit of parliament: what checks the protocol and the node.
//!
//! - [`sim`]: the deterministic simulators, of the synod and of the whole
//!   replicated database; one seed decides every fault, and a run replays bit
//!   for bit.
//! - [`model`]: exhaustive model checking of small configurations.
//! - [`check`]: the linearizability checker of client histories.
//! - [`bugs`]: deliberately broken variants that the checks must catch.

pub mod bugs;
pub mod check;
pub mod model;
pub mod sim;
