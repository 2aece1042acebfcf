//! Decoding from a slice held whole.

use crate::{DecodeError, varint_from};

/// A cursor over an input slice. Every read is bounds-checked and returns
/// a [`DecodeError`] naming what it was reading; byte strings are slices of
/// the input (use `Bytes::slice_ref` to keep one without copying).
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { rest: input }
    }

    /// A reader after the format byte of `what`, which must be `expected`.
    pub fn with_format(
        input: &'a [u8],
        what: &'static str,
        expected: u8,
    ) -> Result<Reader<'a>, DecodeError> {
        let (&found, rest) = input.split_first().ok_or(DecodeError::Empty(what))?;
        if found != expected {
            return Err(DecodeError::UnknownFormat {
                what,
                found,
                expected,
            });
        }
        Ok(Reader { rest })
    }

    /// Bytes not yet read.
    pub fn left(&self) -> usize {
        self.rest.len()
    }

    /// Every byte not yet read, leaving none.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// The end of the input: an error if bytes are left over.
    pub fn finish(self) -> Result<(), DecodeError> {
        match self.rest.len() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, what: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(what, N)?);
        Ok(a)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or(DecodeError::Truncated(what))?;
        self.rest = rest;
        Ok(b)
    }

    /// A byte that must be 0 or 1.
    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::UnknownTag { what, tag }),
        }
    }

    pub fn u16_be(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        self.array(what).map(u16::from_be_bytes)
    }

    pub fn u32_le(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub fn u64_le(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.array(what).map(u64::from_le_bytes)
    }

    pub fn u64_be(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.array(what).map(u64::from_be_bytes)
    }

    pub fn i64_le(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.array(what).map(i64::from_le_bytes)
    }

    pub fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        varint_from(what, || self.u8(what))
    }

    /// A varint no larger than `max`.
    pub fn varint_max(&mut self, what: &'static str, max: u64) -> Result<u64, DecodeError> {
        let value = self.varint(what)?;
        if value > max {
            return Err(DecodeError::TooLarge { what, value, max });
        }
        Ok(value)
    }

    /// A count of items that each take at least `item_bytes_min` bytes
    /// (at least 1): never more than the bytes left could hold, so a forged
    /// count cannot make the caller allocate.
    pub fn count(
        &mut self,
        what: &'static str,
        item_bytes_min: usize,
    ) -> Result<usize, DecodeError> {
        let claimed = self.varint(what)?;
        let left = self.rest.len();
        let fits = usize::try_from(claimed)
            .ok()
            .and_then(|n| n.checked_mul(item_bytes_min.max(1)))
            .is_some_and(|bytes| bytes <= left);
        if !fits {
            return Err(DecodeError::LengthTooLong {
                what,
                claimed,
                left,
            });
        }
        // `fits` proved the count is below `left`, a usize.
        Ok(claimed as usize)
    }

    /// A byte string with its length first.
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.count(what, 1)?;
        self.take(what, len)
    }

    /// A UTF-8 string with its length first.
    pub fn utf8(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let bytes = self.bytes(what)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8(what))
    }
}
