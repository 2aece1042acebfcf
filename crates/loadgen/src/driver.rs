//! The closed loop: clients, their batches, and what each reply counts for.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::histogram::Histogram;
use super::report::Report;
use super::resp_client::{ClientError, RespConn};
use super::workload::{self, OpKind, Rng};
use super::{BACKOFF_MAX, BACKOFF_MIN, Config, ERROR_KINDS_MAX, LoadError, Target};
use resp::Reply;

/// Counters that move while a run goes on, for a progress display. Only
/// what the measured window counts is added.
#[derive(Debug, Default)]
pub struct Live {
    ops: AtomicU64,
    errors: AtomicU64,
}

impl Live {
    /// Successful replies counted so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Errors counted so far, of every kind.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// Runs the load described by `config` and reports what it measured.
///
/// Returns once the measured window has closed and every client has
/// stopped: at most about `warmup + duration` after the call, plus the time
/// to stop the clients. Server errors and connection failures are counted
/// in the report, never returned.
pub async fn run(config: &Config, live: Arc<Live>) -> Result<Report, LoadError> {
    config.validate()?;
    for addr in &config.addrs {
        let found = tokio::net::lookup_host(addr.as_str())
            .await
            .map_err(|source| LoadError::Resolve {
                addr: addr.clone(),
                source,
            })?
            .next();
        if found.is_none() {
            return Err(LoadError::Resolve {
                addr: addr.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
            });
        }
    }
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let shared = Arc::new(Shared {
        value: Bytes::from(vec![b'x'; config.value_bytes]),
        measure_from,
        measure_until: measure_from + config.duration,
        budget: config.requests.map(AtomicU64::new),
        live,
        config: config.clone(),
    });
    let mut clients = JoinSet::new();
    for id in 0..config.clients {
        let shared = Arc::clone(&shared);
        match config.target {
            Target::Resp => clients.spawn(resp_client(id, shared)),
            #[cfg(feature = "etcd")]
            Target::Etcd => clients.spawn(super::etcd::etcd_client(id, shared)),
            // `validate` refuses etcd in builds without it.
            #[cfg(not(feature = "etcd"))]
            Target::Etcd => return Err(LoadError::EtcdNotBuilt),
        };
    }
    let mut total = Stats::default();
    while let Some(stats) = clients.join_next().await {
        total.merge(stats?);
    }
    let budget_spent = shared
        .budget
        .as_ref()
        .is_some_and(|left| left.load(Ordering::Relaxed) == 0);
    let window_end = if budget_spent {
        // The request count ended the run: it lasted until the last reply.
        total
            .last_counted
            .map_or(measure_from, |last| last.min(shared.measure_until))
    } else {
        shared.measure_until
    };
    let window = window_end.saturating_duration_since(measure_from);
    Ok(Report::new(config, window, &total))
}

/// What every client of a run shares.
pub(super) struct Shared {
    pub config: Config,
    /// The value every `SET` writes.
    pub value: Bytes,
    pub measure_from: Instant,
    /// The end of the run; no reply is counted from here on.
    pub measure_until: Instant,
    /// Requests that may still be sent in the measured window, when the run
    /// is limited by a request count.
    budget: Option<AtomicU64>,
    live: Arc<Live>,
}

/// Permission to send a batch, from [`Shared::claim`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Claim {
    /// How many requests to send.
    pub count: usize,
    /// Sent in the measured window of a run limited by a request count (or
    /// in any run limited only by time): its replies may be counted.
    pub counted: bool,
}

impl Shared {
    /// How many requests (up to `want`) a client may send now. `None` means
    /// the run is over for this client.
    pub fn claim(&self, want: usize) -> Option<Claim> {
        let now = Instant::now();
        if now >= self.measure_until {
            return None;
        }
        let Some(budget) = &self.budget else {
            return Some(Claim {
                count: want,
                counted: true,
            });
        };
        if now < self.measure_from {
            return Some(Claim {
                count: want,
                counted: false,
            });
        }
        let want = want as u64;
        let left = budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                Some(left - left.min(want))
            })
            .unwrap_or_default();
        match left.min(want) {
            0 => None,
            // At most `want`, which came from a usize.
            n => Some(Claim {
                count: n as usize,
                counted: true,
            }),
        }
    }

    fn in_window(&self, now: Instant) -> bool {
        now >= self.measure_from && now < self.measure_until
    }

    /// Runs `work` unless the run ends first, in which case `None`.
    pub async fn until_end<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            out = work => Some(out),
            () = tokio::time::sleep_until(self.measure_until) => None,
        }
    }

    /// Sleeps for `backoff` (or until the run ends) and returns the next,
    /// doubled backoff; `None` if the run ended meanwhile.
    pub async fn back_off(&self, backoff: Duration) -> Option<Duration> {
        self.until_end(tokio::time::sleep(backoff)).await?;
        Some((backoff * 2).min(BACKOFF_MAX))
    }
}

/// One client's counts, merged into the report at the end.
#[derive(Debug, Default)]
pub(super) struct Stats {
    /// Latencies of successful replies in nanoseconds, by command.
    latency: BTreeMap<OpKind, Histogram>,
    errors: BTreeMap<String, u64>,
    /// Connections opened, counted over the whole run.
    pub connections: u64,
    /// When the last counted reply arrived.
    last_counted: Option<Instant>,
}

impl Stats {
    pub fn merge(&mut self, other: Stats) {
        for (kind, histogram) in &other.latency {
            self.latency.entry(*kind).or_default().merge(histogram);
        }
        for (kind, count) in other.errors {
            *self.errors.entry(kind).or_default() += count;
        }
        self.connections += other.connections;
        self.last_counted = self.last_counted.max(other.last_counted);
    }

    /// A successful reply to a request of `claim`, sent at `sent`.
    pub fn success(&mut self, shared: &Shared, claim: Claim, kind: OpKind, sent: Instant) {
        let now = Instant::now();
        if !(claim.counted && shared.in_window(now)) {
            return;
        }
        let nanos = u64::try_from((now - sent).as_nanos()).unwrap_or(u64::MAX);
        self.latency.entry(kind).or_default().record(nanos);
        self.last_counted = Some(now);
        shared.live.ops.fetch_add(1, Ordering::Relaxed);
    }

    /// `count` requests of `claim` that failed with `kind`.
    pub fn error(&mut self, shared: &Shared, claim: Claim, kind: &str, count: u64) {
        let now = Instant::now();
        if count == 0 || !(claim.counted && shared.in_window(now)) {
            return;
        }
        let kind = if self.errors.contains_key(kind) || self.errors.len() < ERROR_KINDS_MAX {
            kind
        } else {
            "other"
        };
        *self.errors.entry(kind.to_owned()).or_default() += count;
        self.last_counted = Some(now);
        shared.live.errors.fetch_add(count, Ordering::Relaxed);
    }

    /// A failure outside any batch (a connection attempt), counted when it
    /// happens in the measured window.
    pub fn failure(&mut self, shared: &Shared, kind: &str) {
        let claim = Claim {
            count: 1,
            counted: true,
        };
        self.error(shared, claim, kind, 1);
    }

    pub fn latency(&self) -> &BTreeMap<OpKind, Histogram> {
        &self.latency
    }

    pub fn errors(&self) -> &BTreeMap<String, u64> {
        &self.errors
    }
}

/// The code of a server error: its first word (`CLUSTERDOWN`, `ERR`), cut
/// to a sane length.
pub(super) fn error_code(text: &str) -> String {
    const CODE_CHARS_MAX: usize = 32;
    let code: String = text
        .split_whitespace()
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(CODE_CHARS_MAX)
        .collect();
    if code.is_empty() {
        "error".to_owned()
    } else {
        code
    }
}

/// Whether `reply` is a success for `kind`, and if not, the error kind.
fn classify(kind: OpKind, reply: &Reply) -> Result<(), String> {
    match (kind, reply) {
        (_, Reply::Error(text)) => Err(error_code(text)),
        (OpKind::Set, Reply::Simple(_))
        | (OpKind::Get, Reply::Bulk(_) | Reply::NullBulk)
        | (OpKind::Incr, Reply::Integer(_)) => Ok(()),
        _ => Err("unexpected-reply".to_owned()),
    }
}

/// The error kind of a broken RESP connection.
fn failure_kind(error: &ClientError) -> &'static str {
    match error {
        ClientError::Connect { .. } => "connect",
        ClientError::Io(_) => "io",
        ClientError::Closed => "closed",
        ClientError::Protocol(_) => "protocol",
        ClientError::TimedOut(_) => "timeout",
    }
}

/// A distinct, reproducible seed for each client (and lane).
pub(super) fn client_seed(seed: u64, client: usize, lane: usize) -> u64 {
    let mut rng = Rng::new(seed ^ ((client as u64) << 20) ^ lane as u64);
    rng.next_u64()
}

/// One RESP client: connect, then batches until the run ends.
async fn resp_client(id: usize, shared: Arc<Shared>) -> Stats {
    let config = &shared.config;
    let addr = &config.addrs[id % config.addrs.len()];
    let mut rng = Rng::new(client_seed(config.seed, id, 0));
    let mut stats = Stats::default();
    let mut backoff = BACKOFF_MIN;
    let mut kinds: Vec<OpKind> = Vec::with_capacity(config.pipeline);
    'connection: loop {
        let mut conn = match shared.until_end(RespConn::connect(addr)).await {
            None => break,
            Some(Ok(conn)) => conn,
            Some(Err(_)) => {
                stats.failure(&shared, "connect");
                match shared.back_off(backoff).await {
                    Some(next) => backoff = next,
                    None => break,
                }
                continue;
            }
        };
        stats.connections += 1;
        loop {
            let Some(claim) = shared.claim(config.pipeline) else {
                break 'connection;
            };
            kinds.clear();
            for _ in 0..claim.count {
                let kind = config.mix.pick(&mut rng);
                let key = workload::key(kind, rng.below(config.keys));
                match kind {
                    OpKind::Set => conn.queue(&[b"SET", &key, &shared.value]),
                    OpKind::Get => conn.queue(&[b"GET", &key]),
                    OpKind::Incr => conn.queue(&[b"INCR", &key]),
                }
                kinds.push(kind);
            }
            let sent = Instant::now();
            let mut answered = 0usize;
            let exchange = async {
                conn.flush().await?;
                while answered < kinds.len() {
                    let reply = conn.read_reply().await?;
                    let kind = kinds[answered];
                    match classify(kind, &reply) {
                        Ok(()) => stats.success(&shared, claim, kind, sent),
                        Err(code) => stats.error(&shared, claim, &code, 1),
                    }
                    answered += 1;
                }
                Ok::<(), ClientError>(())
            };
            let outcome = shared
                .until_end(tokio::time::timeout_at(sent + config.timeout, exchange))
                .await;
            let unanswered = (kinds.len() - answered) as u64;
            let error = match outcome {
                // The run ended with this batch in flight: not an error.
                None => break 'connection,
                Some(Ok(Ok(()))) => {
                    backoff = BACKOFF_MIN;
                    continue;
                }
                Some(Ok(Err(error))) => error,
                Some(Err(_elapsed)) => ClientError::TimedOut(config.timeout),
            };
            stats.error(&shared, claim, failure_kind(&error), unanswered);
            match shared.back_off(backoff).await {
                Some(next) => backoff = next,
                None => break 'connection,
            }
            continue 'connection;
        }
    }
    stats
}
