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
use storage::replica::{ReplicaStorage, StorageError};

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
    pub fn start<S: ReplicaStorage + Send + 'static>(
        storage: S,
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
                let result = write_loop(storage, &rx, &durable_tx, &metrics);
                // Refuse further batches before reporting why.
                drop(rx);
                if let Err(e) = result {
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

fn write_loop<S: ReplicaStorage>(
    mut storage: S,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly, which is its job
mod tests {
    use std::sync::Mutex;
    use std::sync::mpsc::{Receiver as StdReceiver, Sender, channel};
    use std::time::Duration;

    use paxos::Ballot;
    use paxos::replica::Durable;

    use super::*;
    use storage::faulty::{FailPoint, FaultyStorage};
    use storage::replica::MemoryStorage;

    fn promise(round: u64) -> Record {
        Record::Promise(Ballot::new(round, 1))
    }

    async fn durable_reaches(disk: &mut Disk, end: u64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while *disk.durable.borrow_and_update() < end {
                disk.durable.changed().await.unwrap();
            }
        })
        .await
        .unwrap();
    }

    /// Counts appends, and holds the first one until told to go on.
    struct Gated {
        inner: MemoryStorage,
        appends: Arc<Mutex<Vec<usize>>>,
        /// Told when the first append starts; then waits for the gate.
        started: Option<Sender<()>>,
        gate: Option<StdReceiver<()>>,
    }

    impl ReplicaStorage for Gated {
        fn append(&mut self, records: &[Record]) -> Result<(), StorageError> {
            if let (Some(started), Some(gate)) = (self.started.take(), self.gate.take()) {
                started.send(()).unwrap();
                gate.recv().unwrap();
            }
            self.appends.lock().unwrap().push(records.len());
            self.inner.append(records)
        }

        fn durable(&self) -> &Durable {
            self.inner.durable()
        }
    }

    #[tokio::test]
    async fn batches_that_arrive_during_a_sync_share_the_next_one() {
        let appends = Arc::new(Mutex::new(Vec::new()));
        let (started_tx, started) = channel();
        let (go, gate) = channel();
        let storage = Gated {
            inner: MemoryStorage::default(),
            appends: Arc::clone(&appends),
            started: Some(started_tx),
            gate: Some(gate),
        };
        let metrics = Arc::new(Metrics::detached());
        let mut disk = Disk::start(storage, metrics, tracing::Span::none(), 1).unwrap();
        disk.write(vec![promise(1)], 1).unwrap();
        // The first append is underway (and held) before the rest arrive.
        started.recv_timeout(Duration::from_secs(10)).unwrap();
        disk.write(vec![promise(2)], 2).unwrap();
        disk.write(vec![promise(3), promise(4)], 4).unwrap();
        disk.write(vec![promise(5)], 5).unwrap();
        assert_eq!(*disk.durable.borrow(), 0, "nothing durable while held");
        go.send(()).unwrap();
        durable_reaches(&mut disk, 5).await;
        assert_eq!(
            *appends.lock().unwrap(),
            vec![1, 4],
            "one append for the three queued batches"
        );
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_and_nothing_after_it_is_durable() {
        let mut storage = FaultyStorage::new(MemoryStorage::default(), 7);
        storage.fail_after(1, FailPoint::BeforeWrite);
        let metrics = Arc::new(Metrics::detached());
        let mut disk = Disk::start(storage, metrics, tracing::Span::none(), 1).unwrap();
        disk.write(vec![promise(1)], 1).unwrap();
        durable_reaches(&mut disk, 1).await;
        // The disk thread may already be gone when these are queued.
        let _ = disk.write(vec![promise(2)], 2);
        let error = tokio::time::timeout(Duration::from_secs(10), &mut disk.failed)
            .await
            .unwrap();
        assert!(error.is_ok(), "the failure is reported, not dropped");
        assert_eq!(*disk.durable.borrow(), 1);
        assert!(disk.write(vec![promise(3)], 3).is_err());
    }
}
