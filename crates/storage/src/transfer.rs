//! Streamed, resumable transfer of a snapshot to a lagging peer.
//!
//! No networking here: the two messages, their binary form, and the two
//! ends as state machines over files. The caller moves the encoded messages
//! however it likes; they may be lost, duplicated or reordered.
//!
//! # The exchange
//!
//! The [`Sender`] cuts the snapshot body into [`Chunk`]s of at most
//! `chunk_bytes_max`, read from the file at their offset when they are sent,
//! and keeps at most `window_chunks` of them unacknowledged. The [`Receiver`]
//! appends chunks in order to a partial file and answers every chunk with a
//! [`ChunkAck`] saying how much it has (`next_offset`) and what it wants:
//!
//! | receiver saw | ack status | sender does |
//! |---|---|---|
//! | the next chunk, or one it already has | `Progress` | slides the window forward |
//! | a chunk past a gap, a damaged chunk, or it just (re)opened | `Resend` | sends again from `next_offset`, even if that is lower than before |
//! | the last byte, and the snapshot checked out and is installed | `Installed` | is done |
//!
//! When every chunk in flight is lost, nothing comes back: the caller calls
//! [`Sender::resend`] after a timeout.
//!
//! # Resuming
//!
//! The partial file is named after the snapshot it belongs to (slot, length
//! and checksum) and lives until the snapshot is installed, so a receiver
//! reopened after a restart carries on from the bytes it has. Those bytes
//! are not synced as they arrive: after a power failure the tail may be
//! damaged, which the final checksum catches; the transfer then starts over.
//! Opening a receiver for another snapshot deletes the partials of others.
//!
//! # Integrity
//!
//! Each chunk carries a crc32c over its identity (slot, total length, total
//! checksum, offset) and its data, so a damaged chunk is refused alone. The
//! whole body is checked against the total checksum when it is complete;
//! only then is the file installed, atomically, through the
//! [`SnapshotStore`].

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};
use codec::{Crc32c, DecodeError, Reader, put_varint};

use super::snapshot::{
    HEADER_BYTES, Header, RemovedFile, SnapshotError, SnapshotMeta, SnapshotStore,
    create_dir_synced, file_bytes, open_checked,
};

/// The message format this code writes and reads.
pub const TRANSFER_FORMAT: u8 = 1;
/// Default largest chunk a sender cuts.
pub const DEFAULT_CHUNK_BYTES_MAX: usize = 1 << 20;
/// Default number of chunks a sender keeps unacknowledged.
pub const DEFAULT_WINDOW_CHUNKS: usize = 4;
/// Largest chunk any decoder or receiver accepts, whatever a sender is set to.
pub const CHUNK_BYTES_LIMIT: usize = 16 << 20;
const _: () = assert!(DEFAULT_CHUNK_BYTES_MAX <= CHUNK_BYTES_LIMIT);

const TAG_CHUNK: u8 = 1;
const TAG_ACK: u8 = 2;
const PARTIAL_PREFIX: &str = "incoming-";
const PARTIAL_SUFFIX: &str = ".part";

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("snapshot transfer: cannot {op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] SnapshotError),
    #[error("message about the snapshot of slot {got}, but this transfer is of slot {expected}")]
    WrongSnapshot { expected: u64, got: u64 },
    #[error("acknowledgement {ack:?} does not fit a snapshot of {total_bytes} bytes")]
    BadAck { ack: ChunkAck, total_bytes: u64 },
    #[error(
        "the received snapshot of slot {slot} does not match its checksum ({reason}); \
         the partial file was deleted, open a new receiver to start over"
    )]
    Mismatch { slot: u64, reason: String },
    #[error("the receiver of the snapshot of slot {slot} failed earlier; open a new one")]
    Failed { slot: u64 },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TransferError + 'a {
    move |source| TransferError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A piece of a snapshot body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Identity of the snapshot: its slot, body length and body checksum.
    pub slot: u64,
    pub total_bytes: u64,
    pub total_crc: u32,
    /// Where `data` starts in the body.
    pub offset: u64,
    pub data: Bytes,
    /// crc32c of the identity, the offset and the data; see [`Chunk::new`].
    pub chunk_crc: u32,
}

impl Chunk {
    /// A chunk with its checksum computed.
    pub fn new(slot: u64, total_bytes: u64, total_crc: u32, offset: u64, data: Bytes) -> Chunk {
        let mut chunk = Chunk {
            slot,
            total_bytes,
            total_crc,
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
        crc.update(&self.slot.to_le_bytes());
        crc.update(&self.total_bytes.to_le_bytes());
        crc.update(&self.total_crc.to_le_bytes());
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
                .is_some_and(|end| end <= self.total_bytes)
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
    pub slot: u64,
    pub next_offset: u64,
    pub status: AckStatus,
}

/// A message of the transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferMessage {
    Chunk(Chunk),
    Ack(ChunkAck),
}

impl TransferMessage {
    /// The binary form: a format byte, a tag, then the fields (integers as
    /// LEB128 varints, checksums as 4 bytes little-endian, data with its
    /// length first).
    pub fn encode(&self) -> Bytes {
        match self {
            TransferMessage::Chunk(c) => {
                let mut out = BytesMut::with_capacity(48 + c.data.len());
                out.put_u8(TRANSFER_FORMAT);
                out.put_u8(TAG_CHUNK);
                put_varint(&mut out, c.slot);
                put_varint(&mut out, c.total_bytes);
                out.put_u32_le(c.total_crc);
                put_varint(&mut out, c.offset);
                put_varint(&mut out, c.data.len() as u64);
                out.put_slice(&c.data);
                out.put_u32_le(c.chunk_crc);
                out.freeze()
            }
            TransferMessage::Ack(a) => {
                let mut out = BytesMut::with_capacity(24);
                out.put_u8(TRANSFER_FORMAT);
                out.put_u8(TAG_ACK);
                put_varint(&mut out, a.slot);
                put_varint(&mut out, a.next_offset);
                out.put_u8(match a.status {
                    AckStatus::Progress => 0,
                    AckStatus::Resend => 1,
                    AckStatus::Installed => 2,
                });
                out.freeze()
            }
        }
    }

    /// Decodes one message. Lengths are checked against the input before
    /// anything is sliced, data is not copied, and nothing panics. The
    /// chunk checksum is not checked here (see [`Chunk::is_intact`]).
    pub fn decode(input: Bytes) -> Result<TransferMessage, DecodeError> {
        let mut r = Reader::with_format(&input, "transfer message", TRANSFER_FORMAT)?;
        let message = match r.u8("the tag")? {
            TAG_CHUNK => {
                let slot = r.varint("a slot")?;
                let total_bytes = r.varint("a total length")?;
                let total_crc = r.u32_le("a total checksum")?;
                let offset = r.varint("an offset")?;
                // Both limits hold before anything is taken.
                let len = r.varint_max("a chunk length", CHUNK_BYTES_LIMIT as u64)?;
                if offset.checked_add(len).is_none_or(|end| end > total_bytes) {
                    return Err(DecodeError::Invalid {
                        what: "a chunk",
                        reason: "it runs past the end of its snapshot",
                    });
                }
                // Below CHUNK_BYTES_LIMIT, so it fits a usize.
                let data = input.slice_ref(r.take("a chunk", len as usize)?);
                let chunk_crc = r.u32_le("a chunk checksum")?;
                TransferMessage::Chunk(Chunk {
                    slot,
                    total_bytes,
                    total_crc,
                    offset,
                    data,
                    chunk_crc,
                })
            }
            TAG_ACK => {
                let slot = r.varint("a slot")?;
                let next_offset = r.varint("an offset")?;
                let status = match r.u8("a status")? {
                    0 => AckStatus::Progress,
                    1 => AckStatus::Resend,
                    2 => AckStatus::Installed,
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "ack status",
                            tag,
                        });
                    }
                };
                TransferMessage::Ack(ChunkAck {
                    slot,
                    next_offset,
                    status,
                })
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "message",
                    tag,
                });
            }
        };
        r.finish()?;
        Ok(message)
    }
}

// ---------------------------------------------------------------------------
// Sender
// ---------------------------------------------------------------------------

/// Tuning of a [`Sender`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderOptions {
    /// Largest chunk; clamped to `1..=CHUNK_BYTES_LIMIT`.
    pub chunk_bytes_max: usize,
    /// Chunks sent and not yet acknowledged; at least 1.
    pub window_chunks: usize,
}

impl Default for SenderOptions {
    fn default() -> Self {
        SenderOptions {
            chunk_bytes_max: DEFAULT_CHUNK_BYTES_MAX,
            window_chunks: DEFAULT_WINDOW_CHUNKS,
        }
    }
}

/// The sending end of one snapshot transfer. It keeps the snapshot file
/// open, so the store deleting it meanwhile (retention) does not disturb
/// the transfer on systems where an open file outlives its name.
#[derive(Debug)]
pub struct Sender {
    meta: SnapshotMeta,
    file: File,
    chunk_bytes_max: usize,
    window_chunks: usize,
    /// The receiver has said it has every byte below this.
    acked: u64,
    /// Offset of the next chunk to send.
    ///
    /// Invariant: `acked <= next <= meta.bytes`.
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
    /// Starts sending `meta`, checking that the file still matches it.
    pub fn new(meta: SnapshotMeta, options: SenderOptions) -> Result<Sender, TransferError> {
        let (file, header) = open_checked(&meta.path)?;
        if header.slot != meta.slot
            || header.body_bytes != meta.bytes
            || header.body_crc != meta.crc
        {
            return Err(SnapshotError::Corrupt {
                path: meta.path.clone(),
                reason: format!("the header changed since it was listed ({header:?})"),
            }
            .into());
        }
        Ok(Sender {
            meta,
            file,
            chunk_bytes_max: options.chunk_bytes_max.clamp(1, CHUNK_BYTES_LIMIT),
            window_chunks: options.window_chunks.max(1),
            acked: 0,
            next: 0,
            in_flight: VecDeque::new(),
            resent_from: None,
            installed: false,
            bytes_sent: 0,
        })
    }

    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
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
    /// everything was sent (or the transfer is complete). Reads only this
    /// chunk from the file.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>, TransferError> {
        let total = self.meta.bytes;
        let more = self.next < total || (total == 0 && self.in_flight.is_empty());
        if self.installed || !more || self.in_flight.len() >= self.window_chunks {
            return Ok(None);
        }
        let len = (total - self.next).min(self.chunk_bytes_max as u64) as usize;
        let mut data = vec![0u8; len];
        let path = &self.meta.path;
        self.file
            .seek(SeekFrom::Start(HEADER_BYTES as u64 + self.next))
            .and_then(|_| self.file.read_exact(&mut data))
            .map_err(io_err("read", path))?;
        let chunk = Chunk::new(
            self.meta.slot,
            total,
            self.meta.crc,
            self.next,
            Bytes::from(data),
        );
        self.next += len as u64;
        self.in_flight.push_back(self.next);
        self.bytes_sent += len as u64;
        debug_assert!(self.in_flight.len() <= self.window_chunks);
        Ok(Some(chunk))
    }

    /// Takes in the receiver's answer.
    pub fn on_ack(&mut self, ack: &ChunkAck) -> Result<(), TransferError> {
        if ack.slot != self.meta.slot {
            return Err(TransferError::WrongSnapshot {
                expected: self.meta.slot,
                got: ack.slot,
            });
        }
        let total = self.meta.bytes;
        let installed = ack.status == AckStatus::Installed;
        if ack.next_offset > total || (installed && ack.next_offset != total) {
            return Err(TransferError::BadAck {
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
    /// New data was appended.
    Appended,
    /// Everything in it was already here.
    Duplicate,
    /// It starts past what is here; a chunk before it is missing.
    Gap,
    /// Its checksum does not match or it lies outside the snapshot.
    Rejected,
    /// It completed the snapshot, which checked out and is installed.
    Installed(SnapshotMeta),
}

/// The answer to one chunk: the ack to send back, and what happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub ack: ChunkAck,
    pub outcome: ChunkOutcome,
}

/// The receiving end of one snapshot transfer: a partial file in `dir` that
/// grows in order until it is installed into a [`SnapshotStore`] on the
/// same file system. Holds no data in memory beyond the chunk it is given.
#[derive(Debug)]
pub struct Receiver {
    path: PathBuf,
    slot: u64,
    total_bytes: u64,
    total_crc: u32,
    /// The partial file; `None` once its header is written for installing.
    file: Option<File>,
    /// Every body byte below this is in the partial file.
    ///
    /// Invariant: `next_offset <= total_bytes`.
    next_offset: u64,
    resumed_from: u64,
    discarded: Vec<RemovedFile>,
    installed: Option<SnapshotMeta>,
    failed: bool,
}

fn partial_file_name(slot: u64, total_bytes: u64, total_crc: u32) -> String {
    format!("{PARTIAL_PREFIX}{slot:020}-{total_bytes:020}-{total_crc:08x}{PARTIAL_SUFFIX}")
}

fn is_partial_name(name: &str) -> bool {
    name.starts_with(PARTIAL_PREFIX) && name.ends_with(PARTIAL_SUFFIX)
}

/// Deletes every partial transfer file in `dir` (when a snapshot arrived
/// another way, or catch-up no longer needs one).
pub fn remove_partials(dir: &Path) -> Result<Vec<RemovedFile>, TransferError> {
    remove_partials_except(dir, None)
}

fn remove_partials_except(
    dir: &Path,
    keep: Option<&str>,
) -> Result<Vec<RemovedFile>, TransferError> {
    let mut removed = Vec::new();
    if !dir.is_dir() {
        return Ok(removed);
    }
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_partial_name(name) || Some(name) == keep {
            continue;
        }
        let path = entry.path();
        let bytes = file_bytes(&path);
        fs::remove_file(&path).map_err(io_err("remove", &path))?;
        removed.push(RemovedFile {
            name: name.to_owned(),
            bytes,
        });
    }
    Ok(removed)
}

impl Receiver {
    /// Opens the receiving end of the snapshot identified by `slot`,
    /// `total_bytes` and `total_crc` in `dir` (created if missing; the
    /// snapshot directory itself is a fine choice). Resumes from a partial
    /// file of the same snapshot; deletes partial files of any other. Send
    /// [`Receiver::ack`] to tell the sender where to start.
    pub fn open(
        dir: &Path,
        slot: u64,
        total_bytes: u64,
        total_crc: u32,
    ) -> Result<Receiver, TransferError> {
        create_dir_synced(dir)?;
        let name = partial_file_name(slot, total_bytes, total_crc);
        let discarded = remove_partials_except(dir, Some(&name))?;
        let path = dir.join(&name);
        let existing = match fs::metadata(&path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("inspect", &path)(e)),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let body = existing
            .and_then(|len| len.checked_sub(HEADER_BYTES as u64))
            .filter(|&body| body <= total_bytes);
        let resumed_from = match body {
            Some(body) => body,
            None => {
                // Missing, shorter than its header, or longer than the
                // snapshot: start afresh behind a zeroed header.
                file.set_len(0)
                    .and_then(|()| file.seek(SeekFrom::Start(0)))
                    .and_then(|_| file.write_all(&[0u8; HEADER_BYTES]))
                    .map_err(io_err("start", &path))?;
                0
            }
        };
        Ok(Receiver {
            path,
            slot,
            total_bytes,
            total_crc,
            file: Some(file),
            next_offset: resumed_from,
            resumed_from,
            discarded,
            installed: None,
            failed: false,
        })
    }

    /// Opens the receiving end of the snapshot `chunk` belongs to.
    pub fn for_chunk(dir: &Path, chunk: &Chunk) -> Result<Receiver, TransferError> {
        Receiver::open(dir, chunk.slot, chunk.total_bytes, chunk.total_crc)
    }

    /// True if `chunk` belongs to this transfer's snapshot.
    pub fn is_for(&self, chunk: &Chunk) -> bool {
        chunk.slot == self.slot
            && chunk.total_bytes == self.total_bytes
            && chunk.total_crc == self.total_crc
    }

    pub fn slot(&self) -> u64 {
        self.slot
    }

    /// Every body byte below this has arrived.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Bytes found in a partial file when opened (0 for a fresh start).
    pub fn resumed_from(&self) -> u64 {
        self.resumed_from
    }

    /// Partial files of other snapshots that opening deleted.
    pub fn discarded(&self) -> &[RemovedFile] {
        &self.discarded
    }

    /// The installed snapshot, once complete.
    pub fn installed(&self) -> Option<&SnapshotMeta> {
        self.installed.as_ref()
    }

    /// The answer to send when there is nothing newer to say: where to
    /// (re)start, or that the snapshot is installed.
    pub fn ack(&self) -> ChunkAck {
        let status = if self.installed.is_some() {
            AckStatus::Installed
        } else {
            AckStatus::Resend
        };
        self.ack_with(status)
    }

    fn ack_with(&self, status: AckStatus) -> ChunkAck {
        ChunkAck {
            slot: self.slot,
            next_offset: self.next_offset,
            status,
        }
    }

    fn answer(&self, status: AckStatus, outcome: ChunkOutcome) -> Received {
        let status = if self.installed.is_some() {
            AckStatus::Installed
        } else {
            status
        };
        Received {
            ack: self.ack_with(status),
            outcome,
        }
    }

    /// Takes one chunk. Damaged chunks, duplicates and chunks past a gap are
    /// answered, not written; new data is appended; the chunk that completes
    /// the body makes the receiver check it and install it into `store`.
    /// Errors: I/O, a chunk of another snapshot (the caller decides whether
    /// to open a receiver for it), and a body that fails its checksum, after
    /// which the partial file is gone and this receiver refuses more chunks.
    pub fn on_chunk(
        &mut self,
        chunk: &Chunk,
        store: &mut SnapshotStore,
    ) -> Result<Received, TransferError> {
        if self.failed {
            return Err(TransferError::Failed { slot: self.slot });
        }
        if !self.is_for(chunk) {
            return Err(TransferError::WrongSnapshot {
                expected: self.slot,
                got: chunk.slot,
            });
        }
        if !chunk.is_intact() {
            return Ok(self.answer(AckStatus::Resend, ChunkOutcome::Rejected));
        }
        if self.installed.is_some() {
            return Ok(self.answer(AckStatus::Installed, ChunkOutcome::Duplicate));
        }
        if chunk.offset > self.next_offset {
            return Ok(self.answer(AckStatus::Resend, ChunkOutcome::Gap));
        }
        let outcome = if chunk.end() > self.next_offset {
            // Only the part not yet here; chunks may overlap after a resume.
            let skip = (self.next_offset - chunk.offset) as usize;
            self.append(&chunk.data[skip..])?;
            ChunkOutcome::Appended
        } else {
            ChunkOutcome::Duplicate
        };
        if self.next_offset == self.total_bytes {
            let meta = self.finish(store)?;
            return Ok(self.answer(AckStatus::Installed, ChunkOutcome::Installed(meta)));
        }
        Ok(self.answer(AckStatus::Progress, outcome))
    }

    fn append(&mut self, data: &[u8]) -> Result<(), TransferError> {
        let Some(file) = self.file.as_mut() else {
            // The body is complete; nothing can be appended.
            return Ok(());
        };
        file.seek(SeekFrom::Start(HEADER_BYTES as u64 + self.next_offset))
            .and_then(|_| file.write_all(data))
            .map_err(io_err("append to", &self.path))?;
        self.next_offset += data.len() as u64;
        debug_assert!(self.next_offset <= self.total_bytes);
        Ok(())
    }

    /// Writes the header, syncs, and hands the file to the store, which
    /// checks the body against the total checksum before renaming it.
    fn finish(&mut self, store: &mut SnapshotStore) -> Result<SnapshotMeta, TransferError> {
        if let Some(mut file) = self.file.take() {
            let header = Header {
                slot: self.slot,
                body_bytes: self.total_bytes,
                body_crc: self.total_crc,
            };
            let written = file
                .seek(SeekFrom::Start(0))
                .and_then(|_| file.write_all(&header.encode()))
                .and_then(|()| file.sync_all());
            if let Err(e) = written {
                self.file = Some(file);
                return Err(io_err("finish", &self.path)(e));
            }
        }
        match store.install(&self.path) {
            Ok(meta) => {
                self.installed = Some(meta.clone());
                Ok(meta)
            }
            Err(e @ (SnapshotError::Corrupt { .. } | SnapshotError::Stale { .. })) => {
                self.failed = true;
                fs::remove_file(&self.path).map_err(io_err("remove", &self.path))?;
                match e {
                    SnapshotError::Corrupt { reason, .. } => Err(TransferError::Mismatch {
                        slot: self.slot,
                        reason,
                    }),
                    other => Err(other.into()),
                }
            }
            // Perhaps passing (disk full): the complete file stays, and the
            // next chunk tries again.
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use paxos::rng::Rng;

    use super::super::Scratch;
    use super::*;
    use kv::{Command, Request, SetCondition, Store};

    fn random_body(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.next_u64() as u8).collect()
    }

    fn source_snapshot(dir: &Path, slot: u64, body: &[u8]) -> (SnapshotStore, SnapshotMeta) {
        let (mut store, _) = SnapshotStore::open(dir).expect("open source store");
        let meta = store.write(slot, |w| w.write_all(body)).expect("write");
        (store, meta)
    }

    fn read_body(store: &SnapshotStore, meta: &SnapshotMeta) -> Vec<u8> {
        let mut out = Vec::new();
        store
            .open_reader(meta)
            .expect("reader")
            .read_to_end(&mut out)
            .expect("intact");
        out
    }

    fn small(chunk_bytes_max: usize) -> SenderOptions {
        SenderOptions {
            chunk_bytes_max,
            window_chunks: DEFAULT_WINDOW_CHUNKS,
        }
    }

    /// A link that loses, duplicates and reorders messages, from a seed.
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

        fn send(&mut self, message: &TransferMessage) {
            let bytes = message.encode();
            if self.rng.chance(self.loss) {
                return;
            }
            if self.rng.chance(self.duplication) {
                self.queue.push(bytes.clone());
            }
            self.queue.push(bytes);
        }

        /// Any queued message, not necessarily the oldest.
        fn receive(&mut self) -> Option<TransferMessage> {
            if self.queue.is_empty() {
                return None;
            }
            let at = self.rng.below(self.queue.len() as u64) as usize;
            let bytes = self.queue.swap_remove(at);
            Some(TransferMessage::decode(bytes).expect("the link does not damage bytes"))
        }
    }

    /// Runs a transfer to completion over lossy links; returns the
    /// receiver's installed snapshot.
    fn transfer_over_lossy_links(
        seed: u64,
        sender: &mut Sender,
        incoming: &Path,
        store: &mut SnapshotStore,
    ) -> SnapshotMeta {
        let mut rng = Rng::new(seed);
        let mut to_receiver = Link::new(rng.fork(), 0.15, 0.1);
        let mut to_sender = Link::new(rng.fork(), 0.15, 0.1);
        let mut receiver: Option<Receiver> = None;
        let mut installed = None;
        for _ in 0..100_000 {
            while let Some(chunk) = sender.next_chunk().expect("read chunk") {
                to_receiver.send(&TransferMessage::Chunk(chunk));
            }
            if sender.is_complete() {
                return installed.expect("the receiver installed it");
            }
            if to_receiver.queue.is_empty() && to_sender.queue.is_empty() {
                // Everything in flight was lost: the sender's timeout.
                sender.resend();
                continue;
            }
            if rng.chance(0.5) {
                if let Some(TransferMessage::Chunk(chunk)) = to_receiver.receive() {
                    let r = receiver.get_or_insert_with(|| {
                        Receiver::for_chunk(incoming, &chunk).expect("open receiver")
                    });
                    let answer = r.on_chunk(&chunk, store).expect("receive");
                    if let ChunkOutcome::Installed(meta) = answer.outcome {
                        installed = Some(meta);
                    }
                    to_sender.send(&TransferMessage::Ack(answer.ack));
                }
            } else if let Some(TransferMessage::Ack(ack)) = to_sender.receive() {
                sender.on_ack(&ack).expect("ack");
            }
        }
        panic!("seed {seed}: the transfer did not finish");
    }

    #[test]
    fn a_multi_megabyte_store_crosses_a_lossy_link_intact() {
        let source = Scratch::new("xfer-lossy-src");
        let target = Scratch::new("xfer-lossy-dst");
        let mut kv = Store::new();
        for i in 0..30_000u64 {
            let command = Command::Set {
                key: Bytes::from(format!("key-{i:08}")),
                value: Bytes::from(vec![b'a' + (i % 26) as u8; 100 + (i % 100) as usize]),
                condition: SetCondition::None,
                get: false,
            };
            kv.apply(i + 1, &Request::anonymous(command));
        }
        let (mut source_store, _) = SnapshotStore::open(source.path()).expect("open");
        let meta = source_store
            .write(30_000, |w| kv.snapshot_to(&mut &mut *w))
            .expect("write");
        assert!(meta.bytes > 4 << 20, "multi-megabyte: {}", meta.bytes);

        for seed in 0..3 {
            let _ = fs::remove_dir_all(target.path());
            let (mut store, _) = SnapshotStore::open(target.path()).expect("open target");
            let mut sender = Sender::new(meta.clone(), small(64 << 10)).expect("sender");
            let got = transfer_over_lossy_links(seed, &mut sender, target.path(), &mut store);
            assert_eq!(
                (got.slot, got.bytes, got.crc),
                (meta.slot, meta.bytes, meta.crc)
            );
            assert_eq!(store.latest(), Some(&got));
            assert!(sender.bytes_sent() > meta.bytes, "the link lost something");
            let mut reader = io::BufReader::new(store.open_reader(&got).expect("reader"));
            let restored = Store::restore_from(&mut reader).expect("restore");
            assert_eq!(restored.len(), 30_000);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            kv.snapshot_to(&mut a).expect("image");
            restored.snapshot_to(&mut b).expect("image");
            assert!(a == b, "seed {seed}: the restored store differs");
            let partials = fs::read_dir(target.path())
                .expect("list")
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(PARTIAL_SUFFIX))
                })
                .count();
            assert_eq!(partials, 0, "the partial file became the snapshot");
        }
    }

    /// Delivers chunks in order without loss until the receiver holds at
    /// least `until` bytes; acks go straight back.
    fn deliver_until(
        sender: &mut Sender,
        receiver: &mut Receiver,
        store: &mut SnapshotStore,
        until: u64,
    ) {
        while receiver.next_offset() < until {
            let chunk = sender
                .next_chunk()
                .expect("read")
                .expect("the window has room when acks flow");
            let answer = receiver.on_chunk(&chunk, store).expect("receive");
            sender.on_ack(&answer.ack).expect("ack");
        }
    }

    /// Runs to completion without loss; returns the installed snapshot.
    fn deliver_all(
        sender: &mut Sender,
        receiver: &mut Receiver,
        store: &mut SnapshotStore,
    ) -> SnapshotMeta {
        let mut installed = None;
        while !sender.is_complete() {
            let chunk = sender.next_chunk().expect("read").expect("room");
            let answer = receiver.on_chunk(&chunk, store).expect("receive");
            if let ChunkOutcome::Installed(meta) = &answer.outcome {
                installed = Some(meta.clone());
            }
            sender.on_ack(&answer.ack).expect("ack");
        }
        installed.expect("installed")
    }

    #[test]
    fn a_reopened_receiver_resumes_from_its_partial_file() {
        let source = Scratch::new("xfer-resume-src");
        let target = Scratch::new("xfer-resume-dst");
        let body = random_body(7, 3 << 20);
        let (_src, meta) = source_snapshot(source.path(), 90, &body);
        let (mut store, _) = SnapshotStore::open(target.path()).expect("open");

        let mut sender = Sender::new(meta.clone(), small(256 << 10)).expect("sender");
        let mut receiver = Receiver::open(target.path(), 90, meta.bytes, meta.crc).expect("open");
        assert_eq!(receiver.resumed_from(), 0);
        sender.on_ack(&receiver.ack()).expect("ack");
        deliver_until(&mut sender, &mut receiver, &mut store, meta.bytes / 2);
        // Chunks in flight when the receiver goes away are lost.
        while sender.next_chunk().expect("read").is_some() {}
        let had = receiver.next_offset();
        drop(receiver);

        let mut receiver = Receiver::open(target.path(), 90, meta.bytes, meta.crc).expect("reopen");
        assert_eq!(receiver.resumed_from(), had);
        assert!(receiver.resumed_from() > 0);
        assert!(receiver.discarded().is_empty());
        let ack = receiver.ack();
        assert_eq!((ack.next_offset, ack.status), (had, AckStatus::Resend));
        let sent_before = sender.bytes_sent();
        sender.on_ack(&ack).expect("resume");
        let got = deliver_all(&mut sender, &mut receiver, &mut store);
        let resent = sender.bytes_sent() - sent_before;
        assert_eq!(resent, meta.bytes - had);
        assert!(resent < meta.bytes);
        assert_eq!(read_body(&store, &got), body);
    }

    #[test]
    fn a_new_sender_learns_where_a_reopened_receiver_stands() {
        let source = Scratch::new("xfer-new-sender-src");
        let target = Scratch::new("xfer-new-sender-dst");
        let body = random_body(8, 2 << 20);
        let (_src, meta) = source_snapshot(source.path(), 91, &body);
        let (mut store, _) = SnapshotStore::open(target.path()).expect("open");
        let options = small(128 << 10);
        let mut sender = Sender::new(meta.clone(), options).expect("sender");
        let mut receiver = Receiver::open(target.path(), 91, meta.bytes, meta.crc).expect("open");
        deliver_until(&mut sender, &mut receiver, &mut store, meta.bytes * 2 / 3);
        let had = receiver.next_offset();
        drop((sender, receiver));

        // Both ends restarted; the new sender starts at zero and its first
        // chunks are duplicates that tell it where the receiver is.
        let mut sender = Sender::new(meta.clone(), options).expect("sender");
        let mut receiver = Receiver::open(target.path(), 91, meta.bytes, meta.crc).expect("reopen");
        assert_eq!(receiver.resumed_from(), had);
        let got = deliver_all(&mut sender, &mut receiver, &mut store);
        assert!(
            sender.bytes_sent() < meta.bytes,
            "{} re-sent",
            sender.bytes_sent()
        );
        assert_eq!(read_body(&store, &got), body);
    }

    #[test]
    fn a_damaged_chunk_is_rejected_and_sent_again() {
        let source = Scratch::new("xfer-damaged-src");
        let target = Scratch::new("xfer-damaged-dst");
        let body = random_body(9, 600_000);
        let (_src, meta) = source_snapshot(source.path(), 5, &body);
        let (mut store, _) = SnapshotStore::open(target.path()).expect("open");
        let mut sender = Sender::new(meta.clone(), small(100_000)).expect("sender");
        let mut receiver = Receiver::open(target.path(), 5, meta.bytes, meta.crc).expect("open");

        let first = sender.next_chunk().expect("read").expect("chunk");
        let second = sender.next_chunk().expect("read").expect("chunk");
        let third = sender.next_chunk().expect("read").expect("chunk");
        let answer = receiver.on_chunk(&first, &mut store).expect("receive");
        assert_eq!(answer.outcome, ChunkOutcome::Appended);
        sender.on_ack(&answer.ack).expect("ack");

        let mut data = second.data.to_vec();
        data[1234] ^= 0x40;
        let damaged = Chunk {
            data: Bytes::from(data),
            ..second.clone()
        };
        let answer = receiver.on_chunk(&damaged, &mut store).expect("receive");
        assert_eq!(answer.outcome, ChunkOutcome::Rejected);
        assert_eq!(answer.ack.status, AckStatus::Resend);
        assert_eq!(answer.ack.next_offset, first.end());
        assert_eq!(receiver.next_offset(), first.end(), "nothing was written");
        // The chunk after it is past a gap now.
        let gap = receiver.on_chunk(&third, &mut store).expect("receive");
        assert_eq!(gap.outcome, ChunkOutcome::Gap);

        sender.on_ack(&answer.ack).expect("resend request");
        sender.on_ack(&gap.ack).expect("its echo changes nothing");
        let again = sender.next_chunk().expect("read").expect("chunk");
        assert_eq!(again, second, "the damaged chunk is sent again");
        let answer = receiver.on_chunk(&again, &mut store).expect("receive");
        assert_eq!(answer.outcome, ChunkOutcome::Appended);
        sender.on_ack(&answer.ack).expect("ack");
        let got = deliver_all(&mut sender, &mut receiver, &mut store);
        assert_eq!(read_body(&store, &got), body);
    }

    #[test]
    fn a_body_that_fails_its_checksum_is_deleted_not_installed() {
        let source = Scratch::new("xfer-mismatch-src");
        let target = Scratch::new("xfer-mismatch-dst");
        let body = random_body(10, 300_000);
        let (_src, meta) = source_snapshot(source.path(), 12, &body);
        let (mut store, _) = SnapshotStore::open(target.path()).expect("open");
        // The receiver is told a checksum the data does not have: the
        // chunks are each intact, the whole is not.
        let wrong = meta.crc ^ 1;
        let mut receiver = Receiver::open(target.path(), 12, meta.bytes, wrong).expect("open");
        let mut offset = 0;
        let result = loop {
            let end = (offset + 100_000).min(body.len());
            let chunk = Chunk::new(
                12,
                meta.bytes,
                wrong,
                offset as u64,
                Bytes::copy_from_slice(&body[offset..end]),
            );
            match receiver.on_chunk(&chunk, &mut store) {
                Ok(_) if end < body.len() => offset = end,
                other => break other,
            }
        };
        match result {
            Err(e @ TransferError::Mismatch { slot: 12, .. }) => {
                assert!(e.to_string().contains("start over"), "{e}");
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert!(store.latest().is_none());
        assert_eq!(
            fs::read_dir(target.path()).expect("list").count(),
            0,
            "partial deleted"
        );
        let chunk = Chunk::new(12, meta.bytes, wrong, 0, Bytes::from_static(b"x"));
        assert!(matches!(
            receiver.on_chunk(&chunk, &mut store),
            Err(TransferError::Failed { slot: 12 })
        ));
    }

    #[test]
    fn a_newer_snapshot_supersedes_an_old_partial() {
        let source = Scratch::new("xfer-supersede-src");
        let target = Scratch::new("xfer-supersede-dst");
        let old_body = random_body(11, 500_000);
        let new_body = random_body(12, 400_000);
        let (mut src, old) = source_snapshot(source.path(), 10, &old_body);
        let new = src.write(20, |w| w.write_all(&new_body)).expect("write");
        let (mut store, _) = SnapshotStore::open(target.path()).expect("open");

        let mut sender = Sender::new(old.clone(), small(100_000)).expect("sender");
        let mut receiver = Receiver::open(target.path(), 10, old.bytes, old.crc).expect("open");
        deliver_until(&mut sender, &mut receiver, &mut store, 200_000);
        drop(receiver);
        let partial = target
            .path()
            .join(partial_file_name(10, old.bytes, old.crc));
        assert!(partial.exists());

        // Same slot, other content: also a different snapshot.
        let other = Receiver::open(target.path(), 10, old.bytes, old.crc ^ 7).expect("open");
        assert_eq!(other.resumed_from(), 0);
        assert_eq!(other.discarded().len(), 1);
        assert!(!partial.exists());
        drop(other);

        let mut receiver = Receiver::open(target.path(), 20, new.bytes, new.crc).expect("open");
        assert_eq!(receiver.resumed_from(), 0);
        assert_eq!(
            receiver.discarded().len(),
            1,
            "the slot-10 partial of the other content"
        );
        let first_old = Sender::new(old, small(100_000))
            .expect("sender")
            .next_chunk()
            .expect("read")
            .expect("chunk");
        assert!(matches!(
            receiver.on_chunk(&first_old, &mut store),
            Err(TransferError::WrongSnapshot {
                expected: 20,
                got: 10
            })
        ));
        let mut sender = Sender::new(new, small(100_000)).expect("sender");
        let got = deliver_all(&mut sender, &mut receiver, &mut store);
        assert_eq!(got.slot, 20);
        assert_eq!(read_body(&store, &got), new_body);
        assert_eq!(remove_partials(target.path()).expect("clean").len(), 0);
    }

    #[test]
    fn an_empty_snapshot_transfers_too() {
        let source = Scratch::new("xfer-empty-src");
        let target = Scratch::new("xfer-empty-dst");
        let (_src, meta) = source_snapshot(source.path(), 1, b"");
        let (mut store, _) = SnapshotStore::open(target.path()).expect("open");
        let mut sender = Sender::new(meta.clone(), SenderOptions::default()).expect("sender");
        let mut receiver = Receiver::open(target.path(), 1, 0, meta.crc).expect("open");
        let got = deliver_all(&mut sender, &mut receiver, &mut store);
        assert_eq!((got.slot, got.bytes), (1, 0));
        assert!(sender.next_chunk().expect("read").is_none());
    }

    #[test]
    fn the_window_bounds_chunks_in_flight_and_their_size() {
        let source = Scratch::new("xfer-window");
        let body = random_body(13, 1_000_000);
        let (_src, meta) = source_snapshot(source.path(), 3, &body);
        let mut sender = Sender::new(
            meta.clone(),
            SenderOptions {
                chunk_bytes_max: 30_000,
                window_chunks: 3,
            },
        )
        .expect("sender");
        let chunks: Vec<Chunk> =
            std::iter::from_fn(|| sender.next_chunk().expect("read")).collect();
        assert_eq!(chunks.len(), 3);
        assert!(
            chunks
                .iter()
                .all(|c| c.data.len() == 30_000 && c.is_intact())
        );
        assert_eq!(chunks[2].offset, 60_000);
        sender
            .on_ack(&ChunkAck {
                slot: 3,
                next_offset: 30_000,
                status: AckStatus::Progress,
            })
            .expect("ack");
        assert_eq!(sender.in_flight(), 2);
        let next = sender.next_chunk().expect("read").expect("room for one");
        assert_eq!(next.offset, 90_000);
        assert!(sender.next_chunk().expect("read").is_none());
        for bad in [
            ChunkAck {
                slot: 3,
                next_offset: meta.bytes + 1,
                status: AckStatus::Progress,
            },
            ChunkAck {
                slot: 3,
                next_offset: 5,
                status: AckStatus::Installed,
            },
        ] {
            assert!(matches!(
                sender.on_ack(&bad),
                Err(TransferError::BadAck { .. })
            ));
        }
        assert!(matches!(
            sender.on_ack(&ChunkAck {
                slot: 4,
                next_offset: 0,
                status: AckStatus::Progress
            }),
            Err(TransferError::WrongSnapshot { .. })
        ));
    }

    #[test]
    fn messages_round_trip() {
        let chunk = Chunk::new(
            u64::MAX,
            1 << 40,
            0xDEAD_BEEF,
            1 << 39,
            Bytes::from_static(b"some data"),
        );
        let ack = ChunkAck {
            slot: 77,
            next_offset: 300,
            status: AckStatus::Resend,
        };
        for m in [TransferMessage::Chunk(chunk), TransferMessage::Ack(ack)] {
            assert_eq!(TransferMessage::decode(m.encode()), Ok(m));
        }
    }

    #[test]
    fn garbage_gives_errors_not_panics() {
        use DecodeError as E;
        let decode = |b: &[u8]| TransferMessage::decode(Bytes::copy_from_slice(b));
        assert_eq!(decode(&[]), Err(E::Empty("transfer message")));
        assert_eq!(
            decode(&[9, 1]),
            Err(E::UnknownFormat {
                what: "transfer message",
                found: 9,
                expected: TRANSFER_FORMAT
            })
        );
        assert_eq!(decode(&[1]), Err(E::Truncated("the tag")));
        assert!(matches!(decode(&[1, 7]), Err(E::UnknownTag { tag: 7, .. })));
        assert!(matches!(
            decode(&[1, 2, 1, 1, 3]),
            Err(E::UnknownTag { tag: 3, .. })
        ));
        assert_eq!(
            decode(&[
                1, 2, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F
            ]),
            Err(E::VarintOverflow("a slot"))
        );
        // A chunk claiming more data than the input holds allocates nothing.
        let mut forged = vec![1, TAG_CHUNK, 1];
        forged.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0x07]); // total bytes
        forged.extend_from_slice(&[0, 0, 0, 0, 0]); // total crc, offset
        forged.extend_from_slice(&[0x80, 0x80, 0x80, 0x07]); // length 14 MiB
        forged.extend_from_slice(b"short");
        assert_eq!(decode(&forged), Err(E::Truncated("a chunk")));
        let mut huge = vec![1, TAG_CHUNK, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0, 0, 0, 0, 0];
        huge.extend_from_slice(&[0x80, 0x80, 0x80, 0x10]); // 32 MiB
        assert!(matches!(
            decode(&huge),
            Err(E::TooLarge {
                what: "a chunk length",
                ..
            })
        ));
        let beyond = Chunk::new(1, 4, 0, 2, Bytes::from_static(b"abc"));
        assert!(matches!(
            TransferMessage::decode(TransferMessage::Chunk(beyond).encode()),
            Err(E::Invalid {
                what: "a chunk",
                ..
            })
        ));
        let mut trailing = TransferMessage::Ack(ChunkAck {
            slot: 1,
            next_offset: 2,
            status: AckStatus::Progress,
        })
        .encode()
        .to_vec();
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(E::TrailingBytes(1)));

        // Every truncation and every single-bit flip of a valid chunk is
        // either an error or a chunk that fails its checksum.
        let valid = TransferMessage::Chunk(Chunk::new(
            42,
            1000,
            0x1234_5678,
            990,
            Bytes::from_static(b"0123456789"),
        ))
        .encode()
        .to_vec();
        for len in 0..valid.len() {
            assert!(decode(&valid[..len]).is_err(), "prefix of {len} bytes");
        }
        for at in 0..valid.len() {
            for bit in 0..8 {
                let mut b = valid.clone();
                b[at] ^= 1 << bit;
                match decode(&b) {
                    Err(_) => {}
                    Ok(TransferMessage::Chunk(c)) => {
                        assert!(!c.is_intact(), "flip at {at}.{bit} went unnoticed")
                    }
                    Ok(other) => panic!("flip at {at}.{bit} decoded as {other:?}"),
                }
            }
        }
        // Random bytes, with a valid prefix half the time.
        let mut rng = Rng::new(99);
        for _ in 0..20_000 {
            let len = rng.below(40) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if rng.chance(0.5) && len >= 2 {
                b[0] = TRANSFER_FORMAT;
                b[1] = 1 + rng.below(2) as u8;
            }
            let _ = decode(&b);
        }
    }
}
