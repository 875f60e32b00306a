//! Noisy neighbour: a latency-sensitive worker with busy and idle phases
//! and two CPU hogs in a neighbouring cgroup, all pinned to CPU 0, under
//! nothing, a static quota on the hogs, static weights in the worker's
//! favour, and governor; beside the quiet host (the worker alone).
//!
//! The worker's latency is measured in the worker itself: in its busy
//! phases it wakes every 2 ms (absolute `clock_nanosleep`, timer slack
//! 1 ns) and computes for 1 ms; the overshoot of each wake-up past its due
//! time is its wake-up latency, which on a shared CPU is run-queue wait.
//! The hogs report units of work done (a fixed computation each).

use std::{
    thread,
    time::{Duration, Instant},
};

use super::{
    BenchArgs,
    env::{Agent, CpuCgroup, Place, Sampler, Workloads, field, median, mono_ns},
    plot,
    report::{self, Section},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Quiet,
    Nothing,
    Quota,
    Weight,
    Governor,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::Quiet => "quiet host (worker alone)",
            Self::Nothing => "(a) nothing",
            Self::Quota => "(b) static quota 0.2 CPU on the hogs",
            Self::Weight => "(c) static weights: worker 10000, hogs 1",
            Self::Governor => "(d) governor",
        }
    }
}

const SECONDS: &str = "9";
const BUSY_MS: &str = "1500";
const IDLE_MS: &str = "1500";
const HIGH: &str = "2ms";
const LOW: &str = "500us";

struct Run {
    p99_us: f64,
    /// The worst per-phase p99 of the busy phases after the first.
    later_p99_us: f64,
    work: f64,
    phases: Vec<(u64, f64)>,
}

fn one(
    variant: Variant,
    parent: &CpuCgroup,
    plot_it: bool,
) -> anyhow::Result<(Run, Option<Vec<super::env::PolicySample>>, u64)> {
    let worker_cg = parent.child("worker")?;
    let hogs_cg = parent.child("hogs")?;
    match variant {
        Variant::Quota => hogs_cg.set_quota(0.2)?,
        Variant::Weight => {
            worker_cg.set_weight(10_000)?;
            hogs_cg.set_weight(1)?;
        }
        _ => {}
    }
    let agent = if variant == Variant::Governor {
        Some(Agent::start(
            "",
            &format!(
                r#"
[[policy]]
name = "worker-over-hogs"
signal = {{ kind = "runq_p99", cgroup = "{}" }}
high = "{HIGH}"
low = "{LOW}"
for = "300ms"
settle = "1s"
recover_every = "10s"
jitter = 0.3
ladder = [
  {{ action = "cpu_weight", cgroup = "{h}", weight = 1 }},
  {{ action = "cpu_limit", cgroup = "{h}", cpus = 0.2 }},
]
"#,
                worker_cg.path,
                h = hogs_cg.path
            ),
        )?)
    } else {
        None
    };
    let t0 = Instant::now();
    let t0_ns = mono_ns();
    let sampler = match (&agent, plot_it) {
        (Some(a), true) => Some(Sampler::start(a, "worker-over-hogs", t0)),
        _ => None,
    };
    let mut w = Workloads::default();
    let worker = w.spawn(
        Place {
            netns: None,
            cgroup: Some(&worker_cg),
        },
        &[
            "phased",
            "--cpu",
            "0",
            "--seconds",
            SECONDS,
            "--busy-ms",
            BUSY_MS,
            "--idle-ms",
            IDLE_MS,
        ],
    )?;
    let mut hogs = Vec::new();
    if variant != Variant::Quiet {
        for _ in 0..2 {
            hogs.push(w.spawn(
                Place {
                    netns: None,
                    cgroup: Some(&hogs_cg),
                },
                &["counthog", "--cpu", "0", "--seconds", SECONDS],
            )?);
        }
    }
    let out = w.output(worker)?;
    let mut work = 0.0;
    for h in hogs {
        work += field(&w.output(h)?, "work").unwrap_or(f64::NAN);
    }
    // Let the governor see the idle CPU before the samples end.
    if sampler.is_some() {
        thread::sleep(Duration::from_millis(500));
    }
    let samples = sampler.map(Sampler::finish);
    let phases = out
        .lines()
        .filter(|l| l.starts_with("phase="))
        .filter_map(|l| Some((field(l, "t_ns")? as u64, field(l, "p99_us")?)))
        .collect();
    let summary = out.lines().last().unwrap_or("");
    let p99_us = field(summary, "p99_us").unwrap_or(f64::NAN);
    // The busy phases after the first (the one that trips the governor).
    let later_p99_us = out
        .lines()
        .filter(|l| l.starts_with("phase="))
        .skip(1)
        .filter_map(|l| field(l, "p99_us"))
        .fold(f64::NAN, f64::max);
    drop(w);
    drop(agent);
    drop(hogs_cg);
    drop(worker_cg);
    Ok((
        Run {
            p99_us,
            later_p99_us,
            work,
            phases,
        },
        samples,
        t0_ns,
    ))
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let mut sec = Section::new(
        "noisy",
        "2. Noisy neighbour: phased worker beside CPU hogs (CPU 0)",
        &format!("cargo xtask bench noisy --rounds {}", args.rounds),
    );
    crate::util::say(format!(
        "bench noisy: worker busy {BUSY_MS} ms / idle {IDLE_MS} ms for {SECONDS} s, 2 hogs, all on CPU 0; {} rounds, rotating order",
        args.rounds
    ));
    let parent = CpuCgroup::new("nn")?;
    parent.outweigh_the_host()?;
    let variants = [
        Variant::Quiet,
        Variant::Nothing,
        Variant::Quota,
        Variant::Weight,
        Variant::Governor,
    ];
    let mut results: Vec<(Variant, Vec<f64>, Vec<f64>)> = variants
        .iter()
        .map(|v| (*v, Vec::new(), Vec::new()))
        .collect();
    let mut later: Vec<(Variant, Vec<f64>)> = variants.iter().map(|v| (*v, Vec::new())).collect();
    let mut plotted = None;
    for round in 0..args.rounds {
        for k in 0..variants.len() {
            let v = variants[(round + k) % variants.len()];
            let last = round + 1 == args.rounds;
            let (r, samples, t0_ns) = one(v, &parent, last)?;
            eprintln!(
                "  round {}  {:<44} worker busy p99 {:>7.0} µs (after the first phase {:>7.0} µs)  hogs' work {:>9.0}",
                round + 1,
                v.name(),
                r.p99_us,
                r.later_p99_us,
                r.work
            );
            if let Some(s) = samples {
                plotted = Some((s, r.phases.clone(), t0_ns));
            }
            if let Some((_, l)) = later.iter_mut().find(|(x, _)| *x == v) {
                l.push(r.later_p99_us);
            }
            if let Some((_, p, wk)) = results.iter_mut().find(|(x, _, _)| *x == v) {
                p.push(r.p99_us);
                wk.push(r.work);
            }
        }
    }
    let med = |v: Variant| {
        results
            .iter()
            .find(|(x, _, _)| *x == v)
            .map(|(_, p, w)| (median(p), median(w)))
            .unwrap_or((f64::NAN, f64::NAN))
    };
    let med_later = |v: Variant| {
        later
            .iter()
            .find(|(x, _)| *x == v)
            .map_or(f64::NAN, |(_, l)| median(l))
    };
    let (quiet, _) = med(Variant::Quiet);
    let (_, quota_work) = med(Variant::Quota);
    sec.md(&format!(
        "Worker: wakes every 2 ms and computes 1 ms in {BUSY_MS} ms busy phases, idle {IDLE_MS} ms between, {SECONDS} s; two hogs in a sibling cgroup; all pinned to CPU 0, under a parent cgroup with the top weight. Latency: the worker's own wake-up overshoot in busy phases (run-queue wait plus timer latency). Governor: `runq_p99` of the worker's cgroup, high {HIGH}, low {LOW}, `for` 300 ms, `recover_every` 10 s (relief is held through the worker's idle phases), ladder `cpu_weight 1` → `cpu_limit 0.2` on the hogs. \"After the first phase\": the worst per-phase p99 of the busy phases after the first, which is the one whose first `for` + a tick trips the governor. Medians of {} rounds.\n",
        args.rounds
    ));
    sec.md("| variant | worker busy p99 µs | ratio to quiet | after the first phase: p99 µs | ratio to quiet | hogs' work (units) | ratio to (b) |");
    sec.md("|---|---|---|---|---|---|---|");
    let quiet_later = med_later(Variant::Quiet);
    for v in variants {
        let (p, wk) = med(v);
        let l = med_later(v);
        sec.md(&format!(
            "| {} | {p:.0} | {:.2} | {l:.0} | {:.2} | {} | {} |",
            v.name(),
            p / quiet,
            l / quiet_later,
            if v == Variant::Quiet {
                "–".to_owned()
            } else {
                format!("{wk:.0}")
            },
            if v == Variant::Quiet {
                "–".to_owned()
            } else {
                format!("{:.2}", wk / quota_work)
            },
        ));
        let key = match v {
            Variant::Quiet => "quiet",
            Variant::Nothing => "nothing",
            Variant::Quota => "static_quota",
            Variant::Weight => "static_weight",
            Variant::Governor => "governor",
        };
        sec.metric(&format!("{key}_worker_p99_us"), p);
        sec.metric(&format!("{key}_worker_later_phases_p99_us"), l);
        if v != Variant::Quiet {
            sec.metric(&format!("{key}_hogs_work"), wk);
        }
    }
    let (gov, gov_work) = med(Variant::Governor);
    let (quota, _) = med(Variant::Quota);
    let (weight, _) = med(Variant::Weight);
    sec.metric("governor_p99_ratio_to_quiet", gov / quiet);
    sec.metric("governor_work_ratio_to_quota", gov_work / quota_work);
    sec.md("");
    sec.target(
        "governor p99 ≤ 2× quiet",
        gov <= 2.0 * quiet,
        &format!("{gov:.0} µs vs quiet {quiet:.0} µs: {:.2}×", gov / quiet),
    );
    sec.target(
        "governor p99 no worse than (b) and (c)",
        gov <= quota && gov <= weight,
        &format!("{gov:.0} µs vs (b) {quota:.0} µs, (c) {weight:.0} µs"),
    );
    let (gl, ql, wl) = (
        med_later(Variant::Governor),
        med_later(Variant::Quota),
        med_later(Variant::Weight),
    );
    sec.target(
        "after the first busy phase: governor p99 ≤ 2× quiet and no worse than (b) and (c)",
        gl <= 2.0 * quiet_later && gl <= ql && gl <= wl,
        &format!(
            "{gl:.0} µs vs quiet {quiet_later:.0} µs ({:.2}×), (b) {ql:.0} µs, (c) {wl:.0} µs",
            gl / quiet_later
        ),
    );
    sec.target(
        "hogs' work under governor ≥ 1.5× under (b)",
        gov_work >= 1.5 * quota_work,
        &format!("{:.2}×", gov_work / quota_work),
    );
    if let Some((samples, phases, t0_ns)) = plotted {
        let svg = report::dir()?.join("noisy.svg");
        // The watermarks above, in µs.
        let (high, low) = (2000.0, 500.0);
        plot::write(
            &svg,
            "Noisy neighbour under governor (last round)",
            &[
                plot::Panel {
                    title: "signal: worker's run-queue p99 per tick (µs, governor's probes)".into(),
                    series: vec![plot::Series {
                        label: "runq p99".into(),
                        points: samples.iter().map(|s| (s.t, s.signal)).collect(),
                        color: "#1f77b4",
                        steps: false,
                    }],
                    marks: vec![
                        plot::Mark {
                            label: format!("high {HIGH}"),
                            value: high,
                            color: "#d62728",
                        },
                        plot::Mark {
                            label: format!("low {LOW}"),
                            value: low,
                            color: "#2ca02c",
                        },
                    ],
                },
                plot::Panel {
                    title: "rung (0 none, 1 hogs weight 1, 2 hogs 0.2 CPU)".into(),
                    series: vec![plot::Series {
                        label: "rung".into(),
                        points: samples.iter().map(|s| (s.t, s.rung)).collect(),
                        color: "#9467bd",
                        steps: true,
                    }],
                    marks: vec![],
                },
                plot::Panel {
                    title:
                        "outcome: worker's wake-up p99 per busy phase (µs, measured by the worker)"
                            .into(),
                    series: vec![plot::Series {
                        label: "busy-phase p99".into(),
                        points: phases
                            .iter()
                            .flat_map(|(t, p)| {
                                let t = (*t as f64 - t0_ns as f64) / 1e9;
                                [(t, *p), (t + 1.5, *p), (t + 1.5, f64::NAN)]
                            })
                            .collect(),
                        color: "#ff7f0e",
                        steps: false,
                    }],
                    marks: vec![],
                },
            ],
        )?;
    }
    drop(parent);
    sec.write()
}
