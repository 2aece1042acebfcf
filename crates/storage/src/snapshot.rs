//! Snapshots of the state machine on disk.
//!
//! A snapshot lets a node drop the log below it and lets a lagging replica
//! catch up without the log. The store keeps the newest few in one
//! directory, one file each, named `snap-<slot, 20 digits>.snap`.
//!
//! # File format
//!
//! A fixed header of [`HEADER_BYTES`], then the body (opaque here: the state
//! machine's own stream, see `kv::Store::snapshot_to`):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `PRLMSNAP` |
//! | 1 | format version ([`SNAPSHOT_FILE_FORMAT`]) |
//! | 3 | zero |
//! | 8 | slot, u64 LE: the last log slot the body includes |
//! | 8 | body length in bytes, u64 LE |
//! | 4 | crc32c of the body, u32 LE |
//! | 4 | crc32c of the 32 header bytes before it, u32 LE |
//!
//! The file is exactly header plus body; anything else is damage.
//!
//! # Writing atomically
//!
//! [`SnapshotStore::write`] streams the body into `snap-<slot>.snap.tmp`
//! behind a zeroed header, then writes the real header, fsyncs the file,
//! renames it to its final name and fsyncs the directory; only then does it
//! delete snapshots beyond the newest `keep`. A crash at any point leaves
//! either the previous snapshots (and perhaps a temporary file, which
//! [`SnapshotStore::open`] removes) or the new one, complete and synced: a
//! final name only ever points at a file whose every byte was synced first.
//!
//! # Reading
//!
//! [`SnapshotStore::open`] checks every snapshot's header and length, not its
//! body: the body is checked as it is read ([`SnapshotStore::open_reader`]
//! fails at the end if the checksum does not match) or on demand
//! ([`SnapshotStore::verify`]). Damage is an error that names the file and
//! says what to do, never a silent fallback to an older snapshot: the log
//! below the newest snapshot may already be gone.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::BufMut;
use codec::{Crc32c, Reader, crc32c};

/// First bytes of every snapshot file.
pub const SNAPSHOT_FILE_MAGIC: [u8; 8] = *b"PRLMSNAP";
/// The file frame this code writes and reads.
pub const SNAPSHOT_FILE_FORMAT: u8 = 1;
/// Size of the file header before the body.
pub const HEADER_BYTES: usize = 36;
/// Offset of the header's own checksum (the bytes before it are covered).
const HEADER_CRC_AT: usize = 32;
const _: () = assert!(HEADER_BYTES == 8 + 1 + 3 + 8 + 8 + 4 + 4);
const _: () = assert!(HEADER_CRC_AT + 4 == HEADER_BYTES);

/// Snapshots kept by default: the newest, and one before it in case the
/// newest turns out damaged while a peer still has the log above the older.
pub const DEFAULT_KEEP: usize = 2;
/// Buffer of streamed writes and verification reads.
const IO_BUFFER_BYTES: usize = 64 * 1024;

/// A snapshot being written is synced every this many bytes, so that the
/// dirty pages of a large one never pile up: flushed all at once at the
/// end, a gigabyte of them stalls every other sync of the disk (the log's
/// above all) for seconds.
const SYNC_EVERY_BYTES: u64 = 16 << 20;

const PREFIX: &str = "snap-";
const SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".snap.tmp";

/// Why the snapshot store failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot store: cannot {op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} looks like a snapshot file but its name does not carry a valid slot; \
         move it out of the snapshot directory",
        .path.display()
    )]
    BadName { path: PathBuf },
    #[error(
        "snapshot {} is damaged: {reason}. Do not delete it to make the node start \
         (the log below it may be gone); restart the node with --rejoin: it moves the \
         damaged state aside and rejoins as a learner that fetches a snapshot from a peer",
        .path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("snapshot of slot {slot} is older than the newest one (slot {latest}); not written")]
    Stale { slot: u64, latest: u64 },
    #[error("the body of a snapshot of slot {slot} could not be produced: {source}")]
    Body {
        slot: u64,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// One snapshot on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The last log slot the snapshot includes.
    pub slot: u64,
    pub path: PathBuf,
    /// Length of the body (the file is [`HEADER_BYTES`] longer).
    pub bytes: u64,
    /// crc32c of the body.
    pub crc: u32,
}

/// A file that [`SnapshotStore::open`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemovedFile {
    pub name: String,
    pub bytes: u64,
}

/// What [`SnapshotStore::open`] found and cleaned up, for the node to log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Temporary files of writes a crash interrupted.
    pub removed_temp: Vec<RemovedFile>,
    /// Snapshots beyond the newest `keep` (a crash came before retention).
    pub removed_old: Vec<RemovedFile>,
    /// Snapshots kept.
    pub snapshots: usize,
}

/// The file name of the snapshot of this slot.
pub fn snapshot_file_name(slot: u64) -> String {
    format!("{PREFIX}{slot:020}{SUFFIX}")
}

fn temp_file_name(slot: u64) -> String {
    format!("{PREFIX}{slot:020}{TEMP_SUFFIX}")
}

/// The fixed header of a snapshot file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub slot: u64,
    pub body_bytes: u64,
    pub body_crc: u32,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        let mut out = &mut h[..];
        out.put_slice(&SNAPSHOT_FILE_MAGIC);
        out.put_slice(&[SNAPSHOT_FILE_FORMAT, 0, 0, 0]);
        out.put_u64_le(self.slot);
        out.put_u64_le(self.body_bytes);
        out.put_u32_le(self.body_crc);
        let crc = crc32c(&h[..HEADER_CRC_AT]);
        h[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn decode(h: &[u8; HEADER_BYTES]) -> Result<Header, String> {
        if h[0..8] != SNAPSHOT_FILE_MAGIC {
            return Err("bad magic (not a snapshot file, or its header was never written)".into());
        }
        let computed = crc32c(&h[..HEADER_CRC_AT]);
        let header = Header::fields(h).map_err(|e| e.to_string())?;
        if header.stored_crc != computed {
            return Err(format!(
                "header checksum mismatch (stored {:#010x}, computed {computed:#010x})",
                header.stored_crc
            ));
        }
        if header.reserved != [0, 0, 0] {
            return Err("reserved header bytes are not zero".into());
        }
        if header.format != SNAPSHOT_FILE_FORMAT {
            return Err(format!(
                "unknown file format {} (this build reads format {SNAPSHOT_FILE_FORMAT})",
                header.format
            ));
        }
        Ok(header.header)
    }

    /// The fields after the magic, unchecked.
    fn fields(h: &[u8; HEADER_BYTES]) -> Result<RawHeader, codec::DecodeError> {
        let mut r = Reader::new(&h[8..]);
        let format = r.u8("the format")?;
        let mut reserved = [0u8; 3];
        reserved.copy_from_slice(r.take("reserved bytes", 3)?);
        let header = Header {
            slot: r.u64_le("the slot")?,
            body_bytes: r.u64_le("the body length")?,
            body_crc: r.u32_le("the body checksum")?,
        };
        let stored_crc = r.u32_le("the header checksum")?;
        r.finish()?;
        Ok(RawHeader {
            format,
            reserved,
            header,
            stored_crc,
        })
    }
}

/// A header as read, before its checks.
struct RawHeader {
    format: u8,
    reserved: [u8; 3],
    header: Header,
    stored_crc: u32,
}

/// Reads and checks the header of a snapshot file and that the file is
/// exactly header plus body. Returns the open file, positioned at the body.
pub(crate) fn open_checked(path: &Path) -> Result<(File, Header), SnapshotError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let len = file.metadata().map_err(io_err("inspect", path))?.len();
    if len < HEADER_BYTES as u64 {
        return Err(corrupt(
            path,
            format!("the file has {len} bytes, fewer than its {HEADER_BYTES}-byte header"),
        ));
    }
    let mut raw = [0u8; HEADER_BYTES];
    file.read_exact(&mut raw).map_err(io_err("read", path))?;
    let header = Header::decode(&raw).map_err(|reason| corrupt(path, reason))?;
    let expected = (HEADER_BYTES as u64).checked_add(header.body_bytes);
    if expected != Some(len) {
        return Err(corrupt(
            path,
            format!(
                "the header announces a body of {} bytes but the file has {} body bytes",
                header.body_bytes,
                len - HEADER_BYTES as u64
            ),
        ));
    }
    Ok((file, header))
}

/// Reads the body of `file` to its end in fixed-size pieces and checks its
/// length and checksum against the header.
fn verify_body(path: &Path, file: &mut File, header: &Header) -> Result<(), SnapshotError> {
    let mut reader = BodyReader::new(path, file, header);
    let mut buf = vec![0u8; IO_BUFFER_BYTES];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(body_read_error(path, e)),
        }
    }
}

/// Turns an error of a [`BodyReader`] back into the typed error it carries.
fn body_read_error(path: &Path, e: io::Error) -> SnapshotError {
    if !e.get_ref().is_some_and(|inner| inner.is::<SnapshotError>()) {
        return io_err("read", path)(e);
    }
    match e
        .into_inner()
        .map(|inner| inner.downcast::<SnapshotError>())
    {
        Some(Ok(typed)) => *typed,
        _ => corrupt(path, "the body could not be checked"),
    }
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

pub(crate) fn file_bytes(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// What a file name in the snapshot directory is.
enum Name {
    Snapshot(u64),
    Temp,
    Other,
}

fn classify(name: &str) -> Result<Name, ()> {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return Ok(Name::Other);
    };
    if rest.ends_with(".tmp") {
        return Ok(Name::Temp);
    }
    let digits = rest.strip_suffix(SUFFIX).ok_or(())?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    digits.parse::<u64>().map(Name::Snapshot).map_err(|_| ())
}

/// The steps of an atomic write, in order; a test stops after any of them
/// to see what a crash there leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteStep {
    CreatedTemp,
    WroteBody,
    WroteHeader,
    SyncedFile,
    Renamed,
    SyncedDir,
}

#[cfg(test)]
impl WriteStep {
    pub(crate) const ALL: [WriteStep; 6] = [
        WriteStep::CreatedTemp,
        WriteStep::WroteBody,
        WriteStep::WroteHeader,
        WriteStep::SyncedFile,
        WriteStep::Renamed,
        WriteStep::SyncedDir,
    ];
}

/// The snapshots of one node, newest last.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    keep: usize,
    /// Sorted by slot, at most `keep` long after every write.
    snapshots: Vec<SnapshotMeta>,
    /// Where a test makes the next write stop, as a crash would.
    #[cfg(test)]
    crash_after: Option<WriteStep>,
}

impl SnapshotStore {
    /// Opens (creating if needed) the snapshot directory with the default
    /// retention ([`DEFAULT_KEEP`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<(SnapshotStore, OpenReport), SnapshotError> {
        SnapshotStore::open_keeping(dir, DEFAULT_KEEP)
    }

    /// Opens the snapshot directory, keeping the newest `keep` snapshots
    /// (at least one). Removes temporary files of interrupted writes, checks
    /// the header and length of every snapshot, then removes snapshots
    /// beyond `keep`. Files whose names do not start with `snap-` are left
    /// alone.
    pub fn open_keeping(
        dir: impl AsRef<Path>,
        keep: usize,
    ) -> Result<(SnapshotStore, OpenReport), SnapshotError> {
        let dir = dir.as_ref().to_path_buf();
        create_dir_synced(&dir)?;
        let mut report = OpenReport::default();
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let entry = entry.map_err(io_err("list", &dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                if name.as_encoded_bytes().starts_with(PREFIX.as_bytes()) {
                    return Err(SnapshotError::BadName { path });
                }
                continue;
            };
            match classify(name) {
                Ok(Name::Snapshot(slot)) => found.push((slot, path)),
                Ok(Name::Temp) => {
                    let bytes = file_bytes(&path);
                    fs::remove_file(&path).map_err(io_err("remove", &path))?;
                    report.removed_temp.push(RemovedFile {
                        name: name.to_owned(),
                        bytes,
                    });
                }
                Ok(Name::Other) => {}
                Err(()) => return Err(SnapshotError::BadName { path }),
            }
        }
        found.sort_by_key(|(slot, _)| *slot);
        let mut snapshots = Vec::with_capacity(found.len());
        for (slot, path) in found {
            let (_, header) = open_checked(&path)?;
            if header.slot != slot {
                return Err(corrupt(
                    &path,
                    format!(
                        "the header says slot {} but the name says slot {slot}",
                        header.slot
                    ),
                ));
            }
            snapshots.push(SnapshotMeta {
                slot,
                path,
                bytes: header.body_bytes,
                crc: header.body_crc,
            });
        }
        let mut store = SnapshotStore {
            dir,
            keep: keep.max(1),
            snapshots,
            #[cfg(test)]
            crash_after: None,
        };
        if !report.removed_temp.is_empty() {
            sync_dir(&store.dir)?;
        }
        report.removed_old = store.retain()?;
        report.snapshots = store.snapshots.len();
        Ok((store, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest snapshot, if any.
    pub fn latest(&self) -> Option<&SnapshotMeta> {
        self.snapshots.last()
    }

    /// Every kept snapshot, oldest first.
    pub fn list(&self) -> &[SnapshotMeta] {
        &self.snapshots
    }

    /// Writes the snapshot of `slot`: `body` streams it into the file (it
    /// is never held in memory here). When this returns `Ok`, the snapshot
    /// is durable under its final name and older snapshots beyond `keep`
    /// are gone. A slot below the newest snapshot's is refused; the same
    /// slot replaces it.
    pub fn write<F>(&mut self, slot: u64, body: F) -> Result<SnapshotMeta, SnapshotError>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()>,
    {
        let written = self.begin_write(slot)?.write(body)?;
        self.finish_write(written)
    }

    /// The first half of [`SnapshotStore::write`]: a temporary file for the
    /// snapshot of `slot`, whose slow writing needs no access to the store,
    /// so a caller that shares the store need not hold it meanwhile.
    pub fn begin_write(&self, slot: u64) -> Result<TempWrite, SnapshotError> {
        self.check_not_stale(slot)?;
        Ok(TempWrite {
            slot,
            temp: self.dir.join(temp_file_name(slot)),
            steps: self.steps(),
        })
    }

    /// The second half of [`SnapshotStore::write`]: the synced temporary file
    /// is renamed into place (unless a newer snapshot arrived meanwhile).
    pub fn finish_write(&mut self, written: Written) -> Result<SnapshotMeta, SnapshotError> {
        let Written {
            temp,
            header,
            steps,
        } = written;
        let result = match self.check_not_stale(header.slot) {
            Ok(()) => self.install_synced(&temp, header),
            Err(e) => Err(e),
        };
        if result.is_err() && !steps.crash_simulated() {
            // Best effort: a leftover temp file is removed by the next open.
            let _ = fs::remove_file(&temp);
        }
        result
    }

    /// Installs a complete snapshot file written elsewhere in the same file
    /// system (a received snapshot): checks its header, length and body
    /// checksum, fsyncs it, renames it to its final name here and fsyncs
    /// the directories. On a damaged file nothing is installed and the file
    /// is left where it was.
    pub fn install(&mut self, framed: &Path) -> Result<SnapshotMeta, SnapshotError> {
        let (mut file, header) = open_checked(framed)?;
        self.check_not_stale(header.slot)?;
        verify_body(framed, &mut file, &header)?;
        drop(file);
        // Synced again here, so no caller can forget it before the rename.
        OpenOptions::new()
            .write(true)
            .open(framed)
            .and_then(|f| f.sync_all())
            .map_err(io_err("sync", framed))?;
        let meta = self.install_synced(framed, header)?;
        let from = framed
            .parent()
            .filter(|p| !p.as_os_str().is_empty() && *p != self.dir.as_path());
        if let Some(from) = from {
            sync_dir(from)?;
        }
        Ok(meta)
    }

    /// Checks the body of a snapshot against its header, reading it once.
    pub fn verify(&self, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        let (mut file, header) = self.open_matching(meta)?;
        verify_body(&meta.path, &mut file, &header)
    }

    /// A reader of the body. It checks the length and checksum as it goes
    /// and fails with an `io::Error` (of kind `InvalidData`, carrying a
    /// [`SnapshotError::Corrupt`] that names the file) when the last byte
    /// is read and they do not match, so a consumer never finishes
    /// successfully on damaged data.
    pub fn open_reader(&self, meta: &SnapshotMeta) -> Result<SnapshotReader, SnapshotError> {
        let (file, header) = self.open_matching(meta)?;
        Ok(SnapshotReader {
            path: meta.path.clone(),
            file,
            remaining: header.body_bytes,
            expected_crc: header.body_crc,
            crc: Crc32c::new(),
        })
    }

    /// Opens the body of a snapshot for reading pieces of it (chunks for a
    /// peer). The header must still be the one listed. The file stays
    /// readable after retention deletes it, for as long as it is open.
    pub fn open_body(&self, meta: &SnapshotMeta) -> Result<SnapshotBody, SnapshotError> {
        let (file, _) = self.open_matching(meta)?;
        Ok(SnapshotBody {
            meta: meta.clone(),
            file,
        })
    }

    fn open_matching(&self, meta: &SnapshotMeta) -> Result<(File, Header), SnapshotError> {
        let (file, header) = open_checked(&meta.path)?;
        let expected = Header {
            slot: meta.slot,
            body_bytes: meta.bytes,
            body_crc: meta.crc,
        };
        if header != expected {
            return Err(corrupt(
                &meta.path,
                format!("the header changed since it was listed ({header:?}, listed {expected:?})"),
            ));
        }
        Ok((file, header))
    }

    fn check_not_stale(&self, slot: u64) -> Result<(), SnapshotError> {
        match self.latest() {
            Some(latest) if latest.slot > slot => Err(SnapshotError::Stale {
                slot,
                latest: latest.slot,
            }),
            _ => Ok(()),
        }
    }

    /// Renames a synced snapshot file to its final name, syncs the
    /// directory and applies retention.
    fn install_synced(
        &mut self,
        from: &Path,
        header: Header,
    ) -> Result<SnapshotMeta, SnapshotError> {
        let path = self.dir.join(snapshot_file_name(header.slot));
        fs::rename(from, &path).map_err(io_err("rename into place", from))?;
        let meta = SnapshotMeta {
            slot: header.slot,
            path,
            bytes: header.body_bytes,
            crc: header.body_crc,
        };
        self.snapshots.retain(|s| s.slot != meta.slot);
        self.snapshots.push(meta.clone());
        self.snapshots.sort_by_key(|s| s.slot);
        self.steps().reached(WriteStep::Renamed)?;
        sync_dir(&self.dir)?;
        self.steps().reached(WriteStep::SyncedDir)?;
        self.retain()?;
        Ok(meta)
    }

    /// Deletes the oldest snapshots beyond `keep`, oldest first, then syncs
    /// the directory.
    fn retain(&mut self) -> Result<Vec<RemovedFile>, SnapshotError> {
        let mut removed = Vec::new();
        while self.snapshots.len() > self.keep {
            let old = &self.snapshots[0];
            let bytes = file_bytes(&old.path);
            fs::remove_file(&old.path).map_err(io_err("remove", &old.path))?;
            let name = old
                .path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            removed.push(RemovedFile { name, bytes });
            self.snapshots.remove(0);
        }
        if !removed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    #[cfg(test)]
    pub(crate) fn crash_after(&mut self, step: WriteStep) {
        self.crash_after = Some(step);
    }

    fn steps(&self) -> Steps {
        Steps {
            #[cfg(test)]
            crash_after: self.crash_after,
            #[cfg(test)]
            dir: self.dir.clone(),
        }
    }
}

/// Creates `dir` and any missing parents, syncing each new name into its
/// The body of a snapshot, open for reading pieces of it.
#[derive(Debug)]
pub struct SnapshotBody {
    meta: SnapshotMeta,
    file: File,
}

impl SnapshotBody {
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Reads `len` bytes of the body from `offset`. The body's checksum is
    /// the reader's to check, over the whole.
    pub fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, SnapshotError> {
        let path = &self.meta.path;
        let in_body = offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= self.meta.bytes);
        if !in_body {
            return Err(corrupt(
                path,
                format!(
                    "no {len} bytes at offset {offset} of a {}-byte body",
                    self.meta.bytes
                ),
            ));
        }
        let mut data = vec![0u8; len];
        self.file
            .seek(SeekFrom::Start(HEADER_BYTES as u64 + offset))
            .and_then(|_| self.file.read_exact(&mut data))
            .map_err(io_err("read", path))?;
        Ok(data)
    }
}

/// A snapshot being written to its temporary file; see
/// [`SnapshotStore::begin_write`].
#[derive(Debug)]
pub struct TempWrite {
    slot: u64,
    temp: PathBuf,
    steps: Steps,
}

/// A snapshot written and synced under its temporary name, for
/// [`SnapshotStore::finish_write`].
#[derive(Debug)]
pub struct Written {
    temp: PathBuf,
    header: Header,
    steps: Steps,
}

impl TempWrite {
    /// Streams the body into a fresh temporary file behind a zeroed header,
    /// writes the header and syncs the file.
    pub fn write<F>(self, body: F) -> Result<Written, SnapshotError>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()>,
    {
        let TempWrite { slot, temp, steps } = self;
        let result = write_temp(slot, &temp, &steps, body);
        match result {
            Ok(header) => Ok(Written {
                temp,
                header,
                steps,
            }),
            Err(e) => {
                if !steps.crash_simulated() {
                    // Best effort: a leftover is removed by the next open.
                    let _ = fs::remove_file(&temp);
                }
                Err(e)
            }
        }
    }
}

fn write_temp<F>(slot: u64, temp: &Path, steps: &Steps, body: F) -> Result<Header, SnapshotError>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    // A leftover of an earlier failed attempt in this process.
    match fs::remove_file(temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_err("remove", temp)(e));
        }
        _ => {}
    }
    let mut file = File::create_new(temp).map_err(io_err("create", temp))?;
    file.write_all(&[0u8; HEADER_BYTES])
        .map_err(io_err("write", temp))?;
    steps.reached(WriteStep::CreatedTemp)?;
    let (body_bytes, body_crc) = {
        let mut out = BufWriter::with_capacity(
            IO_BUFFER_BYTES,
            Counting {
                inner: Paced {
                    file: &mut file,
                    unsynced: 0,
                },
                crc: Crc32c::new(),
                bytes: 0,
            },
        );
        body(&mut out).map_err(|source| SnapshotError::Body { slot, source })?;
        out.flush().map_err(io_err("write", temp))?;
        let counted = out.get_ref();
        (counted.bytes, counted.crc.finish())
    };
    steps.reached(WriteStep::WroteBody)?;
    let header = Header {
        slot,
        body_bytes,
        body_crc,
    };
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.write_all(&header.encode()))
        .map_err(io_err("write header of", temp))?;
    steps.reached(WriteStep::WroteHeader)?;
    file.sync_all().map_err(io_err("sync", temp))?;
    steps.reached(WriteStep::SyncedFile)?;
    Ok(header)
}

/// Where a test asked a write to stop, as if the process crashed there.
#[derive(Clone, Debug)]
struct Steps {
    #[cfg(test)]
    crash_after: Option<WriteStep>,
    #[cfg(test)]
    dir: PathBuf,
}

impl Steps {
    #[cfg(test)]
    fn crash_simulated(&self) -> bool {
        self.crash_after.is_some()
    }

    #[cfg(not(test))]
    fn crash_simulated(&self) -> bool {
        false
    }

    /// Stops the write here if a test asked for a crash at this step.
    #[cfg(test)]
    fn reached(&self, step: WriteStep) -> Result<(), SnapshotError> {
        if self.crash_after == Some(step) {
            return Err(SnapshotError::Io {
                op: "continue after a simulated crash in",
                path: self.dir.clone(),
                source: io::Error::other(format!("stopped after {step:?}")),
            });
        }
        Ok(())
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn reached(&self, _step: WriteStep) -> Result<(), SnapshotError> {
        Ok(())
    }
}

/// parent so a crash cannot lose the directory.
pub(crate) fn create_dir_synced(dir: &Path) -> Result<(), SnapshotError> {
    if dir.is_dir() {
        return Ok(());
    }
    let created: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .map(Path::to_path_buf)
        .collect();
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    for new in &created {
        if let Some(parent) = new.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Passes writes through, counting and checksumming what was written.
struct Counting<W> {
    inner: W,
    crc: Crc32c,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        // A writer claiming more than it was given breaks the contract;
        // count what it was given rather than panic.
        let written = buf.get(..n).unwrap_or(buf);
        self.crc.update(written);
        self.bytes += written.len() as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A file written with a sync every [`SYNC_EVERY_BYTES`].
struct Paced<'a> {
    file: &'a mut File,
    unsynced: u64,
}

impl Write for Paced<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Checks a body as it streams past; used by [`verify_body`].
struct BodyReader<'a> {
    path: &'a Path,
    file: &'a mut File,
    remaining: u64,
    expected_crc: u32,
    crc: Crc32c,
}

impl<'a> BodyReader<'a> {
    fn new(path: &'a Path, file: &'a mut File, header: &Header) -> BodyReader<'a> {
        BodyReader {
            path,
            file,
            remaining: header.body_bytes,
            expected_crc: header.body_crc,
            crc: Crc32c::new(),
        }
    }
}

impl Read for BodyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_checked(
            self.path,
            &mut *self.file,
            &mut self.remaining,
            self.expected_crc,
            &mut self.crc,
            buf,
        )
    }
}

/// The body of one snapshot, checked as it is read; see
/// [`SnapshotStore::open_reader`]. Reads go straight to the file: wrap it
/// in a `BufReader` for small reads.
#[derive(Debug)]
pub struct SnapshotReader {
    path: PathBuf,
    file: File,
    remaining: u64,
    expected_crc: u32,
    crc: Crc32c,
}

impl SnapshotReader {
    /// Body bytes not yet read.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_checked(
            &self.path,
            &mut self.file,
            &mut self.remaining,
            self.expected_crc,
            &mut self.crc,
            buf,
        )
    }
}

/// One read of a checked body: never past the announced length, and the
/// read that delivers the last byte fails instead if the checksum is wrong.
fn read_checked(
    path: &Path,
    file: &mut File,
    remaining: &mut u64,
    expected_crc: u32,
    crc: &mut Crc32c,
    buf: &mut [u8],
) -> io::Result<usize> {
    if *remaining == 0 || buf.is_empty() {
        return Ok(0);
    }
    let want = buf
        .len()
        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
    let n = file.read(&mut buf[..want])?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            corrupt(
                path,
                format!("the file ends {} bytes before its body does", *remaining),
            ),
        ));
    }
    crc.update(&buf[..n]);
    *remaining -= n as u64;
    if *remaining == 0 {
        let computed = crc.finish();
        if computed != expected_crc {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                corrupt(
                    path,
                    format!(
                        "body checksum mismatch (header says {expected_crc:#010x}, body has {computed:#010x})"
                    ),
                ),
            ));
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use paxos::rng::Rng;

    use super::super::Scratch;
    use super::*;
    use kv::{Command, Request, SetCondition, Store};

    fn body_of(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        (0..len).map(|_| rng.next_u64() as u8).collect()
    }

    fn write_bytes(store: &mut SnapshotStore, slot: u64, body: &[u8]) -> SnapshotMeta {
        store
            .write(slot, |w| w.write_all(body))
            .expect("write snapshot")
    }

    fn read_all(store: &SnapshotStore, meta: &SnapshotMeta) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        store
            .open_reader(meta)
            .expect("open reader")
            .read_to_end(&mut out)?;
        Ok(out)
    }

    fn flip_bit(path: &Path, at: u64, bit: u8) {
        let mut data = fs::read(path).expect("read");
        data[at as usize] ^= 1 << bit;
        fs::write(path, data).expect("write");
    }

    fn store_with_keys(n: usize) -> Store {
        let mut store = Store::new();
        for i in 0..n {
            let command = Command::Set {
                key: Bytes::from(format!("key-{i:06}")),
                value: Bytes::from(format!("value-{i}-").repeat(1 + i % 7)),
                condition: SetCondition::None,
                get: false,
            };
            store.apply(i as u64 + 1, &Request::anonymous(command));
        }
        store
    }

    fn kv_image(store: &Store) -> Vec<u8> {
        let mut out = Vec::new();
        store.snapshot_to(&mut out).expect("to memory");
        out
    }

    #[test]
    fn a_store_with_many_keys_round_trips() {
        let scratch = Scratch::new("snap-roundtrip");
        let (mut snaps, report) = SnapshotStore::open(scratch.path()).expect("open");
        assert_eq!(report, OpenReport::default());
        assert!(snaps.latest().is_none());
        let kv = store_with_keys(20_000);
        let slot = kv.last_applied().expect("applied");
        let meta = snaps
            .write(slot, |w| kv.snapshot_to(&mut &mut *w))
            .expect("write");
        assert_eq!(meta.slot, 20_000);
        assert_eq!(
            fs::metadata(&meta.path).expect("stat").len(),
            meta.bytes + HEADER_BYTES as u64
        );
        assert_eq!(
            meta.path.file_name().and_then(|n| n.to_str()),
            Some("snap-00000000000000020000.snap")
        );
        drop(snaps);

        let (snaps, report) = SnapshotStore::open(scratch.path()).expect("reopen");
        assert_eq!(report.snapshots, 1);
        let latest = snaps.latest().expect("a snapshot").clone();
        assert_eq!(latest, meta);
        snaps.verify(&latest).expect("intact");
        let mut reader = io::BufReader::new(snaps.open_reader(&latest).expect("reader"));
        let restored = Store::restore_from(&mut reader).expect("restore");
        assert_eq!(restored.len(), 20_000);
        assert_eq!(restored.last_applied(), Some(20_000));
        assert_eq!(kv_image(&restored), kv_image(&kv));
    }

    #[test]
    fn a_failing_body_leaves_nothing_behind() {
        let scratch = Scratch::new("snap-body-error");
        let (mut snaps, _) = SnapshotStore::open(scratch.path()).expect("open");
        let old = write_bytes(&mut snaps, 5, b"old");
        let err = snaps
            .write(9, |w| {
                w.write_all(&[1u8; 100_000])?;
                Err(io::Error::other("state machine went away"))
            })
            .expect_err("the body failed");
        assert!(matches!(err, SnapshotError::Body { slot: 9, .. }), "{err}");
        assert_eq!(snaps.latest(), Some(&old));
        let names: Vec<_> = fs::read_dir(scratch.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn retention_keeps_the_newest_and_refuses_older_slots() {
        let scratch = Scratch::new("snap-retention");
        let (mut snaps, _) = SnapshotStore::open_keeping(scratch.path(), 3).expect("open");
        for slot in [10, 20, 30, 40, 50] {
            write_bytes(&mut snaps, slot, &body_of(slot, 1000));
        }
        let slots: Vec<u64> = snaps.list().iter().map(|m| m.slot).collect();
        assert_eq!(slots, [30, 40, 50]);
        let on_disk = fs::read_dir(scratch.path()).expect("list").count();
        assert_eq!(on_disk, 3);
        match snaps.write(45, |w| w.write_all(b"x")) {
            Err(SnapshotError::Stale {
                slot: 45,
                latest: 50,
            }) => {}
            other => panic!("expected a stale-slot error, got {other:?}"),
        }
        // The same slot again replaces it.
        let again = write_bytes(&mut snaps, 50, b"replacement");
        assert_eq!(read_all(&snaps, &again).expect("read"), b"replacement");
        assert_eq!(snaps.list().len(), 3);
        drop(snaps);

        // A store opened with a smaller retention prunes at once, oldest first.
        let (snaps, report) = SnapshotStore::open(scratch.path()).expect("reopen");
        let slots: Vec<u64> = snaps.list().iter().map(|m| m.slot).collect();
        assert_eq!(slots, [40, 50]);
        assert_eq!(report.removed_old.len(), 1);
        assert_eq!(report.removed_old[0].name, snapshot_file_name(30));
    }

    /// A crash after each step of a write, followed by the loss of whatever
    /// was not yet synced, must leave either the old snapshot or the new one,
    /// intact, as the newest.
    #[test]
    fn a_crash_at_any_step_leaves_the_old_or_the_new_snapshot_intact() {
        let old_body = body_of(1, 150_000);
        let new_body = body_of(2, 170_000);
        for step in WriteStep::ALL {
            for lose_unsynced in [false, true] {
                let scratch = Scratch::new("snap-crash");
                let (mut snaps, _) = SnapshotStore::open(scratch.path()).expect("open");
                write_bytes(&mut snaps, 100, &old_body);
                snaps.crash_after(step);
                let result = snaps.write(200, |w| w.write_all(&new_body));
                assert!(result.is_err(), "the write stopped after {step:?}");
                drop(snaps);

                let temp = scratch.path().join(temp_file_name(200));
                let synced = matches!(
                    step,
                    WriteStep::SyncedFile | WriteStep::Renamed | WriteStep::SyncedDir
                );
                if lose_unsynced && !synced && temp.exists() {
                    // Unsynced data may reach the disk in part, in any order:
                    // keep a prefix, and zero the header as if it never landed.
                    let data = fs::read(&temp).expect("read temp");
                    let mut kept = data[..data.len() / 2].to_vec();
                    let header_end = HEADER_BYTES.min(kept.len());
                    kept[..header_end].fill(0);
                    fs::write(&temp, kept).expect("tear temp");
                }
                let temp_existed = temp.exists();

                let (snaps, report) = SnapshotStore::open(scratch.path())
                    .unwrap_or_else(|e| panic!("reopen after {step:?}: {e}"));
                let latest = snaps.latest().expect("a snapshot survives").clone();
                snaps
                    .verify(&latest)
                    .unwrap_or_else(|e| panic!("after {step:?}: {e}"));
                let body = read_all(&snaps, &latest).expect("read");
                let renamed = matches!(step, WriteStep::Renamed | WriteStep::SyncedDir);
                if renamed {
                    assert_eq!(latest.slot, 200, "after {step:?}");
                    assert_eq!(body, new_body, "after {step:?}");
                } else {
                    assert_eq!(latest.slot, 100, "after {step:?}");
                    assert_eq!(body, old_body, "after {step:?}");
                }
                assert!(!temp.exists(), "open removes the temporary file");
                assert_eq!(
                    report.removed_temp.len(),
                    usize::from(temp_existed),
                    "after {step:?}: {report:?}"
                );
                if let Some(removed) = report.removed_temp.first() {
                    assert_eq!(removed.name, temp_file_name(200));
                }
            }
        }
    }

    #[test]
    fn a_header_bit_flip_is_an_error_naming_the_file() {
        let body = body_of(3, 5000);
        for at in [0u64, 8, 13, 21, 29, 33] {
            let scratch = Scratch::new("snap-header-flip");
            let (mut snaps, _) = SnapshotStore::open(scratch.path()).expect("open");
            let meta = write_bytes(&mut snaps, 7, &body);
            drop(snaps);
            flip_bit(&meta.path, at, 3);
            match SnapshotStore::open(scratch.path()) {
                Err(e @ SnapshotError::Corrupt { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains(&snapshot_file_name(7)), "{text}");
                    assert!(text.contains("rejoin"), "{text}");
                }
                other => panic!("flip at {at}: expected damage, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_body_bit_flip_fails_the_reader_at_the_end_and_verify() {
        let scratch = Scratch::new("snap-body-flip");
        let kv = store_with_keys(500);
        let (mut snaps, _) = SnapshotStore::open(scratch.path()).expect("open");
        let meta = snaps
            .write(500, |w| kv.snapshot_to(&mut &mut *w))
            .expect("write");
        drop(snaps);
        flip_bit(&meta.path, HEADER_BYTES as u64 + meta.bytes / 2, 0);

        let (snaps, _) = SnapshotStore::open(scratch.path()).expect("the header is fine");
        let latest = snaps.latest().expect("listed").clone();
        let err = snaps.verify(&latest).expect_err("damage is found");
        assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&snapshot_file_name(500)), "{err}");

        let err = read_all(&snaps, &latest).expect_err("the reader fails");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains(&snapshot_file_name(500)), "{err}");
    }

    #[test]
    fn a_truncated_snapshot_is_damage_not_a_valid_snapshot() {
        let scratch = Scratch::new("snap-truncated");
        let (mut snaps, _) = SnapshotStore::open(scratch.path()).expect("open");
        let meta = write_bytes(&mut snaps, 3, &body_of(4, 10_000));
        drop(snaps);
        let data = fs::read(&meta.path).expect("read");
        for keep in [0, 10, HEADER_BYTES, data.len() - 1] {
            fs::write(&meta.path, &data[..keep]).expect("truncate");
            let err = SnapshotStore::open(scratch.path()).expect_err("truncated");
            assert!(
                matches!(err, SnapshotError::Corrupt { .. }),
                "{keep}: {err}"
            );
        }
    }

    #[test]
    fn bad_names_are_errors_and_other_files_are_left_alone() {
        let scratch = Scratch::new("snap-names");
        SnapshotStore::open(scratch.path()).expect("creates the directory");
        fs::write(scratch.path().join("notes.txt"), b"hello").expect("write");
        let (snaps, _) = SnapshotStore::open(scratch.path()).expect("other files are fine");
        assert!(snaps.latest().is_none());
        for bad in [
            "snap-12.snap",
            "snap-abc.snap",
            "snap-00000000000000000001.bin",
        ] {
            let path = scratch.path().join(bad);
            fs::write(&path, b"x").expect("write");
            match SnapshotStore::open(scratch.path()) {
                Err(e @ SnapshotError::BadName { .. }) => {
                    assert!(e.to_string().contains(bad), "{e}");
                }
                other => panic!("{bad}: expected a bad name, got {other:?}"),
            }
            fs::remove_file(&path).expect("remove");
        }
        assert!(scratch.path().join("notes.txt").exists());
    }

    #[test]
    fn install_takes_a_framed_file_only_if_it_checks_out() {
        let scratch = Scratch::new("snap-install");
        let (mut snaps, _) = SnapshotStore::open(scratch.path()).expect("open");
        let body = body_of(5, 3000);
        let framed = scratch.path().join("incoming.part");
        let header = Header {
            slot: 42,
            body_bytes: body.len() as u64,
            body_crc: crc32c(&body),
        };
        let mut data = header.encode().to_vec();
        data.extend_from_slice(&body);
        data[HEADER_BYTES + 7] ^= 0x10;
        fs::write(&framed, &data).expect("write");
        let err = snaps.install(&framed).expect_err("damaged body");
        assert!(matches!(err, SnapshotError::Corrupt { .. }), "{err}");
        assert!(framed.exists(), "left for the caller");
        assert!(snaps.latest().is_none());

        data[HEADER_BYTES + 7] ^= 0x10;
        fs::write(&framed, &data).expect("write");
        let meta = snaps.install(&framed).expect("install");
        assert_eq!(meta.slot, 42);
        assert!(!framed.exists());
        assert_eq!(read_all(&snaps, &meta).expect("read"), body);
    }
}
