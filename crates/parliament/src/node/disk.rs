//! The disk thread: makes the replica's records durable, in the order they
//! were handed out, and reports how far it got.
//!
//! The replica task hands each `Ready`'s records over and goes on at once:
//! it keeps stepping messages, answering writes whose slots are chosen and
//! sending the accepts a leader may send before its own record lands (see
//! `paxos::replica`'s output contract). Whatever arrives while one write and
//! fdatasync run is folded into the next one, so the disk does one sync per
//! round trip of the disk, however many turns the replica task took
//! meanwhile. The replica hears of each completed sync through a `watch`
//! (the number of the last durable record), which never blocks this thread.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use paxos::replica::Record;
use tokio::sync::{oneshot, watch};
use tracing::error;

use crate::metrics::Metrics;
use crate::storage::replica::{FileStorage, ReplicaStorage, StorageError};

/// Batches of records queued for the disk thread before the replica task
/// waits for it: a disk that far behind pushes back on the whole node.
const QUEUED_BATCHES_MAX: usize = 1024;
/// Batches folded into one write and sync.
const BATCHES_PER_SYNC_MAX: usize = 256;

struct Batch {
    records: Vec<Record>,
    /// The number of the batch's last record.
    end: u64,
}

/// The handle the replica task holds.
pub struct Disk {
    batches: Option<SyncSender<Batch>>,
    /// The number of the last record known durable.
    pub durable: watch::Receiver<u64>,
    /// The write or sync that failed; the disk thread has stopped.
    pub failed: oneshot::Receiver<StorageError>,
    thread: Option<JoinHandle<()>>,
}

impl Disk {
    /// Starts the thread that owns `storage`, within `span` for its logs.
    pub fn start(
        storage: FileStorage,
        metrics: Arc<Metrics>,
        span: tracing::Span,
        id: u64,
    ) -> std::io::Result<Disk> {
        let (tx, rx) = sync_channel(QUEUED_BATCHES_MAX);
        let (durable_tx, durable_rx) = watch::channel(0);
        let (failed_tx, failed_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("disk-{id}"))
            .spawn(move || {
                let _enter = span.enter();
                if let Err(e) = write_loop(storage, &rx, &durable_tx, &metrics) {
                    error!(error = %e, "cannot persist the replica's records; stopping");
                    let _ = failed_tx.send(e);
                }
            })?;
        Ok(Disk {
            batches: Some(tx),
            durable: durable_rx,
            failed: failed_rx,
            thread: Some(thread),
        })
    }

    /// Queues `records` (numbered up to `end`) for the disk. Waits only if
    /// the disk is far behind. An error means the disk thread has stopped:
    /// the reason arrives on `failed`.
    pub fn write(&self, records: Vec<Record>, end: u64) -> Result<(), ()> {
        match &self.batches {
            Some(tx) => tx.send(Batch { records, end }).map_err(|_| ()),
            None => Err(()),
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        // The thread finishes what it was given, then sees the channel close.
        self.batches.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop(
    mut storage: FileStorage,
    batches: &Receiver<Batch>,
    durable: &watch::Sender<u64>,
    metrics: &Metrics,
) -> Result<(), StorageError> {
    while let Ok(first) = batches.recv() {
        let mut records = first.records;
        let mut end = first.end;
        for _ in 1..BATCHES_PER_SYNC_MAX {
            match batches.try_recv() {
                Ok(batch) => {
                    records.extend(batch.records);
                    end = batch.end;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let started = std::time::Instant::now();
        storage.append(&records)?;
        metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        durable.send_replace(end);
    }
    Ok(())
}
