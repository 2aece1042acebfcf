//! The data directory of a node: which node it belongs to, the write-ahead
//! log, the snapshots of the key-value store, and the counter that keeps
//! client session ids unique across restarts.
//!
//! ```text
//! DIR/node-id        the owning node's id, written once
//! DIR/client-epoch   the last session epoch handed out (see below)
//! DIR/cluster        the founding members, or the membership a joining
//!                    node was told (`crate::cluster`), written once
//! DIR/wal/           the write-ahead log (segments below the newest
//!                    snapshot are deleted)
//! DIR/snapshots/     the newest snapshots (snap-<slot>.snap), and the
//!                    partial file of a snapshot being received from a peer
//!                    (incoming-*.part), kept across restarts to resume it
//! ```
//!
//! # Client session ids
//!
//! The key-value store deduplicates writes by (client id, sequence number),
//! so a client id must never be reused, across the cluster or across
//! restarts, while the store may still remember it. A client id is
//!
//! ```text
//! node id (16 bits) | epoch (20 bits) | counter (28 bits)
//! ```
//!
//! The node id makes ids of different nodes differ. The epoch is a counter
//! kept in this directory: each start (and each time the 2^28 counter values
//! of an epoch run out) takes the next epoch and makes it durable before any
//! id of it is used, so a restarted node never repeats an id. Node ids are
//! at least 1, so no client id is 0 (which means "no session"). The host
//! (`host::ClientIds`) hands the ids out.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use host::CLIENT_EPOCH_MAX;
use paxos::NodeId;

use super::StartError;

const NODE_ID_FILE: &str = "node-id";
pub(crate) const CLUSTER_FILE: &str = "cluster";
const EPOCH_FILE: &str = "client-epoch";
const WAL_DIR: &str = "wal";
const SNAPSHOT_DIR: &str = "snapshots";

/// An opened data directory, checked to belong to this node.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StartError + 'a {
    move |source| StartError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path` so that a crash leaves either the old or the
/// new contents: a temporary file, synced, renamed over, and the directory
/// synced.
fn write_durably(dir: &Path, name: &str, contents: &[u8]) -> Result<(), StartError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = File::create(&tmp).map_err(io_error("create", &tmp))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_error("rename into place", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync", dir))
}

fn read_number(path: &Path) -> Result<Option<u64>, StartError> {
    match fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| StartError::DataDir {
                dir: path.to_path_buf(),
                reason: format!("expected a number, found {:?}", text.trim()),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", path)(e)),
    }
}

impl DataDir {
    /// Opens `root` for node `id`, creating it if needed. Refuses a
    /// directory that belongs to another node, or that holds a log but no
    /// owner.
    pub fn open(root: &Path, id: NodeId) -> Result<DataDir, StartError> {
        fs::create_dir_all(root).map_err(io_error("create the data directory", root))?;
        fs::read_dir(root).map_err(io_error("read the data directory", root))?;
        let id_path = root.join(NODE_ID_FILE);
        match read_number(&id_path)? {
            Some(found) if found == id => {}
            Some(found) => {
                return Err(StartError::WrongNode {
                    dir: root.to_path_buf(),
                    found,
                    expected: id,
                });
            }
            None => {
                if root.join(WAL_DIR).exists() || root.join(SNAPSHOT_DIR).exists() {
                    return Err(StartError::DataDir {
                        dir: root.to_path_buf(),
                        reason: format!(
                            "it holds a log but no {NODE_ID_FILE} file, so which node it belongs to is unknown"
                        ),
                    });
                }
                write_durably(root, NODE_ID_FILE, format!("{id}\n").as_bytes())?;
            }
        }
        Ok(DataDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes `DIR/cluster` (see `crate::cluster`), durably.
    pub fn write_cluster(&self, contents: &[u8]) -> Result<(), StartError> {
        write_durably(&self.root, CLUSTER_FILE, contents)
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.root.join(WAL_DIR)
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.root.join(SNAPSHOT_DIR)
    }

    /// Moves the log and the snapshots aside (renamed with `suffix`, kept for
    /// whoever wants to look at them), so that the node starts empty.
    /// Returns the paths they moved to.
    pub fn move_state_aside(&self, suffix: &str) -> Result<Vec<PathBuf>, StartError> {
        let mut moved = Vec::new();
        for from in [self.wal_dir(), self.snapshot_dir()] {
            if !from.exists() {
                continue;
            }
            let mut to = from.clone().into_os_string();
            to.push(format!(".{suffix}"));
            let to = PathBuf::from(to);
            fs::rename(&from, &to).map_err(io_error("move aside", &from))?;
            moved.push(to);
        }
        File::open(&self.root)
            .and_then(|d| d.sync_all())
            .map_err(io_error("sync", &self.root))?;
        Ok(moved)
    }

    /// Takes the next session epoch, durably (see `host::ClientIds`).
    pub fn next_epoch(&self) -> Result<u64, StartError> {
        let path = self.root.join(EPOCH_FILE);
        let epoch = read_number(&path)?.unwrap_or(0) + 1;
        if epoch > CLIENT_EPOCH_MAX {
            return Err(StartError::DataDir {
                dir: self.root.clone(),
                reason: "every client session epoch is used up; give this node a fresh id and data directory".to_owned(),
            });
        }
        write_durably(&self.root, EPOCH_FILE, format!("{epoch}\n").as_bytes())?;
        Ok(epoch)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly, which is its job
mod tests {
    use std::collections::BTreeSet;

    use host::ClientIds;

    use super::*;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let path = std::env::temp_dir()
                .join(format!("parliament-datadir-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            Scratch(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_data_directory_belongs_to_one_node() {
        let s = Scratch::new("owner");
        DataDir::open(&s.0, 2).unwrap();
        DataDir::open(&s.0, 2).unwrap();
        let err = DataDir::open(&s.0, 3).unwrap_err();
        assert!(
            matches!(
                err,
                StartError::WrongNode {
                    found: 2,
                    expected: 3,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("node 2"), "{err}");
    }

    #[test]
    fn a_log_without_an_owner_is_refused() {
        let s = Scratch::new("orphan");
        fs::create_dir_all(s.0.join(WAL_DIR)).unwrap();
        assert!(matches!(
            DataDir::open(&s.0, 1),
            Err(StartError::DataDir { .. })
        ));
    }

    #[test]
    fn client_ids_never_repeat_across_restarts_or_nodes() {
        let s = Scratch::new("ids");
        let mut seen = BTreeSet::new();
        for _restart in 0..3 {
            for node in [1, 2] {
                let dir = DataDir::open(&s.0.join(node.to_string()), node).unwrap();
                let mut ids = ClientIds::new(node, Some(dir.next_epoch().unwrap()));
                for _ in 0..100 {
                    let id = ids.take().unwrap().0;
                    assert_ne!(id, 0);
                    assert!(seen.insert(id), "id {id:#x} repeated");
                }
            }
        }
        let dir = DataDir::open(&s.0.join("1"), 1).unwrap();
        assert_eq!(dir.next_epoch().unwrap(), 4, "each start takes the next");
    }
}
