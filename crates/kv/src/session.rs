//! Exactly-once client sessions.
//!
//! A client retries a request whose reply it did not receive; if the first
//! attempt did reach the log, the retry must not apply the command a second
//! time. Each session therefore remembers the replies of the seqs it has
//! applied, until the client acknowledges them (`ack_below`).
//!
//! Memory is bounded in two ways, both deterministic so that every replica
//! makes the same choice:
//!
//! * at most `max_sessions` sessions; creating one more evicts the session
//!   used least recently, measured by log index (never wall time). An
//!   evicted client is forgotten entirely: its next request is treated as a
//!   new one, so **a retry of a request from an evicted session may apply
//!   twice**. The default bound is large for that reason.
//! * at most `max_replies` cached replies per session; beyond that the
//!   lowest seq is dropped and treated as acknowledged, so a late retry of
//!   it gets the "duplicate" error rather than a second execution. (A
//!   pipelined seq that reaches the log only after more than `max_replies`
//!   higher seqs of the same client is rejected the same way.)

use std::collections::{BTreeMap, BTreeSet};

use super::command::{ClientId, Reply, Seq};

/// Bounds on session memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    pub max_sessions: usize,
    pub max_replies: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_sessions: 10_000,
            max_replies: 1024,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Session {
    /// Every seq below this has been acknowledged (or dropped) and applied.
    pub(crate) pruned_below: Seq,
    /// Log index of the last request of this client.
    pub(crate) last_used: u64,
    /// Replies of applied seqs at or above `pruned_below`.
    pub(crate) replies: BTreeMap<Seq, Reply>,
}

/// What to do with an incoming session request.
pub(crate) enum Admission {
    /// Not seen before: apply it, then [`Sessions::record`] the reply.
    Fresh,
    /// Applied before: answer with this reply, apply nothing.
    Cached(Reply),
    /// Below the acknowledged point: applied and acknowledged long ago.
    Acknowledged,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sessions {
    pub(crate) limits: SessionLimits,
    pub(crate) by_client: BTreeMap<ClientId, Session>,
    /// (last_used, client), to find the least recently used session.
    pub(crate) lru: BTreeSet<(u64, ClientId)>,
}

impl Sessions {
    pub(crate) fn new(limits: SessionLimits) -> Self {
        Sessions {
            limits: SessionLimits {
                max_sessions: limits.max_sessions.max(1),
                max_replies: limits.max_replies.max(1),
            },
            by_client: BTreeMap::new(),
            lru: BTreeSet::new(),
        }
    }

    /// Registers the request at log position `index`, prunes what the
    /// client acknowledged, and says whether to apply it.
    pub(crate) fn admit(
        &mut self,
        index: u64,
        client: ClientId,
        seq: Seq,
        ack_below: Seq,
    ) -> Admission {
        if !self.by_client.contains_key(&client) {
            while self.by_client.len() >= self.limits.max_sessions {
                let Some((_, victim)) = self.lru.pop_first() else {
                    break;
                };
                self.by_client.remove(&victim);
            }
        }
        let session = self.by_client.entry(client).or_default();
        self.lru.remove(&(session.last_used, client));
        session.last_used = index;
        self.lru.insert((index, client));

        if ack_below > session.pruned_below {
            session.pruned_below = ack_below;
            session.replies = session.replies.split_off(&ack_below);
        }
        if seq < session.pruned_below {
            return Admission::Acknowledged;
        }
        match session.replies.get(&seq) {
            Some(reply) => Admission::Cached(reply.clone()),
            None => Admission::Fresh,
        }
    }

    /// Remembers the reply of a freshly applied request.
    pub(crate) fn record(&mut self, client: ClientId, seq: Seq, reply: Reply) {
        let max = self.limits.max_replies;
        if let Some(session) = self.by_client.get_mut(&client) {
            session.replies.insert(seq, reply);
            while session.replies.len() > max {
                if let Some((dropped, _)) = session.replies.pop_first() {
                    session.pruned_below = session.pruned_below.max(dropped.next());
                }
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_client.len()
    }
}
