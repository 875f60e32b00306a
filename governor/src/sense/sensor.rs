//! The sensor: turns the BPF maps, `/proc`, cgroupfs (and sock_diag) into
//! one immutable [`Snapshot`] per interval.
//!
//! This is the imperative shell around the readers: it keeps the previous
//! cumulative readings and reports the interval's deltas.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use governor_engine::snapshot::{
    CgroupPath, CgroupStats, Culprit, HostStats, PortStats, Psi, RunqHist, RunqStats, Snapshot,
    Throttling,
};

use crate::{
    probes::{ProbeError, Probes, runq},
    sense::{
        cgroupfs::{CgroupFs, CgroupIndex, CpuThrottle, within_any},
        procfs::{self, ListenCounters},
        sockdiag::{ListenQueue, QueuesByPort, SockDiag},
    },
};

/// What to report on.
#[derive(Debug, Clone, Default)]
pub struct SensorScope {
    /// Only cgroups within these subtrees (all if empty).
    pub subtrees: Vec<CgroupPath>,
    /// Cgroups reported every interval even when nothing of theirs ran
    /// (policy signals and targets).
    pub watched: Vec<CgroupPath>,
    /// Cgroups whose own files (PSI, `cpu.stat` throttling) are read, every
    /// [`SLOW_EVERY`]: only those a signal needs; reading them for every
    /// watched cgroup cost most of the agent's CPU with a thousand policies.
    pub files: Vec<CgroupPath>,
}

impl SensorScope {
    /// The same scope with `watched` sorted and deduplicated (it is
    /// searched by bisection every interval).
    fn normalised(mut self) -> Self {
        self.watched.sort();
        self.watched.dedup();
        self.files.sort();
        self.files.dedup();
        self
    }
}

/// One port's figures for the interval: `accepted` handshakes (from the
/// probe), its accept queue as last listed (`None` if it has no listener),
/// and the growth of the namespace's `ListenOverflows` counter; `None` if
/// there is nothing to report.
///
/// **Overflows.** `ListenOverflows` in `/proc/net/netstat` is one counter for
/// the whole network namespace: the kernel does not say which listener
/// dropped. Its growth is attributed, whole, to every port that has a full
/// listener ([`ListenQueue::any_full`]) when the queues were listed; other
/// ports get 0. So it is exact with one overloaded port, an over-count when
/// several are full at once (each is charged all of it), and an under-count
/// (0 everywhere) when a queue overflowed and drained again between two
/// listings. Policies should treat it as "this port is dropping handshakes",
/// and `accept_queue / accept_queue_max` as the measured signal.
pub fn port_stats(
    port: u16,
    accepted: u64,
    queue: Option<&ListenQueue>,
    overflow_delta: u64,
    secs: f64,
) -> Option<PortStats> {
    let q = queue.copied().unwrap_or_default();
    let overflows = if q.any_full { overflow_delta } else { 0 };
    if accepted == 0 && q.accept_queue_max == 0 && overflows == 0 {
        return None;
    }
    Some(PortStats {
        port,
        accepted,
        accepted_per_s: accepted as f64 / secs,
        accept_queue: q.accept_queue,
        accept_queue_max: q.accept_queue_max,
        overflows,
    })
}

/// The run-queue figures of one interval from its histogram (`counts` per
/// bucket; `None`: no entry in the maps, nothing waited): the interval's
/// count and percentiles, and the histogram itself (what policies' windows
/// add up). If the scheduler probes are not attached (`attached` false)
/// there are none: the maps are empty because nothing measures, which is
/// no data, not "nothing waited".
pub fn runq_figures(attached: bool, counts: Option<&[u64]>) -> Option<(RunqStats, RunqHist)> {
    attached.then(|| match counts {
        Some(c) => (runq::stats(c), RunqHist::from_counts(c)),
        None => Default::default(),
    })
}

/// The host's figures of one interval: run-queue waits from the host
/// histogram read `now` and `before` (cumulative, wrapping `u32` counts:
/// [`runq::wrapping_delta`]), `None` without the scheduler probes; and PSI.
pub fn host_stats(
    runq_attached: bool,
    now: &[u32],
    before: Option<&[u32]>,
    psi: Option<Psi>,
) -> HostStats {
    let runq = runq_figures(runq_attached, Some(&runq::wrapping_delta(now, before)));
    let (runq, runq_hist) = runq.map_or((None, None), |(s, h)| (Some(s), Some(h)));
    HostStats {
        runq,
        runq_hist,
        psi,
    }
}

/// Source of per-port accept-queue readings (sock_diag in production).
pub type ListenerReader = Box<dyn FnMut() -> anyhow::Result<QueuesByPort> + Send>;

struct Previous {
    at: Instant,
    host_runq: Vec<u32>,
    listen: Option<ListenCounters>,
}

/// How often the cgroups' own files (PSI, `cpu.stat`) are read, the
/// watched cgroups' ids checked, and idle accept queues listed again.
/// PSI is a 10 s average and throttling a slow counter: reading them every
/// tick for a thousand cgroups cost most of the agent's CPU.
pub const SLOW_EVERY: Duration = Duration::from_secs(1);

/// The last reading of the watched cgroups' own files.
#[derive(Default)]
struct SlowReadings {
    at: Option<Instant>,
    psi: HashMap<CgroupPath, Psi>,
    throttle: HashMap<CgroupPath, CpuThrottle>,
    /// Throttling between the last two readings.
    throttled: HashMap<CgroupPath, Throttling>,
}

/// The ids of the watched cgroups (in the order of `SensorScope::watched`),
/// `None` where the cgroup does not exist: learnt from the maps, checked
/// on disk every [`SLOW_EVERY`] (a watched cgroup can be removed, or
/// created again under a new id).
#[derive(Default)]
struct WatchedIds {
    ids: Vec<Option<u64>>,
    /// Position in the watched list by id, rebuilt when `ids` change.
    index: Option<HashMap<u64, usize>>,
    /// Seen in the maps since the last check (so known to exist).
    seen: Vec<bool>,
    checked: Option<Instant>,
    /// The ids last handed to the probes' `WATCHED` map.
    in_kernel: Option<Vec<u64>>,
}

/// The last accept-queue listing.
#[derive(Default)]
struct LastQueues {
    at: Option<Instant>,
    by_port: QueuesByPort,
}

/// Builds [`Snapshot`]s from the probes and the host's files.
pub struct Sensor {
    probes: Probes,
    cgroups: CgroupIndex,
    proc_root: PathBuf,
    host_psi: procfs::HostPsi,
    listeners: Option<ListenerReader>,
    scope: SensorScope,
    started: Instant,
    previous: Option<Previous>,
    netstat: Option<NetstatReader>,
    slow: SlowReadings,
    watched: WatchedIds,
    queues: LastQueues,
}

/// Source of `ListenOverflows`/`ListenDrops` other than `<proc_root>/net/netstat`
/// (another network namespace).
pub type NetstatReader = Box<dyn FnMut() -> Option<ListenCounters> + Send>;

impl Sensor {
    /// A sensor over loaded and attached `probes`.
    pub fn new(
        probes: Probes,
        cgroups: CgroupIndex,
        proc_root: PathBuf,
        listeners: Option<ListenerReader>,
        scope: SensorScope,
    ) -> Self {
        Self {
            probes,
            scope: scope.normalised(),
            cgroups,
            host_psi: procfs::HostPsi::new(&proc_root),
            proc_root,
            listeners,
            started: Instant::now(),
            previous: None,
            netstat: None,
            slow: SlowReadings::default(),
            watched: WatchedIds::default(),
            queues: LastQueues::default(),
        }
    }

    /// A sensor whose accept queues and listen counters come from the
    /// network namespace a [`crate::sense::netns::NetnsWorker`] lives in.
    pub fn with_netns(mut self, worker: crate::sense::netns::NetnsWorker) -> Self {
        // Accepted connections of that namespace's listeners only.
        if let Some(inum) = crate::probes::netns_inum(&worker.path) {
            self.probes.count_ports_in(inum);
        }
        // A tick that lists the queues gets the counters from the same
        // request; other ticks read the counters alone (no sock_diag dump).
        let worker = std::sync::Arc::new(worker);
        let w2 = std::sync::Arc::clone(&worker);
        let slot = std::sync::Arc::new(std::sync::Mutex::new(None));
        let s2 = std::sync::Arc::clone(&slot);
        self.listeners = Some(Box::new(move || {
            let r = worker.read(true)?;
            if let Ok(mut s) = slot.lock() {
                *s = Some(r.listen);
            }
            Ok(r.queues.unwrap_or_default())
        }));
        self.netstat = Some(Box::new(move || {
            match s2.lock().ok().and_then(|mut s| s.take()) {
                Some(listen) => listen,
                None => w2.read(false).ok().and_then(|r| r.listen),
            }
        }));
        self
    }

    /// Replaces what the sensor reports on (e.g. after a reload).
    pub fn set_scope(&mut self, scope: SensorScope) {
        self.scope = scope.normalised();
        self.watched = WatchedIds::default();
    }

    fn listen_counters(&mut self) -> Option<ListenCounters> {
        match self.netstat.as_mut() {
            Some(read) => read(),
            None => procfs::listen_counters(&self.proc_root).ok(),
        }
    }

    /// A sensor of this host: the probes (loaded and attached), cgroupfs
    /// under `/sys/fs/cgroup`, `/proc`, and sock_diag in the caller's network
    /// namespace. Start the probes' log forwarder before calling this.
    pub fn start_host(probes: Probes, scope: SensorScope) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let fs = CgroupFs::discover(std::path::Path::new(crate::sense::cgroupfs::DEFAULT_ROOT))
            .context("finding the cgroup2 hierarchy")?;
        let mut diag = SockDiag::new().context("opening sock_diag")?;
        let reader: ListenerReader = Box::new(move || Ok(diag.listen_queues()?));
        Ok(Self::new(
            probes,
            CgroupIndex::new(fs),
            PathBuf::from(procfs::DEFAULT_ROOT),
            Some(reader),
            scope,
        ))
    }

    /// The cgroup index (paths by id).
    pub fn cgroups(&mut self) -> &mut CgroupIndex {
        &mut self.cgroups
    }

    /// The probes, e.g. for their counters.
    pub fn probes(&self) -> &Probes {
        &self.probes
    }

    /// The probes, to read their maps some other way (tests).
    pub fn probes_mut(&mut self) -> &mut Probes {
        &mut self.probes
    }

    /// Takes the first reading; the next [`Sensor::sample`] reports the
    /// interval since.
    pub fn prime(&mut self) -> Result<(), ProbeError> {
        let maps = self.probes.read_maps()?;
        let listen = self.listen_counters();
        self.previous = Some(Previous {
            at: Instant::now(),
            host_runq: maps.host_runq,
            listen,
        });
        Ok(())
    }

    /// Reads the PSI and `cpu.stat` of the cgroups in `files`, at most every [`SLOW_EVERY`].
    fn read_slow(&mut self) {
        if self.slow.at.is_some_and(|at| at.elapsed() < SLOW_EVERY) {
            return;
        }
        let fs = self.cgroups.cgroupfs();
        let mut psi = HashMap::new();
        let mut throttle = HashMap::new();
        for p in &self.scope.files {
            if let Some(v) = fs.psi(p).ok().flatten().and_then(|v| v.complete()) {
                psi.insert(p.clone(), v);
            }
            if let Ok(Some(t)) = fs.cpu_throttle(p) {
                throttle.insert(p.clone(), t);
            }
        }
        let throttled = throttle
            .iter()
            .filter_map(|(p, now)| Some((p.clone(), now.since(self.slow.throttle.get(p)?))))
            .collect();
        self.slow = SlowReadings {
            at: Some(Instant::now()),
            psi,
            throttle,
            throttled,
        };
    }

    /// Checks the ids of the watched cgroups on disk, at most every
    /// [`SLOW_EVERY`], except those the maps named since the last check.
    fn check_watched(&mut self) {
        let n = self.scope.watched.len();
        if self.watched.ids.len() == n
            && self
                .watched
                .checked
                .is_some_and(|at| at.elapsed() < SLOW_EVERY)
        {
            return;
        }
        let fs = self.cgroups.cgroupfs();
        let w = &mut self.watched;
        w.ids.resize(n, None);
        w.seen.resize(n, false);
        for ((path, id), seen) in self.scope.watched.iter().zip(&mut w.ids).zip(&mut w.seen) {
            if !*seen {
                *id = fs.id_of(path).ok().flatten();
            }
            *seen = false;
        }
        w.checked = Some(Instant::now());
        w.index = None;
    }

    /// Hands the watched cgroups' ids to the probes when they changed:
    /// only their waits are attributed to culprits.
    fn push_watched(&mut self, missing: &mut Vec<String>) {
        let ids: Vec<u64> = self.watched.ids.iter().flatten().copied().collect();
        if self.watched.in_kernel.as_ref() == Some(&ids) {
            return;
        }
        match self.probes.set_watched(&ids) {
            Ok(()) => self.watched.in_kernel = Some(ids),
            Err(e) => missing.push(format!("run-queue culprits: {e}")),
        }
    }

    /// Each watched cgroup's top culprits (by id) from the interval's
    /// `CULPRITS` readings, culprit ids resolved to paths (the watched
    /// cgroups' and `others`' known ones, the rest through the index).
    fn culprits_by_victim(
        &mut self,
        read: &HashMap<governor_common::culprits::Key, u64>,
        watched: &HashMap<u64, usize>,
        others: &[(CgroupPath, u64)],
        missing: &mut Vec<String>,
    ) -> HashMap<u64, Vec<Culprit>> {
        if read.is_empty() {
            return HashMap::new();
        }
        let mut names: HashMap<u64, String> = HashMap::new();
        names.insert(governor_common::culprits::IDLE, Culprit::IDLE.to_owned());
        for (id, w) in watched {
            names.insert(*id, self.scope.watched[*w].to_string());
        }
        for (p, id) in others {
            names.entry(*id).or_insert_with(|| p.to_string());
        }
        let unknown: Vec<u64> = (read.keys())
            .map(|k| k.culprit)
            .filter(|id| !names.contains_key(id))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !unknown.is_empty() {
            match self.cgroups.resolve_all(unknown) {
                Ok(paths) => names.extend(paths.into_iter().map(|(id, p)| (id, p.to_string()))),
                Err(e) => missing.push(format!("run-queue culprits' paths: {e}")),
            }
        }
        culprit_tops(read, |id| {
            names.get(&id).cloned().unwrap_or_else(|| format!("/#{id}"))
        })
    }

    /// Brings `self.queues` (accept queues by port) up to date: the listing
    /// (a sock_diag dump) is taken again unless nothing can have changed it:
    /// every queue was empty at the last listing, less than [`SLOW_EVERY`]
    /// ago, and the probes saw no handshake complete since (only a
    /// handshake adds to a queue). Says whether it listed them.
    fn list_accept_queues(&mut self, handshakes: bool, missing: &mut Vec<String>) -> bool {
        let Some(read) = self.listeners.as_mut() else {
            return true;
        };
        let unchanged = !handshakes
            && self.probes.counts_handshakes()
            && self.queues.at.is_some_and(|at| at.elapsed() < SLOW_EVERY)
            && self
                .queues
                .by_port
                .values()
                .all(|q| q.accept_queue == 0 && !q.any_full);
        if !unchanged {
            self.queues = match read() {
                Ok(by_port) => LastQueues {
                    at: Some(Instant::now()),
                    by_port,
                },
                Err(e) => {
                    missing.push(format!("accept queues: {e:#}"));
                    LastQueues::default()
                }
            };
        }
        !unchanged
    }

    /// One snapshot: the interval since the previous call (or [`Sensor::prime`]).
    pub fn sample(&mut self) -> Result<Snapshot, ProbeError> {
        if self.previous.is_none() {
            self.prime()?;
        }
        let now = Instant::now();
        let maps = self.probes.read_maps()?;
        let mut missing: Vec<String> = self.probes.missing().to_vec();
        let listed =
            self.list_accept_queues(maps.port_accepts.values().any(|&n| n > 0), &mut missing);
        // Listen overflows need a full queue: while the queues stay empty
        // the counters cannot move and the last reading stands.
        let listen = match self.previous.as_ref().map(|p| p.listen) {
            Some(Some(last)) if !listed => Some(last),
            _ => self.listen_counters(),
        };
        self.read_slow();
        self.check_watched();
        let prev = self.previous.take().unwrap_or_else(|| Previous {
            at: now,
            host_runq: Vec::new(),
            listen: None,
        });
        let interval = now.duration_since(prev.at).max(Duration::from_millis(1));
        let secs = interval.as_secs_f64();

        // Host.
        let host_psi = self.host_psi.read().ok();
        if host_psi.is_none_or(|p| p.is_empty()) {
            missing.push("host PSI: /proc/pressure is absent".into());
        }
        // No scheduler probes, no run-queue figures (of the host or of any
        // cgroup): no data, which holds the policies, not zeros, which
        // would clear them.
        let runq_attached = self.probes.counts_runq();
        if !runq_attached && !missing.iter().any(|m| m.starts_with("run-queue latency")) {
            missing.push(
                "run-queue latency (runq_p50, runq_p99): the scheduler probes are not attached"
                    .into(),
            );
        }
        let host = host_stats(
            runq_attached,
            &maps.host_runq,
            Some(&prev.host_runq),
            host_psi.and_then(|p| p.complete()),
        );

        // Cgroups the probes saw something of in the interval. The watched
        // ones are known by id; the others are resolved to paths and put
        // in path order.
        let index: HashMap<u64, usize> = self.watched.index.take().unwrap_or_else(|| {
            (self.watched.ids.iter().enumerate())
                .filter_map(|(w, id)| Some(((*id)?, w)))
                .collect()
        });
        // Watched cgroups with events in the interval.
        let mut hit = vec![false; self.scope.watched.len()];
        let mut others: Vec<u64> = maps
            .cgroup_runq
            .keys()
            .chain(maps.cgroup_connects.keys())
            .filter(|id| match index.get(id) {
                Some(&w) => {
                    self.watched.seen[w] = true;
                    hit[w] = true;
                    false
                }
                None => true,
            })
            .copied()
            .collect();
        others.sort_unstable();
        others.dedup();
        let mut others: Vec<(CgroupPath, u64)> = if others.is_empty() {
            Vec::new()
        } else {
            match self.cgroups.resolve_all(others) {
                // Ids that resolve to nothing are cgroups already gone.
                Ok(paths) => paths
                    .into_iter()
                    .filter(|(_, p)| within_any(p, &self.scope.subtrees))
                    .map(|(id, p)| (p, id))
                    .collect(),
                Err(e) => {
                    missing.push(format!("cgroup paths: {e}"));
                    Vec::new()
                }
            }
        };
        others.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let culprits = self.culprits_by_victim(&maps.culprits, &index, &others, &mut missing);

        let files = !self.slow.psi.is_empty() || !self.slow.throttled.is_empty();
        let slow = &self.slow;
        // A cgroup's figures; `events`: it may have some in the maps.
        let stats = |path: &CgroupPath, id: u64, events: bool| {
            let (figures, conn_out) = if events {
                (
                    runq_figures(runq_attached, maps.cgroup_runq.get(&id).map(Vec::as_slice)),
                    maps.cgroup_connects.get(&id).copied().unwrap_or(0),
                )
            } else {
                (runq_figures(runq_attached, None), 0)
            };
            let (runq, runq_hist) =
                figures.map_or((RunqStats::default(), None), |(s, h)| (s, Some(h)));
            let (psi, throttling) = if files {
                (
                    slow.psi.get(path).copied(),
                    slow.throttled.get(path).copied(),
                )
            } else {
                (None, None)
            };
            CgroupStats {
                path: path.clone(),
                id,
                runq,
                runq_hist,
                conn_out,
                conn_out_per_s: conn_out as f64 / secs,
                psi,
                throttling,
                culprits: if events {
                    culprits.get(&id).cloned().unwrap_or_default()
                } else {
                    Vec::new()
                },
            }
        };
        // Both lists are in path order: one merge walk. Every watched
        // cgroup that exists is reported, with or without events; another
        // cgroup only if it had some.
        let watched = &self.scope.watched;
        let mut cgroups: Vec<CgroupStats> = Vec::with_capacity(others.len() + watched.len());
        let (mut a, mut w, mut learnt) = (0, 0, false);
        loop {
            let order = match (others.get(a), watched.get(w)) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((p, _)), Some(q)) => p.cmp(q),
            };
            if order.is_gt() {
                if let Some(Some(id)) = self.watched.ids.get(w) {
                    cgroups.push(stats(&watched[w], *id, hit[w]));
                }
                w += 1;
                continue;
            }
            let (path, id) = &others[a];
            a += 1;
            if order.is_eq() {
                // A watched cgroup under an id not known yet (new, or
                // created again). Its path is the policy's own: a cheaper
                // lookup in `decide`.
                cgroups.push(stats(&watched[w], *id, true));
                self.watched.ids[w] = Some(*id);
                self.watched.seen[w] = true;
                learnt = true;
                w += 1;
                continue;
            }
            let c = stats(path, *id, true);
            if c.runq.count > 0 || c.conn_out > 0 {
                cgroups.push(c);
            }
        }
        if !learnt {
            self.watched.index = Some(index);
        }
        self.push_watched(&mut missing);

        // Ports: handshakes from the probe, queues from sock_diag.
        let queues = &self.queues.by_port;
        let overflow_delta = match (listen, prev.listen) {
            (Some(now), Some(before)) => now.since(&before).listen_overflows,
            _ => 0,
        };
        let mut port_ids: Vec<u16> = maps
            .port_accepts
            .keys()
            .chain(queues.keys())
            .copied()
            .collect();
        port_ids.sort_unstable();
        port_ids.dedup();
        let ports = port_ids
            .into_iter()
            .filter_map(|port| {
                let accepted = maps.port_accepts.get(&port).copied().unwrap_or(0);
                port_stats(port, accepted, queues.get(&port), overflow_delta, secs)
            })
            .collect();

        self.previous = Some(Previous {
            at: now,
            host_runq: maps.host_runq,
            listen,
        });
        Ok(Snapshot {
            ts_ms: u64::try_from(now.duration_since(self.started).as_millis()).unwrap_or(u64::MAX),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            host,
            cgroups,
            ports,
            missing,
        })
    }
}

/// Per victim id, its top culprits (named by `name`) from the interval's
/// waits by (victim, culprit).
pub fn culprit_tops(
    read: &HashMap<governor_common::culprits::Key, u64>,
    mut name: impl FnMut(u64) -> String,
) -> HashMap<u64, Vec<Culprit>> {
    let mut by_victim: HashMap<u64, Vec<(String, u64)>> = HashMap::new();
    for (k, ns) in read {
        let n = name(k.culprit);
        by_victim.entry(k.victim).or_default().push((n, *ns));
    }
    by_victim
        .into_iter()
        .map(|(v, waits)| (v, Culprit::top(waits)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn culprits_are_the_top_five_per_victim_with_shares_of_all_its_wait() {
        use governor_common::culprits::{IDLE, Key};
        let mut read = HashMap::new();
        // Victim 10: seven culprits (ids 1..=7 waiting 1..=7 ms) and idle.
        for c in 1..=7u64 {
            read.insert(
                Key {
                    victim: 10,
                    culprit: c,
                },
                c * 1_000_000,
            );
        }
        read.insert(
            Key {
                victim: 10,
                culprit: IDLE,
            },
            2_000_000,
        );
        read.insert(
            Key {
                victim: 11,
                culprit: 11,
            },
            500_000,
        );
        let tops = culprit_tops(&read, |id| match id {
            IDLE => Culprit::IDLE.into(),
            id => format!("/c{id}"),
        });
        let v = &tops[&10];
        assert_eq!(v.len(), 5);
        let names: Vec<&str> = v.iter().map(|c| c.cgroup.as_str()).collect();
        assert_eq!(names, ["/c7", "/c6", "/c5", "/c4", "/c3"]);
        // Shares are of all 30 ms, not of the top five's 25.
        assert_eq!(v[0].wait_us, 7_000);
        assert!((v[0].share - 7.0 / 30.0).abs() < 1e-9, "{v:?}");
        assert!((v[4].share - 3.0 / 30.0).abs() < 1e-9, "{v:?}");
        // Itself (its own other tasks): one culprit, all of it.
        assert_eq!(tops[&11].len(), 1);
        assert_eq!(
            (tops[&11][0].cgroup.as_str(), tops[&11][0].share),
            ("/c11", 1.0)
        );
    }

    #[test]
    fn without_the_scheduler_probes_run_queue_figures_are_no_data() {
        use governor_engine::{
            config::{Scope, SignalKind, SignalSpec},
            decide::signal,
        };
        let api = CgroupPath::new("/api").expect("path");
        // The maps of an interval: nothing for /api, empty host counts.
        let now = vec![0u32; governor_common::hist::BUCKETS];
        let snapshot = |attached: bool| Snapshot {
            interval_ms: 100,
            host: host_stats(attached, &now, Some(&now), None),
            cgroups: vec![CgroupStats {
                path: api.clone(),
                id: 1,
                runq: RunqStats::default(),
                runq_hist: runq_figures(attached, None).map(|(_, h)| h),
                conn_out: 0,
                conn_out_per_s: 0.0,
                psi: None,
                throttling: None,
                culprits: Vec::new(),
            }],
            ..Default::default()
        };
        let of = |scope| SignalSpec {
            kind: SignalKind::RunqP99,
            scope,
        };
        let missing = snapshot(false);
        assert_eq!((missing.host.runq, &missing.host.runq_hist), (None, &None));
        assert_eq!(missing.cgroups[0].runq_hist, None);
        assert_eq!(signal::read(&of(Scope::Host), &missing), None);
        assert_eq!(
            signal::read(&of(Scope::Cgroup(api.clone())), &missing),
            None
        );
        // With the probes, an interval without waits is a measured 0.
        let there = snapshot(true);
        assert_eq!(there.host.runq, Some(RunqStats::default()));
        assert_eq!(there.cgroups[0].runq_hist, Some(RunqHist::default()));
        assert_eq!(signal::read(&of(Scope::Host), &there), Some(0.0));
        assert_eq!(signal::read(&of(Scope::Cgroup(api)), &there), Some(0.0));
    }

    #[test]
    fn the_host_histogram_delta_survives_a_counter_wrap() {
        let mut before = vec![0u32; governor_common::hist::BUCKETS];
        let mut now = before.clone();
        // 40 µs waits: 4 before a CPU's count wrapped and 6 after.
        let b = governor_common::hist::bucket(40_000);
        before[b] = u32::MAX - 3;
        now[b] = 6;
        let h = host_stats(true, &now, Some(&before), None);
        let runq = h.runq.expect("probes attached");
        assert_eq!(runq.count, 10, "{runq:?}");
        assert!((38..=42).contains(&runq.p99_us), "{runq:?}");
    }

    #[test]
    fn overflows_go_to_full_ports_only() {
        let q = |port, accept_queue, accept_queue_max, any_full| ListenQueue {
            port,
            accept_queue,
            accept_queue_max,
            listeners: 1,
            any_full,
        };
        let got = [(9000, q(9000, 9, 8, true)), (80, q(80, 3, 128, false))]
            .iter()
            .filter_map(|(port, queue)| port_stats(*port, 0, Some(queue), 12, 1.0))
            .collect::<Vec<_>>();
        assert_eq!(got.len(), 2);
        assert_eq!((got[1].port, got[1].overflows), (80, 0));
        assert_eq!(
            got[0],
            PortStats {
                port: 9000,
                accept_queue: 9,
                accept_queue_max: 8,
                overflows: 12,
                ..PortStats::default()
            }
        );
    }
}
