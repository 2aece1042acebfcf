//! A storage that fails on purpose, for tests and the simulator.
//!
//! [`FaultyStorage`] wraps any [`ReplicaStorage`] and, from a seed, makes
//! appends fail the way a disk does: with an I/O error, either before the
//! batch reached the disk or after (the write and sync went through but the
//! success was never reported, say a sync that returned an error after
//! flushing). The wrapped storage is what a restart finds:
//!
//! | failure | wrapped state afterwards |
//! |---|---|
//! | [`FailPoint::BeforeWrite`] | without the batch |
//! | [`FailPoint::AfterWrite`] | with the whole batch |
//!
//! Never half a batch: the storages here write a batch with one write and
//! one sync, and the log's recovery drops a torn tail whole. Either way the
//! caller got an error, so it never reported the batch to anyone, and both
//! outcomes are allowed by the contract. After a failure the storage
//! refuses every append, as the log does, until [`FaultyStorage::restart`]
//! (what a node does: stop, restart, replay).
//!
//! [`FaultyStorage::without_sync`] models a disk written without fsync
//! (`FsyncPolicy::Never`): appends succeed at once but reach the wrapped
//! storage only every few appends, and a restart loses the rest. That
//! breaks the contract on purpose, to show what the conformance suite (and
//! the simulator) catch.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use paxos::replica::{Durable, Record};
use paxos::rng::Rng;

use super::replica::{ReplicaStorage, StorageError};
use super::wal::WalError;

/// Where an injected failure strikes an append; see the module notes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPoint {
    /// Nothing of the batch is durable.
    BeforeWrite,
    /// The whole batch is durable, but the append reports an error.
    AfterWrite,
}

/// Appends acknowledged but not yet passed to the wrapped storage.
#[derive(Clone, Debug)]
struct Unsynced {
    /// Pass the pending records on every this many appends.
    sync_every: u64,
    appends_since_sync: u64,
    pending: Vec<Record>,
    /// The wrapped state plus the pending records: what the process sees.
    visible: Durable,
}

/// A fault-injecting wrapper; see the module notes.
#[derive(Clone, Debug)]
pub struct FaultyStorage<S> {
    inner: S,
    rng: Rng,
    /// Chance that an append fails, at a point drawn from `rng`.
    fail_probability: f64,
    /// Appends still to let through, and where the one after them fails.
    scheduled: Option<(u64, FailPoint)>,
    /// An injected failure happened; appends are refused until a restart.
    failed: bool,
    unsynced: Option<Unsynced>,
    injected: u64,
    lost_records: u64,
}

fn fault_path() -> PathBuf {
    PathBuf::from("(injected fault)")
}

impl<S: ReplicaStorage> FaultyStorage<S> {
    /// Passes everything through until told to fail.
    pub fn new(inner: S, seed: u64) -> FaultyStorage<S> {
        FaultyStorage {
            inner,
            rng: Rng::new(seed),
            fail_probability: 0.0,
            scheduled: None,
            failed: false,
            unsynced: None,
            injected: 0,
            lost_records: 0,
        }
    }

    /// UNSAFE model of a disk without fsync: appends are acknowledged at
    /// once and reach `inner` only every `sync_every` appends (or on
    /// [`FaultyStorage::sync`]); a restart loses the rest.
    pub fn without_sync(inner: S, seed: u64, sync_every: u64) -> FaultyStorage<S> {
        let visible = inner.durable().clone();
        let mut storage = FaultyStorage::new(inner, seed);
        storage.unsynced = Some(Unsynced {
            sync_every: sync_every.max(1),
            appends_since_sync: 0,
            pending: Vec::new(),
            visible,
        });
        storage
    }

    /// Lets the next `appends` appends through and fails the one after, at
    /// `point`. Replaces an earlier schedule.
    pub fn fail_after(&mut self, appends: u64, point: FailPoint) {
        self.scheduled = Some((appends, point));
    }

    /// Fails each append with chance `probability`, before or after the
    /// write with even odds.
    pub fn fail_randomly(&mut self, probability: f64) {
        self.fail_probability = probability;
    }

    /// True after an injected failure, until a restart.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Failures injected so far.
    pub fn injected(&self) -> u64 {
        self.injected
    }

    /// Acknowledged records that restarts threw away (only ever non-zero
    /// without sync).
    pub fn lost_records(&self) -> u64 {
        self.lost_records
    }

    /// The wrapped storage: what a restart would find.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Passes pending records on to the wrapped storage (without sync).
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if let Some(u) = self.unsynced.as_mut() {
            u.appends_since_sync = 0;
            let pending = std::mem::take(&mut u.pending);
            if let Err(e) = self.inner.append(&pending) {
                u.pending = pending;
                return Err(e);
            }
        }
        Ok(())
    }

    /// A crash and restart of a storage kept in memory.
    pub fn restart(self) -> FaultyStorage<S> {
        self.restart_with(|inner| inner)
    }

    /// A crash and restart: unsynced records are lost, the failure is
    /// cleared, and `reopen` turns the wrapped storage into what a restart
    /// finds (for a file storage: drop it and open the directory again).
    /// The seed's stream and any pending schedule carry on.
    pub fn restart_with(mut self, reopen: impl FnOnce(S) -> S) -> FaultyStorage<S> {
        self.inner = reopen(self.inner);
        self.failed = false;
        if let Some(u) = self.unsynced.as_mut() {
            self.lost_records += u.pending.len() as u64;
            u.pending.clear();
            u.appends_since_sync = 0;
            u.visible = self.inner.durable().clone();
        }
        self
    }

    /// Decides whether this append fails, and where.
    fn draw_failure(&mut self) -> Option<FailPoint> {
        if let Some((left, point)) = self.scheduled {
            if left == 0 {
                self.scheduled = None;
                return Some(point);
            }
            self.scheduled = Some((left - 1, point));
        }
        if self.fail_probability > 0.0 && self.rng.chance(self.fail_probability) {
            return Some(if self.rng.chance(0.5) {
                FailPoint::BeforeWrite
            } else {
                FailPoint::AfterWrite
            });
        }
        None
    }

    fn write(&mut self, records: &[Record]) -> Result<(), StorageError> {
        let Some(u) = self.unsynced.as_mut() else {
            return self.inner.append(records);
        };
        u.pending.extend_from_slice(records);
        for r in records {
            u.visible.apply(r);
        }
        u.appends_since_sync += 1;
        if u.appends_since_sync >= u.sync_every {
            self.sync()?;
        }
        Ok(())
    }
}

impl<S: ReplicaStorage> ReplicaStorage for FaultyStorage<S> {
    fn append(&mut self, records: &[Record]) -> Result<(), StorageError> {
        if self.failed {
            return Err(WalError::Failed { dir: fault_path() }.into());
        }
        if records.is_empty() {
            return Ok(());
        }
        let Some(point) = self.draw_failure() else {
            return self.write(records);
        };
        self.failed = true;
        self.injected += 1;
        if point == FailPoint::AfterWrite {
            self.write(records)?;
        }
        Err(WalError::Io {
            op: "append to",
            path: fault_path(),
            source: Arc::new(io::Error::other(format!("injected failure {point:?}"))),
        }
        .into())
    }

    /// What the process sees: the wrapped state, plus (without sync) the
    /// records a restart would lose.
    fn durable(&self) -> &Durable {
        match &self.unsynced {
            Some(u) => &u.visible,
            None => self.inner.durable(),
        }
    }
}

#[cfg(test)]
mod tests {
    use paxos::Ballot;
    use paxos::replica::Slot;

    use super::super::replica::MemoryStorage;
    use super::*;

    fn promise(round: u64) -> Vec<Record> {
        vec![Record::Promise(Ballot::new(round, 1))]
    }

    #[test]
    fn a_failure_before_the_write_leaves_nothing_and_latches() {
        let mut s = FaultyStorage::new(MemoryStorage::default(), 1);
        s.fail_after(2, FailPoint::BeforeWrite);
        s.append(&promise(1)).expect("first");
        s.append(&promise(2)).expect("second");
        let err = s.append(&promise(3)).expect_err("third fails");
        assert!(err.to_string().contains("injected"), "{err}");
        assert_eq!(s.durable().promised, Ballot::new(2, 1));
        assert!(s.is_failed());
        let err = s.append(&promise(4)).expect_err("refused until restart");
        assert!(
            matches!(err, StorageError::Wal(WalError::Failed { .. })),
            "{err}"
        );
        let mut s = s.restart();
        assert_eq!(s.durable().promised, Ballot::new(2, 1));
        s.append(&promise(4)).expect("after restart");
        assert_eq!(s.durable().promised, Ballot::new(4, 1));
        assert_eq!(s.injected(), 1);
    }

    #[test]
    fn a_failure_after_the_write_keeps_the_whole_batch() {
        let mut s = FaultyStorage::new(MemoryStorage::default(), 2);
        s.fail_after(0, FailPoint::AfterWrite);
        let batch = vec![
            Record::Promise(Ballot::new(5, 2)),
            Record::Commit { up_to: Slot(3) },
        ];
        s.append(&batch).expect_err("fails");
        let s = s.restart();
        assert_eq!(s.durable().promised, Ballot::new(5, 2));
        assert_eq!(s.durable().commit, Slot(3));
    }

    #[test]
    fn random_failures_follow_the_seed() {
        let run = |seed| {
            let mut s = FaultyStorage::new(MemoryStorage::default(), seed);
            s.fail_randomly(0.3);
            let mut outcomes = Vec::new();
            for round in 1..100 {
                let ok = s.append(&promise(round)).is_ok();
                outcomes.push(ok);
                if !ok {
                    s = s.restart();
                }
            }
            (outcomes, s.injected())
        };
        let (a, injected) = run(7);
        assert_eq!(run(7).0, a, "the same seed, the same faults");
        assert!(injected > 10 && injected < 60, "{injected}");
        assert_ne!(run(8).0, a);
    }

    #[test]
    fn without_sync_a_restart_loses_acknowledged_records() {
        let mut s = FaultyStorage::without_sync(MemoryStorage::default(), 3, 3);
        for round in 1..=4 {
            s.append(&promise(round)).expect("acknowledged");
        }
        assert_eq!(s.durable().promised, Ballot::new(4, 1), "visible");
        assert_eq!(s.inner().durable().promised, Ballot::new(3, 1), "synced");
        let s = s.restart();
        assert_eq!(s.durable().promised, Ballot::new(3, 1));
        assert_eq!(s.lost_records(), 1);
    }
}
