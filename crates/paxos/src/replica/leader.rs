//! The leader's side: phase 2 for a window of slots, heartbeats, leases and
//! read-index.

use super::message::{Message, Record, RecordNo, Slot, Value};
use super::{InFlight, Leader, PendingRead, ReadState, Replica, Role};
use std::collections::BTreeSet;

use crate::ballot::NodeId;

/// Heartbeat rounds remembered for lease accounting.
const HEARTBEATS_KEPT: usize = 64;

impl Replica {
    /// Runs `f` on the leader state, taken out of `self` for the duration
    /// (`f` must not change the role; it sets `step_down` instead).
    fn with_leader<R>(&mut self, f: impl FnOnce(&mut Replica, &mut Leader) -> R) -> Option<R> {
        if !matches!(self.role, Role::Leader(_)) {
            return None;
        }
        let Role::Leader(mut leader) = std::mem::replace(&mut self.role, Role::Follower) else {
            return None;
        };
        let result = f(self, &mut leader);
        let step_down = leader.step_down;
        self.role = Role::Leader(leader);
        if step_down {
            self.become_follower();
        }
        Some(result)
    }

    /// Proposes `value` for `slot` in the leader's ballot, accepting it here
    /// too. The accepts may leave before that acceptance is durable; it
    /// counts as a vote only once it is (see [`Replica::persisted`]).
    pub(super) fn propose_slot(&mut self, leader: &mut Leader, slot: Slot, value: Value) {
        let ballot = leader.ballot;
        self.log.entry(slot).or_default().accepted = Some((ballot, value.clone()));
        let record = self.next_record_number();
        self.ready.records.push(Record::Accept {
            slot,
            ballot,
            value: value.clone(),
        });
        leader.own_votes.push_back((record, slot));
        leader.unsent.push((slot, value.clone()));
        leader.inflight.insert(
            slot,
            InFlight {
                value,
                accepted_by: BTreeSet::new(),
            },
        );
    }

    /// Counts the leader's own acceptances made durable by records up to
    /// number `up_to`.
    pub(super) fn count_own_votes(&mut self, up_to: RecordNo) {
        let me = self.config.id;
        self.with_leader(|r, leader| {
            while let Some(&(record, slot)) = leader.own_votes.front() {
                if record > up_to {
                    break;
                }
                leader.own_votes.pop_front();
                r.count_vote(leader, slot, me);
            }
        });
    }

    /// Counts `voter`'s acceptance of `slot`; a quorum makes it chosen.
    fn count_vote(&mut self, leader: &mut Leader, slot: Slot, voter: NodeId) {
        let Some(flight) = leader.inflight.get_mut(&slot) else {
            return;
        };
        flight.accepted_by.insert(voter);
        if flight.accepted_by.len() < self.config.quorum() {
            return;
        }
        if let Some(flight) = leader.inflight.remove(&slot) {
            self.log.entry(slot).or_default().chosen = Some(flight.value);
            self.advance_commit();
        }
    }

    pub(super) fn on_accepted(&mut self, from: NodeId, ballot: crate::Ballot, slots: &[Slot]) {
        let now = self.now;
        self.with_leader(|r, leader| {
            if leader.ballot != ballot {
                return;
            }
            leader.last_heard.insert(from, now);
            for &slot in slots {
                r.count_vote(leader, slot, from);
            }
        });
    }

    /// Before handing out a `Ready`: batch queued commands into new slots
    /// while the window allows, send what is new, and heartbeat if asked.
    pub(super) fn flush_leader(&mut self) {
        self.with_leader(|r, leader| {
            let window = r.config.inflight_slots_max;
            while !leader.pending.is_empty() && (leader.next_slot - 1).since(r.commit) < window {
                let mut batch = Vec::new();
                let mut bytes = 0;
                while let Some(command) = leader.pending.front() {
                    let fits = batch.len() < r.config.batch_commands_max
                        && bytes + command.len() <= r.config.batch_bytes_max;
                    if !batch.is_empty() && !fits {
                        break;
                    }
                    bytes += command.len();
                    if let Some(command) = leader.pending.pop_front() {
                        batch.push(command);
                    }
                }
                let slot = leader.next_slot;
                leader.next_slot += 1;
                r.propose_slot(leader, slot, Value::Batch(batch));
            }
            if !leader.unsent.is_empty() || (r.commit > leader.commit_sent && !leader.heartbeat_due)
            {
                // New slots, or only a new commit point: followers learn it
                // now rather than at the next heartbeat, so a write answered
                // by a follower waits for no timer.
                let entries = std::mem::take(&mut leader.unsent);
                leader.commit_sent = r.commit;
                r.broadcast(Message::Accept {
                    ballot: leader.ballot,
                    entries,
                    commit: r.commit,
                });
            }
            if r.commit >= leader.noop_slot && !leader.early_reads.is_empty() {
                for (ctx, origin) in std::mem::take(&mut leader.early_reads) {
                    r.read_now_or_confirm(leader, ctx, origin);
                }
            }
            if leader.heartbeat_due {
                r.send_heartbeat(leader);
            }
        });
    }

    fn send_heartbeat(&mut self, leader: &mut Leader) {
        leader.heartbeat_seq += 1;
        leader.heartbeat_sent.insert(leader.heartbeat_seq, self.now);
        while leader.heartbeat_sent.len() > HEARTBEATS_KEPT {
            leader.heartbeat_sent.pop_first();
        }
        leader.heartbeat_due = false;
        leader.commit_sent = self.commit;
        leader.next_heartbeat = self.now + self.config.heartbeat_ticks;
        self.broadcast(Message::Heartbeat {
            ballot: leader.ballot,
            commit: self.commit,
            seq: leader.heartbeat_seq,
        });
        if self.config.quorum() == 1 {
            // Alone, every round is confirmed at once.
            let seq = leader.heartbeat_seq;
            self.confirm_round(leader, seq);
        }
    }

    pub(super) fn tick_leader(&mut self) {
        let now = self.now;
        self.with_leader(|r, leader| {
            // A leader that has not heard from a quorum for an election
            // timeout steps down: it can no longer commit, and its followers
            // may be electing someone else.
            let heard = leader
                .last_heard
                .values()
                .filter(|&&t| now < t + r.config.election_ticks)
                .count()
                + 1;
            if heard < r.config.quorum() {
                leader.step_down = true;
                return;
            }
            if now < leader.next_heartbeat {
                return;
            }
            r.send_heartbeat(leader);
            // Accepts may have been lost: send each slot still in flight
            // again to the peers that have not accepted it.
            let peers: Vec<NodeId> = r.peers().collect();
            for peer in peers {
                let entries: Vec<(Slot, Value)> = leader
                    .inflight
                    .iter()
                    .filter(|(_, f)| !f.accepted_by.contains(&peer))
                    .map(|(s, f)| (*s, f.value.clone()))
                    .collect();
                if !entries.is_empty() {
                    r.send(
                        peer,
                        Message::Accept {
                            ballot: leader.ballot,
                            entries,
                            commit: r.commit,
                        },
                    );
                }
            }
            // Chosen slots we learned of but hold no value for: ask the
            // peer whose acks say it knows the most, else each in turn.
            if r.commit < r.known_commit {
                let ahead = leader
                    .peer_commit
                    .iter()
                    .filter(|&(_, &commit)| commit > r.commit)
                    .max_by_key(|&(_, &commit)| commit)
                    .map(|(&peer, _)| peer);
                let peers: Vec<NodeId> = r.peers().collect();
                let in_turn = peers
                    .get(leader.catch_up_turn % peers.len().max(1))
                    .copied();
                if let Some(peer) = ahead.or(in_turn) {
                    leader.catch_up_turn += 1;
                    r.maybe_catch_up(peer);
                }
            }
        });
    }

    pub(super) fn on_heartbeat_ack(
        &mut self,
        from: NodeId,
        ballot: crate::Ballot,
        seq: u64,
        commit: Slot,
    ) {
        let now = self.now;
        self.with_leader(|r, leader| {
            if leader.ballot != ballot {
                return;
            }
            leader.last_heard.insert(from, now);
            leader.peer_commit.insert(from, commit);
            // What a peer knows is chosen, is.
            r.known_commit = r.known_commit.max(commit);
            let acked = leader.acked_seq.entry(from).or_insert(0);
            *acked = (*acked).max(seq);
            // The highest round a quorum (us included) has acknowledged.
            let mut seqs: Vec<u64> = leader.acked_seq.values().copied().collect();
            seqs.sort_unstable_by(|a, b| b.cmp(a));
            let others = r.config.quorum() - 1;
            if let Some(&round) = seqs.get(others.saturating_sub(1))
                && others > 0
            {
                r.confirm_round(leader, round);
            }
        });
    }

    /// A quorum acknowledged heartbeat round `round`: we were leader when it
    /// was sent. Extend the lease and answer the reads it covers.
    fn confirm_round(&mut self, leader: &mut Leader, round: u64) {
        if self.config.lease_ticks > 0
            && let Some(&sent) = leader.heartbeat_sent.get(&round)
        {
            let until = sent + self.config.leader_lease_ticks();
            leader.lease_until = leader.lease_until.max(until);
        }
        let (done, waiting): (Vec<PendingRead>, Vec<PendingRead>) =
            leader.reads.drain(..).partition(|r| r.seq <= round);
        leader.reads = waiting;
        for read in done {
            self.answer_read(read.ctx, read.origin, read.index);
        }
    }

    fn answer_read(&mut self, ctx: u64, origin: Option<NodeId>, index: Slot) {
        match origin {
            None => self.reads_waiting.push(ReadState { ctx, index }),
            Some(peer) => self.send(peer, Message::ReadIndexReply { ctx, index }),
        }
    }

    /// A read arrives at the leader, from its host or a follower.
    pub(super) fn leader_read(&mut self, ctx: u64, origin: Option<NodeId>) {
        self.with_leader(|r, leader| {
            if r.commit < leader.noop_slot {
                // Until our no-op is chosen we do not know the commit point.
                leader.early_reads.push((ctx, origin));
            } else {
                r.read_now_or_confirm(leader, ctx, origin);
            }
        });
    }

    fn read_now_or_confirm(&mut self, leader: &mut Leader, ctx: u64, origin: Option<NodeId>) {
        if self.now < leader.lease_until {
            // Under the lease no other leader can have been elected.
            let index = self.commit;
            self.answer_read(ctx, origin, index);
            return;
        }
        leader.reads.push(PendingRead {
            ctx,
            origin,
            seq: leader.heartbeat_seq + 1,
            index: self.commit,
        });
        leader.heartbeat_due = true;
    }
}
