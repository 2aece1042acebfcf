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

#[cfg(test)]
mod tests {
    use paxos::rng::Rng;

    use super::*;

    fn body(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.next_u64() as u8).collect()
    }

    fn id_of(slot: u64, body: &[u8]) -> SnapshotId {
        SnapshotId {
            slot: Slot(slot),
            bytes: body.len() as u64,
            crc: codec::crc32c(body),
        }
    }

    /// The chunk a sender's spec names, cut from `body`.
    fn cut(id: SnapshotId, body: &[u8], spec: ChunkSpec) -> Chunk {
        let start = spec.offset as usize;
        Chunk::new(
            id,
            spec.offset,
            Bytes::copy_from_slice(&body[start..start + spec.len]),
        )
    }

    /// A link that loses, duplicates and reorders frames, from a seed; every
    /// frame crosses it encoded.
    struct Link {
        rng: Rng,
        queue: Vec<Bytes>,
        loss: f64,
        duplication: f64,
    }

    impl Link {
        fn new(rng: Rng, loss: f64, duplication: f64) -> Link {
            Link {
                rng,
                queue: Vec::new(),
                loss,
                duplication,
            }
        }

        fn send(&mut self, frame: &SnapshotFrame) {
            let bytes = frame.encode();
            if self.rng.chance(self.loss) {
                return;
            }
            if self.rng.chance(self.duplication) {
                self.queue.push(bytes.clone());
            }
            self.queue.push(bytes);
        }

        /// Any queued frame, not necessarily the oldest.
        fn receive(&mut self) -> Option<SnapshotFrame> {
            if self.queue.is_empty() {
                return None;
            }
            let at = self.rng.below(self.queue.len() as u64) as usize;
            let bytes = self.queue.swap_remove(at);
            Some(SnapshotFrame::decode(bytes).expect("the link does not damage bytes"))
        }
    }

    /// Runs a transfer to its end over lossy links; the receiver's file is a
    /// vector it appends to. Returns what it received.
    fn transfer(seed: u64, body: &[u8], chunk_bytes_max: usize, window: usize) -> Vec<u8> {
        let id = id_of(9, body);
        let mut rng = Rng::new(seed);
        let mut sender = Sender::new(id, chunk_bytes_max, window);
        let mut receiver = Receiver::new(id, 0);
        let mut file = Vec::new();
        let mut to_receiver = Link::new(rng.fork(), 0.15, 0.1);
        let mut to_sender = Link::new(rng.fork(), 0.15, 0.1);
        to_sender.send(&SnapshotFrame::Ack(receiver.ack()));
        for _ in 0..1_000_000 {
            if sender.is_complete() {
                return file;
            }
            while let Some(spec) = sender.next_chunk() {
                to_receiver.send(&SnapshotFrame::Chunk(cut(id, body, spec)));
            }
            if to_receiver.queue.is_empty() && to_sender.queue.is_empty() {
                // Everything in flight was lost: the sender's timeout.
                sender.resend();
                continue;
            }
            if rng.chance(0.5) {
                if let Some(SnapshotFrame::Chunk(chunk)) = to_receiver.receive() {
                    let (outcome, ack) = receiver.on_chunk(&chunk);
                    if let ChunkOutcome::Append(data) = outcome {
                        file.extend_from_slice(&data);
                    }
                    assert_eq!(file.len() as u64, receiver.next_offset());
                    if receiver.is_whole() {
                        assert_eq!(codec::crc32c(&file), id.crc, "checked before installing");
                        receiver.installed();
                        to_sender.send(&SnapshotFrame::Ack(receiver.ack()));
                    } else {
                        to_sender.send(&SnapshotFrame::Ack(ack));
                    }
                }
            } else if let Some(SnapshotFrame::Ack(ack)) = to_sender.receive() {
                sender.on_ack(&ack).expect("a good ack");
            }
        }
        panic!("the transfer did not end");
    }

    #[test]
    fn a_body_crosses_a_lossy_reordering_link_intact() {
        for seed in 0..20 {
            let data = body(seed, 20_000 + seed as usize * 997);
            let got = transfer(
                seed,
                &data,
                1_000 + seed as usize * 37,
                1 + seed as usize % 4,
            );
            assert_eq!(got, data, "seed {seed}");
        }
        assert!(transfer(1, b"", 100, 2).is_empty(), "an empty body too");
    }

    #[test]
    fn a_receiver_that_resumes_is_sent_only_what_it_lacks() {
        let data = body(7, 100_000);
        let id = id_of(3, &data);
        // The partial file holds 40,000 bytes from before.
        let mut receiver = Receiver::new(id, 40_000);
        assert_eq!(receiver.resumed_from(), 40_000);
        let mut sender = Sender::new(id, 8_000, 4);
        let first = receiver.ack();
        assert_eq!(
            (first.next_offset, first.status),
            (40_000, AckStatus::Resend)
        );
        sender.on_ack(&first).expect("ack");
        let mut file = data[..40_000].to_vec();
        while !receiver.is_whole() {
            let spec = sender.next_chunk().expect("the window has room");
            let (outcome, ack) = receiver.on_chunk(&cut(id, &data, spec));
            if let ChunkOutcome::Append(bytes) = outcome {
                file.extend_from_slice(&bytes);
            }
            sender.on_ack(&ack).expect("ack");
        }
        assert_eq!(file, data);
        assert_eq!(sender.bytes_sent(), 60_000, "nothing sent twice");
    }

    #[test]
    fn a_new_sender_learns_where_the_receiver_stands_from_its_duplicates() {
        let data = body(8, 50_000);
        let id = id_of(4, &data);
        let mut receiver = Receiver::new(id, 30_000);
        // A sender that missed the first ack starts at zero; the receiver
        // answers its first chunk with how far it is.
        let mut sender = Sender::new(id, 5_000, 2);
        let spec = sender.next_chunk().expect("a chunk");
        let (outcome, ack) = receiver.on_chunk(&cut(id, &data, spec));
        assert_eq!(outcome, ChunkOutcome::Duplicate);
        sender.on_ack(&ack).expect("ack");
        assert_eq!(sender.acked(), 30_000);
        assert_eq!(sender.next_chunk().map(|s| s.offset), Some(30_000));
    }

    #[test]
    fn a_damaged_chunk_is_rejected_and_sent_again() {
        let data = body(9, 60_000);
        let id = id_of(5, &data);
        let mut sender = Sender::new(id, 10_000, 4);
        let mut receiver = Receiver::new(id, 0);
        let first = cut(id, &data, sender.next_chunk().expect("chunk"));
        let second = cut(id, &data, sender.next_chunk().expect("chunk"));
        let third = cut(id, &data, sender.next_chunk().expect("chunk"));
        let (outcome, ack) = receiver.on_chunk(&first);
        assert!(matches!(outcome, ChunkOutcome::Append(_)));
        sender.on_ack(&ack).expect("ack");

        let mut bytes = second.data.to_vec();
        bytes[1234] ^= 0x40;
        let damaged = Chunk {
            data: Bytes::from(bytes),
            ..second.clone()
        };
        let (outcome, ack) = receiver.on_chunk(&damaged);
        assert_eq!(outcome, ChunkOutcome::Rejected);
        assert_eq!(
            (ack.next_offset, ack.status),
            (first.end(), AckStatus::Resend)
        );
        assert_eq!(receiver.next_offset(), first.end(), "nothing was kept");
        // The chunk after it is past a gap now.
        let (gap, gap_ack) = receiver.on_chunk(&third);
        assert_eq!(gap, ChunkOutcome::Gap);

        sender.on_ack(&ack).expect("resend request");
        sender.on_ack(&gap_ack).expect("its echo changes nothing");
        let again = cut(id, &data, sender.next_chunk().expect("chunk"));
        assert_eq!(again, second, "the damaged chunk is sent again");
        let (outcome, _) = receiver.on_chunk(&again);
        assert!(matches!(outcome, ChunkOutcome::Append(_)));
    }

    #[test]
    fn chunks_of_another_snapshot_are_foreign() {
        let data = body(10, 1_000);
        let id = id_of(6, &data);
        let mut receiver = Receiver::new(id, 0);
        let other = SnapshotId {
            crc: id.crc ^ 7,
            ..id
        };
        let chunk = Chunk::new(other, 0, Bytes::copy_from_slice(&data[..100]));
        assert_eq!(receiver.on_chunk(&chunk).0, ChunkOutcome::Foreign);
        assert_eq!(receiver.next_offset(), 0);
    }

    #[test]
    fn the_window_bounds_chunks_in_flight_and_acks_are_checked() {
        let id = SnapshotId {
            slot: Slot(3),
            bytes: 1_000_000,
            crc: 0,
        };
        let mut sender = Sender::new(id, 30_000, 3);
        let specs: Vec<ChunkSpec> = std::iter::from_fn(|| sender.next_chunk()).collect();
        assert_eq!(specs.len(), 3);
        assert!(specs.iter().all(|s| s.len == 30_000));
        assert_eq!(specs[2].offset, 60_000);
        let progress = |next_offset| ChunkAck {
            slot: Slot(3),
            next_offset,
            status: AckStatus::Progress,
        };
        sender.on_ack(&progress(30_000)).expect("ack");
        assert_eq!(sender.in_flight(), 2);
        assert_eq!(sender.next_chunk().map(|s| s.offset), Some(90_000));
        assert!(sender.next_chunk().is_none());
        assert!(matches!(
            sender.on_ack(&progress(id.bytes + 1)),
            Err(AckError::BadAck { .. })
        ));
        let early_install = ChunkAck {
            status: AckStatus::Installed,
            ..progress(5)
        };
        assert!(matches!(
            sender.on_ack(&early_install),
            Err(AckError::BadAck { .. })
        ));
        let other = ChunkAck {
            slot: Slot(4),
            ..progress(0)
        };
        assert!(matches!(
            sender.on_ack(&other),
            Err(AckError::WrongSnapshot { .. })
        ));
    }

    fn frames() -> Vec<SnapshotFrame> {
        let id = SnapshotId {
            slot: Slot(7),
            bytes: 10,
            crc: 42,
        };
        vec![
            SnapshotFrame::Request { min_slot: Slot(0) },
            SnapshotFrame::Request {
                min_slot: Slot(u64::MAX),
            },
            SnapshotFrame::Offer(SnapshotId {
                slot: Slot(300),
                bytes: 1 << 40,
                crc: 0xdead_beef,
            }),
            SnapshotFrame::Decline(Decline::NoSnapshot),
            SnapshotFrame::Decline(Decline::Busy),
            SnapshotFrame::Ack(ChunkAck {
                slot: Slot(7),
                next_offset: 4096,
                status: AckStatus::Progress,
            }),
            SnapshotFrame::Ack(ChunkAck {
                slot: Slot(7),
                next_offset: 10,
                status: AckStatus::Installed,
            }),
            SnapshotFrame::Chunk(Chunk::new(id, 2, Bytes::from_static(b"abcd"))),
        ]
    }

    #[test]
    fn frames_round_trip_and_every_cut_or_extension_is_an_error() {
        for frame in frames() {
            let bytes = frame.encode();
            assert_eq!(SnapshotFrame::decode(bytes.clone()), Ok(frame.clone()));
            for len in 0..bytes.len() {
                assert!(
                    SnapshotFrame::decode(bytes.slice(..len)).is_err(),
                    "{frame:?} cut to {len} bytes"
                );
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert!(SnapshotFrame::decode(Bytes::from(longer)).is_err());
        }
        let mut other = frames()[0].encode().to_vec();
        other[0] = TRANSFER_FORMAT + 1;
        assert_eq!(
            SnapshotFrame::decode(Bytes::from(other)),
            Err(DecodeError::UnknownFormat {
                what: "snapshot frame",
                found: TRANSFER_FORMAT + 1,
                expected: TRANSFER_FORMAT
            })
        );
    }

    #[test]
    fn forged_chunks_are_refused_before_anything_is_taken() {
        let id = SnapshotId {
            slot: Slot(1),
            bytes: 1 << 40,
            crc: 0,
        };
        // A chunk that claims 32 MiB, above the limit, with no data.
        let mut huge = BytesMut::new();
        huge.put_u8(TRANSFER_FORMAT);
        huge.put_u8(TAG_CHUNK);
        put_id(&mut huge, &id);
        put_varint(&mut huge, 0);
        put_varint(&mut huge, 32 << 20);
        assert!(matches!(
            SnapshotFrame::decode(huge.freeze()),
            Err(DecodeError::TooLarge { .. })
        ));
        // A chunk that runs past the end of its snapshot.
        let small = SnapshotId { bytes: 4, ..id };
        let beyond = SnapshotFrame::Chunk(Chunk::new(small, 2, Bytes::from_static(b"abc")));
        assert!(matches!(
            SnapshotFrame::decode(beyond.encode()),
            Err(DecodeError::Invalid {
                what: "a chunk",
                ..
            })
        ));
        // Garbage never panics.
        let mut rng = Rng::new(3);
        for _ in 0..20_000 {
            let len = rng.below(40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if !bytes.is_empty() {
                bytes[0] = TRANSFER_FORMAT;
            }
            let _ = SnapshotFrame::decode(Bytes::from(bytes));
        }
    }
}
