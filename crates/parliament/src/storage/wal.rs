//! Write-ahead log: segmented, append-only files of checksummed records.
//!
//! A node must not answer a Paxos message before what it promised or accepted
//! is on disk, so every append ends with an fdatasync. To make that affordable
//! under load, [`GroupCommit`] runs the log on its own thread and folds every
//! request that arrives during one write+sync into the next one.
//!
//! On disk the log is a directory of segments named
//! `wal-<index of the first record, 20 digits>.log`. Each record is framed as
//! `[payload length u32 LE][crc32c of payload u32 LE][payload]`, and records
//! are numbered consecutively from 1. Payloads are opaque here.
//!
//! Recovery trusts the log only as far as it can prove it. In the last
//! segment, a final record that runs past the end of the file, or fails its
//! checksum with nothing but zeros (or nothing) after it, or a zero-filled
//! tail, is what a crash mid-write leaves: it is cut off and reported. Every
//! other bad record, a bad record in an earlier segment, a length above the
//! limit, a gap in indexes between segments, or a length field one bit away
//! from a valid record, stops the node instead, because silently dropping an
//! acknowledged record would break the promises the rest of the cluster relies
//! on. Empty records are refused on append so that zeros are never data.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::kv::crc32c;

/// Bytes of framing before each payload: length and checksum.
pub const RECORD_HEADER_BYTES: usize = 8;
/// Default size after which appends move on to a new segment.
pub const DEFAULT_SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Default limit on one record's payload.
pub const DEFAULT_RECORD_BYTES_MAX: u32 = 64 << 20;

const SEGMENT_PREFIX: &str = "wal-";
const SEGMENT_SUFFIX: &str = ".log";

/// When appends reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fdatasync after every append (the default); required for Paxos to be
    /// correct.
    Always,
    /// Never sync. UNSAFE: a crash can lose acknowledged records, which lets a
    /// node break its promises. For tests and benchmarks only.
    Never,
}

/// Tuning of a [`Wal`].
#[derive(Clone, Debug)]
pub struct Options {
    /// An append that would grow a non-empty segment past this starts a new one.
    pub segment_bytes_max: u64,
    /// Largest accepted payload; also bounds what recovery will believe a
    /// length field, so a damaged length cannot make it allocate gigabytes.
    pub record_bytes_max: u32,
    pub fsync: FsyncPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes_max: DEFAULT_SEGMENT_BYTES_MAX,
            record_bytes_max: DEFAULT_RECORD_BYTES_MAX,
            fsync: FsyncPolicy::Always,
        }
    }
}

/// Failures of the log. Clone so that one failed group write can be reported
/// to every waiting submitter.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log: cannot {op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    #[error(
        "the log of this node is damaged at {} offset {offset}: {reason}. \
         Do not delete or edit the log to make the node start (that can lose \
         acknowledged writes); instead restart the node with --rejoin: it moves the \
         damaged log aside and re-learns it from a quorum as a learner before it votes again",
        .path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("record of {len} bytes exceeds the limit of {max} bytes; nothing was written")]
    RecordTooLarge { len: usize, max: u32 },
    #[error(
        "empty records are not accepted (a zero length marks a zero-filled tail); nothing was written"
    )]
    EmptyRecord,
    #[error(
        "write-ahead log in {} refuses writes after an earlier write or sync \
         failure (what reached the disk is unknown); restart the node to recover it",
        .dir.display()
    )]
    Failed { dir: PathBuf },
    #[error("write-ahead log writer thread has stopped")]
    WriterStopped,
    #[error("write-ahead log queue is full")]
    QueueFull,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |e| WalError::Io {
        op,
        path: path.to_path_buf(),
        source: Arc::new(e),
    }
}

/// The tail that recovery cut off the last segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    /// Where the file now ends.
    pub offset: u64,
    pub bytes_dropped: u64,
}

/// What [`Wal::open`] found on disk.
#[derive(Clone, Debug)]
pub struct Recovered {
    /// Every valid record, in index order.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Index the first remaining segment starts at (earlier ones were removed).
    pub first_index: u64,
    /// Index of the last record, or `first_index - 1` if there is none.
    pub last_index: u64,
    pub segments: usize,
    /// A partial write from a crash that was truncated; the caller logs it.
    pub torn: Option<TornTail>,
}

/// Running totals, shared with [`GroupCommit`] and readable from any thread.
#[derive(Debug, Default)]
pub struct WalStats {
    records_written: AtomicU64,
    writes: AtomicU64,
    syncs: AtomicU64,
}

/// A snapshot of [`WalStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalCounters {
    pub records_written: u64,
    /// Append calls that wrote something (one write each).
    pub writes: u64,
    /// fdatasync calls on segment files.
    pub syncs: u64,
}

impl WalStats {
    pub fn snapshot(&self) -> WalCounters {
        WalCounters {
            records_written: self.records_written.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Debug)]
struct Segment {
    first_index: u64,
    path: PathBuf,
}

/// The log, owned by one writer. See [`GroupCommit`] to share it.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    opts: Options,
    /// Sorted by first index; the last one is being appended to.
    segments: Vec<Segment>,
    file: File,
    file_bytes: u64,
    next_index: u64,
    /// Set when a write or sync failed: the file's contents are then unknown,
    /// and retrying could acknowledge a record after a lost one.
    failed: bool,
    stats: Arc<WalStats>,
}

/// File name of the segment whose first record has this index.
pub fn segment_file_name(first_index: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_index:020}{SEGMENT_SUFFIX}")
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// Lists the segment files of `dir`, sorted by first index. Other files are
/// left alone; a file that looks like a segment but has a bad name is an error
/// rather than skipped, since skipping it could hide records.
fn list_segments(dir: &Path) -> Result<Vec<Segment>, WalError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name
            .strip_prefix(SEGMENT_PREFIX)
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
        else {
            continue;
        };
        let path = entry.path();
        let first_index = match digits.parse::<u64>() {
            Ok(i) if i >= 1 && digits.len() == 20 => i,
            _ => {
                return Err(WalError::Corrupt {
                    path,
                    offset: 0,
                    reason: "segment file name does not carry a valid first index".into(),
                });
            }
        };
        segments.push(Segment { first_index, path });
    }
    segments.sort_by_key(|s| s.first_index);
    Ok(segments)
}

/// True if flipping one bit of `len` gives a frame that fits in `rest` and
/// whose checksum matches: the "torn" record is then a damaged length field in
/// the middle of good data, and truncating would throw good records away.
fn length_bit_flipped(rest: &[u8], len: u32, stored_crc: u32, max: u32) -> bool {
    (0..32).any(|bit| {
        let other = len ^ (1 << bit);
        let end = RECORD_HEADER_BYTES + other as usize;
        other <= max && end <= rest.len() && crc32c(&rest[RECORD_HEADER_BYTES..end]) == stored_crc
    })
}

/// Parses one segment, pushing its records onto `out`. Returns the length of
/// the valid prefix; a shorter length than the data is a torn tail, which is
/// only ever returned for the last segment.
fn scan_segment(
    path: &Path,
    data: &[u8],
    first_index: u64,
    is_last: bool,
    max: u32,
    out: &mut Vec<(u64, Vec<u8>)>,
) -> Result<usize, WalError> {
    let corrupt = |offset: usize, reason: String| WalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    let mut off = 0usize;
    let mut index = first_index;
    while off < data.len() {
        let rest = &data[off..];
        if rest.len() < RECORD_HEADER_BYTES {
            if is_last {
                return Ok(off);
            }
            return Err(corrupt(
                off,
                format!(
                    "record header cut short ({} of {RECORD_HEADER_BYTES} bytes) in a segment that is not the last",
                    rest.len()
                ),
            ));
        }
        let len = le_u32(&rest[0..4]);
        let stored = le_u32(&rest[4..8]);
        if len > max {
            return Err(corrupt(
                off,
                format!("record length {len} exceeds the limit of {max} bytes"),
            ));
        }
        if len == 0 {
            // Appends refuse empty records, so a zero length is either the
            // zero-filled tail some file systems leave after a crash (the size
            // grew, the data never landed) or damage.
            if is_last
                && rest.iter().all(|b| *b == 0)
                && !length_bit_flipped(rest, len, stored, max)
            {
                return Ok(off);
            }
            return Err(corrupt(off, "record of length zero".into()));
        }
        let end = RECORD_HEADER_BYTES + len as usize;
        if end > rest.len() {
            if is_last && !length_bit_flipped(rest, len, stored, max) {
                return Ok(off);
            }
            return Err(corrupt(
                off,
                format!(
                    "record of {len} bytes runs past the end of the file ({} bytes left)",
                    rest.len()
                ),
            ));
        }
        let payload = &rest[RECORD_HEADER_BYTES..end];
        if crc32c(payload) != stored {
            // Torn if nothing but zeros follows: no good record can come after.
            if is_last
                && rest[end..].iter().all(|b| *b == 0)
                && !length_bit_flipped(rest, len, stored, max)
            {
                return Ok(off);
            }
            return Err(corrupt(off, format!("checksum mismatch in record {index}")));
        }
        out.push((index, payload.to_vec()));
        index = index
            .checked_add(1)
            .ok_or_else(|| corrupt(off, "record index overflows".into()))?;
        off += end;
    }
    Ok(off)
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` and replays it.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<(Wal, Recovered), WalError> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            // Every directory created here must have its name synced into its
            // parent, or a crash could lose the whole log.
            let created: Vec<PathBuf> = dir
                .ancestors()
                .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
                .map(Path::to_path_buf)
                .collect();
            fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
            for new in &created {
                if let Some(parent) = new.parent().filter(|p| !p.as_os_str().is_empty()) {
                    sync_dir(parent)?;
                }
            }
        }
        let mut segments = list_segments(&dir)?;
        let mut records = Vec::new();
        let mut torn = None;
        let mut next_index: Option<u64> = None;
        let mut file_bytes = 0u64;
        let count = segments.len();
        for (i, seg) in segments.iter().enumerate() {
            if let Some(expected) = next_index
                && seg.first_index != expected
            {
                return Err(WalError::Corrupt {
                    path: seg.path.clone(),
                    offset: 0,
                    reason: format!(
                        "segment starts at index {} but the previous one ends at index {}",
                        seg.first_index,
                        expected - 1
                    ),
                });
            }
            let data = fs::read(&seg.path).map_err(io_err("read", &seg.path))?;
            let is_last = i + 1 == count;
            let before = records.len();
            let valid = scan_segment(
                &seg.path,
                &data,
                seg.first_index,
                is_last,
                opts.record_bytes_max,
                &mut records,
            )?;
            next_index = Some(seg.first_index + (records.len() - before) as u64);
            if valid < data.len() {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&seg.path)
                    .map_err(io_err("open", &seg.path))?;
                f.set_len(valid as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(io_err("truncate torn tail of", &seg.path))?;
                torn = Some(TornTail {
                    path: seg.path.clone(),
                    offset: valid as u64,
                    bytes_dropped: (data.len() - valid) as u64,
                });
            }
            file_bytes = valid as u64;
        }
        let next_index = next_index.unwrap_or(1);
        if segments.is_empty() {
            let path = dir.join(segment_file_name(next_index));
            File::create_new(&path).map_err(io_err("create", &path))?;
            sync_dir(&dir)?;
            segments.push(Segment {
                first_index: next_index,
                path,
            });
        }
        let first_index = segments[0].first_index;
        let current = &segments[segments.len() - 1].path;
        let file = OpenOptions::new()
            .append(true)
            .open(current)
            .map_err(io_err("open", current))?;
        let recovered = Recovered {
            records,
            first_index,
            last_index: next_index - 1,
            segments: segments.len(),
            torn,
        };
        let wal = Wal {
            dir,
            opts,
            segments,
            file,
            file_bytes,
            next_index,
            failed: false,
            stats: Arc::new(WalStats::default()),
        };
        Ok((wal, recovered))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Index of the last record, or `first_index() - 1` if the log is empty.
    pub fn last_index(&self) -> u64 {
        self.next_index - 1
    }

    /// Index the oldest remaining segment starts at.
    pub fn first_index(&self) -> u64 {
        self.segments
            .first()
            .map_or(self.next_index, |s| s.first_index)
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn stats(&self) -> Arc<WalStats> {
        Arc::clone(&self.stats)
    }

    /// Refuses the whole batch if any record is empty or over the limit, so a
    /// caller never sees half of a batch written.
    pub fn check_sizes<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<(), WalError> {
        let max = self.opts.record_bytes_max;
        for p in payloads {
            let len = p.as_ref().len();
            if len == 0 {
                return Err(WalError::EmptyRecord);
            }
            if len > max as usize {
                return Err(WalError::RecordTooLarge { len, max });
            }
        }
        Ok(())
    }

    /// Appends the records with one write and (with [`FsyncPolicy::Always`])
    /// one fdatasync; returns the index of the last one. When it returns, the
    /// records are durable.
    pub fn append<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Result<u64, WalError> {
        if self.failed {
            return Err(WalError::Failed {
                dir: self.dir.clone(),
            });
        }
        self.check_sizes(payloads)?;
        if payloads.is_empty() {
            return Ok(self.last_index());
        }
        let total: usize = payloads
            .iter()
            .map(|p| RECORD_HEADER_BYTES + p.as_ref().len())
            .sum();
        let mut buf = Vec::with_capacity(total);
        for p in payloads {
            let p = p.as_ref();
            // check_sizes bounded the length by a u32 limit.
            buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32c(p).to_le_bytes());
            buf.extend_from_slice(p);
        }
        if self.file_bytes > 0 && self.file_bytes + total as u64 > self.opts.segment_bytes_max {
            self.rotate()?;
        }
        let result = self.write_and_sync(&buf);
        if result.is_err() {
            self.failed = true;
        }
        result?;
        self.file_bytes += total as u64;
        self.next_index += payloads.len() as u64;
        self.stats
            .records_written
            .fetch_add(payloads.len() as u64, Ordering::Relaxed);
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        Ok(self.last_index())
    }

    fn write_and_sync(&mut self, buf: &[u8]) -> Result<(), WalError> {
        let path = self.segments.last().map_or(&self.dir, |s| &s.path);
        self.file.write_all(buf).map_err(io_err("write", path))?;
        if self.opts.fsync == FsyncPolicy::Always {
            self.file.sync_data().map_err(io_err("sync", path))?;
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Starts a new segment at the next index. The old one is already synced
    /// by its last append; the directory is synced so the new name survives.
    fn rotate(&mut self) -> Result<(), WalError> {
        let path = self.dir.join(segment_file_name(self.next_index));
        let result = File::create_new(&path)
            .and_then(|_| OpenOptions::new().append(true).open(&path))
            .map_err(io_err("create", &path))
            .and_then(|f| sync_dir(&self.dir).map(|()| f));
        match result {
            Ok(file) => {
                self.file = file;
                self.file_bytes = 0;
                self.segments.push(Segment {
                    first_index: self.next_index,
                    path,
                });
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Deletes the oldest segments whose records all have an index below
    /// `index` (never the current segment), oldest first so that a crash in
    /// between leaves no hole. Returns how many were deleted.
    pub fn remove_segments_before(&mut self, index: u64) -> Result<usize, WalError> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[1].first_index <= index {
            let path = &self.segments[0].path;
            fs::remove_file(path).map_err(io_err("remove", path))?;
            self.segments.remove(0);
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

/// Tuning of a [`GroupCommit`].
#[derive(Clone, Debug)]
pub struct GroupCommitOptions {
    /// Requests waiting for the writer; submitters block (or get
    /// [`WalError::QueueFull`] from `try_submit`) beyond this.
    pub queue_depth: usize,
    /// Stop adding requests to one write once it holds this many payload bytes,
    /// bounding the memory of one batch.
    pub batch_bytes_max: usize,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        GroupCommitOptions {
            queue_depth: 1024,
            batch_bytes_max: 16 << 20,
        }
    }
}

struct Request {
    payloads: Vec<Bytes>,
    done: mpsc::Sender<Result<u64, WalError>>,
}

impl Request {
    fn bytes(&self) -> usize {
        self.payloads.iter().map(|p| p.len()).sum()
    }
}

/// The answer to a submitted request; `wait` blocks until it is durable.
#[derive(Debug)]
pub struct Ticket(Receiver<Result<u64, WalError>>);

impl Ticket {
    /// The index of the request's last record, once it is on disk.
    pub fn wait(self) -> Result<u64, WalError> {
        self.0.recv().map_err(|_| WalError::WriterStopped)?
    }
}

/// Owns a [`Wal`] on a dedicated thread and batches concurrent appends: all
/// requests queued while one write+fsync runs go into the next single
/// write+fsync, so throughput grows with the number of writers.
pub struct GroupCommit {
    tx: Option<SyncSender<Request>>,
    worker: Option<JoinHandle<Wal>>,
    stats: Arc<WalStats>,
}

impl GroupCommit {
    pub fn start(wal: Wal, opts: GroupCommitOptions) -> Result<GroupCommit, WalError> {
        let stats = wal.stats();
        let dir = wal.dir().to_path_buf();
        let (tx, rx) = mpsc::sync_channel(opts.queue_depth.max(1));
        let batch_bytes_max = opts.batch_bytes_max;
        let worker = thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer_loop(wal, rx, batch_bytes_max))
            .map_err(io_err("start writer thread for", &dir))?;
        Ok(GroupCommit {
            tx: Some(tx),
            worker: Some(worker),
            stats,
        })
    }

    /// Appends the records and blocks until they are durable; returns the
    /// index of the last one.
    pub fn submit(&self, payloads: Vec<Bytes>) -> Result<u64, WalError> {
        self.submit_async(payloads)?.wait()
    }

    /// Queues the records, blocking only while the queue is full.
    pub fn submit_async(&self, payloads: Vec<Bytes>) -> Result<Ticket, WalError> {
        let (done, ticket) = mpsc::channel();
        let tx = self.tx.as_ref().ok_or(WalError::WriterStopped)?;
        tx.send(Request { payloads, done })
            .map_err(|_| WalError::WriterStopped)?;
        Ok(Ticket(ticket))
    }

    /// Queues the records, or fails at once with [`WalError::QueueFull`].
    pub fn try_submit(&self, payloads: Vec<Bytes>) -> Result<Ticket, WalError> {
        let (done, ticket) = mpsc::channel();
        let tx = self.tx.as_ref().ok_or(WalError::WriterStopped)?;
        match tx.try_send(Request { payloads, done }) {
            Ok(()) => Ok(Ticket(ticket)),
            Err(TrySendError::Full(_)) => Err(WalError::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(WalError::WriterStopped),
        }
    }

    pub fn counters(&self) -> WalCounters {
        self.stats.snapshot()
    }

    /// Finishes the queued requests and hands the log back.
    pub fn close(mut self) -> Result<Wal, WalError> {
        self.tx = None;
        match self.worker.take() {
            Some(w) => w.join().map_err(|_| WalError::WriterStopped),
            None => Err(WalError::WriterStopped),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(w) = self.worker.take() {
            // A panicked writer has nothing left to clean up.
            let _ = w.join();
        }
    }
}

fn writer_loop(mut wal: Wal, rx: Receiver<Request>, batch_bytes_max: usize) -> Wal {
    let mut carried: Option<Request> = None;
    loop {
        let first = match carried.take() {
            Some(r) => r,
            None => match rx.recv() {
                Ok(r) => r,
                Err(_) => return wal,
            },
        };
        let mut batch: Vec<Request> = Vec::new();
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(r) = next.take() {
            // An oversized request fails alone instead of failing its batch.
            match wal.check_sizes(&r.payloads) {
                Ok(()) => {
                    bytes += r.bytes();
                    batch.push(r);
                }
                Err(e) => {
                    let _ = r.done.send(Err(e));
                }
            }
            if let Ok(r) = rx.try_recv() {
                if !batch.is_empty() && bytes + r.bytes() > batch_bytes_max {
                    carried = Some(r);
                } else {
                    next = Some(r);
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        let refs: Vec<&[u8]> = batch
            .iter()
            .flat_map(|r| r.payloads.iter().map(|p| p.as_ref()))
            .collect();
        let start = wal.last_index();
        match wal.append(&refs) {
            Ok(_) => {
                let mut last = start;
                for r in batch {
                    last += r.payloads.len() as u64;
                    // The submitter may have given up waiting; that is fine.
                    let _ = r.done.send(Ok(last));
                }
            }
            Err(e) => {
                for r in batch {
                    let _ = r.done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Result of [`bench_group_commit`].
#[derive(Clone, Copy, Debug)]
pub struct BenchResult {
    pub records: u64,
    pub seconds: f64,
    pub records_per_sec: f64,
    pub syncs: u64,
    pub records_per_sync: f64,
}

fn scratch_dir(parent: &Path, what: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    parent.join(format!("{what}-{}-{nanos}", std::process::id()))
}

/// Measures group commit with fsync: `writers` threads each submit
/// `records_per_writer` single records of `record_bytes` bytes and wait for
/// each. Works in a fresh subdirectory of `dir` that it removes afterwards.
pub fn bench_group_commit(
    dir: &Path,
    writers: usize,
    records_per_writer: usize,
    record_bytes: usize,
) -> Result<BenchResult, WalError> {
    let work = scratch_dir(dir, "wal-bench");
    let (wal, _) = Wal::open(&work, Options::default())?;
    let gc = GroupCommit::start(
        wal,
        GroupCommitOptions {
            queue_depth: writers.max(64) * 2,
            ..GroupCommitOptions::default()
        },
    )?;
    let payload = Bytes::from(vec![0xA5u8; record_bytes]);
    let started = Instant::now();
    let outcome = thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..records_per_writer {
                        gc.submit(vec![payload.clone()])?;
                    }
                    Ok::<(), WalError>(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| WalError::WriterStopped)?)
    });
    let seconds = started.elapsed().as_secs_f64();
    let counters = gc.counters();
    drop(gc.close());
    fs::remove_dir_all(&work).map_err(io_err("remove", &work))?;
    outcome?;
    let records = counters.records_written;
    Ok(BenchResult {
        records,
        seconds,
        records_per_sec: records as f64 / seconds.max(1e-9),
        syncs: counters.syncs,
        records_per_sync: records as f64 / (counters.syncs.max(1)) as f64,
    })
}

/// Measures the disk's bare fdatasync rate: `n` times a 100-byte append and a
/// sync, the ceiling for one writer without group commit.
pub fn bench_raw_fdatasync(dir: &Path, n: usize) -> Result<f64, WalError> {
    let path = scratch_dir(dir, "fdatasync-bench");
    let mut file = File::create_new(&path).map_err(io_err("create", &path))?;
    let block = [0x5Au8; 100];
    let started = Instant::now();
    let result = (0..n).try_for_each(|_| {
        file.write_all(&block)
            .and_then(|()| file.sync_data())
            .map_err(io_err("write and sync", &path))
    });
    let seconds = started.elapsed().as_secs_f64();
    drop(file);
    fs::remove_file(&path).map_err(io_err("remove", &path))?;
    result?;
    Ok(n as f64 / seconds.max(1e-9))
}
