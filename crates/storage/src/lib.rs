//! Durable storage of a node: the write-ahead log that keeps what this node
//! promised and accepted across crashes (`wal`, `replica`), the binary form
//! of the protocol's records and messages (`wire`), the snapshots of its
//! state machine (`snapshot`), and the partial file of a snapshot being
//! received from a peer (`partial`).

pub mod faulty;
pub mod partial;
pub mod replica;
pub mod snapshot;
pub mod wal;
pub mod wire;

#[cfg(test)]
mod wal_tests;

/// A fresh directory for one test, removed on drop.
#[cfg(test)]
pub(crate) struct Scratch(pub std::path::PathBuf);

#[cfg(test)]
impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "parliament-storage-{name}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        Scratch(path)
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

#[cfg(test)]
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
