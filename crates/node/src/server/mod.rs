//! The client port: Redis's protocol (RESP2) over TCP, in front of a node.
//!
//! [`serve_clients`] accepts connections and gives each its own task. A
//! connection decodes requests with [`resp::Decoder`], answers
//! connection-level commands itself (`PING`, `HELLO`, `CLIENT`, `INFO`,
//! `MULTI`...) and hands key-value commands to the node through its
//! [`NodeHandle`]: writes through the log, reads as the connection's read
//! mode allows. Replies go back strictly in request order, however many
//! requests are in flight.
//!
//! One file per command family: `strings` (`GET`, `SET`, counters, `CAS`),
//! `keys` (`DEL`, `SCAN`...), `txn` (`MULTI`/`EXEC`/`WATCH`), `connection`
//! (`PING`, `AUTH`, `SELECT`...), `introspection` (`HELLO`, `CLIENT`,
//! `INFO`, `COMMAND`, `CONFIG`). `table` lists every command with its
//! arity and flags, `dispatch` applies Redis's order of checks, `client`
//! runs the connection loop and `reply` turns the store's replies into
//! RESP.
//!
//! Differences from Redis worth knowing:
//!
//! * There is no expiry: `SET ... EX` is refused with
//!   `-ERR parliament does not support key expiry`.
//! * `CAS key expected new` swaps the value when it equals `expected`
//!   (replies 1) and otherwise leaves it (replies 0). Swapping from "no
//!   value" is `SETNX`.
//! * `READONLY` lets this connection's reads be served from the node's
//!   applied state, possibly stale; `READWRITE` makes them linearizable
//!   again. Transactions and `WATCH` are always linearizable.
//! * A node that cannot answer says why: `-CLUSTERDOWN` (not applied, retry),
//!   `-UNCERTAIN` (a write that may or may not have been applied), `-BUSY`.

mod admin;
mod argv;
mod backup;
mod client;
mod connection;
mod dispatch;
mod introspection;
mod keys;
mod limits;
mod reply;
mod strings;
mod table;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod txn;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub use limits::Config;

use crate::api::{ConnId, NodeHandle};
use crate::metrics::Metrics;

/// What a client over [`Config::connections_max`] is told before the
/// connection is closed.
const TOO_MANY_CLIENTS: &[u8] = b"-ERR max number of clients reached\r\n";

/// Pause after a failed accept, so that running out of file descriptors
/// does not turn the accept loop into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Connection ids, unique within the process and never 0 (which the store
/// reads as "no session").
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

fn next_conn_id() -> ConnId {
    NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed)
}

/// Serves Redis clients on `listener` until the returned future is dropped
/// or its task aborted, which also ends every connection it accepted.
///
/// Failed accepts (for example when the process is out of file
/// descriptors) are logged and retried after a short pause; they never end
/// the loop.
pub async fn serve_clients(
    listener: TcpListener,
    node: NodeHandle,
    config: Config,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let open = Arc::new(AtomicUsize::new(0));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if open.load(Ordering::Relaxed) >= config.connections_max {
                        refuse(stream).await;
                        continue;
                    }
                    let guard = OpenConnection::new(&open, node.metrics());
                    // Replies are batched already; don't let Nagle delay them.
                    let _ = stream.set_nodelay(true);
                    let connection =
                        client::Connection::new(stream, next_conn_id(), node.clone(), config.clone());
                    let node = node.clone();
                    connections.spawn(async move {
                        let id = connection.id();
                        connection.serve().await;
                        // Free the slot before telling the node, so that
                        // anyone who hears of the close can connect again.
                        drop(guard);
                        node.closed(id).await;
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a client connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = ended
                    && error.is_panic()
                {
                    tracing::error!(%error, "a client connection task panicked");
                }
            }
        }
    }
}

/// Tells a client over the limit why, and closes. Never waits: the reply
/// fits in any fresh socket's buffer, and if it does not the client goes
/// without.
async fn refuse(mut stream: TcpStream) {
    let _ = stream.try_write(TOO_MANY_CLIENTS);
    let _ = stream.shutdown().await;
}

/// Counts a connection as open for its lifetime.
struct OpenConnection {
    open: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl OpenConnection {
    fn new(open: &Arc<AtomicUsize>, metrics: &Arc<Metrics>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        metrics.client_connections_total.inc();
        metrics.client_connections_open.inc();
        OpenConnection {
            open: open.clone(),
            metrics: metrics.clone(),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.client_connections_open.dec();
    }
}
