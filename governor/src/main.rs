//! `governor`: the agent and its command line (see `design.md`, "Command line").

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use governor::ebpf::{self, Probes};
use tracing_subscriber::EnvFilter;

/// eBPF host-level load governor: measures queueing in the kernel, runs
/// watermark feedback loops, and throttles, cgroup-limits or rejects traffic
/// when a watermark is crossed, explaining every decision.
#[derive(Debug, Parser)]
#[command(name = "governor", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: sense, decide, act every tick until SIGTERM/SIGINT.
    Run {
        /// Config file [default: /etc/governor/governor.toml, else the embedded default].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Decide and report, but change nothing.
        #[arg(long)]
        dry_run: bool,
        /// How often to print what the probes see.
        #[arg(long, value_name = "DUR", default_value = "1s", value_parser = humantime::parse_duration)]
        report_every: Duration,
    },
    /// Check a config file and exit: 0 if valid, 2 with every error if not.
    Check {
        /// Config file [default: /etc/governor/governor.toml, else the embedded default].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Show what the probes see, per interval, without acting.
    Observe {
        /// Length of one interval.
        #[arg(long, value_name = "DUR", default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after N intervals [default: run until interrupted].
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only cgroups within this subtree (repeatable).
        #[arg(long = "cgroup", value_name = "PATH")]
        cgroups: Vec<String>,
    },
    /// Ask the running agent for its policies, rungs and recent decisions.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object per interval (NDJSON).
    Json,
}

fn init_logging() {
    let filter = EnvFilter::try_from_env("GOVERNOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run {
            config: _,
            dry_run,
            report_every,
        } => run(dry_run, report_every),
        Command::Check { .. } | Command::Observe { .. } | Command::Status { .. } => {
            Err(anyhow::anyhow!(
                "this command is not built yet; only `governor run` works in this version"
            ))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("governor: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Loads and attaches the probes and reports what they see until interrupted.
fn run(dry_run: bool, report_every: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let mut probes = Probes::load().context("loading the embedded kernel programs")?;
        let forwarder = probes.spawn_log_forwarder().context("wiring kernel logs")?;
        probes.attach_all().context("attaching probes")?;
        tracing::info!(
            dry_run = true,
            requested_dry_run = dry_run,
            "governor running: probes attached, no policies act yet (dry-run); Ctrl-C to stop"
        );
        let started = Instant::now();
        let mut last = probes.counters()?;
        let mut ticker = tokio::time::interval(report_every);
        ticker.tick().await;
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let now = probes.counters()?;
                    let secs = report_every.as_secs_f64();
                    let line: Vec<String> = now
                        .iter()
                        .map(|(name, v)| {
                            let d = v.saturating_sub(last.get(name).copied().unwrap_or(0));
                            format!("{name}: {:.0}/s", d as f64 / secs)
                        })
                        .collect();
                    println!("t={:>6.1}s  {}", started.elapsed().as_secs_f64(), line.join("  "));
                    last = now;
                }
                _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: stopping"); break; }
                _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            }
        }
        forwarder.abort();
        drop(probes);
        anyhow::Ok(())
    })?;
    report_leftovers();
    Ok(())
}

/// Says whether any of our programs is still loaded after we let go of them.
fn report_leftovers() {
    // Programs are freed after an RCU grace period; give the kernel a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = ebpf::loaded_program_names();
        if left.is_empty() {
            tracing::info!("detached: no governor program remains loaded");
            return;
        }
        if Instant::now() > deadline {
            tracing::warn!(
                ?left,
                "governor programs still loaded (another governor may be running)"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
