//! The replicated state machine: a Redis-like key-value store.
//!
//! Everything here is pure and deterministic. The log delivers [`Request`]s
//! in order to [`Store::apply`]; read-only commands may also be answered by
//! [`Store::read`] without the log. Requests travel as bytes
//! ([`Request::encode`] / [`Request::decode`]), and the whole store can be
//! written to and rebuilt from a snapshot ([`Store::snapshot_to`] /
//! [`Store::restore_from`]).
//!
//! Design in brief (details beside the code):
//!
//! * **Versions** — a store-wide counter advances on every applied write;
//!   a key's version is the counter at its last change, and an absent key's
//!   version is the counter at the last deletion or flush anywhere. `WATCH`
//!   may therefore abort spuriously, but never misses a change.
//! * **Sessions** — each client's applied seqs keep their replies until
//!   acknowledged, so a retried request is answered, not re-applied. Memory
//!   is bounded per client and in the number of clients (least recently
//!   used by log index is evicted); a retry from an evicted client may apply
//!   twice, which is why the default bound is generous.
//! * **SCAN** — keys are ordered by a fixed 64-bit hash and then by bytes;
//!   the cursor is the next hash to visit. A batch never splits a hash
//!   value, so a key present for the whole scan is returned at least once,
//!   whatever is added or removed meanwhile.

mod codec;
mod command;
mod glob;
mod session;
mod snapshot;
mod store;

#[cfg(test)]
mod tests;

pub use self::codec::{MAX_NESTING, REQUEST_FORMAT, decode_reply, encode_reply};
pub use ::codec::DecodeError;
pub use command::{ClientId, Command, Reply, Request, Seq, SetCondition, errors};
pub use glob::{Glob, glob_match};
pub use session::SessionLimits;
pub use snapshot::{SNAPSHOT_FORMAT, SNAPSHOT_MAGIC, SnapshotError};
pub use store::{MAX_SCAN_COUNT, MAX_VALUE_LEN, Store, key_hash};
