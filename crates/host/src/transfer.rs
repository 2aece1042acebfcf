//! Snapshot transfer between peers: the frames, and the two ends as state
//! machines with no I/O.
//!
//! A replica whose missing slots a peer has compacted away fetches that
//! peer's newest snapshot. The [`Host`](crate::Host) owns both ends: a
//! [`Receiver`] for the one fetch it runs, a [`Sender`] per peer it serves.
//! They decide which bytes go where; the host's shell moves them (reading
//! and appending files through [`crate::files`], sending frames on a link of
//! their own so that chunks never queue ahead of heartbeats). Frames may be
//! lost, duplicated or reordered.
//!
//! # The exchange
//!
//! ```text
//! receiver                                     sender
//!   Request { min_slot } ─────────────────────▶ its newest snapshot, if it
//!                        ◀───────────────────── Offer(id)   (or Decline)
//!   opens the partial file of `id` (resuming
//!   it if it holds some of the body), then
//!   Ack { next_offset, Resend } ──────────────▶ starts from next_offset
//!                        ◀───────────────────── Chunk, Chunk, ... (a window)
//!   Ack { Progress } for each ────────────────▶ slides the window
//!                        ◀───────────────────── the last Chunk
//!   checks the whole body, installs it,
//!   Ack { Installed } ────────────────────────▶ done
//! ```
//!
//! | receiver saw | ack status | sender does |
//! |---|---|---|
//! | the next chunk, or one it already has | `Progress` | slides the window forward |
//! | a chunk past a gap, a damaged chunk, or it just (re)opened | `Resend` | sends again from `next_offset`, even if that is lower than before |
//! | the last byte, and the snapshot checked out and is installed | `Installed` | is done |
//!
//! When every chunk in flight is lost, nothing comes back: the sender sends
//! again from the last acknowledged offset after a while
//! ([`Sender::resend`]).
//!
//! # Integrity
//!
//! Each chunk carries a crc32c over its snapshot's identity, its offset and
//! its data, so a damaged chunk is refused alone. The whole body is checked
//! against the snapshot's checksum before it is installed.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use codec::{Crc32c, DecodeError, Reader, put_varint};
use paxos::replica::Slot;

/// The frame format this code writes and reads.
pub const TRANSFER_FORMAT: u8 = 1;
/// Default largest chunk a sender cuts.
pub const DEFAULT_CHUNK_BYTES_MAX: usize = 1 << 20;
/// Default number of chunks a sender keeps unacknowledged.
pub const DEFAULT_WINDOW_CHUNKS: usize = 4;
/// Largest chunk any decoder or receiver accepts, whatever a sender is set to.
pub const CHUNK_BYTES_LIMIT: usize = 16 << 20;
const _: () = assert!(DEFAULT_CHUNK_BYTES_MAX <= CHUNK_BYTES_LIMIT);
/// Bytes a frame adds around a chunk's data, generously.
pub const CHUNK_FRAME_OVERHEAD_BYTES: usize = 96;

const TAG_REQUEST: u8 = 1;
const TAG_OFFER: u8 = 2;
const TAG_DECLINE: u8 = 3;
const TAG_CHUNK: u8 = 4;
const TAG_ACK: u8 = 5;

/// Which snapshot: its slot, body length and body checksum. Two snapshots
/// of one slot with different bodies are different snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotId {
    /// The last log slot the snapshot includes.
    pub slot: Slot,
    /// Length of the body.
    pub bytes: u64,
    /// crc32c of the body.
    pub crc: u32,
}

/// A piece of a snapshot body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub id: SnapshotId,
    /// Where `data` starts in the body.
    pub offset: u64,
    pub data: Bytes,
    /// crc32c of the identity, the offset and the data; see [`Chunk::new`].
    pub chunk_crc: u32,
}

impl Chunk {
    /// A chunk with its checksum computed.
    pub fn new(id: SnapshotId, offset: u64, data: Bytes) -> Chunk {
        let mut chunk = Chunk {
            id,
            offset,
            data,
            chunk_crc: 0,
        };
        chunk.chunk_crc = chunk.computed_crc();
        chunk
    }

    /// crc32c of slot, total length, total checksum and offset (little-endian,
    /// fixed width) followed by the data.
    fn computed_crc(&self) -> u32 {
        let mut crc = Crc32c::new();
        crc.update(&self.id.slot.0.to_le_bytes());
        crc.update(&self.id.bytes.to_le_bytes());
        crc.update(&self.id.crc.to_le_bytes());
        crc.update(&self.offset.to_le_bytes());
        crc.update(&self.data);
        crc.finish()
    }

    /// True if the checksum matches and the data lies within the snapshot.
    pub fn is_intact(&self) -> bool {
        self.data.len() <= CHUNK_BYTES_LIMIT
            && self
                .offset
                .checked_add(self.data.len() as u64)
                .is_some_and(|end| end <= self.id.bytes)
            && self.computed_crc() == self.chunk_crc
    }

    /// Offset just past the data.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.data.len() as u64)
    }
}

/// What the receiver asks of the sender; see the module notes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    /// Everything below `next_offset` arrived; carry on.
    Progress,
    /// Send again from `next_offset`.
    Resend,
    /// The whole snapshot arrived, checked out and is installed.
    Installed,
}

/// The receiver has every body byte below `next_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkAck {
    pub slot: Slot,
    pub next_offset: u64,
    pub status: AckStatus,
}

/// Why a peer declined to send a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decline {
    /// It has no snapshot at or above the slot asked for.
    NoSnapshot,
    /// It serves as many transfers as it may.
    Busy,
}

/// One frame of a transfer. Binary form: a format byte
/// ([`TRANSFER_FORMAT`]), a tag, then the fields (integers as varints,
/// checksums as 4 bytes little-endian, the data with its length first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotFrame {
    /// "Send me your newest snapshot, if it holds at least `min_slot`."
    Request {
        min_slot: Slot,
    },
    /// "It is this one."
    Offer(SnapshotId),
    Decline(Decline),
    Chunk(Chunk),
    Ack(ChunkAck),
}

fn put_id(out: &mut BytesMut, id: &SnapshotId) {
    put_varint(out, id.slot.0);
    put_varint(out, id.bytes);
    out.put_u32_le(id.crc);
}

fn id(r: &mut Reader<'_>) -> Result<SnapshotId, DecodeError> {
    Ok(SnapshotId {
        slot: Slot(r.varint("a slot")?),
        bytes: r.varint("a length")?,
        crc: r.u32_le("a checksum")?,
    })
}

impl SnapshotFrame {
    pub fn encode(&self) -> Bytes {
        let data = match self {
            SnapshotFrame::Chunk(c) => c.data.len(),
            _ => 0,
        };
        let mut out = BytesMut::with_capacity(CHUNK_FRAME_OVERHEAD_BYTES + data);
        out.put_u8(TRANSFER_FORMAT);
        match self {
            SnapshotFrame::Request { min_slot } => {
                out.put_u8(TAG_REQUEST);
                put_varint(&mut out, min_slot.0);
            }
            SnapshotFrame::Offer(offered) => {
                out.put_u8(TAG_OFFER);
                put_id(&mut out, offered);
            }
            SnapshotFrame::Decline(reason) => {
                out.put_u8(TAG_DECLINE);
                out.put_u8(match reason {
                    Decline::NoSnapshot => 0,
                    Decline::Busy => 1,
                });
            }
            SnapshotFrame::Chunk(c) => {
                out.put_u8(TAG_CHUNK);
                put_id(&mut out, &c.id);
                put_varint(&mut out, c.offset);
                codec::put_bytes(&mut out, &c.data);
                out.put_u32_le(c.chunk_crc);
            }
            SnapshotFrame::Ack(a) => {
                out.put_u8(TAG_ACK);
                put_varint(&mut out, a.slot.0);
                put_varint(&mut out, a.next_offset);
                out.put_u8(match a.status {
                    AckStatus::Progress => 0,
                    AckStatus::Resend => 1,
                    AckStatus::Installed => 2,
                });
            }
        }
        out.freeze()
    }

    /// Decodes one frame. Lengths are checked before anything is taken,
    /// chunk data is a slice of `input` (not a copy), and nothing panics.
    /// The chunk checksum is not checked here (see [`Chunk::is_intact`]).
    pub fn decode(input: Bytes) -> Result<SnapshotFrame, DecodeError> {
        let mut r = Reader::with_format(&input, "snapshot frame", TRANSFER_FORMAT)?;
        let frame = match r.u8("a snapshot frame tag")? {
            TAG_REQUEST => SnapshotFrame::Request {
                min_slot: Slot(r.varint("a slot")?),
            },
            TAG_OFFER => SnapshotFrame::Offer(id(&mut r)?),
            TAG_DECLINE => SnapshotFrame::Decline(match r.u8("a reason")? {
                0 => Decline::NoSnapshot,
                1 => Decline::Busy,
                tag => {
                    return Err(DecodeError::UnknownTag {
                        what: "decline reason",
                        tag,
                    });
                }
            }),
            TAG_CHUNK => {
                let id = id(&mut r)?;
                let offset = r.varint("an offset")?;
                // Both limits hold before anything is taken.
                let len = r.varint_max("a chunk length", CHUNK_BYTES_LIMIT as u64)?;
                if offset.checked_add(len).is_none_or(|end| end > id.bytes) {
                    return Err(DecodeError::Invalid {
                        what: "a chunk",
                        reason: "it runs past the end of its snapshot",
                    });
                }
                // Below CHUNK_BYTES_LIMIT, so it fits a usize.
                let data = input.slice_ref(r.take("a chunk", len as usize)?);
                let chunk_crc = r.u32_le("a chunk checksum")?;
                SnapshotFrame::Chunk(Chunk {
                    id,
                    offset,
                    data,
                    chunk_crc,
                })
            }
            TAG_ACK => SnapshotFrame::Ack(ChunkAck {
                slot: Slot(r.varint("a slot")?),
                next_offset: r.varint("an offset")?,
                status: match r.u8("an ack status")? {
                    0 => AckStatus::Progress,
                    1 => AckStatus::Resend,
                    2 => AckStatus::Installed,
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "ack status",
                            tag,
                        });
                    }
                },
            }),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "snapshot frame",
                    tag,
                });
            }
        };
        r.finish()?;
        Ok(frame)
    }
}

/// An acknowledgement a sender cannot take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    #[error("an acknowledgement for slot {got}, but this transfer is of slot {expected}")]
    WrongSnapshot { expected: Slot, got: Slot },
    #[error("acknowledgement {ack:?} does not fit a snapshot of {total_bytes} bytes")]
    BadAck { ack: ChunkAck, total_bytes: u64 },
}

// ---------------------------------------------------------------------------
// Sender
// ---------------------------------------------------------------------------

/// The part of the body to send next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSpec {
    pub offset: u64,
    pub len: usize,
}

/// The sending end of one transfer: which bytes go next.
#[derive(Clone, Debug)]
pub struct Sender {
    id: SnapshotId,
    chunk_bytes_max: usize,
    window_chunks: usize,
    /// The receiver has said it has every byte below this.
    acked: u64,
    /// Offset of the next chunk to send.
    ///
    /// Invariant: `acked <= next <= id.bytes`.
    next: u64,
    /// End offsets of the chunks sent since the last resend and not yet
    /// acknowledged, increasing.
    ///
    /// Invariant: at most `window_chunks` long.
    in_flight: VecDeque<u64>,
    /// Where the last resend started: further requests to resend from the
    /// same offset, while that resend is under way, are the echo of one gap.
    resent_from: Option<u64>,
    installed: bool,
    bytes_sent: u64,
}

impl Sender {
    /// Starts sending `id` in chunks of at most `chunk_bytes_max` (clamped
    /// to `1..=CHUNK_BYTES_LIMIT`), with at most `window_chunks` (at least
    /// 1) unacknowledged.
    pub fn new(id: SnapshotId, chunk_bytes_max: usize, window_chunks: usize) -> Sender {
        Sender {
            id,
            chunk_bytes_max: chunk_bytes_max.clamp(1, CHUNK_BYTES_LIMIT),
            window_chunks: window_chunks.max(1),
            acked: 0,
            next: 0,
            in_flight: VecDeque::new(),
            resent_from: None,
            installed: false,
            bytes_sent: 0,
        }
    }

    pub fn id(&self) -> &SnapshotId {
        &self.id
    }

    /// True once the receiver reported the snapshot installed.
    pub fn is_complete(&self) -> bool {
        self.installed
    }

    /// Bytes the receiver has acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Chunks sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Data bytes in every chunk produced so far, resends included.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// The next chunk to send, or `None` while the window is full or
    /// everything was sent (or the transfer is complete). A snapshot with an
    /// empty body is sent as one empty chunk.
    pub fn next_chunk(&mut self) -> Option<ChunkSpec> {
        let total = self.id.bytes;
        let more = self.next < total || (total == 0 && self.in_flight.is_empty());
        if self.installed || !more || self.in_flight.len() >= self.window_chunks {
            return None;
        }
        // At most chunk_bytes_max, a usize.
        let len = (total - self.next).min(self.chunk_bytes_max as u64) as usize;
        let spec = ChunkSpec {
            offset: self.next,
            len,
        };
        self.next += len as u64;
        self.in_flight.push_back(self.next);
        self.bytes_sent += len as u64;
        debug_assert!(self.in_flight.len() <= self.window_chunks);
        Some(spec)
    }

    /// Takes in the receiver's answer.
    pub fn on_ack(&mut self, ack: &ChunkAck) -> Result<(), AckError> {
        if ack.slot != self.id.slot {
            return Err(AckError::WrongSnapshot {
                expected: self.id.slot,
                got: ack.slot,
            });
        }
        let total = self.id.bytes;
        let installed = ack.status == AckStatus::Installed;
        if ack.next_offset > total || (installed && ack.next_offset != total) {
            return Err(AckError::BadAck {
                ack: *ack,
                total_bytes: total,
            });
        }
        if self.installed {
            return Ok(());
        }
        match ack.status {
            AckStatus::Installed => {
                self.installed = true;
                self.acked = total;
                self.next = total;
                self.in_flight.clear();
            }
            AckStatus::Progress => {
                // A lower or equal offset is an old or duplicated answer.
                if ack.next_offset > self.acked {
                    self.acked = ack.next_offset;
                    self.resent_from = None;
                    while self.in_flight.front().is_some_and(|&end| end <= self.acked) {
                        self.in_flight.pop_front();
                    }
                    if self.next < self.acked {
                        // The receiver had more than was sent: it resumed.
                        self.next = self.acked;
                        self.in_flight.clear();
                    }
                }
            }
            AckStatus::Resend => {
                let echo = self.resent_from == Some(ack.next_offset) && self.next > ack.next_offset;
                if !echo {
                    self.rewind(ack.next_offset);
                }
            }
        }
        debug_assert!(self.acked <= self.next && self.next <= total);
        Ok(())
    }

    /// Sends again from the last acknowledged offset; call it when nothing
    /// came back for a while (every chunk in flight may be lost).
    pub fn resend(&mut self) {
        if !self.installed {
            self.rewind(self.acked);
        }
    }

    fn rewind(&mut self, offset: u64) {
        self.acked = offset;
        self.next = offset;
        self.in_flight.clear();
        self.resent_from = Some(offset);
    }
}

// ---------------------------------------------------------------------------
// Receiver
// ---------------------------------------------------------------------------

/// What became of one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Append `data` at the body's end (the part of the chunk not yet here).
    Append(Bytes),
    /// Everything in it was already here.
    Duplicate,
    /// It starts past what is here; a chunk before it is missing.
    Gap,
    /// Its checksum does not match or it lies outside the snapshot.
    Rejected,
    /// It belongs to another snapshot.
    Foreign,
}

/// The receiving end of one transfer: how much of the body is here.
#[derive(Clone, Debug)]
pub struct Receiver {
    id: SnapshotId,
    /// Every body byte below this is in the partial file (or on its way
    /// there).
    ///
    /// Invariant: `next_offset <= id.bytes`.
    next_offset: u64,
    resumed_from: u64,
    installed: bool,
}

impl Receiver {
    /// The receiving end of `id`, whose partial file already holds the body
    /// bytes below `have` (0 for a fresh start).
    pub fn new(id: SnapshotId, have: u64) -> Receiver {
        let have = have.min(id.bytes);
        Receiver {
            id,
            next_offset: have,
            resumed_from: have,
            installed: false,
        }
    }

    pub fn id(&self) -> &SnapshotId {
        &self.id
    }

    /// Every body byte below this has arrived.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Bytes the partial file held when the transfer started.
    pub fn resumed_from(&self) -> u64 {
        self.resumed_from
    }

    /// Every byte of the body has arrived: it may be checked and installed.
    pub fn is_whole(&self) -> bool {
        self.next_offset == self.id.bytes
    }

    /// The body checked out and is installed.
    pub fn installed(&mut self) {
        self.installed = true;
    }

    /// The answer when there is nothing newer to say: where to (re)start,
    /// or that the snapshot is installed.
    pub fn ack(&self) -> ChunkAck {
        self.ack_with(if self.installed {
            AckStatus::Installed
        } else {
            AckStatus::Resend
        })
    }

    fn ack_with(&self, status: AckStatus) -> ChunkAck {
        ChunkAck {
            slot: self.id.slot,
            next_offset: self.next_offset,
            status,
        }
    }

    /// Takes one chunk: what to do with it, and the answer for the sender.
    /// Damaged chunks, duplicates and chunks past a gap are answered, not
    /// kept; new data moves the end forward.
    pub fn on_chunk(&mut self, chunk: &Chunk) -> (ChunkOutcome, ChunkAck) {
        if chunk.id != self.id {
            return (ChunkOutcome::Foreign, self.ack());
        }
        if !chunk.is_intact() {
            return (ChunkOutcome::Rejected, self.ack_with(AckStatus::Resend));
        }
        if self.installed {
            return (ChunkOutcome::Duplicate, self.ack());
        }
        if chunk.offset > self.next_offset {
            return (ChunkOutcome::Gap, self.ack_with(AckStatus::Resend));
        }
        if chunk.end() <= self.next_offset {
            return (ChunkOutcome::Duplicate, self.ack_with(AckStatus::Progress));
        }
        // Only the part not yet here; chunks may overlap after a resume.
        // Below the chunk's length, so it fits a usize.
        let skip = (self.next_offset - chunk.offset) as usize;
        let data = chunk.data.slice(skip..);
        self.next_offset = chunk.end();
        debug_assert!(self.next_offset <= self.id.bytes);
        (
            ChunkOutcome::Append(data),
            self.ack_with(AckStatus::Progress),
        )
    }
}
