#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::wal::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "parliament-wal-test-{name}-{}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The project's seeded generator, so failures reproduce.
struct Rng(paxos::rng::Rng);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn no_sync() -> Options {
    Options {
        fsync: FsyncPolicy::Never,
        ..Options::default()
    }
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("wal-"))
        .collect();
    names.sort();
    names
}

/// Preallocates in small steps, so that files stay small and extensions
/// happen often.
fn small_steps() -> Options {
    Options {
        preallocate_bytes: 4096,
        ..no_sync()
    }
}

/// Writes `n` records of random sizes (1..=max_len bytes) one per append and
/// returns them with the byte offset each one starts at (single segment,
/// preallocated in 4 KiB steps, so the file ends in zeros).
fn write_records(dir: &Path, n: usize, max_len: u64, seed: u64) -> Vec<(u64, Vec<u8>, u64)> {
    let (mut wal, _) = Wal::open(dir, small_steps()).unwrap();
    let mut rng = Rng(paxos::rng::Rng::new(seed));
    let mut offset = 0u64;
    let mut out = Vec::new();
    for _ in 0..n {
        let len = 1 + rng.below(max_len) as usize;
        let p = rng.bytes(len);
        let index = wal.append(&[&p]).unwrap();
        out.push((index, p.clone(), offset));
        offset += (RECORD_HEADER_BYTES + p.len()) as u64;
    }
    assert_eq!(wal.segment_count(), 1);
    out
}

/// Where the records written by [`write_records`] end.
fn used_len(records: &[(u64, Vec<u8>, u64)]) -> usize {
    records.last().map_or(0, |(_, p, start)| {
        *start as usize + RECORD_HEADER_BYTES + p.len()
    })
}

/// The index and payload of each record.
fn payloads(records: &[(u64, Vec<u8>, u64)]) -> Vec<(u64, Vec<u8>)> {
    records.iter().map(|(i, p, _)| (*i, p.clone())).collect()
}

#[test]
fn round_trip_in_random_batches_and_continue_after_reopen() {
    let tmp = TempDir::new("roundtrip");
    let mut rng = Rng(paxos::rng::Rng::new(0x9E37_79B9_7F4A_7C15));
    let mut expected: Vec<(u64, Vec<u8>)> = Vec::new();
    {
        let (mut wal, rec) = Wal::open(tmp.path(), Options::default()).unwrap();
        assert!(rec.records.is_empty());
        assert_eq!(rec.last_index, 0);
        while expected.len() < 2000 {
            let batch: Vec<Vec<u8>> = (0..1 + rng.below(40))
                .map(|_| {
                    let len = match rng.below(10) {
                        0 => 1,
                        1 => 1 + rng.below(5000) as usize,
                        _ => 1 + rng.below(200) as usize,
                    };
                    rng.bytes(len)
                })
                .collect();
            let last = wal.append(&batch).unwrap();
            let first = last + 1 - batch.len() as u64;
            assert_eq!(first, expected.len() as u64 + 1);
            for (i, p) in batch.into_iter().enumerate() {
                expected.push((first + i as u64, p));
            }
        }
        let c = wal.stats().snapshot();
        assert_eq!(c.records_written, expected.len() as u64);
        assert_eq!(c.syncs, c.writes);
    }
    let (mut wal, rec) = Wal::open(tmp.path(), Options::default()).unwrap();
    assert_eq!(rec.torn, None);
    assert_eq!(rec.records, expected);
    assert_eq!(rec.first_index, 1);
    assert_eq!(rec.last_index, expected.len() as u64);
    let next = wal.append(&[b"after reopen"]).unwrap();
    assert_eq!(next, expected.len() as u64 + 1);
    drop(wal);
    let (_, rec) = Wal::open(tmp.path(), Options::default()).unwrap();
    assert_eq!(rec.records.len(), expected.len() + 1);
    assert_eq!(
        rec.records.last().unwrap(),
        &(next, b"after reopen".to_vec())
    );
}

#[test]
fn torn_last_record_at_every_offset_is_truncated() {
    let tmp = TempDir::new("torn-src");
    let records = write_records(tmp.path(), 12, 60, 7);
    let seg = tmp.path().join(segment_file_name(1));
    // The file as appends that grow it leave it: without the zeros after the
    // records, a crash mid-append cuts the file anywhere in the last record.
    let mut full = fs::read(&seg).unwrap();
    full.truncate(used_len(&records));
    let (_, _, last_start) = records[records.len() - 1];
    let last_start = last_start as usize;
    let kept = payloads(&records[..records.len() - 1]);
    for cut in last_start..full.len() {
        let case = TempDir::new("torn");
        let path = case.path().join(segment_file_name(1));
        fs::write(&path, &full[..cut]).unwrap();
        let (mut wal, rec) = Wal::open(case.path(), Options::default()).unwrap();
        assert_eq!(rec.records, kept, "cut at {cut}");
        if cut == last_start {
            assert_eq!(rec.torn, None);
        } else {
            let torn = rec.torn.unwrap();
            assert_eq!(torn.bytes_dropped, (cut - last_start) as u64);
            assert_eq!(torn.offset, last_start as u64);
            assert_eq!(torn.path, path);
        }
        assert_eq!(fs::metadata(&path).unwrap().len(), last_start as u64);
        let idx = wal.append(&[b"new"]).unwrap();
        assert_eq!(idx, kept.len() as u64 + 1);
        drop(wal);
        let (_, rec) = Wal::open(case.path(), Options::default()).unwrap();
        assert_eq!(rec.torn, None, "second reopen after cut at {cut}");
        assert_eq!(rec.records.len(), kept.len() + 1);
        assert_eq!(rec.records[..kept.len()], kept[..]);
    }
}

#[test]
fn bad_checksum_of_a_complete_last_record_is_a_torn_write() {
    let tmp = TempDir::new("torn-crc");
    let records = write_records(tmp.path(), 5, 30, 11);
    let seg = tmp.path().join(segment_file_name(1));
    let mut data = fs::read(&seg).unwrap();
    // The last byte of the last record; preallocated zeros follow it.
    let end = used_len(&records);
    assert!(data.len() > end);
    data[end - 1] ^= 0x10;
    fs::write(&seg, &data).unwrap();
    let (_, rec) = Wal::open(tmp.path(), Options::default()).unwrap();
    assert_eq!(rec.records.len(), 4);
    let (_, last, start) = &records[4];
    assert_eq!(
        rec.torn.unwrap().bytes_dropped,
        (RECORD_HEADER_BYTES + last.len()) as u64
    );
    assert_eq!(fs::metadata(&seg).unwrap().len(), *start);
}

#[test]
fn zero_filled_tail_is_the_normal_end_not_a_torn_write() {
    let tmp = TempDir::new("zeros");
    let records = write_records(tmp.path(), 6, 40, 5);
    let seg = tmp.path().join(segment_file_name(1));
    let mut good = fs::read(&seg).unwrap();
    good.truncate(used_len(&records));
    let (_, last, last_start) = &records[5];
    let last_start = *last_start as usize;

    // Zeros after the records: preallocated space, or a crash that grew the
    // file before the data landed. Either way nothing is lost or cut.
    let mut data = good.clone();
    data.extend_from_slice(&[0u8; 4096]);
    fs::write(&seg, &data).unwrap();
    let (mut wal, rec) = Wal::open(tmp.path(), Options::default()).unwrap();
    assert_eq!(rec.records.len(), 6);
    assert_eq!(rec.torn, None);
    assert_eq!(fs::metadata(&seg).unwrap().len(), data.len() as u64);
    assert_eq!(wal.append(&[b"seven"]).unwrap(), 7);
    drop(wal);
    let (_, rec) = Wal::open(tmp.path(), Options::default()).unwrap();
    assert_eq!(rec.torn, None);
    assert_eq!(rec.records.last().unwrap(), &(7, b"seven".to_vec()));
    fs::write(&seg, &good).unwrap();

    // The last record's header landed, its payload did not, zeros follow:
    // the record is torn; the zeros after it are not counted.
    let mut data = good.clone();
    for b in &mut data[last_start + RECORD_HEADER_BYTES..] {
        *b = 0;
    }
    data.extend_from_slice(&[0u8; 100]);
    fs::write(&seg, &data).unwrap();
    let (_, rec) = Wal::open(tmp.path(), Options::default()).unwrap();
    assert_eq!(rec.records.len(), 5);
    assert_eq!(
        rec.torn.unwrap().bytes_dropped,
        (RECORD_HEADER_BYTES + last.len()) as u64
    );
    assert_eq!(fs::metadata(&seg).unwrap().len(), last_start as u64);

    // Zeros in the middle, with a good record after them, are damage.
    let mut data = good.clone();
    let (_, _, third) = &records[2];
    let third = *third as usize;
    for b in &mut data[third..third + RECORD_HEADER_BYTES] {
        *b = 0;
    }
    fs::write(&seg, &data).unwrap();
    let err = Wal::open(tmp.path(), Options::default()).unwrap_err();
    assert!(
        matches!(err, WalError::Corrupt { offset, .. } if offset == third as u64),
        "{err}"
    );
}

#[test]
fn flipped_bit_in_any_earlier_record_is_corruption() {
    let tmp = TempDir::new("flip-src");
    let records = write_records(tmp.path(), 25, 80, 3);
    let name = segment_file_name(1);
    // Preallocated zeros follow the records: a length whose flipped bit ends
    // the record in them must not pass for a torn write either.
    let full = fs::read(tmp.path().join(&name)).unwrap();
    assert!(full.len() > used_len(&records));
    for (n, (_, payload, start)) in records[..records.len() - 1].iter().enumerate() {
        let start = *start as usize;
        // One bit of the length, one of the checksum, one of the payload.
        let spots = [
            (start + n % 4, n % 8),
            (start + 4 + n % 4, (n + 3) % 8),
            (start + RECORD_HEADER_BYTES + n % payload.len(), (n + 5) % 8),
        ];
        for (byte, bit) in spots {
            let case = TempDir::new("flip");
            let mut data = full.clone();
            data[byte] ^= 1 << bit;
            fs::write(case.path().join(&name), &data).unwrap();
            let err = Wal::open(case.path(), Options::default()).unwrap_err();
            match &err {
                WalError::Corrupt { offset, .. } => {
                    assert_eq!(*offset, start as u64, "record {n} byte {byte} bit {bit}")
                }
                other => panic!("record {n}: expected corruption, got {other}"),
            }
            let msg = err.to_string();
            assert!(msg.contains(&name), "{msg}");
            assert!(msg.contains(&format!("offset {start}:")), "{msg}");
            assert!(msg.contains("rejoin"), "{msg}");
            // Nothing was truncated.
            assert_eq!(fs::read(case.path().join(&name)).unwrap(), data);
        }
    }
}

#[test]
fn damage_in_a_segment_that_is_not_the_last_is_corruption() {
    let tmp = TempDir::new("nonlast");
    let opts = Options {
        segment_bytes_max: 200,
        ..no_sync()
    };
    let (mut wal, _) = Wal::open(tmp.path(), opts.clone()).unwrap();
    for i in 0..20u8 {
        wal.append(&[vec![i; 50]]).unwrap();
    }
    drop(wal);
    let first = tmp.path().join(segment_file_name(1));
    let data = fs::read(&first).unwrap();
    // A torn tail is only believable in the last segment.
    fs::write(&first, &data[..data.len() - 3]).unwrap();
    let err = Wal::open(tmp.path(), opts.clone()).unwrap_err();
    assert!(
        matches!(err, WalError::Corrupt { ref path, .. } if *path == first),
        "{err}"
    );
    fs::write(&first, &data).unwrap();
    Wal::open(tmp.path(), opts.clone()).unwrap();

    // A missing middle segment leaves a gap in the indexes.
    let names = segment_files(tmp.path());
    assert!(names.len() >= 3);
    fs::remove_file(tmp.path().join(&names[1])).unwrap();
    let err = Wal::open(tmp.path(), opts).unwrap_err();
    assert!(
        matches!(err, WalError::Corrupt { ref path, offset: 0, .. } if path.ends_with(&names[2])),
        "{err}"
    );
}

#[test]
fn rotation_and_removing_old_segments() {
    let tmp = TempDir::new("rotate");
    let opts = Options {
        segment_bytes_max: 300,
        ..Options::default()
    };
    let (mut wal, _) = Wal::open(tmp.path(), opts.clone()).unwrap();
    for i in 0..40u64 {
        // 8 + 42 = 50 bytes a record: 6 per segment.
        let p = format!("record {i:034}");
        assert_eq!(wal.append(&[p.as_bytes()]).unwrap(), i + 1);
    }
    let names = segment_files(tmp.path());
    let expected: Vec<String> = (0..7).map(|k| segment_file_name(1 + 6 * k)).collect();
    assert_eq!(names, expected);
    for n in &names {
        assert!(fs::metadata(tmp.path().join(n)).unwrap().len() <= 300);
    }
    drop(wal);
    let (mut wal, rec) = Wal::open(tmp.path(), opts.clone()).unwrap();
    assert_eq!(rec.records.len(), 40);
    assert_eq!(rec.segments, 7);
    assert!(
        rec.records
            .iter()
            .enumerate()
            .all(|(i, (idx, _))| *idx == i as u64 + 1)
    );

    // Index 13 starts the third segment: the first two hold 1..=12.
    assert_eq!(wal.remove_segments_before(12).unwrap(), 1);
    assert_eq!(wal.remove_segments_before(13).unwrap(), 1);
    assert_eq!(segment_files(tmp.path()), expected[2..].to_vec());
    // The current segment stays, whatever the index.
    assert_eq!(wal.remove_segments_before(u64::MAX).unwrap(), 4);
    assert_eq!(segment_files(tmp.path()), vec![segment_file_name(37)]);
    assert_eq!(wal.first_index(), 37);
    assert_eq!(wal.append(&[b"41"]).unwrap(), 41);
    drop(wal);
    let (_, rec) = Wal::open(tmp.path(), opts).unwrap();
    assert_eq!(rec.first_index, 37);
    assert_eq!(rec.last_index, 41);
    let idx: Vec<u64> = rec.records.iter().map(|r| r.0).collect();
    assert_eq!(idx, vec![37, 38, 39, 40, 41]);
}

#[test]
fn torn_tail_after_rotation_is_cut_only_in_the_last_segment() {
    let tmp = TempDir::new("rotate-torn");
    let opts = Options {
        segment_bytes_max: 120,
        ..no_sync()
    };
    let (mut wal, _) = Wal::open(tmp.path().join("new/nested"), opts.clone()).unwrap();
    for i in 0..10u8 {
        // 8 + 32 = 40 bytes a record: 3 per segment, segments at 1, 4, 7, 10.
        wal.append(&[vec![i + 1; 32]]).unwrap();
    }
    drop(wal);
    let dir = tmp.path().join("new/nested");
    assert_eq!(segment_files(&dir).len(), 4);
    let last = dir.join(segment_file_name(10));
    let data = fs::read(&last).unwrap();
    // One record, then zeros preallocated up to the segment's budget.
    assert_eq!(data.len(), 120);
    assert!(data[40..].iter().all(|b| *b == 0));
    fs::write(&last, &data[..17]).unwrap();
    let (mut wal, rec) = Wal::open(&dir, opts.clone()).unwrap();
    assert_eq!(rec.last_index, 9);
    assert_eq!(rec.torn.unwrap().bytes_dropped, 17);
    // The emptied last segment is reused for index 10.
    assert_eq!(wal.append(&[b"ten"]).unwrap(), 10);
    assert_eq!(wal.remove_segments_before(7).unwrap(), 2);
    drop(wal);
    let (_, rec) = Wal::open(&dir, opts).unwrap();
    assert_eq!(rec.torn, None);
    assert_eq!(rec.first_index, 7);
    assert_eq!(rec.records.last().unwrap(), &(10, b"ten".to_vec()));
}

#[test]
fn group_commit_batches_concurrent_writers() {
    let tmp = TempDir::new("group");
    let (wal, _) = Wal::open(tmp.path(), Options::default()).unwrap();
    let gc = GroupCommit::start(wal, GroupCommitOptions::default()).unwrap();
    const WRITERS: usize = 16;
    const PER: usize = 200;
    let results: Vec<Vec<(u64, Vec<u8>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let gc = &gc;
                let dir = tmp.path();
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..PER {
                        let p = format!("writer {w} record {i}").into_bytes();
                        let idx = gc.submit(vec![Bytes::from(p.clone())]).unwrap();
                        if i % 25 == 0 {
                            // Written (and synced) before submit returned:
                            // a fresh read of the file already holds it.
                            let data = fs::read(dir.join(segment_file_name(1))).unwrap();
                            assert!(data.windows(p.len()).any(|win| win == p));
                        }
                        mine.push((idx, p));
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let c = gc.counters();
    let wal = gc.close().unwrap();
    assert_eq!(wal.last_index(), (WRITERS * PER) as u64);
    drop(wal);
    let total = (WRITERS * PER) as u64;
    assert_eq!(c.records_written, total);
    assert!(
        c.syncs <= total / 2,
        "syncs {} for {total} records",
        c.syncs
    );
    assert!(c.syncs >= 1);
    eprintln!("group commit: {total} records, {} syncs", c.syncs);
    let (_, rec) = Wal::open(tmp.path(), Options::default()).unwrap();
    assert_eq!(rec.records.len() as u64, total);
    for (idx, p) in results.into_iter().flatten() {
        assert_eq!(rec.records[idx as usize - 1], (idx, p));
    }
}

#[test]
fn group_commit_ticket_and_multi_record_requests() {
    let tmp = TempDir::new("ticket");
    let (wal, _) = Wal::open(tmp.path(), no_sync()).unwrap();
    let gc = GroupCommit::start(
        wal,
        GroupCommitOptions {
            queue_depth: 1,
            ..GroupCommitOptions::default()
        },
    )
    .unwrap();
    let a = gc
        .submit_async(vec![Bytes::from_static(b"a1"), Bytes::from_static(b"a2")])
        .unwrap();
    let b = gc.submit_async(vec![Bytes::from_static(b"b1")]).unwrap();
    assert_eq!(a.wait().unwrap(), 2);
    assert_eq!(b.wait().unwrap(), 3);
    let gc_wal = gc.close().unwrap();
    assert_eq!(gc_wal.last_index(), 3);
}

#[test]
fn oversized_record_is_refused_and_nothing_written() {
    let tmp = TempDir::new("limits");
    let opts = Options {
        record_bytes_max: 100,
        ..Options::default()
    };
    let (mut wal, _) = Wal::open(tmp.path(), opts.clone()).unwrap();
    wal.append(&[vec![1u8; 100]]).unwrap();
    let seg = tmp.path().join(segment_file_name(1));
    let size = fs::metadata(&seg).unwrap().len();
    let err = wal.append(&[vec![2u8; 10], vec![3u8; 101]]).unwrap_err();
    assert!(
        matches!(err, WalError::RecordTooLarge { len: 101, max: 100 }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("101 bytes exceeds the limit of 100")
    );
    assert_eq!(fs::metadata(&seg).unwrap().len(), size);
    assert_eq!(wal.last_index(), 1);
    assert_eq!(wal.append(&[b"ok"]).unwrap(), 2);
    let err = wal.append(&[&b"x"[..], &b""[..]]).unwrap_err();
    assert!(matches!(err, WalError::EmptyRecord), "{err}");
    assert_eq!(wal.last_index(), 2);

    // Through group commit the oversized request fails alone.
    let gc = GroupCommit::start(wal, GroupCommitOptions::default()).unwrap();
    let err = gc.submit(vec![Bytes::from(vec![0u8; 101])]).unwrap_err();
    assert!(matches!(err, WalError::RecordTooLarge { .. }));
    assert_eq!(gc.submit(vec![Bytes::from_static(b"fine")]).unwrap(), 3);
    drop(gc);

    // A length field above the limit on disk is corruption, not a torn write,
    // also where it lands in preallocated space.
    let mut data = fs::read(&seg).unwrap();
    let at = [100usize, 2, 4]
        .iter()
        .map(|len| RECORD_HEADER_BYTES + len)
        .sum::<usize>();
    assert!(data[at..].iter().all(|b| *b == 0));
    data[at..at + 4].copy_from_slice(&1000u32.to_le_bytes());
    let at = at as u64;
    fs::write(&seg, &data).unwrap();
    let err = Wal::open(tmp.path(), opts).unwrap_err();
    assert!(
        matches!(err, WalError::Corrupt { offset, .. } if offset == at),
        "{err}"
    );
}

#[test]
fn bad_segment_name_is_refused() {
    let tmp = TempDir::new("badname");
    fs::write(tmp.path().join("wal-12x.log"), b"").unwrap();
    fs::write(tmp.path().join("notes.txt"), b"ignored").unwrap();
    let err = Wal::open(tmp.path(), Options::default()).unwrap_err();
    assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
}

#[test]
fn benchmarks_run() {
    let tmp = TempDir::new("bench");
    let r = bench_group_commit(tmp.path(), 4, 20, 100).unwrap();
    assert_eq!(r.records, 80);
    assert!(r.syncs >= 1 && r.syncs <= 80);
    assert!(bench_raw_fdatasync(tmp.path(), 5).unwrap() > 0.0);
    assert!(segment_files(tmp.path()).is_empty());
}

/// Not a check: prints the benchmark numbers on this machine's disk.
/// Run with `-- --ignored --nocapture`.
#[test]
#[ignore]
fn print_benchmarks() {
    let tmp = TempDir::new("bench-print");
    let raw = bench_raw_fdatasync(tmp.path(), 200).unwrap();
    println!("raw fdatasync: {raw:.0}/s");
    for writers in [1, 16, 256] {
        let per = (4000 / writers).max(20);
        let r = bench_group_commit(tmp.path(), writers, per, 100).unwrap();
        println!(
            "group commit {writers:>3} writers x {per} x 100 B: {:.0} records/s, {} syncs, {:.1} records/sync",
            r.records_per_sec, r.syncs, r.records_per_sync
        );
    }
}

/// The size of a file, and how many bytes of disk it really holds (a sparse
/// file holds less than its size).
fn size_and_blocks(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).unwrap();
    (m.len(), m.blocks() * 512)
}

#[test]
fn preallocated_log_survives_reopen_across_extensions_and_rotations() {
    let tmp = TempDir::new("prealloc-roundtrip");
    let opts = Options {
        segment_bytes_max: 5000,
        preallocate_bytes: 1000,
        ..Options::default()
    };
    let mut rng = Rng(paxos::rng::Rng::new(0xC0FF_EE00_1234_5678));
    let mut expected: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut sizes_seen = std::collections::BTreeSet::new();
    {
        let (mut wal, rec) = Wal::open(tmp.path(), opts.clone()).unwrap();
        assert!(rec.records.is_empty());
        let mut n = 0u64;
        while expected.len() < 300 {
            n += 1;
            let batch: Vec<Vec<u8>> = match n {
                // Larger than a preallocation step.
                10 => vec![rng.bytes(2500)],
                // Larger than a whole segment: it gets one of its own.
                40 => vec![rng.bytes(7000)],
                _ => (0..1 + rng.below(4))
                    .map(|_| {
                        let len = 1 + rng.below(300) as usize;
                        rng.bytes(len)
                    })
                    .collect(),
            };
            let last = wal.append(&batch).unwrap();
            let first = last + 1 - batch.len() as u64;
            for (i, p) in batch.into_iter().enumerate() {
                expected.push((first + i as u64, p));
            }
            let current = tmp.path().join(segment_files(tmp.path()).pop().unwrap());
            sizes_seen.insert((wal.segment_count(), fs::metadata(current).unwrap().len()));
        }
        assert!(wal.segment_count() >= 5, "{} segments", wal.segment_count());
    }
    // Several extensions of the same segment were seen.
    let steps_in_first = sizes_seen.iter().filter(|(seg, _)| *seg == 1).count();
    assert!(steps_in_first >= 3, "{sizes_seen:?}");
    for name in segment_files(tmp.path()) {
        let len = fs::metadata(tmp.path().join(&name)).unwrap().len();
        assert!(
            len <= 5000 || len >= 7000,
            "{name}: {len} bytes exceeds the budget without a record to need it"
        );
    }
    let (mut wal, rec) = Wal::open(tmp.path(), opts.clone()).unwrap();
    assert_eq!(rec.torn, None);
    assert_eq!(rec.records, expected);
    assert_eq!(rec.last_index, expected.len() as u64);
    // Appends continue after the valid prefix, across further extensions.
    for i in 0..40u64 {
        let p = format!("after reopen {i:0200}").into_bytes();
        let idx = wal.append(&[&p]).unwrap();
        assert_eq!(idx, expected.len() as u64 + 1);
        expected.push((idx, p));
    }
    drop(wal);
    let (_, rec) = Wal::open(tmp.path(), opts).unwrap();
    assert_eq!(rec.torn, None);
    assert_eq!(rec.records, expected);
}

#[test]
fn an_append_that_fits_in_preallocated_space_does_not_change_the_file_size() {
    let tmp = TempDir::new("prealloc-size");
    const STEP: u64 = 16 << 10;
    let opts = Options {
        preallocate_bytes: STEP,
        ..Options::default()
    };
    let (mut wal, _) = Wal::open(tmp.path(), opts).unwrap();
    let seg = tmp.path().join(segment_file_name(1));
    let record = [0x42u8; 92]; // 100 bytes framed
    wal.append(&[record]).unwrap();
    let (size, blocks) = size_and_blocks(&seg);
    assert_eq!(size, STEP);
    // Real zeros, not a hole: overwriting them changes no metadata.
    assert!(blocks >= STEP, "only {blocks} bytes of {STEP} allocated");
    let fit = STEP / 100;
    for n in 2..=fit {
        wal.append(&[record]).unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), STEP, "after {n} appends");
    }
    // The next one does not fit: one more step.
    wal.append(&[record]).unwrap();
    assert_eq!(fs::metadata(&seg).unwrap().len(), 2 * STEP);
    let data = fs::read(&seg).unwrap();
    assert!(data[(fit as usize + 1) * 100..].iter().all(|b| *b == 0));
    drop(wal);

    // With preallocation off every append grows the file, as before.
    let off = TempDir::new("prealloc-off");
    let opts = Options {
        preallocate_bytes: 0,
        ..no_sync()
    };
    let (mut wal, _) = Wal::open(off.path(), opts).unwrap();
    let seg = off.path().join(segment_file_name(1));
    for n in 1..=5u64 {
        wal.append(&[record]).unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), 100 * n);
    }
}

#[test]
fn torn_record_at_every_offset_in_preallocated_space_is_cut_and_reported() {
    let tmp = TempDir::new("prealloc-torn-src");
    // Payloads under 256 bytes: a length's first byte is its only non-zero one.
    let records = write_records(tmp.path(), 10, 200, 21);
    let seg = tmp.path().join(segment_file_name(1));
    let full = fs::read(&seg).unwrap();
    let end = used_len(&records);
    assert!(full.len() > end && full[end..].iter().all(|b| *b == 0));
    let (_, last, last_start) = &records[records.len() - 1];
    let last_start = *last_start as usize;
    let kept = payloads(&records[..records.len() - 1]);
    // A crash mid-write leaves a prefix of the record over the zeros.
    for landed in last_start..end {
        let case = TempDir::new("prealloc-torn");
        let path = case.path().join(segment_file_name(1));
        let mut data = full.clone();
        for b in &mut data[landed..end] {
            *b = 0;
        }
        fs::write(&path, &data).unwrap();
        let (mut wal, rec) = Wal::open(case.path(), Options::default()).unwrap();
        let mut expected = kept.clone();
        if landed == last_start {
            // Nothing of it landed: a clean end in zeros.
            assert_eq!(rec.torn, None);
            assert_eq!(fs::metadata(&path).unwrap().len(), full.len() as u64);
        } else if data == full {
            // What did not land was zeros anyway: the record is whole.
            assert_eq!(rec.torn, None, "landed {landed}");
            expected = payloads(&records);
        } else {
            let torn = rec.torn.unwrap();
            assert_eq!(torn.path, path);
            assert_eq!(torn.offset, last_start as u64, "landed {landed}");
            assert_eq!(
                torn.bytes_dropped,
                (RECORD_HEADER_BYTES + last.len()) as u64,
                "landed {landed}"
            );
            assert_eq!(fs::metadata(&path).unwrap().len(), last_start as u64);
        }
        assert_eq!(rec.records, expected, "landed {landed}");
        let idx = wal.append(&[b"next"]).unwrap();
        assert_eq!(idx, expected.len() as u64 + 1);
        drop(wal);
        let (_, rec) = Wal::open(case.path(), Options::default()).unwrap();
        assert_eq!(rec.torn, None, "second reopen, landed {landed}");
        expected.push((idx, b"next".to_vec()));
        assert_eq!(rec.records, expected);
    }
}

#[test]
fn a_finished_segment_is_cut_to_its_used_length() {
    let tmp = TempDir::new("prealloc-rotate");
    let opts = Options {
        segment_bytes_max: 1000,
        preallocate_bytes: 4096,
        ..Options::default()
    };
    let (mut wal, _) = Wal::open(tmp.path(), opts.clone()).unwrap();
    // 8 + 300 bytes a record: 3 per segment, 924 of the 1000 bytes used.
    for i in 0..10u8 {
        wal.append(&[vec![i + 1; 300]]).unwrap();
    }
    let names = segment_files(tmp.path());
    let expected: Vec<String> = (0..4).map(|k| segment_file_name(1 + 3 * k)).collect();
    assert_eq!(names, expected);
    for name in &names[..3] {
        assert_eq!(fs::metadata(tmp.path().join(name)).unwrap().len(), 924);
    }
    // The current one is preallocated up to the budget, not a whole step.
    let current = tmp.path().join(&names[3]);
    assert_eq!(fs::metadata(&current).unwrap().len(), 1000);
    drop(wal);

    // A crash before the new segment's name is durable: the finished one is
    // the last again, cut or not, and the log opens either way.
    fs::remove_file(&current).unwrap();
    let third = tmp.path().join(&names[2]);
    let cut = fs::read(&third).unwrap();
    let (_, rec) = Wal::open(tmp.path(), opts.clone()).unwrap();
    assert_eq!((rec.last_index, rec.torn), (9, None));
    let mut uncut = cut.clone();
    uncut.resize(1000, 0);
    fs::write(&third, &uncut).unwrap();
    let (_, rec) = Wal::open(tmp.path(), opts.clone()).unwrap();
    assert_eq!((rec.last_index, rec.torn), (9, None));
    // A crash right after the new segment was created (the cut is synced
    // before that) leaves it empty after a segment that ends at its records.
    fs::write(&third, &cut).unwrap();
    fs::File::create_new(&current).unwrap();
    let (mut wal, rec) = Wal::open(tmp.path(), opts.clone()).unwrap();
    assert_eq!((rec.last_index, rec.torn, rec.segments), (9, None, 4));
    assert_eq!(wal.append(&[vec![10u8; 300]]).unwrap(), 10);
    drop(wal);
    assert_eq!(segment_files(tmp.path()), names);
    // Zeros after the records of a segment that is not the last are damage,
    // as any other bad bytes there.
    fs::write(&third, &uncut).unwrap();
    let err = Wal::open(tmp.path(), opts).unwrap_err();
    assert!(
        matches!(err, WalError::Corrupt { ref path, offset: 924, .. } if *path == third),
        "{err}"
    );
}

#[test]
fn a_clean_reopen_of_a_preallocated_log_reports_no_torn_tail() {
    let tmp = TempDir::new("prealloc-clean");
    let (mut wal, _) = Wal::open(tmp.path(), Options::default()).unwrap();
    for i in 0..50u64 {
        wal.append(&[format!("record {i}").as_bytes()]).unwrap();
    }
    drop(wal);
    let seg = tmp.path().join(segment_file_name(1));
    let before = fs::read(&seg).unwrap();
    assert_eq!(before.len() as u64, DEFAULT_PREALLOCATE_BYTES);
    for round in 0..3u64 {
        let (mut wal, rec) = Wal::open(tmp.path(), Options::default()).unwrap();
        assert_eq!(rec.torn, None, "round {round}");
        assert_eq!(rec.last_index, 50 + round);
        // Opening neither cuts nor grows the file; the next record goes right
        // after the last one, over the zeros.
        assert_eq!(fs::metadata(&seg).unwrap().len(), DEFAULT_PREALLOCATE_BYTES);
        wal.append(&[b"more"]).unwrap();
    }
    let (_, rec) = Wal::open(tmp.path(), Options::default()).unwrap();
    assert_eq!(rec.records.len(), 53);
    assert_eq!(rec.records[52], (53, b"more".to_vec()));
}
