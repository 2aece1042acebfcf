//! Snapshot files in memory, as the simulated node's host uses them
//! (`host::files::SnapshotFiles`), with what a crash does to them.
//!
//! A saved or installed snapshot is durable at once (the node's store
//! writes, syncs, renames and syncs the directory before it answers). The
//! partial file of a snapshot being received is never synced, so a crash
//! keeps only a prefix of it; the next transfer resumes from what is left.

use bytes::Bytes;
use codec::crc32c;
use host::files::{FileError, SnapshotFiles};
use host::transfer::SnapshotId;
use kv::Store;
use paxos::replica::Slot;
use paxos::rng::Rng;

/// Snapshots kept, as the node keeps them.
const KEEP: usize = 2;

#[derive(Clone, Debug, Default)]
pub struct MemSnapshots {
    /// Oldest first.
    snapshots: Vec<(SnapshotId, Bytes)>,
    partial: Option<(SnapshotId, Vec<u8>)>,
}

impl MemSnapshots {
    /// The newest snapshot and its store.
    pub fn latest(&self) -> Option<(SnapshotId, Store)> {
        let (id, bytes) = self.snapshots.last()?;
        match Store::restore_from(&mut &bytes[..]) {
            Ok(store) => Some((*id, store)),
            // Every body here was checked before it was kept.
            Err(e) => panic!("a kept snapshot of slot {} is unreadable: {e}", id.slot),
        }
    }

    /// A crash: the partial file keeps a prefix of what was appended.
    pub fn crash(&mut self, rng: &mut Rng) {
        if let Some((_, data)) = &mut self.partial {
            let kept = rng.below(data.len() as u64 + 1) as usize;
            data.truncate(kept);
        }
    }

    /// The disk is lost: nothing is left.
    pub fn wipe(&mut self) {
        *self = MemSnapshots::default();
    }

    fn keep(&mut self, id: SnapshotId, bytes: Bytes) -> Result<(), FileError> {
        if let Some((newest, _)) = self.snapshots.last()
            && newest.slot > id.slot
        {
            return Err(FileError::Stale {
                slot: id.slot,
                newest: newest.slot,
            });
        }
        self.snapshots.retain(|(kept, _)| kept.slot != id.slot);
        self.snapshots.push((id, bytes));
        let excess = self.snapshots.len().saturating_sub(KEEP);
        self.snapshots.drain(..excess);
        Ok(())
    }

    fn partial_of(&mut self, id: &SnapshotId) -> Result<&mut Vec<u8>, FileError> {
        match &mut self.partial {
            Some((of, data)) if of == id => Ok(data),
            _ => Err(FileError::Failed(format!(
                "the partial file of slot {} is not open",
                id.slot
            ))),
        }
    }
}

impl SnapshotFiles for MemSnapshots {
    fn save(&mut self, slot: Slot, store: &Store) -> Result<SnapshotId, FileError> {
        let mut body = Vec::new();
        store
            .snapshot_to(&mut body)
            .map_err(|e| FileError::Failed(e.to_string()))?;
        let id = SnapshotId {
            slot,
            bytes: body.len() as u64,
            crc: crc32c(&body),
        };
        self.keep(id, Bytes::from(body))?;
        Ok(id)
    }

    fn read(&mut self, id: &SnapshotId, offset: u64, len: usize) -> Result<Bytes, FileError> {
        let (_, bytes) = self
            .snapshots
            .iter()
            .find(|(kept, _)| kept == id)
            .ok_or_else(|| FileError::Failed(format!("no snapshot of slot {} here", id.slot)))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(len);
        if end > bytes.len() {
            return Err(FileError::Failed("a read past the body".to_owned()));
        }
        Ok(bytes.slice(start..end))
    }

    fn open_partial(&mut self, id: &SnapshotId) -> Result<u64, FileError> {
        match &self.partial {
            Some((of, data)) if of == id => Ok(data.len() as u64),
            _ => {
                self.partial = Some((*id, Vec::new()));
                Ok(0)
            }
        }
    }

    fn append_partial(
        &mut self,
        id: &SnapshotId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FileError> {
        let total = id.bytes;
        let partial = self.partial_of(id)?;
        if offset != partial.len() as u64 || offset + data.len() as u64 > total {
            return Err(FileError::Failed(format!(
                "bytes for offset {offset}, but the partial file holds {}",
                partial.len()
            )));
        }
        partial.extend_from_slice(data);
        Ok(())
    }

    fn install_partial(&mut self, id: &SnapshotId) -> Result<Store, FileError> {
        // Installing ends the partial file, whatever comes of it.
        let body = std::mem::take(self.partial_of(id)?);
        self.partial = None;
        if body.len() as u64 != id.bytes || crc32c(&body) != id.crc {
            return Err(FileError::Mismatch(format!(
                "{} bytes with checksum {:08x}",
                body.len(),
                crc32c(&body)
            )));
        }
        let store =
            Store::restore_from(&mut &body[..]).map_err(|e| FileError::Failed(e.to_string()))?;
        self.keep(*id, Bytes::from(body))?;
        Ok(store)
    }
}
