//! `governor run`: the agent. Sense → decide → act every tick, show it all.
//!
//! This is the imperative shell around the engine's `decide`: a sensor thread
//! produces snapshots; the tick loop feeds the latest one to the engine,
//! carries out its decisions, and publishes metrics, status and logs. Slow
//! sensing never stalls a tick: a tick without a new snapshot decides
//! nothing (no data is not zero) and is counted as stale.

pub mod config_file;
pub mod driver;
pub mod guard;

use driver::Driver;

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::watch;

use governor_engine::{
    config::{Config, LoadOptions, Scope, Target},
    decide::{Decision, DecisionKind},
    record::{Engine, Input, Watch},
    snapshot::{CgroupPath, Snapshot},
};

use crate::{
    act::rules::{Actuators, CgroupActuation},
    probes::Probes,
    record::segments::{Limits, Recorder},
    sense::{
        cgroupfs::{CgroupFs, DEFAULT_ROOT},
        sensor::{Sensor, SensorScope},
    },
    show::{
        metrics::Metrics,
        status::{self, DecisionRecord},
    },
};

/// How `governor run` was asked to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--dry-run`: forces dry-run whatever the config says.
    pub dry_run: bool,
    /// `--live`: print one line a second of what the agent sees.
    pub live: bool,
}

/// Starts recording as `[agent]` says, or says why not and runs without.
fn start_recorder(cfg: &Config) -> Option<Recorder> {
    if !cfg.agent.record {
        tracing::info!("recording is off (record = false)");
        return None;
    }
    let limits = Limits {
        dir: cfg.agent.record_dir.clone(),
        keep: cfg.agent.record_keep,
        max_bytes: cfg.agent.record_max,
    };
    match Recorder::start(limits) {
        Ok(r) => {
            tracing::info!(
                "recording to {} (kept {}, at most {} MiB; governor replay {} reads it)",
                cfg.agent.record_dir.display(),
                humantime::format_duration(cfg.agent.record_keep),
                cfg.agent.record_max >> 20,
                cfg.agent.record_dir.display()
            );
            Some(r)
        }
        Err(e) => {
            tracing::warn!("{e:#}; running without a recording");
            None
        }
    }
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The config is invalid (exit code 2).
    #[error("{0}")]
    Config(String),
    /// Anything else (exit code 1).
    #[error(transparent)]
    Runtime(#[from] anyhow::Error),
}

/// Decisions kept for `status`.
const RECENT: usize = 50;

/// The agent's own cgroup (cgroup2 path of this process), from /proc/self/cgroup.
pub fn own_cgroup() -> Option<CgroupPath> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|p| CgroupPath::new(p.trim()).ok())
}

fn load(
    opts: &RunOptions,
    agent_cgroup: Option<&CgroupPath>,
) -> Result<(Config, String, String), AgentError> {
    let (mut cfg, name, text) = config_file::load_text_with(
        opts.config.as_deref(),
        &LoadOptions {
            agent_cgroup: agent_cgroup.cloned(),
        },
    )
    .map_err(|e| AgentError::Config(e.to_string()))?;
    if opts.dry_run {
        cfg.agent.dry_run = true;
    }
    Ok((cfg, name, text))
}

/// What the sensor must read every interval for these policies.
fn scope_of(cfg: &Config) -> SensorScope {
    let mut watched = Vec::new();
    let mut files = Vec::new();
    for p in &cfg.policies {
        if let Scope::Cgroup(c) = &p.signal.scope {
            watched.push(c.clone());
            if p.signal.kind.is_psi() {
                files.push(c.clone());
            }
        }
    }
    for p in &cfg.policies {
        for a in &p.ladder.rungs {
            if let Target::Cgroup(c) = a.target() {
                watched.push(c);
            }
        }
    }
    // Stable sort, and dedup keeps the first: a cgroup that is a signal
    // keeps the policy's own path, which `decide` then finds by pointer.
    watched.sort();
    watched.dedup();
    SensorScope {
        subtrees: Vec::new(),
        watched,
        files,
    }
}

/// A per-host seed, so that hosts running the same config do not recover in step.
fn host_seed() -> u64 {
    let id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let pid = u64::from(std::process::id());
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) ^ pid.rotate_left(32)
        ^ t
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(opts: RunOptions) -> Result<(), AgentError> {
    let agent_cgroup = own_cgroup();
    let (cfg, source, text) = load(&opts, agent_cgroup.as_ref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(agent(opts, cfg, source, text, agent_cgroup))?;
    Ok(())
}

struct SensorHandle {
    stop: Arc<AtomicBool>,
    scope: Arc<Mutex<Option<SensorScope>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for SensorHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How often the sensor thread copies the probes' event and map-full
/// counters into the metrics (each read is a per-CPU map lookup per counter).
const PROBE_COUNTERS_EVERY: Duration = Duration::from_secs(1);

/// Starts the sensor thread: one snapshot per tick into `tx`, and the
/// probes' own counters into `metrics` (the thread owns the probes).
fn start_sensor(
    mut sensor: Sensor,
    tick: Duration,
    tx: watch::Sender<Option<Arc<Snapshot>>>,
    metrics: Arc<Metrics>,
) -> SensorHandle {
    let stop = Arc::new(AtomicBool::new(false));
    let scope: Arc<Mutex<Option<SensorScope>>> = Arc::new(Mutex::new(None));
    let (stop2, scope2) = (Arc::clone(&stop), Arc::clone(&scope));
    let thread = thread::Builder::new()
        .name("sensor".into())
        .spawn(move || {
            let _ = sensor.prime();
            let mut next = Instant::now() + tick;
            let mut counted: Option<Instant> = None;
            while !stop2.load(Ordering::Relaxed) {
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                }
                // After a stall, skip the missed ticks instead of sampling
                // back to back (a 1 ms interval is too short to judge).
                next = (next + tick).max(Instant::now() + tick / 2);
                if let Some(s) = scope2.lock().ok().and_then(|mut g| g.take()) {
                    sensor.set_scope(s);
                }
                match sensor.sample() {
                    Ok(snap) => {
                        let _ = tx.send(Some(Arc::new(snap)));
                    }
                    Err(e) => tracing::error!("sensing failed: {e}"),
                }
                if counted.is_none_or(|at| at.elapsed() >= PROBE_COUNTERS_EVERY) {
                    counted = Some(Instant::now());
                    match sensor.probes().counters() {
                        Ok(c) => metrics.probe_counters(&c),
                        Err(e) => tracing::debug!("probe counters: {e}"),
                    }
                }
            }
            // Dropping the sensor detaches every probe.
            drop(sensor);
        })
        .expect("spawning the sensor thread");
    SensorHandle {
        stop,
        scope,
        thread: Some(thread),
    }
}

/// Logs, counts and carries out decisions, and tells the engine how each
/// went: a failed change is not in force (the engine retries it with
/// backoff); failures are reported, not fatal.
fn handle(
    decisions: &[Decision],
    driver: &mut Driver,
    now: Duration,
    actuators: &mut Actuators,
    metrics: &Metrics,
    recent: &mut VecDeque<DecisionRecord>,
) {
    for (index, d) in decisions.iter().enumerate() {
        let result = actuators.carry_out(d);
        let error = result.as_ref().err().map(|e| format!("{e:#}"));
        // Only what the engine hears of: applied and reverted changes.
        if matches!(d.kind, DecisionKind::Applied | DecisionKind::Reverted) {
            driver.feed(Input::Outcome {
                now,
                index: u32::try_from(index).unwrap_or(u32::MAX),
                error: error.clone(),
            });
        }
        match (&result, d.kind) {
            (Err(e), _) => {
                tracing::error!(policy = %d.policy, action = d.action.name(), target = %d.target, "{d}: FAILED: {e:#}");
                metrics.action_error(d);
            }
            (Ok(()), DecisionKind::Refused) => {
                tracing::warn!(policy = %d.policy, action = d.action.name(), target = %d.target, "{d}")
            }
            (Ok(()), _) => {
                tracing::info!(policy = %d.policy, action = d.action.name(), target = %d.target, "{d}")
            }
        }
        metrics.decision(d);
        recent.push_back(DecisionRecord::new(d, error));
        while recent.len() > RECENT {
            recent.pop_front();
        }
    }
}

/// The one-line `STATUS=` systemd shows in `systemctl status`.
fn status_line(policies: &[governor_engine::decide::PolicyStatus], dry_run: bool) -> String {
    let live = policies.iter().filter(|p| !p.dry_run).count();
    let in_force = policies.iter().filter(|p| p.rung > 0).count();
    let failing = policies.iter().filter(|p| p.failed.is_some()).count();
    let mut s = format!(
        "{} polic{} ({live} live{}), {in_force} stepped up",
        policies.len(),
        if policies.len() == 1 { "y" } else { "ies" },
        if dry_run { ", dry-run" } else { "" },
    );
    if failing > 0 {
        s.push_str(&format!(", {failing} failing to act"));
    }
    s
}

/// One line of what the agent sees: host run-queue, the cgroup waiting
/// longest, the busiest port, every policy's rung.
fn live_line(s: &Snapshot, policies: &[governor_engine::decide::PolicyStatus]) -> String {
    let host = s
        .host
        .runq
        .map(|r| {
            format!(
                "host runq {} waits p50 {}µs p99 {}µs",
                r.count, r.p50_us, r.p99_us
            )
        })
        .unwrap_or_else(|| "host runq missing".into());
    let worst = s
        .cgroups
        .iter()
        .filter(|c| c.runq.count >= 5)
        .max_by_key(|c| c.runq.p99_us)
        .map(|c| format!(" | worst {} p99 {}µs", c.path, c.runq.p99_us))
        .unwrap_or_default();
    let port = s
        .ports
        .iter()
        .max_by_key(|p| (p.accepted, p.accept_queue))
        .filter(|p| p.accepted > 0 || p.accept_queue > 0)
        .map(|p| {
            format!(
                " | port {} {:.0}/s queue {}/{}",
                p.port, p.accepted_per_s, p.accept_queue, p.accept_queue_max
            )
        })
        .unwrap_or_default();
    let rungs: Vec<String> = policies
        .iter()
        .map(|p| {
            format!(
                "{} {}/{}{}",
                p.name,
                p.rung,
                p.rungs,
                if p.dry_run { " (dry-run)" } else { "" }
            )
        })
        .collect();
    format!(
        "t={:>6.1}s {host}{worst}{port} | {}",
        s.ts_ms as f64 / 1000.0,
        if rungs.is_empty() {
            "no policies".into()
        } else {
            rungs.join(", ")
        }
    )
}

async fn agent(
    opts: RunOptions,
    cfg: Config,
    source: String,
    text: String,
    agent_cgroup: Option<CgroupPath>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    // Handle signals from the very start: a SIGHUP's default action would
    // kill the agent, and a SIGTERM must still revert what was done.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let cgroupfs = CgroupFs::discover(Path::new(DEFAULT_ROOT)).context("finding cgroup2")?;
    let netns = cfg
        .agent
        .netns
        .clone()
        .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"));
    let journal = crate::act::journal::Journal::open(&cfg.agent.journal_dir)
        .with_context(|| format!("opening the journal in {}", cfg.agent.journal_dir.display()))?;
    if crate::act::journal::on_memory_fs(&cfg.agent.journal_dir) == Some(false) {
        tracing::warn!(
            "journal_dir {} is not on a tmpfs: every change waits for the journal's fsync \
             to disk first (up to a second on a busy disk); \
             a directory under /run (tmpfs on systemd hosts) is meant",
            cfg.agent.journal_dir.display()
        );
    }
    // Through systemd for its units if it is the cgroup manager, else cgroup
    // files only; logs which, once. Connected before the revert below, which
    // may have units to put back.
    let cgroups: Box<dyn CgroupActuation> = Box::new(crate::act::cgroup::CgroupActuator::for_host(
        cgroupfs.clone(),
        journal,
    ));
    let mut actuators = Actuators::new(cgroupfs.clone(), cgroups, netns.clone());
    // A previous run that crashed left its changes in the journal: undo them
    // before anything else.
    tracing::info!(
        "journal at {}: {}",
        cfg.agent.journal_dir.display(),
        actuators.revert_all()
    );
    // Live policies that act on ports: load and attach inbound admission now
    // (no rule yet, everything passes), so a trip does not wait for the
    // verifier and a kernel that cannot do it says so at start.
    let acts_on_ports = cfg.policies.iter().any(|p| {
        !p.is_dry_run(&cfg.agent)
            && p.ladder
                .rungs
                .iter()
                .any(|a| matches!(a.target(), Target::Port(_)))
    });
    if acts_on_ports {
        match actuators.attach_inbound() {
            Ok(()) => tracing::info!(
                "inbound admission attached to {} (no rule yet)",
                netns.display()
            ),
            Err(e) => tracing::warn!(
                "inbound admission could not be attached yet (retried at the first trip): {e:#}"
            ),
        }
    }

    // Guards are armed from the start, not on a trip.
    let mut guards = guard::Guards::new(&netns, Path::new(crate::sense::procfs::DEFAULT_ROOT));
    guards.configure(&cfg, &mut actuators);

    let (probes, forwarder) = Probes::start()?;
    let missing = probes.missing().to_vec();
    let program_ids = probes.program_ids();
    let mut sensor = Sensor::new(
        probes,
        crate::sense::cgroupfs::CgroupIndex::new(cgroupfs.clone()),
        PathBuf::from(crate::sense::procfs::DEFAULT_ROOT),
        None,
        scope_of(&cfg),
    );
    sensor = sensor.with_netns(crate::sense::netns::NetnsWorker::start(&netns)?);

    let metrics = Arc::new(Metrics::new());
    metrics.configure(&cfg);
    metrics.config_loaded(true, false);
    if !cfg.agent.metrics_addr.ip().is_loopback() {
        tracing::warn!(
            "metrics_addr {} is not a loopback address: anyone who can reach it reads /metrics, \
             which shows cgroup paths, port numbers and policy names; \
             prefer 127.0.0.1 behind a proxy that authenticates",
            cfg.agent.metrics_addr
        );
    }
    match crate::show::metrics::serve(Arc::clone(&metrics), cfg.agent.metrics_addr) {
        Ok(bound) => tracing::info!("metrics on http://{bound}/metrics"),
        Err(e) => tracing::warn!("{e:#}; running without /metrics"),
    }
    let report = Arc::new(Mutex::new(status::Published {
        config: source.clone(),
        dry_run: cfg.agent.dry_run,
        tick: cfg.agent.tick,
        missing: missing.clone(),
        watermarks: status::watermarks_of(&cfg),
        ..Default::default()
    }));
    let status_task = status::serve_with(
        &cfg.agent.status_socket,
        Arc::clone(&report),
        &status::ServeOptions::for_agent(&cfg.agent),
    )?;

    let mut driver = Driver {
        engine: Engine::new(),
        recorder: start_recorder(&cfg),
        watch: Watch::default(),
    };
    driver.feed(Input::Start {
        config: text,
        source_name: source.clone(),
        seed: cfg.agent.seed.unwrap_or_else(host_seed),
        agent_cgroup: agent_cgroup.clone(),
        started_unix_ms: unix_ms_now()
            .saturating_sub(u64::try_from(started.elapsed().as_millis()).unwrap_or(0)),
        dry_run: opts.dry_run,
    });
    driver.reconfigure();
    if let Ok(mut r) = report.lock() {
        r.policies = Arc::new(driver.status());
    }
    let mut watched: Arc<[CgroupPath]> = scope_of(&cfg).watched.into();
    let tick = cfg.agent.tick;
    let (tx, mut rx) = watch::channel(None);
    let sensor_handle = start_sensor(sensor, tick, tx, Arc::clone(&metrics));
    tracing::info!(
        config = %source,
        policies = cfg.policies.len(),
        dry_run = cfg.agent.dry_run,
        "governor running: tick {tick:?}"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let mut recent: VecDeque<DecisionRecord> = VecDeque::new();
    let mut last_live = Instant::now();
    let mut last_status = Instant::now() - Duration::from_secs(1);
    let mut last_verdicts = Instant::now();
    let mut cfg_dry_run = cfg.agent.dry_run;

    loop {
        tokio::select! {
            // A tick is a new snapshot from the sensor thread; a tick that
            // brings none within two periods is stale and decides nothing.
            changed = tokio::time::timeout(2 * tick, rx.changed()) => {
                let t0 = Instant::now();
                let now = started.elapsed();
                let mut ticked = false;
                match changed {
                    Ok(Ok(())) => {
                        let snap = rx.borrow_and_update().clone();
                        if let Some(snap) = snap {
                            ticked = true;
                            // The engine decides on what the config reads
                            // of the snapshot, which is what is recorded.
                            let snapshot = driver.watch.filter(&snap);
                            let decisions = driver.feed(Input::Step { now, snapshot });
                            handle(&decisions, &mut driver, now, &mut actuators, &metrics, &mut recent);
                            guards.tick(&snap, now, &mut actuators);
                            metrics.observe(Arc::clone(&snap), Arc::clone(&watched));
                            if let Ok(mut r) = report.lock() {
                                if !decisions.is_empty() {
                                    r.recent = recent.iter().cloned().collect();
                                }
                                if r.missing != snap.missing {
                                    r.missing = snap.missing.clone();
                                }
                                // `governor top`'s cgroups and ports, ranked when asked.
                                r.snapshot = Some(Arc::clone(&snap));
                            }
                            if opts.live && last_live.elapsed() >= Duration::from_secs(1) {
                                last_live = Instant::now();
                                println!("{}", live_line(&snap, &driver.status()));
                            }
                        }
                    }
                    Ok(Err(_)) => anyhow::bail!("the sensor thread stopped"),
                    Err(_) => {
                        metrics.stale_tick();
                        tracing::warn!("no snapshot for {:?}: sensing is slower than the tick", 2 * tick);
                    }
                }
                actuators.retry_pending();
                if last_verdicts.elapsed() >= Duration::from_secs(1) {
                    last_verdicts = Instant::now();
                    metrics.admission_verdicts(actuators.verdicts());
                    metrics.guard_bounds(guards.bounds());
                }
                // Drift (held values someone else changed): act/ logs each
                // episode once; metrics and status show it.
                let drift = actuators.check_drift();
                metrics.drift(
                    drift.iter().map(|d| (d.policy.as_str(), d.target.as_str(), d.started)),
                );
                let drift: Vec<String> = drift.iter().map(ToString::to_string).collect();
                if let Ok(mut r) = report.lock() && r.drift != drift {
                    r.drift = drift;
                }
                // End of drift.
                let statuses = Arc::new(driver.status());
                metrics.policies(Arc::clone(&statuses));
                if let Ok(mut r) = report.lock() {
                    r.now = now;
                    r.policies = Arc::clone(&statuses);
                }
                // The watchdog hears only of ticks that really decided on a
                // fresh snapshot: a stuck sensor thread is caught too.
                if ticked {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
                if last_status.elapsed() >= Duration::from_secs(1) {
                    last_status = Instant::now();
                    let line = status_line(&statuses, cfg_dry_run);
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&line)]);
                }
                metrics.tick_duration.observe(t0.elapsed().as_secs_f64());
            }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading {}", opts.config.as_deref().map_or("the config".into(), |p| p.display().to_string()));
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match load(&opts, agent_cgroup.as_ref()) {
                    Err(e) => {
                        metrics.config_loaded(false, true);
                        tracing::error!("reload refused, the running policies stay: {e}");
                        let _ = sd_notify::notify(&[
                            sd_notify::NotifyState::Ready,
                            sd_notify::NotifyState::Status("reload refused: the config is invalid; the running policies stay"),
                        ]);
                    }
                    Ok((new_cfg, new_source, new_text)) => {
                        let now = started.elapsed();
                        let decisions = driver.feed(Input::Reload {
                            now,
                            config: new_text,
                            source_name: new_source.clone(),
                            dry_run: opts.dry_run,
                        });
                        driver.reconfigure();
                        handle(&decisions, &mut driver, now, &mut actuators, &metrics, &mut recent);
                        guards.configure(&new_cfg, &mut actuators);
                        // After the releases were counted: series of removed
                        // policies and of targets no policy names go.
                        metrics.configure(&new_cfg);
                        metrics.config_loaded(true, true);
                        metrics.policies(Arc::new(driver.status()));
                        let scope = scope_of(&new_cfg);
                        watched = scope.watched.clone().into();
                        if let Ok(mut s) = sensor_handle.scope.lock() {
                            *s = Some(scope);
                        }
                        if let Ok(mut r) = report.lock() {
                            r.config = new_source;
                            r.dry_run = new_cfg.agent.dry_run;
                            r.recent = recent.iter().cloned().collect();
                            r.watermarks = status::watermarks_of(&new_cfg);
                        }
                        cfg_dry_run = new_cfg.agent.dry_run;
                        let later = config_file::needs_restart(&cfg.agent, &new_cfg.agent);
                        if !later.is_empty() {
                            tracing::warn!(
                                "reloaded, but [agent] {} changed and take{} effect only at the next restart (systemctl restart governor)",
                                later.join(", "),
                                if later.len() == 1 { "s" } else { "" }
                            );
                        }
                        tracing::info!(policies = new_cfg.policies.len(), "reloaded");
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                    }
                }
            }
            _ = term.recv() => { tracing::info!("SIGTERM: reverting and stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: reverting and stopping"); break; }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let now = started.elapsed();
    let decisions = driver.feed(Input::ReleaseAll { now });
    handle(
        &decisions,
        &mut driver,
        now,
        &mut actuators,
        &metrics,
        &mut recent,
    );
    tracing::info!("journal: {}", actuators.revert_all());
    if let Some(r) = driver.recorder.take() {
        let c = r.counters();
        let (frames, bytes, dropped) = (
            c.frames.load(Ordering::Relaxed),
            c.bytes_in.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
        );
        r.finish();
        tracing::info!(
            "recorded {frames} frames ({bytes} bytes before compression, {dropped} dropped)"
        );
    }
    status_task.abort();
    forwarder.abort();
    drop(sensor_handle);
    if let Some(line) = actuators.check_detached() {
        if line.starts_with("STILL") {
            tracing::error!("{line}");
        } else {
            tracing::info!("{line}");
        }
    }
    drop(actuators);
    crate::probes::wait_unloaded(&program_ids);
    tracing::info!("stopped after {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
