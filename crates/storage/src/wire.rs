//! The binary form of the protocol's messages and durable records: one codec
//! for the peer wire and for the write-ahead log.
//!
//! Every encoding starts with a format version byte, then a tag naming the
//! variant. Integers are LEB128 varints; byte strings and lists carry their
//! length first. Decoding checks every length against the bytes that remain
//! before allocating, so a hostile or corrupt input can cost at most its own
//! size, and it never panics: it returns a [`DecodeError`].

use bytes::{BufMut, Bytes, BytesMut};
use codec::{DecodeError, Reader, put_bytes, put_count, put_varint};
use paxos::replica::{Change, Message, PromisedEntry, Record, Slot, Value};
use paxos::{Ballot, Round};

/// The format this code writes and reads.
pub const WIRE_FORMAT: u8 = 1;

/// The highest ballot round accepted. Rounds grow by one per election, so no
/// honest replica comes near it; a larger one is refused as garbage rather
/// than let a replica compute a next round that would overflow.
pub const BALLOT_ROUND_MAX: u64 = 1 << 62;

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

fn put_slot(out: &mut BytesMut, s: Slot) {
    put_varint(out, s.0);
}

fn put_ballot(out: &mut BytesMut, b: Ballot) {
    put_varint(out, b.round.0);
    put_varint(out, b.node);
}

fn put_optional_ballot(out: &mut BytesMut, b: Option<Ballot>) {
    match b {
        None => out.put_u8(0),
        Some(b) => {
            out.put_u8(1);
            put_ballot(out, b);
        }
    }
}

fn put_value(out: &mut BytesMut, v: &Value) {
    match v {
        Value::Noop => out.put_u8(0),
        Value::Batch(commands) => {
            out.put_u8(1);
            put_count(out, commands.len());
            for c in commands {
                put_bytes(out, c);
            }
        }
        Value::Change(change) => {
            out.put_u8(2);
            put_change(out, change);
        }
    }
}

fn put_change(out: &mut BytesMut, change: &Change) {
    match change {
        Change::Add { id, info, promote } => {
            out.put_u8(0);
            put_varint(out, *id);
            put_bytes(out, info);
            out.put_u8(u8::from(*promote));
        }
        Change::Promote { id } => {
            out.put_u8(1);
            put_varint(out, *id);
        }
        Change::Remove { id } => {
            out.put_u8(2);
            put_varint(out, *id);
        }
        Change::Replace { old, new } => {
            out.put_u8(3);
            put_varint(out, *old);
            put_varint(out, *new);
        }
    }
}

fn put_slots(out: &mut BytesMut, slots: &[Slot]) {
    put_count(out, slots.len());
    for &s in slots {
        put_slot(out, s);
    }
}

fn put_entries(out: &mut BytesMut, entries: &[(Slot, Value)]) {
    put_count(out, entries.len());
    for (s, v) in entries {
        put_slot(out, *s);
        put_value(out, v);
    }
}

/// Encodes a message between replicas.
pub fn encode_message(message: &Message) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(WIRE_FORMAT);
    match message {
        Message::PreVote { ballot } => {
            out.put_u8(1);
            put_ballot(&mut out, *ballot);
        }
        Message::PreVoteReply { ballot, granted } => {
            out.put_u8(2);
            put_ballot(&mut out, *ballot);
            out.put_u8(u8::from(*granted));
        }
        Message::Prepare { ballot, from_slot } => {
            out.put_u8(3);
            put_ballot(&mut out, *ballot);
            put_slot(&mut out, *from_slot);
        }
        Message::Promise {
            ballot,
            commit,
            log_start,
            entries,
        } => {
            out.put_u8(4);
            put_ballot(&mut out, *ballot);
            put_slot(&mut out, *commit);
            put_slot(&mut out, *log_start);
            put_count(&mut out, entries.len());
            for e in entries {
                put_slot(&mut out, e.slot);
                put_ballot(&mut out, e.ballot);
                put_value(&mut out, &e.value);
                out.put_u8(u8::from(e.chosen));
            }
        }
        Message::Nack { ballot, promised } => {
            out.put_u8(5);
            put_ballot(&mut out, *ballot);
            put_ballot(&mut out, *promised);
        }
        Message::Accept {
            ballot,
            entries,
            commit,
        } => {
            out.put_u8(6);
            put_ballot(&mut out, *ballot);
            put_entries(&mut out, entries);
            put_slot(&mut out, *commit);
        }
        Message::Accepted { ballot, slots } => {
            out.put_u8(7);
            put_ballot(&mut out, *ballot);
            put_slots(&mut out, slots);
        }
        Message::Heartbeat {
            ballot,
            commit,
            seq,
        } => {
            out.put_u8(8);
            put_ballot(&mut out, *ballot);
            put_slot(&mut out, *commit);
            put_varint(&mut out, *seq);
        }
        Message::HeartbeatAck {
            ballot,
            seq,
            commit,
        } => {
            out.put_u8(9);
            put_ballot(&mut out, *ballot);
            put_varint(&mut out, *seq);
            put_slot(&mut out, *commit);
        }
        Message::CatchUp { from_slot } => {
            out.put_u8(10);
            put_slot(&mut out, *from_slot);
        }
        Message::Chosen { entries, commit } => {
            out.put_u8(11);
            put_entries(&mut out, entries);
            put_slot(&mut out, *commit);
        }
        Message::SnapshotNeeded { slot } => {
            out.put_u8(12);
            put_slot(&mut out, *slot);
        }
        Message::Forward { commands } => {
            out.put_u8(13);
            put_count(&mut out, commands.len());
            for c in commands {
                put_bytes(&mut out, c);
            }
        }
        Message::ReadIndexRequest { ctx } => {
            out.put_u8(14);
            put_varint(&mut out, *ctx);
        }
        Message::ReadIndexReply { ctx, index } => {
            out.put_u8(15);
            put_varint(&mut out, *ctx);
            put_slot(&mut out, *index);
        }
        Message::RejoinQuery { above } => {
            out.put_u8(16);
            put_optional_ballot(&mut out, *above);
        }
        Message::RejoinReply {
            promised,
            leading_from,
        } => {
            out.put_u8(17);
            put_ballot(&mut out, *promised);
            match leading_from {
                None => out.put_u8(0),
                Some(slot) => {
                    out.put_u8(1);
                    put_slot(&mut out, *slot);
                }
            }
        }
        Message::TransferLeadership { ballot, to } => {
            out.put_u8(18);
            put_ballot(&mut out, *ballot);
            put_varint(&mut out, *to);
        }
    }
    out.freeze()
}

/// Encodes a durable record.
pub fn encode_record(record: &Record) -> Bytes {
    let mut out = BytesMut::with_capacity(32);
    out.put_u8(WIRE_FORMAT);
    match record {
        Record::Promise(ballot) => {
            out.put_u8(1);
            put_ballot(&mut out, *ballot);
        }
        Record::Accept {
            slot,
            ballot,
            value,
        } => {
            out.put_u8(2);
            put_slot(&mut out, *slot);
            put_ballot(&mut out, *ballot);
            put_value(&mut out, value);
        }
        Record::Commit { up_to } => {
            out.put_u8(3);
            put_slot(&mut out, *up_to);
        }
        Record::Chosen { slot, value } => {
            out.put_u8(4);
            put_slot(&mut out, *slot);
            put_value(&mut out, value);
        }
        Record::Compact { up_to } => {
            out.put_u8(5);
            put_slot(&mut out, *up_to);
        }
        Record::Rejoin => out.put_u8(6),
        Record::Resume => out.put_u8(7),
    }
    out.freeze()
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// The codec's reader, with the protocol's types, keeping byte strings as
/// slices of the input instead of copies.
struct Wire<'a> {
    input: &'a Bytes,
    r: Reader<'a>,
}

impl<'a> Wire<'a> {
    fn new(input: &'a Bytes) -> Result<Wire<'a>, DecodeError> {
        let r = Reader::with_format(input, "wire", WIRE_FORMAT)?;
        Ok(Wire { input, r })
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.r.varint(what)
    }

    fn slot(&mut self, what: &'static str) -> Result<Slot, DecodeError> {
        self.r.varint(what).map(Slot)
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        self.r.bool(what)
    }

    fn bytes(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let b = self.r.bytes(what)?;
        Ok(self.input.slice_ref(b))
    }

    fn ballot(&mut self) -> Result<Ballot, DecodeError> {
        Ok(Ballot {
            round: Round(self.r.varint_max("a ballot round", BALLOT_ROUND_MAX)?),
            node: self.varint("a ballot node")?,
        })
    }

    fn option<T>(
        &mut self,
        some: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.r.u8("an option tag")? {
            0 => Ok(None),
            1 => some(self).map(Some),
            tag => Err(DecodeError::UnknownTag {
                what: "option",
                tag,
            }),
        }
    }

    fn value(&mut self) -> Result<Value, DecodeError> {
        match self.r.u8("a value")? {
            0 => Ok(Value::Noop),
            1 => Ok(Value::Batch(self.commands("a batch")?)),
            2 => Ok(Value::Change(self.change()?)),
            tag => Err(DecodeError::UnknownTag { what: "value", tag }),
        }
    }

    fn change(&mut self) -> Result<Change, DecodeError> {
        match self.r.u8("a membership change")? {
            0 => Ok(Change::Add {
                id: self.varint("a member id")?,
                info: self.bytes("member info")?,
                promote: self.r.bool("a promote flag")?,
            }),
            1 => Ok(Change::Promote {
                id: self.varint("a member id")?,
            }),
            2 => Ok(Change::Remove {
                id: self.varint("a member id")?,
            }),
            3 => Ok(Change::Replace {
                old: self.varint("a member id")?,
                new: self.varint("a member id")?,
            }),
            tag => Err(DecodeError::UnknownTag {
                what: "membership change",
                tag,
            }),
        }
    }

    fn commands(&mut self, what: &'static str) -> Result<Vec<Bytes>, DecodeError> {
        let n = self.r.count(what, 1)?;
        (0..n).map(|_| self.bytes("a command")).collect()
    }

    fn entries(&mut self) -> Result<Vec<(Slot, Value)>, DecodeError> {
        let n = self.r.count("entries", 2)?;
        (0..n)
            .map(|_| Ok((self.slot("a slot")?, self.value()?)))
            .collect()
    }

    fn finish<T>(self, value: T) -> Result<T, DecodeError> {
        self.r.finish()?;
        Ok(value)
    }
}

/// Decodes a message encoded by [`encode_message`].
pub fn decode_message(input: Bytes) -> Result<Message, DecodeError> {
    let mut r = Wire::new(&input)?;
    let message = match r.r.u8("a message tag")? {
        1 => Message::PreVote {
            ballot: r.ballot()?,
        },
        2 => Message::PreVoteReply {
            ballot: r.ballot()?,
            granted: r.bool("granted")?,
        },
        3 => Message::Prepare {
            ballot: r.ballot()?,
            from_slot: r.slot("from_slot")?,
        },
        4 => {
            let ballot = r.ballot()?;
            let commit = r.slot("commit")?;
            let log_start = r.slot("log_start")?;
            let n = r.r.count("promised entries", 4)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(PromisedEntry {
                    slot: r.slot("a slot")?,
                    ballot: r.ballot()?,
                    value: r.value()?,
                    chosen: r.bool("chosen")?,
                });
            }
            Message::Promise {
                ballot,
                commit,
                log_start,
                entries,
            }
        }
        5 => Message::Nack {
            ballot: r.ballot()?,
            promised: r.ballot()?,
        },
        6 => Message::Accept {
            ballot: r.ballot()?,
            entries: r.entries()?,
            commit: r.slot("commit")?,
        },
        7 => {
            let ballot = r.ballot()?;
            let n = r.r.count("slots", 1)?;
            let mut slots = Vec::with_capacity(n);
            for _ in 0..n {
                slots.push(r.slot("a slot")?);
            }
            Message::Accepted { ballot, slots }
        }
        8 => Message::Heartbeat {
            ballot: r.ballot()?,
            commit: r.slot("commit")?,
            seq: r.varint("seq")?,
        },
        9 => Message::HeartbeatAck {
            ballot: r.ballot()?,
            seq: r.varint("seq")?,
            commit: r.slot("commit")?,
        },
        10 => Message::CatchUp {
            from_slot: r.slot("from_slot")?,
        },
        11 => Message::Chosen {
            entries: r.entries()?,
            commit: r.slot("commit")?,
        },
        12 => Message::SnapshotNeeded {
            slot: r.slot("slot")?,
        },
        13 => Message::Forward {
            commands: r.commands("commands")?,
        },
        14 => Message::ReadIndexRequest {
            ctx: r.varint("ctx")?,
        },
        15 => Message::ReadIndexReply {
            ctx: r.varint("ctx")?,
            index: r.slot("index")?,
        },
        16 => Message::RejoinQuery {
            above: r.option(Wire::ballot)?,
        },
        17 => Message::RejoinReply {
            promised: r.ballot()?,
            leading_from: r.option(|r| r.slot("leading_from"))?,
        },
        18 => Message::TransferLeadership {
            ballot: r.ballot()?,
            to: r.varint("a node id")?,
        },
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "message",
                tag,
            });
        }
    };
    r.finish(message)
}

/// Decodes a record encoded by [`encode_record`].
pub fn decode_record(input: Bytes) -> Result<Record, DecodeError> {
    let mut r = Wire::new(&input)?;
    let record = match r.r.u8("a record tag")? {
        1 => Record::Promise(r.ballot()?),
        2 => Record::Accept {
            slot: r.slot("slot")?,
            ballot: r.ballot()?,
            value: r.value()?,
        },
        3 => Record::Commit {
            up_to: r.slot("up_to")?,
        },
        4 => Record::Chosen {
            slot: r.slot("slot")?,
            value: r.value()?,
        },
        5 => Record::Compact {
            up_to: r.slot("up_to")?,
        },
        6 => Record::Rejoin,
        7 => Record::Resume,
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "record",
                tag,
            });
        }
    };
    r.finish(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos::rng::Rng;

    fn value(rng: &mut Rng) -> Value {
        if rng.chance(0.2) {
            return Value::Noop;
        }
        if rng.chance(0.1) {
            let id = rng.below(1 << 20);
            return Value::Change(match rng.below(4) {
                0 => Change::Add {
                    id,
                    info: Bytes::from(format!("10.0.0.{}:7000", rng.below(256))),
                    promote: rng.chance(0.5),
                },
                1 => Change::Promote { id },
                2 => Change::Remove { id },
                _ => Change::Replace {
                    old: id,
                    new: rng.below(1 << 20),
                },
            });
        }
        let n = rng.below(4) as usize;
        Value::Batch(
            (0..n)
                .map(|_| {
                    let len = rng.below(20) as usize;
                    Bytes::from((0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>())
                })
                .collect(),
        )
    }

    fn ballot(rng: &mut Rng) -> Ballot {
        // Cover small values and the full range of a varint.
        let big = |rng: &mut Rng| {
            if rng.chance(0.3) {
                rng.next_u64()
            } else {
                rng.below(300)
            }
        };
        Ballot::new(big(rng) % (BALLOT_ROUND_MAX + 1), big(rng))
    }

    #[test]
    fn a_ballot_round_that_could_overflow_is_refused() {
        let too_high = Message::PreVote {
            ballot: Ballot::new(BALLOT_ROUND_MAX + 1, 1),
        };
        assert_eq!(
            decode_message(encode_message(&too_high)),
            Err(DecodeError::TooLarge {
                what: "a ballot round",
                value: BALLOT_ROUND_MAX + 1,
                max: BALLOT_ROUND_MAX
            })
        );
        let highest = Message::PreVote {
            ballot: Ballot::new(BALLOT_ROUND_MAX, 1),
        };
        assert_eq!(decode_message(encode_message(&highest)), Ok(highest));
    }

    fn message(rng: &mut Rng) -> Message {
        let slot = |rng: &mut Rng| Slot(rng.below(1 << 40));
        match rng.below(18) {
            16 => Message::TransferLeadership {
                ballot: ballot(rng),
                to: rng.below(1 << 20),
            },
            0 => Message::PreVote {
                ballot: ballot(rng),
            },
            1 => Message::PreVoteReply {
                ballot: ballot(rng),
                granted: rng.chance(0.5),
            },
            2 => Message::Prepare {
                ballot: ballot(rng),
                from_slot: slot(rng),
            },
            3 => Message::Promise {
                ballot: ballot(rng),
                commit: slot(rng),
                log_start: slot(rng),
                entries: (0..rng.below(4))
                    .map(|_| PromisedEntry {
                        slot: slot(rng),
                        ballot: ballot(rng),
                        value: value(rng),
                        chosen: rng.chance(0.5),
                    })
                    .collect(),
            },
            4 => Message::Nack {
                ballot: ballot(rng),
                promised: ballot(rng),
            },
            5 => Message::Accept {
                ballot: ballot(rng),
                entries: (0..rng.below(4)).map(|_| (slot(rng), value(rng))).collect(),
                commit: slot(rng),
            },
            6 => Message::Accepted {
                ballot: ballot(rng),
                slots: (0..rng.below(5)).map(|_| slot(rng)).collect(),
            },
            7 => Message::Heartbeat {
                ballot: ballot(rng),
                commit: slot(rng),
                seq: rng.next_u64(),
            },
            8 => Message::HeartbeatAck {
                ballot: ballot(rng),
                seq: rng.next_u64(),
                commit: slot(rng),
            },
            9 => Message::CatchUp {
                from_slot: slot(rng),
            },
            10 => Message::Chosen {
                entries: (0..rng.below(4)).map(|_| (slot(rng), value(rng))).collect(),
                commit: slot(rng),
            },
            11 => Message::SnapshotNeeded { slot: slot(rng) },
            12 => Message::Forward {
                commands: value(rng).commands().to_vec(),
            },
            13 => Message::ReadIndexRequest {
                ctx: rng.next_u64(),
            },
            14 => Message::RejoinQuery {
                above: rng.chance(0.5).then(|| ballot(rng)),
            },
            15 => Message::RejoinReply {
                promised: ballot(rng),
                leading_from: rng.chance(0.5).then(|| slot(rng)),
            },
            _ => Message::ReadIndexReply {
                ctx: rng.next_u64(),
                index: slot(rng),
            },
        }
    }

    fn record(rng: &mut Rng) -> Record {
        match rng.below(7) {
            0 => Record::Promise(ballot(rng)),
            5 => Record::Rejoin,
            6 => Record::Resume,
            1 => Record::Accept {
                slot: Slot(rng.next_u64()),
                ballot: ballot(rng),
                value: value(rng),
            },
            2 => Record::Commit {
                up_to: Slot(rng.next_u64()),
            },
            3 => Record::Chosen {
                slot: Slot(rng.next_u64()),
                value: value(rng),
            },
            _ => Record::Compact {
                up_to: Slot(rng.next_u64()),
            },
        }
    }

    #[test]
    fn every_message_and_record_round_trips() {
        let mut rng = Rng::new(1);
        let mut kinds = std::collections::BTreeSet::new();
        for _ in 0..5_000 {
            let m = message(&mut rng);
            kinds.insert(m.kind());
            assert_eq!(decode_message(encode_message(&m)), Ok(m));
            let r = record(&mut rng);
            assert_eq!(decode_record(encode_record(&r)), Ok(r));
        }
        assert_eq!(kinds.len(), 18, "every message kind was generated");
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut rng = Rng::new(2);
        for _ in 0..300 {
            let full = encode_message(&message(&mut rng));
            for len in 0..full.len() {
                assert!(
                    decode_message(full.slice(..len)).is_err(),
                    "{len} of {full:?}"
                );
            }
            let full = encode_record(&record(&mut rng));
            for len in 0..full.len() {
                assert!(decode_record(full.slice(..len)).is_err());
            }
        }
    }

    #[test]
    fn garbage_never_panics_and_forged_lengths_are_refused() {
        let mut rng = Rng::new(3);
        for _ in 0..20_000 {
            let len = rng.below(40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if !bytes.is_empty() {
                bytes[0] = WIRE_FORMAT;
            }
            let _ = decode_message(Bytes::from(bytes.clone()));
            let _ = decode_record(Bytes::from(bytes));
        }
        // A Forward claiming 2^40 commands in a few bytes.
        let mut forged = BytesMut::new();
        forged.put_u8(WIRE_FORMAT);
        forged.put_u8(13);
        put_varint(&mut forged, 1 << 40);
        assert!(matches!(
            decode_message(forged.freeze()),
            Err(DecodeError::LengthTooLong { .. })
        ));
    }

    #[test]
    fn wrong_versions_tags_and_trailing_bytes_are_named() {
        assert_eq!(
            decode_message(Bytes::new()),
            Err(DecodeError::Empty("wire"))
        );
        assert_eq!(
            decode_message(Bytes::from_static(&[9, 1])),
            Err(DecodeError::UnknownFormat {
                what: "wire",
                found: 9,
                expected: WIRE_FORMAT
            })
        );
        assert_eq!(
            decode_record(Bytes::from_static(&[WIRE_FORMAT, 77])),
            Err(DecodeError::UnknownTag {
                what: "record",
                tag: 77
            })
        );
        let mut extra = BytesMut::from(&encode_record(&Record::Commit { up_to: Slot(5) })[..]);
        extra.put_u8(0);
        assert_eq!(
            decode_record(extra.freeze()),
            Err(DecodeError::TrailingBytes(1))
        );
        let overlong = Bytes::from_static(&[
            WIRE_FORMAT,
            10,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0xFF,
            0x7F,
        ]);
        assert_eq!(
            decode_message(overlong),
            Err(DecodeError::VarintOverflow("from_slot"))
        );
    }
}
