//! `parliament cluster`: a local cluster of `serve` processes for trying
//! things out.
//!
//! Node `i` (from 1) listens on 127.0.0.1 with client port `PORT + i - 1`,
//! peer port `PORT + 1000 + i - 1` and HTTP port `PORT + 2000 + i - 1`, and
//! keeps its data in `DIR/node-i`, so running the command again finds the
//! same data.
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
    /// Client port of node 1; peer ports start 1000 above, HTTP ports 2000 above.
    #[arg(long, default_value_t = CLIENT_PORT)]
    port: u16,
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

fn plan(args: &ClusterArgs) -> Result<Vec<Plan>> {
    (1..=args.nodes).map(|i| plan_node(args, i)).collect()
}

/// Node `i`'s addresses and directory.
fn plan_node(args: &ClusterArgs, i: u16) -> Result<Plan> {
    let last = u32::from(args.port) + u32::from(HTTP_PORT_OFFSET) + u32::from(i) - 1;
    if last > u32::from(u16::MAX) {
        bail!(
            "--port {} leaves no room for node {i}'s HTTP port (up to {last})",
            args.port
        );
    }
    let port = u32::from(args.port) + u32::from(i) - 1;
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
    let plans = plan(&args)?;
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
    let others = plan(args)?;
    if others.iter().any(|p| p.id == u64::from(id)) {
        bail!(
            "node {id} is one of the first --nodes {}; pick an id above them",
            args.nodes
        );
    }
    let me = plan_node(args, id)?;
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
            "no member of the cluster on ports {}.. answered; start it first with \
             `parliament cluster --nodes {}`",
            args.port,
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
