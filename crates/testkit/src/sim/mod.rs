//! Deterministic simulation: one `u64` seed decides every message delay, loss,
//! duplication, crash and restart, so a failing run replays bit for bit.

pub mod files;
pub mod kv;
pub mod synod;
pub mod trace;
