//! The decision engine: watermark feedback loops, pure and deterministic.
//!
//! [`State::step`] takes one [`Snapshot`] and the time since the agent
//! started, updates the engine's [`State`] and returns the [`Decision`]s of
//! that tick. It reads no clock, does no I/O, and draws randomness (recovery
//! jitter) only from the seeded generator inside the state, so a run replays
//! exactly from its seed and its snapshots.
//!
//! Per policy (the README's "Policy semantics"):
//! - at or over `high` for `for` → one rung up, then wait `settle` before the
//!   next, and while the signal still reaches new lows (within `settle`);
//! - under `low` for `for` → one rung down every `recover_every`, each delay
//!   stretched by up to `jitter` of itself;
//! - between the watermarks nothing changes (hysteresis);
//! - a trip within `retrip_within` of a step down multiplies later step-down
//!   delays by `backoff` (up to `backoff_max`), forgotten after `backoff_reset`;
//! - at most `flap_budget` rung changes per `flap_window`, else hold;
//! - a protected target is never acted on: the step is refused and the policy holds;
//! - no data is not zero: the policy holds, and the `for` timers restart;
//! - a run-queue signal is the percentile of every wait in the last
//!   `window` of intervals (their histograms added up), not of one tick;
//! - an interval shorter than half the tick (a sensor catching up after a
//!   stall) is too short to judge: its waits join the windows, but no
//!   policy moves or restarts a timer on it;
//! - in dry-run every change is a `would` decision, nothing is applied.

#![warn(missing_docs)]

mod decision;
pub mod guard;
pub mod signal;

use std::{collections::VecDeque, time::Duration};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

pub use self::decision::{Blame, Cause, Change, Decision, DecisionKind, Direction, Edge, Reason};
use crate::{
    config::{Action, AgentConfig, Config, Level, PolicyConfig, Protected},
    snapshot::{RunqWindow, Snapshot},
};

/// A rung of a ladder: 0 is "nothing applied", `n` is "rungs 1..=n in force".
pub type Rung = usize;

/// The engine's state: every policy's memory, the protected targets and the
/// random source of jitter.
#[derive(Debug, Clone)]
pub struct State {
    agent: AgentConfig,
    policies: Vec<Policy>,
    protected: Protected,
    rng: ChaCha8Rng,
}

/// One policy: its config and what it remembers between ticks.
#[derive(Debug, Clone)]
struct Policy {
    config: PolicyConfig,
    /// `config.name`, shared with every tick's [`PolicyStatus`].
    name: std::sync::Arc<str>,
    /// The ports whose accepted connections its ladder throttles to (from
    /// `config.ladder`, which a reload keeps or the policy is made anew).
    accepted_ports: Vec<u16>,
    dry_run: bool,
    memory: Memory,
    /// Where its signal's cgroup was in the last snapshot (a lookup hint).
    seen_at: std::cell::Cell<usize>,
}

/// What a policy remembers between ticks.
#[derive(Debug, Clone, Default)]
struct Memory {
    rung: Rung,
    /// Since when the signal has been at or over `high` (continuously, with data).
    over_since: Option<Duration>,
    /// Since when the signal has been under `low` (continuously, with data).
    clear_since: Option<Duration>,
    last_value: Option<f64>,
    /// Who held the CPU while the signal's cgroup waited, last interval.
    blame: Option<Blame>,
    last_up: Option<Duration>,
    last_down: Option<Duration>,
    /// When the next step down is due, once recovery has started.
    next_down_at: Option<Duration>,
    /// Times of the rung changes inside the flap window.
    transitions: VecDeque<Duration>,
    /// The flap budget is spent: no change until old ones age out.
    held: bool,
    /// Re-trips counted by the backoff (each doubles step-down delays by default).
    retrips: u32,
    last_trip: Option<Duration>,
    /// The current over-`high` episode has been counted as a trip.
    trip_counted: bool,
    /// The rung whose action was refused as protected (reported once).
    refused: Option<Rung>,
    no_data: bool,
    /// The ports whose throttles are a share of their accepted rate.
    accepted: Vec<PortTrack>,
    /// The lowest signal since the last step up, and when it was reached.
    lowest_since_up: Option<(f64, Duration)>,
    /// Share-of-accepted throttles in force, by rung.
    shares: Vec<ShareInForce>,
    /// The last change the actuators could not carry out, until one of
    /// this policy's changes succeeds.
    failed: Option<Failure>,
    /// The waits of the last `window` of intervals (run-queue signals).
    window: RunqWindow,
    /// When the policy last read a snapshot.
    at: Option<Duration>,
    /// The last snapshot's interval, if it was too short to judge.
    short: Option<Duration>,
}

/// A change of a policy's rung that the actuators could not carry out.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    /// The rung the change was to put in force (impose) or lift.
    pub rung: Rung,
    /// What was tried.
    pub change: Change,
    /// What went wrong, as the actuator said it.
    pub error: String,
    /// Failures of this change in a row.
    pub attempts: u32,
    /// When it is tried again (time since the agent started).
    pub retry_at: Duration,
}

impl Memory {
    /// `port`'s accept-queue depth at the last tick, if it was seen.
    fn queue_depth(&self, port: u16) -> Option<u32> {
        self.accepted
            .iter()
            .find(|t| t.port == port)
            .and_then(|t| t.last_depth)
    }

    /// What the server took from `port`'s queue per second in this episode
    /// over `high`: the lower median of its ticks without the first (the
    /// queue was filling during part of it). The median, as a tick now and
    /// then takes stale connections out much faster than the server's
    /// capacity; the lower one of an even count, to err on the safe side.
    fn episode_capacity(&self, port: u16) -> Option<f64> {
        let t = self.accepted.iter().find(|t| t.port == port)?;
        let mut readings: Vec<f64> = t
            .readings
            .iter()
            .skip(usize::from(t.readings.len() >= 2))
            .copied()
            .collect();
        if readings.is_empty() {
            return None;
        }
        readings.sort_by(f64::total_cmp);
        Some(readings[(readings.len() - 1) / 2])
    }
}

/// Connections per second that drain a backlog of `depth` within `settle`.
fn drain_per_s(depth: u32, settle: Duration) -> f64 {
    f64::from(depth) / settle.as_secs_f64().max(0.1)
}

/// A share-of-accepted throttle in force: what it was resolved from.
#[derive(Debug, Clone)]
struct ShareInForce {
    rung: Rung,
    port: u16,
    /// The server's capacity measured when it was applied.
    capacity: f64,
    /// The rate in force.
    rate: f64,
    /// When it was last set.
    at: Duration,
}

/// What a policy follows of a port whose throttle is a share of its
/// accepted rate.
#[derive(Debug, Clone)]
struct PortTrack {
    port: u16,
    /// Its accept-queue depth at the last tick.
    last_depth: Option<u32>,
    /// The rates the server took connections out of the queue at, every
    /// tick of the current episode over `high` (the server is saturated
    /// then: that is its capacity).
    readings: Vec<f64>,
}

/// One tick of a port as a share-of-accepted throttle needs it.
#[derive(Debug, Clone, Copy)]
pub struct PortTick {
    /// Handshakes completed (connections queued) in the interval.
    pub queued: u64,
    /// The accept queue's depth at its end.
    pub depth: u32,
    /// The interval, seconds.
    pub interval_s: f64,
}

impl PortTick {
    /// The rate the server took connections out of the queue at: what was
    /// queued, less what the queue grew by.
    fn dequeued_per_s(self, last_depth: u32) -> f64 {
        let taken = self.queued as f64 + f64::from(last_depth) - f64::from(self.depth);
        (taken.max(0.0) / self.interval_s.max(1e-3)).max(0.0)
    }
}

/// Readings kept per port for a share-of-accepted throttle (their lower
/// median is used: see `Memory::episode_capacity`).
const ACCEPTED_READINGS: usize = 20;

/// What `status` and metrics show of a policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyStatus {
    /// The policy's name.
    pub name: std::sync::Arc<str>,
    /// Its rung now (in dry-run: the rung it would be at).
    pub rung: Rung,
    /// Its ladder's length.
    pub rungs: usize,
    /// True if it only reports.
    pub dry_run: bool,
    /// The last value of its signal, `None` if the last snapshot had no data.
    pub value: Option<Level>,
    /// True if the flap budget is spent and the policy holds its rung.
    pub flap_held: bool,
    /// True if the last snapshot had no data for its signal (it holds).
    pub no_data: bool,
    /// Re-trips the backoff counts now (0: no backoff).
    pub retrips: u32,
    /// When the next step down is due, if recovery is under way.
    pub next_step_down: Option<Duration>,
    /// The change the actuators failed to carry out, while it fails.
    pub failed: Option<Failure>,
    /// Why the policy is where it is and what it waits for, as of the last
    /// tick: e.g. "under low 300us for 0.2s of 0.5s", "settling 1.2s",
    /// "waiting 4.1s for the next step down", "no data".
    pub why: String,
}

impl State {
    /// A fresh state for `config`, every policy at rung 0. `seed` seeds the
    /// jitter: use `config.agent.seed` if set, else something per host (so
    /// that hosts do not step down in step).
    pub fn new(config: &Config, protected: Protected, seed: u64) -> Self {
        Self {
            policies: config
                .policies
                .iter()
                .map(|p| Policy::new(p, &config.agent))
                .collect(),
            agent: config.agent.clone(),
            protected,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// Runs one tick: every policy reads its signal from `snapshot` and may
    /// change its rung; `now` is the time since the agent started
    /// (monotonic). Returns the tick's decisions, in config order.
    ///
    /// A snapshot whose interval is shorter than half the tick (the sensor
    /// caught up after a stall) is too short to judge: its run-queue waits
    /// join the policies' windows, and nothing else happens (no step, no
    /// timer restarted). An interval of 0 means the producer does not say.
    pub fn step(&mut self, snapshot: &Snapshot, now: Duration) -> Vec<Decision> {
        let mut out = Vec::new();
        let short = too_short(snapshot.interval(), self.agent.tick);
        let interval_s = snapshot.interval().as_secs_f64();
        let accepted = |port: u16| {
            snapshot.port(port).map(|p| PortTick {
                queued: p.accepted,
                depth: p.accept_queue,
                interval_s,
            })
        };
        for p in &mut self.policies {
            let span = p.config.window(&self.agent);
            let value = signal::read_windowed(
                &p.config.signal,
                snapshot,
                &p.seen_at,
                &mut p.memory.window,
                span,
                now,
            );
            p.memory.at = Some(now);
            p.memory.blame = signal::blame(&p.config.signal, snapshot, &p.seen_at);
            p.memory.short = short.then(|| snapshot.interval());
            if short {
                continue;
            }
            let before = out.len();
            p.step(
                value,
                now,
                &accepted,
                &self.protected,
                &mut self.rng,
                &mut out,
            );
            if out.len() == before {
                p.reset_share(now, &mut out, false);
            }
        }
        out
    }

    /// Adopts a reloaded config. A policy whose signal, ladder and mode are
    /// unchanged keeps its state (rung, timers, backoff) and takes its new
    /// watermarks and timings; a changed one lifts its rungs and restarts at
    /// 0; a removed one lifts its rungs. The lifts are the returned decisions.
    pub fn reconcile(
        mut self,
        config: &Config,
        protected: Protected,
        now: Duration,
    ) -> (Self, Vec<Decision>) {
        let mut out = Vec::new();
        let mut old: Vec<Policy> = std::mem::take(&mut self.policies);
        let mut policies = Vec::with_capacity(config.policies.len());
        for new in &config.policies {
            let dry_run = new.is_dry_run(&config.agent);
            match old.iter().position(|p| p.config.name == new.name) {
                Some(i) => {
                    let mut p = old.remove(i);
                    // A rung in force on a target the new config protects
                    // is lifted, even if the policy is otherwise unchanged.
                    let now_protected = (1..=p.memory.rung)
                        .filter_map(|r| p.config.ladder.action(r))
                        .find_map(|a| protected.covers(&a.target()));
                    if let Some(why) = now_protected {
                        p.release(now, Cause::Protected(why), &mut out);
                        policies.push(Policy::new(new, &config.agent));
                    } else if p.config.signal == new.signal
                        && p.config.ladder == new.ladder
                        && p.dry_run == dry_run
                    {
                        p.config = new.clone();
                        policies.push(p);
                    } else {
                        p.release(now, Cause::PolicyChanged, &mut out);
                        policies.push(Policy::new(new, &config.agent));
                    }
                }
                None => policies.push(Policy::new(new, &config.agent)),
            }
        }
        for mut p in old {
            p.release(now, Cause::PolicyRemoved, &mut out);
        }
        self.policies = policies;
        self.agent = config.agent.clone();
        self.protected = protected;
        (self, out)
    }

    /// Lifts every rung in force, top first, e.g. when the agent stops.
    pub fn release_all(&mut self, now: Duration) -> Vec<Decision> {
        let mut out = Vec::new();
        for p in &mut self.policies {
            p.release(now, Cause::Shutdown, &mut out);
        }
        out
    }

    /// Hears how the actuators carried out `decision` (`Err` with what went
    /// wrong). A change that failed did not happen: the engine goes back to
    /// the rung that is really in force. A failed step up is retried no
    /// sooner than `settle`, doubled at each failure in a row (capped at
    /// `backoff_max`); a failed step down keeps the rung, so nothing below
    /// a rule that could not be lifted is lifted first, and is retried
    /// after the same delay. Dry-run decisions and releases of removed
    /// policies are not carried out by the policy's state and are ignored.
    pub fn outcome(&mut self, decision: &Decision, result: Result<(), &str>, now: Duration) {
        if decision.kind != DecisionKind::Applied && decision.kind != DecisionKind::Reverted {
            return;
        }
        // Releases (reload, shutdown) leave the policy's state behind them:
        // the journal retries a revert that failed.
        if matches!(
            decision.reason.cause,
            Cause::PolicyRemoved | Cause::PolicyChanged | Cause::Shutdown | Cause::Protected(_)
        ) {
            return;
        }
        let Some(p) = self
            .policies
            .iter_mut()
            .find(|p| *p.name == *decision.policy)
        else {
            return;
        };
        p.outcome(decision, result, now);
    }

    /// Every policy's status, in config order.
    pub fn status(&self) -> Vec<PolicyStatus> {
        self.policies.iter().map(Policy::status).collect()
    }

    /// Every policy's name, rung and last signal value (in its unit's
    /// base, `None`: no data), in config order: what [`State::status`]
    /// says, without the text, for a replay that charts every tick.
    pub fn points(&self) -> impl Iterator<Item = (&str, Rung, Option<f64>)> + '_ {
        self.policies
            .iter()
            .map(|p| (&*p.name, p.memory.rung, p.memory.last_value))
    }

    /// The agent settings this state was built with.
    pub fn agent(&self) -> &AgentConfig {
        &self.agent
    }
}

impl Policy {
    fn new(config: &PolicyConfig, agent: &AgentConfig) -> Self {
        Self {
            config: config.clone(),
            name: config.name.as_str().into(),
            accepted_ports: (config.ladder.rungs.iter())
                .filter_map(Action::of_accepted_port)
                .collect(),
            dry_run: config.is_dry_run(agent),
            memory: Memory::default(),
            seen_at: Default::default(),
        }
    }

    fn status(&self) -> PolicyStatus {
        let m = &self.memory;
        PolicyStatus {
            name: std::sync::Arc::clone(&self.name),
            rung: m.rung,
            rungs: self.config.ladder.len(),
            dry_run: self.dry_run,
            value: m.last_value.map(|v| self.level(v)),
            flap_held: m.held,
            no_data: m.no_data,
            retrips: m.retrips,
            next_step_down: m.next_down_at,
            failed: m.failed.clone(),
            why: why(&self.config, m),
        }
    }

    fn outcome(&mut self, d: &Decision, result: Result<(), &str>, now: Duration) {
        let m = &mut self.memory;
        let error = match result {
            Ok(()) => {
                m.failed = None;
                return;
            }
            Err(e) => e,
        };
        let rung = match d.change {
            Change::Impose | Change::Adjust => d.to_rung,
            Change::Lift => d.from_rung,
        };
        let attempts = match &m.failed {
            Some(f) if f.rung == rung && f.change == d.change => f.attempts.saturating_add(1),
            _ => 1,
        };
        let c = &self.config;
        let base = c.settle.max(Duration::from_millis(100));
        let delay = base
            .saturating_mul(1u32 << (attempts - 1).min(16))
            .min(c.backoff.max.max(base));
        let retry_at = now + delay;
        match d.change {
            // Not in force: back to the rung below it.
            Change::Impose if m.rung == d.to_rung => {
                m.rung = d.from_rung;
                m.shares.retain(|s| s.rung < d.to_rung);
                m.transitions.pop_back();
                m.last_up = Some(now);
            }
            // Still in force: the rung stays, and the lift is retried.
            Change::Lift if m.rung == d.to_rung => {
                m.rung = d.from_rung;
                m.transitions.pop_back();
                m.next_down_at = Some(retry_at);
            }
            _ => {}
        }
        m.failed = Some(Failure {
            rung,
            change: d.change,
            error: error.to_owned(),
            attempts,
            retry_at,
        });
    }

    fn level(&self, value: f64) -> Level {
        Level {
            unit: self.config.signal.kind.unit(),
            value,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        value: Option<f64>,
        now: Duration,
        accepted: &dyn Fn(u16) -> Option<PortTick>,
        protected: &Protected,
        rng: &mut ChaCha8Rng,
        out: &mut Vec<Decision>,
    ) {
        let c = &self.config;
        let m = &mut self.memory;

        while m
            .transitions
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= c.flap_budget.window)
        {
            m.transitions.pop_front();
        }
        if m.held && m.transitions.len() < c.flap_budget.transitions as usize {
            m.held = false;
        }
        if m.retrips > 0
            && m.last_trip
                .is_none_or(|t| now.saturating_sub(t) >= c.backoff.forget_after)
        {
            m.retrips = 0;
        }

        m.last_value = value;
        let Some(v) = value else {
            // No data is not zero: hold the rung, and restart the `for`
            // timers so that only continuous evidence moves the ladder.
            m.no_data = true;
            m.over_since = None;
            for t in &mut m.accepted {
                t.readings.clear();
            }
            m.trip_counted = false;
            m.clear_since = None;
            m.next_down_at = None;
            return;
        };
        m.no_data = false;
        match m.lowest_since_up {
            Some((low, _)) if v >= low => {}
            _ if m.rung > 0 => m.lowest_since_up = Some((v, now)),
            _ => {}
        }
        if v >= c.watermarks.high.value {
            m.over_since.get_or_insert(now);
            m.clear_since = None;
        } else if v < c.watermarks.low.value {
            m.clear_since.get_or_insert(now);
            m.over_since = None;
        } else {
            // Between the watermarks: nothing changes, and a pending step
            // down waits for the signal to clear again.
            m.over_since = None;
            m.clear_since = None;
            m.next_down_at = None;
            m.refused = None;
        }

        if m.over_since.is_none() {
            m.trip_counted = false;
        }
        for &port in &self.accepted_ports {
            let i = match m.accepted.iter().position(|t| t.port == port) {
                Some(i) => i,
                None => {
                    m.accepted.push(PortTrack {
                        port,
                        last_depth: None,
                        readings: Vec::new(),
                    });
                    m.accepted.len() - 1
                }
            };
            let track = &mut m.accepted[i];
            let tick = accepted(port);
            if m.over_since.is_none() {
                track.readings.clear();
            } else if let (Some(tick), Some(last)) = (tick, track.last_depth) {
                if track.readings.len() == ACCEPTED_READINGS {
                    track.readings.remove(0);
                }
                track.readings.push(tick.dequeued_per_s(last));
            }
            track.last_depth = tick.map(|t| t.depth);
        }
        if let Some(since) = m.over_since.filter(|&s| now - s >= c.hold_for) {
            m.next_down_at = None;
            if !m.trip_counted {
                // A trip soon after a step down: the load is still there;
                // release more slowly next time. Counted when the signal
                // trips, whether or not the step up is allowed (a flap-budget
                // hold must not reset the backoff).
                m.trip_counted = true;
                if m.last_down
                    .is_some_and(|d| now - d <= c.backoff.retrip_within)
                {
                    m.retrips = (m.retrips + 1).min(64);
                }
                m.last_trip = Some(now);
            }
            let settled = m.last_up.is_none_or(|t| now - t >= c.settle)
                && m.failed.as_ref().is_none_or(|f| now >= f.retry_at);
            // A rung in force whose effect is still showing (the signal
            // reached a new low within `settle`, e.g. a backlog draining)
            // is given time.
            let improving = m.rung > 0
                && m.lowest_since_up
                    .is_some_and(|(_, at)| now.saturating_sub(at) < c.settle);
            if m.rung < c.ladder.len() && settled && !improving {
                // A share throttle in force over a server now slower than
                // measured: re-set it to the new capacity first; the next
                // rung only if that does not help.
                if !self.reset_share(now, out, true) {
                    self.step_up(v, now - since, now, protected, out);
                }
            }
        } else if let Some(since) = m.clear_since.filter(|&s| now - s >= c.hold_for) {
            if m.rung == 0 {
                m.refused = None;
                return;
            }
            let due = match m.next_down_at {
                Some(at) => at,
                None => {
                    let delay = step_down_delay(c, m.retrips, rng);
                    // Never step down before the last step up has settled.
                    let at = (now + delay).max(m.last_up.map_or(now, |t| t + c.settle));
                    *m.next_down_at.insert(at)
                }
            };
            if now >= due {
                self.step_down(v, now - since, now, rng, out);
            }
        }
    }

    fn step_up(
        &mut self,
        v: f64,
        held_for: Duration,
        now: Duration,
        protected: &Protected,
        out: &mut Vec<Decision>,
    ) {
        let (from, to) = (self.memory.rung, self.memory.rung + 1);
        let Some(mut action) = self.config.ladder.action(to).cloned() else {
            return;
        };
        if let Some(port) = action.of_accepted_port() {
            let median = self.memory.episode_capacity(port).unwrap_or(0.0);
            // Drain the backlog found over `settle`; re-set once drained.
            let depth = self.memory.queue_depth(port).unwrap_or(0);
            action = action.resolved(median, drain_per_s(depth, self.config.settle));
            if let Action::ThrottleConnections { rate, .. } = &action {
                self.memory.shares.retain(|s| s.rung < to);
                self.memory.shares.push(ShareInForce {
                    rung: to,
                    port,
                    capacity: median,
                    rate: rate.as_per_second(),
                    at: now,
                });
            }
        }
        let value = Some(self.level(v));
        let reason = |cause| Reason {
            signal: self.config.signal.clone(),
            value,
            watermark: Some((Edge::High, self.config.watermarks.high)),
            held_for,
            cause,
            blame: self.memory.blame.clone(),
        };
        let decision = |kind, reason| Decision {
            at: now,
            policy: self.config.name.clone(),
            kind,
            change: Change::Impose,
            target: action.target(),
            action: action.clone(),
            from_rung: from,
            to_rung: to,
            reason,
        };
        if let Some(why) = protected.covers(&action.target()) {
            // Never act on it; say so once, and hold.
            if self.memory.refused != Some(to) {
                out.push(decision(
                    DecisionKind::Refused,
                    reason(Cause::Protected(why)),
                ));
                self.memory.refused = Some(to);
            }
            return;
        }
        if self.budget_spent() {
            if !self.memory.held {
                out.push(decision(DecisionKind::Refused, reason(self.budget_cause())));
                self.memory.held = true;
            }
            return;
        }
        let kind = if self.dry_run {
            DecisionKind::Would
        } else {
            DecisionKind::Applied
        };
        out.push(decision(kind, reason(Cause::Over)));

        let m = &mut self.memory;
        m.rung = to;
        m.last_up = Some(now);
        m.lowest_since_up = Some((v, now));
        m.transitions.push_back(now);
    }

    fn step_down(
        &mut self,
        v: f64,
        held_for: Duration,
        now: Duration,
        rng: &mut ChaCha8Rng,
        out: &mut Vec<Decision>,
    ) {
        let (from, to) = (self.memory.rung, self.memory.rung - 1);
        let Some(action) = self.config.ladder.action(from).cloned() else {
            return;
        };
        let value = Some(self.level(v));
        let reason = |cause| Reason {
            signal: self.config.signal.clone(),
            value,
            watermark: Some((Edge::Low, self.config.watermarks.low)),
            held_for,
            cause,
            blame: None,
        };
        let decision = |kind, reason| Decision {
            at: now,
            policy: self.config.name.clone(),
            kind,
            change: Change::Lift,
            target: action.target(),
            action: action.clone(),
            from_rung: from,
            to_rung: to,
            reason,
        };
        if self.budget_spent() {
            if !self.memory.held {
                out.push(decision(DecisionKind::Refused, reason(self.budget_cause())));
                self.memory.held = true;
            }
            return;
        }
        let kind = if self.dry_run {
            DecisionKind::Would
        } else {
            DecisionKind::Reverted
        };
        out.push(decision(kind, reason(Cause::Clear)));
        let c = &self.config;
        let m = &mut self.memory;
        m.rung = to;
        m.last_down = Some(now);
        m.lowest_since_up = None;
        m.shares.retain(|s| s.rung <= to);
        m.transitions.push_back(now);
        m.refused = None;
        m.next_down_at = (to > 0).then(|| now + step_down_delay(c, m.retrips, rng));
    }

    fn budget_spent(&self) -> bool {
        self.memory.transitions.len() >= self.config.flap_budget.transitions as usize
    }

    /// Re-sets the share-of-accepted throttle of the rung in force (its
    /// share of the capacity, less the backlog left to drain). With
    /// `remeasure` (the queue is over `high` again and not going down), only
    /// if this episode measured a capacity 3% or more below the one in use,
    /// which it adopts; otherwise once `settle` has passed since it was set,
    /// if its rate would change by 5% or more. True if it was re-set.
    fn reset_share(&mut self, now: Duration, out: &mut Vec<Decision>, remeasure: bool) -> bool {
        let Some(port) = self.memory.shares.last().map(|s| s.port) else {
            return false;
        };
        // Only a re-measure looks at this episode's capacity (it sorts the
        // episode's readings; this runs every tick for share policies).
        let fresh = if remeasure {
            self.memory.episode_capacity(port)
        } else {
            None
        };
        let Some(depth) = self.memory.queue_depth(port) else {
            return false;
        };
        let c = &self.config;
        let m = &mut self.memory;
        let Some(s) = m.shares.last_mut().filter(|s| s.rung == m.rung) else {
            return false;
        };
        if remeasure {
            match fresh {
                Some(f) if f < 0.97 * s.capacity => s.capacity = f,
                _ => return false,
            }
        } else if now.saturating_sub(s.at) < c.settle {
            return false;
        }
        let Some(config_action) = c.ladder.action(s.rung) else {
            return false;
        };
        let action = config_action.resolved(s.capacity, drain_per_s(depth, c.settle));
        let Action::ThrottleConnections { rate, .. } = &action else {
            return false;
        };
        let rate = rate.as_per_second();
        if !remeasure && (rate - s.rate).abs() < 0.05 * s.rate.max(1.0) {
            return false;
        }
        s.rate = rate;
        s.at = now;
        let capacity = s.capacity;
        out.push(Decision {
            at: now,
            policy: c.name.clone(),
            kind: if self.dry_run {
                DecisionKind::Would
            } else {
                DecisionKind::Applied
            },
            change: Change::Adjust,
            target: action.target(),
            action,
            from_rung: m.rung,
            to_rung: m.rung,
            reason: Reason {
                signal: c.signal.clone(),
                value: m.last_value.map(|v| Level {
                    unit: c.signal.kind.unit(),
                    value: v,
                }),
                watermark: None,
                held_for: Duration::ZERO,
                cause: Cause::Backlog {
                    capacity,
                    queued: depth,
                },
                blame: None,
            },
        });
        // A re-set is an action taken: give it `settle` before another step.
        if remeasure {
            m.last_up = Some(now);
            m.lowest_since_up = None;
        }
        true
    }

    fn budget_cause(&self) -> Cause {
        Cause::FlapBudget {
            transitions: self.config.flap_budget.transitions,
            window: self.config.flap_budget.window,
        }
    }

    /// Lifts every rung in force, top first (reload, shutdown), and forgets
    /// the policy's memory.
    fn release(&mut self, now: Duration, cause: Cause, out: &mut Vec<Decision>) {
        let value = self.memory.last_value.map(|v| self.level(v));
        for from in (1..=self.memory.rung).rev() {
            let Some(action) = self.config.ladder.action(from) else {
                continue;
            };
            out.push(Decision {
                at: now,
                policy: self.config.name.clone(),
                kind: if self.dry_run {
                    DecisionKind::Would
                } else {
                    DecisionKind::Reverted
                },
                change: Change::Lift,
                target: action.target(),
                action: action.clone(),
                from_rung: from,
                to_rung: from - 1,
                reason: Reason {
                    signal: self.config.signal.clone(),
                    value,
                    watermark: None,
                    held_for: Duration::ZERO,
                    cause: cause.clone(),
                    blame: None,
                },
            });
        }
        self.memory = Memory::default();
    }
}

/// True if an interval is too short to judge: under half the tick (0: the
/// producer does not say, and it is judged).
fn too_short(interval: Duration, tick: Duration) -> bool {
    !interval.is_zero() && interval < tick / 2
}

/// Seconds as `status` shows them: "0.2s", "4.1s", "1s".
fn secs(d: Duration) -> String {
    let s = (d.as_secs_f64() * 10.0).round() / 10.0;
    format!("{}s", crate::config::units::trim_float(s))
}

/// Why a policy is where it is, as of its last tick: what it waits for, or
/// what holds it. One phrase, for `governor status`; a pure function of its
/// config and memory (the time is the last tick's, `Memory::at`).
///
/// In order: no snapshot yet; the last interval too short to judge; no
/// data; a failed change waiting for its retry; the flap budget; over
/// `high` (for how long of `for`, at the top rung, refused as protected,
/// settling, the rung in force still improving); under `low` (for how long
/// of `for`, nothing in force, waiting for the next step down); between
/// the watermarks (hysteresis).
fn why(c: &PolicyConfig, m: &Memory) -> String {
    let Some(now) = m.at else {
        return "starting: no snapshot yet".into();
    };
    let (high, low) = (c.watermarks.high, c.watermarks.low);
    let top = c.ladder.len();
    if let Some(interval) = m.short {
        return format!(
            "interval {}ms too short to judge: holding",
            interval.as_millis()
        );
    }
    if m.no_data {
        return if m.rung > 0 {
            format!("no data: holding rung {}", m.rung)
        } else {
            "no data".into()
        };
    }
    if let Some(f) = m.failed.as_ref().filter(|f| f.retry_at > now) {
        let what = match f.change {
            Change::Impose | Change::Adjust => "step up",
            Change::Lift => "step down",
        };
        return format!(
            "failed {what} (rung {}) retried in {}",
            f.rung,
            secs(f.retry_at - now)
        );
    }
    if m.held {
        return format!(
            "held: flap budget ({} changes in {})",
            c.flap_budget.transitions,
            secs(c.flap_budget.window)
        );
    }
    if let Some(since) = m.over_since {
        let over = now.saturating_sub(since);
        if over < c.hold_for {
            return format!(
                "over high {high} for {} of {}",
                secs(over),
                secs(c.hold_for)
            );
        }
        if m.rung >= top {
            return format!("at top rung (over high {high})");
        }
        if m.refused == Some(m.rung + 1) {
            return format!("refused: rung {}'s target is protected", m.rung + 1);
        }
        if let Some(t) = m.last_up.filter(|&t| now < t + c.settle) {
            return format!("settling {}", secs(t + c.settle - now));
        }
        if let Some((_, at)) = m
            .lowest_since_up
            .filter(|(_, at)| m.rung > 0 && now < *at + c.settle)
        {
            return format!(
                "rung {} still working: a new low {} ago",
                m.rung,
                secs(now - at)
            );
        }
        return format!("over high {high}: stepping up");
    }
    if let Some(since) = m.clear_since {
        if m.rung == 0 {
            return format!("under low {low}: nothing in force");
        }
        let clear = now.saturating_sub(since);
        if clear < c.hold_for {
            return format!(
                "under low {low} for {} of {}",
                secs(clear),
                secs(c.hold_for)
            );
        }
        return match m.next_down_at {
            Some(due) if due > now => {
                format!("waiting {} for the next step down", secs(due - now))
            }
            _ => format!("under low {low}: stepping down"),
        };
    }
    match m.last_value {
        Some(_) => format!("between low {low} and high {high}: holding (hysteresis)"),
        None => "no data".into(),
    }
}

/// The delay before the next step down: `recover_every` times the backoff
/// (capped at `backoff_max`), stretched by a random fraction up to `jitter`.
fn step_down_delay(c: &PolicyConfig, retrips: u32, rng: &mut ChaCha8Rng) -> Duration {
    let every = c.recover_every.as_secs_f64();
    let base =
        (every * c.backoff.factor.powi(retrips as i32)).min(c.backoff.max.as_secs_f64().max(every));
    let stretch = c.jitter.get() * rng.random::<f64>();
    Duration::from_secs_f64(base * (1.0 + stretch))
}

#[cfg(test)]
mod tests;
