//! The partial file of a snapshot being received from a peer: it grows in
//! order until the body is whole, then is checked and installed into the
//! [`SnapshotStore`] of the same directory.
//!
//! What arrives is decided elsewhere (the host's transfer receiver, which
//! checks every chunk); this module keeps the bytes. The file is named after
//! the snapshot it belongs to (slot, length and checksum) and lives until
//! the snapshot is installed, so a node restarted mid-transfer carries on
//! from the bytes it has. Those bytes are not synced as they arrive: after a
//! power failure the tail may be damaged, which the final checksum catches;
//! the transfer then starts over. Opening the partial file of one snapshot
//! deletes those of any other.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::snapshot::{
    HEADER_BYTES, Header, RemovedFile, SnapshotError, SnapshotMeta, SnapshotStore,
    create_dir_synced, file_bytes,
};

const PARTIAL_PREFIX: &str = "incoming-";
const PARTIAL_SUFFIX: &str = ".part";

/// Why a partial file could not be kept or installed.
#[derive(Debug, thiserror::Error)]
pub enum PartialError {
    #[error("snapshot transfer: cannot {op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] SnapshotError),
    #[error(
        "the received snapshot of slot {slot} does not match its checksum ({reason}); \
         the partial file was deleted and the transfer starts over"
    )]
    Mismatch { slot: u64, reason: String },
    #[error("bytes for offset {got} of the snapshot of slot {slot}, which holds {have}")]
    OutOfOrder { slot: u64, have: u64, got: u64 },
    #[error(
        "the snapshot of slot {slot} holds {have} of its {total} bytes; it cannot be installed"
    )]
    Incomplete { slot: u64, have: u64, total: u64 },
    #[error("the partial file of the snapshot of slot {slot} failed earlier; open it again")]
    Failed { slot: u64 },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PartialError + 'a {
    move |source| PartialError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn partial_file_name(slot: u64, total_bytes: u64, total_crc: u32) -> String {
    format!("{PARTIAL_PREFIX}{slot:020}-{total_bytes:020}-{total_crc:08x}{PARTIAL_SUFFIX}")
}

fn is_partial_name(name: &str) -> bool {
    name.starts_with(PARTIAL_PREFIX) && name.ends_with(PARTIAL_SUFFIX)
}

/// Deletes every partial transfer file in `dir`.
pub fn remove_partials(dir: &Path) -> Result<Vec<RemovedFile>, PartialError> {
    remove_partials_except(dir, None)
}

fn remove_partials_except(
    dir: &Path,
    keep: Option<&str>,
) -> Result<Vec<RemovedFile>, PartialError> {
    let mut removed = Vec::new();
    if !dir.is_dir() {
        return Ok(removed);
    }
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_partial_name(name) || Some(name) == keep {
            continue;
        }
        let path = entry.path();
        let bytes = file_bytes(&path);
        fs::remove_file(&path).map_err(io_err("remove", &path))?;
        removed.push(RemovedFile {
            name: name.to_owned(),
            bytes,
        });
    }
    Ok(removed)
}

/// The partial file of one snapshot; see the module notes.
#[derive(Debug)]
pub struct Partial {
    path: PathBuf,
    slot: u64,
    total_bytes: u64,
    total_crc: u32,
    /// `None` once its header is written for installing.
    file: Option<File>,
    /// Every body byte below this is in the file.
    ///
    /// Invariant: `have <= total_bytes`.
    have: u64,
    discarded: Vec<RemovedFile>,
    failed: bool,
}

impl Partial {
    /// Opens the partial file of the snapshot identified by `slot`,
    /// `total_bytes` and `total_crc` in `dir` (created if missing; the
    /// snapshot directory itself is a fine choice), keeping the body bytes
    /// it holds, and deletes the partial files of any other snapshot.
    pub fn open(
        dir: &Path,
        slot: u64,
        total_bytes: u64,
        total_crc: u32,
    ) -> Result<Partial, PartialError> {
        create_dir_synced(dir)?;
        let name = partial_file_name(slot, total_bytes, total_crc);
        let discarded = remove_partials_except(dir, Some(&name))?;
        let path = dir.join(&name);
        let existing = match fs::metadata(&path) {
            Ok(m) => Some(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("inspect", &path)(e)),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let body = existing
            .and_then(|len| len.checked_sub(HEADER_BYTES as u64))
            .filter(|&body| body <= total_bytes);
        let have = match body {
            Some(body) => body,
            None => {
                // Missing, shorter than its header, or longer than the
                // snapshot: start afresh behind a zeroed header.
                file.set_len(0)
                    .and_then(|()| file.seek(SeekFrom::Start(0)))
                    .and_then(|_| file.write_all(&[0u8; HEADER_BYTES]))
                    .map_err(io_err("start", &path))?;
                0
            }
        };
        Ok(Partial {
            path,
            slot,
            total_bytes,
            total_crc,
            file: Some(file),
            have,
            discarded,
            failed: false,
        })
    }

    /// True if this is the partial file of that snapshot.
    pub fn is_of(&self, slot: u64, total_bytes: u64, total_crc: u32) -> bool {
        (self.slot, self.total_bytes, self.total_crc) == (slot, total_bytes, total_crc)
    }

    /// Every body byte below this is in the file.
    pub fn have(&self) -> u64 {
        self.have
    }

    /// Partial files of other snapshots that opening deleted.
    pub fn discarded(&self) -> &[RemovedFile] {
        &self.discarded
    }

    /// Appends `data`, which continues the body at `offset` (what the file
    /// holds).
    pub fn append(&mut self, offset: u64, data: &[u8]) -> Result<(), PartialError> {
        if self.failed {
            return Err(PartialError::Failed { slot: self.slot });
        }
        let end = offset.checked_add(data.len() as u64);
        if offset != self.have || end.is_none_or(|end| end > self.total_bytes) {
            return Err(PartialError::OutOfOrder {
                slot: self.slot,
                have: self.have,
                got: offset,
            });
        }
        let Some(file) = self.file.as_mut() else {
            // The header is written: the body was whole already.
            return Err(PartialError::OutOfOrder {
                slot: self.slot,
                have: self.have,
                got: offset,
            });
        };
        file.seek(SeekFrom::Start(HEADER_BYTES as u64 + offset))
            .and_then(|_| file.write_all(data))
            .map_err(io_err("append to", &self.path))?;
        self.have += data.len() as u64;
        Ok(())
    }

    /// Writes the header, syncs, and hands the file to `store`, which checks
    /// the body against its checksum before it renames it into place. On a
    /// mismatch the file is deleted and this partial refuses more.
    pub fn install(&mut self, store: &mut SnapshotStore) -> Result<SnapshotMeta, PartialError> {
        if self.failed {
            return Err(PartialError::Failed { slot: self.slot });
        }
        if self.have != self.total_bytes {
            return Err(PartialError::Incomplete {
                slot: self.slot,
                have: self.have,
                total: self.total_bytes,
            });
        }
        if let Some(mut file) = self.file.take() {
            let header = Header {
                slot: self.slot,
                body_bytes: self.total_bytes,
                body_crc: self.total_crc,
            };
            let written = file
                .seek(SeekFrom::Start(0))
                .and_then(|_| file.write_all(&header.encode()))
                .and_then(|()| file.sync_all());
            if let Err(e) = written {
                self.file = Some(file);
                return Err(io_err("finish", &self.path)(e));
            }
        }
        match store.install(&self.path) {
            Ok(meta) => Ok(meta),
            Err(e @ (SnapshotError::Corrupt { .. } | SnapshotError::Stale { .. })) => {
                self.failed = true;
                fs::remove_file(&self.path).map_err(io_err("remove", &self.path))?;
                match e {
                    SnapshotError::Corrupt { reason, .. } => Err(PartialError::Mismatch {
                        slot: self.slot,
                        reason,
                    }),
                    other => Err(other.into()),
                }
            }
            // Perhaps passing (disk full): the complete file stays, and
            // installing may be tried again.
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use paxos::rng::Rng;

    use super::super::Scratch;
    use super::*;

    fn random_body(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.next_u64() as u8).collect()
    }

    fn source_snapshot(dir: &Path, slot: u64, body: &[u8]) -> (SnapshotStore, SnapshotMeta) {
        let (mut store, _) = SnapshotStore::open(dir).expect("open source store");
        let meta = store.write(slot, |w| w.write_all(body)).expect("write");
        (store, meta)
    }

    fn read_body(store: &SnapshotStore, meta: &SnapshotMeta) -> Vec<u8> {
        let mut out = Vec::new();
        store
            .open_reader(meta)
            .expect("reader")
            .read_to_end(&mut out)
            .expect("intact");
        out
    }

    /// Appends `body[from..to]` in pieces of `piece` bytes.
    fn fill(partial: &mut Partial, body: &[u8], to: usize, piece: usize) {
        while (partial.have() as usize) < to {
            let from = partial.have() as usize;
            let end = (from + piece).min(to);
            partial
                .append(from as u64, &body[from..end])
                .expect("append");
        }
    }

    #[test]
    fn a_reopened_partial_resumes_from_the_bytes_it_holds() {
        let source = Scratch::new("partial-resume-src");
        let target = Scratch::new("partial-resume-dst");
        let body = random_body(7, 1 << 20);
        let (_src, meta) = source_snapshot(source.path(), 90, &body);
        let (mut store, _) = SnapshotStore::open(target.path()).expect("open");
        let mut partial = Partial::open(target.path(), 90, meta.bytes, meta.crc).expect("open");
        assert_eq!(partial.have(), 0);
        fill(&mut partial, &body, body.len() / 2, 65_536);
        let had = partial.have();
        drop(partial);

        let mut partial = Partial::open(target.path(), 90, meta.bytes, meta.crc).expect("reopen");
        assert_eq!(partial.have(), had);
        assert!(partial.discarded().is_empty());
        fill(&mut partial, &body, body.len(), 65_536);
        let installed = partial.install(&mut store).expect("install");
        assert_eq!((installed.slot, installed.bytes), (90, meta.bytes));
        assert_eq!(read_body(&store, &installed), body);
        assert_eq!(remove_partials(target.path()).expect("clean").len(), 0);
    }

    #[test]
    fn bytes_out_of_order_and_an_early_install_are_refused() {
        let target = Scratch::new("partial-order");
        let (mut store, _) = SnapshotStore::open(target.path()).expect("open");
        let mut partial = Partial::open(target.path(), 3, 10, 0).expect("open");
        assert!(matches!(
            partial.append(4, b"abc"),
            Err(PartialError::OutOfOrder {
                have: 0,
                got: 4,
                ..
            })
        ));
        partial.append(0, b"abcd").expect("append");
        assert!(matches!(
            partial.append(4, b"too long for ten"),
            Err(PartialError::OutOfOrder { .. })
        ));
        assert!(matches!(
            partial.install(&mut store),
            Err(PartialError::Incomplete {
                have: 4,
                total: 10,
                ..
            })
        ));
    }

    #[test]
    fn a_body_that_fails_its_checksum_is_deleted_not_installed() {
        let source = Scratch::new("partial-mismatch-src");
        let target = Scratch::new("partial-mismatch-dst");
        let body = random_body(10, 300_000);
        let (_src, meta) = source_snapshot(source.path(), 12, &body);
        let (mut store, _) = SnapshotStore::open(target.path()).expect("open");
        // A checksum the data does not have.
        let wrong = meta.crc ^ 1;
        let mut partial = Partial::open(target.path(), 12, meta.bytes, wrong).expect("open");
        fill(&mut partial, &body, body.len(), 100_000);
        match partial.install(&mut store) {
            Err(e @ PartialError::Mismatch { slot: 12, .. }) => {
                assert!(e.to_string().contains("starts over"), "{e}");
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert!(store.latest().is_none());
        assert_eq!(
            fs::read_dir(target.path()).expect("list").count(),
            0,
            "partial deleted"
        );
        assert!(matches!(
            partial.append(0, b"x"),
            Err(PartialError::Failed { slot: 12 })
        ));
    }

    #[test]
    fn another_snapshot_supersedes_an_old_partial() {
        let target = Scratch::new("partial-supersede");
        let mut partial = Partial::open(target.path(), 10, 500, 7).expect("open");
        partial.append(0, &[1; 200]).expect("append");
        drop(partial);
        let path = target.path().join(partial_file_name(10, 500, 7));
        assert!(path.exists());
        // Same slot, other content: also a different snapshot.
        let other = Partial::open(target.path(), 10, 500, 8).expect("open");
        assert_eq!(other.have(), 0);
        assert_eq!(other.discarded().len(), 1);
        assert!(!path.exists());
        drop(other);
        let newer = Partial::open(target.path(), 20, 400, 9).expect("open");
        assert_eq!(newer.discarded().len(), 1);
        assert!(newer.is_of(20, 400, 9));
        assert!(!newer.is_of(10, 500, 8));
    }

    #[test]
    fn an_empty_snapshot_installs_too() {
        let source = Scratch::new("partial-empty-src");
        let target = Scratch::new("partial-empty-dst");
        let (_src, meta) = source_snapshot(source.path(), 1, b"");
        let (mut store, _) = SnapshotStore::open(target.path()).expect("open");
        let mut partial = Partial::open(target.path(), 1, 0, meta.crc).expect("open");
        let got = partial.install(&mut store).expect("install");
        assert_eq!((got.slot, got.bytes), (1, 0));
    }
}
