//! The cluster record a snapshot carries beside the store: the memberships
//! that the changes chosen up to the snapshot's slot made (see
//! `paxos::replica::Replica::snapshot_configs`). The store keeps it as
//! opaque bytes; this is their form.
//!
//! A format byte, then the memberships in slot order, each with the first
//! slot it governs, α, its members (id, role, the host's info about it) and
//! the retired ids.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use codec::{DecodeError, Reader, put_bytes, put_count, put_varint};
use paxos::replica::{ALPHA_MAX, Configs, Member, MemberRole, Membership, Slot};

/// The format this code writes and reads.
const CLUSTER_FORMAT: u8 = 1;

/// Encodes the memberships a snapshot carries.
pub fn encode(configs: &Configs) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(CLUSTER_FORMAT);
    put_count(&mut out, configs.entries().len());
    for (from, m) in configs.entries() {
        put_varint(&mut out, from.0);
        put_varint(&mut out, m.alpha);
        put_count(&mut out, m.members.len());
        for (&id, member) in &m.members {
            put_varint(&mut out, id);
            out.put_u8(match member.role {
                MemberRole::Voter => 0,
                MemberRole::Learner { promote: false } => 1,
                MemberRole::Learner { promote: true } => 2,
            });
            put_bytes(&mut out, &member.info);
        }
        put_count(&mut out, m.retired.len());
        for &id in &m.retired {
            put_varint(&mut out, id);
        }
    }
    out.freeze()
}

/// Decodes [`encode`]; never panics, and allocates no more than the input
/// can hold.
pub fn decode(input: &Bytes) -> Result<Configs, DecodeError> {
    let mut r = Reader::with_format(input, "cluster record", CLUSTER_FORMAT)?;
    let n = r.count("memberships", 3)?;
    let mut history = Vec::with_capacity(n);
    for _ in 0..n {
        let from = Slot(r.varint("a membership's first slot")?);
        let alpha = r.varint("alpha")?;
        if alpha == 0 || alpha > ALPHA_MAX {
            return Err(DecodeError::Invalid {
                what: "alpha",
                reason: "outside 1..=1048576",
            });
        }
        let count = r.count("members", 3)?;
        let mut members = BTreeMap::new();
        for _ in 0..count {
            let id = r.varint("a member id")?;
            let role = match r.u8("a member role")? {
                0 => MemberRole::Voter,
                1 => MemberRole::Learner { promote: false },
                2 => MemberRole::Learner { promote: true },
                tag => {
                    return Err(DecodeError::UnknownTag {
                        what: "member role",
                        tag,
                    });
                }
            };
            let info = input.slice_ref(r.bytes("member info")?);
            members.insert(id, Member { role, info });
        }
        let count = r.count("retired ids", 1)?;
        let mut retired = BTreeSet::new();
        for _ in 0..count {
            retired.insert(r.varint("a retired id")?);
        }
        history.push((
            from,
            Membership {
                alpha,
                members,
                retired,
            },
        ));
    }
    r.finish()?;
    Configs::from_entries(history).ok_or(DecodeError::Invalid {
        what: "memberships",
        reason: "none, or not in slot order",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos::replica::Change;
    use paxos::rng::Rng;

    fn change(rng: &mut Rng) -> Change {
        let id = 1 + rng.below(8);
        match rng.below(4) {
            0 => Change::Add {
                id,
                info: Bytes::from(format!("10.0.0.{id}:7000")),
                promote: rng.chance(0.5),
            },
            1 => Change::Promote { id },
            2 => Change::Remove { id },
            _ => Change::Replace {
                old: id,
                new: 1 + rng.below(8),
            },
        }
    }

    #[test]
    fn memberships_round_trip_and_every_cut_is_an_error() {
        let mut rng = Rng::new(4);
        for _ in 0..200 {
            let voters: Vec<u64> = (1..=1 + rng.below(5)).collect();
            let mut configs = Configs::new(Membership::founding(voters, 1 + rng.below(64)));
            let mut slot = Slot(rng.below(10));
            for _ in 0..rng.below(6) {
                slot += 1 + rng.below(5);
                configs.note_change(slot, &change(&mut rng));
            }
            let full = encode(&configs);
            assert_eq!(decode(&full), Ok(configs));
            for len in 0..full.len() {
                assert!(decode(&full.slice(..len)).is_err());
            }
        }
        // A window that slot arithmetic could not take is refused.
        for alpha in [0, ALPHA_MAX + 1, u64::MAX] {
            let mut bad = Membership::founding([1], 1);
            bad.alpha = alpha;
            let record = encode(&Configs::new(bad));
            assert!(matches!(
                decode(&record),
                Err(DecodeError::Invalid { what: "alpha", .. })
            ));
        }
        for _ in 0..20_000 {
            let len = rng.below(40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if !bytes.is_empty() {
                bytes[0] = CLUSTER_FORMAT;
            }
            let _ = decode(&Bytes::from(bytes));
        }
    }
}
