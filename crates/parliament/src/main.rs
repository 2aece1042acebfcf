//! The `parliament` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

/// parliament: a Multi-Paxos replicated key-value database.
#[derive(Parser, Debug)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the deterministic simulator: many seeded runs under faults.
    #[command(subcommand)]
    Sim(cli::sim::SimCommand),
    /// Explore every interleaving of a small configuration (model checking).
    #[command(subcommand)]
    Model(cli::model::ModelCommand),
    /// Check a recorded client history (JSON lines) for linearizability.
    Check(cli::check::CheckArgs),
    /// Measure (a benchmark, not a test).
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
    /// Run one node of a cluster.
    Serve(Box<cli::serve::ServeArgs>),
    /// Run a local cluster of nodes on 127.0.0.1 until Ctrl-C.
    Cluster(cli::cluster::ClusterArgs),
    /// Show every member of a running parliament, read from any member's HTTP port.
    Status(cli::status::StatusArgs),
    /// List, add, promote or remove members of a running parliament.
    #[command(subcommand)]
    Member(cli::member::MemberCommand),
    /// Move the leadership of a running parliament.
    #[command(subcommand)]
    Leader(cli::member::LeaderCommand),
    /// Back up a running parliament to one file, consistent as of the start
    /// (every write acknowledged before it is in it).
    Backup(cli::backup::BackupArgs),
    /// Make the data directory of one member of a new cluster from a backup.
    Restore(cli::backup::RestoreArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim(command) => cli::sim::run(command),
        Command::Model(command) => cli::model::run(command),
        Command::Check(args) => cli::check::run(args),
        Command::Bench(command) => cli::bench::run(command),
        Command::Serve(args) => cli::serve::run(*args),
        Command::Cluster(args) => cli::cluster::run(args),
        Command::Status(args) => cli::status::run(args),
        Command::Member(command) => cli::member::run_member(command),
        Command::Leader(command) => cli::member::run_leader(command),
        Command::Backup(args) => cli::backup::run_backup(args),
        Command::Restore(args) => cli::backup::run_restore(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
