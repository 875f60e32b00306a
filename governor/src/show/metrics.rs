//! Prometheus metrics (`governor_` prefix, base units) and the `/metrics`
//! endpoint.
//!
//! Label cardinality is bounded: per-cgroup series exist only for cgroups
//! named by policies and for the busiest [`TOP_CGROUPS`] of each interval;
//! series of cgroups that drop out are removed.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    thread,
};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use governor_engine::snapshot::{CgroupPath, Snapshot};

/// Cgroups exported per interval besides the watched ones, by run-queue p99.
pub const TOP_CGROUPS: usize = 20;

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    runq_seconds: GaugeVec,
    runq_waits: GaugeVec,
    conn_out_rate: GaugeVec,
    port_accept_rate: GaugeVec,
    port_queue: GaugeVec,
    port_queue_max: GaugeVec,
    port_overflows: IntCounterVec,
    psi_ratio: GaugeVec,
    probe_events: IntCounterVec,
    probe_errors: IntCounterVec,
    missing_signals: IntGauge,
    /// Sense duration per tick.
    pub tick_duration: Histogram,
    policy_rung: GaugeVec,
    policy_signal: GaugeVec,
    policy_held: GaugeVec,
    decisions: IntCounterVec,
    flap_exhausted: IntCounterVec,
    action_errors: IntCounterVec,
    stale_ticks: prometheus::IntCounter,
    drift_total: IntCounterVec,
    drift: GaugeVec,
    /// (policy, target) whose `governor_drift` is 1.
    drifted: Mutex<HashSet<(String, String)>>,
    exported_cgroups: Mutex<HashSet<String>>,
    pending: Mutex<Pending>,
    last_counters: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

/// What the gauges will be set from at the next scrape. Setting a thousand
/// labelled gauges every tick cost more than everything else the agent
/// does, for scrapes that come every 15 s or so; counters that must not
/// miss an interval (listen overflows) are summed here meanwhile.
#[derive(Default)]
struct Pending {
    snapshot: Option<(Arc<Snapshot>, Arc<[CgroupPath]>)>,
    overflows: std::collections::BTreeMap<u16, u64>,
    policies: Option<Arc<Vec<governor_engine::decide::PolicyStatus>>>,
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| panic!("metric {name}: {e}"))
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
        let m = Self {
            registry: Registry::new(),
            runq_seconds: gauge_vec(
                "governor_runq_latency_seconds",
                "Run-queue wait (wakeup or preemption to running) over the last interval, by scope (host or cgroup path) and quantile (0.5, 0.99, 1 = max).",
                &["scope", "quantile"],
            ),
            runq_waits: gauge_vec(
                "governor_runq_waits",
                "Run-queue waits measured in the last interval, by scope.",
                &["scope"],
            ),
            conn_out_rate: gauge_vec(
                "governor_cgroup_connects_per_second",
                "Outbound connects per second of a cgroup over the last interval.",
                &["cgroup"],
            ),
            port_accept_rate: gauge_vec(
                "governor_port_accepted_per_second",
                "Connections accepted per second on a local port over the last interval.",
                &["port"],
            ),
            port_queue: gauge_vec(
                "governor_port_accept_queue",
                "Connections waiting in the accept queue of a listening port.",
                &["port"],
            ),
            port_queue_max: gauge_vec(
                "governor_port_accept_queue_max",
                "Accept-queue limit (backlog) of a listening port.",
                &["port"],
            ),
            port_overflows: counter_vec(
                "governor_port_accept_overflows_total",
                "Accept-queue overflows attributed to a port whose queue was full (host-wide ListenOverflows).",
                &["port"],
            ),
            psi_ratio: gauge_vec(
                "governor_pressure_some_ratio",
                "PSI some avg10 as a ratio (0-1), by scope and resource.",
                &["scope", "resource"],
            ),
            probe_events: counter_vec(
                "governor_probe_events_total",
                "Events seen by the kernel probes, by probe.",
                &["probe"],
            ),
            probe_errors: counter_vec(
                "governor_probe_errors_total",
                "Kernel-side entries that did not fit their map, by map.",
                &["map"],
            ),
            missing_signals: IntGauge::new(
                "governor_missing_signals",
                "Signals that could not be measured in the last interval.",
            )
            .unwrap_or_else(|e| panic!("metric: {e}")),
            tick_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "governor_tick_duration_seconds",
                    "Time one tick took (sense; later decide and act).",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
            )
            .unwrap_or_else(|e| panic!("metric: {e}")),
            policy_rung: gauge_vec(
                "governor_policy_rung",
                "The rung a policy is on (0: nothing imposed; in dry-run, the rung it would be on).",
                &["policy"],
            ),
            policy_signal: gauge_vec(
                "governor_policy_signal",
                "The last value of a policy's signal, in the signal's base unit (µs, ratio, /s, %).",
                &["policy"],
            ),
            policy_held: gauge_vec(
                "governor_policy_held",
                "1 if a policy holds its rung: flap budget spent (reason=flap_budget), no data (reason=no_data), or a change the actuators failed to carry out, retried with backoff (reason=action_failed).",
                &["policy", "reason"],
            ),
            decisions: counter_vec(
                "governor_decisions_total",
                "Decisions by policy, action and kind (applied, would, reverted, refused).",
                &["policy", "action", "kind"],
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
            drift: gauge_vec(
                "governor_drift",
                "1 while a value a policy holds on a target is changed by someone else (drift), 0 once it holds again.",
                &["policy", "target"],
            ),
            drifted: Mutex::new(HashSet::new()),
            exported_cgroups: Mutex::new(HashSet::new()),
            pending: Mutex::new(Pending::default()),
            last_counters: Mutex::new(Default::default()),
        };
        for c in [
            Box::new(m.runq_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.runq_waits.clone()),
            Box::new(m.conn_out_rate.clone()),
            Box::new(m.port_accept_rate.clone()),
            Box::new(m.port_queue.clone()),
            Box::new(m.port_queue_max.clone()),
            Box::new(m.port_overflows.clone()),
            Box::new(m.psi_ratio.clone()),
            Box::new(m.probe_events.clone()),
            Box::new(m.probe_errors.clone()),
            Box::new(m.missing_signals.clone()),
            Box::new(m.tick_duration.clone()),
            Box::new(m.policy_rung.clone()),
            Box::new(m.policy_signal.clone()),
            Box::new(m.policy_held.clone()),
            Box::new(m.decisions.clone()),
            Box::new(m.flap_exhausted.clone()),
            Box::new(m.action_errors.clone()),
            Box::new(m.stale_ticks.clone()),
            Box::new(m.drift_total.clone()),
            Box::new(m.drift.clone()),
        ] {
            m.registry
                .register(c)
                .unwrap_or_else(|e| panic!("registering a metric: {e}"));
        }
        m
    }

    /// Records one snapshot; the gauges show the latest at the next scrape.
    /// `watched` cgroups (sorted) are always exported.
    pub fn observe(&self, s: Arc<Snapshot>, watched: Arc<[CgroupPath]>) {
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        for port in s.ports.iter().filter(|p| p.overflows > 0) {
            *p.overflows.entry(port.port).or_default() += port.overflows;
        }
        p.snapshot = Some((s, watched));
    }

    /// Records every policy's rung, signal and holds, shown at the next scrape.
    pub fn policies(&self, statuses: Arc<Vec<governor_engine::decide::PolicyStatus>>) {
        if let Ok(mut p) = self.pending.lock() {
            p.policies = Some(statuses);
        }
    }

    /// Sets the gauges from what was recorded since the last scrape.
    fn apply_pending(&self) {
        let pending = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return,
        };
        if let Some((s, watched)) = &pending.snapshot {
            self.set_snapshot(s, watched);
        }
        for (port, n) in &pending.overflows {
            self.port_overflows
                .with_label_values(&[&port.to_string()])
                .inc_by(*n);
        }
        if let Some(p) = &pending.policies {
            self.set_policies(p);
        }
    }

    fn set_snapshot(&self, s: &Snapshot, watched: &[CgroupPath]) {
        let set_runq = |scope: &str, r: &governor_engine::snapshot::RunqStats| {
            for (q, v) in [("0.5", r.p50_us), ("0.99", r.p99_us), ("1", r.max_us)] {
                self.runq_seconds
                    .with_label_values(&[scope, q])
                    .set(v as f64 / 1e6);
            }
            self.runq_waits
                .with_label_values(&[scope])
                .set(r.count as f64);
        };
        if let Some(r) = &s.host.runq {
            set_runq("host", r);
        }
        if let Some(p) = &s.host.psi {
            for (res, v) in [
                ("cpu", p.cpu_some_avg10),
                ("memory", p.memory_some_avg10),
                ("io", p.io_some_avg10),
            ] {
                self.psi_ratio
                    .with_label_values(&["host", res])
                    .set(v / 100.0);
            }
        }
        let mut ranked: Vec<_> = s.cgroups.iter().collect();
        ranked.sort_by_key(|c| std::cmp::Reverse(c.runq.p99_us));
        let mut now_exported = HashSet::new();
        for c in s
            .cgroups
            .iter()
            .filter(|c| watched.binary_search(&c.path).is_ok())
            .chain(ranked.into_iter().take(TOP_CGROUPS))
        {
            let path = c.path.to_string();
            set_runq(&path, &c.runq);
            self.conn_out_rate
                .with_label_values(&[&path])
                .set(c.conn_out_per_s);
            now_exported.insert(path);
        }
        if let Ok(mut old) = self.exported_cgroups.lock() {
            for gone in old.difference(&now_exported) {
                for q in ["0.5", "0.99", "1"] {
                    let _ = self.runq_seconds.remove_label_values(&[gone, q]);
                }
                let _ = self.runq_waits.remove_label_values(&[gone]);
                let _ = self.conn_out_rate.remove_label_values(&[gone]);
            }
            *old = now_exported;
        }
        for p in &s.ports {
            let port = p.port.to_string();
            self.port_accept_rate
                .with_label_values(&[&port])
                .set(p.accepted_per_s);
            self.port_queue
                .with_label_values(&[&port])
                .set(f64::from(p.accept_queue));
            self.port_queue_max
                .with_label_values(&[&port])
                .set(f64::from(p.accept_queue_max));
            // Counted in `observe`, so that no interval is missed.
            let _ = self.port_overflows.with_label_values(&[&port]);
        }
        self.missing_signals
            .set(i64::try_from(s.missing.len()).unwrap_or(i64::MAX));
    }

    /// Updates the probe counters from cumulative kernel counters.
    pub fn probe_counters(&self, counters: &std::collections::BTreeMap<&'static str, u64>) {
        let Ok(mut last) = self.last_counters.lock() else {
            return;
        };
        for (name, &v) in counters {
            let d = v.saturating_sub(last.get(name).copied().unwrap_or(0));
            if name.ends_with("_full") {
                self.probe_errors
                    .with_label_values(&[name.trim_end_matches("_full")])
                    .inc_by(d);
            } else {
                self.probe_events.with_label_values(&[name]).inc_by(d);
            }
            last.insert(name, v);
        }
    }

    /// Counts one decision.
    pub fn decision(&self, d: &governor_engine::decide::Decision) {
        self.decisions
            .with_label_values(&[&d.policy, d.action.name(), d.kind.as_str()])
            .inc();
        if d.kind == governor_engine::decide::DecisionKind::Refused
            && matches!(
                d.reason.cause,
                governor_engine::decide::Cause::FlapBudget { .. }
            )
        {
            self.flap_exhausted.with_label_values(&[&d.policy]).inc();
        }
    }

    /// Counts a decision that could not be carried out.
    pub fn action_error(&self, d: &governor_engine::decide::Decision) {
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

    fn set_policies(&self, statuses: &[governor_engine::decide::PolicyStatus]) {
        for p in statuses {
            self.policy_rung
                .with_label_values(&[&p.name])
                .set(p.rung as f64);
            if let Some(v) = p.value {
                self.policy_signal
                    .with_label_values(&[&p.name])
                    .set(v.value);
            }
            self.policy_held
                .with_label_values(&[&p.name, "flap_budget"])
                .set(f64::from(u8::from(p.flap_held)));
            self.policy_held
                .with_label_values(&[&p.name, "no_data"])
                .set(f64::from(u8::from(p.no_data)));
            self.policy_held
                .with_label_values(&[&p.name, "action_failed"])
                .set(f64::from(u8::from(p.failed.is_some())));
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        self.apply_pending();
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
