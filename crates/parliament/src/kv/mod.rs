//! The replicated state machine: a Redis-like key-value store.

mod crc32c;
mod glob;

pub use crc32c::{Crc32c, crc32c};
pub use glob::{Glob, glob_match};
