//! Durable storage of a node: the write-ahead log that keeps what this node
//! promised and accepted across crashes.

pub mod replica;
pub mod wal;

#[cfg(test)]
mod wal_tests;
