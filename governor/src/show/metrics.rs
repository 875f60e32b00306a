//! Prometheus metrics (`governor_` prefix, base units) and the `/metrics`
//! endpoint.
//!
//! What the kernel counts is exported as counters and histograms,
//! cumulative since the agent started, so that any scrape interval loses
//! nothing and rates and quantiles are PromQL's (`rate`,
//! `histogram_quantile`); gauges are only for levels (queue depths, rungs,
//! signals). The agent ticks every 100 ms with up to a thousand cgroups, for
//! scrapes every 15 s or so: a tick only adds its snapshot's counts into
//! plain arrays ([`Metrics::observe`]), and the exposition is built from
//! them when scraped (a custom collector), not by setting a thousand
//! labelled metrics per tick.
//!
//! Label cardinality is bounded: per-cgroup series exist only for the
//! cgroups policies name (watched) and for a stable top of the others by
//! recent waits and connects ([`TOP_CGROUPS`], kept for [`TOP_KEEP`] after
//! they leave it); series of cgroups that drop out, and of policies and
//! targets a reload removed, are removed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::Duration,
};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
    core::{Collector, Desc},
    proto::{self, MetricFamily, MetricType},
};

use governor_engine::{
    config::{Config, Level, SignalUnit, Target},
    decide::{Cause, Decision, DecisionKind, PolicyStatus},
    snapshot::{CgroupPath, Culprit, PsiTotal, RunqHist, Snapshot, buckets},
};

/// Cgroups exported besides the watched ones: the busiest this many by
/// run-queue waits, and as many by outbound connects, of each ranking.
pub const TOP_CGROUPS: usize = 20;
/// How often the top is ranked, by the counts since the last ranking.
pub const RANK_EVERY: Duration = Duration::from_secs(10);
/// How long a cgroup keeps its series after it left the top (a cgroup
/// near the edge of the top must not make its series come and go).
pub const TOP_KEEP: Duration = Duration::from_secs(300);
/// Cgroups exported besides the watched ones, at most: the top and those
/// kept after they left it (the earliest to leave go first).
pub const MAX_KEPT: usize = 2 * TOP_CGROUPS;
/// The figures of a cgroup or port not seen for this long, and not
/// exported, are forgotten (cgroups come and go).
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// Finite bucket bounds of the run-queue histograms: every power of two
/// from 2^MIN_EXP ns (1.024 µs) to 2^MAX_EXP ns (4.29 s). Each is a
/// boundary of the kernel's log-linear buckets, so every kernel bucket
/// falls into exactly one exported bucket: the exported counts are the
/// kernel's, summed, with nothing split or guessed.
const EDGES: usize = (buckets::MAX_EXP - buckets::MIN_EXP + 1) as usize;

/// The exported bucket (index into [`RunqCounts::counts`]; [`EDGES`] is
/// +Inf) that kernel bucket `b` falls into.
const fn slot(b: usize) -> usize {
    if b == 0 {
        0
    } else if b >= buckets::BUCKETS - 1 {
        EDGES
    } else {
        (b - 1) / buckets::SUB as usize + 1
    }
}

/// The upper bound (`le`) of exported bucket `i < EDGES`, in nanoseconds.
fn edge_ns(i: usize) -> u64 {
    1u64 << (buckets::MIN_EXP as usize + i)
}

/// Run-queue waits since start, in the exported buckets (not cumulative
/// over buckets; [`RunqCounts::histogram`] makes them so).
#[derive(Debug, Clone, Default)]
struct RunqCounts {
    counts: [u64; EDGES + 1],
    /// Sum of the kernel buckets' midpoints (the overflow bucket's low
    /// bound) over every wait, nanoseconds: the kernel keeps no sum.
    sum_ns: f64,
}

impl RunqCounts {
    /// Adds one interval's histogram; returns its number of waits.
    fn add(&mut self, h: &RunqHist) -> u64 {
        let mut n = 0;
        for (b, c) in h.iter() {
            self.counts[slot(b)] += c;
            let (lo, hi) = buckets::range(b);
            let mid = if hi == u64::MAX {
                lo as f64
            } else {
                (lo as f64 + hi as f64) / 2.0
            };
            self.sum_ns += mid * c as f64;
            n += c;
        }
        n
    }

    fn histogram(&self) -> proto::Histogram {
        let mut h = proto::Histogram::default();
        let mut seen = 0;
        let mut out = Vec::with_capacity(EDGES);
        for (i, c) in self.counts[..EDGES].iter().enumerate() {
            seen += c;
            let mut b = proto::Bucket::default();
            b.set_upper_bound(edge_ns(i) as f64 / 1e9);
            b.set_cumulative_count(seen);
            out.push(b);
        }
        // The encoder adds +Inf with the sample count.
        h.set_bucket(out);
        h.set_sample_count(seen + self.counts[EDGES]);
        h.set_sample_sum(self.sum_ns / 1e9);
        h
    }
}

/// What a cgroup did since start.
#[derive(Debug, Default)]
struct CgroupCounts {
    runq: RunqCounts,
    connects: u64,
    /// Counts since the last ranking.
    recent_waits: u64,
    recent_connects: u64,
    /// `Snapshot::ts_ms` of the last snapshot that had it.
    seen_ms: u64,
    /// Run-queue wait behind each culprit since start (µs), and until when
    /// its series is kept (ms): [`TOP_KEEP`] after it was last in the
    /// cgroup's top [`Culprit::TOP`], at most [`MAX_CULPRITS`] of them.
    culprits: HashMap<String, (u64, u64)>,
}

/// Culprit series of one cgroup at most: its top and those kept after they
/// left it (the earliest to leave go first).
pub const MAX_CULPRITS: usize = 2 * Culprit::TOP;

/// What a port did since start, and its queue at the last snapshot.
#[derive(Debug, Default)]
struct PortCounts {
    accepted: u64,
    overflows: u64,
    seen_ms: u64,
}

/// Everything the collector exposes, filled per tick and by the agent.
#[derive(Default)]
struct Exposed {
    host: Option<RunqCounts>,
    cgroups: HashMap<CgroupPath, CgroupCounts>,
    /// Cgroups in the top (or kept after it), with when they leave it (ms).
    kept: HashMap<CgroupPath, u64>,
    next_rank_ms: u64,
    /// Cgroups policies name, sorted (always exported).
    watched: Arc<[CgroupPath]>,
    ports: BTreeMap<u16, PortCounts>,
    last: Option<Arc<Snapshot>>,
    policies: Option<Arc<Vec<PolicyStatus>>>,
    /// Policies of the config in force, with their watermarks (high, low)
    /// in the signal's base unit; `None` before [`Metrics::configure`]
    /// (`governor observe`).
    configured: Option<BTreeMap<String, (f64, f64)>>,
    /// Cumulative admission verdicts by target: (admitted, refused,
    /// dropped, guarded).
    verdicts: BTreeMap<String, (u64, u64, u64, u64)>,
    /// The bound of each armed accept-queue guard, by port.
    guard_bounds: BTreeMap<u16, u32>,
}

impl Exposed {
    fn add(&mut self, s: &Snapshot, watched: Arc<[CgroupPath]>) {
        let now = s.ts_ms;
        if let Some(h) = &s.host.runq_hist {
            self.host.get_or_insert_with(Default::default).add(h);
        }
        for c in &s.cgroups {
            let counts = match self.cgroups.get_mut(&c.path) {
                Some(counts) => counts,
                None => self.cgroups.entry(c.path.clone()).or_default(),
            };
            if let Some(h) = &c.runq_hist {
                counts.recent_waits += counts.runq.add(h);
            }
            counts.connects += c.conn_out;
            counts.recent_connects += c.conn_out;
            counts.seen_ms = now;
            let until = now + TOP_KEEP.as_millis() as u64;
            for k in &c.culprits {
                let e = counts.culprits.entry(k.cgroup.clone()).or_default();
                *e = (e.0 + k.wait_us, until);
            }
            if !counts.culprits.is_empty() {
                counts.culprits.retain(|_, (_, u)| *u > now);
                if counts.culprits.len() > MAX_CULPRITS {
                    let mut by_until: Vec<(u64, String)> = (counts.culprits.iter())
                        .map(|(n, (_, u))| (*u, n.clone()))
                        .collect();
                    by_until.sort_unstable();
                    let extra = counts.culprits.len() - MAX_CULPRITS;
                    for (_, n) in by_until.into_iter().take(extra) {
                        counts.culprits.remove(&n);
                    }
                }
            }
        }
        for p in &s.ports {
            let counts = self.ports.entry(p.port).or_default();
            counts.accepted += p.accepted;
            counts.overflows += p.overflows;
            counts.seen_ms = now;
        }
        self.watched = watched;
        if now >= self.next_rank_ms {
            self.rank(now);
            self.next_rank_ms = now + RANK_EVERY.as_millis() as u64;
        }
    }

    /// Ranks the cgroups by their counts since the last ranking: the top
    /// [`TOP_CGROUPS`] by waits and by connects are kept for [`TOP_KEEP`];
    /// forgets what has not been seen for [`FORGET_AFTER`].
    fn rank(&mut self, now: u64) {
        let until = now + TOP_KEEP.as_millis() as u64;
        for key in [
            (|c: &CgroupCounts| c.recent_waits) as fn(&CgroupCounts) -> u64,
            |c| c.recent_connects,
        ] {
            let mut busy: Vec<(&CgroupPath, u64)> = (self.cgroups.iter())
                .map(|(p, c)| (p, key(c)))
                .filter(|(_, n)| *n > 0)
                .collect();
            busy.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            for (path, _) in busy.into_iter().take(TOP_CGROUPS) {
                self.kept.insert(path.clone(), until);
            }
        }
        self.kept.retain(|_, u| *u > now);
        if self.kept.len() > MAX_KEPT {
            let mut by_until: Vec<(u64, CgroupPath)> =
                self.kept.iter().map(|(p, u)| (*u, p.clone())).collect();
            by_until.sort_unstable();
            for (_, p) in by_until.into_iter().take(self.kept.len() - MAX_KEPT) {
                self.kept.remove(&p);
            }
        }
        let forget = FORGET_AFTER.as_millis() as u64;
        let (kept, watched) = (&self.kept, &self.watched);
        self.cgroups.retain(|p, c| {
            c.recent_waits = 0;
            c.recent_connects = 0;
            now.saturating_sub(c.seen_ms) < forget
                || kept.contains_key(p)
                || watched.binary_search(p).is_ok()
        });
        self.ports
            .retain(|_, c| now.saturating_sub(c.seen_ms) < forget);
    }

    /// The cgroups whose series are exported, in path order.
    fn exported(&self) -> Vec<(&CgroupPath, &CgroupCounts)> {
        let mut out: Vec<_> = (self.cgroups.iter())
            .filter(|(p, _)| self.kept.contains_key(*p) || self.watched.binary_search(p).is_ok())
            .collect();
        out.sort_unstable_by(|a, b| a.0.cmp(b.0));
        out
    }

    fn is_configured(&self, policy: &str) -> bool {
        self.configured
            .as_ref()
            .is_none_or(|c| c.contains_key(policy))
    }

    fn families(&self) -> Vec<MetricFamily> {
        let mut f = Families::default();
        if let Some(h) = &self.host {
            f.histogram(&HOST_RUNQ, vec![], h.histogram());
        }
        for (path, c) in self.exported() {
            let labels = vec![("cgroup", path.to_string())];
            f.histogram(&CGROUP_RUNQ, labels.clone(), c.runq.histogram());
            f.counter(&CGROUP_CONNECTS, labels, c.connects as f64);
            let mut culprits: Vec<_> = c.culprits.iter().collect();
            culprits.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (culprit, (us, _)) in culprits {
                let labels = vec![("cgroup", path.to_string()), ("culprit", culprit.clone())];
                f.counter(&CGROUP_CULPRIT, labels, *us as f64 / 1e6);
            }
        }
        for (port, c) in &self.ports {
            let labels = vec![("port", port.to_string())];
            f.counter(&PORT_ACCEPTED, labels.clone(), c.accepted as f64);
            f.counter(&PORT_OVERFLOWS, labels, c.overflows as f64);
        }
        for (port, bound) in &self.guard_bounds {
            f.gauge(
                &GUARD_BOUND,
                vec![("port", port.to_string())],
                f64::from(*bound),
            );
        }
        for (target, (admitted, refused, dropped, guarded)) in &self.verdicts {
            for (verdict, n) in [
                ("admitted", admitted),
                ("refused", refused),
                ("dropped", dropped),
                ("guarded", guarded),
            ] {
                let labels = vec![("target", target.clone()), ("verdict", verdict.into())];
                f.counter(&VERDICTS, labels, *n as f64);
            }
        }
        if let Some(s) = &self.last {
            for p in &s.ports {
                let labels = vec![("port", p.port.to_string())];
                f.gauge(&PORT_QUEUE, labels.clone(), f64::from(p.accept_queue));
                f.gauge(
                    &PORT_QUEUE_MAX,
                    labels.clone(),
                    f64::from(p.accept_queue_max),
                );
                if let Some(us) =
                    governor_engine::decide::signal::accept_queue_delay_us(p, s.interval_ms)
                {
                    f.gauge(&PORT_QUEUE_DELAY, labels, us / 1e6);
                }
            }
            let scopes = std::iter::once(("host".to_owned(), s.host.psi))
                .chain(s.cgroups.iter().map(|c| (c.path.to_string(), c.psi)));
            for (scope, psi) in scopes {
                let Some(psi) = psi else { continue };
                for (resource, total) in [
                    ("cpu", psi.cpu_total),
                    ("memory", psi.memory_total),
                    ("io", psi.io_total),
                ] {
                    let Some(PsiTotal { some_us, full_us }) = total else {
                        continue;
                    };
                    for (kind, us) in [("some", Some(some_us)), ("full", full_us)] {
                        let Some(us) = us else { continue };
                        let labels = vec![
                            ("kind", kind.to_owned()),
                            ("resource", resource.to_owned()),
                            ("scope", scope.clone()),
                        ];
                        f.counter(&PRESSURE, labels, us as f64 / 1e6);
                    }
                }
            }
            f.gauge(&MISSING, vec![], s.missing.len() as f64);
        }
        for p in self.policies.iter().flat_map(|p| p.iter()) {
            if !self.is_configured(&p.name) {
                continue;
            }
            let policy = || vec![("policy", p.name.to_string())];
            f.gauge(&RUNG, policy(), p.rung as f64);
            if let Some(v) = p.value {
                f.gauge(&SIGNAL, policy(), base_unit(v));
            }
            f.gauge(&DRY_RUN, policy(), f64::from(u8::from(p.dry_run)));
            for (reason, held) in [
                ("action_failed", p.failed.is_some()),
                ("flap_budget", p.flap_held),
                ("no_data", p.no_data),
            ] {
                let mut labels = policy();
                labels.push(("reason", reason.into()));
                f.gauge(&HELD, labels, f64::from(u8::from(held)));
            }
            if let Some((high, low)) = self.configured.as_ref().and_then(|c| c.get(&*p.name)) {
                for (edge, v) in [("high", high), ("low", low)] {
                    let mut labels = policy();
                    labels.push(("watermark", edge.into()));
                    f.gauge(&WATERMARK, labels, *v);
                }
            }
        }
        f.done()
    }
}

/// A family of the collector: name, help, type, label names (sorted).
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const HOST_RUNQ: Family = Family {
    name: "governor_host_runq_wait_seconds",
    help: "Run-queue waits of every task on the host (wakeup or preemption to running), since the agent started. Buckets are the kernel's own, summed into powers of two from 1.024us to 4.29s; _sum adds each wait as the midpoint of its kernel bucket (within 6.25%), as the kernel keeps no sum.",
    kind: MetricType::HISTOGRAM,
    labels: &[],
};
const CGROUP_RUNQ: Family = Family {
    name: "governor_cgroup_runq_wait_seconds",
    help: "Run-queue waits of a cgroup's tasks since the agent started, for the cgroups policies name and the busiest others (kept 5 minutes after they leave the top). Buckets and _sum as governor_host_runq_wait_seconds.",
    kind: MetricType::HISTOGRAM,
    labels: &["cgroup"],
};
const CGROUP_CONNECTS: Family = Family {
    name: "governor_cgroup_connects_total",
    help: "Outbound TCP connects made by a cgroup's tasks since the agent started (same cgroups as governor_cgroup_runq_wait_seconds).",
    kind: MetricType::COUNTER,
    labels: &["cgroup"],
};
const CGROUP_CULPRIT: Family = Family {
    name: "governor_cgroup_runq_wait_culprit_seconds_total",
    help: "Run-queue wait of a watched cgroup's tasks since the agent started, by the cgroup that ran on its CPU while it waited, each charged its overlap (culprit=\"(idle)\": nothing ran, as for a cgroup throttled by its own quota; culprit = the cgroup itself: its own other tasks). The top 5 culprits of each tick per watched cgroup, kept 5 minutes after they leave it, at most 10 per cgroup.",
    kind: MetricType::COUNTER,
    labels: &["cgroup", "culprit"],
};
const PORT_ACCEPTED: Family = Family {
    name: "governor_port_accepted_connections_total",
    help: "TCP handshakes completed (SYN_RECV to ESTABLISHED) on a local port since the agent started.",
    kind: MetricType::COUNTER,
    labels: &["port"],
};
const PORT_OVERFLOWS: Family = Family {
    name: "governor_port_accept_overflows_total",
    help: "Accept-queue overflows attributed to a port whose queue was full (host-wide ListenOverflows), since the agent started.",
    kind: MetricType::COUNTER,
    labels: &["port"],
};
const PORT_QUEUE: Family = Family {
    name: "governor_port_accept_queue",
    help: "Connections waiting in the accept queue of a listening port.",
    kind: MetricType::GAUGE,
    labels: &["port"],
};
const PORT_QUEUE_MAX: Family = Family {
    name: "governor_port_accept_queue_max",
    help: "Accept-queue limit (backlog) of a listening port.",
    kind: MetricType::GAUGE,
    labels: &["port"],
};
const PORT_QUEUE_DELAY: Family = Family {
    name: "governor_port_accept_queue_delay_seconds",
    help: "Estimated wait of a connection in the accept queue of a listening port in the last interval (Little's law: depth over the rate connections entered it; a queue that did not move reads the interval).",
    kind: MetricType::GAUGE,
    labels: &["port"],
};
const GUARD_BOUND: Family = Family {
    name: "governor_port_guard_bound",
    help: "The bound of a port's accept-queue guard: the kernel refuses a new connection at SYN time while the listener's accept queue holds this many or more (set by the agent from the drain rate it sees and the guard's max_delay).",
    kind: MetricType::GAUGE,
    labels: &["port"],
};
const VERDICTS: Family = Family {
    name: "governor_admission_verdicts_total",
    help: "Connections the kernel's admission programs judged on a target a policy throttles, rejects or guards (target=\"port N\" or \"cgroup PATH\"), counted in the kernel since the enforcement programs were loaded: verdict=admitted (exempt peers included), refused (reset by a throttle or reject), dropped (dropped by one) or guarded (refused at SYN time by the port's accept-queue guard, reset or dropped as its mode says).",
    kind: MetricType::COUNTER,
    labels: &["target", "verdict"],
};
const PRESSURE: Family = Family {
    name: "governor_pressure_stalled_seconds_total",
    help: "Pressure stall time (PSI total=) of the host (scope=host) or of a cgroup a PSI policy reads (scope=its path), by resource: kind=some (some task stalled) or full (every non-idle task stalled at once; absent where the kernel has no full line).",
    kind: MetricType::COUNTER,
    labels: &["kind", "resource", "scope"],
};
const MISSING: Family = Family {
    name: "governor_missing_signals",
    help: "Signals that could not be measured in the last interval.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const RUNG: Family = Family {
    name: "governor_policy_rung",
    help: "The rung a policy is on (0: nothing imposed; in dry-run, the rung it would be on).",
    kind: MetricType::GAUGE,
    labels: &["policy"],
};
const SIGNAL: Family = Family {
    name: "governor_policy_signal",
    help: "The last value of a policy's signal in its base unit: seconds for run-queue signals (the percentile over the policy's window), a ratio 0-1 for accept-queue fill and PSI, per second for rates; absent while there is no data.",
    kind: MetricType::GAUGE,
    labels: &["policy"],
};
const WATERMARK: Family = Family {
    name: "governor_policy_watermark",
    help: "A policy's watermarks in the unit of governor_policy_signal: at or over high it steps up, under low it steps down.",
    kind: MetricType::GAUGE,
    labels: &["policy", "watermark"],
};
const DRY_RUN: Family = Family {
    name: "governor_policy_dry_run",
    help: "1 if a policy only reports what it would do, 0 if it acts.",
    kind: MetricType::GAUGE,
    labels: &["policy"],
};
const HELD: Family = Family {
    name: "governor_policy_held",
    help: "1 if a policy holds its rung: flap budget spent (reason=flap_budget), no data (reason=no_data), or a change the actuators failed to carry out, retried with backoff (reason=action_failed).",
    kind: MetricType::GAUGE,
    labels: &["policy", "reason"],
};
const FAMILIES: [&Family; 16] = [
    &HOST_RUNQ,
    &CGROUP_RUNQ,
    &CGROUP_CONNECTS,
    &CGROUP_CULPRIT,
    &PORT_ACCEPTED,
    &PORT_OVERFLOWS,
    &PORT_QUEUE,
    &PORT_QUEUE_MAX,
    &VERDICTS,
    &PRESSURE,
    &MISSING,
    &RUNG,
    &SIGNAL,
    &WATERMARK,
    &DRY_RUN,
    &HELD,
];

/// Metric families being built, by name.
#[derive(Default)]
struct Families(BTreeMap<&'static str, MetricFamily>);

impl Families {
    fn push(
        &mut self,
        family: &Family,
        labels: Vec<(&str, String)>,
        fill: impl FnOnce(&mut proto::Metric),
    ) {
        debug_assert!(
            labels
                .iter()
                .map(|(n, _)| *n)
                .eq(family.labels.iter().copied())
        );
        let mf = self.0.entry(family.name).or_insert_with(|| {
            let mut mf = MetricFamily::default();
            mf.set_name(family.name.into());
            mf.set_help(family.help.into());
            mf.set_field_type(family.kind);
            mf
        });
        let mut m = proto::Metric::default();
        m.set_label(
            labels
                .into_iter()
                .map(|(name, value)| {
                    let mut l = proto::LabelPair::default();
                    l.set_name(name.into());
                    l.set_value(value);
                    l
                })
                .collect(),
        );
        fill(&mut m);
        mf.mut_metric().push(m);
    }

    fn histogram(&mut self, family: &Family, labels: Vec<(&str, String)>, h: proto::Histogram) {
        self.push(family, labels, |m| m.set_histogram(h));
    }

    fn counter(&mut self, family: &Family, labels: Vec<(&str, String)>, v: f64) {
        self.push(family, labels, |m| {
            let mut c = proto::Counter::default();
            c.set_value(v);
            m.set_counter(c);
        });
    }

    fn gauge(&mut self, family: &Family, labels: Vec<(&str, String)>, v: f64) {
        self.push(family, labels, |m| {
            let mut g = proto::Gauge::default();
            g.set_value(v);
            m.set_gauge(g);
        });
    }

    fn done(self) -> Vec<MetricFamily> {
        self.0.into_values().collect()
    }
}

/// The families built from snapshots and statuses at each scrape.
struct Collected {
    exposed: Arc<Mutex<Exposed>>,
    descs: Vec<Desc>,
}

impl Collector for Collected {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        match self.exposed.lock() {
            Ok(e) => e.families(),
            Err(_) => Vec::new(),
        }
    }
}

/// A level in its signal's base unit: seconds for waits (held in µs).
fn base_unit(l: Level) -> f64 {
    match l.unit {
        SignalUnit::Latency => l.value / 1e6,
        SignalUnit::Ratio | SignalUnit::Rate => l.value,
    }
}

/// The running kernel's release (`uname -r`), or "unknown".
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Removes the series of `vec` whose labels `keep` refuses.
fn retain<T: prometheus::core::MetricVecBuilder>(
    vec: &prometheus::core::MetricVec<T>,
    keep: impl Fn(&HashMap<&str, &str>) -> bool,
) {
    for mf in vec.collect() {
        for m in mf.get_metric() {
            let labels: HashMap<&str, &str> = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            if !keep(&labels) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    exposed: Arc<Mutex<Exposed>>,
    probe_events: IntCounterVec,
    probe_errors: IntCounterVec,
    /// The whole of one tick of the agent's loop.
    pub tick_duration: Histogram,
    decisions: IntCounterVec,
    flap_exhausted: IntCounterVec,
    action_errors: IntCounterVec,
    stale_ticks: prometheus::IntCounter,
    drift_total: IntCounterVec,
    drift: prometheus::GaugeVec,
    reloads: IntCounterVec,
    last_reload: Gauge,
    /// (policy, target) whose `governor_drift` is 1.
    drifted: Mutex<HashSet<(String, String)>>,
    last_counters: Mutex<BTreeMap<&'static str, u64>>,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let exposed = Arc::new(Mutex::new(Exposed::default()));
        let descs = FAMILIES
            .iter()
            .map(|f| {
                Desc::new(
                    f.name.into(),
                    f.help.into(),
                    f.labels.iter().map(|l| (*l).to_owned()).collect(),
                    HashMap::new(),
                )
                .unwrap_or_else(|e| panic!("metric {}: {e}", f.name))
            })
            .collect();
        let m = Self {
            registry: Registry::new(),
            exposed: Arc::clone(&exposed),
            probe_events: counter_vec(
                "governor_probe_events_total",
                "Events seen by the kernel probes since they were loaded, by probe.",
                &["probe"],
            ),
            probe_errors: counter_vec(
                "governor_probe_errors_total",
                "Kernel-side entries that did not fit their map (map full) since the probes were loaded, by map.",
                &["map"],
            ),
            tick_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "governor_tick_duration_seconds",
                    "Time the agent's loop took for one tick: taking the newest snapshot, deciding, carrying out the decisions (and retries and drift checks), and publishing metrics and status. Sensing runs on its own thread and is not included.",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ]),
            )
            .unwrap_or_else(|e| panic!("metric: {e}")),
            decisions: counter_vec(
                "governor_decisions_total",
                "Decisions by policy, action, kind (applied, would, reverted, refused) and direction (up: a step up; down: a step down; reset: every rung released at a reload or shutdown, or the rung in force re-set).",
                &["policy", "action", "kind", "direction"],
            ),
            flap_exhausted: counter_vec(
                "governor_flap_budget_exhausted_total",
                "Times a policy's flap budget was spent and it held its rung.",
                &["policy"],
            ),
            action_errors: counter_vec(
                "governor_action_errors_total",
                "Decisions that could not be carried out, by policy and action.",
                &["policy", "action"],
            ),
            stale_ticks: prometheus::IntCounter::new(
                "governor_stale_ticks_total",
                "Ticks without a new snapshot (sensing slower than the tick); nothing is decided on them.",
            )
            .unwrap_or_else(|e| panic!("metric: {e}")),
            drift_total: counter_vec(
                "governor_drift_total",
                "Times a value a policy holds on a target was found changed by someone else (systemctl set-property, a cgroup file write): drift episodes started.",
                &["policy", "target"],
            ),
            drift: prometheus::GaugeVec::new(
                Opts::new(
                    "governor_drift",
                    "1 while a value a policy holds on a target is changed by someone else (drift), 0 once it holds again.",
                ),
                &["policy", "target"],
            )
            .unwrap_or_else(|e| panic!("metric: {e}")),
            reloads: counter_vec(
                "governor_config_reloads_total",
                "Config reloads (SIGHUP) by result: success, or failure (the config was invalid and the running policies stayed).",
                &["result"],
            ),
            last_reload: Gauge::new(
                "governor_config_last_reload_success_timestamp_seconds",
                "When the config in force was loaded (at start or by the last successful reload), seconds since the Unix epoch.",
            )
            .unwrap_or_else(|e| panic!("metric: {e}")),
            drifted: Mutex::new(HashSet::new()),
            last_counters: Mutex::new(BTreeMap::new()),
        };
        for result in ["success", "failure"] {
            let _ = m.reloads.with_label_values(&[result]);
        }
        let build_info = IntGaugeVec::new(
            Opts::new(
                "governor_build_info",
                "1, labelled with the agent's version, the git commit it was built from (unknown outside a git checkout) and the running kernel's release.",
            ),
            &["version", "revision", "kernel"],
        )
        .unwrap_or_else(|e| panic!("metric: {e}"));
        build_info
            .with_label_values(&[
                env!("CARGO_PKG_VERSION"),
                env!("GOVERNOR_REVISION"),
                &kernel_release(),
            ])
            .set(1);
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(Collected { exposed, descs }),
            Box::new(build_info),
            Box::new(m.probe_events.clone()),
            Box::new(m.probe_errors.clone()),
            Box::new(m.tick_duration.clone()),
            Box::new(m.decisions.clone()),
            Box::new(m.flap_exhausted.clone()),
            Box::new(m.action_errors.clone()),
            Box::new(m.stale_ticks.clone()),
            Box::new(m.drift_total.clone()),
            Box::new(m.drift.clone()),
            Box::new(m.reloads.clone()),
            Box::new(m.last_reload.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for c in collectors {
            m.registry
                .register(c)
                .unwrap_or_else(|e| panic!("registering a metric: {e}"));
        }
        m
    }

    fn exposed(&self) -> Option<MutexGuard<'_, Exposed>> {
        self.exposed.lock().ok()
    }

    /// Adds one snapshot's counts (run-queue histograms, connects, accepts,
    /// overflows) to the totals; levels (queues, PSI, missing signals) are
    /// shown from the latest. `watched` cgroups (sorted) are always
    /// exported. Cheap: no labelled metric is touched.
    pub fn observe(&self, s: Arc<Snapshot>, watched: Arc<[CgroupPath]>) {
        if let Some(mut e) = self.exposed() {
            e.add(&s, watched);
            e.last = Some(s);
        }
    }

    /// Records every policy's rung, signal and holds, shown at the next scrape.
    pub fn policies(&self, statuses: Arc<Vec<PolicyStatus>>) {
        if let Some(mut e) = self.exposed() {
            e.policies = Some(statuses);
        }
    }

    /// The config now in force (at start and after each reload): its
    /// policies' watermarks are shown, and every series of a policy it no
    /// longer has, or of a target none of its policies names, is removed.
    /// Call it after the decisions of the reload were counted.
    pub fn configure(&self, cfg: &Config) {
        let policies: BTreeMap<String, (f64, f64)> = (cfg.policies.iter())
            .map(|p| {
                let w = p.watermarks;
                (p.name.clone(), (base_unit(w.high), base_unit(w.low)))
            })
            .collect();
        let targets: HashSet<Target> = (cfg.policies.iter())
            .flat_map(|p| {
                let guard = p.guard.as_ref().map(|g| Target::Port(g.port));
                p.ladder.rungs.iter().map(|a| a.target()).chain(guard)
            })
            .collect();
        let cgroup_targets: HashSet<String> = (targets.iter())
            .filter_map(|t| match t {
                Target::Cgroup(c) => Some(c.to_string()),
                Target::Port(_) => None,
            })
            .collect();
        let named: HashSet<String> = targets.iter().map(ToString::to_string).collect();
        let known =
            |l: &HashMap<&str, &str>| l.get("policy").is_none_or(|p| policies.contains_key(*p));
        retain(&self.decisions, known);
        retain(&self.flap_exhausted, known);
        retain(&self.action_errors, known);
        let held = |l: &HashMap<&str, &str>| {
            known(l) && l.get("target").is_none_or(|t| cgroup_targets.contains(*t))
        };
        retain(&self.drift_total, held);
        retain(&self.drift, held);
        if let Ok(mut d) = self.drifted.lock() {
            d.retain(|(p, t)| policies.contains_key(p) && cgroup_targets.contains(t));
        }
        if let Some(mut e) = self.exposed() {
            e.verdicts.retain(|t, _| named.contains(t));
            e.guard_bounds
                .retain(|port, _| named.contains(&Target::Port(*port).to_string()));
            e.configured = Some(policies);
        }
    }

    /// A config (re)load: a successful one sets
    /// `governor_config_last_reload_success_timestamp_seconds`; `reload`:
    /// it was a reload (counted by result), not the start.
    pub fn config_loaded(&self, ok: bool, reload: bool) {
        if reload {
            let result = if ok { "success" } else { "failure" };
            self.reloads.with_label_values(&[result]).inc();
        }
        if ok {
            self.last_reload.set(unix_now());
        }
    }

    /// The kernel's admission verdicts, cumulative, by target (as the
    /// target is written: `port 8080`, `cgroup /workload/batch`):
    /// (admitted, refused at once, dropped in drop mode). Targets no
    /// policy names are not shown.
    pub fn admission_verdicts(
        &self,
        by_target: impl IntoIterator<Item = (Target, u64, u64, u64, u64)>,
    ) {
        if let Some(mut e) = self.exposed() {
            for (target, admitted, refused, dropped, guarded) in by_target {
                e.verdicts
                    .insert(target.to_string(), (admitted, refused, dropped, guarded));
            }
        }
    }

    /// The bounds of the armed accept-queue guards, by port.
    pub fn guard_bounds(&self, bounds: BTreeMap<u16, u32>) {
        if let Some(mut e) = self.exposed() {
            e.guard_bounds = bounds;
        }
    }

    /// Updates the probe counters from cumulative kernel counters.
    pub fn probe_counters(&self, counters: &BTreeMap<&'static str, u64>) {
        let Ok(mut last) = self.last_counters.lock() else {
            return;
        };
        for (name, &v) in counters {
            let d = v.saturating_sub(last.get(name).copied().unwrap_or(0));
            if let Some(map) = name.strip_suffix("_full") {
                self.probe_errors.with_label_values(&[map]).inc_by(d);
            } else {
                self.probe_events.with_label_values(&[name]).inc_by(d);
            }
            last.insert(name, v);
        }
    }

    /// Counts one decision.
    pub fn decision(&self, d: &Decision) {
        self.decisions
            .with_label_values(&[
                &d.policy,
                d.action.name(),
                d.kind.as_str(),
                d.direction().as_str(),
            ])
            .inc();
        if d.kind == DecisionKind::Refused && matches!(d.reason.cause, Cause::FlapBudget { .. }) {
            self.flap_exhausted.with_label_values(&[&d.policy]).inc();
        }
    }

    /// Counts a decision that could not be carried out.
    pub fn action_error(&self, d: &Decision) {
        self.action_errors
            .with_label_values(&[&d.policy, d.action.name()])
            .inc();
    }

    /// A tick without a new snapshot.
    pub fn stale_tick(&self) {
        self.stale_ticks.inc();
    }

    /// Drift as found at a tick: every (policy, target, started) drifted
    /// now, `started` if its episode began at this tick (counted).
    pub fn drift<'a>(&self, now: impl IntoIterator<Item = (&'a str, &'a str, bool)>) {
        let Ok(mut before) = self.drifted.lock() else {
            return;
        };
        let mut current = HashSet::new();
        for (policy, target, started) in now {
            if started {
                self.drift_total.with_label_values(&[policy, target]).inc();
            }
            current.insert((policy.to_owned(), target.to_owned()));
        }
        if current.is_empty() && before.is_empty() {
            return;
        }
        for (policy, target) in before.difference(&current) {
            self.drift.with_label_values(&[policy, target]).set(0.0);
        }
        for (policy, target) in &current {
            self.drift.with_label_values(&[policy, target]).set(1.0);
        }
        *before = current;
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves `/metrics` on `addr` from a background thread.
pub fn serve(metrics: Arc<Metrics>, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for /metrics: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| anyhow::anyhow!("metrics server is not on an IP address"))?;
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" {
                    let header = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"text/plain; version=0.0.4"[..],
                    )
                    .expect("static header");
                    tiny_http::Response::from_string(metrics.render()).with_header(header)
                } else {
                    tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                };
                let _ = request.respond(response);
            }
        })?;
    Ok(bound)
}

#[cfg(test)]
mod drift_tests {
    use super::Metrics;

    #[test]
    fn drift_is_counted_per_episode_and_gauged_while_it_lasts() {
        let m = Metrics::new();
        m.drift([("p", "/system.slice/hog.service", true)]);
        m.drift([("p", "/system.slice/hog.service", false)]);
        let text = m.render();
        assert!(
            text.contains(
                "governor_drift_total{policy=\"p\",target=\"/system.slice/hog.service\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("governor_drift{policy=\"p\",target=\"/system.slice/hog.service\"} 1"),
            "{text}"
        );
        m.drift([]);
        let text = m.render();
        assert!(
            text.contains("governor_drift{policy=\"p\",target=\"/system.slice/hog.service\"} 0"),
            "{text}"
        );
        m.drift([("p", "/system.slice/hog.service", true)]);
        assert!(
            m.render().contains(
                "governor_drift_total{policy=\"p\",target=\"/system.slice/hog.service\"} 2"
            )
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use governor_engine::{
        config::{self, Protected},
        decide::State,
        snapshot::{
            CgroupStats, HostStats, PortStats, Psi, PsiTotal, RunqHist, RunqStats, RunqWindow,
            Snapshot, buckets,
        },
    };

    use super::*;

    fn path(p: &str) -> CgroupPath {
        CgroupPath::new(p).unwrap()
    }

    fn cgroup(p: &str, waits_ns: &[u64], connects: u64) -> CgroupStats {
        let h = RunqHist::from_waits_ns(waits_ns.iter().copied());
        CgroupStats {
            path: path(p),
            id: 1,
            runq: h.stats(),
            runq_hist: Some(h),
            conn_out: connects,
            conn_out_per_s: 0.0,
            psi: None,
            throttling: None,
            culprits: Vec::new(),
        }
    }

    fn snapshot(ts_ms: u64, host_waits_ns: &[u64], cgroups: Vec<CgroupStats>) -> Arc<Snapshot> {
        let h = RunqHist::from_waits_ns(host_waits_ns.iter().copied());
        let mut cgroups = cgroups;
        cgroups.sort_by(|a, b| a.path.cmp(&b.path));
        Arc::new(Snapshot {
            ts_ms,
            interval_ms: 100,
            host: HostStats {
                runq: Some(h.stats()),
                runq_hist: Some(h),
                psi: None,
            },
            cgroups,
            ports: Vec::new(),
            missing: Vec::new(),
        })
    }

    fn none() -> Arc<[CgroupPath]> {
        Arc::from([])
    }

    #[test]
    fn culprit_counters_add_up_and_leave_after_they_left_the_top() {
        let m = Metrics::new();
        let watched: Arc<[CgroupPath]> = Arc::from([path("/api")]);
        let with = |ts, culprits: &[(&str, u64)]| {
            let mut c = cgroup("/api", &[1_000_000], 0);
            c.culprits = culprits
                .iter()
                .map(|(n, us)| Culprit {
                    cgroup: (*n).into(),
                    wait_us: *us,
                    share: 0.5,
                })
                .collect();
            snapshot(ts, &[], vec![c])
        };
        let series = |text: &str, culprit: &str| {
            let name = format!(
                "governor_cgroup_runq_wait_culprit_seconds_total{{cgroup=\"/api\",culprit=\"{culprit}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(name.as_str()))
                .map(|v| v.parse::<f64>().unwrap())
        };
        m.observe(
            with(0, &[("/batch", 300_000), ("(idle)", 100_000)]),
            Arc::clone(&watched),
        );
        m.observe(with(100, &[("/batch", 200_000)]), Arc::clone(&watched));
        let text = m.render();
        assert_eq!(series(&text, "/batch"), Some(0.5), "{text}");
        assert_eq!(series(&text, "(idle)"), Some(0.1), "{text}");
        // Past the keep time without being in the top, a series goes.
        let later = TOP_KEEP.as_millis() as u64 + 200;
        m.observe(with(later, &[("/batch", 1_000)]), Arc::clone(&watched));
        let text = m.render();
        assert_eq!(series(&text, "/batch"), Some(0.501), "{text}");
        assert_eq!(series(&text, "(idle)"), None, "{text}");
        // At most MAX_CULPRITS per cgroup, however many come.
        for i in 0..30u64 {
            let n = format!("/c{i}");
            m.observe(
                with(later + 100 * (i + 1), &[(n.as_str(), 10)]),
                Arc::clone(&watched),
            );
        }
        let text = m.render();
        let n = text
            .lines()
            .filter(|l| l.starts_with("governor_cgroup_runq_wait_culprit_seconds_total{"))
            .count();
        assert_eq!(n, MAX_CULPRITS, "{text}");
    }

    /// The value of the sample whose line starts with `prefix` (name and labels).
    fn value(text: &str, prefix: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// The `(le, cumulative count)` of a histogram's series, +Inf last.
    fn buckets_of(text: &str, series: &str) -> Vec<(f64, f64)> {
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        let labels = labels.trim_end_matches('}');
        let head = if labels.is_empty() {
            format!("{name}_bucket{{le=\"")
        } else {
            format!("{name}_bucket{{{labels},le=\"")
        };
        text.lines()
            .filter_map(|l| l.strip_prefix(&head))
            .map(|rest| {
                let (le, count) = rest.split_once("\"} ").unwrap();
                (le.parse().unwrap(), count.parse().unwrap())
            })
            .collect()
    }

    /// `histogram_quantile(q, …)` as PromQL computes it from cumulative
    /// buckets: linear within the bucket the rank falls in.
    fn histogram_quantile(q: f64, b: &[(f64, f64)]) -> f64 {
        let total = b.last().unwrap().1;
        let rank = q * total;
        let i = b.iter().position(|(_, c)| *c >= rank).unwrap();
        if b[i].0.is_infinite() {
            return b[i - 1].0;
        }
        let (lower, below) = if i == 0 { (0.0, 0.0) } else { b[i - 1] };
        let (upper, cum) = b[i];
        lower + (upper - lower) * (rank - below) / (cum - below)
    }

    #[test]
    fn runq_bucket_bounds_are_powers_of_two_on_kernel_bucket_boundaries() {
        let m = Metrics::new();
        m.observe(snapshot(0, &[500, 40_000, 5_000_000_000], vec![]), none());
        let text = m.render();
        let b = buckets_of(&text, "governor_host_runq_wait_seconds");
        assert_eq!(b.len(), EDGES + 1, "{text}");
        assert!(b.last().unwrap().0.is_infinite());
        let lows: Vec<u64> = (0..buckets::BUCKETS).map(|i| buckets::range(i).0).collect();
        let mut before = 0u64;
        for (k, (le, _)) in b[..EDGES].iter().enumerate() {
            let ns = (le * 1e9).round() as u64;
            assert!((le * 1e9 - ns as f64).abs() < 1e-3, "le {le} is whole ns");
            assert_eq!(ns, 1 << (buckets::MIN_EXP as usize + k), "powers of two");
            assert!(lows.contains(&ns), "le {le} is a kernel bucket boundary");
            assert!(ns > before);
            before = ns;
        }
        assert_eq!(b[0].0, 1.024e-6);
        assert_eq!(b[EDGES - 1].0, 4.294967296);
        // Every kernel bucket lies within one exported bucket.
        for k in 0..buckets::BUCKETS {
            let (lo, hi) = buckets::range(k);
            let s = slot(k);
            let floor = if s == 0 { 0 } else { edge_ns(s - 1) };
            let ceil = if s == EDGES { u64::MAX } else { edge_ns(s) };
            assert!(
                floor <= lo && hi <= ceil,
                "kernel bucket {k} [{lo}, {hi}) in slot {s}"
            );
        }
        // Below 1 µs, at 40 µs, past 4.29 s: cumulative counts 1, 2, 3.
        assert_eq!(b[0].1, 1.0);
        assert_eq!(
            value(&text, "governor_host_runq_wait_seconds_count"),
            Some(3.0)
        );
        // _sum: the midpoints of the kernel buckets (the overflow's low bound).
        let mid = |ns: u64| {
            let (lo, hi) = buckets::range(buckets::bucket(ns));
            if hi == u64::MAX {
                lo as f64
            } else {
                (lo + hi) as f64 / 2.0
            }
        };
        let sum = value(&text, "governor_host_runq_wait_seconds_sum").unwrap();
        let want = (mid(500) + mid(40_000) + mid(5_000_000_000)) / 1e9;
        assert!((sum - want).abs() < 1e-12, "{sum} vs {want}");
    }

    #[test]
    fn histograms_and_counters_are_cumulative_across_ticks_and_scrapes() {
        let m = Metrics::new();
        let watched: Arc<[CgroupPath]> = Arc::from([path("/api")]);
        let mut first =
            (*snapshot(0, &[40_000; 10], vec![cgroup("/api", &[40_000; 4], 3)])).clone();
        first.ports.push(PortStats {
            port: 8080,
            accepted: 7,
            overflows: 1,
            accept_queue: 5,
            accept_queue_max: 128,
            ..Default::default()
        });
        m.observe(Arc::new(first), Arc::clone(&watched));
        let text = m.render();
        assert_eq!(
            value(&text, "governor_host_runq_wait_seconds_count"),
            Some(10.0)
        );
        // 7 entered in 100 ms (70/s); 5 queued wait 5/70 s.
        let delay = value(
            &text,
            "governor_port_accept_queue_delay_seconds{port=\"8080\"}",
        )
        .expect("the estimated delay");
        assert!((delay - 5.0 / 70.0).abs() < 1e-9, "{delay}");
        assert_eq!(
            value(
                &text,
                "governor_cgroup_runq_wait_seconds_count{cgroup=\"/api\"}"
            ),
            Some(4.0)
        );
        let mut second = (*snapshot(100, &[3_000_000; 5], vec![cgroup("/api", &[], 2)])).clone();
        second.ports.push(PortStats {
            port: 8080,
            accepted: 3,
            accept_queue: 2,
            accept_queue_max: 128,
            ..Default::default()
        });
        m.observe(Arc::new(second), Arc::clone(&watched));
        m.observe(
            snapshot(200, &[], vec![cgroup("/api", &[3_000_000], 0)]),
            watched,
        );
        let text = m.render();
        assert_eq!(
            value(&text, "governor_host_runq_wait_seconds_count"),
            Some(15.0)
        );
        let host = buckets_of(&text, "governor_host_runq_wait_seconds");
        let at = |le: f64| host.iter().find(|(l, _)| *l == le).unwrap().1;
        assert_eq!(at(65_536e-9), 10.0, "the 40 µs waits, le 65.536 µs");
        assert_eq!(at(4_194_304e-9), 15.0, "and the 3 ms ones, le 4.19 ms");
        assert_eq!(
            value(
                &text,
                "governor_cgroup_runq_wait_seconds_count{cgroup=\"/api\"}"
            ),
            Some(5.0)
        );
        assert_eq!(
            value(&text, "governor_cgroup_connects_total{cgroup=\"/api\"}"),
            Some(5.0)
        );
        assert_eq!(
            value(
                &text,
                "governor_port_accepted_connections_total{port=\"8080\"}"
            ),
            Some(10.0)
        );
        assert_eq!(
            value(&text, "governor_port_accept_overflows_total{port=\"8080\"}"),
            Some(1.0)
        );
        // A level is the latest: the third snapshot saw no listener.
        assert_eq!(
            value(&text, "governor_port_accept_queue{port=\"8080\"}"),
            None
        );
        // Scraping does not reset anything (process_* move by themselves).
        let ours = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| l.starts_with("governor_"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(ours(&m.render()), ours(&text));
    }

    #[test]
    fn histogram_quantile_of_the_exposition_agrees_with_the_kernel_buckets() {
        // 990 waits of 40 µs and 10 of 3 ms: the p99 is the last 40 µs wait.
        let mut waits = vec![40_000u64; 990];
        waits.extend([3_000_000; 10]);
        let m = Metrics::new();
        // Over ten ticks, as the agent sees them.
        for (i, chunk) in waits.chunks(100).enumerate() {
            m.observe(snapshot(100 * i as u64, chunk, vec![]), none());
        }
        let b = buckets_of(&m.render(), "governor_host_runq_wait_seconds");
        let mut own = RunqWindow::default();
        own.push(
            Duration::ZERO,
            &RunqHist::from_waits_ns(waits.iter().copied()),
            Duration::MAX,
        );
        for q in [0.5, 0.99, 0.995, 0.999] {
            let promql = histogram_quantile(q, &b);
            let agent = own.percentile_us(q) as f64 / 1e6;
            // Both lie in the same exported bucket: [2^k, 2^(k+1)] ns.
            let k = (agent * 1e9).log2().floor();
            let (lo, hi) = (2f64.powf(k) / 1e9, 2f64.powf(k + 1.0) / 1e9);
            assert!(
                lo <= promql && promql <= hi,
                "q {q}: PromQL {promql} s, agent {agent} s, bucket [{lo}, {hi}]"
            );
        }
        // Exactly 99% of the waits are at most 65.536 µs, a bucket bound
        // (and a kernel one): PromQL's p99 is that bound exactly.
        assert_eq!(histogram_quantile(0.99, &b), 65_536e-9);
    }

    #[test]
    fn the_top_cgroups_keep_their_series_for_a_while_and_then_lose_them() {
        let m = Metrics::new();
        let watched: Arc<[CgroupPath]> = Arc::from([path("/watched")]);
        // 30 busy cgroups, /c00 the busiest; the watched one idle.
        let busy = |offset: usize| -> Vec<CgroupStats> {
            let mut v: Vec<CgroupStats> = (0..30)
                .map(|i| {
                    cgroup(
                        &format!("/c{:02}", (i + offset) % 60),
                        &vec![40_000; 60 - i],
                        0,
                    )
                })
                .collect();
            v.push(cgroup("/watched", &[], 0));
            v
        };
        let exported = |text: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix("governor_cgroup_runq_wait_seconds_count{cgroup=\""))
                .map(|l| l.split('"').next().unwrap().to_owned())
                .collect()
        };
        m.observe(snapshot(0, &[], busy(0)), Arc::clone(&watched));
        let first = exported(&m.render());
        assert_eq!(first.len(), TOP_CGROUPS + 1, "{first:?}");
        assert!(first.contains(&"/watched".to_owned()), "watched: always");
        assert!(first.contains(&"/c00".to_owned()) && !first.contains(&"/c29".to_owned()));
        // Another 30 are busier now: the first top keeps its series.
        let rank = RANK_EVERY.as_millis() as u64;
        m.observe(snapshot(rank, &[], busy(30)), Arc::clone(&watched));
        let both = exported(&m.render());
        assert_eq!(both.len(), 2 * TOP_CGROUPS + 1, "{both:?}");
        assert!(both.contains(&"/c00".to_owned()) && both.contains(&"/c30".to_owned()));
        // Until TOP_KEEP after it left the top.
        let keep = TOP_KEEP.as_millis() as u64;
        let mut t = 2 * rank;
        while t <= keep {
            m.observe(snapshot(t, &[], busy(30)), Arc::clone(&watched));
            t += rank;
        }
        let later = exported(&m.render());
        assert!(!later.contains(&"/c00".to_owned()), "{later:?}");
        assert!(later.contains(&"/c30".to_owned()) && later.contains(&"/watched".to_owned()));
        assert_eq!(later.len(), TOP_CGROUPS + 1);
    }

    fn config(dry_run: bool) -> Config {
        let src = format!(
            r#"
[agent]
dry_run = {dry_run}

[[policy]]
name = "api"
signal = {{ kind = "runq_p99", cgroup = "/api" }}
high = "2ms"
low = "500us"
for = "200ms"
ladder = [ {{ action = "cpu_weight", cgroup = "/batch", weight = "idle" }} ]

[[policy]]
name = "shed"
signal = {{ kind = "accept_queue_fill", port = 8080 }}
high = 0.8
low = 0.2
for = "200ms"
ladder = [ {{ action = "reject_connections", port = 8080, mode = "reset" }} ]
"#
        );
        config::from_str(&src, "test").unwrap()
    }

    /// A snapshot where `/api` waits `api_p99_us` and port 8080's queue is 90% full.
    fn loaded(ts_ms: u64, api_p99_us: u64) -> Snapshot {
        let mut s = Snapshot {
            ts_ms,
            interval_ms: 100,
            ..Default::default()
        };
        s.host.runq = Some(RunqStats::default());
        s.cgroups.push(CgroupStats {
            path: path("/api"),
            id: 1,
            runq: RunqStats {
                count: 100,
                p50_us: 10,
                p99_us: api_p99_us,
                max_us: api_p99_us,
            },
            runq_hist: None,
            conn_out: 0,
            conn_out_per_s: 0.0,
            psi: None,
            throttling: None,
            culprits: Vec::new(),
        });
        s.ports.push(PortStats {
            port: 8080,
            accept_queue: 90,
            accept_queue_max: 100,
            ..Default::default()
        });
        s
    }

    #[test]
    fn policy_gauges_are_in_base_units_and_decisions_carry_their_direction() {
        let cfg = config(false);
        let m = Metrics::new();
        m.configure(&cfg);
        let mut state = State::new(&cfg, Protected::builtin(None), 1);
        for i in 0..5 {
            for d in state.step(&loaded(100 * i, 3000), Duration::from_millis(100 * i)) {
                m.decision(&d);
            }
        }
        m.policies(Arc::new(state.status()));
        let text = m.render();
        let v = |s: &str| value(&text, s).unwrap_or_else(|| panic!("{s} in\n{text}"));
        assert_eq!(
            v("governor_policy_signal{policy=\"api\"}"),
            0.003,
            "3000 µs in seconds"
        );
        assert_eq!(
            v("governor_policy_watermark{policy=\"api\",watermark=\"high\"}"),
            0.002
        );
        assert_eq!(
            v("governor_policy_watermark{policy=\"api\",watermark=\"low\"}"),
            0.0005
        );
        assert_eq!(v("governor_policy_signal{policy=\"shed\"}"), 0.9, "a ratio");
        assert_eq!(
            v("governor_policy_watermark{policy=\"shed\",watermark=\"high\"}"),
            0.8
        );
        assert_eq!(v("governor_policy_dry_run{policy=\"api\"}"), 0.0);
        assert_eq!(v("governor_policy_rung{policy=\"api\"}"), 1.0);
        assert_eq!(
            v(
                "governor_decisions_total{action=\"cpu_weight\",direction=\"up\",kind=\"applied\",policy=\"api\"}"
            ),
            1.0
        );
        // Shutdown releases: direction reset.
        for d in state.release_all(Duration::from_secs(1)) {
            m.decision(&d);
        }
        let text = m.render();
        assert_eq!(
            value(
                &text,
                "governor_decisions_total{action=\"cpu_weight\",direction=\"reset\",kind=\"reverted\",policy=\"api\"}"
            ),
            Some(1.0),
            "{text}"
        );
        let dry = config(true);
        let m = Metrics::new();
        m.configure(&dry);
        m.policies(Arc::new(
            State::new(&dry, Protected::builtin(None), 1).status(),
        ));
        assert_eq!(
            value(&m.render(), "governor_policy_dry_run{policy=\"api\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn a_reload_deletes_the_series_of_removed_policies_and_targets() {
        let cfg = config(false);
        let m = Metrics::new();
        m.configure(&cfg);
        let mut state = State::new(&cfg, Protected::builtin(None), 1);
        for i in 0..5 {
            for d in state.step(&loaded(100 * i, 3000), Duration::from_millis(100 * i)) {
                m.decision(&d);
                m.action_error(&d);
            }
        }
        m.policies(Arc::new(state.status()));
        m.drift([("api", "/batch", true)]);
        m.admission_verdicts([(Target::Port(8080), 10, 4, 2, 3)]);
        let text = m.render();
        for series in [
            "governor_policy_rung{policy=\"api\"}",
            "governor_decisions_total{action=\"cpu_weight\"",
            "governor_action_errors_total{action=\"cpu_weight\",policy=\"api\"}",
            "governor_drift_total{policy=\"api\",target=\"/batch\"}",
            "governor_admission_verdicts_total{target=\"port 8080\",verdict=\"refused\"} 4",
            "governor_admission_verdicts_total{target=\"port 8080\",verdict=\"dropped\"} 2",
            "governor_admission_verdicts_total{target=\"port 8080\",verdict=\"guarded\"} 3",
        ] {
            assert!(text.contains(series), "{series} before the reload:\n{text}");
        }
        // Reload without "api" (and so without its target /batch).
        let mut without = cfg.clone();
        without.policies.retain(|p| p.name != "api");
        let (mut state, released) =
            state.reconcile(&without, Protected::builtin(None), Duration::from_secs(1));
        assert!(!released.is_empty());
        for d in &released {
            m.decision(d);
        }
        m.configure(&without);
        let text = m.render();
        assert!(!text.contains("policy=\"api\""), "{text}");
        assert!(!text.contains("/batch"), "{text}");
        assert!(
            text.contains("governor_policy_rung{policy=\"shed\"}"),
            "{text}"
        );
        assert!(
            text.contains("target=\"port 8080\""),
            "shed still names port 8080"
        );
        // The statuses of the next tick have only "shed" anyway.
        m.policies(Arc::new(state.status()));
        for d in state.step(&loaded(1100, 3000), Duration::from_millis(1100)) {
            m.decision(&d);
        }
        assert!(!m.render().contains("policy=\"api\""));
    }

    #[test]
    fn pressure_is_exported_as_stall_seconds_from_the_kernel_totals() {
        let m = Metrics::new();
        let mut s = (*snapshot(0, &[], vec![cgroup("/api", &[], 0)])).clone();
        let total = |some_us, full_us| Some(PsiTotal { some_us, full_us });
        s.host.psi = Some(Psi {
            cpu_some_avg10: 1.0,
            memory_some_avg10: 0.0,
            io_some_avg10: 0.0,
            cpu_total: total(11_626_006, None),
            memory_total: total(12, Some(6)),
            io_total: total(0, Some(0)),
        });
        s.cgroups[0].psi = Some(Psi {
            io_total: total(2_500_000, Some(1_000_000)),
            ..Default::default()
        });
        m.observe(Arc::new(s), Arc::from([path("/api")]));
        let text = m.render();
        let p = |labels: &str| {
            value(
                &text,
                &format!("governor_pressure_stalled_seconds_total{{{labels}}}"),
            )
        };
        assert_eq!(
            p("kind=\"some\",resource=\"cpu\",scope=\"host\""),
            Some(11.626006)
        );
        assert_eq!(
            p("kind=\"full\",resource=\"cpu\",scope=\"host\""),
            None,
            "no full line"
        );
        assert_eq!(
            p("kind=\"full\",resource=\"memory\",scope=\"host\""),
            Some(6e-6)
        );
        assert_eq!(p("kind=\"some\",resource=\"io\",scope=\"/api\""), Some(2.5));
        assert_eq!(p("kind=\"full\",resource=\"io\",scope=\"/api\""), Some(1.0));
        assert!(!text.contains("pressure_some_ratio"));
    }

    #[test]
    fn the_exposition_follows_the_prometheus_conventions() {
        let cfg = config(false);
        let m = Metrics::new();
        m.configure(&cfg);
        m.config_loaded(true, false);
        let mut s = (*snapshot(0, &[40_000], vec![cgroup("/api", &[40_000], 1)])).clone();
        s.ports.push(PortStats {
            port: 8080,
            accept_queue: 1,
            accept_queue_max: 10,
            ..Default::default()
        });
        m.observe(Arc::new(s), Arc::from([path("/api")]));
        let mut state = State::new(&cfg, Protected::builtin(None), 1);
        for i in 0..5 {
            for d in state.step(&loaded(100 * i, 3000), Duration::from_millis(100 * i)) {
                m.decision(&d);
            }
        }
        m.policies(Arc::new(state.status()));
        m.probe_counters(&BTreeMap::from([
            ("sched_switch", 5),
            ("cgroup_map_full", 1),
        ]));
        m.stale_tick();
        m.tick_duration.observe(0.001);
        let text = m.render();
        let mut help = HashMap::<&str, usize>::new();
        let mut types = HashMap::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                *help.entry(rest.split(' ').next().unwrap()).or_default() += 1;
            } else if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                types.insert(name, kind);
            } else {
                assert!(!l.contains("quantile="), "no quantile label: {l}");
            }
        }
        assert!(types.len() > 20, "{text}");
        for (name, kind) in &types {
            assert_eq!(help.get(name), Some(&1), "one HELP for {name}");
            assert_eq!(
                *kind == "counter",
                name.ends_with("_total"),
                "{name} is a {kind}"
            );
            assert!(
                !name.contains("per_second") && !name.ends_with("_us") && !name.ends_with("_ratio"),
                "{name}: base units, no precomputed rates"
            );
        }
        for name in [
            "governor_host_runq_wait_seconds",
            "governor_cgroup_runq_wait_seconds",
            "governor_tick_duration_seconds",
        ] {
            assert_eq!(types.get(name), Some(&"histogram"), "{name}");
        }
        for name in [
            "governor_build_info",
            "governor_config_last_reload_success_timestamp_seconds",
            "governor_probe_events_total",
            "governor_probe_errors_total",
            "governor_config_reloads_total",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
        ] {
            assert!(types.contains_key(name), "{name} in\n{text}");
        }
        assert!(text.contains("governor_config_reloads_total{result=\"failure\"} 0"));
        assert!(text.contains(&format!(
            "governor_build_info{{kernel=\"{}\",revision=\"{}\",version=\"{}\"}} 1",
            kernel_release(),
            env!("GOVERNOR_REVISION"),
            env!("CARGO_PKG_VERSION")
        )));
        let loaded_at = value(
            &text,
            "governor_config_last_reload_success_timestamp_seconds",
        )
        .unwrap();
        assert!((loaded_at - unix_now()).abs() < 60.0, "{loaded_at}");
    }

    #[test]
    fn reloads_are_counted_by_result() {
        let m = Metrics::new();
        m.config_loaded(true, false);
        let start = value(
            &m.render(),
            "governor_config_last_reload_success_timestamp_seconds",
        )
        .unwrap();
        m.config_loaded(false, true);
        let text = m.render();
        assert_eq!(
            value(&text, "governor_config_reloads_total{result=\"failure\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "governor_config_reloads_total{result=\"success\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(
                &text,
                "governor_config_last_reload_success_timestamp_seconds"
            ),
            Some(start),
            "a failed reload does not move it"
        );
        m.config_loaded(true, true);
        assert_eq!(
            value(
                &m.render(),
                "governor_config_reloads_total{result=\"success\"}"
            ),
            Some(1.0)
        );
    }

    #[test]
    fn probe_counters_follow_the_kernel_counts() {
        let m = Metrics::new();
        m.probe_counters(&BTreeMap::from([
            ("sched_switch", 5),
            ("cgroup_map_full", 1),
        ]));
        m.probe_counters(&BTreeMap::from([
            ("sched_switch", 12),
            ("cgroup_map_full", 1),
        ]));
        let text = m.render();
        assert_eq!(
            value(&text, "governor_probe_events_total{probe=\"sched_switch\"}"),
            Some(12.0)
        );
        assert_eq!(
            value(&text, "governor_probe_errors_total{map=\"cgroup_map\"}"),
            Some(1.0)
        );
    }
}
