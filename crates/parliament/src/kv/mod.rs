//! The replicated state machine: a Redis-like key-value store.
//!
//! Everything here is pure and deterministic. The log delivers [`Request`]s
//! in order to [`Store::apply`]; read-only commands may also be answered by
//! [`Store::read`] without the log. Requests travel as bytes
//! ([`Request::encode`] / [`Request::decode`]), and the whole store can be
//! written to and rebuilt from a snapshot ([`Store::snapshot_to`] /
//! [`Store::restore_from`]).

mod codec;
mod command;
mod crc32c;
mod glob;
mod session;
mod snapshot;
mod store;

#[cfg(test)]
mod tests;

pub use codec::{DecodeError, MAX_NESTING, REQUEST_FORMAT, decode_reply, encode_reply};
pub use command::{Command, Reply, Request, SetCondition, errors};
pub use crc32c::{Crc32c, crc32c};
pub use glob::{Glob, glob_match};
pub use session::SessionLimits;
pub use snapshot::{SNAPSHOT_FORMAT, SNAPSHOT_MAGIC, SnapshotError};
pub use store::{MAX_SCAN_COUNT, MAX_VALUE_LEN, Store, key_hash};
