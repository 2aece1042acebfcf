//! Backups of a running cluster, and restoring one into a new cluster.
//!
//! A backup is one snapshot of the store, taken by a member at a slot that
//! a linearizable barrier reached first (so it holds every write
//! acknowledged before the backup began), streamed to a file. The file:
//!
//! ```text
//! magic "PRLMBKUP"   format u8   header length u32 (big-endian)
//! header             the fields of [`BackupHeader`], then its crc32c
//! body               the snapshot body, exactly `body_bytes` long, whose
//!                    crc32c is `body_crc` (the store's own snapshot format,
//!                    with its own trailer checksum inside)
//! ```
//!
//! A file is written under a temporary name and renamed only once its body
//! is whole and its checksum matches, so a backup file that exists is
//! complete. Reading one checks the header's checksum, the body's length
//! and checksum and the store's own, so a flipped bit anywhere is found
//! before anything is written.
//!
//! # Restoring
//!
//! [`restore`] makes the data directory of one founder of a *new* cluster:
//! the backup's store as the snapshot of the backup's slot, with the new
//! founders' membership in place of the old cluster's, no client sessions
//! (the new cluster has no clients yet) and an empty log. The new cluster's
//! id was drawn when the backup was taken and travels in the file, so every
//! member restored from one file names the same cluster, and the old
//! cluster (another id) refuses all of them. Every founder must be
//! restored from the same file: a founder with an empty data directory is
//! refused by the others (see `crate::cluster::ClusterFile::restored`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{BufMut, BytesMut};
use codec::{Crc32c, Reader, crc32c, put_bytes, put_varint};
use kv::Store;
use paxos::NodeId;
use paxos::replica::{Configs, Membership};
use storage::snapshot::SnapshotStore;

use crate::cluster::{Addrs, ClusterFile, ClusterId};
use crate::datadir::DataDir;

/// The first bytes of every backup file.
pub const BACKUP_MAGIC: [u8; 8] = *b"PRLMBKUP";
/// The format this release writes, and the newest it reads.
pub const BACKUP_FORMAT: u8 = 1;
/// A header longer than this can only be damage.
const HEADER_BYTES_MAX: u32 = 64 * 1024;

/// What a backup file says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupHeader {
    /// The cluster the backup was taken from.
    pub source: ClusterId,
    /// The id of every cluster restored from this file, drawn when the
    /// backup was taken.
    pub restored_id: ClusterId,
    /// The last slot the store holds.
    pub slot: u64,
    pub body_bytes: u64,
    pub body_crc: u32,
    /// The member that took it, and when (Unix milliseconds).
    pub node: NodeId,
    pub taken_unix_ms: u64,
    /// The release of the member that took it.
    pub version: String,
}

/// Why a backup could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a parliament backup (it does not start with the backup magic)", .0.display())]
    NotABackup(PathBuf),
    #[error(
        "{} is a backup of format {found}, newer than this release reads (up to {BACKUP_FORMAT}); restore it with the release that wrote it or a newer one",
        .path.display()
    )]
    NewerFormat { path: PathBuf, found: u8 },
    #[error("{} is damaged: {reason}; take the backup again, or use another copy of it", .path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("the backup being written is wrong: {0}")]
    Stream(String),
    #[error("cannot restore into {}: {reason}", .dir.display())]
    Target { dir: PathBuf, reason: String },
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl BackupHeader {
    /// The file's first bytes: magic, format, header length, header, crc.
    pub fn encode(&self) -> Vec<u8> {
        let mut fields = BytesMut::with_capacity(128);
        fields.put_u128(self.source.as_u128());
        fields.put_u128(self.restored_id.as_u128());
        put_varint(&mut fields, self.slot);
        put_varint(&mut fields, self.body_bytes);
        fields.put_u32(self.body_crc);
        put_varint(&mut fields, self.node);
        put_varint(&mut fields, self.taken_unix_ms);
        put_bytes(&mut fields, self.version.as_bytes());
        let crc = crc32c(&fields);
        fields.put_u32(crc);
        let mut out = Vec::with_capacity(fields.len() + 13);
        out.extend_from_slice(&BACKUP_MAGIC);
        out.push(BACKUP_FORMAT);
        out.extend_from_slice(&(fields.len() as u32).to_be_bytes());
        out.extend_from_slice(&fields);
        out
    }

    /// Reads the header from the start of `file`, leaving it at the body.
    fn read(file: &mut impl Read, path: &Path) -> Result<BackupHeader, BackupError> {
        let damaged = |reason: String| BackupError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let mut lead = [0u8; 13];
        file.read_exact(&mut lead).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => BackupError::NotABackup(path.to_path_buf()),
            _ => BackupError::Io {
                op: "read",
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        if lead[..8] != BACKUP_MAGIC {
            return Err(BackupError::NotABackup(path.to_path_buf()));
        }
        let format = lead[8];
        if format > BACKUP_FORMAT {
            return Err(BackupError::NewerFormat {
                path: path.to_path_buf(),
                found: format,
            });
        }
        if format == 0 {
            return Err(damaged("format 0".to_owned()));
        }
        let len = u32::from_be_bytes([lead[9], lead[10], lead[11], lead[12]]);
        if !(4..=HEADER_BYTES_MAX).contains(&len) {
            return Err(damaged(format!("a header of {len} bytes")));
        }
        let mut fields = vec![0u8; len as usize];
        file.read_exact(&mut fields).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => damaged("the header is cut short".to_owned()),
            _ => BackupError::Io {
                op: "read",
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        let (body, crc) = fields.split_at(fields.len() - 4);
        if crc32c(body) != u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
            return Err(damaged("the header's checksum does not match".to_owned()));
        }
        let decode = || -> Result<BackupHeader, codec::DecodeError> {
            let mut r = Reader::new(body);
            let mut id = |what| -> Result<Option<ClusterId>, codec::DecodeError> {
                let raw = r.take(what, 16)?;
                let mut bytes = [0u8; 16];
                bytes.copy_from_slice(raw);
                Ok(ClusterId::from_u128(u128::from_be_bytes(bytes)))
            };
            let invalid = |what| codec::DecodeError::Invalid {
                what,
                reason: "zero",
            };
            let source = id("the source cluster id")?.ok_or(invalid("the source cluster id"))?;
            let restored_id =
                id("the restored cluster id")?.ok_or(invalid("the restored cluster id"))?;
            let slot = r.varint("the slot")?;
            let body_bytes = r.varint("the body length")?;
            let raw = r.take("the body checksum", 4)?;
            let body_crc = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
            let node = r.varint("the member")?;
            let taken_unix_ms = r.varint("the time")?;
            let version = r.utf8("the release")?.to_owned();
            r.finish()?;
            Ok(BackupHeader {
                source,
                restored_id,
                slot,
                body_bytes,
                body_crc,
                node,
                taken_unix_ms,
                version,
            })
        };
        decode().map_err(|e| damaged(e.to_string()))
    }
}

/// A backup file being written: create it with the header, append the body
/// as it arrives, then [`BackupWriter::finish`].
#[derive(Debug)]
pub struct BackupWriter {
    header: BackupHeader,
    path: PathBuf,
    temp: PathBuf,
    file: io::BufWriter<File>,
    written: u64,
    crc: Crc32c,
    /// Body bytes written since the file was last synced.
    unsynced: u64,
}

/// The file is synced every this many bytes, so that its dirty pages never
/// pile up and stall the syncs of a node's log on the same disk when they
/// are flushed at the end.
const SYNC_EVERY_BYTES: u64 = 16 << 20;

impl BackupWriter {
    /// Starts `path` (under a temporary name beside it). An existing file
    /// at `path` is refused: a backup never overwrites another.
    pub fn create(path: &Path, header: BackupHeader) -> Result<BackupWriter, BackupError> {
        if path.exists() {
            return Err(BackupError::Io {
                op: "write the backup to",
                path: path.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the file exists; choose another name or move it away",
                ),
            });
        }
        let mut temp = path.as_os_str().to_owned();
        temp.push(".partial");
        let temp = PathBuf::from(temp);
        let file = File::create(&temp).map_err(io_error("create", &temp))?;
        let mut file = io::BufWriter::with_capacity(1 << 20, file);
        file.write_all(&header.encode())
            .map_err(io_error("write", &temp))?;
        Ok(BackupWriter {
            header,
            path: path.to_path_buf(),
            temp,
            file,
            written: 0,
            crc: Crc32c::new(),
            unsynced: 0,
        })
    }

    /// Appends the next piece of the body.
    pub fn append(&mut self, data: &[u8]) -> Result<(), BackupError> {
        let end = self.written + data.len() as u64;
        if end > self.header.body_bytes {
            return Err(BackupError::Stream(format!(
                "{end} body bytes, but the snapshot has {}",
                self.header.body_bytes
            )));
        }
        self.file
            .write_all(data)
            .map_err(io_error("write", &self.temp))?;
        self.crc.update(data);
        self.written = end;
        self.unsynced += data.len() as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.file
                .flush()
                .and_then(|()| self.file.get_ref().sync_data())
                .map_err(io_error("sync", &self.temp))?;
            self.unsynced = 0;
        }
        Ok(())
    }

    /// Body bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Checks that the body is whole and intact, makes the file durable and
    /// gives it its name.
    pub fn finish(self) -> Result<PathBuf, BackupError> {
        let BackupWriter {
            header,
            path,
            temp,
            file,
            written,
            crc,
            ..
        } = self;
        let fail = |reason: String| {
            let _ = fs::remove_file(&temp);
            Err(BackupError::Stream(reason))
        };
        if written != header.body_bytes {
            return fail(format!(
                "{written} body bytes of {} arrived",
                header.body_bytes
            ));
        }
        if crc.finish() != header.body_crc {
            return fail(format!(
                "the body's checksum is {:#010x}, the snapshot's {:#010x}",
                crc.finish(),
                header.body_crc
            ));
        }
        let file = file.into_inner().map_err(|e| BackupError::Io {
            op: "write",
            path: temp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_error("sync", &temp))?;
        drop(file);
        fs::rename(&temp, &path).map_err(io_error("rename into place", &path))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_error("sync the directory", dir))?;
        }
        Ok(path)
    }
}

/// Reads the body of a backup, counting its length and checksum.
struct BodyReader<'a, R> {
    inner: R,
    left: u64,
    crc: &'a mut Crc32c,
}

impl<R: Read> Read for BodyReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let Some(buf) = buf.get_mut(..room) else {
            return Ok(0);
        };
        let n = self.inner.read(buf)?;
        self.crc.update(buf.get(..n).unwrap_or(buf));
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads and checks a whole backup file: its header, and its store.
pub fn read_backup(path: &Path) -> Result<(BackupHeader, Store), BackupError> {
    let file = File::open(path).map_err(io_error("open", path))?;
    let mut file = io::BufReader::with_capacity(1 << 20, file);
    let header = BackupHeader::read(&mut file, path)?;
    let damaged = |reason: String| BackupError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let mut crc = Crc32c::new();
    let mut body = BodyReader {
        inner: &mut file,
        left: header.body_bytes,
        crc: &mut crc,
    };
    let store = Store::restore_from(&mut body);
    // Whatever the store made of it, the body is read to its end so that
    // damage is reported as damage (a checksum) before anything else.
    let rest = io::copy(&mut body, &mut io::sink()).map_err(io_error("read", path))?;
    let left = body.left;
    if left > 0 {
        return Err(damaged(format!(
            "the body is cut short ({left} of {} bytes missing)",
            header.body_bytes
        )));
    }
    if crc.finish() != header.body_crc {
        return Err(damaged("the body's checksum does not match".to_owned()));
    }
    let mut extra = [0u8; 1];
    if file.read(&mut extra).map_err(io_error("read", path))? > 0 {
        return Err(damaged("bytes follow the body".to_owned()));
    }
    let store = store.map_err(|e| damaged(format!("the store in it cannot be read: {e}")))?;
    if rest > 0 {
        return Err(damaged(format!(
            "{rest} bytes follow the store in the body"
        )));
    }
    Ok((header, store))
}

/// The member a data directory is restored for.
#[derive(Clone, Debug)]
pub struct RestoreTarget {
    pub data_dir: PathBuf,
    pub id: NodeId,
    /// The founders of the new cluster and their peer addresses.
    pub members: BTreeMap<NodeId, String>,
    /// Where this member serves clients (kept with its address).
    pub client_addr: String,
}

/// What [`restore`] made.
#[derive(Clone, Debug)]
pub struct Restored {
    pub header: BackupHeader,
    pub keys: usize,
    /// The size of the snapshot written.
    pub snapshot_bytes: u64,
}

/// Makes `target.data_dir` the data directory of founder `target.id` of a
/// new cluster restored from the backup at `from` (see the module notes).
/// The directory must be new or empty; nothing is written before the
/// whole backup has been read and checked.
pub fn restore(from: &Path, target: &RestoreTarget) -> Result<Restored, BackupError> {
    let dir = &target.data_dir;
    let refuse = |reason: String| BackupError::Target {
        dir: dir.clone(),
        reason,
    };
    if !target.members.contains_key(&target.id) {
        return Err(refuse(format!(
            "--members does not name node {} itself",
            target.id
        )));
    }
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                let kept = ClusterFile::load(dir).ok().flatten().and_then(|f| f.id);
                let (header, _) = peek(from)?;
                let reason = if kept == Some(header.source) {
                    "it holds a member of the cluster this backup was taken from; a backup \
                     restores into a new cluster only, never into the one it came from"
                        .to_owned()
                } else {
                    "it is not empty (an interrupted restore leaves a partial directory: \
                     empty it and restore again)"
                        .to_owned()
                };
                return Err(refuse(reason));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("read", dir)(e)),
    }
    let (header, mut store) = read_backup(from)?;
    let alpha = if store.cluster().is_empty() {
        paxos::replica::Config::new(target.id, vec![target.id]).alpha
    } else {
        host::cluster::decode(store.cluster())
            .map_err(|e| BackupError::Damaged {
                path: from.to_path_buf(),
                reason: format!("its membership record cannot be read: {e}"),
            })?
            .alpha()
    };
    let founders: Vec<NodeId> = target.members.keys().copied().collect();
    store.set_cluster(host::cluster::encode(&Configs::new(Membership::founding(
        founders.iter().copied(),
        alpha,
    ))));
    store.forget_sessions();
    let keys = store.len();
    let data_dir = DataDir::open(dir, target.id).map_err(|e| refuse(e.to_string()))?;
    let (mut snapshots, _) =
        SnapshotStore::open(data_dir.snapshot_dir()).map_err(|e| refuse(e.to_string()))?;
    let meta = snapshots
        .write(header.slot, |mut w| store.snapshot_to(&mut w))
        .map_err(|e| refuse(e.to_string()))?;
    let book = target
        .members
        .iter()
        .map(|(&id, peer)| {
            let client = if id == target.id {
                target.client_addr.clone()
            } else {
                String::new()
            };
            (
                id,
                Addrs {
                    peer: peer.clone(),
                    client,
                },
            )
        })
        .collect();
    // The cluster record is written last: a directory without it was not
    // restored to the end, and is refused by the next restore.
    let file = ClusterFile {
        id: Some(header.restored_id),
        alpha,
        founders,
        book,
        configs: None,
        restored: Some(header.slot),
    };
    data_dir
        .write_cluster(&file.encode())
        .map_err(|e| refuse(e.to_string()))?;
    Ok(Restored {
        header,
        keys,
        snapshot_bytes: meta.bytes,
    })
}

/// The header of the backup at `path`, and the file's length.
pub fn peek(path: &Path) -> Result<(BackupHeader, u64), BackupError> {
    let mut file = File::open(path).map_err(io_error("open", path))?;
    let len = file.metadata().map_err(io_error("read", path))?.len();
    let header = BackupHeader::read(&mut file, path)?;
    Ok((header, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("parliament-backup-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("scratch directory");
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn store_with(keys: u64) -> Store {
        let mut store = Store::new();
        for i in 0..keys {
            let request = kv::Request {
                client: kv::ClientId(1),
                seq: kv::Seq(i + 1),
                ack_below: kv::Seq(i + 1),
                command: kv::Command::Set {
                    key: Bytes::from(format!("key-{i}")),
                    value: Bytes::from(format!("value-{i}")),
                    condition: kv::SetCondition::None,
                    get: false,
                },
            };
            store.apply(i + 1, &request);
        }
        store.set_cluster(host::cluster::encode(&Configs::new(Membership::founding(
            [1, 2, 3],
            8,
        ))));
        store
    }

    /// Writes a backup of `store` at slot 40 to `path`, in pieces.
    fn write_backup(path: &Path, store: &Store) -> BackupHeader {
        let mut body = Vec::new();
        store.snapshot_to(&mut body).expect("in memory");
        let header = BackupHeader {
            source: ClusterId::generate(),
            restored_id: ClusterId::generate(),
            slot: 40,
            body_bytes: body.len() as u64,
            body_crc: crc32c(&body),
            node: 2,
            taken_unix_ms: 1_700_000_000_000,
            version: "0.1.0".to_owned(),
        };
        let mut writer = BackupWriter::create(path, header.clone()).expect("create");
        for piece in body.chunks(100) {
            writer.append(piece).expect("append");
        }
        writer.finish().expect("finish");
        header
    }

    fn target(dir: &Path, id: NodeId) -> RestoreTarget {
        RestoreTarget {
            data_dir: dir.to_path_buf(),
            id,
            members: (1..=3)
                .map(|n| (n, format!("127.0.0.1:{}", 7000 + n)))
                .collect(),
            client_addr: format!("127.0.0.1:{}", 6000 + id),
        }
    }

    #[test]
    fn a_backup_round_trips_and_every_flipped_bit_or_cut_is_found() {
        let scratch = Scratch::new("flip");
        let path = scratch.0.join("b.backup");
        let store = store_with(20);
        let header = write_backup(&path, &store);
        let (read, back) = read_backup(&path).expect("reads back");
        assert_eq!(read, header);
        assert_eq!(back.len(), 20);
        let bytes = fs::read(&path).expect("file");
        let bad = scratch.0.join("bad.backup");
        for i in 0..bytes.len() {
            for bit in [0x01, 0x80] {
                let mut flipped = bytes.clone();
                flipped[i] ^= bit;
                fs::write(&bad, &flipped).expect("write");
                assert!(read_backup(&bad).is_err(), "bit {bit:#x} of byte {i}");
            }
            fs::write(&bad, &bytes[..i]).expect("write");
            assert!(read_backup(&bad).is_err(), "cut at {i}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        fs::write(&bad, &longer).expect("write");
        assert!(read_backup(&bad).is_err(), "a byte added");
    }

    #[test]
    fn a_writer_refuses_a_body_that_does_not_match_and_leaves_no_file() {
        let scratch = Scratch::new("writer");
        let path = scratch.0.join("b.backup");
        let header = BackupHeader {
            source: ClusterId::generate(),
            restored_id: ClusterId::generate(),
            slot: 1,
            body_bytes: 4,
            body_crc: crc32c(b"abcd"),
            node: 1,
            taken_unix_ms: 0,
            version: String::new(),
        };
        let mut w = BackupWriter::create(&path, header.clone()).expect("create");
        w.append(b"abce").expect("append");
        assert!(w.finish().is_err(), "the checksum differs");
        let mut w = BackupWriter::create(&path, header.clone()).expect("create");
        w.append(b"abc").expect("append");
        assert!(w.finish().is_err(), "a byte is missing");
        assert!(!path.exists());
        let mut w = BackupWriter::create(&path, header.clone()).expect("create");
        assert!(w.append(b"abcde").is_err(), "a byte too many");
        w.append(b"abcd").expect("append");
        w.finish().expect("whole and intact");
        assert!(
            BackupWriter::create(&path, header).is_err(),
            "never overwrites"
        );
    }

    #[test]
    fn a_restored_directory_names_the_new_cluster_and_holds_the_store() {
        let scratch = Scratch::new("restore");
        let path = scratch.0.join("b.backup");
        let header = write_backup(&path, &store_with(30));
        let dir = scratch.0.join("node-2");
        let restored = restore(&path, &target(&dir, 2)).expect("restores");
        assert_eq!(restored.keys, 30);
        let file = ClusterFile::load(&dir).expect("readable").expect("written");
        assert_eq!(file.id, Some(header.restored_id));
        assert_eq!(file.restored, Some(40));
        assert_eq!(file.founders, vec![1, 2, 3]);
        assert_eq!(file.alpha, 8);
        let (snapshots, _) = SnapshotStore::open(dir.join("snapshots")).expect("opens");
        let meta = snapshots.latest().expect("a snapshot").clone();
        assert_eq!(meta.slot, 40);
        let store = Store::restore_from(&mut snapshots.open_reader(&meta).expect("reader"))
            .expect("a store");
        assert_eq!(store.len(), 30);
        assert_eq!(
            store.session_count(),
            0,
            "the old cluster's sessions are gone"
        );
        let configs = host::cluster::decode(store.cluster()).expect("a membership");
        assert_eq!(configs.latest().voters().collect::<Vec<_>>(), vec![1, 2, 3]);
        // Never into a directory in use, least of all one of the old cluster.
        let err = restore(&path, &target(&dir, 2)).expect_err("not empty");
        assert!(err.to_string().contains("not empty"), "{err}");
        let old = scratch.0.join("old-member");
        fs::create_dir_all(&old).expect("dir");
        DataDir::open(&old, 1).expect("data dir");
        let member = ClusterFile {
            id: Some(header.source),
            ..file
        };
        fs::write(old.join(crate::datadir::CLUSTER_FILE), member.encode()).expect("write");
        let err = restore(&path, &target(&old, 1)).expect_err("the old cluster");
        assert!(
            err.to_string().contains("never into the one it came from"),
            "{err}"
        );
        // A damaged backup writes nothing.
        let mut bytes = fs::read(&path).expect("file");
        let last = bytes.len() - 10;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).expect("write");
        let fresh = scratch.0.join("node-3");
        let err = restore(&path, &target(&fresh, 3)).expect_err("damaged");
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(!fresh.exists(), "nothing written for a damaged backup");
    }
}
