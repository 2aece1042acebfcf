//! `parliament model ...`: exhaustive model checking.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use testkit::bugs::{SynodBug, Variant};
use testkit::model::replica::{ReplicaModel, Scenario, Start};
use testkit::model::synod::SynodModel;
use testkit::model::{Expectation, Model, Options, Report, explore};
use testkit::sim::kv::KvBug;

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Single-decree Paxos: 3 acceptors, some proposers, one learner.
    Synod(SynodArgs),
    /// Multi-Paxos: the real replica, 3 of them, with their hosts, disks,
    /// clocks and clients. Flags left out take the defaults, or with
    /// `--bug` the configuration in which that variant shows.
    Replica(ReplicaArgs),
}

#[derive(Args, Debug)]
pub struct ReplicaArgs {
    /// Founding voters.
    #[arg(long, value_parser = clap::value_parser!(u8).range(3..=5))]
    replicas: Option<u8>,
    /// Global clock ticks in a run.
    #[arg(long)]
    ticks: Option<u8>,
    /// Single-replica clock ticks in a run (clock drift).
    #[arg(long)]
    skew: Option<u8>,
    /// Every clock but the first leader's runs as fast as the drift bound
    /// allows (with --leases).
    #[arg(long)]
    fast_clocks: bool,
    /// Client writes.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=8))]
    writes: Option<u8>,
    /// Writes proposed a second time, as a client retries.
    #[arg(long)]
    retries: Option<u8>,
    /// Client reads.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=8))]
    reads: Option<u8>,
    /// Crashes (restarts from disk, torn writes included).
    #[arg(long)]
    crashes: Option<u8>,
    /// Lost disks (the replica rejoins).
    #[arg(long)]
    wipes: Option<u8>,
    /// Replicas whose disk is replaced by a copy of what it held when the
    /// search began, restarted with --rejoin.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    put_backs: Option<u8>,
    /// Snapshots taken (the log compacted behind them).
    #[arg(long)]
    compactions: Option<u8>,
    /// Messages delivered and kept for another delivery.
    #[arg(long)]
    dups: Option<u8>,
    /// Reads under leader leases (with timings that allow them).
    #[arg(long)]
    leases: bool,
    /// Disks sync by steps of their own, so durability reports lag.
    #[arg(long)]
    lag: bool,
    /// Deliver messages in rounds (every message sent so far at once)
    /// instead of one at a time: fewer interleavings, longer runs.
    #[arg(long)]
    rounds: bool,
    /// Replicas that may be cut off from the others for good.
    #[arg(long)]
    isolations: Option<u8>,
    /// Where the search begins: "elected" (a leader elected without
    /// faults), "fresh" (a cluster that just started) or "replaced-behind"
    /// (replica 3 replaced by a fourth while 2 and 3 were cut off, then the
    /// old leader cut off; it asks for the replace scenario's two changes).
    #[arg(long)]
    start: Option<String>,
    /// A membership change asked once: "add" (a fourth replica) or
    /// "remove" (the third).
    #[arg(long)]
    change: Option<String>,
    /// How many of the scenario's changes are asked for (remove and
    /// replace have two).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=2))]
    changes: Option<u8>,
    /// The window α of membership changes.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=8))]
    alpha: Option<u64>,
    /// Check in every state that a new write is still chosen once the
    /// faults stop (slow).
    #[arg(long)]
    liveness: bool,
    /// Turn off a reduction, to measure it: a message sent again while an
    /// identical one is undelivered is a second copy.
    #[arg(long)]
    every_send_counts: bool,
    /// Turn off a reduction, to measure it: writes in any order.
    #[arg(long)]
    writes_any_order: bool,
    /// Check a deliberately broken variant ("list" names them).
    #[arg(long)]
    bug: Option<String>,
    /// Stop after this many distinct states (the search holds a few KB per
    /// state waiting to be explored: a million states can take 5 GB).
    #[arg(long, default_value_t = 1_000_000)]
    max_states: usize,
}

#[derive(Args, Debug)]
pub struct SynodArgs {
    /// Proposers, each with its own value.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
    proposers: u8,
    /// Ballots each proposer may start.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=3))]
    rounds: u8,
    /// Acceptor restarts allowed in a run.
    #[arg(long, default_value_t = 1)]
    restarts: u8,
    /// Check a deliberately broken variant ("list" names them).
    #[arg(long)]
    bug: Option<String>,
    /// Stop after this many distinct states.
    #[arg(long)]
    max_states: Option<usize>,
}

pub fn run(command: ModelCommand) -> Result<ExitCode> {
    match command {
        ModelCommand::Synod(args) => synod(args),
        ModelCommand::Replica(args) => replica(args),
    }
}

fn replica(args: ReplicaArgs) -> Result<ExitCode> {
    let bug = match super::choose_bug::<KvBug>(args.bug.as_deref())? {
        super::BugChoice::Listed => return Ok(ExitCode::SUCCESS),
        choice => choice.bug().copied(),
    };
    let mut model = bug.map_or_else(ReplicaModel::default, ReplicaModel::for_bug);
    let set = |field: &mut u8, value: Option<u8>| {
        if let Some(v) = value {
            *field = v;
        }
    };
    if let Some(n) = args.replicas {
        model.replicas = usize::from(n);
    }
    set(&mut model.ticks, args.ticks);
    set(&mut model.skew, args.skew);
    set(&mut model.writes, args.writes);
    set(&mut model.retries, args.retries);
    set(&mut model.reads, args.reads);
    set(&mut model.crashes, args.crashes);
    set(&mut model.wipes, args.wipes);
    set(&mut model.put_backs, args.put_backs);
    set(&mut model.dups, args.dups);
    set(&mut model.compactions, args.compactions);
    set(&mut model.isolations, args.isolations);
    set(&mut model.changes, args.changes);
    model.rounds |= args.rounds;
    model.fast_clocks |= args.fast_clocks;
    model.every_send_counts |= args.every_send_counts;
    model.writes_any_order |= args.writes_any_order;
    model.leases |= args.leases;
    model.lag |= args.lag;
    model.liveness |= args.liveness;
    if let Some(alpha) = args.alpha {
        model.alpha = alpha;
    }
    if let Some(name) = &args.change {
        match Scenario::parse(name) {
            Some(scenario) => model.scenario = Some(scenario),
            None => anyhow::bail!("unknown change '{name}'; use add, remove or replace"),
        }
    }
    if let Some(name) = &args.start {
        let Some(start) = Start::parse(name) else {
            anyhow::bail!("unknown start '{name}'; use elected, fresh or replaced-behind");
        };
        model.start = start;
        if start == Start::ReplacedBehind {
            if model.replicas != 3 || model.scenario.is_some_and(|s| s != Scenario::Replace) {
                anyhow::bail!(
                    "--start replaced-behind runs three founders and the replace scenario; \
                     drop --replicas and --change"
                );
            }
            model.scenario = Some(Scenario::Replace);
            model.changes = 2;
        }
    }
    println!("exploring the replica: {}", model.summary());
    let options = Options {
        max_states: args.max_states,
        stop_at_violation: bug.is_some(),
    };
    let report = explore(&model, options);
    let code = verdict(&report, &model.legend(), |state| {
        println!("{}", model.describe(state));
    });
    if let Some(bug) = bug
        && report.ok()
    {
        println!(
            "{} is not caught within these bounds; the simulator catches it: \
             parliament sim kv --bug {} --seeds 10000 --stop-at-first",
            bug.name(),
            bug.name()
        );
    }
    Ok(code)
}

fn synod(args: SynodArgs) -> Result<ExitCode> {
    let bug = match super::choose_bug::<SynodBug>(args.bug.as_deref())? {
        super::BugChoice::Listed => return Ok(ExitCode::SUCCESS),
        choice => choice.bug().copied(),
    };
    let model = SynodModel::new(usize::from(args.proposers), args.rounds, args.restarts, bug);
    println!(
        "exploring the synod: {} acceptors, {} proposers, {} ballots each, {} restart(s){}",
        model.acceptors,
        model.proposers,
        model.rounds,
        model.restarts,
        bug.map(|b| format!(", bug {}", b.name()))
            .unwrap_or_default()
    );
    let options = Options {
        max_states: args.max_states.unwrap_or(usize::MAX),
        stop_at_violation: bug.is_some(),
    };
    let report = explore(&model, options);
    Ok(verdict(&report, &model.legend(), |last| {
        println!("chosen at the end: {:?}", model.chosen(last));
        if let Some(w) = model.misled_learner(last) {
            let received: Vec<String> = w
                .received
                .iter()
                .map(|(b, v, a)| format!("{a} -> learner Accepted({b}, {v:?})"))
                .collect();
            println!(
                "a learner that received [{}] learned {:?}",
                received.join(", "),
                w.learned
            );
        }
    }))
}

/// Prints a search's figures and findings, with each counterexample step by
/// step and `describe` of its last state; the exit code: failure when a
/// property is violated, or a sanity property went unwitnessed in a
/// complete search.
fn verdict<M: Model>(report: &Report<M>, legend: &str, describe: impl Fn(&M::State)) -> ExitCode {
    println!(
        "{} states, {} transitions, max depth {}, {:.2?}{}",
        report.states,
        report.transitions,
        report.max_depth,
        report.elapsed,
        if report.complete {
            ""
        } else {
            " (stopped early)"
        }
    );
    let mut violated = false;
    for f in &report.findings {
        let verdict = match (f.expectation, f.ok()) {
            (Expectation::Always, true) if report.complete => "holds",
            (Expectation::Always, true) => "no counterexample yet",
            (Expectation::Always, false) => "VIOLATED",
            (Expectation::Sometimes, true) => "witnessed",
            (Expectation::Sometimes, false) => "NOT WITNESSED",
        };
        println!("  {verdict:<22} {}", f.name);
        if f.expectation == Expectation::Always
            && let Some(trace) = &f.trace
        {
            violated = true;
            println!("counterexample ({} steps; {legend}):", trace.steps.len());
            for (i, (action, _)) in trace.steps.iter().enumerate() {
                println!("  {:>3}. {action:?}", i + 1);
            }
            describe(trace.last_state());
        }
    }
    let sanity_failed = report.complete
        && report
            .findings
            .iter()
            .any(|f| f.expectation == Expectation::Sometimes && !f.ok());
    if violated || sanity_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
