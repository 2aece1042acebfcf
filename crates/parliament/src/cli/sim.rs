//! `parliament sim ...`: the deterministic simulator.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use testkit::bugs::{SynodBug, Variant};
use testkit::sim::kv::{self, KvBug, KvSimConfig};
use testkit::sim::synod::{self, SynodSimConfig};

#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// Single-decree Paxos: proposers, acceptors and learners under faults.
    Synod(SynodArgs),
    /// The replicated key-value database: replicas, disks, clocks and clients
    /// under faults, with every client history checked for linearizability.
    Kv(KvArgs),
}

#[derive(Args, Debug)]
pub struct KvArgs {
    /// How many seeds to run (default 1000, or 1 when --seed is given).
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed. Alone, it replays that one run.
    #[arg(long)]
    seed: Option<u64>,
    /// Replicas.
    #[arg(long, default_value_t = 3, value_parser = parse_nodes)]
    nodes: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1000))]
    clients: u16,
    /// Operations per run, over all clients.
    #[arg(long, default_value_t = 200)]
    ops: usize,
    /// Keys the clients use.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1000))]
    keys: u16,
    /// Probability that a message is lost during the chaos.
    #[arg(long, default_value_t = 0.1, value_parser = parse_probability)]
    loss: f64,
    /// Probability that a message is delivered twice during the chaos.
    #[arg(long, default_value_t = 0.05, value_parser = parse_probability)]
    dup: f64,
    /// No partitions during the chaos.
    #[arg(long)]
    no_partitions: bool,
    /// No crashes during the chaos.
    #[arg(long)]
    no_crashes: bool,
    /// Largest clock drift rate of any node, parts per million. The default,
    /// 40%, is far beyond real clocks so that lease mistakes show.
    #[arg(long, default_value_t = 400_000, value_parser = clap::value_parser!(u64).range(0..500_000))]
    drift_ppm: u64,
    /// Length of the chaos phase, in simulated milliseconds.
    #[arg(long, default_value_t = 3_000)]
    chaos_ms: u64,
    /// Probability that a crash damages the node's disk (it then rejoins as
    /// a learner); at most one node at a time.
    #[arg(long, default_value_t = 0.2, value_parser = parse_probability)]
    corrupt: f64,
    /// Probability that a crash tears the write in progress.
    #[arg(long, default_value_t = 0.5, value_parser = parse_probability)]
    torn: f64,
    /// Never snapshot or compact the logs.
    #[arg(long)]
    no_snapshots: bool,
    /// Keep the membership fixed (by default members are added, promoted
    /// and removed during the chaos, the leader included).
    #[arg(long)]
    no_reconfigure: bool,
    /// Nodes that may join beside the founders, each under a new id.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=16))]
    spares: u16,
    /// Stop at the first seed with a violation (to show a broken variant
    /// is caught without running every seed).
    #[arg(long)]
    stop_at_first: bool,
    /// Run a deliberately broken variant ("list" names them); a caught bug
    /// exits 1.
    #[arg(long)]
    bug: Option<String>,
    /// Write the client history of the (last) run as JSON lines.
    #[arg(long)]
    history: Option<std::path::PathBuf>,
    /// Write every protocol event of the (last) run as JSON lines.
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
}

fn parse_nodes(s: &str) -> Result<usize, String> {
    match s {
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("'{s}' nodes: use 3 or 5")),
    }
}

#[derive(Args, Debug)]
pub struct SynodArgs {
    /// How many seeds to run (default 1000, or 1 when --seed is given).
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed. Alone, it replays that one run and prints its trace.
    #[arg(long)]
    seed: Option<u64>,
    /// Acceptors.
    #[arg(long, default_value_t = 3, value_parser = parse_acceptors)]
    acceptors: usize,
    /// Proposers, each with its own value.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    proposers: u16,
    /// Probability that a message is lost.
    #[arg(long, default_value_t = 0.1, value_parser = parse_probability)]
    loss: f64,
    /// Probability that a message is delivered twice.
    #[arg(long, default_value_t = 0.05, value_parser = parse_probability)]
    dup: f64,
    /// Probability that each node crashes (and later restarts) during a run.
    #[arg(long, default_value_t = 0.2, value_parser = parse_probability)]
    crash: f64,
    /// Run a deliberately broken variant ("list" names them); a caught bug
    /// exits 1.
    #[arg(long)]
    bug: Option<String>,
    /// Print every event of every run (implied by --seed alone).
    #[arg(long)]
    trace: bool,
}

fn parse_acceptors(s: &str) -> Result<usize, String> {
    match s {
        "3" | "5" | "7" => Ok(s.parse().map_err(|_| "unreachable")?),
        _ => Err(format!("'{s}' acceptors: use 3, 5 or 7")),
    }
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number between 0 and 1"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not between 0 and 1"))
    }
}

pub fn run(command: SimCommand) -> Result<ExitCode> {
    match command {
        SimCommand::Synod(args) => sim_synod(args),
        SimCommand::Kv(args) => sim_kv(args),
    }
}

fn progress(count: u64) -> ProgressBar {
    let bar = if count > 1 {
        ProgressBar::new(count)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} seeds, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn sim_kv(args: KvArgs) -> Result<ExitCode> {
    let bug = match super::choose_bug::<KvBug>(args.bug.as_deref())? {
        super::BugChoice::Listed => return Ok(ExitCode::SUCCESS),
        choice => choice.bug().copied(),
    };
    let config = KvSimConfig {
        nodes: args.nodes,
        clients: usize::from(args.clients),
        ops: args.ops,
        keys: usize::from(args.keys),
        loss: args.loss,
        dup: args.dup,
        partitions: !args.no_partitions,
        crashes: !args.no_crashes,
        drift_ppm: args.drift_ppm,
        chaos_ms: args.chaos_ms,
        corrupt: args.corrupt,
        torn: args.torn,
        snapshots: !args.no_snapshots,
        reconfigure: !args.no_reconfigure,
        spares: usize::from(args.spares),
        bug,
    };
    let first = args.seed.unwrap_or(0);
    let count = args
        .seeds
        .unwrap_or(if args.seed.is_some() { 1 } else { 1000 });
    let replay = |seed: u64| {
        let mut cmd = format!(
            "parliament sim kv --seed {seed} --nodes {} --clients {} --ops {} --keys {} --loss {} --dup {} --drift-ppm {} --chaos-ms {} --corrupt {} --torn {}",
            config.nodes,
            config.clients,
            config.ops,
            config.keys,
            config.loss,
            config.dup,
            config.drift_ppm,
            config.chaos_ms,
            config.corrupt,
            config.torn
        );
        if !config.snapshots {
            cmd.push_str(" --no-snapshots");
        }
        if !config.partitions {
            cmd.push_str(" --no-partitions");
        }
        if !config.crashes {
            cmd.push_str(" --no-crashes");
        }
        if !config.reconfigure {
            cmd.push_str(" --no-reconfigure");
        }
        if config.spares != 2 {
            cmd.push_str(&format!(" --spares {}", config.spares));
        }
        if let Some(b) = bug {
            cmd.push_str(&format!(" --bug {}", b.name()));
        }
        cmd
    };
    let keep_trace = args.trace.is_some();
    let bar = progress(count);
    let started = Instant::now();
    let (mut ops, mut acked, mut violations, mut undecided) = (0usize, 0usize, 0u64, 0u64);
    let mut first_violation = None;
    let mut first_undecided = None;
    let mut last = None;
    let mut disk = kv::DiskEvents::default();
    let mut ran = 0u64;
    for seed in first..first.saturating_add(count) {
        ran += 1;
        // A panic (a broken invariant) is a failure of this seed like any
        // other: report it with the command that replays it.
        let outcome = match std::panic::catch_unwind(|| kv::run(&config, seed, keep_trace)) {
            Ok(outcome) => outcome,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_else(|| "unknown panic".to_owned());
                bar.suspend(|| {
                    println!("seed {seed}: panicked: {why}");
                    println!("  replay: {}", replay(seed));
                });
                return Ok(ExitCode::FAILURE);
            }
        };
        bar.inc(1);
        ops += outcome.ops;
        acked += outcome.acked;
        disk.add(&outcome.disk);
        if !outcome.undecided.is_empty() {
            undecided += 1;
            first_undecided.get_or_insert(seed);
        }
        if let Some(why) = &outcome.violation {
            violations += 1;
            if first_violation.is_none() {
                first_violation = Some(seed);
                bar.suspend(|| {
                    println!("seed {seed}: {why}");
                    println!("  replay: {}", replay(seed));
                });
            }
        }
        last = Some(outcome);
        if args.stop_at_first && first_violation.is_some() {
            break;
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(outcome) = &last {
        if let Some(path) = &args.history {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            outcome
                .history
                .to_jsonl(std::io::BufWriter::new(file))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if let Some(path) = &args.trace {
            write_trace(path, outcome.trace.lines().unwrap_or_default())?;
        }
    }
    println!(
        "{ran} seeds, {ops} operations, {acked} acknowledged, {violations} with a violation, {undecided} undecided, {:.1} seeds/s",
        ran as f64 / elapsed.max(1e-9)
    );
    println!(
        "disks: {} torn writes, {} crashes on a sync or snapshot boundary, {} damaged ({} put back from an old copy) and {} rejoined, {} snapshots saved, {} installed from a peer",
        disk.torn_writes,
        disk.boundary_crashes,
        disk.damaged,
        disk.restored,
        disk.rejoined,
        disk.snapshots,
        disk.installs
    );
    println!(
        "membership: {} changes proposed, {} chosen, {} leadership hand-overs started",
        disk.changes_proposed, disk.changes_chosen, disk.transfers
    );
    if let Some(seed) = first_violation {
        println!(
            "first violation at seed {seed} (after {} seeds); replay: {}",
            seed - first + 1,
            replay(seed)
        );
        return Ok(ExitCode::FAILURE);
    }
    if let Some(seed) = first_undecided {
        // Not proved linearizable, not caught either: say so, distinctly.
        println!(
            "the linearizability search ran out of budget on {undecided} seeds (first: {seed}); use fewer clients or more keys; replay: {}",
            replay(seed)
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes trace lines as JSON lines: `{"time_us": .., "event": ".."}`.
fn write_trace(path: &std::path::Path, lines: &[String]) -> Result<()> {
    use std::io::Write;
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for line in lines {
        let (time, event) = line.split_once("ms ").unwrap_or(("", line));
        let micros = time
            .trim()
            .replace('.', "")
            .parse::<u64>()
            .unwrap_or_default();
        let object = serde_json::json!({ "time_us": micros, "event": event });
        writeln!(out, "{object}").with_context(|| format!("cannot write {}", path.display()))?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn sim_synod(args: SynodArgs) -> Result<ExitCode> {
    let bug = match super::choose_bug::<SynodBug>(args.bug.as_deref())? {
        super::BugChoice::Listed => return Ok(ExitCode::SUCCESS),
        choice => choice.bug().copied(),
    };
    let config = SynodSimConfig {
        acceptors: args.acceptors,
        proposers: usize::from(args.proposers),
        loss: args.loss,
        dup: args.dup,
        crash: args.crash,
        bug,
        ..SynodSimConfig::default()
    };
    let first = args.seed.unwrap_or(0);
    let count = args
        .seeds
        .unwrap_or(if args.seed.is_some() { 1 } else { 1000 });
    let show_trace = args.trace || (args.seed.is_some() && args.seeds.is_none());
    let replay = |seed: u64| {
        let mut cmd = format!(
            "parliament sim synod --seed {seed} --acceptors {} --proposers {} --loss {} --dup {} --crash {}",
            config.acceptors, config.proposers, config.loss, config.dup, config.crash
        );
        if let Some(b) = bug {
            cmd.push_str(&format!(" --bug {}", b.name()));
        }
        cmd
    };

    let bar = progress(count);
    let started = Instant::now();
    let (mut decided, mut violations, mut messages_to_choose) = (0u64, 0u64, 0u64);
    let mut first_violation = None;
    for seed in first..first.saturating_add(count) {
        let outcome = synod::run(&config, seed, show_trace);
        bar.inc(1);
        if let Some(lines) = outcome.trace.lines() {
            bar.suspend(|| {
                println!("seed {seed}:");
                for line in lines {
                    println!("  {line}");
                }
                println!("  trace digest {:016x}", outcome.trace.digest());
            });
        }
        if let Some(n) = outcome.messages_to_choose {
            decided += 1;
            messages_to_choose += n;
        }
        if let Some(why) = &outcome.violation {
            violations += 1;
            if first_violation.is_none() {
                first_violation = Some(seed);
                bar.suspend(|| {
                    println!("seed {seed}: {why}");
                    println!("  replay: {}", replay(seed));
                });
            }
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{count} runs, {violations} with a safety violation, {:.1}% decided, {} messages to decide on average, {:.0} runs/s",
        100.0 * decided as f64 / count.max(1) as f64,
        if decided > 0 {
            format!("{:.1}", messages_to_choose as f64 / decided as f64)
        } else {
            "-".into()
        },
        count as f64 / elapsed.max(1e-9)
    );
    if let Some(seed) = first_violation {
        println!(
            "first violation at seed {seed} (after {} seeds); replay: {}",
            seed - first + 1,
            replay(seed)
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
