//! The node's counters and histograms, updated lock-free by the tasks that
//! observe them and rendered in Prometheus text format on `/metrics`.
//!
//! Every field is a plain atomic: tasks update them with relaxed ordering
//! (metrics need no happens-before) and the HTTP handler reads them.

use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed bucket upper bounds (inclusive), Prometheus style.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus the `+Inf` bucket last. Not cumulative.
    counts: Vec<AtomicU64>,
    /// Sum of observations, in millionths of the unit.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        if let Some(count) = self.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        // Saturating float-to-int conversion: negative or NaN become 0.
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
    }

    /// Bucket bounds with their cumulative counts, the total count and the sum.
    pub fn read(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            buckets.push((*bound, cumulative));
        }
        let total = cumulative
            + self
                .counts
                .last()
                .map_or(0, |count| count.load(Ordering::Relaxed));
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, total, sum)
    }
}

/// Latency buckets in seconds, from 50 µs to 5 s.
pub const LATENCY_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Batch-size buckets, in commands per slot.
pub const BATCH_COMMANDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Everything `/metrics` reports besides the status gauges.
#[derive(Debug)]
pub struct Metrics {
    /// Client commands handed to the replica for the log.
    pub proposals: AtomicU64,
    /// Slots this node learned as chosen.
    pub commits: AtomicU64,
    /// Commands per proposed slot.
    pub batch_commands: Histogram,
    /// Time from queueing records to their fdatasync completing.
    pub fsync_seconds: Histogram,
    /// Phase 1 rounds this node started.
    pub elections: AtomicU64,
    /// Times this node saw the leader change.
    pub leader_changes: AtomicU64,
    /// Commands this node forwarded to the leader.
    pub forwarded_commands: AtomicU64,
    /// Client connections accepted, and those currently open.
    pub client_connections_total: AtomicU64,
    pub client_connections_open: AtomicU64,
    /// Client commands answered, and those answered with an error.
    pub client_commands: AtomicU64,
    pub client_errors: AtomicU64,
    /// Peer messages sent and received.
    pub peer_messages_sent: AtomicU64,
    pub peer_messages_received: AtomicU64,
    /// Snapshots taken, and snapshots installed from the leader.
    pub snapshots_taken: AtomicU64,
    pub snapshots_installed: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            proposals: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            batch_commands: Histogram::new(BATCH_COMMANDS),
            fsync_seconds: Histogram::new(LATENCY_SECONDS),
            elections: AtomicU64::new(0),
            leader_changes: AtomicU64::new(0),
            forwarded_commands: AtomicU64::new(0),
            client_connections_total: AtomicU64::new(0),
            client_connections_open: AtomicU64::new(0),
            client_commands: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            peer_messages_sent: AtomicU64::new(0),
            peer_messages_received: AtomicU64::new(0),
            snapshots_taken: AtomicU64::new(0),
            snapshots_installed: AtomicU64::new(0),
        }
    }
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_overflow_goes_to_inf() {
        let h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(2.0);
        h.observe(7.0);
        let (buckets, total, sum) = h.read();
        assert_eq!(buckets, vec![(1.0, 1), (2.0, 2)]);
        assert_eq!(total, 3);
        assert!((sum - 9.5).abs() < 1e-9);
    }
}
