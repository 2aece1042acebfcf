//! A parliament node: a tokio process that owns one Multi-Paxos replica, its
//! storage and the key-value state machine, and serves clients and peers.
//!
//! One task owns the replica; every other task talks to it through bounded
//! channels ([`api::NodeHandle`]), so there are no locks around protocol state.
//!
//! [`Node::start`] opens the data directory, loads the newest snapshot and
//! replays the log above it into a `host::Host`, starts the peer transport
//! ([`crate::net`]) and the replica task (`replica_task`, the shell that
//! carries out what the host asks) on the caller's runtime, the log writer
//! on a thread of its own (`disk`) and the snapshot file threads
//! (`snapshots`), and hands back a [`Node`] whose [`Node::handle`] clients
//! use.

pub mod api;
pub mod backup;
pub mod cluster;
pub mod config;
mod datadir;
mod disk;
pub mod http;
pub mod metrics;
pub mod net;
mod replica_task;
pub mod server;
mod snapshots;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use host::{Host, HostStats};
use kv::Store;
use paxos::NodeId;
use paxos::replica::{Configs, Durable, Record};
use storage::replica::{FileStorage, ReplicaStorage, StorageError};
use storage::snapshot::{OpenReport, SnapshotMeta};
use storage::wal::Options;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{Instrument, info, warn};

pub use self::api::NodeHandle;
use self::cluster::{ClusterFile, ClusterId};
pub use self::config::NodeConfig;
use self::datadir::DataDir;
use self::replica_task::{Channels, Published, ReplicaTask};
use self::snapshots::{DiskSnapshots, FileThreads, LoadError, id_of};
use crate::metrics::Metrics;
use crate::net::{Identity, Transport};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "data directory {} belongs to node {found}, not node {expected}; give each node its own directory",
        .dir.display()
    )]
    WrongNode {
        dir: PathBuf,
        found: NodeId,
        expected: NodeId,
    },
    #[error("data directory {}: {reason}", .dir.display())]
    DataDir { dir: PathBuf, reason: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Snapshot(#[from] LoadError),
    #[error(
        "data directory {} holds snapshots but no log; a node that lost its log rejoins \
         from an empty data directory: move the whole directory aside first",
        .dir.display()
    )]
    SnapshotsWithoutLog { dir: PathBuf },
    #[error("cannot start a thread of the node: {0}")]
    Thread(io::Error),
}

/// Why a running node stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum NodeFailure {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the replica task stopped unexpectedly (see the log above)")]
    Crashed,
}

/// A running node. Dropping it stops it abruptly, like [`Node::stop`]
/// without the wait.
pub struct Node {
    id: NodeId,
    handle: NodeHandle,
    transport: Option<Transport>,
    stop: Option<oneshot::Sender<()>>,
    exit: Option<oneshot::Receiver<Result<(), StorageError>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Starts node `config.id` with its peer listener already bound. Must be
    /// called inside a tokio runtime (the transport runs on it).
    pub async fn start(config: NodeConfig, peer_listener: TcpListener) -> Result<Node, StartError> {
        config.validate().map_err(StartError::Config)?;
        let span = tracing::info_span!("node", id = config.id);
        let id = config.id;
        check_peer_exposure(&config, &peer_listener)?;

        // What the data directory says is checked before any peer is asked.
        DataDir::open(&config.data_dir, config.id)?;
        let kept = ClusterFile::load(&config.data_dir).map_err(|e| StartError::DataDir {
            dir: config.data_dir.clone(),
            reason: e.to_string(),
        })?;
        // A node that joins asks a member for the membership first (only
        // on its first start: later its data directory has it).
        let told = if config.join.is_empty() || kept.is_some() {
            None
        } else {
            Some(join(&config).instrument(span.clone()).await?)
        };
        // A node told it lost its state checks that it may rejoin.
        let now = if config.rejoin {
            Some(
                membership_now(&config, kept.as_ref())
                    .instrument(span.clone())
                    .await,
            )
        } else {
            None
        };
        let cluster_id = match (kept.as_ref().and_then(|f| f.id), &told, &now) {
            (Some(id), _, _) => id,
            (None, Some(told), _) => told.id.ok_or_else(|| {
                StartError::Config("the member that answered has no cluster id".to_owned())
            })?,
            (None, None, Some(Ok((_, Some(id))))) => *id,
            (None, None, Some(Err(e))) => {
                return Err(StartError::Config(rejoin_blocked(e)));
            }
            _ => {
                find_cluster_id(&config, kept.as_ref())
                    .instrument(span.clone())
                    .await?
            }
        };
        let now = now.map(|now| now.map(|(configs, _)| configs));
        // Opening replays the whole log: blocking work, off the runtime.
        let opening = config.clone();
        let opened = tokio::task::spawn_blocking(move || open(&opening, told, now, cluster_id))
            .await
            .map_err(|e| StartError::Thread(io::Error::other(e.to_string())))??;
        let Opened {
            moved_aside,
            state:
                State {
                    storage,
                    torn_bytes,
                    snapshots,
                    loaded,
                    snapshot_report,
                },
            data_dir,
            client_epoch,
            cluster,
        } = opened;
        {
            let _enter = span.enter();
            if torn_bytes > 0 {
                warn!(
                    torn_bytes,
                    "the log ended in a torn write (a crash mid-append); it was cut off"
                );
            }
            snapshots::log_open_report(&snapshot_report);
            if let Some((meta, store)) = &loaded {
                info!(
                    slot = meta.slot,
                    keys = store.len(),
                    "loaded the newest snapshot"
                );
            }
            if !moved_aside.is_empty() {
                warn!(moved = ?moved_aside, "the damaged log and snapshots were moved aside");
            }
        }

        let durable = storage.durable().clone();
        {
            let _enter = span.enter();
            if durable.rejoining {
                warn!(
                    "rejoining as a learner: this node votes again once every other member \
                     has answered and it has caught up safely (do not keep --rejoin in a \
                     service definition: every start with it rejoins again)"
                );
            }
        }
        // The snapshot holds every entry up to its slot; the log above it is
        // applied again. A log marked as rejoining restores as a learner.
        let snapshot = loaded.map(|(meta, store)| (id_of(&meta), store));
        // The founders the data directory names govern the first slots,
        // whatever `--members` says now.
        let mut paxos = config.paxos(election_seed(id));
        paxos.members = cluster.founders.clone();
        paxos.alpha = cluster.alpha;
        let host = Host::restore(
            config.host(),
            paxos,
            durable,
            snapshot,
            client_epoch,
            cluster.joined_configs(),
        )
        .map_err(|e| StartError::Config(e.to_string()))?;
        let peers: std::collections::BTreeMap<NodeId, String> =
            cluster::address_book(&cluster, host.configs())
                .into_iter()
                .map(|(id, addrs)| (id, addrs.peer))
                .collect();

        let (ops_tx, ops_rx) = mpsc::channel(config.ops_queue_max);
        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_queue_max);
        let (frames_tx, frames_rx) = mpsc::channel(net::SNAPSHOT_INBOUND_FRAMES);
        let (files_tx, files_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(api::StatusReport::default());
        let (stats_tx, stats_rx) = watch::channel(HostStats::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        let metrics = Arc::new(Metrics::new(status_rx.clone(), stats_rx.clone()));

        let identity = Identity {
            id,
            cluster: Some(cluster_id),
            client_addr: config.client_addr.clone(),
            http_addr: config.http_addr.clone(),
        };
        let (transport, outbox) = {
            let _enter = span.enter();
            Transport::start(
                peer_listener,
                identity,
                &peers,
                inbound_tx,
                frames_tx,
                Arc::clone(&metrics),
                config.transport.clone(),
            )
            .map_err(|source| StartError::Io {
                op: "start the peer transport on",
                path: PathBuf::from("the peer listener"),
                source,
            })?
        };
        // Joining nodes are told the membership from the first moment.
        transport
            .table()
            .set_directory(cluster::directory(&cluster, host.configs(), id));
        let peer_addr = transport.local_addr();
        let disk = disk::Disk::start(storage, Arc::clone(&metrics), span.clone(), id)
            .map_err(StartError::Thread)?;
        let backups = snapshots.clone();
        let files = FileThreads::start(snapshots, files_tx, outbox.clone(), span.clone())
            .map_err(StartError::Thread)?;
        let task = ReplicaTask::new(
            config,
            host,
            disk,
            files,
            data_dir,
            outbox,
            Arc::clone(transport.table()),
            Arc::clone(&metrics),
            Published {
                status: status_tx,
                stats: stats_tx,
            },
            cluster,
        );
        let channels = Channels {
            ops: ops_rx,
            inbound: inbound_rx,
            frames: frames_rx,
            files: files_rx,
            stop: stop_rx,
        };
        // The replica task runs on the caller's runtime, beside the client
        // connections and the peer transport: with one runtime thread per
        // node, handing an op to the replica and its answer back costs no
        // thread switch. Nothing in it waits for the disk (see `disk`).
        let task = tokio::spawn(tracing::Instrument::instrument(
            async move {
                let result = task.run(channels).await;
                let _ = exit_tx.send(result);
            },
            span.clone(),
        ));
        // Return once the log is replayed and the first status published, so
        // that what the handle reports is never the empty default.
        let mut exit_rx = exit_rx;
        let mut first = status_rx.clone();
        if first.changed().await.is_err() {
            return Err(match (&mut exit_rx).await {
                Ok(Err(e)) => StartError::Storage(e),
                _ => {
                    StartError::Thread(io::Error::other("the replica task stopped while starting"))
                }
            });
        }
        {
            let _enter = span.enter();
            info!(%peer_addr, "node started");
        }
        Ok(Node {
            id,
            handle: NodeHandle::new(ops_tx, status_rx, stats_rx, metrics).with_snapshots(backups),
            transport: Some(transport),
            stop: Some(stop_tx),
            exit: Some(exit_rx),
            task: Some(task),
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// A handle for clients, HTTP and tests.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// What the replica task has counted, as of its latest status.
    pub fn stats(&self) -> HostStats {
        self.handle.stats()
    }

    /// Waits until the node stops on its own: `Ok` never comes while it
    /// runs; an error says why it stopped (storage failed, or a bug).
    pub async fn failed(&mut self) -> NodeFailure {
        let Some(exit) = self.exit.as_mut() else {
            return NodeFailure::Crashed;
        };
        let result = exit.await;
        self.exit = None;
        match result {
            Ok(Err(e)) => NodeFailure::Storage(e),
            // Stopped without being asked, or the thread panicked.
            Ok(Ok(())) | Err(_) => NodeFailure::Crashed,
        }
    }

    /// Stops the node abruptly (as a crash after the last fdatasync would)
    /// and waits until its tasks, connections and thread are gone.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(transport) = self.transport.take() {
            transport.shutdown().await;
        }
        if let Some(task) = self.task.take() {
            // The replica task ends at its next turn.
            let _ = task.await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Dropping the stop sender ends the replica task; dropping the
        // transport aborts its tasks.
        self.stop.take();
        self.transport.take();
    }
}

/// What opening the data directory yields.
struct Opened {
    /// Where `--rejoin` moved a damaged log and snapshots.
    moved_aside: Vec<PathBuf>,
    state: State,
    data_dir: DataDir,
    /// The epoch of this start's client ids, made durable.
    client_epoch: u64,
    /// `DIR/cluster`.
    cluster: ClusterFile,
}

fn open(
    config: &NodeConfig,
    told: Option<ClusterFile>,
    now: Option<Result<Configs, String>>,
    cluster_id: ClusterId,
) -> Result<Opened, StartError> {
    let data_dir = DataDir::open(&config.data_dir, config.id)?;
    let cluster = cluster_file(config, &data_dir, told, cluster_id)?;
    let mut moved_aside = Vec::new();
    let mut opened = match open_state(config, &data_dir) {
        // The operator says this node's state is lost: whatever is damaged
        // goes aside, kept, and the node starts empty.
        Err(e @ (StartError::Storage(_) | StartError::Snapshot(_))) if config.rejoin => {
            may_rejoin(config.id, &cluster, now.as_ref())?;
            let suffix = format!(
                "damaged-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            );
            moved_aside = data_dir.move_state_aside(&suffix)?;
            tracing::warn!(error = %e, moved = ?moved_aside, "the state on disk is damaged; moved it aside to rejoin");
            open_state(config, &data_dir)?
        }
        other => other?,
    };
    // `--rejoin` says the state on disk cannot be trusted: lost, damaged, or
    // an old copy put back (a restored backup, whole but stale, has forgotten
    // the promises made since). Whatever the log holds, the node rejoins:
    // the mark forgets every vote it holds and keeps what it knows chosen.
    // The mark is made durable before anything is sent: should the node
    // stop before the rejoin completes, it restarts rejoining even without
    // the flag, never as a voter with forgotten promises.
    if config.rejoin && !opened.storage.durable().rejoining {
        may_rejoin(config.id, &cluster, now.as_ref())?;
        if opened.loaded.is_some() && opened.storage.durable() == &Durable::default() {
            return Err(StartError::SnapshotsWithoutLog {
                dir: config.data_dir.clone(),
            });
        }
        opened.storage.append(&[Record::Rejoin])?;
    }
    let client_epoch = data_dir.next_epoch()?;
    Ok(Opened {
        moved_aside,
        state: opened,
        data_dir,
        client_epoch,
        cluster,
    })
}

/// A peer port that listens beyond loopback needs the members to prove
/// who they are (`net::auth`), unless the operator says otherwise.
fn check_peer_exposure(config: &NodeConfig, listener: &TcpListener) -> Result<(), StartError> {
    let addr = listener.local_addr().map_err(|source| StartError::Io {
        op: "read the address of",
        path: PathBuf::from("the peer listener"),
        source,
    })?;
    if addr.ip().is_loopback() || config.transport.secret.is_some() {
        return Ok(());
    }
    if config.insecure_peers {
        warn!(
            %addr,
            "the peer port listens beyond loopback and the members share no secret \
             (--insecure-peers): whoever reaches it can disrupt the cluster or forge its data"
        );
        return Ok(());
    }
    Err(StartError::Config(format!(
        "the peer port listens on {addr}, beyond loopback, and the members share no secret: \
         give every member the same --cluster-secret-file (see docs/operations.md), or \
         --insecure-peers if a private network alone keeps strangers away"
    )))
}

/// Why a rejoin cannot start, and what to do.
fn rejoin_blocked(why: &str) -> String {
    format!(
        "--rejoin needs every other member up and voting, and not all are ({why}). Start \
         this node again once they are. If every member was started with --rejoin, or more \
         than one lost its state, the cluster cannot rebuild itself: see docs/recovery.md"
    )
}

/// Whether node `id`, which lost its state, may rejoin under its old id:
/// only while the membership is still the founding one. The rejoin rule
/// (`paxos::replica::rejoin`) counts on every member of a fixed membership;
/// once members changed, the node must be replaced instead (removed, and a
/// new node with a new id joined).
fn may_rejoin(
    id: NodeId,
    cluster: &ClusterFile,
    now: Option<&Result<Configs, String>>,
) -> Result<(), StartError> {
    let replace = |why: String| {
        StartError::Config(format!(
            "{why}; a node that lost its state cannot rejoin under its old id then. Replace \
             it: run PAXOS MEMBER REMOVE {id} on a member, then start a new node with a new \
             id and --join, and add it with PAXOS MEMBER ADD"
        ))
    };
    let configs = match now {
        None => return Ok(()),
        Some(Err(e)) => {
            return Err(StartError::Config(rejoin_blocked(e)));
        }
        Some(Ok(configs)) => configs,
    };
    let latest = configs.latest();
    if latest.retired.contains(&id) {
        return Err(replace(format!("node {id} was removed from the cluster")));
    }
    let voters: Vec<NodeId> = latest.voters().collect();
    if voters != cluster.founders
        || latest.learners().next().is_some()
        || !latest.retired.is_empty()
    {
        return Err(replace(format!(
            "the membership changed since the cluster was founded by {:?} (voters now {voters:?})",
            cluster.founders
        )));
    }
    Ok(())
}

/// The peer addresses of every other member this node knows of: from
/// `--members`, then from its `DIR/cluster`.
fn other_members(config: &NodeConfig, kept: Option<&ClusterFile>) -> BTreeMap<NodeId, String> {
    let mut addrs: BTreeMap<NodeId, String> = config
        .members
        .iter()
        .filter(|(id, _)| **id != config.id)
        .map(|(&id, a)| (id, a.clone()))
        .collect();
    for (&id, a) in kept.iter().flat_map(|file| &file.book) {
        if id != config.id {
            addrs.entry(id).or_insert_with(|| a.peer.clone());
        }
    }
    addrs
}

/// How node `config.id` introduces itself before it starts: as a member of
/// the cluster its data directory names, if it names one.
fn asking_identity(config: &NodeConfig, kept: Option<&ClusterFile>) -> Identity {
    Identity {
        id: config.id,
        cluster: kept.and_then(|f| f.id),
        client_addr: config.client_addr.clone(),
        http_addr: config.http_addr.clone(),
    }
}

/// The cluster id of a data directory that names none yet (a founder's
/// first start, or a directory of format 1): the lowest founder makes it;
/// every other node asks the members until one has it (see `cluster`).
async fn find_cluster_id(
    config: &NodeConfig,
    kept: Option<&ClusterFile>,
) -> Result<ClusterId, StartError> {
    let founders: Vec<NodeId> = match kept {
        Some(file) => file.founders.clone(),
        None => config.members.keys().copied().collect(),
    };
    let lowest = founders.iter().min().copied();
    if !config.rejoin && lowest == Some(config.id) {
        let id = ClusterId::generate();
        info!(cluster_id = %id, "made the cluster id, as the founder with the lowest id");
        return Ok(id);
    }
    let addrs = other_members(config, kept);
    if addrs.is_empty() {
        return Err(StartError::Config(
            "no other member is known to ask for the cluster id; give --members".to_owned(),
        ));
    }
    let identity = asking_identity(config, kept);
    let mut told_to_wait = false;
    // What each member last answered wrongly, said once until it changes.
    let mut said: BTreeMap<NodeId, String> = BTreeMap::new();
    loop {
        for (peer, addr) in &addrs {
            let answer = net::ask_membership(&identity, addr, &config.transport).await;
            if let Err(e) = &answer {
                let error = e.to_string();
                if said.get(peer) != Some(&error) {
                    warn!(peer, %addr, %error, "cannot ask this member for the cluster id");
                    said.insert(*peer, error);
                }
            }
            let file = answer
                .ok()
                .and_then(|a| ClusterFile::decode(&a.directory).ok());
            let Some(file) = file else { continue };
            if let (Some(slot), None) = (file.restored, kept) {
                return Err(StartError::Config(format!(
                    "node {peer} belongs to a cluster restored from a backup of slot {slot}; \
                     its founders start from that backup, and a founder with an empty data \
                     directory cannot join them: run `parliament restore --from FILE \
                     --data-dir DIR --id {me} --members ...` with the same backup file for \
                     this node first",
                    me = config.id
                )));
            }
            if let Some(id) = file.id {
                info!(cluster_id = %id, peer, "learned the cluster id");
                return Ok(id);
            }
        }
        if !told_to_wait {
            info!(
                founder = ?lowest,
                "waiting for the cluster id: the founder with the lowest id makes it on its \
                 first start, and no member has it yet"
            );
            told_to_wait = true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Asks every other member this node knows of for the membership, for a
/// rejoin: the newest membership any of them reports, and the cluster id
/// they name. Every other founder must answer (the rejoin needs them all
/// anyway), so that one that lags behind a change cannot hide it.
async fn membership_now(
    config: &NodeConfig,
    kept: Option<&ClusterFile>,
) -> Result<(Configs, Option<ClusterId>), String> {
    let addrs = other_members(config, kept);
    if addrs.is_empty() {
        return Err("no other member is known".to_owned());
    }
    let identity = asking_identity(config, kept);
    let mut newest: Option<Configs> = None;
    let mut cluster_id: Option<ClusterId> = None;
    let mut silent = Vec::new();
    for (id, addr) in &addrs {
        let answer = net::ask_membership(&identity, addr, &config.transport)
            .await
            .map_err(|e| e.to_string())
            .and_then(|answer| {
                if answer.rejoining {
                    return Err("it is rejoining itself, and a rejoin needs every other \
                         member voting"
                        .to_owned());
                }
                if answer.directory.is_empty() {
                    // Removed itself: whatever it knows is out of date.
                    return Ok(None);
                }
                ClusterFile::decode(&answer.directory)
                    .map(|f| Some((f.joined_configs(), f.id)))
                    .map_err(|e| e.to_string())
            });
        let answer = match answer {
            Ok(Some((configs, Some(theirs)))) => match cluster_id {
                Some(ours) if ours != theirs => {
                    return Err(format!(
                        "the members name two clusters ({ours} and {theirs}); check --members"
                    ));
                }
                _ => {
                    cluster_id = Some(theirs);
                    Ok(configs)
                }
            },
            Ok(Some((configs, None))) => Ok(configs),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match answer {
            Ok(Some(configs)) => {
                let later = newest
                    .as_ref()
                    .is_none_or(|n| configs.latest_from() > n.latest_from());
                if later {
                    newest = Some(configs);
                }
            }
            Ok(None) => {}
            Err(e) => silent.push(format!("node {id} at {addr}: {e}")),
        }
    }
    let founders_silent = config
        .members
        .keys()
        .any(|id| *id != config.id && silent.iter().any(|s| s.starts_with(&format!("node {id} "))));
    match newest {
        Some(configs) if !founders_silent => Ok((configs, cluster_id)),
        _ => Err(silent.join("; ")),
    }
}

/// The data directory's `cluster` record: read, or written on the first
/// start from `--members` (a founder) or from what a member told a joining
/// node. Flags that disagree with it are reported; the record wins.
fn cluster_file(
    config: &NodeConfig,
    data_dir: &DataDir,
    told: Option<ClusterFile>,
    cluster_id: ClusterId,
) -> Result<ClusterFile, StartError> {
    let dir = data_dir.root();
    let found = ClusterFile::load(dir).map_err(|e| StartError::DataDir {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    if let Some(file) = found {
        if !config.members.is_empty() {
            let flags: Vec<NodeId> = config.members.keys().copied().collect();
            let moved: Vec<NodeId> = config
                .members
                .iter()
                .filter(|(id, addr)| file.book.get(id).is_some_and(|a| &a.peer != *addr))
                .map(|(&id, _)| id)
                .collect();
            if !moved.is_empty() {
                warn!(
                    ?moved,
                    "--members gives other peer addresses than this node keeps for these \
                     founders; the kept ones are used (a founder cannot move: replace it \
                     by a new member at the new address)"
                );
            }
            if flags != file.founders {
                warn!(
                    members_flag = ?flags,
                    founders = ?file.founders,
                    "--members does not name this node's founding members; the membership \
                     kept in the data directory and the log wins (--members is only read \
                     when a cluster is founded)"
                );
            }
        }
        if file.id.is_none() {
            // Written before clusters had ids: name it now, durably.
            let file = ClusterFile {
                id: Some(cluster_id),
                ..file
            };
            data_dir.write_cluster(&file.encode())?;
            info!(%cluster_id, "the data directory names its cluster from now on");
            return Ok(file);
        }
        return Ok(file);
    }
    let file = if let Some(told) = told {
        told
    } else if !config.members.is_empty() {
        let book = config
            .members
            .iter()
            .map(|(&id, peer)| {
                let client = if id == config.id {
                    config.client_addr.clone()
                } else {
                    String::new()
                };
                (
                    id,
                    cluster::Addrs {
                        peer: peer.clone(),
                        client,
                    },
                )
            })
            .collect();
        ClusterFile {
            id: Some(cluster_id),
            alpha: config.alpha,
            founders: config.members.keys().copied().collect(),
            book,
            configs: None,
            restored: None,
        }
    } else {
        return Err(StartError::Config(
            "this data directory belongs to no cluster yet: start with --members to found \
             a new cluster, or with --join to join a running one"
                .to_owned(),
        ));
    };
    let file = ClusterFile {
        id: Some(cluster_id),
        ..file
    };
    data_dir.write_cluster(&file.encode())?;
    Ok(file)
}

/// Asks the members at `config.join` for the membership until one answers
/// with a membership that names this node (started before `PAXOS MEMBER
/// ADD`, it waits for it).
async fn join(config: &NodeConfig) -> Result<ClusterFile, StartError> {
    let identity = asking_identity(config, None);
    let mut told_to_wait = false;
    let mut failures: std::collections::BTreeMap<String, String> = Default::default();
    loop {
        for addr in &config.join {
            let answer = net::ask_membership(&identity, addr, &config.transport)
                .await
                .map_err(|e| e.to_string())
                .and_then(|answer| {
                    if answer.directory.is_empty() {
                        return Err("this member was removed from the cluster".to_owned());
                    }
                    ClusterFile::decode(&answer.directory).map_err(|e| e.to_string())
                });
            let file = match answer {
                Ok(file) => file,
                Err(e) => {
                    if failures.insert(addr.clone(), e.clone()).as_ref() != Some(&e) {
                        warn!(%addr, error = %e, "cannot ask this member for the membership; retrying");
                    }
                    continue;
                }
            };
            let Some(configs) = file.joined_configs() else {
                warn!(%addr, "the member answered without a membership; retrying");
                continue;
            };
            if file.id.is_none() {
                warn!(%addr, "the member answered without a cluster id (an older release?); retrying");
                continue;
            }
            let latest = configs.latest();
            if latest.retired.contains(&config.id) {
                return Err(StartError::Config(format!(
                    "node {} was removed from this cluster; a new node needs a new id",
                    config.id
                )));
            }
            let ever_voted = configs.entries().iter().any(|(_, m)| m.is_voter(config.id));
            if ever_voted || file.founders.contains(&config.id) {
                // A voter that starts empty would break promises it no
                // longer remembers.
                return Err(StartError::Config(format!(
                    "node {} is (or was) a voter of this cluster, and this data directory is \
                     empty: it cannot join again under its old id. Replace it: run PAXOS \
                     MEMBER REMOVE {} on a member, then start a new node with a new id",
                    config.id, config.id
                )));
            }
            if latest.is_member(config.id) {
                info!(%addr, voters = ?latest.voters().collect::<Vec<_>>(), "joined: the membership names this node");
                return Ok(ClusterFile {
                    alpha: configs.alpha(),
                    founders: Vec::new(),
                    ..file
                });
            }
            if !told_to_wait {
                info!(
                    %addr,
                    "node {} is not a member yet; waiting for an operator to run \
                     PAXOS MEMBER ADD {} <peer-addr> <client-addr> on any member",
                    config.id,
                    config.id
                );
                told_to_wait = true;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The snapshots and the log of a data directory, opened.
struct State {
    storage: FileStorage,
    torn_bytes: u64,
    snapshots: DiskSnapshots,
    /// The newest snapshot and its store.
    loaded: Option<(SnapshotMeta, Store)>,
    snapshot_report: OpenReport,
}

/// Opens the snapshots and the log of `data_dir`.
fn open_state(config: &NodeConfig, data_dir: &DataDir) -> Result<State, StartError> {
    let (snapshots, snapshot_report) =
        DiskSnapshots::open(data_dir.snapshot_dir()).map_err(LoadError::from)?;
    let loaded = snapshots.load_latest()?;
    let options = Options {
        fsync: config.fsync,
        segment_bytes_max: config.wal_segment_bytes_max,
        ..Options::default()
    };
    let (storage, torn_bytes) = FileStorage::open(&data_dir.wal_dir(), options)?;
    Ok(State {
        storage,
        torn_bytes,
        snapshots,
        loaded,
        snapshot_report,
    })
}

/// Election jitter differs per node and per start.
fn election_seed(id: NodeId) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ id.rotate_left(32)
}
