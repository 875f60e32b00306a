//! `governor`: the agent and its command line (`ARCHITECTURE.md` is the map;
//! the contract is in the README, "Command line").

use std::{
    io::{IsTerminal as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use governor::{
    probes::{self, Probes},
    sense::sensor::{Sensor, SensorScope},
    show::{self, log::LogFormat, metrics::Metrics},
};
use governor_engine::snapshot::CgroupPath;

/// eBPF host-level load governor: measures queueing in the kernel, runs
/// watermark feedback loops, and throttles, cgroup-limits or rejects traffic
/// when a watermark is crossed, explaining every decision.
#[derive(Debug, Parser)]
#[command(name = "governor", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log form: journald when systemd started us (JOURNAL_STREAM), else text;
    /// text has colour only on a terminal; json is one object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: sense, decide, act every tick until SIGTERM/SIGINT.
    Run {
        /// Config file [default: /etc/governor/governor.toml, else the embedded default].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Decide and report, but change nothing (overrides the config).
        #[arg(long)]
        dry_run: bool,
        /// Also print one line a second of what the agent sees (for a terminal).
        #[arg(long)]
        live: bool,
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
        /// Show the processes that waited longest on a run queue (total
        /// wait, runs, mean wait from the kernel's per-task schedstat; as
        /// root also each one's waits and p99 from the scheduler probes)
        /// instead of cgroups and ports.
        #[arg(long)]
        processes: bool,
        /// How many processes `--processes` shows.
        #[arg(long, value_name = "N", default_value_t = 20, requires = "processes")]
        top: usize,
    },
    /// Ask the running agent for its policies, rungs and recent decisions.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The agent's status socket.
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/run/governor/governor.sock"
        )]
        socket: PathBuf,
    },
    /// A full-screen live view of the running agent, from its status socket:
    /// per policy its rung, value, watermarks and a chart of the signal; the
    /// last decisions with their reasons; the cgroups waiting longest on a
    /// run queue; the ports with their accept queues. `q`, Esc or Ctrl-C
    /// quits. When stdout is not a terminal it prints plain blocks instead
    /// (`governor status` plus watermarks, cgroups and ports), one per poll.
    Top {
        /// The agent's status socket.
        #[arg(
            long,
            value_name = "PATH",
            default_value = "/run/governor/governor.sock"
        )]
        socket: PathBuf,
        /// How often to ask the agent.
        #[arg(long, value_name = "DUR", default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Print one plain block and exit (1 if the agent does not answer).
        #[arg(long)]
        once: bool,
    },
    /// Record what the host sees (every cgroup and port, each tick) without
    /// acting, to collect a baseline before writing a policy; the config's
    /// policies, if one is given, run in dry-run and their decisions are
    /// recorded too. `governor replay --config CANDIDATE DIR` reads it.
    Record {
        /// A config whose policies run in dry-run beside the recording [default: none].
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Stop after this long [default: until SIGINT/SIGTERM].
        #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Where the segments go (created 0700 if absent).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Delete segments older than this.
        #[arg(long, value_name = "DUR", default_value = "24h", value_parser = humantime::parse_duration)]
        keep: Duration,
        /// Keep at most this many MiB of segments, oldest deleted first.
        #[arg(long, value_name = "MIB", default_value_t = 256)]
        max_mib: u64,
    },
    /// Replay a recording through the engine: with the recorded configs
    /// (the recorded decisions must come back), or with a candidate config
    /// (what would it have decided?). Changes nothing; needs no root.
    Replay(governor::record::cli::ReplayArgs),
    /// Write the man pages or a shell completion script (for packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

/// What `governor generate` writes, from these clap definitions.
#[derive(Debug, Subcommand)]
enum Generate {
    /// governor.1 and one page per subcommand (governor-run.1 …) into DIR.
    Man {
        /// Directory to write the pages to (created if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// A completion script for SHELL, on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object per interval (NDJSON).
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    governor::show::log::init(cli.log_format);
    let result = match cli.command {
        Command::Run {
            config,
            dry_run,
            live,
        } => {
            let opts = governor::agent::RunOptions {
                config,
                dry_run,
                live,
            };
            match governor::agent::run(opts) {
                Ok(()) => Ok(()),
                Err(governor::agent::AgentError::Config(e)) => {
                    eprint!("{e}");
                    return ExitCode::from(2);
                }
                Err(governor::agent::AgentError::Runtime(e)) => Err(e),
            }
        }
        Command::Observe {
            interval,
            count,
            format,
            cgroups,
            processes: true,
            top,
        } => observe_processes(interval, count, format, &cgroups, top),
        Command::Observe {
            interval,
            count,
            format,
            cgroups,
            processes: false,
            ..
        } => observe(interval, count, format, &cgroups),
        Command::Check { config } => {
            // Under systemd (ExecReload=) the errors go to the journal at
            // error priority, so `journalctl -p warning` shows the refusal.
            let mut err: Box<dyn std::io::Write> =
                if governor::show::log::resolve(cli.log_format) == LogFormat::Journald {
                    Box::new(governor::show::log::PriorityLines::errors(std::io::stderr()))
                } else {
                    Box::new(std::io::stderr())
                };
            let code = governor::agent::config_file::check_command(
                config.as_deref(),
                &mut std::io::stdout(),
                &mut err,
            );
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
        Command::Status { json, socket } => governor::show::status::fetch(&socket).map(|r| {
            if json {
                println!("{}", r.to_json());
            } else {
                print!("{}", r.table());
            }
        }),
        Command::Top {
            socket,
            interval,
            once,
        } => governor::show::top::run(&governor::show::top::TopOptions {
            socket,
            interval: interval.max(Duration::from_millis(50)),
            once,
        }),
        Command::Record {
            config,
            duration,
            dir,
            keep,
            max_mib,
        } => record(config.as_deref(), duration, dir, keep, max_mib),
        Command::Replay(args) => match governor::record::cli::run(&args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Generate { what } => generate(what),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("governor: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `governor generate`: man pages (clap_mangen) or a completion script
/// (clap_complete) from `Cli`; `cargo xtask deb` packages them.
fn generate(what: Generate) -> anyhow::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    match what {
        Generate::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))
        }
        Generate::Completions { shell } => {
            // clap_complete lists hidden subcommands too (clap_mangen does
            // not): complete a root rebuilt from Cli's own arguments and its
            // visible subcommands.
            let mut visible = clap::Command::new("governor")
                .version(env!("CARGO_PKG_VERSION"))
                .args(cmd.get_arguments().cloned())
                .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
            if let Some(about) = cmd.get_about() {
                visible = visible.about(about.clone());
            }
            clap_complete::generate(shell, &mut visible, "governor", &mut std::io::stdout());
            Ok(())
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
    let (probes, forwarder) = Probes::start()?;
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

/// `governor record`: the host's snapshots (everything, not only what a
/// config reads) fed to a dry-run engine and recorded.
fn record(
    config: Option<&std::path::Path>,
    duration: Option<Duration>,
    dir: PathBuf,
    keep: Duration,
    max_mib: u64,
) -> anyhow::Result<()> {
    use governor::record::segments::{Limits, Recorder};
    use governor_engine::record::{Engine, Input, Watch};
    let (cfg, name, text) = match config {
        Some(p) => governor::agent::config_file::load_text_with(Some(p), &Default::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        // No policy: only the recording.
        None => {
            let text = "# governor record: no policies\n".to_owned();
            let cfg = governor_engine::config::from_str(&text, "governor record")
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            (cfg, "governor record".to_owned(), text)
        }
    };
    let recorder = Recorder::start(Limits {
        dir: dir.clone(),
        keep,
        max_bytes: max_mib << 20,
    })?;
    // The agent's driver, with every cgroup and port watched and no actuators.
    let mut driver = governor::agent::driver::Driver {
        engine: Engine::new(),
        recorder: Some(recorder),
        watch: Watch::everything(),
    };
    let started = std::time::Instant::now();
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    driver.feed(Input::Start {
        config: text,
        source_name: name,
        seed: cfg.agent.seed.unwrap_or(unix_ms),
        agent_cgroup: None,
        started_unix_ms: unix_ms,
        dry_run: true,
    });
    let tick = cfg.agent.tick;
    let rt = runtime()?;
    let ids = rt.block_on(async move {
        let (mut sensor, forwarder) = start_sensor(SensorScope::default())?;
        sensor.prime()?;
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        ticker.tick().await;
        // `--duration` is of recording: loading the probes (seconds under
        // emulation) does not count.
        let recording = std::time::Instant::now();
        let stop = stop_signal();
        tokio::pin!(stop);
        let mut said = std::time::Instant::now();
        eprintln!(
            "governor: recording into {} every {tick:?}{}",
            dir.display(),
            duration.map_or(String::from(" until SIGINT/SIGTERM"), |d| format!(
                " for {}",
                humantime::format_duration(d)
            ))
        );
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let snap = sensor.sample()?;
                    let now = started.elapsed();
                    let snapshot = driver.watch.filter(&snap);
                    driver.feed(Input::Step { now, snapshot });
                    if said.elapsed() >= Duration::from_secs(10)
                        && let Some(c) = driver.recorder.as_ref().map(|r| r.counters())
                    {
                        said = std::time::Instant::now();
                        eprintln!(
                            "governor: {:.0}s: {} frames, {} KiB compressed, {} dropped",
                            now.as_secs_f64(),
                            c.frames.load(std::sync::atomic::Ordering::Relaxed),
                            c.bytes_out.load(std::sync::atomic::Ordering::Relaxed) >> 10,
                            c.dropped.load(std::sync::atomic::Ordering::Relaxed),
                        );
                    }
                    if duration.is_some_and(|d| recording.elapsed() >= d) { break; }
                }
                sig = &mut stop => { eprintln!("governor: {sig}: stopping"); break; }
            }
        }
        driver.feed(Input::ReleaseAll {
            now: started.elapsed(),
        });
        forwarder.abort();
        let ids = sensor.probes().program_ids();
        drop(sensor);
        let recorder = driver.recorder.take().context("the recorder")?;
        let c = recorder.counters();
        let (frames, dropped) = (
            c.frames.load(std::sync::atomic::Ordering::Relaxed),
            c.dropped.load(std::sync::atomic::Ordering::Relaxed),
        );
        recorder.finish();
        eprintln!(
            "governor: recorded {frames} frames ({dropped} dropped) into {}",
            dir.display()
        );
        anyhow::Ok(ids)
    })?;
    drop(rt);
    probes::wait_unloaded(&ids);
    Ok(())
}

/// `governor observe --processes`: the processes that waited longest on a
/// run queue, per interval, from schedstat; and, where the scheduler
/// probes load (root), each one's waits and p99 from a per-process
/// histogram the probes keep for this command only.
fn observe_processes(
    interval: Duration,
    count: Option<u64>,
    format: Format,
    cgroups: &[String],
    top: usize,
) -> anyhow::Result<()> {
    use governor::sense::processes::{
        ProcessReader, ProcessTable, add_percentiles, json_line, table,
    };
    let within = cgroups
        .iter()
        .map(|c| CgroupPath::new(c).map_err(|e| anyhow::anyhow!("--cgroup: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let reader = ProcessReader::default();
    let mut waits = ProcessTable::default();
    let cpus = aya::util::nr_cpus().unwrap_or(1);
    let mut probes = match governor::probes::Probes::load_with(Some(
        governor::probes::Probes::process_entries(cpus),
    ))
    .and_then(|mut p| p.attach_all().map(|()| p))
    {
        Ok(p) if p.counts_runq() => Some(p),
        Ok(_) => {
            tracing::warn!(
                "the scheduler probes are not attached: no per-process p99, schedstat only"
            );
            None
        }
        Err(e) => {
            tracing::warn!("{e}: no per-process p99, schedstat only");
            None
        }
    };
    let tty = std::io::stdout().is_terminal();
    let rt = runtime()?;
    rt.block_on(async move {
        let mut out = std::io::stdout().lock();
        waits.update(reader.read(&within), std::time::Instant::now(), top);
        // The histograms start with the same interval as the counters.
        if let Some(p) = probes.as_mut() {
            let _ = p.take_processes();
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        let stop = stop_signal();
        tokio::pin!(stop);
        let mut shown = 0u64;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let t = std::time::Instant::now();
                    let sample = reader.read(&within);
                    let cost = t.elapsed();
                    let n = sample.len();
                    let mut rows = waits.update(sample, t, top);
                    if let Some(p) = probes.as_mut() {
                        // The per-cgroup maps too, which nothing here
                        // shows: drained, they do not fill up, and the
                        // cgroups that wait get histogram slots (cheaper
                        // for the probes).
                        if let Err(e) = p.read_maps() {
                            tracing::debug!("{e}: per-cgroup maps not read");
                        }
                        match p.take_processes() {
                            Ok(h) => add_percentiles(&mut rows, &h),
                            Err(e) => tracing::warn!("{e}: per-process p99 missing this interval"),
                        }
                    }
                    let p = probes.is_some();
                    match format {
                        Format::Json => writeln!(out, "{}", json_line(&rows, interval, cost, n, p))?,
                        Format::Table if tty => write!(out, "\x1b[H\x1b[2J{}", table(&rows, interval, cost, n, p))?,
                        Format::Table => writeln!(out, "{}", table(&rows, interval, cost, n, p))?,
                    }
                    out.flush()?;
                    shown += 1;
                    if count.is_some_and(|c| shown >= c) { break; }
                }
                _ = &mut stop => break,
            }
        }
        anyhow::Ok(())
    })
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
    let ids = rt.block_on(async move {
        // The cgroups named are watched: their run-queue culprits are counted.
        let (mut sensor, forwarder) = start_sensor(SensorScope {
            watched: subtrees.clone(),
            subtrees,
            files: Vec::new(),
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
                    let snap = Arc::new(sensor.sample()?);
                    metrics.observe(Arc::clone(&snap), Arc::from([]));
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
        let ids = sensor.probes().program_ids();
        drop(sensor);
        anyhow::Ok(ids)
    })?;
    drop(rt);
    probes::wait_unloaded(&ids);
    Ok(())
}
