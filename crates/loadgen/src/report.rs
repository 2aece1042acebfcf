//! The result of a run: a human summary and a JSON form for scripts.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::Config;
use super::driver::Stats;
use super::histogram::Histogram;

/// Latency quantiles of successful requests, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    fn of(histogram: &Histogram) -> Latency {
        let micros = |nanos: u64| nanos as f64 / 1_000.0;
        Latency {
            p50: micros(histogram.quantile(0.5)),
            p99: micros(histogram.quantile(0.99)),
            p999: micros(histogram.quantile(0.999)),
            max: micros(histogram.max()),
            mean: histogram.mean() / 1_000.0,
        }
    }
}

/// The figures of one command of the mix.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CommandReport {
    pub ops: u64,
    pub ops_per_sec: f64,
    pub latency_us: Latency,
}

/// What a run measured. Serialised as is by `--json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub target: &'static str,
    pub addrs: Vec<String>,
    pub clients: usize,
    pub pipeline: usize,
    pub mix: String,
    pub keys: u64,
    pub value_bytes: usize,
    pub warmup_seconds: f64,
    /// Length of the measured window.
    pub seconds: f64,
    /// Successful requests in the window.
    pub ops: u64,
    pub ops_per_sec: f64,
    /// Over every successful request.
    pub latency_us: Latency,
    /// By command name (`set`, `get`, `incr`).
    pub commands: BTreeMap<&'static str, CommandReport>,
    /// By kind (see the module documentation).
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    /// Connections opened over the whole run, warm-up included.
    pub connections: u64,
}

impl Report {
    pub(super) fn new(config: &Config, window: Duration, stats: &Stats) -> Report {
        let seconds = window.as_secs_f64();
        let rate = |ops: u64| {
            if seconds > 0.0 {
                ops as f64 / seconds
            } else {
                0.0
            }
        };
        let mut all = Histogram::new();
        let mut commands = BTreeMap::new();
        for (kind, histogram) in stats.latency() {
            all.merge(histogram);
            commands.insert(
                kind.name(),
                CommandReport {
                    ops: histogram.count(),
                    ops_per_sec: rate(histogram.count()),
                    latency_us: Latency::of(histogram),
                },
            );
        }
        Report {
            target: config.target.name(),
            addrs: config.addrs.clone(),
            clients: config.clients,
            pipeline: config.pipeline,
            mix: config.mix.to_string(),
            keys: config.keys,
            value_bytes: config.value_bytes,
            warmup_seconds: config.warmup.as_secs_f64(),
            seconds,
            ops: all.count(),
            ops_per_sec: rate(all.count()),
            latency_us: Latency::of(&all),
            commands,
            errors: stats.errors().clone(),
            errors_total: stats.errors().values().sum(),
            connections: stats.connections,
        }
    }
}

/// A latency in microseconds, in the unit that reads best.
struct Micros(f64);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0;
        if us >= 1_000_000.0 {
            write!(f, "{:.2} s", us / 1_000_000.0)
        } else if us >= 1_000.0 {
            write!(f, "{:.2} ms", us / 1_000.0)
        } else {
            write!(f, "{us:.0} µs")
        }
    }
}

fn latency_line(
    f: &mut fmt::Formatter<'_>,
    label: &str,
    ops_per_sec: f64,
    l: &Latency,
) -> fmt::Result {
    writeln!(
        f,
        "  {label:<6} {ops_per_sec:>12.0} ops/s   p50 {:>9}  p99 {:>9}  p99.9 {:>9}  max {:>9}",
        Micros(l.p50).to_string(),
        Micros(l.p99).to_string(),
        Micros(l.p999).to_string(),
        Micros(l.max).to_string(),
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} at {}: {} clients, pipeline {}, mix {}, {} keys, {}-byte values",
            self.target,
            self.addrs.join(","),
            self.clients,
            self.pipeline,
            self.mix,
            self.keys,
            self.value_bytes,
        )?;
        writeln!(
            f,
            "{} ops in {:.2} s after {:.1} s of warm-up",
            self.ops, self.seconds, self.warmup_seconds
        )?;
        latency_line(f, "all", self.ops_per_sec, &self.latency_us)?;
        if self.commands.len() > 1 {
            for (name, command) in &self.commands {
                latency_line(f, name, command.ops_per_sec, &command.latency_us)?;
            }
        }
        if self.errors.is_empty() {
            write!(f, "errors: none")?;
        } else {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect();
            write!(f, "errors: {} ({})", self.errors_total, kinds.join(", "))?;
        }
        Ok(())
    }
}
