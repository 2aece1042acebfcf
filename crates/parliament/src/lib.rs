//! parliament: a Multi-Paxos replicated key-value database.

pub mod bugs;
pub mod check;
pub mod model;
