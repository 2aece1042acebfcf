//! The peer transport: replica messages between nodes over TCP.
//!
//! - One outbound connection per peer, owned by a task that connects,
//!   handshakes and writes. Messages reach it through a bounded queue
//!   ([`Outbox::send`] never waits: a full queue drops the message and counts
//!   it, which Paxos tolerates like any loss). The task writes every queued
//!   frame in one write, reconnects with capped exponential backoff and
//!   jitter, and drops what is queued while the peer is unreachable.
//! - Inbound connections are accepted on the peer listener. After the
//!   handshake each frame is decoded and pushed, with the sender's id, into
//!   the replica task's bounded channel (waiting when it is full, so a busy
//!   replica slows its peers' connections rather than growing a queue).
//! - A connection that breaks the framing, the handshake or the wire format
//!   is dropped with a warning; nothing a peer sends can stop the node.
//!
//! Messages flow one way on a connection: each node reads on the connections
//! its peers opened and writes on those it opened itself. The only frame
//! that travels back is the handshake reply, which tells the connecting side
//! that it reached the node it meant to (and that node's client and HTTP
//! addresses, for status reports).
//!
//! Snapshot transfers get a link of their own (one more connection per
//! peer and direction, opened on the first frame to send), so that chunks
//! never queue ahead of heartbeats: a node that serves megabytes of snapshot
//! keeps its followers' election timers quiet. The frames on it are the
//! host's (`host::transfer`); the transport only moves them. The first
//! frame after the handshake tells the two kinds of connection apart.

pub mod auth;
pub mod frame;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use paxos::NodeId;
use paxos::replica::Message;
use paxos::rng::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{Instrument, debug, info, warn};

use host::transfer::SnapshotFrame;

use self::auth::{AUTH_PROTOCOL, ClusterSecret, Ends, Seal};
use self::frame::{
    FrameError, FrameKind, HANDSHAKE_BYTES_MAX, Handshake, KIND_FRAME_OVERHEAD_BYTES,
    PEER_PROTOCOL, PEER_PROTOCOL_MIN, put_frame, read_frame, split_kind,
};
use crate::cluster::{ClusterId, id_on_wire};
use crate::config::SnapshotTransferConfig;
use crate::metrics::Metrics;
use storage::wire;

/// Snapshot frames queued for one peer before new ones are dropped: a few
/// windows of chunks (the sender's resend recovers what is dropped).
const SNAPSHOT_QUEUE_FRAMES: usize = 64;
/// Snapshot frames read from peers and not yet taken by the replica task,
/// over every peer: a slow task slows the senders down instead.
pub const SNAPSHOT_INBOUND_FRAMES: usize = 8;
/// The largest snapshot frame accepted: a chunk of the largest size any
/// sender may cut, with its fields.
const SNAPSHOT_FRAME_BYTES_MAX: u32 = (host::transfer::CHUNK_BYTES_LIMIT
    + host::transfer::CHUNK_FRAME_OVERHEAD_BYTES
    + KIND_FRAME_OVERHEAD_BYTES) as u32;

/// The largest membership answer a joining node reads: thousands of
/// members with their addresses.
const JOIN_ANSWER_BYTES_MAX: u32 = 4 << 20;

/// Limits and timings of the transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Largest frame accepted from or sent to a peer.
    pub frame_bytes_max: u32,
    /// Messages queued for one peer before new ones are dropped.
    pub outbound_queue_max: usize,
    /// Frames gathered into one write.
    pub write_batch_frames_max: usize,
    /// Bytes gathered into one write (a single larger frame still goes).
    pub write_batch_bytes_max: usize,
    /// Inbound connections open at once, handshaken or not.
    pub inbound_connections_max: usize,
    /// How long a new connection may take to handshake.
    pub handshake_timeout_ms: u64,
    /// How long a connect attempt may take.
    pub connect_timeout_ms: u64,
    /// How long one batched write may take before the connection is
    /// considered dead.
    pub write_timeout_ms: u64,
    /// Reconnect backoff: starts here, doubles per failure up to the cap;
    /// each wait is drawn between half and all of the current backoff.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// Snapshot transfers, on links of their own.
    pub snapshot: SnapshotTransferConfig,
    /// The peer protocols this node offers in its handshakes: this
    /// release's. A test widens it to stand for a later release that also
    /// speaks this one, as members of two releases meet in a rolling
    /// upgrade.
    pub protocols: (u8, u8),
    /// The cluster secret (`--cluster-secret-file`): members prove they
    /// hold it and every frame carries a tag (see `auth`).
    pub secret: Option<ClusterSecret>,
}

impl Default for TransportConfig {
    fn default() -> TransportConfig {
        TransportConfig {
            frame_bytes_max: 128 << 20,
            outbound_queue_max: 4096,
            write_batch_frames_max: 1024,
            write_batch_bytes_max: 1 << 20,
            inbound_connections_max: 64,
            handshake_timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
            write_timeout_ms: 5_000,
            backoff_min_ms: 50,
            backoff_max_ms: 2_000,
            snapshot: SnapshotTransferConfig::default(),
            protocols: (PEER_PROTOCOL_MIN, PEER_PROTOCOL),
            secret: None,
        }
    }
}

/// Who this node is, as told to peers in the handshake.
#[derive(Clone, Debug)]
pub struct Identity {
    pub id: NodeId,
    /// The node's cluster; `None` only before it has learned or made one
    /// (a node asking for the membership to join or found a cluster).
    pub cluster: Option<ClusterId>,
    pub client_addr: String,
    pub http_addr: String,
}

impl Identity {
    /// This node's opening handshake to `to`, offering every protocol it
    /// speaks (`protocols`).
    fn hello(&self, to: NodeId, protocols: (u8, u8)) -> Handshake {
        Handshake {
            lowest: protocols.0,
            highest: protocols.1,
            cluster: id_on_wire(self.cluster),
            from: self.id,
            to,
            client_addr: self.client_addr.clone(),
            http_addr: self.http_addr.clone(),
        }
    }
}

/// What the transport knows of one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The outbound connection is up (handshake done).
    pub outbound: bool,
    /// Inbound connections from the peer currently open.
    pub inbound: u32,
    /// The peer's addresses from its latest handshake.
    pub client_addr: Option<String>,
    pub http_addr: Option<String>,
}

/// The transport's view of every peer, shared with the status reporter.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: Mutex<BTreeMap<NodeId, PeerInfo>>,
    /// Messages dropped: queue full, peer unreachable, or frame too large.
    pub dropped: AtomicU64,
    /// What a joining node is told: the membership and every address
    /// known (an encoded `crate::cluster::ClusterFile`), kept current by
    /// the replica task.
    directory: Mutex<Bytes>,
    /// The node is rejoining: its answers carry no promise, and a node
    /// that asks in order to rejoin itself must wait for it.
    rejoining: std::sync::atomic::AtomicBool,
}

impl PeerTable {
    /// A copy of what is known of every peer.
    pub fn snapshot(&self) -> BTreeMap<NodeId, PeerInfo> {
        // A poisoned lock only means a task panicked mid-update of plain
        // data: the data is still usable.
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn update(&self, peer: NodeId, f: impl FnOnce(&mut PeerInfo)) {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(peers.entry(peer).or_default());
    }

    pub fn set_rejoining(&self, rejoining: bool) {
        self.rejoining.store(rejoining, Ordering::Relaxed);
    }

    /// Replaces what joining nodes are told.
    pub fn set_directory(&self, directory: Bytes) {
        *self
            .directory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = directory;
    }

    fn directory(&self) -> Bytes {
        self.directory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn forget(&self, peer: NodeId) {
        self.peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&peer);
    }

    fn learn(&self, hello: &Handshake) {
        let known = |addr: &String| (!addr.is_empty()).then(|| addr.clone());
        self.update(hello.from, |p| {
            p.client_addr = known(&hello.client_addr);
            p.http_addr = known(&hello.http_addr);
        });
    }
}

/// The links to the peers: a queue per peer and kind, each drained by a
/// task that keeps a connection to the peer's address.
#[derive(Default)]
struct Links {
    messages: BTreeMap<NodeId, (String, mpsc::Sender<Message>)>,
    frames: BTreeMap<NodeId, mpsc::Sender<SnapshotFrame>>,
    tasks: JoinSet<()>,
    seed: u64,
}

/// The replica task's side of the outbound queues.
#[derive(Clone)]
pub struct Outbox {
    links: Arc<RwLock<Links>>,
    ctx: Arc<Ctx>,
    span: tracing::Span,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

impl Outbox {
    /// Queues `message` for `to` without waiting. Returns false (and counts
    /// the drop) when the queue is full or `to` is not a peer.
    pub fn send(&self, to: NodeId, message: Message) -> bool {
        let sent = self
            .read()
            .messages
            .get(&to)
            .is_some_and(|(_, q)| q.try_send(message).is_ok());
        self.counted(sent)
    }

    /// Queues a snapshot frame for `to`'s snapshot link, like [`Outbox::send`].
    pub fn send_frame(&self, to: NodeId, frame: SnapshotFrame) -> bool {
        let sent = self
            .read()
            .frames
            .get(&to)
            .is_some_and(|q| q.try_send(frame).is_ok());
        self.counted(sent)
    }

    /// Makes the links match `peers` (peer addresses by id; this node's own
    /// entry is ignored): a link for each new peer or changed address, none
    /// for a peer no longer listed. Only listed peers may connect to this
    /// node. Must run inside the transport's runtime.
    pub fn set_peers(&self, peers: &BTreeMap<NodeId, String>) {
        let me = self.ctx.identity.id;
        let mut links = self
            .links
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let links = &mut *links;
        while links.tasks.try_join_next().is_some() {}
        let gone: Vec<NodeId> = links
            .messages
            .keys()
            .copied()
            .filter(|id| !peers.contains_key(id))
            .collect();
        for id in gone {
            // Dropping the queues ends the link tasks.
            links.messages.remove(&id);
            links.frames.remove(&id);
            self.ctx.table.forget(id);
            info!(peer = id, "no longer a peer");
        }
        for (&peer, addr) in peers {
            if peer == me || links.messages.get(&peer).is_some_and(|(a, _)| a == addr) {
                continue;
            }
            self.ctx.table.update(peer, |_| {});
            let tx = self.spawn_link(links, peer, addr, self.ctx.config.outbound_queue_max);
            links.messages.insert(peer, (addr.clone(), tx));
            let tx = self.spawn_link(links, peer, addr, SNAPSHOT_QUEUE_FRAMES);
            links.frames.insert(peer, tx);
        }
        *self
            .ctx
            .members
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = peers.keys().copied().collect();
    }

    /// Starts a link of payload `P` to `peer` at `addr`, with a queue of
    /// `queue_max`; its sending end.
    fn spawn_link<P: Payload>(
        &self,
        links: &mut Links,
        peer: NodeId,
        addr: &str,
        queue_max: usize,
    ) -> mpsc::Sender<P> {
        let (tx, rx) = mpsc::channel(queue_max.max(1));
        links.seed = links.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let task = outbound(
            Arc::clone(&self.ctx),
            peer,
            addr.to_owned(),
            rx,
            Rng::new(links.seed),
        );
        links.tasks.spawn(task.instrument(self.span.clone()));
        tx
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Links> {
        self.links
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn counted(&self, sent: bool) -> bool {
        if !sent {
            self.ctx.table.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }
}

/// What travels on an outbound link.
trait Payload: Send + 'static {
    const KIND: FrameKind;
    /// A link of this kind connects only when it has something to send.
    const LAZY: bool;
    fn encode(&self) -> Bytes;
    fn name(&self) -> &'static str;
}

impl Payload for Message {
    const KIND: FrameKind = FrameKind::Message;
    const LAZY: bool = false;
    fn encode(&self) -> Bytes {
        wire::encode_message(self)
    }
    fn name(&self) -> &'static str {
        self.kind()
    }
}

impl Payload for SnapshotFrame {
    const KIND: FrameKind = FrameKind::Snapshot;
    const LAZY: bool = true;
    fn encode(&self) -> Bytes {
        SnapshotFrame::encode(self)
    }
    fn name(&self) -> &'static str {
        "snapshot frame"
    }
}

/// The running transport. Dropping it (or [`Transport::shutdown`]) stops
/// every task and closes every connection and the listener.
pub struct Transport {
    links: Arc<RwLock<Links>>,
    local_addr: SocketAddr,
    table: Arc<PeerTable>,
}

impl Transport {
    /// Starts the transport on `listener` (already bound) for `peers`
    /// (peer addresses by id; this node's own entry is ignored; see
    /// [`Outbox::set_peers`] for later changes). Inbound messages go to
    /// `inbound`, inbound snapshot frames to `frames`. Must run inside a
    /// tokio runtime.
    pub fn start(
        listener: TcpListener,
        identity: Identity,
        peers: &BTreeMap<NodeId, String>,
        inbound: mpsc::Sender<(NodeId, Message)>,
        frames: mpsc::Sender<(NodeId, SnapshotFrame)>,
        metrics: Arc<Metrics>,
        config: TransportConfig,
    ) -> std::io::Result<(Transport, Outbox)> {
        let local_addr = listener.local_addr()?;
        let table = Arc::new(PeerTable::default());
        let seed = identity.id ^ boot_nanos();
        let ctx = Arc::new(Ctx {
            identity,
            members: RwLock::new(BTreeSet::new()),
            config,
            metrics,
            table: Arc::clone(&table),
            inbound,
            frames,
        });
        let span = tracing::Span::current();
        let links = Arc::new(RwLock::new(Links {
            seed,
            ..Links::default()
        }));
        let outbox = Outbox {
            links: Arc::clone(&links),
            ctx: Arc::clone(&ctx),
            span: span.clone(),
        };
        outbox.set_peers(peers);
        links
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .tasks
            .spawn(accept(ctx, listener).instrument(span));
        Ok((
            Transport {
                links,
                local_addr,
                table,
            },
            outbox,
        ))
    }

    /// The address the peer listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn table(&self) -> &Arc<PeerTable> {
        &self.table
    }

    /// Stops every task and waits until they are gone (their sockets closed).
    pub async fn shutdown(self) {
        self.close().shutdown().await;
    }

    /// Closes every queue and hands back the tasks, to stop or abort.
    fn close(&self) -> JoinSet<()> {
        let mut links = self
            .links
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        links.messages.clear();
        links.frames.clear();
        std::mem::take(&mut links.tasks)
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        // Dropping the set aborts whatever is still running.
        drop(self.close());
    }
}

/// What every task of the transport shares.
struct Ctx {
    identity: Identity,
    /// The peers that may connect (a joining node may only ask for the
    /// membership).
    members: RwLock<BTreeSet<NodeId>>,
    config: TransportConfig,
    metrics: Arc<Metrics>,
    table: Arc<PeerTable>,
    inbound: mpsc::Sender<(NodeId, Message)>,
    frames: mpsc::Sender<(NodeId, SnapshotFrame)>,
}

impl Ctx {
    fn hello(&self, to: NodeId) -> Handshake {
        self.identity.hello(to, self.config.protocols)
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }
}

fn boot_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

// ---------------------------------------------------------------------------
// Inbound
// ---------------------------------------------------------------------------

async fn accept(ctx: Arc<Ctx>, listener: TcpListener) {
    // Connection tasks live in this set: when the accept task is stopped,
    // dropping the set stops them too.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    if conns.len() >= ctx.config.inbound_connections_max {
                        warn!(%addr, limit = ctx.config.inbound_connections_max,
                            "refusing a peer connection: too many open");
                        continue;
                    }
                    let ctx = Arc::clone(&ctx);
                    let span = tracing::Span::current();
                    conns.spawn(async move {
                        if let Err(e) = inbound(&ctx, stream).await {
                            warn!(%addr, error = %e, "dropping a peer connection");
                        }
                    }.instrument(span));
                }
                Err(e) => {
                    // Usually out of file descriptors: wait, then go on.
                    warn!(error = %e, "cannot accept a peer connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Serves one inbound connection until it closes or misbehaves: replica
/// messages, or snapshot frames, as its first frame says.
async fn inbound(ctx: &Ctx, stream: TcpStream) -> Result<(), FrameError> {
    stream.set_nodelay(true)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    let limit = Ctx::ms(ctx.config.handshake_timeout_ms);
    let hello = match timeout(limit, read_frame(&mut reader, HANDSHAKE_BYTES_MAX)).await {
        Ok(Ok(Some(frame))) => Handshake::decode(&frame)?,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(FrameError::Handshake("no handshake in time")),
    };
    let me = ctx.identity.id;
    let joining = hello.to == 0;
    let (lowest, highest) = ctx.config.protocols;
    let agreed = hello.agree_within(lowest, highest)?;
    let mut reply = BytesMut::new();
    let mut answer = ctx.hello(hello.from);
    answer.lowest = agreed;
    answer.highest = agreed;
    let mine = id_on_wire(ctx.identity.cluster);
    if let Err(e) = hello.check_cluster(mine, joining) {
        // Tell the other side who we are, so that it reports the mismatch
        // too, then hang up.
        put_frame(&mut reply, &answer.encode());
        let _ = timeout(limit, writer.write_all(&reply)).await;
        return Err(e);
    }
    if hello.to != me && !joining {
        return Err(FrameError::Handshake(
            "the peer meant to reach another node id (check --members)",
        ));
    }
    let member = ctx
        .members
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .contains(&hello.from);
    if hello.from == me || (!member && !joining) {
        warn!(
            from = hello.from,
            "a node that is not a member tried to connect"
        );
        return Err(FrameError::Handshake("sender is not a member"));
    }
    let peer = hello.from;
    put_frame(&mut reply, &answer.encode());
    timeout(limit, writer.write_all(&reply))
        .await
        .map_err(|_| FrameError::Handshake("handshake reply timed out"))??;
    let ends = Ends {
        cluster: hello.cluster,
        dialer: peer,
        acceptor: me,
        protocol: agreed,
    };
    let (mut opener, mut sealer) = authenticate(ctx.config.secret.as_ref(), ends, |secret| {
        auth::as_acceptor(&mut reader, &mut writer, secret, ends, limit)
    })
    .await?;
    if joining {
        return answer_join(
            ctx,
            peer,
            &mut reader,
            &mut writer,
            &mut opener,
            &mut sealer,
        )
        .await;
    }
    ctx.table.learn(&hello);
    let max = ctx.config.frame_bytes_max + opener.overhead() as u32;
    let Some(first) = read_frame(&mut reader, max).await? else {
        return Ok(());
    };
    let (kind, payload) = split_kind(opener.open(first)?)?;
    ctx.table.update(peer, |p| p.inbound += 1);
    debug!(peer, kind = kind.name(), "inbound peer connection up");
    let result = match kind {
        FrameKind::Message => read_messages(ctx, peer, payload, &mut reader, &mut opener).await,
        FrameKind::Snapshot => {
            read_snapshot_frames(ctx, peer, payload, &mut reader, &mut opener).await
        }
        FrameKind::Join => Err(FrameError::WrongKind {
            expected: "message or snapshot",
            got: "join",
        }),
    };
    ctx.table
        .update(peer, |p| p.inbound = p.inbound.saturating_sub(1));
    debug!(peer, kind = kind.name(), "inbound peer connection closed");
    result
}

/// After the hellos: the exchange of `auth` when the agreed protocol has
/// it (`exchange` runs it), else plain frames, which a node with a secret
/// refuses. The seals of the frames received and sent.
async fn authenticate<'a, F>(
    secret: Option<&'a ClusterSecret>,
    ends: Ends,
    exchange: impl FnOnce(Option<&'a ClusterSecret>) -> F,
) -> Result<(Seal, Seal), FrameError>
where
    F: std::future::Future<Output = Result<(Seal, Seal), FrameError>>,
{
    if ends.protocol >= AUTH_PROTOCOL {
        return exchange(secret).await;
    }
    if secret.is_some() {
        return Err(auth::no_auth_in_protocol_3());
    }
    Ok((Seal::plain(), Seal::plain()))
}

/// Tells a joining node the membership and every address this node knows.
async fn answer_join<R, W>(
    ctx: &Ctx,
    peer: NodeId,
    reader: &mut R,
    writer: &mut W,
    opener: &mut Seal,
    sealer: &mut Seal,
) -> Result<(), FrameError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let limit = Ctx::ms(ctx.config.handshake_timeout_ms);
    let max = HANDSHAKE_BYTES_MAX + opener.overhead() as u32;
    let frame = match timeout(limit, read_frame(reader, max)).await {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(FrameError::Handshake("no join request in time")),
    };
    expect_kind(opener.open(frame)?, FrameKind::Join)?;
    let directory = ctx.table.directory();
    let mut payload = BytesMut::with_capacity(directory.len() + 1);
    payload.extend_from_slice(&[u8::from(ctx.table.rejoining.load(Ordering::Relaxed))]);
    payload.extend_from_slice(&directory);
    let mut out = BytesMut::with_capacity(payload.len() + KIND_FRAME_OVERHEAD_BYTES);
    sealer.put_kind_frame(&mut out, FrameKind::Join, &payload);
    timeout(limit, writer.write_all(&out))
        .await
        .map_err(|_| FrameError::Handshake("join answer timed out"))??;
    debug!(peer, "told a joining node the membership");
    Ok(())
}

/// What a member answers a node that asks for the membership.
#[derive(Clone, Debug)]
pub struct MembershipAnswer {
    /// The member is rejoining itself (it votes for nobody yet).
    pub rejoining: bool,
    /// The encoded `crate::cluster::ClusterFile`; empty from a member that
    /// was removed.
    pub directory: Bytes,
}

/// Asks the member at `addr` for the membership, as node `identity` (one
/// that joins, founds or rejoins).
pub async fn ask_membership(
    identity: &Identity,
    addr: &str,
    config: &TransportConfig,
) -> Result<MembershipAnswer, FrameError> {
    let limit = Duration::from_millis(config.handshake_timeout_ms);
    let stream = timeout(
        Duration::from_millis(config.connect_timeout_ms),
        TcpStream::connect(addr),
    )
    .await
    .map_err(|_| FrameError::Handshake("connect timed out"))??;
    let (mut reader, mut writer) = stream.into_split();
    let mut out = BytesMut::new();
    put_frame(&mut out, &identity.hello(0, config.protocols).encode());
    timeout(limit, writer.write_all(&out))
        .await
        .map_err(|_| FrameError::Handshake("join request timed out"))??;
    let exchange = async {
        let Some(reply) = read_frame(&mut reader, HANDSHAKE_BYTES_MAX).await? else {
            return Err(FrameError::Handshake("the member closed the connection"));
        };
        let reply = Handshake::decode(&reply)?;
        let agreed = reply.agree_within(config.protocols.0, config.protocols.1)?;
        if identity.cluster.is_some() {
            reply.check_cluster(id_on_wire(identity.cluster), false)?;
        }
        if reply.to != identity.id {
            return Err(FrameError::Handshake(
                "the answer was meant for another node",
            ));
        }
        let ends = Ends {
            cluster: id_on_wire(identity.cluster),
            dialer: identity.id,
            acceptor: reply.from,
            protocol: agreed,
        };
        let (mut sealer, mut opener) = authenticate(config.secret.as_ref(), ends, |secret| {
            auth::as_dialer(&mut reader, &mut writer, secret, ends, limit)
        })
        .await?;
        let mut request = BytesMut::new();
        sealer.put_kind_frame(&mut request, FrameKind::Join, &[]);
        writer.write_all(&request).await?;
        let max = JOIN_ANSWER_BYTES_MAX + opener.overhead() as u32;
        let Some(frame) = read_frame(&mut reader, max).await? else {
            return Err(FrameError::Handshake(
                "the member closed the connection without an answer (is this node's id a member's?)",
            ));
        };
        let payload = expect_kind(opener.open(frame)?, FrameKind::Join)?;
        let rejoining = match payload.first() {
            Some(0) => false,
            Some(1) => true,
            _ => {
                return Err(FrameError::Handshake(
                    "a membership answer without its status",
                ));
            }
        };
        Ok(MembershipAnswer {
            rejoining,
            directory: payload.slice(1..),
        })
    };
    timeout(limit, exchange)
        .await
        .map_err(|_| FrameError::Handshake("no membership answer in time"))?
}

/// Hands `first` and every later snapshot frame to the replica task.
async fn read_snapshot_frames<R: tokio::io::AsyncRead + Unpin>(
    ctx: &Ctx,
    peer: NodeId,
    first: Bytes,
    reader: &mut R,
    opener: &mut Seal,
) -> Result<(), FrameError> {
    // One chunk of the largest size any sender may cut, with its fields.
    let max = ctx.config.frame_bytes_max.min(SNAPSHOT_FRAME_BYTES_MAX) + opener.overhead() as u32;
    let mut payload = first;
    loop {
        let frame = SnapshotFrame::decode(payload)?;
        if ctx.frames.send((peer, frame)).await.is_err() {
            break; // the replica task is gone: the node is stopping
        }
        let Some(next) = read_frame(reader, max).await? else {
            break;
        };
        payload = expect_kind(opener.open(next)?, FrameKind::Snapshot)?;
    }
    Ok(())
}

/// The payload of `frame`, which must be of `kind`.
fn expect_kind(frame: Bytes, kind: FrameKind) -> Result<Bytes, FrameError> {
    let (got, payload) = split_kind(frame)?;
    if got != kind {
        return Err(FrameError::WrongKind {
            expected: kind.name(),
            got: got.name(),
        });
    }
    Ok(payload)
}

/// Hands `first` and every later message frame to the replica task.
async fn read_messages<R: tokio::io::AsyncRead + Unpin>(
    ctx: &Ctx,
    peer: NodeId,
    first: Bytes,
    reader: &mut R,
    opener: &mut Seal,
) -> Result<(), FrameError> {
    let max = ctx.config.frame_bytes_max + opener.overhead() as u32;
    let mut payload = first;
    loop {
        let message = wire::decode_message(payload)?;
        ctx.metrics.peer_messages_received.inc();
        if ctx.inbound.send((peer, message)).await.is_err() {
            break; // the replica task is gone: the node is stopping
        }
        let Some(frame) = read_frame(reader, max).await? else {
            break;
        };
        payload = expect_kind(opener.open(frame)?, FrameKind::Message)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Outbound
// ---------------------------------------------------------------------------

/// Why a connection's write loop ended.
enum PumpEnd {
    /// The replica task dropped the queue: the node is stopping.
    Stopped,
    Lost(String),
}

/// Keeps one link to `peer` up (from the first payload to send, for a lazy
/// one) and writes its queue into it.
async fn outbound<P: Payload>(
    ctx: Arc<Ctx>,
    peer: NodeId,
    addr: String,
    mut queue: mpsc::Receiver<P>,
    mut rng: Rng,
) {
    let min = ctx.config.backoff_min_ms.max(1);
    let max = ctx.config.backoff_max_ms.max(min);
    let mut backoff = min;
    // Log a failure once per outage, not once per attempt.
    let mut reported = false;
    let messages = P::KIND == FrameKind::Message;
    loop {
        let first = if P::LAZY {
            match queue.recv().await {
                Some(first) => Some(first),
                None => return,
            }
        } else {
            None
        };
        match connect(&ctx, peer, &addr).await {
            Ok((reader, writer, sealer)) => {
                info!(peer, %addr, link = P::KIND.name(), "connected to peer");
                backoff = min;
                reported = false;
                if messages {
                    ctx.table.update(peer, |p| p.outbound = true);
                }
                let end = pump(&ctx, &mut queue, first, reader, writer, sealer).await;
                if messages {
                    ctx.table.update(peer, |p| p.outbound = false);
                }
                match end {
                    PumpEnd::Stopped => return,
                    PumpEnd::Lost(why) => info!(peer, %addr, %why, "lost connection to peer"),
                }
            }
            Err(e) => {
                if !reported {
                    info!(peer, %addr, error = %e, "cannot reach peer; retrying with backoff");
                    reported = true;
                } else {
                    debug!(peer, %addr, error = %e, "cannot reach peer");
                }
            }
        }
        // Wait, dropping what is queued meanwhile: the protocol resends
        // what still matters, and stale messages would only delay it.
        let wait = backoff / 2 + rng.below(backoff / 2 + 1);
        backoff = (backoff * 2).min(max);
        let deadline = Instant::now() + Duration::from_millis(wait);
        loop {
            tokio::select! {
                () = sleep_until(deadline) => break,
                message = queue.recv() => match message {
                    Some(_) => {
                        ctx.table.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    None => return,
                },
            }
        }
    }
}

/// A connection to a peer, handshaken: its halves and the seal of the
/// frames written into it.
type Halves = (
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
    Seal,
);

/// Connects to `peer` and exchanges handshakes.
async fn connect(ctx: &Ctx, peer: NodeId, addr: &str) -> Result<Halves, FrameError> {
    let stream = timeout(
        Ctx::ms(ctx.config.connect_timeout_ms),
        TcpStream::connect(addr),
    )
    .await
    .map_err(|_| FrameError::Handshake("connect timed out"))??;
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.into_split();
    let limit = Ctx::ms(ctx.config.handshake_timeout_ms);
    let mut hello = BytesMut::new();
    put_frame(&mut hello, &ctx.hello(peer).encode());
    timeout(limit, writer.write_all(&hello))
        .await
        .map_err(|_| FrameError::Handshake("handshake timed out"))??;
    let reply = match timeout(limit, read_frame(&mut reader, HANDSHAKE_BYTES_MAX)).await {
        Ok(Ok(Some(frame))) => Handshake::decode(&frame)?,
        Ok(Ok(None)) => return Err(FrameError::Handshake("the peer closed the connection")),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(FrameError::Handshake("no handshake reply in time")),
    };
    let agreed = reply.agree_within(ctx.config.protocols.0, ctx.config.protocols.1)?;
    reply.check_cluster(id_on_wire(ctx.identity.cluster), false)?;
    if reply.from != peer || reply.to != ctx.identity.id {
        warn!(
            peer,
            %addr,
            answered_as = reply.from,
            "the address of a peer is answered by another node (check --members)"
        );
        return Err(FrameError::Handshake("wrong node at the peer address"));
    }
    let ends = Ends {
        cluster: id_on_wire(ctx.identity.cluster),
        dialer: ctx.identity.id,
        acceptor: peer,
        protocol: agreed,
    };
    let (sealer, _) = authenticate(ctx.config.secret.as_ref(), ends, |secret| {
        auth::as_dialer(&mut reader, &mut writer, secret, ends, limit)
    })
    .await?;
    ctx.table.learn(&reply);
    Ok((reader, writer, sealer))
}

/// Writes queued payloads (`first`, then the queue's), many frames per
/// write, until the connection breaks or the queue closes.
async fn pump<P: Payload>(
    ctx: &Ctx,
    queue: &mut mpsc::Receiver<P>,
    mut first: Option<P>,
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut sealer: Seal,
) -> PumpEnd {
    let max = ctx.config.frame_bytes_max;
    let mut buf = BytesMut::new();
    let mut probe = [0u8; 1];
    loop {
        let next = match first.take() {
            Some(payload) => Some(payload),
            None => tokio::select! {
                payload = queue.recv() => payload,
                // The peer never writes after its handshake: any read
                // result means the connection closed (or the peer
                // misbehaves).
                read = reader.read(&mut probe) => {
                    return PumpEnd::Lost(match read {
                        Ok(0) => "closed by the peer".to_owned(),
                        Ok(_) => "unexpected bytes from the peer".to_owned(),
                        Err(e) => e.to_string(),
                    });
                }
            },
        };
        let Some(mut payload) = next else {
            return PumpEnd::Stopped;
        };
        buf.clear();
        let mut frames = 0u64;
        loop {
            let encoded = payload.encode();
            let framed = encoded.len() + KIND_FRAME_OVERHEAD_BYTES - frame::FRAME_HEADER_BYTES;
            if framed > max as usize {
                warn!(
                    kind = payload.name(),
                    bytes = encoded.len(),
                    limit = max,
                    "dropping a message larger than the frame limit"
                );
                ctx.table.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                sealer.put_kind_frame(&mut buf, P::KIND, &encoded);
                frames += 1;
            }
            if frames as usize >= ctx.config.write_batch_frames_max
                || buf.len() >= ctx.config.write_batch_bytes_max
            {
                break;
            }
            match queue.try_recv() {
                Ok(next) => payload = next,
                Err(_) => break,
            }
        }
        if buf.is_empty() {
            continue;
        }
        let limit = Ctx::ms(ctx.config.write_timeout_ms);
        match timeout(limit, writer.write_all(&buf)).await {
            Ok(Ok(())) => {
                if P::KIND == FrameKind::Message {
                    ctx.metrics.peer_messages_sent.inc_by(frames);
                }
            }
            Ok(Err(e)) => return PumpEnd::Lost(e.to_string()),
            Err(_) => return PumpEnd::Lost("a write timed out".to_owned()),
        }
    }
}
