//! The configuration: what the user writes in `governor.toml`, typed.
//!
//! The file has one `[agent]` table and any number of `[[policy]]` tables
//! (the README's "Config"). Every value carries its unit (`"500us"`,
//! `"200/s"`, `0.25` CPUs, `"512MiB"`, ratios such as `0.8`), and every key
//! but a policy's `name`, `signal`, `high`, `low` and `ladder` has a default.
//!
//! Loading never stops at the first problem: [`from_str`] checks the whole
//! file and returns every error, each located at `file:line:col` with what is
//! wrong and how to fix it. Reading the file is the agent's job (`governor`'s
//! `agent::config_file`): this crate does no I/O.

#![warn(missing_docs)]

mod error;
mod parse;
pub mod units;

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

pub use error::{ConfigError, ConfigErrors};
use ipnet::IpNet;
use serde::Serialize;
pub use units::{Bytes, CpuWeight, Cpus, Rate, Ratio, UnitError};

use crate::snapshot::CgroupPath;

/// Where `governor run` and `governor check` look when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/governor/governor.toml";

/// The default configuration shipped in the binary (`systemd/governor.toml`):
/// dry-run, so that running the agent with it never changes anything.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../systemd/governor.toml");

/// The name under which errors in [`EMBEDDED_DEFAULT`] are reported.
pub const EMBEDDED_NAME: &str = "<embedded systemd/governor.toml>";

/// A whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// `[agent]`: settings of the agent itself.
    pub agent: AgentConfig,
    /// `[[policy]]`: the feedback loops, in file order.
    pub policies: Vec<PolicyConfig>,
}

/// `[agent]`: how the agent runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentConfig {
    /// `tick`: how often the agent senses and decides. Default `"100ms"`.
    pub tick: Duration,
    /// `window`: run-queue percentiles (`runq_p99`, `runq_p50`) are of
    /// every wait in the last `window` of ticks, not of one tick (a p99 of a
    /// tick's few dozen wake-ups is their maximum). The tick stays the
    /// control interval. A policy may set its own. Default `"1s"`.
    pub window: Duration,
    /// `metrics_addr`: where Prometheus metrics are served. Default `"127.0.0.1:9929"`.
    pub metrics_addr: SocketAddr,
    /// `status_socket`: the status socket (mode 0600). Default `"/run/governor/governor.sock"`.
    pub status_socket: PathBuf,
    /// `status_group`: a group (name or gid) whose members may read the
    /// status socket besides root (it is then mode 0660, owned by the
    /// group). Default: none, root only.
    pub status_group: Option<String>,
    /// `dry_run`: decide and report `would` decisions, change nothing, for
    /// every policy. Default `false`; `governor run --dry-run` forces it on.
    pub dry_run: bool,
    /// `protect`: targets never acted on, added to the built-in list (the
    /// agent's own cgroup, `/init.scope`, sshd's units and port 22). Cgroup
    /// paths as strings (`"/system.slice/postgresql.service"`), ports as
    /// integers (`5432`). A limit on a cgroup also binds everything below
    /// it, so a cgroup that contains a protected one is protected too.
    pub protect: Vec<Target>,
    /// `seed`: seed of the random source behind recovery jitter. Default:
    /// none, the agent picks one per host (so that hosts do not recover in
    /// step); set it to replay a run exactly.
    pub seed: Option<u64>,
    /// `netns`: the network namespace whose ports the policies name, as a
    /// path (`"/run/netns/web"`, `"/proc/1234/ns/net"`). Default: the
    /// agent's own. Accept queues are read and inbound admission is attached
    /// there, and nowhere else.
    pub netns: Option<PathBuf>,
    /// `journal_dir`: where every change is journaled (with the value it
    /// replaced) before it is made, so that a restart after a crash reverts
    /// it. Default `"/run/governor"` (a tmpfs: a reboot resets cgroups too).
    pub journal_dir: PathBuf,
    /// `record`: record every tick's inputs and decisions for `governor
    /// replay`. Default true.
    pub record: bool,
    /// `record_dir`: where the recording's segments go. Default
    /// `"/var/lib/governor/record"` (the unit's `StateDirectory`).
    pub record_dir: PathBuf,
    /// `record_keep`: segments older than this are deleted. Default 24h.
    pub record_keep: Duration,
    /// `record_max`: the segments take at most this much together, oldest
    /// deleted first. Default 256MiB.
    pub record_max: u64,
}

/// Where `run` records by default.
pub const DEFAULT_RECORD_DIR: &str = "/var/lib/governor/record";

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(100),
            window: DEFAULT_WINDOW,
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9929)),
            status_socket: PathBuf::from("/run/governor/governor.sock"),
            status_group: None,
            dry_run: false,
            protect: Vec::new(),
            seed: None,
            netns: None,
            journal_dir: PathBuf::from("/run/governor"),
            record: true,
            record_dir: PathBuf::from(DEFAULT_RECORD_DIR),
            record_keep: Duration::from_secs(24 * 3600),
            record_max: 256 << 20,
        }
    }
}

/// `[[policy]]`: one feedback loop: a signal, its watermarks, and a ladder of
/// actions climbed one rung at a time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyConfig {
    /// `name`: unique; names the policy in logs, metrics and `status`. Required.
    pub name: String,
    /// `signal`: what the policy measures, e.g.
    /// `{ kind = "runq_p99", cgroup = "/workload/api" }`. Required.
    pub signal: SignalSpec,
    /// `high` trips, `low` clears, with `low < high`; written in the signal's
    /// unit (`"2ms"` for run-queue latency, `0.8` for a fill ratio, `"200/s"`
    /// for a rate). Required.
    pub watermarks: Watermarks,
    /// `for`: how long the signal must stay past a watermark before the
    /// policy steps up (or starts to step down). Default `"1s"`.
    pub hold_for: Duration,
    /// `settle` (or `cooldown`): after a step up, how long to wait before the
    /// next one, so that the action's effect is seen first. Default `"2s"`.
    pub settle: Duration,
    /// `recover_every`: once the signal has stayed below `low` for `for`, one
    /// rung is lifted every `recover_every` (plus jitter and backoff). Default `"3s"`.
    pub recover_every: Duration,
    /// `jitter`: each step down is delayed by a random fraction, up to this
    /// ratio, of its delay, so released clients and hosts do not all return
    /// at once. Default `0.3`.
    pub jitter: Ratio,
    /// `window`: for a run-queue signal, the span of ticks whose waits its
    /// percentile is of. Default: the agent's `window`.
    pub window: Option<Duration>,
    /// `dry_run`: this policy only reports what it would do. Default: the
    /// agent's `dry_run`. (Either one set to `true` makes the policy dry-run.)
    pub dry_run: Option<bool>,
    /// `flap_budget` and `flap_window`: at most this many rung changes per
    /// window; past it the policy holds its rung until old changes age out.
    pub flap_budget: FlapBudget,
    /// `backoff`, `backoff_max`, `retrip_within`, `backoff_reset`: a policy
    /// that trips again soon after stepping down waits longer before its next
    /// step down.
    pub backoff: Backoff,
    /// `ladder`: the actions, mildest first. Required, at least one rung.
    pub ladder: Ladder,
    /// `guard`: an accept-queue guard on a port, armed from the start; the
    /// kernel refuses SYNs while the listener's queue is at the bound,
    /// which the agent sets from the server's drain rate and `max_delay`.
    /// Optional.
    pub guard: Option<crate::decide::guard::GuardSpec>,
}

impl PolicyConfig {
    /// True if this policy only reports: it or the agent is in dry-run.
    pub fn is_dry_run(&self, agent: &AgentConfig) -> bool {
        agent.dry_run || self.dry_run.unwrap_or(false)
    }

    /// The span of its run-queue window: its own `window`, else the agent's.
    pub fn window(&self, agent: &AgentConfig) -> Duration {
        self.window.unwrap_or(agent.window)
    }
}

/// The flap budget: at most `transitions` rung changes per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FlapBudget {
    /// `flap_budget`: rung changes allowed per window. Default `6`.
    pub transitions: u32,
    /// `flap_window`: the sliding window. Default `"60s"`.
    pub window: Duration,
}

impl Default for FlapBudget {
    fn default() -> Self {
        Self {
            transitions: 6,
            window: Duration::from_secs(60),
        }
    }
}

/// Backoff on re-trip: each trip within `retrip_within` of a step down
/// multiplies the delay of later step downs by `factor` (up to `max`);
/// `forget_after` without a trip resets it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Backoff {
    /// `backoff`: multiplier per re-trip, ≥ 1. Default `2.0`.
    pub factor: f64,
    /// `backoff_max`: the longest delay of one step down before jitter. Default `"60s"`.
    pub max: Duration,
    /// `retrip_within`: a trip this soon after a step down counts as a re-trip. Default `"10s"`.
    pub retrip_within: Duration,
    /// `backoff_reset`: after this long without a trip, the backoff is forgotten. Default `"5m"`.
    pub forget_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            factor: 2.0,
            max: Duration::from_secs(60),
            retrip_within: Duration::from_secs(10),
            forget_after: Duration::from_secs(300),
        }
    }
}

/// Default of a policy's `for`.
pub const DEFAULT_FOR: Duration = Duration::from_secs(1);
/// Default of a policy's `settle`.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
/// Default of a policy's `recover_every`.
pub const DEFAULT_RECOVER_EVERY: Duration = Duration::from_secs(3);
/// Default of a policy's `jitter`.
pub const DEFAULT_JITTER: f64 = 0.3;
/// Default of `agent.window` (and so of a policy's).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(1);
/// The longest `window` accepted.
pub const MAX_WINDOW: Duration = Duration::from_secs(60);

/// What a policy measures: a kind of signal and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignalSpec {
    /// `kind`: which figure.
    pub kind: SignalKind,
    /// `cgroup` or `port`: where; the host if neither is given.
    pub scope: Scope,
}

impl fmt::Display for SignalSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Scope::Host => write!(f, "{} of host", self.kind),
            Scope::Cgroup(c) => write!(f, "{} of cgroup {c}", self.kind),
            Scope::Port(p) => write!(f, "{} of port {p}", self.kind),
        }
    }
}

/// Where a signal is measured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Scope {
    /// The whole host.
    Host,
    /// One cgroup (`cgroup = "/workload/api"`).
    Cgroup(CgroupPath),
    /// One local TCP port (`port = 8080`).
    Port(u16),
}

/// The kinds of signal (`signal.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// `runq_p99`: 99th percentile run-queue wait (cgroup, or host). Watermarks are durations.
    RunqP99,
    /// `runq_p50`: median run-queue wait (cgroup, or host). Watermarks are durations.
    RunqP50,
    /// `accept_queue_fill`: accept-queue depth over its limit (port). Watermarks are ratios.
    AcceptQueueFill,
    /// `accepted_rate`: connections accepted per second (port). Watermarks are rates.
    AcceptedRate,
    /// `accept_queue_delay`: how long a connection waits in the listener's
    /// accept queue between its handshake and `accept()` (port), estimated
    /// each interval by Little's law: depth over the rate connections
    /// entered the queue. Watermarks are durations.
    AcceptQueueDelay,
    /// `connect_rate`: outbound connects per second (cgroup). Watermarks are rates.
    ConnectRate,
    /// `psi_cpu_some`: share of time some task stalled on CPU (host or cgroup), avg10. Ratios.
    PsiCpuSome,
    /// `psi_memory_some`: same for memory. Ratios.
    PsiMemorySome,
    /// `psi_io_some`: same for I/O. Ratios.
    PsiIoSome,
}

impl SignalKind {
    /// True for the kinds read from PSI files.
    pub fn is_psi(self) -> bool {
        matches!(
            self,
            Self::PsiCpuSome | Self::PsiMemorySome | Self::PsiIoSome
        )
    }

    /// Every kind, in the order the docs list them.
    pub const ALL: [SignalKind; 9] = [
        Self::RunqP99,
        Self::RunqP50,
        Self::AcceptQueueFill,
        Self::AcceptedRate,
        Self::AcceptQueueDelay,
        Self::ConnectRate,
        Self::PsiCpuSome,
        Self::PsiMemorySome,
        Self::PsiIoSome,
    ];

    /// The name written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Self::RunqP99 => "runq_p99",
            Self::RunqP50 => "runq_p50",
            Self::AcceptQueueFill => "accept_queue_fill",
            Self::AcceptedRate => "accepted_rate",
            Self::AcceptQueueDelay => "accept_queue_delay",
            Self::ConnectRate => "connect_rate",
            Self::PsiCpuSome => "psi_cpu_some",
            Self::PsiMemorySome => "psi_memory_some",
            Self::PsiIoSome => "psi_io_some",
        }
    }

    /// The unit its watermarks are written in.
    pub fn unit(self) -> SignalUnit {
        match self {
            Self::RunqP99 | Self::RunqP50 | Self::AcceptQueueDelay => SignalUnit::Latency,
            Self::AcceptQueueFill | Self::PsiCpuSome | Self::PsiMemorySome | Self::PsiIoSome => {
                SignalUnit::Ratio
            }
            Self::AcceptedRate | Self::ConnectRate => SignalUnit::Rate,
        }
    }
}

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The unit of a signal and of its watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalUnit {
    /// A wait, written as a duration (`"2ms"`); held in microseconds.
    Latency,
    /// A fraction 0–1 (`0.8` or `"80%"`).
    Ratio,
    /// Events per second (`"200/s"`).
    Rate,
}

/// A value of a signal in its unit: a reading or a watermark. `value` is in
/// the unit's base: microseconds, fraction, or events per second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Level {
    /// The unit.
    pub unit: SignalUnit,
    /// The value in the unit's base.
    pub value: f64,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.unit {
            SignalUnit::Latency if self.value >= 1_000_000.0 => {
                write!(f, "{}s", units::trim_float(self.value / 1e6))
            }
            SignalUnit::Latency if self.value >= 1000.0 => {
                write!(f, "{}ms", units::trim_float(self.value / 1e3))
            }
            SignalUnit::Latency => write!(f, "{}us", units::trim_float(self.value)),
            SignalUnit::Ratio => f.write_str(&units::trim_float(self.value)),
            SignalUnit::Rate => write!(f, "{}/s", units::trim_float(self.value)),
        }
    }
}

/// A policy's watermarks: `high` trips, `low` clears, `low < high`.
/// Between them nothing changes (hysteresis).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Watermarks {
    /// `high`: at or past it, the signal is "over".
    pub high: Level,
    /// `low`: below it, the signal is "clear".
    pub low: Level,
}

/// A policy's actions, mildest first. Rungs are cumulative: at rung 2 the
/// actions of rungs 1 and 2 are both in force; stepping down lifts the top one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ladder {
    /// The rungs' actions, `rungs[0]` is rung 1.
    pub rungs: Vec<Action>,
}

impl Ladder {
    /// Number of rungs above rung 0 (nothing applied).
    pub fn len(&self) -> usize {
        self.rungs.len()
    }

    /// True if the ladder has no rung (refused at load).
    pub fn is_empty(&self) -> bool {
        self.rungs.is_empty()
    }

    /// The action that climbing to rung `rung` (1-based) applies.
    pub fn action(&self, rung: usize) -> Option<&Action> {
        rung.checked_sub(1).and_then(|i| self.rungs.get(i))
    }
}

/// What an action acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Target {
    /// A cgroup (and so everything below it).
    Cgroup(CgroupPath),
    /// A local TCP port.
    Port(u16),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cgroup(c) => write!(f, "cgroup {c}"),
            Self::Port(p) => write!(f, "port {p}"),
        }
    }
}

/// How refused connections are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RejectMode {
    /// `reset`: answer with RST (or `EPERM` to a local connect): fail fast. Default.
    #[default]
    Reset,
    /// `drop`: drop silently; the peer retries after its timeout.
    Drop,
}

impl fmt::Display for RejectMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reset => "reset",
            Self::Drop => "drop",
        })
    }
}

/// One rung's action (`{ action = "...", ... }` in a ladder).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// `cpu_weight`: set `cpu.weight` (`weight` 1–10000) or `cpu.idle` (`weight = "idle"`) of `cgroup`.
    CpuWeight {
        /// `cgroup`: the cgroup to deprioritise.
        cgroup: CgroupPath,
        /// `weight`: 1–10000, or `"idle"`.
        weight: CpuWeight,
    },
    /// `cpu_limit`: cap `cgroup` at `cpus` CPUs (`cpu.max`).
    CpuLimit {
        /// `cgroup`: the cgroup to cap.
        cgroup: CgroupPath,
        /// `cpus`: the quota, e.g. `0.25`.
        cpus: Cpus,
    },
    /// `memory_high`: set `memory.high` of `cgroup` to `bytes` (reclaim and slow it past it).
    MemoryHigh {
        /// `cgroup`: the cgroup to squeeze.
        cgroup: CgroupPath,
        /// `bytes`: e.g. `"512MiB"`.
        bytes: Bytes,
    },
    /// `throttle_connections`: admit new connections at `rate` (token
    /// bucket of `burst`), refuse the excess; established ones are untouched.
    ThrottleConnections {
        /// `port` (inbound) or `cgroup` (outbound connects).
        target: Target,
        /// `rate`: e.g. `"200/s"`; for a rate written as a percentage, the
        /// rate it was resolved to when the rung was applied (0 until then).
        rate: Rate,
        /// `rate = "95%"`: a share of the port's accepted rate, measured
        /// while the signal was over `high` (the server's demonstrated
        /// capacity), resolved when the rung is applied. Inbound ports only.
        of_accepted: Option<OfAccepted>,
        /// `burst`: bucket size. Default: one second's worth of `rate` (0:
        /// resolved with the rate).
        burst: u32,
        /// `mode`: `"reset"` (default) or `"drop"`.
        mode: RejectMode,
        /// `exempt`: peers (CIDRs) that always pass, e.g. `["10.0.0.0/8"]`.
        exempt: Vec<IpNet>,
    },
    /// `reject_connections`: refuse every new connection; established ones are untouched.
    RejectConnections {
        /// `port` (inbound) or `cgroup` (outbound connects).
        target: Target,
        /// `mode`: `"reset"` (default) or `"drop"`.
        mode: RejectMode,
        /// `exempt`: peers (CIDRs) that always pass.
        exempt: Vec<IpNet>,
    },
}

impl Action {
    /// The names written as `action = "..."`.
    pub const NAMES: [&'static str; 5] = [
        "cpu_weight",
        "cpu_limit",
        "memory_high",
        "throttle_connections",
        "reject_connections",
    ];

    /// The name written as `action = "..."`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CpuWeight { .. } => "cpu_weight",
            Self::CpuLimit { .. } => "cpu_limit",
            Self::MemoryHigh { .. } => "memory_high",
            Self::ThrottleConnections { .. } => "throttle_connections",
            Self::RejectConnections { .. } => "reject_connections",
        }
    }

    /// What the action acts on.
    pub fn target(&self) -> Target {
        match self {
            Self::CpuWeight { cgroup, .. }
            | Self::CpuLimit { cgroup, .. }
            | Self::MemoryHigh { cgroup, .. } => Target::Cgroup(cgroup.clone()),
            Self::ThrottleConnections { target, .. } | Self::RejectConnections { target, .. } => {
                target.clone()
            }
        }
    }

    /// True if the action makes a cgroup's tasks wait for CPU (weight, quota):
    /// it inflates run-queue latency and CPU pressure of that cgroup.
    fn inflates_cpu_wait(&self) -> bool {
        matches!(self, Self::CpuWeight { .. } | Self::CpuLimit { .. })
    }

    /// True if the action makes a cgroup stall on memory (and the I/O of reclaim).
    fn inflates_memory_wait(&self) -> bool {
        matches!(self, Self::MemoryHigh { .. })
    }

    /// True if applying this action to its target would inflate `signal`:
    /// the policy would be limiting what it measures, and feed on itself.
    pub fn inflates(&self, signal: &SignalSpec) -> bool {
        let Target::Cgroup(target) = self.target() else {
            return false;
        };
        let measured = match &signal.scope {
            Scope::Host => CgroupPath::root(),
            Scope::Cgroup(c) => c.clone(),
            Scope::Port(_) => return false,
        };
        let overlaps = target.is_within(&measured) || measured.is_within(&target);
        let kind_affected = match signal.kind {
            SignalKind::RunqP99 | SignalKind::RunqP50 | SignalKind::PsiCpuSome => {
                self.inflates_cpu_wait()
            }
            SignalKind::PsiMemorySome | SignalKind::PsiIoSome => self.inflates_memory_wait(),
            SignalKind::AcceptQueueFill
            | SignalKind::AcceptedRate
            | SignalKind::AcceptQueueDelay
            | SignalKind::ConnectRate => false,
        };
        overlaps && kind_affected
    }
}

impl fmt::Display for Action {
    /// One phrase: `cpu_limit 0.25 CPUs on cgroup /workload/batch`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CpuWeight { cgroup, weight } => {
                write!(f, "cpu_weight {weight} on cgroup {cgroup}")
            }
            Self::CpuLimit { cgroup, cpus } => write!(f, "cpu_limit {cpus} on cgroup {cgroup}"),
            Self::MemoryHigh { cgroup, bytes } => {
                write!(f, "memory_high {bytes} on cgroup {cgroup}")
            }
            Self::ThrottleConnections {
                target,
                rate,
                of_accepted,
                burst,
                mode,
                ..
            } => {
                f.write_str("throttle_connections ")?;
                match of_accepted {
                    None => write!(f, "{rate}")?,
                    Some(OfAccepted {
                        share,
                        measured: None,
                        ..
                    }) => write!(f, "{}% of the accepted rate", trim_pct(share.get()))?,
                    Some(OfAccepted {
                        share,
                        measured: Some(m),
                        drain,
                    }) => {
                        write!(
                            f,
                            "{rate} ({}% of the accepted {}/s",
                            trim_pct(share.get()),
                            m.round()
                        )?;
                        if *drain > 0.0 {
                            write!(f, ", less {drain}/s to drain the queue")?;
                        }
                        f.write_str(")")?;
                    }
                }
                if *burst > 0 {
                    write!(f, " burst {burst}")?;
                }
                write!(f, " ({mode}) on {target}")
            }
            Self::RejectConnections { target, mode, .. } => {
                write!(f, "reject_connections ({mode}) on {target}")
            }
        }
    }
}

fn trim_pct(share: f64) -> String {
    let p = (share * 1000.0).round() / 10.0;
    if p.fract() == 0.0 {
        format!("{p:.0}")
    } else {
        format!("{p:.1}")
    }
}

/// A throttle rate written as a share of the accepted rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OfAccepted {
    /// The share, e.g. 0.95.
    pub share: Ratio,
    /// The accepted rate it was resolved from (connections per second),
    /// `None` in the config.
    pub measured: Option<f64>,
    /// Connections per second held back to drain the backlog found when it
    /// was resolved (0 once drained).
    pub drain: f64,
}

impl Action {
    /// This action with a rate written as a share of the accepted rate
    /// resolved against `accepted` connections per second, less `drain`
    /// per second (to drain a backlog), at least 1/s; the burst, if left to
    /// its default, one second's worth. Other actions are returned as they are.
    pub fn resolved(&self, accepted: f64, drain: f64) -> Action {
        let mut a = self.clone();
        if let Action::ThrottleConnections {
            rate,
            of_accepted: Some(of),
            burst,
            ..
        } = &mut a
        {
            let finite = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
            let (accepted, drain) = (finite(accepted), finite(drain));
            let r = of.share.get() * accepted - drain;
            *rate = Rate::per_second(r.round().max(1.0));
            of.measured = Some(accepted);
            of.drain = drain.round();
            if *burst == 0 {
                *burst = rate.as_per_second().ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
            }
        }
        a
    }

    /// The port whose accepted rate this action's rate is a share of.
    pub fn of_accepted_port(&self) -> Option<u16> {
        match self {
            Action::ThrottleConnections {
                target: Target::Port(p),
                of_accepted: Some(_),
                ..
            } => Some(*p),
            _ => None,
        }
    }
}

/// Targets that are never acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Protected {
    entries: Vec<(Target, String)>,
    /// The agent's own cgroup: protected with its ancestors (a limit on them
    /// binds the agent), but not its descendants (a limit there does not).
    agent: Option<CgroupPath>,
}

impl Protected {
    /// The built-in list: the agent's own cgroup (if known), `/init.scope`,
    /// sshd's units, and port 22 (sshd).
    pub fn builtin(agent_cgroup: Option<&CgroupPath>) -> Self {
        let mut entries = Vec::new();
        for (path, why) in [
            ("/init.scope", "init (PID 1)"),
            ("/system.slice/ssh.service", "sshd"),
            ("/system.slice/sshd.service", "sshd"),
        ] {
            if let Ok(p) = CgroupPath::new(path) {
                entries.push((Target::Cgroup(p), why.to_owned()));
            }
        }
        entries.push((Target::Port(22), "sshd".to_owned()));
        Self {
            entries,
            agent: agent_cgroup.cloned(),
        }
    }

    /// The built-in list plus the config's `agent.protect`.
    pub fn for_config(config: &Config, agent_cgroup: Option<&CgroupPath>) -> Self {
        let mut p = Self::builtin(agent_cgroup);
        for t in &config.agent.protect {
            p.entries
                .push((t.clone(), "listed in agent.protect".to_owned()));
        }
        p
    }

    /// Why `target` is protected, or `None` if it may be acted on. A cgroup is
    /// protected if it is, contains, or lies below a protected cgroup.
    pub fn covers(&self, target: &Target) -> Option<String> {
        if let (Some(agent), Target::Cgroup(t)) = (&self.agent, target)
            && agent.is_within(t)
        {
            return Some(if t == agent {
                format!("{target} is protected (the agent's own cgroup)")
            } else {
                format!("{target} contains the agent's own cgroup {agent}")
            });
        }
        self.entries.iter().find_map(|(p, why)| {
            let hit = match (target, p) {
                (Target::Cgroup(t), Target::Cgroup(p)) => t.is_within(p) || p.is_within(t),
                (Target::Port(t), Target::Port(p)) => t == p,
                _ => false,
            };
            hit.then(|| match (target, p) {
                (Target::Cgroup(t), Target::Cgroup(p)) if t != p => {
                    format!("{target} contains or lies in {p} ({why})")
                }
                _ => format!("{target} is protected ({why})"),
            })
        })
    }

    /// The protected targets, each with why (the agent's own cgroup first).
    pub fn iter(&self) -> impl Iterator<Item = (Target, &str)> {
        self.agent
            .iter()
            .map(|a| (Target::Cgroup(a.clone()), "the agent's own cgroup"))
            .chain(self.entries.iter().map(|(t, w)| (t.clone(), w.as_str())))
    }
}

/// Options of loading that come from the running agent rather than the file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// The agent's own cgroup, protected like the built-in targets.
    pub agent_cgroup: Option<CgroupPath>,
}

/// Parses and checks a configuration; `source_name` names it in errors.
/// Returns every error of the file, not only the first.
pub fn from_str(source: &str, source_name: &str) -> Result<Config, ConfigErrors> {
    from_str_with(source, source_name, &LoadOptions::default())
}

/// [`from_str`] with the agent's [`LoadOptions`].
pub fn from_str_with(
    source: &str,
    source_name: &str,
    options: &LoadOptions,
) -> Result<Config, ConfigErrors> {
    parse::parse(source, options).map_err(|errors| ConfigErrors {
        source_name: source_name.to_owned(),
        errors,
    })
}

#[cfg(test)]
mod tests;
