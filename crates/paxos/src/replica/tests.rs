//! Scenario tests of the replica on a tiny in-memory cluster that carries out
//! each `Ready` exactly as the contract says, and checks it did.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::*;

struct Node {
    replica: Replica,
    /// What the host has made durable, rebuilt from records.
    durable: Durable,
    applied: Vec<(Slot, Value)>,
    reads: Vec<ReadState>,
    failed_reads: Vec<u64>,
    /// The last snapshot request the replica made.
    snapshot_needed: Option<(NodeId, Slot)>,
    up: bool,
    /// The memberships a joining node started from (founders have none).
    base: Option<Configs>,
}

impl Node {
    /// A node that is up with an empty disk, started from `base` (a
    /// joiner) or from its founding membership.
    fn fresh(replica: Replica, base: Option<Configs>) -> Node {
        Node {
            replica,
            durable: Durable::default(),
            applied: Vec::new(),
            reads: Vec::new(),
            failed_reads: Vec::new(),
            snapshot_needed: None,
            up: true,
            base,
        }
    }
}

struct Cluster {
    founders: u64,
    tweak: fn(&mut Config),
    nodes: BTreeMap<NodeId, Node>,
    queue: VecDeque<(NodeId, NodeId, Message)>,
    /// Links that drop everything, in one direction.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Every message kind sent, and whether it waited for the records
    /// (came in `persisted_messages`).
    kinds: BTreeSet<(&'static str, bool)>,
}

fn config(id: NodeId, n: u64) -> Config {
    let mut c = Config::new(id, (1..=n).collect());
    c.seed = id * 7919;
    c
}

impl Cluster {
    fn new(n: u64) -> Cluster {
        Cluster::with(n, |_| {})
    }

    /// A cluster whose configs are adjusted by `tweak`.
    fn with(n: u64, tweak: fn(&mut Config)) -> Cluster {
        let nodes = (1..=n)
            .map(|id| {
                let mut config = config(id, n);
                tweak(&mut config);
                let replica = Replica::new(config).expect("valid config");
                (id, Node::fresh(replica, None))
            })
            .collect();
        Cluster {
            founders: n,
            tweak,
            nodes,
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            kinds: BTreeSet::new(),
        }
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        self.nodes.get_mut(&id).expect("node exists")
    }

    /// Carries out a node's Ready in contract order, checking it.
    fn process(&mut self, id: NodeId) {
        // The records are written synchronously: reporting them durable may
        // choose slots (the leader's own votes), which the next Ready holds.
        loop {
            let node = self.nodes.get_mut(&id).expect("node exists");
            let ready = node.replica.take_ready();
            if ready.is_empty() {
                return;
            }
            self.carry_out(id, ready);
        }
    }

    fn carry_out(&mut self, id: NodeId, ready: Ready) {
        let node = self.nodes.get_mut(&id).expect("node exists");
        for record in &ready.records {
            node.durable.apply(record);
        }
        node.replica.persisted(ready.records_end);
        for (_, m) in &ready.messages {
            self.kinds.insert((m.kind(), false));
        }
        for (_, m) in &ready.persisted_messages {
            self.kinds.insert((m.kind(), true));
        }
        let node = self.nodes.get_mut(&id).expect("node exists");
        for (to, message) in ready.messages.iter().chain(&ready.persisted_messages) {
            check_covered(&node.durable, message);
            if node.durable.rejoining {
                assert!(
                    !matches!(
                        message,
                        Message::Promise { .. }
                            | Message::Accepted { .. }
                            | Message::Prepare { .. }
                            | Message::PreVoteReply { granted: true, .. }
                    ),
                    "node {id} votes while rejoining: {message}"
                );
            }
            self.queue.push_back((id, *to, message.clone()));
        }
        let node = self.node(id);
        for (slot, value) in ready.committed {
            let expected = node
                .applied
                .last()
                .map_or(node.durable.log_start, |(s, _)| *s)
                + 1;
            assert_eq!(slot, expected, "node {id} applies out of order");
            node.applied.push((slot, value));
        }
        node.reads.extend(ready.reads);
        node.failed_reads.extend(ready.failed_reads);
        if ready.snapshot_needed.is_some() {
            node.snapshot_needed = ready.snapshot_needed;
        }
    }

    fn deliver_all(&mut self) {
        let mut budget = 100_000;
        while let Some((from, to, message)) = self.queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "message storm");
            if self.cut.contains(&(from, to)) || !self.nodes[&to].up || !self.nodes[&from].up {
                continue;
            }
            self.node(to).replica.step(from, message);
            self.process(to);
        }
    }

    fn ticks(&mut self, n: u64) {
        for _ in 0..n {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                if self.nodes[&id].up {
                    self.node(id).replica.tick();
                    self.process(id);
                }
            }
            self.deliver_all();
            self.check_agreement();
        }
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.up && n.replica.status().role == RoleName::Leader)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Ticks until exactly one serving leader exists; returns it.
    fn elect(&mut self) -> NodeId {
        for _ in 0..500 {
            self.ticks(1);
            let leaders = self.leaders();
            if leaders.len() == 1 && self.nodes[&leaders[0]].replica.status().serving {
                return leaders[0];
            }
        }
        panic!("no leader after 500 ticks");
    }

    fn propose(&mut self, at: NodeId, command: &str) {
        self.node(at)
            .replica
            .propose(Bytes::from(command.to_owned()))
            .expect("proposal taken");
        self.process(at);
        self.deliver_all();
    }

    fn commands(&self, id: NodeId) -> Vec<String> {
        self.nodes[&id]
            .applied
            .iter()
            .flat_map(|(_, v)| v.commands().to_vec())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }

    /// Every pair of replicas applied the same value in every slot both applied.
    fn check_agreement(&self) {
        let mut chosen: BTreeMap<Slot, &Value> = BTreeMap::new();
        for (id, node) in &self.nodes {
            for (slot, value) in &node.applied {
                if let Some(other) = chosen.insert(*slot, value) {
                    assert_eq!(other, value, "node {id} disagrees at slot {slot}");
                }
            }
        }
    }

    fn crash(&mut self, id: NodeId) {
        self.node(id).up = false;
    }

    /// Restarts `id` with its disk wiped, rejoining as a learner.
    fn restart_wiped(&mut self, id: NodeId) {
        let mut config = config(id, self.founders);
        (self.tweak)(&mut config);
        let node = self.node(id);
        node.replica = Replica::rejoin(config).expect("valid config");
        node.durable = Durable::default();
        node.applied.clear();
        node.up = true;
        self.process(id);
    }

    /// Restarts `id` from what it made durable; its state machine restarts
    /// empty, so it re-applies the log from the start.
    fn restart(&mut self, id: NodeId) {
        let mut config = config(id, self.founders);
        (self.tweak)(&mut config);
        let node = self.node(id);
        let base = node.base.clone();
        node.replica =
            Replica::restore(config, node.durable.clone(), Slot::ZERO, base).expect("valid config");
        node.applied.clear();
        node.up = true;
    }
}

/// The persist-before-send rule: what a message reports is already durable.
fn check_covered(durable: &Durable, message: &Message) {
    match message {
        Message::Promise { ballot, .. } => {
            assert!(
                durable.promised >= *ballot,
                "promise of {ballot} not durable"
            );
        }
        Message::Accepted { ballot, slots } => {
            for slot in slots {
                let ok = *slot <= durable.commit
                    || durable.accepted.get(slot).is_some_and(|(b, _)| b == ballot);
                assert!(ok, "acceptance of slot {slot} in {ballot} not durable");
            }
        }
        Message::HeartbeatAck { ballot, .. } => assert!(durable.promised >= *ballot),
        _ => {}
    }
}

#[test]
fn a_single_replica_elects_itself_and_commits() {
    let mut c = Cluster::new(1);
    let leader = c.elect();
    assert_eq!(leader, 1);
    c.propose(1, "x");
    c.ticks(1);
    assert_eq!(c.commands(1), vec!["x"]);
}

#[test]
fn three_replicas_elect_one_leader_and_replicate() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    for i in 0..10 {
        c.propose(leader, &format!("cmd{i}"));
    }
    c.ticks(5);
    let expected: Vec<String> = (0..10).map(|i| format!("cmd{i}")).collect();
    for id in 1..=3 {
        assert_eq!(c.commands(id), expected, "node {id}");
    }
}

#[test]
fn a_follower_forwards_proposals_to_the_leader() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    c.ticks(3); // the follower hears of the leader
    c.propose(follower, "forwarded");
    c.ticks(5);
    for id in 1..=3 {
        assert_eq!(c.commands(id), vec!["forwarded"], "node {id}");
    }
}

#[test]
fn batches_many_commands_per_slot_when_the_window_is_full() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    for i in 0..1000 {
        c.node(leader)
            .replica
            .propose(Bytes::from(format!("c{i}")))
            .expect("taken");
    }
    c.process(leader);
    c.deliver_all();
    c.ticks(5);
    assert_eq!(c.commands(leader).len(), 1000);
    let slots = c.nodes[&leader].applied.len();
    assert!(slots < 20, "1000 commands took {slots} slots");
}

#[test]
fn a_new_leader_keeps_every_committed_entry() {
    let mut c = Cluster::new(3);
    let first = c.elect();
    for i in 0..5 {
        c.propose(first, &format!("a{i}"));
    }
    c.ticks(3);
    c.crash(first);
    let second = c.elect();
    assert_ne!(first, second);
    c.propose(second, "b");
    c.ticks(5);
    let survivors: Vec<NodeId> = (1..=3).filter(|&id| id != first).collect();
    for id in survivors {
        let cmds = c.commands(id);
        assert_eq!(&cmds[..5], &["a0", "a1", "a2", "a3", "a4"], "node {id}");
        assert_eq!(cmds.last().map(String::as_str), Some("b"));
    }
}

#[test]
fn a_new_leader_reproposes_values_accepted_but_not_known_chosen() {
    let mut c = Cluster::new(3);
    let first = c.elect();
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != first).collect();
    // The leader's accept reaches one follower, whose answer is lost: the
    // value is accepted by a majority (leader + follower) but nobody knows.
    c.cut.insert((first, others[1]));
    c.cut.insert((others[0], first));
    c.propose(first, "maybe-chosen");
    c.crash(first);
    c.cut.clear();
    let _second = c.elect();
    c.ticks(5);
    for id in &others {
        assert_eq!(c.commands(*id), vec!["maybe-chosen"], "node {id}");
    }
}

#[test]
fn a_partitioned_replica_does_not_depose_a_healthy_leader() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let loner = (1..=3).find(|&id| id != leader).expect("a follower");
    let ballot_before = c.nodes[&leader].replica.status().promised;
    for other in 1..=3 {
        if other != loner {
            c.cut.insert((loner, other));
            c.cut.insert((other, loner));
        }
    }
    c.ticks(200);
    // Cut off, it cannot win a pre-vote, so it never raised its ballot.
    assert_eq!(c.nodes[&loner].replica.status().promised, ballot_before);
    c.cut.clear();
    c.ticks(20);
    assert_eq!(c.leaders(), vec![leader]);
    assert_eq!(c.nodes[&leader].replica.status().promised, ballot_before);
}

#[test]
fn a_replica_that_reaches_only_some_peers_lets_the_cluster_progress() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    // The leader loses its link to one follower in both directions; the two
    // followers still talk to each other.
    c.cut.insert((leader, others[0]));
    c.cut.insert((others[0], leader));
    c.ticks(100);
    let now_leading = c.leaders();
    assert_eq!(now_leading.len(), 1);
    let l = now_leading[0];
    c.propose(l, "still-live");
    c.ticks(10);
    assert!(c.commands(l).contains(&"still-live".to_owned()));
}

#[test]
fn a_lagging_follower_catches_up() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let lagger = (1..=3).find(|&id| id != leader).expect("a follower");
    c.crash(lagger);
    for i in 0..50 {
        c.propose(leader, &format!("x{i}"));
    }
    c.ticks(3);
    c.restart(lagger);
    c.ticks(30);
    assert_eq!(c.commands(lagger).len(), 50);
}

#[test]
fn restart_from_durable_state_reapplies_the_same_log() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    for i in 0..20 {
        c.propose(leader, &format!("y{i}"));
    }
    c.ticks(5);
    let before = c.commands(leader);
    for id in 1..=3 {
        c.crash(id);
    }
    for id in 1..=3 {
        c.restart(id);
    }
    let leader = c.elect();
    c.propose(leader, "after");
    c.ticks(10);
    for id in 1..=3 {
        let cmds = c.commands(id);
        assert_eq!(&cmds[..20], &before[..], "node {id}");
        assert_eq!(cmds.last().map(String::as_str), Some("after"));
    }
}

#[test]
fn reads_are_confirmed_on_the_leader_and_on_followers() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.propose(leader, "w");
    c.ticks(3);
    c.node(leader).replica.read_index(7).expect("leader reads");
    c.process(leader);
    c.deliver_all();
    c.ticks(2);
    let read = c.nodes[&leader].reads.iter().find(|r| r.ctx == 7).copied();
    let commit = c.nodes[&leader].replica.status().commit;
    assert!(read.is_some_and(|r| r.index <= commit && r.index >= Slot(2)));

    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    c.node(follower)
        .replica
        .read_index(8)
        .expect("follower reads");
    c.process(follower);
    c.deliver_all();
    c.ticks(3);
    let read = c.nodes[&follower]
        .reads
        .iter()
        .find(|r| r.ctx == 8)
        .copied();
    let applied = c.nodes[&follower].applied.len() as u64;
    assert!(read.is_some_and(|r| r.index <= Slot(applied)), "{read:?}");
}

#[test]
fn without_a_quorum_reads_are_not_confirmed() {
    let mut c = Cluster::with(3, |config| config.lease_ticks = 0); // read-index only
    let leader = c.elect();
    for id in 1..=3 {
        if id != leader {
            c.crash(id);
        }
    }
    c.node(leader).replica.read_index(9).expect("taken");
    c.process(leader);
    c.ticks(100);
    assert!(c.nodes[&leader].reads.iter().all(|r| r.ctx != 9));
    // It stepped down and says so.
    assert!(c.nodes[&leader].failed_reads.contains(&9));
    assert!(c.leaders().is_empty());
}

#[test]
fn under_a_lease_the_leader_answers_reads_at_once() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.ticks(4); // a heartbeat round confirms the lease
    c.node(leader).replica.read_index(5).expect("taken");
    c.process(leader);
    let read = c.nodes[&leader].reads.iter().find(|r| r.ctx == 5).copied();
    assert!(read.is_some(), "no read without any message round");
    assert!(c.queue.iter().all(|(_, _, m)| m.kind() != "Heartbeat"));
}

#[test]
fn the_leader_lease_accounts_for_drift() {
    let mut c = Config::new(1, vec![1, 2, 3]);
    c.lease_ticks = 16;
    c.drift_ppm = 0;
    assert_eq!(c.leader_lease_ticks(), 14);
    c.drift_ppm = 100_000;
    // (16 - 1) * 0.9 / 1.1 = 12.27, minus a tick.
    assert_eq!(c.leader_lease_ticks(), 11);
    c.lease_ticks = 0;
    assert_eq!(c.leader_lease_ticks(), 0);
}

#[test]
fn configs_that_cannot_work_are_refused() {
    let mut c = Config::new(4, vec![1, 2, 3]);
    // Not among the founders: a node that waits to be added, and never runs.
    let mut outsider = Replica::new(c.clone()).expect("valid");
    for _ in 0..200 {
        outsider.tick();
    }
    assert_eq!(outsider.status().role, RoleName::Learner);
    assert!(outsider.take_ready().messages.is_empty());
    c.alpha = 0;
    assert!(c.validate().is_err());
    c.alpha = ALPHA_MAX + 1;
    assert!(c.validate().is_err());
    c.alpha = 4;
    c.members = vec![1, 1, 4];
    assert_eq!(c.validate(), Err(ConfigError::DuplicateMember));
    c.members = vec![4];
    c.lease_ticks = c.election_ticks;
    assert!(c.validate().is_err());
}

#[test]
fn records_replayed_rebuild_the_same_durable_state() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    for i in 0..30 {
        c.propose(leader, &format!("z{i}"));
    }
    c.ticks(5);
    for id in 1..=3 {
        let node = &c.nodes[&id];
        let status = node.replica.status();
        assert_eq!(node.durable.commit, status.commit, "node {id}");
        assert_eq!(node.durable.promised, status.promised, "node {id}");
        for slot in Slot::range(Slot(1), status.commit) {
            assert_eq!(node.durable.chosen_value(slot), node.replica.chosen(slot));
        }
    }
}

#[test]
fn a_follower_behind_a_compacted_log_installs_a_snapshot_then_catches_up() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let lagger = (1..=3).find(|&id| id != leader).expect("a follower");
    c.crash(lagger);
    for i in 0..30 {
        c.propose(leader, &format!("s{i}"));
    }
    c.ticks(3);
    // Everyone up compacts what it applied into a (host-side) snapshot.
    for id in (1..=3).filter(|&id| id != lagger) {
        let applied = c.nodes[&id].replica.status().applied;
        c.node(id).replica.compact(applied);
        c.process(id);
        assert_eq!(c.nodes[&id].durable.log_start, applied);
    }
    let snapshot_slot = c.nodes[&leader].replica.status().log_start;
    assert!(snapshot_slot >= Slot(30));
    c.restart(lagger);
    for _ in 0..50 {
        c.ticks(1);
        if c.nodes[&lagger].snapshot_needed.is_some() {
            break;
        }
    }
    let (from, slot) = c.nodes[&lagger]
        .snapshot_needed
        .expect("the lagging follower is told to fetch a snapshot");
    assert!(slot >= snapshot_slot);
    // The host transfers the snapshot out of band: here, the entries the
    // sender applied up to `slot`.
    let entries: Vec<(Slot, Value)> = c.nodes[&from]
        .applied
        .iter()
        .filter(|(s, _)| *s <= slot)
        .cloned()
        .collect();
    let configs = c.nodes[&from].replica.snapshot_configs(slot);
    let node = c.node(lagger);
    node.applied = entries;
    node.replica.install_snapshot(slot, configs);
    c.process(lagger);
    assert_eq!(c.nodes[&lagger].durable.log_start, slot);
    c.propose(leader, "after-snapshot");
    c.ticks(10);
    let cmds = c.commands(lagger);
    assert_eq!(cmds.len(), 31, "{cmds:?}");
    assert_eq!(cmds.last().map(String::as_str), Some("after-snapshot"));
}

#[test]
fn a_replica_that_lost_its_disk_rejoins_as_a_learner_then_votes_again() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let old_ballot = c.nodes[&leader].replica.status().promised;
    for i in 0..10 {
        c.propose(leader, &format!("a{i}"));
    }
    c.ticks(2);
    let wiped = (1..=3).find(|&id| id != leader).expect("a follower");
    c.crash(wiped);
    c.restart_wiped(wiped);
    assert!(c.nodes[&wiped].durable.rejoining, "the rejoin is durable");
    assert_eq!(c.nodes[&wiped].replica.status().role, RoleName::Learner);
    for _ in 0..200 {
        c.ticks(1);
        if !c.nodes[&wiped].replica.is_rejoining() {
            break;
        }
    }
    assert!(
        !c.nodes[&wiped].replica.is_rejoining(),
        "the rejoin completes"
    );
    assert!(!c.nodes[&wiped].durable.rejoining);
    // The leader it resumed under runs a ballot above any the lost state
    // can have voted in: the old leader had to run phase 1 again.
    let now_leading = c.elect();
    assert!(c.nodes[&now_leading].replica.status().promised > old_ballot);
    assert!(c.nodes[&wiped].durable.promised > old_ballot);
    let cmds = c.commands(wiped);
    assert_eq!(cmds.len(), 10, "it re-learned the log: {cmds:?}");
    // It votes again: with the third replica down, it makes the quorum.
    let third = (1..=3)
        .find(|&id| id != now_leading && id != wiped)
        .expect("a third replica");
    c.crash(third);
    c.propose(now_leading, "with-the-rejoined");
    c.ticks(5);
    let cmds = c.commands(wiped);
    assert_eq!(cmds.last().map(String::as_str), Some("with-the-rejoined"));
}

#[test]
fn a_replica_restored_from_an_old_copy_forgets_its_votes_and_rejoins() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.propose(leader, "a");
    c.ticks(2);
    let restored = (1..=3).find(|&id| id != leader).expect("a follower");
    let copy = c.nodes[&restored].durable.clone();
    for i in 0..5 {
        c.propose(leader, &format!("b{i}"));
    }
    c.ticks(2);
    c.crash(restored);
    // The operator puts the old copy back and starts the node with
    // `--rejoin`: the host appends the rejoin mark to the copy's log.
    let mut disk = copy;
    let mut stale = disk.clone();
    stale.accepted.insert(
        disk.commit + 1,
        (
            disk.promised,
            Value::Batch(vec![Bytes::from_static(b"vote")]),
        ),
    );
    disk = stale;
    disk.apply(&Record::Rejoin);
    assert!(disk.rejoining);
    assert!(disk.accepted.is_empty(), "every vote is forgotten");
    assert!(disk.chosen_value(disk.commit).is_some() || disk.commit == Slot::ZERO);
    c.node(restored).durable = disk;
    c.restart(restored);
    assert_eq!(c.nodes[&restored].replica.status().role, RoleName::Learner);
    for _ in 0..300 {
        c.ticks(1);
        if !c.nodes[&restored].replica.is_rejoining() {
            break;
        }
    }
    assert!(
        !c.nodes[&restored].replica.is_rejoining(),
        "the rejoin completes"
    );
    let cmds = c.commands(restored);
    assert_eq!(cmds.len(), 6, "it learned what the copy missed: {cmds:?}");
}

#[test]
fn a_rejoining_replica_waits_for_every_peer_and_survives_a_restart() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.propose(leader, "x");
    c.ticks(2);
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    let (wiped, down) = (others[0], others[1]);
    c.crash(down);
    c.crash(wiped);
    c.restart_wiped(wiped);
    c.ticks(100);
    assert!(
        c.nodes[&wiped].replica.is_rejoining(),
        "without an answer from every peer it must not vote"
    );
    // A crash while rejoining keeps it rejoining.
    c.crash(wiped);
    c.restart(wiped);
    assert!(c.nodes[&wiped].replica.is_rejoining());
    c.restart(down);
    for _ in 0..300 {
        c.ticks(1);
        if !c.nodes[&wiped].replica.is_rejoining() {
            break;
        }
    }
    assert!(!c.nodes[&wiped].replica.is_rejoining());
    assert_eq!(c.commands(wiped), vec!["x".to_owned()]);
}

#[test]
fn a_snapshot_ahead_of_the_durable_log_is_trusted_on_restart() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    for i in 0..5 {
        c.propose(leader, &format!("s{i}"));
    }
    c.ticks(2);
    let applied = c.nodes[&leader].replica.status().applied;
    // The host saved a snapshot at `applied` and crashed before the log
    // recorded the compaction.
    let mut config = config(leader, 3);
    config.seed += 1;
    let durable = Durable::default();
    let replica = Replica::restore(config, durable, applied, None).expect("valid config");
    let status = replica.status();
    assert_eq!(status.log_start, applied);
    assert_eq!(status.commit, applied);
    assert_eq!(status.applied, applied);
}

#[test]
fn the_leader_counts_its_own_acceptance_only_once_it_is_durable() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    c.ticks(2);
    let commit = c.nodes[&leader].replica.status().commit;
    c.node(leader)
        .replica
        .propose(Bytes::from_static(b"x"))
        .expect("taken");
    // The leader's disk is slow: its accepts leave before its own record is
    // durable (they may), and one follower accepts.
    let ready = c.node(leader).replica.take_ready();
    assert!(!ready.records.is_empty());
    let accepts: Vec<(NodeId, Message)> = ready
        .messages
        .iter()
        .filter(|(_, m)| matches!(m, Message::Accept { entries, .. } if !entries.is_empty()))
        .cloned()
        .collect();
    assert!(
        !ready
            .persisted_messages
            .iter()
            .any(|(_, m)| matches!(m, Message::Accept { .. })),
        "accepts never wait for the leader's disk"
    );
    let (_, accept) = accepts
        .into_iter()
        .find(|(to, _)| *to == follower)
        .expect("an accept for the follower");
    c.node(follower).replica.step(leader, accept);
    let reply = c.node(follower).replica.take_ready();
    assert!(
        !reply
            .messages
            .iter()
            .any(|(_, m)| matches!(m, Message::Accepted { .. })),
        "an acceptance leaves only once durable"
    );
    let accepted = reply
        .persisted_messages
        .into_iter()
        .find(|(_, m)| matches!(m, Message::Accepted { .. }))
        .expect("the follower accepts");
    c.node(leader).replica.step(follower, accepted.1);
    // One durable vote of the three is no quorum, whatever the leader holds
    // in memory.
    assert_eq!(c.nodes[&leader].replica.status().commit, commit);
    assert!(c.node(leader).replica.take_ready().committed.is_empty());
    // Its own record lands: now a quorum has it durably.
    c.node(leader).replica.persisted(ready.records_end);
    assert_eq!(c.nodes[&leader].replica.status().commit, commit + 1);
    let next = c.node(leader).replica.take_ready();
    assert_eq!(next.committed.len(), 1);
}

#[test]
fn a_report_of_records_never_handed_out_is_ignored() {
    let mut c = Cluster::new(1);
    let leader = c.elect();
    c.node(leader)
        .replica
        .propose(Bytes::from_static(b"x"))
        .expect("taken");
    // Before the Ready is taken, nothing it holds can be durable.
    c.node(leader).replica.persisted(RecordNo(u64::MAX));
    let ready = c.node(leader).replica.take_ready();
    assert!(
        ready.committed.is_empty(),
        "chosen before its record was written"
    );
    c.node(leader).replica.persisted(ready.records_end);
    assert_eq!(c.node(leader).replica.take_ready().committed.len(), 1);
}

/// Promises and acceptances (and a ballot claimed by a Prepare) wait for the
/// records that make them true; the leader's accepts, heartbeats, commit
/// points and pre-votes claim nothing durable and leave at once.
#[test]
fn messages_that_report_durable_state_wait_for_it_and_no_others_do() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    c.propose(leader, "a");
    c.ticks(5);
    c.node(leader)
        .replica
        .read_index(1)
        .expect("a leader reads");
    c.process(leader);
    c.deliver_all();
    for kind in ["Prepare", "Promise", "Accepted", "HeartbeatAck"] {
        assert!(
            c.kinds.contains(&(kind, true)),
            "{kind} waits: {:?}",
            c.kinds
        );
        assert!(
            !c.kinds.contains(&(kind, false)),
            "{kind} never leaves at once"
        );
    }
    for kind in ["PreVote", "PreVoteReply", "Accept", "Heartbeat"] {
        assert!(
            c.kinds.contains(&(kind, false)),
            "{kind} leaves: {:?}",
            c.kinds
        );
        assert!(!c.kinds.contains(&(kind, true)), "{kind} never waits");
    }
}

/// A leader behind the commit point asks the peer that knows the most, not
/// whichever peer the clock points at (with heartbeats every other tick, a
/// choice by tick always picked the same peer, which might know nothing).
#[test]
fn a_leader_behind_asks_the_peer_that_knows_more() {
    for ahead_of_the_two in [0, 1] {
        let mut c = Cluster::new(5);
        let leader = c.elect();
        let status = c.nodes[&leader].replica.status();
        let peers: Vec<NodeId> = (1..=5).filter(|&id| id != leader).collect();
        let ahead = peers[ahead_of_the_two];
        // The peer says it knows five more slots are chosen.
        c.node(leader).replica.step(
            ahead,
            Message::HeartbeatAck {
                ballot: status.promised,
                seq: 0,
                commit: status.commit + 5,
            },
        );
        let mut asked = BTreeSet::new();
        for _ in 0..20 {
            c.node(leader).replica.tick();
            let ready = c.node(leader).replica.take_ready();
            for (to, m) in ready.messages {
                if let Message::CatchUp { from_slot } = m {
                    assert_eq!(from_slot, status.commit + 1);
                    asked.insert(to);
                }
            }
        }
        assert_eq!(
            asked,
            BTreeSet::from([ahead]),
            "only the peer that knows more is asked"
        );
    }
}

// ----- membership ------------------------------------------------------------

impl Cluster {
    /// Starts node `id` with an empty disk and the founding membership (as
    /// a snapshot of slot 0 would carry it), not yet a member.
    fn start_joiner(&mut self, id: NodeId) {
        let mut config = Config::new(id, Vec::new());
        config.seed = id * 7919;
        (self.tweak)(&mut config);
        let base = self.nodes[&1].replica.snapshot_configs(Slot::ZERO);
        let replica = Replica::restore(config, Durable::default(), Slot::ZERO, Some(base.clone()))
            .expect("valid config");
        self.nodes.insert(id, Node::fresh(replica, Some(base)));
    }

    fn change(&mut self, leader: NodeId, change: Change) -> Result<(), ChangeError> {
        let result = self.node(leader).replica.propose_change(change);
        self.process(leader);
        self.deliver_all();
        result
    }

    /// Ticks until the membership in force at `id`'s first open slot
    /// satisfies `done`.
    fn until_in_force(&mut self, id: NodeId, what: &str, done: impl Fn(&Membership) -> bool) {
        for _ in 0..500 {
            self.ticks(1);
            let r = &self.nodes[&id].replica;
            if done(r.configs().at(r.status().commit + 1)) {
                return;
            }
        }
        panic!("{what}: not in force after 500 ticks");
    }
}

fn small_alpha(c: &mut Config) {
    c.alpha = 4;
    c.inflight_slots_max = 8;
}

/// Three replicas, one follower removed and its removal in force; returns
/// the cluster, the leader and the removed follower.
fn a_follower_removed() -> (Cluster, NodeId, NodeId) {
    let mut c = Cluster::with(3, small_alpha);
    let leader = c.elect();
    let gone = (1..=3).find(|&id| id != leader).expect("a follower");
    c.change(leader, Change::Remove { id: gone })
        .expect("a removal is taken");
    c.until_in_force(leader, "removal", |m| !m.is_member(gone));
    (c, leader, gone)
}

fn add(id: NodeId, promote: bool) -> Change {
    Change::Add {
        id,
        info: Bytes::from(format!("addr-{id}")),
        promote,
    }
}

#[test]
fn a_learner_catches_up_is_promoted_and_then_counts() {
    let mut c = Cluster::with(3, small_alpha);
    let leader = c.elect();
    for i in 0..6 {
        c.propose(leader, &format!("before{i}"));
    }
    c.start_joiner(4);
    c.change(leader, add(4, true)).expect("an add is taken");
    c.until_in_force(leader, "node 4 a voter", |m| m.is_voter(4));
    let four = c.nodes[&4].replica.configs().latest().clone();
    assert!(four.is_voter(4), "the new member learned its own promotion");
    assert_eq!(four.members[&4].info, Bytes::from("addr-4"));
    // Four voters: a quorum is three. With two founders down nothing is
    // chosen; with one down, the new voter makes the quorum.
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    c.crash(others[0]);
    c.propose(leader, "with-four");
    c.ticks(20);
    assert_eq!(c.commands(4).last().map(String::as_str), Some("with-four"));
    assert_eq!(c.commands(4)[..6], c.commands(leader)[..6]);
    c.crash(others[1]);
    c.propose(leader, "two-down");
    c.ticks(20);
    assert_ne!(
        c.commands(leader).last().map(String::as_str),
        Some("two-down"),
        "two of four voters are not a quorum"
    );
}

#[test]
fn a_learner_added_as_such_stays_one_and_never_counts() {
    let mut c = Cluster::with(3, small_alpha);
    let leader = c.elect();
    c.start_joiner(4);
    c.change(leader, add(4, false)).expect("an add is taken");
    c.until_in_force(leader, "node 4 a learner", |m| m.is_member(4));
    c.propose(leader, "x");
    c.ticks(40);
    let r = &c.nodes[&4].replica;
    assert_eq!(r.status().role, RoleName::Learner);
    assert!(!r.configs().latest().is_voter(4), "never promoted");
    assert_eq!(c.commands(4), vec!["x"], "a learner receives the log");
    // Its acceptances never make a quorum: with two founders down, nothing
    // is chosen although the leader and the learner accept.
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    c.crash(others[0]);
    c.crash(others[1]);
    c.propose(leader, "not-chosen");
    c.ticks(5);
    assert_eq!(c.commands(4), vec!["x"]);
}

#[test]
fn a_removed_voter_no_longer_counts_and_knows_it() {
    let (mut c, leader, gone) = a_follower_removed();
    // Nobody sends to it any more; once it misses a leader it asks, is
    // told how far the log goes, and learns of its removal from it.
    c.ticks(100);
    assert_eq!(c.nodes[&gone].replica.status().role, RoleName::Removed);
    // Two voters left: both are needed, and the removed one is not.
    c.crash(gone);
    c.propose(leader, "after-removal");
    c.ticks(10);
    let stay = (1..=3).find(|&id| id != leader && id != gone).expect("one");
    assert_eq!(
        c.commands(stay).last().map(String::as_str),
        Some("after-removal")
    );
    // The removed id cannot come back.
    assert_eq!(
        c.change(leader, add(gone, true)),
        Err(ChangeError::Retired(gone))
    );
}

#[test]
fn a_removed_leader_hands_over_and_the_rest_go_on() {
    let mut c = Cluster::with(3, small_alpha);
    let leader = c.elect();
    c.propose(leader, "a");
    c.change(leader, Change::Remove { id: leader })
        .expect("a removal is taken");
    // Once its removal is chosen it hands its leadership over.
    let mut ticks = 0;
    while c.leaders().iter().all(|&id| id == leader) {
        c.ticks(1);
        ticks += 1;
        assert!(ticks < 30, "no hand-over");
    }
    let next = c.elect_other_than(leader);
    assert!(!c.nodes[&next].replica.configs().latest().is_member(leader));
    c.propose(next, "b");
    c.ticks(10);
    let stay: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    for id in stay {
        assert_eq!(c.commands(id), vec!["a", "b"], "node {id}");
    }
    assert_ne!(c.nodes[&leader].replica.status().role, RoleName::Leader);
}

#[test]
fn a_dead_member_is_replaced_by_a_new_one() {
    let mut c = Cluster::with(3, small_alpha);
    let leader = c.elect();
    let dead = (1..=3).find(|&id| id != leader).expect("a follower");
    c.crash(dead);
    c.propose(leader, "while-down");
    c.start_joiner(7);
    c.change(leader, add(7, true))
        .expect("adding a learner is safe");
    c.until_in_force(leader, "node 7 a voter", |m| m.is_voter(7));
    c.change(leader, Change::Remove { id: dead })
        .expect("removing the dead member leaves a healthy quorum");
    c.until_in_force(leader, "removal", |m| !m.is_member(dead));
    // Voters are the leader, the survivor and 7: any one may fail now.
    let survivor = (1..=3).find(|&id| id != leader && id != dead).expect("one");
    c.crash(survivor);
    c.propose(leader, "replaced");
    c.ticks(20);
    assert_eq!(
        c.commands(7).last().map(String::as_str),
        Some("replaced"),
        "{:?}",
        c.commands(7)
    );
}

#[test]
fn changes_that_would_leave_no_working_quorum_are_refused() {
    let mut c = Cluster::with(3, small_alpha);
    let leader = c.elect();
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != leader).collect();
    c.ticks(5); // heartbeats tell the leader who is caught up
    c.crash(others[0]);
    c.ticks(c.nodes[&leader].replica.config().election_ticks + 1);
    // Removing the healthy follower would leave the leader and a dead one.
    let refused = c.change(leader, Change::Remove { id: others[1] });
    match refused {
        Err(ChangeError::Refused(why)) => {
            assert!(why.contains(&others[0].to_string()), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Promoting a learner that has not caught up is refused too.
    c.start_joiner(9);
    c.crash(9);
    c.change(leader, add(9, false))
        .expect("a learner is always safe");
    c.until_in_force(leader, "node 9 a learner", |m| m.is_member(9));
    assert!(matches!(
        c.change(leader, Change::Promote { id: 9 }),
        Err(ChangeError::Refused(_))
    ));
    // Only the leader changes the membership, one change at a time.
    assert_eq!(
        c.change(others[1], Change::Remove { id: 9 }),
        Err(ChangeError::NotLeader)
    );
    let r = &mut c.node(leader).replica;
    r.propose_change(Change::Remove { id: 9 }).expect("taken");
    assert!(matches!(
        r.propose_change(Change::Remove { id: others[0] }),
        Err(ChangeError::InProgress(_))
    ));
    // Handed out and not yet chosen, it is still in progress.
    let _ = r.take_ready();
    assert!(matches!(
        r.propose_change(Change::Remove { id: others[0] }),
        Err(ChangeError::InProgress(_))
    ));
}

#[test]
fn memberships_survive_a_restart_from_the_log() {
    let (mut c, leader, gone) = a_follower_removed();
    let before = c.nodes[&leader].replica.configs().clone();
    c.crash(leader);
    c.restart(leader);
    c.process(leader);
    assert_eq!(c.nodes[&leader].replica.configs().latest(), before.latest());
    let from = before.latest_from();
    assert_eq!(c.nodes[&leader].replica.configs().latest_from(), from);
    assert!(
        c.nodes[&leader]
            .replica
            .configs()
            .latest()
            .retired
            .contains(&gone)
    );
}

impl Cluster {
    /// Ticks until a serving leader other than `old` exists.
    fn elect_other_than(&mut self, old: NodeId) -> NodeId {
        for _ in 0..1000 {
            self.ticks(1);
            let leaders: Vec<NodeId> = self
                .leaders()
                .into_iter()
                .filter(|&id| id != old && self.nodes[&id].replica.status().serving)
                .collect();
            if let [one] = leaders[..] {
                return one;
            }
        }
        panic!("no other leader after 1000 ticks");
    }
}

#[test]
fn leadership_is_handed_to_a_caught_up_voter_without_losing_a_command() {
    let mut c = Cluster::new(3);
    let leader = c.elect();
    let to = (1..=3).find(|&id| id != leader).expect("a follower");
    c.propose(leader, "before");
    c.ticks(3);
    c.node(leader)
        .replica
        .transfer_leadership(to)
        .expect("a voter may take over");
    // Commands that arrive while it hands over wait for the new leader.
    c.propose(leader, "during");
    let before = c.nodes[&to].replica.status().promised;
    let mut ticks = 0;
    while c.leaders() != vec![to] || !c.nodes[&to].replica.status().serving {
        c.ticks(1);
        ticks += 1;
        assert!(
            ticks < 20,
            "the hand-over took more than an election timeout"
        );
    }
    assert!(c.nodes[&to].replica.status().promised > before);
    c.propose(to, "after");
    c.ticks(5);
    for id in 1..=3 {
        assert_eq!(
            c.commands(id),
            vec!["before", "during", "after"],
            "node {id}"
        );
    }
    // Only a voter other than the leader can take over.
    assert!(matches!(
        c.node(to).replica.transfer_leadership(to),
        Err(ChangeError::Refused(_))
    ));
    assert_eq!(
        c.node(leader).replica.transfer_leadership(to),
        Err(ChangeError::NotLeader)
    );
}
