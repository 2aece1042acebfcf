//! How a host behaves. Every time is in ticks of the replica's clock.

use crate::transfer::{DEFAULT_CHUNK_BYTES_MAX, DEFAULT_WINDOW_CHUNKS};

/// When to snapshot the store and compact the log: after `entries_max` log
/// entries (slots) or `bytes_max` bytes of applied commands since the last
/// one, whichever comes first. Bytes bound how much log a restart replays
/// and how much log a lagging peer could need; entries bound the replay of
/// many tiny commands. A limit of `u64::MAX` turns that trigger off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    pub entries_max: u64,
    pub bytes_max: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            entries_max: 10_000,
            bytes_max: 64 << 20,
        }
    }
}

impl SnapshotPolicy {
    /// True when a snapshot is due, given what was applied since the last
    /// one. Never true when nothing was applied: the snapshot would be the
    /// same as the last.
    pub fn should_snapshot(&self, entries_since: u64, bytes_since: u64) -> bool {
        entries_since > 0 && (entries_since >= self.entries_max || bytes_since >= self.bytes_max)
    }
}

/// Limits and timings of snapshot transfers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferConfig {
    /// Largest chunk a sender cuts (at most
    /// [`crate::transfer::CHUNK_BYTES_LIMIT`]).
    pub chunk_bytes_max: usize,
    /// Chunks a sender keeps unacknowledged.
    pub window_chunks: usize,
    /// A sender with no ack for this long sends again from the last
    /// acknowledged offset.
    pub resend_ticks: u64,
    /// Either end gives up on a transfer that brings nothing for this long
    /// (the receiver then asks again, resuming).
    pub idle_ticks: u64,
    /// Body bytes sent per tick, over every transfer; 0 for no limit.
    pub send_bytes_per_tick: u64,
    /// Transfers served at once; more are declined as busy.
    pub serving_max: usize,
    /// After a failed fetch, wait this long before the next, doubling per
    /// failure up to eight times as long.
    pub fetch_retry_ticks: u64,
}

impl Default for TransferConfig {
    fn default() -> TransferConfig {
        TransferConfig {
            chunk_bytes_max: DEFAULT_CHUNK_BYTES_MAX,
            window_chunks: DEFAULT_WINDOW_CHUNKS,
            resend_ticks: 200,
            idle_ticks: 1_000,
            send_bytes_per_tick: 0,
            serving_max: 2,
            fetch_retry_ticks: 25,
        }
    }
}

/// A deliberately broken behaviour of the host, for the simulator to catch.
/// A node never sets one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flaw {
    /// Messages that report what the records say leave before the disk has
    /// made them durable.
    SendsBeforeDurable,
    /// A leader answers linearizable reads from its store at once, without
    /// a lease or a read-index round.
    ReadWithoutConfirmation,
    /// A slot is applied as soon as this replica accepts a value for it,
    /// before it is chosen.
    ApplyBeforeChosen,
    /// The store ignores client sessions, so a write proposed again is
    /// applied again.
    RetryAppliedTwice,
}

/// Everything a host needs besides the replica's own configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    /// A write or read waits this long for a leader to be known before it
    /// is refused with `ClusterDown`.
    pub leader_grace_ticks: u64,
    /// A write handed on but not applied after this long is proposed again
    /// (with the same session and sequence number, so it applies once).
    pub reforward_ticks: u64,
    /// A write handed to the protocol whose outcome is still unknown after
    /// this long is answered `Uncertain`.
    pub write_timeout_ticks: u64,
    /// A linearizable read not answered after this long fails with
    /// `ClusterDown` (reads change nothing, so failing them is safe).
    pub read_timeout_ticks: u64,
    /// Waiting writes and reads are looked at this often.
    pub sweep_ticks: u64,
    /// Client writes and reads waiting for an answer.
    pub pending_writes_max: usize,
    pub pending_reads_max: usize,
    /// Largest encoded client request (command plus session tag).
    pub command_bytes_max: usize,
    /// Request bytes proposed between two [`crate::Host::effects`], so that
    /// one forwarded batch stays well inside a peer frame.
    pub turn_proposal_bytes_max: usize,
    pub snapshot: SnapshotPolicy,
    pub transfer: TransferConfig,
    /// Report every applied slot in [`crate::Effects::applied`] (for the
    /// simulator's agreement check).
    pub report_applied: bool,
    pub flaw: Option<Flaw>,
}

impl Default for HostConfig {
    /// Defaults for a tick of about 10 ms.
    fn default() -> HostConfig {
        HostConfig {
            leader_grace_ticks: 40,
            reforward_ticks: 100,
            write_timeout_ticks: 1_000,
            read_timeout_ticks: 200,
            sweep_ticks: 5,
            pending_writes_max: 65_536,
            pending_reads_max: 65_536,
            command_bytes_max: 1 << 20,
            turn_proposal_bytes_max: 64 << 20,
            snapshot: SnapshotPolicy::default(),
            transfer: TransferConfig::default(),
            report_applied: false,
            flaw: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_triggers_on_either_limit_and_never_on_nothing() {
        let policy = SnapshotPolicy::default();
        assert_eq!(policy.entries_max, 10_000);
        assert_eq!(policy.bytes_max, 64 << 20);
        assert!(!policy.should_snapshot(0, 0));
        assert!(!policy.should_snapshot(9_999, (64 << 20) - 1));
        assert!(policy.should_snapshot(10_000, 0));
        assert!(policy.should_snapshot(1, 64 << 20));
        let tiny = SnapshotPolicy {
            entries_max: 0,
            bytes_max: 0,
        };
        assert!(
            !tiny.should_snapshot(0, 100),
            "nothing applied, nothing to save"
        );
    }
}
