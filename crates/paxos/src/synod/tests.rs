//! One test per rule of *Paxos Made Simple*, section 2, shaped
//! set up → step → check what the role emitted.

use super::*;
use crate::rng::Rng;

const A: [NodeId; 3] = [1, 2, 3];
const LEARNER: NodeId = 9;

fn b(round: u64, node: NodeId) -> Ballot {
    Ballot::new(round, node)
}

fn acceptor() -> Acceptor<&'static str> {
    Acceptor::new(1, vec![LEARNER])
}

fn only_message<S, V: Clone>(ready: &Ready<S, V>) -> Message<V> {
    assert_eq!(ready.send.len(), 1, "expected exactly one message");
    ready.send[0].message.clone()
}

// 2.2 Phase 1(b): an acceptor promises a prepare above anything it promised,
// and reports the highest-numbered proposal it has accepted.
#[test]
fn p1b_acceptor_promises_and_reports_its_accepted_value() {
    let mut a = acceptor();
    let r = a.step(7, Message::Prepare { ballot: b(1, 7) });
    assert_eq!(r.persist.as_ref().map(|l| l.promised), Some(b(1, 7)));
    assert_eq!(
        only_message(&r),
        Message::Promise {
            ballot: b(1, 7),
            accepted: None
        }
    );
    assert_eq!(r.send[0].to, 7);

    a.step(
        7,
        Message::Accept {
            ballot: b(1, 7),
            value: "x",
        },
    );
    let r = a.step(8, Message::Prepare { ballot: b(2, 8) });
    assert_eq!(
        only_message(&r),
        Message::Promise {
            ballot: b(2, 8),
            accepted: Some((b(1, 7), "x"))
        }
    );
}

// 2.2 Phase 1(b): a prepare below the promise is refused; we say so with a Nack
// carrying the promised ballot, and nothing changes.
#[test]
fn p1b_acceptor_refuses_a_lower_prepare() {
    let mut a = acceptor();
    a.step(8, Message::Prepare { ballot: b(2, 8) });
    let before = a.ledger().clone();
    let r = a.step(7, Message::Prepare { ballot: b(1, 7) });
    assert_eq!(r.persist, None);
    assert_eq!(
        only_message(&r),
        Message::Nack {
            ballot: b(1, 7),
            promised: b(2, 8)
        }
    );
    assert_eq!(a.ledger(), &before);
}

// A duplicated prepare of the promised ballot is answered again, without a new
// write: the promise is already durable.
#[test]
fn p1b_duplicate_prepare_is_answered_without_a_write() {
    let mut a = acceptor();
    a.step(7, Message::Prepare { ballot: b(1, 7) });
    let r = a.step(7, Message::Prepare { ballot: b(1, 7) });
    assert_eq!(r.persist, None);
    assert!(matches!(only_message(&r), Message::Promise { .. }));
}

// 2.2 Phase 2(b): an acceptor accepts unless it has promised a higher ballot,
// and tells the learners.
#[test]
fn p2b_acceptor_accepts_unless_promised_higher() {
    let mut a = acceptor();
    a.step(7, Message::Prepare { ballot: b(1, 7) });
    let r = a.step(
        7,
        Message::Accept {
            ballot: b(1, 7),
            value: "x",
        },
    );
    assert_eq!(
        r.persist.as_ref().and_then(|l| l.accepted),
        Some((b(1, 7), "x"))
    );
    assert_eq!(r.send[0].to, LEARNER);
    assert_eq!(
        only_message(&r),
        Message::Accepted {
            ballot: b(1, 7),
            value: "x"
        }
    );

    a.step(8, Message::Prepare { ballot: b(2, 8) });
    let r = a.step(
        7,
        Message::Accept {
            ballot: b(1, 7),
            value: "y",
        },
    );
    assert_eq!(r.persist, None);
    assert!(matches!(only_message(&r), Message::Nack { .. }));
    assert_eq!(a.ledger().accepted, Some((b(1, 7), "x")));
}

// 2.2 Phase 2(b) without a phase 1 at this acceptor: accepting ballot b is
// allowed when nothing higher was promised, and implies a promise of b.
#[test]
fn p2b_accepting_raises_the_promise() {
    let mut a = acceptor();
    let r = a.step(
        7,
        Message::Accept {
            ballot: b(3, 7),
            value: "x",
        },
    );
    let ledger = r.persist.expect("accept must be persisted");
    assert_eq!(ledger.promised, b(3, 7));
    let r = a.step(8, Message::Prepare { ballot: b(2, 8) });
    assert!(matches!(only_message(&r), Message::Nack { .. }));
}

fn promise(
    p: &mut Proposer<&'static str>,
    from: NodeId,
    accepted: Option<(Ballot, &'static str)>,
) -> Ready<ProposerLedger, &'static str> {
    let ballot = p.ballot().expect("preparing");
    p.step(from, Message::Promise { ballot, accepted })
}

// 2.2 Phase 1(a): a proposer picks a new ballot and sends prepare to the
// acceptors, after making its round durable.
#[test]
fn p1a_proposer_prepares_a_fresh_ballot_durably() {
    let mut p = Proposer::new(7, A.to_vec(), "mine");
    let r = p.prepare();
    assert_eq!(r.persist, Some(ProposerLedger { round: Round(1) }));
    assert_eq!(r.send.len(), 3);
    assert!(
        r.send
            .iter()
            .all(|e| e.message == Message::Prepare { ballot: b(1, 7) })
    );
    let again = p.prepare();
    assert_eq!(again.persist, Some(ProposerLedger { round: Round(2) }));
}

// 2.2 Phase 2(a): with a quorum of promises, propose the value of the
// highest-numbered accepted proposal among them.
#[test]
fn p2a_proposer_adopts_the_highest_accepted_value() {
    let mut p = Proposer::new(7, A.to_vec(), "mine");
    p.prepare();
    assert!(promise(&mut p, 1, Some((b(1, 3), "old"))).send.is_empty());
    let r = promise(&mut p, 2, Some((b(1, 5), "newer")));
    assert_eq!(r.send.len(), 3);
    assert!(r.send.iter().all(|e| e.message
        == Message::Accept {
            ballot: b(1, 7),
            value: "newer"
        }));
}

// 2.2 Phase 2(a): when no promise reports an accepted value, the proposer is
// free to propose its own.
#[test]
fn p2a_proposer_uses_its_own_value_when_none_was_accepted() {
    let mut p = Proposer::new(7, A.to_vec(), "mine");
    p.prepare();
    promise(&mut p, 1, None);
    let r = promise(&mut p, 3, None);
    assert!(
        r.send
            .iter()
            .all(|e| matches!(e.message, Message::Accept { value: "mine", .. }))
    );
}

// A quorum means distinct acceptors: a duplicated promise counts once.
#[test]
fn p2a_duplicate_promises_do_not_make_a_quorum() {
    let mut p = Proposer::new(7, A.to_vec(), "mine");
    p.prepare();
    promise(&mut p, 1, None);
    let r = promise(&mut p, 1, None);
    assert!(r.send.is_empty());
    assert!(matches!(p.phase(), Phase::Preparing { .. }));
}

// A nack for the current ballot pre-empts the proposer; its next ballot is
// above the one that beat it. A nack for an old ballot changes nothing.
#[test]
fn nack_preempts_and_the_retry_goes_higher() {
    let mut p = Proposer::new(7, A.to_vec(), "mine");
    p.prepare();
    let before = p.clone();
    p.step(
        1,
        Message::Nack {
            ballot: b(0, 7),
            promised: b(9, 2),
        },
    );
    assert_eq!(p, before);
    p.step(
        1,
        Message::Nack {
            ballot: b(1, 7),
            promised: b(5, 2),
        },
    );
    assert_eq!(p.phase(), &Phase::Preempted { by: b(5, 2) });
    let r = p.prepare();
    assert!(
        r.send
            .iter()
            .all(|e| e.message == Message::Prepare { ballot: b(6, 7) })
    );
}

// A restarted proposer continues above the round it persisted, so it never
// issues the same ballot with a different value.
#[test]
fn a_restarted_proposer_never_reuses_a_ballot() {
    let mut p = Proposer::new(7, A.to_vec(), "mine");
    let ledger = p.prepare().persist.expect("round persisted");
    let mut p = Proposer::restore(7, A.to_vec(), "other", ledger);
    let r = p.prepare();
    assert!(
        r.send
            .iter()
            .all(|e| e.message == Message::Prepare { ballot: b(2, 7) })
    );
}

// 2.3 Learning: a value is learned once a majority accepted it in one ballot.
#[test]
fn learner_needs_a_majority_in_one_ballot() {
    let mut l = Learner::new(A.to_vec());
    let acc = |ballot, value| Message::Accepted { ballot, value };
    assert_eq!(l.step(1, acc(b(1, 7), "x")), None);
    assert_eq!(
        l.step(1, acc(b(1, 7), "x")),
        None,
        "a duplicate counts once"
    );
    assert_eq!(
        l.step(2, acc(b(2, 8), "x")),
        None,
        "different ballots never add up"
    );
    assert_eq!(l.step(4, acc(b(1, 7), "x")), None, "not an acceptor");
    assert_eq!(l.step(3, acc(b(1, 7), "x")), Some("x"));
    assert_eq!(l.learned(), Some(&"x"));
    assert_eq!(l.step(2, acc(b(1, 7), "x")), None, "learned once");
}

/// Checks the output contract: every promise or acceptance a message reports
/// is covered by the durable ledger at the moment the message may leave.
fn covered(ledger: &Ledger<u8>, message: &Message<u8>) -> bool {
    match message {
        Message::Promise { ballot, accepted } => {
            ledger.promised >= *ballot
                && match accepted {
                    None => true,
                    Some((ab, v)) => ledger
                        .accepted
                        .as_ref()
                        .is_some_and(|(lb, lv)| lb >= ab && (lb != ab || lv == v)),
                }
        }
        Message::Accepted { ballot, value } => {
            ledger.promised >= *ballot
                && ledger
                    .accepted
                    .as_ref()
                    .is_some_and(|(lb, lv)| lb >= ballot && (lb != ballot || lv == value))
        }
        Message::Prepare { .. } | Message::Accept { .. } | Message::Nack { .. } => true,
    }
}

// The output contract, over many random inputs: what an acceptor says in a
// Ready is durable once that Ready's `persist` (or an earlier one) is written,
// and the in-memory ledger never runs ahead of what was handed out to persist.
#[test]
fn acceptor_output_is_covered_by_what_it_asks_to_persist() {
    let mut rng = Rng::new(3);
    for _ in 0..200 {
        let mut a: Acceptor<u8> = Acceptor::new(1, vec![LEARNER]);
        let mut durable = Ledger::default();
        for _ in 0..50 {
            let ballot = b(rng.below(6), rng.between(1, 3));
            let message = if rng.chance(0.5) {
                Message::Prepare { ballot }
            } else {
                Message::Accept {
                    ballot,
                    value: rng.below(3) as u8,
                }
            };
            let r = a.step(7, message);
            if let Some(ledger) = r.persist {
                durable = ledger;
            }
            assert_eq!(&durable, a.ledger(), "memory ran ahead of persist");
            for e in &r.send {
                assert!(
                    covered(&durable, &e.message),
                    "{e:?} not durable in {durable:?}"
                );
            }
        }
    }
}
