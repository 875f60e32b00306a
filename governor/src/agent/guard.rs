//! The accept-queue guards of the running config: the imperative shell
//! around `governor_engine::decide::guard`.
//!
//! A live policy with `guard = { port, … }` arms its guard at start, not on
//! a trip: the listener of the port (found through sock_diag in the agent's
//! namespace, its fd copied from the process that holds it) goes into the
//! kernel's sock hash, and the bound into its guard map. Every tick the
//! port's drain, depth and backlog from the snapshot, and the kernel's count
//! of refused SYNs, go to the pure `GuardState::step`; each move of the
//! bound is carried out and logged with its reason, and refusals are logged
//! (summed, at most once a second) and counted in `/metrics`. A listener
//! that changed (the server restarted) is found again within a second. A
//! reload disarms the guards no live policy names any more; the release at
//! exit unloads the programs, which disarms every guard.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use governor_engine::{
    config::Config,
    decide::guard::{GuardEvent, GuardInput, GuardSpec, GuardState},
    snapshot::Snapshot,
};

use crate::act::rules::Actuators;

/// How often the listener of an armed port is looked for again.
const RELOOK_EVERY: Duration = Duration::from_secs(1);
/// Refusals are logged summed, at most this often.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(1);

struct Armed {
    policy: String,
    spec: GuardSpec,
    state: GuardState,
    /// The inode of the listener in the kernel's sock hash; `None`: not yet.
    inode: Option<u32>,
    looked: Option<Instant>,
    /// Refusals seen since the last line that logged them.
    unlogged: u64,
    logged: Option<Instant>,
    /// The last failure logged (not repeated every second).
    failed: Option<String>,
}

/// The guards of the running config, by port.
pub struct Guards {
    netns: PathBuf,
    proc_root: PathBuf,
    armed: BTreeMap<u16, Armed>,
    /// Said once: the kernel cannot run the guard.
    unavailable: Option<String>,
}

impl Guards {
    /// Guards of ports in the namespace `netns`; listeners' owners are found under `proc_root`.
    pub fn new(netns: &Path, proc_root: &Path) -> Self {
        Self {
            netns: netns.to_path_buf(),
            proc_root: proc_root.to_path_buf(),
            armed: BTreeMap::new(),
            unavailable: None,
        }
    }

    /// Takes the guards of `cfg`: live policies' guards are kept (their
    /// state too, if unchanged) or added; the others are disarmed. Dry-run
    /// policies' guards are only said.
    pub fn configure(&mut self, cfg: &Config, actuators: &mut Actuators) {
        let mut wanted: BTreeMap<u16, (String, GuardSpec)> = BTreeMap::new();
        for p in &cfg.policies {
            let Some(g) = &p.guard else { continue };
            if p.is_dry_run(&cfg.agent) {
                tracing::info!(
                    policy = %p.name,
                    "policy {}: dry-run: would arm a guard on :{} (the kernel would refuse SYNs while the accept queue is at the bound); not armed",
                    p.name,
                    g.port
                );
                continue;
            }
            wanted.insert(g.port, (p.name.clone(), g.clone()));
        }
        let gone: Vec<u16> = self
            .armed
            .iter()
            .filter(|(port, a)| {
                wanted
                    .get(port)
                    .is_none_or(|(name, spec)| *name != a.policy || *spec != a.spec)
            })
            .map(|(port, _)| *port)
            .collect();
        for port in gone {
            if let Some(a) = self.armed.remove(&port) {
                match actuators.disarm_guard(port) {
                    Ok(()) => {
                        tracing::info!(policy = %a.policy, "policy {}: guard on :{port} disarmed (config reloaded)", a.policy)
                    }
                    Err(e) => {
                        tracing::error!(policy = %a.policy, "policy {}: disarming the guard on :{port} FAILED: {e:#}", a.policy)
                    }
                }
            }
        }
        if wanted.is_empty() {
            return;
        }
        match actuators.guard_unavailable() {
            Ok(None) => {}
            Ok(Some(why)) => {
                if self.unavailable.as_ref() != Some(&why) {
                    tracing::warn!(
                        "{} polic{} a guard, but {why}; the policies' ladders still work",
                        wanted.len(),
                        if wanted.len() == 1 {
                            "y has"
                        } else {
                            "ies have"
                        }
                    );
                }
                self.unavailable = Some(why);
                return;
            }
            Err(e) => {
                tracing::warn!("the guards cannot be armed: {e:#}");
                return;
            }
        }
        let mut new = Vec::new();
        for (port, (policy, spec)) in wanted {
            if !self.armed.contains_key(&port) {
                new.push(port);
            }
            self.armed.entry(port).or_insert_with(|| Armed {
                policy,
                spec,
                state: GuardState::default(),
                inode: None,
                looked: None,
                unlogged: 0,
                logged: None,
                failed: None,
            });
        }
        // Armed now, not at the first tick: a cold start under load fills
        // the queue within a tick.
        if !new.is_empty() {
            let found = self.listeners();
            for port in new {
                self.relook(port, found.as_ref(), actuators);
            }
        }
    }

    /// The bound of each guard the kernel holds, by port.
    pub fn bounds(&self) -> BTreeMap<u16, u32> {
        (self.armed.iter())
            .filter(|(_, a)| a.inode.is_some())
            .filter_map(|(port, a)| Some((*port, a.state.bound?)))
            .collect()
    }

    /// One tick: looks for listeners that are new or changed, steps each
    /// guard on `snap` and carries out what it decided.
    pub fn tick(&mut self, snap: &Snapshot, now: Duration, actuators: &mut Actuators) {
        if self.armed.is_empty() {
            return;
        }
        let due: Vec<u16> = self
            .armed
            .iter()
            .filter(|(_, a)| a.looked.is_none_or(|t| t.elapsed() >= RELOOK_EVERY))
            .map(|(p, _)| *p)
            .collect();
        if !due.is_empty() {
            let found = self.listeners();
            for port in due {
                self.relook(port, found.as_ref(), actuators);
            }
        }
        let guarded = actuators.guarded();
        for (port, a) in &mut self.armed {
            let Some(bound) = a.state.bound.filter(|_| a.inode.is_some()) else {
                continue;
            };
            let stats = snap.ports.iter().find(|p| p.port == *port);
            let input = GuardInput {
                drain_per_s: stats.map(|p| p.accepted_per_s),
                queue: stats.map(|p| p.accept_queue),
                backlog: stats.map(|p| p.accept_queue_max).filter(|b| *b > 0),
                guarded_total: guarded.get(port).copied().unwrap_or(0),
            };
            for event in a.state.step(&a.spec, &input, now) {
                match event {
                    GuardEvent::Bound { to, reason, .. } => {
                        if to == bound {
                            continue;
                        }
                        match actuators.move_guard(*port, to, a.spec.mode) {
                            Ok(()) => {
                                tracing::info!(policy = %a.policy, "policy {}: {reason}", a.policy)
                            }
                            Err(e) => {
                                tracing::error!(policy = %a.policy, "policy {}: {reason}: FAILED: {e:#}", a.policy)
                            }
                        }
                    }
                    GuardEvent::Refused { count, reason, .. } => {
                        a.unlogged += count;
                        let since = a.logged.map(|t| t.elapsed());
                        if since.is_none_or(|t| t >= REFUSALS_LOGGED_EVERY) {
                            a.logged = Some(Instant::now());
                            let n = std::mem::take(&mut a.unlogged);
                            if n == count {
                                tracing::info!(policy = %a.policy, "policy {}: {reason}", a.policy);
                            } else {
                                // The tick's reason, with the sum since the last line.
                                let verb = match a.spec.mode {
                                    governor_engine::config::RejectMode::Reset => "reset",
                                    governor_engine::config::RejectMode::Drop => "dropped",
                                };
                                tracing::info!(
                                    policy = %a.policy,
                                    "policy {}: guard on :{port} {verb} {n} SYNs in the last {:.1}s: accept queue at its bound {}",
                                    a.policy,
                                    since.unwrap_or_default().as_secs_f64(),
                                    a.state.bound.unwrap_or(bound)
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The listeners of the namespace: (port, inode), IPv4 first.
    fn listeners(&self) -> Option<Vec<(u16, u32)>> {
        let got = crate::sense::netns::in_netns(&self.netns, || {
            let mut diag = crate::sense::sockdiag::SockDiag::new()?;
            Ok(diag.listeners()?)
        });
        match got {
            Ok(l) => {
                let mut out: Vec<(u16, u32, bool)> = l
                    .iter()
                    .map(|l| (l.local.port(), l.inode, l.local.is_ipv6()))
                    .collect();
                out.sort_by_key(|(port, _, v6)| (*port, *v6));
                Some(out.into_iter().map(|(p, i, _)| (p, i)).collect())
            }
            Err(e) => {
                tracing::debug!("guards: listing listeners: {e:#}");
                None
            }
        }
    }

    /// Puts `port`'s listener in the kernel if it is new or changed.
    fn relook(&mut self, port: u16, found: Option<&Vec<(u16, u32)>>, actuators: &mut Actuators) {
        let Some(a) = self.armed.get_mut(&port) else {
            return;
        };
        a.looked = Some(Instant::now());
        let Some(found) = found else { return };
        let Some(inode) = found.iter().find(|(p, _)| *p == port).map(|(_, i)| *i) else {
            if a.inode.take().is_some() {
                tracing::info!(policy = %a.policy, "policy {}: guard on :{port}: the listener is gone; armed again when one listens", a.policy);
            }
            return;
        };
        if a.inode == Some(inode) {
            return;
        }
        // Armed at the bound the state holds, or its first (the ceiling,
        // until the drain is measured).
        let bound = match a.state.bound {
            Some(b) => b,
            None => {
                let nothing = GuardInput {
                    drain_per_s: None,
                    queue: None,
                    backlog: None,
                    guarded_total: 0,
                };
                let mut first = None;
                for e in a.state.step(&a.spec, &nothing, Duration::ZERO) {
                    if let GuardEvent::Bound { to, reason, .. } = e {
                        first = Some((to, reason));
                    }
                }
                match first {
                    Some((to, reason)) => {
                        tracing::info!(policy = %a.policy, "policy {}: {reason}", a.policy);
                        to
                    }
                    None => a.spec.ceiling(None),
                }
            }
        };
        let result = crate::act::net::listener_fd(&self.proc_root, u64::from(inode))
            .map_err(|e| anyhow::anyhow!("copying the listener (socket inode {inode}): {e}"))
            .and_then(|fd| actuators.arm_guard(port, bound, a.spec.mode, &fd));
        match result {
            Ok(()) => {
                let again = a.inode.is_some();
                a.inode = Some(inode);
                a.failed = None;
                tracing::info!(
                    policy = %a.policy,
                    "policy {}: guard on :{port} armed at bound {bound}{}: the kernel {} SYNs while the accept queue holds {bound} or more",
                    a.policy,
                    if again { " (the listener changed)" } else { "" },
                    match a.spec.mode {
                        governor_engine::config::RejectMode::Reset => "resets",
                        governor_engine::config::RejectMode::Drop => "drops",
                    }
                );
            }
            Err(e) => {
                let e = format!("{e:#}");
                if a.failed.as_ref() != Some(&e) {
                    tracing::error!(policy = %a.policy, "policy {}: arming the guard on :{port} FAILED (retried every second): {e}", a.policy);
                }
                a.failed = Some(e);
            }
        }
    }
}
