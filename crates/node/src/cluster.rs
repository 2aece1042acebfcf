//! Where the members are, and what a node keeps of its cluster beside the
//! log.
//!
//! The membership itself lives in the replicated log and in snapshots
//! (`paxos::replica::membership`); a member's entry carries opaque `info`,
//! which the node fills with the member's addresses ([`Addrs`]). Two things
//! are not in the log and live in `DIR/cluster` ([`ClusterFile`]), written
//! once, durably, before the node first speaks to a peer:
//!
//! - the founding voters and their addresses, from `--members`, for a node
//!   that bootstrapped the cluster (the log's first slots are governed by
//!   them, and `--members` may later be edited or dropped: the file wins);
//! - for a node that joined with `--join`, the memberships and addresses a
//!   member told it, which govern until a snapshot or the log says more.
//!
//! The same record answers a joining node's request on the peer port: the
//! memberships the answering member knows, and every address it knows.
//!
//! # The cluster id
//!
//! A cluster is named by a random 128-bit id made when it is founded, kept in
//! `DIR/cluster` by every member and checked in every peer handshake
//! (`crate::net`), so that a node never joins or answers a cluster other
//! than its own, even when addresses are reused. The founder with the lowest
//! id makes it on its first start; every other founder asks that one for
//! it before its own first start completes, a joining node is told it with
//! the membership, and a node that rejoins asks the members. A data
//! directory written before ids existed (format 1) gets one the same way.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};
use codec::{DecodeError, Reader, crc32c, put_bytes, put_count, put_varint};
use paxos::NodeId;
use paxos::replica::Configs;

use crate::config::NODE_ID_MAX;
use crate::datadir::CLUSTER_FILE;

/// Format 2 added the cluster id, format 3 the slot of a restored backup;
/// formats 1 and 2 are still read.
const CLUSTER_FILE_FORMAT: u8 = 3;
/// Longest address kept.
const ADDR_BYTES_MAX: usize = 512;

/// A member's addresses: where peers reach it, and where clients do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Addrs {
    pub peer: String,
    pub client: String,
}

impl Addrs {
    /// The form kept in a membership entry's `info`.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.peer.len() + self.client.len() + 4);
        put_bytes(&mut out, self.peer.as_bytes());
        put_bytes(&mut out, self.client.as_bytes());
        out.freeze()
    }

    /// Decodes [`Addrs::encode`]; `None` for anything else (a founder's
    /// empty info, or info written by another host).
    pub fn decode(info: &[u8]) -> Option<Addrs> {
        let mut r = Reader::new(info);
        let peer = r.utf8("peer address").ok()?.to_owned();
        let client = r.utf8("client address").ok()?.to_owned();
        r.finish().ok()?;
        (!peer.is_empty()).then_some(Addrs { peer, client })
    }
}

/// The name of one cluster (see the module notes). Never zero: zero on the
/// wire means "no cluster yet".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(u128);

impl ClusterId {
    /// A fresh random id. The randomness is the operating system's, through
    /// the standard library's hash keys: each `RandomState` is seeded from
    /// it, so hashing the time under two fresh states yields 128 bits no
    /// other cluster will draw.
    pub fn generate() -> ClusterId {
        use std::hash::{BuildHasher, Hasher};
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut halves = [0u64; 2];
        for half in &mut halves {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(now);
            h.write_u32(std::process::id());
            *half = h.finish();
        }
        let id = u128::from(halves[0]) << 64 | u128::from(halves[1]);
        ClusterId(id.max(1))
    }

    /// The id from its wire form; `None` for zero.
    pub fn from_u128(id: u128) -> Option<ClusterId> {
        (id != 0).then_some(ClusterId(id))
    }

    pub fn as_u128(self) -> u128 {
        self.0
    }
}

impl std::fmt::Display for ClusterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The wire form of an optional id: zero for none.
pub fn id_on_wire(id: Option<ClusterId>) -> u128 {
    id.map_or(0, ClusterId::as_u128)
}

/// What `DIR/cluster` holds, and what a member tells a joining node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFile {
    /// The cluster's id; `None` only in a file of format 1, until the node
    /// learns or makes one.
    pub id: Option<ClusterId>,
    /// The window α of the cluster, fixed when it was founded.
    pub alpha: u64,
    /// The founding voters; empty for a node that joined.
    pub founders: Vec<NodeId>,
    /// Every address known, by member id.
    pub book: BTreeMap<NodeId, Addrs>,
    /// The memberships a member told a joining node (`host::cluster`'s
    /// encoding).
    pub configs: Option<Bytes>,
    /// The cluster was founded from a backup (`crate::backup`) of this
    /// slot: its founders start from the backup's snapshot, and a founder
    /// with an empty data directory must not join them (it would vote on
    /// slots the others hold as chosen without ever having seen them).
    pub restored: Option<u64>,
}

/// Why `DIR/cluster` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterFileError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "{path} cannot be read ({reason}); if a newer release ran this node, start that release again, otherwise restore the file from a copy of this node's data directory"
    )]
    Damaged { path: String, reason: String },
}

impl ClusterFile {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(256);
        out.put_u8(CLUSTER_FILE_FORMAT);
        out.put_u128(id_on_wire(self.id));
        put_varint(&mut out, self.alpha);
        put_count(&mut out, self.founders.len());
        for &id in &self.founders {
            put_varint(&mut out, id);
        }
        put_count(&mut out, self.book.len());
        for (&id, addrs) in &self.book {
            put_varint(&mut out, id);
            put_bytes(&mut out, addrs.peer.as_bytes());
            put_bytes(&mut out, addrs.client.as_bytes());
        }
        match &self.configs {
            Some(configs) => {
                out.put_u8(1);
                put_bytes(&mut out, configs);
            }
            None => out.put_u8(0),
        }
        match self.restored {
            Some(slot) => {
                out.put_u8(1);
                put_varint(&mut out, slot);
            }
            None => out.put_u8(0),
        }
        let crc = crc32c(&out);
        out.put_u32(crc);
        out.freeze()
    }

    /// Decodes [`ClusterFile::encode`], checking its checksum and every id
    /// and address; never panics.
    pub fn decode(input: &Bytes) -> Result<ClusterFile, DecodeError> {
        let invalid = |what, reason| DecodeError::Invalid { what, reason };
        let Some(body_len) = input.len().checked_sub(4) else {
            return Err(invalid("cluster record", "too short"));
        };
        let (body, crc) = input.split_at(body_len);
        if crc32c(body) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(invalid("cluster record", "checksum mismatch"));
        }
        let mut r = Reader::new(body);
        let format = r.u8("cluster record format")?;
        if !(1..=CLUSTER_FILE_FORMAT).contains(&format) {
            return Err(DecodeError::UnknownFormat {
                what: "cluster record",
                found: format,
                expected: CLUSTER_FILE_FORMAT,
            });
        }
        let cluster_id = if format >= 2 {
            let bytes = r.take("the cluster id", 16)?;
            let mut raw = [0u8; 16];
            raw.copy_from_slice(bytes);
            ClusterId::from_u128(u128::from_be_bytes(raw))
        } else {
            None
        };
        let id = |r: &mut Reader<'_>| -> Result<NodeId, DecodeError> {
            let id = r.varint("a member id")?;
            if id == 0 || id > NODE_ID_MAX {
                return Err(invalid("a member id", "outside 1..=65535"));
            }
            Ok(id)
        };
        let alpha = r.varint("alpha")?;
        if alpha == 0 || alpha > paxos::replica::ALPHA_MAX {
            return Err(invalid("alpha", "outside 1..=1048576"));
        }
        let n = r.count("founders", 1)?;
        let mut founders = Vec::with_capacity(n);
        for _ in 0..n {
            founders.push(id(&mut r)?);
        }
        let n = r.count("addresses", 3)?;
        let mut book = BTreeMap::new();
        for _ in 0..n {
            let member = id(&mut r)?;
            let peer = r.utf8("a peer address")?.to_owned();
            let client = r.utf8("a client address")?.to_owned();
            if peer.len() > ADDR_BYTES_MAX || client.len() > ADDR_BYTES_MAX {
                return Err(invalid("an address", "too long"));
            }
            book.insert(member, Addrs { peer, client });
        }
        let configs = if r.bool("memberships present")? {
            let bytes = input.slice_ref(r.bytes("memberships")?);
            host::cluster::decode(&bytes)?;
            Some(bytes)
        } else {
            None
        };
        let restored = if format >= 3 && r.bool("restored from a backup")? {
            Some(r.varint("the slot of the backup")?)
        } else {
            None
        };
        r.finish()?;
        Ok(ClusterFile {
            id: cluster_id,
            alpha,
            founders,
            book,
            configs,
            restored,
        })
    }

    /// The memberships a joining node was told, decoded.
    pub fn joined_configs(&self) -> Option<Configs> {
        // Checked when decoded.
        self.configs
            .as_ref()
            .and_then(|bytes| host::cluster::decode(bytes).ok())
    }

    /// Reads `DIR/cluster`; `None` if the node never wrote one.
    pub fn load(dir: &Path) -> Result<Option<ClusterFile>, ClusterFileError> {
        let path = dir.join(CLUSTER_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ClusterFileError::Io {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        ClusterFile::decode(&bytes)
            .map(Some)
            .map_err(|e| ClusterFileError::Damaged {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
    }
}

/// What node `me` tells a joining node: the memberships of `configs` and
/// every address known; nothing once `me` was removed (its membership is
/// out of date, and the joining node asks another member).
pub fn directory(file: &ClusterFile, configs: &Configs, me: NodeId) -> Bytes {
    if configs.latest().retired.contains(&me) {
        return Bytes::new();
    }
    ClusterFile {
        id: file.id,
        alpha: configs.alpha(),
        founders: file.founders.clone(),
        book: address_book(file, configs),
        configs: Some(host::cluster::encode(configs)),
        restored: file.restored,
    }
    .encode()
}

/// Every address the node knows: those of `file`, then those the
/// memberships of `configs` carry (newer ones win).
pub fn address_book(file: &ClusterFile, configs: &Configs) -> BTreeMap<NodeId, Addrs> {
    let mut book = file.book.clone();
    for (_, membership) in configs.entries() {
        for (&id, member) in &membership.members {
            if let Some(addrs) = Addrs::decode(&member.info) {
                book.insert(id, addrs);
            }
        }
    }
    book
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos::replica::Membership;

    fn sample() -> ClusterFile {
        let mut book = BTreeMap::new();
        book.insert(
            1,
            Addrs {
                peer: "127.0.0.1:7001".into(),
                client: "127.0.0.1:6001".into(),
            },
        );
        book.insert(
            2,
            Addrs {
                peer: "127.0.0.1:7002".into(),
                client: String::new(),
            },
        );
        ClusterFile {
            id: Some(ClusterId::generate()),
            alpha: 8,
            founders: vec![1, 2],
            book,
            configs: Some(host::cluster::encode(&Configs::new(Membership::founding(
                [1, 2],
                8,
            )))),
            restored: Some(1234),
        }
    }

    #[test]
    fn the_cluster_record_round_trips_and_refuses_damage() {
        let file = sample();
        let bytes = file.encode();
        assert_eq!(ClusterFile::decode(&bytes).expect("decodes"), file);
        assert!(file.joined_configs().is_some());
        // Every single flipped bit and every truncation is refused.
        for i in 0..bytes.len() {
            let mut bad = bytes.to_vec();
            bad[i] ^= 0x10;
            assert!(ClusterFile::decode(&Bytes::from(bad)).is_err(), "bit {i}");
            assert!(ClusterFile::decode(&bytes.slice(..i)).is_err(), "cut {i}");
        }
    }

    #[test]
    fn a_record_of_format_1_reads_without_a_cluster_id() {
        // Format 1, as the release before cluster ids wrote it: alpha 8,
        // founders [1, 2], no addresses, no memberships.
        let mut old = BytesMut::new();
        old.put_u8(1);
        put_varint(&mut old, 8);
        put_count(&mut old, 2);
        put_varint(&mut old, 1);
        put_varint(&mut old, 2);
        put_count(&mut old, 0);
        old.put_u8(0);
        let crc = crc32c(&old);
        old.put_u32(crc);
        let file = ClusterFile::decode(&old.freeze()).expect("format 1 is read");
        assert_eq!(file.id, None);
        assert_eq!(file.founders, vec![1, 2]);
        // Written again, it is the current format and keeps the id it was given.
        let named = ClusterFile {
            id: Some(ClusterId::generate()),
            ..file
        };
        let again = ClusterFile::decode(&named.encode()).expect("decodes");
        assert_eq!(again, named);
        assert_eq!(named.encode()[0], CLUSTER_FILE_FORMAT);
    }

    #[test]
    fn cluster_ids_are_never_zero_and_differ() {
        let ids: std::collections::BTreeSet<ClusterId> =
            (0..1000).map(|_| ClusterId::generate()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.as_u128() != 0));
        let id = *ids.iter().next().expect("a thousand ids");
        assert_eq!(id.to_string().len(), 32);
        assert_eq!(ClusterId::from_u128(id.as_u128()), Some(id));
        assert_eq!(ClusterId::from_u128(0), None);
    }

    #[test]
    fn addresses_in_member_info_round_trip_and_override_the_file() {
        let addrs = Addrs {
            peer: "10.0.0.9:7009".into(),
            client: "10.0.0.9:6009".into(),
        };
        assert_eq!(Addrs::decode(&addrs.encode()), Some(addrs.clone()));
        assert_eq!(Addrs::decode(b""), None, "a founder's info is empty");
        assert_eq!(Addrs::decode(b"node-3"), None);
        let file = sample();
        let mut m = Membership::founding([1, 2], 8);
        m = m
            .apply(&paxos::replica::Change::Add {
                id: 9,
                info: addrs.encode(),
                promote: true,
            })
            .expect("valid");
        let book = address_book(&file, &Configs::new(m));
        assert_eq!(book.get(&9), Some(&addrs));
        assert_eq!(book.get(&1), file.book.get(&1));
    }
}
