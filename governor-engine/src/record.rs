//! What the engine was given, so that a run can be given again.
//!
//! `run` drives the engine through an [`Engine`]: every call is an
//! [`Input`] (start, a tick's snapshot, an actuator's outcome, a reload, the
//! final release), and what the engine returned for it is kept beside it as
//! a [`Frame`]. `replay` feeds the same inputs to the same [`Engine`]: with
//! the recorded config and seed it returns the recorded decisions, by
//! construction rather than by a second implementation; with another config
//! it answers what that config would have done with what the host saw.
//!
//! The snapshot a tick feeds is already reduced to what the config reads
//! ([`Watch::filter`]): the host, and the cgroups and ports its policies
//! name. The engine decides on exactly what is recorded, so nothing it
//! read is missing from the recording.
//!
//! A segment is text: a first line `{"governor_recording": 1}` (the format
//! version), then one frame per line, as JSON (the snapshot's own JSON, the
//! contract of `observe --json`). The agent compresses segments (gzip):
//! the field names that repeat every tick cost next to nothing then. A
//! torn last line (a crash mid-write) is reported, not an error. This
//! module does no I/O: the agent writes and reads the files.

use std::{collections::BTreeSet, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    config::{self, Config, ConfigErrors, LoadOptions, Protected, Scope, Target},
    decide::{Decision, State},
    snapshot::{CgroupPath, Snapshot},
};

/// The key of a segment's first line, whose value is the format version.
pub const MAGIC: &str = "governor_recording";

/// The version of the frame encoding. A reader refuses other versions,
/// naming both.
pub const FORMAT_VERSION: u16 = 1;

/// One call into the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// The engine starts: the config as text (parsed again on replay), the
    /// name it was read under, the jitter's seed, the agent's own cgroup
    /// (protected), and the wall-clock time of `now` = 0.
    Start {
        /// The config file's text.
        config: String,
        /// Its name in errors (a path, or "embedded default").
        source_name: String,
        /// The jitter's seed.
        seed: u64,
        /// The agent's cgroup.
        agent_cgroup: Option<CgroupPath>,
        /// Unix time in milliseconds at `now` = 0.
        started_unix_ms: u64,
    },
    /// The first frame of every segment after the run's first: the config
    /// in force (as at a start), so that a segment whose predecessors were
    /// dropped can still be replayed. An engine already started ignores it.
    Segment {
        /// The config file's text in force.
        config: String,
        /// Its name in errors.
        source_name: String,
        /// The jitter's seed.
        seed: u64,
        /// The agent's cgroup.
        agent_cgroup: Option<CgroupPath>,
        /// Unix time in milliseconds at `now` = 0.
        started_unix_ms: u64,
        /// Time since start at the segment's first frame.
        now: Duration,
    },
    /// A tick: `State::step(snapshot, now)`.
    Step {
        /// Time since start.
        now: Duration,
        /// What the config reads of the tick's snapshot.
        snapshot: Snapshot,
    },
    /// The actuators' outcome for decision `index` of the last input that
    /// returned decisions: `State::outcome`.
    Outcome {
        /// Time since start.
        now: Duration,
        /// Which decision.
        index: u32,
        /// `None` if it was carried out, else what went wrong.
        error: Option<String>,
    },
    /// A reload: `State::reconcile` with the new config.
    Reload {
        /// Time since start.
        now: Duration,
        /// The new config's text.
        config: String,
        /// Its name in errors.
        source_name: String,
    },
    /// The agent stops: `State::release_all`.
    ReleaseAll {
        /// Time since start.
        now: Duration,
    },
}

impl Input {
    /// Time since start (0 for `Start`).
    pub fn now(&self) -> Duration {
        match self {
            Self::Start { .. } => Duration::ZERO,
            Self::Segment { now, .. }
            | Self::Step { now, .. }
            | Self::Outcome { now, .. }
            | Self::Reload { now, .. }
            | Self::ReleaseAll { now } => *now,
        }
    }
}

/// A decision as recorded: its log line and its JSON (the fields of
/// `governor observe --json` and the status socket). Replayed decisions
/// are compared in this form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// `Decision`'s `Display`: one log line.
    pub text: String,
    /// `Decision` serialized as JSON.
    pub json: String,
}

impl From<&Decision> for DecisionRecord {
    fn from(d: &Decision) -> Self {
        Self {
            text: d.to_string(),
            json: serde_json::to_string(d).unwrap_or_default(),
        }
    }
}

/// An input and what the engine returned for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// The call.
    pub input: Input,
    /// Its decisions.
    pub decisions: Vec<DecisionRecord>,
}

/// Why the engine could not take an input.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The config of a `Start` or `Reload` does not parse.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    /// An input other than `Start` before any `Start`.
    #[error("the recording does not begin with the engine's start")]
    NotStarted,
    /// An outcome names a decision the last input did not return.
    #[error("an outcome names decision {index} of {len}")]
    NoSuchDecision {
        /// The index named.
        index: u32,
        /// How many decisions there were.
        len: usize,
    },
}

/// The engine as `run` and `replay` drive it: the policies' state, the
/// config in force, and the decisions of the last input (for outcomes).
pub struct Engine {
    state: Option<State>,
    config: Option<Config>,
    agent_cgroup: Option<CgroupPath>,
    last: Vec<Decision>,
    /// A config that replaces every recorded one (`replay --config`).
    candidate: Option<(String, String)>,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    /// An engine that takes the configs it is fed.
    pub fn new() -> Self {
        Self {
            state: None,
            config: None,
            agent_cgroup: None,
            last: Vec::new(),
            candidate: None,
        }
    }

    /// An engine that runs `config` (text, name) instead of the configs it
    /// is fed: a recording's `Start` and `Reload` only give it the seed
    /// and the time; outcomes are taken as success (what the candidate
    /// decides was not carried out, so nothing failed).
    pub fn with_candidate(config: String, source_name: String) -> Self {
        Self {
            candidate: Some((config, source_name)),
            ..Self::new()
        }
    }

    /// The policies' state, once started.
    pub fn state(&self) -> Option<&State> {
        self.state.as_ref()
    }

    /// The config in force, once started.
    pub fn config(&self) -> Option<&Config> {
        self.config.as_ref()
    }

    fn parse(&self, text: &str, name: &str) -> Result<Config, ConfigErrors> {
        let (text, name) = match &self.candidate {
            Some((t, n)) => (t.as_str(), n.as_str()),
            None => (text, name),
        };
        config::from_str_with(
            text,
            name,
            &LoadOptions {
                agent_cgroup: self.agent_cgroup.clone(),
            },
        )
    }

    /// Takes one input; returns the engine's decisions for it.
    pub fn feed(&mut self, input: &Input) -> Result<&[Decision], EngineError> {
        let decisions = match input {
            Input::Start {
                config,
                source_name,
                seed,
                agent_cgroup,
                ..
            } => {
                self.agent_cgroup = agent_cgroup.clone();
                let cfg = self.parse(config, source_name)?;
                let protected = Protected::for_config(&cfg, agent_cgroup.as_ref());
                self.state = Some(State::new(&cfg, protected, *seed));
                self.config = Some(cfg);
                Vec::new()
            }
            Input::Segment { .. } if self.state.is_some() => Vec::new(),
            Input::Segment {
                config,
                source_name,
                seed,
                agent_cgroup,
                ..
            } => {
                // A replay that begins mid-run: a fresh state from here.
                self.agent_cgroup = agent_cgroup.clone();
                let cfg = self.parse(config, source_name)?;
                let protected = Protected::for_config(&cfg, agent_cgroup.as_ref());
                self.state = Some(State::new(&cfg, protected, *seed));
                self.config = Some(cfg);
                Vec::new()
            }
            Input::Step { now, snapshot } => self.running()?.step(snapshot, *now),
            Input::Outcome { .. } if self.candidate.is_some() => {
                // The live run's outcome of the live run's decision: the
                // candidate's own are taken as carried out.
                return Ok(&[]);
            }
            Input::Outcome { now, index, error } => {
                let len = self.last.len();
                let d = self
                    .last
                    .get(*index as usize)
                    .cloned()
                    .ok_or(EngineError::NoSuchDecision { index: *index, len })?;
                let result = error.as_deref().map_or(Ok(()), Err);
                self.running()?.outcome(&d, result, *now);
                // Outcomes return nothing and leave `last` for the next.
                return Ok(&[]);
            }
            Input::Reload {
                now,
                config,
                source_name,
            } => {
                if self.candidate.is_some() {
                    // The candidate stays in force across the live reloads.
                    Vec::new()
                } else {
                    let cfg = self.parse(config, source_name)?;
                    let protected = Protected::for_config(&cfg, self.agent_cgroup.as_ref());
                    let state = self.state.take().ok_or(EngineError::NotStarted)?;
                    let (state, out) = state.reconcile(&cfg, protected, *now);
                    self.state = Some(state);
                    self.config = Some(cfg);
                    out
                }
            }
            Input::ReleaseAll { now } => self.running()?.release_all(*now),
        };
        self.last = decisions;
        Ok(&self.last)
    }

    fn running(&mut self) -> Result<&mut State, EngineError> {
        self.state.as_mut().ok_or(EngineError::NotStarted)
    }
}

/// What a config reads of a snapshot: the host always, and the cgroups
/// and ports its policies' signals and actions name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Watch {
    cgroups: BTreeSet<CgroupPath>,
    ports: BTreeSet<u16>,
    /// Keep every cgroup and port (`governor record` without a config).
    everything: bool,
}

impl Watch {
    /// What `config` reads.
    pub fn of(config: &Config) -> Self {
        let mut w = Self::default();
        for p in &config.policies {
            w.scope(&p.signal.scope);
            for r in 1..=p.ladder.len() {
                if let Some(a) = p.ladder.action(r) {
                    match a.target() {
                        Target::Cgroup(c) => {
                            w.cgroups.insert(c);
                        }
                        Target::Port(port) => {
                            w.ports.insert(port);
                        }
                    }
                }
            }
        }
        w
    }

    /// Everything: every cgroup and port of each snapshot.
    pub fn everything() -> Self {
        Self {
            everything: true,
            ..Self::default()
        }
    }

    fn scope(&mut self, s: &Scope) {
        match s {
            Scope::Host => {}
            Scope::Cgroup(c) => {
                self.cgroups.insert(c.clone());
            }
            Scope::Port(p) => {
                self.ports.insert(*p);
            }
        }
    }

    /// The cgroups watched (sorted).
    pub fn cgroups(&self) -> impl Iterator<Item = &CgroupPath> {
        self.cgroups.iter()
    }

    /// `snapshot` reduced to what is watched (the host, what the snapshot
    /// says is missing, and the watched cgroups and ports).
    pub fn filter(&self, snapshot: &Snapshot) -> Snapshot {
        if self.everything {
            return snapshot.clone();
        }
        Snapshot {
            ts_ms: snapshot.ts_ms,
            interval_ms: snapshot.interval_ms,
            host: snapshot.host.clone(),
            cgroups: snapshot
                .cgroups
                .iter()
                .filter(|c| self.cgroups.contains(&c.path))
                .cloned()
                .collect(),
            ports: snapshot
                .ports
                .iter()
                .filter(|p| self.ports.contains(&p.port))
                .cloned()
                .collect(),
            missing: snapshot.missing.clone(),
        }
    }
}

/// Why frames could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a recording.
    #[error("not a governor recording (its first line is not {{\"{MAGIC}\": VERSION}})")]
    NotARecording,
    /// A version this build cannot read.
    #[error("recording format version {found}; this governor reads version {FORMAT_VERSION}")]
    Version {
        /// The file's version.
        found: u64,
    },
    /// A complete frame that does not decode.
    #[error("line {line}: {reason}")]
    Frame {
        /// Its line (1-based; line 1 is the header).
        line: usize,
        /// serde_json's words.
        reason: String,
    },
}

/// The first line of a segment: `{"governor_recording": 1}`.
pub fn header() -> String {
    format!("{{\"{MAGIC}\":{FORMAT_VERSION}}}\n")
}

/// Appends `frame` to `out` as one line of JSON.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    // Serializing these types into a Vec cannot fail.
    if serde_json::to_writer(&mut *out, frame).is_ok() {
        out.push(b'\n');
    }
}

/// The frames of a segment's text, and whether it ends in a torn frame (a
/// last line without its newline: the writer died mid-line), left out.
pub fn decode(text: &str) -> Result<(Vec<Frame>, bool), DecodeError> {
    let mut lines = text.split_inclusive('\n');
    let head: serde_json::Value = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or(DecodeError::NotARecording)?;
    let found = head
        .get(MAGIC)
        .and_then(serde_json::Value::as_u64)
        .ok_or(DecodeError::NotARecording)?;
    if found != u64::from(FORMAT_VERSION) {
        return Err(DecodeError::Version { found });
    }
    let mut frames = Vec::new();
    for (i, line) in lines.enumerate() {
        if !line.ends_with('\n') {
            return Ok((frames, true));
        }
        if line.trim().is_empty() {
            continue;
        }
        frames.push(serde_json::from_str(line).map_err(|e| DecodeError::Frame {
            line: i + 2,
            reason: e.to_string(),
        })?);
    }
    Ok((frames, false))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::snapshot::{CgroupStats, HostStats, PortStats, RunqHist, RunqStats};

    fn snapshot(at_ms: u64) -> Snapshot {
        let cg = |p: &str, wait_us: u64| CgroupStats {
            path: CgroupPath::new(p).unwrap(),
            runq: RunqStats {
                count: 10,
                p50_us: wait_us,
                p99_us: wait_us,
                max_us: wait_us,
            },
            runq_hist: Some(RunqHist::from_waits_ns([wait_us * 1000; 10])),
            id: 1,
            conn_out: 0,
            conn_out_per_s: 0.0,
            psi: None,
            throttling: None,
        };
        Snapshot {
            ts_ms: at_ms,
            interval_ms: 100,
            host: HostStats::default(),
            cgroups: vec![cg("/workload/api", 3000), cg("/other", 50)],
            ports: vec![
                PortStats {
                    port: 8080,
                    accepted: 5,
                    ..PortStats::default()
                },
                PortStats {
                    port: 9999,
                    ..PortStats::default()
                },
            ],
            missing: vec!["x".into()],
        }
    }

    const CONFIG: &str = r#"
[[policy]]
name = "api"
signal = { kind = "runq_p99", cgroup = "/workload/api" }
high = "2ms"
low = "1ms"
for = "300ms"
ladder = [{ action = "cpu_weight", cgroup = "/workload/batch", weight = "idle" }]
"#;

    #[test]
    fn frames_round_trip_and_a_torn_tail_is_left_out() {
        let cfg = config::from_str(CONFIG, "test").unwrap();
        let watch = Watch::of(&cfg);
        let frames = vec![
            Frame {
                input: Input::Start {
                    config: CONFIG.into(),
                    source_name: "test".into(),
                    seed: 7,
                    agent_cgroup: None,
                    started_unix_ms: 1,
                },
                decisions: vec![],
            },
            Frame {
                input: Input::Step {
                    now: Duration::from_millis(100),
                    snapshot: watch.filter(&snapshot(100)),
                },
                decisions: vec![DecisionRecord {
                    text: "t".into(),
                    json: "{}".into(),
                }],
            },
        ];
        let mut bytes = header().into_bytes();
        for f in &frames {
            encode(f, &mut bytes);
        }
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(decode(&text).unwrap(), (frames.clone(), false));
        let torn = &text[..text.len() - 3];
        assert_eq!(decode(torn).unwrap(), (frames[..1].to_vec(), true));
        let other = text.replacen(":1}", ":9}", 1);
        assert_eq!(decode(&other), Err(DecodeError::Version { found: 9 }));
        assert_eq!(decode("hello\n"), Err(DecodeError::NotARecording));
        let bad = text.replacen("\"Step\"", "\"Stop\"", 1);
        assert!(
            matches!(decode(&bad), Err(DecodeError::Frame { line: 3, .. })),
            "{:?}",
            decode(&bad)
        );
    }

    #[test]
    fn the_filter_keeps_the_host_and_what_the_policies_name() {
        let cfg = config::from_str(CONFIG, "test").unwrap();
        let s = Watch::of(&cfg).filter(&snapshot(0));
        let paths: Vec<_> = s.cgroups.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["/workload/api"]);
        assert!(s.ports.is_empty());
        assert_eq!(s.missing, ["x"]);
        assert_eq!(Watch::everything().filter(&snapshot(0)), snapshot(0));
    }

    #[test]
    fn an_outcome_naming_no_decision_is_an_error_and_nothing_runs_before_start() {
        let mut e = Engine::new();
        assert!(matches!(
            e.feed(&Input::ReleaseAll {
                now: Duration::ZERO
            }),
            Err(EngineError::NotStarted)
        ));
        e.feed(&Input::Start {
            config: CONFIG.into(),
            source_name: "t".into(),
            seed: 1,
            agent_cgroup: None,
            started_unix_ms: 0,
        })
        .unwrap();
        assert!(matches!(
            e.feed(&Input::Outcome {
                now: Duration::ZERO,
                index: 3,
                error: None
            }),
            Err(EngineError::NoSuchDecision { index: 3, len: 0 })
        ));
    }
}
