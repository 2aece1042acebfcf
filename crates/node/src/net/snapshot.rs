//! Snapshot transfer between peers: a node whose missing slots a peer has
//! compacted away fetches that peer's latest snapshot, over a connection of
//! its own.
//!
//! # Why a connection of its own
//!
//! Heartbeats must keep flowing while megabytes of snapshot move, or the
//! followers would elect a new leader in the middle of the transfer. On one
//! TCP stream a heartbeat would wait behind every chunk queued before it;
//! on a connection of its own the transfer shares the link but never the
//! queue. The transfer is also bounded on its own: chunks of at most
//! `snapshot_chunk_bytes_max`, at most `snapshot_window_chunks` of them
//! unacknowledged, and an optional rate limit (`snapshot_send_bytes_per_sec`).
//! Files are read and written on blocking threads, never on a task that
//! serves replica messages, and never in the replica task.
//!
//! # The exchange
//!
//! The receiver (the lagging node) opens the connection; after the usual
//! handshake every frame is of the snapshot kind ([`super::frame::FrameKind`])
//! and holds one [`SnapshotFrame`]:
//!
//! ```text
//! receiver                                     sender
//!   handshake ────────────────────────────────▶
//!   Request { min_slot } ─────────────────────▶ its latest snapshot, if it
//!                        ◀───────────────────── Offer { slot, bytes, crc }
//!                                                (or Decline: none, or busy)
//!   open the partial file (resuming it if it
//!   is of this snapshot), then
//!   Ack { next_offset, Resend } ──────────────▶ starts from next_offset
//!                        ◀───────────────────── Chunk, Chunk, ... (a window)
//!   Ack { Progress } for each ────────────────▶ slides the window
//!                        ◀───────────────────── the last Chunk
//!   checks the whole body, installs it,
//!   Ack { Installed } ────────────────────────▶ done; both ends close
//! ```
//!
//! When no ack comes for `snapshot_resend_ms` the sender sends again from the
//! last acknowledged offset; when nothing comes for
//! `snapshot_idle_timeout_ms` either end gives up. The chunks, acks and their
//! checks are `storage::transfer`'s; this module only moves them.
//!
//! # Resuming
//!
//! A broken connection loses nothing already written: the receiver's partial
//! file stays (across restarts too), and the next request, to the same peer
//! or another, resumes it when the offer is the same snapshot. An offer of a
//! newer snapshot supersedes it: opening its receiver deletes the old
//! partial file.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use codec::{DecodeError, Reader, put_varint};
use paxos::NodeId;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, info, warn};

use super::frame::{FrameError, FrameKind, KIND_FRAME_OVERHEAD_BYTES, read_frame, split_kind};
use super::{Ctx, connect};
use storage::snapshot::{SnapshotMeta, SnapshotStore};
use storage::transfer::{
    self, AckStatus, CHUNK_BYTES_LIMIT, ChunkOutcome, Receiver, Sender, SenderOptions,
    TransferError, TransferMessage,
};

/// The format of [`SnapshotFrame`]s this code writes and reads.
pub const SNAPSHOT_FRAME_FORMAT: u8 = 1;
/// Largest frame a sender accepts from a receiver: requests and acks only.
const CONTROL_FRAME_BYTES_MAX: u32 = 4096;
/// Bytes a snapshot frame may add around a chunk's data (format, tag, the
/// chunk's own fields), generously.
const CHUNK_FRAME_OVERHEAD_BYTES: usize = 96;
/// Largest frame a receiver accepts: one chunk of the largest size any
/// sender may cut, with its fields.
const CHUNK_FRAME_BYTES_MAX: u32 =
    (CHUNK_BYTES_LIMIT + CHUNK_FRAME_OVERHEAD_BYTES + KIND_FRAME_OVERHEAD_BYTES) as u32;
/// Frames read ahead of the task that handles them.
const READ_AHEAD_FRAMES: usize = 2;

const TAG_REQUEST: u8 = 1;
const TAG_OFFER: u8 = 2;
const TAG_DECLINE: u8 = 3;
const TAG_TRANSFER: u8 = 4;

/// Limits and timings of snapshot transfers, part of
/// [`super::TransportConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotTransferConfig {
    /// Largest chunk a sender cuts (at most `storage::transfer`'s
    /// `CHUNK_BYTES_LIMIT`).
    pub chunk_bytes_max: usize,
    /// Chunks a sender keeps unacknowledged.
    pub window_chunks: usize,
    /// A sender with no ack for this long sends again from the last
    /// acknowledged offset.
    pub resend_ms: u64,
    /// Either end gives up on a connection that brings nothing for this long
    /// (the receiver then tries again, resuming).
    pub idle_timeout_ms: u64,
    /// Body bytes a sender sends per second to one receiver; 0 for no limit.
    pub send_bytes_per_sec: u64,
    /// Transfers a node serves at once; more are declined as busy.
    pub serving_max: usize,
}

impl Default for SnapshotTransferConfig {
    fn default() -> SnapshotTransferConfig {
        SnapshotTransferConfig {
            chunk_bytes_max: transfer::DEFAULT_CHUNK_BYTES_MAX,
            window_chunks: transfer::DEFAULT_WINDOW_CHUNKS,
            resend_ms: 2_000,
            idle_timeout_ms: 30_000,
            send_bytes_per_sec: 0,
            serving_max: 4,
        }
    }
}

impl SnapshotTransferConfig {
    /// Checks the settings; the error says which is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.chunk_bytes_max == 0 || self.chunk_bytes_max > CHUNK_BYTES_LIMIT {
            return Err(format!(
                "snapshot_chunk_bytes_max must be between 1 and {CHUNK_BYTES_LIMIT}"
            ));
        }
        let positive = [
            ("snapshot_window_chunks", self.window_chunks as u64),
            ("snapshot_resend_ms", self.resend_ms),
            ("snapshot_idle_timeout_ms", self.idle_timeout_ms),
            ("snapshot_serving_max", self.serving_max as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        if self.idle_timeout_ms < self.resend_ms {
            return Err("snapshot_idle_timeout_ms must be at least snapshot_resend_ms".to_owned());
        }
        Ok(())
    }

    fn sender_options(&self) -> SenderOptions {
        SenderOptions {
            chunk_bytes_max: self.chunk_bytes_max,
            window_chunks: self.window_chunks,
        }
    }
}

/// Counters of the transfers a node served and received.
#[derive(Debug, Default)]
pub struct TransferStats {
    /// Transfers served to the end (the receiver installed the snapshot).
    pub served: AtomicU64,
    /// Body bytes sent in chunks, resends included.
    pub bytes_sent: AtomicU64,
    /// Body bytes received in chunks, duplicates included.
    pub bytes_received: AtomicU64,
    /// Body bytes found in partial files when a transfer resumed.
    pub bytes_resumed: AtomicU64,
    /// Transfers that resumed a partial file.
    pub resumed: AtomicU64,
    /// Snapshots received and installed.
    pub installed: AtomicU64,
}

impl TransferStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the transport serves snapshots from, and counts transfers in.
#[derive(Clone, Debug)]
pub struct SnapshotSource {
    /// The node's newest snapshot, kept up to date by the node.
    pub latest: watch::Receiver<Option<SnapshotMeta>>,
    pub stats: Arc<TransferStats>,
}

/// Why a peer declined to send a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decline {
    /// It has no snapshot at or above the slot asked for.
    NoSnapshot,
    /// It serves as many transfers as it may.
    Busy,
}

/// The payload of a snapshot frame. Binary form: a format byte
/// ([`SNAPSHOT_FRAME_FORMAT`]), a tag, then the fields (integers as LEB128
/// varints, the checksum as 4 bytes little-endian); a transfer message is
/// its own encoding, which carries a format byte of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotFrame {
    /// "Send me your latest snapshot, if it holds at least `min_slot`."
    Request {
        min_slot: u64,
    },
    /// "It is this one": the snapshot's identity, as its chunks carry it.
    Offer {
        slot: u64,
        total_bytes: u64,
        total_crc: u32,
    },
    Decline(Decline),
    /// A chunk (sender to receiver) or an ack (receiver to sender).
    Transfer(TransferMessage),
}

impl SnapshotFrame {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(32);
        out.put_u8(SNAPSHOT_FRAME_FORMAT);
        match self {
            SnapshotFrame::Request { min_slot } => {
                out.put_u8(TAG_REQUEST);
                put_varint(&mut out, *min_slot);
            }
            SnapshotFrame::Offer {
                slot,
                total_bytes,
                total_crc,
            } => {
                out.put_u8(TAG_OFFER);
                put_varint(&mut out, *slot);
                put_varint(&mut out, *total_bytes);
                out.put_u32_le(*total_crc);
            }
            SnapshotFrame::Decline(reason) => {
                out.put_u8(TAG_DECLINE);
                out.put_u8(match reason {
                    Decline::NoSnapshot => 0,
                    Decline::Busy => 1,
                });
            }
            SnapshotFrame::Transfer(message) => {
                let inner = message.encode();
                out.reserve(inner.len());
                out.put_u8(TAG_TRANSFER);
                out.put_slice(&inner);
            }
        }
        out.freeze()
    }

    /// Decodes one frame; never panics, never allocates beyond the input.
    pub fn decode(input: Bytes) -> Result<SnapshotFrame, DecodeError> {
        let mut r = Reader::with_format(&input, "snapshot frame", SNAPSHOT_FRAME_FORMAT)?;
        let frame = match r.u8("the tag")? {
            TAG_REQUEST => SnapshotFrame::Request {
                min_slot: r.varint("a slot")?,
            },
            TAG_OFFER => SnapshotFrame::Offer {
                slot: r.varint("a slot")?,
                total_bytes: r.varint("a length")?,
                total_crc: r.u32_le("a checksum")?,
            },
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
            TAG_TRANSFER => {
                let rest = input.slice_ref(r.rest());
                SnapshotFrame::Transfer(TransferMessage::decode(rest)?)
            }
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

/// Why a transfer (either end of it) stopped before the snapshot was
/// installed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotLinkError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("undecodable snapshot frame: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("the peer broke the snapshot transfer protocol: {0}")]
    Protocol(&'static str),
    #[error("the peer closed the connection")]
    Closed,
    #[error("the peer has no snapshot at or above slot {min_slot}")]
    NoSnapshot { min_slot: u64 },
    #[error("the peer serves as many snapshot transfers as it may")]
    Busy,
    #[error("the peer offered the snapshot of slot {offered}, below the slot {min_slot} needed")]
    StaleOffer { offered: u64, min_slot: u64 },
    #[error("nothing came from the peer for {0:?}")]
    Idle(Duration),
    #[error("a write to the peer timed out")]
    WriteTimeout,
    #[error("node {0} is not a member")]
    UnknownPeer(NodeId),
    #[error("the transfer was cancelled")]
    Cancelled,
    #[error("a file task of the transfer failed: {0}")]
    Task(String),
}

// ---------------------------------------------------------------------------
// Both ends
// ---------------------------------------------------------------------------

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Frames = mpsc::Receiver<Result<Bytes, FrameError>>;

/// Reads frames of at most `max` bytes on a task of their own, so that
/// waiting for one can be given up without losing half a frame. The channel
/// closes at the end of the stream.
fn read_frames<R>(mut reader: R, max: u32) -> (Frames, AbortOnDrop)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(READ_AHEAD_FRAMES);
    let task = tokio::spawn(async move {
        loop {
            match read_frame(&mut reader, max).await {
                Ok(Some(frame)) => {
                    if tx.send(Ok(frame)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    (rx, AbortOnDrop(task))
}

/// The next snapshot frame, waiting at most `idle`.
async fn next_frame(
    frames: &mut Frames,
    idle: Duration,
) -> Result<SnapshotFrame, SnapshotLinkError> {
    match timeout(idle, frames.recv()).await {
        Err(_) => Err(SnapshotLinkError::Idle(idle)),
        Ok(None) => Err(SnapshotLinkError::Closed),
        Ok(Some(Err(e))) => Err(e.into()),
        Ok(Some(Ok(frame))) => decode_frame(frame),
    }
}

fn decode_frame(frame: Bytes) -> Result<SnapshotFrame, SnapshotLinkError> {
    let (kind, payload) = split_kind(frame)?;
    if kind != FrameKind::Snapshot {
        return Err(FrameError::WrongKind {
            expected: FrameKind::Snapshot.name(),
            got: kind.name(),
        }
        .into());
    }
    Ok(SnapshotFrame::decode(payload)?)
}

async fn send<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &SnapshotFrame,
    limit: Duration,
) -> Result<(), SnapshotLinkError> {
    let payload = frame.encode();
    let mut buf = BytesMut::with_capacity(payload.len() + KIND_FRAME_OVERHEAD_BYTES);
    super::frame::put_kind_frame(&mut buf, FrameKind::Snapshot, &payload);
    match timeout(limit, writer.write_all(&buf)).await {
        Ok(result) => Ok(result.map_err(FrameError::from)?),
        Err(_) => Err(SnapshotLinkError::WriteTimeout),
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T, F>(f: F) -> Result<T, SnapshotLinkError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SnapshotLinkError::Task(e.to_string()))
}

// ---------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------

/// One transfer slot of the serving limit, given back when dropped.
struct Serving<'a>(&'a AtomicUsize);

impl<'a> Serving<'a> {
    fn take(count: &'a AtomicUsize, max: usize) -> Option<Serving<'a>> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Serving(count))
    }
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Spaces chunks out to a rate.
struct Pacer {
    bytes_per_sec: u64,
    next: Instant,
}

impl Pacer {
    /// Waits until `len` more bytes may go.
    async fn before(&mut self, len: usize) {
        if self.bytes_per_sec == 0 {
            return;
        }
        sleep_until(self.next).await;
        let start = self.next.max(Instant::now());
        self.next = start + Duration::from_secs_f64(len as f64 / self.bytes_per_sec as f64);
    }
}

/// Sends chunks until the window is full or every chunk is sent. The
/// sender goes to a blocking thread for each read and comes back.
async fn send_window<W: AsyncWrite + Unpin>(
    mut sender: Sender,
    writer: &mut W,
    pacer: &mut Pacer,
    stats: &TransferStats,
    write_limit: Duration,
) -> Result<Sender, SnapshotLinkError> {
    loop {
        let (back, chunk) = blocking(move || {
            let chunk = sender.next_chunk();
            (sender, chunk)
        })
        .await?;
        sender = back;
        let Some(chunk) = chunk? else {
            return Ok(sender);
        };
        let len = chunk.data.len();
        pacer.before(len).await;
        let frame = SnapshotFrame::Transfer(TransferMessage::Chunk(chunk));
        send(writer, &frame, write_limit).await?;
        TransferStats::add(&stats.bytes_sent, len as u64);
    }
}

/// Serves one snapshot transfer on an inbound connection whose first frame
/// (`first`, already split from its kind) asked for one.
pub(super) async fn serve<R, W>(
    ctx: &Ctx,
    peer: NodeId,
    reader: R,
    mut writer: W,
    first: Bytes,
) -> Result<(), SnapshotLinkError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let config = &ctx.config.snapshot;
    let write_limit = Duration::from_millis(ctx.config.write_timeout_ms);
    let SnapshotFrame::Request { min_slot } = SnapshotFrame::decode(first)? else {
        return Err(SnapshotLinkError::Protocol(
            "the first frame is not a request",
        ));
    };
    let Some(_serving) = Serving::take(&ctx.serving, config.serving_max) else {
        debug!(peer, "declining a snapshot request: busy");
        return send(
            &mut writer,
            &SnapshotFrame::Decline(Decline::Busy),
            write_limit,
        )
        .await;
    };
    let latest = ctx.snapshots.latest.borrow().clone();
    let Some(meta) = latest.filter(|m| m.slot >= min_slot) else {
        debug!(
            peer,
            min_slot, "declining a snapshot request: no snapshot that recent"
        );
        let decline = SnapshotFrame::Decline(Decline::NoSnapshot);
        return send(&mut writer, &decline, write_limit).await;
    };
    let options = config.sender_options();
    let opened = blocking(move || Sender::new(meta, options)).await?;
    let mut sender = match opened {
        Ok(sender) => sender,
        Err(e) => {
            // Retention may have removed it a moment ago; the peer asks again.
            warn!(peer, error = %e, "cannot open the snapshot a peer asked for");
            let decline = SnapshotFrame::Decline(Decline::NoSnapshot);
            return send(&mut writer, &decline, write_limit).await;
        }
    };
    let meta = sender.meta().clone();
    info!(
        peer,
        slot = meta.slot,
        bytes = meta.bytes,
        "sending a snapshot to a peer"
    );
    let offer = SnapshotFrame::Offer {
        slot: meta.slot,
        total_bytes: meta.bytes,
        total_crc: meta.crc,
    };
    send(&mut writer, &offer, write_limit).await?;

    let (mut frames, _reader) = read_frames(reader, CONTROL_FRAME_BYTES_MAX);
    let resend = Duration::from_millis(config.resend_ms);
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let mut pacer = Pacer {
        bytes_per_sec: config.send_bytes_per_sec,
        next: Instant::now(),
    };
    // Chunks go only once the receiver said where to start.
    let mut started = false;
    let mut last_ack = Instant::now();
    let mut resend_at = last_ack + resend;
    loop {
        if started {
            let stats = &ctx.snapshots.stats;
            sender = send_window(sender, &mut writer, &mut pacer, stats, write_limit).await?;
        }
        tokio::select! {
            frame = frames.recv() => {
                let frame = match frame {
                    None => return Err(SnapshotLinkError::Closed),
                    Some(frame) => decode_frame(frame?)?,
                };
                let SnapshotFrame::Transfer(TransferMessage::Ack(ack)) = frame else {
                    return Err(SnapshotLinkError::Protocol("a sender expects acks only"));
                };
                sender.on_ack(&ack)?;
                started = true;
                last_ack = Instant::now();
                resend_at = last_ack + resend;
                if sender.is_complete() {
                    TransferStats::add(&ctx.snapshots.stats.served, 1);
                    info!(
                        peer,
                        slot = meta.slot,
                        bytes = meta.bytes,
                        bytes_sent = sender.bytes_sent(),
                        "a peer installed the snapshot sent to it"
                    );
                    return Ok(());
                }
            }
            () = sleep_until(resend_at) => {
                let now = Instant::now();
                if now >= last_ack + idle {
                    return Err(SnapshotLinkError::Idle(idle));
                }
                debug!(peer, acked = sender.acked(), "no ack in time; sending again from the last one");
                sender.resend();
                resend_at = now + resend;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Receiving
// ---------------------------------------------------------------------------

/// Where fetched snapshots go: the node's snapshot store, shared with the
/// node (which writes its own snapshots into it), and the directory for
/// partial files.
#[derive(Clone, Debug)]
pub struct FetchTarget {
    pub store: Arc<Mutex<SnapshotStore>>,
    pub dir: PathBuf,
}

/// Fetches snapshots from peers; see the module notes. Cheap to clone.
#[derive(Clone)]
pub struct SnapshotClient {
    pub(super) ctx: Arc<Ctx>,
    pub(super) addrs: BTreeMap<NodeId, String>,
}

/// Resolves when `cancel` turns true or its sender is gone.
async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    loop {
        if *cancel.borrow_and_update() {
            return;
        }
        if cancel.changed().await.is_err() {
            return;
        }
    }
}

/// Runs `fut` unless `cancel` fires first. Only network waits go through
/// here: file work, once started, runs to its end.
async fn cancellable<T>(
    cancel: &mut watch::Receiver<bool>,
    fut: impl Future<Output = Result<T, SnapshotLinkError>>,
) -> Result<T, SnapshotLinkError> {
    tokio::select! {
        biased;
        () = cancelled(cancel) => Err(SnapshotLinkError::Cancelled),
        result = fut => result,
    }
}

impl SnapshotClient {
    /// The transfer counters of this node.
    pub fn stats(&self) -> &Arc<TransferStats> {
        &self.ctx.snapshots.stats
    }

    /// Fetches `peer`'s latest snapshot, if it holds at least `min_slot`,
    /// over one connection, into `target`, resuming a partial file of the
    /// same snapshot. Returns the installed snapshot. On an error the
    /// partial file stays for the next attempt (unless the whole body failed
    /// its checksum). Stops early with `Cancelled` when `cancel` turns true,
    /// never in the middle of writing a chunk or installing.
    pub async fn fetch(
        &self,
        peer: NodeId,
        min_slot: u64,
        target: &FetchTarget,
        cancel: &mut watch::Receiver<bool>,
    ) -> Result<SnapshotMeta, SnapshotLinkError> {
        let addr = self
            .addrs
            .get(&peer)
            .ok_or(SnapshotLinkError::UnknownPeer(peer))?;
        let config = &self.ctx.config.snapshot;
        let write_limit = Duration::from_millis(self.ctx.config.write_timeout_ms);
        let idle = Duration::from_millis(config.idle_timeout_ms);
        let stats = &self.ctx.snapshots.stats;

        let (reader, mut writer) =
            cancellable(cancel, async { Ok(connect(&self.ctx, peer, addr).await?) }).await?;
        let request = SnapshotFrame::Request { min_slot };
        cancellable(cancel, send(&mut writer, &request, write_limit)).await?;
        let max = CHUNK_FRAME_BYTES_MAX.min(self.ctx.config.frame_bytes_max);
        let (mut frames, _reader) = read_frames(reader, max);
        let (slot, total_bytes, total_crc) =
            match cancellable(cancel, next_frame(&mut frames, idle)).await? {
                SnapshotFrame::Offer {
                    slot,
                    total_bytes,
                    total_crc,
                } => (slot, total_bytes, total_crc),
                SnapshotFrame::Decline(Decline::NoSnapshot) => {
                    return Err(SnapshotLinkError::NoSnapshot { min_slot });
                }
                SnapshotFrame::Decline(Decline::Busy) => return Err(SnapshotLinkError::Busy),
                _ => return Err(SnapshotLinkError::Protocol("expected an offer")),
            };
        if slot < min_slot {
            return Err(SnapshotLinkError::StaleOffer {
                offered: slot,
                min_slot,
            });
        }
        let dir = target.dir.clone();
        let mut receiver =
            blocking(move || Receiver::open(&dir, slot, total_bytes, total_crc)).await??;
        for old in receiver.discarded() {
            info!(file = %old.name, bytes = old.bytes, "removed the partial file of a superseded snapshot transfer");
        }
        if receiver.resumed_from() > 0 {
            TransferStats::add(&stats.resumed, 1);
            TransferStats::add(&stats.bytes_resumed, receiver.resumed_from());
        }
        info!(
            peer,
            slot,
            bytes = total_bytes,
            resumed_from = receiver.resumed_from(),
            "receiving a snapshot"
        );
        let mut ack = receiver.ack();
        if ack.status == AckStatus::Resend && ack.next_offset == total_bytes && total_bytes > 0 {
            // Every byte is here but not installed (installing failed
            // before): one byte again makes the receiver try once more.
            ack.next_offset -= 1;
        }
        let frame = SnapshotFrame::Transfer(TransferMessage::Ack(ack));
        cancellable(cancel, send(&mut writer, &frame, write_limit)).await?;

        loop {
            let frame = cancellable(cancel, next_frame(&mut frames, idle)).await?;
            let SnapshotFrame::Transfer(TransferMessage::Chunk(chunk)) = frame else {
                return Err(SnapshotLinkError::Protocol(
                    "a receiver expects chunks only",
                ));
            };
            if !receiver.is_for(&chunk) {
                return Err(SnapshotLinkError::Protocol(
                    "a chunk of another snapshot than the one offered",
                ));
            }
            TransferStats::add(&stats.bytes_received, chunk.data.len() as u64);
            let store = Arc::clone(&target.store);
            let (back, received) = blocking(move || {
                let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
                let received = receiver.on_chunk(&chunk, &mut store);
                (receiver, received)
            })
            .await?;
            receiver = back;
            let received = received?;
            let ack = SnapshotFrame::Transfer(TransferMessage::Ack(received.ack));
            if let ChunkOutcome::Installed(meta) = received.outcome {
                TransferStats::add(&stats.installed, 1);
                // The sender only needs this to stop early; it is done
                // either way once the connection closes.
                let _ = send(&mut writer, &ack, write_limit).await;
                return Ok(meta);
            }
            cancellable(cancel, send(&mut writer, &ack, write_limit)).await?;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly, which is its job
mod tests {
    use super::*;
    use storage::transfer::{Chunk, ChunkAck};

    fn frames() -> Vec<SnapshotFrame> {
        vec![
            SnapshotFrame::Request { min_slot: 0 },
            SnapshotFrame::Request { min_slot: u64::MAX },
            SnapshotFrame::Offer {
                slot: 300,
                total_bytes: 1 << 40,
                total_crc: 0xdead_beef,
            },
            SnapshotFrame::Decline(Decline::NoSnapshot),
            SnapshotFrame::Decline(Decline::Busy),
            SnapshotFrame::Transfer(TransferMessage::Ack(ChunkAck {
                slot: 7,
                next_offset: 4096,
                status: AckStatus::Progress,
            })),
            SnapshotFrame::Transfer(TransferMessage::Chunk(Chunk::new(
                7,
                10,
                42,
                2,
                Bytes::from_static(b"abcd"),
            ))),
        ]
    }

    #[test]
    fn snapshot_frames_round_trip() {
        for frame in frames() {
            assert_eq!(SnapshotFrame::decode(frame.encode()).unwrap(), frame);
        }
    }

    #[test]
    fn every_truncation_or_extension_of_a_snapshot_frame_is_an_error() {
        for frame in frames() {
            let bytes = frame.encode();
            for len in 0..bytes.len() {
                assert!(
                    SnapshotFrame::decode(bytes.slice(..len)).is_err(),
                    "{frame:?} cut to {len} bytes"
                );
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert!(
                SnapshotFrame::decode(Bytes::from(longer)).is_err(),
                "{frame:?}"
            );
        }
        let mut other = frames()[0].encode().to_vec();
        other[0] = SNAPSHOT_FRAME_FORMAT + 1;
        assert_eq!(
            SnapshotFrame::decode(Bytes::from(other)),
            Err(DecodeError::UnknownFormat {
                what: "snapshot frame",
                found: SNAPSHOT_FRAME_FORMAT + 1,
                expected: SNAPSHOT_FRAME_FORMAT
            })
        );
    }

    #[test]
    fn the_default_transfer_settings_are_valid_and_bad_ones_say_why() {
        SnapshotTransferConfig::default().validate().unwrap();
        let bad = SnapshotTransferConfig {
            chunk_bytes_max: CHUNK_BYTES_LIMIT + 1,
            ..SnapshotTransferConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("chunk"));
        let bad = SnapshotTransferConfig {
            window_chunks: 0,
            ..SnapshotTransferConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("window"));
    }

    #[test]
    fn the_serving_limit_is_given_back() {
        let count = AtomicUsize::new(0);
        let a = Serving::take(&count, 2).unwrap();
        let b = Serving::take(&count, 2).unwrap();
        assert!(Serving::take(&count, 2).is_none());
        drop(a);
        let c = Serving::take(&count, 2).unwrap();
        drop((b, c));
        assert_eq!(count.load(Ordering::Relaxed), 0);
    }
}
