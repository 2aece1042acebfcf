//! The leader's side: phase 2 for a window of slots, heartbeats, leases and
//! read-index.

use super::membership::Membership;
use super::message::{Message, Record, RecordNo, Slot, Value};
use super::{Flaw, InFlight, Leader, PendingRead, ReadState, Replica, Role};
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
        self.flawed_note(slot, &value);
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
        // Only the voters of the slot's own membership count.
        let membership = self.configs.at(slot);
        let quorum = if self.config.flaw == Some(Flaw::RemovedStillVotes) {
            let retired = &self.configs.latest().retired;
            let counted = flight
                .accepted_by
                .iter()
                .filter(|id| membership.is_voter(**id) || retired.contains(id))
                .count();
            counted >= membership.quorum()
        } else {
            membership.is_quorum(&flight.accepted_by)
        };
        if !quorum {
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
            r.fill_slots(leader);
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
            if r.serving(leader) && !leader.early_reads.is_empty() {
                for (ctx, origin) in std::mem::take(&mut leader.early_reads) {
                    r.read_now_or_confirm(leader, ctx, origin);
                }
            }
            if leader.heartbeat_due {
                r.send_heartbeat(leader);
            }
        });
    }

    /// Whether the leader's term is established: its no-op is chosen, so
    /// every slot chosen before its ballot is at or below its commit point.
    pub(super) fn serving(&self, leader: &Leader) -> bool {
        leader.noop_proposed && self.commit >= leader.noop_slot
    }

    /// Proposes in order every slot the leader may: the values promises
    /// reported, no-ops for gaps and for the term's own no-op, a waiting
    /// membership change, client batches, and no-ops that bring a chosen
    /// membership change into force. A slot `n` is proposed only while
    ///
    /// - it lies within `commit + α` (so its membership is known) and within
    ///   the window of slots in flight;
    /// - it has the membership of the first open slot: the leader drains its
    ///   window at a change of membership, so that it never has slots of two
    ///   memberships in flight;
    /// - a quorum of its voters promised this ballot (the leader asks the
    ///   voters a change brought in, and waits).
    fn fill_slots(&mut self, leader: &mut Leader) {
        let window = self.config.inflight_slots_max.min(self.configs.alpha());
        loop {
            let n = leader.next_slot;
            if self.log.get(&n).is_some_and(|e| e.chosen.is_some()) {
                // Chosen already (learned from a promise or a peer).
                leader.reported.remove(&n);
                leader.next_slot += 1;
                continue;
            }
            if (n - 1).since(self.commit) >= window {
                break;
            }
            let open = self.commit + 1;
            if self.configs.governing_from(n) != self.configs.governing_from(open) {
                break;
            }
            let voters = self.configs.at(n);
            if !voters.is_quorum(&leader.promisers) {
                let missing: Vec<NodeId> = voters
                    .voters()
                    .filter(|id| !leader.promisers.contains(id))
                    .collect();
                self.ask_promises(leader, missing);
                break;
            }
            if !leader.noop_proposed
                && let Some((&last, _)) = leader.reported.last_key_value()
            {
                // The term's no-op goes past every reported slot.
                leader.noop_slot = leader.noop_slot.max(last + 1);
            }
            let value = if let Some((_, value)) = leader.reported.remove(&n) {
                value
            } else if n < leader.noop_slot {
                Value::Noop
            } else if !leader.noop_proposed {
                leader.noop_proposed = true;
                leader.noop_slot = n;
                Value::Noop
            } else if leader.transfer.is_some() {
                break; // handing over: nothing new from here
            } else if let Some(change) = leader.change.take() {
                leader.change_slot = Some(n);
                Value::Change(change)
            } else if !leader.pending.is_empty() {
                self.take_batch(leader)
            } else if n < self.configs.latest_from() {
                // A chosen change governs from a later slot: get there.
                Value::Noop
            } else {
                break;
            };
            leader.next_slot += 1;
            self.propose_slot(leader, n, value);
        }
    }

    /// The next batch of queued client commands.
    fn take_batch(&self, leader: &mut Leader) -> Value {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(command) = leader.pending.front() {
            let fits = batch.len() < self.config.batch_commands_max
                && bytes + command.len() <= self.config.batch_bytes_max;
            if !batch.is_empty() && !fits {
                break;
            }
            bytes += command.len();
            if let Some(command) = leader.pending.pop_front() {
                batch.push(command);
            }
        }
        Value::Batch(batch)
    }

    /// Asks voters that have not promised this ballot to do so, at most
    /// once per heartbeat interval.
    fn ask_promises(&mut self, leader: &mut Leader, missing: Vec<NodeId>) {
        let pace = self.config.heartbeat_ticks * 2;
        if leader.prepare_asked.is_some_and(|at| self.now < at + pace) {
            return;
        }
        leader.prepare_asked = Some(self.now);
        let me = self.config.id;
        for id in missing.into_iter().filter(|&id| id != me) {
            self.send(
                id,
                Message::Prepare {
                    ballot: leader.ballot,
                    from_slot: leader.from_slot,
                },
            );
        }
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
        if self.voters_now().is_quorum(&[self.config.id]) {
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
            let mut heard: Vec<NodeId> = leader
                .last_heard
                .iter()
                .filter(|&(_, &t)| now < t + r.config.election_ticks)
                .map(|(&id, _)| id)
                .collect();
            heard.push(r.config.id);
            // A leader that no longer votes (a change removed it, or made
            // it a learner) hands over to the voters too.
            if !r.voters_now().is_quorum(&heard) || !r.votes_now() {
                leader.step_down = true;
                return;
            }
            if let Some((to, since)) = leader.transfer {
                let caught_up = leader.peer_commit.get(&to).is_some_and(|&c| c >= r.commit)
                    && leader.inflight.is_empty()
                    && leader.unsent.is_empty();
                if caught_up {
                    // Releasing the followers' lease and leaving go
                    // together: from here this node reads under no lease.
                    r.broadcast(Message::TransferLeadership {
                        ballot: leader.ballot,
                        to,
                    });
                    leader.transfer = None;
                    leader.step_down = true;
                    return;
                }
                if now >= since + r.config.election_ticks {
                    leader.transfer = None; // it did not catch up in time
                }
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
            // live peer whose acks say it knows the most, else each in turn
            // (a peer that went quiet may be gone for good).
            if r.commit < r.known_commit {
                let live = |peer: &NodeId| {
                    leader
                        .last_heard
                        .get(peer)
                        .is_some_and(|&t| now < t + r.config.election_ticks)
                };
                let ahead = leader
                    .peer_commit
                    .iter()
                    .filter(|&(peer, &commit)| commit > r.commit && live(peer))
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
            if let Some(round) = r.confirmed_round(leader, r.voters_now()) {
                r.confirm_round(leader, round);
            }
        });
    }

    /// The highest heartbeat round that a quorum of `membership` (this
    /// replica included) acknowledged.
    fn confirmed_round(&self, leader: &Leader, membership: &Membership) -> Option<u64> {
        let me = self.config.id;
        let mut rounds: Vec<u64> = leader.acked_seq.values().copied().collect();
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        rounds.dedup();
        rounds.into_iter().find(|&round| {
            let acked = leader
                .acked_seq
                .iter()
                .filter(|&(_, &seq)| seq >= round)
                .map(|(&id, _)| id)
                .chain(std::iter::once(me));
            membership.is_quorum(&acked.collect::<Vec<_>>())
        })
    }

    /// A quorum acknowledged heartbeat round `round`: we were leader when it
    /// was sent. Extend the lease and answer the reads it covers.
    fn confirm_round(&mut self, leader: &mut Leader, round: u64) {
        let governing = self.configs.governing_from(self.commit + 1);
        if self.config.lease_ticks > 0
            && let Some(&sent) = leader.heartbeat_sent.get(&round)
        {
            let until = sent + self.config.leader_lease_ticks();
            if leader.lease_from != governing {
                // A lease granted by the voters of another membership
                // says nothing about these.
                leader.lease_until = 0;
                leader.lease_from = governing;
            }
            leader.lease_until = leader.lease_until.max(until);
        }
        // A read is confirmed by a quorum of the voters of the slot after
        // its index, whatever membership governs now.
        let mut done = Vec::new();
        let mut waiting = Vec::new();
        for read in std::mem::take(&mut leader.reads) {
            let confirmed = read.seq <= round
                && (self.configs.governing_from(read.index + 1) == governing
                    || self
                        .confirmed_round(leader, self.configs.at(read.index + 1))
                        .is_some_and(|r| r >= read.seq));
            if confirmed {
                done.push(read);
            } else {
                waiting.push(read);
            }
        }
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
            if !r.serving(leader) {
                // Until our no-op is chosen we do not know the commit point.
                leader.early_reads.push((ctx, origin));
            } else {
                r.read_now_or_confirm(leader, ctx, origin);
            }
        });
    }

    fn read_now_or_confirm(&mut self, leader: &mut Leader, ctx: u64, origin: Option<NodeId>) {
        let governing = self.configs.governing_from(self.commit + 1);
        if self.now < leader.lease_until && leader.lease_from == governing {
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
