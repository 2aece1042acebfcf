//! Compact binary encoding of requests (what goes into the log) and replies
//! (what snapshots keep for sessions).
//!
//! Layout: a format version byte, then varint `client`, `seq`, `ack_below`
//! and the command: a tag byte followed by its fields. Integers are LEB128
//! varints except `IncrBy`'s delta (8 bytes little-endian, since it is
//! signed); byte strings are a varint length then the bytes; lists are a
//! varint count then the items. Decoding checks every length and count
//! against the input that is left before allocating, so a forged length
//! cannot make it allocate more than the input size.

use bytes::Bytes;
use thiserror::Error;

use super::command::{Command, Reply, Request, SetCondition};

/// Version byte at the start of every encoded request.
pub const REQUEST_FORMAT: u8 = 1;

/// How deeply commands and replies may nest (an `Exec` inside an `Exec`, an
/// array inside an array). Bounds the decoder's recursion on forged input.
pub const MAX_NESTING: usize = 8;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty input")]
    Empty,
    #[error("unsupported format version {0}")]
    UnknownFormat(u8),
    #[error("input ends in the middle of a value")]
    Truncated,
    #[error("varint is longer than 64 bits")]
    VarintOverflow,
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("length {0} exceeds the remaining input")]
    LengthTooLong(u64),
    #[error("nesting deeper than {MAX_NESTING} levels")]
    TooDeep,
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    #[error("{0} bytes left over after the value")]
    TrailingBytes(usize),
}

// ---- encoding ----

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    put_varint(out, n as u64);
}

mod tag {
    pub const GET: u8 = 1;
    pub const SET: u8 = 2;
    pub const SETNX: u8 = 3;
    pub const GETSET: u8 = 4;
    pub const GETDEL: u8 = 5;
    pub const DEL: u8 = 6;
    pub const EXISTS: u8 = 7;
    pub const INCRBY: u8 = 8;
    pub const APPEND: u8 = 9;
    pub const STRLEN: u8 = 10;
    pub const MGET: u8 = 11;
    pub const MSET: u8 = 12;
    pub const CAS: u8 = 13;
    pub const FLUSHALL: u8 = 14;
    pub const DBSIZE: u8 = 15;
    pub const KEYS: u8 = 16;
    pub const SCAN: u8 = 17;
    pub const EXEC: u8 = 18;
    pub const VERSION: u8 = 19;

    pub const STATUS: u8 = 1;
    pub const ERROR: u8 = 2;
    pub const INTEGER: u8 = 3;
    pub const BULK: u8 = 4;
    pub const NIL: u8 = 5;
    pub const ARRAY: u8 = 6;
    pub const NIL_ARRAY: u8 = 7;
}

fn put_keys(out: &mut Vec<u8>, keys: &[Bytes]) {
    put_len(out, keys.len());
    for k in keys {
        put_bytes(out, k);
    }
}

pub(crate) fn put_command(out: &mut Vec<u8>, command: &Command) {
    match command {
        Command::Get(k) => {
            out.push(tag::GET);
            put_bytes(out, k);
        }
        Command::Set {
            key,
            value,
            condition,
            get,
        } => {
            out.push(tag::SET);
            put_bytes(out, key);
            put_bytes(out, value);
            out.push(match condition {
                SetCondition::None => 0,
                SetCondition::Nx => 1,
                SetCondition::Xx => 2,
            });
            out.push(u8::from(*get));
        }
        Command::SetNx(k, v) => {
            out.push(tag::SETNX);
            put_bytes(out, k);
            put_bytes(out, v);
        }
        Command::GetSet(k, v) => {
            out.push(tag::GETSET);
            put_bytes(out, k);
            put_bytes(out, v);
        }
        Command::GetDel(k) => {
            out.push(tag::GETDEL);
            put_bytes(out, k);
        }
        Command::Del(keys) => {
            out.push(tag::DEL);
            put_keys(out, keys);
        }
        Command::Exists(keys) => {
            out.push(tag::EXISTS);
            put_keys(out, keys);
        }
        Command::IncrBy { key, delta } => {
            out.push(tag::INCRBY);
            put_bytes(out, key);
            out.extend_from_slice(&delta.to_le_bytes());
        }
        Command::Append(k, v) => {
            out.push(tag::APPEND);
            put_bytes(out, k);
            put_bytes(out, v);
        }
        Command::Strlen(k) => {
            out.push(tag::STRLEN);
            put_bytes(out, k);
        }
        Command::MGet(keys) => {
            out.push(tag::MGET);
            put_keys(out, keys);
        }
        Command::MSet(pairs) => {
            out.push(tag::MSET);
            put_len(out, pairs.len());
            for (k, v) in pairs {
                put_bytes(out, k);
                put_bytes(out, v);
            }
        }
        Command::Cas { key, expected, new } => {
            out.push(tag::CAS);
            put_bytes(out, key);
            match expected {
                None => out.push(0),
                Some(e) => {
                    out.push(1);
                    put_bytes(out, e);
                }
            }
            put_bytes(out, new);
        }
        Command::FlushAll => out.push(tag::FLUSHALL),
        Command::DbSize => out.push(tag::DBSIZE),
        Command::Keys(p) => {
            out.push(tag::KEYS);
            put_bytes(out, p);
        }
        Command::Scan {
            cursor,
            pattern,
            count,
        } => {
            out.push(tag::SCAN);
            put_varint(out, *cursor);
            match pattern {
                None => out.push(0),
                Some(p) => {
                    out.push(1);
                    put_bytes(out, p);
                }
            }
            put_varint(out, *count as u64);
        }
        Command::Exec { watches, commands } => {
            out.push(tag::EXEC);
            put_len(out, watches.len());
            for (k, v) in watches {
                put_bytes(out, k);
                put_varint(out, *v);
            }
            put_len(out, commands.len());
            for c in commands {
                put_command(out, c);
            }
        }
        Command::Version(k) => {
            out.push(tag::VERSION);
            put_bytes(out, k);
        }
    }
}

pub(crate) fn put_reply(out: &mut Vec<u8>, reply: &Reply) {
    match reply {
        Reply::Status(s) => {
            out.push(tag::STATUS);
            put_bytes(out, s.as_bytes());
        }
        Reply::Error(s) => {
            out.push(tag::ERROR);
            put_bytes(out, s.as_bytes());
        }
        Reply::Integer(i) => {
            out.push(tag::INTEGER);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Reply::Bulk(b) => {
            out.push(tag::BULK);
            put_bytes(out, b);
        }
        Reply::Nil => out.push(tag::NIL),
        Reply::Array(items) => {
            out.push(tag::ARRAY);
            put_len(out, items.len());
            for r in items {
                put_reply(out, r);
            }
        }
        Reply::NilArray => out.push(tag::NIL_ARRAY),
    }
}

impl Request {
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(32);
        out.push(REQUEST_FORMAT);
        put_varint(&mut out, self.client);
        put_varint(&mut out, self.seq);
        put_varint(&mut out, self.ack_below);
        put_command(&mut out, &self.command);
        Bytes::from(out)
    }

    pub fn decode(input: &[u8]) -> Result<Request, DecodeError> {
        let mut r = Reader::new(input);
        let format = r.u8().map_err(|_| DecodeError::Empty)?;
        if format != REQUEST_FORMAT {
            return Err(DecodeError::UnknownFormat(format));
        }
        let client = r.varint()?;
        let seq = r.varint()?;
        let ack_below = r.varint()?;
        let command = r.command(0)?;
        r.finish()?;
        Ok(Request {
            client,
            seq,
            ack_below,
            command,
        })
    }
}

/// Encodes one reply on its own (no version byte: its container has one).
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    let mut out = Vec::new();
    put_reply(&mut out, reply);
    out
}

/// Decodes a reply produced by [`encode_reply`], rejecting trailing bytes.
pub fn decode_reply(input: &[u8]) -> Result<Reply, DecodeError> {
    let mut r = Reader::new(input);
    let reply = r.reply(0)?;
    r.finish()?;
    Ok(reply)
}

// ---- decoding ----

/// Cursor over an input slice; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Reader { rest: input }
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.rest.len()))
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.rest.split_first().ok_or(DecodeError::Truncated)?;
        self.rest = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            // The tenth byte may only carry the single top bit.
            if shift == 63 && bits > 1 {
                return Err(DecodeError::VarintOverflow);
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::VarintOverflow)
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        let raw = self.take(8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(raw);
        Ok(i64::from_le_bytes(b))
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::UnknownTag { what, tag }),
        }
    }

    /// A length or count that must fit in what is left: every item takes
    /// at least `min_item` bytes.
    fn len(&mut self, min_item: usize) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_item))
            .is_some_and(|bytes| bytes <= self.rest.len());
        if !fits {
            return Err(DecodeError::LengthTooLong(n));
        }
        // The check above guarantees the conversion succeeds.
        usize::try_from(n).map_err(|_| DecodeError::LengthTooLong(n))
    }

    pub(crate) fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.len(1)?;
        Ok(Bytes::copy_from_slice(self.take(n)?))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.len(1)?;
        let raw = self.take(n)?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
    }

    fn keys(&mut self) -> Result<Vec<Bytes>, DecodeError> {
        let n = self.len(1)?;
        (0..n).map(|_| self.bytes()).collect()
    }

    fn command(&mut self, depth: usize) -> Result<Command, DecodeError> {
        if depth > MAX_NESTING {
            return Err(DecodeError::TooDeep);
        }
        let t = self.u8()?;
        let command = match t {
            tag::GET => Command::Get(self.bytes()?),
            tag::SET => {
                let key = self.bytes()?;
                let value = self.bytes()?;
                let condition = match self.u8()? {
                    0 => SetCondition::None,
                    1 => SetCondition::Nx,
                    2 => SetCondition::Xx,
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "set condition",
                            tag,
                        });
                    }
                };
                let get = self.flag("set get flag")?;
                Command::Set {
                    key,
                    value,
                    condition,
                    get,
                }
            }
            tag::SETNX => Command::SetNx(self.bytes()?, self.bytes()?),
            tag::GETSET => Command::GetSet(self.bytes()?, self.bytes()?),
            tag::GETDEL => Command::GetDel(self.bytes()?),
            tag::DEL => Command::Del(self.keys()?),
            tag::EXISTS => Command::Exists(self.keys()?),
            tag::INCRBY => Command::IncrBy {
                key: self.bytes()?,
                delta: self.i64()?,
            },
            tag::APPEND => Command::Append(self.bytes()?, self.bytes()?),
            tag::STRLEN => Command::Strlen(self.bytes()?),
            tag::MGET => Command::MGet(self.keys()?),
            tag::MSET => {
                let n = self.len(2)?;
                let pairs = (0..n)
                    .map(|_| Ok((self.bytes()?, self.bytes()?)))
                    .collect::<Result<_, DecodeError>>()?;
                Command::MSet(pairs)
            }
            tag::CAS => {
                let key = self.bytes()?;
                let expected = if self.flag("cas expected")? {
                    Some(self.bytes()?)
                } else {
                    None
                };
                Command::Cas {
                    key,
                    expected,
                    new: self.bytes()?,
                }
            }
            tag::FLUSHALL => Command::FlushAll,
            tag::DBSIZE => Command::DbSize,
            tag::KEYS => Command::Keys(self.bytes()?),
            tag::SCAN => {
                let cursor = self.varint()?;
                let pattern = if self.flag("scan pattern")? {
                    Some(self.bytes()?)
                } else {
                    None
                };
                // A count beyond usize is clamped by the store anyway.
                let count = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
                Command::Scan {
                    cursor,
                    pattern,
                    count,
                }
            }
            tag::EXEC => {
                let n = self.len(2)?;
                let watches = (0..n)
                    .map(|_| Ok((self.bytes()?, self.varint()?)))
                    .collect::<Result<_, DecodeError>>()?;
                let n = self.len(1)?;
                let commands = (0..n)
                    .map(|_| self.command(depth + 1))
                    .collect::<Result<_, DecodeError>>()?;
                Command::Exec { watches, commands }
            }
            tag::VERSION => Command::Version(self.bytes()?),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "command",
                    tag,
                });
            }
        };
        Ok(command)
    }

    pub(crate) fn reply(&mut self, depth: usize) -> Result<Reply, DecodeError> {
        if depth > MAX_NESTING {
            return Err(DecodeError::TooDeep);
        }
        Ok(match self.u8()? {
            tag::STATUS => Reply::Status(self.string()?),
            tag::ERROR => Reply::Error(self.string()?),
            tag::INTEGER => Reply::Integer(self.i64()?),
            tag::BULK => Reply::Bulk(self.bytes()?),
            tag::NIL => Reply::Nil,
            tag::ARRAY => {
                let n = self.len(1)?;
                let items = (0..n)
                    .map(|_| self.reply(depth + 1))
                    .collect::<Result<_, DecodeError>>()?;
                Reply::Array(items)
            }
            tag::NIL_ARRAY => Reply::NilArray,
            tag => return Err(DecodeError::UnknownTag { what: "reply", tag }),
        })
    }
}
