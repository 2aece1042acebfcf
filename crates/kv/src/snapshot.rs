//! Streaming snapshots of the whole store.
//!
//! Layout: the magic `PRLMTKV\0`, a format version byte, the counters and
//! session limits, the host's cluster record (from format 2 on), the entries (key, value, version) in store order, the
//! sessions with their cached replies, and finally the CRC-32C of every
//! preceding byte (4 bytes, little-endian). Entries are written one at a
//! time through a buffer, so taking a snapshot needs no second copy of the
//! data; restoring reads the same way and checks the checksum before
//! handing back the store.

use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Write};

use bytes::Bytes;
use thiserror::Error;

use codec::{Crc32c, DecodeError, StreamError, StreamReader, put_bytes, put_varint};

use super::codec::{decode_reply, put_reply};
use super::command::{ClientId, Seq};
use super::session::{Session, SessionLimits, Sessions};
use super::store::{Entry, Slot, Store};

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"PRLMTKV\0";
pub const SNAPSHOT_FORMAT: u8 = 2;

/// The oldest format still read: format 1 has no cluster record (its
/// clusters never changed membership).
const SNAPSHOT_FORMAT_OLDEST: u8 = 1;

/// Longest byte string a snapshot may hold; a larger length can only come
/// from corruption.
const MAX_BLOB: u64 = 1 << 30;

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("not a snapshot (bad magic)")]
    BadMagic,
    #[error("unsupported snapshot format version {0}")]
    UnsupportedFormat(u8),
    #[error("snapshot is truncated")]
    Truncated,
    #[error("snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
    #[error("unexpected data after the snapshot trailer")]
    TrailingData,
    #[error("reading snapshot: {0}")]
    Io(#[source] io::Error),
}

impl From<io::Error> for SnapshotError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            SnapshotError::Truncated
        } else {
            SnapshotError::Io(e)
        }
    }
}

impl From<DecodeError> for SnapshotError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::Truncated(_) => SnapshotError::Truncated,
            other => SnapshotError::Corrupt(other.to_string()),
        }
    }
}

impl From<StreamError> for SnapshotError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::Decode(e) => e.into(),
            StreamError::Io(e) => e.into(),
        }
    }
}

/// Passes writes through and checksums them.
struct CrcWriter<W> {
    inner: W,
    crc: Crc32c,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // A writer claiming more than it was given breaks the contract;
        // checksum what it was given rather than panic.
        self.crc.update(buf.get(..n).unwrap_or(buf));
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Passes reads through and checksums them.
struct CrcReader<R> {
    inner: R,
    crc: Crc32c,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(buf.get(..n).unwrap_or(buf));
        Ok(n)
    }
}

impl Store {
    /// Writes the whole state (data, versions, counters, sessions) to `w`.
    /// The session limits are saved too: eviction must stay identical on
    /// every replica, so a restored store keeps the limits it was built with.
    pub fn snapshot_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut out = BufWriter::with_capacity(
            64 * 1024,
            CrcWriter {
                inner: &mut *w,
                crc: Crc32c::new(),
            },
        );
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&SNAPSHOT_MAGIC);
        buf.push(SNAPSHOT_FORMAT);
        put_varint(&mut buf, self.writes);
        put_varint(&mut buf, self.last_removal);
        match self.last_applied {
            None => buf.push(0),
            Some(i) => {
                buf.push(1);
                put_varint(&mut buf, i);
            }
        }
        let limits = self.sessions.limits;
        put_varint(&mut buf, limits.max_sessions as u64);
        put_varint(&mut buf, limits.max_replies as u64);
        put_bytes(&mut buf, &self.cluster);
        put_varint(&mut buf, self.data.len() as u64);
        out.write_all(&buf)?;

        for (slot, entry) in &self.data {
            buf.clear();
            put_bytes(&mut buf, &slot.key);
            put_bytes(&mut buf, &entry.value);
            put_varint(&mut buf, entry.version);
            out.write_all(&buf)?;
        }

        buf.clear();
        put_varint(&mut buf, self.sessions.by_client.len() as u64);
        out.write_all(&buf)?;
        let mut reply = Vec::new();
        for (client, session) in &self.sessions.by_client {
            buf.clear();
            put_varint(&mut buf, client.0);
            put_varint(&mut buf, session.pruned_below.0);
            put_varint(&mut buf, session.last_used);
            put_varint(&mut buf, session.replies.len() as u64);
            for (seq, r) in &session.replies {
                put_varint(&mut buf, seq.0);
                reply.clear();
                put_reply(&mut reply, r);
                put_bytes(&mut buf, &reply);
            }
            out.write_all(&buf)?;
        }

        out.flush()?;
        let inner = out.get_mut();
        let crc = inner.crc.finish();
        inner.inner.write_all(&crc.to_le_bytes())?;
        inner.inner.flush()
    }

    /// Rebuilds a store from a snapshot, failing on a truncated, corrupt or
    /// foreign input rather than returning a store that differs from the
    /// one that was saved.
    pub fn restore_from(r: &mut impl Read) -> Result<Store, SnapshotError> {
        let mut input = StreamReader::new(CrcReader {
            inner: BufReader::with_capacity(64 * 1024, r),
            crc: Crc32c::new(),
        });
        let mut magic = [0u8; 8];
        input.fill("the magic", &mut magic)?;
        if magic != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let format = input.u8("the format")?;
        if !(SNAPSHOT_FORMAT_OLDEST..=SNAPSHOT_FORMAT).contains(&format) {
            return Err(SnapshotError::UnsupportedFormat(format));
        }
        let writes = input.varint("the write counter")?;
        let last_removal = input.varint("the last removal")?;
        let last_applied = match input.u8("the last-applied flag")? {
            0 => None,
            1 => Some(input.varint("the last applied index")?),
            t => return Err(SnapshotError::Corrupt(format!("bad last-applied flag {t}"))),
        };
        let max_sessions = input.count("the session limit")?;
        let max_replies = input.count("the reply limit")?;
        if max_sessions == 0 || max_replies == 0 {
            return Err(SnapshotError::Corrupt("zero session limit".into()));
        }
        let limits = SessionLimits {
            max_sessions,
            max_replies,
        };
        let cluster = if format >= 2 {
            Bytes::from(input.bytes("the cluster record", MAX_BLOB)?)
        } else {
            Bytes::new()
        };

        let entries = input.count("the entry count")?;
        let mut data = BTreeMap::new();
        let mut previous: Option<Slot> = None;
        for _ in 0..entries {
            let key = Bytes::from(input.bytes("a key", MAX_BLOB)?);
            let value = Bytes::from(input.bytes("a value", MAX_BLOB)?);
            let version = input.varint("a version")?;
            let slot = Slot::new(&key);
            // Entries are written in store order; anything else is damage
            // (and would hide duplicates).
            if previous.as_ref().is_some_and(|p| *p >= slot) {
                return Err(SnapshotError::Corrupt("entries out of order".into()));
            }
            previous = Some(slot.clone());
            data.insert(slot, Entry { value, version });
        }

        let mut sessions = Sessions::new(limits);
        let count = input.count("the session count")?;
        for _ in 0..count {
            let client = ClientId(input.varint("a client id")?);
            let pruned_below = Seq(input.varint("a pruned sequence number")?);
            let last_used = input.varint("a last use")?;
            let n = input.count("the reply count")?;
            let mut replies = BTreeMap::new();
            for _ in 0..n {
                let seq = Seq(input.varint("a sequence number")?);
                let reply = decode_reply(&input.bytes("a reply", MAX_BLOB)?)?;
                if replies.insert(seq, reply).is_some() {
                    return Err(SnapshotError::Corrupt("duplicate cached seq".into()));
                }
            }
            let session = Session {
                pruned_below,
                last_used,
                replies,
            };
            if sessions.by_client.insert(client, session).is_some() {
                return Err(SnapshotError::Corrupt("duplicate session".into()));
            }
            sessions.lru.insert((last_used, client));
        }
        if sessions.by_client.len() > max_sessions {
            return Err(SnapshotError::Corrupt(
                "more sessions than the limit".into(),
            ));
        }

        let mut input = input.into_inner();
        let computed = input.crc.finish();
        let mut trailer = [0u8; 4];
        input.inner.read_exact(&mut trailer)?;
        let stored = u32::from_le_bytes(trailer);
        if stored != computed {
            return Err(SnapshotError::ChecksumMismatch { stored, computed });
        }
        let mut extra = [0u8; 1];
        if input.inner.read(&mut extra)? != 0 {
            return Err(SnapshotError::TrailingData);
        }

        Ok(Store {
            data,
            writes,
            last_removal,
            last_applied,
            sessions,
            cluster,
        })
    }
}
