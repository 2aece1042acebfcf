//! The node: a tokio process that owns one Multi-Paxos replica, its storage
//! and the key-value state machine, and serves clients and peers.
//!
//! One task owns the replica; every other task talks to it through bounded
//! channels ([`api::NodeHandle`]), so there are no locks around protocol state.

pub mod api;
