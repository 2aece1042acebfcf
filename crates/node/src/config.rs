//! How a node is set up: identity, members, storage, timing and limits.
//!
//! # Time
//!
//! The protocol counts logical ticks; the node delivers one every `tick_ms`
//! of real time (10 ms by default). With the defaults that makes:
//!
//! | setting | ticks | at 10 ms a tick |
//! |---|---|---|
//! | `heartbeat_ticks` | 2 | a heartbeat every 20 ms |
//! | `election_ticks` | 20 | a follower suspects its leader after 200 to 400 ms of silence |
//! | `lease_ticks` | 16 | followers promise nobody else for 160 ms after a heartbeat; the leader trusts its lease a little less long (clock drift) |
//!
//! # Sizes
//!
//! A peer frame must hold the largest message the protocol sends: an accept
//! that resends every slot in flight, or a catch-up of `catch_up_slots_max`
//! slots. [`NodeConfig::validate`] checks that those fit in
//! `frame_bytes_max`, which is why a single command is limited to
//! `command_bytes_max` (1 MiB by default, like etcd's request limit).
//!
//! # Snapshots
//!
//! The node snapshots its store after `snapshot.entries_max` applied log
//! entries (slots, 10 000 by default) or `snapshot.bytes_max` bytes of
//! applied commands (64 MiB), whichever comes first, and then drops the log
//! below the snapshot. Log segments hold `wal_segment_bytes_max` bytes
//! (64 MiB), and only whole segments go, so the log on disk stays below
//! about one policy's worth of entries plus two segments. A peer that needs
//! slots compacted away is sent the snapshot in chunks, on a connection of
//! its own ([`SnapshotTransferConfig`] has the limits).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use host::transfer::{CHUNK_BYTES_LIMIT, DEFAULT_CHUNK_BYTES_MAX, DEFAULT_WINDOW_CHUNKS};
use host::{HostConfig, SnapshotPolicy, TransferConfig};
use paxos::NodeId;
use paxos::replica::Config as PaxosConfig;
use storage::wal::{DEFAULT_SEGMENT_BYTES_MAX, FsyncPolicy};

use crate::net::TransportConfig;

/// Node ids are at most this, so that client session ids can embed them.
pub const NODE_ID_MAX: NodeId = 0xFFFF;

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// The founding voters' peer addresses, this node included, for a node
    /// that bootstraps a new cluster. Kept in the data directory on the
    /// first start; later the data directory's membership wins (empty
    /// then is fine).
    pub members: BTreeMap<NodeId, String>,
    /// Peer addresses of members to ask for the membership, for a node
    /// that joins a running cluster (with `members` empty). Used only on
    /// the first start.
    pub join: Vec<String>,
    /// A membership change chosen in slot `s` governs from `s + alpha`;
    /// fixed when the cluster is founded.
    pub alpha: u64,
    /// A learner added to become a voter is promoted once it is within this
    /// many slots of the commit point.
    pub promote_within_slots: u64,
    /// Where clients and HTTP reach this node, as told to peers and shown in
    /// status reports.
    pub client_addr: String,
    pub http_addr: String,
    /// `Never` is UNSAFE: a crash may then lose promises and acceptances the
    /// node already reported. For tests and benchmarks only.
    pub fsync: FsyncPolicy,
    /// Real time per protocol tick.
    pub tick_ms: u64,
    pub heartbeat_ticks: u64,
    pub election_ticks: u64,
    /// 0 turns leader leases off (every linearizable read then costs a
    /// heartbeat round).
    pub lease_ticks: u64,
    pub inflight_slots_max: u64,
    pub batch_commands_max: usize,
    pub batch_bytes_max: usize,
    pub catch_up_slots_max: usize,
    /// A write handed to the protocol whose outcome is still unknown after
    /// this long is answered [`super::api::NodeError::Uncertain`].
    pub write_timeout_ms: u64,
    /// A write handed on but not applied after this long is proposed again
    /// (with the same session and sequence number, so it applies once).
    pub reforward_ms: u64,
    /// A linearizable read not answered after this long fails with
    /// `ClusterDown` (reads change nothing, so failing them is safe).
    pub read_timeout_ms: u64,
    /// Ops (client requests) queued for the replica task.
    pub ops_queue_max: usize,
    /// Peer messages queued for the replica task.
    pub inbound_queue_max: usize,
    /// Ops and peer messages each taken per turn of the loop, so one
    /// fdatasync covers them all (group commit).
    pub turn_items_max: usize,
    /// Client writes and reads waiting for an answer.
    pub pending_writes_max: usize,
    pub pending_reads_max: usize,
    /// Largest encoded client request (command plus session tag).
    pub command_bytes_max: usize,
    /// This node lost its log (a damaged or wiped disk) and starts from an
    /// empty data directory: it rejoins as a learner that votes again only
    /// once that is safe (see `paxos::replica` rejoin). Ignored when the
    /// directory holds a log. Starting a lost node *without* it would let
    /// it break promises it no longer remembers.
    pub rejoin: bool,
    /// Start even though the peer port listens beyond loopback and the
    /// members share no secret (`--insecure-peers`): whoever reaches the
    /// port then speaks to the replica.
    pub insecure_peers: bool,
    /// When to snapshot the store and compact the log.
    pub snapshot: SnapshotPolicy,
    /// Size at which the write-ahead log starts a new segment file.
    pub wal_segment_bytes_max: u64,
    /// After a failed snapshot fetch, wait this long before the next one,
    /// doubling per failure up to eight times as long.
    pub snapshot_fetch_retry_ms: u64,
    pub transport: TransportConfig,
}

impl NodeConfig {
    /// A configuration with the defaults described in the module notes.
    pub fn new(id: NodeId, data_dir: PathBuf, members: BTreeMap<NodeId, String>) -> NodeConfig {
        let paxos = PaxosConfig::new(id, members.keys().copied().collect());
        NodeConfig {
            id,
            data_dir,
            members,
            join: Vec::new(),
            alpha: paxos.alpha,
            promote_within_slots: paxos.promote_within_slots,
            client_addr: String::new(),
            http_addr: String::new(),
            fsync: FsyncPolicy::Always,
            tick_ms: 10,
            heartbeat_ticks: paxos.heartbeat_ticks,
            election_ticks: paxos.election_ticks,
            lease_ticks: paxos.lease_ticks,
            // Few slots in flight, each holding many commands: on one
            // machine's loopback, 4 slots gave higher throughput and a
            // shorter tail than 64 (fewer, fuller slots; docs/performance.md).
            inflight_slots_max: 4,
            batch_commands_max: paxos.batch_commands_max,
            batch_bytes_max: paxos.batch_bytes_max,
            catch_up_slots_max: 64,
            write_timeout_ms: 10_000,
            reforward_ms: 1_000,
            read_timeout_ms: 2_000,
            ops_queue_max: 4096,
            inbound_queue_max: 4096,
            turn_items_max: 1024,
            pending_writes_max: 65_536,
            pending_reads_max: 65_536,
            command_bytes_max: 1 << 20,
            rejoin: false,
            insecure_peers: false,
            snapshot: SnapshotPolicy::default(),
            wal_segment_bytes_max: DEFAULT_SEGMENT_BYTES_MAX,
            snapshot_fetch_retry_ms: 250,
            transport: TransportConfig::default(),
        }
    }

    /// The protocol's configuration; `seed` drives the election jitter.
    pub fn paxos(&self, seed: u64) -> PaxosConfig {
        let mut c = PaxosConfig::new(self.id, self.members.keys().copied().collect());
        c.heartbeat_ticks = self.heartbeat_ticks;
        c.election_ticks = self.election_ticks;
        c.lease_ticks = self.lease_ticks;
        c.inflight_slots_max = self.inflight_slots_max;
        c.batch_commands_max = self.batch_commands_max;
        c.batch_bytes_max = self.batch_bytes_max;
        c.catch_up_slots_max = self.catch_up_slots_max;
        c.alpha = self.alpha;
        c.promote_within_slots = self.promote_within_slots;
        c.seed = seed;
        c
    }

    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// The largest a slot's value can be once encoded.
    fn slot_bytes_max(&self) -> u64 {
        // Per command a length prefix of at most 10 bytes; per slot a tag,
        // the slot number and a count.
        let payload = self.batch_bytes_max.max(self.command_bytes_max) as u64;
        payload + self.batch_commands_max as u64 * 10 + 32
    }

    /// Checks the relations the node relies on; the error says which.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 || self.id > NODE_ID_MAX {
            return Err(format!(
                "node id {} is out of range 1..={NODE_ID_MAX}",
                self.id
            ));
        }
        if !self.members.is_empty() && !self.join.is_empty() {
            return Err(
                "give --members to found a new cluster, or --join to join a running one, not both"
                    .to_owned(),
            );
        }
        if !self.members.is_empty() && !self.members.contains_key(&self.id) {
            return Err(format!("node {} is not among the members", self.id));
        }
        if let Some(bad) = self.members.keys().find(|&&m| m == 0 || m > NODE_ID_MAX) {
            return Err(format!("member id {bad} is out of range 1..={NODE_ID_MAX}"));
        }
        if self.tick_ms == 0 || self.tick_ms > 60_000 {
            return Err("tick_ms must be between 1 and 60000".to_owned());
        }
        self.paxos(0).validate().map_err(|e| e.to_string())?;
        let positive = [
            ("ops_queue_max", self.ops_queue_max as u64),
            ("inbound_queue_max", self.inbound_queue_max as u64),
            ("turn_items_max", self.turn_items_max as u64),
            ("pending_writes_max", self.pending_writes_max as u64),
            ("pending_reads_max", self.pending_reads_max as u64),
            ("command_bytes_max", self.command_bytes_max as u64),
            (
                "outbound_queue_max",
                self.transport.outbound_queue_max as u64,
            ),
            ("snapshot_entries_max", self.snapshot.entries_max),
            ("snapshot_bytes_max", self.snapshot.bytes_max),
            ("wal_segment_bytes_max", self.wal_segment_bytes_max),
            ("snapshot_fetch_retry_ms", self.snapshot_fetch_retry_ms),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be positive"));
        }
        // One slot's value is one record of the write-ahead log.
        let record_max = u64::from(storage::wal::DEFAULT_RECORD_BYTES_MAX);
        if self.slot_bytes_max() + 64 > record_max {
            return Err(format!(
                "a slot of up to {} bytes may not fit in a log record of {record_max} bytes: \
                 lower command_bytes_max or batch_bytes_max",
                self.slot_bytes_max()
            ));
        }
        self.transport.snapshot.validate()?;
        let chunk_frame = self.transport.snapshot.chunk_bytes_max as u64 + 128;
        if chunk_frame > u64::from(self.transport.frame_bytes_max) {
            return Err(format!(
                "a snapshot chunk of {} bytes may not fit in a frame of {} bytes: \
                 lower snapshot_chunk_bytes_max or raise frame_bytes_max",
                self.transport.snapshot.chunk_bytes_max, self.transport.frame_bytes_max
            ));
        }
        let slots = self.inflight_slots_max.max(self.catch_up_slots_max as u64);
        let largest = slots.saturating_mul(self.slot_bytes_max()) + 64;
        if largest > u64::from(self.transport.frame_bytes_max) {
            return Err(format!(
                "a message of {slots} slots of up to {} bytes each may not fit in a frame of {} bytes: \
                 raise frame_bytes_max or lower command_bytes_max, batch_bytes_max, \
                 inflight_slots_max or catch_up_slots_max",
                self.slot_bytes_max(),
                self.transport.frame_bytes_max
            ));
        }
        Ok(())
    }
}

/// Limits and timings of snapshot transfers, part of [`TransportConfig`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotTransferConfig {
    /// Largest chunk a sender cuts (at most [`CHUNK_BYTES_LIMIT`]).
    pub chunk_bytes_max: usize,
    /// Chunks a sender keeps unacknowledged.
    pub window_chunks: usize,
    /// A sender with no ack for this long sends again from the last
    /// acknowledged offset.
    pub resend_ms: u64,
    /// Either end gives up on a transfer that brings nothing for this long
    /// (the receiver then asks again, resuming).
    pub idle_timeout_ms: u64,
    /// Body bytes a node sends per second over every transfer it serves; 0
    /// for no limit.
    pub send_bytes_per_sec: u64,
    /// Transfers a node serves at once; more are declined as busy.
    pub serving_max: usize,
}

impl Default for SnapshotTransferConfig {
    fn default() -> SnapshotTransferConfig {
        SnapshotTransferConfig {
            chunk_bytes_max: DEFAULT_CHUNK_BYTES_MAX,
            window_chunks: DEFAULT_WINDOW_CHUNKS,
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
}

impl NodeConfig {
    /// Ticks covering `ms` of real time, at least one.
    fn ticks(&self, ms: u64) -> u64 {
        ms.div_ceil(self.tick_ms.max(1)).max(1)
    }

    /// The host's configuration: the same settings, in ticks.
    pub fn host(&self) -> HostConfig {
        let snapshot = &self.transport.snapshot;
        let tick_ms = self.tick_ms.max(1);
        HostConfig {
            leader_grace_ticks: self.election_ticks * 2,
            reforward_ticks: self.ticks(self.reforward_ms),
            write_timeout_ticks: self.ticks(self.write_timeout_ms),
            read_timeout_ticks: self.ticks(self.read_timeout_ms),
            // Often enough to hand writes on promptly, at most every 50 ms.
            sweep_ticks: self.ticks(50).min(5),
            pending_writes_max: self.pending_writes_max,
            pending_reads_max: self.pending_reads_max,
            command_bytes_max: self.command_bytes_max,
            // Half a frame's worth of requests per turn, so that one turn's
            // forwarded batch stays well inside a frame.
            turn_proposal_bytes_max: (self.transport.frame_bytes_max / 2) as usize,
            snapshot: self.snapshot,
            transfer: TransferConfig {
                chunk_bytes_max: snapshot.chunk_bytes_max,
                window_chunks: snapshot.window_chunks,
                resend_ticks: self.ticks(snapshot.resend_ms),
                idle_ticks: self.ticks(snapshot.idle_timeout_ms),
                // A rate set stays a limit, however small.
                send_bytes_per_tick: (snapshot.send_bytes_per_sec.saturating_mul(tick_ms) / 1000)
                    .max(u64::from(snapshot.send_bytes_per_sec > 0)),
                serving_max: snapshot.serving_max,
                fetch_retry_ticks: self.ticks(self.snapshot_fetch_retry_ms),
            },
            report_applied: false,
            flaw: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly, which is its job
mod tests {
    use super::*;

    fn three() -> BTreeMap<NodeId, String> {
        (1..=3)
            .map(|i| (i, format!("127.0.0.1:{}", 7000 + i)))
            .collect()
    }

    #[test]
    fn the_defaults_are_valid() {
        NodeConfig::new(2, PathBuf::from("d"), three())
            .validate()
            .unwrap();
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let mut c = NodeConfig::new(4, PathBuf::from("d"), three());
        assert!(c.validate().unwrap_err().contains("not among"));
        c.id = 1;
        c.command_bytes_max = 64 << 20;
        assert!(c.validate().unwrap_err().contains("log record"));
        c.command_bytes_max = 8 << 20;
        assert!(c.validate().unwrap_err().contains("frame"));
        let mut c = NodeConfig::new(1, PathBuf::from("d"), three());
        c.lease_ticks = c.election_ticks;
        assert!(c.validate().is_err());
        let mut c = NodeConfig::new(1, PathBuf::from("d"), three());
        c.tick_ms = 0;
        assert!(c.validate().is_err());
        let mut c = NodeConfig::new(1, PathBuf::from("d"), three());
        c.snapshot.entries_max = 0;
        assert!(c.validate().unwrap_err().contains("snapshot_entries_max"));
        let mut c = NodeConfig::new(1, PathBuf::from("d"), three());
        c.transport.frame_bytes_max = 1 << 20;
        c.batch_bytes_max = 1 << 10;
        c.command_bytes_max = 1 << 10;
        assert!(c.validate().unwrap_err().contains("snapshot chunk"));
    }
}
