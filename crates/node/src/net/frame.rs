//! Frames on a peer connection, and the handshake that opens one.
//!
//! A frame is a `u32` big-endian payload length followed by the payload. The
//! length is checked against a limit before anything is allocated, so a peer
//! that sends garbage costs at most one limit's worth of memory (and the
//! handshake, which comes first from strangers, has a limit of its own of a
//! few kilobytes).
//!
//! The handshake is the first frame in each direction:
//!
//! ```text
//! magic "PRLM" | highest peer protocol u8 | wire format u8
//! | lowest peer protocol u8 | cluster id u128 BE | from u64 BE | to u64 BE
//! | client address (u16 BE length, UTF-8) | HTTP address (u16 BE length, UTF-8)
//! ```
//!
//! `from` is the sender, `to` the node it believes it is talking to, so an
//! address that points at the wrong node is caught on both ends. A node
//! that is joining does not know who answers at the address it was given:
//! it sends `to` 0 and may then only ask for the membership (a join frame).
//! The cluster id (`crate::cluster::ClusterId`) must be the receiver's own;
//! only a node that has none yet (joining, or founding) sends 0, and it too
//! may then only ask for the membership.
//!
//! Versions are negotiated: the connecting side offers the range of peer
//! protocols it speaks, the accepting side answers with the highest both
//! speak (its reply's range is that one version), or refuses when the
//! ranges do not meet. A release speaks its own protocol and the one
//! before, so a rolling upgrade runs with members of both. Protocol 3 is the
//! first that negotiates; nodes of protocol 2 and before are refused with
//! the versions named, and a cluster of them is upgraded by stopping it.
//!
//! Every later frame starts with a kind byte ([`FrameKind`]) and then holds
//! one payload of that kind:
//!
//! | kind | payload |
//! |---|---|
//! | 1, message | one [`storage::wire::encode_message`] payload |
//! | 2, snapshot | one [`super::snapshot::SnapshotFrame`] (a snapshot transfer) |
//! | 3, join | empty from a node that asks; the answer is a status byte (1 if the member is rejoining) and a `crate::cluster::ClusterFile` |
//!
//! The first frame after the handshake decides what the connection is for:
//! replica messages flowing one way, or one snapshot transfer flowing both
//! ways (see [`super::snapshot`]). Protocol 1 had no kind byte.

use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use paxos::NodeId;
use tokio::io::{AsyncRead, AsyncReadExt};

use codec::{DecodeError, Reader};
use storage::wire;

/// The first bytes of every handshake.
pub const HANDSHAKE_MAGIC: [u8; 4] = *b"PRLM";
/// Version of the framing and handshake. Bumped on any incompatible change
/// (2: every frame after the handshake starts with its kind; 3: the
/// handshake carries the cluster id and a range of versions; 4: the
/// members prove they hold the cluster secret and frames carry tags, see
/// `super::auth`).
pub const PEER_PROTOCOL: u8 = 4;
/// The oldest peer protocol this release still speaks.
pub const PEER_PROTOCOL_MIN: u8 = 3;
/// Largest handshake frame accepted: it arrives before the sender is known.
pub const HANDSHAKE_BYTES_MAX: u32 = 4096;
/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;
/// Longest address string carried in a handshake.
const ADDR_BYTES_MAX: usize = 512;

/// Why a frame or handshake was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u32, max: u32 },
    #[error("empty frame")]
    Empty,
    #[error("not a parliament peer (bad handshake magic)")]
    BadMagic,
    #[error(
        "peer speaks protocols {their_lowest}..={theirs} with wire format {their_wire}; this node speaks protocols {PEER_PROTOCOL_MIN}..={PEER_PROTOCOL} with wire format {}: run releases at most one apart, or stop every node to upgrade across more",
        wire::WIRE_FORMAT
    )]
    Version {
        their_lowest: u8,
        theirs: u8,
        their_wire: u8,
    },
    #[error(
        "peer belongs to cluster {theirs}, this node to cluster {mine}: a node never talks to another cluster (a reused address, a copied data directory, a restored backup, or a founder that lost its data directory and was started as new, which must be started with --rejoin instead)"
    )]
    OtherCluster { theirs: String, mine: String },
    #[error("malformed handshake: {0}")]
    Handshake(&'static str),
    #[error("{0}")]
    Auth(String),
    #[error("undecodable message: {0}")]
    Wire(#[from] DecodeError),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("a {got} frame on a connection that carries {expected} frames")]
    WrongKind {
        expected: &'static str,
        got: &'static str,
    },
}

/// What a frame after the handshake carries; its first payload byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A replica message.
    Message,
    /// A message of a snapshot transfer.
    Snapshot,
    /// A joining node asks for the membership; the answer comes back on
    /// the same connection.
    Join,
}

impl FrameKind {
    pub(crate) fn byte(self) -> u8 {
        match self {
            FrameKind::Message => 1,
            FrameKind::Snapshot => 2,
            FrameKind::Join => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Message => "message",
            FrameKind::Snapshot => "snapshot",
            FrameKind::Join => "join",
        }
    }
}

/// Bytes a frame of a kind adds to its payload: the length and the kind.
pub const KIND_FRAME_OVERHEAD_BYTES: usize = FRAME_HEADER_BYTES + 1;

/// Appends one frame of `kind` holding `payload` to `out`. The frame's
/// length counts the kind byte, so the payload must be at least one byte
/// below the frame limit.
pub fn put_kind_frame(out: &mut BytesMut, kind: FrameKind, payload: &[u8]) {
    // Callers check payloads against the frame limit (a u32) first.
    out.put_u32(payload.len() as u32 + 1);
    out.put_u8(kind.byte());
    out.put_slice(payload);
}

/// Splits a frame read after the handshake into its kind and payload.
pub fn split_kind(frame: Bytes) -> Result<(FrameKind, Bytes), FrameError> {
    let kind = match frame.first() {
        None => return Err(FrameError::Empty),
        Some(1) => FrameKind::Message,
        Some(2) => FrameKind::Snapshot,
        Some(3) => FrameKind::Join,
        Some(&other) => return Err(FrameError::UnknownKind(other)),
    };
    Ok((kind, frame.slice(1..)))
}

/// The opening frame of a peer connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// The peer protocols the sender speaks; in a reply, the one agreed.
    pub lowest: u8,
    pub highest: u8,
    /// The sender's cluster id; 0 for a node that has none yet.
    pub cluster: u128,
    pub from: NodeId,
    pub to: NodeId,
    pub client_addr: String,
    pub http_addr: String,
}

impl Handshake {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_slice(&HANDSHAKE_MAGIC);
        out.put_u8(self.highest);
        out.put_u8(wire::WIRE_FORMAT);
        out.put_u8(self.lowest);
        out.put_u128(self.cluster);
        out.put_u64(self.from);
        out.put_u64(self.to);
        for addr in [&self.client_addr, &self.http_addr] {
            let bytes = &addr.as_bytes()[..addr.len().min(ADDR_BYTES_MAX)];
            // At most ADDR_BYTES_MAX, far below u16::MAX.
            out.put_u16(bytes.len() as u16);
            out.put_slice(bytes);
        }
        out.freeze()
    }

    pub fn decode(input: &[u8]) -> Result<Handshake, FrameError> {
        let mut r = Reader::new(input);
        let short = |_| FrameError::Handshake("too short");
        if r.take("the magic", 4).map_err(short)? != HANDSHAKE_MAGIC {
            return Err(FrameError::BadMagic);
        }
        let version = r.take("the versions", 2).map_err(short)?;
        let (highest, their_wire) = (version[0], version[1]);
        if highest < PEER_PROTOCOL_MIN || their_wire != wire::WIRE_FORMAT {
            // Older handshakes have no range: what follows is not ours to read.
            return Err(FrameError::Version {
                their_lowest: highest,
                theirs: highest,
                their_wire,
            });
        }
        let lowest = r.u8("the lowest version").map_err(short)?;
        let cluster = r.take("the cluster id", 16).map_err(short)?;
        let mut raw = [0u8; 16];
        raw.copy_from_slice(cluster);
        let cluster = u128::from_be_bytes(raw);
        let from = r.u64_be("the sender").map_err(short)?;
        let to = r.u64_be("the receiver").map_err(short)?;
        let client_addr = addr(&mut r)?;
        let http_addr = addr(&mut r)?;
        if r.finish().is_err() {
            return Err(FrameError::Handshake("bytes left over"));
        }
        if lowest > highest {
            return Err(FrameError::Handshake("an empty range of versions"));
        }
        Ok(Handshake {
            lowest,
            highest,
            cluster,
            from,
            to,
            client_addr,
            http_addr,
        })
    }

    /// The highest peer protocol both this release and the sender speak.
    pub fn agree(&self) -> Result<u8, FrameError> {
        self.agree_within(PEER_PROTOCOL_MIN, PEER_PROTOCOL)
    }

    /// The highest peer protocol both the sender and a node that speaks
    /// `lowest..=highest` speak.
    pub fn agree_within(&self, lowest: u8, highest: u8) -> Result<u8, FrameError> {
        let top = self.highest.min(highest);
        if top < self.lowest.max(lowest) {
            return Err(FrameError::Version {
                their_lowest: self.lowest,
                theirs: self.highest,
                their_wire: wire::WIRE_FORMAT,
            });
        }
        Ok(top)
    }

    /// Whether the sender belongs to cluster `mine`; a sender without a
    /// cluster is let through only when `joining`.
    pub fn check_cluster(&self, mine: u128, joining: bool) -> Result<(), FrameError> {
        if self.cluster == mine || (self.cluster == 0 && joining) {
            return Ok(());
        }
        let name = |id: u128| {
            if id == 0 {
                "none yet".to_owned()
            } else {
                format!("{id:032x}")
            }
        };
        Err(FrameError::OtherCluster {
            theirs: name(self.cluster),
            mine: name(mine),
        })
    }
}

fn addr(r: &mut Reader<'_>) -> Result<String, FrameError> {
    let len = r
        .u16_be("an address length")
        .map_err(|_| FrameError::Handshake("too short"))? as usize;
    if len > ADDR_BYTES_MAX {
        return Err(FrameError::Handshake("address too long"));
    }
    let bytes = r
        .take("an address", len)
        .map_err(|_| FrameError::Handshake("too short"))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| FrameError::Handshake("address is not UTF-8"))
}

/// Appends one frame holding `payload` to `out`.
pub fn put_frame(out: &mut BytesMut, payload: &[u8]) {
    // Callers check payloads against the frame limit (a u32) first.
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
}

/// Reads one frame of at most `max` bytes. `Ok(None)` when the peer closed
/// the connection between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: u32,
) -> Result<Option<Bytes>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(header);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let mut payload = BytesMut::zeroed(len as usize);
    r.read_exact(&mut payload).await?;
    Ok(Some(payload.freeze()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly, which is its job
mod tests {
    use super::*;

    fn hello() -> Handshake {
        Handshake {
            lowest: PEER_PROTOCOL_MIN,
            highest: PEER_PROTOCOL,
            cluster: 0x1234_5678_9abc_def0_0fed_cba9_8765_4321,
            from: 2,
            to: 3,
            client_addr: "127.0.0.1:6380".to_owned(),
            http_addr: "127.0.0.1:8380".to_owned(),
        }
    }

    #[test]
    fn a_handshake_round_trips() {
        assert_eq!(Handshake::decode(&hello().encode()).unwrap(), hello());
    }

    #[test]
    fn versions_are_agreed_within_the_ranges_both_speak() {
        let mut newer = hello();
        newer.highest = PEER_PROTOCOL + 1;
        let agreed = Handshake::decode(&newer.encode()).unwrap().agree().unwrap();
        assert_eq!(agreed, PEER_PROTOCOL, "the highest both speak");
        let mut far = hello();
        far.lowest = PEER_PROTOCOL + 1;
        far.highest = PEER_PROTOCOL + 2;
        assert!(matches!(
            Handshake::decode(&far.encode()).unwrap().agree(),
            Err(FrameError::Version { their_lowest, .. }) if their_lowest == PEER_PROTOCOL + 1
        ));
    }

    #[test]
    fn a_handshake_of_another_cluster_is_refused() {
        let h = hello();
        assert!(h.check_cluster(h.cluster, false).is_ok());
        let err = h.check_cluster(7, false).unwrap_err();
        assert!(matches!(err, FrameError::OtherCluster { .. }));
        assert!(
            err.to_string().contains(&format!("{:032x}", h.cluster)),
            "{err}"
        );
        let stranger = Handshake {
            cluster: 0,
            ..hello()
        };
        assert!(
            stranger.check_cluster(7, true).is_ok(),
            "a joining node has none yet"
        );
        assert!(stranger.check_cluster(7, false).is_err());
    }

    #[test]
    fn a_handshake_from_another_version_is_refused() {
        // Protocol 2's handshake: no range, no cluster id.
        let mut old = BytesMut::new();
        old.put_slice(&HANDSHAKE_MAGIC);
        old.put_u8(2);
        old.put_u8(wire::WIRE_FORMAT);
        old.put_u64(2);
        old.put_u64(3);
        old.put_u16(0);
        old.put_u16(0);
        let err = Handshake::decode(&old).unwrap_err();
        assert!(
            matches!(err, FrameError::Version { theirs: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("protocols 2..=2"), "{err}");
        let mut bytes = hello().encode().to_vec();
        bytes[0] = b'G';
        assert!(matches!(
            Handshake::decode(&bytes),
            Err(FrameError::BadMagic)
        ));
    }

    #[test]
    fn every_truncation_of_a_handshake_is_an_error() {
        let bytes = hello().encode();
        for len in 0..bytes.len() {
            assert!(Handshake::decode(&bytes[..len]).is_err(), "prefix of {len}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(Handshake::decode(&longer).is_err());
    }

    #[tokio::test]
    async fn kinded_frames_round_trip_and_unknown_kinds_are_refused() {
        let mut buf = BytesMut::new();
        put_kind_frame(&mut buf, FrameKind::Message, b"m");
        put_kind_frame(&mut buf, FrameKind::Snapshot, b"snap");
        let mut r: &[u8] = &buf;
        let first = read_frame(&mut r, 16).await.unwrap().unwrap();
        assert_eq!(
            split_kind(first).unwrap(),
            (FrameKind::Message, Bytes::from_static(b"m"))
        );
        let second = read_frame(&mut r, 16).await.unwrap().unwrap();
        assert_eq!(
            split_kind(second).unwrap(),
            (FrameKind::Snapshot, Bytes::from_static(b"snap"))
        );
        assert!(matches!(
            split_kind(Bytes::from_static(&[9, 1])),
            Err(FrameError::UnknownKind(9))
        ));
        assert!(matches!(split_kind(Bytes::new()), Err(FrameError::Empty)));
    }

    #[tokio::test]
    async fn frames_are_read_back_and_limits_are_checked_before_reading() {
        let mut buf = BytesMut::new();
        put_frame(&mut buf, b"one");
        put_frame(&mut buf, b"two!");
        let mut r: &[u8] = &buf;
        assert_eq!(read_frame(&mut r, 16).await.unwrap().unwrap(), "one");
        assert_eq!(read_frame(&mut r, 16).await.unwrap().unwrap(), "two!");
        assert!(read_frame(&mut r, 16).await.unwrap().is_none());

        // "GET " read as a length is about a gigabyte: refused unread.
        let mut r: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(
            read_frame(&mut r, 1 << 20).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut r: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(
            read_frame(&mut r, 16).await,
            Err(FrameError::Empty)
        ));
        // A frame cut short is an error, not a clean close.
        let mut r: &[u8] = &[0, 0, 0, 9, 1, 2];
        assert!(matches!(
            read_frame(&mut r, 16).await,
            Err(FrameError::Io(_))
        ));
    }
}
