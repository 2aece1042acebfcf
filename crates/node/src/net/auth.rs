//! Members prove to each other that they hold the cluster secret, and
//! every frame after that proof carries a tag only a holder could make.
//!
//! After the hellos of peer protocol 4 (see `super::frame`), the two ends
//! of a connection exchange three small frames:
//!
//! ```text
//! acceptor → dialer   mode (0: no secret, 1: secret), nonce A (16 random bytes)
//! dialer → acceptor   mode, nonce D, and with a secret: proof D
//! acceptor → dialer   with a secret: proof A
//! ```
//!
//! A proof is HMAC-SHA256 under the secret of a label naming the side, the
//! cluster id, both member ids, the protocol and both nonces, so it cannot
//! be replayed on another connection, in the other direction, or for
//! another pair of members. Each side then derives one key per direction
//! the same way, and every frame a side sends carries the HMAC-SHA256 of
//! its sequence number on the connection and its bytes: a frame forged,
//! altered, replayed, reordered or dropped from the middle fails the check,
//! and the connection is closed before the frame has any effect.
//!
//! Without a secret on either side the exchange says so and frames carry
//! no tag. A node with a secret refuses a peer without one (and the other
//! way round), and a peer that speaks only protocol 3, which cannot prove
//! anything, with a message that says what to do.

use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};
use paxos::NodeId;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Duration, timeout};

use super::frame::{FRAME_HEADER_BYTES, FrameError, FrameKind, put_frame, read_frame};

/// The shortest secret accepted: 128 bits.
pub const SECRET_BYTES_MIN: usize = 16;
/// The longest secret file read.
const SECRET_BYTES_MAX: usize = 4096;
/// Bytes of a nonce, of a proof and of a frame's tag.
const NONCE_BYTES: usize = 16;
const TAG_BYTES: usize = 32;
/// The largest frame of the exchange.
const AUTH_FRAME_BYTES_MAX: u32 = (1 + NONCE_BYTES + TAG_BYTES) as u32;
/// The first peer protocol with this exchange.
pub const AUTH_PROTOCOL: u8 = 4;

/// The secret every member of a cluster holds (`--cluster-secret-file`).
#[derive(Clone)]
pub struct ClusterSecret {
    key: hmac::Key,
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

/// Why a secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the cluster secret file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the cluster secret in {path} is {len} bytes; it needs at least {SECRET_BYTES_MIN} (for example 32 random bytes in hex: `head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > FILE`)"
    )]
    TooShort { path: String, len: usize },
    #[error("the cluster secret file {path} is longer than {SECRET_BYTES_MAX} bytes")]
    TooLong { path: String },
}

impl ClusterSecret {
    /// The secret in `bytes`; trailing whitespace (a final newline) is not
    /// part of it.
    pub fn from_bytes(bytes: &[u8]) -> Option<ClusterSecret> {
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let secret = bytes.get(..end)?;
        (secret.len() >= SECRET_BYTES_MIN).then(|| ClusterSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// Reads the secret file at `path`.
    pub fn load(path: &Path) -> Result<ClusterSecret, SecretError> {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| SecretError::Io {
            path: name.clone(),
            source,
        })?;
        if bytes.len() > SECRET_BYTES_MAX {
            return Err(SecretError::TooLong { path: name });
        }
        ClusterSecret::from_bytes(&bytes).ok_or_else(|| SecretError::TooShort {
            path: name,
            len: bytes.trim_ascii_end().len(),
        })
    }

    fn sign(&self, label: &[u8], t: &Transcript) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(label);
        t.feed(&mut ctx);
        ctx.sign()
    }
}

/// What both ends of one connection agree on before they prove anything.
#[derive(Clone, Copy, Debug)]
pub struct Transcript {
    pub cluster: u128,
    pub dialer: NodeId,
    pub acceptor: NodeId,
    pub protocol: u8,
    pub nonce_acceptor: [u8; NONCE_BYTES],
    pub nonce_dialer: [u8; NONCE_BYTES],
}

impl Transcript {
    fn feed(&self, ctx: &mut hmac::Context) {
        ctx.update(&self.cluster.to_be_bytes());
        ctx.update(&self.dialer.to_be_bytes());
        ctx.update(&self.acceptor.to_be_bytes());
        ctx.update(&[self.protocol]);
        ctx.update(&self.nonce_acceptor);
        ctx.update(&self.nonce_dialer);
    }
}

const PROOF_DIALER: &[u8] = b"parliament peer proof: dialer";
const PROOF_ACCEPTOR: &[u8] = b"parliament peer proof: acceptor";
const FRAMES_DIALER: &[u8] = b"parliament peer frames: dialer to acceptor";
const FRAMES_ACCEPTOR: &[u8] = b"parliament peer frames: acceptor to dialer";

/// The frames of one direction of a connection: sealed with a tag when the
/// members hold a secret, plain otherwise.
#[derive(Debug)]
pub struct Seal {
    key: Option<hmac::Key>,
    seq: u64,
}

impl Seal {
    /// Frames without tags (no secret on either side, or protocol 3).
    pub fn plain() -> Seal {
        Seal { key: None, seq: 0 }
    }

    fn keyed(secret: &ClusterSecret, label: &[u8], t: &Transcript) -> Seal {
        let derived = secret.sign(label, t);
        Seal {
            key: Some(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())),
            seq: 0,
        }
    }

    /// Bytes a frame gains.
    pub fn overhead(&self) -> usize {
        if self.key.is_some() { TAG_BYTES } else { 0 }
    }

    fn tag(key: &hmac::Key, seq: u64, kind: u8, payload: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(&seq.to_be_bytes());
        ctx.update(&[kind]);
        ctx.update(payload);
        ctx.sign()
    }

    /// Appends one frame of `kind` holding `payload` (and its tag) to
    /// `out`. The caller checks the payload against the frame limit first.
    pub fn put_kind_frame(&mut self, out: &mut BytesMut, kind: FrameKind, payload: &[u8]) {
        let overhead = self.overhead();
        out.reserve(FRAME_HEADER_BYTES + 1 + payload.len() + overhead);
        // Callers keep payloads far below u32::MAX.
        out.put_u32((1 + payload.len() + overhead) as u32);
        out.put_u8(kind.byte());
        out.put_slice(payload);
        if let Some(key) = &self.key {
            out.put_slice(Self::tag(key, self.seq, kind.byte(), payload).as_ref());
            self.seq += 1;
        }
    }

    /// Checks and strips the tag of a frame read from the connection: the
    /// kind byte and payload, as `super::frame::split_kind` takes them.
    pub fn open(&mut self, frame: Bytes) -> Result<Bytes, FrameError> {
        let Some(key) = &self.key else {
            return Ok(frame);
        };
        let Some(body_len) = frame.len().checked_sub(TAG_BYTES).filter(|&n| n > 0) else {
            return Err(FrameError::Auth(
                "a frame too short to carry its tag".to_owned(),
            ));
        };
        let (body, tag) = frame.split_at(body_len);
        let (kind, payload) = (body[0], &body[1..]);
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(&self.seq.to_be_bytes());
        ctx.update(&[kind]);
        ctx.update(payload);
        let expected = ctx.sign();
        if !same(expected.as_ref(), tag) {
            return Err(FrameError::Auth(
                "a frame failed authentication (forged, altered or replayed); the connection is closed"
                    .to_owned(),
            ));
        }
        self.seq += 1;
        Ok(frame.slice(..body_len))
    }
}

/// Whether two tags are equal, in time that does not depend on where they
/// differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn nonce() -> Result<[u8; NONCE_BYTES], FrameError> {
    let mut n = [0u8; NONCE_BYTES];
    SystemRandom::new()
        .fill(&mut n)
        .map_err(|_| FrameError::Auth("the system has no randomness for a nonce".to_owned()))?;
    Ok(n)
}

fn mismatch(mine: bool) -> FrameError {
    FrameError::Auth(if mine {
        "the peer has no cluster secret but this node has one: give every member the same \
         --cluster-secret-file"
            .to_owned()
    } else {
        "the peer requires a cluster secret: start this node with the cluster's \
         --cluster-secret-file"
            .to_owned()
    })
}

/// What a peer of protocol 3 gets from a node with a secret.
pub fn no_auth_in_protocol_3() -> FrameError {
    FrameError::Auth(
        "the peer speaks peer protocol 3, which cannot prove it holds the cluster secret: \
         upgrade every member before giving them --cluster-secret-file"
            .to_owned(),
    )
}

async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    limit: Duration,
) -> Result<(), FrameError> {
    let mut out = BytesMut::with_capacity(payload.len() + FRAME_HEADER_BYTES);
    put_frame(&mut out, payload);
    timeout(limit, w.write_all(&out))
        .await
        .map_err(|_| FrameError::Handshake("the authentication exchange timed out"))??;
    Ok(())
}

async fn receive<R: AsyncRead + Unpin>(r: &mut R, limit: Duration) -> Result<Bytes, FrameError> {
    match timeout(limit, read_frame(r, AUTH_FRAME_BYTES_MAX)).await {
        Ok(Ok(Some(frame))) => Ok(frame),
        Ok(Ok(None)) => Err(FrameError::Handshake(
            "the peer closed the connection during authentication",
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(FrameError::Handshake(
            "the authentication exchange timed out",
        )),
    }
}

/// The ids both ends know after the hellos; the nonces are filled in by
/// the exchange.
#[derive(Clone, Copy, Debug)]
pub struct Ends {
    pub cluster: u128,
    pub dialer: NodeId,
    pub acceptor: NodeId,
    pub protocol: u8,
}

impl Ends {
    fn transcript(self, nonce_acceptor: [u8; 16], nonce_dialer: [u8; 16]) -> Transcript {
        Transcript {
            cluster: self.cluster,
            dialer: self.dialer,
            acceptor: self.acceptor,
            protocol: self.protocol,
            nonce_acceptor,
            nonce_dialer,
        }
    }
}

/// The dialer's side of the exchange: the seal of the frames it sends and
/// of those it receives.
pub async fn as_dialer<R, W>(
    r: &mut R,
    w: &mut W,
    secret: Option<&ClusterSecret>,
    ends: Ends,
    limit: Duration,
) -> Result<(Seal, Seal), FrameError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let first = receive(r, limit).await?;
    let [mode, rest @ ..] = &first[..] else {
        return Err(FrameError::Handshake("an empty authentication frame"));
    };
    let nonce_acceptor: [u8; NONCE_BYTES] = rest
        .try_into()
        .map_err(|_| FrameError::Handshake("a malformed authentication frame"))?;
    match (*mode, secret) {
        (0, None) => {
            send(w, &[0], limit).await?;
            return Ok((Seal::plain(), Seal::plain()));
        }
        (1, Some(_)) => {}
        (0 | 1, mine) => {
            // Say who we are before hanging up, so the other side reports
            // the mismatch too.
            let _ = send(w, &[u8::from(mine.is_some())], limit).await;
            return Err(mismatch(mine.is_some()));
        }
        _ => return Err(FrameError::Handshake("an unknown authentication mode")),
    }
    let Some(secret) = secret else {
        return Err(mismatch(false));
    };
    let nonce_dialer = nonce()?;
    let t = ends.transcript(nonce_acceptor, nonce_dialer);
    let mut out = Vec::with_capacity(1 + NONCE_BYTES + TAG_BYTES);
    out.push(1);
    out.extend_from_slice(&nonce_dialer);
    out.extend_from_slice(secret.sign(PROOF_DIALER, &t).as_ref());
    send(w, &out, limit).await?;
    let proof = receive(r, limit).await?;
    if proof.len() == 1 {
        return Err(FrameError::Auth(
            "the peer refused this node's proof of the cluster secret: the members' secrets \
             differ"
                .to_owned(),
        ));
    }
    if !same(secret.sign(PROOF_ACCEPTOR, &t).as_ref(), &proof) {
        return Err(FrameError::Auth(
            "the peer's proof of the cluster secret is wrong: the members' secrets differ"
                .to_owned(),
        ));
    }
    Ok((
        Seal::keyed(secret, FRAMES_DIALER, &t),
        Seal::keyed(secret, FRAMES_ACCEPTOR, &t),
    ))
}

/// The acceptor's side of the exchange: the seal of the frames it receives
/// and of those it sends.
pub async fn as_acceptor<R, W>(
    r: &mut R,
    w: &mut W,
    secret: Option<&ClusterSecret>,
    ends: Ends,
    limit: Duration,
) -> Result<(Seal, Seal), FrameError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let nonce_acceptor = nonce()?;
    let mut first = Vec::with_capacity(1 + NONCE_BYTES);
    first.push(u8::from(secret.is_some()));
    first.extend_from_slice(&nonce_acceptor);
    send(w, &first, limit).await?;
    let answer = receive(r, limit).await?;
    let Some((&mode, rest)) = answer.split_first() else {
        return Err(FrameError::Handshake("an empty authentication frame"));
    };
    let secret = match (mode, secret) {
        (0, None) if rest.is_empty() => return Ok((Seal::plain(), Seal::plain())),
        (1, Some(secret)) => secret,
        (0 | 1, mine) => return Err(mismatch(mine.is_some())),
        _ => return Err(FrameError::Handshake("an unknown authentication mode")),
    };
    if rest.len() != NONCE_BYTES + TAG_BYTES {
        return Err(FrameError::Handshake("a malformed authentication frame"));
    }
    let (nonce_dialer, proof) = rest.split_at(NONCE_BYTES);
    let nonce_dialer: [u8; NONCE_BYTES] = nonce_dialer
        .try_into()
        .map_err(|_| FrameError::Handshake("a malformed authentication frame"))?;
    let t = ends.transcript(nonce_acceptor, nonce_dialer);
    if !same(secret.sign(PROOF_DIALER, &t).as_ref(), proof) {
        // Say so (a proof is never one byte long), then hang up.
        let _ = send(w, &[0], limit).await;
        return Err(FrameError::Auth(
            "the peer's proof of the cluster secret is wrong: the members' secrets differ, or a \
             stranger tried to connect"
                .to_owned(),
        ));
    }
    send(w, secret.sign(PROOF_ACCEPTOR, &t).as_ref(), limit).await?;
    Ok((
        Seal::keyed(secret, FRAMES_DIALER, &t),
        Seal::keyed(secret, FRAMES_ACCEPTOR, &t),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly, which is its job
mod tests {
    use super::*;

    fn secret(s: &str) -> ClusterSecret {
        ClusterSecret::from_bytes(s.as_bytes()).unwrap()
    }

    fn ends() -> Ends {
        Ends {
            cluster: 7,
            dialer: 1,
            acceptor: 2,
            protocol: AUTH_PROTOCOL,
        }
    }

    /// Runs both sides over an in-memory pipe.
    async fn exchange(
        dialer: Option<&ClusterSecret>,
        acceptor: Option<&ClusterSecret>,
    ) -> (
        Result<(Seal, Seal), FrameError>,
        Result<(Seal, Seal), FrameError>,
    ) {
        let (a, b) = tokio::io::duplex(4096);
        let (mut ar, mut aw) = tokio::io::split(a);
        let (mut br, mut bw) = tokio::io::split(b);
        let limit = Duration::from_secs(5);
        tokio::join!(
            as_dialer(&mut ar, &mut aw, dialer, ends(), limit),
            as_acceptor(&mut br, &mut bw, acceptor, ends(), limit),
        )
    }

    #[test]
    fn a_secret_is_long_enough_and_loses_its_final_newline() {
        assert!(ClusterSecret::from_bytes(b"short\n").is_none());
        assert!(ClusterSecret::from_bytes(b"0123456789abcde \n").is_none());
        let a = ClusterSecret::from_bytes(b"0123456789abcdef\n").unwrap();
        let b = ClusterSecret::from_bytes(b"0123456789abcdef").unwrap();
        let t = ends().transcript([1; 16], [2; 16]);
        assert_eq!(
            a.sign(PROOF_DIALER, &t).as_ref(),
            b.sign(PROOF_DIALER, &t).as_ref()
        );
    }

    #[tokio::test]
    async fn members_with_one_secret_seal_frames_that_only_they_can_open() {
        let s = secret("the same secret for all");
        let (d, a) = exchange(Some(&s), Some(&s)).await;
        let ((mut d_send, _), (mut a_recv, _)) = (d.unwrap(), a.unwrap());
        let mut out = BytesMut::new();
        d_send.put_kind_frame(&mut out, FrameKind::Message, b"first");
        d_send.put_kind_frame(&mut out, FrameKind::Message, b"second");
        let frames: Vec<Bytes> = {
            let mut all = out.freeze();
            let mut v = Vec::new();
            while !all.is_empty() {
                let len = u32::from_be_bytes([all[0], all[1], all[2], all[3]]) as usize;
                v.push(all.slice(4..4 + len));
                all = all.slice(4 + len..);
            }
            v
        };
        // Out of order, the second fails; altered, any fails.
        let mut other = Seal::keyed(&s, FRAMES_DIALER, &ends().transcript([0; 16], [0; 16]));
        assert!(
            other.open(frames[0].clone()).is_err(),
            "another connection's key"
        );
        let mut altered = frames[0].to_vec();
        altered[2] ^= 1;
        assert!(a_recv.open(Bytes::from(altered)).is_err());
        let mut fresh = Seal {
            key: a_recv.key.clone(),
            seq: 0,
        };
        assert!(fresh.open(frames[1].clone()).is_err(), "reordered");
        assert_eq!(&fresh.open(frames[0].clone()).unwrap()[1..], b"first");
        assert_eq!(&fresh.open(frames[1].clone()).unwrap()[1..], b"second");
        assert!(fresh.open(frames[1].clone()).is_err(), "replayed");
    }

    #[tokio::test]
    async fn a_wrong_secret_or_a_missing_one_is_refused_on_both_sides() {
        let (s, t) = (
            secret("one secret of the cluster"),
            secret("another secret, not it"),
        );
        let (d, a) = exchange(Some(&s), Some(&t)).await;
        assert!(matches!(a, Err(FrameError::Auth(_))), "{a:?}");
        assert!(d.unwrap_err().to_string().contains("secrets differ"));
        let (d, a) = exchange(None, Some(&s)).await;
        assert!(
            d.unwrap_err()
                .to_string()
                .contains("requires a cluster secret")
        );
        assert!(a.is_err());
        let (d, a) = exchange(Some(&s), None).await;
        assert!(d.unwrap_err().to_string().contains("has no cluster secret"));
        assert!(a.is_err());
        let (d, a) = exchange(None, None).await;
        assert_eq!(d.unwrap().0.overhead(), 0);
        assert_eq!(a.unwrap().0.overhead(), 0);
    }
}
