//! The one binary codec of parliament, below every format it writes: the
//! peer wire and the log records (`storage::wire`), client requests and
//! replies (`kv`), snapshot bodies (`kv`), snapshot files (`storage`) and
//! snapshot transfer frames.
//!
//! - Integers are LEB128 varints ([`put_varint`]), or fixed-width where a
//!   format says so (checksums, signed numbers, file headers).
//! - Byte strings and lists carry their length first ([`put_bytes`]).
//! - [`Reader`] decodes from a slice and checks every length and count
//!   against the bytes that remain before it takes or allocates anything, so
//!   a forged length costs at most the input's own size, and nothing it is
//!   given can make it panic. [`StreamReader`] does the same for inputs too
//!   large to hold whole (a snapshot being loaded).
//! - Every decoder reports the one [`DecodeError`], which names what it was
//!   reading.
//! - [`crc32c`] and [`Crc32c`] checksum log records, snapshots and chunks.

mod crc;
mod reader;
mod stream;

#[cfg(test)]
mod tests;

use bytes::BufMut;

pub use crc::{Crc32c, crc32c};
pub use reader::Reader;
pub use stream::{StreamError, StreamReader};

/// Why bytes could not be decoded. `what` names the field being read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty input where {0} was expected")]
    Empty(&'static str),
    #[error("unknown {what} format {found} (this build reads format {expected})")]
    UnknownFormat {
        what: &'static str,
        found: u8,
        expected: u8,
    },
    #[error("input ends inside {0}")]
    Truncated(&'static str),
    #[error("{0}: a varint is longer than 64 bits")]
    VarintOverflow(&'static str),
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("{what} claims {claimed} items or bytes but only {left} bytes remain")]
    LengthTooLong {
        what: &'static str,
        claimed: u64,
        left: usize,
    },
    #[error("{what} {value} is above the limit of {max}")]
    TooLarge {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error("{what}: {reason}")]
    Invalid {
        what: &'static str,
        reason: &'static str,
    },
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    #[error("{0} bytes left over after the value")]
    TrailingBytes(usize),
}

/// Appends `n` as a LEB128 varint: seven bits a byte, low bits first, the
/// top bit set on every byte but the last.
pub fn put_varint(out: &mut impl BufMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

/// Appends `b` with its length first.
pub fn put_bytes(out: &mut impl BufMut, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.put_slice(b);
}

/// Appends a count of items (a list's length).
pub fn put_count(out: &mut impl BufMut, n: usize) {
    put_varint(out, n as u64);
}

/// Decodes a varint from bytes handed over one at a time by `next`. The
/// tenth byte may carry only the single top bit of a `u64`.
fn varint_from<E: From<DecodeError>>(
    what: &'static str,
    mut next: impl FnMut() -> Result<u8, E>,
) -> Result<u64, E> {
    let mut n: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = next()?;
        let part = u64::from(b & 0x7F);
        if shift == 63 && part > 1 {
            return Err(DecodeError::VarintOverflow(what).into());
        }
        n |= part << shift;
        if b & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(DecodeError::VarintOverflow(what).into())
}
