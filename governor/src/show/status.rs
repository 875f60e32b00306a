//! The status socket (mode 0600) and what it answers: policies, rungs,
//! recent decisions with their reasons, dry-run, missing signals.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::{io::AsyncWriteExt as _, net::UnixListener, task::JoinHandle};

use governor_engine::decide::{Change, Decision, PolicyStatus};

/// One decision as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Seconds since the agent started.
    pub at_s: f64,
    /// Policy.
    pub policy: String,
    /// applied, would, reverted or refused.
    pub kind: String,
    /// The action's name.
    pub action: String,
    /// Rung before → after.
    pub from_rung: usize,
    /// Rung after.
    pub to_rung: usize,
    /// How long the signal had been past the watermark, milliseconds.
    pub held_for_ms: u64,
    /// The signal's value then, in its base unit (µs, ratio, /s, %).
    pub value: Option<f64>,
    /// The whole explanation, as logged.
    pub text: String,
    /// Set if carrying it out failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

impl DecisionRecord {
    /// From a decision and the outcome of carrying it out.
    pub fn new(d: &Decision, error: Option<String>) -> Self {
        Self {
            at_s: d.at.as_secs_f64(),
            policy: d.policy.clone(),
            kind: d.kind.as_str().to_owned(),
            action: d.action.name().to_owned(),
            from_rung: d.from_rung,
            to_rung: d.to_rung,
            held_for_ms: u64::try_from(d.reason.held_for.as_millis()).unwrap_or(u64::MAX),
            value: d.reason.value.map(|v| v.value),
            text: d.to_string(),
            error,
        }
    }
}

/// A policy as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyView {
    /// Name.
    pub name: String,
    /// Rung now.
    pub rung: usize,
    /// Rungs of its ladder.
    pub rungs: usize,
    /// Only reports.
    pub dry_run: bool,
    /// Last value of its signal, as text with its unit.
    pub value: Option<String>,
    /// Flap budget spent: holding its rung.
    pub flap_held: bool,
    /// No data for its signal.
    pub no_data: bool,
    /// Backoff re-trips counted.
    pub retrips: u32,
    /// Seconds until its next step down, if one is due.
    pub next_step_down_in_s: Option<f64>,
    /// The change the actuators failed to carry out, while it fails: the
    /// rung shown is the one really in force.
    #[serde(default)]
    pub failed: Option<FailedView>,
}

/// A change that failed, as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedView {
    /// The rung it was to put in force, or to lift.
    pub rung: usize,
    /// `impose`, `lift` or `adjust`.
    pub change: String,
    /// What the actuator said.
    pub error: String,
    /// Failures in a row.
    pub attempts: u32,
    /// Seconds until it is tried again.
    pub retry_in_s: f64,
}

/// What the status socket answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    /// The config it runs.
    pub config: String,
    /// Global dry-run.
    pub dry_run: bool,
    /// Tick, milliseconds.
    pub tick_ms: u64,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Policies, in config order.
    pub policies: Vec<PolicyView>,
    /// The last decisions, oldest first.
    pub recent: Vec<DecisionRecord>,
    /// Signals that cannot be measured, with the reason.
    pub missing: Vec<String>,
    /// Held values someone else changed (drift), one line per target and
    /// value: policy, target, unit, value held, value found.
    #[serde(default)]
    pub drift: Vec<String>,
}

impl StatusReport {
    /// Builds the report.
    pub fn new<'a>(
        config: &str,
        dry_run: bool,
        tick: Duration,
        now: Duration,
        policies: &[PolicyStatus],
        recent: impl Iterator<Item = &'a DecisionRecord>,
        missing: &[String],
    ) -> Self {
        Self {
            config: config.to_owned(),
            dry_run,
            tick_ms: u64::try_from(tick.as_millis()).unwrap_or(u64::MAX),
            uptime_s: now.as_secs_f64(),
            policies: policies
                .iter()
                .map(|p| PolicyView {
                    name: p.name.to_string(),
                    rung: p.rung,
                    rungs: p.rungs,
                    dry_run: p.dry_run,
                    value: p.value.map(|v| v.to_string()),
                    flap_held: p.flap_held,
                    no_data: p.no_data,
                    retrips: p.retrips,
                    next_step_down_in_s: p
                        .next_step_down
                        .map(|t| t.saturating_sub(now).as_secs_f64()),
                    failed: p.failed.as_ref().map(|f| FailedView {
                        rung: f.rung,
                        change: match f.change {
                            Change::Impose => "impose",
                            Change::Lift => "lift",
                            Change::Adjust => "adjust",
                        }
                        .to_owned(),
                        error: f.error.clone(),
                        attempts: f.attempts,
                        retry_in_s: f.retry_at.saturating_sub(now).as_secs_f64(),
                    }),
                })
                .collect(),
            recent: recent.cloned().collect(),
            missing: missing.to_vec(),
            drift: Vec::new(),
        }
    }

    /// As JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// As a table for people.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "governor: {} | {} | tick {}ms | up {:.0}s",
            self.config,
            if self.dry_run {
                "DRY-RUN (nothing is changed)"
            } else {
                "live"
            },
            self.tick_ms,
            self.uptime_s
        );
        let _ = writeln!(
            out,
            "{:<28} {:>6} {:>12} {:<8} STATE",
            "POLICY", "RUNG", "VALUE", "MODE"
        );
        for p in &self.policies {
            let mut state = Vec::new();
            if p.no_data {
                state.push("no data (holding)".to_owned());
            }
            if p.flap_held {
                state.push("flap budget spent (holding)".to_owned());
            }
            if p.retrips > 0 {
                state.push(format!("backoff ×{}", p.retrips));
            }
            if let Some(f) = &p.failed {
                state.push(format!(
                    "FAILED to {} rung {} ({} in a row, retry in {:.1}s): {}",
                    f.change, f.rung, f.attempts, f.retry_in_s, f.error
                ));
            }
            if let Some(s) = p.next_step_down_in_s {
                state.push(format!("next step down in {s:.1}s"));
            }
            let _ = writeln!(
                out,
                "{:<28} {:>3}/{:<2} {:>12} {:<8} {}",
                p.name,
                p.rung,
                p.rungs,
                p.value.as_deref().unwrap_or("-"),
                if p.dry_run { "dry-run" } else { "live" },
                state.join(", ")
            );
        }
        if !self.recent.is_empty() {
            let _ = writeln!(out, "recent decisions:");
            for d in self.recent.iter().rev().take(15) {
                let _ = writeln!(
                    out,
                    "  {:>8.1}s {}{}",
                    d.at_s,
                    d.text,
                    d.error
                        .as_deref()
                        .map(|e| format!("  [FAILED: {e}]"))
                        .unwrap_or_default()
                );
            }
        }
        for m in &self.missing {
            let _ = writeln!(out, "missing: {m}");
        }
        for d in &self.drift {
            let _ = writeln!(out, "DRIFT: {d}");
        }
        out
    }
}

/// What the loop publishes for the status socket. The report is built from
/// it when somebody asks (serialising a thousand policies every tick cost
/// more than deciding them).
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The config it runs.
    pub config: String,
    /// Global dry-run.
    pub dry_run: bool,
    /// The tick.
    pub tick: Duration,
    /// Time since start at the last tick.
    pub now: Duration,
    /// Every policy's state at the last tick.
    pub policies: Arc<Vec<PolicyStatus>>,
    /// The last decisions, oldest first.
    pub recent: Vec<DecisionRecord>,
    /// Signals that cannot be measured, with the reason.
    pub missing: Vec<String>,
    /// Held values someone else changed, one line each.
    pub drift: Vec<String>,
}

impl Published {
    /// The report of what was published.
    pub fn report(&self) -> StatusReport {
        let mut report = StatusReport::new(
            &self.config,
            self.dry_run,
            self.tick,
            self.now,
            &self.policies,
            self.recent.iter(),
            &self.missing,
        );
        report.drift.clone_from(&self.drift);
        report
    }
}

/// Serves the report of `published` on a unix socket at `path` (mode 0600):
/// each connection gets the latest JSON and is closed.
pub fn serve(path: &Path, published: Arc<Mutex<Published>>) -> anyhow::Result<JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by a crashed agent is stale; a live agent would answer.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!(
            "another governor answers on {}; stop it first",
            path.display()
        );
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let json = published
                .lock()
                .map(|p| p.report().to_json())
                .unwrap_or_default();
            let _ = conn.write_all(json.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
    }))
}

/// `governor status`: reads the report from the socket at `path`.
pub fn fetch(path: &Path) -> anyhow::Result<StatusReport> {
    use std::io::Read as _;
    let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "cannot reach the agent at {} (is `governor run` running, and are you root?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    serde_json::from_str(&text)
        .with_context(|| format!("the agent answered something that is not a status: {text:?}"))
}

#[cfg(test)]
mod drift_tests {
    #![allow(clippy::unwrap_used)]

    use super::{Published, StatusReport};

    #[test]
    fn drift_is_a_line_of_the_table_and_old_reports_still_parse() {
        let line = "policy p: /system.slice/hog.service (hog.service): held CPUQuota=20%, found systemd has CPUQuota=50%";
        let published = Published {
            drift: vec![line.to_owned()],
            ..Default::default()
        };
        let report = published.report();
        assert!(report.table().contains(&format!("DRIFT: {line}")));
        let back: StatusReport = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(back.drift, [line]);
        // An agent before drift reporting answers without the field.
        let mut old: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        old.as_object_mut().unwrap().remove("drift");
        let back: StatusReport = serde_json::from_value(old).unwrap();
        assert!(back.drift.is_empty());
    }
}
