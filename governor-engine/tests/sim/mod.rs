//! Support for the simulation: a plant model the engine governs, a runner
//! that closes the loop tick by tick, and per-scenario reports (CSV, SVG).

#![allow(dead_code)]

pub mod report;

use std::{collections::VecDeque, time::Duration};

use governor_engine::{
    config::{Config, PolicyConfig, Protected},
    decide::{Change, Decision, DecisionKind, State},
    snapshot::{CgroupPath, CgroupStats, PortStats, RunqHist, RunqStats, Snapshot},
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The longest delay of one step down, backoff and jitter included.
pub fn max_step_down_delay(p: &PolicyConfig) -> Duration {
    let base = p.backoff.max.max(p.recover_every);
    base + base.mul_f64(p.jitter.get())
}

/// An upper bound on the time from the signal going (and staying) below
/// `low`, with data, to the policy being back at rung 0: `for`, then one
/// delay per rung, plus the waits the flap budget can impose, plus one
/// tick of rounding per step.
pub fn recovery_bound(p: &PolicyConfig, from_rung: usize, tick: Duration) -> Duration {
    let rungs = from_rung as u32;
    let budget_waits = rungs.div_ceil(p.flap_budget.transitions.max(1)) + 1;
    p.hold_for
        + p.settle
        + max_step_down_delay(p) * rungs
        + p.flap_budget.window * budget_waits
        + tick * (rungs + 2)
}

/// The simulation's tick, as in the default config.
pub const TICK: Duration = Duration::from_millis(100);

/// The cgroup whose latency the policies watch.
pub const API: &str = "/workload/api";

/// A latency-critical service sharing CPUs with a batch tenant.
///
/// Requests arrive at the offered rate and are served at a capacity that
/// depends on how much CPU the batch tenant takes, which is what the
/// engine's actions change (rung 0: batch takes half, rung 1 `cpu_weight
/// idle`: a tenth, rung 2 `cpu_limit`: almost nothing). Actions take effect
/// `lag` ticks after they are applied. The measured p99 wait is a steady
/// M/M/1-like term in utilisation, plus the backlog of a queue that grows
/// while offered load exceeds capacity, smoothed over ticks (a percentile of
/// a window responds gradually), times multiplicative noise.
pub struct Plant {
    /// Service capacity (requests/s) with 0, 1, 2 … rungs in force.
    pub capacity: Vec<f64>,
    /// Ticks between applying an action and its effect.
    pub lag: usize,
    /// Standard deviation of the multiplicative noise.
    pub noise: f64,
    queue: f64,
    smoothed: f64,
    in_force: VecDeque<usize>,
    rng: ChaCha8Rng,
}

impl Plant {
    /// A plant whose actions help (`capacity` grows with the rung) or not.
    pub fn new(actions_help: bool, noise: f64, seed: u64) -> Self {
        let capacity = if actions_help {
            vec![500.0, 900.0, 980.0]
        } else {
            vec![500.0, 500.0, 500.0]
        };
        Self {
            capacity,
            lag: 3,
            noise,
            queue: 0.0,
            smoothed: 200.0,
            in_force: VecDeque::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// One tick: `offered` requests/s with `rung` in force (as applied by
    /// the actuators); returns the p99 wait in microseconds.
    pub fn tick(&mut self, offered: f64, rung: usize, dt: f64) -> f64 {
        self.in_force.push_back(rung);
        let effective = if self.in_force.len() > self.lag {
            self.in_force.pop_front().unwrap_or(0)
        } else {
            0
        };
        let mu = self.capacity[effective.min(self.capacity.len() - 1)];
        self.queue = (self.queue + (offered - mu) * dt).clamp(0.0, 2000.0);
        let rho = (offered / mu).min(0.95);
        let steady = 100.0 + 300.0 * rho / (1.0 - rho);
        let backlog = self.queue / mu * 1e6;
        self.smoothed += 0.5 * (steady + backlog - self.smoothed);
        let n = gaussian(&mut self.rng);
        (self.smoothed * (1.0 + self.noise * n)).max(1.0)
    }
}

/// A listener on [`PORT`] whose workers accept `service` connections/s.
///
/// The ladder of `examples/fail-fast.toml` acts on what is admitted: rung 1
/// throttles new connections to `throttle` per second (the excess is reset
/// at once), rung 2 rejects all but the exempt share. Admitted connections
/// queue in the accept queue (bounded by the backlog); the signal is its fill.
pub struct AcceptPlant {
    pub service: f64,
    pub throttle: f64,
    pub exempt_share: f64,
    pub backlog: f64,
    pub lag: usize,
    pub noise: f64,
    queue: f64,
    in_force: VecDeque<usize>,
    rng: ChaCha8Rng,
}

/// The port of the fail-fast scenario.
pub const PORT: u16 = 8080;

impl AcceptPlant {
    pub fn new(noise: f64, seed: u64) -> Self {
        Self {
            service: 150.0,
            throttle: 200.0,
            exempt_share: 0.05,
            backlog: 128.0,
            lag: 1,
            noise,
            queue: 0.0,
            in_force: VecDeque::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// One tick; returns the accept queue's depth.
    pub fn tick(&mut self, offered: f64, rung: usize, dt: f64) -> f64 {
        self.in_force.push_back(rung);
        let effective = if self.in_force.len() > self.lag {
            self.in_force.pop_front().unwrap_or(0)
        } else {
            0
        };
        let admitted = match effective {
            0 => offered,
            1 => offered.min(self.throttle),
            _ => offered * self.exempt_share,
        };
        self.queue = (self.queue + (admitted - self.service) * dt).clamp(0.0, self.backlog);
        let n = gaussian(&mut self.rng);
        (self.queue * (1.0 + self.noise * n))
            .clamp(0.0, self.backlog)
            .round()
    }
}

/// A snapshot in which [`PORT`]'s accept queue holds `depth` of `backlog`.
pub fn port_snapshot(tick: u64, depth: Option<f64>, backlog: f64) -> Snapshot {
    let mut s = Snapshot {
        ts_ms: tick * TICK.as_millis() as u64,
        interval_ms: TICK.as_millis() as u64,
        ..Default::default()
    };
    if let Some(depth) = depth {
        s.ports.push(PortStats {
            port: PORT,
            accept_queue: depth as u32,
            accept_queue_max: backlog as u32,
            ..Default::default()
        });
    }
    s
}

/// A standard normal draw (Box–Muller).
pub fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A snapshot in which the api cgroup's p99 is `p99_us` (or which lacks the
/// cgroup: no data).
pub fn snapshot(tick: u64, p99_us: Option<f64>) -> Snapshot {
    let mut s = Snapshot {
        ts_ms: tick * TICK.as_millis() as u64,
        interval_ms: TICK.as_millis() as u64,
        ..Default::default()
    };
    if let Some(p99) = p99_us {
        let p99 = p99.round() as u64;
        // The probes ran (percentiles, no histograms: read per interval).
        s.host.runq = Some(RunqStats::default());
        s.cgroups.push(CgroupStats {
            path: CgroupPath::new(API).expect("valid path"),
            id: 1,
            runq: RunqStats {
                count: 1000,
                p50_us: p99 / 5,
                p99_us: p99,
                max_us: p99 * 2,
            },
            runq_hist: None,
            conn_out: 0,
            conn_out_per_s: 0.0,
            psi: None,
            throttling: None,
            culprits: Vec::new(),
        });
    }
    s
}

/// A snapshot in which the api cgroup's tasks waited `waits_ns` in the
/// tick, as the sensor reports it: the tick's histogram, and its count and
/// percentiles.
pub fn runq_snapshot(tick: u64, waits_ns: &[u64]) -> Snapshot {
    let mut s = snapshot(tick, None);
    let hist = RunqHist::from_waits_ns(waits_ns.iter().copied());
    s.host.runq = Some(RunqStats::default());
    s.host.runq_hist = Some(RunqHist::default());
    s.cgroups.push(CgroupStats {
        path: CgroupPath::new(API).expect("valid path"),
        id: 1,
        runq: hist.stats(),
        runq_hist: Some(hist),
        conn_out: 0,
        conn_out_per_s: 0.0,
        psi: None,
        throttling: None,
        culprits: Vec::new(),
    });
    s
}

/// A scenario: a config, a load over time, and the plant's character.
pub struct Scenario {
    /// Names the report files.
    pub name: &'static str,
    /// The config the engine runs (its first policy is plotted).
    pub config: Config,
    /// Length, in ticks.
    pub ticks: u64,
    /// Offered load (requests/s) at second `t`.
    pub load: Box<dyn Fn(f64) -> f64>,
    /// Noise of the measurement.
    pub noise: f64,
    /// Ticks in `[from, to)` have no data for the signal.
    pub blackout: Option<(u64, u64)>,
    /// False for a plant on which the actions have no effect.
    pub actions_help: bool,
    /// Seeds the plant's noise and the engine's jitter.
    pub seed: u64,
    /// True: the fail-fast plant ([`AcceptPlant`], accept-queue fill);
    /// false: the CPU plant ([`Plant`], run-queue p99).
    pub accept_queue: bool,
}

/// One tick of a run.
#[derive(Debug, Clone)]
pub struct Row {
    pub tick: u64,
    pub offered: f64,
    pub signal: Option<f64>,
    /// The policy's rung (in dry-run: the rung it would be at).
    pub rung: usize,
    /// The rung actually in force (what actuators applied).
    pub in_force: usize,
}

/// What a run did.
pub struct Trace {
    pub name: &'static str,
    pub rows: Vec<Row>,
    pub decisions: Vec<Decision>,
    pub high: f64,
    pub low: f64,
    /// How the signal is plotted.
    pub unit: &'static str,
}

/// A rung change made or that would have been made: not a refusal, not a
/// re-set of the rung in force.
pub fn is_transition(d: &Decision) -> bool {
    d.kind != DecisionKind::Refused && d.change != Change::Adjust
}

impl Trace {
    /// Rung changes actually made or that would have been made.
    pub fn transitions(&self) -> Vec<&Decision> {
        self.decisions.iter().filter(|d| is_transition(d)).collect()
    }

    /// Tick of the first step up at or after `from`.
    pub fn first_step_up_after(&self, from: u64) -> Option<u64> {
        self.transitions()
            .into_iter()
            .filter(|d| d.change == Change::Impose)
            .map(|d| tick_of(d.at))
            .find(|&t| t >= from)
    }

    /// The highest rung reached.
    pub fn max_rung(&self) -> usize {
        self.rows.iter().map(|r| r.rung).max().unwrap_or(0)
    }

    /// From the tick the signal went under `low` for good (with data) to the
    /// tick the policy was back at rung 0: `(clear_tick, back_tick)`.
    pub fn recovery(&self) -> Option<(u64, u64)> {
        let back = self.rows.iter().rposition(|r| r.rung > 0).map(|i| i + 1)?;
        let back_tick = self.rows.get(back)?.tick;
        // The last tick before `back` where the signal was not clear, +1.
        let clear = self.rows[..back]
            .iter()
            .rposition(|r| r.signal.is_none_or(|v| v >= self.low))
            .map_or(0, |i| i + 1);
        Some((self.rows[clear].tick, back_tick))
    }

    /// Step-down delays: time from each step up to the step down that follows.
    pub fn up_to_down_gaps(&self) -> Vec<f64> {
        let mut gaps = Vec::new();
        let mut last_up = None;
        for d in self.transitions() {
            match d.change {
                Change::Impose => last_up = Some(d.at),
                Change::Lift => {
                    if let Some(u) = last_up.take() {
                        gaps.push((d.at - u).as_secs_f64());
                    }
                }
                Change::Adjust => {}
            }
        }
        gaps
    }
}

pub fn tick_of(at: Duration) -> u64 {
    (at.as_millis() / TICK.as_millis()) as u64
}

/// Closes the loop: plant → snapshot → engine → decisions → actuators → plant.
pub fn run(s: &Scenario) -> Trace {
    let protected = Protected::for_config(&s.config, None);
    let mut state = State::new(&s.config, protected, s.seed);
    let mut plant = Plant::new(s.actions_help, s.noise, s.seed ^ 0x5eed);
    let mut accept = AcceptPlant::new(s.noise, s.seed ^ 0x5eed);
    let policy = &s.config.policies[0];
    let mut in_force = 0usize;
    let mut rows = Vec::with_capacity(s.ticks as usize);
    let mut decisions = Vec::new();
    let dt = TICK.as_secs_f64();
    for tick in 0..s.ticks {
        let t = tick as f64 * dt;
        let offered = (s.load)(t);
        let measured = if s.accept_queue {
            accept.tick(offered, in_force, dt)
        } else {
            plant.tick(offered, in_force, dt)
        };
        let dark = s.blackout.is_some_and(|(a, b)| (a..b).contains(&tick));
        let reading = (!dark).then_some(measured);
        let now = TICK * tick as u32;
        let (snap, signal) = if s.accept_queue {
            (
                port_snapshot(tick, reading, accept.backlog),
                reading.map(|d| d / accept.backlog),
            )
        } else {
            (snapshot(tick, reading), reading)
        };
        for d in state.step(&snap, now) {
            // The actuators: only applied and reverted decisions change the plant.
            if d.policy == policy.name
                && matches!(d.kind, DecisionKind::Applied | DecisionKind::Reverted)
            {
                in_force = d.to_rung;
            }
            decisions.push(d);
        }
        let rung = state.status()[0].rung;
        rows.push(Row {
            tick,
            offered,
            signal,
            rung,
            in_force,
        });
    }
    Trace {
        name: s.name,
        rows,
        decisions,
        high: policy.watermarks.high.value,
        low: policy.watermarks.low.value,
        unit: if s.accept_queue { "fill ratio" } else { "µs" },
    }
}
