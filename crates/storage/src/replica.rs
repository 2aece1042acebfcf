//! Where a replica's durable records live: the contract, and two
//! implementations that keep it (in memory, for tests and the simulator; in
//! the write-ahead log, for a node).
//!
//! # The contract
//!
//! - [`ReplicaStorage::append`] makes its records durable, in order, after
//!   every record appended before: when it returns `Ok`, a crash loses none of
//!   them. When it returns an error, nothing may be sent that reports them.
//! - [`ReplicaStorage::durable`] is what a restart would find: the
//!   [`Durable`] state that replaying every appended record gives.
//! - A `Record::Compact` may let the storage forget records of compacted slots
//!   and superseded records, but never the live state (the promise, and the
//!   acceptances and chosen values above the snapshot).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use paxos::replica::{Durable, Record};

use super::wal::{Options, Wal, WalError};
use codec::DecodeError;

use crate::wire;

/// Why storage failed. Any of these stops the node: a replica that cannot
/// persist must not reply.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(
        "record {index} of the log in {dir} cannot be decoded ({source}). If a newer release ran this node, start that release again: its log may be newer than this build reads, and --rejoin would throw it away. Otherwise the log is damaged: restart the node with --rejoin, which moves it aside and rejoins as a learner"
    )]
    Record {
        dir: PathBuf,
        index: u64,
        source: DecodeError,
    },
    /// The thread that writes the log stopped without saying why (it
    /// panicked); see the log above.
    #[error("the thread writing the log stopped unexpectedly")]
    Stopped,
}

/// Durable storage of one replica's records.
pub trait ReplicaStorage {
    /// Makes `records` durable, in order; see the module notes.
    fn append(&mut self, records: &[Record]) -> Result<(), StorageError>;

    /// The state a restart would rebuild from what is durable.
    fn durable(&self) -> &Durable;
}

/// Keeps the durable state itself; "durable" for as long as the value lives.
#[derive(Clone, Debug, Default)]
pub struct MemoryStorage {
    state: Durable,
}

impl ReplicaStorage for MemoryStorage {
    fn append(&mut self, records: &[Record]) -> Result<(), StorageError> {
        for record in records {
            self.state.apply(record);
        }
        Ok(())
    }

    fn durable(&self) -> &Durable {
        &self.state
    }
}

/// Records in a write-ahead log, one log record each.
///
/// On a `Compact` record it writes a checkpoint (the live state as records)
/// and drops the log segments wholly before it: replaying the checkpoint
/// alone rebuilds the state, so nothing live is lost.
pub struct FileStorage {
    wal: Wal,
    state: Durable,
    dir: PathBuf,
}

impl FileStorage {
    /// Opens (or creates) the log in `dir` and replays it. A torn final
    /// record is dropped by the log (and reported in `torn_bytes`); any other
    /// damage is an error that says what to do.
    pub fn open(dir: &Path, options: Options) -> Result<(FileStorage, u64), StorageError> {
        let (wal, recovered) = Wal::open(dir, options)?;
        let mut state = Durable::default();
        for (index, payload) in recovered.records {
            let record = wire::decode_record(Bytes::from(payload)).map_err(|source| {
                StorageError::Record {
                    dir: dir.to_path_buf(),
                    index,
                    source,
                }
            })?;
            state.apply(&record);
        }
        let torn_bytes = recovered.torn.map_or(0, |t| t.bytes_dropped);
        let storage = FileStorage {
            wal,
            state,
            dir: dir.to_path_buf(),
        };
        Ok((storage, torn_bytes))
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The live state as records: replayed alone, they rebuild `state`.
    fn checkpoint(state: &Durable) -> Vec<Record> {
        let mut records = vec![
            Record::Compact {
                up_to: state.log_start,
            },
            Record::Promise(state.promised),
        ];
        for (&slot, (ballot, value)) in &state.accepted {
            records.push(Record::Accept {
                slot,
                ballot: *ballot,
                value: value.clone(),
            });
        }
        for (&slot, value) in &state.chosen {
            records.push(Record::Chosen {
                slot,
                value: value.clone(),
            });
        }
        records.push(Record::Commit {
            up_to: state.commit,
        });
        if state.rejoining {
            records.push(Record::Rejoin);
        }
        records
    }

    fn write(&mut self, records: &[Record]) -> Result<u64, StorageError> {
        let encoded: Vec<Bytes> = records.iter().map(wire::encode_record).collect();
        Ok(self.wal.append(&encoded)?)
    }
}

impl ReplicaStorage for FileStorage {
    fn append(&mut self, records: &[Record]) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        self.write(records)?;
        for record in records {
            self.state.apply(record);
        }
        if records.iter().any(|r| matches!(r, Record::Compact { .. })) {
            let checkpoint = Self::checkpoint(&self.state);
            let last = self.write(&checkpoint)?;
            let first = last + 1 - checkpoint.len() as u64;
            self.wal.remove_segments_before(first)?;
        }
        Ok(())
    }

    fn durable(&self) -> &Durable {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use paxos::Ballot;
    use paxos::replica::{Slot, Value};
    use paxos::rng::Rng;

    use super::super::Scratch;
    use super::super::faulty::{FailPoint, FaultyStorage};
    use super::super::wal::FsyncPolicy;
    use super::*;

    /// A plausible stream of records: promises rise, slots are accepted and
    /// committed in order, now and then a compaction.
    fn records(rng: &mut Rng, n: usize) -> Vec<Vec<Record>> {
        let (mut round, mut slot, mut commit, mut compacted) = (1, Slot(0), Slot(0), Slot(0));
        (0..n)
            .map(|_| {
                let mut batch = Vec::new();
                if rng.chance(0.1) {
                    round += 1;
                    batch.push(Record::Promise(Ballot::new(round, rng.between(1, 3))));
                }
                for _ in 0..rng.below(4) {
                    slot += 1;
                    let value = if rng.chance(0.2) {
                        Value::Noop
                    } else {
                        Value::Batch(vec![Bytes::from(format!("c{slot}"))])
                    };
                    let ballot = Ballot::new(round, 1);
                    batch.push(Record::Accept {
                        slot,
                        ballot,
                        value,
                    });
                }
                if rng.chance(0.1) && slot > commit {
                    commit += 1;
                    batch.push(Record::Chosen {
                        slot: commit,
                        value: Value::Noop,
                    });
                }
                if rng.chance(0.3) && slot > commit {
                    commit = slot;
                    batch.push(Record::Commit { up_to: commit });
                }
                if rng.chance(0.05) && commit > compacted {
                    compacted = commit;
                    batch.push(Record::Compact { up_to: compacted });
                }
                batch
            })
            .collect()
    }

    /// The conformance suite: what every storage must do. `reopen` stands
    /// for a crash and restart (memory storage survives by being kept).
    ///
    /// Every append that returned `Ok` must survive every restart. An append
    /// that failed may have landed whole or not at all, never in part, and
    /// nothing acknowledged before it may be lost; the suite then restarts
    /// the storage, as a node stops on a storage error, and carries on from
    /// what it finds. Returns the number of failed appends, or the first
    /// violation.
    fn conformance<S: ReplicaStorage>(
        mut storage: S,
        reopen: impl Fn(S) -> S,
        seed: u64,
    ) -> Result<u64, String> {
        if storage.durable() != &Durable::default() {
            return Err("does not start empty".into());
        }
        let mut rng = Rng::new(seed);
        let mut expected = Durable::default();
        let mut failures = 0;
        for (i, batch) in records(&mut rng, 300).into_iter().enumerate() {
            let mut with_batch = expected.clone();
            for r in &batch {
                with_batch.apply(r);
            }
            let either = |state: &Durable, when: &str| {
                if state == &expected || state == &with_batch {
                    Ok(())
                } else {
                    Err(format!(
                        "batch {i} failed and {when} the state is neither the acknowledged one \
                         nor that plus the batch: {state:?}, acknowledged {expected:?}"
                    ))
                }
            };
            match storage.append(&batch) {
                Ok(()) => expected = with_batch,
                Err(_) => {
                    failures += 1;
                    either(storage.durable(), "before restarting")?;
                    storage = reopen(storage);
                    either(storage.durable(), "after restarting")?;
                    expected = storage.durable().clone();
                }
            }
            if storage.durable() != &expected {
                return Err(format!("after batch {i}: {:?}", storage.durable()));
            }
            if i % 50 == 49 {
                storage = reopen(storage);
                if storage.durable() != &expected {
                    return Err(format!(
                        "after reopening at batch {i}, acknowledged records were lost: \
                         {:?}, acknowledged {expected:?}",
                        storage.durable()
                    ));
                }
            }
        }
        // An empty append changes nothing (a latched failure may refuse it).
        let _ = storage.append(&[]);
        let storage = reopen(storage);
        if storage.durable() != &expected {
            return Err("lost records at the final reopening".into());
        }
        Ok(failures)
    }

    #[test]
    fn memory_storage_conforms() {
        for seed in 0..5 {
            let failures = conformance(MemoryStorage::default(), |s| s, seed)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(failures, 0);
        }
    }

    fn file_options() -> Options {
        Options {
            segment_bytes_max: 2048,
            fsync: FsyncPolicy::Never,
            ..Options::default()
        }
    }

    #[test]
    fn file_storage_conforms_and_survives_reopening() {
        for seed in 0..3 {
            let scratch = Scratch::new("conform");
            let options = file_options();
            let dir = scratch.0.clone();
            let (storage, torn) = FileStorage::open(&dir, options.clone()).expect("open");
            assert_eq!(torn, 0);
            let failures = conformance(
                storage,
                |s| {
                    drop(s);
                    FileStorage::open(&dir, options.clone()).expect("reopen").0
                },
                seed,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(failures, 0);
        }
    }

    #[test]
    fn faulty_memory_storage_conforms() {
        let mut injected = 0;
        for seed in 0..5 {
            let mut storage = FaultyStorage::new(MemoryStorage::default(), seed);
            storage.fail_randomly(0.05);
            let failures = conformance(storage, FaultyStorage::restart, seed)
                .unwrap_or_else(|e| panic!("{e}"));
            injected += failures;
        }
        assert!(injected >= 10, "only {injected} faults were injected");
    }

    #[test]
    fn faulty_file_storage_conforms() {
        let mut injected = 0;
        for seed in 0..3 {
            let scratch = Scratch::new("conform-faulty");
            let options = file_options();
            let dir = scratch.0.clone();
            let (file, _) = FileStorage::open(&dir, options.clone()).expect("open");
            let mut storage = FaultyStorage::new(file, seed);
            storage.fail_randomly(0.05);
            let failures = conformance(
                storage,
                |s| {
                    s.restart_with(|file| {
                        drop(file);
                        FileStorage::open(&dir, options.clone()).expect("reopen").0
                    })
                },
                seed,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            injected += failures;
        }
        assert!(injected >= 5, "only {injected} faults were injected");
    }

    #[test]
    fn failures_at_either_point_conform() {
        for point in [FailPoint::BeforeWrite, FailPoint::AfterWrite] {
            for after in [0, 1, 17, 120] {
                let mut storage = FaultyStorage::new(MemoryStorage::default(), after);
                storage.fail_after(after, point);
                let failures = conformance(storage, FaultyStorage::restart, after)
                    .unwrap_or_else(|e| panic!("{point:?} after {after}: {e}"));
                assert_eq!(failures, 1, "{point:?} after {after}");
            }
        }
    }

    /// The suite is only worth running if it fails a storage that loses
    /// acknowledged records: here, one that never syncs.
    #[test]
    fn the_suite_catches_a_storage_without_sync() {
        for seed in 0..3 {
            let storage = FaultyStorage::without_sync(MemoryStorage::default(), seed, 8);
            let verdict = conformance(storage, FaultyStorage::restart, seed);
            match verdict {
                Err(e) => assert!(e.contains("lost"), "seed {seed}: {e}"),
                Ok(_) => panic!("seed {seed}: lost writes went unnoticed"),
            }
        }
    }

    #[test]
    fn compaction_drops_old_segments_but_keeps_the_live_state() {
        let scratch = Scratch::new("compact");
        let options = Options {
            segment_bytes_max: 1024,
            fsync: FsyncPolicy::Never,
            ..Options::default()
        };
        let (mut s, _) = FileStorage::open(&scratch.0, options.clone()).expect("open");
        s.append(&[Record::Promise(Ballot::new(7, 2))])
            .expect("append");
        for slot in 1..=200 {
            s.append(&[Record::Accept {
                slot: Slot(slot),
                ballot: Ballot::new(7, 2),
                value: Value::Batch(vec![Bytes::from(vec![b'x'; 40])]),
            }])
            .expect("append");
        }
        s.append(&[Record::Commit { up_to: Slot(150) }])
            .expect("append");
        let segments_before = std::fs::read_dir(&scratch.0).expect("dir").count();
        // Compact twice, so the second checkpoint lands after a rotation.
        s.append(&[Record::Compact { up_to: Slot(100) }])
            .expect("append");
        s.append(&[Record::Compact { up_to: Slot(150) }])
            .expect("append");
        let segments_after = std::fs::read_dir(&scratch.0).expect("dir").count();
        assert!(
            segments_after < segments_before,
            "{segments_after} >= {segments_before}"
        );
        let expected = s.durable().clone();
        assert_eq!(expected.promised, Ballot::new(7, 2), "the promise is live");
        assert_eq!(expected.log_start, Slot(150));
        assert_eq!(expected.accepted.len(), 50);
        drop(s);
        let (s, _) = FileStorage::open(&scratch.0, options).expect("reopen");
        assert_eq!(s.durable(), &expected);
    }

    #[test]
    fn an_undecodable_record_is_reported_with_what_to_do() {
        let scratch = Scratch::new("garbage");
        let options = Options {
            fsync: FsyncPolicy::Never,
            ..Options::default()
        };
        let (mut wal, _) = Wal::open(&scratch.0, options.clone()).expect("open");
        wal.append(&[b"not a record".as_slice()]).expect("append");
        drop(wal);
        match FileStorage::open(&scratch.0, options) {
            Err(e @ StorageError::Record { index: 1, .. }) => {
                assert!(e.to_string().contains("rejoin"), "{e}");
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("garbage was accepted as a record"),
        }
    }
}
