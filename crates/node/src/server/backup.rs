//! `PAXOS BACKUP`: a consistent snapshot of the running cluster, read by
//! `parliament backup` (`crate::backup` has the file it writes).
//!
//! ```text
//! PAXOS BACKUP
//!     slot <n> bytes <n> crc <n> cluster_id <hex> node <id> version <v>
//! PAXOS BACKUP READ <slot> <bytes> <crc> <offset> <len>
//!     the body's bytes from <offset>, at most 4 MiB at a time
//! ```
//!
//! `PAXOS BACKUP` first passes a linearizable read barrier (as a `GET`
//! would), so the applied slot then covers every write acknowledged before
//! it; it then asks the replica task for a snapshot of that slot or a later
//! one and answers once it is durable. The snapshot's body is read in
//! pieces on the connection's own file reads (never on the replica task),
//! so a backup of any size needs no huge reply, and the client checks the
//! whole body against `crc`. Any member serves it; on a follower the copy
//! of the store that a snapshot begins with pauses that follower, not the
//! leader. A body stays readable while it is being read even after newer
//! snapshots retire its file.

use bytes::Bytes;
use host::files::SnapshotFiles;
use host::transfer::SnapshotId;
use paxos::replica::Slot;
use resp::Reply;
use tokio::sync::oneshot;

use super::argv::Argv;
use crate::api::{NodeError, NodeHandle, Op, ReadMode};

/// The largest piece of a body one `PAXOS BACKUP READ` returns.
pub(crate) const READ_BYTES_MAX: u64 = 4 << 20;

/// A backup request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Take the snapshot and say which it is.
    Begin,
    /// A piece of its body.
    Read {
        id: SnapshotId,
        offset: u64,
        len: u64,
    },
}

/// Parses what follows `PAXOS BACKUP`.
pub(crate) fn parse(mut argv: Argv) -> Result<Request, Reply> {
    let usage = || {
        Reply::error(
            "ERR use PAXOS BACKUP, or PAXOS BACKUP READ <slot> <bytes> <crc> <offset> <len>",
        )
    };
    if !argv.eat("read") {
        argv.finish().map_err(|_| usage())?;
        return Ok(Request::Begin);
    }
    let mut number = || -> Result<u64, Reply> {
        let arg = argv.next().map_err(|_| usage())?;
        std::str::from_utf8(&arg)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| Reply::error("ERR value is not an integer or out of range"))
    };
    let slot = number()?;
    let bytes = number()?;
    let crc =
        u32::try_from(number()?).map_err(|_| Reply::error("ERR the crc is a 32-bit number"))?;
    let offset = number()?;
    let len = number()?;
    argv.finish().map_err(|_| usage())?;
    if len > READ_BYTES_MAX {
        return Err(Reply::Error(format!(
            "ERR at most {READ_BYTES_MAX} bytes are read at a time"
        )));
    }
    Ok(Request::Read {
        id: SnapshotId {
            slot: Slot(slot),
            bytes,
            crc,
        },
        offset,
        len,
    })
}

/// Carries out `request` and sends the answer to `answer`.
pub(crate) async fn run(
    node: NodeHandle,
    request: Request,
    answer: oneshot::Sender<Result<kv::Reply, NodeError>>,
) {
    let result = match request {
        Request::Begin => begin(&node).await,
        Request::Read { id, offset, len } => read(&node, id, offset, len).await,
    };
    let _ = answer.send(result);
}

async fn begin(node: &NodeHandle) -> Result<kv::Reply, NodeError> {
    if node.snapshots().is_none() {
        return Ok(kv::Reply::Error(
            "ERR this node keeps no snapshots to back up".to_owned(),
        ));
    }
    // The barrier: once a linearizable read is answered here, the applied
    // slot covers every write acknowledged before the backup began.
    let barrier = node
        .read(kv::Command::DbSize, ReadMode::Linearizable)
        .await?;
    if let kv::Reply::Error(e) = barrier {
        return Ok(kv::Reply::Error(e));
    }
    let (reply, answer) = oneshot::channel();
    node.send(Op::Snapshot { reply }).await?;
    let id = answer
        .await
        .unwrap_or_else(|_| Err(NodeError::Busy("the node is shutting down".to_owned())))?;
    // Open the body now, so that it stays readable should newer snapshots
    // retire its file before the first piece is read.
    read_piece(node, id, 0, 0).await?;
    let status = node.status();
    let field = |name: &str| kv::Reply::Bulk(Bytes::from(name.to_owned()));
    let int = |n: u64| kv::Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    Ok(kv::Reply::Array(vec![
        field("slot"),
        int(id.slot.0),
        field("bytes"),
        int(id.bytes),
        field("crc"),
        int(u64::from(id.crc)),
        field("cluster_id"),
        field(&status.cluster_id),
        field("node"),
        int(status.id),
        field("version"),
        field(super::introspection::VERSION),
    ]))
}

async fn read(
    node: &NodeHandle,
    id: SnapshotId,
    offset: u64,
    len: u64,
) -> Result<kv::Reply, NodeError> {
    match read_piece(node, id, offset, len).await {
        Ok(data) => Ok(kv::Reply::Bulk(data)),
        Err(e) => Ok(kv::Reply::Error(format!(
            "ERR cannot read the backup's snapshot: {e}; run the backup again"
        ))),
    }
}

/// Reads `len` bytes of the body of snapshot `id` from `offset`, off the
/// runtime.
async fn read_piece(
    node: &NodeHandle,
    id: SnapshotId,
    offset: u64,
    len: u64,
) -> Result<Bytes, NodeError> {
    let Some(snapshots) = node.snapshots() else {
        return Err(NodeError::Busy("this node keeps no snapshots".to_owned()));
    };
    let mut snapshots = snapshots.clone();
    let len = usize::try_from(len.min(READ_BYTES_MAX)).unwrap_or(0);
    tokio::task::spawn_blocking(move || snapshots.read(&id, offset, len))
        .await
        .map_err(|e| NodeError::Busy(format!("the read stopped: {e}")))?
        .map_err(|e| NodeError::Busy(e.to_string()))
}
