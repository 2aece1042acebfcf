//! `parliament bench ...`: measurements, never tests.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use parliament::storage::wal::{bench_group_commit, bench_raw_fdatasync};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Write-ahead log appends with group commit (fsync always), beside the
    /// raw fdatasync rate of the same disk, measured in the same run.
    Wal(WalArgs),
}

#[derive(Args, Debug)]
pub struct WalArgs {
    /// A directory on the disk to measure (scratch files are removed).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Records written per writer count (split among the writers).
    #[arg(long, default_value_t = 20_000)]
    records: usize,
    /// Bytes per record.
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Concurrent writer counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 256])]
    writers: Vec<usize>,
}

pub fn run(command: BenchCommand) -> Result<ExitCode> {
    match command {
        BenchCommand::Wal(args) => wal(args),
    }
}

fn wal(args: WalArgs) -> Result<ExitCode> {
    let dir = &args.dir;
    let raw = bench_raw_fdatasync(dir, 2_000)
        .with_context(|| format!("cannot measure fdatasync in {}", dir.display()))?;
    println!("raw fdatasync of 100-byte writes: {raw:.0}/s");
    println!(
        "{:>8} {:>14} {:>10} {:>16}",
        "writers", "records/s", "fsyncs", "records/fsync"
    );
    for &writers in &args.writers {
        let writers = writers.max(1);
        let per_writer = (args.records / writers).max(1);
        let r = bench_group_commit(dir, writers, per_writer, args.record_bytes)
            .with_context(|| format!("cannot benchmark the log in {}", dir.display()))?;
        println!(
            "{writers:>8} {:>14.0} {:>10} {:>16.1}",
            r.records_per_sec, r.syncs, r.records_per_sync
        );
    }
    Ok(ExitCode::SUCCESS)
}
