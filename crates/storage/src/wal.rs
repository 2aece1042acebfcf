//! Write-ahead log: segmented files of checksummed records, written in order.
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
//! Segments are preallocated. An fdatasync after a write that grew the file
//! must also write the inode (the size changed), which costs a good part of
//! every sync. So the log extends the segment it appends to ahead of the write
//! position with zero bytes, [`Options::preallocate_bytes`] at a time (never
//! past `segment_bytes_max`, unless one batch alone is larger), and syncs size
//! and blocks once; the appends that follow overwrite those zeros in place,
//! and their fdatasync carries only data. The zeros are really written, not
//! fallocated: unwritten extents would need a metadata update on their first
//! write again. A finished segment is cut to its used length before the next
//! one is created, so only the last segment ever ends in zeros.
//!
//! Recovery trusts the log only as far as it can prove it. Zeros after the
//! last valid record of the last segment are its preallocated space, the
//! normal end of the log: they are kept, not reported, and the next append
//! writes over them. In the last segment, a final record that runs past the
//! end of the file, or fails its checksum with nothing but zeros (or nothing)
//! after it, is what a crash mid-write leaves: it is cut off and reported.
//! Every other bad record, a bad record in an earlier segment, a length above
//! the limit, a gap in indexes between segments, or a length field one bit
//! away from a valid record, stops the node instead, because silently dropping
//! an acknowledged record would break the promises the rest of the cluster
//! relies on. Empty records are refused on append so that zeros are never data.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use codec::crc32c;

/// Bytes of framing before each payload: length and checksum.
pub const RECORD_HEADER_BYTES: usize = 8;
/// Default size after which appends move on to a new segment.
pub const DEFAULT_SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Default limit on one record's payload.
pub const DEFAULT_RECORD_BYTES_MAX: u32 = 64 << 20;
/// Default step by which a segment is extended with zeros ahead of appends.
pub const DEFAULT_PREALLOCATE_BYTES: u64 = 4 << 20;

/// Zeros written per call while extending a segment; bounds the buffer.
const ZERO_WRITE_BYTES: u64 = 64 << 10;

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
    /// Zero bytes written (and synced) ahead of the append position at a
    /// time, so that appends overwrite space whose size is already on disk
    /// and their fdatasync need not write the inode. 0 turns preallocation
    /// off: appends then grow the file.
    pub preallocate_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes_max: DEFAULT_SEGMENT_BYTES_MAX,
            record_bytes_max: DEFAULT_RECORD_BYTES_MAX,
            fsync: FsyncPolicy::Always,
            preallocate_bytes: DEFAULT_PREALLOCATE_BYTES,
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

/// The torn record that recovery cut off the last segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub path: PathBuf,
    /// Where the valid records end; the file now ends here too.
    pub offset: u64,
    /// Bytes of the torn record that were in the file. Zeros after it (the
    /// preallocated space) are not counted: they never held anything.
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
    /// A partial write from a crash that was cut off; the caller logs it. A
    /// segment that merely ends in zeros (its preallocated space) is not one.
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
    /// Length of the valid records in the current segment: where the next
    /// append is written.
    file_bytes: u64,
    /// Size of the current segment file. Invariant: `allocated_bytes >=
    /// file_bytes`, and every byte in between is zero.
    allocated_bytes: u64,
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

/// What follows the valid records of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tail {
    /// Nothing: the file ends with its last record.
    Clean,
    /// Only zeros: preallocated space (or what some file systems leave when a
    /// crash grew the file before the data landed). Nothing to cut.
    Zeros,
    /// A record a crash tore, of which `bytes` are in the file (zeros after
    /// it not counted).
    Torn { bytes: usize },
}

/// The result of [`scan_segment`].
#[derive(Clone, Copy, Debug)]
struct Scanned {
    /// Length of the valid records.
    valid: usize,
    tail: Tail,
}

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|b| *b == 0)
}

/// Parses one segment, pushing its records onto `out`, and says what follows
/// them. Anything but [`Tail::Clean`] is only ever returned for the last
/// segment.
fn scan_segment(
    path: &Path,
    data: &[u8],
    first_index: u64,
    is_last: bool,
    max: u32,
    out: &mut Vec<(u64, Vec<u8>)>,
) -> Result<Scanned, WalError> {
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
                let tail = if all_zero(rest) {
                    Tail::Zeros
                } else {
                    Tail::Torn { bytes: rest.len() }
                };
                return Ok(Scanned { valid: off, tail });
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
            // zeros after the last record (preallocated, or left by a crash
            // that grew the file before the data landed) or damage.
            if is_last && all_zero(rest) && !length_bit_flipped(rest, len, stored, max) {
                return Ok(Scanned {
                    valid: off,
                    tail: Tail::Zeros,
                });
            }
            return Err(corrupt(off, "record of length zero".into()));
        }
        let end = RECORD_HEADER_BYTES + len as usize;
        if end > rest.len() {
            if is_last && !length_bit_flipped(rest, len, stored, max) {
                return Ok(Scanned {
                    valid: off,
                    tail: Tail::Torn { bytes: rest.len() },
                });
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
            // That is also what a record written into preallocated space
            // leaves when only a prefix of it landed.
            if is_last && all_zero(&rest[end..]) && !length_bit_flipped(rest, len, stored, max) {
                return Ok(Scanned {
                    valid: off,
                    tail: Tail::Torn { bytes: end },
                });
            }
            return Err(corrupt(off, format!("checksum mismatch in record {index}")));
        }
        out.push((index, payload.to_vec()));
        index = index
            .checked_add(1)
            .ok_or_else(|| corrupt(off, "record index overflows".into()))?;
        off += end;
    }
    Ok(Scanned {
        valid: off,
        tail: Tail::Clean,
    })
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
        let mut allocated_bytes = 0u64;
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
            let scanned = scan_segment(
                &seg.path,
                &data,
                seg.first_index,
                is_last,
                opts.record_bytes_max,
                &mut records,
            )?;
            next_index = Some(seg.first_index + (records.len() - before) as u64);
            file_bytes = scanned.valid as u64;
            allocated_bytes = data.len() as u64;
            match scanned.tail {
                // Zeros are preallocated space: appends write over them.
                Tail::Clean | Tail::Zeros => {}
                Tail::Torn { bytes } => {
                    // Cut the file at the valid prefix, preallocated zeros and
                    // all; the next append extends it again. Until the cut is
                    // synced a crash leaves the same torn record to cut again.
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&seg.path)
                        .map_err(io_err("open", &seg.path))?;
                    f.set_len(file_bytes)
                        .and_then(|()| f.sync_all())
                        .map_err(io_err("truncate torn tail of", &seg.path))?;
                    allocated_bytes = file_bytes;
                    torn = Some(TornTail {
                        path: seg.path.clone(),
                        offset: file_bytes,
                        bytes_dropped: bytes as u64,
                    });
                }
            }
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
        // Not in append mode: records are written at `file_bytes`, over the
        // preallocated zeros.
        let file = OpenOptions::new()
            .write(true)
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
            allocated_bytes,
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
        let result = self
            .preallocate(total as u64)
            .and_then(|()| self.write_and_sync(&buf));
        if result.is_err() {
            self.failed = true;
        }
        result?;
        self.file_bytes += total as u64;
        self.allocated_bytes = self.allocated_bytes.max(self.file_bytes);
        self.next_index += payloads.len() as u64;
        self.stats
            .records_written
            .fetch_add(payloads.len() as u64, Ordering::Relaxed);
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        Ok(self.last_index())
    }

    fn current_path(&self) -> &Path {
        self.segments.last().map_or(&self.dir, |s| &s.path)
    }

    /// Makes sure the `len` bytes after the valid records are preallocated,
    /// extending the current segment with zeros if they are not: by
    /// `preallocate_bytes`, or by what `len` needs if that is more, but not
    /// past `segment_bytes_max` unless `len` alone goes past it.
    ///
    /// The zeros and the new size are synced (`sync_all`) before any record is
    /// written into the new space, so the fdatasync of an append never has a
    /// size change to carry. A crash during the extension leaves the valid
    /// records followed by whatever part of the zeros landed (some, all, or a
    /// size whose blocks read as zeros): the normal end of the last segment,
    /// which opens with nothing reported.
    fn preallocate(&mut self, len: u64) -> Result<(), WalError> {
        let needed = self.file_bytes + len;
        if needed <= self.allocated_bytes || self.opts.preallocate_bytes == 0 {
            return Ok(());
        }
        let budget = self.opts.segment_bytes_max.max(needed);
        let target = needed
            .max(
                self.allocated_bytes
                    .saturating_add(self.opts.preallocate_bytes),
            )
            .min(budget);
        let path = self.current_path();
        let zeros = vec![0u8; (target - self.allocated_bytes).min(ZERO_WRITE_BYTES) as usize];
        let mut at = self.allocated_bytes;
        while at < target {
            let n = (target - at).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], at)
                .map_err(io_err("preallocate", path))?;
            at += n as u64;
        }
        if self.opts.fsync == FsyncPolicy::Always {
            self.file
                .sync_all()
                .map_err(io_err("sync the preallocated space of", path))?;
        }
        self.allocated_bytes = target;
        Ok(())
    }

    /// Writes `buf` at the end of the valid records, over preallocated zeros
    /// when there are enough of them, and fdatasyncs it.
    fn write_and_sync(&mut self, buf: &[u8]) -> Result<(), WalError> {
        let path = self.current_path();
        self.file
            .write_all_at(buf, self.file_bytes)
            .map_err(io_err("write", path))?;
        if self.opts.fsync == FsyncPolicy::Always {
            self.file.sync_data().map_err(io_err("sync", path))?;
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Finishes the current segment and starts a new one at the next index.
    ///
    /// The steps, and what a crash after each leaves on disk:
    /// 1. The current segment is cut to its used length and synced (its
    ///    records are already synced by their appends). A crash before the cut
    ///    is durable leaves it the last segment, ending in zeros or not, and
    ///    both are its normal end; after, it ends at its last record.
    /// 2. The new segment is created empty and the directory synced. If the
    ///    crash comes first, the new name may or may not survive. If it does,
    ///    it is an empty last segment that starts right after the previous
    ///    one's last record; the previous one, no longer last, is exactly its
    ///    records because step 1 was synced before the file was created, so
    ///    the strict rules for earlier segments hold and the log opens.
    /// 3. The next append preallocates the new segment (see `preallocate`).
    ///
    /// The cut is synced whatever the fsync policy: rotations are rare, and a
    /// zero tail in an earlier segment would stop the node as damage.
    fn rotate(&mut self) -> Result<(), WalError> {
        let result = self.finish_segment().and_then(|()| {
            let path = self.dir.join(segment_file_name(self.next_index));
            let file = File::create_new(&path).map_err(io_err("create", &path))?;
            sync_dir(&self.dir)?;
            Ok((file, path))
        });
        match result {
            Ok((file, path)) => {
                self.file = file;
                self.file_bytes = 0;
                self.allocated_bytes = 0;
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

    /// Step 1 of [`Wal::rotate`]: cuts the preallocated zeros off the current
    /// segment, durably.
    fn finish_segment(&mut self) -> Result<(), WalError> {
        if self.allocated_bytes == self.file_bytes {
            return Ok(());
        }
        let path = self.current_path();
        self.file
            .set_len(self.file_bytes)
            .and_then(|()| self.file.sync_all())
            .map_err(io_err("cut the preallocated space off", path))?;
        self.allocated_bytes = self.file_bytes;
        Ok(())
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
