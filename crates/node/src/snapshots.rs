//! The node's snapshot files, as the host uses them: the snapshot store in
//! `DIR/snapshots` and the partial file of a snapshot being received, behind
//! `host::files::SnapshotFiles`; loading the newest at start; and the
//! threads that carry out the host's file operations, so that no file work
//! ever runs on the replica task.
//!
//! | operation | where |
//! |---|---|
//! | `Save` | a writer thread of its own (the host saves one snapshot at a time): it streams the store's clone into a temporary file, syncs, renames, syncs the directory |
//! | `SendChunk`, `OpenPartial`, `Append`, `Install` | one file thread, in the order the host gave them (those of one transfer must not overtake each other) |
//!
//! Both hand what they did back to the replica task as `host::files::FileDone`,
//! and a chunk read for a peer goes straight to the peer's snapshot link.
//!
//! # The cost of the clone
//!
//! The host clones the store so that serializing it, which takes far longer,
//! does not hold up the replica task. Keys and values are reference-counted
//! `Bytes`, so the clone copies the ordered map's nodes and bumps reference
//! counts, no key or value bytes. It is still the one pause a snapshot
//! causes: about 140 ns a key on a loaded 2-core machine
//! (`cloning_a_store_of_a_million_keys` below measures it), so 0.14 s per
//! million keys in which the task sends no heartbeat. Followers wait at
//! least `election_ticks` (200 ms by default) before they suspect the
//! leader, so with the default timings a store of up to about a million
//! keys snapshots without an election; a larger one needs longer ticks
//! (`--tick-ms`) until the store gets a persistent map whose clone costs
//! nothing. The clone also keeps its own copy of the map's nodes until the
//! writer is done, so taking a snapshot needs that much spare memory.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use bytes::Bytes;
use host::files::{FileDone, FileError, FileOp, Performed, SnapshotFiles, perform};
use host::transfer::SnapshotId;
use kv::Store;
use paxos::replica::Slot;
use storage::partial::{Partial, PartialError};
use storage::snapshot::{OpenReport, SnapshotBody, SnapshotError, SnapshotMeta, SnapshotStore};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{error, info, warn};

use crate::net::Outbox;

/// Why the newest snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] SnapshotError),
    #[error(
        "snapshot {path} holds no readable key-value store ({source}). Do not delete it to \
         make the node start (the log below it may be gone); restart the node with --rejoin: \
         it moves the damaged state aside and rejoins as a learner that fetches a snapshot from a peer"
    )]
    Body {
        path: String,
        #[source]
        source: kv::SnapshotError,
    },
}

/// The identity of a snapshot on disk, as the host names it.
pub fn id_of(meta: &SnapshotMeta) -> SnapshotId {
    SnapshotId {
        slot: Slot(meta.slot),
        bytes: meta.bytes,
        crc: meta.crc,
    }
}

fn failed(e: impl std::fmt::Display) -> FileError {
    FileError::Failed(e.to_string())
}

/// Snapshot bodies kept open for peers (one per transfer served, and a
/// spare): an open body stays readable after retention deletes its file,
/// so a transfer outlives newer snapshots taken meanwhile.
const OPEN_BODIES_MAX: usize = 8;

/// The snapshot directory of a node. Cheap to clone: the clones share the
/// store, the partial file and the open bodies.
#[derive(Clone, Debug)]
pub struct DiskSnapshots {
    store: Arc<Mutex<SnapshotStore>>,
    partial: Arc<Mutex<Option<Partial>>>,
    /// Most recently read last.
    open: Arc<Mutex<Vec<(SnapshotId, SnapshotBody)>>>,
    dir: PathBuf,
}

/// A poisoned lock only means a thread panicked while holding it; the
/// store's state changes only after each durable step.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DiskSnapshots {
    /// Opens the snapshot store in `dir`.
    pub fn open(dir: PathBuf) -> Result<(DiskSnapshots, OpenReport), SnapshotError> {
        let (store, report) = SnapshotStore::open(&dir)?;
        let snapshots = DiskSnapshots {
            store: Arc::new(Mutex::new(store)),
            partial: Arc::new(Mutex::new(None)),
            open: Arc::new(Mutex::new(Vec::new())),
            dir,
        };
        Ok((snapshots, report))
    }

    /// Reads the store a snapshot holds. Blocking.
    pub fn load(&self, meta: &SnapshotMeta) -> Result<Store, LoadError> {
        let mut reader = lock(&self.store).open_reader(meta)?;
        let body_error = |source| LoadError::Body {
            path: meta.path.display().to_string(),
            source,
        };
        let store = Store::restore_from(&mut reader).map_err(|e| match unwrap_corrupt(e) {
            Ok(corrupt) => LoadError::Store(corrupt),
            Err(other) => body_error(other),
        })?;
        // The store's stream must end where the body does; reading on to
        // the end also makes the reader check the body's checksum.
        let mut rest = Vec::new();
        match reader.read_to_end(&mut rest) {
            Ok(0) => Ok(store),
            Ok(n) => Err(body_error(kv::SnapshotError::Corrupt(format!(
                "{n} bytes follow the store's data"
            )))),
            Err(e) => Err(match unwrap_corrupt(kv::SnapshotError::Io(e)) {
                Ok(corrupt) => LoadError::Store(corrupt),
                Err(other) => body_error(other),
            }),
        }
    }

    /// The newest snapshot and the store it holds, if there is one.
    pub fn load_latest(&self) -> Result<Option<(SnapshotMeta, Store)>, LoadError> {
        let Some(meta) = lock(&self.store).latest().cloned() else {
            return Ok(None);
        };
        let store = self.load(&meta)?;
        Ok(Some((meta, store)))
    }

    /// The snapshot on disk that `id` names.
    fn find(&self, id: &SnapshotId) -> Result<SnapshotMeta, FileError> {
        lock(&self.store)
            .list()
            .iter()
            .find(|m| id_of(m) == *id)
            .cloned()
            .ok_or_else(|| {
                FileError::Failed(format!("no snapshot of slot {} here any more", id.slot))
            })
    }

    fn with_partial<R>(
        &self,
        id: &SnapshotId,
        f: impl FnOnce(&mut Partial) -> Result<R, PartialError>,
    ) -> Result<R, FileError> {
        let mut partial = lock(&self.partial);
        match partial.as_mut() {
            Some(p) if p.is_of(id.slot.0, id.bytes, id.crc) => f(p).map_err(|e| match e {
                PartialError::Mismatch { .. } => FileError::Mismatch(e.to_string()),
                PartialError::Store(SnapshotError::Stale { slot, latest }) => FileError::Stale {
                    slot: Slot(slot),
                    newest: Slot(latest),
                },
                other => failed(other),
            }),
            _ => Err(FileError::Failed(format!(
                "the partial file of the snapshot of slot {} is not open",
                id.slot
            ))),
        }
    }
}

impl SnapshotFiles for DiskSnapshots {
    fn save(&mut self, slot: Slot, store: &Store) -> Result<SnapshotId, FileError> {
        let started = std::time::Instant::now();
        let stale = |e| match e {
            SnapshotError::Stale { slot, latest } => FileError::Stale {
                slot: Slot(slot),
                newest: Slot(latest),
            },
            other => failed(other),
        };
        // The body is written without holding the store, which peers' chunks
        // and an install may need meanwhile.
        let temp = lock(&self.store).begin_write(slot.0).map_err(stale)?;
        let written = temp
            .write(|mut w| store.snapshot_to(&mut w))
            .map_err(stale)?;
        let meta = lock(&self.store).finish_write(written).map_err(stale)?;
        info!(
            %slot,
            bytes = meta.bytes,
            ms = started.elapsed().as_millis() as u64,
            "snapshot taken"
        );
        Ok(id_of(&meta))
    }

    fn read(&mut self, id: &SnapshotId, offset: u64, len: usize) -> Result<Bytes, FileError> {
        let mut open = lock(&self.open);
        let at = match open.iter().position(|(of, _)| of == id) {
            Some(at) => at,
            None => {
                let meta = self.find(id)?;
                let body = lock(&self.store).open_body(&meta).map_err(failed)?;
                if open.len() >= OPEN_BODIES_MAX {
                    open.remove(0);
                }
                open.push((*id, body));
                open.len() - 1
            }
        };
        // Most recently read last.
        let entry = open.remove(at);
        open.push(entry);
        let Some((_, body)) = open.last_mut() else {
            return Err(FileError::Failed("no open snapshot body".to_owned()));
        };
        let data = body.read_at(offset, len).map_err(failed)?;
        Ok(Bytes::from(data))
    }

    fn open_partial(&mut self, id: &SnapshotId) -> Result<u64, FileError> {
        let partial = Partial::open(&self.dir, id.slot.0, id.bytes, id.crc).map_err(failed)?;
        for old in partial.discarded() {
            info!(file = %old.name, bytes = old.bytes, "removed the partial file of a superseded snapshot transfer");
        }
        let have = partial.have();
        *lock(&self.partial) = Some(partial);
        Ok(have)
    }

    fn append_partial(
        &mut self,
        id: &SnapshotId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FileError> {
        self.with_partial(id, |p| p.append(offset, data))
    }

    fn install_partial(&mut self, id: &SnapshotId) -> Result<Store, FileError> {
        let store = Arc::clone(&self.store);
        let meta = self.with_partial(id, |p| p.install(&mut lock(&store)))?;
        *lock(&self.partial) = None;
        self.load(&meta).map_err(failed)
    }
}

/// The snapshot store's own damage report, when a checked read failed with
/// it (it names the file and says what to do).
fn unwrap_corrupt(e: kv::SnapshotError) -> Result<SnapshotError, kv::SnapshotError> {
    match e {
        kv::SnapshotError::Io(io) if io.kind() == io::ErrorKind::InvalidData => {
            match io
                .into_inner()
                .map(|inner| inner.downcast::<SnapshotError>())
            {
                Some(Ok(corrupt)) => Ok(*corrupt),
                Some(Err(other)) => Err(kv::SnapshotError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    other,
                ))),
                None => Err(kv::SnapshotError::Io(io::ErrorKind::InvalidData.into())),
            }
        }
        other => Err(other),
    }
}

/// Logs what opening the snapshot store cleaned up.
pub fn log_open_report(report: &OpenReport) {
    for removed in &report.removed_temp {
        warn!(
            file = %removed.name,
            bytes = removed.bytes,
            "removed the temporary file of a snapshot write a crash interrupted"
        );
    }
    for removed in &report.removed_old {
        info!(
            file = %removed.name,
            bytes = removed.bytes,
            "removed a snapshot beyond the ones kept"
        );
    }
}

/// Carries out the host's snapshot file operations off the replica task;
/// see the module notes. Dropping it waits for a snapshot being written and
/// for the operations queued before, so a node started again on the same
/// directory never finds one half done.
pub struct FileThreads {
    files: DiskSnapshots,
    done: UnboundedSender<FileDone>,
    /// To the file thread. Unbounded, but bounded in practice by the host:
    /// one snapshot install, and a window of chunks per transfer.
    ops: Option<Sender<FileOp>>,
    thread: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl FileThreads {
    /// Starts the file thread. What the operations come to goes to `done`;
    /// chunks read for peers go to `outbox`.
    pub fn start(
        files: DiskSnapshots,
        done: UnboundedSender<FileDone>,
        outbox: Outbox,
        span: tracing::Span,
    ) -> io::Result<FileThreads> {
        let (ops, inbox) = channel();
        let worker = files.clone();
        let to_task = done.clone();
        let thread = std::thread::Builder::new()
            .name("snapshot-files".to_owned())
            .spawn(move || {
                let _enter = span.enter();
                file_loop(worker, &inbox, &to_task, &outbox);
            })?;
        Ok(FileThreads {
            files,
            done,
            ops: Some(ops),
            thread: Some(thread),
            writer: None,
        })
    }

    /// Hands over one operation. Every operation the host must hear about
    /// is answered, also when it cannot be carried out.
    pub fn perform(&mut self, op: FileOp) {
        match op {
            FileOp::Save { slot, .. } => {
                if let Err(e) = self.save(op) {
                    error!(error = %e, "cannot start a thread to write a snapshot");
                    let result = Err(FileError::Failed(e.to_string()));
                    let _ = self.done.send(FileDone::Saved { slot, result });
                }
            }
            op => {
                let sent = self.ops.as_ref().map(|ops| ops.send(op));
                if let Some(Err(lost)) = sent {
                    // The file thread is gone (a bug: see the log above).
                    let error = FileError::Failed("the snapshot file thread stopped".to_owned());
                    let _ = self.done.send(failure(lost.0, error));
                }
            }
        }
    }

    fn save(&mut self, op: FileOp) -> io::Result<()> {
        if let Some(writer) = self.writer.take() {
            // The host saves one snapshot at a time: the last one is done.
            let _ = writer.join();
        }
        let mut files = self.files.clone();
        let done = self.done.clone();
        let span = tracing::Span::current();
        self.writer = Some(
            std::thread::Builder::new()
                .name("snapshot-writer".to_owned())
                .spawn(move || {
                    let _enter = span.enter();
                    if let Performed::Done(result) = perform(&mut files, op) {
                        // The task is gone only when the node stops.
                        let _ = done.send(result);
                    }
                })?,
        );
        Ok(())
    }
}

impl Drop for FileThreads {
    fn drop(&mut self) {
        self.ops.take();
        for thread in [self.thread.take(), self.writer.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
        }
    }
}

/// What the host hears of an operation that could not be carried out.
fn failure(op: FileOp, error: FileError) -> FileDone {
    match op {
        FileOp::Save { slot, .. } => FileDone::Saved {
            slot,
            result: Err(error),
        },
        FileOp::SendChunk { to, id, .. } => FileDone::Unreadable { to, id, error },
        FileOp::OpenPartial { id } => FileDone::Opened {
            id,
            result: Err(error),
        },
        FileOp::Append { id, .. } => FileDone::Failed { id, error },
        FileOp::Install { id } => FileDone::Installed {
            id,
            result: Err(error),
        },
    }
}

fn file_loop(
    mut files: DiskSnapshots,
    inbox: &Receiver<FileOp>,
    done: &UnboundedSender<FileDone>,
    outbox: &Outbox,
) {
    while let Ok(op) = inbox.recv() {
        match perform(&mut files, op) {
            Performed::Done(result) => {
                if done.send(result).is_err() {
                    return; // the node is stopping
                }
            }
            Performed::Send(to, frame) => {
                // A full link drops it; the sender's resend recovers.
                outbox.send_frame(to, frame);
            }
            Performed::Nothing => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly, which is its job
mod tests {
    use super::*;
    use kv::{Command, Request, SetCondition};

    struct Scratch(std::path::PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "parliament-node-snapshots-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        Scratch(path)
    }

    fn store_with(keys: u64) -> Store {
        let mut store = Store::new();
        for i in 0..keys {
            let request = Request::anonymous(Command::Set {
                key: bytes::Bytes::from(format!("k{i}")),
                value: bytes::Bytes::from(format!("v{i}")),
                condition: SetCondition::None,
                get: false,
            });
            store.apply(i + 1, &request);
        }
        store
    }

    #[test]
    fn a_saved_snapshot_loads_back_and_crosses_to_another_directory() {
        let a = scratch("roundtrip-a");
        let b = scratch("roundtrip-b");
        let (mut from, _) = DiskSnapshots::open(a.0.clone()).unwrap();
        let (mut to, _) = DiskSnapshots::open(b.0.clone()).unwrap();
        assert!(from.load_latest().unwrap().is_none());
        let store = store_with(2_000);
        let id = from.save(Slot(7), &store).unwrap();
        let (meta, loaded) = from.load_latest().unwrap().unwrap();
        assert_eq!(id_of(&meta), id);
        assert_eq!(loaded, store);
        // The host's operations, as the file thread carries them out.
        assert_eq!(to.open_partial(&id).unwrap(), 0);
        let mut offset = 0;
        while offset < id.bytes {
            let len = (id.bytes - offset).min(1_000) as usize;
            let data = from.read(&id, offset, len).unwrap();
            to.append_partial(&id, offset, &data).unwrap();
            offset += len as u64;
        }
        assert_eq!(to.install_partial(&id).unwrap(), store);
        assert_eq!(id_of(&to.load_latest().unwrap().unwrap().0), id);
    }

    #[test]
    fn a_snapshot_being_served_stays_readable_after_newer_ones_retire_it() {
        let s = scratch("retired");
        let (mut files, _) = DiskSnapshots::open(s.0.clone()).unwrap();
        let store = store_with(500);
        let first = files.save(Slot(1), &store).unwrap();
        let head = files.read(&first, 0, 100).unwrap();
        // Two newer snapshots: retention (two kept) deletes the first.
        files.save(Slot(2), &store_with(10)).unwrap();
        files.save(Slot(3), &store_with(20)).unwrap();
        assert!(!s.0.join(storage::snapshot::snapshot_file_name(1)).exists());
        let mut body = head.to_vec();
        let mut offset = 100;
        while offset < first.bytes {
            let len = (first.bytes - offset).min(1_000) as usize;
            body.extend_from_slice(&files.read(&first, offset, len).unwrap());
            offset += len as u64;
        }
        assert_eq!(codec::crc32c(&body), first.crc, "the whole body, intact");
    }

    #[test]
    fn a_damaged_snapshot_is_an_error_that_names_the_file_and_says_rejoin() {
        let s = scratch("damaged");
        let (mut files, _) = DiskSnapshots::open(s.0.clone()).unwrap();
        files.save(Slot(3), &store_with(50)).unwrap();
        let meta = files.load_latest().unwrap().unwrap().0;
        // Flip a byte in the middle of the body.
        let mut bytes = std::fs::read(&meta.path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(&meta.path, &bytes).unwrap();
        let (files, _) = DiskSnapshots::open(s.0.clone()).unwrap();
        let err = files.load_latest().unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&meta.path.display().to_string()), "{text}");
        assert!(text.contains("rejoin"), "{text}");
    }

    /// Prints what cloning a store costs the replica task; a measurement,
    /// not a test: `cargo test -p node --lib cloning_a_store -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn cloning_a_store_of_a_million_keys() {
        let mut store = Store::new();
        let keys = 1_000_000u64;
        for i in 0..keys {
            let request = Request::anonymous(Command::Set {
                key: bytes::Bytes::from(format!("key:{i:012}")),
                value: bytes::Bytes::from(vec![b'v'; 100]),
                condition: SetCondition::None,
                get: false,
            });
            store.apply(i + 1, &request);
        }
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let clone = store.clone();
            let took = started.elapsed();
            eprintln!(
                "cloned {} keys in {took:?} ({:.0} ns a key)",
                clone.len(),
                took.as_nanos() as f64 / keys as f64
            );
        }
    }
}
