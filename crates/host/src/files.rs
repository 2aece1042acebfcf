//! Snapshot files, as the host's effects use them.
//!
//! The host decides when to save a snapshot, which bytes of one to send and
//! where received bytes go; it never touches a file. Its shell carries out
//! each [`FileOp`] through [`perform`] over a [`SnapshotFiles`]: the node's
//! is the snapshot directory on disk (on threads of its own, never on the
//! replica's), the simulator's lives in memory and loses what a crash would.
//! Both run this same code between the host and their files.

use bytes::Bytes;
use kv::Store;
use paxos::NodeId;
use paxos::replica::Slot;

use crate::transfer::{Chunk, SnapshotFrame, SnapshotId};

/// A snapshot file operation the host asks for. Those of one transfer must
/// be carried out in the order given.
#[derive(Clone, Debug)]
pub enum FileOp {
    /// Write the snapshot of `store` (the store as of `slot`) durably, and
    /// answer [`FileDone::Saved`].
    Save { slot: Slot, store: Box<Store> },
    /// Read `len` bytes of `id`'s body from `offset` and send them to `to`
    /// as a chunk; answer [`FileDone::Unreadable`] if that fails.
    SendChunk {
        to: NodeId,
        id: SnapshotId,
        offset: u64,
        len: usize,
    },
    /// Open the partial file of `id`, keeping what it holds of the body,
    /// and answer [`FileDone::Opened`].
    OpenPartial { id: SnapshotId },
    /// Append `data` to the partial file of `id`, whose body it continues
    /// at `offset`, and answer [`FileDone::Appended`] (or
    /// [`FileDone::Failed`]). The host acknowledges the bytes to the sender
    /// only then, so a slow disk holds back the sender instead of filling
    /// memory with chunks.
    Append {
        id: SnapshotId,
        offset: u64,
        data: Bytes,
    },
    /// Check the partial file of `id` against its checksum, install it as
    /// the newest snapshot, load its store, and answer
    /// [`FileDone::Installed`].
    Install { id: SnapshotId },
}

/// Why a file operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// A newer snapshot is there already: this one is moot.
    #[error("a snapshot of slot {slot} is older than the newest one (slot {newest})")]
    Stale { slot: Slot, newest: Slot },
    /// The received body does not match its checksum; its partial file is
    /// gone, and the transfer must start over.
    #[error("the received snapshot does not match its checksum ({0})")]
    Mismatch(String),
    /// Anything else (I/O, a damaged file), said in full.
    #[error("{0}")]
    Failed(String),
}

/// What a file operation came to, for the host ([`crate::Host::file_done`]).
#[derive(Debug)]
pub enum FileDone {
    Saved {
        slot: Slot,
        result: Result<SnapshotId, FileError>,
    },
    /// The partial file of `id` holds the body bytes below `have`.
    Opened {
        id: SnapshotId,
        result: Result<u64, FileError>,
    },
    Installed {
        id: SnapshotId,
        result: Result<Box<Store>, FileError>,
    },
    /// The partial file of `id` now holds the body bytes below `end`.
    Appended { id: SnapshotId, end: u64 },
    /// An append to the partial file of `id` failed.
    Failed { id: SnapshotId, error: FileError },
    /// A chunk of `id` for `to` could not be read (the snapshot may have
    /// been retired meanwhile).
    Unreadable {
        to: NodeId,
        id: SnapshotId,
        error: FileError,
    },
}

/// What [`perform`] did.
#[derive(Debug)]
pub enum Performed {
    /// Hand this to the host.
    Done(FileDone),
    /// Send this frame to this peer.
    Send(NodeId, SnapshotFrame),
    /// Nothing more to do.
    Nothing,
}

/// A node's snapshot files: its newest snapshots, and the partial file of
/// the one it receives. What each method must make durable is said beside
/// it.
pub trait SnapshotFiles {
    /// Writes the snapshot of `store` at `slot`, durably (a crash leaves the
    /// old snapshots or the new one, whole), and makes it the newest.
    fn save(&mut self, slot: Slot, store: &Store) -> Result<SnapshotId, FileError>;

    /// Reads `len` bytes of the body of snapshot `id` from `offset`.
    fn read(&mut self, id: &SnapshotId, offset: u64, len: usize) -> Result<Bytes, FileError>;

    /// Opens the partial file of `id` (deleting those of other snapshots)
    /// and says how many body bytes it holds. Nothing need be durable.
    fn open_partial(&mut self, id: &SnapshotId) -> Result<u64, FileError>;

    /// Appends `data`, which continues the body at `offset`, to the partial
    /// file of `id`. Nothing need be durable.
    fn append_partial(
        &mut self,
        id: &SnapshotId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FileError>;

    /// Checks the partial file of `id` against its checksum and installs it
    /// durably as the newest snapshot, then reads its store. On a mismatch
    /// the partial file is deleted ([`FileError::Mismatch`]).
    fn install_partial(&mut self, id: &SnapshotId) -> Result<Store, FileError>;
}

/// Carries out `op` with `files`.
pub fn perform(files: &mut impl SnapshotFiles, op: FileOp) -> Performed {
    match op {
        FileOp::Save { slot, store } => Performed::Done(FileDone::Saved {
            slot,
            result: files.save(slot, &store),
        }),
        FileOp::SendChunk {
            to,
            id,
            offset,
            len,
        } => match files.read(&id, offset, len) {
            Ok(data) => Performed::Send(to, SnapshotFrame::Chunk(Chunk::new(id, offset, data))),
            Err(error) => Performed::Done(FileDone::Unreadable { to, id, error }),
        },
        FileOp::OpenPartial { id } => Performed::Done(FileDone::Opened {
            id,
            result: files.open_partial(&id),
        }),
        FileOp::Append { id, offset, data } => match files.append_partial(&id, offset, &data) {
            Ok(()) => Performed::Done(FileDone::Appended {
                id,
                end: offset + data.len() as u64,
            }),
            Err(error) => Performed::Done(FileDone::Failed { id, error }),
        },
        FileOp::Install { id } => Performed::Done(FileDone::Installed {
            id,
            result: files.install_partial(&id).map(Box::new),
        }),
    }
}
