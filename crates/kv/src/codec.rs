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

use bytes::{BufMut, Bytes};
use codec::{DecodeError, Reader, put_bytes, put_count, put_varint};

use super::command::{ClientId, Command, Reply, Request, Seq, SetCondition};

/// Version byte at the start of every encoded request.
pub const REQUEST_FORMAT: u8 = 1;

/// How deeply commands and replies may nest (an `Exec` inside an `Exec`, an
/// array inside an array). Bounds the decoder's recursion on forged input.
pub const MAX_NESTING: usize = 8;

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
    put_count(out, keys.len());
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
            out.put_i64_le(*delta);
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
            put_count(out, pairs.len());
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
            put_count(out, watches.len());
            for (k, v) in watches {
                put_bytes(out, k);
                put_varint(out, *v);
            }
            put_count(out, commands.len());
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
            out.put_i64_le(*i);
        }
        Reply::Bulk(b) => {
            out.push(tag::BULK);
            put_bytes(out, b);
        }
        Reply::Nil => out.push(tag::NIL),
        Reply::Array(items) => {
            out.push(tag::ARRAY);
            put_count(out, items.len());
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
        put_varint(&mut out, self.client.0);
        put_varint(&mut out, self.seq.0);
        put_varint(&mut out, self.ack_below.0);
        put_command(&mut out, &self.command);
        Bytes::from(out)
    }

    /// Decodes a request. Keys and values are copied out of `input`, so the
    /// store never keeps a larger buffer alive for their sake.
    pub fn decode(input: &[u8]) -> Result<Request, DecodeError> {
        let mut r = Reader::with_format(input, "request", REQUEST_FORMAT)?;
        let client = ClientId(r.varint("a client id")?);
        let seq = Seq(r.varint("a sequence number")?);
        let ack_below = Seq(r.varint("an acknowledged sequence number")?);
        let command = command(&mut r, 0)?;
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
    let reply = reply(&mut r, 0)?;
    r.finish()?;
    Ok(reply)
}

// ---- decoding ----

fn bytes(r: &mut Reader<'_>) -> Result<Bytes, DecodeError> {
    r.bytes("a string").map(Bytes::copy_from_slice)
}

fn keys(r: &mut Reader<'_>) -> Result<Vec<Bytes>, DecodeError> {
    let n = r.count("keys", 1)?;
    (0..n).map(|_| bytes(r)).collect()
}

fn command(r: &mut Reader<'_>, depth: usize) -> Result<Command, DecodeError> {
    if depth > MAX_NESTING {
        return Err(DecodeError::TooDeep(MAX_NESTING));
    }
    let command = match r.u8("a command tag")? {
        tag::GET => Command::Get(bytes(r)?),
        tag::SET => {
            let key = bytes(r)?;
            let value = bytes(r)?;
            let condition = match r.u8("a set condition")? {
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
            let get = r.bool("set get flag")?;
            Command::Set {
                key,
                value,
                condition,
                get,
            }
        }
        tag::SETNX => Command::SetNx(bytes(r)?, bytes(r)?),
        tag::GETSET => Command::GetSet(bytes(r)?, bytes(r)?),
        tag::GETDEL => Command::GetDel(bytes(r)?),
        tag::DEL => Command::Del(keys(r)?),
        tag::EXISTS => Command::Exists(keys(r)?),
        tag::INCRBY => Command::IncrBy {
            key: bytes(r)?,
            delta: r.i64_le("a delta")?,
        },
        tag::APPEND => Command::Append(bytes(r)?, bytes(r)?),
        tag::STRLEN => Command::Strlen(bytes(r)?),
        tag::MGET => Command::MGet(keys(r)?),
        tag::MSET => {
            let n = r.count("pairs", 2)?;
            let pairs = (0..n)
                .map(|_| Ok((bytes(r)?, bytes(r)?)))
                .collect::<Result<_, DecodeError>>()?;
            Command::MSet(pairs)
        }
        tag::CAS => {
            let key = bytes(r)?;
            let expected = if r.bool("cas expected")? {
                Some(bytes(r)?)
            } else {
                None
            };
            Command::Cas {
                key,
                expected,
                new: bytes(r)?,
            }
        }
        tag::FLUSHALL => Command::FlushAll,
        tag::DBSIZE => Command::DbSize,
        tag::KEYS => Command::Keys(bytes(r)?),
        tag::SCAN => {
            let cursor = r.varint("a scan cursor")?;
            let pattern = if r.bool("scan pattern")? {
                Some(bytes(r)?)
            } else {
                None
            };
            // A count beyond usize is clamped by the store anyway.
            let count = usize::try_from(r.varint("a scan count")?).unwrap_or(usize::MAX);
            Command::Scan {
                cursor,
                pattern,
                count,
            }
        }
        tag::EXEC => {
            let n = r.count("watches", 2)?;
            let watches = (0..n)
                .map(|_| Ok((bytes(r)?, r.varint("a version")?)))
                .collect::<Result<_, DecodeError>>()?;
            let n = r.count("commands", 1)?;
            let commands = (0..n)
                .map(|_| command(r, depth + 1))
                .collect::<Result<_, DecodeError>>()?;
            Command::Exec { watches, commands }
        }
        tag::VERSION => Command::Version(bytes(r)?),
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "command",
                tag,
            });
        }
    };
    Ok(command)
}

pub(crate) fn reply(r: &mut Reader<'_>, depth: usize) -> Result<Reply, DecodeError> {
    if depth > MAX_NESTING {
        return Err(DecodeError::TooDeep(MAX_NESTING));
    }
    Ok(match r.u8("a reply tag")? {
        tag::STATUS => Reply::Status(r.utf8("a status")?.to_owned()),
        tag::ERROR => Reply::Error(r.utf8("an error")?.to_owned()),
        tag::INTEGER => Reply::Integer(r.i64_le("an integer")?),
        tag::BULK => Reply::Bulk(bytes(r)?),
        tag::NIL => Reply::Nil,
        tag::ARRAY => {
            let n = r.count("an array", 1)?;
            let items = (0..n)
                .map(|_| reply(r, depth + 1))
                .collect::<Result<_, DecodeError>>()?;
            Reply::Array(items)
        }
        tag::NIL_ARRAY => Reply::NilArray,
        tag => return Err(DecodeError::UnknownTag { what: "reply", tag }),
    })
}
