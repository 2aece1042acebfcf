//! What one node allows its clients: sizes, depths and counts.

use std::time::Duration;

use kv::MAX_VALUE_LEN;
use resp;

const KIB: usize = 1024;

/// Settings of the client port, every limit named with its unit.
///
/// A request that breaks a size limit is refused before anything reaches the
/// node, with an error reply; the connection stays open. The decoder limits
/// in [`Config::resp`] are different: they protect the server's memory, and
/// breaking one is a protocol error that closes the connection, as in Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id, shown by `INFO` and `HELLO`.
    pub node_id: u64,
    /// Longest key in bytes. Default 64 KiB: Redis allows 512 MiB, but every
    /// key is kept in memory on every replica, copied into the log and
    /// compared on every lookup, so a small bound costs real users nothing.
    pub key_bytes_max: usize,
    /// Longest value in bytes that `SET`, `MSET`, `GETSET`, `APPEND` (its
    /// suffix) and `CAS` accept. Default 512 MiB, Redis's
    /// `proto-max-bulk-len`; never more than [`MAX_VALUE_LEN`], which also
    /// bounds what `APPEND` may grow a value to.
    pub value_bytes_max: usize,
    /// Limits of the request decoder: line, argument count, bulk and
    /// request sizes.
    pub resp: resp::Limits,
    /// Requests of one connection read but not yet answered. When reached,
    /// the server stops reading from the connection until replies drain:
    /// backpressure through TCP, not an error. Default 1024.
    pub pipeline_depth_max: usize,
    /// Open client connections. One more is answered
    /// `-ERR max number of clients reached` and closed. Default 10,000.
    pub connections_max: usize,
    /// Commands queued between `MULTI` and `EXEC`; one more is an error
    /// that makes `EXEC` fail. Default 10,000: the whole transaction is one
    /// log entry.
    pub transaction_commands_max: usize,
    /// Keys one connection may `WATCH` at once. Default 10,000.
    pub watched_keys_max: usize,
    /// When set, a connection must `AUTH` (or `HELLO 2 AUTH`) with it
    /// before any other command.
    pub password: Option<String>,
    /// With a password, a connection that has not authenticated this long
    /// after it opened is closed. Default 10 s.
    pub auth_deadline: Duration,
    /// A connection with nothing in flight that sends nothing for this long
    /// is closed (Redis's `timeout`). Default `None`: never.
    pub idle_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 0,
            key_bytes_max: 64 * KIB,
            value_bytes_max: MAX_VALUE_LEN,
            resp: resp::Limits::default(),
            pipeline_depth_max: 1024,
            connections_max: 10_000,
            transaction_commands_max: 10_000,
            watched_keys_max: 10_000,
            password: None,
            auth_deadline: Duration::from_secs(10),
            idle_timeout: None,
        }
    }
}

/// The decoder's limits for a connection that has not authenticated yet,
/// when a password is set: a stranger may send `AUTH`, `HELLO` and `QUIT`,
/// and nothing larger (Redis allows the same 10 arguments of 16 KiB).
pub const UNAUTHENTICATED: resp::Limits = resp::Limits {
    inline_bytes_max: 16 * KIB,
    array_len_max: 10,
    bulk_bytes_max: 16 * KIB,
    request_bytes_max: 64 * KIB,
};

impl Config {
    /// The value limit actually enforced: the configured one, within what
    /// the store accepts.
    pub(crate) fn value_limit(&self) -> usize {
        self.value_bytes_max.min(MAX_VALUE_LEN)
    }
}
