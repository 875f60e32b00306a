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
//! A segment's bytes are [`MAGIC`], the format version (two bytes, little
//! endian), then frames, each a length (four bytes, little endian) and the
//! frame in postcard (a compact serde encoding: varints, no field names).
//! Snapshots go through [`wire`] types that name every field (the JSON
//! types leave empty ones out, which a format without field names cannot
//! read back). The agent compresses segments (gzip). A torn last frame (a
//! crash mid-write) is reported, not an error. This module does no I/O: the
//! agent writes and reads the files.

use std::{collections::BTreeSet, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    config::{self, Config, ConfigErrors, LoadOptions, Protected, Scope, Target},
    decide::{Decision, State},
    snapshot::{CgroupPath, Snapshot},
};

/// The first bytes of a segment.
pub const MAGIC: &[u8; 8] = b"GOVREC\x00\x01";

/// The version of the frame encoding. A reader refuses other versions,
/// naming both, except [`FORMAT_V1`], which it still reads.
/// Version 2 added each cgroup's run-queue culprits.
pub const FORMAT_VERSION: u16 = 2;

/// The first version (no culprits), still read: its cgroups have none.
pub const FORMAT_V1: u16 = 1;

std::thread_local! {
    /// The version of the frames being decoded on this thread.
    static DECODING: std::cell::Cell<u16> = const { std::cell::Cell::new(FORMAT_VERSION) };
}

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
        /// `--dry-run` was given: every policy only reports, whatever the
        /// config says.
        dry_run: bool,
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
        /// `--dry-run` was given.
        dry_run: bool,
    },
    /// A tick: `State::step(snapshot, now)`.
    Step {
        /// Time since start.
        now: Duration,
        /// What the config reads of the tick's snapshot.
        #[serde(with = "wire")]
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
        /// `--dry-run` was given.
        dry_run: bool,
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

    /// The config of a start or reload: the text given (with `--dry-run`
    /// applied as `run` applies it), or the candidate's.
    fn parse(&self, text: &str, name: &str, dry_run: bool) -> Result<Config, ConfigErrors> {
        let (text, name, dry_run) = match &self.candidate {
            Some((t, n)) => (t.as_str(), n.as_str(), false),
            None => (text, name, dry_run),
        };
        let mut cfg = config::from_str_with(
            text,
            name,
            &LoadOptions {
                agent_cgroup: self.agent_cgroup.clone(),
            },
        )?;
        cfg.agent.dry_run |= dry_run;
        Ok(cfg)
    }

    /// Takes one input; returns the engine's decisions for it.
    pub fn feed(&mut self, input: &Input) -> Result<&[Decision], EngineError> {
        let decisions = match input {
            Input::Segment { .. } if self.state.is_some() => Vec::new(),
            // A segment's head for an engine not started: a replay that
            // begins mid-run starts fresh there.
            Input::Start {
                config,
                source_name,
                seed,
                agent_cgroup,
                dry_run,
                ..
            }
            | Input::Segment {
                config,
                source_name,
                seed,
                agent_cgroup,
                dry_run,
                ..
            } => {
                self.agent_cgroup = agent_cgroup.clone();
                let cfg = self.parse(config, source_name, *dry_run)?;
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
                dry_run,
            } => {
                if self.candidate.is_some() {
                    // The candidate stays in force across the live reloads.
                    Vec::new()
                } else {
                    let cfg = self.parse(config, source_name, *dry_run)?;
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
    #[error("not a governor recording (it does not begin with {MAGIC:?})")]
    NotARecording,
    /// A version this build cannot read.
    #[error("recording format version {found}; this governor reads version {FORMAT_VERSION}")]
    Version {
        /// The file's version.
        found: u16,
    },
    /// A complete frame that does not decode.
    #[error("frame {index} at byte {offset} does not decode: {reason}")]
    Frame {
        /// Its position among the frames.
        index: usize,
        /// Its byte offset (in the uncompressed stream).
        offset: usize,
        /// postcard's words.
        reason: String,
    },
}

/// The head of a new segment.
pub fn header() -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out
}

/// Appends `frame` to `out`: its length, then its postcard encoding.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    let buf = std::mem::take(out);
    // Serializing these types into a Vec cannot fail.
    let mut buf = postcard::to_extend(frame, buf).unwrap_or_default();
    if buf.len() < at + 4 {
        return;
    }
    let len = u32::try_from(buf.len() - at - 4).unwrap_or(u32::MAX);
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    *out = buf;
}

/// The frames of a segment's bytes (uncompressed), and whether it ends in
/// a torn frame (left out).
pub fn decode(bytes: &[u8]) -> Result<(Vec<Frame>, bool), DecodeError> {
    let mut frames = Vec::new();
    let torn = decode_each(bytes, |f| frames.push(f))?;
    Ok((frames, torn))
}

/// [`decode`], handing each frame to `f` as it is read.
pub fn decode_each(bytes: &[u8], mut f: impl FnMut(Frame)) -> Result<bool, DecodeError> {
    let head = MAGIC.len() + 2;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(DecodeError::NotARecording);
    }
    let Some(v) = bytes.get(MAGIC.len()..head) else {
        return Ok(true);
    };
    let found = u16::from_le_bytes([v[0], v[1]]);
    if found != FORMAT_VERSION && found != FORMAT_V1 {
        return Err(DecodeError::Version { found });
    }
    let before = DECODING.with(|d| d.replace(found));
    let r = decode_frames(bytes, head, &mut f);
    DECODING.with(|d| d.set(before));
    r
}

fn decode_frames(
    bytes: &[u8],
    head: usize,
    f: &mut impl FnMut(Frame),
) -> Result<bool, DecodeError> {
    let mut at = head;
    let mut index = 0;
    while at < bytes.len() {
        let Some(len) = bytes.get(at..at + 4) else {
            return Ok(true);
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(body) = bytes.get(at + 4..at + 4 + len) else {
            return Ok(true);
        };
        let frame = postcard::from_bytes(body).map_err(|e| DecodeError::Frame {
            index,
            offset: at,
            reason: e.to_string(),
        })?;
        f(frame);
        index += 1;
        at += 4 + len;
    }
    Ok(false)
}

/// The snapshot as recorded: the same fields as [`Snapshot`], all of them
/// always written. A field added to the snapshot must be added here (the
/// conversions name every field, so the build says so) and the format
/// version raised.
mod wire {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::snapshot::{self as s, CgroupPath, RunqHist, RunqStats, Throttling};

    #[derive(Serialize, Deserialize)]
    struct Snapshot {
        ts_ms: u64,
        interval_ms: u64,
        host: Host,
        cgroups: Vec<Cgroup>,
        ports: Vec<Port>,
        missing: Vec<String>,
    }

    #[derive(Serialize, Deserialize)]
    struct Host {
        runq: Option<RunqStats>,
        runq_hist: Option<RunqHist>,
        psi: Option<Psi>,
    }

    #[derive(Serialize, Deserialize)]
    struct Cgroup {
        path: CgroupPath,
        id: u64,
        runq: RunqStats,
        runq_hist: Option<RunqHist>,
        conn_out: u64,
        conn_out_per_s: f64,
        psi: Option<Psi>,
        throttling: Option<Throttling>,
        culprits: Vec<(String, u64, f64)>,
    }

    /// A cgroup of format version 1 (no culprits).
    #[derive(Deserialize)]
    struct CgroupV1 {
        path: CgroupPath,
        id: u64,
        runq: RunqStats,
        runq_hist: Option<RunqHist>,
        conn_out: u64,
        conn_out_per_s: f64,
        psi: Option<Psi>,
        throttling: Option<Throttling>,
    }

    /// A snapshot of format version 1.
    #[derive(Deserialize)]
    struct SnapshotV1 {
        ts_ms: u64,
        interval_ms: u64,
        host: Host,
        cgroups: Vec<CgroupV1>,
        ports: Vec<Port>,
        missing: Vec<String>,
    }

    impl From<CgroupV1> for Cgroup {
        fn from(c: CgroupV1) -> Self {
            Cgroup {
                path: c.path,
                id: c.id,
                runq: c.runq,
                runq_hist: c.runq_hist,
                conn_out: c.conn_out,
                conn_out_per_s: c.conn_out_per_s,
                psi: c.psi,
                throttling: c.throttling,
                culprits: Vec::new(),
            }
        }
    }

    #[derive(Serialize, Deserialize)]
    struct Port {
        port: u16,
        accepted: u64,
        accepted_per_s: f64,
        accept_queue: u32,
        accept_queue_max: u32,
        overflows: u64,
    }

    #[derive(Serialize, Deserialize)]
    struct Psi {
        cpu_some_avg10: f64,
        memory_some_avg10: f64,
        io_some_avg10: f64,
        cpu_total: Option<(u64, Option<u64>)>,
        memory_total: Option<(u64, Option<u64>)>,
        io_total: Option<(u64, Option<u64>)>,
    }

    fn psi_out(p: &s::Psi) -> Psi {
        let t = |t: &Option<s::PsiTotal>| t.map(|t| (t.some_us, t.full_us));
        Psi {
            cpu_some_avg10: p.cpu_some_avg10,
            memory_some_avg10: p.memory_some_avg10,
            io_some_avg10: p.io_some_avg10,
            cpu_total: t(&p.cpu_total),
            memory_total: t(&p.memory_total),
            io_total: t(&p.io_total),
        }
    }

    fn psi_in(p: Psi) -> s::Psi {
        let t = |t: Option<(u64, Option<u64>)>| {
            t.map(|(some_us, full_us)| s::PsiTotal { some_us, full_us })
        };
        s::Psi {
            cpu_some_avg10: p.cpu_some_avg10,
            memory_some_avg10: p.memory_some_avg10,
            io_some_avg10: p.io_some_avg10,
            cpu_total: t(p.cpu_total),
            memory_total: t(p.memory_total),
            io_total: t(p.io_total),
        }
    }

    pub fn serialize<S: Serializer>(v: &s::Snapshot, ser: S) -> Result<S::Ok, S::Error> {
        let w = Snapshot {
            ts_ms: v.ts_ms,
            interval_ms: v.interval_ms,
            host: Host {
                runq: v.host.runq,
                runq_hist: v.host.runq_hist.clone(),
                psi: v.host.psi.as_ref().map(psi_out),
            },
            cgroups: v
                .cgroups
                .iter()
                .map(|c| Cgroup {
                    path: c.path.clone(),
                    id: c.id,
                    runq: c.runq,
                    runq_hist: c.runq_hist.clone(),
                    conn_out: c.conn_out,
                    conn_out_per_s: c.conn_out_per_s,
                    psi: c.psi.as_ref().map(psi_out),
                    throttling: c.throttling,
                    culprits: (c.culprits.iter())
                        .map(|k| (k.cgroup.clone(), k.wait_us, k.share))
                        .collect(),
                })
                .collect(),
            ports: v
                .ports
                .iter()
                .map(|p| Port {
                    port: p.port,
                    accepted: p.accepted,
                    accepted_per_s: p.accepted_per_s,
                    accept_queue: p.accept_queue,
                    accept_queue_max: p.accept_queue_max,
                    overflows: p.overflows,
                })
                .collect(),
            missing: v.missing.clone(),
        };
        w.serialize(ser)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<s::Snapshot, D::Error> {
        let w = if super::DECODING.with(|d| d.get()) == super::FORMAT_V1 {
            let v = SnapshotV1::deserialize(de)?;
            Snapshot {
                ts_ms: v.ts_ms,
                interval_ms: v.interval_ms,
                host: v.host,
                cgroups: v.cgroups.into_iter().map(Cgroup::from).collect(),
                ports: v.ports,
                missing: v.missing,
            }
        } else {
            Snapshot::deserialize(de)?
        };
        Ok(s::Snapshot {
            ts_ms: w.ts_ms,
            interval_ms: w.interval_ms,
            host: s::HostStats {
                runq: w.host.runq,
                runq_hist: w.host.runq_hist,
                psi: w.host.psi.map(psi_in),
            },
            cgroups: w
                .cgroups
                .into_iter()
                .map(|c| s::CgroupStats {
                    path: c.path,
                    id: c.id,
                    runq: c.runq,
                    runq_hist: c.runq_hist,
                    conn_out: c.conn_out,
                    conn_out_per_s: c.conn_out_per_s,
                    psi: c.psi.map(psi_in),
                    throttling: c.throttling,
                    culprits: (c.culprits.into_iter())
                        .map(|(cgroup, wait_us, share)| s::Culprit {
                            cgroup,
                            wait_us,
                            share,
                        })
                        .collect(),
                })
                .collect(),
            ports: w
                .ports
                .into_iter()
                .map(|p| s::PortStats {
                    port: p.port,
                    accepted: p.accepted,
                    accepted_per_s: p.accepted_per_s,
                    accept_queue: p.accept_queue,
                    accept_queue_max: p.accept_queue_max,
                    overflows: p.overflows,
                })
                .collect(),
            missing: w.missing,
        })
    }
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
            culprits: Vec::new(),
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
                    dry_run: false,
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
        let mut bytes = header();
        for f in &frames {
            encode(f, &mut bytes);
        }
        assert_eq!(decode(&bytes).unwrap(), (frames.clone(), false));
        let torn = &bytes[..bytes.len() - 3];
        assert_eq!(decode(torn).unwrap(), (frames[..1].to_vec(), true));
        let mut other = bytes.clone();
        other[MAGIC.len()] = 9;
        assert_eq!(decode(&other), Err(DecodeError::Version { found: 9 }));
        assert_eq!(decode(b"hello, world"), Err(DecodeError::NotARecording));
        // The second frame's variant tag (Step = 2) made unknown.
        let second =
            header().len() + 4 + u32::from_le_bytes(bytes[10..14].try_into().unwrap()) as usize;
        let mut bad = bytes.clone();
        bad[second + 4] = 0x7f;
        assert!(
            matches!(decode(&bad), Err(DecodeError::Frame { index: 1, .. })),
            "{:?}",
            decode(&bad)
        );
    }

    #[test]
    fn culprits_round_trip_and_version_1_recordings_still_decode() {
        let cfg = config::from_str(CONFIG, "test").unwrap();
        let mut snap = Watch::of(&cfg).filter(&snapshot(100));
        snap.ports.clear();
        snap.cgroups.truncate(1);
        snap.missing.clear();
        let step = |snapshot| Frame {
            input: Input::Step {
                now: Duration::from_millis(100),
                snapshot,
            },
            decisions: vec![],
        };
        // Version 2: a cgroup's culprits are kept.
        let mut with = snap.clone();
        with.cgroups[0].culprits = vec![crate::snapshot::Culprit {
            cgroup: "/batch".into(),
            wait_us: 820,
            share: 0.82,
        }];
        let mut bytes = header();
        encode(&step(with.clone()), &mut bytes);
        assert_eq!(decode(&bytes).unwrap(), (vec![step(with)], false));
        // Version 1 had no culprits field: its last cgroup ends one byte
        // (the empty list's length) earlier; ports, missing, decisions
        // follow as the three empty lists.
        let frame = step(snap.clone());
        let mut v2 = header();
        encode(&frame, &mut v2);
        assert_eq!(&v2[v2.len() - 4..], &[0, 0, 0, 0]);
        let mut v1 = v2[..v2.len() - 1].to_vec();
        v1[MAGIC.len()..MAGIC.len() + 2].copy_from_slice(&FORMAT_V1.to_le_bytes());
        let at = MAGIC.len() + 2;
        let len = u32::from_le_bytes(v1[at..at + 4].try_into().unwrap()) - 1;
        v1[at..at + 4].copy_from_slice(&len.to_le_bytes());
        assert_eq!(decode(&v1).unwrap(), (vec![frame], false));
        // The same bytes read as version 2 are not that frame.
        let mut as_v2 = v1.clone();
        as_v2[MAGIC.len()..MAGIC.len() + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        assert!(decode(&as_v2).is_err());
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
            dry_run: false,
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
