//! The host driven input by input, with assertions on the effects it asks
//! for. The disk here is whatever the test says it is.

use bytes::Bytes;
use kv::{Command, Reply, SetCondition, Store};
use paxos::replica::{Config as PaxosConfig, Durable, Message, Record, RecordNo, RoleName, Slot};
use paxos::{Ballot, NodeId};

use super::*;
use crate::files::{FileDone, FileError, FileOp};
use crate::transfer::{AckStatus, ChunkAck, Decline, SnapshotFrame, SnapshotId};

fn paxos(id: NodeId, members: u64) -> PaxosConfig {
    let mut c = PaxosConfig::new(id, (1..=members).collect());
    c.seed = id * 31;
    c
}

fn host(id: NodeId, members: u64, config: HostConfig) -> Host<u32> {
    Host::restore(
        config,
        paxos(id, members),
        Durable::default(),
        None,
        1,
        None,
    )
    .expect("valid")
}

/// A host that has waited out the lease it may have granted before it
/// started, so that it promises again.
fn promising(config: HostConfig) -> Host<u32> {
    let mut h = host(1, 3, config);
    for _ in 0..=paxos(1, 3).lease_ticks {
        h.tick();
    }
    settle(&mut h);
    h
}

fn set(key: &str, value: &str) -> Command {
    Command::Set {
        key: Bytes::from(key.to_owned()),
        value: Bytes::from(value.to_owned()),
        condition: SetCondition::None,
        get: false,
    }
}

fn get(key: &str) -> Command {
    Command::Get(Bytes::from(key.to_owned()))
}

/// Carries out effects with a disk that syncs at once; returns every reply.
fn settle(h: &mut Host<u32>) -> Vec<(u32, Result<Reply, NodeError>)> {
    let mut replies = Vec::new();
    for _ in 0..100 {
        let e = h.effects();
        if e.is_empty() {
            return replies;
        }
        replies.extend(e.replies);
        if !e.records.is_empty() {
            h.persisted(e.records_end);
        }
    }
    panic!("the host never settles");
}

/// A single-member cluster that leads and serves.
fn leader(config: HostConfig) -> Host<u32> {
    let mut h = host(1, 1, config);
    for _ in 0..200 {
        h.tick();
        settle(&mut h);
        let status = h.status();
        if status.role == RoleName::Leader && status.serving {
            return h;
        }
    }
    panic!("a lone member did not take the lead");
}

/// Node 2 asks this node to promise ballot (5, 2).
fn prepare_from_2(h: &mut Host<u32>) {
    h.step(
        2,
        Message::Prepare {
            ballot: Ballot::new(5, 2),
            from_slot: Slot(1),
        },
    );
}

fn sends_promise<T>(e: &Effects<T>) -> bool {
    e.send
        .iter()
        .any(|(_, m)| matches!(m, Message::Promise { .. }))
}

#[test]
fn a_promise_waits_for_its_record_and_leaves_once_it_is_durable() {
    let mut h = promising(HostConfig::default());
    prepare_from_2(&mut h);
    let e = h.effects();
    assert!(e.records.contains(&Record::Promise(Ballot::new(5, 2))));
    assert!(!sends_promise(&e), "the promise waits for its record");
    h.persisted(e.records_end);
    let e = h.effects();
    assert!(
        e.send
            .iter()
            .any(|(to, m)| *to == 2 && matches!(m, Message::Promise { .. })),
        "{:?}",
        e.send
    );
}

#[test]
fn a_report_of_records_never_handed_out_releases_nothing_early() {
    let mut h = promising(HostConfig::default());
    prepare_from_2(&mut h);
    // The shell claims far more than it was ever given, before the records
    // of this promise are even handed out.
    h.persisted(RecordNo(u64::MAX));
    let e = h.effects();
    assert!(e.records.contains(&Record::Promise(Ballot::new(5, 2))));
    assert!(
        !sends_promise(&e),
        "the promise still waits for its own record"
    );
}

#[test]
fn the_flaw_sends_before_durable_lets_a_promise_out_at_once() {
    let config = HostConfig {
        flaw: Some(Flaw::SendsBeforeDurable),
        ..HostConfig::default()
    };
    let mut h = promising(config);
    prepare_from_2(&mut h);
    let e = h.effects();
    assert!(e.records.contains(&Record::Promise(Ballot::new(5, 2))));
    assert!(sends_promise(&e));
}

#[test]
fn a_write_gets_the_stores_reply_once_applied_and_a_read_sees_it() {
    let mut h = leader(HostConfig::default());
    h.write(7, set("k", "v"), 1);
    let replies = settle(&mut h);
    assert_eq!(replies, vec![(1, Ok(Reply::ok()))]);
    h.read(get("k"), ReadMode::Linearizable, 2);
    let replies = settle(&mut h);
    assert_eq!(replies, vec![(2, Ok(Reply::Bulk(Bytes::from("v"))))]);
    h.read(get("k"), ReadMode::Stale, 3);
    assert_eq!(
        h.effects().replies,
        vec![(3, Ok(Reply::Bulk(Bytes::from("v"))))],
        "a stale read is answered from the store at once"
    );
    assert_eq!(h.stats().proposals, 1);
}

#[test]
fn a_write_waits_for_a_leader_then_is_refused_and_never_applied() {
    let config = HostConfig {
        leader_grace_ticks: 10,
        sweep_ticks: 1,
        ..HostConfig::default()
    };
    // A member of three, alone: no leader is ever known.
    let mut h = host(1, 3, config);
    h.write(7, set("k", "v"), 1);
    // The write arrived somewhere inside tick 0: ten more ticks may be a
    // little less than ten ticks of time, so the answer waits for the 11th.
    for _ in 0..10 {
        h.tick();
        assert!(settle(&mut h).is_empty(), "nothing said before the grace");
    }
    h.tick();
    let replies = settle(&mut h);
    assert_eq!(replies, vec![(1, Err(NodeError::ClusterDown))]);
    assert_eq!(h.stats().proposals, 0);
}

#[test]
fn a_failed_disk_answers_everyone_and_takes_nothing_more() {
    let mut h = leader(HostConfig::default());
    h.write(7, set("k", "v"), 1);
    // The records go to the disk, which fails before reporting them.
    let e = h.effects();
    assert!(!e.records.is_empty());
    h.disk_failed();
    let replies = h.effects().replies;
    assert_eq!(replies, vec![(1, Err(NodeError::Uncertain))]);
    h.write(7, set("k", "w"), 2);
    let replies = h.effects().replies;
    assert!(matches!(replies.as_slice(), [(2, Err(NodeError::Busy(_)))]));
}

#[test]
fn a_snapshot_is_saved_by_the_policy_and_the_log_compacts_once_it_is_durable() {
    let config = HostConfig {
        snapshot: SnapshotPolicy {
            entries_max: 3,
            bytes_max: u64::MAX,
        },
        ..HostConfig::default()
    };
    let mut h = leader(config);
    let mut saves = Vec::new();
    for i in 0..3 {
        h.write(7, set("k", &i.to_string()), i);
        for _ in 0..10 {
            let e = h.effects();
            saves.extend(e.files);
            if !e.records.is_empty() {
                h.persisted(e.records_end);
            }
        }
    }
    let [FileOp::Save { slot, store }] = saves.as_slice() else {
        panic!("one save expected: {saves:?}");
    };
    // The leader's no-op and the first two writes make three entries: the
    // store as of the second write is saved, and the third comes after.
    assert_eq!(*slot, Slot(3));
    assert_eq!(store.read(&get("k")), Reply::Bulk(Bytes::from("1")));
    assert_eq!(h.store().read(&get("k")), Reply::Bulk(Bytes::from("2")));
    // Nothing is compacted until the snapshot is durable.
    assert_eq!(h.status().log_start, Slot::ZERO);
    let id = SnapshotId {
        slot: *slot,
        bytes: 10,
        crc: 1,
    };
    h.file_done(FileDone::Saved {
        slot: *slot,
        result: Ok(id),
    });
    let e = h.effects();
    assert!(e.records.contains(&Record::Compact { up_to: *slot }));
    assert_eq!(h.latest_snapshot(), Some(id));
    assert_eq!(h.stats().snapshots_taken, 1);
}

#[test]
fn a_wanted_snapshot_is_saved_outside_the_policy_and_a_failed_save_drops_the_wish() {
    let mut h = leader(HostConfig::default());
    let run = |h: &mut Host<u32>| {
        let mut saves = Vec::new();
        for _ in 0..10 {
            let e = h.effects();
            saves.extend(e.files);
            if !e.records.is_empty() {
                h.persisted(e.records_end);
            }
        }
        saves
    };
    h.write(7, set("k", "1"), 1);
    assert!(run(&mut h).is_empty(), "the policy wants no snapshot yet");
    let wanted = h.want_snapshot();
    let saves = run(&mut h);
    let [FileOp::Save { slot, store }] = saves.as_slice() else {
        panic!("one save expected: {saves:?}");
    };
    assert!(*slot >= wanted);
    assert_eq!(store.read(&get("k")), Reply::Bulk(Bytes::from("1")));
    // A failed save is counted and not retried for the wish.
    h.file_done(FileDone::Saved {
        slot: *slot,
        result: Err(FileError::Failed("disk full".to_owned())),
    });
    assert_eq!(h.stats().snapshot_failures, 1);
    assert!(run(&mut h).is_empty(), "the failed wish is dropped");
    // Asked again, it is saved again; once held, nothing more is saved.
    h.want_snapshot();
    let saves = run(&mut h);
    let [FileOp::Save { slot, .. }] = saves.as_slice() else {
        panic!("one save expected: {saves:?}");
    };
    let id = SnapshotId {
        slot: *slot,
        bytes: 10,
        crc: 1,
    };
    h.file_done(FileDone::Saved {
        slot: *slot,
        result: Ok(id),
    });
    assert_eq!(h.latest_snapshot(), Some(id));
    h.want_snapshot();
    assert!(
        run(&mut h).is_empty(),
        "the snapshot held already covers it"
    );
}

fn served(id: SnapshotId, config: HostConfig) -> Host<u32> {
    let store = Store::new();
    Host::restore(
        config,
        paxos(1, 3),
        Durable::default(),
        Some((id, store)),
        1,
        None,
    )
    .expect("valid")
}

#[test]
fn a_peer_is_offered_the_newest_snapshot_and_sent_a_window_of_chunks_per_ack() {
    let id = SnapshotId {
        slot: Slot(40),
        bytes: 1_000,
        crc: 9,
    };
    let config = HostConfig {
        transfer: TransferConfig {
            chunk_bytes_max: 100,
            window_chunks: 3,
            ..TransferConfig::default()
        },
        ..HostConfig::default()
    };
    let mut h = served(id, config);
    h.snapshot_frame(2, SnapshotFrame::Request { min_slot: Slot(50) });
    assert_eq!(
        h.effects().frames,
        vec![(2, SnapshotFrame::Decline(Decline::NoSnapshot))],
        "nothing that recent"
    );
    h.snapshot_frame(2, SnapshotFrame::Request { min_slot: Slot(30) });
    let e = h.effects();
    assert_eq!(e.frames, vec![(2, SnapshotFrame::Offer(id))]);
    assert!(
        e.files.is_empty(),
        "no chunk before the receiver says where"
    );
    let ack = |next_offset, status| {
        SnapshotFrame::Ack(ChunkAck {
            slot: Slot(40),
            next_offset,
            status,
        })
    };
    h.snapshot_frame(2, ack(200, AckStatus::Resend));
    let offsets: Vec<u64> = h
        .effects()
        .files
        .iter()
        .map(|op| match op {
            FileOp::SendChunk {
                to: 2,
                offset,
                len: 100,
                ..
            } => *offset,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        offsets,
        vec![200, 300, 400],
        "a window, from where it stands"
    );
    h.snapshot_frame(2, ack(300, AckStatus::Progress));
    assert_eq!(h.effects().files.len(), 1, "one acked, one more goes");
    h.snapshot_frame(2, ack(1_000, AckStatus::Installed));
    assert!(h.effects().files.is_empty());
    assert_eq!(h.stats().transfers_served, 1);
}

#[test]
fn a_fetch_goes_from_request_to_install_and_swaps_the_store() {
    let mut h = host(2, 3, HostConfig::default());
    settle(&mut h);
    h.start_fetch(1, Slot(40));
    assert_eq!(
        h.effects().frames,
        vec![(1, SnapshotFrame::Request { min_slot: Slot(40) })]
    );
    // A second request while one runs is dropped.
    h.start_fetch(1, Slot(40));
    assert!(h.effects().frames.is_empty());
    let mut source = Store::new();
    source.apply(1, &kv::Request::anonymous(set("k", "from the snapshot")));
    let id = SnapshotId {
        slot: Slot(40),
        bytes: 6,
        crc: codec::crc32c(b"abcdef"),
    };
    h.snapshot_frame(1, SnapshotFrame::Offer(id));
    assert!(matches!(
        h.effects().files.as_slice(),
        [FileOp::OpenPartial { id: opened }] if *opened == id
    ));
    // The partial file holds two bytes from an earlier try.
    h.file_done(FileDone::Opened { id, result: Ok(2) });
    let e = h.effects();
    assert_eq!(
        e.frames,
        vec![(
            1,
            SnapshotFrame::Ack(ChunkAck {
                slot: Slot(40),
                next_offset: 2,
                status: AckStatus::Resend
            })
        )]
    );
    let chunk = transfer::Chunk::new(id, 2, Bytes::from_static(b"cdef"));
    h.snapshot_frame(1, SnapshotFrame::Chunk(chunk));
    let e = h.effects();
    assert!(matches!(
        e.files.as_slice(),
        [FileOp::Append { offset: 2, .. }, FileOp::Install { .. }]
    ));
    assert!(
        e.frames.is_empty(),
        "no ack before the bytes are in the file"
    );
    h.file_done(FileDone::Appended { id, end: 6 });
    assert_eq!(
        h.effects().frames,
        vec![(
            1,
            SnapshotFrame::Ack(ChunkAck {
                slot: Slot(40),
                next_offset: 6,
                status: AckStatus::Progress
            })
        )]
    );
    h.file_done(FileDone::Installed {
        id,
        result: Ok(Box::new(source)),
    });
    let e = h.effects();
    assert!(e.frames.iter().any(|(to, f)| *to == 1
        && matches!(f, SnapshotFrame::Ack(a) if a.status == AckStatus::Installed)));
    assert_eq!(h.applied(), Slot(40));
    assert_eq!(
        h.store().read(&get("k")),
        Reply::Bulk(Bytes::from("from the snapshot"))
    );
    assert_eq!(h.stats().snapshots_installed, 1);
    assert_eq!(h.stats().transfers_resumed, 1);
    assert_eq!(h.latest_snapshot(), Some(id));
}

#[test]
fn a_fetch_that_fails_waits_before_the_next() {
    let config = HostConfig {
        transfer: TransferConfig {
            fetch_retry_ticks: 5,
            ..TransferConfig::default()
        },
        ..HostConfig::default()
    };
    let mut h = host(2, 3, config);
    h.start_fetch(1, Slot(40));
    h.effects();
    h.snapshot_frame(1, SnapshotFrame::Decline(Decline::Busy));
    h.start_fetch(1, Slot(40));
    assert!(h.effects().frames.is_empty(), "backing off");
    for _ in 0..5 {
        h.tick();
    }
    h.effects();
    h.start_fetch(1, Slot(40));
    assert_eq!(h.effects().frames.len(), 1, "asks again after the wait");
}

#[test]
fn a_lost_request_is_repeated_until_the_peer_answers() {
    let config = HostConfig {
        transfer: TransferConfig {
            resend_ticks: 3,
            idle_ticks: 100,
            ..TransferConfig::default()
        },
        ..HostConfig::default()
    };
    let mut h = host(2, 3, config);
    h.start_fetch(1, Slot(40));
    let mut requests = h.effects().frames.len();
    for _ in 0..10 {
        h.tick();
        requests += h
            .effects()
            .frames
            .iter()
            .filter(|(to, f)| *to == 1 && matches!(f, SnapshotFrame::Request { .. }))
            .count();
    }
    assert_eq!(requests, 4, "asked at 0, 3, 6 and 9 ticks");
}

/// A follower (node 2 of 3) started with client epoch `epoch`, following
/// node 1, with a linearizable read asked of the leader; returns the host
/// and the read's context as the leader sees it.
fn follower_reading(epoch: u64) -> (Host<u32>, u64) {
    let mut h = Host::restore(
        HostConfig::default(),
        paxos(2, 3),
        Durable::default(),
        None,
        epoch,
        None,
    )
    .expect("valid");
    let ballot = Ballot {
        round: paxos::Round(1),
        node: 1,
    };
    h.step(
        1,
        Message::Heartbeat {
            ballot,
            commit: Slot::ZERO,
            seq: 1,
        },
    );
    settle(&mut h);
    h.read(get("k"), ReadMode::Linearizable, 7);
    let e = h.effects();
    let ctx = e
        .send
        .iter()
        .find_map(|(to, m)| match m {
            Message::ReadIndexRequest { ctx } if *to == 1 => Some(*ctx),
            _ => None,
        })
        .expect("the read is asked of the leader");
    (h, ctx)
}

#[test]
fn an_answer_to_a_read_of_an_earlier_life_never_answers_a_new_one() {
    let (_, before) = follower_reading(1);
    let (mut h, after) = follower_reading(2);
    assert_ne!(before, after, "read contexts repeat across restarts");
    // The leader's answer to the read asked before the restart arrives
    // late: the new read waits for its own.
    h.step(
        1,
        Message::ReadIndexReply {
            ctx: before,
            index: Slot::ZERO,
        },
    );
    assert!(settle(&mut h).is_empty(), "a stale read index answered");
    h.step(
        1,
        Message::ReadIndexReply {
            ctx: after,
            index: Slot::ZERO,
        },
    );
    assert_eq!(settle(&mut h), vec![(7, Ok(Reply::Nil))]);
}
