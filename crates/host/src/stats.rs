//! What a host counts, for the shell to export (the node renders it on
//! `/metrics`).

/// Batch-size buckets, in commands per slot.
pub const BATCH_COMMANDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Observations counted into fixed buckets with inclusive upper bounds,
/// Prometheus style.
#[derive(Clone, Debug, PartialEq)]
pub struct Buckets {
    bounds: &'static [f64],
    /// One count per bound, then the count above the last. Not cumulative.
    counts: Vec<u64>,
    sum: f64,
}

impl Buckets {
    pub fn new(bounds: &'static [f64]) -> Buckets {
        Buckets {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        if let Some(count) = self.counts.get_mut(bucket) {
            *count += 1;
        }
        self.sum += value;
    }

    /// Each bound with the count of observations at or below it
    /// (cumulative), the total count and the sum.
    pub fn cumulative(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut running = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(&bound, &count)| {
                running += count;
                (bound, running)
            })
            .collect();
        let total = self.counts.iter().sum();
        (buckets, total, self.sum)
    }
}

/// Counters of one host since it started.
#[derive(Clone, Debug, PartialEq)]
pub struct HostStats {
    /// Client commands handed to the replica for the log.
    pub proposals: u64,
    /// Slots this node learned as chosen.
    pub commits: u64,
    /// Commands per applied slot.
    pub batch_commands: Buckets,
    /// Phase 1 rounds this node started.
    pub elections: u64,
    /// Times this node saw the leader change.
    pub leader_changes: u64,
    /// Commands this node forwarded to the leader.
    pub forwarded_commands: u64,
    /// Snapshots taken, and snapshots installed from a peer.
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    /// Snapshots that could not be saved.
    pub snapshot_failures: u64,
    /// Transfers served to the end (the receiver installed the snapshot).
    pub transfers_served: u64,
    /// Body bytes sent in chunks, resends included.
    pub transfer_bytes_sent: u64,
    /// Body bytes received in chunks, duplicates included.
    pub transfer_bytes_received: u64,
    /// Transfers that resumed a partial file, and the bytes it held.
    pub transfers_resumed: u64,
    pub transfer_bytes_resumed: u64,
}

impl Default for HostStats {
    fn default() -> HostStats {
        HostStats {
            proposals: 0,
            commits: 0,
            batch_commands: Buckets::new(BATCH_COMMANDS),
            elections: 0,
            leader_changes: 0,
            forwarded_commands: 0,
            snapshots_taken: 0,
            snapshot_failures: 0,
            snapshots_installed: 0,
            transfers_served: 0,
            transfer_bytes_sent: 0,
            transfer_bytes_received: 0,
            transfers_resumed: 0,
            transfer_bytes_resumed: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_overflow_goes_past_the_last() {
        let mut h = Buckets::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(2.0);
        h.observe(7.0);
        let (buckets, total, sum) = h.cumulative();
        assert_eq!(buckets, vec![(1.0, 1), (2.0, 2)]);
        assert_eq!(total, 3);
        assert!((sum - 9.5).abs() < 1e-9);
    }
}
