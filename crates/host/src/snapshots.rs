//! The host's snapshots: when to take one, fetching a peer's when the log
//! this replica misses is gone, and serving its own to peers.
//!
//! | step | the host | then |
//! |---|---|---|
//! | the policy says a snapshot is due | [`FileOp::Save`] of a clone of the store at the applied slot | [`FileDone::Saved`]: `Replica::compact(slot)`, whose `Compact` record lets the log drop what is below |
//! | `Ready::snapshot_needed` | a `Request` to that peer | an `Offer`: [`FileOp::OpenPartial`], then acks and chunks, each chunk's new bytes a [`FileOp::Append`] |
//! | the body is whole | [`FileOp::Install`] | [`FileDone::Installed`]: the store is swapped and `Replica::install_snapshot(slot)`, unless the log caught up meanwhile |
//! | a peer's `Request` | an `Offer` of the newest snapshot | each ack lets more chunks go: [`FileOp::SendChunk`] |
//!
//! A snapshot is durable before the log below it may go, so a crash in
//! between leaves a snapshot ahead of the log, which `Replica::restore`
//! trusts. A fetch that fails waits before the next (doubling up to eight
//! times the first wait); one that stalls is abandoned after the idle time
//! and resumed from its partial file by the next.

use std::collections::BTreeMap;

use kv::Store;
use paxos::NodeId;
use paxos::replica::{Configs, Slot};
use tracing::{debug, error, info, warn};

use crate::Host;
use crate::config::{SnapshotPolicy, TransferConfig};
use crate::files::{FileDone, FileError, FileOp};
use crate::transfer::{
    AckStatus, ChunkAck, ChunkOutcome, Decline, Receiver, Sender, SnapshotFrame, SnapshotId,
};

/// A fetch of a peer's snapshot, from the request to the install.
#[derive(Debug)]
struct Fetch {
    peer: NodeId,
    min_slot: Slot,
    /// When it last moved forward.
    progress: u64,
    /// When the receiver last said where it stands (a request or an ack):
    /// said again after `resend_ticks` of silence, in case it was lost.
    spoke: u64,
    phase: Phase,
}

#[derive(Debug)]
enum Phase {
    /// Asked for a snapshot, waiting for the offer.
    Asked,
    /// Opening the partial file of the offered snapshot.
    Opening(SnapshotId),
    /// Chunks flowing in.
    Receiving(Receiver),
    /// The body is whole; checking and installing it.
    Installing(Receiver),
}

/// A transfer served to one peer.
#[derive(Debug)]
struct Serving {
    sender: Sender,
    /// When the peer was last heard from.
    heard: u64,
    /// When to send again from the last acknowledged offset.
    resend_at: u64,
    /// Chunks go only once the receiver said where to start.
    started: bool,
}

/// The snapshot state of a host.
#[derive(Debug)]
pub(crate) struct Snapshots {
    policy: SnapshotPolicy,
    transfer: TransferConfig,
    /// Log entries (slots) and command bytes applied since the last
    /// snapshot was started or installed.
    entries_since: u64,
    bytes_since: u64,
    /// The slot of the snapshot being saved.
    saving: Option<Slot>,
    /// A snapshot of at least this slot was asked for outside the policy
    /// (a backup); cleared once one is held, or when saving one fails.
    wanted: Option<Slot>,
    /// The newest snapshot held, which peers are offered.
    latest: Option<SnapshotId>,
    fetch: Option<Fetch>,
    /// No fetch starts before this tick.
    fetch_not_before: u64,
    fetch_backoff: u64,
    serving: BTreeMap<NodeId, Serving>,
    /// Body bytes that may still be sent when a rate is set; refilled
    /// every tick.
    send_budget: i64,
}

impl Snapshots {
    pub fn new(
        policy: SnapshotPolicy,
        transfer: TransferConfig,
        latest: Option<SnapshotId>,
    ) -> Snapshots {
        Snapshots {
            policy,
            transfer,
            entries_since: 0,
            bytes_since: 0,
            saving: None,
            wanted: None,
            latest,
            fetch: None,
            fetch_not_before: 0,
            fetch_backoff: transfer.fetch_retry_ticks,
            serving: BTreeMap::new(),
            send_budget: 0,
        }
    }

    pub fn latest(&self) -> Option<SnapshotId> {
        self.latest
    }

    pub fn applied_entry(&mut self) {
        self.entries_since += 1;
    }

    pub fn applied_bytes(&mut self, bytes: u64) {
        self.bytes_since += bytes;
    }

    fn newer(&mut self, id: SnapshotId) {
        if self.latest.is_none_or(|l| l.slot < id.slot) {
            self.latest = Some(id);
        }
    }
}

impl<T> Host<T> {
    /// Starts a snapshot of the store at the applied slot when the policy
    /// says one is due and none is being saved.
    pub(crate) fn maybe_snapshot(&mut self) {
        let s = &mut self.snapshots;
        let held = s.latest.map_or(Slot::ZERO, |l| l.slot);
        if s.wanted.is_some_and(|w| held >= w) {
            s.wanted = None;
        }
        let wanted = s.wanted.is_some_and(|w| self.applied >= w);
        if s.saving.is_some()
            || !(wanted || s.policy.should_snapshot(s.entries_since, s.bytes_since))
        {
            return;
        }
        let slot = self.applied;
        s.saving = Some(slot);
        s.entries_since = 0;
        s.bytes_since = 0;
        // Keys and values are shared, so the clone copies the map's nodes
        // only; the shell writes it out elsewhere.
        let mut store = Box::new(self.store.clone());
        let configs = self.replica.snapshot_configs(slot);
        store.set_cluster(crate::cluster::encode(&configs));
        debug!(%slot, "taking a snapshot");
        self.out.files.push(FileOp::Save { slot, store });
    }

    /// Asks for a snapshot of the applied slot or a later one, whatever the
    /// policy says (a backup wants the state as of now on disk). It is
    /// taken at the end of this turn, or once the one being saved is done;
    /// [`Host::latest_snapshot`] shows when it is held, and
    /// `HostStats::snapshot_failures` counts a save that failed (the wish
    /// is then dropped, not retried). Returns the slot it will hold at
    /// least.
    pub fn want_snapshot(&mut self) -> Slot {
        let slot = self.applied;
        let s = &mut self.snapshots;
        s.wanted = Some(s.wanted.map_or(slot, |w| w.max(slot)));
        slot
    }

    /// Timers of the transfers, once a tick.
    pub(crate) fn snapshots_tick(&mut self) {
        let now = self.now;
        let t = self.snapshots.transfer;
        if let Some(fetch) = &mut self.snapshots.fetch {
            let peer = fetch.peer;
            // Local file work always answers, so its phases wait far longer
            // before they are given up (a lost answer must not wedge the
            // fetch for good).
            let waits_for_peer = matches!(fetch.phase, Phase::Asked | Phase::Receiving(_));
            let patience = if waits_for_peer {
                t.idle_ticks
            } else {
                t.idle_ticks.saturating_mul(10)
            };
            if now >= fetch.progress + patience {
                self.fetch_failed(&format!("nothing came of it for {patience} ticks"));
            } else if now >= fetch.spoke + t.resend_ticks {
                // Our request or ack may have been lost: say it again.
                let again = match &fetch.phase {
                    Phase::Asked => Some(SnapshotFrame::Request {
                        min_slot: fetch.min_slot,
                    }),
                    Phase::Receiving(receiver) => Some(SnapshotFrame::Ack(receiver.ack())),
                    Phase::Opening(_) | Phase::Installing(_) => None,
                };
                if let Some(frame) = again {
                    fetch.spoke = now;
                    self.out.frames.push((peer, frame));
                }
            }
        }
        // The budget may go below zero by most of one chunk; it refills by
        // one tick's worth, up to one tick's worth.
        let rate = i64::try_from(t.send_bytes_per_tick).unwrap_or(i64::MAX);
        self.snapshots.send_budget = self.snapshots.send_budget.saturating_add(rate).min(rate);
        let mut idle = Vec::new();
        for (&peer, serving) in &mut self.snapshots.serving {
            if now >= serving.heard + t.idle_ticks {
                idle.push(peer);
            } else if serving.started && now >= serving.resend_at {
                debug!(
                    peer,
                    acked = serving.sender.acked(),
                    "no ack in time; sending again from the last one"
                );
                serving.sender.resend();
                serving.resend_at = now + t.resend_ticks;
            }
        }
        for peer in idle {
            info!(peer, "a snapshot transfer to a peer went quiet; dropped");
            self.snapshots.serving.remove(&peer);
        }
        let peers: Vec<NodeId> = self.snapshots.serving.keys().copied().collect();
        for peer in peers {
            self.send_chunks(peer);
        }
    }

    /// The replica needs slots `peer` compacted away: fetch its snapshot,
    /// unless a fetch is under way or a failed one is waiting out its
    /// backoff.
    pub(crate) fn start_fetch(&mut self, peer: NodeId, min_slot: Slot) {
        let s = &mut self.snapshots;
        if s.fetch.is_some() || self.now < s.fetch_not_before {
            return;
        }
        info!(
            peer,
            %min_slot, "the log this node misses is compacted at a peer; fetching its snapshot"
        );
        s.fetch = Some(Fetch {
            peer,
            min_slot,
            progress: self.now,
            spoke: self.now,
            phase: Phase::Asked,
        });
        self.out
            .frames
            .push((peer, SnapshotFrame::Request { min_slot }));
    }

    fn fetch_failed(&mut self, why: &str) {
        let s = &mut self.snapshots;
        if let Some(fetch) = s.fetch.take() {
            warn!(
                peer = fetch.peer,
                retry_ticks = s.fetch_backoff,
                "fetching a snapshot failed ({why}); what arrived is kept for the next try"
            );
        }
        s.fetch_not_before = self.now + s.fetch_backoff;
        let max = s.transfer.fetch_retry_ticks.max(1) * 8;
        s.fetch_backoff = (s.fetch_backoff * 2).clamp(1, max);
    }

    /// A snapshot transfer frame from `from`.
    pub fn snapshot_frame(&mut self, from: NodeId, frame: SnapshotFrame) {
        if self.failed {
            return;
        }
        match frame {
            SnapshotFrame::Request { min_slot } => self.serve(from, min_slot),
            SnapshotFrame::Ack(ack) => self.on_ack(from, &ack),
            SnapshotFrame::Offer(id) => self.on_offer(from, id),
            SnapshotFrame::Decline(reason) => {
                let waiting = self.snapshots.fetch.as_ref().is_some_and(|f| {
                    f.peer == from && matches!(f.phase, Phase::Asked | Phase::Receiving(_))
                });
                if waiting {
                    self.fetch_failed(match reason {
                        Decline::NoSnapshot => "the peer has no snapshot that recent",
                        Decline::Busy => "the peer serves as many transfers as it may",
                    });
                }
            }
            SnapshotFrame::Chunk(chunk) => self.on_chunk(from, &chunk),
        }
    }

    fn on_offer(&mut self, from: NodeId, id: SnapshotId) {
        let now = self.now;
        let Some(fetch) = &mut self.snapshots.fetch else {
            return;
        };
        if fetch.peer != from || !matches!(fetch.phase, Phase::Asked) {
            return;
        }
        if id.slot < fetch.min_slot {
            let why = format!("it offered slot {}, below {}", id.slot, fetch.min_slot);
            self.fetch_failed(&why);
            return;
        }
        fetch.phase = Phase::Opening(id);
        fetch.progress = now;
        self.out.files.push(FileOp::OpenPartial { id });
    }

    fn on_chunk(&mut self, from: NodeId, chunk: &crate::transfer::Chunk) {
        let now = self.now;
        let Some(fetch) = &mut self.snapshots.fetch else {
            return;
        };
        let Phase::Receiving(receiver) = &mut fetch.phase else {
            return;
        };
        if fetch.peer != from {
            return;
        }
        let offset = receiver.next_offset();
        let (outcome, ack) = receiver.on_chunk(chunk);
        if outcome == ChunkOutcome::Foreign {
            return;
        }
        self.stats.transfer_bytes_received += chunk.data.len() as u64;
        fetch.progress = now;
        let id = *receiver.id();
        match outcome {
            // Acknowledged once the bytes are in the file (FileDone::Appended).
            ChunkOutcome::Append(data) => self.out.files.push(FileOp::Append { id, offset, data }),
            _ => {
                fetch.spoke = now;
                self.out.frames.push((from, SnapshotFrame::Ack(ack)));
            }
        }
        if receiver.is_whole()
            && let Phase::Receiving(receiver) = std::mem::replace(&mut fetch.phase, Phase::Asked)
        {
            fetch.phase = Phase::Installing(receiver);
            self.out.files.push(FileOp::Install { id });
        }
    }

    /// The outcome of a snapshot file operation.
    pub fn file_done(&mut self, done: FileDone) {
        if self.failed {
            return;
        }
        match done {
            FileDone::Saved { slot, result } => self.on_saved(slot, result),
            FileDone::Opened { id, result } => self.on_opened(id, result),
            FileDone::Installed { id, result } => self.on_installed(id, result),
            FileDone::Appended { id, end } => self.on_appended(id, end),
            FileDone::Failed { id, error } => {
                if self.fetching(&id) {
                    self.fetch_failed(&format!("cannot write the partial file: {error}"));
                }
            }
            FileDone::Unreadable { to, id, error } => {
                if self
                    .snapshots
                    .serving
                    .get(&to)
                    .is_some_and(|s| *s.sender.id() == id)
                {
                    warn!(peer = to, error = %error, "cannot read the snapshot a peer is fetching");
                    self.snapshots.serving.remove(&to);
                    let decline = SnapshotFrame::Decline(Decline::NoSnapshot);
                    self.out.frames.push((to, decline));
                }
            }
        }
    }

    /// True if the fetch under way is of `id`.
    fn fetching(&self, id: &SnapshotId) -> bool {
        self.snapshots
            .fetch
            .as_ref()
            .is_some_and(|f| match &f.phase {
                Phase::Asked => false,
                Phase::Opening(of) => of == id,
                Phase::Receiving(r) | Phase::Installing(r) => r.id() == id,
            })
    }

    fn on_saved(&mut self, slot: Slot, result: Result<SnapshotId, FileError>) {
        if self.snapshots.saving == Some(slot) {
            self.snapshots.saving = None;
        }
        match result {
            Ok(id) => {
                self.stats.snapshots_taken += 1;
                self.snapshots.newer(id);
                // Durable: the log below it may go.
                self.replica.compact(slot);
            }
            Err(FileError::Stale { newest, .. }) => {
                debug!(
                    %slot,
                    %newest, "a newer snapshot was installed meanwhile; this one is moot"
                );
            }
            Err(e) => {
                error!(
                    %slot,
                    error = %e,
                    "cannot take a snapshot; the log keeps growing until one succeeds"
                );
                self.stats.snapshot_failures += 1;
                self.snapshots.wanted = None;
            }
        }
    }

    /// Bytes are in the partial file: the sender may send more.
    fn on_appended(&mut self, id: SnapshotId, end: u64) {
        let now = self.now;
        let Some(fetch) = &mut self.snapshots.fetch else {
            return;
        };
        if !matches!(&fetch.phase, Phase::Receiving(r) | Phase::Installing(r) if *r.id() == id) {
            return;
        }
        fetch.progress = now;
        fetch.spoke = now;
        let ack = ChunkAck {
            slot: id.slot,
            next_offset: end,
            status: AckStatus::Progress,
        };
        self.out.frames.push((fetch.peer, SnapshotFrame::Ack(ack)));
    }

    fn on_opened(&mut self, id: SnapshotId, result: Result<u64, FileError>) {
        let now = self.now;
        let Some(fetch) = &mut self.snapshots.fetch else {
            return;
        };
        if !matches!(&fetch.phase, Phase::Opening(of) if *of == id) {
            return;
        }
        let have = match result {
            Ok(have) => have,
            Err(e) => {
                self.fetch_failed(&format!("cannot open the partial file: {e}"));
                return;
            }
        };
        let receiver = Receiver::new(id, have);
        info!(
            peer = fetch.peer,
            slot = %id.slot,
            bytes = id.bytes,
            resumed_from = receiver.resumed_from(),
            "receiving a snapshot"
        );
        if receiver.resumed_from() > 0 {
            self.stats.transfers_resumed += 1;
            self.stats.transfer_bytes_resumed += receiver.resumed_from();
        }
        fetch.progress = now;
        if receiver.is_whole() {
            // Every byte is here already (an install failed before): check
            // and install it again.
            fetch.phase = Phase::Installing(receiver);
            self.out.files.push(FileOp::Install { id });
        } else {
            let ack = receiver.ack();
            fetch.spoke = now;
            self.out.frames.push((fetch.peer, SnapshotFrame::Ack(ack)));
            fetch.phase = Phase::Receiving(receiver);
        }
    }

    fn on_installed(&mut self, id: SnapshotId, result: Result<Box<Store>, FileError>) {
        if !self.fetching(&id) {
            return;
        }
        let store = match result {
            Ok(store) => store,
            Err(e) => {
                self.fetch_failed(&format!("cannot install it: {e}"));
                return;
            }
        };
        let configs = match crate::snapshot_configs(&store) {
            Ok(Some(configs)) => configs,
            // From before membership changes: the founders still govern.
            Ok(None) => Configs::new(self.replica.config().founding()),
            Err(e) => {
                self.fetch_failed(&format!("its membership record cannot be read: {e}"));
                return;
            }
        };
        let Some(fetch) = self.snapshots.fetch.take() else {
            return;
        };
        let s = &mut self.snapshots;
        s.fetch_backoff = s.transfer.fetch_retry_ticks;
        s.newer(id);
        let ack = ChunkAck {
            slot: id.slot,
            next_offset: id.bytes,
            status: AckStatus::Installed,
        };
        self.out.frames.push((fetch.peer, SnapshotFrame::Ack(ack)));
        let commit = self.replica.status().commit;
        if id.slot <= commit || id.slot <= self.applied {
            debug!(
                slot = %id.slot,
                %commit, "caught up meanwhile; the fetched snapshot is not needed"
            );
            return;
        }
        info!(
            from = fetch.peer,
            slot = %id.slot,
            keys = store.len(),
            "installed a snapshot from a peer"
        );
        // Nothing answered from the old store from here on: reads wait for
        // their index, which the new store covers or the log above it will.
        self.store = *store;
        self.applied = id.slot;
        s.entries_since = 0;
        s.bytes_since = 0;
        self.replica.install_snapshot(id.slot, configs);
        self.stats.snapshots_installed += 1;
    }

    // ----- serving ---------------------------------------------------------

    fn serve(&mut self, peer: NodeId, min_slot: Slot) {
        let s = &mut self.snapshots;
        // A new request from a peer replaces its transfer under way.
        s.serving.remove(&peer);
        if s.serving.len() >= s.transfer.serving_max {
            debug!(peer, "declining a snapshot request: busy");
            let decline = SnapshotFrame::Decline(Decline::Busy);
            self.out.frames.push((peer, decline));
            return;
        }
        let Some(id) = s.latest.filter(|l| l.slot >= min_slot) else {
            debug!(
                peer,
                %min_slot, "declining a snapshot request: no snapshot that recent"
            );
            let decline = SnapshotFrame::Decline(Decline::NoSnapshot);
            self.out.frames.push((peer, decline));
            return;
        };
        info!(
            peer,
            slot = %id.slot,
            bytes = id.bytes,
            "sending a snapshot to a peer"
        );
        let sender = Sender::new(id, s.transfer.chunk_bytes_max, s.transfer.window_chunks);
        s.serving.insert(
            peer,
            Serving {
                sender,
                heard: self.now,
                resend_at: self.now + s.transfer.resend_ticks,
                started: false,
            },
        );
        self.out.frames.push((peer, SnapshotFrame::Offer(id)));
    }

    fn on_ack(&mut self, peer: NodeId, ack: &ChunkAck) {
        let now = self.now;
        let Some(serving) = self.snapshots.serving.get_mut(&peer) else {
            return;
        };
        if let Err(e) = serving.sender.on_ack(ack) {
            warn!(peer, error = %e, "a peer broke the snapshot transfer; dropped");
            self.snapshots.serving.remove(&peer);
            return;
        }
        serving.started = true;
        serving.heard = now;
        serving.resend_at = now + self.snapshots.transfer.resend_ticks;
        if serving.sender.is_complete() {
            self.stats.transfers_served += 1;
            info!(
                peer,
                slot = %serving.sender.id().slot,
                bytes_sent = serving.sender.bytes_sent(),
                "a peer installed the snapshot sent to it"
            );
            self.snapshots.serving.remove(&peer);
            return;
        }
        self.send_chunks(peer);
    }

    /// Sends `peer` what its window and the send budget allow.
    fn send_chunks(&mut self, peer: NodeId) {
        let s = &mut self.snapshots;
        let Some(serving) = s.serving.get_mut(&peer) else {
            return;
        };
        if !serving.started {
            return;
        }
        let limited = s.transfer.send_bytes_per_tick > 0;
        while !limited || s.send_budget > 0 {
            let Some(chunk) = serving.sender.next_chunk() else {
                break;
            };
            if limited {
                let len = i64::try_from(chunk.len).unwrap_or(i64::MAX);
                s.send_budget = s.send_budget.saturating_sub(len);
            }
            self.stats.transfer_bytes_sent += chunk.len as u64;
            self.out.files.push(FileOp::SendChunk {
                to: peer,
                id: *serving.sender.id(),
                offset: chunk.offset,
                len: chunk.len,
            });
        }
    }
}
