//! What the engine decided, and why: one [`Decision`] per rung change (or
//! refused change), each readable as one log line.

use std::{fmt, time::Duration};

use serde::Serialize;

use crate::config::{Action, Level, SignalSpec, Target, units::format_duration};

/// Whether a decision changes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// An action is to be put in force now.
    Applied,
    /// Dry-run: the action would have been put in force, or lifted; nothing changes.
    Would,
    /// An action in force is to be lifted now (recovery, reload, shutdown).
    Reverted,
    /// A change the loop wanted and did not make (protected target, flap budget).
    Refused,
}

impl DecisionKind {
    /// The label used in metrics: `applied`, `would`, `reverted`, `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Would => "would",
            Self::Reverted => "reverted",
            Self::Refused => "refused",
        }
    }
}

/// Which way a decision moves the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Put a rung's action in force (step up).
    Impose,
    /// Lift a rung's action (step down, removal).
    Lift,
    /// Re-set the rung in force (a share-of-accepted throttle's rate, once
    /// the backlog it found has drained); the rung does not change.
    Adjust,
}

/// Which way a decision moves a policy, as the metrics label it
/// (`governor_decisions_total{direction}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A step up: a rung's action put in force (or would be, or refused).
    Up,
    /// A step down: the top rung lifted because the signal cleared (or
    /// would be, or refused by the flap budget).
    Down,
    /// Not a step along the ladder: every rung released because the policy
    /// was removed or changed by a reload, its target became protected, or
    /// the agent is stopping; or the
    /// rung in force re-set (a share-of-accepted throttle's rate).
    Reset,
}

impl Direction {
    /// The label used in metrics: `up`, `down`, `reset`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Reset => "reset",
        }
    }
}

/// Which watermark a reason refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Edge {
    /// The signal is at or over `high`.
    High,
    /// The signal is under `low`.
    Low,
}

/// What led to a decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The signal stayed at or over `high` for `for`.
    Over,
    /// The signal stayed under `low` for `for`, and the recovery delay passed.
    Clear,
    /// The rung's target is protected (the text says by what).
    Protected(String),
    /// The flap budget is spent: `transitions` changes in `window` already.
    FlapBudget {
        /// Changes allowed per window.
        transitions: u32,
        /// The window.
        window: Duration,
    },
    /// The policy was removed by a config reload.
    PolicyRemoved,
    /// The policy's signal, ladder or mode changed in a reload: it restarts at rung 0.
    PolicyChanged,
    /// The agent is stopping.
    Shutdown,
    /// A share-of-accepted throttle re-set: the server's capacity, and the
    /// backlog to drain over `settle`.
    Backlog {
        /// What the server took from the queue, per second, while saturated.
        capacity: f64,
        /// Connections waiting in the accept queue now.
        queued: u32,
    },
}

/// Why a decision was made: the signal, its value, the watermark it was
/// compared with and for how long it had been past it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    /// The signal of the policy.
    pub signal: SignalSpec,
    /// Its last value, if there was one.
    pub value: Option<Level>,
    /// The watermark it was past, if the decision came from the signal.
    pub watermark: Option<(Edge, Level)>,
    /// How long the signal had been past that watermark.
    pub held_for: Duration,
    /// What led to the decision.
    pub cause: Cause,
    /// For a run-queue signal of a cgroup: who held the CPU while it
    /// waited, in the last interval (absent if nothing is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blame: Option<Blame>,
}

/// The top culprit of a cgroup's run-queue wait, and its own throttling:
/// what tells a cgroup starved by a neighbour (the neighbour is the top
/// culprit) from one throttled by its own quota (its wait is spent with the
/// CPU idle, `throttled_us` grows) or crowded by its own tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Blame {
    /// The top culprit's path, `(idle)`, or the cgroup's own path.
    pub culprit: String,
    /// Its share of the cgroup's attributed wait (0–1).
    pub share: f64,
    /// The culprit is the cgroup itself (its own other tasks).
    pub own: bool,
    /// Time the cgroup was throttled by its own quota over the last
    /// second (`cpu.stat`), if read.
    pub throttled_us: Option<u64>,
}

impl fmt::Display for Blame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = (self.share * 100.0).round();
        let throttled = self.throttled_us.filter(|t| *t > 0);
        match (self.culprit.as_str(), throttled) {
            (crate::snapshot::Culprit::IDLE, Some(t)) => write!(
                f,
                "{pct}% of its wait with the CPU idle: throttled by its own quota ({} in the last second), not starved by a neighbour",
                format_duration(Duration::from_micros(t))
            ),
            (crate::snapshot::Culprit::IDLE, None) => {
                write!(
                    f,
                    "{pct}% of its wait with the CPU idle (no neighbour held it)"
                )
            }
            _ if self.own => write!(f, "{pct}% of its wait behind its own tasks"),
            (c, _) => {
                write!(f, "{pct}% of its wait behind {c}")?;
                if let Some(t) = throttled {
                    write!(
                        f,
                        " (and throttled by its own quota {} in the last second)",
                        format_duration(Duration::from_micros(t))
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// One decision of one policy at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// When (the `now` of the step).
    pub at: Duration,
    /// The policy's name.
    pub policy: String,
    /// Applied, would, reverted or refused.
    pub kind: DecisionKind,
    /// Step up or step down.
    pub change: Change,
    /// The rung's action (the one imposed or lifted).
    pub action: Action,
    /// What the action acts on.
    pub target: Target,
    /// Rung before.
    pub from_rung: usize,
    /// Rung after (for a refused decision: the rung it would have gone to).
    pub to_rung: usize,
    /// Why.
    pub reason: Reason,
}

impl Decision {
    /// Step up, step down, or a reset (release at reload or shutdown, or
    /// a re-set of the rung in force): see [`Direction`].
    pub fn direction(&self) -> Direction {
        match (self.change, &self.reason.cause) {
            (Change::Impose, _) => Direction::Up,
            (Change::Adjust, _) => Direction::Reset,
            (
                Change::Lift,
                Cause::PolicyRemoved | Cause::PolicyChanged | Cause::Shutdown | Cause::Protected(_),
            ) => Direction::Reset,
            (Change::Lift, _) => Direction::Down,
        }
    }
}

impl fmt::Display for Decision {
    /// One log line, e.g. `policy api-over-batch: applied cpu_weight idle on
    /// cgroup /workload/batch (rung 0 → 1): runq_p99 of cgroup /workload/api
    /// is 3.1ms, at or over high 2ms for 1s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match (self.kind, self.change) {
            (DecisionKind::Applied, _) => "applied",
            (DecisionKind::Reverted, _) => "lifted",
            (DecisionKind::Would, Change::Impose) => "would apply",
            (DecisionKind::Would, Change::Lift) => "would lift",
            (DecisionKind::Refused, Change::Impose) => "refused to apply",
            (DecisionKind::Refused, Change::Lift) => "refused to lift",
            (DecisionKind::Would, Change::Adjust) => "would re-set",
            (DecisionKind::Refused, Change::Adjust) => "refused to re-set",
        };
        let verb = if self.change == Change::Adjust && self.kind == DecisionKind::Applied {
            "re-set"
        } else {
            verb
        };
        write!(
            f,
            "policy {}: {verb} {} (rung {} → {}): ",
            self.policy, self.action, self.from_rung, self.to_rung
        )?;
        let r = &self.reason;
        let value = r
            .value
            .map_or_else(|| "no data".to_owned(), |v| v.to_string());
        match (&r.cause, r.watermark) {
            (Cause::Over | Cause::Clear, Some((edge, w))) => {
                let side = match edge {
                    Edge::High => "at or over high",
                    Edge::Low => "under low",
                };
                write!(
                    f,
                    "{} is {value}, {side} {w} for {}",
                    r.signal,
                    format_duration(r.held_for)
                )?;
                match &r.blame {
                    Some(b) => write!(f, "; {b}"),
                    None => Ok(()),
                }
            }
            (Cause::Over | Cause::Clear, None) => write!(f, "{} is {value}", r.signal),
            (Cause::Protected(why), _) => write!(f, "the target is protected: {why}"),
            (
                Cause::FlapBudget {
                    transitions,
                    window,
                },
                _,
            ) => write!(
                f,
                "flap budget spent ({transitions} rung changes in {}); holding rung {} until the signal settles ({} is {value})",
                format_duration(*window),
                self.from_rung,
                r.signal
            ),
            (Cause::PolicyRemoved, _) => f.write_str("the policy was removed from the config"),
            (Cause::PolicyChanged, _) => {
                f.write_str("the policy's signal, ladder or mode changed; it restarts at rung 0")
            }
            (Cause::Shutdown, _) => f.write_str("the agent is stopping"),
            (Cause::Backlog { capacity, queued }, _) => write!(
                f,
                "the server takes {}/s and {queued} wait in its accept queue ({} is {value})",
                capacity.round(),
                r.signal
            ),
        }
    }
}
