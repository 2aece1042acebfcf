//! `parliament check FILE`: is a recorded client history linearizable?

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use testkit::check::{self, Options};

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// A history as JSON lines: {"process", "type", "f", "key", "value", "time"}.
    file: PathBuf,
    /// Search steps allowed per key before the key is reported undecided.
    #[arg(long, default_value_t = Options::default().max_steps_per_key)]
    max_steps_per_key: u64,
}

/// Exits 0 when linearizable, 1 on a violation, 3 when undecided.
pub fn run(args: CheckArgs) -> Result<ExitCode> {
    let options = Options {
        max_steps_per_key: args.max_steps_per_key,
    };
    let result = check::check_jsonl_file(&args.file, &options)
        .with_context(|| format!("cannot check {}", args.file.display()))?;
    println!("{result}");
    Ok(if result.is_violation() {
        ExitCode::FAILURE
    } else if !result.linearizable {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
