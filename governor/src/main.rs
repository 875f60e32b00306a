//! `governor`: the agent and its command line (see `design.md`, "Command line").

use std::{
    io::{IsTerminal as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use governor::{
    ebpf::{self, Probes},
    sensor::{Sensor, SensorScope},
    show::{self, metrics::Metrics},
    snapshot::{CgroupPath, Snapshot},
};
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
        Command::Observe {
            interval,
            count,
            format,
            cgroups,
        } => observe(interval, count, format, &cgroups),
        Command::Check { config } => {
            let code = governor::config::check_command(
                config.as_deref(),
                &mut std::io::stdout(),
                &mut std::io::stderr(),
            );
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
        Command::Status { .. } => Err(anyhow::anyhow!(
            "`governor status` needs the running agent's status socket, which is not built yet"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("governor: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Loads and attaches the probes, wires their log, and builds the sensor.
fn start_sensor(scope: SensorScope) -> anyhow::Result<(Sensor, tokio::task::JoinHandle<()>)> {
    let mut probes = Probes::load().context("loading the embedded kernel programs")?;
    let forwarder = probes.spawn_log_forwarder().context("wiring kernel logs")?;
    probes.attach_all().context("attaching probes")?;
    for m in probes.missing() {
        tracing::warn!("signal missing on this kernel: {m}");
    }
    let sensor = Sensor::start_host(probes, scope)?;
    Ok((sensor, forwarder))
}

/// Serves /metrics, or says why not and carries on without it.
fn start_metrics(metrics: &Arc<Metrics>) {
    let addr: SocketAddr = ([127, 0, 0, 1], 9929).into();
    match show::metrics::serve(Arc::clone(metrics), addr) {
        Ok(bound) => tracing::info!("metrics on http://{bound}/metrics"),
        Err(e) => tracing::warn!("{e:#}; continuing without /metrics"),
    }
}

async fn stop_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return "error",
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

/// `governor observe`: what the probes see, per interval, without acting.
fn observe(
    interval: Duration,
    count: Option<u64>,
    format: Format,
    cgroups: &[String],
) -> anyhow::Result<()> {
    let subtrees = cgroups
        .iter()
        .map(|c| CgroupPath::new(c).map_err(|e| anyhow::anyhow!("--cgroup: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tty = std::io::stdout().is_terminal();
    let rt = runtime()?;
    rt.block_on(async move {
        let (mut sensor, forwarder) = start_sensor(SensorScope {
            subtrees,
            watched: Vec::new(),
        })?;
        let metrics = Arc::new(Metrics::new());
        start_metrics(&metrics);
        sensor.prime()?;
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        let mut shown = 0u64;
        let stop = stop_signal();
        tokio::pin!(stop);
        let mut out = std::io::stdout().lock();
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let snap = sensor.sample()?;
                    metrics.observe(&snap, &[]);
                    metrics.probe_counters(&sensor.probes().counters()?);
                    match format {
                        Format::Json => writeln!(out, "{}", show::observe::json_line(&snap))?,
                        Format::Table if tty => write!(out, "\x1b[H\x1b[2J{}", show::observe::table(&snap))?,
                        Format::Table => writeln!(out, "{}", show::observe::table(&snap))?,
                    }
                    out.flush()?;
                    shown += 1;
                    if count.is_some_and(|n| shown >= n) { break; }
                }
                sig = &mut stop => { tracing::info!("{sig}: stopping"); break; }
            }
        }
        forwarder.abort();
        drop(sensor);
        anyhow::Ok(())
    })?;
    drop(rt);
    report_leftovers();
    Ok(())
}

/// `governor run`: sense every tick and show it; policies are not wired yet,
/// so nothing is ever changed (dry-run).
fn run(dry_run: bool, report_every: Duration) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async move {
        let (mut sensor, forwarder) = start_sensor(SensorScope::default())?;
        let metrics = Arc::new(Metrics::new());
        start_metrics(&metrics);
        tracing::info!(
            dry_run = true,
            requested_dry_run = dry_run,
            "governor running: probes attached; no policy acts in this version (dry-run); Ctrl-C to stop"
        );
        sensor.prime()?;
        let tick = Duration::from_millis(100);
        let mut ticker = tokio::time::interval(tick);
        ticker.tick().await;
        let mut last_report = Instant::now();
        let mut window: Vec<Snapshot> = Vec::new();
        let stop = stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let t = Instant::now();
                    let snap = sensor.sample()?;
                    metrics.observe(&snap, &[]);
                    metrics.tick_duration.observe(t.elapsed().as_secs_f64());
                    window.push(snap);
                    if last_report.elapsed() >= report_every {
                        metrics.probe_counters(&sensor.probes().counters()?);
                        println!("{}", summary_line(&window));
                        window.clear();
                        last_report = Instant::now();
                    }
                }
                sig = &mut stop => { tracing::info!("{sig}: stopping"); break; }
            }
        }
        forwarder.abort();
        drop(sensor);
        anyhow::Ok(())
    })?;
    drop(rt);
    report_leftovers();
    Ok(())
}

/// One live line for `run`: the worst host p99 of the window, the cgroup
/// with the worst p99, and the busiest port.
fn summary_line(window: &[Snapshot]) -> String {
    let Some(last) = window.last() else {
        return String::new();
    };
    let host_p99 = window
        .iter()
        .filter_map(|s| s.host.runq.map(|r| r.p99_us))
        .max()
        .unwrap_or(0);
    let waits: u64 = window
        .iter()
        .filter_map(|s| s.host.runq.map(|r| r.count))
        .sum();
    let worst = window
        .iter()
        .flat_map(|s| s.cgroups.iter())
        .filter(|c| c.runq.count >= 10)
        .max_by_key(|c| c.runq.p99_us)
        .map(|c| format!("worst cgroup {} p99 {}µs", c.path, c.runq.p99_us))
        .unwrap_or_else(|| "no busy cgroup".into());
    let port = window
        .iter()
        .flat_map(|s| s.ports.iter())
        .max_by_key(|p| p.accepted)
        .map(|p| {
            format!(
                "port {} accepted {} queue {}/{}",
                p.port, p.accepted, p.accept_queue, p.accept_queue_max
            )
        })
        .unwrap_or_default();
    format!(
        "t={:>6.1}s host runq waits {waits} p99 {host_p99}µs | {worst} | {port}{}",
        last.ts_ms as f64 / 1000.0,
        if last.missing.is_empty() {
            String::new()
        } else {
            format!(" | missing: {}", last.missing.len())
        }
    )
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
