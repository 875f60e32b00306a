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

use crate::{
    ebpf::{MapReadings, ProbeError, Probes},
    runq,
    sense::{
        cgroupfs::{CgroupFs, CgroupIndex, CpuThrottle, within_any},
        procfs::{self, ListenCounters},
        sockdiag::SockDiag,
    },
    snapshot::{CgroupPath, CgroupStats, HostStats, PortStats, Psi, Snapshot, Throttling},
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

/// One accept-queue reading of a listening port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerQueue {
    /// Connections waiting to be accepted.
    pub depth: u32,
    /// The backlog limit.
    pub limit: u32,
    /// True if a listener of the port is full (it drops handshakes).
    pub full: bool,
}

/// Per-port accept queues as the sensor keeps them, from sock_diag's listing.
pub fn queues_by_port(
    queues: Vec<crate::sense::sockdiag::ListenQueue>,
) -> HashMap<u16, ListenerQueue> {
    queues
        .into_iter()
        .map(|q| {
            (
                q.port,
                ListenerQueue {
                    depth: q.accept_queue,
                    limit: q.accept_queue_max,
                    full: q.any_full,
                },
            )
        })
        .collect()
}

/// Source of per-port accept-queue readings (sock_diag in production).
pub type ListenerReader = Box<dyn FnMut() -> anyhow::Result<HashMap<u16, ListenerQueue>> + Send>;

struct Previous {
    at: Instant,
    maps: MapReadings,
    listen: Option<ListenCounters>,
}

/// How often the cgroups' own files (PSI, `cpu.stat`) are read.
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

/// Builds [`Snapshot`]s from the probes and the host's files.
pub struct Sensor {
    probes: Probes,
    cgroups: CgroupIndex,
    proc_root: PathBuf,
    listeners: Option<ListenerReader>,
    scope: SensorScope,
    started: Instant,
    previous: Option<Previous>,
    /// Cgroup map entries reclaimed because their cgroup is gone.
    pub reclaimed: u64,
    netstat: Option<NetstatReader>,
    slow: SlowReadings,
    order: CgroupOrder,
}

/// The cgroups the maps held at the last change of their ids, in path
/// order (resolving and sorting a thousand paths every tick is costly).
#[derive(Default)]
struct CgroupOrder {
    ids: Vec<u64>,
    by_path: Vec<(u64, CgroupPath)>,
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
            proc_root,
            listeners,
            started: Instant::now(),
            previous: None,
            reclaimed: 0,
            netstat: None,
            slow: SlowReadings::default(),
            order: CgroupOrder::default(),
        }
    }

    /// A sensor whose accept queues and listen counters come from the
    /// network namespace a [`crate::netns::NetnsWorker`] lives in.
    pub fn with_netns(mut self, worker: crate::netns::NetnsWorker) -> Self {
        let worker = std::sync::Arc::new(worker);
        let w2 = std::sync::Arc::clone(&worker);
        self.listeners = Some(Box::new(move || Ok(worker.read()?.queues)));
        self.netstat = Some(Box::new(move || w2.read().ok().and_then(|r| r.listen)));
        self
    }

    /// Replaces what the sensor reports on (e.g. after a reload).
    pub fn set_scope(&mut self, scope: SensorScope) {
        self.scope = scope.normalised();
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
        let reader: ListenerReader = Box::new(move || Ok(queues_by_port(diag.listen_queues()?)));
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

    /// Gives the probes back (to drop them, which detaches everything).
    pub fn into_probes(self) -> Probes {
        self.probes
    }

    /// Takes the first reading; the next [`Sensor::sample`] reports the
    /// interval since.
    pub fn prime(&mut self) -> Result<(), ProbeError> {
        let maps = self.probes.read_maps()?;
        let listen = self.listen_counters();
        self.previous = Some(Previous {
            at: Instant::now(),
            maps,
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

    /// One snapshot: the interval since the previous call (or [`Sensor::prime`]).
    pub fn sample(&mut self) -> Result<Snapshot, ProbeError> {
        if self.previous.is_none() {
            self.prime()?;
        }
        let now = Instant::now();
        let maps = self.probes.read_maps()?;
        let listen = self.listen_counters();
        self.read_slow();
        let prev = self.previous.take().unwrap_or_else(|| Previous {
            at: now,
            maps: MapReadings::default(),
            listen: None,
        });
        let interval = now.duration_since(prev.at).max(Duration::from_millis(1));
        let secs = interval.as_secs_f64();
        let mut missing: Vec<String> = self.probes.missing().to_vec();

        // Host.
        let host_psi = procfs::host_psi(&self.proc_root).ok();
        if host_psi.is_none_or(|p| p.is_empty()) {
            missing.push("host PSI: /proc/pressure is absent".into());
        }
        let host = HostStats {
            runq: Some(runq::stats(&runq::delta(
                &maps.host_runq,
                Some(&prev.maps.host_runq),
            ))),
            psi: host_psi.and_then(|p| p.complete()),
        };

        // Cgroups seen by the probes; ids that no longer exist are reclaimed.
        let mut ids: Vec<u64> = maps
            .cgroup_runq
            .keys()
            .chain(maps.cgroup_connects.keys())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids != self.order.ids {
            match self.cgroups.resolve_all(ids.iter().copied()) {
                Ok(paths) => {
                    let gone: Vec<u64> = ids
                        .iter()
                        .copied()
                        .filter(|id| !paths.contains_key(id))
                        .collect();
                    if !gone.is_empty() {
                        self.reclaimed += self.probes.forget_cgroups(&gone) as u64;
                    }
                    let mut by_path: Vec<(u64, CgroupPath)> = paths.into_iter().collect();
                    by_path.sort_by(|a, b| a.1.cmp(&b.1));
                    // Reclaimed ids are gone from the maps: the next reading
                    // will differ from `ids` and resolve again.
                    self.order = CgroupOrder { ids, by_path };
                }
                Err(e) => {
                    missing.push(format!("cgroup paths: {e}"));
                    self.order = CgroupOrder::default();
                }
            }
        }
        let mut cgroups: Vec<CgroupStats> = Vec::new();
        // Both lists are in path order: one merge walk finds the watched.
        let watched = &self.scope.watched;
        let mut seen = vec![false; watched.len()];
        let mut w = 0;
        let files = !self.slow.psi.is_empty() || !self.slow.throttled.is_empty();
        for (id, path) in &self.order.by_path {
            let id = *id;
            while w < watched.len() && watched[w] < *path {
                w += 1;
            }
            let is_watched = w < watched.len() && watched[w] == *path;
            if !within_any(path, &self.scope.subtrees) {
                continue;
            }
            let h = maps.cgroup_runq.get(&id).map(Vec::as_slice).unwrap_or(&[]);
            let ph = prev.maps.cgroup_runq.get(&id).map(Vec::as_slice);
            // Most cgroups ran nothing since the last tick: same total.
            let unchanged = ph.is_some()
                && maps.cgroup_runq_total.get(&id) == prev.maps.cgroup_runq_total.get(&id);
            let runq = if unchanged {
                Default::default()
            } else {
                runq::stats(&runq::delta(h, ph))
            };
            let conn_now = maps.cgroup_connects.get(&id).copied().unwrap_or(0);
            let conn_prev = prev.maps.cgroup_connects.get(&id).copied().unwrap_or(0);
            let conn_out = if conn_now >= conn_prev {
                conn_now - conn_prev
            } else {
                conn_now
            };
            if runq.count == 0 && conn_out == 0 && !is_watched {
                continue;
            }
            if is_watched {
                seen[w] = true;
            }
            let (psi, throttling) = if files {
                (
                    self.slow.psi.get(path).copied(),
                    self.slow.throttled.get(path).copied(),
                )
            } else {
                (None, None)
            };
            cgroups.push(CgroupStats {
                path: path.clone(),
                id,
                runq,
                conn_out,
                conn_out_per_s: conn_out as f64 / secs,
                psi,
                throttling,
            });
        }
        // Watched cgroups the maps do not hold still appear.
        let mut idle = Vec::new();
        for (path, _) in watched.iter().zip(&seen).filter(|(_, seen)| !**seen) {
            let Ok(Some(id)) = self.cgroups.cgroupfs().id_of(path) else {
                continue;
            };
            idle.push(CgroupStats {
                path: path.clone(),
                id,
                runq: Default::default(),
                conn_out: 0,
                conn_out_per_s: 0.0,
                psi: self.slow.psi.get(path).copied(),
                throttling: self.slow.throttled.get(path).copied(),
            });
        }
        if !idle.is_empty() {
            cgroups.append(&mut idle);
            cgroups.sort_by(|a, b| a.path.cmp(&b.path));
        }

        // Ports: accepts from the probe, queues from sock_diag.
        let queues = match self.listeners.as_mut().map(|read| read()) {
            Some(Ok(q)) => q,
            Some(Err(e)) => {
                missing.push(format!("accept queues: {e:#}"));
                HashMap::new()
            }
            None => HashMap::new(),
        };
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
        let mut ports = Vec::new();
        for port in port_ids {
            let now_acc = maps.port_accepts.get(&port).copied().unwrap_or(0);
            let prev_acc = prev.maps.port_accepts.get(&port).copied().unwrap_or(0);
            let accepted = if now_acc >= prev_acc {
                now_acc - prev_acc
            } else {
                now_acc
            };
            let q = queues.get(&port).copied().unwrap_or_default();
            // ListenOverflows is host-wide: the interval's growth is shown on
            // every port whose accept queue is full now (the only ones that
            // can overflow), and on none otherwise.
            let overflows = if q.full { overflow_delta } else { 0 };
            if accepted == 0 && q.limit == 0 && overflows == 0 {
                continue;
            }
            ports.push(PortStats {
                port,
                accepted,
                accepted_per_s: accepted as f64 / secs,
                accept_queue: q.depth,
                accept_queue_max: q.limit,
                overflows,
            });
        }

        self.previous = Some(Previous {
            at: now,
            maps,
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
