//! Paxos and Multi-Paxos as deterministic, sans-IO state machines.
//!
//! The crate does no I/O, keeps no clock and draws no randomness of its own:
//! callers feed it messages and ticks and carry out what it returns. That makes
//! every behaviour reproducible from its inputs, which is how the simulator and
//! the model checker of the `parliament` crate test it.
//!
//! - [`ballot`]: ballot numbers, totally ordered and unique per proposer.
//! - [`synod`]: single-decree Paxos, phase by phase, as *Paxos Made Simple*
//!   describes it.
//! - [`replica`]: Multi-Paxos, a replicated log with leader election,
//!   pipelining, batching, catch-up, leases and read-index.
//! - [`rng`]: a small portable PRNG for callers that need seeded randomness.

pub mod ballot;
pub mod replica;
pub mod rng;
pub mod synod;

pub use ballot::{Ballot, NodeId, Round};
