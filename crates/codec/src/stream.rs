//! Decoding from a stream too large to hold whole.

use std::io::{self, Read};

use crate::{DecodeError, varint_from};

/// Why a stream could not be decoded: its bytes, or reading them.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("reading: {0}")]
    Io(#[source] io::Error),
}

/// Reads the codec's fields from an [`io::Read`]. An early end of the stream
/// is [`DecodeError::Truncated`]; byte strings grow only as their bytes
/// arrive, so a forged length cannot allocate beyond the stream's size.
pub struct StreamReader<R> {
    inner: R,
}

impl<R: Read> StreamReader<R> {
    pub fn new(inner: R) -> StreamReader<R> {
        StreamReader { inner }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Exactly `buf.len()` bytes.
    pub fn fill(&mut self, what: &'static str, buf: &mut [u8]) -> Result<(), StreamError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => StreamError::Decode(DecodeError::Truncated(what)),
            _ => StreamError::Io(e),
        })
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, StreamError> {
        let mut b = [0u8; 1];
        self.fill(what, &mut b)?;
        Ok(b[0])
    }

    pub fn varint(&mut self, what: &'static str) -> Result<u64, StreamError> {
        varint_from(what, || self.u8(what))
    }

    /// A count, which must fit in a `usize`.
    pub fn count(&mut self, what: &'static str) -> Result<usize, StreamError> {
        let value = self.varint(what)?;
        usize::try_from(value).map_err(|_| {
            DecodeError::TooLarge {
                what,
                value,
                max: usize::MAX as u64,
            }
            .into()
        })
    }

    /// A byte string with its length first, of at most `max` bytes.
    pub fn bytes(&mut self, what: &'static str, max: u64) -> Result<Vec<u8>, StreamError> {
        let len = self.varint(what)?;
        if len > max {
            return Err(DecodeError::TooLarge {
                what,
                value: len,
                max,
            }
            .into());
        }
        let mut buf = Vec::new();
        (&mut self.inner)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(StreamError::Io)?;
        if (buf.len() as u64) < len {
            return Err(DecodeError::Truncated(what).into());
        }
        Ok(buf)
    }
}
