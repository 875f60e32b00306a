//! What a replay found, in the form the text, JSON and HTML outputs draw
//! from: per policy, the signal, the watermarks, the rung and the
//! decisions over time, live (as recorded) and for a candidate config.

use serde::Serialize;

/// One tick of one policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the recording's start.
    pub t: f64,
    /// The policy's signal in its base unit ([`PolicyReport::unit`]);
    /// `None`: no data at that tick.
    pub value: Option<f64>,
    /// The policy's rung after the tick (in dry-run: the rung it would be on).
    pub rung: usize,
}

/// One decision, placed in time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Marker {
    /// Seconds since the recording's start.
    pub t: f64,
    /// `applied`, `would`, `reverted` or `refused`.
    pub kind: String,
    /// `up`, `down` or `reset`.
    pub direction: String,
    /// The rung before and after.
    pub from_rung: usize,
    /// The rung after.
    pub to_rung: usize,
    /// The decision's log line, with its reason.
    pub text: String,
}

/// What one config did with one policy over the recording.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Run {
    /// One point per tick.
    pub points: Vec<Point>,
    /// Its decisions, in order.
    pub decisions: Vec<Marker>,
}

/// One policy: live and, with `--config`, the candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    /// The policy's name.
    pub name: String,
    /// What its signal is, e.g. `runq_p99 of cgroup /workload/api`.
    pub signal: String,
    /// The unit of values and watermarks: `s`, `ratio` or `/s`.
    pub unit: &'static str,
    /// The high watermark (of the config that ran: the candidate's when
    /// there is one and it has this policy, else the live one's).
    pub high: f64,
    /// The low watermark.
    pub low: f64,
    /// With a candidate, the live config's (high, low) for this policy,
    /// which the live side is drawn and judged against; `None` without a
    /// candidate (then `high` and `low` are the live ones) or if the live
    /// config has no such policy.
    pub live_watermarks: Option<(f64, f64)>,
    /// The ladder's length (the highest rung).
    pub rungs: usize,
    /// As recorded (the decisions taken live); `None` if the live config
    /// had no such policy.
    pub live: Option<Run>,
    /// What the candidate config decided; `None` without `--config` or if
    /// the candidate has no such policy.
    pub candidate: Option<Run>,
}

impl PolicyReport {
    /// The (high, low) watermarks of the live side (`live`) or of the
    /// config replayed.
    pub fn watermarks(&self, live: bool) -> (f64, f64) {
        match self.live_watermarks {
            Some(w) if live => w,
            _ => (self.high, self.low),
        }
    }
}

/// Run-queue figures of one watched cgroup over the recording.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CgroupSeries {
    /// The cgroup's path.
    pub path: String,
    /// (seconds since start, p50 seconds, p99 seconds) per tick where the
    /// cgroup was seen.
    pub points: Vec<(f64, f64, f64)>,
}

/// Everything a replay shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Names what was replayed: the recording's paths and, with
    /// `--config`, the candidate's.
    pub title: String,
    /// Unix time in milliseconds of `t` = 0.
    pub started_unix_ms: u64,
    /// The span replayed, seconds since start.
    pub from: f64,
    /// Its end.
    pub to: f64,
    /// Per policy, in config order (live policies first, then policies
    /// only the candidate has).
    pub policies: Vec<PolicyReport>,
    /// Per watched cgroup.
    pub cgroups: Vec<CgroupSeries>,
}
