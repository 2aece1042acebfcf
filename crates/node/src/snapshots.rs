//! Snapshots of the node's key-value store: taking them, loading the latest
//! at start, and fetching a peer's when the log this node misses is gone.
//!
//! The replica task decides, and nothing here touches the replica; the
//! slow parts run elsewhere and report back through one channel of
//! [`SnapshotEvent`]s:
//!
//! | step | where | then |
//! |---|---|---|
//! | the policy says a snapshot is due | replica task: clones the store at the applied slot | a writer thread streams the clone into `DIR/snapshots` (temp file, fsync, rename, directory fsync) |
//! | the snapshot is durable | writer thread: publishes it for peers | [`SnapshotEvent::Written`]; the task calls `Replica::compact(slot)`, whose `Compact` record lets the log drop its old segments |
//! | `Ready::snapshot_needed` | replica task: a [`FetchRequest`] to the fetcher | the fetcher streams the peer's snapshot into the store (see `net::snapshot`), then reads it into a store |
//! | a fetched snapshot is installed | fetcher: publishes it for peers | [`SnapshotEvent::Fetched`]; the task swaps its store and calls `Replica::install_snapshot(slot)`, unless it caught up meanwhile |
//! | start | `Node::start`: loads the newest snapshot | `Replica::restore(config, durable, snapshot slot)` and the log above it is applied again |
//!
//! The order is the one the simulator checks: a snapshot is durable before
//! the log below it may go, so a crash in between leaves a snapshot ahead of
//! the log, which `Replica::restore` trusts.
//!
//! # The cost of the clone
//!
//! The replica task clones the store so that serializing it, which takes
//! far longer, does not hold up the loop. Keys and values are
//! reference-counted `Bytes`, so the clone copies the ordered map's nodes
//! and bumps reference counts, no key or value bytes. It is still the one
//! pause a snapshot causes: about 140 ns a key on a loaded 2-core machine
//! (`cloning_a_store_of_a_million_keys` below measures it), so 0.14 s per
//! million keys in which the loop sends no heartbeat. Followers wait at
//! least `election_ticks` (200 ms by default) before they suspect the
//! leader, so with the default timings a store of up to about a million
//! keys snapshots without an election; a larger one needs longer ticks
//! (`--tick-ms`) until the store gets a persistent map whose clone costs
//! nothing. The clone also keeps its own copy of the map's nodes until the
//! writer is done, so taking a snapshot needs that much spare memory.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paxos::NodeId;
use paxos::replica::Slot;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::net::snapshot::{FetchTarget, SnapshotClient, SnapshotLinkError, SnapshotSource};
use kv::Store;
use storage::snapshot::{OpenReport, SnapshotError, SnapshotMeta, SnapshotStore};

/// Events from the writer thread and the fetcher to the replica task. At
/// most one write and one fetch are under way, each with at most one event
/// unread, so the channel never fills.
pub const SNAPSHOT_EVENTS_MAX: usize = 8;

/// What the replica task hears about snapshots.
#[derive(Debug)]
pub enum SnapshotEvent {
    /// A snapshot of the store at `slot` was written (or failed to be).
    Written {
        slot: Slot,
        result: Result<SnapshotMeta, SnapshotError>,
    },
    /// A peer's snapshot was fetched, installed in the snapshot store and
    /// read into `store`.
    Fetched {
        from: NodeId,
        meta: SnapshotMeta,
        store: Box<Store>,
    },
}

/// "Fetch `peer`'s snapshot; it has compacted everything up to `slot`."
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    pub peer: NodeId,
    pub slot: Slot,
}

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

/// The node's snapshot store, shared by the replica task's writer, the
/// fetcher, and (through [`Snapshots::source`]) the transport that serves
/// snapshots to peers.
#[derive(Debug)]
pub struct Snapshots {
    store: Arc<Mutex<SnapshotStore>>,
    latest: watch::Sender<Option<SnapshotMeta>>,
}

impl Snapshots {
    /// Wraps an opened store.
    pub fn new(store: SnapshotStore) -> Snapshots {
        let latest = watch::Sender::new(store.latest().cloned());
        Snapshots {
            store: Arc::new(Mutex::new(store)),
            latest,
        }
    }

    /// What peers are served: the newest snapshot, always up to date.
    pub fn latest(&self) -> watch::Receiver<Option<SnapshotMeta>> {
        self.latest.subscribe()
    }

    /// Where fetched snapshots go.
    pub fn target(&self) -> FetchTarget {
        let store = self.lock();
        FetchTarget {
            dir: store.dir().to_path_buf(),
            store: Arc::clone(&self.store),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SnapshotStore> {
        // A poisoned lock only means a thread panicked while holding it;
        // the store's own state is updated only after each durable step.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the snapshot of `store` at `slot` and publishes it. Blocking.
    pub fn write(&self, slot: Slot, store: &Store) -> Result<SnapshotMeta, SnapshotError> {
        let mut files = self.lock();
        let meta = files.write(slot.0, |mut w| store.snapshot_to(&mut w))?;
        self.latest.send_replace(files.latest().cloned());
        Ok(meta)
    }

    /// Publishes the store's newest snapshot (after a fetch installed one).
    fn publish(&self) {
        let latest = self.lock().latest().cloned();
        self.latest.send_replace(latest);
    }

    /// Reads the store a snapshot holds. Blocking.
    pub fn read(&self, meta: &SnapshotMeta) -> Result<Store, LoadError> {
        let mut reader = self.lock().open_reader(meta)?;
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
        let Some(meta) = self.lock().latest().cloned() else {
            return Ok(None);
        };
        let store = self.read(&meta)?;
        Ok(Some((meta, store)))
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

/// Starts writing the snapshot of `store` (a clone the task handed over)
/// at `slot` on a thread of its own; its outcome arrives as
/// [`SnapshotEvent::Written`].
pub fn spawn_write(
    snapshots: Arc<Snapshots>,
    slot: Slot,
    store: Store,
    events: mpsc::Sender<SnapshotEvent>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name(format!("snapshot-{slot}"))
        .spawn(move || {
            let _enter = span.enter();
            let started = std::time::Instant::now();
            let result = snapshots.write(slot, &store);
            drop(store);
            if let Ok(meta) = &result {
                info!(
                    %slot,
                    bytes = meta.bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "snapshot taken"
                );
            }
            // Never blocks: see SNAPSHOT_EVENTS_MAX. Fails only when the
            // task is gone, which then has no use for it.
            let _ = events.blocking_send(SnapshotEvent::Written { slot, result });
        })
}

/// Fetches snapshots one at a time, on the transport's runtime, for the
/// replica task; see the module notes.
pub struct Fetcher {
    requests: mpsc::Sender<FetchRequest>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// How long the fetcher waits after a failed transfer before it tries
/// again, at first and at most.
#[derive(Clone, Copy, Debug)]
pub struct FetchBackoff {
    pub min: Duration,
    pub max: Duration,
}

impl Fetcher {
    /// Starts the fetcher on the current runtime.
    pub fn start(
        client: SnapshotClient,
        snapshots: Arc<Snapshots>,
        events: mpsc::Sender<SnapshotEvent>,
        backoff: FetchBackoff,
    ) -> Fetcher {
        // One request waits while a fetch runs; the task asks again often
        // (each catch-up round), so dropping the rest loses nothing.
        let (requests, inbox) = mpsc::channel(1);
        let (stop, stopped) = watch::channel(false);
        let work = FetchLoop {
            client,
            snapshots,
            events,
            backoff,
            inbox,
            stopped,
        };
        let span = tracing::Span::current();
        let task = tokio::spawn(tracing::Instrument::instrument(work.run(), span));
        Fetcher {
            requests,
            stop,
            task: Some(task),
        }
    }

    /// Where the replica task sends its requests (with `try_send`).
    pub fn requests(&self) -> mpsc::Sender<FetchRequest> {
        self.requests.clone()
    }

    /// Stops the fetcher and waits for it: a chunk being written or a
    /// snapshot being installed finishes first, so nothing touches the
    /// snapshot directory afterwards.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        // Without waiting: the task stops at its next network wait.
        self.stop.send_replace(true);
    }
}

struct FetchLoop {
    client: SnapshotClient,
    snapshots: Arc<Snapshots>,
    events: mpsc::Sender<SnapshotEvent>,
    backoff: FetchBackoff,
    inbox: mpsc::Receiver<FetchRequest>,
    stopped: watch::Receiver<bool>,
}

impl FetchLoop {
    async fn run(mut self) {
        let target = self.snapshots.target();
        let mut not_before = Instant::now();
        let mut backoff = self.backoff.min;
        loop {
            let request = tokio::select! {
                biased;
                () = stop_signal(&mut self.stopped) => return,
                request = self.inbox.recv() => match request {
                    Some(request) => request,
                    None => return,
                },
            };
            if Instant::now() < not_before {
                continue;
            }
            let FetchRequest { peer, slot } = request;
            info!(
                peer,
                %slot, "the log this node misses is compacted at a peer; fetching its snapshot"
            );
            let fetched = self
                .client
                .fetch(peer, slot.0, &target, &mut self.stopped)
                .await;
            match fetched {
                Ok(meta) => {
                    backoff = self.backoff.min;
                    self.snapshots.publish();
                    if !self.deliver(peer, meta).await {
                        return;
                    }
                }
                Err(SnapshotLinkError::Cancelled) => return,
                Err(e) => {
                    warn!(
                        peer,
                        %slot,
                        error = %e,
                        retry_ms = backoff.as_millis() as u64,
                        "fetching a snapshot failed; what arrived is kept for the next try"
                    );
                    not_before = Instant::now() + backoff;
                    backoff = (backoff * 2).min(self.backoff.max);
                }
            }
            // Requests made while this fetch ran are stale.
            while self.inbox.try_recv().is_ok() {}
        }
    }

    /// Reads the installed snapshot and hands it to the replica task. False
    /// when the task is gone.
    async fn deliver(&mut self, from: NodeId, meta: SnapshotMeta) -> bool {
        let snapshots = Arc::clone(&self.snapshots);
        let reading = meta.clone();
        let read = tokio::task::spawn_blocking(move || snapshots.read(&reading)).await;
        match read {
            Ok(Ok(store)) => {
                let event = SnapshotEvent::Fetched {
                    from,
                    meta,
                    store: Box::new(store),
                };
                self.events.send(event).await.is_ok()
            }
            Ok(Err(e)) => {
                // It passed its checksum, so the peer's own store wrote
                // something this build cannot read.
                error!(error = %e, "a snapshot received from a peer cannot be loaded");
                true
            }
            Err(e) => {
                error!(error = %e, "reading a received snapshot failed");
                true
            }
        }
    }
}

/// Resolves when `stop` turns true or its sender is gone.
async fn stop_signal(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// What the transport needs to serve this node's snapshots.
pub fn source(
    snapshots: &Snapshots,
    stats: Arc<crate::net::snapshot::TransferStats>,
) -> SnapshotSource {
    SnapshotSource {
        latest: snapshots.latest(),
        stats,
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
    fn a_written_snapshot_is_published_and_loads_back() {
        let s = scratch("roundtrip");
        let (files, _) = SnapshotStore::open(&s.0).unwrap();
        let snapshots = Snapshots::new(files);
        let latest = snapshots.latest();
        assert!(snapshots.load_latest().unwrap().is_none());
        let store = store_with(100);
        let meta = snapshots.write(Slot(7), &store).unwrap();
        assert_eq!(latest.borrow().as_ref(), Some(&meta));
        let (loaded_meta, loaded) = snapshots.load_latest().unwrap().unwrap();
        assert_eq!(loaded_meta.slot, 7);
        assert_eq!(loaded, store);
    }

    #[test]
    fn a_damaged_snapshot_is_an_error_that_names_the_file_and_says_rejoin() {
        let s = scratch("damaged");
        let (files, _) = SnapshotStore::open(&s.0).unwrap();
        let snapshots = Snapshots::new(files);
        let meta = snapshots.write(Slot(3), &store_with(50)).unwrap();
        // Flip a byte in the middle of the body.
        let mut bytes = std::fs::read(&meta.path).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(&meta.path, &bytes).unwrap();
        let (files, _) = SnapshotStore::open(&s.0).unwrap();
        let err = Snapshots::new(files).load_latest().unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&meta.path.display().to_string()), "{text}");
        assert!(text.contains("rejoin"), "{text}");
    }

    /// Prints what cloning a store costs the replica loop; a measurement,
    /// not a test: `cargo test -p parliament --lib cloning_a_store -- --ignored --nocapture`.
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
