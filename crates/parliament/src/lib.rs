//! parliament: a Multi-Paxos replicated key-value database.

pub mod bugs;
pub mod check;
mod fasthash;
pub mod http;
pub mod kv;
pub mod loadgen;
pub mod metrics;
pub mod model;
pub mod net;
pub mod node;
pub mod resp;
pub mod server;
pub mod sim;
pub mod storage;
pub mod wire;
