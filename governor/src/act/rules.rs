//! The agent's actuators: turn applied and reverted decisions into changes,
//! each through the mechanism the action names.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use governor_engine::{
    config::{Action, Target},
    decide::{Change, Decision, DecisionKind},
    snapshot::CgroupPath,
};

use crate::{
    act::{
        cgroup::{Applied, CgroupActuator, Drifted},
        net::{Attachments, DetachCheck, NetEnforcer, Rule},
    },
    sense::cgroupfs::CgroupFs,
};

/// Cgroup actions (`cpu_weight`, `cpu_limit`, `memory_high`), journaled:
/// through cgroup files, or through systemd for its units.
pub trait CgroupActuation: Send {
    /// Puts `action` of `policy` in force.
    fn apply(&mut self, policy: &str, action: &Action) -> anyhow::Result<()>;
    /// Lifts `action` of `policy`, restoring the journaled original.
    fn lift(&mut self, policy: &str, action: &Action) -> anyhow::Result<()>;
    /// Restores everything journaled (shutdown, and start after a crash);
    /// returns a one-line report.
    fn revert_all(&mut self) -> String;
    /// Retries reverts that failed before (each tick).
    fn retry_pending(&mut self) {}
    /// Values held that someone else changed, as found now (each tick; the
    /// actuator logs each episode once).
    fn check_drift(&mut self) -> Vec<Drifted> {
        Vec::new()
    }
}

impl CgroupActuation for CgroupActuator {
    fn apply(&mut self, policy: &str, action: &Action) -> anyhow::Result<()> {
        match CgroupActuator::apply(self, policy, action)? {
            Applied::TargetAbsent { dir } => {
                anyhow::bail!("target cgroup {} does not exist", dir.display())
            }
            Applied::Written {
                fallback: Some(f), ..
            } => {
                tracing::warn!(policy, "{action}: {f}");
                Ok(())
            }
            Applied::Written { .. } => Ok(()),
        }
    }
    fn lift(&mut self, policy: &str, action: &Action) -> anyhow::Result<()> {
        let lifted = CgroupActuator::lift(self, policy, action)?;
        tracing::debug!(policy, "lift: {lifted:?}");
        Ok(())
    }
    fn revert_all(&mut self) -> String {
        CgroupActuator::revert_all(self).to_string()
    }
    fn retry_pending(&mut self) {
        if self.pending() > 0 {
            let report = CgroupActuator::retry_pending(self);
            if !report.is_clean() {
                tracing::warn!("retrying failed reverts: {report}");
            } else if report != Default::default() {
                tracing::info!("retried failed reverts: {report}");
            }
        }
    }
    fn check_drift(&mut self) -> Vec<Drifted> {
        CgroupActuator::check_drift(self)
    }
}

/// Every actuator of the agent.
pub struct Actuators {
    cgroupfs: CgroupFs,
    cgroups: Box<dyn CgroupActuation>,
    /// Loaded on the first connection action.
    net: Option<NetEnforcer>,
    /// What the enforcer was attached to, kept by [`Self::revert_all`] for
    /// [`Self::check_detached`].
    released: Option<Attachments>,
    /// The namespace whose ports policies name.
    netns: PathBuf,
    netns_attached: bool,
    /// Cgroups (by id) whose connect programs we attached.
    connect_attached: BTreeSet<u64>,
    /// The connection rules each policy has imposed on each target, oldest
    /// first: lifting a rung restores the rung below it on the same target
    /// (reject → throttle) rather than opening the target entirely.
    imposed: BTreeMap<(String, Target), Vec<Rule>>,
    /// The rule the kernel holds for each target: the strictest of the
    /// policies' claims on it ([`strictest`]). The kernel has one bucket
    /// per target, so two policies on one target share it: one policy
    /// lifting puts the other's claim back, never opens the target. With
    /// the cgroup's id: a cgroup made again at the same path holds nothing.
    in_force: BTreeMap<Target, (Rule, Option<u64>)>,
    /// The cgroup of each id a rule was set for: the kernel counts
    /// verdicts by id.
    named: BTreeMap<u64, CgroupPath>,
    /// Something may be in force that [`Actuators::revert_all`] has not
    /// reverted since: dropping the actuators then reverts it (the guard
    /// for every exit path, an error or a panic included).
    dirty: bool,
}

impl Actuators {
    /// Actuators over `cgroupfs`, acting on ports in the namespace `netns`.
    pub fn new(cgroupfs: CgroupFs, cgroups: Box<dyn CgroupActuation>, netns: PathBuf) -> Self {
        Self {
            cgroupfs,
            cgroups,
            net: None,
            released: None,
            netns,
            netns_attached: false,
            connect_attached: BTreeSet::new(),
            imposed: BTreeMap::new(),
            in_force: BTreeMap::new(),
            named: BTreeMap::new(),
            dirty: false,
        }
    }

    /// Carries out one decision: `Applied` imposes, `Reverted` lifts; `Would`
    /// and `Refused` change nothing.
    pub fn carry_out(&mut self, d: &Decision) -> anyhow::Result<()> {
        if d.kind == DecisionKind::Applied {
            self.dirty = true;
        }
        match (d.kind, d.change) {
            (DecisionKind::Applied, Change::Impose) => self.impose(&d.policy, &d.action),
            (DecisionKind::Applied, Change::Adjust) => self.adjust(&d.policy, &d.action),
            (DecisionKind::Applied | DecisionKind::Reverted, Change::Lift) => {
                self.lift(&d.policy, &d.action)
            }
            _ => Ok(()),
        }
    }

    fn enforcer(&mut self) -> anyhow::Result<&mut NetEnforcer> {
        if self.net.is_none() {
            self.net = Some(NetEnforcer::load()?);
        }
        self.net
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("enforcement programs not loaded"))
    }

    fn cgroup_id(&self, c: &CgroupPath) -> anyhow::Result<(u64, PathBuf)> {
        let id = self
            .cgroupfs
            .id_of(c)?
            .ok_or_else(|| anyhow::anyhow!("cgroup {c} does not exist"))?;
        Ok((id, self.cgroupfs.dir(c)))
    }

    fn rule(action: &Action) -> Option<(Target, Rule)> {
        match action {
            Action::ThrottleConnections {
                target,
                rate,
                burst,
                mode,
                exempt,
                ..
            } => Some((
                target.clone(),
                // A share of the accepted rate is resolved by `decide`
                // before it gets here; never a bucket of 0 regardless.
                Rule {
                    rate: Some(rate.as_per_second().max(1.0)),
                    burst: (*burst).max(1),
                    mode: *mode,
                    exempt: exempt.clone(),
                },
            )),
            Action::RejectConnections {
                target,
                mode,
                exempt,
            } => Some((
                target.clone(),
                Rule {
                    rate: None,
                    burst: 0,
                    mode: *mode,
                    exempt: exempt.clone(),
                },
            )),
            _ => None,
        }
    }

    fn impose(&mut self, policy: &str, action: &Action) -> anyhow::Result<()> {
        let Some((target, rule)) = Self::rule(action) else {
            return self.cgroups.apply(policy, action);
        };
        let key = (policy.to_owned(), target.clone());
        self.imposed.entry(key.clone()).or_default().push(rule);
        self.enforce(&target).inspect_err(|_| {
            // Not in force: the policy's stack says what the kernel holds.
            self.pop_claim(&key);
        })
    }

    /// Replaces the rule a policy has in force on a target (the top of its
    /// stack) with `action`'s.
    fn adjust(&mut self, policy: &str, action: &Action) -> anyhow::Result<()> {
        let Some((target, rule)) = Self::rule(action) else {
            anyhow::bail!("only connection rules are re-set, not {action}");
        };
        let key = (policy.to_owned(), target.clone());
        let stack = self.imposed.entry(key.clone()).or_default();
        let before = stack.pop();
        stack.push(rule);
        self.enforce(&target).inspect_err(|_| {
            self.pop_claim(&key);
            if let Some(before) = before {
                self.imposed.entry(key).or_default().push(before);
            }
        })
    }

    /// Drops the top of a policy's stack on a target (and the stack once
    /// empty).
    fn pop_claim(&mut self, key: &(String, Target)) -> Option<Rule> {
        let stack = self.imposed.get_mut(key)?;
        let top = stack.pop();
        if stack.is_empty() {
            self.imposed.remove(key);
        }
        top
    }

    /// Puts in the kernel the strictest claim of every policy on `target`
    /// (no rule if none claims it), unless it is in force already.
    fn enforce(&mut self, target: &Target) -> anyhow::Result<()> {
        let want = strictest(
            self.imposed
                .iter()
                .filter(|((_, t), _)| t == target)
                .filter_map(|(_, stack)| stack.last()),
        )
        .cloned();
        let id = match target {
            Target::Cgroup(c) => self.cgroup_id(c).ok().map(|(id, _)| id),
            Target::Port(_) => None,
        };
        let held = self.in_force.get(target).filter(|(_, held)| *held == id);
        if held.map(|(rule, _)| rule) == want.as_ref() {
            return Ok(());
        }
        match want {
            Some(rule) => {
                self.set_rule(target.clone(), &rule)?;
                self.in_force.insert(target.clone(), (rule, id));
            }
            None => {
                self.clear_rule(target)?;
                self.in_force.remove(target);
            }
        }
        Ok(())
    }

    /// Loads the enforcement programs and attaches inbound admission to the
    /// namespace, with no rule yet (every connection passes), if not done.
    /// The agent calls it at start when a live policy acts on ports, so the
    /// first trip does not wait for the verifier, and a kernel that cannot
    /// do it says so at once.
    pub fn attach_inbound(&mut self) -> anyhow::Result<()> {
        if self.netns_attached {
            return Ok(());
        }
        let ns = self.netns.clone();
        // The drop sink must live in the namespace: attach from a thread
        // that joined it.
        let mut enforcer = match self.net.take() {
            Some(e) => e,
            None => NetEnforcer::load()?,
        };
        let ns2 = ns.clone();
        let enforcer = crate::sense::netns::in_netns(&ns, move || {
            enforcer.attach_netns(&ns2)?;
            Ok(enforcer)
        })?;
        self.net = Some(enforcer);
        self.netns_attached = true;
        Ok(())
    }

    fn set_rule(&mut self, target: Target, rule: &Rule) -> anyhow::Result<()> {
        let rule = rule.clone();
        match target {
            Target::Port(port) => {
                self.attach_inbound()?;
                self.enforcer()?.set_port(port, &rule)?;
            }
            Target::Cgroup(c) => {
                let (id, dir) = self.cgroup_id(&c)?;
                // By id: a cgroup made again at the same path needs its own.
                if !self.connect_attached.contains(&id) {
                    self.enforcer()?.attach_cgroup(&dir)?;
                    self.connect_attached.insert(id);
                }
                self.enforcer()?.set_cgroup(id, &rule)?;
                self.named.insert(id, c);
            }
        }
        Ok(())
    }

    fn lift(&mut self, policy: &str, action: &Action) -> anyhow::Result<()> {
        let Some((target, _)) = Self::rule(action) else {
            return self.cgroups.lift(policy, action);
        };
        let key = (policy.to_owned(), target.clone());
        let popped = self.pop_claim(&key);
        self.enforce(&target).inspect_err(|_| {
            // Still in force: a retry of the lift pops this claim again.
            if let Some(rule) = popped {
                self.imposed.entry(key).or_default().push(rule);
            }
        })
    }

    /// Removes the kernel's rule of `target`: every connection passes.
    fn clear_rule(&mut self, target: &Target) -> anyhow::Result<()> {
        let found = match target {
            Target::Cgroup(c) => self.cgroup_id(c).ok(),
            Target::Port(_) => None,
        };
        let Some(net) = self.net.as_mut() else {
            return Ok(());
        };
        match target {
            Target::Port(port) => net.clear_port(*port)?,
            Target::Cgroup(_) => {
                // A cgroup that vanished took its programs with it.
                if let Some((id, dir)) = found {
                    net.clear_cgroup(id)?;
                    net.detach_cgroup(&dir)?;
                    self.connect_attached.remove(&id);
                }
            }
        }
        Ok(())
    }

    /// The kernel's admission verdicts of every target a rule was set for,
    /// cumulative since the enforcement programs were loaded: (target,
    /// admitted, refused, dropped, guarded). Empty before the first
    /// connection rule or guard.
    pub fn verdicts(&self) -> Vec<(Target, u64, u64, u64, u64)> {
        let Some(net) = self.net.as_ref() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match net.port_verdicts() {
            Ok(ports) => out.extend(
                ports
                    .into_iter()
                    .map(|(p, v)| (Target::Port(p), v.admitted, v.refused, v.dropped, v.guarded)),
            ),
            Err(e) => tracing::debug!("port verdicts: {e}"),
        }
        match net.cgroup_verdicts() {
            Ok(cgroups) => out.extend(cgroups.into_iter().filter_map(|(id, v)| {
                let c = self.named.get(&id)?;
                Some((
                    Target::Cgroup(c.clone()),
                    v.admitted,
                    v.refused,
                    v.dropped,
                    v.guarded,
                ))
            })),
            Err(e) => tracing::debug!("cgroup verdicts: {e}"),
        }
        out
    }

    /// Why this kernel cannot run the accept-queue guard (`None`: it can);
    /// loads the enforcement programs if they are not yet.
    pub fn guard_unavailable(&mut self) -> anyhow::Result<Option<String>> {
        Ok(self.enforcer()?.guard_unavailable().map(str::to_owned))
    }

    /// Arms (or re-arms, with a new listener) the guard of `port` at
    /// `bound`: inbound admission is attached to the namespace first. The
    /// kernel keeps its own reference to the listener: `listener` may be
    /// closed at once (and must be, so that the server's close still closes
    /// it).
    pub fn arm_guard(
        &mut self,
        port: u16,
        bound: u32,
        mode: governor_engine::config::RejectMode,
        listener: &impl std::os::fd::AsRawFd,
    ) -> anyhow::Result<()> {
        self.attach_inbound()?;
        self.dirty = true;
        self.enforcer()?.set_guard(port, bound, mode, listener)?;
        Ok(())
    }

    /// Moves the bound of an armed guard.
    pub fn move_guard(
        &mut self,
        port: u16,
        bound: u32,
        mode: governor_engine::config::RejectMode,
    ) -> anyhow::Result<()> {
        self.enforcer()?.set_guard_bound(port, bound, mode)?;
        Ok(())
    }

    /// Disarms the guard of `port` (nothing if it was not armed).
    pub fn disarm_guard(&mut self, port: u16) -> anyhow::Result<()> {
        if let Some(net) = self.net.as_mut() {
            net.clear_guard(port)?;
        }
        Ok(())
    }

    /// SYNs each port's guard refused, cumulative since the programs were
    /// loaded. Empty before they are.
    pub fn guarded(&self) -> BTreeMap<u16, u64> {
        let Some(net) = self.net.as_ref() else {
            return BTreeMap::new();
        };
        match net.port_verdicts() {
            Ok(ports) => ports
                .into_iter()
                .filter(|(_, v)| v.guarded > 0)
                .map(|(p, v)| (p, v.guarded))
                .collect(),
            Err(e) => {
                tracing::debug!("port verdicts: {e}");
                BTreeMap::new()
            }
        }
    }

    /// Retries failed reverts (each tick).
    pub fn retry_pending(&mut self) {
        self.cgroups.retry_pending();
    }

    /// Values held on cgroups that someone else changed since (each tick).
    pub fn check_drift(&mut self) -> Vec<Drifted> {
        self.cgroups.check_drift()
    }

    /// Reverts everything: connection rules go with the enforcer (its links
    /// die with it), cgroup files are restored from the journal.
    pub fn revert_all(&mut self) -> String {
        if let Some(net) = self.net.take() {
            self.released = Some(net.attachments());
        }
        self.netns_attached = false;
        self.connect_attached.clear();
        self.imposed.clear();
        self.in_force.clear();
        self.dirty = false;
        self.cgroups.revert_all()
    }
}

impl Actuators {
    /// After [`Self::revert_all`]: asks every cgroup and namespace the
    /// enforcement programs were attached to whether one of ours is still
    /// attached, and says what it found. `None` if none was ever attached.
    pub fn check_detached(&self) -> Option<String> {
        let a = self.released.as_ref().filter(|a| !a.is_empty())?;
        Some(detach_report(a.len().1, &a.check()))
    }
}

/// The line the agent logs from a [`DetachCheck`] of `targets` targets.
fn detach_report(targets: usize, c: &DetachCheck) -> String {
    if !c.attached.is_empty() {
        let list: Vec<String> = c
            .attached
            .iter()
            .map(|(t, id)| format!("program {id} on {t}"))
            .collect();
        return format!("STILL ATTACHED after release: {}", list.join(", "));
    }
    if c.asked == 0 {
        return format!(
            "could not check the {targets} enforcement attachments: {}",
            c.unasked.join("; ")
        );
    }
    let mut s = format!(
        "detached: none of our enforcement programs remains attached to the {} cgroup and namespace hooks it used (each asked)",
        c.asked
    );
    if !c.unasked.is_empty() {
        s.push_str(&format!("; not asked: {}", c.unasked.join("; ")));
    }
    s
}

/// The strictest of several policies' claims on one target: refusing
/// everything over any throttle, then the lowest rate, then the smallest
/// burst; between equals, the first. The claim wins whole (its mode and
/// exemptions with it): a looser claim's exemptions do not open a stricter
/// claim's target.
pub fn strictest<'a>(claims: impl IntoIterator<Item = &'a Rule>) -> Option<&'a Rule> {
    claims.into_iter().min_by(|a, b| {
        let rate = |r: &Rule| r.rate.unwrap_or(f64::NEG_INFINITY);
        rate(a).total_cmp(&rate(b)).then(a.burst.cmp(&b.burst))
    })
}

impl Drop for Actuators {
    /// The agent reverts on its way out; an exit that skipped it (an error
    /// returned early, a panic unwinding) is caught here, so that no exit
    /// path leaves a limit behind.
    fn drop(&mut self) {
        if self.dirty {
            let report = self.revert_all();
            tracing::warn!("exiting without a clean stop: reverted everything: {report}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use governor_engine::{
        config::{Action, Scope, SignalKind, SignalSpec, units::CpuWeight},
        decide::{Cause, Reason},
    };

    use super::*;
    use crate::sense::cgroupfs::Layout;

    /// Cgroup actuation that records what it was asked to do.
    struct Recorder(Arc<Mutex<Vec<&'static str>>>);

    impl CgroupActuation for Recorder {
        fn apply(&mut self, _: &str, _: &Action) -> anyhow::Result<()> {
            self.0.lock().unwrap().push("apply");
            Ok(())
        }
        fn lift(&mut self, _: &str, _: &Action) -> anyhow::Result<()> {
            self.0.lock().unwrap().push("lift");
            Ok(())
        }
        fn revert_all(&mut self) -> String {
            self.0.lock().unwrap().push("revert_all");
            "restored 1".into()
        }
    }

    fn actuators(log: &Arc<Mutex<Vec<&'static str>>>) -> Actuators {
        let fs = CgroupFs::new("/nonexistent".into(), None, Layout::Unified);
        Actuators::new(
            fs,
            Box::new(Recorder(Arc::clone(log))),
            "/nonexistent".into(),
        )
    }

    fn weight_decision(kind: DecisionKind) -> Decision {
        let action = Action::CpuWeight {
            cgroup: CgroupPath::new("/batch").unwrap(),
            weight: CpuWeight::Idle,
        };
        Decision {
            at: Duration::ZERO,
            policy: "p".into(),
            kind,
            change: Change::Impose,
            target: action.target(),
            action,
            from_rung: 0,
            to_rung: 1,
            reason: Reason {
                signal: SignalSpec {
                    kind: SignalKind::RunqP99,
                    scope: Scope::Host,
                },
                value: None,
                watermark: None,
                held_for: Duration::ZERO,
                cause: Cause::Over,
                blame: None,
            },
        }
    }

    #[test]
    fn an_exit_that_skips_the_revert_still_reverts() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut a = actuators(&log);
        a.carry_out(&weight_decision(DecisionKind::Applied))
            .unwrap();
        // An error returned early: the actuators are dropped, not stopped.
        drop(a);
        assert_eq!(*log.lock().unwrap(), ["apply", "revert_all"]);
    }

    #[test]
    fn a_clean_stop_reverts_once_and_dry_run_never_needs_it() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut a = actuators(&log);
        a.carry_out(&weight_decision(DecisionKind::Applied))
            .unwrap();
        a.revert_all();
        drop(a);
        assert_eq!(*log.lock().unwrap(), ["apply", "revert_all"]);

        let log = Arc::new(Mutex::new(Vec::new()));
        let mut a = actuators(&log);
        a.carry_out(&weight_decision(DecisionKind::Would)).unwrap();
        drop(a);
        assert!(log.lock().unwrap().is_empty());
    }

    fn claim(rate: Option<f64>, burst: u32) -> Rule {
        Rule {
            rate,
            burst,
            mode: governor_engine::config::RejectMode::Reset,
            exempt: vec![],
        }
    }

    #[test]
    fn the_strictest_claim_is_reject_then_the_lowest_rate_then_the_smallest_burst() {
        let (reject, slow, slow_small, fast) = (
            claim(None, 0),
            claim(Some(10.0), 5),
            claim(Some(10.0), 2),
            claim(Some(100.0), 1),
        );
        assert_eq!(strictest([&fast, &slow]), Some(&slow));
        assert_eq!(strictest([&slow, &fast]), Some(&slow));
        assert_eq!(strictest([&fast, &reject, &slow]), Some(&reject));
        assert_eq!(strictest([&slow, &slow_small]), Some(&slow_small));
        assert_eq!(strictest([]), None);
        // Between equal claims, the first (the kernel is not re-set).
        let mut drop = slow.clone();
        drop.mode = governor_engine::config::RejectMode::Drop;
        assert_eq!(strictest([&slow, &drop]), Some(&slow));
    }
}
