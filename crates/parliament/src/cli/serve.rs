//! `parliament serve`: run one node.
//!
//! Settings come from flags, or from a TOML file (`--config`) with the same
//! names (`id`, `data-dir`, `client-addr`, `peer-addr`, `http-addr`,
//! `members`, `join`, `fsync`, `tick-ms`, `snapshot-entries`, `snapshot-bytes`,
//! `promote-within-slots`,
//! and the client limits `connections-max`,
//! `key-bytes-max`, `value-bytes-max`, `pipeline-depth-max`,
//! `transaction-commands-max`, `watched-keys-max`, `command-bytes-max`,
//! `password`); a flag wins over the file. `members` is either the flag's
//! `1=IP:PORT,2=IP:PORT` string or a table:
//!
//! ```toml
//! id = 1
//! data-dir = "/var/lib/parliament"
//! client-addr = "10.0.0.1:6379"
//! http-addr = "10.0.0.1:8379"
//! [members]
//! 1 = "10.0.0.1:7379"
//! 2 = "10.0.0.2:7379"
//! 3 = "10.0.0.3:7379"
//! ```
//!
//! Membership: `--members` founds a new cluster (every founding voter's
//! peer address); `--join HOST:PORT,...` makes a brand-new node ask those
//! members for the membership and wait until an operator adds it (`PAXOS
//! MEMBER ADD`). Both are read on the first start only: the data directory
//! then keeps the membership, and the log's changes win over any flag.
//!
//! Snapshots: the node snapshots its store after `snapshot-entries` applied
//! log entries (default 10000) or `snapshot-bytes` bytes of applied commands
//! (default 67108864, 64 MiB), whichever comes first, then drops the log
//! below the snapshot; 0 turns that trigger off. Fewer entries mean shorter
//! restarts and a smaller log on disk, at the cost of writing the whole
//! store more often.
//!
//! Every listener is bound before the node starts, so a taken port fails
//! the start with one clear line and a non-zero exit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use host::SnapshotPolicy;
use node::net::auth::ClusterSecret;
use node::{Node, NodeConfig};
use node::{http, server};
use serde::Deserialize;
use storage::wal::FsyncPolicy;
use tokio::net::TcpListener;
use tracing::{Instrument, error, info, warn};

/// The base ports of `parliament cluster` and of a lone `serve`: node `i`
/// uses these plus `i - 1`.
pub const CLIENT_PORT: u16 = 6379;
pub const PEER_PORT_OFFSET: u16 = 1000;
pub const HTTP_PORT_OFFSET: u16 = 2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// fdatasync every append (the default; what Paxos needs).
    Always,
    /// Never sync. UNSAFE: a machine crash can lose promises the node
    /// already made, which can lose acknowledged writes. Tests and
    /// benchmarks only.
    Never,
}

/// Limits of the client port, and of a command through the log. Each is
/// also a key of the config file.
#[derive(Args, Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClientLimits {
    /// Open client connections [default: 10000].
    #[arg(long)]
    connections_max: Option<usize>,
    /// Longest key, in bytes [default: 65536].
    #[arg(long)]
    key_bytes_max: Option<usize>,
    /// Longest value, in bytes [default: --command-bytes-max].
    #[arg(long)]
    value_bytes_max: Option<usize>,
    /// Requests of one connection in flight [default: 1024].
    #[arg(long)]
    pipeline_depth_max: Option<usize>,
    /// Commands queued in one MULTI [default: 10000].
    #[arg(long)]
    transaction_commands_max: Option<usize>,
    /// Keys one connection may WATCH [default: 10000].
    #[arg(long)]
    watched_keys_max: Option<usize>,
    /// Largest write through the log, in bytes, command and session tag
    /// together [default: 1048576]. Bounded by what a peer frame carries.
    #[arg(long)]
    command_bytes_max: Option<usize>,
    /// Clients must AUTH with this password (prefer the config file: a
    /// flag is visible to other users of the machine).
    #[arg(long)]
    password: Option<String>,
    /// With a password, close a connection that has not authenticated
    /// this many seconds after connecting [default: 10].
    #[arg(long, value_name = "SECONDS")]
    auth_deadline_secs: Option<u64>,
    /// Close a client connection idle for this many seconds with nothing
    /// in flight; 0 never closes one (Redis's `timeout`) [default: 0].
    #[arg(long, value_name = "SECONDS")]
    client_idle_timeout_secs: Option<u64>,
}

impl ClientLimits {
    /// `self`, with what it leaves unset taken from `file`.
    fn or(self, file: ClientLimits) -> ClientLimits {
        ClientLimits {
            connections_max: self.connections_max.or(file.connections_max),
            key_bytes_max: self.key_bytes_max.or(file.key_bytes_max),
            value_bytes_max: self.value_bytes_max.or(file.value_bytes_max),
            pipeline_depth_max: self.pipeline_depth_max.or(file.pipeline_depth_max),
            transaction_commands_max: self
                .transaction_commands_max
                .or(file.transaction_commands_max),
            watched_keys_max: self.watched_keys_max.or(file.watched_keys_max),
            command_bytes_max: self.command_bytes_max.or(file.command_bytes_max),
            password: self.password.or(file.password),
            auth_deadline_secs: self.auth_deadline_secs.or(file.auth_deadline_secs),
            client_idle_timeout_secs: self
                .client_idle_timeout_secs
                .or(file.client_idle_timeout_secs),
        }
    }

    /// The client port's settings for node `id`, and the node's limit on
    /// one command.
    fn apply(&self, id: u64, node: &mut NodeConfig) -> server::Config {
        let defaults = server::Config::default();
        if let Some(max) = self.command_bytes_max {
            node.command_bytes_max = max;
        }
        let key_bytes_max = self.key_bytes_max.unwrap_or(defaults.key_bytes_max);
        // A value the log cannot carry is refused at the door.
        let value_bytes_max = self.value_bytes_max.unwrap_or(node.command_bytes_max);
        server::Config {
            node_id: id,
            key_bytes_max,
            value_bytes_max,
            resp: request_limits(key_bytes_max, value_bytes_max, node.command_bytes_max),
            pipeline_depth_max: self
                .pipeline_depth_max
                .unwrap_or(defaults.pipeline_depth_max),
            connections_max: self.connections_max.unwrap_or(defaults.connections_max),
            transaction_commands_max: self
                .transaction_commands_max
                .unwrap_or(defaults.transaction_commands_max),
            watched_keys_max: self.watched_keys_max.unwrap_or(defaults.watched_keys_max),
            password: self.password.clone(),
            auth_deadline: self
                .auth_deadline_secs
                .map_or(defaults.auth_deadline, std::time::Duration::from_secs),
            idle_timeout: match self.client_idle_timeout_secs {
                None | Some(0) => None,
                Some(secs) => Some(std::time::Duration::from_secs(secs)),
            },
        }
    }
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// A TOML file with any of these settings; flags win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id, 1 to 65535.
    #[arg(long)]
    id: Option<u64>,
    /// Where the node keeps its log [default: ./parliament-data/node-ID].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address for Redis clients [default: 127.0.0.1:6379 + ID - 1].
    #[arg(long)]
    client_addr: Option<String>,
    /// Address to listen on for peers [default: this node's --members entry].
    #[arg(long)]
    peer_addr: Option<String>,
    /// Address for metrics, status and the dashboard [default: 127.0.0.1:8379 + ID - 1].
    #[arg(long)]
    http_addr: Option<String>,
    /// Founds a new cluster with these voters' peer addresses, this node
    /// included: 1=IP:PORT,2=IP:PORT,... Read on the first start only (the
    /// data directory keeps the membership, and the log's changes win)
    /// [default: this node alone, on 127.0.0.1:7379 + ID - 1].
    #[arg(long, conflicts_with = "join")]
    members: Option<String>,
    /// Joins a running cluster: peer addresses of members to ask for the
    /// membership, HOST:PORT,HOST:PORT,... The node waits until an operator
    /// adds it with PAXOS MEMBER ADD, then fetches the data. First start
    /// only.
    #[arg(long, value_name = "HOST:PORT,...")]
    join: Option<String>,
    /// When the log reaches the disk [default: always].
    #[arg(long, value_enum)]
    fsync: Option<Fsync>,
    /// Milliseconds per protocol tick [default: 10]; heartbeats go every 2
    /// ticks, elections start after 20 to 40 silent ticks.
    #[arg(long)]
    tick_ms: Option<u64>,
    /// Snapshot the store (and drop the log below it) after this many
    /// applied log entries; 0 turns this trigger off [default: 10000].
    #[arg(long, value_name = "N")]
    snapshot_entries: Option<u64>,
    /// Snapshot the store after this many bytes of applied commands; 0 turns
    /// this trigger off [default: 67108864].
    #[arg(long, value_name = "N")]
    snapshot_bytes: Option<u64>,
    /// When leading, promote a learner added to become a voter once it is
    /// within this many slots of the commit point [default: 64].
    #[arg(long, value_name = "N")]
    promote_within_slots: Option<u64>,
    /// Do not trust this node's data directory: its log or snapshots were
    /// lost or damaged, or an old copy was put back. A damaged log and
    /// snapshots are moved aside (kept, renamed `.damaged-TIME`); a whole
    /// log keeps what it knows chosen and forgets its votes. Either way the
    /// node rejoins as a learner that votes again only once every other
    /// member has answered and it is safe. For one start only: every start
    /// with it rejoins again.
    #[arg(long)]
    rejoin: bool,
    /// A file holding the cluster's secret (at least 16 bytes; a final
    /// newline is ignored), the same on every member: members prove to
    /// each other that they hold it, and every peer frame is
    /// authenticated. Required when the peer port listens beyond loopback.
    #[arg(long, value_name = "FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// Start with a peer port beyond loopback and no cluster secret: only
    /// for a private network that keeps every stranger away.
    #[arg(long)]
    insecure_peers: bool,
    #[command(flatten)]
    limits: ClientLimits,
    /// Stop when standard input closes (used by `parliament cluster`, so
    /// that nodes never outlive it).
    #[arg(long, hide = true)]
    pub stop_on_stdin_eof: bool,
}

impl ServeArgs {
    /// The flags `parliament cluster` gives node `id`; `membership` is
    /// `("--members", founders)` or `("--join", seeds)`.
    #[allow(clippy::too_many_arguments)]
    pub fn for_cluster(
        id: u64,
        data_dir: PathBuf,
        client_addr: String,
        peer_addr: String,
        http_addr: String,
        membership: (&str, String),
        fsync: Option<Fsync>,
        tick_ms: Option<u64>,
    ) -> Vec<String> {
        let mut args = vec![
            "serve".to_owned(),
            "--id".to_owned(),
            id.to_string(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--client-addr".to_owned(),
            client_addr,
            "--peer-addr".to_owned(),
            peer_addr,
            "--http-addr".to_owned(),
            http_addr,
            membership.0.to_owned(),
            membership.1,
            "--stop-on-stdin-eof".to_owned(),
        ];
        if let Some(fsync) = fsync {
            args.push("--fsync".to_owned());
            args.push(
                match fsync {
                    Fsync::Always => "always",
                    Fsync::Never => "never",
                }
                .to_owned(),
            );
        }
        if let Some(tick_ms) = tick_ms {
            args.push("--tick-ms".to_owned());
            args.push(tick_ms.to_string());
        }
        args
    }
}

/// Members as the file may give them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileMembers {
    List(String),
    Table(BTreeMap<String, String>),
}

/// Every key the config file may have.
const FILE_KEYS: &[&str] = &[
    "id",
    "data-dir",
    "client-addr",
    "peer-addr",
    "http-addr",
    "members",
    "join",
    "fsync",
    "tick-ms",
    "snapshot-entries",
    "snapshot-bytes",
    "promote-within-slots",
    "connections-max",
    "key-bytes-max",
    "value-bytes-max",
    "pipeline-depth-max",
    "transaction-commands-max",
    "watched-keys-max",
    "command-bytes-max",
    "password",
    "cluster-secret-file",
    "insecure-peers",
    "auth-deadline-secs",
    "client-idle-timeout-secs",
];

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FileSettings {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    client_addr: Option<String>,
    peer_addr: Option<String>,
    http_addr: Option<String>,
    members: Option<FileMembers>,
    join: Option<String>,
    fsync: Option<Fsync>,
    tick_ms: Option<u64>,
    snapshot_entries: Option<u64>,
    snapshot_bytes: Option<u64>,
    promote_within_slots: Option<u64>,
    cluster_secret_file: Option<PathBuf>,
    insecure_peers: Option<bool>,
    #[serde(flatten)]
    limits: ClientLimits,
}

/// The settings once flags and file are merged and defaults filled in.
#[derive(Debug, PartialEq, Eq)]
struct Settings {
    id: u64,
    data_dir: PathBuf,
    client_addr: String,
    peer_addr: String,
    http_addr: String,
    /// Empty for a node that joins, or one whose data directory already
    /// keeps its membership and that was given no `--members`.
    members: BTreeMap<u64, String>,
    join: Vec<String>,
    fsync: Fsync,
    tick_ms: Option<u64>,
    snapshot: SnapshotPolicy,
    promote_within_slots: Option<u64>,
    cluster_secret_file: Option<PathBuf>,
    insecure_peers: bool,
    limits: ClientLimits,
}

/// Parses `1=IP:PORT,2=IP:PORT`.
pub fn parse_members(text: &str) -> Result<BTreeMap<u64, String>> {
    let mut members = BTreeMap::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((id, addr)) = entry.split_once('=') else {
            bail!("bad members entry '{entry}': expected ID=HOST:PORT");
        };
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("bad members entry '{entry}': the id is not a number"))?;
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            bail!("bad members entry '{entry}': expected ID=HOST:PORT");
        }
        if members.insert(id, addr.to_owned()).is_some() {
            bail!("member {id} is listed twice");
        }
    }
    if members.is_empty() {
        bail!("no members given");
    }
    Ok(members)
}

fn read_file(path: &Path) -> Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("bad config file {}", path.display()))?;
    if let Some(unknown) = table.keys().find(|k| !FILE_KEYS.contains(&k.as_str())) {
        bail!(
            "bad config file {}: unknown key '{unknown}' (known: {})",
            path.display(),
            FILE_KEYS.join(", ")
        );
    }
    toml::from_str(&text).with_context(|| format!("bad config file {}", path.display()))
}

fn port_plus(base: u16, id: u64, what: &str) -> Result<u16> {
    u16::try_from(id - 1)
        .ok()
        .and_then(|offset| base.checked_add(offset))
        .with_context(|| format!("no default {what} port for node {id}; give one"))
}

fn settings(args: &ServeArgs) -> Result<Settings> {
    let file = match &args.config {
        Some(path) => read_file(path)?,
        None => FileSettings::default(),
    };
    let Some(id) = args.id.or(file.id) else {
        bail!("--id is required (or `id` in the config file)");
    };
    if id == 0 {
        bail!("--id must be at least 1");
    }
    let join: Vec<String> = args
        .join
        .clone()
        .or(file.join)
        .map(|text| {
            text.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if args.join.is_some() && join.is_empty() {
        bail!("--join needs at least one HOST:PORT of a member's peer port");
    }
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from(format!("parliament-data/node-{id}")));
    let founded = data_dir.join("cluster").exists();
    let default_peer = || -> Result<String> {
        let port = port_plus(CLIENT_PORT + PEER_PORT_OFFSET, id, "peer")?;
        Ok(format!("127.0.0.1:{port}"))
    };
    if !join.is_empty() && (args.members.is_some() || file.members.is_some()) {
        bail!("give members to found a new cluster, or join to join a running one, not both");
    }
    let members = match (&args.members, file.members) {
        _ if !join.is_empty() => BTreeMap::new(),
        (Some(text), _) => parse_members(text).context("--members")?,
        (None, Some(FileMembers::List(text))) => {
            parse_members(&text).context("members in the config file")?
        }
        (None, Some(FileMembers::Table(table))) => {
            let text: Vec<String> = table.iter().map(|(k, v)| format!("{k}={v}")).collect();
            parse_members(&text.join(",")).context("members in the config file")?
        }
        (None, None) if founded => BTreeMap::new(),
        (None, None) => BTreeMap::from([(id, default_peer()?)]),
    };
    if !members.is_empty() && !members.contains_key(&id) {
        bail!("node {id} is not among the members");
    }
    let peer_addr = match args.peer_addr.clone().or(file.peer_addr) {
        Some(addr) => addr,
        None => match members.get(&id) {
            Some(own) => own.clone(),
            None => default_peer()?,
        },
    };
    let client_addr = match args.client_addr.clone().or(file.client_addr) {
        Some(addr) => addr,
        None => format!("127.0.0.1:{}", port_plus(CLIENT_PORT, id, "client")?),
    };
    let http_addr = match args.http_addr.clone().or(file.http_addr) {
        Some(addr) => addr,
        None => format!(
            "127.0.0.1:{}",
            port_plus(CLIENT_PORT + HTTP_PORT_OFFSET, id, "HTTP")?
        ),
    };
    Ok(Settings {
        id,
        data_dir,
        client_addr,
        peer_addr,
        http_addr,
        members,
        join,
        fsync: args.fsync.or(file.fsync).unwrap_or(Fsync::Always),
        tick_ms: args.tick_ms.or(file.tick_ms),
        snapshot: snapshot_policy(
            args.snapshot_entries.or(file.snapshot_entries),
            args.snapshot_bytes.or(file.snapshot_bytes),
        ),
        promote_within_slots: args.promote_within_slots.or(file.promote_within_slots),
        cluster_secret_file: args
            .cluster_secret_file
            .clone()
            .or(file.cluster_secret_file),
        insecure_peers: args.insecure_peers || file.insecure_peers.unwrap_or(false),
        limits: args.limits.clone().or(file.limits),
    })
}

/// The decoder's limits, from the command limits: what one request may make
/// the node buffer before any command looks at it. An argument may be up to
/// twice the largest key or value (so one just above a limit still gets the
/// command's own error, and the connection stays open); a request up to twice
/// the largest write the log takes, and never less than 16 MiB (a read of
/// many keys). Beyond these the request is refused from its header, before
/// its bytes arrive, and the connection is closed, as Redis does beyond
/// `proto-max-bulk-len`.
fn request_limits(
    key_bytes_max: usize,
    value_bytes_max: usize,
    command_bytes_max: usize,
) -> resp::Limits {
    let defaults = resp::Limits::default();
    let bulk = key_bytes_max
        .max(value_bytes_max)
        .saturating_mul(2)
        .min(defaults.bulk_bytes_max);
    let request = command_bytes_max
        .saturating_mul(2)
        .max(bulk)
        .max(16 << 20)
        .min(defaults.request_bytes_max);
    resp::Limits {
        bulk_bytes_max: bulk,
        request_bytes_max: request,
        ..defaults
    }
}

/// Reads the cluster secret, warning when others than its owner may read it.
fn load_secret(id: u64, path: &Path) -> Result<ClusterSecret> {
    let secret = ClusterSecret::load(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            warn!(
                id,
                file = %path.display(),
                "the cluster secret file may be read by other users; chmod 600 it"
            );
        }
    }
    Ok(secret)
}

/// The snapshot policy from the two settings: unset keeps the default, 0
/// turns that trigger off.
fn snapshot_policy(entries: Option<u64>, bytes: Option<u64>) -> SnapshotPolicy {
    let defaults = SnapshotPolicy::default();
    let limit = |setting: Option<u64>, default: u64| match setting {
        None => default,
        Some(0) => u64::MAX,
        Some(n) => n,
    };
    SnapshotPolicy {
        entries_max: limit(entries, defaults.entries_max),
        bytes_max: limit(bytes, defaults.bytes_max),
    }
}

/// Sets up logging: `RUST_LOG` if set, else `info`, to standard error.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Fails only if a subscriber is already set, which is then kept.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn bind(what: &str, addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the {what} address {addr}"))
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    init_logging();
    let settings = settings(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(settings, args.rejoin, args.stop_on_stdin_eof))
}

async fn serve(settings: Settings, rejoin: bool, stop_on_stdin_eof: bool) -> Result<ExitCode> {
    let id = settings.id;
    let client = bind("client", &settings.client_addr).await?;
    let peer = bind("peer", &settings.peer_addr).await?;
    let http = bind("HTTP", &settings.http_addr).await?;
    let client_addr = client.local_addr().context("client listener")?;
    let http_addr = http.local_addr().context("HTTP listener")?;

    let mut config = NodeConfig::new(id, settings.data_dir.clone(), settings.members);
    config.join = settings.join;
    config.client_addr = client_addr.to_string();
    config.http_addr = http_addr.to_string();
    config.fsync = match settings.fsync {
        Fsync::Always => FsyncPolicy::Always,
        Fsync::Never => {
            warn!(
                id,
                "--fsync never: a machine crash may lose acknowledged writes"
            );
            FsyncPolicy::Never
        }
    };
    if let Some(tick_ms) = settings.tick_ms {
        config.tick_ms = tick_ms;
    }
    config.snapshot = settings.snapshot;
    if let Some(slots) = settings.promote_within_slots {
        config.promote_within_slots = slots;
    }
    if config.snapshot.entries_max == u64::MAX && config.snapshot.bytes_max == u64::MAX {
        warn!(
            id,
            "snapshots are off (--snapshot-entries 0 --snapshot-bytes 0): the log grows without bound"
        );
    }
    config.rejoin = rejoin;
    config.insecure_peers = settings.insecure_peers;
    if let Some(path) = &settings.cluster_secret_file {
        config.transport.secret = Some(load_secret(id, path)?);
    }
    let server_config = settings.limits.apply(id, &mut config);
    if server_config.value_bytes_max > config.command_bytes_max {
        warn!(
            id,
            value_bytes_max = server_config.value_bytes_max,
            command_bytes_max = config.command_bytes_max,
            "values larger than the command limit will be refused by the node"
        );
    }
    // A joining node may wait long for an operator to add it: it still
    // stops on a signal, or when standard input closes.
    let stdin_closed_early = async {
        if stop_on_stdin_eof {
            stdin_eof().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let mut node = tokio::select! {
        started = Node::start(config, peer) => {
            started.with_context(|| format!("cannot start node {id}"))?
        }
        signal = shutdown_signal() => {
            info!(id, signal, "stopping before the node started");
            return Ok(ExitCode::SUCCESS);
        }
        () = stdin_closed_early => {
            info!(id, "standard input closed before the node started; stopping");
            return Ok(ExitCode::SUCCESS);
        }
    };
    info!(
        id,
        client = %client_addr,
        peer = %settings.peer_addr,
        http = %http_addr,
        data_dir = %settings.data_dir.display(),
        "serving"
    );
    // The client and HTTP servers run until one fails or the node stops;
    // dropping the set ends them and every connection they accepted.
    // Their log lines carry the node id, like the node's own.
    let span = tracing::info_span!("node", id);
    let mut servers = tokio::task::JoinSet::new();
    let handle = node.handle();
    servers.spawn(
        async move {
            let result = server::serve_clients(client, handle, server_config).await;
            ("client", result)
        }
        .instrument(span.clone()),
    );
    let handle = node.handle();
    servers.spawn(async move { ("HTTP", http::serve_http(http, handle).await) }.instrument(span));

    let stdin_closed = async {
        if stop_on_stdin_eof {
            stdin_eof().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let outcome = tokio::select! {
        signal = shutdown_signal() => {
            info!(id, signal, "stopping");
            Ok(ExitCode::SUCCESS)
        }
        () = stdin_closed => {
            info!(id, "standard input closed; stopping");
            Ok(ExitCode::SUCCESS)
        }
        failure = node.failed() => {
            error!(id, error = %failure, "the node stopped");
            Err(anyhow::Error::new(failure).context(format!("node {id} stopped")))
        }
        Some(ended) = servers.join_next() => {
            let what = match ended {
                Ok((what, Ok(()))) => anyhow::anyhow!("the {what} server stopped"),
                Ok((what, Err(e))) => anyhow::Error::new(e).context(format!("the {what} server failed")),
                Err(e) => anyhow::Error::new(e).context("a server task failed"),
            };
            error!(id, error = %format!("{what:#}"), "stopping");
            Err(what)
        }
    };
    servers.shutdown().await;
    node.stop().await;
    outcome
}

/// Resolves on SIGINT or SIGTERM, naming it.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// Resolves when standard input reaches its end (the parent died or closed
/// the pipe).
async fn stdin_eof() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("stdin-watch".to_owned())
        .spawn(move || {
            use std::io::Read;
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 256];
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(());
        });
    if spawned.is_err() {
        warn!("cannot watch standard input");
        std::future::pending::<()>().await;
    }
    let _ = rx.await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a test fails loudly, which is its job
mod tests {

    #[test]
    fn request_limits_follow_the_command_limits() {
        // The defaults: keys of 64 KiB, values and writes of 1 MiB.
        let l = request_limits(64 << 10, 1 << 20, 1 << 20);
        assert_eq!(l.bulk_bytes_max, 2 << 20);
        assert_eq!(l.request_bytes_max, 16 << 20);
        // Large values raise both, up to the decoder's own ceilings.
        let l = request_limits(64 << 10, 512 << 20, 512 << 20);
        assert_eq!(l.bulk_bytes_max, resp::Limits::default().bulk_bytes_max);
        assert_eq!(
            l.request_bytes_max,
            resp::Limits::default().request_bytes_max
        );
        let l = request_limits(1 << 20, 4 << 20, 16 << 20);
        assert_eq!((l.bulk_bytes_max, l.request_bytes_max), (8 << 20, 32 << 20));
    }
    use super::*;

    #[test]
    fn members_parse_and_bad_entries_say_why() {
        let m = parse_members("1=127.0.0.1:7001, 2=localhost:7002").unwrap();
        assert_eq!(m.get(&2).map(String::as_str), Some("localhost:7002"));
        for bad in ["1", "x=1.2.3.4:5", "1=1.2.3.4", "1=a:1,1=b:2", ""] {
            assert!(parse_members(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_follow_the_id() {
        let dir = std::env::temp_dir().join(format!("parliament-serve-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "id = 2\ntick-ms = 5\nfsync = \"never\"\n[members]\n1 = \"127.0.0.1:7001\"\n2 = \"127.0.0.1:7002\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            tick_ms: Some(7),
            ..ServeArgs::default()
        };
        let s = settings(&args).unwrap();
        assert_eq!(s.id, 2);
        assert_eq!(s.tick_ms, Some(7));
        assert_eq!(s.fsync, Fsync::Never);
        assert_eq!(s.peer_addr, "127.0.0.1:7002");
        assert_eq!(s.client_addr, "127.0.0.1:6380");
        assert_eq!(s.http_addr, "127.0.0.1:8380");
        assert_eq!(s.data_dir, PathBuf::from("parliament-data/node-2"));
        assert_eq!(s.snapshot, SnapshotPolicy::default());

        std::fs::write(
            &path,
            "id = 1\nconnections-max = 5\npassword = \"s\"\ncommand-bytes-max = 4096\n",
        )
        .unwrap();
        let s = settings(&args).unwrap();
        let mut node = NodeConfig::new(1, PathBuf::new(), s.members.clone());
        let server = s.limits.apply(1, &mut node);
        assert_eq!(server.connections_max, 5);
        assert_eq!(server.password.as_deref(), Some("s"));
        assert_eq!(node.command_bytes_max, 4096);
        assert_eq!(
            server.value_bytes_max, 4096,
            "values follow the command limit"
        );

        std::fs::write(&path, "id = 1\nsnapshot-entries = 50\nsnapshot-bytes = 0\n").unwrap();
        let s = settings(&args).unwrap();
        assert_eq!(s.snapshot.entries_max, 50);
        assert_eq!(s.snapshot.bytes_max, u64::MAX, "0 turns the trigger off");
        let flagged = ServeArgs {
            config: Some(path.clone()),
            snapshot_entries: Some(70),
            ..ServeArgs::default()
        };
        assert_eq!(settings(&flagged).unwrap().snapshot.entries_max, 70);

        std::fs::write(&path, "id = 1\nbogus = 3\n").unwrap();
        let err = settings(&args).unwrap_err();
        assert!(format!("{err:#}").contains("bogus"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_id_outside_the_members_is_refused() {
        let args = ServeArgs {
            id: Some(4),
            members: Some("1=127.0.0.1:7001".to_owned()),
            ..ServeArgs::default()
        };
        assert!(
            settings(&args)
                .unwrap_err()
                .to_string()
                .contains("not among")
        );
    }
}
