//! `parliament bench ...`: measurements, never tests.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use loadgen::{self, Live, Mix, Target};
use storage::wal::{bench_group_commit, bench_raw_fdatasync};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Write-ahead log appends with group commit (fsync always), beside the
    /// raw fdatasync rate of the same disk, measured in the same run.
    Wal(WalArgs),
    /// A closed-loop load generator for parliament, Redis or etcd: SET, GET
    /// and INCR mixes from many clients, with latency percentiles.
    Load(LoadArgs),
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
        BenchCommand::Load(args) => load(args),
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TargetArg {
    /// parliament or Redis, over RESP2.
    Resp,
    /// etcd's gRPC KV API (builds with `--features etcd`).
    Etcd,
}

#[derive(Args, Debug)]
pub struct LoadArgs {
    /// The protocol to speak.
    #[arg(long, value_enum, default_value_t = TargetArg::Resp)]
    target: TargetArg,
    /// Server addresses (host:port); clients are spread over them in turn.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:6379")]
    addr: Vec<String>,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 64)]
    clients: usize,
    /// Commands per batch on each connection (etcd: requests in flight per
    /// connection).
    #[arg(long, short = 'P', default_value_t = 1)]
    pipeline: usize,
    /// Relative weights of the commands, from set, get and incr.
    #[arg(long, default_value = "set=50,get=50")]
    mix: String,
    /// Keys drawn uniformly from this many (16 bytes each).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Bytes in each SET value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// How long to measure, after the warm-up [default: 10, or 600 with
    /// --requests].
    #[arg(long)]
    seconds: Option<f64>,
    /// Stop after this many requests were sent (or at --seconds, whichever
    /// comes first).
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Load before measuring starts; not counted.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// How long to wait for a reply before counting a timeout and reconnecting.
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// Seeds the choice of commands and keys.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runtime worker threads for the clients (the machine's other cores are
    /// left to the servers).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the report as JSON on stdout (the progress bar stays on stderr).
    #[arg(long)]
    json: bool,
}

/// The most runtime threads `--threads` may ask for.
const THREADS_MAX: usize = 256;

fn seconds(name: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} {value} is not a duration"))
}

fn load(args: LoadArgs) -> Result<ExitCode> {
    let mix = Mix::parse(&args.mix).with_context(|| format!("bad --mix '{}'", args.mix))?;
    let duration = match (args.seconds, args.requests) {
        (Some(s), _) => seconds("seconds", s)?,
        (None, None) => Duration::from_secs(10),
        // A count ends the run; the time is only a safety limit.
        (None, Some(_)) => Duration::from_secs(600),
    };
    let config = loadgen::Config {
        target: match args.target {
            TargetArg::Resp => Target::Resp,
            TargetArg::Etcd => Target::Etcd,
        },
        addrs: args.addr,
        clients: args.clients,
        pipeline: args.pipeline,
        mix,
        keys: args.keys,
        value_bytes: args.value_bytes,
        warmup: seconds("warmup-seconds", args.warmup_seconds)?,
        duration,
        requests: args.requests,
        timeout: Duration::from_millis(args.timeout_ms),
        seed: args.seed,
    };
    config.validate()?;
    if !(1..=THREADS_MAX).contains(&args.threads) {
        bail!("--threads must be between 1 and {THREADS_MAX}");
    }
    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .context("cannot start the runtime")?;
    let live = Arc::new(Live::default());
    let bar = progress(&config);
    let report = runtime.block_on(async {
        let run = loadgen::run(&config, Arc::clone(&live));
        tokio::pin!(run);
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                report = &mut run => break report,
                _ = tick.tick() => show(&bar, &config, &live, started.elapsed()),
            }
        }
    });
    bar.finish_and_clear();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(if report.ops > 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("no request succeeded");
        ExitCode::FAILURE
    })
}

/// A bar over the run's time, or over its requests when counted.
fn progress(config: &loadgen::Config) -> ProgressBar {
    let (len, unit) = match config.requests {
        Some(n) => (n, "requests"),
        None => (
            u64::try_from((config.warmup + config.duration).as_millis()).unwrap_or(u64::MAX),
            "ms",
        ),
    };
    let bar = ProgressBar::new(len);
    let template = format!("{{bar:40}} {{pos}}/{{len}} {unit}  {{msg}}");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn show(bar: &ProgressBar, config: &loadgen::Config, live: &Live, elapsed: Duration) {
    if config.requests.is_some() {
        bar.set_position(live.ops() + live.errors());
    } else {
        bar.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
    }
    let phase = if elapsed < config.warmup {
        "warming up"
    } else {
        "measuring"
    };
    bar.set_message(format!(
        "{phase}: {} ops, {} errors",
        live.ops(),
        live.errors()
    ));
}
