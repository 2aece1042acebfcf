//! `parliament backup` and `parliament restore`: an online backup of a
//! running cluster to one file, and the data directory of a member of a new
//! cluster made from it (the file's format is `node::backup`'s).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Args;
use loadgen::resp_client::RespConn;
use node::backup::{BackupHeader, BackupWriter, RestoreTarget};
use node::cluster::ClusterId;
use resp::Reply;

/// Pieces of the body asked for at once.
const WINDOW: u64 = 8;
/// The size of one piece.
const PIECE_BYTES: u64 = 1 << 20;
/// How long the snapshot may take to be written (a store of many
/// gigabytes takes minutes), and then each piece.
const BEGIN_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const PIECE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The client address of the member that takes the backup. Any member
    /// can; a follower's copy of the store pauses only that follower.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:6379")]
    addr: String,
    /// The cluster's password, if it has one.
    #[arg(long)]
    password: Option<String>,
    /// The file to write (never overwritten; written as FILE.partial
    /// until it is whole and checked).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// The new member's data directory: new or empty.
    #[arg(long)]
    data_dir: PathBuf,
    /// The new member's id.
    #[arg(long)]
    id: u64,
    /// Every founder of the new cluster and its peer address,
    /// 1=IP:PORT,2=IP:PORT,... (the same list for every member restored,
    /// and the same as `serve --members` later).
    #[arg(long)]
    members: String,
    /// Where this member will serve clients, told to members that join
    /// later [default: none until it serves].
    #[arg(long)]
    client_addr: Option<String>,
}

pub fn run_backup(args: BackupArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(backup(args))
}

async fn backup(args: BackupArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let mut conn = RespConn::connect(&args.addr)
        .await
        .with_context(|| format!("is a parliament node serving clients at {}?", args.addr))?;
    if let Some(password) = &args.password
        && let Reply::Error(e) = conn
            .call(&[b"AUTH", password.as_bytes()], PIECE_TIMEOUT)
            .await?
    {
        bail!("AUTH refused: {e}");
    }
    let reply = conn
        .call(&[b"PAXOS", b"BACKUP"], BEGIN_TIMEOUT)
        .await
        .context("asking for the backup's snapshot")?;
    let point = Point::from_reply(&reply)?;
    let header = BackupHeader {
        source: point.cluster,
        restored_id: ClusterId::generate(),
        slot: point.slot,
        body_bytes: point.bytes,
        body_crc: point.crc,
        node: point.node,
        taken_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        version: point.version.clone(),
    };
    let snapshot_ready = started.elapsed();
    let mut file = BackupWriter::create(&args.out, header)?;
    let (slot, bytes, crc) = (
        point.slot.to_string(),
        point.bytes.to_string(),
        point.crc.to_string(),
    );
    let mut asked = 0u64;
    let mut in_flight = std::collections::VecDeque::new();
    while file.written() < point.bytes {
        while asked < point.bytes && (in_flight.len() as u64) < WINDOW {
            let len = PIECE_BYTES.min(point.bytes - asked);
            let (offset, n) = (asked.to_string(), len.to_string());
            conn.queue(&[
                b"PAXOS",
                b"BACKUP",
                b"READ",
                slot.as_bytes(),
                bytes.as_bytes(),
                crc.as_bytes(),
                offset.as_bytes(),
                n.as_bytes(),
            ]);
            in_flight.push_back(len);
            asked += len;
        }
        conn.flush().await?;
        let Some(len) = in_flight.pop_front() else {
            break;
        };
        let piece = tokio::time::timeout(PIECE_TIMEOUT, conn.read_reply())
            .await
            .map_err(|_| anyhow::anyhow!("no piece of the backup within {PIECE_TIMEOUT:?}"))??;
        match piece {
            Reply::Bulk(data) if data.len() as u64 == len => file.append(&data)?,
            Reply::Error(e) => bail!("node {} stopped serving the backup: {e}", point.node),
            other => bail!(
                "node {} answered a piece of {len} bytes with {other:?}",
                point.node
            ),
        }
    }
    let path = file.finish()?;
    let took = started.elapsed().as_secs_f64();
    let streamed = took - snapshot_ready.as_secs_f64();
    println!(
        "backed up slot {} of cluster {} (taken by node {}, release {}): {} bytes to {} in {:.1} s \
         (snapshot {:.1} s, transfer {:.1} MB/s)",
        point.slot,
        point.cluster,
        point.node,
        point.version,
        point.bytes,
        path.display(),
        took,
        snapshot_ready.as_secs_f64(),
        point.bytes as f64 / 1e6 / streamed.max(1e-6),
    );
    Ok(ExitCode::SUCCESS)
}

/// What `PAXOS BACKUP` answered.
struct Point {
    slot: u64,
    bytes: u64,
    crc: u32,
    cluster: ClusterId,
    node: u64,
    version: String,
}

impl Point {
    fn from_reply(reply: &Reply) -> Result<Point> {
        let fields = match reply {
            Reply::Array(fields) => fields,
            Reply::Error(e) => bail!("the node refused the backup: {e}"),
            other => bail!("unexpected answer to PAXOS BACKUP: {other:?}"),
        };
        let get = |name: &str| {
            fields
                .chunks(2)
                .find(|pair| matches!(&pair[0], Reply::Bulk(k) if k.as_ref() == name.as_bytes()))
                .and_then(|pair| pair.get(1))
                .with_context(|| format!("PAXOS BACKUP's answer has no {name}"))
        };
        let number = |name: &str| -> Result<u64> {
            match get(name)? {
                Reply::Integer(n) => u64::try_from(*n).with_context(|| format!("{name} {n}")),
                other => bail!("{name} is not a number: {other:?}"),
            }
        };
        let text = |name: &str| -> Result<String> {
            match get(name)? {
                Reply::Bulk(b) => Ok(String::from_utf8_lossy(b).into_owned()),
                other => bail!("{name} is not text: {other:?}"),
            }
        };
        let cluster = text("cluster_id")?;
        let cluster = u128::from_str_radix(&cluster, 16)
            .ok()
            .and_then(ClusterId::from_u128)
            .with_context(|| format!("the node names no cluster id ('{cluster}')"))?;
        Ok(Point {
            slot: number("slot")?,
            bytes: number("bytes")?,
            crc: u32::try_from(number("crc")?).context("the crc")?,
            cluster,
            node: number("node")?,
            version: text("version")?,
        })
    }
}

pub fn run_restore(args: RestoreArgs) -> Result<ExitCode> {
    let members = super::serve::parse_members(&args.members).context("--members")?;
    let started = Instant::now();
    let target = RestoreTarget {
        data_dir: args.data_dir.clone(),
        id: args.id,
        members,
        client_addr: args.client_addr.unwrap_or_default(),
    };
    let (_, file_bytes) = node::backup::peek(&args.from)?;
    let restored = node::backup::restore(&args.from, &target)?;
    let took = started.elapsed().as_secs_f64();
    println!(
        "restored slot {} ({} keys) of cluster {} into {} as node {} of the new cluster {} in \
         {:.1} s ({:.1} MB/s); start every member restored from this file with `parliament \
         serve --id ID --data-dir DIR --members {}`",
        restored.header.slot,
        restored.keys,
        restored.header.source,
        args.data_dir.display(),
        args.id,
        restored.header.restored_id,
        took,
        file_bytes as f64 / 1e6 / took.max(1e-6),
        args.members,
    );
    Ok(ExitCode::SUCCESS)
}
