//! A closed-loop load generator for key-value servers.
//!
//! `parliament bench load` drives parliament, Redis (both over RESP2) or
//! etcd (over its gRPC API, with the `etcd` feature) with the same workload,
//! so their figures can be put side by side.
//!
//! # The loop
//!
//! Each of [`Config::clients`] clients owns one connection, to the address
//! `addrs[client % addrs.len()]`, and repeats: send a batch of
//! [`Config::pipeline`] commands in one write, wait for every reply, record
//! each reply's latency from the moment the batch was written. A client
//! never has more than one batch in flight, so the offered load adapts to
//! the server (a closed loop): throughput and latency are two faces of the
//! same run, related by Little's law (clients × pipeline = ops/s × mean
//! latency). For etcd, whose gRPC connection multiplexes requests, a client
//! is one HTTP/2 connection carrying `pipeline` independent lanes, each with
//! one request in flight.
//!
//! # What is counted
//!
//! The run starts with [`Config::warmup`], during which nothing is counted,
//! then measures until [`Config::duration`] has passed or
//! [`Config::requests`] requests were sent, whichever comes first. A reply
//! is counted when it arrives inside the measured window. Successful replies
//! go into the latency histograms; error replies are counted by their code
//! (`CLUSTERDOWN`, `UNCERTAIN`, `ERR`, …) and never stop the run. Failures on
//! the client side are counted as kinds of their own:
//!
//! - `connect`: a connection attempt failed (one per attempt; the client
//!   retries with exponential backoff from [`BACKOFF_MIN`] to
//!   [`BACKOFF_MAX`]);
//! - `io`, `closed`, `protocol`: the connection failed or the server closed
//!   it, or sent bytes that are not RESP2, while requests were unanswered
//!   (one per unanswered request); the client reconnects;
//! - `timeout`: no reply within [`Config::timeout`] (one per unanswered
//!   request); the client reconnects, since a late reply would be taken for
//!   the next request's;
//! - `unexpected-reply`: a reply of the wrong type for its command;
//! - `grpc-<Code>` (etcd): the gRPC status code of a failed call.
//!
//! Requests still unanswered when the measured window closes are neither
//! successes nor errors.

mod driver;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod histogram;
mod report;
pub mod resp_client;
pub mod workload;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use driver::{Live, run};
pub use report::{CommandReport, Latency, Report};
pub use workload::{KEY_BYTES, KEYS_MAX, Mix, MixError, OpKind};

/// The most clients one run may start.
pub const CLIENTS_MAX: usize = 10_000;
/// The deepest pipeline (or, for etcd, the most lanes per connection).
pub const PIPELINE_MAX: usize = 1_024;
/// The largest value `SET` may write.
pub const VALUE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// The most request bytes all clients together may have in flight
/// (`clients × pipeline × (value_bytes + 64)`), which bounds the load
/// generator's own memory.
pub const IN_FLIGHT_BYTES_MAX: u64 = 1 << 30;
/// Distinct error kinds kept per client; any more are counted as `other`.
pub const ERROR_KINDS_MAX: usize = 32;
/// The first pause after a failed connection; it doubles after each failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause between two connection attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Which protocol the clients speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// RESP2: parliament or Redis.
    Resp,
    /// etcd's gRPC KV service (`Put` for `SET`, linearizable `Range` for
    /// `GET`). Needs the `etcd` feature.
    Etcd,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Resp => "resp",
            Target::Etcd => "etcd",
        }
    }
}

/// One run of the load generator.
#[derive(Clone, Debug)]
pub struct Config {
    pub target: Target,
    /// `host:port` of each server; clients are spread over them in turn.
    pub addrs: Vec<String>,
    /// Concurrent connections, 1 to [`CLIENTS_MAX`].
    pub clients: usize,
    /// Commands per batch (etcd: lanes per connection), 1 to [`PIPELINE_MAX`].
    pub pipeline: usize,
    pub mix: Mix,
    /// Keys are drawn uniformly from `0..keys`, 1 to [`KEYS_MAX`]; each is
    /// [`KEY_BYTES`] long.
    pub keys: u64,
    /// Bytes in every `SET` value, up to [`VALUE_BYTES_MAX`].
    pub value_bytes: usize,
    /// Time before measuring starts.
    pub warmup: Duration,
    /// How long to measure. With [`Config::requests`] too, whichever limit
    /// is reached first ends the run.
    pub duration: Duration,
    /// Stop after this many requests were sent in the measured window.
    pub requests: Option<u64>,
    /// How long a client waits for a reply before it gives up on the
    /// connection.
    pub timeout: Duration,
    /// Seeds the choice of commands and keys.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            target: Target::Resp,
            addrs: vec!["127.0.0.1:6379".to_owned()],
            clients: 64,
            pipeline: 1,
            mix: Mix::parse("set=50,get=50").unwrap_or_else(|_| Mix::only(OpKind::Set)),
            keys: 10_000,
            value_bytes: 100,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(10),
            requests: None,
            timeout: Duration::from_secs(5),
            seed: 1,
        }
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no server address given")]
    NoAddress,
    #[error("cannot resolve the address {addr}")]
    Resolve {
        addr: String,
        source: std::io::Error,
    },
    #[error("{name} must be between {min} and {max}, not {value}")]
    OutOfRange {
        name: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("the duration and timeout must be above zero")]
    ZeroDuration,
    #[error("the etcd target supports set and get only, not {0}")]
    UnsupportedCommand(&'static str),
    #[error("this build cannot drive etcd; build with `--features etcd`")]
    EtcdNotBuilt,
    #[error("a client task failed")]
    ClientFailed(#[from] tokio::task::JoinError),
}

impl Config {
    /// Checks every field against its limits.
    pub fn validate(&self) -> Result<(), LoadError> {
        if self.addrs.is_empty() {
            return Err(LoadError::NoAddress);
        }
        let within = |name, value: u64, min, max| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(LoadError::OutOfRange {
                    name,
                    value,
                    min,
                    max,
                })
            }
        };
        within("clients", self.clients as u64, 1, CLIENTS_MAX as u64)?;
        within("pipeline", self.pipeline as u64, 1, PIPELINE_MAX as u64)?;
        within("keys", self.keys, 1, KEYS_MAX)?;
        within(
            "value bytes",
            self.value_bytes as u64,
            0,
            VALUE_BYTES_MAX as u64,
        )?;
        let request_bytes = self.value_bytes as u64 + 64;
        let in_flight = (self.clients as u64) * (self.pipeline as u64) * request_bytes;
        within("bytes in flight", in_flight, 0, IN_FLIGHT_BYTES_MAX)?;
        if let Some(requests) = self.requests {
            within("requests", requests, 1, u64::MAX)?;
        }
        if self.duration.is_zero() || self.timeout.is_zero() {
            return Err(LoadError::ZeroDuration);
        }
        if self.target == Target::Etcd {
            if !cfg!(feature = "etcd") {
                return Err(LoadError::EtcdNotBuilt);
            }
            if self.mix.weight(OpKind::Incr) > 0 {
                return Err(LoadError::UnsupportedCommand("incr"));
            }
        }
        Ok(())
    }
}
