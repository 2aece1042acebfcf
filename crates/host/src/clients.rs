//! What the host remembers of its clients: one session per connection, the
//! writes and reads still waiting for an answer, and the timers that decide
//! when to hand a write on again or give up. Times are in ticks.
//!
//! # A write's life
//!
//! ```text
//!  arrives ──propose ok──▶ handed on ──applied here──▶ answered with the store's reply
//!     │                      │   ▲
//!     │ no leader for        │   └── leader changed, or not applied after
//!     │ leader_grace         │       reforward_ticks: proposed again, same (client, seq)
//!     ▼                      ▼
//!  ClusterDown           write_timeout_ticks passed: Uncertain
//! ```
//!
//! A write that was never handed on cannot have taken effect, so refusing it
//! (`ClusterDown`, `Busy`) is honest. Once handed on, only its application
//! here says what happened: every replica applies the same log, so when this
//! node applies the entry carrying the write's (client, seq), the reply its
//! own store computed is the reply. Until then the only honest answer after
//! the deadline is `Uncertain`. Proposing a write again is safe because the
//! store's sessions apply each (client, seq) at most once.
//!
//! # Reads after writes
//!
//! A client may pipeline `SET k v` and `GET k` without waiting between
//! them, and expects the `GET` to see the `SET`, as Redis gives it. A read's
//! index can be settled before a write sent just ahead of it is even chosen,
//! so a linearizable read first waits until every write that reached this
//! node before it has its answer (applied here, or refused, or uncertain),
//! and only then asks for its read index. Read ops carry no connection, so
//! the barrier is per node rather than per connection: a read may wait for
//! another client's write too, which costs latency under mixed load but
//! never correctness.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use kv::{ClientId, Command, Seq};
use paxos::NodeId;
use paxos::replica::Slot;

/// Identifies a client connection within one node. The node keys the
/// exactly-once session of the connection's writes by it.
pub type ConnId = u64;

/// Bits of a client id: node id (16) | epoch (20) | counter (28). The node id
/// makes ids of different nodes differ; the epoch, made durable by the
/// shell before it is used, makes ids of one node differ across restarts.
pub const CLIENT_COUNTER_BITS: u32 = 28;
pub const CLIENT_EPOCH_BITS: u32 = 20;
/// The largest epoch a client id can carry.
pub const CLIENT_EPOCH_MAX: u64 = (1 << CLIENT_EPOCH_BITS) - 1;

/// Hands out client session ids, never the same twice for one node as long
/// as every epoch is used once.
#[derive(Clone, Debug)]
pub struct ClientIds {
    node: NodeId,
    epoch: Option<u64>,
    next: u64,
}

impl ClientIds {
    /// Ids of `node` in `epoch` (`None` until the shell has one).
    pub fn new(node: NodeId, epoch: Option<u64>) -> ClientIds {
        ClientIds {
            node,
            epoch,
            next: 0,
        }
    }

    /// The next unused id, or `None` when this epoch is used up (the shell
    /// is then asked for a new one).
    pub fn take(&mut self) -> Option<ClientId> {
        let epoch = self.epoch?;
        if self.next >> CLIENT_COUNTER_BITS != 0 {
            self.epoch = None;
            return None;
        }
        let id = (self.node << (CLIENT_COUNTER_BITS + CLIENT_EPOCH_BITS))
            | (epoch << CLIENT_COUNTER_BITS)
            | self.next;
        self.next += 1;
        Some(ClientId(id))
    }

    /// A fresh epoch from the shell.
    pub fn renew(&mut self, epoch: u64) {
        self.epoch = Some(epoch);
        self.next = 0;
    }

    pub fn waiting_for_epoch(&self) -> bool {
        self.epoch.is_none()
    }
}

/// The exactly-once session of one connection.
#[derive(Debug)]
pub(crate) struct Session {
    pub client: ClientId,
    pub next_seq: Seq,
    /// Seqs whose answer is still owed; the lowest is the `ack_below` of
    /// every new request.
    pub outstanding: BTreeSet<Seq>,
    /// The connection closed: retire the session once nothing is owed.
    pub closed: bool,
}

impl Session {
    pub fn new(client: ClientId) -> Session {
        Session {
            client,
            next_seq: Seq(1),
            outstanding: BTreeSet::new(),
            closed: false,
        }
    }
}

/// A write waiting for its outcome.
#[derive(Debug)]
pub(crate) struct PendingWrite<T> {
    pub conn: ConnId,
    pub answer: T,
    /// The encoded `Request`, proposed as is every time.
    pub request: Bytes,
    pub arrived: u64,
    /// When it was last handed to the protocol; `None` while never.
    pub proposed: Option<u64>,
    /// Propose again at the next sweep (the leader changed).
    pub again: bool,
    /// Order of arrival at this node, for the read barrier.
    pub arrival: u64,
}

/// A linearizable read waiting for its read index, then for the log to be
/// applied up to it.
#[derive(Debug)]
pub(crate) struct PendingRead<T> {
    pub command: Command,
    pub answer: T,
    pub arrived: u64,
    /// When the read index was last asked for; `None` while never.
    pub asked: Option<u64>,
    pub again: bool,
    /// The read may be answered once the log is applied up to here.
    pub index: Option<Slot>,
    /// Writes that arrived before this number are answered before the read
    /// index is asked for.
    pub after: u64,
}

/// Sessions and everything waiting.
#[derive(Debug)]
pub(crate) struct Clients<T> {
    pub sessions: HashMap<ConnId, Session>,
    /// By (client, seq), the key the log carries.
    pub writes: BTreeMap<(ClientId, Seq), PendingWrite<T>>,
    /// By read context.
    pub reads: BTreeMap<u64, PendingRead<T>>,
    /// The context of the next read. Contexts never repeat across restarts
    /// (they start from the start's epoch), so an answer a leader sent to a
    /// read of an earlier life of this node can never answer a new one.
    pub next_ctx: u64,
    /// Arrival numbers of the writes in `writes`.
    arrivals: BTreeSet<u64>,
    next_arrival: u64,
}

impl<T> Default for Clients<T> {
    fn default() -> Self {
        Clients {
            sessions: HashMap::new(),
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            next_ctx: 0,
            arrivals: BTreeSet::new(),
            next_arrival: 0,
        }
    }
}

impl<T> Clients<T> {
    /// No client yet; read contexts start at `first_ctx`.
    pub fn starting_reads_at(first_ctx: u64) -> Self {
        Clients {
            next_ctx: first_ctx,
            ..Clients::default()
        }
    }

    /// The arrival number of the next write.
    pub fn next_arrival(&self) -> u64 {
        self.next_arrival
    }

    /// Starts waiting for the write `key`.
    pub fn add_write(&mut self, key: (ClientId, Seq), mut write: PendingWrite<T>) {
        write.arrival = self.next_arrival;
        self.next_arrival += 1;
        self.arrivals.insert(write.arrival);
        if let Some(old) = self.writes.insert(key, write) {
            // A key is never reused; keep the books straight if it were.
            self.arrivals.remove(&old.arrival);
        }
    }

    /// Every write that arrived before `after` has its answer.
    pub fn writes_done_before(&self, after: u64) -> bool {
        self.arrivals.first().is_none_or(|&first| first >= after)
    }

    /// Takes the write `(client, seq)` out of the waiting set, and retires
    /// its session if the connection closed and nothing else is owed.
    pub fn finish_write(&mut self, key: (ClientId, Seq)) -> Option<PendingWrite<T>> {
        let write = self.writes.remove(&key)?;
        self.arrivals.remove(&write.arrival);
        self.forget(write.conn, key.1);
        Some(write)
    }

    /// The answer for seq `seq` of `conn` is no longer owed.
    pub fn forget(&mut self, conn: ConnId, seq: Seq) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.outstanding.remove(&seq);
            if session.closed && session.outstanding.is_empty() {
                self.sessions.remove(&conn);
            }
        }
    }

    /// The connection closed.
    pub fn close(&mut self, conn: ConnId) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.closed = true;
            if session.outstanding.is_empty() {
                self.sessions.remove(&conn);
            }
        }
    }

    /// Every handed-on write and asked read is handed on again at the next
    /// sweep: the leader they went to may never answer.
    pub fn leader_changed(&mut self) {
        for write in self.writes.values_mut() {
            write.again = write.proposed.is_some();
        }
        for read in self.reads.values_mut() {
            read.again = read.asked.is_some() && read.index.is_none();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_session_is_retired_once_nothing_is_owed() {
        let mut c: Clients<()> = Clients::default();
        let mut s = Session::new(ClientId(7));
        s.outstanding.insert(Seq(1));
        s.outstanding.insert(Seq(2));
        c.sessions.insert(1, s);
        c.close(1);
        assert!(c.sessions.contains_key(&1), "answers are still owed");
        c.forget(1, Seq(1));
        assert!(c.sessions.contains_key(&1));
        c.forget(1, Seq(2));
        assert!(!c.sessions.contains_key(&1));
        c.sessions.insert(2, Session::new(ClientId(8)));
        c.close(2);
        assert!(!c.sessions.contains_key(&2));
    }

    #[test]
    fn a_read_waits_for_the_writes_that_arrived_before_it() {
        let mut c: Clients<()> = Clients::default();
        let write = |conn| PendingWrite {
            conn,
            answer: (),
            request: Bytes::new(),
            arrived: 0,
            proposed: None,
            again: false,
            arrival: 0,
        };
        c.add_write((ClientId(5), Seq(1)), write(1));
        let read_after = c.next_arrival();
        c.add_write((ClientId(5), Seq(2)), write(1));
        assert!(!c.writes_done_before(read_after));
        // A later write does not hold the read back.
        assert!(c.finish_write((ClientId(5), Seq(1))).is_some());
        assert!(c.writes_done_before(read_after));
        assert!(!c.writes_done_before(c.next_arrival()));
        assert!(c.finish_write((ClientId(5), Seq(2))).is_some());
        assert!(c.writes_done_before(c.next_arrival()));
    }

    #[test]
    fn client_ids_never_repeat_and_an_epoch_runs_out() {
        let mut ids = ClientIds::new(3, Some(5));
        let a = ids.take().expect("an id");
        let b = ids.take().expect("an id");
        assert_ne!(a, b);
        assert_eq!(a.0 >> (CLIENT_COUNTER_BITS + CLIENT_EPOCH_BITS), 3);
        assert_eq!((a.0 >> CLIENT_COUNTER_BITS) & CLIENT_EPOCH_MAX, 5);
        ids.next = 1 << CLIENT_COUNTER_BITS;
        assert_eq!(ids.take(), None, "the epoch is used up");
        assert!(ids.waiting_for_epoch());
        ids.renew(6);
        let c = ids.take().expect("an id");
        assert_eq!((c.0 >> CLIENT_COUNTER_BITS) & CLIENT_EPOCH_MAX, 6);
        assert!(![a, b].contains(&c));
        assert_eq!(ClientIds::new(1, None).take(), None);
    }
}
