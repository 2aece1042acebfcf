//! `parliament model ...`: exhaustive model checking.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use testkit::bugs::{SynodBug, Variant};
use testkit::model::synod::SynodModel;
use testkit::model::{Expectation, Options, explore};

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Single-decree Paxos: 3 acceptors, some proposers, one learner.
    Synod(SynodArgs),
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
    }
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
            println!(
                "counterexample ({} steps; {}):",
                trace.steps.len(),
                model.legend()
            );
            for (i, (action, _)) in trace.steps.iter().enumerate() {
                println!("  {:>3}. {action:?}", i + 1);
            }
            let last = trace.last_state();
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
        }
    }
    let sanity_failed = report.complete
        && report
            .findings
            .iter()
            .any(|f| f.expectation == Expectation::Sometimes && !f.ok());
    Ok(if violated || sanity_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
