//! `parliament cluster`: a local cluster of `serve` processes for trying
//! things out.
//!
//! Node `i` (from 1) listens on 127.0.0.1 with client port `PORT + i - 1`,
//! peer port `PORT + 1000 + i - 1` and HTTP port `PORT + 2000 + i - 1`, and
//! keeps its data in `DIR/node-i`, so running the command again finds the
//! same data.
//!
//! Without `--port`, a new cluster takes the first base from 6379 up (in
//! steps of ten) whose ports are all free, says which ones were taken and by
//! what, and records the base in `DIR/ports`: the members keep each other's
//! addresses, so later runs over the same data use the same ports.
//!
//! `--add ID` grows a cluster already running with the same settings: it
//! starts node `ID` (on the same port scheme) joining nodes 1 to
//! `--nodes`, asks them to add it (`PAXOS MEMBER ADD`), and runs it until
//! Ctrl-C. The new member is promoted to voter once it has caught up. Run
//! the same command again to start it again later.
//!
//! The nodes never outlive this process: each child reads its standard
//! input, a pipe from here, and stops when it closes, which the operating
//! system does however this process ends (even on `kill -9`). On Ctrl-C or
//! SIGTERM the pipes are closed first so the nodes stop cleanly; any still
//! running after a few seconds are killed.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::serve::{CLIENT_PORT, Fsync, HTTP_PORT_OFFSET, PEER_PORT_OFFSET, ServeArgs};

/// How long stopping nodes get to exit on their own before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=99))]
    nodes: u16,
    /// Directory for the nodes' data (node i in DIR/node-i).
    #[arg(long, default_value = "parliament-data")]
    dir: PathBuf,
    /// Client port of node 1; peer ports start 1000 above, HTTP ports 2000
    /// above. Default: 6379, or the first free base above it for a new
    /// cluster, or the one `DIR/ports` records for an existing one.
    #[arg(long)]
    port: Option<u16>,
    /// Passed to every node (`never` is unsafe; for benchmarks).
    #[arg(long, value_enum)]
    fsync: Option<Fsync>,
    /// Passed to every node.
    #[arg(long)]
    tick_ms: Option<u64>,
    /// Add node ID to the cluster already running with these settings
    /// (started by another `parliament cluster`), and run it here.
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u16).range(1..=999))]
    add: Option<u16>,
}

/// One node's addresses.
struct Plan {
    id: u64,
    client: String,
    peer: String,
    http: String,
    data_dir: PathBuf,
}

impl Plan {
    /// Starts this node as a child `serve` process with `membership`
    /// (`--members` or `--join` and its value).
    fn spawn(
        &self,
        exe: &std::path::Path,
        membership: (&str, String),
        args: &ClusterArgs,
    ) -> Result<(u64, Child, Option<ChildStdin>)> {
        let serve = ServeArgs::for_cluster(
            self.id,
            self.data_dir.clone(),
            self.client.clone(),
            self.peer.clone(),
            self.http.clone(),
            membership,
            args.fsync,
            args.tick_ms,
        );
        let mut child = Command::new(exe)
            .args(&serve)
            .stdin(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start node {}", self.id))?;
        let stdin = child.stdin.take();
        Ok((self.id, child, stdin))
    }
}

/// Running children; dropping this stops them all, whatever the exit path.
struct Children {
    running: Vec<(u64, Child, Option<ChildStdin>)>,
}

impl Children {
    /// Closes every child's standard input, waits a little, kills the rest.
    fn stop(&mut self) {
        for (_, _, stdin) in &mut self.running {
            stdin.take();
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (id, child, _) in &mut self.running {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        eprintln!("node {id} did not stop in time; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        self.running.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

fn plan(args: &ClusterArgs, base: u16) -> Result<Vec<Plan>> {
    (1..=args.nodes).map(|i| plan_node(args, base, i)).collect()
}

/// Where the base port of the cluster in `dir` is recorded.
fn ports_file(dir: &std::path::Path) -> PathBuf {
    dir.join("ports")
}

/// The base port recorded for the cluster in `dir`, if one is.
fn recorded_base(dir: &std::path::Path) -> Result<Option<u16>> {
    let path = ports_file(dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("{} should hold a port number", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Every port of `nodes` nodes from `base`, with what it is for.
fn ports_of(base: u16, nodes: u16) -> Vec<(u16, String)> {
    let mut ports = Vec::new();
    for i in 1..=nodes {
        for (offset, what) in [
            (0, "client"),
            (PEER_PORT_OFFSET, "peer"),
            (HTTP_PORT_OFFSET, "HTTP"),
        ] {
            let port = u32::from(base) + u32::from(offset) + u32::from(i) - 1;
            if let Ok(port) = u16::try_from(port) {
                ports.push((port, format!("node {i}'s {what} port")));
            }
        }
    }
    ports
}

/// The ports of `nodes` nodes from `base` that cannot be bound, each with
/// what it is for and what holds it.
fn taken_ports(base: u16, nodes: u16) -> Vec<String> {
    ports_of(base, nodes)
        .into_iter()
        .filter(|(port, _)| std::net::TcpListener::bind(("127.0.0.1", *port)).is_err())
        .map(|(port, what)| format!("port {port} ({what}) is taken by {}", port_owner(port)))
        .collect()
}

/// Which program listens on `port`, as far as this machine tells: the
/// listening socket in `/proc/net/tcp*` and the process holding it.
fn port_owner(port: u16) -> String {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local = fields.get(1)?;
                let listening = fields.get(3) == Some(&"0A");
                let hex_port = local.rsplit(':').next()?;
                let matches = u16::from_str_radix(hex_port, 16).ok() == Some(port);
                (listening && matches).then(|| fields.get(9).map(|s| s.to_string()))?
            })
        });
    let owner = inode.and_then(|inode| {
        let target = format!("socket:[{inode}]");
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|proc_dir| {
                let pid: u32 = proc_dir.file_name().to_str()?.parse().ok()?;
                let fds = std::fs::read_dir(proc_dir.path().join("fd")).ok()?;
                let holds = fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.to_str() == Some(&target))
                });
                if !holds {
                    return None;
                }
                let name = std::fs::read_to_string(proc_dir.path().join("comm")).ok()?;
                Some(format!("{} (pid {pid})", name.trim()))
            })
    });
    owner.unwrap_or_else(|| "another program".to_owned())
}

/// The base port: `--port`, else the one recorded for the cluster in
/// `--dir`, else the first free one from the default up (a new cluster).
/// Every port must be free, or this says which is not, what holds it, and
/// what to do.
fn choose_base(args: &ClusterArgs) -> Result<u16> {
    let (base, why) = match (args.port, recorded_base(&args.dir)?) {
        (Some(port), _) => (port, "pick another base with --port"),
        (None, Some(port)) => (
            port,
            "the cluster in this directory was started on these ports and its members keep \
             each other's addresses: stop what holds them, or use another --dir",
        ),
        (None, None) => {
            let mut base = CLIENT_PORT;
            for _ in 0..50 {
                let taken = taken_ports(base, args.nodes);
                if taken.is_empty() {
                    if base != CLIENT_PORT {
                        let first = taken_ports(CLIENT_PORT, args.nodes);
                        println!(
                            "{}; using ports from {base} instead (--port picks the base)",
                            first.join("; ")
                        );
                    }
                    return Ok(base);
                }
                base = base.saturating_add(10);
            }
            bail!(
                "no free ports for {} nodes from {CLIENT_PORT} up; give --port",
                args.nodes
            );
        }
    };
    let taken = taken_ports(base, args.nodes);
    if !taken.is_empty() {
        bail!("{}; {why}", taken.join("; "));
    }
    Ok(base)
}

/// Node `i`'s addresses and directory.
fn plan_node(args: &ClusterArgs, base: u16, i: u16) -> Result<Plan> {
    let last = u32::from(base) + u32::from(HTTP_PORT_OFFSET) + u32::from(i) - 1;
    if last > u32::from(u16::MAX) {
        bail!("--port {base} leaves no room for node {i}'s HTTP port (up to {last})");
    }
    let port = u32::from(base) + u32::from(i) - 1;
    Ok(Plan {
        id: u64::from(i),
        client: format!("127.0.0.1:{port}"),
        peer: format!("127.0.0.1:{}", port + u32::from(PEER_PORT_OFFSET)),
        http: format!("127.0.0.1:{}", port + u32::from(HTTP_PORT_OFFSET)),
        data_dir: args.dir.join(format!("node-{i}")),
    })
}

pub fn run(args: ClusterArgs) -> Result<ExitCode> {
    if let Some(id) = args.add {
        return add(&args, id);
    }
    let base = choose_base(&args)?;
    let plans = plan(&args, base)?;
    std::fs::create_dir_all(&args.dir)
        .and_then(|()| std::fs::write(ports_file(&args.dir), format!("{base}\n")))
        .with_context(|| format!("cannot record the ports in {}", args.dir.display()))?;
    let exe = std::env::current_exe().context("cannot find this program's executable")?;
    let members: Vec<String> = plans
        .iter()
        .map(|p| format!("{}={}", p.id, p.peer))
        .collect();
    let members = members.join(",");

    let mut children = Children {
        running: Vec::new(),
    };
    for p in &plans {
        children
            .running
            .push(p.spawn(&exe, ("--members", members.clone()), &args)?);
    }

    println!(
        "parliament: {} nodes, data in {}",
        plans.len(),
        args.dir.display()
    );
    for p in &plans {
        println!(
            "  node {}: client {}  peer {}  http {}",
            p.id, p.client, p.peer, p.http
        );
    }
    if let Some(first) = plans.first() {
        println!(
            "connect:  redis-cli -p {}",
            first.client.rsplit(':').next().unwrap_or_default()
        );
        println!("status:   parliament status --http {}", first.http);
    }
    run_until_stopped(children)
}

/// Runs until Ctrl-C, SIGTERM or every child exits, then stops them all.
fn run_until_stopped(mut children: Children) -> Result<ExitCode> {
    println!("stop:     Ctrl-C");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(watch(&mut children));
    children.stop();
    code
}

/// `--add ID`: starts node `id` joining the running cluster, asks the
/// cluster to add it, and runs it until Ctrl-C.
fn add(args: &ClusterArgs, id: u16) -> Result<ExitCode> {
    // The running cluster's ports: given, or recorded where it keeps its data.
    let base = match args.port {
        Some(port) => port,
        None => recorded_base(&args.dir)?.unwrap_or(CLIENT_PORT),
    };
    let others = plan(args, base)?;
    if others.iter().any(|p| p.id == u64::from(id)) {
        bail!(
            "node {id} is one of the first --nodes {}; pick an id above them",
            args.nodes
        );
    }
    let me = plan_node(args, base, id)?;
    let exe = std::env::current_exe().context("cannot find this program's executable")?;
    let seeds: Vec<String> = others.iter().map(|p| p.peer.clone()).collect();
    let mut children = Children {
        running: vec![me.spawn(&exe, ("--join", seeds.join(",")), args)?],
    };
    println!(
        "  node {}: client {}  peer {}  http {}  (joining)",
        me.id, me.client, me.peer, me.http
    );
    let id_text = id.to_string();
    let request = ["PAXOS", "MEMBER", "ADD", &id_text, &me.peer, &me.client];
    let mut added = false;
    'rounds: for _ in 0..10 {
        for p in &others {
            let target = super::member::Target::at(&p.client);
            match super::member::call(&target, &request) {
                Ok(resp::Reply::Simple(_)) => {
                    println!("node {id} added; it becomes a voter once it has caught up");
                    added = true;
                    break 'rounds;
                }
                Ok(resp::Reply::Error(e)) if e.contains("already a member") => {
                    println!("node {id} is a member already");
                    added = true;
                    break 'rounds;
                }
                // No leader for a moment, or a change in progress: ask
                // again.
                Ok(resp::Reply::Error(e))
                    if e.starts_with("CLUSTERDOWN")
                        || e.starts_with("TRYAGAIN")
                        || e.contains("in progress") => {}
                Ok(resp::Reply::Error(e)) => {
                    children.stop();
                    bail!("node {} refused to add node {id}: {e}", p.id);
                }
                Ok(_) | Err(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if !added {
        children.stop();
        bail!(
            "no member of the cluster on ports {base}.. answered; start it first with \
             `parliament cluster --nodes {}`",
            args.nodes
        );
    }
    run_until_stopped(children)
}

/// Waits for a signal, reporting children that die meanwhile.
async fn watch(children: &mut Children) -> Result<ExitCode> {
    let signal = super::serve::shutdown_signal();
    tokio::pin!(signal);
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    let mut alive = children.running.len();
    let mut reported = vec![false; children.running.len()];
    loop {
        tokio::select! {
            name = &mut signal => {
                println!("{name}: stopping the nodes");
                return Ok(ExitCode::SUCCESS);
            }
            _ = poll.tick() => {
                for (i, (id, child, _)) in children.running.iter_mut().enumerate() {
                    if reported[i] {
                        continue;
                    }
                    if let Ok(Some(status)) = child.try_wait() {
                        eprintln!("node {id} exited unexpectedly ({status})");
                        reported[i] = true;
                        alive -= 1;
                    }
                }
                if alive == 0 {
                    bail!("every node has exited");
                }
            }
        }
    }
}
