//! The node's metrics, each defined once (a name, a help text, and where its
//! value comes from) and rendered on `/metrics` in the OpenMetrics text
//! format by prometheus-client. All names start with `parliament_`;
//! counters get `_total` from the format.
//!
//! Two kinds:
//! - what the shell counts as it goes (client connections and commands, peer
//!   messages, fsync times): the fields of [`Metrics`], updated lock-free by
//!   the tasks that see them;
//! - what the replica task publishes (the host's counts, the role, ballot,
//!   slots and peers of the latest status): read at each scrape by
//!   [`StatusMetrics`], so the host itself carries no metrics library.
//!
//! The role is an enum-style gauge: one sample per possible role, 1 for the
//! node's current role and 0 for the others, so `parliament_role{role="leader"} == 1`
//! selects the leader and a role change never leaves a stale series behind.

use std::fmt;

use host::{Buckets, HostStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::api::StatusReport;

/// The `Content-Type` of what [`Metrics::render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds, from 50 µs to 5 s.
pub const LATENCY_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// The roles a [`StatusReport`] names, each given a `parliament_role` sample.
pub const ROLES: [&str; 4] = ["leader", "follower", "candidate", "learner"];

/// Everything `/metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub client_connections_total: Counter,
    pub client_connections_open: Gauge,
    pub client_commands: Counter,
    pub client_errors: Counter,
    pub peer_messages_sent: Counter,
    pub peer_messages_received: Counter,
    pub fsync_seconds: Histogram,
}

impl Metrics {
    /// Metrics that also report what is published on `status` and `stats`.
    pub fn new(
        status: watch::Receiver<StatusReport>,
        stats: watch::Receiver<HostStats>,
    ) -> Metrics {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let client_connections_total = counter(
            "parliament_client_connections",
            "Client connections accepted",
        );
        let client_commands = counter("parliament_client_commands", "Client commands answered");
        let client_errors = counter(
            "parliament_client_errors",
            "Client commands answered with an error",
        );
        let peer_messages_sent = counter("parliament_peer_messages_sent", "Messages sent to peers");
        let peer_messages_received = counter(
            "parliament_peer_messages_received",
            "Messages received from peers",
        );
        let client_connections_open = Gauge::default();
        registry.register(
            "parliament_client_connections_open",
            "Client connections currently open",
            client_connections_open.clone(),
        );
        let fsync_seconds = Histogram::new(LATENCY_SECONDS.iter().copied());
        registry.register(
            "parliament_fsync_seconds",
            "Time from queueing log records to their fdatasync completing, in seconds",
            fsync_seconds.clone(),
        );
        registry.register_collector(Box::new(StatusMetrics { status, stats }));
        Metrics {
            registry,
            client_connections_total,
            client_connections_open,
            client_commands,
            client_errors,
            peer_messages_sent,
            peer_messages_received,
            fsync_seconds,
        }
    }

    /// Metrics of a node that publishes nothing (for tests of one part).
    pub fn detached() -> Metrics {
        let (_, status) = watch::channel(StatusReport::default());
        let (_, stats) = watch::channel(HostStats::default());
        Metrics::new(status, stats)
    }

    /// Every metric, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// What the replica task published, read at each scrape.
#[derive(Debug)]
struct StatusMetrics {
    status: watch::Receiver<StatusReport>,
    stats: watch::Receiver<HostStats>,
}

/// Help texts are written without their final period, which the registry
/// adds to what is registered; what is collected gets it here.
fn describe<'a>(
    out: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
    kind: MetricType,
) -> Result<MetricEncoder<'a>, fmt::Error> {
    out.encode_descriptor(name, &format!("{help}."), None, kind)
}

fn counter(out: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(describe(out, name, help, metric.metric_type())?)
}

fn gauge(out: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(describe(out, name, help, metric.metric_type())?)
}

/// A gauge with one sample per label value.
fn gauges(
    out: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    label: &'static str,
    samples: impl IntoIterator<Item = (String, u64)>,
) -> fmt::Result {
    let mut family = describe(out, name, help, MetricType::Gauge)?;
    for (value, sample) in samples {
        let labels = [(label, value)];
        let metric = ConstGauge::new(i64::try_from(sample).unwrap_or(i64::MAX));
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram(out: &mut DescriptorEncoder<'_>, name: &str, help: &str, h: &Buckets) -> fmt::Result {
    let (cumulative, count, sum) = h.cumulative();
    // The encoder wants each bucket's own count, then +Inf.
    let mut buckets = Vec::with_capacity(cumulative.len() + 1);
    let mut below = 0;
    for (bound, running) in cumulative {
        buckets.push((bound, running - below));
        below = running;
    }
    buckets.push((f64::INFINITY, count - below));
    let mut metric = describe(out, name, help, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

impl Collector for StatusMetrics {
    fn encode(&self, mut out: DescriptorEncoder<'_>) -> fmt::Result {
        let stats = self.stats.borrow().clone();
        let s = self.status.borrow().clone();
        let counters = [
            (
                "parliament_proposals",
                "Client commands handed to the replica for the log",
                stats.proposals,
            ),
            (
                "parliament_commits",
                "Slots this node learned as chosen",
                stats.commits,
            ),
            (
                "parliament_elections",
                "Phase 1 rounds this node started",
                stats.elections,
            ),
            (
                "parliament_leader_changes",
                "Times this node saw the leader change",
                stats.leader_changes,
            ),
            (
                "parliament_forwarded_commands",
                "Commands this node forwarded to the leader",
                stats.forwarded_commands,
            ),
            (
                "parliament_snapshots_taken",
                "Snapshots of the state machine this node took",
                stats.snapshots_taken,
            ),
            (
                "parliament_snapshot_failures",
                "Snapshots this node could not save",
                stats.snapshot_failures,
            ),
            (
                "parliament_snapshots_installed",
                "Snapshots this node installed from a peer",
                stats.snapshots_installed,
            ),
            (
                "parliament_snapshot_transfers_served",
                "Snapshot transfers this node served to the end",
                stats.transfers_served,
            ),
            (
                "parliament_snapshot_bytes_sent",
                "Snapshot body bytes sent to peers, resends included",
                stats.transfer_bytes_sent,
            ),
            (
                "parliament_snapshot_bytes_received",
                "Snapshot body bytes received from peers, duplicates included",
                stats.transfer_bytes_received,
            ),
        ];
        for (name, help, value) in counters {
            counter(&mut out, name, help, value)?;
        }
        histogram(
            &mut out,
            "parliament_batch_commands",
            "Commands per applied slot",
            &stats.batch_commands,
        )?;

        let info = ConstGauge::new(1i64);
        let mut family = out.encode_descriptor(
            "parliament_info",
            "Constant 1, labelled with the node's id and version",
            None,
            info.metric_type(),
        )?;
        let labels = [("id", s.id.to_string()), ("version", s.version.clone())];
        info.encode(family.encode_family(&labels)?)?;

        let mut roles: Vec<(String, u64)> = ROLES
            .iter()
            .map(|&role| (role.to_owned(), u64::from(s.role == role)))
            .collect();
        if !ROLES.contains(&s.role.as_str()) {
            // A role this renderer does not know still shows up.
            roles.push((s.role.clone(), 1));
        }
        gauges(
            &mut out,
            "parliament_role",
            "1 for the node's current role, 0 for the others",
            "role",
            roles,
        )?;
        gauge(
            &mut out,
            "parliament_leader_known",
            "1 when this node knows a leader (or is one), else 0",
            u64::from(s.leader_id.is_some() || s.role == "leader"),
        )?;
        if let Some(leader) = s.leader_id {
            gauge(
                &mut out,
                "parliament_leader_id",
                "The id of the leader this node knows",
                leader,
            )?;
        }
        if let Some(round) = ballot_round(&s.ballot) {
            gauge(
                &mut out,
                "parliament_ballot_round",
                "The round of the highest ballot this node promised",
                round,
            )?;
        }
        let gauge_values = [
            (
                "parliament_commit_slot",
                "The highest slot this node knows as chosen",
                s.commit_slot,
            ),
            (
                "parliament_applied_slot",
                "The highest slot applied to the state machine",
                s.applied_slot,
            ),
            (
                "parliament_log_start",
                "The first slot still in the log; those below are in the snapshot",
                s.log_start,
            ),
            ("parliament_keys", "Keys in the state machine", s.keys),
            (
                "parliament_uptime_seconds",
                "Seconds since the node started",
                s.uptime_seconds,
            ),
            (
                "parliament_voters",
                "Voters of the membership in force",
                s.voters.len() as u64,
            ),
            (
                "parliament_learners",
                "Learners of the membership in force",
                s.learners.len() as u64,
            ),
            (
                "parliament_config_slot",
                "The first slot the membership in force governs",
                s.config_slot,
            ),
        ];
        for (name, help, value) in gauge_values {
            gauge(&mut out, name, help, value)?;
        }

        let peers: Vec<_> = s.members.iter().filter(|m| m.id != s.id).collect();
        if !peers.is_empty() {
            gauges(
                &mut out,
                "parliament_peer_connected",
                "1 while this node has a live connection to the peer, else 0",
                "peer",
                peers
                    .iter()
                    .map(|p| (p.id.to_string(), u64::from(p.connected))),
            )?;
        }
        if !peers.is_empty() {
            gauges(
                &mut out,
                "parliament_peer_voter",
                "1 if the peer is a voter of the newest membership, 0 if a learner",
                "peer",
                peers
                    .iter()
                    .map(|p| (p.id.to_string(), u64::from(p.role == "voter"))),
            )?;
        }
        let lags: Vec<(String, u64)> = peers
            .iter()
            .filter_map(|p| {
                p.match_slot
                    .map(|matched| (p.id.to_string(), s.commit_slot.saturating_sub(matched)))
            })
            .collect();
        if !lags.is_empty() {
            gauges(
                &mut out,
                "parliament_peer_lag_slots",
                "Slots the peer is behind this node's commit point (known on the leader)",
                "peer",
                lags,
            )?;
        }
        Ok(())
    }
}

/// The round of a ballot written `round.node`, if it is written so.
pub fn ballot_round(ballot: &str) -> Option<u64> {
    let (round, _node) = ballot.split_once('.')?;
    round.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballot_round_reads_the_round_before_the_dot() {
        assert_eq!(ballot_round("7.3"), Some(7));
        assert_eq!(ballot_round("0.0"), Some(0));
        assert_eq!(ballot_round("7"), None);
        assert_eq!(ballot_round("x.3"), None);
    }
}
