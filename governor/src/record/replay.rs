//! `governor replay`: a recording fed again through the engine, with the
//! recorded config (the recorded decisions come back, or the difference is
//! reported) or a candidate (what it would have decided); reports as text,
//! JSON lines, or [`super::report::Report`] for the HTML page.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use governor_engine::{
    config::{Config, SignalKind, SignalUnit},
    record::{DecisionRecord, Engine, Frame, Input},
};

use super::report::{CgroupSeries, Marker, Point, PolicyReport, Report, Run};

/// What to replay and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A candidate config (text, name) in place of the recorded ones.
    pub candidate: Option<(String, String)>,
    /// Report from this Unix time (ms); earlier frames are still fed.
    pub from_unix_ms: Option<u64>,
    /// Stop at this Unix time (ms).
    pub to_unix_ms: Option<u64>,
    /// Collect per-tick points for charts (the HTML page).
    pub points: bool,
}

/// A decision of the replay or of the live run, with its wall-clock time.
#[derive(Debug, Clone, PartialEq)]
pub struct Timed {
    /// Unix time (ms).
    pub unix_ms: u64,
    /// The decision.
    pub decision: DecisionRecord,
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct Replayed {
    /// The decisions recorded live, in the span.
    pub live: Vec<Timed>,
    /// The decisions of this replay, in the span.
    pub replayed: Vec<Timed>,
    /// Without a candidate: frames whose replayed decisions differ from
    /// the recorded ones (frame index, recorded, replayed); empty means the
    /// replay reproduced the run exactly.
    pub mismatches: Vec<(usize, Vec<DecisionRecord>, Vec<DecisionRecord>)>,
    /// Ticks replayed.
    pub ticks: u64,
    /// Runs (agent starts) in the recording.
    pub runs: usize,
    /// True if the first frame was not a run's start (older segments were
    /// dropped): the replay began from a fresh state there, and its first
    /// decisions may differ from the live ones until the policies' state
    /// has converged.
    pub began_mid_run: bool,
    /// The data for the charts (with [`Options::points`]).
    pub report: Option<Report>,
}

/// The value of a policy's signal in its base unit for reports: seconds
/// for run-queue waits (the engine keeps microseconds), else as it is.
fn base_unit(kind: SignalKind, v: f64) -> f64 {
    match kind.unit() {
        SignalUnit::Latency => v / 1e6,
        SignalUnit::Ratio | SignalUnit::Rate => v,
    }
}

fn unit_of(kind: SignalKind) -> &'static str {
    match kind.unit() {
        SignalUnit::Latency => "s",
        SignalUnit::Rate => "/s",
        SignalUnit::Ratio => "ratio",
    }
}

/// Per-policy charts under construction.
#[derive(Default)]
struct Charts {
    /// name → (kind, run) for the config that is replayed.
    runs: BTreeMap<String, (SignalKind, Run)>,
    /// name → decisions recorded live.
    live: BTreeMap<String, Vec<Marker>>,
    cgroups: BTreeMap<String, Vec<(f64, f64, f64)>>,
    order: Vec<String>,
    /// name → (signal, kind, high, low, rungs) of the config replayed
    /// last (the candidate's, with one).
    meta: BTreeMap<String, (String, SignalKind, f64, f64, usize)>,
    /// The same of the live config in force last.
    live_meta: BTreeMap<String, (String, SignalKind, f64, f64, usize)>,
}

fn marker(t: f64, d: &DecisionRecord) -> Marker {
    let v: serde_json::Value = serde_json::from_str(&d.json).unwrap_or_default();
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
    Marker {
        t,
        kind: s("kind"),
        direction: direction_of(&v),
        from_rung: n("from_rung"),
        to_rung: n("to_rung"),
        text: d.text.clone(),
    }
}

fn direction_of(v: &serde_json::Value) -> String {
    let change = v.get("change").and_then(|x| x.as_str()).unwrap_or("");
    let (from, to) = (
        v.get("from_rung").and_then(serde_json::Value::as_u64),
        v.get("to_rung").and_then(serde_json::Value::as_u64),
    );
    match change {
        "adjust" => "reset".into(),
        _ if to > from => "up".into(),
        _ => {
            let cause = v
                .pointer("/reason/cause")
                .map(|c| c.to_string())
                .unwrap_or_default();
            if ["policy_removed", "policy_changed", "shutdown", "protected"]
                .iter()
                .any(|k| cause.contains(k))
            {
                "reset".into()
            } else {
                "down".into()
            }
        }
    }
}

fn policy_of(d: &DecisionRecord) -> String {
    serde_json::from_str::<serde_json::Value>(&d.json)
        .ok()
        .and_then(|v| v.get("policy").and_then(|p| p.as_str()).map(str::to_owned))
        .unwrap_or_default()
}

impl Charts {
    fn config(&mut self, cfg: &Config, live: bool) {
        for p in &cfg.policies {
            let kind = p.signal.kind;
            let entry = (
                p.signal.to_string(),
                kind,
                base_unit(kind, p.watermarks.high.value),
                base_unit(kind, p.watermarks.low.value),
                p.ladder.len(),
            );
            if live {
                self.live_meta.insert(p.name.clone(), entry.clone());
            }
            if !self.order.contains(&p.name) {
                self.order.push(p.name.clone());
            }
            self.meta.insert(p.name.clone(), entry);
            self.runs
                .entry(p.name.clone())
                .or_insert_with(|| (kind, Run::default()))
                .0 = kind;
        }
    }
}

/// Replays `frames` with `opts`.
pub fn replay(frames: &[Frame], opts: &Options) -> anyhow::Result<Replayed> {
    let mut r = Replayer::new(opts.clone());
    for f in frames {
        if !r.feed(f)? {
            break;
        }
    }
    Ok(r.finish())
}

/// A replay fed one frame at a time (a day of frames need not be held in
/// memory at once).
pub struct Replayer {
    opts: Options,
    engine: Engine,
    out: Replayed,
    started_unix_ms: u64,
    origin: Option<u64>,
    charts: Charts,
    live_cfg: Option<Config>,
    index: usize,
}

impl Replayer {
    /// A replay with `opts`.
    pub fn new(opts: Options) -> Self {
        let engine = match &opts.candidate {
            Some((text, name)) => Engine::with_candidate(text.clone(), name.clone()),
            None => Engine::new(),
        };
        Self {
            opts,
            engine,
            out: Replayed::default(),
            started_unix_ms: 0,
            origin: None,
            charts: Charts::default(),
            live_cfg: None,
            index: 0,
        }
    }

    /// Feeds the next frame; false once past `--to` (feed no more).
    pub fn feed(&mut self, frame: &Frame) -> anyhow::Result<bool> {
        let i = self.index;
        self.index += 1;
        let opts = &self.opts;
        if i == 0 {
            self.out.began_mid_run = !matches!(frame.input, Input::Start { .. });
        }
        match &frame.input {
            Input::Start {
                started_unix_ms: s,
                config,
                source_name,
                ..
            } => {
                self.started_unix_ms = *s;
                self.out.runs += 1;
                self.live_cfg = governor_engine::config::from_str(config, source_name).ok();
            }
            Input::Segment {
                started_unix_ms: s,
                config,
                source_name,
                ..
            } if self.engine.state().is_none() => {
                self.started_unix_ms = *s;
                self.out.runs += 1;
                self.live_cfg = governor_engine::config::from_str(config, source_name).ok();
            }
            Input::Reload {
                config,
                source_name,
                ..
            } => {
                self.live_cfg = governor_engine::config::from_str(config, source_name).ok();
            }
            _ => {}
        }
        let unix_ms = self
            .started_unix_ms
            .saturating_add(u64::try_from(frame.input.now().as_millis()).unwrap_or(u64::MAX));
        if opts.to_unix_ms.is_some_and(|to| unix_ms > to) {
            return Ok(false);
        }
        let decisions: Vec<DecisionRecord> = self
            .engine
            .feed(&frame.input)
            .map_err(|e| anyhow::anyhow!("frame {i}: {e}"))?
            .iter()
            .map(DecisionRecord::from)
            .collect();
        let out = &mut self.out;
        let charts = &mut self.charts;
        let engine = &self.engine;
        if opts.candidate.is_none() && decisions != frame.decisions {
            out.mismatches
                .push((i, frame.decisions.clone(), decisions.clone()));
        }
        let in_span = opts.from_unix_ms.is_none_or(|from| unix_ms >= from);
        if !in_span {
            return Ok(true);
        }
        let origin = *self.origin.get_or_insert(unix_ms);
        let t = (unix_ms - origin) as f64 / 1e3;
        let reconfigured = matches!(
            frame.input,
            Input::Start { .. } | Input::Segment { .. } | Input::Reload { .. }
        );
        if opts.points && reconfigured {
            if let Some(cfg) = &self.live_cfg {
                charts.config(cfg, true);
            }
            // A candidate stays in force across the live reloads.
            let candidate_start = !matches!(frame.input, Input::Reload { .. });
            if let Some(cfg) = engine.config()
                && (opts.candidate.is_none() || candidate_start)
            {
                charts.config(cfg, false);
            }
        }
        for d in &frame.decisions {
            out.live.push(Timed {
                unix_ms,
                decision: d.clone(),
            });
            if opts.points {
                charts
                    .live
                    .entry(policy_of(d))
                    .or_default()
                    .push(marker(t, d));
            }
        }
        for d in &decisions {
            out.replayed.push(Timed {
                unix_ms,
                decision: d.clone(),
            });
            if opts.points
                && let Some((_, run)) = charts.runs.get_mut(&policy_of(d))
            {
                run.decisions.push(marker(t, d));
            }
        }
        if let Input::Step { snapshot, .. } = &frame.input {
            out.ticks += 1;
            if opts.points {
                if let Some(state) = engine.state() {
                    for (name, rung, value) in state.points() {
                        if let Some((kind, run)) = charts.runs.get_mut(name) {
                            run.points.push(Point {
                                t,
                                value: value.map(|v| base_unit(*kind, v)),
                                rung,
                            });
                        }
                    }
                }
                for c in &snapshot.cgroups {
                    charts.cgroups.entry(c.path.to_string()).or_default().push((
                        t,
                        c.runq.p50_us as f64 / 1e6,
                        c.runq.p99_us as f64 / 1e6,
                    ));
                }
            }
        }
        Ok(true)
    }

    /// What the replay found.
    pub fn finish(mut self) -> Replayed {
        if self.opts.points {
            let charts = std::mem::take(&mut self.charts);
            self.out.report = Some(build_report(
                charts,
                &self.opts,
                self.origin.unwrap_or(0),
                &self.out,
            ));
        }
        self.out
    }
}

fn build_report(mut charts: Charts, opts: &Options, origin: u64, out: &Replayed) -> Report {
    let to = out
        .replayed
        .last()
        .map_or(0.0, |d| (d.unix_ms.saturating_sub(origin)) as f64 / 1e3)
        .max(
            charts
                .runs
                .values()
                .filter_map(|(_, r)| r.points.last().map(|p| p.t))
                .fold(0.0, f64::max),
        );
    let mut policies = Vec::new();
    for name in &charts.order {
        let run = charts.runs.remove(name).map(|(_, r)| r);
        let live_markers = charts.live.remove(name).unwrap_or_default();
        // The config replayed (the candidate's, with one) names the
        // signal, its unit and the watermarks; the live side is drawn
        // against the live config's own.
        let Some((signal, kind, high, low, rungs)) =
            charts.meta.get(name).or_else(|| charts.live_meta.get(name))
        else {
            continue;
        };
        let (signal, unit, high, low, rungs) =
            (signal.clone(), unit_of(*kind), *high, *low, *rungs);
        let live_meta = charts.live_meta.get(name);
        let in_live = live_meta.is_some();
        let live_watermarks = opts
            .candidate
            .as_ref()
            .and(live_meta)
            .map(|(_, _, h, l, _)| (*h, *l));
        let (live, candidate) = if opts.candidate.is_some() {
            (
                in_live.then(|| Run {
                    points: Vec::new(),
                    decisions: live_markers,
                }),
                run,
            )
        } else {
            (run, None)
        };
        policies.push(PolicyReport {
            name: name.clone(),
            signal,
            unit,
            high,
            low,
            live_watermarks,
            rungs,
            live,
            candidate,
        });
    }
    Report {
        title: String::new(),
        started_unix_ms: origin,
        from: 0.0,
        to,
        policies,
        cgroups: charts
            .cgroups
            .into_iter()
            .map(|(path, points)| CgroupSeries { path, points })
            .collect(),
    }
}

/// Per-policy figures of a list of decisions: trips (steps up from rung
/// 0), transitions, and (from the points) time at each rung and over high.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Figures {
    /// Steps up from rung 0.
    pub trips: usize,
    /// Steps up or down (not refusals, not re-sets).
    pub transitions: usize,
    /// Refusals (flap budget, protection).
    pub refused: usize,
}

/// The figures of one policy's decisions.
pub fn figures(decisions: &[&DecisionRecord]) -> Figures {
    let mut f = Figures::default();
    for d in decisions {
        let v: serde_json::Value = serde_json::from_str(&d.json).unwrap_or_default();
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if kind == "refused" {
            f.refused += 1;
            continue;
        }
        if v.get("change").and_then(|c| c.as_str()) == Some("adjust") {
            continue;
        }
        f.transitions += 1;
        if v.get("from_rung").and_then(serde_json::Value::as_u64) == Some(0) {
            f.trips += 1;
        }
    }
    f
}

/// The time spent at each rung, and over high, from a run's points
/// (each point stands for the time until the next).
pub fn time_at_rungs(run: &Run, high: f64) -> (Vec<Duration>, Duration) {
    let mut at = Vec::new();
    let mut over = Duration::ZERO;
    for w in run.points.windows(2) {
        let dt = Duration::from_secs_f64((w[1].t - w[0].t).max(0.0));
        if at.len() <= w[0].rung {
            at.resize(w[0].rung + 1, Duration::ZERO);
        }
        at[w[0].rung] += dt;
        if w[0].value.is_some_and(|v| v >= high) {
            over += dt;
        }
    }
    (at, over)
}

fn clock(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(unix_ms))
        .to_string()
}

/// The text report: per policy the decisions of the replay with their
/// reasons, then (with a candidate) the live ones beside them, and the
/// figures.
pub fn text(r: &Replayed, opts: &Options) -> String {
    let mut s = String::new();
    let candidate = opts.candidate.is_some();
    let _ = writeln!(
        s,
        "replayed {} ticks of {} run(s){}",
        r.ticks,
        r.runs,
        if r.began_mid_run {
            " (the recording begins mid-run: the replay starts fresh at its first frame)"
        } else {
            ""
        }
    );
    if !candidate {
        if r.mismatches.is_empty() {
            let _ = writeln!(
                s,
                "identical: all {} recorded decisions were decided again",
                r.live.len()
            );
        } else {
            let _ = writeln!(
                s,
                "DIFFERENT: {} frame(s) decided otherwise than recorded (first at frame {})",
                r.mismatches.len(),
                r.mismatches[0].0
            );
        }
    }
    let mut names: Vec<String> = Vec::new();
    for d in r.replayed.iter().chain(&r.live) {
        let p = policy_of(&d.decision);
        if !names.contains(&p) {
            names.push(p);
        }
    }
    for name in names {
        let pick = |ds: &[Timed]| -> Vec<Timed> {
            ds.iter()
                .filter(|d| policy_of(&d.decision) == name)
                .cloned()
                .collect()
        };
        let (mine, live) = (pick(&r.replayed), pick(&r.live));
        let fig = |ds: &[Timed]| figures(&ds.iter().map(|d| &d.decision).collect::<Vec<_>>());
        let (fm, fl) = (fig(&mine), fig(&live));
        let _ = writeln!(s, "\npolicy {name}");
        if candidate {
            let _ = writeln!(
                s,
                "  candidate: {} trips, {} transitions, {} refused; live: {} trips, {} transitions, {} refused",
                fm.trips, fm.transitions, fm.refused, fl.trips, fl.transitions, fl.refused
            );
        } else {
            let _ = writeln!(
                s,
                "  {} trips, {} transitions, {} refused",
                fm.trips, fm.transitions, fm.refused
            );
        }
        let _ = writeln!(
            s,
            "  {}:",
            if candidate { "candidate" } else { "decisions" }
        );
        for d in &mine {
            let _ = writeln!(s, "    {}  {}", clock(d.unix_ms), d.decision.text);
        }
        if candidate {
            let _ = writeln!(s, "  live:");
            for d in &live {
                let _ = writeln!(s, "    {}  {}", clock(d.unix_ms), d.decision.text);
            }
        }
    }
    if let Some(rep) = &r.report {
        for p in &rep.policies {
            let run = if candidate { &p.candidate } else { &p.live };
            if let Some(run) = run {
                let (at, over) = time_at_rungs(run, p.high);
                let rungs: Vec<String> = at
                    .iter()
                    .enumerate()
                    .map(|(i, d)| format!("rung {i} {:.1}s", d.as_secs_f64()))
                    .collect();
                let _ = writeln!(
                    s,
                    "\npolicy {}: {}; over high {:.1}s",
                    p.name,
                    rungs.join(", "),
                    over.as_secs_f64()
                );
            }
        }
    }
    s
}

/// The JSON lines: one object per decision of the replay (the decision's
/// own fields, `kind` among them, plus `unix_ms` and `source`: `replay` or
/// `live`), then `{"summary": …}`.
pub fn json(r: &Replayed, opts: &Options) -> String {
    let mut s = String::new();
    let mut emit = |d: &Timed, source: &str| {
        let mut v: serde_json::Value = serde_json::from_str(&d.decision.json).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("unix_ms".into(), d.unix_ms.into());
            o.insert("source".into(), source.into());
            o.insert("text".into(), d.decision.text.clone().into());
        }
        let _ = writeln!(s, "{v}");
    };
    for d in &r.replayed {
        emit(d, "replay");
    }
    if opts.candidate.is_some() {
        for d in &r.live {
            emit(d, "live");
        }
    }
    let per: BTreeMap<String, Figures> = r
        .replayed
        .iter()
        .map(|d| policy_of(&d.decision))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|name| {
            let ds: Vec<&DecisionRecord> = r
                .replayed
                .iter()
                .filter(|d| policy_of(&d.decision) == name)
                .map(|d| &d.decision)
                .collect();
            (name, figures(&ds))
        })
        .collect();
    let summary = serde_json::json!({
        "summary": {
            "ticks": r.ticks,
            "runs": r.runs,
            "decisions": r.replayed.len(),
            "live_decisions": r.live.len(),
            "candidate": opts.candidate.as_ref().map(|c| c.1.clone()),
            "identical": opts.candidate.is_none().then_some(r.mismatches.is_empty()),
            "began_mid_run": r.began_mid_run,
            "policies": per.iter().map(|(k, f)| (k.clone(), serde_json::json!({
                "trips": f.trips, "transitions": f.transitions, "refused": f.refused,
            }))).collect::<serde_json::Map<_, _>>(),
        }
    });
    let _ = writeln!(s, "{summary}");
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::record::fixture::LIVE;

    /// A recorded run: 10 s of overload, then 20 s calm.
    fn recording() -> Vec<Frame> {
        crate::record::fixture::run(300, |tick| if tick < 100 { 5000 } else { 100 }, &[])
    }

    #[test]
    fn the_recorded_config_reproduces_the_run_and_says_so() {
        let frames = recording();
        let r = replay(
            &frames,
            &Options {
                points: true,
                ..Options::default()
            },
        )
        .unwrap();
        assert!(r.mismatches.is_empty());
        assert!(r.live.len() >= 4, "trips and recovery: {:?}", r.live);
        assert_eq!(r.live, r.replayed);
        let t = text(&r, &Options::default());
        assert!(t.contains("identical: all"), "{t}");
        assert!(t.contains("policy api: rung 0 "), "{t}");
        let report = r.report.unwrap();
        assert_eq!(report.policies.len(), 1);
        let p = &report.policies[0];
        assert_eq!((p.unit, p.high, p.low, p.rungs), ("s", 0.002, 0.0005, 2));
        assert_eq!(p.live.as_ref().unwrap().points.len(), 300);
        assert_eq!(report.cgroups.len(), 1);
    }

    #[test]
    fn a_tampered_recording_is_reported_as_different() {
        let mut frames = recording();
        // A decision that the engine does not take.
        let i = frames.iter().position(|f| !f.decisions.is_empty()).unwrap();
        frames[i].decisions.clear();
        let r = replay(&frames, &Options::default()).unwrap();
        assert_eq!(r.mismatches.len(), 1);
        assert_eq!(r.mismatches[0].0, i);
        assert!(text(&r, &Options::default()).contains("DIFFERENT: 1 frame(s)"));
    }

    #[test]
    fn a_candidate_is_shown_beside_the_live_decisions_and_json_ends_in_a_summary() {
        let frames = recording();
        let calmer = LIVE.replace("high = \"2ms\"", "high = \"10ms\"");
        let opts = Options {
            candidate: Some((calmer, "calm.toml".into())),
            points: true,
            ..Options::default()
        };
        let r = replay(&frames, &opts).unwrap();
        assert!(r.replayed.is_empty(), "a 5 ms wait never reaches 10 ms");
        assert!(!r.live.is_empty());
        let t = text(&r, &opts);
        assert!(t.contains("candidate: 0 trips"), "{t}");
        assert!(t.contains("live:"), "{t}");
        let j = json(&r, &opts);
        let lines: Vec<serde_json::Value> = j
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let last = lines.last().unwrap();
        assert_eq!(last["summary"]["candidate"], "calm.toml");
        assert_eq!(last["summary"]["decisions"], 0);
        assert!(
            lines[..lines.len() - 1]
                .iter()
                .all(|l| l["source"] == "live" && l["kind"].is_string())
        );
        let rep = r.report.unwrap();
        let p = &rep.policies[0];
        assert_eq!(p.high, 0.010, "the candidate's watermark is drawn");
        assert!(p.candidate.as_ref().is_some_and(|c| c.decisions.is_empty()));
        assert!(p.live.as_ref().is_some_and(|l| !l.decisions.is_empty()));
    }

    /// The live config, with high at 10 ms, and a policy "extra" of its
    /// own (run-queue, in seconds).
    fn candidate_with_an_extra_policy() -> String {
        let mut c = LIVE.replace("high = \"2ms\"", "high = \"10ms\"");
        c.push_str(
            r#"
[[policy]]
name = "extra"
signal = { kind = "runq_p50", cgroup = "/workload/api" }
high = "4ms"
low = "1ms"
for = "300ms"
ladder = [{ action = "cpu_weight", cgroup = "/workload/batch", weight = "idle" }]
"#,
        );
        c
    }

    #[test]
    fn a_policy_only_the_candidate_has_keeps_its_signal_unit() {
        let opts = Options {
            candidate: Some((candidate_with_an_extra_policy(), "c.toml".into())),
            points: true,
            ..Options::default()
        };
        let rep = replay(&recording(), &opts).unwrap().report.unwrap();
        let extra = rep.policies.iter().find(|p| p.name == "extra").unwrap();
        assert!(extra.live.is_none() && extra.candidate.is_some());
        assert_eq!(extra.unit, "s", "runq_p50 is in seconds");
        assert_eq!((extra.high, extra.low), (0.004, 0.001));
        let api = rep.policies.iter().find(|p| p.name == "api").unwrap();
        assert_eq!(api.unit, "s");
    }

    #[test]
    fn with_a_candidate_the_live_side_keeps_the_live_watermarks() {
        let opts = Options {
            candidate: Some((candidate_with_an_extra_policy(), "c.toml".into())),
            points: true,
            ..Options::default()
        };
        let rep = replay(&recording(), &opts).unwrap().report.unwrap();
        let api = rep.policies.iter().find(|p| p.name == "api").unwrap();
        assert_eq!(api.watermarks(false), (0.010, 0.0005), "the candidate's");
        assert_eq!(api.watermarks(true), (0.002, 0.0005), "the live config's");
        // A policy only the candidate has has no live side to draw.
        let extra = rep.policies.iter().find(|p| p.name == "extra").unwrap();
        assert_eq!(extra.watermarks(false), (0.004, 0.001));
        // Without a candidate the one run is the live one.
        let rep = replay(
            &recording(),
            &Options {
                points: true,
                ..Options::default()
            },
        )
        .unwrap()
        .report
        .unwrap();
        assert_eq!(rep.policies[0].watermarks(true), (0.002, 0.0005));
        assert_eq!(rep.policies[0].live_watermarks, None);
    }

    #[test]
    fn from_and_to_bound_what_is_reported() {
        let frames = recording();
        let start = 1_700_000_000_000u64;
        let all = replay(&frames, &Options::default()).unwrap();
        let late = replay(
            &frames,
            &Options {
                from_unix_ms: Some(start + 12_000),
                ..Options::default()
            },
        )
        .unwrap();
        assert!(late.replayed.iter().all(|d| d.unix_ms >= start + 12_000));
        assert!(late.replayed.len() < all.replayed.len());
        let early = replay(
            &frames,
            &Options {
                to_unix_ms: Some(start + 5_000),
                ..Options::default()
            },
        )
        .unwrap();
        assert!(early.replayed.iter().all(|d| d.unix_ms <= start + 5_000));
        assert!(early.ticks <= 51);
    }
}
