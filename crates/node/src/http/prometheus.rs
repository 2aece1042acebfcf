//! `/metrics`: the node's counters, histograms and status gauges in the
//! Prometheus text exposition format, version 0.0.4.
//!
//! Every family is written as `# HELP`, `# TYPE`, then its samples, and all
//! names start with `parliament_`. Counters end in `_total`. Histograms
//! write cumulative `_bucket{le=".."}` samples ending with `le="+Inf"`, then
//! `_sum` and `_count`.
//!
//! The role is an enum-style gauge: one sample per possible role, 1 for the
//! node's current role and 0 for the others, so `parliament_role{role="leader"} == 1`
//! selects the leader and a role change never leaves a stale series behind.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::api::StatusReport;
use crate::metrics::{Histogram, Metrics};

/// The `Content-Type` of the exposition format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The roles a [`StatusReport`] names, each given a `parliament_role` sample.
pub const ROLES: [&str; 4] = ["leader", "follower", "candidate", "learner"];

/// Renders every metric of the node: the counters and histograms of
/// `metrics`, then the gauges read from `status`.
pub fn render(metrics: &Metrics, status: &StatusReport) -> String {
    let mut out = Exposition::default();
    render_counters(&mut out, metrics);
    render_status(&mut out, status);
    out.text
}

fn render_counters(out: &mut Exposition, m: &Metrics) {
    let counters: [(&str, &str, &AtomicU64); 12] = [
        (
            "parliament_proposals_total",
            "Client commands handed to the replica for the log.",
            &m.proposals,
        ),
        (
            "parliament_commits_total",
            "Slots this node learned as chosen.",
            &m.commits,
        ),
        (
            "parliament_elections_total",
            "Phase 1 rounds this node started.",
            &m.elections,
        ),
        (
            "parliament_leader_changes_total",
            "Times this node saw the leader change.",
            &m.leader_changes,
        ),
        (
            "parliament_forwarded_commands_total",
            "Commands this node forwarded to the leader.",
            &m.forwarded_commands,
        ),
        (
            "parliament_client_connections_total",
            "Client connections accepted.",
            &m.client_connections_total,
        ),
        (
            "parliament_client_commands_total",
            "Client commands answered.",
            &m.client_commands,
        ),
        (
            "parliament_client_errors_total",
            "Client commands answered with an error.",
            &m.client_errors,
        ),
        (
            "parliament_peer_messages_sent_total",
            "Messages sent to peers.",
            &m.peer_messages_sent,
        ),
        (
            "parliament_peer_messages_received_total",
            "Messages received from peers.",
            &m.peer_messages_received,
        ),
        (
            "parliament_snapshots_taken_total",
            "Snapshots of the state machine this node took.",
            &m.snapshots_taken,
        ),
        (
            "parliament_snapshots_installed_total",
            "Snapshots this node installed from the leader.",
            &m.snapshots_installed,
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, help, "counter");
        out.sample(name, &[], value.load(Ordering::Relaxed));
    }
    out.family(
        "parliament_client_connections_open",
        "Client connections currently open.",
        "gauge",
    );
    out.sample(
        "parliament_client_connections_open",
        &[],
        m.client_connections_open.load(Ordering::Relaxed),
    );
    out.histogram(
        "parliament_batch_commands",
        "Commands per proposed slot.",
        &m.batch_commands,
    );
    out.histogram(
        "parliament_fsync_seconds",
        "Time from queueing log records to their fdatasync completing, in seconds.",
        &m.fsync_seconds,
    );
}

fn render_status(out: &mut Exposition, s: &StatusReport) {
    out.family(
        "parliament_info",
        "Constant 1, labelled with the node's id and version.",
        "gauge",
    );
    let id = s.id.to_string();
    out.sample(
        "parliament_info",
        &[("id", &id), ("version", &s.version)],
        1,
    );

    out.family(
        "parliament_role",
        "1 for the node's current role, 0 for the others.",
        "gauge",
    );
    for role in ROLES {
        out.sample(
            "parliament_role",
            &[("role", role)],
            u64::from(s.role == role),
        );
    }
    if !ROLES.contains(&s.role.as_str()) {
        // A role this renderer does not know still shows up.
        out.sample("parliament_role", &[("role", &s.role)], 1);
    }

    out.family(
        "parliament_leader_known",
        "1 when this node knows a leader (or is one), else 0.",
        "gauge",
    );
    out.sample(
        "parliament_leader_known",
        &[],
        u64::from(s.leader_id.is_some() || s.role == "leader"),
    );
    if let Some(leader) = s.leader_id {
        out.family(
            "parliament_leader_id",
            "The id of the leader this node knows.",
            "gauge",
        );
        out.sample("parliament_leader_id", &[], leader);
    }
    if let Some(round) = ballot_round(&s.ballot) {
        out.family(
            "parliament_ballot_round",
            "The round of the highest ballot this node promised.",
            "gauge",
        );
        out.sample("parliament_ballot_round", &[], round);
    }

    let gauges: [(&str, &str, u64); 5] = [
        (
            "parliament_commit_slot",
            "The highest slot this node knows as chosen.",
            s.commit_slot,
        ),
        (
            "parliament_applied_slot",
            "The highest slot applied to the state machine.",
            s.applied_slot,
        ),
        (
            "parliament_log_start",
            "The first slot still in the log; those below are in the snapshot.",
            s.log_start,
        ),
        ("parliament_keys", "Keys in the state machine.", s.keys),
        (
            "parliament_uptime_seconds",
            "Seconds since the node started.",
            s.uptime_seconds,
        ),
    ];
    for (name, help, value) in gauges {
        out.family(name, help, "gauge");
        out.sample(name, &[], value);
    }

    let peers: Vec<_> = s.members.iter().filter(|m| m.id != s.id).collect();
    if !peers.is_empty() {
        out.family(
            "parliament_peer_connected",
            "1 while this node has a live connection to the peer, else 0.",
            "gauge",
        );
        for peer in &peers {
            let id = peer.id.to_string();
            out.sample(
                "parliament_peer_connected",
                &[("peer", &id)],
                u64::from(peer.connected),
            );
        }
    }
    let lags: Vec<_> = peers
        .iter()
        .filter_map(|peer| {
            peer.match_slot
                .map(|matched| (peer.id, s.commit_slot.saturating_sub(matched)))
        })
        .collect();
    if !lags.is_empty() {
        out.family(
            "parliament_peer_lag_slots",
            "Slots the peer is behind this node's commit point (known on the leader).",
            "gauge",
        );
        for (peer, lag) in lags {
            let id = peer.to_string();
            out.sample("parliament_peer_lag_slots", &[("peer", &id)], lag);
        }
    }
}

/// The round of a ballot written `round.node`, if it is written so.
pub fn ballot_round(ballot: &str) -> Option<u64> {
    let (round, _node) = ballot.split_once('.')?;
    round.parse().ok()
}

/// Text being written in the exposition format.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.family(name, help, "histogram");
        let (buckets, count, sum) = histogram.read();
        let bucket = format!("{name}_bucket");
        for (bound, cumulative) in buckets {
            // f64's Display never uses an exponent: 0.00005 stays 0.00005.
            let le = bound.to_string();
            self.sample(&bucket, &[("le", &le)], cumulative);
        }
        self.sample(&bucket, &[("le", "+Inf")], count);
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count);
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a help text: backslash and newline.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn ballot_round_reads_the_round_before_the_dot() {
        assert_eq!(ballot_round("7.3"), Some(7));
        assert_eq!(ballot_round("0.0"), Some(0));
        assert_eq!(ballot_round("7"), None);
        assert_eq!(ballot_round("x.3"), None);
    }
}
